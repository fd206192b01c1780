"""``scale_by_rms``: divide each gradient by the root of its running mean square."""

from typing import Any

import jax
import optax

from optax_rmsprop import _checks
from optax_rmsprop import _core
from optax_rmsprop import _options


def scale_by_rms(
    decay: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    initial_scale: jax.typing.ArrayLike = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    *,
    centered: bool = False,
    nu_dtype: Any = None,
) -> optax.GradientTransformation:
    r"""Rescales updates by the root of an exponential moving average of squares.

    With gradient :math:`g_t`, ``decay`` :math:`\rho`, ``eps`` :math:`\epsilon`
    and ``initial_scale`` :math:`\nu_0`:

    .. math::

        \nu_t = \rho\,\nu_{t-1} + (1 - \rho)\,|g_t|^2, \qquad
        \hat\nu_t = \begin{cases}
            \nu_t / (1 - \rho^t) & \text{if bias\_correction} \\
            \nu_t & \text{otherwise}
        \end{cases}

    .. math::

        u_t = \frac{g_t}{\sqrt{\hat\nu_t + \epsilon}} \text{ (eps\_in\_sqrt)}
        \quad\text{or}\quad
        u_t = \frac{g_t}{\sqrt{\hat\nu_t} + \epsilon}.

    A drop-in for :func:`optax.scale_by_rms`: same arguments, defaults, state
    and float32 results, with three fixes: a zero gradient gives a zero update
    even when the denominator is zero (optax gives ``0 * inf = NaN`` with
    ``eps=0``); bf16/f16 parameters keep a float32 average (optax's bf16
    average freezes when ``decay`` is near 1); complex parameters keep a real
    average of :math:`|g|^2`.

    Where eps goes: PyTorch adds it outside the root (``eps_in_sqrt=False``,
    eps 1e-8); Keras 3 (1e-7), TF1 (1e-10) and optax's default (1e-8) add it
    inside. Inside the root it bounds the step by
    :math:`|g|/\sqrt{\epsilon}`; outside by :math:`|g|/\epsilon`.

    Args:
        decay: :math:`\rho`, the weight of the past in the average, in [0, 1].
        eps: :math:`\epsilon \ge 0`, keeps the denominator away from zero.
        initial_scale: :math:`\nu_0 \ge 0`, the average's starting value
            (TF1 starts at 1, PyTorch, Keras and optax at 0).
        eps_in_sqrt: add eps inside the square root (optax, Keras, TF1) or
            outside it (PyTorch).
        bias_correction: divide the average by :math:`1 - \rho^t`, undoing the
            pull of a zero start (meant for ``initial_scale=0``).
        centered: divide by the running standard deviation instead of the
            root mean square; the same as :func:`scale_by_stddev`.
        nu_dtype: how the average is stored. ``None`` keeps the parameter's
            precision, but float32 for bf16/f16 parameters and the real dtype
            for complex ones; another floating dtype computes and stores in
            it. Two compact storages compute in float32 and store apart (see
            ``optax_rmsprop._storage``): ``jnp.bfloat16`` (half the memory,
            stochastic rounding so the average never freezes) and ``"int8"``
            (a quarter: one byte per element plus a float32 scale per block of
            256; leaves under 4096 elements stay float32; above decay 0.95 it
            warns, as its rounding errors then add up). The step uses the
            average as stored, floored at ``(1 - decay) g**2``.

    Returns:
        An :class:`optax.GradientTransformation` whose state is optax's
        ``ScaleByRmsState(nu)``, or ``ScaleByRmsWithCountState(count, nu)``
        with ``bias_correction``, or ``CompactRmsState(count, nu)`` with a
        compact ``nu_dtype`` (``count`` an int32 scalar, ``nu`` shaped like
        the parameters); the centered states are described in
        :func:`scale_by_stddev`. Each update leaf has its gradient's dtype.

    Raises:
        ValueError: ``decay`` outside [0, 1], a negative ``eps`` or
            ``initial_scale`` (plain numbers; arrays pass unchecked), or a
            ``nu_dtype`` that is not a floating dtype or ``"int8"``.

    Example:
        A first step with g = 2, decay 0.9 and eps 0 stores
        nu = 0.1 * 2**2 = 0.4 and returns 2 / sqrt(0.4) = sqrt(10):

        >>> import jax.numpy as jnp
        >>> import optax_rmsprop
        >>> tx = optax_rmsprop.scale_by_rms(decay=0.9, eps=0.0)
        >>> state = tx.init(jnp.zeros(1))
        >>> updates, state = tx.update(jnp.array([2.0]), state)
        >>> print(f"{updates[0]:.5f} {state.nu[0]:.5f}")
        3.16228 0.40000

    References:
        Hinton, Srivastava and Swersky, `Neural Networks for Machine Learning,
        lecture 6e <https://www.cs.toronto.edu/~tijmen/csc321/slides/lecture_slides_lec6.pdf>`_,
        2012.
    """
    options = _options.ScalerOptions(
        decay, eps, initial_scale, eps_in_sqrt, bias_correction, centered, nu_dtype
    )
    return _core.rms_scaler(_checks.check_scaler_options(options))
