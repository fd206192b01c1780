"""A (learning rate, decay) grid of RMSprop runs trained at once with ``vmap``.

``optax_rmsprop.rmsprop`` checks only plain-number hyperparameters, so the
learning rate and decay can be traced arrays: one function trains the digits
MLP (64-64-10, mini-batches of 64, ``lax.scan`` over the steps) for one
``(lr, decay)`` pair, and ``jax.jit(jax.vmap(train))`` trains the whole grid
in one call, every model from the same initial parameters.

The script times that call against the same grid run one pair at a time
through ``jax.jit(train)`` (compiled once: the hyperparameters are arrays, so
nothing recompiles), checks both give the same losses, prints the times and
the speed-up, and draws the final training loss over the grid as a heat map,
``hparam_sweep.png`` in ``--out``. (At the largest rates training is chaotic:
batched and single matrix products sum in different orders, and those float32
rounding differences can grow into a different final loss. The script counts
such models and shows the worst.)

What to expect from the timing: both ways do the same arithmetic, and XLA
already runs one small model's loop on a CPU with little overhead, so on two
CPU cores the vmapped call is no faster than the loop (0.8-1x in our runs; its
batched matrix products are a little slower). It pays off where one small
model leaves the hardware idle, as on a GPU; and it compiles one program and
makes one call for the whole grid.
"""

import argparse
import time

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.colors import LogNorm

import optax_rmsprop

LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
DECAYS = (0.5, 0.8, 0.9, 0.95, 0.99, 0.999)


def make_train(train, params, steps, batch_size, seed):
    """``train(lr, decay) -> final training loss``, pure, for jit and vmap.

    Every model sees the same mini-batches, drawn here once.
    """
    x, y = train
    batches = _common.batch_indices(len(x), batch_size, steps, seed)

    def train_one(learning_rate, decay):
        tx = optax_rmsprop.rmsprop(learning_rate, decay=decay)

        def step(carry, index):
            params, state = carry
            grads = jax.grad(_common.loss_fn)(params, x[index], y[index])
            updates, state = tx.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        (final, _), _ = jax.lax.scan(step, (params, tx.init(params)), batches)
        return _common.loss_fn(final, x, y)

    return train_one


def sweep(train_one, lrs, decays, repeats):
    """Vmapped and one-by-one losses, and ``{phase: (wall, cpu) seconds}``.

    A run's times are those of the fastest of ``repeats`` runs, so other work
    on the machine disturbs the comparison less; CPU time (all threads of this
    process) counts the work whatever the load.
    """
    times = {}
    vmapped, times["vmap compile"] = _timed(
        lambda: jax.jit(jax.vmap(train_one)).lower(lrs, decays).compile()
    )
    single, times["one-by-one compile"] = _timed(
        lambda: jax.jit(train_one).lower(lrs[0], decays[0]).compile()
    )
    run_batched = lambda: vmapped(lrs, decays)
    run_one_by_one = lambda: jnp.stack([single(*pair) for pair in zip(lrs, decays)])
    batched, times["vmap run"] = _fastest(run_batched, repeats)
    one_by_one, times["one-by-one run"] = _fastest(run_one_by_one, repeats)
    return np.asarray(batched), np.asarray(one_by_one), times


def _timed(fn):
    cpu_start = time.process_time()
    result, wall = _common.timed(fn)
    return result, (wall, time.process_time() - cpu_start)


def _fastest(fn, repeats):
    runs = [_timed(fn) for _ in range(max(repeats, 1))]
    return runs[0][0], min((times for _, times in runs), key=lambda t: t[0])


def plot(losses, steps, out_dir):
    fig, ax = _common.new_figure(width=7.0, height=5.0)
    finite = np.where(np.isfinite(losses), losses, np.nan)
    image = ax.imshow(
        finite, norm=LogNorm(), cmap="viridis_r", origin="lower", aspect="auto"
    )
    ax.set_xticks(range(len(LEARNING_RATES)), [f"{lr:g}" for lr in LEARNING_RATES])
    ax.set_yticks(range(len(DECAYS)), [f"{d:g}" for d in DECAYS])
    for (i, j), value in np.ndenumerate(losses):
        text = f"{value:.1e}" if np.isfinite(value) else "nan"
        dark = not np.isfinite(value) or image.norm(value) > 0.5  # viridis_r.
        color = "white" if dark else "black"
        ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("decay")
    ax.set_title(
        f"RMSprop on digits: final training loss after {steps} steps\n"
        f"{losses.size} models trained in one jit(vmap(...)) call"
    )
    fig.colorbar(image, ax=ax, label="training loss (log scale)")
    return _common.save_figure(fig, out_dir, "hparam_sweep.png")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="steps per model")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="init and batches")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs each")
    parser.add_argument("--out", default="out", help="folder for the PNG file")
    args = parser.parse_args(argv)

    train, _ = _common.digits_data()
    params = _common.init_mlp(jax.random.PRNGKey(args.seed), hidden=(64,))
    grid_lr, grid_decay = np.meshgrid(LEARNING_RATES, DECAYS)  # Rows: decays.
    lrs = jnp.asarray(grid_lr.ravel(), jnp.float32)
    decays = jnp.asarray(grid_decay.ravel(), jnp.float32)
    train_one = make_train(train, params, args.steps, args.batch_size, args.seed)
    batched, one_by_one, times = sweep(train_one, lrs, decays, args.repeats)

    losses = batched.reshape(grid_lr.shape)
    agree = np.isclose(batched, one_by_one, rtol=1e-2, atol=0.0)
    best = np.unravel_index(np.nanargmin(losses), losses.shape)
    print(
        f"{lrs.size} RMSprop models ({len(LEARNING_RATES)} learning rates x "
        f"{len(DECAYS)} decays), {args.steps} steps of {args.batch_size} each, "
        f"{jax.device_count()} {jax.default_backend().upper()} device(s).\n"
    )
    rows = [[name, wall, cpu] for name, (wall, cpu) in times.items()]
    print(_common.markdown_table(["phase", "wall s", "CPU s"], rows))
    print(f"(runs: the fastest of {args.repeats}; each function compiles once)")
    speed_up = times["one-by-one run"][0] / times["vmap run"][0]
    cpu_ratio = times["one-by-one run"][1] / times["vmap run"][1]
    print(
        f"\nspeed-up of the vmapped run over one-by-one: {speed_up:.2f}x wall "
        f"clock, {cpu_ratio:.2f}x CPU time"
    )
    print(
        f"models with the same final loss (to 1 %) both ways: {agree.sum()} of "
        f"{agree.size}"
    )
    if not agree.all():
        gap = np.where(agree, 0.0, np.abs(np.log(batched / one_by_one)))
        worst = np.argmax(gap)
        print(
            f"  the others all have lr >= {grid_lr.ravel()[~agree].min():g}; worst: "
            f"lr {grid_lr.ravel()[worst]:g}, decay {grid_decay.ravel()[worst]:g}, "
            f"{batched[worst]:.3g} (vmap) vs {one_by_one[worst]:.3g}"
        )
    print(
        f"best: lr {LEARNING_RATES[best[1]]:g}, decay {DECAYS[best[0]]:g}, "
        f"final training loss {losses[best]:.3g}\n"
    )
    plot(losses, args.steps, args.out)


if __name__ == "__main__":
    main()
