# One entry point for set-up, tests, demo and benchmarks. Every target bootstraps the venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= demo-output

.PHONY: venv test lint format demo bench clean

venv: $(STAMP)

# torch==2.13.0 is the CPU build that lies on the machines' disk; pip takes it without a download.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0" || $(PY) -m pip install --quiet torch
	$(PY) -m pip install --quiet -e ".[test,demo]"
	touch $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: venv lint
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q

demo: venv
	$(VENV)/bin/memorization-index demo --out $(OUT)

bench: venv
	$(PY) Testing/benchmarks/run_benchmarks.py --out bench-output

clean:
	rm -rf $(VENV) demo-output bench-output .pytest_cache .ruff_cache
