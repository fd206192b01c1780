"""optax_rmsprop under JAX's transformations: jit, chex variants, vmap, scan,
grad and pmap.

References are never the code under test run the same way: they are
``optax.rmsprop`` (float32 results are bit-identical except Nesterov
momentum, which differs by a few ulp, so parity uses tight tolerances), an
un-transformed run of the same optimizer (a Python loop of single runs for
``vmap``, a Python loop for ``scan``, a single-device run for ``pmap``), or a
central finite difference for meta-gradients.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from helpers import assert_trees_close
from helpers import mixed_problem
from helpers import run_jitted

import optax_rmsprop

_STEPS = 4

# Three configurations that between them take every code path of the update
# (the boolean flags pick one at build time). Centered is not combined with
# bias correction: its first-step variance is exactly zero, i.e. float32
# rounding noise (see test_against_oracle.py), which no reference reproduces.
_CONFIGS = [
    ("default", {}),
    (
        "centered_heavy_ball_eps_outside",
        dict(centered=True, momentum=0.9, eps_in_sqrt=False, initial_scale=0.1),
    ),
    (
        "debiased_nesterov_schedule",
        dict(
            learning_rate=optax.exponential_decay(2e-2, 1, decay_rate=0.8),
            bias_correction=True,
            momentum=0.9,
            nesterov=True,
        ),
    ),
]
_CONFIG_KWARGS = [kwargs for _, kwargs in _CONFIGS]
_CONFIG_IDS = [name for name, _ in _CONFIGS]

# float32 parity with optax: bit-identical but for Nesterov (a few ulp) and
# for what XLA fuses differently between execution modes (op by op, vmap,
# pmap, scan); a wrong formula is off by far more.
_RTOL = 1e-6
_ATOL = 1e-9


def _problem(steps=_STEPS, seed=0):
    """The mixed float32 tree of ``helpers`` and ``steps`` gradients, as JAX arrays."""
    return jax.tree.map(jnp.asarray, mixed_problem(steps, seed))


def _run(tx, params, grads, update=None):
    """Final params, state and per-step updates, stepping with ``update``."""
    return run_jitted(tx, params, grads, update)


def _assert_close(actual, desired, rtol=_RTOL, atol=_ATOL):
    assert_trees_close(actual, desired, rtol, atol)


def _index(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _rmsprop(lib, kwargs):
    """``lib.rmsprop`` with these options, learning rate 1e-2 unless given."""
    return lib.rmsprop(**{"learning_rate": 1e-2, **kwargs})


@pytest.mark.parametrize(
    "kwargs",
    _CONFIG_KWARGS + [dict(weight_decay=1e-2), dict(nu_dtype=jnp.float32)],
    ids=_CONFIG_IDS + ["weight_decay", "nu_dtype"],
)
def test_jitted_step_traces_once_over_several_steps(kwargs):
    # The state leaving a step must have exactly the avals of the state that
    # entered it (dtypes, weak types, shapes), or every step recompiles. The
    # state of a plain, un-jitted `init` is what users feed in first.
    tx = _rmsprop(optax_rmsprop, kwargs)
    chex.clear_trace_counter()  # The counter is keyed by source, not object.

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, grads, state):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params, grads = _problem(steps=5)
    state = tx.init(params)
    for g in grads:
        params, state = step(params, g, state)
    chex.assert_tree_all_finite(params)


class UpdateVariantsTest(chex.TestCase):
    """``tx.update`` run op by op, jitted and pmapped equals optax's jitted one.

    chex 0.1.92's pmap variant broadcasts every argument to all devices
    (``broadcast_args_to_devices=True``) and returns the first device's output,
    so the same un-batched state goes in and comes out of every variant.
    """

    @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
    @parameterized.named_parameters(
        [dict(testcase_name=name, kwargs=kwargs) for name, kwargs in _CONFIGS]
    )
    def test_update_variant_equals_optax(self, kwargs):
        params, grads = _problem()
        tx = _rmsprop(optax_rmsprop, kwargs)
        ours = _run(tx, params, grads, update=self.variant(tx.update))
        reference = _run(_rmsprop(optax, kwargs), params, grads)
        _assert_close(ours, reference)


@pytest.mark.parametrize("kwargs", _CONFIG_KWARGS, ids=_CONFIG_IDS)
def test_vmap_over_models_equals_loop_of_single_models(kwargs):
    # Three independent models, each with its own params and gradients: the
    # vmapped init and update (every state leaf, scalar counts included, gets
    # a batch axis) must give each model exactly its own run.
    n_models = 3
    problems = [_problem(seed=seed) for seed in range(n_models)]
    tx = _rmsprop(optax_rmsprop, kwargs)

    params = _stack([p for p, _ in problems])
    grads = [_stack([g[t] for _, g in problems]) for t in range(_STEPS)]
    state = jax.vmap(tx.init)(params)
    update = jax.jit(jax.vmap(tx.update))
    for g in grads:
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)

    for i, (p0, g) in enumerate(problems):
        single_params, single_state, _ = _run(tx, p0, g)
        _assert_close(
            (_index(params, i), _index(state, i)), (single_params, single_state)
        )


@pytest.mark.parametrize(
    "kwargs",
    [{}, dict(centered=True, momentum=0.9, nesterov=True)],
    ids=["default", "centered_nesterov"],
)
def test_vmap_over_traced_hyperparameters_equals_per_value_runs(kwargs):
    # learning rate, decay and eps arrive as tracers: the optimizer is built
    # inside the vmapped function and must take them as arrays (no Python
    # checks on their values, no Python branching). Each value's reference is
    # optax built with plain Python floats.
    params, grads = _problem()
    learning_rates = jnp.array([1e-3, 1e-2, 1e-1])
    decays = jnp.array([0.5, 0.9, 0.99])
    epses = jnp.array([1e-8, 1e-4, 1e-1])

    def train(learning_rate, decay, eps):
        tx = optax_rmsprop.rmsprop(learning_rate, decay=decay, eps=eps, **kwargs)
        return _run(tx, params, grads, update=tx.update)[0]

    batched = jax.jit(jax.vmap(train))(learning_rates, decays, epses)

    for i in range(len(learning_rates)):
        tx = optax.rmsprop(
            float(learning_rates[i]),
            decay=float(decays[i]),
            eps=float(epses[i]),
            **kwargs,
        )
        # A traced float32 `1 - decay` and a constant-folded one can differ
        # by an ulp, which a few steps carry on.
        _assert_close(_index(batched, i), _run(tx, params, grads)[0], rtol=1e-5)


@pytest.mark.parametrize("kwargs", _CONFIG_KWARGS, ids=_CONFIG_IDS)
def test_lax_scan_training_loop_equals_python_loop(kwargs):
    tx = _rmsprop(optax_rmsprop, kwargs)
    params, grads = _problem(steps=6)

    def body(carry, g):
        p, s = carry
        updates, s = tx.update(g, s, p)
        return (optax.apply_updates(p, updates), s), updates

    (scan_params, scan_state), scan_updates = jax.jit(
        lambda p, gs: jax.lax.scan(body, (p, tx.init(p)), gs)
    )(params, _stack(grads))

    loop_params, loop_state, loop_updates = _run(tx, params, grads)
    _assert_close(
        (scan_params, scan_state, scan_updates),
        (loop_params, loop_state, _stack(loop_updates)),
    )


def _quadratic_loss(params):
    """0.5 * sum(a * (x - c)^2), with curvatures a from 0.1 to 10."""
    a = jnp.linspace(0.1, 10.0, params.size).reshape(params.shape)
    c = jnp.linspace(-1.0, 1.0, params.size).reshape(params.shape)
    return 0.5 * jnp.sum(a * (params - c) ** 2)


def _loss_after_steps(kwargs, learning_rate, decay, steps=5):
    tx = optax_rmsprop.rmsprop(learning_rate, decay=decay, **kwargs)

    def step(_, carry):
        params, state = carry
        grads = jax.grad(_quadratic_loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = jnp.full((2, 3), 0.3, jnp.float64)
    params, _ = jax.lax.fori_loop(0, steps, step, (params, tx.init(params)))
    return _quadratic_loss(params)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        dict(centered=True, momentum=0.9, eps_in_sqrt=False),
        dict(momentum=0.9, nesterov=True),
        # Once failed: the debiasing power was taken in float32, so in float64
        # the loss was a staircase in decay (steps of 6e-8).
        dict(bias_correction=True),
    ],
    ids=["default", "centered_heavy_ball_eps_outside", "nesterov", "debiased"],
)
def test_meta_gradient_matches_central_finite_difference(kwargs):
    # d loss(5 steps) / d learning_rate and / d decay, by reverse-mode AD
    # through every update, against (f(x + h) - f(x - h)) / 2h in float64
    # (truncation ~h^2 = 1e-12, rounding ~1e-16 / h = 1e-10, relative).
    with jax.enable_x64(True):
        loss = jax.jit(lambda lr, decay: _loss_after_steps(kwargs, lr, decay))
        learning_rate, decay, h = jnp.float64(0.05), jnp.float64(0.9), 1e-6
        grad_lr, grad_decay = jax.jit(jax.grad(loss, argnums=(0, 1)))(
            learning_rate, decay
        )
        fd_lr = _central_difference(lambda lr: loss(lr, decay), learning_rate, h)
        fd_decay = _central_difference(lambda d: loss(learning_rate, d), decay, h)
        assert grad_lr.dtype == grad_decay.dtype == jnp.float64
        assert np.isfinite(grad_lr) and np.isfinite(grad_decay)
        # Both derivatives are far from zero here, so a relative check bites.
        assert abs(fd_lr) > 1e-2 and abs(fd_decay) > 1e-2
        np.testing.assert_allclose(grad_lr, fd_lr, rtol=1e-6)
        np.testing.assert_allclose(grad_decay, fd_decay, rtol=1e-6)


def _central_difference(f, x, h):
    return (f(x + h) - f(x - h)) / (2 * h)


def test_meta_gradient_is_finite_with_eps_zero_and_a_dead_unit():
    # The documented fix "a zero gradient gives a zero update even where the
    # denominator is zero (eps = 0)" must hold for the derivative too: a
    # `where` after the division differentiates 0 * rsqrt(0) = NaN (it once
    # did). The middle unit's gradient is always 0, so loss and derivative
    # must be those of the same problem without it.
    def loss(learning_rate, params, curvatures):
        tx = optax_rmsprop.rmsprop(learning_rate, eps=0.0)
        state = tx.init(params)
        for _ in range(3):
            updates, state = tx.update(curvatures * params, state, params)
            params = optax.apply_updates(params, updates)
        return jnp.sum(params**2)

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    with_dead_unit = value_and_grad(
        0.1, jnp.array([1.0, 0.0, -2.0]), jnp.array([1.0, 0.0, 3.0])
    )
    without = value_and_grad(0.1, jnp.array([1.0, -2.0]), jnp.array([1.0, 3.0]))
    assert np.all(np.isfinite(with_dead_unit))
    np.testing.assert_allclose(with_dead_unit, without, rtol=1e-6)


_N_DEVICES = 8


@pytest.mark.parametrize(
    "kwargs",
    [{}, _CONFIG_KWARGS[1]],
    ids=["default", _CONFIG_IDS[1]],
)
def test_pmap_with_pmean_gradients_keeps_replicas_identical(kwargs):
    # Data-parallel least squares: each of the 8 devices holds its own slice
    # of the batch, gradients are averaged with pmean, and every replica then
    # applies the same update. The reference is one device training on the
    # whole batch, whose gradient is the mean of the per-device gradients.
    assert jax.local_device_count() == _N_DEVICES  # Set by conftest.py.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(_N_DEVICES, 4, 3)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(_N_DEVICES, 4)), jnp.float32)
    params = {"w": jnp.asarray(rng.normal(size=3), jnp.float32), "b": jnp.zeros([])}
    tx = _rmsprop(optax_rmsprop, kwargs)

    def loss(p, x, y):
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    def step(p, s, x, y):
        grads = jax.lax.pmean(jax.grad(loss)(p, x, y), axis_name="batch")
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    replicated = jax.tree.map(
        lambda leaf: jnp.broadcast_to(leaf, (_N_DEVICES,) + leaf.shape), params
    )
    state = jax.pmap(tx.init)(replicated)
    p_step = jax.pmap(step, axis_name="batch")
    for _ in range(_STEPS):
        replicated, state = p_step(replicated, state, x, y)

    for leaf in jax.tree.leaves((replicated, state)):
        for device in range(1, _N_DEVICES):
            np.testing.assert_array_equal(leaf[device], leaf[0])

    single_step = jax.jit(
        lambda p, s: _step_on_whole_batch(tx, loss, p, s, x.reshape(-1, 3), y.ravel())
    )
    single_state = tx.init(params)
    for _ in range(_STEPS):
        params, single_state = single_step(params, single_state)
    # The two means add the same numbers in another order: ulps, which the
    # normalised update keeps at the ulp level.
    _assert_close(_index((replicated, state), 0), (params, single_state), rtol=1e-5)


def _step_on_whole_batch(tx, loss, params, state, x, y):
    updates, state = tx.update(jax.grad(loss)(params, x, y), state, params)
    return optax.apply_updates(params, updates), state
