"""Lossless mode's float split (csrc/codec/split.h): split_float, merge_split, and decode_split,
which decodes a stream and merges it chunk by chunk. Bit-exact round trips on hostile bit
patterns, every raw width, spans that start mid-byte; refusals that lose nothing."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

import pycodec
from pycodec import CodecError, _C


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(map(str, key)).encode()))


def weights_bits(rng, n: int, kind: str, width: int) -> np.ndarray:
    """Float bit patterns of `width` bits: weight-like, or hostile."""
    dtype = np.uint16 if width == 16 else np.uint32
    if kind == "gauss":
        w = (rng.standard_normal(n) * 0.02).astype(np.float32)
        bits = w.view(np.uint32)
        return (bits >> 16).astype(np.uint16) if width == 16 else bits
    if kind == "uniform":  # every top value: 256 distinct top values at most only for top = 8
        return rng.integers(0, 1 << width, n, dtype=np.uint64).astype(dtype)
    if kind == "specials":  # inf, nan, -0, subnormals, and one value
        pool = [0x7F80, 0xFF80, 0x7FC1, 0x8000, 0x0001, 0x3F80] if width == 16 else \
               [0x7F800000, 0xFF800000, 0x7FC00001, 0x80000000, 0x00000001, 0x3F800000]
        return rng.choice(np.array(pool, dtype), n)
    return np.full(n, 0x3C00 if width == 16 else 0x3F800000, dtype)  # constant


@pytest.fixture(params=["simd", "scalar"])
def merge_path(request):
    """Both CPU merges: AVX-512 VBMI where this CPU has it (else both runs are scalar), and scalar."""
    _C.cpu_simd(request.param == "simd")
    yield request.param
    _C.cpu_simd(True)


def split_blob(bits: np.ndarray, chunk_symbols=None, lanes=None):
    top, values, symbols, raw = _C.split_float(bits, 8 * bits.itemsize)
    blob = pycodec.encode(np.frombuffer(symbols, np.uint8), chunk_symbols=chunk_symbols, lanes=lanes)
    return top, values, blob, np.frombuffer(raw, np.uint8)


@pytest.mark.parametrize("width", [16, 32])
@pytest.mark.parametrize("kind", ["gauss", "uniform", "specials", "constant"])
@pytest.mark.parametrize("n,chunk,lanes", [(1, None, None), (7, None, None), (1000, 13, 3), (4099, 1000, 5),
                                           (20000, None, None), (65537 + 9, 4096, 32)])
def test_decode_split_matches_merge_of_decode(width, kind, n, chunk, lanes, merge_path):
    rng = rng_for(width, kind, n)
    bits = weights_bits(rng, n, kind, width)
    top, values, blob, raw = split_blob(bits, chunk, lanes)
    out = np.empty_like(bits)
    _C.decode_split(blob, values, top, raw, out, 1)
    assert np.array_equal(out, bits)
    merged = np.empty_like(bits)
    _C.merge_split(pycodec.decode(blob), values, top, raw, merged)
    assert np.array_equal(merged, bits)


@pytest.mark.parametrize("width", [16, 32])
@pytest.mark.parametrize("kind", ["gauss", "uniform", "specials", "constant"])
def test_split_counts_are_the_symbols_histogram(width, kind):
    # pack_lossless takes its entropy figure from these instead of counting the symbols again.
    for n in (1, 1000, 300001):
        bits = weights_bits(rng_for(width, kind, n), n, kind, width)
        counts = np.full(256, 7, np.uint64)
        _, values, symbols, _ = _C.split_float(bits, width, 2, counts=counts)
        want = np.bincount(np.frombuffer(symbols, np.uint8), minlength=256)
        assert np.array_equal(counts, want.astype(np.uint64)) and int(counts.sum()) == n
        assert not counts[len(values):].any()
    for bad in (np.zeros(255, np.uint64), np.zeros(256, np.int32), np.zeros(256, np.uint64)[::-1]):
        with pytest.raises(pycodec.CodecError, match="counts"):
            _C.split_float(bits, width, counts=bad)


def test_decode_split_threads_and_misaligned_raw(merge_path):
    bits = weights_bits(rng_for("threads"), 300_001, "gauss", 16)
    top, values, blob, raw = split_blob(bits, chunk_symbols=999)
    misaligned = np.frombuffer(b"\0" + raw.tobytes(), np.uint8)[1:]  # a byte past a word boundary
    assert misaligned.ctypes.data % 4
    for threads in (1, 2, 0):
        out = np.zeros_like(bits)
        _C.decode_split(blob, values, top, misaligned, out, threads)
        assert np.array_equal(out, bits)


def test_vector_merge_is_used_where_the_cpu_has_it():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        flags = None
    if flags is None:
        pytest.skip("no /proc/cpuinfo flags to compare with")
    has = {"avx512f", "avx512bw", "avx512vbmi"} <= set(flags)
    assert _C.cpu_simd() == has
    assert _C.cpu_simd(False) is False
    assert _C.cpu_simd(True) == has


def test_every_top_is_chosen_somewhere():
    """Weight-like data picks a top above 8, uniform bits exactly 8: both raw widths run."""
    tops = {split_blob(weights_bits(rng_for(k), 5000, k, 16))[0] for k in ("gauss", "uniform")}
    assert 8 in tops and max(tops) > 8


def test_decode_split_refuses_inconsistent_inputs(merge_path):
    bits = weights_bits(rng_for("refuse"), 5000, "gauss", 16)
    top, values, blob, raw = split_blob(bits)
    out = np.zeros_like(bits)
    with pytest.raises(CodecError, match="inconsistent"):  # a symbol without a value
        _C.decode_split(blob, values[:-1], top, raw, out)
    with pytest.raises(CodecError, match="inconsistent"):  # raw bits one word short
        _C.decode_split(blob, values, top, raw[:-4], out)
    with pytest.raises(CodecError, match="whole 32-bit words"):
        _C.decode_split(blob, values, top, raw[:-1], out)
    with pytest.raises(CodecError, match="output buffer"):  # out of the wrong length
        _C.decode_split(blob, values, top, raw, out[:-1])
    with pytest.raises(CodecError, match="contiguous"):
        _C.decode_split(blob, values, top, raw, np.zeros(2 * bits.size, np.uint16)[::2])
    with pytest.raises(CodecError, match="contiguous"):
        _C.merge_split(pycodec.decode(blob), values, top, raw, np.zeros(2 * bits.size, np.uint16)[::2])
    corrupt = bytearray(blob)
    corrupt[-3] ^= 0x10
    with pytest.raises(CodecError):
        _C.decode_split(bytes(corrupt), values, top, raw, out)


# ---------------------------------------------------------------------------- encode_split

def separate_split_encode(bits: np.ndarray, coder="huffman", chunk_symbols=None, threads=0):
    """What encode_split must equal: split_float, then encode of its symbols."""
    top, values, symbols, raw = _C.split_float(bits.reshape(-1), 8 * bits.itemsize, threads)
    symbols = np.frombuffer(symbols, np.uint8).reshape(bits.shape)
    blob = pycodec.encode(symbols, coder=coder, chunk_symbols=chunk_symbols, threads=threads)
    return top, values, np.bincount(symbols.reshape(-1), minlength=256).astype(np.uint64), blob, raw


@pytest.mark.parametrize("width", [16, 32])
@pytest.mark.parametrize("kind", ["gauss", "uniform", "specials", "constant"])
@pytest.mark.parametrize("shape,coder,chunk", [
    ((0,), "huffman", None), ((1,), "huffman", None), ((3, 0, 5), "huffman", None),
    ((96, 64), "huffman", None),       # whole rows of 64: chunks on raw words, split chunk by chunk
    ((150, 100), "huffman", None),     # rows of 100: chunks off raw words, the tensor split first
    ((4099,), "huffman", 1000), ((4099,), "huffman", 1024), ((300001,), "huffman", None),
    ((2, 3, 4000), "huffman", 96), ((5000,), "rans", None), ((70000,), "rans", 4096)])
def test_encode_split_equals_split_then_encode(width, kind, shape, coder, chunk):
    bits = weights_bits(rng_for("encode_split", width, kind, shape), int(np.prod(shape)), kind, width).reshape(shape)
    want = separate_split_encode(bits, coder, chunk)
    for threads in (1, 2, 0):
        top, values, counts, blob, raw = pycodec.codec.encode_split(bits, coder, chunk, threads)
        assert (top, values) == want[:2]
        assert counts.dtype == np.uint64 and np.array_equal(counts, want[2])
        assert blob.dtype == np.uint8 and blob.tobytes() == want[3]
        assert raw.dtype == np.uint8 and raw.tobytes() == want[4]
    out = np.empty_like(bits)
    _C.decode_split(blob, values, top, raw, out.reshape(-1))
    assert np.array_equal(out, bits)


@pytest.mark.parametrize("width", [16, 32])
@pytest.mark.parametrize("kind", ["gauss", "uniform", "specials", "constant"])
@pytest.mark.parametrize("shape,chunk", [((0,), None), ((1,), None), ((96, 64), None), ((150, 100), None),
                                         ((4099,), 1000)])
def test_byte_split_numbers_every_top_byte_as_itself(width, kind, shape, chunk):
    """split="byte": top 8 whatever the data, values 0..255 (symbol = the float's top byte), the
    histogram of top bytes, a bit-exact round trip; the same as split_float with BYTE_SPLIT_TOP."""
    bits = weights_bits(rng_for("byte_split", width, kind, shape), int(np.prod(shape)), kind, width).reshape(shape)
    top, values, counts, blob, raw = pycodec.codec.encode_split(bits, "huffman", chunk, split="byte")
    assert top == _C.BYTE_SPLIT_TOP == 8 and values == list(range(256))
    tops = (bits.reshape(-1) >> (width - 8)).astype(np.int64)
    assert np.array_equal(counts, np.bincount(tops, minlength=256).astype(np.uint64))
    assert np.array_equal(pycodec.decode(blob).reshape(-1), tops.astype(np.uint8))
    out = np.empty_like(bits)
    _C.decode_split(blob, values, top, raw, out.reshape(-1))
    assert np.array_equal(out, bits)
    split_top, split_values, symbols, split_raw = _C.split_float(bits, width, split_top=_C.BYTE_SPLIT_TOP)
    assert (split_top, split_values) == (top, values) and split_raw == raw.tobytes()
    assert np.array_equal(np.frombuffer(symbols, np.uint8), tops.astype(np.uint8))


def test_byte_split_costs_little_on_weights():
    """On weight-like bf16 the byte split is a little larger than the smallest split (its ~2.8-bit
    symbols leave the exponent's last bit raw) and smaller than 11 bits a weight."""
    bits = weights_bits(rng_for("byte_split_size"), 1 << 16, "gauss", 16)
    sizes = {}
    for split in ("smallest", "byte"):
        top, values, _, blob, raw = pycodec.codec.encode_split(bits, split=split)
        sizes[split] = 8 * (blob.size + raw.size) / bits.size
    assert sizes["smallest"] < sizes["byte"] < min(11.0, sizes["smallest"] + 0.3), sizes


def test_encode_split_refuses_bad_input():
    bits = weights_bits(rng_for("encode_split_bad"), 4096, "gauss", 16).reshape(64, 64)
    for bad in (bits.astype(np.int16), bits.astype(np.float32), bits[:, ::2], bits.tolist()):
        with pytest.raises(CodecError, match="uint16 or uint32"):
            pycodec.codec.encode_split(bad)
    with pytest.raises(CodecError, match="unknown coder"):
        pycodec.codec.encode_split(bits, coder="zstd")
    with pytest.raises(CodecError, match="chunk_symbols"):
        pycodec.codec.encode_split(bits, coder="rans", chunk_symbols=100)
    with pytest.raises(CodecError, match="shape"):
        _C.encode_split(bits, 16, [65, 64], "huffman")
    with pytest.raises(CodecError, match="16- or 32-bit"):
        _C.encode_split(bits, 32, [64, 64], "huffman")
    with pytest.raises(CodecError, match="lanes"):
        _C.encode_split(bits, 16, [64, 64], "huffman", 0, 1, 33)
    with pytest.raises(CodecError, match="unknown split"):
        pycodec.codec.encode_split(bits, split="bytes")
    for top in (9, 16, -1):
        with pytest.raises(CodecError, match="split_top"):
            _C.encode_split(bits, 16, [64, 64], "huffman", split_top=top)
        with pytest.raises(CodecError, match="split_top"):
            _C.split_float(bits, 16, split_top=top)


def test_an_empty_weight_round_trips_losslessly():
    # No weights, no top values: the merge takes an empty values table (it once refused it, and
    # an empty layer packed losslessly could not be loaded). A symbol without a value is refused.
    torch = pytest.importorskip("torch")
    from pycodec import quant
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        packed, _ = quant.pack_lossless(torch.zeros(0, 5, dtype=dtype))
        assert packed["values"].numel() == 0
        out = quant.unpack(packed)
        assert out.shape == (0, 5) and out.dtype == dtype
    with pytest.raises(CodecError, match="inconsistent"):
        _C.merge_split(np.zeros(1, np.uint8), [], 8, np.zeros(4, np.uint8), np.zeros(1, np.uint16))
