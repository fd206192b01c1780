"""Numerics where optax 0.2.8 fails and optax_rmsprop must not.

Each test runs optax in the same setting and asserts its failure as well, so
the test documents the difference and fails if we ever behave like optax.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_rmsprop


def _run(tx, grads):
    """Updates and states of ``tx`` at every step of ``grads``' leading axis, jitted."""

    def step(state, g):
        updates, state = tx.update(g, state)
        return state, (updates, state)

    def run(grads):
        return jax.lax.scan(step, tx.init(jnp.zeros_like(grads[0])), grads)[1]

    return jax.jit(run)(grads)


def _eager_updates(tx, grads):
    """Updates of ``tx`` at every step of ``grads``' leading axis, op by op.

    For a few steps this is cheaper than compiling a scan: eager ops are
    compiled once per shape and dtype and shared between tests.
    """
    state = tx.init(jnp.zeros_like(grads[0]))
    updates = []
    for g in grads:
        u, state = tx.update(g, state)
        updates.append(u)
    return jnp.stack(updates)


def _first_non_finite_step(updates):
    """Index of the first step whose updates hold a NaN or inf, else None."""
    bad = ~jnp.all(jnp.isfinite(updates), axis=tuple(range(1, updates.ndim)))
    return int(jnp.argmax(bad)) if bool(jnp.any(bad)) else None


def _relative_error(x, reference):
    x, reference = np.asarray(x, np.float64), np.asarray(reference, np.float64)
    return np.max(np.abs(x - reference) / np.abs(reference))


# --- Centered variance never below zero -------------------------------------

# With a constant gradient g, mu_t = g (1 - d^t) and nu_t = g^2 (1 - d^t), so
# the variance nu - mu^2 = g^2 d^t (1 - d^t) falls geometrically. Once it is
# below float32's rounding error on nu ~ g^2 = 9e4 (ulp 2^-7 ~ 0.0078), i.e.
# d^t < 0.0078 / 9e4 ~ 8.7e-8, nu - mu^2 is rounding noise; when the noise is
# below -eps = -1e-8, optax takes rsqrt of a negative number: NaN. That is
# roughly t > 73 for d = 0.8 (measured: first NaN at step index 66) and
# t > 154 for d = 0.9 (measured: index 152 with noise of 1e-3 on the gradient;
# with an exactly constant 300 and d = 0.9 the roundings happen to cancel).
_RNG = np.random.default_rng(0)
_NEAR_CONSTANT_CASES = [
    pytest.param(0.8, np.full((200, 4), 300.0), id="exactly-300-decay-0.8"),
    pytest.param(
        0.9,
        300.0 + 1e-3 * _RNG.standard_normal((300, 16)),
        id="300-noise-1e-3-decay-0.9",
    ),
]


@pytest.mark.parametrize(("decay", "grads"), _NEAR_CONSTANT_CASES)
def test_centered_updates_stay_finite_where_optax_turns_nan(decay, grads):
    grads = jnp.asarray(grads, jnp.float32)
    theirs, _ = _run(optax.rmsprop(1.0, decay=decay, centered=True), grads)
    ours, _ = _run(optax_rmsprop.rmsprop(1.0, decay=decay, centered=True), grads)

    first_nan = _first_non_finite_step(theirs)
    assert first_nan is not None, "optax no longer fails here: update the test"
    assert bool(jnp.all(jnp.isfinite(ours)))
    # Until optax breaks, the two libraries compute the same numbers.
    np.testing.assert_allclose(ours[:first_nan], theirs[:first_nan], rtol=1e-6)


@pytest.mark.parametrize(("decay", "grads"), _NEAR_CONSTANT_CASES)
def test_centered_update_is_at_most_gradient_over_root_eps(decay, grads):
    # The variance is clamped at 0, so |u| = |g| / sqrt(var + eps) <= |g| /
    # sqrt(1e-8) = 1e4 |g| (lr 1); 1e-5 covers float32 rounding of rsqrt.
    grads = jnp.asarray(grads, jnp.float32)
    ours, _ = _run(optax_rmsprop.rmsprop(1.0, decay=decay, centered=True), grads)
    assert bool(jnp.all(jnp.abs(ours) <= 1e4 * (1 + 1e-5) * jnp.abs(grads)))


def test_bias_corrected_centered_first_step_is_finite_where_optax_is_nan():
    # Debiased, the first step has mu_hat = c g and nu_hat = c g^2 with
    # c = w / (1 - float32(0.99)^1), w = float32(1 - 0.99) = 0.0099999998 and
    # 1 - 0.99000001 = 0.0099999905, so c = 1 + 9.3e-7 and the variance
    # c g^2 (1 - c) = -9.3e-7 g^2 < -eps for |g| >= 1: optax gives NaN. Ours
    # clamps the variance to 0, so u = -lr g / sqrt(0 + 1e-8) = -1e4 g.
    grads = jnp.array([1.0, -2.0, 300.0], jnp.float32)
    options = dict(decay=0.99, centered=True, bias_correction=True)
    theirs = _eager_updates(optax.rmsprop(1.0, **options), grads[None])
    ours = _eager_updates(optax_rmsprop.rmsprop(1.0, **options), grads[None])

    assert bool(jnp.all(jnp.isnan(theirs)))
    np.testing.assert_allclose(ours[0], -1e4 * grads, rtol=1e-5)


def test_bias_corrected_centered_first_step_is_finite_on_random_gradients():
    # With decay 0.9, c = 1 - 2.4e-7 favours a positive variance, but the
    # roundings of c g and c g^2 still make nu_hat - mu_hat^2 < -eps for some
    # standard-normal float32 values (11 of these 1000 in optax's jitted update).
    grads = jnp.asarray(np.random.default_rng(0).standard_normal(1000), jnp.float32)
    options = dict(decay=0.9, centered=True, bias_correction=True)
    theirs_tx = optax.rmsprop(1.0, **options)
    ours_tx = optax_rmsprop.rmsprop(1.0, **options)
    theirs, _ = jax.jit(theirs_tx.update)(grads, theirs_tx.init(grads))
    ours, _ = jax.jit(ours_tx.update)(grads, ours_tx.init(grads))

    assert bool(jnp.any(jnp.isnan(theirs)))
    assert bool(jnp.all(jnp.isfinite(ours)))
    assert bool(jnp.all(jnp.abs(ours) <= 1e4 * (1 + 1e-5) * jnp.abs(grads)))


# --- Zero gradient with eps = 0 ---------------------------------------------

# g = [0, 2], decay 0.9, eps 0, first step. Non-zero entry: scale_by_rms has
# nu = 0.1 * 4 = 0.4 and u = 2 / sqrt(0.4) = sqrt(10); scale_by_stddev has
# mu = 0.2, variance 0.4 - 0.04 = 0.36 and u = 2 / 0.6 = 10 / 3; rmsprop with
# lr 1 returns -sqrt(10). Zero entry: nu = 0, so 1 / sqrt(0) = inf and optax
# returns 0 * inf = NaN; we return 0.
_ZERO_EPS_CASES = [
    pytest.param(
        optax_rmsprop.scale_by_rms, optax.scale_by_rms, math.sqrt(10), id="rms"
    ),
    pytest.param(
        optax_rmsprop.scale_by_stddev, optax.scale_by_stddev, 10 / 3, id="stddev"
    ),
    pytest.param(
        lambda **kw: optax_rmsprop.rmsprop(1.0, **kw),
        lambda **kw: optax.rmsprop(1.0, **kw),
        -math.sqrt(10),
        id="rmsprop",
    ),
]


@pytest.mark.parametrize("eps_in_sqrt", [True, False])
@pytest.mark.parametrize(("ours_factory", "optax_factory", "expected"), _ZERO_EPS_CASES)
def test_zero_gradient_with_zero_eps_gives_zero_update(
    ours_factory, optax_factory, expected, eps_in_sqrt
):
    grads = jnp.array([[0.0, 2.0]], jnp.float32)
    theirs = _eager_updates(
        optax_factory(decay=0.9, eps=0.0, eps_in_sqrt=eps_in_sqrt), grads
    )
    ours = _eager_updates(
        ours_factory(decay=0.9, eps=0.0, eps_in_sqrt=eps_in_sqrt), grads
    )

    assert bool(jnp.isnan(theirs[0, 0]))
    np.testing.assert_allclose(ours[0], [0.0, expected], rtol=1e-6)
    assert float(ours[0, 0]) == 0.0


# --- bfloat16 parameters ----------------------------------------------------


def test_bf16_params_keep_float32_moments_and_get_bf16_updates():
    params = jnp.ones((3,), jnp.bfloat16)
    options = dict(centered=True, bias_correction=True, momentum=0.9)
    tx = optax_rmsprop.rmsprop(0.1, **options)
    updates, state = tx.update(jnp.full((3,), 0.5, jnp.bfloat16), tx.init(params))

    assert updates.dtype == jnp.bfloat16
    assert state[0].nu.dtype == jnp.float32
    assert state[0].mu.dtype == jnp.float32
    assert state[2].trace.dtype == jnp.float32
    # optax keeps the averages in the parameters' bf16.
    assert optax.rmsprop(0.1, **options).init(params)[0].nu.dtype == jnp.bfloat16


@functools.cache
def _scale_switch_run(library, params_dtype, second_scale, bias_correction=False):
    """(updates, nu) at every step of 1000 steps of g = 1 then 1000 of g = second_scale.

    The gradients are bf16 numbers, cast to ``params_dtype``; cached because
    two tests read the same runs.
    """
    grads = jnp.concatenate([jnp.ones((1000, 4)), jnp.full((1000, 4), second_scale)])
    grads = grads.astype(jnp.bfloat16).astype(params_dtype)
    factory = {"optax": optax.rmsprop, "ours": optax_rmsprop.rmsprop}[library]
    updates, state = _run(
        factory(1.0, decay=0.999, bias_correction=bias_correction), grads
    )
    return updates, state[0].nu


# bf16 keeps 8 significant bits. So bf16(0.999) = 1 (0.999 is within half a
# gap, 2^-9, of 1): optax's bf16 "average" never decays and is a running sum
# of bf16(0.001) g^2 = 0.0009995 g^2, and an increment below half an ulp of
# nu (2^(e-8) for nu in [2^e, 2^(e+1))) is rounded away.
# * g = 1: once nu >= 0.5, 0.001 < 2^-9 = 0.00195, so nu freezes at 0.5
#   while float32 reaches 1 - 0.999^1000 = 0.632.
# * then g = 0.1: the increment 1e-5 is rounded away and nothing decays, so nu
#   stays 0.5 while float32 decays towards 0.01, to 0.239 after 1000 steps:
#   updates off by 1 - sqrt(0.239 / 0.5) = 31%.
# * then g = 10: the increment 0.1 is rounded away once nu >= 32 (half an ulp
#   of [32, 64) is 0.125), so nu freezes at 32 while float32 reaches
#   100 - (100 - 0.632) 0.999^1000 = 63.5: updates off by sqrt(63.5/32) - 1 = 41%.
# bias_correction divides the same frozen nu by 1 - 0.999^t and stays as far off.
# Ours averages in float32 and only rounds the update to bf16, a relative
# error of at most half an ulp, 2^-8; we allow one ulp, 2^-7.
@pytest.mark.parametrize("second_scale", [0.1, 10.0])
@pytest.mark.parametrize("bias_correction", [False, True])
def test_bf16_average_tracks_a_change_of_gradient_scale(second_scale, bias_correction):
    args = (second_scale, bias_correction)
    reference, reference_nu = _scale_switch_run("optax", jnp.float32, *args)
    theirs, _ = _scale_switch_run("optax", jnp.bfloat16, *args)
    ours, ours_nu = _scale_switch_run("ours", jnp.bfloat16, *args)

    assert ours.dtype == jnp.bfloat16
    assert _relative_error(ours, reference) <= 2**-7
    np.testing.assert_allclose(ours_nu, reference_nu, rtol=1e-4)
    assert _relative_error(theirs[-1], reference[-1]) > 0.25


@pytest.mark.parametrize("second_scale", [0.1, 10.0])
def test_optax_bf16_average_freezes_while_ours_keeps_moving(second_scale):
    # From the derivation above: over the last 200 steps optax's bf16 nu does
    # not move at all, while the float32 average moves by
    # 1 - 0.999^200 = 18% of its distance to g^2: (0.239 - 0.01) * 0.18 / 0.239
    # = 17% for g = 0.1, (100 - 63.5) * 0.18 / 63.5 = 10% for g = 10.
    _, theirs_nu = _scale_switch_run("optax", jnp.bfloat16, second_scale)
    _, ours_nu = _scale_switch_run("ours", jnp.bfloat16, second_scale)

    np.testing.assert_array_equal(theirs_nu[-1], theirs_nu[-201])
    assert _relative_error(ours_nu[-201], ours_nu[-1]) > 0.05


# nu_dtype=jnp.bfloat16 stores the average in bf16 but with stochastic
# rounding (round up with probability equal to the discarded fraction), so
# every stored value is unbiased and the increments optax rounds away survive
# on average. The price is noise: each step adds a rounding error of at most
# one ulp (2^-8 relative, variance <= 1/4 ulp^2) that decays by 0.999 per
# step, so the stored error has a standard deviation up to
# 0.5 ulp / sqrt(1 - 0.999^2) = 11 ulp = 4% of nu, 2% of the update. We
# assert the mean signed error over all elements and steps is below 2^-9
# (0.2%; the bias of round-to-nearest here is 31-41%) and the RMS error below
# 2^-5 (3%).
@pytest.mark.parametrize("second_scale", [0.1, 10.0])
@pytest.mark.parametrize("params_dtype", [jnp.bfloat16, jnp.float32])
def test_bf16_storage_tracks_a_change_of_gradient_scale(second_scale, params_dtype):
    grads = jnp.concatenate(
        [jnp.ones((1000, 256)), jnp.full((1000, 256), second_scale)]
    )
    grads = grads.astype(jnp.bfloat16)
    reference, _ = _run(optax.rmsprop(1.0, decay=0.999), grads.astype(jnp.float32))
    ours, state = _run(
        optax_rmsprop.rmsprop(1.0, decay=0.999, nu_dtype=jnp.bfloat16),
        grads.astype(params_dtype),
    )

    assert state[0].nu.dtype == jnp.bfloat16
    assert ours.dtype == params_dtype
    reference = np.asarray(reference, np.float64)
    error = (np.asarray(ours, np.float64) - reference) / reference
    assert abs(error.mean()) < 2**-9
    assert np.sqrt(np.mean(error**2)) < 2**-5


# --- float16 parameters -----------------------------------------------------


# g = 300 in f16: g^2 = 9e4 > 65504, the largest f16, so optax's f16 nu is
# inf. Then rsqrt(inf) = 0 and the update is 0 * 300 = 0, except centered with
# bias correction, where mu_hat^2 = 300^2 also overflows and inf - inf = NaN.
# Ours squares in float32 (nu = 0.1 * 9e4 = 9000 on the first step) and only
# rounds the update to f16 (11 significant bits: relative error <= 2^-11; we
# allow 2^-10) against optax on float32.
@pytest.mark.parametrize(
    "options",
    [{}, {"eps_in_sqrt": False}, {"bias_correction": True}, {"centered": True}],
)
def test_f16_gradients_whose_square_overflows_give_finite_updates(options):
    grads = jnp.full((3, 2), 300.0, jnp.float16)
    reference = _eager_updates(optax.rmsprop(1.0, **options), grads.astype(jnp.float32))
    theirs = _eager_updates(optax.rmsprop(1.0, **options), grads)
    ours = _eager_updates(optax_rmsprop.rmsprop(1.0, **options), grads)

    assert bool(jnp.all(theirs == 0))
    assert ours.dtype == jnp.float16
    assert _relative_error(ours, reference) <= 2**-10


def test_f16_centered_bias_corrected_overflow_is_nan_in_optax_finite_in_ours():
    grads = jnp.full((3, 2), 300.0, jnp.float16)
    options = dict(centered=True, bias_correction=True)
    theirs = _eager_updates(optax.rmsprop(1.0, **options), grads)
    ours = _eager_updates(optax_rmsprop.rmsprop(1.0, **options), grads)

    assert bool(jnp.all(jnp.isnan(theirs)))
    assert bool(jnp.all(jnp.isfinite(ours)))


@pytest.mark.parametrize("eps_in_sqrt", [True, False])
def test_f16_zero_gradient_with_default_eps_gives_zero_update(eps_in_sqrt):
    # The default eps 1e-8 is below f16's smallest subnormal 2^-24 = 6e-8, so
    # optax's f16 eps is 0 and a zero gradient gives 0 * inf = NaN. The other
    # entry: nu = 0.1, u = -1 / sqrt(0.1) = -sqrt(10), rounded to f16 (2^-10).
    grads = jnp.array([[0.0, 1.0]], jnp.float16)
    theirs = _eager_updates(optax.rmsprop(1.0, eps_in_sqrt=eps_in_sqrt), grads)
    ours = _eager_updates(optax_rmsprop.rmsprop(1.0, eps_in_sqrt=eps_in_sqrt), grads)

    assert bool(jnp.isnan(theirs[0, 0]))
    assert ours.dtype == jnp.float16
    assert float(ours[0, 0]) == 0.0
    np.testing.assert_allclose(float(ours[0, 1]), -math.sqrt(10), rtol=2**-10)


# --- Update dtypes ----------------------------------------------------------

_EVERY_FLAG = [
    {},
    {"eps_in_sqrt": False},
    {"centered": True},
    {"bias_correction": True},
    {"centered": True, "bias_correction": True},
    {"initial_scale": 1.0},
    {"momentum": 0.9},
    {"momentum": 0.9, "nesterov": True},
    {"weight_decay": 1e-2},
    {
        "eps_in_sqrt": False,
        "centered": True,
        "bias_correction": True,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 1e-2,
    },
]


@pytest.mark.parametrize("options", _EVERY_FLAG)
@pytest.mark.parametrize(
    "dtype_name", ["float32", "float64", "bfloat16", "float16", "complex64"]
)
def test_updates_take_the_params_dtype(dtype_name, options):
    with jax.enable_x64(dtype_name == "float64"):
        dtype = jnp.dtype(dtype_name)
        params = {
            "matrix": jnp.full((2, 3), 0.5, dtype),
            "vector": jnp.full((3,), -1.5, dtype),
            "scalar": jnp.asarray(2.0, dtype),
        }
        grads = jax.tree.map(lambda p: 0.1 * p, params)
        tx = optax_rmsprop.rmsprop(0.1, **options)
        state = tx.init(params)
        for _ in range(2):
            updates, state = tx.update(grads, state, params)

        for leaf in jax.tree.leaves(updates):
            assert leaf.dtype == dtype
            assert bool(jnp.all(jnp.isfinite(leaf)))


def test_float64_params_keep_float64_moments():
    with jax.enable_x64(True):
        params = jnp.ones((3,), jnp.float64)
        tx = optax_rmsprop.rmsprop(0.1, centered=True, momentum=0.9)
        _, state = tx.update(params, tx.init(params))

        assert state[0].nu.dtype == jnp.float64
        assert state[0].mu.dtype == jnp.float64
        assert state[2].trace.dtype == jnp.float64


# --- complex64 parameters ---------------------------------------------------

# g = [3 + 4i, i], decay 0.9, eps 1e-8, first step: |g|^2 = [25, 1], so
# nu = 0.1 |g|^2 = [2.5, 0.1] and u = g / sqrt(nu + eps).
_COMPLEX_GRADS = np.array([3 + 4j, 1j], np.complex64)


def test_complex_second_moment_is_a_real_average_of_abs_square():
    grads = jnp.asarray(_COMPLEX_GRADS)
    tx = optax_rmsprop.scale_by_rms(decay=0.9)
    updates, state = tx.update(grads, tx.init(jnp.zeros_like(grads)))

    assert state.nu.dtype == jnp.float32
    np.testing.assert_allclose(state.nu, [2.5, 0.1], rtol=1e-6)
    assert updates.dtype == jnp.complex64
    np.testing.assert_allclose(
        updates, _COMPLEX_GRADS / np.sqrt(np.array([2.5, 0.1]) + 1e-8), rtol=1e-6
    )
    # optax stores the same real numbers in a complex array.
    assert optax.scale_by_rms().init(grads).nu.dtype == jnp.complex64


def test_complex_centered_mean_is_complex_and_variance_real():
    # mu = 0.1 g = [0.3 + 0.4i, 0.1i], |mu|^2 = [0.25, 0.01], so the variance
    # is nu - |mu|^2 = [2.25, 0.09] and u = g / sqrt(var + eps) = g / [1.5, 0.3].
    grads = jnp.asarray(_COMPLEX_GRADS)
    tx = optax_rmsprop.scale_by_stddev(decay=0.9)
    updates, state = tx.update(grads, tx.init(jnp.zeros_like(grads)))

    assert state.mu.dtype == jnp.complex64
    np.testing.assert_allclose(state.mu, 0.1 * _COMPLEX_GRADS, rtol=1e-6)
    assert state.nu.dtype == jnp.float32
    assert updates.dtype == jnp.complex64
    np.testing.assert_allclose(
        updates, _COMPLEX_GRADS / np.array([1.5, 0.3]), rtol=1e-6
    )


# --- nu_dtype overrides -----------------------------------------------------


def test_nu_dtype_float32_on_bf16_params():
    # g = 2, decay 0.9, eps 0: nu = 0.1 * 4 = 0.4 and mu = 0.2 in float32, as
    # is the momentum buffer, which follows nu_dtype.
    params = jnp.zeros((2,), jnp.bfloat16)
    tx = optax_rmsprop.rmsprop(
        1.0, eps=0.0, centered=True, momentum=0.9, nu_dtype=jnp.float32
    )
    updates, state = tx.update(jnp.full((2,), 2.0, jnp.bfloat16), tx.init(params))

    assert state[0].nu.dtype == state[0].mu.dtype == state[2].trace.dtype == jnp.float32
    # rtol 4e-7: a few float32 ulps (an ulp of 0.4 is 7.5e-8 of it), the room
    # another CPU's XLA (FMA contraction, rounding order) needs.
    np.testing.assert_allclose(state[0].nu, [0.4, 0.4], rtol=4e-7)
    assert updates.dtype == jnp.bfloat16
    # Variance 0.4 - 0.2^2 = 0.36, update -2 / 0.6 = -3.3333, rounded to bf16's
    # grid of 2^-6 in [2, 4): -213 / 64 = -3.328125.
    np.testing.assert_array_equal(updates.astype(jnp.float32), [-3.328125, -3.328125])


def test_nu_dtype_bfloat16_on_float32_params():
    # g = 2, decay 0.9, eps 0: nu = 0.4 = 204.8 / 512 lies between two bf16
    # numbers of [0.25, 0.5) (grid 2^-9): 204/512 and 205/512. Stochastic
    # rounding stores one of them (205/512 with probability 0.8). The update
    # is computed from the stored average, floored at this step's own share
    # 0.1 g^2 = 0.4: -2 / sqrt(205/512) where 205/512 is stored, and
    # -2 / sqrt(0.4) = -sqrt(10) where 204/512 is. The momentum buffer stays
    # float32.
    params = jnp.zeros((4096,), jnp.float32)
    tx = optax_rmsprop.rmsprop(1.0, eps=0.0, momentum=0.9, nu_dtype=jnp.bfloat16)
    updates, state = tx.update(jnp.full((4096,), 2.0, jnp.float32), tx.init(params))

    assert state[0].nu.dtype == jnp.bfloat16
    assert state[2].trace.dtype == jnp.float32
    stored = np.asarray(state[0].nu.astype(jnp.float32))
    assert set(stored.tolist()) == {204 / 512, 205 / 512}
    # 4096 draws with p = 0.8: standard deviation sqrt(4096 * 0.16) = 26.
    assert abs(np.sum(stored == 205 / 512) - 0.8 * 4096) < 5 * 26
    assert updates.dtype == jnp.float32
    # rtol 4e-7: a few float32 ulps (an ulp of 3.16 is 7.5e-8 of it); XLA's
    # rsqrt differs by an ulp or two between CPU generations.
    expected = np.where(stored == 205 / 512, -2 / math.sqrt(205 / 512), -math.sqrt(10))
    np.testing.assert_allclose(updates, expected, rtol=4e-7)
