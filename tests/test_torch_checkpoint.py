"""Moving ``pytorch_rmsprop`` state to and from ``torch.optim.RMSprop.state_dict()``.

Training is split in two halves of 50 steps: the first in one library, the
state moved across, the second in both. PyTorch is the reference for the
second half. Gradients are drawn once in NumPy float32 and fed to both.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from helpers import biased_gradients
from helpers import standard_normal
from helpers import torch_steps

import optax_rmsprop

_HALF = 50

# |ours - torch| <= _ATOL + _RTOL * |torch| after the second half. Measured
# maximum of |ours - torch| / (1 + |torch|) over all cases: 1.5e-7 (the
# schedule; 9e-8 for the others; largest absolute error 1.9e-6 on parameters
# that travel to ~12); the tolerance is about 3x that.
_RTOL = 5e-7
_ATOL = 5e-7


def _problem(dtypes, shapes, seed=0):
    """Parameters of size ~1 and ``2 * _HALF`` steps of gradients."""
    rng = np.random.default_rng(seed)
    params = {
        name: standard_normal(rng, shapes[name], dtype)
        for name, dtype in dtypes.items()
    }
    grads = {
        name: biased_gradients(
            rng, (2 * _HALF,) + shapes[name], dtype, independent_imaginary_scale=False
        )
        for name, dtype in dtypes.items()
    }
    return params, grads


_REAL = _problem(
    {"kernel": np.float32, "bias": np.float32}, {"kernel": (4, 3), "bias": (3,)}
)
_SCALAR = _problem(
    {"offset": np.float32, "scale": np.float32}, {"offset": (2,), "scale": ()}
)
_COMPLEX = _problem(
    {"filter": np.complex64, "gain": np.float32},
    {"filter": (3, 2), "gain": (2,)},
)

# Every option of the preset at a value other than its default.
_EVERYTHING = dict(
    lr=3e-2,
    alpha=0.9,
    eps=1e-3,
    weight_decay=1e-2,
    momentum=0.9,
    centered=True,
    maximize=True,
)
_CASES = [
    pytest.param(dict(lr=1e-2), _REAL, id="plain"),
    pytest.param(dict(lr=1e-2, momentum=0.9), _REAL, id="momentum"),
    pytest.param(dict(lr=1e-2, centered=True), _REAL, id="centered"),
    pytest.param(_EVERYTHING, _REAL, id="everything"),
    pytest.param(dict(lr=1e-2), _COMPLEX, id="complex"),
    pytest.param(
        dict(lr=1e-2, momentum=0.9, centered=True),
        _COMPLEX,
        id="complex-centered-momentum",
    ),
]


def _cases_with_scalar(*marks):
    """``_CASES`` plus a tree holding a 0-d parameter, with ``marks`` on it."""
    scalar_case = pytest.param(
        dict(lr=1e-2, momentum=0.9, centered=True),
        _SCALAR,
        id="scalar-centered-momentum",
        marks=marks,
    )
    return _CASES + [scalar_case]


def _halves(grads):
    first = jax.tree.map(lambda g: g[:_HALF], grads)
    second = jax.tree.map(lambda g: g[_HALF:], grads)
    return first, second


def _torch_optimizer(params, **torch_kwargs):
    """``torch.optim.RMSprop`` over copies of the leaves of ``params``."""
    tensors = [
        torch.nn.Parameter(torch.from_numpy(np.array(p)))
        for p in jax.tree.leaves(params)
    ]
    return tensors, torch.optim.RMSprop(tensors, **torch_kwargs)


def _torch_steps(tensors, optimizer, grads, scheduler=None):
    for _ in torch_steps(tensors, optimizer, grads, scheduler):
        pass


def _torch_params(tensors, like):
    """The tensors' current values in the tree structure of ``like``."""
    values = [tensor.detach().numpy().copy() for tensor in tensors]
    return jax.tree.unflatten(jax.tree.structure(like), values)


@functools.partial(jax.jit, static_argnums=0)
def _scan_steps(tx, params, state, grads):
    def step(carry, grad):
        params, state = carry
        updates, state = tx.update(grad, state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, state), _ = jax.lax.scan(step, (params, state), grads)
    return params, state


def _our_steps(tx, params, state, grads):
    params, state = _scan_steps(tx, params, state, grads)
    return jax.tree.map(np.asarray, params), state


def _assert_trees_close(ours, theirs):
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(theirs)
    ):
        np.testing.assert_allclose(
            a, b, rtol=_RTOL, atol=_ATOL, err_msg=jax.tree_util.keystr(path)
        )


def _assert_trees_equal(ours, expected):
    assert jax.tree.structure(ours) == jax.tree.structure(expected)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(expected)
    ):
        assert jnp.result_type(a) == jnp.result_type(b), jax.tree_util.keystr(path)
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


# ---------------------------------------------------------------------------
# PyTorch -> ours.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, problem", _cases_with_scalar())
def test_torch_state_continues_in_ours(kwargs, problem):
    params, grads = problem
    first, second = _halves(grads)
    tensors, optimizer = _torch_optimizer(params, **kwargs)
    _torch_steps(tensors, optimizer, first)
    middle = _torch_params(tensors, params)
    state = optax_rmsprop.from_torch_state_dict(
        optimizer.state_dict(), middle, **kwargs
    )
    _torch_steps(tensors, optimizer, second)
    tx = optax_rmsprop.pytorch_rmsprop(**kwargs)
    ours, _ = _our_steps(tx, middle, state, second)
    _assert_trees_close(ours, _torch_params(tensors, params))


def test_imported_step_count_continues_schedule():
    params, grads = _REAL
    first, second = _halves(grads)
    lr_lambda = lambda step: 1.0 / (1.0 + 0.05 * step)
    schedule = lambda count: 3e-2 * lr_lambda(count)
    tensors, optimizer = _torch_optimizer(params, lr=3e-2, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    _torch_steps(tensors, optimizer, first, scheduler)
    middle = _torch_params(tensors, params)
    kwargs = dict(lr=schedule, momentum=0.9)
    state = optax_rmsprop.from_torch_state_dict(
        optimizer.state_dict(), middle, **kwargs
    )
    _torch_steps(tensors, optimizer, second, scheduler)
    ours, _ = _our_steps(optax_rmsprop.pytorch_rmsprop(**kwargs), middle, state, second)
    _assert_trees_close(ours, _torch_params(tensors, params))


def test_imported_state_does_not_share_memory_with_torch():
    params, grads = _REAL
    first, second = _halves(grads)
    tensors, optimizer = _torch_optimizer(params, momentum=0.9, centered=True)
    _torch_steps(tensors, optimizer, first)
    state = optax_rmsprop.from_torch_state_dict(
        optimizer.state_dict(), params, momentum=0.9, centered=True
    )
    snapshot = jax.tree.map(np.array, state)
    _torch_steps(tensors, optimizer, second)  # Updates PyTorch's buffers in place.
    _assert_trees_equal(state, snapshot)


def test_unstepped_parameter_keeps_zero_state():
    params = {"frozen": np.ones(2, np.float32), "trained": np.ones(3, np.float32)}
    tensors, optimizer = _torch_optimizer(params, momentum=0.9)
    tensors[1].grad = torch.ones(3)  # `frozen` (leaf 0) never gets a gradient.
    optimizer.step()
    state = optax_rmsprop.from_torch_state_dict(
        optimizer.state_dict(), params, momentum=0.9
    )
    assert not optax.tree.get(state, "nu")["frozen"].any()
    assert not optax.tree.get(state, "trace")["frozen"].any()


def test_several_param_groups_map_to_leaves_in_order():
    params, grads = _REAL
    first, second = _halves(grads)
    tensors = [
        torch.nn.Parameter(torch.from_numpy(np.array(p)))
        for p in jax.tree.leaves(params)
    ]
    groups = [{"params": tensors[:1]}, {"params": tensors[1:]}]
    optimizer = torch.optim.RMSprop(groups, lr=1e-2, momentum=0.9)
    _torch_steps(tensors, optimizer, first)
    middle = _torch_params(tensors, params)
    state = optax_rmsprop.from_torch_state_dict(
        optimizer.state_dict(), middle, lr=1e-2, momentum=0.9
    )
    _torch_steps(tensors, optimizer, second)
    tx = optax_rmsprop.pytorch_rmsprop(lr=1e-2, momentum=0.9)
    ours, _ = _our_steps(tx, middle, state, second)
    _assert_trees_close(ours, _torch_params(tensors, params))


# ---------------------------------------------------------------------------
# Ours -> PyTorch.
# ---------------------------------------------------------------------------


def _ours_then_exported(kwargs, params, first):
    tx = optax_rmsprop.pytorch_rmsprop(**kwargs)
    middle, state = _our_steps(tx, params, tx.init(params), first)
    return middle, state, optax_rmsprop.to_torch_state_dict(state, middle, **kwargs)


def _assert_continues_in_torch(kwargs, problem, torch_kwargs):
    """Half the steps in ours, exported, the rest in PyTorch and in ours: equal.

    PyTorch's optimizer is built with ``torch_kwargs``, then loads the export.
    """
    params, grads = problem
    first, second = _halves(grads)
    middle, state, state_dict = _ours_then_exported(kwargs, params, first)
    tensors, optimizer = _torch_optimizer(middle, **torch_kwargs)
    optimizer.load_state_dict(state_dict)
    _torch_steps(tensors, optimizer, second)
    tx = optax_rmsprop.pytorch_rmsprop(**kwargs)
    ours, _ = _our_steps(tx, middle, state, second)
    _assert_trees_close(ours, _torch_params(tensors, params))


@pytest.mark.parametrize("kwargs, problem", _cases_with_scalar())
def test_our_state_continues_in_torch(kwargs, problem):
    _assert_continues_in_torch(kwargs, problem, kwargs)


def test_exported_param_group_sets_torch_hyperparameters():
    # A default-constructed PyTorch optimizer takes lr, momentum, centered...
    # from the exported parameter group.
    _assert_continues_in_torch(_EVERYTHING, _REAL, {})


def test_exported_lr_is_schedule_value_at_count():
    # After 50 steps LambdaLR has set lr = base_lr * lambda(50) for step 51.
    schedule = lambda count: 3e-2 / (1.0 + 0.05 * count)
    params, grads = _REAL
    first, _ = _halves(grads)
    _, _, state_dict = _ours_then_exported(dict(lr=schedule), params, first)
    assert state_dict["param_groups"][0]["lr"] == pytest.approx(3e-2 / 3.5)
    assert all(entry["step"] == _HALF for entry in state_dict["state"].values())


# ---------------------------------------------------------------------------
# Refused state dicts.
# ---------------------------------------------------------------------------


def _stepped_torch_state_dict(params, **torch_kwargs):
    tensors, optimizer = _torch_optimizer(params, **torch_kwargs)
    for tensor in tensors:
        tensor.grad = torch.ones_like(tensor)
    optimizer.step()
    return optimizer.state_dict()


def test_shape_mismatch_is_refused_naming_the_leaf():
    saved = {
        "layer": {
            "bias": np.zeros(3, np.float32),
            "kernel": np.zeros((2, 3), np.float32),
        }
    }
    ours = {
        "layer": {
            "bias": np.zeros(4, np.float32),
            "kernel": np.zeros((2, 3), np.float32),
        }
    }
    state_dict = _stepped_torch_state_dict(saved)
    with pytest.raises(ValueError, match=re.escape("['layer']['bias']")):
        optax_rmsprop.from_torch_state_dict(state_dict, ours)


def test_wrong_number_of_parameters_is_refused():
    state_dict = _stepped_torch_state_dict([np.zeros(3, np.float32)] * 2)
    with pytest.raises(ValueError, match="2 parameters but `params` has 3 leaves"):
        optax_rmsprop.from_torch_state_dict(state_dict, [np.zeros(3, np.float32)] * 3)


@pytest.mark.parametrize(
    "option, missing_key",
    [("momentum", "momentum_buffer"), ("centered", "grad_avg")],
)
def test_missing_buffer_is_refused_naming_the_key(option, missing_key):
    params = {"w": np.zeros(3, np.float32)}
    state_dict = _stepped_torch_state_dict(params)  # Plain RMSprop: no buffers.
    # A hand-assembled state dict without the group's settings: only the
    # missing buffer itself can tell.
    del state_dict["param_groups"][0][option]
    kwargs = {"momentum": 0.9} if option == "momentum" else {"centered": True}
    with pytest.raises(ValueError, match=f"'{missing_key}'"):
        optax_rmsprop.from_torch_state_dict(state_dict, params, **kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"momentum": 0.9}, "momentum"),
        ({"centered": True}, "centered"),
        ({"alpha": 0.9}, "alpha"),
        ({"eps": 1e-3}, "eps"),
    ],
)
def test_checkpoint_saved_with_other_settings_is_refused(kwargs, name):
    params = {"w": np.zeros(3, np.float32)}
    state_dict = _stepped_torch_state_dict(params)  # Saved with the defaults.
    with pytest.raises(ValueError, match=f"saved with {name}="):
        optax_rmsprop.from_torch_state_dict(state_dict, params, **kwargs)


# ---------------------------------------------------------------------------
# Export then import gives back the same state.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, problem", _cases_with_scalar())
def test_fresh_state_survives_export_and_import(kwargs, problem):
    params, _ = problem
    state = optax_rmsprop.pytorch_rmsprop(**kwargs).init(params)
    state_dict = optax_rmsprop.to_torch_state_dict(state, params, **kwargs)
    restored = optax_rmsprop.from_torch_state_dict(state_dict, params, **kwargs)
    _assert_trees_equal(restored, state)


@pytest.mark.parametrize("kwargs, problem", _cases_with_scalar())
def test_stepped_state_survives_export_and_import(kwargs, problem):
    params, grads = problem
    first, _ = _halves(grads)
    middle, state, state_dict = _ours_then_exported(kwargs, params, first)
    restored = optax_rmsprop.from_torch_state_dict(state_dict, middle, **kwargs)
    _assert_trees_equal(restored, state)


@pytest.mark.parametrize("name", ["mu", "nu", "trace", "count"])
def test_parameter_named_like_a_state_field_survives_export_and_import(name):
    params = {name: np.ones(2, np.float32), "other": np.ones(3, np.float32)}
    state = optax_rmsprop.pytorch_rmsprop().init(params)
    state_dict = optax_rmsprop.to_torch_state_dict(state, params)
    restored = optax_rmsprop.from_torch_state_dict(state_dict, params)
    _assert_trees_equal(restored, state)
