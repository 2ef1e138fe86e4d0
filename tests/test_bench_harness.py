"""The GPU suite's device-independent parts (result plotting, peak table, the sections run and saved) run
without a GPU."""
import importlib.util
import os
import sys

import pytest

pytest.importorskip("matplotlib")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", os.path.join(ROOT, "bench", "gpu_suite.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_plot_writes_png(tmp_path):
    suite = load_suite()
    rows = [{"shape": [4096, 4096], "batch": b, "method": m, "ms": 0.1 * b, "speedup_vs_bf16": s}
            for b in (1, 16, 256) for m, s in (("bf16 cuBLAS", 1.0), ("pycodec rate 3.5", 2.0 / b ** 0.2))]
    rows.append({"peers": {"torchao int4-g128": "unavailable: ImportError"}})
    path = tmp_path / "speed.png"
    suite.plot({"environment": {"device": "NVIDIA H100 80GB HBM3"}, "layers": rows}, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_hbm_peak_lookup():
    suite = load_suite()
    assert suite.hbm_peak("NVIDIA H100 80GB HBM3") == 3350.0
    assert suite.hbm_peak("NVIDIA H200") == 4800.0
    assert suite.hbm_peak("Some GPU") is None


def _fake_device(suite, monkeypatch, layers):
    """The suite's sections replaced by stand-ins: its orchestration runs without a GPU."""
    monkeypatch.setattr(suite.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(suite, "environment", lambda: {"device": "Test GPU"})
    monkeypatch.setattr(suite, "decode_suite", lambda peak, quick, rows: rows.append({"decoded_GBps": 1.0}))
    monkeypatch.setattr(suite, "lossless_decode_suite",
                        lambda peak, rows, quick=False: rows.append({"decoded_GBps": 2.0}))
    monkeypatch.setattr(suite, "targets_suite", lambda peak, rows: rows.append({"method": "bf16 cuBLAS"}))
    monkeypatch.setattr(suite, "layer_suite", layers)
    monkeypatch.setattr(suite, "settings_suite", lambda rows: rows.append({"graph_ms": 0.5}))


def test_sections_are_saved_as_they_finish_and_an_interruption_keeps_them(tmp_path, monkeypatch):
    import json

    suite = load_suite()

    def layers(shapes, batches, peak, rows):  # a time limit strikes midway through the sweep
        rows.append({"shape": [4096, 4096], "batch": 1, "method": "bf16 cuBLAS", "speedup_vs_bf16": 1.0})
        raise KeyboardInterrupt

    _fake_device(suite, monkeypatch, layers)
    monkeypatch.setattr("sys.argv", ["gpu_suite.py", "--out", str(tmp_path)])
    assert suite.main() == 124
    (path,) = tmp_path.glob("gpu_Test_GPU_*.json")
    result = json.loads(path.read_text())
    assert result["interrupted_in"] == "layers"
    assert result["decode"] == [{"decoded_GBps": 1.0}] and result["lossless_decode"] == [{"decoded_GBps": 2.0}]
    assert result["layers"][0]["method"] == "bf16 cuBLAS"  # the rows measured before the interruption


def test_a_section_that_raises_costs_only_itself(tmp_path, monkeypatch):
    import json

    suite = load_suite()

    def layers(shapes, batches, peak, rows):
        rows.append({"shape": [4096, 4096], "batch": 1, "method": "bf16 cuBLAS", "speedup_vs_bf16": 1.0})
        raise RuntimeError("a peer's API moved")

    _fake_device(suite, monkeypatch, layers)
    monkeypatch.setattr(suite, "end_to_end", lambda tokens, rows, quick=False: rows.append({"tokens_per_s": 3.0}))
    monkeypatch.setattr("sys.argv", ["gpu_suite.py", "--out", str(tmp_path), "--only", "layers,end_to_end,decode"])
    assert suite.main() == 1
    (path,) = tmp_path.glob("gpu_Test_GPU_*.json")
    result = json.loads(path.read_text())
    assert "a peer's API moved" in result["errors"]["layers"] and list(result["errors"]) == ["layers"]
    assert result["end_to_end"] == [{"tokens_per_s": 3.0}] and result["decode"] == [{"decoded_GBps": 1.0}]
    assert result["layers"][0]["method"] == "bf16 cuBLAS"


def test_only_runs_the_sections_asked_for(tmp_path, monkeypatch):
    import json

    suite = load_suite()
    _fake_device(suite, monkeypatch, lambda *a: pytest.fail("layers was not asked for"))
    monkeypatch.setattr("sys.argv", ["gpu_suite.py", "--out", str(tmp_path), "--only", "lossless_decode"])
    assert suite.main() == 0
    (path,) = tmp_path.glob("gpu_Test_GPU_*.json")
    result = json.loads(path.read_text())
    assert result["sections"] == ["lossless_decode"] and "decode" not in result and "layers" not in result
    monkeypatch.setattr("sys.argv", ["gpu_suite.py", "--out", str(tmp_path), "--only", "layers,nope"])
    assert suite.main() == 2


def load_bench_codec():
    import sys
    if os.path.join(ROOT, "bench") not in sys.path:
        sys.path.insert(0, os.path.join(ROOT, "bench"))
    import bench_codec
    return bench_codec


def test_take_turns_swaps_the_order_and_keeps_each_time_with_its_codec(monkeypatch):
    """bench_codec.take_turns (the pycodec / zipnn turns): the order alternates round by round, and
    every pair still reads (first's time, second's) whichever ran first."""
    bench = load_bench_codec()
    calls = []

    def fake_best_time(fn, setup, reps, budget_s):
        calls.append((fn.__name__, setup))
        return ({"first": 1.0, "second": 2.0}[fn.__name__], reps, None)

    def first():
        pass

    def second():
        pass

    monkeypatch.setattr(bench, "best_time", fake_best_time)
    assert bench.take_turns(first, second, 5, setups=(None, "fresh input")) == [(1.0, 2.0)] * 5
    order = [("first", None), ("second", "fresh input")]
    assert calls == (order + order[::-1]) * 2 + order  # each function keeps its own setup


def test_rtn_int4_reference_for_the_int4_peers():
    """gpu_suite hands gemlite round-to-nearest int4-g128 weights: codes in 0..15, each weight
    within half a step of (q - zero) * scale, unless clamped at a group's end."""
    import torch

    suite = load_suite()
    torch.manual_seed(0)
    w = torch.randn(16, 384) * 0.02
    q, scale, zero = suite.rtn_int4_g128(w)
    assert q.dtype == torch.uint8 and q.shape == w.shape and int(q.max()) <= 15
    assert scale.shape == zero.shape == (16, 3)
    deq = ((q.float().reshape(16, 3, 128) - zero[..., None]) * scale[..., None]).reshape(16, 384)
    assert float(((deq - w).abs() / scale.repeat_interleave(128, 1)).max()) <= 0.5 + 1e-4


def test_slow_sections_run_only_when_asked(tmp_path, monkeypatch):
    import json

    suite = load_suite()
    _fake_device(suite, monkeypatch, lambda shapes, batches, peak, rows: rows.append({"method": "bf16 cuBLAS"}))
    monkeypatch.setattr(suite, "compiled_suite", lambda rows: rows.append({"compiled_ms": 1.0}))
    monkeypatch.setattr(suite, "end_to_end", lambda tokens, rows, quick=False: rows.append({"tokens_per_s": 3.0}))
    monkeypatch.setattr(suite, "plot", lambda result, path: None)
    for argv, sections in ((["--out", str(tmp_path / "a")],
                            ["targets", "settings", "decode", "lossless_decode", "layers"]),
                           (["--out", str(tmp_path / "b"), "--e2e"], list(suite.SECTIONS))):
        monkeypatch.setattr("sys.argv", ["gpu_suite.py", *argv])
        assert suite.main() == 0
        (path,) = (tmp_path / argv[1].rsplit("/", 1)[1]).glob("gpu_Test_GPU_*.json")
        assert json.loads(path.read_text())["sections"] == sections


def test_with_settings_sets_pycodecs_kernel_settings_for_the_call_only():
    from pycodec import _C

    suite = load_suite()
    seen = []
    run = suite.with_settings({"warps_per_block": 16, "decode_stage_symbols": 0},
                              lambda: seen.append((_C.warps_per_block(), _C.decode_stage_symbols())))
    before = (_C.warps_per_block(), _C.decode_stage_symbols())
    run()
    assert seen == [(16, 0)] and (_C.warps_per_block(), _C.decode_stage_symbols()) == before

    def fails():
        raise RuntimeError("launch failed")

    with pytest.raises(RuntimeError):
        suite.with_settings({"gemv_x_shared_bytes": 0}, fails)()
    assert _C.gemv_x_shared_bytes() == 64 * 1024


def test_free_device_memory_collects_a_model_that_accelerates_hooks_keep_alive(monkeypatch):
    """bench_stream.free_device_memory: a module hooked by accelerate is a reference cycle, so
    ``del model`` leaves it (and its device weights) allocated; the harness collects it before the
    next method runs (on the H200 the leftover read as 1.8 GiB of the next method's peak)."""
    import gc
    import sys
    import weakref

    hooks = pytest.importorskip("accelerate.hooks")
    torch = pytest.importorskip("torch")
    if os.path.join(ROOT, "bench") not in sys.path:
        sys.path.insert(0, os.path.join(ROOT, "bench"))
    import bench_stream

    gc.disable()
    try:
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
        for layer in model:
            hooks.add_hook_to_module(layer, hooks.AlignDevicesHook(execution_device="cpu"))
        weight = weakref.ref(model[0].weight)
        del model
        assert weight() is not None  # the cycle: refcounting alone does not free it
        bench_stream.free_device_memory()
        assert weight() is None
    finally:
        gc.enable()


def test_profile_kernels_script_says_why_it_cannot_run_without_a_gpu(capsys):
    """bench/profile_kernels.py (gpu_check's profile stage) imports here and refuses cleanly."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the script would profile")
    spec = importlib.util.spec_from_file_location("profile_kernels", os.path.join(ROOT, "bench", "profile_kernels.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main() == 2 and "no CUDA device" in capsys.readouterr().err


def test_rate_layer_escapes_the_outliers(monkeypatch):
    """gpu_suite.rate_layer packs the quantizer's escapes (flat indices) at their own weights: it
    once took the indices for a mask and escaped weights 0, 1, ... instead."""
    import torch

    from pycodec import CompressedLinear

    suite = load_suite()
    monkeypatch.setattr(CompressedLinear, "cuda", lambda self, *a, **k: self)
    dense = torch.nn.Linear(256, 64, bias=False)
    with torch.no_grad():
        dense.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(5))
        dense.weight[3, 17] = dense.weight[40, 200] = 9.0
    layer = suite.rate_layer(dense)
    assert layer.escape_index.tolist() == [3 * 256 + 17, 40 * 256 + 200]
    x = torch.randn(2, 256, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        y, ref = layer(x).double(), dense(x).double()
    assert float((y - ref).norm() / ref.norm()) < 0.1


def test_bench_layout_counts_each_escape_once():
    """bench_layout's rate bits count 96 bits per escape (it once summed the escapes' indices)."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("bench_layout", os.path.join(ROOT, "bench", "bench_layout.py"))
    layout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layout)
    w = torch.randn(128, 384, generator=torch.Generator().manual_seed(7)) * 0.02
    w[100, 300] = 5.0
    rate = layout.measure("test", {"w": w.to(torch.bfloat16)})["rate 3.5"]
    assert 2.0 < rate["v2_bits_per_weight"] < 5.0
    assert rate["lane_starts_bits_per_weight"] > 0


def test_settings_section_runs_every_combination(monkeypatch):
    """gpu_suite's settings section on the CPU (modules' CPU forwards, a stand-in timer): every
    layer under every setting combination gives a row, and every row the bits of its reference
    (on the CPU the settings change nothing), so a slip in its bookkeeping shows before a lease."""
    import torch

    suite = load_suite()
    monkeypatch.setattr(torch.nn.Module, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(suite, "DEVICE", "cpu")
    monkeypatch.setattr(suite, "graph_ms", lambda fn: (fn(), 1e-3)[1])
    rows = suite.settings_suite(shapes=((64, 128),), batches=(1, 2))
    methods = {r["method"] for r in rows}
    assert {"pycodec rate 3.5", "pycodec lossless byte", "pycodec lossless fused counted",
            "pycodec lossless fixed12"} <= methods
    assert len(rows) == 2 * (4 * 9 + 5) and all(r["same_bits"] for r in rows)
    assert {r["affine_gemv_staged"] for r in rows} == {0, 1} and {r["stage_word_stores"] for r in rows} == {0, 1}


def test_layers_section_runs_on_the_cpu(monkeypatch):
    """gpu_suite's layers section on the CPU, peers absent (modules' CPU forwards, stand-in timers):
    the byte split's rows only at their batches, every row near bf16's output."""
    import torch

    suite = load_suite()
    monkeypatch.setattr(torch.nn.Module, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(suite, "DEVICE", "cpu")
    monkeypatch.setattr(suite, "graph_ms", lambda fn: (fn(), 1e-3)[1])
    monkeypatch.setattr(suite, "eager_ms", lambda fn: (fn(), 2e-3)[1])
    monkeypatch.setattr(suite, "int4_peers", lambda: {})
    monkeypatch.setattr(suite, "dfloat11_peer", lambda: "unavailable: not on this machine")
    rows = suite.layer_suite([(64, 128)], [1, 16, 64], peak=None)
    timed = [r for r in rows if "method" in r]
    byte = {(r["method"], r["batch"]) for r in timed if "byte" in r["method"]}
    assert byte == {("pycodec lossless byte", 1), ("pycodec lossless byte", 16),
                    ("pycodec lossless byte exact", 1), ("pycodec lossless byte exact", 16),
                    ("pycodec lossless byte exact", 64)}
    fixed = {(r["method"], r["batch"]) for r in timed if "fixed12" in r["method"]}
    assert fixed == {("pycodec lossless fixed12", 1), ("pycodec lossless fixed12", 16), ("pycodec lossless fixed12", 64),
                     ("pycodec lossless fixed12 exact", 1), ("pycodec lossless fixed12 exact", 16),
                     ("pycodec lossless fixed12 exact", 64)}
    assert all("error" not in r for r in timed), [r for r in timed if "error" in r]
    assert all(r["rel_err_vs_bf16"] < 0.2 for r in timed)
    assert all(r["rel_err_vs_bf16"] == 0 for r in timed if "lossless" in r["method"])  # the CPU forward: nn.Linear's bits


def test_targets_section_measures_batch_1_everywhere_first(monkeypatch):
    """gpu_suite's targets section on the CPU: the target methods alone (no setting variants, no
    exact routes), every shape at batch 1 before any shape at a larger batch, each layer built once."""
    import torch

    suite = load_suite()
    monkeypatch.setattr(torch.nn.Module, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(suite, "DEVICE", "cpu")
    monkeypatch.setattr(suite, "graph_ms", lambda fn: (fn(), 1e-3)[1])
    monkeypatch.setattr(suite, "eager_ms", lambda fn: (fn(), 2e-3)[1])
    monkeypatch.setattr(suite, "int4_peers", lambda: {"gemlite int4-g128": "unavailable: not here"})
    monkeypatch.setattr(suite, "dfloat11_peer", lambda: "unavailable: not on this machine")
    builds = []
    lossless_layer, rate_layer = suite.lossless_layer, suite.rate_layer
    monkeypatch.setattr(suite, "lossless_layer", lambda dense, **kw: (builds.append(("lossless", kw)),
                                                                        lossless_layer(dense, **kw))[1])
    monkeypatch.setattr(suite, "rate_layer", lambda dense: (builds.append(("rate", {})), rate_layer(dense))[1])
    rows = suite.targets_suite(None, shapes=[(64, 128), (32, 64)], batches=[1, 4, 32])
    timed = [r for r in rows if "method" in r]
    assert all("error" not in r for r in timed), [r for r in timed if "error" in r]
    methods = ["bf16 cuBLAS", "pycodec rate 3.5", "pycodec lossless", "pycodec lossless fixed12"]
    order = [(tuple(r["shape"]), r["batch"]) for r in timed]
    assert order == [(shape, b) for b in (1, 4, 32) for shape in ((64, 128), (32, 64)) for _ in methods]
    assert [r["method"] for r in timed[:4]] == methods
    assert sorted(builds, key=str) == sorted([("rate", {}), ("lossless", {}), ("lossless", {"split": "fixed12"})] * 2,
                                             key=str)
    assert rows[-1] == {"peers": {"gemlite int4-g128": "unavailable: not here",
                                  "DFloat11": "unavailable: not on this machine"}}
    assert all(r["rel_err_vs_bf16"] == 0 for r in timed if "lossless" in r["method"])


def test_bench_moe_runs_every_row_on_a_tiny_model(tmp_path, monkeypatch):
    """bench/bench_moe.py end to end on a tiny MoE: every row timed, the lossless logits equal to
    the dense eager model's."""
    import json

    pytest.importorskip("transformers")
    if os.path.join(ROOT, "bench") not in sys.path:
        sys.path.insert(0, os.path.join(ROOT, "bench"))
    import bench_moe

    monkeypatch.setattr(bench_moe, "SHAPE", dict(bench_moe.SHAPE, hidden_size=64, intermediate_size=128,
                                                 moe_intermediate_size=32, num_hidden_layers=1,
                                                 num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                                 vocab_size=256, num_experts=4))
    out = tmp_path / "moe.json"
    monkeypatch.setattr(sys, "argv", ["bench_moe.py", "--tokens", "2", "--json", str(out)])
    bench_moe.main()
    result = json.loads(out.read_text())
    assert [r["method"].split(",")[0] for r in result["rows"]] == ["dense bf16"] * 2 + ["pycodec lossless"] * 2 + \
        ["pycodec rate 3.5"] * 2
    assert all(r["seconds_per_token_batch1"] > 0 and r["seconds_per_token_batch8"] > 0 for r in result["rows"])
    assert result["rows"][2]["logits_bitwise_eager"] is True and result["rows"][2]["expert_banks"] == 2


def test_nibble_window_counts_what_a_row_window_leaves_out():
    """bench_nibble_window: the symbols outside each row's best window of 16, and a quantizer
    whose escapes are exact (so a row of nothing but escapes has no error)."""
    import numpy as np
    import torch

    if os.path.join(ROOT, "bench") not in sys.path:
        sys.path.insert(0, os.path.join(ROOT, "bench"))
    import bench_nibble_window as bench

    q = np.array([list(range(100, 116)) + [0, 255],  # 16 in a window, two far out
                  [7] * 18,                          # all in one value
                  list(range(0, 180, 10))], dtype=np.uint8)  # spread: two values a window at most
    assert bench.window_misses(q) == 2 + 0 + 16
    torch.manual_seed(0)
    w = torch.randn(4, 256)
    (row,) = bench.nibble_quantizer({"w": w}, factors=(0.4,))
    assert 0 < row["outside"] < 0.05 and row["bits_per_weight"] == 4 + bench.ESCAPE_BITS * row["outside"]
    assert row["sqnr_db"] > 15
    int4 = bench.int4_g128({"w": w})
    assert int4["bits_per_weight"] == 4.25 and 15 < int4["sqnr_db"] < 30
