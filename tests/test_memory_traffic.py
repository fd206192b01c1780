"""Bytes a compiled training step moves, read from XLA's cost analysis.

A step is ``jit(update + apply_updates)`` on one large float32 leaf of N
elements; ``passes = bytes accessed / (4 N)`` counts how many times each
parameter-sized array is read or written (the scalar count and learning rate
add a few bytes, removed by rounding).

XLA:CPU gives every output array its own loop fusion and does not recompute
an "expensive" op (sqrt, rsqrt, divide) for two consumers, so the floor for
each variant is one pass per array read or written by each fusion:

* default: nu fusion reads g, nu, writes nu (3); the parameter fusion reads
  g, nu, p and writes p (4): 7.
* centered: nu (3) + mu (3) + parameter fusion reading g, nu, mu, p (5): 11.
* momentum: nu (3) + trace fusion reading g, nu, trace (4) + parameter
  fusion reading trace, p (3): 10.
* Nesterov: optax re-reads the gradient and a materialised 1/rms for the
  update ``u + m t`` (14); written as ``(1 + m) t - m t_prev`` the parameter
  fusion reads the two traces and p (4): 3 + 4 + 4 = 11.
* centered momentum: 3 + 3 + 5 + 3 = 14; centered Nesterov 3 + 3 + 5 + 4 = 15.
"""

import jax
import jax.numpy as jnp
import optax
import pytest

import optax_rmsprop

_N = 1 << 18

# (options, floor we reach, optax 0.2.8's count), derived in the docstring.
_VARIANTS = [
    ({}, 7, 7),
    ({"eps_in_sqrt": False}, 7, 7),
    ({"bias_correction": True}, 7, 7),
    ({"initial_scale": 1.0}, 7, 7),
    ({"centered": True}, 11, 11),
    ({"momentum": 0.9}, 10, 10),
    ({"momentum": 0.9, "nesterov": True}, 11, 14),
    ({"centered": True, "momentum": 0.9}, 14, 14),
    ({"centered": True, "momentum": 0.9, "nesterov": True}, 15, 18),
]


def _passes_per_parameter(tx):
    params = jnp.ones((_N,), jnp.float32)
    grads = jnp.full((_N,), 0.1, jnp.float32)

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    compiled = jax.jit(step).lower(params, tx.init(params), grads).compile()
    return compiled.cost_analysis()["bytes accessed"] / (4 * _N)


@pytest.mark.parametrize("options, floor, optax_passes", _VARIANTS)
def test_step_moves_the_floor_of_bytes(options, floor, optax_passes):
    ours = _passes_per_parameter(optax_rmsprop.rmsprop(1e-3, **options))
    assert round(ours) == floor
    assert ours == pytest.approx(floor, abs=1e-3)


@pytest.mark.parametrize("options, floor, optax_passes", _VARIANTS)
def test_step_never_moves_more_bytes_than_optax(options, floor, optax_passes):
    ours = _passes_per_parameter(optax_rmsprop.rmsprop(1e-3, **options))
    theirs = _passes_per_parameter(optax.rmsprop(1e-3, **options))
    assert round(theirs) == optax_passes
    assert ours <= theirs
