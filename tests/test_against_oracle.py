"""optax_rmsprop against the float64 NumPy model in ``oracle.py`` and against
values derived by hand.

Float32 results are compared with a norm-wise relative tolerance per leaf,
``max|ours - oracle| <= rtol * max|oracle| + atol``: elementwise relative
error is ill-conditioned where momentum sums cancel to almost nothing, and a
bound on the whole leaf still catches any wrong formula (each leaf holds
elements of very different gradient scales).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import BIAS_CORRECTION
from helpers import CENTERED
from helpers import EPS_IN_SQRT
from helpers import grid
from helpers import mixed_problem
from oracle import NumpyRmsprop

import optax_rmsprop

_STEPS = 50
_LEARNING_RATE = 1e-2
_WEIGHT_DECAY = 1e-2
# Gradient scale of every element of the mixed tree {"kernel": (4, 3) matrix,
# "extras": [(5,) vector, scalar]}: the kernel spans six decades (1e-4 sits at
# eps=1e-8's level, 1e2 far above it) and has one dead unit with an exactly
# zero gradient; the vector is uniformly small and the scalar large.
_KERNEL_SCALES = 10.0 ** np.linspace(-4, 2, 12).reshape(4, 3)
_KERNEL_SCALES[1, 2] = 0.0
_SCALES = {
    "kernel": _KERNEL_SCALES,
    "extras": [np.full(5, 1e-3), np.array(30.0)],
}
_MASK = {"kernel": True, "extras": [False, True]}


def _schedule(count):
    """0.02 * 0.95**count: works on an int32 tracer and on a Python int."""
    return 0.02 * 0.95**count


def _leaves(tree):
    return [np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(tree)]


def _problem(dtype, zero_first_gradient):
    """Initial params and _STEPS gradient trees (gradient = scale * (0.5 + N(0, 1)))."""
    return mixed_problem(
        _STEPS, scales=_SCALES, dtype=dtype, zero_first_gradient=zero_first_gradient
    )


def _run_ours(tx, params, grads):
    """Updates of every step, as lists of float64 leaves; jitted update."""
    state = tx.init(params)
    update = jax.jit(tx.update)
    history = []
    for g in grads:
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
        history.append(_leaves(updates))
    return history


def _run_oracle(params, grads, mask, **kwargs):
    """The oracle's updates of every step; it keeps its own float64 params."""
    params = _leaves(params)
    oracle = NumpyRmsprop(
        [p.shape for p in params],
        weight_decay_mask=None if mask is None else jax.tree.leaves(mask),
        **kwargs,
    )
    history = []
    for g in grads:
        updates = oracle.step(_leaves(g), params)
        params = [p + u for p, u in zip(params, updates, strict=True)]
        history.append(updates)
    return history


def _assert_close_normwise(ours, oracle, rtol, atol):
    for step, (ours_step, oracle_step) in enumerate(
        zip(ours, oracle, strict=True), start=1
    ):
        for leaf, (a, b) in enumerate(zip(ours_step, oracle_step, strict=True)):
            error = np.max(np.abs(a - b))
            bound = rtol * np.max(np.abs(b)) + atol
            assert error <= bound, (
                f"step {step}, leaf {leaf}: max|ours - oracle| = {error:.3g} > "
                f"{bound:.3g} (max|oracle| = {np.max(np.abs(b)):.3g})"
            )


def _compare_with_oracle(config, dtype, rtol, atol):
    eps_in_sqrt, centered, bias_correction, (momentum, nesterov) = config[:4]
    initial_scale, (weight_decay, mask), scheduled = config[4:]
    kwargs = dict(
        learning_rate=_schedule if scheduled else _LEARNING_RATE,
        decay=0.9,
        eps=1e-8,
        initial_scale=initial_scale,
        eps_in_sqrt=eps_in_sqrt,
        centered=centered,
        momentum=momentum,
        nesterov=nesterov,
        bias_correction=bias_correction,
    )
    # Centered with bias correction, the first step's variance is exactly zero
    # (nu_hat = g^2 = mu_hat^2): float32 leaves a few ulps of g^2 of either
    # sign, clamped at 0, so g / sqrt(noise + eps) is decided by rounding (a
    # factor up to ~1e4 here) and no float32 implementation can match it; the
    # momentum trace then carries that step on. A zero first gradient counts
    # as an observed sample, so from step 2 the variance is about g^2 / 4 and
    # well-conditioned; the exactly-zero case is pinned down by hand below.
    params, grads = _problem(dtype, zero_first_gradient=centered and bias_correction)
    tx = optax_rmsprop.rmsprop(
        **kwargs, weight_decay=weight_decay, weight_decay_mask=mask
    )
    ours = _run_ours(tx, params, grads)
    oracle = _run_oracle(params, grads, mask, weight_decay=weight_decay, **kwargs)
    _assert_close_normwise(ours, oracle, rtol, atol)


_MOMENTA = [(None, False), (0.9, False), (0.9, True)]
_WEIGHT_DECAYS = [(0.0, None), (_WEIGHT_DECAY, None), (_WEIGHT_DECAY, _MASK)]
# Every combination of the flags that pick a code path (2 x 2 x 2 x 3 = 24);
# the value options (initial_scale, weight decay with or without a mask, a
# schedule) are cycled through them so each value meets every flag setting
# at least once without compiling the full 288-way product (the parity file
# runs optax's full grid).
_ALL_CONFIGS = [
    (*flags, [0.0, 0.1][i % 2], _WEIGHT_DECAYS[i % 3], [False, True][(i // 2) % 2])
    for i, flags in enumerate(grid(EPS_IN_SQRT, CENTERED, BIAS_CORRECTION, _MOMENTA))
]


def _config_id(config):
    eps_in_sqrt, centered, bias_correction, (momentum, nesterov) = config[:4]
    initial_scale, (weight_decay, mask), scheduled = config[4:]
    momentum_id = "nomom" if momentum is None else ("nesterov" if nesterov else "heavy")
    decay_id = "nowd" if not weight_decay else ("wdmask" if mask else "wd")
    return "-".join(
        [
            "insqrt" if eps_in_sqrt else "outsqrt",
            "centered" if centered else "rms",
            "debiased" if bias_correction else "biased",
            momentum_id,
            f"init{initial_scale}",
            decay_id,
            "sched" if scheduled else "const",
        ]
    )


@pytest.mark.parametrize("config", _ALL_CONFIGS, ids=_config_id)
def test_float32_updates_match_float64_oracle(config):
    # Float32 rounding gives at most ~2e-6 over all configurations (Nesterov,
    # whose traces partly cancel); a wrong formula is off by O(1e-2) or more.
    _compare_with_oracle(config, np.float32, rtol=1e-4, atol=1e-12)


def test_nesterov_without_momentum_is_ignored():
    # optax applies no momentum at all when momentum is None, nesterov or not;
    # the oracle does the same.
    config = (True, False, False, (None, True), 0.0, (0.0, None), False)
    _compare_with_oracle(config, np.float32, rtol=1e-4, atol=1e-12)


def test_callable_weight_decay_mask_matches_oracle():
    # A mask given as a function of the params (decay matrices only) selects
    # the same leaves as the explicit list [vector: no, scalar: no, kernel: yes].
    params, grads = _problem(np.float32, zero_first_gradient=False)
    tx = optax_rmsprop.rmsprop(
        _LEARNING_RATE,
        momentum=0.9,
        weight_decay=0.1,
        weight_decay_mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p),
    )
    ours = _run_ours(tx, params, grads)
    mask = {"kernel": True, "extras": [False, False]}
    oracle = _run_oracle(
        params,
        grads,
        mask,
        learning_rate=_LEARNING_RATE,
        momentum=0.9,
        weight_decay=0.1,
    )
    _assert_close_normwise(ours, oracle, rtol=1e-4, atol=1e-12)


# float64, with jax's x64 mode: every code path (the flags that pick one),
# with the value-like options all switched on. Bias correction is the
# sensitive part: 1 - decay**count taken from a float32 decay is ~1e-7 off.


def _x64_param(eps_in_sqrt, centered, bias_correction, momenta):
    config = (eps_in_sqrt, centered, bias_correction, momenta)
    config += (0.1, _WEIGHT_DECAYS[2], True)
    return pytest.param(config, id=_config_id(config))


_X64_CONFIGS = [
    _x64_param(*flags)
    for flags in grid(EPS_IN_SQRT, CENTERED, BIAS_CORRECTION, _MOMENTA)
]


@pytest.mark.parametrize("config", _X64_CONFIGS)
def test_float64_updates_match_float64_oracle(config):
    # Both sides compute in float64 from the same float64 inputs; the only
    # differences are rounding, ~1e-16 times small condition numbers.
    with jax.enable_x64(True):
        _compare_with_oracle(config, np.float64, rtol=1e-12, atol=1e-300)


def test_bias_corrected_first_step_is_exact_in_float64():
    # g = 2, decay 0.9, eps 0: nu = 0.1 * 4 = 0.4, debiased by 1 - 0.9 = 0.1
    # to g^2 = 4, so u = 2 / sqrt(4) = 1 up to float64 rounding (~1e-16).
    # A float32 0.9 (0.89999998) gives 1 - 0.9 = 0.10000002 and u = 1 + 1.2e-7.
    with jax.enable_x64(True):
        tx = optax_rmsprop.scale_by_rms(decay=0.9, eps=0.0, bias_correction=True)
        params = jnp.zeros(1, jnp.float64)
        updates, _ = tx.update(jnp.array([2.0], jnp.float64), tx.init(params))
        assert updates.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(updates), [1.0], rtol=1e-12, atol=0)


# Hand-derived values (float32, so rtol ~1e-6 unless stated).


def _first_update(tx, g):
    g = jnp.asarray(g, jnp.float32)
    updates, _ = tx.update(g, tx.init(jnp.zeros_like(g)), jnp.zeros_like(g))
    return np.asarray(updates)


def _updates_after(tx, gradient_of_step, steps):
    """The update of the last of ``steps`` steps, gradient_of_step(t) at step t."""
    state = tx.init(jnp.zeros_like(jnp.asarray(gradient_of_step(1), jnp.float32)))
    update = jax.jit(tx.update)
    for t in range(1, steps + 1):
        g = jnp.asarray(gradient_of_step(t), jnp.float32)
        updates, state = update(g, state, jnp.zeros_like(g))
    return np.asarray(updates)


def test_first_step_of_scale_by_rms_is_sqrt_10_for_gradient_2():
    # nu_1 = 0.9 * 0 + 0.1 * 2^2 = 0.4; u = 2 / sqrt(0.4) = sqrt(4 / 0.4) = sqrt(10).
    tx = optax_rmsprop.scale_by_rms(decay=0.9, eps=0.0)
    np.testing.assert_allclose(_first_update(tx, [2.0]), [math.sqrt(10)], rtol=1e-6)


def test_bias_corrected_first_step_is_sign_of_gradient():
    # nu_1 = (1 - rho) g^2, debiased by 1 - rho^1 to exactly g^2, so with eps 0
    # u = g / sqrt(g^2) = g / |g| = sign(g), whatever the gradient's size.
    tx = optax_rmsprop.scale_by_rms(decay=0.9, eps=0.0, bias_correction=True)
    u = _first_update(tx, [-3.0, 0.5, 7e-3, 40.0])
    np.testing.assert_allclose(u, [-1.0, 1.0, 1.0, 1.0], rtol=1e-6)


@pytest.mark.parametrize(
    ("eps_in_sqrt", "expected"),
    [
        # decay 0.75, g = 2: nu = 0.25 * 4 = 1, all exact in binary.
        (True, 1.0),  # 2 / sqrt(1 + 3) = 2 / 2 = 1
        (False, 0.5),  # 2 / (sqrt(1) + 3) = 2 / 4 = 0.5
    ],
)
def test_eps_goes_inside_or_outside_the_root(eps_in_sqrt, expected):
    tx = optax_rmsprop.scale_by_rms(decay=0.75, eps=3.0, eps_in_sqrt=eps_in_sqrt)
    np.testing.assert_allclose(_first_update(tx, [2.0]), [expected], rtol=1e-6)


def test_constant_gradient_steady_state_is_g_over_sqrt_g2_plus_eps():
    # With g_t = g and nu_0 = 0, nu_t = (1 - rho) g^2 (1 + rho + ... + rho^(t-1))
    # = g^2 (1 - rho^t), so after T = 300 steps (0.9^300 ~ 2e-14) nu = g^2 and
    # u = g / sqrt(g^2 + eps): ~sign(g) for g^2 >> eps, visibly less for
    # g = 0.25, eps = 0.01: 0.25 / sqrt(0.0725) = 0.928477.
    g = np.array([-4.0, 0.25, 3.0])
    eps, decay, steps = 1e-2, 0.9, 300
    tx = optax_rmsprop.scale_by_rms(decay=decay, eps=eps)
    expected = g / np.sqrt(g**2 * (1 - decay**steps) + eps)
    np.testing.assert_allclose(expected, [-0.999688, 0.928477, 0.999444], rtol=1e-6)
    np.testing.assert_allclose(
        _updates_after(tx, lambda t: g, steps), expected, rtol=1e-5
    )


def test_tf1_initial_scale_first_step():
    # TF1 starts the accumulator at 1: nu_1 = 0.9 * 1 + 0.1 g^2, so with g = 3
    # and eps 0, u = 3 / sqrt(0.9 + 0.9) = sqrt(9 / 1.8) = sqrt(5).
    tx = optax_rmsprop.scale_by_rms(decay=0.9, eps=0.0, initial_scale=1.0)
    np.testing.assert_allclose(_first_update(tx, [3.0]), [math.sqrt(5)], rtol=1e-6)


def test_centered_steady_state_under_alternating_gradient():
    # g_t = +a at odd t, -a at even t. In the steady state the mean alternates
    # between m+ (after +a) and m- = -m+ (after -a), so
    #   m+ = rho * m- + (1 - rho) a = -rho m+ + (1 - rho) a
    #   =>  m+ = a (1 - rho) / (1 + rho),
    # while nu -> a^2 (|g| is constant). The variance is
    #   a^2 - a^2 (1 - rho)^2 / (1 + rho)^2 = a^2 4 rho / (1 + rho)^2,
    # so sigma = 2 a sqrt(rho) / (1 + rho) and, with eps 0, after a -a step
    #   u = -a / sigma = -(1 + rho) / (2 sqrt(rho)),
    # for rho = 0.81: -1.81 / 1.8 = -1.0055556 (uncentered RMSprop gives -1).
    # Transients decay like 0.81^t: ~5e-19 after 200 steps.
    a, decay = 3.0, 0.81
    tx = optax_rmsprop.scale_by_stddev(decay=decay, eps=0.0)
    u = _updates_after(tx, lambda t: [a if t % 2 else -a], steps=200)
    np.testing.assert_allclose(u, [-1.81 / 1.8], rtol=1e-5)


def test_momentum_steady_state_is_lr_over_one_minus_momentum():
    # Bias-corrected with eps 0 and a constant gradient, nu_hat_t = g^2 exactly
    # (see the constant-gradient test), so u_t = sign(g) from the first step.
    # The trace is m_t = -lr u + beta m_(t-1) = -lr sign(g) (1 - beta^t) / (1 - beta),
    # -> -lr / (1 - beta) = -0.1 / 0.1 = -1 per unit sign; 0.9^300 ~ 2e-14.
    lr, beta, steps = 0.1, 0.9, 300
    tx = optax_rmsprop.rmsprop(lr, eps=0.0, bias_correction=True, momentum=beta)
    u = _updates_after(tx, lambda t: [2.0, -0.01], steps)
    np.testing.assert_allclose(u, [-1.0, 1.0], rtol=1e-5)


def test_nesterov_first_step_is_one_plus_momentum_times_lr_u():
    # The trace starts at 0: m_1 = -lr u_1, and Nesterov returns
    # -lr u_1 + beta m_1 = -(1 + beta) lr u_1. With g = 2, decay 0.9, eps 0,
    # u_1 = sqrt(10) (first test), so the step is -1.9 * 0.1 * sqrt(10).
    tx = optax_rmsprop.rmsprop(0.1, eps=0.0, momentum=0.9, nesterov=True)
    np.testing.assert_allclose(
        _first_update(tx, [2.0]), [-1.9 * 0.1 * math.sqrt(10)], rtol=1e-6
    )


@pytest.mark.parametrize(
    ("eps_in_sqrt", "expected"),
    [
        # decay 0.5, g = 2: mu = 0.5 * 2 = 1 and nu = 0.5 * 4 = 2, debiased by
        # 1 - 0.5 = 0.5 to mu_hat = 2 and nu_hat = 4 (all exact in binary), so
        # the variance 4 - 2^2 is exactly 0 and eps = 0.25 alone divides g.
        (True, 4.0),  # 2 / sqrt(0 + 0.25) = 4
        (False, 8.0),  # 2 / (sqrt(0) + 0.25) = 8
    ],
)
def test_centered_bias_corrected_first_step_divides_by_eps_alone(eps_in_sqrt, expected):
    tx = optax_rmsprop.scale_by_stddev(
        decay=0.5, eps=0.25, eps_in_sqrt=eps_in_sqrt, bias_correction=True
    )
    np.testing.assert_allclose(_first_update(tx, [2.0]), [expected], rtol=1e-6)


def test_zero_gradient_with_eps_0_gives_zero_update():
    # Before any gradient nu = 0, so with eps 0 the step is 0 / sqrt(0): the
    # update of a zero gradient is defined as 0 (optax gives 0 * inf = NaN),
    # and the other element, g = 2, still gets sqrt(10) (first test).
    tx = optax_rmsprop.scale_by_rms(decay=0.9, eps=0.0)
    u = _first_update(tx, [0.0, 2.0])
    np.testing.assert_allclose(u, [0.0, math.sqrt(10)], rtol=1e-6, atol=0)
