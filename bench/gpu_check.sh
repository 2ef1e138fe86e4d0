#!/usr/bin/env bash
# One command for a GPU session (`make gpu-check`), on the device machine:
#   build against this machine's python3 and torch, assert the CUDA kernels are in, run the GPU
#   tests (their own process), compute-sanitizer memcheck + racecheck on a small subset, then
#   bench/gpu_suite.py. JSON and PNG go to $OUT (default bench/results). Budgeted for under 9 minutes; not yet run on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PATH="$PATH:/usr/local/cuda/bin"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET

echo "== build ($($PY -c 'import torch; print(torch.__version__)'))"
CMAKE_ARGS="-DPYCODEC_CUDA_ARCHS=90" $PY -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -3
$PY -c "from pycodec import _C; assert _C.cuda_compiled(), 'pycodec._C was built without CUDA kernels'; print('cuda kernels: yes')"

echo "== GPU tests"
$PY -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tee "$OUT/gpu_tests.log" | tail -15

echo "== compute-sanitizer"
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    compute-sanitizer --tool "$tool" --error-exitcode 3 $PY bench/sanitize_subset.py 2>&1 \
      | tee "$OUT/sanitizer_$tool.log" | tail -4
  done
else
  echo "compute-sanitizer not found: skipped" | tee "$OUT/sanitizer_missing.log"
fi

echo "== benchmarks"
$PY bench/gpu_suite.py --out "$OUT" ${GPU_SUITE_ARGS:-}

echo "== streaming (a random 3B Llama, device budget a third of its bf16 size, beside accelerate's offload)"
$PY bench/bench_stream.py --out "$OUT" ${STREAM_ARGS:-}
