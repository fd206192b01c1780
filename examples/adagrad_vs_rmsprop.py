"""AdaGrad's step keeps shrinking; RMSprop's settles at lr / rms(g).

A long run on a noisy quadratic, ``f(w) = 0.5 * |w - w*|^2`` in 1000
dimensions, whose stochastic gradient is ``w - w* + sigma_t * xi`` with
``xi ~ N(0, 1)``. The noise scale ``sigma_t`` is ``--sigma`` for the first
half of the run and ten times that for the second half. Both optimizers start
at ``w*`` with the same learning rate, so the gradient is noise and its mean
square is ``sigma_t**2`` plus a small fluctuation term.

- AdaGrad divides by the root of the sum of all squared gradients, so its
  effective learning rate falls like ``lr / (sigma sqrt(t))`` for ever: by
  the end it moves 100x less than at step 100, whatever the data say.
- RMSprop divides by the root of an exponential average, so its effective
  learning rate settles near ``lr / sigma_t`` within ~``1 / (1 - decay)``
  steps, and re-settles at a tenth of that when the noise grows tenfold:
  the step ``lr * g / rms(g)`` stays of size ``lr``.

The effective learning rates are read from the optimizer states (RMSprop's
with :func:`optax_rmsprop.effective_learning_rate`) at every step; the plot
shows their median over the coordinates (log-log) with the theory dashed, and
the script prints the final values next to the theory. Writes
``adagrad_vs_rmsprop.png`` to ``--out``.
"""

import argparse

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_rmsprop

ADAGRAD_INITIAL, ADAGRAD_EPS = 0.1, 1e-7  # optax.adagrad's defaults.
RMSPROP_EPS = 1e-8  # optax_rmsprop.rmsprop's default.


def noise_scales(steps, sigma, factor=10.0):
    """``sigma`` for the first half of the steps, ``factor * sigma`` after."""
    return jnp.where(jnp.arange(1, steps + 1) <= steps // 2, sigma, factor * sigma)


def adagrad_effective_lr(opt_state, lr):
    """``lr / sqrt(sum_of_squares + eps)`` from the state, found by type."""
    is_rss = lambda node: isinstance(node, optax.ScaleByRssState)
    (rss,) = [s for s in jax.tree.leaves(opt_state, is_leaf=is_rss) if is_rss(s)]
    return lr * jax.lax.rsqrt(rss.sum_of_squares + ADAGRAD_EPS)


def simulate(tx, effective_lr, sigmas, dim, seed):
    """Runs ``tx`` with a ``lax.scan``; the median effective lr of every step."""
    w_star = jnp.ones(dim)

    def step(carry, inputs):
        w, state = carry
        key, sigma = inputs
        grad = w - w_star + sigma * jax.random.normal(key, (dim,))
        updates, state = tx.update(grad, state, w)
        return (optax.apply_updates(w, updates), state), jnp.median(effective_lr(state))

    keys = jax.random.split(jax.random.PRNGKey(seed), len(sigmas))
    init = (w_star, tx.init(w_star))
    _, medians = jax.lax.scan(step, init, (keys, sigmas))
    return medians


def theory(sigmas, lr, decay):
    """Noise-only predictions: ``lr / sqrt(nu)`` with nu's expected value.

    AdaGrad: ``nu = 0.1 + sum_s sigma_s**2``. RMSprop: ``nu = sum_s (1 - decay)
    decay**(t - s) sigma_s**2``, the average's expectation (-> ``sigma_t**2``).
    """
    squares = np.asarray(sigmas, np.float64) ** 2
    adagrad = lr / np.sqrt(ADAGRAD_INITIAL + np.cumsum(squares) + ADAGRAD_EPS)
    nu, rmsprop = 0.0, np.empty_like(squares)
    for t, square in enumerate(squares):
        nu = decay * nu + (1 - decay) * square
        rmsprop[t] = lr / np.sqrt(nu + RMSPROP_EPS)
    return adagrad, rmsprop


def plot(adagrad, rmsprop, theory_adagrad, theory_rmsprop, args, out_dir):
    fig, ax = _common.new_figure(width=7.0, height=4.8)
    t = np.arange(1, len(adagrad) + 1)
    ax.plot(t, rmsprop, color="C0", label=f"RMSprop (decay {args.decay:g})")
    ax.plot(t, theory_rmsprop, "--", color="k", linewidth=1, label="theory")
    ax.plot(t, adagrad, color="C1", label="AdaGrad")
    ax.plot(t, theory_adagrad, "--", color="k", linewidth=1)
    ax.axvline(args.steps // 2, color="gray", linestyle=":", linewidth=1)
    ax.annotate(
        f"gradient noise x10\n(σ = {args.sigma:g} → {10 * args.sigma:g})",
        (args.steps // 2, 0.97),
        xycoords=("data", "axes fraction"),
        xytext=(-6, 0),
        textcoords="offset points",
        ha="right",
        va="top",
        color="gray",
        fontsize="small",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("median effective learning rate")
    ax.set_title(
        f"Effective learning rate, lr = {args.learning_rate:g}, noisy quadratic\n"
        "AdaGrad lr / sqrt(Σ g²) keeps falling; RMSprop settles at lr / rms(g)"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left")
    return _common.save_figure(fig, out_dir, "adagrad_vs_rmsprop.png")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--decay", type=float, default=0.99, help="RMSprop decay")
    parser.add_argument("--sigma", type=float, default=1.0, help="initial noise")
    parser.add_argument("--dim", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out", help="folder for the PNG file")
    args = parser.parse_args(argv)

    lr, sigmas = args.learning_rate, noise_scales(args.steps, args.sigma)
    rms_tx = optax_rmsprop.rmsprop(lr, decay=args.decay, eps=RMSPROP_EPS)
    rms_lr = lambda state: optax_rmsprop.effective_learning_rate(
        state,
        lr,
        decay=args.decay,
        eps=RMSPROP_EPS,
        eps_in_sqrt=True,
        bias_correction=False,
    )
    ada_tx = optax.adagrad(lr, ADAGRAD_INITIAL, ADAGRAD_EPS)
    ada_lr = lambda state: adagrad_effective_lr(state, lr)
    run = jax.jit(simulate, static_argnums=(0, 1, 3, 4))
    rmsprop = np.asarray(run(rms_tx, rms_lr, sigmas, args.dim, args.seed))
    adagrad = np.asarray(run(ada_tx, ada_lr, sigmas, args.dim, args.seed))
    theory_adagrad, theory_rmsprop = theory(sigmas, lr, args.decay)

    half = args.steps // 2
    header = ["optimizer", f"step {half}", "theory", f"step {args.steps}", "theory"]
    rows = [
        ["AdaGrad", adagrad[half - 1], theory_adagrad[half - 1]],
        ["RMSprop", rmsprop[half - 1], theory_rmsprop[half - 1]],
    ]
    rows[0] += [adagrad[-1], theory_adagrad[-1]]
    rows[1] += [rmsprop[-1], theory_rmsprop[-1]]
    rows = [[name, *map(float, values)] for name, *values in rows]
    print(
        f"Median effective learning rate, lr {lr:g}, noise sigma {args.sigma:g} "
        f"then {10 * args.sigma:g} from step {half + 1}."
    )
    print("theory (the gradient is noise): AdaGrad lr / sqrt(0.1 + sum_s sigma_s^2);")
    print("RMSprop lr / sqrt(EMA of sigma_s^2), which settles at lr / sigma_t.\n")
    print(_common.markdown_table(header, rows))
    print()
    plot(adagrad, rmsprop, theory_adagrad, theory_rmsprop, args, args.out)


if __name__ == "__main__":
    main()
