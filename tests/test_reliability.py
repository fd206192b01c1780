"""Reliability: checkpoints, non-finite gradients, the float32 limits,
determinism, long runs and the documented errors.

``docs/RELIABILITY.md`` states the guarantees these tests hold the library to.
Compilation is most of the cost, so transforms that many tests step are
compiled together, once, in a "bank" (``_banked``); single-leaf scalers run
eagerly (JAX compiles each op once per shape and dtype); each long run is one
jitted ``lax.scan``.
"""

import functools
import math
import pickle
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import optax_rmsprop

# How the running averages are stored (`nu_dtype=`): None is the default (float32
# for float32 params), bf16 and "int8" are the compact storages. "int8" stores
# only leaves of at least 4096 elements in 8 bits, so the trees below hold one.
STORAGE_OPTIONS = [None, jnp.float32, jnp.bfloat16, "int8"]


def _storage_id(nu_dtype):
    return "default" if nu_dtype is None else str(jnp.dtype(nu_dtype).name)


def _storage_options(name="nu_dtype"):
    return pytest.mark.parametrize(name, STORAGE_OPTIONS, ids=_storage_id)


# Three rmsprop variants that use every option at least once between them
# (each variant costs compilation time; the learning rate defaults to 0.1).
VARIANTS = {
    "default": {},
    "centered_debiased_nesterov_eps_outside": {
        "centered": True,
        "bias_correction": True,
        "momentum": 0.9,
        "nesterov": True,
        "eps_in_sqrt": False,
    },
    "momentum_weight_decay_schedule_initial_scale": {
        "learning_rate": optax.cosine_decay_schedule(0.1, decay_steps=4, alpha=0.1),
        "momentum": 0.9,
        "weight_decay": 1e-2,
        "initial_scale": 0.5,
    },
}
_RICHEST = "centered_debiased_nesterov_eps_outside"
_SCHEDULED = "momentum_weight_decay_schedule_initial_scale"

PRESETS = {
    "pytorch": lambda: optax_rmsprop.pytorch_rmsprop(
        lr=0.01, momentum=0.9, weight_decay=1e-2, centered=True
    ),
    "keras": lambda: optax_rmsprop.keras_rmsprop(momentum=0.9, weight_decay=1e-2),
    "tf1": lambda: optax_rmsprop.tf1_rmsprop(0.1, momentum=0.9, centered=True),
}


def _rmsprop(variant, nu_dtype=None):
    kwargs = {"learning_rate": 0.1, **VARIANTS[variant]}
    return optax_rmsprop.rmsprop(**kwargs, nu_dtype=nu_dtype)


# Arrays are committed to this device, as orbax restores them: jit compiles
# committed and uncommitted inputs separately.
_DEVICE = jax.devices()[0]


def _random_tree(like, seed, scale=1.0):
    """Standard normals times ``scale``, shaped and typed like ``like``."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda p: jax.device_put(
            np.asarray(scale * rng.standard_normal(p.shape), p.dtype), _DEVICE
        ),
        like,
    )


_PARAMS = _random_tree(
    {
        "dense": {"w": jnp.zeros((64, 64)), "b": jnp.zeros(())},  # w: 4096 elements.
        "embed": jnp.zeros((3, 4), jnp.bfloat16),
    },
    seed=0,
)
# Six steps whose scale changes by up to 100x, so the averages really move.
_GRADS = [
    _random_tree(_PARAMS, seed=1 + k, scale=10.0 ** (k % 3 - 1)) for k in range(6)
]
_SPLIT = 3  # The checkpoint is taken after this many steps.


def _run(tx, params, state, grads):
    """Eager steps from ``(params, state)``: each step's (updates, state, params)."""
    history = []
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
        history.append((updates, state, params))
    return history


def _banked(transforms, params):
    """``transforms`` (a dict) run side by side: one compilation for all of them.

    Returns transforms with the same keys. Each one's update runs every
    transform of the bank (the others from their initial states, which costs
    microseconds) and keeps its own result; ``init`` only knows ``params``.
    Compiling each transform alone costs several times more.
    """
    init_all = jax.jit(lambda p: {k: tx.init(p) for k, tx in transforms.items()})
    update_all = jax.jit(
        lambda g, s, p: {k: tx.update(g, s[k], p) for k, tx in transforms.items()}
    )
    initial_states = functools.cache(lambda: init_all(params))

    def banked(key):
        def init_fn(p):
            if p is not params:
                raise ValueError(
                    "A banked transform only initialises its bank's params."
                )
            return initial_states()[key]

        def update_fn(updates, state, p=None):
            return update_all(updates, {**initial_states(), key: state}, p)[key]

        return optax.GradientTransformation(init_fn, update_fn)

    return {key: banked(key) for key in transforms}


def _assert_bit_identical(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e), strict=True)


# --------------------------------------------------------------------------
# Checkpoints: save mid-training, restore, continue bit-identically.


def _orbax_round_trip(tree, target, directory):
    """Saves ``tree`` with orbax's StandardCheckpointer, restores it as ``target``."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / "checkpoint", tree)
        checkpointer.wait_until_finished()
        return checkpointer.restore(directory / "checkpoint", target)


def _through_orbax(tx, checkpoint, directory):
    """The restore target is abstract: ``jax.eval_shape`` of a fresh init."""
    target = jax.eval_shape(lambda: {"params": _PARAMS, "state": tx.init(_PARAMS)})
    restored = _orbax_round_trip(checkpoint, target, directory)
    return restored["params"], restored["state"]


def _through_pickle(tx, checkpoint, directory):
    """NumPy arrays in the state's own NamedTuples, pickled, unpickled, put back.

    ``jax.device_put`` matters: left as NumPy, bf16 params meet Python floats
    under NumPy's promotion (``1e-2 * p`` is float32 for a NumPy bf16 ``p``)
    inside ``optax.add_decayed_weights``, and the update changes dtype.
    """
    del tx, directory  # Unused: the pickle carries its own tree.
    pickled = pickle.dumps(jax.device_get(checkpoint))
    restored = jax.device_put(pickle.loads(pickled), _DEVICE)
    return restored["params"], restored["state"]


def _make(name, nu_dtype=None):
    return PRESETS[name]() if name in PRESETS else _rmsprop(name, nu_dtype)


def _key(name, nu_dtype):
    return name if name in PRESETS else f"{name}-{_storage_id(nu_dtype)}"


# Every variant with every storage option, and every preset, compiled together.
_BANK = _banked(
    {
        **{_key(v, s): _rmsprop(v, s) for v in VARIANTS for s in STORAGE_OPTIONS},
        **{name: make() for name, make in PRESETS.items()},
    },
    _PARAMS,
)


@functools.cache
def _uninterrupted(name, nu_dtype):
    """The (jitted) transform and every step of its run on ``_GRADS``."""
    tx = _BANK[_key(name, nu_dtype)]
    return tx, _run(tx, _PARAMS, tx.init(_PARAMS), _GRADS)


def _assert_resumed_run_is_bit_identical(name, nu_dtype, restore, directory):
    tx, uninterrupted = _uninterrupted(name, nu_dtype)
    _, state, params = uninterrupted[_SPLIT - 1]
    restored_params, restored_state = restore(
        tx, {"params": params, "state": state}, directory
    )
    assert jax.tree.structure(restored_state) == jax.tree.structure(state)
    resumed = _run(tx, restored_params, restored_state, _GRADS[_SPLIT:])
    _assert_bit_identical(resumed, uninterrupted[_SPLIT:])


@_storage_options()
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_orbax_checkpoint_resumes_bit_identically(variant, nu_dtype, tmp_path):
    _assert_resumed_run_is_bit_identical(variant, nu_dtype, _through_orbax, tmp_path)


@_storage_options()
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pickled_numpy_checkpoint_resumes_bit_identically(variant, nu_dtype, tmp_path):
    _assert_resumed_run_is_bit_identical(variant, nu_dtype, _through_pickle, tmp_path)


@pytest.mark.parametrize("restore", [_through_orbax, _through_pickle])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_checkpoint_resumes_bit_identically(preset, restore, tmp_path):
    _assert_resumed_run_is_bit_identical(preset, None, restore, tmp_path)


# optax's own arguments, float32 params (for bf16 params our average is float32
# where optax's is bf16, by design; orbax would cast it to the target's dtype).
# Continuations agree to float32 rounding, not necessarily bits: the two
# libraries compile slightly different arithmetic for momentum and bias
# correction (tests/test_state_layout.py bounds it; 1e-5 suffices here).
_F32_PARAMS = {"dense": _PARAMS["dense"]}
_F32_GRADS = [{"dense": g["dense"]} for g in _GRADS]
_OPTAX_SETTINGS = {
    "default": {},
    "every_flag": {
        "eps_in_sqrt": False,
        "centered": True,
        "bias_correction": True,
        "momentum": 0.9,
        "nesterov": True,
    },
}
_LIBRARIES = {"optax": optax.rmsprop, "ours": optax_rmsprop.rmsprop}
_LIBRARY_BANK = _banked(
    {
        (library, setting): make(0.1, **kwargs)
        for library, make in _LIBRARIES.items()
        for setting, kwargs in _OPTAX_SETTINGS.items()
    },
    _F32_PARAMS,
)


def _assert_checkpoint_moves(setting, saved_by, resumed_by, directory):
    saver = _LIBRARY_BANK[saved_by, setting]
    resumer = _LIBRARY_BANK[resumed_by, setting]
    start = (_F32_PARAMS, saver.init(_F32_PARAMS))
    _, state, params = _run(saver, *start, _F32_GRADS[:_SPLIT])[-1]
    target = jax.eval_shape(
        lambda: {"params": _F32_PARAMS, "state": resumer.init(_F32_PARAMS)}
    )
    restored = _orbax_round_trip({"params": params, "state": state}, target, directory)

    assert jax.tree.structure(restored["state"]) == jax.tree.structure(target["state"])
    resumed = _run(resumer, restored["params"], restored["state"], _F32_GRADS[_SPLIT:])
    continued = _run(saver, params, state, _F32_GRADS[_SPLIT:])
    for actual, expected in zip(jax.tree.leaves(resumed), jax.tree.leaves(continued)):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("setting", list(_OPTAX_SETTINGS))
def test_optax_orbax_checkpoint_resumes_in_ours(setting, tmp_path):
    _assert_checkpoint_moves(setting, "optax", "ours", tmp_path)


@pytest.mark.parametrize("setting", list(_OPTAX_SETTINGS))
def test_our_orbax_checkpoint_resumes_in_optax(setting, tmp_path):
    _assert_checkpoint_moves(setting, "ours", "optax", tmp_path)


def test_orbax_restore_into_another_variant_names_the_differing_field(tmp_path):
    saved = {"state": _rmsprop("default").init(_PARAMS)}
    centered = optax_rmsprop.rmsprop(0.1, centered=True)
    target = {"state": jax.eval_shape(centered.init, _PARAMS)}
    with pytest.raises(ValueError, match=r"(?is)structure.*\bmu\b"):
        _orbax_round_trip(saved, target, tmp_path)


def _as_plain_containers(state):
    """What orbax restores without a target: dicts and lists, EmptyState as None."""
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        fields = {k: _as_plain_containers(v) for k, v in state._asdict().items()}
        return fields or None
    if isinstance(state, (tuple, list)):
        return [_as_plain_containers(x) for x in state]
    if isinstance(state, dict):
        return {k: _as_plain_containers(v) for k, v in state.items()}
    return state


# A state restored for one set of options and handed to a transform built with
# others must fail with a message about the optimizer state (as a gradient tree
# that does not match the state already does), not deep inside the maths, and
# must never be silently accepted.
def _refusal(handed_to, got, kept):
    """The README's ``TypeError`` message, whole, for a state of other options."""
    return re.escape(
        f"The optimizer state handed to {handed_to} is a {got}, but the transform "
        f"keeps a {kept}: was the state built or saved with other options, or "
        "restored without a target?"
    )


_SCALER = "the RMS scaler"
_WRONG_STATES = [
    pytest.param(
        {},
        {"centered": True},
        _refusal(_SCALER, "ScaleByRmsState", "ScaleByRStdDevState"),
        id="plain_into_centered",
    ),
    pytest.param(
        {},
        {"bias_correction": True},
        _refusal(_SCALER, "ScaleByRmsState", "ScaleByRmsWithCountState"),
        id="plain_into_bias_correction",
    ),
    pytest.param(
        {},
        {"nu_dtype": jnp.bfloat16},
        _refusal(_SCALER, "ScaleByRmsState", "CompactRmsState"),
        id="plain_into_bf16_storage",
    ),
    pytest.param(
        {},
        {"momentum": 0.9},
        _refusal("momentum", "EmptyState", "TraceState"),
        id="plain_into_momentum",
    ),
    pytest.param(
        {"centered": True},
        {},
        _refusal(_SCALER, "ScaleByRStdDevState", "ScaleByRmsState"),
        id="centered_into_plain",
    ),
    pytest.param(
        {"momentum": 0.9},
        {},
        _refusal("the momentum slot", "TraceState", "EmptyState"),
        id="momentum_into_plain",
    ),
]


@pytest.mark.parametrize(("saved_with", "resumed_with", "message"), _WRONG_STATES)
def test_state_of_other_options_is_refused_by_update(saved_with, resumed_with, message):
    state = optax_rmsprop.rmsprop(0.1, **saved_with).init(_PARAMS)
    tx = optax_rmsprop.rmsprop(0.1, **resumed_with)
    with pytest.raises(TypeError, match=message):
        tx.update(_GRADS[0], state, _PARAMS)


def test_state_restored_without_orbax_target_is_refused_by_update():
    tx = _rmsprop("default")
    state = _as_plain_containers(tx.init(_PARAMS))
    with pytest.raises(TypeError, match=_refusal(_SCALER, "dict", "ScaleByRmsState")):
        tx.update(_GRADS[0], state, _PARAMS)


# --------------------------------------------------------------------------
# Non-finite gradients: what they do alone, and under optax.apply_if_finite.

_BAD_VALUES = [
    pytest.param(math.nan, id="nan"),
    pytest.param(math.inf, id="inf"),
    pytest.param(-math.inf, id="-inf"),
]


def _with_bad_element(grads, value, path=("dense", "w"), index=(5, 7)):
    """``grads`` with one element of one leaf replaced by ``value``."""
    if len(path) == 1:
        return {**grads, path[0]: grads[path[0]].at[index].set(value)}
    inner = _with_bad_element(grads[path[0]], value, path[1:], index)
    return {**grads, path[0]: inner}


@_storage_options()
@pytest.mark.parametrize("bad", _BAD_VALUES)
def test_non_finite_gradient_makes_only_its_own_update_element_nan(bad, nu_dtype):
    tx, history = _uninterrupted(_RICHEST, nu_dtype)
    _, state, params = history[0]
    updates, _ = tx.update(_with_bad_element(_GRADS[1], bad), state, params)

    # inf / sqrt(inf) and inf / (sqrt(inf) + eps) are NaN: never a silent inf step.
    assert np.isnan(updates["dense"]["w"][5, 7])
    leaves = [np.asarray(u, np.float32) for u in jax.tree.leaves(updates)]
    assert sum(int(np.sum(~np.isfinite(u))) for u in leaves) == 1


# Without apply_if_finite a NaN gradient stays in its element's average, so the
# element's later updates are NaN as well. int8 storage instead saturates the
# element's code at the top of its block (next test).
@pytest.mark.parametrize("nu_dtype", [s for s in STORAGE_OPTIONS if s != "int8"])
def test_nan_gradient_keeps_its_elements_updates_nan_afterwards(nu_dtype):
    tx, history = _uninterrupted("default", nu_dtype)
    _, state, params = history[0]
    _, state = tx.update(_with_bad_element(_GRADS[1], math.nan), state, params)
    updates, _ = tx.update(_GRADS[2], state, params)
    assert np.isnan(updates["dense"]["w"][5, 7])


def test_int8_storage_saturates_a_nan_average_instead_of_keeping_it():
    tx, history = _uninterrupted("default", "int8")
    _, state, params = history[0]
    _, state = tx.update(_with_bad_element(_GRADS[1], math.nan), state, params)
    assert int(state[0].nu["dense"]["w"].codes[5, 7]) == 255  # The block's top code.
    updates, _ = tx.update(_GRADS[2], state, params)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


# A larger tree (five leaves: two of 4096 elements for int8 blocks, a bf16 one,
# an empty one; shapes shared with _PARAMS, whose ops are compiled already) and
# the richest state: count, mu, nu, schedule count, trace. apply_if_finite
# branches with lax.cond, which eager mode retraces at every call: it runs
# jitted, in a bank of one transform per storage option.
_LARGE_PARAMS = {
    "block0": _PARAMS,
    "block1": {"dense": {"w": _random_tree(_PARAMS["dense"]["w"], seed=10)}},
    "empty": jax.device_put(jnp.zeros((0, 3)), _DEVICE),
}
_LARGE_BAD_LEAF = ("block1", "dense", "w")
_LARGE_GRADS = [_random_tree(_LARGE_PARAMS, seed=11 + k) for k in range(3)]
_GUARDED_OPTIONS = {
    **VARIANTS[_RICHEST],
    "learning_rate": VARIANTS[_SCHEDULED]["learning_rate"],
}


_GUARDED_BANK = _banked(
    {
        _storage_id(nu_dtype): optax.apply_if_finite(
            optax_rmsprop.rmsprop(**_GUARDED_OPTIONS, nu_dtype=nu_dtype),
            max_consecutive_errors=5,
        )
        for nu_dtype in STORAGE_OPTIONS
    },
    _LARGE_PARAMS,
)


def _guarded_run(nu_dtype, grads_sequence):
    tx = _GUARDED_BANK[_storage_id(nu_dtype)]
    return _run(tx, _LARGE_PARAMS, tx.init(_LARGE_PARAMS), grads_sequence)


@_storage_options()
@pytest.mark.parametrize("bad", _BAD_VALUES)
def test_apply_if_finite_leaves_params_and_every_state_leaf_untouched(bad, nu_dtype):
    bad_grads = _with_bad_element(_LARGE_GRADS[1], bad, _LARGE_BAD_LEAF)
    (_, state, params), (updates, skipped, after) = _guarded_run(
        nu_dtype, [_LARGE_GRADS[0], bad_grads]
    )
    _assert_bit_identical(after, params)
    _assert_bit_identical(skipped.inner_state, state.inner_state)
    assert all(not bool(jnp.any(u)) for u in jax.tree.leaves(updates))
    assert not bool(skipped.last_finite)


@_storage_options()
def test_apply_if_finite_step_after_a_skipped_one_is_exactly_the_uninterrupted_step(
    nu_dtype,
):
    good = [_LARGE_GRADS[0], _LARGE_GRADS[1]]
    bad = _with_bad_element(_LARGE_GRADS[2], math.nan, _LARGE_BAD_LEAF)
    expected = _guarded_run(nu_dtype, good)[-1]
    updates, state, params = _guarded_run(nu_dtype, [good[0], bad, good[1]])[-1]
    _assert_bit_identical(updates, expected[0])
    _assert_bit_identical(params, expected[2])
    _assert_bit_identical(state.inner_state, expected[1].inner_state)


def test_apply_if_finite_counts_skipped_steps():
    good = _LARGE_GRADS[0]
    sequence = [
        good,
        _with_bad_element(good, math.nan, _LARGE_BAD_LEAF),
        _with_bad_element(good, math.inf, ("block0", "dense", "b"), ()),
        good,
        _with_bad_element(good, -math.inf, ("block0", "embed"), (0, 0)),
    ]
    states = [state for _, state, _ in _guarded_run(None, sequence)]
    assert [int(s.notfinite_count) for s in states] == [0, 1, 2, 0, 1]
    assert [int(s.total_notfinite) for s in states] == [0, 1, 2, 2, 3]


def test_apply_if_finite_applies_the_bad_update_after_max_consecutive_errors():
    # optax's escape hatch: after max_consecutive_errors skipped steps in a row
    # the next bad update goes through, and its NaN reaches the parameters.
    inner = optax_rmsprop.rmsprop(0.1)
    tx = optax.apply_if_finite(inner, max_consecutive_errors=2)
    tx = tx._replace(update=jax.jit(tx.update))
    params = {"w": jnp.ones(3)}
    bad = {"w": jnp.array([1.0, math.nan, 1.0])}
    history = _run(tx, params, tx.init(params), [bad] * 3)
    assert [bool(jnp.isnan(p["w"][1])) for _, _, p in history] == [False, False, True]


# --------------------------------------------------------------------------
# The float32 limits: squares that overflow (|g| > sqrt(max) = 1.8447e19), and
# squares that underflow (|g| below ~3e-19 with decay 0.9: XLA:CPU flushes
# subnormal results to zero).

_SCALERS = {
    "default": {},
    "eps_outside": {"eps_in_sqrt": False},
    "centered": {"centered": True},
    "bias_correction": {"bias_correction": True},
    "centered_bias_correction": {"centered": True, "bias_correction": True},
}
_UNCENTERED_SCALERS = ["default", "eps_outside", "bias_correction"]


def _scaler(name, nu_dtype, **overrides):
    return optax_rmsprop.scale_by_rms(
        **{"decay": 0.9, **_SCALERS[name], **overrides}, nu_dtype=nu_dtype
    )


def _eager_updates(tx, grads):
    """Each step's update for a list of arrays, from ``init``."""
    state = tx.init(jnp.zeros_like(grads[0]))
    history = []
    for g in grads:
        updates, state = tx.update(g, state)
        history.append(updates)
    return history


# g = 1.8e19 is just below sqrt(float32 max) = 1.8447e19. First step with decay
# 0.9: nu = 0.1 g^2 and mu = 0.1 g.
_FIRST_STEP_OF_LARGEST_GRADIENT = {
    "default": math.sqrt(10),  # g / sqrt(0.1 g^2)
    "eps_outside": math.sqrt(10),  # eps = 1e-8 is nothing next to sqrt(nu)
    "centered": 1 / 0.3,  # g / sqrt(0.1 g^2 - 0.01 g^2) = 1 / sqrt(0.09)
    "bias_correction": 1.0,  # nu_hat = 0.1 g^2 / (1 - 0.9) = g^2
}


@_storage_options()
@pytest.mark.parametrize("scaler", list(_FIRST_STEP_OF_LARGEST_GRADIENT))
def test_largest_gradient_whose_square_fits_gives_the_exact_first_step(
    scaler, nu_dtype
):
    grads = jnp.full((4096,), 1.8e19)
    (updates,) = _eager_updates(_scaler(scaler, nu_dtype), [grads])
    expected = _FIRST_STEP_OF_LARGEST_GRADIENT[scaler]
    np.testing.assert_allclose(updates, expected, rtol=1e-6)


# One leaf of 4096 elements (an int8 block set): four huge elements among ones
# for three steps, then +-1 everywhere. With decay 0.75 an average clamped at
# float32's max (2**128) is forgotten in 308 steps, and exact maths forgets
# even (3e38)**2 in 616; after 800 the huge elements must step like the rest.
# (Not decay 0.5: XLA then factors 0.5 * g + 0.5 * mu into 0.5 * (g + mu),
# which overflows on its own.)
_HUGE = np.array([2e19, -1e25, 1e30, -3e38], np.float32)
_FORGET_STEPS = 800
# eps outside the root and bias correction store the same average as default;
# centered alone behaves as default under jit (see the eager test below).
_FORGETTING_SCALERS = ["default", "centered_bias_correction"]
# Relative spread between two elements' updates that storage alone explains.
_STORAGE_RTOL = {"default": 1e-3, "float32": 1e-3, "bfloat16": 1e-2, "int8": 0.1}


@functools.cache
def _overflow_runs():
    """Per (scaler, storage): updates of the huge elements and one plain one.

    One jitted function for all of them: one compilation instead of eight.
    """
    huge = jnp.ones(4096).at[:4].set(_HUGE)
    signs = jnp.where(jnp.arange(_FORGET_STEPS) % 2 == 0, 1.0, -1.0)
    grads = jnp.concatenate([jnp.stack([huge] * 3), signs[:, None] * jnp.ones(4096)])
    transforms = {
        (name, _storage_id(nu_dtype)): _scaler(name, nu_dtype, decay=0.75)
        for name in _FORGETTING_SCALERS
        for nu_dtype in STORAGE_OPTIONS
    }

    def scan(tx):
        def step(state, g):
            updates, state = tx.update(g, state)
            return state, updates[:5]

        return jax.lax.scan(step, tx.init(grads[0]), grads)[1]

    run = jax.jit(lambda: {key: scan(tx) for key, tx in transforms.items()})
    return jax.device_get(run())


def _assert_zero_steps_then_finite(updates):
    """``updates[step, element]``: the huge steps of the huge elements are 0.

    The README's promise: the step of a gradient whose square overflows is
    exactly zero (``g / sqrt(inf) = 0``, never NaN), and every other update
    (the plain element, and every later step of the huge ones) is finite.
    That the huge elements then move again is the forgetting test's subject
    (a debiased average can overflow once more at step 4: 0.75 * max / 0.68).
    """
    steps, elements = np.nonzero(~np.isfinite(updates))
    bad = list(zip(steps, elements))[:4]
    assert steps.size == 0, f"non-finite at (step, element) {bad}"
    np.testing.assert_array_equal(updates[:3, :4], np.zeros((3, 4), np.float32))


@_storage_options()
@pytest.mark.parametrize("scaler", _FORGETTING_SCALERS)
def test_gradient_whose_square_overflows_gives_a_zero_step_under_jit(scaler, nu_dtype):
    _assert_zero_steps_then_finite(_overflow_runs()[scaler, _storage_id(nu_dtype)])


# Eagerly too: there `nu - mu**2` rounds mu**2 to inf before subtracting (under
# jit XLA may fuse it into one multiply-add that does not), so the centered
# variance would be inf - inf = NaN wherever |mu| > 1.8e19 and nu overflowed.
@_storage_options()
@pytest.mark.parametrize("scaler", list(_SCALERS))
def test_gradient_whose_square_overflows_gives_a_zero_step_eagerly(scaler, nu_dtype):
    huge = jnp.ones(4096).at[:4].set(_HUGE)
    grads = [huge] * 3 + [jnp.ones(4096), -jnp.ones(4096)]
    history = np.stack(_eager_updates(_scaler(scaler, nu_dtype), grads))[:, :5]
    _assert_zero_steps_then_finite(history)


# After the overflowing step the average holds inf (float storage), bf16's
# largest value (bf16 storage clips) or its block's top code (int8). The next
# step must read it as float32's largest value: bit for bit the step from a
# state holding 3.4028e38 there (a same-machine comparison).
@pytest.mark.parametrize("scaler", list(_SCALERS))
def test_overflowed_average_is_read_back_as_float32_max(scaler):
    tx = _scaler(scaler, None)
    huge = jnp.ones(4096).at[0].set(-2e19)
    _, state = tx.update(huge, tx.init(huge))
    assert float(state.nu[0]) == math.inf and np.all(np.isfinite(state.nu[1:]))

    largest = state._replace(nu=state.nu.at[0].set(np.finfo(np.float32).max))
    plain = jnp.linspace(0.5, 2.0, 4096)
    actual, actual_state = tx.update(plain, state)
    expected, expected_state = tx.update(plain, largest)
    _assert_bit_identical((actual, actual_state), (expected, expected_state))
    assert np.isfinite(float(actual_state.nu[0]))  # 0.9 * max + 0.1 * 0.25


def test_overflowed_average_is_stored_as_the_largest_bf16_or_top_int8_code():
    huge = jnp.ones(4096).at[0].set(2e19)
    bf16 = _scaler("default", jnp.bfloat16)
    _, state = bf16.update(huge, bf16.init(huge))
    assert float(state.nu[0]) == float(jnp.finfo(jnp.bfloat16).max)
    int8 = _scaler("default", "int8")
    _, state = int8.update(huge, int8.init(huge))
    assert int(state.nu.codes[0]) == 255
    assert np.all(np.isfinite(np.asarray(state.nu.scales)))


@_storage_options()
@pytest.mark.parametrize("scaler", _FORGETTING_SCALERS)
def test_gradient_whose_square_overflows_does_not_freeze_its_parameter(
    scaler, nu_dtype
):
    last = _overflow_runs()[scaler, _storage_id(nu_dtype)][-1]
    rtol = _STORAGE_RTOL[_storage_id(nu_dtype)]
    np.testing.assert_allclose(last[:4], last[4], rtol=rtol)


# g = 1e-23: g^2 = 1e-46 is below float32's smallest subnormal, so nu = 0. The
# exact nu, 0.1 * 1e-46, is nothing next to eps = 1e-8, so the exact update is
# g / sqrt(eps) = 1e4 g (eps inside), or g / eps = 1e8 g (eps outside): the
# flushed average gives the right answer.
@_storage_options()
@pytest.mark.parametrize("scaler", list(_SCALERS))
def test_gradient_whose_square_underflows_gives_g_over_eps(scaler, nu_dtype):
    grads = jnp.full((4096,), -1e-23)
    (updates,) = _eager_updates(_scaler(scaler, nu_dtype), [grads])
    factor = 1e8 if scaler == "eps_outside" else 1e4
    np.testing.assert_allclose(updates, -1e-23 * factor, rtol=1e-6)


@_storage_options()
@pytest.mark.parametrize("scaler", list(_SCALERS))
def test_underflowed_average_recovers_at_the_first_normal_gradient(scaler, nu_dtype):
    # Underflowing steps leave the averages exactly as zero gradients do, so
    # the next normal step is bit-identical.
    tx = _scaler(scaler, nu_dtype)
    normal = jnp.linspace(0.5, 2.0, 4096)
    after_tiny = _eager_updates(tx, [jnp.full((4096,), 1e-23)] * 3 + [normal])[-1]
    after_zero = _eager_updates(tx, [jnp.zeros(4096)] * 3 + [normal])[-1]
    _assert_bit_identical(after_tiny, after_zero)


def test_subnormal_gradient_gives_a_zero_update_on_cpu():
    # XLA:CPU flushes float32 subnormals (|g| < 1.1755e-38) to zero, and a
    # zero gradient gives a zero update.
    (updates,) = _eager_updates(_scaler("default", None), [jnp.full((3,), 1e-39)])
    np.testing.assert_array_equal(updates, np.zeros(3, np.float32))


# With eps = 0 nothing else guards the denominator. g = 1e-20: g^2 = 1e-40 and
# 0.1 g^2 are subnormal and flushed to zero, so nu = 0 (the exact first step,
# sqrt(10), is lost with the square). The scaler replaces an uncentered zero
# denominator by 1 -- eps inside: rsqrt(nu + 0) -> rsqrt(1) = 1; outside:
# 1 / (sqrt(0) + 0) -> 1 / 1; with bias correction nu_hat = 0 / 0.1 = 0 too --
# so the update is 1 * g, which float32 computes exactly: g itself, bit for bit
# (never g / 0 = inf). Compact storage changes nothing: the step divides by
# this step's float32 average.
@_storage_options()
@pytest.mark.parametrize("scaler", _UNCENTERED_SCALERS)
def test_underflowing_square_with_zero_eps_gives_the_gradient_itself(scaler, nu_dtype):
    grads = jnp.full((4096,), 1e-20).at[::2].multiply(-3.0)
    (updates,) = _eager_updates(_scaler(scaler, nu_dtype, eps=0.0), [grads])
    np.testing.assert_array_equal(np.asarray(updates), np.asarray(grads), strict=True)


# --------------------------------------------------------------------------
# Determinism. (Runs in one process repeat bit for bit: every checkpoint test
# above compares a resumed run with an earlier one.)


@_storage_options()
def test_transform_built_and_compiled_afresh_reproduces_the_bits(nu_dtype):
    # Traced and compiled again (alone, not in the bank), bit for bit, stochastic
    # rounding included: its random bits are a hash of the element's index and
    # the step count, not a generator's state. (A new process gives the same
    # bits too: XLA:CPU compiles deterministically; see docs/RELIABILITY.md.)
    _, expected = _uninterrupted(_RICHEST, nu_dtype)
    tx = _fresh_richest()[_storage_id(nu_dtype)]
    _assert_bit_identical(_run(tx, _PARAMS, tx.init(_PARAMS), _GRADS), expected)


@functools.cache
def _fresh_richest():
    transforms = {_storage_id(s): _rmsprop(_RICHEST, s) for s in STORAGE_OPTIONS}
    return _banked(transforms, _PARAMS)


# jit and eager run different arithmetic (XLA fuses, reorders and may contract
# a multiply and an add), so updates and states differ by float32 rounding, a
# few ulps (parameters, their running sums, drift apart by as much per step).
# For bf16 params XLA may also skip a rounding to bf16 inside the step (it
# allows excess precision), so their float32 momentum differs by bf16 ulps. The
# centered, debiased first step is left out: its variance is exactly zero, so
# both give rounding noise over eps. Compact storage rounds stochastically, and
# a value that differs by an ulp may round the other way: a bf16 ulp or an int8
# code.
@pytest.mark.parametrize("variant", ["default", _SCHEDULED])
def test_jit_and_eager_updates_and_states_agree_to_a_few_ulps(variant):
    _, compiled = _uninterrupted(variant, None)
    tx = _make(variant)
    eager = _run(tx, _PARAMS, tx.init(_PARAMS), _GRADS)
    compiled_leaves = jax.tree_util.tree_leaves_with_path([h[:2] for h in compiled])
    eager_leaves = jax.tree.leaves([h[:2] for h in eager])
    for (path, x), y in zip(compiled_leaves, eager_leaves):
        bf16 = "embed" in jax.tree_util.keystr(path)
        rtol = 4 * 2.0**-7 if bf16 else 16 * 2.0**-23
        x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
        np.testing.assert_allclose(x64, y64, rtol=rtol, atol=1e-7, err_msg=str(path))


# --------------------------------------------------------------------------
# Long runs: 10^5 steps on a gradient whose scale drifts over four decades.

_LONG_STEPS = 100_000
_LEG = 10_000  # Steps per leg: the scale goes 1e-2 -> 1e2 -> 1e-2 ...
_DRIFT = math.log(1e4) / _LEG  # d log(scale) / dt on each leg.
_SIGNS = {"w": jnp.array([1.0, -1.0]), "b": jnp.array(1.0)}  # A tiny tree.

# The transform, and the decay, eps, eps_in_sqrt and centered its rate obeys.
# PyTorch's weight decay is left out: it is coupled, i.e. part of the gradient.
# The diagnostic also needs the transform's bias_correction (_BIAS_CORRECTED);
# the theory ignores it: 30 time constants on, 1 - decay^t is 1 to 2e-14.
_LONG_RUNS = {
    **{
        name: (
            functools.partial(_rmsprop, name),
            {
                "decay": 0.9,
                "eps": 1e-8,
                "eps_in_sqrt": kwargs.get("eps_in_sqrt", True),
                "centered": kwargs.get("centered", False),
            },
        )
        for name, kwargs in VARIANTS.items()
    },
    "pytorch": (
        lambda: optax_rmsprop.pytorch_rmsprop(lr=0.01, momentum=0.9, centered=True),
        {"decay": 0.99, "eps": 1e-8, "eps_in_sqrt": False, "centered": True},
    ),
    "keras": (
        PRESETS["keras"],
        {"decay": 0.9, "eps": 1e-7, "eps_in_sqrt": True, "centered": False},
    ),
    "tf1": (
        PRESETS["tf1"],
        {"decay": 0.9, "eps": 1e-10, "eps_in_sqrt": True, "centered": True},
    ),
}
_COUNTED_LONG_RUNS = [_RICHEST, _SCHEDULED, "pytorch", "keras"]
_BIAS_CORRECTED = {_RICHEST}


def _triangle(t):
    """Steps since the last trough of the log-scale triangle wave."""
    phase = t % (2 * _LEG)
    return jnp.minimum(phase, 2 * _LEG - phase).astype(jnp.float32)


def _drifting_scale(t):
    return jnp.exp(math.log(1e-2) + _DRIFT * _triangle(t))


def _all_finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


@functools.cache
def _long_run(name):
    """Per step, the effective learning rate of ``w[0]`` per unit learning rate.

    The loss is linear, ``scale(t) * (-1)**t * <signs, params>``: its gradient
    alternates in sign, so its mean is near zero, and its size is
    ``scale(t)``. Returns the rates, whether every update and parameter stayed
    finite, and the final state.
    """
    make, theory = _LONG_RUNS[name]
    tx = make()
    options = {k: theory[k] for k in ("decay", "eps", "eps_in_sqrt")}
    options["bias_correction"] = name in _BIAS_CORRECTED

    def step(carry, t):
        params, state, finite = carry
        size = _drifting_scale(t) * (1.0 - 2.0 * (t % 2))
        updates, state = tx.update(
            jax.tree.map(lambda s: size * s, _SIGNS), state, params
        )
        params = optax.apply_updates(params, updates)
        finite = finite & _all_finite((updates, params))
        rate = optax_rmsprop.effective_learning_rate(state, 1.0, **options)
        return (params, state, finite), rate["w"][0]

    def run():
        params = jax.tree.map(jnp.zeros_like, _SIGNS)
        start = (params, tx.init(params), jnp.array(True))
        return jax.lax.scan(step, start, jnp.arange(_LONG_STEPS, dtype=jnp.int32))

    (_, state, finite), rates = jax.device_get(jax.jit(run)())
    return np.asarray(rates, np.float64), bool(finite), state


def _theoretical_rate(t, decay, eps, eps_in_sqrt, centered, coefficient=1.0):
    """``1 / sqrt(var + eps)`` (or ``1 / (sqrt(var) + eps)``) for a steady drift.

    For the gradient ``coefficient * scale(t) * (-1)**t``: on a leg where the
    scale grows by ``r = exp(+-DRIFT)`` per step, the past gradients are
    ``g_{t-k} = (-1)^k r^-k g_t``, so the averages are geometric series,
    ``nu = s^2 (1 - d) / (1 - d r^-2)`` and (centered)
    ``mu = +-s (1 - d) / (1 + d r^-1)``.
    """
    rising = (t % (2 * _LEG)) < _LEG
    inverse_r = np.exp(np.where(rising, -_DRIFT, _DRIFT))
    phase = t % (2 * _LEG)
    s = coefficient * np.exp(
        math.log(1e-2) + _DRIFT * np.minimum(phase, 2 * _LEG - phase)
    )
    variance = s**2 * (1 - decay) / (1 - decay * inverse_r**2)
    if centered:
        variance -= (s * (1 - decay) / (1 + decay * inverse_r)) ** 2
    if eps_in_sqrt:
        return 1 / np.sqrt(variance + eps)
    return 1 / (np.sqrt(variance) + eps)


def _steady_steps(decay, steps=_LONG_STEPS):
    """Steps at least 30 time constants after the start or a reversal."""
    t = np.arange(steps)
    return t[(t % _LEG) >= int(30 / (1 - decay))]


def _counts(state):
    return [
        int(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(state)
        if jax.tree_util.keystr(path).endswith(".count")
    ]


@pytest.mark.parametrize("name", list(_LONG_RUNS))
def test_long_run_stays_finite(name):
    rates, finite, _ = _long_run(name)
    assert finite and np.all(np.isfinite(rates))


@pytest.mark.parametrize("name", _COUNTED_LONG_RUNS)
def test_long_run_counts_every_step(name):
    *_, state = _long_run(name)
    counts = _counts(state)
    assert counts and counts == [_LONG_STEPS] * len(counts)


@pytest.mark.parametrize("name", list(_LONG_RUNS))
def test_long_run_effective_learning_rate_settles_where_theory_says(name):
    # The average lags the drift: with decay 0.99 (PyTorch) the rate is 8.7%
    # above 1 / scale on a rising leg and 9.6% below on a falling one. The
    # measured rate must follow that, not merely 1 / scale.
    rates, _, _ = _long_run(name)
    theory = _LONG_RUNS[name][1]
    t = _steady_steps(theory["decay"])
    np.testing.assert_allclose(rates[t], _theoretical_rate(t, **theory), rtol=1e-5)


# The same drift (two legs) with each storage option, on a 4096-element leaf whose
# elements span two decades, so int8 blocks hold unequal averages. Compact
# storage rounds stochastically: unbiased, so compared as means over a leg.
_STORAGE_STEPS = 2 * _LEG
_WIDE = jnp.asarray(np.geomspace(0.1, 10.0, 4096), jnp.float32)
_PROBES = np.array([0, 2048, 4095])
# Measured: 2e-7 (float32), 2e-4 (bf16), 4e-3 (int8); per step, bf16 strays by
# up to 2% and int8 by up to 10%.
_LEG_MEAN_RTOL = {"default": 1e-5, "float32": 1e-5, "bfloat16": 1e-3, "int8": 1e-2}


@functools.cache
def _storage_long_run(nu_dtype):
    tx = optax_rmsprop.scale_by_rms(nu_dtype=nu_dtype)

    def step(state, t):
        grads = _drifting_scale(t) * (1.0 - 2.0 * (t % 2)) * _WIDE
        _, state = tx.update(grads, state)
        rate = optax_rmsprop.effective_learning_rate(
            state, 1.0, decay=0.9, eps=1e-8, eps_in_sqrt=True, bias_correction=False
        )
        return state, rate[_PROBES]

    steps = jnp.arange(_STORAGE_STEPS, dtype=jnp.int32)
    run = jax.jit(lambda: jax.lax.scan(step, tx.init(_WIDE), steps)[1])
    return np.asarray(run(), np.float64)


@_storage_options()
def test_long_run_effective_learning_rate_settles_for_every_storage(nu_dtype):
    rates = _storage_long_run(nu_dtype)
    t = _steady_steps(0.9, _STORAGE_STEPS)
    coefficients = np.asarray(_WIDE, np.float64)[_PROBES]
    expected = np.stack(
        [_theoretical_rate(t, 0.9, 1e-8, True, False, c) for c in coefficients], axis=1
    )
    ratios = rates[t] / expected
    legs = t // _LEG
    leg_means = [ratios[legs == leg].mean(axis=0) for leg in np.unique(legs)]
    rtol = _LEG_MEAN_RTOL[_storage_id(nu_dtype)]
    np.testing.assert_allclose(leg_means, 1.0, rtol=rtol)


# Counts near the int32 limit: optax.safe_increment saturates at 2**31 - 1
# instead of wrapping to -2**31 (where decay**count would overflow to inf).
_INT32_MAX = 2**31 - 1


def _with_counts(state, value):
    """``state`` with every ``count`` field set to ``value``."""

    def set_count(path, leaf):
        if jax.tree_util.keystr(path).endswith(".count"):
            return jax.device_put(np.int32(value), _DEVICE)
        return leaf

    return jax.tree_util.tree_map_with_path(set_count, state)


_COUNTED = [
    pytest.param(variant, nu_dtype, id=f"{variant}-{_storage_id(nu_dtype)}")
    for variant in VARIANTS
    for nu_dtype in STORAGE_OPTIONS
    if variant != "default" or nu_dtype in (jnp.bfloat16, "int8")
] + [pytest.param(name, None, id=name) for name in ("pytorch", "keras")]


@pytest.mark.parametrize(("name", "nu_dtype"), _COUNTED)
def test_count_saturates_at_int32_max_and_updates_stay_finite(name, nu_dtype):
    tx, _ = _uninterrupted(name, nu_dtype)
    state = _with_counts(tx.init(_PARAMS), _INT32_MAX - 1)
    history = _run(tx, _PARAMS, state, _GRADS[:3])

    assert [_counts(s) for _, s, _ in history][0]  # The state counts steps.
    for _, state, _ in history:
        assert set(_counts(state)) == {_INT32_MAX}
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(history))


def test_bias_correction_vanishes_at_a_saturated_count():
    # 0.9 ** (2**31 - 1) is 0 in float32, so the debiased average is the
    # average itself: the update equals the uncorrected one, bit for bit.
    nu = jnp.linspace(0.5, 2.0, 5)
    grads = jnp.linspace(-1.0, 1.0, 5)
    corrected = optax_rmsprop.scale_by_rms(bias_correction=True)
    count = jnp.asarray(_INT32_MAX, jnp.int32)
    actual, _ = corrected.update(grads, corrected.init(nu)._replace(count=count, nu=nu))
    plain = optax_rmsprop.scale_by_rms()
    expected, _ = plain.update(grads, plain.init(nu)._replace(nu=nu))
    _assert_bit_identical(actual, expected)


# --------------------------------------------------------------------------
# The error table of docs/RELIABILITY.md, row by row.

_P = {"w": jnp.zeros(2)}
_STATE = optax_rmsprop.rmsprop(0.1).init(_P)
_TORCH_GROUP = {"params": [0], "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0}
_FLOAT_PARAMS = "`params` must hold floating or complex arrays; the leaf at "
# The diagnostics take every setting their result depends on as a keyword.
_DIAGNOSED = {"decay": 0.9, "eps": 1e-8, "eps_in_sqrt": True, "bias_correction": False}


def _row(call, error, message, id):
    return pytest.param(call, error, message, id=id)


def _call(fn, *args, **kwargs):
    return lambda: fn(*args, **kwargs)


def _update(tx, grads, params=None):
    return lambda: tx.update(grads, tx.init(_P), params)


_DOCUMENTED_ERRORS = [
    _row(
        _call(optax_rmsprop.scale_by_rms, decay=1.5),
        ValueError,
        "`decay` must lie in [0.0, 1.0], got 1.5.",
        "decay",
    ),
    _row(
        _call(optax_rmsprop.rmsprop, 0.1, decay=math.nan),
        ValueError,
        "`decay` must lie in [0.0, 1.0], got nan.",
        "decay-nan",
    ),
    _row(
        _call(optax_rmsprop.scale_by_stddev, eps=-1e-8),
        ValueError,
        "`eps` must lie in [0.0, inf], got -1e-08.",
        "eps",
    ),
    _row(
        _call(optax_rmsprop.rmsprop, 0.1, initial_scale=-1.0),
        ValueError,
        "`initial_scale` must lie in [0.0, inf], got -1.0.",
        "initial_scale",
    ),
    _row(
        _call(optax_rmsprop.rmsprop, 0.1, momentum=1.5),
        ValueError,
        "`momentum` must lie in [0.0, 1.0], got 1.5.",
        "momentum",
    ),
    _row(
        _call(optax_rmsprop.rmsprop, 0.1, weight_decay=-1e-4),
        ValueError,
        "`weight_decay` must lie in [0.0, inf], got -0.0001.",
        "weight_decay",
    ),
    _row(
        _call(optax_rmsprop.rmsprop, 0.1, nu_dtype=jnp.int8),
        ValueError,
        "`nu_dtype` must be None, a floating dtype",
        "nu_dtype-int",
    ),
    _row(
        _call(optax_rmsprop.scale_by_rms, nu_dtype="int4"),
        ValueError,
        "`nu_dtype` must be None, a floating dtype",
        "nu_dtype-string",
    ),
    _row(
        _call(optax_rmsprop.pytorch_rmsprop, lr=-0.01),
        ValueError,
        "`lr` must lie in [0.0, inf], got -0.01.",
        "pytorch-lr",
    ),
    _row(
        _call(optax_rmsprop.pytorch_rmsprop, alpha=1.5),
        ValueError,
        "`alpha` must lie in [0.0, 1.0], got 1.5.",
        "pytorch-alpha",
    ),
    _row(
        _call(optax_rmsprop.pytorch_rmsprop, momentum=2.0),
        ValueError,
        "`momentum` must lie in [0.0, 1.0], got 2.0.",
        "pytorch-momentum",
    ),
    _row(
        _call(optax_rmsprop.pytorch_rmsprop, weight_decay=-1.0),
        ValueError,
        "`weight_decay` must lie in [0.0, inf], got -1.0.",
        "pytorch-weight_decay",
    ),
    _row(
        _call(optax_rmsprop.pytorch_rmsprop, eps=-1e-8),
        ValueError,
        "`eps` must lie in [0.0, inf], got -1e-08.",
        "pytorch-eps",
    ),
    _row(
        _call(optax_rmsprop.keras_rmsprop, momentum=-0.5),
        ValueError,
        "`momentum` must lie in [0.0, 1.0], got -0.5.",
        "keras-momentum",
    ),
    _row(
        _call(optax_rmsprop.keras_rmsprop, rho=1.5),
        ValueError,
        "`rho` must lie in [0.0, 1.0], got 1.5.",
        "keras-rho",
    ),
    _row(
        _call(optax_rmsprop.keras_rmsprop, epsilon=-1.0),
        ValueError,
        "`epsilon` must lie in [0.0, inf], got -1.0.",
        "keras-epsilon",
    ),
    _row(
        _call(optax_rmsprop.keras_rmsprop, weight_decay=-1.0),
        ValueError,
        "`weight_decay` must lie in [0.0, inf], got -1.0.",
        "keras-weight_decay",
    ),
    _row(
        _call(optax_rmsprop.tf1_rmsprop, 0.1, decay=-0.1),
        ValueError,
        "`decay` must lie in [0.0, 1.0], got -0.1.",
        "tf1-decay",
    ),
    _row(
        _call(optax_rmsprop.tf1_rmsprop, 0.1, momentum=1.5),
        ValueError,
        "`momentum` must lie in [0.0, 1.0], got 1.5.",
        "tf1-momentum",
    ),
    _row(
        _call(optax_rmsprop.tf1_rmsprop),
        TypeError,
        "missing 1 required positional argument: 'learning_rate'",
        "tf1-no-learning_rate",
    ),
    _row(
        _call(optax_rmsprop.tf1_rmsprop, 0.1, epsilon=-1.0),
        ValueError,
        "`epsilon` must lie in [0.0, inf], got -1.0.",
        "tf1-epsilon",
    ),
    _row(
        _call(optax_rmsprop.rmsprop(0.1).init, {"w": _P["w"], "n": jnp.arange(2)}),
        TypeError,
        _FLOAT_PARAMS + "['n'] has dtype int32.",
        "params-int",
    ),
    _row(
        _call(optax_rmsprop.pytorch_rmsprop().init, jnp.array([True])),
        TypeError,
        _FLOAT_PARAMS + "<root> has dtype bool.",
        "params-bool",
    ),
    _row(
        _update(optax_rmsprop.rmsprop(0.1), {"v": jnp.zeros(2)}),
        ValueError,
        "The gradient tree does not match the optimizer state: was `init` called "
        "with other parameters?",
        "grads-structure",
    ),
    _row(
        _update(optax_rmsprop.scale_by_stddev(), {"w": jnp.zeros(3)}),
        ValueError,
        "The gradient at ['w'] has shape (3,) but its optimizer state has shape (2,).",
        "grads-shape",
    ),
    _row(
        _update(optax_rmsprop.keras_rmsprop(weight_decay=0.1), _P),
        ValueError,
        "keras_rmsprop with weight_decay needs `params`.",
        "keras-no-params",
    ),
    _row(
        _update(optax_rmsprop.rmsprop(0.1, weight_decay=0.1), _P),
        ValueError,
        "requires the current value of parameters",
        "weight_decay-no-params",
    ),
    _row(
        _call(
            optax_rmsprop.effective_learning_rate,
            optax.adam(0.1).init(_P),
            0.1,
            **_DIAGNOSED,
        ),
        ValueError,
        "`opt_state` holds no RMSprop state",
        "diagnostics-no-state",
    ),
    _row(
        _call(
            optax_rmsprop.rms_summary,
            _STATE,
            optax.constant_schedule(0.1),
            **_DIAGNOSED,
        ),
        ValueError,
        "`learning_rate` is a schedule but `opt_state` counts no steps",
        "diagnostics-schedule",
    ),
    _row(
        _call(
            optax_rmsprop.from_torch_state_dict,
            {"state": {}, "param_groups": [{**_TORCH_GROUP, "params": [0, 1]}]},
            _P,
        ),
        ValueError,
        "The PyTorch state_dict has 2 parameters but `params` has 1 leaves.",
        "from_torch-count",
    ),
    _row(
        _call(
            optax_rmsprop.from_torch_state_dict,
            {"state": {}, "param_groups": [{**_TORCH_GROUP, "alpha": 0.9}]},
            _P,
        ),
        ValueError,
        "The PyTorch checkpoint was saved with alpha=0.9 but `alpha`=0.99 was given.",
        "from_torch-setting",
    ),
]


# Wrong types: each would pass construction and fail (or silently do the wrong
# thing) inside the first update.
_REAL = "must be a real number or array, got "
_DOCUMENTED_ERRORS += [
    _row(
        _call(optax_rmsprop.rmsprop, "0.1"),
        TypeError,
        "`learning_rate` " + _REAL + "'0.1' (str).",
        "learning_rate-string",
    ),
    _row(
        _call(optax_rmsprop.scale_by_rms, decay="0.9"),
        TypeError,
        "`decay` " + _REAL + "'0.9' (str).",
        "decay-string",
    ),
    _row(
        _call(optax_rmsprop.rmsprop, 0.1, decay=None),
        TypeError,
        "`decay` " + _REAL + "None (NoneType).",
        "decay-none",
    ),
    _row(
        _call(optax_rmsprop.scale_by_stddev, eps="x"),
        TypeError,
        "`eps` " + _REAL + "'x' (str).",
        "eps-string",
    ),
    _row(
        _call(optax_rmsprop.rmsprop, 0.1, momentum="0.9"),
        TypeError,
        "`momentum` " + _REAL + "'0.9' (str).",
        "momentum-string",
    ),
    _row(
        _call(optax_rmsprop.keras_rmsprop, rho=jnp.array(1j)),
        TypeError,
        "`rho` " + _REAL,
        "keras-rho-complex",
    ),
    _row(
        _call(optax_rmsprop.rmsprop, 0.1, centered="no"),
        TypeError,
        "`centered` must be True or False, got 'no'.",
        "centered-string",
    ),
    _row(
        _call(optax_rmsprop.scale_by_rms, eps_in_sqrt="no"),
        TypeError,
        "`eps_in_sqrt` must be True or False, got 'no'.",
        "eps_in_sqrt-string",
    ),
    _row(
        _call(optax_rmsprop.rmsprop, 0.1, bias_correction=1),
        TypeError,
        "`bias_correction` must be True or False, got 1.",
        "bias_correction-int",
    ),
    _row(
        _call(optax_rmsprop.rmsprop, 0.1, momentum=0.9, nesterov="yes"),
        TypeError,
        "`nesterov` must be True or False, got 'yes'.",
        "nesterov-string",
    ),
    _row(
        _call(optax_rmsprop.pytorch_rmsprop, maximize="no"),
        TypeError,
        "`maximize` must be True or False, got 'no'.",
        "pytorch-maximize-string",
    ),
    _row(
        _call(optax_rmsprop.rmsprop(0.1).init, {"w": _P["w"], "s": "x"}),
        TypeError,
        _FLOAT_PARAMS + "['s'] has dtype str.",
        "params-string",
    ),
    _row(
        _update(optax_rmsprop.rmsprop(0.1), {"w": jnp.ones(2, jnp.int32)}),
        TypeError,
        "`updates` must hold floating or complex arrays; the leaf at ['w'] has "
        "dtype int32.",
        "grads-int",
    ),
    _row(
        _call(
            optax_rmsprop.effective_learning_rate,
            _STATE,
            0.1,
            **{**_DIAGNOSED, "decay": 2.0},
        ),
        ValueError,
        "`decay` must lie in [0.0, 1.0], got 2.0.",
        "diagnostics-decay",
    ),
    _row(
        _call(optax_rmsprop.rms_summary, _STATE, 0.1, **{**_DIAGNOSED, "eps": -1.0}),
        ValueError,
        "`eps` must lie in [0.0, inf], got -1.0.",
        "diagnostics-eps",
    ),
    _row(
        _call(optax_rmsprop.from_torch_state_dict, {}, _P),
        ValueError,
        "`state_dict` must be a torch.optim.RMSprop state_dict",
        "from_torch-empty",
    ),
    _row(
        _call(optax_rmsprop.from_torch_state_dict, None, _P),
        ValueError,
        "`state_dict` must be a torch.optim.RMSprop state_dict",
        "from_torch-none",
    ),
    _row(
        _call(
            optax_rmsprop.to_torch_state_dict,
            optax_rmsprop.pytorch_rmsprop().init(_P),
            _P,
            foo=1,
        ),
        TypeError,
        "got an unexpected keyword argument 'foo'",
        "to_torch-unknown-keyword",
    ),
    _row(
        lambda: optax_rmsprop.rmsprop(0.1, centered=True).update(_P, _STATE, _P),
        TypeError,
        "The optimizer state handed to the RMS scaler is a ScaleByRmsState, but "
        "the transform keeps a ScaleByRStdDevState",
        "state-of-other-options",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), _DOCUMENTED_ERRORS)
def test_documented_error_is_raised_with_its_message(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


def test_python_float_leaves_step_as_in_optax():
    # optax accepts Python floats as parameter and gradient leaves; so do we,
    # with optax's float32 result.
    params, grads = [1.0, 2.0], [0.5, -4.0]
    ours, theirs = optax_rmsprop.rmsprop(0.1), optax.rmsprop(0.1)
    our_updates, _ = ours.update(grads, ours.init(params))
    optax_updates, _ = theirs.update(grads, theirs.init(params))
    np.testing.assert_array_equal(our_updates, optax_updates)


def test_negative_learning_rate_is_accepted_as_in_optax():
    # Gradient ascent: optax.rmsprop takes lr < 0, so the drop-in must too.
    tx = optax_rmsprop.rmsprop(-0.1, eps=0.0)
    updates, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
    np.testing.assert_allclose(updates, [0.1 * math.sqrt(10)], rtol=1e-6)


def test_overflowed_square_freezes_optax_but_not_ours():
    # The README's claim about optax 0.2.8: after g = 2e19 (g^2 = 4e38 > 3.4e38)
    # its average is inf for good and every later update of the element is 0.
    # decay 0.5: ours forgets the capped 3.4e38 within ~260 steps (2^-260).
    grads = [jnp.array([2e19, 1.0])] + [jnp.array([1.0, 1.0])] * 300
    ours = _eager_updates(optax_rmsprop.scale_by_rms(decay=0.5), grads)[-1]
    theirs = _eager_updates(optax.scale_by_rms(decay=0.5), grads)[-1]
    assert float(theirs[0]) == 0.0 and float(theirs[1]) > 0.99
    np.testing.assert_allclose(ours[0], ours[1], rtol=1e-6)


def test_float16_step_beyond_its_range_saturates_instead_of_becoming_inf():
    # Found by the fuzzing: a centered, bias-corrected first step has variance
    # 0, so the step is g / eps = 60.8 / 7e-4 = 86857 in float32, beyond
    # float16's largest value 65504. It saturates there instead of rounding
    # to inf (which would destroy the parameter).
    tx = optax_rmsprop.scale_by_stddev(
        decay=0.5, eps=7e-4, eps_in_sqrt=False, bias_correction=True
    )
    grads = jnp.array([60.8, -60.8, 1.0], jnp.float16)
    updates, _ = tx.update(grads, tx.init(jnp.zeros(3, jnp.float16)))
    assert updates.dtype == jnp.float16
    np.testing.assert_array_equal(updates[:2], [65504.0, -65504.0])
    np.testing.assert_allclose(updates[2], 1 / 7e-4, rtol=1e-3)
