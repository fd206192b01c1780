"""Compact storage trains like float32 storage and tracks a drifting scale.

The convergence targets of the compact-state design, checked on the models
and the drift problem of ``examples/compact_state_convergence.py`` (at fewer
training steps than the script's defaults):

- on the digits MLP and a small CNN trained by ``rmsprop(1e-3)`` at its
  default decay 0.9, for seeds 0, 1 and 2, the final training loss with
  ``nu_dtype=jnp.bfloat16`` is within 1% and with
  ``"int8"`` within 3% of float32 storage's for the same seed (same initial
  parameters, same batches), and no step's loss is NaN or Inf;
- over 10^4 steps of gradients whose scale drifts over four decades (eight
  for ``nu``), seeds 0, 1 and 2, decays 0.9, 0.99 and 0.999, the compact
  average keeps tracking float32's: its element mean, and the RMS of the
  update it gives, stay within the same 1% / 3%, and nothing is NaN or Inf.
  int8 misses at decay 0.999, and its update also at 0.99: there the tests
  hold it to the looser bounds the README documents (int8 is recommended for
  decay <= 0.9), so the limitation is stated, measured and cannot grow
  unnoticed.

Reference values are float32-storage runs of the same problem.
"""

import importlib
import math
import pathlib

import jax
import numpy as np
import pytest

import optax_rmsprop

_EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
_MODELS = ["MLP", "CNN"]
_SEEDS = [0, 1, 2]
# 200 steps take the loss from log(10) = 2.3 (a fresh ten-class classifier)
# to about 0.05 (MLP) and 0.08 (CNN): well into training, compiling in
# seconds.
_STEPS = 200
_DRIFT_STEPS = 10_000
# The targets: relative difference to float32 storage.
_TOLERANCES = [("bf16", 0.01), ("int8", 0.03)]
_DECAYS = [0.9, 0.99, 0.999]


@pytest.fixture(scope="module")
def example():
    """The example script, imported as a module (it imports ``_common``)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(_EXAMPLES))
        yield importlib.import_module("compact_state_convergence")


@pytest.fixture(scope="module")
def runs(example):
    """``{(model, storage): (per-step losses, final losses)}``, seeds 0-2."""
    return example.convergence(_MODELS, _SEEDS, _STEPS, control=False)


@pytest.fixture(scope="module")
def drift(example):
    """``{storage: {figure: (seeds, steps, decays)}}``: the 10^4-step drift."""
    assert list(example.DRIFT_DECAYS) == _DECAYS
    return example.drift(_DRIFT_STEPS, _SEEDS)


# --- the set-up is meaningful --------------------------------------------------


@pytest.mark.parametrize("model", _MODELS)
def test_each_model_has_leaves_that_int8_storage_quantises(example, model):
    # int8 keeps leaves under 4096 elements in float32: without a larger
    # leaf the int8 run would be a float32 run.
    params = example.init_params(model, seed=0)
    # Shapes only: eval_shape traces init without compiling it.
    state = jax.eval_shape(optax_rmsprop.rmsprop(1e-3, nu_dtype="int8").init, params)
    is_blocks = lambda x: isinstance(x, optax_rmsprop.Int8Blocks)
    leaves = jax.tree.leaves(state, is_leaf=is_blocks)
    quantised = [leaf for leaf in leaves if is_blocks(leaf)]
    assert len(quantised) >= 1


@pytest.mark.parametrize("model", _MODELS)
def test_float32_storage_trains_the_model(runs, model):
    # A fresh ten-class classifier starts near log(10) = 2.30; a tenth of
    # that means the comparison below is made well into training.
    _, final = runs[model, "float32"]
    assert np.all(final < math.log(10) / 10)


# --- convergence ---------------------------------------------------------------


@pytest.mark.parametrize("storage, tolerance", _TOLERANCES)
@pytest.mark.parametrize("model", _MODELS)
def test_final_training_loss_is_within_target_of_float32_storage(
    runs, model, storage, tolerance
):
    _, reference = runs[model, "float32"]
    _, final = runs[model, storage]
    relative = np.abs(final - reference) / reference
    assert np.all(relative <= tolerance), relative


@pytest.mark.parametrize("storage", ["float32", "bf16", "int8"])
@pytest.mark.parametrize("model", _MODELS)
def test_no_training_step_gives_a_nan_or_inf_loss(runs, model, storage):
    losses, final = runs[model, storage]
    assert losses.shape == (len(_SEEDS), _STEPS)
    assert np.all(np.isfinite(losses)) and np.all(np.isfinite(final))


# --- a drifting gradient scale -------------------------------------------------


def _cases(misses):
    """(storage, tolerance, decay) for every storage and decay; ``misses``
    maps a known miss to the documented bound it is held to instead."""
    return [
        pytest.param(
            storage,
            misses.get((storage, decay), tolerance),
            decay,
            id=f"{storage}-{decay}"
            + ("-documented_miss" * ((storage, decay) in misses)),
        )
        for storage, tolerance in _TOLERANCES
        for decay in _DECAYS
    ]


# Known misses, measured on seeds 0-2. int8's per-element noise grows with
# the decay's memory (about 20% at 0.99; at 0.999, 20% rising to 70% while
# the scale falls faster than the average forgets).
# - The element mean of 8192 such values is off by sqrt(E w^2) / E w *
#   sigma / sqrt(8192) ~ 2.1 * 0.7 / 90 ~ 1.7% (w = nu, spread over four
#   decades): 3.5% at worst at decay 0.999.
# - A noise sigma in nu raises the mean of g^2 / nu by about sigma^2
#   (Jensen), so the update RMS runs about sqrt(1 + sigma^2) times
#   float32's where the stored history dominates: several % too large.
# Measured worst over seeds 0-2: mean 3.5% at 0.999; update RMS 3.4% at 0.99
# and 19% at 0.999 (with the block scales at the block maxima, before they
# moved by powers of two: 3.3%, 3.9% and 23%). docs/compact_state.md states
# these figures.
_INT8_MEAN_BOUND = 0.05
_INT8_UPDATE_BOUNDS = {("int8", 0.99): 0.06, ("int8", 0.999): 0.30}


@pytest.mark.parametrize(
    "storage, tolerance, decay", _cases({("int8", 0.999): _INT8_MEAN_BOUND})
)
def test_element_mean_of_nu_tracks_float32_through_a_drifting_scale(
    drift, storage, tolerance, decay
):
    # Stochastic rounding is unbiased, so the element mean of the stored nu
    # differs from float32's only by the noise of a mean over 8192 elements;
    # a frozen or biased average would drift away by far more over 10^4
    # steps. Held at every step, for every seed, to the training-loss
    # targets.
    error = drift[storage]["mean_error"][..., _DECAYS.index(decay)]
    assert np.max(np.abs(error)) <= tolerance


@pytest.mark.parametrize(
    "storage, tolerance, decay",
    _cases(_INT8_UPDATE_BOUNDS),
)
def test_update_rms_tracks_float32_through_a_drifting_scale(
    example, drift, storage, tolerance, decay
):
    # The ratio of the update's RMS to float32's, averaged over each tenth
    # of the run (1000 steps): the step size a model would see.
    ratios = drift[storage]["update_ratio"][..., _DECAYS.index(decay)]
    for ratio in ratios:  # One seed at a time.
        assert np.max(np.abs(example.window_means(ratio) - 1)) <= tolerance


@pytest.mark.parametrize("storage", ["bf16", "int8"])
def test_drift_run_never_gives_a_nan_or_inf(drift, storage):
    shape = (len(_SEEDS), _DRIFT_STEPS, len(_DECAYS))
    assert drift[storage]["finite"].shape == shape
    assert np.all(drift[storage]["finite"])
