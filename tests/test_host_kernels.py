"""The GPU path's Python glue, run on the CPU through the kernels' host twins.

cuda_ops.host_kernels() sends the v2 ops' bodies to "host_*" in _C: the same argument handling
as the "cuda_*" entry points, with the kernels' emulation behind it. So everything the ops do
before a launch (tables, stream views and addresses, slack, x transposed and padded, batch
padding, escapes in CSR, the dispatch in gpu.linear) is checked here against references, without
a GPU. tests/gpu/ checks the kernels against the emulation on a GPU.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pycodec
from pycodec import CodecError, _C, cuda_ops, gpu
from pycodec.config import CompressionConfig
from pycodec.quant import compress_weight, unpack


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(map(str, key)).encode()))


@pytest.fixture
def host_ops(monkeypatch):
    """gpu.linear's calls to the registered ops go to their bodies, on host kernels."""
    for name in ("windowed_decode", "windowed_gemv_affine", "windowed_gemv_split", "windowed_tile_affine", "split_merge",
                 "windowed_decode_split"):
        monkeypatch.setattr(cuda_ops, name, getattr(cuda_ops, "_" + name))
    with cuda_ops.host_kernels():
        yield


def device_ready(packed: dict, exact_outputs: bool = False):
    """What CompressedLinear holds on a GPU: packed tensors with slack, WeightInfo, kernel buffers."""
    info = gpu.weight_info(packed, exact_outputs)
    kernel = gpu.kernel_buffers(packed, info)
    ready = {n: cuda_ops.with_slack(t) if n in ("symbols", "raw") else t for n, t in packed.items()}
    return ready, kernel, info


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).norm() / ref.norm())


@pytest.fixture
def fused_only(monkeypatch):
    """gpu.linear's unfused routes raise: a test passes only through the fused GEMVs."""
    def unfused(*args, **kwargs):
        raise AssertionError("took an unfused path")
    monkeypatch.setattr(gpu, "_affine_decoded", unfused)
    monkeypatch.setattr(gpu, "unpack", unfused)
    monkeypatch.setattr(cuda_ops, "split_merge", unfused)


@pytest.mark.parametrize("batch", [1, 3, 8, 16])
@pytest.mark.parametrize("mode", ["int4-g64", "int3-sym", "rate", "int4-g128-k576"])
def test_linear_affine_fused_matches_reference(host_ops, fused_only, mode, batch):
    rng = rng_for("affine", mode, batch)
    n, k = (48, 576) if mode.endswith("k576") else (48, 384)  # 576 = 4.5 groups of 128: a partial last group
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.02
    if mode == "int4-g128-k576":
        cfg = CompressionConfig(mode="int", bits=4, group_size=128, chunk_symbols=k if batch > 8 else None)
    elif mode == "int4-g64":
        cfg = CompressionConfig(mode="int", bits=4, group_size=64)
    elif mode == "int3-sym":
        cfg = CompressionConfig(mode="int", bits=3, group_size=128, symmetric=True)
    else:
        w[rng.integers(0, n, 25), rng.integers(0, k, 25)] = 4.0  # outliers: escapes in the epilogue
        cfg = CompressionConfig(mode="rate", bits=3.5, chunk_symbols=k if batch > 8 else None)
    packed, _ = compress_weight(torch.from_numpy(w), cfg)
    if mode == "rate":
        assert packed["escape_index"].numel() > 0
    ready, kernel, info = device_ready(packed)
    assert info.version == 2 and cuda_ops.gemv_supported(list(info.layout), n, k, batch)
    x = torch.from_numpy(rng.standard_normal((batch, k)).astype(np.float32))
    bias = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
    y = gpu.linear(x, ready, kernel, bias, info)
    ref = x.double() @ unpack(packed).double().T + bias.double()
    assert y.shape == (batch, n) and y.dtype == torch.float32
    assert rel_error(y, ref) < 1e-5


def affine_weight(mode: str, rng, n: int, k: int, chunk_rows: int = 1):
    """A packed affine weight of one of the tile tests' modes (rate: with escapes)."""
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.02
    chunk = chunk_rows * k
    if mode == "int4-g64":
        cfg = CompressionConfig(mode="int", bits=4, group_size=64, chunk_symbols=chunk)
    elif mode == "int3-sym-g32":
        cfg = CompressionConfig(mode="int", bits=3, group_size=32, symmetric=True, chunk_symbols=chunk)
    else:
        w[rng.integers(0, n, 25), rng.integers(0, k, 25)] = 4.0  # outliers: escapes in the epilogue
        cfg = CompressionConfig(mode="rate", bits=3.5, chunk_symbols=chunk)
    packed, _ = compress_weight(torch.from_numpy(w), cfg)
    assert mode != "rate" or packed["escape_index"].numel() > 0
    # Chunks this small get one lane by the layout policy: re-encode with 32, so that lanes start
    # mid-row and runs cross row ends inside multi-row chunks.
    symbols = pycodec.decode(packed["symbols"].numpy())
    packed["symbols"] = torch.from_numpy(np.frombuffer(pycodec.encode(symbols, chunk_symbols=chunk, lanes=32),
                                                       np.uint8).copy())
    return packed


def tile_args(x, ready, kernel, packed, info):
    return (x, ready["symbols"], kernel["table"], packed["scale"], packed["zero"], kernel["escape_row"],
            kernel["escape_col"], kernel["escape_value"], list(info.layout), float(info.zero_in_values),
            info.group_size, info.n, info.k)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch,chunk_rows", [(1, 1), (17, 2), (33, 4), (64, 1), (128, 2)])
@pytest.mark.parametrize("mode", ["int4-g64", "int3-sym-g32", "rate"])
def test_tile_kernel_matches_reference(mode, batch, chunk_rows, dtype):
    """Decode into the tile, fragments in the PTX layout (permuted k), MMA, per-group folds over
    k-ranges split between warps, escapes: against x W^T in float64. 40 rows: a partial last tile."""
    rng = rng_for("tile", mode, batch, chunk_rows, str(dtype))
    n, k = 40, 320
    packed = affine_weight(mode, rng, n, k, chunk_rows)
    ready, kernel, info = device_ready(packed)
    assert cuda_ops.tile_supported(list(info.layout), n, k, info.group_size, batch) and info.layout[7] == 32
    x = torch.from_numpy(rng.standard_normal((batch, k)).astype(np.float32)).to(dtype)
    with cuda_ops.host_kernels():
        y = cuda_ops._windowed_tile_affine(*tile_args(x, ready, kernel, packed, info))
    ref = x.double() @ unpack(packed).double().T
    assert y.shape == (batch, n) and y.dtype == torch.float32
    assert rel_error(y, ref) < 1e-5
    assert float((y.double() - ref).abs().max() / ref.abs().max()) < 1e-5


@pytest.mark.parametrize("batch", [17, 100])
def test_linear_takes_the_tile_kernel_above_the_gemv_batches(host_ops, monkeypatch, batch):
    rng = rng_for("tile-linear", batch)
    packed = affine_weight("rate", rng, 48, 256)
    ready, kernel, info = device_ready(packed)

    def unfused(*args, **kwargs):
        raise AssertionError("took another path")
    monkeypatch.setattr(gpu, "_affine_decoded", unfused)
    monkeypatch.setattr(cuda_ops, "windowed_gemv_affine", unfused)
    x = torch.from_numpy(rng.standard_normal((batch, 256)).astype(np.float32)).to(torch.bfloat16)
    bias = torch.randn(48).to(torch.bfloat16)
    y = gpu.linear(x, ready, kernel, bias, info)
    ref = x.double() @ unpack(packed).double().T + bias.double()
    assert y.shape == (batch, 48) and y.dtype == torch.bfloat16
    assert rel_error(y, ref) < 1e-2  # bf16 output rounding


def test_linear_falls_back_where_the_tile_kernel_does_not_apply(host_ops, monkeypatch):
    """fp32 x, or K not a multiple of 16: symbols decoded, then the Triton matmul."""
    rng = rng_for("tile-fallback")
    taken = []
    monkeypatch.setattr(gpu, "_affine_decoded", lambda x2, packed, kernel, info: taken.append(x2.shape) or
                        torch.zeros(x2.shape[0], info.n))
    for k, dtype in ((256, torch.float32), (200, torch.bfloat16)):
        packed = affine_weight("int4-g64", rng, 32, k) if k % 64 == 0 else compress_weight(
            torch.randn(32, k), CompressionConfig(mode="int", bits=4, group_size=40, chunk_symbols=k))[0]
        ready, kernel, info = device_ready(packed)
        gpu.linear(torch.randn(20, k).to(dtype), ready, kernel, None, info)
    assert taken == [(20, 256), (20, 200)]


def test_tile_kernel_refusals():
    rng = rng_for("tile-refusals")
    packed = affine_weight("int4-g64", rng, 32, 128)
    ready, kernel, info = device_ready(packed)
    x = torch.randn(20, 128).to(torch.bfloat16)
    with cuda_ops.host_kernels():
        with pytest.raises(CodecError, match="bf16 or fp16"):
            cuda_ops._windowed_tile_affine(*tile_args(x.float(), ready, kernel, packed, info))
        with pytest.raises(CodecError, match="unsupported input"):
            cuda_ops._windowed_tile_affine(*tile_args(torch.randn(129, 128).to(torch.bfloat16), ready, kernel,
                                                      packed, info))
        zero_counts = kernel["table"].clone()
        zero_counts[cuda_ops.TABLE_WORDS - 1024:cuda_ops.TABLE_WORDS] = 0  # the count table
        with pytest.raises(CodecError, match="table"):
            cuda_ops._windowed_tile_affine(*tile_args(x, ready, dict(kernel, table=zero_counts), packed, info))
        view = cuda_ops._view(ready["symbols"], list(info.layout), kernel["table"])
        x16 = torch.zeros(32, 128, dtype=torch.bfloat16)
        prefix = torch.zeros(129, 32)
        y = torch.empty(32, 32)
        call = lambda batch_pad, x_ptr: _C.host_windowed_tile_affine(
            view, kernel["table"].data_ptr(), x_ptr, False, prefix.data_ptr(), packed["scale"].data_ptr(),
            packed["zero"].data_ptr(), False, 0.0, 64, 32, 128, 20, batch_pad, y.data_ptr(), 0, 0, 0, 0, 0)
        call(32, x16.data_ptr())  # the arguments as the op builds them
        for batch_pad, x_ptr in ((16, x16.data_ptr()), (32, x16.data_ptr() + 2)):  # padding, 8-byte loads of x
            with pytest.raises(CodecError, match="invalid argument"):
                call(batch_pad, x_ptr)


def test_linear_keeps_leading_dims_and_input_dtype(host_ops):
    rng = rng_for("lead")
    w = torch.from_numpy(rng.standard_normal((32, 128)).astype(np.float32) * 0.02)
    packed, _ = compress_weight(w, CompressionConfig(mode="int", bits=4, group_size=64))
    ready, kernel, info = device_ready(packed)
    x = torch.from_numpy(rng.standard_normal((2, 3, 128)).astype(np.float32)).to(torch.bfloat16)
    y = gpu.linear(x, ready, kernel, None, info)
    ref = x.double() @ unpack(packed).double().T
    assert y.shape == (2, 3, 32) and y.dtype == torch.bfloat16
    assert rel_error(y, ref) < 1e-2  # bf16 output rounding


@pytest.mark.parametrize("staged", [1, 0], ids=["staged", "fused"])
@pytest.mark.parametrize("batch", [1, 4, 16])
def test_linear_split_fused_matches_reference(host_ops, fused_only, batch, staged):
    """gpu.linear's lossless GEMV through either kernel (_C.split_gemv_staged), never a dense weight."""
    rng = rng_for("split", batch)
    n, k = 40, 576
    w = torch.from_numpy(rng.standard_normal((n, k)).astype(np.float32) * 0.03).to(torch.bfloat16)
    packed, _ = compress_weight(w, CompressionConfig(mode="lossless"))
    ready, kernel, info = device_ready(packed)
    assert info.kind == 2 and cuda_ops.gemv_supported(list(info.layout), n, k, batch)
    x = torch.from_numpy(rng.standard_normal((batch, k)).astype(np.float32))
    with cuda_ops.kernel_settings(split_gemv_staged=staged):
        y = gpu.linear(x, ready, kernel, None, info)
    assert rel_error(y, x.double() @ w.double().T) < 1e-6


@pytest.mark.parametrize("batch", [1, 4, 16])
def test_byte_split_gemv_gives_the_smallest_splits_sums(host_ops, fused_only, batch):
    """The byte split (lossless_split="byte") takes the staged GEMV's byte instances (the kernel
    votes on its values). At batch 1 (permutes, no value lookups) it sums the same weights in the
    same order as the smallest split of the same weight: the same bits. Above, its lanes take
    columns one at a time (x's rows of B floats would put pieces on the same banks): another
    order, within float rounding."""
    rng = rng_for("byte-split", batch)
    n, k = 40, 576
    w = torch.from_numpy(rng.standard_normal((n, k)).astype(np.float32) * 0.03).to(torch.bfloat16)
    x = torch.from_numpy(rng.standard_normal((batch, k)).astype(np.float32))
    ys = {}
    for split in ("smallest", "byte"):
        packed, _ = compress_weight(w, CompressionConfig(mode="lossless", lossless_split=split))
        ready, kernel, info = device_ready(packed)
        assert (info.top == 8) == (split == "byte")
        ys[split] = gpu.linear(x, ready, kernel, None, info)
    assert torch.equal(ys["byte"], ys["smallest"]) == (batch == 1)
    assert rel_error(ys["byte"], x.double() @ w.double().T) < 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_linear_split_exact_outputs_is_nn_linear_bit_for_bit(host_ops, dtype):
    """exact_outputs (and float16, which the fused GEMV does not take): decode, merge, F.linear."""
    rng = rng_for("exact", str(dtype))
    w = torch.from_numpy(rng.standard_normal((24, 256)).astype(np.float32) * 0.05).to(dtype)
    packed, _ = compress_weight(w, CompressionConfig(mode="lossless"))
    ready, kernel, info = device_ready(packed, exact_outputs=True)
    x = torch.from_numpy(rng.standard_normal((5, 256)).astype(np.float32)).to(dtype)
    bias = torch.randn(24).to(dtype)
    y = gpu.linear(x, ready, kernel, bias, info)
    lin = torch.nn.Linear(256, 24, dtype=dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(bias)
    assert torch.equal(y, lin(x))


def test_decode_and_merge_ops_rebuild_the_weight_bits():
    rng = rng_for("merge")
    w = torch.from_numpy(rng.standard_normal((64, 200)).astype(np.float32)).to(torch.bfloat16)
    w.view(torch.int16)[0, :4] = torch.tensor([0x7F80, -0x0080, 0x7FC1, 0x0001], dtype=torch.int16)  # inf, -inf, nan, subnormal
    packed, _ = compress_weight(w, CompressionConfig(mode="lossless"))
    ready, kernel, info = device_ready(packed)
    with cuda_ops.host_kernels():
        q = cuda_ops._windowed_decode(ready["symbols"], kernel["table"], list(info.layout))
        bits = cuda_ops._split_merge(q, kernel["value16"], ready["raw"], info.top)
    assert np.array_equal(q.numpy(), pycodec.decode(packed["symbols"].numpy()).reshape(-1))
    assert torch.equal(bits, w.view(torch.int16).reshape(-1))


def lossless_packed(rng, n: int, k: int, dtype, chunk_symbols=None, split="smallest"):
    """A lossless split weight with inf, -inf, a NaN and a subnormal among its values."""
    w = torch.from_numpy(rng.standard_normal((n, k)).astype(np.float32) * 0.05).to(dtype)
    specials = [0x7F80, -0x0080, 0x7FC1, 0x0001] if dtype == torch.bfloat16 else [0x7C00, -0x0400, 0x7E01, 0x0001]
    w.view(torch.int16)[n // 2, :4] = torch.tensor(specials, dtype=torch.int16)
    packed, _ = compress_weight(w, CompressionConfig(mode="lossless", chunk_symbols=chunk_symbols,
                                                     lossless_split=split))
    return w, packed


@pytest.mark.parametrize("split", ["smallest", "byte"])
@pytest.mark.parametrize("dtype,n,k,chunk_rows", [
    (torch.bfloat16, 64, 200, None),
    (torch.bfloat16, 37, 203, 3),   # odd rows: chunks start off 16-byte lines (head and tail paths)
    (torch.float16, 48, 576, 2),
    (torch.bfloat16, 5, 9, 1),      # shorter than a piece of 8
])
def test_decode_split_op_rebuilds_the_weight_bits(dtype, n, k, chunk_rows, split):
    """windowed_decode_split: the weight's exact bits in one kernel, equal to decode + merge (the
    byte split through its byte-permute instance, chunks starting at any byte of a raw word)."""
    w, packed = lossless_packed(rng_for("decode_split", n, k), n, k, dtype, chunk_rows and chunk_rows * k, split)
    ready, kernel, info = device_ready(packed)
    assert info.kind == 2 and (chunk_rows is None or info.layout[5] == chunk_rows * k)
    assert split == "smallest" or (info.top == 8 and packed["values"].tolist() == list(range(256)))
    with cuda_ops.host_kernels():
        bits = cuda_ops._windowed_decode_split(ready["symbols"], kernel["table"], kernel["value16"], ready["raw"],
                                               list(info.layout), info.top)
        q = cuda_ops._windowed_decode(ready["symbols"], kernel["table"], list(info.layout))
        merged = cuda_ops._split_merge(q, kernel["value16"], ready["raw"], info.top)
    assert torch.equal(bits, w.view(torch.int16).reshape(-1))
    assert torch.equal(bits, merged)


def test_dense_weight_takes_the_fused_decode_and_falls_back_for_long_chunks(host_ops, monkeypatch):
    """gpu.dense_weight rebuilds a split weight with windowed_decode_split; chunks longer than a
    block's shared memory holds go through decode + merge, to the same bits."""
    w, packed = lossless_packed(rng_for("dense_fallback"), 16, 320, torch.bfloat16)
    ready, kernel, info = device_ready(packed)
    calls = []
    for name in ("windowed_decode_split", "split_merge"):
        op = getattr(cuda_ops, name)
        monkeypatch.setattr(cuda_ops, name, lambda *a, _op=op, _name=name: calls.append(_name) or _op(*a))
    bits = w.view(torch.int16)  # NaN among the values: compared as bits
    assert torch.equal(gpu.dense_weight(ready, kernel, info, torch.device("cpu")).view(torch.int16), bits)
    monkeypatch.setattr(cuda_ops, "split_decode_max_chunk", lambda: info.layout[5] - 1)
    assert torch.equal(gpu.dense_weight(ready, kernel, info, torch.device("cpu")).view(torch.int16), bits)
    assert calls == ["windowed_decode_split", "split_merge"]


@pytest.mark.parametrize("starts", [True, False], ids=["lane-starts", "counted"])
def test_decode_split_equals_decode_and_merge_on_corrupt_payloads(starts):
    """Whatever the payload, the fused op's bits equal decode + merge of the same stream (a lane
    that refuses to decode leaves symbol 0 in both), and both flag the same chunks."""
    rng = rng_for("decode_split_corrupt")
    _, packed = lossless_packed(rng, 24, 300, torch.bfloat16, 600)
    ready, kernel, info = device_ready(packed)
    kernel = kernel if starts else counted(kernel)
    layout = list(info.layout)
    payload = slice(layout[2], layout[2] + 4 * layout[3])
    flagged = 0
    with cuda_ops.host_kernels():
        for trial in range(120):
            bad = cuda_ops.with_slack(ready["symbols"].clone())
            if trial % 2:  # random bytes
                for _ in range(1 + trial % 8):
                    bad[int(rng.integers(payload.start, payload.stop))] = int(rng.integers(0, 256))
            else:  # a run of ones (the longest codes): a window then holds too few codes for its lane
                at = int(rng.integers(payload.start, payload.stop - 16))
                bad[at:at + 16] = 0xFF
            q, status = cuda_ops._decode_launch("windowed_decode", bad, kernel["table"], layout)
            merged = cuda_ops._split_merge(q, kernel["value16"], ready["raw"], info.top)
            out = torch.empty_like(merged)
            split_status = torch.zeros(1, dtype=torch.int32)
            _C.host_windowed_decode_split(cuda_ops._view(bad, layout, kernel["table"]), kernel["table"].data_ptr(),
                                          kernel["value16"].data_ptr(), ready["raw"].data_ptr(),
                                          ready["raw"].numel() // 4, 16 - info.top, out.data_ptr(),
                                          split_status.data_ptr(), 0)
            assert torch.equal(out, merged) and int(split_status) == int(status)
            flagged += int(status) != 0
    assert flagged > 0, flagged  # some trials made a lane overrun: the zero-filled path ran


def test_host_ops_refuse_what_the_cuda_ops_refuse():
    w = torch.randn(16, 64)
    packed, _ = compress_weight(w, CompressionConfig(mode="int", bits=4, group_size=64))
    ready, kernel, info = device_ready(packed)
    layout = list(info.layout)
    with cuda_ops.host_kernels():
        with pytest.raises(CodecError, match="readable bytes"):  # no slack after the stream
            cuda_ops._windowed_decode(ready["symbols"].clone(), kernel["table"], layout)
        with pytest.raises(CodecError, match="tables"):
            cuda_ops._windowed_decode(ready["symbols"], kernel["table"][:cuda_ops.TABLE_WORDS - 1], layout)
        with pytest.raises(CodecError, match="layout does not match"):  # an index past the payload's start
            cuda_ops._windowed_decode(ready["symbols"], kernel["table"], layout[:6] + [layout[6] + 64] + layout[7:])
        bad = list(layout)
        bad[4] += layout[5]  # symbols for one more chunk than the index has: the shared launch checks
        with pytest.raises(CodecError, match="invalid argument"):
            cuda_ops._windowed_decode(ready["symbols"], kernel["table"], bad)
        bad = list(layout)
        bad[7], bad[8] = 2, 1  # "constant code" with two lanes (a table without lane starts: they would not fit)
        with pytest.raises(CodecError, match="invalid argument"):
            cuda_ops._windowed_decode(ready["symbols"], kernel["table"][:cuda_ops.TABLE_WORDS], bad)
        with pytest.raises(CodecError, match="lane starts"):  # starts of another lane count
            cuda_ops._windowed_decode(ready["symbols"], kernel["table"], bad)
    with pytest.raises(CodecError, match="CUDA"):  # outside host_kernels(), CPU tensors are refused
        cuda_ops._windowed_decode(ready["symbols"], kernel["table"], layout)


def test_decode_split_refuses_bad_arguments(monkeypatch):
    _, packed = lossless_packed(rng_for("decode_split_refuse"), 16, 64, torch.bfloat16)
    ready, kernel, info = device_ready(packed)
    layout, value16, raw = list(info.layout), kernel["value16"], ready["raw"]
    with cuda_ops.host_kernels():
        def run(blob=ready["symbols"], value16=value16, raw=raw, top=info.top):
            return cuda_ops._windowed_decode_split(blob, kernel["table"], value16, raw, layout, top)

        with pytest.raises(CodecError, match="raw bytes"):
            run(raw=raw.clone())  # no slack after the raw bits
        with pytest.raises(CodecError, match="raw bytes"):
            run(raw=cuda_ops.with_slack(raw[:-4].clone()))
        with pytest.raises(CodecError, match="value16"):
            run(value16=value16[:255].clone())
        with pytest.raises(CodecError, match="top"):
            run(top=16)
        with pytest.raises(CodecError, match="readable bytes"):
            run(blob=ready["symbols"].clone())
        monkeypatch.setattr(_C, "host_split_decode_max_chunk", lambda: layout[5] - 1)
        with pytest.raises(CodecError, match="shared memory"):
            run()
    with pytest.raises(CodecError, match="CUDA"):
        cuda_ops._windowed_decode_split(ready["symbols"], kernel["table"], value16, raw, layout, info.top)


def test_tables_that_are_not_a_codes_are_refused_not_looped_on():
    """A count table of zeros (or entries of no codes) would stall the decoding loops: refused."""
    w = torch.randn(16, 64)
    packed, _ = compress_weight(w, CompressionConfig(mode="int", bits=4, group_size=64))
    ready, kernel, info = device_ready(packed)
    layout = list(info.layout)
    zero_counts = kernel["table"].clone()
    zero_counts[cuda_ops.TABLE_WORDS - 1024:cuda_ops.TABLE_WORDS] = 0  # the count table
    no_codes = kernel["table"].clone()
    no_codes[:4096] &= ~(15 << 24)  # entries with a count of 0
    x = torch.randn(1, 64)
    with cuda_ops.host_kernels():
        for table in (zero_counts, no_codes):
            with pytest.raises(CodecError, match="table"):
                cuda_ops._windowed_decode(ready["symbols"], table, layout)
        with pytest.raises(CodecError, match="table"):
            cuda_ops._windowed_gemv_affine(x, ready["symbols"], zero_counts, kernel["values"], packed["scale"],
                                           packed["zero"], kernel["escape_row"], kernel["escape_col"],
                                           kernel["escape_value"], layout, float(info.zero_in_values),
                                           info.group_size, info.n, info.k)
        with pytest.raises(CodecError, match="value entries"):
            cuda_ops._windowed_gemv_affine(x, ready["symbols"], kernel["table"], kernel["values"][:-1],
                                           packed["scale"], packed["zero"], kernel["escape_row"],
                                           kernel["escape_col"], kernel["escape_value"], layout,
                                           float(info.zero_in_values), info.group_size, info.n, info.k)


def test_damaged_escape_lists_stay_inside_their_buffers(host_ops):
    """Row pointers past the list and columns past K are clamped in the epilogue (no reads outside)."""
    rng = rng_for("escapes")
    w = rng.standard_normal((72, 576)).astype(np.float32) * 0.02
    w[rng.integers(0, 72, 40), rng.integers(0, 576, 40)] = 5.0  # far past 127 steps: escapes
    packed, _ = compress_weight(torch.from_numpy(w), CompressionConfig(mode="rate", bits=3.5))
    ready, kernel, info = device_ready(packed)
    n_esc = kernel["escape_col"].numel()
    assert n_esc > 0
    x = torch.from_numpy(rng.standard_normal((1, 576)).astype(np.float32))
    args = lambda row, col: (x, ready["symbols"], kernel["table"], kernel["values"], packed["scale"], packed["zero"],
                             row, col, kernel["escape_value"], list(info.layout), float(info.zero_in_values),
                             info.group_size, info.n, info.k)
    good = cuda_ops.windowed_gemv_affine(*args(kernel["escape_row"], kernel["escape_col"]))
    row = kernel["escape_row"].clone()
    row[-1] = 1 << 30  # the last row claims escapes far past the list
    col = kernel["escape_col"].clone()
    col[0] = 1 << 30  # a column past K
    y = cuda_ops.windowed_gemv_affine(*args(row, col))
    # The last row's pointer is clamped to the list's end (its own escapes); escape 0 is skipped.
    r0 = int(torch.searchsorted(kernel["escape_row"], 0, right=True)) - 1
    others = [r for r in range(info.n) if r != r0]
    assert torch.equal(y[:, others], good[:, others])
    missing = float(x[0, int(kernel["escape_col"][0])] * kernel["escape_value"][0])
    assert abs(float(y[0, r0]) - (float(good[0, r0]) - missing)) < 1e-4 * max(1.0, abs(missing))


@pytest.mark.parametrize("batch", [1, 3, 11])
def test_prefix_sums_are_the_nearest_fp32_to_the_exact_sums(batch):
    """The zero-point fold reads x's prefix sums: each must be the fp32 nearest the exact sum,
    for any batch and in either kernel's inputs, so that no device's summation order shows in y
    (on an H200, batch 1's parallel fp32 scan differed from the emulation's in the last bits)."""
    rng = rng_for("prefix", batch)
    k = 4096
    x = torch.from_numpy((rng.standard_normal((batch, k)) * np.exp(rng.uniform(-3, 3, k))).astype(np.float32))
    exact = np.cumsum(x.numpy().T.astype(np.float64), axis=0)
    want = np.zeros((k + 1, batch), np.float32)
    want[1:] = exact.astype(np.float32)
    _, p, padded = cuda_ops.gemv_inputs(x)
    assert p.shape == (k + 1, padded) and not p[:, batch:].any()
    np.testing.assert_array_equal(p[:, :batch].numpy(), want)
    tile = cuda_ops.column_prefix_sums(x.t(), int(_C.tile_batch_pad(batch)))
    np.testing.assert_array_equal(tile[:, :batch].numpy(), want)
    assert np.any(np.cumsum(x.numpy().T, axis=0, dtype=np.float32) != want[1:])  # fp32 order would show


def test_gemv_x_shared_bytes_is_a_clamped_setting():
    before = _C.gemv_x_shared_bytes()
    try:
        assert before == 64 * 1024  # the default, also the most
        assert _C.gemv_x_shared_bytes(0) == 0 and _C.gemv_x_shared_bytes() == 0
        assert _C.gemv_x_shared_bytes(1 << 30) == 64 * 1024
        assert _C.gemv_x_shared_bytes(4096) == 4096
    finally:
        _C.gemv_x_shared_bytes(before)


def test_decode_stage_symbols_is_a_clamped_setting():
    before = _C.decode_stage_symbols()
    try:
        assert before == 16384  # the default, also the most
        assert _C.decode_stage_symbols(0) == 0
        assert _C.decode_stage_symbols(1 << 20) == 16384
        assert _C.decode_stage_symbols(777) == 777 and _C.decode_stage_symbols() == 777
    finally:
        _C.decode_stage_symbols(before)


@pytest.mark.parametrize("name", ["stream_shared", "stage_word_stores", "affine_gemv_staged", "split_gemv_staged"])
def test_switch_settings_are_clamped(name):
    """The on/off kernel settings: on by default, clamped to 0..1, set and restored by kernel_settings."""
    setting = getattr(_C, name)
    before = setting()
    try:
        assert before == 1  # the default
        assert setting(0) == 0 and setting(7) == 1 and setting() == 1
        with cuda_ops.kernel_settings(**{name: 0}):
            assert setting() == 0
        assert setting() == 1
    finally:
        setting(before)


def test_stream_layout_gives_the_longest_chunk():
    """StreamLayout.max_chunk_words, what a GEMV warp's stream stage holds: the largest of the
    index's chunk sizes (u16 each, after the super offsets)."""
    sym = np.random.default_rng(9).integers(0, 60, size=(24, 700)).astype(np.uint8)
    sym[5] = 0  # a cheap row: chunks of unequal sizes
    blob = pycodec.encode(sym, chunk_symbols=1400, lanes=8)
    s = cuda_ops.stream_layout(blob)
    sizes = np.frombuffer(blob, np.uint16, count=s.n_chunks, offset=s.sizes_offset)
    assert s.max_chunk_words == int(sizes.max()) > int(sizes.min()) and len(s.ints) == cuda_ops.LAYOUT_INTS
    assert cuda_ops.stream_layout(pycodec.encode(sym, coder="rans")).max_chunk_words == 0  # format v1


def test_warps_per_block_is_a_clamped_setting():
    before = _C.warps_per_block()
    try:
        assert before == 4  # the default
        assert _C.warps_per_block(0) == 1 and _C.warps_per_block(99) == 16 and _C.warps_per_block(8) == 8
    finally:
        _C.warps_per_block(before)


def test_kernel_settings_hold_for_the_block_only():
    before = {name: getattr(_C, name)() for name in cuda_ops.KERNEL_SETTINGS}
    with cuda_ops.kernel_settings(warps_per_block=16, decode_stage_symbols=0):
        assert (_C.warps_per_block(), _C.decode_stage_symbols()) == (16, 0)
        assert _C.gemv_x_shared_bytes() == before["gemv_x_shared_bytes"]
    assert {name: getattr(_C, name)() for name in cuda_ops.KERNEL_SETTINGS} == before
    with pytest.raises(RuntimeError), cuda_ops.kernel_settings(gemv_x_shared_bytes=0):
        raise RuntimeError("a launch failed")
    assert _C.gemv_x_shared_bytes() == before["gemv_x_shared_bytes"]
    with pytest.raises(ValueError, match="unknown kernel settings"), cuda_ops.kernel_settings(warps=16):
        pass


# ---------------------------------------------------------------------------- lane starts

def counted(kernel: dict) -> dict:
    """kernel buffers whose table has no lane starts: the kernels count every lane's codes."""
    return dict(kernel, table=kernel["table"][:cuda_ops.TABLE_WORDS])


@pytest.mark.parametrize("mode", ["int4-g64", "int3-sym-g32", "rate"])
@pytest.mark.parametrize("chunk_rows", [1, 4])
def test_lane_starts_give_the_count_pass_results_bit_for_bit(host_ops, mode, chunk_rows):
    """Every v2 op reads the same ranges from the lane starts as its count pass finds: symbols,
    GEMV rows at every batch size and the tile kernel's rows are the same bits either way."""
    rng = rng_for("lane-starts", mode, chunk_rows)
    n, k = 48, 256
    packed = affine_weight(mode, rng, n, k, chunk_rows)
    ready, kernel, info = device_ready(packed)
    layout = list(info.layout)
    assert kernel["table"].numel() == cuda_ops.TABLE_WORDS + cuda_ops.lane_start_words(layout) > cuda_ops.TABLE_WORDS
    with cuda_ops.host_kernels():
        outs = []
        for kb in (kernel, counted(kernel)):
            q = cuda_ops._windowed_decode(ready["symbols"], kb["table"], layout)
            ys = []
            for batch in (1, 3, 16):
                x = torch.from_numpy(rng_for("x", batch).standard_normal((batch, k)).astype(np.float32))
                ys.append(gpu.linear(x, ready, kb, None, info))
            x = torch.from_numpy(rng_for("x", 33).standard_normal((33, k)).astype(np.float32)).to(torch.bfloat16)
            ys.append(cuda_ops._windowed_tile_affine(*tile_args(x, ready, kb, packed, info)))
            outs.append((q, ys))
    (q, ys), (q_counted, ys_counted) = outs
    assert np.array_equal(q.numpy(), pycodec.decode(packed["symbols"].numpy()).reshape(-1))
    assert torch.equal(q, q_counted)
    for y, y_counted in zip(ys, ys_counted):
        assert torch.equal(y, y_counted)


@pytest.mark.parametrize("staged", [1, 0], ids=["staged", "fused"])
def test_lane_starts_give_the_same_lossless_bits(staged):
    w, packed = lossless_packed(rng_for("lane-starts-split", staged), 37, 208, torch.bfloat16, 3 * 208)
    ready, kernel, info = device_ready(packed)
    layout = list(info.layout)
    x = torch.from_numpy(rng_for("lane-starts-x").standard_normal((4, 208)).astype(np.float32))
    outs = []
    with cuda_ops.host_kernels(), cuda_ops.kernel_settings(split_gemv_staged=staged):
        for kb in (kernel, counted(kernel)):
            bits = cuda_ops._windowed_decode_split(ready["symbols"], kb["table"], kb["value16"], ready["raw"], layout,
                                                   info.top)
            y = cuda_ops._windowed_gemv_split(x, ready["symbols"], kb["table"], kb["values"], ready["raw"], layout,
                                              info.top, info.n, info.k)
            outs.append((bits, y))
    assert torch.equal(outs[0][0], w.view(torch.int16).reshape(-1)) and torch.equal(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1].view(torch.int32), outs[1][1].view(torch.int32))  # NaN rows too: as bits


def lane_starts_of(bytes_: np.ndarray, layout: list[int]) -> np.ndarray:
    """Each lane's first symbol from its stream's lane start bytes (windowed.h), -1 for the lanes of a
    chunk whose bytes escape (the kernels count those)."""
    n_symbols, chunk_symbols, n_chunks, lanes = layout[4:8]
    b = bytes_.reshape(n_chunks, lanes).astype(np.int64)
    m = np.minimum(chunk_symbols, n_symbols - np.arange(n_chunks) * chunk_symbols)
    counts = np.maximum(0, (m // lanes)[:, None] - 128 + b)
    counts[:, -1] = 0
    starts = np.concatenate([np.zeros((n_chunks, 1), np.int64), np.cumsum(counts, axis=1)[:, :-1]], axis=1)
    starts[(b[:, :-1] == 255).any(axis=1)] = -1
    return starts


def test_lane_starts_of_streams_and_tables(monkeypatch):
    """_C.lane_starts: a byte a lane whose counts sum to each lane's first symbol of its chunk (0 for
    the first lane, in order, within the chunk), for chunks of any length; none for format v1; a
    corrupt stream raises as histogram does. cuda_ops.LANE_STARTS off builds tables without them."""
    sym = np.random.default_rng(3).integers(0, 9, size=(40, 1000)).astype(np.uint8)
    for chunk in (3000, 40000):
        blob = pycodec.encode(sym, chunk_symbols=chunk, lanes=32)
        s = cuda_ops.stream_layout(blob)
        got = _C.lane_starts(blob)
        assert got.dtype == np.uint8 and got.shape == (s.n_chunks * s.lanes,)
        starts = lane_starts_of(got, s.ints)
        lengths = np.minimum(s.chunk_symbols, s.n_symbols - np.arange(s.n_chunks) * s.chunk_symbols)
        assert (starts[:, 0] == 0).all() and (np.diff(starts, axis=1) > 0).all()
        assert (starts <= lengths[:, None]).all()
        # Even lanes: every lane's share of its chunk (~window bits / 3 bits a code) lies near m / 32.
        assert abs(int(starts[0, 16]) - 16 * int(lengths[0]) // 32) < 200
    assert _C.lane_starts(pycodec.encode(sym, coder="rans")).size == 0  # format v1
    bad = bytearray(blob)
    bad[-5] ^= 0x10
    with pytest.raises(CodecError):
        _C.lane_starts(bytes(bad))
    packed = affine_weight("int4-g64", rng_for("lane-starts-off"), 16, 128)
    info = gpu.weight_info(packed)
    assert gpu.kernel_buffers(packed, info)["table"].numel() == cuda_ops.TABLE_WORDS + cuda_ops.lane_start_words(
        list(info.layout))
    monkeypatch.setattr(cuda_ops, "LANE_STARTS", False)
    assert gpu.kernel_buffers(packed, info)["table"].numel() == cuda_ops.TABLE_WORDS


def test_wrong_lane_starts_are_flagged_not_trusted():
    """Starts that are not the stream's make the decode flag its chunks (sums past a chunk's end) or decode
    garbage inside its buffers; never a read outside them (csrc/tests checks that under ASan)."""
    packed = affine_weight("rate", rng_for("lane-starts-wrong"), 32, 256, 2)
    ready, kernel, info = device_ready(packed)
    layout = list(info.layout)
    n_starts = layout[6] * layout[7]
    with cuda_ops.host_kernels():
        _, status = cuda_ops._decode_launch("windowed_decode", ready["symbols"], kernel["table"], layout)
        assert int(status) == 0
        table = kernel["table"].clone()
        starts = table[cuda_ops.TABLE_WORDS:].view(torch.uint8)[:n_starts]
        starts[0::layout[7]] = 254  # lane 0 of every chunk takes 126 symbols more than its share
        starts[1::layout[7]] = 254  # and lane 1 too: past the chunk's end
        _, status = cuda_ops._decode_launch("windowed_decode", ready["symbols"], table, layout)
        assert int(status) == 1
        with pytest.raises(CodecError, match="lane starts"):
            cuda_ops._decode_launch("windowed_decode", ready["symbols"], table[:-1], layout)


def test_rate_gemvs_skip_the_prefix_sums_their_zero_point_does_not_need(host_ops, monkeypatch):
    """Rate mode's broadcast zero (128) lies whole in the value entries: the GEMV and the tile
    kernel run without prefix sums of x (two to three launches fewer a call) and still match the
    float64 reference; a grouped zero point needs them."""
    calls = []
    real = cuda_ops.column_prefix_sums
    monkeypatch.setattr(cuda_ops, "column_prefix_sums", lambda *a: calls.append(1) or real(*a))
    rng = rng_for("prefix-skip")
    for mode, expect in (("rate", 0), ("int4-g64", 1)):
        packed = affine_weight(mode, rng, 32, 256, 2)
        ready, kernel, info = device_ready(packed)
        assert (info.zero_in_values != 0) == (mode == "rate")
        for batch, dtype in ((3, torch.float32), (40, torch.bfloat16)):  # fused GEMV, tile kernel
            calls.clear()
            x = torch.from_numpy(rng.standard_normal((batch, 256)).astype(np.float32)).to(dtype)
            y = gpu.linear(x, ready, kernel, None, info)
            ref = x.double() @ unpack(packed).double().T
            assert len(calls) == expect, (mode, batch)
            assert rel_error(y.float(), ref) < (1e-5 if dtype == torch.float32 else 1e-2)


def test_a_broadcast_zero_the_values_do_not_hold_keeps_its_term(host_ops):
    """A [1, 1] zero that is not an integer (zero_in_values 0): the values hold q, and the zero
    point's term needs the prefix sums; the op computes them and matches the reference."""
    rng = rng_for("broadcast-zero")
    packed = affine_weight("int4-g64", rng, 32, 256, 2)
    packed["zero"] = torch.tensor([[7.5]], dtype=torch.float16)
    ready, kernel, info = device_ready(packed)
    assert info.zero_in_values == 0
    x = torch.from_numpy(rng.standard_normal((3, 256)).astype(np.float32))
    y = gpu.linear(x, ready, kernel, None, info)
    ref = x.double() @ unpack(packed).double().T
    assert rel_error(y, ref) < 1e-5
