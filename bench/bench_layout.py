"""Format v2's costs on real weights: side information per stream, and bits against format v1.

    python bench/bench_layout.py [--json bench/results/layout_cpu.json] [--no-smollm2]

For every linear weight of all-MiniLM-L6-v2 and SmolLM2-135M, in the three modes as compress_
writes them by default (format v2 windowed Huffman), and lossless in the byte split too
(lossless_split="byte"):
  * side information of every stream: all of a blob that is not a code bit (header, table, chunk
    index, lane padding, chunk slack) over its code bits (pycodec.inspect: overhead_bits / code_bits);
    the issue's budget is 1.5% per stream;
  * chunks and lanes: how many independent chunks (GPU warps) each layer gets;
  * lane starts: the device memory a stream bound for a GPU adds to skip the kernels' count pass
    (a byte per lane; cuda_ops.LANE_STARTS), per weight, and the chunks whose counts no byte holds
    (the kernels count those);
  * bits per weight, everything counted, against format v1 rANS (pycodec <= 0.1's default) on the
    same symbols: lossless with the old byte-plane layout, int4 and rate 3.5 symbol streams.
Rate mode here quantizes at a fixed step (c = 0.45, about 3.5 bits) rather than bisecting on the bit
budget, which is slow; the streams are the ones that step produces either way.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pycodec  # noqa: E402
from pycodec.quant import (_rate_quantize, bf16_planes, pack_lossless, packed_bits, quantize_int)  # noqa: E402

RATE_C = 0.45


def load(smollm2: bool) -> dict:
    from pycodec._weights import load_minilm

    out = {"all-MiniLM-L6-v2": {k: v.to(torch.bfloat16) for k, v in load_minilm(linear_only=True).items()}}
    if smollm2:
        from pycodec.cli import load_source

        model, _ = load_source("smollm2")
        out["SmolLM2-135M"] = {n: m.weight.detach().to(torch.bfloat16) for n, m in model.named_modules()
                               if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")}
    return out


def stream_row(blob: bytes) -> dict:
    i = pycodec.inspect(blob)
    starts = pycodec._C.lane_starts(blob).reshape(i["n_chunks"], i["lanes"])
    return {"chunks": i["n_chunks"], "lanes": i["lanes"], "chunk_symbols": i["chunk_symbols"],
            "code_bits": i["code_bits"], "overhead_bits": i["overhead_bits"],
            "lane_start_bits": 8 * starts.size,
            "lane_start_escapes": int((starts[:, :-1] == 255).any(axis=1).sum()),  # chunks the kernels count
            "side_pct": 100.0 * i["overhead_bits"] / max(i["code_bits"], 1)}


def legacy_lossless_bits(w: torch.Tensor) -> int:
    """pycodec <= 0.1's lossless packing: exponent and sign/mantissa planes, each rANS or raw."""
    planes = bf16_planes(w.view(torch.int16).numpy().view(np.uint16))
    return sum(min(8 * len(pycodec.encode(p, coder="rans")), 8 * p.size) for p in planes)


def measure(model: str, weights: dict) -> dict:
    modes = {"lossless": [], "lossless byte": [], "int4 g128": [], "rate 3.5": []}
    totals = {m: {"n": 0, "v2_bits": 0, "v1_bits": 0} for m in modes}
    for name, w in weights.items():
        n = w.numel()
        legacy = legacy_lossless_bits(w)
        for mode, split in (("lossless", "smallest"), ("lossless byte", "byte")):
            packed, _ = pack_lossless(w, split=split)
            modes[mode].append(dict(stream_row(packed["symbols"].numpy().tobytes()), layer=name, shape=list(w.shape)))
            totals[mode]["v2_bits"] += packed_bits(packed)
            totals[mode]["v1_bits"] += legacy
        for mode in ("int4 g128", "rate 3.5"):
            if mode == "int4 g128":
                q, scale, zero = quantize_int(w.float(), 4, 128)
                side = 16 * (scale.numel() + zero.numel())
            else:
                q, step, escaped = _rate_quantize(w.float(), RATE_C)
                side = 16 * step.numel() + 16 + 96 * escaped.numel()  # escaped: flat indices
            sym = q.numpy()
            v2 = pycodec.encode(sym)
            modes[mode].append(dict(stream_row(v2), layer=name, shape=list(w.shape)))
            totals[mode]["v2_bits"] += 8 * len(v2) + side
            totals[mode]["v1_bits"] += 8 * len(pycodec.encode(sym, coder="rans")) + side
        for m in modes:
            totals[m]["n"] += n
    out = {}
    for m, rows in modes.items():
        t = totals[m]
        sides = [r["side_pct"] for r in rows]
        out[m] = {"layers": rows, "max_side_pct": max(sides),
                  "side_pct_all_streams": 100.0 * sum(r["overhead_bits"] for r in rows) / sum(r["code_bits"] for r in rows),
                  "min_chunks": min(r["chunks"] for r in rows),
                  "v2_bits_per_weight": t["v2_bits"] / t["n"], "v1_rans_bits_per_weight": t["v1_bits"] / t["n"],
                  "lane_starts_bits_per_weight": sum(r["lane_start_bits"] for r in rows) / t["n"],
                  "lane_start_escapes": sum(r["lane_start_escapes"] for r in rows),
                  "v2_over_v1_pct": 100.0 * (t["v2_bits"] / t["v1_bits"] - 1)}
        print(f"{model:18s} {m:13s} side info: max {max(sides):5.2f}% per stream, {out[m]['side_pct_all_streams']:5.2f}% "
              f"overall; >= {out[m]['min_chunks']:4d} chunks; bits/weight v2 {out[m]['v2_bits_per_weight']:.4f} vs "
              f"v1 rANS {out[m]['v1_rans_bits_per_weight']:.4f} ({out[m]['v2_over_v1_pct']:+.2f}%); lane starts "
              f"+{out[m]['lane_starts_bits_per_weight']:.4f} on a GPU ({out[m]['lane_start_escapes']} chunks escape)",
              flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None)
    p.add_argument("--no-smollm2", action="store_true")
    a = p.parse_args()
    t0 = time.time()
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "rate_c": RATE_C, "models": {}}
    for model, weights in load(not a.no_smollm2).items():
        result["models"][model] = measure(model, weights)
    result["seconds"] = time.time() - t0
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
