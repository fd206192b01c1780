"""The printed tables of ``bench_step_time``'s records."""

from benchmarks import _report


def table(records: list[dict]) -> str:
    parts = []
    for shape in dict.fromkeys(r["shape"] for r in records):
        parts.append(_shape_table([r for r in records if r["shape"] == shape]))
    parts.append(_comparison_table([r for r in records if r["kind"] == "comparison"]))
    own = [r for r in records if r["kind"] == "versus_default"]
    if own:
        parts.append(_versus_default_table(own))
    floors = [r for r in records if r["kind"] in ("floor", "bandwidth")]
    if floors:
        parts.append(_floor_table(floors))
    return "\n\n".join(parts)


def _shape_table(records) -> str:
    first = records[0]
    title = (
        f"Step time, {first['shape']}: {first['leaves']} leaves, "
        f"{first['parameters'] / 1e6:.3g}M parameters; {first['rounds']} rounds "
        f"x {first['steps_per_sample']} steps, interleaved (set-up "
        f"{first['setup_s']:.0f} s, timing {first['timing_s']:.0f} s)"
    )
    headers = ["variant", "library", "median ms", "IQR ms", "bytes/param", "GB/s"]
    rows = []
    for r in records:
        if r["kind"] == "step":
            rows.append([r["variant"], r["library"], *_time_cells(r), *_traffic(r)])
    return _report.table(title, headers, rows)


def _time_cells(record) -> list:
    return [_report.ms(record["median_s"]), _report.ms_range(record)]


def _traffic(record) -> list:
    if "bytes_per_call" in record:
        return ["-", record["bytes_per_call"] / record["median_s"] / 1e9]
    if "bytes_per_parameter" not in record:
        return ["-", "-"]
    total = record["bytes_per_parameter"] * record["parameters"]
    return [record["bytes_per_parameter"], total / record["median_s"] / 1e9]


def _comparison_table(records) -> str:
    headers = ["shape", "variant", "time of", "over time of", "ratio of medians"]
    headers += ["paired ratio (IQR)", "target", "verdict"]
    rows = [
        [r["shape"], r["variant"], r["numerator"], r["denominator"], r["ratio"]]
        + [_report.paired(r), r["target"], r["verdict"]]
        for r in records
    ]
    title = (
        "Step time ratios (torch rows: its speed-up); verdicts on the median of "
        "the per-round ratios, with their IQR as the noise"
    )
    return _report.table(title, headers, rows)


def _versus_default_table(records) -> str:
    headers = ["shape", "variant", "measure", "ratio of medians", "paired ratio (IQR)"]
    headers += ["bytes ratio", "target", "verdict"]
    rows = [
        [r["shape"], r["variant"], r["measure"], r["ratio"], _report.paired(r)]
        + [r.get("bytes_ratio", "-"), r["target"], r["verdict"]]
        for r in records
    ]
    title = (
        "Step time vs our default (float32 storage), same rounds; time per byte: "
        "the time ratio over the bytes ratio (XLA's bytes accessed)"
    )
    return _report.table(title, headers, rows)


def _floor_table(records) -> str:
    bandwidth = next(r for r in records if r["kind"] == "bandwidth")
    title = (
        "Large leaf against the bandwidth floor: the fewest bytes any step of the "
        "variant moves (f32 passes) at the bandwidth of XLA's a + b, "
        f"{bandwidth['bytes_per_second'] / 1e9:.3g} GB/s in the same rounds"
    )
    headers = ["variant", "library", "f32 passes", "floor passes", "floor ms"]
    headers += ["time/floor", "paired (IQR)", "target", "verdict"]
    rows = [
        [r["variant"], r["library"], r["passes"], r["floor_passes"]]
        + [_report.ms(r["floor_s"]), r["ratio"], _report.paired(r)]
        + [r["target"], r["verdict"]]
        for r in records
        if r["kind"] == "floor"
    ]
    return _report.table(title, headers, rows)
