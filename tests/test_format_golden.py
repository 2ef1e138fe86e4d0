"""Pinned bytes: streams and lossless splits of fixed inputs must come out byte for byte as
they did when these hashes were taken (2026-11-30, before the encoder's branchless bit writer
and the parallel split). A change to the encoder or the split that alters a single bit of what
is stored fails here, even where the round trips still pass; a deliberate format change updates
the hashes with a new format version."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

import pycodec
from pycodec import _C


def mixed(n: int, salt: int) -> np.ndarray:
    """32-bit pseudo-random words by integer arithmetic only (the same on every platform and
    numpy version, unlike a Generator's streams)."""
    x = (np.arange(n, dtype=np.uint64) + np.uint64(salt)) * np.uint64(0x9E3779B97F4A7C15)
    x ^= x >> np.uint64(29)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(32)
    return (x & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def geometric(n: int, salt: int) -> np.ndarray:
    """Symbols 0..30, symbol k with probability ~2^-(k+1): code lengths 1 to 12."""
    u = mixed(n, salt)
    return sum((u < np.uint32(1 << (32 - k))).astype(np.uint8) for k in range(1, 31)).astype(np.uint8)


STREAMS = {
    "geometric_1d": (lambda: geometric(100_003, 1), {},
                     "4767f7f0003dab1539a7a9b2938d9962d4729554022ab1c7064ee16e2970e65b"),
    "rows_2d": (lambda: (geometric(300 * 517, 2) * 3 + (mixed(300 * 517, 3) % 3).astype(np.uint8)).reshape(300, 517),
                {}, "9ff4582220566b456e99064a901e57646e5046617dd01842de8e279460e1952c"),
    "uniform_bytes": (lambda: (mixed(70_001, 4) & 0xFF).astype(np.uint8), {},
                      "a4f077653091ed0c886e8636486d31b72405ef5ebffd1fc614ce235db17b0788"),
    "skewed_lanes": (lambda: np.where(mixed(50_000, 5) % 10 < 9, 7, mixed(50_000, 6) & 0xFF).astype(np.uint8),
                     {"lanes": 7, "chunk_symbols": 999},
                     "1dd6b203a5227256f1fe49bd0ad25fc6c9d163f398947e8d6325e41d1f39c13a"),
    "rans": (lambda: geometric(100_003, 7), {"coder": "rans"},
             "97d91b00521e2dc7ed0a2c467e826464a7dfbd72f2b8928e0ec7f80d95ebdac8"),
}


@pytest.mark.parametrize("name", sorted(STREAMS))
@pytest.mark.parametrize("threads", [1, 2])
def test_stream_bytes_are_pinned(name, threads):
    make, kwargs, digest = STREAMS[name]
    symbols = make()
    blob = pycodec.encode(symbols, threads=threads, **kwargs)
    assert hashlib.sha256(blob).hexdigest() == digest
    np.testing.assert_array_equal(pycodec.decode(blob), symbols)


def bf16_like(n: int) -> np.ndarray:
    exponent_mantissa = np.uint32(0x3C00) + (geometric(n, 8).astype(np.uint32) << 7) % 0x800 + (mixed(n, 9) & 0x7F)
    return exponent_mantissa.astype(np.uint16) | ((mixed(n, 10) & 1).astype(np.uint16) << 15)


def fp32_like(n: int) -> np.ndarray:
    return ((mixed(n, 11) & 0x807FFFFF) | (np.uint32(118 << 23) + ((geometric(n, 12).astype(np.uint32) % 16) << 23))
            ).astype(np.uint32)


SPLITS = {
    "split_16": (lambda: bf16_like(65_541), 16, 9, 29,
                 "194b947ea8d374870e2ce02eed454757e45f64db9b98ae90168d1118ef3767a3"),
    "split_32": (lambda: fp32_like(40_009), 32, 9, 27,
                 "4510eb02da8f611c18fe0ac23385fa59e4a291c3777761e2e5950a508dd2f5cf"),
}


@pytest.mark.parametrize("name", sorted(SPLITS))
@pytest.mark.parametrize("threads", [1, 2])
def test_split_bytes_are_pinned(name, threads):
    make, width, want_top, want_values, digest = SPLITS[name]
    bits = make()
    top, values, symbols, raw = _C.split_float(bits, width, threads)
    assert (top, len(values)) == (want_top, want_values)
    assert hashlib.sha256(np.asarray(values, np.uint32).tobytes() + symbols + raw).hexdigest() == digest
    out = np.empty_like(bits)
    _C.merge_split(symbols, values, top, raw, out)
    np.testing.assert_array_equal(out, bits)
