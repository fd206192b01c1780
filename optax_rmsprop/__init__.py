"""optax_rmsprop: a drop-in, numerically robust RMSprop for Optax."""

from optax_rmsprop._alias import rmsprop
from optax_rmsprop._rms import scale_by_rms
from optax_rmsprop._stddev import scale_by_stddev

__version__ = "0.1.0"

__all__ = ("rmsprop", "scale_by_rms", "scale_by_stddev")
