# cai-stage1 — the two commands a researcher needs are `make pipeline` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
PROFILE ?= cpu-quick
PYTEST_ARGS ?=

.PHONY: setup pipeline test lab clean

# CPU machines get the CPU torch 2.13.0 wheel first: an unpinned torch would pull a
# multi-GB CUDA build. Machines with CUDA get the `gpu` extra (Unsloth, bitsandbytes).
$(STAMP): pyproject.toml constraints-cpu.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  echo "CUDA found: installing the gpu extra"; \
	  $(BIN)/python -m pip install -q -e '.[dev,gpu]'; \
	else \
	  echo "no CUDA: CPU torch 2.13.0 and the CPU version set"; \
	  $(BIN)/python -m pip install -q torch==2.13.0 && \
	  $(BIN)/python -m pip install -q -c constraints-cpu.txt -e '.[dev]'; \
	fi
	@git config filter.nbstripout.clean >/dev/null 2>&1 || $(BIN)/nbstripout --install >/dev/null 2>&1 || true
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

setup: $(STAMP)

pipeline: $(STAMP)
	$(BIN)/cai run --profile $(PROFILE)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
