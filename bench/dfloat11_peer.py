"""DFloat11 (pip dfloat11) as a benchmark peer: its stream format and GPU decoder, with a fast encoder.

DFloat11 codes a bf16 weight's 8 exponent bits with a Huffman code (dahuffman, lengths <= 32) and
keeps sign and mantissa as a byte. Its own encoder walks the weights one by one in Python (minutes
for a 4096 x 14336 layer, far too slow for a short GPU lease), so this module builds the same
stream with tensor operations, from the same code table (dfloat11_utils.get_codec,
get_32bit_codec, get_luts), and decodes it with the package's own kernel (decode.ptx through
CuPy), launched on torch's current stream so that CUDA graphs capture it.

The stream, as dfloat11_utils.encode writes it (bytes_per_thread B = 8, threads_per_block T = 512):
  encoded           the exponent codes back to back, MSB first; when they end off a byte, the EOF
                    code follows and the byte is completed (the rest of the EOF code is dropped)
  gaps              per thread window of 8 B bits: where its first code starts in it, 5 bits each,
                    padded with zeros to T x blocks windows, packed MSB first
  output_positions  per block of T windows: the index of its first code's element, then n (uint32)
  sign_mantissa     per element: sign << 7 | the 7 mantissa bits (uint8)
tests/test_dfloat11_peer.py checks the fast encoder byte for byte against dfloat11_utils.encode.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import os
from dataclasses import dataclass

import torch

BYTES_PER_THREAD = 8
THREADS_PER_BLOCK = 512
WINDOW_BITS = 8 * BYTES_PER_THREAD
GAP_BITS = 5


@dataclass
class DF11Stream:
    luts: torch.Tensor              # uint8 [n_luts, 256]
    encoded: torch.Tensor           # uint8
    sign_mantissa: torch.Tensor     # uint8 [n]
    output_positions: torch.Tensor  # int32 holding uint32 values [blocks + 1]
    gaps: torch.Tensor              # uint8 (5-bit fields, packed)
    shared_mem: int                 # bytes of shared memory the decode kernel needs
    n: int

    def to(self, device) -> "DF11Stream":
        move = {k: getattr(self, k).to(device) for k in ("luts", "encoded", "sign_mantissa", "output_positions",
                                                         "gaps")}
        return DF11Stream(**move, shared_mem=self.shared_mem, n=self.n)

    def nbytes(self) -> int:
        return sum(getattr(self, k).numel() * getattr(self, k).element_size()
                   for k in ("luts", "encoded", "sign_mantissa", "output_positions", "gaps"))


def package_dir() -> str:
    """Where the dfloat11 package is, without importing it: its __init__ imports CuPy (no GPU
    here), accelerate, huggingface_hub and pkg_resources (gone from recent setuptools)."""
    spec = importlib.util.find_spec("dfloat11")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("dfloat11 is not installed (pip install --no-deps dfloat11 dahuffman)")
    return list(spec.submodule_search_locations)[0]


_UTILS = None


def utils():
    """dfloat11/dfloat11_utils.py (its code table helpers and its own encoder), loaded on its own."""
    global _UTILS
    if _UTILS is None:
        spec = importlib.util.spec_from_file_location("_dfloat11_utils", os.path.join(package_dir(),
                                                                                      "dfloat11_utils.py"))
        _UTILS = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_UTILS)
    return _UTILS


def code_table(bits16: torch.Tensor):
    """DFloat11's Huffman code of the exponents: (lengths[256], codes[256], eof (length, code), luts)."""
    u = utils()
    with contextlib.redirect_stdout(io.StringIO()):  # the helpers print their tables
        _, counter = u.get_codec(bits16.view(torch.bfloat16))
        codec, _, table = u.get_32bit_codec(counter)
        luts = u.get_luts(table)
    lengths, codes = torch.zeros(256, dtype=torch.int64), torch.zeros(256, dtype=torch.int64)
    for symbol, (length, code) in codec._table.items():
        if isinstance(symbol, int):
            lengths[symbol], codes[symbol] = length, code
    return lengths, codes, codec._table[codec._eof], luts


def _first_of_runs(keys: torch.Tensor) -> torch.Tensor:
    """Indices where a nondecreasing key changes (and 0)."""
    change = torch.ones_like(keys, dtype=torch.bool)
    change[1:] = keys[1:] != keys[:-1]
    return change.nonzero().reshape(-1)


def encode(weight: torch.Tensor, threads_per_block: int = THREADS_PER_BLOCK) -> DF11Stream:
    """The DFloat11 stream of a bf16 tensor (any shape, flattened), built on the tensor's device."""
    if weight.dtype != torch.bfloat16:
        raise ValueError(f"DFloat11 codes bf16 weights, not {weight.dtype}")
    device = weight.device
    w = weight.detach().reshape(-1).view(torch.int16).to(torch.int32) & 0xFFFF
    n = w.numel()
    exponent = (w >> 7) & 0xFF
    sign_mantissa = (((w >> 8) & 0x80) | (w & 0x7F)).to(torch.uint8)
    lengths, codes, (eof_len, eof_code), luts = code_table(w.to(torch.int16).cpu())
    length = lengths.to(device)[exponent]
    code = codes.to(device)[exponent]
    end = torch.cumsum(length, 0)
    start = end - length
    total = int(end[-1])

    # Thread windows and blocks, by the first code that starts in each.
    windows = start // WINDOW_BITS
    first = _first_of_runs(windows)
    gaps = start[first] - windows[first] * WINDOW_BITS
    blocks = start // (WINDOW_BITS * threads_per_block)
    positions = _first_of_runs(blocks)
    if not (torch.equal(windows[first], torch.arange(len(first), device=device))
            and torch.equal(blocks[positions], torch.arange(len(positions), device=device))):
        raise ValueError("a code skips a whole thread window: not a stream DFloat11 can hold")
    gaps, positions = gaps.tolist(), positions.tolist()
    tail = total % 8
    if tail:  # the EOF code starts at `total`: it counts as a code start too
        if total // WINDOW_BITS + 1 > len(gaps):
            gaps.append(total - total // WINDOW_BITS * WINDOW_BITS)
        if total // (WINDOW_BITS * threads_per_block) + 1 > len(positions):
            positions.append(n)
    positions.append(n)

    # Bits: code i's bit j (MSB first) at start_i + j.
    owner = torch.repeat_interleave(torch.arange(n, device=device), length)
    offset = torch.arange(total, device=device) - start[owner]
    bits = ((code[owner] >> (length[owner] - 1 - offset)) & 1).to(torch.uint8)
    whole = total // 8
    weights8 = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=device)
    encoded = (bits[:8 * whole].view(whole, 8) * weights8).sum(1, dtype=torch.int32).to(torch.uint8)
    if tail:  # the last bits, then the EOF code's first bits, to a whole byte
        rest = int((bits[8 * whole:].to(torch.int64) << torch.arange(tail - 1, -1, -1, device=device)).sum())
        buffer, size = (rest << eof_len) + eof_code, tail + eof_len
        last = buffer >> (size - 8) if size >= 8 else buffer << (8 - size)
        encoded = torch.cat([encoded, torch.tensor([last & 0xFF], dtype=torch.uint8, device=device)])

    grid = math.ceil(encoded.numel() / (threads_per_block * BYTES_PER_THREAD))
    gaps += [0] * (threads_per_block * grid - len(gaps))
    gap_bits = (torch.tensor(gaps, dtype=torch.int64, device=device).unsqueeze(1)
                >> torch.arange(GAP_BITS - 1, -1, -1, device=device)) & 1
    gap_bits = gap_bits.reshape(-1).to(torch.uint8)
    pad = (-gap_bits.numel()) % 8
    gap_bits = torch.cat([gap_bits, torch.zeros(pad, dtype=torch.uint8, device=device)])
    packed_gaps = (gap_bits.view(-1, 8) * weights8).sum(1, dtype=torch.int32).to(torch.uint8)

    out_pos = torch.tensor(positions, dtype=torch.int64)
    shared_mem = threads_per_block * 4 + 4 + int((out_pos[1:] - out_pos[:-1]).max()) * 2
    return DF11Stream(luts=luts.to(device), encoded=encoded, sign_mantissa=sign_mantissa,
                      output_positions=out_pos.to(torch.int32).to(device), gaps=packed_gaps,
                      shared_mem=shared_mem, n=n)


_KERNEL = None


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        import cupy as cp

        _KERNEL = cp.RawModule(path=os.path.join(package_dir(), "decode.ptx")).get_function("decode")
    return _KERNEL


def decode(s: DF11Stream, out: torch.Tensor | None = None, threads_per_block: int = THREADS_PER_BLOCK) -> torch.Tensor:
    """The bf16 values of a stream on its CUDA device, by DFloat11's kernel on torch's stream."""
    import cupy as cp

    if out is None:
        out = torch.empty(s.n, dtype=torch.bfloat16, device=s.encoded.device)
    n_bytes = s.encoded.numel()
    grid = (math.ceil(n_bytes / (threads_per_block * BYTES_PER_THREAD)),)
    with cp.cuda.Device(out.device.index), cp.cuda.ExternalStream(torch.cuda.current_stream(out.device).cuda_stream):
        _kernel()(grid, (threads_per_block,), (s.luts.data_ptr(), s.encoded.data_ptr(), s.sign_mantissa.data_ptr(),
                                                s.output_positions.data_ptr(), s.gaps.data_ptr(), out.data_ptr(),
                                                cp.uint32(s.luts.shape[0]), cp.uint32(n_bytes), cp.uint32(s.n)),
                  shared_mem=s.shared_mem)
    return out


class DF11Linear(torch.nn.Module):
    """y = x W^T the way DFloat11 runs a layer: decode the weight into a reused buffer, then cuBLAS."""

    def __init__(self, dense: torch.nn.Linear):
        super().__init__()
        self.out_features, self.in_features = dense.out_features, dense.in_features
        self.stream = encode(dense.weight.detach().to(torch.bfloat16).cuda())
        self.buffer = torch.empty(self.stream.n, dtype=torch.bfloat16, device="cuda")
        self.bias = dense.bias

    def compressed_bytes(self) -> int:
        return self.stream.nbytes()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = decode(self.stream, self.buffer).view(self.out_features, self.in_features)
        return torch.nn.functional.linear(x, w, self.bias)
