"""Several GPUs in one process: ``nvml:devices=0,1`` / ``devices=all`` on the fake
libnvidia-ml.so.1 (tests/fake_nvml/fake_nvml.c) with several devices.

Oracles, written apart from the code under test: the fake's per-device script (each
device's counter readings, differenced here by hand), and in its real-card mode each
device's constant power (FAKE_NVML_DEVICE_W) times the run window's length, with an error
bound worked out here from the counter's update period.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

import energyprof as ep
from energyprof import _core
from energyprof.errors import DeviceError, UserError
from test_nvml import build_fake

SEC = 1_000_000_000
MS100 = SEC // 10
WATTS = (100.0, 250.0)
UPDATE_MS = 2.0


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """The fake library selected through the environment; no script, one device, until set."""
    lib = build_fake(tmp_path)
    monkeypatch.setenv("ENERGYPROF_NVML_LIB", str(lib))
    for var in ("FAKE_NVML_SCRIPT", "FAKE_NVML_LOG", "FAKE_NVML_INIT", "FAKE_NVML_COUNT", "FAKE_NVML_NO_COUNTER",
                "FAKE_NVML_NO_FIELDS", "FAKE_NVML_WAVE", "FAKE_NVML_DEVICE_W", "FAKE_NVML_NO_COUNTER_ON",
                "FAKE_NVML_T0_NS", "ENERGYPROF_NVML_ALIGN"):
        monkeypatch.delenv(var, raising=False)

    class Fake:
        def script(self, lines, count):
            path = tmp_path / "script.txt"
            path.write_text("\n".join(lines) + "\n")
            monkeypatch.setenv("FAKE_NVML_SCRIPT", str(path))
            monkeypatch.setenv("FAKE_NVML_COUNT", str(count))
            monkeypatch.setenv("ENERGYPROF_NVML_ALIGN", "0")   # the script moves per read, not with time

        def real_card(self, watts, no_counter_on=None):
            monkeypatch.setenv("FAKE_NVML_COUNT", str(len(watts)))
            monkeypatch.setenv("FAKE_NVML_DEVICE_W", ",".join(str(w) for w in watts))
            monkeypatch.setenv("FAKE_NVML_UPDATE_MS", str(UPDATE_MS))
            if no_counter_on is not None:
                monkeypatch.setenv("FAKE_NVML_NO_COUNTER_ON", str(no_counter_on))

    return Fake()


def _split(s):
    """(sum rows, {device: rows}) of one SourceDriver read, decoded here from the flag bits."""
    dev = (s["flags"] & _core.SFLAG_DEVICE) != 0
    idx = (s["flags"] >> _core.SFLAG_DEVICE_SHIFT) & 0xFF
    return s[~dev], {int(i): s[dev & (idx == i)] for i in np.unique(idx[dev])}


def test_two_counters_each_differenced_and_summed_with_per_device_stale_reads(fake):
    # device 0 | device 1 counters (mJ), one line per read; start takes the first line
    fake.script(["1000 0 5000 0",
                 "1500 0 5000 0",     # t=0.2: device 1 has not moved: no sample (not 0 W then 2x)
                 "1500 0 5600 0",     # t=0.3: both moved since 0.1: one sample over [0.1, 0.3]
                 "2300 0 6000 0",     # t=0.4
                 "2400 0 6100 0"], 2)  # stop at 0.5
    d = _core.SourceDriver("nvml", {"devices": "0,1"})
    d.start(MS100)
    reads = [d.poll(2 * MS100), d.poll(3 * MS100), d.poll(4 * MS100), d.stop(5 * MS100)]
    assert len(reads[0]) == 0
    s = np.concatenate(reads)
    total, per = _split(s)
    assert sorted(per) == [0, 1]
    assert list(total["t_start_ns"]) == [MS100, 3 * MS100, 4 * MS100]
    assert list(total["t_end_ns"]) == [3 * MS100, 4 * MS100, 5 * MS100]
    # by hand: mJ deltas / s
    want0 = [0.5 / 0.2, 0.8 / 0.1, 0.1 / 0.1]
    want1 = [0.6 / 0.2, 0.4 / 0.1, 0.1 / 0.1]
    np.testing.assert_allclose(per[0]["gpu_w"], want0, rtol=1e-12)
    np.testing.assert_allclose(per[1]["gpu_w"], want1, rtol=1e-12)
    np.testing.assert_allclose(total["gpu_w"], np.add(want0, want1), rtol=1e-12)
    for rows in per.values():   # each device row has its sample's times, kind and flags
        assert list(rows["t_start_ns"]) == list(total["t_start_ns"])
        assert list(rows["kind"]) == [_core.KIND_INTERVAL] * 3
        assert list(rows["flags"] & _core.SFLAG_FINAL) == [0, 0, _core.SFLAG_FINAL]
    meta = json.loads(d.meta_json)
    assert [x["index"] for x in meta["devices"]] == [0, 1]
    assert [x["mode"] for x in meta["devices"]] == ["energy_counter"] * 2
    assert [x["name"] for x in meta["devices"]] == ["Fake GPU 80GB", "Fake GPU 80GB #1"]
    assert meta["power_limit_w"] == 700.0 and meta["device_count"] == 2


def test_a_device_without_the_counter_falls_back_alone_and_is_integrated_by_trapezoid(fake):
    # device 0 has the counter; device 1 NOT_SUPPORTED: its power (mW) is read every poll
    fake.script(["1000 0 NS 40000",
                 "1100 0 NS 60000",
                 "1100 0 NS 80000",      # device 0 stale at 0.3: held, device 1's trapezoid goes on
                 "1300 0 NS 100000",
                 "1400 0 NS 100000"], 2)
    d = _core.SourceDriver("nvml", {"devices": "0,1"})
    d.start(MS100)
    s = np.concatenate([d.poll(2 * MS100), d.poll(3 * MS100), d.poll(4 * MS100), d.stop(5 * MS100)])
    total, per = _split(s)
    assert list(total["t_end_ns"]) == [2 * MS100, 4 * MS100, 5 * MS100]
    np.testing.assert_allclose(per[0]["gpu_w"], [0.1 / 0.1, 0.2 / 0.2, 0.1 / 0.1], rtol=1e-12)
    # trapezoid by hand: (40+60)/2; ((60+80)/2*0.1 + (80+100)/2*0.1) / 0.2; (100+100)/2
    np.testing.assert_allclose(per[1]["gpu_w"], [50.0, 80.0, 100.0], rtol=1e-12)
    np.testing.assert_allclose(total["gpu_w"], [51.0, 81.0, 101.0], rtol=1e-12)
    meta = json.loads(d.meta_json)
    assert [x["mode"] for x in meta["devices"]] == ["energy_counter", "power_usage"] and meta["mode"] == "mixed"


def test_devices_all_finds_every_device(fake):
    fake.script(["1000 0", "2000 0", "3000 0"], 3)
    d = _core.SourceDriver("nvml", {"devices": "all"})
    assert [x["index"] for x in json.loads(d.meta_json)["devices"]] == [0, 1, 2]
    d.start(MS100)
    total, per = _split(d.poll(2 * MS100))
    assert sorted(per) == [0, 1, 2] and len(total) == 1
    assert total["gpu_w"][0] == pytest.approx(3 * 1.0 / 0.1, rel=1e-12)   # each device's 1000 mJ over 0.1 s
    del d   # unloads the fake, so the next one reads the new settings
    fake.real_card((10.0, 20.0, 30.0))
    with ep.Sampler("nvml:devices=all") as s:
        time.sleep(0.15)
    assert sorted(set(s.device_samples["device"].tolist())) == [0, 1, 2]
    assert not np.any(s.samples["flags"] & _core.SFLAG_DEVICE)


def test_a_device_list_naming_an_absent_gpu_is_a_user_error_with_the_count(fake, capsys, tmp_path):
    fake.script(["1000 0"], 1)
    with pytest.raises(DeviceError) as e:
        ep.Sampler("nvml:devices=0,1")
    msg = str(e.value)
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)
    assert "devices=0,1" in msg and "GPU index 1 does not exist (1 GPU found; valid: 0)" in msg
    assert "\n" not in msg
    with pytest.raises(DeviceError, match=r"'x' is not a GPU number"):
        ep.Sampler("nvml:devices=0,x")
    with pytest.raises(DeviceError, match="listed twice"):
        ep.Sampler("nvml:devices=0,0")
    with pytest.raises(DeviceError, match="not both"):
        ep.Sampler("nvml:devices=0,index=0")
    # the command prints it in one line and exits 2
    from energyprof.cli.main import main

    rc = main(["profile", "--model", "tiny-llama", "--source", "nvml:devices=0,1", "--baseline-s", "0",
               "--max-new-tokens", "1", "--db", str(tmp_path / "r.db")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "GPU index 1 does not exist (1 GPU found" in err
    # index= stays the one-device form
    with ep.Sampler("nvml:index=0") as s:
        time.sleep(0.01)
    assert json.loads(s.meta_json)["devices"][0]["index"] == 0 and len(s.device_samples) == 0


def _bound_j(watts: float) -> float:
    """How far a counter device's window energy may be from watts x duration: each reading
    returns the energy up to the counter's last update, up to one update period old, and
    three such offsets enter a window (the interval at each edge and the span between
    them); 1 ms of slack for the time between the source's clock read and the library's;
    whole-mJ readings (4 of them)."""
    return 3 * watts * UPDATE_MS * 1e-3 + watts * 1e-3 + 4e-3


def _window(s):
    run = s.sections[s.sections["kind"] == "run"][0]
    return int(run["t_start_ns"]), int(run["t_end_ns"])


def test_two_devices_at_known_watts_round_trip_through_store_and_report(fake, tmp_path):
    fake.real_card(WATTS)
    db = str(tmp_path / "runs.db")
    with pytest.warns(RuntimeWarning, match="zero tokens"):
        with ep.run(None, source="nvml:devices=0,1", db=db, baseline_s=0) as s:
            time.sleep(0.6)
    t0, t1 = _window(s)
    dur_s = (t1 - t0) * 1e-9
    sm = s.summary()
    devs = {d["device"]: d for d in sm["devices"]}
    assert sorted(devs) == [0, 1]
    for i, w in enumerate(WATTS):
        assert abs(devs[i]["energy_j"] - w * dur_s) <= _bound_j(w), (i, devs[i]["energy_j"], w * dur_s)
        assert devs[i]["mean_power_w"] == pytest.approx(devs[i]["energy_j"] / dur_s, rel=1e-12)
        assert devs[i]["reading"] == "counter" and devs[i]["label"] == "measured"
        assert "counter" in devs[i]["resolution"] and devs[i]["n_samples"] > 5
    # gpu (what every run, phase and token figure uses) is the sum, counted once
    gpu = sm["domains"]["gpu"]
    assert gpu == pytest.approx(devs[0]["energy_j"] + devs[1]["energy_j"], rel=1e-12)
    assert abs(gpu - sum(WATTS) * dur_s) <= _bound_j(WATTS[0]) + _bound_j(WATTS[1])
    assert sm["energy_j"] == pytest.approx(gpu, rel=1e-12)
    assert not np.any(s.samples["flags"] & _core.SFLAG_DEVICE)
    assert len(s.device_samples) == 2 * len(s.samples)
    # the store keeps both series and the breakdown
    back = ep.load(s.run_id, db=db)
    assert len(back.device_samples) == len(s.device_samples)
    for f in back.device_samples.dtype.names:
        np.testing.assert_array_equal(back.device_samples[f], s.device_samples[f], err_msg=f)
    assert [d["energy_j"] for d in back.summary()["devices"]] == [devs[0]["energy_j"], devs[1]["energy_j"]]
    assert back.summary()["energy_j"] == sm["energy_j"]
    # the report shows both GPUs with their energies
    path = tmp_path / "r.html"
    from energyprof.views.report import write_report

    write_report(back, path)
    page = path.read_text()
    table = page[page.index('id="devices"'):]
    table = table[:table.index("</table>")]
    assert "Fake GPU 80GB</td>" in table and "Fake GPU 80GB #1</td>" in table
    for d in devs.values():
        assert f"{d['energy_j']:.6g}" in table and f"{d['peak_power_w']:.6g}" in table
    # the dashboard's run page shows the same table (it renders the report's body)
    pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
    from fastapi.testclient import TestClient

    from energyprof.views.dashboard import create_app

    page = TestClient(create_app(db), base_url="http://127.0.0.1").get(f"/runs/{s.run_id}").text
    assert 'id="devices"' in page and "Fake GPU 80GB #1</td>" in page


def test_the_device_without_a_counter_reads_instant_power_beside_a_counter(fake, tmp_path):
    fake.real_card(WATTS, no_counter_on=1)
    with pytest.warns(RuntimeWarning, match="zero tokens"):
        with ep.run(None, source="nvml:devices=0,1", save=False, baseline_s=0) as s:
            time.sleep(0.4)
    t0, t1 = _window(s)
    dur_s = (t1 - t0) * 1e-9
    devs = {d["device"]: d for d in s.summary()["devices"]}
    assert [devs[0]["mode"], devs[1]["mode"]] == ["energy_counter", "power_instant"]
    assert devs[1]["reading"] == "instant power"
    # a constant 250 W read at every poll: the trapezoid is exact (mW readings)
    assert devs[1]["energy_j"] == pytest.approx(WATTS[1] * dur_s, rel=1e-9)
    assert abs(devs[0]["energy_j"] - WATTS[0] * dur_s) <= _bound_j(WATTS[0])
    assert s.summary()["domains"]["gpu"] == pytest.approx(devs[0]["energy_j"] + devs[1]["energy_j"], rel=1e-12)


def test_terminal_summary_lists_each_gpu(fake, capsys, monkeypatch):
    from energyprof.cli.common import print_summary

    monkeypatch.setenv("COLUMNS", "200")
    fake.real_card(WATTS)
    with pytest.warns(RuntimeWarning, match="zero tokens"):
        with ep.run(None, source="nvml:devices=0,1", save=False, baseline_s=0) as s:
            time.sleep(0.2)
    print_summary(s.summary())
    out = capsys.readouterr().out
    assert "GPUs (their sum is the gpu domain)" in out and "Fake GPU 80GB #1" in out
    for d in s.summary()["devices"]:
        assert f"{d['energy_j']:.4g} J" in out
        assert f"GPU {d['device']} (measured): energy counter differenced into" in out
