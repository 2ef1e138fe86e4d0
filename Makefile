# Two entry points, both self-contained on a fresh machine:
#   make demo   compress SmolLM2-135M-Instruct (lossless and rate 3.5 bits), report size, perplexity, generate
#   make test   the whole test suite (what CI runs)
#   make wheel  a manylinux wheel in wheelhouse/ (make wheel-check: installs it into fresh venvs and tests it)
# On a GPU machine: make gpu-check (bench/gpu_check.sh).
# The first run creates .venv with the CPU build of torch (2.13.0, a local wheel here; a plain
# "torch" would pull a multi-GB CUDA build) and builds the extension (CUDA kernels too when nvcc is on PATH).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
export PATH := $(PATH):/usr/local/cuda/bin
export HF_HUB_OFFLINE := 1

.PHONY: demo test bench setup clean gpu-check gpu-peers gpu-smollm2 wheel wheel-check bench-quick

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

# Benchmarks (pytest-benchmark; bench/conftest.py, README "Benchmarks"). bench: real sizes and weights,
# saved under .benchmarks/ for --benchmark-compare, table + bench/results/bench_cpu_<n>core.{json,png}.
# bench-quick: small sizes, table only (CI runs it through tests/test_bench_quick.py).
# BENCH_ARGS passes options through, e.g. BENCH_ARGS="--benchmark-compare -k decode".
bench: setup
	mkdir -p .benchmarks
	$(BIN)/python -m pytest bench/ -q --bench-full --benchmark-autosave --benchmark-json=.benchmarks/full.json $(BENCH_ARGS)
	$(BIN)/python bench/report.py .benchmarks/full.json

bench-quick: setup
	mkdir -p .benchmarks
	$(BIN)/python -m pytest bench/ -q --benchmark-json=.benchmarks/quick.json $(BENCH_ARGS)
	$(BIN)/python bench/report.py .benchmarks/quick.json

# The wheel: SASS for sm_80/86/89/90 and PTX for sm_90 (newer GPUs JIT it), the CUDA runtime
# linked statically, no libtorch, so one wheel serves every torch. Built without isolation, by
# the pinned scikit-build-core and pybind11 of the dev venv, in a build folder of its own (the
# arch list is a cache variable: sharing the dev build's folder would make every dev rebuild
# compile five targets). auditwheel then retags it manylinux (it grafts nothing: no shared
# library beyond glibc and libstdc++); the tag follows this machine's glibc.
WHEEL_CUDA_ARCHS ?= 80-real;86-real;89-real;90-real;90-virtual

$(BIN)/.wheel-tools: $(BIN)/.ready requirements-wheel.txt
	$(BIN)/pip install -q -r requirements-wheel.txt
	touch $@

wheel: $(BIN)/.wheel-tools
	@command -v nvcc >/dev/null || { echo "make wheel: nvcc not found; a wheel without the CUDA kernels is not built"; exit 1; }
	rm -rf dist wheelhouse
	$(BIN)/python -m build --wheel --no-isolation --outdir dist -C build-dir='build/wheel/{wheel_tag}' \
		-C 'cmake.define.PYCODEC_CUDA_ARCHS=$(WHEEL_CUDA_ARCHS)'
	PATH="$(CURDIR)/$(BIN):$$PATH" auditwheel repair -w wheelhouse dist/pycodec-*.whl
	@ls -l wheelhouse

wheel-check: wheel
	PYCODEC_WHEEL=wheelhouse $(BIN)/python -m pytest -q -m wheel tests/test_wheel.py

# On a GPU machine (its own python3 and torch; no venv): build, GPU tests, compute-sanitizer,
# bench/gpu_suite.py. Results (JSON, PNG, logs) go to $OUT, default bench/results.
gpu-check:
	bash bench/gpu_check.sh

# What the GPU machine lacks (bench/gpu_suite.py's DFloat11, torchao and gemlite rows; gguf for
# bench/gpu_smollm2.py), as wheels for its python3 (3.12: pure Python or abi3) in .whl/, here,
# before a GPU session; carry .whl to the device (the run tool's carry) and gpu_check.sh
# installs them into /tmp/site there.
GPU_PEERS ?= dfloat11==0.5.0 dahuffman==0.4.2 torchao==0.18.0 gguf==0.19.0
gpu-peers: setup
	rm -rf .whl && mkdir -p .whl/src
	$(BIN)/pip download -q --no-deps -d .whl $(GPU_PEERS)
	$(BIN)/pip download -q --no-deps --no-binary=:all: -d .whl/src gemlite==0.6.0.post2
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w .whl .whl/src/gemlite-*.tar.gz
	rm -rf .whl/src
	@ls -l .whl

# SmolLM2's GGUF (98 MB) in two parts and a manifest in .carry/, for two GPU calls to carry one
# part each (64 MiB a call); bench/gpu_smollm2.py --parts .carry joins and checks them there.
gpu-smollm2: setup
	rm -rf .carry
	$(BIN)/python bench/gpu_smollm2.py --split .carry

clean:
	rm -rf $(VENV) build dist wheelhouse
