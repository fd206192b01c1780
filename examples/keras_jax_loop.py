"""Keras 3 on JAX: a Keras model trained by optax_rmsprop in a stateless loop.

Keras 3 documents how to train a Keras model with a hand-written JAX loop:
``model.stateless_call`` runs the model on explicit variable values,
``jax.value_and_grad`` differentiates it, and the step is ``jax.jit``-ed.
Here the optimizer in that loop is :func:`optax_rmsprop.keras_rmsprop`,
which reproduces ``keras.optimizers.RMSprop`` (same names, defaults and
update). The script trains the digits MLP 64-128-64-10 that way and, from
the same initial weights on the same batches, the usual Keras way:
``model.compile(optimizer=keras.optimizers.RMSprop(...))`` and
``train_on_batch``. For four settings (the defaults, momentum with centered,
weight decay, a learning-rate schedule) it prints the largest difference of
the per-step losses and of the final weights between the two runs, and the
last loss.

The two runs are different float32 programs (Keras updates variable by
variable, optax composes a chain, XLA fuses each its own way), so they agree
to float32 rounding, not bit for bit; see ``tests/test_clients.py``.

Run ``python examples/keras_jax_loop.py`` (``--steps`` to change). Keras must
use its JAX backend: the script sets ``KERAS_BACKEND=jax`` unless the
variable is already set.
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import _common  # noqa: E402
import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import optax_rmsprop  # noqa: E402

# Keras's exponential decay, 0.01 * 0.5 ** (step / 20), in both libraries:
# each evaluates it at the number of steps taken so far.
SCHEDULE = dict(initial=0.01, steps=20, rate=0.5)

# name -> keyword arguments shared by keras_rmsprop and keras.optimizers.RMSprop
# (Keras's names); "schedule" marks the run with a learning-rate schedule.
SETTINGS = {
    "defaults": {},
    "momentum 0.9 + centered": dict(momentum=0.9, centered=True),
    "weight decay 0.01": dict(learning_rate=3e-3, weight_decay=0.01),
    "exponential decay schedule": dict(schedule=True, momentum=0.5),
}


def make_model(seed):
    """64 -> 128 -> 64 -> 10, tanh; Keras's default Glorot-uniform weights.

    Seeded initializers rather than ``keras.utils.set_random_seed``, which
    would also reseed Python's and NumPy's global generators.
    """
    dense = lambda units, i, **kw: keras.layers.Dense(
        units, kernel_initializer=keras.initializers.GlorotUniform(seed + i), **kw
    )
    return keras.Sequential(
        [
            keras.Input((_common.N_FEATURES,)),
            dense(128, 0, activation="tanh"),
            dense(64, 1, activation="tanh"),
            dense(_common.N_CLASSES, 2),
        ]
    )


def _learning_rate(options, library):
    if not options.get("schedule"):
        return options.get("learning_rate", 1e-3)
    if library == "keras":
        return keras.optimizers.schedules.ExponentialDecay(
            SCHEDULE["initial"], SCHEDULE["steps"], SCHEDULE["rate"]
        )
    return optax.exponential_decay(
        SCHEDULE["initial"], SCHEDULE["steps"], SCHEDULE["rate"]
    )


def _optimizer_options(options, library):
    kept = {k: v for k, v in options.items() if k not in ("schedule", "learning_rate")}
    return dict(learning_rate=_learning_rate(options, library), **kept)


def train_stateless(model, weights, tx, batches):
    """Keras's documented JAX loop, with an optax transformation as optimizer.

    ``weights`` are the initial values of ``model.trainable_variables``.
    Returns the final trainable values and the loss of every step.
    """
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    non_trainable = [v.value for v in model.non_trainable_variables]

    def compute_loss(trainable, non_trainable, x, y):
        logits, non_trainable = model.stateless_call(trainable, non_trainable, x)
        return loss_fn(y, logits), non_trainable

    grad_fn = jax.value_and_grad(compute_loss, has_aux=True)

    @jax.jit
    def train_step(trainable, non_trainable, opt_state, x, y):
        (loss, non_trainable), grads = grad_fn(trainable, non_trainable, x, y)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), non_trainable, opt_state, loss

    trainable = [jax.numpy.asarray(w) for w in weights]
    opt_state = tx.init(trainable)
    losses = []
    for x, y in batches:
        trainable, non_trainable, opt_state, loss = train_step(
            trainable, non_trainable, opt_state, x, y
        )
        losses.append(loss)
    return [np.asarray(w) for w in trainable], np.asarray(jax.device_get(losses))


def train_compiled(model, weights, optimizer, batches):
    """``model.compile`` + ``train_on_batch``: Keras's own jitted train step."""
    model.set_weights(weights)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    losses = [model.train_on_batch(x, y) for x, y in batches]
    return [np.asarray(v.value) for v in model.trainable_variables], np.asarray(
        losses, np.float32
    )


def relative_difference(ours, theirs):
    """Largest ``|ours - theirs|``, in units of the largest ``|theirs|``."""
    return max(
        float(np.max(np.abs(o - t)) / np.max(np.abs(t))) for o, t in zip(ours, theirs)
    )


def run(steps, seed, batch_size):
    """``{setting: (our weights, our losses, Keras's weights, Keras's losses)}``."""
    (x, y), _ = _common.digits_data()
    x, y = np.asarray(x), np.asarray(y)
    order = _common.batch_indices(len(x), batch_size, steps, seed)
    batches = [(x[i], y[i]) for i in order]
    model = make_model(seed)
    weights = [np.asarray(v.value) for v in model.trainable_variables]
    results = {}
    for name, options in SETTINGS.items():
        tx = optax_rmsprop.keras_rmsprop(**_optimizer_options(options, "optax"))
        ours = train_stateless(model, weights, tx, batches)
        optimizer = keras.optimizers.RMSprop(**_optimizer_options(options, "keras"))
        theirs = train_compiled(model, weights, optimizer, batches)
        results[name] = (*ours, *theirs)
    return results


def main(argv=None):
    """Trains both ways, prints the table; returns :func:`run`'s results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="init and batch order")
    args = parser.parse_args(argv)
    if keras.backend.backend() != "jax":
        raise SystemExit(f"needs KERAS_BACKEND=jax, not {keras.backend.backend()}")

    results = run(args.steps, args.seed, args.batch_size)
    rows = []
    for name, (weights, losses, keras_weights, keras_losses) in results.items():
        loss_diff = float(np.max(np.abs(losses - keras_losses) / keras_losses))
        weight_diff = relative_difference(weights, keras_weights)
        rows.append(
            [
                name,
                args.steps,
                f"{loss_diff:.2g}",
                f"{weight_diff:.2g}",
                float(losses[-1]),
                float(keras_losses[-1]),
            ]
        )
    print(
        f"\nkeras_rmsprop in Keras's stateless JAX loop vs model.compile("
        f"optimizer=keras.optimizers.RMSprop(...)) + train_on_batch, keras "
        f"{keras.__version__}, batches of {args.batch_size}:\n"
    )
    header = [
        "setting",
        "steps",
        "max loss diff (relative)",
        "max weight diff (relative)",
        "last loss",
        "Keras's last loss",
    ]
    print(_common.markdown_table(header, rows))
    return results


if __name__ == "__main__":
    main()
