"""Model families on the GPU: GPT-2's Conv1D, Gemma's scaled embedding and MoE experts run
their compressed modules through the CUDA path and match the CPU's outputs."""
from __future__ import annotations

import pytest
import torch

import pycodec
from pycodec import CompressionConfig

from test_architectures import IDS, MOE, MOE_IDS, gemma, gpt2, logits, moe

FAMILIES = {"gpt2": (gpt2, IDS), "gemma": (gemma, IDS), **{f: (lambda f=f: moe(f), MOE_IDS) for f in sorted(MOE)}}


def cpu_and_device(family: str, mode: str, device: str = "cuda"):
    """The compressed model's logits on the CPU, then on ``device`` (brought back)."""
    make, ids = FAMILIES[family]
    model = make().to(torch.bfloat16)
    pycodec.compress_(model, CompressionConfig(mode=mode, bits=5), progress=False)
    cpu = logits(model, ids)
    model.to(device)
    return cpu, logits(model, ids.to(device)).cpu()


@pytest.mark.parametrize("mode", ["lossless", "rate"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_on_gpu_matches_cpu(family, mode):
    cpu, gpu = cpu_and_device(family, mode)
    # Lossless weights are exact on both; the fused GEMV sums in another order than the CPU.
    torch.testing.assert_close(gpu.float(), cpu.float(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("mode", ["lossless", "rate"])
def test_weight_read_on_gpu_is_the_decoded_weight(mode):
    """.weight of a module on the GPU: a 16-bit lossless weight rebuilt by the decode kernel,
    a rate weight decoded on the host; the same bits as the CPU's decode either way."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 384).to(torch.bfloat16))
    pycodec.compress_(model, CompressionConfig(mode=mode, bits=4), progress=False)
    want = model[0].decoded_weight()
    model.to("cuda")
    w = model[0].weight
    assert w.device.type == "cuda" and w.shape == want.shape and w.dtype == want.dtype
    assert torch.equal((w * 1).cpu(), want)


@pytest.mark.parametrize("mode", ["lossless", "rate"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_on_gpu_runs_its_projections_as_modules(mode, batch_first):
    """A CompressedMultiheadAttention on the GPU: self-attention calls in_proj and out_proj (their
    fused GEMVs) and matches nn.MultiheadAttention's forward on the same decoded weights; cross
    attention takes that forward itself."""
    from pycodec.attention import CompressedMultiheadAttention

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.MultiheadAttention(256, 4, batch_first=batch_first)).to(torch.bfloat16)
    pycodec.compress_(model, CompressionConfig(mode=mode, bits=4), progress=False)
    attn = model[0].cuda().eval().requires_grad_(False)
    assert isinstance(attn, CompressedMultiheadAttention)
    called = []
    for child in (attn.in_proj, attn.out_proj):
        child.register_forward_hook(lambda m, a, out: called.append(m))
    x = torch.randn((3, 7, 256) if batch_first else (7, 3, 256), device="cuda", dtype=torch.bfloat16)
    pad = torch.zeros(3, 7, dtype=torch.bool, device="cuda")
    pad[1, 5:] = True
    with torch.no_grad():
        for kw in ({}, {"key_padding_mask": pad}):
            called.clear()
            got = attn(x, x, x, need_weights=False, **kw)[0]
            assert called == [attn.in_proj, attn.out_proj]
            want = torch.nn.MultiheadAttention.forward(attn, x, x, x, need_weights=True, **kw)[0]
            torch.testing.assert_close(got.float(), want.float(), rtol=0.03, atol=0.03)
        called.clear()
        other = torch.randn_like(x)
        attn(x, other, other, need_weights=False)
        assert called == []
