"""The optimizer variants benchmarked, and what each is compared against.

A variant is ``optax_rmsprop.rmsprop``'s keyword options, the options of the
``optax.rmsprop`` it is measured against (the same, minus options optax does
not have), and ``torch.optim.RMSprop``'s options where PyTorch has the same
algorithm (PyTorch has no Nesterov or bias correction). Compact-state
variants (``nu_dtype``) are listed only when this build accepts them.
"""

import functools
from typing import Any
from typing import NamedTuple

import jax.numpy as jnp
import optax

import optax_rmsprop

LEARNING_RATE = 1e-3
DECAY = 0.9
EPS = 1e-8
MOMENTUM = 0.9


class Variant(NamedTuple):
    name: str
    options: dict
    optax_options: dict  # optax.rmsprop's options for the same algorithm.
    torch_options: dict | None  # None: PyTorch has no such variant.
    fewer_bytes: bool  # Moves fewer bytes than optax: expected to be ahead.


def _same(name, options, torch=False, fewer_bytes=False) -> Variant:
    """A variant with optax's options: compared with optax.rmsprop(**options)."""
    return Variant(name, options, options, options if torch else None, fewer_bytes)


_CENTERED = {"centered": True}
_MOMENTUM = {"momentum": MOMENTUM}
_NESTEROV = {"momentum": MOMENTUM, "nesterov": True}
_STEP_VARIANTS = (
    _same("default", {}, torch=True),
    _same("centered", _CENTERED, torch=True),
    _same("momentum", _MOMENTUM, torch=True),
    _same("nesterov", _NESTEROV, fewer_bytes=True),  # 11 passes, optax 14.
    _same("bias_correction", {"bias_correction": True}),
)
# Extra variants for the (cheap) memory-traffic table only.
_EXTRA_VARIANTS = (
    _same("centered_momentum", _CENTERED | _MOMENTUM),
    _same("centered_nesterov", _CENTERED | _NESTEROV, fewer_bytes=True),
)
_COMPACT = (("nu_bf16", jnp.bfloat16), ("nu_int8", "int8"))


def step_variants(smoke: bool = False) -> list[Variant]:
    """The variants timed: optax's options, then compact state if available.

    Smoke mode keeps one variant of each kind the harness treats differently
    (with a PyTorch twin; fewer bytes than optax; compared with optax's default).
    """
    variants = list(_STEP_VARIANTS) + list(_compact_variants())
    if smoke:
        return [variants[0], variants[3]] + variants[len(_STEP_VARIANTS) :][-1:]
    return variants


def all_variants(smoke: bool = False) -> list[Variant]:
    return step_variants(smoke) + ([] if smoke else list(_EXTRA_VARIANTS))


@functools.cache
def unavailable() -> tuple[str, ...]:
    """Compact-state variants this build of optax_rmsprop rejects."""
    return tuple(name for name, dtype in _COMPACT if not _accepts(dtype))


def storages(smoke: bool = False) -> dict:
    """``{variant name: nu_dtype}`` of ``step_variants``' compact storages."""
    variants = step_variants(smoke)
    return {v.name: v.options["nu_dtype"] for v in variants if is_compact(v)}


def is_compact(variant: Variant) -> bool:
    """Whether ``variant`` stores its second moment compactly (not float32)."""
    return "nu_dtype" in variant.options


def ours(variant: Variant, learning_rate=LEARNING_RATE):
    return optax_rmsprop.rmsprop(learning_rate, decay=DECAY, eps=EPS, **variant.options)


def theirs(variant: Variant, learning_rate=LEARNING_RATE):
    return optax.rmsprop(learning_rate, decay=DECAY, eps=EPS, **variant.optax_options)


def torch_kwargs(variant: Variant) -> dict:
    """``torch.optim.RMSprop``'s arguments (``alpha`` is our ``decay``)."""
    options = {"lr": LEARNING_RATE, "alpha": DECAY, "eps": EPS}
    return options | variant.torch_options


@functools.cache
def _compact_variants() -> tuple[Variant, ...]:
    return tuple(
        Variant(name, {"nu_dtype": dtype}, {}, None, True)
        for name, dtype in _COMPACT
        if name not in unavailable()
    )


def _accepts(nu_dtype: Any) -> bool:
    try:
        optax_rmsprop.rmsprop(LEARNING_RATE, nu_dtype=nu_dtype)
    except ValueError:
        return False
    return True


def baseline(variant: Variant, variants: list[Variant]) -> str:
    """The variant whose ``optax.rmsprop`` run ``variant`` is compared with."""
    return next(v.name for v in variants if v.optax_options == variant.optax_options)
