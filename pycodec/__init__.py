"""pycodec: entropy-coded neural-network weights (Huffman and rANS).

Quick use::

    blob = pycodec.encode(symbols_uint8, coder="rans")
    symbols = pycodec.decode(blob)
    pycodec.inspect(blob)["bits_per_symbol"]

The codec needs numpy only; model compression (compress_, CompressedLinear, save/load)
needs torch, and the transformers hook registers itself when transformers is installed.
"""
import os as _os

from ._C import FORMAT_VERSION
from .codec import CODERS, CodecError, decode, encode, encoded_size, entropy_bits, inspect
from .config import CompressionConfig

__version__ = "0.1.0"

__all__ = ["CODERS", "CodecError", "CompressionConfig", "FORMAT_VERSION", "decode", "encode", "encoded_size",
           "entropy_bits", "inspect", "__version__"]

try:
    import torch as _torch  # noqa: F401
except ImportError:  # numpy-only install: the codec above is the whole API
    _torch = None

if _torch is not None:
    from ._threads import use_torch_threads
    from .hub import from_pretrained, save_pretrained
    from .nn import CompressedLinear, DecodedCache, cache_decoded, compress_, decompress_
    from .stream import Streamer, stream

    __all__ += ["CompressedLinear", "DecodedCache", "cache_decoded", "compress_", "decompress_", "from_pretrained",
                "save_pretrained", "stream", "Streamer", "use_torch_threads"]
    # pycodec's parallel calls run on torch's OpenMP team (pycodec/_threads.py says why).
    if _os.environ.get("PYCODEC_OWN_THREADS", "0") in ("", "0"):
        use_torch_threads(True)
    # transformers' from_pretrained learns quant_method "pycodec": now if transformers is loaded,
    # else as soon as it is (importing it here cost 2.6 s of a 3.6 s `import pycodec`).
    from ._lazy_hf import register_with_transformers

    register_with_transformers()
