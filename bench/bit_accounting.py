"""Bits per weight with everything stored counted: bench_quality.py's accounting.

Pure functions of shapes, reports and stored-tensor sizes (torch only inside linear_shapes), so a
test checks them without a model or the peer quantizers installed.
"""
from __future__ import annotations

import math

# An fp16 scale and an fp16 zero per group: what int-g128 checkpoints (GPTQ, AWQ, RTN) store.
FP16_SCALE_AND_ZERO_BITS = 32


def fixed_length_bits(shapes, bits: int, group_size: int = 128,
                      side_bits_per_group: int = FP16_SCALE_AND_ZERO_BITS) -> float:
    """Bits per weight of group-wise int quantization stored fixed-length: ``bits`` per weight plus
    ``side_bits_per_group`` per group of ``group_size`` inputs, a partial group at a row's end
    counted whole (shapes are (out_features, in_features), as nn.Linear holds its weight)."""
    total = n = 0
    for out_features, in_features in shapes:
        total += out_features * (bits * in_features + side_bits_per_group * math.ceil(in_features / group_size))
        n += out_features * in_features
    return total / n


def decoder_bits(report: dict, marker: str = ".layers.") -> float:
    """Bits per weight of the coded layers whose names hold ``marker`` (a decoder's linears), weighted
    by their sizes, from a ``pycodec.compress_`` report (its per-layer figures count everything stored)."""
    rows = [v for name, v in report["layers"].items() if marker in name and "bits_per_weight" in v]
    n = sum(v["shape"][0] * v["shape"][1] for v in rows)
    return sum(v["bits_per_weight"] * v["shape"][0] * v["shape"][1] for v in rows) / n


# The part of a quantizer's stored state that holds the codes (HQQ: W_q; bitsandbytes: weight).
CODE_PARTS = ("W_q", "weight")


def stored_bits(parts) -> dict:
    """Sum of what a quantizer stores: ``parts`` holds (name, number of elements, bits per element)
    for each stored tensor. Returns the total bits and the bits of the codes (parts named in
    CODE_PARTS) apart from the metadata (scales, zeros, maps, serialized settings)."""
    total = codes = 0
    for name, n, bits in parts:
        total += n * bits
        if name in CODE_PARTS:
            codes += n * bits
    return {"bits": total, "code_bits": codes, "metadata_bits": total - codes}


def checkpoint_bits_per_parameter(dense_bits: int, replaced_dense_bits: int, replacement_bits: float,
                                  n_parameters: int) -> float:
    """The whole checkpoint per parameter when some dense tensors (``replaced_dense_bits`` of the
    ``dense_bits`` the dense checkpoint stores) are stored as ``replacement_bits`` instead."""
    return (dense_bits - replaced_dense_bits + replacement_bits) / n_parameters


def linear_shapes(model, marker: str = ".layers.") -> list:
    """(out_features, in_features) of the nn.Linear modules whose names hold ``marker``."""
    import torch

    return [tuple(m.weight.shape) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and marker in name]
