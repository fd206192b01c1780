"""Elementwise tree maths of RMSprop, one small helper per step of the update.

Every helper maps over the leaves of its first tree and leaves ``None`` leaves
(as left by ``optax.masked``) alone.
"""

import numbers
from typing import Any
from typing import Callable

import jax
import jax.numpy as jnp
import optax


def is_none(x: Any) -> bool:
    """``is_leaf`` for tree maps: a ``None`` leaf (left by ``optax.masked``)."""
    return x is None


def _map(fn, tree, *rest):
    """``jax.tree.map`` that keeps ``None`` leaves of ``tree`` as ``None``."""
    return jax.tree.map(
        lambda x, *r: None if x is None else fn(x, *r), tree, *rest, is_leaf=is_none
    )


def full_like(
    params: optax.Params, value: Any, dtype_fn: Callable[[Any], Any]
) -> optax.Updates:
    """A tree shaped like ``params`` filled with ``value``, keeping shardings.

    Leaves may be arrays, Python floats (optax accepts them) or abstract
    ``jax.ShapeDtypeStruct`` s, as Flax NNX and orbax restore targets pass;
    ``dtype_fn`` maps a parameter's dtype to the filled leaf's.
    """
    return _map(lambda p: _filled_like(p, value, dtype_fn(jnp.result_type(p))), params)


def _filled_like(p: Any, value: Any, dtype: Any) -> jax.Array:
    """``value`` in ``p``'s shape and sharding, as a ``dtype`` array.

    Outside a trace ``jnp.full_like`` already takes the (concrete or
    abstract) parameter's sharding, and costs what optax's ``init`` costs.
    Under ``jit`` it would not, for a mesh with automatic axes: the state
    would land whole on one device. There a select whose other branch is the
    parameter lets XLA's sharding propagation give the result the parameter's
    sharding; the dead branch is folded away. (Eagerly that select would be
    compiled once per leaf shape: seconds for a few hundred leaves.)
    """
    if not isinstance(p, jax.core.Tracer):
        return jnp.full_like(p, value, dtype=dtype)
    real_dtype = not jnp.issubdtype(dtype, jnp.complexfloating)
    like_p = (jnp.real(p) if real_dtype else p).astype(dtype)
    return jnp.where(True, jnp.asarray(value, dtype), like_p)


def _narrowed(x: jax.Array, dtype: Any) -> jax.Array:
    """``x`` cast to ``dtype``, saturating where a narrower float cannot hold it.

    A finite float32 step beyond float16's 65504 (``g / eps`` on a centered
    first step, say) would otherwise round to ``inf`` and destroy the
    parameter; the largest finite float16 moves it as far as it can go.
    """
    dtype = jnp.dtype(dtype)
    real = jnp.isrealobj(x) and jnp.issubdtype(dtype, jnp.floating)
    if real and jnp.finfo(dtype).max < jnp.finfo(x.dtype).max:
        largest = jnp.finfo(dtype).max.astype(x.dtype)
        x = jnp.clip(x, -largest, largest)
    return x.astype(dtype)


def _promoted(g: jax.Array, moment: jax.Array) -> jax.Array:
    """``g`` in the wider of its dtype and the moment's (f16 squares overflow)."""
    return g.astype(jnp.promote_types(g.dtype, moment.dtype))


def capped(tree: optax.Updates) -> optax.Updates:
    """Every leaf with ``inf`` lowered to its dtype's largest finite value.

    For the average read from the state: where ``|g|^2`` overflowed (``|g| >
    1.8e19`` in float32) an infinite average would stay infinite and zero the
    parameter's updates forever, while the largest finite value is forgotten
    at the rate ``decay`` like any other. (Capping the previous average, not
    the new one, leaves XLA's fusion of the step, and so its float32 bits,
    exactly optax's.)
    """
    return _map(lambda x: jnp.minimum(x, jnp.finfo(x.dtype).max), tree)


def ema_of_squares(
    updates: optax.Updates, nu: optax.Updates, decay: jax.typing.ArrayLike
) -> optax.Updates:
    r"""``(1 - decay) * |g|^2 + decay * nu``, in and stored as ``nu``'s dtype."""

    def step(g, n):
        return ((1 - decay) * _abs_squared(g, n) + decay * n).astype(n.dtype)

    return _map(step, updates, nu)


def at_least_own_share(
    nu: optax.Updates, updates: optax.Updates, decay: jax.typing.ArrayLike
) -> optax.Updates:
    r"""``max(nu, (1 - decay) |g|^2)``: the least an exact average of squares holds.

    A rounded (stored) average may lie below this step's own share; floored,
    ``|g| / sqrt(nu) <= 1 / sqrt(1 - decay)`` holds as for the exact one.
    """
    return _map(
        lambda n, g: jnp.maximum(n, (1 - decay) * _abs_squared(g, n)), nu, updates
    )


def _abs_squared(g: jax.Array, like: jax.Array) -> jax.Array:
    """``|g|^2`` in ``like``'s precision (real for complex ``g``)."""
    g = _promoted(g, like)
    return g * g if jnp.isrealobj(g) else jnp.real(g * jnp.conj(g))


def ema(
    updates: optax.Updates, mu: optax.Updates, decay: jax.typing.ArrayLike
) -> optax.Updates:
    r"""``(1 - decay) * g + decay * mu``, in and stored as ``mu``'s dtype."""
    return _map(
        lambda g, m: ((1 - decay) * _promoted(g, m) + decay * m).astype(m.dtype),
        updates,
        mu,
    )


def debias(
    moment: optax.Updates, decay: jax.typing.ArrayLike, count: jax.Array
) -> optax.Updates:
    """Divides by ``1 - decay**count``, the weight a zero start leaves out.

    This is ``optax.tree.bias_correction`` itself, a small jitted function:
    called eagerly it computes ``decay**count`` as one compiled power, where
    an eager ``decay ** count`` would multiply ``decay`` by itself (``lax.
    integer_pow`` for a concrete exponent) and round differently -- a 1e-5
    relative difference from optax after five steps at decay 0.999. A plain
    ``decay`` is weakly typed, so the power is taken in float32 (float64
    under x64) whatever the moments' dtype; an array ``decay`` (from
    ``inject_hyperparams``) is widened to the moments' widest real precision,
    never below float32, so a float64 moment is not debiased in float32.
    """
    if not isinstance(decay, numbers.Real):
        decay = jnp.asarray(decay, _widest_real_dtype(moment))
    return optax.tree.bias_correction(moment, decay, count)


def _widest_real_dtype(tree: Any) -> jnp.dtype:
    dtypes = [jnp.finfo(x.dtype).dtype for x in jax.tree.leaves(tree)]
    return jnp.dtype(jnp.result_type(jnp.float32, *dtypes))


def centered_variance(mu_hat: optax.Updates, nu_hat: optax.Updates) -> optax.Updates:
    """``max(nu - |mu|^2, 0)``, and ``inf`` where ``nu`` overflowed.

    Rounding can push a near-zero variance negative, hence the ``max``. Where
    ``nu`` is ``inf`` (a square, or a debiased average, past the dtype's
    range) the variance is ``inf`` too -- a zero step, as without centering
    -- rather than ``inf - inf = NaN`` when ``|mu|^2`` overflowed as well.
    """

    def variance(n, m):
        mean_square = m * m if jnp.isrealobj(m) else jnp.real(m * jnp.conj(m))
        return jnp.where(jnp.isposinf(n), n, jnp.maximum(n - mean_square, 0))

    return _map(variance, nu_hat, mu_hat)


def zero_guard(*, eps_can_be_zero: bool, centered: bool) -> Callable | None:
    """How a zero denominator is kept from making ``inf`` or ``NaN``, if it can be.

    With a plain ``eps`` that stays positive in float32 the denominator is
    never zero: no guard, so the default step is exactly optax's program.
    Otherwise a zero gradient gives a zero update instead of ``0 * inf =
    NaN``, and (uncentered) a zero average -- no gradient yet, or a square
    that underflowed, ``|g| < 3e-19`` in float32 -- divides by 1, so the
    update is ``g`` itself instead of ``g / 0 = inf``. A centered variance of
    exactly zero with a nonzero gradient (a constant gradient, ``eps = 0``)
    still gives ``inf``, as the maths does.

    Returns:
        None, or a ``(denominator, g) -> denominator`` function.
    """
    if not eps_can_be_zero:
        return None
    if centered:
        return lambda denominator, g: _one_where(g == 0, denominator)
    return lambda denominator, g: _one_where(denominator == 0, denominator)


def _one_where(condition: jax.Array, denominator: jax.Array) -> jax.Array:
    return jnp.where(condition, jnp.ones_like(denominator), denominator)


def scale_by_inverse_rms(
    updates: optax.Updates,
    variance: optax.Updates,
    *,
    eps: Any,
    eps_in_sqrt: bool,
    guard: Callable | None,
) -> optax.Updates:
    r"""``g / sqrt(v + eps)`` or ``g / (sqrt(v) + eps)``, in ``g``'s dtype.

    ``guard`` (from :func:`zero_guard`) rewrites the denominator where it can
    be zero.
    """
    guarded = (lambda d, g: d) if guard is None else guard

    def scale(g, v):
        if eps_in_sqrt:
            inverse_rms = jax.lax.rsqrt(guarded(v + eps, g))
        else:
            # The root of a zero average has an infinite derivative: where
            # g = 0 the root is taken of 1 instead, so a gradient *through*
            # the step (meta-learning) is 0 * finite, not 0 * inf = NaN.
            root = jnp.sqrt(_one_where(g == 0, v))
            inverse_rms = 1 / guarded(root + eps, g)
        return _narrowed(inverse_rms * _promoted(g, v), g.dtype)

    return _map(scale, updates, variance)


def accumulate(
    updates: optax.Updates, trace: optax.Updates, decay: jax.typing.ArrayLike
) -> optax.Updates:
    """``g + decay * trace``, in and stored as ``trace``'s dtype."""
    return _map(
        lambda g, t: (_promoted(g, t) + decay * t).astype(t.dtype), updates, trace
    )


def cast_like(tree: optax.Updates, like: optax.Updates) -> optax.Updates:
    """``tree`` with each leaf in the dtype of the matching leaf of ``like``."""
    return _map(lambda x, y: _narrowed(x, y.dtype), tree, like)


def add_scaled(
    updates: optax.Updates, params: optax.Params, scale: jax.typing.ArrayLike
) -> optax.Updates:
    """``u + scale * p``, in ``u``'s dtype."""
    return _map(lambda u, p: (u + scale * p).astype(u.dtype), updates, params)


def map_leaves(fn: Callable[[Any], Any], tree: Any) -> Any:
    """``fn`` on every array leaf, ``None`` leaves kept."""
    return _map(fn, tree)
