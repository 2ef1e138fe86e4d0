"""GPU tests: a CUDA device and a CUDA build of pycodec._C, in a process of their own.

tests/test_gpu.py (and `make gpu-check`) run this folder in a fresh interpreter: the Triton
interpreter tests set TRITON_INTERPRET=1 for their whole process, which would turn the kernels
here into interpreted ones. With a device present these tests cannot pass by skipping: a build
without CUDA kernels fails them.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the CPU tests' helpers


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="no CUDA device (torch.cuda.is_available() is False)")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _gpu_session():
    from pycodec import _C

    if torch.cuda.is_available():
        assert _C.cuda_compiled(), "a CUDA device is present but pycodec._C was built without CUDA kernels"
        assert os.environ.get("TRITON_INTERPRET") != "1", "GPU tests must not run under the Triton interpreter"
    yield
