"""How the running average of squares is stored between steps.

Three storage options, picked by ``nu_dtype``:

* a floating dtype (or ``None``): the average is stored as an array of that
  dtype, cast with round-to-nearest (float32 by default for bf16/f16 params);
* ``jnp.bfloat16``: stored in bf16 but computed in float32 and written back
  with *stochastic rounding*. Round-to-nearest freezes an EMA: with decay
  0.999 an increment ``0.001 * (g**2 - nu)`` below half a bf16 ulp
  (``2**-9 * nu``) is always rounded away. Rounding up with probability equal
  to the discarded fraction makes the stored value unbiased, so the average
  keeps tracking. The random bits come from a lattice in (element index,
  step count): deterministic, free of memory traffic, fresh every step, and
  for each element a golden-ratio sequence over the steps, whose rounding
  errors cancel sooner than independent draws' (see :func:`dither_bits`);
* ``"int8"``: :class:`Int8Blocks`, one byte per element plus one float32
  scale per block of 256 elements of the flattened leaf. The byte is an
  unsigned 8-bit float relative to the block's scale (5 exponent bits, 3
  mantissa bits: 31 binades below ``16 * scale``, relative spacing 1/8), so
  small averages in a block holding a large one keep their magnitude instead
  of collapsing to zero. Stochastic rounding again keeps it unbiased (with
  the lattice hashed once: at 1/8 steps, a lattice's feedback would bias
  it). Each step the scale moves by the power of two that puts the largest
  average the block stored at 1 to 2 times it (found from the codes alone,
  a one-byte pass), and the code reaches 16x above the scale so a growing
  average has room. Leaves under 4096 elements stay float32. Above decay
  :data:`INT8_MAX_DECAY` the rounding errors add up faster than the average
  forgets them: construction warns.

The step uses the average as stored (``Storage.read_written``): with donated
state XLA then writes it in place and reads it back, where reading last
step's value after overwriting it would cost a copy of the whole average
every step. Compact storages floor it at this step's own share
``(1 - decay) g**2``, so ``|update| <= 1 / sqrt(1 - decay)`` holds as in
float32; the rounding moves each update by at most half the storage's
relative spacing (bf16 2**-8, int8 1/16), unbiased in the average.
"""

import math
import numbers
import os
import sys
import types
import warnings
from typing import Any
from typing import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from optax_rmsprop import _tree_math as tm

INT8 = "int8"
BLOCK_SIZE = 256
MIN_QUANTISED_SIZE = 4096
_HEADROOM = 4  # Binades of room above the block scale for a growing average.
_EXPONENT_BIAS = 127 - 31 + _HEADROOM  # Code exponent e in 1..31 -> 2**(e-31+4).
_SMALLEST = 2.0 ** (1 - 31 + _HEADROOM)  # Code 8 (e = 1, m = 0), relative to scale.
_LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_ONE_EXPONENT = 127 - _EXPONENT_BIAS  # 27: the code exponent of 1.0 times the scale.
_ONE_CODE = 8 * _ONE_EXPONENT  # 1.0 times the block scale (e=27, m=0).
# Dither lattice steps (see dither_bits): per element, and per step (the
# golden ratio times 2**32).
_INDEX_STEP, _GOLDEN_STEP = 0x85EBCA6B, 0x9E3779B9


class Int8Blocks(NamedTuple):
    """A non-negative float32 array stored as one byte per element.

    Attributes:
        codes: uint8 array of the parameter's shape; ``code = 8 * e + m``
            stands for ``scale * 2**(e - 27) * (1 + m / 8)`` (``e >= 1``), and
            0 for 0.
        scales: float32 array, one scale per block of 256 consecutive
            elements of the flattened leaf.
    """

    codes: jax.Array
    scales: jax.Array


class Storage(NamedTuple):
    """How one running average is kept between steps; chosen when a transform is built.

    Attributes:
        compact: whether ``write`` draws random bits keyed by the step count
            (the state must then count steps).
        init: ``(params, value, compute_dtype_of)`` -> the stored tree of an
            average filled with ``value``, shaped and sharded like the params
            (``compute_dtype_of`` maps a parameter's dtype to the average's
            compute dtype). Eagerly it costs one small compilation per leaf
            shape, as optax's ``init`` does.
        read: ``(updates, stored)`` -> last step's average in compute
            precision, for this step's average.
        write: ``(values, previous stored, count)`` -> the stored tree.
        read_written: ``(updates, stored)`` -> the average just written, in
            compute precision, for this step's update.
    """

    compact: bool
    init: Callable[[Any, Any, Callable], Any]
    read: Callable[[Any, Any], Any]
    write: Callable[[Any, Any, Any], Any]
    read_written: Callable[[Any, Any], Any]


def storages(nu_dtype: Any) -> tuple[Storage, Storage]:
    """``(average of squares, running mean)`` storages for a canonical ``nu_dtype``.

    A plain floating dtype (or ``None``) keeps each average as an array; the
    average of squares read from it is capped at the dtype's largest finite
    value (``tm.capped``). ``jnp.bfloat16`` stores both averages in bf16 with
    stochastic rounding; ``"int8"`` stores the average of squares as
    :class:`Int8Blocks` and the mean in bf16. Compact storages cannot hold
    ``inf`` (bf16 rounding clips, int8 saturates): no cap, which would make
    XLA copy the stored average every step.
    """
    if not needs_count(nu_dtype):
        plain = Storage(
            compact=False,
            init=tm.full_like,
            read=_read_plain,
            write=_write_plain,
            read_written=_read_plain,
        )
        return plain._replace(read=_read_capped), plain
    bf16 = Storage(
        compact=True,
        init=_init_bf16,
        read=decode_tree,
        write=encode_tree,
        read_written=decode_tree,
    )
    if nu_dtype == INT8:
        return bf16._replace(init=_init_int8, read=_decode_rescaled_tree), bf16
    return bf16, bf16


# The largest decay at which int8 storage keeps the step's update within the
# accuracy bounds of ``benchmarks/bench_accuracy.py`` (update RMS within 2%
# of float32 storage's, median per-element error within 5%), measured as the
# mean of 4 seeds: at 0.95 +0.8% and 4.4%; at 0.97 5.7%, at 0.99 8%, at 0.999
# 18% (and the RMS 16% too large). bf16 storage meets its bounds (1% at 0.99,
# 2% at 0.999) at every decay.
INT8_MAX_DECAY = 0.95


def warn_if_too_coarse(nu_dtype: Any, decay: Any) -> None:
    """Warns when int8 storage cannot track the average at a plain ``decay``.

    Each write rounds the stored average by up to an eighth; the slower the
    average forgets, the longer those errors add up (a random walk) before
    they decay, so above :data:`INT8_MAX_DECAY` the update drifts from
    float32 storage's by more than 5% per element. bf16 (1/256) does not.
    """
    plain = isinstance(decay, numbers.Real) and not isinstance(decay, bool)
    if nu_dtype != INT8 or not plain or float(decay) <= INT8_MAX_DECAY:
        return
    warnings.warn(
        f"nu_dtype='int8' cannot track the average of squares at decay "
        f"{float(decay):g} (above {INT8_MAX_DECAY}): each stored value is "
        "rounded by up to 1/8 and at this decay the errors add up, so the "
        "update differs from float32 storage's by more than 5% per element. "
        "Use nu_dtype=jnp.bfloat16 (within 2% at any decay, 0.79x the bytes).",
        UserWarning,
        stacklevel=_caller_stacklevel(),
    )


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside this package (the user's)."""
    package = os.path.dirname(__file__)
    frame: types.FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and os.path.dirname(frame.f_code.co_filename) == package:
        frame, level = frame.f_back, level + 1
    return level


def moment_dtype(param_dtype: Any, nu_dtype: Any) -> jnp.dtype:
    """The real dtype a parameter's second moment is computed in.

    A plain floating ``nu_dtype`` wins (it is then also the stored dtype);
    otherwise, and for the compact storages (``jnp.bfloat16``, ``"int8"``,
    which compute in float32 and store apart), bf16/f16 parameters keep a
    float32 average (a bf16 EMA with decay 0.999 rounds every increment away
    and freezes) and complex parameters keep a real one (it averages
    ``|g|^2``).
    """
    if nu_dtype is not None and not needs_count(nu_dtype):
        return jnp.dtype(nu_dtype)
    real = jnp.finfo(param_dtype).dtype
    return jnp.dtype(jnp.float32) if real in _LOW_PRECISION else real


def first_moment_dtype(param_dtype: Any, nu_dtype: Any) -> jnp.dtype:
    """The dtype of a running mean of gradients: complex for complex params."""
    real = moment_dtype(param_dtype, nu_dtype)
    if jnp.issubdtype(param_dtype, jnp.complexfloating):
        return jnp.result_type(real, jnp.complex64)
    return real


def _read_plain(updates: Any, stored: Any) -> Any:
    del updates  # Unused: a plain stored tree is its own compute precision.
    return stored


def _read_capped(updates: Any, stored: Any) -> Any:
    """An average that overflowed last step is read as the largest finite value.

    (``|g| > 1.8e19`` in float32.) It is then forgotten like any other,
    instead of freezing the parameter at a zero update forever.
    """
    del updates  # Unused.
    return tm.capped(stored)


def _write_plain(values: Any, previous: Any, count: Any) -> Any:
    del previous, count  # Unused: the new average is stored as computed.
    return values


def _init_bf16(params: Any, value: Any, compute_dtype_of: Callable) -> Any:
    """Filled in bf16 directly; complex means stay complex (no complex bf16)."""
    return tm.full_like(
        params, value, lambda dtype: _bf16_unless_complex(compute_dtype_of(dtype))
    )


def _init_int8(params: Any, value: Any, compute_dtype_of: Callable) -> Any:
    """:class:`Int8Blocks` holding ``value`` everywhere.

    Outside a trace, without quantising: a constant fill has one code and one
    scale, ``value`` (1 for 0, as :func:`_fresh_scales` gives), the code
    standing for 1.0 times it (0 for 0), so no quantiser needs compiling and
    the scales are made on the host. Under ``jit`` the filled leaf is
    quantised, so that the scales, derived from the (sharded) leaf, are
    sharded with its blocks. Leaves under 4096 elements stay float32.
    """

    def fill(p):
        size = math.prod(jnp.shape(p))
        if size < MIN_QUANTISED_SIZE:
            return tm.full_like(p, value, compute_dtype_of)
        if isinstance(p, jax.core.Tracer):
            return _quantised_afresh(tm.full_like(p, value, compute_dtype_of))
        blocks = -(-size // BLOCK_SIZE)
        code, scale = _constant_code_and_scale(value)
        codes = jnp.full_like(p, code, dtype=jnp.uint8)
        return Int8Blocks(codes=codes, scales=_filled_scales(blocks, scale))

    return tm.map_leaves(fill, params)


def _constant_code_and_scale(value: Any) -> tuple[Any, Any]:
    """The code and the block scale of a block filled with ``value`` (>= 0)."""
    if isinstance(value, numbers.Real):
        return (_ONE_CODE, float(value)) if float(value) > 0 else (0, 1.0)
    positive = jnp.asarray(value) > 0
    scale = jnp.where(positive, jnp.asarray(value, jnp.float32), 1.0)
    return jnp.where(positive, _ONE_CODE, 0).astype(jnp.uint8), scale


def _filled_scales(blocks: int, scale: Any) -> jax.Array:
    """``blocks`` float32 scales, made on the host when ``scale`` is a number."""
    if isinstance(scale, float):
        return jnp.asarray(np.full(blocks, scale, np.float32))
    return jnp.full((blocks,), scale, jnp.float32)


def _bf16_unless_complex(compute_dtype: Any) -> jnp.dtype:
    """bf16 fills: one compilation per leaf shape, as optax's init; complex stays."""
    if jnp.issubdtype(compute_dtype, jnp.complexfloating):
        return jnp.dtype(compute_dtype)
    return jnp.dtype(jnp.bfloat16)


def is_stored_leaf(x: Any) -> bool:
    """True for ``None`` and :class:`Int8Blocks`: leaves of a stored-average tree."""
    return x is None or isinstance(x, Int8Blocks)


def needs_count(nu_dtype: Any) -> bool:
    """Whether the storage is compact, drawing random bits keyed by a step count."""
    if isinstance(nu_dtype, str):
        return nu_dtype == INT8
    return nu_dtype is not None and jnp.dtype(nu_dtype) == jnp.bfloat16


def decode_tree(anchor: Any, stored: Any) -> Any:
    """The stored averages in compute precision, one per leaf of ``anchor``."""
    return _map_stored(decode, anchor, stored)


def _decode_rescaled_tree(anchor: Any, stored: Any) -> Any:
    """:func:`decode_tree`, int8 leaves read through their next scales.

    The same values: :func:`_rescaled` changes a scale by a power of two, so
    ``next scale * 2**-shift`` is last step's scale exactly. But the step
    then never reads last step's scales after writing the next ones over
    them, and XLA need not copy them.
    """

    def read(stored):
        if not isinstance(stored, Int8Blocks):
            return decode(stored)
        scales, shifts = _rescaled(stored)
        previous_scales = scales * _power_of_two(-shifts)
        shape = stored.codes.shape
        return _decode_int8(stored.codes, _per_element(previous_scales, shape))

    return _map_stored(read, anchor, stored)


def _map_stored(read: Callable, anchor: Any, stored: Any) -> Any:
    """``read`` of each stored leaf; ``None`` where ``anchor`` has ``None``."""
    return jax.tree.map(
        lambda a, s: None if a is None else read(s),
        anchor,
        stored,
        is_leaf=is_stored_leaf,
    )


def encode_tree(values: Any, previous: Any, count: Any) -> Any:
    """Stores ``values`` in the formats of ``previous``.

    One dither lattice per leaf shape (:func:`dither_bits`), traced once and
    shared by the leaves of that shape: a model's repeated layers add no
    tracing work for it, and XLA fuses a copy into each leaf's kernel.
    """
    leaves, treedef = jax.tree.flatten(previous, is_leaf=is_stored_leaf)
    # jax's stubs lack PyTreeDef.flatten_up_to (a public method).
    value_leaves = treedef.flatten_up_to(values)  # type: ignore[attr-defined]
    lattices: dict[tuple[int, ...], jax.Array] = {}

    def bits_for(value):
        shape = jnp.shape(value)
        if shape not in lattices:
            lattices[shape] = dither_bits(shape, count)
        return lattices[shape]

    stored = [
        None if p is None else encode(v, p, bits_for(v))
        for v, p in zip(value_leaves, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, stored)


def store_like(value: jax.Array, template: Any) -> Any:
    """Stores ``value`` (compute precision) in ``template``'s format, afresh."""
    if isinstance(template, Int8Blocks):
        return init_leaf(value.astype(jnp.float32), INT8)
    return value.astype(template.dtype)


def stored_shape(stored: Any) -> tuple:
    """The parameter shape a stored leaf stands for."""
    return jnp.shape(stored.codes if isinstance(stored, Int8Blocks) else stored)


def init_leaf(filled: jax.Array, nu_dtype: Any) -> Any:
    """Stores ``filled`` (float32, already shaped and sharded like its param)."""
    if nu_dtype == INT8:
        if filled.size < MIN_QUANTISED_SIZE:
            return filled
        return _quantised_afresh(filled)
    return filled.astype(_plain_dtype(nu_dtype, filled.dtype))


@jax.jit
def _quantised_afresh(filled: jax.Array) -> Int8Blocks:
    """``filled`` as :class:`Int8Blocks` with scales from its own block maxima.

    One compiled program per leaf shape: called eagerly (``tx.init`` outside
    ``jit``), its thirty-odd operations would each compile on their own, half
    a minute for a hundred large leaves. Under an outer ``jit`` it is inlined.
    """
    bits = dither_bits(filled.shape, jnp.zeros([], jnp.int32))
    return _encode_int8(filled, _fresh_scales(filled), bits)


def decode(stored: Any) -> jax.Array:
    """A stored leaf in its compute precision (bf16 and int8 compute in float32)."""
    if isinstance(stored, Int8Blocks):
        scales = _per_element(stored.scales, stored.codes.shape)
        return _decode_int8(stored.codes, scales)
    if stored.dtype == jnp.bfloat16:
        return lax.convert_element_type(stored, np.float32)
    return stored


def encode(value: jax.Array, previous: Any, bits: jax.Array) -> Any:
    """Stores ``value`` in ``previous``'s format; ``bits``: :func:`dither_bits`."""
    if isinstance(previous, Int8Blocks):
        scales, _ = _rescaled(previous)
        return _encode_int8(value, scales, bits)
    if previous.dtype == jnp.bfloat16 and value.dtype == jnp.float32:
        return stochastic_round_to_bf16(value, bits)
    return value.astype(previous.dtype)


def stochastic_round_to_bf16(x: jax.Array, bits: jax.Array) -> jax.Array:
    """Rounds float32 ``x`` to bf16 up or down, with the chance of each unbiased.

    bf16 is the top 16 bits of float32: adding 16 uniform random bits (the
    top of ``bits``) to the low half before truncating rounds the magnitude
    up with probability equal to the discarded fraction.

    The result is a ``convert``, not a bitcast of the top half: with the
    bitcast, XLA:CPU copied the rounding into the parameter's kernel, which
    then redid it from last step's average after the in-place write had
    overwritten it (a copy of the average every step: 6.5 passes, not 5.5,
    measured); with the convert it does not.
    """
    # lax, not jnp: jnp's operators cost ~0.3 ms each to trace, per leaf.
    x_bits = lax.bitcast_convert_type(x, np.uint32)
    noise = lax.shift_right_logical(bits, np.uint32(16))  # The top 16 bits.
    rounded = lax.bitwise_and(lax.add(x_bits, noise), np.uint32(0xFFFF0000))
    rounded = lax.bitcast_convert_type(rounded, np.float32)
    # Above bf16's largest value the carry would reach the exponent's top:
    # inf, an average that never decays. Clip to the largest finite bf16.
    largest = np.float32(jnp.finfo(jnp.bfloat16).max)
    clipped = lax.clamp(-largest, rounded, largest)
    # Exact (the low half is zero).
    return lax.convert_element_type(clipped, jnp.bfloat16)


def _plain_dtype(nu_dtype, default):
    if nu_dtype is None or isinstance(nu_dtype, str):
        return default
    return jnp.dtype(nu_dtype)


def dither_bits(shape: tuple[int, ...], count: jax.Array) -> jax.Array:
    """32 dither bits per element, from (flat index, step count).

    A rank-1 lattice, ``index * A + count * PHI`` modulo 2**32, whose top
    bits are read: for each element the bits step through a Weyl sequence of
    the golden ratio ``PHI / 2**32`` as the count grows, so successive
    roundings of one element are spread evenly instead of at random (their
    errors cancel sooner: a quarter of a random hash's error at decay 0.999
    in bf16), and neighbours are offset by the irrational ``A / 2**32``.
    One multiply-add per element and axis: a hash's extra rounds cost more
    time than the bytes saved.

    The flat index is ``256 * row + column`` over rows of 256, built from two
    short ranges broadcast against each other (as the int8 block scales
    are). A full-size ``iota`` gives the same values, but XLA:CPU's loop
    builds its index one lane at a time: about 15% of a bf16 step's time.

    Leaves of one shape share the lattice: each element's rounding is still
    unbiased, and their steps compile to one kernel. (A per-leaf constant
    mixed in made every leaf's kernel distinct: bf16 storage compiled in
    6.8x float32's time on 1024 small leaves.)
    """
    size = math.prod(shape)
    rows = jnp.arange(-(-size // BLOCK_SIZE), dtype=jnp.uint32)
    columns = jnp.arange(BLOCK_SIZE, dtype=jnp.uint32)
    row_step = _INDEX_STEP * BLOCK_SIZE % 2**32
    lattice = rows[:, None] * jnp.uint32(row_step) + columns * jnp.uint32(_INDEX_STEP)
    lattice = lattice.reshape(-1)[:size].reshape(shape)
    return lattice + count.astype(jnp.uint32) * jnp.uint32(_GOLDEN_STEP)


def _hashed(x: jax.Array) -> jax.Array:
    """``x`` through one multiply-xorshift round: independent-looking bits."""
    x = (x ^ (x >> 16)) * jnp.uint32(0x7FEB352D)
    return x ^ (x >> 15)


def _decode_int8(codes: jax.Array, scales: jax.Array) -> jax.Array:
    """Codes to float32 by building the float's bits: cheap, so XLA fuses it."""
    q = codes.astype(jnp.uint32)
    # The code is the float's exponent and top 3 mantissa bits, less the bias.
    bits = (q << 20) + jnp.uint32(_EXPONENT_BIAS << 23)
    magnitude = jax.lax.bitcast_convert_type(bits, jnp.float32)
    return jnp.where(q == 0, jnp.zeros_like(magnitude), magnitude) * scales


def _encode_int8(value: jax.Array, scales: jax.Array, bits: jax.Array) -> Int8Blocks:
    """Stochastically rounds ``value / scale`` to 3 mantissa bits and packs it."""
    # A multiply by per-block reciprocals, not a divide: XLA will not recompute
    # an "expensive" divide for its two uses below and would write it out.
    relative = value.astype(jnp.float32) * _per_element(1 / scales, value.shape)
    noise = _hashed(bits)
    dithered = jax.lax.bitcast_convert_type(relative, jnp.uint32) + (noise >> 12)
    # Exponent and top 3 mantissa bits: 8 * (exponent - bias) + mantissa.
    code = (dithered >> 20).astype(jnp.int32) - 8 * _EXPONENT_BIAS
    # Below the smallest code (8, i.e. 2**-26): 8 with probability
    # relative / 2**-26, else 0 -- still unbiased, never a lost magnitude.
    uniform = (noise >> 8).astype(jnp.float32) * 2.0**-24
    smallest = jnp.where(uniform * _SMALLEST < relative, 8, 0)
    code = jnp.where(code < 8, smallest, jnp.minimum(code, 255))  # Saturates.
    code = code.astype(jnp.uint8)
    return Int8Blocks(codes=_written_once(code, value), scales=scales)


def _written_once(codes: jax.Array, value: jax.Array) -> jax.Array:
    """``codes`` unchanged, made an operation XLA will not compute twice.

    ``value`` (an average, never negative; NaN compares false) is never below
    0, so this is ``codes | 0``. What it changes is the fusion: XLA copies a
    cheap instruction into every consumer unless it has two full-size
    operands and a consumer outside any fusion (the returned state). Without
    the second operand the parameter's fusion re-derives the codes from last
    step's, which the in-place write has overwritten, and XLA copies the
    codes every step (int8 then moved 0.79x float32's bytes, not 0.72x).
    """
    return codes | (value < 0).astype(jnp.uint8)


def _rescaled(previous: Int8Blocks) -> tuple[jax.Array, jax.Array]:
    """Each block's next scale, and its change: ``(scales * 2**shifts, shifts)``.

    The power of two that brings the block's largest code to exponent 27,
    so that its largest stored value is 1 to 2 times the next scale. The
    code is monotonic in the value, so the max of the codes (one byte read
    per element) gives the max of the values. Only the exponent changes:
    last step's scale is the next one times ``2**-shifts``, exactly
    (:func:`_decode_rescaled_tree`). An all-zero block keeps its scale.
    """
    largest = jnp.max(_blocks(previous.codes), axis=1)
    exponents = (largest >> 3).astype(jnp.int32)
    shifts = jnp.where(largest > 0, exponents - _ONE_EXPONENT, 0)
    return previous.scales * _power_of_two(shifts), shifts


def _power_of_two(exponents: jax.Array) -> jax.Array:
    """``2.0**exponents`` for int32 exponents in -126..127, built exactly."""
    return lax.bitcast_convert_type((exponents + 127) << 23, np.float32)


def _fresh_scales(filled: jax.Array) -> jax.Array:
    """Initial scales: the block maxima of ``filled`` (1 for all-zero blocks)."""
    largest = jnp.max(_blocks(filled.astype(jnp.float32)), axis=1)
    return jnp.where(largest > 0, largest, jnp.ones_like(largest))


def _blocks(x: jax.Array) -> jax.Array:
    """``x`` flattened and cut into rows of 256 (the last padded with zeros)."""
    flat = x.reshape(-1)
    padding = -flat.size % BLOCK_SIZE
    if padding:
        flat = jnp.pad(flat, (0, padding))
    return flat.reshape(-1, BLOCK_SIZE)


def _per_element(scales: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Each element's block scale, shaped like the leaf."""
    size = math.prod(shape)
    per_block = jnp.broadcast_to(scales[:, None], (scales.shape[0], BLOCK_SIZE))
    return per_block.reshape(-1)[:size].reshape(shape)
