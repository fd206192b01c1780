"""Quickstart: fit a small two-layer network with ``optax_rmsprop.rmsprop``.

The data are a noisy sine made here, so nothing is downloaded; the script
prints the training loss as it falls. Run ``python examples/quickstart.py``.
"""

import argparse

import jax
import jax.numpy as jnp
import optax

import optax_rmsprop


def make_data(key, n=512):
    """Points on ``sin(3x)`` plus noise, x in [-1, 1]."""
    x_key, noise_key = jax.random.split(key)
    x = jax.random.uniform(x_key, (n, 1), minval=-1.0, maxval=1.0)
    y = jnp.sin(3 * x) + 0.05 * jax.random.normal(noise_key, (n, 1))
    return x, y


def init_params(key, hidden=32):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (1, hidden)),
        "b1": jnp.zeros(hidden),
        "w2": jax.random.normal(k2, (hidden, 1)) / jnp.sqrt(hidden),
        "b2": jnp.zeros(1),
    }


def loss_fn(params, x, y):
    hidden = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean((hidden @ params["w2"] + params["b2"] - y) ** 2)


def train(steps, learning_rate, seed):
    """Returns the loss every ``steps // 10`` steps."""
    data_key, param_key = jax.random.split(jax.random.PRNGKey(seed))
    x, y = make_data(data_key)
    params = init_params(param_key)
    tx = optax_rmsprop.rmsprop(learning_rate, momentum=0.9, nesterov=True)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    history = []
    for i in range(steps):
        params, state, loss = step(params, state)
        if i % max(steps // 10, 1) == 0 or i == steps - 1:
            history.append((i, float(loss)))
    return history


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for i, loss in train(args.steps, args.learning_rate, args.seed):
        print(f"step {i:5d}  loss {loss:.5f}")


if __name__ == "__main__":
    main()
