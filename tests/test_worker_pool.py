"""The codec's worker threads (codec.cpp's WorkerPool): started once and reused by every
multi-threaded encode and decode, shared by concurrent callers (one runs on the pool, the
others on threads of their own), and rebuilt in a child after fork()."""
from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest

import pycodec
from pycodec import _C


def streams(n: int = 6):
    # Over 128K symbols each: decodes wake a worker per 64K symbols (codec.cpp), so two threads.
    rng = np.random.default_rng(5)
    xs = [np.clip(np.round(rng.normal(8, 1 + i, size=(700 + 100 * i, 200))), 0, 255).astype(np.uint8)
          for i in range(n)]
    return xs, [pycodec.encode(x, threads=2) for x in xs]


def test_repeated_decodes_on_the_pool_stay_exact():
    xs, blobs = streams()
    for _ in range(50):
        for x, blob in zip(xs, blobs):
            out = np.empty(x.size, np.uint8)
            _C.decode_into(blob, out, 2)
            assert np.array_equal(out, x.reshape(-1))


def test_concurrent_callers_each_get_their_own_result():
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
def test_a_forked_child_decodes_on_a_pool_of_its_own():
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
