"""Process-wide settings that must precede every import in the test modules.

TRITON_INTERPRET=1: Triton reads it when it is first imported, and the Triton interpreter tests
(tests/test_triton_kernels.py) run on the CPU only through it. Any earlier import of triton
(transformers imports optional quantizers such as hqq, which import triton, when they are
installed) would otherwise leave those kernels compiled for a GPU that is not there. The GPU
tier runs in a process of its own without it (tests/test_gpu.py).
"""
import os

os.environ["TRITON_INTERPRET"] = "1"

# The packaged SmolLM2 is converted from its GGUF once (pycodec/cli.py, load_source) into a cache:
# the tests' own, never the user's home, kept between runs on one machine.
import tempfile  # noqa: E402

os.environ.setdefault("PYCODEC_CACHE", os.path.join(tempfile.gettempdir(), f"pycodec-tests-{os.getuid()}"))
