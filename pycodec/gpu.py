"""CUDA path of CompressedLinear: what it reads, built once on the host, and the dispatch.

Everything a forward needs is prepared when a module is built, loaded or moved (never in
``forward``, which must neither read device memory from the host nor allocate tables, so that
CUDA graphs capture it):

  WeightInfo      ints from the packed meta and the stream's header: kind, shapes, zero point,
                  stream layout (cuda_ops.StreamLayout.ints), the exact_outputs choice
  kernel_buffers  the stream's decode tables (with its lane starts: cuda_ops.LANE_STARTS), the value
                  entries the fused GEMVs decode through, escapes as CSR by row, each symbol's
                  16-bit value for the exact lossless path; a fixed12 weight's escapes only

Dispatch (one place, ``linear``):
  affine (int / rate), v2 stream, batch 1..16, chunks of whole rows
        pycodec::windowed_gemv_affine: fused decode + dequant + GEMV, escapes in its epilogue (rate
        weights at batch 1 where K % 8 == 0: the staged kernel, each chunk decoded into shared
        memory first; _C.affine_gemv_staged(0) keeps the fused one)
  lossless split bf16, v2 stream, batch 1..16, not exact_outputs
        pycodec::windowed_gemv_split: decode + GEMV in one kernel (where K % 8 == 0 the staged
        kernel: chunks decoded into shared memory, then multiplied 8 columns a lane; else the
        fused one); weights bit-exact, only the accumulation order differs from cuBLAS
  lossless split bf16 / fp16 otherwise
        pycodec::windowed_decode_split rebuilds the exact weight on the GPU in one kernel (chunks too
        long for shared memory: windowed_decode + split_merge), then cuBLAS F.linear: outputs
        bitwise equal to the uncompressed nn.Linear
  affine, v2 stream, batch 17..128, x bf16 / fp16, K and group multiples of 16, K <= 12288
        pycodec::windowed_tile_affine: 16 rows per block decoded into shared memory, then
        tensor-core MMA in x's type, escapes in its epilogue
  affine otherwise (fp32 x, larger batches, v1 streams)
        decode the symbols on the GPU, then Triton's affine GEMV (M <= 16) or matmul (tensor cores)
  fixed12 bf16 (lossless_split="fixed12"), batch 1..16, K % 8 == 0, not exact_outputs
        pycodec::fixed12_gemv (csrc/codec/fixed12.h): bf16 x on tensor cores (16 rows a block, MMA on
        the decoded pairs), fp32 x on CUDA cores (a warp a row); escapes and the bias in its
        epilogue, one launch; otherwise pycodec::fixed12_decode, then cuBLAS F.linear (bitwise nn.Linear)
  anything else (fp32 lossless, v1 byte-plane checkpoints)
        the CPU decoder, then F.linear (correct, slow: re-compress for the GPU path)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import _C, cuda_ops
from .codec import CodecError
from .quant import CODE_DTYPES, KIND_AFFINE, KIND_FIXED, KIND_LOSSLESS, KIND_SPLIT, fixed12_parts, unpack

MAX_FUSED_BATCH = 16
# Batches the tile kernel takes (above the GEMVs'). A module setting, so that bench/gpu_suite.py
# can time the decoded route beside it on the same weights.
TILE_BATCHES = range(MAX_FUSED_BATCH + 1, int(_C.TILE_MAX_BATCH) + 1)
_NO_LAYOUT = (0,) * cuda_ops.LAYOUT_INTS


@dataclass(frozen=True)
class WeightInfo:
    """The host-side facts of one packed weight, as the ints the forward op carries."""

    kind: int
    n: int
    k: int
    group_size: int
    dtype_code: int
    top: int            # KIND_SPLIT: coded top bits; KIND_FIXED: the window's base
    exact_outputs: int  # 1: lossless outputs bitwise equal to nn.Linear (no fused GEMV)
    zero_in_values: int  # affine: the constant zero point folded into the value entries
    version: int        # the symbol stream's format version (0: no stream)
    coder: int          # the stream's coder byte (cuda_ops.CODER_IDS)
    layout: tuple = _NO_LAYOUT

    @property
    def ints(self) -> list[int]:
        return [self.kind, self.n, self.k, self.group_size, self.dtype_code, self.top, self.exact_outputs,
                self.zero_in_values, self.version, self.coder, *self.layout]

    @classmethod
    def from_ints(cls, v: list[int]) -> "WeightInfo":
        return cls(*v[:10], tuple(v[10:10 + cuda_ops.LAYOUT_INTS]))

    @property
    def dtype(self) -> torch.dtype:
        return CODE_DTYPES[self.dtype_code]


def _affine_values(zero: torch.Tensor) -> tuple[float, list[int]]:
    """(zc, bf16(q - zc) per symbol) for a packed zero tensor (windowed_gemv.h: affine_values)."""
    first = int(zero.reshape(-1)[:1].view(torch.int16).item()) & 0xFFFF
    return _C.affine_values(tuple(zero.shape) == (1, 1), first)


def weight_info(packed: dict, exact_outputs: bool = False) -> WeightInfo:
    """WeightInfo of a packed weight whose tensors are on the CPU (a host read, no device sync)."""
    meta = packed["meta"].tolist()
    kind, n, k, group_size, dtype_code, top = meta[1:7]
    version, coder, layout, zc = 0, 0, _NO_LAYOUT, 0
    if kind in (KIND_AFFINE, KIND_SPLIT):
        s = cuda_ops.stream_layout(packed["symbols"].numpy())
        version, coder, layout = s.version, cuda_ops.CODER_IDS[s.coder], tuple(s.ints)
        if kind == KIND_AFFINE:
            zc = int(_affine_values(packed["zero"])[0])
    return WeightInfo(kind, n, k, group_size, dtype_code, top, int(exact_outputs), zc, version, coder, layout)


# Kernel buffers, in the op's order; empty tensors where a weight has no use for one.
KERNEL_BUFFERS = ("table", "values", "value16", "escape_row", "escape_col", "escape_value")


def kernel_buffers(packed: dict, info: WeightInfo, lane_starts: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """The host-built tables and escapes of a packed weight (CPU tensors, uploaded by the module).
    lane_starts: the stream's (``_C.lane_starts``, which verifies it) if the caller has them; else
    they are computed here when cuda_ops.LANE_STARTS is set."""
    empty = {"table": torch.zeros(0, dtype=torch.int32), "values": torch.zeros(0, dtype=torch.int64),
             "value16": torch.zeros(0, dtype=torch.int16), "escape_row": torch.zeros(0, dtype=torch.int32),
             "escape_col": torch.zeros(0, dtype=torch.int32), "escape_value": torch.zeros(0, dtype=torch.float32)}
    if info.kind == KIND_FIXED:  # checked here, on the host: the kernels trust sizes and indices
        _, low, idx, bits = fixed12_parts(packed, info.n, info.k, info.top, info.dtype)
        return dict(empty, **cuda_ops.fixed12_escapes(idx, bits, low, info.n, info.k))
    if info.version == 0:
        return empty
    blob = packed["symbols"].numpy()
    if info.version == 1:  # legacy: the symbol decoder's table only
        return dict(empty, **cuda_ops.kernel_tables(blob))
    if not cuda_ops.LANE_STARTS:
        lane_starts = None
    elif lane_starts is None:
        lane_starts = _C.lane_starts(blob, 0)
    if info.kind == KIND_AFFINE:
        _, value16 = _affine_values(packed["zero"])
        out = dict(empty, **cuda_ops.kernel_tables(blob, np.asarray(value16, np.uint16), lane_starts))
        idx = packed["escape_index"]
        if idx.numel():
            rows, cols = idx // info.k, idx % info.k
            row_ptr = torch.zeros(info.n + 1, dtype=torch.int64)
            row_ptr[1:] = torch.cumsum(torch.bincount(rows, minlength=info.n), 0)
            order = torch.argsort(idx)  # row-major order within each row
            out.update(escape_row=row_ptr.to(torch.int32), escape_col=cols[order].to(torch.int32),
                       escape_value=packed["escape_value"][order].to(torch.float32))
        return out
    value16 = np.asarray(_C.split_values(packed["values"].tolist(), info.top), np.uint16)
    out = dict(empty, **cuda_ops.kernel_tables(blob, value16, lane_starts))
    out["value16"] = torch.from_numpy(value16.view(np.int16).copy())
    return out


def linear(x: torch.Tensor, packed: dict, kernel: dict, bias: torch.Tensor | None, info: WeightInfo) -> torch.Tensor:
    """y = x W^T + b on CUDA for a packed weight (see the module docstring for the dispatch)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, info.k)
    batch = x2.shape[0]
    layout = list(info.layout)
    fused = info.version == 2 and 1 <= batch <= MAX_FUSED_BATCH and cuda_ops.gemv_supported(layout, info.n, info.k,
                                                                                            batch)
    tile = (not fused and info.kind == KIND_AFFINE and info.version == 2 and batch in TILE_BATCHES and
            x.dtype in (torch.bfloat16, torch.float16) and
            cuda_ops.tile_supported(layout, info.n, info.k, info.group_size, batch))
    if info.kind == KIND_AFFINE and info.version and (fused or tile or info.k % info.group_size == 0):
        if fused:  # any K: the kernel's last group may be partial
            y = cuda_ops.windowed_gemv_affine(x2, packed["symbols"], kernel["table"], kernel["values"], packed["scale"],
                                              packed["zero"], kernel["escape_row"], kernel["escape_col"],
                                              kernel["escape_value"], layout, float(info.zero_in_values),
                                              info.group_size, info.n, info.k)
        elif tile:
            y = cuda_ops.windowed_tile_affine(x2, packed["symbols"], kernel["table"], packed["scale"], packed["zero"],
                                              kernel["escape_row"], kernel["escape_col"], kernel["escape_value"],
                                              layout, float(info.zero_in_values), info.group_size, info.n, info.k)
        else:  # the Triton kernels take whole groups only
            y = _affine_decoded(x2, packed, kernel, info)
    elif (info.kind == KIND_FIXED and 1 <= batch <= MAX_FUSED_BATCH and info.k % 8 == 0 and info.n > 0 and
          not info.exact_outputs):  # one launch: x read in its dtype, the bias added, y written in it
        y = cuda_ops.fixed12_gemv(x2, packed["codes"], packed["low"], kernel["escape_row"], kernel["escape_col"],
                                  kernel["escape_value"], bias, info.top, info.n, info.k)
        return y.reshape(*lead, info.n)
    elif (info.kind == KIND_SPLIT and info.version == 2 and fused and info.dtype == torch.bfloat16 and
          not info.exact_outputs):
        y = cuda_ops.windowed_gemv_split(x2, packed["symbols"], kernel["table"], kernel["values"], packed["raw"],
                                         layout, info.top, info.n, info.k)
    else:  # the dense weight, then F.linear with the bias inside the matmul as nn.Linear: bit for bit
        w = dense_weight(packed, kernel, info, x.device)
        y = F.linear(x2, w.to(x.dtype), None if bias is None else bias.to(x.dtype))
        return y.reshape(*lead, info.n)
    y = y.to(x.dtype)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.reshape(*lead, info.n)


def dense_weight(packed: dict, kernel: dict, info: WeightInfo, device: torch.device) -> torch.Tensor:
    """The [n, k] weight in its dtype on `device`: a 16-bit lossless split weight rebuilt there
    (decode + split merge in one kernel, bit-exact), a fixed12 one by its decode kernel, anything
    else decoded by the CPU decoder."""
    if info.kind == KIND_SPLIT and info.version == 2 and info.dtype in (torch.bfloat16, torch.float16):
        layout = list(info.layout)
        if layout[5] <= cuda_ops.split_decode_max_chunk():
            w = cuda_ops.windowed_decode_split(packed["symbols"], kernel["table"], kernel["value16"], packed["raw"],
                                               layout, info.top).view(info.dtype)
        else:  # a chunk longer than a block's shared memory holds
            q = cuda_ops.windowed_decode(packed["symbols"], kernel["table"], layout)
            w = cuda_ops.split_merge(q, kernel["value16"], packed["raw"], info.top).view(info.dtype)
    elif info.kind == KIND_FIXED:
        w = cuda_ops.fixed12_decode(packed["codes"], packed["low"], packed["escape_index"], packed["escape_bits"],
                                    info.top, info.n * info.k).view(info.dtype)
    else:  # fp32 lossless, v1 byte planes
        w = unpack({name: t.cpu() for name, t in packed.items()}).to(device)
    return w.view(info.n, info.k)


def _affine_decoded(x2: torch.Tensor, packed: dict, kernel: dict, info: WeightInfo) -> torch.Tensor:
    """Symbols decoded to device memory, then Triton's affine GEMV / matmul; escapes added after."""
    from pycodec_triton import affine_gemv, affine_matmul

    layout = list(info.layout)
    if info.version == 2:
        q = cuda_ops.windowed_decode(packed["symbols"], kernel["table"], layout)
    else:
        index, payload = cuda_ops.v1_views(packed["symbols"], layout)
        q = cuda_ops.decode_symbols(index, payload, kernel["table"][:4096], info.coder, layout[4], layout[5])
    q = q.view(info.n, info.k)
    kernel_fn = affine_gemv if x2.shape[0] <= MAX_FUSED_BATCH else affine_matmul
    y = kernel_fn(x2, q, packed["scale"], packed["zero"], info.group_size, out_dtype=torch.float32)
    idx = packed["escape_index"]
    if idx.numel():
        rows, cols = idx // info.k, idx % info.k
        y = y.index_add_(-1, rows, x2[:, cols].float() * packed["escape_value"].to(x2.device))
    return y


def require_gpu_build() -> None:
    if not _C.cuda_compiled():
        raise CodecError("this pycodec build has no CUDA kernels (nvcc was not found at build time); "
                         "rebuild with nvcc on PATH or run the model on the CPU")


__all__ = ["KERNEL_BUFFERS", "WeightInfo", "dense_weight", "kernel_buffers", "linear", "require_gpu_build",
           "weight_info", "KIND_LOSSLESS"]
