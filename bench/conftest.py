"""pytest-benchmark harness for bench/test_bench_*.py: quick mode (default) and full mode.

    pytest bench/                                   quick: small inputs, few rounds (CI runs this)
    pytest bench/ --bench-full                      full: real sizes and real weights
    PYCODEC_BENCH_FULL=1 pytest bench/              the same, from the environment

Timings come from pytest-benchmark alone (``--benchmark-json``, ``--benchmark-autosave``,
``--benchmark-compare`` all work); ``bench/report.py`` turns the JSON into a table with
throughput. Every benchmark records in ``benchmark.extra_info``:

    kind      "codec" | "linear" | "gpu"
    op        "encode" | "decode" | "forward"
    method    what is timed ("pycodec-rans 1T", "F.linear bf16", ...)
    weights   weights (symbols) one call handles
    bytes     bytes one call handles: raw symbol bytes for the codec, stored weight bytes for a forward
    baseline  True for the row the others in its group are compared with (dense F.linear)

Nothing here asserts on time; tests assert on results (round trips, outputs).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # bench/weights.py, bench/bench_codec.py, bench/machine.py
    sys.path.insert(0, str(HERE))
from machine import cpu_name  # noqa: E402
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FULL_ENV = "PYCODEC_BENCH_FULL"
SLOW_S = 1.5        # a warm-up call slower than this: one timed round (a big input through a slow peer)
QUICK_ROUND_S = 2e-3  # quick mode loops a fast call up to this long per round, so rounds beat the timer's resolution


def pytest_addoption(parser):
    parser.addoption("--bench-full", action="store_true", default=False,
                     help=f"benchmark real sizes and real weights (default: quick mode; or set {FULL_ENV}=1)")


@dataclass(frozen=True)
class Mode:
    """The run's mode, for tests that size their inputs: ``mode.full`` or quick."""
    full: bool

    @property
    def name(self) -> str:
        return "full" if self.full else "quick"


def pytest_configure(config):
    # The environment variable folds into the option, so modules read one thing:
    # config.getoption("bench_full") (at collection too, where fixtures do not exist yet).
    if os.environ.get(FULL_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        config.option.bench_full = True


def bench_mode(config) -> Mode:
    return Mode(full=bool(config.getoption("bench_full")))


@pytest.fixture(scope="session")
def mode(request) -> Mode:
    return bench_mode(request.config)


@pytest.fixture
def measure(benchmark, mode):
    """``measure(fn, *args, setup=None)``: time ``fn(*args)`` with pytest-benchmark; returns its result.

    One untimed warm-up call first (discarded: it pays for first-touch page faults and lazy
    inits) and its duration picks the rounds:
      * quick mode: 3 rounds, a fast call looped to ~2 ms a round;
      * full mode: pytest-benchmark's own calibration (``--benchmark-max-time`` etc. apply), except
        a call slower than 1.5 s (one round) or one that needs fresh input (5 rounds, or 1 when slow).
    ``setup``: returns the args of one call, made outside the timed region (for an encoder
    that consumes its input).
    """
    def run(fn, *args, setup=None):
        call_args = setup() if setup is not None else args
        t0 = time.perf_counter()
        fn(*call_args)
        t = time.perf_counter() - t0
        if setup is not None:
            rounds = 1 if t > SLOW_S else (5 if mode.full else 3)
            return benchmark.pedantic(fn, setup=lambda: (setup(), {}), rounds=rounds)
        if mode.full and t <= SLOW_S:
            return benchmark(fn, *args)
        rounds = 1 if t > SLOW_S else 3  # quick mode, or a slow call in full mode (then iterations is 1)
        iterations = max(1, min(100, int(QUICK_ROUND_S / max(t, 1e-7))))
        return benchmark.pedantic(fn, args=args, rounds=rounds, iterations=iterations)

    return run


def pytest_benchmark_update_machine_info(config, machine_info):
    """What bench/report.py needs besides the timings: the mode, the CPU, the GPU, versions."""
    from importlib.metadata import PackageNotFoundError, version

    info = {"mode": bench_mode(config).name, "cpu": cpu_name(), "cores": os.cpu_count(), "cuda_device": None,
            "versions": {}}
    for pkg in ("pycodec", "numpy", "torch", "zstandard", "constriction", "zipnn"):
        try:
            info["versions"][pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    try:
        import torch

        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover
        pass
    machine_info["pycodec_bench"] = info


def pytest_report_header(config):
    m = bench_mode(config)
    return f"pycodec bench: {m.name} mode" + ("" if m.full else " (--bench-full for real sizes)")
