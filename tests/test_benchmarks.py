"""Every benchmark runs in smoke mode, so the harness cannot rot.

Smoke mode steps tiny trees for one round with XLA's fastest compilation:
its figures mean nothing, but every code path of the harness runs -- JAX and
PyTorch contenders, interleaved timing, ratios and verdicts, XLA's cost and
memory analyses, compile timing, the training models -- and every figure must
come out a positive finite number.

Each module's ``run(smoke=True)`` is called once, directly; then the command
``python -m benchmarks --smoke --json PATH`` runs in-process through
``main(argv)`` (argument parsing, header, tables, JSON) with those runs
memoised, so the harness's compile-bound smoke work is done once and the file
stays well under 30 s on two cores.
"""

import contextlib
import io
import json
import math
import pathlib
import sys

import pytest

_ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # ``benchmarks`` is a folder of the repo, not installed.
    sys.path.insert(0, str(_ROOT))

from benchmarks import __main__ as cli  # noqa: E402
from benchmarks import _report  # noqa: E402

# The one figure that may be negative: the optimizer's share of a training
# step, 1 - forward_backward / full_step, is within noise of zero when the
# optimizer is cheap.
_SIGNED = {"optimizer_share"}


@pytest.fixture(scope="module")
def module_runs():
    """``{section: records}`` from each module's own ``run(smoke=True)``."""
    return {name: module.run(smoke=True) for name, module in cli.SECTIONS.items()}


@pytest.fixture(scope="module")
def smoke_run(module_runs, tmp_path_factory):
    """(JSON written, text printed) by ``main(["--smoke", "--json", PATH])``."""
    path = tmp_path_factory.mktemp("bench") / "x.json"
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        for name, module in cli.SECTIONS.items():
            patch.setattr(module, "run", _memoised(module_runs[name]))
        cli.main(["--smoke", "--json", str(path)])
    return json.loads(path.read_text()), out.getvalue()


def _memoised(records):
    def memoised(smoke, repeats=None):
        assert smoke and repeats is None
        return records

    return memoised


def _assert_figures_positive_and_finite(records):
    for record in records:
        for key, value in record.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            assert math.isfinite(value), (record["kind"], key, value)
            if key in _SIGNED:
                assert value < 1, (record["kind"], key, value)
            else:
                assert value > 0, (record["kind"], key, value)


@pytest.mark.parametrize("name", list(cli.SECTIONS))
def test_module_runs_and_prints_its_table(module_runs, name):
    records = module_runs[name]
    assert records
    _assert_figures_positive_and_finite(records)
    assert cli.SECTIONS[name].table(records).startswith("== ")


def test_json_has_every_section(smoke_run):
    report, _ = smoke_run
    assert set(report["sections"]) == set(cli.SECTIONS)
    for name, records in report["sections"].items():
        assert records, name
    assert report["machine"]["backend"]
    assert report["machine"]["versions"]["jax"]


def test_every_figure_in_the_json_is_positive_and_finite(smoke_run):
    report, _ = smoke_run
    for records in report["sections"].values():
        _assert_figures_positive_and_finite(records)
    assert report["runtime_s"] > 0


def test_step_time_covers_every_shape_and_contender(smoke_run):
    records = smoke_run[0]["sections"]["step_time"]
    steps = [r for r in records if r["kind"] == "step"]
    shapes = {"large_leaf", "resnet50", "transformer", "small_leaves"}
    assert {r["shape"] for r in steps} == shapes
    libraries = {r["library"] for r in steps}
    assert {"optax_rmsprop", "optax", "xla a+b"} <= libraries
    if cli._torch.AVAILABLE:
        assert {"torch foreach", "torch for-loop"} <= libraries
    assert {"comparison", "floor", "bandwidth"} <= {r["kind"] for r in records}
    comparisons = [r for r in records if r["kind"] == "comparison"]
    speedup = cli.bench_step_time.TORCH_SPEEDUP
    for r in comparisons:  # Each verdict is the one its own figures give.
        if r["target"].startswith(">="):
            assert r["verdict"] == _report.verdict_of(r, speedup, "at_least")
        elif r["target"].startswith("<="):
            assert r["verdict"] == _report.verdict_of(r, 1.0)
        elif r["target"].startswith("<"):
            assert r["verdict"] == _report.verdict_of(r, 1.0, "ahead")
        else:
            assert r["verdict"] == "-"


def test_header_and_every_table_are_printed(smoke_run):
    _, out = smoke_run
    for text in ("Machine:", "JAX backend:", "Load average", "SMOKE MODE"):
        assert text in out
    for title in (
        "== Step time, large_leaf",
        "== Step time ratios",
        "== Large leaf against the bandwidth floor",
        "== Memory per parameter, resnet50",
        "== Compile time, small_leaves",
        "== Training step, mlp_digits",
        "== Training step, cnn_28x28",
        "== Targets:",
    ):
        assert title in out


def test_full_shapes_have_the_advertised_sizes():
    shapes = cli.bench_step_time._shapes.shape_sets(smoke=False)
    count = cli.bench_step_time._shapes.num_parameters
    assert count(shapes["large_leaf"]) >= 16 * 2**20
    assert len(shapes["resnet50"]) == 161
    assert 280 <= len(shapes["transformer"]) <= 320
    assert len(shapes["small_leaves"]) >= 1000


# --------------------------------------------------------------------------
# Verdicts, on made-up paired-ratio records: the median alone decides.


def _record(median, q25, q75):
    return {"paired_ratio": median, "ratio_q25": q25, "ratio_q75": q75}


@pytest.mark.parametrize(
    ("record", "limit", "kind", "expected"),
    [
        pytest.param(_record(0.98, 0.95, 1.02), 1.0, "at_most", "met", id="at_most"),
        pytest.param(_record(1.0, 0.9, 1.1), 1.0, "at_most", "met", id="at_most-eq"),
        pytest.param(_record(3.2, 2.9, 3.5), 3.0, "at_least", "met", id="at_least"),
        pytest.param(_record(3.0, 2.8, 3.1), 3.0, "at_least", "met", id="at_least-eq"),
        pytest.param(
            _record(0.9, 0.85, 0.95),
            1.0,
            "ahead",
            "met: ahead by 10.0% (IQR 0.850-0.950)",
            id="ahead",
        ),
        pytest.param(
            _record(0.99, 0.9, 1.05),
            1.0,
            "ahead",
            "met: ahead by 1.0% (IQR 0.900-1.050)",
            id="ahead-median-only",
        ),
    ],
)
def test_verdict_is_met_when_the_median_meets_the_target(record, limit, kind, expected):
    assert _report.verdict_of(record, limit, kind) == expected


# The case: a median 7% over the limit whose better quartile meets it
# was printed "within noise"; it is a miss, with the spread beside it.
@pytest.mark.parametrize(
    ("record", "limit", "kind", "expected"),
    [
        pytest.param(
            _record(1.07, 0.97, 1.12),
            1.0,
            "at_most",
            "MISSED: +7.0% over 1 (IQR 0.970-1.120, its better quartile meets "
            "the target)",
            id="at_most-better-quartile-meets",
        ),
        pytest.param(
            _record(1.2, 1.1, 1.3),
            1.1,
            "at_most",
            "MISSED: +9.1% over 1.1 (IQR 1.100-1.300, its better quartile meets "
            "the target)",
            id="at_most-quartile-equal-to-limit",
        ),
        pytest.param(
            _record(1.25, 1.2, 1.3),
            1.1,
            "at_most",
            "MISSED: +13.6% over 1.1 (IQR 1.200-1.300)",
            id="at_most-clear",
        ),
        pytest.param(
            _record(1.0 + 1e-9, 1.0, 1.0),
            1.0,
            "at_most",
            "MISSED: +0.0% over 1 (IQR 1.000-1.000, its better quartile meets "
            "the target)",
            id="at_most-just-over",
        ),
        pytest.param(
            _record(2.8, 2.6, 3.1),
            3.0,
            "at_least",
            "MISSED: 2.80x, 6.7% short of 3x (IQR 2.600-3.100, its better "
            "quartile meets the target)",
            id="at_least-better-quartile-meets",
        ),
        pytest.param(
            _record(2.5, 2.4, 2.6),
            3.0,
            "at_least",
            "MISSED: 2.50x, 16.7% short of 3x (IQR 2.400-2.600)",
            id="at_least-clear",
        ),
        pytest.param(
            _record(1.0, 0.95, 1.05),
            1.0,
            "ahead",
            "MISSED: not ahead, +0.0% (IQR 0.950-1.050, its better quartile "
            "meets the target)",
            id="ahead-equal",
        ),
        pytest.param(
            _record(1.03, 1.01, 1.06),
            1.0,
            "ahead",
            "MISSED: not ahead, +3.0% (IQR 1.010-1.060)",
            id="ahead-clear",
        ),
    ],
)
def test_verdict_is_missed_when_the_median_misses_the_target(
    record, limit, kind, expected
):
    assert _report.verdict_of(record, limit, kind) == expected


def test_verdict_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="`kind` must be at_most, at_least or ahead"):
        _report.verdict_of(_record(1.0, 1.0, 1.0), 1.0, "below")


def test_footer_counts_a_median_miss_as_missed():
    miss = _report.verdict_of(_record(1.07, 0.97, 1.12), 1.0)
    records = [
        {"kind": "comparison", "numerator": "optax_rmsprop/a", "verdict": miss},
        {"kind": "comparison", "numerator": "optax_rmsprop/b", "verdict": "met"},
    ]
    report = {"sections": {"step_time": records}, "load_average_at_end": []}
    footer = cli._footer(report | {"runtime_s": 1.0}, "x.json")
    assert "2 checked: 1 met, 1 missed" in footer
    assert f"large_leaf optax_rmsprop/a: {miss}" in footer
