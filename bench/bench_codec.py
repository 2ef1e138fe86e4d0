"""Entropy-coder benchmark: pycodec (rANS, Huffman) vs zstandard, constriction and ZipNN.

Run as a plain script: ``python bench/bench_codec.py [--quick] [--json OUT] [--turns ROUNDS]`` -- best of N after
a warm-up with ``time.perf_counter``; prints one table and optionally writes JSON (a bare file
name goes to ``bench/results/``). The same codecs and data sets are timed under pytest-benchmark
by bench/test_bench_codec.py (``make bench``, ``make bench-quick``).

Data sets
  gauss_1M, gauss_16M  clip(round(N(0, 4)) + 128, 0, 255) uint8 symbols (order-0 entropy ~4.05 bits)
  minilm_int4          int4 group-128 asymmetric RTN codes (0..15) of all-MiniLM-L6-v2's 37 linear weights
                       (36 encoder projections + pooler; embeddings excluded), 10.76M weights
  minilm_bf16          the same weights cast to bf16, coded losslessly. pycodec uses lossless mode's layout
                       (coded top bits + raw low bits, csrc/codec/split.h; split / merge timed too: its
                       one-pass encode_split and decode_split, as lossless mode calls them),
                       constriction the exponent and sign+mantissa byte planes; zstd and ZipNN get the raw
                       bf16 bytes. Sizes are per weight (16 raw bits).

Accounting
  * bits/symbol counts the whole output: pycodec's container with its tables, zstd's frame, ZipNN's
    header, constriction's compressed words plus its histogram (32 bits per alphabet entry).
  * int4 rows count only the code stream; group quantization adds 0.25 bits/weight (fp16 scale + zero
    per 128) for every codec alike.
  * "vs H" is against the order-0 empirical entropy of the symbols (for bf16: H(exponent) + H(sign+mantissa)).
    zstd can in principle beat it (it models context); the order-0 coders cannot.
  * MB/s are MB (1e6 bytes) of symbols (bf16: of raw bf16 bytes, 2 per weight) per second.
    "1T" = one thread; "all" = threads=0 (every core) for pycodec and ZipNN; zstd and constriction are
    measured single-threaded only.
  * constriction's encode time includes building its model from the histogram (and the int32 cast it
    requires); its decode time includes rebuilding the model and the cast back to uint8.
  * ZipNN (0.5.4) compresses its input buffer *in place* (it byte-reorders the caller's bytes object),
    so every ZipNN encode gets a fresh copy, made outside the timed region.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

import pycodec  # noqa: E402
import weights  # noqa: E402  (bench/weights.py)
from machine import results_path  # noqa: E402

try:
    import zstandard
except ImportError:  # pragma: no cover
    zstandard = None
try:
    import constriction
except ImportError:  # pragma: no cover
    constriction = None
try:
    import zipnn
except ImportError:  # pragma: no cover
    zipnn = None

SLOW_S = 1.5          # a first call slower than this is measured once (no separate warm-up)


# ---------------------------------------------------------------------------- data sets

@dataclass
class Dataset:
    name: str
    kind: str                       # "symbols" (uint8 [n]) or "bf16" (uint16 bit patterns [n])
    make: Callable[[], np.ndarray]
    _data: Any = None
    _entropy: float | None = None

    @property
    def data(self) -> np.ndarray:
        if self._data is None:
            self._data = np.ascontiguousarray(self.make().reshape(-1))
        return self._data

    @property
    def n(self) -> int:
        return self.data.size

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    @property
    def entropy(self) -> float:
        """Order-0 entropy bound, bits per symbol (bf16: per weight, both planes)."""
        if self._entropy is None:
            if self.kind == "bf16":
                self._entropy = sum(weights.entropy_bits_per_symbol(p) for p in weights.planes_from_bits(self.data))
            else:
                self._entropy = weights.entropy_bits_per_symbol(self.data)
        return self._entropy


DATASETS = {
    "gauss_1M": Dataset("gauss_1M", "symbols", lambda: weights.gaussian_symbols(1 << 20)),
    "gauss_16M": Dataset("gauss_16M", "symbols", lambda: weights.gaussian_symbols(1 << 24, seed=1)),
    "minilm_int4": Dataset("minilm_int4", "symbols", weights.minilm_int4_symbols),
    "minilm_bf16": Dataset("minilm_bf16", "bf16", weights.minilm_bf16_bits),
}


# ---------------------------------------------------------------------------- codecs

@dataclass
class Codec:
    name: str
    kinds: tuple                                   # data-set kinds it is run on
    encode: Callable[[np.ndarray, int], Any]       # (data, threads) -> blob
    decode: Callable[[Any, int], np.ndarray]       # (blob, threads) -> data (same dtype, flat)
    bits: Callable[[Any], int]                     # total coded bits of a blob
    threads: tuple = (1,)                          # thread settings measured (0 = every core)
    fresh_input: bool = False                      # encode consumes / mutates its input
    slow: bool = False                             # expensive: fewer rounds, skipped on big sets in --quick
    unavailable: str | None = None
    extra: dict = field(default_factory=dict)


def _bf16_split(fn_encode):
    def enc(bits, threads):
        return tuple(fn_encode(p, threads) for p in weights.planes_from_bits(bits))
    return enc


def _bf16_merge(fn_decode):
    def dec(blobs, threads):
        return weights.bits_from_planes(*(fn_decode(b, threads) for b in blobs))
    return dec


# pycodec ----------------------------------------------------------------------------

def _pycodec(coder: str) -> list[Codec]:
    def enc(x, threads):
        return pycodec.encode(x, coder=coder, threads=threads)

    def dec(blob, threads):
        return pycodec.decode(blob, threads=threads)

    def enc_bf16(bits, threads):  # lossless mode's layout and call: coded top bits + raw low bits (split.h)
        top, values, _, blob, raw = pycodec.codec.encode_split(bits, coder=coder, threads=threads)
        return blob, values, top, raw

    def dec_bf16(packed, threads):
        blob, values, top, raw = packed
        out = np.empty(pycodec._C.info(blob)["n_symbols"], np.uint16)
        pycodec._C.decode_split(blob, values, top, raw, out, threads)  # decode + merge per chunk, in cache
        return out

    return [Codec(f"pycodec-{coder}", ("symbols",), enc, dec, lambda b: 8 * len(b), threads=(1, 0)),
            Codec(f"pycodec-{coder}", ("bf16",), enc_bf16, dec_bf16,
                  lambda p: 8 * (len(p[0]) + len(p[3])) + 32 * len(p[1]), threads=(1, 0))]


# zstandard --------------------------------------------------------------------------

def _zstd(level: int) -> Codec:
    name = f"zstd-{level}"
    if zstandard is None:
        return Codec(name, (), None, None, None, unavailable="zstandard not installed")

    def enc(x, threads):
        return zstandard.ZstdCompressor(level=level).compress(x)     # buffer protocol: no copy

    def dec(blob, threads):                                          # raw bytes back (uint8 view)
        return np.frombuffer(zstandard.ZstdDecompressor().decompress(blob), dtype=np.uint8)

    return Codec(name, ("symbols", "bf16"), enc, dec, lambda b: 8 * len(b), slow=level >= 10)


# constriction -----------------------------------------------------------------------

def _constriction() -> list[Codec]:
    name = "constriction-ans"
    if constriction is None:
        return [Codec(name, (), None, None, None, unavailable="constriction not installed")]
    try:
        AnsCoder = constriction.stream.stack.AnsCoder
        Categorical = constriction.stream.model.Categorical
    except AttributeError as e:  # pragma: no cover
        return [Codec(name, (), None, None, None, unavailable=f"API mismatch: {e}")]

    def model(counts):
        return Categorical(counts / counts.sum(), perfect=False)

    def enc(x, threads):
        counts = np.bincount(x, minlength=int(x.max()) + 1).astype(np.float64)
        coder = AnsCoder()
        coder.encode_reverse(x.astype(np.int32), model(counts))
        return coder.get_compressed(), counts, x.size

    def dec(blob, threads):
        words, counts, n = blob
        return AnsCoder(words).decode(model(counts), n).astype(np.uint8)

    def bits(blob):
        words, counts, _ = blob
        return 32 * words.size + 32 * counts.size

    return [Codec(name, ("symbols",), enc, dec, bits),
            Codec(name, ("bf16",), _bf16_split(enc), _bf16_merge(dec), lambda bs: sum(bits(b) for b in bs))]


# ZipNN ------------------------------------------------------------------------------

def _zipnn() -> Codec:
    name = "zipnn"
    if zipnn is None:
        return Codec(name, (), None, None, None, unavailable="zipnn not installed")
    coders: dict = {}

    def coder(threads):
        if threads not in coders:
            coders[threads] = zipnn.ZipNN(input_format="byte", bytearray_dtype="bfloat16", threads=threads)
        return coders[threads]

    def enc(raw: bytes, threads):
        return coder(threads).compress(raw)

    def dec(blob, threads):
        return np.frombuffer(coder(threads).decompress(blob), dtype=np.uint16)

    return Codec(name, ("bf16",), enc, dec, lambda b: 8 * len(b), threads=(1, 0), fresh_input=True)


_CODECS: list[Codec] = []


def all_codecs() -> list[Codec]:
    if not _CODECS:
        _CODECS.extend(_pycodec("rans") + _pycodec("huffman") + [_zstd(3), _zstd(19)] + _constriction() + [_zipnn()])
    return _CODECS


def codecs_for(ds: Dataset) -> list[Codec]:
    return [c for c in all_codecs() if ds.kind in c.kinds]


def encode_input(codec: Codec, ds: Dataset):
    """What ``codec.encode`` gets: ZipNN needs a fresh bytes object per call (it mutates it)."""
    return ds.data.tobytes() if codec.fresh_input else ds.data


def same(ds: Dataset, out) -> bool:
    """Bit-exact round trip (compared as raw bytes)."""
    out = np.ascontiguousarray(out).reshape(-1).view(np.uint8)
    return out.size == ds.nbytes and np.array_equal(out, ds.data.view(np.uint8))


# ---------------------------------------------------------------------------- plain script

def best_time(fn: Callable, setup: Callable | None = None, reps: int = 5, budget_s: float = 1.0):
    """Best wall time of ``fn(*setup())`` after one warm-up call (measured once if the first call is slow).

    Returns (best seconds, number of timed runs, result of the last call).
    """
    def once():
        args = setup() if setup else ()
        t0 = time.perf_counter()
        r = fn(*args)
        return time.perf_counter() - t0, r

    t, result = once()                       # warm-up
    if t > SLOW_S:
        return t, 1, result
    best, spent, n = float("inf"), 0.0, 0
    while n < reps and (n == 0 or spent < budget_s):
        t, result = once()
        best, spent, n = min(best, t), spent + t, n + 1
    return best, n, result


def measure(ds: Dataset, codec: Codec, reps: int, budget_s: float) -> dict:
    row = {"dataset": ds.name, "codec": codec.name, "n": ds.n, "symbol_bytes": ds.nbytes,
           "entropy_bits": ds.entropy, "unit": "bits/weight" if ds.kind == "bf16" else "bits/symbol"}
    for th in codec.threads:
        tag = "all" if th == 0 else f"{th}T"
        if codec.fresh_input:
            t_enc, n_enc, blob = best_time(codec.encode, lambda: (encode_input(codec, ds), th), reps, budget_s)
        else:
            t_enc, n_enc, blob = best_time(lambda: codec.encode(ds.data, th), None, reps, budget_s)
        t_dec, n_dec, out = best_time(lambda: codec.decode(blob, th), None, reps, budget_s)
        if not same(ds, out):
            raise AssertionError(f"{codec.name} (threads={th}) did not round-trip {ds.name}")
        bits = codec.bits(blob)
        row.update({"bits": bits, "bits_per_symbol": bits / ds.n,
                    "vs_entropy_pct": 100.0 * (bits / ds.n / ds.entropy - 1.0) if ds.entropy else None,
                    f"encode_s_{tag}": t_enc, f"decode_s_{tag}": t_dec,
                    f"encode_MBps_{tag}": ds.nbytes / t_enc / 1e6, f"decode_MBps_{tag}": ds.nbytes / t_dec / 1e6,
                    f"timed_runs_{tag}": [n_enc, n_dec]})
    return row


def take_turns(first: Callable, second: Callable, rounds: int, reps: int = 5, budget_s: float = 1.0,
               setups: tuple = (None, None)) -> list:
    """[(first's best seconds, second's), ...] over ``rounds`` rounds, each a best of ``reps`` of one
    then the other, the order swapped every round: on a machine whose speed drifts (this VM's moves
    ~10% within minutes), a ratio taken round by round compares the two at the same moment.
    setups: each function's untimed argument maker (best_time's setup), or None."""
    times = []
    for r in range(rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        best = {i: best_time((first, second)[i], setups[i], reps, budget_s)[0] for i in order}
        times.append((best[0], best[1]))
    return times


def turns_vs_zipnn(rounds: int) -> dict | None:
    """MiniLM bf16 on one thread, pycodec's lossless layout (v2 Huffman) against zipnn by take_turns:
    decode and encode time ratios (pycodec / zipnn, < 1: pycodec faster), min / median / max."""
    ds = DATASETS["minilm_bf16"]
    by_name = {c.name: c for c in codecs_for(ds)}
    ours, peer = by_name.get("pycodec-huffman"), by_name.get("zipnn")
    if peer is None or peer.unavailable or ours is None:
        return None
    ours_blob, peer_blob = ours.encode(ds.data, 1), peer.encode(encode_input(peer, ds), 1)
    if not (same(ds, ours.decode(ours_blob, 1)) and same(ds, peer.decode(peer_blob, 1))):
        raise AssertionError("a round trip failed before the turns")
    result = {"dataset": ds.name, "threads": 1, "rounds": rounds}
    # zipnn's encode rewrites its input: each run gets a fresh copy, made outside the timing (as measure()).
    for what, a, b, setups in (
            ("decode", lambda: ours.decode(ours_blob, 1), lambda: peer.decode(peer_blob, 1), (None, None)),
            ("encode", lambda: ours.encode(ds.data, 1), lambda raw: peer.encode(raw, 1),
             (None, lambda: (encode_input(peer, ds),)))):
        times = take_turns(a, b, rounds, setups=setups)
        ratios = sorted(t_ours / t_peer for t_ours, t_peer in times)
        result[what] = {"seconds": times, "ratio_min": ratios[0], "ratio_median": ratios[len(ratios) // 2],
                        "ratio_max": ratios[-1]}
    return result


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    vers = {"pycodec": pycodec.__version__, "numpy": np.__version__, "python": platform.python_version()}
    for mod in (zstandard, constriction, zipnn):
        if mod is not None:
            try:
                from importlib.metadata import version
                vers[mod.__name__] = version(mod.__name__)
            except Exception:  # pragma: no cover
                pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "versions": vers}


def _fmt(v, spec):
    if v is None:
        width = "".join(ch for ch in spec.split(".")[0] if ch.isdigit())
        return "-".rjust(int(width or 1))
    return format(v, spec)


def print_table(rows: list[dict], skipped: list[str]) -> None:
    head = (f"{'dataset':12s} {'codec':17s} {'bits/sym':>8s} {'vs H %':>7s} "
            f"{'enc MB/s 1T':>11s} {'dec MB/s 1T':>11s} {'enc MB/s all':>12s} {'dec MB/s all':>12s}")
    print(head)
    print("-" * len(head))
    last = None
    for r in rows:
        if r["dataset"] != last:
            if last is not None:
                print()
            unit = "bits/weight" if r["unit"] == "bits/weight" else "bits/symbol"
            print(f"{r['dataset']}: n={r['n']:,}  order-0 entropy {r['entropy_bits']:.4f} {unit}")
            last = r["dataset"]
        print(f"{'':12s} {r['codec']:17s} {r['bits_per_symbol']:8.4f} {_fmt(r['vs_entropy_pct'], '+7.2f')} "
              f"{_fmt(r.get('encode_MBps_1T'), '11.1f')} {_fmt(r.get('decode_MBps_1T'), '11.1f')} "
              f"{_fmt(r.get('encode_MBps_all'), '12.1f')} {_fmt(r.get('decode_MBps_all'), '12.1f')}")
    for s in skipped:
        print(f"skipped: {s}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="drop gauss_16M and zstd-19 on the large sets")
    ap.add_argument("--json", metavar="OUT", help="write results as JSON (bare file names go to bench/results/)")
    ap.add_argument("--datasets", nargs="*", choices=list(DATASETS), help="subset of data sets")
    ap.add_argument("--turns", type=int, default=0, metavar="ROUNDS",
                    help="then MiniLM bf16 decode and encode, pycodec and zipnn taking turns on one thread")
    a = ap.parse_args(argv)

    names = a.datasets or [d for d in DATASETS if not (a.quick and d == "gauss_16M")]
    reps, budget = (3, 0.3) if a.quick else (5, 1.0)
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores; {info['versions']}")
    rows, skipped = [], []
    t_all = time.perf_counter()
    for c in all_codecs():
        if c.unavailable and c.name not in {s.split(':')[0] for s in skipped}:
            skipped.append(f"{c.name}: {c.unavailable}")
    for dname in names:
        ds = DATASETS[dname]
        _ = ds.data, ds.entropy
        for codec in codecs_for(ds):
            if codec.unavailable:
                continue
            if a.quick and codec.slow and ds.n > (1 << 21):
                skipped.append(f"{codec.name} on {dname} (--quick)")
                continue
            try:
                rows.append(measure(ds, codec, reps, budget))
            except Exception as e:  # a peer that fails is reported and excluded, never faked
                skipped.append(f"{codec.name} on {dname}: {type(e).__name__}: {e}")
            print(f"  ... {dname} {codec.name} done ({time.perf_counter() - t_all:.0f} s)", file=sys.stderr)
    print()
    print_table(rows, skipped)
    turns = turns_vs_zipnn(a.turns) if a.turns > 0 else None
    if a.turns > 0 and turns is None:
        print("\nturns: zipnn not installed")
    if turns:
        print(f"\nMiniLM bf16, one thread, pycodec (v2 Huffman) and zipnn taking turns, {a.turns} rounds "
              "(best of 5 each): pycodec's time / zipnn's, min / median / max")
        for what in ("decode", "encode"):
            t = turns[what]
            print(f"  {what}: {t['ratio_min']:.3f} / {t['ratio_median']:.3f} / {t['ratio_max']:.3f}")
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")
    if a.json:
        out = Path(results_path(a.json))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"machine": info, "quick": a.quick, "rows": rows, "skipped": skipped,
                                   "turns": turns}, indent=2))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
