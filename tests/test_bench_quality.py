"""bench/bench_quality.py's accounting and plot, without models or the peer quantizers (which
the benchmark runs only where they are installed)."""
import importlib.util
import math
import os
import sys
from types import SimpleNamespace

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
    sys.path.insert(0, os.path.join(ROOT, "bench"))  # bench_quality imports bit_accounting beside it
    try:
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "bench", f"{name}.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses look their module up there
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(os.path.join(ROOT, "bench"))


def test_fixed_length_bits_counts_partial_groups():
    acc = load("bit_accounting")
    # 576 inputs: four groups of 128 and a partial one of 64, each with an fp16 scale and zero
    assert acc.fixed_length_bits([(1536, 576)], 4) == pytest.approx((4 * 576 + 5 * 32) / 576)
    assert acc.fixed_length_bits([(384, 384)], 3) == pytest.approx(3 + 32 / 128)
    mixed = acc.fixed_length_bits([(10, 256), (30, 576)], 4)
    assert mixed == pytest.approx((10 * (4 * 256 + 2 * 32) + 30 * (4 * 576 + 5 * 32)) / (10 * 256 + 30 * 576))


def test_peer_bits_separate_codes_from_metadata():
    acc = load("bit_accounting")
    n = 192 * 576
    # HQQ 3-bit, groups of 64: ten codes per int32 (the last int32 row part-filled), bf16 scale and zero
    groups = n // 64
    hqq = [("W_q", math.ceil(groups / 10) * 64, 32), ("scale", groups, 16), ("zero", groups, 16), ("nbits", 1, 32)]
    bits = acc.stored_bits(hqq)
    assert bits["code_bits"] / n == pytest.approx(3.2, abs=0.01)
    assert bits["metadata_bits"] == groups * 32 + 32
    # bitsandbytes NF4, blocks of 64, double quantization: 8-bit absmax, fp32 second level per 256 blocks
    blocks = n // 64
    nf4 = [("weight", n // 2, 8), ("absmax", blocks, 8), ("quant_map", 16, 32),
           ("nested_absmax", math.ceil(blocks / 256), 32), ("nested_quant_map", 256, 32)]
    assert acc.stored_bits(nf4)["bits"] / n == pytest.approx(4 + 8 / 64 + (7 * 32 + 16 * 32 + 256 * 32) / n)
    # the whole checkpoint: 100 dense bf16 parameters of which 60 are replaced by 4-bit codes
    assert acc.checkpoint_bits_per_parameter(1600, 960, 240, 100) == pytest.approx(8.8)


def test_decoder_bits_weights_layers_by_size():
    acc = load("bit_accounting")
    report = {"layers": {"model.layers.0.q": {"shape": [10, 10], "bits_per_weight": 2.0},
                         "model.layers.0.up": {"shape": [30, 10], "bits_per_weight": 4.0},
                         "model.embed_tokens": {"shape": [1000, 10], "bits_per_weight": 5.0}}}
    assert acc.decoder_bits(report) == pytest.approx((100 * 2 + 300 * 4) / 400)


def test_pareto_front_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    bq = load("bench_quality")
    assert bq.pareto([(4.5, 20.0), (3.0, 40.0), (4.0, 25.0), (4.2, 30.0)]) == [(3.0, 40.0), (4.0, 25.0), (4.5, 20.0)]
    rows = [{"method": "bfloat16 dense", "family": "dense", "bits_per_weight": 16.0, "perplexity_gpl3": 21.0},
            {"method": "int4-g128 RTN fixed-length", "family": "RTN fixed-length", "bits_per_weight": 4.27,
             "perplexity_gpl3": 26.3},
            {"method": "rate 3", "family": "rate", "bits_per_weight": 3.0, "perplexity_gpl3": 37.4},
            {"method": "HQQ 4-bit g64", "family": "HQQ", "skipped": "hqq unavailable: ModuleNotFoundError"}]
    result = {"machine": {"cpu": "test CPU", "cores": 2}, "compared": "linear layers only",
              "models": [{"model": "SmolLM2", "rows": rows, "plot": [["perplexity_gpl3", "perplexity, GPL-3"]]},
                         {"model": "minilm", "skipped": "FileNotFoundError", "rows": [], "plot": []}]}
    path = tmp_path / "quality.png"
    bq.plot(result, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_whole_model_rows_compress_the_table_for_smollm2_only():
    bq = load("bench_quality")
    smollm2, minilm = SimpleNamespace(skip=("lm_head",)), SimpleNamespace(skip=bq.MINILM_SKIP)
    methods = bq.whole_model_methods(smollm2)
    assert [m.label for m in methods] == ["rate 3, whole model", "rate 3 calibrated, whole model",
                                          "rate 3.5, whole model", "rate 3.5 calibrated, whole model"]
    assert all(m.config.skip == () and m.config.mode == "rate" for m in methods)
    assert bq.whole_model_methods(minilm) == []
    assert "whole model" not in bq.FAMILY_STYLE  # not plotted beside rows whose table stays dense
