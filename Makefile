# metarec: `make reproduce` runs the whole study, `make test` the test suite.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RESULTS ?= results
STRICT ?= 0
SEEDS ?=
NOTEBOOKS ?= $(sort $(wildcard notebooks/[0-9]*.ipynb))

export PIP_DISABLE_PIP_VERSION_CHECK := 1
export MPLBACKEND := Agg

.PHONY: help setup reproduce smoke test lint lab clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv and install the pinned environment (quick when done)

reproduce: setup ## Run every notebook in order into results/ (STRICT=1: fail on missing data)
	$(PY) -m metarec_lib.pipeline --results $(RESULTS) $(if $(filter 1,$(STRICT)),--strict) \
	  $(if $(SEEDS),--seeds $(SEEDS)) $(NOTEBOOKS)

smoke: setup ## Run every notebook on tiny data into .smoke/ (seconds each)
	$(PY) -m metarec_lib.pipeline --smoke --results .smoke/results $(NOTEBOOKS)

test: setup ## Run the test suite
	$(PY) -m pytest -q

lint: setup ## Check style with ruff
	$(PY) -m ruff check metarec_lib tests benchmarks

lab: setup ## Open the notebooks in JupyterLab
	$(PY) -m pip install -q -c requirements.lock -e '.[dev,lab]'
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) notebooks

clean: ## Remove the environment, caches and smoke outputs (keeps committed results)
	rm -rf $(VENV) .smoke .pytest_cache .ruff_cache $(RESULTS)/.cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
