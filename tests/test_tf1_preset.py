"""``tf1_rmsprop`` against a float64 NumPy model of TF1's RMSProp kernels.

TensorFlow is too heavy to install here, so the reference is the oracle
below, written from TF1's documentation and sharing no code with
``optax_rmsprop``. Ours runs in float32, jitted, on the same gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import options_grid
from helpers import options_id
from helpers import value_id

import optax_rmsprop


class Tf1RmspropOracle:
    """TF1's ``tf.compat.v1.train.RMSPropOptimizer`` on float64 NumPy arrays.

    ``RMSPropOptimizer`` creates an ``rms`` slot initialised to **ones** and
    ``momentum`` (and, when centered, ``mg``) slots initialised to zeros, then
    runs the ``ApplyRMSProp`` kernel, documented as::

        ms  <- rho * ms_{t-1} + (1 - rho) * grad * grad
        mom <- momentum * mom_{t-1} + lr * grad / sqrt(ms + epsilon)
        var <- var - mom

    or, when ``centered``, ``ApplyCenteredRMSProp``::

        mg  <- rho * mg_{t-1} + (1 - rho) * grad
        ms  <- rho * ms_{t-1} + (1 - rho) * grad * grad
        mom <- momentum * mom_{t-1} + lr * grad / sqrt(ms - mg * mg + epsilon)
        var <- var - mom

    with ``rho`` the optimizer's ``decay``. The learning rate may be a function
    of the global step, which ``minimize`` increments after the update, so
    step t (from 0) uses ``lr(t)``. No clamp: this is the kernel as written.

    See https://www.tensorflow.org/api_docs/python/tf/compat/v1/train/RMSPropOptimizer
    and the raw ops ``tf.raw_ops.ApplyRMSProp`` / ``ApplyCenteredRMSProp``.
    """

    def __init__(self, shapes, learning_rate, decay, momentum, epsilon, centered):
        self.learning_rate = learning_rate
        self.decay, self.momentum = decay, momentum
        self.epsilon, self.centered = epsilon, centered
        self.ms = [np.ones(shape, np.float64) for shape in shapes]
        self.mg = [np.zeros(shape, np.float64) for shape in shapes]
        self.mom = [np.zeros(shape, np.float64) for shape in shapes]
        self.global_step = 0

    def step(self, grads):
        """Returns ``-mom`` for each variable: what ``var`` changes by."""
        lr = self.learning_rate(self.global_step)
        rho = self.decay
        deltas = []
        for i, grad in enumerate(grads):
            grad = np.asarray(grad, np.float64)
            self.ms[i] = rho * self.ms[i] + (1 - rho) * grad * grad
            if self.centered:
                self.mg[i] = rho * self.mg[i] + (1 - rho) * grad
                denominator = np.sqrt(
                    self.ms[i] - self.mg[i] * self.mg[i] + self.epsilon
                )
            else:
                denominator = np.sqrt(self.ms[i] + self.epsilon)
            self.mom[i] = self.momentum * self.mom[i] + lr * grad / denominator
            deltas.append(-self.mom[i])
        self.global_step += 1
        return deltas


_STEPS = 100
_SHAPES = [(4, 3), (5,), ()]


def _mixed_gradients(steps, seed=0):
    """A fixed float32 gradient sequence for a matrix, a vector and a scalar.

    Scales span 1e-3 to 1e3 across elements, around a non-zero mean so the
    centered variance differs from the raw mean square.
    """
    rng = np.random.default_rng(seed)
    scales = [
        10.0 ** np.linspace(-3, 3, 12).reshape(4, 3),
        10.0 ** np.linspace(-2, 2, 5),
        np.array(0.1),
    ]
    return [
        (scale * (0.5 + rng.standard_normal((steps,) + s))).astype(np.float32)
        for s, scale in zip(_SHAPES, scales)
    ]


def _oracle_updates(grads, learning_rate, **options):
    """The oracle's per-step changes, one ``(steps, *shape)`` array per leaf."""
    oracle = Tf1RmspropOracle(_SHAPES, learning_rate, **options)
    deltas = [oracle.step([g[t] for g in grads]) for t in range(len(grads[0]))]
    return [np.stack(leaf) for leaf in zip(*deltas)]


def _our_updates(grads, learning_rate, **options):
    """Our per-step updates from one jitted scan, one array per leaf."""
    tx = optax_rmsprop.tf1_rmsprop(learning_rate, **options)

    def step(state, g):
        updates, state = tx.update(g, state)
        return state, updates

    @jax.jit
    def run(gs):
        params = [jnp.zeros(s, jnp.float32) for s in _SHAPES]
        return jax.lax.scan(step, tx.init(params), gs)[1]

    return [np.asarray(leaf) for leaf in run([jnp.asarray(g) for g in grads])]


def _worst_relative_error(ours, oracle):
    """max over leaves of ||ours - oracle|| / ||oracle||, 2-norms over all steps.

    Per leaf rather than per step: a single momentum buffer crossing zero makes
    one step's own norm tiny and its relative error meaningless.
    """
    return max(
        np.linalg.norm((o.astype(np.float64) - r).ravel()) / np.linalg.norm(r.ravel())
        for o, r in zip(ours, oracle)
    )


# float32 against float64: measured at most 6.6e-7 (about 5 float32 epsilons,
# rounding accumulated over 100 steps of decay-0.99 averages) over every case
# below; the tolerance is ~5x that.
_TOLERANCE = 3e-6

_GRID = options_grid(
    momentum=[0.0, 0.9],
    centered=[False, True],
    epsilon=[1e-10, 1e-3],
    decay=[0.9, 0.99],
)


@pytest.mark.parametrize("options", _GRID, ids=options_id)
def test_updates_match_the_tf1_kernel(options):
    grads = _mixed_gradients(_STEPS)
    oracle = _oracle_updates(grads, lambda t: 0.01, **options)
    ours = _our_updates(grads, 0.01, **options)
    assert _worst_relative_error(ours, oracle) <= _TOLERANCE


@pytest.mark.parametrize("centered", [False, True])
def test_scheduled_updates_match_the_tf1_kernel(centered):
    # TF1 reads a decayed learning rate off the global step before
    # incrementing it: step t (from 0) uses 0.01 * 0.5 ** (t / 20).
    grads = _mixed_gradients(_STEPS)
    options = dict(momentum=0.9, centered=centered, epsilon=1e-10, decay=0.9)
    oracle = _oracle_updates(grads, lambda t: 0.01 * 0.5 ** (t / 20), **options)
    schedule = optax.exponential_decay(0.01, transition_steps=20, decay_rate=0.5)
    ours = _our_updates(grads, schedule, **options)
    assert _worst_relative_error(ours, oracle) <= _TOLERANCE


def _first_updates(grads, **options):
    """Our updates for a scalar parameter, one per gradient in ``grads``."""
    tx = optax_rmsprop.tf1_rmsprop(**options)
    state = tx.init(jnp.zeros([], jnp.float32))
    updates = []
    for g in grads:
        update, state = tx.update(jnp.asarray(g, jnp.float32), state)
        updates.append(float(update))
    return updates


def test_first_step_divides_by_an_accumulator_started_at_one():
    # g = 3, lr 0.1, decay 0.9, eps 1e-10: ms = 0.9 * 1 + 0.1 * 3**2 = 1.8, so
    # the step is 0.1 * 3 / sqrt(1.8) = sqrt(0.09 / 1.8) = sqrt(0.05) = 0.2236068.
    # A zero-started accumulator would give 0.3 / sqrt(0.9) = 0.3162278.
    updates = _first_updates([3.0], learning_rate=0.1)
    np.testing.assert_allclose(updates, [-0.2236068], rtol=1e-6)


def test_centered_first_step_subtracts_the_squared_mean_gradient():
    # g = 3, lr 0.1, decay 0.9: ms = 1.8 as above, mg = 0.1 * 3 = 0.3, so the
    # step is 0.3 / sqrt(1.8 - 0.3**2) = 0.3 / sqrt(1.71) = 0.2294157.
    updates = _first_updates([3.0], learning_rate=0.1, centered=True)
    np.testing.assert_allclose(updates, [-0.2294157], rtol=1e-6)


def test_momentum_second_step_adds_the_decayed_first():
    # lr 0.1, decay 0.9, momentum 0.5, g = 3 then 1:
    #   step 1: ms = 1.8, mom = 0.3 / sqrt(1.8) = 0.2236068.
    #   step 2: ms = 0.9 * 1.8 + 0.1 * 1**2 = 1.72,
    #           mom = 0.5 * 0.2236068 + 0.1 * 1 / sqrt(1.72)
    #               = 0.1118034 + 0.0762493 = 0.1880527.
    updates = _first_updates([3.0, 1.0], learning_rate=0.1, momentum=0.5)
    np.testing.assert_allclose(updates, [-0.2236068, -0.1880527], rtol=1e-6)


# ---------------------------------------------------------------------------
# Invalid arguments. TF1's RMSPropOptimizer checks no values; its
# ApplyRMSProp and ApplyCenteredRMSProp shape functions require lr, rho
# (`decay`), momentum and epsilon of rank 0 ("Shape must be rank 0 but is
# rank 1"), and `ops.convert_to_tensor(None)` or a string cast to a float fails.
# TensorFlow is not installed here, so these are checked against that
# reading of tensorflow/core/ops/training_ops.cc and training/rmsprop.py.
# ---------------------------------------------------------------------------

_REFUSED_LIKE_TF1 = [
    ("learning_rate", np.array([0.1, 0.1], np.float32), ValueError),
    ("learning_rate", jnp.array([0.1]), ValueError),
    ("decay", jnp.array([0.9, 0.99]), ValueError),
    ("decay", np.array([[0.9]], np.float32), ValueError),
    ("momentum", jnp.array([0.5, 0.9]), ValueError),
    ("epsilon", np.zeros(0, np.float32), ValueError),
    ("learning_rate", None, TypeError),
    ("learning_rate", "0.1", TypeError),
    ("decay", None, TypeError),
    ("momentum", "0.9", TypeError),
    ("epsilon", None, TypeError),
]


def _kwargs(name, value):
    """``tf1_rmsprop``'s arguments with ``name`` set (``learning_rate`` 0.1)."""
    return {"learning_rate": 0.1, name: value}


@pytest.mark.parametrize("name, value, ours", _REFUSED_LIKE_TF1, ids=value_id)
def test_argument_tf1_refuses_is_refused_naming_it(name, value, ours):
    with pytest.raises(ours, match=f"`{name}`"):
        optax_rmsprop.tf1_rmsprop(**_kwargs(name, value))


def test_array_learning_rate_message_asks_for_rank_0():
    with pytest.raises(ValueError, match="must be a scalar \\(rank 0\\)"):
        optax_rmsprop.tf1_rmsprop(jnp.array([0.1]))


# Deliberate differences: TF1 runs its kernel on these (NaN or growing steps);
# we refuse them, plain numbers and arrays whose value is known alike.
_ACCEPTED_BY_TF1_ONLY = [
    ("decay", -0.1, ValueError),
    ("decay", 1.5, ValueError),
    ("decay", float("nan"), ValueError),
    ("decay", jnp.array(1.5), ValueError),
    ("momentum", -0.5, ValueError),
    ("momentum", 1.5, ValueError),
    ("momentum", np.float32(2.0), ValueError),
    ("epsilon", -1e-10, ValueError),
    ("epsilon", jnp.array(float("nan")), ValueError),
    ("centered", "no", TypeError),
]


@pytest.mark.parametrize("name, value, ours", _ACCEPTED_BY_TF1_ONLY, ids=value_id)
def test_setting_tf1_accepts_is_refused_naming_it(name, value, ours):
    with pytest.raises(ours, match=f"`{name}`"):
        optax_rmsprop.tf1_rmsprop(**_kwargs(name, value))


def _step_from_two(tx):
    """Our first update for g = 2 on a (2,) parameter."""
    return _first_step_of(tx, jnp.full(2, 2.0))


def _first_step_of(tx, grad):
    updates, _ = tx.update(grad, tx.init(jnp.zeros_like(grad)))
    return updates


def _hand_step(learning_rate, decay):
    """First step from g = 2: ms = decay * 1 + (1 - decay) * 4, -lr * 2 / sqrt(ms)."""
    return -learning_rate * 2.0 / np.sqrt(decay + (1.0 - decay) * 4.0)


@pytest.mark.parametrize("learning_rate", [-0.1, np.float32(-0.1), jnp.array(-0.1)])
def test_negative_learning_rate_is_taken_as_tf1_takes_it(learning_rate):
    # TF1 checks no sign: a negative rate ascends, +0.2 / sqrt(1.3) = 0.1754.
    ours = _step_from_two(optax_rmsprop.tf1_rmsprop(learning_rate))
    np.testing.assert_allclose(ours, np.full(2, _hand_step(-0.1, 0.9)), rtol=1e-6)


# ---------------------------------------------------------------------------
# Traced hyperparameters (jit, vmap, inject_hyperparams) still pass: their
# shape is checked, their value (unknown while tracing) is not.
# ---------------------------------------------------------------------------

_TRACED = dict(learning_rate=0.1, decay=0.9, momentum=0.5, epsilon=0.0)


def test_hyperparameters_traced_under_jit_pass():
    @jax.jit
    def step(hyperparameters):
        assert all(isinstance(v, jax.core.Tracer) for v in hyperparameters.values())
        return _step_from_two(optax_rmsprop.tf1_rmsprop(**hyperparameters))

    ours = step({k: jnp.asarray(v, jnp.float32) for k, v in _TRACED.items()})
    np.testing.assert_allclose(ours, np.full(2, _hand_step(0.1, 0.9)), rtol=1e-6)


def test_vmapped_decay_gives_each_example_its_own_scalar_decay():
    def step(decay):
        return _step_from_two(optax_rmsprop.tf1_rmsprop(0.1, decay, epsilon=0.0))

    ours = jax.vmap(step)(jnp.array([0.9, 0.5]))
    expected = [[_hand_step(0.1, decay)] * 2 for decay in (0.9, 0.5)]
    np.testing.assert_allclose(ours, expected, rtol=1e-6)


def test_traced_array_that_is_not_rank_0_is_refused_under_jit():
    @jax.jit
    def step(epsilon):
        return _step_from_two(optax_rmsprop.tf1_rmsprop(0.1, epsilon=epsilon))

    with pytest.raises(ValueError, match="`epsilon` must be a scalar"):
        step(jnp.array([1e-10, 1e-10]))


def test_inject_hyperparams_under_jit_passes():
    tx = optax.inject_hyperparams(optax_rmsprop.tf1_rmsprop)(**_TRACED)
    params = jnp.zeros(2)
    updates, _ = jax.jit(tx.update)(jnp.full(2, 2.0), tx.init(params), params)
    np.testing.assert_allclose(updates, np.full(2, _hand_step(0.1, 0.9)), rtol=1e-6)
