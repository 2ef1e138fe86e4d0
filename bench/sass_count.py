"""Lane-instructions per decoded symbol in the GPU kernels' inner loops, read from their SASS.

    python bench/sass_count.py [--arch sm_90] [--json bench/results/sass_sm90.json] [--smollm2]

No GPU needed: nvcc compiles csrc/cuda/*.cu to a cubin, cuobjdump (with nvdisasm; Triton's
package carries both) dumps its SASS, and the script finds each kernel's loops (backward
branches) and counts their instructions. Predicated instructions count in full: a warp issues
them whether or not a lane's predicate is set.

The inner loops of a fused v2 GEMV (csrc/codec/windowed.h, windowed_gemv.h):
  count  pass 1, two count-table lookups per iteration, each worth `codes per count lookup`
  gemv   pass 2, two value entries per iteration, each worth `symbols per entry` multiply-adds
Per symbol = count / (2 * codes per count lookup) + gemv / (2 * symbols per entry), with the
lookup yields measured on real weights (all-MiniLM-L6-v2; SmolLM2-135M with --smollm2): the
sequence of code lengths of each tensor, packed into 12-bit windows the way the tables do.
The tile kernel (windowed_tile.h, batch 17..128): its phase-1 loop decodes two multi-symbol entries
into shared memory per iteration (as the decode kernel's loop, to global memory), its phase-2 loop
converts one 16 x 16 A fragment and issues one MMA per batch tile of 8 (up to 4 per warp): per
weight, loop * 32 lanes / 256 weights, times the warps that share a row tile's k-range
(ceil(batch tiles / 4)).
The staged lossless GEMV (staged_gemv_kernel with SplitArgs): the count pass, the decode pass into shared
memory, then its dot loop, 8 columns a lane per iteration ("staged" rows; "GEMV pass" = decode +
dot). The staged rate GEMV (staged_gemv_kernel with AffineArgs, batch 1: "rate ..., staged"
rows) likewise, its dot loop a byte permute and an exact subtraction a weight. Staged decode loops
store a word at a time (windowed.h: WordRunSink, the default), or each entry's bytes
(_C.stage_word_stores(0)): the figures in brackets. The lossless split decode
(windowed_decode_split): the count pass, the decode pass into shared
memory (two multi-symbol entries per iteration), and the write-out loop (8 floats a lane per
iteration; the widest of its per-width instances counts).
The byte split (CompressionConfig(lossless_split="byte"): top 8, every top byte its own symbol) has
its own yields (~2.8-bit symbols) and its own instances of the dot and write-out loops (byte
permutes, no value lookups; nvcc unrolls them, so their weights per iteration are counted: FFMAs
over the batch, two per permute in the write-out); its rows are "lossless bf16, byte split".
With lane starts (a GPU stream's tables carry them by default: cuda_ops.LANE_STARTS) the kernels
skip the count pass: the "with lane starts" figures are the totals without it.
The fixed12 layout (lossless_split="fixed12", csrc/cuda/fixed12_cuda.cu) has no entropy decode: its
CUDA-core GEMV's one loop over pieces of 8 weights, its tensor-core GEMV's loop over 64-column blocks
of 16 rows, and its decode kernel's 8 weights a thread ("fixed12" rows).
For comparison, the legacy v1 decoders' round loops (decode_cuda.cu): instructions per round over
the symbols a lane decodes per round (Huffman 2, rANS 1).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PEEK_BITS = 12
MAX_PER_ENTRY = 3
STAGE_LDS = 3  # a decode loop's 32-bit shared loads with the stream stage: two table entries, one refill
WORD_STORES = {"sts_32": 2, "sts_u8": 0}  # a staged decode loop's stores, two entries an iteration: WordRunSink
BYTE_STORES = {"sts_u8_min": 6}          # RunByteSink (_C.stage_word_stores(0)): three bytes an entry
BYTE_SPLIT = "lossless bf16, byte split"  # pycodec.codec.encode_split(split="byte"): top 8, values 0..255


def find_tool(name: str) -> str | None:
    """A CUDA tool from PATH, /usr/local/cuda/bin, or a Python package that ships it (triton, nvidia-*)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/local/cuda/bin")
    if found:
        return found
    import site

    for base in site.getsitepackages() + [site.getusersitepackages()]:
        for sub in ("triton/backends/nvidia/bin", "nvidia/cu13/bin", "nvidia/cuda_nvcc/bin"):
            cand = Path(base) / sub / name
            if cand.exists():
                return str(cand)
    return None


def sass_of(source: Path, arch: str, usage: dict | None = None) -> str:
    """The SASS of a .cu file; `usage` (if given) gets each kernel's registers, stack and local bytes."""
    nvcc, cuobjdump, nvdisasm = find_tool("nvcc"), find_tool("cuobjdump"), find_tool("nvdisasm")
    if not (nvcc and cuobjdump and nvdisasm):
        raise SystemExit(f"needs nvcc, cuobjdump and nvdisasm (found {nvcc}, {cuobjdump}, {nvdisasm})")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        subprocess.run([nvcc, "-std=c++17", "-cubin", f"-arch={arch}", "-O3", "--expt-relaxed-constexpr",
                        f"-I{ROOT / 'csrc'}", str(source), "-o", str(cubin)], check=True)
        env = dict(os.environ, PATH=os.path.dirname(nvdisasm) + os.pathsep + os.environ.get("PATH", ""))
        if usage is not None:
            text = subprocess.run([cuobjdump, "--dump-resource-usage", str(cubin)], check=True, capture_output=True,
                                  text=True, env=env).stdout
            for name, reg, stack, local in re.findall(
                    r"Function (\S+):\s*REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", text):
                usage[name] = {"registers": int(reg), "stack_bytes": int(stack), "local_bytes": int(local)}
        return subprocess.run([cuobjdump, "-sass", str(cubin)], check=True, capture_output=True, text=True,
                              env=env).stdout


def functions(sass: str) -> dict[str, list[tuple[int, str]]]:
    out = {}
    for block in re.split(r"\n\s*Function : ", sass)[1:]:
        name, body = block.split("\n", 1)
        ins = []
        for line in body.split("\n"):
            m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
            if m:
                ins.append((int(m.group(1), 16), m.group(2).strip()))
        out[name.strip()] = ins
    return out


def opcode(text: str) -> str:
    parts = text.split()
    return parts[1] if parts[0].startswith("@") else parts[0]


def loops(ins: list[tuple[int, str]]) -> list[dict]:
    """Every loop (a branch back to an earlier address): its size and the opcodes it holds."""
    index = {a: i for i, (a, _) in enumerate(ins)}
    found = []
    for i, (a, text) in enumerate(ins):
        m = re.search(r"BRA (?:`\(\.L_x_\d+\) )?0x([0-9a-f]+)", text)
        if m and int(m.group(1), 16) <= a and int(m.group(1), 16) in index:
            body = ins[index[int(m.group(1), 16)]: i + 1]
            ops = [opcode(t) for _, t in body]
            found.append({"start": hex(body[0][0]), "end": hex(a), "instructions": len(body), "ops": ops})
    return found


def count(ops: list[str], prefix: str) -> int:
    return sum(o == prefix or o.startswith(prefix + ".") for o in ops)


def pick(found: list[dict], **want) -> dict | None:
    """The innermost loop with exactly the given numbers of the counted opcodes (`have`), and at
    least those given with the suffix _min."""
    best = None
    for lp in found:
        ops = lp["ops"]
        have = {"lds_u8": ops.count("LDS.U8"), "lds_64": ops.count("LDS.64"), "lds": ops.count("LDS"),
                "ffma": ops.count("FFMA"), "stg": count(ops, "STG"), "sts": count(ops, "STS"),
                "sts_u8": ops.count("STS.U8"), "sts_32": ops.count("STS")}
        if any(have[k] != v for k, v in want.items() if not k.endswith("_min")):
            continue
        if any(have[k[:-4]] < v for k, v in want.items() if k.endswith("_min")):
            continue
        if best is None or lp["instructions"] < best["instructions"]:
            best = lp
    return best


def kernel(funcs: dict, *needles: str) -> list[tuple[int, str]]:
    for name, ins in funcs.items():
        if all(n in name for n in needles):
            return ins
    raise SystemExit(f"no kernel matching {needles}")


# ----------------------------------------------------------------------------- yields on real weights

def lookup_yields(code_lengths: np.ndarray) -> tuple[float, float]:
    """(codes per count lookup, symbols per value entry) over a sequence of code lengths."""
    def pack(cap: int) -> float:
        i, n, lookups = 0, len(code_lengths), 0
        lengths = code_lengths.tolist()
        while i < n:
            used = c = 0
            while i < n and c < cap and used + lengths[i] <= PEEK_BITS:
                used += lengths[i]
                i += 1
                c += 1
            lookups += 1
        return n / lookups
    return pack(PEEK_BITS), pack(MAX_PER_ENTRY)


def weight_yields(weights: dict, sample: int) -> dict:
    import torch

    import pycodec
    from pycodec import _C
    from pycodec.quant import quantize_int, quantize_rate

    rows = {}
    for mode in ("rate 3.5 bits", "int4 g128", "lossless bf16", BYTE_SPLIT):
        lengths = []
        for w in weights.values():
            w = w.to(torch.bfloat16)
            if mode.startswith("rate"):
                q = quantize_rate(w.float(), 3.5)[0].numpy()
            elif mode.startswith("int4"):
                q = quantize_int(w.float(), 4, 128)[0].numpy()
            else:
                bits = w.contiguous().view(torch.int16).numpy().view(np.uint16)
                split_top = _C.BYTE_SPLIT_TOP if mode == BYTE_SPLIT else 0
                q = np.frombuffer(_C.split_float(bits, 16, split_top=split_top)[2], np.uint8).reshape(w.shape)
            code_length = pycodec.codec.code_lengths(pycodec.encode(q)).astype(np.int64)
            lengths.append(code_length[q.reshape(-1)[:sample]])
        seq = np.concatenate(lengths)
        per_count, per_entry = lookup_yields(seq)
        rows[mode] = {"bits_per_symbol": float(seq.mean()), "codes_per_count_lookup": per_count,
                      "symbols_per_entry": per_entry}
    return rows


def load_weights(smollm2: bool) -> dict[str, dict]:
    from pycodec._weights import load_minilm

    out = {"all-MiniLM-L6-v2": load_minilm(linear_only=True)}
    if smollm2:
        import torch

        from pycodec.cli import load_source

        model, _ = load_source("smollm2")
        out["SmolLM2-135M"] = {n: m.weight.detach() for n, m in model.named_modules()
                               if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")}
    return out


# ----------------------------------------------------------------------------- main

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--json", default=None)
    p.add_argument("--smollm2", action="store_true", help="also measure lookup yields on SmolLM2-135M")
    p.add_argument("--sample", type=int, default=20000, help="symbols per tensor for the yields")
    a = p.parse_args()

    usage: dict = {}
    v2 = functions(sass_of(ROOT / "csrc/cuda/windowed_cuda.cu", a.arch, usage))
    v1 = functions(sass_of(ROOT / "csrc/cuda/decode_cuda.cu", a.arch, usage))
    fixed = functions(sass_of(ROOT / "csrc/cuda/fixed12_cuda.cu", a.arch, usage))
    nvcc_version = subprocess.run([find_tool("nvcc"), "--version"], capture_output=True, text=True).stdout
    regs = [u["registers"] for u in usage.values()]
    result = {"arch": a.arch, "machine": f"{platform.machine()}, compiled here (no GPU needed)",
              "nvcc": (re.findall(r"release [\d.]+, V[\d.]+", nvcc_version) or ["?"])[0],
              "resources": {"kernels": len(usage), "registers_min": min(regs), "registers_max": max(regs),
                            "stack_bytes_max": max(u["stack_bytes"] for u in usage.values()),
                            "local_bytes_max": max(u["local_bytes"] for u in usage.values())},
              "kernels": {}, "per_symbol": {}}
    for label, needles, entry in [
        # The instance a 4096-wide layer takes: x in shared memory up to 64 KiB (kXShared, the first
        # Lb1E), so at batch 1 and 4; from global memory at 8 and 16 (Lb0E); the stream staged in
        # shared memory (kStreamShared, the second Lb1E); "global stream" its instance without.
        ("gemv affine B=1", ("gemv_kernelILi1E", "AffineSink", "Lb1ELb1E"), "lds_64"),
        ("gemv affine B=1, global stream", ("gemv_kernelILi1E", "AffineSink", "Lb1ELb0E"), "lds_64"),
        ("gemv affine B=4", ("gemv_kernelILi4E", "AffineSink", "Lb1ELb1E"), "lds_64"),
        ("gemv affine B=8", ("gemv_kernelILi8E", "AffineSink", "Lb0ELb1E"), "lds_64"),
        ("gemv affine B=16", ("gemv_kernelILi16E", "AffineSink", "Lb0ELb1E"), "lds_64"),
        ("gemv lossless split B=1", ("gemv_kernelILi1E", "SplitSink", "Lb1ELb1E"), "lds_64"),
    ]:
        batch = int(re.search(r"B=(\d+)", label).group(1))
        found = loops(kernel(v2, *needles))
        count_loop = pick(found, lds_u8=2, lds_64=0, lds=0, ffma=0)
        gemv_loop = pick(found, lds_u8=0, **{entry: 2}, ffma_min=6 * batch)
        result["kernels"][label] = {"count_loop": count_loop and count_loop["instructions"],
                                    "gemv_loop": gemv_loop and gemv_loop["instructions"], "batch": batch}
    # Chunks of up to 16384 symbols are staged in shared memory (DecodeTo::kStagedSymbols, E1E: byte
    # stores to shared memory); longer ones are written byte by byte to global memory (kSymbols, E0E).
    # A decode loop reads its words from the warp's stream stage (StageReader: a third LDS, the
    # refill's; the default) or in place ("stream in place": an LDG instead).
    # Staged loops store a word at a time (WordRunSink: two STS an iteration at most, the default) or,
    # with _C.stage_word_stores(0), each entry's three bytes (six STS.U8): "byte stores" rows.
    for label, needle, stores, lds in (("decode to bytes", "DecodeToE1E", WORD_STORES, STAGE_LDS),
                                       ("decode to bytes, byte stores", "DecodeToE1E", BYTE_STORES, STAGE_LDS),
                                       ("decode to bytes, stream in place", "DecodeToE1E", WORD_STORES, 2),
                                       ("decode to bytes, unstaged", "DecodeToE0E", {"stg_min": 2}, STAGE_LDS)):
        dec = pick(loops(kernel(v2, needle)), lds_u8=0, lds_64=0, lds=lds, **stores)
        result["kernels"][label] = {"count_loop": result["kernels"]["gemv affine B=1"]["count_loop"],
                                    "decode_loop": dec and dec["instructions"]}
    # The lossless split decode (kStagedSplit, E2E): the staged decode, then the write-out loop, 8
    # floats a lane per iteration, one instance per raw width; aligned instances (one 8-byte load
    # of symbols, 8 value lookups, one 16-byte store) for low = 4..8, the widths of bf16 cuts.
    found = loops(kernel(v2, "DecodeToE2E"))
    dec = pick(found, lds_u8=0, lds_64=0, lds=STAGE_LDS, **WORD_STORES)
    dec_bytes = pick(found, lds_u8=0, lds_64=0, lds=STAGE_LDS, **BYTE_STORES)
    merges = sorted(lp["instructions"] for lp in found
                    if lp["ops"].count("LDS.64") == 1 and lp["ops"].count("LDS.U16") == 8 and count(lp["ops"], "STG") == 1)
    # The byte split's aligned instance (write_split_pieces<true, 8, true>): 8-byte symbol loads, no
    # value lookups, four byte permutes a 16-byte store of 8 weights (nvcc unrolls it: weights = 2 x permutes).
    byte_merges = [lp for lp in found if count(lp["ops"], "PRMT") >= 2 and not lp["ops"].count("LDS.U16") and
                   not lp["ops"].count("LDS.U8") and lp["ops"].count("LDS.64") and count(lp["ops"], "STG")]
    byte_merge = min(byte_merges, key=lambda lp: lp["instructions"] / count(lp["ops"], "PRMT"), default=None)
    result["kernels"]["decode lossless split to bf16"] = {
        "count_loop": result["kernels"]["gemv affine B=1"]["count_loop"], "decode_loop": dec and dec["instructions"],
        "decode_loop_byte_stores": dec_bytes and dec_bytes["instructions"],
        "merge_loop_min": merges[0] if merges else None, "merge_loop_max": merges[-1] if merges else None,
        "weights_per_merge_iteration": 8,
        "byte_split_merge_loop": byte_merge and byte_merge["instructions"],
        "weights_per_byte_split_merge_iteration": byte_merge and 2 * count(byte_merge["ops"], "PRMT")}
    # The staged lossless GEMV (staged_gemv_kernel with SplitArgs, x in shared memory: Lb1E): the staged decode,
    # then 8 columns a lane per iteration of its dot loop (the vector-x instance: 2B LDS.128 at B=1).
    for batch in (1, 4):
        found = loops(kernel(v2, f"staged_gemv_kernelILi{batch}ELb1ENS_8windowed9SplitArgs"))
        dec = pick(found, lds_u8=0, lds_64=0, lds=STAGE_LDS, **WORD_STORES)
        dec_bytes = pick(found, lds_u8=0, lds_64=0, lds=STAGE_LDS, **BYTE_STORES)
        dots = [lp["instructions"] for lp in found if lp["ops"].count("LDS.64") == 1 and
                lp["ops"].count("LDS.U16") == 8 and lp["ops"].count("FFMA") == 8 * batch and
                lp["ops"].count("LDS.128") and not count(lp["ops"], "STS")]
        # The byte split's instance (staged_split_lane<..., kBytes>): at batch 1 permutes instead of
        # value lookups, above it a column a lane at a time (staged_byte_columns_lane: a symbol byte and
        # a raw byte a weight); nvcc unrolls them, so their weights per iteration are their FFMAs over
        # the batch.
        byte_dots = [lp for lp in found if not lp["ops"].count("LDS.U16") and lp["ops"].count("FFMA") and
                     lp["ops"].count("LDS.128") and not count(lp["ops"], "STS") and
                     (count(lp["ops"], "PRMT") and lp["ops"].count("FFMA") % (8 * batch) == 0 if batch == 1 else
                      lp["ops"].count("LDS.U8") and lp["ops"].count("FFMA") % batch == 0)]
        byte_dot = min(byte_dots, key=lambda lp: lp["instructions"] * batch / lp["ops"].count("FFMA"), default=None)
        result["kernels"][f"gemv lossless staged B={batch}"] = {
            "count_loop": result["kernels"]["gemv affine B=1"]["count_loop"], "decode_loop": dec and dec["instructions"],
            "decode_loop_byte_stores": dec_bytes and dec_bytes["instructions"],
            "dot_loop": min(dots) if dots else None, "weights_per_dot_iteration": 8,
            "byte_split_dot_loop": byte_dot and byte_dot["instructions"],
            "weights_per_byte_split_dot_iteration": byte_dot and byte_dot["ops"].count("FFMA") // batch, "batch": batch}
    # The staged rate GEMV (staged_gemv_kernel with AffineArgs, batch 1, x in shared memory): the
    # staged decode, then 8 columns a lane per piece (a byte permute and an exact subtraction a
    # weight; nvcc unrolls it, so its weights per iteration are its FFMAs).
    found = loops(kernel(v2, "staged_gemv_kernelILi1ELb1ENS_8windowed10AffineArgs"))
    dec = pick(found, lds_u8=0, lds_64=0, lds=STAGE_LDS, **WORD_STORES)
    dec_bytes = pick(found, lds_u8=0, lds_64=0, lds=STAGE_LDS, **BYTE_STORES)
    affine_dots = [lp for lp in found if count(lp["ops"], "PRMT") and lp["ops"].count("FFMA") and
                   lp["ops"].count("FFMA") % 8 == 0 and lp["ops"].count("LDS.128") and not count(lp["ops"], "STS")]
    affine_dot = min(affine_dots, key=lambda lp: lp["instructions"] / lp["ops"].count("FFMA"), default=None)
    result["kernels"]["gemv affine staged B=1"] = {
        "count_loop": result["kernels"]["gemv affine B=1"]["count_loop"], "decode_loop": dec and dec["instructions"],
        "decode_loop_byte_stores": dec_bytes and dec_bytes["instructions"],
        "dot_loop": affine_dot and affine_dot["instructions"],
        "weights_per_dot_iteration": affine_dot and affine_dot["ops"].count("FFMA"), "batch": 1}
    for tiles in (2, 4, 8, 16):
        found = loops(kernel(v2, f"tile_kernelILi{tiles}ELb0E"))
        decode = min((lp for lp in found if lp["ops"].count("LDS") == 2 and count(lp["ops"], "STS") >= 2 and
                      not count(lp["ops"], "HMMA")), key=lambda lp: lp["instructions"], default=None)
        mma = min((lp for lp in found if count(lp["ops"], "HMMA") and count(lp["ops"], "LDG") <= 4),
                  key=lambda lp: lp["instructions"], default=None)
        groups = -(-tiles // 4)
        result["kernels"][f"tile bf16 batch<={8 * tiles}"] = {
            "decode_loop": decode and decode["instructions"], "mma_loop": mma and mma["instructions"],
            "mma_per_iteration": mma and count(mma["ops"], "HMMA"),
            "mma_lane_instructions_per_weight": mma and mma["instructions"] * 32 / 256 * groups}
    for coder, per_round in (("huffman", 2), ("rans", 1)):
        found = loops(kernel(v1, f"{coder}_kernel"))
        main_loop = max(found, key=lambda lp: lp["instructions"]) if found else None
        result["kernels"][f"legacy v1 {coder} decode"] = {
            "round_loop": main_loop and main_loop["instructions"], "symbols_per_lane_round": per_round,
            "per_symbol": main_loop and main_loop["instructions"] / per_round}

    yields = {name: weight_yields(w, a.sample) for name, w in load_weights(a.smollm2).items()}
    result["yields"] = yields
    for model, modes in yields.items():
        for mode, y in modes.items():
            label = "gemv lossless split B=1" if mode.startswith("lossless") else "gemv affine B=1"
            k = result["kernels"][label]
            per = k["count_loop"] / (2 * y["codes_per_count_lookup"]) + k["gemv_loop"] / (2 * y["symbols_per_entry"])
            result["per_symbol"][f"{model}, {mode}"] = {"kernel": label, "lane_instructions_per_symbol": per,
                                                        "count_pass": k["count_loop"] / (2 * y["codes_per_count_lookup"]),
                                                        "gemv_pass": k["gemv_loop"] / (2 * y["symbols_per_entry"])}

    sa = result["kernels"]["gemv affine staged B=1"]
    for model, modes in yields.items():
        for mode, y in (m for m in modes.items() if m[0].startswith("rate")):
            if sa["decode_loop"] and sa["dot_loop"]:
                decode, dot = sa["decode_loop"] / (2 * y["symbols_per_entry"]), sa["dot_loop"] / sa["weights_per_dot_iteration"]
                result["per_symbol"][f"{model}, {mode}, staged"] = {
                    "kernel": "gemv affine staged B=1",
                    "lane_instructions_per_symbol": sa["count_loop"] / (2 * y["codes_per_count_lookup"]) + decode + dot,
                    "count_pass": sa["count_loop"] / (2 * y["codes_per_count_lookup"]), "gemv_pass": decode + dot,
                    "gemv_pass_byte_stores": sa["decode_loop_byte_stores"] and
                    sa["decode_loop_byte_stores"] / (2 * y["symbols_per_entry"]) + dot}

    def staged_passes(k: dict, y: dict, last: str, last_loop: int, weights: int) -> dict:
        """Per weight: count pass, decode pass into shared memory, and `last` (`weights` an iteration)."""
        return {"count_pass": k["count_loop"] / (2 * y["codes_per_count_lookup"]),
                "decode_pass": k["decode_loop"] / (2 * y["symbols_per_entry"]), last: last_loop / weights}

    st = result["kernels"]["gemv lossless staged B=1"]
    k = result["kernels"]["decode lossless split to bf16"]
    result["split_decode_per_weight"] = {}
    for model, modes in yields.items():
        for mode, y in (m for m in modes.items() if m[0].startswith("lossless")):
            # The byte split's weights take the kernels' byte instances (windowed_gemv.h: byte_split_value).
            dot, dot_weights, merge, merge_weights = (
                (st["byte_split_dot_loop"], st["weights_per_byte_split_dot_iteration"], k["byte_split_merge_loop"],
                 k["weights_per_byte_split_merge_iteration"]) if mode == BYTE_SPLIT else
                (st["dot_loop"], 8, k["merge_loop_max"], 8))
            if st["decode_loop"] and dot:
                parts = staged_passes(st, y, "dot_pass", dot, dot_weights)
                result["per_symbol"][f"{model}, {mode}, staged"] = {
                    "kernel": "gemv lossless staged B=1", "lane_instructions_per_symbol": sum(parts.values()),
                    "count_pass": parts["count_pass"], "gemv_pass": parts["decode_pass"] + parts["dot_pass"],
                    "gemv_pass_byte_stores": st["decode_loop_byte_stores"] and
                    st["decode_loop_byte_stores"] / (2 * y["symbols_per_entry"]) + parts["dot_pass"]}
            if k["decode_loop"] and merge:
                parts = staged_passes(k, y, "merge_pass", merge, merge_weights)
                result["split_decode_per_weight"][f"{model}, {mode}"] = {
                    "lane_instructions_per_weight": sum(parts.values()), **parts,
                    "with_lane_starts_byte_stores": k["decode_loop_byte_stores"] and
                    k["decode_loop_byte_stores"] / (2 * y["symbols_per_entry"]) + parts["merge_pass"]}
    # The fixed12 GEMV (fixed12_cuda.cu): no decode passes, one loop of pieces (8 weights each, nvcc
    # unrolls it 4 times): per weight = loop / (FFMAs / batch); its decode kernel has no loop: a
    # thread's 8 weights (a piece) are the whole kernel, its exits and bounds test included.
    result["fixed12"] = {}
    for batch in (1, 4, 16):  # the fp32-x instances (bf16 x adds a conversion of x per weight and batch row)
        found = [lp for lp in loops(kernel(fixed, f"fixed12_gemv_kernelILi{batch}ENS_7fixed126XFloat"))
                 if count(lp["ops"], "FFMA")]
        main_loop = max(found, key=lambda lp: count(lp["ops"], "FFMA"), default=None)
        if main_loop:
            weights = count(main_loop["ops"], "FFMA") // batch
            result["fixed12"][f"gemv B={batch}"] = {
                "loop": main_loop["instructions"], "weights_per_iteration": weights,
                "lane_instructions_per_weight": main_loop["instructions"] / weights}
    # The tensor-core GEMV (bf16 x): a warp's iteration is a 64-column block of 16 rows, 32 weights a
    # lane, four HMMAs per n-tile of 8 batch rows (nvcc unrolls it twice).
    for tiles, batches in ((1, "1-8"), (2, "9-16")):
        found = [lp for lp in loops(kernel(fixed, f"fixed12_tile_kernelILi{tiles}E")) if count(lp["ops"], "HMMA")]
        main_loop = max(found, key=lambda lp: count(lp["ops"], "HMMA"), default=None)
        if main_loop:
            weights = count(main_loop["ops"], "HMMA") // (4 * tiles) * 32
            result["fixed12"][f"tensor-core gemv B={batches}"] = {
                "loop": main_loop["instructions"], "weights_per_iteration": weights,
                "lane_instructions_per_weight": main_loop["instructions"] / weights}
    decode = kernel(fixed, "fixed12_decode_kernel")
    result["fixed12"]["decode to bf16"] = {"kernel": len(decode), "weights": 8,
                                           "lane_instructions_per_weight": len(decode) / 8}
    print(f"SASS of csrc/cuda/*.cu for {a.arch}: inner-loop instructions per iteration")
    for label, k in result["kernels"].items():
        print(f"  {label:28s} " + ", ".join(f"{key} {val}" for key, val in k.items() if val is not None))
    for r in result["per_symbol"].values():
        r["with_lane_starts"] = r["gemv_pass"]
    for r in result["split_decode_per_weight"].values():
        r["with_lane_starts"] = r["lane_instructions_per_weight"] - r["count_pass"]
    print("\nlane-instructions per symbol (fused GEMV, batch 1): count pass + GEMV pass; with lane starts "
          "(staged: [with byte stores])")
    for label, r in result["per_symbol"].items():
        byte_stores = f"  [{r['gemv_pass_byte_stores']:5.2f}]" if r.get("gemv_pass_byte_stores") else ""
        print(f"  {label:42s} {r['lane_instructions_per_symbol']:5.2f}  "
              f"({r['count_pass']:.2f} + {r['gemv_pass']:.2f});  {r['with_lane_starts']:5.2f}{byte_stores}")
    print("\nlane-instructions per weight (lossless split decode to bf16): count + decode + write-out; with lane starts "
          "[with byte stores]")
    for label, r in result["split_decode_per_weight"].items():
        byte_stores = f"  [{r['with_lane_starts_byte_stores']:5.2f}]" if r.get("with_lane_starts_byte_stores") else ""
        print(f"  {label:42s} {r['lane_instructions_per_weight']:5.2f}  "
              f"({r['count_pass']:.2f} + {r['decode_pass']:.2f} + {r['merge_pass']:.2f});  "
              f"{r['with_lane_starts']:5.2f}{byte_stores}")
    print("\nfixed12 (lane-instructions per weight): " + ", ".join(
        f"{label} {r['lane_instructions_per_weight']:.2f}" for label, r in result["fixed12"].items()))
    if a.json:
        path = Path(a.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
