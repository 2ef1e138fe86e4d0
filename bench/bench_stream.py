"""Streaming benchmark: a model that does not fit the device budget, three ways, in one run.

    python bench/bench_stream.py [--out DIR] [--size 3b|1b|tiny] [--device cuda|cpu] [--tokens N]

A Llama-architecture model with random weights (speed does not depend on the values; nothing
is downloaded), bf16, and a device budget of a third of its bf16 size (``--budget-frac``), so
every method must offload:

  accelerate   bf16 with accelerate's CPU offload (infer_auto_device_map + dispatch_model
               under the same max_memory): offloaded layers' bf16 weights cross PCIe each forward
  lossless     pycodec lossless, pycodec.stream with the same budget
  rate 3.5     pycodec rate 3.5, pycodec.stream with the same budget

Reported per method and batch (1 and 8): tokens/s of greedy generation (batch x steps / s),
peak device memory, bytes moved host to device per generation step, i.e. per forward (the
streamer's count; for accelerate, the offloaded bf16 bytes), and the PCIe bandwidth that
implies beside the machine's measured pinned host-to-device copy bandwidth.

Compression: one decoder layer's linears are compressed and their packed tensors shared by
every layer (copied, so each layer streams its own bytes). Compressing a 3B model's 200
random layers one by one would take minutes of CPU time and change nothing measured here.
With ``--device cpu --size tiny --budget-frac 0.95`` the pycodec rows run on the CPU (plain
copies), a check that the script works (the tiny model's 32k-row embeddings alone take more
than a third of it); accelerate's row needs a GPU. Nothing asserts on time.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIZES = {  # Llama-3.2-3B's shapes with a 32k vocabulary; a ~1B; a tiny one for the CPU check
    "3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
               num_key_value_heads=8),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
               num_key_value_heads=4),
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2),
}


def random_llama(size: str):
    """bf16, random normal(0, 0.02) weights: parameters are made on the meta device and filled
    once (no default init of a 3B model), buffers (rotary frequencies) built as usual."""
    import transformers

    from pycodec.hub import _ParametersOnMeta

    cfg = transformers.LlamaConfig(vocab_size=32000, max_position_embeddings=4096, **SIZES[size])
    with _ParametersOnMeta():
        model = transformers.LlamaForCausalLM._from_config(cfg, dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if name == "weight" and "norm" in type(module).__name__.lower():
                data = torch.ones(p.shape, dtype=torch.bfloat16)
            else:
                data = (torch.randn(p.shape, generator=gen) * 0.02).to(torch.bfloat16)
            setattr(module, name, torch.nn.Parameter(data, requires_grad=False))
    return model.eval()


def compress_by_sharing(model, config) -> None:
    """Compress layer 0's linears, then give every layer a copy of their packed tensors."""
    from pycodec import CompressedLinear
    from pycodec.nn import _set_submodule

    first = model.model.layers[0]
    packed = {}
    for name, m in list(first.named_modules()):
        if isinstance(m, torch.nn.Linear):
            c = CompressedLinear.from_linear(m, config)
            packed[name] = (c, {k: v.clone() for k, v in c.packed().items()})
    for i, layer in enumerate(model.model.layers):
        for name, (c, tensors) in packed.items():
            clone = {k: v.clone() for k, v in tensors.items()}
            _set_submodule(layer, name, CompressedLinear(c.in_features, c.out_features, clone, None))
    model.pycodec_config = config


def h2d_bandwidth_gbs(nbytes: int = 256 << 20) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst.copy_(src)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize()
    return 5 * nbytes / (time.perf_counter() - t0) / 1e9


def bf16_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def free_device_memory() -> None:
    """Frees what the last method left: accelerate's hooks make each hooked module a reference
    cycle (module.forward holds a partial of the module), so ``del model`` alone leaves its
    device weights allocated until the cycle collector runs. On the H200 (2026-11-30) they were
    still allocated through the next method's run, whose peak read 3696 MiB for a plan of 1917."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def timed_generate(model, batch: int, tokens: int, device) -> tuple[float, float | None, float | None]:
    """(seconds, peak MiB, MiB allocated when the timing started) of one greedy generate; the
    last two on CUDA only. The peak counts everything allocated on the device, so the starting
    figure says how much of it this method did not allocate."""
    ids = torch.randint(0, 32000, (batch, 16), device=device)
    start = None
    with torch.no_grad():
        model.generate(ids, max_new_tokens=2, min_new_tokens=2, do_sample=False, pad_token_id=0)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated() / 2**20
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)
        if device.type == "cuda":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return seconds, peak, start


def run_accelerate(base, budget: int, batches, tokens: int) -> list[dict]:
    from accelerate import dispatch_model, infer_auto_device_map

    model = copy.deepcopy(base)
    device_map = infer_auto_device_map(model, max_memory={0: budget, "cpu": 1 << 40},
                                       no_split_module_classes=["LlamaDecoderLayer"])
    offloaded = sum(p.numel() * p.element_size() for n, p in model.named_parameters()
                    if device_map.get(_owner(n, device_map)) == "cpu")
    model = dispatch_model(model, device_map=device_map)
    rows = []
    for batch in batches:
        seconds, peak, start = timed_generate(model, batch, tokens, torch.device("cuda"))
        rows.append({"method": "accelerate cpu offload (bf16)", "batch": batch, "tokens_per_s": batch * tokens / seconds,
                     "peak_device_MiB": peak, "device_MiB_at_start": start, "bytes_moved_per_step": offloaded,
                     "pcie_GBs": offloaded * tokens / seconds / 1e9})
        print_row(rows[-1])
    del model
    free_device_memory()
    return rows


def _owner(param_name: str, device_map: dict) -> str:
    """The device_map key that places a parameter (the longest prefix)."""
    parts = param_name.split(".")
    for i in range(len(parts), -1, -1):
        key = ".".join(parts[:i])
        if key in device_map:
            return key
    return ""


def run_pycodec(base, label: str, config, budget: int, batches, tokens: int, device) -> list[dict]:
    import pycodec

    model = copy.deepcopy(base)
    compress_by_sharing(model, config)
    rows = []
    streamer = pycodec.stream(model, device, resident_bytes=budget)
    plan = streamer.report()
    for batch in batches:
        before = streamer.report()["bytes_uploaded"]
        seconds, peak, start = timed_generate(model, batch, tokens, device)
        moved = streamer.report()["bytes_uploaded"] - before
        rows.append({"method": label, "batch": batch, "tokens_per_s": batch * tokens / seconds,
                     "peak_device_MiB": peak, "device_MiB_at_start": start, "bytes_moved_per_step": moved / tokens,
                     "pcie_GBs": moved / seconds / 1e9, "resident_layers": len(plan["resident"]),
                     "streamed_layers": len(plan["streamed"]), "device_bytes": plan["device_bytes"],
                     "prefetch_misses": streamer.report()["prefetch_misses"]})
        print_row(rows[-1])
    streamer.close()
    del model, streamer
    free_device_memory()
    return rows


def print_row(r: dict) -> None:
    peak = f"{r['peak_device_MiB']:.0f} MiB" if r.get("peak_device_MiB") is not None else "-"
    if r.get("device_MiB_at_start") is not None:
        peak += f" ({r['device_MiB_at_start']:.0f} at start)"
    print(f"{r['method']:32s} batch {r['batch']:2d}: {r['tokens_per_s']:8.2f} tok/s, peak {peak}, "
          f"{r['bytes_moved_per_step'] / 2**20:8.1f} MiB moved/step, {r['pcie_GBs']:.2f} GB/s", flush=True)


def main() -> None:
    from pycodec import CompressionConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", os.path.join(os.path.dirname(__file__), "results")))
    p.add_argument("--size", choices=sorted(SIZES), default="3b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--budget-frac", type=float, default=1 / 3, help="device budget as a fraction of the bf16 size")
    p.add_argument("--batches", default="1,8")
    a = p.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        sys.exit(2)
    batches = [int(b) for b in a.batches.split(",")]
    base = random_llama(a.size)
    size = bf16_bytes(base)
    budget = int(size * a.budget_frac)
    result = {"size": a.size, "bf16_bytes": size, "budget_bytes": budget, "tokens": a.tokens, "rows": []}
    if device.type == "cuda":
        result["device"] = torch.cuda.get_device_name(0)
        result["h2d_pinned_GBs"] = h2d_bandwidth_gbs()
        print(f"{result['device']}: pinned host-to-device {result['h2d_pinned_GBs']:.1f} GB/s; "
              f"model {size / 2**30:.2f} GiB bf16, budget {budget / 2**30:.2f} GiB", flush=True)
        result["rows"] += run_accelerate(base, budget, batches, a.tokens)
    else:
        result["device"] = "cpu"
    for label, config in (("pycodec lossless (streamed)", CompressionConfig(mode="lossless")),
                          ("pycodec rate 3.5 (streamed)", CompressionConfig(mode="rate", bits=3.5))):
        result["rows"] += run_pycodec(base, label, config, budget, batches, a.tokens, device)
    for batch in batches:
        ref = next((r for r in result["rows"] if r["batch"] == batch and r["method"].startswith("accelerate")), None)
        for r in result["rows"]:
            if ref is not None and r["batch"] == batch:
                r["speedup_vs_accelerate"] = r["tokens_per_s"] / ref["tokens_per_s"]
    os.makedirs(a.out, exist_ok=True)
    tag = result["device"].replace(" ", "_").replace("/", "_")
    path = os.path.join(a.out, f"stream_{a.size}_{tag}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
