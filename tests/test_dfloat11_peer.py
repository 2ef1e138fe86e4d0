"""bench/dfloat11_peer.py's fast DFloat11 encoder against the package's own encoder
(dfloat11_utils.encode), byte for byte, on the CPU. The decode kernel needs a GPU (gpu_suite).
dfloat11 is a benchmark peer, not a requirement: without it (and dahuffman) these are skipped."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytest.importorskip("dahuffman")
if importlib.util.find_spec("dfloat11") is None:
    pytest.skip("dfloat11 is not installed (pip install --no-deps dfloat11 dahuffman)", allow_module_level=True)


@pytest.fixture
def df(monkeypatch):
    """bench/dfloat11_peer, with the package's encoder made quiet (no tqdm bar, no printed tables)."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    import dfloat11_peer

    monkeypatch.setattr(dfloat11_peer.utils(), "tqdm", lambda it, *a, **k: it)
    return dfloat11_peer


def reference(df, w: torch.Tensor, threads_per_block: int):
    """DFloat11's own stream of w: (luts, encoded, sign_mantissa, output_positions, gaps), and its codec."""
    u = df.utils()
    with contextlib.redirect_stdout(io.StringIO()):
        _, counter = u.get_codec(w)
        codec, _, table = u.get_32bit_codec(counter)
        luts = u.get_luts(table)
        encoded, other, positions, gaps, _ = u.encode_weights([w], codec, df.BYTES_PER_THREAD, threads_per_block)
    return (luts, encoded, other, positions, gaps), codec


def assert_same(fast, ref):
    luts, encoded, other, positions, gaps = ref
    assert torch.equal(fast.luts, luts)
    assert torch.equal(fast.encoded, encoded)
    assert torch.equal(fast.sign_mantissa, other)
    assert np.array_equal(fast.output_positions.numpy().astype(np.uint32), positions.numpy())
    assert torch.equal(fast.gaps, gaps)


@pytest.mark.parametrize("n,scale,threads_per_block", [(100, 0.02, 512), (1000, 0.02, 4), (40_000, 0.02, 8),
                                                        (40_003, 3.0, 8), (100_000, 1e-3, 512)])
def test_fast_encoder_matches_dfloat11s_own(df, n, scale, threads_per_block):
    torch.manual_seed(n)
    w = (torch.randn(n) * scale).to(torch.bfloat16)
    if n > 200:  # rare exponents too: zero, infinities, a subnormal, the largest
        k = len(w[::97])
        w[::97] = torch.tensor([0.0, float("inf"), -float("inf"), 1e-39, -3e38]).repeat(k // 5 + 1)[:k].to(w.dtype)
    fast = df.encode(w, threads_per_block=threads_per_block)
    assert_same(fast, reference(df, w, threads_per_block)[0])
    assert fast.n == n and fast.nbytes() > fast.sign_mantissa.numel()


def test_fast_encoder_matches_when_the_codes_end_on_a_byte(df):
    """No EOF byte then: 400 weights of one binade and 400 of another, codes of 1 and 2 bits."""
    w = torch.cat([torch.full((400,), 1.5), torch.full((400,), 3.0)]).to(torch.bfloat16)[torch.randperm(800)]
    ref, codec = reference(df, w, 4)
    lengths = [length for s, (length, _) in codec._table.items() if isinstance(s, int)]
    assert sum(lengths) * 400 % 8 == 0  # the case this test is for
    assert_same(df.encode(w, threads_per_block=4), ref)


def test_fast_encoder_refuses_other_dtypes(df):
    with pytest.raises(ValueError, match="bf16"):
        df.encode(torch.zeros(10, dtype=torch.float16))
