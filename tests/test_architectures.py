"""compress_ across model families: what each family's modules do beyond nn.Linear / nn.Embedding.

Tiny random models of transformers' own classes (no hub): a module pycodec replaces must keep its
forward's meaning (Gemma's scaled embedding, GPT-2's Conv1D), and one whose meaning it cannot
keep stays dense and is named in the report (OPT's positional offset, nn.MultiheadAttention's
out_proj), never silently changed.
"""
import json
import warnings

import pytest
import torch
from torch import nn

import pycodec
from pycodec import CodecError, CompressionConfig
from pycodec.nn import DENSE_WARNING_SHARE

transformers = pytest.importorskip("transformers")

IDS = torch.tensor([[3, 17, 200, 5, 99, 0, 255, 42, 7, 128]])


def tiny(model_type: str, **kw):
    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model(model_type, **kw)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def gemma():
    return tiny("gemma", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, vocab_size=256)


def gpt2(n_positions=64):
    return tiny("gpt2", n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=n_positions)


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def reloads(model, tmp_path):
    """The model saved, then loaded by pycodec and by transformers."""
    pycodec.save_pretrained(model, tmp_path / "out")
    return (pycodec.from_pretrained(tmp_path / "out"),
            transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out"))


def loaded_logits(dense, tmp_path):
    """The dense model's logits once saved and loaded back: a loaded model computes its
    non-persistent buffers afresh (rotary frequencies in fp32, where .to(bf16) had cast them)."""
    dense.save_pretrained(tmp_path / "dense")
    return logits(transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "dense"))


# ---------------------------------------------------------------- scaled word embeddings


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemma_scaled_embedding_keeps_its_scale_bit_exactly(tmp_path, dtype):
    model = gemma().to(dtype)
    ref = logits(model)
    report = pycodec.compress_(model, CompressionConfig(mode="lossless"), progress=False)
    emb = model.model.embed_tokens
    assert isinstance(emb, pycodec.nn.CompressedEmbedding) and emb.output_scale == ("tensor", 8.0)
    assert "model.embed_tokens" in report["layers"] and not report["dense_weights"]
    assert bits_equal(logits(model), ref)
    with pycodec.cache_decoded(model):
        assert bits_equal(logits(model), ref)
    ref_loaded = loaded_logits(gemma().to(dtype), tmp_path)
    for loaded in reloads(model, tmp_path):
        assert bits_equal(logits(loaded), ref_loaded)
    pycodec.decompress_(model)
    assert bits_equal(logits(model), ref)


def test_scaled_embedding_in_rate_mode_is_scaled():
    dense = gemma()
    model = gemma()
    pycodec.compress_(model, CompressionConfig(mode="rate", bits=6), progress=False)
    rows = model.model.embed_tokens(IDS)
    want = dense.model.embed_tokens(IDS)
    # Within the quantization error of 6-bit rate mode, far from the unscaled rows (8x smaller).
    assert torch.nn.functional.cosine_similarity(rows.flatten(), want.flatten(), dim=0) > 0.99
    assert float(rows.norm()) == pytest.approx(float(want.norm()), rel=0.05)


def test_a_checkpoint_without_the_scale_takes_the_models_own(tmp_path):
    """Checkpoints of pycodec before the scale was kept hold the table unscaled, as now: they load
    with the scale of the model's own embedding class."""
    model = gemma()
    ref = logits(model)
    pycodec.compress_(model, CompressionConfig(mode="lossless"), progress=False)
    pycodec.save_pretrained(model, tmp_path / "out")
    path = tmp_path / "out" / "config.json"
    cfg = json.loads(path.read_text())
    del cfg["quantization_config"]["modules"]["model.embed_tokens"]["output_scale"]
    path.write_text(json.dumps(cfg))
    assert bits_equal(logits(pycodec.from_pretrained(tmp_path / "out")), ref)


def test_a_malformed_scale_is_refused(tmp_path):
    model = gemma()
    pycodec.compress_(model, CompressionConfig(mode="lossless"), progress=False)
    pycodec.save_pretrained(model, tmp_path / "out")
    path = tmp_path / "out" / "config.json"
    for bad in (["tensor", "eight"], ["scale", 8.0], [8.0], "8", ["float", float("nan")]):
        cfg = json.loads(path.read_text())
        cfg["quantization_config"]["modules"]["model.embed_tokens"]["output_scale"] = bad
        path.write_text(json.dumps(cfg))
        with pytest.raises(CodecError, match="output scale|output_scale"):
            pycodec.from_pretrained(tmp_path / "out")


class OffsetEmbedding(nn.Embedding):
    """Has an embed_scale, but its forward adds it: not a scaled lookup."""

    embed_scale = 2.0

    def forward(self, idx):
        return super().forward(idx) + self.embed_scale


class PositionalEmbedding(nn.Embedding):
    def forward(self, idx, offset: int = 2):
        return super().forward(idx + offset)


class TwoTables(nn.Module):
    def __init__(self, emb_cls):
        super().__init__()
        self.emb = emb_cls(300, 16)
        self.proj = nn.Linear(16, 8)

    def forward(self, idx):
        return self.proj(self.emb(idx))


@pytest.mark.parametrize("emb_cls", [OffsetEmbedding, PositionalEmbedding])
def test_an_embedding_whose_forward_is_not_a_lookup_stays_dense(emb_cls):
    torch.manual_seed(0)
    model = TwoTables(emb_cls)
    idx = torch.tensor([[1, 2, 250]])
    ref = model(idx)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = pycodec.compress_(model, CompressionConfig(mode="lossless"), progress=False)
    assert type(model.emb) is emb_cls
    assert isinstance(model.proj, pycodec.CompressedLinear)
    assert "overrides nn.Embedding's forward" in report["dense_weights"]["emb.weight"][1]
    assert any("stay dense" in str(w.message) and "emb.weight" in str(w.message) for w in caught)
    assert torch.equal(model(idx), ref)


# ---------------------------------------------------------------- linears


class DoubledLinear(nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


class BiasAfterLinear(nn.Linear):
    """Falcon's: the product, then the bias (F.linear's outputs up to rounding)."""

    def forward(self, x):
        out = x @ self.weight.T
        return out if self.bias is None else out + self.bias


class Stack(nn.Module):
    def __init__(self, cls):
        super().__init__()
        self.a = cls(32, 48)
        self.b = nn.Linear(48, 16)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_a_linear_subclass_is_compressed_only_when_it_computes_a_linear():
    torch.manual_seed(0)
    x = torch.randn(4, 32)
    doubled = Stack(DoubledLinear)
    ref = doubled(x)
    report = pycodec.compress_(doubled, CompressionConfig(mode="lossless"), progress=False)
    assert type(doubled.a) is DoubledLinear and "a" not in report["layers"]
    assert "overrides nn.Linear's forward" in report["dense_weights"]["a.weight"][1]
    assert torch.equal(doubled(x), ref)

    falcon_like = Stack(BiasAfterLinear)
    ref = falcon_like(x)
    report = pycodec.compress_(falcon_like, CompressionConfig(mode="lossless"), progress=False)
    assert isinstance(falcon_like.a, pycodec.CompressedLinear) and not report["dense_weights"]
    torch.testing.assert_close(falcon_like(x), ref)


def test_falcon_linears_are_compressed():
    model = tiny("falcon", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=256, bias=True)
    ref = logits(model)
    report = pycodec.compress_(model, CompressionConfig(mode="lossless"), progress=False)
    assert not report["dense_weights"]
    assert sum(isinstance(m, pycodec.CompressedLinear) for m in model.modules()) == 2 * 4 + 1
    torch.testing.assert_close(logits(model), ref)


class AttentionBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.ffn = nn.Linear(32, 32)

    def forward(self, x):
        return self.ffn(self.attn(x, x, x, need_weights=False)[0])


def test_modules_that_read_their_linears_weights_run_compressed():
    """nn.MultiheadAttention reads out_proj.weight itself, nn.TransformerEncoderLayer its
    linear1 / linear2 weights (its fast path): a compressed module's .weight decodes on use."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 32)
    # Frozen like a compressed weight: for a non-contiguous fp32 input (the attention's output),
    # torch's linear takes another matmul path when the weight requires grad.
    block = AttentionBlock().eval().requires_grad_(False)
    ref = block(x)
    pycodec.compress_(block, CompressionConfig(mode="lossless"), progress=False)
    assert isinstance(block.ffn, pycodec.CompressedLinear) and isinstance(block.attn.out_proj, pycodec.CompressedLinear)
    assert torch.equal(block.requires_grad_(False)(x), ref)  # the biases too

    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2).eval()
    encoder.requires_grad_(False)
    ref = encoder(x)
    report = pycodec.compress_(encoder, CompressionConfig(mode="lossless"), progress=False)
    assert "layers.1.linear2" in report["layers"] and "layers.1.self_attn.in_proj" in report["layers"]
    assert not report["dense_weights"]  # the attention's own projection too (tests/test_attention.py)
    assert torch.equal(encoder.requires_grad_(False)(x), ref)


@pytest.mark.parametrize("family", ["t5", "mamba"])
def test_models_that_read_weights_run_compressed(family):
    """T5 checks wo.weight.dtype, Mamba's slow path multiplies by dt_proj.weight."""
    if family == "t5":
        cfg = transformers.T5Config(d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16, vocab_size=256)
        model = transformers.T5ForConditionalGeneration(cfg)
        inputs = dict(input_ids=IDS, decoder_input_ids=IDS[:, :4])
    else:
        cfg = transformers.MambaConfig(hidden_size=64, num_hidden_layers=2, vocab_size=256, state_size=8)
        model = transformers.MambaForCausalLM(cfg)
        inputs = dict(input_ids=IDS)
    model.eval().requires_grad_(False)  # Mamba's out_proj takes a non-contiguous fp32 input (see above)
    with torch.no_grad():
        ref = model(**inputs).logits
    pycodec.compress_(model, CompressionConfig(mode="lossless"), progress=False)
    with torch.no_grad():
        assert bits_equal(model(**inputs).logits, ref)


def test_a_compressed_weight_reads_as_a_tensor_and_is_read_only():
    from pycodec.weight_view import DecodedOnUse

    torch.manual_seed(0)
    dense = nn.Linear(24, 40).to(torch.bfloat16)
    model = nn.Sequential(nn.Linear(24, 40).to(torch.bfloat16))
    model[0].load_state_dict(dense.state_dict())
    pycodec.compress_(model, CompressionConfig(mode="lossless"), progress=False)
    w = model[0].weight
    assert isinstance(w, DecodedOnUse) and isinstance(w, torch.Tensor)
    assert (w.shape, w.dtype, w.device, w.requires_grad) == (torch.Size([40, 24]), torch.bfloat16,
                                                              torch.device("cpu"), False)
    assert bits_equal(w + 0, dense.weight.detach())  # any operation sees the decoded weight
    assert bits_equal(w.detach().clone(), dense.weight.detach())
    x = torch.randn(3, 24, dtype=torch.bfloat16)
    assert bits_equal(torch.nn.functional.linear(x, w), torch.nn.functional.linear(x, dense.weight.detach()))
    for write in (lambda t: t.add_(1), lambda t: t.zero_(), lambda t: t.copy_(dense.weight.detach()),
                  lambda t: torch.nn.init.normal_(t)):
        with pytest.raises(CodecError, match="read-only"):
            write(w)
    assert bits_equal(model[0].decoded_weight(), dense.weight.detach())  # nothing was written
    assert "decoded where it is used" in repr(w)
    with pycodec.cache_decoded(model):
        model(x)
        assert model[0]._weight_in_use() is model[0]._decoded  # the kept weight, not a new decode


def test_a_skeletons_weight_reads_on_meta_without_decoding():
    """A module built empty for a loader (meta tensors) still answers .weight: a meta tensor of
    the weight's shape, not an error (hasattr would let a RuntimeError through)."""
    packed = {n: torch.empty(0, device="meta") for n in ("meta", "symbols", "values", "raw")}
    module = pycodec.CompressedLinear(8, 4, packed)
    assert hasattr(module, "weight") and module.weight.shape == (4, 8) and module.weight.is_meta


def test_conv1d_and_embedding_weights_read_in_their_own_layouts():
    dense = gpt2()
    model = gpt2()
    pycodec.compress_(model, CompressionConfig(mode="lossless"), progress=False)
    for name in ("transformer.h.0.attn.c_attn", "transformer.wte"):
        w, want = model.get_submodule(name).weight, dense.get_submodule(name).weight.detach()
        assert w.shape == want.shape and bits_equal(w * 1, want)


# ---------------------------------------------------------------- GPT-2's Conv1D


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpt2_conv1d_lossless_is_bit_exact_everywhere(tmp_path, dtype):
    from transformers.pytorch_utils import Conv1D

    model = gpt2().to(dtype)
    ref = logits(model)
    state = {k: v.shape for k, v in model.state_dict().items()}
    report = pycodec.compress_(model, CompressionConfig(mode="lossless"), progress=False)
    assert isinstance(model.transformer.h[0].attn.c_attn, pycodec.nn.CompressedConv1D)
    assert report["layers"]["transformer.h.0.mlp.c_fc"]["shape"] == [64, 256]  # as Conv1D holds it
    assert not report["dense_weights"]
    assert bits_equal(logits(model), ref)
    with pycodec.cache_decoded(model):
        assert bits_equal(logits(model), ref)
    for loaded in reloads(model, tmp_path):
        assert isinstance(loaded.transformer.h[1].mlp.c_proj, pycodec.nn.CompressedConv1D)
        assert bits_equal(logits(loaded), ref)
    pycodec.decompress_(model)
    assert type(model.transformer.h[0].attn.c_attn) is Conv1D
    assert {k: v.shape for k, v in model.state_dict().items()} == state
    assert bits_equal(logits(model), ref)


def test_gpt2_conv1d_rate_mode_codes_each_output_row():
    dense = gpt2()
    model = gpt2()
    report = pycodec.compress_(model, CompressionConfig(mode="rate", bits=4), progress=False)
    c_fc = model.transformer.h[0].mlp.c_fc
    w = dense.transformer.h[0].mlp.c_fc.weight.detach()
    w_hat = c_fc.decoded_weight().t()  # back to Conv1D's [in, out]
    sqnr = 10 * torch.log10(w.pow(2).sum() / (w - w_hat).pow(2).sum())
    assert float(sqnr) == pytest.approx(report["layers"]["transformer.h.0.mlp.c_fc"]["sqnr_db"], abs=0.01)
    assert sqnr > 15
    ref = logits(dense)
    out = logits(model)
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.99


def test_gpt2_calibrates_on_sequences_its_positions_hold():
    """GPT-2's Conv1D linears are calibrated too, on sequences no longer than n_positions."""
    from test_calibrate import byte_tokenizer

    model = gpt2(n_positions=128)
    report = pycodec.compress_(model, CompressionConfig(mode="rate", bits=3, calibration="default",
                                                        calibration_tokens=1024),
                               tokenizer=byte_tokenizer(), progress=False)
    assert report["calibration"]["sequences"] == 8  # 1024 tokens in sequences of 128
    assert isinstance(model.transformer.h[1].attn.c_proj, pycodec.nn.CompressedConv1D)
    assert not report["dense_weights"]


# ---------------------------------------------------------------- what stays dense


class ThreeD(nn.Module):
    def __init__(self):
        super().__init__()
        self.bank = nn.Parameter(torch.randn(4, 32, 32))
        self.proj = nn.Linear(32, 32)

    def forward(self, x):
        return self.proj(x @ self.bank[0])


def test_weights_left_dense_are_reported_and_warned_of():
    model = ThreeD()
    with pytest.warns(UserWarning, match=r"80% of the model's parameters stay dense, among them bank \(held by a Th"):
        report = pycodec.compress_(model, CompressionConfig(mode="lossless"), progress=False)
    assert report["dense_weights"] == {"bank": (4 * 32 * 32, "held by a ThreeD, which pycodec does not compress")}


def test_what_skip_names_is_not_warned_of():
    model = tiny("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256, tie_word_embeddings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = pycodec.compress_(model, CompressionConfig(mode="lossless", skip=("embed_tokens",)), progress=False)
    assert report["dense_weights"] == {}
    assert isinstance(model.lm_head, nn.Linear) and not isinstance(model.lm_head, pycodec.CompressedLinear)


# ---------------------------------------------------------------- mixtures of experts

MOE = {
    "mixtral": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=256, num_local_experts=4, num_experts_per_tok=2),
    "qwen3_moe": dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=256, num_experts=4,
                      num_experts_per_tok=2, head_dim=16),
    # transposed experts ([experts, in, out]), biases, gate and up interleaved, its own gate
    "gpt_oss": dict(hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=256, num_local_experts=4, num_experts_per_tok=2, head_dim=16),
}
MOE_IDS = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))


def moe(family: str, implementation: str | None = None):
    model = tiny(family, **MOE[family])
    torch.manual_seed(1)
    for p in model.parameters():
        if p.dim() == 3:  # the experts: transformers leaves them at 0 or tiny from_config
            torch.nn.init.normal_(p, std=0.05)
    if implementation:
        model.set_experts_implementation(implementation)
    return model


@pytest.mark.parametrize("family", sorted(MOE))
def test_moe_experts_lossless_are_bit_exact_through_save_and_load(family, tmp_path):
    from pycodec.experts import CompressedExperts

    eager = moe(family, "eager")
    ref = logits(eager, MOE_IDS)
    model = moe(family)
    n_experts = sum(p.numel() for p in model.parameters() if p.dim() == 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing large stays dense: no warning
        report = pycodec.compress_(model, CompressionConfig(mode="lossless"), progress=False)
    banks = {n: m for n, m in model.named_modules() if isinstance(m, CompressedExperts)}
    assert len(banks) == 2 * 2 and sum(m.shape.numel() for m in banks.values()) == n_experts
    experts = next(m for n, m in model.named_modules() if hasattr(m, "has_gate"))
    assert experts.config._experts_implementation == "pycodec"
    assert all(report["layers"][n]["experts"] == 4 for n in banks)
    assert all("router" in n or n.endswith(("_bias", "gate.weight")) for n in report["dense_weights"])
    assert bits_equal(logits(model, MOE_IDS), ref)
    # Indexing a bank gives the expert's weight as the parameter held it.
    bank_name, bank = next(iter(banks.items()))
    assert bits_equal(bank[2], eager.get_parameter(bank_name)[2].detach())
    assert bits_equal(bank[torch.tensor([3, 1])], eager.get_parameter(bank_name)[[3, 1]].detach())
    with pycodec.cache_decoded(model) as cache:  # each routed expert decoded once, kept
        assert bits_equal(logits(model, MOE_IDS), ref)
        assert cache.report()["layers_cached"] > 0
    for loaded in reloads(model, tmp_path):
        assert bits_equal(logits(loaded, MOE_IDS), ref)
    model.set_experts_implementation("eager")  # the model's own forward, through bank[e]
    assert bits_equal(logits(model, MOE_IDS), ref)
    pycodec.decompress_(model)
    assert all(p.dim() == 3 for n, p in model.named_parameters() if n in banks)
    assert bits_equal(logits(model, MOE_IDS), ref)


@pytest.mark.parametrize("family", sorted(MOE))
def test_moe_experts_in_rate_mode_meet_the_budget(family, tmp_path, capsys):
    dense = moe(family, "eager")
    model = moe(family)
    report = pycodec.compress_(model, CompressionConfig(mode="rate", bits=5), progress=False)
    banks = {n: v for n, v in report["layers"].items() if "experts" in v}
    assert banks
    for name, layer in banks.items():
        assert layer["bits_per_weight"] <= 5.0 + 1e-9
        w = dense.get_parameter(name).detach()
        bank = model.get_submodule(name)
        w_hat = torch.stack([bank[e] for e in range(len(bank))])
        sqnr = 10 * torch.log10(w.double().pow(2).sum() / (w.double() - w_hat.double()).pow(2).sum())
        assert float(sqnr) == pytest.approx(layer["sqnr_db"], abs=0.01)
        assert layer["sqnr_db"] > 15
    out = logits(model, MOE_IDS)
    ref = logits(dense, MOE_IDS)
    # Every layer of the tiny model at 5 bits, attention included.
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.95
    for loaded in reloads(model, tmp_path):
        assert bits_equal(logits(loaded, MOE_IDS), out)
    inspected = inspect_json(tmp_path / "out", capsys)
    for name, layer in banks.items():
        assert inspected["layers"][name]["shape"] == layer["shape"]
        assert inspected["layers"][name]["bits_per_weight"] == pytest.approx(layer["bits_per_weight"], rel=1e-6)
    assert inspected["bits_per_parameter"] == pytest.approx(report["bits_per_parameter"], rel=1e-3)


def inspect_json(path, capsys) -> dict:
    from pycodec import cli

    capsys.readouterr()
    cli.main(["inspect", str(path), "--json"])
    return json.loads(capsys.readouterr().out)


def test_moe_experts_named_in_skip_stay_dense():
    model = moe("mixtral")
    report = pycodec.compress_(model, CompressionConfig(mode="lossless", skip=("down_proj",)), progress=False)
    assert "model.layers.0.mlp.experts.gate_up_proj" in report["layers"]
    assert "model.layers.0.mlp.experts.down_proj" not in report["layers"]
    assert isinstance(model.model.layers[1].mlp.experts.down_proj, nn.Parameter)
    assert bits_equal(logits(model, MOE_IDS), logits(moe("mixtral", "eager"), MOE_IDS))


def test_a_malformed_experts_entry_is_refused(tmp_path):
    model = moe("mixtral")
    pycodec.compress_(model, CompressionConfig(mode="lossless"), progress=False)
    pycodec.save_pretrained(model, tmp_path / "out")
    path = tmp_path / "out" / "config.json"
    good = json.loads(path.read_text())
    name = "model.layers.0.mlp.experts.down_proj"
    for change, message in [(lambda e: e.update(experts=[]), "malformed"),
                            (lambda e: e.update(transposed="no"), "malformed"),
                            (lambda e: e.update(in_features=-1), "malformed"),
                            (lambda e: e.update(in_features=e["in_features"] + 1), "config says 4 experts"),
                            (lambda e: e["experts"].pop(), "config says 3 experts"),
                            (lambda e: e["experts"][1].update(symbols=[7]), "has shape")]:
        cfg = json.loads(json.dumps(good))
        change(cfg["quantization_config"]["modules"][name])
        path.write_text(json.dumps(cfg))
        with pytest.raises(CodecError, match=message):
            pycodec.from_pretrained(tmp_path / "out")


@pytest.mark.parametrize("mmap", [False, True])
def test_moe_experts_load_memory_mapped_and_stream(tmp_path, mmap):
    ref = logits(moe("mixtral", "eager"), MOE_IDS)
    model = moe("mixtral")
    pycodec.compress_(model, CompressionConfig(mode="lossless"), progress=False)
    pycodec.save_pretrained(model, tmp_path / "out")
    loaded = pycodec.from_pretrained(tmp_path / "out", mmap=mmap)
    streamer = pycodec.stream(loaded, "cpu", resident_bytes=200_000, prefetch=1)
    try:
        assert any(".experts.down_proj." in n for n in streamer.report()["streamed"])
        assert bits_equal(logits(loaded, MOE_IDS), ref)
    finally:
        streamer.close()
    assert bits_equal(logits(loaded, MOE_IDS), ref)


# ---------------------------------------------------------------- a sweep of transformers' causal LMs

# Fields that shrink any of these families' default configs to a tiny model.
TINY = dict(hidden_size=64, n_embd=64, d_model=64, num_hidden_layers=2, n_layer=2, num_layers=2, num_attention_heads=4,
            n_head=4, num_key_value_heads=2, intermediate_size=128, ffn_hidden_size=128, vocab_size=256, head_dim=16,
            kv_channels=16, moe_intermediate_size=32, shared_expert_intermediate_size=32, num_experts=4,
            num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, max_position_embeddings=128,
            n_positions=128, pad_token_id=0, bos_token_id=1, eos_token_id=2, rotary_dim=8, partial_rotary_factor=0.5)
# Each kind of module a family brings: scaled embeddings (gemma2, gemma3_text, xglm's float scale),
# fused qkv and odd biases, learned positions (biogpt's stay dense), expert banks (the MoE families),
# mixers with convolutions (nemotron_h, lfm2).
FAMILIES = ["bloom", "biogpt", "codegen", "cohere", "gemma2", "gemma3_text", "glm4_moe", "gpt_bigcode", "gpt_neo",
            "gpt_oss", "gptj", "granitemoe", "hunyuan_v1_moe", "lfm2", "llama", "mpt", "nemotron_h", "olmo2", "olmoe",
            "phi", "phimoe", "qwen2", "qwen2_moe", "starcoder2", "xglm"]


@pytest.mark.parametrize("family", FAMILIES)
def test_causal_lm_family_is_bit_exact_in_lossless_mode(family):
    cfg = transformers.AutoConfig.for_model(family)
    for key, value in TINY.items():
        if hasattr(cfg, key):
            setattr(cfg, key, value)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval().requires_grad_(False)
    for p in model.parameters():
        if p.dim() == 3:
            torch.nn.init.normal_(p, std=0.05)
    if getattr(model, "_can_set_experts_implementation", lambda: False)():
        model.set_experts_implementation("eager")
    ids = torch.randint(3, 256, (1, 10), generator=torch.Generator().manual_seed(0))
    ref = logits(model, ids)
    n_parameters = sum(p.numel() for p in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # biogpt's: its learned positions stay dense
        report = pycodec.compress_(model, CompressionConfig(mode="lossless"), progress=False)
    dense = report["dense_weights"]
    if family == "biogpt":
        assert list(dense) == ["biogpt.embed_positions.weight"] and "overrides" in dense[list(dense)[0]][1]
    else:  # routers at most
        assert sum(n for n, _ in dense.values()) <= DENSE_WARNING_SHARE * n_parameters, dense
    assert bits_equal(logits(model.requires_grad_(False), ids), ref)


# ---------------------------------------------------------------- beyond causal LMs


def encoder_decoders():
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(
        d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16, vocab_size=256))
    mbart = transformers.MBartForConditionalGeneration(transformers.MBartConfig(
        d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=256, max_position_embeddings=64, scale_embedding=True))
    bert = transformers.BertModel(transformers.BertConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=256))
    seq2seq = dict(input_ids=IDS, decoder_input_ids=IDS[:, :4])
    return {"t5": (t5, seq2seq), "mbart": (mbart, seq2seq), "bert": (bert, dict(input_ids=IDS))}


@pytest.mark.parametrize("family", ["t5", "mbart", "bert"])
def test_models_made_from_a_config_save_and_load_as_their_own_class(family, tmp_path):
    """A model built from a config has no "architectures" until saved: pycodec records its class
    (the loader's fallback is a causal LM), and drops the ties of sub-models too (MBart's inner
    model ties both its tables to "shared", which are one compressed, scaled embedding)."""
    torch.manual_seed(0)
    model, inputs = encoder_decoders()[family]
    model.eval().requires_grad_(False)
    with torch.no_grad():
        ref = model(**inputs)[0]
    pycodec.compress_(model, CompressionConfig(mode="lossless"), progress=False)
    pycodec.save_pretrained(model, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == [type(model).__name__]
    for loaded in (pycodec.from_pretrained(tmp_path / "out"), type(model).from_pretrained(tmp_path / "out")):
        assert type(loaded) is type(model)
        with torch.no_grad():
            assert bits_equal(loaded.eval().requires_grad_(False)(**inputs)[0], ref)


@pytest.mark.parametrize("family", ["mixtral", "gpt_oss"])
def test_calibration_rounds_each_expert_for_the_tokens_routed_to_it(family, tmp_path, monkeypatch):
    """With calibration, each expert is rounded for its outputs on the inputs routed to it (GPTQ
    and rate mode's RDOQ on that expert's H): the model's logits on unseen text come closer to the
    dense model's than with its experts coded from their weights alone."""
    import pycodec.calibrate as calibrate
    from test_calibrate import byte_tokenizer, text

    tok = byte_tokenizer()
    (tmp_path / "calibration.txt").write_text(text(seed=1, n_words=2000))
    unseen = tok(text(seed=7, n_words=200), return_tensors="pt").input_ids[:, :192]
    ref = logits(moe(family, "eager"), unseen)
    config = CompressionConfig(mode="rate", bits=3, calibration=str(tmp_path / "calibration.txt"),
                               calibration_tokens=2048, bit_allocation="uniform")

    def error(model) -> float:
        return float((logits(model, unseen) - ref).pow(2).mean())

    model = moe(family)
    report = pycodec.compress_(model, config, tokenizer=tok, progress=False)
    banks = [n for n, v in report["layers"].items() if "experts" in v]
    assert len(banks) == 4 and all(report["layers"][n]["bits_per_weight"] <= 3.0 + 1e-9 for n in banks)
    calibrated = error(model)
    with monkeypatch.context() as m:  # the experts from their weights alone, all else as above
        m.setattr(calibrate, "expert_targets", lambda model, skip, within=None: [])
        alone = moe(family)
        pycodec.compress_(alone, config, tokenizer=tok, progress=False)
    assert calibrated < 0.6 * error(alone)
    pycodec.save_pretrained(model, tmp_path / "out")
    assert bits_equal(logits(pycodec.from_pretrained(tmp_path / "out"), unseen), logits(model, unseen))


def test_streamed_experts_are_uploaded_only_when_routed_to(tmp_path):
    """pycodec.stream uploads an expert when the experts' forward knows it was routed to, never
    in registration order: each upload of an expert is followed by its run."""
    from pycodec.experts import CompressedExperts

    cfg = dict(MOE["mixtral"], num_local_experts=8, intermediate_size=256)
    torch.manual_seed(0)
    dense = transformers.AutoModelForCausalLM.from_config(transformers.MixtralConfig(**cfg)).eval()
    for p in dense.parameters():
        if p.dim() == 3:
            torch.nn.init.normal_(p, std=0.05)
    ids = MOE_IDS[:1, :8]
    ref = dense.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    pycodec.compress_(dense, CompressionConfig(mode="lossless"), progress=False)
    pycodec.save_pretrained(dense, tmp_path / "out")
    model = pycodec.from_pretrained(tmp_path / "out")
    experts = {id(e): n for n, m in model.named_modules() if isinstance(m, CompressedExperts)
               for n, e in m.named_children()}
    runs, uploads = [], []
    for m in model.modules():
        if id(m) in experts:
            m.register_forward_pre_hook(lambda module, args: runs.append(id(module)))
    streamer = pycodec.stream(model, "cpu", resident_bytes=600_000, prefetch=4)
    upload = streamer._upload
    streamer._upload = lambda s: (uploads.append(id(s.module)), upload(s))
    try:
        assert any(s.routed for s in streamer.streamed)
        assert torch.equal(model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0), ref)
    finally:
        streamer.close()
    expert_uploads = [u for u in uploads if u in experts]
    assert expert_uploads and len(expert_uploads) <= len([r for r in runs if r in experts])
    assert set(expert_uploads) <= set(runs)  # no expert that never ran was uploaded


def test_the_cli_compresses_a_model_as_the_class_its_folder_names(tmp_path, capsys):
    """`pycodec compress` of all-MiniLM-L6-v2 (a BertModel): loaded as a causal LM it gained a
    random head and wrote a checkpoint that no loader could fill."""
    from pycodec import cli
    from pycodec._weights import minilm_safetensors_path

    src = minilm_safetensors_path().parent
    cli.main(["compress", str(src), str(tmp_path / "out"), "--mode", "lossless", "--json"])
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == ["BertModel"]
    loaded = pycodec.from_pretrained(tmp_path / "out")
    dense = transformers.AutoModel.from_pretrained(str(src)).eval()  # fp32 in the folder; the CLI's bf16
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    assert type(loaded) is type(dense)
    with torch.no_grad():
        ref = dense.to(torch.bfloat16)(input_ids=ids).last_hidden_state
        assert bits_equal(loaded(input_ids=ids).last_hidden_state, ref)


@pytest.mark.parametrize("family", ["mixtral", "gpt2"])
def test_compressed_families_run_under_torch_compile(family):
    """torch.compile traces the "pycodec" experts implementation (with graph breaks at the
    routing's host reads) and CompressedConv1D; outputs within fp32 rounding of eager."""
    model = (moe("mixtral") if family == "mixtral" else gpt2()).eval().requires_grad_(False)
    ids = MOE_IDS if family == "mixtral" else IDS
    pycodec.compress_(model, CompressionConfig(mode="rate", bits=4), progress=False)
    ref = logits(model, ids)
    torch.testing.assert_close(logits(torch.compile(model), ids), ref, rtol=1e-4, atol=1e-5)
