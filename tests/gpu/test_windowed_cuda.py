"""The format-v2 kernels on a CUDA device: bit for bit what the CPU emulation computes.

The emulation (tests/test_windowed_gemv.py) checks the kernels' arithmetic against float64
references on any machine; here the kernels must equal the emulation exactly (same tables,
same lane schedule, same fmaf order), decode what the CPU decodes, and the module around them
must stay free of host syncs, capturable by CUDA graphs and torch.compile.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_windowed_gemv import AFFINE_CASES, emulate_affine, hostile_symbols, kernel_inputs, rng_for

import pycodec
from pycodec import CodecError, _C, cuda_ops
from pycodec.config import CompressionConfig
from pycodec.nn import CompressedLinear
from pycodec.quant import compress_weight, unpack

pytestmark = pytest.mark.gpu


def to_cuda(packed: dict) -> dict:
    out = {k: v.cuda() for k, v in packed.items()}
    for name in ("symbols", "raw"):
        if name in out:
            out[name] = cuda_ops.with_slack(out[name])
    return out


def test_build_has_cuda_kernels():
    assert _C.cuda_compiled() and _C.cuda_device_count() >= 1


@pytest.fixture(params=[("staged", 4), ("unstaged", 1), ("staged", 16), ("staged, counted", 4),
                        ("staged, global stream", 4), ("unstaged, global stream", 4), ("staged, byte stores", 4)],
                ids=str)
def decode_staging(request, monkeypatch):
    """The instances of the decode kernel: chunks staged in shared memory and written out whole
    (the default up to 16384 symbols, _C.decode_stage_symbols) and written byte by byte (0); in
    blocks of the default 4 warps and of 16 or 1 (_C.warps_per_block); lane ranges from the lane
    starts (the default) or from the count pass ("counted": cuda_ops.LANE_STARTS off); each warp's
    chunk words copied into shared memory (the default, _C.stream_shared) or read in place; the
    stage stored a word at a time (the default, _C.stage_word_stores) or byte by byte."""
    staging, warps = request.param
    monkeypatch.setattr(cuda_ops, "LANE_STARTS", "counted" not in staging)
    with cuda_ops.kernel_settings(warps_per_block=warps, decode_stage_symbols=16384 if staging.startswith("staged") else 0,
                                  stream_shared=int("global stream" not in staging),
                                  stage_word_stores=int("byte stores" not in staging)):
        yield request.param


@pytest.mark.parametrize("kind", ["gauss", "constant", "two", "all256", "skewed", "uniform"])
@pytest.mark.parametrize("n,chunk,lanes", [(1, None, None), (31, 31, 32), (1000, None, None), (5000, 333, 7),
                                           (20000, 4096, 32), (20000, 64, 32), (3000, 1500, 1),
                                           (4_000_000, None, None), (200_000, 20_000, 32)])
def test_decode_kernel_bit_exact(kind, n, chunk, lanes, decode_staging):
    x = hostile_symbols(kind, n, rng_for(kind, n, chunk, lanes))
    blob = pycodec.encode(x, chunk_symbols=chunk, lanes=lanes)
    got = cuda_ops.decode_cuda(blob).cpu().numpy()
    np.testing.assert_array_equal(got, x)


def test_decode_of_a_corrupt_stream_raises(decode_staging):
    x = hostile_symbols("gauss", 50_000, rng_for("corrupt-gpu"))
    blob = bytearray(pycodec.encode(x))
    blob[_C.info(bytes(blob))["payload_offset"] + 100] ^= 0x10
    with pytest.raises(CodecError):
        cuda_ops.decode_cuda(bytes(blob))


def _gemv_affine(packed: dict, x: np.ndarray) -> torch.Tensor:
    from pycodec import gpu

    info = gpu.weight_info(packed)
    kb = {k: v.cuda() for k, v in gpu.kernel_buffers(packed, info).items()}
    p = to_cuda(packed)
    return cuda_ops.windowed_gemv_affine(torch.from_numpy(x).cuda(), p["symbols"], kb["table"], kb["values"],
                                         p["scale"], p["zero"], kb["escape_row"], kb["escape_col"],
                                         kb["escape_value"], list(info.layout), float(info.zero_in_values),
                                         info.group_size, info.n, info.k)


@pytest.fixture(params=[("x shared", 4), ("x global", 4), ("x shared", 16), ("x global", 1), ("x shared, counted", 4),
                        ("x shared, global stream", 4)], ids=str)
def x_placement(request, monkeypatch):
    """The instances of the fused GEMVs: x copied into shared memory (the default where it fits,
    _C.gemv_x_shared_bytes) and x read from global memory (0); in blocks of the default 4 warps and
    of 16 or 1 (_C.warps_per_block); lane ranges from the lane starts or the count pass ("counted");
    each warp's chunk copied into shared memory (the default, _C.stream_shared) or read in
    place ("global stream"). They must all give the same bits."""
    placement, warps = request.param
    monkeypatch.setattr(cuda_ops, "LANE_STARTS", "counted" not in placement)
    x_bytes = 0 if placement.startswith("x global") else 64 * 1024
    with cuda_ops.kernel_settings(warps_per_block=warps, gemv_x_shared_bytes=x_bytes,
                                  stream_shared=int("global stream" not in placement)):
        yield request.param


@pytest.mark.parametrize("n,k,bits,gs,sym,batch,rows", AFFINE_CASES)
def test_fused_affine_equals_emulation_bitwise(n, k, bits, gs, sym, batch, rows, x_placement):
    rng = rng_for("affine-gpu", n, k, bits, gs, batch)
    w = torch.from_numpy(rng.standard_normal((n, k)).astype(np.float32) * 0.05)
    cfg = CompressionConfig(mode="int", bits=bits, group_size=gs, symmetric=sym, chunk_symbols=rows * k if rows else None)
    packed, _ = compress_weight(w, cfg)
    x = rng.standard_normal((batch, k)).astype(np.float32)
    got = _gemv_affine(packed, x).cpu().numpy()
    np.testing.assert_array_equal(got, emulate_affine(packed, x))


@pytest.mark.parametrize("staged", [1, 0], ids=["staged at batch 1", "fused"])
@pytest.mark.parametrize("batch", [1, 3, 8, 11, 16])
def test_fused_rate_with_escapes_equals_emulation_bitwise(batch, x_placement, staged):
    """Rate weights: the staged GEMV at batch 1 (_C.affine_gemv_staged, the default), the fused one
    at other batches or with the setting off; the emulation follows the setting."""
    with cuda_ops.kernel_settings(affine_gemv_staged=staged):
        check_rate_gemv(batch)


def check_rate_gemv(batch: int) -> None:
    rng = rng_for("rate-gpu", batch)
    w = rng.standard_normal((300, 1536)).astype(np.float32) * 0.02
    w[rng.integers(0, 300, 50), rng.integers(0, 1536, 50)] = 5.0
    packed, _ = compress_weight(torch.from_numpy(w), CompressionConfig(mode="rate", bits=3.5, chunk_symbols=1536))
    x = rng.standard_normal((batch, 1536)).astype(np.float32)
    got = _gemv_affine(packed, x).cpu().numpy()
    padded = batch if batch <= 8 else 16  # the kernel runs 9..15 as 16: emulate the same instance
    xe = np.zeros((padded, 1536), np.float32)
    xe[:batch] = x
    np.testing.assert_array_equal(got, emulate_affine(packed, xe)[:batch])


@pytest.fixture(params=[(1, 1), (0, 1), (1, 0)], ids=["staged", "fused", "staged, byte stores"])
def split_route(request):
    """Both lossless GEMVs (_C.split_gemv_staged): the staged one where K % 8 == 0, and the fused one;
    the staged one's stage stored a word at a time (the default) and byte by byte
    (_C.stage_word_stores, the same stage). The emulation follows the route setting."""
    staged, word_stores = request.param
    with cuda_ops.kernel_settings(split_gemv_staged=staged, stage_word_stores=word_stores):
        yield staged


@pytest.fixture(params=["smallest", "byte"])
def lossless_split(request):
    """Both lossless splits (CompressionConfig.lossless_split): the byte split takes the kernels'
    byte-permute instances (they vote on its values), the smallest split the general ones."""
    return request.param


@pytest.mark.parametrize("n,k,batch,rows", [(64, 256, 1, 1), (40, 576, 4, 1), (9, 96, 2, 4), (1536, 576, 1, 1),
                                            (576, 1536, 8, 1), (256, 4096, 3, 1), (128, 12288, 2, 1),
                                            (30, 200, 16, 2), (20, 100, 5, 1)])
def test_fused_split_equals_emulation_bitwise(n, k, batch, rows, x_placement, split_route):
    check_split_gemv(n, k, batch, rows, "smallest")


@pytest.mark.parametrize("n,k,batch,rows", [(64, 256, 1, 1), (40, 576, 4, 1), (9, 96, 2, 4), (1536, 576, 1, 1),
                                            (576, 1536, 8, 1), (128, 12288, 2, 1), (30, 200, 16, 2)])
def test_byte_split_gemv_equals_emulation_bitwise(n, k, batch, rows, split_route):
    """The byte split through the staged GEMV's byte-permute instance (and the fused GEMV), default settings."""
    check_split_gemv(n, k, batch, rows, "byte")


def check_split_gemv(n: int, k: int, batch: int, rows: int, lossless_split: str) -> None:
    from pycodec import gpu

    rng = rng_for("split-gpu", n, k, batch)
    w = torch.from_numpy(rng.standard_normal((n, k)).astype(np.float32) * 0.03).to(torch.bfloat16)
    packed, _ = compress_weight(w, CompressionConfig(mode="lossless", chunk_symbols=rows * k,
                                                     lossless_split=lossless_split))
    info = gpu.weight_info(packed)
    kb = {k_: v.cuda() for k_, v in gpu.kernel_buffers(packed, info).items()}
    p = to_cuda(packed)
    x = rng.standard_normal((batch, k)).astype(np.float32)
    got = cuda_ops.windowed_gemv_split(torch.from_numpy(x).cuda(), p["symbols"], kb["table"], kb["values"], p["raw"],
                                       list(info.layout), info.top, n, k).cpu().numpy()
    x_t, _ = kernel_inputs(x)
    emu = np.zeros((batch, n), np.float32)
    _C.emulate_gemv_split(packed["symbols"].numpy(), packed["values"].tolist(), info.top, packed["raw"].numpy(), n, k,
                          x_t, batch, emu)
    np.testing.assert_array_equal(got, emu)
    # and the weights themselves come back bit-exact through decode + merge on the GPU
    q = cuda_ops.windowed_decode(p["symbols"], kb["table"], list(info.layout))
    bits = cuda_ops.split_merge(q, kb["value16"], p["raw"], info.top)
    assert torch.equal(bits.cpu(), w.view(torch.int16).reshape(-1))


@pytest.mark.parametrize("warps", [1, 4, 16])
@pytest.mark.parametrize("dtype,n,k,chunk_rows", [(torch.bfloat16, 4096, 4096, None), (torch.bfloat16, 37, 203, 3),
                                                  (torch.float16, 576, 1536, 2), (torch.bfloat16, 5, 9, 1),
                                                  (torch.bfloat16, 4, 65536, 1)])
@pytest.mark.parametrize("stream,word_stores", [(1, 1), (0, 1), (1, 0)],
                         ids=["stream staged", "stream in place", "byte stores"])
def test_decode_split_kernel_rebuilds_the_weight_bits(dtype, n, k, chunk_rows, warps, stream, word_stores,
                                                      lossless_split):
    """windowed_decode_split on the GPU: the weight's exact bits, equal to decode + merge, in blocks
    of 1, 4 or 16 warps; chunks off 16-byte lines (K = 203) and a 64 KiB chunk per warp; the stage
    stored a word at a time (the default) or byte by byte."""
    from pycodec import gpu

    rng = rng_for("decode-split-gpu", n, k, str(dtype))
    w = torch.from_numpy(rng.standard_normal((n, k)).astype(np.float32) * 0.03).to(dtype)
    w.view(torch.int16)[n // 2, :2] = torch.tensor([0x7FC1, 0x0001], dtype=torch.int16)  # a NaN, a subnormal
    packed, _ = compress_weight(w, CompressionConfig(mode="lossless", chunk_symbols=chunk_rows and chunk_rows * k,
                                                     lossless_split=lossless_split))
    info = gpu.weight_info(packed)
    kb = {k_: v.cuda() for k_, v in gpu.kernel_buffers(packed, info).items()}
    p = to_cuda(packed)
    assert info.layout[5] <= cuda_ops.split_decode_max_chunk()
    with cuda_ops.kernel_settings(warps_per_block=warps, stream_shared=stream, stage_word_stores=word_stores):
        bits = cuda_ops.windowed_decode_split(p["symbols"], kb["table"], kb["value16"], p["raw"], list(info.layout),
                                              info.top)
    assert torch.equal(bits.cpu(), w.view(torch.int16).reshape(-1))


@pytest.mark.parametrize("starts", [True, False], ids=["lane-starts", "counted"])
def test_decode_split_kernel_on_corrupt_payloads_equals_its_emulation(starts):
    """Damaged payloads: the kernel's bits equal the host twin's (a lane that refuses to decode
    leaves symbol 0: the kernel clears its stage), and both flag the same streams. With lane starts
    a lane takes the valid stream's range and decodes the damaged bits there; the count pass (and
    the starts' bound near the payload's end) flags lanes whose window holds too few codes."""
    from pycodec import gpu

    rng = rng_for("decode-split-corrupt-gpu")
    w = torch.from_numpy(rng.standard_normal((24, 300)).astype(np.float32) * 0.03).to(torch.bfloat16)
    packed, _ = compress_weight(w, CompressionConfig(mode="lossless", chunk_symbols=600))
    info = gpu.weight_info(packed)
    kernel = gpu.kernel_buffers(packed, info)
    if not starts:
        kernel["table"] = kernel["table"][:cuda_ops.TABLE_WORDS]
    kb = {k_: v.cuda() for k_, v in kernel.items()}
    layout = list(info.layout)
    raw = cuda_ops.with_slack(packed["raw"])
    flagged = 0
    for trial in range(60):
        bad = packed["symbols"].clone()
        at = int(rng.integers(layout[2], layout[2] + 4 * layout[3] - 16))
        bad[at:at + 16] = 0xFF if trial % 2 else torch.from_numpy(rng.integers(0, 256, 16).astype(np.uint8))
        host_out, host_status = torch.empty(info.n * info.k, dtype=torch.int16), torch.zeros(1, dtype=torch.int32)
        host_bad = cuda_ops.with_slack(bad)
        _C.host_windowed_decode_split(cuda_ops._view(host_bad, layout, kernel["table"]), kernel["table"].data_ptr(),
                                      kernel["value16"].data_ptr(), raw.data_ptr(), raw.numel() // 4, 16 - info.top,
                                      host_out.data_ptr(), host_status.data_ptr(), 0)
        dev_bad, dev_raw = cuda_ops.with_slack(bad.cuda()), cuda_ops.with_slack(raw.cuda())
        dev_out = torch.empty(info.n * info.k, dtype=torch.int16, device="cuda")
        dev_status = torch.zeros(1, dtype=torch.int32, device="cuda")
        _C.cuda_windowed_decode_split(cuda_ops._view(dev_bad, layout, kb["table"]), kb["table"].data_ptr(),
                                      kb["value16"].data_ptr(), dev_raw.data_ptr(), raw.numel() // 4, 16 - info.top, dev_out.data_ptr(),
                                      dev_status.data_ptr(), torch.cuda.current_stream().cuda_stream)
        assert torch.equal(dev_out.cpu(), host_out) and int(dev_status) == int(host_status)
        flagged += int(host_status) != 0
    assert flagged > 0 or starts


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,k,batch,rows,mode", [(40, 320, 17, 1, "int"), (576, 1536, 64, 2, "rate"),
                                                 (1536, 576, 128, 1, "rate"), (64, 12288, 33, 4, "int"),
                                                 (4096, 4096, 24, 1, "int")])
def test_tile_kernel_matches_emulation_and_reference(n, k, batch, rows, mode, dtype):
    """Tensor cores need not add in the emulation's order: within 1e-6 of it, 1e-5 of float64."""
    from pycodec import gpu

    rng = rng_for("tile-gpu", n, k, batch, mode, str(dtype))
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.02
    if mode == "rate":
        w[rng.integers(0, n, 50), rng.integers(0, k, 50)] = 5.0
        cfg = CompressionConfig(mode="rate", bits=3.5, chunk_symbols=rows * k)
    else:
        cfg = CompressionConfig(mode="int", bits=4, group_size=128, chunk_symbols=rows * k)
    packed, _ = compress_weight(torch.from_numpy(w), cfg)
    info = gpu.weight_info(packed)
    kb = gpu.kernel_buffers(packed, info)
    host = {name: cuda_ops.with_slack(t) if name in ("symbols", "raw") else t for name, t in packed.items()}
    x = torch.from_numpy(rng.standard_normal((batch, k)).astype(np.float32)).to(dtype)

    def args(x_, p, kernel):
        return (x_, p["symbols"], kernel["table"], p["scale"], p["zero"], kernel["escape_row"], kernel["escape_col"],
                kernel["escape_value"], list(info.layout), float(info.zero_in_values), info.group_size, n, k)
    p, kc = to_cuda(packed), {name: t.cuda() for name, t in kb.items()}
    got = cuda_ops.windowed_tile_affine(*args(x.cuda(), p, kc))
    again = cuda_ops.windowed_tile_affine(*args(x.cuda(), p, kc))
    assert torch.equal(got, again)  # no atomics: the same bits every run
    with cuda_ops.host_kernels():
        emu = cuda_ops._windowed_tile_affine(*args(x, host, kb))
    ref = x.double() @ unpack(packed).double().T
    got = got.cpu().double()
    assert float((got - emu.double()).norm() / emu.double().norm()) < 1e-6
    assert float((got - ref).norm() / ref.norm()) < 1e-5
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-5


# ---------------------------------------------------------------------------- the module

@pytest.mark.parametrize("mode", ["rate", "int", "lossless"])
@pytest.mark.parametrize("batch", [1, 4, 16, 40])
def test_compressed_linear_on_cuda_matches_cpu(mode, batch):
    torch.manual_seed(0)
    lin = torch.nn.Linear(576, 1536, bias=True).to(torch.bfloat16)
    m = CompressedLinear.from_linear(lin, CompressionConfig(mode=mode, bits=4 if mode == "int" else 3.5))
    x = torch.randn(batch, 576, dtype=torch.bfloat16)
    ref = m(x).float()
    got = m.cuda()(x.cuda()).float().cpu()
    err = (got - ref).norm() / ref.norm()
    assert err < 1e-2, float(err)  # bf16 outputs; fp32 accumulation in a different order
    assert (got - ref).abs().max() / ref.abs().max() < 2e-2


def test_lossless_exact_outputs_bitwise_equal_to_linear():
    torch.manual_seed(1)
    lin = torch.nn.Linear(1024, 512, bias=True).to(torch.bfloat16).cuda()  # the bias rounds inside the matmul
    m = CompressedLinear.from_linear(lin, CompressionConfig(mode="lossless", exact_outputs=True)).cuda()
    for batch in (1, 5, 64):
        x = torch.randn(batch, 1024, dtype=torch.bfloat16, device="cuda")
        assert torch.equal(m(x), lin(x))


def test_forward_does_not_synchronize():
    lin = torch.nn.Linear(576, 576).to(torch.bfloat16)
    m = CompressedLinear.from_linear(lin, CompressionConfig(mode="rate", bits=3.5)).cuda()
    x = torch.randn(1, 576, dtype=torch.bfloat16, device="cuda")
    m(x)  # warm-up (Triton / allocator)
    torch.cuda.set_sync_debug_mode("error")
    try:
        m(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def graph_replay_matches_eager(m, x: torch.Tensor) -> bool:
    """m(x) captured in a CUDA graph (after warm-up on a side stream), replayed on new values of x:
    the replay's output equals an eager call's."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            m(x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = m(x)
    x.copy_(torch.randn_like(x))
    g.replay()
    torch.cuda.synchronize()
    return torch.equal(y, m(x))


def test_cuda_graph_capture_and_replay():
    lin = torch.nn.Linear(1536, 576).to(torch.bfloat16)
    m = CompressedLinear.from_linear(lin, CompressionConfig(mode="rate", bits=3.5)).cuda()
    assert graph_replay_matches_eager(m, torch.randn(2, 1536, dtype=torch.bfloat16, device="cuda"))


def test_torch_compile_reduce_overhead():
    from test_models import tiny_llama, tokens

    model = tiny_llama().to(torch.bfloat16)
    pycodec.compress_(model, CompressionConfig(mode="rate", bits=4.0), progress=False)
    model = model.cuda().eval()
    ids = tokens().cuda()
    with torch.no_grad():
        ref = model(ids).logits
        compiled = torch.compile(model, mode="reduce-overhead")
        for _ in range(3):
            out = compiled(ids).logits
    assert torch.allclose(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


def test_torch_compile_fullgraph_has_no_graph_break():
    lin = torch.nn.Linear(576, 192).to(torch.bfloat16)
    m = CompressedLinear.from_linear(lin, CompressionConfig(mode="rate", bits=3.5)).cuda()
    x = torch.randn(2, 576, dtype=torch.bfloat16, device="cuda")
    compiled = torch.compile(m, fullgraph=True)
    assert torch.equal(compiled(x), m(x))


def test_input_on_another_device_is_a_clear_error():
    m = CompressedLinear.from_linear(torch.nn.Linear(64, 32), CompressionConfig(mode="int", bits=4))
    with pytest.raises(CodecError, match="input on cuda"):
        m(torch.randn(1, 64, device="cuda"))


def test_corrupt_stream_is_refused_when_moved_to_the_gpu():
    m = CompressedLinear.from_linear(torch.nn.Linear(256, 64), CompressionConfig(mode="int", bits=4))
    start = _C.info(m.symbols.numpy())["payload_offset"]
    m.symbols[start + 10] ^= 0x40
    with pytest.raises(CodecError, match="symbols"):
        m.cuda()


def test_load_state_dict_refreshes_the_kernel_tables():
    a = CompressedLinear.from_linear(torch.nn.Linear(512, 128), CompressionConfig(mode="rate", bits=3.5)).cuda()
    b = CompressedLinear.from_linear(torch.nn.Linear(512, 128), CompressionConfig(mode="rate", bits=3.5)).cuda()
    x = torch.randn(3, 512, device="cuda")
    assert not torch.equal(a(x), b(x))
    a.load_state_dict(copy.deepcopy(b.state_dict()), assign=True)
    assert torch.equal(a(x), b(x))


def test_model_dtype_cast_keeps_packed_dtypes():
    m = CompressedLinear.from_linear(torch.nn.Linear(256, 64), CompressionConfig(mode="int", bits=4)).cuda()
    x = torch.randn(2, 256, device="cuda")
    y = m(x)
    m.half()
    assert m.scale.dtype == torch.float16 and m.escape_value.dtype == torch.float32
    torch.testing.assert_close(m(x.half()).float(), y, atol=5e-2, rtol=5e-2)
    m.bfloat16()
    assert m.scale.dtype == torch.float16
