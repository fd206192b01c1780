"""Fuzzing every public transformation with random pytrees and hyperparameters.

Trees nest dicts, lists and tuples around ``None`` leaves, scalars, zero-size
arrays and float16 / bfloat16 / float32 / float64 / complex64 leaves (float64
under ``jax.enable_x64``), optionally behind ``optax.masked``. Each test checks
one contract, "well-formed and bounded updates", on every example: the updates
keep the gradients' tree, shapes and dtypes, are finite, and obey the bound
the maths gives the transformation (running the transformation is the costly
part, so the four checks share it).

Updates run eagerly: JAX compiles each op once per shape and dtype, so the
leaf kinds are few (``_LEAF_KINDS``) and no example compiles a new program.
Hypothesis runs derandomized, so the examples (and the run time) are the same
on every run, and without shrinking.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import HealthCheck
from hypothesis import Phase
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from test_reliability import STORAGE_OPTIONS

import optax_rmsprop

# No shrinking: a failing example is reported as generated, which keeps a red
# run as short as a green one (add Phase.shrink locally for a minimal example).
_SETTINGS = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
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


def _trees(kinds):
    """Nested dicts, lists and tuples of leaves and ``None``s, under a dict.

    The root is a dict (maybe empty): ``params=None`` means "no params" to
    optax, so a tree that is ``None`` as a whole is not a model.
    """
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


def _values(leaf, seed):
    """Zeros (a fifth) and +-10^e for e in [-6, 2], float64 or complex128.

    Eight decades, none so small that a square underflows float32 (that is
    tests/test_reliability.py's subject).
    """
    rng = np.random.default_rng(seed)

    def reals():
        magnitude = 10.0 ** rng.uniform(-6.0, 2.0, leaf.shape)
        sign = rng.choice([-1.0, 1.0, 0.0], leaf.shape, p=[0.4, 0.4, 0.2])
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
def _problems(draw, max_steps=3):
    x64 = draw(st.booleans())
    spec = draw(_trees(_LEAF_KINDS + (_X64_LEAF_KINDS if x64 else [])))
    leaves = jax.tree.leaves(spec)
    steps = draw(st.integers(1, max_steps))
    seeds = st.integers(0, 2**32 - 1)
    params = [_values(leaf, draw(seeds)) for leaf in leaves]
    grads = [[_values(leaf, draw(seeds)) for leaf in leaves] for _ in range(steps)]
    mask = [draw(st.booleans()) for _ in leaves]
    return _Problem(x64, spec, params, grads, mask)


def _fixed_problem(spec, steps, mask_value):
    """A problem with given leaves, for explicit examples."""
    leaves = jax.tree.leaves(spec)
    values = lambda step: [
        _values(leaf, 100 * step + i) for i, leaf in enumerate(leaves)
    ]
    grads = [values(step + 1) for step in range(steps)]
    mask = [mask_value(i) for i in range(len(leaves))]
    return _Problem(False, spec, values(0), grads, mask)


# int8 storage is only exercised by leaves of 4096 elements: one explicit
# example per scaler has one, next to a complex, a bf16 and a None leaf.
_INT8_PROBLEM = _fixed_problem(
    {
        "x": [_Leaf((64, 64), "float32"), None],
        "y": (_Leaf((3,), "complex64"), _Leaf((3,), "bfloat16")),
    },
    steps=3,
    mask_value=lambda i: i != 1,
)
_INT8_OPTIONS = {
    "decay": 0.9,
    "eps": 1e-8,
    "initial_scale": 0.0,
    "eps_in_sqrt": True,
    "bias_correction": True,
    "nu_dtype": "int8",
}


def _run(tx, params, grads_per_step):
    """Each step's updates (params held fixed) and the final state."""
    state = tx.init(params)
    history = []
    for grads in grads_per_step:
        updates, state = tx.update(grads, state, params)
        history.append(updates)
    return history, state


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


# Rounding slack: the update is cast to the param's dtype (bf16 keeps 8 bits)
# after float32 maths.
_SLACK = 1 + 2.0**-7


def _assert_within(updates, bounds):
    """``|u| <= bound`` per element, ``bounds`` a list like the update leaves."""
    for u, bound in zip(jax.tree.leaves(updates), bounds):
        excess = _abs64(u) - _SLACK * bound
        assert np.all(excess <= 1e-30), f"exceeds its bound by {np.max(excess):.3g}"


def _check(problem, make, bound_fn, masked):
    """Runs ``make()`` (maybe masked) on ``problem`` and checks every step.

    ``bound_fn(step, grads, params)`` gives per-leaf bounds (NumPy, float64)
    for the update of step ``step`` (0-based), from the NumPy values.
    """
    with jax.enable_x64(problem.x64):
        params, grads_per_step, mask = problem.build()
        tx = optax.masked(make(), mask) if masked else make()
        history, _ = _run(tx, params, grads_per_step)
        for step, (updates, grads) in enumerate(zip(history, grads_per_step)):
            _assert_same_tree_shapes_and_dtypes(updates, grads)
            _assert_finite(updates)
            bounds = bound_fn(step, problem.grads[: step + 1], problem.params)
            if masked:  # Masked-out leaves pass the gradient through, unchanged.
                for u, g, keep in zip(
                    jax.tree.leaves(updates), jax.tree.leaves(grads), problem.mask
                ):
                    if not keep:
                        np.testing.assert_array_equal(u, g)
                bounds = [
                    b if keep else np.inf for b, keep in zip(bounds, problem.mask)
                ]
            _assert_within(updates, bounds)


def _momentum_factor(momentum, nesterov, steps):
    """How much a trace can amplify a per-step bound after ``steps`` steps."""
    if not momentum:
        return 1.0
    total = sum(momentum**k for k in range(steps))
    return 1.0 + momentum * total if nesterov else total


def _largest(grads_so_far, index):
    """Elementwise max of ``|grad|`` over the steps so far, for leaf ``index``."""
    return np.max([_abs64(g[index]) for g in grads_so_far], axis=0)


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
def _scaler_options(draw, centered):
    return {
        "decay": draw(_DECAYS),
        "eps": draw(_CENTERED_EPSILONS if centered else _EPSILONS),
        "initial_scale": draw(st.just(0.0) | st.floats(0.0, 1.0)),
        "eps_in_sqrt": draw(st.booleans()),
        "bias_correction": draw(st.booleans()),
        "nu_dtype": draw(_NU_DTYPES),
    }


def _rms_bound(decay):
    """|g| / sqrt(nu_hat) <= 1 / sqrt(1 - decay): nu_hat >= (1 - decay) |g|^2."""
    return 1 / math.sqrt(1 - decay)


def _over_zero_variance(eps, eps_in_sqrt):
    """1 / sqrt(eps) (or 1 / eps): the centered variance may be exactly zero."""
    return 1 / math.sqrt(eps) if eps_in_sqrt else 1 / eps


# --------------------------------------------------------------------------
# One test per public transformation.


@_SETTINGS
@given(problem=_problems(), options=_scaler_options(False), masked=st.booleans())
@example(problem=_INT8_PROBLEM, options=_INT8_OPTIONS, masked=True)
def test_scale_by_rms_updates_are_well_formed_and_bounded(problem, options, masked):
    bound = _rms_bound(options["decay"])
    _check(
        problem,
        lambda: optax_rmsprop.scale_by_rms(**options),
        lambda step, grads, params: [np.full(np.shape(g), bound) for g in grads[-1]],
        masked,
    )


@_SETTINGS
@given(problem=_problems(), options=_scaler_options(True), masked=st.booleans())
@example(problem=_INT8_PROBLEM, options=_INT8_OPTIONS, masked=False)
def test_scale_by_stddev_updates_are_well_formed_and_bounded(problem, options, masked):
    _check(
        problem,
        lambda: optax_rmsprop.scale_by_stddev(**options),
        lambda step, grads, params: [
            _abs64(g) * _over_zero_variance(options["eps"], options["eps_in_sqrt"])
            for g in grads[-1]
        ],
        masked,
    )


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
@example(
    problem=_INT8_PROBLEM,
    options=_INT8_OPTIONS,
    centered=True,
    learning_rate=0.1,
    momentum=0.9,
    nesterov=True,
    weight_decay=0.01,
    masked=True,
)
def test_rmsprop_updates_are_well_formed_and_bounded(
    problem, options, centered, learning_rate, momentum, nesterov, weight_decay, masked
):
    kwargs = dict(
        options,
        learning_rate=learning_rate,
        centered=centered,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
    )

    def bounds(step, grads, params):
        if centered:
            scale = _over_zero_variance(options["eps"], options["eps_in_sqrt"])
            scaled = [scale * _largest(grads, i) for i in range(len(params))]
        else:
            scaled = [
                np.full(np.shape(p), _rms_bound(options["decay"])) for p in params
            ]
        factor = _momentum_factor(momentum, nesterov, step + 1)
        decay = weight_decay or 0.0
        return [
            learning_rate * factor * (s + decay * _abs64(p))
            for s, p in zip(scaled, params)
        ]

    _check(problem, lambda: optax_rmsprop.rmsprop(**kwargs), bounds, masked)


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
    # PyTorch divides g' = g + weight_decay * p by sqrt(v) + eps, each real part
    # of a complex leaf on its own (so the modulus gains up to sqrt(2)), and
    # p -= lr * buffer with buffer = momentum * buffer + that.
    def bounds(step, grads, params):
        factor = _momentum_factor(momentum, False, step + 1)
        result = []
        for i, p in enumerate(params):
            if centered:
                coupled = _largest(grads, i) + weight_decay * _abs64(p)
                scaled = coupled / eps
            else:
                scaled = np.full(np.shape(p), _rms_bound(alpha))
            pairs = math.sqrt(2) if np.iscomplexobj(p) else 1.0
            result.append(lr * factor * pairs * scaled)
        return result

    def make():
        return optax_rmsprop.pytorch_rmsprop(
            lr, alpha, eps, weight_decay, momentum, centered, maximize
        )

    _check(problem, make, bounds, masked)


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
    # Keras: lr * g / sqrt(v + eps) into the buffer; decay lr * wd * p outside.
    def bounds(step, grads, params):
        factor = _momentum_factor(momentum, False, step + 1)
        result = []
        for i, p in enumerate(params):
            if centered:
                scaled = _largest(grads, i) / math.sqrt(epsilon)
            else:
                scaled = np.full(np.shape(p), _rms_bound(rho))
            decay = (weight_decay or 0.0) * _abs64(p)
            result.append(learning_rate * (factor * scaled + decay))
        return result

    def make():
        return optax_rmsprop.keras_rmsprop(
            learning_rate, rho, momentum, epsilon, centered, weight_decay
        )

    _check(problem, make, bounds, masked)


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
    # TF1 starts the mean square at 1, which only lowers the step.
    def bounds(step, grads, params):
        factor = _momentum_factor(momentum, False, step + 1)
        result = []
        for i, p in enumerate(params):
            if centered:
                scaled = _largest(grads, i) / math.sqrt(epsilon)
            else:
                scaled = np.full(np.shape(p), _rms_bound(decay))
            result.append(learning_rate * factor * scaled)
        return result

    def make():
        return optax_rmsprop.tf1_rmsprop(
            learning_rate, decay, momentum, epsilon, centered
        )

    _check(problem, make, bounds, masked)


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
