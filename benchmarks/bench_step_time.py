"""Step time of ``jit(update + apply_updates)`` against optax and PyTorch.

For each pytree shape (``_shapes``), every variant of ``optax_rmsprop.rmsprop``
(``_variants``), ``optax.rmsprop`` with the same arguments and
``torch.optim.RMSprop`` (foreach on and off, where PyTorch has the variant)
are timed interleaved in the same rounds. The JAX steps are compiled once with
params and state donated; each contender steps its own copy of the same
parameters with the same fixed gradients.

On the large leaf an XLA elementwise kernel, ``a + b`` into ``a``'s donated
buffer, is timed in the same rounds: its bytes (from XLA's cost analysis) per
second is the bandwidth a step can reach, and ``bytes accessed / bandwidth``
is each step's floor.

Contenders compared with each other run side by side in every round (our
compact storage next to our default), and each verdict is on the median of
the per-round (paired) ratios, with their interquartile range as the noise
(``_report.verdict_of``). Targets: ratio to ``optax.rmsprop`` <= 1.00, and
below 1 where we move fewer bytes (Nesterov, compact state); at least 3x
PyTorch's speed on the large shapes; on the large leaf, at most 1.10x the
floor. Against our own default (issue 13, ``_versus_default``): compact
storage <= 1.00 on every shape; on the large shapes, every other variant
<= 1.10 in time per byte, momentum <= 1.55 and Nesterov <= 2.0 in time.
"""

import gc
import sys
import time
from typing import NamedTuple

import jax

from benchmarks import _report
from benchmarks import _shapes
from benchmarks import _step_tables
from benchmarks import _steps
from benchmarks import _timing
from benchmarks import _torch
from benchmarks import _variants
from benchmarks import _versus_default

ROUNDS = 9
SAMPLE_SECONDS = 0.05  # Steps per sample are chosen to last about this long.
OURS, OPTAX, ADD = "optax_rmsprop", "optax", "xla a+b"
TORCH = {"torch foreach": True, "torch for-loop": False}
TORCH_SPEEDUP = 3.0
FLOOR_LIMIT = 1.10


class _Entry(NamedTuple):
    contender: _timing.Contender
    meta: dict


def run(smoke: bool, repeats: int | None = None) -> list[dict]:
    """The records; ``smoke``: tiny shapes, one round, XLA's fastest compile."""
    with _steps.fast_compile(smoke):
        return _run(smoke, repeats)


def _run(smoke, repeats) -> list[dict]:
    rounds = 1 if smoke else repeats or ROUNDS
    records = []
    for shape, leaves in _shapes.shape_sets(smoke).items():
        records += _bench_shape(shape, leaves, rounds, smoke)
        _progress(f"step_time: {shape} done ({records[-1]['timing_s']:.0f} s timing)")
        if not smoke:  # Free the last shape's gigabytes before the next one.
            gc.collect()
    return records


def _progress(message) -> None:
    print(message, file=sys.stderr, flush=True)


def _bench_shape(shape, leaves, rounds, smoke) -> list[dict]:
    start = time.perf_counter()
    variants = _variants.step_variants(smoke)
    params = _shapes.make_tree(leaves, seed=0, scale=0.05)
    grads = _shapes.make_tree(leaves, seed=1, scale=0.01)
    entries = _jax_entries(variants, params, grads)
    entries += _torch_entries(variants, params, grads)
    if shape == "large_leaf":
        entries.append(_add_entry(params["w"], grads["w"]))
    entries = _side_by_side(entries, variants)
    contenders = [e.contender for e in entries]
    _timing.warm_up(contenders)
    steps = 1 if smoke else _steps_per_sample(contenders)
    timing_start = time.perf_counter()
    samples = _timing.interleaved(contenders, rounds, steps)
    base = {"shape": shape, "leaves": len(leaves), "rounds": rounds}
    base |= {"parameters": _shapes.num_parameters(leaves), "steps_per_sample": steps}
    base |= {
        "setup_s": timing_start - start,
        "timing_s": time.perf_counter() - timing_start,
    }
    records = _records(shape, variants, entries, samples, base["parameters"])
    return [base | r for r in records]


def _records(shape, variants, entries, samples, parameters) -> list[dict]:
    """Each contender's times, then the ratios: vs optax, PyTorch, our default."""
    records = [e.meta | _timing.summary(samples[e.contender.name]) for e in entries]
    records += _comparisons(shape, variants, samples)
    traffic = {
        e.contender.name: e.meta["bytes_per_parameter"]
        for e in entries
        if "bytes_per_parameter" in e.meta
    }
    records += _versus_default.records(shape, variants, samples, traffic)
    return records + _floors(entries, samples, parameters)


def _steps_per_sample(contenders) -> int:
    """Steps that make our default's sample last about ``SAMPLE_SECONDS``."""
    default = next(c for c in contenders if c.name == f"{OURS}/default")
    return _timing.steps_per_sample(default, SAMPLE_SECONDS)


def _side_by_side(entries, variants) -> list[_Entry]:
    """Contenders compared in a ratio next to each other, so they run moments apart.

    Each variant's optax, ours, then PyTorch's; our compact storage (compared
    with optax's default and ours) right after our default, and the a + b
    kernel (compared with every JAX step) last in the default's group.
    """
    index = {v.name: i for i, v in enumerate(variants)}
    group = {v.name: 0 if _variants.is_compact(v) else index[v.name] for v in variants}
    libraries = [OPTAX, OURS, *TORCH, ADD]

    def key(entry):
        variant, library = entry.meta["variant"], entry.meta["library"]
        return group.get(variant, 0), libraries.index(library), index.get(variant, 0)

    return sorted(entries, key=key)


def _jax_entries(variants, params, grads) -> list[_Entry]:
    """Our variants, then optax's; compiled in parallel (nothing is timed yet)."""
    jobs = [(OURS, v.name, _variants.ours(v)) for v in variants]
    jobs += [
        (OPTAX, v.name, _variants.theirs(v))
        for v in variants
        if _variants.baseline(v, variants) == v.name
    ]
    return _steps.in_parallel(
        [lambda job=job: _jax_entry(*job, params, grads) for job in jobs]
    )


def _jax_entry(library, variant, tx, params, grads) -> _Entry:
    name = f"{library}/{variant}"
    contender, compiled = _steps.optimizer_contender(
        name, tx, params, grads, key=(library, variant)
    )
    size = sum(x.size for x in jax.tree.leaves(params))
    per_parameter = _steps.bytes_accessed(compiled) / size
    meta = {"kind": "step", "library": library, "variant": variant}
    return _Entry(contender, meta | {"bytes_per_parameter": per_parameter})


def _torch_entries(variants, params, grads) -> list[_Entry]:
    if not _torch.AVAILABLE:
        return []
    leaves, grad_leaves = jax.tree.leaves(params), jax.tree.leaves(grads)
    entries = []
    for v in (v for v in variants if v.torch_options is not None):
        for library, foreach in TORCH.items():
            kwargs = _variants.torch_kwargs(v)
            contender = _torch.rmsprop_contender(
                f"{library}/{v.name}", leaves, grad_leaves, foreach, kwargs
            )
            meta = {"kind": "step", "library": library, "variant": v.name}
            entries.append(_Entry(contender, meta | {"device": _torch.device()}))
    return entries


def _add_entry(a, b) -> _Entry:
    contender, compiled = _steps.add_contender(f"{ADD}/kernel", a, b)
    meta = {"kind": "step", "library": ADD, "variant": "kernel"}
    return _Entry(contender, meta | {"bytes_per_call": _steps.bytes_accessed(compiled)})


def _comparisons(shape, variants, samples) -> list[dict]:
    records = []
    for v in variants:
        ours = f"{OURS}/{v.name}"
        optax = f"{OPTAX}/{_variants.baseline(v, variants)}"
        records.append(_versus_optax(v, ours, optax, samples))
        for library in TORCH:
            if f"{library}/{v.name}" in samples:
                records.append(_versus_torch(shape, v, ours, library, samples))
    return records


def _versus_optax(variant, ours, optax, samples) -> dict:
    paired = _timing.paired_ratio(samples[ours], samples[optax])
    if variant.fewer_bytes:
        target, verdict = "< 1 (fewer bytes)", _report.verdict_of(paired, 1.0, "ahead")
    else:
        target, verdict = "<= 1.00", _report.verdict_of(paired, 1.0)
    record = {"kind": "comparison", "variant": variant.name, "numerator": ours}
    return (
        record | {"denominator": optax, "target": target, "verdict": verdict} | paired
    )


def _versus_torch(shape, variant, ours, library, samples) -> dict:
    theirs = f"{library}/{variant.name}"
    paired = _timing.paired_ratio(samples[theirs], samples[ours])  # The speed-up.
    target, verdict = "none (small leaves)", "-"
    if shape in _shapes.LARGE_SHAPES:
        target = f">= {TORCH_SPEEDUP:g}x"
        verdict = _report.verdict_of(paired, TORCH_SPEEDUP, "at_least")
    record = {"kind": "comparison", "variant": variant.name, "numerator": theirs}
    return record | {"denominator": ours, "target": target, "verdict": verdict} | paired


def _floors(entries, samples, parameters) -> list[dict]:
    """Each JAX step's time over its variant's floor, ``bytes / bandwidth``.

    The floor's bytes are the fewest any compiled step of the same algorithm
    moves (ours or optax's, from XLA's cost analysis): what the optax API
    forces on this backend, measured rather than assumed.
    """
    add = next((e for e in entries if e.meta["library"] == ADD), None)
    if add is None:
        return []
    add_samples = samples[add.contender.name]
    bandwidth = add.meta["bytes_per_call"] / _timing.summary(add_samples)["median_s"]
    records = [{"kind": "bandwidth", "bytes_per_second": bandwidth}]
    steps = [e for e in entries if "bytes_per_parameter" in e.meta]
    for e in steps:
        fewest = min(
            o.meta["bytes_per_parameter"]
            for o in steps
            if o.meta["variant"] == e.meta["variant"]
        )
        paired = _timing.paired_ratio(samples[e.contender.name], add_samples)
        # step / floor = step time / (floor bytes / (add bytes / add time)).
        scale = add.meta["bytes_per_call"] / (fewest * parameters)
        paired = {k: v * scale for k, v in paired.items()}
        records.append(_floor(e.meta, paired, fewest, fewest * parameters / bandwidth))
    return records


def _floor(meta, paired, floor_bytes_per_parameter, floor_seconds) -> dict:
    target, verdict = "reference", "-"
    if meta["library"] == OURS:
        target = f"<= {FLOOR_LIMIT:.2f}"
        verdict = _report.verdict_of(paired, FLOOR_LIMIT)
    record = {"kind": "floor", "library": meta["library"], "variant": meta["variant"]}
    record |= {"passes": meta["bytes_per_parameter"] / 4}
    record |= {"floor_passes": floor_bytes_per_parameter / 4, "floor_s": floor_seconds}
    return record | {"target": target, "verdict": verdict} | paired


def table(records: list[dict]) -> str:
    return _step_tables.table(records)
