"""Heavy-ball momentum with optax's ``TraceState``; and the empty momentum slot.

Same maths and state as ``optax.trace``: ``t = u + decay * t_prev``, and the
update is ``t``. Nesterov momentum needs the scaler's inputs to avoid
copying the trace, so ``rmsprop`` computes it in one transformation
(``_nesterov``).
"""

from typing import Callable

import jax
import optax

from optax_rmsprop import _checks
from optax_rmsprop import _tree_math as tm


def momentum(
    *, decay: jax.typing.ArrayLike, accumulator_dtype: Callable
) -> optax.GradientTransformation:
    """Heavy-ball momentum on the updates it is given (state ``optax.TraceState``).

    Args:
        decay: the momentum coefficient, checked by the caller under the
            name its user typed.
        accumulator_dtype: a ``param dtype -> buffer dtype`` function.
    """

    def init_fn(params):
        return optax.TraceState(trace=tm.full_like(params, 0, accumulator_dtype))

    def update_fn(updates, state, params=None):
        del params  # Unused.
        _checks.check_state_type(state, optax.TraceState, "momentum")
        trace = tm.accumulate(updates, state.trace, decay)
        return tm.cast_like(trace, updates), optax.TraceState(trace=trace)

    return optax.GradientTransformation(init_fn, update_fn)


def no_momentum() -> optax.GradientTransformation:
    """``optax.identity()`` that refuses a momentum buffer in its place.

    ``optax.identity`` ignores its state, so a state saved with momentum would
    be accepted and its buffer silently dropped.
    """

    def init_fn(params):
        del params  # Unused.
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params  # Unused.
        _checks.check_state_type(state, optax.EmptyState, "the momentum slot")
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)
