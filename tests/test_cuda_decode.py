"""CUDA decoders: they compile wherever nvcc exists, and on a GPU decode bit-exactly like the CPU."""
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
    assert (REPO_ROOT / "csrc" / "cuda" / "decode_cuda.cu").is_file()
    with tempfile.TemporaryDirectory(prefix="pycodec-cuda-") as build:
        rc, log = _run([CMAKE, "-S", str(REPO_ROOT), "-B", build, "-DPYCODEC_ENABLE_CUDA=ON",
                        f"-DCMAKE_CUDA_COMPILER={NVCC}"], BUILD_TIMEOUT_S)
        assert rc == 0, f"cmake configure failed:\n{log}"
        # Without this line CMake fell back to the stub and the build below proves nothing.
        assert "CUDA kernels enabled" in log, log
        t0 = time.monotonic()
        rc, log = _run([CMAKE, "--build", build, "--target", "pycodec_cuda", "-j2"], BUILD_TIMEOUT_S)
        assert rc == 0, f"CUDA build failed after {time.monotonic() - t0:.0f} s:\n{log}"
        assert "decode_cuda.cu" in log, log
        warnings = [line for line in log.splitlines() if "warning" in line.lower() and "decode_cuda" in line]
        assert not warnings, log


# ---------------------------------------------------------------------------- GPU tests

torch = pytest.importorskip("torch")
_HAS_GPU = torch.cuda.is_available()
_HAS_KERNELS = bool(_C.cuda_compiled())

gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not _HAS_GPU, reason="no CUDA device (torch.cuda.is_available() is False)")
needs_kernels = pytest.mark.skipif(not _HAS_KERNELS, reason="pycodec._C was built without CUDA kernels")

CHUNKS = [32, 64, 4096, None]  # None = the coder's default


def _default_chunk(coder: str, chunk: int | None) -> int:
    return chunk or int(_C.DEFAULT_CHUNK_SYMBOLS[coder])


def _hostile(kind: str, chunk: int) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(f"{kind}/{chunk}".encode()))
    sizes = {"empty": 0, "one": 1, "n31": 31, "n33": 33, "n63": 63, "n65": 65, "chunk-1": chunk - 1,
             "chunk+1": chunk + 1}
    if kind in sizes:
        return rng.integers(0, 256, sizes[kind], dtype=np.uint8) if kind != "empty" else np.zeros(0, np.uint8)
    if kind == "constant":
        return np.full(3 * chunk + 17, 201, dtype=np.uint8)
    if kind == "all256":
        return np.tile(np.arange(256, dtype=np.uint8), 9)[: 256 * 9 - 5]
    if kind == "skewed":
        # One dominant symbol, rare long codes: exercises both pair and two-lookup rounds.
        x = rng.integers(0, 3, 50_000, dtype=np.uint8)
        hit = rng.random(x.size) < 0.002
        x[hit] = rng.integers(3, 256, int(hit.sum()), dtype=np.uint8)
        return x
    if kind == "gauss4m":
        return np.clip(rng.normal(128, 12, 4 * 1024 * 1024), 0, 255).astype(np.uint8)
    raise AssertionError(kind)


KINDS = ["empty", "one", "n31", "n33", "n63", "n65", "chunk-1", "chunk+1", "constant", "all256", "skewed",
         "gauss4m"]


@gpu
@needs_gpu
@needs_kernels
@pytest.mark.parametrize("coder", ["huffman", "rans"])
@pytest.mark.parametrize("chunk", CHUNKS, ids=lambda c: f"chunk{c or 'default'}")
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_decode_bit_exact(coder, chunk, kind):
    from pycodec import cuda_ops

    sym = _hostile(kind, _default_chunk(coder, chunk))
    blob = pycodec.encode(sym, coder=coder, chunk_symbols=chunk)
    expect = pycodec.decode(blob)
    got = cuda_ops.decode_cuda(blob, "cuda")
    torch.cuda.synchronize()
    assert got.device.type == "cuda" and got.dtype == torch.uint8
    got_np = got.cpu().numpy()
    assert got_np.shape == expect.shape
    if not np.array_equal(got_np, expect):
        bad = np.flatnonzero(got_np.reshape(-1) != expect.reshape(-1))
        pytest.fail(f"{bad.size} symbols differ, first at {bad[:8].tolist()}")


@gpu
@needs_gpu
@needs_kernels
def test_cuda_decode_odd_output_pointer():
    # The Huffman kernel stores symbol pairs as 16 bits only when the output is even-aligned.
    from pycodec import cuda_ops

    sym = _hostile("gauss4m", 4096)[:100_000]
    for coder in ("huffman", "rans"):
        s = cuda_ops.to_device_stream(pycodec.encode(sym, coder=coder, chunk_symbols=4096), "cuda")
        base = torch.empty(sym.size + 1, dtype=torch.uint8, device="cuda")
        n_chunks = s["n_chunks"]
        _C.cuda_decode(s["coder"], s["n_symbols"], s["chunk_symbols"], n_chunks, s["index"].data_ptr(),
                       s["payload"].data_ptr(), s["payload_words"], s["table"].data_ptr(), base.data_ptr() + 1,
                       torch.cuda.current_stream().cuda_stream)
        torch.cuda.synchronize()
        np.testing.assert_array_equal(base[1:].cpu().numpy(), sym)


@gpu
@needs_gpu
@needs_kernels
@pytest.mark.parametrize("coder", ["huffman", "rans"])
def test_cuda_op_under_torch_compile(coder):
    from pycodec import cuda_ops

    sym = _hostile("gauss4m", 4096)[:300_001]
    s = cuda_ops.to_device_stream(pycodec.encode(sym, coder=coder), "cuda")
    n, chunk, c = s["n_symbols"], s["chunk_symbols"], s["coder"]

    def dequant(index, payload, table):
        q = torch.ops.pycodec.decode_symbols(index, payload, table, c, n, chunk)
        return (q.to(torch.float32) - 128.0) * 0.5

    compiled = torch.compile(dequant, fullgraph=True)
    got = compiled(s["index"], s["payload"], s["table"])
    expect = (torch.from_numpy(sym).to(torch.float32) - 128.0) * 0.5
    torch.testing.assert_close(got.cpu(), expect, rtol=0, atol=0)


def test_op_rejects_cpu_tensors():
    from pycodec import cuda_ops

    s = cuda_ops.to_device_stream(pycodec.encode(np.arange(100, dtype=np.uint8), coder="rans", chunk_symbols=32),
                                  "cpu")
    assert s["n_chunks"] == 4 and s["table"].numel() == 4096 and s["payload"].numel() == s["payload_words"]
    with pytest.raises(pycodec.CodecError, match="CUDA"):
        torch.ops.pycodec.decode_symbols(s["index"], s["payload"], s["table"], s["coder"], s["n_symbols"],
                                         s["chunk_symbols"])


def test_op_fake_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from pycodec import cuda_ops  # noqa: F401  (registers the op)

    with FakeTensorMode():
        idx = torch.empty(4, dtype=torch.int32)
        out = torch.ops.pycodec.decode_symbols(idx, torch.empty(50, dtype=torch.int32),
                                               torch.empty(4096, dtype=torch.int32), 1, 100, 32)
        assert out.shape == (100,) and out.dtype == torch.uint8


def test_stream_layout_matches_the_blob():
    """The offsets _C.info reports tile the blob exactly: index, then payload, to the end."""
    from pycodec.cuda_ops import stream_layout

    rng = np.random.default_rng(3)
    for coder in ("huffman", "rans"):
        sym = rng.integers(0, 9, 5000, dtype=np.uint8)
        blob = pycodec.encode(sym, coder=coder, chunk_symbols=1024)
        s = stream_layout(blob)
        assert s["n_chunks"] == 5 and s["index_offset"] + 4 * s["n_chunks"] == s["payload_offset"]
        assert s["payload_offset"] + 4 * s["payload_words"] == len(blob)
        index = np.frombuffer(blob, "<u4", count=s["n_chunks"], offset=s["index_offset"])
        assert index[0] == 0 and np.all(np.diff(index.astype(np.int64)) > 0)
        assert s["table"].shape == (4096,) and s["coder"] == {"huffman": 1, "rans": 2}[coder]
