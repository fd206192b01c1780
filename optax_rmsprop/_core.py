"""The one parametrised RMSprop scaler behind every factory of this package.

Every public factory (``scale_by_rms``, ``scale_by_stddev``, ``rmsprop`` and
the presets) checks its arguments and calls :func:`rms_scaler`; the boolean
options and the storage pick a code path here, once, when the transform is
built. The state is optax's own ``NamedTuple`` for the chosen options, so
checkpoints move between the two libraries.
"""

import functools
from typing import Any
from typing import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_rmsprop import _checks
from optax_rmsprop import _storage
from optax_rmsprop import _tree_math as tm
from optax_rmsprop._options import ScalerOptions


class CompactRmsState(NamedTuple):
    """State of :func:`scale_by_rms` with compact (bf16 or int8) storage.

    Attributes:
        count: int32 scalar, steps taken; keys the stochastic rounding (and
            the bias correction when it is on).
        nu: the average of squares, per leaf a bf16 array, an
            :class:`Int8Blocks`, or (int8 storage, leaves under 4096 elements)
            a float32 array.
    """

    # `count` shadows tuple.count, as in optax's own WithCount states.
    count: jax.Array  # type: ignore[assignment]
    nu: Any


class CompactRStdDevState(NamedTuple):
    """State of :func:`scale_by_stddev` with compact storage.

    Attributes:
        count: int32 scalar, steps taken.
        mu: the running mean, bf16 (stochastically rounded; complex stays
            complex).
        nu: the average of squares, as in :class:`CompactRmsState`.
    """

    count: jax.Array  # type: ignore[assignment]  # As above.
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


class ScalerParts(NamedTuple):
    """The scaler's pieces, for transforms that fuse it with what follows.

    Attributes:
        init: ``params -> state``, as the scaler's ``init``.
        advance: ``(g, state) -> new state``: the averages after this step's
            gradient, written in their storage.
        scale: ``(g, new state) -> g / rms``: the update from the averages
            just written (read back as stored).
        check: ``(updates, state) -> None``: refuses a state of other
            options or another tree.
    """

    init: optax.TransformInitFn
    advance: Callable[[Any, Any], Any]
    scale: Callable[[Any, Any], Any]
    check: Callable[[Any, Any], None]


def rms_scaler(options: ScalerOptions) -> optax.GradientTransformation:
    """The scaler from checked options; see ``scale_by_rms`` for the maths.

    The public factories check the options under the names the user typed
    (``_checks.check_scaler_options``, or a preset's own names with
    ``_checks.check_scaler_flags``), with ``nu_dtype`` in canonical form;
    nothing is checked twice.
    """
    parts = scaler_parts(options)

    def update_fn(updates, state, params=None):
        del params  # Unused.
        parts.check(updates, state)
        g = tm.map_leaves(jnp.asarray, updates)  # Python float leaves too.
        state = parts.advance(g, state)
        return parts.scale(g, state), state

    return optax.GradientTransformation(parts.init, update_fn)


def scaler_parts(options: ScalerOptions) -> ScalerParts:
    """:class:`ScalerParts` from checked options (see :func:`rms_scaler`).

    The update is computed from the averages as stored: XLA then reads the
    stored average once, after writing it in place, instead of copying last
    step's before overwriting it (a donated state is written where it was
    read). For float32 storage that is the exact average; compact storages'
    is stochastically rounded and floored at this step's own share, so that
    ``|update| <= 1 / sqrt(1 - decay)`` still holds.
    """
    decay, eps, initial_scale, eps_in_sqrt, bias_correction, centered, nu_dtype = (
        options
    )
    nu_storage, mean_storage = _storage.storages(nu_dtype)
    counts_steps = bias_correction or nu_storage.compact
    state_cls = state_class(centered, bias_correction, nu_storage.compact)
    new_state = _state_constructor(state_cls, centered, counts_steps)
    guard = tm.zero_guard(
        eps_can_be_zero=not _checks.is_plain_positive(eps), centered=centered
    )

    def nu_dtype_of(param_dtype):
        return _storage.moment_dtype(param_dtype, nu_dtype)

    def mu_dtype_of(param_dtype):
        return _storage.first_moment_dtype(param_dtype, nu_dtype)

    def init(params):
        _checks.check_inexact_leaves("params", params)
        nu = nu_storage.init(params, initial_scale, nu_dtype_of)
        mu = mean_storage.init(params, 0, mu_dtype_of) if centered else None
        count = jnp.zeros([], jnp.int32) if counts_steps else None
        return new_state(count, mu, nu)

    def check(updates, state):
        _checks.check_state_type(state, state_cls, "the RMS scaler")
        _checks.check_tree_matches(updates, state.nu)

    def advance(g, state):
        count = optax.safe_increment(state.count) if counts_steps else None
        nu = tm.ema_of_squares(g, nu_storage.read(g, state.nu), decay)
        mu = tm.ema(g, mean_storage.read(g, state.mu), decay) if centered else None
        return new_state(
            count,
            mean_storage.write(mu, state.mu, count) if centered else None,
            nu_storage.write(nu, state.nu, count),
        )

    def scale(g, state):
        nu = nu_storage.read_written(g, state.nu)
        if nu_storage.compact:
            nu = tm.at_least_own_share(nu, g, decay)
        mu = mean_storage.read_written(g, state.mu) if centered else None
        nu_hat, mu_hat = _debiased(nu, mu, state)
        variance = tm.centered_variance(mu_hat, nu_hat) if centered else nu_hat
        return tm.scale_by_inverse_rms(
            g, variance, eps=eps, eps_in_sqrt=eps_in_sqrt, guard=guard
        )

    def _debiased(nu, mu, state):
        if not bias_correction:  # The state may have no count to read.
            return nu, mu
        count = state.count
        return tm.debias(nu, decay, count), tm.debias(mu, decay, count)

    return ScalerParts(init, advance, scale, check)


def _state_constructor(
    state_cls: type, centered: bool, counts_steps: bool
) -> Callable[[Any, Any, Any], Any]:
    """``(count, mu, nu) -> state``, naming exactly the fields ``state_cls`` has.

    A field the class lacks is a ``TypeError`` at build time, not a value
    silently dropped.
    """
    if centered and counts_steps:
        return lambda count, mu, nu: state_cls(count=count, mu=mu, nu=nu)
    if centered:
        return lambda count, mu, nu: state_cls(mu=mu, nu=nu)
    if counts_steps:
        return lambda count, mu, nu: state_cls(count=count, nu=nu)
    return lambda count, mu, nu: state_cls(nu=nu)
