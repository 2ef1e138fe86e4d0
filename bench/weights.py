"""Benchmark inputs: real all-MiniLM-L6-v2 weights (offline) and the symbol arrays made from them.

The loader lives in :mod:`pycodec._weights` (so ``python -m pycodec.demo`` can use it
from an installed package); this module re-exports it and adds the synthetic source
and the whole-model concatenations the benchmarks code.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from pycodec._weights import (  # noqa: E402,F401
    bf16_bits,
    bf16_byte_planes,
    bits_from_planes,
    entropy_bits_per_symbol,
    int4_g128_symbols,
    int4_side_bits,
    load_minilm,
    minilm_safetensors_path,
    planes_from_bits,
)

_CACHE: dict = {}


def gaussian_symbols(n: int, sigma: float = 4.0, seed: int = 0) -> np.ndarray:
    """Quantized Gaussian symbols: clip(round(N(0, sigma)) + 128, 0, 255) as uint8 [n]."""
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(rng.normal(0.0, sigma, n)) + 128, 0, 255).astype(np.uint8)


def minilm_linear():
    """{name: fp32 tensor} of MiniLM's 2-D linear weights (cached)."""
    if "linear" not in _CACHE:
        _CACHE["linear"] = load_minilm(linear_only=True)
    return _CACHE["linear"]


def minilm_int4_symbols() -> np.ndarray:
    """int4 group-128 RTN codes of every MiniLM linear weight, concatenated: uint8 [n_weights] in 0..15."""
    if "int4" not in _CACHE:
        _CACHE["int4"] = np.concatenate([int4_g128_symbols(w).reshape(-1) for w in minilm_linear().values()])
    return _CACHE["int4"]


def minilm_bf16_bits() -> np.ndarray:
    """bf16 bit patterns (uint16) of every MiniLM linear weight (fp32 cast to bf16), concatenated."""
    if "bf16" not in _CACHE:
        _CACHE["bf16"] = np.concatenate([bf16_bits(w).reshape(-1) for w in minilm_linear().values()])
    return _CACHE["bf16"]


def minilm_bf16_planes() -> tuple[np.ndarray, np.ndarray]:
    """(exponent plane, sign+mantissa plane) of :func:`minilm_bf16_bits`."""
    return planes_from_bits(minilm_bf16_bits())
