"""The client examples: Flax NNX, Keras 3's JAX loop, multi-process JAX with orbax.

Each example's ``main()`` runs once per module in a fast mode (as in
``test_examples.py``) and returns the raw arrays it compared; the tests redo
the comparisons on those arrays rather than trusting the printed verdicts,
and check that the printed tables say the same. The examples need the
``clients`` extra (flax) on top of ``test`` and ``examples``; ``make test``
installs all three, and a missing one is a failure, not a skip.
"""

import contextlib
import importlib
import io
import pathlib

import flax  # noqa: F401  (the clients extra must be installed)
import jax
import numpy as np
import pytest

import optax_rmsprop

_EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"

_NNX_STEPS = 20
_KERAS_STEPS = 20
_KERAS_SETTINGS = [
    "defaults",
    "momentum 0.9 + centered",
    "weight decay 0.01",
    "exponential decay schedule",
]
_MULTIHOST_SETTINGS = [
    "default",
    "nesterov",
    "centered + bias correction",
    "bf16 storage",
    "int8 storage",
]
_MULTIHOST_STOP_AT = 5


def _run_main(name, *argv):
    """Imports ``examples/<name>.py`` and runs ``main(argv)``: (result, stdout)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(_EXAMPLES))
        module = importlib.import_module(name)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            result = module.main([str(a) for a in argv])
    return result, out.getvalue()


def _tables(out):
    """Every markdown table printed in ``out``: lists of rows of cells."""
    tables, rows = [], None
    for line in out.splitlines():
        if line.startswith("|"):
            rows = [] if rows is None else rows
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows is not None:
            tables.append(rows[2:])  # Without the header and the --- line.
            rows = None
    return tables + ([rows[2:]] if rows is not None else [])


# --- Flax NNX -------------------------------------------------------------


@pytest.fixture(scope="module")
def nnx_run():
    return _run_main("flax_nnx", "--steps", _NNX_STEPS)


def test_nnx_optimizer_losses_equal_optax_rmsprop_step_by_step(nnx_run):
    # Same model, batches and jitted step on both sides; for these settings
    # (no momentum, no bias correction) optax_rmsprop computes the very
    # float32 numbers optax.rmsprop does (tests/test_parity_with_optax.py).
    results, out = nnx_run
    assert list(results) == ["default", "centered"]
    for name, result in results.items():
        assert result["losses"].shape == (_NNX_STEPS,)
        np.testing.assert_array_equal(
            result["losses"], result["optax_losses"], strict=True, err_msg=name
        )
        assert result["losses"][-1] < result["losses"][0] / 2, name  # It learns.
    rows = _tables(out)[0]
    assert [(r[0], r[2]) for r in rows] == [
        ("default", "bit-identical"),
        ("centered", "bit-identical"),
    ]


def test_nnx_optimizer_state_is_optax_rmsprop_state(nnx_run):
    # nnx.Optimizer wraps each state leaf in a Variable; underneath, the tree
    # is the one optax.rmsprop builds (same classes, same nesting).
    results, _ = nnx_run
    for name, result in results.items():
        ours, theirs = result["optimizer"].opt_state, result["reference"].opt_state
        assert jax.tree.structure(ours) == jax.tree.structure(theirs), name


def test_effective_learning_rate_reads_the_state_inside_nnx_optimizer(nnx_run):
    results, out = nnx_run
    optimizer = results["default"]["optimizer"]
    lr = 1e-3  # The example's default --learning-rate.
    read = lambda opt_state: optax_rmsprop.effective_learning_rate(
        opt_state, lr, decay=0.9, eps=1e-8, eps_in_sqrt=True, bias_correction=False
    )
    rates = jax.jit(read)(optimizer.opt_state)  # One compilation, not one per op.
    # Reference: lr / sqrt(nu + eps) in float64 from the nu leaves the
    # optimizer holds (its state is (ScaleByRmsState, EmptyState, EmptyState)).
    nu = [np.asarray(v, np.float64) for v in jax.tree.leaves(optimizer.opt_state[0])]
    got = [np.asarray(r) for r in jax.tree.leaves(rates)]
    assert len(got) == len(nu) == 6  # Kernel and bias of three layers.
    for g, v in zip(got, nu):
        assert g.shape == v.shape
        # float32 rsqrt of float32 nu + eps: within a few float32 ulps.
        np.testing.assert_allclose(g, lr / np.sqrt(v + 1e-8), rtol=1e-6)
    # The example's own table: medians read from the nnx.Optimizer's state
    # agree with NumPy on optax.rmsprop's, element by element within 1e-6.
    rows = _tables(out)[1]
    assert [r[0] for r in rows] == ["hidden_0", "hidden_1", "output"]
    for layer, median, numpy_median, difference in rows:
        assert float(median) == pytest.approx(float(numpy_median), rel=1e-5), layer
        assert float(difference) <= 1e-6, layer
        assert 0 < float(median) <= lr / np.sqrt(1e-8)  # At most the cap.


# --- Keras 3 --------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_run():
    return _run_main("keras_jax_loop", "--steps", _KERAS_STEPS)


# Both runs do the same float32 maths in different programs: Keras updates
# variable by variable, optax composes a chain, and XLA fuses (and contracts
# into FMAs) each its own way. Per step each weight may therefore differ by
# a few roundings of the weight and of its update; eight float32 roundings
# (8 * 2**-24 = 4.8e-7) of the largest weight per step, over 20 steps, give
# 1e-5 of the largest weight. Measured here (jax 0.10.2, keras 3.15.1): at
# most 2e-6 for the weights and 4.3e-7 for the losses. A real difference is
# far larger: weight decay 0.01 at lr 3e-3 moves the weights by 6e-4 of their
# size over these 20 steps, epsilon outside the root changes every step.
_KERAS_TOLERANCE = 1e-5


@pytest.mark.parametrize("setting", _KERAS_SETTINGS)
def test_keras_stateless_loop_matches_compile_and_train_on_batch(keras_run, setting):
    results, _ = keras_run
    weights, losses, keras_weights, keras_losses = results[setting]
    assert losses.shape == keras_losses.shape == (_KERAS_STEPS,)
    np.testing.assert_allclose(losses, keras_losses, rtol=_KERAS_TOLERANCE)
    assert len(weights) == len(keras_weights) == 6
    scale = max(float(np.max(np.abs(w))) for w in keras_weights)
    for ours, theirs in zip(weights, keras_weights):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=_KERAS_TOLERANCE * scale)
    assert losses[-1] < losses[0] / 2  # Both trained.


def test_keras_table_lists_every_setting(keras_run):
    _, out = keras_run
    rows = _tables(out)[0]
    assert [r[0] for r in rows] == _KERAS_SETTINGS
    for row in rows:
        assert float(row[2]) <= _KERAS_TOLERANCE and float(row[3]) <= _KERAS_TOLERANCE


# --- multi-process JAX + orbax --------------------------------------------


@pytest.fixture(scope="module")
def multihost_run(tmp_path_factory):
    # 2 processes x 4 CPU devices; 10 steps, checkpoints at 5 and 10, the
    # preempted job stops after step 5 and new processes finish it.
    out = tmp_path_factory.mktemp("multihost")
    argv = ["--steps", 10, "--save-every", 5, "--stop-at", _MULTIHOST_STOP_AT]
    return _run_main("multihost_training", *argv, "--timeout", 180, "--out", out)


def _assert_same_params(a, b, setting):
    keys = sorted(k for k in a if k.startswith("params"))
    assert keys == sorted(k for k in b if k.startswith("params"))
    assert len(keys) == 6, setting  # w and b of three layers.
    for key in keys:
        np.testing.assert_array_equal(
            a[key], b[key], strict=True, err_msg=f"{setting} {key}"
        )


def test_multiprocess_job_ends_with_the_one_process_parameters(multihost_run):
    # Same 8-device mesh, same program, same (gloo) collectives: splitting the
    # devices over two processes must not change a bit.
    results, out = multihost_run
    assert list(results["one_process"]) == _MULTIHOST_SETTINGS
    for setting in _MULTIHOST_SETTINGS:
        _assert_same_params(
            results["uninterrupted"][setting], results["one_process"][setting], setting
        )
    assert [r[2] for r in _tables(out)[0]] == ["bit-identical"] * 5


def test_resumed_job_is_bit_identical_to_the_uninterrupted_one(multihost_run):
    results, out = multihost_run
    for setting in _MULTIHOST_SETTINGS:
        resumed = results["resumed"][setting]
        uninterrupted = results["uninterrupted"][setting]
        assert int(resumed["start"]) == _MULTIHOST_STOP_AT, setting
        _assert_same_params(resumed, uninterrupted, setting)
        np.testing.assert_array_equal(
            resumed["losses"], uninterrupted["losses"][_MULTIHOST_STOP_AT:]
        )
        assert uninterrupted["losses"][-1] < uninterrupted["losses"][0], setting
    assert [r[4] for r in _tables(out)[0]] == ["bit-identical"] * 5


def test_every_state_leaf_is_sharded_like_its_parameter(multihost_run):
    results, _ = multihost_run
    # Parameter-shaped state leaves: nu (6), plus the trace (nesterov) or mu
    # (centered); int8 codes count for their parameter too.
    expected = {"nesterov": 12, "centered + bias correction": 12}
    for setting, result in results["resumed"].items():
        matched, total = result["sharded_like"]
        assert total == expected.get(setting, 6), setting
        assert matched == total, setting


def test_compact_storages_are_what_the_state_holds(multihost_run):
    dtypes = {s: set(r["state_dtypes"]) for s, r in multihost_run[0]["resumed"].items()}
    assert "bfloat16" in dtypes["bf16 storage"]
    # int8 stores the two 8192-element matrices as uint8 codes (+ float32
    # scales) and keeps the leaves under 4096 elements in float32.
    assert {"uint8", "float32"} <= dtypes["int8 storage"]
    assert "uint8" not in dtypes["default"] and "bfloat16" not in dtypes["default"]


def _processes_mentioning(text):
    """PIDs of live processes whose command line contains ``text``."""
    pids = []
    for cmdline in pathlib.Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:  # The process ended meanwhile.
            pass
    return pids


def test_launcher_kills_its_processes_when_a_launch_times_out(tmp_path):
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(_EXAMPLES))
        launcher = importlib.import_module("multihost_training")
    # Two workers that cannot finish in 1 s (importing JAX alone takes longer).
    worker_args = [f"--checkpoint-dir={tmp_path / 'checkpoints'}"]
    with pytest.raises(TimeoutError, match="timed out"):
        launcher.launch("doomed", 2, 1, worker_args, tmp_path / "logs", timeout=1.0)
    assert _processes_mentioning(str(tmp_path)) == []
