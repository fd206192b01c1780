"""``keras_rmsprop`` against Keras 3's own ``keras.optimizers.RMSprop``.

Keras is the reference everywhere (never ``optax_rmsprop`` itself): it runs
eagerly on the JAX backend, which ``conftest.py`` selects before Keras is
imported, on the same float32 parameters and gradients. Keras's step is::

    p     <- p - lr * weight_decay * p                 (only with weight_decay)
    v     <- rho * v + (1 - rho) * g**2
    a     <- rho * a + (1 - rho) * g                   (only when centered)
    inc    = lr * g / sqrt(v [- a**2] + epsilon)
    m     <- momentum * m + inc;  p <- p - m           (p <- p - inc if momentum 0)

The one intended difference: ours clamps the centered variance at zero where
Keras takes the root of a negative number and returns NaN.
"""

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import pytest
from helpers import grid
from helpers import options_grid
from helpers import options_id
from helpers import value_id

import optax_rmsprop

_STEPS = 100
_SHAPES = [(4, 3), (5,), ()]


def _mixed_problem(steps, seed=0):
    """Float32 parameters (matrix, vector, scalar) and a fixed gradient sequence.

    Gradient scales span 1e-3 to 1e3 across elements (so epsilon matters for
    some and not others), and have a non-zero mean so the centered variance
    differs from the raw second moment.
    """
    rng = np.random.default_rng(seed)
    scales = [
        10.0 ** np.linspace(-3, 3, 12).reshape(4, 3),
        10.0 ** np.linspace(-2, 2, 5),
        np.array(0.1),
    ]
    params = [rng.standard_normal(s).astype(np.float32) for s in _SHAPES]
    grads = [
        (scale * (0.5 + rng.standard_normal((steps,) + s))).astype(np.float32)
        for s, scale in zip(_SHAPES, scales)
    ]
    return params, grads


def _keras_trajectory(params, grads, **options):
    """Keras's parameters after each step, one ``(steps, *shape)`` array per leaf."""
    variables = [keras.Variable(p) for p in params]
    optimizer = keras.optimizers.RMSprop(**options)
    optimizer.build(variables)
    trajectory = []
    for t in range(len(grads[0])):
        optimizer.apply_gradients(zip([g[t] for g in grads], variables))
        trajectory.append([np.asarray(v.value) for v in variables])
    return [np.stack(leaf) for leaf in zip(*trajectory)]


def _our_trajectory(params, grads, **options):
    """Our parameters after each step, from one jitted scan over the gradients."""
    tx = optax_rmsprop.keras_rmsprop(**options)

    def step(carry, g):
        p, state = carry
        updates, state = tx.update(g, state, p)
        p = optax.apply_updates(p, updates)
        return (p, state), p

    @jax.jit
    def run(p, gs):
        return jax.lax.scan(step, (p, tx.init(p)), gs)[1]

    trajectory = run([jnp.asarray(p) for p in params], [jnp.asarray(g) for g in grads])
    return [np.asarray(leaf) for leaf in trajectory]


def _error(ours, theirs):
    """Largest deviation over all steps, in units of each leaf's largest value."""
    return max(np.max(np.abs(o - t)) / np.max(np.abs(t)) for o, t in zip(ours, theirs))


# Measured over the grid below (keras 3.15.1, jax 0.10.2, 2 CPU cores): at most
# 2.2e-7 without weight decay, i.e. ~2 float32 ulps of the largest parameter
# after 100 steps. The tolerance is ~5x that.
_TOLERANCE = 1e-6
# With weight decay Keras rounds the parameter twice per step (p - lr*wd*p,
# then the step) where we round once (p + (step - lr*wd*p)); with lr 1e-3 the
# parameter hardly moves, so the same rounding bias repeats for 100 steps:
# measured at most 2.7e-6, and the tolerance is ~4x that. A decay inside the
# momentum buffer or eps outside the root would be off by more than 1e-3.
_TOLERANCE_WEIGHT_DECAY = 1e-5

# Every option at each of its values, all crossed: (learning_rate, rho) go in
# pairs to keep the file under a minute (Keras steps eagerly).
_GRID = [
    {"learning_rate": learning_rate, "rho": rho, **options}
    for (learning_rate, rho), options in grid(
        [(1e-3, 0.9), (3e-2, 0.99)],
        options_grid(
            momentum=[0.0, 0.9],
            epsilon=[1e-7, 1e-3],
            centered=[False, True],
            weight_decay=[None, 1e-2],
        ),
    )
]


@pytest.mark.parametrize("options", _GRID, ids=options_id)
def test_trajectory_matches_keras(options):
    params, grads = _mixed_problem(_STEPS)
    theirs = _keras_trajectory(params, grads, **options)
    ours = _our_trajectory(params, grads, **options)
    if options["weight_decay"] is None:
        assert _error(ours, theirs) <= _TOLERANCE
    else:
        assert _error(ours, theirs) <= _TOLERANCE_WEIGHT_DECAY


def test_schedule_matches_keras_schedule_with_momentum_and_weight_decay():
    # Keras evaluates its schedule on `iterations` before the increment, as
    # optax does on the count: step t (from 0) uses 0.01 * 0.5 ** (t / 10),
    # for the step and for the decoupled weight decay alike.
    params, grads = _mixed_problem(_STEPS)
    options = dict(momentum=0.9, centered=True, weight_decay=1e-2)
    theirs = _keras_trajectory(
        params,
        grads,
        learning_rate=keras.optimizers.schedules.ExponentialDecay(
            initial_learning_rate=0.01, decay_steps=10, decay_rate=0.5
        ),
        **options,
    )
    ours = _our_trajectory(
        params,
        grads,
        learning_rate=optax.exponential_decay(
            init_value=0.01, transition_steps=10, decay_rate=0.5
        ),
        **options,
    )
    assert _error(ours, theirs) <= _TOLERANCE_WEIGHT_DECAY


def _keras_steps(param, grads, **options):
    """Keras's scalar parameter after each gradient in ``grads``."""
    return _keras_trajectory(
        [np.float32(param)], [np.asarray(grads, np.float32)], **options
    )[0]


def _our_steps(param, grads, **options):
    """Our scalar parameter after each gradient in ``grads``."""
    return _our_trajectory(
        [np.float32(param)], [np.asarray(grads, np.float32)], **options
    )[0]


@pytest.mark.parametrize("steps", [_keras_steps, _our_steps])
def test_first_step_puts_epsilon_inside_the_root(steps):
    # g = 2, rho 0.9: v = 0.1 * 2**2 = 0.4. With epsilon 0.6 inside the root
    # the step is 0.1 * 2 / sqrt(0.4 + 0.6) = 0.2 exactly; outside it (as in
    # PyTorch) it would be 0.2 / (sqrt(0.4) + 0.6) = 0.1622777.
    trajectory = steps(0.0, [2.0], learning_rate=0.1, rho=0.9, epsilon=0.6)
    np.testing.assert_allclose(trajectory, [-0.2], rtol=1e-6)


@pytest.mark.parametrize("steps", [_keras_steps, _our_steps])
def test_weight_decay_shrinks_by_lr_times_decay_outside_the_momentum_buffer(steps):
    # p0 = 1, lr 0.1, weight_decay 0.5 (lr * wd = 0.05), rho 0.9, eps 0.6,
    # momentum 0.5, gradients 2 then 0:
    #   step 1: p = 1 - 0.05 * 1 = 0.95; v = 0.4, inc = 0.2 / sqrt(1) = 0.2,
    #           m = 0.2, p1 = 0.95 - 0.2 = 0.75.
    #   step 2: p = 0.75 - 0.05 * 0.75 = 0.7125; inc = 0, m = 0.5 * 0.2 = 0.1,
    #           p2 = 0.7125 - 0.1 = 0.6125.
    # Had the decay entered the buffer: m1 = 0.25, m2 = 0.125 + 0.0375, and
    # p2 = 0.75 - 0.1625 = 0.5875.
    trajectory = steps(
        1.0,
        [2.0, 0.0],
        learning_rate=0.1,
        rho=0.9,
        epsilon=0.6,
        momentum=0.5,
        weight_decay=0.5,
    )
    np.testing.assert_allclose(trajectory, [0.75, 0.6125], rtol=1e-6)


# ---------------------------------------------------------------------------
# Invalid arguments. Keras checks only `learning_rate` when it is built: a
# Python float or a schedule (callable), anything else raises ValueError.
# ---------------------------------------------------------------------------

# (value, our exception): each refused by Keras with "Argument
# `learning_rate` should be float ...".
_LEARNING_RATES_KERAS_REFUSES = [
    ("0.001", TypeError),
    (None, TypeError),
    (1e-3j, TypeError),
    (True, TypeError),
    (np.array([1e-3, 1e-3], np.float32), ValueError),
    (np.array([1e-3], np.float32), ValueError),
    (jnp.array([[1e-3]]), ValueError),
]


@pytest.mark.parametrize("value, ours", _LEARNING_RATES_KERAS_REFUSES, ids=value_id)
def test_learning_rate_keras_refuses_is_refused_naming_it(value, ours):
    with pytest.raises(ours, match="`learning_rate`"):
        optax_rmsprop.keras_rmsprop(learning_rate=value)


@pytest.mark.parametrize("value, ours", _LEARNING_RATES_KERAS_REFUSES, ids=value_id)
def test_keras_refuses_the_same_learning_rate(value, ours):
    del ours  # Checked against ours above.
    with pytest.raises(ValueError, match="`learning_rate` should be float"):
        keras.optimizers.RMSprop(learning_rate=value)


def _keras_first_step(**options):
    """Builds Keras's optimizer and takes one step on a (2,) variable."""
    variable = keras.Variable(np.zeros(2, np.float32))
    optimizer = keras.optimizers.RMSprop(**options)
    optimizer.apply_gradients([(np.full(2, 2.0, np.float32), variable)])
    return np.asarray(variable.value)


# Not numbers: Keras takes them when built but fails in its first step
# (TypeError or ValueError, from JAX or from `momentum > 0`); we refuse them
# when the transform is built, with TypeError (ValueError for the shape).
_OTHERS_KERAS_FAILS_ON = [
    ("rho", "0.9", TypeError),
    ("rho", None, TypeError),
    ("momentum", "0.9", TypeError),
    ("momentum", None, TypeError),
    ("momentum", np.array([0.5, 0.9], np.float32), ValueError),
    ("epsilon", "1e-7", TypeError),
    ("epsilon", None, TypeError),
    ("weight_decay", "x", TypeError),
]


@pytest.mark.parametrize("name, value, ours", _OTHERS_KERAS_FAILS_ON, ids=value_id)
def test_setting_keras_fails_on_is_refused_when_built(name, value, ours):
    with pytest.raises(ours, match=f"`{name}`"):
        optax_rmsprop.keras_rmsprop(**{name: value})


@pytest.mark.parametrize("name, value, ours", _OTHERS_KERAS_FAILS_ON, ids=value_id)
def test_keras_fails_on_the_same_setting_by_its_first_step(name, value, ours):
    del ours  # Checked against ours above.
    with pytest.raises((TypeError, ValueError)):
        _keras_first_step(**{name: value})


# Deliberate differences: Keras takes these and steps (to NaN, or silently
# without momentum for a negative one, or with per-element rates for
# arrays); all make the average or the step meaningless.
_ACCEPTED_BY_KERAS_ONLY = [
    ("epsilon", -1e-7, ValueError),
    ("epsilon", float("nan"), ValueError),
    ("weight_decay", -1e-2, ValueError),
    ("rho", -0.1, ValueError),
    ("rho", 1.5, ValueError),
    ("momentum", -0.5, ValueError),
    ("momentum", 1.5, ValueError),
    ("rho", np.array([0.9, 0.99], np.float32), ValueError),
    ("epsilon", np.array([1e-7, 1e-3], np.float32), ValueError),
    ("weight_decay", np.array([1e-2, 1e-3], np.float32), ValueError),
    ("weight_decay", "0.01", TypeError),  # Keras casts the string to 0.01.
    ("centered", "no", TypeError),
]


@pytest.mark.parametrize("name, value, ours", _ACCEPTED_BY_KERAS_ONLY, ids=value_id)
def test_setting_keras_accepts_is_refused_naming_it(name, value, ours):
    with pytest.raises(ours, match=f"`{name}`"):
        optax_rmsprop.keras_rmsprop(**{name: value})


@pytest.mark.parametrize("name, value, ours", _ACCEPTED_BY_KERAS_ONLY, ids=value_id)
def test_keras_accepts_the_setting_we_refuse(name, value, ours):
    del ours  # Checked against ours above.
    assert _keras_first_step(**{name: value}).shape == (2,)


def test_known_array_values_are_checked():
    with pytest.raises(ValueError, match=r"`rho` must lie in \[0.0, 1.0\]"):
        optax_rmsprop.keras_rmsprop(rho=jnp.array(1.5))


# Deliberate differences the other way: Keras wants a Python float and refuses
# these; one number is unambiguous, and inject_hyperparams passes arrays.
_LEARNING_RATES_ONLY_WE_ACCEPT = [1, np.float32(0.1), np.array(0.1), jnp.array(0.1)]


@pytest.mark.parametrize("value", _LEARNING_RATES_ONLY_WE_ACCEPT, ids=value_id)
def test_number_learning_rate_keras_refuses_gives_keras_float_step(value):
    with pytest.raises(ValueError, match="`learning_rate` should be float"):
        keras.optimizers.RMSprop(learning_rate=value)
    theirs = _keras_first_step(learning_rate=float(value))
    ours = _first_step(optax_rmsprop.keras_rmsprop(learning_rate=value))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


# ---------------------------------------------------------------------------
# Traced hyperparameters (jit, vmap, inject_hyperparams) still pass: their
# shape is checked, their value (unknown while tracing) is not.
# ---------------------------------------------------------------------------


def _first_step(tx, grad=None):
    """Our update for one gradient (default two 2s), from zero parameters."""
    grad = jnp.full(2, 2.0) if grad is None else grad
    params = jnp.zeros_like(grad)
    updates, _ = tx.update(grad, tx.init(params), params)
    return updates


def _hand_step(learning_rate, rho):
    """First step from g = 2, epsilon 0: v = (1 - rho) * 4, -lr * 2 / sqrt(v)."""
    return -learning_rate * 2.0 / np.sqrt((1.0 - rho) * 4.0)


_TRACED = dict(learning_rate=0.5, rho=0.75, momentum=0.9, epsilon=0.0)


def test_hyperparameters_traced_under_jit_pass():
    # weight_decay adds nothing on zero parameters; passed traced all the same.
    @jax.jit
    def step(hyperparameters):
        assert all(isinstance(v, jax.core.Tracer) for v in hyperparameters.values())
        return _first_step(optax_rmsprop.keras_rmsprop(**hyperparameters))

    hyperparameters = dict(_TRACED, weight_decay=1e-2)
    ours = step({k: jnp.asarray(v, jnp.float32) for k, v in hyperparameters.items()})
    np.testing.assert_allclose(ours, np.full(2, _hand_step(0.5, 0.75)), rtol=1e-6)


def test_vmapped_learning_rate_gives_each_example_its_own_scalar_rate():
    def step(learning_rate):
        return _first_step(optax_rmsprop.keras_rmsprop(learning_rate, epsilon=0.0))

    ours = jax.vmap(step)(jnp.array([1e-3, 1e-2]))
    expected = [[_hand_step(lr, 0.9)] * 2 for lr in (1e-3, 1e-2)]
    np.testing.assert_allclose(ours, expected, rtol=1e-6)


def test_traced_array_that_is_not_rank_0_is_refused_under_jit():
    @jax.jit
    def step(rho):
        return _first_step(optax_rmsprop.keras_rmsprop(rho=rho))

    with pytest.raises(ValueError, match="`rho` must be a scalar"):
        step(jnp.array([0.9]))


def test_inject_hyperparams_under_jit_passes():
    tx = optax.inject_hyperparams(optax_rmsprop.keras_rmsprop)(**_TRACED)
    params = jnp.zeros(2)
    updates, _ = jax.jit(tx.update)(jnp.full(2, 2.0), tx.init(params), params)
    np.testing.assert_allclose(updates, np.full(2, _hand_step(0.5, 0.75)), rtol=1e-6)


# A constant gradient of 2.75 with Keras's defaults (rho 0.9, epsilon 1e-7),
# found by scanning constant gradients. Exactly, v - a**2 = g**2 rho**t (1 - rho**t)
# = 4.5e-6 at step 136, but v and a**2 are both ~7.56 (ulp 4.8e-7) and carry
# the rounding of 136 float32 EMA steps, so Keras computes v - a**2 + epsilon
# < 0 there and its step is sqrt(negative) = NaN (about 6% of constant
# gradients between 1e-3 and 1e3 do the same around steps 134-142 at rho 0.9).
_NAN_GRADIENT = 2.75
_NAN_STEP = 136  # 1-based step at which Keras's parameter becomes NaN.


def test_centered_variance_stays_finite_where_keras_goes_nan():
    grads = [_NAN_GRADIENT] * (_NAN_STEP + 9)
    theirs = _keras_steps(0.0, grads, centered=True)
    ours = _our_steps(0.0, grads, centered=True)
    assert np.isnan(theirs[_NAN_STEP - 1])  # The documented Keras failure.
    assert np.all(np.isfinite(ours))


def test_centered_step_never_exceeds_lr_g_over_sqrt_epsilon():
    # A variance clamped at zero bounds the denominator below by sqrt(eps), so
    # |step| <= lr * |g| / sqrt(eps) = 1e-3 * 2.75 / sqrt(1e-7) = 8.6962636;
    # on this sequence our own v - a**2 goes negative too from step 136 on, and
    # every step from there is exactly that bound.
    grads = [_NAN_GRADIENT] * (_NAN_STEP + 9)
    ours = _our_steps(0.0, grads, centered=True)
    steps = np.abs(np.diff(ours, prepend=0.0))
    assert np.max(steps) <= 8.6962636 * (1 + 1e-5)
