"""bench/gpu_smollm2.py's transport of SmolLM2's GGUF to the GPU machine (64 MiB a call): the
parts join back to the same file, and a damaged or missing part is refused."""
from __future__ import annotations

import filecmp
import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import gpu_smollm2

    folder = str(tmp_path_factory.mktemp("carry"))
    gpu_smollm2.split(folder)
    return gpu_smollm2, folder


def test_parts_fit_a_call_and_join_to_the_packaged_file(parts):
    from pycodec.cli import smollm2_source

    module, folder = parts
    names = open(os.path.join(folder, "smollm2.parts")).read().split()
    assert len(names) >= 2 and all(os.path.getsize(os.path.join(folder, n)) <= 60 << 20 for n in names)
    src, name = smollm2_source()
    joined = module.join(folder)
    assert os.path.basename(joined) == name and filecmp.cmp(joined, os.path.join(src, name), shallow=False)
    os.remove(joined)


def test_a_damaged_or_missing_part_is_refused(parts, tmp_path):
    module, folder = parts
    for name in os.listdir(folder):
        shutil.copy(os.path.join(folder, name), tmp_path / name)
    part2 = tmp_path / "smollm2.gguf.part2"
    data = bytearray(part2.read_bytes())
    data[12345] ^= 1
    part2.write_bytes(bytes(data))
    with pytest.raises(SystemExit, match="sha256"):
        module.join(str(tmp_path))
    part2.unlink()
    with pytest.raises(SystemExit, match="part2 not in"):
        module.join(str(tmp_path))
