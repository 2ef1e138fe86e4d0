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
# "huffman" writes format version 2 (windowed lanes, what the GPU path decodes); "rans"
# writes version 1 (interleaved rANS: a hair smaller, CPU-friendly, decoded on a GPU only
# through the legacy symbol decoder).
CODERS = ("huffman", "rans")
SPLITS = ("smallest", "byte")  # lossless mode's cut of a float (encode_split)
DEFAULT_CODER = "huffman"


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


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CodecError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _check_chunk_symbols(chunk_symbols: Any, coder: str) -> int:
    if chunk_symbols is None:
        return 0  # chosen by the encoder
    c = _check_int("chunk_symbols", chunk_symbols)
    if coder == "huffman" and not 1 <= c <= _C.MAX_CHUNK_SYMBOLS_V2:
        raise CodecError(f"chunk_symbols must be in [1, {_C.MAX_CHUNK_SYMBOLS_V2}] for huffman, got {c}")
    if coder == "rans" and (c < 32 or c > _C.MAX_CHUNK_SYMBOLS or c % 32):
        raise CodecError(f"chunk_symbols must be a multiple of 32 in [32, {_C.MAX_CHUNK_SYMBOLS}] for rans, got {c}")
    return c


def _check_lanes(lanes: Any, coder: str) -> int:
    if lanes is None:
        return 0  # chosen by the encoder
    n = _check_int("lanes", lanes)
    if coder != "huffman" or not 1 <= n <= 32:
        raise CodecError(f"lanes must be in [1, 32] and applies to the huffman coder only, got {lanes!r} "
                         f"with coder {coder!r}")
    return n


def _as_buffer(blob: Any) -> Any:
    if isinstance(blob, (bytes, bytearray, memoryview)):
        return blob
    if isinstance(blob, np.ndarray) and blob.dtype == np.uint8:
        return np.ascontiguousarray(blob).reshape(-1)
    if type(blob).__module__.startswith("torch"):
        return _as_buffer(blob.detach().cpu().contiguous().numpy())
    raise CodecError(f"a pycodec stream must be bytes or a uint8 array, got {type(blob).__name__}")


def encode(symbols: Any, coder: str = DEFAULT_CODER, chunk_symbols: int | None = None, threads: int = 0,
           lanes: int | None = None) -> bytes:
    """Entropy-code a uint8 array (numpy or CPU torch tensor, any shape).

    ``chunk_symbols``: symbols per independently decodable chunk; ``lanes``: bit windows per
    chunk (huffman only, 1..32). ``None`` lets the encoder choose: whole rows (the last
    dimension) per chunk, enough chunks and lanes for a GPU, side information near 1%.
    ``threads=0`` uses every core.
    """
    if coder not in CODERS:
        raise CodecError(f"unknown coder {coder!r}: expected one of {CODERS}")
    arr = _as_uint8_array(symbols)
    return _C.encode(arr, list(arr.shape), coder, _check_chunk_symbols(chunk_symbols, coder), int(threads),
                     _check_lanes(lanes, coder))


def encode_split(bits: np.ndarray, coder: str = DEFAULT_CODER, chunk_symbols: int | None = None,
                 threads: int = 0, split: str = "smallest") -> tuple[int, list[int], np.ndarray, np.ndarray, np.ndarray]:
    """Lossless mode's split of float bit patterns (a C-contiguous uint16 or uint32 array, any
    shape: bf16/fp16 or fp32 bits) and the stream of its symbols, in one pass over the data.

    Returns ``(top, values, counts, stream, raw)``: what ``_C.split_float`` returns, the symbols'
    histogram (uint64 [256]) and, as uint8 arrays, ``encode(symbols, ...)``'s bytes and the raw
    bits. The symbols themselves are never made whole: each chunk's are split in cache as it is
    coded (codec.h, encode_split).

    split: ``"smallest"`` cuts each tensor at the top bits that make it smallest (8..12);
    ``"byte"`` cuts at 8 and makes every top byte its own symbol (``values`` is 0..255), so a
    16-bit weight is its symbol byte and its raw byte: about half the GPU kernels' instructions
    per weight for ~0.15 bits a weight more (split.h)."""
    if split not in SPLITS:
        raise CodecError(f"unknown split {split!r}: expected one of {SPLITS}")
    if coder not in CODERS:
        raise CodecError(f"unknown coder {coder!r}: expected one of {CODERS}")
    if not isinstance(bits, np.ndarray) or bits.dtype not in (np.uint16, np.uint32) or not bits.flags.c_contiguous:
        raise CodecError("encode_split expects a C-contiguous uint16 or uint32 numpy array of float bit patterns")
    return _C.encode_split(bits, 8 * bits.itemsize, list(bits.shape), coder, _check_chunk_symbols(chunk_symbols, coder),
                           int(threads), split_top=_C.BYTE_SPLIT_TOP if split == "byte" else 0)


def encoded_size(symbols: Any, coder: str = DEFAULT_CODER, chunk_symbols: int | None = None, threads: int = 0,
                 lanes: int | None = None) -> int:
    """len(encode(...)) for the same arguments, without writing the stream: format v2 (Huffman)
    finds each chunk's size from its code lengths alone, about a third of an encode's work. For
    a search over quantization steps that keeps only the stream it picks."""
    if coder not in CODERS:
        raise CodecError(f"unknown coder {coder!r}: expected one of {CODERS}")
    arr = _as_uint8_array(symbols)
    return int(_C.encoded_size(arr, list(arr.shape), coder, _check_chunk_symbols(chunk_symbols, coder), int(threads),
                               _check_lanes(lanes, coder)))


def decode(blob: Any, threads: int = 0) -> np.ndarray:
    """Decode a stream back to a uint8 array of its original shape (checksum verified)."""
    buf = _as_buffer(blob)
    info = _C.info(buf)
    out = np.empty(info["shape"], dtype=np.uint8)
    _C.decode_into(buf, out, int(threads))
    return out


DECODE_TABLE_ENTRIES = 4096  # _C.decode_table: 4096 uint32 entries, 256 code lengths, 4096-byte count table


def code_lengths(blob: Any) -> np.ndarray:
    """The Huffman code length of every symbol of a stream (uint8 [256]; zeros for rANS and absent symbols)."""
    table = np.frombuffer(_C.decode_table(_as_buffer(blob)), dtype=np.uint8)
    return table[4 * DECODE_TABLE_ENTRIES: 4 * DECODE_TABLE_ENTRIES + 256].copy()


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
    and measure ``entropy_bits_per_symbol``. For Huffman streams ``code_bits`` is the sum
    of the symbols' code lengths and ``overhead_bits`` everything else in the blob (header,
    table, index, lane padding): the layout's exact side information.
    """
    buf = _as_buffer(blob)
    info = dict(_C.info(buf))
    counts = np.asarray(_C.histogram(buf, int(threads)), dtype=np.float64)
    n = info["n_symbols"]
    total_bits = 8 * info["total_bytes"]
    info["bits_per_symbol"] = total_bits / n if n else math.nan
    info["side_bits_per_symbol"] = info["side_bits"] / n if n else math.nan
    info["entropy_bits_per_symbol"] = entropy_bits(counts)
    info["distinct_symbols"] = int(np.count_nonzero(counts))
    if info["coder"] == "huffman":
        lengths = code_lengths(buf).astype(np.float64)
        info["code_bits"] = int(counts @ lengths)
        info["overhead_bits"] = total_bits - info["code_bits"]
    return info
