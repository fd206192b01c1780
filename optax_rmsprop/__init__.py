"""optax_rmsprop: a drop-in, numerically robust RMSprop for Optax."""

from optax_rmsprop._alias import rmsprop
from optax_rmsprop._core import CompactRmsState
from optax_rmsprop._core import CompactRStdDevState
from optax_rmsprop._diagnostics import effective_learning_rate
from optax_rmsprop._diagnostics import rms_summary
from optax_rmsprop._keras import keras_rmsprop
from optax_rmsprop._pytorch import pytorch_rmsprop
from optax_rmsprop._rms import scale_by_rms
from optax_rmsprop._stddev import scale_by_stddev
from optax_rmsprop._storage import Int8Blocks
from optax_rmsprop._tf1 import tf1_rmsprop
from optax_rmsprop._torch_checkpoint import from_torch_state_dict
from optax_rmsprop._torch_checkpoint import to_torch_state_dict

__version__ = "0.1.0"

__all__ = (
    "CompactRStdDevState",
    "CompactRmsState",
    "Int8Blocks",
    "effective_learning_rate",
    "from_torch_state_dict",
    "keras_rmsprop",
    "pytorch_rmsprop",
    "rms_summary",
    "rmsprop",
    "scale_by_rms",
    "scale_by_stddev",
    "tf1_rmsprop",
    "to_torch_state_dict",
)
