"""Hostile input: every malformed blob must raise CodecError, never crash, hang or return data.

Mutations are applied to real streams of every kind with small chunks (many chunks,
many index entries): format v2 windowed Huffman ("huffman", what pycodec.encode writes),
v1 rANS and the legacy v1 Huffman layout ("huffman-v1"). Some mutations also recompute the header checksum (meta_hash)
with an independent Python implementation of hash64 (docs/FORMAT.md), so that the
validation *behind* the checksum (field ranges, table, index, payload, symbol checksum)
is exercised too, not only the checksum itself.
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import pycodec
from pycodec import CodecError
from pycodec import _C as native

CODERS = ("huffman", "rans", "huffman-v1")
SEED = 20240611
# Every decode error names what is wrong; these are the words the core uses.
KNOWN_WORDS = ("truncated", "magic", "version", "header", "checksum", "table", "index", "corrupt")
MAX_DECODE_SECONDS = 1.0  # per call; real decodes of these blobs take microseconds

# ----------------------------------------------------------------------------- hash64

_M64 = (1 << 64) - 1
_A, _B, _C = 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9


def _mix(acc: int, word: int) -> int:
    acc = ((acc ^ word) * _B) & _M64
    return acc ^ (acc >> 29)


def hash64(data: bytes, seed: int = 0) -> int:
    """Python transcription of csrc/codec/hash.h (the normative definition in docs/FORMAT.md)."""
    n = len(data)
    lanes = [(seed + _A * (i + 1)) & _M64 for i in range(4)]
    pos = 0
    while pos + 32 <= n:
        for i in range(4):
            lanes[i] = _mix(lanes[i], int.from_bytes(data[pos + 8 * i : pos + 8 * i + 8], "little"))
        pos += 32
    h = (n * _C) & _M64
    for lane in lanes:
        h = _mix(h, lane)
    while pos + 8 <= n:
        h = _mix(h, int.from_bytes(data[pos : pos + 8], "little"))
        pos += 8
    h = _mix(h, int.from_bytes(data[pos:n], "little") ^ ((n - pos) << 56))
    h ^= h >> 33
    h = (h * _C) & _M64
    h ^= h >> 29
    h = (h * _A) & _M64
    return h ^ (h >> 32)


def layout(blob: bytes, ndim: int | None = None) -> dict:
    """Offsets of a blob's sections, computed from its (claimed) header fields."""
    ndim = blob[7] if ndim is None else ndim
    version = struct.unpack_from("<H", blob, 4)[0]
    n, cs = struct.unpack_from("<QI", blob, 8)
    tb = struct.unpack_from("<I" if version == 1 else "<H", blob, 20)[0]
    pw = struct.unpack_from("<Q", blob, 24)[0]
    table = 40 + 8 * ndim + 8
    index = table + ((tb + 3) & ~3)
    n_chunks = -(-n // cs) if cs else 0
    if version == 1:
        sizes, index_bytes = index, 4 * n_chunks
    else:
        sizes = index + 4 * -(-n_chunks // 16)
        index_bytes = sizes - index + ((2 * n_chunks + 3) & ~3)
    return dict(version=version, ndim=ndim, n=n, cs=cs, tb=tb, pw=pw, table=table, index=index, sizes=sizes,
                n_chunks=n_chunks, payload=index + index_bytes)


def encode(x, coder, chunk, threads=1):
    if coder == "huffman-v1":
        x = np.ascontiguousarray(x)
        return native.encode(x, list(x.shape), "huffman", chunk, threads, 0, 1)
    return pycodec.encode(x, coder=coder, chunk_symbols=chunk, threads=threads)


def rehash(blob: bytes, ndim: int | None = None) -> bytes:
    """Recompute meta_hash (as an encoder would) for a blob whose sections are self-consistent.

    Uses the ndim of the original layout when the ndim byte itself was mutated.
    """
    b = bytearray(blob)
    lay = layout(blob, ndim)
    end = min(lay["payload"], len(b))
    h0 = hash64(bytes(b[: 40 + 8 * lay["ndim"]]))
    h = hash64(bytes(b[lay["table"] : end]), h0)
    struct.pack_into("<Q", b, 40 + 8 * lay["ndim"], h)
    return bytes(b)


# ----------------------------------------------------------------------------- fixtures


def _symbols():
    rng = np.random.default_rng(SEED)
    gauss = np.clip(np.round(rng.normal(128, 3, (40, 50))), 0, 255).astype(np.uint8)
    all256 = rng.integers(0, 256, 1500, dtype=np.uint8)
    skew = np.where(rng.random(1300) < 0.97, 0, rng.integers(0, 256, 1300)).astype(np.uint8).reshape(13, 10, 10)
    const = np.full((7, 93), 11, np.uint8)
    small = np.clip(np.round(rng.normal(8, 2, 150)), 0, 255).astype(np.uint8)
    return {"gauss": (gauss, 64), "all256": (all256, 96), "skew": (skew, 32), "const": (const, 128),
            "small": (small, 32)}


SYMBOLS = _symbols()
BLOBS = {
    (coder, name): (x, encode(x, coder, chunk))
    for coder in CODERS
    for name, (x, chunk) in SYMBOLS.items()
}


def test_fixture_blobs_are_valid():
    for (coder, name), (x, blob) in BLOBS.items():
        np.testing.assert_array_equal(pycodec.decode(blob), x)
        assert rehash(blob) == blob, "Python hash64 must agree with the C++ core"
        lay = layout(blob)
        assert lay["n_chunks"] >= 5, (coder, name)
        assert lay["payload"] + 4 * lay["pw"] == len(blob)
        symbols_hash = hash64(b"".join(
            struct.pack("<Q", hash64(x.reshape(-1)[i : i + lay["cs"]].tobytes())) for i in range(0, x.size, lay["cs"])
        ))
        assert struct.unpack_from("<Q", blob, 32)[0] == symbols_hash


# ----------------------------------------------------------------------------- helpers


class Stats:
    def __init__(self):
        self.rejected = 0
        self.skipped_identical = 0


def expect_rejected(blob: bytes, original: bytes | None, stats: Stats, words=KNOWN_WORDS, threads=1,
                    also_inspect=False) -> bool:
    """Asserts that decoding `blob` raises CodecError with a clear message.

    A mutation that left the blob byte-identical to `original` is skipped (not counted) and
    returns False; `original=None` means `blob` is not derived from a valid stream.
    """
    if original is not None and blob == original:
        stats.skipped_identical += 1
        return False
    calls = [lambda: pycodec.decode(blob, threads=threads)]
    if also_inspect:
        calls.append(lambda: pycodec.inspect(blob, threads=threads))
    for call in calls:
        t0 = time.perf_counter()
        try:
            out = call()
        except CodecError as e:
            msg = str(e).lower()
            assert any(w in msg for w in words), f"unclear message {msg!r}, expected one of {words}"
        else:
            raise AssertionError(f"mutated blob was accepted (len {len(blob)}): returned {type(out).__name__}")
        dt = time.perf_counter() - t0
        assert dt < MAX_DECODE_SECONDS, f"decode of a hostile blob took {dt:.2f}s"
    stats.rejected += 1
    return True


def ids(params):
    return [f"{c}-{n}" for c, n in params]


ALL_BLOBS = sorted(BLOBS)

# ----------------------------------------------------------------------------- mutations


@pytest.mark.parametrize("key", ALL_BLOBS, ids=ids(ALL_BLOBS))
def test_random_bit_flips(key):
    x, blob = BLOBS[key]
    rng = np.random.default_rng([SEED, 1, ALL_BLOBS.index(key)])
    stats = Stats()
    n_bits = 8 * len(blob)
    # Every bit of a small blob once, else a random sample; plus some multi-bit flips.
    positions = range(n_bits) if n_bits <= 8000 else rng.choice(n_bits, 4000, replace=False)
    for i, bit in enumerate(positions):
        b = bytearray(blob)
        b[bit // 8] ^= 1 << (bit % 8)
        expect_rejected(bytes(b), blob, stats, threads=1 + i % 2, also_inspect=i % 7 == 0)
    for i in range(300):
        b = bytearray(blob)
        for bit in rng.choice(n_bits, int(rng.integers(2, 9)), replace=False):
            b[bit // 8] ^= 1 << (bit % 8)
        expect_rejected(bytes(b), blob, stats, threads=1 + i % 2)
    assert stats.skipped_identical == 0
    assert stats.rejected >= min(n_bits, 4000) + 300


@pytest.mark.parametrize("key", ALL_BLOBS, ids=ids(ALL_BLOBS))
def test_random_byte_overwrites(key):
    x, blob = BLOBS[key]
    rng = np.random.default_rng([SEED, 2, ALL_BLOBS.index(key)])
    stats = Stats()
    lay = layout(blob)
    for i in range(1500):
        b = bytearray(blob)
        k = int(rng.integers(1, 9))
        if i % 3 == 0:  # concentrate on the header, table and index
            where = rng.integers(0, lay["payload"], k)
        else:
            where = rng.integers(0, len(b), k)
        for p in where:
            b[p] = int(rng.integers(0, 256)) if i % 5 else rng.choice([0x00, 0xFF])
        expect_rejected(bytes(b), blob, stats, threads=1 + i % 2, also_inspect=i % 11 == 0)
    assert stats.rejected + stats.skipped_identical == 1500
    assert stats.rejected >= 1400


@pytest.mark.parametrize("coder", CODERS)
def test_truncation_at_every_length(coder):
    x, blob = BLOBS[(coder, "small")]
    assert len(blob) < 1000
    stats = Stats()
    for cut in range(len(blob)):
        expect_rejected(blob[:cut], blob, stats, words=("truncated",), also_inspect=cut % 5 == 0)
    assert stats.rejected == len(blob)


@pytest.mark.parametrize("key", ALL_BLOBS, ids=ids(ALL_BLOBS))
def test_truncation_random_and_aligned(key):
    x, blob = BLOBS[key]
    rng = np.random.default_rng([SEED, 3, ALL_BLOBS.index(key)])
    stats = Stats()
    cuts = set(rng.integers(0, len(blob), 100).tolist()) | {len(blob) - k for k in (1, 2, 3, 4, 8, 128)}
    cuts |= set(range(0, 64))
    for cut in sorted(cuts):
        expect_rejected(blob[:cut], blob, stats, words=("truncated",))
    # Dropping bytes from the middle (length mismatch elsewhere) is caught as well.
    for _ in range(100):
        a = int(rng.integers(0, len(blob)))
        k = int(rng.integers(1, 17))
        expect_rejected(blob[:a] + blob[a + k :], blob, stats)
    assert stats.rejected >= len(cuts) + 90


@pytest.mark.parametrize("key", ALL_BLOBS, ids=ids(ALL_BLOBS))
def test_appended_and_inserted_garbage(key):
    x, blob = BLOBS[key]
    rng = np.random.default_rng([SEED, 4, ALL_BLOBS.index(key)])
    stats = Stats()
    for k in list(range(1, 17)) + [31, 32, 64, 1000, 4096]:
        for garbage in (bytes(k), rng.integers(0, 256, k, dtype=np.uint8).tobytes(), blob[:k]):
            expect_rejected(blob + garbage, blob, stats, words=("header", "truncated"))
    for _ in range(100):
        a = int(rng.integers(0, len(blob) + 1))
        expect_rejected(blob[:a] + rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
                        + blob[a:], blob, stats)
    # Two valid streams glued together are not one valid stream.
    expect_rejected(blob + blob, blob, stats)
    assert stats.rejected >= 21 * 3 + 95


def _set(blob: bytes, offset: int, fmt: str, value) -> bytes:
    b = bytearray(blob)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


# (name, offset, struct format, value, words expected in the message when the header
# checksum is left stale, words expected once meta_hash has been recomputed)
ABSURD_COMMON = [
    ("n_symbols=10**15", 8, "<Q", 10**15, ("truncated", "checksum"), ("truncated",)),
    ("n_symbols=2**64-1", 8, "<Q", 2**64 - 1, ("truncated", "checksum"), ("truncated",)),
    ("n_symbols=0", 8, "<Q", 0, ("header", "index", "checksum"), ("header", "index")),
    ("n_symbols+1", 8, "<Q", None, ("truncated", "header", "checksum"), ("truncated", "header", "index")),
    ("chunk_symbols=0", 16, "<I", 0, ("header",), ("header",)),
    ("chunk_symbols=2**31", 16, "<I", 2**31, ("header",), ("header",)),
    ("chunk_symbols=2**32-32", 16, "<I", 2**32 - 32, ("header",), ("header",)),
    ("ndim=200", 7, "<B", 200, ("header",), ("header",)),
    ("ndim=9", 7, "<B", 9, ("header",), ("header",)),
    ("ndim=255", 7, "<B", 255, ("header",), ("header",)),
    ("ndim+1", 7, "<B", None, ("header", "truncated", "checksum"), ("header", "truncated", "checksum")),
    ("payload_words=huge", 24, "<Q", 2**64 - 1, ("truncated",), ("truncated",)),
    ("payload_words=2**40", 24, "<Q", 2**40, ("truncated",), ("truncated",)),
    ("payload_words=0", 24, "<Q", 0, ("header", "truncated"), ("header", "truncated")),
    ("payload_words-1", 24, "<Q", None, ("header",), ("header",)),
    ("coder=0", 6, "<B", 0, ("header",), ("header",)),
    ("coder=3", 6, "<B", 3, ("header",), ("header",)),
    ("symbols_hash^1", 32, "<Q", None, ("checksum",), ("checksum",)),
    ("magic=PYCE", 0, "4s", b"PYCE", ("magic",), ("magic",)),
    ("magic=zero", 0, "4s", bytes(4), ("magic",), ("magic",)),
    ("magic=lower", 0, "4s", b"pycd", ("magic",), ("magic",)),
    ("version=0", 4, "<H", 0, ("version",), ("version",)),
    ("version=3", 4, "<H", 3, ("version",), ("version",)),
    ("version=0xFFFF", 4, "<H", 0xFFFF, ("version",), ("version",)),
    ("version=0x0101", 4, "<H", 0x0101, ("version",), ("version",)),
    ("shape0=0", 40, "<Q", 0, ("checksum",), ("header",)),
    ("shape0=2**63", 40, "<Q", 2**63, ("checksum",), ("header",)),
    ("shape0+1", 40, "<Q", None, ("checksum",), ("header",)),
]
ABSURD_V1 = [
    ("chunk_symbols=31", 16, "<I", 31, ("header",), ("header",)),
    ("chunk_symbols=33", 16, "<I", 33, ("header",), ("header",)),
    ("chunk_symbols=2**20+32", 16, "<I", 2**20 + 32, ("header",), ("header",)),
    ("chunk_symbols=2**20", 16, "<I", 2**20, ("header", "truncated", "checksum"), ("header", "truncated", "index", "corrupt")),
    ("table_bytes=0", 20, "<I", 0, ("header",), ("header",)),
    ("table_bytes=huge", 20, "<I", 2**32 - 1, ("header",), ("header",)),
    ("table_bytes=1025", 20, "<I", 1025, ("header",), ("header",)),
    ("table_bytes=1024", 20, "<I", 1024, ("truncated", "header", "checksum"), ("truncated", "header", "table")),
    ("coder=swap", 6, "<B", None, ("checksum",), ("table",)),
    ("version=2", 4, "<H", 2, ("header",), ("header",)),  # a v1 header read as v2: lanes byte 0
]
ABSURD_V2 = [
    ("chunk_symbols=1", 16, "<I", 1, ("truncated", "header", "checksum"), ("truncated", "header", "index")),
    ("chunk_symbols=2**17+1", 16, "<I", 2**17 + 1, ("header",), ("header",)),
    ("chunk_symbols=2**20", 16, "<I", 2**20, ("header",), ("header",)),
    ("table_bytes=0", 20, "<H", 0, ("header",), ("header",)),
    ("table_bytes=0xFFFF", 20, "<H", 0xFFFF, ("header",), ("header",)),
    ("table_bytes=1025", 20, "<H", 1025, ("header",), ("header",)),
    ("table_bytes=1024", 20, "<H", 1024, ("truncated", "header", "checksum"), ("truncated", "header", "table")),
    ("lanes=0", 22, "<B", 0, ("header",), ("header",)),
    ("lanes=33", 22, "<B", 33, ("header",), ("header",)),
    ("lanes=255", 22, "<B", 255, ("header",), ("header",)),
    ("lanes+1", 22, "<B", None, ("checksum",), ("corrupt", "checksum", "table")),
    ("reserved=1", 23, "<B", 1, ("header",), ("header",)),
    ("coder=2", 6, "<B", 2, ("header",), ("header",)),
    ("version=1", 4, "<H", 1, ("header",), ("header",)),  # a v2 header read as v1: table_bytes >= 2^16
]
ABSURD_CASES = [(c, f) for c in CODERS for f in ABSURD_COMMON + (ABSURD_V2 if c == "huffman" else ABSURD_V1)]


def _relative_value(name: str, blob: bytes, offset: int, fmt: str):
    cur = struct.unpack_from(fmt, blob, offset)[0]
    if name == "lanes+1":
        return cur % 32 + 1
    if name.endswith("+1"):
        return cur + 1
    if name.endswith("-1"):
        return cur - 1
    if name.endswith("^1"):
        return cur ^ 1
    if name == "coder=swap":
        return 3 - cur
    raise AssertionError(name)


@pytest.mark.parametrize("coder,field", ABSURD_CASES, ids=[f"{c}-{f[0]}" for c, f in ABSURD_CASES])
def test_absurd_header_fields(coder, field):
    name, offset, fmt, value, words_stale, words_rehashed = field
    stats = Stats()
    for key in [(coder, n) for n in SYMBOLS]:
        x, blob = BLOBS[key]
        v = _relative_value(name, blob, offset, fmt) if value is None else value
        if isinstance(v, int) and v < 0:  # payload_words-1 of an empty (constant) payload
            continue
        bad = _set(blob, offset, fmt, v)
        t0 = time.perf_counter()
        expect_rejected(bad, blob, stats, words=words_stale, also_inspect=True)
        # Recompute the header checksum so that the field itself must be caught.
        forged = rehash(bad, ndim=blob[7]) if offset != 0 and offset != 4 else bad
        expect_rejected(forged, blob, stats, words=words_rehashed, also_inspect=True)
        assert time.perf_counter() - t0 < 2 * MAX_DECODE_SECONDS
    assert stats.rejected >= len(SYMBOLS)


@pytest.mark.parametrize("coder", CODERS)
def test_rehashed_table_and_index_mutations(coder):
    """Random changes behind a *valid* header checksum: table, padding, index, payload."""
    rng = np.random.default_rng([SEED, 5, CODERS.index(coder)])
    stats = Stats()
    for name in SYMBOLS:
        x, blob = BLOBS[(coder, name)]
        lay = layout(blob)
        for i in range(120):
            b = bytearray(blob)
            region = i % 3
            if region == 0:  # table and its zero padding
                lo, hi = lay["table"], lay["index"]
            elif region == 1:  # chunk index
                lo, hi = lay["index"], lay["payload"]
            else:  # symbols_hash and payload
                lo, hi = lay["payload"], len(b)
            if lo == hi:  # a v2 constant stream has no payload
                lo, hi = lay["table"], lay["payload"]
            for p in rng.integers(lo, hi, int(rng.integers(1, 4))):
                if i % 2:
                    b[p] ^= 1 << int(rng.integers(0, 8))
                else:
                    b[p] = int(rng.integers(0, 256))
            expect_rejected(rehash(bytes(b)), blob, stats, threads=1 + i % 2, also_inspect=i % 5 == 0)
        # Swapping two index entries or making it decrease must be caught as an index error.
        if lay["n_chunks"] >= 3 and lay["version"] == 1:
            b = bytearray(blob)
            idx = list(struct.unpack_from(f"<{lay['n_chunks']}I", b, lay["index"]))
            idx[1], idx[2] = idx[2], idx[1]
            struct.pack_into(f"<{lay['n_chunks']}I", b, lay["index"], *idx)
            expect_rejected(rehash(bytes(b)), blob, stats, words=("index",))
            idx = list(struct.unpack_from(f"<{lay['n_chunks']}I", blob, lay["index"]))
            idx[-1] = lay["pw"] + 1
            struct.pack_into(f"<{lay['n_chunks']}I", b, lay["index"], *idx)
            expect_rejected(rehash(bytes(b)), blob, stats, words=("index",))
        if lay["n_chunks"] >= 3 and lay["version"] == 2:
            sizes = list(struct.unpack_from(f"<{lay['n_chunks']}H", blob, lay["sizes"]))
            for k, delta in ((1, 1), (0, -1), (lay["n_chunks"] - 1, 1)):
                if sizes[k] + delta < 0:
                    continue
                bad = list(sizes)
                bad[k] += delta  # the sizes no longer add up to the payload
                b = bytearray(blob)
                struct.pack_into(f"<{lay['n_chunks']}H", b, lay["sizes"], *bad)
                expect_rejected(rehash(bytes(b)), blob, stats, words=("index",))
            if sizes[1] != sizes[2]:  # same total: the chunks themselves no longer decode
                bad = list(sizes)
                bad[1], bad[2] = bad[2], bad[1]
                b = bytearray(blob)
                struct.pack_into(f"<{lay['n_chunks']}H", b, lay["sizes"], *bad)
                expect_rejected(rehash(bytes(b)), blob, stats, words=("corrupt", "checksum"))
            b = bytearray(blob)
            struct.pack_into("<I", b, lay["index"], 1)  # chunk 0 must start at word 0
            expect_rejected(rehash(bytes(b)), blob, stats, words=("index",))
            if lay["n_chunks"] > 16:
                b = bytearray(blob)
                struct.pack_into("<I", b, lay["index"] + 4, struct.unpack_from("<I", blob, lay["index"] + 4)[0] + 1)
                expect_rejected(rehash(bytes(b)), blob, stats, words=("index",))
    assert stats.rejected > 0.95 * len(SYMBOLS) * 120


@pytest.mark.parametrize("coder", CODERS)
def test_random_payload_behind_valid_header(coder):
    rng = np.random.default_rng([SEED, 6, CODERS.index(coder)])
    stats = Stats()
    for name in SYMBOLS:
        x, blob = BLOBS[(coder, name)]
        lay = layout(blob)
        for i in range(40):
            payload = rng.integers(0, 256, len(blob) - lay["payload"], dtype=np.uint8)
            if i % 4 == 0:
                payload[:] = 0
            expect_rejected(blob[: lay["payload"]] + payload.tobytes(), blob, stats,
                            words=("corrupt", "checksum"), threads=1 + i % 2)
    # An all-zero payload is the real one for a v1 constant Huffman stream, and a v2 constant
    # stream has no payload at all: skipped, not counted.
    assert stats.rejected + stats.skipped_identical == len(SYMBOLS) * 40
    assert stats.rejected >= (len(SYMBOLS) - (coder == "huffman")) * 38


@pytest.mark.parametrize("coder", CODERS)
def test_leading_payload_slack_rejected(coder):
    x, blob = BLOBS[(coder, "gauss")]
    lay = layout(blob)
    if lay["version"] == 1:
        idx = struct.unpack_from(f"<{lay['n_chunks']}I", blob, lay["index"])
        forged = bytearray(blob[: lay["index"]])
        forged += struct.pack(f"<{lay['n_chunks']}I", *[i + 1 for i in idx])
    else:  # chunk 0 one word longer, at its front: the super offsets stay consistent
        forged = bytearray(blob[: lay["payload"]])
        size0 = struct.unpack_from("<H", forged, lay["sizes"])[0]
        struct.pack_into("<H", forged, lay["sizes"], size0 + 1)
        for k in range(1, -(-lay["n_chunks"] // 16)):
            struct.pack_into("<I", forged, lay["index"] + 4 * k, struct.unpack_from("<I", forged, lay["index"] + 4 * k)[0] + 1)
    forged += b"\xde\xad\xbe\xef" + blob[lay["payload"] :]
    struct.pack_into("<Q", forged, 24, lay["pw"] + 1)
    with pytest.raises(CodecError):
        pycodec.decode(rehash(bytes(forged)))


# ----------------------------------------------------------------------------- random bytes


def test_random_byte_strings():
    rng = np.random.default_rng([SEED, 7])
    stats = Stats()
    for i in range(3000):
        n = int(rng.choice([rng.integers(0, 16), rng.integers(16, 128), rng.integers(128, 4096)]))
        b = bytearray(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        v2 = i % 8 >= 4
        if i % 2 and n >= 8:  # get past the magic and version checks
            b[0:8] = b"PYCD" + bytes([2 if v2 else 1, 0]) + bytes([1 if v2 else 1 + i % 4 // 2, b[7] % 10])
        if i % 4 == 1 and n >= 40:  # plausible sizes too
            struct.pack_into("<QI", b, 8, int(rng.integers(0, 4096)), 32 * int(rng.integers(1, 64)))
            tb = int(rng.choice([2, 129, 32 + 2 * int(rng.integers(1, 256))]))
            if v2:
                struct.pack_into("<HBB", b, 20, tb, int(rng.integers(1, 33)), 0)
            else:
                struct.pack_into("<I", b, 20, tb)
        expect_rejected(bytes(b), None, stats, threads=1 + i % 2, also_inspect=i % 10 == 0)
    assert stats.rejected == 3000


def test_random_byte_strings_with_valid_header_checksum():
    """Random bodies behind self-consistent, correctly hashed headers (forged streams)."""
    rng = np.random.default_rng([SEED, 8])
    stats = Stats()
    for i in range(1500):
        version = 2 if i % 3 == 2 else 1
        coder = 1 if version == 2 else 1 + i % 2
        ndim = int(rng.integers(0, 4))
        shape = [int(rng.integers(1, 40)) for _ in range(ndim)]
        n = int(np.prod(shape)) if ndim else 1
        cs = 32 * int(rng.integers(1, 8)) if version == 1 else int(rng.integers(1, 300))
        n_chunks = -(-n // cs)
        if coder == 1:
            table = bytes([1, int(rng.integers(0, 256))]) if i % 4 == 0 else bytes([0]) + rng.integers(
                0, 256, 128, dtype=np.uint8).tobytes()
        else:
            k = int(rng.integers(1, 40))
            bitmap = np.zeros(256, bool)
            bitmap[rng.choice(256, k, replace=False)] = True
            freqs = rng.multinomial(4096 - k, np.ones(k) / k) + 1 if i % 3 else rng.integers(1, 300, k)
            table = np.packbits(bitmap, bitorder="little").tobytes() + np.asarray(freqs, "<u2").tobytes()
        words_per_chunk = [int(rng.integers(0, 64)) for _ in range(n_chunks)]
        starts = np.cumsum([0] + words_per_chunk[:-1]).astype("<u4") if n_chunks else np.zeros(0, "<u4")
        if version == 1:
            index = starts.tobytes()
            fields = struct.pack("<HBBQIIQQ", 1, coder, ndim, n, cs, len(table), sum(words_per_chunk),
                                 int(rng.integers(0, 2**63)))
        else:
            sizes = np.asarray(words_per_chunk, "<u2").tobytes()
            index = starts[::16].tobytes() + sizes + bytes(-len(sizes) % 4)
            fields = struct.pack("<HBBQIHBBQQ", 2, coder, ndim, n, cs, len(table), int(rng.integers(1, 33)), 0,
                                 sum(words_per_chunk), int(rng.integers(0, 2**63)))
        pw = int(sum(words_per_chunk))
        head = bytearray(b"PYCD" + fields)
        head += b"".join(struct.pack("<Q", s) for s in shape) + bytes(8)
        body = table + bytes(-len(table) % 4) + index + rng.integers(0, 256, 4 * pw, dtype=np.uint8).tobytes()
        blob = rehash(bytes(head + body))
        expect_rejected(blob, None, stats, threads=1 + i % 2, also_inspect=i % 10 == 0)
    assert stats.rejected == 1500


# ----------------------------------------------------------------------------- messages


@pytest.mark.parametrize("coder", CODERS)
def test_error_messages_are_specific(coder):
    x, blob = BLOBS[(coder, "gauss")]
    lay = layout(blob)
    cases = [
        (blob[:20], "truncated"),
        (blob[:-4], "truncated"),
        (b"", "truncated"),
        (b"GZIP" + blob[4:], "magic"),
        (_set(blob, 4, "<H", 3), "version"),
        (_set(blob, 40 + 8 * lay["ndim"], "<Q", 12345), "checksum"),  # meta_hash
        (_set(blob, 32, "<Q", 12345), "checksum"),  # symbols_hash
        (blob + b"\x00" * 4, "header"),
    ]
    b = bytearray(blob)
    b[lay["payload"] + 4 * 40] ^= 0x10
    cases.append((bytes(b), ("corrupt", "checksum")))
    for bad, words in cases:
        words = (words,) if isinstance(words, str) else words
        with pytest.raises(CodecError) as ei:
            pycodec.decode(bad)
        msg = str(ei.value)
        assert msg.startswith("decode: "), msg
        assert any(w in msg.lower() for w in words), (words, msg)
        with pytest.raises(CodecError):
            pycodec.inspect(bad)


# ----------------------------------------------------------------------------- resources

_MEMORY_PROBE = textwrap.dedent(
    r"""
    import resource, struct, sys, time
    import pycodec
    sys.path.insert(0, sys.argv[1])
    from test_codec_hostile import BLOBS, rehash
    # Address space: what is mapped now plus 256 MiB. A decoder that trusted n_symbols
    # (10**15 bytes) or payload_words would fail to allocate instead of raising CodecError.
    with open("/proc/self/statm") as f:
        vm_bytes = int(f.read().split()[0]) * resource.getpagesize()
    limit = vm_bytes + (256 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import numpy as np
    try:
        np.ones(1 << 30, np.uint8)
    except MemoryError:
        pass
    else:
        raise SystemExit("RLIMIT_AS is not effective: the probe would prove nothing")
    worst = 0.0
    for (coder, name), (x, blob) in BLOBS.items():
        for off, fmt, v in [(8, "<Q", 10**15), (8, "<Q", 2**64 - 1), (24, "<Q", 2**62), (20, "<I", 2**32 - 1)]:
            b = bytearray(blob)
            struct.pack_into(fmt, b, off, v)
            for bad in (bytes(b), rehash(bytes(b))):
                for call in (pycodec.decode, pycodec.inspect):
                    t0 = time.perf_counter()
                    try:
                        call(bad)
                    except pycodec.CodecError:
                        pass
                    else:
                        raise SystemExit("accepted")
                    worst = max(worst, time.perf_counter() - t0)
    print("worst_seconds", worst)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses RLIMIT_AS and /proc (Linux only)")
def test_absurd_sizes_fail_fast_without_allocating():
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, here], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    worst = float(proc.stdout.split("worst_seconds")[1])
    assert worst < 0.25, f"absurd header took {worst:.3f}s to reject"


_HISTOGRAM_PROBE = textwrap.dedent(
    r"""
    import resource, sys
    import numpy as np
    from pycodec import _C
    # A valid stream of 2^20 one-symbol chunks: ~2.25 bytes of blob a chunk.
    n = 1 << 20
    symbols = (np.arange(n) % 3).astype(np.uint8)
    import pycodec
    blob = np.frombuffer(pycodec.encode(symbols, chunk_symbols=1), dtype=np.uint8)
    with open("/proc/self/statm") as f:
        vm_bytes = int(f.read().split()[0]) * resource.getpagesize()
    limit = vm_bytes + (256 << 20)  # a histogram per chunk (2 KiB each) needed 2 GiB here
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    counts = _C.histogram(blob, 1)
    assert counts[:3] == [len(range(k, n, 3)) for k in range(3)] and sum(counts) == n, counts[:4]
    print("ok", blob.size)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses RLIMIT_AS and /proc (Linux only)")
def test_histogram_memory_is_not_a_multiple_of_the_stream():
    proc = subprocess.run([sys.executable, "-c", _HISTOGRAM_PROBE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stdout + proc.stderr[-2000:]


def test_affine_matvec_with_kept_tables_is_the_call_without_them():
    """A StreamTables kept between calls (a layer's, every token) must give what opening the stream
    afresh gives: when the stream is another, or the same buffer changed in place (in its
    header, code table, chunk index or payload), refused or not."""
    rng = np.random.default_rng(SEED + 1)
    n, k = 16, 48
    streams = [pycodec.encode(rng.integers(lo, lo + width, (n, k), dtype=np.uint8))
               for lo, width in ((120, 17), (100, 60), (0, 3))]
    scale, zero = np.full((n, 1), 0.01, np.float16), np.full((1, 1), 128.0, np.float16)
    idx, val = np.zeros(0, np.int64), np.zeros(0, np.float32)
    x = rng.standard_normal((1, k)).astype(np.float32)
    payload_offset = native.info(streams[0])["payload_offset"]
    tables = native.StreamTables()

    def outcome(blob, keep):
        y = np.full((1, n), np.nan, np.float32)
        try:
            native.affine_matvec(blob, n, k, k, scale, zero, idx, val, x, y, tables=keep)
        except CodecError as e:
            return str(e)
        return y.tobytes()

    for blob in streams + streams[::-1]:  # other streams, other lengths, through one StreamTables
        assert outcome(blob, tables) == outcome(blob, None)
        assert isinstance(outcome(blob, None), bytes)  # decodes
    buf = np.frombuffer(bytearray(streams[0]), np.uint8)  # one buffer, changed in place
    for _ in range(300):
        buf[:] = np.frombuffer(streams[0], np.uint8)
        assert outcome(buf, tables) == outcome(buf, None)
        head = rng.random() < 0.7  # mostly where the tables come from
        at = int(rng.integers(payload_offset if head else len(buf)))
        buf[at] ^= np.uint8(1 << int(rng.integers(8)))
        assert outcome(buf, tables) == outcome(buf, None)


def test_affine_matvec_refuses_bad_arguments_and_corrupt_streams():
    """The CPU forward's fused decode + matvec: wrong shapes and dtypes are CodecErrors that
    say what is wrong; a corrupt stream is refused or gives numbers, never a crash."""
    rng = np.random.default_rng(SEED)
    n, k = 12, 40
    q = rng.integers(120, 137, (n, k), dtype=np.uint8)
    blob = pycodec.encode(q)
    scale, zero = np.full((n, 1), 0.01, np.float32), np.full((n, 1), 128.0, np.float32)
    idx, val = np.array([5, 100], np.int64), np.array([1.0, -2.0], np.float32)
    x, y = rng.standard_normal((2, k)).astype(np.float32), np.empty((2, n), np.float32)

    def call(**changes):
        args = dict(blob=blob, n=n, k=k, group_size=k, scale=scale, zero=zero, escape_index=idx, escape_value=val,
                    x=x, y=y)
        args.update(changes)
        native.affine_matvec(**args)

    call()
    w = ((q.astype(np.float32) - 128.0) * np.float32(0.01)).reshape(-1)
    w[idx] = val
    np.testing.assert_allclose(y, x @ w.reshape(n, k).T, rtol=1e-5, atol=1e-6)
    call(scale=scale.astype(np.float16), zero=zero.astype(np.float16))  # as packed weights store them
    w16 = ((q.astype(np.float32) - 128.0) * np.float32(np.float16(0.01))).reshape(-1)
    w16[idx] = val
    np.testing.assert_allclose(y, x @ w16.reshape(n, k).T, rtol=1e-5, atol=1e-6)
    bad = {
        "not n x k": dict(n=n + 1, scale=np.full((n + 1, 1), 0.01, np.float32), zero=np.zeros((n + 1, 1), np.float32),
                          y=np.empty((2, n + 1), np.float32)),
        "scale size": dict(scale=scale[:-1]),
        "scale dtype": dict(scale=scale.astype(np.float64)),
        "mixed dtypes": dict(scale=scale.astype(np.float16)),
        "zero dtype": dict(zero=zero.astype(np.int16)),
        "x size": dict(x=x[:, :-1]),
        "y size": dict(y=y[:, :-1]),
        "y dtype": dict(y=np.empty((2, n), np.float16)),
        "escape outside": dict(escape_index=np.array([5, n * k], np.int64)),
        "negative escape": dict(escape_index=np.array([-1, 3], np.int64)),
        "escape dtype": dict(escape_index=idx.astype(np.int32)),
        "escape count": dict(escape_value=val[:1]),
        "zero k": dict(k=0),
    }
    for name, change in bad.items():
        with pytest.raises(CodecError, match="affine_matvec"):
            call(**change)
    for _ in range(200):
        mutated = bytearray(blob)
        mutated[int(rng.integers(len(mutated)))] ^= int(rng.integers(1, 256))
        try:
            call(blob=bytes(mutated))
        except CodecError:
            pass
