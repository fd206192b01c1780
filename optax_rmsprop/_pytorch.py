"""``pytorch_rmsprop``: ``torch.optim.RMSprop``'s update, names and defaults."""

from typing import Any

import jax
import optax

from optax_rmsprop import _checks
from optax_rmsprop import _complex_pairs
from optax_rmsprop import _momentum
from optax_rmsprop import _rms
from optax_rmsprop import _tree_math as tm


def pytorch_rmsprop(
    lr: optax.ScalarOrSchedule = 0.01,
    alpha: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0.0,
    momentum: jax.typing.ArrayLike = 0.0,
    centered: bool = False,
    maximize: bool = False,
    *,
    nu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""RMSprop exactly as ``torch.optim.RMSprop`` computes it.

    With PyTorch's names (``alpha`` the decay, :math:`\lambda` the weight
    decay, :math:`\beta` the momentum):

    .. math::

        g_t \leftarrow \pm g_t + \lambda\,\theta_{t-1}, \qquad
        v_t = \alpha\,v_{t-1} + (1 - \alpha)\,g_t^2, \qquad
        u_t = \frac{g_t}{\sqrt{v_t - [\bar g_t^2]} + \epsilon},

    .. math::

        b_t = \beta\,b_{t-1} + u_t, \qquad
        \theta_t = \theta_{t-1} - \eta_t\,b_t \;(\text{or } - \eta_t\,u_t
        \text{ when } \beta = 0),

    with :math:`\bar g_t = \alpha\,\bar g_{t-1} + (1 - \alpha) g_t` when
    ``centered``. Differences from optax's default that this preset keeps:
    eps outside the root, decay 0.99, weight decay *coupled* (added to the
    gradient, so it is divided by the RMS), and the learning rate multiplying
    the whole momentum buffer, so a schedule changes past momentum too.
    Complex parameters are updated as two independent reals (PyTorch's
    ``view_as_real``).

    The one intended difference: the centered variance is clamped at zero,
    where PyTorch returns NaN once rounding makes it negative.

    Args:
        lr: learning rate, a number (at least 0) or an optax schedule of the
            step count (the value PyTorch's scheduler would set for step t).
        alpha: smoothing constant of the average, in [0, 1] (PyTorch refuses
            negatives; values above 1 make the average negative).
        eps: added to the root of the average, at least 0.
        weight_decay: coupled L2 penalty, at least 0.
        momentum: momentum factor in [0, 1]; 0 keeps no buffer (PyTorch accepts
            values above 1, with which the buffer grows without bound).
        centered: normalise by the running standard deviation.
        maximize: maximise the objective (negate the gradient).
        nu_dtype: storage of the average: ``None`` (float32 for bf16/f16
            params), a floating dtype, ``jnp.bfloat16`` or ``"int8"`` (compact,
            see :func:`scale_by_rms`).

    Returns:
        An :class:`optax.GradientTransformationExtraArgs`; its state holds
        ``nu`` (PyTorch's ``square_avg``), ``mu`` (``grad_avg``, centered),
        ``trace`` (``momentum_buffer``) and ``count`` (``step``), found by
        ``optax.tree.get`` and converted by :func:`to_torch_state_dict`.

    Raises:
        ValueError: the conditions PyTorch refuses (negative ``lr``, ``eps``,
            ``momentum``, ``weight_decay`` or ``alpha``), and ``alpha`` or
            ``momentum`` above 1.

    Example:
        First step, g = 2, alpha 0.75, eps 0: v = 0.25 * 2**2 = 1 and the
        parameter moves by -lr * 2 / sqrt(1) = -1 for lr = 0.5:

        >>> import jax.numpy as jnp
        >>> import optax_rmsprop
        >>> tx = optax_rmsprop.pytorch_rmsprop(lr=0.5, alpha=0.75, eps=0.0)
        >>> updates, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
        >>> print(updates)
        [-1.]
    """
    if not callable(lr):  # The range check refuses non-numbers too.
        _checks.check_non_negative("lr", lr)  # torch.optim refuses lr < 0.
    _checks.check_flag("maximize", maximize)
    _checks.check_non_negative("eps", eps)
    _checks.check_non_negative("momentum", momentum)
    _checks.check_non_negative("weight_decay", weight_decay)
    _checks.check_in_range("alpha", alpha, 0.0, 1.0)
    return _complex_pairs.complex_as_real_pairs(
        optax.chain(
            optax.scale(-1.0) if maximize else optax.identity(),
            *_coupled_weight_decay(weight_decay),
            _rms.scale_by_rms(
                alpha, eps, 0.0, eps_in_sqrt=False, centered=centered, nu_dtype=nu_dtype
            ),
            *_buffer_before_learning_rate(momentum),
            optax.scale_by_learning_rate(_as_schedule(lr)),
        )
    )


def _coupled_weight_decay(weight_decay) -> tuple:
    if _checks.is_plain_zero(weight_decay):
        return ()
    return (optax.add_decayed_weights(weight_decay),)


def _buffer_before_learning_rate(momentum) -> tuple:
    """PyTorch keeps the buffer of unscaled steps: ``p -= lr * buf``."""
    if _checks.is_plain_zero(momentum):
        return ()
    dtype_of = lambda param_dtype: tm.first_moment_dtype(param_dtype, None)
    return (_momentum.momentum(momentum, False, dtype_of),)


def _as_schedule(lr):
    """A constant as a schedule, so the state counts steps like PyTorch's ``step``."""
    if callable(lr):
        return lr
    return lambda count: lr
