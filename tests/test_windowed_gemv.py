"""The GPU kernels' lane code, run by the CPU emulation (csrc/codec/windowed_emulate.h).

The CUDA kernels and the emulation share every line that touches bits or floats
(windowed.h, windowed_gemv.h); only the warp glue differs. So these tests check, on any machine,
what the kernels compute: the decode kernel's symbols against the CPU decoder (hostile inputs
included), and the fused GEMVs against float64 references through the same tables and escape
lists the GPU path builds (pycodec.gpu.kernel_buffers). tests/gpu/ then checks the kernels
against this emulation, bit for bit, on a GPU.
"""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

import pycodec
from pycodec import CodecError, _C, cuda_ops, gpu
from pycodec.config import CompressionConfig
from pycodec.quant import compress_weight, dequantize_affine, quantize_int

PAD = int(_C.GEMV_X_PAD_ROWS)


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(map(str, key)).encode()))


def kernel_inputs(x: np.ndarray, prefix: bool = True):
    """x [B, K] as the kernels read it (cuda_ops.gemv_inputs, in numpy): transposed, padded."""
    b, k = x.shape
    x_t = np.zeros((k + PAD, b), np.float32)
    x_t[:k] = x.T
    p = np.zeros((k + 1, b), np.float32)
    p[1:] = np.cumsum(x_t[:k], axis=0, dtype=np.float64).astype(np.float32)  # cuda_ops.column_prefix_sums
    return x_t, p


def errors(y: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(||err|| / ||ref||, max|err| / max|ref|)."""
    err = y.astype(np.float64) - ref
    return float(np.linalg.norm(err) / max(np.linalg.norm(ref), 1e-300)), float(
        np.abs(err).max() / max(np.abs(ref).max(), 1e-300))


def emulate_affine(packed: dict, x: np.ndarray) -> np.ndarray:
    """What pycodec::windowed_gemv_affine returns, through the GPU path's own host tables."""
    info = gpu.weight_info(packed)
    kb = gpu.kernel_buffers(packed, info)
    x_t, p = kernel_inputs(x)
    y = np.zeros((x.shape[0], info.n), np.float32)
    zero = packed["zero"]
    if cuda_ops._zero_folded(zero, float(info.zero_in_values)):  # as the op: no prefix sums
        p = None
    row = kb["escape_row"].numpy() if kb["escape_col"].numel() else np.zeros(info.n + 1, np.int32)
    _C.emulate_gemv_affine(packed["symbols"].numpy(), packed["scale"].numpy().view(np.uint16),
                           zero.numpy().view(np.uint16), tuple(zero.shape) == (1, 1), info.group_size, info.n, info.k,
                           x_t, p, x.shape[0], y, row, kb["escape_col"].numpy(), kb["escape_value"].numpy())
    return y


# ---------------------------------------------------------------------------- decode kernel

def hostile_symbols(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "constant":
        return np.full(n, 201, np.uint8)
    if kind == "two":
        return (rng.random(n) < 0.999).astype(np.uint8) * 7
    if kind == "all256":
        return rng.permutation(np.resize(np.arange(256, dtype=np.uint8), n))
    if kind == "skewed":  # one dominant symbol, rare 12-bit codes
        x = rng.integers(0, 3, n, dtype=np.uint8)
        hit = rng.random(n) < 0.003
        x[hit] = rng.integers(3, 256, int(hit.sum()), dtype=np.uint8)
        return x
    if kind == "uniform":
        return rng.integers(0, 256, n, dtype=np.uint8)
    return np.clip(np.round(rng.normal(128, 3, n)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", ["gauss", "constant", "two", "all256", "skewed", "uniform"])
@pytest.mark.parametrize("n,chunk,lanes", [(1, None, None), (31, 31, 32), (1000, None, None), (5000, 333, 7),
                                           (20000, 4096, 32), (20000, 64, 32), (3000, 1500, 1)])
def test_emulated_decode_kernel_matches_cpu_decoder(kind, n, chunk, lanes):
    x = hostile_symbols(kind, n, rng_for(kind, n, chunk, lanes))
    blob = pycodec.encode(x, chunk_symbols=chunk, lanes=lanes)
    assert np.frombuffer(_C.emulate_decode(blob), np.uint8).tobytes() == pycodec.decode(blob).tobytes()


def test_emulated_decode_kernel_on_corrupt_payloads():
    """Mutated payloads behind a valid header: the CPU decoder refuses every one (padding rules or
    checksum: what guards the GPU, which only gets verified streams), and the emulation either
    reports corruption or returns exactly n symbols (in bounds: the C++ test runs it under ASan)."""
    rng = rng_for("corrupt")
    x = hostile_symbols("gauss", 6000, rng)
    blob = pycodec.encode(x.reshape(6, 1000), lanes=16)
    start = _C.info(blob)["payload_offset"]
    for i in range(300):
        b = bytearray(blob)
        for p in rng.integers(start, len(b), 1 + i % 3):
            b[p] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(CodecError):
            pycodec.decode(bytes(b))
        try:
            got = _C.emulate_decode(bytes(b))
        except CodecError as e:
            assert "corrupt" in str(e)
            continue
        assert len(got) == x.size


# ---------------------------------------------------------------------------- fused affine GEMV

AFFINE_CASES = [
    # (n, k, bits, group_size, symmetric, batch, chunk rows)
    (64, 256, 4, 128, False, 1, None),
    (96, 576, 4, 64, False, 3, 2),
    (33, 100, 3, 100, True, 8, 3),
    (10, 1000, 8, 128, False, 2, None),
    (7, 64, 2, 32, False, 4, 7),
    (40, 384, 5, 384, True, 16, 1),
    (128, 1536, 4, 128, False, 5, None),
]


@pytest.mark.parametrize("n,k,bits,gs,sym,batch,rows", AFFINE_CASES)
def test_emulated_affine_gemv_matches_reference(n, k, bits, gs, sym, batch, rows):
    rng = rng_for("affine", n, k, bits, gs, batch)
    w = torch.from_numpy(rng.standard_normal((n, k)).astype(np.float32) * 0.05)
    cfg = CompressionConfig(mode="int", bits=bits, group_size=gs, symmetric=sym,
                            chunk_symbols=rows * k if rows else None)
    packed, _ = compress_weight(w, cfg)
    x = rng.standard_normal((batch, k)).astype(np.float32)
    y = emulate_affine(packed, x)
    q = torch.from_numpy(pycodec.decode(packed["symbols"].numpy()))
    ref = x.astype(np.float64) @ dequantize_affine(q, packed["scale"], packed["zero"], gs).double().numpy().T
    rel, rel_max = errors(y, ref)
    assert rel < 1e-5 and rel_max < 1e-5, (rel, rel_max)


@pytest.mark.parametrize("batch", [1, 2, 16])
def test_emulated_rate_gemv_with_escapes(batch):
    """Rate mode: one step per row, zero 128 folded into the value entries, outliers exact in the epilogue."""
    rng = rng_for("rate", batch)
    w = rng.standard_normal((72, 576)).astype(np.float32) * 0.02
    w[rng.integers(0, 72, 40), rng.integers(0, 576, 40)] = 5.0  # far past 127 steps: escapes
    rows = 1 if batch > 8 else None  # batch 16 fuses with up to 4 rows x 16 = 64 slots: ask for one, as a test of it
    packed, _ = compress_weight(torch.from_numpy(w), CompressionConfig(mode="rate", bits=3.5,
                                                                        chunk_symbols=576 * rows if rows else None))
    assert packed["escape_index"].numel() >= 30
    info = gpu.weight_info(packed)
    assert info.zero_in_values == 128
    x = rng.standard_normal((batch, 576)).astype(np.float32)
    y = emulate_affine(packed, x)
    from pycodec.quant import unpack

    ref = x.astype(np.float64) @ unpack(packed).double().numpy().T
    rel, rel_max = errors(y, ref)
    assert rel < 1e-5 and rel_max < 1e-5, (rel, rel_max)


@pytest.mark.parametrize("n,k,batch,rows", [(72, 576, 1, 1), (40, 384, 1, 2), (64, 1536, 16, 1), (96, 200, 1, 1),
                                            (30, 64, 1, 4), (48, 256, 3, 1)])
def test_rate_gemv_routes_agree_with_the_reference(n, k, batch, rows):
    """Rate weights (zero folded into the values, one step a row) take the staged affine GEMV at
    batch 1 where K % 8 == 0 (_C.affine_gemv_staged, the default) and the fused one otherwise or
    with the setting off: both within float rounding of float64, escapes included; where both run
    they add in different orders (so somewhere in the last bits), where only the fused one does,
    the same bits."""
    from pycodec.quant import unpack

    rng = rng_for("rate-routes", n, k, batch)
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.02
    w[rng.integers(0, n, 20), rng.integers(0, k, 20)] = 5.0
    packed, _ = compress_weight(torch.from_numpy(w), CompressionConfig(mode="rate", bits=3.5, chunk_symbols=k * rows))
    x = rng.standard_normal((batch, k)).astype(np.float32)
    ref = x.astype(np.float64) @ unpack(packed).double().numpy().T
    with cuda_ops.kernel_settings(affine_gemv_staged=1):
        staged = emulate_affine(packed, x)
    with cuda_ops.kernel_settings(affine_gemv_staged=0):
        fused = emulate_affine(packed, x)
    for y in (staged, fused):
        rel, rel_max = errors(y, ref)
        assert rel < 1e-5 and rel_max < 1e-5, (rel, rel_max)
    assert np.array_equal(staged, fused) == (k % 8 != 0 or batch > 1)


def test_int_gemv_takes_the_fused_route_either_way():
    """Int weights keep per-group zero points (prefix sums): the staged route does not take them."""
    rng = rng_for("int-route")
    packed, _ = compress_weight(torch.from_numpy(rng.standard_normal((64, 512)).astype(np.float32)),
                                CompressionConfig(mode="int", bits=4, group_size=128))
    x = rng.standard_normal((2, 512)).astype(np.float32)
    with cuda_ops.kernel_settings(affine_gemv_staged=1):
        staged = emulate_affine(packed, x)
    with cuda_ops.kernel_settings(affine_gemv_staged=0):
        fused = emulate_affine(packed, x)
    assert np.array_equal(staged, fused)


def test_emulation_refuses_shapes_the_kernel_does_not_take():
    packed, _ = compress_weight(torch.randn(16, 64), CompressionConfig(mode="int", bits=4, group_size=64,
                                                                        chunk_symbols=64 * 16))
    x = np.ones((8, 64), np.float32)  # 16 rows per chunk x batch 8 > the 64 slots of a warp
    assert not gpu.cuda_ops.gemv_supported(gpu.weight_info(packed).ints[10:], 16, 64, 8)
    with pytest.raises(CodecError, match="invalid argument"):
        emulate_affine(packed, x)


# ---------------------------------------------------------------------------- fused lossless GEMV

def emulate_split(packed: dict, x: np.ndarray, staged: int) -> np.ndarray:
    """What pycodec::windowed_gemv_split returns under the split_gemv_staged setting `staged`."""
    n, k = int(packed["meta"][2]), int(packed["meta"][3])
    x_t, _ = kernel_inputs(x)
    y = np.zeros((x.shape[0], n), np.float32)
    with cuda_ops.kernel_settings(split_gemv_staged=staged):
        _C.emulate_gemv_split(packed["symbols"].numpy(), packed["values"].tolist(), int(packed["meta"][6]),
                              packed["raw"].numpy(), n, k, x_t, x.shape[0], y)
    return y


@pytest.mark.parametrize("staged", [1, 0], ids=["staged", "fused"])
@pytest.mark.parametrize("n,k,batch,rows", [(64, 256, 1, 1), (40, 576, 4, 1), (9, 96, 2, 4), (128, 384, 16, 1),
                                            (30, 200, 3, 2), (33, 104, 5, 3), (20, 100, 1, 1), (12, 8, 7, 4)])
def test_emulated_split_gemv_matches_reference(n, k, batch, rows, staged):
    """Both lossless GEMVs (the staged one where K % 8 == 0: the others take the fused one), chunks
    of 1 to 4 rows, every batch shape class."""
    rng = rng_for("split", n, k, batch)
    w = torch.from_numpy(rng.standard_normal((n, k)).astype(np.float32) * 0.03).to(torch.bfloat16)
    packed, _ = compress_weight(w, CompressionConfig(mode="lossless", chunk_symbols=rows * k))
    x = rng.standard_normal((batch, k)).astype(np.float32)
    y = emulate_split(packed, x, staged)
    ref = x.astype(np.float64) @ w.double().numpy().T
    rel, rel_max = errors(y, ref)
    assert rel < 1e-6 and rel_max < 1e-5, (rel, rel_max)


def test_split_gemv_route_follows_the_setting_and_the_shape():
    """K % 8 == 0: the setting picks the staged or the fused GEMV, whose sums differ in order (so
    somewhere in the last bits); K % 8 != 0: the fused one either way, the same bits."""
    rng = rng_for("split-route")
    x = rng.standard_normal((1, 4096)).astype(np.float32)
    w = torch.from_numpy(rng.standard_normal((64, 4096)).astype(np.float32) * 0.03).to(torch.bfloat16)
    packed, _ = compress_weight(w, CompressionConfig(mode="lossless"))
    assert not np.array_equal(emulate_split(packed, x, 1), emulate_split(packed, x, 0))
    packed, _ = compress_weight(w[:, :4092].contiguous(), CompressionConfig(mode="lossless"))
    assert np.array_equal(emulate_split(packed, x[:, :4092], 1), emulate_split(packed, x[:, :4092], 0))


def test_staged_split_gemv_on_corrupt_payloads():
    """Mutated payloads through the staged route: a lane that overruns is reported (the twin
    returns CorruptPayload, as the fused route does), anything else returns rows, never a crash."""
    rng = rng_for("split-corrupt")
    w = torch.from_numpy(rng.standard_normal((24, 256)).astype(np.float32) * 0.03).to(torch.bfloat16)
    packed, _ = compress_weight(w, CompressionConfig(mode="lossless", chunk_symbols=512))
    blob = packed["symbols"].numpy()
    payload_offset = cuda_ops.stream_layout(blob).payload_offset
    x = rng.standard_normal((2, 256)).astype(np.float32)
    outcomes = set()
    for trial in range(60):
        bad = blob.copy()
        at = int(rng.integers(payload_offset, bad.size - 16))
        bad[at:at + 16] = 0xFF if trial % 2 else rng.integers(0, 256, 16)
        damaged = dict(packed, symbols=torch.from_numpy(bad))
        try:
            emulate_split(damaged, x, 1)
            outcomes.add("rows")
        except CodecError as e:
            assert "corrupt" in str(e)
            outcomes.add("corrupt")
    assert outcomes == {"rows", "corrupt"}


def test_split_value_table_refuses_symbols_without_values():
    w = torch.randn(32, 64).to(torch.bfloat16)
    packed, _ = compress_weight(w, CompressionConfig(mode="lossless"))
    x_t, _ = kernel_inputs(np.ones((1, 64), np.float32))
    with pytest.raises(CodecError):
        _C.emulate_gemv_split(packed["symbols"].numpy(), packed["values"].tolist()[:-1], int(packed["meta"][6]),
                              packed["raw"].numpy(), 32, 64, x_t, 1, np.zeros((1, 32), np.float32))


def test_layout_policy_gives_the_kernels_enough_chunks():
    """Default v2 layouts of the issue's shapes: >= 4096 chunks for 4096 x 4096, >= 264 for 576 x 576."""
    for (n, k), want in (((4096, 4096), 4096), ((576, 576), 264)):
        q, _, _ = quantize_int(torch.randn(n, k) * 0.02, 4, 128)
        info = _C.info(pycodec.encode(q.numpy()))
        assert info["n_chunks"] >= want and info["chunk_symbols"] % k == 0
        assert gpu.cuda_ops.gemv_supported([0] * 4 + [n * k, info["chunk_symbols"], info["n_chunks"], info["lanes"],
                                            0], n, k, 1)
        assert math.ceil(n * k / info["chunk_symbols"]) == info["n_chunks"]
