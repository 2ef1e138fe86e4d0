"""The Triton kernel checks of test_triton_kernels.py at model-sized shapes on a CUDA device.

bf16 activations use the tensor-core path, so tolerances are ~1e-2 relative to ||ref||
(bf16 output rounding plus, for the per-element-scale path, bf16 rounding of dequantized W).
fp32 activations run tl.dot with input_precision="ieee" and keep the 1e-4 bound.

test_triton_kernels.py sets TRITON_INTERPRET=1 at import and so, in a shared pytest run,
the package in sys.modules holds interpreter kernels.  This file therefore loads its own
copy of pycodec_triton with TRITON_INTERPRET unset, and keeps it unset while its tests run
(kernels compile on first launch, and Triton consults the variable during compilation).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

PKG_DIR = Path(__file__).resolve().parents[2] / "pycodec_triton"
SHAPES = [(4096, 4096), (11008, 4096)]  # (N, K)
MS = [1, 3, 16, 64, 256]
BF16_TOL = 1e-2
FP32_TOL = 1e-4


@pytest.fixture(scope="module")
def tk():
    pytest.importorskip("triton")
    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        name = "_triton_kernels_compiled"
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, PKG_DIR / "__init__.py",
                                                          submodule_search_locations=[str(PKG_DIR)])
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
        mod = sys.modules[name]
        kernel = sys.modules[name + ".affine_matmul"]._affine_matmul_kernel
        assert type(kernel).__name__ == "JITFunction", f"kernels loaded as {type(kernel).__name__}"
        yield mod
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved


@pytest.fixture
def gen(request):
    import zlib
    return torch.Generator(device="cuda").manual_seed(zlib.crc32(request.node.nodeid.encode()))


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """The larger of ||err|| / ||ref|| and max|err| / max|ref|: an all-zero output scores 1."""
    err, ref = (y.float() - ref.float()), ref.float()
    return max(err.norm().item() / max(ref.norm().item(), 1e-30),
               err.abs().max().item() / max(ref.abs().max().item(), 1e-30))


def make_affine(gen, n, k, group_size, *, zero_shape=None):
    g = k // group_size
    q = torch.randint(0, 256, (n, k), dtype=torch.uint8, device="cuda", generator=gen)
    scale = (torch.rand(n, g, device="cuda", generator=gen) * 0.02 + 1e-3).half()
    zero = torch.randint(0, 256, zero_shape or (n, g), device="cuda", generator=gen).half()
    return q, scale, zero


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("gs", [128, "K"])
@pytest.mark.parametrize("m", MS)
def test_affine_matmul_bf16(tk, gen, n, k, gs, m):
    gs = k if gs == "K" else gs
    q, scale, zero = make_affine(gen, n, k, gs, zero_shape=(1, 1) if gs == k else None)
    x = torch.randn(m, k, device="cuda", generator=gen).bfloat16()
    y = tk.affine_matmul(x, q, scale, zero, gs)
    assert y.dtype == torch.bfloat16 and y.shape == (m, n)
    assert rel_err(y, tk.affine_matmul_reference(x, q, scale, zero, gs, out_dtype=torch.float32)) < BF16_TOL


@pytest.mark.parametrize("gs", [32, 128])
def test_affine_matmul_fp32_ieee(tk, gen, gs):
    n, k = SHAPES[0]
    q, scale, zero = make_affine(gen, n, k, gs)
    x = torch.randn(64, k, device="cuda", generator=gen)
    y = tk.affine_matmul(x, q, scale, zero, gs)
    assert rel_err(y, tk.affine_matmul_reference(x, q, scale, zero, gs)) < FP32_TOL


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("gs", [64, 128, "K"])
@pytest.mark.parametrize("m", [1, 2, 8, 16])
def test_affine_gemv_bf16(tk, gen, n, k, gs, m):
    gs = k if gs == "K" else gs
    q, scale, zero = make_affine(gen, n, k, gs)
    x = torch.randn(m, k, device="cuda", generator=gen).bfloat16()
    y = tk.affine_gemv(x, q, scale, zero, gs)
    assert y.dtype == torch.bfloat16 and y.shape == (m, n)
    assert rel_err(y, tk.affine_gemv_reference(x, q, scale, zero, gs, out_dtype=torch.float32)) < BF16_TOL


@pytest.mark.parametrize("split_k", [1, 4, 16])
def test_affine_gemv_fp32_split_k(tk, gen, split_k):
    n, k = SHAPES[1]
    q, scale, zero = make_affine(gen, n, k, 128)
    x = torch.randn(1, k, device="cuda", generator=gen)
    y = tk.affine_gemv(x, q, scale, zero, 128, split_k=split_k)
    assert rel_err(y, tk.affine_gemv_reference(x, q, scale, zero, 128)) < FP32_TOL


def test_bf16_reconstruct_bit_exact(tk, gen):
    n, k = SHAPES[1]
    e = torch.randint(0, 256, (n, k), dtype=torch.uint8, device="cuda", generator=gen)
    e[0, :256] = torch.arange(256, device="cuda").to(torch.uint8)
    sm = torch.randint(0, 256, (n, k), dtype=torch.uint8, device="cuda", generator=gen)
    w = tk.bf16_reconstruct(e, sm)
    assert torch.equal(w.view(torch.int16), tk.bf16_reconstruct_reference(e, sm).view(torch.int16))


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("m", MS)
def test_bf16_matmul_bf16(tk, gen, n, k, m):
    e = torch.randint(110, 130, (n, k), dtype=torch.uint8, device="cuda", generator=gen)
    sm = torch.randint(0, 256, (n, k), dtype=torch.uint8, device="cuda", generator=gen)
    x = torch.randn(m, k, device="cuda", generator=gen).bfloat16()
    y = tk.bf16_matmul(x, e, sm)
    w = tk.bf16_reconstruct_reference(e, sm)
    assert y.dtype == torch.bfloat16
    # torch's own bf16 GEMM (fp32 accumulate, bf16 output) is the contract.
    assert rel_err(y, torch.matmul(x, w.t())) < BF16_TOL
    assert rel_err(y, tk.bf16_matmul_reference(x, e, sm, out_dtype=torch.float32)) < BF16_TOL


def test_bf16_matmul_fp32_ieee(tk, gen):
    n, k = SHAPES[0]
    e = torch.randint(110, 130, (n, k), dtype=torch.uint8, device="cuda", generator=gen)
    sm = torch.randint(0, 256, (n, k), dtype=torch.uint8, device="cuda", generator=gen)
    x = torch.randn(32, k, device="cuda", generator=gen)
    y = tk.bf16_matmul(x, e, sm)
    assert rel_err(y, tk.bf16_matmul_reference(x, e, sm)) < FP32_TOL


def test_bad_inputs_raise_before_launch(tk):
    q = torch.zeros(64, 96, dtype=torch.uint8, device="cuda")
    s = torch.ones(64, 2, dtype=torch.float16, device="cuda")
    with pytest.raises(ValueError, match="not divisible by group_size"):
        tk.affine_matmul(torch.randn(1, 96, device="cuda"), q, s, s, 64)
    with pytest.raises(ValueError, match="last dimension must equal K"):
        tk.affine_gemv(torch.randn(1, 95, device="cuda"), q, s, s, 48)
    with pytest.raises(ValueError, match="same shape"):
        tk.bf16_matmul(torch.randn(1, 96, device="cuda"), q, q[:, :48])
