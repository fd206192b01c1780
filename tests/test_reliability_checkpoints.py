"""Checkpoints: save mid-training, restore, continue bit-identically.

Through orbax and through a pickle of NumPy arrays, for every variant, storage
option and preset; between optax and ours; and a state of other options, or
one restored without a target, is refused with a message naming the state.
``docs/RELIABILITY.md`` states the guarantees. The runs come from the bank
of ``helpers`` (one compilation for every variant).
"""

import pickle
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from helpers import DEVICE
from helpers import GRADS
from helpers import PARAMS
from helpers import PRESETS
from helpers import SPLIT
from helpers import VARIANTS
from helpers import assert_bit_identical
from helpers import banked
from helpers import rmsprop_variant
from helpers import run_steps
from helpers import storage_options
from helpers import uninterrupted

import optax_rmsprop


def _orbax_round_trip(tree, target, directory):
    """Saves ``tree`` with orbax's StandardCheckpointer, restores it as ``target``."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / "checkpoint", tree)
        checkpointer.wait_until_finished()
        return checkpointer.restore(directory / "checkpoint", target)


def _through_orbax(tx, checkpoint, directory):
    """The restore target is abstract: ``jax.eval_shape`` of a fresh init."""
    target = jax.eval_shape(lambda: {"params": PARAMS, "state": tx.init(PARAMS)})
    restored = _orbax_round_trip(checkpoint, target, directory)
    return restored["params"], restored["state"]


def _through_pickle(tx, checkpoint, directory):
    """NumPy arrays in the state's own NamedTuples, pickled, unpickled, put back.

    ``jax.device_put`` matters: left as NumPy, bf16 params meet Python floats
    under NumPy's promotion (``1e-2 * p`` is float32 for a NumPy bf16 ``p``)
    inside ``optax.add_decayed_weights``, and the update changes dtype.
    """
    del tx, directory  # Unused: the pickle carries its own tree.
    pickled = pickle.dumps(jax.device_get(checkpoint))
    restored = jax.device_put(pickle.loads(pickled), DEVICE)
    return restored["params"], restored["state"]


def _assert_resumed_run_is_bit_identical(name, nu_dtype, restore, directory):
    tx, history = uninterrupted(name, nu_dtype)
    _, state, params = history[SPLIT - 1]
    restored_params, restored_state = restore(
        tx, {"params": params, "state": state}, directory
    )
    assert jax.tree.structure(restored_state) == jax.tree.structure(state)
    resumed = run_steps(tx, restored_params, restored_state, GRADS[SPLIT:])
    assert_bit_identical(resumed, history[SPLIT:])


@storage_options()
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_orbax_checkpoint_resumes_bit_identically(variant, nu_dtype, tmp_path):
    _assert_resumed_run_is_bit_identical(variant, nu_dtype, _through_orbax, tmp_path)


@storage_options()
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pickled_numpy_checkpoint_resumes_bit_identically(variant, nu_dtype, tmp_path):
    _assert_resumed_run_is_bit_identical(variant, nu_dtype, _through_pickle, tmp_path)


@pytest.mark.parametrize("restore", [_through_orbax, _through_pickle])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_checkpoint_resumes_bit_identically(preset, restore, tmp_path):
    _assert_resumed_run_is_bit_identical(preset, None, restore, tmp_path)


# optax's own arguments, float32 params (for bf16 params our average is float32
# where optax's is bf16, by design; orbax would cast it to the target's dtype).
# Continuations agree to float32 rounding, not necessarily bits: the two
# libraries compile slightly different arithmetic for momentum and bias
# correction (tests/test_state_layout.py bounds it; 1e-5 suffices here).
_F32_PARAMS = {"dense": PARAMS["dense"]}
_F32_GRADS = [{"dense": g["dense"]} for g in GRADS]
_OPTAX_SETTINGS = {
    "default": {},
    "every_flag": {
        "eps_in_sqrt": False,
        "centered": True,
        "bias_correction": True,
        "momentum": 0.9,
        "nesterov": True,
    },
}
_LIBRARIES = {"optax": optax.rmsprop, "ours": optax_rmsprop.rmsprop}
_LIBRARY_BANK = banked(
    {
        (library, setting): make(0.1, **kwargs)
        for library, make in _LIBRARIES.items()
        for setting, kwargs in _OPTAX_SETTINGS.items()
    },
    _F32_PARAMS,
)


def _assert_checkpoint_moves(setting, saved_by, resumed_by, directory):
    saver = _LIBRARY_BANK[saved_by, setting]
    resumer = _LIBRARY_BANK[resumed_by, setting]
    start = (_F32_PARAMS, saver.init(_F32_PARAMS))
    _, state, params = run_steps(saver, *start, _F32_GRADS[:SPLIT])[-1]
    target = jax.eval_shape(
        lambda: {"params": _F32_PARAMS, "state": resumer.init(_F32_PARAMS)}
    )
    restored = _orbax_round_trip({"params": params, "state": state}, target, directory)

    assert jax.tree.structure(restored["state"]) == jax.tree.structure(target["state"])
    resumed = run_steps(
        resumer, restored["params"], restored["state"], _F32_GRADS[SPLIT:]
    )
    continued = run_steps(saver, params, state, _F32_GRADS[SPLIT:])
    for actual, expected in zip(jax.tree.leaves(resumed), jax.tree.leaves(continued)):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("setting", list(_OPTAX_SETTINGS))
def test_optax_orbax_checkpoint_resumes_in_ours(setting, tmp_path):
    _assert_checkpoint_moves(setting, "optax", "ours", tmp_path)


@pytest.mark.parametrize("setting", list(_OPTAX_SETTINGS))
def test_our_orbax_checkpoint_resumes_in_optax(setting, tmp_path):
    _assert_checkpoint_moves(setting, "ours", "optax", tmp_path)


def test_orbax_restore_into_another_variant_names_the_differing_field(tmp_path):
    saved = {"state": rmsprop_variant("default").init(PARAMS)}
    centered = optax_rmsprop.rmsprop(0.1, centered=True)
    target = {"state": jax.eval_shape(centered.init, PARAMS)}
    with pytest.raises(ValueError, match=r"(?is)structure.*\bmu\b"):
        _orbax_round_trip(saved, target, tmp_path)


def _as_plain_containers(state):
    """What orbax restores without a target: dicts and lists, EmptyState as None."""
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        fields = {k: _as_plain_containers(v) for k, v in state._asdict().items()}
        return fields or None
    if isinstance(state, (tuple, list)):
        return [_as_plain_containers(x) for x in state]
    if isinstance(state, dict):
        return {k: _as_plain_containers(v) for k, v in state.items()}
    return state


# A state restored for one set of options and handed to a transform built with
# others must fail with a message about the optimizer state (as a gradient tree
# that does not match the state already does), not deep inside the maths, and
# must never be silently accepted.
def _refusal(handed_to, got, kept):
    """The README's ``TypeError`` message, whole, for a state of other options."""
    return re.escape(
        f"The optimizer state handed to {handed_to} is a {got}, but the transform "
        f"keeps a {kept}: was the state built or saved with other options, or "
        "restored without a target?"
    )


_SCALER = "the RMS scaler"
_WRONG_STATES = [
    pytest.param(
        {},
        {"centered": True},
        _refusal(_SCALER, "ScaleByRmsState", "ScaleByRStdDevState"),
        id="plain_into_centered",
    ),
    pytest.param(
        {},
        {"bias_correction": True},
        _refusal(_SCALER, "ScaleByRmsState", "ScaleByRmsWithCountState"),
        id="plain_into_bias_correction",
    ),
    pytest.param(
        {},
        {"nu_dtype": jnp.bfloat16},
        _refusal(_SCALER, "ScaleByRmsState", "CompactRmsState"),
        id="plain_into_bf16_storage",
    ),
    pytest.param(
        {},
        {"momentum": 0.9},
        _refusal("momentum", "EmptyState", "TraceState"),
        id="plain_into_momentum",
    ),
    pytest.param(
        {"centered": True},
        {},
        _refusal(_SCALER, "ScaleByRStdDevState", "ScaleByRmsState"),
        id="centered_into_plain",
    ),
    pytest.param(
        {"momentum": 0.9},
        {},
        _refusal("the momentum slot", "TraceState", "EmptyState"),
        id="momentum_into_plain",
    ),
]


@pytest.mark.parametrize(("saved_with", "resumed_with", "message"), _WRONG_STATES)
def test_state_of_other_options_is_refused_by_update(saved_with, resumed_with, message):
    state = optax_rmsprop.rmsprop(0.1, **saved_with).init(PARAMS)
    tx = optax_rmsprop.rmsprop(0.1, **resumed_with)
    with pytest.raises(TypeError, match=message):
        tx.update(GRADS[0], state, PARAMS)


def test_state_restored_without_orbax_target_is_refused_by_update():
    tx = rmsprop_variant("default")
    state = _as_plain_containers(tx.init(PARAMS))
    with pytest.raises(TypeError, match=_refusal(_SCALER, "dict", "ScaleByRmsState")):
        tx.update(GRADS[0], state, PARAMS)
