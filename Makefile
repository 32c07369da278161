# Two entry points (see README): `make reproduce` and `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PRESET ?= quick
CORES ?= all
# The offline mirror beside the project (as on CI) is used when present; otherwise canonical URLs.
export REPTILE_TF_MIRROR ?= $(wildcard $(abspath ../shared/data))
# The rules call `reptile-tf`: the venv goes first on PATH (the workflow does not search for it).
# The local profile holds the run flags (resume interrupted jobs, print commands and failed logs).
SNAKEMAKE := PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake
RUN_PIPELINE := $(SNAKEMAKE) --profile workflow/profiles/default --cores $(CORES)

.PHONY: venv test reproduce smoke smoke-check smoke-reference lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Reinstall only when the project's dependencies change.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,slurm]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(BIN)/python -m pytest

# Data first, then the rest: a run directory that is already finished (the committed ones under
# results/paper_cpu/runs) reads its data as `ancient` (workflow/rules/common.smk), so preparing the
# data in a fresh clone does not retrain and re-evaluate it. Within one invocation Snakemake would.
reproduce: venv
	$(RUN_PIPELINE) --configfile workflow/config/$(PRESET).yaml --until prepare
	$(RUN_PIPELINE) --configfile workflow/config/$(PRESET).yaml

# The smoke preset writes under .cache/smoke; the committed reference results/smoke/ changes only
# through `make smoke-reference` (on purpose, see results/smoke/README.md).
SMOKE_OUT := .cache/smoke
SMOKE_TABLE := table2_omniglot
smoke: venv
	$(RUN_PIPELINE) --configfile workflow/config/smoke.yaml \
	    --config runs_dir=$(SMOKE_OUT)/runs results_dir=$(SMOKE_OUT)/results logs_dir=$(SMOKE_OUT)/logs

# Cross-machine check of a fresh smoke run against the reference: paired test per cell (CI).
smoke-check: smoke
	$(BIN)/reptile-tf tables diff --paired results/smoke/$(SMOKE_TABLE).csv $(SMOKE_OUT)/results/smoke/$(SMOKE_TABLE).csv

smoke-reference: smoke
	cp $(SMOKE_OUT)/results/smoke/$(SMOKE_TABLE).md $(SMOKE_OUT)/results/smoke/$(SMOKE_TABLE).csv \
	    $(SMOKE_OUT)/results/smoke/$(SMOKE_TABLE)_tasks.csv $(SMOKE_OUT)/results/smoke/learning_curves_*.png results/smoke/
	$(BIN)/python -m reptile_tf.runtime > results/smoke/machine.json

# Browse an MLflow store in the MLflow UI at http://$(UI_HOST):$(UI_PORT) (the smoke run's store:
# `make ui UI_STORE=.cache/smoke/results/mlflow/mlflow.db`). Robust on a loaded machine: uvicorn's
# worker health check waits 120 s instead of 5 s (busy workers were killed and restarted in a loop),
# the background job runner (not used here) stays off.
UI_STORE ?= results/mlflow/mlflow.db
UI_HOST ?= 127.0.0.1
UI_PORT ?= 5000
UI_WORKERS ?= 2
.PHONY: ui
ui: venv
	@test -f $(UI_STORE) || { echo "make ui: no MLflow store at $(UI_STORE); run the pipeline first (make reproduce, make smoke) or pass UI_STORE=path/to/mlflow.db" >&2; exit 2; }
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath $(UI_STORE)) \
	    --host $(UI_HOST) --port $(UI_PORT) --workers $(UI_WORKERS) --uvicorn-opts "--timeout-worker-healthcheck 120"

lint: venv
	$(SNAKEMAKE) --lint

clean:
	rm -rf $(VENV) .snakemake
