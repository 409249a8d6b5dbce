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
# `make verify` reruns this notebook in full (fresh cache) and compares its metrics.csv.
VERIFY_NOTEBOOK ?= notebooks/10_content.ipynb
VERIFY_ATOL ?= 1e-6
# Where the cells run (metarec_lib.executors): EXECUTOR=local|ray, WORKERS=N (default: one
# worker process per CPU core, at most 8; WORKERS=1 computes in the notebook's process). Ray
# starts a local instance unless RAY_ADDRESS. The numbers do not depend on it (only timings do).
EXECUTOR ?= local
NPROC := $(shell nproc 2>/dev/null || echo 1)
WORKERS ?= $(shell n=$(NPROC); echo $$(( n < 8 ? n : 8 )))
RUN_ON := METAREC_EXECUTOR=$(EXECUTOR) METAREC_WORKERS=$(WORKERS)
SUMMARY := notebooks/90_summary.ipynb  # the pipeline runs it last (pipeline.run_order)

export PIP_DISABLE_PIP_VERSION_CHECK := 1
export MPLBACKEND := Agg

.PHONY: help setup reproduce report manifest verify smoke test lint lab clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[dev,ray]'
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv and install the pinned environment (quick when done)

reproduce: setup ## The whole study: every notebook in order, the report, the manifest (resumes)
	$(RUN_ON) $(PY) -m metarec_lib.pipeline --results $(RESULTS) $(if $(filter 1,$(STRICT)),--strict) \
	  $(if $(SEEDS),--seeds $(SEEDS)) $(NOTEBOOKS)
	$(PY) -m metarec_lib.report $(RESULTS)
	$(PY) -m metarec_lib.manifest write $(RESULTS)

report: setup ## Rerun the summary notebook from results/, then report.html, REPORT.md, LaTeX, PDF
	$(PY) -m metarec_lib.pipeline --results $(RESULTS) $(SUMMARY)
	$(PY) -m metarec_lib.report $(RESULTS)
	$(PY) -m metarec_lib.manifest write $(RESULTS)

manifest: setup ## Write results/manifest.json (commit, packages, hardware, data digests, SHA-256)
	$(PY) -m metarec_lib.manifest write $(RESULTS)

verify: setup ## Check the manifest, run every notebook in smoke mode, rerun one notebook in full
	$(PY) -m metarec_lib.manifest check $(RESULTS)
	rm -rf .verify && METAREC_WORKERS=1 $(PY) -m metarec_lib.pipeline --smoke \
	  --results .verify/smoke $(NOTEBOOKS)
	$(RUN_ON) $(PY) -m metarec_lib.pipeline --results .verify/full $(VERIFY_NOTEBOOK)
	$(PY) -m metarec_lib.manifest compare --atol $(VERIFY_ATOL) \
	  $(RESULTS)/$(basename $(notdir $(VERIFY_NOTEBOOK)))/metrics.csv \
	  .verify/full/$(basename $(notdir $(VERIFY_NOTEBOOK)))/metrics.csv

smoke: setup ## Run every notebook on tiny data into .smoke/ (in process: workers' start-up outweighs the gain), then its report
	METAREC_WORKERS=1 $(PY) -m metarec_lib.pipeline --smoke --results .smoke/results $(NOTEBOOKS)
	$(PY) -m metarec_lib.report .smoke/results

test: setup ## Run the test suite
	$(PY) -m pytest -q

lint: setup ## Check style with ruff
	$(PY) -m ruff check metarec_lib tests benchmarks

lab: setup ## Open the notebooks in JupyterLab
	$(PY) -m pip install -q -c requirements.lock -e '.[dev,lab]'
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) notebooks

clean: ## Remove the environment, caches and smoke outputs (keeps committed results)
	rm -rf $(VENV) .smoke .verify .pytest_cache .ruff_cache $(RESULTS)/.cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
