"""The fixed12 kernels on a CUDA device: bit for bit what their CPU emulation computes
(tests/test_fixed12.py checks the emulation against float64), and the module around them exact,
free of host syncs, capturable by CUDA graphs and torch.compile."""
from __future__ import annotations

import pytest
import torch
from test_fixed12 import every_bf16, host_gemv, weight_like
from test_windowed_cuda import graph_replay_matches_eager

import pycodec
from pycodec import CompressedLinear, CompressionConfig, cuda_ops, gpu
from pycodec.quant import pack_fixed12

pytestmark = pytest.mark.gpu

FIXED12 = CompressionConfig(mode="lossless", lossless_split="fixed12")


def cuda_gemv(x: torch.Tensor, packed: dict, bias: torch.Tensor | None = None) -> torch.Tensor:
    n, k, base = (int(v) for v in packed["meta"][[2, 3, 6]])
    esc = {name: t.cuda() for name, t in cuda_ops.fixed12_escapes(packed["escape_index"], packed["escape_bits"],
                                                                    packed["low"], n, k).items()}
    return cuda_ops.fixed12_gemv(x.cuda(), packed["codes"].cuda(), packed["low"].cuda(), esc["escape_row"],
                                 esc["escape_col"], esc["escape_value"], None if bias is None else bias.cuda(), base,
                                 n, k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 2, 3, 5, 8, 9, 16])
@pytest.mark.parametrize("shape", [(40, 8), (33, 264), (7, 4096), (300, 1536)])
def test_gemv_equals_emulation(batch, shape, dtype):
    n, k = shape
    w = weight_like(n, k, seed=batch)
    flat = w.view(-1)
    flat[::5] = 0.0
    flat[1], flat[2] = 3.0e4, -1e-30
    w[n // 2, :] = torch.where(torch.arange(k) % 2 == 0, 0.0, 1.0e-20).to(torch.bfloat16)  # a row of escapes
    packed, _ = pack_fixed12(w)
    x = torch.randn(batch, k, generator=torch.Generator().manual_seed(3)).to(dtype)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(4)).to(dtype)
    with cuda_ops.kernel_settings(fixed12_tensor_cores=0):  # CUDA cores: fmaf in the emulation's order
        assert torch.equal(cuda_gemv(x, packed).cpu(), host_gemv(x, packed))
        assert torch.equal(cuda_gemv(x, packed, bias).cpu(), host_gemv(x, packed, bias))
    if dtype == torch.bfloat16:  # tensor cores (the default): the MMA adds in its own order
        got, emulated = cuda_gemv(x, packed, bias).cpu().double(), host_gemv(x, packed, bias).double()
        scale = x.double().abs() @ w.double().abs().t() + bias.double().abs()
        assert bool(((got - emulated).abs() <= 2 ** -7 * emulated.abs() + 1e-5 * scale).all())


@pytest.mark.parametrize("shape", [(256, 256), (9, 7), (1, 8), (4096, 1000)])
def test_decode_kernel_is_exact(shape):
    w = every_bf16() if shape == (256, 256) else weight_like(*shape)
    packed, _ = pack_fixed12(w)
    out = cuda_ops.fixed12_decode(packed["codes"].cuda(), packed["low"].cuda(), packed["escape_index"].cuda(),
                                  packed["escape_bits"].cuda(), int(packed["meta"][6]), w.numel())
    assert torch.equal(out.cpu().view(w.shape), w.view(torch.int16))


@pytest.mark.parametrize("batch", [1, 4, 16, 17, 64])
def test_module_on_cuda(batch):
    """GEMV up to 16 (near bf16's output: fp32 sums in another order), decode + cuBLAS above
    (nn.Linear's bits), and exact_outputs at every batch; .weight rebuilt on the device, exact."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(1536, 576, bias=True).to(torch.bfloat16).cuda()
    m = CompressedLinear.from_linear(lin, FIXED12).cuda()
    exact = CompressedLinear.from_linear(lin, CompressionConfig(mode="lossless", lossless_split="fixed12",
                                                                exact_outputs=True)).cuda()
    x = torch.randn(batch, 1536, dtype=torch.bfloat16, device="cuda")
    ref = lin(x)
    if batch > 16:
        assert torch.equal(m(x), ref)
    else:
        assert float((m(x).float() - ref.float()).norm() / ref.float().norm()) < 1e-2
    assert torch.equal(exact(x), ref)
    assert torch.equal(m.weight + 0, lin.weight)


def test_no_sync_graph_capture_and_compile():
    lin = torch.nn.Linear(1024, 512).to(torch.bfloat16)
    m = CompressedLinear.from_linear(lin, FIXED12).cuda()
    x = torch.randn(2, 1024, dtype=torch.bfloat16, device="cuda")
    m(x)
    torch.cuda.set_sync_debug_mode("error")
    try:
        m(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert graph_replay_matches_eager(m, x)
    assert torch.equal(torch.compile(m, fullgraph=True)(x), m(x))


def test_model_compressed_on_the_cpu_runs_on_cuda():
    from test_models import tiny_llama, tokens

    model = tiny_llama()
    ids = tokens()
    dense = tiny_llama().cuda()
    pycodec.compress_(model, FIXED12, progress=False)
    model = model.cuda()
    with torch.no_grad():
        ref, got = dense(ids.cuda()).logits.float(), model(ids.cuda()).logits.float()
    assert float((got - ref).norm() / ref.norm()) < 1e-2
    layer = model.model.layers[0].mlp.down_proj
    kernel = dict(zip(gpu.KERNEL_BUFFERS, layer.kernel()))
    assert torch.equal(gpu.dense_weight(layer.packed(), kernel, layer._info, torch.device("cuda")).cpu(),
                       dense.model.layers[0].mlp.down_proj.weight.cpu())
