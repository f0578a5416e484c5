"""Live events (issue 16, part 5): on_token carries the energy so far and the step's energy where
resolved, on_layer is rate-limited, on_complete gets the summary; the monitor shows them.

Oracle: the synthetic source at a constant power P, so any window's energy is P x its length;
the session's own stored rows for the same forwards.
"""
from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch

import energyprof as ep
from energyprof.tiny import tiny_model
from energyprof.views.terminal import MonitorState
from fakeclock import wait_for_samples

P_W = 20.0
MAX_PER_S = 50.0


@pytest.fixture(scope="module")
def events():
    model = tiny_model("tiny-llama")
    rec = {"token": [], "layer": [], "complete": [], "threads": set()}

    def keep(kind):
        def f(d):
            rec[kind].append(d)
            rec["threads"].add(threading.current_thread().name)
        return f

    s = ep.run(model, source=f"synthetic:power_w={P_W},period_ms=2", baseline_s=0, save=False)
    s.live_interval_ms = 20
    s.on_complete(keep("complete"))
    with s:
        s.on_token(keep("token"))
        s.on_layer(keep("layer"), max_per_s=MAX_PER_S)
        core = s._sampler._core
        # each forward waits for three new samples: every step spans whole sample periods
        slow = model.model.layers[0].input_layernorm.register_forward_pre_hook(
            lambda m, a: wait_for_samples(core, core.stats()["samples"] + 3))
        try:
            with torch.no_grad():
                model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, min_new_tokens=4, do_sample=False)
        finally:
            slow.remove()
    return s, rec


def test_on_token_energy_so_far_and_the_steps_own(events):
    s, rec = events
    toks = rec["token"]
    assert [t["step"] for t in toks] == [0, 1, 2, 3]
    run = s.sections[s.sections["kind"] == "run"][0]
    for t in toks:
        # constant power: the run's energy up to the forward's end is P x the time since the run began
        assert t["energy_j"] == pytest.approx(P_W * (t["t_ns"] - int(run["t_start_ns"])) / 1e9, rel=1e-6)
        if t["resolved"]:
            assert t["step_energy_j"] == pytest.approx(P_W * t["duration_s"], rel=1e-6)
        else:
            assert math.isnan(t["step_energy_j"])
    assert any(t["resolved"] for t in toks)
    e = [t["energy_j"] for t in toks]
    assert e == sorted(e) and e[-1] <= s.summary()["energy_j"] + 1e-9
    # a decode step's own energy is the stored token row's (the same window)
    stored = {int(r["step"]): r for r in s.tokens}
    for t in toks[1:]:
        if t["resolved"] and t["step"] in stored:
            assert t["duration_s"] == pytest.approx(float(stored[t["step"]]["duration_s"]), rel=0.5)


def test_on_layer_is_rate_limited_and_carries_energy(events):
    s, rec = events
    lay = rec["layer"]
    assert lay, "no layer events"
    run = s.sections[s.sections["kind"] == "run"][0]
    run_s = (int(run["t_end_ns"]) - int(run["t_start_ns"])) / 1e9
    assert len(lay) <= MAX_PER_S * run_s + 1
    assert len(lay) < len(s.layers)          # rate-limited: fewer than the calls
    n_layers = s.summary()["model"]["n_layers"]
    for d in lay:
        assert 0 <= d["layer"] < n_layers
        assert d["duration_s"] == pytest.approx((d["t_end_ns"] - d["t_start_ns"]) / 1e9)
        if d["resolved"]:
            assert d["energy_j"] == pytest.approx(P_W * d["duration_s"], rel=1e-6)
        else:
            assert math.isnan(d["energy_j"])
    ts = [d["t_end_ns"] for d in lay]          # the limit spaces the calls' ends
    gaps = np.diff(ts) / 1e9
    assert (gaps >= 1.0 / MAX_PER_S - 1e-9).all()    # at most MAX_PER_S per second of run time


def test_on_complete_gets_the_summary_once(events):
    s, rec = events
    assert len(rec["complete"]) == 1
    got = rec["complete"][0]
    assert got["run_id"] is None and got["status"] == "completed"
    sm = got["summary"]
    assert sm["energy_j"] == s.summary()["energy_j"] and sm["output_tokens"] == 4
    assert sm["source_label"] == "simulated" and "resolution" in sm
    with pytest.raises(TypeError, match="callable"):
        s.on_complete(42)
    with pytest.raises(ValueError, match="max_per_s"):
        s.on_layer(lambda d: None, max_per_s=0)


def test_monitor_shows_energy_so_far_the_steps_and_the_layer(events):
    from rich.console import Console

    from energyprof.views.terminal import render_monitor

    s, rec = events
    st = MonitorState()
    st.show_tokens = True
    for t in rec["token"]:
        st.on_token(t)
    st.on_layer(rec["layer"][-1])
    st.on_complete(rec["complete"][0])
    snap = st.snapshot()
    last = rec["token"][-1]
    assert snap["run_energy_j"] == last["energy_j"] and snap["layer"] == rec["layer"][-1]["layer"]
    con = Console(width=120, record=True)
    con.print(render_monitor(st))
    text = con.export_text()
    assert f"run energy so far {last['energy_j']:.4g} J" in text
    assert f"layer {rec['layer'][-1]['layer']}" in text
    assert f"{s.summary()['energy_j']:.4g} J" in text      # the completion line
