"""Data- and model-parallel RMSprop on eight simulated CPU devices.

XLA can split one CPU into several devices, so this runs on a laptop: a 4 x 2
mesh with axes ``data`` and ``model``. The digits MLP 64-128-64-10 keeps its
hidden units split over ``model`` (Megatron style: the first layer by columns,
the second by rows, the last replicated) and each batch is split over
``data``. ``jax.jit(tx.init)`` of the sharded parameters gives every
optimizer-state leaf its parameter's sharding (``optax.rmsprop`` 0.2.8 puts
its state on one device), which the script prints and checks, leaf by leaf;
then the jitted step trains with parameters, state and batches staying
sharded, and the loss falls.

Writes ``sharded_loss.png`` (training loss) to ``--out``. Run it as a script:
the eight devices must be requested before JAX starts, which ``main()`` does
unless JAX is already running (as under pytest, whose ``conftest.py`` asks for
eight devices itself).
"""

import argparse

import _common
import jax
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optax_rmsprop

N_DEVICES, MESH_SHAPE = 8, (4, 2)
HIDDEN = (128, 64)
# Hidden units split over `model`: layer 0 by output column, layer 1 by input
# row (its matrix product sums over `model`), the 10-way output replicated.
PARAM_SPECS = {
    "layer_0": {"w": P(None, "model"), "b": P("model")},
    "layer_1": {"w": P("model", None), "b": P()},
    "layer_2": {"w": P(), "b": P()},
}


def request_cpu_devices(n):
    """Asks XLA for ``n`` CPU devices; harmless once JAX has started."""
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # The backend is up; keep its devices.
        pass
    if jax.device_count() < n:
        raise SystemExit(
            f"Needs {n} devices, JAX has {jax.device_count()}: run this file as a "
            "script, before anything else starts JAX."
        )


def make_mesh():
    auto = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh(MESH_SHAPE, ("data", "model"), axis_types=auto)


def param_shardings(mesh):
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), PARAM_SPECS)


def state_shardings(tree, shardings):
    """``(path, spec, matches)`` per leaf of ``tree``; ``matches`` None if unowned.

    A leaf belongs to the parameter whose path in ``shardings`` (a tree of the
    parameters' shardings) ends the leaf's own path: the state's ``nu`` and
    ``trace`` mirror the parameter tree; step counts, if any, belong to none.
    """
    is_sharding = lambda x: isinstance(x, jax.sharding.Sharding)
    by_path = {
        jax.tree_util.keystr(path): sharding
        for path, sharding in jax.tree_util.tree_leaves_with_path(
            shardings, is_leaf=is_sharding
        )
    }
    rows = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        key = jax.tree_util.keystr(path)
        owner = [sharding for k, sharding in by_path.items() if key.endswith(k)]
        same = owner[0].is_equivalent_to(leaf.sharding, leaf.ndim) if owner else None
        rows.append((key, _describe(leaf.sharding), same))
    return rows


def _describe(sharding):
    if isinstance(sharding, NamedSharding):
        return str(sharding.spec)
    return f"{type(sharding).__name__} on {len(sharding.device_set)} device(s)"


def print_state_shardings(rows):
    for key, spec, same in rows:
        verdict = {None: "(scalar)", True: "== its parameter's"}.get(same, "DIFFERS")
        print(f"  {key:30} {spec:28} {verdict}")


def make_step(tx):
    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(_common.loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def plot(losses, args, out_dir):
    fig, ax = _common.new_figure(width=6.4, height=4.2)
    label = f"rmsprop(lr={args.learning_rate:g}, momentum=0.9, nesterov=True)"
    ax.plot(np.arange(1, len(losses) + 1), losses, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss on the step's batch of {args.batch_size}")
    ax.set_title(
        f"RMSprop on a {MESH_SHAPE[0]} x {MESH_SHAPE[1]} (data x model) mesh "
        f"of {N_DEVICES} CPU devices"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _common.save_figure(fig, out_dir, "sharded_loss.png")


def show_state_shardings(tx, params, shardings, reference):
    """Prints and checks the shardings of ``jax.jit(tx.init)(params)``."""
    rows = state_shardings(jax.jit(tx.init)(params), shardings)
    print("optimizer state after jax.jit(tx.init), leaf by leaf:")
    print_state_shardings(rows)
    matched = [same for _, _, same in rows if same is not None]
    if not all(matched):
        raise AssertionError("some state leaves lost their parameter's sharding")
    print(f"all {len(matched)} parameter-shaped state leaves: parameter's sharding")
    theirs = state_shardings(jax.jit(reference.init)(params), shardings)
    lost = sum(same is False for _, _, same in theirs)
    print(
        f"(for comparison, optax.rmsprop {optax.__version__}: {lost} of "
        f"{len(theirs)} state leaves not sharded like their parameter)"
    )


def train(tx, params, data, mesh, args):
    """The jitted step over data-sharded batches; the loss of every step."""
    x, y = data
    batch_sharding = NamedSharding(mesh, P("data"))
    batches = _common.batch_indices(len(x), args.batch_size, args.steps, args.seed)
    step, state, losses = make_step(tx), jax.jit(tx.init)(params), []
    for index in batches:
        xb, yb = jax.device_put((x[index], y[index]), batch_sharding)
        params, state, loss = step(params, state, xb, yb)
        losses.append(loss)
    return params, state, np.asarray(jax.device_get(losses))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out", help="folder for the PNG file")
    args = parser.parse_args(argv)
    request_cpu_devices(N_DEVICES)

    mesh = make_mesh()
    print(f"mesh {dict(mesh.shape)} over {jax.device_count()} CPU devices")
    shardings = param_shardings(mesh)
    params = _common.init_mlp(jax.random.PRNGKey(args.seed), HIDDEN)
    params = jax.device_put(params, shardings)
    options = dict(momentum=0.9, nesterov=True)
    tx = optax_rmsprop.rmsprop(args.learning_rate, **options)
    show_state_shardings(
        tx, params, shardings, optax.rmsprop(args.learning_rate, **options)
    )

    data, _ = _common.digits_data()
    params, state, losses = train(tx, params, data, mesh, args)
    after = state_shardings((params, state), shardings)
    kept = all(same is not False for _, _, same in after)
    print(f"after training, parameters and state keep these shardings: {kept}")
    print(
        f"loss: first step {losses[0]:.4g}, last step {losses[-1]:.4g} "
        f"({args.steps} steps, global batch {args.batch_size})"
    )
    plot(losses, args, args.out)


if __name__ == "__main__":
    main()
