"""Run a transform on complex leaves viewed as pairs of independent reals.

PyTorch's optimizers call ``torch.view_as_real`` on complex parameters, so
the real and imaginary parts get separate running averages. This wrapper
reproduces that: each complex leaf becomes a real array with a trailing axis
of size 2 before the inner transform and is rebuilt afterwards. Real leaves
pass through unchanged, at no cost.
"""

import jax
import jax.numpy as jnp
import optax

from optax_rmsprop import _tree_math as tm


def as_real_pairs(tree: optax.Updates) -> optax.Updates:
    """Complex leaves to ``[..., (real, imag)]`` real arrays, like ``view_as_real``."""
    return jax.tree.map(leaf_as_real_pairs, tree, is_leaf=tm.is_none)


def leaf_as_real_pairs(x: jax.Array | None) -> jax.Array | None:
    """One leaf of :func:`as_real_pairs` (real leaves and ``None`` unchanged)."""
    if x is None or not jnp.iscomplexobj(x):
        return x
    return jnp.stack([jnp.real(x), jnp.imag(x)], axis=-1)


def _from_real_pairs(tree: optax.Updates, like: optax.Updates) -> optax.Updates:
    def from_pairs(x, y):
        if x is None or not jnp.iscomplexobj(y):
            return x
        return jax.lax.complex(x[..., 0], x[..., 1]).astype(y.dtype)

    return jax.tree.map(from_pairs, tree, like, is_leaf=tm.is_none)


def complex_as_real_pairs(
    inner: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
    """Wraps ``inner`` so complex leaves are updated as two independent reals.

    The state is ``inner``'s, built on the real-pair view: a complex leaf of
    shape ``s`` has moments of shape ``s + (2,)``.
    """
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        return inner.init(as_real_pairs(params))

    def update_fn(updates, state, params=None, **extra_args):
        real_updates, state = inner.update(
            as_real_pairs(updates), state, as_real_pairs(params), **extra_args
        )
        return _from_real_pairs(real_updates, updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
