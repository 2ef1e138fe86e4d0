"""What the benchmarks ran on, for their JSON."""
from __future__ import annotations

import os
import platform


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def results_path(name: str) -> str:
    """Where a benchmark's --json goes: a bare file name into bench/results/, a path as given."""
    return name if os.path.dirname(name) else os.path.join(RESULTS_DIR, name)
