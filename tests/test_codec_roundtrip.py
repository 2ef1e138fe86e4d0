"""Bit-exact round trips, efficiency bounds, inspect() fields and argument checking.

Every stream kind must reproduce every input exactly (values, shape and dtype) for any
chunk size, lane count and thread count: "huffman" (format v2, windowed lanes, what
pycodec.encode writes by default), "rans" (v1) and "huffman-v1" (the legacy v1 Huffman
layout, still read; written here through the core's format_version option).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pycodec
from pycodec import CodecError, _C

CODERS = ("huffman", "rans", "huffman-v1")
MAX_CHUNK = 2**20
MAX_CHUNK_V2 = 2**17


def encode(x, coder, chunk_symbols=None, threads=0, lanes=None):
    """pycodec.encode for the public coders; the core's v1 Huffman writer for "huffman-v1"."""
    if coder != "huffman-v1":
        return pycodec.encode(x, coder=coder, chunk_symbols=chunk_symbols, threads=threads, lanes=lanes)
    arr = np.ascontiguousarray(x.numpy() if hasattr(x, "numpy") else x)
    return _C.encode(arr, list(arr.shape), "huffman", chunk_symbols or 0, threads, 0, 1)


def coder_name(coder):
    return "huffman" if coder == "huffman-v1" else coder


def np_entropy_bits(x: np.ndarray) -> float:
    """Empirical order-0 entropy (bits/symbol), computed independently of pycodec."""
    counts = np.bincount(x.reshape(-1), minlength=256).astype(np.float64)
    n = counts.sum()
    if n == 0:
        return 0.0
    p = counts[counts > 0] / n
    return float(-(p * np.log2(p)).sum())


def encoded_size(x, coder, chunk_symbols=None, threads=0, lanes=None):
    if coder != "huffman-v1":
        return pycodec.encoded_size(x, coder=coder, chunk_symbols=chunk_symbols, threads=threads, lanes=lanes)
    arr = np.ascontiguousarray(x.numpy() if hasattr(x, "numpy") else x)
    return _C.encoded_size(arr, list(arr.shape), "huffman", chunk_symbols or 0, threads, 0, 1)


def roundtrip(x, coder, chunk_symbols=None, threads=0, lanes=None):
    blob = encode(x, coder, chunk_symbols, threads, lanes)
    assert isinstance(blob, bytes)
    # The size a step search measures without writing the stream is the stream's size.
    assert encoded_size(x, coder, chunk_symbols, threads, lanes) == len(blob)
    y = pycodec.decode(blob, threads=threads)
    expect = x.numpy() if not isinstance(x, np.ndarray) else x
    assert isinstance(y, np.ndarray)
    assert y.dtype == np.uint8
    assert y.shape == expect.shape
    np.testing.assert_array_equal(y, expect)
    return blob


def quantized_gaussian(n, sigma, seed=0, center=128):
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.normal(center, sigma, n)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- hypothesis

# 0-d arrays are covered by test_zero_dim_*.
shapes = st.lists(st.integers(0, 24), min_size=1, max_size=4).map(tuple) | st.sampled_from(
    [(0,), (5, 0, 3), (1,), (63,), (64,), (65,), (4097,), (3, 1000), (2, 3, 4, 130), (70001,), (300, 401), (2, 2, 2, 40000)]
)
chunk_sizes_v1 = st.one_of(
    st.none(),
    st.sampled_from([32, 64, 96, 128, 1024, 4096, 65536, MAX_CHUNK]),
    st.integers(1, MAX_CHUNK // 32).map(lambda k: 32 * k),
)
chunk_sizes_v2 = st.one_of(
    st.none(),
    st.sampled_from([1, 2, 31, 33, 100, 576, 1024, 4096, 65536, MAX_CHUNK_V2]),
    st.integers(1, MAX_CHUNK_V2),
)
lane_counts = st.one_of(st.none(), st.integers(1, 32))
distributions = st.sampled_from(["uniform_subset", "geometric", "gaussian", "constant", "all256"])


def make_symbols(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    if kind == "uniform_subset":
        k = int(rng.integers(1, 257))
        alphabet = rng.choice(256, size=k, replace=False)
        return alphabet[rng.integers(0, k, n)].astype(np.uint8)
    if kind == "geometric":
        p = float(rng.uniform(0.05, 0.99))
        return np.minimum(rng.geometric(p, n) - 1, 255).astype(np.uint8)
    if kind == "gaussian":
        sigma = float(rng.uniform(0.05, 60))
        return quantized_gaussian(n, sigma, int(rng.integers(2**32)), center=int(rng.integers(0, 256)))
    if kind == "constant":
        return np.full(n, int(rng.integers(0, 256)), np.uint8)
    if kind == "all256":
        x = rng.integers(0, 256, n).astype(np.uint8)
        x[: min(n, 256)] = np.arange(min(n, 256), dtype=np.uint8)
        return rng.permutation(x)
    raise AssertionError(kind)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=shapes,
    kind=distributions,
    seed=st.integers(0, 2**32 - 1),
    coder=st.sampled_from(CODERS),
    data=st.data(),
    threads=st.sampled_from([1, 2]),
)
def test_roundtrip_hypothesis(shape, kind, seed, coder, data, threads):
    rng = np.random.default_rng(seed)
    n = math.prod(shape)
    x = make_symbols(rng, kind, n).reshape(shape)
    chunk = data.draw(chunk_sizes_v2 if coder == "huffman" else chunk_sizes_v1, label="chunk")
    lanes = data.draw(lane_counts, label="lanes") if coder == "huffman" else None
    blob = roundtrip(x, coder, chunk, threads, lanes)
    info = pycodec.inspect(blob)
    assert info["n_symbols"] == n
    assert tuple(info["shape"]) == shape
    assert info["coder"] == coder_name(coder)
    if coder == "huffman" and n:
        assert info["version"] == 2
        assert info["code_bits"] + info["overhead_bits"] == 8 * len(blob)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 3000),
    chunk=st.integers(1, 40).map(lambda k: 32 * k),
    coder=st.sampled_from(CODERS),
    seed=st.integers(0, 2**32 - 1),
)
def test_thread_count_does_not_change_stream(n, chunk, coder, seed):
    x = make_symbols(np.random.default_rng(seed), "gaussian", n)
    b1 = encode(x, coder, chunk, threads=1)
    b2 = encode(x, coder, chunk, threads=2)
    assert b1 == b2
    np.testing.assert_array_equal(pycodec.decode(b1, threads=2), x)


# --------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("coder", CODERS)
def test_torch_tensor_input(coder):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 17, (33, 65), dtype=torch.uint8, generator=g)
    blob = encode(t, coder, 64)
    y = pycodec.decode(blob)
    assert y.shape == (33, 65)
    np.testing.assert_array_equal(y, t.numpy())
    # Non-contiguous tensor: logical order must be kept.
    tt = t.t()
    assert not tt.is_contiguous()
    y = pycodec.decode(encode(tt, coder, 96))
    assert y.shape == (65, 33)
    np.testing.assert_array_equal(y, tt.numpy())
    # Same stream as the numpy array with the same logical content.
    assert encode(t, coder) == encode(t.numpy(), coder)


@pytest.mark.parametrize("coder", CODERS)
def test_non_contiguous_numpy_input(coder):
    rng = np.random.default_rng(1)
    base = quantized_gaussian(40 * 70, 5.0, 2).reshape(40, 70)
    for view in (base.T, base[::2, ::3], base[:, ::-1], np.asfortranarray(base)):
        blob = encode(view, coder, 64)
        y = pycodec.decode(blob)
        assert y.shape == view.shape
        np.testing.assert_array_equal(y, view)
        assert blob == encode(np.ascontiguousarray(view), coder, 64)
    x = rng.integers(0, 256, (3, 4, 5, 6), dtype=np.uint8).transpose(2, 0, 3, 1)
    np.testing.assert_array_equal(pycodec.decode(encode(x, coder)), x)


@pytest.mark.parametrize("coder", CODERS)
def test_blob_as_bytearray_memoryview_and_array(coder):
    x = quantized_gaussian(1000, 3.0)
    blob = encode(x, coder, 128)
    for b in (bytearray(blob), memoryview(blob), np.frombuffer(blob, np.uint8)):
        np.testing.assert_array_equal(pycodec.decode(b), x)
    # A buffer at an odd address (payload read as 32-bit words must not need alignment).
    odd = np.frombuffer(b"\x00" + blob, np.uint8)[1:]
    np.testing.assert_array_equal(pycodec.decode(odd), x)


# --------------------------------------------------------------------------- edge cases


def _edge_cases():
    rng = np.random.default_rng(42)
    skew = np.zeros(200_000, np.uint8)
    hits = rng.random(skew.size) < 1e-3
    skew[hits] = rng.integers(0, 256, int(hits.sum()))
    two = np.zeros(5000, np.uint8)
    two[1234] = 255
    return {
        "empty": np.zeros(0, np.uint8),
        "empty_2d": np.zeros((0, 7), np.uint8),
        "one_symbol": np.array([42], np.uint8),
        "one_symbol_4d": np.full((1, 1, 1, 1), 200, np.uint8),
        "one_distinct": np.full(100_000, 7, np.uint8),
        "one_distinct_zero": np.zeros((300, 301), np.uint8),
        "one_distinct_255": np.full(65, 255, np.uint8),
        "two_distinct_extreme": two,
        "all_256": (np.arange(256 * 37) * 131 % 256).astype(np.uint8),
        "all_256_once": rng.permutation(256).astype(np.uint8),
        "uniform": rng.integers(0, 256, 100_000, dtype=np.uint8),
        "highly_skewed": skew,
        "fibonacci_like": np.repeat(np.arange(30, dtype=np.uint8), [int(1.6**k) + 1 for k in range(30)]),
    }


EDGE = _edge_cases()


@pytest.mark.parametrize("coder", CODERS)
@pytest.mark.parametrize("name", sorted(EDGE))
@pytest.mark.parametrize("chunk", [None, 32, 96])
def test_edge_cases(name, coder, chunk):
    x = EDGE[name]
    blob = roundtrip(x, coder, chunk, threads=2)
    info = pycodec.inspect(blob)
    assert info["n_symbols"] == x.size
    assert tuple(info["shape"]) == x.shape
    if x.size:
        assert info["entropy_bits_per_symbol"] == pytest.approx(np_entropy_bits(x), abs=1e-9)
        assert info["distinct_symbols"] == len(np.unique(x))


@pytest.mark.parametrize("coder", CODERS)
def test_uniform_costs_about_8_bits(coder):
    x = EDGE["uniform"]
    info = pycodec.inspect(encode(x, coder))
    assert 7.9 < info["bits_per_symbol"] < 8.2


@pytest.mark.parametrize("coder", CODERS)
def test_constant_is_nearly_free(coder):
    info = pycodec.inspect(encode(EDGE["one_distinct"], coder))
    # Zero bits per coded symbol; only per-chunk lane words/states and the header remain.
    assert info["bits_per_symbol"] < 0.1


@pytest.mark.parametrize("coder", CODERS)
def test_zero_dim_scalar_values_roundtrip(coder):
    x = np.array(9, np.uint8)
    y = pycodec.decode(encode(x, coder))
    assert y.reshape(()) == 9


def test_zero_dim_scalar_keeps_shape():
    x = np.array(9, np.uint8)
    assert pycodec.decode(pycodec.encode(x)).shape == ()


# --------------------------------------------------------------------------- efficiency

N_EFF = 1 << 20


@pytest.fixture(scope="module")
def gaussian_1m():
    return quantized_gaussian(N_EFF, 4.0, seed=7)


@pytest.mark.parametrize("coder,bound", [("rans", 1.01), ("huffman", 1.04), ("huffman-v1", 1.04)])
def test_efficiency_against_entropy(gaussian_1m, coder, bound):
    x = gaussian_1m
    h_bytes = np_entropy_bits(x) * x.size / 8
    blob = encode(x, coder)
    ratio = len(blob) / h_bytes  # whole blob: header, table, index, states, padding
    assert ratio < bound, f"{coder}: {ratio:.4f} x entropy bound"
    info = pycodec.inspect(blob)
    assert info["side_bits"] + info["payload_bits"] == 8 * len(blob)
    # Default chunk sizes keep side information well under 2% of the payload.
    assert info["side_bits"] < 0.01 * info["payload_bits"], info
    np.testing.assert_array_equal(pycodec.decode(blob), x)


@pytest.mark.parametrize("shape", [(4096, 4096), (576, 576), (1536, 576), (384, 1536), (1 << 20,)])
def test_v2_default_layout_is_gpu_parallel_and_cheap(shape):
    """The default v2 layout: whole rows per chunk, enough chunks for every SM, <= 1.5% overhead."""
    x = quantized_gaussian(math.prod(shape), 3.0, seed=11).reshape(shape)
    info = pycodec.inspect(pycodec.encode(x))
    assert info["version"] == 2 and info["coder"] == "huffman"
    if len(shape) == 2:
        assert info["chunk_symbols"] % shape[1] == 0
    if shape == (4096, 4096):
        assert info["n_chunks"] >= 4096 and info["lanes"] == 32
    if shape == (576, 576):
        assert info["n_chunks"] >= 264
    # Everything that is not a code bit (header, table, index, lane padding, chunk slack).
    assert info["overhead_bits"] <= 0.015 * info["code_bits"], info


def test_side_bits_arithmetic(gaussian_1m):
    """side_bits = 8 * (header + table + pad + index) (+ 32 x 32-bit states per chunk for rANS)."""
    x = gaussian_1m
    for coder, default_chunk in (("rans", 65536), ("huffman-v1", 32768)):
        info = pycodec.inspect(encode(x.reshape(1024, 1024), coder))
        assert info["chunk_symbols"] == default_chunk
        n_chunks = -(-x.size // default_chunk)
        assert info["n_chunks"] == n_chunks
        table = 32 + 2 * len(np.unique(x)) if coder == "rans" else 129
        header = 40 + 8 * 2 + 8
        expect = header + (table + 3) // 4 * 4 + 4 * n_chunks
        if coder == "rans":
            expect += 32 * 4 * n_chunks
        assert info["side_bits"] == 8 * expect
    # v2: the index is one u32 per 16 chunks plus one u16 per chunk (padded to 4 bytes).
    info = pycodec.inspect(pycodec.encode(x.reshape(1024, 1024), chunk_symbols=1000, lanes=8))
    assert (info["chunk_symbols"], info["lanes"], info["n_chunks"]) == (1000, 8, 1049)
    expect = 40 + 8 * 2 + 8 + (129 + 3) // 4 * 4 + 4 * -(-1049 // 16) + (2 * 1049 + 3) // 4 * 4
    assert info["side_bits"] == 8 * expect


# --------------------------------------------------------------------------- inspect


@pytest.mark.parametrize("coder", CODERS)
@pytest.mark.parametrize("shape,chunk", [((1000,), 64), ((7, 11, 13), 96), ((2, 3, 4, 5), None)])
def test_inspect_fields(coder, shape, chunk):
    x = quantized_gaussian(math.prod(shape), 2.5, seed=3).reshape(shape)
    blob = encode(x, coder, chunk)
    info = pycodec.inspect(blob)
    n = x.size
    assert info["coder"] == coder_name(coder)
    assert info["version"] == (2 if coder == "huffman" else 1)
    assert pycodec.FORMAT_VERSION == 2
    assert info["n_symbols"] == n
    assert tuple(info["shape"]) == shape
    assert info["total_bytes"] == len(blob)
    if coder != "huffman":
        assert info["chunk_symbols"] == (chunk or {"rans": 65536, "huffman-v1": 32768}[coder])
        assert info["lanes"] == 32
    elif chunk:
        assert info["chunk_symbols"] == chunk
    assert info["n_chunks"] == -(-n // info["chunk_symbols"])
    assert info["bits_per_symbol"] == pytest.approx(8 * len(blob) / n, rel=1e-12)
    assert info["side_bits"] + info["payload_bits"] == 8 * len(blob)
    assert info["side_bits_per_symbol"] == pytest.approx(info["side_bits"] / n)
    assert info["entropy_bits_per_symbol"] == pytest.approx(np_entropy_bits(x), rel=1e-12, abs=1e-12)
    assert info["entropy_bits_per_symbol"] == pytest.approx(pycodec.entropy_bits(np.bincount(x.ravel(), minlength=256)))
    assert info["distinct_symbols"] == len(np.unique(x))
    if coder_name(coder) == "huffman":
        assert info["code_bits"] >= info["entropy_bits_per_symbol"] * n - 1e-6
        assert info["overhead_bits"] >= info["side_bits"]


def test_inspect_empty():
    info = pycodec.inspect(pycodec.encode(np.zeros((4, 0), np.uint8)))
    assert info["n_symbols"] == 0
    assert tuple(info["shape"]) == (4, 0)
    assert info["n_chunks"] == 0
    assert info["entropy_bits_per_symbol"] == 0.0
    assert math.isnan(info["bits_per_symbol"])


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "arr",
    [
        np.zeros(10, np.int16),
        np.zeros(10, np.float32),
        np.zeros(10, np.float64),
        np.zeros(10, np.int8),
        np.zeros(10, np.uint16),
        np.zeros(10, bool),
        [1, 2, 3],
        b"abc",
        "abc",
    ],
    ids=lambda a: type(a).__name__ + (f"-{a.dtype}" if isinstance(a, np.ndarray) else ""),
)
@pytest.mark.parametrize("coder", CODERS)
def test_bad_dtype_raises(arr, coder):
    with pytest.raises(CodecError):
        pycodec.encode(arr, coder=coder)


def test_bad_torch_dtype_raises():
    torch = pytest.importorskip("torch")
    for dt in (torch.int16, torch.float32, torch.int8, torch.float16, torch.bool):
        with pytest.raises(CodecError):
            pycodec.encode(torch.zeros(10, dtype=dt))


def test_bfloat16_tensor_raises_codec_error():
    torch = pytest.importorskip("torch")
    with pytest.raises(CodecError):
        pycodec.encode(torch.zeros(10, dtype=torch.bfloat16))


@pytest.mark.parametrize("chunk", [1, 31, 33, 48, 100, 2**20 - 1, 2**20 + 32, 2**21, 2**31 - 32])
def test_bad_chunk_symbols_raises_rans(chunk):
    with pytest.raises(CodecError, match="chunk_symbols"):
        pycodec.encode(np.zeros(100, np.uint8), coder="rans", chunk_symbols=chunk)


@pytest.mark.parametrize("chunk", [0, -1, 2**17 + 1, 2**20, 2**31 - 32])
def test_bad_chunk_symbols_raises_huffman(chunk):
    with pytest.raises(CodecError, match="chunk_symbols"):
        pycodec.encode(np.zeros(100, np.uint8), coder="huffman", chunk_symbols=chunk)


@pytest.mark.parametrize("coder,lanes", [("huffman", 0), ("huffman", 33), ("huffman", -1), ("huffman", 2.0),
                                         ("rans", 32), ("rans", 1)])
def test_bad_lanes_raises(coder, lanes):
    with pytest.raises(CodecError, match="lanes"):
        pycodec.encode(np.arange(100, dtype=np.uint8), coder=coder, lanes=lanes)


def test_lanes_beyond_a_short_chunk_and_constant_lanes():
    # 40 symbols of 6-bit codes fill a few of 32 windows; the rest are zeros and decode to none.
    x = np.arange(40, dtype=np.uint8)
    blob = pycodec.encode(x, lanes=32)
    assert pycodec.inspect(blob)["lanes"] == 32
    np.testing.assert_array_equal(pycodec.decode(blob), x)
    blob = pycodec.encode(np.zeros(40, np.uint8), lanes=2)  # one distinct symbol: always one lane
    assert pycodec.inspect(blob)["lanes"] == 1 and not pycodec.decode(blob).any()


@pytest.mark.parametrize("chunk", [-32, 2**32, 2**40])
def test_out_of_uint32_chunk_symbols_raises_codec_error(chunk):
    with pytest.raises(CodecError):
        pycodec.encode(np.zeros(100, np.uint8), chunk_symbols=chunk)


@pytest.mark.parametrize("coder", ["zstd", "", "RANS", "Huffman", "ans", None])
def test_unknown_coder_raises(coder):
    with pytest.raises(CodecError):
        pycodec.encode(np.zeros(10, np.uint8), coder=coder)


def test_codec_error_is_value_error():
    assert issubclass(CodecError, ValueError)


def test_decode_rejects_non_buffers():
    for bad in ("PYCD", 123, None, [0, 1, 2]):
        with pytest.raises(CodecError):
            pycodec.decode(bad)


def test_symbol_counts_is_the_histogram():
    """_C.symbol_counts (the encoder's own count, used for layer statistics) equals np.bincount,
    empty and odd-length buffers included, and refuses what is not bytes."""
    rng = np.random.default_rng(3)
    for n in (0, 1, 3, 4, 1001):
        a = rng.integers(0, 256, n).astype(np.uint8)
        a[: n // 2] = 7  # a run of one value
        assert list(_C.symbol_counts(a)) == list(np.bincount(a, minlength=256))
    with pytest.raises(CodecError, match="bytes"):
        _C.symbol_counts(np.zeros(4, np.float32))


@pytest.mark.parametrize("lanes", [1, 2, 3, 4, 8])
def test_listed_chunks_decode_as_the_whole_stream(lanes):
    """decode_chunks / decode_split_chunks of runs of consecutive chunks (a row block's, decoded a
    group at a time when chunks have fewer than 8 lanes), of scattered ones and of repeats: each
    slot holds its chunk's symbols as the whole-stream decode gives them."""
    rng = np.random.default_rng(lanes)
    bits = (np.uint16(0x3C00) + rng.integers(0, 0x400, (90, 70))).astype(np.uint16)
    top, values, symbols, raw = _C.split_float(bits, 16)
    sym = np.frombuffer(symbols, np.uint8).reshape(bits.shape)
    blob = encode(sym, "huffman", chunk_symbols=140, lanes=lanes)
    info = _C.info(blob)
    whole = pycodec.decode(blob).reshape(-1)
    chunk, n_chunks = info["chunk_symbols"], info["n_chunks"]
    for ids in (list(range(n_chunks)), list(range(3, n_chunks - 2)), [4, 0, 7, 7, n_chunks - 1, 1, 2, 3]):
        for threads in (1, 2):
            out = np.zeros(len(ids) * chunk, np.uint8)
            _C.decode_chunks(blob, ids, out, threads)
            merged = np.zeros(len(ids) * chunk, np.uint16)
            _C.decode_split_chunks(blob, ids, values, top, raw, merged, threads)
            for slot, c in enumerate(ids):
                got, want = out[slot * chunk:(slot + 1) * chunk], whole[c * chunk:(c + 1) * chunk]
                np.testing.assert_array_equal(got[:want.size], want)
                np.testing.assert_array_equal(merged[slot * chunk:slot * chunk + want.size],
                                              bits.reshape(-1)[c * chunk:(c + 1) * chunk])


@pytest.mark.parametrize("n,chunk,lanes", [(1, None, None), (63, None, 1), (64, 64, 2), (1000, 65, 3), (5000, None, None),
                                           (70001, 4096, 32), (300000, None, None)])
@pytest.mark.parametrize("alphabet", [256, 100])
def test_vector_encoder_does_not_change_stream(n, chunk, lanes, alphabet):
    # The encoder places its lanes by a running sum of code lengths and writes codes joined by
    # fours, both made with AVX-512 VBMI where the CPU has it (cpu_vbmi.h): the stream and
    # encoded_size must be the scalar encoder's, for alphabets above 128 symbols and within 128.
    rng = np.random.default_rng(n)
    x = (np.clip(rng.normal(128, 20, n), 0, 255).astype(np.int64) % alphabet).astype(np.uint8)
    x[::7] = rng.integers(0, alphabet, len(x[::7]))  # every value, codes up to the length limit
    streams = {}
    try:
        for simd in (True, False):
            _C.cpu_simd(simd)
            streams[simd] = (pycodec.encode(x, chunk_symbols=chunk, lanes=lanes),
                             pycodec.encoded_size(x, chunk_symbols=chunk, lanes=lanes))
    finally:
        _C.cpu_simd(True)
    assert streams[True] == streams[False]
    assert streams[True][1] == len(streams[True][0])
    assert np.array_equal(pycodec.decode(streams[True][0]), x)


@pytest.mark.parametrize("n,chunk", [(1, None), (31, None), (32, 32), (1000, 96), (70001, 4096), (300000, None)])
def test_vector_rans_decode_equals_scalar(n, chunk):
    # rANS decodes its whole rounds 16 lanes a vector where the CPU has AVX-512 (rans.h): the same
    # symbols as the scalar decoder, and the same refusal of every corrupted stream.
    rng = np.random.default_rng(n + 1)
    x = np.clip(rng.normal(128, 6, n), 0, 255).astype(np.uint8)
    x[::13] = rng.integers(0, 256, len(x[::13]))
    blob = pycodec.encode(x, coder="rans", chunk_symbols=chunk)
    payload = int(_C.info(blob)["payload_offset"])
    corrupt = []
    for _ in range(8):  # one bit flipped inside the payload: a state or a word
        b = bytearray(blob)
        b[int(rng.integers(payload, len(b)))] ^= 1 << int(rng.integers(0, 8))
        corrupt.append(bytes(b))
    results = {}
    try:
        for simd in (True, False):
            _C.cpu_simd(simd)
            outcomes = []
            for b in corrupt:
                try:
                    outcomes.append(pycodec.decode(b).tobytes())
                except CodecError as e:
                    outcomes.append(type(e))
            results[simd] = (pycodec.decode(blob).tobytes(), outcomes)
    finally:
        _C.cpu_simd(True)
    assert results[True] == results[False]
    assert results[True][0] == x.tobytes()
    assert any(not isinstance(o, bytes) for o in results[True][1])  # the flips are seen


@pytest.mark.parametrize("kind", ["gaussian", "uniform", "rare", "constant", "two"])
@pytest.mark.parametrize("n,chunk", [(33, None), (1000, 96), (70001, 4096), (300001, None)])
def test_vector_rans_encode_equals_scalar(kind, n, chunk):
    # rANS codes its whole rounds 16 lanes a vector where the CPU has AVX-512 VBMI (rans.h): the
    # same stream as the scalar encoder for every frequency, 1 (rare symbols: x / 1) and 4096
    # (one symbol: a state never renormalises) included.
    rng = np.random.default_rng(n + len(kind))
    x = {"gaussian": lambda: np.clip(rng.normal(128, 6, n), 0, 255),
         "uniform": lambda: rng.integers(0, 256, n),
         "rare": lambda: np.where(rng.random(n) < 0.002, rng.integers(0, 256, n), rng.geometric(0.4, n)),
         "constant": lambda: np.full(n, 7),
         "two": lambda: np.where(rng.random(n) < 0.0005, 200, 3)}[kind]().astype(np.uint8)
    try:
        streams = []
        for simd in (True, False):
            _C.cpu_simd(simd)
            streams.append(pycodec.encode(x, coder="rans", chunk_symbols=chunk))
    finally:
        _C.cpu_simd(True)
    assert streams[0] == streams[1]
    assert np.array_equal(pycodec.decode(streams[0]), x)
