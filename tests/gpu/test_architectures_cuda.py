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
