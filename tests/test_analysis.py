"""energyprof.analysis: t distribution, CIs, OLS, efficiency, architecture scaling, group comparison.

Oracles: textbook t-table values, closed forms (Cauchy for df=1, the df=2 formula), hand
computations of the standard errors, and constructed data with known coefficients.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from energyprof._dtypes import TOKEN_DTYPE
from energyprof.testing import synthetic_run
from energyprof.analysis import (OLSResult, architecture_scaling, compare_groups, efficiency, figure, figure_value,
                                 mean_ci, model_dict, normal_quantile, ols, summaries, t_cdf, t_quantile, welch)
from energyprof.views.analysis_plots import plot_architecture_scaling, plot_compare_groups
from energyprof.store.rundata import RunData

# Two-sided 95 % (p = 0.975) and 99 % (p = 0.995) critical values from printed t tables.
T_TABLE_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 10: 2.228, 20: 2.086, 30: 2.042,
               60: 2.000, 120: 1.980}
T_TABLE_995 = {1: 63.657, 5: 4.032, 10: 3.169, 30: 2.750}


# ----------------------------------------------------------------------------- distributions
@pytest.mark.parametrize("df,t", sorted(T_TABLE_975.items()))
def test_t_quantile_matches_table_975(df, t):
    assert t_quantile(0.975, df) == pytest.approx(t, abs=6e-4)


@pytest.mark.parametrize("df,t", sorted(T_TABLE_995.items()))
def test_t_quantile_matches_table_995(df, t):
    assert t_quantile(0.995, df) == pytest.approx(t, abs=6e-4)


def test_normal_limit_and_symmetry():
    assert normal_quantile(0.975) == pytest.approx(1.959964, abs=1e-6)
    assert t_quantile(0.975, math.inf) == pytest.approx(1.959964, abs=1e-6)
    assert t_quantile(0.025, 7) == pytest.approx(-t_quantile(0.975, 7), rel=1e-12)
    assert t_quantile(0.5, 3) == 0.0


@given(t=st.floats(-50, 50))
@example(t=4.3717379531928993e-08)  # near 0, 1 - df/(df + t²) cancels: computed directly instead
@settings(max_examples=60, deadline=None)
def test_t_cdf_closed_forms(t):
    # df = 1 is the Cauchy distribution; df = 2 has the closed form 1/2 + t / (2 sqrt(2 + t²)).
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


@given(p=st.floats(0.001, 0.999), df=st.floats(0.5, 500))
@example(p=0.5000000000000001, df=0.5000000000000001)
@settings(max_examples=60, deadline=None)
def test_t_quantile_inverts_cdf(p, df):
    assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-10)


def test_distribution_errors():
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            t_quantile(bad, 5)
    with pytest.raises(ValueError):
        t_quantile(0.9, 0)
    with pytest.raises(ValueError):
        t_cdf(1.0, -1)


# ----------------------------------------------------------------------------- CIs
def test_mean_ci_by_hand():
    r = mean_ci([1.0, 2.0, 3.0, np.nan])  # NaN dropped
    assert r["n"] == 3 and r["mean"] == 2.0 and r["sd"] == pytest.approx(1.0)
    assert r["se"] == pytest.approx(1 / math.sqrt(3))
    assert r["half_width"] == pytest.approx(4.303 / math.sqrt(3), abs=1e-3)
    assert r["ci95"] == pytest.approx([2.0 - r["half_width"], 2.0 + r["half_width"]])
    one = mean_ci([5.0])
    assert one["mean"] == 5.0 and math.isnan(one["half_width"])
    assert mean_ci([])["n"] == 0


def test_welch_by_hand():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0, 10.0]
    r = welch(a, b)
    va, vb = (5 / 3) / 4, 10.0 / 5  # sample variance / n
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 4)
    assert r["diff"] == 3.5
    assert r["se"] == pytest.approx(se)
    assert r["df"] == pytest.approx(df)
    hw = r["ci95"][1] - r["diff"]
    # df ≈ 5.52 lies between the tabled 5 and 6 degrees of freedom
    assert T_TABLE_975[6] * se < hw < T_TABLE_975[5] * se
    assert r["ci95"][0] == pytest.approx(3.5 - hw)
    assert r["t"] == pytest.approx(3.5 / se)
    assert 0.05 < r["p"] < 0.1  # |t| = 2.25 with 5.5 df
    with pytest.raises(ValueError, match="at least two"):
        welch([1.0], [1.0, 2.0])


def test_welch_equal_groups_with_equal_df():
    r = welch([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
    assert r["df"] == pytest.approx(4.0)
    assert r["ci95"][1] - r["diff"] == pytest.approx(T_TABLE_975[4] * math.sqrt(2 / 3), abs=1e-3)


def test_figure_dict():
    f = figure(10.0, "J", se=1.0, n=11)
    assert f["unit"] == "J" and f["ci95"] == pytest.approx([10 - 2.228, 10 + 2.228], abs=1e-3)
    g = figure(3.0, "J")
    assert math.isnan(g["se"]) and math.isnan(g["ci95"][0])


# ----------------------------------------------------------------------------- OLS
def test_ols_exact_and_closed_form_se():
    x = np.array([1.0, 2.0, 4.0, 7.0, 11.0])
    y = 3.0 + 0.5 * x + np.array([0.1, -0.2, 0.05, 0.1, -0.05])
    fit = ols(x, y, names=["x"])
    # closed form of simple regression
    sxx = ((x - x.mean()) ** 2).sum()
    b = ((x - x.mean()) * (y - y.mean())).sum() / sxx
    a = y.mean() - b * x.mean()
    resid = y - a - b * x
    s = math.sqrt((resid ** 2).sum() / 3)
    assert fit.coef == pytest.approx([a, b])
    assert fit.resid_sd == pytest.approx(s)
    assert fit.se[1] == pytest.approx(s / math.sqrt(sxx))
    assert fit.se[0] == pytest.approx(s * math.sqrt(1 / 5 + x.mean() ** 2 / sxx))
    assert fit.r2 == pytest.approx(1 - (resid ** 2).sum() / ((y - y.mean()) ** 2).sum())
    assert fit.ci95[1] == pytest.approx([b - T_TABLE_975[3] * fit.se[1], b + T_TABLE_975[3] * fit.se[1]], abs=1e-3)
    assert fit["x"]["value"] == pytest.approx(b)
    # prediction interval at x0: s sqrt(1 + 1/n + (x0 - xbar)² / Sxx)
    x0 = 5.0
    yhat, band = fit.predict([[1.0, x0]], interval="prediction")
    hw = t_quantile(0.975, 3) * s * math.sqrt(1 + 1 / 5 + (x0 - x.mean()) ** 2 / sxx)
    assert band[0] == pytest.approx([yhat[0] - hw, yhat[0] + hw])
    _, cband = fit.predict([[1.0, x0]], interval="confidence")
    chw = t_quantile(0.975, 3) * s * math.sqrt(1 / 5 + (x0 - x.mean()) ** 2 / sxx)
    assert cband[0, 1] - yhat[0] == pytest.approx(chw)


def test_ols_recovers_known_coefficients_and_ci_coverage():
    rng = np.random.default_rng(1)
    true = np.array([2.0, -1.5, 0.003])
    covered = 0
    trials = 300
    for _ in range(trials):
        X = np.column_stack([rng.uniform(0, 10, 20), rng.uniform(100, 1000, 20)])  # very different scales
        y = true[0] + X @ true[1:] + rng.normal(0, 0.5, 20)
        fit = ols(X, y, names=["a", "b"])
        lo, hi = fit.ci95[:, 0], fit.ci95[:, 1]
        covered += int(np.all((true >= lo) & (true <= hi)))
    # each interval covers 95 %; all three at once somewhat less (about 0.95³ if independent ≈ 0.86)
    assert 0.80 <= covered / trials <= 0.98


def test_ols_errors():
    with pytest.raises(ValueError, match="more observations"):
        ols([1.0, 2.0], [1.0, 2.0])
    X = np.column_stack([np.arange(6.0), 2 * np.arange(6.0)])
    with pytest.raises(ValueError, match="collinear columns: b"):
        ols(X, np.arange(6.0), names=["a", "b"])
    with pytest.raises(ValueError, match="finite"):
        ols([1.0, np.nan, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="rows"):
        ols([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="all zero"):
        ols(np.zeros(5), np.arange(5.0))
    fit = ols(np.arange(5.0), np.arange(5.0) * 2 + 1)
    with pytest.raises(ValueError, match="columns"):
        fit.predict([[1.0, 2.0, 3.0]])
    assert isinstance(fit, OLSResult) and fit.to_dict()["n"] == 5


# ----------------------------------------------------------------------------- efficiency
def _tokens(energies, n_tokens, dur=0.01):
    t = np.zeros(len(energies), dtype=TOKEN_DTYPE)
    t["step"] = np.arange(1, len(energies) + 1)
    t["n_tokens"] = n_tokens
    t["energy_j"] = energies
    t["duration_s"] = dur
    t["j_per_token"] = np.asarray(energies) / n_tokens
    return t


def _summary(**kw):
    s = {"energy_j": 12.0, "net_energy_j": 8.0, "duration_s": 2.0, "input_tokens": 40, "output_tokens": 20,
         "batch_size": 2, "baseline_power_w": 2.0, "status": "completed",
         "phases": {"prefill": {"energy_j": 2.0, "net_energy_j": 1.6, "duration_s": 0.2, "tokens": 40},
                    "decode": {"energy_j": 9.0, "net_energy_j": 5.4, "duration_s": 1.8, "tokens": 18}}}
    s.update(kw)
    return s


def test_efficiency_by_hand():
    e_steps = np.array([1.0, 1.2, 0.9, 1.1, 1.0, 1.3, 0.8, 1.1, 1.0])
    run = RunData(_summary(phases={"prefill": {"energy_j": 2.0, "duration_s": 0.2, "tokens": 40},
                                   "decode": {"energy_j": float(e_steps.sum()), "duration_s": 1.8, "tokens": 18}}),
                  tokens=_tokens(e_steps, 2, dur=0.2))
    e = efficiency(run)
    assert e["j_per_token"]["value"] == pytest.approx(12.0 / 60) and e["j_per_token"]["unit"] == "J/token"
    assert e["j_per_output_token"]["value"] == pytest.approx(12.0 / 20)
    assert e["tokens_per_j"]["value"] == pytest.approx(20 / 12.0) and e["tokens_per_j"]["unit"] == "token/J"
    assert e["tokens_per_s"]["value"] == pytest.approx(10.0)
    assert e["edp_js"]["value"] == pytest.approx(24.0)
    assert e["edp_per_token_js"]["value"] == pytest.approx((12 / 20) * (2 / 20))
    assert e["prefill_edp_js"]["value"] == pytest.approx(2.0 * 0.2)
    assert e["decode_edp_js"]["value"] == pytest.approx(e_steps.sum() * 1.8)
    assert e["prefill_j_per_input_token"]["value"] == pytest.approx(2.0 / 40)
    per = e_steps / 2
    dec = e["decode_j_per_output_token"]
    assert dec["value"] == pytest.approx(per.mean())
    assert dec["se"] == pytest.approx(per.std(ddof=1) / 3)  # 9 steps
    assert dec["n"] == 9
    assert dec["ci95"][1] - dec["value"] == pytest.approx(t_quantile(0.975, 8) * dec["se"])
    ratio = e["output_to_input_token_energy"]
    assert ratio["value"] == pytest.approx(per.mean() / 0.05)
    assert ratio["se"] == pytest.approx(dec["se"] / 0.05)
    assert math.isnan(e["energy_j"]["se"])  # one measurement
    net = efficiency(run, net=True)["decode_j_per_output_token"]  # baseline 2 W over 0.2 s steps
    assert net["value"] == pytest.approx((e_steps - 2.0 * 0.2).sum() / 18)
    assert net["se"] == pytest.approx(dec["se"])  # a constant shift per step leaves the spread alone


def test_efficiency_net_and_phase_fallback():
    s = _summary()
    e = efficiency(s, net=True)  # a bare summary dict: no token rows
    assert e["j_per_output_token"]["value"] == pytest.approx(8.0 / 20)
    assert e["prefill_j_per_input_token"]["value"] == pytest.approx(1.6 / 40)
    assert e["decode_j_per_output_token"]["value"] == pytest.approx(5.4 / 18)
    assert math.isnan(e["decode_j_per_output_token"]["se"])


def test_efficiency_of_synthetic_run_matches_phases():
    r = synthetic_run(n_steps=12, seed=3)
    s = r.summary()
    e = efficiency(r)
    dec = s["phases"]["decode"]
    assert e["decode_j_per_output_token"]["value"] == pytest.approx(dec["energy_j"] / r.tokens["n_tokens"].sum())
    assert e["decode_j_per_output_token"]["n"] == 12
    assert e["j_per_token"]["value"] == pytest.approx(s["j_per_token"])
    assert e["tokens_per_j"]["value"] == pytest.approx(s["tokens_per_j"])


def test_figure_value():
    s = _summary(model={"n_layers": 4})
    assert figure_value(s, "phases.decode.energy_j") == 9.0
    assert figure_value(s, "model.n_layers") == 4.0
    assert math.isnan(figure_value(s, "phases.nothing.energy_j"))
    assert figure_value(s, "tokens_per_s") == 10.0
    assert figure_value(s, "prefill_j_per_input_token") == 0.05
    with pytest.raises(ValueError, match="unknown figure"):
        figure_value(s, "bogus")


# ----------------------------------------------------------------------------- architecture scaling
def _arch_runs(rng, n=40, noise=0.0005):
    runs = []
    for _ in range(n):
        L = int(rng.integers(2, 33))
        h = int(rng.choice([256, 512, 1024, 2048]))
        nh = h // 64
        nkv = int(rng.choice([1, max(nh // 4, 1), nh]))
        m = {"n_layers": L, "hidden_size": h, "n_heads": nh, "n_kv_heads": nkv, "intermediate_size": 4 * h,
             "n_params": L * 12 * h * h, "n_experts": 0, "experts_per_token": 0, "dtype": "float32"}
        jpt = 0.01 + 0.002 * L + 1e-5 * h + rng.normal(0, noise)
        runs.append({"model": m, "j_per_output_token": jpt, "status": "completed"})
    return runs


def test_architecture_scaling_recovers_slopes():
    runs = _arch_runs(np.random.default_rng(7))
    res = architecture_scaling(runs, joint=["n_layers", "hidden_size"])
    assert {"n_layers", "hidden_size", "n_heads", "n_kv_heads", "kv_groups", "n_params"} <= set(res["features"])
    assert "n_experts" not in res["features"]  # constant: nothing to fit
    j = res["joint"]["coefficients"]
    for name, true in (("const", 0.01), ("n_layers", 0.002), ("hidden_size", 1e-5)):
        lo, hi = j[name]["ci95"]
        assert lo <= true <= hi, name
        assert j[name]["se"] > 0
    assert j["n_layers"]["unit"] == "J/token per n_layers"
    assert res["joint"]["r2"] > 0.99
    # the simple regression on layers alone is unbiased here (hidden size is independent of layers)
    sl = res["features"]["n_layers"]["slope"]
    assert sl["ci95"][0] <= 0.002 <= sl["ci95"][1]


def test_architecture_scaling_power_law_and_errors():
    rng = np.random.default_rng(2)
    runs = []
    for _ in range(25):
        p = float(rng.uniform(1e6, 1e9))
        m = {"n_layers": 4, "hidden_size": 64, "n_heads": 4, "n_kv_heads": 4, "n_params": p}
        runs.append({"model": m, "j_per_output_token": 3e-7 * p ** 0.8 * math.exp(rng.normal(0, 0.02))})
    res = architecture_scaling(runs, features=["n_params"], log=True)
    ex = res["features"]["n_params"]["slope"]
    assert ex["ci95"][0] <= 0.8 <= ex["ci95"][1]
    assert abs(ex["value"] - 0.8) < 0.02
    with pytest.raises(ValueError, match="unknown feature"):
        architecture_scaling(runs, features=["nope"])
    res2 = architecture_scaling(runs, features=["n_layers"])
    assert "error" in res2["features"]["n_layers"]


def test_model_dict_gqa_and_moe():
    m = model_dict({"n_heads": 32, "n_kv_heads": 8, "n_params": 1000.0, "n_experts": 8, "experts_per_token": 2,
                    "hidden_size": 2, "intermediate_size": 3, "n_layers": 5})
    assert m["kv_groups"] == 4.0
    assert m["active_params"] == pytest.approx(1000 - 6 * 3 * 2 * 3 * 5)
    assert model_dict({"model": {"n_heads": 4, "n_params": 10}})["kv_groups"] == 1.0  # no kv knob: MHA


# ----------------------------------------------------------------------------- group comparison
def _group(rng, mean, dtype, n=6, sd=0.01):
    base = {"model": {"name": "m", "n_layers": 2, "dtype": dtype}, "input_tokens": 8, "output_tokens": 16,
            "batch_size": 1, "device": "cpu", "source_kind": "synthetic", "tags": [f"dtype:{dtype}"]}
    return [dict(base, j_per_output_token=float(mean + rng.normal(0, sd))) for _ in range(n)]


def test_compare_groups_difference_and_ci():
    rng = np.random.default_rng(3)
    a, b = _group(rng, 0.10, "float32"), _group(rng, 0.07, "bfloat16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # differs only in dtype (and its tag): no warning
        r = compare_groups(a, b)
    va = [x["j_per_output_token"] for x in a]
    vb = [x["j_per_output_token"] for x in b]
    w = welch(va, vb)
    assert r["diff"] == pytest.approx(np.mean(vb) - np.mean(va))
    assert r["ci95"] == pytest.approx(w["ci95"])
    assert r["ci95"][0] <= -0.03 <= r["ci95"][1]
    assert r["significant"] and r["unit"] == "J/token"
    assert r["differs_in"] == ["model.dtype", "tags"]
    assert r["a"]["n"] == 6


def test_compare_groups_warns_about_other_differences():
    rng = np.random.default_rng(4)
    a, b = _group(rng, 0.1, "float32"), _group(rng, 0.1, "float32")
    for x in b:
        x["output_tokens"] = 32
    with pytest.warns(RuntimeWarning, match="output_tokens"):
        r = compare_groups(a, b)
    assert "output_tokens" in r["differs_in"]


def test_runs_by_id_from_store(tmp_path):
    from energyprof.store.db import Store

    rng = np.random.default_rng(5)
    db = str(tmp_path / "runs.db")
    with Store(db) as st:
        ids_a = [st.save(RunData(dict(s, started_at="2026-01-01T00:00:00Z"))) for s in _group(rng, 0.2, "float32")]
        ids_b = [st.save(RunData(dict(s, started_at="2026-01-01T00:00:00Z"))) for s in _group(rng, 0.1, "float16")]
    got = summaries(ids_a, db=db)
    assert [g["run_id"] for g in got] == ids_a
    r = compare_groups(ids_a, ids_b, db=db)
    assert r["diff"] < 0 and r["significant"]


def test_analysis_plots():
    runs = _arch_runs(np.random.default_rng(8), n=12)
    fig = plot_architecture_scaling(architecture_scaling(runs), "n_layers")
    assert "n_layers" in fig.axes[0].get_title()
    rng = np.random.default_rng(9)
    fig2 = plot_compare_groups(compare_groups(_group(rng, 0.1, "a"), _group(rng, 0.2, "b")), labels=("fp32", "bf16"))
    assert "difference" in fig2.axes[0].get_title()
    with pytest.raises(ValueError):
        plot_architecture_scaling(architecture_scaling(runs), "n_experts")
    from energyprof.views.analysis_plots import plot_efficiency

    fig3 = plot_efficiency(synthetic_run(n_steps=6))
    assert fig3.axes[0].get_title().startswith("energy per token")
    assert len(fig3.axes[0].patches) == 3


# ----------------------------------------------------------------------------- docs
def test_docs_examples_run(tmp_path, monkeypatch, capsys):
    """The python blocks of docs/analysis.md run as written, in order, in one namespace."""
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "analysis.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 7
    monkeypatch.setenv("ENERGYPROF_DB", str(tmp_path / "runs.db"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    for b in blocks:
        exec(compile(b, "docs/analysis.md", "exec"), ns)
    assert (tmp_path / "model.json").exists()
    assert ns["cv"]["n"] >= 10 and ns["sc"]["features"]["n_layers"]["slope"]["unit"] == "J/token per n_layers"
    assert "decode:" in capsys.readouterr().out


def test_ep_compare_of_two_lists_compares_the_groups(tmp_path):
    """ep.compare([runs], [runs]) gives the group difference (Welch) instead of a pair."""
    import energyprof as ep
    from energyprof.testing import synthetic_run

    db = tmp_path / "g.db"
    st = ep.Store(db)
    ids_a = [st.save(synthetic_run(seed=i)) for i in range(3)]
    ids_b = [st.save(synthetic_run(seed=10 + i, n_steps=24)) for i in range(3)]
    st.close()
    with pytest.warns(RuntimeWarning, match="output_tokens"):   # the groups differ in length too
        res = ep.compare(ids_a, ids_b, db=db)
    with pytest.warns(RuntimeWarning, match="output_tokens"):
        direct = ep.compare_groups(ids_a, ids_b, db=db)
    assert res["diff"] == direct["diff"] and res["figure"] == "j_per_output_token"
    with pytest.raises(ValueError, match="two lists"):
        ep.compare(ids_a, ids_b[0], db=db)
