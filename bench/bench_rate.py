"""Quality per bit on SmolLM2-135M: rate mode vs int4 group-128 round-to-nearest.

int4-g128 is what users deploy today, stored fixed-length: 4 bits per weight plus an fp16
scale and zero per group (partial groups at the row end counted). Rate mode is given that
same budget (everything stored counted) and a smaller one; lossless is the reference for
speed. Reports bits per weight, weight SQNR (over all compressed layers), perplexity on a text
file, and compression speed (weights per second, one process on this machine's cores).

    python bench/bench_rate.py [--coder huffman|rans] [--max-tokens 1024] [--json bench/results/rate_smollm2_cpu.json]

--coder picks the entropy coder of every compressed layer (default: the library's, format-v2
Huffman; "rans" writes format v1).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pycodec import CompressedLinear, CompressionConfig, compress_  # noqa: E402
from pycodec.codec import CODERS, DEFAULT_CODER  # noqa: E402
from pycodec.cli import DEFAULT_TEXT, load_source, perplexity  # noqa: E402


def fixed_length_int4_bits(model, group_size: int = 128) -> float:
    bits = n = 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head"):
            groups = math.ceil(m.in_features / group_size)
            bits += m.out_features * (4 * m.in_features + 32 * groups)
            n += m.weight.numel()
    return bits / n


def weight_sqnr(dense, compressed) -> float:
    sig = err = 0.0
    for (name, m), (_, c) in zip(dense.named_modules(), compressed.named_modules()):
        if isinstance(c, CompressedLinear):
            w = m.weight.detach().float()
            sig += w.pow(2).sum().item()
            err += (w - c.decoded_weight().float()).pow(2).sum().item()
    return 10 * math.log10(sig / err) if err else math.inf  # lossless: no error at all


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", default=DEFAULT_TEXT)
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--json", default=None)
    p.add_argument("--coder", choices=CODERS, default=DEFAULT_CODER)
    a = p.parse_args()
    with open(a.text, errors="replace") as f:
        text = f.read()
    model, tok = load_source("smollm2")
    budget = fixed_length_int4_bits(model)
    rows = [{"method": "bf16 (dense)", "bits_per_weight": 16.0, "sqnr_db": math.inf,
             "perplexity": perplexity(model, tok, text, a.max_tokens)}]
    # The linear layers only (the tied embedding / lm_head table dense): comparable with
    # fixed-length int4, which is a linear-layer format.
    lin = dict(coder=a.coder, skip=("lm_head",))
    configs = [
        (f"int4-g128 RTN, fixed-length ({budget:.3f} b/w)", CompressionConfig(mode="int", bits=4, group_size=128, **lin), budget),
        ("int4-g128 RTN, entropy-coded", CompressionConfig(mode="int", bits=4, group_size=128, **lin), None),
        (f"rate mode at {budget:.3f} b/w", CompressionConfig(mode="rate", bits=round(budget, 3), **lin), None),
        ("rate mode at 3.5 b/w", CompressionConfig(mode="rate", bits=3.5, **lin), None),
        ("int3-g128 RTN, entropy-coded", CompressionConfig(mode="int", bits=3, group_size=128, **lin), None),
        ("rate mode at 3.0 b/w", CompressionConfig(mode="rate", bits=3.0, **lin), None),
        ("lossless (bit-exact)", CompressionConfig(mode="lossless", **lin), None),
        # The whole model, as compress_ does by default: the tied table too, at embedding_bits.
        ("whole model: rate 3.5 b/w (table at 5)", CompressionConfig(mode="rate", bits=3.5, coder=a.coder), None),
        ("whole model: lossless", CompressionConfig(mode="lossless", coder=a.coder), None),
    ]
    for label, cfg, stored_bits in configs:
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        report = compress_(m, cfg, progress=False)
        seconds = time.perf_counter() - t0
        coded = report["n_weights"]
        rows.append({"method": label, "bits_per_weight": stored_bits or report["bits_per_weight"],
                     "bits_per_parameter": report["bits_per_parameter"], "checkpoint_MB": report["checkpoint_bytes"] / 1e6,
                     "sqnr_db": weight_sqnr(model, m), "perplexity": perplexity(m, tok, text, a.max_tokens),
                     "compress_seconds": seconds, "weights_per_s": coded / seconds})
    print(f"SmolLM2-135M linear layers (lm_head tied, kept), coder {a.coder}, perplexity on {a.max_tokens} tokens "
          f"of {a.text}")
    print(f"{'method':44s} {'bits/weight':>11s} {'bits/param':>10s} {'MB':>6s} {'SQNR dB':>8s} {'perplexity':>10s} "
          f"{'compress':>9s} {'Mweights/s':>10s}")
    for r in rows:
        speed = f"{r['compress_seconds']:8.1f}s {r['weights_per_s'] / 1e6:10.2f}" if "compress_seconds" in r else ""
        whole = f"{r['bits_per_parameter']:10.3f} {r['checkpoint_MB']:6.1f}" if "checkpoint_MB" in r else " " * 17
        print(f"{r['method']:44s} {r['bits_per_weight']:11.3f} {whole} {r['sqnr_db']:8.2f} {r['perplexity']:10.3f} {speed}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": "CPU", "coder": a.coder, "text": a.text, "max_tokens": a.max_tokens, "rows": rows},
                      f, indent=2,
                      default=str)


if __name__ == "__main__":
    main()
