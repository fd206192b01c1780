"""The float32 limits: squares that overflow and squares that underflow.

Squares overflow for |g| > sqrt(max) = 1.8447e19, and underflow for |g|
below ~3e-19 with decay 0.9 (XLA:CPU flushes subnormal results to zero).

``docs/RELIABILITY.md`` states the guarantees (an overflowing square gives an
exact zero step, never NaN, and is forgotten; an underflowing one gives
g / eps). Single-leaf scalers run eagerly: JAX compiles each op once per
shape and dtype.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import STORAGE_OPTIONS
from helpers import assert_bit_identical
from helpers import storage_id
from helpers import storage_options

import optax_rmsprop

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


# The step is computed from the average as stored. float32 storage stores it
# exactly; bf16 rounds it by less than its relative spacing 2**-7 and int8 by
# less than 2**-3, and the update (a square root, for centered the variance
# 0.09 g^2 from nu = 0.1 g^2 and mu^2 = 0.01 g^2: errors of 1.33x the
# spacing, rooted) moves by less than that spacing.
_STORED_ROUNDING = {"default": 1e-6, "float32": 1e-6, "bfloat16": 2**-7, "int8": 2**-3}


@storage_options()
@pytest.mark.parametrize("scaler", list(_FIRST_STEP_OF_LARGEST_GRADIENT))
def test_largest_gradient_whose_square_fits_gives_the_exact_first_step(
    scaler, nu_dtype
):
    grads = jnp.full((4096,), 1.8e19)
    (updates,) = _eager_updates(_scaler(scaler, nu_dtype), [grads])
    expected = _FIRST_STEP_OF_LARGEST_GRADIENT[scaler]
    rtol = _STORED_ROUNDING[storage_id(nu_dtype)]
    np.testing.assert_allclose(updates, expected, rtol=rtol)


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
        (name, storage_id(nu_dtype)): _scaler(name, nu_dtype, decay=0.75)
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


@storage_options()
@pytest.mark.parametrize("scaler", _FORGETTING_SCALERS)
def test_gradient_whose_square_overflows_gives_a_zero_step_under_jit(scaler, nu_dtype):
    _assert_zero_steps_then_finite(_overflow_runs()[scaler, storage_id(nu_dtype)])


# Eagerly too: there `nu - mu**2` rounds mu**2 to inf before subtracting (under
# jit XLA may fuse it into one multiply-add that does not), so the centered
# variance would be inf - inf = NaN wherever |mu| > 1.8e19 and nu overflowed.
@storage_options()
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
    assert_bit_identical((actual, actual_state), (expected, expected_state))
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


@storage_options()
@pytest.mark.parametrize("scaler", _FORGETTING_SCALERS)
def test_gradient_whose_square_overflows_does_not_freeze_its_parameter(
    scaler, nu_dtype
):
    last = _overflow_runs()[scaler, storage_id(nu_dtype)][-1]
    rtol = _STORAGE_RTOL[storage_id(nu_dtype)]
    np.testing.assert_allclose(last[:4], last[4], rtol=rtol)


# g = 1e-23: g^2 = 1e-46 is below float32's smallest subnormal, so nu = 0. The
# exact nu, 0.1 * 1e-46, is nothing next to eps = 1e-8, so the exact update is
# g / sqrt(eps) = 1e4 g (eps inside), or g / eps = 1e8 g (eps outside): the
# flushed average gives the right answer.
@storage_options()
@pytest.mark.parametrize("scaler", list(_SCALERS))
def test_gradient_whose_square_underflows_gives_g_over_eps(scaler, nu_dtype):
    grads = jnp.full((4096,), -1e-23)
    (updates,) = _eager_updates(_scaler(scaler, nu_dtype), [grads])
    factor = 1e8 if scaler == "eps_outside" else 1e4
    np.testing.assert_allclose(updates, -1e-23 * factor, rtol=1e-6)


@storage_options()
@pytest.mark.parametrize("scaler", list(_SCALERS))
def test_underflowed_average_recovers_at_the_first_normal_gradient(scaler, nu_dtype):
    # Underflowing steps leave the averages exactly as zero gradients do, so
    # the next normal step is bit-identical.
    tx = _scaler(scaler, nu_dtype)
    normal = jnp.linspace(0.5, 2.0, 4096)
    after_tiny = _eager_updates(tx, [jnp.full((4096,), 1e-23)] * 3 + [normal])[-1]
    after_zero = _eager_updates(tx, [jnp.zeros(4096)] * 3 + [normal])[-1]
    assert_bit_identical(after_tiny, after_zero)


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
@storage_options()
@pytest.mark.parametrize("scaler", _UNCENTERED_SCALERS)
def test_underflowing_square_with_zero_eps_gives_the_gradient_itself(scaler, nu_dtype):
    grads = jnp.full((4096,), 1e-20).at[::2].multiply(-3.0)
    (updates,) = _eager_updates(_scaler(scaler, nu_dtype, eps=0.0), [grads])
    np.testing.assert_array_equal(np.asarray(updates), np.asarray(grads), strict=True)


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
