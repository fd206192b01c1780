"""What the optimizer is doing: effective learning rates read from its state.

RMSprop's step for an element is ``lr * g / (sqrt(nu_hat) + eps)``, so
``lr / (sqrt(nu_hat) + eps)`` (or ``lr / sqrt(nu_hat + eps)``) is the
per-element *effective learning rate*: the factor a plain SGD step would need
to move as far. Watching it shows what AdaGrad hides: RMSprop's settles near
``lr / rms(g)`` while AdaGrad's keeps shrinking like ``lr / sqrt(t)``.

The RMS state is found anywhere inside a chain, ``masked``,
``inject_hyperparams`` or ``MultiSteps`` state by its type (one of optax's
four RMS state classes), never by its position.
"""

from typing import Any
from typing import TypedDict
from typing import Unpack

import jax
import jax.numpy as jnp
import optax

from optax_rmsprop import _checks
from optax_rmsprop import _core
from optax_rmsprop import _storage
from optax_rmsprop import _tree_math as tm


def effective_learning_rate(
    opt_state: optax.OptState,
    learning_rate: optax.ScalarOrSchedule,
    *,
    decay: jax.typing.ArrayLike,
    eps: jax.typing.ArrayLike,
    eps_in_sqrt: bool,
    bias_correction: bool,
) -> optax.Updates:
    r"""The per-element step size the current average implies, shaped like the params.

    It is the factor by which the latest average scales a gradient: the step
    just taken was ``effective_learning_rate * g`` (for a schedule, the
    learning rate is taken at the state's step count, i.e. the next step's).

    .. math::

        \eta_\text{eff} = \frac{\eta}{\sqrt{\hat\nu + \epsilon}}
        \text{ (eps\_in\_sqrt)} \quad\text{or}\quad
        \frac{\eta}{\sqrt{\hat\nu} + \epsilon},

    where :math:`\hat\nu` is the (debiased, with ``bias_correction``)
    average of squares, or the variance for a centered state.

    Every setting the result depends on is a required keyword, named as in
    :func:`rmsprop`, because the state does not record them and a silent
    default would give a plausible, wrong number (optax's eps placement for a
    PyTorch-style state is off by orders of magnitude). The presets' names
    map as follows: :func:`pytorch_rmsprop` ``decay=alpha,
    eps_in_sqrt=False``; :func:`keras_rmsprop` ``decay=rho, eps=epsilon,
    eps_in_sqrt=True``; :func:`tf1_rmsprop` ``eps=epsilon, eps_in_sqrt=True``;
    none of them debiases (``bias_correction=False``). Whether the state is
    centered is read from the state, and ``bias_correction`` is checked
    against it where optax's state class tells (a ``WithCount`` class is
    bias-corrected).

    Args:
        opt_state: the state of any transformation of this package, or of a
            chain / wrapper holding one (the first RMS state found is used).
        learning_rate: a number, or a schedule evaluated at the state's step
            count (the first ``count`` found in a schedule's state).
        decay: the ``decay`` the state was built with.
        eps: the ``eps`` the state was built with.
        eps_in_sqrt: the ``eps_in_sqrt`` the state was built with.
        bias_correction: the ``bias_correction`` the state was built with.

    Returns:
        A pytree shaped like the parameters, in the averages' dtype.

    Raises:
        ValueError: if ``opt_state`` holds no RMS state, if
            ``bias_correction`` contradicts the state's class, or for a
            ``decay`` outside [0, 1] or a negative ``eps``.
        TypeError: if a setting is missing or of the wrong type.

    Example:
        After one step with g = 2, decay 0.9 and eps 0, nu = 0.4 and the
        effective learning rate is 0.1 / sqrt(0.4) = 0.1581139:

        >>> import jax.numpy as jnp
        >>> import optax_rmsprop
        >>> tx = optax_rmsprop.rmsprop(0.1, eps=0.0)
        >>> _, state = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
        >>> rate = optax_rmsprop.effective_learning_rate(
        ...     state, 0.1, decay=0.9, eps=0.0, eps_in_sqrt=True,
        ...     bias_correction=False)
        >>> print(f"{rate[0]:.6f}")
        0.158114
    """
    _check_settings(decay, eps, eps_in_sqrt, bias_correction)
    rms_state = find_rms_state(opt_state)
    _check_bias_correction_matches(rms_state, bias_correction)
    lr = _learning_rate_now(opt_state, learning_rate)
    variance = _variance(rms_state, decay, bias_correction)
    if eps_in_sqrt:
        return tm.map_leaves(lambda v: lr * jax.lax.rsqrt(v + eps), variance)
    return tm.map_leaves(lambda v: lr / (jnp.sqrt(v) + eps), variance)


class DiagnosticSettings(TypedDict):
    """What a diagnostic needs to know of the state, every key required."""

    decay: jax.typing.ArrayLike
    eps: jax.typing.ArrayLike
    eps_in_sqrt: bool
    bias_correction: bool


def rms_summary(
    opt_state: optax.OptState,
    learning_rate: optax.ScalarOrSchedule,
    **settings: Unpack[DiagnosticSettings],
) -> dict[str, jax.Array]:
    """Per-leaf min / median / max of the RMS and of the effective learning rate.

    Jittable; the result is a flat ``{"<leaf path>/<statistic>": scalar}``
    dict ready for a metrics logger, with statistics ``rms_min``,
    ``rms_median``, ``rms_max``, ``lr_min``, ``lr_median``, ``lr_max``.

    Args:
        opt_state: as for :func:`effective_learning_rate`.
        learning_rate: as for :func:`effective_learning_rate`.
        **settings: ``decay``, ``eps``, ``eps_in_sqrt`` and
            ``bias_correction``, each required, as for
            :func:`effective_learning_rate`.

    Returns:
        A dict of float scalars, empty leaves left out.

    Raises:
        ValueError: as :func:`effective_learning_rate`.
        TypeError: as :func:`effective_learning_rate`.
    """
    lrs = effective_learning_rate(opt_state, learning_rate, **settings)
    variance = _variance(
        find_rms_state(opt_state), settings["decay"], settings["bias_correction"]
    )
    rms = tm.map_leaves(jnp.sqrt, variance)
    summary = {}
    for name, tree in (("rms", rms), ("lr", lrs)):
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            if leaf.size == 0:
                continue
            key = jax.tree_util.keystr(path) or "<root>"
            summary[f"{key}/{name}_min"] = jnp.min(leaf)
            summary[f"{key}/{name}_median"] = jnp.median(leaf)
            summary[f"{key}/{name}_max"] = jnp.max(leaf)
    return summary


RMS_STATE_CLASSES: tuple[type[Any], ...] = tuple(
    _core.state_class(centered, bias)
    for centered in (False, True)
    for bias in (False, True)
) + (_core.CompactRmsState, _core.CompactRStdDevState)


def find_rms_state(opt_state: optax.OptState) -> Any:
    """The first of optax's RMS / RStdDev states inside ``opt_state``."""
    classes = RMS_STATE_CLASSES
    for node in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, classes)):
        if isinstance(node, classes):
            return node
    raise ValueError(
        "`opt_state` holds no RMSprop state (ScaleByRmsState or "
        "ScaleByRStdDevState, with or without count)."
    )


def _check_settings(
    decay: jax.typing.ArrayLike,
    eps: jax.typing.ArrayLike,
    eps_in_sqrt: bool,
    bias_correction: bool,
) -> None:
    _checks.check_decay_and_eps(decay, eps)
    _checks.check_flag("eps_in_sqrt", eps_in_sqrt)
    _checks.check_flag("bias_correction", bias_correction)


def _check_bias_correction_matches(rms_state: Any, bias_correction: bool) -> None:
    """optax's classes tell whether the state debiases; compact ones count anyway."""
    if _is_compact(rms_state):
        return
    counts = "count" in rms_state._fields
    if counts != bias_correction:
        raise ValueError(
            f"`bias_correction={bias_correction}` contradicts the optimizer "
            f"state, a {type(rms_state).__name__}, which was built with "
            f"bias_correction={counts}."
        )


def _variance(rms_state, decay, bias_correction):
    fields = rms_state._asdict()  # Not getattr: every tuple has a `count` method.
    nu = _storage.decode_tree(fields["nu"], fields["nu"])
    mu = _storage.decode_tree(fields.get("mu"), fields.get("mu"))
    if bias_correction:
        count = fields["count"]
        nu, mu = tm.debias(nu, decay, count), tm.debias(mu, decay, count)
    return nu if mu is None else tm.centered_variance(mu, nu)


def _is_compact(rms_state):
    return isinstance(rms_state, (_core.CompactRmsState, _core.CompactRStdDevState))


def _learning_rate_now(opt_state, learning_rate):
    if not callable(learning_rate):
        return learning_rate
    is_schedule_state = lambda x: isinstance(x, optax.ScaleByScheduleState)
    for node in jax.tree.leaves(opt_state, is_leaf=is_schedule_state):
        if is_schedule_state(node):
            return learning_rate(node.count)
    raise ValueError(
        "`learning_rate` is a schedule but `opt_state` counts no steps "
        "(no ScaleByScheduleState); pass the current learning rate instead."
    )
