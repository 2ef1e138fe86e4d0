"""Weight quantizers and the packed layout of one compressed weight.

This module owns the packed layout. A packed weight is a flat ``dict[str, Tensor]`` of
plain dtypes (so it lives in registered buffers, ``state_dict`` and safetensors):

  meta            int64 [8]   [layout version, kind, N, K, group_size, dtype code, n_planes or top, 0]
  kind = KIND_AFFINE (int and rate modes), W[n, k] = (q[n, k] - zero[n, g]) * scale[n, g], g = k // group_size,
  then W.flat[escape_index] = escape_value:
    symbols       uint8 [B]   pycodec stream of q (uint8 [N, K])
    scale         fp16 [N, G] G = ceil(K / group_size)
    zero          fp16 [N, G] or [1, 1] (broadcast: rate mode's zero is the constant 128)
    escape_index  int64 [E]   flat indices of weights kept exactly (their q is the zero point)
    escape_value  fp32 [E]
  kind = KIND_SPLIT (bit-exact floats; what lossless mode writes), csrc/codec/split.h:
    symbols       uint8 [B]   pycodec stream of s (uint8 [N, K]): the number of each float's top `top` bits
    values        int32 [V]   ascending distinct top values, V <= 256: top bits = values[s]
    raw           uint8 [R]   the low (width - top) bits, one field per weight in row-major order, MSB first
                              in 32-bit little-endian words (the stream payload's convention)
    meta[6] = top. Joining sign, exponent and the first mantissa bits into one ~4.6-bit symbol keeps their
    dependence, and leaves near-uniform bits raw. The byte split (lossless_split="byte") is the same layout
    with top = 8 and values = 0..255 (every top byte its own symbol, counted or not): a 16-bit weight is
    then its symbol byte and its raw byte, which the GPU kernels join by byte permutes.
  kind = KIND_FIXED (bit-exact bf16 at 12 bits a weight, no entropy coder; lossless_split="fixed12"),
  csrc/codec/fixed12.h: each weight's low byte raw, its top byte a 4-bit code (sign, and t: 0 for
  exponent bits 14..8 all zero, else their value - base, 1..7), any weight outside that an escape:
    codes         uint8 [4 P]  P = ceil(N K / 8) pieces of 8 weights (row-major), one 32-bit code word each
    low           uint8 [8 P]  each weight's low byte (the tail past N K zero)
    escape_index  int64 [E]   flat indices, ascending, of weights outside the window (their code is 0)
    escape_bits   int16 [E]   their bf16 bits
    meta[6] = base, 0..120: bits 14..8 of a weight of code t > 0 are base + t.
  kind = KIND_LOSSLESS (bit-exact floats, pycodec <= 0.1 checkpoints; still read), byte planes:
    plane{i}      uint8 [B_i] a pycodec stream, or the plane's raw bytes when coding does not pay
    plane_coded   uint8 [P]   1 = plane{i} is a stream, 0 = raw
    bf16: plane0 = exponent (bits 14..7), plane1 = sign << 7 | mantissa (7 bits)
    fp16: plane0 = high byte (sign, exponent, 2 mantissa bits), plane1 = low byte
    fp32: plane0 = exponent (bits 30..23), plane1 = sign << 7 | mantissa bits 22..16,
          plane2 = mantissa bits 15..8, plane3 = mantissa bits 7..0
  Exponents carry ~2.7 bits of information in 8; the mantissa bytes are near-uniform,
  which is why each plane decides for itself whether coding pays.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from . import _C
from .codec import CodecError, decode, encode, encode_split, encoded_size, entropy_bits

LAYOUT_VERSION = 1
KIND_LOSSLESS = 0
KIND_AFFINE = 1
KIND_SPLIT = 2
KIND_FIXED = 3
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}
RATE_ZERO = 128          # rate-mode zero point: symbols 1..255 hold q in [-127, 127]
RATE_MAX_Q = 127         # |q| beyond this is an escape (kept exactly)
ESCAPE_BITS = 64 + 32    # int64 index + fp32 value per escaped weight


@dataclass
class LayerStats:
    """What compressing one weight achieved (all side information counted)."""

    n_weights: int
    bits: int                 # every buffer's bytes * 8
    entropy_bits: float       # order-0 entropy bound of the coded symbols, plus side tensors
    sqnr_db: float            # inf for lossless

    @property
    def bits_per_weight(self) -> float:
        return self.bits / max(self.n_weights, 1)

    @property
    def entropy_bits_per_weight(self) -> float:
        return self.entropy_bits / max(self.n_weights, 1)


def _sum_squares(x: torch.Tensor) -> float:
    # Row by row in fp32 (short sums), the rows in float64: as exact as a float64 sum for the
    # purpose, without the float64 copy of the whole tensor that a float64 norm makes (3x slower).
    rows = x.reshape(x.shape[0] if x.dim() > 1 else 1, -1)
    return float(torch.linalg.vector_norm(rows, dim=1).double().square().sum())


def sqnr_db(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """Signal to quantization noise of w_hat against w, in dB, over w's finite weights: the
    non-finite ones are kept exactly (escapes) and would make both sums NaN."""
    if (w.device.type == w_hat.device.type == "cpu" and w.dtype == w_hat.dtype == torch.float32
            and w.numel() == w_hat.numel() and not w.requires_grad and not w_hat.requires_grad):
        # One pass in C++ (quantize.h): the torch sums took 15% of rate mode's compression.
        err, sig = _C.error_and_signal(w.contiguous().numpy().reshape(-1), w_hat.contiguous().numpy().reshape(-1))
    else:
        err = _sum_squares(w.float() - w_hat.float())
        sig = _sum_squares(w.float())
    if not (math.isfinite(err) and math.isfinite(sig)):
        finite = torch.isfinite(w)
        if not bool(finite.all()):
            return sqnr_db(w[finite], w_hat[finite])
    return math.inf if err == 0 else 10.0 * math.log10(sig / err)


def packed_bits(packed: dict) -> int:
    return sum(t.numel() * t.element_size() * 8 for k, t in packed.items() if k != "meta")


def _meta(kind: int, n: int, k: int, group_size: int, dtype: torch.dtype, n_planes: int = 0) -> torch.Tensor:
    return torch.tensor([LAYOUT_VERSION, kind, n, k, group_size, DTYPE_CODES[dtype], n_planes, 0], dtype=torch.int64)


def _row_chunk_symbols(k: int, coder: str, chunk_symbols: int | None) -> int | None:
    """Chunk length for affine symbols [N, K]: an explicit choice wins. Huffman (format v2)
    streams are cut by the encoder itself (whole rows, enough chunks for a GPU); for rANS
    (v1) whole rows near the coder default when K % 32 == 0, else the default."""
    if chunk_symbols is not None or coder == "huffman":
        return chunk_symbols
    default = int(_C.DEFAULT_CHUNK_SYMBOLS[coder])
    if k <= 0 or k % 32:
        return None
    chunk = k * max(1, round(default / k))
    return chunk if chunk <= _C.MAX_CHUNK_SYMBOLS else None


def _stream(symbols: np.ndarray, coder: str, chunk_symbols: int | None) -> torch.Tensor:
    return _bytes_tensor(encode(symbols, coder=coder, chunk_symbols=chunk_symbols))


def _bytes_tensor(b: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8) if b else torch.zeros(0, dtype=torch.uint8)


def _symbol_entropy_bits(symbols: torch.Tensor) -> float:
    counts = np.asarray(_C.symbol_counts(symbols.detach().cpu().contiguous().numpy()), dtype=np.int64)
    return entropy_bits(counts) * symbols.numel()


# ---------------------------------------------------------------------------- lossless

def bf16_planes(bits: np.ndarray) -> list[np.ndarray]:
    """bf16 bit patterns (uint16) -> [exponent byte, sign << 7 | 7-bit mantissa] uint8 planes."""
    return [((bits >> 7) & 0xFF).astype(np.uint8), (((bits >> 8) & 0x80) | (bits & 0x7F)).astype(np.uint8)]


def bf16_from_planes(exponent: np.ndarray, sign_mantissa: np.ndarray) -> np.ndarray:
    """Inverse of bf16_planes: uint16 bf16 bit patterns."""
    e, sm = exponent.astype(np.uint16), sign_mantissa.astype(np.uint16)
    return ((sm & 0x80) << 8) | (e << 7) | (sm & 0x7F)


def _float_planes(w: torch.Tensor) -> list[np.ndarray]:
    if w.dtype == torch.bfloat16:
        return bf16_planes(w.contiguous().view(torch.int16).numpy().view(np.uint16))
    if w.dtype == torch.float16:
        bits = w.contiguous().view(torch.int16).numpy().view(np.uint16)
        return [(bits >> 8).astype(np.uint8), (bits & 0xFF).astype(np.uint8)]
    if w.dtype == torch.float32:
        bits = w.contiguous().view(torch.int32).numpy().view(np.uint32)
        return [((bits >> 23) & 0xFF).astype(np.uint8), (((bits >> 24) & 0x80) | ((bits >> 16) & 0x7F)).astype(np.uint8),
                ((bits >> 8) & 0xFF).astype(np.uint8), (bits & 0xFF).astype(np.uint8)]
    raise CodecError(f"lossless mode supports float32, float16 and bfloat16 weights, got {w.dtype}")


def _planes_to_float(planes: list[np.ndarray], dtype: torch.dtype, shape: tuple) -> torch.Tensor:
    if dtype == torch.bfloat16:
        return torch.from_numpy(bf16_from_planes(*planes).view(np.int16)).view(torch.bfloat16).reshape(shape)
    p = [x.astype(np.uint32) for x in planes]
    if dtype == torch.float16:
        bits = (p[0] << 8) | p[1]
        return torch.from_numpy(bits.astype(np.uint16).view(np.int16)).view(torch.float16).reshape(shape)
    bits = ((p[1] & 0x80) << 24) | (p[0] << 23) | ((p[1] & 0x7F) << 16) | (p[2] << 8) | p[3]
    return torch.from_numpy(bits.view(np.int32)).view(torch.float32).reshape(shape)


FLOAT_WIDTHS = {torch.bfloat16: 16, torch.float16: 16, torch.float32: 32}
_BITS_VIEW = {16: (torch.int16, np.uint16), 32: (torch.int32, np.uint32)}  # torch view, numpy view


def pack_lossless(w: torch.Tensor, coder: str = "huffman", chunk_symbols: int | None = None,
                  split: str = "smallest") -> tuple[dict, LayerStats]:
    """Bit-exact packing of a float weight as coded top bits + raw low bits (KIND_SPLIT). split:
    codec.encode_split's, for 16-bit floats; float32 weights always take the smallest split (the
    byte split is for the GPU's bf16 kernels, and would leave 24 bits of an fp32 raw)."""
    w = w.detach().cpu()
    if w.dim() != 2:
        raise CodecError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
    if w.dtype not in FLOAT_WIDTHS:
        raise CodecError(f"lossless mode supports float32, float16 and bfloat16 weights, got {w.dtype}")
    width = FLOAT_WIDTHS[w.dtype]
    tview, nview = _BITS_VIEW[width]
    bits = w.contiguous().view(tview).numpy().view(nview)
    top, values, counts, blob, raw = encode_split(bits, coder, chunk_symbols,
                                                  split=split if width == 16 else "smallest")
    packed = {
        "meta": _meta(KIND_SPLIT, w.shape[0], w.shape[1], 0, w.dtype, top),
        "symbols": torch.from_numpy(blob),
        "values": torch.tensor(values, dtype=torch.int32),
        "raw": torch.from_numpy(raw),
    }
    entropy = entropy_bits(counts.astype(np.int64)) * w.numel() + w.numel() * (width - top) + 32 * len(values)
    return packed, LayerStats(w.numel(), packed_bits(packed), entropy, math.inf)


def pack_fixed12(w: torch.Tensor) -> tuple[dict, LayerStats]:
    """Bit-exact packing of a bf16 weight in the fixed-width layout (KIND_FIXED, csrc/codec/fixed12.h)."""
    w = w.detach().cpu()
    if w.dim() != 2:
        raise CodecError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
    if w.dtype != torch.bfloat16:
        raise CodecError(f"the fixed12 layout holds bfloat16 weights, got {w.dtype}")
    bits = w.contiguous().view(torch.int16).numpy().view(np.uint16).reshape(-1)
    base, codes, low, escapes = _C.fixed12_encode(bits)
    # (torch gives an empty numpy array stride 0, which a byte view of it, as a checksum takes, refuses)
    packed = {
        "meta": _meta(KIND_FIXED, w.shape[0], w.shape[1], 0, w.dtype, base),
        "codes": torch.from_numpy(codes),
        "low": torch.from_numpy(low),
        "escape_index": torch.from_numpy(escapes) if escapes.size else torch.zeros(0, dtype=torch.int64),
        "escape_bits": torch.from_numpy(bits[escapes].view(np.int16)) if escapes.size else torch.zeros(0, dtype=torch.int16),
    }
    bits_total = packed_bits(packed)
    return packed, LayerStats(w.numel(), bits_total, float(bits_total), math.inf)


def fixed12_parts(packed: dict, n: int, k: int, base: int, dtype: torch.dtype) -> tuple:
    """(codes, low, escape_index, escape_bits) of a KIND_FIXED weight, checked to fit its shape."""
    if dtype != torch.bfloat16:
        raise CodecError(f"packed weight: the fixed12 layout holds bfloat16 weights, not {dtype}")
    if not 0 <= base <= _C.FIXED12_MAX_BASE:
        raise CodecError(f"packed weight: fixed12 base {base} outside 0..{_C.FIXED12_MAX_BASE}")
    pieces = -(-n * k // 8)
    codes, low = packed["codes"].contiguous(), packed["low"].contiguous()
    if codes.numel() != 4 * pieces or low.numel() != 8 * pieces:
        raise CodecError(f"packed weight: fixed12 codes / low hold {codes.numel()} / {low.numel()} bytes, expected "
                         f"{4 * pieces} / {8 * pieces} for {n} x {k} weights")
    idx, bits = packed["escape_index"], packed["escape_bits"]
    if idx.numel() != bits.numel() or bits.dtype != torch.int16 or codes.dtype != torch.uint8 or low.dtype != torch.uint8:
        raise CodecError("packed weight: fixed12 escape_bits must be int16 as long as escape_index, codes and low uint8")
    _escape_index(packed, n * k)
    return codes, low, idx, bits


def _unpack_fixed12(packed: dict, n: int, k: int, base: int, dtype: torch.dtype) -> torch.Tensor:
    codes, low, idx, bits = fixed12_parts(packed, n, k, base, dtype)
    out = np.empty(n * k, dtype=np.uint16)
    _C.fixed12_decode_rows(codes.numpy(), low.numpy(), base, n * k, np.zeros(1 if n * k else 0, np.int64), out)
    w = torch.from_numpy(out.view(np.int16))
    if idx.numel():
        w[idx] = bits
    return w.view(torch.bfloat16).view(n, k)


def _unpack_split(packed: dict, n: int, k: int, top: int, dtype: torch.dtype) -> torch.Tensor:
    width = FLOAT_WIDTHS[dtype]
    blob = packed["symbols"].contiguous().numpy()
    shape = tuple(_C.info(blob)["shape"])
    if shape != (n, k):
        raise CodecError(f"packed weight: symbols have shape {shape}, expected {(n, k)}")
    _, nview = _BITS_VIEW[width]
    out = np.empty((n, k), dtype=nview)
    _C.decode_split(blob, packed["values"].tolist(), top, packed["raw"].contiguous().numpy(), out)
    return torch.from_numpy(out.view(np.int16 if width == 16 else np.int32)).view(dtype)


# ---------------------------------------------------------------------------- affine (int / rate)

def _group_index(k: int, group_size: int, device=None) -> torch.Tensor:
    return torch.arange(k, device=device) // group_size


def quantize_int(w: torch.Tensor, bits: int, group_size: int, symmetric: bool = False):
    """Round-to-nearest group quantization. Returns q (uint8 [N, K]), scale, zero (fp16 [N, G])."""
    w = w.detach().float().cpu()
    n, k = w.shape
    g = math.ceil(k / group_size)
    pad = g * group_size - k
    wp = torch.nn.functional.pad(w, (0, pad)).reshape(n, g, group_size)
    valid = torch.nn.functional.pad(torch.ones(k, dtype=torch.bool), (0, pad)).reshape(g, group_size)
    qmax = (1 << bits) - 1
    if symmetric:
        amax = wp.abs().amax(dim=2)
        half = 1 << (bits - 1)
        scale = (amax / (half - 1 if bits > 1 else 1)).clamp_min(1e-8)
        zero = torch.full_like(scale, float(half))
    else:
        if pad:  # the padding must not count as a weight of the last group
            big = torch.finfo(torch.float32).max
            wmin = torch.where(valid, wp, torch.full_like(wp, big)).amin(dim=2).clamp(max=0)
            wmax = torch.where(valid, wp, torch.full_like(wp, -big)).amax(dim=2).clamp(min=0)
        else:
            wmin, wmax = wp.amin(dim=2).clamp(max=0), wp.amax(dim=2).clamp(min=0)
        scale = ((wmax - wmin) / qmax).clamp_min(1e-8)
        zero = (-wmin / scale).round().clamp(0, qmax)
    scale = scale.half()
    zero = zero.half()
    q = torch.empty(n, k, dtype=torch.uint8)
    _C.affine_quantize(w.contiguous().numpy(), scale.float().contiguous().numpy(), zero.float().contiguous().numpy(),
                       group_size, qmax, q.numpy())  # clamp(round(w / scale) + zero, 0, qmax), one C++ pass
    return q, scale, zero


def dequantize_affine(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                      escape_index: torch.Tensor | None = None, escape_value: torch.Tensor | None = None) -> torch.Tensor:
    """The pure-PyTorch reference of the affine layout (fp32 result)."""
    n, k = q.shape
    if k % group_size == 0:  # in place, by group: one [n, k] buffer (CPU forwards decode every call)
        w = q.float()
        groups = w.view(n, k // group_size, group_size)
        groups.sub_(zero.float().expand(n, scale.shape[1]).unsqueeze(-1)).mul_(scale.float().unsqueeze(-1))
    else:
        gi = _group_index(k, group_size, q.device)
        z = zero.float().expand(n, scale.shape[1])[:, gi]
        w = (q.float() - z) * scale.float()[:, gi]
    if escape_index is not None and escape_index.numel():
        w.view(-1)[escape_index] = escape_value.float()
    return w


def dequantize_affine_as(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                         escape_index: torch.Tensor | None, escape_value: torch.Tensor | None,
                         dtype: torch.dtype) -> torch.Tensor:
    """dequantize_affine(...).to(dtype), the same values: for fp32 and bf16 on the CPU in one C++
    pass (dequant.h) straight into dtype, instead of an fp32 copy, two passes and a cast."""
    n, k = q.shape
    if q.device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16) or n * k == 0:
        return dequantize_affine(q, scale, zero, group_size, escape_index, escape_value).to(dtype)
    groups = scale.shape[1]
    w = torch.empty(n, k, dtype=dtype)
    _C.dequantize_affine(q.contiguous().numpy(), scale.float().contiguous().numpy(),
                         zero.float().expand(n, groups).contiguous().numpy(), k, group_size,
                         (w.view(torch.int16) if dtype == torch.bfloat16 else w).numpy())
    if escape_index is not None and escape_index.numel():
        w.view(-1)[escape_index] = escape_value.float().to(dtype)
    return w


def _prune(w: torch.Tensor, fraction: float) -> torch.Tensor:
    if fraction <= 0:
        return w
    k = int(fraction * w.numel())
    if k == 0:
        return w
    threshold = w.abs().reshape(-1).kthvalue(k).values
    return torch.where(w.abs() <= threshold, torch.zeros_like(w), w)


def _row_median(x: torch.Tensor, nan_free: bool = False) -> torch.Tensor:
    """x.median(dim=1, keepdim=True).values, the lower median of each row, by numpy's
    introselect on the CPU: the same values, ~10x faster than torch's (which dominated rate
    mode's compression time). NaNs (torch propagates them) and other devices take torch's;
    ``nan_free``: the caller knows x has none (a pass over x saved)."""
    if (x.device.type != "cpu" or x.dtype != torch.float32 or x.shape[1] == 0
            or (not nan_free and bool(torch.isnan(x).any()))):
        return x.median(dim=1, keepdim=True).values
    kth = (x.shape[1] - 1) // 2
    return torch.from_numpy(np.ascontiguousarray(np.partition(x.detach().numpy(), kth, axis=1)[:, kth:kth + 1]))


def _row_sigma(w: torch.Tensor) -> torch.Tensor:
    # Median absolute deviation (scaled to equal the std of a Gaussian): a few outliers,
    # which become exact escapes, must not coarsen the step of their whole row.
    # A row of one repeated value has neither: its magnitude sets the step, so the value is a
    # symbol, not an escape. NaN weights are escapes (kept exactly): the others set the step.
    if w.device.type == "cpu" and w.dtype == torch.float32 and w.dim() == 2 and w.shape[1] and not w.requires_grad:
        # Both medians in one C++ pass over each row (quantize.h), the values below; a weight that
        # is NaN or infinite takes the reference path.
        med = torch.empty(w.shape[0], 1)
        mad = torch.empty(w.shape[0], 1)
        if _C.row_median_mad(w.contiguous().numpy(), med.numpy().reshape(-1), mad.numpy().reshape(-1)):
            return _sigma_from_mad(w, mad * 1.4826)
    return _row_sigma_reference(w)


def _row_sigma_reference(w: torch.Tensor) -> torch.Tensor:
    """_row_sigma in torch and numpy, for any weight (NaN, infinities, other devices)."""
    nan = torch.isnan(w)
    if bool(nan.any()):
        w = torch.where(nan, torch.nanmedian(w, dim=1, keepdim=True).values, w)
    # Only a row of NaNs keeps them, and numpy's median of it is NaN too, as torch's: no check.
    med = _row_median(w, nan_free=True)
    # w - med adds NaNs only where an infinite weight meets an infinite median (inf - inf).
    mad = _row_median((w - med).abs(), nan_free=not bool(torch.isinf(med).any())) * 1.4826
    return _sigma_from_mad(w, mad)


def _sigma_from_mad(w: torch.Tensor, mad: torch.Tensor) -> torch.Tensor:
    rest = ~(mad > 0).reshape(-1)  # rows of mostly one value (or NaN): few, so only they pay for these
    if not bool(rest.any()):
        return mad
    few = w[rest]
    std = few.std(dim=1, keepdim=True, unbiased=False)
    sigma = mad.clone()
    sigma[rest] = torch.where(std > 0, std, few.abs().amax(dim=1, keepdim=True))
    return sigma


def _rate_quantize(w: torch.Tensor, c: float, sigma: torch.Tensor | None = None):
    """(symbols uint8 [N, K], step fp16 [N, 1], flat indices of the escapes): step = c * sigma(row).
    Escapes: weights more than RATE_MAX_Q steps from zero, and NaN weights."""
    sigma = _row_sigma(w) if sigma is None else sigma
    step = (c * sigma).clamp_min(1e-8).half()
    if w.device.type == "cpu" and w.dtype == torch.float32 and w.dim() == 2:  # one C++ pass (quantize.h)
        q = torch.empty(w.shape, dtype=torch.uint8)
        escapes = _C.rate_quantize(w.contiguous().numpy(), step.float().reshape(-1).contiguous().numpy(),
                                   RATE_MAX_Q, RATE_ZERO, q.numpy())
        return q, step, torch.tensor(escapes, dtype=torch.int64)
    qf = (w / step.float()).round()
    escaped = (qf.abs() > RATE_MAX_Q) | torch.isnan(w)
    q = torch.where(escaped, torch.zeros_like(qf), qf) + RATE_ZERO
    return q.to(torch.uint8), step, escaped.reshape(-1).nonzero().reshape(-1)


RATE_SAMPLE = 1 << 17  # weights per layer the step search estimates on (all of smaller layers)


class _RateEstimate:
    """Stored bits per weight at step factor c, predicted from a sample of the layer without
    quantizing it again: the sample's w / sigma(row) values, sorted once, give the symbol counts
    at any c by a search for the 256 rounding boundaries. Counts the symbols' entropy times the
    coder's overhead, and the escapes. (The fp16 rounding of each row's step is ignored here;
    quantize_rate corrects the prediction with exact sizes.)"""

    def __init__(self, w: torch.Tensor, sigma: torch.Tensor, coder_overhead: float):
        n = w.numel()
        safe = torch.where(sigma > 0, sigma, torch.ones_like(sigma))  # zero rows: all zeros
        if n > RATE_SAMPLE:  # with replacement: indices are cheap to draw, the counts unbiased
            pick = torch.randint(n, (RATE_SAMPLE,), generator=torch.Generator().manual_seed(n))
            # w / sigma(row) at the drawn weights only: the same values as dividing the layer first
            u = w.reshape(-1)[pick] / safe.reshape(-1)[pick // w.shape[-1]]
        else:
            u = (w / safe).reshape(-1)
        # numpy's sort on the CPU: the same values, ~30x faster than torch.sort here.
        numpy_sorts = u.device.type == "cpu" and u.dtype in (torch.float32, torch.float64) and not u.requires_grad
        self.sorted = torch.from_numpy(np.sort(u.numpy())) if numpy_sorts else torch.sort(u).values.contiguous()
        self.overhead = coder_overhead
        self.levels = torch.arange(-RATE_MAX_Q - 1, RATE_MAX_Q + 1, dtype=torch.float64) + 0.5  # 255 cells' ends
        # The search calls bits_per_weight ~45 times a layer on 255 numbers: numpy does the same
        # arithmetic at a fraction of torch's per-call cost (it was 12% of rate-mode compression).
        self._sorted_np = self.sorted.numpy() if self.sorted.device.type == "cpu" else None

    def bits_per_weight(self, c: float) -> float:
        xp = np if self._sorted_np is not None else torch
        if xp is np:
            edges = np.searchsorted(self._sorted_np, (self.levels.numpy() * c).astype(self._sorted_np.dtype))
        else:
            edges = torch.searchsorted(self.sorted, (self.levels * c).to(self.sorted.dtype))
        edges = edges.astype(np.float64) if xp is np else edges.to(torch.float64)
        m = float(self.sorted.numel())
        counts = edges[1:] - edges[:-1]  # symbols -127..127
        escapes = float(edges[0]) + (m - float(edges[-1]))
        counts[RATE_MAX_Q] += escapes  # escaped weights are coded as the zero symbol
        p = counts[counts > 0] / m
        entropy = float(-(p * xp.log2(p)).sum())
        return entropy * self.overhead + escapes / m * ESCAPE_BITS


def coder_overhead(coder: str) -> float:
    """The factor rate mode's estimate (_RateEstimate) applies to the symbols' entropy to predict
    the coded bits, per coder; exact sizes correct what it misses."""
    return 1.005 if coder == "rans" else 1.03


def _solve_log(f, target: float, lo: float = 1e-3, hi: float = 64.0, steps: int = 24) -> float:
    """The smallest c in [lo, hi] (geometric bisection, to a factor (hi / lo) ^ 2^-steps) with
    f(c) <= target, f decreasing."""
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        if f(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi


@functools.lru_cache(maxsize=64)
def _constant_stream_bits(shape: tuple, coder: str, chunk_symbols: int | None) -> int:
    """The bits of a stream of one repeated symbol of this shape: what every stream of the shape
    costs besides its codes (header, table, index). Layers of a model share a few shapes."""
    return 8 * encoded_size(np.full(shape, RATE_ZERO, np.uint8), coder=coder, chunk_symbols=chunk_symbols)


def quantize_rate(w: torch.Tensor, target_bits: float, coder: str = "huffman", chunk_symbols: int | None = None):
    """Entropy-constrained uniform quantization to ``target_bits`` per weight.

    One step per output row, step = c * sigma(row) (a robust std). Everything stored counts
    (coded symbols with header, table, index and lane padding; scales; escapes), and the
    layer meets ``target_bits`` per weight: only a layer too small to ever fit (its fixed
    stream cost alone exceeds the budget) gets that fixed cost on top.

    c is searched without encoding: the entropy of the symbols of a sample of the layer
    (RATE_SAMPLE weights, _RateEstimate) predicts the stored bits at any c. The exact size at the
    predicted c (encoded_size: the stream's size without writing it) measures how far the
    prediction is off (coder overhead, layout, sampling); the corrected prediction gives the next
    c, a second size; up to two secant steps through the sizes nearest the budget take up what is
    left (the best that fits is kept, and only its stream is written). Only if none fits does it
    measure more: c grows by the excess until the layer fits.
    Returns (q, scale [N,1], zero [1,1], escape_index, escape_value, stream).
    """
    w = w.detach().float().cpu()
    n = w.numel()
    chunk_symbols = _row_chunk_symbols(w.shape[1], coder, chunk_symbols)
    overhead = coder_overhead(coder)
    fixed_bits = _constant_stream_bits(tuple(w.shape), coder, chunk_symbols)
    budget = target_bits * n
    side_bits = w.shape[0] * 16 + 16  # a step per row, the zero point
    sigma = _row_sigma(w)
    estimate = _RateEstimate(w, sigma, overhead)

    def predicted(c: float, scale: float = 1.0) -> float:  # stored bits of the whole layer
        return (estimate.bits_per_weight(c) * n + fixed_bits) * scale + side_bits

    def real(c: float):  # the exact stored bits at c: the stream's size without writing it
        q, step, escapes = _rate_quantize(w, c, sigma)
        stream_bytes = encoded_size(q.numpy(), coder=coder, chunk_symbols=chunk_symbols)
        total = stream_bytes * 8 + step.numel() * 16 + 16 + escapes.numel() * ESCAPE_BITS
        return total, (q, step, escapes)

    c1 = _solve_log(predicted, budget)
    total1, best1 = real(c1)
    correction = (total1 - side_bits) / (predicted(c1) - side_bits)  # the prediction's error near c1
    tried = {c1: (total1, best1)}
    c = _solve_log(lambda c_: predicted(c_, correction), budget, c1 / 2, c1 * 2, 20)
    for _ in range(3):  # then secant steps in log c (bits are close to linear in it), while it pays
        if c in tried:
            break
        tried[c] = real(c)
        fits = [t for t, _ in tried.values() if t <= budget]
        if fits and budget - max(fits) <= 5e-4 * budget:
            break
        under = [x for x, (t, _) in tried.items() if t <= budget]
        over = [x for x, (t, _) in tried.items() if t > budget]
        if under and over:  # the closest on either side: interpolate
            a, b = min(under), max(over)
        else:  # one side only: the two closest to the budget
            a, b = sorted(tried, key=lambda x: abs(tried[x][0] - budget))[:2]
        ta, tb = tried[a][0], tried[b][0]
        if ta == tb:
            break
        aim = budget * (1 - 2e-4)
        c = math.exp(math.log(a) + (aim - ta) * (math.log(b) - math.log(a)) / (tb - ta))
    fitting = [(t, x) for x, (t, _) in tried.items() if t <= budget]
    c = max(fitting)[1] if fitting else max(tried)
    total, best = tried[c]
    relaxed, misses = False, 0
    while total > budget:  # still over: grow c by the excess (about 1 bit per doubling), faster each time
        if c > 1e4:
            if relaxed:
                raise CodecError(f"rate mode cannot reach {target_bits} bits per weight on a {tuple(w.shape)} weight")
            relaxed, budget = True, budget + fixed_bits
            continue
        c *= 2 ** (max((total - budget) / n, 1e-3) * 2 ** misses)
        misses += 1
        total, best = real(c)
    q, step, idx = best
    stream = _stream(q.numpy(), coder, chunk_symbols)  # the one stream written
    return q, step, torch.full((1, 1), float(RATE_ZERO), dtype=torch.float16), idx, w.reshape(-1)[idx].clone(), stream


def pack_affine(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int, dtype: torch.dtype,
                escape_index: torch.Tensor | None = None, escape_value: torch.Tensor | None = None,
                coder: str = "huffman", chunk_symbols: int | None = None, stream: torch.Tensor | None = None) -> dict:
    """Packs already-quantized integer weights (ours, or GPTQ/AWQ-style ones) losslessly."""
    if q.dtype != torch.uint8 or q.dim() != 2:
        raise CodecError(f"integer weights must be a uint8 [N, K] tensor, got {q.dtype} {tuple(q.shape)}")
    n, k = q.shape
    g = math.ceil(k / group_size)
    if tuple(scale.shape) != (n, g) or tuple(zero.shape) not in ((n, g), (1, 1)):
        raise CodecError(f"scale must be [{n}, {g}] and zero [{n}, {g}] or [1, 1] for group_size {group_size}; "
                         f"got {tuple(scale.shape)} and {tuple(zero.shape)}")
    if stream is None:
        stream = _stream(q.contiguous().numpy(), coder, _row_chunk_symbols(k, coder, chunk_symbols))
    return {
        "meta": _meta(KIND_AFFINE, n, k, group_size, dtype),
        "symbols": stream,
        "scale": scale.to(torch.float16).contiguous(),
        "zero": zero.to(torch.float16).contiguous(),
        "escape_index": (escape_index if escape_index is not None else torch.zeros(0)).to(torch.int64),
        "escape_value": (escape_value if escape_value is not None else torch.zeros(0)).to(torch.float32),
    }


def compress_weight(w: torch.Tensor, config) -> tuple[dict, LayerStats]:
    """Compress one 2-D weight according to a CompressionConfig."""
    if config.mode == "lossless":
        if config.lossless_split == "fixed12":
            if w.dtype == torch.bfloat16:
                return pack_fixed12(w)
            # fixed12 codes bf16's top byte; an fp16 top byte holds mantissa bits, an fp32 weight 24 raw
            return pack_lossless(w, config.coder, config.chunk_symbols, "byte")
        return pack_lossless(w, config.coder, config.chunk_symbols, config.lossless_split)
    dtype = w.dtype
    w32 = w.detach().float().cpu()  # once: the bf16 -> fp32 copy of a large layer is not free
    wf = _prune(w32, config.prune)
    if config.mode == "int":
        # NaN and infinite weights are escapes, kept exactly, as in rate mode; quantized as 0 (the
        # zero point, so they decode to 0 under the escape, as the kernels assume), they leave
        # their groups' scales to the other weights (a NaN used to make its whole group NaN).
        idx = val = None
        bad = ~torch.isfinite(wf)
        if bool(bad.any()):
            idx = bad.reshape(-1).nonzero().reshape(-1)
            val = wf.reshape(-1)[idx].clone()
            wf = torch.where(bad, torch.zeros_like(wf), wf)
        q, scale, zero = quantize_int(wf, int(config.bits), config.group_size, config.symmetric)
        packed = pack_affine(q, scale, zero, config.group_size, dtype, idx, val, coder=config.coder,
                             chunk_symbols=config.chunk_symbols)
        side_entropy = (scale.numel() + zero.numel()) * 16 + (0 if idx is None else idx.numel() * ESCAPE_BITS)
    else:
        q, scale, zero, idx, val, stream = quantize_rate(wf, config.bits, config.coder, config.chunk_symbols)
        packed = pack_affine(q, scale, zero, wf.shape[1], dtype, idx, val, stream=stream)
        side_entropy = (scale.numel() + zero.numel()) * 16 + idx.numel() * ESCAPE_BITS
    w_hat = unpack(packed)
    stats = LayerStats(w.numel(), packed_bits(packed), _symbol_entropy_bits(q) + side_entropy,
                       sqnr_db(w32, w_hat))
    return packed, stats


def unpack(packed: dict, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Decode a packed weight on the CPU: original dtype for lossless; affine weights in ``dtype``
    (default fp32), the values of dequantize_affine(...).to(dtype)."""
    meta = packed["meta"].tolist()
    if meta[0] != LAYOUT_VERSION:
        raise CodecError(f"packed weight layout version {meta[0]} is not supported (expected {LAYOUT_VERSION})")
    kind, n, k, group_size, dtype_code, n_planes = meta[1:7]
    if dtype_code not in CODE_DTYPES:
        raise CodecError(f"packed weight has unknown dtype code {dtype_code}")
    if kind == KIND_SPLIT:
        return _unpack_split(packed, n, k, n_planes, CODE_DTYPES[dtype_code])
    if kind == KIND_FIXED:
        return _unpack_fixed12(packed, n, k, n_planes, CODE_DTYPES[dtype_code])
    if kind == KIND_LOSSLESS:
        flags = packed["plane_coded"].tolist()
        if len(flags) != n_planes:
            raise CodecError("packed weight: plane_coded does not match the plane count")
        planes = []
        for i, coded in enumerate(flags):
            buf = packed[f"plane{i}"].contiguous().numpy()
            plane = decode(buf).reshape(-1) if coded else buf
            if plane.size != n * k:
                raise CodecError(f"packed weight: plane{i} holds {plane.size} values, expected {n * k}")
            planes.append(plane)
        return _planes_to_float(planes, CODE_DTYPES[dtype_code], (n, k))
    if kind == KIND_AFFINE:
        q = torch.from_numpy(decode(packed["symbols"].contiguous().numpy()))
        if tuple(q.shape) != (n, k):
            raise CodecError(f"packed weight: symbols have shape {tuple(q.shape)}, expected {(n, k)}")
        idx = _escape_index(packed, n * k)
        return dequantize_affine_as(q, packed["scale"], packed["zero"], group_size, idx, packed["escape_value"],
                                    torch.float32 if dtype is None else dtype)
    raise CodecError(f"packed weight has unknown kind {kind}")


def _escape_index(packed: dict, size: int) -> torch.Tensor:
    """The escape indices of an affine packed weight of ``size`` weights, checked to lie inside it."""
    idx = packed["escape_index"]
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= size):
        raise CodecError("packed weight: escape index outside the weight")
    return idx


def _chunked_stream(packed: dict, n: int, k: int) -> tuple[np.ndarray, int]:
    """(symbols blob, symbols per chunk) of a packed weight whose stream must hold n x k symbols."""
    blob = packed["symbols"].contiguous().numpy()
    info = _C.info(blob)
    if tuple(info["shape"]) != (n, k):
        raise CodecError(f"packed weight: symbols have shape {tuple(info['shape'])}, expected {(n, k)}")
    return blob, info["chunk_symbols"]


def unpack_rows(packed: dict, rows: torch.Tensor) -> torch.Tensor:
    """Rows ``rows`` (int64, any order, repeats allowed) of a packed weight, decoding only the
    chunks of its stream that hold them: an embedding lookup of a few tokens reads a few chunks,
    not the table. Same dtypes as ``unpack``. (Legacy byte-plane weights decode whole.)"""
    meta = packed["meta"].tolist()
    if meta[0] != LAYOUT_VERSION:
        raise CodecError(f"packed weight layout version {meta[0]} is not supported (expected {LAYOUT_VERSION})")
    kind, n, k, group_size, dtype_code, top = meta[1:7]
    rows = rows.reshape(-1).to(torch.int64)
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n):
        raise IndexError(f"row index out of range for a weight of {n} rows")
    if kind not in (KIND_SPLIT, KIND_AFFINE, KIND_FIXED):
        return unpack(packed)[rows]
    if dtype_code not in CODE_DTYPES:
        raise CodecError(f"packed weight has unknown dtype code {dtype_code}")
    if kind == KIND_FIXED:
        codes, low, idx, bits = fixed12_parts(packed, n, k, top, CODE_DTYPES[dtype_code])
        out = np.empty(rows.numel() * k, dtype=np.uint16)
        _C.fixed12_decode_rows(codes.numpy(), low.numpy(), top, k, rows.contiguous().numpy(), out)
        w = torch.from_numpy(out.view(np.int16)).view(rows.numel(), k)
        _patch_row_escapes(w, rows, k, idx, bits)
        return w.view(torch.bfloat16)
    blob, chunk = _chunked_stream(packed, n, k)
    # Flat symbol positions of the rows, the chunks that hold them, and where each position
    # lands in the buffer of those chunks decoded one after another.
    positions = rows[:, None] * k + torch.arange(k)
    chunk_ids = torch.unique(positions // chunk) if rows.numel() else torch.zeros(0, dtype=torch.int64)
    slots = torch.searchsorted(chunk_ids, positions // chunk) * chunk + positions % chunk
    ids = chunk_ids.tolist()
    if kind == KIND_SPLIT:
        dtype = CODE_DTYPES[dtype_code]
        width = FLOAT_WIDTHS[dtype]
        out = np.empty(len(ids) * chunk, dtype=_BITS_VIEW[width][1])
        _C.decode_split_chunks(blob, ids, packed["values"].tolist(), top, packed["raw"].contiguous().numpy(), out)
        bits = torch.from_numpy(out.view(np.int16 if width == 16 else np.int32))
        return bits[slots].view(dtype)
    out = np.empty(len(ids) * chunk, dtype=np.uint8)
    _C.decode_chunks(blob, ids, out)
    q = torch.from_numpy(out)[slots]
    scale, zero = packed["scale"][rows], packed["zero"]
    zero = zero[rows] if zero.shape[0] == n else zero
    w = dequantize_affine(q, scale, zero, group_size)
    _patch_row_escapes(w, rows, k, _escape_index(packed, n * k), packed["escape_value"].float())
    return w


def _patch_row_escapes(w: torch.Tensor, rows: torch.Tensor, k: int, idx: torch.Tensor, values: torch.Tensor) -> None:
    """w[i] = the escape values of rows[i] (w: [len(rows), k]; idx: flat indices into the weight)."""
    if not idx.numel():
        return
    order = torch.argsort(idx)
    sorted_idx, values = idx[order], values[order]
    # Escapes of each requested row: the sorted flat indices in [row * k, row * k + k).
    lo = torch.searchsorted(sorted_idx, rows * k)
    hi = torch.searchsorted(sorted_idx, rows * k + k)
    counts = hi - lo
    if int(counts.sum()):
        out_row = torch.repeat_interleave(torch.arange(rows.numel()), counts)
        starts = torch.repeat_interleave(lo - torch.cumsum(counts, 0) + counts, counts)
        pick = starts + torch.arange(int(counts.sum()))
        w[out_row, sorted_idx[pick] % k] = values[pick]


def matvec_args(packed: dict) -> tuple | None:
    """What ``_C.affine_matvec`` takes of an affine packed weight: (blob, n, k, group_size, scale,
    zero, escape_index, escape_value, tables), numpy views of the packed tensors as stored (fp16
    scale and zero, int64 indices, fp32 values; a copy only of one stored otherwise) and a
    ``_C.StreamTables`` that keeps the stream's decode tables between calls, so a caller may keep
    them as long as the tensors. None when the stream is not in chunks of whole rows (a caller's
    own chunk_symbols)."""
    meta = packed["meta"].tolist()
    if meta[0] != LAYOUT_VERSION or meta[1] != KIND_AFFINE:
        raise CodecError("affine_matvec takes an affine packed weight")
    n, k, group_size = meta[2:5]
    blob = packed["symbols"].contiguous().numpy()
    if _C.info(blob)["chunk_symbols"] % k:
        return None

    def as_stored(t: torch.Tensor, dtype: torch.dtype):
        return t.to(dtype).contiguous().numpy()

    scale, zero = packed["scale"], packed["zero"]
    half = scale.dtype == zero.dtype == torch.float16
    grid = torch.float16 if half else torch.float32
    return (blob, n, k, group_size, as_stored(scale, grid), as_stored(zero, grid),
            as_stored(packed["escape_index"], torch.int64), as_stored(packed["escape_value"], torch.float32),
            _C.StreamTables())


def affine_matvec(packed: dict | None, x: torch.Tensor, args: tuple | None = None) -> torch.Tensor | None:
    """x @ W^T in fp32 ([batch, n]) for an affine packed weight W and CPU activations x [batch, k],
    without W in memory: each stream chunk (whole rows) is decoded, dequantized to fp32 and
    multiplied by x in a per-thread buffer (``_C.affine_matvec``, codec.h), so the cost is the
    symbol decode. ``args``: matvec_args(packed), if the caller keeps them. None when the stream
    is not in chunks of whole rows: the caller then takes the row-block path. The C++ core
    checks the stream's shape and the escape indices; this runs once per CPU forward, so it does
    no more."""
    args = matvec_args(packed) if args is None else args
    if args is None:
        return None
    n, k = args[1], args[2]
    x32 = x.detach().reshape(-1, k).to(torch.float32).contiguous()
    y = torch.empty(x32.shape[0], n, dtype=torch.float32)
    _C.affine_matvec(*args[:8], x32.numpy(), y.numpy(), tables=args[8])
    return y


def affine_row_blocks(packed: dict, block_rows: int, dtype: torch.dtype = torch.float32):
    """(first row, rows in dtype) of an affine packed weight, ``block_rows`` rows at a time, each
    block decoded (only the stream chunks that hold it) and dequantized as it is asked for:
    neither the symbols nor the weight ever exist whole."""
    meta = packed["meta"].tolist()
    kind, n, k, group_size = meta[1:5]
    if meta[0] != LAYOUT_VERSION or kind != KIND_AFFINE:
        raise CodecError("affine_row_blocks takes an affine packed weight")
    blob, chunk = _chunked_stream(packed, n, k)
    idx = _escape_index(packed, n * k)
    order = torch.argsort(idx)
    sorted_idx, values = idx[order], packed["escape_value"][order]
    zero = packed["zero"]
    for first in range(0, n, block_rows):
        end = min(n, first + block_rows)
        c0, c1 = first * k // chunk, (end * k - 1) // chunk + 1
        symbols = np.empty((c1 - c0) * chunk, dtype=np.uint8)
        _C.decode_chunks(blob, list(range(c0, c1)), symbols)
        skip = first * k - c0 * chunk
        q = torch.from_numpy(symbols[skip:skip + (end - first) * k]).view(end - first, k)
        lo, hi = (int(v) for v in torch.searchsorted(sorted_idx, torch.tensor([first * k, end * k])))
        block_zero = zero[first:end] if zero.shape[0] == n else zero
        yield first, dequantize_affine_as(q, packed["scale"][first:end], block_zero, group_size,
                                          sorted_idx[lo:hi] - first * k, values[lo:hi], dtype)
