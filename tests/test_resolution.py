"""Every number says how well it was measured: resolution, flags, gaps, uncertainty, guards.

Oracles: hand-worked cases (a gap between two samples bridged to a known power, a NaN
value, instant samples), the synthetic source's exact power (constant power over a hole:
the true run energy is P x duration), the synthetic source's twin for the hole
(energyprof._reference.synthetic_sample_bounds, with a stepped fake clock), brute-force
recounts from the samples (how many samples the decode spans), and coverage of the
truth by the confidence interval over many seeded noisy runs.
"""
from __future__ import annotations

import json
import math
import re
import time
import warnings

import numpy as np
import pytest
import torch

import energyprof as ep
from energyprof import _core
from energyprof import _reference as ref
from energyprof._dtypes import (EVENT_DTYPE, FLAG_BRIDGED, FLAG_GAP, FLAG_NAN, FLAG_OUTSIDE, FLAG_UNRESOLVED,
                                flag_names)
from energyprof.analysis.stats import _tcrit
from energyprof.measure.attribution import Forward, attribute
from energyprof.measure.integrate import WIN_BRIDGED, bridge, integrate, integrate_bridged
from energyprof.store.quality import block_ratio, resolution_of
from energyprof.store.rundata import RunData
from energyprof.testing import synthetic_run
from energyprof.tiny import tiny_model

S = 1_000_000_000
MS = 1_000_000
NO_EVENTS = np.zeros(0, EVENT_DTYPE)


@pytest.fixture(scope="module")
def llama():
    return tiny_model("tiny-llama")


def gen(model, n=6):
    with torch.no_grad():
        return model.generate(torch.tensor([[3, 4, 5, 6]]), max_new_tokens=n, min_new_tokens=n, do_sample=False)


def interval(starts_ns, ends_ns, cpu_w):
    s = np.zeros(len(starts_ns), _core.SAMPLE_DTYPE)
    s["kind"] = _core.KIND_INTERVAL
    s["t_start_ns"], s["t_end_ns"] = starts_ns, ends_ns
    for d in _core.DOMAINS:
        s[f"{d}_w"] = np.nan
    s["cpu_w"] = cpu_w
    return s


def instant(times_ns, cpu_w):
    s = interval(times_ns, times_ns, cpu_w)
    s["kind"] = _core.KIND_INSTANT
    return s


# ------------------------------------------------------------------ flag bits
def test_flag_bits_are_the_kernels_and_pythons_own():
    assert (FLAG_OUTSIDE, FLAG_GAP, FLAG_NAN, FLAG_UNRESOLVED) == (
        _core.WIN_OUTSIDE, _core.WIN_GAP, _core.WIN_NAN, _core.WIN_UNRESOLVED)
    assert FLAG_BRIDGED == WIN_BRIDGED == 1 << 8
    assert flag_names(FLAG_UNRESOLVED | FLAG_BRIDGED | FLAG_GAP) == ["gap", "unresolved", "bridged"]


# ------------------------------------------------------------------ must show: resolution on rows and summary
def test_resolution_of_a_100ms_run_is_the_mean_of_the_rows(llama):
    # the periodic poll alone (tests/test_boundary.py covers the resolution with boundary reads)
    with ep.run(llama, source="synthetic:power_w=20,period_ms=100", baseline_s=0, save=False,
                boundary_reads=False) as s:
        gen(llama, 6)
    res = s.summary()["resolution"]
    assert res["tokens"] == float(np.mean(s.tokens["resolved"]))
    assert "flags" in s.tokens.dtype.names and "flags" in s.sections.dtype.names
    assert "flags" in s.layers.dtype.names and "flags" in s.components.dtype.names
    # each step says in its flags whether it spans a whole sample (steps of milliseconds rarely do)
    assert res["n_tokens"] == len(s.tokens) == 5
    assert np.array_equal((s.tokens["flags"] & FLAG_UNRESOLVED) != 0, ~s.tokens["resolved"])
    # the period is the median sample, the short final one left out (a loaded machine makes ticks late);
    # the nominal 100 ms when the run held no whole sample
    smp = s.samples
    whole = (smp["flags"] & _core.SFLAG_FINAL) == 0
    want = float(np.median((smp["t_end_ns"] - smp["t_start_ns"])[whole])) * 1e-9 if whole.any() else 0.1
    assert res["sample_period_s"] == pytest.approx(want)
    phases = s.sections[s.sections["kind"] == "phase"]
    assert res["phases"] == float(np.mean(phases["resolved"]))
    calls = np.concatenate([s.layers, s.components])
    assert res["calls"] == float(np.mean(calls["resolved"])) and res["n_calls"] == len(calls)
    assert f"{want * 1e3:.3g} ms" in res["note"] and "split by time" in res["note"]
    assert s.summary()["method"] == "time-split within sample"


# ------------------------------------------------------------------ must show: n counts independent samples
def test_decode_j_per_token_n_is_at_most_the_samples_the_decode_spans(llama):
    with ep.run(llama, source="synthetic:power_w=20,period_ms=50,noise_w=2", baseline_s=0, save=False,
                boundary_reads=False) as s:   # steps sharing samples: the periodic poll alone
        gen(llama, 24)
    f = ep.efficiency(s)["decode_j_per_output_token"]
    dec = s.sections[(s.sections["kind"] == "phase") & (s.sections["name"] == "decode")][0]
    smp = s.samples
    # brute force: samples whose interval overlaps the decode window
    spanned = sum(1 for a, b in zip(smp["t_start_ns"].tolist(), smp["t_end_ns"].tolist())
                  if a < int(dec["t_end_ns"]) and b > int(dec["t_start_ns"]))
    assert f["n"] <= spanned + 1
    # steps of milliseconds under 50 ms samples share them: n is below the step count, which the
    # old per-step statistics reported (the decode would have to last over a second for this to fail)
    assert spanned + 1 < len(s.tokens) and f["n"] >= 1
    assert f["value"] == pytest.approx(s.summary()["phases"]["decode"]["j_per_token"], rel=1e-12)


def _noisy_decode(seed, period_ms=100, n_tok=64, tok_ms=11, power_w=20.0, noise_w=3.0):
    """A decode of n_tok equal steps over noisy interval samples, through attribute()."""
    rng = np.random.default_rng(seed)
    t0 = 10**12
    start = t0 + int(rng.integers(0, period_ms * MS))  # the steps' phase against the samples varies
    fwd = [Forward(start, start + 5 * MS, 1, 8, 8, True)]
    for k in range(n_tok):
        a = start + 5 * MS + k * tok_ms * MS
        fwd.append(Forward(a, a + 10 * MS, 1, 1, 0, False))
    end = fwd[-1].t_end_ns + 2 * MS
    n = (end - t0) // (period_ms * MS) + 2
    t = t0 + np.arange(n, dtype=np.int64) * period_ms * MS
    smp = interval(t, t + period_ms * MS, power_w + noise_w * ref.synthetic_noise(seed, int(n)))
    att = attribute(smp, start, end, fwd, NO_EVENTS, [])
    tok = att.tokens
    truth = power_w * (int(tok["t_end_ns"][-1]) - int(tok["t_start_ns"][0])) * 1e-9 / n_tok  # noiseless J/token
    return RunData(att.summary, samples=smp, sections=att.sections, tokens=tok), truth


def test_decode_interval_covers_the_truth_at_its_nominal_rate():
    """64 steps of 11 ms under 100 ms samples share about 8 readings: the 95 % interval over
    those covers the noiseless truth ~95 % of the time; treating the 64 steps as
    independent (the old way) covers it far less often."""
    hits, naive_hits, ns = 0, 0, set()
    seeds = range(400)
    for seed in seeds:
        run, truth = _noisy_decode(seed)
        f = ep.efficiency(run)["decode_j_per_output_token"]
        lo, hi = f["ci95"]
        hits += lo <= truth <= hi
        ns.add(f["n"])
        tok = run.tokens
        r, se, k = block_ratio(tok["energy_j"], tok["n_tokens"], np.arange(len(tok)))  # each step its own block
        t = _tcrit(k - 1)
        naive_hits += r - t * se <= truth <= r + t * se
    coverage = hits / len(seeds)
    assert 0.90 <= coverage <= 0.985, coverage
    assert naive_hits / len(seeds) < 0.7
    assert ns <= {7, 8, 9}  # the decode (~700 ms) spans 8 or 9 samples


# ------------------------------------------------------------------ gaps: hand-worked
def test_short_gap_is_bridged_by_interpolation_and_flagged():
    # 1 s samples at 10, 10 W, a 0.5 s gap, then 30 W: the bridge is the interpolation between the
    # neighbours' midpoints (1.5 s -> 10 W, 3.0 s -> 30 W) at the gap's midpoint 2.25 s: 20 W.
    smp = interval([0, S, 5 * S // 2], [S, 2 * S, 7 * S // 2], [10.0, 10.0, 30.0])
    b = bridge(smp)
    assert b.samples["cpu_w"].tolist() == [10.0, 10.0, 20.0, 30.0]
    assert b.holes.t_start_ns.tolist() == [2 * S] and b.holes.t_end_ns.tolist() == [5 * S // 2]
    assert b.holes.long.tolist() == [False] and b.holes.gap.tolist() == [True]
    ig = integrate_bridged(smp, [(0, 7 * S // 2), (0, S), (S + S // 2, 3 * S)])
    assert ig.energy_j[:, 0].tolist() == pytest.approx([10 + 10 + 0.5 * 20 + 30, 10, 5 + 10 + 15])
    assert ig.flags.tolist() == [WIN_BRIDGED, 0, WIN_BRIDGED | FLAG_UNRESOLVED]
    assert ig.samples_in_window.tolist() == [3, 1, 0]  # the bridge is not a measured sample
    # the C kernel alone would count the gap as 0 J
    assert integrate(smp, [(0, 7 * S // 2)]).energy_j[0, 0] == pytest.approx(50.0)


def test_nan_value_is_bridged_never_zero():
    smp = interval([0, S, 2 * S, 3 * S], [S, 2 * S, 3 * S, 4 * S], [10.0, np.nan, 30.0, 30.0])
    ig = integrate_bridged(smp, [(0, 4 * S), (2 * S, 4 * S)])
    assert ig.energy_j[:, 0].tolist() == pytest.approx([10 + 20 + 30 + 30, 60.0])
    assert ig.flags[0] == WIN_BRIDGED | FLAG_NAN and ig.flags[1] == 0


def test_instant_samples_have_a_maximum_gap():
    # points every 1 s, then 7 s without a reading (> 4 periods: long), then every 1 s; one NaN point
    t = np.array([0, 1, 2, 3, 10, 11, 12, 13], dtype=np.int64) * S
    w = np.array([10.0, 10.0, 10.0, 10.0, 10.0, np.nan, 10.0, 10.0])
    ig = integrate_bridged(instant(t, w), [(0, 13 * S), (4 * S, 9 * S), (0, 2 * S), (11 * S, 12 * S)])
    assert ig.energy_j[:, 0].tolist() == pytest.approx([130.0, 50.0, 20.0, 10.0])  # interpolated, never 0
    assert ig.long_gap.tolist() == [True, True, False, False]
    assert ig.flags[1] & FLAG_GAP and ig.flags[1] & WIN_BRIDGED
    assert ig.flags[2] == 0
    assert ig.flags[3] & FLAG_NAN and ig.flags[3] & WIN_BRIDGED and not ig.flags[3] & FLAG_GAP


def test_long_gap_makes_tokens_unknown_and_keeps_sections_interpolated():
    # 10 ms samples at 40 W with a 200 ms hole; steps of 20 ms run straight through it
    t = np.arange(0, 100, dtype=np.int64) * 10 * MS
    keep = (t < 300 * MS) | (t >= 500 * MS)
    smp = interval(t[keep], t[keep] + 10 * MS, 40.0)
    fwd = [Forward(5 * MS, 25 * MS, 1, 4, 4, True)] + [
        Forward(25 * MS + k * 20 * MS, 40 * MS + k * 20 * MS, 1, 1, 0, False) for k in range(40)]
    att = attribute(smp, 0, 990 * MS, fwd, NO_EVENTS, [])
    tok = att.tokens
    touching = (tok["t_start_ns"] < 500 * MS) & (tok["t_end_ns"] > 300 * MS)
    assert touching.sum() == 11
    assert np.isnan(tok["energy_j"][touching]).all() and (tok["flags"][touching] & FLAG_GAP).all()
    assert np.allclose(tok["energy_j"][~touching], 40.0 * tok["duration_s"][~touching])
    assert not (tok["flags"][~touching] & (FLAG_GAP | WIN_BRIDGED)).any()
    run = att.sections[0]
    assert run["energy_j"] == pytest.approx(40.0 * 0.99) and run["flags"] & FLAG_GAP and run["flags"] & WIN_BRIDGED
    sm = att.summary
    assert sm["gap_s"] == pytest.approx(0.2) and sm["resolution"]["gaps"]["n_long"] == 1
    assert "gap" in sm["flag_names"] and any("gap" in w for w in sm["warnings"])


# ------------------------------------------------------------------ must show: a hole in the synthetic source
def test_synthetic_hole_matches_its_twin_on_a_stepped_clock():
    from test_sampler import FakeClock, wait_for_samples

    polls = [2, 3, 5, 13, 14, 30, 31]  # ms after the start; the hole is [4, 12) ms
    with FakeClock() as clk:
        t0 = clk.t
        s = ep.Sampler("synthetic:power_w=7,ramp_w_per_s=100,period_ms=0.2,gap_at_ms=4,gap_ms=8")
        s.start()
        try:
            want = ref.synthetic_sample_bounds([t0 + p * MS for p in polls], t0, 4 * MS, 8 * MS)
            for p in polls:
                clk.set(t0 + p * MS)
                n = len(ref.synthetic_sample_bounds([t0 + q * MS for q in polls if q <= p], t0, 4 * MS, 8 * MS))
                wait_for_samples(s._core, n)
        finally:
            s.stop()
    x = s.samples[: len(want)]
    assert np.stack([x["t_start_ns"], x["t_end_ns"]], axis=1).tolist() == want.tolist()
    # hand-worked: cut at the hole's start, resumed at its end
    assert [(a - t0) // MS for a, _ in want.tolist()][:4] == [0, 2, 3, 12] and (want[2, 1] - t0) == 4 * MS
    np.testing.assert_allclose(x["cpu_w"], ref.synthetic_average_power_w(x["t_start_ns"], x["t_end_ns"], t0,
                                                                          power_w=7.0, ramp_w_per_s=100.0), rtol=1e-9)


def test_gap_run_energy_is_power_times_duration_and_rows_in_the_gap_are_flagged(llama):
    spec = "synthetic:power_w=50,period_ms=5,gap_at_ms=60,gap_ms=200"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ep.run(llama, source=spec, baseline_s=0, save=False) as s:
            deadline = time.monotonic() + 30.0  # a guard against a hang only
            while s._sampler.n_samples == 0:
                gen(llama, 3)
                assert time.monotonic() < deadline
            t_source = int(s._sampler.samples_since(0)[0]["t_start_ns"])  # the source's start: the hole's origin
            while _core.now_ns() < t_source + 300 * MS:  # generate right through the hole
                gen(llama, 3)
                assert time.monotonic() < deadline
    sm = s.summary()
    assert sm["energy_j"] == pytest.approx(50.0 * sm["duration_s"], rel=0.01)
    smp = s.samples
    t0 = int(smp["t_start_ns"][0])
    hole_a, hole_b = t0 + 60 * MS, t0 + 260 * MS
    assert not np.any((smp["t_start_ns"] < hole_b) & (smp["t_end_ns"] > hole_a))  # nothing sampled in the hole
    assert hole_a in smp["t_end_ns"] and hole_b in smp["t_start_ns"]
    # every row touching the hole is unknown and says so; rows before it are measured
    # (forwards run back to back through the hole, so layer calls fall in it however slow the machine)
    for rows in (s.tokens, s.layers, s.components):
        touch = (rows["t_start_ns"] < hole_b) & (rows["t_end_ns"] > hole_a)
        before = rows["t_end_ns"] <= hole_a
        assert (rows["flags"][touch] & FLAG_GAP).all() and np.isnan(rows["energy_j"][touch]).all()
        assert not (rows["flags"][before] & FLAG_GAP).any() and np.isfinite(rows["energy_j"][before]).all()
    assert ((s.layers["t_start_ns"] >= hole_a) & (s.layers["t_end_ns"] <= hole_b)).any()
    assert sm["gap_s"] == pytest.approx(0.2, abs=0.006) and sm["flags"] & FLAG_GAP
    assert any("gap" in str(w.message) for w in caught)


# ------------------------------------------------------------------ guards
def test_falling_power_gives_negative_net_energy_and_a_warning_naming_the_baseline(llama):
    gen(llama, 2)  # warm: the run must be short, while the power keeps falling
    spec = "synthetic:power_w=60,ramp_w_per_s=-100,period_ms=5"
    with pytest.warns(RuntimeWarning, match=r"net energy .* negative: the idle baseline"):
        with ep.run(llama, source=spec, baseline_s=0.2, save=False, mode="minimal") as s:
            gen(llama, 2)
    sm = s.summary()
    assert sm["net_energy_j"] < 0
    assert any("baseline" in w and "negative" in w for w in sm["warnings"])
    # settled one sample period before the baseline began
    base = s.sections[s.sections["name"] == "baseline"][0]
    assert sm["baseline_settle_s"] == pytest.approx(0.005)
    assert int(base["t_start_ns"]) - int(s.samples["t_start_ns"][0]) >= 5 * MS


def test_constant_power_with_a_baseline_warns_of_nothing(llama):
    # net energy is 0 J here up to rounding (-1e-16 J): that is not a negative net figure
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with ep.run(llama, source="synthetic:power_w=13.5,period_ms=2", baseline_s=0.05, save=False,
                    mode="minimal") as s:
            gen(llama, 2)
    assert s.summary()["warnings"] == [] and abs(s.summary()["net_energy_j"]) < 1e-9


def test_unresolved_baseline_warns(llama):
    with pytest.warns(RuntimeWarning, match="baseline window .* spans no whole power sample"):
        with ep.run(llama, source="synthetic:power_w=5,period_ms=200", baseline_s=0.05, save=False,
                    mode="minimal") as s:
            gen(llama, 2)
    assert s.summary()["resolution"]["baseline"] is False


def test_post_run_baseline_measures_drift(llama):
    spec = "synthetic:power_w=10,ramp_w_per_s=40,period_ms=5"
    with pytest.warns(RuntimeWarning, match="drifted"):
        with ep.run(llama, source=spec, baseline_s=0.1, post_baseline_s=0.1, save=False, mode="minimal") as s:
            gen(llama, 2)
    sm = s.summary()
    pre = s.sections[s.sections["name"] == "baseline"][0]
    post = s.sections[s.sections["name"] == "post_baseline"][0]
    # a linear ramp: each window's mean power is the power at its midpoint, so drift = slope x distance
    mid = lambda r: (int(r["t_start_ns"]) + int(r["t_end_ns"])) / 2  # noqa: E731
    # up to the time split inside the partial edge samples: <= slope x d^2 / 8 per edge over the window's length,
    # d the longest sample touching a window (5 ms, longer when the machine makes ticks late)
    smp = s.samples
    near = np.zeros(len(smp), bool)
    for r in (pre, post):
        near |= (smp["t_start_ns"] < r["t_end_ns"]) & (smp["t_end_ns"] > r["t_start_ns"])
    d_s = float((smp["t_end_ns"] - smp["t_start_ns"])[near].max()) * 1e-9
    tol = 4 * 40.0 * d_s ** 2 / 8 / min(float(pre["duration_s"]), float(post["duration_s"]))
    assert sm["baseline_drift_w"] == pytest.approx(40.0 * (mid(post) - mid(pre)) * 1e-9, abs=tol)
    assert sm["post_baseline_power_w"] == pytest.approx(sm["baseline_power_w"] + sm["baseline_drift_w"])
    assert post["t_start_ns"] >= s.sections[0]["t_end_ns"]


def test_compare_warns_when_source_labels_differ():
    sim, est = synthetic_run(seed=1), synthetic_run(seed=2, source_label="estimated")
    with pytest.warns(RuntimeWarning, match="simulated .* estimated"):
        res = ep.compare(sim, est)
    assert res["warnings"] and res["source_labels"] == ["simulated", "estimated"]
    with pytest.warns(RuntimeWarning, match="different kinds"):
        ep.compare_groups([synthetic_run(seed=s) for s in range(3)],
                          [synthetic_run(seed=s, source_label="estimated") for s in range(3, 6)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ep.compare(sim, synthetic_run(seed=3))["warnings"] == []


def test_component_shares_of_the_parent_never_add_past_100_percent():
    run = synthetic_run(n_layers=3, n_steps=6, seed=4)
    comp = run.component_summary()
    calls = np.concatenate([run.layers, run.components])
    by_id = {int(c["call_id"]): c for c in calls}
    # of the run, nested components add up past 100 % (a container and its children both count)
    assert comp["share"].sum() > 1.0
    # of the parent: brute force, per layer, the children of attn and of mlp plus the container's own share
    for layer in range(3):
        for parent in ("attn", "mlp", "layer"):
            kids = {str(c["component"]) for c in calls if c["parent_id"] >= 0 and c["layer"] == layer
                    and str(by_id[int(c["parent_id"])]["component"]) == parent}
            rows = comp[(comp["layer"] == layer) & np.isin(comp["component"], sorted(kids))]
            total = rows["share_of_parent"].sum()
            own = (run.layer_summary() if parent == "layer" else comp[(comp["layer"] == layer) &
                                                                     (comp["component"] == parent)])
            own_share = float(own[own["layer"] == layer]["self_share"][0])
            assert total <= 1.0 + 1e-12
            assert total + own_share == pytest.approx(1.0, abs=1e-9), (layer, parent)


# ------------------------------------------------------------------ systematic uncertainty
def test_each_source_states_a_systematic_uncertainty(llama):
    with ep.run(llama, source="estimate", baseline_s=0, save=False, mode="minimal") as s:
        gen(llama, 2)
    u = s.summary()["uncertainty"]
    e = s.summary()["energy_j"]
    assert u["kind"] == "factor" and u["value"] == 2.0 and not u["documented"]
    assert (u["energy_j_low"], u["energy_j_high"]) == pytest.approx((e / 2, 2 * e))
    assert u["text"].startswith("×2 (estimated")
    nvml = ep.sources.systematic_uncertainty("nvml")
    assert nvml["kind"] == "relative" and nvml["value"] == 0.05 and nvml["documented"]
    assert set(ep.sources.SYSTEMATIC) == set(ep.sources.LABELS)


# ------------------------------------------------------------------ shown where people look
def test_show_prints_resolution_and_json_carries_it(tmp_path, capsys):
    from energyprof.cli.main import main

    db = str(tmp_path / "r.db")
    run = synthetic_run(sample_period_ms=20, n_steps=12, source_label="estimated")
    old = RunData({k: v for k, v in run.summary().items() if k != "resolution"},
                  **{n: run.array(n) for n in ("samples", "sections", "tokens", "layers", "components")})
    with ep.Store(db) as st:
        rid, rid_old = st.save(run), st.save(old)
    assert main(["show", str(rid), "--json", "--db", db]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["resolution"]["tokens"] == pytest.approx(float(np.mean(run.tokens["resolved"])))
    assert main(["show", str(rid_old), "--json", "--db", db]) == 0  # recorded without it: computed from its rows
    assert json.loads(capsys.readouterr().out)["resolution"]["tokens"] == doc["resolution"]["tokens"]
    assert main(["show", str(rid), "--db", db]) == 0
    out = capsys.readouterr().out
    share = 100 * float(np.mean(run.tokens["resolved"]))
    assert f"tokens: {share:.0f} % resolved (20 ms samples; per-token energy is split by time" in out
    assert "calls:" in out and "×2" in out and "systematic" in out
    assert resolution_of(ep.load(rid_old, db=db))["n_tokens"] == 12


def test_profile_prints_resolution(capsys):
    from energyprof.cli.main import main

    assert main(["profile", "--model", "tiny-llama", "--max-new-tokens", "4", "--source",
                 "synthetic:power_w=15,period_ms=100", "--baseline-s", "0", "--no-save"]) == 0
    out = capsys.readouterr().out
    assert "resolution:" in out
    assert re.search(r"tokens: \d+ % resolved( \([\d.]+ ms samples; per-token energy is split by time)?", out)
    assert re.search(r"calls: \d+ % resolved", out)


def test_plots_fade_unresolved_tokens_and_hatch_unresolved_cells():
    from energyprof.views import plot as ep_plot

    run = synthetic_run(sample_period_ms=20, n_steps=12)
    tok = run.tokens
    n_bad = int((~tok["resolved"]).sum())
    assert n_bad > 0
    fig = ep_plot.plot(run, kind="tokens", backend="plotly")
    faded = [t for t in fig.data if t.name and t.name.startswith("faded: unresolved")]
    assert len(faded) == 1 and len(faded[0].x) == n_bad and f"{n_bad} of {len(tok)}" in faded[0].name
    ax = ep_plot.plot(run, kind="tokens").axes[0]
    assert any(ep_plot.UNRESOLVED_TEXT in t.get_text() for t in ax.get_legend().get_texts())
    # layer x step: one hatched mark per cell whose calls are mostly unresolved (brute force)
    lay = run.layers
    cells = {}
    for r in lay:
        cells.setdefault((int(r["layer"]), int(r["step"])), []).append(bool(r["resolved"]))
    want = sum(np.mean(v) < ep_plot.RESOLVED_MIN_SHARE for v in cells.values())
    fig = ep_plot.plot(run, kind="layer_steps", backend="plotly")
    marks = [t for t in fig.data if t.type == "scatter"]
    assert len(marks) == 1 and len(marks[0].x) == want > 0 and "unresolved" in marks[0].name
    mfig = ep_plot.plot(run, kind="layer_steps")
    hatched = [p for p in mfig.axes[0].patches if p.get_hatch()]
    assert len(hatched) == want
    assert any(ep_plot.UNRESOLVED_TEXT in t.get_text() for t in mfig.legends[0].get_texts())
    # a resolved run has no such marks
    fine = synthetic_run(sample_period_ms=0.05, n_steps=4)
    assert not [t for t in ep_plot.plot(fine, kind="tokens", backend="plotly").data
                if t.name and t.name.startswith("faded")]


def test_saved_flags_round_trip_through_the_store(llama, tmp_path):
    db = str(tmp_path / "g.db")
    with ep.run(llama, source="synthetic:power_w=20,period_ms=100", baseline_s=0, db=db) as s:
        gen(llama, 3)
    r = ep.load(s.run_id, db=db)
    for name in ("sections", "tokens", "layers", "components"):
        assert np.array_equal(r.array(name)["flags"], s.array(name)["flags"]), name
    assert r.summary()["resolution"] == s.summary()["resolution"]
    assert r.summary()["uncertainty"]["kind"] == "none"
    assert math.isfinite(r.summary()["gap_s"])
