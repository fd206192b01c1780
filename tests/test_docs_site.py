"""The documentation site builds without a warning, offline, and covers the API.

Runs the build ``make site`` runs (``sphinx-build -W -n``: warnings are errors,
every cross-reference must resolve) into a temporary folder, in a subprocess
whose sockets refuse to connect, so the build provably needs no network. Then
checks the generated API page against ``optax_rmsprop.__all__``. One build
(about 10 s) serves every test of this module.
"""

import pathlib
import re
import subprocess
import sys

import pytest

import optax_rmsprop

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# Sphinx in a process whose every attempt to open a connection fails: a build
# that fetched anything (an intersphinx inventory, a remote image) would warn,
# and -W turns that into a failed build.
_OFFLINE_SPHINX = """
import socket
import sys

def _refuse(*args, **kwargs):
    raise OSError("network access during the docs build")

socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse

from sphinx.cmd.build import main

sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Builds the site once; returns (completed process, output folder)."""
    out = tmp_path_factory.mktemp("site")
    args = ["-W", "-n", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)]
    process = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SPHINX, *args],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return process, out


def _api_entry(html, name):
    """The HTML of one API entry: from its anchor to the next entry."""
    start = html.index(f'id="optax_rmsprop.{name}"')
    end = html.find('<dl class="py', start)
    return html[start : end if end != -1 else len(html)]


def test_site_builds_offline_without_any_warning(site):
    process, _ = site
    assert process.returncode == 0, process.stdout + process.stderr
    assert "WARNING" not in process.stderr, process.stderr
    assert "ERROR" not in process.stderr, process.stderr


def test_every_source_page_becomes_an_html_page(site):
    _, out = site
    sources = [p for p in DOCS.iterdir() if p.suffix in (".md", ".rst")]
    missing = [p.name for p in sources if not (out / f"{p.stem}.html").is_file()]
    assert sources and not missing


@pytest.mark.parametrize("name", list(optax_rmsprop.__all__))
def test_public_name_has_an_api_reference_entry(site, name):
    _, out = site
    html = (out / "api.html").read_text(encoding="utf-8")
    assert f'id="optax_rmsprop.{name}"' in html
    # The entry carries its docstring's summary line, not just a signature.
    first, second = getattr(optax_rmsprop, name).__doc__.split()[:2]
    text = re.sub(r"<[^>]+>", "", _api_entry(html, name))
    assert re.search(re.escape(first) + r"\s+" + re.escape(second), text)


_WITH_MATHS = [
    name
    for name in optax_rmsprop.__all__
    if ".. math::" in getattr(optax_rmsprop, name).__doc__
]


@pytest.mark.parametrize("name", _WITH_MATHS)
def test_docstring_maths_is_rendered_as_maths(site, name):
    _, out = site
    entry = _api_entry((out / "api.html").read_text(encoding="utf-8"), name)
    # sphinx.ext.mathjax wraps each display formula in a math div, in TeX
    # delimiters MathJax typesets in the browser; a raw ".. math::" would mean
    # the directive was not recognised.
    assert '<div class="math notranslate nohighlight">' in entry
    assert ".. math::" not in entry


def test_readme_figures_are_the_ones_make_docs_regenerates():
    # Every image the README shows must be reproducible by a command: the
    # `docs` target of the Makefile writes them with `--out docs`.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    scripts = re.findall(r"examples/(\w+)\.py --out docs", makefile)
    written = set()
    for script in scripts:
        source = (ROOT / "examples" / f"{script}.py").read_text(encoding="utf-8")
        written.update(re.findall(r"\"(\w+\.png)\"", source))
    assert images
    for image in images:
        assert image.startswith("docs/") and (ROOT / image).is_file(), image
        assert image.removeprefix("docs/") in written, image
