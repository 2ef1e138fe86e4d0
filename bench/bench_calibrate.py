"""Quality per bit with calibration on SmolLM2-135M: rate mode and int4-g128, each from the
weights alone and calibrated (pycodec.calibrate: GPTQ error feedback; rate mode with
rate-distortion optimized rounding).

Calibration reads the default texts (licences that ship with Debian: Apache-2.0, Artistic, BSD,
CC0-1.0); perplexity is measured on another one (GPL-3, the first --max-tokens tokens),
never used for calibration or tuning. Reports, per method: bits per weight of the decoder's linear layers (everything
stored counted), of all compressed weights (embeddings and head included, when compressed),
perplexity, compression wall time, and the machine's load average when the row started (the
machine may be shared: a load above its core count slows every row).

    python bench/bench_calibrate.py [--head dense|compressed] [--json bench/results/calibrate_smollm2_cpu.json]

--head dense keeps the tied embedding / output head dense (skip lm_head), as the issue's
reference figures were measured; --head compressed uses the library default (head at bits + 1.5).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pycodec import CompressionConfig, compress_  # noqa: E402
from pycodec.calibrate import DEFAULT_CALIBRATION_TEXTS  # noqa: E402
from pycodec.cli import DEFAULT_TEXT, load_source, perplexity  # noqa: E402
from bit_accounting import decoder_bits, fixed_length_bits, linear_shapes  # noqa: E402  (bench/, this script's folder)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", default=DEFAULT_TEXT, help="evaluation text (never the calibration text)")
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--head", choices=("dense", "compressed"), default="dense")
    p.add_argument("--rates", default="2.5,3.0,3.5,int4", help="rate-mode targets; 'int4': int4-g128's stored size")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if os.path.realpath(a.text) in {os.path.realpath(p) for p in DEFAULT_CALIBRATION_TEXTS}:
        raise SystemExit("the evaluation text must not be a calibration text")
    with open(a.text, errors="replace") as f:
        text = f.read()
    model, tok = load_source("smollm2")
    skip = ("lm_head",) if a.head == "dense" else ()
    int4_bits = round(fixed_length_bits(linear_shapes(model), 4), 3)
    rows = [{"method": "bf16 (dense)", "decoder_bits_per_weight": 16.0, "bits_per_weight": 16.0,
             "perplexity": perplexity(model, tok, text, a.max_tokens)}]
    print(f"dense: perplexity {rows[0]['perplexity']:.3f}", file=sys.stderr, flush=True)
    configs = []
    for rate in a.rates.split(","):
        bits = int4_bits if rate == "int4" else float(rate)
        configs += [(f"rate {bits:g}", CompressionConfig(mode="rate", bits=bits, skip=skip)),
                    (f"rate {bits:g} calibrated", CompressionConfig(mode="rate", bits=bits, skip=skip,
                                                                     calibration="default"))]
    configs += [("int4-g128 RTN", CompressionConfig(mode="int", bits=4, group_size=128, skip=skip)),
                ("int4-g128 GPTQ", CompressionConfig(mode="int", bits=4, group_size=128, skip=skip,
                                                     calibration="default"))]
    for label, cfg in configs:
        m = copy.deepcopy(model)
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        report = compress_(m, cfg, progress=False, tokenizer=tok)
        seconds = time.perf_counter() - t0
        row = {"method": label, "config": cfg.to_dict(), "decoder_bits_per_weight": decoder_bits(report),
               "bits_per_weight": report["bits_per_weight"], "perplexity": perplexity(m, tok, text, a.max_tokens),
               "compress_seconds": seconds, "load_average_at_start": load}
        if "calibration" in report:
            row["calibration"] = report["calibration"]
        rows.append(row)
        print(f"{label}: {row['decoder_bits_per_weight']:.3f} b/w, ppl {row['perplexity']:.3f}, {seconds:.1f} s "
              f"(load {load:.1f})", file=sys.stderr, flush=True)
        del m
    print(f"SmolLM2-135M-Instruct, head {a.head}, perplexity on the first {a.max_tokens} tokens of {a.text}; "
          f"calibration: {', '.join(map(os.path.basename, DEFAULT_CALIBRATION_TEXTS))}; {os.cpu_count()} CPU cores")
    print(f"{'method':28s} {'decoder b/w':>11s} {'all b/w':>8s} {'perplexity':>10s} {'compress s':>10s} {'load':>5s}")
    for r in rows:
        timing = f"{r['compress_seconds']:10.1f} {r['load_average_at_start']:5.1f}" if "compress_seconds" in r else ""
        print(f"{r['method']:28s} {r['decoder_bits_per_weight']:11.3f} {r['bits_per_weight']:8.3f} "
              f"{r['perplexity']:10.3f} {timing}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": f"CPU, {os.cpu_count()} cores, {platform.processor() or platform.machine()}",
                       "torch_threads": torch.get_num_threads(), "head": a.head, "text": a.text,
                       "max_tokens": a.max_tokens, "calibration_texts": list(DEFAULT_CALIBRATION_TEXTS), "rows": rows},
                      f, indent=2)


if __name__ == "__main__":
    main()
