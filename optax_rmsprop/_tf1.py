"""``tf1_rmsprop``: TF1's ``RMSPropOptimizer`` update, names and defaults."""

from typing import Any

import jax
import optax

from optax_rmsprop import _alias
from optax_rmsprop import _checks
from optax_rmsprop._options import ScalerOptions


def tf1_rmsprop(
    learning_rate: optax.ScalarOrSchedule,
    decay: jax.typing.ArrayLike = 0.9,
    momentum: jax.typing.ArrayLike = 0.0,
    epsilon: jax.typing.ArrayLike = 1e-10,
    centered: bool = False,
    *,
    nu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""RMSprop as TF1's ``RMSPropOptimizer`` (and ``ApplyRMSProp``) computes it.

    The mean square starts at **one**, eps goes inside the root, and the
    learning rate enters the momentum buffer:

    .. math::

        ms_t = \rho\,ms_{t-1} + (1 - \rho)\,g_t^2, \quad ms_0 = 1, \qquad
        mom_t = \beta\,mom_{t-1} + \frac{\eta\,g_t}{\sqrt{ms_t - [mg_t^2]
        + \epsilon}}, \qquad \theta_t = \theta_{t-1} - mom_t,

    with :math:`mg_t = \rho\,mg_{t-1} + (1 - \rho) g_t` when ``centered``.
    That is :func:`rmsprop` with ``initial_scale=1`` (the accumulator start
    is why TF1 models take small first steps). The one intended difference:
    the centered variance is clamped at zero.

    TF1 checks no values; it refuses what its ``ApplyRMSProp`` kernels cannot
    take: a ``learning_rate``, ``decay``, ``momentum`` or ``epsilon`` that is
    not a rank-0 tensor ("Shape must be rank 0"), or no number at all (a
    string or ``None`` fails to convert). This preset refuses the same when it
    is built (arrays and tracers by their shape). Deliberate differences,
    refused here but accepted by TF1: ``decay`` or ``momentum`` outside
    [0, 1], a negative ``epsilon``, NaN in any of these (for plain numbers
    and arrays whose value is known), and a non-bool ``centered``. TF1 lets
    every hyperparameter be a zero-argument callable; here only
    ``learning_rate`` may be a function, an optax schedule of the step count.

    Args:
        learning_rate: a number or an optax schedule of the step count.
        decay: discounting factor of the averages, in [0, 1].
        momentum: momentum factor in [0, 1]; 0 keeps no buffer.
        epsilon: added inside the root, at least 0.
        centered: normalise by the running standard deviation.
        nu_dtype: storage of the average: ``None`` (float32 for bf16/f16
            params), a floating dtype, ``jnp.bfloat16`` or ``"int8"`` (compact,
            see :func:`scale_by_rms`).

    Returns:
        An :class:`optax.GradientTransformationExtraArgs` (see :func:`rmsprop`).

    Raises:
        TypeError: a hyperparameter that is no real number or array (or, for
            ``learning_rate``, schedule): TF1 fails on a string or ``None``
            too, but casts a complex number to its real part; ``centered``
            not a bool.
        ValueError: as TF1, any of them an array that is not rank 0; unlike
            TF1, ``decay`` or ``momentum`` outside [0, 1], or a negative or NaN
            ``epsilon`` (or NaN ``decay`` or ``momentum``).

    Example:
        First step, g = 2, decay 0.9: ms = 0.9 * 1 + 0.1 * 4 = 1.3, so the
        parameter moves by -0.1 * 2 / sqrt(1.3) = -0.175412:

        >>> import jax.numpy as jnp
        >>> import optax_rmsprop
        >>> tx = optax_rmsprop.tf1_rmsprop(learning_rate=0.1)
        >>> updates, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
        >>> print(f"{updates[0]:.6f}")
        -0.175412
    """
    if not callable(learning_rate):
        learning_rate = _checks.preset_hyperparameter("learning_rate", learning_rate)
    decay = _checks.preset_hyperparameter("decay", decay, 0.0, 1.0)
    momentum = _checks.preset_hyperparameter("momentum", momentum, 0.0, 1.0)
    epsilon = _checks.preset_hyperparameter("epsilon", epsilon, 0.0)
    # TF1 starts the accumulator at 1.
    options = ScalerOptions(decay, epsilon, 1.0, centered=centered, nu_dtype=nu_dtype)
    return _alias.rmsprop_chain(
        _checks.check_scaler_flags(options),
        learning_rate=learning_rate,
        momentum=_alias.none_if_zero(momentum),
    )
