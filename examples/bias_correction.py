"""The start-up transient of RMSprop, with and without ``bias_correction``.

RMSprop's average of squares starts at zero, so after ``t`` steps of a
constant gradient ``g`` it holds only ``(1 - decay**t) g**2``. Without bias
correction the step is therefore

    lr * g / sqrt((1 - decay**t) g**2) = lr / sqrt(1 - decay**t),

``lr / sqrt(1 - decay)`` on the first step: 3.2 lr for decay 0.9, 10 lr for
0.99 and 32 lr for 0.999, and it takes ~``1 / (1 - decay)`` steps to come down
to ``lr``. With ``bias_correction=True`` the average is divided by
``1 - decay**t`` and every step is ``lr`` from the first.

Feeds a constant gradient for ``--steps`` steps, plots the step size over lr
for three decays and prints the first step next to these formulas, and the
effective learning rate that :func:`optax_rmsprop.effective_learning_rate`
reads from the state (times ``g``, it is the step). Writes
``bias_correction.png`` to ``--out``.
"""

import argparse

import _common
import jax
import jax.numpy as jnp
import numpy as np

import optax_rmsprop

DECAYS = (0.9, 0.99, 0.999)


def steps_and_effective_lrs(tx, gradient, steps, lr, decay, corrected):
    """``|update|`` and the state's effective lr at each of ``steps`` steps."""
    g = jnp.full((), gradient)

    def step(state, _):
        updates, state = tx.update(g, state)
        effective = optax_rmsprop.effective_learning_rate(
            state,
            lr,
            decay=decay,
            eps=1e-8,  # rmsprop's default, as built below
            eps_in_sqrt=True,
            bias_correction=corrected,
        )
        return state, (jnp.abs(updates), effective)

    _, (sizes, effective) = jax.lax.scan(step, tx.init(g), length=steps)
    return np.asarray(sizes), np.asarray(effective)


def plot(results, lr, out_dir):
    fig, ax = _common.new_figure(width=7.0, height=4.6)
    for i, decay in enumerate(DECAYS):
        plain, corrected = results[decay, False][0], results[decay, True][0]
        t = np.arange(1, len(plain) + 1)
        ax.plot(t, plain / lr, color=f"C{i}", label=f"decay {decay:g}, plain")
        # The corrected curves coincide at 1; staggered markers keep all visible.
        ax.plot(
            t,
            corrected / lr,
            "--",
            color=f"C{i}",
            marker="o",
            markevery=(3 * i, 10),
            markersize=4,
            label=f"decay {decay:g}, corrected",
        )
    ax.set_yscale("log")
    ax.set_xlabel("step t (constant gradient)")
    ax.set_ylabel("step size / lr")
    ax.set_title(
        "Start-up transient: plain steps are lr / sqrt(1 - decay^t),\n"
        "bias-corrected steps are lr from the first"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(ncols=3, fontsize="small", loc="upper right")
    ax.set_ylim(0.8, 60)
    return _common.save_figure(fig, out_dir, "bias_correction.png")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--gradient", type=float, default=1.0, help="constant g")
    parser.add_argument("--out", default="out", help="folder for the PNG file")
    args = parser.parse_args(argv)

    lr, results = args.learning_rate, {}
    for decay in DECAYS:
        for corrected in (False, True):
            tx = optax_rmsprop.rmsprop(lr, decay=decay, bias_correction=corrected)
            results[decay, corrected] = steps_and_effective_lrs(
                tx, args.gradient, args.steps, lr, decay, corrected
            )

    g = abs(args.gradient)
    header = [
        "decay",
        "plain step 1",
        "lr / sqrt(1 - decay)",
        "eff. lr x g",
        "corrected step 1",
        "lr",
        "eff. lr x g",
        f"plain step {args.steps}",
    ]
    rows = []
    for decay in DECAYS:
        (plain, plain_lr), (fixed, fixed_lr) = results[decay, 0], results[decay, 1]
        rows.append(
            [
                decay,
                float(plain[0]),
                lr / np.sqrt(1 - decay),
                float(plain_lr[0] * g),
                float(fixed[0]),
                lr,
                float(fixed_lr[0] * g),
                float(plain[-1]),
            ]
        )
    print(f"Constant gradient g = {args.gradient:g}, lr = {lr:g}, eps = 1e-8.\n")
    print(_common.markdown_table(header, rows))
    print()
    plot(results, lr, args.out)


if __name__ == "__main__":
    main()
