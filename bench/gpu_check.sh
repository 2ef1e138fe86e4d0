#!/usr/bin/env bash
# One command for a GPU session (`make gpu-check`), on the device machine:
#   build against this machine's python3 and torch, assert the CUDA kernels are in, run the GPU
#   tests (their own process), compute-sanitizer memcheck + racecheck on a small subset, then
#   bench/gpu_suite.py and bench/bench_stream.py. JSON, PNG and logs go to $OUT (default
#   bench/results). Peer wheels in .whl (make gpu-peers, carried along) are installed first.
#   First run on an H200 on 2026-11-30: bench/results/gpu_h200_20261130.md.
#
# Device time is scarce: a lease, when a task draws one, is 15 minutes in all, the machine's start
# (a minute or two) and its idle waits counted, and at most 10 minutes a command. So one call of
# about 8 minutes does what matters most, in this order, and a second, short call on the still-warm
# machine takes what is left (STAGES below):
#   1. build, then the target rows (bench/gpu_suite.py --quick --only targets,lossless_decode,end_to_end:
#      every shape at batch 1 first, beside bf16, DFloat11 and the int4 peers), then the GPU tests, then
#      compute-sanitizer: DEADLINE=470, timeout_s 540;
#   2. STAGES="smollm2 gpu-suite" with what time is left (the SmolLM2 GGUF's second part carried).
# - The whole run ends within DEADLINE seconds (default 470). Each stage gets its own limit or
#   what is left, whichever is less; a stage with under 20 s left is skipped.
# - A stage that fails or overruns is recorded and the next one still runs, so failing tests
#   never cost the benchmarks. Only a failed build stops the run.
# - STAGES picks the stages (default: build targets gpu-tests sanitizer smollm2 gpu-suite streaming; also
#   profile: ncu over bench/profile_kernels.py). A second call on the still-warm machine can run
#   what the first had no time for, e.g. STAGES="smollm2 profile streaming" make gpu-check (the
#   build from the first call is kept there).
# - smollm2 runs once every part of SmolLM2's GGUF is in $CARRY (make gpu-smollm2 here: two
#   parts, one carried by each call); until then it is listed as skipped.
# - $OUT/gpu_check_summary.txt lists every stage's exit status and seconds (124: its time
#   limit); the script exits non-zero if any stage failed or was skipped.
# - compute-sanitizer cannot attach under some runtimes (gVisor): that shows as its stage failing.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-bench/results}
DEADLINE=${DEADLINE:-470}
STAGES=${STAGES:-"build targets gpu-tests sanitizer smollm2 gpu-suite streaming"}
WHEELS=${WHEELS:-.whl}
CARRY=${CARRY:-.carry}
PEER_SITE=${PEER_SITE:-/tmp/site}
mkdir -p "$OUT"
export PATH="$PATH:/usr/local/cuda/bin"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
SUMMARY="$OUT/gpu_check_summary.txt"
: > "$SUMMARY"
FAILED=0

wanted() { [[ " $STAGES " == *" $1 "* ]]; }

# stage NAME LIMIT_S LOG COMMAND...: run within min(LIMIT_S, time left), keep the log, record it.
stage() {
  local name=$1 limit=$2 log=$3
  shift 3
  local left=$((DEADLINE - SECONDS - 10))
  if [ "$left" -lt 20 ]; then
    printf '%-28s skipped: %ss left of DEADLINE=%s\n' "$name" "$((DEADLINE - SECONDS))" "$DEADLINE" | tee -a "$SUMMARY"
    FAILED=1
    return 125
  fi
  [ "$limit" -le "$left" ] || limit=$left
  echo "== $name (limit ${limit}s, log $log)"
  local start=$SECONDS
  timeout --signal=INT --kill-after=10 "$limit" "$@" > "$log" 2>&1
  local rc=$?
  tail -15 "$log"
  printf '%-28s rc=%-3s %4ss%s\n' "$name" "$rc" "$((SECONDS - start))" \
    "$([ "$rc" = 124 ] && echo '  (time limit)')" | tee -a "$SUMMARY"
  [ "$rc" = 0 ] || FAILED=1
  return "$rc"
}

echo "== machine: $($PY -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))' 2>&1)"
# Peer wheels carried in $WHEELS (make gpu-peers, here): DFloat11, torchao, gemlite for gpu_suite.
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  if stage peers 90 "$OUT/gpu_peers.log" "$PY" -m pip install --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target "$PEER_SITE" "$WHEELS"/*.whl; then
    export PYTHONPATH="$PEER_SITE${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
if wanted build; then
  if ! stage build 300 "$OUT/gpu_build.log" env CMAKE_ARGS="-DPYCODEC_CUDA_ARCHS=90" \
      "$PY" -m pip install --no-build-isolation --no-deps -e .; then
    echo "build failed: see $OUT/gpu_build.log"
    exit 2
  fi
fi
if ! stage cuda-kernels-in 60 "$OUT/gpu_cuda_compiled.log" "$PY" -c \
    "from pycodec import _C; assert _C.cuda_compiled(), 'built without CUDA kernels'; print('cuda kernels: yes')"; then
  echo "no CUDA kernels in pycodec._C (STAGES without build needs the build of an earlier call)"
  exit 2
fi

if wanted targets; then
  # The issue's target rows, first: a lease cut short still has them (bench/gpu_suite.py, targets).
  # shellcheck disable=SC2086
  stage targets 200 "$OUT/gpu_targets.log" "$PY" bench/gpu_suite.py --out "$OUT" \
    ${TARGETS_ARGS:---quick --only targets,lossless_decode,end_to_end}
fi

if wanted gpu-tests; then
  # --confcutdir: tests/conftest.py turns on the Triton interpreter for the CPU suite, which the
  # GPU tests must not inherit (seen on an H200: every test errored at setup without it).
  # The v2 kernels' file first (a time limit cuts the last files), the slowest tests listed at the end.
  gpu_test_files=(tests/gpu/test_windowed_cuda.py)
  for f in tests/gpu/test_*.py; do [ "$f" = tests/gpu/test_windowed_cuda.py ] || gpu_test_files+=("$f"); done
  stage gpu-tests 240 "$OUT/gpu_tests.log" "$PY" -m pytest -q -p no:cacheprovider --confcutdir=tests/gpu -rfE \
    --durations=15 "${gpu_test_files[@]}"
fi

if wanted sanitizer; then
  if command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck; do
      stage "sanitizer-$tool" 120 "$OUT/sanitizer_$tool.log" \
        compute-sanitizer --tool "$tool" --error-exitcode 3 "$PY" bench/sanitize_subset.py
    done
  else
    echo "compute-sanitizer not found: skipped" | tee -a "$SUMMARY"
  fi
fi

if wanted smollm2; then
  # SmolLM2's GGUF comes in parts, one a call (make gpu-smollm2): run once all are here.
  complete=0
  if [ -f "$CARRY/smollm2.parts" ]; then
    complete=1
    while read -r part; do [ -f "$CARRY/$part" ] || complete=0; done < "$CARRY/smollm2.parts"
  fi
  if [ "$complete" = 1 ]; then
    stage smollm2 300 "$OUT/gpu_smollm2.log" "$PY" bench/gpu_smollm2.py --parts "$CARRY" --out "$OUT"
  else
    printf '%-28s skipped: the GGUF parts are not all in %s yet\n' smollm2 "$CARRY" | tee -a "$SUMMARY"
  fi
fi

if wanted gpu-suite; then
  # Without the targets section when the targets stage ran it (GPU_SUITE_ARGS overrides).
  if wanted targets; then suite_args=${GPU_SUITE_ARGS:---only settings,decode,lossless_decode,layers}
  else suite_args=${GPU_SUITE_ARGS:-}; fi
  # shellcheck disable=SC2086  # the *_ARGS are word lists on purpose
  stage gpu-suite 300 "$OUT/gpu_suite.log" "$PY" bench/gpu_suite.py --out "$OUT" $suite_args
fi

if wanted profile; then
  # Nsight Compute on one launch of each kernel in question (bench/profile_kernels.py): issue rate,
  # stall reasons, L1 wavefronts, occupancy. Not in the default STAGES: a second call's work.
  if command -v ncu >/dev/null; then
    # Shared memory's wavefronts and bank conflicts beside the issued instructions. A fused rate
    # GEMV warp issues ~26 instructions a table entry (an SM issues four a cycle) and, estimated
    # from its loads' random addresses, needs ~17 shared-memory wavefronts (an SM serves one a
    # cycle): these metrics say which bound holds (README: GPU).
    stage profile 150 "$OUT/ncu_profile.log" ncu --profile-from-start off --csv --page details \
      --log-file "$OUT/ncu_kernels.csv" --section SpeedOfLight --section Occupancy --section LaunchStats \
      --section WarpStateStats --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables \
      --metrics smsp__inst_executed.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,sm__cycles_active.avg \
      "$PY" bench/profile_kernels.py
  else
    printf '%-28s skipped: ncu not found\n' profile | tee -a "$SUMMARY"
  fi
fi

if wanted streaming; then
  # A random 3B Llama, device budget a third of its bf16 size, beside accelerate's offload.
  # shellcheck disable=SC2086
  stage streaming 180 "$OUT/bench_stream.log" "$PY" bench/bench_stream.py --out "$OUT" ${STREAM_ARGS:-}
fi

echo "== summary ($SUMMARY)"
cat "$SUMMARY"
exit "$FAILED"
