"""A badly scaled ravine: SGD oscillates or crawls, RMSprop moves evenly.

On ``f(x, y) = 0.5 * (100 x**2 + y**2)`` the curvature across the ravine (x)
is 100 times the curvature along it (y). Plain gradient descent is stable only
for ``lr < 2 / 100``: near that limit x flips sign every step and y still
shrinks by just ``1 - lr`` per step; a safe, smaller rate stops the zig-zag but
crawls along y. RMSprop divides each coordinate's gradient by its own running
RMS, so both coordinates move about ``lr`` per step, whatever their scale.

Plots the three trajectories from (1, 1) over the contours of f, and f against
the step; prints where each run ends. Writes ``ravine.png`` to ``--out``.
"""

import argparse

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_rmsprop

CURVATURE = jnp.array([100.0, 1.0])
START = jnp.array([1.0, 1.0])


def f(xy):
    return 0.5 * jnp.sum(CURVATURE * xy**2)


def trajectory(tx, steps):
    """The start and every iterate of ``tx`` on ``f``, shape (steps + 1, 2)."""

    def step(carry, _):
        xy, state = carry
        updates, state = tx.update(jax.grad(f)(xy), state, xy)
        xy = optax.apply_updates(xy, updates)
        return (xy, state), xy

    _, path = jax.lax.scan(step, (START, tx.init(START)), length=steps)
    return np.concatenate([START[None], np.asarray(path)])


def optimizers(args):
    return {
        f"SGD, lr {args.sgd_fast_lr:g} (near 2/100)": optax.sgd(args.sgd_fast_lr),
        f"SGD, lr {args.sgd_slow_lr:g}": optax.sgd(args.sgd_slow_lr),
        f"RMSprop, lr {args.rmsprop_lr:g}": optax_rmsprop.rmsprop(args.rmsprop_lr),
    }


def plot(paths, out_dir):
    fig, (ax, ax_loss) = _common.new_figure(
        ncols=2, width=11.0, height=4.6, width_ratios=(1.5, 1)
    )
    x, y = np.meshgrid(np.linspace(-1.2, 1.2, 300), np.linspace(-0.3, 1.15, 200))
    levels = np.geomspace(1e-3, 80, 14)
    ax.contour(x, y, 0.5 * (100 * x**2 + y**2), levels=levels, colors="0.75")
    ax.plot(*START, "ko")
    ax.plot(0, 0, "k*", markersize=12)
    for i, (name, path) in enumerate(paths.items()):
        ax.plot(path[:, 0], path[:, 1], ".-", color=f"C{i}", markersize=3, label=name)
        losses = 0.5 * (np.asarray(CURVATURE) * path**2).sum(axis=1)
        ax_loss.plot(losses, color=f"C{i}", label=name)
    ax.set_aspect("equal")
    ax.set_xlabel("x (curvature 100)")
    ax.set_ylabel("y (curvature 1)")
    ax.set_title("Trajectories on f = 0.5 (100 x² + y²) from (1, 1)")
    ax.legend(loc="lower left", fontsize="small")
    ax_loss.set_yscale("log")
    ax_loss.set_ylim(1e-10, 200)  # RMSprop goes on down to ~1e-31.
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("f(x, y)")
    ax_loss.set_title("Objective (axis cut at 1e-10)")
    ax_loss.grid(True, which="both", alpha=0.3)
    ax_loss.legend(fontsize="small")
    return _common.save_figure(fig, out_dir, "ravine.png")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--sgd-fast-lr", type=float, default=0.019)
    parser.add_argument("--sgd-slow-lr", type=float, default=0.005)
    parser.add_argument("--rmsprop-lr", type=float, default=0.02)
    parser.add_argument("--out", default="out", help="folder for the PNG file")
    args = parser.parse_args(argv)

    paths = {name: trajectory(tx, args.steps) for name, tx in optimizers(args).items()}
    rows = []
    for name, path in paths.items():
        (x, y), value = path[-1], float(f(jnp.asarray(path[-1])))
        rows.append([name, float(x), float(y), value])
    print(f"After {args.steps} steps from (1, 1):\n")
    print(_common.markdown_table(["optimizer", "x", "y", "f(x, y)"], rows))
    print()
    plot(paths, args.out)


if __name__ == "__main__":
    main()
