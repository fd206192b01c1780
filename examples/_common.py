"""Shared by the examples: the digits data, a small MLP, a training loop, figures.

Not an example itself. The scripts import it as ``_common`` (Python puts the
script's own folder on ``sys.path``).
"""

import functools
import pathlib
import time
from collections.abc import Callable
from collections.abc import Container
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

# 8x8 images in, ten classes out.
N_FEATURES, N_CLASSES = 64, 10


def digits_data(test_size=0.25, split_seed=0):
    """scikit-learn's bundled digits (1797 8x8 images), standardised, split.

    The scaler is fitted on the training part only; the split is stratified
    and fixed by ``split_seed``. Returns ``(x_train, y_train), (x_test, y_test)``
    as float32 / int32 JAX arrays.
    """
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, stratify=y, random_state=split_seed
    )
    scaler = StandardScaler().fit(x_train)  # Always-blank pixels keep scale 1.
    as_jax = lambda x, y: (
        jnp.asarray(scaler.transform(x), jnp.float32),
        jnp.asarray(y, jnp.int32),
    )
    return as_jax(x_train, y_train), as_jax(x_test, y_test)


@functools.partial(jax.jit, static_argnames="hidden")
def init_mlp(key, hidden=(128, 64)):
    """``{"layer_i": {"w", "b"}}`` for 64 -> hidden... -> 10, LeCun-normal weights."""
    sizes = (N_FEATURES, *hidden, N_CLASSES)
    keys = jax.random.split(key, len(sizes) - 1)
    return {
        f"layer_{i}": {
            "w": jax.random.normal(k, (n_in, n_out)) / np.sqrt(n_in),
            "b": jnp.zeros(n_out),
        }
        for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:]))
    }


def logits_fn(params, x):
    """tanh hidden layers, linear output."""
    *hidden, last = (params[f"layer_{i}"] for i in range(len(params)))
    for layer in hidden:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ last["w"] + last["b"]


def loss_fn(params, x, y):
    """Mean softmax cross-entropy."""
    logits = logits_fn(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def accuracy(params, x, y):
    return jnp.mean(jnp.argmax(logits_fn(params, x), axis=-1) == y)


_jitted_loss = jax.jit(loss_fn)


@jax.jit
def evaluate(params, x, y):
    """``(loss, accuracy)`` on a whole data set, jitted."""
    return loss_fn(params, x, y), accuracy(params, x, y)


def weight_medians(tree):
    """``{"layer_i": median}`` over each weight matrix of a params-shaped tree."""
    return {name: jnp.median(layer["w"]) for name, layer in tree.items()}


def fit(
    tx: optax.GradientTransformation,
    params: Any,
    train: tuple[jax.Array, jax.Array],
    steps: int,
    *,
    batch_size: int = 128,
    seed: int = 0,
    log_at: Container[int] = range(0, 1 << 31, 10),
    probe: Callable[[Any], Any] | None = None,
    desc: str | None = None,
) -> dict[str, Any]:
    """Mini-batch training with a jitted step and a tqdm bar.

    Batches are drawn without replacement, epoch by epoch, in an order fixed
    by ``seed`` (the same for every optimizer). At step 0, at each step in
    ``log_at`` and after the last, the full training loss and
    ``probe(opt_state)`` (jitted) are recorded.

    Returns:
        ``{"params", "steps", "train_loss", "probes"}``: the final params, the
        logged step numbers (0 is before training), and the values there.
    """
    x, y = train
    step_fn = jax.jit(_make_step(tx))
    probe = jax.jit(probe) if probe is not None else (lambda state: None)
    batches = batch_indices(len(x), batch_size, steps, seed)
    state = jax.jit(tx.init)(params)  # One compilation, not one per eager op.
    history = {"steps": [0], "train_loss": [_jitted_loss(params, x, y)]}
    history["probes"] = [probe(state)]
    for i in tqdm(range(1, steps + 1), desc=desc, unit="step", leave=True):
        params, state = step_fn(params, state, x, y, batches[i - 1])
        if i in log_at or i == steps:
            history["steps"].append(i)
            history["train_loss"].append(_jitted_loss(params, x, y))
            history["probes"].append(probe(state))
    history["train_loss"] = np.asarray(history["train_loss"])
    history["params"] = params
    return history


def _make_step(tx):
    def step(params, state, x, y, index):
        grads = jax.grad(loss_fn)(params, x[index], y[index])
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def batch_indices(n, batch_size, steps, seed):
    """``steps`` rows of ``batch_size`` indices, reshuffled every epoch."""
    rng = np.random.default_rng(seed)
    per_epoch = n // batch_size
    epochs = -(-steps // per_epoch)
    order = [rng.permutation(n)[: per_epoch * batch_size] for _ in range(epochs)]
    return np.concatenate(order).reshape(-1, batch_size)[:steps].astype(np.int32)


def new_figure(ncols=1, width=6.4, height=4.4, **subplot_kw):
    """A figure drawn by the Agg backend (no pyplot, no display) and its axes."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, **subplot_kw)


def save_figure(fig: Figure, out_dir: str | pathlib.Path, name: str) -> pathlib.Path:
    """Writes ``out_dir/name`` (creating the folder) and prints the path."""
    path = pathlib.Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table; floats get four significant digits."""
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = [header, ["---"] * len(header), *([cell(v) for v in r] for r in rows)]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` with its outputs ready, and the wall-clock seconds it took."""
    start = time.perf_counter()
    result = jax.block_until_ready(fn())
    return result, time.perf_counter() - start
