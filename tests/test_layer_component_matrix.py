"""analysis.deepstats.layer_component_matrix (one grouping pass, every metric) against a
brute-force loop over the (layer, component) cells, on a deep run and a standard run."""
import numpy as np
import pytest
import torch

import energyprof as ep
from energyprof.analysis import deepstats
from energyprof.tiny import tiny_model


def brute(run, metric):
    """Each cell selected by masks, its figure computed as the metric's definition says."""
    c = run.components
    c = c[c["layer"] >= 0]
    layers = sorted({int(v) for v in c["layer"]})
    comps = deepstats.component_order(sorted({str(v) for v in c["component"]}))
    z = np.full((len(layers), len(comps)), np.nan)
    rs = np.full_like(z, np.nan)
    ratios = deepstats._ratio_lookup(run) if metric in ("kill_ratio", "variance_ratio") else {}
    for i, layer in enumerate(layers):
        for j, comp in enumerate(comps):
            sel = [r for r in c if int(r["layer"]) == layer and str(r["component"]) == comp]
            if not sel:
                continue
            rs[i, j] = sum(bool(r["resolved"]) for r in sel) / len(sel)
            if metric in ("energy_j", "duration_s"):
                z[i, j] = sum(float(r[metric]) for r in sel)
            elif metric == "power_w":
                d = sum(float(r["duration_s"]) for r in sel)
                z[i, j] = sum(float(r["energy_j"]) for r in sel) / d if d > 0 else np.nan
            elif metric in ("kill_ratio", "variance_ratio"):
                z[i, j] = ratios.get((layer, comp), {}).get(metric, np.nan)
            else:
                v = [float(r[metric]) for r in sel if np.isfinite(r[metric])]
                if v:
                    z[i, j] = max(v) if metric == "act_max" else sum(v) / len(v)
    return layers, comps, z, rs


@pytest.fixture(scope="module", params=["deep", "standard"])
def run(request):
    m = tiny_model("tiny-llama")
    with ep.run(m, source="synthetic:power_w=4,square_w=20,square_period_ms=2,period_ms=0.5", baseline_s=0,
                save=False, mode=request.param) as s:
        m.generate(torch.tensor([[3, 4, 5, 6]]), max_new_tokens=3, do_sample=False)
    return s


@pytest.mark.parametrize("metric", sorted(deepstats.METRICS))
def test_every_metric_equals_the_brute_force_cells(run, metric):
    layers, comps, z, rs = brute(run, metric)
    got = deepstats.layer_component_matrix(run, metric)
    assert got["layers"] == layers and got["components"] == comps
    np.testing.assert_allclose(got["resolved_share"], rs, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(got["value"], z, rtol=1e-9, atol=1e-300, equal_nan=True)
    if run.summary()["mode"] == "deep" and metric in ("energy_j", "act_mean", "act_max"):
        assert np.isfinite(got["value"]).sum() > len(comps)   # real values, not an all-NaN grid
