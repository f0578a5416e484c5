"""energyprof.analysis.carbon: CO2 and cost per run and per 1M tokens, settings from arguments,
environment or the stated defaults; hand-computed values."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from energyprof import cli
from energyprof.analysis.carbon import (CO2_ENV, DEFAULT_CO2_G_PER_KWH, DEFAULT_PRICE_PER_KWH, PRICE_ENV, footprint,
                               footprint_runs, carbon_and_cost)
from energyprof.store.db import Store
from energyprof.store.rundata import RunData

KWH_J = 3.6e6


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv(CO2_ENV, raising=False)
    monkeypatch.delenv(PRICE_ENV, raising=False)


def _s(energy_j=7.2e5, out=500, inp=1500, net=3.6e5):
    return {"energy_j": energy_j, "net_energy_j": net, "output_tokens": out, "input_tokens": inp}


def test_defaults_are_stated_and_shared_with_the_report():
    assert DEFAULT_CO2_G_PER_KWH == 400.0 and DEFAULT_PRICE_PER_KWH == 0.15
    fp = footprint(_s())
    assert fp["settings"] == {"co2_g_per_kwh": 400.0, "price_per_kwh": 0.15, "co2_origin": "default",
                              "price_origin": "default"}
    cc = carbon_and_cost(7.2e5)
    assert fp["co2_g"]["value"] == pytest.approx(cc["co2_g"]) and fp["cost"]["value"] == pytest.approx(cc["cost"])


def test_footprint_by_hand():
    fp = footprint(_s(), co2_g_per_kwh=250.0, price_per_kwh=0.3)
    kwh = 7.2e5 / KWH_J  # 0.2 kWh
    assert fp["kwh"]["value"] == pytest.approx(0.2) and fp["kwh"]["unit"] == "kWh"
    assert fp["co2_g"]["value"] == pytest.approx(50.0) and fp["co2_g"]["unit"] == "gCO2"
    assert fp["cost"]["value"] == pytest.approx(0.06)
    assert fp["co2_g_per_1m_output_tokens"]["value"] == pytest.approx(50.0 / 500 * 1e6)
    assert fp["cost_per_1m_output_tokens"]["value"] == pytest.approx(0.06 / 500 * 1e6)
    assert fp["kwh_per_1m_output_tokens"]["value"] == pytest.approx(kwh / 500 * 1e6)
    assert fp["co2_g_per_1m_tokens"]["value"] == pytest.approx(50.0 / 2000 * 1e6)
    assert fp["cost_per_1m_tokens"]["unit"] == "currency/1M tokens"
    assert math.isnan(fp["co2_g"]["se"])  # one run: no spread
    net = footprint(_s(), co2_g_per_kwh=250.0, net=True)
    assert net["co2_g"]["value"] == pytest.approx(25.0)


def test_environment_settings(monkeypatch):
    monkeypatch.setenv(CO2_ENV, "100")
    monkeypatch.setenv(PRICE_ENV, "0.5")
    fp = footprint(_s())
    assert fp["co2_g"]["value"] == pytest.approx(20.0) and fp["cost"]["value"] == pytest.approx(0.1)
    assert fp["settings"]["co2_origin"] == f"${CO2_ENV}"
    # an argument beats the environment
    assert footprint(_s(), co2_g_per_kwh=0.0)["co2_g"]["value"] == 0.0
    monkeypatch.setenv(CO2_ENV, "lots")
    with pytest.raises(ValueError, match=CO2_ENV):
        footprint(_s())
    with pytest.raises(ValueError):
        footprint(_s(), price_per_kwh=-1.0)


def test_no_tokens_gives_nan_per_token():
    fp = footprint(_s(out=0, inp=0))
    assert math.isnan(fp["co2_g_per_1m_output_tokens"]["value"])
    assert fp["co2_g"]["value"] > 0


def test_footprint_runs_mean_and_interval():
    runs = [RunData(_s(energy_j=e)) for e in (3.6e5, 7.2e5, 1.08e6)]
    res = footprint_runs(runs, co2_g_per_kwh=1000.0)
    co2 = res["figures"]["co2_g"]  # 100, 200, 300 g
    assert co2["value"] == pytest.approx(200.0) and co2["n"] == 3
    assert co2["se"] == pytest.approx(100.0 / math.sqrt(3))
    assert co2["ci95"][1] - 200.0 == pytest.approx(4.303 * 100.0 / math.sqrt(3), abs=0.1)
    assert len(res["runs"]) == 3
    with pytest.raises(ValueError):
        footprint_runs([])


def test_cli_carbon(tmp_path, capsys):
    db = str(tmp_path / "c.db")
    with Store(db) as st:
        ids = [st.save(RunData(dict(_s(energy_j=e), started_at="2026-01-01T00:00:00Z"))) for e in (3.6e5, 7.2e5)]
    assert cli.main(["carbon", *map(str, ids), "--db", db, "--co2-g-per-kwh", "1000", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["figures"]["co2_g"]["value"] == pytest.approx(150.0)
    assert res["settings"]["co2_origin"] == "argument"
    assert cli.main(["carbon", str(ids[0]), "--db", db]) == 0
    assert "400 gCO2/kWh (default)" in " ".join(capsys.readouterr().out.split())
    assert cli.main(["carbon", "999", "--db", db]) == 2
    assert cli.main(["carbon", "x", "--db", db]) == 2
    assert np.isfinite(res["figures"]["cost"]["value"])
