"""The sdist and wheel build, pass ``twine check``, and the wheel alone works.

``python -m build --no-isolation`` makes the sdist from the checkout and the
wheel from the unpacked sdist, as a release would (without isolation so that
no build dependency is downloaded: ``setuptools`` comes from the test
environment). The wheel is then installed with ``pip --no-deps --no-index``
into a fresh virtual environment and the README's quickstart runs there, from
a temporary folder, in isolated mode (``python -I``).

Where the fresh environment gets jax, optax and numpy: no network, so not
from the registry. Its ``site-packages`` holds a ``.pth`` file naming the
folders those three are installed in. A folder named in a ``.pth`` file is
put on ``sys.path`` as it is: the ``.pth`` files *inside* it are not run, so
the editable install of this checkout (a ``.pth`` hook in the test
environment's ``site-packages``) stays inactive, and the only
``optax_rmsprop`` importable is the wheel's, which the script asserts by its
file's location. The dependency *declarations* are checked separately, in the
wheel's metadata against ``pyproject.toml``.
"""

import email
import pathlib
import re
import subprocess
import sys
import textwrap
import tomllib
import zipfile

import pytest
from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "optax_rmsprop"


def _run(args, **kwargs):
    process = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert process.returncode == 0, process.stdout + process.stderr
    return process.stdout


def _source_version():
    # The one place the version is written (pyproject.toml reads it from
    # there); read as text, independently of setuptools.
    source = (PACKAGE / "__init__.py").read_text(encoding="utf-8")
    return re.search(r'^__version__ = "([^"]+)"$', source, re.M).group(1)


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """Builds the sdist and the wheel once; returns the output folder."""
    out = tmp_path_factory.mktemp("dist")
    _run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out)],
        cwd=ROOT,
        timeout=300,
    )
    return out


@pytest.fixture(scope="module")
def wheel(dist):
    (path,) = dist.glob("*.whl")
    return path


def test_build_makes_one_sdist_and_one_pure_python_wheel(dist):
    version = _source_version()
    names = sorted(p.name for p in dist.iterdir())
    assert names == [
        f"optax_rmsprop-{version}-py3-none-any.whl",
        f"optax_rmsprop-{version}.tar.gz",
    ]


def test_twine_check_passes_strictly(dist):
    files = [str(p) for p in sorted(dist.iterdir())]
    _run([sys.executable, "-m", "twine", "check", "--strict", *files], timeout=120)


def test_wheel_holds_the_package_and_py_typed_only(wheel):
    version = _source_version()
    info = f"optax_rmsprop-{version}.dist-info/"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    package_files = {
        f"optax_rmsprop/{p.name}"
        for p in PACKAGE.iterdir()
        if p.suffix == ".py" or p.name == "py.typed"
    }
    assert "optax_rmsprop/py.typed" in package_files
    assert {n for n in names if not n.startswith(info)} == package_files
    # Besides the package: the metadata every wheel has, and the license.
    metadata = {"METADATA", "WHEEL", "RECORD", "top_level.txt", "licenses/LICENSE"}
    assert {n.removeprefix(info) for n in names if n.startswith(info)} == metadata


def test_wheel_metadata_matches_pyproject(wheel):
    version = _source_version()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    info = f"optax_rmsprop-{version}.dist-info/"
    with zipfile.ZipFile(wheel) as archive:
        metadata = email.message_from_bytes(archive.read(f"{info}METADATA"))
        license_text = archive.read(f"{info}licenses/LICENSE")
    assert metadata["Version"] == version
    assert metadata["License-Expression"] == "Apache-2.0" == project["license"]
    assert b"Apache License" in license_text and b"Version 2.0" in license_text
    assert metadata["Requires-Python"] == project["requires-python"]
    unconditional = [r for r in metadata.get_all("Requires-Dist") if ";" not in r]
    assert _requirements(unconditional) == _requirements(project["dependencies"])
    assert metadata["Description-Content-Type"] == "text/markdown"


def _requirements(lines):
    # setuptools reorders the specifiers ("optax>=0.2.5,<0.3" -> "optax<0.3,>=0.2.5").
    return {(r.name, r.specifier) for r in map(Requirement, lines)}


def _readme_quickstart():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- quickstart-start -->")[1]
    block = block.split("<!-- quickstart-end -->")[0]
    return block.strip().removeprefix("```python").removesuffix("```")


def _fresh_venv_with_dependencies(folder):
    """A venv without pip, seeing jax, optax and numpy but not this checkout."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(folder)], timeout=120)
    python = folder / "bin" / "python"
    purelib = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
    ).strip()
    import jax
    import numpy
    import optax

    folders = {str(pathlib.Path(m.__file__).parent.parent) for m in (jax, optax, numpy)}
    assert str(ROOT) not in folders
    pathlib.Path(purelib, "_dependencies.pth").write_text("\n".join(sorted(folders)))
    return python


def test_wheel_installed_alone_runs_the_readme_quickstart(wheel, tmp_path):
    python = _fresh_venv_with_dependencies(tmp_path / "venv")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--no-cache-dir",
            "--quiet",
            str(wheel),
        ],
        timeout=300,
    )
    script = tmp_path / "run_quickstart.py"
    script.write_text(
        textwrap.dedent(
            """
            import importlib.metadata
            import importlib.resources
            import pathlib
            import sys

            import optax_rmsprop

            # The wheel's copy, inside this venv: not the checkout.
            assert pathlib.Path(optax_rmsprop.__file__).is_relative_to(sys.prefix)
            package = importlib.resources.files("optax_rmsprop")
            assert package.joinpath("py.typed").is_file()
            print(importlib.metadata.version("optax_rmsprop"))
            """
        )
        + _readme_quickstart()
        + "\nprint(float(loss(params)))\n"
    )
    lines = _run([str(python), "-I", str(script)], cwd=tmp_path, timeout=300).split()
    assert lines[0] == _source_version()
    # The quickstart's loss starts at 2 * (3 - 1)**2 = 8 (all-ones w, x, zero b).
    assert float(lines[-1]) < 0.01 * 8.0
