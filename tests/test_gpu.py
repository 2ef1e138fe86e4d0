"""Runs tests/gpu in a fresh process when a CUDA device is present (see tests/gpu/conftest.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.gpu
def test_gpu_suite_in_its_own_process():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: tests/gpu needs one (make gpu-check on a GPU machine)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests/gpu")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]
