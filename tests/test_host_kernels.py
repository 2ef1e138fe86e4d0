"""The GPU path's Python glue, run on the CPU through the kernels' host twins.

cuda_ops.host_kernels() sends the v2 ops' bodies to "host_*" in _C: the same argument handling
as the "cuda_*" entry points, with the kernels' emulation behind it. So everything the ops do
before a launch (tables, stream views and addresses, slack, x transposed and padded, batch
padding, escapes in CSR, the dispatch in gpu.linear) is checked here against references, without
a GPU. tests/gpu/ checks the kernels against the emulation on a GPU.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pycodec
from pycodec import CodecError, cuda_ops, gpu
from pycodec.config import CompressionConfig
from pycodec.quant import compress_weight, unpack


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(map(str, key)).encode()))


@pytest.fixture
def host_ops(monkeypatch):
    """gpu.linear's calls to the registered ops go to their bodies, on host kernels."""
    for name in ("windowed_decode", "windowed_gemv_affine", "windowed_gemv_split", "split_merge"):
        monkeypatch.setattr(cuda_ops, name, getattr(cuda_ops, "_" + name))
    with cuda_ops.host_kernels():
        yield


def device_ready(packed: dict, exact_outputs: bool = False):
    """What CompressedLinear holds on a GPU: packed tensors with slack, WeightInfo, kernel buffers."""
    info = gpu.weight_info(packed, exact_outputs)
    kernel = gpu.kernel_buffers(packed, info)
    ready = {n: cuda_ops.with_slack(t) if n in ("symbols", "raw") else t for n, t in packed.items()}
    return ready, kernel, info


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("batch", [1, 3, 8, 16])
@pytest.mark.parametrize("mode", ["int4-g64", "int3-sym", "rate"])
def test_linear_affine_fused_matches_reference(host_ops, mode, batch):
    rng = rng_for("affine", mode, batch)
    n, k = 48, 384
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.02
    if mode == "int4-g64":
        cfg = CompressionConfig(mode="int", bits=4, group_size=64)
    elif mode == "int3-sym":
        cfg = CompressionConfig(mode="int", bits=3, group_size=128, symmetric=True)
    else:
        w[rng.integers(0, n, 25), rng.integers(0, k, 25)] = 4.0  # outliers: escapes in the epilogue
        cfg = CompressionConfig(mode="rate", bits=3.5, chunk_symbols=k if batch > 8 else None)
    packed, _ = compress_weight(torch.from_numpy(w), cfg)
    if mode == "rate":
        assert packed["escape_index"].numel() > 0
    ready, kernel, info = device_ready(packed)
    assert info.version == 2 and cuda_ops.gemv_supported(list(info.layout), n, k, batch)
    x = torch.from_numpy(rng.standard_normal((batch, k)).astype(np.float32))
    bias = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
    y = gpu.linear(x, ready, kernel, bias, info)
    ref = x.double() @ unpack(packed).double().T + bias.double()
    assert y.shape == (batch, n) and y.dtype == torch.float32
    assert rel_error(y, ref) < 1e-5


def test_linear_keeps_leading_dims_and_input_dtype(host_ops):
    rng = rng_for("lead")
    w = torch.from_numpy(rng.standard_normal((32, 128)).astype(np.float32) * 0.02)
    packed, _ = compress_weight(w, CompressionConfig(mode="int", bits=4, group_size=64))
    ready, kernel, info = device_ready(packed)
    x = torch.from_numpy(rng.standard_normal((2, 3, 128)).astype(np.float32)).to(torch.bfloat16)
    y = gpu.linear(x, ready, kernel, None, info)
    ref = x.double() @ unpack(packed).double().T
    assert y.shape == (2, 3, 32) and y.dtype == torch.bfloat16
    assert rel_error(y, ref) < 1e-2  # bf16 output rounding


@pytest.mark.parametrize("batch", [1, 4, 16])
def test_linear_split_fused_matches_reference(host_ops, batch):
    rng = rng_for("split", batch)
    n, k = 40, 576
    w = torch.from_numpy(rng.standard_normal((n, k)).astype(np.float32) * 0.03).to(torch.bfloat16)
    packed, _ = compress_weight(w, CompressionConfig(mode="lossless"))
    ready, kernel, info = device_ready(packed)
    assert info.kind == 2 and cuda_ops.gemv_supported(list(info.layout), n, k, batch)
    x = torch.from_numpy(rng.standard_normal((batch, k)).astype(np.float32))
    y = gpu.linear(x, ready, kernel, None, info)
    assert rel_error(y, x.double() @ w.double().T) < 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_linear_split_exact_outputs_is_nn_linear_bit_for_bit(host_ops, dtype):
    """exact_outputs (and float16, which the fused GEMV does not take): decode, merge, F.linear."""
    rng = rng_for("exact", str(dtype))
    w = torch.from_numpy(rng.standard_normal((24, 256)).astype(np.float32) * 0.05).to(dtype)
    packed, _ = compress_weight(w, CompressionConfig(mode="lossless"))
    ready, kernel, info = device_ready(packed, exact_outputs=True)
    x = torch.from_numpy(rng.standard_normal((5, 256)).astype(np.float32)).to(dtype)
    bias = torch.randn(24).to(dtype)
    y = gpu.linear(x, ready, kernel, bias, info)
    assert torch.equal(y, F.linear(x, w) + bias)


def test_decode_and_merge_ops_rebuild_the_weight_bits():
    rng = rng_for("merge")
    w = torch.from_numpy(rng.standard_normal((64, 200)).astype(np.float32)).to(torch.bfloat16)
    w.view(torch.int16)[0, :4] = torch.tensor([0x7F80, -0x0080, 0x7FC1, 0x0001], dtype=torch.int16)  # inf, -inf, nan, subnormal
    packed, _ = compress_weight(w, CompressionConfig(mode="lossless"))
    ready, kernel, info = device_ready(packed)
    with cuda_ops.host_kernels():
        q = cuda_ops._windowed_decode(ready["symbols"], kernel["table"], list(info.layout))
        bits = cuda_ops._split_merge(q, kernel["value16"], ready["raw"], info.top)
    assert np.array_equal(q.numpy(), pycodec.decode(packed["symbols"].numpy()).reshape(-1))
    assert torch.equal(bits, w.view(torch.int16).reshape(-1))


def test_host_ops_refuse_what_the_cuda_ops_refuse():
    w = torch.randn(16, 64)
    packed, _ = compress_weight(w, CompressionConfig(mode="int", bits=4, group_size=64))
    ready, kernel, info = device_ready(packed)
    layout = list(info.layout)
    with cuda_ops.host_kernels():
        with pytest.raises(CodecError, match="readable bytes"):  # no slack after the stream
            cuda_ops._windowed_decode(ready["symbols"].clone(), kernel["table"], layout)
        with pytest.raises(CodecError, match="tables"):
            cuda_ops._windowed_decode(ready["symbols"], kernel["table"][:-1], layout)
        bad = list(layout)
        bad[6] += 1  # a chunk count that does not match the symbols: refused by the shared launch checks
        with pytest.raises(CodecError, match="invalid argument"):
            cuda_ops._windowed_decode(ready["symbols"], kernel["table"], bad)
    with pytest.raises(CodecError, match="CUDA"):  # outside host_kernels(), CPU tensors are refused
        cuda_ops._windowed_decode(ready["symbols"], kernel["table"], layout)
