"""The exact energy integrator (_core.integrate, csrc/kernels/ep_integrate.c).

Three oracles hold it: closed-form integrals (constant, ramp, square wave), a
brute-force exact-arithmetic oracle written here (per sample overlap, Fractions),
and the vectorised numpy twin energyprof._reference.integrate on random inputs.
"""
from __future__ import annotations

import doctest
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import energyprof.measure.integrate as integ_mod
from energyprof import _core
from energyprof import _reference
from energyprof.measure.integrate import Integrated, integrate

ND = len(_core.DOMAINS)
NS = 10**9
INSTANT, INTERVAL = _core.KIND_INSTANT, _core.KIND_INTERVAL


def make_samples(kind, starts, ends=None, powers=None):
    """Samples of one kind; powers is (n, 5) (NaN where unknown) or a 1-D cpu column."""
    n = len(starts)
    s = np.zeros(n, _core.SAMPLE_DTYPE)
    s["kind"] = kind
    s["t_start_ns"] = starts
    s["t_end_ns"] = starts if ends is None else ends
    p = np.full((n, ND), np.nan)
    if powers is not None:
        powers = np.asarray(powers, dtype=np.float64)
        if powers.ndim == 1:
            p[:, 0] = powers
        else:
            p[:] = powers
    for j, d in enumerate(_core.DOMAINS):
        s[f"{d}_w"] = p[:, j]
    return s


def power_matrix(samples):
    return np.stack([samples[f"{d}_w"] for d in _core.DOMAINS], axis=1) if len(samples) else np.zeros((0, ND))


# --------------------------------------------------------------------------- brute force oracle


def brute_force(samples, windows):
    """Per window, per sample/segment overlap in exact rational arithmetic, straight from the
    definitions in docs/integration.md (no cumulative function, no search)."""
    n, m = len(samples), len(windows)
    energy = np.full((m, ND), np.nan)
    flags = np.full(m, _core.WIN_OUTSIDE, dtype=np.uint32)
    counts = np.zeros(m, dtype=np.int32)
    if n == 0:
        return energy, flags, counts
    interval = samples["kind"][0] == INTERVAL
    s = [int(x) for x in samples["t_start_ns"]]
    e = [int(x) for x in samples["t_end_ns"]]
    p = power_matrix(samples)
    measured = ~np.isnan(p).all(axis=0)
    bad = [bool((np.isnan(p[i]) & measured).any()) for i in range(n)]
    first, last = s[0], (e[-1] if interval else s[-1])
    for w, (a, b) in enumerate(windows):
        a, b = int(a), int(b)
        if a < first or b > last:
            continue
        tot = [Fraction(0)] * ND
        fl = 0
        if interval:
            cnt = sum(1 for i in range(n) if a <= s[i] and e[i] <= b)
            for i in range(n):
                ov = min(b, e[i]) - max(a, s[i])
                if ov > 0:
                    for d in range(ND):
                        if not np.isnan(p[i, d]):
                            tot[d] += Fraction(float(p[i, d])) * ov
                if bad[i] and s[i] < b and e[i] > a:
                    fl |= _core.WIN_NAN
            for j in range(n - 1):
                if s[j + 1] > e[j] and e[j] < b and s[j + 1] > a:
                    fl |= _core.WIN_GAP
        else:
            cnt = sum(1 for j in range(n - 1) if a <= s[j] and s[j + 1] <= b)
            for j in range(n - 1):
                t0, t1 = s[j], s[j + 1]
                x0, x1 = max(a, t0), min(b, t1)
                if (bad[j] or bad[j + 1]) and t0 < b and t1 > a:
                    fl |= _core.WIN_NAN
                if x1 <= x0:
                    continue
                for d in range(ND):
                    if np.isnan(p[j, d]) or np.isnan(p[j + 1, d]):
                        continue
                    p0, p1 = Fraction(float(p[j, d])), Fraction(float(p[j + 1, d]))
                    slope = (p1 - p0) / (t1 - t0)
                    tot[d] += p0 * (x1 - x0) + slope * ((x1 - t0) ** 2 - (x0 - t0) ** 2) / 2
        if cnt == 0:
            fl |= _core.WIN_UNRESOLVED
        energy[w] = [float(tot[d] / NS) if measured[d] else np.nan for d in range(ND)]
        flags[w] = fl
        counts[w] = cnt
    return energy, flags, counts


def energy_scale_j(samples):
    """Total |energy| of the samples: the size of F, hence of its rounding."""
    if len(samples) == 0:
        return 0.0
    p = np.nan_to_num(np.abs(power_matrix(samples)))
    if samples["kind"][0] == INTERVAL:
        dur = (samples["t_end_ns"] - samples["t_start_ns"]).astype(float)
        return float((p * dur[:, None]).sum() / NS)
    t = samples["t_start_ns"]
    return float((p.max(axis=1)[:-1] * np.diff(t).astype(float)).sum() * 2 / NS) if len(t) > 1 else 0.0


def assert_same(got, want, scale_j, rtol=1e-9):
    """Energies equal to rtol (plus F's rounding: 1e-12 of the total), NaN in the same
    places, flags and counts identical."""
    ge, gf, gc = got
    we, wf, wc = want
    assert ge.shape == we.shape
    np.testing.assert_array_equal(np.isnan(ge), np.isnan(we))
    ok = ~np.isnan(we)
    np.testing.assert_allclose(ge[ok], we[ok], rtol=rtol, atol=1e-12 * scale_j + 1e-300)
    np.testing.assert_array_equal(gf, wf)
    np.testing.assert_array_equal(gc, wc)


# --------------------------------------------------------------------------- strategies

power_value = st.one_of(st.floats(0.0, 1000.0), st.integers(0, 500).map(float))


@st.composite
def sample_sets(draw, max_n=40):  # > CHECKPOINT (16) so F is rebuilt across checkpoints
    kind = draw(st.sampled_from([INSTANT, INTERVAL]))
    n = draw(st.integers(0, max_n))
    base = draw(st.sampled_from([0, 12_345, 10**18, -(5 * 10**17)]))
    unit = draw(st.sampled_from([1, 1000, 10**6]))
    starts, ends = [], []
    t = base
    for _ in range(n):
        if kind == INTERVAL:
            t += unit * draw(st.one_of(st.just(0), st.just(0), st.integers(0, 20)))  # gap, mostly none
            dur = unit * draw(st.integers(0, 20))
            starts.append(t)
            ends.append(t + dur)
            t += dur
        else:
            starts.append(t)
            ends.append(t)
            t += unit * draw(st.integers(0, 20))
    p = np.full((n, ND), np.nan)
    for d in range(ND):
        mode = draw(st.sampled_from(["values", "values", "some_nan", "all_nan"]))
        if mode == "all_nan":
            continue
        vals = draw(st.lists(power_value, min_size=n, max_size=n))
        p[:, d] = vals
        if mode == "some_nan" and n:
            idx = draw(st.lists(st.integers(0, n - 1), max_size=3))
            p[idx, d] = np.nan
    return make_samples(kind, starts, ends, p)


@st.composite
def windows_for(draw, samples, max_m=10):
    if len(samples):
        knots = sorted(set(samples["t_start_ns"].tolist() + samples["t_end_ns"].tolist()))
        lo, hi = knots[0], knots[-1]
    else:
        knots, lo, hi = [0], 0, 100
    span = max(hi - lo, 1)
    point = st.one_of(
        st.sampled_from(knots),
        st.sampled_from(knots).map(lambda k: k + 1),
        st.sampled_from(knots).map(lambda k: k - 1),
        st.integers(lo - span // 10 - 1, hi + span // 10 + 1),
    )
    pairs = draw(st.lists(st.tuples(point, point), max_size=max_m))
    wins = np.array([sorted(pr) for pr in pairs], dtype=np.int64).reshape(-1, 2)
    if draw(st.booleans()):
        wins = wins[np.argsort(wins[:, 0], kind="stable")]
    return wins


# --------------------------------------------------------------------------- random agreement


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_c_and_twin_agree(data):
    samples = data.draw(sample_sets())
    wins = data.draw(windows_for(samples))
    assert_same(_core.integrate(samples, wins), _reference.integrate(samples, wins), energy_scale_j(samples))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_c_matches_exact_brute_force(data):
    samples = data.draw(sample_sets(max_n=24))
    wins = data.draw(windows_for(samples, max_m=6))
    assert_same(_core.integrate(samples, wins), brute_force(samples, wins), energy_scale_j(samples))


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_window_order_does_not_matter(data):
    samples = data.draw(sample_sets())
    wins = data.draw(windows_for(samples, max_m=15))
    perm = data.draw(st.permutations(list(range(len(wins)))))
    perm = np.asarray(perm, dtype=np.intp)
    e1, f1, c1 = _core.integrate(samples, wins)
    e2, f2, c2 = _core.integrate(samples, np.ascontiguousarray(wins[perm]))
    np.testing.assert_array_equal(e1[perm], e2)
    np.testing.assert_array_equal(f1[perm], f2)
    np.testing.assert_array_equal(c1[perm], c2)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_conservation_adjacent_windows(data):
    samples = data.draw(sample_sets(max_n=40).filter(lambda s: len(s) >= 2))
    kind = samples["kind"][0]
    lo = int(samples["t_start_ns"][0])
    hi = int(samples["t_end_ns"][-1]) if kind == INTERVAL else int(samples["t_start_ns"][-1])
    cuts = sorted(data.draw(st.lists(st.integers(lo, hi), max_size=20)))
    bounds = np.array([lo, *cuts, hi], dtype=np.int64)
    parts = np.stack([bounds[:-1], bounds[1:]], axis=1)
    e_parts, _, _ = _core.integrate(samples, parts)
    e_all, _, _ = _core.integrate(samples, np.array([[lo, hi]], dtype=np.int64))
    measured = ~np.isnan(e_all[0])
    np.testing.assert_allclose(
        e_parts[:, measured].sum(axis=0), e_all[0, measured], rtol=1e-9, atol=1e-12 * energy_scale_j(samples) + 1e-300
    )


# --------------------------------------------------------------------------- analytic checks


def test_constant_power_interval_exact():
    period = 5_000_000
    t = np.arange(0, 200) * period + 10**18
    s = make_samples(INTERVAL, t, t + period, np.full(200, 20.0))
    rng = np.random.default_rng(1)
    a = rng.integers(t[0], t[-1] + period, 500)
    b = rng.integers(t[0], t[-1] + period, 500)
    wins = np.sort(np.stack([a, b], axis=1), axis=1)
    e, f, c = _core.integrate(s, wins)
    want = 20.0 * (wins[:, 1] - wins[:, 0]) / NS
    np.testing.assert_allclose(e[:, 0], want, rtol=1e-12, atol=1e-12)
    assert np.isnan(e[:, 1:]).all()  # domains never measured
    assert not (f & (_core.WIN_GAP | _core.WIN_NAN | _core.WIN_OUTSIDE)).any()
    # whole samples inside [a, b): those starting at or after a and ending at or before b
    k0 = -((t[0] - wins[:, 0]) // period)
    k1 = (wins[:, 1] - t[0]) // period
    np.testing.assert_array_equal(c, np.maximum(k1 - k0, 0))
    np.testing.assert_array_equal((f & _core.WIN_UNRESOLVED) != 0, c == 0)


def test_linear_ramp_instant_exact():
    # p(t) = 3 + 2 * t_s, sampled every 7 ms: the trapezoid rule is exact for a ramp.
    t = np.arange(0, 300) * 7_000_000 + 123
    p = 3.0 + 2.0 * (t - t[0]) / NS
    s = make_samples(INSTANT, t, powers=p)
    rng = np.random.default_rng(2)
    wins = np.sort(rng.integers(t[0], t[-1] + 1, (400, 2)), axis=1)
    e, f, c = _core.integrate(s, wins)
    ta, tb = (wins[:, 0] - t[0]) / NS, (wins[:, 1] - t[0]) / NS
    want = 3.0 * (tb - ta) + (tb**2 - ta**2)
    np.testing.assert_allclose(e[:, 0], want, rtol=1e-9, atol=1e-12)
    # a window inside one segment still gets the interpolated power's integral, flagged unresolved
    w = np.array([[t[10] + 1_000_000, t[10] + 3_000_000]], dtype=np.int64)
    e1, f1, c1 = _core.integrate(s, w)
    mid_s = ((t[10] + 2_000_000) - t[0]) / NS
    assert e1[0, 0] == pytest.approx((3.0 + 2.0 * mid_s) * 0.002, rel=1e-12)
    assert f1[0] == _core.WIN_UNRESOLVED and c1[0] == 0


def test_square_wave_interval_exact():
    # 40 W / 10 W square wave, 50 ms period, sampled as 5 ms interval averages.
    period = 5_000_000
    t = np.arange(0, 400) * period
    p = np.where((t // 25_000_000) % 2 == 0, 40.0, 10.0)
    s = make_samples(INTERVAL, t, t + period, p)
    wins = np.array([[0, 50_000_000], [0, 25_000_000], [25_000_000, 50_000_000], [12_500_000, 37_500_000],
                     [0, 2_000_000_000]], dtype=np.int64)
    e, f, c = _core.integrate(s, wins)
    np.testing.assert_allclose(e[:, 0], [1.25, 1.0, 0.25, 0.625, 50.0], rtol=1e-12)
    np.testing.assert_array_equal(c, [10, 5, 5, 4, 400])  # 15..35 ms whole in 12.5..37.5


def test_precision_at_1e18_ns():
    base = 10**18
    t = base + np.arange(0, 1000) * 1000  # 1 us samples far from zero
    s = make_samples(INTERVAL, t, t + 1000, np.full(1000, 7.0))
    w = np.array([[base + 500_001, base + 500_004]], dtype=np.int64)  # 3 ns window
    e, _, _ = _core.integrate(s, w)
    assert e[0, 0] == pytest.approx(7.0 * 3e-9, rel=1e-9)


def test_gaps_and_nan_flags():
    s = make_samples(
        INTERVAL,
        [0, 10, 30, 40],
        [10, 20, 40, 50],
        np.column_stack([[1e9, 2e9, 3e9, 4e9], [1e9, np.nan, 1e9, 1e9], np.full((4, 3), np.nan)]),
    )
    wins = np.array([[0, 50], [0, 10], [20, 30], [25, 26], [40, 50], [5, 15], [0, 51], [-1, 5]], dtype=np.int64)
    e, f, c = _core.integrate(s, wins)
    W = _core
    np.testing.assert_allclose(e[:, 0], [100, 10, 0, 0, 40, 15, np.nan, np.nan])
    np.testing.assert_allclose(e[:, 1], [30, 10, 0, 0, 10, 5, np.nan, np.nan])
    assert np.isnan(e[:, 2:]).all()
    assert f.tolist() == [
        W.WIN_GAP | W.WIN_NAN,
        0,
        W.WIN_GAP | W.WIN_UNRESOLVED,
        W.WIN_GAP | W.WIN_UNRESOLVED,
        0,
        W.WIN_NAN | W.WIN_UNRESOLVED,
        W.WIN_OUTSIDE,
        W.WIN_OUTSIDE,
    ]
    assert c.tolist() == [4, 1, 0, 0, 1, 0, 0, 0]


def test_edge_counts():
    wins = np.array([[0, 0], [5, 9]], dtype=np.int64)
    e, f, c = _core.integrate(make_samples(INTERVAL, []), wins)
    assert np.isnan(e).all() and (f == _core.WIN_OUTSIDE).all() and (c == 0).all()
    one = make_samples(INSTANT, [5], powers=[3.0])
    e, f, c = _core.integrate(one, np.array([[5, 5], [5, 6]], dtype=np.int64))
    assert e[0, 0] == 0.0 and f[0] == _core.WIN_UNRESOLVED and f[1] == _core.WIN_OUTSIDE
    e, f, c = _core.integrate(one, np.empty((0, 2), dtype=np.int64))
    assert e.shape == (0, ND) and f.shape == (0,) and c.shape == (0,)


# --------------------------------------------------------------------------- errors and the wrapper


def test_errors_are_value_errors_naming_the_problem():
    ok = make_samples(INTERVAL, [0, 10], [10, 20], [1.0, 2.0])
    w = np.array([[0, 20]], dtype=np.int64)
    mixed = ok.copy()
    mixed["kind"][1] = INSTANT
    with pytest.raises(ValueError, match="kind"):
        _core.integrate(mixed, w)
    overlap = make_samples(INTERVAL, [0, 5], [10, 20], [1.0, 2.0])
    with pytest.raises(ValueError, match="overlap"):
        _core.integrate(overlap, w)
    with pytest.raises(ValueError, match="sorted"):
        _core.integrate(make_samples(INSTANT, [10, 5], powers=[1.0, 1.0]), w)
    with pytest.raises(ValueError, match="t_end_ns"):
        _core.integrate(make_samples(INTERVAL, [0], [-1], [1.0]), w)
    with pytest.raises(ValueError, match="INSTANT"):
        _core.integrate(make_samples(INSTANT, [0], [3], [1.0]), w)
    with pytest.raises(ValueError, match=r"windows\[1\]: end_ns"):
        _core.integrate(ok, np.array([[0, 5], [9, 8]], dtype=np.int64))
    with pytest.raises(ValueError, match="SAMPLE_DTYPE"):
        _core.integrate(np.zeros(3), w)
    with pytest.raises(ValueError, match="SAMPLE_DTYPE"):
        _core.integrate([1, 2], w)
    with pytest.raises(ValueError, match="int64"):
        _core.integrate(ok, w.astype(np.int32))
    with pytest.raises(ValueError, match=r"shape \(M, 2\)"):
        _core.integrate(ok, np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="contiguous"):
        _core.integrate(np.repeat(ok, 2)[::2], w)
    for bad in (mixed, overlap):
        with pytest.raises(ValueError):
            _reference.integrate(bad, w)
    with pytest.raises(ValueError):
        _reference.integrate(ok, np.array([[9, 8]]))


def test_wrapper_accepts_pairs_and_validates():
    s = make_samples(INTERVAL, [0, NS], [NS, 2 * NS], [10.0, 30.0])
    r = integrate(s, [(0, 2 * NS), (NS // 2, 3 * NS // 2)])
    assert isinstance(r, Integrated)
    assert r.energy_j[:, 0].tolist() == [40.0, 20.0]
    assert r.samples_in_window.tolist() == [2, 0]
    assert integrate(s, []).energy_j.shape == (0, ND)
    # a strided view is made contiguous by the wrapper
    assert integrate(np.repeat(s, 2)[::2], [(0, NS)]).energy_j[0, 0] == 10.0
    with pytest.raises(ValueError, match="integer"):
        integrate(s, [(0.5, 1.0)])
    with pytest.raises(ValueError, match="shape"):
        integrate(s, [(0, 1, 2)])
    with pytest.raises(ValueError, match="SAMPLE_DTYPE"):
        integrate(np.zeros(2, [("a", "<i8")]), [(0, 1)])
    assert integ_mod.WIN_OUTSIDE == _core.WIN_OUTSIDE == _reference.WIN_OUTSIDE
    assert (_core.WIN_GAP, _core.WIN_NAN, _core.WIN_UNRESOLVED) == (
        _reference.WIN_GAP, _reference.WIN_NAN, _reference.WIN_UNRESOLVED)


def test_module_doctest_runs():
    assert doctest.testmod(integ_mod).failed == 0


def test_large_input_sorted_windows_match_twin():
    rng = np.random.default_rng(7)
    n = 200_000
    dur = rng.integers(1_000_000, 2_000_000, n)
    gaps = np.where(rng.random(n) < 0.01, rng.integers(1, 1_000_000, n), 0)
    t0 = np.cumsum(dur + gaps) - dur
    p = rng.random((n, ND)) * 50
    p[rng.random(n) < 0.001, 1] = np.nan
    p[:, 2] = np.nan
    s = make_samples(INTERVAL, t0, t0 + dur, p)
    cuts = np.sort(rng.integers(t0[0], t0[-1] + dur[-1], 50_001))
    wins = np.stack([cuts[:-1], cuts[1:]], axis=1)
    assert_same(_core.integrate(s, wins), _reference.integrate(s, wins), energy_scale_j(s))


def test_docs_example_runs():
    import pathlib
    import re

    page = pathlib.Path(__file__).resolve().parent.parent / "docs" / "integration.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, str(page), "exec"), {})


@pytest.mark.parametrize("kind", [INSTANT, INTERVAL])
def test_large_random_unsorted_windows_match_twin_and_brute_force(kind):
    # thousands of samples with NaNs, gaps and repeated times; windows in random order
    rng = np.random.default_rng(11 + kind)
    n = 3000
    if kind == INTERVAL:
        dur = rng.integers(0, 4_000, n) * (rng.random(n) > 0.02)  # a few zero-length samples
        gap = rng.integers(1, 3_000, n) * (rng.random(n) < 0.1)
        starts = 10**17 + np.cumsum(dur + gap) - dur
        ends = starts + dur
    else:
        steps = rng.integers(0, 5_000, n) * (rng.random(n) > 0.05)  # some repeated instants
        starts = ends = 10**17 + np.cumsum(steps)
    p = rng.random((n, ND)) * 100
    p[rng.random((n, ND)) < 0.01] = np.nan
    p[:, 3] = np.nan
    s = make_samples(kind, starts, ends, p)
    lo, hi = int(starts[0]), int(ends[-1])
    wins = np.sort(rng.integers(lo - 1000, hi + 1000, (2000, 2)), axis=1)
    got = _core.integrate(s, wins)
    assert_same(got, _reference.integrate(s, wins), energy_scale_j(s))
    few = wins[:10]
    assert_same(_core.integrate(s, few), brute_force(s, few), energy_scale_j(s))


# --------------------------------------------------------------------------- the kernel's ways through the windows
# The kernel answers windows by one walk over the samples and streams the windows in
# one of three ways: in place (sorted by start and by end), sorted by (start, end) as
# copies with the ends then in order (results staged and moved to the windows' rows), or
# starts and ends sorted apart (nested windows; ends as packed keys, or as copies when
# times and indices do not fit 64 bits).  Each way must give the same numbers as the
# oracles.


def _samples_with_gaps_and_nans(rng, kind, base_ns, unmeasured=None, n=4000):
    """n samples from base_ns, a few NaNs; INTERVAL ones leave gaps between them; the
    domain `unmeasured` is NaN throughout."""
    step = rng.integers(1, 3_000, n)
    starts = base_ns + np.cumsum(step) - step
    ends = starts + (step // 2 if kind == INTERVAL else 0)   # gaps between interval samples
    p = rng.random((n, ND)) * 20
    p[rng.random((n, ND)) < 0.005] = np.nan
    if unmeasured is not None:
        p[:, unmeasured] = np.nan
    return make_samples(kind, starts, ends, p)


def _adjacent_and_nested(rng, lo, hi, m):
    cuts = np.sort(rng.integers(lo, hi + 1, m + 1))
    adjacent = np.stack([cuts[:-1], cuts[1:]], axis=1)
    nested = np.concatenate([adjacent, np.stack([cuts[:-2:3], cuts[2::3]], axis=1)])  # a parent every 3
    return adjacent, nested


@pytest.mark.parametrize("kind", [INSTANT, INTERVAL])
def test_every_window_order_gives_the_same_numbers(kind):
    rng = np.random.default_rng(21 + kind)
    s = _samples_with_gaps_and_nans(rng, kind, 5 * 10**17, unmeasured=4)
    adjacent, nested = _adjacent_and_nested(rng, int(s["t_start_ns"][0]), int(s["t_end_ns"][-1]), 3000)
    for wins in (adjacent, nested):
        want = _reference.integrate(s, wins)
        got = _core.integrate(s, wins)
        assert_same(got, want, energy_scale_j(s))
        perm = rng.permutation(len(wins))
        got_p = _core.integrate(s, np.ascontiguousarray(wins[perm]))
        for a, b in zip(got_p, got):   # bit for bit: the order never changes a number
            np.testing.assert_array_equal(a, b[perm])
        rev = np.ascontiguousarray(wins[::-1])
        for a, b in zip(_core.integrate(s, rev), got):
            np.testing.assert_array_equal(a, b[::-1])


def _equal_start_sets(rng, lo, hi):
    """Window sets where many windows share a start (each in (start, end) order has its
    ends in order, so the kernel streams it in order once sorted)."""
    cuts = np.sort(rng.integers(lo, hi + 1, 1201))
    pairs = np.concatenate([np.stack([cuts[:-1:2], cuts[1::2]], axis=1),       # [c0, c1), [c0, c2), ...
                            np.stack([cuts[:-2:2], cuts[2::2]], axis=1)])
    one_start = np.stack([np.full(1500, lo + 7), np.sort(rng.integers(lo + 7, hi + 1, 1500))], axis=1)
    dup = np.repeat(np.stack([cuts[:-1], cuts[1:]], axis=1)[::3], 3, axis=0)     # each window three times
    span = (hi - lo) // 100                                                    # most in 1 % of the span
    tight = np.sort(rng.integers(lo + span, lo + 2 * span, 2001))
    clustered = np.concatenate([np.stack([tight[:-1], tight[1:]], axis=1), np.stack([tight[:-2], tight[2:]], axis=1),
                                [[lo, lo + 3], [hi - 5, hi]]])
    outside = np.concatenate([pairs, [[lo - 10, lo + 5], [hi - 5, hi + 10]]])
    return {"pairs": pairs, "one_start": one_start, "dup": dup, "clustered": clustered, "outside": outside}


@pytest.mark.parametrize("kind", [INSTANT, INTERVAL])
def test_windows_with_equal_starts_in_any_order_match_twin(kind):
    # Windows that share starts, shuffled, sorted by start with the longer ones first (the
    # ends out of order only among equal starts), and reversed: every order gives the
    # twin's numbers, and the same numbers bit for bit.
    rng = np.random.default_rng(31 + kind)
    s = _samples_with_gaps_and_nans(rng, kind, 2 * 10**17)
    for name, wins in _equal_start_sets(rng, int(s["t_start_ns"][0]), int(s["t_end_ns"][-1])).items():
        wins = np.ascontiguousarray(wins, dtype=np.int64)
        ordered = np.lexsort((wins[:, 1], wins[:, 0]))                  # by start, then end
        want = _reference.integrate(s, wins)
        got = _core.integrate(s, wins)
        assert_same(got, want, energy_scale_j(s))
        for order in (rng.permutation(len(wins)), np.lexsort((-wins[:, 1], wins[:, 0])), ordered, ordered[::-1]):
            got_o = _core.integrate(s, np.ascontiguousarray(wins[order]))
            for a, b in zip(got_o, got):
                np.testing.assert_array_equal(a, b[order], err_msg=name)


def test_windows_whose_times_and_indices_do_not_fit_one_key():
    # A span of ~2^62.5 ns and 5 windows: offset bits + index bits > 64, so the kernel
    # sorts copies of the windows instead of packed keys.
    big = 6 * 10**18
    s = make_samples(INTERVAL, [0, big // 2], [big // 2, big], [2.0, 4.0])
    wins = np.array([[big // 2, big], [0, big // 4], [10, 20], [big // 4, big // 2], [0, big]], dtype=np.int64)
    got = _core.integrate(s, wins)
    assert_same(got, brute_force(s, wins), energy_scale_j(s))
    e = got[0][:, 0]
    assert e.tolist() == pytest.approx([4.0 * big / 2 / NS, 2.0 * big / 4 / NS, 2.0 * 10 / NS,
                                        2.0 * big / 4 / NS, 3.0 * big / NS], rel=1e-12)
    nested = np.array([[0, big], [10, 20], [0, 30], [5, 15]], dtype=np.int64)  # ends sorted apart
    assert_same(_core.integrate(s, nested), brute_force(s, nested), energy_scale_j(s))


@pytest.mark.parametrize("kind", [INSTANT, INTERVAL])
def test_a_domain_measured_only_later_is_zero_and_flagged_before(kind):
    # gpu is NaN in the first 30 samples and measured after: windows that end before it
    # appears (answered before the kernel knows gpu is measured) get 0 J for gpu and
    # WIN_NAN, exactly as the definition says.
    n = 60
    t = np.arange(n) * 1000
    p = np.full((n, ND), np.nan)
    p[:, 0] = 5.0
    p[30:, 1] = 7.0
    s = make_samples(kind, t, t + (1000 if kind == INTERVAL else 0), p)
    wins = np.array([[0, 5000], [2000, 9000], [25000, 40000], [41000, 50000]], dtype=np.int64)
    for w in (wins, np.ascontiguousarray(wins[::-1])):
        got = _core.integrate(s, w)
        assert_same(got, brute_force(s, w), energy_scale_j(s))
    e, f, _ = _core.integrate(s, wins)
    assert e[0, 1] == 0.0 and f[0] & _core.WIN_NAN
    assert e[3, 1] > 0 and not f[3] & _core.WIN_NAN


def test_samples_are_checked_when_every_window_is_outside():
    bad = make_samples(INTERVAL, [0, 5], [10, 20], [1.0, 1.0])   # overlapping
    with pytest.raises(ValueError, match="overlap"):
        _core.integrate(bad, np.array([[100, 200]], dtype=np.int64))


def test_one_pass_reference_is_the_total_energy():
    s = make_samples(INTERVAL, [0, 10, 30], [10, 20, 40], [1.0, np.nan, 3.0])
    assert _core._integrate_one_pass(s)[0] == pytest.approx((1.0 * 10 + 3.0 * 10) / NS, rel=1e-15)
