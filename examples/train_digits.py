"""The demo: RMSprop, AdaGrad, SGD with momentum and Adam train the same MLP.

A 64-128-64-10 tanh network learns scikit-learn's bundled 8x8 digits (1797
images, standardised, a fixed stratified 75/25 split; nothing is downloaded)
with mini-batches of 64 and a jitted step. Every optimizer starts from the
same parameters and sees the same batches, at a learning rate tuned by hand on
a coarse grid. The script prints a markdown table of the final train / test
loss and accuracy and writes two figures to ``--out``:

- ``digits_loss.png``: the full training loss against the step (log scale);
- ``digits_effective_lr.png``: the median effective learning rate of each
  weight matrix, ``lr / sqrt(nu + eps)`` read from the RMSprop state with
  :func:`optax_rmsprop.effective_learning_rate`, against AdaGrad's
  ``lr / sqrt(sum_of_squares + eps)``. AdaGrad's sum only grows, so its step
  can only shrink, and it freezes once the gradients fade; RMSprop's average
  forgets, so its step follows the current gradient scale, ``lr / rms(g)``,
  and grows a hundredfold as the network fits the training set, up to the
  cap ``lr / sqrt(eps)`` that ``eps`` sets. That is why RMSprop at lr 1e-3
  drives the training loss far lower than the others here.

Run ``python examples/train_digits.py`` (about 20 s on two idle CPU cores) or
with ``--steps 20`` for a smoke test.
"""

import argparse

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_rmsprop

RMSPROP_DECAY, RMSPROP_EPS = 0.9, 1e-8  # optax_rmsprop.rmsprop's defaults.
ADAGRAD_EPS = 1e-7  # optax.adagrad's default.
HIDDEN = (128, 64)  # Hidden layer widths: 64 -> 128 -> 64 -> 10.

# name -> (learning rate, factory). RMSprop and Adam at the usual 1e-3; SGD and
# AdaGrad at a rate checked on a coarse {1, 3} x 10^k grid. Digits is easy: every
# rate within 3x of these reaches about 97 % test accuracy in 2000 steps.
# AdaGrad's sum starts at 0 (as in PyTorch and Duchi et al.), not at optax's
# 0.1: this network's gradients are ~1e-3 to 1e-2 per element, so a 0.1 start
# outweighs 2000 steps of squares and hides AdaGrad's shrinking step.
OPTIMIZERS = {
    "RMSprop": (1e-3, lambda lr: optax_rmsprop.rmsprop(lr)),
    "AdaGrad": (
        0.03,
        lambda lr: optax.adagrad(lr, initial_accumulator_value=0.0, eps=ADAGRAD_EPS),
    ),
    "SGD + momentum 0.9": (0.03, lambda lr: optax.sgd(lr, momentum=0.9)),
    "Adam": (1e-3, lambda lr: optax.adam(lr)),
}
# Optimizers whose effective learning rate is plotted, and how to read it.
EFFECTIVE_LR = {
    "RMSprop": lambda state, lr: optax_rmsprop.effective_learning_rate(
        state,
        lr,
        decay=RMSPROP_DECAY,
        eps=RMSPROP_EPS,
        eps_in_sqrt=True,
        bias_correction=False,
    ),
    "AdaGrad": lambda state, lr: adagrad_effective_learning_rate(
        state, lr, eps=ADAGRAD_EPS
    ),
}


def adagrad_effective_learning_rate(opt_state, learning_rate, eps):
    """``lr / sqrt(sum_of_squares + eps)``, exactly as ``optax.scale_by_rss`` scales.

    Like optax, 0 where the sum is still 0 (no gradient yet: no step). The
    ``ScaleByRssState`` is found by its type, wherever it sits in the chain.
    """
    is_rss = lambda node: isinstance(node, optax.ScaleByRssState)
    rss_state = next(
        node for node in jax.tree.leaves(opt_state, is_leaf=is_rss) if is_rss(node)
    )
    return jax.tree.map(
        lambda s: jnp.where(s > 0, learning_rate * jax.lax.rsqrt(s + eps), 0.0),
        rss_state.sum_of_squares,
    )


def run(steps, seed, batch_size=64):
    """Trains every optimizer; returns the train and test data, the histories."""
    train, test = _common.digits_data()
    params = _common.init_mlp(jax.random.PRNGKey(seed), HIDDEN)
    # Log on a geometric grid (the effective-lr plot is log-log) and every
    # steps // 200 steps (the loss plot is not).
    geometric = np.geomspace(1, max(steps, 1), 60).astype(int)
    log_at = set(geometric.tolist()) | set(range(0, steps + 1, max(1, steps // 200)))
    histories = {}
    for name, (lr, factory) in OPTIMIZERS.items():
        probe = None
        if name in EFFECTIVE_LR:
            read = EFFECTIVE_LR[name]
            probe = lambda state, read=read, lr=lr: _common.weight_medians(
                read(state, lr)
            )
        histories[name] = _common.fit(
            factory(lr),
            params,
            train,
            steps,
            batch_size=batch_size,
            seed=seed,
            log_at=log_at,
            probe=probe,
            desc=f"{name:>18}",
        )
    return train, test, histories


def results_table(train, test, histories):
    rows = []
    for name, history in histories.items():
        train_loss, train_accuracy = _common.evaluate(history["params"], *train)
        test_loss, test_accuracy = _common.evaluate(history["params"], *test)
        rows.append(
            [
                name,
                OPTIMIZERS[name][0],
                float(train_loss),
                float(test_loss),
                f"{float(train_accuracy):.2%}",
                f"{float(test_accuracy):.2%}",
            ]
        )
    header = ["optimizer", "lr", "train loss", "test loss", "train acc", "test acc"]
    return _common.markdown_table(header, rows)


def plot_loss(histories, out_dir):
    fig, ax = _common.new_figure()
    for name, history in histories.items():
        lr = OPTIMIZERS[name][0]
        ax.plot(history["steps"], history["train_loss"], label=f"{name} (lr {lr:g})")
    ax.set_yscale("log")
    ax.set_xlabel("step (mini-batches of 64)")
    ax.set_ylabel("training loss (full training set)")
    ax.set_title("Digits MLP 64-128-64-10: training loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _common.save_figure(fig, out_dir, "digits_loss.png")


def plot_effective_lr(histories, out_dir):
    fig, ax = _common.new_figure(width=7.2, height=5.2)
    sizes = (_common.N_FEATURES, *HIDDEN, _common.N_CLASSES)
    lines = {}
    for name, style in (("RMSprop", "-"), ("AdaGrad", "--")):
        steps = np.asarray(histories[name]["steps"][1:])  # Skip the empty state.
        probes = histories[name]["probes"][1:]
        for i, layer in enumerate(probes[0]):
            label = f"{name}, {layer} ({sizes[i]}x{sizes[i + 1]})"
            medians = [float(p[layer]) for p in probes]
            (lines[i, name],) = ax.plot(
                steps, medians, style, color=f"C{i}", label=label
            )
    lr = OPTIMIZERS["RMSprop"][0]
    ax.axhline(lr / np.sqrt(RMSPROP_EPS), color="gray", linestyle=":", linewidth=1)
    ax.annotate(
        "RMSprop's cap lr / sqrt(eps): gradients ~ 0",
        (0, lr / np.sqrt(RMSPROP_EPS)),
        xycoords=("axes fraction", "data"),
        xytext=(6, -12),
        textcoords="offset points",
        ha="left",
        color="gray",
        fontsize="small",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("median effective learning rate")
    ax.set_title(
        "Effective learning rate per weight matrix (median over its elements)\n"
        "RMSprop lr / sqrt(nu + eps) vs AdaGrad lr / sqrt(sum g² + eps)"
    )
    ax.grid(True, which="both", alpha=0.3)
    # One legend row per optimizer (legends fill column by column).
    handles = [
        lines[i, n] for i in range(len(sizes) - 1) for n in ("RMSprop", "AdaGrad")
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize="small")
    return _common.save_figure(fig, out_dir, "digits_effective_lr.png")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="steps per optimizer")
    parser.add_argument("--seed", type=int, default=0, help="init and batch order")
    parser.add_argument("--out", default="out", help="folder for the PNG files")
    args = parser.parse_args(argv)

    train, test, histories = run(args.steps, args.seed)
    first = next(iter(histories.values()))["train_loss"][0]
    print(
        f"\nDigits, {len(train[0])} train / {len(test[0])} test images, "
        f"{args.steps} steps per optimizer."
    )
    print(f"Initial training loss (same parameters for all): {first:.4f}\n")
    print(results_table(train, test, histories))
    print()
    plot_loss(histories, args.out)
    plot_effective_lr(histories, args.out)


if __name__ == "__main__":
    main()
