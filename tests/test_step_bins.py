"""Long runs' per-step figures are binned, said so, and right: the layer x step heatmap, the
per-token series and the report's token table against values worked out from the rows by
hand (not through the code that bins them), and the report's HTML does not grow with the
number of decode steps."""
from __future__ import annotations

import math

import numpy as np
import pytest

from energyprof.store.rundata import RunData
from energyprof.testing import synthetic_run
from energyprof.views import plot as P
from energyprof.views import report as R

pytest.importorskip("plotly")


def _layer_rows(n_layers: int, n_steps: int) -> np.ndarray:
    """Layer calls with energy_j = 1000 * layer + step, 1 ms each; every other step resolved."""
    run = synthetic_run(n_layers=1, n_steps=1)
    lay = np.zeros(n_layers * (n_steps + 1), dtype=run.layers.dtype)
    lay["layer"] = np.repeat(np.arange(n_layers), n_steps + 1)
    lay["step"] = np.tile(np.arange(n_steps + 1), n_layers)
    lay["energy_j"] = 1000.0 * lay["layer"] + lay["step"]
    lay["duration_s"] = 1e-3
    lay["resolved"] = lay["step"] % 2 == 0
    lay["component"] = "layer"
    lay["call_id"] = np.arange(len(lay))
    lay["parent_id"] = -1
    return lay


def test_layer_step_heatmap_bins_decode_steps_and_keeps_the_prefill(monkeypatch):
    lay = _layer_rows(2, 1000)                     # prefill + 1000 decode steps
    run = RunData({"energy_j": 1.0}, layers=lay)
    layers, labels, z, res, note = P._layer_step_cells(run, "energy_j", max_columns=11)
    assert layers == [0, 1]
    # the prefill's column, then 10 bins of 100 consecutive decode steps
    assert labels == ["0"] + [f"{100 * k + 1}-{100 * k + 100}" for k in range(10)]
    for layer in (0, 1):
        assert z[layer, 0] == 1000.0 * layer                          # the prefill, alone
        for k in range(10):                                           # mean per step of steps 100k+1 .. 100k+100
            assert z[layer, k + 1] == pytest.approx(1000.0 * layer + 100 * k + 50.5, rel=1e-12)
            assert res[layer, k + 1] == 0.5                           # every other step resolved
    assert "1,000 steps in 10 bins of ~100: mean per step" in note
    # power: the bin's summed energy over its summed time, not a mean of ratios
    _, _, zp, _, _ = P._layer_step_cells(run, "power_w", max_columns=11)
    assert zp[1, 3] == pytest.approx((1000.0 * 100 + sum(range(201, 301))) / 0.1, rel=1e-12)
    # under the limit: one column per step, as before
    _, labels, z_all, _, note = P._layer_step_cells(run, "energy_j", max_columns=2000)
    assert len(labels) == 1001 and note == "" and z_all[1, 7] == 1007.0
    fig = P.plot(run, kind="layer_steps", backend="plotly")
    assert len(fig.data[0].x) <= P.MAX_STEP_COLUMNS and "bins" in fig.layout.title.text


def test_energy_matrix_matches_a_loop_over_the_rows():
    """The whole-array cell sums give what adding call by call gives, for every metric."""
    run = synthetic_run(n_layers=3, n_steps=20, seed=4)
    calls = run.components[run.components["layer"] >= 0]
    layers = sorted({int(v) for v in calls["layer"]})
    names = sorted({str(v) for v in calls["component"]})
    for metric in ("energy_j", "duration_s", "power_w"):
        num = {(a, b): 0.0 for a in layers for b in names}
        den = dict.fromkeys(num, 0.0)
        for r in calls:
            key = (int(r["layer"]), str(r["component"]))
            v = float(r["duration_s"] if metric == "duration_s" else r["energy_j"])
            num[key] += v
            den[key] += float(r["duration_s"]) if metric == "power_w" else 1.0
        want = np.array([[(num[(a, b)] / den[(a, b)] if metric == "power_w" else num[(a, b)])
                          if den[(a, b)] > 0 else math.nan for b in names] for a in layers])
        got = P._energy_matrix(calls, layers, names, "component", str, metric)
        np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)


def test_token_series_are_binned_past_the_limit(monkeypatch):
    run = synthetic_run(n_layers=1, n_steps=60, seed=1)
    tok = run.tokens.copy()
    tok["j_per_token"] = tok["step"].astype(float)                    # J/token = step
    run = RunData(run.summary(), tokens=tok, layers=run.layers, components=run.components, samples=run.samples)
    steps, jpt, res, note = P._token_series(run)
    assert len(steps) == len(tok) and note == ""
    monkeypatch.setattr(P, "MAX_STEP_POINTS", 6)
    steps, jpt, res, note = P._token_series(run)
    s = np.sort(tok["step"])
    edges = (np.arange(len(s)) * 6) // len(s)                         # 6 bins of consecutive steps
    want = [s[edges == k].mean() for k in range(6)]
    assert steps.tolist() == [int(s[edges == k][0]) for k in range(6)]
    np.testing.assert_allclose(jpt, want)
    assert f"{len(s)} steps in 6 bins" in note
    for kind in ("tokens", "token_components", "context"):
        fig = P.plot(run, kind=kind, backend="plotly")
        assert all(len(t.x) <= 6 for t in fig.data if t.x is not None), kind
        assert "bins" in fig.layout.title.text, kind


def test_token_table_lists_the_first_and_last_steps(monkeypatch):
    run = synthetic_run(n_layers=1, n_steps=30)
    monkeypatch.setattr(R, "MAX_TABLE_STEPS", 10)
    html = R._token_table(run, {})
    n = len(run.tokens)
    assert f"{n} decode steps" in html and f"{n - 10:,} between them left out" in html
    assert html.count("<tr>") == 1 + 10                               # the header and 10 steps
    steps = sorted(int(v) for v in run.tokens["step"])
    for st in steps[:5] + steps[-5:]:
        assert f"<tr><td class=\"num\">{st}</td>" in html
    assert f"<tr><td class=\"num\">{steps[5]}</td>" not in html


def test_report_html_does_not_grow_with_the_steps():
    """Four times the decode steps, about the same page: the figures bin, the table cuts."""
    small = len(R.render_report(synthetic_run(n_layers=4, n_steps=1500, seed=2)))
    big = len(R.render_report(synthetic_run(n_layers=4, n_steps=6000, seed=2)))
    assert big <= 1.1 * small, (small, big)


def test_one_render_builds_what_figures_share_once(monkeypatch):
    """Inside views.plot.one_render (the report, the dashboard's run page) the call tree and
    the (layer, component) grid are built once per run; outside, every figure builds its own."""
    from energyprof.analysis import deepstats

    built = {"tree": 0, "cells": 0}
    real_tree, real_cells = P._build_call_tree, deepstats.layer_component_cells

    def tree(run):
        built["tree"] += 1
        return real_tree(run)

    def cells(run):
        built["cells"] += 1
        return real_cells(run)

    monkeypatch.setattr(P, "_build_call_tree", tree)
    monkeypatch.setattr(deepstats, "layer_component_cells", cells)
    run, other = synthetic_run(n_layers=2, n_steps=4), synthetic_run(n_layers=2, n_steps=4, seed=1)
    R.render_report(run)
    assert built == {"tree": 1, "cells": 1}
    for kind in ("components", "sankey"):
        P.plot(run, kind=kind, backend="plotly")
    assert built["tree"] == 3                                        # no block: built each time
    with P.one_render():
        a = P._call_tree(run)
        assert P._call_tree(run) is a and P._call_tree(other) is not a
    assert built["tree"] == 5
