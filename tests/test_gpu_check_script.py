"""bench/gpu_check.sh's orchestration, with stand-ins for python3 and compute-sanitizer: a GPU
lease is short, so a failing stage must not cost the later ones, the run must end by its
deadline, and only a failed build stops it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"

STUB_PY = """#!/usr/bin/env bash
echo "python $* PYTHONPATH=${PYTHONPATH:-}" >> "$STUB_LOG"
case "$*" in
  *"pip install"*) exit "${STUB_BUILD_RC:-0}" ;;
  *cuda_compiled*) exit "${STUB_KERNELS_RC:-0}" ;;
  *"-m pytest"*) exit "${STUB_TESTS_RC:-0}" ;;
  *gpu_suite.py*) sleep "${STUB_SUITE_SLEEP:-0}"; exit 0 ;;
  *) exit 0 ;;
esac
"""
STUB_SANITIZER = """#!/usr/bin/env bash
echo "sanitizer $*" >> "$STUB_LOG"
exit "${STUB_SANITIZER_RC:-0}"
"""
STUB_NCU = """#!/usr/bin/env bash
echo "ncu $*" >> "$STUB_LOG"
exit 0
"""


def run_check(tmp_path: Path, ncu: bool = False, **env) -> tuple[int, list[str], str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stubs = (("fake_python", STUB_PY), ("compute-sanitizer", STUB_SANITIZER)) + ((("ncu", STUB_NCU),) if ncu else ())
    for name, text in stubs:
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log, out, wheels, carry = tmp_path / "calls.log", tmp_path / "out", tmp_path / "wheels", tmp_path / "carry"
    wheels.mkdir(exist_ok=True)
    carry.mkdir(exist_ok=True)
    full_env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PY": str(bin_dir / "fake_python"),
                "OUT": str(out), "STUB_LOG": str(log), "WHEELS": str(wheels), "PEER_SITE": str(tmp_path / "site"),
                "CARRY": str(carry),
                **{k: str(v) for k, v in env.items()}}
    full_env.pop("PYTHONPATH", None)
    proc = subprocess.run(["bash", str(SCRIPT)], env=full_env, capture_output=True, text=True, timeout=120)
    calls = log.read_text().splitlines() if log.exists() else []
    summary = (out / "gpu_check_summary.txt").read_text() if (out / "gpu_check_summary.txt").exists() else ""
    return proc.returncode, calls, summary


def ran(calls: list[str], what: str) -> bool:
    """Whether a call's arguments held `what` (never a bare word: tmp paths hold "pytest")."""
    return any(what in c for c in calls)


def test_every_stage_runs_and_passes(tmp_path):
    rc, calls, summary = run_check(tmp_path)
    assert rc == 0, summary
    for what in ("pip install", "cuda_compiled", "-m pytest", "--tool memcheck", "--tool racecheck", "gpu_suite.py",
                 "bench_stream.py"):
        assert ran(calls, what), (what, calls)
    assert summary.count("rc=0") == 8, summary
    # the target rows first after the build (a short lease), the suite's sweeps later without them
    suites = [c for c in calls if "gpu_suite.py" in c]
    assert len(suites) == 2 and "--only targets,lossless_decode,end_to_end" in suites[0]
    assert calls.index(suites[0]) < next(i for i, c in enumerate(calls) if "-m pytest" in c)
    assert "--only settings,decode,lossless_decode,layers" in suites[1]
    assert "smollm2" in summary and "skipped" in summary and not ran(calls, "gpu_smollm2.py")  # no parts carried
    # every GPU test file, the v2 kernels' first (a time limit cuts the last ones)
    (tests,) = [c for c in calls if "-m pytest" in c]
    files = [a for a in tests.split() if a.startswith("tests/gpu/")]
    assert files[0] == "tests/gpu/test_windowed_cuda.py"
    assert sorted(files) == sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "gpu").glob("test_*.py"))


@pytest.mark.parametrize("carried", [["smollm2.gguf.part1"], ["smollm2.gguf.part1", "smollm2.gguf.part2"]])
def test_smollm2_runs_once_every_part_is_carried(tmp_path, carried):
    carry = tmp_path / "carry"
    carry.mkdir()
    (carry / "smollm2.parts").write_text("smollm2.gguf.part1\nsmollm2.gguf.part2\n")
    for name in carried:
        (carry / name).write_bytes(b"part")
    rc, calls, summary = run_check(tmp_path)
    assert rc == 0, summary
    assert ran(calls, f"gpu_smollm2.py --parts {carry}") == (len(carried) == 2)
    assert ("skipped" in summary) == (len(carried) == 1)


def test_failing_tests_and_sanitizer_do_not_cost_the_benchmarks(tmp_path):
    rc, calls, summary = run_check(tmp_path, STUB_TESTS_RC=1, STUB_SANITIZER_RC=3)
    assert rc == 1
    assert ran(calls, "gpu_suite.py") and ran(calls, "bench_stream.py")
    assert "gpu-tests" in summary and "rc=1" in summary and "rc=3" in summary


def test_carried_peer_wheels_are_installed_and_on_the_path(tmp_path):
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "dfloat11-0.5.0-py3-none-any.whl").write_bytes(b"")
    rc, calls, summary = run_check(tmp_path)
    assert rc == 0, summary
    install = next(c for c in calls if "--target" in c)
    assert f"--target {tmp_path / 'site'}" in install and "dfloat11-0.5.0-py3-none-any.whl" in install
    suite = next(c for c in calls if "gpu_suite.py" in c)
    assert f"PYTHONPATH={tmp_path / 'site'}" in suite
    assert "peers" in summary


def test_a_failed_build_stops_the_run(tmp_path):
    rc, calls, summary = run_check(tmp_path, STUB_BUILD_RC=1)
    assert rc == 2
    assert not ran(calls, "-m pytest") and not ran(calls, "gpu_suite.py")
    assert "build" in summary and "rc=1" in summary


def test_the_run_ends_by_its_deadline(tmp_path):
    """A stage that would overrun is cut at what is left; later stages are skipped, not started."""
    rc, calls, summary = run_check(tmp_path, DEADLINE=31, STUB_SUITE_SLEEP=60)
    assert rc == 1
    assert "gpu-suite" in summary and "(time limit)" in summary
    assert "streaming" in summary and "skipped" in summary and not ran(calls, "bench_stream.py")


def test_stages_can_be_chosen_for_a_second_call(tmp_path):
    rc, calls, summary = run_check(tmp_path, STAGES="gpu-suite")
    assert rc == 0, summary
    assert not ran(calls, "pip install") and not ran(calls, "-m pytest")
    assert ran(calls, "cuda_compiled") and ran(calls, "gpu_suite.py") and not ran(calls, "bench_stream.py")


@pytest.mark.parametrize("stages", ["gpu-suite", "build gpu-suite"])
def test_no_cuda_kernels_stops_before_the_gpu_stages(tmp_path, stages):
    rc, calls, _ = run_check(tmp_path, STAGES=stages, STUB_KERNELS_RC=1)
    assert rc == 2 and not ran(calls, "gpu_suite.py")


def test_gpu_tests_run_without_the_cpu_suites_conftest(tmp_path):
    """tests/conftest.py turns on the Triton interpreter; the GPU tests, run as the script runs
    them, must not load it (on an H200 every GPU test errored at setup when they did)."""
    rc, calls, summary = run_check(tmp_path)
    assert rc == 0, summary
    call = next(c for c in calls if "-m pytest" in c)
    args = call.split("-m pytest", 1)[1].split(" PYTHONPATH=", 1)[0].split()
    probe = subprocess.run([sys.executable, "-m", "pytest", *args, "--collect-only", "--trace-config"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stdout[-2000:] + probe.stderr[-2000:]
    loaded = [line for line in probe.stdout.splitlines() if "PLUGIN registered" in line and "conftest" in line]
    assert any(str(ROOT / "tests" / "gpu" / "conftest.py") in line for line in loaded), loaded
    assert not any(str(ROOT / "tests" / "conftest.py") in line for line in loaded), loaded


@pytest.mark.parametrize("ncu", [True, False])
def test_profile_stage_runs_ncu_over_the_kernel_script_when_asked(tmp_path, ncu):
    """STAGES=profile: ncu over bench/profile_kernels.py (its CSV in $OUT), or a skip where ncu is
    missing; the default stages never profile."""
    if not ncu and any((Path(d) / "ncu").exists() for d in os.environ["PATH"].split(os.pathsep)):
        pytest.skip("a real ncu on PATH")
    rc, calls, summary = run_check(tmp_path, ncu=ncu, STAGES="profile")
    profiled = [c for c in calls if c.startswith("ncu ")]
    if ncu:
        assert rc == 0, summary
        assert len(profiled) == 1 and "profile_kernels.py" in profiled[0] and "--profile-from-start off" in profiled[0]
        assert str(tmp_path / "out" / "ncu_kernels.csv") in profiled[0]
    else:
        assert rc == 0 and "skipped: ncu not found" in summary and not profiled  # as a missing compute-sanitizer
    default = tmp_path / "default"
    default.mkdir()
    _, calls, _ = run_check(default, ncu=True)
    assert calls and not any(c.startswith("ncu ") for c in calls)
