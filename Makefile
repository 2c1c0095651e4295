# One command each for a fresh machine: `make demo` (set up, then the offline demo run) and
# `make test` (set up, then the test suite). Both set up the same virtual environment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Only the tests need it: PostgreSQL serves the sweep's database-storage test, which skips without it.
TEST_SYSTEM_PACKAGES := postgresql

.PHONY: help setup test-system-packages demo test lint mutation
.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-22s %s\n", $$1, $$2}'

setup: $(VENV)/.installed ## Create .venv and install csm-adapt with its test extra

# Re-installs only when pyproject.toml changes. Not quiet: the CUDA build of PyTorch is ~7 GB, and
# pip's progress bars show that the download is moving.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar on --upgrade pip
	@echo "installing csm-adapt and its dependencies (PyTorch's CUDA build alone is ~7 GB)..."
	$(BIN)/pip install --progress-bar on -e ".[test]"
	touch $@

test-system-packages: ## Install PostgreSQL for the sweep's database test, where apt-get can
	@if command -v apt-get >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEST_SYSTEM_PACKAGES) >/dev/null) \
		|| echo "warning: could not install $(TEST_SYSTEM_PACKAGES); the tests that need them will skip"; fi

# The demo starts over each time (a run directory holds one run; `csm-adapt run` refuses to mix two).
demo: setup ## Set up, then train the offline demo into runs/demo (a few minutes on CPU)
	rm -rf runs/demo
	$(BIN)/csm-adapt run recipes/demo.toml

test: setup test-system-packages ## Set up, then run the whole test suite (what CI runs)
	$(BIN)/python -m pytest -q

# ruff's rules and version live in pyproject.toml (the `lint` extra); CI runs this before the tests.
lint: setup ## ruff check and ruff format --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# One-line bugs planted in the core modules, one at a time, each against its tests (benchmarks/mutation.py).
# Not run by CI: run it before a release-sized change and record the score in benchmarks/RESULTS.md.
mutation: setup ## Plant curated one-line bugs in the core modules and check a test catches each
	$(BIN)/python benchmarks/mutation.py
