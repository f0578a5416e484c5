"""Boundary reads: the source read at each top-level forward's start and end from the C hook.

Oracles: the synthetic source's closed-form power (a square wave here, recomputed by a
hand formula from the window ends), the call-timestamp truth of
``energyprof.testing.synthetic_truth_j``, and the forward timestamps the hooks recorded.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import energyprof as ep  # noqa: E402
from energyprof import _core  # noqa: E402
from energyprof.measure.boundary import counter_update_period_s, judge_resolved  # noqa: E402
from energyprof.testing import truth_table  # noqa: E402
from energyprof.tiny import tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def model():
    m = tiny_model("tiny-llama", n_layers=2)
    m(torch.tensor([[1, 2, 3]]))   # warm-up outside any run
    return m


def _gen(m, n=8):
    return m.generate(torch.tensor([[1, 2, 3, 4]]), max_new_tokens=n, min_new_tokens=n, do_sample=False)


def _square_truth_j(a, b, t0, low_w, high_w, period_ns):
    """Energy of low/high power (high in the first half of each period from t0) over [a, b)."""
    def e(t):
        u = max(int(t) - t0, 0)
        k, r = divmod(u, period_ns)
        return low_w * u + (high_w - low_w) * (k * (period_ns // 2) + min(r, period_ns // 2))
    return (e(b) - e(a)) / 1e9


def test_boundary_samples_end_on_the_forward_edges(model):
    with ep.run(model, source="synthetic:power_w=5,attn_w=10,mlp_w=30,period_ms=100", baseline_s=0,
                save=False) as s:
        _gen(model)
    br = s.summary()["boundary_reads"]
    assert br["enabled"] and br["counter_update_period_s"] == 0.0
    x = s.samples
    assert (x["t_start_ns"][1:] == x["t_end_ns"][:-1]).all()          # still one tiling of time
    flagged = x[(x["flags"] & _core.SFLAG_BOUNDARY) != 0]
    assert len(flagged) == br["reads"]
    # Each forward's start and end: the prefill's start, every token's start, the decode end.
    edges = set(s.tokens["t_start_ns"].tolist()) | {int(s.tokens["t_end_ns"][-1])}
    pre = s.sections[s.sections["name"] == "prefill"][0]
    edges |= {int(pre["t_start_ns"])}
    ends = set(flagged["t_end_ns"].tolist())
    assert edges <= ends
    assert br["reads"] >= 2 * (len(s.tokens) + 1) - 1
    # The resolution names the poll period, not the median of the boundary pieces, and says why.
    res = s.summary()["resolution"]
    assert res["sample_period_s"] == pytest.approx(0.1)
    assert "(100 ms samples)" in res["note"] and "every forward's start and end" in res["note"]
    assert res["tokens"] == 1.0


def test_phases_and_tokens_are_exact_with_boundary_reads_and_not_without(model):
    spec = "synthetic:power_w=5,attn_w=10,mlp_w=30,period_ms=100"
    errs = {}
    for on in (True, False):
        with ep.run(model, source=spec, baseline_s=0, save=False, boundary_reads=on) as s:
            _gen(model, 12)
        truth = truth_table(s)
        errs[on] = np.abs(s.tokens["energy_j"] / truth["tokens"] - 1)
        if on:
            np.testing.assert_allclose(s.tokens["energy_j"], truth["tokens"], rtol=1e-9)
            assert s.tokens["resolved"].all()
            sec = s.sections
            for name in ("prefill", "decode"):
                i = int(np.flatnonzero(sec["name"] == name)[0])
                assert sec["energy_j"][i] == pytest.approx(truth["sections"][i], rel=1e-9)
        else:
            assert not s.tokens["resolved"].any()
    assert errs[False].max() > 0.01 > 1e-6 > errs[True].max()


def test_square_wave_prefill_is_exact_where_the_time_split_errs(model):
    # 10 W / 40 W square wave of 80 ms, 100 ms samples (the must-show's RAPL case on the
    # source whose truth is closed-form).
    spec = "synthetic:power_w=10,square_w=30,square_period_ms=80"
    out = {}
    for on in (True, False):
        with ep.run(model, source=spec, interval_ms=100, baseline_s=0, save=False, boundary_reads=on) as s:
            _gen(model, 4)
        t0 = int(s.samples["t_start_ns"][0])       # the source's time origin: its first sample's start
        pre = s.sections[s.sections["name"] == "prefill"][0]
        truth = _square_truth_j(pre["t_start_ns"], pre["t_end_ns"], t0, 10.0, 40.0, 80_000_000)
        out[on] = (float(pre["energy_j"]), truth, s)
    got, truth, _ = out[True]
    assert got == pytest.approx(truth, rel=1e-9)
    got, truth, s = out[False]
    # Without boundary reads the short prefill takes its sample's mean power (hand formula).
    x = s.samples
    pre = s.sections[s.sections["name"] == "prefill"][0]
    k = int(np.searchsorted(x["t_end_ns"], pre["t_start_ns"], side="right"))
    if pre["t_end_ns"] <= x["t_end_ns"][k]:
        assert got == pytest.approx(x["cpu_w"][k] * pre["duration_s"], rel=1e-9)


def test_estimate_supports_boundary_reads_and_plist_does_not():
    assert ep.Sampler("estimate")._core.supports_boundary
    assert ep.Sampler("synthetic")._core.supports_boundary
    core = _core.Sampler("synthetic", {}, None, 16)
    with pytest.raises(RuntimeError):
        core.boundary_read(_core.now_ns())      # not started


def test_boundary_read_off_by_request(model):
    with ep.run(model, source="synthetic:power_w=5", baseline_s=0, save=False, boundary_reads=False) as s:
        _gen(model, 2)
    assert s.summary()["boundary_reads"] == {"enabled": False, "reads": 0, "counter_update_period_s": None,
                                             "edge_bound": None}


def _samples(dt_ms, watts):
    x = np.zeros(len(dt_ms), dtype=np.dtype(_core.SAMPLE_DTYPE))
    t = np.concatenate([[0], np.cumsum(np.asarray(dt_ms) * 1_000_000)]).astype(np.int64)
    x["t_start_ns"], x["t_end_ns"], x["kind"] = t[:-1], t[1:], 1
    for d in ("cpu_w", "gpu_w", "ane_w", "dram_w"):
        x[d] = np.nan
    x["package_w"] = watts
    return x


def test_update_period_with_several_domains_against_a_loop():
    """counter_update_period_s with several measured domains, a NaN reading inside one (a move,
    not a standstill) and a domain NaN throughout (not measured), against a plain loop over the
    readings written apart."""
    rng = np.random.default_rng(11)
    for trial in range(200):
        n = int(rng.integers(1, 30))
        x = _samples(rng.integers(1, 20, n), rng.choice([0.0, 0.0, 3.0], n))
        x["cpu_w"] = rng.choice([0.0, 0.0, 0.0, 2.0, np.nan], n) if trial % 3 else np.nan
        if trial % 4 == 0:
            x["package_w"] = np.nan
        cols = [c for c in ("cpu_w", "gpu_w", "ane_w", "dram_w", "package_w") if not np.isnan(x[c]).all()]
        best = run = 0.0
        for i in range(n):
            if cols and all(x[c][i] == 0.0 for c in cols):   # NaN == 0.0 is False: a NaN reading moved
                run += (x["t_end_ns"][i] - x["t_start_ns"][i]) * 1e-9
                best = max(best, run)
            else:
                run = 0.0
        assert counter_update_period_s(x) == pytest.approx(best, abs=1e-12)


def test_update_period_and_the_resolved_judgement_hand_worked():
    # Readings 3 ms and 7 ms apart saw no change: the counter updates less often than every 7 ms.
    x = _samples([10, 3, 20, 7, 30], [5.0, 0.0, 6.0, 0.0, 5.0])
    assert counter_update_period_s(x) == pytest.approx(0.007)
    assert counter_update_period_s(_samples([10, 10], [5.0, 4.0])) == 0.0
    # Consecutive stale readings add up: unchanged over 3 + 4 ms.
    assert counter_update_period_s(_samples([10, 3, 4, 5], [5.0, 0.0, 0.0, 6.0])) == pytest.approx(0.007)
    assert counter_update_period_s(_samples([3, 4, 5], [0.0, 0.0, 6.0])) == pytest.approx(0.007)
    rows = np.zeros(3, dtype=[("t_start_ns", "<i8"), ("t_end_ns", "<i8"), ("resolved", "?"), ("flags", "<i4")])
    rows["t_end_ns"] = [5_000_000, 7_000_000, 9_000_000]
    rows["resolved"] = [True, True, False]
    assert judge_resolved(rows, 0.007) == 1
    assert rows["resolved"].tolist() == [False, True, False]
    assert rows["flags"].tolist() == [8, 0, 0]


def test_a_frozen_rapl_counter_resolves_no_token(model, tmp_path):
    # A counter that never advances during the run: every reading repeats the last, so the
    # update period is at least the longest stretch it stood still, and no token counts as resolved,
    # however many boundary reads fall inside it.
    z = tmp_path / "intel-rapl:0"
    z.mkdir()
    (z / "name").write_text("package-0\n")
    (z / "max_energy_range_uj").write_text("262143328850\n")
    (z / "energy_uj").write_text("1000\n")
    with ep.run(model, source=f"rapl:root={tmp_path}", interval_ms=20, baseline_s=0, save=False) as s:
        _gen(model, 6)
    br = s.summary()["boundary_reads"]
    # every boundary read found the counter where it was: a stale read gives no sample (no 0 W
    # slivers), so the run is one sample, the final one, and no read counts
    assert br["enabled"] and br["reads"] == 0 and len(s.samples) == 1
    span = (s.samples["t_end_ns"][-1] - s.samples["t_start_ns"][0]) / 1e9
    assert br["counter_update_period_s"] == pytest.approx(span)
    assert not s.tokens["resolved"].any()
    assert (s.tokens["flags"] & 8).all()
    assert s.summary()["resolution"]["tokens"] == 0.0


def test_module_doctest_runs():
    import doctest

    import energyprof.measure.boundary as mod

    assert doctest.testmod(mod).failed == 0


def test_median_matches_numpy():
    """integrate.median (sample periods, the tokens' median edge-bound share) against np.median."""
    from energyprof.measure.integrate import median as _median

    rng = np.random.default_rng(5)
    for n in (1, 2, 3, 4, 17, 64):
        x = rng.normal(size=n)
        assert _median(x) == float(np.median(x))
    assert _median(np.array([1.0, 3.0])) == 2.0 and _median(np.array([5.0, 1.0, 3.0])) == 3.0
