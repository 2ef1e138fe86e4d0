"""Which threads run pycodec's parallel calls: its own, or the OpenMP team torch runs its CPU ops on.

torch's OpenMP threads spin for a while after every parallel op (attention, for one) before they
sleep. A CPU forward interleaves such ops with pycodec's decodes, so with as many threads as cores
pycodec's own workers had to share the cores with spinning threads: on 2 cores a SmolLM2 token
took 0.10 s that way and 0.06 s with pycodec's chunks on torch's team, whose spinning threads then
pick them up at once. ``import pycodec`` therefore hands pycodec's parallel calls to torch's
runtime when torch runs on OpenMP; ``PYCODEC_OWN_THREADS=1`` in the environment, or
``use_torch_threads(False)``, keeps pycodec's own. On torch's team a call that leaves its thread
count open (``threads=0``) takes torch's (``torch.set_num_threads``); on its own threads, every
core. Outputs are identical either way.
"""
from __future__ import annotations

import ctypes
import os

from . import _C

# Shared-object names of the OpenMP runtimes that export the GNU entry points (GOMP_parallel).
_RUNTIME_PREFIXES = ("libgomp", "libiomp5", "libomp")

_runtime: ctypes.CDLL | None = None  # kept referenced while installed
_runtime_path: str | None = None


def loaded_openmp_runtimes() -> list[str]:
    """Paths of the OpenMP runtimes mapped into this process (Linux; [] elsewhere)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split(None, 5)[5].strip() for line in maps if line.count(" ") >= 5 and "/" in line}
    except OSError:
        return []
    return sorted(p for p in paths if os.path.basename(p).startswith(_RUNTIME_PREFIXES) and ".so" in p)


def torch_openmp_runtime() -> str | None:
    """The OpenMP runtime torch's CPU ops run on, if torch is imported and its ATen parallel
    backend is OpenMP: the loaded runtime in torch's own library folder, else the only one loaded."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    runtimes = loaded_openmp_runtimes()
    torch_lib = os.path.join(os.path.dirname(os.path.realpath(torch.__file__)), "lib") + os.sep
    own = [p for p in runtimes if os.path.realpath(p).startswith(torch_lib)]
    if len(own) == 1:
        return own[0]
    return runtimes[0] if len(runtimes) == 1 else None


def use_torch_threads(enable: bool = True) -> str | None:
    """Run pycodec's parallel calls on torch's OpenMP team (enable=True) or on pycodec's own
    threads. Returns the path of the runtime now in use, None for pycodec's own threads (also
    when torch is not imported or does not run on OpenMP)."""
    global _runtime, _runtime_path
    path = torch_openmp_runtime() if enable else None
    runtime = None
    if path is not None:
        try:  # RTLD_NOLOAD: only the copy already loaded, never a second runtime
            runtime = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            # omp_get_max_threads: calls that leave their thread count open follow torch.set_num_threads.
            addresses = [ctypes.cast(getattr(runtime, name), ctypes.c_void_p).value
                         for name in ("GOMP_parallel", "omp_get_thread_num", "omp_get_max_threads")]
        except (OSError, AttributeError):
            runtime, path = None, None
    if runtime is None:
        _C.set_host_openmp(0, 0, 0)
    else:
        _C.set_host_openmp(*addresses)
    _runtime, _runtime_path = runtime, path
    return path


def threads_in_use() -> str | None:
    """The OpenMP runtime pycodec's parallel calls run on in this process, None for its own threads."""
    return _runtime_path if _C.host_openmp_active() else None
