"""A fake RAPL counter driven by a square wave of power: the oracle formula and a launcher
for its writer, square_writer.c (its own process, in C: see that file for why).

:func:`energy_uj` is the wave's exact energy, written here apart from the C writer, so the
tests' truth does not come from the code under test.  :func:`start` builds the writer with
the system C compiler (once per directory) and runs it on a zone directory; write
``ZONE_DIR/stop`` to end it.  Times are CLOCK_MONOTONIC ns (time.monotonic_ns, the clock of
energyprof._core.now_ns on Linux).
"""
import os
import subprocess

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "square_writer.c")


def energy_uj(t_ns: int, t0_ns: int, low_w: float, high_w: float, period_ns: int) -> float:
    """Exact uJ of the wave over [t0, t): LOW_W all along plus (HIGH_W - LOW_W) while high
    (high in the first half of each period from t0)."""
    u = max(t_ns - t0_ns, 0)
    k, r = divmod(u, period_ns)
    high_ns = k * (period_ns // 2) + min(r, period_ns // 2)
    return (low_w * u + (high_w - low_w) * high_ns) * 1e-3


def build(out_dir: str) -> str:
    """Compile square_writer.c into out_dir (kept if already there); returns its path."""
    exe = os.path.join(out_dir, "square_writer")
    if not os.path.exists(exe):
        subprocess.run(["cc", "-O2", "-std=c11", "-o", exe, SRC], check=True)
    return exe


def start(exe: str, zone: str, t0_ns: int, low_w: float, high_w: float, period_ms: float,
          update_ms: float) -> subprocess.Popen:
    """Run the writer on zone (a directory holding energy_uj); returns the process."""
    return subprocess.Popen([exe, zone, str(t0_ns), str(low_w), str(high_w), str(period_ms), str(update_ms)])


def late_ticks(zone: str) -> list:
    """The ticks the writer showed only after the next one was due: [(due_ns, shown_ns)]."""
    try:
        with open(os.path.join(zone, "late_ns")) as f:
            return [tuple(int(v) for v in line.split()) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def max_latency_ns(zone: str) -> int:
    """The longest any tick took to show after its due time (written when the writer exits)."""
    with open(os.path.join(zone, "latency_ns")) as f:
        return int(f.read())
