"""Fused bf16 reconstruction + matmul for the lossless bf16 symbol layout.

Shapes and constraints
    x   float16 / bfloat16 / float32 [..., K]   activations, leading dims flattened to M
    e   uint8 [N, K]                             exponent symbols (bits 14..7 of the bf16 word)
    sm  uint8 [N, K]                             sign (bit 7) and 7-bit mantissa (bits 6..0)
    bf16 bits = ((sm & 0x80) << 8) | (e << 7) | (sm & 0x7F); W[n, k] is that bf16 value exactly.
    y = x @ W^T, shape [..., N], dtype out_dtype (default x.dtype), accumulated in fp32.

bf16_reconstruct(e, sm) returns W itself (bf16 [N, K], bit-exact, including inf/NaN/subnormals).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._grouping import check_activations, grouped_tile, resolve_launch, store_tile, tile_offsets



@dataclass(frozen=True)
class Bf16Layout:
    """Validated metadata of one lossless-bf16 weight split into exponent / sign-mantissa planes."""

    n: int
    k: int

    @staticmethod
    def from_tensors(e: torch.Tensor, sm: torch.Tensor) -> "Bf16Layout":
        for name, t in (("e", e), ("sm", sm)):
            if t.dtype != torch.uint8 or t.dim() != 2:
                raise ValueError(f"{name} must be a 2-D uint8 tensor [N, K]; got {t.dtype} with shape {tuple(t.shape)}")
        if e.shape != sm.shape:
            raise ValueError(f"e and sm must have the same shape; got {tuple(e.shape)} and {tuple(sm.shape)}")
        if e.device != sm.device:
            raise ValueError(f"e and sm must be on one device; got {e.device} and {sm.device}")
        return Bf16Layout(n=e.shape[0], k=e.shape[1])


@triton.jit
def _bf16_reconstruct_kernel(e_ptr, sm_ptr, out_ptr, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    e = tl.load(e_ptr + offs, mask=mask, other=0).to(tl.uint16)
    sm = tl.load(sm_ptr + offs, mask=mask, other=0).to(tl.uint16)
    bits = ((sm & 0x80) << 8) | (e << 7) | (sm & 0x7F)
    # Stored as raw 16-bit words and viewed as bf16 on the host, so no float conversion can
    # canonicalise NaN payloads or flush subnormals.
    tl.store(out_ptr + offs, bits, mask=mask)


@triton.jit
def _bf16_matmul_kernel(
    x_ptr, e_ptr, sm_ptr, y_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk,
    stride_ym, stride_yn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr, DOT_BF16: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)

    offs_m, offs_n, offs_k, mask_m, mask_n = tile_offsets(pid_m, pid_n, M, N, BLOCK_M, BLOCK_N, BLOCK_K)

    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_off = offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk  # [BLOCK_K, BLOCK_N] = W^T tile
    e_ptrs = e_ptr + w_off
    sm_ptrs = sm_ptr + w_off

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            x = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)
            e = tl.load(e_ptrs, mask=mask_n[None, :], other=0)
            sm = tl.load(sm_ptrs, mask=mask_n[None, :], other=0)
        else:
            mask_k = (k0 + offs_k) < K
            x = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            e = tl.load(e_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0)
            sm = tl.load(sm_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0)
        if DOT_BF16:
            # bf16 activations: the reconstructed word is the tensor-core operand as is.
            bits16 = ((sm.to(tl.uint16) & 0x80) << 8) | (e.to(tl.uint16) << 7) | (sm.to(tl.uint16) & 0x7F)
            w = bits16.to(tl.bfloat16, bitcast=True)
            acc = tl.dot(x, w, acc, out_dtype=tl.float32)
        else:
            # fp32 / fp16 activations: widen the bf16 word to fp32 by placing it in the high
            # half (exact, bf16 is truncated fp32). fp16 cannot hold bf16's exponent range,
            # so fp16 activations are widened too rather than narrowing W.
            bits32 = ((sm.to(tl.uint32) & 0x80) << 24) | (e.to(tl.uint32) << 23) | ((sm.to(tl.uint32) & 0x7F) << 16)
            w = bits32.to(tl.float32, bitcast=True)
            acc = tl.dot(x.to(tl.float32), w, acc, input_precision=INPUT_PRECISION, out_dtype=tl.float32)
        x_ptrs += BLOCK_K * stride_xk
        e_ptrs += BLOCK_K * stride_wk
        sm_ptrs += BLOCK_K * stride_wk

    store_tile(y_ptr, acc, offs_m, offs_n, mask_m, mask_n, stride_ym, stride_yn)


def bf16_reconstruct(e: torch.Tensor, sm: torch.Tensor, *, block: int = 1024, num_warps: int = 4) -> torch.Tensor:
    """Rebuild the bf16 [N, K] weight from its exponent and sign-mantissa symbol planes."""
    layout = Bf16Layout.from_tensors(e, sm)
    e_c, sm_c = e.contiguous(), sm.contiguous()
    bits = torch.empty((layout.n, layout.k), dtype=torch.uint16, device=e.device)
    numel = bits.numel()
    if numel:
        _bf16_reconstruct_kernel[(triton.cdiv(numel, block),)](e_c, sm_c, bits, numel, BLOCK=block, num_warps=num_warps)
    return bits.view(torch.bfloat16)


def bf16_matmul(
    x: torch.Tensor,
    e: torch.Tensor,
    sm: torch.Tensor,
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
    """y = x @ W^T with W rebuilt from (e, sm) tile by tile in registers."""
    layout = Bf16Layout.from_tensors(e, sm)
    check_activations(x, layout.k, e.device)
    out_dtype = resolve_launch(x, out_dtype, block_m=block_m, block_n=block_n, block_k=block_k)
    if e.stride() != sm.stride():
        e, sm = e.contiguous(), sm.contiguous()

    lead = x.shape[:-1]
    x2 = x.reshape(-1, layout.k)
    m = x2.shape[0]
    y = torch.empty((m, layout.n), dtype=out_dtype, device=x.device)
    if m == 0 or layout.n == 0:
        return y.reshape(*lead, layout.n)
    block_m = max(16, min(block_m, triton.next_power_of_2(m)))
    # Non-bf16 activations run an fp32 dot: 'ieee' unless the caller accepts tf32 (~1e-3).
    precision = "tf32" if allow_tf32 else "ieee"
    grid = (triton.cdiv(m, block_m) * triton.cdiv(layout.n, block_n),)
    _bf16_matmul_kernel[grid](
        x2, e, sm, y,
        m, layout.n, layout.k,
        x2.stride(0), x2.stride(1), e.stride(0), e.stride(1),
        y.stride(0), y.stride(1),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m,
        EVEN_K=layout.k % block_k == 0, DOT_BF16=x.dtype == torch.bfloat16, INPUT_PRECISION=precision,
        num_warps=num_warps, num_stages=num_stages,
    )
    return y.reshape(*lead, layout.n)


def bf16_reconstruct_reference(e: torch.Tensor, sm: torch.Tensor) -> torch.Tensor:
    Bf16Layout.from_tensors(e, sm)
    e32, sm32 = e.to(torch.int32), sm.to(torch.int32)
    bits = ((sm32 & 0x80) << 8) | (e32 << 7) | (sm32 & 0x7F)
    # Fold 0..65535 into int16's range explicitly rather than relying on a wrapping cast.
    bits = bits - ((bits >> 15) << 16)
    return bits.to(torch.int16).view(torch.bfloat16)


def bf16_matmul_reference(x: torch.Tensor, e: torch.Tensor, sm: torch.Tensor, *,
                          out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """torch.matmul(x, W.T) computed in fp32, cast to out_dtype (default x.dtype)."""
    w = bf16_reconstruct_reference(e, sm)
    if x.shape[-1] != w.shape[1]:
        raise ValueError(f"x's last dimension must equal K = {w.shape[1]}; got x of shape {tuple(x.shape)}")
    out_dtype = x.dtype if out_dtype is None else out_dtype
    return torch.matmul(x.float(), w.float().t()).to(out_dtype)


__all__ = ["Bf16Layout", "bf16_matmul", "bf16_matmul_reference", "bf16_reconstruct", "bf16_reconstruct_reference"]
