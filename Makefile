# Every target builds its own virtual environment on first use, so a fresh
# machine with python3 (3.11+) and the package registry needs nothing else.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench docs site clean

demo: $(VENV)/.examples
	$(BIN)/python examples/train_digits.py

# --dist loadfile: a test module's cached compilations are built by one worker,
# not by both (404 s -> 360 s here).
test: lint $(VENV)/.test $(VENV)/.examples $(VENV)/.docs $(VENV)/.clients
	$(BIN)/python -m pytest -n 2 --dist loadfile

# Style (ruff: pycodestyle, pyflakes, sorted imports, McCabe <= 10; the
# formatter) over the whole tree, and types (mypy, see [tool.mypy]) of the
# package.
lint: $(VENV)/.lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(VENV)/.bench
	$(BIN)/python -m benchmarks

# The documentation site, into build/site (warnings are errors, every
# cross-reference must resolve; no network needed). tests/test_docs_site.py
# runs the same build.
site: $(VENV)/.docs
	$(BIN)/python -m sphinx -W -n --keep-going -q -b html docs build/site

# Regenerates the images the README shows.
docs: $(VENV)/.examples
	$(BIN)/python examples/train_digits.py --out docs
	$(BIN)/python examples/adagrad_vs_rmsprop.py --out docs
	$(BIN)/python examples/ravine.py --out docs

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.%: pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e ".[$*]"
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache .ruff_cache build dist *.egg-info
