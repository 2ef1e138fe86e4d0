"""CUDA kernels compile wherever nvcc exists; the GPU ops check their arguments on the CPU.

Their behaviour on a device is tested in tests/gpu (its own process, tests/test_gpu.py)."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from _tools import find_tool

import pycodec
from pycodec import _C

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT_S = 600  # the two kernels for sm_80 + sm_90 build in ~10 s on 2 cores


CMAKE, NVCC = find_tool("cmake"), shutil.which("nvcc")


def _run(cmd, timeout):
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH")
@pytest.mark.skipif(CMAKE is None, reason="cmake not found")
def test_cuda_kernels_compile():
    assert (REPO_ROOT / "csrc" / "cuda" / "windowed_cuda.cu").is_file()
    with tempfile.TemporaryDirectory(prefix="pycodec-cuda-") as build:
        rc, log = _run([CMAKE, "-S", str(REPO_ROOT), "-B", build, "-DPYCODEC_ENABLE_CUDA=ON",
                        f"-DCMAKE_CUDA_COMPILER={NVCC}"], BUILD_TIMEOUT_S)
        assert rc == 0, f"cmake configure failed:\n{log}"
        # Without this line CMake fell back to the stub and the build below proves nothing.
        assert "CUDA kernels enabled" in log, log
        t0 = time.monotonic()
        rc, log = _run([CMAKE, "--build", build, "--target", "pycodec_cuda", "-j2"], BUILD_TIMEOUT_S)
        assert rc == 0, f"CUDA build failed after {time.monotonic() - t0:.0f} s:\n{log}"
        assert "decode_cuda.cu" in log and "windowed_cuda.cu" in log, log
        warnings = [line for line in log.splitlines() if "warning" in line.lower() and "_cuda" in line]
        assert not warnings, log


# ---------------------------------------------------------------------------- ops on the CPU

torch = pytest.importorskip("torch")


def test_ops_reject_cpu_tensors():
    from pycodec import cuda_ops

    blob = pycodec.encode(np.arange(100, dtype=np.uint8).reshape(4, 25))
    s = cuda_ops.stream_layout(blob)
    t = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    table = cuda_ops.kernel_tables(blob)["table"]
    assert s.version == 2 and table.numel() == cuda_ops.TABLE_WORDS
    with pytest.raises(pycodec.CodecError, match="CUDA"):
        torch.ops.pycodec.windowed_decode(cuda_ops.with_slack(t), table, s.ints)


def test_op_fake_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from pycodec import cuda_ops  # noqa: F401  (registers the ops)

    with FakeTensorMode():
        blob = torch.empty(1000, dtype=torch.uint8)
        table = torch.empty(cuda_ops.TABLE_WORDS, dtype=torch.int32)
        out = torch.ops.pycodec.windowed_decode(blob, table, [0, 0, 0, 0, 777, 777, 1, 32, 0, 0])
        assert out.shape == (777,) and out.dtype == torch.uint8
        x = torch.empty(3, 64)
        e = torch.empty(0)
        y = torch.ops.pycodec.windowed_gemv_affine(x, blob, table, e, e, e, e, e, e, [0] * 10, 0.0, 64, 10, 64)
        assert y.shape == (3, 10) and y.dtype == torch.float32
        y = torch.ops.pycodec.windowed_gemv_split(x, blob, table, e, e, [0] * 10, 10, 12, 64)
        assert y.shape == (3, 12)


def test_stream_layout_matches_the_blob():
    """The offsets _C.info reports tile the blob exactly: super offsets, sizes, payload."""
    from pycodec.cuda_ops import stream_layout

    sym = np.random.default_rng(3).integers(0, 9, (50, 100), dtype=np.uint8)
    blob = pycodec.encode(sym, chunk_symbols=1000)
    s = stream_layout(blob)
    assert (s.n_chunks, s.chunk_symbols, s.version) == (5, 1000, 2)
    assert s.sizes_offset == s.index_offset + 4 and s.payload_offset == s.sizes_offset + 12
    assert s.payload_offset + 4 * s.payload_words == len(blob)
    sizes = np.frombuffer(blob, "<u2", count=s.n_chunks, offset=s.sizes_offset)
    assert int(sizes.sum()) == s.payload_words


def test_with_slack_pads_only_when_needed():
    from pycodec.cuda_ops import SLACK_BYTES, with_slack

    t = torch.arange(10, dtype=torch.uint8)
    p = with_slack(t)
    assert p is not t and torch.equal(p, t)
    assert p.untyped_storage().nbytes() >= 10 + SLACK_BYTES
    assert with_slack(p) is p
