"""Memory traffic and footprint of the compiled step, from XLA's own analyses.

For every variant of ``optax_rmsprop.rmsprop`` and the ``optax.rmsprop`` it is
compared with, ``jit(update + apply_updates)`` (params and state donated) is
compiled for abstract parameters -- nothing is allocated; the steps the
step-time section compiled are reused -- and read out:

* bytes accessed per parameter per step (``cost_analysis()["bytes
  accessed"]``), and the same in float32 passes (bytes / 4);
* optimizer state bytes per parameter (``tx.init`` traced abstractly);
* peak bytes per parameter of the step: arguments + outputs not aliased to
  donated arguments + temporaries (``memory_analysis()``);
* copies: ``copy`` instructions in the optimized HLO (``as_text()``).

Targets (issue 13, deterministic figures: ``_report.verdict_of_value``): our
compact storage's bytes accessed over our default's (float32 storage) <=
0.80 for ``nu_bf16`` and <= 0.72 for ``nu_int8``; and no copy in any variant
of ours: a donated step updates its state buffers in place.
"""

import functools
import re

import jax

from benchmarks import _report
from benchmarks import _shapes
from benchmarks import _steps
from benchmarks import _variants

SHAPES = ("large_leaf", "resnet50")
OURS, OPTAX = "optax_rmsprop", "optax"
STORAGE_LIMITS = {"nu_bf16": 0.80, "nu_int8": 0.72}  # Bytes over our default's.
_COPY = re.compile(r"= \S+ copy\(")


def run(smoke: bool, repeats: int | None = None) -> list[dict]:
    """The records; ``smoke``: tiny shapes, one round, XLA's fastest compile."""
    with _steps.fast_compile(smoke):
        return _run(smoke, repeats)


def _run(smoke, repeats) -> list[dict]:
    del repeats  # Analyses, not timings: one compile each.
    shape_sets = _shapes.shape_sets(smoke)
    variants = _variants.all_variants(smoke)
    jobs = []
    for shape in SHAPES:
        params = _shapes.abstract_tree(shape_sets[shape])
        for v in variants:
            jobs.append((shape, v.name, OURS, _variants.ours(v), params))
            if _variants.baseline(v, variants) == v.name:
                jobs.append((shape, v.name, OPTAX, _variants.theirs(v), params))
    records = _steps.in_parallel([functools.partial(_analyse, *job) for job in jobs])
    return records + _storage_ratios(records)


def _analyse(shape, variant, library, tx, params) -> dict:
    compiled = _steps.compile_step(tx, params, params, key=(library, variant))
    size = sum(x.size for x in jax.tree.leaves(params))
    per_parameter = _steps.bytes_accessed(compiled) / size
    record = {"kind": "memory", "shape": shape, "parameters": size}
    record |= {"variant": variant, "library": library}
    record |= {"bytes_accessed_per_parameter": per_parameter}
    record |= {"f32_passes": per_parameter / 4}
    record |= {"state_bytes_per_parameter": _steps.state_bytes(tx, params) / size}
    peak = _steps.peak_bytes(compiled)
    if peak is not None:
        record |= {"peak_bytes_per_parameter": peak / size}
    return record | _copies(compiled, library)


def _copies(compiled, library) -> dict:
    """The step's ``copy`` instructions, and (ours) the verdict of a target of 0."""
    copies = len(_COPY.findall(compiled.as_text()))
    target, verdict = "reference", "-"
    if library == OURS:
        target, verdict = "0 copies", _report.verdict_of_count(copies, "copies")
    return {"copies": copies, "measure": "copies", "target": target, "verdict": verdict}


def _storage_ratios(records) -> list[dict]:
    """Each compact storage's bytes accessed over our default's, per shape."""
    ours = {(r["shape"], r["variant"]): r for r in records if r["library"] == OURS}
    ratios = []
    for (shape, variant), record in ours.items():
        if variant not in STORAGE_LIMITS:
            continue
        key = "bytes_accessed_per_parameter"
        ratio = record[key] / ours[shape, "default"][key]
        ratios.append(_storage_ratio(shape, variant, ratio))
    return ratios


def _storage_ratio(shape, variant, ratio) -> dict:
    """A ratio record as a timing's, quartiles equal: the figure is exact."""
    limit = STORAGE_LIMITS[variant]
    record = {"kind": "memory_ratio", "shape": shape, "variant": variant}
    record |= {"numerator": f"{OURS}/{variant}", "denominator": f"{OURS}/default"}
    record |= {"measure": "bytes accessed", "target": f"<= {limit:.2f}"}
    record |= {"verdict": _report.verdict_of_value(ratio, limit), "ratio": ratio}
    return record | {"paired_ratio": ratio, "ratio_q25": ratio, "ratio_q75": ratio}


def table(records: list[dict]) -> str:
    memory = [r for r in records if r["kind"] == "memory"]
    parts = []
    for shape in dict.fromkeys(r["shape"] for r in memory):
        parts.append(_shape_table([r for r in memory if r["shape"] == shape]))
    ratios = [r for r in records if r["kind"] == "memory_ratio"]
    if ratios:
        parts.append(_ratio_table(ratios))
    return "\n\n".join(parts)


def _shape_table(records) -> str:
    optax = {r["variant"]: r for r in records if r["library"] == OPTAX}
    variants = _variants.all_variants()
    title = (
        f"Memory per parameter, {records[0]['shape']} "
        f"({records[0]['parameters'] / 1e6:.3g}M parameters): compiled step "
        "(XLA analyses); optax_rmsprop / optax"
    )
    headers = ["variant", "f32 passes/step", "bytes accessed", "state bytes"]
    headers += ["peak bytes (step)", "copies", "verdict (0 copies)"]
    rows = []
    for r in (r for r in records if r["library"] == OURS):
        match = [v for v in variants if v.name == r["variant"]]
        theirs = optax[_variants.baseline(match[0], variants) if match else "default"]
        rows.append([r["variant"]] + [_pair(r, theirs, k) for k in _COLUMNS])
        rows[-1] += [f"{r['copies']} / {theirs['copies']}", r["verdict"]]
    return _report.table(title, headers, rows)


def _ratio_table(records) -> str:
    title = "Compact storage: bytes accessed per step over our default's (float32)"
    headers = ["shape", "variant", "ratio", "target", "verdict"]
    rows = [
        [r["shape"], r["variant"], r["ratio"], r["target"], r["verdict"]]
        for r in records
    ]
    return _report.table(title, headers, rows)


_COLUMNS = (
    "f32_passes",
    "bytes_accessed_per_parameter",
    "state_bytes_per_parameter",
    "peak_bytes_per_parameter",
)


def _pair(ours, theirs, key) -> str:
    if key not in ours:
        return "n/a"
    return f"{ours[key]:.4g} / {theirs[key]:.4g}"
