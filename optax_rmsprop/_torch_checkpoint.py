"""Move ``pytorch_rmsprop`` state to and from ``torch.optim.RMSprop.state_dict()``.

PyTorch keys its optimizer state by parameter index; here the parameters are
the leaves of a pytree in ``jax.tree.leaves`` order. The state of
:func:`pytorch_rmsprop` holds optax's RMS state (``nu``, and ``mu`` when
centered), a ``TraceState`` (momentum) and a ``ScaleByScheduleState``
(``count``): PyTorch's ``square_avg``, ``grad_avg``, ``momentum_buffer`` and
``step``. They are found by their *type*, never by position in the chain nor
by field name (a parameter may well be called ``mu``). PyTorch itself is
imported only by :func:`to_torch_state_dict`, which must build tensors.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_rmsprop import _complex_pairs
from optax_rmsprop import _diagnostics
from optax_rmsprop import _pytorch
from optax_rmsprop import _storage

# Our state field -> PyTorch's per-parameter state key.
_TORCH_KEYS = {"nu": "square_avg", "mu": "grad_avg", "trace": "momentum_buffer"}
_PRESET_DEFAULTS = dict(
    lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
    centered=False, maximize=False,
)  # fmt: skip


def from_torch_state_dict(
    state_dict: dict, params: optax.Params, **preset_kwargs: Any
) -> optax.OptState:
    """Builds a :func:`pytorch_rmsprop` state from a PyTorch ``state_dict``.

    Args:
        state_dict: ``torch.optim.RMSprop(...).state_dict()`` (one or more
            parameter groups, parameters in order).
        params: a pytree whose leaves, in ``jax.tree.leaves`` order, are the
            PyTorch optimizer's parameters in order.
        **preset_kwargs: the arguments of :func:`pytorch_rmsprop` the state
            is for; they must agree with the saved parameter groups (all but
            ``lr``, which a scheduler may have changed).

    Returns:
        The optax state, as ``pytorch_rmsprop(**preset_kwargs).init(params)``
        with PyTorch's values filled in. Parameters PyTorch has not stepped
        yet keep their initial (zero) state.

    Raises:
        ValueError: if the number of parameters differs, a saved
            hyperparameter differs from ``preset_kwargs``, or a buffer is
            missing or has another shape than its leaf (the message names
            the leaf).
    """
    _check_state_dict(state_dict)
    _check_saved_settings(state_dict, preset_kwargs)
    state = _pytorch.pytorch_rmsprop(**preset_kwargs).init(params)
    paths = _leaf_paths(params)
    per_param = _torch_per_param_states(state_dict, len(paths))
    fill = lambda tree, key: _fill_leaves(tree, per_param, key, paths)
    steps = [int(float(entry["step"])) for entry in per_param if entry]

    def restore(node):
        if isinstance(node, optax.TraceState):
            return optax.TraceState(trace=fill(node.trace, "momentum_buffer"))
        if isinstance(node, optax.ScaleByScheduleState) and steps:
            return optax.ScaleByScheduleState(jnp.asarray(max(steps), jnp.int32))
        if isinstance(node, _diagnostics.RMS_STATE_CLASSES):
            fields = node._asdict()
            for field in ("nu", "mu"):
                if field in fields:
                    fields[field] = fill(fields[field], _TORCH_KEYS[field])
            return type(node)(**fields)
        return node

    return _map_state_nodes(restore, state)


def to_torch_state_dict(
    opt_state: optax.OptState, params: optax.Params, **preset_kwargs: Any
) -> dict:
    """Builds a dict that ``torch.optim.RMSprop.load_state_dict`` accepts.

    Args:
        opt_state: a :func:`pytorch_rmsprop` state.
        params: the parameters' pytree (leaves in PyTorch's parameter order).
        **preset_kwargs: the :func:`pytorch_rmsprop` arguments; they become
            the parameter group's hyperparameters (a schedule's current value
            for ``lr``).

    Returns:
        ``{"state": {index: {...}}, "param_groups": [{...}]}`` with tensors.
    """
    _pytorch.pytorch_rmsprop(**preset_kwargs)  # Checks the arguments' names and values.
    import torch  # Only this direction needs PyTorch.

    buffers, count = _torch_buffers(opt_state)
    state = {}
    for index, param in enumerate(jax.tree.leaves(params)):
        entry = {"step": torch.tensor(float(count))}
        for key, leaves in buffers.items():
            entry[key] = torch.from_numpy(_from_pairs_like(leaves[index], param))
        state[index] = entry
    group = _torch_param_group(count, len(state), **preset_kwargs)
    return {"state": state, "param_groups": [group]}


def _map_state_nodes(fn, state):
    """``fn`` on every optimizer-state node of the types this module reads."""
    types = (optax.TraceState, optax.ScaleByScheduleState)
    types += _diagnostics.RMS_STATE_CLASSES
    is_node = lambda x: isinstance(x, types)
    return jax.tree.map(lambda x: fn(x) if is_node(x) else x, state, is_leaf=is_node)


def _torch_buffers(opt_state):
    """``{torch key: leaves}`` and the step count, found by state type."""
    buffers, counts = {}, []

    def collect(node):
        if isinstance(node, optax.TraceState):
            buffers["momentum_buffer"] = jax.tree.leaves(node.trace)
        elif isinstance(node, optax.ScaleByScheduleState):
            counts.append(int(np.asarray(node.count)))
        else:
            fields = node._asdict()
            for field in ("nu", "mu"):
                if field in fields:
                    stored = fields[field]
                    decoded = _storage.decode_tree(stored, stored)
                    buffers[_TORCH_KEYS[field]] = jax.tree.leaves(decoded)
        return node

    _map_state_nodes(collect, opt_state)
    if not counts:
        raise ValueError("`opt_state` is not a pytorch_rmsprop state (no step count).")
    return buffers, counts[0]


def _check_state_dict(state_dict):
    """Refuses anything but a ``torch.optim`` state dict, naming the argument."""
    if not (
        isinstance(state_dict, dict)
        and isinstance(state_dict.get("state"), dict)
        and isinstance(state_dict.get("param_groups"), (list, tuple))
    ):
        raise ValueError(
            "`state_dict` must be a torch.optim.RMSprop state_dict: a dict with "
            f"'state' (a dict) and 'param_groups' (a list), got {state_dict!r:.80}."
        )


def _check_saved_settings(state_dict, preset_kwargs):
    """Refuses a checkpoint saved with other (non-learning-rate) settings."""
    wanted = dict(_PRESET_DEFAULTS, **preset_kwargs)
    for group in state_dict["param_groups"]:
        for name in (
            "alpha",
            "eps",
            "weight_decay",
            "momentum",
            "centered",
            "maximize",
        ):
            if name in group and group[name] != wanted[name]:
                raise ValueError(
                    f"The PyTorch checkpoint was saved with {name}={group[name]!r} "
                    f"but `{name}`={wanted[name]!r} was given."
                )


def _leaf_paths(params):
    return [
        jax.tree_util.keystr(path) or "<root>"
        for path, _ in jax.tree_util.tree_leaves_with_path(params)
    ]


def _torch_per_param_states(state_dict, n_leaves):
    indices = [i for group in state_dict["param_groups"] for i in group["params"]]
    if len(indices) != n_leaves:
        raise ValueError(
            f"The PyTorch state_dict has {len(indices)} parameters but `params` "
            f"has {n_leaves} leaves."
        )
    return [state_dict["state"].get(i, {}) for i in indices]


def _fill_leaves(template, per_param, key, paths):
    leaves, treedef = jax.tree.flatten(template, is_leaf=_storage.is_stored_leaf)
    new_leaves = []
    for leaf, torch_state, path in zip(leaves, per_param, paths):
        if not torch_state:
            new_leaves.append(leaf)
            continue
        if key not in torch_state:
            raise ValueError(
                f"The PyTorch state of the parameter at {path} has no "
                f"'{key}': was it saved with other `momentum`/`centered`?"
            )
        value = _complex_pairs.leaf_as_real_pairs(jnp.asarray(torch_state[key].numpy()))
        assert value is not None  # A tensor's array, never None.
        shape = _storage.stored_shape(leaf)
        if value.shape != shape:
            raise ValueError(
                f"The PyTorch '{key}' of the parameter at {path} has shape "
                f"{tuple(value.shape)} but the leaf needs {tuple(shape)}."
            )
        new_leaves.append(_storage.store_like(value, leaf))
    return jax.tree.unflatten(treedef, new_leaves)


def _from_pairs_like(leaf, param):
    value = np.asarray(leaf)
    if jnp.iscomplexobj(param):
        value = value[..., 0] + 1j * value[..., 1]
    # `np.ascontiguousarray` makes 0-d arrays 1-d: copy instead.
    return np.array(value, dtype=np.asarray(param).dtype, order="C")


def _torch_param_group(count, n_params, **preset_kwargs):
    settings = dict(_PRESET_DEFAULTS, **preset_kwargs)
    if callable(settings["lr"]):
        settings["lr"] = float(settings["lr"](count))
    settings.update(capturable=False, foreach=None, differentiable=False)
    settings["params"] = list(range(n_params))
    return settings
