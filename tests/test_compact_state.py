"""Compact storage of the second moment: ``nu_dtype=jnp.bfloat16`` and ``"int8"``.

Targets from the design (float32 state = 1): state bytes bf16 0.50x and int8
<= 0.27x; bytes accessed per step bf16 <= 0.80x and int8 <= 0.72x; training
loss within 1% (bf16) and 3% (int8) of float32 storage; no NaN or Inf.
"""

import pickle

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

_COMPACT = [jnp.bfloat16, "int8"]
_N = 1 << 18


def _state_bytes(tx, params):
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tx.init(params)))


def _step_passes(tx):
    params, grads = jnp.ones((_N,)), jnp.full((_N,), 0.1)

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    compiled = jax.jit(step).lower(params, tx.init(params), grads).compile()
    return compiled.cost_analysis()["bytes accessed"] / (4 * _N)


# --- interface ---------------------------------------------------------------


@pytest.mark.parametrize("nu_dtype", [jnp.float32, *_COMPACT])
@pytest.mark.parametrize(
    "factory",
    [
        optax_rmsprop.scale_by_rms,
        optax_rmsprop.scale_by_stddev,
        lambda **kw: optax_rmsprop.rmsprop(0.01, momentum=0.9, **kw),
        optax_rmsprop.pytorch_rmsprop,
        optax_rmsprop.keras_rmsprop,
        lambda **kw: optax_rmsprop.tf1_rmsprop(0.01, **kw),
    ],
    ids=["scale_by_rms", "scale_by_stddev", "rmsprop", "pytorch", "keras", "tf1"],
)
def test_every_factory_accepts_the_storage_options(factory, nu_dtype):
    params = {"big": jnp.ones((64, 128)), "small": jnp.ones(3)}
    tx = factory(nu_dtype=nu_dtype)
    state = tx.init(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
        assert u.dtype == p.dtype and u.shape == p.shape
        assert jnp.all(jnp.isfinite(u))


def test_int8_state_layout():
    params = {"big": jnp.ones((64, 100)), "small": jnp.ones((10, 10))}
    state = optax_rmsprop.scale_by_rms(nu_dtype="int8").init(params)
    assert isinstance(state, optax_rmsprop.CompactRmsState)
    assert state.count.dtype == jnp.int32 and state.count.shape == ()
    big = state.nu["big"]
    assert isinstance(big, optax_rmsprop.Int8Blocks)
    assert big.codes.dtype == jnp.uint8 and big.codes.shape == (64, 100)
    # 6400 elements in blocks of 256: ceil(6400 / 256) = 25 scales.
    assert big.scales.dtype == jnp.float32 and big.scales.shape == (25,)
    # 100 elements < 4096: kept float32.
    assert state.nu["small"].dtype == jnp.float32


def test_compact_centered_state_keeps_the_mean_in_bf16():
    state = optax_rmsprop.scale_by_stddev(nu_dtype="int8").init(jnp.ones(8192))
    assert isinstance(state, optax_rmsprop.CompactRStdDevState)
    assert state.mu.dtype == jnp.bfloat16
    assert isinstance(state.nu, optax_rmsprop.Int8Blocks)


def test_unknown_storage_is_refused_naming_the_argument():
    with pytest.raises(ValueError, match='`nu_dtype` must be None, .* or "int8"'):
        optax_rmsprop.rmsprop(0.1, nu_dtype="int4")


# --- state size and memory traffic --------------------------------------------


@pytest.mark.parametrize("nu_dtype, target", [(jnp.bfloat16, 0.50), ("int8", 0.27)])
def test_state_bytes_relative_to_float32(nu_dtype, target):
    # A model-like tree of large leaves: bf16 is exactly half; int8 is
    # (1 byte + 4 bytes per 256-element block) / 4 bytes = 0.2539 (+ count).
    params = {"w1": jnp.ones((512, 256)), "w2": jnp.ones((256, 256))}
    full = _state_bytes(optax_rmsprop.scale_by_rms(), params)
    compact = _state_bytes(optax_rmsprop.scale_by_rms(nu_dtype=nu_dtype), params)
    assert compact / full <= target + 4 / full  # The int32 count: 4 bytes.
    if nu_dtype == jnp.bfloat16:
        assert compact - 4 == full // 2


@pytest.mark.parametrize(
    "options", [{}, {"centered": True}, {"momentum": 0.9}, {"bias_correction": True}]
)
@pytest.mark.parametrize("nu_dtype, target", [(jnp.bfloat16, 0.80), ("int8", 0.72)])
def test_step_moves_fewer_bytes_than_float32_storage(options, nu_dtype, target):
    full = _step_passes(optax_rmsprop.rmsprop(1e-3, **options))
    compact = _step_passes(optax_rmsprop.rmsprop(1e-3, nu_dtype=nu_dtype, **options))
    assert compact < full
    if not options:  # The design targets are for the default variant.
        assert compact / full <= target


# --- the codes themselves -----------------------------------------------------


def test_int8_keeps_small_values_next_to_a_large_one():
    # One block holding 1e6 and values down to 1e-2 (a ratio of 1e8, 27
    # binades): every value within the code's 31 binades keeps its magnitude,
    # off by less than the code's relative spacing 1/8, never rounded to 0.
    values = jnp.asarray(np.geomspace(1e-2, 1e6, 8192), jnp.float32)
    stored = _storage.init_leaf(values, "int8")
    decoded = _storage.decode(stored)
    relative = np.abs(np.asarray(decoded) - np.asarray(values)) / np.asarray(values)
    assert relative.max() < 1 / 8


def _int8_state(seed):
    # Blocks of values spread over 20 binades (one all zero, one holding a
    # single tiny value) stored from their own maxima, then grown or shrunk
    # by a factor per block (2**-6 to 2**3.9) and stored against those
    # scales: the block maxima no longer sit at their scales.
    rng = np.random.default_rng(seed)
    values = np.exp(rng.uniform(-23, 0, 8192)).astype(np.float32)
    values[:512] = 0
    values[300] = 1e-30
    fresh = _storage.init_leaf(jnp.asarray(values), "int8")
    growth = np.repeat(2.0 ** rng.uniform(-6, 3.9, 32), 256).astype(np.float32)
    bits = _storage.dither_bits(values.shape, jnp.int32(seed))
    return _storage.encode(jnp.asarray(values * growth), fresh, bits)


def test_int8_next_scale_moves_by_a_power_of_two_to_the_block_maximum():
    stored = _int8_state(0)
    scales, shifts = _storage._rescaled(stored)
    block_max = np.asarray(_storage.decode(stored)).reshape(-1, 256).max(axis=1)
    ratio = np.asarray(scales, np.float64) / np.asarray(stored.scales, np.float64)
    np.testing.assert_array_equal(ratio, 2.0 ** np.asarray(shifts, np.float64))
    filled = block_max > 0
    assert np.all(block_max[filled] >= np.asarray(scales)[filled])
    assert np.all(block_max[filled] < 2 * np.asarray(scales)[filled])
    assert scales[0] == stored.scales[0]  # The all-zero block keeps its scale.
    assert np.count_nonzero(np.asarray(shifts)) > 20  # Most scales moved.


def test_int8_average_read_through_next_scales_is_last_steps_exactly():
    # The step reads last step's average through the next scales (so that
    # XLA need not copy the old ones): bit for bit the stored values.
    stored = _int8_state(1)
    anchor = jnp.zeros(8192)
    through_next = _storage._decode_rescaled_tree(anchor, stored)
    as_stored = _storage.decode_tree(anchor, stored)
    np.testing.assert_array_equal(np.asarray(through_next), np.asarray(as_stored))


@pytest.mark.parametrize("nu_dtype", _COMPACT)
def test_stochastic_rounding_is_unbiased(nu_dtype):
    # Storing the same values with 200 different step counts and averaging
    # the decoded copies: the mean converges to the value (standard error of
    # a mean of 200 draws <= 0.5 step / sqrt(200) = 3.5% of a step).
    values = jnp.asarray(np.random.default_rng(0).lognormal(0, 2, 8192), jnp.float32)
    template = _storage.init_leaf(values, nu_dtype)
    draws = [
        _storage.decode(
            _storage.encode(
                values, template, _storage.dither_bits(values.shape, jnp.int32(c))
            )
        )
        for c in range(200)
    ]
    mean = np.mean(np.asarray(draws, np.float64), axis=0)
    relative_bias = np.mean((mean - np.asarray(values)) / np.asarray(values))
    assert abs(relative_bias) < 1e-3


@pytest.mark.parametrize("nu_dtype", _COMPACT)
def test_update_bound_holds_with_compact_storage(nu_dtype):
    # nu_t >= (1 - decay) g_t^2 in the exact float32 average the step uses,
    # so |u| <= 1 / sqrt(1 - decay) = sqrt(10) with eps = 0, whatever the
    # stored history.
    tx = optax_rmsprop.scale_by_rms(decay=0.9, eps=0.0, nu_dtype=nu_dtype)
    rng = np.random.default_rng(1)
    state = tx.init(jnp.zeros(8192))
    update = jax.jit(tx.update)
    for step in range(50):
        grads = rng.normal(size=8192) * 10.0 ** rng.integers(-6, 6, size=8192)
        updates, state = update(jnp.asarray(grads, jnp.float32), state)
        assert np.all(np.abs(np.asarray(updates)) <= np.sqrt(10) * (1 + 1e-6))


# --- checkpoints, transformations, sharding -----------------------------------


@pytest.mark.parametrize("nu_dtype", _COMPACT)
def test_pickled_state_continues_bit_identically(nu_dtype):
    tx = optax_rmsprop.rmsprop(0.01, momentum=0.9, nu_dtype=nu_dtype)
    params = jnp.ones(8192)
    grads = [jnp.sin(jnp.arange(8192.0) * (k + 1)) for k in range(10)]
    update = jax.jit(tx.update)

    state = tx.init(params)
    for g in grads[:5]:
        _, state = update(g, state)
    leaves, treedef = jax.tree.flatten(state)
    restored = jax.tree.unflatten(
        treedef, pickle.loads(pickle.dumps([np.asarray(x) for x in leaves]))
    )
    a, b = state, restored
    for g in grads[5:]:
        ua, a = update(g, a)
        ub, b = update(g, b)
        np.testing.assert_array_equal(ua, ub)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("nu_dtype", _COMPACT)
def test_vmap_over_models_equals_single_runs(nu_dtype):
    tx = optax_rmsprop.rmsprop(0.01, nu_dtype=nu_dtype)
    params = jnp.ones((3, 8192))
    grads = jnp.stack([jnp.cos(jnp.arange(8192.0) * k) for k in (1, 2, 3)])
    batched, _ = jax.vmap(lambda g, p: tx.update(g, tx.init(p), p))(grads, params)
    for k in range(3):
        single, _ = tx.update(grads[k], tx.init(params[k]), params[k])
        np.testing.assert_allclose(batched[k], single, rtol=1e-6)


@pytest.mark.parametrize("nu_dtype", _COMPACT)
def test_jitted_init_keeps_the_parameter_sharding(nu_dtype):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    sharding = NamedSharding(mesh, P("data"))
    params = jax.device_put(jnp.ones((8 * 4096,)), sharding)
    state = jax.jit(optax_rmsprop.scale_by_rms(nu_dtype=nu_dtype).init)(params)
    stored = state.nu.codes if nu_dtype == "int8" else state.nu
    assert stored.sharding.is_equivalent_to(sharding, stored.ndim)
    if nu_dtype == "int8":
        # 32768 elements, 128 blocks: 16 per device, the blocks of its shard.
        assert state.nu.scales.sharding.is_equivalent_to(sharding, 1)


# --- convergence ----------------------------------------------------------------


def _digits_problem():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = jnp.asarray((x - x.mean(0)) / (x.std(0) + 1e-6), jnp.float32)
    return x, jax.nn.one_hot(y, 10)


def _train_digits(nu_dtype, seed, steps=300):
    x, y = _digits_problem()
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    params = {
        "w1": jax.random.normal(k1, (64, 128)) / 8.0,
        "b1": jnp.zeros(128),
        "w2": jax.random.normal(k2, (128, 10)) / jnp.sqrt(128.0),
        "b2": jnp.zeros(10),
    }

    def loss_fn(p):
        logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
        return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits), axis=1))

    tx = optax_rmsprop.rmsprop(1e-3, decay=0.99, nu_dtype=nu_dtype)

    def step(carry, _):
        p, s = carry
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), loss

    _, losses = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None, steps))(
        params
    )
    return np.asarray(losses)


@pytest.mark.parametrize("nu_dtype, tolerance", [(jnp.bfloat16, 0.01), ("int8", 0.03)])
def test_digits_training_loss_matches_float32_storage(nu_dtype, tolerance):
    # w1 (8192 elements) is int8-quantised; the other leaves are under 4096.
    full = _train_digits(None, seed=0)
    compact = _train_digits(nu_dtype, seed=0)
    assert np.all(np.isfinite(compact))
    assert abs(compact[-1] - full[-1]) <= tolerance * full[-1]


def _drift_run(nu_dtype, decay, steps=2000, size=4096):
    """Stored averages (decoded) every 10 steps under noise whose scale drifts
    over 4 decades, 10^(2 sin(2 pi t / steps))."""
    scale = 10.0 ** (2 * np.sin(np.linspace(0, 2 * np.pi, steps)))
    keys = jax.random.split(jax.random.PRNGKey(0), steps)
    tx = optax_rmsprop.scale_by_rms(decay=decay, nu_dtype=nu_dtype)

    def step(state, inputs):
        key, s = inputs
        _, state = tx.update(jax.random.normal(key, (size,)) * s, state)
        return state, _storage.decode_tree(state.nu, state.nu)

    def run():
        inputs = (keys, jnp.asarray(scale, jnp.float32))
        return jax.lax.scan(step, tx.init(jnp.zeros(size)), inputs)[1][::10]

    return np.asarray(jax.jit(run)(), np.float64)


@pytest.mark.parametrize("nu_dtype", _COMPACT)
def test_compact_average_tracks_a_drifting_gradient_scale_on_average(nu_dtype):
    # Stochastic rounding is unbiased, so the average over elements of the
    # stored nu follows float32's (decay 0.999, a slow average) to within the
    # noise of that mean; we allow 8%.
    full = _drift_run(None, 0.999)
    compact = _drift_run(nu_dtype, 0.999)
    assert np.all(np.isfinite(compact))
    ratio = compact.mean(axis=1) / full.mean(axis=1)
    assert np.all(np.abs(ratio - 1) < 0.08)


@pytest.mark.parametrize(
    "nu_dtype, decay, bound",
    [(jnp.bfloat16, 0.999, 0.10), ("int8", 0.9, 0.15)],
)
def test_per_element_noise_of_compact_storage(nu_dtype, decay, bound):
    # Each step rounds with an error of up to one code step (bf16 2^-8; int8
    # 1/8 to 1/16) that then decays by `decay`: the stationary relative noise
    # is about 0.4 step / sqrt(1 - decay^2), i.e. bf16 at 0.999 ~ 3.5%, int8
    # at 0.9 ~ 10%. (int8 at decay >= 0.99 carries 40-60%: see the README.)
    full = _drift_run(None, decay)[20:]
    compact = _drift_run(nu_dtype, decay)[20:]
    relative = (compact - full) / full
    assert np.sqrt(np.mean(relative**2)) < bound


@pytest.mark.parametrize("nu_dtype", [None, jnp.float32, *_COMPACT])
def test_none_leaves_in_params_are_kept_as_none(nu_dtype):
    # optax accepts None leaves (e.g. frozen parts of a model); so must init.
    params = {"frozen": None, "w": jnp.ones(8192)}
    tx = optax_rmsprop.rmsprop(0.1, nu_dtype=nu_dtype)
    state = tx.init(params)
    updates, _ = tx.update({"frozen": None, "w": jnp.ones(8192)}, state, params)
    assert updates["frozen"] is None
    assert updates["w"].shape == (8192,)
