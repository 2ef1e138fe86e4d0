"""CompressionConfig: what to do to a model's weights, versioned and JSON-serializable."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .codec import CODERS, CodecError

CONFIG_VERSION = 1
MODES = ("lossless", "int", "rate")


@dataclass(frozen=True)
class CompressionConfig:
    """How ``pycodec.compress_`` converts a model.

    mode:
      ``"lossless"`` -- bit-exact: float fields split into byte planes, each entropy-coded
      (or kept raw when coding would not pay).
      ``"int"`` -- group-wise integer quantization to ``bits`` (2..8) bits, fp16 scales and
      zeros per ``group_size`` weights of a row, symbols entropy-coded.
      ``"rate"`` -- entropy-constrained uniform quantization: one step per output row,
      chosen so the coded layer meets ``bits`` bits per weight, side information included;
      rare large values are kept exactly as escapes.
    prune: fraction of smallest-magnitude weights zeroed before quantization (not lossless).
    skip: module-name suffixes left untouched (``lm_head`` by default).
    coder: ``"huffman"`` (stream format v2, what the GPU kernels decode) or ``"rans"`` (v1: a
    little smaller, decoded on the CPU; on a GPU only through a slower decode-then-matmul path).
    exact_outputs: on a GPU, lossless weights are rebuilt and multiplied by cuBLAS, so outputs
    are bitwise those of the uncompressed model; by default they go through the fused GEMV
    (weights bit-exact, accumulation order different, faster).
    """

    mode: str = "rate"
    bits: float = 3.5
    group_size: int = 128
    symmetric: bool = False
    prune: float = 0.0
    coder: str = "huffman"
    chunk_symbols: int | None = None
    skip: tuple = ("lm_head",)
    exact_outputs: bool = False
    version: int = field(default=CONFIG_VERSION)

    def __post_init__(self):
        if self.mode not in MODES:
            raise CodecError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.coder not in CODERS:
            raise CodecError(f"coder must be one of {CODERS}, got {self.coder!r}")
        if self.mode == "int" and not (2 <= self.bits <= 8 and float(self.bits).is_integer()):
            raise CodecError(f"int mode needs an integer bit width in 2..8, got {self.bits}")
        if self.mode == "rate" and not (0.5 <= self.bits <= 8):
            raise CodecError(f"rate mode needs a target of 0.5..8 bits per weight, got {self.bits}")
        if self.group_size < 1:
            raise CodecError(f"group_size must be positive, got {self.group_size}")
        if not 0.0 <= self.prune < 1.0:
            raise CodecError(f"prune must be in [0, 1), got {self.prune}")
        if self.mode == "lossless" and self.prune:
            raise CodecError("prune changes weights, so it cannot be combined with lossless mode")
        if self.version != CONFIG_VERSION:
            raise CodecError(f"unsupported CompressionConfig version {self.version} (this pycodec reads {CONFIG_VERSION})")
        object.__setattr__(self, "skip", tuple(self.skip))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["skip"] = list(self.skip)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CompressionConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known - {"quant_method"}
        if unknown:
            raise CodecError(f"unknown CompressionConfig fields: {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "CompressionConfig":
        return cls.from_dict(json.loads(s))
