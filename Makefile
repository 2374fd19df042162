# Two commands do all the set-up: `make run` and `make test`.
# Both build the virtual environment first: CPU PyTorch from the pinned wheel, then tagflow.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
# Where pip finds PyTorch. Empty: the configured index (on the project's machines, the CPU
# wheel). On a machine whose index serves the CUDA build (standard PyPI on Linux):
#   make run TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: run test lint bench simulate clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# PyTorch first, so nothing pulls a multi-GB CUDA build as a dependency.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/activate
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -c constraints.txt -e ".[dev]"
	touch $@

## run: start everything (embedded Redis if none configured, API, one worker, seed model)
run: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/tagflow up

# promtool, for the alert-rule tests: the machine's if it has one, else unpacked from Debian's
# prometheus package into the venv (downloaded from the Debian archive; nothing is installed).
$(BIN)/promtool: | $(BIN)/activate
	@if command -v promtool >/dev/null; then ln -sf "$$(command -v promtool)" $@; \
	else tmp=$$(mktemp -d); \
	  (cd $$tmp && apt-get download prometheus >/dev/null 2>&1) \
	  && dpkg -x $$tmp/prometheus_*.deb $$tmp/root && cp $$tmp/root/usr/bin/promtool $@; \
	  rm -rf $$tmp; fi; \
	test -x $@ || echo "promtool unavailable: tests/test_alerts.py will fail (see README)"

## test: the whole test suite against real Redis, SQLite/PostgreSQL and the real model
test: $(VENV)/.installed $(BIN)/promtool
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check service workers tests loadtests

bench: $(VENV)/.installed
	$(BIN)/python loadtests/benchmark.py --dataset ../shared/data/madewithml/dataset.csv

simulate: $(VENV)/.installed
	$(BIN)/python loadtests/simulate_loop.py --dataset ../shared/data/madewithml/dataset.csv

clean:
	rm -rf $(VENV) var
