"""NVML as it really behaves, on the fake libnvidia-ml.so.1 in its wave mode: a square wave
of true power, an energy counter that advances only every FAKE_NVML_UPDATE_MS, a
nvmlDeviceGetPowerUsage averaged over the last second (Ampere and later) and the instant
power field.  Oracle: the wave itself (low / high watts, known period and origin).
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

import energyprof as ep
from energyprof import _core
from test_nvml import build_fake

LOW_W, HIGH_W, PERIOD_MS = 50.0, 200.0, 160.0


@pytest.fixture
def wave(tmp_path, monkeypatch):
    lib = build_fake(tmp_path)
    monkeypatch.setenv("ENERGYPROF_NVML_LIB", str(lib))
    for var in ("FAKE_NVML_SCRIPT", "FAKE_NVML_LOG", "FAKE_NVML_INIT", "FAKE_NVML_COUNT", "FAKE_NVML_NO_COUNTER",
                "FAKE_NVML_NO_FIELDS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FAKE_NVML_WAVE", f"{LOW_W},{HIGH_W},{PERIOD_MS}")
    monkeypatch.setenv("FAKE_NVML_UPDATE_MS", "100")
    monkeypatch.delenv("ENERGYPROF_NVML_ALIGN", raising=False)
    monkeypatch.setenv("FAKE_NVML_T0_NS", str(time.monotonic_ns()))
    return monkeypatch


def _gen(model, n):
    import torch

    return model.generate(torch.tensor([[1, 2, 3, 4]]), max_new_tokens=n, min_new_tokens=n, do_sample=False)


def test_a_100ms_counter_never_shows_0w_or_double_power(wave):
    torch = pytest.importorskip("torch")
    from energyprof.tiny import tiny_model

    model = tiny_model("tiny-llama", n_layers=2)
    model(torch.tensor([[1, 2]]))
    with ep.run(model, source="nvml", interval_ms=20, baseline_s=0.3, save=False) as s:
        _gen(model, 24)
    meta = s.summary()["source_meta"]
    assert meta["mode"] == "energy_counter"
    x = s.samples
    # Counter reads every 20 ms and at every forward's edges, the counter moving every 100 ms:
    # most reads are stale.  Without the rule they would be 0 W samples, then ones holding a
    # whole 100 ms tick of energy in a few ms (many times HIGH_W).  With it every sample runs
    # from one moving read to the next, so it holds whole ticks: its energy is the wave's over
    # its window give or take one tick at each end.
    ok = ~np.isnan(x["gpu_w"])
    dt_s = ((x["t_end_ns"] - x["t_start_ns"]) / 1e9)[ok]
    e_j = x["gpu_w"][ok] * dt_s
    tick_s = 0.1
    assert (x["gpu_w"][ok] > 0).all()
    assert (dt_s >= tick_s * 0.5).all()                  # no sliver between two stale reads
    assert (e_j <= HIGH_W * (dt_s + tick_s) + 1e-3).all()
    assert (e_j >= LOW_W * (dt_s - tick_s) - 1e-3).all()
    assert (s.tokens["energy_j"] > 0).all()
    br = s.summary()["boundary_reads"]
    assert br["enabled"]
    # The stale reads measured the update period: at least one poll interval unchanged.
    assert br["counter_update_period_s"] >= 0.015
    # No token is shorter than... every token shorter than that period is unresolved.
    dur = (s.tokens["t_end_ns"] - s.tokens["t_start_ns"]) / 1e9
    assert not s.tokens["resolved"][dur < br["counter_update_period_s"]].any()


def test_without_the_counter_the_instant_power_field_is_read_and_recorded(wave):
    wave.setenv("FAKE_NVML_NO_COUNTER", "1")
    with ep.Sampler("nvml", interval_ms=10) as smp:
        time.sleep(0.5)
    x = smp.samples
    assert json.loads(smp.meta_json)["mode"] == "power_instant"
    assert (x["kind"] == _core.KIND_INSTANT).all() and len(x) >= 10
    # Instant readings are the wave's levels themselves, never the 1-s mean in between.
    assert set(np.unique(x["gpu_w"]).tolist()) <= {LOW_W, HIGH_W}


def test_an_old_driver_falls_back_to_the_1s_average_and_says_so(wave):
    wave.setenv("FAKE_NVML_NO_COUNTER", "1")
    wave.setenv("FAKE_NVML_NO_FIELDS", "1")
    wave.setenv("FAKE_NVML_T0_NS", str(time.monotonic_ns() - 5_000_000_000))   # a wave running for 5 s
    with ep.Sampler("nvml", interval_ms=10) as smp:
        time.sleep(0.3)
    x = smp.samples
    assert json.loads(smp.meta_json)["mode"] == "power_usage"
    # The 1-s mean of a 50 / 200 W wave of 160 ms period: between the levels, near 125 W.
    assert (np.abs(x["gpu_w"] - 125.0) < 20.0).all()
