"""A whole training step of small models, and the optimizer's share of it.

Two models, on fixed random batches (nothing is downloaded):

* ``mlp_digits``: a 64-256-256-10 ReLU MLP, batch 128 (scikit-learn's 8x8
  digits have 64 features and 10 classes);
* ``cnn_28x28``: three 3x3 convolutions (32, 64 and 64 channels, the last two
  with stride 2) and two dense layers on 28x28x1 inputs, batch 64.

Timed interleaved: the forward and backward pass alone (``jit(grad(loss))``);
the full donated step (gradient, ``tx.update``, ``apply_updates``) with
``optax_rmsprop.rmsprop`` and with ``optax.rmsprop``; and each optimizer's
update alone (``update + apply_updates`` on fixed gradients). The optimizer's
share of the step is shown two ways: ``1 - forward_backward / full_step``
(which can come out negative when the optimizer costs less than the noise)
and ``update_only / full_step``. Smoke mode uses 8x8 images.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import _report
from benchmarks import _steps
from benchmarks import _timing
from benchmarks import _variants

ROUNDS = 15
SAMPLE_SECONDS = 0.05
VARIANTS = ("default", "nesterov")
OURS, OPTAX = "optax_rmsprop", "optax"
GRAD, FULL, UPDATE = "forward+backward", "full step", "update only"


def run(smoke: bool, repeats: int | None = None) -> list[dict]:
    """The records; ``smoke``: tiny shapes, one round, XLA's fastest compile."""
    with _steps.fast_compile(smoke):
        return _run(smoke, repeats)


def _run(smoke, repeats) -> list[dict]:
    rounds = 1 if smoke else repeats or ROUNDS
    names = VARIANTS[:1] if smoke else VARIANTS
    variants = [v for v in _variants.step_variants(smoke) if v.name in names]
    records = []
    for name, model in (("mlp_digits", _mlp(smoke)), ("cnn_28x28", _cnn(smoke))):
        records += _bench_model(name, model, variants, rounds, smoke)
    return records


def _bench_model(name, model, variants, rounds, smoke) -> list[dict]:
    params, apply, x, y = model
    contenders = _steps.in_parallel(_jobs(_loss(apply), params, x, y, variants))
    _timing.warm_up(contenders)
    steps = 1 if smoke else _timing.steps_per_sample(contenders[0], SAMPLE_SECONDS)
    samples = _timing.interleaved(contenders, rounds, steps)
    size = sum(p.size for p in jax.tree.leaves(params))
    base = {"kind": "training", "model": name, "parameters": size, "batch": len(y)}
    base |= {"rounds": rounds, "steps_per_sample": steps}
    return [base | _record(c.name, samples) for c in contenders]


def _jobs(loss, params, x, y, variants) -> list:
    """Functions building the contenders (they compile, so run them in parallel)."""
    grad = _steps.jit(jax.grad(loss))
    grads = grad(params, x, y)
    jobs = [lambda: _grad_contender(grad, params, x, y)]
    for v in variants:
        for library, tx in ((OURS, _variants.ours(v)), (OPTAX, _variants.theirs(v))):
            full, update = f"{FULL}:{library}/{v.name}", f"{UPDATE}:{library}/{v.name}"
            jobs.append(
                functools.partial(_step_contender, full, tx, loss, params, x, y)
            )
            jobs.append(functools.partial(_update_contender, update, tx, params, grads))
    return jobs


def _update_contender(name, tx, params, grads) -> _timing.Contender:
    return _steps.optimizer_contender(name, tx, params, grads)[0]


def _record(name, samples) -> dict:
    part, name = name.split(":")
    library, variant = name.split("/")
    record = {"part": part, "library": library, "variant": variant}
    record |= _timing.summary(samples[f"{part}:{name}"])
    if part != FULL:
        return record
    grad = _timing.summary(samples[f"{GRAD}:-/-"])["median_s"]
    update = _timing.summary(samples[f"{UPDATE}:{name}"])["median_s"]
    record["optimizer_share"] = 1 - grad / record["median_s"]
    record["update_share"] = update / record["median_s"]
    if library == OURS:
        theirs = samples[f"{FULL}:{OPTAX}/{variant}"]
        paired = _timing.paired_ratio(samples[f"{FULL}:{name}"], theirs)
        record |= {f"vs_optax_{k}": v for k, v in paired.items()}
    return record


def _loss(apply):
    def loss(params, x, y):
        logits = apply(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return loss


def _grad_contender(grad, params, x, y) -> _timing.Contender:
    def run(steps):
        for _ in range(steps):
            grads = grad(params, x, y)
        jax.block_until_ready(grads)

    return _timing.Contender(f"{GRAD}:-/-", run)


def _step_contender(name, tx, loss, params, x, y) -> _timing.Contender:
    def step(params, state, x, y):
        updates, state = tx.update(jax.grad(loss)(params, x, y), state, params)
        return optax.apply_updates(params, updates), state

    state = jax.eval_shape(tx.init, params)
    jitted = _steps.jit(step, donate_argnums=(0, 1))
    compiled = jitted.lower(params, state, x, y).compile()
    box = _steps.copy_and_init(tx, params)

    def run(steps):
        params, state = box
        for _ in range(steps):
            params, state = compiled(params, state, x, y)
        box[:] = jax.block_until_ready((params, state))

    return _timing.Contender(name, run)


def _mlp(smoke):
    sizes = (64, 16, 10) if smoke else (64, 256, 256, 10)
    batch = 8 if smoke else 128
    rng = np.random.default_rng(0)
    params = [_dense(rng, n_in, n_out) for n_in, n_out in zip(sizes, sizes[1:])]

    def apply(params, x):
        for layer in params[:-1]:
            x = jax.nn.relu(x @ layer["w"] + layer["b"])
        return x @ params[-1]["w"] + params[-1]["b"]

    x, y = _batch(rng, (batch, sizes[0]), sizes[-1])
    return params, apply, x, y


def _cnn(smoke):
    channels, hidden = ((4, 8, 8), 16) if smoke else ((32, 64, 64), 128)
    batch, side = (4, 8) if smoke else (64, 28)
    rng = np.random.default_rng(1)
    ins = (1,) + channels[:-1]
    convs = [_conv(rng, c_in, c_out) for c_in, c_out in zip(ins, channels)]
    flat = (side // 4) ** 2 * channels[-1]  # After two stride-2 convolutions.
    dense = [_dense(rng, flat, hidden), _dense(rng, hidden, 10)]

    def apply(params, x):
        convs, dense = params
        for conv, stride in zip(convs, (1, 2, 2)):
            x = jax.nn.relu(_convolve(x, conv["w"], stride) + conv["b"])
        x = jax.nn.relu(x.reshape(x.shape[0], -1) @ dense[0]["w"] + dense[0]["b"])
        return x @ dense[1]["w"] + dense[1]["b"]

    x, y = _batch(rng, (batch, side, side, 1), 10)
    return (convs, dense), apply, x, y


def _convolve(x, w, stride):
    return jax.lax.conv_general_dilated(
        x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _dense(rng, n_in, n_out) -> dict:
    w = rng.standard_normal((n_in, n_out), np.float32) / np.sqrt(n_in)
    return {"w": jnp.asarray(w), "b": jnp.zeros(n_out)}


def _conv(rng, c_in, c_out) -> dict:
    w = rng.standard_normal((3, 3, c_in, c_out), np.float32) / np.sqrt(9 * c_in)
    return {"w": jnp.asarray(w), "b": jnp.zeros(c_out)}


def _batch(rng, shape, classes):
    x = jnp.asarray(rng.standard_normal(shape, np.float32))
    return x, jnp.asarray(rng.integers(0, classes, shape[0]))


def table(records: list[dict]) -> str:
    parts = []
    for model in dict.fromkeys(r["model"] for r in records):
        parts.append(_model_table([r for r in records if r["model"] == model]))
    return "\n\n".join(parts)


def _model_table(records) -> str:
    first = records[0]
    title = (
        f"Training step, {first['model']}: {first['parameters']} parameters, "
        f"batch {first['batch']}; {first['rounds']} rounds x "
        f"{first['steps_per_sample']} steps, interleaved"
    )
    headers = ["variant", "library", "part", "median ms", "IQR ms"]
    headers += ["1 - fwd+bwd/step", "update/step", "step vs optax: paired (IQR)"]
    rows = []
    for r in records:
        rows.append([r["variant"], r["library"], r["part"], _report.ms(r["median_s"])])
        rows[-1] += [_report.ms_range(r), *_shares(r), _versus(r)]
    return _report.table(title, headers, rows)


def _shares(record) -> list[str]:
    if "optimizer_share" not in record:
        return ["-", "-"]
    return [f"{record['optimizer_share']:.1%}", f"{record['update_share']:.1%}"]


def _versus(record) -> str:
    if "vs_optax_ratio" not in record:
        return "-"
    low, high = record["vs_optax_ratio_q25"], record["vs_optax_ratio_q75"]
    return f"{record['vs_optax_paired_ratio']:.3f} ({low:.3f}-{high:.3f})"
