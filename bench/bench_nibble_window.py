"""Would rate mode keep its quality per bit in a fixed-width GPU layout? Measured on real weights.

    python bench/bench_nibble_window.py [--json nibble_window_cpu.json] [--models minilm,smollm2]

fixed12 reads lossless weights at memory speed by giving up entropy coding (docs/FORMAT.md §13).
The same for rate mode would hold each symbol in 4 bits (a per-row window of 16 values) with the
rest as exact escapes (a 32-bit column and a 16-bit value each in a kernel's CSR, 48 bits), so a
GEMV would unpack nibbles as int4 kernels do. Two questions, per model's linear weights:

  * rate 3.5's own symbols in such a layout: what share falls outside each row's best window of
    16, and so the bits a weight the layout would hold in GPU memory;
  * the best a 16-level per-row uniform quantizer with exact escapes does: weight SQNR against
    the bits it holds, over step factors c (step = c * the row's robust sigma, as rate mode's),
    beside int4-g128 RTN stored fixed-length.

Rate mode's advantage is its entropy-coded symbols; if a nibble layout is no better than int4 at
equal bits, rate mode's GPU speed must come from a cheaper variable-length decode, not from a
fixed-width layout. Nothing asserts on time.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pycodec  # noqa: E402
from machine import cpu_name, results_path  # noqa: E402
from pycodec import CompressionConfig  # noqa: E402
from pycodec.quant import _row_sigma, compress_weight  # noqa: E402

WINDOW = 16  # values a nibble holds
ESCAPE_BITS = 48  # a CSR escape: 32-bit column, 16-bit value
STEP_FACTORS = (0.3, 0.35, 0.4, 0.45, 0.55, 0.65)


def window_misses(q: np.ndarray) -> int:
    """Symbols of q [N, K] (uint8) outside each row's best window of WINDOW consecutive values."""
    n, k = q.shape
    counts = np.zeros((n, 257), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(n), k), q.reshape(-1).astype(np.int64) + 1), 1)
    running = np.cumsum(counts, axis=1)
    return int((k - (running[:, WINDOW:] - running[:, :-WINDOW]).max(axis=1)).sum())


def rate_symbols_in_nibbles(weights: dict, bits: float = 3.5) -> dict:
    """Rate mode's symbols at `bits`, held in per-row windows of 16 plus escapes."""
    total = misses = escapes = 0
    coded_bits = 0.0
    for w in weights.values():
        packed, stats = compress_weight(w, CompressionConfig(mode="rate", bits=bits))
        q = pycodec.decode(packed["symbols"].numpy().tobytes()).reshape(w.shape)
        misses += window_misses(q)
        escapes += packed["escape_index"].numel()  # rate mode's own (beyond 127 steps)
        total += w.numel()
        coded_bits += stats.bits_per_weight * w.numel()
    outside = (misses + escapes) / total
    return {"rate_bits_per_weight": coded_bits / total, "outside_row_window": outside,
            "nibble_bits_per_weight": 4 + ESCAPE_BITS * outside}


def nibble_quantizer(weights: dict, factors=STEP_FACTORS) -> list[dict]:
    """Weight SQNR and held bits of a per-row 16-level uniform quantizer (levels -8..7 steps),
    weights beyond kept exactly, at each step factor."""
    rows = []
    for c in factors:
        signal = noise = 0.0
        outside = total = 0
        for w in weights.values():
            w = w.float()
            step = (c * _row_sigma(w)).clamp_min(1e-8).half().float()  # stored in fp16, as rate mode's
            q = (w / step).round()
            escaped = (q < -WINDOW // 2) | (q > WINDOW // 2 - 1)
            approx = torch.where(escaped, w, q * step)
            signal += float(w.double().pow(2).sum())
            noise += float((approx - w).double().pow(2).sum())
            outside += int(escaped.sum())
            total += w.numel()
        rows.append({"c": c, "sqnr_db": 10 * math.log10(signal / noise), "outside": outside / total,
                     "bits_per_weight": 4 + ESCAPE_BITS * outside / total})
    return rows


def int4_g128(weights: dict) -> dict:
    """Asymmetric RTN int4 in groups of 128 (fp16 scale and zero a group): SQNR and bits."""
    signal = noise = 0.0
    total = 0
    for w in weights.values():
        w = w.float()
        n, k = w.shape
        if k % 128:
            continue
        g = w.reshape(n, k // 128, 128)
        lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
        scale = ((hi - lo) / 15).clamp_min(1e-8)
        zero = (-lo / scale).round().clamp(0, 15)
        q = (g / scale + zero).round().clamp(0, 15)
        approx = ((q - zero) * scale).reshape(n, k)
        signal += float(w.double().pow(2).sum())
        noise += float((approx - w).double().pow(2).sum())
        total += w.numel()
    return {"sqnr_db": 10 * math.log10(signal / noise), "bits_per_weight": 4 + 32 / 128}


def load(model: str) -> dict:
    if model == "minilm":
        from weights import minilm_linear

        return minilm_linear()
    from bench_lossless import smollm2_linear_weights

    return smollm2_linear_weights()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default="nibble_window_cpu.json")
    p.add_argument("--models", default="minilm,smollm2")
    a = p.parse_args()
    result = {"machine": cpu_name(), "window": WINDOW, "escape_bits": ESCAPE_BITS, "models": {}}
    for model in a.models.split(","):
        weights = load(model)
        row = {"weights": sum(w.numel() for w in weights.values()), "rate_3.5": rate_symbols_in_nibbles(weights),
               "nibble_quantizer": nibble_quantizer(weights), "int4_g128_rtn": int4_g128(weights)}
        result["models"][model] = row
        r = row["rate_3.5"]
        print(f"{model}: rate 3.5 ({r['rate_bits_per_weight']:.3f} b/w coded): {100 * r['outside_row_window']:.2f}% "
              f"outside the row's window of {WINDOW} -> {r['nibble_bits_per_weight']:.3f} b/w as nibbles")
        i = row["int4_g128_rtn"]
        print(f"  int4-g128 RTN: {i['sqnr_db']:.2f} dB at {i['bits_per_weight']:.2f} b/w")
        for q in row["nibble_quantizer"]:
            print(f"  nibbles, c={q['c']:.2f}: {q['sqnr_db']:.2f} dB at {q['bits_per_weight']:.3f} b/w "
                  f"({100 * q['outside']:.2f}% escapes)")
    with open(results_path(a.json), "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {results_path(a.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
