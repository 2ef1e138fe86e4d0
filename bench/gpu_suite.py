"""The GPU benchmark suite: one command, one JSON (+ PNG) under bench/results/.

    python bench/gpu_suite.py [--out DIR] [--quick]

Measures, on the CUDA device at hand:
  * standalone decode throughput of both coders (GB/s of decoded symbols, % of HBM peak);
  * per layer shape and batch size, latency of y = x W^T for bf16 cuBLAS (F.linear),
    pycodec lossless and pycodec rate 3.5 bits (CompressedLinear's CUDA path), and the
    int4 peers when importable (torchao int4 weight-only, gemlite), with effective GB/s
    of the bytes each must read, % of the HBM roofline and speedup over bf16;
  * end to end: SmolLM2-135M greedy generation tokens/s and peak memory, bf16 vs
    pycodec lossless vs pycodec rate 3.5.
Timing: triton.testing.do_bench (warm-up discarded, L2 flushed between repetitions,
median reported). Nothing asserts on time. Without a CUDA device it exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

LLAMA_SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096)]  # (out, in)
SMOLLM2_SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536)]
BATCHES = [1, 2, 4, 8, 16, 64, 256]
HBM_PEAK_GBS = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0}


def environment() -> dict:
    props = torch.cuda.get_device_properties(0)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        driver = "unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        commit = "unknown"
    import triton

    return {"device": props.name, "sm_count": props.multi_processor_count, "memory_gib": props.total_memory / 2**30,
            "driver": driver, "torch": torch.__version__, "triton": triton.__version__, "commit": commit,
            "host": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def hbm_peak(name: str) -> float | None:
    return next((v for k, v in HBM_PEAK_GBS.items() if k in name), None)


def bench_ms(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def decode_throughput(peak: float | None, n_symbols: int) -> list[dict]:
    import numpy as np

    import pycodec
    from pycodec.cuda_ops import decode_symbols, to_device_stream

    rng = np.random.default_rng(0)
    sym = np.clip(np.round(rng.normal(128, 4, n_symbols)), 0, 255).astype(np.uint8)
    rows = []
    for coder in ("huffman", "rans"):
        for chunk in (None, 4096):
            blob = pycodec.encode(sym, coder=coder, chunk_symbols=chunk)
            s = to_device_stream(blob, "cuda")
            out = decode_symbols(s["index"], s["payload"], s["table"], s["coder"], s["n_symbols"], s["chunk_symbols"])
            exact = bool(torch.equal(out.cpu(), torch.from_numpy(sym)))
            ms = bench_ms(lambda: decode_symbols(s["index"], s["payload"], s["table"], s["coder"], s["n_symbols"],
                                                 s["chunk_symbols"]))
            gbs = n_symbols / ms / 1e6
            rows.append({"coder": coder, "chunk_symbols": s["chunk_symbols"], "n_symbols": n_symbols,
                         "bits_per_symbol": 8 * len(blob) / n_symbols, "ms": ms, "decoded_GBps": gbs,
                         "pct_hbm": 100 * gbs / peak if peak else None, "bit_exact": exact})
            print(f"decode {coder:8s} chunk {s['chunk_symbols']:6d}: {gbs:8.1f} GB/s decoded, exact={exact}")
    return rows


def int4_peers():
    peers = {}
    try:
        from torchao.quantization import Int4WeightOnlyConfig, quantize_

        def torchao_int4(linear):
            quantize_(linear, Int4WeightOnlyConfig(group_size=128))
            return linear

        peers["torchao int4-g128"] = torchao_int4
    except Exception as e:  # not installed on the device machine, or API drift
        peers["torchao int4-g128"] = f"unavailable: {type(e).__name__}"
    try:
        import gemlite  # noqa: F401

        peers["gemlite int4"] = "unavailable: harness adapter not written"
    except Exception as e:
        peers["gemlite int4"] = f"unavailable: {type(e).__name__}"
    peers["DFloat11"] = "unavailable: dfloat11 needs model-hub weights"
    return peers


def layer_suite(shapes, batches, peak) -> list[dict]:
    import copy

    from pycodec import CompressedLinear, CompressionConfig

    rows = []
    peers = int4_peers()
    for out_f, in_f in shapes:
        torch.manual_seed(0)
        dense = torch.nn.Linear(in_f, out_f, bias=False, dtype=torch.bfloat16)
        torch.nn.init.normal_(dense.weight, std=0.02)
        variants = {"bf16 cuBLAS": (copy.deepcopy(dense).cuda(), 2 * in_f * out_f)}
        for label, cfg in (("pycodec lossless", CompressionConfig(mode="lossless")),
                           ("pycodec rate 3.5", CompressionConfig(mode="rate", bits=3.5))):
            m = CompressedLinear.from_linear(dense, cfg).cuda()
            variants[label] = (m, m.compressed_bytes())
        for label, make in peers.items():
            if callable(make):
                try:
                    m = make(copy.deepcopy(dense).cuda())
                    variants[label] = (m, in_f * out_f // 2 + 4 * in_f * out_f // 128)
                except Exception as e:
                    peers[label] = f"unavailable: {type(e).__name__}: {e}"
        for batch in batches:
            x = torch.randn(batch, in_f, device="cuda", dtype=torch.bfloat16)
            ref = variants["bf16 cuBLAS"][0](x)
            base_ms = None
            for label, (mod, weight_bytes) in variants.items():
                with torch.no_grad():
                    try:
                        y = mod(x)
                        err = float((y.float() - ref.float()).norm() / ref.float().norm())
                        ms = bench_ms(lambda: mod(x))
                    except Exception as e:
                        rows.append({"shape": [out_f, in_f], "batch": batch, "method": label,
                                     "error": f"{type(e).__name__}: {e}"})
                        continue
                base_ms = ms if label == "bf16 cuBLAS" else base_ms
                gbs = (weight_bytes + 2 * batch * (in_f + out_f)) / ms / 1e6
                rows.append({"shape": [out_f, in_f], "batch": batch, "method": label, "ms": ms,
                             "weight_bytes": weight_bytes, "GBps": gbs, "pct_hbm": 100 * gbs / peak if peak else None,
                             "speedup_vs_bf16": base_ms / ms if base_ms else None, "rel_err_vs_bf16": err})
                print(f"{out_f:6d}x{in_f:<6d} b={batch:<4d} {label:22s} {ms * 1e3:9.1f} us  {gbs:8.1f} GB/s  "
                      f"x{(base_ms / ms if base_ms else 0):.2f}  err {err:.1e}")
    rows.append({"peers": {k: (v if isinstance(v, str) else "measured") for k, v in peers.items()}})
    return rows


def end_to_end(max_new_tokens: int) -> list[dict]:
    import copy

    from pycodec import CompressionConfig, compress_
    from pycodec.cli import load_source

    model, tok = load_source("smollm2")
    ids = tok("Write a short poem about the sea.", return_tensors="pt").to("cuda")
    rows, texts = [], {}
    for label, cfg in (("bf16", None), ("pycodec lossless", CompressionConfig(mode="lossless")),
                       ("pycodec rate 3.5", CompressionConfig(mode="rate", bits=3.5))):
        m = copy.deepcopy(model)
        if cfg is not None:
            compress_(m, cfg, progress=False)
        m = m.cuda()
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            m.generate(**ids, max_new_tokens=4, do_sample=False)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = m.generate(**ids, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False)
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        texts[label] = tok.decode(out[0, ids["input_ids"].shape[1]:])
        rows.append({"method": label, "tokens_per_s": max_new_tokens / dt,
                     "peak_mem_MiB": torch.cuda.max_memory_allocated() / 2**20, "text": texts[label]})
        print(f"e2e {label:18s} {max_new_tokens / dt:8.1f} tok/s  peak {rows[-1]['peak_mem_MiB']:.0f} MiB")
        del m
        torch.cuda.empty_cache()
    rows.append({"lossless_text_equals_bf16": texts["pycodec lossless"] == texts["bf16"]})
    return rows


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["layers"] if "ms" in r]
    shapes = sorted({tuple(r["shape"]) for r in rows})
    fig, axes = plt.subplots(1, len(shapes), figsize=(4 * len(shapes), 3.5), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        for method in sorted({r["method"] for r in rows}):
            pts = sorted((r["batch"], r["speedup_vs_bf16"]) for r in rows
                         if tuple(r["shape"]) == shape and r["method"] == method and r.get("speedup_vs_bf16"))
            if pts:
                ax.plot(*zip(*pts), marker="o", label=method)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{shape[0]}x{shape[1]}")
        ax.set_xlabel("batch")
        ax.axhline(1.0, color="grey", lw=0.5)
    axes[0][0].set_ylabel("speedup over bf16 cuBLAS")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(result["environment"]["device"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", os.path.join(os.path.dirname(__file__), "results")))
    p.add_argument("--quick", action="store_true", help="fewer shapes and batches")
    p.add_argument("--skip-e2e", action="store_true")
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_suite: no CUDA device; nothing measured", file=sys.stderr)
        sys.exit(2)
    env = environment()
    peak = hbm_peak(env["device"])
    shapes = (LLAMA_SHAPES[:1] + SMOLLM2_SHAPES[2:3]) if a.quick else LLAMA_SHAPES + SMOLLM2_SHAPES
    batches = [1, 16, 256] if a.quick else BATCHES
    result = {"environment": env, "hbm_peak_GBps": peak,
              "decode": decode_throughput(peak, 1 << 24 if a.quick else 1 << 26),
              "layers": layer_suite(shapes, batches, peak)}
    if not a.skip_e2e:
        result["end_to_end"] = end_to_end(32 if a.quick else 128)
    os.makedirs(a.out, exist_ok=True)
    stem = f"gpu_{env['device'].replace(' ', '_')}_{time.strftime('%Y%m%d_%H%M%S')}"
    with open(os.path.join(a.out, stem + ".json"), "w") as f:
        json.dump(result, f, indent=2, default=str)
    plot(result, os.path.join(a.out, stem + ".png"))
    print(f"wrote {stem}.json and .png to {a.out}")


if __name__ == "__main__":
    main()
