# One command each for a fresh machine: `make demo` (set up, then the offline demo run) and
# `make test` (set up, then the test suite). Both set up the same virtual environment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test
setup: $(VENV)/.installed

# Re-installs only when pyproject.toml changes. espeak-ng regenerates the demo speech; its absence
# only matters for that script, so a machine without apt-get still sets up.
$(VENV)/.installed: pyproject.toml
	@if ! command -v espeak-ng >/dev/null && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq espeak-ng) || echo "warning: could not install espeak-ng"; fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

demo: setup
	$(BIN)/csm-adapt run recipes/demo.toml

test: setup
	$(BIN)/python -m pytest -q
