"""The header: machine, library versions and backend, measured at start-up."""

import importlib.metadata
import os
import pathlib
import platform
import subprocess

import jax

_PACKAGES = ("jax", "jaxlib", "optax", "optax_rmsprop", "numpy", "torch")


def describe() -> dict:
    """What the results depend on: CPU, cores, versions, backend, load."""
    devices = jax.devices()
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(_affinity()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in _PACKAGES},
        "source": _source(),
        "backend": jax.default_backend(),
        "devices": f"{len(devices)} x {devices[0].device_kind}",
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else [],
    }


def header(machine: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    load = ", ".join(f"{x:.2f}" for x in machine["load_average"]) or "n/a"
    return "\n".join(
        [
            f"Machine: {machine['cpu']}, {machine['logical_cores']} logical cores "
            f"({machine['usable_cores']} usable), {machine['platform']}",
            f"Python {machine['python']}; {versions}",
            f"optax_rmsprop source: {machine['source']}",
            f"JAX backend: {machine['backend']} ({machine['devices']})",
            f"Load average (1, 5, 15 min) at start: {load}",
        ]
    )


def usable_cores() -> int:
    return len(_affinity())


def _affinity():
    if hasattr(os, "sched_getaffinity"):
        return os.sched_getaffinity(0)
    return range(os.cpu_count() or 1)


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    """The CPU's marketing name: /proc/cpuinfo on Linux, else ``platform``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _source() -> str:
    """The checkout measured: commit, and the package files changed since."""
    root = pathlib.Path(__file__).resolve().parent.parent

    def git(*args):
        result = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10
        )
        return result.stdout.rstrip("\n") if result.returncode == 0 else ""

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--", "optax_rmsprop").splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    if not commit:
        return "unknown (not a git checkout)"
    dirty = [line[3:] for line in changed]
    return commit + (f" + uncommitted changes to {', '.join(dirty)}" if dirty else "")
