"""Properties that follow from the maths of RMSprop, on random pytrees and
random hyperparameters (hypothesis).

Updates run un-jitted: eager ops are compiled once per shape and dtype, and
the trees use only three shapes, so new trees and flags cost no compilation.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from helpers import updates_with_fixed_params
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from oracle import NumpyRmsprop

import optax_rmsprop

_SHAPES = [(), (3,), (2, 3)]
_ALL_DTYPES = [np.dtype(np.float32), np.dtype(jnp.bfloat16), np.dtype(np.float16)]
_FLOAT32 = [np.dtype(np.float32)]
_ULP32 = 2.0**-24  # float32 unit roundoff
_TINY32 = float(np.finfo(np.float32).tiny)  # smallest normal float32

# Gradient elements: exact zeros, or +-10^e for e in [-6, 2]: eight decades,
# none so small that (1 - decay) g^2 underflows float32.
_GRADIENT_ELEMENTS = st.builds(
    lambda sign, exponent: sign * 10.0**exponent,
    st.sampled_from([1.0, -1.0, 0.0]),
    st.floats(-6.0, 2.0),
)
_DECAYS = st.floats(0.0, 0.999)
_EPSILONS = st.floats(0.0, 1e-3)
_INITIAL_SCALES = st.just(0.0) | st.floats(0.0, 1.0)
_LEARNING_RATES = st.floats(1e-4, 1.0)
_MOMENTA = st.none() | st.floats(0.0, 0.99)
_WEIGHT_DECAYS = st.just(0.0) | st.floats(0.0, 0.1)

_SETTINGS = settings(max_examples=40, deadline=None)


def _trees(dtypes):
    """Nested dicts and lists of zero arrays (the params), scalars included.

    JAX arrays, not NumPy ones: NumPy's own promotion would turn
    ``weight_decay * p`` of a bf16 NumPy ``p`` into float32 inside optax.
    """
    leaf = st.builds(
        lambda shape, dtype: jnp.zeros(shape, dtype),
        st.sampled_from(_SHAPES),
        st.sampled_from(dtypes),
    )
    return st.recursive(
        leaf,
        lambda children: (
            st.lists(children, min_size=1, max_size=3)
            | st.dictionaries(st.sampled_from("abc"), children, min_size=1, max_size=3)
        ),
        max_leaves=4,
    )


@st.composite
def _problems(draw, dtypes, max_steps=4):
    """Params and a list of 1..max_steps gradient trees in the params' dtypes."""
    params = draw(_trees(dtypes))
    steps = draw(st.integers(1, max_steps))
    leaves, treedef = jax.tree.flatten(params)
    sequences = [
        draw(
            hnp.arrays(np.float64, (steps,) + leaf.shape, elements=_GRADIENT_ELEMENTS)
        ).astype(leaf.dtype)
        for leaf in leaves
    ]
    grads = [
        jax.tree.unflatten(treedef, [jnp.asarray(s[t]) for s in sequences])
        for t in range(steps)
    ]
    return params, grads


def _updates_of_every_step(tx, params, grads):
    """Each step's update tree (the params stay fixed)."""
    return updates_with_fixed_params(tx, params, grads)[0]


def _as_float64(tree):
    return [np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(tree)]


@_SETTINGS
@given(
    problem=_problems(_ALL_DTYPES),
    learning_rate=_LEARNING_RATES,
    decay=_DECAYS,
    eps=_EPSILONS,
    initial_scale=_INITIAL_SCALES,
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
    momentum=_MOMENTA,
    weight_decay=_WEIGHT_DECAYS,
    nu_dtype=st.sampled_from([None, jnp.float32, jnp.bfloat16]),
)
def test_update_has_each_leafs_shape_and_dtype(
    problem,
    learning_rate,
    decay,
    eps,
    initial_scale,
    flags,
    momentum,
    weight_decay,
    nu_dtype,
):
    # Shapes and dtypes only: with eps = 0 a centered update may be infinite.
    eps_in_sqrt, centered, nesterov, bias_correction = flags
    params, grads = problem
    tx = optax_rmsprop.rmsprop(
        learning_rate,
        decay,
        eps,
        initial_scale,
        eps_in_sqrt,
        centered,
        momentum,
        nesterov,
        bias_correction,
        weight_decay=weight_decay,
        nu_dtype=nu_dtype,
    )
    for updates in _updates_of_every_step(tx, params, grads):
        assert jax.tree.structure(updates) == jax.tree.structure(params)
        for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
            assert (u.shape, u.dtype) == (p.shape, p.dtype)


@_SETTINGS
@given(
    data=st.data(),
    learning_rate=_LEARNING_RATES,
    decay=_DECAYS,
    initial_scale=_INITIAL_SCALES,
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
    momentum=_MOMENTA,
    weight_decay=_WEIGHT_DECAYS,
)
def test_update_is_finite(
    data, learning_rate, decay, initial_scale, flags, momentum, weight_decay
):
    # Uncentered, nu_hat >= nu_t >= (1 - decay) g^2 > 0 for g != 0, so
    # |u| <= 1/sqrt(1 - decay) <= 32 (and u = 0 for g = 0) even with eps = 0.
    # Centered, the variance can be exactly 0 (decay 0, or the first
    # bias-corrected step), so u = g / sqrt(eps): finite needs eps > 0, and
    # 1e2 / 1e-8 = 1e10 would overflow float16, so float16 is left out there.
    eps_in_sqrt, centered, nesterov, bias_correction = flags
    eps = data.draw(st.floats(1e-8, 1e-3) if centered else _EPSILONS, label="eps")
    dtypes = _ALL_DTYPES[:2] if centered else _ALL_DTYPES
    params, grads = data.draw(_problems(dtypes), label="problem")
    tx = optax_rmsprop.rmsprop(
        learning_rate,
        decay,
        eps,
        initial_scale,
        eps_in_sqrt,
        centered,
        momentum,
        nesterov,
        bias_correction,
        weight_decay=weight_decay,
    )
    for updates in _updates_of_every_step(tx, params, grads):
        for u in _as_float64(updates):
            assert np.all(np.isfinite(u)), u


@_SETTINGS
@given(
    problem=_problems(_FLOAT32, max_steps=5), decay=_DECAYS, eps_in_sqrt=st.booleans()
)
def test_rms_update_is_at_most_one_over_sqrt_one_minus_decay(
    problem, decay, eps_in_sqrt
):
    # eps = 0, nu_0 = 0, no debiasing: nu_t = decay nu_(t-1) + (1 - decay) g_t^2
    # >= (1 - decay) g_t^2, so |u_t| = |g_t| / sqrt(nu_t) <= 1 / sqrt(1 - decay),
    # with equality at the first step; 1e-6 of slack covers float32 rounding.
    params, grads = problem
    tx = optax_rmsprop.scale_by_rms(decay, eps=0.0, eps_in_sqrt=eps_in_sqrt)
    bound = (1 + 1e-6) / math.sqrt(1 - decay)
    for updates in _updates_of_every_step(tx, params, grads):
        for u in _as_float64(updates):
            assert np.all(np.abs(u) <= bound), (np.max(np.abs(u)), bound)


@_SETTINGS
@given(
    problem=_problems(_FLOAT32, max_steps=5),
    decay=_DECAYS,
    learning_rate=_LEARNING_RATES,
)
def test_rmsprop_step_is_at_most_lr_over_sqrt_one_minus_decay(
    problem, decay, learning_rate
):
    # Without momentum the step is -lr u with |u| <= 1 / sqrt(1 - decay) (the
    # scale_by_rms bound above), so |step| <= lr / sqrt(1 - decay).
    params, grads = problem
    tx = optax_rmsprop.rmsprop(learning_rate, decay, eps=0.0)
    bound = (1 + 1e-6) * learning_rate / math.sqrt(1 - decay)
    for updates in _updates_of_every_step(tx, params, grads):
        for u in _as_float64(updates):
            assert np.all(np.abs(u) <= bound), (np.max(np.abs(u)), bound)


@_SETTINGS
@given(
    problem=_problems(_FLOAT32, max_steps=5),
    scale=st.floats(1e-3, 1e3),
    decay=_DECAYS,
    eps_in_sqrt=st.booleans(),
    bias_correction=st.booleans(),
)
def test_scale_by_rms_is_invariant_to_gradient_scale(
    problem, scale, decay, eps_in_sqrt, bias_correction
):
    # eps = 0, nu_0 = 0: scaling every g by c scales nu (and nu_hat) by c^2, so
    # u = c g / sqrt(c^2 nu_hat) = g / sqrt(nu_hat). nu_hat is a sum of
    # positive terms, well-conditioned: each side is within a few float32 ulps.
    params, grads = problem
    tx = optax_rmsprop.scale_by_rms(
        decay, eps=0.0, eps_in_sqrt=eps_in_sqrt, bias_correction=bias_correction
    )
    scaled = [jax.tree.map(lambda g: g * np.float32(scale), g) for g in grads]
    for ours, reference in zip(
        _updates_of_every_step(tx, params, scaled),
        _updates_of_every_step(tx, params, grads),
        strict=True,
    ):
        for u, v in zip(_as_float64(ours), _as_float64(reference), strict=True):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=0)


@_SETTINGS
@given(
    problem=_problems(_FLOAT32, max_steps=5),
    exponent=st.integers(-10, 10),
    decay=_DECAYS,
    eps_in_sqrt=st.booleans(),
    bias_correction=st.booleans(),
)
def test_scale_by_stddev_is_invariant_to_gradient_scale(
    problem, exponent, decay, eps_in_sqrt, bias_correction
):
    # As for scale_by_rms, mu_hat scales by c and nu_hat - mu_hat^2 by c^2, so
    # u(c g) = u(g). But the centered variance is a difference that can cancel
    # completely (decay 0, a first debiased step, repeated gradients), where
    # u = g / sqrt(rounding noise): a general c is only invariant up to the
    # conditioning. c = 2^k is exact in binary floating point: every product,
    # sum, quotient and square root (correctly rounded) of the scaled inputs is
    # the unscaled one times a power of two, so the updates must agree
    # bit for bit, cancellations, zeros and infinities included.
    params, grads = problem
    tx = optax_rmsprop.scale_by_stddev(
        decay, eps=0.0, eps_in_sqrt=eps_in_sqrt, bias_correction=bias_correction
    )
    scale = np.float32(2.0**exponent)
    scaled = [jax.tree.map(lambda g: g * scale, g) for g in grads]
    for ours, reference in zip(
        _updates_of_every_step(tx, params, scaled),
        _updates_of_every_step(tx, params, grads),
        strict=True,
    ):
        for u, v in zip(_as_float64(ours), _as_float64(reference), strict=True):
            np.testing.assert_array_equal(u, v)


@_SETTINGS
@given(
    data=st.data(),
    problem=_problems(_FLOAT32, max_steps=6),
    learning_rate=_LEARNING_RATES,
    decay=_DECAYS,
    eps=_EPSILONS,
    initial_scale=_INITIAL_SCALES,
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    momentum=_MOMENTA,
    weight_decay=_WEIGHT_DECAYS,
)
def test_uncentered_rmsprop_matches_oracle(
    data,
    problem,
    learning_rate,
    decay,
    eps,
    initial_scale,
    flags,
    momentum,
    weight_decay,
):
    # Centered runs are checked by the interval test below.
    eps_in_sqrt, nesterov, bias_correction = flags
    params, grads = problem
    mask = jax.tree.unflatten(
        jax.tree.structure(params),
        data.draw(
            st.lists(
                st.booleans(),
                min_size=len(jax.tree.leaves(params)),
                max_size=len(jax.tree.leaves(params)),
            ),
            label="mask",
        ),
    )
    kwargs = dict(
        learning_rate=learning_rate,
        decay=decay,
        eps=eps,
        initial_scale=initial_scale,
        eps_in_sqrt=eps_in_sqrt,
        momentum=momentum,
        nesterov=nesterov,
        bias_correction=bias_correction,
    )
    tx = optax_rmsprop.rmsprop(
        **kwargs, weight_decay=weight_decay, weight_decay_mask=mask
    )
    state = tx.init(params)
    oracle_params = _as_float64(params)
    shapes = [p.shape for p in oracle_params]
    oracle = NumpyRmsprop(
        shapes,
        weight_decay=weight_decay,
        weight_decay_mask=jax.tree.leaves(mask),
        **kwargs,
    )
    # learning rate -1 and nothing else: the oracle returns the scaler's u.
    scaler = NumpyRmsprop(
        shapes,
        -1.0,
        decay,
        eps,
        initial_scale,
        eps_in_sqrt,
        bias_correction=bias_correction,
    )
    beta = momentum or 0.0
    # Error budget. u is well-conditioned (a sum of positive terms): a few
    # float32 ulps, 1e-5 with room, except that the debiasing 1 - decay^t
    # is taken from a float32 decay (as in optax): (t + 2) ulps absolute, so
    # (t + 2) ulps / (1 - decay^t) relative, ~1.3e-5 at decay 0.999. The step
    # then sums lr (u + wd p) over past steps with weights beta^k, and such a
    # sum can cancel to ~0: its rounding is bounded by the same sum of the
    # magnitudes' errors, B_t = max(lr (r_t |u_t| + 1e-5 wd |p|)) + beta B_(t-1)
    # per leaf, (1 + beta) B_t for Nesterov's extra beta * trace. XLA on CPU
    # flushes float32 subnormals to zero (momentum 1e-45), hence float32 tiny.
    budgets = [0.0] * len(shapes)
    for t, g in enumerate(grads, start=1):
        updates, state = tx.update(g, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
        with np.errstate(divide="ignore", invalid="ignore"):  # 0 / 0, then masked
            u_scaler = scaler.step(_as_float64(g))
            expected = oracle.step(_as_float64(g), oracle_params)
        r = 1e-5 + ((t + 2) * _ULP32 / (1 - decay**t) if bias_correction else 0.0)
        for i, (ours, ref, u, p, decays) in enumerate(
            zip(
                _as_float64(updates),
                expected,
                u_scaler,
                oracle_params,
                jax.tree.leaves(mask),
                strict=True,
            )
        ):
            decay_term = 1e-5 * weight_decay * np.abs(p) if decays else 0.0
            budget = learning_rate * np.max(r * np.abs(u) + decay_term, initial=0.0)
            budgets[i] = budget + beta * budgets[i]
            tolerance = (1 + beta) * budgets[i] + _TINY32
            assert np.max(np.abs(ours - ref), initial=0.0) <= tolerance, (i, ours, ref)
        oracle_params = [p + d for p, d in zip(oracle_params, expected, strict=True)]


def _centered_denominator(variance, eps, eps_in_sqrt):
    return np.sqrt(variance + eps) if eps_in_sqrt else np.sqrt(variance) + eps


@_SETTINGS
@given(
    problem=_problems(_FLOAT32, max_steps=5),
    decay=_DECAYS,
    eps=_EPSILONS,
    initial_scale=_INITIAL_SCALES,
    eps_in_sqrt=st.booleans(),
    bias_correction=st.booleans(),
)
def test_scale_by_stddev_lies_in_the_oracles_rounding_interval(
    problem, decay, eps, initial_scale, eps_in_sqrt, bias_correction
):
    # The centered variance v = nu_hat - mu_hat^2 cancels (to exactly 0 after
    # one debiased step or with decay 0), so float32 computes v' = v +- delta
    # with delta a rounding error relative to nu_hat (mu_hat^2 <= nu_hat by
    # Cauchy-Schwarz): ~t ulps from the averages, plus, when debiasing, the
    # error of 1 - decay^t in float32, (t + 2) ulps / (1 - decay^t) relative,
    # twice. The denominator is monotone in v, so u must lie between
    # g / D(v + delta) and g / D(max(v - delta, 0)) (the clamp at zero), with
    # 1e-6 for the last roundings: tight where v is well-conditioned, any
    # value up to g / sqrt(eps) where it is not, and never NaN.
    params, grads = problem
    tx = optax_rmsprop.scale_by_stddev(
        decay, eps, initial_scale, eps_in_sqrt, bias_correction
    )
    # The eps float32 holds: XLA on CPU flushes subnormals (eps < 1.2e-38) to 0.
    eps32 = float(np.float32(eps)) if eps >= _TINY32 else 0.0
    state = tx.init(params)
    oracle = NumpyRmsprop(
        [np.shape(p) for p in jax.tree.leaves(params)],
        -1.0,
        decay,
        eps,
        initial_scale,
        eps_in_sqrt,
        centered=True,
        bias_correction=bias_correction,
    )
    for g in grads:
        updates, state = tx.update(g, state)
        gradients = _as_float64(g)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            oracle.step(gradients)  # its u may be g / 0: only its state is used
        t = oracle.t
        correction = 1 - decay**t if bias_correction else 1.0
        correction_error = (t + 2) * _ULP32 / correction if bias_correction else 0.0
        for u, g, nu, mu in zip(
            _as_float64(updates), gradients, oracle.nu, oracle.mu, strict=True
        ):
            nu_hat, mu_hat = nu / correction, mu / correction
            variance = nu_hat - mu_hat**2
            delta = nu_hat * (8 * (t + 2) * _ULP32 + 4 * correction_error)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                low = np.abs(g) / _centered_denominator(
                    variance + delta, eps32, eps_in_sqrt
                )
                high = np.abs(g) / _centered_denominator(
                    np.maximum(variance - delta, 0), eps32, eps_in_sqrt
                )
            # Beyond float32's range the update may be infinite; a zero gradient
            # moves nothing, even over a zero denominator.
            high = np.where(high > np.finfo(np.float32).max, np.inf, high)
            low, high = np.where(g == 0, 0.0, low), np.where(g == 0, 0.0, high)
            assert np.all(u * np.sign(g) >= 0), (u, g)
            assert np.all(np.abs(u) >= low * (1 - 1e-6)), (u, low, high)
            assert np.all(np.abs(u) <= high * (1 + 1e-6)), (u, low, high)
