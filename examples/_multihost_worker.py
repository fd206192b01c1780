"""One process of ``multihost_training.py``: what every host of the job runs.

Not an example on its own: ``python examples/multihost_training.py --worker``
runs :func:`main`. Every process of the job runs this same code on its own
devices (JAX's multi-controller model): it joins the job with
``jax.distributed.initialize``, builds one ``data x model`` mesh over the
devices of all processes, and trains the digits MLP with each setting of
:data:`SETTINGS`, side by side in one jitted step (one program, one
checkpoint), every array global and sharded over the whole mesh.

Each ``--run NAME[:STOP]`` trains from step 0, or from the latest checkpoint
in ``<checkpoint-dir>/NAME`` if there is one, to ``--steps`` (or to ``STOP``,
as a preempted job would end). Orbax's ``CheckpointManager`` saves the
parameters and optimizer states every ``--save-every`` steps, each process
writing its own shards. Process 0 then writes ``<results-dir>/NAME.npz``:
per setting the final parameters gathered from all processes, the first step
run, the losses, how many state leaves are sharded like their parameter and
the state's dtypes.

The model is ``sharded_training.py``'s, written out again here: importing
that script would load scikit-learn and matplotlib, seconds per process.
"""

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optax_rmsprop

SIZES = (64, 128, 64, 10)  # Digits MLP; 64x128 and 128x64: 8192 weights each.
MODEL_AXIS = 2  # Hidden units split over two devices.
# Megatron style, as in sharded_training.py: layer 0 split by output column,
# layer 1 by input row (its product sums over `model`), the output replicated.
PARAM_SPECS = {
    "layer_0": {"w": P(None, "model"), "b": P("model")},
    "layer_1": {"w": P("model", None), "b": P()},
    "layer_2": {"w": P(), "b": P()},
}

# name -> keyword arguments of optax_rmsprop.rmsprop besides the learning rate.
# int8 storage keeps leaves under 4096 elements in float32, so it quantises
# the two 8192-element weight matrices and nothing else.
SETTINGS = {
    "default": {},
    "nesterov": dict(momentum=0.9, nesterov=True),
    "centered + bias correction": dict(centered=True, bias_correction=True),
    "bf16 storage": dict(nu_dtype=jnp.bfloat16),
    "int8 storage": dict(nu_dtype="int8"),
}


def start_jax(args):
    """Configures local CPU devices (if asked) and joins the job."""
    if args.cpu_devices:
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
        # Collectives between CPU devices of a job go through gloo, over TCP.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.coordinator is not None:
        jax.distributed.initialize(
            args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
            initialization_timeout=args.init_timeout,
            coordinator_bind_address=args.coordinator,  # Not every interface.
        )
    elif args.num_processes != 1:
        # A TPU pod, or a GPU cluster under SLURM or Open MPI: JAX finds the
        # coordinator, the number of processes and this one's id itself.
        jax.distributed.initialize()


def write_replicated_arrays_whole():
    """Each replicated array is written by its first replica, in one piece.

    By default orbax splits the writing of a replicated array among its
    replicas, compiling a slicing program per array: here some fifty programs
    per process, seconds of compilation to save a few kilobytes. On a real
    job with large replicated arrays, leave the default.
    """
    ocp.type_handlers.register_type_handler(
        jax.Array,
        ocp.type_handlers.ArrayHandler(use_replica_parallel=False),
        override=True,
    )


def make_mesh():
    """``data x model`` over every device of every process."""
    shape = (jax.device_count() // MODEL_AXIS, MODEL_AXIS)
    auto = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh(shape, ("data", "model"), axis_types=auto)


def init_params(seed):
    """``{"layer_i": {"w", "b"}}``, LeCun-normal weights drawn by NumPy.

    Every process draws the same values (NumPy's generators are the same on
    every platform) and keeps only its own shards.
    """
    rng = np.random.default_rng(seed)
    return {
        f"layer_{i}": {
            "w": (rng.standard_normal((n, m)) / np.sqrt(n)).astype(np.float32),
            "b": np.zeros(m, np.float32),
        }
        for i, (n, m) in enumerate(zip(SIZES[:-1], SIZES[1:]))
    }


def loss_fn(params, x, y):
    """Mean softmax cross-entropy of the tanh MLP."""
    *hidden, last = (params[f"layer_{i}"] for i in range(len(params)))
    for layer in hidden:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    logits = x @ last["w"] + last["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def global_array(value, sharding):
    """A global array from a host value that every process can read in full.

    Each process reads and places only the shards of its own devices.
    """
    return jax.make_array_from_callback(
        value.shape, sharding, lambda index: np.asarray(value[index])
    )


def make_functions(txs):
    """``init`` and the donating ``step`` of every setting at once, jitted."""

    def init(params):
        return {name: tx.init(params[name]) for name, tx in txs.items()}

    def step(params, states, x, y):
        new_params, new_states, losses = {}, {}, {}
        for name, tx in txs.items():
            losses[name], grads = jax.value_and_grad(loss_fn)(params[name], x, y)
            updates, new_states[name] = tx.update(grads, states[name], params[name])
            new_params[name] = optax.apply_updates(params[name], updates)
        return new_params, new_states, losses

    return jax.jit(init), jax.jit(step, donate_argnums=(0, 1))


def sharded_like_params(state, params):
    """``(leaves sharded like their parameter, parameter-shaped leaves)``.

    A state leaf is parameter-shaped if it has the shape of the parameter
    whose path its own path contains: ``nu``, ``mu``, ``trace`` and int8
    ``codes``, not the step count nor int8 ``scales`` (one per 256 elements).
    """
    by_path = {
        jax.tree_util.keystr(path): param
        for path, param in jax.tree_util.tree_leaves_with_path(params)
    }
    matched = total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        key = jax.tree_util.keystr(path)
        for param_path, param in by_path.items():
            if param_path in key and leaf.shape == param.shape:
                total += 1
                matched += param.sharding.is_equivalent_to(leaf.sharding, leaf.ndim)
    return matched, total


def abstract_like(tree):
    """Shapes, dtypes and shardings of ``tree``: what orbax restores into."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree
    )


def train(functions, params, directory, stop, batch, save_every):
    """Trains from the latest checkpoint in ``directory``, or from step 0.

    Returns the final parameters, the first step run and the losses.
    """
    init, step = functions
    states = init(params)
    # Every `save_every` steps (and not after the first step as well).
    policy = ocp.checkpoint_managers.FixedIntervalPolicy(save_every)
    options = ocp.CheckpointManagerOptions(save_decision_policy=policy, max_to_keep=2)
    with ocp.CheckpointManager(directory, options=options) as manager:
        start = manager.latest_step() or 0
        if start:
            target = abstract_like({"params": params, "states": states})
            restored = manager.restore(start, args=ocp.args.StandardRestore(target))
            params, states = restored["params"], restored["states"]
        losses = []
        for i in range(start, stop):
            params, states, loss = step(params, states, *batch(i))
            losses.append(loss)
            checkpoint = {"params": params, "states": states}
            manager.save(i + 1, args=ocp.args.StandardSave(checkpoint))
        manager.wait_until_finished()
    return params, start, jax.device_get(losses)


def gathered(params, mesh):
    """Every parameter in full: one jitted all-gather, read on this process."""
    replicated = NamedSharding(mesh, P())
    full = jax.jit(lambda tree: tree, out_shardings=replicated)(params)
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), full)


def load_data(args):
    """``(x, y, order)``: the training set and each step's example indices.

    From ``--data`` (an ``.npz`` written by the launcher, so that workers
    need not load scikit-learn), else scikit-learn's digits as ``_common.py``
    loads them.
    """
    if args.data:
        with np.load(args.data) as data:
            return data["x"], data["y"], data["order"]
    import _common  # Loads scikit-learn: only when no data file is given.

    (x, y), _ = _common.digits_data()
    order = _common.batch_indices(len(x), args.batch_size, args.steps, args.seed)
    return np.asarray(x), np.asarray(y), order


def batches(mesh, data):
    """``i -> (x, y)``: step i's global batch, sharded over ``data``."""
    x, y, order = data
    sharding = NamedSharding(mesh, P("data"))
    return lambda i: (
        global_array(x[order[i]], sharding),
        global_array(y[order[i]], sharding),
    )


def save_results(path, params, start, losses, layout):
    """One flat ``.npz``, keys ``<setting>|<field>``."""
    flat = {}
    for index, (name, (counts, dtypes)) in enumerate(layout.items()):
        flat[f"{name}|index"] = np.asarray(index)  # The table's row order.
        flat[f"{name}|start"] = np.asarray(start)
        flat[f"{name}|losses"] = np.asarray([s[name] for s in losses], np.float32)
        flat[f"{name}|sharded_like"] = np.asarray(counts)
        flat[f"{name}|state_dtypes"] = np.asarray(dtypes)
        for key, leaf in jax.tree_util.tree_leaves_with_path(params[name]):
            flat[f"{name}|params{jax.tree_util.keystr(key)}"] = leaf
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **flat)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help="run one process")
    parser.add_argument("--coordinator", help="host:port of process 0 (else auto)")
    parser.add_argument("--num-processes", type=int, help="(else auto)")
    parser.add_argument("--process-id", type=int, help="(else auto)")
    parser.add_argument("--cpu-devices", type=int, help="CPU devices per process")
    parser.add_argument("--init-timeout", type=int, default=60, help="seconds")
    parser.add_argument("--checkpoint-dir", required=True, help="seen by all hosts")
    parser.add_argument("--results-dir", help="where process 0 writes NAME.npz")
    parser.add_argument("--data", help=".npz with x, y and the batch order")
    parser.add_argument("--run", action="append", help="NAME[:STOP], repeatable")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--save-every", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    began = time.perf_counter()
    args = parse_args(argv)
    start_jax(args)
    write_replicated_arrays_whole()
    mesh = make_mesh()
    print(
        f"process {jax.process_index()} of {jax.process_count()}: "
        f"{jax.local_device_count()} of {jax.device_count()} devices, "
        f"mesh {dict(mesh.shape)}; {time.perf_counter() - began:.1f} s to join",
        flush=True,
    )
    shardings = jax.tree.map(lambda spec: NamedSharding(mesh, spec), PARAM_SPECS)
    init = init_params(args.seed)
    txs = {
        name: optax_rmsprop.rmsprop(args.learning_rate, **options)
        for name, options in SETTINGS.items()
    }
    functions = make_functions(txs)
    batch = batches(mesh, load_data(args))
    for run in args.run or ["train"]:
        name, _, stop = run.partition(":")
        stop = min(int(stop), args.steps) if stop else args.steps
        params = {s: jax.tree.map(global_array, init, shardings) for s in txs}
        states = functions[0](params)
        layout = {
            s: (
                sharded_like_params(states[s], params[s]),
                sorted({str(leaf.dtype) for leaf in jax.tree.leaves(states[s])}),
            )
            for s in txs
        }
        directory = pathlib.Path(args.checkpoint_dir).resolve() / name
        began = time.perf_counter()
        params, start, losses = train(
            functions, params, directory, stop, batch, args.save_every
        )
        full = gathered(params, mesh)  # Collective: every process takes part.
        seconds = time.perf_counter() - began
        print(f"{name}: steps {start} to {stop} in {seconds:.1f} s", flush=True)
        if args.results_dir and jax.process_index() == 0:
            path = pathlib.Path(args.results_dir) / f"{name}.npz"
            save_results(path, full, start, losses, layout)
    if jax.distributed.is_initialized():
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
