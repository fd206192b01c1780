"""Compact RMSprop state trains like float32 state: two models, three seeds, drift.

``optax_rmsprop.rmsprop`` stores its average of squared gradients ``nu`` as
float32 (the default), as bf16 with stochastic rounding
(``nu_dtype=jnp.bfloat16``) or as block-wise 8-bit codes (``nu_dtype="int8"``).
This script measures the compact storages against float32 storage.

1. **Convergence.** Two different models learn scikit-learn's bundled 8x8
   digits (the fixed stratified 75/25 split of ``_common``; nothing is
   downloaded) with ``rmsprop(1e-3)``, mini-batches of 64 and ``lax.scan``
   over the steps, every storage in lockstep on the same batches (one jit
   per model):

   - the tanh MLP 64-128-64-10 of ``train_digits.py``;
   - a small CNN: 3x3 convolution to 16 channels, ReLU, 2x2 average pooling,
     3x3 convolution to 32 channels, ReLU, dense 512 -> 10.

   int8 storage quantises only leaves of at least 4096 elements (smaller ones
   stay float32), so both models have such leaves, or their int8 runs would
   be float32 runs: the MLP's 64x128 and 128x64 weights (8192 elements each),
   the CNN's second kernel (3x3x16x32 = 4608) and dense weights (512x10 =
   5120). A seed fixes the initial parameters and the batch order, the same
   for every storage, so the float32 run of a seed is the reference for that
   seed. The table gives the final loss on the whole training set per seed,
   its relative difference to float32's, the largest over the seeds against
   the target (1% for bf16, 3% for int8), and whether any step's mini-batch
   loss was NaN or Inf. A control row, float32 storage started from weights
   one float32 ulp larger, shows how far an imperceptible perturbation alone
   moves the final loss: RMSprop's late loss spikes (``lr / sqrt(nu)`` grows
   as the gradients fade) make it large for a while, and no storage can be
   judged more finely than that.

2. **A drifting gradient scale.** ``--drift-steps`` (10^4) steps of
   ``scale_by_rms`` on one 8192-element leaf (32 int8 blocks) with gradients
   ``g_t = s_t * c * z_t``: ``z_t`` standard normal, ``c`` a fixed factor per
   element spread over two decades, and ``s_t = 10**(-2 cos(2 pi t / T))``
   rising from 0.01 to 100 and falling back, so ``nu`` drifts over eight
   decades and, on the way down, faster than an average with decay 0.999
   forgets. Every storage sees the same gradients, at decays 0.9, 0.99 and
   0.999, for each seed (a seed fixes ``c`` and the draws). Per step: the
   relative error of the element mean of the stored ``nu`` against
   float32's (does the average keep tracking?), the RMS over elements of the
   relative difference to float32's ``nu`` (the noise the rounding leaves in
   each element) and the ratio of the update's RMS to float32's. The table
   gives the worst over the seeds. int8's largest noise comes from its first
   steps: a block stored as zeros has scale 1, and first averages below
   2**-26 of that round to 0 or the smallest code (unbiased, but far off per
   element), hence also the noise from step 10 on.

Writes ``compact_state_convergence.png`` to ``--out``: seed 0's mini-batch
loss for every model and storage, and the drift run's mean-``nu`` error and
update ratio. Run ``python examples/compact_state_convergence.py`` (about a
minute on two cores) or with ``--fast`` for a smoke test.
"""

import argparse
import functools

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_rmsprop
from optax_rmsprop import _storage

STORAGES = {"float32": None, "bf16": jnp.bfloat16, "int8": "int8"}
CONTROL = "float32, init +1 ulp"
TARGETS = {"bf16": 0.01, "int8": 0.03}  # Relative final-loss difference.
LEARNING_RATE, DECAY, BATCH_SIZE = 1e-3, 0.9, 64  # rmsprop's default decay.
# Weight shapes: (fan-in dimensions..., fan-out).
MLP_SHAPES = {"layer_0": (64, 128), "layer_1": (128, 64), "layer_2": (64, 10)}
CNN_SHAPES = {"conv_0": (3, 3, 1, 16), "conv_1": (3, 3, 16, 32), "dense": (512, 10)}
DRIFT_SIZE, DRIFT_DECAYS = 8192, (0.9, 0.99, 0.999)
_BANK = 1 << 16  # Normal draws the drift's z_t are windows of.


def init_params(model, seed):
    """``{layer: {"w", "b"}}`` for ``model``: LeCun-normal weights, zero biases.

    Drawn with NumPy: JAX's random numbers would cost a compilation per model.
    """
    rng = np.random.default_rng(seed)
    lecun = lambda shape: rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
    return {
        name: {
            "w": jnp.asarray(lecun(shape), jnp.float32),
            "b": jnp.zeros(shape[-1]),
        }
        for name, shape in MODELS[model][0].items()
    }


def conv3x3(x, layer):
    """A "same" 3x3 convolution of NHWC ``x``, then ReLU.

    One matrix product over the nine shifted copies of ``x``: on XLA:CPU it
    trains several times faster than ``lax.conv_general_dilated``.
    """
    height, width = x.shape[1:3]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    shifted = [
        padded[:, i : i + height, j : j + width] for i in range(3) for j in range(3)
    ]
    kernel = layer["w"].reshape(-1, layer["w"].shape[-1])
    return jax.nn.relu(jnp.concatenate(shifted, axis=-1) @ kernel + layer["b"])


def cnn_logits(params, x):
    """Flattened 8x8 images -> conv 16 -> 2x2 mean pool -> conv 32 -> dense 10."""
    x = conv3x3(x.reshape(-1, 8, 8, 1), params["conv_0"])
    x = x.reshape(-1, 4, 2, 4, 2, x.shape[-1]).mean(axis=(2, 4))
    x = conv3x3(x, params["conv_1"]).reshape(x.shape[0], -1)
    return x @ params["dense"]["w"] + params["dense"]["b"]


def cnn_loss(params, x, y):
    """Mean softmax cross-entropy."""
    logits = cnn_logits(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# name -> (weight shapes, loss(params, x, y)). The MLP is _common's.
MODELS = {"MLP": (MLP_SHAPES, _common.loss_fn), "CNN": (CNN_SHAPES, cnn_loss)}


@functools.cache
def training_set():
    """The digits training images and labels (``_common.digits_data``)."""
    return _common.digits_data()[0]


def train(model, seeds, steps, decay=DECAY, control=True):
    """Trains ``model`` with every storage in lockstep, once per seed.

    The storages (and, with ``control``, float32 storage from weights one
    ulp larger) train side by side on the same batches: one vmapped forward
    and backward pass, then each its own optimizer step. One compilation
    serves every seed.

    Returns:
        ``{storage: (losses, final)}`` as NumPy arrays: the mini-batch loss
        of every step, shape ``(len(seeds), steps)``, and the loss on the
        whole training set after the last step, shape ``(len(seeds),)``.
    """
    names = [*STORAGES]
    if control:
        names.insert(1, CONTROL)  # Next to the float32 row it perturbs.
    x, y = training_set()
    run = _runner(model, tuple(names), decay)
    results = []
    for seed in seeds:
        params = init_params(model, seed)
        nudged = jax.tree.map(lambda w: jnp.nextafter(w, jnp.inf), params)
        starts = [nudged if name == CONTROL else params for name in names]
        batches = _common.batch_indices(len(x), BATCH_SIZE, steps, seed)
        results.append(jax.device_get(run(_stack(starts), batches, x, y)))
    losses, final = (np.stack(r, axis=1) for r in zip(*results))
    return {name: (losses[k], final[k]) for k, name in enumerate(names)}


@functools.cache
def _runner(model, names, decay):
    """``run(stacked params, batches, x, y) -> (step losses, final losses)``."""
    _, loss_fn = MODELS[model]
    txs = [
        optax_rmsprop.rmsprop(LEARNING_RATE, decay=decay, nu_dtype=nu_dtype)
        for nu_dtype in (STORAGES.get(name) for name in names)  # Control: None.
    ]
    losses_and_grads = jax.vmap(jax.value_and_grad(loss_fn), in_axes=(0, None, None))

    def step(carry, batch):
        params, states = carry
        losses, grads = losses_and_grads(params, *batch)
        stepped = [
            _apply(tx, _take(grads, k), state, _take(params, k))
            for k, (tx, state) in enumerate(zip(txs, states))
        ]
        params, states = zip(*stepped)
        return (_stack(params), list(states)), losses

    # The data are arguments, not constants: XLA compiles big constants slowly.
    @jax.jit
    def run(params, batches, x, y):
        states = [tx.init(_take(params, k)) for k, tx in enumerate(txs)]
        carry, losses = jax.lax.scan(step, (params, states), (x[batches], y[batches]))
        final = jax.vmap(loss_fn, in_axes=(0, None, None))(carry[0], x, y)
        return losses.T, final

    return run


def _apply(tx, grads, state, params):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def _stack(trees):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _take(tree, k):
    return jax.tree.map(lambda leaf: leaf[k], tree)


def convergence(models, seeds, steps, decay=DECAY, control=True):
    """``{(model, storage): (losses, final)}`` for every model and storage."""
    return {
        (model, name): result
        for model in models
        for name, result in train(model, seeds, steps, decay, control).items()
    }


def relative_differences(runs):
    """``{(model, storage): (final - float32's final) / float32's}`` per seed."""
    return {
        (model, storage): final / runs[model, "float32"][1] - 1
        for (model, storage), (_, final) in runs.items()
    }


def drift(steps, seeds=(0,), size=DRIFT_SIZE, decays=DRIFT_DECAYS):
    """Float32, bf16 and int8 ``scale_by_rms`` on the same drifting gradients.

    A seed fixes the per-element factors ``c`` and the draws ``z_t``.

    Returns:
        ``{storage: {figure: array (len(seeds), steps, len(decays))}}`` for
        bf16 and int8, figures ``"mean_error"`` (element mean of the stored
        ``nu`` over float32's, minus 1), ``"noise"`` (RMS over elements of
        the relative difference to float32's ``nu``), ``"update_ratio"``
        (update RMS over float32's) and ``"finite"`` (stored ``nu`` and
        update all finite).
    """
    run = _drift_run(size, tuple(decays))
    per_seed = [jax.device_get(run(_drift_inputs(steps, size, s))) for s in seeds]
    return jax.tree.map(lambda *x: np.stack(x), *per_seed)


def _drift_inputs(steps, size, seed):
    rng = np.random.default_rng(seed)
    as_f32 = lambda x: jnp.asarray(x, jnp.float32)
    # z_t is a window of a bank of normal draws at a random offset: for each
    # element, independent draws over time, at a quarter of the cost of
    # drawing `size` fresh normals per step on a CPU.
    return {
        "log_scale": as_f32(-2 * np.cos(2 * np.pi * np.arange(steps) / steps)),
        "factor": as_f32(10.0 ** rng.uniform(-1, 1, size)),
        "bank": as_f32(rng.standard_normal(_BANK + size)),
        "offset": jnp.asarray(rng.integers(0, _BANK, steps), jnp.int32),
    }


@functools.cache
def _drift_run(size, decays):
    """The jitted drift run, ``inputs -> figures``, for :func:`drift`."""
    decays = jnp.asarray(decays, jnp.float32)

    def step(states, inputs, bank, factor):
        z = jax.lax.dynamic_slice(bank, (inputs["offset"],), (size,))
        grads = 10.0 ** inputs["log_scale"] * factor * z
        out = {
            name: _batched_update(nu_dtype)(decays, grads, states[name])
            for name, nu_dtype in STORAGES.items()
        }
        figures = {name: _drift_figures(out["float32"], out[name]) for name in TARGETS}
        return {name: state for name, (_, state) in out.items()}, figures

    @jax.jit
    def run(inputs):
        init = {
            name: _batched_init(nu_dtype, size, len(decays))
            for name, nu_dtype in STORAGES.items()
        }
        per_step = {k: inputs[k] for k in ("offset", "log_scale")}
        body = functools.partial(step, bank=inputs["bank"], factor=inputs["factor"])
        return jax.lax.scan(body, init, per_step)[1]

    return run


def _batched_update(nu_dtype):
    """``update(decays, grads, states)``: one state per decay, shared gradients."""

    def update(decay, grads, state):
        tx = optax_rmsprop.scale_by_rms(decay=decay, nu_dtype=nu_dtype)
        return tx.update(grads, state)

    return jax.vmap(update, in_axes=(0, None, 0))


def _batched_init(nu_dtype, size, n):
    state = optax_rmsprop.scale_by_rms(nu_dtype=nu_dtype).init(jnp.zeros(size))
    return jax.tree.map(lambda x: jnp.stack([x] * n), state)


def _drift_figures(reference, compact):
    """Per decay: mean-``nu`` error, per-element noise, update RMS ratio, finite."""
    (u_ref, state_ref), (u, state) = reference, compact
    nu_ref, nu = state_ref.nu, jax.vmap(_storage.decode)(state.nu)
    rms = lambda x: jnp.sqrt(jnp.mean(x**2, axis=-1))
    finite = lambda x: jnp.all(jnp.isfinite(x), axis=-1)
    return {
        "mean_error": jnp.mean(nu, axis=-1) / jnp.mean(nu_ref, axis=-1) - 1,
        "noise": rms((nu - nu_ref) / nu_ref),
        "update_ratio": rms(u) / rms(u_ref),
        "finite": finite(nu) & finite(u),
    }


def window_means(x, windows=10):
    """Means of ``x`` (steps first) over ``windows`` equal stretches of steps."""
    usable = len(x) // windows * windows
    return x[:usable].reshape(windows, -1, *x.shape[1:]).mean(axis=1)


def convergence_table(runs, seeds):
    differences = relative_differences(runs)
    rows = []
    for (model, storage), (losses, final) in runs.items():
        relative = differences[model, storage]
        worst = float(np.max(np.abs(relative)))
        target = TARGETS.get(storage)
        verdict = "-" if target is None else ("yes" if worst <= target else "MISSED")
        finite = "yes" if np.all(np.isfinite(losses)) else "NO"
        rows.append(
            [model, storage, *map(float, final)]
            + [f"{v:+.3%}" for v in relative]
            + [f"{worst:.3%}", verdict, finite]
        )
    header = (
        ["model", "storage"]
        + [f"loss, seed {s}" for s in seeds]
        + [f"vs float32, seed {s}" for s in seeds]
        + ["max abs vs float32", "within target", "every step finite"]
    )
    return _common.markdown_table(header, rows)


def drift_table(figures):
    """One row per storage and decay; each figure the worst over the seeds."""
    worst = lambda x: f"{np.max(np.abs(x)):.3%}"
    rows = []
    for storage, figs in figures.items():
        for i, decay in enumerate(DRIFT_DECAYS):
            error, noise = figs["mean_error"][..., i], figs["noise"][..., i]
            ratio = figs["update_ratio"][..., i]
            tenths = [window_means(r) for r in ratio]
            rows.append(
                [storage, decay, worst(error[:, -1]), worst(error)]
                + [worst(noise[:, -1]), worst(np.median(noise, axis=1))]
                + [worst(noise), worst(noise[:, 10:])]
                + [worst(ratio.mean(axis=1) - 1), worst(np.subtract(tenths, 1))]
                + ["yes" if np.all(figs["finite"][..., i]) else "NO"]
            )
    header = [
        "storage",
        "decay",
        "mean nu error, end",
        "mean nu error, max",
        "noise, end",
        "noise, median",
        "noise, max",
        "noise, max from step 10",
        "update RMS ratio - 1, run mean",
        "same, max over tenths of the run",
        "all finite",
    ]
    return _common.markdown_table(header, rows)


def plot(runs, figures, out_dir):
    fig, axes = _common.new_figure(ncols=3, width=16, height=4.8)
    _plot_losses(axes[0], runs)
    _plot_drift(axes[1:], figures)
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="x-small")
    return _common.save_figure(fig, out_dir, "compact_state_convergence.png")


_STYLES = {"float32": "-", "bf16": "--", "int8": ":"}


def _plot_losses(ax, runs):
    for (model, storage), (losses, _) in runs.items():
        if storage in _STYLES:  # Not the control: it would hide float32's line.
            color = f"C{list(MODELS).index(model)}"
            smooth = np.convolve(losses[0], np.ones(20) / 20, mode="valid")
            label = f"{model}, {storage}"
            ax.plot(smooth, _STYLES[storage], color=color, label=label)
    ax.set(
        yscale="log",
        xlabel="step",
        ylabel="mini-batch loss (20-step mean)",
        title="Digits, seed 0, by storage",
    )


def _plot_drift(axes, figures):
    for storage, figs in figures.items():
        for i, decay in enumerate(DRIFT_DECAYS):
            style = {"color": f"C{i}", "linestyle": _STYLES[storage]}
            label = f"{storage}, decay {decay}"
            axes[0].plot(100 * figs["mean_error"][0, :, i], label=label, **style)
            ratio = figs["update_ratio"][0, :, i]
            smooth = np.convolve(ratio, np.ones(100) / 100, mode="valid")
            axes[1].plot(smooth, label=label, **style)
        peak = figs["noise"].shape[1] / 2  # The gradient scale's top.
    for ax in axes:
        ax.axvline(peak, color="gray", linestyle=":", linewidth=1)
    axes[0].set(
        xlabel="step (the scale rises to the dotted line, then falls)",
        ylabel="%",
        title="Drift, seed 0: element-mean nu vs float32's",
    )
    axes[1].set(
        xlabel="step",
        ylabel="ratio (100-step mean)",
        title="Drift, seed 0: update RMS over float32's",
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="training steps")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--decay", type=float, default=DECAY, help="training decay")
    parser.add_argument("--drift-steps", type=int, default=10_000, help="drift run")
    parser.add_argument("--fast", action="store_true", help="30 + 300 steps")
    parser.add_argument("--out", default="out", help="folder for the PNG file")
    args = parser.parse_args(argv)
    if args.fast:
        args.steps, args.drift_steps = 30, 300

    seeds = list(range(args.seeds))
    runs, seconds = _common.timed(
        lambda: convergence(MODELS, seeds, args.steps, args.decay)
    )
    print(
        f"\nDigits, {args.steps} steps of rmsprop({LEARNING_RATE}, "
        f"decay={args.decay}), batches of {BATCH_SIZE} ({seconds:.0f} s):\n"
    )
    print(convergence_table(runs, seeds))
    figures, seconds = _common.timed(lambda: drift(args.drift_steps, seeds))
    print(
        f"\nDrifting gradient scale, {args.drift_steps} steps, {DRIFT_SIZE} "
        f"elements, worst of seeds {seeds} ({seconds:.0f} s):\n"
    )
    print(drift_table(figures))
    print()
    plot(runs, figures, args.out)


if __name__ == "__main__":
    main()
