VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test install install-test lint typecheck bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

install: $(PY)
	$(PIP) install --quiet -e .

install-test: $(PY)
	$(PIP) install --quiet -e '.[test]'
	scripts/system-packages.sh

run: install
	$(VENV)/bin/portrait serve --host $(HOST) --port $(PORT)

lint: install-test
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

test: install-test
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
