"""Process-wide settings that must precede every import in the test modules.

TRITON_INTERPRET=1: Triton reads it when it is first imported, and the Triton interpreter tests
(tests/test_triton_kernels.py) run on the CPU only through it. Any earlier import of triton
(transformers imports optional quantizers such as hqq, which import triton, when they are
installed) would otherwise leave those kernels compiled for a GPU that is not there. The GPU
tier runs in a process of its own without it (tests/test_gpu.py).
"""
import os

os.environ["TRITON_INTERPRET"] = "1"
