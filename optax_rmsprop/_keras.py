"""``keras_rmsprop``: ``keras.optimizers.RMSprop`` (Keras 3), names and defaults."""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from optax_rmsprop import _alias
from optax_rmsprop import _checks
from optax_rmsprop import _tree_math as tm
from optax_rmsprop._options import ScalerOptions


def keras_rmsprop(
    learning_rate: optax.ScalarOrSchedule = 0.001,
    rho: jax.typing.ArrayLike = 0.9,
    momentum: jax.typing.ArrayLike = 0.0,
    epsilon: jax.typing.ArrayLike = 1e-7,
    centered: bool = False,
    weight_decay: jax.typing.ArrayLike | None = None,
    *,
    nu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""RMSprop exactly as Keras 3's ``keras.optimizers.RMSprop`` computes it.

    .. math::

        v_t = \rho\,v_{t-1} + (1 - \rho)\,g_t^2, \qquad
        \Delta_t = \frac{\eta_t\,g_t}{\sqrt{v_t - [\bar g_t^2] + \epsilon}},

    .. math::

        m_t = \beta\,m_{t-1} + \Delta_t, \qquad
        \theta_t = (1 - \eta_t\lambda)\,\theta_{t-1} - m_t
        \;(\text{or } - \Delta_t \text{ when } \beta = 0).

    Keras puts eps *inside* the root (like optax, unlike PyTorch), the
    learning rate inside the momentum buffer, and applies weight decay
    :math:`\lambda` decoupled and outside the buffer, scaled by the current
    learning rate, before the step. The one intended difference: the
    centered variance is clamped at zero where Keras returns NaN.

    Keras checks only the learning rate when it is built: a float or a
    schedule, refusing strings, ``None``, bools and arrays with ``ValueError``.
    This preset refuses those too, the wrong types with ``TypeError`` and
    arrays that are not rank 0 with ``ValueError``, but also takes ints, NumPy
    scalars and rank-0 arrays or tracers (``jit``, ``vmap``,
    ``optax.inject_hyperparams``). Deliberate differences, refused here but
    accepted by Keras: ``rho`` or ``momentum`` outside [0, 1] (a negative
    momentum silently turns Keras's momentum off), a negative ``epsilon`` or
    ``weight_decay``, NaN in any of these, non-scalar arrays for them (Keras
    broadcasts them against each variable), a non-bool ``centered``. Keras's
    ``clipnorm``, ``clipvalue``, ``global_clipnorm``, ``use_ema`` and
    ``gradient_accumulation_steps`` are no arguments here: chain
    :func:`optax.clip_by_global_norm` and friends, or wrap in
    :class:`optax.MultiSteps`.

    Args:
        learning_rate: a number or an optax schedule of the step count (Keras
            evaluates its schedule on ``iterations``, the same count).
        rho: decay of the averages, in [0, 1].
        momentum: momentum factor in [0, 1]; 0 keeps no buffer.
        epsilon: added inside the root, at least 0.
        centered: normalise by the running standard deviation.
        weight_decay: ``None`` or the decoupled decay rate, at least 0.
        nu_dtype: storage of the average: ``None`` (float32 for bf16/f16
            params), a floating dtype, ``jnp.bfloat16`` or ``"int8"`` (compact,
            see :func:`scale_by_rms`).

    Returns:
        An :class:`optax.GradientTransformationExtraArgs` chaining
        :func:`rmsprop`'s pieces, plus the weight-decay transform when used.

    Raises:
        TypeError: ``learning_rate`` not a real number, array or schedule
            (a string, ``None``, a bool, a complex number), as Keras refuses;
            any other hyperparameter not a real number or array (Keras fails
            at its first step instead); ``centered`` not a bool.
        ValueError: a ``learning_rate`` array that is not rank 0, as Keras
            refuses; and, where Keras checks nothing, ``rho`` or ``momentum``
            outside [0, 1], a negative ``epsilon`` or ``weight_decay``, NaN
            in any of these (for plain numbers and arrays whose value is
            known), or any of them an array that is not rank 0.

    Example:
        First step, g = 2, rho 0.9, epsilon 0: v = 0.1 * 4 = 0.4 and the
        parameter moves by -0.001 * 2 / sqrt(0.4) = -0.003162:

        >>> import jax.numpy as jnp, optax
        >>> import optax_rmsprop
        >>> params = jnp.zeros(1)
        >>> tx = optax_rmsprop.keras_rmsprop(epsilon=0.0)
        >>> step, _ = tx.update(jnp.array([2.0]), tx.init(params), params)
        >>> print(f"{optax.apply_updates(params, step)[0]:.6f}")
        -0.003162
    """
    if not callable(learning_rate):
        _checks.check_not_bool("learning_rate", learning_rate)  # As Keras.
        learning_rate = _checks.preset_hyperparameter("learning_rate", learning_rate)
    rho = _checks.preset_hyperparameter("rho", rho, 0.0, 1.0)
    momentum = _checks.preset_hyperparameter("momentum", momentum, 0.0, 1.0)
    epsilon = _checks.preset_hyperparameter("epsilon", epsilon, 0.0)
    if weight_decay is not None:
        weight_decay = _checks.preset_hyperparameter("weight_decay", weight_decay, 0.0)
    options = ScalerOptions(
        decay=rho, eps=epsilon, centered=centered, nu_dtype=nu_dtype
    )
    step = _alias.rmsprop_chain(
        _checks.check_scaler_flags(options),
        learning_rate=learning_rate,
        momentum=_alias.none_if_zero(momentum),
    )
    if weight_decay is None or _checks.is_plain_zero(weight_decay):
        return step
    return optax.chain(step, _weight_decay_outside_buffer(learning_rate, weight_decay))


def _weight_decay_outside_buffer(
    learning_rate: optax.ScalarOrSchedule, weight_decay: Any
) -> optax.GradientTransformation:
    """Adds ``-lr_t * weight_decay * params`` to the finished update.

    Keras shrinks the variables by ``lr * wd`` before the step, so the decay
    never enters the momentum buffer; the state counts steps for schedules.
    """

    def init_fn(params):
        del params  # Unused.
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("keras_rmsprop with weight_decay needs `params`.")
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        updates = tm.add_scaled(updates, params, -1.0 * lr * weight_decay)
        return updates, optax.ScaleByScheduleState(optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)
