"""The GPU benchmark suite: one command, one JSON + PNG under --out (default $OUT or bench/results).

    python bench/gpu_suite.py [--out DIR] [--quick] [--e2e] [--only targets,settings,decode,lossless_decode,layers,compiled,end_to_end]
    python bench/gpu_suite.py --quick --only targets,lossless_decode,end_to_end   # a short lease: the target rows

Measured on the CUDA device at hand, everything in the same run:
  * targets (first): the issue's target rows, each method at its default route (pycodec lossless,
    lossless fixed12, rate 3.5) beside bf16 cuBLAS, DFloat11 and the int4-g128 peers; every shape at
    batch 1 before any larger batch, the layers built once; rows as the layers section's;
  * settings (first of the sweeps: a lease cut short still has it): the fused GEMVs at batch 1 and 4 on
    4096 x 4096 and 14336 x 4096, rate 3.5 and lossless, under each pycodec GPU kernel setting
    (x in shared memory or not; 4, 8 or 16 warps a block; each warp's chunk copied into shared
    memory or read in place: stream_shared; staged stages stored a word at a time or byte by byte:
    stage_word_stores; rate at batch 1 through the staged or the fused GEMV: affine_gemv_staged),
    and with lane ranges from the count pass instead of
    the lane starts ("counted": cuda_ops.LANE_STARTS off), beside bf16, outputs checked equal;
    "lossless byte" rows: the byte split (lossless_split="byte"), the kernels' byte instances;
    "lossless fixed12" rows: the fixed-width layout (lossless_split="fixed12"), its tensor-core GEMV
    and its CUDA-core one ("cuda cores": fixed12_tensor_cores=0);
  * decode: GB/s of decoded symbols of the v2 decode kernel on a 4096 x 14336 rate-3.5 stream and its
    lossless symbols, over layout variants (lanes per chunk, rows per chunk), beside the legacy v1
    decoders on the same symbols;
  * layers: latency of y = x W^T per shape and batch for bf16 F.linear (cuBLAS), pycodec rate 3.5
    (fused GEMV up to batch 16, the tile kernel to 128) and, above 16, the same weight through
    decode + Triton matmul (the route the tile kernel replaced: which is faster decides the
    dispatch), lossless (fused GEMV up to batch 16, decode + matmul above), lossless with
    exact_outputs (decode + split merge + cuBLAS), both again in the byte split and in fixed12, DFloat11
    (bench/dfloat11_peer.py: decode to a buffer + cuBLAS, as its forward hook does) and the
    int4-g128 peers that run (torchao's tinygemm layout, gemlite); kernel time under CUDA
    graphs (triton.testing.do_bench_cudagraph) and module time in eager mode (do_bench); the batch at
    which each method stops beating bf16;
  * lossless decode: GB/s of bf16 weights rebuilt, pycodec (smallest and byte split, fixed12) beside
    DFloat11, on a 4096 x 14336 layer and a Llama-7B-shaped block, each checked bit-exact;
  * --e2e (or --only): compiled, module time under torch.compile(mode="reduce-overhead") on a
    4096 x 4096 layer at batch 1; end_to_end, tokens/s and peak memory of a ~1.1B-parameter Llama
    with random weights (speed does not depend on the values) at batch 1 and 8: bf16, pycodec
    lossless (smallest and byte split, fixed12), pycodec rate 3.5 (median of three generate runs).
Layers and decodes are also timed with other pycodec GPU kernel settings (x global, unstaged:
shared-memory staging off; 16 warps a block instead of 4): the same bits, side by side.
Nothing asserts on time. Without a CUDA device it exits with status 2.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/: dfloat11_peer
os.environ.setdefault("HF_HUB_OFFLINE", "1")

LLAMA_SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096)]  # (out, in)
SMOLLM2_SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536)]
BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
HBM_PEAK_GBS = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0}
RATE_C = 0.45  # step = c * robust row sigma: about 3.5 coded bits per weight on Gaussian-like rows


def environment() -> dict:
    props = torch.cuda.get_device_properties(0)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        driver = "unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        commit = "unknown"
    import triton

    return {"device": props.name, "sm_count": props.multi_processor_count, "memory_gib": props.total_memory / 2**30,
            "driver": driver, "torch": torch.__version__, "triton": triton.__version__, "commit": commit,
            "host": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def hbm_peak(name: str) -> float | None:
    return next((v for k, v in HBM_PEAK_GBS.items() if k in name), None)


def eager_ms(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=10, rep=40, return_mode="median"))  # short: one GPU lease runs ~600 rows


def graph_ms(fn) -> float | None:
    from triton.testing import do_bench_cudagraph

    try:
        return float(do_bench_cudagraph(fn, rep=40, return_mode="median"))
    except Exception:  # a path that cannot be captured (reported as None, not hidden)
        return None


# ---------------------------------------------------------------------------- layers

def rate_layer(dense: torch.nn.Linear, lanes: int | None = None, rows: int | None = None):
    """A rate-mode CompressedLinear at a fixed step (no bit-budget bisection: fast to build)."""
    from pycodec import CompressedLinear
    from pycodec.quant import _rate_quantize, pack_affine

    w = dense.weight.detach().float().cpu()
    q, step, idx = _rate_quantize(w, RATE_C)  # idx: the escapes' flat indices
    chunk = rows * w.shape[1] if rows else None
    stream = None
    if lanes or rows:
        import pycodec
        from pycodec.quant import _bytes_tensor

        stream = _bytes_tensor(pycodec.encode(q.numpy(), chunk_symbols=chunk, lanes=lanes))
    packed = pack_affine(q, step, torch.full((1, 1), 128.0, dtype=torch.float16), w.shape[1], torch.bfloat16, idx,
                         w.reshape(-1)[idx].clone(), coder="huffman", stream=stream)  # v2: the fused kernels
    return CompressedLinear(w.shape[1], w.shape[0], packed).cuda()


class WithoutTileKernel(torch.nn.Module):
    """A compressed layer whose batches above 16 go through decode + Triton matmul (gpu.TILE_BATCHES off)."""

    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from pycodec import gpu

        saved, gpu.TILE_BATCHES = gpu.TILE_BATCHES, range(0)
        try:
            return self.layer(x)
        finally:
            gpu.TILE_BATCHES = saved


def with_settings(settings: dict, fn):
    """fn run under pycodec's GPU kernel settings ({"gemv_x_shared_bytes": 0, ...}:
    cuda_ops.kernel_settings)."""
    from pycodec import cuda_ops

    def run(*args):
        with cuda_ops.kernel_settings(**settings):
            return fn(*args)

    return run


class WithSettings(torch.nn.Module):
    """A compressed layer run with other GPU kernel settings, for side-by-side timings: the same bits
    (split_gemv_staged: the other lossless GEMV, whose sums differ in order)."""

    def __init__(self, layer: torch.nn.Module, **settings):
        super().__init__()
        self.layer = layer
        self.run = with_settings(settings, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)


# Setting variants of the fused GEMVs, timed at these batches: x from global memory instead of a
# shared copy (a 4096-wide x fits 64 KiB up to batch 4), and blocks of 16 warps instead of 4.
SETTING_VARIANTS = {"x global": ({"gemv_x_shared_bytes": 0}, (1, 4)), "16 warps": ({"warps_per_block": 16}, (1, 4))}
# Lossless only: the fused GEMV beside the staged one (the default), at the GEMVs' batches.
LOSSLESS_VARIANTS = {"fused GEMV": ({"split_gemv_staged": 0}, (1, 16))}
# The byte split's layers at fewer batches (the layers section is the one a time limit cuts): its
# GEMV where it may beat bf16, its exact route (decode + cuBLAS) at a few; fixed12's exact route too.
FEWER_BATCHES = {"pycodec lossless byte": (1, 2, 4, 8, 16, 32), "pycodec lossless byte exact": (1, 16, 64),
                 "pycodec lossless fixed12 exact": (1, 16, 64)}
DEVICE = "cuda"  # the settings and layers sections' activations; tests/test_bench_harness.py runs them on the CPU


def counted(build, *args):
    """build(*args), a layer whose kernel tables carry no lane starts (cuda_ops.LANE_STARTS off):
    its kernels find every lane's range with the count pass, the route before lane starts."""
    from pycodec import cuda_ops

    saved, cuda_ops.LANE_STARTS = cuda_ops.LANE_STARTS, False
    try:
        return build(*args)
    finally:
        cuda_ops.LANE_STARTS = saved


def lossless_layer(dense: torch.nn.Linear, exact: bool = False, split: str = "smallest"):
    """split "byte": the byte split (CompressionConfig.lossless_split), the kernels' byte instances."""
    from pycodec import CompressedLinear, CompressionConfig

    return CompressedLinear.from_linear(
        dense, CompressionConfig(mode="lossless", exact_outputs=exact, lossless_split=split)).cuda()


def dfloat11_peer():
    """bench/dfloat11_peer.py when dfloat11 and CuPy import here, else why not (a string)."""
    try:
        import cupy  # noqa: F401  (its decoder runs through CuPy)

        import dfloat11_peer

        dfloat11_peer.package_dir()
        return dfloat11_peer
    except Exception as e:
        return f"unavailable: {type(e).__name__}: {e}"


def random_linear(out_f: int, in_f: int) -> torch.nn.Linear:
    """The layer every section measures at a shape: bf16, no bias, weights N(0, 0.02^2), seed 0."""
    torch.manual_seed(0)
    dense = torch.nn.Linear(in_f, out_f, bias=False, dtype=torch.bfloat16)
    torch.nn.init.normal_(dense.weight, std=0.02)
    return dense


def dense_linear(weight: torch.Tensor) -> torch.nn.Linear:
    out_f, in_f = weight.shape
    dense = torch.nn.Linear(in_f, out_f, bias=False, dtype=torch.bfloat16)
    with torch.no_grad():
        dense.weight.copy_(weight)
    return dense


def rtn_int4_g128(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric round-to-nearest int4 in groups of 128 along K: (q uint8 [N, K], scale, zero [N, K/128]),
    w ~ (q - zero) * scale."""
    w = weight.detach().float()
    n, k = w.shape
    g = w.reshape(n, k // 128, 128)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15).clamp_min(1e-8)
    zero = (-lo / scale).round().clamp(0, 15)
    q = (g / scale[..., None] + zero[..., None]).round().clamp(0, 15).to(torch.uint8).reshape(n, k)
    return q, scale, zero


def int4_peers() -> dict:
    """Fused int4-g128 GEMMs beside which rate mode is measured. torchao's default int4 layout
    needs fbgemm's kernels, which the GPU machine lacks: its tinygemm layout runs on torch's own
    _weight_int4pack_mm. gemlite 0.6 names its int4 layer A16W4_HQQ_INT and takes quantized weights."""
    peers = {}
    try:
        from torchao.quantization import Int4WeightOnlyConfig, quantize_

        def torchao_int4(linear):
            quantize_(linear, Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d"))
            return linear

        peers["torchao int4-g128"] = torchao_int4
    except Exception as e:  # not installed on the device machine, or API drift
        peers["torchao int4-g128"] = f"unavailable: {type(e).__name__}: {e}"
    try:
        from gemlite.helper import A16W4_HQQ_INT

        def gemlite_int4(linear):
            q, scale, zero = rtn_int4_g128(linear.weight)
            return A16W4_HQQ_INT(device="cuda", dtype=torch.bfloat16).from_weights(q.cuda(), scale.cuda(), zero.cuda())

        peers["gemlite int4-g128"] = gemlite_int4
    except Exception as e:
        peers["gemlite int4-g128"] = f"unavailable: {type(e).__name__}: {e}"
    return peers


def layer_variants(dense: torch.nn.Linear, wanted, df11, peers: dict) -> tuple[dict, object]:
    """{label: (module, weight bytes)} of the methods `wanted(label)` keeps, built from `dense`
    (only those: a compressed layer takes seconds to build on the largest shapes), and df11, or why
    DFloat11 failed to build. peers' entries become strings where a peer failed."""
    in_f, out_f = dense.in_features, dense.out_features
    variants = {"bf16 cuBLAS": (copy.deepcopy(dense).cuda(), 2 * in_f * out_f)}

    def add(label, build, *also):
        """variants[label] = build(), and each (suffix, wrap) of `also` over the same layer."""
        labels = [label] + [f"{label} {suffix}" for suffix, _ in also]
        if not any(wanted(lb) for lb in labels):
            return
        m = build()
        if wanted(label):
            variants[label] = (m, m.compressed_bytes())
        for suffix, wrap in also:
            if wanted(f"{label} {suffix}"):
                variants[f"{label} {suffix}"] = (wrap(m), m.compressed_bytes())

    def settings_of(table):
        return [(suffix, lambda m, s=settings: WithSettings(m, **s)) for suffix, (settings, _) in table.items()]

    add("pycodec rate 3.5", lambda: rate_layer(dense), ("decoded", WithoutTileKernel), *settings_of(SETTING_VARIANTS))
    add("pycodec lossless", lambda: lossless_layer(dense), *settings_of({**SETTING_VARIANTS, **LOSSLESS_VARIANTS}))
    add("pycodec lossless exact", lambda: lossless_layer(dense, exact=True))
    add("pycodec lossless byte", lambda: lossless_layer(dense, split="byte"))
    add("pycodec lossless byte exact", lambda: lossless_layer(dense, exact=True, split="byte"))
    add("pycodec lossless fixed12", lambda: lossless_layer(dense, split="fixed12"))
    add("pycodec lossless fixed12 exact", lambda: lossless_layer(dense, exact=True, split="fixed12"))
    if not isinstance(df11, str) and wanted("DFloat11"):
        try:
            m = df11.DF11Linear(dense)
            variants["DFloat11"] = (m, m.compressed_bytes())
        except Exception as e:
            df11 = f"failed: {type(e).__name__}: {e}"
    for label, make in peers.items():
        if callable(make) and wanted(label):
            try:
                variants[label] = (make(copy.deepcopy(dense).cuda()), in_f * out_f // 2 + 4 * in_f * out_f // 128)
            except Exception as e:
                peers[label] = f"unavailable: {type(e).__name__}: {e}"
                print(f"peer {label}: {peers[label]}", flush=True)
    return variants, df11


def announced_peers() -> tuple[dict, object]:
    """(int4 peers, DFloat11 or why not), each unavailable one said at once: an interrupted run never
    reaches the summary row."""
    peers = int4_peers()
    df11 = dfloat11_peer()
    for label, why in list(peers.items()) + [("DFloat11", df11)]:
        if isinstance(why, str):
            print(f"peer {label}: {why}", flush=True)
    return peers, df11


def peers_row(peers: dict, df11) -> dict:
    return {"peers": {**{k: (v if isinstance(v, str) else "measured") for k, v in peers.items()},
                      "DFloat11": df11 if isinstance(df11, str) else "measured"}}


def measure_batch(variants: dict, shape, batch: int, peak, rows: list) -> None:
    """One row per variant at this batch (those timed at it): graph and eager time, error against bf16."""
    out_f, in_f = shape
    x = torch.randn(batch, in_f, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        ref = variants["bf16 cuBLAS"][0](x).float()
        base = None
        for label, (mod, weight_bytes) in variants.items():
            if label.endswith("decoded") and batch <= 16:  # the same fused GEMV below 17
                continue
            if any(label.endswith(suffix) and batch not in at
                   for suffix, (_, at) in {**SETTING_VARIANTS, **LOSSLESS_VARIANTS}.items()):
                continue
            if batch not in FEWER_BATCHES.get(label, (batch,)):
                continue
            try:
                y = mod(x).float()
                err = float((y - ref).norm() / ref.norm())
                ms, gms = eager_ms(lambda: mod(x)), graph_ms(lambda: mod(x))
            except Exception as e:
                rows.append({"shape": [out_f, in_f], "batch": batch, "method": label,
                             "error": f"{type(e).__name__}: {e}"})
                continue
            t = gms if gms is not None else ms
            base = t if label == "bf16 cuBLAS" else base
            gbs = (weight_bytes + 2 * batch * (in_f + out_f)) / t / 1e6
            rows.append({"shape": [out_f, in_f], "batch": batch, "method": label, "eager_ms": ms,
                         "graph_ms": gms, "weight_bytes": weight_bytes,
                         "bits_per_weight": 8 * weight_bytes / (in_f * out_f), "GBps": gbs,
                         "pct_hbm": 100 * gbs / peak if peak else None,
                         "speedup_vs_bf16": base / t if base else None, "rel_err_vs_bf16": err})
            print(f"{out_f:6d}x{in_f:<6d} b={batch:<4d} {label:24s} graph {1e3 * (gms or math.nan):8.1f} us "
                  f"eager {1e3 * ms:8.1f} us  {gbs:7.0f} GB/s  x{(base / t if base else 0):.2f}  "
                  f"err {err:.1e}", flush=True)


def layer_suite(shapes, batches, peak, rows: list | None = None, methods=None) -> list[dict]:
    """Rows are appended to `rows` as they are measured (an interrupted run keeps them). methods: the
    labels to measure (bf16 cuBLAS always), default all."""
    rows = [] if rows is None else rows
    wanted = (lambda label: True) if methods is None else (lambda label: label in methods)
    peers, df11 = announced_peers()
    for shape in shapes:
        variants, df11 = layer_variants(random_linear(*shape), wanted, df11, peers)
        for batch in batches:
            measure_batch(variants, shape, batch, peak, rows)
    rows.append(peers_row(peers, df11))
    return rows


# The target rows: each method at its default route, beside bf16 and the peers.
TARGET_METHODS = ("pycodec lossless", "pycodec lossless fixed12", "pycodec rate 3.5", "DFloat11",
                  "torchao int4-g128", "gemlite int4-g128")


def targets_suite(peak, rows: list | None = None, shapes=None, batches=None) -> list[dict]:
    """The target rows first, for a short lease: every shape at batch 1, then the larger batches
    (where each method stops beating bf16), the layers built once. Rows as the layers section's."""
    rows = [] if rows is None else rows
    shapes = LLAMA_SHAPES + SMOLLM2_SHAPES[:2] if shapes is None else shapes
    batches = BATCHES if batches is None else batches
    peers, df11 = announced_peers()
    built = []
    for shape in shapes:
        variants, df11 = layer_variants(random_linear(*shape), lambda label: label in TARGET_METHODS, df11, peers)
        built.append((shape, variants))
        measure_batch(variants, shape, batches[0], peak, rows)
    for batch in batches[1:]:
        for shape, variants in built:
            measure_batch(variants, shape, batch, peak, rows)
    rows.append(peers_row(peers, df11))
    return rows




def settings_suite(rows: list | None = None, shapes=((4096, 4096), (14336, 4096)), batches=(1, 4)) -> list[dict]:
    """The kernel settings side by side, first and fast (a lease that ends early still has them):
    the fused GEMVs at batch 1 and 4 under x shared / global x 4, 8, 16 warps and with the stream
    read in place (stream_shared=0), beside bf16; lossless through the staged GEMV (the default) and
    the fused one (split_gemv_staged=0), and in the byte split (its staged GEMV's byte instance);
    each also without lane starts ("counted", default settings)."""
    rows = [] if rows is None else rows
    base = {"gemv_x_shared_bytes": 64 * 1024, "warps_per_block": 4, "stream_shared": 1, "stage_word_stores": 1,
            "affine_gemv_staged": 1}
    combos = [{**base, "gemv_x_shared_bytes": x, "warps_per_block": w} for x in (64 * 1024, 0) for w in (4, 8, 16)]
    combos += [{**base, "stream_shared": 0}, {**base, "stage_word_stores": 0}, {**base, "affine_gemv_staged": 0}]
    for out_f, in_f in shapes:
        dense = random_linear(out_f, in_f)
        bf16 = copy.deepcopy(dense).cuda()
        lossless = lossless_layer(dense)
        lossless_counted = counted(lossless_layer, dense)
        layers = {"rate 3.5": (rate_layer(dense), {}), "rate 3.5 counted": (counted(rate_layer, dense), {}),
                  "lossless": (lossless, {"split_gemv_staged": 1}),
                  "lossless counted": (lossless_counted, {"split_gemv_staged": 1}),
                  "lossless fused": (lossless, {"split_gemv_staged": 0}),
                  "lossless fused counted": (lossless_counted, {"split_gemv_staged": 0}),
                  "lossless byte": (lossless_layer(dense, split="byte"), {"split_gemv_staged": 1}),
                  "lossless fixed12": (lossless_layer(dense, split="fixed12"), {"fixed12_tensor_cores": 1}),
                  "lossless fixed12 cuda cores": (lossless_layer(dense, split="fixed12"), {"fixed12_tensor_cores": 0})}
        for batch in batches:
            x = torch.randn(batch, in_f, device=DEVICE, dtype=torch.bfloat16)
            with torch.no_grad():
                base = graph_ms(lambda: bf16(x))
                refs = {}  # per layer without " counted": every variant of it must give the same bits
                for label, (layer, route) in layers.items():
                    # counted layers beside the default settings only: the lane starts' gain, not a sweep;
                    # fixed12's kernel reads none of the settings
                    for settings in combos[:1] if label.endswith(("counted", "fixed12", "cuda cores")) else combos:
                        run = with_settings({**settings, **route}, layer)
                        y = run(x)
                        # the rate GEMV's two routes add in different orders: each its own reference
                        rate_route = settings["affine_gemv_staged"] if label.startswith("rate") else 1
                        ref = refs.setdefault((label.removesuffix(" counted"), rate_route), y)
                        ms = graph_ms(lambda: run(x))
                        rows.append({"shape": [out_f, in_f], "batch": batch, "method": f"pycodec {label}", **settings,
                                     "graph_ms": ms, "bf16_graph_ms": base, "same_bits": bool(torch.equal(y, ref)),
                                     "speedup_vs_bf16": base / ms if base and ms else None})
                        print(f"settings {out_f}x{in_f} b={batch} {label:22s} stream_shared {settings['stream_shared']} "
                              f"word_stores {settings['stage_word_stores']} "
                              f"affine_staged {settings['affine_gemv_staged']} "
                              f"x_shared {settings['gemv_x_shared_bytes']:6d} "
                              f"warps {settings['warps_per_block']:2d}: {1e3 * (ms or math.nan):8.1f} us "
                              f"(bf16 {1e3 * (base or math.nan):.1f})", flush=True)
    return rows


def crossover(rows: list[dict]) -> dict:
    """Per shape and method: the largest batch at which it is faster than bf16, in graph time."""
    out = {}
    for r in rows:
        if "speedup_vs_bf16" not in r or r["method"] == "bf16 cuBLAS":
            continue
        key = f"{r['shape'][0]}x{r['shape'][1]} {r['method']}"
        if r["speedup_vs_bf16"] and r["speedup_vs_bf16"] > 1.0:
            out[key] = max(out.get(key, 0), r["batch"])
        else:
            out.setdefault(key, 0)
    return out


# ---------------------------------------------------------------------------- decode

def decode_suite(peak, quick: bool, rows: list | None = None) -> list[dict]:
    import pycodec
    from pycodec import _C, cuda_ops
    from pycodec.quant import _rate_quantize

    torch.manual_seed(1)
    w = torch.randn(4096 if quick else 14336, 4096) * 0.02
    q = _rate_quantize(w, RATE_C)[0].numpy()
    bits = w.to(torch.bfloat16).view(torch.int16).numpy().view("uint16")
    lossless = __import__("numpy").frombuffer(_C.split_float(bits, 16)[2], "uint8").reshape(w.shape)
    rows = [] if rows is None else rows
    for data_label, sym in (("rate 3.5 symbols", q), ("lossless symbols", lossless)):
        variants = [("v2 default", dict()), ("v2 default, counted", dict()), ("v2 default, unstaged", dict()),
                    ("v2 default, 16 warps", dict()),
                    ("v2 16 lanes", dict(lanes=16)), ("v2 8 lanes", dict(lanes=8)),
                    ("v2 2 rows/chunk", dict(chunk_symbols=2 * sym.shape[1])),
                    ("v1 huffman (legacy)", "v1h"), ("v1 rans (legacy)", "v1r")]
        for label, kw in variants:
            # unstaged: chunks written byte by byte to global memory, not through shared memory
            settings = ({"decode_stage_symbols": 0} if label.endswith("unstaged") else
                        {"warps_per_block": 16} if label.endswith("16 warps") else {})
            if kw == "v1h":
                blob = _C.encode(sym, list(sym.shape), "huffman", 0, 0, 0, 1)
            elif kw == "v1r":
                blob = pycodec.encode(sym, coder="rans")
            else:
                blob = pycodec.encode(sym, **kw)
            info = _C.info(blob)
            s = cuda_ops.stream_layout(blob)
            dev = cuda_ops.with_slack(torch.frombuffer(bytearray(blob), dtype=torch.uint8).cuda())
            # lane starts as a module's tables carry them (counted: the count pass finds the ranges)
            starts = _C.lane_starts(blob) if s.version == 2 and not label.endswith("counted") else None
            table = cuda_ops.kernel_tables(blob, lane_starts=starts)["table"].cuda()
            if s.version == 2:
                run = with_settings(settings, lambda: cuda_ops.windowed_decode(dev, table, s.ints))
            else:
                index, payload = cuda_ops.v1_views(dev, s.ints)

                def run():
                    return cuda_ops.decode_symbols(index, payload, table[:4096], cuda_ops.CODER_IDS[s.coder],
                                                   s.n_symbols, s.chunk_symbols)
            exact = bool((run().cpu().numpy() == sym.reshape(-1)).all())
            ms = graph_ms(run) or eager_ms(run)
            gbs = sym.size / ms / 1e6
            rows.append({"data": data_label, "layout": label, "chunk_symbols": info["chunk_symbols"],
                         "lanes": info["lanes"], "n_chunks": info["n_chunks"], "bits_per_symbol": 8 * len(blob) / sym.size,
                         "ms": ms, "decoded_GBps": gbs, "pct_hbm_of_coded_bytes": 100 * len(blob) / ms / 1e6 / peak
                         if peak else None, "bit_exact": exact})
            print(f"decode {data_label:17s} {label:20s} {info['n_chunks']:6d} chunks x {info['lanes']:2d} lanes: "
                  f"{gbs:8.1f} GB/s of symbols  exact={exact}", flush=True)
    return rows


LLAMA7B_BLOCK = [(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096, 11008)]  # q k v o, gate up, down


def lossless_weight_fn(layer, two_kernels: bool = False):
    """The bf16 weight of a lossless CompressedLinear rebuilt on the GPU, as its forward does
    with exact_outputs (gpu.dense_weight: windowed_decode_split, one kernel); two_kernels: the
    route before it, windowed_decode then split_merge, for the side-by-side rows."""
    from pycodec import cuda_ops, gpu

    packed, kernel, info = layer.packed(), dict(zip(gpu.KERNEL_BUFFERS, layer.kernel())), layer._info
    if two_kernels:
        def rebuild():
            q = cuda_ops.windowed_decode(packed["symbols"], kernel["table"], list(info.layout))
            return cuda_ops.split_merge(q, kernel["value16"], packed["raw"], info.top).view(info.dtype)
        return rebuild
    return lambda: gpu.dense_weight(packed, kernel, info, torch.device("cuda"))


def lossless_decode_suite(peak, rows: list | None = None, quick: bool = False) -> list[dict]:
    """Standalone lossless decode to bf16, GB/s of decoded weights: pycodec (one stream a matrix;
    the split decode in one kernel, and the two-kernel decode + merge before it) beside DFloat11
    (one stream for all, as it compresses a block), on one 4096 x 14336 layer and on a
    Llama-7B-shaped block; bit-exactness checked on each. quick: the default layouts' decodes and
    DFloat11 alone (the target rows)."""
    df11 = dfloat11_peer()
    rows = [] if rows is None else rows
    for subject, shapes in (("4096x14336 layer", [(4096, 14336)]), ("Llama-7B block", LLAMA7B_BLOCK)):
        torch.manual_seed(2)
        weights = [(torch.randn(o, i) * 0.02).to(torch.bfloat16) for o, i in shapes]
        n = sum(w.numel() for w in weights)
        flat = torch.cat([w.reshape(-1) for w in weights]).view(torch.int16)
        layers = [lossless_layer(dense_linear(w)) for w in weights]
        byte_layers = [] if quick else [lossless_layer(dense_linear(w), split="byte") for w in weights]
        fixed_layers = [lossless_layer(dense_linear(w), split="fixed12") for w in weights]
        rebuild = [lossless_weight_fn(m) for m in layers]
        two = [lossless_weight_fn(m, two_kernels=True) for m in layers]

        def rebuilt(fns, settings=None, of=layers):
            """(run, the flat result, coded bytes) of rebuilding every layer with fns, under settings."""
            return (with_settings(settings or {}, lambda: [f() for f in fns]),
                    with_settings(settings or {}, lambda: torch.cat([f().reshape(-1).cpu() for f in fns])),
                    sum(m.compressed_bytes() for m in of))

        # 16 warps: one table copy for up to 16 chunks (long rows' stages leave room for few blocks an SM)
        methods = {"pycodec lossless": rebuilt(rebuild),
                   "pycodec lossless fixed12": rebuilt([lossless_weight_fn(m) for m in fixed_layers], of=fixed_layers)}
        if not quick:
            methods.update({
                "pycodec lossless, 16 warps": rebuilt(rebuild, {"warps_per_block": 16}),
                "pycodec lossless byte": rebuilt([lossless_weight_fn(m) for m in byte_layers], of=byte_layers),
                "pycodec lossless byte, byte stores": rebuilt([lossless_weight_fn(m) for m in byte_layers],
                                                              {"stage_word_stores": 0}, of=byte_layers),
                "pycodec lossless, byte stores": rebuilt(rebuild, {"stage_word_stores": 0}),
                "pycodec decode + merge": rebuilt(two),
                "pycodec decode + merge, unstaged": rebuilt(two, {"decode_stage_symbols": 0})})
        if isinstance(df11, str):
            rows.append({"subject": subject, "method": "DFloat11", "error": df11})
        else:
            try:
                stream = df11.encode(flat.view(torch.bfloat16).cuda())
                out = torch.empty(n, dtype=torch.bfloat16, device="cuda")
                methods["DFloat11"] = (lambda: df11.decode(stream, out), lambda: df11.decode(stream, out).cpu(),
                                       stream.nbytes())
            except Exception as e:
                rows.append({"subject": subject, "method": "DFloat11", "error": f"{type(e).__name__}: {e}"})
        for method, (run, result, nbytes) in methods.items():
            try:
                exact = bool(torch.equal(result().view(torch.int16).reshape(-1), flat))
                ms = graph_ms(run) or eager_ms(run)
            except Exception as e:
                rows.append({"subject": subject, "method": method, "error": f"{type(e).__name__}: {e}"})
                continue
            gbs = 2 * n / ms / 1e6
            moved_pct = 100 * (2 * n + nbytes) / ms / 1e6 / peak if peak else None
            rows.append({"subject": subject, "method": method, "weights": n, "bits_per_weight": 8 * nbytes / n,
                         "ms": ms, "decoded_GBps": gbs, "pct_hbm_of_bytes_moved": moved_pct, "bit_exact": exact})
            print(f"lossless decode {subject:17s} {method:32s} {8 * nbytes / n:6.2f} b/w {ms * 1e3:9.1f} us "
                  f"{gbs:8.1f} GB/s of bf16  exact={exact}", flush=True)
        del layers, byte_layers, fixed_layers, rebuild, two, methods
        torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------------------- compiled modules

def compiled_suite(rows: list | None = None, shape=(4096, 4096), batches=(1,)) -> list[dict]:
    """Module time under torch.compile(mode="reduce-overhead") (CUDA graphs made by inductor),
    bf16 beside pycodec rate 3.5 and lossless: what a compiled model pays per layer."""
    rows = [] if rows is None else rows
    out_f, in_f = shape
    dense = random_linear(out_f, in_f)
    modules = {"bf16 cuBLAS": copy.deepcopy(dense).cuda(), "pycodec rate 3.5": rate_layer(dense),
               "pycodec lossless": lossless_layer(dense), "pycodec lossless byte": lossless_layer(dense, split="byte"),
               "pycodec lossless fixed12": lossless_layer(dense, split="fixed12")}
    for batch in batches:
        x = torch.randn(batch, in_f, device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            ref = modules["bf16 cuBLAS"](x).float()
            base = None
            for label, mod in modules.items():
                try:
                    fn = torch.compile(mod, mode="reduce-overhead")
                    t0 = time.perf_counter()
                    for _ in range(3):  # compile, then the graphs' recording runs
                        y = fn(x).float()
                    compile_s = time.perf_counter() - t0
                    ms = eager_ms(lambda: fn(x))
                except Exception as e:
                    rows.append({"shape": list(shape), "batch": batch, "method": label, "error": f"{type(e).__name__}: {e}"})
                    print(f"compiled {label}: {type(e).__name__}: {e}", flush=True)
                    continue
                base = ms if label == "bf16 cuBLAS" else base
                rows.append({"shape": list(shape), "batch": batch, "method": label, "compiled_ms": ms,
                             "compile_s": compile_s, "speedup_vs_bf16": base / ms if base else None,
                             "rel_err_vs_bf16": float((y - ref).norm() / ref.norm())})
                print(f"compiled {out_f}x{in_f} b={batch:<3d} {label:18s} {1e3 * ms:8.1f} us  "
                      f"x{(base / ms if base else 0):.2f}  (compiled in {compile_s:.0f} s)", flush=True)
    return rows


# ---------------------------------------------------------------------------- end to end

E2E_REPEATS = 3


def end_to_end(tokens: int, batches=(1, 8), rows: list | None = None, quick: bool = False) -> list[dict]:
    """Tokens/s and peak memory generating from a ~1.1B Llama with random weights (speed does not
    depend on the values), bf16 beside pycodec lossless and rate 3.5, at each batch. quick: without
    the byte split (the target rows)."""
    import transformers

    from pycodec import CompressionConfig, compress_

    cfg = transformers.LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
                                   num_attention_heads=16, num_key_value_heads=4, vocab_size=32000)
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    rows = [] if rows is None else rows
    configs = (("bf16", None), ("pycodec lossless", CompressionConfig(mode="lossless")),
               ("pycodec lossless byte", CompressionConfig(mode="lossless", lossless_split="byte")),
               ("pycodec lossless fixed12", CompressionConfig(mode="lossless", lossless_split="fixed12")),
               ("pycodec rate 3.5", CompressionConfig(mode="rate", bits=3.5)))
    for label, c in configs:
        if quick and label == "pycodec lossless byte":
            continue
        m = copy.deepcopy(base)
        t0 = time.perf_counter()
        if c is not None:
            compress_(m, c, progress=False)
        compress_s = time.perf_counter() - t0
        m = m.cuda()
        for batch in batches:
            ids = torch.randint(0, 32000, (batch, 16), device="cuda")
            torch.cuda.reset_peak_memory_stats()
            times = []
            with torch.no_grad():
                m.generate(ids, max_new_tokens=4, do_sample=False)
                for _ in range(E2E_REPEATS):  # the median: one run of an eager generate is noisy
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    m.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - t0)
            dt = sorted(times)[len(times) // 2]
            rows.append({"method": label, "batch": batch, "tokens_per_s": batch * tokens / dt,
                         "ms_per_step": 1e3 * dt / tokens, "runs_s": times, "peak_mem_MiB": torch.cuda.max_memory_allocated() / 2**20,
                         "compress_s": compress_s})
            print(f"e2e {label:22s} batch {batch:2d} {batch * tokens / dt:8.1f} tok/s  "
                  f"{1e3 * dt / tokens:6.2f} ms/step  "
                  f"peak {rows[-1]['peak_mem_MiB']:.0f} MiB", flush=True)
        del m
        torch.cuda.empty_cache()
    return rows


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["layers"] if r.get("speedup_vs_bf16")]
    shapes = sorted({tuple(r["shape"]) for r in rows})
    fig, axes = plt.subplots(1, len(shapes), figsize=(4 * len(shapes), 3.5), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        for method in sorted({r["method"] for r in rows}):
            pts = sorted((r["batch"], r["speedup_vs_bf16"]) for r in rows
                         if tuple(r["shape"]) == shape and r["method"] == method)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=method)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{shape[0]}x{shape[1]}")
        ax.set_xlabel("batch")
        ax.axhline(1.0, color="grey", lw=0.5)
    axes[0][0].set_ylabel("speedup over bf16 cuBLAS (CUDA graphs)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(result["environment"]["device"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)


SECTIONS = ("targets", "settings", "decode", "lossless_decode", "layers", "compiled", "end_to_end")
SLOW_SECTIONS = ("compiled", "end_to_end")  # run with --e2e or --only


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", os.path.join(os.path.dirname(__file__), "results")))
    p.add_argument("--quick", action="store_true",
                   help="fewer shapes, batches and methods (lossless_decode and end_to_end: the target rows)")
    p.add_argument("--e2e", action="store_true",
                   help="also torch.compile'd layers and tokens/s of a random ~1.1B Llama (compiled, end_to_end)")
    p.add_argument("--only", default=None, help=f"comma-separated sections to run, of {', '.join(SECTIONS)}")
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_suite: no CUDA device; nothing measured", file=sys.stderr)
        return 2
    wanted = a.only.split(",") if a.only else [s for s in SECTIONS if s not in SLOW_SECTIONS or a.e2e]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        print(f"gpu_suite: unknown sections {unknown}; sections are {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    env = environment()
    peak = hbm_peak(env["device"])
    shapes = (LLAMA_SHAPES[:1] + SMOLLM2_SHAPES[:1]) if a.quick else LLAMA_SHAPES + SMOLLM2_SHAPES
    batches = [1, 8, 16, 64] if a.quick else BATCHES
    result = {"environment": env, "hbm_peak_GBps": peak, "sections": wanted}
    os.makedirs(a.out, exist_ok=True)
    stem = f"gpu_{env['device'].replace(' ', '_')}_{time.strftime('%Y%m%d_%H%M%S')}"

    def save() -> None:  # after every section, and when interrupted: a time limit keeps what was measured
        with open(os.path.join(a.out, stem + ".json"), "w") as f:
            json.dump(result, f, indent=2, default=str)

    run = {"targets": lambda rows: targets_suite(peak, rows),
           "settings": lambda rows: settings_suite(rows),
           "decode": lambda rows: decode_suite(peak, a.quick, rows),
           "lossless_decode": lambda rows: lossless_decode_suite(peak, rows, quick=a.quick),
           "layers": lambda rows: layer_suite(shapes, batches, peak, rows),
           "compiled": lambda rows: compiled_suite(rows),
           "end_to_end": lambda rows: end_to_end(32 if a.quick else 64, rows=rows, quick=a.quick)}
    for section in wanted:
        result[section] = []
        try:
            run[section](result[section])
        except KeyboardInterrupt:  # timeout(1) sends SIGINT first
            result["interrupted_in"] = section
            save()
            print(f"gpu_suite: interrupted in {section}; wrote {stem}.json with what was measured", file=sys.stderr)
            return 124
        except Exception as e:  # one broken section must not cost a short lease the others
            traceback.print_exc()
            result.setdefault("errors", {})[section] = repr(e)
        if section == "layers":
            result["faster_than_bf16_up_to_batch"] = crossover(result["layers"])
        if section == "targets":
            result["targets_faster_than_bf16_up_to_batch"] = crossover(result["targets"])
        save()
    if result.get("layers"):
        plot(result, os.path.join(a.out, stem + ".png"))
    print(f"wrote {stem}.json{' and .png' if result.get('layers') else ''} to {a.out}")
    return 1 if result.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
