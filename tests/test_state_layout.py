"""The state is optax's own pytree, so checkpoints move between the libraries.

For optax's arguments, ``optax_rmsprop.rmsprop(...).init(params)`` builds the
very pytree ``optax.rmsprop(...).init(params)`` builds: the same ``NamedTuple``
classes (optax's), nested the same way, with leaves of the same shapes and
dtypes. It is the 3-tuple made by ``optax.chain``::

    (
        scaler state,          # one of, by (centered, bias_correction):
                               #   (F, F) ScaleByRmsState(nu)
                               #   (F, T) ScaleByRmsWithCountState(count, nu)
                               #   (T, F) ScaleByRStdDevState(mu, nu)
                               #   (T, T) ScaleByRStdDevWithCountState(count, mu, nu)
        learning-rate state,   # EmptyState() for a constant,
                               # ScaleByScheduleState(count) for a schedule
        momentum state,        # TraceState(trace) with momentum (heavy-ball or
                               # Nesterov), EmptyState() without
    )

``count`` is an int32 scalar (the number of updates so far); ``nu``, ``mu``
and ``trace`` mirror the params' tree with the params' shapes and (float32)
dtype. optax exports ``ScaleByRmsState``, ``ScaleByRStdDevState``,
``ScaleByScheduleState``, ``TraceState`` and ``EmptyState``, not the two
``WithCount`` classes, which are read off the state of optax's own factories.

With ``weight_decay > 0`` (ours only) one more element sits right after the
scaler's state: ``optax.AddDecayedWeightsState()``, which is
``optax.EmptyState()``, as ``optax.chain(scaler, optax.add_decayed_weights(wd),
optax.scale_by_learning_rate(lr), trace_or_identity)`` has it. Without weight
decay (the default) or with a plain zero, nothing is added.

Checkpoint interop: after 10 jitted steps with one library, its state (and the
params) come to the host as NumPy arrays and the other library continues for
10 more steps; that must match the first library continuing, directly and
after a round trip through ``jax.tree.flatten``, pickle and
``jax.tree.unflatten`` with the other library's treedef. Without momentum and
without bias correction the continuation is bit-identical. Otherwise the
scaler's state still is, and the updates, trace and params agree to float32
rounding: XLA compiles our debiasing as a multiply by ``1 / (1 - decay**t)``
where it keeps optax's division, contracts the trace's multiply-add into an
FMA around a different product in some programs (here, heavy-ball with eps
outside the root and a schedule), and Nesterov's ``d_k`` is computed a
second time for the update (see ``test_parity_with_optax.py``, whose bounds,
~8 ulps of the running absolute trace, are used here too).
"""

import functools
import pickle
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import BIAS_CORRECTION
from helpers import CENTERED
from helpers import EPS_IN_SQRT
from helpers import NESTEROV
from helpers import SCHEDULED
from helpers import flags_id
from helpers import grid
from helpers import parameter_bounds

import optax_rmsprop

_SHAPES = {"w": (4, 3), "b": (3,), "s": ()}
_STEPS = 10  # before the checkpoint, and again after it
_LEARNING_RATE = 1e-2
_SCHEDULE = optax.exponential_decay(1e-2, transition_steps=4, decay_rate=0.7)
_MOMENTUM = 0.9
_INITIAL_SCALE = 0.1
_WEIGHT_DECAY = 1e-3
_RTOL = 1e-6  # ~8.4 float32 ulps at 1
_DECAY, _EPS = 0.9, 1e-8  # optax.rmsprop's defaults, left unset below


def _params() -> dict:
    rng = np.random.default_rng(0)
    return {
        name: jnp.asarray(rng.standard_normal(shape), jnp.float32)
        for name, shape in _SHAPES.items()
    }


def _gradient_stream(seed: int, zero_first: bool = False) -> dict:
    """``(_STEPS, *shape)`` per leaf, each element at a scale in 1e-3 .. 1e3."""
    rng = np.random.default_rng(seed)
    grads = {}
    for name, shape in _SHAPES.items():
        scale = 10.0 ** rng.uniform(-3.0, 3.0, size=shape)
        grads[name] = (scale * rng.standard_normal((_STEPS, *shape))).astype(np.float32)
        if zero_first:
            grads[name][0] = 0.0
    return grads


_PARAMS = _params()
# Centered and debiased, the first step divides by the root of a variance
# that is tiny next to g**2 (see test_parity_with_optax.py): rounding noise
# in both libraries. A zero first gradient keeps every run well conditioned.
_GRADS_BEFORE = _gradient_stream(seed=1, zero_first=True)
_GRADS_AFTER = _gradient_stream(seed=2)


class Setting(NamedTuple):
    """One combination of optax's flags and a kind of learning rate."""

    eps_in_sqrt: bool
    centered: bool
    bias_correction: bool
    momentum: float | None
    nesterov: bool
    scheduled: bool

    def kwargs(self) -> dict:
        return dict(
            learning_rate=_SCHEDULE if self.scheduled else _LEARNING_RATE,
            initial_scale=_INITIAL_SCALE,
            eps_in_sqrt=self.eps_in_sqrt,
            centered=self.centered,
            momentum=self.momentum,
            nesterov=self.nesterov,
            bias_correction=self.bias_correction,
        )

    def id(self) -> str:
        return flags_id(*self)


_SETTINGS = [
    Setting(*values)
    for values in grid(
        EPS_IN_SQRT, CENTERED, BIAS_CORRECTION, [None, _MOMENTUM], NESTEROV, SCHEDULED
    )
]
_GRID = [pytest.param(setting, id=setting.id()) for setting in _SETTINGS]
_LIBRARIES = {"optax": optax.rmsprop, "ours": optax_rmsprop.rmsprop}


def _optax_state(setting: Setting):
    return optax.rmsprop(**setting.kwargs()).init(_PARAMS)


def _our_state(setting: Setting):
    return optax_rmsprop.rmsprop(**setting.kwargs()).init(_PARAMS)


def _updated(factory, setting: Setting, steps: int = 3):
    """The state after ``steps`` eager updates on the stream's first gradients."""
    tx = factory(**setting.kwargs())
    state = tx.init(_PARAMS)
    for k in range(steps):
        grads = {name: g[k] for name, g in _GRADS_BEFORE.items()}
        _, state = tx.update(grads, state, _PARAMS)
    return state


def _leaf_types(tree) -> list:
    return [
        (np.shape(x), jnp.result_type(x), x.weak_type) for x in jax.tree.leaves(tree)
    ]


# --------------------------------------------------------------------------
# The pytree.


@pytest.mark.parametrize("setting", _GRID)
def test_initial_state_has_optax_treedef(setting):
    assert jax.tree.structure(_our_state(setting)) == jax.tree.structure(
        _optax_state(setting)
    )


@pytest.mark.parametrize("setting", _GRID)
def test_initial_state_leaves_have_optax_shapes_and_dtypes(setting):
    assert _leaf_types(_our_state(setting)) == _leaf_types(_optax_state(setting))


@pytest.mark.parametrize("setting", _GRID)
def test_initial_state_values_equal_optax(setting):
    # nu starts at initial_scale = 0.1, mu and trace at 0, counts at 0.
    ours, ref = (
        jax.tree.leaves(_our_state(setting)),
        jax.tree.leaves(_optax_state(setting)),
    )
    assert len(ours) == len(ref)
    for got, want in zip(ours, ref):
        np.testing.assert_array_equal(got, want, strict=True)


@pytest.mark.parametrize("setting", _GRID)
def test_updated_state_keeps_optax_treedef_shapes_and_dtypes(setting):
    ours = _updated(optax_rmsprop.rmsprop, setting)
    ref = _updated(optax.rmsprop, setting)
    assert jax.tree.structure(ours) == jax.tree.structure(ref)
    assert _leaf_types(ours) == _leaf_types(ref)


def _with_count_class(factory) -> type:
    """optax does not export the WithCount classes; its factories build them."""
    return type(factory(bias_correction=True).init(_PARAMS))


_SCALER_CLASSES = [
    pytest.param(False, False, optax.ScaleByRmsState, id="rms"),
    pytest.param(
        False, True, _with_count_class(optax.scale_by_rms), id="rms_with_count"
    ),
    pytest.param(True, False, optax.ScaleByRStdDevState, id="stddev"),
    pytest.param(
        True, True, _with_count_class(optax.scale_by_stddev), id="stddev_with_count"
    ),
]


@pytest.mark.parametrize("centered,bias_correction,expected_class", _SCALER_CLASSES)
def test_scaler_state_is_optax_class(centered, bias_correction, expected_class):
    state = optax_rmsprop.rmsprop(
        _LEARNING_RATE, centered=centered, bias_correction=bias_correction
    ).init(_PARAMS)
    assert type(state) is tuple and len(state) == 3
    assert type(state[0]) is expected_class


@pytest.mark.parametrize("centered,bias_correction,expected_class", _SCALER_CLASSES)
def test_standalone_scaler_state_is_optax_class(
    centered, bias_correction, expected_class
):
    factory = optax_rmsprop.scale_by_stddev if centered else optax_rmsprop.scale_by_rms
    state = factory(bias_correction=bias_correction).init(_PARAMS)
    assert type(state) is expected_class


@pytest.mark.parametrize(
    "learning_rate,expected",
    [
        pytest.param(_LEARNING_RATE, optax.EmptyState(), id="constant"),
        pytest.param(
            _SCHEDULE,
            optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32)),
            id="schedule",
        ),
    ],
)
def test_learning_rate_state_is_empty_for_a_constant_and_a_count_for_a_schedule(
    learning_rate, expected
):
    state = optax_rmsprop.rmsprop(learning_rate).init(_PARAMS)[1]
    assert type(state) is type(expected)
    assert jax.tree.structure(state) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(got, want, strict=True)


@pytest.mark.parametrize(
    "momentum,nesterov,expected_class",
    [
        pytest.param(None, False, optax.EmptyState, id="no_momentum"),
        pytest.param(None, True, optax.EmptyState, id="nesterov_without_momentum"),
        pytest.param(_MOMENTUM, False, optax.TraceState, id="heavy_ball"),
        pytest.param(_MOMENTUM, True, optax.TraceState, id="nesterov"),
    ],
)
def test_momentum_state_is_a_trace_state_only_with_momentum(
    momentum, nesterov, expected_class
):
    state = optax_rmsprop.rmsprop(
        _LEARNING_RATE, momentum=momentum, nesterov=nesterov
    ).init(_PARAMS)
    assert type(state[2]) is expected_class


@pytest.mark.parametrize("centered", [False, True])
def test_count_is_an_int32_scalar_counting_the_updates(centered):
    setting = Setting(True, centered, True, None, False, False)
    count = _updated(optax_rmsprop.rmsprop, setting, steps=3)[0].count
    assert jnp.result_type(count) == jnp.int32
    assert np.shape(count) == ()
    assert int(count) == 3


@pytest.mark.parametrize("setting", _GRID)
def test_count_fields_sit_where_optax_puts_them(setting):
    """No count without bias correction or schedule; optax's paths otherwise."""

    def count_paths(state):
        return [path for path, _ in optax.tree.get_all_with_path(state, "count")]

    assert count_paths(_our_state(setting)) == count_paths(_optax_state(setting))


# --------------------------------------------------------------------------
# Decoupled weight decay: one more EmptyState, only when it is used.


def _optax_chain_with_weight_decay(setting: Setting):
    """The chain ours must mirror, built from optax's public transforms."""
    scaler = optax.scale_by_stddev if setting.centered else optax.scale_by_rms
    return optax.chain(
        scaler(
            initial_scale=_INITIAL_SCALE,
            eps_in_sqrt=setting.eps_in_sqrt,
            bias_correction=setting.bias_correction,
        ),
        optax.add_decayed_weights(_WEIGHT_DECAY),
        optax.scale_by_learning_rate(setting.kwargs()["learning_rate"]),
        (
            optax.trace(setting.momentum, setting.nesterov)
            if setting.momentum is not None
            else optax.identity()
        ),
    )


@pytest.mark.parametrize("setting", _GRID)
def test_weight_decay_adds_an_add_decayed_weights_state_after_the_scaler(setting):
    ours = optax_rmsprop.rmsprop(**setting.kwargs(), weight_decay=_WEIGHT_DECAY).init(
        _PARAMS
    )
    ref = _optax_chain_with_weight_decay(setting).init(_PARAMS)
    assert jax.tree.structure(ours) == jax.tree.structure(ref)
    assert _leaf_types(ours) == _leaf_types(ref)
    assert len(ours) == 4
    assert type(ours[1]) is optax.AddDecayedWeightsState
    assert ours[1] == optax.EmptyState()


@pytest.mark.parametrize("weight_decay", [0, 0.0], ids=["int_zero", "float_zero"])
@pytest.mark.parametrize("setting", _GRID)
def test_zero_weight_decay_adds_no_state(setting, weight_decay):
    ours = optax_rmsprop.rmsprop(**setting.kwargs(), weight_decay=weight_decay).init(
        _PARAMS
    )
    assert jax.tree.structure(ours) == jax.tree.structure(_optax_state(setting))


# --------------------------------------------------------------------------
# Checkpoints: optax -> ours and ours -> optax, directly and through pickle.


def _steps(tx, params, state, grads):
    """Jitted steps from ``(params, state)``: what each step made, and the end."""

    def step(carry, g):
        p, s = carry
        updates, s = tx.update(g, s, p)
        p = optax.apply_updates(p, updates)
        return (p, s), (updates, p, s)

    (params, state), history = jax.lax.scan(step, (params, state), grads)
    return {"history": history, "end": (params, state)}


@functools.cache
def _runner(library: str):
    """One jitted function running every setting of ``library`` side by side.

    Settings are keyed by id; one compilation serves them all (compiling each
    alone costs several times more), for the run up to the checkpoint and for
    the continuation, which have the same shapes.
    """
    transforms = {s.id(): _LIBRARIES[library](**s.kwargs()) for s in _SETTINGS}

    @jax.jit
    def run(starts, grads):
        return {key: _steps(tx, *starts[key], grads) for key, tx in transforms.items()}

    return transforms, run


@functools.cache
def _first_half(library: str) -> dict:
    """``_STEPS`` steps of every setting from ``init``, as NumPy arrays."""
    transforms, run = _runner(library)
    starts = {key: (_PARAMS, tx.init(_PARAMS)) for key, tx in transforms.items()}
    return jax.device_get(run(starts, _GRADS_BEFORE))


def _checkpoints(library: str) -> dict:
    """``{id: (params, state)}`` after the first half."""
    return {key: run["end"] for key, run in _first_half(library).items()}


def _pickled_into(checkpoints: dict, library: str) -> dict:
    """Leaves -> NumPy -> pickle -> unpickle -> ``library``'s own treedef."""
    transforms, _ = _runner(library)
    restored = {}
    for key, checkpoint in checkpoints.items():
        leaves, _ = jax.tree.flatten(checkpoint)
        blob = pickle.dumps([np.asarray(leaf) for leaf in leaves])
        treedef = jax.tree.structure((_PARAMS, transforms[key].init(_PARAMS)))
        restored[key] = jax.tree.unflatten(treedef, pickle.loads(blob))
    return restored


@functools.cache
def _continued(saved_by: str, resumed_by: str, pickled: bool) -> dict:
    """The second half, run by ``resumed_by`` from ``saved_by``'s checkpoints."""
    checkpoints = _checkpoints(saved_by)
    if pickled:
        checkpoints = _pickled_into(checkpoints, resumed_by)
    _, run = _runner(resumed_by)
    return jax.device_get(run(checkpoints, _GRADS_AFTER))


def _conditioning(setting: Setting, scaler_states):
    """``K = nu_hat / (nu_hat - mu_hat**2 [+ eps])`` centered, else 1 (float64).

    How much rounding in ``nu_hat`` and ``mu_hat**2`` grows in their
    difference, the centered variance.
    """
    if not setting.centered:
        return jax.tree.map(np.ones_like, scaler_states.nu)

    def conditioning(nu, mu):
        nu, mu = nu.astype(np.float64), mu.astype(np.float64)
        if setting.bias_correction:
            count = np.asarray(scaler_states.count, np.float64)
            correction = (1 - _DECAY**count).reshape((-1,) + (1,) * (nu.ndim - 1))
            nu, mu = nu / correction, mu / correction
        variance = nu - mu * mu + (_EPS if setting.eps_in_sqrt else 0.0)
        assert np.all(variance > 0) and np.all(nu / variance < 1e3)
        return np.maximum(nu / variance, 1.0)

    return jax.tree.map(conditioning, scaler_states.nu, scaler_states.mu)


def _running_absolute(terms: np.ndarray, start: np.ndarray, momentum: float):
    """``A_k = terms_k + momentum A_{k-1}`` from ``A_{-1} = start``; rows -1..K-1."""
    total = np.concatenate([start[None], terms]).astype(np.float64)
    for k in range(1, total.shape[0]):
        total[k] = total[k] + momentum * total[k - 1]
    return total


def _bounds(setting: Setting, want: dict, start_trace) -> tuple:
    """Elementwise bounds on the differences of the (updates, trace, params).

    As in ``test_parity_with_optax.py``: ``1e-6`` (~8 ulps) of the running
    absolute trace ``A_k = K_k |d_k| + m A_{k-1}``, here started from the
    checkpoint's ``|trace|``; ``2 A_k + A_{k-1}`` for Nesterov; ``K_k |u_k|``
    without momentum; plus one rounding of ``|p| + |u|`` per step for the
    parameters.
    """
    updates, params, states = want["history"]
    conditioning = _conditioning(setting, states[0])
    if setting.momentum is None:
        terms = jax.tree.map(lambda u: np.abs(u.astype(np.float64)), updates)
        start_trace = jax.tree.map(lambda u: np.zeros_like(u[0]), updates)
        momentum = 0.0
    else:
        momentum = setting.momentum

        def step_terms(trace, start):
            """``|d_k| = |t_k - m t_{k-1}|``, the step that entered the trace."""
            previous = np.concatenate([start[None], trace[:-1]]).astype(np.float64)
            return np.abs(trace.astype(np.float64) - momentum * previous)

        terms = jax.tree.map(step_terms, states[2].trace, start_trace)
    absolute = jax.tree.map(
        lambda d, k, t0: _running_absolute(k * d, np.abs(t0), momentum),
        terms,
        conditioning,
        start_trace,
    )
    trace_bound = jax.tree.map(lambda a: _RTOL * a[1:], absolute)
    if setting.momentum is not None and setting.nesterov:
        update_bound = jax.tree.map(lambda a: _RTOL * (2 * a[1:] + a[:-1]), absolute)
    else:
        update_bound = trace_bound
    param_bound = parameter_bounds(update_bound, updates, params)
    return update_bound, trace_bound, param_bound


def _exactly_reproduced(setting: Setting) -> bool:
    """Without momentum or bias correction, XLA compiles the same arithmetic."""
    return setting.momentum is None and not setting.bias_correction


def _assert_within(got_tree, want_tree, bound_tree) -> None:
    assert jax.tree.structure(got_tree) == jax.tree.structure(want_tree)
    for got, want, bound in zip(
        jax.tree.leaves(got_tree),
        jax.tree.leaves(want_tree),
        jax.tree.leaves(bound_tree),
    ):
        assert np.all(np.isfinite(want))
        assert got.dtype == want.dtype and got.shape == want.shape
        error = np.abs(got.astype(np.float64) - want.astype(np.float64))
        assert np.all(error <= bound), f"max excess {np.max(error - bound):.3g}"


def _assert_bit_identical(got_tree, want_tree) -> None:
    assert jax.tree.structure(got_tree) == jax.tree.structure(want_tree)
    for got, want in zip(jax.tree.leaves(got_tree), jax.tree.leaves(want_tree)):
        assert np.all(np.isfinite(want))
        np.testing.assert_array_equal(got, want, strict=True)


def _assert_same_continuation(setting, saved_by, resumed_by, pickled) -> None:
    """``resumed_by`` continues ``saved_by``'s checkpoint as ``saved_by`` does."""
    got = _continued(saved_by, resumed_by, pickled)[setting.id()]
    want = _continued(saved_by, saved_by, False)[setting.id()]
    if _exactly_reproduced(setting):
        _assert_bit_identical(got, want)
        return
    got_updates, got_params, got_states = got["history"]
    want_updates, want_params, want_states = want["history"]
    # The scaler's and the schedule's states are the same computation.
    _assert_bit_identical(got_states[:2], want_states[:2])
    start = _checkpoints(saved_by)[setting.id()][1][2]
    update_bound, trace_bound, param_bound = _bounds(
        setting, want, getattr(start, "trace", None)
    )
    if setting.momentum is not None:
        _assert_within(got_states[2].trace, want_states[2].trace, trace_bound)
    _assert_within(got_updates, want_updates, update_bound)
    _assert_within(got_params, want_params, param_bound)


@pytest.mark.parametrize("setting", _GRID)
def test_optax_checkpoint_continues_in_ours_as_in_optax(setting):
    _assert_same_continuation(setting, "optax", "ours", pickled=False)


@pytest.mark.parametrize("setting", _GRID)
def test_our_checkpoint_continues_in_optax_as_in_ours(setting):
    _assert_same_continuation(setting, "ours", "optax", pickled=False)


@pytest.mark.parametrize("setting", _GRID)
def test_pickled_optax_checkpoint_restores_into_our_treedef(setting):
    _assert_same_continuation(setting, "optax", "ours", pickled=True)


@pytest.mark.parametrize("setting", _GRID)
def test_pickled_checkpoint_of_ours_restores_into_optax_treedef(setting):
    _assert_same_continuation(setting, "ours", "optax", pickled=True)


# --------------------------------------------------------------------------
# optax's tree tools find the fields by name.


@pytest.mark.parametrize("setting", _GRID)
def test_tree_get_nu_returns_optax_nu(setting):
    ours = _checkpoints("ours")[setting.id()][1]
    ref = _checkpoints("optax")[setting.id()][1]
    got, want = optax.tree.get(ours, "nu"), optax.tree.get(ref, "nu")
    assert jax.tree.structure(got) == jax.tree.structure(_PARAMS)
    _assert_bit_identical(got, want)


@pytest.mark.parametrize("setting", _GRID)
def test_tree_get_mu_returns_optax_mu_only_when_centered(setting):
    ours = _checkpoints("ours")[setting.id()][1]
    ref = _checkpoints("optax")[setting.id()][1]
    got, want = optax.tree.get(ours, "mu"), optax.tree.get(ref, "mu")
    if not setting.centered:
        assert got is None and want is None
        return
    assert jax.tree.structure(got) == jax.tree.structure(_PARAMS)
    _assert_bit_identical(got, want)


@pytest.mark.parametrize("setting", _GRID)
def test_tree_get_trace_returns_optax_trace_only_with_momentum(setting):
    ours = _checkpoints("ours")[setting.id()][1]
    ref = _checkpoints("optax")[setting.id()][1]
    got, want = optax.tree.get(ours, "trace"), optax.tree.get(ref, "trace")
    if setting.momentum is None:
        assert got is None and want is None
        return
    assert jax.tree.structure(got) == jax.tree.structure(_PARAMS)
    # The traces carry float32 rounding differences (module docstring).
    _, trace_bound, _ = _bounds(
        setting, _first_half("optax")[setting.id()], jax.tree.map(np.zeros_like, want)
    )
    _assert_within(got, want, jax.tree.map(lambda b: b[-1], trace_bound))
