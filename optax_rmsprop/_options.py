"""``ScalerOptions``: the settings of one RMS scaler, passed as one value.

Every factory (``scale_by_rms``, ``scale_by_stddev``, ``rmsprop`` and the
presets) gathers its scaler's settings here once, checks them, and hands
them to ``_core.rms_scaler``: the seven settings are written out once, not
at every hop.
"""

from typing import Any
from typing import NamedTuple

import jax


class ScalerOptions(NamedTuple):
    """The settings of :func:`optax_rmsprop.scale_by_rms` (defaults: optax's).

    Attributes:
        decay: the averages' decay rate.
        eps: added to the (root of the) average.
        initial_scale: the average of squares' starting value.
        eps_in_sqrt: eps inside the square root (True) or outside.
        bias_correction: debias the averages by ``1 - decay**t``.
        centered: divide by the running standard deviation.
        nu_dtype: the averages' storage: ``None``, a floating dtype,
            ``jnp.bfloat16`` or ``"int8"`` (canonical once checked).
    """

    decay: jax.typing.ArrayLike = 0.9
    eps: jax.typing.ArrayLike = 1e-8
    initial_scale: jax.typing.ArrayLike = 0.0
    eps_in_sqrt: bool = True
    bias_correction: bool = False
    centered: bool = False
    nu_dtype: Any = None
