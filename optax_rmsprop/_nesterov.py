"""RMSprop with Nesterov momentum as one transformation, with the chain's state.

The chain ``scaler -> [weight decay] -> learning rate -> trace`` gives the
Nesterov update ``u + m t`` with ``t = u + m t_prev``: ``u`` (which holds an
``rsqrt``) has two consumers, the new trace and the update. XLA computes an
"expensive" op once, so it either writes ``u`` out and reads it back (optax:
14 float32 passes per parameter) or, written as ``(1 + m) t - m t_prev``,
reads the old trace after the new one overwrote it in place, which costs a
copy of the donated trace every step (13 passes and a fresh buffer).

Here the update is built twice from the same inputs, once for the trace and
once for the parameters, the second behind ``jax.lax.optimization_barrier``
so XLA cannot merge the two: each fusion computes its own ``rsqrt`` from the
gradient and the just-written average, and nothing is copied (12 passes).
``init`` is the chain's ``init``, so the state is the pytree ``optax.rmsprop``
keeps and checkpoints move between the two.
"""

from typing import Callable

import jax
import optax

from optax_rmsprop import _checks
from optax_rmsprop import _core
from optax_rmsprop import _momentum
from optax_rmsprop import _tree_math as tm
from optax_rmsprop._options import ScalerOptions


def nesterov_rmsprop(
    options: ScalerOptions,
    middle: tuple[optax.GradientTransformation, ...],
    *,
    momentum: jax.typing.ArrayLike,
    accumulator_dtype: Callable,
) -> optax.GradientTransformationExtraArgs:
    """``chain(scaler, *middle, trace(momentum, nesterov=True))``, fused.

    Args:
        options: the scaler's checked options.
        middle: the transforms between the scaler and the momentum (weight
            decay, learning rate); their updates stay elementwise.
        momentum: the momentum coefficient, checked by the caller.
        accumulator_dtype: a ``param dtype -> trace dtype`` function.
    """
    parts = _core.scaler_parts(options)
    heavy_ball = _momentum.momentum(decay=momentum, accumulator_dtype=accumulator_dtype)
    chain = optax.chain(_core.rms_scaler(options), *middle, heavy_ball)

    def step(g, scaler_state, middle_states, params):
        """The update entering the momentum, and the middle's new states."""
        updates = parts.scale(g, scaler_state)
        new_states = []
        for tx, state in zip(middle, middle_states, strict=True):
            updates, state = tx.update(updates, state, params)
            new_states.append(state)
        return updates, tuple(new_states)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args  # Unused, as by the chain's transforms.
        scaler_state, *middle_states, trace_state = state
        parts.check(updates, scaler_state)
        _checks.check_state_type(trace_state, optax.TraceState, "momentum")
        g = tm.map_leaves(jax.numpy.asarray, updates)  # Python float leaves too.
        scaler_state = parts.advance(g, scaler_state)
        u, new_middle_states = step(g, scaler_state, middle_states, params)
        trace = tm.accumulate(u, trace_state.trace, momentum)
        g, again, params = jax.lax.optimization_barrier((g, scaler_state, params))
        u_again, _ = step(g, again, middle_states, params)
        nesterov = tm.add_scaled(u_again, trace, momentum)
        new_state = (scaler_state, *new_middle_states, optax.TraceState(trace=trace))
        return nesterov, new_state

    return optax.GradientTransformationExtraArgs(chain.init, update_fn)
