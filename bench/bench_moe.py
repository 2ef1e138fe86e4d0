"""CPU speed of a mixture-of-experts model with its expert banks compressed, beside the dense one.

    python bench/bench_moe.py [--json bench/results/moe_cpu.json]

A random Qwen3-MoE-shaped model (built from a config: no hub; random weights, so its bits per
weight say nothing of real weights' and are not reported as such), in bf16. Timed side by side in
one process, greedy generate() at batch 1 and 8: the dense model under transformers' default
experts implementation ("grouped_mm") and its "eager" loop, then the model compressed lossless
and at rate 3.5 (the "pycodec" experts implementation: each routed expert through its compressed
linear), each with every forward decoding its weights and with pycodec.cache_decoded (its weights
decoded by a warm-up that routes tokens to every expert, as every row gets). Also the
compression time and the lossless logits' equality with the eager dense model's. Measures,
never asserts.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pycodec  # noqa: E402
from machine import cpu_name, results_path  # noqa: E402
from pycodec import CompressionConfig  # noqa: E402

SHAPE = dict(hidden_size=768, intermediate_size=2048, moe_intermediate_size=384, num_hidden_layers=4,
             num_attention_heads=12, num_key_value_heads=4, head_dim=64, vocab_size=8192, num_experts=16,
             num_experts_per_tok=2, max_position_embeddings=512)


def make_model():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model("qwen3_moe", **SHAPE)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    for p in model.parameters():
        if p.dim() == 3:
            torch.nn.init.normal_(p, std=0.02)  # from_config leaves the experts unset
    return model.to(torch.bfloat16)


def per_token(model, batch: int, tokens: int) -> float:
    ids = torch.randint(0, SHAPE["vocab_size"], (batch, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=0)  # warm-up
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)
        return (time.perf_counter() - t0) / tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    dense = make_model()
    n_params = sum(t.numel() for t in dense.parameters())
    n_experts = sum(t.numel() for t in dense.parameters() if t.dim() == 3)
    probe = torch.randint(0, SHAPE["vocab_size"], (1, 24), generator=torch.Generator().manual_seed(2))
    rows = []

    def timed(label, model, **extra):
        row = {"method": label, **extra}
        per_token(model, 8, 2)  # 8 x 18 tokens route to every expert: a kept weight is decoded before timing
        for batch in (1, 8):
            row[f"seconds_per_token_batch{batch}"] = per_token(model, batch, a.tokens)
        rows.append(row)
        print(f"{label:44s} " + "  ".join(f"b{b}: {row[f'seconds_per_token_batch{b}'] * 1e3:7.1f} ms/token"
                                          for b in (1, 8)), flush=True)

    timed("dense bf16, grouped_mm (transformers' default)", dense)
    eager = copy.deepcopy(dense)
    eager.set_experts_implementation("eager")
    with torch.no_grad():
        eager_logits = eager(probe).logits
    timed("dense bf16, eager", eager)
    for mode, bits in (("lossless", None), ("rate", 3.5)):
        model = copy.deepcopy(dense)
        t0 = time.perf_counter()
        report = pycodec.compress_(model, CompressionConfig(mode=mode, **({"bits": bits} if bits else {})),
                                   progress=False)
        seconds = time.perf_counter() - t0
        banks = {n: v for n, v in report["layers"].items() if "experts" in v}
        extra = {"compress_seconds": seconds, "checkpoint_bytes": report["checkpoint_bytes"],
                 "expert_banks": len(banks)}
        if mode == "lossless":
            with torch.no_grad():
                extra["logits_bitwise_eager"] = bool(torch.equal(model(probe).logits, eager_logits))
        label = f"pycodec {mode}{'' if bits is None else f' {bits}'}"
        timed(f"{label}, decoding every forward", model, **extra)
        with pycodec.cache_decoded(model):
            timed(f"{label}, decoded weights kept", model)
    out = {"machine": f"CPU: {cpu_name()}, {os.cpu_count()} cores",
           "torch_threads": torch.get_num_threads(), "shape": SHAPE, "parameters": n_params,
           "expert_parameters": n_experts, "dense_bf16_bytes": 2 * n_params, "tokens": a.tokens, "rows": rows}
    if a.json:
        with open(results_path(a.json), "w") as f:
            json.dump(out, f, indent=1)
        print(f"-> {results_path(a.json)}")


if __name__ == "__main__":
    main()
