"""Eager ``init`` of a many-leaf tree, against optax.

``nnx.Optimizer`` and most training scripts call ``tx.init(params)`` outside
``jax.jit``. Each sample builds fresh parameters of shapes no earlier sample
used (``(rows, i + 1)`` for leaf ``i``, ``rows`` new per sample), so any
per-shape compilation is paid as a user's first ``init`` pays it, and times
``init`` until its arrays are ready. The contenders take turns within each
round; each first runs once on a two-leaf tree so JAX's one-time caches are
warm for all.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _report
from benchmarks import _variants

ROUNDS = 3
LEAVES = 100  # ~50 ms of compilation per new shape: ~5 s per sample.
VARIANTS = ("default", "nu_bf16", "nu_int8")
OURS, OPTAX = "optax_rmsprop", "optax"
TARGET = 1.0  # ours / optax, median of paired rounds: as fast as optax.


def run(smoke: bool, repeats: int | None = None) -> list[dict]:
    """The records; ``smoke``: 10 leaves, one round."""
    rounds = 1 if smoke else repeats or ROUNDS
    leaves = 10 if smoke else LEAVES
    variants = {v.name: v for v in _variants.step_variants(smoke)}
    contenders = _contenders([variants[n] for n in VARIANTS if n in variants])
    rows = iter(range(1001, 100_000))  # A fresh first dimension per sample.
    for make_tx in contenders.values():
        _init_seconds(make_tx, _params(next(rows), 2))
    samples = {name: [] for name in contenders}
    for r in range(rounds):
        names = list(contenders)
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            params = _params(next(rows), leaves)
            samples[name].append(_init_seconds(contenders[name], params))
    base = {"kind": "eager_init", "shape": f"{leaves}_leaves", "leaves": leaves}
    base["rounds"] = rounds
    return [base | _record(name, samples, rounds) for name in contenders]


def _contenders(variants) -> dict:
    contenders = {}
    for v in variants:
        contenders[f"{OURS}/{v.name}"] = lambda v=v: _variants.ours(v)
        contenders[f"{OPTAX}/{v.name}"] = lambda v=v: _variants.theirs(v)
    return contenders


def _params(rows: int, leaves: int) -> list:
    """Device arrays of distinct shapes, made without compiling anything."""
    shapes = [(rows, i + 1) for i in range(leaves)]
    return [jnp.asarray(np.ones(shape, np.float32)) for shape in shapes]


def _init_seconds(make_tx, params) -> float:
    tx = make_tx()
    jax.block_until_ready(params)
    start = time.perf_counter()
    jax.block_until_ready(tx.init(params))
    return time.perf_counter() - start


def _record(name, samples, rounds) -> dict:
    library, variant = name.split("/")
    record = {"library": library, "variant": variant}
    record["median_s"] = float(np.median(samples[name]))
    if library != OURS:
        return record
    ours = np.asarray(samples[name])
    theirs = np.asarray(samples[f"{OPTAX}/{variant}"])
    ratios = ours / theirs
    ratio = {
        "paired_ratio": float(np.median(ratios)),
        "ratio_q25": float(np.percentile(ratios, 25)),
        "ratio_q75": float(np.percentile(ratios, 75)),
    }
    record |= ratio
    return record | {"verdict": _report.verdict_of(ratio, TARGET)}


def table(records: list[dict]) -> str:
    first = records[0]
    title = (
        f"Eager init, {first['leaves']} leaves of distinct shapes: median of "
        f"{first['rounds']} rounds, interleaved, fresh shapes every sample"
    )
    headers = ["variant", "library", "init ms", "ours/optax (IQR)", "verdict"]
    rows = []
    for r in records:
        ratio = _report.paired(r) if "paired_ratio" in r else ""
        rows.append(
            [r["variant"], r["library"], _report.ms(r["median_s"]), ratio]
            + [r.get("verdict", "")]
        )
    return _report.table(title, headers, rows)
