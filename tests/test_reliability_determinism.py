"""Determinism: the same bits from a transform compiled afresh, in this
process and in a new one, and jit against eager to a few ulps.

``docs/RELIABILITY.md`` promises the same bits "on every run and in a new
process": XLA:CPU compiles deterministically and compact storage draws its
random bits from a hash of the element's index and the step count, never from
a generator's state. (Runs in one process repeat bit for bit: every
checkpoint test compares a resumed run with an earlier one.)

Across processes, one short training script runs in two fresh interpreters
(one simulating 1 CPU device, one 8, as the documentation's check by hand did)
and in this process; the SHA-256 of the raw bytes of every update, state and
parameter leaf after every step must agree. Bits are compared only between
runs on this machine, never with stored digests (XLA's float32 arithmetic
differs between CPU generations).
"""

import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import GRADS
from helpers import PARAMS
from helpers import RICHEST_VARIANT
from helpers import SCHEDULED_VARIANT
from helpers import STORAGE_OPTIONS
from helpers import assert_bit_identical
from helpers import banked
from helpers import make
from helpers import rmsprop_variant
from helpers import run_steps
from helpers import storage_id
from helpers import storage_options
from helpers import uninterrupted


@storage_options()
def test_transform_built_and_compiled_afresh_reproduces_the_bits(nu_dtype):
    # Traced and compiled again (alone, not in the bank), bit for bit, stochastic
    # rounding included: its random bits are a hash of the element's index and
    # the step count, not a generator's state. (A new process gives the same
    # bits too: XLA:CPU compiles deterministically; see docs/RELIABILITY.md.)
    _, expected = uninterrupted(RICHEST_VARIANT, nu_dtype)
    tx = _fresh_richest()[storage_id(nu_dtype)]
    assert_bit_identical(run_steps(tx, PARAMS, tx.init(PARAMS), GRADS), expected)


@functools.cache
def _fresh_richest():
    transforms = {
        storage_id(s): rmsprop_variant(RICHEST_VARIANT, s) for s in STORAGE_OPTIONS
    }
    return banked(transforms, PARAMS)


# jit and eager run different arithmetic (XLA fuses, reorders and may contract
# a multiply and an add), so updates and states differ by float32 rounding, a
# few ulps (parameters, their running sums, drift apart by as much per step).
# For bf16 params XLA may also skip a rounding to bf16 inside the step (it
# allows excess precision), so their float32 momentum differs by bf16 ulps. The
# centered, debiased first step is left out: its variance is exactly zero, so
# both give rounding noise over eps. Compact storage rounds stochastically, and
# a value that differs by an ulp may round the other way: a bf16 ulp or an int8
# code.
@pytest.mark.parametrize("variant", ["default", SCHEDULED_VARIANT])
def test_jit_and_eager_updates_and_states_agree_to_a_few_ulps(variant):
    _, compiled = uninterrupted(variant, None)
    tx = make(variant)
    eager = run_steps(tx, PARAMS, tx.init(PARAMS), GRADS)
    compiled_leaves = jax.tree_util.tree_leaves_with_path([h[:2] for h in compiled])
    eager_leaves = jax.tree.leaves([h[:2] for h in eager])
    for (path, x), y in zip(compiled_leaves, eager_leaves):
        bf16 = "embed" in jax.tree_util.keystr(path)
        rtol = 4 * 2.0**-7 if bf16 else 16 * 2.0**-23
        x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
        np.testing.assert_allclose(x64, y64, rtol=rtol, atol=1e-7, err_msg=str(path))


# --------------------------------------------------------------------------
# A new process reproduces the bits of this one.

# Runs as ``python -c`` in a fresh interpreter, and is exec'd here. It prints a
# JSON dict: (transform, storage) -> one digest per step of the whole
# (updates, state, params) history.
_SCRIPT = r'''
import hashlib
import json
import sys

import jax

if __name__ == "__main__":
    jax.config.update("jax_num_cpu_devices", int(sys.argv[1]))

import jax.numpy as jnp
import numpy as np
import optax

import optax_rmsprop


def _digest(tree):
    """SHA-256 over every leaf's dtype, shape and raw bytes, in tree order."""
    sha = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(tree)):
        leaf = np.asarray(leaf)
        sha.update(f"{leaf.dtype.str}{leaf.shape}".encode())
        sha.update(np.ascontiguousarray(leaf).tobytes())
    return sha.hexdigest()


def digests(steps=3):
    rng = np.random.default_rng(0)
    params = {
        "w": jnp.asarray(rng.standard_normal((64, 64)), jnp.float32),  # int8 blocks.
        "b": jnp.asarray(rng.standard_normal(5), jnp.bfloat16),
    }
    grads = [
        jax.tree.map(lambda p: jnp.asarray(
            10.0 ** (k - 1) * rng.standard_normal(p.shape), p.dtype), params)
        for k in range(steps)
    ]
    schedule = optax.cosine_decay_schedule(0.1, decay_steps=4, alpha=0.1)
    richest = dict(centered=True, bias_correction=True, momentum=0.9,
                   nesterov=True, eps_in_sqrt=False, weight_decay=1e-2)
    transforms = {
        f"rmsprop-{storage}": optax_rmsprop.rmsprop(
            schedule, **richest, nu_dtype=nu_dtype)
        for storage, nu_dtype in [("default", None), ("float32", jnp.float32),
                                  ("bfloat16", jnp.bfloat16), ("int8", "int8")]
    }
    transforms["pytorch"] = optax_rmsprop.pytorch_rmsprop(
        lr=0.01, momentum=0.9, weight_decay=1e-2, centered=True)
    def run(grads):  # Every transform, every step: one compilation.
        result = {}
        for name, tx in transforms.items():
            p, state, history = params, tx.init(params), []
            for g in grads:
                updates, state = tx.update(g, state, p)
                p = optax.apply_updates(p, updates)
                history.append((updates, state, p))
            result[name] = history
        return result

    histories = jax.jit(run)(grads)
    return {name: [_digest(step) for step in h] for name, h in histories.items()}


if __name__ == "__main__":
    print(json.dumps(digests()))
'''


def _in_fresh_process(devices):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    completed = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(devices)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def in_this_process():
    namespace = {"__name__": "determinism_script"}
    exec(compile(_SCRIPT, "determinism_script", "exec"), namespace)  # noqa: S102
    return namespace["digests"]()


@pytest.mark.parametrize("devices", [1, 8])
def test_new_process_reproduces_the_bits_of_this_one(devices, in_this_process):
    # Five transforms (four storage options, a preset), three steps each.
    assert len(in_this_process) == 5
    assert all(len(set(h)) == 3 for h in in_this_process.values())  # Steps differ.
    assert _in_fresh_process(devices) == in_this_process
