"""Step time of each of our variants over our own default's, in the same rounds.

Issue 13, "No step slower than its bytes": compact storage must not cost
time over float32 storage, and a variant with float32 storage may take
longer than the default only in proportion to the bytes it moves.

* compact storage (``nu_bf16``, ``nu_int8``): time ratio <= 1.00 on every shape;
* every other float32-storage variant: time per byte (the paired time ratio
  times ``bytes(default) / bytes(variant)``, XLA's cost analysis) <= 1.10,
  and time ratio <= 1.55 for momentum, <= 2.0 for Nesterov, on the large
  shapes (``small_leaves`` is per-leaf overhead: reported, no target).
"""

from benchmarks import _report
from benchmarks import _shapes
from benchmarks import _timing
from benchmarks import _variants

OURS = "optax_rmsprop"
DEFAULT = f"{OURS}/default"
COMPACT_LIMIT = 1.0
PER_BYTE_LIMIT = 1.10
TIME_LIMITS = {"momentum": 1.55, "nesterov": 2.0}


def records(shape: str, variants, samples: dict, traffic: dict) -> list[dict]:
    """The ratio records of one shape.

    Args:
      shape: the pytree's name (``_shapes``).
      variants: the variants timed (``_variants.Variant``).
      samples: ``{contender name: seconds per step in each round}``.
      traffic: ``{contender name: bytes accessed per parameter}``.

    Returns:
      One record per compact variant (time) and two per other variant (time,
      time per byte), each a paired ratio with its target and verdict.
    """
    large = shape in _shapes.LARGE_SHAPES
    out = []
    for v in (v for v in variants if v.name != "default"):
        ours = f"{OURS}/{v.name}"
        paired = _timing.paired_ratio(samples[ours], samples[DEFAULT])
        if _variants.is_compact(v):
            out.append(_record(v, "time", paired, COMPACT_LIMIT))
        else:
            bytes_ratio = traffic[ours] / traffic[DEFAULT]
            out += _float32_records(v, paired, bytes_ratio, large)
    return out


def _float32_records(variant, paired, bytes_ratio, large) -> list[dict]:
    """Time, and time per byte: the time ratio over the bytes ratio."""
    per_byte = {k: x / bytes_ratio for k, x in paired.items()}
    time_limit = TIME_LIMITS.get(variant.name) if large else None
    byte_limit = PER_BYTE_LIMIT if large else None
    return [
        _record(variant, "time", paired, time_limit),
        _record(variant, "time per byte", per_byte, byte_limit)
        | {"bytes_ratio": bytes_ratio},
    ]


def _record(variant, measure, paired, limit) -> dict:
    target, verdict = "none", "-"
    if limit is not None:
        target, verdict = f"<= {limit:.2f}", _report.verdict_of(paired, limit)
    record = {"kind": "versus_default", "variant": variant.name, "measure": measure}
    record |= {"numerator": f"{OURS}/{variant.name}", "denominator": DEFAULT}
    return record | {"target": target, "verdict": verdict} | paired
