"""nn.MultiheadAttention's packed projection compressed (pycodec/attention.py): lossless outputs
bitwise the dense module's on every path it takes, the projection run as a module where that is
the faster route, the checkpoint through every loader, and decompress_ back to the dense class."""
import json
import os

import pytest
import torch
from torch import nn

import pycodec
from pycodec import CodecError, CompressionConfig
from pycodec.attention import CompressedMultiheadAttention, attention_targets, in_proj_linear

transformers = pytest.importorskip("transformers")

E = 64


class Block(nn.Module):
    def __init__(self, batch_first=True, bias=True, dropout=0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(E, 4, batch_first=batch_first, bias=bias, dropout=dropout)
        self.ffn = nn.Linear(E, E)

    def forward(self, x, key=None, **kw):
        key = x if key is None else key
        return self.ffn(self.attn(x, key, key, **kw)[0])


def frozen(module):
    # A frozen weight as a compressed one is: torch's linear (and the attention's native fast
    # path) take other routes, with other roundings, when a weight or bias requires grad.
    return module.requires_grad_(False)


def calls(batch_first: bool):
    """(input, kwargs) of the attention's calls: masks of each kind, causal, weights returned,
    unbatched, cross attention."""
    torch.manual_seed(1)
    x = torch.randn(2, 5, E) if batch_first else torch.randn(5, 2, E)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    return [(x, {"need_weights": False}), (x, {"need_weights": True}),
            (x, {"need_weights": False, "key_padding_mask": pad}),
            (x, {"need_weights": False, "attn_mask": causal, "is_causal": True}),
            (x, {"need_weights": False, "attn_mask": causal.isinf(), "key_padding_mask": pad}),
            (x[0] if batch_first else x[:, 0], {"need_weights": False}),
            (x, {"need_weights": False, "key": torch.randn_like(x)})]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("training", [False, True])
def test_lossless_projection_is_compressed_and_outputs_are_the_dense_modules(batch_first, bias, training):
    torch.manual_seed(0)
    block = frozen(Block(batch_first, bias).train(training))
    refs = [block(x, **kw) for x, kw in calls(batch_first)]
    report = pycodec.compress_(block, CompressionConfig(mode="lossless"), progress=False)
    assert isinstance(block.attn, CompressedMultiheadAttention) and isinstance(block.attn.in_proj, pycodec.CompressedLinear)
    assert "attn.in_proj" in report["layers"] and report["layers"]["attn.in_proj"]["shape"] == [3 * E, E]
    assert not report["dense_weights"] and "in_proj_weight" not in dict(block.named_parameters())
    assert (block.attn.in_proj_bias is None) == (not bias)
    frozen(block)
    for (x, kw), ref in zip(calls(batch_first), refs):
        assert torch.equal(block(x, **kw), ref), kw


def test_the_projection_runs_as_a_module_for_rate_weights():
    """Rate weights, self-attention without weights returned: in_proj and out_proj are called as
    modules (their fused GEMVs on a GPU, pycodec.stream's hooks), and the attention is what
    nn.MultiheadAttention computes on the decoded weights, masks and all."""
    torch.manual_seed(0)
    block = frozen(Block(batch_first=True).eval())
    pycodec.compress_(block, CompressionConfig(mode="rate", bits=4), progress=False)
    frozen(block)
    attn = block.attn
    called = []
    for child in (attn.in_proj, attn.out_proj):
        child.register_forward_hook(lambda m, a, out: called.append(m))
    for x, kw in calls(True):
        called.clear()
        key = kw.pop("key", x)
        with torch.no_grad():
            got = attn(x, key, key, **kw)[0]
            want = nn.MultiheadAttention.forward(attn, x, key, key, **kw)[0]  # the decoded weights
        itself = key is x and not kw["need_weights"]
        assert called == ([attn.in_proj, attn.out_proj] if itself else []), kw
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_transformer_encoder_in_both_of_its_paths():
    """nn.TransformerEncoderLayer reads in_proj_weight on its fast path and calls the attention on
    the other: lossless, each bitwise the dense encoder's."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, E)
    encoder = frozen(nn.TransformerEncoder(nn.TransformerEncoderLayer(E, 4, 2 * E, dropout=0.0, batch_first=True), 2))
    refs = [encoder.eval()(x), encoder.train()(x)]
    report = pycodec.compress_(encoder, CompressionConfig(mode="lossless"), progress=False)
    assert not report["dense_weights"]
    assert {f"layers.{i}.self_attn.in_proj" for i in range(2)} <= set(report["layers"])
    frozen(encoder)
    assert torch.equal(encoder.eval()(x), refs[0]) and torch.equal(encoder.train()(x), refs[1])


@pytest.mark.parametrize("skip", ["attn", "attn.in_proj"])
def test_skip_keeps_the_projection_dense(skip, recwarn):
    block = Block()
    report = pycodec.compress_(block, CompressionConfig(mode="lossless", skip=(skip,)), progress=False)
    assert type(block.attn) is nn.MultiheadAttention and "attn.in_proj" not in report["layers"]
    assert isinstance(block.ffn, pycodec.CompressedLinear)
    assert "attn.in_proj_weight" not in report["dense_weights"]  # skipped by name: not a surprise to warn of
    assert not [w for w in recwarn if "stay dense" in str(w.message)]


def test_separate_and_shared_projections_stay_dense_and_say_why():
    """kdim unlike embed_dim: three weights, not one packed; a projection another module also holds
    would be stored twice."""
    separate = nn.Sequential(nn.MultiheadAttention(E, 4, kdim=32, vdim=32))
    shared = nn.Sequential(nn.MultiheadAttention(E, 4), nn.MultiheadAttention(E, 4))
    shared[1].in_proj_weight = shared[0].in_proj_weight
    assert attention_targets(separate, ()) == [] and attention_targets(shared, ()) == []
    with pytest.warns(UserWarning, match="stay dense"):
        report = pycodec.compress_(separate, CompressionConfig(mode="lossless"), progress=False)
    assert "separate q, k, v" in report["dense_weights"]["0.q_proj_weight"][1]
    with pytest.warns(UserWarning, match="stay dense"):
        report = pycodec.compress_(shared, CompressionConfig(mode="lossless"), progress=False)
    assert "another module also holds" in report["dense_weights"]["0.in_proj_weight"][1]


def test_decompress_gives_back_the_dense_attention():
    torch.manual_seed(0)
    block = frozen(Block().eval())
    weight, bias = block.attn.in_proj_weight.clone(), block.attn.in_proj_bias.clone()
    x, kw = calls(True)[0]
    ref = block(x, **kw)
    pycodec.compress_(block, CompressionConfig(mode="lossless"), progress=False)
    pycodec.decompress_(block)
    assert type(block.attn) is nn.MultiheadAttention and "in_proj" not in block.attn._modules
    assert torch.equal(block.attn.in_proj_weight, weight) and torch.equal(block.attn.in_proj_bias, bias)
    assert type(block.attn.out_proj) is nn.Linear and torch.equal(frozen(block)(x, **kw), ref)


def test_bad_projections_are_refused():
    attn = nn.MultiheadAttention(E, 4)
    wrong = pycodec.CompressedLinear.from_linear(nn.Linear(E, 2 * E), CompressionConfig(mode="lossless"))
    with pytest.raises(CodecError, match="needs"):
        CompressedMultiheadAttention.from_attention(attn, wrong)
    no_bias = pycodec.CompressedLinear.from_linear(nn.Linear(E, 3 * E, bias=False), CompressionConfig(mode="lossless"))
    with pytest.raises(CodecError, match="bias"):
        CompressedMultiheadAttention.from_attention(attn, no_bias)
    right = pycodec.CompressedLinear.from_linear(in_proj_linear(attn), CompressionConfig(mode="lossless"))
    compressed = CompressedMultiheadAttention.from_attention(attn, right)
    with pytest.raises(CodecError, match="packed"):
        CompressedMultiheadAttention.from_attention(compressed, right)


def siglip():
    """A tiny SigLIP vision model: its pooling head is an nn.MultiheadAttention (cross attention
    from a learned probe)."""
    torch.manual_seed(0)
    cfg = transformers.SiglipVisionConfig(hidden_size=E, intermediate_size=2 * E, num_hidden_layers=1,
                                          num_attention_heads=4, image_size=32, patch_size=8, vision_use_head=True)
    return frozen(transformers.SiglipVisionModel(cfg).eval())


def test_checkpoint_through_every_loader(tmp_path):
    model = siglip()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(pixel_values=pixels).pooler_output
    pycodec.compress_(model, CompressionConfig(mode="lossless"), progress=False)
    pycodec.save_pretrained(model, str(tmp_path))
    modules = json.loads((tmp_path / "config.json").read_text())["quantization_config"]["modules"]
    assert modules["head.attention.in_proj"]["attention_in_proj"] is True
    assert "attention_in_proj" not in modules["head.attention.out_proj"]
    loaded = [pycodec.from_pretrained(str(tmp_path)), pycodec.from_pretrained(str(tmp_path), mmap=True),
              transformers.SiglipVisionModel.from_pretrained(str(tmp_path))]
    for m in loaded:
        assert isinstance(m.head.attention, CompressedMultiheadAttention)
        with torch.no_grad():
            assert torch.equal(frozen(m.eval())(pixel_values=pixels).pooler_output, ref)


def test_a_config_that_names_no_attention_is_refused(tmp_path):
    model = siglip()
    pycodec.compress_(model, CompressionConfig(mode="lossless"), progress=False)
    pycodec.save_pretrained(model, str(tmp_path))
    path = tmp_path / "config.json"
    cfg = json.loads(path.read_text())
    modules = cfg["quantization_config"]["modules"]
    modules["head.mlp.in_proj"] = dict(modules.pop("head.attention.in_proj"))
    path.write_text(json.dumps(cfg))
    with pytest.raises(CodecError, match="head.mlp.in_proj"):
        pycodec.from_pretrained(str(tmp_path))
    assert os.path.exists(tmp_path / "model.safetensors")
