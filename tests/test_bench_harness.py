"""The GPU suite's device-independent parts (result plotting, peak table) run without a GPU."""
import importlib.util
import os

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
