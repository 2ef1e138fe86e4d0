"""GPU: CompressedLinear's fused decode + GEMV at batch 1 beside F.linear (cuBLAS) on the bf16 weight.

Batch 1 is where decoding from the coded bytes pays: the GEMV reads every weight once, so
fewer bytes read is less time. Layers (out x in, N(0, 0.02) in bf16):
  quick  4096x4096
  full   4096x4096, 14336x4096, 4096x14336 (Llama-3-8B's attention and FFN shapes)
Methods: F.linear bf16 (the baseline), pycodec rate 3.5 bits, pycodec lossless (both through the
fused GEMV; pycodec/gpu.py dispatches). bench/gpu_suite.py keeps the wider sweep (batches, decode
layouts, peers, CUDA-graph times).

Timing: a round is CALLS back-to-back launches then one synchronize, and pytest-benchmark divides
by the calls (``iterations``), so a time is one call's share of a stream of launches, the
launch overhead included and the host-device sync amortized.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

if not torch.cuda.is_available():
    pytest.skip("no CUDA device (torch.cuda.is_available() is False): GPU benchmarks need one",
                allow_module_level=True)

from pycodec import CompressedLinear, CompressionConfig, _C  # noqa: E402

if not _C.cuda_compiled():
    pytest.skip("this pycodec build has no CUDA kernels (nvcc was not on PATH at build time)", allow_module_level=True)

QUICK_SHAPES = [(4096, 4096)]
FULL_SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336)]
METHODS = {"pycodec rate 3.5": CompressionConfig(mode="rate", bits=3.5),
           "pycodec lossless": CompressionConfig(mode="lossless")}
CALLS = 50          # launches per round (the sync at the end of a round is shared by these)
ROUNDS = {False: 5, True: 20}
RATE_REL_ERR = 0.25  # weight SQNR ~19 dB: ~11% relative output error
LOSSLESS_REL_ERR = 1e-2  # same weights, another accumulation order than cuBLAS

_LAYERS: dict = {}


def pytest_generate_tests(metafunc):
    if "shape" in metafunc.fixturenames:
        shapes = FULL_SHAPES if metafunc.config.getoption("bench_full") else QUICK_SHAPES
        metafunc.parametrize("shape", shapes, ids=[f"{o}x{i}" for o, i in shapes])
        metafunc.parametrize("method", ["F.linear bf16", *METHODS])


def layers_for(shape) -> dict:
    if shape not in _LAYERS:
        out_f, in_f = shape
        dense = torch.nn.Linear(in_f, out_f, bias=False, dtype=torch.bfloat16)
        with torch.no_grad():
            dense.weight.copy_(torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(0)) * 0.02)
        mods = {m: CompressedLinear.from_linear(dense, c).cuda() for m, c in METHODS.items()}  # compressed on the host
        _LAYERS[shape] = {"dense": dense.weight.detach().cuda(), **mods}
    return _LAYERS[shape]


def timed_stream(fn, *args):
    """fn(*args), synchronizing after every CALLS-th call: one pytest-benchmark round of CALLS iterations."""
    count = 0

    def step():
        nonlocal count
        y = fn(*args)
        count += 1
        if count % CALLS == 0:
            torch.cuda.synchronize()
        return y

    return step


def test_forward_batch1(benchmark, mode, shape, method):
    mods = layers_for(shape)
    w = mods["dense"]
    x = torch.randn(1, shape[1], generator=torch.Generator().manual_seed(1)).to("cuda", torch.bfloat16)
    out_f, in_f = shape
    benchmark.group = f"gpu {out_f}x{in_f} batch 1 bf16"  # before timing: pytest-benchmark reads it when the run starts
    fn, args = (F.linear, (x, w)) if method == "F.linear bf16" else (mods[method], (x,))
    with torch.no_grad():
        ref = F.linear(x, w).float()
        torch.cuda.synchronize()
        y = benchmark.pedantic(timed_stream(fn, *args), rounds=ROUNDS[mode.full], warmup_rounds=1, iterations=CALLS)
        torch.cuda.synchronize()
    stored = w.numel() * w.element_size() if method == "F.linear bf16" else mods[method].compressed_bytes()
    rel_err = float((y.float() - ref).norm() / ref.norm())
    benchmark.extra_info.update(kind="gpu", op="forward", method=method, shape=[out_f, in_f], batch=1, dtype="bf16",
                                device=torch.cuda.get_device_name(0), weights=out_f * in_f, bytes=stored,
                                bits_per_weight=8 * stored / (out_f * in_f), rel_err_vs_dense=rel_err,
                                baseline=method == "F.linear bf16", calls_per_round=CALLS)
    limit = RATE_REL_ERR if "rate" in method else LOSSLESS_REL_ERR
    assert rel_err < limit, f"{method} at {out_f}x{in_f}: relative error {rel_err:.2e} vs F.linear"
