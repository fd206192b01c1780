"""optax's own tests pass with optax_rmsprop in place of optax's RMSprop.

optax 0.2.8 ships its tests in its wheel. One pytest subprocess (a
module-scoped fixture) runs them from the installed optax, located through
``optax.__file__`` (nothing of optax's is copied here), with the plugin
``tests/_optax_substitution.py`` loaded by ``-p``. Before any optax test
module is imported, the plugin rebinds ``optax.rmsprop``,
``optax.scale_by_rms``, ``optax.scale_by_stddev`` and their definitions in
``optax._src.alias`` and ``optax._src.transform`` (every optax module
attribute holding one) to counting wrappers of ours, so optax's tests and
optax's own code (``contrib.schedule_free_adamw`` builds
``transform.scale_by_rms``) build optax_rmsprop's transforms.

Selection, in two steps:

- Files: every ``*_test.py`` in optax whose text names ``rmsprop``,
  ``scale_by_rms``, ``scale_by_stddev`` or ``schedule_free_adamw`` (the one
  other optax function built on them, see
  :func:`test_only_rmsprop_and_schedule_free_adamw_build_the_scalers`), every
  test file importing one of those (``schedules/_schedule_test.py`` runs
  ``alias_test``'s optimizer list), and, for their docstring examples
  (``--doctest-modules``), the modules defining those functions.
- Tests: the plugin keeps a test whose id names one of those four words
  (``test_scalers_rmsprop``, ``test_mixed_dtype_input_outputs_scale_by_stddev``,
  the doctest ``alias.rmsprop``), an absl-parameterised case whose arguments
  name one (``opt_name='rmsprop'`` with or without momentum, rmsprop under
  ``mechanize``, ``schedule_free_adamw``), and a plain test whose code,
  comments aside, names one (``test_rms_match_adam``). Every kept test must
  then call our ``init`` or ``update`` at least once (counted by the
  wrappers), so nothing is kept that does not exercise ours.

The results come back as a JSON report and are checked by several tests:
every selected test passes; at least ``MIN_EXECUTED`` ran; the substitution
reached every reference and left none of optax's; each test exercised ours;
the only skips are optax's own, named below with their reasons. An optax test
asserting an optax defect that optax_rmsprop fixes on purpose would be
deselected by name in ``OPTAX_DEFECT_TESTS``, with the reason; none does.
"""

import ast
import json
import os
import pathlib
import re
import resource
import subprocess
import sys
import time

import _optax_substitution as plugin
import optax
import pytest

OPTAX = pathlib.Path(optax.__file__).resolve().parent
TESTS = pathlib.Path(__file__).resolve().parent

# What the discovery below finds in optax 0.2.8 (a different set means optax
# changed: read the new files before updating this).
EXPECTED_TEST_FILES = (
    "_src/alias_test.py",
    "_src/float64_test.py",
    "_src/sharding_test.py",
    "_src/transform_test.py",
    "contrib/_common_test.py",
    "contrib/_schedule_free_test.py",
    "schedules/_schedule_test.py",
)
EXPECTED_DOCTEST_FILES = (
    "_src/alias.py",
    "_src/transform.py",
    "contrib/_schedule_free.py",
)
EXPECTED_PATCHED = (
    "optax._src.alias.rmsprop",
    "optax._src.transform.scale_by_rms",
    "optax._src.transform.scale_by_stddev",
    "optax.rmsprop",
    "optax.scale_by_rms",
    "optax.scale_by_stddev",
)
# On optax 0.2.8, 84 are selected and 81 run: 32 in alias_test, 3 in
# float64_test, 1 in sharding_test (2 more skip), 3 in transform_test, 37 in
# contrib's common tests (1 more skips), 1 schedule-free test, 2 schedule
# tests and 2 docstring examples (optax.rmsprop, schedule_free_adamw).
MIN_EXECUTED = 80
CPU_BUDGET_SECONDS = 150

# Tests that optax's own code skips here, with the reason it gives.
OPTAX_OWN_SKIPS = {
    # optax compares version strings: "0.10.2" < "0.7.2" holds, so these two
    # sharding-in-types tests skip on jax 0.10 in optax's own run too.
    # tests/test_sharding.py covers our state under explicit sharding.
    "optax/_src/sharding_test.py::ShardingTest::"
    "test_state_sharding_type_init_match_update_rmsprop": (
        "Skipping sharding-in-types test"
    ),
    "optax/_src/sharding_test.py::ShardingTest::"
    "test_state_sharding_type_preserved_with_jit_rmsprop": (
        "Skipping sharding-in-types test"
    ),
    # schedule_free_adamw annotates learning_rate as an array, not a
    # schedule, so optax skips its schedule check (not about RMSprop).
    "optax/contrib/_common_test.py::ContribTest::"
    "test_optimizers_accept_learning_rate_schedule_if_type_annotated_as_such15": (
        "Optimizer doesn't accept a learning schedule."
    ),
}

# optax tests asserting an optax defect that optax_rmsprop fixes on purpose
# (NaN from a negative centered variance, bf16 averages), deselected by name:
# id -> reason. Empty: optax's shipped tests do not assert those defects.
OPTAX_DEFECT_TESTS: dict[str, str] = {}


def _text(path):
    return path.read_text(encoding="utf-8")


def _names_a_keyword(text):
    return any(keyword in text for keyword in plugin.KEYWORDS)


def _discover_test_files():
    """optax test files naming a keyword, or importing a test file that does."""
    tests = sorted(OPTAX.rglob("*_test.py"))
    found = {path for path in tests if _names_a_keyword(_text(path))}
    while True:
        stems = "|".join(re.escape(path.stem) for path in found)
        importing = {p for p in tests if re.search(rf"\bimport ({stems})\b", _text(p))}
        if importing <= found:
            return sorted(found)
        found |= importing


def _discover_doctest_files():
    """optax modules (not tests) defining one of the keyword functions."""
    pattern = re.compile(rf"^def ({'|'.join(plugin.KEYWORDS)})\(", re.MULTILINE)
    return sorted(
        path
        for path in OPTAX.rglob("*.py")
        if not path.name.endswith("_test.py") and pattern.search(_text(path))
    )


def _relative(paths):
    return tuple(path.relative_to(OPTAX).as_posix() for path in paths)


def _children_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _subprocess_env(report_path):
    # No PYTEST_* (an xdist worker's, PYTEST_ADDOPTS) and no XLA_FLAGS: the
    # plugin asks for 8 simulated CPUs itself, as optax's sharding tests need.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTEST_", "XLA_FLAGS"))
    }
    python_path = [str(TESTS), *filter(None, [env.get("PYTHONPATH")])]
    env.update(
        PYTHONPATH=os.pathsep.join(python_path),
        JAX_PLATFORMS="cpu",
        **{plugin.REPORT_ENV: str(report_path)},
    )
    return env


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Runs the selected optax tests once; returns the plugin's report."""
    folder = tmp_path_factory.mktemp("optax_conformance")
    ini = folder / "pytest.ini"  # Keeps this project's pytest settings out.
    ini.write_text("[pytest]\n")
    report_path = folder / "report.json"
    files = _discover_test_files() + _discover_doctest_files()
    deselect = [f"--deselect={test_id}" for test_id in OPTAX_DEFECT_TESTS]
    command = [
        *(sys.executable, "-m", "pytest", "-c", str(ini)),
        *("--rootdir", str(OPTAX.parent), "-p", "_optax_substitution"),
        *("-p", "no:cacheprovider", "-q", "--doctest-modules", *deselect),
        "--continue-on-collection-errors",
        *map(str, files),
    ]
    start = time.perf_counter()
    cpu_start = _children_cpu_seconds()
    process = subprocess.run(
        command,
        cwd=folder,
        env=_subprocess_env(report_path),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    seconds = time.perf_counter() - start
    cpu_seconds = _children_cpu_seconds() - cpu_start
    if not report_path.exists():
        pytest.fail(
            f"no report; pytest said:\n{process.stdout[-3000:]}"
            f"\n{process.stderr[-3000:]}"
        )
    print(f"optax's tests, ours substituted: {seconds:.0f} s, {cpu_seconds:.0f} s CPU")
    report = json.loads(report_path.read_text())
    report["cpu_seconds"] = cpu_seconds
    return report


def _executed(run):
    """The selected tests that ran (passed or failed)."""
    tests = run["tests"].items()
    return {k: v for k, v in tests if v["outcome"] in ("passed", "failed")}


def test_the_run_covers_every_optax_file_naming_rmsprop():
    assert _relative(_discover_test_files()) == EXPECTED_TEST_FILES
    assert _relative(_discover_doctest_files()) == EXPECTED_DOCTEST_FILES


def _functions_calling_the_factories(path):
    """Names of the functions in ``path`` that call one of FACTORIES."""
    callers = set()
    for function in ast.walk(ast.parse(_text(path))):
        if not isinstance(function, ast.FunctionDef):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Call):
                callee = node.func
                name = getattr(callee, "attr", getattr(callee, "id", None))
                if name in plugin.FACTORIES and name != function.name:
                    callers.add(function.name)
    return callers


def test_only_rmsprop_and_schedule_free_adamw_build_the_scalers():
    # Every optax function that builds rmsprop/scale_by_rms/scale_by_stddev
    # (other than themselves) must be one whose tests are selected.
    callers = set()
    for path in OPTAX.rglob("*.py"):
        if not path.name.endswith("_test.py"):
            callers |= _functions_calling_the_factories(path)
    assert callers == {"rmsprop", *plugin.DEPENDENTS}


def test_substitution_reaches_every_reference_and_leaves_none(run):
    assert tuple(sorted(run["patched"])) == EXPECTED_PATCHED
    assert run["leftover_originals"] == []
    assert run["wraps_ours"] == dict.fromkeys(plugin.FACTORIES, True)
    # sharding_test.py builds optax.rmsprop(1.0) when it is imported.
    assert run["builds_at_import"] >= 1


def test_ours_build_after_being_substituted_into_optax(run):
    # Our factories must not reach optax's factories through the names that
    # were just rebound to ours (that recursion would break every test below).
    assert run["probe_errors"] == []


def test_every_selected_test_exercises_our_transforms(run):
    idle = [
        test_id
        for test_id, record in _executed(run).items()
        if record.get("init", 0) + record.get("update", 0) == 0
    ]
    assert idle == []


def test_at_least_the_observed_number_of_optax_tests_ran(run):
    assert run["collection_errors"] == []
    assert len(_executed(run)) >= MIN_EXECUTED


def _gist(errors):
    """The first lines pytest marked ``E`` in a test's last error."""
    lines = [line[1:].strip() for line in errors[-1].splitlines() if line[:2] == "E "]
    return " | ".join(lines[:6])[:400] or errors[-1][-300:]


def test_every_selected_optax_test_passes(run):
    failures = {  # Failed, or never ran (a collection error, a crash).
        test_id: record["errors"] or [record["outcome"]]
        for test_id, record in run["tests"].items()
        if record["outcome"] not in ("passed", "skipped")
    }
    summary = "\n".join(f"{k}\n    {_gist(v)}" for k, v in failures.items())
    first = "\n".join(next(iter(failures.values()), []))[-3000:]
    assert not failures, f"{len(failures)} failed:\n{summary}\n\nFirst:\n{first}"


def test_the_only_skips_are_optax_own_named_ones(run):
    skipped = {
        test_id: record["skip_reason"]
        for test_id, record in run["tests"].items()
        if record["outcome"] == "skipped"
    }
    assert set(skipped) <= set(OPTAX_OWN_SKIPS)
    for test_id, reason in skipped.items():
        assert OPTAX_OWN_SKIPS[test_id] in reason


def test_the_run_stays_within_its_cpu_budget(run):
    # CPU seconds of the pytest subprocess (compilation dominates), not wall
    # time, which doubles when the machine is shared: 27 to 33 s on one
    # 2-core development machine, 52 to 60 s on another (both "AMD EPYC":
    # the CPU behind the name differs between sessions). The budget catches a
    # selection or a per-call cost gone wrong (several times over), not the
    # speed of the machine.
    assert run["cpu_seconds"] < CPU_BUDGET_SECONDS
