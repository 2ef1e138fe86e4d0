"""The codec is usable without torch (numpy is the only declared dependency)."""
import subprocess
import sys
import textwrap


def test_codec_imports_and_round_trips_without_torch():
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # any "import torch" now raises ImportError
        import numpy as np
        import pycodec
        x = np.arange(1000, dtype=np.uint8).reshape(10, 100) % 7
        assert (pycodec.decode(pycodec.encode(x, coder="huffman")) == x).all()
        assert not hasattr(pycodec, "compress_")
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_installed_packages_carry_the_project_name():
    """Every top-level package the wheel installs is named pycodec*: a generic name such as
    triton_kernels (PyPI's triton-kernels, OpenAI's kernels that vLLM installs) would overwrite,
    or be overwritten by, another project's files."""
    from pathlib import Path

    import pytest
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    packages = pyproject["tool"]["scikit-build"]["wheel"]["packages"]
    assert packages and all(Path(p).name.startswith("pycodec") for p in packages), packages
