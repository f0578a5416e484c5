"""The _core module: clock, activity level, sample dtype."""
import numpy as np

from energyprof import _core


def test_now_ns_monotonic():
    a = _core.now_ns()
    b = _core.now_ns()
    assert b >= a > 0


def test_sample_dtype_matches_struct():
    dt = _core.SAMPLE_DTYPE
    assert dt.itemsize == 8 + 8 + 4 + 4 + 8 * len(_core.DOMAINS)
    assert dt.names == ("t_start_ns", "t_end_ns", "kind", "flags", "cpu_w", "gpu_w", "ane_w", "dram_w", "package_w")
    assert dt.fields["cpu_w"][1] == 24
    assert np.zeros(3, dt).nbytes == 3 * dt.itemsize


def test_activity_accumulates_active_time():
    _core.set_activity(0)
    t0 = _core.now_ns()
    base = _core.active_ns_at(t0)
    _core.set_activity(1)
    _core.set_activity(0)
    assert _core.activity() == 0
    t1 = _core.now_ns()
    active = _core.active_ns_at(t1) - base
    assert 0 <= active <= t1 - t0
