"""Fuzzing every public transformation with random pytrees and hyperparameters.

Trees nest dicts, lists and tuples around ``None`` leaves, scalars, zero-size
arrays and float16 / bfloat16 / float32 / float64 / complex64 leaves (float64
under ``jax.enable_x64``), optionally behind ``optax.masked``; every tree holds
at least one real, non-empty array leaf that the mask keeps, with a nonzero
gradient element, so no example is vacuous. Each test checks one contract,
"well-formed and bounded updates", on every example: the updates keep the
gradients' tree, shapes and dtypes, are finite, and obey the tight bound the
maths gives the transformation, derived below (running the transformation is
the costly part, so the checks share it). A bound is tight when some gradient
history attains it (most first steps do), so an update even a few ulps too
large fails.

Updates run eagerly: JAX compiles each op once per shape and dtype, so the
leaf kinds are few (``_LEAF_KINDS``) and no example compiles a new program.
Hypothesis runs derandomized, so the examples (and a green run's time) are the
same on every run, and shrinks a failing example to a small one.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from helpers import STORAGE_OPTIONS
from helpers import updates_with_fixed_params
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import optax_rmsprop

_SETTINGS = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclasses.dataclass(frozen=True)
class _Leaf:
    """A leaf to build: shape and dtype name (a pytree leaf itself)."""

    shape: tuple
    dtype: str


# float32 in every shape (64x64 is stored in int8 blocks by nu_dtype="int8"),
# the other dtypes in a few, so that eager mode compiles few op variants.
_LEAF_KINDS = [
    *[_Leaf(shape, "float32") for shape in [(), (0,), (2, 3), (64, 64)]],
    _Leaf((3,), "float16"),
    _Leaf((), "bfloat16"),
    _Leaf((3,), "bfloat16"),
    _Leaf((3,), "complex64"),
]
_X64_LEAF_KINDS = [_Leaf((3,), "float64")]
# The leaf every tree holds: real, an array, not empty, never masked out.
_ANCHOR_KINDS = [
    _Leaf((2, 3), "float32"),
    _Leaf((64, 64), "float32"),
    _Leaf((3,), "float16"),
    _Leaf((3,), "bfloat16"),
]
_INT8_ANCHOR = [_Leaf((64, 64), "float32")]


def _trees(kinds):
    """Nested dicts, lists and tuples of leaves and ``None``s, under a dict."""
    leaf = st.sampled_from(kinds) | st.none()
    subtrees = st.recursive(
        leaf,
        lambda children: (
            st.lists(children, max_size=3)
            | st.tuples(children, children)
            | st.dictionaries(st.sampled_from("abc"), children, max_size=3)
        ),
        max_leaves=5,
    )
    return st.dictionaries(st.sampled_from("xyz"), subtrees, max_size=3)


def _values(leaf, seed, nonzero=False):
    """Zeros (a fifth) and +-10^e for e in [-6, 2], float64 or complex128.

    Eight decades, none so small that a square underflows float32 (that is
    tests/test_reliability_float32_limits.py's subject). ``nonzero`` makes
    the first element nonzero, so that a bound on it is tested.
    """
    rng = np.random.default_rng(seed)

    def reals():
        magnitude = 10.0 ** rng.uniform(-6.0, 2.0, leaf.shape)
        sign = rng.choice([-1.0, 1.0, 0.0], leaf.shape, p=[0.4, 0.4, 0.2])
        if nonzero:
            sign.flat[0] = 1.0
        return sign * magnitude

    if leaf.dtype == "complex64":
        return reals() + 1j * reals()
    return reals()


@dataclasses.dataclass(frozen=True)
class _Problem:
    """Params and one gradient tree per step, as NumPy values to build."""

    x64: bool
    spec: object
    params: list
    grads: list
    mask: list

    def tree(self, values):
        leaves, treedef = jax.tree.flatten(self.spec)
        arrays = [jnp.asarray(v, leaf.dtype) for v, leaf in zip(values, leaves)]
        return jax.tree.unflatten(treedef, arrays)

    def build(self):
        """(params, [grads per step], mask), built under this problem's x64 mode."""
        mask = jax.tree.unflatten(jax.tree.structure(self.spec), self.mask)
        return self.tree(self.params), [self.tree(g) for g in self.grads], mask


@st.composite
def _problems(draw, max_steps=3, anchors=tuple(_ANCHOR_KINDS)):
    x64 = draw(st.booleans())
    anchor = draw(st.sampled_from(anchors))
    # Key "a" sorts before "x", "y", "z": the anchor is the first leaf.
    spec = {"a": anchor, **draw(_trees(_LEAF_KINDS + (_X64_LEAF_KINDS if x64 else [])))}
    leaves = jax.tree.leaves(spec)
    assert leaves[0] is anchor
    steps = draw(st.integers(1, max_steps))
    seeds = st.integers(0, 2**32 - 1)

    def values():
        return [_values(leaf, draw(seeds), i == 0) for i, leaf in enumerate(leaves)]

    params = values()
    grads = [values() for _ in range(steps)]
    mask = [True] + [draw(st.booleans()) for _ in leaves[1:]]
    return _Problem(x64, spec, params, grads, mask)


def _run(tx, params, grads_per_step):
    """Each step's updates (params held fixed) and the final state."""
    return updates_with_fixed_params(tx, params, grads_per_step)


# --------------------------------------------------------------------------
# The checks every transformation must pass.


def _as64(x):
    """float64 (complex128 for complex leaves) NumPy copy of an array."""
    x = np.asarray(x)
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def _abs64(x):
    return np.abs(_as64(x))


def _assert_same_tree_shapes_and_dtypes(updates, grads):
    assert jax.tree.structure(updates) == jax.tree.structure(grads)
    for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads)):
        assert u.shape == g.shape and u.dtype == g.dtype, (u.shape, u.dtype, g.dtype)


def _assert_finite(updates):
    for u in jax.tree.leaves(updates):
        assert np.all(np.isfinite(_as64(u))), u


# float32 arithmetic inside a step (the average, rsqrt, the product) errs by a
# few ulps of u = 2^-24; 16 of them is the slack every bound gets.
_U32 = 2.0**-24
_ARITHMETIC = 16 * _U32


def _assert_within(updates, bounds, roundings):
    """``|u| <= bound`` per element, ``bounds`` a list like the update leaves.

    A complex bound bounds the real and the imaginary part apart. Slack: the
    float32 arithmetic, plus ``roundings`` roundings to the update's own dtype
    (each at most half its epsilon), plus its smallest subnormal (a float16
    update below 6e-8 rounds to 0 or to that).
    """
    for u, bound in zip(jax.tree.leaves(updates), bounds):
        finfo = jnp.finfo(u.dtype)
        relative = _ARITHMETIC + roundings * float(finfo.eps)
        u = _as64(u)
        parts = [(u.real, bound.real), (u.imag, bound.imag)]
        for size, limit in parts if np.iscomplexobj(bound) else [(u, bound)]:
            excess = np.abs(size) - limit * (1 + relative)
            excess = excess - float(finfo.smallest_subnormal)
            if excess.size == 0:
                continue
            worst = np.unravel_index(np.argmax(excess), excess.shape)
            assert excess[worst] <= 0, (
                f"|u| = {abs(size[worst]):.9g} exceeds its bound {limit[worst]:.9g}"
            )


def _check(problem, make, bound_fn, masked, roundings):
    """Runs ``make()`` (maybe masked) on ``problem`` and checks every step.

    ``bound_fn(grads, params)`` gives per-leaf bounds (NumPy, float64) for the
    update of the last step of ``grads``, a list (one per step so far) of
    lists of leaves; values as built, i.e. rounded to their leaves' dtypes.
    """
    with jax.enable_x64(problem.x64):
        params, grads_per_step, mask = problem.build()
        tx = optax.masked(make(), mask) if masked else make()
        history, _ = _run(tx, params, grads_per_step)
        params64 = [_as64(p) for p in jax.tree.leaves(params)]
        grads64 = [[_as64(g) for g in jax.tree.leaves(gs)] for gs in grads_per_step]
        for step, (updates, grads) in enumerate(zip(history, grads_per_step)):
            _assert_same_tree_shapes_and_dtypes(updates, grads)
            _assert_finite(updates)
            bounds = bound_fn(grads64[: step + 1], params64)
            if masked:  # Masked-out leaves pass the gradient through, unchanged.
                for u, g, keep in zip(
                    jax.tree.leaves(updates), jax.tree.leaves(grads), problem.mask
                ):
                    if not keep:
                        np.testing.assert_array_equal(u, g)
                bounds = [
                    b if keep else np.full(np.shape(b), np.inf)
                    for b, keep in zip(bounds, problem.mask)
                ]
            _assert_within(updates, bounds, roundings)


# --------------------------------------------------------------------------
# The bounds.
#
# Notation: decay d, step t = 1, 2, ... (the count), initial_scale s0 >= 0,
# the gradient g = g_t of this step. The averages start at nu_0 = s0, mu_0 = 0,
# and unroll to
#     nu_t = d^t s0 + sum_k w_k |g_k|^2,   mu_t = sum_k w_k g_k,
#     w_k = (1 - d) d^(t-k),   W = sum_k w_k = 1 - d^t.
# Bias correction divides both by c_t = 1 - d^t (c_t = 1 without).
#
# Uncentered: every term of nu_t is >= 0, so nu_t >= d^t s0 + (1 - d) |g|^2
# and, with c_t <= 1,
#     |u| <= |g| / sqrt((d^t s0 + (1 - d) |g|^2) / c_t + eps)      (eps inside)
#     |u| <= |g| / (sqrt((d^t s0 + (1 - d) |g|^2) / c_t) + eps)    (outside).
# Attained when every earlier gradient is 0. Without bias correction this is
# at most 1 / sqrt(1 - d); with it, 1 at t = 1.
#
# Centered: the variance is V = nu_hat - |mu_hat|^2. Split off the current
# term, a = w_t = 1 - d, and let R1 = sum_{k<t} w_k g_k, R2 = sum_{k<t} w_k
# |g_k|^2 over the earlier weights, which sum to q = d - d^t; Cauchy-Schwarz
# gives R2 >= |R1|^2 / q. Without bias correction
#     V - d^t s0 = a |g|^2 + R2 - |a g + R1|^2
#               >= a |g|^2 + |R1|^2 / q - |a g + R1|^2,
# a quadratic in R1 (q < 1) whose minimum, at R1 = a g q / (1 - q), is
#     V >= d^t s0 + a |g|^2 (1 - q - a) / (1 - q)
#        = d^t s0 + (1 - d) d^t |g|^2 / (1 - d + d^t),
# attained when every earlier gradient equals (1 - d) g / (1 - d + d^t); at
# t = 1 it is the exact first-step variance (1 - d) d |g|^2. With bias
# correction the same minimisation of nu - |mu|^2 / W (at R1 = q g) gives
#     V = (nu - |mu|^2 / W) / W >= d^t s0 / W,
# i.e. 0 for s0 = 0: a constant gradient has zero debiased variance, so the
# bound is |g| / sqrt(eps) (or |g| / eps), attained.
# Float32 computes V = nu - |mu|^2 by a subtraction that loses up to a few
# ulps of nu + |mu|^2; the bound subtracts that from V (with nu and mu
# computed exactly from the history in float64).
#
# Compact storage (bf16, int8) rounds the stored averages, which can break
# nu >= |mu|^2 between steps: its centered bound is V >= 0. Its uncentered
# bound drops the d^t s0 term (the stored s0 is rounded) but keeps the
# current term: the step divides by this step's float32 average.


def _exact_moments(grads, decay, initial_scale):
    """nu_t and mu_t from the whole history, in float64 (complex128 for mu)."""
    t = len(grads)
    nu = decay**t * initial_scale + sum(
        (1 - decay) * decay ** (t - k) * np.abs(g) ** 2 for k, g in enumerate(grads, 1)
    )
    mu = sum((1 - decay) * decay ** (t - k) * g for k, g in enumerate(grads, 1))
    return nu, mu


def _scaler_bound(
    grads,
    decay,
    eps,
    eps_in_sqrt,
    centered=False,
    bias_correction=False,
    initial_scale=0.0,
    float_storage=True,
    grad_error=0.0,
):
    """The bound on ``|u_t|`` above, for ``grads = [g_1, ..., g_t]`` (one leaf).

    ``grad_error`` bounds, per element, how far the gradient the scaler sees
    may be from ``grads`` (PyTorch adds its weight decay in the parameter's
    dtype first): the bound grows with ``|g|``, so it is taken at ``|g| +
    grad_error``, and the centered variance loses up to ``4 (sqrt(nu) + |mu|)
    grad_error + 4 grad_error^2``.
    """
    t, d = len(grads), decay
    size = np.abs(grads[-1]) + grad_error
    # c_t as the library computes it, 1 - decay^t from float32 decay and power:
    # d^t is off by up to (t + 3) ulps of 1, so c_t is taken that much larger.
    rounding = (t + 3) * _U32 if bias_correction else 0.0
    c = (1 - d**t if bias_correction else 1.0) + rounding
    start = d**t * initial_scale if float_storage else 0.0
    if not centered:
        lower = (start + (1 - d) * size**2) / c
    elif not float_storage:
        lower = 0.0
    else:
        spread = 0.0 if bias_correction else (1 - d) * d**t / (1 - d + d**t)
        nu, mu = _exact_moments(grads, d, initial_scale)
        noise = (_ARITHMETIC + 2 * rounding / c) * (nu / c + np.abs(mu) ** 2 / c**2)
        noise += 4 * ((np.sqrt(nu) + np.abs(mu)) * grad_error + grad_error**2) / c
        lower = np.maximum((start + spread * size**2) / c - noise, 0.0)
    root = np.sqrt(lower + eps) if eps_in_sqrt else np.sqrt(lower) + eps
    return np.divide(size, root, out=np.zeros_like(size), where=size > 0)


def _through_momentum(per_step, momentum, nesterov=False):
    """Bound on a trace's output from per-step bounds ``|x_k| <= b_k``.

    The trace m_t = x_t + momentum m_{t-1} is at most sum_k momentum^(t-k) b_k;
    Nesterov returns x_t + momentum m_t. Attained when the x_k attain their
    bounds with one sign.
    """
    if not momentum:
        return per_step[-1]
    trace = 0.0
    for bound in per_step:
        trace = bound + momentum * trace
    return per_step[-1] + momentum * trace if nesterov else trace


def _per_step(grads, index, fn):
    """``[fn([g_1..g_k] of leaf index) for k = 1..t]``."""
    leaf = [g[index] for g in grads]
    return [fn(leaf[: k + 1]) for k in range(len(leaf))]


# --------------------------------------------------------------------------
# Hyperparameters.

_DECAYS = st.floats(0.0, 0.999)
_EPSILONS = st.just(0.0) | st.floats(1e-10, 1e-3)
_CENTERED_EPSILONS = st.floats(1e-8, 1e-3)  # eps = 0 divides by a zero variance.
_MOMENTA = st.none() | st.floats(0.0, 0.99)
_LEARNING_RATES = st.floats(1e-4, 1.0)
_WEIGHT_DECAYS = st.none() | st.floats(0.0, 0.1)
_NU_DTYPES = st.sampled_from(STORAGE_OPTIONS)


@st.composite
def _scaler_options(draw, centered, nu_dtypes=_NU_DTYPES):
    return {
        "decay": draw(_DECAYS),
        "eps": draw(_CENTERED_EPSILONS if centered else _EPSILONS),
        "initial_scale": draw(st.just(0.0) | st.floats(0.0, 1.0)),
        "eps_in_sqrt": draw(st.booleans()),
        "bias_correction": draw(st.booleans()),
        "nu_dtype": draw(nu_dtypes),
    }


def _options_bound(grads, options, centered):
    """``_scaler_bound`` for a scaler built with ``options``."""
    kwargs = {k: v for k, v in options.items() if k != "nu_dtype"}
    float_storage = options["nu_dtype"] in (None, jnp.float32)
    return _scaler_bound(
        grads, centered=centered, float_storage=float_storage, **kwargs
    )


def _scaler_bounds(options, centered):
    def bounds(grads, params):
        return [
            _options_bound([g[i] for g in grads], options, centered)
            for i in range(len(params))
        ]

    return bounds


# --------------------------------------------------------------------------
# One test per public transformation.


@_SETTINGS
@given(problem=_problems(), options=_scaler_options(False), masked=st.booleans())
def test_scale_by_rms_updates_are_well_formed_and_bounded(problem, options, masked):
    make = lambda: optax_rmsprop.scale_by_rms(**options)
    _check(problem, make, _scaler_bounds(options, False), masked, roundings=1)


@_SETTINGS
@given(problem=_problems(), options=_scaler_options(True), masked=st.booleans())
def test_scale_by_stddev_updates_are_well_formed_and_bounded(problem, options, masked):
    make = lambda: optax_rmsprop.scale_by_stddev(**options)
    _check(problem, make, _scaler_bounds(options, True), masked, roundings=1)


# int8 storage only stores leaves of 4096 elements in 8 bits: these problems
# always hold one (the other tests draw it a quarter of the time).
@settings(_SETTINGS, max_examples=5)
@given(
    problem=_problems(anchors=tuple(_INT8_ANCHOR)),
    options=_scaler_options(True, nu_dtypes=st.just("int8")),
    centered=st.booleans(),
    masked=st.booleans(),
)
def test_int8_storage_updates_are_well_formed_and_bounded(
    problem, options, centered, masked
):
    make = lambda: optax_rmsprop.scale_by_rms(**options, centered=centered)
    _check(problem, make, _scaler_bounds(options, centered), masked, roundings=1)


@_SETTINGS
@given(
    problem=_problems(),
    options=_scaler_options(centered=True),  # eps > 0, also when uncentered.
    centered=st.booleans(),
    learning_rate=_LEARNING_RATES,
    momentum=_MOMENTA,
    nesterov=st.booleans(),
    weight_decay=_WEIGHT_DECAYS,
    masked=st.booleans(),
)
def test_rmsprop_updates_are_well_formed_and_bounded(
    problem, options, centered, learning_rate, momentum, nesterov, weight_decay, masked
):
    # The chain: the scaler's step s_k, plus weight_decay * p (decoupled), times
    # the learning rate, through the trace: |x_k| <= lr (b_k + wd |p|).
    kwargs = dict(
        options,
        learning_rate=learning_rate,
        centered=centered,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
    )

    def bounds(grads, params):
        result = []
        for i, p in enumerate(params):
            decay = (weight_decay or 0.0) * np.abs(p)
            step = lambda gs: (
                learning_rate * (_options_bound(gs, options, centered) + decay)
            )
            per_step = _per_step(grads, i, step)
            result.append(_through_momentum(per_step, momentum, nesterov))
        return result

    # Roundings to the param's dtype: the scaler's step, the decay's sum, the
    # learning rate's product, the trace's cast and Nesterov's sum.
    make = lambda: optax_rmsprop.rmsprop(**kwargs)
    _check(problem, make, bounds, masked, roundings=5)


@_SETTINGS
@given(
    problem=_problems(),
    lr=_LEARNING_RATES,
    alpha=_DECAYS,
    eps=st.floats(1e-8, 1e-3),
    weight_decay=st.floats(0.0, 0.1),
    momentum=st.floats(0.0, 0.99),
    centered=st.booleans(),
    maximize=st.booleans(),
    masked=st.booleans(),
)
def test_pytorch_rmsprop_updates_are_well_formed_and_bounded(
    problem, lr, alpha, eps, weight_decay, momentum, centered, maximize, masked
):
    # PyTorch scales g' = -+g + weight_decay * p (coupled, in p's dtype) with
    # eps outside the root, no bias correction, s0 = 0; a complex leaf as two
    # independent reals (its real and imaginary parts get bounds of their
    # own); buffer b = momentum * b + step, and the update is -lr * b.
    # g' is computed in p's dtype, so it is off by up to an epsilon of |g| +
    # weight_decay |p| (two roundings), which can be large next to g' itself
    # when the two terms cancel.
    sign = -1.0 if maximize else 1.0
    dtypes = [leaf.dtype for leaf in jax.tree.leaves(problem.spec)]

    def bounds(grads, params):
        result = []
        for i, p in enumerate(params):
            epsilon = float(jnp.finfo(dtypes[i]).eps)

            def component(part):
                def step(gs):
                    coupled = [sign * part(g) + weight_decay * part(p) for g in gs]
                    error = epsilon * (
                        np.abs(part(gs[-1])) + weight_decay * np.abs(part(p))
                    )
                    return lr * _scaler_bound(
                        coupled, alpha, eps, False, centered, grad_error=error
                    )

                return _through_momentum(_per_step(grads, i, step), momentum)

            if np.iscomplexobj(p):
                result.append(component(np.real) + 1j * component(np.imag))
            else:
                result.append(component(lambda x: x))
        return result

    def make():
        return optax_rmsprop.pytorch_rmsprop(
            lr, alpha, eps, weight_decay, momentum, centered, maximize
        )

    # Roundings: g', the scaler's step, the buffer's cast, the learning rate.
    _check(problem, make, bounds, masked, roundings=4)


@_SETTINGS
@given(
    problem=_problems(),
    learning_rate=_LEARNING_RATES,
    rho=_DECAYS,
    momentum=st.floats(0.0, 0.99),
    epsilon=st.floats(1e-8, 1e-3),
    centered=st.booleans(),
    weight_decay=_WEIGHT_DECAYS,
    masked=st.booleans(),
)
def test_keras_rmsprop_updates_are_well_formed_and_bounded(
    problem, learning_rate, rho, momentum, epsilon, centered, weight_decay, masked
):
    # Keras: lr * g / sqrt(v + eps) into the buffer (eps inside, s0 = 0, no
    # bias correction); the decay lr * wd * p is added outside the buffer.
    def bounds(grads, params):
        result = []
        for i, p in enumerate(params):
            step = lambda gs: (
                learning_rate * _scaler_bound(gs, rho, epsilon, True, centered)
            )
            traced = _through_momentum(_per_step(grads, i, step), momentum)
            result.append(traced + learning_rate * (weight_decay or 0.0) * np.abs(p))
        return result

    def make():
        return optax_rmsprop.keras_rmsprop(
            learning_rate, rho, momentum, epsilon, centered, weight_decay
        )

    # Roundings: the scaler's step, the learning rate, the buffer, the decay.
    _check(problem, make, bounds, masked, roundings=4)


@_SETTINGS
@given(
    problem=_problems(),
    learning_rate=_LEARNING_RATES,
    decay=_DECAYS,
    momentum=st.floats(0.0, 0.99),
    epsilon=st.floats(1e-10, 1e-3),
    centered=st.booleans(),
    masked=st.booleans(),
)
def test_tf1_rmsprop_updates_are_well_formed_and_bounded(
    problem, learning_rate, decay, momentum, epsilon, centered, masked
):
    # TF1 starts the mean square at s0 = 1 (eps inside, no bias correction):
    # the d^t s0 term of the bound lowers the step.
    def bounds(grads, params):
        def step(gs):
            return learning_rate * _scaler_bound(
                gs, decay, epsilon, True, centered, initial_scale=1.0
            )

        return [
            _through_momentum(_per_step(grads, i, step), momentum)
            for i in range(len(params))
        ]

    def make():
        return optax_rmsprop.tf1_rmsprop(
            learning_rate, decay, momentum, epsilon, centered
        )

    # Roundings: the scaler's step, the learning rate, the trace.
    _check(problem, make, bounds, masked, roundings=3)


# --------------------------------------------------------------------------
# Diagnostics on random states.


@_SETTINGS
@given(
    problem=_problems(),
    options=_scaler_options(False),
    learning_rate=_LEARNING_RATES,
)
def test_effective_learning_rate_is_the_factor_of_the_last_step(
    problem, options, learning_rate
):
    # With float storage the state holds the very average the step divided by,
    # so update = effective_learning_rate * g (compact storage rounds the
    # stored average after the step). Shaped like the params, real, finite.
    options = dict(options, nu_dtype=None)
    with jax.enable_x64(problem.x64):
        params, grads_per_step, _ = problem.build()
        tx = optax_rmsprop.rmsprop(learning_rate, **options)
        history, state = _run(tx, params, grads_per_step)
        diagnostic = {
            k: options[k] for k in ("decay", "eps", "eps_in_sqrt", "bias_correction")
        }
        rates = optax_rmsprop.effective_learning_rate(
            state, learning_rate, **diagnostic
        )

        assert jax.tree.structure(rates) == jax.tree.structure(params)
        updates, grads = history[-1], grads_per_step[-1]
        for rate, u, g in zip(
            jax.tree.leaves(rates), jax.tree.leaves(updates), jax.tree.leaves(grads)
        ):
            assert rate.shape == g.shape and not jnp.iscomplexobj(rate)
            rate = np.asarray(rate, np.float64)
            if options["eps"] > 0:
                assert np.all(np.isfinite(rate))
            nonzero = _as64(g) != 0
            finfo = jnp.finfo(u.dtype)
            # Two roundings to the param's dtype (the update, then lr * update),
            # and subnormal float16 updates keep fewer bits.
            rtol = max(2 * float(finfo.eps), 1e-6)
            atol = 2 * float(finfo.smallest_subnormal)
            expected = -rate[nonzero] * _as64(g)[nonzero]
            np.testing.assert_allclose(
                _as64(u)[nonzero], expected, rtol=rtol, atol=atol
            )
