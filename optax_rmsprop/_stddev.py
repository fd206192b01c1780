"""``scale_by_stddev``: the centered RMSprop scaler (Graves, 2013)."""

from typing import Any

import jax
import optax

from optax_rmsprop import _checks
from optax_rmsprop import _core
from optax_rmsprop import _options


def scale_by_stddev(
    decay: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    initial_scale: jax.typing.ArrayLike = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    *,
    nu_dtype: Any = None,
) -> optax.GradientTransformation:
    r"""Rescales updates by a running standard deviation of the gradients.

    Keeps running averages of the gradient and of its square,

    .. math::

        \mu_t = \rho\,\mu_{t-1} + (1 - \rho)\,g_t, \qquad
        \nu_t = \rho\,\nu_{t-1} + (1 - \rho)\,|g_t|^2,

    debiases both by :math:`1 - \rho^t` with ``bias_correction``, and divides
    by the root of the variance :math:`\sigma^2_t = \max(\hat\nu_t -
    |\hat\mu_t|^2, 0)`:

    .. math::

        u_t = \frac{g_t}{\sqrt{\sigma^2_t + \epsilon}} \text{ (eps\_in\_sqrt)}
        \quad\text{or}\quad
        u_t = \frac{g_t}{\sqrt{\sigma^2_t} + \epsilon}.

    A drop-in for :func:`optax.scale_by_stddev`. The clamp at zero is the fix:
    rounding can make :math:`\hat\nu - \hat\mu^2` slightly negative when the
    gradient barely changes (optax 0.2.8 returns NaN after ~130 steps of a
    constant gradient of a few hundred, and can on a bias-corrected first step,
    where the variance is exactly zero). Note that a zero variance makes the
    step :math:`g/\sqrt{\epsilon}`: keep ``eps`` meaningful when centering.

    Args:
        decay: :math:`\rho`, the weight of the past in both averages, in [0, 1].
        eps: :math:`\epsilon \ge 0`, keeps the denominator away from zero.
        initial_scale: :math:`\nu_0 \ge 0`, the starting mean square
            (:math:`\mu_0 = 0`).
        eps_in_sqrt: add eps inside the square root (optax, Keras, TF1) or
            outside it (PyTorch).
        bias_correction: divide both averages by :math:`1 - \rho^t`.
        nu_dtype: how both averages are stored, as in :func:`scale_by_rms`;
            with compact storage the mean is kept in bf16 (stochastically
            rounded). The mean of complex gradients is complex, their mean
            square real.

    Returns:
        An :class:`optax.GradientTransformation` whose state is optax's
        ``ScaleByRStdDevState(mu, nu)``, or
        ``ScaleByRStdDevWithCountState(count, mu, nu)`` with
        ``bias_correction``, or ``CompactRStdDevState(count, mu, nu)`` with a
        compact ``nu_dtype``.

    Raises:
        ValueError: ``decay`` outside [0, 1], a negative ``eps`` or
            ``initial_scale``, or a ``nu_dtype`` that is not floating.

    Example:
        A first step with g = 2, decay 0.5 and eps 1 (outside the root):
        mu = 0.5 * 2 = 1 and nu = 0.5 * 4 = 2, so the variance is 2 - 1**2 = 1
        and the update is 2 / (sqrt(1) + 1) = 1:

        >>> import jax.numpy as jnp
        >>> import optax_rmsprop
        >>> tx = optax_rmsprop.scale_by_stddev(0.5, eps=1.0, eps_in_sqrt=False)
        >>> updates, state = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
        >>> print(updates, state.mu, state.nu)
        [1.] [1.] [2.]

    References:
        Graves, `Generating Sequences With Recurrent Neural Networks
        <https://arxiv.org/abs/1308.0850>`_, 2013, eqs. 38-41.

        Hinton, Srivastava and Swersky, `Neural Networks for Machine Learning,
        lecture 6e <https://www.cs.toronto.edu/~tijmen/csc321/slides/lecture_slides_lec6.pdf>`_,
        2012.
    """
    centered = True  # What makes this scaler scale_by_stddev.
    options = _options.ScalerOptions(
        decay, eps, initial_scale, eps_in_sqrt, bias_correction, centered, nu_dtype
    )
    return _core.rms_scaler(_checks.check_scaler_options(options))
