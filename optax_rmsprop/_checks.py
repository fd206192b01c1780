"""Argument checks shared by every factory.

Only plain Python numbers are checked: ``optax.inject_hyperparams`` and
``jax.vmap`` rebuild the transforms with arrays or tracers, whose values are
unknown at construction and must pass through untouched.
"""

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_rmsprop import _storage
from optax_rmsprop import _tree_math as tm
from optax_rmsprop._options import ScalerOptions


def check_real(name: str, value: Any) -> None:
    """Raises ``TypeError`` unless ``value`` is a real number or array (or tracer).

    A string or ``None`` would otherwise pass construction and fail inside
    the first update with a message that names nothing.
    """
    if isinstance(value, numbers.Real):
        return
    if isinstance(value, (jax.Array, np.ndarray)) and any(
        jnp.issubdtype(value.dtype, kind) for kind in (jnp.integer, jnp.floating)
    ):
        return
    raise TypeError(
        f"`{name}` must be a real number or array, got {value!r} "
        f"({type(value).__name__})."
    )


def check_learning_rate(name: str, value: Any) -> None:
    """Raises ``TypeError`` unless ``value`` is a real number, array or schedule.

    The sign is not checked: ``optax.rmsprop`` accepts a negative learning
    rate (gradient ascent).
    """
    if not callable(value):
        check_real(name, value)


def check_flag(name: str, value: Any) -> None:
    """Raises ``TypeError`` unless ``value`` is a bool.

    Flags pick a code path when the transform is built; a truthy string such
    as ``"no"`` would silently pick the wrong one.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be True or False, got {value!r}.")


def check_in_range(name: str, value: Any, low: float, high: float) -> None:
    """Raises ``ValueError`` if a plain number ``value`` lies outside [low, high].

    Raises ``TypeError`` for a value that is no real number or array at all.
    """
    check_real(name, value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return
    value = float(value)
    if math.isnan(value) or not low <= value <= high:
        raise ValueError(f"`{name}` must lie in [{low}, {high}], got {value!r}.")


def check_scaler_options(options: ScalerOptions) -> ScalerOptions:
    """Checks every scaler setting under its own name; ``nu_dtype`` made canonical.

    Raises:
        ValueError: ``decay`` outside [0, 1], a negative ``eps`` or
            ``initial_scale``, or a ``nu_dtype`` that is none of the storages.
        TypeError: a hyperparameter that is no real number, or a flag that is
            not a bool.
    """
    check_decay_and_eps(options.decay, options.eps)
    check_non_negative("initial_scale", options.initial_scale)
    return check_scaler_flags(options)


def check_scaler_flags(options: ScalerOptions) -> ScalerOptions:
    """Checks the flags and the storage only: presets check numbers by their names.

    Warns (``UserWarning``) when the storage cannot track the average at
    this decay (``_storage.warn_if_too_coarse``).
    """
    check_flag("eps_in_sqrt", options.eps_in_sqrt)
    check_flag("bias_correction", options.bias_correction)
    check_flag("centered", options.centered)
    nu_dtype = canonical_nu_dtype("nu_dtype", options.nu_dtype)
    _storage.warn_if_too_coarse(nu_dtype, options.decay)
    return options._replace(nu_dtype=nu_dtype)


def check_decay_and_eps(decay: Any, eps: Any) -> None:
    """``decay`` in [0, 1] and ``eps`` at least 0, under those names."""
    check_in_range("decay", decay, 0.0, 1.0)
    check_non_negative("eps", eps)


def check_non_negative(name: str, value: Any) -> None:
    """Raises ``ValueError`` if a plain number ``value`` is negative or NaN."""
    check_in_range(name, value, 0.0, math.inf)


def is_plain_zero(value: Any) -> bool:
    """True for a Python (or NumPy scalar) zero, False for arrays and tracers."""
    return isinstance(value, numbers.Real) and value == 0


def is_plain_positive(value: Any) -> bool:
    """True for a plain number that stays above 0 in float32; False for arrays.

    "Stays": at least float32's smallest normal (1.2e-38); ``eps=1e-300``
    is 0 once cast, and XLA:CPU flushes subnormals to zero.
    """
    smallest_normal = float(jnp.finfo(jnp.float32).tiny)
    return isinstance(value, numbers.Real) and float(value) >= smallest_normal


def canonical_float_dtype(name: str, dtype: Any) -> jnp.dtype | None:
    """Returns ``dtype`` as a floating ``jnp.dtype`` (None passes through).

    Raises:
        ValueError: if ``dtype`` is not a real floating dtype.
    """
    if dtype is None:
        return None
    message = f"`{name}` must be None or a floating dtype such as jnp.float32"
    try:
        canonical = jnp.dtype(dtype)
    except TypeError as error:
        raise ValueError(f"{message}, got {dtype!r}.") from error
    if not jnp.issubdtype(canonical, jnp.floating):
        raise ValueError(f"{message}, got {dtype!r}.")
    return canonical


def canonical_nu_dtype(name: str, nu_dtype: Any) -> Any:
    """None, a floating ``jnp.dtype``, or the string ``"int8"`` (block-wise 8-bit).

    Raises:
        ValueError: for anything else, naming the allowed values.
    """
    if isinstance(nu_dtype, str) and nu_dtype == "int8":
        return nu_dtype
    try:
        return canonical_float_dtype(name, nu_dtype)
    except ValueError as error:
        raise ValueError(
            f"`{name}` must be None, a floating dtype (jnp.float32, "
            f'jnp.bfloat16, ...) or "int8", got {nu_dtype!r}.'
        ) from error


def check_inexact_leaves(name: str, tree: Any) -> None:
    """Raises ``TypeError`` naming the first leaf of ``tree`` that is not inexact.

    Integer or boolean leaves (and strings) have no meaningful RMS step: an
    integer gradient would silently truncate it.
    """
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        where = jax.tree_util.keystr(path) or "<root>"
        try:
            dtype: Any = jnp.result_type(leaf)
        except TypeError:
            dtype = None
        if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"`{name}` must hold floating or complex arrays; the leaf at "
                f"{where} has dtype {type(leaf).__name__ if dtype is None else dtype}."
            )


def check_tree_matches(updates: optax.Updates, moments: Any) -> None:
    """Raises ``ValueError`` if ``updates`` and the state's moments differ in structure.

    Without this, ``jax.tree.map`` reports a mismatch deep inside the update
    with no hint that the state was built for other parameters.
    """
    updates_structure = jax.tree.structure(updates, is_leaf=tm.is_none)
    moment_leaves, moments_structure = jax.tree.flatten(
        moments, is_leaf=_storage.is_stored_leaf
    )
    # jax's stubs give PyTreeDef no __eq__; it has one.
    if updates_structure != moments_structure:  # type: ignore[operator]
        raise ValueError(
            "The gradient tree does not match the optimizer state: was `init` "
            "called with other parameters?\n"
            f"  updates: {updates_structure}\n  state:   {moments_structure}"
        )
    check_inexact_leaves("updates", updates)
    gradient_leaves = jax.tree_util.tree_leaves_with_path(updates)
    moment_leaves = [m for m in moment_leaves if m is not None]
    for (path, g), m in zip(gradient_leaves, moment_leaves, strict=True):
        if jnp.shape(g) != _storage.stored_shape(m):
            where = jax.tree_util.keystr(path) or "<root>"
            raise ValueError(
                f"The gradient at {where} has shape {jnp.shape(g)} but its "
                f"optimizer state has shape {_storage.stored_shape(m)}."
            )


def check_state_type(state: optax.OptState, expected: type, transform: str) -> None:
    """Raises ``TypeError`` if ``state`` is not the ``expected`` state class.

    A state saved with other options (centered, bias correction, storage,
    momentum), or restored by orbax without a target (plain dicts and lists),
    would otherwise fail deep inside the maths, or, for a transform that
    ignores its state, be silently accepted.
    """
    if not isinstance(state, expected):
        raise TypeError(
            f"The optimizer state handed to {transform} is a "
            f"{type(state).__name__}, but the transform keeps a "
            f"{expected.__name__}: was the state built or saved with other "
            "options, or restored without a target?"
        )


def preset_hyperparameter(
    name: str,
    value: Any,
    low: float | None = None,
    high: float = math.inf,
    *,
    one_element: bool = False,
) -> Any:
    """Checks a framework preset's numeric hyperparameter; returns it ready to use.

    The frameworks take one number per hyperparameter: PyTorch refuses a
    tensor ``lr`` of other than one element (and cannot compare any other
    multi-element hyperparameter with 0), TF1's RMSProp kernels need rank-0
    tensors and Keras a float. Here an array would instead be broadcast against
    every parameter, silently giving each element its own rate (or fail inside
    the first update on a parameter of another shape).

    Args:
        name: the argument's name, for the messages.
        value: a number, an array or a tracer.
        low: if given, a value known now (a plain number, or an array that is
            not a tracer) must lie in [low, high] and not be NaN.
        high: the upper end of that range.
        one_element: accept any array of one element and reshape it to rank 0,
            as PyTorch squeezes a one-element ``lr`` tensor; otherwise the
            array must already be rank 0, as TF1's kernels require.

    Returns:
        ``value``, or a one-element array of higher rank reshaped to rank 0.

    Raises:
        TypeError: ``value`` is no real number or array (:func:`check_real`).
        ValueError: an array of the wrong shape (tracers too: their shape is
            known while tracing), or a known value outside [low, high].
    """
    check_real(name, value)
    if not isinstance(value, numbers.Real):  # An array or a tracer.
        value = _one_number(name, value, one_element)
        if low is not None and not isinstance(value, jax.core.Tracer):
            check_in_range(name, float(np.asarray(value)), low, high)
    elif low is not None:
        check_in_range(name, value, low, high)
    return value


def _one_number(name: str, array: Any, one_element: bool) -> Any:
    """``array`` as rank 0, or ``ValueError`` naming ``name`` and its shape."""
    shape = jnp.shape(array)
    if shape == ():
        return array
    if one_element and math.prod(shape) == 1:
        return array.reshape(())
    wanted = "hold exactly one element" if one_element else "be a scalar (rank 0)"
    raise ValueError(
        f"`{name}` must {wanted}, got an array of shape {shape}: one value "
        "serves every parameter (use optax.multi_transform for per-parameter "
        "settings)."
    )


def check_not_bool(name: str, value: Any) -> None:
    """Raises ``TypeError`` for a Python or NumPy bool, which Keras refuses."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be a real number or array, got {value!r}.")
