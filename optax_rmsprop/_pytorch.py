"""``pytorch_rmsprop``: ``torch.optim.RMSprop``'s update, names and defaults."""

import math
from typing import Any

import jax
import optax

from optax_rmsprop import _checks
from optax_rmsprop import _complex_pairs
from optax_rmsprop import _core
from optax_rmsprop import _momentum
from optax_rmsprop import _storage
from optax_rmsprop._options import ScalerOptions


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

    Arguments are checked as ``torch.optim.RMSprop`` checks them, when the
    transform is built: ``lr``, ``eps``, ``momentum``, ``weight_decay`` and
    ``alpha`` must be at least 0 (NaN fails, as PyTorch's ``0 <= x`` does) and
    be one number; an array must hold one element and is squeezed to a scalar,
    as PyTorch squeezes a one-element ``lr`` tensor. Tracers (``jit``,
    ``vmap``, ``optax.inject_hyperparams``) have their shape checked but not
    their value. Deliberate differences: ``alpha`` and ``momentum`` above 1
    are refused (PyTorch accepts them; the average of squares turns negative,
    the buffer grows without bound), ``centered`` and ``maximize`` must be
    bools (PyTorch takes any truthy value), and ``lr`` may be an optax
    schedule (PyTorch's schedulers live outside the optimizer).

    Args:
        lr: learning rate, a number (at least 0) or an optax schedule of the
            step count (the value PyTorch's scheduler would set for step t).
        alpha: smoothing constant of the average, in [0, 1].
        eps: added to the root of the average, at least 0.
        weight_decay: coupled L2 penalty, at least 0.
        momentum: momentum factor in [0, 1]; 0 keeps no buffer.
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
        TypeError: a hyperparameter that is no real number or array (or, for
            ``lr``, schedule), such as a string or ``None``, as in PyTorch;
            ``centered`` or ``maximize`` not a bool.
        ValueError: as in PyTorch, a negative or NaN ``lr``, ``eps``,
            ``momentum``, ``weight_decay`` or ``alpha``, or an array of more
            (or fewer) than one element; unlike PyTorch, ``alpha`` or
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
    if not callable(lr):
        lr = _checked("lr", lr, math.inf)
    eps = _checked("eps", eps, math.inf)
    momentum = _checked("momentum", momentum, 1.0)  # PyTorch also takes > 1.
    weight_decay = _checked("weight_decay", weight_decay, math.inf)
    alpha = _checked("alpha", alpha, 1.0)  # PyTorch also takes > 1.
    _checks.check_flag("maximize", maximize)
    options = ScalerOptions(alpha, eps, eps_in_sqrt=False, centered=centered)
    scaler = _core.rms_scaler(
        _checks.check_scaler_flags(options._replace(nu_dtype=nu_dtype))
    )
    return _complex_pairs.complex_as_real_pairs(
        optax.chain(
            optax.scale(-1.0) if maximize else optax.identity(),
            *_coupled_weight_decay(weight_decay),
            scaler,
            *_buffer_before_learning_rate(momentum),
            # A schedule even for a constant, so the state counts steps like
            # PyTorch's ``step``.
            optax.scale_by_learning_rate(
                lr if callable(lr) else optax.constant_schedule(lr)
            ),
        )
    )


def _checked(name: str, value: Any, high: float) -> Any:
    """PyTorch's check, ``0 <= value`` (so not NaN), for a number or known array.

    Like PyTorch, an array must hold one element and is squeezed to a scalar
    (``Tensor lr must be 1-element``; PyTorch cannot compare a larger tensor
    with 0 either). Tracers pass with their shape checked, their value not.
    """
    return _checks.preset_hyperparameter(name, value, 0.0, high, one_element=True)


def _coupled_weight_decay(
    weight_decay: jax.typing.ArrayLike,
) -> tuple[optax.GradientTransformation, ...]:
    if _checks.is_plain_zero(weight_decay):
        return ()
    # optax annotates a float or array; any ArrayLike works.
    return (optax.add_decayed_weights(weight_decay),)  # type: ignore[arg-type]


def _buffer_before_learning_rate(
    momentum: jax.typing.ArrayLike,
) -> tuple[optax.GradientTransformation, ...]:
    """PyTorch keeps the buffer of unscaled steps: ``p -= lr * buf``."""
    if _checks.is_plain_zero(momentum):
        return ()
    return (
        _momentum.momentum(
            decay=momentum,
            accumulator_dtype=lambda dtype: _storage.first_moment_dtype(dtype, None),
        ),
    )
