"""CompressionConfig: what to do to a model's weights, versioned and JSON-serializable."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .codec import CODERS, SPLITS, CodecError

CONFIG_VERSION = 1
MODES = ("lossless", "int", "rate")
# lossless_split: encode_split's cuts, and the fixed-width layout (quant.pack_fixed12)
LOSSLESS_SPLITS = SPLITS + ("fixed12",)
# Calibration defaults (pycodec.calibrate). Up to 8192 tokens: the second moments of 576..1536-wide
# inputs need several times their width (2048 calibrated measurably worse), and SmolLM2-135M
# still calibrates in about a minute on 2 cores.
DEFAULT_CALIBRATION_TOKENS = 8192
DEFAULT_DAMP = 0.01
# Tuned on SmolLM2-135M's perplexity on a held-out text (MPL-2.0, neither the calibration nor the
# evaluation text): 0.3-0.4 was best at 2.5 bits, 0.6-1.2 at 3.5 bits, 0 (plain GPTQ) far worse at both.
DEFAULT_RDOQ_LAMBDA = 0.5
BIT_ALLOCATIONS = ("sensitivity", "uniform")
CALIBRATION_FIELDS = ("calibration", "calibration_tokens", "damp", "rdoq_lambda", "bit_allocation")


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
    skip: module-name suffixes left untouched (none by default). A table shared by an embedding
    and the output head (tied ``lm_head``) is compressed once and used by both; skipping either
    keeps it dense (compressing it for one of them would store it twice).
    embedding_bits: int and rate modes: the bits of token embeddings and the output head
    (``lm_head``), to which perplexity is most sensitive; None: ``bits`` + 1.5 in rate mode,
    ``bits`` + 2 in int mode, at most 8 (llama.cpp's k-quants likewise keep them wider).
    coder: ``"huffman"`` (stream format v2, what the GPU kernels decode) or ``"rans"`` (v1: a
    little smaller, decoded on the CPU; on a GPU only through a slower decode-then-matmul path).
    lossless_split: lossless mode: ``"smallest"`` cuts each 16-bit float weight at the top bits
      that make it smallest; ``"byte"`` at its top byte, every top byte its own symbol: ~0.15
      bits a weight more (SmolLM2 bf16 10.78 against 10.63), about half the instructions per
      weight in the GPU's lossless kernels (bench/sass_count.py); ``"fixed12"``: no entropy coder,
      each bf16 weight's low byte raw and its top byte a 4-bit code: its sign and one of 7 exponent
      values per tensor, or zero (the rest, ~5e-4 of real weights, kept exactly aside): ~12.04 bits
      a weight (SmolLM2 and MiniLM bf16), ~3 GPU instructions a weight in its GEMV (tensor cores,
      batch 1-16), so that it can run at memory speed (fp16 weights take the byte split, fp32 the smallest). Saved
      configs without it read ``"smallest"``, as they were made.
    exact_outputs: on a GPU, lossless weights are rebuilt and multiplied by cuBLAS, so outputs
    are bitwise those of the uncompressed model; by default they go through the fused GEMV
    (weights bit-exact, accumulation order different, faster).
    calibration: None (the weights alone decide), or a text the model reads so that each linear
    layer's rounding minimizes the error of its outputs rather than of its weights
    (pycodec.calibrate: GPTQ error feedback, rate-distortion optimized rounding in rate mode):
    a path to a text file, or ``"default"`` for licence texts that ship with Debian
    (pycodec.calibrate.DEFAULT_CALIBRATION_TEXTS). int and rate modes only; needs the tokenizer.
    calibration_tokens: tokens of that text the model reads (fewer if the text is shorter).
    damp: added to the diagonal of each layer's input second moment, as a fraction of its mean,
    so that inputs the calibration text never excites do not make the inverse blow up.
    rdoq_lambda: rate mode: rounding weighs squared error (in steps) against code length (in
    bits) at this rate, scaled per column by its importance; 0 rounds to the nearest level.
    bit_allocation: rate mode with calibration: ``"sensitivity"`` (default) makes ``bits`` the
    mean over the calibrated linear layers and gives each layer its share by how much the
    model's loss grows with its errors (pycodec.calibrate.allocate_bits); ``"uniform"``: every
    layer meets ``bits``. A model that does not predict next tokens stays uniform.
    Saved configs without calibration carry none of these five fields, as before they existed;
    calibrated configs saved before bit_allocation existed read as ``"uniform"``, as they were made.
    """

    mode: str = "rate"
    bits: float = 3.5
    group_size: int = 128
    symmetric: bool = False
    prune: float = 0.0
    coder: str = "huffman"
    chunk_symbols: int | None = None
    skip: tuple = ()
    embedding_bits: float | None = None
    exact_outputs: bool = False
    lossless_split: str = "smallest"
    calibration: str | None = None
    calibration_tokens: int = DEFAULT_CALIBRATION_TOKENS
    damp: float = DEFAULT_DAMP
    rdoq_lambda: float = DEFAULT_RDOQ_LAMBDA
    bit_allocation: str = "sensitivity"
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
        if self.lossless_split not in LOSSLESS_SPLITS:
            raise CodecError(f"lossless_split must be one of {LOSSLESS_SPLITS}, got {self.lossless_split!r}")
        if self.lossless_split != "smallest" and self.mode != "lossless":
            raise CodecError("lossless_split applies to lossless mode only")
        if self.group_size < 1:
            raise CodecError(f"group_size must be positive, got {self.group_size}")
        if not 0.0 <= self.prune < 1.0:
            raise CodecError(f"prune must be in [0, 1), got {self.prune}")
        if self.mode == "lossless" and self.prune:
            raise CodecError("prune changes weights, so it cannot be combined with lossless mode")
        if self.embedding_bits is not None:
            if self.mode == "lossless":
                raise CodecError("embedding_bits applies to int and rate modes (lossless keeps every bit)")
            if self.mode == "int" and not (2 <= self.embedding_bits <= 8 and float(self.embedding_bits).is_integer()):
                raise CodecError(f"int mode needs an integer embedding_bits in 2..8, got {self.embedding_bits}")
            if self.mode == "rate" and not (0.5 <= self.embedding_bits <= 8):
                raise CodecError(f"rate mode needs embedding_bits in 0.5..8, got {self.embedding_bits}")
        self._check_calibration()
        if self.version != CONFIG_VERSION:
            raise CodecError(f"unsupported CompressionConfig version {self.version} (this pycodec reads {CONFIG_VERSION})")
        object.__setattr__(self, "skip", tuple(self.skip))

    def _check_calibration(self) -> None:
        # Only the values are checked here: a saved config names a text that need not exist
        # where the checkpoint is loaded. pycodec.calibrate checks the file when it reads it.
        if self.calibration is None:
            defaults = {"calibration_tokens": DEFAULT_CALIBRATION_TOKENS, "damp": DEFAULT_DAMP,
                        "rdoq_lambda": DEFAULT_RDOQ_LAMBDA, "bit_allocation": "sensitivity"}
            changed = [k for k, v in defaults.items() if getattr(self, k) != v]
            if changed:
                raise CodecError(f"{', '.join(changed)} only apply with calibration (give calibration='default' "
                                 "or a text file)")
            return
        if not isinstance(self.calibration, str) or not self.calibration.strip():
            raise CodecError(f"calibration must be a text file path or 'default', got {self.calibration!r}")
        if self.mode == "lossless":
            raise CodecError("calibration decides how to round, so it needs mode 'int' or 'rate', not lossless")
        if self.prune:
            raise CodecError("calibration cannot be combined with prune")
        if isinstance(self.calibration_tokens, bool) or not isinstance(self.calibration_tokens, int) \
                or self.calibration_tokens < 1:
            raise CodecError(f"calibration_tokens must be a positive integer, got {self.calibration_tokens!r}")
        if not 0.0 < self.damp <= 1.0:
            raise CodecError(f"damp must be in (0, 1], got {self.damp}")
        if not 0.0 <= self.rdoq_lambda <= 10.0:
            raise CodecError(f"rdoq_lambda must be in [0, 10], got {self.rdoq_lambda}")
        if self.bit_allocation not in BIT_ALLOCATIONS:
            raise CodecError(f"bit_allocation must be one of {BIT_ALLOCATIONS}, got {self.bit_allocation!r}")

    @property
    def head_bits(self) -> float:
        """The bits of embeddings and the output head (embedding_bits, or its default)."""
        if self.embedding_bits is not None:
            return self.embedding_bits
        return min(8, self.bits + (2 if self.mode == "int" else 1.5))

    def for_embeddings(self) -> "CompressionConfig":
        """This config with ``head_bits`` as its ``bits`` (itself in lossless mode)."""
        if self.mode == "lossless":
            return self
        return dataclasses.replace(self, bits=self.head_bits, embedding_bits=None)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["skip"] = list(self.skip)
        if self.calibration is None:  # as configs were written before calibration existed
            for k in CALIBRATION_FIELDS:
                del d[k]
        if self.lossless_split == "smallest":  # as configs were written before the byte split existed
            del d["lossless_split"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CompressionConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known - {"quant_method"}
        if unknown:
            raise CodecError(f"unknown CompressionConfig fields: {sorted(unknown)}")
        d = {k: v for k, v in d.items() if k in known}
        if d.get("calibration") is not None and "bit_allocation" not in d:
            d["bit_allocation"] = "uniform"  # saved before allocation existed: every layer met bits
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "CompressionConfig":
        return cls.from_dict(json.loads(s))
