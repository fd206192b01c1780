"""What several test modules share: the mixed tree, the option table (flag
values, grids and their ids), the storage options, the reliability fixture
(variants, presets, a compiled bank of them) and the tree assertions.

A module takes what it needs with ``from helpers import ...`` (``tests/`` is
on ``sys.path``, as for ``oracle``). Nothing here imports a test module.
"""

import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_rmsprop

# --------------------------------------------------------------------------
# The mixed tree: a matrix, a vector and a scalar, with gradient scales that
# span 1e-4 to 1e2 across the matrix (eps=1e-8 matters for the smallest), a
# uniformly small vector and a large scalar.

MIXED_SCALES = {
    "w": 10.0 ** np.linspace(-4, 2, 12).reshape(4, 3),
    "b": np.full(3, 1e-2),
    "s": np.array(30.0),
}


def mixed_problem(
    steps,
    seed=0,
    gradient_scale=1.0,
    scales=None,
    dtype=np.float32,
    zero_first_gradient=False,
):
    """NumPy params shaped like ``scales`` and ``steps`` gradient trees for them.

    Params are standard normals; each gradient element is
    ``gradient_scale * scale * (0.5 + N(0, 1))``, a non-zero mean so that the
    centered variance differs from the raw second moment. With
    ``zero_first_gradient`` the first gradient is drawn, then zeroed (the
    draws of later steps stay the same).
    """
    scales = MIXED_SCALES if scales is None else scales
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: rng.normal(size=np.shape(s)).astype(dtype), scales)
    grads = []
    for step in range(steps):
        noise = jax.tree.map(
            lambda s: gradient_scale * s * (0.5 + rng.normal(size=np.shape(s))), scales
        )
        if step == 0 and zero_first_gradient:
            noise = jax.tree.map(np.zeros_like, noise)
        grads.append(jax.tree.map(lambda g: np.asarray(g, dtype), noise))
    return params, grads


def run_jitted(tx, params, grads, update=None):
    """Final params, final state and every step's updates, stepping ``update``.

    ``update`` defaults to the jitted ``tx.update``.
    """
    update = jax.jit(tx.update) if update is None else update
    state = tx.init(params)
    history = []
    for g in grads:
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
        history.append(updates)
    return params, state, history


def assert_trees_close(actual, desired, rtol, atol):
    """Same structure and dtypes, and each leaf close norm-wise.

    ``max|actual - desired| <= rtol * max|desired| + atol`` per leaf: a momentum
    trace that cancels to almost nothing in one element has a large relative
    error there from a single ulp elsewhere, while a wrong formula is still
    off by O(1) of the whole leaf.
    """
    chex.assert_trees_all_equal_structs(actual, desired)
    chex.assert_trees_all_equal_dtypes(actual, desired)
    leaves = jax.tree_util.tree_leaves_with_path(actual)
    for (path, a), b in zip(leaves, jax.tree.leaves(desired)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert a.shape == b.shape, jax.tree_util.keystr(path)
        error = np.max(np.abs(a - b), initial=0.0)
        bound = rtol * np.max(np.abs(b), initial=0.0) + atol
        assert error <= bound, (
            f"{jax.tree_util.keystr(path)}: max|actual - desired| = {error:.3g} "
            f"> {bound:.3g}"
        )


def assert_bit_identical(actual, expected):
    """Same tree structure, and every leaf equal bit for bit, dtype included."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e), strict=True)


def biased_gradients(rng, shape, dtype, independent_imaginary_scale=True):
    """``shape[0]`` steps of values, each element with its own magnitude.

    Magnitudes run from 1e-3 to 1e2; the mean is 0.3 times the magnitude, so
    centring matters. Complex leaves get an imaginary part of mean -0.3 times
    its magnitude: magnitudes drawn afresh, or (``independent_imaginary_scale``
    false) the real part's magnitudes in reverse order.
    """
    scale = 10.0 ** rng.uniform(-3, 2, size=shape[1:])
    values = scale * (rng.normal(size=shape) + 0.3)
    if np.issubdtype(dtype, np.complexfloating):
        if independent_imaginary_scale:
            imaginary_scale = 10.0 ** rng.uniform(-3, 2, size=shape[1:])
        else:
            imaginary_scale = scale[::-1]
        values = values + 1j * imaginary_scale * (rng.normal(size=shape) - 0.3)
    return values.astype(dtype)


def standard_normal(rng, shape, dtype):
    """Standard normals of ``dtype``; complex ones in both parts."""
    values = rng.normal(size=shape)
    if np.issubdtype(dtype, np.complexfloating):
        values = values + 1j * rng.normal(size=shape)
    return np.asarray(values, dtype)


def updates_with_fixed_params(tx, params, grads):
    """Each step's update tree (``params`` held fixed) and the final state."""
    state = tx.init(params)
    history = []
    for g in grads:
        updates, state = tx.update(g, state, params)
        history.append(updates)
    return history, state


def torch_steps(tensors, optimizer, grads, scheduler=None):
    """Steps a PyTorch optimizer through ``grads`` (leaves ``[steps, ...]``).

    A generator: it yields after each step (and the scheduler's step, if
    any), so a caller can record the tensors; ``for _ in ...: pass`` just runs.
    """
    import torch  # Here, not above: most test modules never need PyTorch.

    grad_leaves = jax.tree.leaves(grads)
    for t in range(len(grad_leaves[0])):
        for tensor, grad in zip(tensors, grad_leaves):
            tensor.grad = torch.from_numpy(np.array(grad[t]))
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        yield t


def parameter_bounds(update_bound, updates, params):
    """Bounds on a float32 parameter trajectory's distance from a reference.

    Per step, the bound on the update's difference plus one rounding of each
    ``apply_updates`` (an ulp of ``|u| + |p|``), accumulated over the steps
    (axis 0).
    """
    ulp = float(np.finfo(np.float32).eps)
    return jax.tree.map(
        lambda b, u, p: np.cumsum(b + ulp * (np.abs(u) + np.abs(p)), axis=0),
        update_bound,
        updates,
        params,
    )


# --------------------------------------------------------------------------
# The option table: the values every grid gives optax.rmsprop's flags, in the
# order the grids list them, and the test ids of a grid's points.

EPS_IN_SQRT = [True, False]
CENTERED = [False, True]
BIAS_CORRECTION = [False, True]
NESTEROV = [False, True]
SCHEDULED = [False, True]  # A constant learning rate, then a schedule.


def grid(*axes):
    """Every combination of the axes' values (tuples), the last axis fastest."""
    return list(itertools.product(*axes))


def options_grid(**axes):
    """Every combination of the keywords' values, as dicts, the last fastest."""
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def flags_id(eps_in_sqrt, centered, bias_correction, momentum, nesterov, scheduled):
    """A readable id of a point of optax.rmsprop's grid of flags."""
    return "-".join(
        [
            "eps_in_sqrt" if eps_in_sqrt else "eps_outside",
            "centered" if centered else "uncentered",
            "debiased" if bias_correction else "biased",
            "no_momentum" if momentum is None else f"momentum{momentum}",
            "nesterov" if nesterov else "no_nesterov",
            "schedule" if scheduled else "constant_lr",
        ]
    )


def options_id(options):
    """``key=value`` pairs joined by dashes: the id of a dict of options."""
    return "-".join(f"{key}={value}" for key, value in options.items())


def value_id(value):
    """A short test id: arrays by kind and shape, exceptions by name."""
    if isinstance(value, type):
        return value.__name__
    if isinstance(value, (np.ndarray, jax.Array)):
        kind = "jax" if isinstance(value, jax.Array) else "numpy"
        return f"{kind}{np.shape(value)}"
    return repr(value)


# --------------------------------------------------------------------------
# Storage options, rmsprop variants and presets, and the reliability fixture
# (tests/test_reliability_*.py): a tree with an int8-sized leaf and a bf16
# leaf, six gradients, and every variant and preset compiled together, once
# per process, in a "bank" (``banked``): compilation is most of the cost.

# How the running averages are stored (`nu_dtype=`): None is the default (float32
# for float32 params), bf16 and "int8" are the compact storages. "int8" stores
# only leaves of at least 4096 elements in 8 bits, so the trees below hold one.
STORAGE_OPTIONS = [None, jnp.float32, jnp.bfloat16, "int8"]


def storage_id(nu_dtype):
    return "default" if nu_dtype is None else str(jnp.dtype(nu_dtype).name)


def storage_options(name="nu_dtype"):
    return pytest.mark.parametrize(name, STORAGE_OPTIONS, ids=storage_id)


# Three rmsprop variants that use every option at least once between them
# (each variant costs compilation time; the learning rate defaults to 0.1).
VARIANTS = {
    "default": {},
    "centered_debiased_nesterov_eps_outside": {
        "centered": True,
        "bias_correction": True,
        "momentum": 0.9,
        "nesterov": True,
        "eps_in_sqrt": False,
    },
    "momentum_weight_decay_schedule_initial_scale": {
        "learning_rate": optax.cosine_decay_schedule(0.1, decay_steps=4, alpha=0.1),
        "momentum": 0.9,
        "weight_decay": 1e-2,
        "initial_scale": 0.5,
    },
}
RICHEST_VARIANT = "centered_debiased_nesterov_eps_outside"
SCHEDULED_VARIANT = "momentum_weight_decay_schedule_initial_scale"

PRESETS = {
    "pytorch": lambda: optax_rmsprop.pytorch_rmsprop(
        lr=0.01, momentum=0.9, weight_decay=1e-2, centered=True
    ),
    "keras": lambda: optax_rmsprop.keras_rmsprop(momentum=0.9, weight_decay=1e-2),
    "tf1": lambda: optax_rmsprop.tf1_rmsprop(0.1, momentum=0.9, centered=True),
}


def rmsprop_variant(variant, nu_dtype=None):
    kwargs = {"learning_rate": 0.1, **VARIANTS[variant]}
    return optax_rmsprop.rmsprop(**kwargs, nu_dtype=nu_dtype)


# Arrays are committed to this device, as orbax restores them: jit compiles
# committed and uncommitted inputs separately.
DEVICE = jax.devices()[0]


def random_tree(like, seed, scale=1.0):
    """Standard normals times ``scale``, shaped and typed like ``like``."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda p: jax.device_put(
            np.asarray(scale * rng.standard_normal(p.shape), p.dtype), DEVICE
        ),
        like,
    )


PARAMS = random_tree(
    {
        "dense": {"w": jnp.zeros((64, 64)), "b": jnp.zeros(())},  # w: 4096 elements.
        "embed": jnp.zeros((3, 4), jnp.bfloat16),
    },
    seed=0,
)
# Six steps whose scale changes by up to 100x, so the averages really move.
GRADS = [random_tree(PARAMS, seed=1 + k, scale=10.0 ** (k % 3 - 1)) for k in range(6)]
SPLIT = 3  # The checkpoint is taken after this many steps.


def run_steps(tx, params, state, grads):
    """Eager steps from ``(params, state)``: each step's (updates, state, params)."""
    history = []
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
        history.append((updates, state, params))
    return history


def banked(transforms, params):
    """``transforms`` (a dict) run side by side: one compilation for all of them.

    Returns transforms with the same keys. Each one's update runs every
    transform of the bank (the others from their initial states, which costs
    microseconds) and keeps its own result; ``init`` only knows ``params``.
    Compiling each transform alone costs several times more.
    """
    init_all = jax.jit(lambda p: {k: tx.init(p) for k, tx in transforms.items()})
    update_all = jax.jit(
        lambda g, s, p: {k: tx.update(g, s[k], p) for k, tx in transforms.items()}
    )
    initial_states = functools.cache(lambda: init_all(params))

    def banked(key):
        def init_fn(p):
            if p is not params:
                raise ValueError(
                    "A banked transform only initialises its bank's params."
                )
            return initial_states()[key]

        def update_fn(updates, state, p=None):
            return update_all(updates, {**initial_states(), key: state}, p)[key]

        return optax.GradientTransformation(init_fn, update_fn)

    return {key: banked(key) for key in transforms}


def make(name, nu_dtype=None):
    return PRESETS[name]() if name in PRESETS else rmsprop_variant(name, nu_dtype)


def bank_key(name, nu_dtype):
    return name if name in PRESETS else f"{name}-{storage_id(nu_dtype)}"


# Every variant with every storage option, and every preset, compiled together.
BANK = banked(
    {
        **{
            bank_key(v, s): rmsprop_variant(v, s)
            for v in VARIANTS
            for s in STORAGE_OPTIONS
        },
        **{name: build() for name, build in PRESETS.items()},
    },
    PARAMS,
)


@functools.cache
def uninterrupted(name, nu_dtype):
    """The (jitted) transform and every step of its run on ``GRADS``."""
    tx = BANK[bank_key(name, nu_dtype)]
    return tx, run_steps(tx, PARAMS, tx.init(PARAMS), GRADS)
