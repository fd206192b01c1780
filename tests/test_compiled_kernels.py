"""What XLA compiles for a step over many leaves: one kernel per leaf shape.

Compile time on a model of many small leaves is XLA's per-kernel work. XLA
compiles one kernel for every distinct fused computation, so leaves of one
shape must give identical ones: a per-leaf constant inside (bf16 storage
once mixed the leaf's index into its dither) made every leaf's kernel
distinct, and bf16 storage compiled in 6.8x float32 storage's time on 1024
leaves (`make bench`, compile section).
"""

import re

import jax
import jax.numpy as jnp
import optax
import pytest

import optax_rmsprop


def _distinct_kernels(tx, params):
    """Distinct fused computations of the donated, compiled step."""

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = jax.eval_shape(tx.init, params)
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params)
    text = compiled.compile().as_text()
    bodies = set()
    for block in re.split(r"\n(?=%fused_computation)", text)[1:]:
        body = block.split("\n", 1)[1].split("\n}", 1)[0]
        body = re.sub(r", metadata=\{[^}]*\}", "", body)  # Source lines.
        bodies.add(re.sub(r"%[\w.\-]+", "%", body))  # Instruction names.
    return len(bodies)


def _leaves(count, shape=(4096,)):
    return {f"w{i}": jax.ShapeDtypeStruct(shape, jnp.float32) for i in range(count)}


@pytest.mark.parametrize("nu_dtype", [None, jnp.bfloat16, "int8"])
@pytest.mark.parametrize("options", [{}, {"centered": True}])
def test_leaves_of_one_shape_share_their_kernels(nu_dtype, options):
    # Not one kernel set for any count of leaves: XLA orders the operands of
    # the first leaf's fusion apart from the rest's. But no more kernels
    # for 12 leaves than for 4.
    tx = optax_rmsprop.rmsprop(1e-3, nu_dtype=nu_dtype, **options)
    few = _distinct_kernels(tx, _leaves(4))
    assert few >= 2  # The average's and the parameter's, at least.
    assert _distinct_kernels(tx, _leaves(12)) == few
