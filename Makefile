# One command each for a fresh machine: `make demo` (set up, then the offline demo run) and
# `make test` (set up, then the test suite). Both set up the same virtual environment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Only the tests need it: PostgreSQL serves the sweep's database-storage test, which skips without it.
TEST_SYSTEM_PACKAGES := postgresql

.PHONY: setup test-system-packages demo test lint mutation
setup: $(VENV)/.installed

# Re-installs only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

test-system-packages:
	@if command -v apt-get >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEST_SYSTEM_PACKAGES) >/dev/null) \
		|| echo "warning: could not install $(TEST_SYSTEM_PACKAGES); the tests that need them will skip"; fi

# The demo starts over each time (a run directory holds one run; `csm-adapt run` refuses to mix two).
demo: setup
	rm -rf runs/demo
	$(BIN)/csm-adapt run recipes/demo.toml

test: setup test-system-packages
	$(BIN)/python -m pytest -q

# ruff's rules and version live in pyproject.toml (the `lint` extra); CI runs this before the tests.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# One-line bugs planted in the core modules, one at a time, each against its tests (benchmarks/mutation.py).
# Not run by CI: run it before a release-sized change and record the score in benchmarks/RESULTS.md.
mutation: setup
	$(BIN)/python benchmarks/mutation.py
