"""``pytorch_rmsprop`` against ``torch.optim.RMSprop``, the reference.

PyTorch (CPU, float32) computes every expected value here; optax_rmsprop is
never its own reference. Gradients are drawn once in NumPy float32 and fed
identically to both: PyTorch gets them as ``.grad``, ours as ``tx.update``'s
updates, and both add the same parameters when weight decay is on.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from helpers import biased_gradients
from helpers import options_grid
from helpers import standard_normal
from helpers import torch_steps

import optax_rmsprop

_STEPS = 120
_SHAPES = {"matrix": (4, 3), "scalar": (), "vector": (5,)}

# |ours - torch| <= _ATOL + _RTOL * |torch| on every step. Measured maximum of
# |ours - torch| / (1 + |torch|): 2.4e-6 over the grid, 4.6e-7 for the plain
# cases, 2.7e-7 for the schedules and 2.9e-7 for complex parameters (largest
# absolute error 5.7e-6, on parameters that travel up to ~39). The grid's
# worst case is centered with alpha 0.9 and weight decay, where the gradient
# is nearly constant and square_avg - grad_avg**2 cancels: there PyTorch in
# float32 is itself 2.2e-6 from PyTorch in float64, and we are closer to the
# float64 value. The tolerance is about 4x the worst measurement.
_RTOL = 1e-5
_ATOL = 1e-5


def _problem(shapes, dtypes, steps=_STEPS, seed=0):
    """Initial parameters (about 1 in size) and a ``[steps, ...]`` gradient tree."""
    rng = np.random.default_rng(seed)
    params = {
        name: standard_normal(rng, shape, dtypes[name])
        for name, shape in shapes.items()
    }
    grads = {
        name: biased_gradients(rng, (steps,) + shape, dtypes[name])
        for name, shape in shapes.items()
    }
    return params, grads


_REAL_DTYPES = {name: np.float32 for name in _SHAPES}
_PARAMS, _GRADS = _problem(_SHAPES, _REAL_DTYPES)


def _torch_trajectory(params, grads, lr_lambda=None, **torch_kwargs):
    """Parameters after every step of ``torch.optim.RMSprop``, as ``[steps, ...]``.

    ``lr_lambda`` adds a ``LambdaLR`` scheduler stepped after each step.
    """
    leaves, treedef = jax.tree.flatten(params)
    tensors = [torch.nn.Parameter(torch.from_numpy(np.array(p))) for p in leaves]
    optimizer = torch.optim.RMSprop(tensors, **torch_kwargs)
    scheduler = None
    if lr_lambda is not None:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    history = [[] for _ in tensors]
    for _ in torch_steps(tensors, optimizer, grads, scheduler):
        for record, tensor in zip(history, tensors):
            record.append(tensor.detach().numpy().copy())
    return jax.tree.unflatten(treedef, [np.stack(record) for record in history])


def _jax_trajectory(tx, params, grads):
    """Parameters after every step of ``tx``, as ``[steps, ...]`` (traceable)."""

    def step(carry, grad):
        params, state = carry
        updates, state = tx.update(grad, state, params)
        params = optax.apply_updates(params, updates)
        return (params, state), params

    _, history = jax.lax.scan(step, (params, tx.init(params)), grads)
    return history


def _run_jitted(tx, params, grads):
    trajectory = jax.jit(functools.partial(_jax_trajectory, tx))(params, grads)
    return jax.tree.map(np.asarray, trajectory)


def _max_abs_error(ours, theirs):
    return max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs))
    )


def _assert_trajectories_close(ours, theirs):
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(theirs)
    ):
        np.testing.assert_allclose(
            a, b, rtol=_RTOL, atol=_ATOL, err_msg=jax.tree_util.keystr(path)
        )


# ---------------------------------------------------------------------------
# Every combination of the numeric hyperparameters, for each (centered,
# maximize): one jitted, vmapped function per pair. Hyperparameters passed as
# arrays always build the weight-decay and momentum transforms; a zero decay
# adds 0 * theta and a zero momentum keeps buf = u, both exact no-ops, as in
# PyTorch where momentum 0 keeps no buffer.
# ---------------------------------------------------------------------------

_GRID = options_grid(
    lr=[1e-3, 3e-2],
    alpha=[0.99, 0.9],
    eps=[1e-8, 1e-3],
    weight_decay=[0.0, 1e-2],
    momentum=[0.0, 0.9],
)


def _grid_id(hyperparameters):
    return "-".join(
        name if value is True else f"{name}={value:g}"
        for name, value in hyperparameters.items()
    )


@functools.cache
def _grid_trajectories(centered, maximize, alpha):
    """Our trajectories for the points of ``_GRID`` with this ``alpha``.

    Stacked on axis 0 in ``_GRID`` order. ``alpha`` stays a Python float: as an
    array, ``1 - alpha`` would be rounded in float32 (0.00999999 for 0.99)
    where PyTorch rounds the exact 0.01, a 1e-6 relative bias in every
    average that drifts the trajectories apart by ~1e-6 of the distance
    travelled. The other hyperparameters reach both libraries as float32.
    """

    def run(lr, eps, weight_decay, momentum):
        tx = optax_rmsprop.pytorch_rmsprop(
            lr, alpha, eps, weight_decay, momentum, centered, maximize
        )
        return _jax_trajectory(tx, _PARAMS, _GRADS)

    points = [point for point in _GRID if point["alpha"] == alpha]
    columns = [
        jnp.asarray([point[name] for point in points], jnp.float32)
        for name in ("lr", "eps", "weight_decay", "momentum")
    ]
    return jax.tree.map(np.asarray, jax.jit(jax.vmap(run))(*columns))


def _grid_trajectory(centered, maximize, index):
    alpha = _GRID[index]["alpha"]
    same_alpha = [i for i, point in enumerate(_GRID) if point["alpha"] == alpha]
    stacked = _grid_trajectories(centered, maximize, alpha)
    return jax.tree.map(lambda x: x[same_alpha.index(index)], stacked)


@pytest.mark.parametrize("centered", [False, True], ids=["plain", "centered"])
@pytest.mark.parametrize("maximize", [False, True], ids=["minimize", "maximize"])
@pytest.mark.parametrize(
    "index", [pytest.param(i, id=_grid_id(point)) for i, point in enumerate(_GRID)]
)
def test_array_hyperparameters_follow_torch_trajectory(index, maximize, centered):
    ours = _grid_trajectory(centered, maximize, index)
    theirs = _torch_trajectory(
        _PARAMS, _GRADS, centered=centered, maximize=maximize, **_GRID[index]
    )
    _assert_trajectories_close(ours, theirs)


# Plain Python numbers take the default path: no transform is built for a
# zero weight decay or momentum, as PyTorch keeps no momentum buffer.
_PLAIN_CASES = [
    {},
    dict(lr=3e-2, alpha=0.9, eps=1e-3),
    dict(lr=1e-3, momentum=0.9, centered=True),
    dict(lr=3e-2, alpha=0.9, weight_decay=1e-2, momentum=0.9, maximize=True),
    dict(lr=3e-2, weight_decay=1e-2, centered=True, maximize=True),
]


@pytest.mark.parametrize(
    "kwargs", _PLAIN_CASES, ids=lambda kw: _grid_id(kw) or "defaults"
)
def test_plain_number_hyperparameters_follow_torch_trajectory(kwargs):
    ours = _run_jitted(optax_rmsprop.pytorch_rmsprop(**kwargs), _PARAMS, _GRADS)
    theirs = _torch_trajectory(_PARAMS, _GRADS, **kwargs)
    _assert_trajectories_close(ours, theirs)


def test_plain_zero_momentum_keeps_no_buffer_like_torch():
    state = optax_rmsprop.pytorch_rmsprop(momentum=0.0).init(_PARAMS)
    tensor = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.RMSprop([tensor], momentum=0.0)
    tensor.grad = torch.ones(3)
    optimizer.step()
    assert "momentum_buffer" not in optimizer.state[tensor]
    assert optax.tree.get(state, "trace", None) is None


# ---------------------------------------------------------------------------
# Learning-rate schedules.
# ---------------------------------------------------------------------------

_BASE_LR = 3e-2


def _lr_lambda(step):
    """LambdaLR's factor; the same expression works on ints and jnp counts."""
    return 1.0 / (1.0 + 0.05 * step)


def _schedule(count):
    # LambdaLR sets lr = base_lr * lambda(k) after k scheduler steps, so the
    # (k + 1)-th optimizer step uses lambda(k): optax's count before the step.
    return _BASE_LR * _lr_lambda(count)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_schedule_follows_torch_lambda_lr(momentum):
    tx = optax_rmsprop.pytorch_rmsprop(lr=_schedule, momentum=momentum)
    ours = _run_jitted(tx, _PARAMS, _GRADS)
    theirs = _torch_trajectory(
        _PARAMS, _GRADS, lr_lambda=_lr_lambda, lr=_BASE_LR, momentum=momentum
    )
    _assert_trajectories_close(ours, theirs)


def _generic_rmsprop_like_torch(learning_rate):
    """``optax_rmsprop.rmsprop`` with PyTorch's settings but its own ordering."""
    return optax_rmsprop.rmsprop(
        learning_rate, decay=0.99, eps=1e-8, eps_in_sqrt=False, momentum=0.9
    )


def test_generic_rmsprop_momentum_follows_torch_at_constant_lr():
    # With a constant lr, lr * (beta b + u) == beta (lr b) + lr u: the order
    # of learning rate and momentum does not matter.
    ours = _run_jitted(_generic_rmsprop_like_torch(_BASE_LR), _PARAMS, _GRADS)
    theirs = _torch_trajectory(_PARAMS, _GRADS, lr=_BASE_LR, momentum=0.9)
    _assert_trajectories_close(ours, theirs)


def test_generic_rmsprop_momentum_departs_from_torch_under_schedule():
    # optax scales each step by the lr of its own time and keeps that in the
    # buffer; PyTorch rescales the whole buffer by today's lr. With lr falling
    # to 1/7 of its start, the old steps weigh more in optax's buffer.
    ours = _run_jitted(_generic_rmsprop_like_torch(_schedule), _PARAMS, _GRADS)
    theirs = _torch_trajectory(
        _PARAMS, _GRADS, lr_lambda=_lr_lambda, lr=_BASE_LR, momentum=0.9
    )
    # Measured: the parameters end up to 4.1 apart (tolerance 1e-5).
    assert _max_abs_error(ours, theirs) > 0.1


# ---------------------------------------------------------------------------
# Complex parameters: PyTorch steps view_as_real(p), two independent reals.
# ---------------------------------------------------------------------------

_COMPLEX_SHAPES = {"complex_matrix": (3, 2), "complex_vector": (4,), "real": (3,)}
_COMPLEX_DTYPES = {
    "complex_matrix": np.complex64,
    "complex_vector": np.complex64,
    "real": np.float32,
}
_COMPLEX_PARAMS, _COMPLEX_GRADS = _problem(_COMPLEX_SHAPES, _COMPLEX_DTYPES, steps=100)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lr=3e-2),
        dict(lr=3e-2, centered=True),
        dict(lr=3e-2, momentum=0.9),
        dict(lr=3e-2, alpha=0.9, momentum=0.9, centered=True),
        dict(lr=1e-3, eps=1e-3, weight_decay=1e-2, momentum=0.9, maximize=True),
    ],
    ids=_grid_id,
)
def test_complex_parameters_follow_torch_trajectory(kwargs):
    tx = optax_rmsprop.pytorch_rmsprop(**kwargs)
    ours = _run_jitted(tx, _COMPLEX_PARAMS, _COMPLEX_GRADS)
    theirs = _torch_trajectory(_COMPLEX_PARAMS, _COMPLEX_GRADS, **kwargs)
    _assert_trajectories_close(ours, theirs)


# ---------------------------------------------------------------------------
# Invalid arguments: refused as torch.optim.RMSprop refuses them. PyTorch
# checks `0 <= x` for lr, eps, momentum, weight_decay and alpha (so NaN fails,
# and a string or None cannot be compared), and raises "Tensor lr must be
# 1-element" for a larger lr tensor; comparing any other multi-element tensor
# with 0 raises RuntimeError. PyTorch gets the same value, arrays as tensors.
# ---------------------------------------------------------------------------

_NAN = float("nan")
_PAIR = np.array([1e-3, 1e-3], np.float32)

# (argument, value, our exception, PyTorch's exception).
_REFUSED_LIKE_TORCH = [
    ("lr", -0.1, ValueError, ValueError),
    ("alpha", -0.5, ValueError, ValueError),
    ("eps", -1e-8, ValueError, ValueError),
    ("weight_decay", -1e-2, ValueError, ValueError),
    ("momentum", -0.9, ValueError, ValueError),
    ("lr", _NAN, ValueError, ValueError),
    ("alpha", _NAN, ValueError, ValueError),
    ("eps", _NAN, ValueError, ValueError),
    ("weight_decay", _NAN, ValueError, ValueError),
    ("momentum", _NAN, ValueError, ValueError),
    # Arrays whose values are known when the transform is built.
    ("lr", np.float32(-0.1), ValueError, ValueError),
    ("lr", jnp.array(-0.1), ValueError, ValueError),
    ("eps", np.array([-1e-8], np.float32), ValueError, ValueError),
    ("momentum", jnp.array([[_NAN]]), ValueError, ValueError),
    # More (or fewer) than one element: the known defect was a (2,) lr giving
    # each element of a (2,) parameter its own learning rate.
    ("lr", jnp.asarray(_PAIR), ValueError, ValueError),
    ("lr", _PAIR, ValueError, ValueError),
    ("lr", np.zeros(0, np.float32), ValueError, ValueError),
    ("alpha", jnp.array([0.9, 0.99]), ValueError, RuntimeError),
    ("eps", jnp.asarray(_PAIR), ValueError, RuntimeError),
    ("weight_decay", jnp.asarray(_PAIR), ValueError, RuntimeError),
    ("momentum", jnp.array([0.5, 0.9]), ValueError, RuntimeError),
    ("momentum", np.zeros((0, 3), np.float32), ValueError, RuntimeError),
    # Not numbers at all.
    ("lr", "0.01", TypeError, TypeError),
    ("lr", None, TypeError, TypeError),
    ("lr", 1e-2j, TypeError, TypeError),
    ("alpha", "0.99", TypeError, TypeError),
    ("eps", None, TypeError, TypeError),
    ("weight_decay", "0", TypeError, TypeError),
    ("momentum", None, TypeError, TypeError),
]


def _refused_id(row):
    name, value = row[:2]
    if isinstance(value, (np.ndarray, jax.Array)):
        kind = "jax" if isinstance(value, jax.Array) else "numpy"
        return f"{name}-{kind}{np.shape(value)}"
    return f"{name}-{value!r}"


_REFUSED_IDS = [_refused_id(row) for row in _REFUSED_LIKE_TORCH]


def _as_torch(value):
    """Arrays as PyTorch tensors, so PyTorch sees a tensor of the same shape."""
    if isinstance(value, (np.ndarray, jax.Array)):
        return torch.from_numpy(np.array(value))
    return value


def _torch_rmsprop(**kwargs):
    parameter = torch.nn.Parameter(torch.zeros(2))
    return torch.optim.RMSprop([parameter], **kwargs)


@pytest.mark.parametrize(
    "name, value, ours, theirs", _REFUSED_LIKE_TORCH, ids=_REFUSED_IDS
)
def test_argument_torch_refuses_is_refused_naming_it(name, value, ours, theirs):
    del theirs  # Checked against PyTorch below.
    with pytest.raises(ours, match=f"`{name}`"):
        optax_rmsprop.pytorch_rmsprop(**{name: value})


@pytest.mark.parametrize(
    "name, value, ours, theirs", _REFUSED_LIKE_TORCH, ids=_REFUSED_IDS
)
def test_torch_refuses_the_same_argument(name, value, ours, theirs):
    del ours  # Checked against ours above.
    with pytest.raises(theirs):
        _torch_rmsprop(**{name: _as_torch(value)})


def test_torch_names_the_one_element_rule_for_lr():
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        _torch_rmsprop(lr=torch.tensor([1e-3, 1e-3]))
    with pytest.raises(ValueError, match="`lr` must hold exactly one element"):
        optax_rmsprop.pytorch_rmsprop(lr=jnp.array([1e-3, 1e-3]))


def _first_step(tx, grad):
    """Our update for one gradient, from zero parameters of its shape."""
    params = jnp.zeros_like(grad)
    updates, _ = tx.update(grad, tx.init(params), params)
    return updates


def _torch_first_step(grad, **kwargs):
    """PyTorch's parameter after one step from zero, for the same gradient."""
    parameter = torch.nn.Parameter(torch.zeros(np.shape(grad)))
    optimizer = torch.optim.RMSprop([parameter], **kwargs)
    parameter.grad = torch.from_numpy(np.array(grad, np.float32))
    optimizer.step()
    return parameter.detach().numpy()


@pytest.mark.parametrize("shape", [(1,), (1, 1)])
def test_one_element_lr_array_is_squeezed_like_torch(shape):
    # Unsqueezed, a (1,) lr would turn the scalar parameter's update into a
    # (1,) array. g = 2, alpha 0.75, eps 0: v = 0.25 * 4 = 1, step -0.5 * 2.
    grad = jnp.array(2.0)
    lr = np.full(shape, 0.5, np.float32)
    tx = optax_rmsprop.pytorch_rmsprop(lr=jnp.asarray(lr), alpha=0.75, eps=0.0)
    ours = _first_step(tx, grad)
    theirs = _torch_first_step(grad, lr=torch.from_numpy(lr), alpha=0.75, eps=0.0)
    assert ours.shape == theirs.shape == ()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    np.testing.assert_allclose(ours, -1.0, rtol=1e-6)


# ---------------------------------------------------------------------------
# Traced hyperparameters (jit, vmap, inject_hyperparams) still pass: their
# shape is checked, their value (unknown while tracing) is not.
# ---------------------------------------------------------------------------

# One step from g = 2 with alpha 0.75 and eps 0: v = 0.25 * 2**2 = 1, so the
# update is -lr * 2 / sqrt(1) = -2 lr (weight decay and momentum add nothing on
# zero parameters and a first step).
_TRACED = dict(lr=0.5, alpha=0.75, eps=0.0, weight_decay=1e-2, momentum=0.9)


def test_hyperparameters_traced_under_jit_pass():
    @jax.jit
    def step(hyperparameters):
        assert all(isinstance(v, jax.core.Tracer) for v in hyperparameters.values())
        tx = optax_rmsprop.pytorch_rmsprop(**hyperparameters)
        return _first_step(tx, jnp.full(3, 2.0))

    ours = step({k: jnp.asarray(v, jnp.float32) for k, v in _TRACED.items()})
    np.testing.assert_allclose(ours, np.full(3, -1.0), rtol=1e-6)


def test_traced_lr_is_not_checked_for_sign():
    # Its value is unknown while tracing: -0.5 passes and ascends, +1 per step.
    @jax.jit
    def step(lr):
        tx = optax_rmsprop.pytorch_rmsprop(lr, alpha=0.75, eps=0.0)
        return _first_step(tx, jnp.full(1, 2.0))

    np.testing.assert_allclose(step(jnp.float32(-0.5)), [1.0], rtol=1e-6)


def test_vmapped_lr_gives_each_example_its_own_scalar_rate():
    def step(lr):
        tx = optax_rmsprop.pytorch_rmsprop(lr, alpha=0.75, eps=0.0)
        return _first_step(tx, jnp.full(2, 2.0))

    ours = jax.vmap(step)(jnp.array([0.25, 0.5]))  # -2 lr for each row.
    np.testing.assert_allclose(ours, [[-0.5, -0.5], [-1.0, -1.0]], rtol=1e-6)


def test_traced_array_of_two_elements_is_refused_under_jit():
    @jax.jit
    def step(lr):
        return _first_step(optax_rmsprop.pytorch_rmsprop(lr), jnp.ones(2))

    with pytest.raises(ValueError, match="`lr` must hold exactly one element"):
        step(jnp.asarray(_PAIR))


def test_inject_hyperparams_under_jit_passes():
    tx = optax.inject_hyperparams(optax_rmsprop.pytorch_rmsprop)(**_TRACED)
    params = jnp.zeros(3)
    updates, _ = jax.jit(tx.update)(jnp.full(3, 2.0), tx.init(params), params)
    np.testing.assert_allclose(updates, np.full(3, -1.0), rtol=1e-6)


# ---------------------------------------------------------------------------
# Deliberate differences: what PyTorch accepts and we refuse.
# ---------------------------------------------------------------------------

# alpha > 1 makes the average of squares negative (NaN steps); momentum > 1
# makes the buffer grow without bound.
_ACCEPTED_BY_TORCH_ONLY = [
    ("alpha", 1.5, ValueError),
    ("alpha", math.inf, ValueError),
    ("momentum", 1.5, ValueError),
    ("centered", "no", TypeError),
    ("maximize", None, TypeError),
]


@pytest.mark.parametrize("name, value, ours", _ACCEPTED_BY_TORCH_ONLY)
def test_setting_torch_accepts_is_refused_naming_it(name, value, ours):
    with pytest.raises(ours, match=f"`{name}`"):
        optax_rmsprop.pytorch_rmsprop(**{name: value})


@pytest.mark.parametrize("name, value, ours", _ACCEPTED_BY_TORCH_ONLY)
def test_torch_accepts_the_setting_we_refuse(name, value, ours):
    del ours  # Checked against ours above.
    optimizer = _torch_rmsprop(**{name: value})
    assert optimizer.defaults[name] is value


# ---------------------------------------------------------------------------
# The one intended difference: the centered variance is clamped at zero.
# ---------------------------------------------------------------------------

# A constant gradient of 10 with alpha 0.9: grad_avg -> 10 and square_avg ->
# 100, so square_avg - grad_avg**2 is 100 - 100 up to rounding; PyTorch's
# float32 difference turns negative at step 138 and sqrt gives NaN.
_CONSTANT_GRADIENT = 10.0
_CLAMP_STEPS = 200
_CLAMP_KWARGS = dict(lr=1e-3, alpha=0.9, centered=True)


def _constant_gradients():
    return {"w": np.full((_CLAMP_STEPS, 1), _CONSTANT_GRADIENT, np.float32)}


def test_torch_centered_variance_goes_nan_for_constant_gradient():
    params = {"w": np.zeros(1, np.float32)}
    theirs = _torch_trajectory(params, _constant_gradients(), **_CLAMP_KWARGS)
    assert np.isnan(theirs["w"][-1]).all()


def test_centered_variance_clamp_keeps_constant_gradient_finite():
    params = {"w": np.zeros(1, np.float32)}
    tx = optax_rmsprop.pytorch_rmsprop(**_CLAMP_KWARGS)
    ours = _run_jitted(tx, params, _constant_gradients())
    assert np.isfinite(ours["w"]).all()
