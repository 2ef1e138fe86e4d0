"""Triton dequant-matmul kernels against their PyTorch references, on CPU via the interpreter.

TRITON_INTERPRET must be set before triton (and pycodec_triton) is imported: triton.jit
chooses interpreter or compiler when the kernel is decorated.  The interpreter computes bf16
tl.dot incorrectly, so activations here are fp32 (scale / zero stay fp16 as in pycodec).
Shapes are small because every program runs as NumPy on the host.
"""
from __future__ import annotations

import os
import zlib

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

import pycodec_triton  # noqa: E402
from pycodec_triton.affine_gemv import affine_gemv, affine_gemv_reference  # noqa: E402
from pycodec_triton.affine_matmul import affine_matmul, affine_matmul_reference  # noqa: E402
from pycodec_triton.bf16_matmul import (bf16_matmul, bf16_matmul_reference, bf16_reconstruct,  # noqa: E402
                                        bf16_reconstruct_reference)

TOL = 1e-4


@pytest.fixture
def gen(request):
    # Fresh, reproducible inputs per test (seeded by the test id, not shared state).
    g = torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))
    return g


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """The larger of ||err|| / ||ref|| and max|err| / max|ref|: an all-zero output scores 1."""
    err, ref = (y.float() - ref.float()), ref.float()
    return max(err.norm().item() / max(ref.norm().item(), 1e-30),
               err.abs().max().item() / max(ref.abs().max().item(), 1e-30))


def make_affine(gen, n, k, group_size, *, zero_shape=None, sdtype=torch.float16):
    g = k // group_size
    q = torch.randint(0, 256, (n, k), dtype=torch.uint8, generator=gen)
    scale = (torch.rand(n, g, generator=gen) * 0.02 + 1e-3).to(sdtype)
    zshape = zero_shape or (n, g)
    zero = torch.randint(0, 256, zshape, generator=gen).to(sdtype)
    return q, scale, zero


def test_available_under_interpreter():
    assert pycodec_triton.available()


# ---------------------------------------------------------------- affine_matmul

@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("n,k", [(32, 64), (48, 128)])
@pytest.mark.parametrize("gs", [32, 64, "K"])
def test_affine_matmul_matches_reference(gen, m, n, k, gs):
    gs = k if gs == "K" else gs
    q, scale, zero = make_affine(gen, n, k, gs)
    x = torch.randn(m, k, generator=gen)
    y = affine_matmul(x, q, scale, zero, gs)
    ref = affine_matmul_reference(x, q, scale, zero, gs)
    assert y.shape == (m, n) and y.dtype == torch.float32
    assert rel_err(y, ref) < TOL


@pytest.mark.parametrize("n,k,gs,block_k", [
    (48, 96, 48, 64),   # block_k shrinks to 16 to stay inside a group
    (32, 72, 24, 64),   # no power-of-two divisor >= 16: per-element scale gather, K tail
    (32, 128, 32, 16),  # several blocks per group
])
def test_affine_matmul_group_geometry(gen, n, k, gs, block_k):
    q, scale, zero = make_affine(gen, n, k, gs)
    x = torch.randn(5, k, generator=gen)
    y = affine_matmul(x, q, scale, zero, gs, block_k=block_k, block_n=16)
    assert rel_err(y, affine_matmul_reference(x, q, scale, zero, gs)) < TOL


def test_affine_matmul_leading_dims_broadcast_zero_fp32_meta(gen):
    n, k = 48, 128
    q, scale, zero = make_affine(gen, n, k, k, zero_shape=(1, 1), sdtype=torch.float32)
    x = torch.randn(2, 3, k, generator=gen)
    y = affine_matmul(x, q, scale, zero, k)
    assert y.shape == (2, 3, n)
    assert rel_err(y, affine_matmul_reference(x, q, scale, zero, k)) < TOL


def test_affine_matmul_noncontiguous_x_and_out_dtype(gen):
    n, k = 32, 64
    q, scale, zero = make_affine(gen, n, k, 32)
    x = torch.randn(k, 4, generator=gen).t()  # strided rows
    y = affine_matmul(x, q, scale, zero, 32, out_dtype=torch.float16)
    assert y.dtype == torch.float16
    ref = affine_matmul_reference(x, q, scale, zero, 32, out_dtype=torch.float32)
    assert rel_err(y, ref) < 2e-3  # fp16 output rounding


# ---------------------------------------------------------------- affine_gemv

@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("n,k,gs", [(32, 64, 32), (48, 128, 64), (48, 128, 128), (32, 72, 24)])
@pytest.mark.parametrize("split_k", [1, 2])
def test_affine_gemv_matches_reference(gen, m, n, k, gs, split_k):
    q, scale, zero = make_affine(gen, n, k, gs)
    x = torch.randn(m, k, generator=gen)
    y = affine_gemv(x, q, scale, zero, gs, split_k=split_k)
    ref = affine_gemv_reference(x, q, scale, zero, gs)
    assert y.shape == (m, n) and y.dtype == torch.float32
    assert rel_err(y, ref) < TOL


def test_affine_gemv_rate_mode_leading_dims(gen):
    n, k = 48, 128
    q, scale, zero = make_affine(gen, n, k, k, zero_shape=(1, 1))
    x = torch.randn(1, 2, k, generator=gen)
    y = affine_gemv(x, q, scale, zero, k, split_k=4, block_k=32)
    assert y.shape == (1, 2, n)
    assert rel_err(y, affine_gemv_reference(x, q, scale, zero, k)) < TOL


def test_affine_gemv_rejects_large_m(gen):
    q, scale, zero = make_affine(gen, 32, 64, 32)
    with pytest.raises(ValueError, match="1..16 rows"):
        affine_gemv(torch.randn(17, 64), q, scale, zero, 32)


# ---------------------------------------------------------------- bf16

def test_bf16_reconstruct_bit_exact_full_range(gen):
    n, k = 48, 128
    e = torch.randint(0, 256, (n, k), dtype=torch.uint8, generator=gen)
    e[0] = torch.arange(128, dtype=torch.uint8)  # every exponent, 0 (subnormal) and 255 (inf/NaN) included
    e[1] = torch.arange(128, 256, dtype=torch.int32).to(torch.uint8)
    sm = torch.randint(0, 256, (n, k), dtype=torch.uint8, generator=gen)
    w = bf16_reconstruct(e, sm)
    ref = bf16_reconstruct_reference(e, sm)
    assert w.dtype == torch.bfloat16 and w.shape == (n, k)
    assert torch.equal(w.view(torch.int16), ref.view(torch.int16))
    bits = ((sm.int() & 0x80) << 8) | (e.int() << 7) | (sm.int() & 0x7F)
    assert torch.equal(ref.view(torch.int16).int() & 0xFFFF, bits)


def test_bf16_reconstruct_known_values():
    e = torch.tensor([[127, 127, 128, 0, 255, 255]], dtype=torch.uint8)
    sm = torch.tensor([[0x00, 0x80, 0x40, 0x01, 0x00, 0x40]], dtype=torch.uint8)
    w = bf16_reconstruct(e, sm).float()
    assert w[0, :3].tolist() == [1.0, -1.0, 3.0]
    assert w[0, 3].item() == 2.0 ** -133  # smallest positive subnormal bf16
    assert w[0, 4].item() == float("inf") and torch.isnan(w[0, 5])


@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("n,k", [(32, 64), (48, 128), (32, 80)])
def test_bf16_matmul_matches_torch(gen, m, n, k):
    # Exponents near 127 keep W finite and |W| ~ 1e-5..1e4 so the matmul is meaningful.
    e = torch.randint(110, 140, (n, k), dtype=torch.uint8, generator=gen)
    sm = torch.randint(0, 256, (n, k), dtype=torch.uint8, generator=gen)
    x = torch.randn(2, m, k, generator=gen)
    y = bf16_matmul(x, e, sm)
    w = bf16_reconstruct_reference(e, sm)
    assert y.shape == (2, m, n) and y.dtype == torch.float32
    assert rel_err(y, torch.matmul(x, w.float().t())) < TOL
    assert rel_err(y, bf16_matmul_reference(x, e, sm)) < TOL


# ---------------------------------------------------------------- argument checking

@pytest.mark.parametrize("fn", [affine_matmul, affine_gemv, affine_matmul_reference])
def test_affine_group_size_must_divide_k(fn):
    q = torch.zeros(32, 96, dtype=torch.uint8)
    scale = torch.ones(32, 2, dtype=torch.float16)
    with pytest.raises(ValueError, match="not divisible by group_size"):
        fn(torch.randn(1, 96), q, scale, scale, 64)


@pytest.mark.parametrize("fn", [affine_matmul, affine_gemv])
def test_affine_shape_mismatches(fn):
    q = torch.zeros(32, 64, dtype=torch.uint8)
    s = torch.ones(32, 2, dtype=torch.float16)
    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match="last dimension must equal K = 64"):
        fn(torch.randn(2, 63), q, s, s, 32)
    with pytest.raises(ValueError, match=r"scale must have shape \[N, G\] = \[32, 2\]"):
        fn(x, q, torch.ones(32, 4, dtype=torch.float16), s, 32)
    with pytest.raises(ValueError, match=r"zero must have shape"):
        fn(x, q, s, torch.ones(16, 2, dtype=torch.float16), 32)
    with pytest.raises(ValueError, match="uint8"):
        fn(x, q.int(), s, s, 32)
    with pytest.raises(ValueError, match="positive int"):
        fn(x, q, s, s, 0)


def test_bf16_shape_mismatches():
    e = torch.zeros(32, 64, dtype=torch.uint8)
    with pytest.raises(ValueError, match="same shape"):
        bf16_matmul(torch.randn(1, 64), e, torch.zeros(32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="same shape"):
        bf16_reconstruct(e, torch.zeros(16, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="last dimension must equal K = 64"):
        bf16_matmul(torch.randn(1, 32), e, e)
    with pytest.raises(ValueError, match="uint8"):
        bf16_reconstruct(e.to(torch.int16), e)


# ---------------------------------------------------------------- layering

def test_kernels_do_not_import_pycodec():
    """Kernels sit below the package that uses them: importing every kernel leaves pycodec out."""
    import subprocess
    import sys

    code = ("import sys, pycodec_triton, pycodec_triton.affine_gemv, pycodec_triton.affine_matmul, "
            "pycodec_triton.bf16_matmul\n"
            "bad = sorted(m for m in sys.modules if m == 'pycodec' or m.startswith('pycodec.'))\n"
            "assert not bad, bad\n")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dequantize_reference_is_the_layout_definition(gen):
    from pycodec.quant import dequantize_affine
    from pycodec_triton.affine_matmul import affine_dequantize_reference

    for zero_shape in (None, (1, 1)):
        q, scale, zero = make_affine(gen, 24, 96, 32, zero_shape=zero_shape)
        assert torch.equal(affine_dequantize_reference(q, scale, zero, 32), dequantize_affine(q, scale, zero, 32))
