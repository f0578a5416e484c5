"""energyprof.measure.sweep / energyprof.analysis.sweep: a real sweep on tiny-llama with the synthetic source, the table's CI math,
and the analyses (batch scaling, context scaling, Pareto frontier) on constructed runs with
known coefficients."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

import energyprof as ep
from energyprof import cli
from energyprof.analysis.sweep import (SWEEP_DTYPE, SweepResult, batch_scaling, context_scaling, load_sweep,
                                       pareto_frontier, sweep_table)
from energyprof.views.analysis_plots import plot_batch_scaling, plot_context_scaling, plot_pareto
from energyprof.tiny import tiny_model

SOURCE = "synthetic:power_w=10,period_ms=1"


@pytest.fixture(scope="module")
def model():
    return tiny_model("tiny-llama", n_layers=1, hidden_size=32, n_heads=2, n_kv_heads=1, intermediate_size=64)


@pytest.fixture(scope="module")
def swept(model, tmp_path_factory):
    db = str(tmp_path_factory.mktemp("sweep") / "runs.db")
    res = ep.sweep(model, batch_sizes=[1, 2], prompt_lengths=[4, 8], max_new_tokens=[3], repeats=2, source=SOURCE,
                   db=db, baseline_s=0, progress=False, tags=["test"])
    return res, db


def test_sweep_runs_the_grid(swept):
    res, db = swept
    assert isinstance(res, SweepResult) and len(res.runs) == 8
    t = res.table
    assert t.dtype == SWEEP_DTYPE and len(t) == 4
    assert list(zip(t["batch_size"], t["prompt_length"], t["max_new_tokens"])) == [(1, 4, 3), (1, 8, 3), (2, 4, 3),
                                                                                 (2, 8, 3)]
    assert np.all(t["n"] == 2)
    for s in res.runs:
        b = s["batch_size"]
        assert s["status"] == "completed"
        assert "test" in s["tags"] and f"sweep:{res.sweep_id}" in s["tags"]
        assert s["output_tokens"] == 3 * b
        # constant 10 W source: energy is power × time exactly
        assert s["energy_j"] == pytest.approx(10.0 * s["duration_s"], rel=1e-6)
    assert all(isinstance(i, int) for i in res.run_ids)


def test_sweep_table_is_mean_and_t_interval_of_the_runs(swept):
    res, _ = swept
    for row in res.table:
        group = [s for s in res.runs if s["batch_size"] == row["batch_size"]
                 and s["input_tokens"] == row["batch_size"] * row["prompt_length"]]
        v = np.array([s["j_per_output_token"] for s in group])
        assert row["j_per_output_token"] == pytest.approx(v.mean())
        # n = 2: half-width = t(0.975, 1) · sd / sqrt(2) with t = 12.706 from the table
        assert row["j_per_output_token_ci95"] == pytest.approx(12.706 * v.std(ddof=1) / math.sqrt(2), rel=1e-4)
        assert row["prefill_j_per_input_token"] == pytest.approx(
            np.mean([s["phases"]["prefill"]["energy_j"] / s["phases"]["prefill"]["tokens"] for s in group]))


def test_load_sweep_from_store(swept):
    res, db = swept
    again = load_sweep(res.sweep_id, db=db)
    assert sorted(again.run_ids) == sorted(res.run_ids)
    for f in ("energy_j", "j_per_output_token", "tokens_per_s"):
        np.testing.assert_allclose(again.table[f], res.table[f], rtol=1e-9)
    with pytest.raises(KeyError):
        load_sweep("nope", db=db)
    df = again.to_pandas()
    assert list(df.columns) == list(SWEEP_DTYPE.names)


def test_sweep_argument_errors(model):
    with pytest.raises(ValueError, match="batch_sizes"):
        ep.sweep(model, batch_sizes=[], save=False, progress=False)
    with pytest.raises(ValueError, match="prompt_lengths"):
        ep.sweep(model, prompt_lengths=[0], save=False, progress=False)
    with pytest.raises(ValueError, match="repeats"):
        ep.sweep(model, repeats=0, save=False, progress=False)
    with pytest.raises(TypeError):
        ep.sweep(42, save=False, progress=False)
    with pytest.raises(ValueError, match="unknown tiny model"):
        ep.sweep("tiny-nothing", save=False, progress=False)
    with pytest.raises(ValueError, match="prompts"):
        ep.sweep(model, prompts="poetry", save=False, progress=False, source=SOURCE, baseline_s=0)


def test_sweep_factory_and_text_prompts(model):
    res = ep.sweep(lambda: model, batch_sizes=[1], prompt_lengths=[5], max_new_tokens=[2], repeats=1, source=SOURCE,
                   save=False, progress=False, prompts="text", warmup=False)
    assert res.runs[0]["input_tokens"] == 5 and res.run_ids == [None]
    assert math.isnan(res.table["energy_j_ci95"][0])  # one repeat: no interval


def test_sweep_interleaved_order(model):
    res = ep.sweep(model, batch_sizes=[1, 2], prompt_lengths=[3], max_new_tokens=[2], repeats=2, source=SOURCE,
                   save=False, progress=False, warmup=False, interleave=True)
    assert [s["batch_size"] for s in res.runs] == [1, 2, 1, 2]
    assert list(res.table["n"]) == [2, 2]


# ----------------------------------------------------------------------------- constructed runs
def _run(b, p, n, energy, prefill_energy, duration, tags=()):
    return {"batch_size": b, "input_tokens": b * p, "output_tokens": b * n, "energy_j": energy,
            "net_energy_j": energy, "duration_s": duration, "j_per_output_token": energy / (b * n),
            "j_per_token": energy / (b * (p + n)), "tokens_per_j": b * n / energy, "edp_js": energy * duration,
            "status": "completed", "tags": list(tags),
            "phases": {"prefill": {"energy_j": prefill_energy, "tokens": b * p, "duration_s": duration / 4},
                       "decode": {"energy_j": energy - prefill_energy, "tokens": b * (n - 1),
                                  "duration_s": duration / 2}}}


def test_sweep_table_groups_constructed_runs():
    runs = [_run(1, 8, 4, e, 1.0, 1.0) for e in (2.0, 4.0, 6.0)] + [_run(2, 8, 4, 5.0, 1.0, 1.0)]
    t = sweep_table(runs)
    assert len(t) == 2 and list(t["n"]) == [3, 1]
    assert t["energy_j"][0] == 4.0 and t["energy_j_sd"][0] == 2.0
    assert t["energy_j_ci95"][0] == pytest.approx(4.303 * 2.0 / math.sqrt(3), abs=1e-3)
    assert t["tokens_per_s"][1] == 8.0


def test_context_scaling_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    a, b, c = 0.05, 2e-3, 4e-6
    runs = []
    for B in (1, 4):
        for P in (16, 64, 128, 256, 512, 1024):
            for _ in range(3):
                e = a + b * B * P + c * B * P * P + rng.normal(0, 0.01)
                runs.append(_run(B, P, 8, e + 1.0, e, 1.0))
    cs = context_scaling(runs)
    co = cs["coefficients"]
    for name, true in (("intercept_j", a), ("j_per_token", b), ("j_per_token_sq", c)):
        assert co[name]["ci95"][0] <= true <= co[name]["ci95"][1], name
    assert co["j_per_token"]["unit"] == "J/token" and co["j_per_token_sq"]["unit"] == "J/token²"
    assert cs["n"] == 36 and cs["r2"] > 0.999
    # exact data: exact coefficients
    exact = [_run(1, P, 8, 1.0, a + b * P + c * P * P, 1.0) for P in (10, 20, 40, 80)]
    co2 = context_scaling(exact)["coefficients"]
    assert co2["j_per_token"]["value"] == pytest.approx(b, rel=1e-9)
    assert co2["j_per_token_sq"]["value"] == pytest.approx(c, rel=1e-7)
    lin = context_scaling(exact[:3], quadratic=False)
    assert "j_per_token_sq" not in lin["coefficients"]
    with pytest.raises(ValueError, match="3 distinct prompt lengths"):
        context_scaling([_run(1, P, 8, 1.0, 0.5, 1.0) for P in (10, 10, 20, 20)])


def _batch_runs(rng):
    runs = []
    for B in (1, 2, 4, 8, 16):
        for P in (32, 128):
            for _ in range(3):
                jpt = (0.5 if P == 32 else 0.9) * B ** -0.7 * math.exp(rng.normal(0, 0.03))
                runs.append(_run(B, P, 10, jpt * B * 10, 0.1, 1.0))
    return runs


def test_batch_scaling_power_law():
    bs = batch_scaling(_batch_runs(np.random.default_rng(0)))
    ex = bs["exponent"]
    assert abs(ex["value"] + 0.7) < 0.03 and ex["unit"] == "1"
    assert len(bs["rows"]) == 10 and bs["rows"][0]["n"] == 3 and bs["unit"] == "J/token"
    # the 95 % interval of the exponent covers the true -0.7 in about 95 % of repetitions
    covered = sum(lo <= -0.7 <= hi for lo, hi in
                  (batch_scaling(_batch_runs(np.random.default_rng(s)))["exponent"]["ci95"] for s in range(100)))
    assert 88 <= covered <= 100
    one = batch_scaling([_run(1, 8, 4, 1.0, 0.1, 1.0)] * 3)
    assert one["exponent"] is None


def test_pareto_frontier_by_hand():
    t = np.zeros(5, dtype=SWEEP_DTYPE)
    t["tokens_per_s"] = [10, 20, 30, 25, 5]
    t["j_per_output_token"] = [1.0, 0.8, 0.9, 0.7, 0.5]
    # (20, .8) is beaten by (25, .7); (10, 1.0) by every faster+cheaper point
    assert pareto_frontier(t).tolist() == [4, 3, 2]


def test_sweep_plots():
    runs = [_run(B, P, 8, 1.0 + 0.1 * B + 0.001 * P, 0.01 * B * P, 0.5 + 0.01 * B) for B in (1, 2)
            for P in (8, 16, 32) for _ in range(2)]
    res = SweepResult("x", runs)
    assert "batch" in plot_batch_scaling(res).axes[0].get_xlabel()
    assert "prompt length" in plot_context_scaling(res).axes[0].get_xlabel()
    assert plot_pareto(res).axes[0].get_title() == "throughput vs energy"


# ----------------------------------------------------------------------------- CLI
def test_cli_sweep_json(tmp_path, capsys):
    db = str(tmp_path / "cli.db")
    rc = cli.main(["sweep", "--model", "tiny-llama", "--batch-sizes", "1,2", "--prompt-lengths", "4",
                   "--max-new-tokens", "2", "--repeats", "2", "--source", SOURCE, "--db", db, "--json",
                   "--no-progress", "--csv", str(tmp_path / "t.csv")])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["table"]) == 2 and out["table"][0]["n"] == 2 and len(out["run_ids"]) == 4
    assert (tmp_path / "t.csv").read_text().splitlines()[0].startswith("engine,batch_size,prompt_length")
    rc = cli.main(["sweep", "--load", out["sweep_id"], "--db", db, "--plot", str(tmp_path / "fig")])
    assert rc == 0 and "Pareto" in capsys.readouterr().out
    assert (tmp_path / "fig-batch.png").stat().st_size > 0 and (tmp_path / "fig-pareto.png").exists()
    assert not (tmp_path / "fig-context.png").exists()  # one prompt length: nothing to fit


def test_cli_sweep_user_errors(tmp_path, capsys):
    db = str(tmp_path / "cli.db")
    assert cli.main(["sweep", "--model", "tiny-llama", "--batch-sizes", "1,x", "--db", db]) == 2
    assert "--batch-sizes" in capsys.readouterr().err
    assert cli.main(["sweep", "--db", db]) == 2
    assert cli.main(["sweep", "--model", "tiny-llama", "--source", "nosuch:x=1", "--db", db]) == 2
    assert cli.main(["sweep", "--load", "missing", "--db", db]) == 2


@pytest.mark.parametrize("argv", [["--help"], ["sweep", "--help"], ["predict", "--help"], ["carbon", "--help"]])
def test_cli_help_renders(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 0
    assert "usage" in capsys.readouterr().out
