"""CUDA path of CompressedLinear: decode the symbols on the GPU, then a Triton dequant-matmul.

Dispatch (one place):
  affine (int / rate)      bf16 x, M <= 8 and chunks of whole rows (gemv_affine_supported):
                           pycodec::gemv_affine, the fused decode + dequant + GEMV kernel (the
                           symbols never reach global memory); else the symbols are decoded into a
                           per-call buffer and M <= 16: affine_gemv (split-K, CUDA cores), else
                           affine_matmul. Escapes are added afterwards on both paths.
  lossless bf16            planes decoded on the GPU, weight rebuilt (bf16_reconstruct), cuBLAS F.linear:
                           bitwise the same output as the uncompressed nn.Linear
  anything else            (fp16/fp32 lossless, groups that do not divide K) weight decoded by the
                           CPU core (pycodec::decode_weight), then F.linear

Streams stay where the module keeps them: index and payload are int32 views into the
device blob, and only the 16 KiB decode table is uploaded, once per tensor.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _C
from .codec import CodecError
from .cuda_ops import GEMV_MAX_BATCH as FUSED_MAX_BATCH
from .cuda_ops import decode_symbols, gemv_affine, gemv_affine_supported, stream_layout
from .quant import CODE_DTYPES, KIND_AFFINE, KIND_LOSSLESS

GEMV_MAX_BATCH = 16


def _require_gpu_build() -> None:
    if not _C.cuda_compiled():
        raise CodecError("this pycodec build has no CUDA kernels (nvcc was not found at build time); "
                         "rebuild with nvcc on PATH or run the model on the CPU")


def _stream_view(buf: torch.Tensor) -> dict:
    """Device views of one stream held in a uint8 device tensor (cached on the tensor)."""
    cached = getattr(buf, "_pycodec_stream", None)
    if cached is not None:
        return cached
    s = stream_layout(buf.detach().cpu().numpy())
    words = buf.detach()
    view = dict(s, index=words[s["index_offset"]:s["payload_offset"]].view(torch.int32),
                payload=words[s["payload_offset"]:].view(torch.int32), table=s["table"].to(buf.device))
    buf._pycodec_stream = view
    return view


def _decode(buf: torch.Tensor) -> torch.Tensor:
    v = _stream_view(buf)
    out = decode_symbols(v["index"], v["payload"], v["table"], v["coder"], v["n_symbols"], v["chunk_symbols"])
    return out.view(v["shape"])


def _fused_gemv(x2: torch.Tensor, packed: dict, n: int, k: int, group_size: int) -> torch.Tensor | None:
    """y = x2 @ W.T through pycodec::gemv_affine (fp32, no escapes), or None when it does not apply."""
    m = x2.shape[0]
    if x2.dtype != torch.bfloat16 or not 1 <= m <= FUSED_MAX_BATCH:
        return None
    v = _stream_view(packed["symbols"])
    if not gemv_affine_supported(v["n_symbols"], v["chunk_symbols"], group_size, n, k, m):
        return None
    return gemv_affine(v["index"], v["payload"], v["table"], v["coder"], v["n_symbols"], v["chunk_symbols"],
                       packed["scale"], packed["zero"], group_size, x2)


def _host_list(t: torch.Tensor) -> list:
    """A small device tensor's values, copied to the host once (cached on the tensor)."""
    cached = getattr(t, "_pycodec_values", None)
    if cached is None:
        cached = t.tolist()
        t._pycodec_values = cached
    return cached


def _apply_escapes(y: torch.Tensor, x: torch.Tensor, packed: dict, k: int) -> torch.Tensor:
    idx = packed["escape_index"]
    if idx.numel() == 0:
        return y
    rows, cols = idx // k, idx % k
    contrib = x[..., cols].float() * packed["escape_value"].to(x.device)
    return y.float().index_add_(-1, rows, contrib).to(y.dtype)


def compressed_linear(x: torch.Tensor, packed: dict, bias: torch.Tensor | None) -> torch.Tensor:
    _require_gpu_build()
    from triton_kernels import affine_gemv, affine_matmul, bf16_reconstruct

    _, kind, n, k, group_size, dtype_code, n_planes, _ = _host_list(packed["meta"])
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if kind == KIND_AFFINE and k % group_size == 0:
        y = _fused_gemv(x2, packed, n, k, group_size)  # fp32; escapes then go in before the one rounding
        if y is None:
            q = _decode(packed["symbols"])
            kernel = affine_gemv if x2.shape[0] <= GEMV_MAX_BATCH else affine_matmul
            y = kernel(x2, q, packed["scale"], packed["zero"], group_size)
        y = _apply_escapes(y, x2, packed, k).to(x.dtype)
    elif kind == KIND_LOSSLESS and CODE_DTYPES[dtype_code] == torch.bfloat16:
        # Rebuild the exact weight and use the same cuBLAS matmul as nn.Linear: outputs stay
        # bitwise identical to the uncompressed model (bf16_matmul's accumulation order differs).
        coded = _host_list(packed["plane_coded"])
        planes = [(_decode(packed[f"plane{i}"]) if coded[i] else packed[f"plane{i}"]).view(n, k) for i in range(2)]
        y = F.linear(x2, bf16_reconstruct(planes[0], planes[1]).to(x.dtype))
    else:
        from .nn import decode_weight

        names = list(packed)
        w = decode_weight([packed[nm] for nm in names], n, k, x.dtype)
        y = F.linear(x2, w)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.reshape(*lead, n)
