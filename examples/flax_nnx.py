"""Flax NNX: ``optax_rmsprop`` inside ``nnx.Optimizer``, trained under ``nnx.jit``.

The digits MLP 64-128-64-10 written as an ``nnx.Module`` trains with
``nnx.Optimizer(model, optax_rmsprop.rmsprop(...), wrt=nnx.Param)`` and a
train step under ``nnx.jit``; a copy of the same model trains alongside with
``optax.rmsprop`` and the same arguments, on the same batches. The script
prints, per setting, whether the two runs' losses are equal step by step
(bit for bit: for these settings both libraries compute the same float32
numbers), and the final loss and test accuracy.

Then it reads the state that ``nnx.Optimizer`` holds (``optimizer.opt_state``)
with :func:`optax_rmsprop.effective_learning_rate`: per weight matrix, the
median effective learning rate ``lr / sqrt(nu + eps)``, next to the same
recomputed in NumPy from the ``optax.rmsprop`` run's state.

Run ``python examples/flax_nnx.py`` (about 15 s; ``--steps`` to change).
Needs the ``clients`` extra (flax).
"""

import argparse

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_rmsprop

DECAY, EPS = 0.9, 1e-8  # rmsprop's defaults, named for the diagnostics.

# name -> rmsprop's keyword arguments. Neither momentum nor bias correction:
# with them XLA may round a fused multiply-add differently in the two
# libraries' programs (tests/test_parity_with_optax.py), so losses agree only
# to float32 rounding; without them both compute the same float32 numbers.
SETTINGS = {
    "default": {},
    "centered": dict(centered=True),
}


class MLP(nnx.Module):
    """64 -> 128 -> 64 -> 10, tanh hidden layers."""

    def __init__(self, rngs: nnx.Rngs):
        self.hidden_0 = nnx.Linear(_common.N_FEATURES, 128, rngs=rngs)
        self.hidden_1 = nnx.Linear(128, 64, rngs=rngs)
        self.output = nnx.Linear(64, _common.N_CLASSES, rngs=rngs)

    def __call__(self, x):
        x = jnp.tanh(self.hidden_0(x))
        x = jnp.tanh(self.hidden_1(x))
        return self.output(x)


def loss_fn(model, x, y):
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@nnx.jit
def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def accuracy(model, x, y):
    return jnp.mean(jnp.argmax(model(x), axis=-1) == y)


def train(tx, template, train_set, steps, seed, batch_size):
    """A copy of the ``template`` model trained with ``tx``; the step losses."""
    model = nnx.clone(template)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x, y = train_set
    batches = _common.batch_indices(len(x), batch_size, steps, seed)
    losses = [train_step(model, optimizer, x[i], y[i]) for i in batches]
    return model, optimizer, np.asarray(jax.device_get(losses))


def compare(ours, theirs):
    if np.array_equal(ours, theirs):
        return "bit-identical"
    return f"max diff {np.max(np.abs(ours - theirs)):.3g}"


def diagnostics(optimizer, reference, learning_rate):
    """Per weight matrix: effective learning rates read from ``optimizer``.

    :func:`optax_rmsprop.effective_learning_rate` reads the state as
    ``nnx.Optimizer`` holds it (``optimizer.opt_state``, each leaf in an
    ``nnx`` Variable), here under ``jax.jit`` as a metrics call in a training
    loop would be. Next to its median: ``lr / sqrt(nu + eps)`` recomputed in
    float64 NumPy from ``reference``, the ``nnx.Optimizer`` of the
    ``optax.rmsprop`` run (whose ``ScaleByRmsState`` is optax's own), and the
    largest relative difference over the matrix.
    """
    rates = jax.jit(
        lambda opt_state: optax_rmsprop.effective_learning_rate(
            opt_state,
            learning_rate,
            decay=DECAY,
            eps=EPS,
            eps_in_sqrt=True,
            bias_correction=False,
        )
    )(optimizer.opt_state)
    nu = reference.opt_state[0].nu  # optax's ScaleByRmsState.nu.
    rows = []
    for layer in ("hidden_0", "hidden_1", "output"):
        (ours,) = jax.tree.leaves(rates[layer]["kernel"])
        (nu_w,) = jax.tree.leaves(nu[layer]["kernel"])
        numpy = learning_rate / np.sqrt(np.asarray(nu_w, np.float64) + EPS)
        difference = np.max(np.abs(np.asarray(ours, np.float64) - numpy) / numpy)
        median = lambda x: f"{float(np.median(x)):.6g}"
        rows.append([layer, median(ours), median(numpy), f"{difference:.2g}"])
    return rows


def main(argv=None):
    """Runs the comparison, prints both tables.

    Returns:
        ``{setting: {"optimizer", "reference", "losses", "optax_losses"}}``:
        the two runs' ``nnx.Optimizer`` objects and losses, for the tests.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0, help="init and batch order")
    args = parser.parse_args(argv)

    train_set, (x_test, y_test) = _common.digits_data()
    lr, rows, results = args.learning_rate, [], {}
    template = MLP(nnx.Rngs(args.seed))  # Every run starts from these weights.
    for name, options in SETTINGS.items():
        run = dict(
            template=template,
            train_set=train_set,
            steps=args.steps,
            seed=args.seed,
            batch_size=args.batch_size,
        )
        model, optimizer, ours = train(optax_rmsprop.rmsprop(lr, **options), **run)
        _, reference, theirs = train(optax.rmsprop(lr, **options), **run)
        results[name] = dict(
            optimizer=optimizer, reference=reference, losses=ours, optax_losses=theirs
        )
        test_accuracy = float(accuracy(model, x_test, y_test))
        rows.append(
            [
                name,
                args.steps,
                compare(ours, theirs),
                float(ours[-1]),
                f"{test_accuracy:.2%}",
            ]
        )
    print(
        f"\nnnx.Optimizer(model, rmsprop(lr={lr:g}, ...), wrt=nnx.Param) under "
        f"nnx.jit vs optax.rmsprop, digits MLP, batches of {args.batch_size}:\n"
    )
    header = [
        "setting",
        "steps",
        "losses vs optax.rmsprop",
        "last loss",
        "test accuracy",
    ]
    print(_common.markdown_table(header, rows))
    print(
        "\neffective_learning_rate(optimizer.opt_state, ...) after the default "
        "run vs NumPy's lr / sqrt(nu + eps) on optax.rmsprop's state:\n"
    )
    default = results["default"]
    rows = diagnostics(default["optimizer"], default["reference"], lr)
    header = ["weights", "median eff. lr", "NumPy", "max relative diff"]
    print(_common.markdown_table(header, rows))
    return results


if __name__ == "__main__":
    main()
