"""Whole-tensor entropy coding: ``encode`` / ``decode`` / ``inspect``.

Symbols are uint8 (alphabets up to 256). The stream format is described in
docs/FORMAT.md; every malformed blob raises :class:`pycodec.CodecError`.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _C

CodecError = _C.CodecError
CODERS = ("rans", "huffman")


def _as_uint8_array(symbols: Any) -> np.ndarray:
    if type(symbols).__module__.startswith("torch"):
        if str(symbols.dtype) != "torch.uint8":
            raise CodecError(f"encode expects uint8 symbols, got dtype {symbols.dtype}")
        if symbols.device.type != "cpu":
            raise CodecError(f"encode expects a CPU tensor, got one on {symbols.device}")
        symbols = symbols.detach().contiguous().numpy()
    if not isinstance(symbols, np.ndarray):
        raise CodecError(f"encode expects a uint8 numpy array or torch tensor, got {type(symbols).__name__}")
    if symbols.dtype != np.uint8:
        raise CodecError(f"encode expects uint8 symbols, got dtype {symbols.dtype}")
    # np.ascontiguousarray would turn a 0-d array into shape (1,); keep the shape as given.
    return symbols if symbols.flags.c_contiguous else symbols.copy(order="C")


def _check_chunk_symbols(chunk_symbols: Any) -> int:
    if chunk_symbols is None:
        return 0  # the core's per-coder default
    if isinstance(chunk_symbols, bool) or not isinstance(chunk_symbols, (int, np.integer)):
        raise CodecError(f"chunk_symbols must be an integer, got {chunk_symbols!r}")
    c = int(chunk_symbols)
    if c < 32 or c > _C.MAX_CHUNK_SYMBOLS or c % 32:
        raise CodecError(f"chunk_symbols must be a multiple of 32 in [32, {_C.MAX_CHUNK_SYMBOLS}], got {c}")
    return c


def _as_buffer(blob: Any) -> Any:
    if isinstance(blob, (bytes, bytearray, memoryview)):
        return blob
    if isinstance(blob, np.ndarray) and blob.dtype == np.uint8:
        return np.ascontiguousarray(blob).reshape(-1)
    if type(blob).__module__.startswith("torch"):
        return _as_buffer(blob.detach().cpu().contiguous().numpy())
    raise CodecError(f"a pycodec stream must be bytes or a uint8 array, got {type(blob).__name__}")


def encode(symbols: Any, coder: str = "rans", chunk_symbols: int | None = None, threads: int = 0) -> bytes:
    """Entropy-code a uint8 array (numpy or CPU torch tensor, any shape).

    ``chunk_symbols``: symbols per independently decodable chunk (multiple of 32,
    at most 2**20); ``None`` picks the coder's default. ``threads=0`` uses every core.
    """
    if coder not in CODERS:
        raise CodecError(f"unknown coder {coder!r}: expected one of {CODERS}")
    arr = _as_uint8_array(symbols)
    return _C.encode(arr, list(arr.shape), coder, _check_chunk_symbols(chunk_symbols), int(threads))


def decode(blob: Any, threads: int = 0) -> np.ndarray:
    """Decode a stream back to a uint8 array of its original shape (checksum verified)."""
    buf = _as_buffer(blob)
    info = _C.info(buf)
    out = np.empty(info["shape"], dtype=np.uint8)
    _C.decode_into(buf, out, int(threads))
    return out


def entropy_bits(counts: Any) -> float:
    """Empirical order-0 entropy in bits per symbol of a histogram."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total == 0:
        return 0.0
    p = c[c > 0] / total
    return float(-(p * np.log2(p)).sum())


def inspect(blob: Any, threads: int = 0) -> dict:
    """Describe a stream: coder, shape, sizes, bits per symbol and the symbols' entropy.

    Decodes chunk by chunk (never the whole tensor at once) to verify the checksum
    and measure ``entropy_bits_per_symbol``.
    """
    buf = _as_buffer(blob)
    info = dict(_C.info(buf))
    counts = _C.histogram(buf, int(threads))
    n = info["n_symbols"]
    total_bits = 8 * info["total_bytes"]
    info["bits_per_symbol"] = total_bits / n if n else math.nan
    info["side_bits_per_symbol"] = info["side_bits"] / n if n else math.nan
    info["entropy_bits_per_symbol"] = entropy_bits(counts)
    info["distinct_symbols"] = int(np.count_nonzero(counts))
    return info
