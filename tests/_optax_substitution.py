"""A pytest plugin that runs optax's own tests on optax_rmsprop's RMSprop.

Loaded only by ``tests/test_optax_conformance.py``, in a pytest subprocess
started with ``-p _optax_substitution`` (this folder on ``PYTHONPATH``) and
the environment variable ``OPTAX_SUBSTITUTION_REPORT`` naming the JSON file
to write. Importing this module changes nothing; its hooks act only when that
variable is set.

- ``pytest_configure``, before any optax test module is imported (so that
  module-level uses such as ``optax.rmsprop(1.0)`` in ``sharding_test.py`` and
  ``transform.scale_by_rms`` in parameter lists already see ours), rebinds
  every attribute of a loaded optax module that holds optax's ``rmsprop``,
  ``scale_by_rms`` or ``scale_by_stddev`` (``optax``, ``optax._src.alias``,
  ``optax._src.transform``) to a counting wrapper of optax_rmsprop's factory
  of the same name. optax's own code looks them up at call time
  (``transform.scale_by_rms`` in ``contrib/_schedule_free.py``), so it builds
  ours too. The wrapper (``functools.wraps``: ``inspect.signature``,
  annotations and ``__name__`` are our factory's) counts builds; the
  transform it returns is ours, of the same class, with ``init`` and
  ``update`` behind call counters.
- ``pytest_collection_modifyitems`` keeps the tests that reach those
  factories (see :func:`_is_selected`).
- ``pytest_sessionfinish`` writes the report: per selected test its outcome
  (a failing ``subTest`` fails the test), error text, skip reason, duration
  and the builds, ``init`` and ``update`` calls of ours it made; collection
  errors; which references were rebound; which still hold optax's originals
  (none, if the substitution held); errors building ours right after the
  substitution.
"""

import collections
import functools
import inspect
import io
import json
import os
import sys
import tokenize

import pytest

REPORT_ENV = "OPTAX_SUBSTITUTION_REPORT"
FACTORIES = ("rmsprop", "scale_by_rms", "scale_by_stddev")
# optax functions that build one of FACTORIES (found by reading optax 0.2.8;
# tests/test_optax_conformance.py checks the list against optax's sources).
DEPENDENTS = ("schedule_free_adamw",)
KEYWORDS = FACTORIES + DEPENDENTS

_counts = collections.Counter()
_originals = {}  # Factory name -> optax's own function.
_report = {"patched": [], "probe_errors": [], "collection_errors": []}
_per_test = {}  # nodeid -> record.
_BEFORE = pytest.StashKey[dict]()  # The counters when a test's call began.


def _counting_transform(tx):
    def init(params):
        _counts["init"] += 1
        return tx.init(params)

    def update(*args, **kwargs):
        _counts["update"] += 1
        return tx.update(*args, **kwargs)

    return tx._replace(init=init, update=update)


def _counting_factory(factory):
    @functools.wraps(factory)
    def build(*args, **kwargs):
        _counts["build"] += 1
        return _counting_transform(factory(*args, **kwargs))

    return build


def _optax_modules():
    """Loaded modules from optax's folder (tests and doctest copies included)."""
    import optax

    root = os.path.dirname(optax.__file__) + os.sep
    return {
        name: module
        for name, module in list(sys.modules.items())
        if (getattr(module, "__file__", None) or "").startswith(root)
    }


def _substitute():
    import optax
    import optax._src.alias
    import optax._src.transform
    import optax.contrib  # noqa: F401  Loaded so the scan below sees it.

    import optax_rmsprop

    _originals.update(
        rmsprop=optax._src.alias.rmsprop,
        scale_by_rms=optax._src.transform.scale_by_rms,
        scale_by_stddev=optax._src.transform.scale_by_stddev,
    )
    ours = {name: _counting_factory(getattr(optax_rmsprop, name)) for name in FACTORIES}
    for module_name, module in sorted(_optax_modules().items()):
        for name in FACTORIES:
            if getattr(module, name, None) is _originals[name]:
                setattr(module, name, ours[name])
                _report["patched"].append(f"{module_name}.{name}")


def _probe():
    """Builds each of ours with every state layout, through optax's names."""
    import optax

    for bias_correction in (False, True):
        builds = {
            "scale_by_rms": lambda: optax.scale_by_rms(bias_correction=bias_correction),
            "scale_by_stddev": lambda: optax.scale_by_stddev(
                bias_correction=bias_correction
            ),
            "rmsprop(centered=True)": lambda: optax.rmsprop(
                1.0, centered=True, bias_correction=bias_correction
            ),
        }
        for name, build in builds.items():
            try:
                build()
            except Exception as error:  # noqa: BLE001  Reported, not raised.
                message = f"{name}, bias_correction={bias_correction}: {error!r}"
                _report["probe_errors"].append(message[:500])


def _leftover_originals():
    """References to optax's factories other than their own definitions."""
    return sorted(
        f"{module_name}.{attr}"
        for module_name, module in _optax_modules().items()
        for attr, value in list(vars(module).items())
        if any(value is f for f in _originals.values())
        and value.__module__ != module_name
    )


def _absl_params(item):
    """The arguments of an absl-parameterised case; None for any other test."""
    function = getattr(item, "function", None)
    if function is None or function.__closure__ is None:
        return None
    return inspect.getclosurevars(function).nonlocals.get("testcase_params")


def _code(item):
    """A plain test's source, comments dropped ('' for a doctest)."""
    function = getattr(item, "function", None)
    if function is None:
        return ""
    source = inspect.getsource(inspect.unwrap(function))
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return " ".join(t.string for t in tokens if t.type != tokenize.COMMENT)


def _is_selected(item):
    """Keeps a test whose id, arguments or (plain test) code names a keyword.

    The id covers named cases (``test_scalers_rmsprop``,
    ``test_init_with_abstract_input_rmsprop``) and doctests
    (``alias.rmsprop``). An absl-parameterised case is kept when its arguments
    name one (``test_optimization27`` with ``opt_name='rmsprop'``, mechanize
    around rmsprop, ``schedule_free_adamw``, ``transform.scale_by_stddev`` as
    the factory), never for its method's code, which dispatches on other
    optimizers' names too. A plain test is kept when its code, comments
    aside, names one (``test_rms_match_adam``).
    """
    params = _absl_params(item)
    text = item.nodeid + (_code(item) if params is None else repr(params))
    return any(keyword in text for keyword in KEYWORDS)


def pytest_configure(config):
    if not os.environ.get(REPORT_ENV):
        return
    import jax

    # optax's sharding tests build an 8-device mesh; XLA simulates the CPUs.
    jax.config.update("jax_num_cpu_devices", 8)
    _substitute()
    _probe()
    _counts.clear()


def pytest_collectreport(report):
    if os.environ.get(REPORT_ENV) and report.failed:
        _report["collection_errors"].append(
            f"{report.nodeid}: {report.longreprtext[-3000:]}"
        )


def pytest_collection_modifyitems(session, config, items):
    if not os.environ.get(REPORT_ENV):
        return
    chosen = {item.nodeid: _is_selected(item) for item in items}
    config.hook.pytest_deselected(
        items=[item for item in items if not chosen[item.nodeid]]
    )
    items[:] = [item for item in items if chosen[item.nodeid]]
    _report["deselected_count"] = len(chosen) - len(items)
    for item in items:
        params = _absl_params(item)
        _per_test[item.nodeid] = {
            "outcome": "not run",  # Until a report says otherwise.
            "errors": [],
            "skip_reason": None,
            "params": None if params is None else repr(params)[:300],
        }
    # Builds while importing test modules (sharding_test.py's OPTIMIZERS).
    _report["builds_at_import"] = _counts["build"]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    # Runs before pytest's own implementation, which runs the test.
    item.stash[_BEFORE] = dict(_counts)


def pytest_runtest_teardown(item, nextitem):
    record = _per_test.get(item.nodeid)
    before = item.stash.get(_BEFORE, None)
    if record is not None and before is not None:
        for key in ("build", "init", "update"):
            record[key] = _counts[key] - before.get(key, 0)


def pytest_runtest_logreport(report):
    record = _per_test.get(report.nodeid)
    if record is None:
        return
    if report.failed:
        record["outcome"] = "failed"
        record["errors"].append(f"[{report.when}] {report.longreprtext[-3000:]}")
    elif report.skipped and record["outcome"] == "not run":
        record["outcome"] = "skipped"
        record["skip_reason"] = str(report.longrepr)
    elif report.when == "call" and record["outcome"] == "not run":
        record["outcome"] = "passed"
    if report.when == "call":
        record["duration"] = round(report.duration, 3)


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    import optax

    import optax_rmsprop

    _report.update(
        exitstatus=int(exitstatus),
        tests=_per_test,
        leftover_originals=_leftover_originals(),
        wraps_ours={
            name: inspect.unwrap(getattr(optax, name)) is getattr(optax_rmsprop, name)
            for name in FACTORIES
        },
    )
    with open(path, "w") as f:
        json.dump(_report, f, indent=1)
