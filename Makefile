# Two entry points, both self-contained on a fresh machine:
#   make demo   compress SmolLM2-135M (lossless and rate 3.5 bits), report size, perplexity, generate
#   make test   the whole test suite (what CI runs)
# On a GPU machine: make gpu-check (bench/gpu_check.sh).
# The first run creates .venv with the CPU build of torch (2.13.0, a local wheel here; a plain
# "torch" would pull a multi-GB CUDA build) and builds the extension (CUDA kernels too when nvcc is on PATH).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
export PATH := $(PATH):/usr/local/cuda/bin
export HF_HUB_OFFLINE := 1

.PHONY: demo test bench setup clean gpu-check

$(BIN)/.ready: requirements-dev.txt requirements-data.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -r requirements-data.txt
	touch $@

# The extension, rebuilt whenever a native source or the build files change.
NATIVE := $(shell find csrc -name '*.h' -o -name '*.cuh' -o -name '*.cpp' -o -name '*.cu') pyproject.toml CMakeLists.txt
$(BIN)/.built: $(BIN)/.ready $(NATIVE)
	$(BIN)/pip install -q --no-build-isolation -e .
	touch $@

setup: $(BIN)/.built

demo: setup
	$(BIN)/pycodec demo

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/bench_codec.py

# On a GPU machine (its own python3 and torch; no venv): build, GPU tests, compute-sanitizer,
# bench/gpu_suite.py. Results (JSON, PNG, logs) go to $OUT, default bench/results.
gpu-check:
	bash bench/gpu_check.sh

clean:
	rm -rf $(VENV) build
