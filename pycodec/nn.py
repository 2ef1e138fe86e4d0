"""CompressedLinear: a drop-in nn.Linear whose weight stays entropy-coded in memory.

State lives in registered buffers of plain dtypes (see pycodec.quant for the packed
layout), so ``state_dict()`` and safetensors work without pickle. On a GPU ``forward`` runs
the fused decode + GEMV kernels straight from the coded bytes; on the CPU it decodes the
weight each call (``cache_decoded=True`` keeps the decoded weight instead, and
``pycodec.cache_decoded(model, max_bytes)`` keeps those of a whole model within a budget).
The forward is the torch.library op ``pycodec::compressed_linear`` (schema + fake), so
``torch.compile`` traces through it.

What the GPU path reads besides the packed buffers (pycodec.gpu: WeightInfo and the kernel
buffers: decode tables, value entries, escapes) is built on the host when the module is made,
loaded or moved, and kept in non-persistent buffers that follow the module across devices.
``forward`` therefore never reads device memory from the host, and CUDA graphs capture it.
Packed tensors keep their dtypes through ``model.to(dtype)`` / ``.half()``: their bits are
the format.
"""
from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from . import _C, cuda_ops, gpu
from .codec import CodecError
from .attention import CompressedMultiheadAttention, compress_attention
from .experts import CompressedExperts, compress_experts
from .quant import KIND_AFFINE, KIND_FIXED, KIND_LOSSLESS, KIND_SPLIT, LayerStats, compress_weight, unpack
from .weight_view import DecodedOnUse

AFFINE_BUFFERS = ("meta", "symbols", "scale", "zero", "escape_index", "escape_value")
SPLIT_BUFFERS = ("meta", "symbols", "values", "raw")
FIXED_BUFFERS = ("meta", "codes", "low", "escape_index", "escape_bits")
# dtype of every packed buffer, by name (planes are plane0..plane3): lets a loader build
# empty modules from shapes alone, before any tensor is read.
BUFFER_DTYPES = {"meta": torch.int64, "symbols": torch.uint8, "scale": torch.float16, "zero": torch.float16,
                 "escape_index": torch.int64, "escape_value": torch.float32, "plane_coded": torch.uint8,
                 "values": torch.int32, "raw": torch.uint8, "codes": torch.uint8, "low": torch.uint8,
                 "escape_bits": torch.int16}


def buffer_dtype(name: str) -> torch.dtype:
    return torch.uint8 if name.startswith("plane") else BUFFER_DTYPES[name]


def buffer_names(meta: torch.Tensor) -> tuple[str, ...]:
    """The op's fixed order of packed tensors for a layout (meta first)."""
    return names_for(int(meta[1]), int(meta[6]))


def names_for(kind: int, n_planes: int) -> tuple[str, ...]:
    if kind == KIND_AFFINE:
        return AFFINE_BUFFERS
    if kind == KIND_SPLIT:
        return SPLIT_BUFFERS
    if kind == KIND_FIXED:
        return FIXED_BUFFERS
    if kind == KIND_LOSSLESS:
        return ("meta", "plane_coded") + tuple(f"plane{i}" for i in range(n_planes))
    raise CodecError(f"unknown packed weight kind {kind}")


def _decode_on_cpu(packed: list[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """The dense weight, decoded by the C++ core: original dtype for lossless; affine weights in
    ``dtype`` (default fp32), dequantized straight into it."""
    meta = packed[0].cpu()
    return unpack({k: v.cpu() for k, v in zip(buffer_names(meta), packed)}, dtype)


@torch.library.custom_op("pycodec::compressed_linear", mutates_args=())
def compressed_linear(x: torch.Tensor, packed: list[torch.Tensor], kernel: list[torch.Tensor],
                      bias: torch.Tensor | None, info: list[int], out_features: int) -> torch.Tensor:
    """y = x W^T + b. info: pycodec.gpu.WeightInfo.ints; kernel: its kernel buffers (on x's device)."""
    if x.is_cuda:
        wi = gpu.WeightInfo.from_ints(info)
        return gpu.linear(x, dict(zip(names_for(wi.kind, wi.top), packed)), dict(zip(gpu.KERNEL_BUFFERS, kernel)),
                          bias, wi)
    return _cpu_linear(x, packed, bias, info, out_features)


def _matvec_output(y: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    """quant.affine_matvec's fp32 [rows, n] as the layer's output: bias added, x's dtype and shape."""
    if bias is not None:
        y += bias
    return y.to(x.dtype).reshape(*x.shape[:-1], out_features)


def _cpu_linear(x: torch.Tensor, packed: list[torch.Tensor], bias: torch.Tensor | None, info: list[int],
                out_features: int) -> torch.Tensor:
    """compressed_linear on the CPU."""
    kind, n, k = info[:3]  # gpu.WeightInfo.ints: host facts, no tensor reads
    if kind == KIND_AFFINE and n * k > 0:
        from .quant import affine_matvec, affine_row_blocks

        named = dict(zip(AFFINE_BUFFERS, packed))
        if 0 < x.numel() <= CPU_MATVEC_MAX_ROWS * k:
            # A few rows of activations (generating tokens): the weight is decoded chunk by
            # chunk and multiplied where it is decoded, on pycodec's threads, no weight in memory.
            y = affine_matvec(named, x)
            if y is not None:
                return _matvec_output(y, x, bias, out_features)
        bias = None if bias is None else bias.to(x.dtype)
        # In row blocks dequantized straight into x's dtype: a large weight (an output head)
        # never exists whole, only one block at a time.
        if n * k <= CPU_BLOCK_WEIGHTS:
            (_, w), = affine_row_blocks(named, n, x.dtype)
            return F.linear(x, w, bias)
        y = x.new_empty((*x.shape[:-1], out_features))
        for first, block in affine_row_blocks(named, max(1, CPU_BLOCK_WEIGHTS // k), x.dtype):
            end = first + block.shape[0]
            y[..., first:end] = F.linear(x, block, None if bias is None else bias[first:end])
        return y
    w = _decode_on_cpu(packed, x.dtype).to(x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


# Above this many weights, the CPU forward of an affine weight dequantizes it by row blocks.
CPU_BLOCK_WEIGHTS = 1 << 20
# Up to this many rows of activations, the CPU forward of an affine weight multiplies each chunk
# where it is decoded (quant.affine_matvec); more rows amortize a dequantized block and a GEMM.
CPU_MATVEC_MAX_ROWS = 8


@compressed_linear.register_fake
def _(x, packed, kernel, bias, info, out_features):
    return x.new_empty((*x.shape[:-1], out_features))


@torch.library.custom_op("pycodec::decode_weight", mutates_args=())
def decode_weight(packed: list[torch.Tensor], out_features: int, in_features: int, dtype: torch.dtype) -> torch.Tensor:
    """The dense [out_features, in_features] weight of a packed layout (an op, so traces stay opaque)."""
    return _decode_on_cpu(packed, dtype).to(device=packed[1].device, dtype=dtype)


@decode_weight.register_fake
def _(packed, out_features, in_features, dtype):
    return packed[1].new_empty((out_features, in_features), dtype=dtype)


@torch.library.custom_op("pycodec::embedding_rows", mutates_args=())
def embedding_rows(packed: list[torch.Tensor], idx: torch.Tensor, embedding_dim: int, dtype: torch.dtype) -> torch.Tensor:
    """weight[idx] of a packed [num_embeddings, embedding_dim] weight, decoding only the stream
    chunks that hold the rows asked for (on the host; the rows then go to idx's device)."""
    from .quant import unpack_rows

    meta = packed[0].cpu()
    flat = idx.reshape(-1).cpu()
    unique, inverse = torch.unique(flat, return_inverse=True)
    rows = unpack_rows({k: v.cpu() for k, v in zip(buffer_names(meta), packed)}, unique).to(dtype)
    return rows[inverse].reshape(*idx.shape, embedding_dim).to(idx.device)


@embedding_rows.register_fake
def _(packed, idx, embedding_dim, dtype):
    return idx.new_empty((*idx.shape, embedding_dim), dtype=dtype)


def _setup_context(ctx, inputs, output):
    x, packed, kernel, bias, info, out_features = inputs
    ctx.packed = packed
    ctx.shape = (out_features, x.shape[-1])
    ctx.has_bias = bias is not None
    ctx.n_kernel = len(kernel)


def _backward(ctx, grad):
    # The weight is frozen (it lives in buffers); gradients flow to the input and the bias,
    # so a compressed base model can carry trainable adapters.
    w = decode_weight(ctx.packed, ctx.shape[0], ctx.shape[1], grad.dtype)
    grad_x = grad @ w
    grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias else None
    return grad_x, [None] * len(ctx.packed), [None] * ctx.n_kernel, grad_bias, None, None


compressed_linear.register_autograd(_backward, setup_context=_setup_context)


class DecodedCache:
    """Decoded weights that CPU forwards keep for reuse, within ``max_bytes`` (None: no limit).

    A fixed resident set, not an LRU: a forward visits every layer in the same order, so an
    LRU smaller than the model would evict each weight just before its next use and save
    nothing. Here the weights that fit stay decoded; the others decode on every call. Use it
    as a context manager (``with pycodec.cache_decoded(model): model.generate(...)``) to free
    the decoded weights afterwards, or call ``close()``.
    """

    def __init__(self, max_bytes: int | None = None):
        if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 0):
            raise ValueError(f"max_bytes must be a non-negative int or None, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._held: dict[int, int] = {}  # id(module) -> bytes of its decoded weight
        self._holders: dict[tuple, nn.Module] = {}  # _packed_key -> the module that decoded it
        self._modules: list[nn.Module] = []

    @property
    def bytes(self) -> int:
        return sum(self._held.values())

    def admit(self, module: nn.Module, size: int) -> bool:
        """Whether ``module``'s decoded weight of ``size`` bytes is kept (counted if so)."""
        others = self.bytes - self._held.get(id(module), 0)
        if self.max_bytes is not None and others + size > self.max_bytes:
            return False
        self._held[id(module)] = size
        self._holders[_packed_key(module)] = module
        return True

    def release(self, module: nn.Module) -> None:
        self._held.pop(id(module), None)
        self._holders = {k: m for k, m in self._holders.items() if m is not module}

    def twin_of(self, module: nn.Module, device: torch.device) -> torch.Tensor | None:
        """The decoded weight of another module with the same packed tensors (a tied lm_head and
        its embedding), if one is held on ``device``: shared, and counted once. One lookup: a
        forward asks this of every layer the cache has no room for."""
        key = _packed_key(module)
        m = self._holders.get(key)
        w = None if m is None or m is module else m._decoded
        if w is None or w.device != device or _packed_key(m) != key:
            return None
        self._held[id(module)] = 0
        return w

    def report(self) -> dict:
        return {"max_bytes": self.max_bytes, "bytes": self.bytes, "layers_cached": len(self._held),
                "layers": len(self._modules)}

    def close(self) -> None:
        for m in self._modules:
            m._drop_decoded()
            m._decoded_cache = None
        self._modules = []

    def __enter__(self) -> "DecodedCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cache_decoded(model: nn.Module, max_bytes: int | None = None) -> DecodedCache:
    """Keep the decoded weights of ``model``'s compressed modules between CPU forwards, up to
    ``max_bytes`` of them (None: all, i.e. each weight is decoded once). GPU forwards are not
    affected: they decode inside the fused kernels. Returns the cache (report(), close())."""
    cache = DecodedCache(max_bytes)
    for m in model.modules():
        if isinstance(m, _DecodedWeight):
            if m._decoded_cache is not None:
                m._decoded_cache.close()
            m._drop_decoded()
            m._decoded_cache = cache
            cache._modules.append(m)
    return cache


# A tied lm_head and its embedding hold the same packed tensors. nn.Module._apply converts each
# module's buffers on its own, which would give each module its own copy on the device. One
# conversion (``model.to(...)`` passes one function to every module) moves a shared packed
# tensor once: the last conversion's results are kept here, by id(source), as weak references
# checked against the source so that a reused id is never mistaken for the tensor.
_MOVES: dict = {"fn": None, "moved": {}}


def _move_once(t: torch.Tensor, fn, convert) -> torch.Tensor:
    """convert(t), or what it gave for this very tensor within the same conversion ``fn``."""
    current = _MOVES["fn"]
    if current is None or current() is not fn:  # a new conversion: the last one's results go
        try:
            _MOVES["fn"], _MOVES["moved"] = weakref.ref(fn), {}
        except TypeError:  # a builtin (no weak references): converted without sharing
            _MOVES["fn"], _MOVES["moved"] = None, {}
            return convert(t)
    moved = _MOVES["moved"]
    hit = moved.get(id(t))
    if hit is not None and hit[0]() is t and hit[1]() is fn and hit[2]() is not None:
        return hit[2]()
    out = convert(t)
    moved[id(t)] = (weakref.ref(t), weakref.ref(fn), weakref.ref(out))  # fn too: another thread's conversion
    return out


def _apply_packed_once(module: nn.Module, fn, recurse: bool) -> dict:
    """nn.Module._apply for a compressed module: its packed tensors go through _move_once and
    keep their dtypes (their bits are the format; a model-wide cast must not touch them).
    Returns the packed tensors as they were before."""
    before = {n: module._buffers[n] for n in module._names if module._buffers.get(n) is not None}
    ids = {id(t) for t in before.values()}
    streams = {id(t) for n, t in before.items() if n in _SLACK_BUFFERS}

    def keep_dtype(t):
        out = fn(t)
        out = out if out.dtype == t.dtype else t.to(out.device)
        # The kernels read past a stream's end: its slack comes with the move, so that modules
        # sharing the stream (a tied embedding and lm_head) share the padded tensor too.
        return cuda_ops.with_slack(out) if id(t) in streams and _wants_slack(out) else out

    nn.Module._apply(module, lambda t: _move_once(t, fn, keep_dtype) if id(t) in ids else fn(t), recurse)
    return before


# Packed tensors the GPU kernels read past the end of (cuda_ops.SLACK_BYTES).
_SLACK_BUFFERS = ("symbols", "raw")


def _wants_slack(t: torch.Tensor) -> bool:
    return t.is_cuda


# Packed tensors are as long as their weight's code: loading another weight's state can change
# their shapes, which nn.Module's loading refuses. _fit_packed_shapes gives a module's packed
# buffers the shapes of the state it loads first. A buffer shared by modules (a tied embedding
# and lm_head) gets one new tensor for all of them, so they stay tied: torch hands each module
# its own filtered copy of the state dict, so the new tensors are kept here by id(old buffer),
# as weak references checked like _MOVES', and dropped once either is gone.
_RESIZES: dict = {}


def _fit_packed_shapes(module: nn.Module, state_dict, prefix: str) -> None:
    for key in [k for k, (old, new) in _RESIZES.items() if old() is None or new() is None]:
        del _RESIZES[key]
    for name in module._names:
        own, incoming = module._buffers.get(name), state_dict.get(prefix + name)
        if own is None or not isinstance(incoming, torch.Tensor) or incoming.shape == own.shape:
            continue
        hit = _RESIZES.get(id(own))
        fitted = hit[1]() if hit is not None and hit[0]() is own else None
        if fitted is None or fitted.shape != incoming.shape:
            fitted = torch.empty(incoming.shape, dtype=own.dtype, device=own.device)
            _RESIZES[id(own)] = (weakref.ref(own), weakref.ref(fitted))
        module._buffers[name] = fitted


def _packed_key(module: nn.Module) -> tuple:
    meta = module.meta
    return meta.untyped_storage().data_ptr(), meta.storage_offset()


class _DecodedWeight:
    """The decoded weight a compressed module keeps between forwards: always with
    ``cache_decoded=True``, else within its model's DecodedCache budget, on the CPU."""

    _decoded: torch.Tensor | None = None
    _decoded_cache: DecodedCache | None = None
    # {buffer: (tensor name, checksum, file, checksum algorithm)} left by a memory-mapped load
    # (hub.from_pretrained mmap=True): checked on first use, so that loading reads nothing.
    _unchecked: dict | None = None

    def verify(self, tensors: dict | None = None) -> None:
        """Checks the packed tensors (or ``tensors``, the same by name) against the checksums
        saved with them, and decodes once any stream that had none; a no-op once done. A
        mismatch raises CodecError naming the tensor."""
        pending, self._unchecked = self._unchecked, None
        if not pending:
            return
        from .hub import check_tensor, verify_streams

        tensors = tensors or self.packed()
        try:
            for buffer, (key, expected, path, algorithm) in pending.items():
                check_tensor(key, tensors[buffer], expected, path, algorithm)
            prefix = next(iter(pending.values()))[0].rpartition(".")[0]
            verify_streams({f"{prefix}.{b}": t.cpu() for b, t in tensors.items()},
                           checked={key for key, *_ in pending.values()})
        except CodecError:
            self._unchecked = pending  # still unchecked: every later use raises too
            raise

    @property
    def weight(self) -> torch.Tensor:
        """The weight for code that reads a module's ``.weight`` instead of calling it
        (pycodec.weight_view): its shape, dtype and device, decoded by each operation on it."""
        stand_in = self.__dict__.get("_load_stand_in")  # hf.py, while transformers loads
        if stand_in is not None:
            return stand_in
        if self.meta.is_meta:  # a skeleton not yet loaded: its dtype is in the tensors to come
            return torch.empty(self._weight_shape(), device="meta")
        return DecodedOnUse(self)

    def _weight_meta(self) -> tuple[tuple, torch.dtype, torch.device]:
        return self._weight_shape(), self.weight_dtype, self.meta.device

    def _weight_in_use(self) -> torch.Tensor:
        """The decoded weight as ``.weight`` shows it: the one kept, else decoded now."""
        device = self.meta.device
        w = self._weight_for(device) if self._uses_decoded(device) else None
        return self.decoded_weight().to(device) if w is None else w

    def _uses_decoded(self, device: torch.device) -> bool:
        return bool(getattr(self, "cache_decoded", False)) or (self._decoded_cache is not None and
                                                                device.type == "cpu")

    def _weight_for(self, device: torch.device) -> torch.Tensor | None:
        """The decoded weight on ``device``, kept from an earlier call or decoded now and kept;
        None when the DecodedCache has no room for it. The caller then works from the packed
        weight (a linear dequantizes it block by block into the input's dtype, an embedding
        decodes the rows it looks up), which is faster than decoding it whole to drop it."""
        w = self._decoded
        if w is not None and w.device == device:
            return w
        cache = self._decoded_cache
        if cache is not None and (twin := cache.twin_of(self, device)) is not None:
            self._decoded = twin
            return twin
        if not getattr(self, "cache_decoded", False):
            if cache is None or not cache.admit(self, self._dense_numel() * self.weight_dtype.itemsize):
                return None
        self._decoded = self.decoded_weight().to(device)
        return self._decoded

    def _drop_decoded(self) -> None:
        """Forgets the decoded weight (its packed tensors were loaded or moved)."""
        self._decoded = None
        if self._decoded_cache is not None:
            self._decoded_cache.release(self)


class _PackedModule(_DecodedWeight, nn.Module):
    """Keeps packed tensors' dtypes through module-wide casts, and the GPU path's host-built state
    (WeightInfo, kernel buffers, slack after the streams) correct across moves and loads."""

    _names: tuple
    _info: "gpu.WeightInfo | None"

    # quant.matvec_args of the packed tensors, kept between CPU forwards as (the tensors, args):
    # views of the tensors, so a forward spends no ~10 us of a small layer's ~60 us on them.
    # Made again when a packed tensor is not the one they view (a buffer assigned anew),
    # dropped on a load, a move or to_empty, never copied or pickled (a copy's views would hold
    # the original's memory).
    _matvec: tuple | None = None

    def _matvec_args(self) -> tuple | None:
        tensors = tuple(self._buffers[n] for n in self._names)
        kept = self._matvec
        if kept is None or any(a is not b for a, b in zip(kept[0], tensors)):
            from .quant import matvec_args

            kept = self._matvec = (tensors, matvec_args(dict(zip(self._names, tensors))))
        return kept[1]

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_matvec", None)
        return state

    def _init_gpu_state(self) -> None:
        self._info = None
        self._ready_device = None
        for name in gpu.KERNEL_BUFFERS:
            self.register_buffer(f"_k_{name}", torch.zeros(0), persistent=False)
        if not self.meta.is_meta:
            self._refresh_gpu_state()

    def _packed_cpu(self) -> dict:
        return {n: getattr(self, n).detach().cpu() for n in self._names}

    def _refresh_gpu_state(self) -> None:
        """WeightInfo from the packed tensors; on a GPU also the kernel buffers and stream slack.

        Streams bound for a GPU are verified here (decoded once on the host, checksums
        included): the kernels trust what they are given, so corruption must be caught first.
        """
        host = self._packed_cpu()
        self._info = gpu.weight_info(host, getattr(self, "exact_outputs", False))
        self._matvec = None
        device = self.meta.device
        if device.type == "cuda":
            lane_starts = None
            for name, t in host.items():
                if name in ("symbols", "plane0", "plane1", "plane2", "plane3") and (
                        not name.startswith("plane") or int(host["plane_coded"][int(name[5:])])):
                    try:  # one decode verifies a stream and gives its lane starts
                        if name == "symbols" and cuda_ops.LANE_STARTS:
                            lane_starts = _C.lane_starts(t.numpy(), 0)
                        else:
                            _C.histogram(t.numpy(), 0)
                    except CodecError as e:
                        raise CodecError(f"{type(self).__name__} buffer {name!r}: {e}") from None
            for name, t in gpu.kernel_buffers(host, self._info, lane_starts).items():
                self._buffers[f"_k_{name}"] = t.to(device)
            for name in ("symbols", "raw"):
                if name in self._buffers:
                    self._buffers[name] = cuda_ops.with_slack(self._buffers[name])
        else:  # the tables serve the GPU path only
            for name in gpu.KERNEL_BUFFERS:
                self._buffers[f"_k_{name}"] = torch.zeros(0, device=device)
        # A plain attribute, so forward's test of it compiles (torch.compile, fullgraph).
        self._ready_device = device
        self._drop_decoded()  # a cached weight of the tensors before this load or move

    def to_empty(self, *, device, recurse: bool = True):
        """Uninitialised storage has no stream to verify: the state is rebuilt on load_state_dict."""
        self._skip_refresh = True
        try:
            super().to_empty(device=device, recurse=recurse)
        finally:
            self._skip_refresh = False
        self._info, self._ready_device, self._matvec = None, None, None
        return self

    def _apply(self, fn, recurse=True):
        before = _apply_packed_once(self, fn, recurse)
        if self._unchecked and any(self._buffers[n].device != t.device for n, t in before.items()):
            self.verify(before)  # the mapped tensors, before a move reads them
        if not self.meta.is_meta and not getattr(self, "_skip_refresh", False):
            self._refresh_gpu_state()
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        _fit_packed_shapes(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if not self.meta.is_meta:
            self._refresh_gpu_state()

    def packed(self) -> dict:
        return {n: getattr(self, n) for n in self._names}

    def kernel(self) -> list[torch.Tensor]:
        return [getattr(self, f"_k_{name}") for name in gpu.KERNEL_BUFFERS]


class CompressedLinear(_PackedModule):
    """y = x W^T + b with W held as a pycodec packed weight.

    ``exact_outputs=True`` makes the GPU path rebuild a lossless weight and call cuBLAS, so
    outputs are bitwise those of nn.Linear; by default lossless bf16 weights go through the
    fused GEMV (the weights are still bit-exact, only the accumulation order differs).
    """

    def __init__(self, in_features: int, out_features: int, packed: dict, bias: torch.Tensor | None = None,
                 cache_decoded: bool = False, exact_outputs: bool = False):
        super().__init__()
        meta = packed["meta"]
        if meta.is_meta:  # shapes only (a loader fills the buffers later): trust the caller's names
            self._names = tuple(packed)
        else:
            if int(meta[2]) != out_features or int(meta[3]) != in_features:
                raise CodecError(f"packed weight is {int(meta[2])}x{int(meta[3])}, "
                                 f"module is {out_features}x{in_features}")
            self._names = buffer_names(meta)
        self.in_features = in_features
        self.out_features = out_features
        missing = [n for n in self._names if n not in packed]
        if missing:
            raise CodecError(f"packed weight lacks tensors {missing}")
        for name in self._names:
            self.register_buffer(name, packed[name])
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.cache_decoded = cache_decoded
        self.exact_outputs = exact_outputs
        self.stats: LayerStats | None = None
        self._init_gpu_state()

    @classmethod
    def from_linear(cls, linear: nn.Linear, config, cache_decoded: bool = False) -> "CompressedLinear":
        packed, stats = compress_weight(linear.weight, config)
        device = linear.weight.device
        m = cls(linear.in_features, linear.out_features, packed, linear.bias, cache_decoded,
                getattr(config, "exact_outputs", False))
        m.to(device)
        m.stats = stats
        return m

    @property
    def weight_dtype(self) -> torch.dtype:
        from .quant import CODE_DTYPES

        return CODE_DTYPES[int(self._info.dtype_code if self._info else self.meta[5])]

    def decoded_weight(self) -> torch.Tensor:
        """The weight as a dense tensor in its original dtype (bit-exact in lossless mode)."""
        if self._unchecked:
            self.verify()
        return _decode_on_cpu(list(self.packed().values()), self.weight_dtype).to(self.weight_dtype)

    def _dense_numel(self) -> int:
        return self.out_features * self.in_features

    def _weight_shape(self) -> tuple:
        return (self.out_features, self.in_features)

    def _weight_in_use(self) -> torch.Tensor:
        device = self.meta.device
        if (device.type == "cuda" and self._info is not None and self._info.kind != KIND_AFFINE
                and not self._uses_decoded(device)):
            if self._unchecked:
                self.verify()
            # Rebuilt on the device by the decode kernel (a 16-bit lossless split weight).
            kernel = dict(zip(gpu.KERNEL_BUFFERS, self.kernel()))
            return gpu.dense_weight(self.packed(), kernel, self._info, device).to(self.weight_dtype)
        return super()._weight_in_use()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._unchecked:
            self.verify()
        if self._uses_decoded(x.device) and (w := self._weight_for(x.device)) is not None:
            return F.linear(x, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        if x.device != self.meta.device:
            raise CodecError(f"{type(self).__name__}: input on {x.device}, weight on {self.meta.device}: "
                             "move the module (model.to(device)) or the input")
        if x.is_cuda and self._ready_device != x.device:
            self._refresh_gpu_state()  # emptied by to_empty and filled some other way: a host read, once
        info = self._info.ints if self._info is not None else gpu.weight_info(self._packed_cpu()).ints
        if not x.is_cuda and not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            # Inference on the CPU (generate() runs under no_grad): the op's body without its
            # dispatch, ~20 us of a small layer's ~100 us; nothing to trace or differentiate.
            # Generating tokens, an affine weight's matvec takes its kept arguments straight.
            if info[0] == KIND_AFFINE and self.out_features > 0 and \
                    0 < x.numel() <= CPU_MATVEC_MAX_ROWS * self.in_features and \
                    (args := self._matvec_args()) is not None:
                from .quant import affine_matvec

                return _matvec_output(affine_matvec(None, x, args), x, self.bias, self.out_features)
            return _cpu_linear(x, list(self.packed().values()), self.bias, info, self.out_features)
        return compressed_linear(x, list(self.packed().values()), self.kernel(), self.bias, info, self.out_features)

    def compressed_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for n, t in self.packed().items() if n != "meta")

    def extra_repr(self) -> str:
        kind = "affine" if self._info is not None and self._info.kind == KIND_AFFINE else "lossless"
        bpw = 8 * self.compressed_bytes() / (self.in_features * self.out_features)
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"{kind}, {bpw:.3f} bits/weight")


def is_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2's linear layers: y = x W + b, W stored [in, out]), checked
    by name so that importing pycodec does not import transformers."""
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__ == "transformers.pytorch_utils"


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The [out, in] weight of an nn.Linear, or of a Conv1D (a transposed view of its [in, out])."""
    return module.weight.t() if is_conv1d(module) else module.weight


class CompressedConv1D(CompressedLinear):
    """transformers' Conv1D with a packed weight. The stream codes W transposed, [out, in] as
    an nn.Linear's, so the GPU kernels and the CPU matvec run it unchanged (rate mode's steps
    are per output, as for a linear).

    A lossless weight decodes to a transposed view of a contiguous [in, out] tensor, the layout
    Conv1D's addmm reads, so CPU outputs stay bitwise Conv1D's (F.linear on the [out, in]
    tensor itself can round differently). decompress_ gives back a Conv1D.
    """

    @classmethod
    def from_conv1d(cls, conv, config) -> "CompressedConv1D":
        linear = nn.Linear(conv.weight.shape[0], conv.weight.shape[1], device="meta")
        linear.weight = nn.Parameter(conv.weight.detach().t(), requires_grad=False)
        linear.bias = conv.bias
        return cls.from_linear(linear, config)

    def decoded_weight(self) -> torch.Tensor:
        return super().decoded_weight().t().contiguous().t()

    def _weight_shape(self) -> tuple:
        return (self.in_features, self.out_features)  # Conv1D's [in, out]

    def _weight_in_use(self) -> torch.Tensor:
        return super()._weight_in_use().t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda or (self._info.kind if self._info is not None else int(self.meta[1])) == KIND_AFFINE:
            return super().forward(x)  # (no _info: loaded by transformers, which sets tensors itself)
        if self._unchecked:
            self.verify()
        w = super()._weight_in_use()  # kept or decoded now: [out, in], a view of Conv1D's [in, out]
        return F.linear(x, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def dense(self) -> nn.Module:
        """The transformers Conv1D holding the decoded weight."""
        from transformers.pytorch_utils import Conv1D

        conv = Conv1D(self.out_features, self.in_features).to("meta")
        conv.weight = nn.Parameter(self.decoded_weight().t().to(self.meta.device), requires_grad=False)
        conv.bias = nn.Parameter(self.bias.detach().clone(), requires_grad=False)
        return conv


class CompressedEmbedding(_DecodedWeight, nn.Module):
    """nn.Embedding with a packed weight: lossless (lookups bit-exact) or affine (int / rate).

    ``forward`` decodes only the stream chunks that hold the rows looked up (the opaque op
    ``pycodec::embedding_rows``, so ``torch.compile`` traces through it), unless the model
    keeps decoded weights (``cache_decoded``), then it gathers from the decoded table.

    ``output_scale`` reproduces a scaled word embedding (Gemma's, MBart's: rows times
    ``embed_scale``): ("tensor", s) multiplies by s rounded to the table's dtype, as a 0-dim
    tensor scale does; ("float", s) by the Python float s. See ``embedding_scale``.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, packed: dict, padding_idx: int | None = None,
                 output_scale: tuple[str, float] | None = None):
        super().__init__()
        self.output_scale = _checked_scale(output_scale)
        self._scale_by_dtype = _scale_factors(self.output_scale)
        meta = packed["meta"]
        if meta.is_meta:
            self._names = tuple(packed)
        else:
            if int(meta[1]) not in (KIND_LOSSLESS, KIND_SPLIT, KIND_AFFINE, KIND_FIXED):
                raise CodecError(f"CompressedEmbedding: unknown packed weight kind {int(meta[1])}")
            if (int(meta[2]), int(meta[3])) != (num_embeddings, embedding_dim):
                raise CodecError(f"packed weight is {int(meta[2])}x{int(meta[3])}, "
                                 f"embedding is {num_embeddings}x{embedding_dim}")
            self._names = buffer_names(meta)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        for name in self._names:
            self.register_buffer(name, packed[name])
        self.stats: LayerStats | None = None
        self._keep_host_copy(self.packed())

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, config) -> "CompressedEmbedding":
        packed, stats = compress_weight(emb.weight, config)
        m = cls(emb.num_embeddings, emb.embedding_dim, {k: v.to(emb.weight.device) for k, v in packed.items()},
                emb.padding_idx, embedding_scale(emb))
        m.stats = stats
        return m

    def packed(self) -> dict:
        return {n: getattr(self, n) for n in self._names}

    def decoded_weight(self) -> torch.Tensor:
        """The table as a dense tensor in its original dtype (bit-exact in lossless mode)."""
        return decode_weight(list(self.packed().values()), self.num_embeddings, self.embedding_dim,
                             self.weight_dtype)

    def _dense_numel(self) -> int:
        return self.num_embeddings * self.embedding_dim

    def _weight_shape(self) -> tuple:
        return (self.num_embeddings, self.embedding_dim)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if self._unchecked:
            self.verify()
        if self._uses_decoded(idx.device) and (w := self._weight_for(idx.device)) is not None:
            rows = F.embedding(idx, w, self.padding_idx)
        else:
            packed = self._host if self._host is not None else self.packed()
            rows = embedding_rows(list(packed.values()), idx, self.embedding_dim, self.weight_dtype)
        return rows if self.output_scale is None else rows * self._scale_by_dtype[rows.dtype]

    # (the meta tensor, its dtype code): a lookup reads the code without a tensor read, which would
    # sync a GPU and break torch.compile's graph. Kept only while that tensor is the module's own
    # (a load or an assignment puts in another).
    _dtype_code: tuple | None = None

    @property
    def weight_dtype(self) -> torch.dtype:
        from .quant import CODE_DTYPES

        meta = self._buffers["meta"]
        kept = self._dtype_code
        if kept is None or kept[0] is not meta:
            kept = self._dtype_code = (meta, int(meta[5]))
        return CODE_DTYPES[kept[1]]

    # Lookups decode on the host: off the CPU, the module keeps a host copy of its packed
    # tensors (compressed bytes) so that a lookup does not copy the table back each time.
    _host: dict | None = None

    def _apply(self, fn, recurse=True):
        self._drop_decoded()
        before = _apply_packed_once(self, fn, recurse)
        if self._unchecked and any(getattr(self, n).device != t.device for n, t in before.items()):
            self.verify(before)
        self._keep_host_copy(before)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        _fit_packed_shapes(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._drop_decoded()
        self._keep_host_copy(self.packed())

    def _keep_host_copy(self, tensors: dict) -> None:
        on_device = self.meta.device.type not in ("cpu", "meta")
        usable = not any(t.is_meta for t in tensors.values())
        self._host = {n: t.detach().cpu() for n, t in tensors.items()} if on_device and usable else None
        meta = self._buffers["meta"]
        if not meta.is_meta:
            self._dtype_code = (meta, int((self._host or {"meta": meta})["meta"][5]))

    def extra_repr(self) -> str:
        nbytes = sum(t.numel() * t.element_size() for n, t in self.packed().items() if n != "meta")
        kind = "affine" if int(self.meta[1]) == KIND_AFFINE else "lossless"
        scale = "" if self.output_scale is None else f", scaled by {self.output_scale[1]:g}"
        return (f"{self.num_embeddings}, {self.embedding_dim}, {kind}, "
                f"{8 * nbytes / (self.num_embeddings * self.embedding_dim):.3f} bits/weight{scale}")


class ScaledEmbedding(nn.Embedding):
    """nn.Embedding whose rows are multiplied by ``output_scale`` (as CompressedEmbedding's):
    what decompress_ gives back for a scaled word embedding."""

    def __init__(self, *args, output_scale: tuple[str, float], **kwargs):
        super().__init__(*args, **kwargs)
        self.output_scale = _checked_scale(output_scale)
        self._scale_by_dtype = _scale_factors(self.output_scale)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        rows = super().forward(idx)
        return rows * self._scale_by_dtype[rows.dtype]


def _checked_scale(scale) -> tuple[str, float] | None:
    if scale is None:
        return None
    if (not isinstance(scale, (tuple, list)) or len(scale) != 2 or scale[0] not in ("tensor", "float")
            or isinstance(scale[1], bool) or not isinstance(scale[1], (int, float)) or not math.isfinite(scale[1])):
        raise CodecError("an embedding's output scale must be ('tensor' or 'float', a finite number), "
                         f"got {scale!r:.100}")
    return (scale[0], float(scale[1]))


_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _scale_factors(scale: tuple[str, float] | None) -> dict | None:
    """{rows' dtype: the factor}, made once so that forward only looks it up (torch.compile)."""
    if scale is None:
        return None
    kind, value = scale
    # A 0-dim tensor scale is cast to the rows' dtype before the product; a Python float is not.
    return {dt: float(torch.tensor(value, dtype=torch.float32, device="cpu").to(dt)) if kind == "tensor" else value
            for dt in _FLOAT_DTYPES}


def embedding_scale(module: nn.Module) -> tuple[str, float] | None:
    """The output scale of a scaled word embedding (an nn.Embedding subclass with an
    ``embed_scale`` whose forward multiplies its rows by it), read off the module: no check
    that its forward does so (``dense_reason`` checks that before compressing one)."""
    if type(module).forward is nn.Embedding.forward:
        return None
    scale = getattr(module, "embed_scale", None)
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            return None
        if scale.is_meta:  # a skeleton being loaded: Gemma's keeps the value as a float too
            value = getattr(module, "scalar_embed_scale", None)
            return ("tensor", float(value)) if isinstance(value, (int, float)) else None
        return ("tensor", float(scale.detach().float().cpu()))
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        return ("float", float(scale))
    return None


def _computes_linear(module: nn.Linear) -> bool:
    """Whether a subclass's own forward gives nn.Linear's outputs on a probe (Falcon's, which
    adds its bias after the product), within a few roundings of the weight's dtype: the
    compressed module then computes F.linear, whose last bits may differ from the subclass's."""
    w = module.weight
    if w.is_meta or w.dtype not in _FLOAT_DTYPES or w.dim() != 2 or not w.numel():
        return False
    b = module.bias.detach() if isinstance(module.bias, torch.Tensor) else None
    gen = torch.Generator(device=w.device).manual_seed(0)
    x = torch.randn(3, w.shape[1], generator=gen, device=w.device, dtype=torch.float32).to(w.dtype)
    try:
        with torch.no_grad():
            got = module(x)
    except Exception:  # noqa: BLE001 - a forward that wants more than an input is not a linear map
        return False
    with torch.no_grad():
        want = F.linear(x, w.detach(), b)
        if not isinstance(got, torch.Tensor) or got.shape != want.shape or got.dtype != want.dtype:
            return False
        bound = x.float().abs() @ w.detach().float().abs().T + (0 if b is None else b.float().abs())
        tol = 8 * torch.finfo(w.dtype).eps * (bound + torch.finfo(w.dtype).tiny)
        return bool(((got.float() - want.float()).abs() <= tol).all())


def dense_reason(module: nn.Module) -> str | None:
    """Why ``compress_`` keeps an nn.Linear / nn.Embedding dense, or None when it compresses it.

    A compressed module runs nn.Linear's / nn.Embedding's forward. A subclass that overrides
    forward would lose what it adds (OPT's position offset), so it stays dense; the exception
    is a scaled word embedding (Gemma's), whose scale CompressedEmbedding applies and which is
    checked here on the table's first rows, bit for bit.
    """
    if isinstance(module, nn.Linear):
        if type(module).forward is nn.Linear.forward:
            return None
        reason = f"{type(module).__name__} overrides nn.Linear's forward"
        return None if _computes_linear(module) else reason
    if type(module).forward is nn.Embedding.forward:
        return None
    reason = f"{type(module).__name__} overrides nn.Embedding's forward"
    scale = embedding_scale(module)
    if scale is None or module.weight.is_meta or module.weight.dtype not in _FLOAT_DTYPES:
        return reason
    w = module.weight.detach()
    ids = torch.arange(min(module.num_embeddings, 64), device=w.device)
    try:
        with torch.no_grad():
            got = module(ids)
    except Exception:  # noqa: BLE001 - a forward that wants more than ids is not a plain lookup
        return reason
    want = F.embedding(ids, w, module.padding_idx) * _scale_factors(scale)[w.dtype]
    same = (isinstance(got, torch.Tensor) and got.shape == want.shape and got.dtype == want.dtype
            and torch.equal(got.view(-1).view(torch.uint8), want.view(-1).view(torch.uint8)))
    return None if same else reason + " (not as a scaled lookup)"


COMPRESSED_MODULES = {"CompressedLinear": CompressedLinear, "CompressedEmbedding": CompressedEmbedding,
                      "CompressedConv1D": CompressedConv1D}


def _skipped(name: str, skip) -> bool:
    return any(name == s or name.endswith("." + s) for s in skip)


def skip_names(config, skip=None) -> tuple:
    """The module names compress_ leaves alone: ``skip`` when given, else the config's."""
    return tuple(config.skip if skip is None else skip)


def compress_(model: nn.Module, config, skip=None, progress: bool = True, tokenizer=None) -> dict:
    """Replace every nn.Linear of ``model`` (except ``skip`` names) by a CompressedLinear, in place.

    In lossless mode nn.Embedding modules become CompressedEmbedding too, unless their table
    is tied to a module that stays dense. Returns a report: per-layer bits/weight, entropy
    bound and SQNR, and the totals. With ``config.calibration`` the model reads that text
    (through ``tokenizer``) and pycodec.calibrate rounds each layer for its outputs.
    """
    if config.calibration is not None:
        from .calibrate import compress_calibrated

        return compress_calibrated(model, config, tokenizer, skip, progress)
    plan, kept_dense = _plan(model, config, skip)
    if not plan and any(isinstance(m, (CompressedLinear, CompressedEmbedding)) for m in model.modules()):
        raise CodecError("the model is already compressed (pycodec.decompress_ restores dense modules first)")
    iterator = plan
    if progress:
        try:
            from tqdm.auto import tqdm

            iterator = tqdm(plan, desc=f"pycodec {config.mode}", unit="layer")
        except ImportError:
            pass
    n_parameters = sum(p.numel() for p in model.parameters())  # tied ones once
    layers, done = {}, {}
    for name, module, cfg, shares in iterator:
        new = _compressed(module, cfg or config, done[shares].packed() if shares else None)
        _set_submodule(model, name, new)
        done[name] = new
        layers[name] = _layer_report(module, new, shares)
    layers.update(compress_experts(model, config, skip_names(config, skip), progress))
    layers.update(compress_attention(model, config, skip_names(config, skip)))
    model.pycodec_config = config
    return whole_model_report(model, layers, config, n_parameters, kept_dense, skip)


# compress_ warns when weights it cannot compress hold more than this share of the parameters.
DENSE_WARNING_SHARE = 0.05


def whole_model_report(model: nn.Module, layers: dict, config, n_parameters: int, kept_dense: dict | None = None,
                       skip=None) -> dict:
    """summarize() of the coded layers, plus the whole checkpoint: its bytes, everything stored
    counted (dense tensors, side information, each shared tensor once), per parameter; and
    "dense_weights": {parameter: (numel, why)} of the matrices (2-D and up) left dense other
    than by ``skip``, with a warning when they hold over DENSE_WARNING_SHARE of the parameters."""
    report = summarize(layers, config)
    report["checkpoint_bytes"] = stored_bytes(model)
    report["bits_per_parameter"] = 8 * report["checkpoint_bytes"] / n_parameters if n_parameters else math.nan
    report["dense_weights"] = dense_weights(model, kept_dense or {}, skip_names(config, skip))
    left = sum(n for n, _ in report["dense_weights"].values())
    if n_parameters and left > DENSE_WARNING_SHARE * n_parameters:
        import warnings

        biggest = sorted(report["dense_weights"].items(), key=lambda kv: -kv[1][0])[:3]
        listed = "; ".join(f"{name} ({why})" for name, (_, why) in biggest)
        warnings.warn(f"pycodec: {100 * left / n_parameters:.0f}% of the model's parameters stay dense, "
                      f"among them {listed}", stacklevel=3)
    return report


def dense_weights(model: nn.Module, kept_dense: dict, skip: tuple) -> dict:
    """{parameter name: (numel, why it stays dense)} for the model's parameters of two or more
    dimensions that compress_ left dense, except those of modules named in ``skip``."""
    out, seen = {}, set()
    for mod_name, m in model.named_modules():
        parts = mod_name.split(".")
        if any(_skipped(".".join(parts[:k]), skip) for k in range(1, len(parts) + 1)):
            seen.update(id(p) for p in m.parameters(recurse=False))  # skipped, under any name it has
    for mod_name, m in model.named_modules():
        for p_name, p in m._parameters.items():
            if p is None or p.dim() < 2 or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if isinstance(m, nn.MultiheadAttention) and p_name == "in_proj_weight" and \
                    _skipped(f"{mod_name}.in_proj" if mod_name else "in_proj", skip):
                continue  # its projection named in skip
            why = kept_dense.get(mod_name) or _dense_parameter_reason(m, p_name)
            out[full] = (p.numel(), why)
    return out


def _dense_parameter_reason(module: nn.Module, name: str) -> str:
    if isinstance(module, nn.MultiheadAttention) and name in ("in_proj_weight", "q_proj_weight", "k_proj_weight",
                                                              "v_proj_weight"):
        if not module._qkv_same_embed_dim:
            return "an attention with separate q, k, v weights (kdim or vdim unlike embed_dim), which pycodec " \
                   "does not compress"
        return "an attention's projection that another module also holds"
    return f"held by a {type(module).__name__}, which pycodec does not compress"


def stored_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict, each tensor storage counted once (as save_pretrained stores it)."""
    seen, total = set(), 0
    for t in model.state_dict().values():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if t.numel() and key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def compression_plan(model: nn.Module, config, skip=None) -> list:
    """(name, module, config, shares) for each module ``compress_`` replaces, in model order.

    Every nn.Linear, transformers Conv1D and nn.Embedding whose name is not in ``skip`` and
    whose forward a compressed module keeps (dense_reason). Expert banks are not modules:
    pycodec.experts compresses them after these. Embeddings and the output
    head (``get_output_embeddings()``) take ``config.for_embeddings()``. A module whose weight
    is an earlier planned module's (a tied lm_head) is not coded again: ``shares`` names that
    module, whose packed tensors it uses. A weight that a module staying dense also holds is
    left dense everywhere: compressing it for the others would store it twice.
    """
    return _plan(model, config, skip)[0]


def _plan(model: nn.Module, config, skip=None) -> tuple[list, dict]:
    """compression_plan, and {name: reason} of the nn.Linear / nn.Embedding modules not in
    ``skip`` that stay dense (dense_reason)."""
    skip = skip_names(config, skip)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    candidates, kept_dense = [], {}
    for n, m in model.named_modules():
        if not (isinstance(m, (nn.Linear, nn.Embedding)) or is_conv1d(m)) or _skipped(n, skip):
            continue
        reason = None if is_conv1d(m) else dense_reason(m)
        if reason is None:
            candidates.append((n, m))
        else:
            kept_dense[n] = reason
    holders: dict[int, list[nn.Module]] = {}
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                holders.setdefault(id(p), []).append(m)
    chosen = {id(m) for _, m in candidates}
    while True:  # until no planned weight is also held by a module that stays dense
        dropped = [(n, m) for n, m in candidates
                   if any(id(h) not in chosen for h in holders.get(id(m.weight), [m]))]
        if not dropped:
            break
        for n, m in dropped:
            candidates.remove((n, m))
            chosen.discard(id(m))
            kept_dense[n] = "its weight is tied to a module that stays dense"
    plan, first = [], {}
    for name, m in candidates:
        group = holders.get(id(m.weight), [m])
        wide = any(isinstance(h, nn.Embedding) or h is head for h in group)
        if id(m.weight) in first:
            plan.append((name, m, None, first[id(m.weight)]))
        else:
            first[id(m.weight)] = name
            plan.append((name, m, config.for_embeddings() if wide else config, None))
    return plan, kept_dense


def _compressed(module: nn.Module, config, shared: dict | None) -> nn.Module:
    """The compressed counterpart of an nn.Linear / nn.Embedding: its weight coded by ``config``,
    or, with ``shared``, those packed tensors themselves (a tied weight)."""
    if isinstance(module, nn.Embedding):
        if shared is None:
            return CompressedEmbedding.from_embedding(module, config)
        return CompressedEmbedding(module.num_embeddings, module.embedding_dim, dict(shared), module.padding_idx,
                                   embedding_scale(module))
    if is_conv1d(module):
        if shared is None:
            return CompressedConv1D.from_conv1d(module, config)
        return CompressedConv1D(module.weight.shape[0], module.weight.shape[1], dict(shared), module.bias,
                                exact_outputs=config.exact_outputs)
    if shared is None:
        return CompressedLinear.from_linear(module, config)
    return CompressedLinear(module.in_features, module.out_features, dict(shared), module.bias,
                            exact_outputs=config.exact_outputs)


def _layer_report(module: nn.Module, new: nn.Module, shares: str | None) -> dict:
    if shares:
        return {"shape": list(module.weight.shape), "shares": shares}
    s = new.stats
    return {"shape": list(module.weight.shape), "bits_per_weight": s.bits_per_weight,
            "entropy_bits_per_weight": s.entropy_bits_per_weight, "sqnr_db": s.sqnr_db}


def summarize(layers: dict, config) -> dict:
    """Totals over the coded layers (a tied module that shares another's weight counts once)."""
    coded = {k: v for k, v in layers.items() if "shares" not in v}
    n = sum(math.prod(v["shape"]) for v in coded.values())
    bits = sum(v["bits_per_weight"] * math.prod(v["shape"]) for v in coded.values())
    ent = sum(v["entropy_bits_per_weight"] * math.prod(v["shape"]) for v in coded.values())
    finite = [v for v in coded.values() if math.isfinite(v["sqnr_db"])]
    # The mean of per-layer SQNR in dB (each layer counts once, whatever its size).
    mean_sqnr = sum(v["sqnr_db"] for v in finite) / len(finite) if finite else math.inf
    return {"config": config.to_dict(), "layers": layers, "n_weights": n,
            "bits_per_weight": bits / n if n else math.nan, "entropy_bits_per_weight": ent / n if n else math.nan,
            "mean_sqnr_db": mean_sqnr, "compressed_bytes": int(round(bits / 8))}


def decompress_(model: nn.Module) -> nn.Module:
    """Replace every CompressedLinear / CompressedEmbedding by the plain module holding the
    decoded weight (modules that shared a packed weight share the decoded parameter), every
    expert bank by its parameter, every CompressedMultiheadAttention by nn.MultiheadAttention."""
    decoded: dict[tuple, nn.Parameter] = {}

    def weight_of(m) -> nn.Parameter:
        key = _packed_key(m)
        if key not in decoded:
            decoded[key] = nn.Parameter(m.decoded_weight().to(m.meta.device), requires_grad=False)
        return decoded[key]

    for name, m in list(model.named_modules()):  # before the linears: its in_proj is one
        if isinstance(m, CompressedMultiheadAttention) and name:
            _set_submodule(model, name, m.dense())
    banks = [name for name, m in model.named_modules() if isinstance(m, CompressedExperts)]
    for name in banks:  # each back to one [experts, rows, columns] parameter
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        bank = parent._modules.pop(attr)
        parent.register_parameter(attr, bank.dense())
    for name, m in list(model.named_modules()):
        if isinstance(m, CompressedEmbedding):
            if m.output_scale is None:
                emb = nn.Embedding(m.num_embeddings, m.embedding_dim, m.padding_idx, device="meta")
            else:
                emb = ScaledEmbedding(m.num_embeddings, m.embedding_dim, m.padding_idx, device="meta",
                                      output_scale=m.output_scale)
            emb.weight = weight_of(m)  # the very parameter a tied module gets too
            _set_submodule(model, name, emb)
        elif isinstance(m, CompressedConv1D):
            _set_submodule(model, name, m.dense())
        elif isinstance(m, CompressedLinear):
            lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
            lin.weight = weight_of(m)
            if m.bias is not None:
                lin.bias = nn.Parameter(m.bias.detach().clone(), requires_grad=False)
            _set_submodule(model, name, lin)
    return model


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
