"""Non-finite gradients: what they do alone, and under optax.apply_if_finite.

``docs/RELIABILITY.md`` states the guarantees. ``apply_if_finite`` branches
with ``lax.cond``, which eager mode retraces at every call, so it runs jitted,
in a bank of one transform per storage option.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import DEVICE
from helpers import GRADS
from helpers import PARAMS
from helpers import RICHEST_VARIANT
from helpers import SCHEDULED_VARIANT
from helpers import STORAGE_OPTIONS
from helpers import VARIANTS
from helpers import assert_bit_identical
from helpers import banked
from helpers import random_tree
from helpers import run_steps
from helpers import storage_id
from helpers import storage_options
from helpers import uninterrupted

import optax_rmsprop

_BAD_VALUES = [
    pytest.param(math.nan, id="nan"),
    pytest.param(math.inf, id="inf"),
    pytest.param(-math.inf, id="-inf"),
]


def _with_bad_element(grads, value, path=("dense", "w"), index=(5, 7)):
    """``grads`` with one element of one leaf replaced by ``value``."""
    if len(path) == 1:
        return {**grads, path[0]: grads[path[0]].at[index].set(value)}
    inner = _with_bad_element(grads[path[0]], value, path[1:], index)
    return {**grads, path[0]: inner}


@storage_options()
@pytest.mark.parametrize("bad", _BAD_VALUES)
def test_non_finite_gradient_makes_only_its_own_update_element_nan(bad, nu_dtype):
    tx, history = uninterrupted(RICHEST_VARIANT, nu_dtype)
    _, state, params = history[0]
    updates, _ = tx.update(_with_bad_element(GRADS[1], bad), state, params)

    # inf / sqrt(inf) and inf / (sqrt(inf) + eps) are NaN: never a silent inf step.
    assert np.isnan(updates["dense"]["w"][5, 7])
    leaves = [np.asarray(u, np.float32) for u in jax.tree.leaves(updates)]
    assert sum(int(np.sum(~np.isfinite(u))) for u in leaves) == 1


# Without apply_if_finite a NaN gradient stays in its element's average, so the
# element's later updates are NaN as well. int8 storage instead saturates the
# element's code at the top of its block (next test).
@pytest.mark.parametrize("nu_dtype", [s for s in STORAGE_OPTIONS if s != "int8"])
def test_nan_gradient_keeps_its_elements_updates_nan_afterwards(nu_dtype):
    tx, history = uninterrupted("default", nu_dtype)
    _, state, params = history[0]
    _, state = tx.update(_with_bad_element(GRADS[1], math.nan), state, params)
    updates, _ = tx.update(GRADS[2], state, params)
    assert np.isnan(updates["dense"]["w"][5, 7])


def test_int8_storage_saturates_a_nan_average_instead_of_keeping_it():
    tx, history = uninterrupted("default", "int8")
    _, state, params = history[0]
    _, state = tx.update(_with_bad_element(GRADS[1], math.nan), state, params)
    assert int(state[0].nu["dense"]["w"].codes[5, 7]) == 255  # The block's top code.
    updates, _ = tx.update(GRADS[2], state, params)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


# A larger tree (five leaves: two of 4096 elements for int8 blocks, a bf16 one,
# an empty one; shapes shared with PARAMS, whose ops are compiled already) and
# the richest state: count, mu, nu, schedule count, trace. apply_if_finite
# branches with lax.cond, which eager mode retraces at every call: it runs
# jitted, in a bank of one transform per storage option.
_LARGE_PARAMS = {
    "block0": PARAMS,
    "block1": {"dense": {"w": random_tree(PARAMS["dense"]["w"], seed=10)}},
    "empty": jax.device_put(jnp.zeros((0, 3)), DEVICE),
}
_LARGE_BAD_LEAF = ("block1", "dense", "w")
_LARGE_GRADS = [random_tree(_LARGE_PARAMS, seed=11 + k) for k in range(3)]
_GUARDED_OPTIONS = {
    **VARIANTS[RICHEST_VARIANT],
    "learning_rate": VARIANTS[SCHEDULED_VARIANT]["learning_rate"],
}


_GUARDED_BANK = banked(
    {
        storage_id(nu_dtype): optax.apply_if_finite(
            optax_rmsprop.rmsprop(**_GUARDED_OPTIONS, nu_dtype=nu_dtype),
            max_consecutive_errors=5,
        )
        for nu_dtype in STORAGE_OPTIONS
    },
    _LARGE_PARAMS,
)


def _guarded_run(nu_dtype, grads_sequence):
    tx = _GUARDED_BANK[storage_id(nu_dtype)]
    return run_steps(tx, _LARGE_PARAMS, tx.init(_LARGE_PARAMS), grads_sequence)


@storage_options()
@pytest.mark.parametrize("bad", _BAD_VALUES)
def test_apply_if_finite_leaves_params_and_every_state_leaf_untouched(bad, nu_dtype):
    bad_grads = _with_bad_element(_LARGE_GRADS[1], bad, _LARGE_BAD_LEAF)
    (_, state, params), (updates, skipped, after) = _guarded_run(
        nu_dtype, [_LARGE_GRADS[0], bad_grads]
    )
    assert_bit_identical(after, params)
    assert_bit_identical(skipped.inner_state, state.inner_state)
    assert all(not bool(jnp.any(u)) for u in jax.tree.leaves(updates))
    assert not bool(skipped.last_finite)


@storage_options()
def test_apply_if_finite_step_after_a_skipped_one_is_exactly_the_uninterrupted_step(
    nu_dtype,
):
    good = [_LARGE_GRADS[0], _LARGE_GRADS[1]]
    bad = _with_bad_element(_LARGE_GRADS[2], math.nan, _LARGE_BAD_LEAF)
    expected = _guarded_run(nu_dtype, good)[-1]
    updates, state, params = _guarded_run(nu_dtype, [good[0], bad, good[1]])[-1]
    assert_bit_identical(updates, expected[0])
    assert_bit_identical(params, expected[2])
    assert_bit_identical(state.inner_state, expected[1].inner_state)


def test_apply_if_finite_counts_skipped_steps():
    good = _LARGE_GRADS[0]
    sequence = [
        good,
        _with_bad_element(good, math.nan, _LARGE_BAD_LEAF),
        _with_bad_element(good, math.inf, ("block0", "dense", "b"), ()),
        good,
        _with_bad_element(good, -math.inf, ("block0", "embed"), (0, 0)),
    ]
    states = [state for _, state, _ in _guarded_run(None, sequence)]
    assert [int(s.notfinite_count) for s in states] == [0, 1, 2, 0, 1]
    assert [int(s.total_notfinite) for s in states] == [0, 1, 2, 2, 3]


def test_apply_if_finite_applies_the_bad_update_after_max_consecutive_errors():
    # optax's escape hatch: after max_consecutive_errors skipped steps in a row
    # the next bad update goes through, and its NaN reaches the parameters.
    inner = optax_rmsprop.rmsprop(0.1)
    tx = optax.apply_if_finite(inner, max_consecutive_errors=2)
    tx = tx._replace(update=jax.jit(tx.update))
    params = {"w": jnp.ones(3)}
    bad = {"w": jnp.array([1.0, math.nan, 1.0])}
    history = run_steps(tx, params, tx.init(params), [bad] * 3)
    assert [bool(jnp.isnan(p["w"][1])) for _, _, p in history] == [False, False, True]
