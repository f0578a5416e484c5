"""energyprof.analysis.multi: N runs side by side, checked against hand-worked numbers."""
import math

import pytest

from energyprof.analysis.multi import BETTER, MULTI_FIGURES, compare_runs
from energyprof.testing import synthetic_run


def _s(rid, energy, tokens_per_j, label="measured", source="rapl", out=10, dur=2.0):
    return {"run_id": rid, "name": f"r{rid}", "energy_j": energy, "tokens_per_j": tokens_per_j,
            "source_label": label, "source_kind": source, "output_tokens": out, "duration_s": dur}


def test_best_worst_spread_and_sigma_by_hand():
    runs = [_s(1, 10.0, 3.0), _s(2, 20.0, 1.0), _s(3, 40.0, 2.0)]
    r = compare_runs(runs, figures=["energy_j", "tokens_per_j", "tokens_per_s"])
    e = r["figures"]["energy_j"]
    # mean 70/3; deviations -40/3, -10/3, 50/3; sum of squares 4200/9; / (n-1) = 2100/9
    assert e["values"] == [10.0, 20.0, 40.0]
    assert e["mean"] == pytest.approx(70 / 3)
    assert e["sigma"] == pytest.approx(math.sqrt(2100 / 9))
    assert (e["best"], e["worst"], e["min"], e["max"], e["spread"]) == (0, 2, 10.0, 40.0, 4.0)
    t = r["figures"]["tokens_per_j"]  # higher is better
    assert (t["best"], t["worst"], t["spread"]) == (0, 1, 3.0)
    tps = r["figures"]["tokens_per_s"]  # derived: output_tokens / duration_s = 5 for all three
    assert tps["values"] == [5.0, 5.0, 5.0] and tps["best"] is None and tps["worst"] is None
    assert tps["sigma"] == 0.0 and tps["spread"] == 1.0
    assert r["label_mismatch"] is False and r["warnings"] == [] and r["run_ids"] == [1, 2, 3]


def test_missing_values_are_left_out_and_nonpositive_minimum_has_no_spread():
    runs = [_s(1, float("nan"), 1.0), _s(2, 5.0, 2.0), {"run_id": 3, "name": "x", "energy_j": 15.0}]
    r = compare_runs(runs, figures=["energy_j", "tokens_per_j", "net_energy_j"])
    e = r["figures"]["energy_j"]
    assert e["n"] == 2 and (e["best"], e["worst"]) == (1, 2) and e["spread"] == 3.0
    assert e["sigma"] == pytest.approx(math.sqrt(50.0))  # values 5, 15: mean 10, ((25 + 25) / 1) ** .5
    assert r["figures"]["tokens_per_j"]["n"] == 2
    assert r["figures"]["net_energy_j"]["n"] == 0 and r["figures"]["net_energy_j"]["best"] is None
    neg = compare_runs([_s(1, -1.0, 1.0), _s(2, 2.0, 1.0)], figures=["energy_j"])["figures"]["energy_j"]
    assert math.isnan(neg["spread"]) and neg["best"] == 0


def test_label_and_source_mismatch_warn():
    r = compare_runs([_s(1, 1.0, 1.0, "measured"), _s(2, 2.0, 1.0, "simulated", "synthetic")])
    assert r["label_mismatch"] and r["source_mismatch"] and len(r["warnings"]) == 2
    assert "r1: measured" in r["warnings"][0] and "r2: simulated" in r["warnings"][0]
    assert r["labels"] == ["measured", "simulated"]


def test_run_count_is_bounded_and_real_runs_work():
    with pytest.raises(ValueError, match="2 to 10"):
        compare_runs([_s(1, 1.0, 1.0)])
    with pytest.raises(ValueError, match="2 to 10"):
        compare_runs([_s(i, 1.0, 1.0) for i in range(11)])
    runs = [synthetic_run(n_layers=1, n_steps=n, seed=n) for n in (2, 4, 8)]
    r = compare_runs(runs)
    assert list(r["figures"]) == list(MULTI_FIGURES)
    want = [x.summary()["j_per_output_token"] for x in runs]
    jpt = r["figures"]["j_per_output_token"]
    assert jpt["values"] == want and jpt["best"] == want.index(min(want)) and jpt["worst"] == want.index(max(want))
    # each column carries its own run's resolution, as that run's summary states it
    assert r["resolution"] == [x.summary()["resolution"] for x in runs]
    assert [c["tokens"] for c in r["resolution"]] == [
        float(x.tokens["resolved"].mean()) for x in runs]
    # summaries from before resolution existed have none: .get, not a KeyError
    assert compare_runs([_s(1, 1.0, 1.0), _s(2, 2.0, 1.0)])["resolution"] == [None, None]
    assert set(BETTER) <= set(MULTI_FIGURES) | {"net_j_per_output_token"}
