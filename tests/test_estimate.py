"""The estimate source: CPU power modelled from the process's CPU time.

Oracle: Python's resource.getrusage(RUSAGE_SELF) read just before and just after
each source call, so the CPU time the C source saw lies between the two readings;
the model (energyprof._reference.estimate_power_w) applied to both ends bounds
the estimate.  The bracket is the only tolerance (getrusage has 1 us resolution).
"""
import json
import os
import resource
import threading

import numpy as np
import pytest

import energyprof as ep
from energyprof import _core
from energyprof import _reference as ref

N_CPU = os.sysconf("SC_NPROCESSORS_ONLN")
US = 1e-6


def cpu_ns() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return (r.ru_utime + r.ru_stime) * 1e9


def burn(n: int) -> None:
    x = 0
    for i in range(n):
        x += i * i


def bracketed(call):
    before = cpu_ns()
    out = call()
    after = cpu_ns()
    return before, out, after


def run_interval(driver, work):
    t0 = _core.now_ns()
    c0a, _, c0b = bracketed(lambda: driver.start(t0))
    work()
    c1a = cpu_ns()
    t1 = _core.now_ns()
    s = driver.poll(t1)
    c1b = cpu_ns()
    return t0, t1, (c0a, c0b), (c1a, c1b), s


@pytest.mark.parametrize("params", [
    {"watts_per_core": "10", "idle_w": "2"},
    {"watts_per_core": "3.5"},
    {"tdp_w": "64", "idle_w": "1.5"},
])
def test_estimate_equals_model_on_measured_cpu_time(params):
    d = _core.SourceDriver("estimate", params)
    meta = json.loads(d.meta_json)
    wpc = float(params.get("watts_per_core", float(params.get("tdp_w", 0)) / N_CPU))
    idle = float(params.get("idle_w", 0))
    tdp = float(params.get("tdp_w", 0))
    assert meta["watts_per_core"] == pytest.approx(wpc, rel=1e-15) and meta["n_cpu"] == N_CPU
    th = threading.Thread(target=burn, args=(300_000,))
    t0, t1, (c0a, c0b), (c1a, c1b), s = run_interval(d, lambda: (th.start(), th.join()))
    assert len(s) == 1
    assert (s["t_start_ns"][0], s["t_end_ns"][0]) == (t0, t1)
    assert s["flags"][0] == _core.SFLAG_ESTIMATED and s["kind"][0] == _core.KIND_INTERVAL
    lo = ref.estimate_power_w(c1a - c0b - 2e3, t1 - t0, N_CPU, wpc, idle, tdp)
    hi = ref.estimate_power_w(c1b - c0a + 2e3, t1 - t0, N_CPU, wpc, idle, tdp)
    assert lo <= s["cpu_w"][0] <= hi
    assert s["cpu_w"][0] > idle  # the burn shows up
    assert np.isnan(s["gpu_w"][0]) and np.isnan(s["package_w"][0])


def test_tdp_caps_the_estimate():
    d = _core.SourceDriver("estimate", {"watts_per_core": "1000000", "tdp_w": "7"})
    *_, s = run_interval(d, lambda: burn(200_000))
    assert s["cpu_w"][0] == 7.0


def test_defaults_and_metadata():
    meta = json.loads(_core.SourceDriver("estimate").meta_json)
    assert meta["watts_per_core"] == 5.0 and meta["idle_w"] == 0.0 and meta["tdp_w"] is None
    assert meta["watts_per_core_from"] == "default" and meta["label"] == "estimated"
    assert meta["cpu_time"] == "getrusage(RUSAGE_SELF)"
    meta = json.loads(_core.SourceDriver("estimate", {"tdp_w": "40"}).meta_json)
    assert meta["watts_per_core"] == pytest.approx(40 / N_CPU) and meta["watts_per_core_from"] == "tdp_w / n_cpu"


def test_sampler_labels_every_sample_estimated():
    with ep.Sampler("estimate:watts_per_core=4", interval_ms=5) as s:
        burn(200_000)
    assert s.label == "estimated"
    assert s.source.flags & _core.SRC_ESTIMATED
    samples = s.samples
    assert len(samples) > 0
    assert (samples["flags"] & _core.SFLAG_ESTIMATED).all()
    assert (samples["cpu_w"] >= 0).all() and (samples["cpu_w"] <= 4 * N_CPU).all()
    assert (samples["t_start_ns"][1:] == samples["t_end_ns"][:-1]).all()


def test_bad_parameters():
    with pytest.raises(ValueError, match="watts_per_core must be a number of watts >= 0, got 'abc'"):
        _core.SourceDriver("estimate", {"watts_per_core": "abc"})
    with pytest.raises(ValueError, match="unknown parameter 'cores'"):
        _core.SourceDriver("estimate", {"cores": "2"})
    with pytest.raises(ValueError, match="watts_per_core"):
        ep.Sampler("estimate:watts_per_core=-1")


def test_ep_run_labels_the_run_estimated_with_the_model_constants():
    import torch
    from energyprof.tiny import tiny_model
    model = tiny_model("tiny-llama")
    with ep.run(model, source="estimate:watts_per_core=4,idle_w=1", baseline_s=0, save=False) as s:
        model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    sm = s.summary()
    assert sm["source_label"] == "estimated"
    assert sm["source_meta"]["watts_per_core"] == 4 and sm["source_meta"]["idle_w"] == 1
    assert sm["source_meta"]["model"].startswith("idle_w + min(cpu_time/wall_time, n_cpu) * watts_per_core")
    assert (s.samples["flags"] & _core.SFLAG_ESTIMATED).all()
    # Every sample is at least idle_w and at most idle_w + n_cpu * watts_per_core.
    assert ((s.samples["cpu_w"] >= 1) & (s.samples["cpu_w"] <= 1 + 4 * N_CPU)).all()
