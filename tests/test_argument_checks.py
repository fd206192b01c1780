"""Argument checks: plain-number hyperparameters, traced values, mismatched trees.

Plain Python (and NumPy) numbers outside their range are refused when the
transform is built, with the argument's name and range in the message;
arrays and tracers, as ``jit``, ``vmap`` and ``optax.inject_hyperparams``
pass them, go through unchecked.
"""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_rmsprop


def _rmsprop(**kwargs):
    return optax_rmsprop.rmsprop(0.1, **kwargs)


_FACTORIES = [
    pytest.param(optax_rmsprop.scale_by_rms, id="scale_by_rms"),
    pytest.param(optax_rmsprop.scale_by_stddev, id="scale_by_stddev"),
    pytest.param(_rmsprop, id="rmsprop"),
]


def _range_message(name, low, high):
    return re.escape(f"`{name}` must lie in [{low}, {high}]")


# --- Plain numbers out of range ---------------------------------------------


@pytest.mark.parametrize("decay", [-0.1, 1.5, math.nan])
@pytest.mark.parametrize("factory", _FACTORIES)
def test_decay_outside_unit_interval_is_rejected(factory, decay):
    with pytest.raises(ValueError, match=_range_message("decay", 0.0, 1.0)):
        factory(decay=decay)


@pytest.mark.parametrize("eps", [-1e-8, math.nan])
@pytest.mark.parametrize("factory", _FACTORIES)
def test_negative_eps_is_rejected(factory, eps):
    with pytest.raises(ValueError, match=_range_message("eps", 0.0, math.inf)):
        factory(eps=eps)


@pytest.mark.parametrize("initial_scale", [-1.0, math.nan])
@pytest.mark.parametrize("factory", _FACTORIES)
def test_negative_initial_scale_is_rejected(factory, initial_scale):
    with pytest.raises(
        ValueError, match=_range_message("initial_scale", 0.0, math.inf)
    ):
        factory(initial_scale=initial_scale)


@pytest.mark.parametrize("momentum", [-0.1, 1.5, math.nan])
def test_momentum_outside_unit_interval_is_rejected(momentum):
    with pytest.raises(ValueError, match=_range_message("momentum", 0.0, 1.0)):
        _rmsprop(momentum=momentum)


@pytest.mark.parametrize("weight_decay", [-1e-4, math.nan])
def test_negative_weight_decay_is_rejected(weight_decay):
    with pytest.raises(ValueError, match=_range_message("weight_decay", 0.0, math.inf)):
        _rmsprop(weight_decay=weight_decay)


@pytest.mark.parametrize("nu_dtype", [jnp.int32, "foo", jnp.complex64, bool])
@pytest.mark.parametrize("factory", _FACTORIES)
def test_non_floating_nu_dtype_is_rejected(factory, nu_dtype):
    message = re.escape("`nu_dtype` must be None, a floating dtype")
    with pytest.raises(ValueError, match=message):
        factory(nu_dtype=nu_dtype)


@pytest.mark.parametrize("decay", [np.float32(1.5), np.float64(-0.1), np.int64(2)])
def test_numpy_scalar_hyperparameters_are_checked_like_python_numbers(decay):
    with pytest.raises(ValueError, match=_range_message("decay", 0.0, 1.0)):
        optax_rmsprop.scale_by_rms(decay=decay)


# --- Boundary values --------------------------------------------------------


def _first_update(tx, grads):
    updates, _ = tx.update(grads, tx.init(jnp.zeros_like(grads)))
    return updates


@pytest.mark.parametrize("factory", _FACTORIES)
def test_decay_zero_is_accepted(factory):
    # decay 0 keeps only the newest square: nu = g^2 = 4 and mu = g = 2, so
    # scale_by_rms gives 2 / sqrt(4 + 1e-8) ~ 1 (rmsprop: lr 0.1, -0.1), and
    # the centered variance 4 - 2^2 = 0 gives 2 / sqrt(1e-8) = 2e4.
    expected = {
        optax_rmsprop.scale_by_rms: 1.0,
        optax_rmsprop.scale_by_stddev: 2e4,
        _rmsprop: -0.1,
    }[factory]
    updates = _first_update(factory(decay=0.0), jnp.array([2.0]))
    np.testing.assert_allclose(updates, [expected], rtol=1e-5)


@pytest.mark.parametrize("factory", _FACTORIES)
def test_decay_one_is_accepted(factory):
    # decay 1 never updates the averages: nu stays initial_scale = 4 and mu
    # stays 0, so with eps 0 every variant divides g = 2 by sqrt(4) = 2: 1
    # (rmsprop: lr 0.1, -0.1).
    expected = -0.1 if factory is _rmsprop else 1.0
    tx = factory(decay=1.0, eps=0.0, initial_scale=4.0)
    np.testing.assert_allclose(
        _first_update(tx, jnp.array([2.0])), [expected], rtol=1e-6
    )


@pytest.mark.parametrize("eps_in_sqrt", [True, False])
def test_eps_zero_is_accepted(eps_in_sqrt):
    # g = 2, decay 0.9: nu = 0.4, 2 / sqrt(0.4) = sqrt(10) with eps 0.
    tx = optax_rmsprop.scale_by_rms(decay=0.9, eps=0.0, eps_in_sqrt=eps_in_sqrt)
    updates = _first_update(tx, jnp.array([2.0]))
    np.testing.assert_allclose(updates, [math.sqrt(10)], rtol=1e-6)


@pytest.mark.parametrize(("momentum", "expected"), [(0.0, -1.0), (1.0, -2.0)])
def test_momentum_bounds_are_accepted(momentum, expected):
    # decay 0, eps 0, constant g = 2: every scaled step is 2 / sqrt(4) = 1 and
    # lr 1 makes d = -1. The second update is d + momentum * d: -1 or -2.
    tx = optax_rmsprop.rmsprop(1.0, decay=0.0, eps=0.0, momentum=momentum)
    grads = jnp.array([2.0])
    state = tx.init(grads)
    for _ in range(2):
        updates, state = tx.update(grads, state)
    np.testing.assert_allclose(updates, [expected], rtol=1e-6)


# --- Traced hyperparameters -------------------------------------------------

_PARAMS = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.1, -0.2])}
_GRADS = {"w": jnp.array([[0.3, -0.01], [2.0, 0.5]]), "b": jnp.array([-1.0, 0.02])}
# Binary fractions, so that Python's float64 `1 - decay` rounded to float32
# equals the traced float32 one. With decay 0.8 they differ in the last bit,
# and the centered, debiased variance (a difference of near-equal numbers)
# amplifies that to a relative 1e-5 in the update, in optax as in ours.
_HYPER = {"learning_rate": 0.125, "decay": 0.75, "eps": 2.0**-10, "momentum": 0.5}


def _three_steps(tx, with_params=True):
    # The gradient changes between steps: with a constant one the centered,
    # debiased variance is exactly 0 and the update mere rounding noise over eps.
    state = tx.init(_PARAMS)
    for scale in [1.0, -0.5, 2.0]:
        grads = jax.tree.map(lambda g, s=scale: s * g, _GRADS)
        params = _PARAMS if with_params else None
        updates, state = tx.update(grads, state, params)
    return updates


@pytest.mark.parametrize(
    "flags",
    [{}, {"centered": True, "bias_correction": True, "nesterov": True}],
)
def test_hyperparameters_built_from_tracers_under_jit_match_plain_numbers(flags):
    @jax.jit
    def traced(hyper):
        assert all(isinstance(v, jax.core.Tracer) for v in hyper.values())
        return _three_steps(optax_rmsprop.rmsprop(**hyper, **flags))

    expected = _three_steps(optax_rmsprop.rmsprop(**_HYPER, **flags))
    actual = traced({k: jnp.asarray(v) for k, v in _HYPER.items()})
    jax.tree.map(
        lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-6), actual, expected
    )


def test_decay_and_eps_mapped_over_by_vmap():
    # g = 2, first step, eps outside the root. decay 0.5, eps 0: mu = 1, nu = 2,
    # variance 1, update 2 / 1 = 2. decay 0.9, eps 1: mu = 0.2, nu = 0.4,
    # variance 0.36, update 2 / (0.6 + 1) = 1.25.
    def update(decay, eps):
        tx = optax_rmsprop.scale_by_stddev(decay, eps, eps_in_sqrt=False)
        return _first_update(tx, jnp.array([2.0]))

    updates = jax.vmap(update)(jnp.array([0.5, 0.9]), jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(updates, [[2.0], [1.25]], rtol=1e-6)


def test_inject_hyperparams_under_jit_matches_plain_rmsprop():
    tx = optax.inject_hyperparams(optax_rmsprop.rmsprop)(**_HYPER)
    tx = tx._replace(update=jax.jit(tx.update))

    expected = _three_steps(optax_rmsprop.rmsprop(**_HYPER))
    actual = _three_steps(tx)
    jax.tree.map(
        lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-6), actual, expected
    )


def test_inject_hyperparams_learning_rate_change_takes_effect():
    # Halving the injected learning rate halves the (momentum-free) update.
    hyper = {k: v for k, v in _HYPER.items() if k != "momentum"}
    tx = optax.inject_hyperparams(optax_rmsprop.rmsprop)(**hyper)
    state = tx.init(_PARAMS)
    full, _ = jax.jit(tx.update)(_GRADS, state, _PARAMS)
    state.hyperparams["learning_rate"] = jnp.asarray(hyper["learning_rate"] / 2)
    half, _ = jax.jit(tx.update)(_GRADS, state, _PARAMS)
    jax.tree.map(
        lambda h, f: np.testing.assert_allclose(h, 0.5 * f, rtol=1e-6), half, full
    )


# inject_hyperparams turns every numeric default into an array; a default
# weight_decay of 0.0 would become a traced "maybe non-zero" decay, adding
# optax.add_decayed_weights: an extra EmptyState in the state and an update
# that demands `params`, unlike optax.inject_hyperparams(optax.rmsprop).
def test_inject_hyperparams_update_works_without_params_like_optax():
    tx = optax.inject_hyperparams(optax_rmsprop.rmsprop)(**_HYPER)
    tx = tx._replace(update=jax.jit(tx.update))

    expected = _three_steps(optax_rmsprop.rmsprop(**_HYPER))
    actual = _three_steps(tx, with_params=False)
    jax.tree.map(
        lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-6), actual, expected
    )


def test_inject_hyperparams_state_has_optax_layout():
    ours = optax.inject_hyperparams(optax_rmsprop.rmsprop)(**_HYPER).init(_PARAMS)
    theirs = optax.inject_hyperparams(optax.rmsprop)(**_HYPER).init(_PARAMS)
    assert jax.tree.structure(ours.inner_state) == jax.tree.structure(
        theirs.inner_state
    )


# --- Gradient trees that do not match the state -----------------------------

_STRUCTURE_MISMATCHES = [
    pytest.param({"w": _GRADS["w"], "c": _GRADS["b"]}, id="other-key"),
    pytest.param({**_GRADS, "extra": jnp.zeros(2)}, id="extra-leaf"),
    pytest.param([_GRADS["w"], _GRADS["b"]], id="list-not-dict"),
]
_STRUCTURE_MESSAGE = re.escape("The gradient tree does not match the optimizer state")


@pytest.mark.parametrize("grads", _STRUCTURE_MISMATCHES)
@pytest.mark.parametrize("factory", _FACTORIES)
def test_gradient_tree_of_other_structure_is_rejected(factory, grads):
    tx = factory()
    with pytest.raises(ValueError, match=_STRUCTURE_MESSAGE):
        tx.update(grads, tx.init(_PARAMS), _PARAMS)


@pytest.mark.parametrize("factory", _FACTORIES)
def test_gradient_of_other_shape_is_rejected_naming_the_leaf(factory):
    tx = factory()
    grads = {"w": _GRADS["w"], "b": jnp.zeros(3)}
    message = re.escape(
        "The gradient at ['b'] has shape (3,) but its optimizer state has shape (2,)."
    )
    with pytest.raises(ValueError, match=message):
        tx.update(grads, tx.init(_PARAMS), _PARAMS)


def test_mismatched_gradient_tree_is_rejected_under_jit():
    tx = optax_rmsprop.rmsprop(0.1, momentum=0.9)
    grads = {**_GRADS, "extra": jnp.zeros(2)}
    with pytest.raises(ValueError, match=_STRUCTURE_MESSAGE):
        jax.jit(tx.update)(grads, tx.init(_PARAMS), _PARAMS)


# --- Non-floating parameters ------------------------------------------------

_NON_FLOAT_PARAMS = [
    pytest.param(
        {"w": jnp.zeros(2), "n": jnp.zeros(2, jnp.int32)},
        r"\['n'\] has dtype int32",
        id="int",
    ),
    pytest.param(
        {"a": [jnp.zeros(1), jnp.array([True])]},
        r"\['a'\]\[1\] has dtype bool",
        id="bool",
    ),
    pytest.param(jnp.arange(3), r"<root> has dtype int32", id="root"),
]


@pytest.mark.parametrize(("params", "leaf_message"), _NON_FLOAT_PARAMS)
@pytest.mark.parametrize("factory", _FACTORIES)
def test_integer_params_at_init_raise_type_error_naming_the_leaf(
    factory, params, leaf_message
):
    with pytest.raises(TypeError, match="`params` must hold floating.*" + leaf_message):
        factory().init(params)
