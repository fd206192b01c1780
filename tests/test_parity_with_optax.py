"""Float32 parity with optax's ``rmsprop``, ``scale_by_rms`` and ``scale_by_stddev``.

Every reference value here comes from optax 0.2.8 itself, run on the same
inputs in the same jitted program as ours: the whole grid of optax's
arguments (``eps_in_sqrt`` x ``centered`` x ``bias_correction`` x
``momentum`` None/0.9 x ``nesterov`` x ``initial_scale`` 0/0.1), with a
constant learning rate and with a cosine schedule, over 100 steps; and the
two scalers alone over their grids.

Inputs: a dict of a matrix, a vector and a scalar; every element has its own
gradient scale, log-uniform in [1e-3, 1e3], times a fixed per-element mean
plus fresh Gaussian noise at each step (fixed seed). The gradients do not
depend on the parameters, so both libraries see exactly the same stream and
any difference is the optimizer's own.

What is exact and what is not, under ``jax.jit`` on XLA:CPU:

* Exact: the scaler's state (``nu``, ``mu``, ``count``) and the schedule's
  count, for every setting; and everything (updates, parameters, state) of
  every setting without momentum and without bias correction.
* Equal to float32 rounding: the updates, trace and parameters of the rest.
  XLA may contract ``a * b + c`` into a fused multiply-add (FMA) around
  either product and rewrite ``x / c`` as ``x * (1 / c)``, and decides per
  fused program; ours is not optax's program (it selects on ``g == 0`` so
  that a zero gradient gives a zero update with a finite derivative, and
  debiases leaf by leaf), so the roundings can differ:

  - ``bias_correction``: in these multi-leaf programs XLA turns our
    ``nu / (1 - decay**t)`` into a multiply by the reciprocal and keeps
    optax's division, so ``nu_hat`` differs by an ulp;
  - momentum: the trace's ``(-lr) * u + 0.9 * t_prev`` is contracted around
    one product or the other, depending on the rest of the program (in this
    file's programs the heavy-ball trace happens to come out bit-identical
    without bias correction; in ``test_state_layout.py``'s, with eps outside
    the root and a schedule, it does not);
  - Nesterov: both return ``d_k + 0.9 t_k``, but ours computes ``d_k`` a
    second time for it, behind an optimisation barrier (see
    ``_nesterov.py``), and XLA may contract each copy's multiply-adds
    differently.

The bounds: each step's scaled gradient ``d_k = lr_k u_k`` may differ by a
few roundings, amplified by the conditioning ``K_k`` of the denominator
(``K = 1`` uncentered; centered, ``K = nu_hat / (nu_hat - mu_hat**2 [+ eps])``:
the subtraction cancels). The momentum recurrence carries old differences on
with weight 0.9, so the bound on the trace and on the heavy-ball update is
``1e-6`` (~8 float32 ulps) times the running *absolute* trace
``A_k = K_k |d_k| + 0.9 A_{k-1}``; with changing signs the trace itself can
be far smaller than the terms whose roundings it carries. Nesterov's update
``d_k + m t_k`` is bounded by ``1e-6 (2 A_k + A_{k-1})`` (it was once
computed as ``(1 + m) t_k - m t_{k-1}``, whose bound this is; it covers
``K_k |d_k| + m A_k`` too). Without
momentum ``A_k = K_k |u_k|``. The parameters come from
``optax.apply_updates`` in the same jitted step, where XLA may also fuse
``p + (-lr) * x`` differently: one rounding of ``|p| + |u|`` per step on top
of the update's bound, summed over the steps.

Centered and debiased, the first step's variance
``nu_hat - mu_hat**2 = decay * initial_scale / (1 - decay)`` is 0 (or 0.9)
next to ``g**2`` up to 1e6: optax's result there is rounding noise over
``sqrt(eps)``, or NaN. Only for those settings the first gradient of the
stream is zero (both libraries then return a zero update, and from the
second step on the variance is a proper weighted variance), so every
comparison stays where optax is finite and well conditioned; the bounds
check both.

``initial_scale`` reaches both libraries as a float32 array argument of the
jitted program rather than a Python float (it only fills the initial ``nu``),
so that its two values share one compilation; see ``_side_by_side``.
"""

import functools
from typing import NamedTuple

import jax
import numpy as np
import optax
import pytest
from helpers import BIAS_CORRECTION
from helpers import CENTERED
from helpers import EPS_IN_SQRT
from helpers import NESTEROV
from helpers import SCHEDULED
from helpers import flags_id
from helpers import grid
from helpers import parameter_bounds

import optax_rmsprop

_STEPS = 100
# Un-jitted runs dispatch every operation alone: a few steps cover the
# bias correction's transient, where eager roundings could part from jitted.
_EAGER_STEPS = 12
_MODES = ["jit", "eager"]
_SHAPES = {"w": (8, 6), "b": (6,), "s": ()}
_LEARNING_RATE = 1e-2
_SCHEDULE = optax.cosine_decay_schedule(init_value=1e-2, decay_steps=_STEPS, alpha=0.1)
_MOMENTUM = 0.9
_DECAY, _EPS = 0.9, 1e-8  # optax.rmsprop's defaults, left unset below
# ~8.4 float32 ulps at 1: a few roundings, with margin.
_RTOL = 1e-6
# Beyond this, rounding differences are no longer "a few ulps" of anything.
_MAX_CONDITIONING = 1e3


def _gradient_stream(seed: int) -> dict:
    """``scale * (mean + noise_t)`` per element; scales span 1e-3 .. 1e3."""
    rng = np.random.default_rng(seed)
    grads = {}
    for name, shape in _SHAPES.items():
        scale = 10.0 ** rng.uniform(-3.0, 3.0, size=shape)
        mean = rng.uniform(-1.0, 1.0, size=shape)
        noise = rng.standard_normal((_STEPS, *shape))
        grads[name] = (scale * (mean + noise)).astype(np.float32)
    return grads


def _with_zero_first_step(grads: dict) -> dict:
    return {
        name: np.concatenate([np.zeros_like(g[:1]), g[1:]]) for name, g in grads.items()
    }


_GRADS = _gradient_stream(seed=0)
_GRADS_ZERO_FIRST = _with_zero_first_step(_GRADS)
_PARAMS = {
    name: np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    for name, shape in _SHAPES.items()
}
_INITIAL_SCALES = [0.0, 0.1]


def _history(tx, params, grads, eager=False):
    """(updates, params, state) after every step of a training loop.

    A ``lax.scan`` (compiled, whether or not the caller jits), or with
    ``eager`` a Python loop of un-jitted calls, each operation dispatched on
    its own as in a script that never calls ``jax.jit``.
    """

    def step(carry, g):
        p, state = carry
        updates, state = tx.update(g, state, p)
        p = optax.apply_updates(p, updates)
        return (p, state), (updates, p, state)

    if not eager:
        _, history = jax.lax.scan(step, (params, tx.init(params)), grads)
        return history
    carry, steps = (params, tx.init(params)), []
    for g in zip(*jax.tree.leaves(grads)):
        carry, out = step(carry, jax.tree.unflatten(jax.tree.structure(grads), g))
        steps.append(out)
    return jax.tree.map(lambda *xs: np.stack(xs), *steps)


def _side_by_side(make_pairs, mode: str = "jit") -> dict:
    """Runs both libraries' transforms for a group of settings under one jit.

    With ``mode="eager"`` each runs un-jitted instead, for the first
    ``_EAGER_STEPS`` steps (op by op, the bias correction's transient is
    where eager and jitted roundings part, see ``_tree_math.debias``).

    ``make_pairs(initial_scale)`` returns ``{key: (optax_tx, our_tx,
    centered_and_debiased)}``; the result is ``{initial_scale: {key:
    (optax_history, our_history)}}``.

    XLA's compile time, not the 100 steps, is what this file spends, so a
    group of settings shares one compilation, and ``initial_scale`` is an
    argument of it rather than a second compilation; every other option stays
    a Python constant, as users pass it. Centered and debiased settings get
    the stream with a zero first gradient (module docstring).
    """

    eager = mode == "eager"

    def run(params, initial_scale, grads, zero_first):
        histories = {}
        for key, (ref, ours, centered_and_debiased) in make_pairs(
            initial_scale
        ).items():
            g = zero_first if centered_and_debiased else grads
            histories[key] = (
                _history(ref, params, g, eager),
                _history(ours, params, g, eager),
            )
        return histories

    steps = _EAGER_STEPS if eager else _STEPS
    grads, zero_first = (
        jax.tree.map(lambda g: g[:steps], tree) for tree in (_GRADS, _GRADS_ZERO_FIRST)
    )
    run = run if eager else jax.jit(run)
    return {
        initial_scale: jax.device_get(
            run(_PARAMS, np.float32(initial_scale), grads, zero_first)
        )
        for initial_scale in _INITIAL_SCALES
    }


# --------------------------------------------------------------------------
# Comparisons and their bounds.


def _assert_finite(reference) -> None:
    """The contract is parity wherever optax is finite; NaN == NaN proves nothing."""
    for leaf in jax.tree.leaves(reference):
        assert np.all(np.isfinite(leaf)), "optax is not finite on these inputs"


def _assert_bit_identical(ours, reference) -> None:
    _assert_finite(reference)
    assert jax.tree.structure(ours) == jax.tree.structure(reference)
    for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(got, want, strict=True)


def _assert_within(ours, reference, bound) -> None:
    """``|ours - reference| <= bound`` elementwise, for trees of equal shapes."""
    _assert_finite(reference)
    assert jax.tree.structure(ours) == jax.tree.structure(reference)
    for got, want, tol in zip(
        jax.tree.leaves(ours), jax.tree.leaves(reference), jax.tree.leaves(bound)
    ):
        assert got.dtype == want.dtype and got.shape == want.shape
        error = np.abs(got.astype(np.float64) - want.astype(np.float64))
        worst = np.unravel_index(np.argmax(error - tol), error.shape)
        assert np.all(error <= tol), (
            f"error {error[worst]:.3g} > bound {tol[worst]:.3g} at index {worst} "
            f"(optax {want[worst]!r}, ours {got[worst]!r})"
        )


def _conditioning(scaler_states, centered, bias_correction, decay, eps, eps_in_sqrt):
    """``K_k`` per element and step, from optax's scaler states (float64).

    1 uncentered; centered, ``nu_hat / (nu_hat - mu_hat**2 [+ eps])``: the
    factor by which rounding in ``nu_hat`` and ``mu_hat**2`` grows in their
    difference.
    """
    if not centered:
        return jax.tree.map(np.ones_like, scaler_states.nu)

    def conditioning(nu, mu):
        nu, mu = nu.astype(np.float64), mu.astype(np.float64)
        if bias_correction:
            count = np.asarray(scaler_states.count, np.float64)
            correction = (1 - decay**count).reshape((-1,) + (1,) * (nu.ndim - 1))
            nu, mu = nu / correction, mu / correction
        variance = nu - mu * mu + (eps if eps_in_sqrt else 0.0)
        started = nu > 0  # not before the first nonzero gradient
        assert np.all(variance[started] > 0), "a variance is not positive"
        k = np.maximum(np.divide(nu, variance, out=np.ones_like(nu), where=started), 1)
        assert np.all(k <= _MAX_CONDITIONING), "ill-conditioned inputs"
        return k

    return jax.tree.map(conditioning, scaler_states.nu, scaler_states.mu)


def _running_absolute(terms: np.ndarray, momentum: float) -> np.ndarray:
    """``A_k = terms_k + momentum * A_{k-1}`` along axis 0, ``A_{-1} = 0``."""
    total = np.zeros_like(terms)
    running = np.zeros_like(terms[0])
    for k in range(terms.shape[0]):
        running = terms[k] + momentum * running
        total[k] = running
    return total


def _shifted(x: np.ndarray) -> np.ndarray:
    """``x_{k-1}`` along the step axis, zero before the first step."""
    return np.concatenate([np.zeros_like(x[:1]), x[:-1]])


def _step_terms(reference, momentum):
    """``|d_k|``: the scaled gradient that entered the trace (or the update)."""
    updates, _, state = reference
    if momentum is None:
        return jax.tree.map(lambda u: np.abs(u.astype(np.float64)), updates)
    return jax.tree.map(
        lambda t: np.abs(t.astype(np.float64) - momentum * _shifted(t)),
        state[-1].trace,
    )


# --------------------------------------------------------------------------
# rmsprop: the whole grid of optax's arguments.

_MOMENTA = [None, _MOMENTUM]


class Setting(NamedTuple):
    """One point of the grid of ``optax.rmsprop``'s arguments."""

    eps_in_sqrt: bool
    centered: bool
    bias_correction: bool
    momentum: float | None
    nesterov: bool
    initial_scale: float
    scheduled: bool

    def kwargs(self) -> dict:
        return dict(
            learning_rate=_SCHEDULE if self.scheduled else _LEARNING_RATE,
            initial_scale=self.initial_scale,
            eps_in_sqrt=self.eps_in_sqrt,
            centered=self.centered,
            momentum=self.momentum,
            nesterov=self.nesterov,
            bias_correction=self.bias_correction,
        )

    def key(self) -> str:
        """The id without ``initial_scale``, a runtime argument of the group."""
        return flags_id(
            self.eps_in_sqrt,
            self.centered,
            self.bias_correction,
            self.momentum,
            self.nesterov,
            self.scheduled,
        )

    def id(self) -> str:
        return f"{self.key()}-init{self.initial_scale}"


@functools.cache
def _rmsprop_group(centered, bias_correction, mode) -> dict:
    """Histories of every setting with these two flags (see ``_side_by_side``).

    Momentum ``None`` with and without ``nesterov`` is the same program, which
    XLA compiles once.
    """

    def make_pairs(initial_scale):
        pairs = {}
        for momentum, nesterov, eps_in_sqrt, scheduled in grid(
            _MOMENTA, NESTEROV, EPS_IN_SQRT, SCHEDULED
        ):
            setting = Setting(
                eps_in_sqrt,
                centered,
                bias_correction,
                momentum,
                nesterov,
                initial_scale,
                scheduled,
            )
            pairs[setting.key()] = (
                optax.rmsprop(**setting.kwargs()),
                optax_rmsprop.rmsprop(**setting.kwargs()),
                centered and bias_correction,
            )
        return pairs

    return _side_by_side(make_pairs, mode)


def _rmsprop_histories(setting: Setting, mode: str):
    """``(optax_history, our_history)``, each ``(updates, params, state)``."""
    group = _rmsprop_group(setting.centered, setting.bias_correction, mode)
    return group[setting.initial_scale][setting.key()]


def _rmsprop_bounds(reference, setting: Setting):
    """Elementwise bounds on the differences of (updates, trace, params)."""
    updates, params, state = reference
    conditioning = _conditioning(
        state[0],
        setting.centered,
        setting.bias_correction,
        _DECAY,
        _EPS,
        setting.eps_in_sqrt,
    )
    momentum = setting.momentum or 0.0
    absolute = jax.tree.map(
        lambda d, k: _running_absolute(k * d, momentum),
        _step_terms(reference, setting.momentum),
        conditioning,
    )
    trace_bound = jax.tree.map(lambda a: _RTOL * a, absolute)
    if setting.momentum is not None and setting.nesterov:
        update_bound = jax.tree.map(lambda a: _RTOL * (2 * a + _shifted(a)), absolute)
    else:
        update_bound = trace_bound
    param_bound = parameter_bounds(update_bound, updates, params)
    return update_bound, trace_bound, param_bound


def _grid(momenta=_MOMENTA, bias_corrections=BIAS_CORRECTION) -> list:
    settings = [
        Setting(*values)
        for values in grid(
            EPS_IN_SQRT,
            CENTERED,
            bias_corrections,
            momenta,
            NESTEROV,
            _INITIAL_SCALES,
            SCHEDULED,
        )
    ]
    return [pytest.param(setting, id=setting.id()) for setting in settings]


@pytest.mark.parametrize("mode", _MODES)
@pytest.mark.parametrize("setting", _grid())
def test_rmsprop_scaler_state_is_bit_identical_to_optax(setting, mode):
    reference, ours = _rmsprop_histories(setting, mode)
    # state[0]: nu (and mu, count); state[1]: the schedule's count, if any.
    _assert_bit_identical(ours[2][:2], reference[2][:2])


@pytest.mark.parametrize("mode", _MODES)
@pytest.mark.parametrize("setting", _grid(momenta=[None], bias_corrections=[False]))
def test_rmsprop_without_momentum_or_debiasing_is_bit_identical_to_optax(setting, mode):
    reference, ours = _rmsprop_histories(setting, mode)
    # (updates, params, state): every step of the trajectory.
    _assert_bit_identical(ours, reference)


@pytest.mark.parametrize("mode", _MODES)
@pytest.mark.parametrize("setting", _grid())
def test_rmsprop_updates_match_optax_to_float32_rounding(setting, mode):
    reference, ours = _rmsprop_histories(setting, mode)
    update_bound, _, _ = _rmsprop_bounds(reference, setting)
    _assert_within(ours[0], reference[0], update_bound)


@pytest.mark.parametrize("mode", _MODES)
@pytest.mark.parametrize("setting", _grid(momenta=[_MOMENTUM]))
def test_rmsprop_momentum_trace_matches_optax_to_float32_rounding(setting, mode):
    reference, ours = _rmsprop_histories(setting, mode)
    _, trace_bound, _ = _rmsprop_bounds(reference, setting)
    _assert_within(ours[2][2].trace, reference[2][2].trace, trace_bound)


@pytest.mark.parametrize("mode", _MODES)
@pytest.mark.parametrize("setting", _grid())
def test_rmsprop_parameter_trajectory_matches_optax_to_float32_rounding(setting, mode):
    reference, ours = _rmsprop_histories(setting, mode)
    _, _, param_bound = _rmsprop_bounds(reference, setting)
    _assert_within(ours[1], reference[1], param_bound)


# --------------------------------------------------------------------------
# The scalers alone, over their own arguments.

_DECAY_AND_EPS = [(0.9, 1e-8), (0.999, 1e-6)]


class ScalerSetting(NamedTuple):
    eps_in_sqrt: bool
    bias_correction: bool
    initial_scale: float
    decay: float
    eps: float

    def kwargs(self) -> dict:
        return self._asdict()

    def key(self) -> str:
        return (
            f"{'eps_in_sqrt' if self.eps_in_sqrt else 'eps_outside'}-"
            f"{'debiased' if self.bias_correction else 'biased'}-"
            f"decay{self.decay}-eps{self.eps}"
        )

    def id(self) -> str:
        return f"{self.key()}-init{self.initial_scale}"


def _scaler_histories(optax_factory, our_factory, centered, mode) -> dict:
    def make_pairs(initial_scale):
        pairs = {}
        for eps_in_sqrt, bias_correction, (decay, eps) in grid(
            EPS_IN_SQRT, BIAS_CORRECTION, _DECAY_AND_EPS
        ):
            setting = ScalerSetting(
                eps_in_sqrt, bias_correction, initial_scale, decay, eps
            )
            pairs[setting.key()] = (
                optax_factory(**setting.kwargs()),
                our_factory(**setting.kwargs()),
                centered and bias_correction,
            )
        return pairs

    return _side_by_side(make_pairs, mode)


@functools.cache
def _scale_by_rms_histories(mode: str) -> dict:
    return _scaler_histories(
        optax.scale_by_rms, optax_rmsprop.scale_by_rms, False, mode
    )


@functools.cache
def _scale_by_stddev_histories(mode: str) -> dict:
    return _scaler_histories(
        optax.scale_by_stddev, optax_rmsprop.scale_by_stddev, True, mode
    )


_SCALERS = {
    "scale_by_rms": (_scale_by_rms_histories, False),
    "scale_by_stddev": (_scale_by_stddev_histories, True),
}


def _scaler_grid(bias_corrections=BIAS_CORRECTION) -> list:
    settings = [
        ScalerSetting(eps_in_sqrt, bias_correction, initial_scale, decay, eps)
        for eps_in_sqrt, bias_correction, initial_scale, (decay, eps) in grid(
            EPS_IN_SQRT, bias_corrections, _INITIAL_SCALES, _DECAY_AND_EPS
        )
    ]
    return [
        pytest.param(name, setting, id=f"{name}-{setting.id()}")
        for name in _SCALERS
        for setting in settings
    ]


def _scaler_run(name: str, setting: ScalerSetting, mode: str):
    histories, _ = _SCALERS[name]
    return histories(mode)[setting.initial_scale][setting.key()]


@pytest.mark.parametrize("mode", _MODES)
@pytest.mark.parametrize("name,setting", _scaler_grid())
def test_scaler_state_is_bit_identical_to_optax(name, setting, mode):
    reference, ours = _scaler_run(name, setting, mode)
    _assert_bit_identical(ours[2], reference[2])


@pytest.mark.parametrize("mode", _MODES)
@pytest.mark.parametrize("name,setting", _scaler_grid(bias_corrections=[False]))
def test_scaler_updates_without_bias_correction_are_bit_identical(name, setting, mode):
    reference, ours = _scaler_run(name, setting, mode)
    _assert_bit_identical(ours[0], reference[0])


@pytest.mark.parametrize("mode", _MODES)
@pytest.mark.parametrize("name,setting", _scaler_grid())
def test_scaler_updates_match_optax_to_float32_rounding(name, setting, mode):
    reference, ours = _scaler_run(name, setting, mode)
    _, centered = _SCALERS[name]
    conditioning = _conditioning(
        reference[2],
        centered,
        setting.bias_correction,
        setting.decay,
        setting.eps,
        setting.eps_in_sqrt,
    )
    bound = jax.tree.map(
        lambda u, k: _RTOL * k * np.abs(u.astype(np.float64)),
        reference[0],
        conditioning,
    )
    _assert_within(ours[0], reference[0], bound)
