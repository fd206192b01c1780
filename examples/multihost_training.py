"""Multi-process training: jax.distributed, one mesh over all processes, orbax.

Once a model outgrows one machine, JAX runs one process per host, each
driving its own devices and all running the same program on global arrays.
This script shows RMSprop in that setting on one computer. It starts
``--processes`` local processes (default 2) of ``--devices-per-process`` CPU
devices (default 4) that join one job with ``jax.distributed.initialize``
(coordinator on 127.0.0.1, collectives between devices over gloo), build a
``data x model`` mesh spanning the processes, shard the digits MLP over it
(as ``sharded_training.py`` does), ``jax.jit(tx.init)`` the optimizer state
(every state leaf sharded like its parameter), train with donated buffers,
and save parameters and state with orbax's ``CheckpointManager`` every
``--save-every`` steps. Five settings train side by side: the default,
Nesterov momentum, centered with bias correction, and the averages stored in
bf16 and in int8 (the 8192-element weight matrices).

Three launches, each with new processes (``_multihost_worker.py``):

1. one process with all the devices and the same mesh: the reference;
2. the multi-process job, trained without a break; and the same job
   "preempted": it stops after step ``--stop-at``;
3. new processes restore the preempted job's latest checkpoint and finish it.

The table says whether the job ends with the very parameters of the
one-process run and whether the resumed job ends with those of the
uninterrupted one, leaf by leaf and bit for bit. The one-process run also
joins a (one-process) ``jax.distributed`` job so that its all-reduces go
through gloo too: with ``--reference-collectives in-process`` it uses XLA's
own in-process all-reduce instead, which adds the four partial sums of the
4-device ``data`` axis in another order, and the parameters then agree to
float32 rounding only (``docs/clients.md``).

Logs, checkpoints and results go to ``--out``. The processes of a launch are
killed (their whole process groups) if one fails, if the launch outlives
``--timeout`` seconds, or if the launcher is interrupted.

Run ``python examples/multihost_training.py`` (about half a minute on two
idle CPU cores). On a real cluster or TPU pod, run one worker per host
instead (``docs/clients.md``)::

    python examples/multihost_training.py --worker --checkpoint-dir /shared/ckpt
"""

import argparse
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np

_THIS = pathlib.Path(__file__).resolve()


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(label, processes, devices, worker_args, log_dir, timeout, gloo=True):
    """Runs ``processes`` workers to the end; kills them all on any failure.

    Each worker gets its own process group, killed whole (with anything it
    started) if a worker fails, if the launch outlives ``timeout`` seconds,
    or if this function is interrupted. ``gloo=False`` (one process only)
    starts no coordinator: XLA's in-process collectives, not gloo's.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(_THIS), "--worker"]
    command += ["--num-processes", str(processes), "--cpu-devices", str(devices)]
    if gloo:
        command += ["--coordinator", f"127.0.0.1:{free_port()}"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    workers, logs = [], [log_dir / f"process_{i}.log" for i in range(processes)]
    start = time.monotonic()
    try:
        for i, log in enumerate(logs):
            with open(log, "w") as out:
                workers.append(
                    subprocess.Popen(
                        [*command, "--process-id", str(i), *worker_args],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        cwd=_THIS.parent,
                        env=env,
                        start_new_session=True,
                    )
                )
        _wait_all(workers, logs, start + timeout, label)
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
    seconds = time.monotonic() - start
    print(f"{label}: {processes} process(es) x {devices} devices, {seconds:.1f} s")
    return seconds


def _wait_all(workers, logs, deadline, label):
    while any(w.poll() is None for w in workers):
        failed = [i for i, w in enumerate(workers) if w.poll() not in (None, 0)]
        if failed:
            raise RuntimeError(f"{label}: process {failed[0]} failed\n" + _tail(logs))
        if time.monotonic() > deadline:
            raise TimeoutError(f"{label}: timed out\n" + _tail(logs))
        time.sleep(0.1)
    failed = [i for i, w in enumerate(workers) if w.returncode != 0]
    if failed:
        raise RuntimeError(f"{label}: process {failed[0]} failed\n" + _tail(logs))


def _tail(logs, lines=15):
    parts = []
    for log in logs:
        text = log.read_text().splitlines() if log.exists() else []
        kept = [line for line in text if not line.startswith("[Gloo]")]
        parts.append(f"--- {log}\n" + "\n".join(kept[-lines:]))
    return "\n".join(parts)


def write_data(path, args):
    """The digits training set and every step's batch indices, for the workers."""
    import _common  # Here, not above: workers start through this file too.

    (x, y), _ = _common.digits_data()
    order = _common.batch_indices(len(x), args.batch_size, args.steps, args.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=np.asarray(x), y=np.asarray(y), order=order)


def load(path):
    """``{setting: {field: array}}`` from a worker's ``.npz``."""
    results = {}
    with np.load(path) as data:
        for key in data.files:
            setting, field = key.split("|", 1)
            results.setdefault(setting, {})[field] = data[key]
    return results


def params_of(result):
    return {k: v for k, v in result.items() if k.startswith("params")}


def compare(a, b):
    """Whether two runs' parameters are bit-identical, else their largest gap."""
    a, b = params_of(a), params_of(b)
    if a.keys() != b.keys():
        raise AssertionError(f"different parameters: {sorted(a)} vs {sorted(b)}")
    if all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a):
        return "bit-identical"
    diff = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    return f"max diff {diff:.3g}"


def results_table(one_process, uninterrupted, resumed, processes):
    """One row per setting: the sharding count and the two comparisons."""
    rows = []
    for setting in sorted(resumed, key=lambda s: int(resumed[s]["index"])):
        stored, shaped = resumed[setting]["sharded_like"]
        rows.append(
            [
                setting,
                f"{stored}/{shaped}",
                compare(uninterrupted[setting], one_process[setting]),
                int(resumed[setting]["start"]),
                compare(resumed[setting], uninterrupted[setting]),
                float(uninterrupted[setting]["losses"][-1]),
            ]
        )
    header = [
        "setting",
        "state leaves sharded like their param",
        f"{processes} processes vs 1 process",
        "resumed from step",
        "resumed vs uninterrupted",
        "last loss",
    ]
    import _common  # Here, not above: workers start through this file too.

    return _common.markdown_table(header, rows)


def main(argv=None):
    """Runs the three launches and prints the table; ``--worker``: one process.

    Returns:
        ``{"one_process", "uninterrupted", "resumed"}``: each
        ``{setting: {field: array}}`` as the workers saved it, for the tests.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help="be one process")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--devices-per-process", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--save-every", type=int, default=10)
    parser.add_argument("--stop-at", type=int, default=20, help="preempted here")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch")
    parser.add_argument("--seed", type=int, default=0, help="init and batch order")
    parser.add_argument("--timeout", type=float, default=300, help="s per launch")
    parser.add_argument(
        "--reference-collectives",
        choices=["gloo", "in-process"],
        default="gloo",
        help="the one-process run's collectives: gloo's, as the job's, or XLA's",
    )
    parser.add_argument("--out", default="out/multihost", help="logs, checkpoints")
    args, worker_args = parser.parse_known_args(argv)
    if args.worker:
        import _multihost_worker  # JAX starts in the workers only.

        return _multihost_worker.main(argv)

    out = pathlib.Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)  # Stale checkpoints would be resumed.
    write_data(out / "data.npz", args)
    common = [
        f"--data={out / 'data.npz'}",
        f"--steps={args.steps}",
        f"--batch-size={args.batch_size}",
        f"--seed={args.seed}",
        f"--save-every={args.save_every}",
        f"--checkpoint-dir={out / 'checkpoints'}",
        f"--results-dir={out / 'results'}",
        *worker_args,
    ]
    n, local = args.processes, args.devices_per_process
    plan = [
        ("launch 1: one process", 1, n * local, ["--run=one_process"]),
        (
            "launch 2: the job, and the job preempted",
            n,
            local,
            ["--run=uninterrupted", f"--run=preempted:{args.stop_at}"],
        ),
        ("launch 3: the preempted job resumed", n, local, ["--run=preempted"]),
    ]
    for i, (label, processes, devices, runs) in enumerate(plan, 1):
        gloo = processes > 1 or args.reference_collectives == "gloo"
        log_dir = out / "logs" / str(i)
        launch(label, processes, devices, [*common, *runs], log_dir, args.timeout, gloo)
    results = {
        name: load(out / "results" / f"{file}.npz")
        for name, file in [
            ("one_process", "one_process"),
            ("uninterrupted", "uninterrupted"),
            ("resumed", "preempted"),
        ]
    }
    print(
        f"\n{args.steps} steps on a {n * local}-device mesh, checkpoints every "
        f"{args.save_every} steps, the job preempted after step {args.stop_at}; "
        f"one process with {args.reference_collectives} collectives:\n"
    )
    print(results_table(**results, processes=n))
    return results


if __name__ == "__main__":
    main()
