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
