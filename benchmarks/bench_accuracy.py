"""Accuracy of compact storage of the second moment against float32 storage.

Issue 13's scenario: one float32 leaf of 4096 elements, ``eps`` 0, and
gradients ``g_t = s_t z_t`` with ``z_t`` iid standard normal and ``s_t =
100 ** (-t / 4000)`` for t = 0 .. 3999, shrinking 100x over 4000 steps -- the
regime where a rounded second moment lags the shrinking gradient.
``scale_by_rms(decay, eps=0, nu_dtype=X)`` runs the same gradients
(``fold_in(key, t)``, one ``jax.lax.scan`` in one jit per run) with float32
storage and each compact one, and the final step's updates are compared
element by element:

* ``rms_error = rms(u) / rms(u_f32) - 1`` (a bias of the update's size);
* ``median_error = median(|u / u_f32 - 1|)`` (a typical element's error);

each the mean over seeds. Targets at every decay: ``|rms_error| <= 0.02``;
``median_error <= 0.01`` (bf16) or ``0.05`` (int8) at decay <= 0.99, and
``<= 0.02`` (bf16) or ``0.10`` (int8) at 0.999. These are deterministic
figures (``_report.verdict_of_value``). Where the library warns at
construction (``UserWarning``) that a storage cannot reach them at a decay,
the verdict is ``warned`` and counts as neither met nor missed. Smoke mode:
100 steps (the scale still falls 100x), one seed, decay 0.99.
"""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import optax_rmsprop
from benchmarks import _report
from benchmarks import _steps
from benchmarks import _variants

SIZE = 4096
STEPS, SEEDS, DECAYS = 4000, 4, (0.9, 0.95, 0.99, 0.999)
SMOKE_STEPS, SMOKE_SEEDS, SMOKE_DECAYS = 100, 1, (0.99,)
SHRINK = 100.0  # The gradients' scale falls this much over the run.
RMS_LIMIT = 0.02
# (limit at decay <= 0.99, limit above) of median_error, per storage.
MEDIAN_LIMITS = {"nu_bf16": (0.01, 0.02), "nu_int8": (0.05, 0.10)}
OURS, SHAPE = "optax_rmsprop", f"leaf_{SIZE}"


def run(smoke: bool, repeats: int | None = None) -> list[dict]:
    """The records: two targets per compact storage and decay."""
    del repeats  # Deterministic figures, not timings.
    steps, seeds, decays = STEPS, SEEDS, DECAYS
    if smoke:
        steps, seeds, decays = SMOKE_STEPS, SMOKE_SEEDS, SMOKE_DECAYS
    with _steps.fast_compile(smoke):
        storages = _variants.storages(smoke)
        records = [r for d in decays for r in _decay_records(d, storages, steps, seeds)]
    return [r | {"steps": steps, "seeds": seeds} for r in records]


def _decay_records(decay, storages, steps, seeds) -> list[dict]:
    reference = _last_updates(_build(decay, None)[0], steps, seeds)
    records = []
    for storage, nu_dtype in storages.items():
        tx, warning = _build(decay, nu_dtype)
        figures = _errors(_last_updates(tx, steps, seeds), reference)
        records += _records(storage, decay, figures, warning)
    return records


def _build(decay, nu_dtype):
    """``scale_by_rms(decay, eps=0, nu_dtype)`` and its first ``UserWarning``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tx = optax_rmsprop.scale_by_rms(decay=decay, eps=0.0, nu_dtype=nu_dtype)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    return tx, (messages[0] if messages else None)


def _last_updates(tx, steps, seeds) -> list[np.ndarray]:
    """The last step's update of each seed's run, in float64."""
    last_update = _steps.jit(functools.partial(_last_update, tx, steps))
    keys = [jax.random.key(seed) for seed in range(seeds)]
    return [np.asarray(last_update(key), np.float64) for key in keys]


def _last_update(tx, steps, key):
    """The update of the last of ``steps`` steps from ``tx.init(zeros)``."""

    def step(carry, t):
        state, _ = carry
        scale = SHRINK ** (-t / steps)
        grads = scale * jax.random.normal(jax.random.fold_in(key, t), (SIZE,))
        return tx.update(grads, state)[::-1], None

    zeros = jnp.zeros(SIZE, jnp.float32)
    ts = jnp.arange(steps, dtype=jnp.int32)
    (_, last), _ = jax.lax.scan(step, (tx.init(zeros), zeros), ts)
    return last


def _errors(updates, reference) -> dict:
    """The mean over seeds of ``rms_error`` and ``median_error``."""
    rms = lambda u: np.sqrt(np.mean(u**2))
    rms_errors = [rms(u) / rms(r) - 1 for u, r in zip(updates, reference)]
    medians = [np.median(np.abs(u / r - 1)) for u, r in zip(updates, reference)]
    return {
        "rms_error": float(np.mean(rms_errors)),
        "median_error": float(np.mean(medians)),
    }


def _records(storage, decay, figures, warning=None) -> list[dict]:
    """The ``rms_error`` and ``median_error`` targets' records.

    Args:
      storage: the compact storage's variant name, e.g. ``nu_int8``.
      decay: the EMA decay run.
      figures: ``{"rms_error": ..., "median_error": ...}``.
      warning: the library's warning at construction, or None.

    Returns:
      Two records, each with its figure, target and verdict (``warned: ...``
      when the library warned).
    """
    median_limit = MEDIAN_LIMITS[storage][decay > 0.99]
    targets = (
        ("rms_error", RMS_LIMIT, f"|x| <= {RMS_LIMIT:g}"),
        ("median_error", median_limit, f"<= {median_limit:g}"),
    )
    records = []
    for name, limit, target in targets:
        verdict = _report.verdict_of_value(abs(figures[name]), limit)
        if warning:
            verdict = _report.warned(warning)
        record = {"kind": "accuracy", "shape": SHAPE, "library": OURS}
        record |= {"variant": storage, "decay": decay, name: figures[name]}
        record |= {"measure": f"{name} at decay {decay:g}", "target": target}
        records.append(record | {"verdict": verdict})
    return records


def table(records: list[dict]) -> str:
    first = records[0]
    title = (
        f"Accuracy of compact storage: the last update of {first['steps']} steps, "
        f"gradients shrinking {SHRINK:g}x, eps 0, {SIZE} elements, mean of "
        f"{first['seeds']} seeds; against float32 storage"
    )
    headers = ["variant", "decay", "figure", "value", "target", "verdict"]
    rows = []
    for r in records:
        name = r["measure"].split()[0]
        rows.append(
            [r["variant"], r["decay"], name, r[name], r["target"], r["verdict"]]
        )
    return _report.table(title, headers, rows)
