"""The error table of docs/RELIABILITY.md, row by row, and the inputs that are
accepted as in optax (Python float leaves, a negative learning rate).
"""

import math
import re

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_rmsprop

_P = {"w": jnp.zeros(2)}
_STATE = optax_rmsprop.rmsprop(0.1).init(_P)
_TORCH_GROUP = {"params": [0], "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0}
_FLOAT_PARAMS = "`params` must hold floating or complex arrays; the leaf at "
# The diagnostics take every setting their result depends on as a keyword.
_DIAGNOSED = {"decay": 0.9, "eps": 1e-8, "eps_in_sqrt": True, "bias_correction": False}


def _row(call, error, message, id):
    return pytest.param(call, error, message, id=id)


def _call(fn, *args, **kwargs):
    return lambda: fn(*args, **kwargs)


def _update(tx, grads, params=None):
    return lambda: tx.update(grads, tx.init(_P), params)


_DOCUMENTED_ERRORS = [
    _row(
        _call(optax_rmsprop.scale_by_rms, decay=1.5),
        ValueError,
        "`decay` must lie in [0.0, 1.0], got 1.5.",
        "decay",
    ),
    _row(
        _call(optax_rmsprop.rmsprop, 0.1, decay=math.nan),
        ValueError,
        "`decay` must lie in [0.0, 1.0], got nan.",
        "decay-nan",
    ),
    _row(
        _call(optax_rmsprop.scale_by_stddev, eps=-1e-8),
        ValueError,
        "`eps` must lie in [0.0, inf], got -1e-08.",
        "eps",
    ),
    _row(
        _call(optax_rmsprop.rmsprop, 0.1, initial_scale=-1.0),
        ValueError,
        "`initial_scale` must lie in [0.0, inf], got -1.0.",
        "initial_scale",
    ),
    _row(
        _call(optax_rmsprop.rmsprop, 0.1, momentum=1.5),
        ValueError,
        "`momentum` must lie in [0.0, 1.0], got 1.5.",
        "momentum",
    ),
    _row(
        _call(optax_rmsprop.rmsprop, 0.1, weight_decay=-1e-4),
        ValueError,
        "`weight_decay` must lie in [0.0, inf], got -0.0001.",
        "weight_decay",
    ),
    _row(
        _call(optax_rmsprop.rmsprop, 0.1, nu_dtype=jnp.int8),
        ValueError,
        "`nu_dtype` must be None, a floating dtype",
        "nu_dtype-int",
    ),
    _row(
        _call(optax_rmsprop.scale_by_rms, nu_dtype="int4"),
        ValueError,
        "`nu_dtype` must be None, a floating dtype",
        "nu_dtype-string",
    ),
    _row(
        _call(optax_rmsprop.pytorch_rmsprop, lr=-0.01),
        ValueError,
        "`lr` must lie in [0.0, inf], got -0.01.",
        "pytorch-lr",
    ),
    _row(
        _call(optax_rmsprop.pytorch_rmsprop, alpha=1.5),
        ValueError,
        "`alpha` must lie in [0.0, 1.0], got 1.5.",
        "pytorch-alpha",
    ),
    _row(
        _call(optax_rmsprop.pytorch_rmsprop, momentum=2.0),
        ValueError,
        "`momentum` must lie in [0.0, 1.0], got 2.0.",
        "pytorch-momentum",
    ),
    _row(
        _call(optax_rmsprop.pytorch_rmsprop, weight_decay=-1.0),
        ValueError,
        "`weight_decay` must lie in [0.0, inf], got -1.0.",
        "pytorch-weight_decay",
    ),
    _row(
        _call(optax_rmsprop.pytorch_rmsprop, eps=-1e-8),
        ValueError,
        "`eps` must lie in [0.0, inf], got -1e-08.",
        "pytorch-eps",
    ),
    _row(
        _call(optax_rmsprop.keras_rmsprop, momentum=-0.5),
        ValueError,
        "`momentum` must lie in [0.0, 1.0], got -0.5.",
        "keras-momentum",
    ),
    _row(
        _call(optax_rmsprop.keras_rmsprop, rho=1.5),
        ValueError,
        "`rho` must lie in [0.0, 1.0], got 1.5.",
        "keras-rho",
    ),
    _row(
        _call(optax_rmsprop.keras_rmsprop, epsilon=-1.0),
        ValueError,
        "`epsilon` must lie in [0.0, inf], got -1.0.",
        "keras-epsilon",
    ),
    _row(
        _call(optax_rmsprop.keras_rmsprop, weight_decay=-1.0),
        ValueError,
        "`weight_decay` must lie in [0.0, inf], got -1.0.",
        "keras-weight_decay",
    ),
    _row(
        _call(optax_rmsprop.tf1_rmsprop, 0.1, decay=-0.1),
        ValueError,
        "`decay` must lie in [0.0, 1.0], got -0.1.",
        "tf1-decay",
    ),
    _row(
        _call(optax_rmsprop.tf1_rmsprop, 0.1, momentum=1.5),
        ValueError,
        "`momentum` must lie in [0.0, 1.0], got 1.5.",
        "tf1-momentum",
    ),
    _row(
        _call(optax_rmsprop.tf1_rmsprop),
        TypeError,
        "missing 1 required positional argument: 'learning_rate'",
        "tf1-no-learning_rate",
    ),
    _row(
        _call(optax_rmsprop.tf1_rmsprop, 0.1, epsilon=-1.0),
        ValueError,
        "`epsilon` must lie in [0.0, inf], got -1.0.",
        "tf1-epsilon",
    ),
    _row(
        _call(optax_rmsprop.rmsprop(0.1).init, {"w": _P["w"], "n": jnp.arange(2)}),
        TypeError,
        _FLOAT_PARAMS + "['n'] has dtype int32.",
        "params-int",
    ),
    _row(
        _call(optax_rmsprop.pytorch_rmsprop().init, jnp.array([True])),
        TypeError,
        _FLOAT_PARAMS + "<root> has dtype bool.",
        "params-bool",
    ),
    _row(
        _update(optax_rmsprop.rmsprop(0.1), {"v": jnp.zeros(2)}),
        ValueError,
        "The gradient tree does not match the optimizer state: was `init` called "
        "with other parameters?",
        "grads-structure",
    ),
    _row(
        _update(optax_rmsprop.scale_by_stddev(), {"w": jnp.zeros(3)}),
        ValueError,
        "The gradient at ['w'] has shape (3,) but its optimizer state has shape (2,).",
        "grads-shape",
    ),
    _row(
        _update(optax_rmsprop.keras_rmsprop(weight_decay=0.1), _P),
        ValueError,
        "keras_rmsprop with weight_decay needs `params`.",
        "keras-no-params",
    ),
    _row(
        _update(optax_rmsprop.rmsprop(0.1, weight_decay=0.1), _P),
        ValueError,
        "requires the current value of parameters",
        "weight_decay-no-params",
    ),
    _row(
        _call(
            optax_rmsprop.effective_learning_rate,
            optax.adam(0.1).init(_P),
            0.1,
            **_DIAGNOSED,
        ),
        ValueError,
        "`opt_state` holds no RMSprop state",
        "diagnostics-no-state",
    ),
    _row(
        _call(
            optax_rmsprop.rms_summary,
            _STATE,
            optax.constant_schedule(0.1),
            **_DIAGNOSED,
        ),
        ValueError,
        "`learning_rate` is a schedule but `opt_state` counts no steps",
        "diagnostics-schedule",
    ),
    _row(
        _call(
            optax_rmsprop.from_torch_state_dict,
            {"state": {}, "param_groups": [{**_TORCH_GROUP, "params": [0, 1]}]},
            _P,
        ),
        ValueError,
        "The PyTorch state_dict has 2 parameters but `params` has 1 leaves.",
        "from_torch-count",
    ),
    _row(
        _call(
            optax_rmsprop.from_torch_state_dict,
            {"state": {}, "param_groups": [{**_TORCH_GROUP, "alpha": 0.9}]},
            _P,
        ),
        ValueError,
        "The PyTorch checkpoint was saved with alpha=0.9 but `alpha`=0.99 was given.",
        "from_torch-setting",
    ),
]


# Wrong types: each would pass construction and fail (or silently do the wrong
# thing) inside the first update.
_REAL = "must be a real number or array, got "
_DOCUMENTED_ERRORS += [
    _row(
        _call(optax_rmsprop.rmsprop, "0.1"),
        TypeError,
        "`learning_rate` " + _REAL + "'0.1' (str).",
        "learning_rate-string",
    ),
    _row(
        _call(optax_rmsprop.scale_by_rms, decay="0.9"),
        TypeError,
        "`decay` " + _REAL + "'0.9' (str).",
        "decay-string",
    ),
    _row(
        _call(optax_rmsprop.rmsprop, 0.1, decay=None),
        TypeError,
        "`decay` " + _REAL + "None (NoneType).",
        "decay-none",
    ),
    _row(
        _call(optax_rmsprop.scale_by_stddev, eps="x"),
        TypeError,
        "`eps` " + _REAL + "'x' (str).",
        "eps-string",
    ),
    _row(
        _call(optax_rmsprop.rmsprop, 0.1, momentum="0.9"),
        TypeError,
        "`momentum` " + _REAL + "'0.9' (str).",
        "momentum-string",
    ),
    _row(
        _call(optax_rmsprop.keras_rmsprop, rho=jnp.array(1j)),
        TypeError,
        "`rho` " + _REAL,
        "keras-rho-complex",
    ),
    _row(
        _call(optax_rmsprop.rmsprop, 0.1, centered="no"),
        TypeError,
        "`centered` must be True or False, got 'no'.",
        "centered-string",
    ),
    _row(
        _call(optax_rmsprop.scale_by_rms, eps_in_sqrt="no"),
        TypeError,
        "`eps_in_sqrt` must be True or False, got 'no'.",
        "eps_in_sqrt-string",
    ),
    _row(
        _call(optax_rmsprop.rmsprop, 0.1, bias_correction=1),
        TypeError,
        "`bias_correction` must be True or False, got 1.",
        "bias_correction-int",
    ),
    _row(
        _call(optax_rmsprop.rmsprop, 0.1, momentum=0.9, nesterov="yes"),
        TypeError,
        "`nesterov` must be True or False, got 'yes'.",
        "nesterov-string",
    ),
    _row(
        _call(optax_rmsprop.pytorch_rmsprop, maximize="no"),
        TypeError,
        "`maximize` must be True or False, got 'no'.",
        "pytorch-maximize-string",
    ),
    _row(
        _call(optax_rmsprop.rmsprop(0.1).init, {"w": _P["w"], "s": "x"}),
        TypeError,
        _FLOAT_PARAMS + "['s'] has dtype str.",
        "params-string",
    ),
    _row(
        _update(optax_rmsprop.rmsprop(0.1), {"w": jnp.ones(2, jnp.int32)}),
        TypeError,
        "`updates` must hold floating or complex arrays; the leaf at ['w'] has "
        "dtype int32.",
        "grads-int",
    ),
    _row(
        _call(
            optax_rmsprop.effective_learning_rate,
            _STATE,
            0.1,
            **{**_DIAGNOSED, "decay": 2.0},
        ),
        ValueError,
        "`decay` must lie in [0.0, 1.0], got 2.0.",
        "diagnostics-decay",
    ),
    _row(
        _call(optax_rmsprop.rms_summary, _STATE, 0.1, **{**_DIAGNOSED, "eps": -1.0}),
        ValueError,
        "`eps` must lie in [0.0, inf], got -1.0.",
        "diagnostics-eps",
    ),
    _row(
        _call(optax_rmsprop.effective_learning_rate, _STATE, 0.1, decay=0.9),
        TypeError,
        "missing 3 required keyword-only arguments: 'eps', 'eps_in_sqrt', and "
        "'bias_correction'",
        "diagnostics-setting-left-out",
    ),
    _row(
        _call(
            optax_rmsprop.effective_learning_rate,
            _STATE,
            0.1,
            **{**_DIAGNOSED, "bias_correction": True},
        ),
        ValueError,
        "`bias_correction=True` contradicts the optimizer state, a "
        "ScaleByRmsState, which was built with bias_correction=False.",
        "diagnostics-bias-correction-contradicts-state",
    ),
    _row(
        _call(optax_rmsprop.pytorch_rmsprop, lr=jnp.array([1e-3, 1e-3])),
        ValueError,
        "`lr` must hold exactly one element, got an array of shape (2,)",
        "pytorch-lr-array",
    ),
    _row(
        _call(optax_rmsprop.keras_rmsprop, rho=jnp.array([0.9, 0.9])),
        ValueError,
        "`rho` must be a scalar (rank 0), got an array of shape (2,)",
        "keras-rho-array",
    ),
    _row(
        _call(optax_rmsprop.tf1_rmsprop, 0.1, epsilon=jnp.ones((1,))),
        ValueError,
        "`epsilon` must be a scalar (rank 0), got an array of shape (1,)",
        "tf1-epsilon-array",
    ),
    _row(
        _call(optax_rmsprop.from_torch_state_dict, {}, _P),
        ValueError,
        "`state_dict` must be a torch.optim.RMSprop state_dict",
        "from_torch-empty",
    ),
    _row(
        _call(optax_rmsprop.from_torch_state_dict, None, _P),
        ValueError,
        "`state_dict` must be a torch.optim.RMSprop state_dict",
        "from_torch-none",
    ),
    _row(
        _call(
            optax_rmsprop.to_torch_state_dict,
            optax_rmsprop.pytorch_rmsprop().init(_P),
            _P,
            foo=1,
        ),
        TypeError,
        "got an unexpected keyword argument 'foo'",
        "to_torch-unknown-keyword",
    ),
    _row(
        lambda: optax_rmsprop.rmsprop(0.1, centered=True).update(_P, _STATE, _P),
        TypeError,
        "The optimizer state handed to the RMS scaler is a ScaleByRmsState, but "
        "the transform keeps a ScaleByRStdDevState",
        "state-of-other-options",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), _DOCUMENTED_ERRORS)
def test_documented_error_is_raised_with_its_message(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


def test_python_float_leaves_step_as_in_optax():
    # optax accepts Python floats as parameter and gradient leaves; so do we,
    # with optax's float32 result.
    params, grads = [1.0, 2.0], [0.5, -4.0]
    ours, theirs = optax_rmsprop.rmsprop(0.1), optax.rmsprop(0.1)
    our_updates, _ = ours.update(grads, ours.init(params))
    optax_updates, _ = theirs.update(grads, theirs.init(params))
    np.testing.assert_array_equal(our_updates, optax_updates)


def test_negative_learning_rate_is_accepted_as_in_optax():
    # Gradient ascent: optax.rmsprop takes lr < 0, so the drop-in must too.
    tx = optax_rmsprop.rmsprop(-0.1, eps=0.0)
    updates, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
    np.testing.assert_allclose(updates, [0.1 * math.sqrt(10)], rtol=1e-6)
