"""effective_learning_rate and rms_summary against the float64 NumPy oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from oracle import NumpyRmsprop

import optax_rmsprop

_SHAPES = {"b": (5,), "w": (4, 3)}
# optax.rmsprop's defaults, which the diagnostics take only when stated.
_DEFAULTS = dict(decay=0.9, eps=1e-8, eps_in_sqrt=True, bias_correction=False)


def _grads(step):
    rng = np.random.default_rng(step)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in _SHAPES.items()}


def _run(tx, steps=5):
    params = {k: jnp.zeros(s) for k, s in _SHAPES.items()}
    state = tx.init(params)
    for step in range(steps):
        _, state = tx.update(_grads(step), state, params)
    return state


def _oracle_nu(steps=5, **options):
    # The oracle's averages, debiased and centred as the docstrings define.
    keys = sorted(_SHAPES)
    oracle = NumpyRmsprop([_SHAPES[k] for k in keys], 1.0, **options)
    for step in range(steps):
        oracle.step([_grads(step)[k] for k in keys])
    t, decay = oracle.t, oracle.decay
    correction = 1 - decay**t if options.get("bias_correction") else 1.0
    variance = [nu / correction for nu in oracle.nu]
    if options.get("centered"):
        variance = [v - (mu / correction) ** 2 for v, mu in zip(variance, oracle.mu)]
    return dict(zip(keys, variance))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"eps_in_sqrt": False, "eps": 1e-3},
        {"bias_correction": True, "decay": 0.95},
        {"centered": True, "eps": 1e-4},
        {"centered": True, "bias_correction": True, "eps": 1e-2},
    ],
)
def test_effective_learning_rate_is_lr_over_root_of_average(options):
    lr = 0.05
    state = _run(optax_rmsprop.rmsprop(lr, momentum=0.9, **options))
    eps, decay = options.get("eps", 1e-8), options.get("decay", 0.9)
    in_sqrt = options.get("eps_in_sqrt", True)
    got = optax_rmsprop.effective_learning_rate(
        state,
        lr,
        decay=decay,
        eps=eps,
        eps_in_sqrt=in_sqrt,
        bias_correction=options.get("bias_correction", False),
    )
    for key, nu in _oracle_nu(**options).items():
        expected = lr / np.sqrt(nu + eps) if in_sqrt else lr / (np.sqrt(nu) + eps)
        np.testing.assert_allclose(got[key], expected, rtol=2e-5)


def test_effective_learning_rate_finds_state_inside_wrappers():
    tx = optax.chain(
        optax.clip_by_global_norm(10.0),
        optax.masked(optax_rmsprop.rmsprop(0.1), {"b": True, "w": True}),
    )
    tx = optax.MultiSteps(tx, every_k_schedule=1)
    got = optax_rmsprop.effective_learning_rate(_run(tx), 0.1, **_DEFAULTS)
    for key, nu in _oracle_nu().items():
        np.testing.assert_allclose(got[key], 0.1 / np.sqrt(nu + 1e-8), rtol=2e-5)


def test_effective_learning_rate_evaluates_a_schedule_at_the_step_count():
    schedule = lambda count: 0.1 / (1.0 + count)
    state = _run(optax_rmsprop.rmsprop(schedule), steps=5)
    got = optax_rmsprop.effective_learning_rate(state, schedule, **_DEFAULTS)
    # Five steps taken: the next step uses schedule(5) = 0.1 / 6.
    for key, nu in _oracle_nu().items():
        np.testing.assert_allclose(got[key], (0.1 / 6) / np.sqrt(nu + 1e-8), rtol=2e-5)


def test_effective_learning_rate_without_rms_state_raises():
    state = optax.adam(1e-3).init({"w": jnp.zeros(3)})
    with pytest.raises(ValueError, match="no RMSprop state"):
        optax_rmsprop.effective_learning_rate(state, 1e-3, **_DEFAULTS)


def test_rms_summary_reports_per_leaf_statistics_under_jit():
    lr = 0.01
    state = _run(optax_rmsprop.rmsprop(lr, eps=0.0))
    summary = jax.jit(
        lambda s: optax_rmsprop.rms_summary(s, lr, **{**_DEFAULTS, "eps": 0.0})
    )(state)
    assert len(summary) == 2 * 6
    for key, nu in _oracle_nu(eps=0.0).items():
        rms = np.sqrt(nu)
        prefix = f"['{key}']"
        np.testing.assert_allclose(summary[f"{prefix}/rms_min"], rms.min(), rtol=1e-5)
        np.testing.assert_allclose(
            summary[f"{prefix}/rms_median"], np.median(rms), rtol=1e-5
        )
        np.testing.assert_allclose(summary[f"{prefix}/rms_max"], rms.max(), rtol=1e-5)
        np.testing.assert_allclose(
            summary[f"{prefix}/lr_min"], lr / rms.max(), rtol=1e-5
        )
        np.testing.assert_allclose(
            summary[f"{prefix}/lr_max"], lr / rms.min(), rtol=1e-5
        )


def test_effective_learning_rate_of_a_pytorch_state_uses_the_stated_settings():
    # pytorch_rmsprop(lr=0.1, alpha=0.99, eps=1e-2), one step with g = [1e-3, 2]:
    # nu = 0.01 * g**2 = [1e-8, 0.04], sqrt(nu) = [1e-4, 0.2], and PyTorch's eps
    # sits outside the root: 0.1 / (sqrt(nu) + 0.01) = [9.90099, 0.476190].
    tx = optax_rmsprop.pytorch_rmsprop(lr=0.1, alpha=0.99, eps=1e-2)
    _, state = tx.update(jnp.array([1e-3, 2.0]), tx.init(jnp.zeros(2)))
    got = optax_rmsprop.effective_learning_rate(
        state, 0.1, decay=0.99, eps=1e-2, eps_in_sqrt=False, bias_correction=False
    )
    np.testing.assert_allclose(got, [0.1 / (1e-4 + 0.01), 0.1 / 0.21], rtol=1e-5)


@pytest.mark.parametrize("missing", ["decay", "eps", "eps_in_sqrt", "bias_correction"])
@pytest.mark.parametrize(
    "diagnostic",
    [optax_rmsprop.effective_learning_rate, optax_rmsprop.rms_summary],
    ids=["effective_learning_rate", "rms_summary"],
)
def test_diagnostics_refuse_to_assume_an_unstated_setting(diagnostic, missing):
    # A default would silently give a wrong number for a state built otherwise.
    state = _run(optax_rmsprop.rmsprop(0.1))
    settings = {k: v for k, v in _DEFAULTS.items() if k != missing}
    with pytest.raises(TypeError, match=f"missing 1 required keyword-only.*{missing}"):
        diagnostic(state, 0.1, **settings)


@pytest.mark.parametrize("built_with", [False, True])
def test_effective_learning_rate_refuses_a_bias_correction_the_state_contradicts(
    built_with,
):
    state = _run(optax_rmsprop.rmsprop(0.1, bias_correction=built_with))
    settings = {**_DEFAULTS, "bias_correction": not built_with}
    with pytest.raises(ValueError, match=f"built with bias_correction={built_with}"):
        optax_rmsprop.effective_learning_rate(state, 0.1, **settings)
