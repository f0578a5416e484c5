"""Integrator benchmark: _core.integrate (C) vs energyprof._reference.integrate (numpy twin).

10M interval samples (about 1 ms each, 5 domains, a few gaps and NaNs) and 1M
adjacent windows sorted by start (the shape tokens and layer calls have).  Both
implementations run in this one process on the same inputs; the ratio is the twin's
wall time over C's.  Also times the same windows shuffled (the binary-search path).
Prints the results and writes docs/benchmarks/integrate.md.

    .venv/bin/python benchmarks/integrate.py [--samples N] [--windows M] [--no-write]
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time

import numpy as np

from energyprof import _core
from energyprof import _reference

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_MD = os.path.join(HERE, "..", "docs", "benchmarks", "integrate.md")


def make_inputs(n: int, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    dur = rng.integers(900_000, 1_100_000, n)
    gap = np.where(rng.random(n) < 1e-4, rng.integers(1, 5_000_000, n), 0)
    t_end = np.cumsum(dur + gap) + 10**15  # far from zero, like a monotonic clock after uptime
    s = np.zeros(n, _core.SAMPLE_DTYPE)
    s["kind"] = _core.KIND_INTERVAL
    s["t_end_ns"] = t_end
    s["t_start_ns"] = t_end - dur
    del dur, gap, t_end
    for d in _core.DOMAINS:
        col = rng.random(n) * 30.0
        col[rng.random(n) < 1e-5] = np.nan
        s[f"{d}_w"] = col
        del col
    lo, hi = int(s["t_start_ns"][0]), int(s["t_end_ns"][-1])
    cuts = np.sort(rng.integers(lo, hi + 1, m + 1))
    windows = np.ascontiguousarray(np.stack([cuts[:-1], cuts[1:]], axis=1))
    return s, windows


def best_of(fn, repeat: int) -> tuple[float, float, object]:
    """Best wall time, the CPU time of that same run, and the result."""
    best, cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        wall = time.perf_counter() - t0
        if wall < best:
            best, cpu = wall, time.process_time() - c0
    return best, cpu, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10_000_000)
    ap.add_argument("--windows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print only, do not write docs/benchmarks/integrate.md")
    args = ap.parse_args(argv)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    t0 = time.perf_counter()
    samples, windows = make_inputs(args.samples, args.windows)
    build_s = time.perf_counter() - t0

    c_s, c_cpu, c_out = best_of(lambda: _core.integrate(samples, windows), args.repeat)
    shuffled = np.ascontiguousarray(windows[np.random.default_rng(1).permutation(len(windows))])
    cu_s, cu_cpu, _ = best_of(lambda: _core.integrate(samples, shuffled), args.repeat)
    del shuffled
    py_s, py_cpu, py_out = best_of(lambda: _reference.integrate(samples, windows), 1)

    ce, cf, cc = c_out
    pe, pf, pc = py_out
    ok = ~np.isnan(pe)
    scale = float(np.nansum(ce[:, 0]))  # total energy of the run: size of F's rounding
    err = np.abs(ce[ok] - pe[ok]) / (np.abs(pe[ok]) + 1e-12 * scale)
    agree = bool(np.array_equal(np.isnan(ce), np.isnan(pe)) and np.array_equal(cf, pf) and np.array_equal(cc, pc))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if sys.platform == "darwin":
        peak_mb /= 1024.0  # ru_maxrss is bytes there

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    lines = [
        f"samples: {args.samples:,} interval samples (5 domains), windows: {args.windows:,} adjacent, sorted",
        f"machine: {cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, numpy {np.__version__}",
        f"input build: {build_s:.2f} s (not timed below); load average at start: {load:.2f}",
        f"C   _core.integrate, sorted windows    : {c_s:7.3f} s wall, {c_cpu:7.3f} s CPU  (best of {args.repeat}; goal < 1 s)",
        f"C   _core.integrate, shuffled windows  : {cu_s:7.3f} s wall, {cu_cpu:7.3f} s CPU  (best of {args.repeat})",
        f"numpy twin _reference.integrate        : {py_s:7.3f} s wall, {py_cpu:7.3f} s CPU  (1 run)",
        f"ratio twin / C (sorted windows)        : {py_s / c_s:7.1f} x wall, {py_cpu / c_cpu:7.1f} x CPU",
        f"agreement: flags, counts, NaNs identical = {agree}; max relative energy difference = {err.max():.2e}",
        f"peak RSS of this process: {peak_mb:,.0f} MB",
    ]
    for ln in lines:
        print(ln)
    if not args.no_write:
        with open(OUT_MD, "w") as fh:
            fh.write("# Benchmark: integrator (`_core.integrate` vs numpy twin)\n\n")
            fh.write("Latest output of `.venv/bin/python benchmarks/integrate.py` (both timed in one run, "
                     "same inputs):\n\n```\n")
            fh.write("\n".join(lines) + "\n```\n")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
