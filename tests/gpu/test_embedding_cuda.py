"""The whole model on a GPU: compressed embeddings (lookups decode their rows on the host copy)
and a tied lm_head that uses the embedding's packed weight through the fused kernels."""
from __future__ import annotations

import pytest
import torch

import pycodec
from pycodec import CompressionConfig

from test_models import tiny_llama, tokens


@pytest.mark.parametrize("mode", ["rate", "lossless"])
def test_compressed_embedding_and_tied_head_on_gpu(mode):
    model = tiny_llama()
    pycodec.compress_(model, CompressionConfig(mode=mode), progress=False)
    ids = tokens()
    with torch.no_grad():
        rows_cpu = model.model.embed_tokens(ids)
        logits_cpu = model(ids).logits.float()
    model.cuda()
    emb = model.model.embed_tokens
    assert emb._host is not None and emb.symbols.is_cuda
    with torch.no_grad():
        assert torch.equal(emb(ids.cuda()).cpu(), rows_cpu)  # the same rows, decoded on the host copy
        logits = model(ids.cuda()).logits.float().cpu()
    # The fused GEMV accumulates in another order than the CPU's F.linear: bf16 rounding apart.
    assert torch.allclose(logits, logits_cpu, rtol=0, atol=0.05 * logits_cpu.abs().max().item())
