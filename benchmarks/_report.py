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


MET, NOISE, MISSED = "met", "within noise", "MISSED"


def verdict_of(record: dict, limit: float, kind: str = "at_most") -> str:
    """A target's verdict on a paired-ratio record (median and quartiles).

    ``kind`` is ``at_most`` (ratio <= limit), ``at_least`` (a speed-up >=
    limit) or ``ahead`` (ratio clearly below 1). "met" when the median meets
    the target; "within noise" when only the better quartile does; "MISSED"
    (with by how much) when even the better quartile misses it.
    """
    value, q25, q75 = record["paired_ratio"], record["ratio_q25"], record["ratio_q75"]
    spread = f"IQR {q25:.3f}-{q75:.3f}"
    if kind == "ahead":
        return _ahead(value, q75, spread)
    if kind == "at_least":
        met, best = value >= limit, q75 >= limit
        miss = f"{value:.2f}x, {1 - value / limit:.1%} short of {limit:g}x"
    else:
        met, best = value <= limit, q25 <= limit
        miss = f"{value / limit - 1:+.1%} over {limit:g}"
    if met:
        return MET
    return f"{NOISE}: {miss} ({spread})" if best else f"{MISSED}: {miss} ({spread})"


def _ahead(value, q75, spread) -> str:
    if q75 < 1:
        return f"{MET}: ahead by {1 - value:.1%} ({spread})"
    if value < 1:
        return f"{NOISE}: ahead by {1 - value:.1%} ({spread})"
    return f"{MISSED}: not ahead, {value - 1:+.1%} ({spread})"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else str(value)
    return str(value)


def _align(cell: str, raw, width: int) -> str:
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return cell.rjust(width)
    return cell.ljust(width)
