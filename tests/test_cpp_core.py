"""Builds the torch-free C++ core's unit tests with ASan + UBSan and runs them through ctest."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from _tools import find_tool

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT_S = 300  # a sanitizer Debug build of the core takes ~10 s on 2 cores
TEST_TIMEOUT_S = 300


def _cxx_compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


CMAKE, CTEST, CXX = find_tool("cmake"), find_tool("ctest"), _cxx_compiler()


def _run(cmd, cwd, timeout):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.skipif(CMAKE is None or CTEST is None, reason="cmake/ctest not found on PATH")
@pytest.mark.skipif(CXX is None, reason="no C++ compiler found (c++, g++, clang++ or $CXX)")
def test_cpp_core_unit_tests_under_sanitizers():
    assert (REPO_ROOT / "CMakeLists.txt").is_file(), REPO_ROOT
    assert (REPO_ROOT / "csrc" / "tests" / "test_codec.cpp").is_file()
    with tempfile.TemporaryDirectory(prefix="pycodec-cpp-") as build:
        configure = [
            CMAKE, "-S", str(REPO_ROOT), "-B", build,
            "-DPYCODEC_BUILD_TESTS=ON",
            "-DPYCODEC_SANITIZE=ON",
            "-DPYCODEC_ENABLE_CUDA=OFF",
            "-DCMAKE_BUILD_TYPE=Debug",
            f"-DCMAKE_CXX_COMPILER={CXX}",
        ]
        if shutil.which("ninja"):
            configure += ["-G", "Ninja"]
        rc, log = _run(configure, REPO_ROOT, BUILD_TIMEOUT_S)
        assert rc == 0, f"cmake configure failed:\n{log}"
        jobs = str(max(1, min(os.cpu_count() or 1, 4)))
        rc, log = _run([CMAKE, "--build", build, "--parallel", jobs], REPO_ROOT, BUILD_TIMEOUT_S)
        assert rc == 0, f"build failed:\n{log}"
        rc, log = _run([CTEST, "--output-on-failure", "--timeout", str(TEST_TIMEOUT_S)], build, TEST_TIMEOUT_S + 30)
        assert rc == 0, f"ctest failed:\n{log}"
        assert "100% tests passed" in log, log
        # Sanitizer reports go to stderr and abort the test (-fno-sanitize-recover), but check anyway.
        assert "runtime error" not in log and "AddressSanitizer" not in log, log


@pytest.mark.skipif(CXX is None or shutil.which("nm") is None, reason="no C++ compiler or nm")
@pytest.mark.parametrize("march", ["x86-64-v4", "x86-64-v3", None])
def test_lane_loops_inline_into_the_decoder_for_any_target(march, tmp_path):
    """The decoder's lane loops are always_inline helpers of target-cloned entry points: a build
    whose base target outranks a clone's (-march=native on an AVX-512 machine) must not leave
    them out of line (they then ran as calls, at 57% of the speed)."""
    import platform

    if march and platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86-64 targets")
    source = tmp_path / "decode.cpp"
    source.write_text('#include "codec/windowed.h"\n'
                      "namespace pycodec::windowed {\n"
                      "Status decode_one(const MultiTable& t, const uint32_t* w, uint32_t n, uint32_t lanes, uint8_t* out,\n"
                      "                  uint32_t m, std::vector<uint8_t>& s) { return decode_chunk(t, w, n, lanes, out, m, s); }\n"
                      "}\n")
    obj = tmp_path / "decode.o"
    cmd = [CXX, "-O2", "-std=c++17", "-I", str(REPO_ROOT / "csrc"), "-c", str(source), "-o", str(obj)]
    rc, log = _run(cmd + ([f"-march={march}"] if march else []), tmp_path, BUILD_TIMEOUT_S)
    if rc and march and "march" in log:
        pytest.skip(f"the compiler does not know -march={march}")
    assert rc == 0, log
    rc, symbols = _run(["nm", "-C", str(obj)], tmp_path, 60)
    assert rc == 0 and "decode_chunk" in symbols, symbols
    assert "decode_lanes_lockstep" not in symbols and "place_lanes" not in symbols, symbols
