"""The fixed-width lossless layout (lossless_split="fixed12", quant.KIND_FIXED, csrc/codec/fixed12.h):
bit-exact round trips with hostile weights, its pinned bytes, malformed buffers, the GPU kernels'
CPU emulation (GEMV and decode) against float64 references, and whole models on the CPU."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch

import pycodec
from pycodec import CodecError, CompressedLinear, CompressionConfig, cuda_ops
from pycodec.quant import KIND_FIXED, KIND_SPLIT, compress_weight, pack_fixed12, unpack, unpack_rows

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FIXED12 = CompressionConfig(mode="lossless", lossless_split="fixed12")


def bits_of(w: torch.Tensor) -> torch.Tensor:
    return w.contiguous().view(torch.int16)


def every_bf16() -> torch.Tensor:
    """All 65536 bf16 bit patterns (both zeros, subnormals, infinities, every NaN), shuffled."""
    bits = torch.arange(65536, dtype=torch.int32).to(torch.int16)
    return bits[torch.randperm(65536, generator=torch.Generator().manual_seed(0))].view(torch.bfloat16).view(256, 256)


def weight_like(n: int, k: int, seed: int = 0, scale: float = 0.02) -> torch.Tensor:
    return (torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * scale).to(torch.bfloat16)


# ---------------------------------------------------------------------------- layout

@pytest.mark.parametrize("shape", [(64, 96), (7, 13), (1, 1), (3, 8), (0, 5), (5, 0)])
def test_round_trip_bit_exact(shape):
    w = weight_like(*shape)
    if w.numel() > 4:  # hostile values among ordinary ones: all escapes
        flat = w.view(-1)
        flat[:5] = torch.tensor([0.0, -0.0, float("inf"), float("nan"), 1e-38], dtype=torch.bfloat16)
    packed, stats = pack_fixed12(w)
    assert int(packed["meta"][1]) == KIND_FIXED
    assert torch.equal(bits_of(unpack(packed)), bits_of(w))
    pieces = -(-w.numel() // 8)
    assert packed["codes"].numel() == 4 * pieces and packed["low"].numel() == 8 * pieces
    assert stats.bits == 8 * sum(t.numel() * t.element_size() for k, t in packed.items() if k != "meta")


def test_every_bit_pattern_round_trips():
    """Every bf16 pattern at once: the codes hold 8 of the 128 exponent values (0 and 7 more), the rest escape."""
    w = every_bf16()
    packed, _ = pack_fixed12(w)
    assert torch.equal(bits_of(unpack(packed)), bits_of(w))
    # each (sign, 7 exponent bits) value is 256 patterns: 16 of the 256 top bytes are in the window
    assert packed["escape_index"].numel() == 65536 - 16 * 256
    assert torch.equal(unpack_rows(packed, torch.tensor([5, 0, 255, 5])).view(torch.int16),
                       bits_of(w)[[5, 0, 255, 5]])


def test_window_is_where_the_weights_are():
    """Trained-like weights: the base puts the 7 most used consecutive nonzero top exponent values in
    the window (zeros are held by code 0 whatever the base), and only the tails escape (a Gaussian's
    values below ~2^-12 of its largest ones)."""
    w = weight_like(256, 512)
    w[3] = 0.0  # a zero row: held, not escaped
    packed, stats = pack_fixed12(w)
    top = (bits_of(w).to(torch.int32) >> 8) & 0x7F
    counts = torch.bincount(top.reshape(-1), minlength=128)
    best = max(range(121), key=lambda b: (int(counts[b + 1:b + 8].sum()), -b))
    assert int(packed["meta"][6]) == best
    assert packed["escape_index"].numel() == w.numel() - int(counts[best + 1:best + 8].sum()) - int(counts[0])
    assert packed["escape_index"].numel() < 2e-3 * w.numel()
    assert not bool(((packed["escape_index"] >= 3 * 512) & (packed["escape_index"] < 4 * 512)).any())
    assert 12.0 < stats.bits_per_weight < 12.2


def test_pinned_bytes():
    """The layout of fixed12.h, byte for byte, for a fixed input (integer arithmetic only): a change to
    the piece order, the code or the escapes fails here even where round trips still pass."""
    i = np.arange(40 * 24, dtype=np.uint64)
    x = (i * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
    bits = (np.uint64(0x3A00) + (x % np.uint64(0x900)) | ((x & np.uint64(1)) << np.uint64(15))).astype(np.uint16)
    bits[[3, 500]] = [0x0000, 0x7FC0]
    w = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).view(40, 24)
    packed, _ = pack_fixed12(w)
    digest = hashlib.sha256(b"".join(packed[k].numpy().tobytes() for k in
                                     ("meta", "codes", "low", "escape_index", "escape_bits"))).hexdigest()
    assert packed["escape_index"].numel() > 2
    assert digest == "f67b6d65dc52a3cd8214305637d7c402f2752c63d3beffae720b143b081148e2"


def test_piece_layout_by_hand():
    """One piece, decoded by hand from fixed12.h's drawing: byte j = c(j) | c(j + 4) << 4,
    c = sign << 3 | t, t = 0 for exponent top bits 0, else their value - base."""
    top = [0x80, 0xBD, 0x3E, 0x3F, 0xC0, 0x41, 0x42, 0xC3]  # e' = 0 (-0.0 .. -tiny), 0x3D..0x43
    low = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]
    bits = np.array([t << 8 | lo for t, lo in zip(top, low)], dtype=np.uint16)
    w = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).view(1, 8)
    packed, _ = pack_fixed12(w)
    assert int(packed["meta"][6]) == 0x3C and packed["escape_index"].numel() == 0
    codes = [(t >> 7) << 3 | ((t & 0x7F) - 0x3C if t & 0x7F else 0) for t in top]
    assert packed["codes"].tolist() == [codes[j] | codes[j + 4] << 4 for j in range(4)]
    assert packed["low"].tolist() == low


def test_malformed_buffers_raise_codec_error():
    packed, _ = pack_fixed12(weight_like(16, 24))
    cases = {
        "short codes": dict(packed, codes=packed["codes"][:-4]),
        "short low": dict(packed, low=packed["low"][:-8]),
        "base": dict(packed, meta=torch.tensor([1, KIND_FIXED, 16, 24, 0, 2, 121, 0])),
        "negative base": dict(packed, meta=torch.tensor([1, KIND_FIXED, 16, 24, 0, 2, -1, 0])),
        "dtype": dict(packed, meta=torch.tensor([1, KIND_FIXED, 16, 24, 0, 1, 60, 0])),
        "escape index": dict(packed, escape_index=torch.tensor([16 * 24]), escape_bits=torch.tensor([1], dtype=torch.int16)),
        "escape lengths": dict(packed, escape_index=torch.tensor([3]), escape_bits=torch.zeros(0, dtype=torch.int16)),
        "escape dtype": dict(packed, escape_index=torch.tensor([3]), escape_bits=torch.ones(1)),
        "codes dtype": dict(packed, codes=packed["codes"].view(torch.int16)),
    }
    for name, bad in cases.items():
        with pytest.raises(CodecError):
            unpack(bad)
        with pytest.raises(CodecError):
            unpack_rows(bad, torch.tensor([0]))
    from pycodec import _C

    out = np.empty(24, np.uint16)
    for row in (16, -1, 2**62):  # past the weight, negative, and one whose end overflows 64 bits
        with pytest.raises(CodecError, match="outside the weight"):
            _C.fixed12_decode_rows(packed["codes"].numpy(), packed["low"].numpy(), 60, 24, np.array([row]), out)


def test_other_dtypes_take_the_byte_split():
    """fixed12 codes bf16's top byte: fp16 weights take the byte split, fp32 the smallest, both exact."""
    for dtype, top in ((torch.float16, 8), (torch.float32, None)):
        w = (torch.randn(20, 40) * 0.02).to(dtype)
        packed, _ = compress_weight(w, FIXED12)
        assert int(packed["meta"][1]) == KIND_SPLIT and (top is None or int(packed["meta"][6]) == top)
        assert torch.equal(unpack(packed), w)
    with pytest.raises(CodecError, match="bfloat16"):
        pack_fixed12(torch.zeros(4, 8))


# ---------------------------------------------------------------------------- kernels (CPU emulation)

def host_gemv(x: torch.Tensor, packed: dict, bias: torch.Tensor | None = None) -> torch.Tensor:
    n, k, base = (int(v) for v in packed["meta"][[2, 3, 6]])
    esc = cuda_ops.fixed12_escapes(packed["escape_index"], packed["escape_bits"], packed["low"], n, k)
    with cuda_ops.host_kernels():
        return cuda_ops._fixed12_gemv(x, packed["codes"], packed["low"], esc["escape_row"], esc["escape_col"],
                                      esc["escape_value"], bias, base, n, k)


@pytest.mark.parametrize("batch", [1, 2, 3, 8, 9, 16])
@pytest.mark.parametrize("shape", [(40, 8), (33, 264), (5, 1024)])
def test_gemv_emulation_matches_float64(batch, shape):
    """The kernel's lane code on the CPU: within fp32 accumulation error of a float64 product, with
    escapes (zeros, tiny values, a large outlier, rows of more than 32) added in the epilogue."""
    n, k = shape
    w = weight_like(n, k, seed=batch)
    flat = w.view(-1)
    flat[::7] = 0.0
    flat[1] = 3.0e4
    flat[2] = -1e-30
    w[min(2, n - 1), :] = torch.where(torch.arange(k) % 2 == 0, 0.0, 1.0e-20).to(torch.bfloat16)
    packed, _ = pack_fixed12(w)
    assert packed["escape_index"].numel() > k // 2
    x = torch.randn(batch, k, generator=torch.Generator().manual_seed(1))
    y = host_gemv(x, packed)
    ref = x.double() @ w.double().t()
    scale = x.double().abs() @ w.double().abs().t()
    assert y.dtype == torch.float32 and y.shape == (batch, n)
    assert bool(((y.double() - ref).abs() <= 1e-6 * scale + 1e-30).all())
    assert torch.equal(host_gemv(x, packed), y)  # deterministic


@pytest.mark.parametrize("batch", [1, 5, 12])
def test_gemv_reads_bf16_x_and_adds_the_bias_before_rounding(batch):
    """bf16 activations are read as they are and y is written in bf16 once, the bias added first (as
    cuBLAS's epilogue does): on CUDA cores, the fp32 route's sums, bias added, rounded once; an
    unaligned x is copied."""
    w = weight_like(24, 64)
    packed, _ = pack_fixed12(w)
    x = torch.randn(batch, 64, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    bias = torch.randn(24, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    with cuda_ops.kernel_settings(fixed12_tensor_cores=0):
        y = host_gemv(x, packed, bias)
        assert y.dtype == torch.bfloat16
        assert torch.equal(y, (host_gemv(x.float(), packed) + bias.float()).to(torch.bfloat16))
        assert torch.equal(host_gemv(x, packed), host_gemv(x.float(), packed).to(torch.bfloat16))
        unaligned = torch.cat([torch.zeros(1, dtype=torch.bfloat16), x.reshape(-1)])[1:].view(batch, 64)
        assert unaligned.data_ptr() % 16 and torch.equal(host_gemv(unaligned, packed, bias), y)
    assert host_gemv(x.half(), packed).dtype == torch.float16


@pytest.mark.parametrize("batch", [1, 3, 8, 9, 16])
@pytest.mark.parametrize("shape", [(16, 64), (40, 264), (7, 1000), (33, 8)])
def test_tensor_core_route_matches_float64(batch, shape):
    """bf16 x takes the tensor-core kernel (fixed12_tensor_cores, the default): its emulation, MMA in
    the PTX fragment layout, within bf16 output rounding of a float64 product; row tiles past N and
    64-column blocks past K read zeros; escapes and the bias in the epilogue. A wrong fragment
    (a column or batch row misplaced) is off by far more."""
    n, k = shape
    w = weight_like(n, k, seed=batch)
    w.view(-1)[1] = 3.0e3
    w.view(-1)[::9] = 0.0
    packed, _ = pack_fixed12(w)
    x = torch.randn(batch, k, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(6)).to(torch.bfloat16)
    y = host_gemv(x, packed, bias).double()
    ref = x.double() @ w.double().t() + bias.double()
    scale = x.double().abs() @ w.double().abs().t() + bias.double().abs()
    assert bool(((y - ref).abs() <= 2 ** -8 * ref.abs() + 1e-5 * scale).all())
    with cuda_ops.kernel_settings(fixed12_tensor_cores=0):  # the CUDA-core route agrees
        assert bool(((host_gemv(x, packed, bias).double() - y).abs() <= 2 ** -7 * y.abs() + 1e-5 * scale).all())


def test_gemv_escape_epilogue_is_needed():
    """Escapes decode as code 0 in the loop; without the epilogue's correction (escape lists
    emptied) the outlier's row is far off: the test sees the correction."""
    w = weight_like(4, 64)
    w[1, 5] = 1000.0
    packed, _ = pack_fixed12(w)
    x = torch.ones(1, 64)
    with cuda_ops.host_kernels():
        empty = torch.zeros(0, dtype=torch.int32)
        y_no = cuda_ops._fixed12_gemv(x, packed["codes"], packed["low"], empty, empty,
                                      torch.zeros(0), None, int(packed["meta"][6]), 4, 64)
    y = host_gemv(x, packed)
    ref = (x.double() @ w.double().t())[0]
    assert abs(float(y[0, 1]) - float(ref[1])) < 1e-3
    assert abs(float(y_no[0, 1]) - float(ref[1])) > 100


def test_decode_emulation_is_exact():
    for w in (every_bf16(), weight_like(9, 7)):
        packed, _ = pack_fixed12(w)
        with cuda_ops.host_kernels():
            out = cuda_ops._fixed12_decode(packed["codes"], packed["low"], packed["escape_index"],
                                           packed["escape_bits"], int(packed["meta"][6]), w.numel())
        assert torch.equal(out.view(w.shape), bits_of(w))


def test_kernel_ops_refuse_bad_arguments():
    packed, _ = pack_fixed12(weight_like(8, 16))
    base = int(packed["meta"][6])
    e = torch.zeros(0, dtype=torch.int32)
    with cuda_ops.host_kernels():
        for x, n, k, codes in ((torch.randn(17, 16), 8, 16, packed["codes"]),  # batch 17
                               (torch.randn(1, 12), 8, 12, packed["codes"]),    # K % 8
                               (torch.randn(1, 16), 8, 16, packed["codes"][:-4])):
            with pytest.raises(CodecError):
                cuda_ops._fixed12_gemv(x, codes, packed["low"], e, e, torch.zeros(0), None, base, n, k)
        with pytest.raises(CodecError):
            cuda_ops._fixed12_decode(packed["codes"], packed["low"], packed["escape_index"], packed["escape_bits"],
                                     121, 128)
    with pytest.raises(CodecError, match="escape index"):
        cuda_ops.fixed12_escapes(torch.tensor([8 * 16]), torch.zeros(1, dtype=torch.int16), packed["low"], 8, 16)


# ---------------------------------------------------------------------------- models

def test_model_bit_exact_saved_and_loaded(tmp_path):
    from test_models import tiny_llama, tokens

    from pycodec.nn import CompressedEmbedding

    model = tiny_llama()
    ids = tokens()
    ref = model(ids).logits
    report = pycodec.compress_(model, FIXED12, progress=False)
    kinds = {int(m.meta[1]) for m in model.modules() if isinstance(m, (CompressedLinear, CompressedEmbedding))}
    assert kinds == {KIND_FIXED}
    assert 12.0 < report["bits_per_weight"] < 12.2
    assert torch.equal(model(ids).logits, ref)
    pycodec.save_pretrained(model, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved["lossless_split"] == "fixed12"
    assert torch.equal(pycodec.from_pretrained(str(tmp_path))(ids).logits, ref)
    assert torch.equal(pycodec.from_pretrained(str(tmp_path), mmap=True)(ids).logits, ref)
    assert CompressionConfig.from_json(FIXED12.to_json()) == FIXED12


def test_cli_inspects_a_fixed12_checkpoint(tmp_path, capsys):
    from test_models import tiny_llama

    from pycodec import cli

    model = tiny_llama()
    pycodec.compress_(model, FIXED12, progress=False)
    pycodec.save_pretrained(model, tmp_path)
    cli.main(["inspect", str(tmp_path)])
    out = capsys.readouterr().out
    assert "compressed (lossless, fixed12)" in out and "model.layers.1.mlp.down_proj" in out


def test_cli_takes_fixed12(tmp_path, monkeypatch, capsys):
    from test_models import tiny_llama

    from pycodec import cli

    monkeypatch.setattr(cli, "load_source", lambda *a, **k: (tiny_llama(), None))
    cli.main(["compress", "smollm2", str(tmp_path / "o"), "--mode", "lossless", "--lossless-split", "fixed12", "--json"])
    assert 12.0 < json.loads(capsys.readouterr().out)["bits_per_weight"] < 12.2
