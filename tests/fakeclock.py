"""Test helpers that replace sleeps: energyprof's frozen clock and waits for events.

``FakeClock`` freezes ``_core.now_ns()`` (the one clock of samples, hooks and activity)
and steps it; the sampler thread keeps waking on the real clock and reads the frozen
one, so a synthetic sample ends exactly where the test moved the clock to.
``wait_until`` waits for a condition (a sampler's count, a feed's pass), never for a
length of time; its guard only turns a hang into a failure, nothing asserts on time.
"""
from __future__ import annotations

import time
from typing import Callable

from energyprof import _core

HANG_GUARD_S = 30.0


def wait_until(cond: Callable[[], bool], what: str, guard_s: float = HANG_GUARD_S) -> None:
    """Return once cond() is true; fail (not hang) if it never becomes true."""
    deadline = time.monotonic() + guard_s
    while not cond():
        assert time.monotonic() < deadline, f"waited {guard_s} s for {what}"
        time.sleep(0.0002)


def wait_for_samples(core, n: int) -> None:
    """Block until the C sampler ``core`` (``_core.Sampler``) has produced n samples."""
    wait_until(lambda: core.stats()["samples"] >= n, f"{n} samples from the sampler thread")


class FakeClock:
    """Freeze energyprof's clock and step it; restore the real clock on exit."""

    def __enter__(self) -> "FakeClock":
        self.t = _core.now_ns()
        _core._set_fake_clock(self.t)
        return self

    def set(self, t: int) -> None:
        self.t = int(t)
        _core._set_fake_clock(self.t)

    def advance(self, dt_ns: int, sampler_core=None) -> int:
        """Move the clock on by dt_ns; with ``sampler_core``, wait until the sampler has
        emitted the sample that ends at the new time (so a sample boundary lies there)."""
        n = sampler_core.stats()["samples"] if sampler_core is not None else 0
        self.set(self.t + dt_ns)
        if sampler_core is not None:
            wait_for_samples(sampler_core, n + 1)
        return self.t

    def __exit__(self, *exc) -> bool:
        _core._set_fake_clock(0)
        return False
