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
