# Two entry points (see README): `make reproduce` and `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PRESET ?= quick
CORES ?= all
# The offline mirror beside the project (as on CI) is used when present; otherwise canonical URLs.
export REPTILE_TF_MIRROR ?= $(wildcard $(abspath ../shared/data))

.PHONY: venv test reproduce smoke lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Reinstall only when the project's dependencies change.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(BIN)/python -m pytest

reproduce: venv
	$(BIN)/snakemake --cores $(CORES) --rerun-incomplete --configfile workflow/config/$(PRESET).yaml

smoke: venv
	$(BIN)/snakemake --cores $(CORES) --rerun-incomplete --configfile workflow/config/smoke.yaml

lint: venv
	$(BIN)/snakemake --lint

clean:
	rm -rf $(VENV) .snakemake
