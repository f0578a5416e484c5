"""A fake RAPL counter driven by a square wave of power, in its own process (no GIL shared
with the model under test).

    python square_writer.py ZONE_DIR T0_NS LOW_W HIGH_W PERIOD_MS UPDATE_MS

Writes ZONE_DIR/energy_uj (atomically) on the grid t0 + k * update: the value written for
tick k is the exact energy of the wave up to that tick, E(t_k) (see :func:`energy_uj`),
so a read at t sees E of the latest tick written, as a real counter that updates every
UPDATE_MS does.  Power is HIGH_W during the first half of each period (from T0_NS), LOW_W
in the second.  Exits when ZONE_DIR/stop appears.  Times are CLOCK_MONOTONIC ns
(time.monotonic_ns, the clock of energyprof._core.now_ns on Linux).
"""
import os
import sys
import time


def energy_uj(t_ns: int, t0_ns: int, low_w: float, high_w: float, period_ns: int) -> float:
    """Exact uJ of the wave over [t0, t): LOW_W all along plus (HIGH_W - LOW_W) while high."""
    u = max(t_ns - t0_ns, 0)
    k, r = divmod(u, period_ns)
    high_ns = k * (period_ns // 2) + min(r, period_ns // 2)
    return (low_w * u + (high_w - low_w) * high_ns) * 1e-3


def main() -> None:
    zone, t0, low, high, period_ms, update_ms = sys.argv[1:7]
    t0, low, high = int(t0), float(low), float(high)
    period_ns, update_ns = int(float(period_ms) * 1e6), int(float(update_ms) * 1e6)
    path = os.path.join(zone, "energy_uj")
    tmp = path + ".tmp"
    stop = os.path.join(zone, "stop")
    try:
        os.nice(-10)   # keep up with the grid on a busy machine where allowed (root)
    except OSError:
        pass
    k = max((time.monotonic_ns() - t0) // update_ns, 0)
    while not os.path.exists(stop):
        now = time.monotonic_ns()
        k = max(k, (now - t0) // update_ns)
        with open(tmp, "w") as f:
            f.write(f"{int(energy_uj(t0 + k * update_ns, t0, low, high, period_ns))}\n")
        os.replace(tmp, path)
        k += 1
        wait = t0 + k * update_ns - time.monotonic_ns()
        if wait > 0:
            time.sleep(wait / 1e9)


if __name__ == "__main__":
    main()
