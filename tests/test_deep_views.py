"""Deep mode made visible (issue 16, part 3): the thresholds as ep.run parameters, stored with the
run; the activation statistics against a tensor captured by a hook of our own; the report's
ops, head-entropy and activation sections drawn in headless Chromium; the metric selector
of the layer x component heatmap.

Oracles: the same tiny model run without energyprof, its MLP output captured by a plain
forward hook and reduced with numpy; the stored head rows averaged by hand.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import energyprof as ep
from energyprof.tiny import tiny_model
from energyprof.views import plot as ep_plot
from energyprof.views import report as ep_report

SRC = "synthetic:power_w=12,period_ms=2"
SPARSE, KILL = 0.02, 0.05
X = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])


@pytest.fixture(scope="module")
def deep_run(tmp_path_factory):
    db = tmp_path_factory.mktemp("deep") / "runs.db"
    model = tiny_model("tiny-llama")
    with ep.run(model, source=SRC, mode="deep", baseline_s=0, db=db, sparse_below=SPARSE, kill_below=KILL) as s, \
            torch.no_grad():
        model.generate(X, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    return db, ep.load(s.run_id, db=db)


def _oracle_mlp_output():
    """The first (prefill) output of layer 0's MLP, captured by a plain hook, no energyprof."""
    model = tiny_model("tiny-llama")
    got = []
    h = model.model.layers[0].mlp.register_forward_hook(lambda m, a, out: got.append(out.detach().double().numpy()))
    with torch.no_grad():
        model.generate(X, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    h.remove()
    return got[0]


def test_thresholds_are_stored_and_the_statistics_match_a_plain_hook(deep_run):
    _db, run = deep_run
    deep = run.summary()["deep"]
    assert deep["sparse_below"] == SPARSE and deep["kill_below"] == KILL
    x = _oracle_mlp_output()
    c = run.components
    row = c[(c["layer"] == 0) & (c["component"] == "mlp") & (c["step"] == 0)]
    assert len(row) == 1
    row = row[0]
    ax = np.abs(x)
    # deep mode times attention's ops in its own float32 kernels: the MLP input differs from
    # the plain model's by float32 rounding (~1e-7 relative), so rel 1e-6 and one element
    assert row["act_abs_mean"] == pytest.approx(float(ax.mean()), rel=1e-6)
    assert row["act_max"] == pytest.approx(float(ax.max()), rel=1e-6)
    assert row["act_sparsity"] == pytest.approx(float((ax < SPARSE).mean()), abs=1.0 / ax.size)
    assert row["act_std"] == pytest.approx(float(x.std(ddof=1)), rel=1e-6)
    # another threshold gives another sparsity: the parameter is used, not a constant
    assert float((ax < 1e-3).mean()) != float((ax < SPARSE).mean())


def test_layers_heatmap_metric_selector_and_its_values(deep_run):
    _db, run = deep_run
    fig = ep.plot(run, kind="layers", backend="plotly", metric="act_abs_mean")
    menu = fig.layout.updatemenus[0]
    labels = [b.label for b in menu.buttons]
    assert {"energy_j", "duration_s", "power_w", "act_abs_mean", "act_std", "act_max", "act_sparsity",
            "kill_ratio", "variance_ratio"} <= set(labels)
    assert labels[menu.active] == "act_abs_mean"
    # the energy button's matrix is each (layer, component) cell's summed call energy, by hand
    c = run.components[run.components["layer"] >= 0]
    z = np.array(menu.buttons[labels.index("energy_j")].args[0]["z"][0], dtype=float)
    cols = list(fig.data[0].x)
    for i, layer in enumerate(sorted(set(c["layer"].tolist()))):
        for j, comp in enumerate(cols):
            sel = c[(c["layer"] == layer) & (c["component"] == comp)]
            want = float(sel["energy_j"].sum()) if len(sel) else np.nan
            assert z[i, j] == pytest.approx(want, rel=1e-12, nan_ok=True), (layer, comp)
    with pytest.raises(ValueError, match="unknown metric"):
        ep.plot(run, kind="layers", backend="plotly", metric="bogus")


def test_heads_heatmap_is_the_mean_entropy_per_layer_and_head(deep_run):
    _db, run = deep_run
    fig = ep.plot(run, kind="heads", backend="plotly")
    z = np.array(fig.data[0].z, dtype=float)
    h = run.heads
    assert len(h)
    for i, layer in enumerate(sorted(set(h["layer"].tolist()))):
        for j, head in enumerate(sorted(set(h["head"].tolist()))):
            v = h["entropy"][(h["layer"] == layer) & (h["head"] == head)]
            assert z[i, j] == pytest.approx(float(np.nanmean(v)), rel=1e-12)
            # entropy of a softmax over at most len(X) + 3 keys lies in [0, log n]
            assert 0 <= z[i, j] <= np.log(X.shape[1] + 3) + 1e-9


def test_ops_heatmap_orders_ops_and_marks_unresolved(deep_run):
    _db, run = deep_run
    fig = ep.plot(run, kind="ops", backend="plotly")
    ops = [str(o) for o in fig.data[0].x]
    attn = [o for o in ops if o.startswith("attn.")]
    assert attn and ops.index(attn[0]) < min(ops.index(o) for o in ops if o.startswith("mlp."))
    assert any(o.endswith("softmax") for o in ops) and any(o.endswith(".qk") for o in ops)
    o = run.ops[run.ops["layer"] >= 0]
    if not o["resolved"].all():   # ops are far shorter than a 2 ms sample: marked
        assert any("hatched" in (t.name or "") for t in fig.data[1:])


@pytest.fixture(scope="module")
def deep_page(deep_run, tmp_path_factory):
    from test_report import _browse

    _db, run = deep_run
    d = tmp_path_factory.mktemp("deepbrowser")
    page = ep_report.write_report(run, d / "deep.html")
    r = _browse(page, d / "profile", "--dump-dom")
    return page.read_text(encoding="utf-8"), r.stdout


def test_must_show_deep_report_sections_in_headless_chromium(deep_page):
    from test_report import _status

    doc, dom = deep_page
    status, rects = _status(dom)
    assert status == "ok", f"the page reported: {status}"
    for sid, kind in (("deep-ops", "ops"), ("deep-heads", "heads"), ("deep-activations", "activations")):
        assert re.search(rf'<section id="{sid}">', dom), sid
        assert f"plot-{kind}" in rects, (kind, sorted(rects))
        x, y, w, h = rects[f"plot-{kind}"]
        assert w > 300 and h > 300, (kind, rects[f"plot-{kind}"])
    # the thresholds the run was recorded with are on the page
    assert f"sparse below {SPARSE:g}" in doc and f"killed below {KILL:g}" in doc


def test_a_standard_run_has_no_deep_sections(tmp_path):
    from energyprof.testing import synthetic_run

    page = ep_report.write_report(synthetic_run(n_layers=2, n_steps=3), tmp_path / "std.html")
    doc = page.read_text(encoding="utf-8")
    assert 'id="deep-ops"' not in doc
    with pytest.raises(ep_plot.NoDataError, match="deep"):
        ep.plot(synthetic_run(n_layers=2, n_steps=3), kind="ops", backend="plotly")
