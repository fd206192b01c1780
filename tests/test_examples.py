"""Every example's ``main()`` runs in a fast mode, writes its figures, prints sense.

The examples are scripts in ``examples/`` that import their shared helpers as
``_common``, so the folder goes on ``sys.path`` and each is imported by name.
They need the ``examples`` extra (scikit-learn, matplotlib, tqdm), which
``make test`` installs; a missing extra is a failure, not a skip.
"""

import importlib
import math
import pathlib
import re

import matplotlib  # noqa: F401  (the examples extra must be installed)
import numpy as np
import pytest
import sklearn  # noqa: F401
import tqdm  # noqa: F401

_EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _run(monkeypatch, capsys, name, *argv):
    """Imports ``examples/<name>.py``, calls ``main(argv)``; returns its stdout."""
    monkeypatch.syspath_prepend(str(_EXAMPLES))
    importlib.import_module(name).main([str(a) for a in argv])
    return capsys.readouterr().out


def _table(out):
    """The rows (lists of cells) of the first markdown table in ``out``."""
    lines = [line for line in out.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def _assert_pngs(out_dir, *names):
    for name in names:
        path = out_dir / name
        assert path.is_file(), f"{name} was not written"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000  # Axes, labels and curves, not blank.


def test_train_digits_compares_four_optimizers(monkeypatch, capsys, tmp_path):
    out = _run(monkeypatch, capsys, "train_digits", "--steps", 20, "--out", tmp_path)
    rows = _table(out)
    assert [r[0] for r in rows] == [
        "RMSprop",
        "AdaGrad",
        "SGD + momentum 0.9",
        "Adam",
    ]
    initial = float(re.search(r"Initial training loss.*: ([\d.]+)", out).group(1))
    assert 2.0 < initial < 3.0  # About log(10) = 2.30 for a fresh classifier.
    for name, _, train_loss, test_loss, *accuracies in rows:
        assert float(train_loss) < initial, name
        assert math.isfinite(float(test_loss)), name
        assert all(0 <= float(a.rstrip("%")) <= 100 for a in accuracies), name
    _assert_pngs(tmp_path, "digits_loss.png", "digits_effective_lr.png")


def test_adagrad_vs_rmsprop_matches_theory(monkeypatch, capsys, tmp_path):
    argv = ["--steps", 600, "--dim", 200, "--out", tmp_path]
    out = _run(monkeypatch, capsys, "adagrad_vs_rmsprop", *argv)
    rows = {r[0]: [float(v) for v in r[1:]] for r in _table(out)}
    for name in ("AdaGrad", "RMSprop"):
        half, half_theory, final, final_theory = rows[name]
        assert half == pytest.approx(half_theory, rel=0.1), name
        assert final == pytest.approx(final_theory, rel=0.1), name
    # After the tenfold noise jump RMSprop re-settles ~10x lower; AdaGrad ends
    # far below RMSprop.
    assert rows["RMSprop"][2] == pytest.approx(rows["RMSprop"][0] / 10, rel=0.2)
    assert rows["AdaGrad"][2] < rows["RMSprop"][2] / 5
    _assert_pngs(tmp_path, "adagrad_vs_rmsprop.png")


def test_ravine_rmsprop_moves_evenly(monkeypatch, capsys, tmp_path):
    out = _run(monkeypatch, capsys, "ravine", "--steps", 30, "--out", tmp_path)
    rows = {r[0].split(",")[0] + r[0].split("lr")[1]: r[1:] for r in _table(out)}
    assert len(rows) == 3
    x, y, value = map(float, rows["RMSprop 0.02"])
    # From (1, 1) each coordinate is scaled by its own RMS: the path is the
    # diagonal x = y, whatever the curvatures.
    assert x == pytest.approx(y, rel=1e-3)
    assert 0 < y < 1 and value < 50.5  # f(1, 1) = 50.5.
    _, slow_y, _ = map(float, rows["SGD 0.005"])
    assert slow_y > 0.8  # (1 - 0.005)**30 = 0.86: crawling.
    _assert_pngs(tmp_path, "ravine.png")


def test_bias_correction_first_steps_match_formulas(monkeypatch, capsys, tmp_path):
    out = _run(monkeypatch, capsys, "bias_correction", "--steps", 10, "--out", tmp_path)
    rows = _table(out)
    assert [float(r[0]) for r in rows] == [0.9, 0.99, 0.999]
    for row in rows:
        decay, plain, plain_formula, plain_eff, fixed, lr, fixed_eff, _ = map(
            float, row
        )
        assert plain_formula == pytest.approx(lr / math.sqrt(1 - decay), rel=1e-3)
        assert plain == pytest.approx(plain_formula, rel=1e-3)
        assert plain_eff == pytest.approx(plain, rel=1e-3)
        assert fixed == pytest.approx(lr, rel=1e-3)
        assert fixed_eff == pytest.approx(lr, rel=1e-3)
    _assert_pngs(tmp_path, "bias_correction.png")


# Why vmap and the loop differ at all: XLA sums the batched (vmapped) matrix
# products of the MLP in another order than the single ones, so a step's loss
# differs by float32 rounding (measured after 1 step: at most 3e-7 relative,
# 2-3 ulps; 20 of 42 models bit-identical). Training amplifies it, most at the
# largest learning rate: after 5 steps the worst model (lr 0.1, decay 0.999)
# differs by 1.6e-5, the median by 1e-7. The same grid in float64 gives
# 4.7e-16 after 1 step and 3.3e-13 after 5: smaller by float64's epsilon over
# float32's (2^-29 ~ 2e-9), so the gap is rounding, amplified about 50-700x
# in 5 steps, not a different computation. rtol 1e-3 leaves 60x margin over
# the measurement for another CPU's rounding; every model must agree (the
# example's own 1% count must be 42 of 42).
_SWEEP_RTOL = 1e-3


def test_hparam_sweep_vmap_agrees_with_one_by_one(monkeypatch, capsys, tmp_path):
    monkeypatch.syspath_prepend(str(_EXAMPLES))
    example = importlib.import_module("hparam_sweep_vmap")
    results = []

    def recorded_sweep(*args, **kwargs):
        results.append(original_sweep(*args, **kwargs))
        return results[-1]

    original_sweep = example.sweep
    monkeypatch.setattr(example, "sweep", recorded_sweep)
    argv = ["--steps", 5, "--repeats", 1, "--out", tmp_path]
    out = _run(monkeypatch, capsys, "hparam_sweep_vmap", *argv)

    phases = {r[0]: (float(r[1]), float(r[2])) for r in _table(out)}
    assert set(phases) == {
        "vmap compile",
        "vmap run",
        "one-by-one compile",
        "one-by-one run",
    }
    assert all(wall > 0 for wall, _ in phases.values())
    assert re.search(r"speed-up .*: [\d.]+x wall clock", out)
    agree, total = map(int, re.search(r"both ways: (\d+) of (\d+)", out).groups())
    assert (agree, total) == (42, 42)
    [(batched, one_by_one, _)] = results
    assert batched.shape == (42,) and np.all(np.isfinite(batched))
    np.testing.assert_allclose(batched, one_by_one, rtol=_SWEEP_RTOL, atol=0)
    _assert_pngs(tmp_path, "hparam_sweep.png")


def test_sharded_training_keeps_state_sharded(monkeypatch, capsys, tmp_path):
    # tests/conftest.py gave this process eight CPU devices before JAX started.
    out = _run(
        monkeypatch, capsys, "sharded_training", "--steps", 10, "--out", tmp_path
    )
    assert "DIFFERS" not in out
    assert "all 12 parameter-shaped state leaves" in out
    assert "parameters and state keep these shardings: True" in out
    first, last = map(
        float, re.search(r"first step (\S+), last step (\S+)", out).groups()
    )
    assert last < first
    _assert_pngs(tmp_path, "sharded_loss.png")


def test_compact_state_convergence_compares_three_storages(
    monkeypatch, capsys, tmp_path
):
    # Fast mode: 30 training steps and a 300-step drift. Too early to hold
    # the storages to the convergence targets (tests/test_compact_convergence.py
    # does, at 200 steps); here: every row is there, finite, and trained.
    out = _run(
        monkeypatch, capsys, "compact_state_convergence", "--fast", "--out", tmp_path
    )
    # _table reads on into the drift table; the training rows come first.
    rows = [r for r in _table(out) if r[0] in ("MLP", "CNN")]
    assert len(rows) == 8
    assert [(r[0], r[1]) for r in rows[:4]] == [
        ("MLP", "float32"),
        ("MLP", "float32, init +1 ulp"),
        ("MLP", "bf16"),
        ("MLP", "int8"),
    ]
    for model, storage, *losses in rows:
        seed_losses = [float(x) for x in losses[:3]]
        assert all(0 < x < math.log(10) for x in seed_losses), (model, storage)
        assert losses[-1] == "yes", (model, storage)  # Every step finite.
    _assert_pngs(tmp_path, "compact_state_convergence.png")
