# The two commands a new user types: `make demo` and `make test`.
# Each installs what it needs: the venv (Python deps), the Docker engine, the default image.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup venv engine image opencode demo test test-fast lint bench gc clean

setup: venv engine image opencode

venv: $(STAMP)
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

engine:
	bash images/ensure-engine.sh

image: venv engine
	$(BIN)/fsm-runner images build

# The OpenCode agent (scaffold/repair), pinned, into the git-ignored .tools/ folder.
opencode:
	bash images/install-opencode.sh

demo: setup
	$(BIN)/python examples/demo.py

test: setup
	bash tests/run.sh

test-fast: venv
	$(BIN)/pytest -q -m "not docker"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m benchmarks.startup
	$(BIN)/python -m benchmarks.run_process
	$(BIN)/python -m benchmarks.workspace_copy
	$(BIN)/python -m benchmarks.warm_pool
	$(BIN)/python -m benchmarks.sandbox_overhead
	$(BIN)/python -m benchmarks.session_trivial
	$(BIN)/python -m benchmarks.bootstrap_cache
	$(BIN)/python -m benchmarks.batch
	$(BIN)/python -m benchmarks.samples_validation

gc: venv
	$(BIN)/fsm-runner gc

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
