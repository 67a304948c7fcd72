# The two commands of the README's quick start: `make demo` and `make test`.
# Both create .venv at the repository root on first use. torch is installed first, pinned to
# the CPU build (the package asks for a range; left to resolve it alone, pip would pull
# gigabytes of CUDA packages). The zoo extra brings the packages its datasets ship in.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test lint install dev clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[zoo]"
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(PIP) install -e ".[dev,zoo]"
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.dev

demo: $(VENV)/.installed
	$(VENV)/bin/mallory demo

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
