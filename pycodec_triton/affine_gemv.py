"""Small-batch (M = 1..16) dequantize + matrix-vector product for the affine symbol layout.

Shapes and constraints
    x      float16 / bfloat16 / float32 [..., K]   leading dims flattened to M, 1 <= M <= 16
    q      uint8   [N, K]                           decoded symbols
    scale  float16 / bfloat16 / float32 [N, G]      G = K // group_size
    zero   same dtypes, [N, G] or [1, 1]            [1, 1] broadcasts (rate mode)
    group_size must divide K
    W[n, k] = (q[n, k] - zero[n, k // group_size]) * scale[n, k // group_size]
    y = x @ W^T, shape [..., N], dtype out_dtype (default x.dtype), accumulated in fp32.

Strategy: at M <= 16 the product is bound by reading q (1 byte / weight), and tensor-core
tiles would be mostly padding. Each program owns BLOCK_N output rows and one K slice
(split-K), streams [BLOCK_N, BLOCK_K] symbol tiles row-contiguous (16-byte vector loads),
dequantizes in registers and reduces with tl.sum on CUDA cores. Split-K partials go to an
fp32 [SPLIT_K, M, N] buffer summed afterwards, which keeps the result deterministic
(no atomics) at a cost of SPLIT_K * M * N * 4 bytes, negligible next to N * K.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._grouping import check_activations, resolve_launch
from .affine_matmul import AffineLayout, affine_matmul_reference, largest_pow2_divisor, zero_strides

MAX_M = 16
# Elements of the [BLOCK_M, BLOCK_N, BLOCK_K] broadcast product held per program; about
# 32 fp32 registers per thread at 4 warps, leaving room for the loads in flight.
_PRODUCT_BUDGET = 4096


@dataclass(frozen=True)
class GemvPlan:
    """Launch geometry for one call (derived from the weight layout and M)."""

    m: int
    n: int
    k: int
    group_size: int
    block_m: int
    block_n: int
    block_k: int
    split_k: int
    k_per_split: int
    scale_per_block: bool

    @staticmethod
    def make(layout: AffineLayout, m: int, block_n: int | None, block_k: int | None,
             split_k: int | None, device: torch.device) -> "GemvPlan":
        block_m = triton.next_power_of_2(m)
        if block_k is None:
            block_k = 128 if block_m <= 4 else 64
            if layout.group_size % block_k != 0 and layout.n_groups > 1:
                d = largest_pow2_divisor(layout.group_size, block_k)
                if d >= 16:  # 16 symbols = one 128-bit load per thread row segment
                    block_k = d
        if block_n is None:
            block_n = max(4, _PRODUCT_BUDGET // (block_m * block_k))
        for name, b in (("block_n", block_n), ("block_k", block_k)):
            if b < 1 or b & (b - 1):
                raise ValueError(f"{name} must be a power of two; got {b}")
        k_blocks = triton.cdiv(layout.k, block_k)
        if split_k is None:
            # Enough programs to fill the GPU about twice; on CPU (interpreter) no split.
            if device.type == "cuda":
                sms = torch.cuda.get_device_properties(device).multi_processor_count
                n_programs = triton.cdiv(layout.n, block_n)
                split_k = max(1, min(16, (2 * sms) // max(n_programs, 1), k_blocks))
            else:
                split_k = 1
        if split_k < 1:
            raise ValueError(f"split_k must be >= 1; got {split_k}")
        # Every split starts on a BLOCK_K boundary, so a block never straddles two groups
        # when group_size % BLOCK_K == 0.
        k_per_split = triton.cdiv(k_blocks, split_k) * block_k
        split_k = triton.cdiv(layout.k, k_per_split)
        return GemvPlan(m=m, n=layout.n, k=layout.k, group_size=layout.group_size,
                        block_m=block_m, block_n=block_n, block_k=block_k,
                        split_k=split_k, k_per_split=k_per_split,
                        scale_per_block=layout.group_size % block_k == 0 or layout.n_groups == 1)


@triton.jit
def _affine_gemv_kernel(
    x_ptr, q_ptr, s_ptr, z_ptr, p_ptr,
    M, N, K, group_size, k_per_split,
    stride_xm, stride_xk, stride_qn, stride_qk,
    stride_sn, stride_sg, stride_zn, stride_zg,
    stride_ps, stride_pm, stride_pn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SCALE_PER_BLOCK: tl.constexpr, EVEN_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    # int64 row offsets: offs_n * stride_qn passes 2^31 for N * K >= 2^31 weights.
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_m = tl.arange(0, BLOCK_M).to(tl.int64)
    mask_n = offs_n < N
    mask_m = offs_m < M
    k_start = pid_s * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        # Contiguity hint: each row's BLOCK_K symbols are adjacent, so the compiler can
        # issue 16-byte vector loads for q instead of byte loads.
        offs_k = tl.max_contiguous(tl.multiple_of(k0 + tl.arange(0, BLOCK_K), BLOCK_K), BLOCK_K)
        q_ptrs = q_ptr + offs_n[:, None] * stride_qn + offs_k[None, :] * stride_qk
        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
        if EVEN_K:
            q = tl.load(q_ptrs, mask=mask_n[:, None], other=0)
            x = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)
        else:
            mask_k = offs_k < k_end
            q = tl.load(q_ptrs, mask=mask_n[:, None] & mask_k[None, :], other=0)
            x = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        x = x.to(tl.float32)
        if SCALE_PER_BLOCK:
            # One group per block: scale applied once per output after the reduction.
            g = k0 // group_size
            s = tl.load(s_ptr + offs_n * stride_sn + g * stride_sg, mask=mask_n, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + offs_n * stride_zn + g * stride_zg, mask=mask_n, other=0.0).to(tl.float32)
            w = q.to(tl.float32) - z[:, None]
            part = tl.sum(x[:, None, :] * w[None, :, :], axis=2)
            acc += part * s[None, :]
        else:
            g = offs_k // group_size
            sz_mask = mask_n[:, None]
            if not EVEN_K:
                sz_mask = sz_mask & (offs_k < k_end)[None, :]
            s = tl.load(s_ptr + offs_n[:, None] * stride_sn + g[None, :] * stride_sg, mask=sz_mask, other=0.0)
            z = tl.load(z_ptr + offs_n[:, None] * stride_zn + g[None, :] * stride_zg, mask=sz_mask, other=0.0)
            w = (q.to(tl.float32) - z.to(tl.float32)) * s.to(tl.float32)
            acc += tl.sum(x[:, None, :] * w[None, :, :], axis=2)

    p_ptrs = p_ptr + pid_s.to(tl.int64) * stride_ps + offs_m[:, None] * stride_pm + offs_n[None, :] * stride_pn
    tl.store(p_ptrs, acc, mask=mask_m[:, None] & mask_n[None, :])


def affine_gemv(
    x: torch.Tensor,
    q: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    group_size: int,
    *,
    out_dtype: torch.dtype | None = None,
    block_n: int | None = None,
    block_k: int | None = None,
    split_k: int | None = None,
    num_warps: int = 4,
) -> torch.Tensor:
    """y = x @ dequant(q, scale, zero)^T for 1 <= M <= 16 rows (use affine_matmul above that)."""
    layout = AffineLayout.from_tensors(q, scale, zero, group_size)
    check_activations(x, layout.k, q.device)
    out_dtype = resolve_launch(x, out_dtype)  # block sizes: GemvPlan.make checks its own
    lead = x.shape[:-1]
    x2 = x.reshape(-1, layout.k)
    m = x2.shape[0]
    if not 1 <= m <= MAX_M:
        raise ValueError(f"affine_gemv handles 1..{MAX_M} rows of x; got M = {m} (use affine_matmul)")
    plan = GemvPlan.make(layout, m, block_n, block_k, split_k, q.device)

    partial = torch.empty((plan.split_k, m, layout.n), dtype=torch.float32, device=x.device)
    szn, szg = zero_strides(zero, layout)
    grid = (triton.cdiv(layout.n, plan.block_n), plan.split_k)
    _affine_gemv_kernel[grid](
        x2, q, scale, zero, partial,
        m, layout.n, layout.k, layout.group_size, plan.k_per_split,
        x2.stride(0), x2.stride(1), q.stride(0), q.stride(1),
        scale.stride(0), scale.stride(1), szn, szg,
        partial.stride(0), partial.stride(1), partial.stride(2),
        BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, BLOCK_K=plan.block_k,
        SCALE_PER_BLOCK=plan.scale_per_block,
        EVEN_K=layout.k % plan.block_k == 0 and plan.k_per_split % plan.block_k == 0,
        num_warps=num_warps,
    )
    y = partial[0] if plan.split_k == 1 else partial.sum(dim=0)
    return y.to(out_dtype).reshape(*lead, layout.n)


def affine_gemv_reference(
    x: torch.Tensor,
    q: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    group_size: int,
    *,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Same contract as affine_gemv, in plain PyTorch (fp32 dequantize, fp32 matmul)."""
    m = x.reshape(-1, x.shape[-1]).shape[0] if x.dim() >= 1 else 0
    if not 1 <= m <= MAX_M:
        raise ValueError(f"affine_gemv handles 1..{MAX_M} rows of x; got M = {m} (use affine_matmul)")
    return affine_matmul_reference(x, q, scale, zero, group_size, out_dtype=out_dtype)


__all__ = ["GemvPlan", "affine_gemv", "affine_gemv_reference", "MAX_M"]
