"""Saving and loading SmolLM2-135M on the CPU: pycodec checkpoints beside the dense bf16 one.

    python bench/bench_load.py [--repeat 5] [--json bench/results/load_cpu.json]

What a user waits for between a checkpoint on disk and the first token: the dense bf16 model
saved by transformers and loaded by ``AutoModelForCausalLM.from_pretrained``; then the whole
model compressed lossless and at rate 3.5 bits, saved by ``pycodec.save_pretrained`` and loaded
by ``pycodec.from_pretrained`` and by transformers' loader (``import pycodec`` registers it),
each followed by one forward of a short prompt (the first decode of every weight: the modules
keep no decoded weight here). Best and median of --repeat loads in one process (the files in
the page cache), with torch on one thread and on every core. Measures, never asserts.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pycodec  # noqa: E402
from pycodec import CompressionConfig  # noqa: E402
from pycodec.cli import load_source  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import cpu_name, results_path  # noqa: E402

PROMPT = "The capital of France is"


def timed(fn, repeat: int) -> tuple[dict, object]:
    """Best and median seconds of `repeat` calls, after one that is not counted (imports)."""
    result = fn()
    seconds = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - t0)
    return {"best_s": min(seconds), "median_s": statistics.median(seconds)}, result


def first_forward(model, ids) -> float:
    with torch.no_grad():
        t0 = time.perf_counter()
        model(ids)
        return time.perf_counter() - t0


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))


def main() -> None:
    import transformers

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    dense, tok = load_source("smollm2")
    dense = dense.to(torch.bfloat16)
    ids = tok(PROMPT, return_tensors="pt").input_ids
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dense_dir = os.path.join(tmp, "dense")
        config = copy.deepcopy(dense.config)  # a GGUF-loaded model is marked quantized: save a plain one
        config.__dict__.pop("quantization_config", None)
        plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        plain.load_state_dict(dense.state_dict())
        t0 = time.perf_counter()
        plain.save_pretrained(dense_dir)
        saves = {"dense bf16": time.perf_counter() - t0}
        folders = {"dense bf16": dense_dir}
        for mode, cfg in (("lossless", CompressionConfig(mode="lossless")),
                          ("rate 3.5", CompressionConfig(mode="rate", bits=3.5))):
            model = copy.deepcopy(dense)
            pycodec.compress_(model, cfg, progress=False)
            folders[mode] = os.path.join(tmp, mode.replace(" ", "_"))
            t0 = time.perf_counter()
            pycodec.save_pretrained(model, folders[mode])
            saves[mode] = time.perf_counter() - t0
            del model
        del plain
        for threads in sorted({1, os.cpu_count() or 1}):
            torch.set_num_threads(threads)
            for method, folder in folders.items():
                loaders = {"transformers": lambda f=folder: transformers.AutoModelForCausalLM.from_pretrained(f)}
                if method != "dense bf16":
                    loaders = {"pycodec": lambda f=folder: pycodec.from_pretrained(f), **loaders}
                for loader, load in loaders.items():
                    stats, model = timed(load, a.repeat)
                    row = {"method": method, "loader": loader, "threads": threads, **stats,
                           "first_forward_s": first_forward(model, ids), "checkpoint_bytes": folder_bytes(folder),
                           "save_s": saves[method]}
                    rows.append(row)
                    print(f"{method:10s} {loader:12s} {threads} thread(s): load {row['best_s']:.3f} s best, "
                          f"{row['median_s']:.3f} median; first forward {row['first_forward_s']:.3f} s; "
                          f"{row['checkpoint_bytes'] / 1e6:.1f} MB, saved in {row['save_s']:.2f} s", flush=True)
                    del model
    if a.json:
        path = results_path(a.json)
        with open(path, "w") as f:
            json.dump({"machine": f"CPU: {cpu_name()}, {os.cpu_count()} cores",
                       "torch": torch.__version__, "transformers": transformers.__version__,
                       "pycodec": pycodec.__version__, "prompt": PROMPT, "repeat": a.repeat, "rows": rows}, f,
                      indent=1)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
