"""optax_rmsprop inside optax's combinators: chain, schedules,
inject_hyperparams, MultiSteps, masked, multi_transform, apply_if_finite,
``optax.tree.get``, and parameter dtypes through a chain.

The reference is the same composition built on ``optax.rmsprop`` (float32
results are bit-identical to ours but for Nesterov momentum, a few ulp), or a
value derived by hand next to it, or the same optimizer run without the step
under test.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close
from helpers import mixed_problem
from helpers import run_jitted

import optax_rmsprop

_STEPS = 5
_RTOL = 1e-6
_ATOL = 1e-9

# Flag sets covering every code path of the update (centered is not combined
# with bias correction: its first-step variance is float32 rounding noise).
_CONFIGS = [
    {},
    dict(centered=True, momentum=0.9),
    dict(bias_correction=True, momentum=0.9, nesterov=True, eps_in_sqrt=False),
]
_CONFIG_IDS = ["default", "centered_heavy_ball", "debiased_nesterov_eps_outside"]


def _problem(steps=_STEPS, seed=0, gradient_scale=1.0):
    """The mixed float32 tree of ``helpers`` and ``steps`` gradients, as JAX arrays."""
    return jax.tree.map(jnp.asarray, mixed_problem(steps, seed, gradient_scale))


def _run(tx, params, grads):
    """Final params, final state and the updates of every step (jitted)."""
    return run_jitted(tx, params, grads)


def _assert_close(actual, desired, rtol=_RTOL, atol=_ATOL):
    assert_trees_close(actual, desired, rtol, atol)


def _global_norm(tree):
    return float(optax.tree.norm(tree))


# --- chain and schedules ---------------------------------------------------


@pytest.mark.parametrize("kwargs", _CONFIGS, ids=_CONFIG_IDS)
def test_chain_with_global_norm_clipping_equals_optax(kwargs):
    params, grads = _problem()
    assert min(_global_norm(g) for g in grads) > 1.0  # Every step is clipped.
    ours = _run(
        optax.chain(
            optax.clip_by_global_norm(1.0), optax_rmsprop.rmsprop(1e-2, **kwargs)
        ),
        params,
        grads,
    )
    reference = _run(
        optax.chain(optax.clip_by_global_norm(1.0), optax.rmsprop(1e-2, **kwargs)),
        params,
        grads,
    )
    _assert_close(ours, reference)


@pytest.mark.parametrize("kwargs", _CONFIGS, ids=_CONFIG_IDS)
def test_warmup_cosine_schedule_as_learning_rate_equals_optax(kwargs):
    # Warm-up from 0 over 3 steps, then cosine decay: 12 steps cover both.
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=1e-2,
        warmup_steps=3,
        decay_steps=10,
        end_value=1e-4,
    )
    params, grads = _problem(steps=12)
    ours = _run(optax_rmsprop.rmsprop(schedule, **kwargs), params, grads)
    reference = _run(optax.rmsprop(schedule, **kwargs), params, grads)
    _assert_close(ours, reference)
    # The schedule is read at count 0 first: learning rate 0, a zero step.
    for leaf in jax.tree.leaves(ours[2][0]):
        np.testing.assert_array_equal(leaf, 0.0)
    assert all(np.any(leaf != 0) for leaf in jax.tree.leaves(ours[2][1]))


# --- inject_hyperparams ----------------------------------------------------

_INJECTED = dict(learning_rate=1e-2, decay=0.9, eps=1e-8, momentum=0.9)


def _injected_run(factory, params, grads, change_at=None, changes=None):
    """Jitted steps of inject_hyperparams(factory); ``changes`` set in the
    state's hyperparams before step ``change_at``."""
    tx = optax.inject_hyperparams(factory)(**_INJECTED)
    update = jax.jit(tx.update)
    state = tx.init(params)
    history = []
    for t, g in enumerate(grads):
        if t == change_at:
            for name, value in changes.items():
                state.hyperparams[name] = jnp.asarray(value, jnp.float32)
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
        history.append(updates)
    return params, state, history


def _comparable(run):
    """Params, updates and the moments: what both libraries' states share."""
    params, state, history = run
    moments = {name: optax.tree.get(state, name) for name in ("nu", "trace")}
    return params, history, moments


def test_inject_hyperparams_under_jit_equals_optax():
    params, grads = _problem()
    ours = _injected_run(optax_rmsprop.rmsprop, params, grads)
    reference = _injected_run(optax.rmsprop, params, grads)
    _assert_close(_comparable(ours), _comparable(reference))
    for name, value in _INJECTED.items():
        assert ours[1].hyperparams[name] == np.float32(value)


@pytest.mark.parametrize(
    "changes",
    [dict(learning_rate=5e-2), dict(decay=0.5), dict(momentum=0.3), dict(eps=1e-1)],
    ids=["learning_rate", "decay", "momentum", "eps"],
)
def test_changing_injected_hyperparameter_between_steps_takes_effect(changes):
    # Two steps, then the hyperparameter is overwritten in the state, then
    # three more: optax does the same, and the result differs from a run
    # with no change (the new value is used, not the value built in at jit).
    params, grads = _problem()
    ours = _injected_run(optax_rmsprop.rmsprop, params, grads, 2, changes)
    reference = _injected_run(optax.rmsprop, params, grads, 2, changes)
    unchanged = _injected_run(optax_rmsprop.rmsprop, params, grads)
    _assert_close(_comparable(ours), _comparable(reference))
    name, value = next(iter(changes.items()))
    assert ours[1].hyperparams[name] == np.float32(value)
    _assert_close(ours[2][:2], unchanged[2][:2])
    # eps = 0.1 matters only where gradients are small, so look at every leaf.
    assert _largest_relative_change(ours[2][2], unchanged[2][2]) > 1e-2


def _largest_relative_change(tree, reference):
    return max(
        float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
        for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(reference))
    )


def test_injected_update_without_params_works_like_optax():
    # optax.rmsprop never reads params, and neither does
    # inject_hyperparams(optax.rmsprop): `update(grads, state)` is legal. (It
    # once failed here: the default weight_decay=0.0 was injected as an array,
    # no longer a plain zero, and added an add_decayed_weights step.)
    params, grads = _problem(steps=1)
    reference_tx = optax.inject_hyperparams(optax.rmsprop)(**_INJECTED)
    reference, _ = reference_tx.update(grads[0], reference_tx.init(params))
    tx = optax.inject_hyperparams(optax_rmsprop.rmsprop)(**_INJECTED)
    updates, _ = tx.update(grads[0], tx.init(params))
    _assert_close(updates, reference)


def test_injected_state_has_optax_layout():
    # Same hyperparameters and the same inner chain state as optax's, so an
    # injected checkpoint moves between the two libraries.
    params, _ = _problem(steps=0)
    ours = optax.inject_hyperparams(optax_rmsprop.rmsprop)(**_INJECTED).init(params)
    reference = optax.inject_hyperparams(optax.rmsprop)(**_INJECTED).init(params)
    assert set(ours.hyperparams) == set(reference.hyperparams)
    chex.assert_trees_all_equal_structs(ours, reference)
    chex.assert_trees_all_equal(ours, reference)


# --- MultiSteps, masked, multi_transform -----------------------------------


@pytest.mark.parametrize("kwargs", _CONFIGS, ids=_CONFIG_IDS)
def test_multi_steps_equals_optax(kwargs):
    # Gradients averaged over k = 3 mini-steps, one optimizer step per 3:
    # 8 mini-steps make two full steps and a pending partial one.
    params, grads = _problem(steps=8)
    ours = _run(
        optax.MultiSteps(optax_rmsprop.rmsprop(1e-2, **kwargs), every_k_schedule=3),
        params,
        grads,
    )
    reference = _run(
        optax.MultiSteps(optax.rmsprop(1e-2, **kwargs), every_k_schedule=3),
        params,
        grads,
    )
    _assert_close(ours, reference)
    for t, updates in enumerate(ours[2]):
        is_step = t % 3 == 2
        assert all(np.any(leaf != 0) == is_step for leaf in jax.tree.leaves(updates))


_MASK = {"w": True, "b": False, "s": True}


@pytest.mark.parametrize(
    "mask",
    [_MASK, lambda params: {"w": True, "b": False, "s": True}],
    ids=["tree", "callable"],
)
@pytest.mark.parametrize("kwargs", _CONFIGS, ids=_CONFIG_IDS)
def test_masked_leaves_pass_through_untouched_others_equal_optax(kwargs, mask):
    params, grads = _problem()
    _, state, history = _run(
        optax.masked(optax_rmsprop.rmsprop(1e-2, **kwargs), mask), params, grads
    )
    _, reference_state, reference_history = _run(
        optax.masked(optax.rmsprop(1e-2, **kwargs), mask), params, grads
    )
    # The inner optimizer never sees "b": its update is the incoming gradient,
    # bit for bit, and the state keeps no moments for it.
    for updates, g in zip(history, grads):
        np.testing.assert_array_equal(updates["b"], g["b"])
    names = _moment_names(state)
    assert "nu" in names
    for name in names:
        assert isinstance(optax.tree.get(state, name)["b"], optax.MaskedNode)
    _assert_close((state, history), (reference_state, reference_history))


def _moment_names(state):
    return [
        name
        for name in ("nu", "mu", "trace")
        if optax.tree.get(state, name, None) is not None
    ]


def test_multi_transform_rmsprop_sgd_and_frozen_labels():
    # "w" trains with rmsprop, "b" with plain SGD (update -0.1 * g, by hand)
    # and "s" is frozen by set_to_zero (bit for bit unchanged).
    labels = {"w": "rms", "b": "sgd", "s": "frozen"}
    params, grads = _problem()

    def build(rmsprop):
        return optax.multi_transform(
            {
                "rms": rmsprop(1e-2, centered=True, momentum=0.9),
                "sgd": optax.sgd(0.1),
                "frozen": optax.set_to_zero(),
            },
            labels,
        )

    final, _, _ = _run(build(optax_rmsprop.rmsprop), params, grads)
    reference, _, _ = _run(build(optax.rmsprop), params, grads)
    _assert_close(final["w"], reference["w"])
    np.testing.assert_array_equal(final["s"], params["s"])
    expected_b = np.asarray(params["b"])
    for g in grads:
        expected_b = expected_b + np.float32(-0.1) * np.asarray(g["b"])
    np.testing.assert_allclose(final["b"], expected_b, rtol=1e-6)
    assert not np.allclose(final["w"], params["w"])


# --- apply_if_finite -------------------------------------------------------


@pytest.mark.parametrize("bad_value", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(centered=True, momentum=0.9),
        dict(
            learning_rate=optax.exponential_decay(1e-2, 1, 0.9),
            bias_correction=True,
            momentum=0.9,
            nesterov=True,
        ),
    ],
    ids=["centered_heavy_ball", "schedule_debiased_nesterov"],
)
def test_apply_if_finite_skips_a_non_finite_step_entirely(kwargs, bad_value):
    # Steps: good, good, bad (one non-finite element), good. The bad step
    # changes no param and no inner state leaf (nu, mu, trace and every
    # count, bit for bit), is counted, and the next step is exactly the
    # third step of a run that never saw it.
    kwargs = {"learning_rate": 1e-2, **kwargs}
    tx = optax.apply_if_finite(
        optax_rmsprop.rmsprop(**kwargs), max_consecutive_errors=2
    )
    update = jax.jit(tx.update)
    params, grads = _problem(steps=3)
    bad = jax.tree.map(lambda g: g, grads[1])
    bad["w"] = bad["w"].at[1, 2].set(bad_value)

    state = tx.init(params)
    for g in grads[:2]:
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
    before = (params, state.inner_state)

    updates, state = update(bad, state, params)
    params = optax.apply_updates(params, updates)
    chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, updates))
    chex.assert_trees_all_equal((params, state.inner_state), before)
    assert int(state.notfinite_count) == 1 and int(state.total_notfinite) == 1
    assert not bool(state.last_finite)

    updates, state = update(grads[2], state, params)
    params = optax.apply_updates(params, updates)
    assert int(state.notfinite_count) == 0 and int(state.total_notfinite) == 1
    assert bool(state.last_finite)

    clean = optax.apply_if_finite(
        optax_rmsprop.rmsprop(**kwargs), max_consecutive_errors=2
    )
    clean_params, clean_state, clean_history = _run(clean, *_problem(steps=3))
    chex.assert_trees_all_equal(
        (params, state.inner_state, updates),
        (clean_params, clean_state.inner_state, clean_history[-1]),
    )


# --- optax.tree.get --------------------------------------------------------


def test_tree_get_finds_the_moments_in_a_chained_state():
    # One step of chain(clip_by_global_norm(1), centered rmsprop with momentum)
    # on g = {a: [3, 0], b: 4}: |g| = 5, clipped g = {a: [0.6, 0], b: 0.8}.
    # With decay 0.9: nu = 0.1 g^2 = {a: [0.036, 0], b: 0.064},
    # mu = 0.1 g = {a: [0.06, 0], b: 0.08}, variance = nu - mu^2 =
    # {a: [0.0324, 0], b: 0.0576}, root {a: [0.18, 0], b: 0.24}, so the
    # scaled gradient is 0.6 / 0.18 = 0.8 / 0.24 = 10/3 (the zero gradient
    # stays 0) and trace = -lr * 10/3 = -1/3 with lr = 0.1.
    params = {"a": jnp.zeros(2), "b": jnp.zeros([])}
    grads = {"a": jnp.array([3.0, 0.0]), "b": jnp.array(4.0)}
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax_rmsprop.rmsprop(0.1, centered=True, momentum=0.9),
    )
    _, state = jax.jit(tx.update)(grads, tx.init(params), params)

    expected = {
        "nu": {"a": [0.036, 0.0], "b": 0.064},
        "mu": {"a": [0.06, 0.0], "b": 0.08},
        "trace": {"a": [-1 / 3, 0.0], "b": -1 / 3},
    }
    for name, values in expected.items():
        found = optax.tree.get(state, name)
        assert set(found) == {"a", "b"}
        for leaf, value in values.items():
            np.testing.assert_allclose(found[leaf], value, rtol=1e-6, atol=1e-12)


# --- dtypes ----------------------------------------------------------------


@pytest.mark.parametrize(
    "dtypes",
    [
        dict(w=jnp.bfloat16, b=jnp.bfloat16),
        dict(w=jnp.float32, b=jnp.float32),
        dict(w=jnp.float64, b=jnp.float64),
        dict(w=jnp.bfloat16, b=jnp.float64),
    ],
    ids=["bfloat16", "float32", "float64", "mixed"],
)
def test_param_dtypes_survive_a_chain(dtypes):
    # Each param keeps its dtype through clip -> rmsprop -> apply_updates over
    # several jitted steps; bf16 moments are float32 (a bf16 average with
    # decay near 1 freezes), other moments take the param's dtype.
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        params = {
            name: jnp.asarray(rng.normal(size=(3, 2)), dtype)
            for name, dtype in dtypes.items()
        }
        tx = optax.chain(
            optax.clip_by_global_norm(1.0),
            optax_rmsprop.rmsprop(
                1e-2, centered=True, momentum=0.9, nesterov=True, decay=0.999
            ),
        )
        step = jax.jit(lambda p, g, s: _step(tx, p, g, s))
        state = tx.init(params)
        for _ in range(3):
            grads = {
                name: jnp.asarray(rng.normal(size=(3, 2)), dtype)
                for name, dtype in dtypes.items()
            }
            new_params, state, updates = step(params, grads, state)
            for name, dtype in dtypes.items():
                assert updates[name].dtype == dtype
                assert new_params[name].dtype == dtype
            chex.assert_tree_all_finite(new_params)
            # Every leaf moves (a frozen bf16 leaf would be the bug to catch).
            assert all(np.any(new_params[n] != params[n]) for n in params)
            params = new_params

        for name in ("nu", "mu", "trace"):
            moments = optax.tree.get(state, name)
            for leaf, dtype in dtypes.items():
                want = jnp.float32 if dtype == jnp.bfloat16 else dtype
                assert moments[leaf].dtype == want, (name, leaf)


def _step(tx, params, grads, state):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates
