"""Format-v1 streams (pycodec <= 0.1 checkpoints) on a CUDA device: the legacy decoder, bit-exact."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_windowed_gemv import hostile_symbols, rng_for

import pycodec
from pycodec import _C, cuda_ops

pytestmark = pytest.mark.gpu


def encode_v1(x: np.ndarray, coder: str, chunk: int | None) -> bytes:
    if coder == "rans":
        return pycodec.encode(x, coder="rans", chunk_symbols=chunk)
    return _C.encode(x, list(x.shape), "huffman", chunk or 0, 0, 0, 1)


@pytest.mark.parametrize("coder", ["huffman", "rans"])
@pytest.mark.parametrize("chunk", [32, 4096, None])
@pytest.mark.parametrize("kind", ["gauss", "constant", "all256", "skewed"])
@pytest.mark.parametrize("n", [1, 33, 65, 100_001])
def test_legacy_decode_bit_exact(coder, chunk, kind, n):
    x = hostile_symbols(kind, n, rng_for("v1", coder, chunk, kind, n))
    blob = encode_v1(x, coder, chunk)
    assert _C.info(blob)["version"] == 1
    np.testing.assert_array_equal(cuda_ops.decode_cuda(blob).cpu().numpy(), x)


def test_legacy_affine_module_runs_on_the_gpu():
    """A rANS (v1) affine weight on a GPU: decoded there, then Triton's GEMV."""
    from pycodec.config import CompressionConfig
    from pycodec.nn import CompressedLinear

    m = CompressedLinear.from_linear(torch.nn.Linear(256, 64), CompressionConfig(mode="int", bits=4, coder="rans"))
    x = torch.randn(3, 256)
    ref = m(x)
    got = m.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
