"""Plain-text tables and target verdicts."""

import math


def table(title: str, headers: list[str], rows: list[list]) -> str:
    """An aligned table under a ``== title ==`` line; numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *cells)]
    lines = [f"== {title} =="]
    lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for row, raw in zip(cells, rows):
        lines.append("  ".join(_align(c, r, w) for c, r, w in zip(row, raw, widths)))
    return "\n".join(lines)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g}"


def ms_range(record: dict) -> str:
    return f"{ms(record['q25_s'])}-{ms(record['q75_s'])}"


def paired(record: dict) -> str:
    """The median paired ratio and its interquartile range."""
    low, high = record["ratio_q25"], record["ratio_q75"]
    return f"{record['paired_ratio']:.3f} ({low:.3f}-{high:.3f})"


MET, MISSED, WARNED = "met", "MISSED", "warned"


def verdict_of(record: dict, limit: float, kind: str = "at_most") -> str:
    """A target's verdict on a paired-ratio record (median and quartiles).

    ``kind`` is ``at_most`` (ratio <= limit), ``at_least`` (a speed-up >=
    limit) or ``ahead`` (ratio < 1). The median alone decides: "met" when it
    meets the target (a median equal to the limit meets ``at_most`` and
    ``at_least``; ``ahead`` needs strictly below 1), otherwise "MISSED" with
    by how much and the interquartile range, noting when the better quartile
    would have met the target (the miss may be noise, but it is a miss).
    """
    value, q25, q75 = record["paired_ratio"], record["ratio_q25"], record["ratio_q75"]
    if kind == "ahead":
        met, best_met = value < 1, q25 < 1
        gap = f"ahead by {1 - value:.1%}" if met else f"not ahead, {value - 1:+.1%}"
    elif kind == "at_least":
        met, best_met = value >= limit, q75 >= limit
        gap = f"{value:.2f}x, {1 - value / limit:.1%} short of {limit:g}x"
    elif kind == "at_most":
        met, best_met = value <= limit, q25 <= limit
        gap = f"{value / limit - 1:+.1%} over {limit:g}"
    else:
        raise ValueError(f"`kind` must be at_most, at_least or ahead, got {kind!r}.")
    spread = f"IQR {q25:.3f}-{q75:.3f}"
    if met:
        return f"{MET}: {gap} ({spread})" if kind == "ahead" else MET
    if best_met:
        spread += ", its better quartile meets the target"
    return f"{MISSED}: {gap} ({spread})"


def verdict_of_value(value: float, limit: float) -> str:
    """A target's verdict on a deterministic figure (not a timing): value <= limit.

    "met" when it holds (equality meets it), else "MISSED" with the figure,
    e.g. ``MISSED: 0.034 > 0.02``.
    """
    if value <= limit:
        return MET
    return f"{MISSED}: {value:.3g} > {limit:g}"


def verdict_of_count(count: int, noun: str) -> str:
    """A count's verdict against a target of none: "met", or ``MISSED: 2 copies``."""
    return MET if count == 0 else f"{MISSED}: {count} {noun}"


def warned(message: str) -> str:
    """The verdict when the library warns that a setting misses the target.

    Counted neither met nor missed: the warning tells the user instead.
    """
    return f"{WARNED}: {message[:80]}"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else str(value)
    return str(value)


def _align(cell: str, raw, width: int) -> str:
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return cell.rjust(width)
    return cell.ljust(width)
