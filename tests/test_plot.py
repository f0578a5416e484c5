"""energyprof.views.plot: every kind with both backends draws, and the figures show the run's numbers.

The run is energyprof.testing.synthetic_run; its own consistency is checked first
against a direct (loop) integration of its samples, so the figure checks below compare
against numbers known to be right.
"""
import io
import math
import sys

import matplotlib
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

matplotlib.use("Agg")

from PIL import Image  # noqa: E402  (a matplotlib dependency)

from energyprof.views import plot as ep_plot  # noqa: E402
from energyprof.testing import synthetic_run  # noqa: E402
from energyprof.store.rundata import RunData  # noqa: E402

RUN = synthetic_run(n_layers=4, n_steps=12, seed=3)


def _phases(run):
    sec = run.sections
    ph = sec[sec["kind"] == "phase"]
    return ph[np.argsort(ph["t_start_ns"])]


def _loop_energy(samples, t0, t1, col="package_w"):
    """Oracle: sum over samples of power x overlap, one sample at a time."""
    e = 0.0
    for s in samples:
        ov = min(int(s["t_end_ns"]), t1) - max(int(s["t_start_ns"]), t0)
        if ov > 0:
            e += float(s[col]) * ov / 1e9
    return e


def _png_stats(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=50)
    im = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    non_white = np.any(im < 240, axis=2).mean()
    colors = len(np.unique(im.reshape(-1, 3), axis=0))
    return non_white, colors


# ----------------------------------------------------------------- the synthetic run is sound
def test_synthetic_run_windows_match_a_loop_integration():
    smp = RUN.samples
    for arr in (RUN.sections, RUN.tokens[:3], RUN.layers[:5], RUN.components[::97]):
        for r in arr:
            want = _loop_energy(smp, int(r["t_start_ns"]), int(r["t_end_ns"]))
            assert r["energy_j"] == pytest.approx(want, rel=1e-9, abs=1e-12)
            assert r["cpu_j"] == pytest.approx(_loop_energy(smp, int(r["t_start_ns"]), int(r["t_end_ns"]), "cpu_w"),
                                               rel=1e-9, abs=1e-12)


def test_synthetic_run_conservation_and_summary():
    s = RUN.summary()
    sec = RUN.sections
    run = sec[sec["kind"] == "run"][0]
    ph = _phases(RUN)
    assert [str(n) for n in ph["name"]] == list(ep_plot.PHASE_ORDER)
    assert ph["energy_j"].sum() == pytest.approx(run["energy_j"], rel=1e-12)
    assert ph["t_start_ns"][0] == run["t_start_ns"] and ph["t_end_ns"][-1] == run["t_end_ns"]
    assert np.all(ph["t_start_ns"][1:] == ph["t_end_ns"][:-1])
    decode = ph[ph["name"] == "decode"][0]
    assert RUN.tokens["energy_j"].sum() == pytest.approx(decode["energy_j"], rel=1e-12)
    assert s["energy_j"] == pytest.approx(run["energy_j"])
    base = sec[sec["kind"] == "baseline"][0]
    assert s["baseline_power_w"] == pytest.approx(_loop_energy(RUN.samples, int(base["t_start_ns"]),
                                                               int(base["t_end_ns"])) / base["duration_s"])
    assert s["net_energy_j"] == pytest.approx(s["energy_j"] - s["baseline_power_w"] * s["duration_s"])
    n_in, n_out = s["input_tokens"], s["output_tokens"]
    assert n_out == len(RUN.tokens) + 1
    assert s["j_per_token"] == pytest.approx(s["energy_j"] / (n_in + n_out))
    assert s["tokens_per_j"] == pytest.approx(n_out / s["energy_j"])
    assert s["edp_js"] == pytest.approx(s["energy_j"] * s["duration_s"])
    # calls: unattributed = energy - children, for every call
    calls = np.concatenate([RUN.layers, RUN.components])
    by_id = {int(c["call_id"]): c for c in calls}
    kids = {}
    for c in calls:
        kids.setdefault(int(c["parent_id"]), []).append(float(c["energy_j"]))
    for cid, c in by_id.items():
        assert c["unattributed_j"] == pytest.approx(c["energy_j"] - sum(kids.get(cid, [])), abs=1e-12)
    assert set(RUN.layers["component"]) == {"layer"}
    assert "layer" not in set(RUN.components["component"])


def test_synthetic_run_labels_and_errors():
    assert synthetic_run(source_label="estimated").summary()["source_kind"] == "estimate"
    with pytest.raises(ValueError, match="source_label"):
        synthetic_run(source_label="guessed")


# ----------------------------------------------------------------- every kind draws
@pytest.mark.parametrize("kind", ep_plot.KINDS)
def test_matplotlib_kind_draws_non_blank_png(kind):
    from matplotlib.figure import Figure

    fig = ep_plot.plot(RUN, kind=kind, backend="matplotlib")
    assert isinstance(fig, Figure)
    non_white, colors = _png_stats(fig)
    assert non_white > 0.03, f"{kind}: only {non_white:.1%} of the PNG is drawn on"
    assert colors > 20
    assert "[SIMULATED]" in (fig.axes[0].get_title() + (fig._suptitle.get_text() if fig._suptitle else ""))


@pytest.mark.parametrize("kind", ep_plot.KINDS)
def test_plotly_kind_builds_a_valid_figure(kind):
    import plotly.graph_objects as go
    import plotly.io as pio

    fig = ep_plot.plot(RUN, kind=kind, backend="plotly")
    assert isinstance(fig, go.Figure)
    assert len(fig.data) >= 1
    assert "[SIMULATED]" in fig.layout.title.text
    back = pio.from_json(fig.to_json())  # round-trips through plotly's validators
    assert len(back.data) == len(fig.data)


# ----------------------------------------------------------------- values in the figures
def test_phase_bars_are_the_section_energies():
    ph = _phases(RUN)
    fig = ep_plot.plot(RUN, kind="phases", backend="matplotlib")
    bars = fig.axes[0].containers
    np.testing.assert_allclose([p.get_height() for p in bars[0]], ph["energy_j"], rtol=1e-12)
    np.testing.assert_allclose([p.get_height() for p in bars[1]], ph["net_energy_j"], rtol=1e-12)
    pf = ep_plot.plot(RUN, kind="phases", backend="plotly")
    assert list(pf.data[0].x) == [str(n) for n in ph["name"]]
    np.testing.assert_allclose(pf.data[0].y, ph["energy_j"], rtol=1e-12)
    np.testing.assert_allclose(pf.data[1].y, ph["net_energy_j"], rtol=1e-12)


def test_token_line_is_energy_per_token_per_step():
    tok = RUN.tokens
    want = tok["energy_j"] / tok["n_tokens"]
    line = ep_plot.plot(RUN, kind="tokens", backend="matplotlib").axes[0].lines[0]
    np.testing.assert_array_equal(line.get_xdata(), tok["step"])
    np.testing.assert_allclose(line.get_ydata(), want, rtol=1e-12)
    pf = ep_plot.plot(RUN, kind="tokens", backend="plotly")
    np.testing.assert_allclose(pf.data[0].y, want, rtol=1e-12)


def test_timeline_lines_are_the_samples_and_bands_the_phases():
    smp = RUN.samples
    t0 = RUN.summary()["t_origin_ns"]
    fig = ep_plot.plot(RUN, kind="timeline", backend="matplotlib")
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.lines}
    assert "ane W" not in lines  # not measured: not drawn
    pkg = lines["package W"]
    np.testing.assert_allclose(pkg.get_ydata()[0::2], smp["package_w"])
    np.testing.assert_allclose(pkg.get_xdata()[0::2], (smp["t_start_ns"] - t0) / 1e9)
    np.testing.assert_allclose(pkg.get_xdata()[1::2], (smp["t_end_ns"] - t0) / 1e9)
    s = RUN.summary()
    assert any(ln.get_label().startswith("peak") and ln.get_ydata()[0] == s["peak_power_w"] for ln in ax.lines)
    assert any(ln.get_label().startswith("idle") and ln.get_ydata()[0] == s["baseline_power_w"] for ln in ax.lines)
    pf = ep_plot.plot(RUN, kind="timeline", backend="plotly")
    traces = {t.name: t for t in pf.data}
    np.testing.assert_allclose(traces["gpu W"].y[0::2], smp["gpu_w"])
    rects = [sh for sh in pf.layout.shapes if sh.type == "rect"]
    n_bands = int(np.sum(np.isin(RUN.sections["kind"], ["phase", "baseline"])))
    assert len(rects) == n_bands
    assert sorted(float(r.x0) for r in rects) == pytest.approx(sorted(
        (RUN.sections["t_start_ns"][np.isin(RUN.sections["kind"], ["phase", "baseline"])] - t0) / 1e9))


def test_heatmaps_are_group_sums_of_the_calls():
    comp = pd.DataFrame({k: RUN.components[k] for k in ("layer", "component", "energy_j")})
    want = comp[comp.layer >= 0].pivot_table(index="layer", columns="component", values="energy_j", aggfunc="sum")
    pf = ep_plot.plot(RUN, kind="layers", backend="plotly")
    z = np.asarray(pf.data[0].z, dtype=float)
    for j, name in enumerate(pf.data[0].x):
        np.testing.assert_allclose(z[:, j], want[name].to_numpy(), rtol=1e-12)
    lay = pd.DataFrame({k: RUN.layers[k] for k in ("layer", "step", "energy_j")})
    want2 = lay.pivot_table(index="layer", columns="step", values="energy_j", aggfunc="sum").to_numpy()
    np.testing.assert_allclose(np.asarray(ep_plot.plot(RUN, kind="layer_steps", backend="plotly").data[0].z,
                                          dtype=float), want2, rtol=1e-12)
    img = ep_plot.plot(RUN, kind="layer_steps", backend="matplotlib").axes[0].images[0]
    np.testing.assert_allclose(np.asarray(img.get_array()), want2, rtol=1e-12)


def test_component_share_and_sunburst_add_up():
    calls = np.concatenate([RUN.layers, RUN.components])
    top_total = calls["energy_j"][calls["parent_id"] < 0].sum()
    fig = ep_plot.plot(RUN, kind="components", backend="matplotlib")
    ax = fig.axes[0]
    shares = {t.get_text(): p.get_width() for t, p in zip(ax.get_yticklabels(), ax.patches)}
    assert sum(shares.values()) == pytest.approx(100.0)
    q = RUN.components["energy_j"][RUN.components["component"] == "q_proj"].sum()  # a leaf: all its own
    assert shares["q_proj"] == pytest.approx(100.0 * q / top_total)
    sb = ep_plot.plot(RUN, kind="components", backend="plotly").data[0]
    assert sum(sb.values) == pytest.approx(top_total, rel=1e-9)


def _flows(d):
    n = len(d["labels"])
    inflow, outflow = np.zeros(n), np.zeros(n)
    for a, b, v in zip(d["source"], d["target"], d["value"]):
        assert v > 0
        outflow[a] += v
        inflow[b] += v
    return inflow, outflow


@settings(max_examples=12, deadline=None)
@given(n_layers=st.integers(1, 5), n_steps=st.integers(0, 5), seed=st.integers(0, 10_000))
def test_sankey_conserves_energy_at_every_node(n_layers, n_steps, seed):
    run = synthetic_run(n_layers=n_layers, n_steps=n_steps, seed=seed)
    link = ep_plot.plot(run, kind="sankey", backend="plotly").data[0]
    labels = list(link.node.label)
    d = {"labels": labels, "source": list(link.link.source), "target": list(link.link.target),
         "value": list(link.link.value)}
    inflow, outflow = _flows(d)
    s = run.summary()
    assert outflow[labels.index("run")] == pytest.approx(s["energy_j"], rel=1e-9)
    for ph in _phases(run):
        if ph["energy_j"] > 0:
            assert inflow[labels.index(str(ph["name"]))] == pytest.approx(ph["energy_j"], rel=1e-9)
    for layer in range(n_layers):
        i = labels.index(f"layer {layer}")
        want = run.layers["energy_j"][run.layers["layer"] == layer].sum()
        assert inflow[i] == pytest.approx(want, rel=1e-9)
        assert outflow[i] == pytest.approx(want, rel=1e-9)  # all of a layer goes on to its components
    for name in ("prefill", "decode"):
        if name in labels and outflow[labels.index(name)] > 0:
            i = labels.index(name)
            assert outflow[i] == pytest.approx(inflow[i], rel=1e-9)


def test_waterfall_steps_add_up_to_the_run_energy():
    s = RUN.summary()
    wf = ep_plot.plot(RUN, kind="waterfall", backend="plotly").data[0]
    y = list(wf.y)
    assert list(wf.measure)[-1] == "total" and y[-1] == pytest.approx(s["energy_j"])
    assert sum(y[:-1]) == pytest.approx(s["energy_j"], rel=1e-9)
    assert y[0] == pytest.approx(s["baseline_power_w"] * s["duration_s"])
    np.testing.assert_allclose(y[1:1 + 4], _phases(RUN)["net_energy_j"], rtol=1e-12)
    ax = ep_plot.plot(RUN, kind="waterfall", backend="matplotlib").axes[0]
    assert ax.patches[-1].get_height() == pytest.approx(s["energy_j"])


@pytest.mark.parametrize("backend", ep_plot.BACKENDS)
def test_compare_shows_both_runs(backend):
    b = synthetic_run(n_layers=6, n_steps=8, seed=1, source_label="measured")
    fig = ep_plot.plot_compare(RUN, b, backend=backend, labels=("small", "big"))
    want_a, want_b = _phases(RUN)["energy_j"], _phases(b)["energy_j"]
    if backend == "matplotlib":
        ax = fig.axes[0]
        np.testing.assert_allclose([p.get_height() for p in ax.containers[0]], want_a)
        np.testing.assert_allclose([p.get_height() for p in ax.containers[1]], want_b)
        assert len(fig.axes[1].lines[1].get_ydata()) == len(b.tokens)
        assert _png_stats(fig)[0] > 0.03
        assert "[SIMULATED]" in fig._suptitle.get_text()
    else:
        np.testing.assert_allclose(fig.data[0].y, want_a)
        np.testing.assert_allclose(fig.data[1].y, want_b)
        assert [t.name for t in fig.data[:2]] == ["small", "big"]


# ----------------------------------------------------------------- labels and errors
def test_titles_say_estimated_and_measured_says_nothing():
    est = synthetic_run(n_layers=1, n_steps=2, source_label="estimated")
    meas = synthetic_run(n_layers=1, n_steps=2, source_label="measured")
    assert ep_plot.plot(est, "phases", "plotly").layout.title.text.endswith("[ESTIMATED]")
    assert ep_plot.plot(est, "timeline").axes[0].get_title().endswith("[ESTIMATED]")
    assert "[" not in ep_plot.plot(meas, "phases", "plotly").layout.title.text


def test_unknown_kind_and_backend_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid kinds: timeline, phases, tokens"):
        ep_plot.plot(RUN, kind="pie")
    with pytest.raises(ValueError, match="valid backends: matplotlib, plotly"):
        ep_plot.plot(RUN, kind="timeline", backend="bokeh")
    with pytest.raises(ValueError, match="valid backends"):
        ep_plot.plot_compare(RUN, RUN, backend="ascii")


def test_missing_data_is_a_clear_no_data_error():
    minimal = RunData(RUN.summary(), samples=RUN.samples, sections=RUN.sections, tokens=RUN.tokens)
    for kind in ("layers", "layer_steps", "components"):
        with pytest.raises(ep_plot.NoDataError, match="mode='minimal'"):
            ep_plot.plot(minimal, kind=kind)
    # the sankey still shows run -> phases without calls
    d = ep_plot.plot(minimal, kind="sankey", backend="plotly").data[0]
    assert set(d.node.label) == {"run", *ep_plot.PHASE_ORDER}
    with pytest.raises(ep_plot.NoDataError, match="no decode steps"):
        ep_plot.plot(synthetic_run(n_layers=1, n_steps=0), kind="tokens")
    with pytest.raises(ep_plot.NoDataError, match="no power samples"):
        ep_plot.plot(RunData({"energy_j": 1.0}), kind="timeline")
    assert issubclass(ep_plot.NoDataError, ValueError)


@pytest.mark.parametrize("backend,module", [("matplotlib", "matplotlib.figure"), ("plotly", "plotly.graph_objects")])
def test_missing_plot_library_names_the_package(monkeypatch, backend, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ImportError, match=f"needs {backend}.*pip install 'energyprof\\[plot\\]'"):
        ep_plot.plot(RUN, kind="phases", backend=backend)


def test_plot_takes_any_object_with_the_run_attributes():
    class Duck:
        samples, sections, tokens = RUN.samples, RUN.sections, RUN.tokens
        layers, components = RUN.layers, RUN.components
        summary = RUN.summary()  # a plain dict, not a method

    fig = ep_plot.plot(Duck(), kind="phases", backend="plotly")
    np.testing.assert_allclose(fig.data[0].y, _phases(RUN)["energy_j"])
    assert not math.isnan(fig.data[0].y[0])


def test_docs_examples_run(capsys):
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "plots.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 2
    for code in blocks:
        exec(compile(code, "docs/plots.md", "exec"), {})
    out = capsys.readouterr().out
    assert "'compare.png'" in out and "'sankey.html'" in out
    assert all(f"'{k}.png'" in out for k in ep_plot.KINDS)
    assert "Energy by phase [SIMULATED]" in out


@pytest.mark.parametrize("backend", ep_plot.BACKENDS)
def test_long_timelines_are_averaged_keeping_the_energy(backend):
    from energyprof import _core

    n = ep_plot.MAX_TIMELINE_SAMPLES + 4321
    rng = np.random.default_rng(7)
    smp = np.zeros(n, dtype=_core.SAMPLE_DTYPE)
    dur = rng.integers(500_000, 1_500_000, n)  # uneven intervals, 0.5-1.5 ms
    ends = np.cumsum(dur)
    smp["t_start_ns"], smp["t_end_ns"] = ends - dur, ends
    smp["kind"] = _core.KIND_INTERVAL
    for d in ("cpu", "gpu", "ane", "dram"):
        smp[f"{d}_w"] = np.nan
    smp["package_w"] = rng.uniform(5, 50, n)
    smp["package_w"][::1000] = np.nan  # a missing value is left out, not counted as 0 W
    run = RunData({"t_origin_ns": 0, "source_label": "measured"}, samples=smp)
    fig = ep_plot.plot(run, kind="timeline", backend=backend)
    if backend == "matplotlib":
        ln = fig.axes[0].lines[0]
        x, y = np.asarray(ln.get_xdata()), np.asarray(ln.get_ydata())
        title = fig.axes[0].get_title()
    else:
        x, y = np.asarray(fig.data[0].x), np.asarray(fig.data[0].y)
        title = fig.layout.title.text
    k = -(-n // 10_000)
    assert f"averages of {k} samples" in title
    assert len(y) == 2 * (-(-n // k))
    # oracle: for every bucket, energy / measured time of its samples
    ok = ~np.isnan(smp["package_w"])
    for b in (0, 1, len(y) // 2 - 1):
        sl = slice(b * k, min((b + 1) * k, n))
        m = ok[sl]
        want = np.sum(smp["package_w"][sl][m] * dur[sl][m]) / np.sum(dur[sl][m])
        assert y[2 * b] == pytest.approx(want, rel=1e-12) and y[2 * b + 1] == y[2 * b]
        assert x[2 * b] == pytest.approx(smp["t_start_ns"][sl][0] / 1e9)
        assert x[2 * b + 1] == pytest.approx(smp["t_end_ns"][sl][-1] / 1e9)
