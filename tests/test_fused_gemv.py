"""Fused decode + dequant + GEMV (pycodec::gemv_affine): chunk choice on the CPU, numerics on a GPU."""
from __future__ import annotations

import functools

import pytest
import torch

import pycodec
from pycodec import _C, cuda_ops
from pycodec.quant import RATE_ZERO, _row_chunk_symbols, dequantize_affine, pack_affine

gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
needs_kernels = pytest.mark.skipif(not _C.cuda_compiled(), reason="pycodec._C was built without CUDA kernels")

SHAPES = [(4096, 4096), (11008, 4096), (576, 1536)]
MODES = ["int64", "int128", "rate"]
CODERS = ["huffman", "rans"]


# ---------------------------------------------------------------------------- CPU

@pytest.mark.parametrize("coder", CODERS)
@pytest.mark.parametrize("k", [576, 4096, 11008])
def test_chunk_choice_whole_rows(coder, k):
    default = int(_C.DEFAULT_CHUNK_SYMBOLS[coder])
    chunk = _row_chunk_symbols(k, coder, None)
    assert chunk == k * max(1, round(default / k))
    assert chunk % k == 0 and chunk % 32 == 0 and chunk <= _C.MAX_CHUNK_SYMBOLS
    assert _row_chunk_symbols(k, coder, 4096) == 4096  # an explicit choice wins


@pytest.mark.parametrize("coder", CODERS)
def test_chunk_choice_default_when_k_not_aligned(coder):
    assert _row_chunk_symbols(100, coder, None) is None
    q = torch.full((3, 100), 7, dtype=torch.uint8)
    packed = pack_affine(q, torch.ones(3, 1), torch.zeros(3, 1), 100, torch.bfloat16, coder=coder)
    assert _C.info(packed["symbols"].numpy())["chunk_symbols"] == int(_C.DEFAULT_CHUNK_SYMBOLS[coder])


@pytest.mark.parametrize("coder", CODERS)
def test_pack_affine_stream_has_row_chunks(coder):
    q = torch.randint(0, 16, (5, 576), dtype=torch.uint8)
    packed = pack_affine(q, torch.ones(5, 9), torch.zeros(5, 9), 64, torch.bfloat16, coder=coder)
    info = _C.info(packed["symbols"].numpy())
    assert info["chunk_symbols"] % 576 == 0


def test_supported_rules():
    ok = cuda_ops.gemv_affine_supported
    assert ok(4096 * 4096, 8 * 4096, 128, 4096, 4096, 1)
    assert ok(576 * 1536, 21 * 1536, 1536, 576, 1536, 8)
    assert not ok(96 * 8, 96 * 8, 96, 8, 96, 1)            # K % 64 != 0
    assert not ok(4096 * 4096, 32768 + 32, 128, 4096, 4096, 1)  # chunks not whole rows
    assert not ok(4096 * 4096, 8 * 4096, 128, 4096, 4096, 9)    # batch > 8
    assert not ok(4096 * 4096, 8 * 4096, 32, 4096, 4096, 1)     # group_size < 64


def test_fake_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        y = torch.ops.pycodec.gemv_affine(torch.empty(4, dtype=torch.int32), torch.empty(50, dtype=torch.int32),
                                          torch.empty(4096, dtype=torch.int32), 1, 64 * 128, 2 * 128,
                                          torch.empty(64, 1, dtype=torch.float16),
                                          torch.empty(1, 1, dtype=torch.float16), 128,
                                          torch.empty(3, 128, dtype=torch.bfloat16))
        assert y.shape == (3, 64) and y.dtype == torch.float32


# ---------------------------------------------------------------------------- GPU

@functools.lru_cache(maxsize=2)
def _packed(coder: str, mode: str, n: int, k: int):
    """q, scale, zero and the packed weight (default chunk choice: whole rows)."""
    g = torch.Generator().manual_seed(n * 7 + k + len(mode) + len(coder))
    if mode == "rate":
        group_size = k
        q = (torch.randn(n, k, generator=g) * 6).round().clamp(-127, 127).add(RATE_ZERO).to(torch.uint8)
        scale = (torch.rand(n, 1, generator=g) * 0.02 + 0.001).half()
        zero = torch.full((1, 1), float(RATE_ZERO), dtype=torch.float16)
    else:
        group_size = int(mode[3:])
        groups = k // group_size
        q = (torch.randn(n, k, generator=g) * 3 + 8).round().clamp(0, 15).to(torch.uint8)
        scale = (torch.rand(n, groups, generator=g) * 0.05 + 0.001).half()
        zero = torch.randint(0, 16, (n, groups), generator=g).half()
    packed = pack_affine(q, scale, zero, group_size, torch.bfloat16, coder=coder)
    return q, scale, zero, group_size, packed


def _fused(packed: dict, x: torch.Tensor, group_size: int) -> torch.Tensor:
    from pycodec.gpu import _stream_view

    v = _stream_view(packed["symbols"])
    return torch.ops.pycodec.gemv_affine(v["index"], v["payload"], v["table"], v["coder"], v["n_symbols"],
                                         v["chunk_symbols"], packed["scale"], packed["zero"], group_size, x)


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


@gpu
@needs_gpu
@needs_kernels
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("coder", CODERS)
def test_fused_matches_reference(coder, mode, shape):
    n, k = shape
    q, scale, zero, group_size, packed = _packed(coder, mode, n, k)
    dev = {name: t.cuda() for name, t in packed.items()}
    w = dequantize_affine(q.cuda(), scale.cuda(), zero.cuda(), group_size)  # fp32 reference weight
    v_chunk = _C.info(packed["symbols"].numpy())["chunk_symbols"]
    assert v_chunk % k == 0
    for batch in range(1, 9):
        x = torch.randn(batch, k, device="cuda").to(torch.bfloat16)
        assert cuda_ops.gemv_affine_supported(n * k, v_chunk, group_size, n, k, batch)
        y = _fused(dev, x, group_size)
        ref = x.float() @ w.T
        assert y.shape == (batch, n) and y.dtype == torch.float32
        err = _rel_err(y, ref)
        assert err < 1e-3, f"batch {batch}: relative error {err:.3g}"
        # Every row written (torch.empty would leave garbage): per-row error bounded too.
        row_err = ((y - ref).abs().amax(dim=0) / ref.abs().amax(dim=0).clamp_min(1e-6)).max().item()
        assert row_err < 1e-2, f"batch {batch}: worst row {row_err:.3g}"


@gpu
@needs_gpu
@needs_kernels
@pytest.mark.parametrize("coder", CODERS)
def test_compressed_linear_uses_fused_with_escapes(coder, monkeypatch):
    pytest.importorskip("triton")
    from pycodec import gpu as gpu_mod

    n, k = 576, 1536
    q, scale, zero, group_size, packed = _packed(coder, "rate", n, k)
    esc_idx = torch.tensor([0, 5, k + 7, n * k - 1], dtype=torch.int64)
    q = q.clone()
    q.view(-1)[esc_idx] = RATE_ZERO
    esc_val = torch.tensor([0.5, -1.25, 2.0, 0.75], dtype=torch.float32)
    packed = pack_affine(q, scale, zero, group_size, torch.bfloat16, esc_idx, esc_val, coder=coder)
    dev = {name: t.cuda() for name, t in packed.items()}
    w = dequantize_affine(q, scale, zero, group_size, esc_idx, esc_val).cuda()
    calls = []
    real = gpu_mod.gemv_affine
    monkeypatch.setattr(gpu_mod, "gemv_affine", lambda *a: calls.append(1) or real(*a))
    for batch in (1, 8):
        x = torch.randn(batch, k, device="cuda").to(torch.bfloat16)
        y = gpu_mod.compressed_linear(x, dev, None)
        assert y.dtype == torch.bfloat16 and y.shape == (batch, n)
        assert _rel_err(y.float(), x.float() @ w.T) < 1e-2  # bf16 output rounding dominates
    assert len(calls) == 2


@gpu
@needs_gpu
@needs_kernels
@pytest.mark.parametrize("coder", CODERS)
def test_fallback_when_k_not_multiple_of_64(coder, monkeypatch):
    pytest.importorskip("triton")
    from pycodec import gpu as gpu_mod

    n, k, group_size = 256, 96 * 3, 96  # K % 64 != 0 (K % 32 == 0: chunks are still whole rows)
    g = torch.Generator().manual_seed(5)
    q = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    scale = (torch.rand(n, k // group_size, generator=g) * 0.05 + 0.001).half()
    zero = torch.randint(0, 16, (n, k // group_size), generator=g).half()
    packed = pack_affine(q, scale, zero, group_size, torch.bfloat16, coder=coder)
    dev = {name: t.cuda() for name, t in packed.items()}
    monkeypatch.setattr(gpu_mod, "gemv_affine", lambda *a: pytest.fail("fused path taken for K % 64 != 0"))
    x = torch.randn(2, k, device="cuda").to(torch.bfloat16)
    y = gpu_mod.compressed_linear(x, dev, None)
    ref = x.float() @ dequantize_affine(q, scale, zero, group_size).cuda().T
    assert _rel_err(y.float(), ref) < 1e-2
    with pytest.raises(pycodec.CodecError, match="unsupported"):
        _fused(dev, x, group_size)


@gpu
@needs_gpu
@needs_kernels
def test_fused_under_torch_compile():
    n, k = 576, 1536
    q, scale, zero, group_size, packed = _packed("rans", "int128", n, k)
    dev = {name: t.cuda() for name, t in packed.items()}
    from pycodec.gpu import _stream_view

    v = _stream_view(dev["symbols"])
    c, ns, cs = v["coder"], v["n_symbols"], v["chunk_symbols"]

    def f(index, payload, table, s, z, x):
        return torch.ops.pycodec.gemv_affine(index, payload, table, c, ns, cs, s, z, group_size, x)

    x = torch.randn(4, k, device="cuda").to(torch.bfloat16)
    args = (v["index"], v["payload"], v["table"], dev["scale"], dev["zero"], x)
    got = torch.compile(f, fullgraph=True)(*args)
    torch.testing.assert_close(got, f(*args), rtol=0, atol=0)
