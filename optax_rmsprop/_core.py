"""The one parametrised RMSprop scaler behind ``scale_by_rms`` and ``scale_by_stddev``.

Both public factories call :func:`rms_scaler`; the boolean options pick a code
path here, once, when the transform is built.  The state is optax's own
``NamedTuple`` for the chosen options, so checkpoints move between the two
libraries.
"""

import functools
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_rmsprop import _checks
from optax_rmsprop import _storage
from optax_rmsprop import _tree_math as tm


class CompactRmsState(NamedTuple):
    """State of :func:`scale_by_rms` with compact (bf16 or int8) storage.

    Attributes:
        count: int32 scalar, steps taken; keys the stochastic rounding (and
            the bias correction when it is on).
        nu: the average of squares, per leaf a bf16 array, an
            :class:`Int8Blocks`, or (int8 storage, leaves under 4096 elements)
            a float32 array.
    """

    count: jax.Array
    nu: Any


class CompactRStdDevState(NamedTuple):
    """State of :func:`scale_by_stddev` with compact storage.

    Attributes:
        count: int32 scalar, steps taken.
        mu: the running mean, bf16 (stochastically rounded; complex stays
            complex).
        nu: the average of squares, as in :class:`CompactRmsState`.
    """

    count: jax.Array
    mu: Any
    nu: Any


@functools.cache
def state_class(centered: bool, bias_correction: bool, compact: bool = False) -> type:
    """The state ``NamedTuple`` class for these options.

    Without compact storage it is the class ``optax.rmsprop`` keeps. optax
    0.2.8 exports ``ScaleByRmsState`` and ``ScaleByRStdDevState`` but not
    their ``WithCount`` siblings, so the class is read off the state of
    optax's own public factory; ``jax.eval_shape`` traces ``init`` on an
    empty tree without touching a device.
    """
    if compact:
        return CompactRStdDevState if centered else CompactRmsState
    factory = _OPTAX_SCALERS[centered]
    return type(jax.eval_shape(factory(bias_correction=bias_correction).init, ()))


# optax's own factories, taken at import: a program (or optax's own test
# suite) that sets ``optax.scale_by_rms = optax_rmsprop.scale_by_rms`` must
# not make ``state_class`` call ours, recursing forever.
_OPTAX_SCALERS = {False: optax.scale_by_rms, True: optax.scale_by_stddev}


def check_hyperparameters(decay: Any, eps: Any, initial_scale: Any) -> None:
    """Refuses plain-number settings that mean nothing for an EMA of squares."""
    _checks.check_in_range("decay", decay, 0.0, 1.0)
    _checks.check_non_negative("eps", eps)
    _checks.check_non_negative("initial_scale", initial_scale)


def rms_scaler(
    decay: jax.typing.ArrayLike,
    eps: jax.typing.ArrayLike,
    initial_scale: jax.typing.ArrayLike,
    eps_in_sqrt: bool,
    bias_correction: bool,
    centered: bool,
    nu_dtype: Any,
) -> optax.GradientTransformation:
    """Builds the scaler; see ``scale_by_rms`` for the maths and arguments."""
    check_hyperparameters(decay, eps, initial_scale)
    _checks.check_flag("eps_in_sqrt", eps_in_sqrt)
    _checks.check_flag("bias_correction", bias_correction)
    _checks.check_flag("centered", centered)
    nu_dtype = _checks.canonical_nu_dtype("nu_dtype", nu_dtype)
    compact = _storage.needs_count(nu_dtype)
    state_cls = state_class(centered, bias_correction, compact)
    counts_steps = bias_correction or compact
    eps_is_positive = _checks.is_plain_positive(eps)

    def init_fn(params):
        _checks.check_inexact_params(params)
        nu = tm.full_like(params, initial_scale, _nu_dtype_of)
        mu = tm.full_like(params, 0, _mu_dtype_of) if centered else None
        return _state(
            nu=_storage.init_tree(nu, nu_dtype),
            mu=_storage.init_mean_tree(mu, nu_dtype),
            count=jnp.zeros([], jnp.int32),
        )

    def update_fn(updates, state, params=None):
        del params  # Unused.
        _checks.check_state_type(state, state_cls, "the RMS scaler")
        _checks.check_tree_matches(updates, state.nu)
        updates = tm.map_leaves(jnp.asarray, updates)  # Python float leaves too.
        count = optax.safe_increment(state.count) if counts_steps else None
        previous_nu = _previous_nu(updates, state.nu)
        nu = tm.ema_of_squares(updates, previous_nu, decay)
        mu = tm.ema(updates, _decoded(updates, state.mu), decay) if centered else None
        variance = _variance(nu, mu, count)
        scaled = tm.scale_by_inverse_rms(
            updates, variance, eps, eps_in_sqrt, eps_is_positive, centered
        )
        return scaled, _state(
            nu=_stored(nu, state.nu, count),
            mu=_stored(mu, state.mu, count) if centered else None,
            count=count,
        )

    def _previous_nu(updates, stored):
        """The stored average in compute precision, never ``inf``.

        An average that overflowed last step (|g| > 1.8e19 in float32) is read
        as the largest finite value, so it is forgotten like any other instead
        of freezing the parameter at a zero update forever. Compact storage
        cannot hold ``inf`` (bf16 rounding clips, int8 saturates), and a cap
        there would make XLA copy the stored average every step.
        """
        return _decoded(updates, stored) if compact else tm.capped(stored)

    def _decoded(updates, stored):
        return _storage.decode_tree(updates, stored) if compact else stored

    def _stored(values, previous, count):
        return _storage.encode_tree(values, previous, count) if compact else values

    def _variance(nu, mu, count):
        """The debiased second moment, centred by the mean when asked."""
        if bias_correction:
            nu, mu = tm.debias(nu, decay, count), tm.debias(mu, decay, count)
        return tm.centered_variance(mu, nu) if centered else nu

    def _state(**fields):
        """Keeps only the fields of optax's state class for these options."""
        return state_cls(**{name: fields[name] for name in state_cls._fields})

    def _nu_dtype_of(param_dtype):
        return _storage.fill_dtype(tm.moment_dtype(param_dtype, nu_dtype), nu_dtype)

    def _mu_dtype_of(param_dtype):
        compute_dtype = tm.first_moment_dtype(param_dtype, nu_dtype)
        return _storage.fill_dtype(compute_dtype, nu_dtype, mean=True)

    return optax.GradientTransformation(init_fn, update_fn)
