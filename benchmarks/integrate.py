"""Integrator benchmark: _core.integrate (C) against one streaming C pass over the same samples.

10M interval samples (about 1 ms each, 5 domains, a few gaps and NaNs) and 1M
adjacent windows (the shape tokens and layer calls have).  Timed side by side in every
round, in shuffled order:

  one pass   _core._integrate_one_pass: reads every sample once and sums power x
             duration per domain (the least work any energy total over them takes)
  sorted     _core.integrate with the windows sorted by start
  shuffled   _core.integrate with the same windows in random order

Ratios of medians over the rounds with their 95 % bootstrap intervals (rounds
resampled): C sorted / one pass (goal <= 3) and shuffled / sorted (goal <= 1.5).  The
numpy twin (energyprof._reference.integrate) runs once on the same inputs: every
window must agree (flags, counts and NaNs identical, energies to rounding).
Prints the results; with --write also saves them as docs/benchmarks/integrate.md.

    .venv/bin/python benchmarks/integrate.py [--samples N] [--windows M] [--rounds R] [--write]
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import add_write_arg, fmt_ci, headline, ratio_of_medians, save, verdict, verdict_text  # noqa: E402

from energyprof import _core
from energyprof import _reference

HERE = os.path.dirname(os.path.abspath(__file__))


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10_000_000)
    ap.add_argument("--windows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=25)  # 15 left intervals wider than the goal margin on this shared machine
    add_write_arg(ap, "integrate")
    args = ap.parse_args(argv)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    t0 = time.perf_counter()
    samples, windows = make_inputs(args.samples, args.windows)
    shuffled = np.ascontiguousarray(windows[np.random.default_rng(1).permutation(len(windows))])
    build_s = time.perf_counter() - t0

    variants = {
        "one pass": lambda: _core._integrate_one_pass(samples),
        "sorted": lambda: _core.integrate(samples, windows),
        "shuffled": lambda: _core.integrate(samples, shuffled),
    }
    for fn in variants.values():   # warm-up
        fn()
    times = {v: [] for v in variants}
    rnd = random.Random(0)
    for _ in range(args.rounds):
        for v in rnd.sample(list(variants), len(variants)):
            t = time.perf_counter()
            variants[v]()
            times[v].append(time.perf_counter() - t)
    med = {v: float(np.median(ts)) for v, ts in times.items()}
    r_pass = ratio_of_medians(times["sorted"], times["one pass"])
    r_shuf = ratio_of_medians(times["shuffled"], times["sorted"])
    v_pass, v_shuf = verdict(r_pass, 3.0, False), verdict(r_shuf, 1.5, False)

    c_out = _core.integrate(samples, windows)
    c_shuf = _core.integrate(samples, shuffled)
    t = time.perf_counter()
    py_out = _reference.integrate(samples, windows)
    py_s = time.perf_counter() - t
    ce, cf, cc = c_out
    pe, pf, pc = py_out
    ok = ~np.isnan(pe)
    scale = float(np.nansum(ce[:, 0]))  # total energy of the run: size of F's rounding
    err = np.abs(ce[ok] - pe[ok]) / (np.abs(pe[ok]) + 1e-12 * scale)
    agree = bool(np.array_equal(np.isnan(ce), np.isnan(pe)) and np.array_equal(cf, pf) and np.array_equal(cc, pc))
    inv = np.empty(len(windows), np.int64)
    inv[np.random.default_rng(1).permutation(len(windows))] = np.arange(len(windows))
    same_order = all(np.array_equal(a, b[inv], equal_nan=True) for a, b in zip(c_out, c_shuf))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if sys.platform == "darwin":
        peak_mb /= 1024.0  # ru_maxrss is bytes there

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    spread = {v: f"{min(ts):.3f}-{max(ts):.3f}" for v, ts in times.items()}
    lines = [
        f"samples: {args.samples:,} interval samples (5 domains, {samples.nbytes / 1e6:,.0f} MB), "
        f"windows: {args.windows:,} adjacent",
        f"machine: {cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, numpy {np.__version__}",
        f"input build: {build_s:.2f} s (not timed below); load average at start: {load:.2f}; "
        f"{args.rounds} interleaved rounds, medians (min-max) in s",
        f"one pass   _core._integrate_one_pass          : {med['one pass']:7.3f}  ({spread['one pass']})",
        f"C sorted   _core.integrate, sorted windows    : {med['sorted']:7.3f}  ({spread['sorted']})",
        f"C shuffled _core.integrate, shuffled windows  : {med['shuffled']:7.3f}  ({spread['shuffled']})",
        f"numpy twin _reference.integrate (1 run)       : {py_s:7.3f}",
        f"agreement with the twin: flags, counts, NaNs identical = {agree}; "
        f"max relative energy difference = {err.max():.2e}; shuffled = sorted bit for bit: {same_order}",
        f"peak RSS of this process: {peak_mb:,.0f} MB (inputs {(samples.nbytes + 2 * windows.nbytes) / 1e6:,.0f} MB; "
        "the twin's arrays dominate)",
        "",
        f"C integrate (sorted) / one pass: {fmt_ci(r_pass)}  goal <= 3: {verdict_text(v_pass)}",
        f"C integrate shuffled / sorted  : {fmt_ci(r_shuf)}  goal <= 1.5: {verdict_text(v_shuf)}",
        f"integrate_sorted_s: {med['sorted']:.3f}",
        f"twin_vs_integrate: {py_s / med['sorted']:.1f}",
    ]
    size = f"{args.samples / 1e6:g}M samples x {args.windows / 1e6:g}M windows"
    lines += [
        headline(f"integrator: C _core.integrate (sorted windows) / one C streaming pass over the same samples, {size}",
                 "<= 3x", fmt_ci(r_pass, unit="x"), v_pass),
        headline(f"integrator: shuffled windows / sorted windows, {size}", "<= 1.5x", fmt_ci(r_shuf, unit="x"), v_shuf),
    ]
    for ln in lines:
        print(ln)
    if args.write:
        save("integrate", "# Benchmark: integrator (`_core.integrate` vs one streaming pass)\n\n"
             "Latest output of `.venv/bin/python benchmarks/integrate.py --write` (every variant timed in each "
             "round, same inputs; ratios of medians with 95 % bootstrap intervals over the rounds):\n\n```\n"
             + "\n".join(lines) + "\n```\n")
    return 0 if (agree and same_order) else 1


if __name__ == "__main__":
    sys.exit(main())
