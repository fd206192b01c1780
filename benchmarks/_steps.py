"""The jitted training step, its compiled costs, and JAX contenders."""

import concurrent.futures
import contextlib

import jax
import jax.numpy as jnp
import optax

from benchmarks import _machine
from benchmarks import _timing

# XLA's cheapest compilation, for smoke runs (whose timings mean nothing).
_FAST_COMPILE = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
}
_compiler_options: dict = {}  # The options ``jit`` passes to XLA now.
_COMPILED: dict = {}  # compile_step's executables, by optimizer, shapes, options.


@contextlib.contextmanager
def fast_compile(enabled: bool):
    """Within the block, ``jit`` compiles fast (and slow code) if ``enabled``."""
    saved = dict(_compiler_options)
    _compiler_options.clear()
    _compiler_options.update(_FAST_COMPILE if enabled else {})
    try:
        yield
    finally:
        _compiler_options.clear()
        _compiler_options.update(saved)


def jit(fun, **kwargs):
    """``jax.jit`` with the current compiler options."""
    return jax.jit(fun, compiler_options=dict(_compiler_options) or None, **kwargs)


def optimizer_step(tx: optax.GradientTransformation):
    """``(params, state, grads) -> (params, state)``: update + apply_updates."""

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def compile_step(tx, params, grads, key=None):
    """The donated step compiled for ``params``' shapes (arrays or abstract).

    With a ``key`` naming the optimizer (e.g. ``("optax", "nesterov")``), a
    step already compiled for the same key, shapes and compiler options is
    reused: the memory section analyses the steps the step-time section built.
    """
    if key is not None:
        shapes = tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(params))
        key = (key, shapes, tuple(sorted(_compiler_options.items())))
        if key in _COMPILED:
            return _COMPILED[key]
    state = jax.eval_shape(tx.init, params)
    step = jit(optimizer_step(tx), donate_argnums=(0, 1))
    compiled = step.lower(params, state, grads).compile()
    if key is not None:
        _COMPILED[key] = compiled
    return compiled


def bytes_accessed(compiled) -> float:
    """XLA's estimate of the bytes one call reads and writes."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["bytes accessed"])


def peak_bytes(compiled) -> float | None:
    """Arguments + outputs not aliased to (donated) arguments + temporaries."""
    memory = compiled.memory_analysis()
    if memory is None:
        return None
    outputs = memory.output_size_in_bytes - memory.alias_size_in_bytes
    return float(memory.argument_size_in_bytes + outputs + memory.temp_size_in_bytes)


def state_bytes(tx, params) -> int:
    state = jax.eval_shape(tx.init, params)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def optimizer_contender(name, tx, params, grads, key=None):
    """A contender stepping its own copy of ``params``; and its compiled step."""
    compiled = compile_step(tx, params, grads, key)
    box = copy_and_init(tx, params)

    def run(steps):
        params, state = box
        for _ in range(steps):
            params, state = compiled(params, state, grads)
        box[:] = jax.block_until_ready((params, state))

    return _timing.Contender(name, run), compiled


def add_contender(name, a, b):
    """``a + b`` written into ``a``'s donated buffer: a bandwidth probe."""
    compiled = jit(lambda a, b: a + b, donate_argnums=0).lower(a, b).compile()
    box = [_copy(a)]

    def run(steps):
        (a,) = box
        for _ in range(steps):
            a = compiled(a, b)
        box[0] = jax.block_until_ready(a)

    return _timing.Contender(name, run), compiled


def in_parallel(jobs: list) -> list:
    """The results of calling each of ``jobs``, on one thread per usable core.

    For building contenders: XLA compiles without holding the GIL.
    """
    workers = _machine.usable_cores()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda job: job(), jobs))


def copy_and_init(tx, params) -> list:
    """``[params, state]`` in fresh buffers (safe to donate).

    Compiled without constant folding: an int8 ``init`` reduces a constant
    array per block, which XLA would otherwise fold for tens of seconds.
    """
    options = dict(_compiler_options) | {"xla_disable_hlo_passes": "constant_folding"}
    init = jax.jit(lambda p: (_copy(p), tx.init(p)), compiler_options=options)
    return list(init(params))


@jax.jit
def _copy(tree):
    """Fresh buffers (safe to donate) holding ``tree``'s values."""
    return jax.tree.map(jnp.copy, tree)
