VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTHON ?= python3
# The server's own settings, when set, are what `make run` serves on (PORTRAIT_PORT=8001 make run); PORT=... wins.
HOST ?= $(or $(PORTRAIT_HOST),127.0.0.1)
PORT ?= $(or $(PORTRAIT_PORT),8000)

# Two test processes (pytest-xdist), each module's tests in one of them (their servers and fixtures made once): the
# suite spends most of its time waiting on the servers, databases and browsers it starts, and took 19 minutes in
# one process on the 2-core box, 11 in two. PYTEST_WORKERS= (empty) runs it in one.
PYTEST_WORKERS ?= -n 2 --dist loadscope

.PHONY: run test install install-test lint typecheck bench clean

# pyproject.toml's requires-python: without this check an older python3 made a venv and pip then failed with
# "Package 'portrait' requires a different Python", after a page of other output.
$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "Portrait needs Python 3.11 or newer ($(PYTHON): $$($(PYTHON) --version 2>/dev/null || echo not found))." \
	       "Install one and run make PYTHON=python3.12 (or the path to it)." >&2; exit 1; }
	@# A venv that failed half-way (Debian without python3-venv: no ensurepip) still has bin/python, this target:
	@# removed, so that the next make tries again instead of failing on a missing pip.
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }
	$(PIP) install --quiet --upgrade pip

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test
	scripts/system-packages.sh

# `pip install -e .` asks the package index for its build requirements every time, so a second `make run` failed
# offline although everything was installed. Done again only when pyproject.toml changes (an editable install
# follows the sources by itself).
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

run: install
	$(VENV)/bin/portrait serve --host $(HOST) --port $(PORT)

lint: install-test
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

test: install-test
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest $(PYTEST_WORKERS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
