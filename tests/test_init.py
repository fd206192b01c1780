"""``init`` as frameworks call it: on abstract leaves, eagerly, and cheaply.

Flax NNX builds an optimizer's state eagerly (``nnx.Optimizer`` calls
``tx.init`` outside any ``jit``), and orbax restore targets and abstract
models pass ``jax.ShapeDtypeStruct`` leaves (optax's own
``sharding_test.test_init_with_abstract_input`` does exactly this). Each
factory, preset and ``nu_dtype`` must accept them where optax does, give the
state it would give for zeros of that shape and dtype, keep a leaf's
``sharding``, and trace under ``jax.eval_shape``.

Eager ``init`` must also cost what optax's costs: an XLA compilation per
parameter shape turned a 200-leaf model's first ``init`` into seconds. The
test counts backend compilations (a deterministic figure, unlike a time).
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optax_rmsprop
from optax_rmsprop import _storage

# (4096 elements: int8 storage quantises leaves of at least this size.)
_SHAPES = {"w": (64, 64), "b": (8,), "s": ()}
_SPECS = {"w": P("data", None), "b": P("data"), "s": P()}

_FACTORIES = {
    "rmsprop": lambda **kw: optax_rmsprop.rmsprop(1e-3, **kw),
    "rmsprop-everything": lambda **kw: optax_rmsprop.rmsprop(
        optax.cosine_decay_schedule(1e-3, 10),
        centered=True,
        momentum=0.9,
        nesterov=True,
        bias_correction=True,
        weight_decay=1e-4,
        **kw,
    ),
    "scale_by_rms": lambda **kw: optax_rmsprop.scale_by_rms(**kw),
    "scale_by_stddev": lambda **kw: optax_rmsprop.scale_by_stddev(**kw),
    "pytorch": lambda **kw: optax_rmsprop.pytorch_rmsprop(
        momentum=0.9, centered=True, **kw
    ),
    "keras": lambda **kw: optax_rmsprop.keras_rmsprop(momentum=0.9, **kw),
    "tf1": lambda **kw: optax_rmsprop.tf1_rmsprop(1e-3, momentum=0.9, **kw),
}
_NU_DTYPES = [None, jnp.float32, jnp.bfloat16, "int8"]
_NU_DTYPE_IDS = ["default", "float32", "bfloat16", "int8"]


def _mesh():
    return jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)


def _abstract(sharded: bool, dtype=jnp.float32) -> dict:
    mesh = _mesh() if sharded else None
    return {
        name: jax.ShapeDtypeStruct(
            shape,
            dtype,
            sharding=NamedSharding(mesh, _SPECS[name]) if sharded else None,
        )
        for name, shape in _SHAPES.items()
    }


def _zeros(dtype=jnp.float32) -> dict:
    return {name: jnp.zeros(shape, dtype) for name, shape in _SHAPES.items()}


def _assert_same_state(got, want) -> None:
    """Same pytree, and leaves of equal shape, dtype and value."""
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), strict=True)


def _moments_by_param(state) -> list:
    """(param name, state leaf) for every state leaf that mirrors a parameter."""
    pairs = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        if keys and jnp.shape(leaf) == _SHAPES[keys[-1]]:
            pairs.append((keys[-1], leaf))
    return pairs


@pytest.mark.parametrize("nu_dtype", _NU_DTYPES, ids=_NU_DTYPE_IDS)
@pytest.mark.parametrize("name", list(_FACTORIES))
def test_init_of_abstract_leaves_equals_init_of_zeros(name, nu_dtype):
    tx = _FACTORIES[name](nu_dtype=nu_dtype)
    _assert_same_state(tx.init(_abstract(sharded=False)), tx.init(_zeros()))


@pytest.mark.parametrize("nu_dtype", _NU_DTYPES, ids=_NU_DTYPE_IDS)
@pytest.mark.parametrize("name", list(_FACTORIES))
def test_init_of_sharded_abstract_leaves_keeps_each_leafs_sharding(name, nu_dtype):
    params = _abstract(sharded=True)
    state = _FACTORIES[name](nu_dtype=nu_dtype).init(params)
    moments = _moments_by_param(state)
    assert {param for param, _ in moments} == set(_SHAPES)
    for param, leaf in moments:
        assert leaf.sharding.is_equivalent_to(params[param].sharding, leaf.ndim)


@pytest.mark.parametrize("nu_dtype", _NU_DTYPES, ids=_NU_DTYPE_IDS)
@pytest.mark.parametrize("name", list(_FACTORIES))
def test_init_traces_under_eval_shape(name, nu_dtype):
    tx = _FACTORIES[name](nu_dtype=nu_dtype)
    abstract_state = jax.eval_shape(tx.init, _abstract(sharded=False))
    concrete_state = tx.init(_zeros())
    assert jax.tree.structure(abstract_state) == jax.tree.structure(concrete_state)
    for a, c in zip(jax.tree.leaves(abstract_state), jax.tree.leaves(concrete_state)):
        assert (a.shape, a.dtype) == (c.shape, c.dtype)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.complex64])
def test_abstract_low_precision_and_complex_leaves_get_the_documented_moments(dtype):
    # bf16/f16 params keep a float32 average; complex ones a real one.
    state = optax_rmsprop.rmsprop(1e-3, centered=True).init(_abstract(False, dtype))
    want = optax_rmsprop.rmsprop(1e-3, centered=True).init(_zeros(dtype))
    _assert_same_state(state, want)
    assert state[0].nu["w"].dtype == jnp.float32


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        dict(centered=True, bias_correction=True, momentum=0.9, nesterov=True),
        dict(eps_in_sqrt=False, initial_scale=0.1),
    ],
    ids=["default", "everything", "eps_outside"],
)
@pytest.mark.parametrize("sharded", [False, True], ids=["unsharded", "sharded"])
def test_abstract_init_gives_optaxs_state(kwargs, sharded):
    params = _abstract(sharded)
    _assert_same_state(
        optax_rmsprop.rmsprop(1e-3, **kwargs).init(params),
        optax.rmsprop(1e-3, **kwargs).init(params),
    )


def test_eager_init_of_sharded_arrays_keeps_each_leafs_sharding():
    mesh = _mesh()
    params = {
        name: jax.device_put(jnp.ones(shape), NamedSharding(mesh, _SPECS[name]))
        for name, shape in _SHAPES.items()
    }
    state = optax_rmsprop.rmsprop(1e-3, centered=True, momentum=0.9).init(params)
    for param, leaf in _moments_by_param(state):
        assert leaf.sharding == params[param].sharding


@contextlib.contextmanager
def _counting_compilations():
    """Counts XLA backend compilations inside the ``with`` block."""
    count = [0]

    def listener(event, duration, **kwargs):
        del duration, kwargs
        if event == "/jax/core/compile/backend_compile_duration":
            count[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield count
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def _distinct_shapes(first_dim: int, leaves: int) -> list:
    """Leaves of shapes no other test uses, made without compiling anything.

    (``jnp.ones`` would compile the very broadcast that a fill of the same
    shape then finds in the cache.)
    """
    return [jnp.asarray(np.ones((first_dim, i + 1), np.float32)) for i in range(leaves)]


@pytest.mark.parametrize(
    "ours_kwargs, first_dim",
    [
        ({}, 97),
        (dict(centered=True, momentum=0.9, bias_correction=True), 83),
        (dict(nu_dtype=jnp.bfloat16), 79),
        (dict(centered=True, nu_dtype=jnp.bfloat16), 73),
    ],
    ids=["default", "centered-momentum-debiased", "bf16", "centered-bf16"],
)
def test_eager_init_compiles_no_more_programs_than_optaxs(ours_kwargs, first_dim):
    # Before: a `where` program per leaf shape (and a cast per shape for bf16
    # storage), 40 to 120 compilations here and 8.5 s for 200 leaves; optax
    # fills each leaf with `jnp.full_like`, one compilation per new shape.
    optax_kwargs = {k: v for k, v in ours_kwargs.items() if k != "nu_dtype"}
    ours_tx = optax_rmsprop.rmsprop(1e-3, **ours_kwargs)
    optax_tx = optax.rmsprop(1e-3, **optax_kwargs)
    # One-time compilations (a scalar count, ...) are not per leaf: pay them.
    jax.block_until_ready((ours_tx.init(jnp.ones(2)), optax_tx.init(jnp.ones(2))))
    ours_params = _distinct_shapes(first_dim, leaves=40)
    optax_params = _distinct_shapes(first_dim + 1, leaves=40)
    with _counting_compilations() as ours:
        jax.block_until_ready(ours_tx.init(ours_params))
    with _counting_compilations() as reference:
        jax.block_until_ready(optax_tx.init(optax_params))
    assert reference[0] >= 40  # The count sees optax's per-shape fills.
    assert ours[0] <= reference[0]


def test_eager_int8_init_compiles_no_more_programs_than_optaxs():
    # Leaves 32 to 40 here are quantised (129 x 32 = 4128 >= 4096). A constant
    # fill needs no quantiser: one code, one scale, a uint8 fill per shape.
    # Before, the quantiser's ~30 operations compiled one by one per leaf
    # shape: 33x optax's time for 100 large leaves.
    ours_tx = optax_rmsprop.rmsprop(1e-3, nu_dtype="int8")
    optax_tx = optax.rmsprop(1e-3)
    jax.block_until_ready((ours_tx.init(jnp.ones(2)), optax_tx.init(jnp.ones(2))))
    ours_params = _distinct_shapes(129, leaves=40)
    with _counting_compilations() as ours:
        state = ours_tx.init(ours_params)
        jax.block_until_ready(state)
    with _counting_compilations() as reference:
        jax.block_until_ready(optax_tx.init(_distinct_shapes(131, leaves=40)))
    assert sum(isinstance(n, optax_rmsprop.Int8Blocks) for n in state[0].nu) == 9
    assert ours[0] <= reference[0]


@pytest.mark.parametrize("initial_scale", [0.0, 0.1, 1.0, 3e-7])
def test_eager_int8_init_decodes_to_the_fill_as_the_jitted_init_does(initial_scale):
    # Eagerly the codes are written without quantising; under jit the filled
    # leaf is quantised. Both must stand for float32(initial_scale) exactly:
    # the scale is the fill itself and the code 1.0 (0 and scale 1 for 0).
    tx = optax_rmsprop.scale_by_rms(initial_scale=initial_scale, nu_dtype="int8")
    params = jnp.zeros((3, 4096))
    eager, jitted = tx.init(params), jax.jit(tx.init)(params)
    want = np.full(params.shape, np.float32(initial_scale))
    for state in (eager, jitted):
        np.testing.assert_array_equal(_storage.decode(state.nu), want)
    assert eager.nu.codes.dtype == jitted.nu.codes.dtype == jnp.uint8
    np.testing.assert_array_equal(eager.nu.scales, jitted.nu.scales)
