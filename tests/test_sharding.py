"""optax_rmsprop with sharded parameters on a 2-D mesh of 8 simulated CPUs.

Every parameter leaf has its own ``NamedSharding`` (sharded on both mesh
axes, on one, on the other axis along another dimension, and replicated).
RMSprop is elementwise, so a state laid out like the parameters makes the
update a purely local computation: no collective at all. ``optax.rmsprop``
0.2.8 builds its state with ``jnp.full_like``, which under ``jit`` forgets
the parameter's sharding and puts every moment on a single device (and fails
outright with Explicit mesh axes outside a ``jax.set_mesh`` context).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optax_rmsprop

_SHAPES = {"w": (8, 4), "b": (4,), "v": (2, 8), "r": (3, 3)}
_SPECS = {
    "w": P("data", "model"),  # Both mesh axes.
    "b": P("model"),  # One axis.
    "v": P(None, "data"),  # The other axis, on the second dimension.
    "r": P(),  # Replicated.
}
_MOMENTS = ("nu", "mu", "trace")
_COLLECTIVE = re.compile(
    r"all-reduce|all-gather|reduce-scatter|collective-permute|all-to-all"
)

# (flags, the moments these flags keep in the state)
_CONFIGS = [
    ({}, {"nu"}),
    (dict(centered=True), {"nu", "mu"}),
    (dict(momentum=0.9), {"nu", "trace"}),
    (dict(bias_correction=True), {"nu"}),
    (
        dict(centered=True, momentum=0.9, nesterov=True, bias_correction=True),
        {"nu", "mu", "trace"},
    ),
]
_CONFIG_IDS = ["default", "centered", "momentum", "bias_correction", "everything"]
_AXIS_TYPES = [AxisType.Auto, AxisType.Explicit]
_AXIS_TYPE_IDS = ["auto", "explicit"]


def _mesh(axis_type):
    return jax.make_mesh((4, 2), ("data", "model"), axis_types=(axis_type,) * 2)


def _arrays(seed, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return {
        name: jnp.asarray(rng.normal(size=shape), dtype)
        for name, shape in _SHAPES.items()
    }


def _shard(tree, mesh):
    return {
        name: jax.device_put(leaf, NamedSharding(mesh, _SPECS[name]))
        for name, leaf in tree.items()
    }


def _assert_sharded_like(tree, params):
    """Every leaf of ``tree`` (a dict like ``params``) has its param's sharding."""
    assert set(tree) == set(params)
    for name, leaf in tree.items():
        want = params[name].sharding
        assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (
            f"{name}: {leaf.sharding} is not {want}"
        )


def _moments(state):
    """{name: tree} for the moments the state holds."""
    found = {name: optax.tree.get(state, name, None) for name in _MOMENTS}
    return {name: tree for name, tree in found.items() if tree is not None}


@pytest.mark.parametrize("axis_type", _AXIS_TYPES, ids=_AXIS_TYPE_IDS)
@pytest.mark.parametrize("config", _CONFIGS, ids=_CONFIG_IDS)
def test_jitted_init_gives_every_moment_its_parameters_sharding(config, axis_type):
    kwargs, expected_moments = config
    params = _shard(_arrays(0), _mesh(axis_type))
    state = jax.jit(optax_rmsprop.rmsprop(1e-2, **kwargs).init)(params)
    moments = _moments(state)
    assert set(moments) == expected_moments
    for tree in moments.values():
        _assert_sharded_like(tree, params)


def test_jitted_init_with_explicit_axes_inside_set_mesh_keeps_shardings():
    mesh = _mesh(AxisType.Explicit)
    params = _shard(_arrays(0), mesh)
    tx = optax_rmsprop.rmsprop(1e-2, centered=True, momentum=0.9)
    with jax.set_mesh(mesh):
        state = jax.jit(tx.init)(params)
    for tree in _moments(state).values():
        _assert_sharded_like(tree, params)


def test_float32_moments_of_bfloat16_params_keep_their_sharding():
    # The moments of bf16 params are float32 (a cast of the parameter's
    # layout), and still sharded like the parameter.
    params = _shard(_arrays(0, jnp.bfloat16), _mesh(AxisType.Auto))
    state = jax.jit(optax_rmsprop.rmsprop(1e-2, centered=True, momentum=0.9).init)(
        params
    )
    for tree in _moments(state).values():
        assert {leaf.dtype for leaf in tree.values()} == {jnp.dtype(jnp.float32)}
        _assert_sharded_like(tree, params)


@pytest.mark.parametrize("config", _CONFIGS, ids=_CONFIG_IDS)
def test_optax_jitted_init_puts_every_moment_on_one_device(config):
    # The difference this library makes, pinned down for optax 0.2.8: every
    # moment of every leaf, sharded or replicated, lands on a single device.
    kwargs, expected_moments = config
    params = _shard(_arrays(0), _mesh(AxisType.Auto))
    state = jax.jit(optax.rmsprop(1e-2, **kwargs).init)(params)
    moments = _moments(state)
    assert set(moments) == expected_moments
    for tree in moments.values():
        for name, leaf in tree.items():
            assert len(params[name].sharding.device_set) == 8
            assert len(leaf.sharding.device_set) == 1, name


def test_optax_jitted_init_fails_with_explicit_axes_outside_set_mesh():
    # Ours builds the same state (test above); optax's `full_like` cannot.
    params = _shard(_arrays(0), _mesh(AxisType.Explicit))
    with pytest.raises(ValueError, match="set_mesh"):
        jax.jit(optax.rmsprop(1e-2).init)(params)


def _step_fn(tx):
    def step(params, grads, state):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def _collectives(tx, params):
    """The collectives in the compiled step on sharded params and gradients."""
    grads = _shard(_arrays(1), list(params.values())[0].sharding.mesh)
    state = jax.jit(tx.init)(params)
    text = jax.jit(_step_fn(tx)).lower(params, grads, state).compile().as_text()
    return sorted(set(_COLLECTIVE.findall(text)))


_STEP_CONFIGS = [
    {},
    # Centered is not combined with bias correction here: its first-step
    # variance is exactly zero, i.e. float32 rounding noise that any change
    # of fusion decides (see test_against_oracle.py).
    dict(centered=True, momentum=0.9, nesterov=True),
    dict(
        learning_rate=optax.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 10),
        bias_correction=True,
        eps_in_sqrt=False,
        momentum=0.9,
        weight_decay=1e-2,
        weight_decay_mask={"w": True, "b": False, "v": True, "r": False},
    ),
]
_STEP_CONFIG_IDS = ["default", "centered_nesterov", "schedule_debiased_weight_decay"]


def _rmsprop(kwargs):
    return optax_rmsprop.rmsprop(**{"learning_rate": 1e-2, **kwargs})


@pytest.mark.parametrize("axis_type", _AXIS_TYPES, ids=_AXIS_TYPE_IDS)
@pytest.mark.parametrize("kwargs", _STEP_CONFIGS, ids=_STEP_CONFIG_IDS)
def test_compiled_sharded_step_has_no_collective(kwargs, axis_type):
    params = _shard(_arrays(0), _mesh(axis_type))
    assert _collectives(_rmsprop(kwargs), params) == []


def test_collective_check_sees_the_all_reduce_of_a_global_norm():
    # The check above can fail: clipping by the global norm must sum squares
    # over every shard of every leaf.
    params = _shard(_arrays(0), _mesh(AxisType.Auto))
    tx = optax.chain(optax.clip_by_global_norm(1.0), _rmsprop({}))
    assert "all-reduce" in _collectives(tx, params)


@pytest.mark.parametrize("axis_type", _AXIS_TYPES, ids=_AXIS_TYPE_IDS)
@pytest.mark.parametrize("kwargs", _STEP_CONFIGS, ids=_STEP_CONFIG_IDS)
def test_sharded_training_equals_single_device_training(kwargs, axis_type):
    # Five steps on sharded params, gradients and state against the same steps
    # with everything on one device; params and state keep their shardings
    # from step to step (so the next step neither reshards nor recompiles).
    mesh = _mesh(axis_type)
    tx = _rmsprop(kwargs)
    step = jax.jit(_step_fn(tx))
    grads = [_arrays(seed) for seed in range(1, 6)]

    params = _shard(_arrays(0), mesh)
    state = jax.jit(tx.init)(params)
    for g in grads:
        params, state = step(params, _shard(g, mesh), state)
    _assert_sharded_like(params, _shard(_arrays(0), mesh))
    for tree in _moments(state).values():
        _assert_sharded_like(tree, params)

    device = jax.devices()[0]
    single_params = jax.device_put(_arrays(0), device)
    single_state = tx.init(single_params)
    for g in grads:
        single_params, single_state = step(
            single_params, jax.device_put(g, device), single_state
        )
    for leaf in jax.tree.leaves((single_params, single_state)):
        assert leaf.sharding.device_set == {device}

    # Elementwise maths on each shard: the same float32 operations as on one
    # device, up to XLA fusing them differently (an ulp, which a momentum
    # trace that cancels in one element turns into a larger relative error
    # there: hence a norm-wise bound per leaf).
    leaves = jax.tree_util.tree_leaves_with_path((params, state))
    for (path, a), b in zip(leaves, jax.tree.leaves((single_params, single_state))):
        assert a.dtype == b.dtype and a.shape == b.shape
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        error = np.max(np.abs(a - b), initial=0.0)
        bound = 1e-6 * np.max(np.abs(b), initial=0.0) + 1e-9
        assert error <= bound, (
            f"{jax.tree_util.keystr(path)}: {error:.3g} > {bound:.3g}"
        )
