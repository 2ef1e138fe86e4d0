"""pycodec's GPU ops: ``torch.library`` custom ops over the torch-free kernels of csrc/cuda.

The kernels take raw device pointers and a CUDA stream and never link libtorch; this module is
the torch side. Every op has a fake (meta) implementation, so it traces under
``torch.compile(fullgraph=True)`` as one opaque node, and none of them synchronizes with the host,
so CUDA graphs capture them.

Format v2 streams (windowed-lane Huffman, what pycodec writes) stay inside the uint8 tensor that
holds the blob; a ``layout`` list of ints (``StreamLayout.ints``) says where their pieces lie,
and the decode tables built on the host from the blob are uploaded once (``kernel_tables``). The
table may carry the stream's lane starts after its TABLE_WORDS words (a byte a lane that says
where it starts, uint8 [n_chunks * lanes], from ``_C.lane_starts``): the kernels then skip their
count pass.
The kernels read up to ``_C.SLACK_WORDS`` words past the payload and past the raw bits of a
lossless weight without bounds tests: those tensors must sit in storage with that much slack
(``with_slack``; CompressedLinear keeps its buffers that way).

  windowed_decode       symbols of a stream, uint8 [n]
  windowed_gemv_affine  y = x W^T, W = (q - z) * s from the stream, batch 1..16, escapes in the epilogue
  windowed_tile_affine  the same for batch 1..128: 16 rows decoded into shared memory, tensor-core MMA
  windowed_gemv_split   y = x W^T for a lossless split bf16 weight, batch 1..16 (staged or fused kernel)
  split_merge           the exact bf16 (or fp16) bits of a split weight from its decoded symbols
  windowed_decode_split both in one kernel: a split weight's exact bits from its stream and raw bits
  decode_symbols        legacy format-v1 streams (pycodec <= 0.1 checkpoints)
  fixed12_gemv          y = x W^T for a fixed-width lossless bf16 weight (quant.KIND_FIXED), batch 1..16
  fixed12_decode        its exact bf16 bits

Importing this module needs neither a GPU nor a CUDA build of torch.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import _C
from .codec import CodecError, _as_buffer

__all__ = ["CODER_IDS", "StreamLayout", "decode_cuda", "decode_symbols", "fixed12_decode", "fixed12_escapes",
           "fixed12_gemv", "gemv_inputs", "gemv_supported",
           "kernel_tables", "split_decode_max_chunk", "split_merge", "stream_layout", "tile_supported",
           "windowed_decode", "windowed_decode_split", "windowed_gemv_affine", "windowed_gemv_split",
           "windowed_tile_affine", "with_slack"]

CODER_IDS = {"huffman": 1, "rans": 2}  # format.h: the coder byte of the header
MAX_BATCH = 16                        # windowed_gemv.h: kGemvMaxBatch
TABLE_ENTRIES = 4096                  # lookups of 12 bits
TABLE_WORDS = TABLE_ENTRIES + 64 + 1024  # entries, code lengths, count table (build_decode_table)
SLACK_BYTES = 4 * int(_C.SLACK_WORDS)
LAYOUT_INTS = 10  # StreamLayout.ints
# Whether the tables built for a stream bound for a GPU (a module moved or loaded there,
# decode_cuda) carry its lane starts: a byte a lane (0.06-0.11 bits a weight on MiniLM and
# SmolLM2, bench/results/layout_cpu.json), which spares every kernel its count pass over the
# stream (a third of the rate GEMV's instructions, bench/sass_count.py). False: the kernels count.
LANE_STARTS = True


@dataclass(frozen=True)
class StreamLayout:
    """Where a stream's pieces lie inside its blob (byte offsets) and its sizes: _C.info's fields."""

    version: int
    coder: str
    shape: tuple
    n_symbols: int
    chunk_symbols: int
    n_chunks: int
    lanes: int
    index_offset: int
    sizes_offset: int
    payload_offset: int
    payload_words: int
    constant: bool
    max_chunk_words: int

    @property
    def ints(self) -> list[int]:
        """The ops' `layout` argument (LAYOUT_INTS)."""
        return [self.index_offset, self.sizes_offset, self.payload_offset, self.payload_words, self.n_symbols,
                self.chunk_symbols, self.n_chunks, self.lanes, int(self.constant), self.max_chunk_words]


def stream_layout(blob: Any) -> StreamLayout:
    """Validates a host stream's header, table and index (no decoding) and describes it."""
    buf = _as_buffer(blob)
    info = _C.info(buf)
    constant = info["coder"] == "huffman" and info["version"] == 2 and info["payload_words"] == 0
    return StreamLayout(int(info["version"]), info["coder"], tuple(int(d) for d in info["shape"]),
                        int(info["n_symbols"]), int(info["chunk_symbols"]), int(info["n_chunks"]),
                        int(info["lanes"]), int(info["index_offset"]), int(info["sizes_offset"]),
                        int(info["payload_offset"]), int(info["payload_words"]), constant,
                        int(info["max_chunk_words"]))


def lane_start_words(layout: list[int]) -> int:
    """The int32 words that a v2 stream's lane start bytes add to its table."""
    n_chunks, lanes = layout[6], layout[7]
    return -(-n_chunks * lanes // 4)


def kernel_tables(blob: Any, value16: np.ndarray | None = None, lane_starts: np.ndarray | None = None) -> dict:
    """The decode tables of a stream, built on the host, as CPU tensors to upload once:
    ``table`` (int32, entries + code lengths + count table, then the lane starts if given: the
    uint8 array of ``_C.lane_starts(blob)``, which verifies the stream) and, given each symbol's
    16-bit value (``value16``, 256 uint16), ``values`` (int64 [4096], the value entries the GEMVs
    read)."""
    buf = _as_buffer(blob)
    table = np.frombuffer(_C.decode_table(buf), dtype="<i4")
    if lane_starts is not None and len(lane_starts):
        starts = np.zeros(4 * -(-len(lane_starts) // 4), dtype=np.uint8)
        starts[:len(lane_starts)] = lane_starts
        table = np.concatenate([table, starts.view("<i4")])
    out = {"table": torch.from_numpy(table.copy())}
    if value16 is not None:
        v = np.ascontiguousarray(value16, dtype=np.uint16)
        out["values"] = torch.from_numpy(np.frombuffer(_C.value_table(buf, v), dtype="<i8").copy())
    return out


KERNEL_SETTINGS = ("warps_per_block", "gemv_x_shared_bytes", "decode_stage_symbols", "split_gemv_staged",
                   "affine_gemv_staged", "stream_shared", "stage_word_stores", "fixed12_tensor_cores")


@contextlib.contextmanager
def kernel_settings(**settings: int):
    """The GPU kernels' launch settings (KERNEL_SETTINGS: _C functions of those names, which
    clamp) set for a block, and restored after it, also when it raises. Results are the same bits
    with any setting but split_gemv_staged, affine_gemv_staged and fixed12_tensor_cores (each picks
    between two GEMVs that add in different orders): they are for tuning and side-by-side timings. Set while a CUDA graph is
    captured, they hold in its replays."""
    unknown = sorted(set(settings) - set(KERNEL_SETTINGS))
    if unknown:
        raise ValueError(f"unknown kernel settings {unknown}; they are {', '.join(KERNEL_SETTINGS)}")
    before = {name: getattr(_C, name)() for name in settings}
    try:
        for name, value in settings.items():
            getattr(_C, name)(value)
        yield
    finally:
        for name, value in before.items():
            getattr(_C, name)(value)


def with_slack(t: torch.Tensor) -> torch.Tensor:
    """t itself if SLACK_BYTES readable bytes follow its data in its storage, else a copy in
    storage that has them (zeros). A host-side test: no synchronization."""
    nbytes = t.numel() * t.element_size()
    if t.is_contiguous() and t.untyped_storage().nbytes() - t.storage_offset() * t.element_size() >= nbytes + SLACK_BYTES:
        return t
    padded = torch.zeros(nbytes + SLACK_BYTES, dtype=torch.uint8, device=t.device)
    padded[:nbytes].copy_(t.contiguous().view(-1).view(torch.uint8))
    return padded[:nbytes].view(t.dtype).view(t.shape)


def _has_slack(t: torch.Tensor) -> bool:
    return with_slack(t) is t


def _view(blob: torch.Tensor, layout: list[int], table: torch.Tensor) -> tuple:
    """The kernels' StreamView (device addresses) of a stream inside `blob`, with the lane starts
    that follow its table's TABLE_WORDS words if there are any (_check_stream has sized them)."""
    (index_offset, sizes_offset, payload_offset, payload_words, n_symbols, chunk_symbols, n_chunks, lanes, constant,
     max_chunk_words) = layout
    base = blob.data_ptr()
    starts = table.data_ptr() + 4 * TABLE_WORDS if table.numel() > TABLE_WORDS else 0
    return (base + index_offset, base + sizes_offset, base + payload_offset, payload_words, n_symbols, chunk_symbols,
            n_chunks, lanes, bool(constant), starts, max_chunk_words)


class _Kernels:
    """Where the v2 ops launch: the CUDA kernels ("cuda_*" in _C), or, in tests without a GPU,
    their emulation on host memory ("host_*", same arguments): see host_kernels()."""

    prefix = "cuda_"
    device_type = "cuda"


_KERNELS = _Kernels()


@contextlib.contextmanager
def host_kernels():
    """Runs the ops' bodies (the _windowed_* functions) on CPU tensors through the kernels' CPU
    emulation: the Python glue of the GPU path (layouts, addresses, x preparation, batch padding,
    escapes) tested on any machine."""
    saved = (_KERNELS.prefix, _KERNELS.device_type)
    _KERNELS.prefix, _KERNELS.device_type = "host_", "cpu"
    try:
        yield
    finally:
        _KERNELS.prefix, _KERNELS.device_type = saved


def _launch(name: str, *args) -> None:
    getattr(_C, _KERNELS.prefix + name)(*args)


def _guard(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _stream() -> int:
    return torch.cuda.current_stream().cuda_stream if _KERNELS.device_type == "cuda" else 0


def _check_stream(op: str, blob: torch.Tensor, table: torch.Tensor, layout: list[int]) -> None:
    if len(layout) != LAYOUT_INTS:
        raise CodecError(f"{op}: layout must have {LAYOUT_INTS} fields (StreamLayout.ints)")
    if blob.dtype != torch.uint8 or blob.dim() != 1 or not blob.is_contiguous():
        raise CodecError(f"{op}: the stream must be a contiguous 1-D uint8 tensor")
    index_offset, sizes_offset, payload_offset, payload_words, _, _, n_chunks = layout[:7]
    if (min(layout) < 0 or payload_offset + 4 * payload_words != blob.numel() or
            index_offset + 4 * -(-n_chunks // 16) > sizes_offset or sizes_offset + 2 * n_chunks > payload_offset):
        raise CodecError(f"{op}: layout does not match the stream (StreamLayout.ints of this blob)")
    with_starts = TABLE_WORDS + lane_start_words(layout)
    if table.dtype != torch.int32 or table.numel() not in (TABLE_WORDS, with_starts) or not table.is_contiguous():
        raise CodecError(f"{op}: table must be the int32 [{TABLE_WORDS}] tables of kernel_tables(), or "
                         f"[{with_starts}] with this stream's lane starts")
    if _KERNELS.device_type == "cuda" and not _C.cuda_compiled():
        raise CodecError(f"{op}: this pycodec build has no CUDA kernels (built without nvcc)")
    if not _has_slack(blob):
        raise CodecError(f"{op}: the stream needs {SLACK_BYTES} readable bytes after it (cuda_ops.with_slack)")


def _check_values(op: str, values: torch.Tensor) -> None:
    if values.dtype != torch.int64 or values.numel() != TABLE_ENTRIES or not values.is_contiguous():
        raise CodecError(f"{op}: values must be the int64 [{TABLE_ENTRIES}] value entries of kernel_tables()")


def _check_raw(op: str, raw: torch.Tensor, n: int, low: int) -> int:
    """The words of n raw fields of `low` bits, once `raw` is checked to be their bytes with the
    kernels' slack after them."""
    raw_words = (n * low + 31) // 32
    if raw.dtype != torch.uint8 or raw.numel() != 4 * raw_words or not _has_slack(raw):
        raise CodecError(f"{op}: raw must be the weight's {4 * raw_words} raw bytes, with slack after them")
    return raw_words


def _same_device(op: str, *tensors: torch.Tensor) -> torch.device:
    device = tensors[0].device
    if device.type != _KERNELS.device_type:
        raise CodecError(f"{op} runs on {_KERNELS.device_type.upper()} tensors only")
    for t in tensors[1:]:
        if t.device != device:
            raise CodecError(f"{op}: every tensor must be on {device}, one is on {t.device}")
    return device


def gemv_supported(layout: list[int], n_rows: int, k: int, batch: int) -> bool:
    """Whether the fused GEMV takes this weight (chunks of whole rows) and batch."""
    return bool(_C.gemv_supported(layout[4], layout[5], n_rows, k, batch))


def column_prefix_sums(cols: torch.Tensor, padded: int) -> torch.Tensor:
    """fp32 [K + 1, padded]: row j holds the sums of cols' first j rows (columns past cols' are 0).

    Summed in float64 and rounded once, so every entry is the fp32 value nearest the exact sum,
    whatever order the device sums in. An fp32 cumsum is not: on a GPU, torch scans one column
    ([K, 1]) in parallel and several ([K, B]) one row after another, so batch-1 results differed
    from the emulation's in the last bits (seen on an H200) and from one batch size to another."""
    k, batch = cols.shape
    p = torch.zeros((k + 1, padded), dtype=torch.float32, device=cols.device)
    p[1:, :batch] = torch.cumsum(cols.double(), dim=0).float()
    return p


def _zero_folded(zero: torch.Tensor, zero_in_values: float) -> bool:
    """Whether an affine weight's zero point lies whole in its value entries: a broadcast zero that
    zero_in_values equals (windowed_gemv.h: affine_zero_in_values sets it only to the broadcast zero
    itself, rate mode's 128). The kernels then need no prefix sums of x: two to three fewer launches
    a call (a host-side test of the arguments, no device read)."""
    return tuple(zero.shape) == (1, 1) and zero_in_values != 0.0


def gemv_inputs(x2: torch.Tensor, prefix: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """x [B, K] as the kernels read it: fp32 [K + 3, Bp] (x transposed, 3 zero rows, batch padded to
    an instantiated size: 9..15 -> 16), and the prefix sums fp32 [K + 1, Bp]
    (column_prefix_sums). Returns (x_t, prefix, Bp)."""
    batch, k = x2.shape
    padded = batch if batch <= 8 else MAX_BATCH
    x_t = torch.zeros((k + int(_C.GEMV_X_PAD_ROWS), padded), dtype=torch.float32, device=x2.device)
    x_t[:k, :batch] = x2.t()
    p = None
    if prefix:
        p = column_prefix_sums(x_t[:k, :batch], padded)
    return x_t, p, padded


# ---------------------------------------------------------------------------- decode

def _decode_launch(op: str, blob: torch.Tensor, table: torch.Tensor, layout: list[int]):
    """(symbols, status) of a v2 stream, both on blob's device, without reading status back.
    Symbols start as zeros: what a lane refuses to decode (a corrupt chunk, foreign tables)
    reads as symbol 0, not as stale memory."""
    _check_stream(op, blob, table, layout)
    _same_device(op, blob, table)
    out = torch.zeros(layout[4], dtype=torch.uint8, device=blob.device)
    status = torch.zeros(1, dtype=torch.int32, device=blob.device)
    if layout[4]:
        with _guard(blob.device):
            _launch("windowed_decode", _view(blob, layout, table), table.data_ptr(), out.data_ptr(), status.data_ptr(),
                    _stream())
    return out, status


def _windowed_decode(blob: torch.Tensor, table: torch.Tensor, layout: list[int]) -> torch.Tensor:
    return _decode_launch("windowed_decode", blob, table, layout)[0]  # no status read: a host sync


@torch.library.custom_op("pycodec::windowed_decode", mutates_args=(), device_types="cuda")
def windowed_decode(blob: torch.Tensor, table: torch.Tensor, layout: list[int]) -> torch.Tensor:
    """Decodes a format-v2 stream held in `blob` (a CUDA uint8 tensor) into uint8 [n_symbols]."""
    return _windowed_decode(blob, table, layout)


@windowed_decode.register_fake
def _(blob, table, layout):
    return blob.new_empty((layout[4],), dtype=torch.uint8)


def decode_cuda(blob: Any, device: Any = "cuda") -> torch.Tensor:
    """Decodes a blob on a CUDA device; returns a uint8 tensor of the stream's shape there.

    The stream is verified on the host first (decoded once, checksums included: the kernels trust
    what they are given); the decode kernel's overrun flag is checked too. Synchronizes.
    """
    buf = _as_buffer(blob)
    if isinstance(buf, np.ndarray):
        buf = buf.tobytes()
    starts = _C.lane_starts(buf, 0) if LANE_STARTS else _C.histogram(buf, 0)  # raise CodecError on corruption
    s = stream_layout(buf)
    device = torch.device(device)
    if s.version == 1:
        return _decode_v1(buf, s, device).view(s.shape)
    host = torch.frombuffer(bytearray(buf), dtype=torch.uint8) if len(buf) else torch.zeros(0, dtype=torch.uint8)
    dev = with_slack(host.to(device))
    table = kernel_tables(buf, lane_starts=starts if LANE_STARTS else None)["table"].to(device)
    out, status = _decode_launch("decode_cuda", dev, table, s.ints)
    if int(status.item()):
        raise CodecError("decode_cuda: payload is corrupt: a lane needs more codes than its window holds")
    return out.view(s.shape)


# ---------------------------------------------------------------------------- fused GEMV

@torch.library.custom_op("pycodec::windowed_gemv_affine", mutates_args=(), device_types="cuda")
def windowed_gemv_affine(x: torch.Tensor, blob: torch.Tensor, table: torch.Tensor, values: torch.Tensor,
                         scale: torch.Tensor, zero: torch.Tensor, escape_row: torch.Tensor, escape_col: torch.Tensor,
                         escape_value: torch.Tensor, layout: list[int], zero_in_values: float, group_size: int,
                         n_rows: int, k: int) -> torch.Tensor:
    """y = x W^T in fp32 [B, n_rows] for an affine weight (W = (q - zero) * scale, escapes exact).

    x: [B, k] (1 <= B <= 16, any float dtype); scale / zero: fp16 [n_rows, groups] (zero may be
    [1, 1]); values: the value entries of kernel_tables(blob, affine values at zero_in_values);
    a nonzero zero_in_values with a [1, 1] zero must equal it (gpu.weight_info's do), and the
    kernel then skips the zero point's term; escapes: CSR by row (int32 [n_rows + 1], int32
    columns, fp32 values), or empty tensors.
    """
    return _windowed_gemv_affine(x, blob, table, values, scale, zero, escape_row, escape_col, escape_value, layout,
                                 zero_in_values, group_size, n_rows, k)


def _check_affine(op, x, blob, table, scale, zero, escape_row, escape_col, escape_value, layout, group_size, n_rows,
                  k) -> tuple[torch.device, tuple]:
    """The checks both affine ops make of their weight; returns the device and the escape arguments
    (row pointers, columns, values addresses and count; zeros for none)."""
    _check_stream(op, blob, table, layout)
    device = _same_device(op, x, blob, table, scale, zero, escape_row, escape_col, escape_value)
    if scale.dtype != torch.float16 or zero.dtype != torch.float16:
        raise CodecError(f"{op}: scale and zero must be float16")
    groups = -(-k // group_size) if group_size > 0 else 0
    if group_size <= 0 or scale.shape != (n_rows, groups) or tuple(zero.shape) not in ((n_rows, groups), (1, 1)):
        raise CodecError(f"{op}: scale must be [{n_rows}, {groups}], zero the same or [1, 1]")
    if not escape_col.numel():
        return device, (0, 0, 0, 0)
    if (escape_row.numel() != n_rows + 1 or escape_row.dtype != torch.int32 or escape_col.dtype != torch.int32 or
            escape_value.dtype != torch.float32 or escape_value.numel() != escape_col.numel() or
            not escape_row.is_contiguous() or not escape_col.is_contiguous() or not escape_value.is_contiguous()):
        raise CodecError(f"{op}: escapes must be contiguous int32 [n_rows + 1] row pointers, int32 columns and "
                         "as many fp32 values")
    return device, (escape_row.data_ptr(), escape_col.data_ptr(), escape_value.data_ptr(), escape_col.numel())


def _windowed_gemv_affine(x, blob, table, values, scale, zero, escape_row, escape_col, escape_value, layout,
                          zero_in_values, group_size, n_rows, k):
    op = "windowed_gemv_affine"
    device, escapes = _check_affine(op, x, blob, table, scale, zero, escape_row, escape_col, escape_value, layout,
                                    group_size, n_rows, k)
    _same_device(op, x, values)
    batch = x.shape[0]
    if x.dim() != 2 or x.shape[1] != k or not gemv_supported(layout, n_rows, k, batch):
        raise CodecError(f"{op}: unsupported shape: x {tuple(x.shape)}, weight [{n_rows}, {k}], chunks of "
                         f"{layout[5]} symbols (chunks must be whole rows, batch 1..16)")
    _check_values(op, values)
    x_t, prefix, padded = gemv_inputs(x, prefix=not _zero_folded(zero, zero_in_values))
    y = torch.empty((padded, n_rows), dtype=torch.float32, device=device)
    scale, zero = scale.contiguous(), zero.contiguous()
    if n_rows:
        with _guard(device):
            _launch("windowed_gemv_affine", _view(blob, layout, table), values.data_ptr(), table.data_ptr(), x_t.data_ptr(),
                    0 if prefix is None else prefix.data_ptr(), scale.data_ptr(), zero.data_ptr(),
                    tuple(zero.shape) == (1, 1), zero_in_values, group_size, n_rows, k, padded, y.data_ptr(), *escapes,
                    _stream())
    return y[:batch]


@windowed_gemv_affine.register_fake
def _(x, blob, table, values, scale, zero, escape_row, escape_col, escape_value, layout, zero_in_values, group_size,
      n_rows, k):
    return x.new_empty((x.shape[0], n_rows), dtype=torch.float32)


def tile_supported(layout: list[int], n_rows: int, k: int, group_size: int, batch: int) -> bool:
    """Whether the tile kernel (decode to shared memory + tensor-core MMA) takes this affine weight and batch."""
    return bool(_C.tile_supported(layout[4], layout[5], n_rows, k, group_size, batch))


@torch.library.custom_op("pycodec::windowed_tile_affine", mutates_args=(), device_types="cuda")
def windowed_tile_affine(x: torch.Tensor, blob: torch.Tensor, table: torch.Tensor, scale: torch.Tensor,
                         zero: torch.Tensor, escape_row: torch.Tensor, escape_col: torch.Tensor,
                         escape_value: torch.Tensor, layout: list[int], zero_in_values: float, group_size: int,
                         n_rows: int, k: int) -> torch.Tensor:
    """y = x W^T in fp32 [B, n_rows] for an affine weight, 1 <= B <= 128, x bf16 or fp16: 16 rows per
    block decoded into shared memory, then tensor-core MMA in x's type (windowed_tile.h). Arguments
    as windowed_gemv_affine, without the value entries (the kernel decodes symbols)."""
    return _windowed_tile_affine(x, blob, table, scale, zero, escape_row, escape_col, escape_value, layout,
                                 zero_in_values, group_size, n_rows, k)


def _windowed_tile_affine(x, blob, table, scale, zero, escape_row, escape_col, escape_value, layout, zero_in_values,
                          group_size, n_rows, k):
    op = "windowed_tile_affine"
    device, escapes = _check_affine(op, x, blob, table, scale, zero, escape_row, escape_col, escape_value, layout,
                                    group_size, n_rows, k)
    batch = x.shape[0]
    if (x.dim() != 2 or x.shape[1] != k or x.dtype not in (torch.bfloat16, torch.float16) or
            not tile_supported(layout, n_rows, k, group_size, batch)):
        raise CodecError(f"{op}: unsupported input: x {tuple(x.shape)} {x.dtype}, weight [{n_rows}, {k}], group "
                         f"{group_size}, chunks of {layout[5]} symbols (x bf16 or fp16, batch 1..{_C.TILE_MAX_BATCH}, "
                         "K and group multiples of 16, chunks of whole rows dividing 16)")
    padded = int(_C.tile_batch_pad(batch))
    x16 = torch.zeros((padded, k), dtype=x.dtype, device=device)
    x16[:batch] = x
    prefix = None if _zero_folded(zero, zero_in_values) else column_prefix_sums(x.t().float(), padded)
    y = torch.empty((padded, n_rows), dtype=torch.float32, device=device)
    scale, zero = scale.contiguous(), zero.contiguous()
    if n_rows:
        with _guard(device):
            _launch(op, _view(blob, layout, table), table.data_ptr(), x16.data_ptr(), x.dtype == torch.float16,
                    0 if prefix is None else prefix.data_ptr(), scale.data_ptr(), zero.data_ptr(),
                    tuple(zero.shape) == (1, 1), zero_in_values, group_size, n_rows, k, batch, padded, y.data_ptr(),
                    *escapes, _stream())
    return y[:batch]


@windowed_tile_affine.register_fake
def _(x, blob, table, scale, zero, escape_row, escape_col, escape_value, layout, zero_in_values, group_size, n_rows,
      k):
    return x.new_empty((x.shape[0], n_rows), dtype=torch.float32)


@torch.library.custom_op("pycodec::windowed_gemv_split", mutates_args=(), device_types="cuda")
def windowed_gemv_split(x: torch.Tensor, blob: torch.Tensor, table: torch.Tensor, values: torch.Tensor,
                        raw: torch.Tensor, layout: list[int], top: int, n_rows: int, k: int) -> torch.Tensor:
    """y = x W^T in fp32 [B, n_rows] for a lossless split bf16 weight (quant.KIND_SPLIT)."""
    return _windowed_gemv_split(x, blob, table, values, raw, layout, top, n_rows, k)


def _windowed_gemv_split(x, blob, table, values, raw, layout, top, n_rows, k):
    op = "windowed_gemv_split"
    _check_stream(op, blob, table, layout)
    device = _same_device(op, x, blob, table, values, raw)
    batch = x.shape[0]
    if x.dim() != 2 or x.shape[1] != k or not gemv_supported(layout, n_rows, k, batch) or not 8 <= top <= 15:
        raise CodecError(f"{op}: unsupported shape: x {tuple(x.shape)}, weight [{n_rows}, {k}], top {top}")
    _check_values(op, values)
    low = 16 - top
    raw_words = _check_raw(op, raw, layout[4], low)
    x_t, _, padded = gemv_inputs(x, prefix=False)
    y = torch.empty((padded, n_rows), dtype=torch.float32, device=device)
    if n_rows:
        with _guard(device):
            _launch("windowed_gemv_split", _view(blob, layout, table), values.data_ptr(), table.data_ptr(), x_t.data_ptr(),
                    raw.data_ptr(), raw_words, low, n_rows, k, padded, y.data_ptr(), _stream())
    return y[:batch]


@windowed_gemv_split.register_fake
def _(x, blob, table, values, raw, layout, top, n_rows, k):
    return x.new_empty((x.shape[0], n_rows), dtype=torch.float32)


@torch.library.custom_op("pycodec::split_merge", mutates_args=(), device_types="cuda")
def split_merge(symbols: torch.Tensor, value16: torch.Tensor, raw: torch.Tensor, top: int) -> torch.Tensor:
    """The 16-bit float bits (int16) of a split weight from its decoded symbols (uint8 [n]), each
    symbol's value16 (int16 [256], values << (16 - top)) and its raw bytes."""
    return _split_merge(symbols, value16, raw, top)


def _split_merge(symbols, value16, raw, top):
    op = "split_merge"
    device = _same_device(op, symbols, value16, raw)
    n, low = symbols.numel(), 16 - top
    if symbols.dtype != torch.uint8 or value16.dtype != torch.int16 or value16.numel() != 256 or not 1 <= top <= 16:
        raise CodecError(f"{op}: symbols uint8, value16 int16 [256], top in 1..16")
    raw_words = (n * low + 31) // 32
    if raw.dtype != torch.uint8 or raw.numel() != 4 * raw_words:
        raise CodecError(f"{op}: raw must hold {4 * raw_words} bytes")
    out = torch.empty(n, dtype=torch.int16, device=device)
    if n:
        with _guard(device):
            _launch("split_merge", symbols.data_ptr(), n, value16.data_ptr(), raw.data_ptr() if raw_words else 0,
                    raw_words, low, out.data_ptr(), _stream())
    return out


@split_merge.register_fake
def _(symbols, value16, raw, top):
    return symbols.new_empty((symbols.numel(),), dtype=torch.int16)


def split_decode_max_chunk() -> int:
    """The longest chunk (symbols) windowed_decode_split stages in the current device's shared
    memory (its warps keep a whole chunk there); longer chunks take windowed_decode + split_merge."""
    return int(getattr(_C, _KERNELS.prefix + "split_decode_max_chunk")())


@torch.library.custom_op("pycodec::windowed_decode_split", mutates_args=(), device_types="cuda")
def windowed_decode_split(blob: torch.Tensor, table: torch.Tensor, value16: torch.Tensor, raw: torch.Tensor,
                          layout: list[int], top: int) -> torch.Tensor:
    """The 16-bit float bits (int16 [n]) of a lossless split weight, from its v2 stream in `blob`,
    each symbol's value16 (int16 [256], values << (16 - top)) and its raw bytes, in one kernel:
    windowed_decode + split_merge without the symbols crossing global memory."""
    return _windowed_decode_split(blob, table, value16, raw, layout, top)


def _windowed_decode_split(blob, table, value16, raw, layout, top):
    op = "windowed_decode_split"
    _check_stream(op, blob, table, layout)
    device = _same_device(op, blob, table, value16, raw)
    n, low = layout[4], 16 - top
    if value16.dtype != torch.int16 or value16.numel() != 256 or not value16.is_contiguous() or not 8 <= top <= 15:
        raise CodecError(f"{op}: value16 int16 [256], top in 8..15")
    raw_words = _check_raw(op, raw, n, low)
    if layout[5] > split_decode_max_chunk():
        raise CodecError(f"{op}: chunks of {layout[5]} symbols do not fit this device's shared memory "
                         f"(at most {split_decode_max_chunk()}): use windowed_decode + split_merge")
    out = torch.empty(n, dtype=torch.int16, device=device)
    status = torch.zeros(1, dtype=torch.int32, device=device)
    if n:
        with _guard(device):
            _launch(op, _view(blob, layout, table), table.data_ptr(), value16.data_ptr(), raw.data_ptr(), raw_words, low,
                    out.data_ptr(), status.data_ptr(), _stream())
    return out


@windowed_decode_split.register_fake
def _(blob, table, value16, raw, layout, top):
    return blob.new_empty((layout[4],), dtype=torch.int16)


# ---------------------------------------------------------------------------- legacy v1 streams

@torch.library.custom_op("pycodec::decode_symbols", mutates_args=(), device_types="cuda")
def decode_symbols(index: torch.Tensor, payload: torch.Tensor, table: torch.Tensor, coder: int, n_symbols: int,
                   chunk_symbols: int) -> torch.Tensor:
    """Decodes a format-v1 stream (index, payload: int32 views; table: int32 [4096]) into uint8 [n]."""
    op = "decode_symbols"
    if coder not in (1, 2) or chunk_symbols < 32 or chunk_symbols % 32 or chunk_symbols > _C.MAX_CHUNK_SYMBOLS:
        raise CodecError(f"{op}: not a version-1 stream layout (coder {coder}, chunk_symbols {chunk_symbols})")
    n_chunks = -(-n_symbols // chunk_symbols)
    if index.numel() != n_chunks or table.numel() < 4096:
        raise CodecError(f"{op}: index has {index.numel()} entries, expected {n_chunks}; table needs 4096")
    device = _same_device(op, payload, index, table)
    if not _C.cuda_compiled():
        raise CodecError(f"{op}: this pycodec build has no CUDA kernels (built without nvcc)")
    out = torch.empty(n_symbols, dtype=torch.uint8, device=device)
    if n_symbols:
        with torch.cuda.device(device):
            _C.cuda_decode(coder, n_symbols, chunk_symbols, n_chunks, index.data_ptr(), payload.data_ptr(),
                           payload.numel(), table.data_ptr(), out.data_ptr(), _stream())
    return out


@decode_symbols.register_fake
def _(index, payload, table, coder, n_symbols, chunk_symbols):
    return payload.new_empty((n_symbols,), dtype=torch.uint8)


def v1_views(blob: torch.Tensor, layout: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 views of a v1 stream's index and payload inside its (device) blob tensor."""
    index_offset, _, payload_offset, payload_words = layout[:4]
    return (blob[index_offset:payload_offset].view(torch.int32),
            blob[payload_offset:payload_offset + 4 * payload_words].view(torch.int32))


def _decode_v1(buf: Any, s: StreamLayout, device: torch.device) -> torch.Tensor:
    host = torch.frombuffer(bytearray(buf), dtype=torch.uint8)
    dev = host.to(device)
    index, payload = v1_views(dev, s.ints)
    table = kernel_tables(buf)["table"][:4096].to(device)
    return decode_symbols(index, payload, table, CODER_IDS[s.coder], s.n_symbols, s.chunk_symbols)


def _cpu_refusal(name: str):
    def refuse(*args, **kwargs):
        raise CodecError(f"pycodec::{name} runs on CUDA tensors only; on the CPU use pycodec.decode / "
                         "CompressedLinear's CPU path")
    return refuse


for _op in (windowed_decode, windowed_gemv_affine, windowed_gemv_split, split_merge, windowed_decode_split,
            decode_symbols):
    _op.register_kernel("cpu")(_cpu_refusal(_op._name.split("::")[-1]))


# ---------------------------------------------------------------------------- fixed12 (csrc/codec/fixed12.h)

def fixed12_escapes(escape_index: torch.Tensor, escape_bits: torch.Tensor, low: torch.Tensor, n_rows: int,
                    k: int) -> dict[str, torch.Tensor]:
    """The escapes of a fixed12 weight (CPU tensors) as its GEMV reads them: ``escape_row`` int32
    [n_rows + 1] (CSR offsets), ``escape_col`` int32 [E] and ``escape_value`` fp32 [E, 2]: each
    weight's value and the value its code 0 decodes to (top byte 0, its own low byte)."""
    idx = escape_index.reshape(-1).to(torch.int64)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_rows * k):
        raise CodecError("fixed12: escape index outside the weight")
    order = torch.argsort(idx)
    idx = idx[order]
    value = escape_bits.reshape(-1)[order].view(torch.int16).to(torch.int32) & 0xFFFF
    decoded = low.reshape(-1)[idx].to(torch.int32)
    as_float = lambda bits: (bits << 16).view(torch.float32)  # noqa: E731 (bf16 is fp32's top half)
    row_ptr = torch.zeros(n_rows + 1, dtype=torch.int64)
    row_ptr[1:] = torch.cumsum(torch.bincount(idx // max(k, 1), minlength=n_rows), 0)
    return {"escape_row": row_ptr.to(torch.int32), "escape_col": (idx % max(k, 1)).to(torch.int32),
            "escape_value": torch.stack([as_float(value), as_float(decoded)], dim=1).contiguous()}


def _check_fixed12(op: str, codes: torch.Tensor, low: torch.Tensor, base: int, n: int) -> int:
    """The pieces of a fixed12 weight of n weights, once its buffers are checked to hold them."""
    pieces = -(-n // 8)
    if (codes.dtype != torch.uint8 or low.dtype != torch.uint8 or codes.numel() != 4 * pieces or
            low.numel() != 8 * pieces or not codes.is_contiguous() or not low.is_contiguous()):
        raise CodecError(f"{op}: codes and low must be contiguous uint8 [{4 * pieces}] and [{8 * pieces}]")
    if codes.data_ptr() % 4 or low.data_ptr() % 8:
        raise CodecError(f"{op}: codes must be 4-byte and low 8-byte aligned")
    if not 0 <= base <= _C.FIXED12_MAX_BASE:
        raise CodecError(f"{op}: base {base} outside 0..{_C.FIXED12_MAX_BASE}")
    return pieces


@torch.library.custom_op("pycodec::fixed12_gemv", mutates_args=(), device_types="cuda")
def fixed12_gemv(x: torch.Tensor, codes: torch.Tensor, low: torch.Tensor, escape_row: torch.Tensor,
                 escape_col: torch.Tensor, escape_value: torch.Tensor, bias: torch.Tensor | None, base: int, n_rows: int,
                 k: int) -> torch.Tensor:
    """y = x W^T + bias [B, n_rows] in x's dtype for a fixed12 bf16 weight [n_rows, k] (quant.KIND_FIXED),
    B 1..16, K % 8 == 0; escapes as fixed12_escapes gives them (empty tensors: none). bf16 and fp32 x
    are read as they are and y written in one launch (fp16 x: through fp32)."""
    return _fixed12_gemv(x, codes, low, escape_row, escape_col, escape_value, bias, base, n_rows, k)


def _fixed12_gemv(x, codes, low, escape_row, escape_col, escape_value, bias, base, n_rows, k):
    op = "fixed12_gemv"
    device = _same_device(op, x, codes, low, escape_row, escape_col, escape_value, *([] if bias is None else [bias]))
    if x.dim() != 2 or x.shape[1] != k or not 1 <= x.shape[0] <= MAX_BATCH or k % 8 or n_rows < 1:
        raise CodecError(f"{op}: unsupported shape: x {tuple(x.shape)}, weight [{n_rows}, {k}] (batch 1..16, K % 8 == 0)")
    if bias is not None and bias.numel() != n_rows:
        raise CodecError(f"{op}: bias must have {n_rows} values, has {bias.numel()}")
    pieces = _check_fixed12(op, codes, low, base, n_rows * k)
    n_escapes = escape_col.numel()
    if n_escapes and (escape_row.dtype != torch.int32 or escape_row.numel() != n_rows + 1 or
                      escape_col.dtype != torch.int32 or escape_value.dtype != torch.float32 or
                      escape_value.numel() != 2 * n_escapes or not escape_value.is_contiguous()):
        raise CodecError(f"{op}: escapes must be fixed12_escapes' int32 [n_rows + 1], int32 [E], fp32 [E, 2]")
    work = x if x.dtype in (torch.bfloat16, torch.float32) else x.float()
    if not work.is_contiguous() or work.data_ptr() % 16:  # rows are read 16 bytes at a time
        work = work.clone(memory_format=torch.contiguous_format)
    if bias is not None:
        bias = bias.to(work.dtype).contiguous()
    batch = x.shape[0]
    y = torch.empty((batch, n_rows), dtype=work.dtype, device=device)
    with _guard(device):
        _launch(op, codes.data_ptr(), low.data_ptr(), pieces, base, work.data_ptr(), work.dtype == torch.bfloat16,
                batch if batch <= 8 else MAX_BATCH, batch, n_rows, k, 0 if bias is None else bias.data_ptr(),
                y.data_ptr(), escape_row.data_ptr() if n_escapes else 0, escape_col.data_ptr() if n_escapes else 0,
                escape_value.data_ptr() if n_escapes else 0, n_escapes, _stream())
    return y if y.dtype == x.dtype else y.to(x.dtype)


@fixed12_gemv.register_fake
def _(x, codes, low, escape_row, escape_col, escape_value, bias, base, n_rows, k):
    return x.new_empty((x.shape[0], n_rows))


@torch.library.custom_op("pycodec::fixed12_decode", mutates_args=(), device_types="cuda")
def fixed12_decode(codes: torch.Tensor, low: torch.Tensor, escape_index: torch.Tensor, escape_bits: torch.Tensor,
                   base: int, n: int) -> torch.Tensor:
    """The bf16 bits (int16 [n]) of a fixed12 weight of n weights, escapes included: exact."""
    return _fixed12_decode(codes, low, escape_index, escape_bits, base, n)


def _fixed12_decode(codes, low, escape_index, escape_bits, base, n):
    op = "fixed12_decode"
    device = _same_device(op, codes, low, escape_index, escape_bits)
    pieces = _check_fixed12(op, codes, low, base, n)
    out = torch.empty(8 * pieces, dtype=torch.int16, device=device)
    if pieces:
        with _guard(device):
            _launch(op, codes.data_ptr(), low.data_ptr(), pieces, base, out.data_ptr(), _stream())
    out = out[:n]
    if escape_index.numel():  # indices checked on the host when the weight was packed or loaded
        out[escape_index] = escape_bits
    return out


@fixed12_decode.register_fake
def _(codes, low, escape_index, escape_bits, base, n):
    return codes.new_empty((n,), dtype=torch.int16)
