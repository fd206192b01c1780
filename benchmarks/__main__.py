"""``python -m benchmarks``: every benchmark, a printed table and a JSON file.

Sections (``--only`` picks some): ``step_time`` (``bench_step_time``),
``memory`` (``bench_memory``), ``compile`` (``bench_compile``), ``accuracy``
(``bench_accuracy``, compact storage against float32), ``init``
(``bench_init``, eager) and ``training`` (``bench_training``). ``--smoke``
runs tiny shapes once, with XLA's fastest compilation: a check that the
harness works, not a measurement. The footer counts the targets met and
missed; a target the library itself warns about (``warned``) is neither.
"""

import argparse
import json
import os
import pathlib
import sys
import time

from benchmarks import _machine
from benchmarks import _report
from benchmarks import _torch
from benchmarks import _variants
from benchmarks import bench_accuracy
from benchmarks import bench_compile
from benchmarks import bench_init
from benchmarks import bench_memory
from benchmarks import bench_step_time
from benchmarks import bench_training

SECTIONS = {
    "step_time": bench_step_time,
    "memory": bench_memory,
    "compile": bench_compile,
    "accuracy": bench_accuracy,
    "init": bench_init,
    "training": bench_training,
}
DEFAULT_JSON = pathlib.Path(__file__).resolve().parent / "results" / "latest.json"


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    start = time.perf_counter()
    report = {"machine": _machine.describe(), "arguments": _arguments(args)}
    report["unavailable_variants"] = list(_variants.unavailable())
    _print(_header(report))
    report["sections"], report["section_seconds"] = {}, {}
    for name in args.only or list(SECTIONS):
        section_start = time.perf_counter()
        records = SECTIONS[name].run(args.smoke, args.repeats)
        report["sections"][name] = records
        report["section_seconds"][name] = time.perf_counter() - section_start
        _print(SECTIONS[name].table(records))
    report["runtime_s"] = time.perf_counter() - start
    report["load_average_at_end"] = (
        list(os.getloadavg()) if hasattr(os, "getloadavg") else []
    )
    _print(_footer(report, args.json))
    _write(report, args.json)
    return report


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one round")
    parser.add_argument("--json", type=pathlib.Path, default=DEFAULT_JSON)
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="rounds per timing (default: each section's own)",
    )
    parser.add_argument(
        "--only", nargs="+", choices=list(SECTIONS), help="sections to run"
    )
    return parser.parse_args(argv)


def _arguments(args) -> dict:
    return {"smoke": args.smoke, "repeats": args.repeats, "only": args.only}


def _header(report) -> str:
    lines = [_machine.header(report["machine"])]
    if _torch.AVAILABLE:
        lines.append(
            f"PyTorch runs on: {_torch.device()}, {_machine.usable_cores()} threads"
        )
    else:
        lines.append("PyTorch: not installed (its rows are left out)")
    for name in report["unavailable_variants"]:
        lines.append(f"Variant {name}: not available in this optax_rmsprop build")
    if report["arguments"]["smoke"]:
        lines.append("SMOKE MODE: tiny shapes, one round; the figures mean nothing")
    return "\n".join(lines)


def _footer(report, path) -> str:
    verdicts = [r for rs in report["sections"].values() for r in rs if "verdict" in r]
    counts = {
        label: [r for r in verdicts if r["verdict"].startswith(label)]
        for label in (_report.MET, _report.MISSED, _report.WARNED)
    }
    met, missed = len(counts[_report.MET]), len(counts[_report.MISSED])
    warned = counts[_report.WARNED]
    lines = [
        f"== Targets: {met + missed} checked: {met} met, {missed} missed"
        + (f"; {len(warned)} warned by the library, not counted" if warned else "")
        + " =="
    ]
    lines += [f"  {_who(r)}: {r['verdict']}" for r in counts[_report.MISSED] + warned]
    load = ", ".join(f"{x:.2f}" for x in report["load_average_at_end"]) or "n/a"
    lines.append(f"Load average at end: {load}")
    lines.append(f"Total time {report['runtime_s']:.0f} s; results in {path}")
    return "\n".join(lines)


def _who(record) -> str:
    """Which measurement a verdict is about.

    E.g. ``resnet50 optax_rmsprop/nu_int8 time over optax_rmsprop/default``.
    """
    what = record.get("numerator") or f"{record['library']}/{record['variant']}"
    if record["kind"] == "floor":
        what += " vs bandwidth floor"
    if "measure" in record:
        what += f" {record['measure']}"
    if "denominator" in record:
        what += f" over {record['denominator']}"
    return f"{record.get('shape', 'large_leaf')} {what}"


def _write(report, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")


def _print(text) -> None:
    print(text, end="\n\n", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
