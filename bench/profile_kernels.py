"""One launch of each GPU kernel whose speed is in question, for Nsight Compute (ncu).

    ncu --profile-from-start off --csv --page details --log-file OUT/ncu_kernels.csv \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        --section MemoryWorkloadAnalysis python3 bench/profile_kernels.py

(`STAGES=profile make gpu-check` runs exactly that.) Layers are built and every kernel is run
once unprofiled first (module loading, shared-memory opt-in, autotuning); then the profiled
region (torch.cuda.profiler.start/stop) launches each kernel once, in the order printed. On the
first H200 run (2026-11-30) ncu was a call of its own; this puts the counters that say why a
kernel is slow (issue rate, stall reasons, L1 wavefronts, occupancy) in the same call as the
timings.
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def launches() -> list[tuple[str, object]]:
    """(what, a zero-argument call that launches it) in the profiled order."""
    from pycodec import CompressedLinear, CompressionConfig, cuda_ops, gpu

    torch.manual_seed(0)
    x1 = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    dense = torch.nn.Linear(4096, 4096, bias=False, dtype=torch.bfloat16)
    dense.weight.data.normal_(0, 0.02)
    lossless = CompressedLinear.from_linear(dense, CompressionConfig(mode="lossless")).cuda()
    lossless_byte = CompressedLinear.from_linear(dense, CompressionConfig(mode="lossless", lossless_split="byte")).cuda()
    lossless_fixed = CompressedLinear.from_linear(dense, CompressionConfig(mode="lossless", lossless_split="fixed12")).cuda()
    rate = CompressedLinear.from_linear(dense, CompressionConfig(mode="rate", bits=3.5)).cuda()
    bf16 = dense.cuda()
    wide = torch.nn.Linear(14336, 4096, bias=False, dtype=torch.bfloat16)
    wide.weight.data.normal_(0, 0.02)
    exact = CompressedLinear.from_linear(wide, CompressionConfig(mode="lossless")).cuda()
    packed, kernel = exact.packed(), dict(zip(gpu.KERNEL_BUFFERS, exact.kernel()))
    exact_byte = CompressedLinear.from_linear(wide, CompressionConfig(mode="lossless", lossless_split="byte")).cuda()
    byte_packed, byte_kernel = exact_byte.packed(), dict(zip(gpu.KERNEL_BUFFERS, exact_byte.kernel()))
    wide_fixed = CompressedLinear.from_linear(wide, CompressionConfig(mode="lossless", lossless_split="fixed12")).cuda()
    x_wide = torch.randn(1, 14336, device="cuda", dtype=torch.bfloat16)

    def with_settings(fn, **settings):
        def run():
            with cuda_ops.kernel_settings(**settings):
                return fn()
        return run

    def two_kernels():
        q = cuda_ops.windowed_decode(packed["symbols"], kernel["table"], list(exact._info.layout))
        return cuda_ops.split_merge(q, kernel["value16"], packed["raw"], exact._info.top)

    return [
        ("bf16 cuBLAS, 4096x4096, batch 1", lambda: bf16(x1)),
        ("lossless staged GEMV, 4096x4096, batch 1", with_settings(lambda: lossless(x1), split_gemv_staged=1)),
        ("lossless fused GEMV, 4096x4096, batch 1", with_settings(lambda: lossless(x1), split_gemv_staged=0)),
        ("lossless byte split staged GEMV, 4096x4096, batch 1", lambda: lossless_byte(x1)),
        ("lossless byte split staged GEMV, stage stored byte by byte, 4096x4096, batch 1",
         with_settings(lambda: lossless_byte(x1), stage_word_stores=0)),
        ("lossless fixed12 tensor-core GEMV, 4096x4096, batch 1", lambda: lossless_fixed(x1)),
        ("lossless fixed12 tensor-core GEMV, 4096x14336, batch 1", lambda: wide_fixed(x_wide)),
        ("lossless fixed12 CUDA-core GEMV, 4096x14336, batch 1",
         with_settings(lambda: wide_fixed(x_wide), fixed12_tensor_cores=0)),
        ("rate 3.5 staged GEMV, 4096x4096, batch 1", lambda: rate(x1)),
        ("rate 3.5 fused GEMV, 4096x4096, batch 1", with_settings(lambda: rate(x1), affine_gemv_staged=0)),
        ("rate 3.5 fused GEMV, stream read in place, 4096x4096, batch 1",
         with_settings(lambda: rate(x1), stream_shared=0, affine_gemv_staged=0)),
        ("lossless decode to bf16 in one kernel, 4096x14336",
         lambda: gpu.dense_weight(packed, kernel, exact._info, torch.device("cuda"))),
        ("lossless decode + split_merge (two kernels), 4096x14336", two_kernels),
        ("lossless byte split decode to bf16 in one kernel, 4096x14336",
         lambda: gpu.dense_weight(byte_packed, byte_kernel, exact_byte._info, torch.device("cuda"))),
        ("lossless fixed12 decode to bf16, 4096x14336",
         lambda: gpu.dense_weight(wide_fixed.packed(), dict(zip(gpu.KERNEL_BUFFERS, wide_fixed.kernel())),
                                  wide_fixed._info, torch.device("cuda"))),
    ]


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    steps = launches()
    with torch.no_grad():
        for _, run in steps:  # unprofiled: loading, opt-ins, the first launch's costs
            run()
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        for i, (what, run) in enumerate(steps):
            print(f"profiled step {i}: {what}", flush=True)
            run()
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
