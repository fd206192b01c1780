"""``rmsprop``: the scaler, then decoupled weight decay, learning rate, momentum."""

from typing import Any
from typing import Callable

import jax
import optax

from optax_rmsprop import _checks
from optax_rmsprop import _core
from optax_rmsprop import _momentum
from optax_rmsprop import _nesterov
from optax_rmsprop import _options
from optax_rmsprop import _storage


def rmsprop(
    learning_rate: optax.ScalarOrSchedule,
    decay: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    initial_scale: jax.typing.ArrayLike = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: jax.typing.ArrayLike | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
    *,
    weight_decay: jax.typing.ArrayLike | None = None,
    weight_decay_mask: Any = None,
    nu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""The RMSprop optimizer: a drop-in for :func:`optax.rmsprop`.

    With :math:`u_t` the update of :func:`scale_by_rms` (or
    :func:`scale_by_stddev` when ``centered``), learning rate
    :math:`\eta_t`, ``weight_decay`` :math:`\lambda` and ``momentum``
    :math:`\beta`:

    .. math::

        d_t = -\eta_t\,(u_t + \lambda\,\theta_{t-1}), \qquad
        m_t = d_t + \beta\,m_{t-1}, \qquad
        \theta_t = \theta_{t-1} + \begin{cases}
            d_t & \text{no momentum} \\
            m_t & \text{heavy ball} \\
            d_t + \beta\,m_t & \text{nesterov.}
        \end{cases}

    The learning rate is applied before the momentum buffer (as in optax,
    Keras and TF1; PyTorch scales the buffer by the current learning rate
    instead, which differs under a schedule). Weight decay is decoupled, as
    in :func:`optax.adamw`: added to the normalised update, so it is not
    divided by the RMS.

    For optax's arguments the results equal ``optax.rmsprop``'s in float32
    and the state is the same pytree: ``(scaler state, learning-rate state,
    TraceState or EmptyState)``, with an ``optax.AddDecayedWeightsState``
    after the scaler's only when ``weight_decay`` is given (not ``None`` or a
    plain zero). See
    :func:`scale_by_rms` for the fixes (zero gradients with eps 0, centered
    variance clamped at zero, float32 averages for bf16 parameters) and for
    where eps goes in PyTorch (outside the root, eps 1e-8, decay 0.99),
    Keras 3 (inside, 1e-7, decay 0.9) and TF1 (inside, 1e-10, accumulator
    starting at 1); :func:`pytorch_rmsprop`, :func:`keras_rmsprop` and
    :func:`tf1_rmsprop` reproduce each exactly.

    Args:
        learning_rate: a number or an optax schedule of the step count.
        decay: the average's decay rate, in [0, 1].
        eps: added to the (root of the) average, at least 0.
        initial_scale: the average's starting value, at least 0.
        eps_in_sqrt: add eps inside the square root (True) or outside.
        centered: divide by the running standard deviation (Graves, 2013).
        momentum: ``None`` for none, else the momentum coefficient in [0, 1].
        nesterov: Nesterov momentum (only with ``momentum``).
        bias_correction: debias the zero-started averages.
        weight_decay: ``None`` (or 0) for none, else the decoupled weight
            decay :math:`\lambda`, at least 0. The default is ``None`` rather
            than 0.0 so that ``optax.inject_hyperparams(rmsprop)`` does not
            turn it into an array and add a decay step (that needs
            ``params``) to every injected chain.
        weight_decay_mask: a tree of booleans (or a function of the params
            returning one) choosing which parameters decay, as in
            :func:`optax.add_decayed_weights`.
        nu_dtype: the averages' storage, as in :func:`scale_by_rms`
            (``None``, a floating dtype, ``jnp.bfloat16`` or ``"int8"``). The
            momentum buffer is float32 for bf16/f16 parameters, else takes a
            plain floating ``nu_dtype`` or the parameter's dtype.

    Returns:
        An :class:`optax.GradientTransformationExtraArgs` built by one
        :func:`optax.chain` call.

    Raises:
        ValueError: for a plain-number ``decay`` or ``momentum`` outside
            [0, 1], a negative ``eps``, ``initial_scale`` or
            ``weight_decay``, or a non-floating ``nu_dtype``.

    Example:
        Minimise ``x**2`` from x = 1: the first step moves x by
        lr / sqrt(1 - decay) = 0.1 / sqrt(0.1) = 0.316228 (eps 0):

        >>> import jax, jax.numpy as jnp, optax
        >>> import optax_rmsprop
        >>> tx = optax_rmsprop.rmsprop(learning_rate=0.1, eps=0.0)
        >>> x = jnp.array(1.0)
        >>> state = tx.init(x)
        >>> updates, state = tx.update(jax.grad(lambda x: x**2)(x), state)
        >>> print(f"{optax.apply_updates(x, updates):.6f}")
        0.683772

    References:
        Hinton, Srivastava and Swersky, `Neural Networks for Machine Learning,
        lecture 6e <https://www.cs.toronto.edu/~tijmen/csc321/slides/lecture_slides_lec6.pdf>`_,
        2012.

        Graves, `Generating Sequences With Recurrent Neural Networks
        <https://arxiv.org/abs/1308.0850>`_, 2013.
    """
    _checks.check_learning_rate("learning_rate", learning_rate)
    options = _options.ScalerOptions(
        decay, eps, initial_scale, eps_in_sqrt, bias_correction, centered, nu_dtype
    )
    options = _checks.check_scaler_options(options)
    if momentum is not None:
        _checks.check_in_range("momentum", momentum, 0.0, 1.0)
    _checks.check_flag("nesterov", nesterov)
    if weight_decay is not None:
        _checks.check_non_negative("weight_decay", weight_decay)
    return rmsprop_chain(
        options,
        learning_rate=learning_rate,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
    )


def rmsprop_chain(
    options: _options.ScalerOptions,
    *,
    learning_rate: optax.ScalarOrSchedule,
    momentum: jax.typing.ArrayLike | None,
    nesterov: bool = False,
    weight_decay: jax.typing.ArrayLike | None = None,
    weight_decay_mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """:func:`rmsprop`'s chain from checked arguments (the Keras and TF1 presets).

    With Nesterov momentum the chain is computed in one transformation with
    the same state (see ``_nesterov``), which moves fewer bytes.
    """
    middle = (
        *_decoupled_weight_decay(weight_decay, weight_decay_mask),
        optax.scale_by_learning_rate(learning_rate),
    )
    if momentum is not None and nesterov:
        return _nesterov.nesterov_rmsprop(
            options,
            middle,
            momentum=momentum,
            accumulator_dtype=_accumulator_dtype(options.nu_dtype),
        )
    return optax.chain(
        _core.rms_scaler(options),
        *middle,
        _momentum_or_nothing(momentum, options.nu_dtype),
    )


def none_if_zero(momentum: jax.typing.ArrayLike) -> jax.typing.ArrayLike | None:
    """A plain zero momentum (the frameworks' default) keeps no buffer at all."""
    return None if _checks.is_plain_zero(momentum) else momentum


def _decoupled_weight_decay(
    weight_decay: jax.typing.ArrayLike | None, mask: Any
) -> tuple[optax.GradientTransformation, ...]:
    """No transform at all for None or a plain zero, so the state stays optax's."""
    if weight_decay is None or _checks.is_plain_zero(weight_decay):
        return ()
    # optax annotates a float or array; any ArrayLike works.
    decay = optax.add_decayed_weights(weight_decay, mask)  # type: ignore[arg-type]
    return (decay,)


def _momentum_or_nothing(
    momentum: jax.typing.ArrayLike | None, nu_dtype: Any
) -> optax.GradientTransformation:
    if momentum is None:
        return _momentum.no_momentum()
    return _momentum.momentum(
        decay=momentum, accumulator_dtype=_accumulator_dtype(nu_dtype)
    )


def _accumulator_dtype(nu_dtype: Any) -> Callable[[Any], Any]:
    """The momentum buffer's dtype: float32 for bf16/f16 params (see rmsprop)."""
    return lambda dtype: _storage.first_moment_dtype(dtype, nu_dtype)
