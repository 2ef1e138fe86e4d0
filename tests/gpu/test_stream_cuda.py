"""pycodec.stream on a GPU: streamed outputs equal the resident model's, uploads overlap on a
side stream, out-of-order calls and a too-small budget behave as on the CPU."""
from __future__ import annotations

import pytest
import torch

import pycodec
from pycodec import CompressionConfig

from test_models import tiny_llama, tokens


@pytest.fixture(scope="module", params=["lossless", "rate"])
def saved(request, tmp_path_factory):
    model = tiny_llama()
    pycodec.compress_(model, CompressionConfig(mode=request.param), progress=False)
    folder = tmp_path_factory.mktemp(request.param)
    pycodec.save_pretrained(model, folder)
    return str(folder)


def _plan_sizes(model) -> tuple[int, int]:
    from pycodec.stream import _slot_layout

    streamer = pycodec.stream(model, "cuda", resident_bytes=1 << 40)
    dense = streamer.report()["device_bytes"]["dense"]
    streamer.close()
    largest = max(_slot_layout(dict(m.packed()))[1] for m in model.modules() if hasattr(m, "packed"))
    return dense, largest


@pytest.mark.parametrize("mmap", [False, True])
def test_streamed_equals_resident_on_gpu(saved, mmap):
    resident = pycodec.from_pretrained(saved, device="cuda")
    ids = tokens().cuda()
    with torch.no_grad():
        expected = resident(ids).logits
    model = pycodec.from_pretrained(saved, mmap=mmap)
    dense, largest = _plan_sizes(model)
    with pycodec.stream(model, "cuda", resident_bytes=dense + 3 * largest + largest // 2) as streamer:
        with torch.no_grad():
            outs = [model(ids).logits for _ in range(3)]
        torch.cuda.synchronize()
        report = streamer.report()
    assert report["streamed"]
    for out in outs:
        assert torch.equal(out, expected)
    assert report["prefetch_misses"] == 1
    assert model.model.norm.weight.device.type == "cpu"  # closed: back on the host


def test_streamed_generate_on_gpu(saved):
    resident = pycodec.from_pretrained(saved, device="cuda")
    prompt = tokens()[:1, :8].cuda()
    expected = resident.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    model = pycodec.from_pretrained(saved)
    dense, largest = _plan_sizes(model)
    with pycodec.stream(model, "cuda", resident_bytes=dense + 3 * largest):
        got = model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(got, expected)


def test_budget_below_one_layer_is_a_value_error_on_gpu(saved):
    model = pycodec.from_pretrained(saved)
    dense, largest = _plan_sizes(model)
    with pytest.raises(ValueError, match="below what streaming needs"):
        pycodec.stream(model, "cuda", resident_bytes=dense + largest // 2)
    assert all(t.device.type == "cpu" for t in model.state_dict().values())


def test_tied_table_is_one_tensor_on_the_gpu(saved):
    """model.to moves the tied embedding / lm_head table once; streamed, it is pinned once; and
    both come back to the host as one tensor."""
    model = pycodec.from_pretrained(saved)
    emb, head = model.model.embed_tokens, model.lm_head
    ids = tokens().cuda()
    model.to("cuda")
    assert emb.meta.device.type == "cuda"
    assert all(head.packed()[n] is t for n, t in emb.packed().items())
    with torch.no_grad():
        expected = model(ids).logits
    model.to("cpu")
    assert all(head.packed()[n] is t for n, t in emb.packed().items())
    dense, largest = _plan_sizes(model)
    with pycodec.stream(model, "cuda", resident_bytes=dense + 3 * largest) as streamer:
        tied = [s for s in streamer.streamed if s.name in ("model.embed_tokens", "lm_head")]
        assert len(tied) in (0, 2)
        if tied:
            assert tied[0].blob is not None and tied[0].blob is tied[1].blob
        with torch.no_grad():
            assert torch.equal(model(ids).logits, expected)
    assert all(head.packed()[n] is t for n, t in emb.packed().items())
    assert emb.meta.device.type == "cpu"
