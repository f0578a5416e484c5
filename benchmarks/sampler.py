"""Sampler benchmark: the synthetic source at 1 kHz for 10 s.

Reports samples expected vs got, dropped samples (goal 0), the sampler thread's
CPU use (as % of one core and as thread_cpu / wall), the interval jitter, and,
side by side in the same run, the same 1 kHz polling done by a pure-Python thread
(threading.Event.wait + a list append), whose CPU/wall ratio gives the RATIO.

    .venv/bin/python benchmarks/sampler.py [--seconds 10] [--period-ms 1] [--write]

With --write also saves its output as docs/benchmarks/sampler.md.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import threading
import time
from contextlib import redirect_stdout

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import energyprof as ep  # noqa: E402
from energyprof import _core  # noqa: E402
from _report import add_write_arg, headline, save  # noqa: E402



def bench_c(seconds: float, period_ms: float) -> dict:
    s = ep.Sampler(f"synthetic:power_w=10,period_ms={period_ms}")
    t0 = time.perf_counter()
    s.start()
    time.sleep(seconds)
    s.stop()
    wall_s = time.perf_counter() - t0
    x = s.samples
    st = s.stats()
    dur_ms = (x["t_end_ns"] - x["t_start_ns"]) / 1e6
    return {
        "wall_s": wall_s,
        "expected": seconds * 1000.0 / period_ms,
        "got": len(x),
        "dropped": s.dropped,
        "late_ticks": st["late_ticks"],
        "cpu_s": s.thread_cpu_ns / 1e9,
        "dur_ms": dur_ms[:-1] if len(dur_ms) > 1 else dur_ms,  # the FINAL flush is partial
        "contiguous": bool(np.array_equal(x["t_start_ns"][1:], x["t_end_ns"][:-1])),
    }


def bench_python(seconds: float, period_ms: float) -> dict:
    """The same job in pure Python: wake every period, build one interval sample, keep it."""
    out: list = []
    stop = threading.Event()
    cpu = {}
    period_s = period_ms / 1000.0

    def loop() -> None:
        c0 = time.thread_time()
        nxt = time.monotonic() + period_s
        prev = _core.now_ns()
        while not stop.wait(max(0.0, nxt - time.monotonic())):
            now = _core.now_ns()
            out.append((prev, now, 1, 1, 10.0))
            prev = now
            nxt += period_s
            if nxt <= time.monotonic():
                nxt = time.monotonic() + period_s
        cpu["s"] = time.thread_time() - c0

    th = threading.Thread(target=loop, daemon=True)
    t0 = time.perf_counter()
    th.start()
    time.sleep(seconds)
    stop.set()
    th.join()
    wall_s = time.perf_counter() - t0
    arr = np.array([(a, b) for a, b, *_ in out], dtype=np.int64).reshape(-1, 2)
    return {"wall_s": wall_s, "got": len(out), "cpu_s": cpu["s"], "dur_ms": (arr[:, 1] - arr[:, 0]) / 1e6}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--period-ms", type=float, default=1.0)
    add_write_arg(ap, "sampler")
    args = ap.parse_args(argv)

    buf = io.StringIO()
    with redirect_stdout(buf):
        load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
              f"load average {load[0]:.2f} at start\n")
        print(f"synthetic source at {1000 / args.period_ms:g} Hz (period_ms={args.period_ms:g}) for "
              f"{args.seconds:g} s, C sampler thread then a pure-Python thread doing the same polling\n")
        c = bench_c(args.seconds, args.period_ms)
        py = bench_python(args.seconds, args.period_ms)
        c_ratio = c["cpu_s"] / c["wall_s"]
        py_ratio = py["cpu_s"] / py["wall_s"]
        print("| | C sampler thread | pure-Python thread |")
        print("|---|---:|---:|")
        print(f"| samples expected | {c['expected']:.0f} | {c['expected']:.0f} |")
        print(f"| samples got | {c['got']} | {py['got']} |")
        print(f"| dropped (goal 0) | {c['dropped']} | n/a |")
        print(f"| ticks skipped (woke late) | {c['late_ticks']} | n/a |")
        print(f"| thread CPU time (s) | {c['cpu_s']:.4f} | {py['cpu_s']:.4f} |")
        print(f"| thread CPU, % of one core | {100 * c_ratio:.3f} % | {100 * py_ratio:.3f} % |")
        print(f"| thread_cpu / wall | {c_ratio:.5f} | {py_ratio:.5f} |")
        print(f"| CPU per sample (us) | {1e6 * c['cpu_s'] / max(c['got'], 1):.2f} | "
              f"{1e6 * py['cpu_s'] / max(py['got'], 1):.2f} |")
        for name, q in (("p50", 50), ("p99", 99)):
            print(f"| interval {name} (ms) | {np.percentile(c['dur_ms'], q):.3f} | {np.percentile(py['dur_ms'], q):.3f} |")
        print(f"| interval max (ms) | {c['dur_ms'].max():.3f} | {py['dur_ms'].max():.3f} |")
        print(f"\nRATIO Python thread CPU / C thread CPU (same job, same run): {py_ratio / c_ratio:.1f}x")
        head = headline(f"sampler thread at {1000 / args.period_ms:g} Hz for {args.seconds:g} s: dropped samples, CPU",
                        "0 dropped", f"{c['dropped']} dropped; {100 * c_ratio:.1f} % of one core; a Python thread doing "
                        f"the same polling {py_ratio / c_ratio:.1f}x that (one run each, no rounds)",
                        c["dropped"] == 0)
        print(f"samples got / expected (C): {c['got'] / c['expected']:.4f}; got + skipped ticks = "
              f"{c['got'] + c['late_ticks']} (a skipped tick lengthens one interval instead); "
              f"contiguous: {c['contiguous']}")
    out = buf.getvalue()
    print(out, end="")
    print(head)
    if args.write:
        save("sampler", "# Sampler benchmark\n\n"
             "Output of `.venv/bin/python benchmarks/sampler.py --write` (latest run; both columns measured "
             "in the same run on the same machine).\n\n" + out
             + "\nThe C thread's CPU time is `CLOCK_THREAD_CPUTIME_ID` read by the thread itself "
             "(`Sampler.thread_cpu_ns`); the Python thread's is `time.thread_time()`.  A tick the thread "
             "wakes up for after the next one is due is skipped, not replayed: the source then reports "
             "one longer interval, so no energy is lost (`contiguous: True`).  On a loaded machine (see the load "
             "average above: this one is 2 cores shared with other jobs) the skipped ticks are the "
             "scheduler waking the thread late, not the sampler falling behind; the thread's CPU time is "
             "dominated by the kernel's wake-up cost per tick.\n" + head + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
