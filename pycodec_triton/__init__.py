"""Triton kernels that consume decoded pycodec symbol matrices.

affine_matmul   fused dequantize + matmul, layout (A) (int / rate mode), any M
affine_gemv     split-K CUDA-core kernel for layout (A) at M = 1..16
bf16_matmul     fused bf16 reconstruction + matmul, layout (B) (lossless bf16)
bf16_reconstruct  rebuild the bf16 weight from its exponent / sign-mantissa planes

Each kernel has a pure-PyTorch *_reference with the same contract.  Importing this package
never requires Triton: when it is missing, available() is False and the kernel names are
absent.  TRITON_INTERPRET=1 must be set before this package is first imported for the
kernels to run on CPU tensors (triton.jit picks interpreter vs compiler at decoration time).
"""
from __future__ import annotations

import os


def available() -> bool:
    """True if Triton imports and can run here: a CUDA device, or TRITON_INTERPRET=1."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    if os.environ.get("TRITON_INTERPRET", "") == "1":
        return True
    try:
        import torch
    except Exception:
        return False
    return torch.cuda.is_available()


__all__ = ["available"]

try:
    from .affine_gemv import GemvPlan, affine_gemv, affine_gemv_reference
    from .affine_matmul import AffineLayout, affine_dequantize_reference, affine_matmul, affine_matmul_reference
    from .bf16_matmul import (Bf16Layout, bf16_matmul, bf16_matmul_reference, bf16_reconstruct,
                              bf16_reconstruct_reference)
except ImportError as _exc:  # triton (or torch) not installed
    _IMPORT_ERROR: ImportError | None = _exc
else:
    _IMPORT_ERROR = None
    __all__ += [
        "AffineLayout", "affine_matmul", "affine_matmul_reference", "affine_dequantize_reference",
        "GemvPlan", "affine_gemv", "affine_gemv_reference",
        "Bf16Layout", "bf16_matmul", "bf16_matmul_reference", "bf16_reconstruct", "bf16_reconstruct_reference",
    ]
