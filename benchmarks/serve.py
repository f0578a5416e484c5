"""The dashboard at scale: the runs list over 10,000 runs and the samples endpoint of a
run with 3.6 million samples (one hour at 1 kHz), each next to a plain full-table read
of the same data in the same run.

* runs list: ``GET /api/runs`` (50 newest, the total count) and ``GET /`` (the page, with
  its plot and plotly inline), and sorted by J per output token, through the ASGI test
  client, vs ``SELECT * FROM runs`` fetched whole with Python's sqlite3;
* samples: ``GET /api/runs/{id}/samples?max_points=2000`` (read from the store's
  downsampling levels) vs ``SELECT * FROM power_samples WHERE run_id = ?`` fetched whole.

Median of ``--repeat`` alternating rounds.  Goals: list < 300 ms, samples < 1 s.

    python benchmarks/serve.py [--runs 10000] [--samples 3600000] [--repeat 5] [--write]
"""
from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time

import numpy as np

from _report import add_write_arg, headline, save  # benchmarks/ is the script's own directory

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from energyprof import _core  # noqa: E402
from energyprof.store import db as dbm  # noqa: E402
from energyprof.testing import synthetic_run  # noqa: E402


def fill_runs(path: str, n: int) -> None:
    """n runs in one transaction (the runs rows only: the list reads nothing else)."""
    Store = dbm.Store
    Store(path).close()
    base = synthetic_run(n_layers=2, n_steps=8).summary()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    rng = np.random.default_rng(0)
    labels = ("measured", "estimated", "simulated")
    for i in range(n):
        s = dict(base)
        s["name"] = f"run-{i:05d}"
        s["source_label"] = labels[i % 3]
        s["started_at"] = f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:00:{i % 60:02d}+00:00"
        s["energy_j"] = float(rng.uniform(1, 100))
        s["j_per_output_token"] = s["energy_j"] / 9
        s["status"] = "completed"
        cols = dbm._run_columns(s)
        names = list(cols)
        conn.execute(f"INSERT INTO runs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                     [cols[k] for k in names])
    conn.execute("COMMIT")
    conn.close()


def big_run(path: str, n: int) -> int:
    s = np.zeros(n, _core.SAMPLE_DTYPE)
    t = np.arange(n + 1, dtype=np.int64) * 1_000_000
    s["t_start_ns"], s["t_end_ns"], s["kind"] = t[:-1], t[1:], _core.KIND_INTERVAL
    rng = np.random.default_rng(1)
    for d in _core.DOMAINS:
        s[f"{d}_w"] = rng.uniform(1, 30, n)
    s["ane_w"] = np.nan
    with dbm.Store(path) as st:
        rid = st.create_run({"name": "one hour at 1 kHz", "source_label": "simulated"})
        for k in range(0, n, 200_000):
            st.write_samples(rid, s[k:k + 200_000])
        st.finish_run(rid, {"name": "one hour at 1 kHz", "source_label": "simulated", "t_origin_ns": 0},
                      all_samples=s)
    return rid


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--samples", type=int, default=3_600_000)
    ap.add_argument("--repeat", type=int, default=5)
    add_write_arg(ap, "serve")
    a = ap.parse_args()
    from fastapi.testclient import TestClient

    from energyprof.views.dashboard import create_app

    d = tempfile.mkdtemp(prefix="energyprof-bench-serve-")
    lists, big = os.path.join(d, "runs.db"), os.path.join(d, "big.db")
    t_fill = timed(lambda: fill_runs(lists, a.runs))
    t_big = [0.0]
    rid = [0]

    def mk():
        rid[0] = big_run(big, a.samples)

    t_big = timed(mk)
    c1 = TestClient(create_app(lists), base_url="http://127.0.0.1")
    c2 = TestClient(create_app(big), base_url="http://127.0.0.1")
    raw1 = sqlite3.connect(lists)
    raw2 = sqlite3.connect(big)
    for c, u in ((c1, "/api/runs"), (c2, f"/api/runs/{rid[0]}/samples?max_points=2000")):
        assert c.get(u).status_code == 200  # warm: the thread's store connection is opened once
    res = {k: [] for k in ("api_runs", "page", "sorted", "full_runs", "samples", "full_samples")}
    for _ in range(a.repeat):
        res["api_runs"].append(timed(lambda: c1.get("/api/runs").raise_for_status()))
        res["page"].append(timed(lambda: c1.get("/").raise_for_status()))
        res["sorted"].append(timed(lambda: c1.get("/api/runs?sort=j_per_output_token&order=asc&label=measured")
                                   .raise_for_status()))
        res["full_runs"].append(timed(lambda: raw1.execute("SELECT * FROM runs").fetchall()))
        res["samples"].append(timed(lambda: c2.get(f"/api/runs/{rid[0]}/samples?max_points=2000").raise_for_status()))
    # the full read of 3.6 M rows takes seconds: fewer rounds of it
    for _ in range(max(1, a.repeat // 2)):
        res["full_samples"].append(timed(lambda: raw2.execute("SELECT * FROM power_samples WHERE run_id = ?",
                                                              (rid[0],)).fetchall()))
    med = {k: statistics.median(v) for k, v in res.items()}
    body = c2.get(f"/api/runs/{rid[0]}/samples?max_points=2000").json()
    total = c1.get("/api/runs").json()["total"]
    lines = [
        "# Dashboard at scale",
        "",
        f"Output of `.venv/bin/python benchmarks/serve.py` (latest run; each row and its full-table read "
        f"measured in the same run, median of {a.repeat} rounds).",
        "",
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"load average {os.getloadavg()[0]:.2f} at the end",
        "",
        f"store of {total} runs (filled in {t_fill:.1f} s); one run of {body['n_samples']:,} samples "
        f"(written with its levels in {t_big:.1f} s); answers through the ASGI test client",
        "",
        "| request | median | plain full-table read | ratio | goal |",
        "|---|---:|---:|---:|---|",
        f"| `GET /api/runs` (50 newest + count) | {med['api_runs'] * 1e3:.1f} ms | {med['full_runs'] * 1e3:.1f} ms "
        f"(`SELECT * FROM runs`) | {med['api_runs'] / med['full_runs']:.3f} | < 300 ms: "
        f"{'met' if med['api_runs'] < 0.3 else 'NOT met'} |",
        f"| `GET /api/runs?sort=j_per_output_token&label=measured` | {med['sorted'] * 1e3:.1f} ms | "
        f"{med['full_runs'] * 1e3:.1f} ms | {med['sorted'] / med['full_runs']:.3f} | < 300 ms: "
        f"{'met' if med['sorted'] < 0.3 else 'NOT met'} |",
        f"| `GET /` (the page, plotly inline: {len(c1.get('/').content) / 1e6:.1f} MB) | {med['page'] * 1e3:.1f} ms | "
        f"{med['full_runs'] * 1e3:.1f} ms | {med['page'] / med['full_runs']:.3f} | < 300 ms: "
        f"{'met' if med['page'] < 0.3 else 'NOT met'} |",
        f"| `GET /api/runs/{{id}}/samples?max_points=2000` ({body['points']} points, read from {body['read_from']}) | "
        f"{med['samples'] * 1e3:.1f} ms | {med['full_samples'] * 1e3:.0f} ms (`SELECT * FROM power_samples`) | "
        f"{med['samples'] / med['full_samples']:.4f} | < 1 s: {'met' if med['samples'] < 1 else 'NOT met'} |",
        "",
        headline("dashboard: runs list over 10,000 runs", "< 300 ms",
                 f"{med['api_runs'] * 1e3:.1f} ms ({med['api_runs'] / med['full_runs']:.2f}x a full read of the runs "
                 "table, same run)", bool(med["api_runs"] < 0.3)),
        headline("dashboard: samples API of a 3.6M-sample run", "< 1 s",
                 f"{med['samples'] * 1e3:.0f} ms ({med['samples'] / med['full_samples']:.3f}x a full read of the "
                 "samples, same run)", bool(med["samples"] < 1)),
    ]
    text = "\n".join(lines)
    print(text)
    if a.write:
        save("serve", text)


if __name__ == "__main__":
    main()
