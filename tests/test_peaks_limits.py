"""Peaks and limits (issue 16, part 6): peak power per domain with its time, and power as a
share of a limit the source knows (RAPL's max power from a fake powercap tree, NVML's power
limit, the estimate's TDP) or one that was stated.

Oracles: the run's own samples searched by a plain loop; a ramp waveform whose peak is its
last sample; limits written into the fake sysfs tree by the test.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import energyprof as ep
from energyprof._dtypes import DOMAINS
from energyprof.measure.limits import peak_shares, power_limits, rapl_max_power_w
from energyprof.tiny import tiny_model

RAMP = "synthetic:power_w=1,ramp_w_per_s=300,period_ms=1"


@pytest.fixture(scope="module")
def ramp_run():
    model = tiny_model("tiny-llama")
    with ep.run(model, source=RAMP, baseline_s=0, save=False, power_limit_w={"total": 400.0, "cpu": 50.0}) as s, \
            torch.no_grad():
        model.generate(torch.tensor([[4, 5, 6]]), max_new_tokens=4, min_new_tokens=4, do_sample=False)
    return s


def test_peaks_per_domain_are_the_largest_sample_with_its_time(ramp_run):
    s = ramp_run
    sm = s.summary()
    run = s.sections[s.sections["kind"] == "run"][0]
    t0, t1 = int(run["t_start_ns"]), int(run["t_end_ns"])
    smp = s.samples
    peaks = sm["peaks"]
    measured = [d for d in DOMAINS if not np.all(np.isnan(smp[f"{d}_w"]))]
    assert set(peaks) == set(measured) | {"total"}
    for d in measured:
        best, when = -math.inf, None
        for r in smp:            # a plain loop over the samples that overlap the run
            if r["t_end_ns"] > t0 and r["t_start_ns"] < t1 and r[f"{d}_w"] > best:
                best, when = float(r[f"{d}_w"]), (max(int(r["t_start_ns"]) - t0, 0) / 1e9, (int(r["t_end_ns"]) - t0) / 1e9)
        assert peaks[d]["power_w"] == best, d
        assert peaks[d]["t_s"] == pytest.approx(when[0], abs=1e-12) and peaks[d]["t_end_s"] == pytest.approx(when[1])
    # a rising ramp peaks in its last sample, at the end of the run
    assert peaks["total"]["t_end_s"] >= (t1 - t0) / 1e9 - 1e-9
    assert peaks["total"]["power_w"] == pytest.approx(sm["peak_power_w"])


def test_stated_limits_give_the_shares(ramp_run):
    sm = ramp_run.summary()
    lim = sm["power_limits"]
    assert lim["total"] == {"limit_w": 400.0, "from": "stated"} and lim["cpu"]["limit_w"] == 50.0
    p = sm["peaks"]
    assert p["total"]["share_of_limit"] == pytest.approx(p["total"]["power_w"] / 400.0)
    mean_w = sm["energy_j"] / sm["duration_s"]
    assert p["total"]["mean_share_of_limit"] == pytest.approx(mean_w / 400.0, rel=1e-9)
    if "cpu" in p:
        assert p["cpu"]["share_of_limit"] == pytest.approx(p["cpu"]["power_w"] / 50.0)
    for d in set(p) - {"total", "cpu"}:
        assert math.isnan(p[d]["share_of_limit"])        # no limit known for it


def test_the_report_shows_peaks_and_limits(ramp_run, tmp_path):
    from energyprof.views.report import write_report

    doc = write_report(ramp_run, tmp_path / "r.html").read_text(encoding="utf-8")
    assert 'id="peaks"' in doc and "400 W (stated)" in doc


def _powercap(root, zones):
    """A fake /sys/class/powercap tree: {zone dir: (name, [max_power_uw of constraints 0, 1])}."""
    for zone, (name, maxes) in zones.items():
        d = root / zone if zone.count(":") == 1 else root / zone.rsplit(":", 1)[0] / zone
        d.mkdir(parents=True, exist_ok=True)
        (d / "name").write_text(name + "\n")
        for k, uw in enumerate(maxes):
            (d / f"constraint_{k}_max_power_uw").write_text(f"{uw}\n")
            (d / f"constraint_{k}_name").write_text(("long_term", "short_term")[k] + "\n")


def test_rapl_max_power_from_the_powercap_tree(tmp_path):
    _powercap(tmp_path, {"intel-rapl:0": ("package-0", [65_000_000, 90_000_000]),
                         "intel-rapl:1": ("package-1", [45_000_000]),
                         "intel-rapl:0:1": ("dram", [12_500_000])})
    meta = {"root": str(tmp_path), "zones": ["intel-rapl:0 package-0 -> package", "intel-rapl:1 package-1 -> package",
                                             "intel-rapl:0:1 dram -> dram"]}
    # two packages sum (long-term constraints 65 + 45 W), DRAM apart
    assert rapl_max_power_w(meta) == {"package": 110.0, "dram": 12.5}
    lim = power_limits("rapl", meta)
    assert lim["package"] == {"limit_w": 110.0, "from": "rapl max power"}
    # a stated limit wins over the source's
    assert power_limits("rapl", meta, {"package": 80})["package"] == {"limit_w": 80.0, "from": "stated"}
    assert power_limits("nvml", {"power_limit_w": 300.0}) == {"gpu": {"limit_w": 300.0, "from": "nvml power limit"}}
    assert power_limits("estimate", {"tdp_w": 28}) == {"cpu": {"limit_w": 28.0, "from": "estimate tdp_w"}}
    assert rapl_max_power_w({"root": str(tmp_path / "missing")}) == {}


def test_bad_limits_are_refused_naming_what_was_wrong():
    with pytest.raises(ValueError, match="positive number"):
        power_limits(None, None, -5)
    with pytest.raises(ValueError, match="unknown domain 'gpux'"):
        power_limits(None, None, {"gpux": 10})
    with pytest.raises(ValueError, match="power_limit_w"):
        ep.run(tiny_model("tiny-llama"), source=RAMP, save=False, power_limit_w="lots")
    got = peak_shares({"gpu": {"power_w": 150.0, "t_s": 0.2}}, {"gpu": 30.0}, 1.0,
                      {"gpu": {"limit_w": 300.0, "from": "nvml power limit"}})["gpu"]
    assert (got["share_of_limit"], got["mean_share_of_limit"]) == (0.5, 0.1)


@pytest.mark.parametrize("piece", [3, 7, 65536])
def test_peaks_read_in_pieces_are_the_first_highest_sample(monkeypatch, piece):
    """_peaks reads the samples PEAK_PIECE_SAMPLES at a time: with pieces of 3 and 7 the answer
    is a plain loop's over every sample (the first of equal highest values; NaN never wins;
    samples outside the run left out)."""
    from energyprof import _core
    from energyprof.measure import attribution as A

    rng = np.random.default_rng(3)
    n = 50
    s = np.zeros(n, _core.SAMPLE_DTYPE)
    s["kind"] = _core.KIND_INTERVAL
    s["t_start_ns"] = np.arange(n) * 10
    s["t_end_ns"] = s["t_start_ns"] + 10
    for d in DOMAINS:
        s[f"{d}_w"] = np.nan
    s["cpu_w"] = rng.integers(0, 5, n).astype(float)          # many ties
    s["gpu_w"] = rng.integers(0, 5, n).astype(float)
    s["gpu_w"][::4] = np.nan
    s["cpu_w"][45] = 99.0                                      # highest, but outside the run below
    measured = [not np.isnan(s[f"{d}_w"]).all() for d in DOMAINS]
    monkeypatch.setattr(A, "PEAK_PIECE_SAMPLES", piece)
    t0, t1 = 5, 440                                            # samples 0 .. 43 overlap the run
    got = A._peaks(s, t0, t1, measured)
    for d in ("cpu", "gpu"):
        best, at = -math.inf, None
        for i in range(n):
            v = s[f"{d}_w"][i]
            if s["t_end_ns"][i] > t0 and s["t_start_ns"][i] < t1 and not math.isnan(v) and v > best:
                best, at = v, i
        assert got[d]["power_w"] == best
        assert got[d]["t_s"] == pytest.approx(max(int(s["t_start_ns"][at]) - t0, 0) * 1e-9)
        assert got[d]["t_end_s"] == pytest.approx((int(s["t_end_ns"][at]) - t0) * 1e-9)
    assert "ane" not in got and "total" in got
