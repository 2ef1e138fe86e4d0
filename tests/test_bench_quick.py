"""bench/ in quick mode, as CI runs it: every benchmark runs (few rounds, small inputs) and report.py reads the JSON.

Asserts what the benchmarks assert (round trips, outputs) and that the report has its rows and
throughputs; never anything about time. The benchmarks run in a process of their own, so
their conftest and pytest-benchmark's options stay out of this session.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pytest_benchmark")
pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
QUICK_TIMEOUT_S = 180  # the quick run takes ~10 s on the 2-core CI machine; this only stops a hang

CODEC_METHODS = {"pycodec-rans 1T", "pycodec-rans all", "pycodec-huffman 1T", "pycodec-huffman all"}
LINEAR_METHODS = {"F.linear", "pycodec lossless", "pycodec rate 3.5", "pycodec int4-g128"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if k != "PYCODEC_BENCH_FULL"}
    bench = subprocess.run([sys.executable, "-m", "pytest", "bench/", "-q", "-rs", "-p", "no:cacheprovider",
                            f"--benchmark-json={out / 'bench.json'}"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=QUICK_TIMEOUT_S)
    assert bench.returncode == 0, bench.stdout[-4000:] + bench.stderr[-2000:]
    report = subprocess.run([sys.executable, "bench/report.py", str(out / "bench.json"), "--out", str(out / "report"),
                             "--stem", "quick"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stderr[-2000:]
    return bench.stdout, report.stdout, out


def test_quick_mode_runs_every_benchmark(quick_run):
    _, _, out = quick_run
    data = json.loads((out / "bench.json").read_text())
    assert data["machine_info"]["pycodec_bench"]["mode"] == "quick"
    kinds = {b["extra_info"].get("kind") for b in data["benchmarks"]}
    assert {"codec", "linear"} <= kinds
    for b in data["benchmarks"]:
        assert b["group"], f"{b['name']}: no group"
        assert b["extra_info"]["weights"] > 0 and b["extra_info"]["bytes"] > 0, b["name"]


def test_gpu_benchmarks_run_or_skip_with_reason(quick_run):
    import torch

    stdout, table, _ = quick_run
    if "gpu 4096x4096 batch 1 bf16" in table:
        assert torch.cuda.is_available()
    else:
        assert "SKIPPED" in stdout and "test_bench_gpu.py" in stdout
        assert "no CUDA kernels" in stdout if torch.cuda.is_available() else "no CUDA device" in stdout


def test_report_table_and_files(quick_run):
    _, table, out = quick_run
    assert "quick mode" in table.splitlines()[0]
    for group in ("codec gauss_256K encode", "codec gauss_256K decode", "codec gauss_bf16_256K encode",
                  "codec gauss_bf16_256K decode", "linear gauss_256x512 256x512 batch 1 fp32"):
        assert group in table, group
    summary = json.loads((out / "report" / "quick.json").read_text())
    rows = {(r["group"], r["method"]): r for r in summary["rows"]}
    for op in ("encode", "decode"):
        for data in ("gauss_256K", "gauss_bf16_256K"):
            for m in CODEC_METHODS:
                r = rows[(f"codec {data} {op}", m)]
                assert r["bytes_per_s"] > 0 and r["weights_per_s"] > 0
    linear = {m: r for (g, m), r in rows.items() if g.startswith("linear ")}
    assert set(linear) == LINEAR_METHODS
    assert linear["F.linear"]["baseline"] and linear["F.linear"]["speedup_vs_baseline"] == 1.0
    assert 3.0 < linear["pycodec rate 3.5"]["bits_per_weight"] < 3.6
    try:
        import matplotlib  # noqa: F401  (a bench extra: without it the report writes the JSON alone)
    except ImportError:
        return
    assert (out / "report" / "quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
