"""Compile time of the step for the 1000-leaf tree, against optax.

Each sample builds a fresh optimizer and a fresh ``jax.jit`` of the donated
step (so no cache is hit), then times tracing and lowering
(``jit(...).lower``) and XLA compilation (``.compile()``) separately. The
contenders take turns within each round; each is first compiled once for a
two-leaf tree so JAX's one-time caches (of jnp helpers) are warm for all.

Target (issue 13): each compact storage's total (trace, lower and compile)
over our default's (float32 storage) <= 1.5, on the median samples of the
same rounds (``_timing.paired_ratio``, ``_report.verdict_of``); the ratios
to optax are reported without a target.
"""

import time

import jax
import numpy as np

from benchmarks import _report
from benchmarks import _shapes
from benchmarks import _steps
from benchmarks import _timing
from benchmarks import _variants

ROUNDS = 1  # Each sample compiles the 1024-leaf step: 5 to 45 s here.
SHAPE = "small_leaves"
# One variant per code path (plain, momentum, each storage), to keep the
# whole run within minutes; ``--repeats`` asks for more rounds.
VARIANTS = ("default", "nesterov", "nu_bf16", "nu_int8")
OURS, OPTAX = "optax_rmsprop", "optax"
STORAGE_LIMIT = 1.5  # A compact storage's compile total over our default's.


def run(smoke: bool, repeats: int | None = None) -> list[dict]:
    """The records; ``smoke``: tiny shapes, one round, XLA's fastest compile."""
    with _steps.fast_compile(smoke):
        return _run(smoke, repeats)


def _run(smoke, repeats) -> list[dict]:
    rounds = 1 if smoke else repeats or ROUNDS
    shapes = _shapes.shape_sets(smoke)[SHAPE]
    variants = [v for v in _variants.step_variants(smoke) if v.name in VARIANTS]
    contenders = _contenders(variants)
    warm = _shapes.abstract_tree(_shapes.small_leaves(2))
    for make_tx in contenders.values():
        _compile_seconds(make_tx, warm)
    samples = _interleaved(contenders, _shapes.abstract_tree(shapes), rounds)
    base = {"shape": SHAPE, "leaves": len(shapes), "rounds": rounds}
    records = [base | _summary(name, s) for name, s in samples.items()]
    records += [base | _ratio(v, variants, samples) for v in variants]
    storages = [v for v in variants if _variants.is_compact(v)]
    return records + [base | _storage_ratio(v, samples) for v in storages]


def _contenders(variants) -> dict:
    """``{"library/variant": factory of a fresh optimizer}``."""
    contenders = {}
    for v in variants:
        contenders[f"{OURS}/{v.name}"] = lambda v=v: _variants.ours(v)
        if _variants.baseline(v, variants) == v.name:
            contenders[f"{OPTAX}/{v.name}"] = lambda v=v: _variants.theirs(v)
    return contenders


def _interleaved(contenders, params, rounds) -> dict:
    names = list(contenders)
    samples = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(_compile_seconds(contenders[name], params))
    return samples


def _compile_seconds(make_tx, params) -> tuple[float, float]:
    """(trace + lower, XLA compile) seconds of a fresh jit of a fresh step."""
    tx = make_tx()
    state = jax.eval_shape(tx.init, params)
    step = _steps.jit(_steps.optimizer_step(tx), donate_argnums=(0, 1))
    start = time.perf_counter()
    lowered = step.lower(params, state, params)
    lowered_at = time.perf_counter()
    lowered.compile()
    return lowered_at - start, time.perf_counter() - lowered_at


def _summary(name, samples) -> dict:
    lower, compile_ = np.asarray(samples).T
    total = lower + compile_
    library, variant = name.split("/")
    record = {"kind": "compile", "library": library, "variant": variant}
    record |= {
        "lower_s": float(np.median(lower)),
        "compile_s": float(np.median(compile_)),
    }
    record |= {"total_s": float(np.median(total))}
    return record | {
        "total_min_s": float(total.min()),
        "total_max_s": float(total.max()),
    }


def _ratio(variant, variants, samples) -> dict:
    ours = f"{OURS}/{variant.name}"
    theirs = f"{OPTAX}/{_variants.baseline(variant, variants)}"
    ratios = {}
    for part, index in (("lower", 0), ("compile", 1), ("total", None)):
        pick = (lambda s: sum(s)) if index is None else (lambda s, i=index: s[i])
        ratios[f"{part}_ratio"] = float(
            np.median([pick(s) for s in samples[ours]])
            / np.median([pick(s) for s in samples[theirs]])
        )
    record = {"kind": "compile_ratio", "variant": variant.name, "numerator": ours}
    return record | {"denominator": theirs} | ratios


def _storage_ratio(variant, samples) -> dict:
    """Compile total of a compact storage over our default's, round by round."""
    ours, default = f"{OURS}/{variant.name}", f"{OURS}/default"
    paired = _timing.paired_ratio(
        [sum(s) for s in samples[ours]], [sum(s) for s in samples[default]]
    )
    record = {"kind": "compile_storage_ratio", "variant": variant.name}
    record |= {"numerator": ours, "denominator": default, "measure": "compile total"}
    verdict = _report.verdict_of(paired, STORAGE_LIMIT)
    return record | {"target": f"<= {STORAGE_LIMIT:g}", "verdict": verdict} | paired


def table(records: list[dict]) -> str:
    storages = [r for r in records if r["kind"] == "compile_storage_ratio"]
    text = _compile_table(records)
    return text + ("\n\n" + _storage_table(storages) if storages else "")


def _storage_table(records) -> str:
    title = "Compile time of compact storage over our default's (float32 storage)"
    headers = ["variant", "total ratio", "paired ratio (IQR)", "target", "verdict"]
    rows = [
        [r["variant"], r["ratio"], _report.paired(r), r["target"], r["verdict"]]
        for r in records
    ]
    return _report.table(title, headers, rows)


def _compile_table(records) -> str:
    first = records[0]
    title = (
        f"Compile time, {first['shape']} ({first['leaves']} leaves): fresh jit of "
        f"the donated step, median of {first['rounds']} rounds, interleaved"
    )
    headers = ["variant", "library", "trace+lower s", "XLA compile s", "total s"]
    headers += ["min-max s", "ours/optax (lower, compile, total)"]
    ratios = {r["variant"]: r for r in records if r["kind"] == "compile_ratio"}
    rows = []
    for r in (r for r in records if r["kind"] == "compile"):
        rows.append([r["variant"], r["library"], r["lower_s"], r["compile_s"]])
        rows[-1] += [r["total_s"], f"{r['total_min_s']:.3g}-{r['total_max_s']:.3g}"]
        rows[-1].append(
            _ratio_cell(ratios[r["variant"]]) if r["library"] == OURS else ""
        )
    return _report.table(title, headers, rows)


def _ratio_cell(record) -> str:
    parts = ("lower_ratio", "compile_ratio", "total_ratio")
    return ", ".join(f"{record[p]:.2f}" for p in parts)
