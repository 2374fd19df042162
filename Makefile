# Two commands do all the set-up: `make run` and `make test`.
# Both build the virtual environment first: CPU PyTorch from the pinned wheel, then tagflow.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: run test lint bench simulate clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# PyTorch first, so nothing pulls a multi-GB CUDA build as a dependency.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/activate
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -c constraints.txt -e ".[dev]"
	touch $@

## run: start everything (embedded Redis if none configured, API, one worker, seed model)
run: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/tagflow up

## test: the whole test suite against real Redis, SQLite/PostgreSQL and the real model
test: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check service workers tests loadtests

bench: $(VENV)/.installed
	$(BIN)/python loadtests/benchmark.py --dataset ../shared/data/madewithml/dataset.csv

simulate: $(VENV)/.installed
	$(BIN)/python loadtests/simulate_loop.py --dataset ../shared/data/madewithml/dataset.csv

clean:
	rm -rf $(VENV) var
