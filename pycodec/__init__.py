"""pycodec: entropy-coded neural-network weights (Huffman and rANS).

Quick use::

    blob = pycodec.encode(symbols_uint8, coder="rans")
    symbols = pycodec.decode(blob)
    pycodec.inspect(blob)["bits_per_symbol"]
"""
from ._C import FORMAT_VERSION
from .codec import CODERS, CodecError, decode, encode, entropy_bits, inspect

__version__ = "0.1.0"

__all__ = ["CODERS", "CodecError", "FORMAT_VERSION", "decode", "encode", "entropy_bits", "inspect", "__version__"]
