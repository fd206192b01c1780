"""Sphinx configuration of the optax_rmsprop documentation site.

Built by ``make site`` (``sphinx-build -W -n``: warnings are errors and every
cross-reference must resolve). The build needs no network: there is no
intersphinx, so references to optax, JAX and NumPy objects cannot resolve and
are listed in ``nitpick_ignore_regex`` below (they render as code, unlinked).
Maths uses ``sphinx.ext.mathjax``, which the browser loads from a CDN when a
page is *viewed*; the build itself fetches nothing (``imgmath`` would need a
LaTeX installation instead).
"""

import pathlib
import sys

# The package is imported from this checkout, so the site documents the
# sources next to it, installed or not.
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import optax_rmsprop  # noqa: E402

project = "optax_rmsprop"
author = "The optax_rmsprop authors"
copyright = "2026, The optax_rmsprop authors"
version = release = optax_rmsprop.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# MyST: `$...$` maths in the Markdown pages, and anchors for `##` headings so
# pages can link to each other's sections.
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

# Autodoc: the docstrings are Google style (napoleon). Signatures show the
# parameter names and defaults; the types are spelled out in each docstring's
# Args (the annotations' aliases, jax.typing.ArrayLike and
# optax.ScalarOrSchedule, would otherwise be printed as their long unions).
autodoc_typehints = "none"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True

# No intersphinx (no network at build time): names of other libraries stay
# unlinked. Listed by library so a typo in one of *our* names still fails.
nitpick_ignore_regex = [
    (r"py:.*", r"(optax|jax|jnp|numpy|np|torch|keras)(\..*)?"),
]

html_theme = "furo"
html_title = f"optax_rmsprop {release}"
html_static_path = []
