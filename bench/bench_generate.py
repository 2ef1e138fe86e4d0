"""CPU generation speed of SmolLM2-135M: dense bf16 against rate 3.5 with and without decoded weights kept.

    python bench/bench_generate.py [--tokens 40] [--json bench/results/generate_cpu.json]

Greedy generate() of --tokens new tokens after a short chat prompt, timed side by side in one
process: the dense model, then the same model compressed (rate 3.5 bits) with
pycodec.cache_decoded at no limit, at half the decoded size, and off (every forward decodes every
layer; timed over fewer tokens and reported per token), the last also with torch on one thread.
The uncached run is repeated with torch on one thread and with pycodec's parallel calls on its own
worker threads instead of torch's OpenMP team (pycodec/_threads.py). Memory is stated as the bytes
each policy holds: dense weights, coded weights, decoded weights kept. Measures, never asserts.
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

import pycodec  # noqa: E402
from pycodec import CompressedLinear, CompressionConfig  # noqa: E402
from pycodec._threads import threads_in_use  # noqa: E402
from pycodec.cli import load_source  # noqa: E402

PROMPT = "What is the capital of France?"


def timed_generate(model, tok, tokens: int) -> tuple[float, int]:
    ids = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        model.generate(**ids, max_new_tokens=2, do_sample=False)  # warm-up (and, cached, the decode)
        t0 = time.perf_counter()
        out = model.generate(**ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        seconds = time.perf_counter() - t0
    return seconds, out.shape[1] - ids["input_ids"].shape[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=40)
    p.add_argument("--uncached-tokens", type=int, default=8)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    dense, tok = load_source("smollm2")
    rows = []
    seconds, n = timed_generate(dense, tok, a.tokens)
    weight_bytes = sum(m.weight.numel() * 2 for m in dense.modules() if isinstance(m, torch.nn.Linear))
    rows.append({"method": "dense bf16", "seconds": seconds, "tokens": n, "linear_weight_bytes": weight_bytes})
    model = copy.deepcopy(dense)
    pycodec.compress_(model, CompressionConfig(mode="rate", bits=3.5), progress=False)
    coded = sum(m.compressed_bytes() for m in model.modules() if isinstance(m, CompressedLinear))
    for label, budget, tokens in (("rate 3.5, all decoded weights kept", None, a.tokens),
                                  ("rate 3.5, half of them kept", weight_bytes // 2, a.tokens),
                                  ("rate 3.5, decode every forward", 0, a.uncached_tokens)):
        with pycodec.cache_decoded(model, budget) as cache:
            seconds, n = timed_generate(model, tok, tokens)
            rows.append({"method": label, "seconds": seconds, "tokens": n, "linear_weight_bytes": coded,
                         "decoded_bytes_kept": cache.bytes})
    # The same with torch on one thread (every linear is pycodec's), and on pycodec's own worker
    # threads instead of torch's OpenMP team, which spin after each parallel op (attention).
    threads = torch.get_num_threads()
    runtime = threads_in_use()  # what the rows above ran on (PYCODEC_OWN_THREADS=1: own threads)
    for label, torch_threads, on_team in (("rate 3.5, decode every forward, torch 1 thread", 1, runtime is not None),
                                          ("rate 3.5, decode every forward, pycodec's own threads", threads, False)):
        torch.set_num_threads(torch_threads)
        pycodec.use_torch_threads(on_team)
        with pycodec.cache_decoded(model, 0) as cache:
            seconds, n = timed_generate(model, tok, a.uncached_tokens)
            rows.append({"method": label, "seconds": seconds, "tokens": n, "linear_weight_bytes": coded,
                         "decoded_bytes_kept": cache.bytes})
    torch.set_num_threads(threads)
    pycodec.use_torch_threads(runtime is not None)
    base = rows[0]["seconds"] / rows[0]["tokens"]
    print(f"SmolLM2-135M generate on the CPU ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads), greedy, {a.tokens} new tokens")
    print(f"pycodec's parallel calls on {runtime or 'its own threads'} (except where the row says)")
    print(f"{'method':54s} {'s/token':>8s} {'x dense':>8s} {'coded MB':>9s} {'kept MB':>8s}")
    for r in rows:
        r["seconds_per_token"] = r["seconds"] / r["tokens"]
        r["time_vs_dense"] = r["seconds_per_token"] / base
        print(f"{r['method']:54s} {r['seconds_per_token']:8.3f} {r['time_vs_dense']:8.2f} "
              f"{r['linear_weight_bytes'] / 1e6:9.1f} {r.get('decoded_bytes_kept', 0) / 1e6:8.1f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": f"CPU, {os.cpu_count()} cores", "threads": torch.get_num_threads(),
                       "prompt": PROMPT, "openmp_runtime": runtime, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
