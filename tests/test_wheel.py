"""The wheel that `make wheel` builds, installed into fresh virtual environments.

The extension's link check runs always (on the extension this suite imports). The rest is
opt-in, since a venv with torch takes about a minute to install:

    make wheel-check                                  # builds the wheel, then runs these
    PYCODEC_WHEEL=wheelhouse/ pytest -m wheel tests/test_wheel.py   # a wheel (or a folder of one) built before

PYCODEC_WHEEL_TORCH names the torch for the torch venv (default torch==2.13.0: the CPU wheel
on this machine's disk; a plain "torch" would pull a multi-GB CUDA build).
"""
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

import pycodec

# The wheel's device code (Makefile WHEEL_CUDA_ARCHS): SASS for each of these, PTX for the
# last one so that newer GPUs JIT-compile it.
WHEEL_SASS = {80, 86, 89, 90}
WHEEL_PTX = {90}
# Libraries the extension must not need: libtorch would tie the wheel to one torch build,
# libcudart to one CUDA install (the runtime is linked statically), libcuda to a GPU machine
# (the static runtime dlopens the driver when a kernel is first launched).
FORBIDDEN_NEEDED = ("libtorch", "libc10", "libcudart", "libcuda.so")
TORCH_SPEC = os.environ.get("PYCODEC_WHEEL_TORCH", "torch==2.13.0")


def needed_libs(so: Path) -> list[str]:
    """The DT_NEEDED entries of a shared object (readelf -d)."""
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf (binutils) not found")
    out = subprocess.run([readelf, "-d", str(so)], capture_output=True, text=True, check=True).stdout
    return [line.rsplit("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


def fatbin_images(data: bytes) -> set[tuple[str, int]]:
    """(kind, sm) of every device image in the fat binaries embedded in ``data``.

    Layout (nvcc's fatbin, as cuobjdump reads it; this machine has no cuobjdump): a header
    [u32 magic 0xBA55ED50][u16 version][u16 header size][u64 payload size], then entries
    [u16 kind: 1 PTX, 2 ELF][u16 version][u32 entry header size][u32 padded payload size]...
    with the SM number as a u32 at byte 28 of the entry header.
    """
    images, pos = set(), 0
    while (pos := data.find(struct.pack("<I", 0xBA55ED50), pos)) >= 0:
        header_size, payload_size = struct.unpack_from("<HQ", data, pos + 6)
        entry, end = pos + header_size, pos + header_size + payload_size
        while entry < end:
            kind, _, entry_header, padded = struct.unpack_from("<HHII", data, entry)
            sm = struct.unpack_from("<I", data, entry + 28)[0]
            images.add(({1: "ptx", 2: "elf"}.get(kind, str(kind)), sm))
            entry += entry_header + padded
        pos = end
    return images


def test_extension_needs_neither_torch_nor_cuda_libraries():
    needed = needed_libs(Path(pycodec._C.__file__))
    assert needed, "readelf found no NEEDED entries"
    bad = [lib for lib in needed if lib.startswith(FORBIDDEN_NEEDED)]
    assert not bad, f"{pycodec._C.__file__} links {bad}"


# --- opt-in: the wheel itself --------------------------------------------------------------

@pytest.fixture(scope="module")
def wheel() -> Path:
    given = os.environ.get("PYCODEC_WHEEL")
    if not given:
        pytest.skip("opt-in: make wheel-check, or PYCODEC_WHEEL=<wheel or folder> pytest -m wheel")
    path = Path(given)
    if path.is_dir():
        found = sorted(path.glob("pycodec-*.whl"))
        assert len(found) == 1, f"expected one pycodec wheel in {path}, found {[f.name for f in found]}"
        path = found[0]
    assert path.is_file(), f"PYCODEC_WHEEL={given}: no such wheel"
    return path.resolve()


def make_venv(root: Path, *requirements: str) -> Path:
    """A fresh venv (no system site-packages) with ``requirements`` installed; its python."""
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(root)
    python = root / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "--only-binary", ":all:", *requirements], check=True, env=clean_env(), cwd=root)
    return python


def clean_env() -> dict:
    # Nothing from this checkout or the dev venv may leak in: no PYTHONPATH, no user site.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def run_in(python: Path, code: str) -> str:
    # cwd is the venv, not the checkout, so "import pycodec" finds the installed wheel only.
    r = subprocess.run([str(python), "-c", textwrap.dedent(code)], capture_output=True, text=True,
                       env=clean_env(), cwd=python.parent.parent)
    assert r.returncode == 0, f"{python}:\n{r.stdout}\n{r.stderr}"
    return r.stdout.strip()


@pytest.mark.wheel
def test_wheel_is_manylinux_with_every_arch_and_no_torch_link(wheel, tmp_path):
    assert "-manylinux_" in wheel.name, f"{wheel.name}: not repaired by auditwheel"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        sos = [n for n in names if n.startswith("pycodec/_C.") and n.endswith(".so")]
        assert len(sos) == 1, names
        assert not [n for n in names if ".libs/" in n], "auditwheel grafted libraries into the wheel"
        so = Path(z.extract(sos[0], tmp_path))
    bad = [lib for lib in needed_libs(so) if lib.startswith(FORBIDDEN_NEEDED)]
    assert not bad, f"the wheel's extension links {bad}"
    images = fatbin_images(so.read_bytes())
    assert {sm for kind, sm in images if kind == "elf"} == WHEEL_SASS, images
    assert {sm for kind, sm in images if kind == "ptx"} == WHEEL_PTX, images


@pytest.mark.wheel
def test_wheel_codec_in_a_numpy_only_venv(wheel, tmp_path_factory):
    python = make_venv(tmp_path_factory.mktemp("venv-numpy"), str(wheel))
    out = run_in(python, """
        import importlib.util, sys
        assert importlib.util.find_spec("torch") is None, "torch is installed in the numpy-only venv"
        import numpy as np
        import pycodec
        assert pycodec.__file__.startswith(sys.prefix), pycodec.__file__
        assert not hasattr(pycodec, "compress_")
        x = np.random.default_rng(0).geometric(0.3, size=(64, 300)).clip(max=255).astype(np.uint8)
        for coder in pycodec.CODERS:
            blob = pycodec.encode(x, coder=coder)
            y = pycodec.decode(blob)
            assert y.dtype == x.dtype and y.shape == x.shape and (y == x).all(), coder
            assert pycodec.inspect(blob)["coder"] == coder
        print("ok")
    """)
    assert out == "ok"


@pytest.mark.wheel
def test_wheel_compresses_a_model_in_a_torch_venv(wheel, tmp_path_factory):
    # The [torch] extra beside a pinned torch: pip must keep that torch, not fetch another.
    python = make_venv(tmp_path_factory.mktemp("venv-torch"), f"{wheel}[torch]", TORCH_SPEC)
    out = run_in(python, """
        import copy, sys
        import safetensors.torch
        import torch
        import pycodec
        assert pycodec.__file__.startswith(sys.prefix), pycodec.__file__
        torch.manual_seed(0)
        base = torch.nn.Sequential(torch.nn.Linear(256, 128), torch.nn.GELU(), torch.nn.Linear(128, 64))
        x = torch.randn(5, 256)
        for config in (pycodec.CompressionConfig(mode="lossless"), pycodec.CompressionConfig(mode="rate", bits=4)):
            model = copy.deepcopy(base)
            report = pycodec.compress_(model, config, progress=False)
            layer = model[0]
            assert isinstance(layer, pycodec.CompressedLinear), type(layer)
            w = layer.decoded_weight()
            with torch.no_grad():
                torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, w, layer.bias))
                if config.mode == "lossless":
                    assert torch.equal(w, base[0].weight)
                    torch.testing.assert_close(model(x), base(x))
                else:
                    err = (w - base[0].weight).pow(2).sum() / base[0].weight.pow(2).sum()
                    assert -10 * torch.log10(err) > 18, float(err)  # 22 dB here
                    assert report["bits_per_weight"] <= 4.05, report["bits_per_weight"]
            state = model.state_dict()
            back = safetensors.torch.load(safetensors.torch.save(state))
            assert all(torch.equal(state[k], back[k]) for k in state)
        print("ok", torch.__version__)
    """)
    assert out.startswith("ok"), out
    print(out)
