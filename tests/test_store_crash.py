"""SIGKILL of a process mid-run, 20 times at random moments: the database opens, passes
integrity_check, holds the run (marked interrupted on the next open) and every batch
the child saw committed; batches are never half there."""
from __future__ import annotations

import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np

import energyprof as ep
from energyprof.store.db import Store

CHILD = r"""
import sys, time
import numpy as np
from energyprof import _core
from energyprof.store.db import Store

path, seed = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(seed)
s = Store(path)
rid = s.create_run({"name": f"crash-{seed}", "source": "synthetic"})
print("run", rid, flush=True)
dt = np.dtype(_core.SAMPLE_DTYPE)
k = 0
while True:
    # two batches queued back to back, then a flush: the writer has a backlog when killed
    for _ in range(2):
        n = int(rng.integers(500, 8000))
        b = np.zeros(n, dt)
        b["t_start_ns"] = np.arange(k, k + n)
        b["t_end_ns"] = b["t_start_ns"] + 1
        b["kind"] = 1
        b["cpu_w"] = rng.uniform(0, 50, n)
        s.write_samples(rid, b)
        k += n
    s.flush()
    print("committed", k, flush=True)
    time.sleep(0.05)
"""


def _boundaries(seed: int, upto: int) -> list:
    """Cumulative row counts at batch boundaries, as the child draws them."""
    rng = np.random.default_rng(seed)
    out, k = [0], 0
    while k <= upto:
        n = int(rng.integers(500, 8000))
        rng.uniform(0, 50, n)  # the child's draw for cpu_w, to stay in step
        k += n
        out.append(k)
    return out


class _Lines:
    """Complete lines of a child's stdout, read without blocking past a deadline."""

    def __init__(self, p: subprocess.Popen) -> None:
        self.p, self.buf, self.lines = p, b"", []

    def read_until(self, deadline: float) -> None:
        fd = self.p.stdout.fileno()
        while True:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return
            r, _, _ = select.select([fd], [], [], timeout)
            if not r:
                return
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            self._add(chunk)

    def _add(self, chunk: bytes) -> None:
        self.buf += chunk
        *done, self.buf = self.buf.split(b"\n")
        self.lines += [d.decode() for d in done]

    def finish(self) -> None:
        """After the child died: what it printed last (a cut-off last line is dropped)."""
        self._add(self.p.stdout.read())
        self.p.stdout.close()


def test_sigkill_mid_run_20_times(tmp_path):
    path = str(tmp_path / "crash.db")
    Store(path).close()
    rnd = random.Random(20251125)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(ep.__file__)) + os.pathsep + env.get("PYTHONPATH", "")
    seen_committed = []
    for it in range(20):
        seed = 1000 + it
        p = subprocess.Popen([sys.executable, "-c", CHILD, path, str(seed)], stdout=subprocess.PIPE, env=env)
        out = _Lines(p)
        # wait for the run to exist, then kill at a random moment of the run
        start = time.monotonic()
        while not any(l.startswith("run ") for l in out.lines) and time.monotonic() - start < 60:
            out.read_until(time.monotonic() + 0.02)
        out.read_until(time.monotonic() + rnd.uniform(0.0, 0.4))
        p.send_signal(signal.SIGKILL)
        p.wait()
        out.finish()
        lines = out.lines
        runs_ = [l for l in lines if l.startswith("run ")]
        assert runs_, (it, lines)
        rid = int(runs_[0].split()[1])
        committed = [int(l.split()[1]) for l in lines if l.startswith("committed ")]
        last = committed[-1] if committed else 0
        seen_committed.append(last)

        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        status = conn.execute("SELECT status FROM runs WHERE id=?", (rid,)).fetchone()[0]
        assert status == "running"  # as the killed process left it
        t = np.array([r[0] for r in conn.execute(
            "SELECT t_start_ns FROM power_samples WHERE run_id=? ORDER BY rowid", (rid,))], dtype=np.int64)
        conn.close()
        n = len(t)
        assert n >= last, (it, n, last)                      # no committed batch lost
        assert n in _boundaries(seed, n), (it, n)             # whole batches only
        np.testing.assert_array_equal(t, np.arange(n))       # in order, no gaps, no duplicates

        with Store(path) as s:  # the next open marks it interrupted
            assert rid in [r["run_id"] for r in ep.runs(db=s, status="interrupted", limit=None)]
            assert len(s.load(rid).samples) == n
    # the random moments did land at different points of the runs
    assert len(set(seen_committed)) > 5
    with Store(path) as s:
        assert len(ep.runs(db=s, status="interrupted", limit=None)) == 20
