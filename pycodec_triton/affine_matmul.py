"""Fused dequantize + matmul for the affine symbol layout (int mode and rate mode).

Shapes and constraints
    x      float16 / bfloat16 / float32 [..., K]   activations, leading dims flattened to M
    q      uint8   [N, K]                           decoded symbols (N = out_features)
    scale  float16 / bfloat16 / float32 [N, G]      G = K // group_size
    zero   same dtypes, [N, G] or [1, 1]            [1, 1] broadcasts (rate mode's constant zero point)
    group_size must divide K (rate mode: group_size = K, G = 1)
    W[n, k] = (q[n, k] - zero[n, k // group_size]) * scale[n, k // group_size]
    y = x @ W^T, shape [..., N], dtype out_dtype (default x.dtype), accumulated in fp32.

Escaped weights of rate mode (kept exactly outside the symbol stream) are not handled here;
the caller adds their contribution (a sparse correction) separately.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._grouping import FLOAT_DTYPES, check_activations, grouped_tile, resolve_launch, store_tile, tile_offsets



@dataclass(frozen=True)
class AffineLayout:
    """Validated metadata of one affine-coded weight."""

    n: int
    k: int
    group_size: int
    n_groups: int
    zero_broadcast: bool

    @staticmethod
    def from_tensors(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> "AffineLayout":
        if q.dtype != torch.uint8 or q.dim() != 2:
            raise ValueError(f"q must be a 2-D uint8 tensor [N, K]; got {q.dtype} with shape {tuple(q.shape)}")
        n, k = q.shape
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
            raise ValueError(f"group_size must be a positive int; got {group_size!r}")
        if k % group_size != 0:
            raise ValueError(f"K = {k} is not divisible by group_size = {group_size}; "
                             f"these kernels need whole groups (use group_size = K for one group per row)")
        g = k // group_size
        if scale.dtype not in FLOAT_DTYPES or zero.dtype not in FLOAT_DTYPES:
            raise ValueError(f"scale and zero must be float16, bfloat16 or float32; got {scale.dtype} and {zero.dtype}")
        if tuple(scale.shape) != (n, g):
            raise ValueError(f"scale must have shape [N, G] = [{n}, {g}] for q {tuple(q.shape)} and "
                             f"group_size {group_size}; got {tuple(scale.shape)}")
        if tuple(zero.shape) not in ((n, g), (1, 1)):
            raise ValueError(f"zero must have shape [N, G] = [{n}, {g}] or [1, 1]; got {tuple(zero.shape)}")
        if not (q.device == scale.device == zero.device):
            raise ValueError(f"q, scale and zero must be on one device; got {q.device}, {scale.device}, {zero.device}")
        return AffineLayout(n=n, k=k, group_size=group_size, n_groups=g,
                            zero_broadcast=tuple(zero.shape) == (1, 1) and (n, g) != (1, 1))


def zero_strides(zero: torch.Tensor, layout: AffineLayout) -> tuple[int, int]:
    # Stride 0 lets the [1, 1] rate-mode zero point broadcast without materialising [N, G].
    return (0, 0) if layout.zero_broadcast else (zero.stride(0), zero.stride(1))


def largest_pow2_divisor(value: int, cap: int) -> int:
    d = 1
    while d * 2 <= cap and value % (d * 2) == 0:
        d *= 2
    return d


_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


@triton.jit
def _affine_matmul_kernel(
    x_ptr, q_ptr, s_ptr, z_ptr, y_ptr,
    M, N, K, group_size,
    stride_xm, stride_xk, stride_qn, stride_qk,
    stride_sn, stride_sg, stride_zn, stride_zg,
    stride_ym, stride_yn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SCALE_PER_BLOCK: tl.constexpr, EVEN_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)

    offs_m, offs_n, offs_k, mask_m, mask_n = tile_offsets(pid_m, pid_n, M, N, BLOCK_M, BLOCK_N, BLOCK_K)

    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
    q_ptrs = q_ptr + offs_n[None, :] * stride_qn + offs_k[:, None] * stride_qk  # [BLOCK_K, BLOCK_N] = W^T tile

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            x = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)
            q = tl.load(q_ptrs, mask=mask_n[None, :], other=0)
        else:
            mask_k = (k0 + offs_k) < K
            x = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            q = tl.load(q_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0)
        if SCALE_PER_BLOCK:
            # The whole K block lies in one group: subtract the zero point before the dot and
            # apply the scale to the fp32 partial product.  q - zero is an integer in
            # [-255, 255] for integer zero points, exact in bf16/fp16, so the tensor-core
            # product loses nothing to rounding the dequantized weight to 16 bits.
            g = k0 // group_size
            s = tl.load(s_ptr + offs_n * stride_sn + g * stride_sg, mask=mask_n, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + offs_n * stride_zn + g * stride_zg, mask=mask_n, other=0.0).to(tl.float32)
            w = (q.to(tl.float32) - z[None, :]).to(DOT_DTYPE)
            part = tl.dot(x.to(DOT_DTYPE), w, input_precision=INPUT_PRECISION, out_dtype=tl.float32)
            acc += part * s[None, :]
        else:
            # Groups smaller than BLOCK_K: per-element scale/zero gather (served from L1/L2,
            # since [N, G] is 1/group_size of the symbol traffic).
            g = (k0 + offs_k) // group_size
            sz_mask = mask_n[None, :]
            if not EVEN_K:
                sz_mask = sz_mask & ((k0 + offs_k) < K)[:, None]
            s = tl.load(s_ptr + offs_n[None, :] * stride_sn + g[:, None] * stride_sg, mask=sz_mask, other=0.0)
            z = tl.load(z_ptr + offs_n[None, :] * stride_zn + g[:, None] * stride_zg, mask=sz_mask, other=0.0)
            w = ((q.to(tl.float32) - z.to(tl.float32)) * s.to(tl.float32)).to(DOT_DTYPE)
            acc = tl.dot(x.to(DOT_DTYPE), w, acc, input_precision=INPUT_PRECISION, out_dtype=tl.float32)
        x_ptrs += BLOCK_K * stride_xk
        q_ptrs += BLOCK_K * stride_qk

    store_tile(y_ptr, acc, offs_m, offs_n, mask_m, mask_n, stride_ym, stride_yn)


def affine_matmul(
    x: torch.Tensor,
    q: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    group_size: int,
    *,
    out_dtype: torch.dtype | None = None,
    block_m: int = 64,
    block_n: int = 64,
    block_k: int = 64,
    group_m: int = 8,
    num_warps: int = 4,
    num_stages: int = 3,
    allow_tf32: bool = False,
) -> torch.Tensor:
    """y = x @ dequant(q, scale, zero)^T for any number of rows M (leading dims of x)."""
    layout = AffineLayout.from_tensors(q, scale, zero, group_size)
    check_activations(x, layout.k, q.device)
    out_dtype = resolve_launch(x, out_dtype, block_m=block_m, block_n=block_n, block_k=block_k)

    lead = x.shape[:-1]
    x2 = x.reshape(-1, layout.k)
    m = x2.shape[0]
    y = torch.empty((m, layout.n), dtype=out_dtype, device=x.device)
    if m == 0 or layout.n == 0:
        return y.reshape(*lead, layout.n)

    # Small M wastes tensor-core rows; shrink to the smallest legal tile instead.
    block_m = max(16, min(block_m, triton.next_power_of_2(m)))
    # Prefer a K block inside one group so scale/zero are per-column vectors (see kernel).
    if layout.group_size % block_k != 0 and layout.n_groups > 1:
        d = largest_pow2_divisor(layout.group_size, block_k)
        if d >= 16:
            block_k = d
    scale_per_block = layout.group_size % block_k == 0 or layout.n_groups == 1

    # fp32 activations: 'ieee' keeps fp32 accuracy (tf32 would cost ~1e-3 relative error).
    # 16-bit activations: the setting has no effect on the MMA; keep Triton's default.
    dot_dtype = _TL_DTYPES[x.dtype]
    precision = "ieee" if (x.dtype == torch.float32 and not allow_tf32) else "tf32"
    szn, szg = zero_strides(zero, layout)
    grid = (triton.cdiv(m, block_m) * triton.cdiv(layout.n, block_n),)
    _affine_matmul_kernel[grid](
        x2, q, scale, zero, y,
        m, layout.n, layout.k, layout.group_size,
        x2.stride(0), x2.stride(1), q.stride(0), q.stride(1),
        scale.stride(0), scale.stride(1), szn, szg,
        y.stride(0), y.stride(1),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m,
        SCALE_PER_BLOCK=scale_per_block, EVEN_K=layout.k % block_k == 0,
        DOT_DTYPE=dot_dtype, INPUT_PRECISION=precision,
        num_warps=num_warps, num_stages=num_stages,
    )
    return y.reshape(*lead, layout.n)


def affine_dequantize_reference(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    """W[n, k] = (q[n, k] - zero[n, g]) * scale[n, g], g = k // group_size, in fp32 (plain PyTorch).

    Kernels sit below the package that uses them, so this does not import pycodec; the tests
    check it against pycodec.quant.dequantize_affine, the layout's own definition.
    """
    layout = AffineLayout.from_tensors(q, scale, zero, group_size)
    g = torch.arange(layout.k, device=q.device) // group_size
    z = zero.float().expand(layout.n, scale.shape[1])[:, g]
    return (q.float() - z) * scale.float()[:, g]


def affine_matmul_reference(
    x: torch.Tensor,
    q: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    group_size: int,
    *,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Dequantize in fp32, then torch.matmul in fp32; cast to out_dtype (default x.dtype)."""
    w = affine_dequantize_reference(q, scale, zero, group_size)
    check_activations(x, w.shape[1], q.device)
    out_dtype = x.dtype if out_dtype is None else out_dtype
    return torch.matmul(x.float(), w.t()).to(out_dtype)


__all__ = ["AffineLayout", "affine_matmul", "affine_matmul_reference", "affine_dequantize_reference"]
