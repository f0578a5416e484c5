"""Live callbacks, the monitor state and view, and the Jupyter plot's data logic.

Oracles are independent of the feed: the session's own arrays after the run (samples,
sections, layers), computed by the attribution code from the same hook events.
"""
from __future__ import annotations

import sys
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import energyprof as ep
from energyprof.measure.live import LiveFeed
from energyprof.views.live import LivePlot
from energyprof.views.terminal import SPARK_CHARS, MonitorState, render_monitor, sparkline
from energyprof.measure.sampler import Sampler
from energyprof.tiny import tiny_model
from energy_oracle import WAVEFORMS, check_run, samples_from_dicts
from fakeclock import wait_for_samples, wait_until


@pytest.fixture(scope="module")
def model():
    return tiny_model("tiny-llama")


def _record():
    rec = {"sample": [], "token": [], "section": [], "threads": set()}

    def cb(kind):
        def f(d):
            rec[kind].append(d)
            rec["threads"].add(threading.current_thread().name)
        return f

    return rec, cb


@pytest.fixture(scope="module")
def live_run(model):
    """One run with every callback, a user section, batch 2, and 4 new tokens."""
    rec, cb = _record()
    s = ep.run(model, source="synthetic:power_w=20,active_w=5,period_ms=2", baseline_s=0.05, save=False)
    s.live_interval_ms = 20
    s.on_sample(cb("sample"))          # registered before the run starts
    with s:
        s.on_token(cb("token"))        # and while it goes on
        s.on_section(cb("section"))
        with s.section("generate"):
            # Inside every forward, wait for three new samples: each phase then spans whole
            # sample periods however late a loaded machine wakes the sampler.
            core = s._sampler._core
            slow = model.model.layers[0].input_layernorm.register_forward_pre_hook(
                lambda m, a: wait_for_samples(core, core.stats()["samples"] + 3))
            try:
                model.generate(torch.tensor([[5, 6, 7], [8, 9, 10]]), max_new_tokens=4, do_sample=False)
            finally:
                slow.remove()
            # samples after the last forward, and live passes that saw them, inside the section
            wait_for_samples(core, core.stats()["samples"] + 2)
            for _ in range(3):
                assert s._live.sync()
    return s, rec


def test_every_sample_exactly_once_in_order(live_run):
    s, rec = live_run
    got = rec["sample"]
    assert len(got) == len(s.samples) > 10
    assert [d["index"] for d in got] == list(range(len(got)))
    np.testing.assert_array_equal([d["t_start_ns"] for d in got], s.samples["t_start_ns"])
    np.testing.assert_array_equal([d["t_end_ns"] for d in got], s.samples["t_end_ns"])
    np.testing.assert_array_equal([d["domains"]["cpu"] for d in got], s.samples["cpu_w"])
    assert all(set(d["domains"]) == {"cpu"} for d in got)
    np.testing.assert_array_equal([d["power_w"] for d in got], s.samples["cpu_w"])


def test_rows_equal_the_oracle_over_the_samples_the_feed_delivered(live_run):
    """Every row of the run recomputed by the brute-force oracle from the samples the
    live feed handed to on_sample (not from s.samples)."""
    s, rec = live_run
    n = check_run(s, samples_from_dicts(rec["sample"]))
    assert n["tokens"] == 3 and n["calls"] > 0


@pytest.mark.parametrize("shape", ["square", "ramp"])
def test_live_samples_and_tokens_against_the_oracle(model, shape):
    """Under a square wave and a ramp: the feed's samples rebuild the run's energy row by
    row, and each token event lies inside the row of its decode step."""
    rec, cb = _record()
    with ep.run(model, source=WAVEFORMS[shape], baseline_s=0, save=False) as s:
        s.live_interval_ms = 5
        s.on_sample(cb("sample"))
        s.on_token(cb("token"))
        model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=5, do_sample=False)
    check_run(s, samples_from_dicts(rec["sample"]))
    ends = [t["t_ns"] for t in rec["token"]]
    assert len(ends) == 5 and len(s.tokens) == 4
    for t_ns, row in zip(ends[1:], s.tokens):
        assert row["t_start_ns"] < t_ns <= row["t_end_ns"]


def test_callbacks_run_on_the_live_thread(live_run):
    _, rec = live_run
    assert rec["threads"] == {"energyprof-live"}


def test_tokens_match_the_forwards(live_run):
    s, rec = live_run
    toks = rec["token"]
    summ = s.summary()
    assert [t["step"] for t in toks] == [0, 1, 2, 3]
    assert [t["n_tokens"] for t in toks] == [2, 2, 2, 2]
    assert [t["tokens"] for t in toks] == [2, 4, 6, 8]
    assert toks[-1]["tokens"] == summ["output_tokens"]
    assert [t["phase"] for t in toks] == ["prefill", "decode", "decode", "decode"]
    phases = s.sections[s.sections["kind"] == "phase"]
    prefill = phases[phases["name"] == "prefill"][0]
    decode = phases[phases["name"] == "decode"][0]
    # token k ends when its forward ends; the last forward ends where the decode phase ends
    assert toks[-1]["t_ns"] == decode["t_end_ns"]
    expect_tok_s = 8 / ((decode["t_end_ns"] - prefill["t_start_ns"]) * 1e-9)
    assert toks[-1]["tok_s"] == pytest.approx(expect_tok_s, rel=1e-12)
    # decode step k's token row ends where forward k+1 starts: after token k's forward ended
    assert all(t["t_ns"] <= row["t_end_ns"] for t, row in zip(toks[1:], s.tokens))


def test_sections_follow_the_phases(live_run):
    s, rec = live_run
    secs = rec["section"]
    phase_ev = [(d["name"], d["event"]) for d in secs if d["kind"] == "phase"]
    assert phase_ev == [("pre_inference", "begin"), ("pre_inference", "end"), ("prefill", "begin"),
                        ("prefill", "end"), ("decode", "begin"), ("decode", "end"), ("post_inference", "begin")]
    rows = {r["name"]: r for r in s.sections[s.sections["kind"] == "phase"]}
    begins = {d["name"]: d["t_ns"] for d in secs if d["kind"] == "phase" and d["event"] == "begin"}
    for name in ("pre_inference", "prefill", "decode", "post_inference"):
        assert begins[name] == rows[name]["t_start_ns"], name
    user = [d for d in secs if d["kind"] == "section"]
    row = s.sections[s.sections["name"] == "generate"][0]
    assert [(d["name"], d["event"], d["t_ns"]) for d in user] == [
        ("generate", "begin", row["t_start_ns"]), ("generate", "end", row["t_end_ns"])]
    ts = [d["t_ns"] for d in secs]
    assert ts == sorted(ts)


def test_samples_carry_phase_layer_and_tokens(live_run):
    s, rec = live_run
    phases = s.sections[s.sections["kind"].astype(str) == "phase"]
    base = s.sections[s.sections["kind"].astype(str) == "baseline"][0]
    layers = s.layers
    seen = set()
    for d in rec["sample"]:
        t = d["t_end_ns"]
        if t < phases["t_start_ns"].min():
            want = "baseline" if t >= base["t_start_ns"] else None
            if want:
                assert d["phase"] == want
            continue
        inside = phases[(phases["t_start_ns"] <= t) & (t < phases["t_end_ns"])]
        last_fwd_end = phases[phases["name"] == "decode"]["t_end_ns"][0]
        # A sample ending exactly at the last forward's end (a boundary read) counts in that
        # forward's phase, as documented: compare only those ending before it.
        if len(inside) == 1 and (t < last_fwd_end or inside["name"][0] == "post_inference" and d is rec["sample"][-1]):
            assert d["phase"] == inside["name"][0], (t, d["phase"], inside["name"][0])
            seen.add(d["phase"])
        in_layer = layers[(layers["t_start_ns"] <= t) & (t <= layers["t_end_ns"])]
        assert d["layer"] == (int(in_layer["layer"][0]) if len(in_layer) else -1)
        assert 0 <= d["tokens"] <= 8
    assert "decode" in seen     # a loaded machine may starve the sampler through the short prefill
    assert any(d["layer"] >= 0 for d in rec["sample"])
    assert [d["tokens"] for d in rec["sample"]] == sorted(d["tokens"] for d in rec["sample"])


def test_a_failing_callback_warns_once_and_the_others_go_on(model):
    got = []

    def bad(d):
        raise ValueError("boom")

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        with ep.run(model, source="synthetic:power_w=3,period_ms=2", baseline_s=0, save=False) as s:
            s.live_interval_ms = 10
            s.on_sample(bad)
            s.on_sample(got.append)
            model.generate(torch.tensor([[1, 2]]), max_new_tokens=2, do_sample=False)
    msgs = [str(x.message) for x in w if "live sample callback" in str(x.message)]
    assert len(msgs) == 1 and "boom" in msgs[0]
    assert len(got) == len(s.samples)
    assert s._live.errors == len(s.samples)


def test_on_sample_rejects_non_callables(model):
    s = ep.run(model, source="synthetic:power_w=3", baseline_s=0, save=False)
    with pytest.raises(TypeError, match="callable"):
        s.on_sample(42)


def test_feed_on_a_bare_sampler_delivers_everything_once():
    got = []
    smp = Sampler("synthetic:power_w=9,period_ms=1")
    feed = LiveFeed(sampler=smp, callbacks={"sample": [got.append]}, interval_ms=5)
    smp.start()
    feed.start()
    wait_for_samples(smp._core, 25)
    assert feed.sync()
    smp.stop()
    feed.stop()
    assert len(got) == len(smp.samples) > 20
    np.testing.assert_array_equal([d["t_end_ns"] for d in got], smp.samples["t_end_ns"])
    assert {d["phase"] for d in got} == {"monitor"}
    assert feed.delivered["sample"] == len(got)


# --------------------------------------------------------------------------- sparkline / monitor state


def test_sparkline_levels():
    assert sparkline([0, 2, 14], top=14) == "▁▂█"
    assert sparkline([0, 2, 14, 20], top=14) == "▁▂██"     # clipped at the top
    assert sparkline([3.0, 6.0]) == "▅█"                   # own max; 3.5 levels rounds to even: level 4
    assert sparkline([1, 2, 3, 4], width=2) == sparkline([3, 4], top=4)
    assert sparkline([float("nan"), 5.0]) == " " + SPARK_CHARS[-1]
    assert sparkline([]) == ""
    assert sparkline([0.0, 0.0]) == SPARK_CHARS[0] * 2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1e4, allow_nan=False), min_size=1, max_size=60),
       st.integers(min_value=1, max_value=50))
def test_sparkline_is_monotone_and_sized(vals, width):
    s = sparkline(vals, width)
    tail = vals[-width:]
    assert len(s) == len(tail)
    top = max(tail)
    lvl = [SPARK_CHARS.index(c) for c in s]
    for (a, la), (b, lb) in zip(zip(tail, lvl), zip(tail[1:], lvl[1:])):
        if a <= b:
            assert la <= lb
    for v, c in zip(tail, s):
        if top > 0:
            # within half a level of the exact position
            assert abs(SPARK_CHARS.index(c) - 7 * v / top) <= 0.5 + 1e-9


def test_monitor_state_energy_and_view():
    st_ = MonitorState(history=50, title="t", source="synthetic:power_w=4", label="simulated")
    t = 1_000_000_000
    powers = [4.0, 6.0, 5.0, 8.0]
    for i, p in enumerate(powers):
        st_.on_sample({"t_start_ns": t + i * 10_000_000, "t_end_ns": t + (i + 1) * 10_000_000, "power_w": p,
                       "domains": {"cpu": p - 1.0, "gpu": 1.0}})
    snap = st_.snapshot()
    assert snap["energy_j"] == pytest.approx(sum(p * 0.01 for p in powers))
    assert snap["n_samples"] == 4 and snap["elapsed_s"] == pytest.approx(0.04)
    assert snap["power"]["cpu"] == [3.0, 5.0, 4.0, 7.0]
    from rich.console import Console

    con = Console(record=True, width=120, color_system=None)
    con.print(render_monitor(st_))
    text = con.export_text()
    cpu = next(l for l in text.splitlines() if " cpu " in l)
    assert "7.00 W" in cpu and "4.75 W" in cpu          # now / mean (3+5+4+7)/4 / max
    total = next(l for l in text.splitlines() if " total " in l)
    assert "8.00 W" in total and "5.75 W" in total
    assert "gpu" in text and sparkline([3.0, 5.0, 4.0, 7.0], 32) in cpu


# --------------------------------------------------------------------------- Jupyter plot data


def test_live_plot_updates_a_figure_from_a_run(model):
    import plotly.graph_objects as go

    fig = go.Figure()
    plot = LivePlot(fig, n_layers=2)
    # 0.2 ms samples: hundreds of sample ends, many of them inside a decoder layer
    with ep.run(model, source="synthetic:power_w=10,period_ms=0.2", baseline_s=0, save=False) as s:
        s.live_interval_ms = 10
        s.on_sample(plot.on_sample)
        s.on_token(plot.on_token)
        s.on_section(plot.on_section)
        model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False)
    plot.flush()
    assert list(fig.data[0].y) == list(s.samples["cpu_w"])
    assert len(fig.data[0].x) == len(s.samples)
    assert list(fig.data[2].x) == sorted(fig.data[2].x) and len(fig.data[2].x) == 3
    names = [sh.name for sh in fig.layout.shapes]
    assert names == ["pre_inference", "prefill", "decode", "post_inference"]
    for sh in fig.layout.shapes[:-1]:
        assert sh.x1 is not None and sh.x1 >= sh.x0
    # heatmap: energy of the samples that ended inside a layer, per (tokens so far, layer)
    z, steps, layers = plot.heatmap()
    assert layers == [0, 1]
    layer_rows = s.layers
    want = 0.0
    for r in s.samples:
        t = r["t_end_ns"]
        if np.any((layer_rows["t_start_ns"] <= t) & (t <= layer_rows["t_end_ns"])):
            want += r["cpu_w"] * (r["t_end_ns"] - r["t_start_ns"]) * 1e-9
    assert np.nansum(z) == pytest.approx(want, rel=1e-9)
    assert np.nansum(z) > 0
    assert np.asarray(fig.data[1].z, dtype=float).shape == z.shape


def test_live_names_the_missing_widget_package(monkeypatch, model):
    monkeypatch.setitem(sys.modules, "anywidget", None)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    s = ep.run(model, source="synthetic:power_w=3", baseline_s=0, save=False)
    with pytest.raises(ImportError, match="anywidget"):
        ep.live(s)


def test_docs_live_examples_run():
    """The ```python blocks of docs/live.md run as written, in order, in one namespace."""
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "live.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 3
    ns: dict = {}
    for b in blocks:
        exec(compile(b, "docs/live.md", "exec"), ns)
    assert ns["sparkline"]([10.0, 14.0, 20.0, 17.0]) == "▅▆█▇"
    assert ns["tokens"] and [t[0] for t in ns["tokens"]] == [1, 2, 3, 4]


def test_profile_live_shows_phase_layer_and_tokens(tmp_path):
    import subprocess

    r = subprocess.run([sys.executable, "-m", "energyprof", "profile", "--model", "tiny-llama", "--max-new-tokens",
                        "3", "--source", "synthetic:power_w=5,period_ms=5", "--baseline-s", "0", "--no-save",
                        "--live"], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "COLUMNS": "120"})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "energyprof profile --live" in out and "tokens 3" in out and "phase" in out
    assert "5.00 W" in out


def test_module_doctest_runs():
    import doctest
    import importlib

    live_mod = importlib.import_module("energyprof.measure.live")   # the feed's doctest
    assert doctest.testmod(live_mod).failed == 0


def test_live_wires_a_figure_and_refreshes_it_until_the_run_ends(monkeypatch, model):
    """ep.live with the widget replaced by a plain figure: callbacks registered, the
    refresher thread flushes while the run goes on and once more after it ends."""
    import importlib

    import plotly.graph_objects as go

    live_mod = importlib.import_module("energyprof.views.live")   # ep.live is the function
    monkeypatch.setattr(live_mod, "_require_widgets", lambda: None)
    monkeypatch.setattr(go, "FigureWidget", go.Figure)
    s = ep.run(model, source="synthetic:power_w=6,period_ms=1", baseline_s=0, save=False)
    s.live_interval_ms = 10
    fig = live_mod.live(s, refresh_ms=20)
    assert [len(s._live_callbacks[k]) for k in ("sample", "token", "section")] == [1, 1, 1]
    with s:
        model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False)
        wait_until(lambda: len(fig.data[0].y) > 0, "the refresher to draw while the run goes on")
    wait_until(lambda: len(fig.data[0].y) == len(s.samples), "the refresher's pass after the run")
    assert list(fig.data[0].y) == list(s.samples["cpu_w"])
    assert [sh.name for sh in fig.layout.shapes][-1] == "post_inference"
