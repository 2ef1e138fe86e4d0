"""A small run of every v2 kernel, for compute-sanitizer (memcheck, racecheck) in gpu_check.sh.

Decode, fused affine and lossless GEMVs at batch 1, 3 and 16, the tile kernel (shared-memory
phases: racecheck's main subject) and the lossless split decode (exact path) at 40 and 128, on a
few shapes and layouts, including a constant stream, many lanes on a short chunk, and escapes;
lossless weights in the byte split too; fixed12 weights' GEMVs (both routes) and decode. The decode and GEMVs run under each kernel setting whose
shared memory differs (staged decode, x in shared memory, the GEMVs' stream stage, the staged lossless
and affine GEMVs, on and off; stages stored by words, whose last bytes follow a __syncwarp, and by
bytes; blocks of 4, 16 and 1 warps), with lane starts and (the last setting) with the count pass.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pycodec  # noqa: E402
from pycodec import CompressedLinear, CompressionConfig, cuda_ops  # noqa: E402


SETTINGS = ({}, {"warps_per_block": 16},
            {"warps_per_block": 1, "decode_stage_symbols": 0, "gemv_x_shared_bytes": 0, "split_gemv_staged": 0,
             "stream_shared": 0, "stage_word_stores": 0, "affine_gemv_staged": 0})


def main() -> None:
    for i, settings in enumerate(SETTINGS):
        cuda_ops.LANE_STARTS = i + 1 < len(SETTINGS)  # the last without: the kernels' count pass
        with cuda_ops.kernel_settings(**settings):
            run_subset()
    cuda_ops.LANE_STARTS = True
    torch.cuda.synchronize()
    print("sanitize subset: ok")


def run_subset() -> None:
    rng = np.random.default_rng(0)
    for x, kw in ((np.clip(np.round(rng.normal(128, 3, (40, 500))), 0, 255).astype(np.uint8), {}),
                  (np.full((8, 64), 7, np.uint8), {}),
                  (rng.integers(0, 256, 300, dtype=np.uint8), dict(chunk_symbols=100, lanes=32))):
        got = cuda_ops.decode_cuda(pycodec.encode(x, **kw)).cpu().numpy()
        assert np.array_equal(got, x)
    for mode in ("rate", "int", "lossless"):
        w = torch.randn(192, 576) * 0.02
        w[3, 5] = 4.0  # an escape in rate mode
        lin = torch.nn.Linear(576, 192, bias=False)
        lin.weight.data.copy_(w)
        lin = lin.to(torch.bfloat16)
        m = CompressedLinear.from_linear(lin, CompressionConfig(mode=mode, bits=4 if mode == "int" else 3.5)).cuda()
        for batch in (1, 3, 16, 40, 128):
            m(torch.randn(batch, 576, dtype=torch.bfloat16, device="cuda"))
    # lossless rows of odd length: the split decode's chunks start off 16-byte lines (head and tail);
    # each in the byte split too (the kernels' byte instances)
    for split in ("smallest", "byte"):
        lin = torch.nn.Linear(203, 37, bias=False).to(torch.bfloat16)
        m = CompressedLinear.from_linear(lin, CompressionConfig(mode="lossless", chunk_symbols=3 * 203,
                                                                lossless_split=split)).cuda()
        m(torch.randn(40, 203, dtype=torch.bfloat16, device="cuda"))
    lin = torch.nn.Linear(576, 192, bias=False).to(torch.bfloat16)
    m = CompressedLinear.from_linear(lin, CompressionConfig(mode="lossless", lossless_split="byte")).cuda()
    for batch in (1, 3, 16, 40):
        m(torch.randn(batch, 576, dtype=torch.bfloat16, device="cuda"))
    # fixed12: both GEMVs (tensor cores for bf16 x, CUDA cores for fp32 x and with the setting off)
    # with escapes and a bias, on a shape whose rows and columns leave partial row tiles and a tail
    # block, and its decode (batch 40)
    lin = torch.nn.Linear(264, 37).to(torch.bfloat16)
    lin.weight.data[3, 5] = 0.0
    lin.weight.data[4, 6] = 3.0e3
    m = CompressedLinear.from_linear(lin, CompressionConfig(mode="lossless", lossless_split="fixed12")).cuda()
    for batch in (1, 3, 16, 40):
        x = torch.randn(batch, 264, dtype=torch.bfloat16, device="cuda")
        m(x)
        if batch <= 16:
            m.float()(x.float())
            with cuda_ops.kernel_settings(fixed12_tensor_cores=0):
                m(x)


if __name__ == "__main__":
    main()
