"""The sampler thread and the synthetic source, against analytic truth.

Every synthetic value is exactly computable from (t_start_ns, t_end_ns), so the
oracle is energyprof._reference (a numpy twin written apart from the C source):
per sample to 1e-9 relative, total energy exact, arbitrary windows within 0.1%.
Tests that need chosen sample boundaries freeze the clock (_core._set_fake_clock)
and step it; the thread keeps waking on the real clock and reads the fake one.
"""
import os
import sys
import threading
import time
import warnings

import numpy as np
import pytest

import energyprof as ep
from energyprof import _core
from energyprof import _reference as ref
from fakeclock import HANG_GUARD_S, FakeClock, wait_for_samples

DOMAINS = _core.DOMAINS


def run_for(spec, seconds, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no faults, no drops expected
        with ep.Sampler(spec, **kw) as s:
            time.sleep(seconds)
    return s


def check_stream(samples, domain="cpu", final_required=True):
    """Shape of a synthetic stream: interval samples, contiguous, simulated, one FINAL at the end.

    With a stepped fake clock the last poll may already reach the stop time, and then
    stop has no interval left to flush: final_required=False allows that."""
    assert len(samples) >= 2
    assert np.all(samples["kind"] == _core.KIND_INTERVAL)
    assert np.all(samples["t_end_ns"] > samples["t_start_ns"])
    assert np.array_equal(samples["t_start_ns"][1:], samples["t_end_ns"][:-1])  # contiguity
    assert np.all(samples["flags"] & _core.SFLAG_SIMULATED)
    final = (samples["flags"] & _core.SFLAG_FINAL) != 0
    assert (final[-1] or not final_required) and not final[:-1].any()
    for d in DOMAINS:
        col = samples[f"{d}_w"]
        assert np.all(np.isnan(col)) != (d == domain)


def integrate(samples, windows):
    energy_j, flags, counts = _core.integrate(samples, np.ascontiguousarray(windows, dtype=np.int64))
    return energy_j, flags


def random_windows(rng, t_lo, t_hi, m, min_frac=0.0):
    span = t_hi - t_lo
    a = rng.integers(t_lo, t_hi - int(span * min_frac), size=m)
    b = np.minimum(a + int(span * min_frac) + rng.integers(0, span, size=m), t_hi)
    return np.stack([a, b], axis=1)


# ---------------------------------------------------------------------- real clock

def test_constant_power_exact_per_sample_window_and_total():
    s = run_for("synthetic:power_w=12.5,period_ms=2", 0.15)
    x = s.samples
    check_stream(x)
    assert np.all(x["cpu_w"] == 12.5)
    t0, t1 = int(x["t_start_ns"][0]), int(x["t_end_ns"][-1])
    e, fl = integrate(x, [[t0, t1]])
    assert e[0, 0] == pytest.approx(12.5 * (t1 - t0) * 1e-9, rel=1e-12)
    assert np.isnan(e[0, 1:]).all()
    w = random_windows(np.random.default_rng(1), t0, t1, 200)
    e, fl = integrate(x, w)
    np.testing.assert_allclose(e[:, 0], 12.5 * (w[:, 1] - w[:, 0]) * 1e-9, rtol=1e-9, atol=1e-15)
    assert s.label == "simulated" and s.kind == "synthetic"
    assert s.dropped == 0 and s.faults == 0 and s.messages == []
    assert s.thread_cpu_ns > 0 and s.interval_ns == 2_000_000 == s.period_ns


@pytest.mark.parametrize(
    "spec, params",
    [
        ("synthetic:power_w=10,square_w=4,square_period_ms=7,period_ms=1",
         dict(power_w=10.0, square_w=4.0, square_period_ns=7_000_000)),
        ("synthetic:power_w=3,ramp_w_per_s=40,period_ms=1.5",
         dict(power_w=3.0, ramp_w_per_s=40.0)),
        ("synthetic:power_w=6,ramp_w_per_s=-5,square_w=2.5,square_period_ms=3.3,period_ms=0.7,domain=gpu",
         dict(power_w=6.0, ramp_w_per_s=-5.0, square_w=2.5, square_period_ns=3_300_000)),
    ],
)
def test_square_and_ramp_exact_per_sample(spec, params):
    s = run_for(spec, 0.2)
    x = s.samples
    domain = "gpu" if "domain=gpu" in spec else "cpu"
    check_stream(x, domain)
    t0 = int(x["t_start_ns"][0])  # the source's start time is the first sample's start
    want = ref.synthetic_average_power_w(x["t_start_ns"], x["t_end_ns"], t0, **params)
    np.testing.assert_allclose(x[f"{domain}_w"], want, rtol=1e-9)
    # Total energy over the run: the analytic integral, exactly (to rounding).
    t1 = int(x["t_end_ns"][-1])
    e, _ = integrate(x, [[t0, t1]])
    d = DOMAINS.index(domain)
    assert e[0, d] == pytest.approx(ref.synthetic_energy_j(t0, t1, t0, **params), rel=1e-9)


def test_noise_reproducible_and_matches_twin():
    runs = [run_for("synthetic:power_w=10,noise_w=2,seed=7,period_ms=1", 0.06).samples for _ in range(2)]
    other = run_for("synthetic:power_w=10,noise_w=2,seed=8,period_ms=1", 0.06).samples
    for x in runs:
        check_stream(x)
        z = (x["cpu_w"] - 10.0) / 2.0
        np.testing.assert_allclose(z, ref.synthetic_noise(7, len(x)), rtol=1e-9, atol=1e-12)
    n = min(len(runs[0]), len(runs[1]), len(other))
    assert np.array_equal(runs[0]["cpu_w"][:n], runs[1]["cpu_w"][:n])
    assert not np.array_equal(runs[0]["cpu_w"][:n], other["cpu_w"][:n])


# ---------------------------------------------------------------------- fake clock

def stepped_run(spec, steps_ns, on_step=None):
    """Start at the frozen time, then step the clock through steps_ns waiting for one sample each."""
    with FakeClock() as clk:
        t0 = clk.t
        s = ep.Sampler(spec)
        s.start()
        try:
            for i, dt in enumerate(steps_ns):
                if on_step:
                    on_step(clk, i)
                clk.set(clk.t + dt)
                wait_for_samples(s._core, i + 1)
            clk.set(clk.t + 250_000)  # the final flush gets its own (short) interval
            s.stop()
        finally:
            s.stop()
    return s, t0


def test_windows_within_0_1_percent_fake_clock():
    params = dict(power_w=10.0, square_w=4.0, square_period_ns=10_000_000, ramp_w_per_s=300.0)
    spec = "synthetic:power_w=10,square_w=4,square_period_ms=10,ramp_w_per_s=300,period_ms=0.2"
    s, t0 = stepped_run(spec, [1_000_000] * 150)
    x = s.samples
    check_stream(x, final_required=False)
    assert len(x) == 151
    np.testing.assert_allclose(x["cpu_w"], ref.synthetic_average_power_w(x["t_start_ns"], x["t_end_ns"], t0, **params),
                               rtol=1e-9)
    t1 = int(x["t_end_ns"][-1])
    w = random_windows(np.random.default_rng(2), t0, t1, 300, min_frac=0.05)
    e, fl = integrate(x, w)
    want = ref.synthetic_energy_j(w[:, 0], w[:, 1], t0, **params)
    np.testing.assert_allclose(e[:, 0], want, rtol=1e-3)
    # Sharper: square edges fall on sample edges (every 5 ms on a 1 ms grid), so the only
    # error is the ramp's curvature inside the two edge samples: <= ramp * d^2 / 8 each.
    bound_j = 2 * 300.0 * (1e-3) ** 2 / 8 + 1e-12
    assert np.all(np.abs(e[:, 0] - want) <= bound_j)


def test_square_and_ramp_hand_worked_fake_clock():
    """10 W + 4 W square (period 3 ms, high for the first 1.5 ms of each) + a 200 W/s ramp,
    sample edges at 1, 4, 4.5 and 4.75 ms on the frozen clock.  By hand:
    [0, 1) high throughout, ramp at 0.5 ms: 14 + 0.1 = 14.1 W;
    [1, 4) high in [1, 1.5) and [3, 4), half of it: 12 + 0.5 = 12.5 W;
    [4, 4.5) high throughout: 14 + 0.85 = 14.85 W;  [4.5, 4.75) low: 10 + 0.925 = 10.925 W.
    Energy: 10 W x 4.75 ms + 4 W x 3 ms high + 200 W/s x (4.75 ms)^2 / 2 = 0.06175625 J."""
    spec = "synthetic:power_w=10,square_w=4,square_period_ms=3,ramp_w_per_s=200,period_ms=0.2"
    s, t0 = stepped_run(spec, [1_000_000, 3_000_000, 500_000])
    x = s.samples
    assert (x["t_start_ns"] - t0).tolist() == [0, 1_000_000, 4_000_000, 4_500_000]
    assert (x["t_end_ns"] - t0).tolist() == [1_000_000, 4_000_000, 4_500_000, 4_750_000]
    np.testing.assert_allclose(x["cpu_w"], [14.1, 12.5, 14.85, 10.925], rtol=1e-12)
    e, _ = integrate(x, [[t0, t0 + 4_750_000]])
    assert e[0, 0] == pytest.approx(0.06175625, rel=1e-12)
    # the numpy twin (a transcription of the C expressions) agrees with the hand numbers too
    want = ref.synthetic_average_power_w(x["t_start_ns"], x["t_end_ns"], t0, power_w=10.0, square_w=4.0,
                                         square_period_ns=3_000_000, ramp_w_per_s=200.0)
    np.testing.assert_allclose(want, [14.1, 12.5, 14.85, 10.925], rtol=1e-12)


def test_active_power_exact_fake_clock():
    _core.set_activity(0)
    changes = []  # (t_ns, level) as the test sets them: the oracle's own record

    def on_step(clk, i):
        if i % 7 in (2, 5):
            # change mid-step: the C source must account for part of the next interval
            clk.set(clk.t + 300_000)
            level = 1 if i % 7 == 2 else 0
            _core.set_activity(level)
            changes.append((clk.t, level))

    spec = "synthetic:power_w=5,active_w=7,period_ms=0.2"
    try:
        s, t0 = stepped_run(spec, [1_000_000] * 40, on_step)
    finally:
        _core.set_activity(0)
    x = s.samples
    check_stream(x, final_required=False)

    def active_ns_at(t):  # cumulative time the level was > 0, from the recorded changes
        total, since = 0, None
        for tc, level in changes:
            if tc > t:
                break
            if level > 0 and since is None:
                since = tc
            elif level == 0 and since is not None:
                total += tc - since
                since = None
        return total + (t - since if since is not None and t > since else 0)

    a = np.array([active_ns_at(int(t)) for t in x["t_start_ns"]])
    b = np.array([active_ns_at(int(t)) for t in x["t_end_ns"]])
    assert (b - a).sum() > 0 and (b - a).sum() < x["t_end_ns"][-1] - x["t_start_ns"][0]
    want = ref.synthetic_average_power_w(x["t_start_ns"], x["t_end_ns"], t0, power_w=5.0, active_w=7.0,
                                         active_ns=b - a)
    np.testing.assert_allclose(x["cpu_w"], want, rtol=1e-9)


# ---------------------------------------------------------------------- ring, life cycle

def test_ring_overflow_is_counted_not_silent():
    core = _core.Sampler("synthetic", {"period_ms": "0.1"}, None, 4)
    core.start()
    wait_for_samples(core, 20)
    core.stop()
    st = core.stats()
    assert st["pending"] == 4
    assert st["dropped"] == st["samples"] - 4 > 0 == st["faults"]
    x = core.drain()
    assert len(x) == 4 and core.pending == 0
    # the oldest are kept: the first four samples of the run, contiguous
    assert np.array_equal(x["t_start_ns"][1:], x["t_end_ns"][:-1])
    # the Python face reports it too, with a warning
    s = ep.Sampler("synthetic:period_ms=0.1", capacity=4)
    s.start()
    wait_for_samples(s._core, 20)
    with pytest.warns(RuntimeWarning, match="dropped"):
        s.stop()
    assert s.dropped > 0


def _native_threads():
    """energyprof's own native threads (named ep-sampler / ep-writer by the C core).

    Counting only ours keeps the check about ours: torch, sqlite or an earlier test may
    start or end threads of their own meanwhile."""
    if not sys.platform.startswith("linux"):
        return threading.active_count()
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:  # the thread ended while we looked
            pass
    return sum(n.startswith("ep-") for n in names)


def test_native_threads_are_named_and_counted():
    before = _native_threads()
    s = ep.Sampler("synthetic:power_w=1,period_ms=1")
    s.start()
    try:
        assert _native_threads() == before + 1  # the sampler thread, named ep-sampler
    finally:
        s.stop()
    assert _native_threads() == before


def test_start_stop_1000_cycles_no_leak():
    before_threads = _native_threads()
    s = ep.Sampler("synthetic:power_w=2,period_ms=0.05")
    for _ in range(1000):
        s.start()
        s.stop()
    x = s.samples
    st = s.stats()
    assert not s.running
    assert st["samples"] == len(x) + st["dropped"]
    # every run ends with exactly one final sample; within a run samples are contiguous
    final = (x["flags"] & _core.SFLAG_FINAL) != 0
    assert final.sum() == 1000
    run_id = np.concatenate([[0], np.cumsum(final)[:-1]])
    same_run = run_id[1:] == run_id[:-1]
    assert np.array_equal(x["t_start_ns"][1:][same_run], x["t_end_ns"][:-1][same_run])
    assert np.all(x["cpu_w"] == 2.0)
    # fresh native samplers, half of them dropped while running (dealloc stops and joins)
    for i in range(200):
        c = _core.Sampler("synthetic", {"period_ms": "0.05"}, None, 16)
        c.start()
        if i % 2:
            c.stop()
        del c
    assert _native_threads() <= before_threads  # none of ours remain (earlier tests' may end meanwhile)


def test_stop_interrupts_the_wait():
    # A 60 s interval: if stop waited for the tick there would be one poll; there is none.
    s = ep.Sampler("synthetic:power_w=1", interval_ms=60_000)
    s.start()
    s.stop()
    assert s.stats()["polls"] == 0
    assert len(s.samples) == 1 and s.samples["flags"][0] & _core.SFLAG_FINAL


def test_background_drain_and_restart_errors():
    s = ep.Sampler("synthetic:period_ms=1")
    s.start()
    try:
        with pytest.raises(RuntimeError, match="already running"):
            s.start()
        deadline = time.monotonic() + HANG_GUARD_S
        while len(s.samples) == 0:  # only the daemon thread drains here
            assert time.monotonic() < deadline, "background drain never ran"
            time.sleep(0.02)
    finally:
        s.stop()
    check_stream(s.samples)
    assert s.drain().shape == (0,)


def test_core_sampler_argument_errors():
    with pytest.raises(ValueError, match="interval_ms"):
        _core.Sampler("synthetic", {}, 0.0)
    with pytest.raises(ValueError, match="capacity"):
        _core.Sampler("synthetic", {}, None, 0)
    with pytest.raises(TypeError):
        _core.Sampler("synthetic", {"power_w": 3})
    with pytest.raises(ValueError, match="unknown source kind"):
        _core.Sampler("nope", {})
    with pytest.raises(ValueError, match="power_w"):
        _core.Sampler("synthetic", {"power_w": "x"})
    with pytest.raises(ValueError, match="bogus"):
        _core.Sampler("synthetic", {"bogus": "1"})
    with pytest.raises(ValueError, match="minimum"):
        _core.Sampler("synthetic", {}, 0.001)
    c = _core.Sampler("synthetic", {"power_w": "4", "period_ms": "3", "domain": "dram", "seed": "5"})
    assert c.kind == "synthetic" and c.period_ns == 3_000_000 and c.source_flags & _core.SRC_SIMULATED
    import json

    meta = json.loads(c.meta_json)
    assert meta["power_w"] == 4 and meta["domain"] == "dram" and meta["seed"] == 5
    assert not c.running and c.dropped == 0 and c.message == "" and c.drain().dtype == _core.SAMPLE_DTYPE


def test_concurrent_drains_lose_and_duplicate_nothing():
    """Several threads draining at once (the shrink path of drain): the union is the whole stream."""
    core = _core.Sampler("synthetic", {"period_ms": "0.02"}, None, 1 << 16)
    got = []
    stop = threading.Event()

    def drainer():
        while not stop.is_set():
            got.append(core.drain())
            time.sleep(0.0001)

    threads = [threading.Thread(target=drainer) for _ in range(3)]
    core.start()
    for t in threads:
        t.start()
    wait_for_samples(core, 1000)
    core.stop()
    stop.set()
    for t in threads:
        t.join()
    got.append(core.drain())
    x = np.concatenate(got)
    x = x[np.argsort(x["t_start_ns"], kind="stable")]
    assert len(x) == core.samples and core.dropped == 0
    check_stream(x)


def test_samples_since_returns_exactly_the_new_samples():
    """A cursor over a running sampler sees every sample once, in order, equal to .samples at the end."""
    import energyprof as ep

    got = []
    cursor = 0
    with ep.Sampler("synthetic:power_w=3,period_ms=1") as s:
        for _ in range(30):
            time.sleep(0.01)
            s.drain()
            new = s.samples_since(cursor)
            cursor += len(new)
            got.append(new)
            assert s.n_samples >= cursor
    got.append(s.samples_since(cursor))
    allnew = np.concatenate(got)
    assert len(allnew) == len(s.samples) == s.n_samples
    assert np.array_equal(allnew["t_start_ns"], s.samples["t_start_ns"])
    assert len(s.samples_since(len(s.samples))) == 0
    with pytest.raises(ValueError):
        s.samples_since(-1)


def test_one_background_drain_serves_every_running_sampler():
    """Samples move from each C ring to .samples while the samplers run, without drain()
    from the test: the shared drain thread serves both; after stop() neither is drained
    again (its samples stay exactly what stop() returned)."""
    import time

    from energyprof.measure import sampler as sampler_mod

    a = ep.Sampler("synthetic:power_w=1,period_ms=1")
    b = ep.Sampler("synthetic:power_w=2,period_ms=1")
    a.start()
    b.start()
    try:
        deadline = time.monotonic() + 30
        while (a._n == 0 or b._n == 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert a._n > 0 and b._n > 0   # drained in the background
        assert {a, b} <= sampler_mod._DRAINS._running
    finally:
        sa = a.stop().copy()
        sb = b.stop().copy()
    assert a not in sampler_mod._DRAINS._running and b not in sampler_mod._DRAINS._running
    time.sleep(2 * sampler_mod.DRAIN_EVERY_S)
    assert a.samples.tobytes() == sa.tobytes() and b.samples.tobytes() == sb.tobytes()
    assert np.all(sa["cpu_w"] == 1.0) and np.all(sb["cpu_w"] == 2.0)


def test_concat_records_matches_numpy_concatenate():
    """_dtypes.concat_records (what the sampler joins its drained chunks with) against
    np.concatenate: same rows, a new array (never a view of a part), empty parts, a strided
    part and mixed dtypes going to numpy's own path."""
    from energyprof._dtypes import concat_records

    rng = np.random.default_rng(3)
    dt = _core.SAMPLE_DTYPE
    parts = []
    for n in (0, 5, 1, 0, 17):
        a = np.zeros(n, dt)
        for f in dt.names:
            a[f] = rng.integers(0, 1000, n) if dt.fields[f][0].kind in "iu" else rng.normal(size=n)
        parts.append(a)
    got = concat_records(parts)
    assert got.dtype == dt
    np.testing.assert_array_equal(got, np.concatenate(parts))
    one = concat_records([parts[1]])
    np.testing.assert_array_equal(one, parts[1])
    assert not np.shares_memory(one, parts[1])
    strided = parts[4][::2]
    np.testing.assert_array_equal(concat_records([parts[1], strided]), np.concatenate([parts[1], strided]))
    assert len(concat_records([], dtype=dt)) == 0 and concat_records([], dtype=dt).dtype == dt
    with pytest.raises(ValueError):
        concat_records([])
    plain = [np.arange(3.0), np.arange(2.0)]
    np.testing.assert_array_equal(concat_records(plain), np.arange(3.0).tolist() + np.arange(2.0).tolist())


def test_start_without_waiting_and_stop_asked_for_early():
    """Sampler.start(wait=False) + wait_started() and request_stop() + stop() give the same
    kind of series as start() / stop(): contiguous samples of the synthetic 7 W, the last one
    final; a stop straight after start(wait=False) finishes the start itself and never hangs."""
    s = ep.Sampler("synthetic:power_w=7,period_ms=1")
    s.start(wait=False)
    s.wait_started()
    s.wait_started()                  # nothing left to wait for
    assert s.running
    deadline = time.monotonic() + 30
    while s.n_samples + s._core.stats()["pending"] < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    s.request_stop()
    x = s.stop()
    assert len(x) >= 3 and (x["cpu_w"] == 7.0).all()
    assert (x["t_start_ns"][1:] == x["t_end_ns"][:-1]).all()
    final = (x["flags"] & _core.SFLAG_FINAL) != 0
    assert final[-1] and not final[:-1].any()
    for _ in range(50):
        s.start(wait=False)
        s.stop()
    assert not s.running
