"""pycodec: entropy-coded neural-network weights (Huffman and rANS).

Quick use::

    blob = pycodec.encode(symbols_uint8, coder="rans")
    symbols = pycodec.decode(blob)
    pycodec.inspect(blob)["bits_per_symbol"]
"""
from ._C import FORMAT_VERSION
from .codec import CODERS, CodecError, decode, encode, entropy_bits, inspect
from .config import CompressionConfig
from .hub import from_pretrained, save_pretrained
from .nn import CompressedLinear, compress_, decompress_

try:  # transformers' from_pretrained learns quant_method "pycodec" when transformers is present
    from . import hf as _hf  # noqa: F401
except ImportError:
    pass

__version__ = "0.1.0"

__all__ = ["CODERS", "CodecError", "CompressedLinear", "CompressionConfig", "FORMAT_VERSION", "compress_",
           "decode", "decompress_", "encode", "entropy_bits", "from_pretrained", "inspect", "save_pretrained",
           "__version__"]
