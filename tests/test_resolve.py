"""ep.resolve: per-group power by regression, against the synthetic source's ground truth.

Truth: ``synthetic:power_w=5,attn_w=10,mlp_w=30`` draws exactly 15 W while attention is
the innermost running hooked call, 35 W during the MLP and 5 W otherwise (the C component
stack; tests/test_component_truth.py holds every sample to the call-timestamp oracle).
The coverage of the 95 % intervals is measured over many seeds of Gaussian noise added
to the noise-free samples, the same model as the source's ``noise_w``.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import energyprof as ep  # noqa: E402
from energyprof._dtypes import CALL_DTYPE  # noqa: E402
from energyprof.analysis.resolve import RESOLVE_LABEL, design  # noqa: E402
from energyprof.store.rundata import RunData  # noqa: E402
from energyprof.testing import truth_table  # noqa: E402
from energyprof.tiny import tiny_model  # noqa: E402

TRUTH_W = {"attn": 15.0, "mlp": 35.0, "norm": 5.0, "embed": 5.0, "lm_head": 5.0, "other": 5.0}


@pytest.fixture(scope="module")
def repeats():
    model = tiny_model("tiny-llama", n_layers=4)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    return ep.repeat(model, lambda: model.generate(ids, max_new_tokens=16, min_new_tokens=16, do_sample=False),
                     n=8, seed=3, source="synthetic:power_w=5,attn_w=10,mlp_w=30,period_ms=100", baseline_s=0,
                     save=False)


def _row(table, group):
    return table[table["group"] == group][0]


def test_noise_free_repeats_recover_attn_and_mlp(repeats):
    t = ep.resolve(repeats, by="component")
    assert list(t["group"]) == ["attn", "mlp", "norm", "embed", "lm_head", "other"]
    for g in ("attn", "mlp"):
        r = _row(t, g)
        assert r["identifiable"]
        assert abs(r["power_w"] - TRUTH_W[g]) / TRUTH_W[g] < 0.03
        assert r["ci_low_w"] <= r["power_w"] <= r["ci_high_w"]
    assert np.all(t["label"] == RESOLVE_LABEL)
    assert np.isfinite(t["condition_number"][0])
    # Per call: 15 W times the attention time of the 4 layers x 16 forwards (prefill + 15) x 8 runs.
    a = _row(t, "attn")
    assert a["n_calls"] == 4 * 16 * 8
    attn_calls = np.concatenate([r.components[r.components["component"] == "attn"] for r in repeats])
    mean_s = ((attn_calls["t_end_ns"] - attn_calls["t_start_ns"]) / 1e9).mean()
    assert a["energy_j"] == pytest.approx(15.0 * mean_s, rel=0.03)


def test_repeat_dithers_and_tags_one_group(repeats):
    groups = {r.summary()["repeat"]["group"] for r in repeats}
    assert len(groups) == 1
    assert [r.summary()["repeat"]["index"] for r in repeats] == list(range(8))
    delays = [r.summary()["repeat"]["delay_s"] for r in repeats]
    assert all(0.0 <= d <= 0.1 for d in delays) and len(set(delays)) == 8
    assert all(("repeat:" + groups.pop()) in r.summary()["tags"] for r in repeats[:1])


def _with_power(run, cpu_w):
    x = run.samples.copy()
    x["cpu_w"] = cpu_w
    return RunData(run.summary(), samples=x, sections=run.sections, tokens=run.tokens, layers=run.layers,
                   components=run.components)


def test_confidence_intervals_cover_the_truth_at_the_nominal_rate(repeats):
    truth_w = []
    for r in repeats:
        x = r.samples
        truth_w.append(truth_table(r)["samples"] / ((x["t_end_ns"] - x["t_start_ns"]) / 1e9))
    rng = np.random.default_rng(20261203)
    hits = {g: 0 for g in TRUTH_W}
    n_ok = {g: 0 for g in TRUTH_W}
    trials = 300
    for _ in range(trials):
        runs = [_with_power(r, p + 2.0 * rng.standard_normal(len(p))) for r, p in zip(repeats, truth_w)]
        t = ep.resolve(runs, by="component")
        for row in t:
            g = str(row["group"])
            if row["identifiable"]:
                n_ok[g] += 1
                hits[g] += row["ci_low_w"] <= TRUTH_W[g] <= row["ci_high_w"]
    for g in ("attn", "mlp", "other"):
        assert n_ok[g] == trials
    pooled = sum(hits.values()) / sum(n_ok.values())
    assert 0.90 <= pooled <= 0.99, (hits, n_ok)
    for g in ("attn", "mlp"):
        assert 0.88 <= hits[g] / n_ok[g] <= 1.0, (g, hits[g], n_ok[g])


def test_a_real_noisy_source_gives_residuals_of_its_noise(repeats):
    model = tiny_model("tiny-llama", n_layers=2)
    ids = torch.tensor([[1, 2, 3]])
    runs = ep.repeat(model, lambda: model.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False),
                     n=3, seed=1, source="synthetic:power_w=5,attn_w=10,mlp_w=30,period_ms=5,noise_w=2",
                     baseline_s=0, save=False)
    d = design(runs, by="component")
    beta = np.array([TRUTH_W[g] for g in d["groups"]])
    resid = d["y_w"] - d["X"] @ beta
    assert len(resid) > 40
    assert 1.2 < resid.std() < 2.8


def _hand_run(calls, n_samples=6, period=100):
    x = np.zeros(n_samples, dtype=np.dtype(ep._core.SAMPLE_DTYPE))
    x["t_start_ns"] = np.arange(n_samples) * period
    x["t_end_ns"] = x["t_start_ns"] + period
    x["kind"] = 1
    for d in ("gpu_w", "ane_w", "dram_w", "package_w"):
        x[d] = np.nan
    c = np.zeros(len(calls), dtype=CALL_DTYPE)
    for i, (cid, pid, comp, a, b) in enumerate(calls):
        c[i]["call_id"], c[i]["parent_id"], c[i]["component"] = cid, pid, comp
        c[i]["t_start_ns"], c[i]["t_end_ns"], c[i]["layer"] = a, b, 0
    lay = c[c["component"] == "layer"]
    return x, RunData({"run_id": 1}, samples=x, layers=lay, components=c[c["component"] != "layer"])


def test_design_fractions_hand_worked():
    # sample 0: layer [10, 90) holding attn [20, 50) > q_proj [30, 40) and mlp [60, 80)
    # sample 1: mlp [150, 250) crossing into sample 2
    x, run = _hand_run([(0, -1, "layer", 10, 90), (1, 0, "attn", 20, 50), (2, 1, "q_proj", 30, 40),
                        (3, 0, "mlp", 60, 80), (4, -1, "mlp", 150, 250), (5, 4, "down_proj", 200, 210)],
                       n_samples=3)
    run.samples["cpu_w"] = 1.0
    d = design([run], by="component")
    X = d["X"]
    g = d["groups"].index
    np.testing.assert_allclose(X[:, g("attn")], [0.30, 0.0, 0.0])
    np.testing.assert_allclose(X[:, g("mlp")], [0.20, 0.50, 0.50])
    np.testing.assert_allclose(X[:, g("other")], [0.50, 0.50, 0.50])
    assert d["n_calls"]["attn"] == 1 and d["n_calls"]["mlp"] == 2


def test_groups_that_always_run_together_are_not_identifiable():
    # Every sample holds attn and mlp in the same 1:2 ratio (other varies): only their
    # mix is seen, so neither power can be told apart.
    calls = []
    cid = 0
    for k in range(8):
        t0 = 100 * k
        attn = 5 + 3 * (k % 4)
        calls += [(cid, -1, "attn", t0 + 1, t0 + 1 + attn), (cid + 1, -1, "mlp", t0 + 40, t0 + 40 + 2 * attn)]
        cid += 2
    x, run = _hand_run(calls, n_samples=8)
    X = design([run], by="component")["X"]
    g = design([run], by="component")["groups"].index
    run.samples["cpu_w"] = 15 * X[:, g("attn")] + 35 * X[:, g("mlp")] + 5 * X[:, g("other")]
    t = ep.resolve([run], by="component")
    assert not _row(t, "attn")["identifiable"] and np.isnan(_row(t, "attn")["power_w"])
    assert not _row(t, "mlp")["identifiable"]
    assert not _row(t, "norm")["identifiable"]   # never ran


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="by must be one of"):
        ep.resolve([], by="head")
    with pytest.raises(ValueError, match="at least one run"):
        ep.resolve([], by="component")
    with pytest.raises(ValueError, match="component rows"):
        ep.resolve([RunData({"run_id": 1}, samples=_hand_run([])[0])], by="component")


def test_cli_resolve_prints_the_table_from_stored_runs(tmp_path, capsys):
    import json

    from energyprof.cli.main import main

    db = str(tmp_path / "runs.db")
    model = tiny_model("tiny-llama", n_layers=2)
    ids = torch.tensor([[1, 2, 3]])
    runs = ep.repeat(model, lambda: model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False),
                     n=3, seed=2, source="synthetic:power_w=5,attn_w=10,mlp_w=30,period_ms=4", baseline_s=0,
                     db=db)
    run_ids = [str(r.run_id) for r in runs]
    assert main(["resolve", *run_ids, "--by", "component", "--db", db, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["label"] == RESOLVE_LABEL
    got = {g["group"]: g for g in out["groups"]}
    # Stored and reloaded runs give the same numbers as the sessions themselves.
    live = ep.resolve(runs, by="component")
    for row in live:
        if row["identifiable"]:
            assert got[str(row["group"])]["power_w"] == pytest.approx(float(row["power_w"]), rel=1e-9)
    assert got["attn"]["identifiable"] and got["attn"]["power_w"] == pytest.approx(15.0, rel=0.03)
    assert main(["resolve", *run_ids, "--db", db]) == 0
    text = capsys.readouterr().out
    assert RESOLVE_LABEL in text and "attn" in text
    assert main(["resolve", "x", "--db", db]) == 2


def test_the_report_shows_the_regression_table(repeats, tmp_path):
    from energyprof.views.report import report_body

    html = report_body(repeats[3])[0]
    assert "Power per component, " + RESOLVE_LABEL in html
    i = html.index('id="resolved"')
    assert ">attn<" in html[i:] and ">mlp<" in html[i:]


def test_module_doctests_run():
    import doctest

    import energyprof._dtypes as dtypes
    import energyprof.analysis.resolve as resolve_mod
    import energyprof.measure.repeat as repeat_mod

    for mod in (resolve_mod, repeat_mod, dtypes):
        assert doctest.testmod(mod).failed == 0


def test_by_layer_recovers_hand_made_powers():
    # 10 samples of 100 ns; in sample k layer 0 runs for 10 + 3k ns and layer 1 for
    # 40 - 3 (k^2 mod 7) ns (not linear in k: with both linear the three columns would span
    # only two dimensions, and resolve rightly calls that not identifiable).
    rows = []
    for k in range(10):
        t0 = 100 * k
        rows += [(2 * k, -1, "layer", t0 + 5, t0 + 15 + 3 * k),
                 (2 * k + 1, -1, "layer", t0 + 50, t0 + 90 - 3 * ((k * k) % 7))]
    x, run = _hand_run(rows, n_samples=10)
    run.layers["layer"] = [0, 1] * 10
    l0 = (10 + 3 * np.arange(10)) / 100
    l1 = (40 - 3 * ((np.arange(10) ** 2) % 7)) / 100
    run.samples["cpu_w"] = 20 * l0 + 50 * l1 + 5 * (1 - l0 - l1)   # hand-made truth: 20 W, 50 W, 5 W
    t = ep.resolve([run], by="layer")
    assert list(t["group"]) == ["layer.0", "layer.1", "other"]
    np.testing.assert_allclose(t["power_w"], [20.0, 50.0, 5.0], rtol=1e-9)
    assert t["identifiable"].all() and list(t["n_calls"]) == [10, 10, 0]


def test_phase_intervals_hand_worked():
    from energyprof.analysis.resolve import phase_intervals

    runs = [RunData({"run_id": i, "phases": {"prefill": {"energy_j": e}, "decode": {"energy_j": 10.0}}})
            for i, e in enumerate([1.0, 2.0, 3.0])]
    p = phase_intervals(runs)
    # mean 2, sd 1, t(0.975, 2) = 4.3027: half width 4.3027 / sqrt(3) = 2.4841
    assert p["prefill"]["mean"] == 2.0 and p["prefill"]["half_width"] == pytest.approx(2.4841, abs=1e-4)
    assert p["decode"]["sd"] == 0.0
