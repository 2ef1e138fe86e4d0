"""GPU decoding of pycodec streams as a torch custom op: ``pycodec::decode_symbols``.

The kernels (csrc/cuda/decode_cuda.cu) take raw device pointers and a CUDA stream and
never link libtorch; this module is the torch side. ``to_device_stream`` splits a blob
into the tensors the op needs (chunk index, payload, decode table), uploaded once;
``decode_symbols`` is a ``torch.library.custom_op`` with a fake (meta) implementation,
so it traces under ``torch.compile(fullgraph=True)`` as one opaque node.
``gemv_affine`` (``pycodec::gemv_affine``) is the fused decode + affine dequant + GEMV for
batch 1..8: decoded weights stay in registers; ``gemv_affine_supported`` says when it applies.

Importing this module needs neither a GPU nor a CUDA build of torch.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import _C
from .codec import CodecError, _as_buffer

__all__ = ["CODER_IDS", "GEMV_MAX_BATCH", "decode_cuda", "decode_symbols", "gemv_affine", "gemv_affine_supported",
           "stream_layout", "to_device_stream"]

CODER_IDS = {"huffman": 1, "rans": 2}  # format.h: the coder byte of the header
GEMV_MAX_BATCH = 8  # decode_cuda.cu: kGemvMaxBatch
GEMV_ALIGN = 64     # decode_cuda.cu: kGemvAlign (one Huffman round = 64 symbols)


def stream_layout(buf: Any) -> dict:
    """Validates a host stream (header, table, index) and describes where its pieces lie.

    Returns the byte offsets ``index_offset`` / ``payload_offset``, the counts ``n_chunks`` /
    ``payload_words``, the host-built ``table`` (int32[4096], uint32 bits), and ``coder``
    (1 huffman, 2 rans), ``n_symbols``, ``chunk_symbols``, ``shape``.
    """
    info = _C.info(buf)
    table = np.frombuffer(_C.decode_table(buf), dtype="<i4").astype(np.int32, copy=True)
    return {
        "index_offset": int(info["index_offset"]),
        "payload_offset": int(info["payload_offset"]),
        "n_chunks": int(info["n_chunks"]),
        "payload_words": int(info["payload_words"]),
        "table": torch.from_numpy(table),
        "coder": CODER_IDS[info["coder"]],
        "n_symbols": int(info["n_symbols"]),
        "chunk_symbols": int(info["chunk_symbols"]),
        "shape": tuple(int(d) for d in info["shape"]),
    }


def _words(buf: Any, offset: int, count: int) -> torch.Tensor:
    """count little-endian uint32 words at byte offset, as an int32 tensor (same bits)."""
    arr = np.frombuffer(buf, dtype="<i4", count=count, offset=offset) if count else np.empty(0, dtype="<i4")
    return torch.from_numpy(arr.astype(np.int32, copy=True))


def to_device_stream(blob: Any, device: Any = "cuda") -> dict:
    """Validates ``blob`` and uploads its pieces to ``device``.

    Returns stream_layout's fields with ``index`` (int32[n_chunks]), ``payload``
    (int32[payload_words]) and ``table`` (int32[4096]) as device tensors.
    """
    buf = _as_buffer(blob)
    if isinstance(buf, np.ndarray):
        buf = buf.tobytes()
    s = stream_layout(buf)
    device = torch.device(device)
    s["index"] = _words(buf, s["index_offset"], s["n_chunks"]).to(device)
    s["payload"] = _words(buf, s["payload_offset"], s["payload_words"]).to(device)
    s["table"] = s["table"].to(device)
    return s


def _check_args(index: torch.Tensor, payload: torch.Tensor, table: torch.Tensor, coder: int, n_symbols: int,
                chunk_symbols: int) -> int:
    if coder not in (1, 2):
        raise CodecError(f"decode_symbols: coder must be 1 (huffman) or 2 (rans), got {coder}")
    if chunk_symbols < 32 or chunk_symbols % 32 or chunk_symbols > _C.MAX_CHUNK_SYMBOLS:
        raise CodecError(f"decode_symbols: chunk_symbols must be a multiple of 32 in [32, {_C.MAX_CHUNK_SYMBOLS}]")
    if n_symbols < 0:
        raise CodecError("decode_symbols: n_symbols must be >= 0")
    for name, t in (("index", index), ("payload", payload), ("table", table)):
        if t.dtype not in (torch.int32, torch.uint32) or t.dim() != 1:
            raise CodecError(f"decode_symbols: {name} must be a 1-D int32/uint32 tensor")
    n_chunks = -(-n_symbols // chunk_symbols)
    if index.numel() != n_chunks:
        raise CodecError(f"decode_symbols: index has {index.numel()} entries, expected {n_chunks}")
    if table.numel() != 4096:
        raise CodecError("decode_symbols: table must have 4096 entries")
    return n_chunks


@torch.library.custom_op("pycodec::decode_symbols", mutates_args=(), device_types="cuda")
def decode_symbols(index: torch.Tensor, payload: torch.Tensor, table: torch.Tensor, coder: int, n_symbols: int,
                   chunk_symbols: int) -> torch.Tensor:
    """Decodes a stream held on a CUDA device into uint8[n_symbols] on that device."""
    n_chunks = _check_args(index, payload, table, coder, n_symbols, chunk_symbols)
    device = payload.device
    if index.device != device or table.device != device:
        raise CodecError("decode_symbols: index, payload and table must be on the same device")
    if not _C.cuda_compiled():
        raise CodecError("decode_symbols: this pycodec build has no CUDA kernels (built without nvcc)")
    out = torch.empty(n_symbols, dtype=torch.uint8, device=device)
    if n_symbols == 0:
        return out
    index, payload, table = index.contiguous(), payload.contiguous(), table.contiguous()
    # The extension's own (static) CUDA runtime launches on the thread's current device.
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
        _C.cuda_decode(coder, n_symbols, chunk_symbols, n_chunks, index.data_ptr(), payload.data_ptr(),
                       payload.numel(), table.data_ptr(), out.data_ptr(), stream)
    return out


@decode_symbols.register_kernel("cpu")
def _decode_symbols_cpu(index: torch.Tensor, payload: torch.Tensor, table: torch.Tensor, coder: int, n_symbols: int,
                        chunk_symbols: int) -> torch.Tensor:
    raise CodecError("pycodec::decode_symbols runs on CUDA tensors only; "
                     "use pycodec.decode(blob) to decode on the CPU")


@decode_symbols.register_fake
def _decode_symbols_fake(index: torch.Tensor, payload: torch.Tensor, table: torch.Tensor, coder: int, n_symbols: int,
                         chunk_symbols: int) -> torch.Tensor:
    return payload.new_empty((n_symbols,), dtype=torch.uint8)


def decode_cuda(blob: Any, device: Any = "cuda") -> torch.Tensor:
    """Decodes a blob on a CUDA device; returns a uint8 tensor of the stream's shape there.

    Unlike :func:`pycodec.decode` this does not verify the symbol checksum (the GPU path
    trusts streams verified at load time); header, table and index are still validated.
    """
    s = to_device_stream(blob, device)
    out = decode_symbols(s["index"], s["payload"], s["table"], s["coder"], s["n_symbols"], s["chunk_symbols"])
    return out.view(s["shape"])


def gemv_affine_supported(n_symbols: int, chunk_symbols: int, group_size: int, n_rows: int, k: int,
                          batch: int) -> bool:
    """Whether the fused kernel takes this shape (mirrors cuda::gemv_affine_supported)."""
    return (k >= GEMV_ALIGN and k % GEMV_ALIGN == 0 and chunk_symbols % k == 0 and n_symbols == n_rows * k
            and 1 <= batch <= GEMV_MAX_BATCH and group_size >= GEMV_ALIGN and group_size % 2 == 0)


def _check_gemv_args(index, payload, table, coder, n_symbols, chunk_symbols, scale, zero, group_size, x):
    _check_args(index, payload, table, coder, n_symbols, chunk_symbols)
    if x.dtype != torch.bfloat16 or x.dim() != 2:
        raise CodecError(f"gemv_affine: x must be a 2-D bfloat16 tensor, got {x.dtype} {tuple(x.shape)}")
    batch, k = x.shape
    if scale.dtype != torch.float16 or zero.dtype != torch.float16 or scale.dim() != 2 or zero.dim() != 2:
        raise CodecError("gemv_affine: scale and zero must be 2-D float16 tensors")
    n_rows = scale.shape[0]
    groups = -(-k // group_size) if group_size > 0 else -1
    if scale.shape[1] != groups or tuple(zero.shape) not in ((n_rows, groups), (1, 1)):
        raise CodecError(f"gemv_affine: scale must be [{n_rows}, {groups}] and zero the same or [1, 1], got "
                         f"{tuple(scale.shape)} and {tuple(zero.shape)}")
    if not gemv_affine_supported(n_symbols, chunk_symbols, group_size, n_rows, k, batch):
        raise CodecError("gemv_affine: unsupported shape (needs K % 64 == 0, chunk_symbols % K == 0, "
                         "n_symbols == N * K, batch 1..8, even group_size >= 64)")
    return batch, n_rows, k


@torch.library.custom_op("pycodec::gemv_affine", mutates_args=(), device_types="cuda")
def gemv_affine(index: torch.Tensor, payload: torch.Tensor, table: torch.Tensor, coder: int, n_symbols: int,
                chunk_symbols: int, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                x: torch.Tensor) -> torch.Tensor:
    """y = x @ W.T in fp32 [B, N], W = (q - zero) * scale decoded from the stream inside the kernel.

    x is bf16 [B, K], B <= 8; scale/zero fp16 [N, ceil(K / group_size)] (zero may be [1, 1]).
    Escapes (exact weights) are not part of the stream and are the caller's to add.
    """
    batch, n_rows, k = _check_gemv_args(index, payload, table, coder, n_symbols, chunk_symbols, scale, zero,
                                        group_size, x)
    device = payload.device
    for name, t in (("index", index), ("table", table), ("scale", scale), ("zero", zero), ("x", x)):
        if t.device != device:
            raise CodecError(f"gemv_affine: {name} is on {t.device}, the stream on {device}")
    if not _C.cuda_compiled():
        raise CodecError("gemv_affine: this pycodec build has no CUDA kernels (built without nvcc)")
    y = torch.empty((batch, n_rows), dtype=torch.float32, device=device)
    if n_rows == 0:
        return y
    index, payload, table = index.contiguous(), payload.contiguous(), table.contiguous()
    scale, zero, x = scale.contiguous(), zero.contiguous(), x.contiguous()
    if x.data_ptr() % 4:
        x = x.clone()  # the kernel reads bf16 pairs as 32-bit words
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
        _C.cuda_gemv_affine(coder, n_symbols, chunk_symbols, index.numel(), index.data_ptr(), payload.data_ptr(),
                            payload.numel(), table.data_ptr(), scale.data_ptr(), zero.data_ptr(),
                            tuple(zero.shape) == (1, 1),
                            group_size, n_rows, k, x.data_ptr(), batch, y.data_ptr(), stream)
    return y


@gemv_affine.register_kernel("cpu")
def _gemv_affine_cpu(index: torch.Tensor, payload: torch.Tensor, table: torch.Tensor, coder: int, n_symbols: int,
                     chunk_symbols: int, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                     x: torch.Tensor) -> torch.Tensor:
    raise CodecError("pycodec::gemv_affine runs on CUDA tensors only")


@gemv_affine.register_fake
def _gemv_affine_fake(index: torch.Tensor, payload: torch.Tensor, table: torch.Tensor, coder: int, n_symbols: int,
                      chunk_symbols: int, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                      x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0], scale.shape[0]), dtype=torch.float32)
