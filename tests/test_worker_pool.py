"""The codec's threads: its own workers (codec.cpp's WorkerPool), started once and reused by every
multi-threaded encode and decode, shared by concurrent callers (one runs on the pool, the
others on threads of their own), and rebuilt in a child after fork(); or torch's OpenMP team
(pycodec/_threads.py), which every test here runs on as well."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch

import pycodec
from pycodec import _C, _threads

TORCH_ON_OPENMP = "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()


@pytest.fixture(params=["own threads", "torch's team"])
def backend(request):
    before = _threads.threads_in_use() is not None
    runtime = _threads.use_torch_threads(request.param == "torch's team")
    if request.param == "torch's team" and TORCH_ON_OPENMP:
        assert runtime is not None and _threads.threads_in_use() == runtime
    if request.param == "own threads":
        assert runtime is None and _threads.threads_in_use() is None
    yield request.param
    _threads.use_torch_threads(before)


def streams(n: int = 6):
    # Over 128K symbols each: decodes wake a worker per 64K symbols (codec.cpp), so two threads.
    rng = np.random.default_rng(5)
    xs = [np.clip(np.round(rng.normal(8, 1 + i, size=(700 + 100 * i, 200))), 0, 255).astype(np.uint8)
          for i in range(n)]
    return xs, [pycodec.encode(x, threads=2) for x in xs]


def test_repeated_decodes_on_the_pool_stay_exact(backend):
    xs, blobs = streams()
    for _ in range(50):
        for x, blob in zip(xs, blobs):
            out = np.empty(x.size, np.uint8)
            _C.decode_into(blob, out, 2)
            assert np.array_equal(out, x.reshape(-1))


def test_concurrent_callers_each_get_their_own_result(backend):
    xs, blobs = streams()
    errors = []

    def work(k):
        try:
            for _ in range(40):
                i = (k + _) % len(xs)
                out = np.empty(xs[i].size, np.uint8)
                _C.decode_into(blobs[i], out, 2)  # the GIL is released: callers overlap
                if not np.array_equal(out, xs[i].reshape(-1)):
                    errors.append((k, i))
                assert pycodec.decode(pycodec.encode(xs[i], threads=2), threads=2).tobytes() == xs[i].tobytes()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a decode hung"
    assert errors == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_a_forked_child_decodes_on_a_pool_of_its_own(backend):
    xs, blobs = streams(2)
    _C.decode_into(blobs[0], np.empty(xs[0].size, np.uint8), 2)  # the parent's pool exists
    pid = os.fork()
    if pid == 0:  # the child: the parent's worker threads do not exist here
        signal.alarm(60)  # a hang ends the child (the parent sees a signal), never the test run
        ok = True
        try:
            for x, blob in zip(xs, blobs):
                out = np.empty(x.size, np.uint8)
                _C.decode_into(blob, out, 2)
                ok &= bool(np.array_equal(out, x.reshape(-1)))
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    out = np.empty(xs[1].size, np.uint8)
    _C.decode_into(blobs[1], out, 2)  # and the parent's pool still serves the parent
    assert np.array_equal(out, xs[1].reshape(-1))


def _threads_after_decodes(own: bool) -> tuple[int, int]:
    # A fresh process: its thread count once torch's team exists, and after pycodec decodes on two threads.
    code = textwrap.dedent(f"""
        import os
        os.environ["PYCODEC_OWN_THREADS"] = "{int(own)}"
        import numpy as np, torch, pycodec
        torch.set_num_threads(2)
        torch.ones(1 << 22).add_(1)  # a parallel op: torch's OpenMP team starts
        before = len(os.listdir("/proc/self/task"))
        x = np.random.default_rng(0).integers(0, 40, size=1 << 20).astype(np.uint8)
        for _ in range(3):
            assert pycodec.decode(pycodec.encode(x, threads=2), threads=2).tobytes() == x.tobytes()
        print(before, len(os.listdir("/proc/self/task")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after = map(int, out.stdout.split())
    return before, after


@pytest.mark.skipif(not TORCH_ON_OPENMP or not os.path.isdir("/proc/self/task"),
                    reason="torch's CPU ops do not run on OpenMP here, or no /proc")
def test_parallel_calls_run_on_torchs_team_unless_told_otherwise():
    before, after = _threads_after_decodes(own=False)
    assert after == before, "pycodec started threads of its own beside torch's team"
    before, after = _threads_after_decodes(own=True)
    assert after == before + 1, "PYCODEC_OWN_THREADS=1: pycodec's own worker"


def test_an_incomplete_runtime_is_refused(backend):
    state = _C.host_openmp_active()
    with pytest.raises(ValueError, match="both addresses"):
        _C.set_host_openmp(1, 0)
    assert _C.host_openmp_active() == state


def _default_threads(own: bool, torch_threads: int) -> tuple[int, int]:
    # A fresh process: the threads a call with threads=0 takes after torch.set_num_threads, and the cores.
    code = textwrap.dedent(f"""
        import os
        os.environ["PYCODEC_OWN_THREADS"] = "{int(own)}"
        import numpy as np, torch, pycodec
        from pycodec import _C
        torch.set_num_threads({torch_threads})
        x = np.random.default_rng(0).integers(0, 40, size=1 << 20).astype(np.uint8)
        assert pycodec.decode(pycodec.encode(x)).tobytes() == x.tobytes()
        print(_C.default_threads(), os.cpu_count())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    threads, cores = map(int, out.stdout.split())
    return threads, cores


@pytest.mark.skipif(not TORCH_ON_OPENMP, reason="torch's CPU ops do not run on OpenMP here")
def test_open_thread_counts_follow_torch_set_num_threads():
    # A process limited by torch.set_num_threads(1) stays on one thread; pycodec's own threads
    # (PYCODEC_OWN_THREADS=1) use every core whatever torch's setting.
    assert _default_threads(own=False, torch_threads=1)[0] == 1
    assert _default_threads(own=False, torch_threads=3)[0] == 3
    threads, cores = _default_threads(own=True, torch_threads=1)
    assert threads == cores
