"""The nvml source against a fake libnvidia-ml.so.1 built from tests/fake_nvml/fake_nvml.c.

The fake serves scripted counter (mJ) and power (mW) values, NOT_SUPPORTED and
error codes, and logs every value it served, so expected energies come from the
script/log, never from the source under test.
"""
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import energyprof as ep
from energyprof import _core

ROOT = Path(__file__).resolve().parent.parent
FAKE_SRC = ROOT / "tests" / "fake_nvml" / "fake_nvml.c"
SEC = 1_000_000_000


def build_fake(dirpath: Path) -> Path:
    lib = dirpath / "libnvidia-ml.so.1"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(lib), str(FAKE_SRC)], check=True)
    return lib


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Returns set_script(lines) -> None; the fake library is selected via env vars."""
    lib = build_fake(tmp_path)
    script, log = tmp_path / "script.txt", tmp_path / "calls.log"
    monkeypatch.setenv("ENERGYPROF_NVML_LIB", str(lib))
    monkeypatch.setenv("FAKE_NVML_SCRIPT", str(script))
    monkeypatch.setenv("FAKE_NVML_LOG", str(log))
    monkeypatch.setenv("ENERGYPROF_NVML_ALIGN", "0")   # the script moves per read, not with time
    monkeypatch.delenv("FAKE_NVML_INIT", raising=False)
    monkeypatch.delenv("FAKE_NVML_COUNT", raising=False)

    class Fake:
        path = lib

        def script(self, lines):
            script.write_text("\n".join(lines) + "\n")

        def served(self, what="energy"):
            """Values served since the last nvmlInit_v2 (the sampler's own library session)."""
            rows = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
            last_init = max((i for i, r in enumerate(rows) if r[0] == "init"), default=-1)
            return [r[1] for r in rows[last_init + 1:] if r[0] == what]

    return Fake()


def energies_j(samples):
    return samples["gpu_w"] * (samples["t_end_ns"] - samples["t_start_ns"]) * 1e-9


def test_counter_differenced_into_exact_intervals(fake):
    fake.script(["1000 0", "1750 0", "4000 0", "4000 0", "9000 0"])
    d = _core.SourceDriver("nvml", {"index": "0"})
    d.start(5 * SEC)
    got = [d.poll(t) for t in (6 * SEC, 7 * SEC + SEC // 2, 8 * SEC)]
    last = d.stop(10 * SEC)
    s = np.concatenate(got + [last])
    assert list(s["kind"]) == [_core.KIND_INTERVAL] * 3
    # The read at 8 s found the counter unchanged (stale): no 0 W sample, t_last kept, so
    # the next read spans both: 750 mJ over 1 s, 2250 mJ over 1.5 s, 5000 mJ over 2.5 s
    # (not 0 W over 0.5 s, then 2.5 W).
    assert list(s["t_start_ns"]) == [5 * SEC, 6 * SEC, 7 * SEC + SEC // 2]
    assert list(s["t_end_ns"]) == [6 * SEC, 7 * SEC + SEC // 2, 10 * SEC]
    assert list(s["gpu_w"]) == [0.75, 1.5, 2.0]
    assert list(s["flags"]) == [0, 0, _core.SFLAG_FINAL]
    assert np.isnan(s["cpu_w"]).all() and np.isnan(s["package_w"]).all()
    assert d.faults == 0


def test_metadata_names_device_driver_and_limit(fake):
    fake.script(["0 0"])
    d = _core.SourceDriver("nvml", {})
    meta = json.loads(d.meta_json)
    assert meta["name"] == "Fake GPU 80GB" and meta["driver_version"] == "999.01"
    assert meta["power_limit_w"] == 350.0 and meta["index"] == 0
    d.start(SEC)
    assert json.loads(d.meta_json)["mode"] == "energy_counter"


def test_read_error_is_a_fault_and_the_gap_keeps_its_energy(fake):
    fake.script(["100 0", "E15 0", "E999 0", "600 0"])
    d = _core.SourceDriver("nvml", {"index": "0"})
    d.start(0 + SEC)
    assert len(d.poll(2 * SEC)) == 0
    assert "GPU is lost" in d.message and d.faults == 1
    assert len(d.poll(3 * SEC)) == 0
    assert d.faults == 2 and "Unknown Error" in d.message
    s = d.poll(5 * SEC)
    assert (s["t_start_ns"][0], s["t_end_ns"][0]) == (SEC, 5 * SEC)
    assert s["gpu_w"][0] == 0.5 / 4  # 500 mJ over the 4 s since the last good read


def test_counter_going_backwards_is_dropped_not_negative(fake):
    fake.script(["5000 0", "100 0", "400 0"])
    d = _core.SourceDriver("nvml", {})
    d.start(SEC)
    assert len(d.poll(2 * SEC)) == 0 and d.faults == 1 and "backwards" in d.message
    s = d.poll(3 * SEC)
    assert (s["t_start_ns"][0], s["gpu_w"][0]) == (2 * SEC, 0.3)


def test_not_supported_counter_falls_back_to_instant_power(fake):
    fake.script(["NS 40000", "NS 125500", "NS 60000", "NS 70000"])
    d = _core.SourceDriver("nvml", {})
    d.start(SEC)
    s = np.concatenate([d.poll(2 * SEC), d.poll(3 * SEC), d.stop(4 * SEC)])
    assert list(s["kind"]) == [_core.KIND_INSTANT] * 3
    assert list(s["t_start_ns"]) == list(s["t_end_ns"]) == [2 * SEC, 3 * SEC, 4 * SEC]
    # start read the first power value (40 W) to check it works; polls get the next ones
    assert list(s["gpu_w"]) == [125.5, 60.0, 70.0]
    assert '"mode":"power_usage"' in d.meta_json


def test_nothing_readable_is_an_error_at_start(fake):
    fake.script(["NS E4"])
    d = _core.SourceDriver("nvml", {})
    with pytest.raises(PermissionError, match="Insufficient Permissions"):
        d.start(SEC)
    del d  # unloads the fake, so the next create reads the new script
    fake.script(["E15 0"])
    d = _core.SourceDriver("nvml", {})
    with pytest.raises(RuntimeError, match="GPU is lost"):
        d.start(SEC)


def test_library_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("ENERGYPROF_NVML_LIB", str(tmp_path / "libnvidia-ml.so.1"))
    with pytest.raises(FileNotFoundError) as e:
        _core.SourceDriver("nvml", {"index": "0"})
    assert "libnvidia-ml.so.1" in str(e.value) and "NVIDIA driver" in str(e.value)
    with pytest.raises(FileNotFoundError, match="libnvidia-ml"):
        ep.Sampler("nvml")


def test_driver_not_loaded_and_bad_index(fake, monkeypatch):
    fake.script(["0 0"])
    monkeypatch.setenv("FAKE_NVML_INIT", "9")
    with pytest.raises(FileNotFoundError, match="Driver Not Loaded"):
        _core.SourceDriver("nvml", {})
    monkeypatch.delenv("FAKE_NVML_INIT")
    with pytest.raises(ValueError, match="GPU index 3 does not exist \\(1 GPU found; valid: 0\\)"):
        _core.SourceDriver("nvml", {"index": "3"})
    monkeypatch.setenv("FAKE_NVML_COUNT", "0")
    with pytest.raises(FileNotFoundError, match="0 GPUs found"):
        _core.SourceDriver("nvml", {})


def test_lib_parameter_overrides_env(fake, monkeypatch):
    fake.script(["0 0"])
    monkeypatch.setenv("ENERGYPROF_NVML_LIB", "/nonexistent/libnvidia-ml.so.1")
    d = _core.SourceDriver("nvml", {"lib": str(fake.path)})
    assert "Fake GPU" in d.meta_json


def counter_script(n):
    # Irregular increments so that any misattribution shows.
    rng = np.random.default_rng(7)
    return [f"{v} 0" for v in np.cumsum(rng.integers(0, 5000, size=n)) + 123456]


def test_sampler_thread_serves_exactly_the_scripted_energies(fake):
    fake.script(counter_script(5000))
    with ep.Sampler("nvml:index=0", interval_ms=2) as s:
        while len(fake.served()) < 30:
            time.sleep(0.01)
    samples = s.samples
    served = [int(v) for v in fake.served()]
    assert s.label == "measured"
    expected = np.diff(served) * 1e-3
    assert len(samples) == len(expected)
    np.testing.assert_allclose(energies_j(samples), expected, rtol=1e-12, atol=1e-15)
    assert (samples["t_start_ns"][1:] == samples["t_end_ns"][:-1]).all()


def test_ep_run_with_tiny_model_gets_exact_scripted_energy(fake):
    import torch
    from energyprof.tiny import tiny_model
    fake.script(counter_script(20000))
    model = tiny_model("tiny-llama")
    with ep.run(model, source="nvml:index=0", baseline_s=0, save=False, interval_ms=2) as s:
        model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    samples = s.samples
    served = [int(v) for v in fake.served()]
    np.testing.assert_allclose(energies_j(samples), np.diff(served) * 1e-3, rtol=1e-12, atol=1e-15)
    # The run window's GPU energy: the piecewise-constant scripted power integrated
    # over [t_start, t_end) of the run section, computed here from the served values.
    run = s.sections[s.sections["kind"] == "run"][0]
    t0, t1 = int(run["t_start_ns"]), int(run["t_end_ns"])
    e = np.diff(served) * 1e-3
    lo = np.maximum(samples["t_start_ns"], t0)
    hi = np.minimum(samples["t_end_ns"], t1)
    frac = np.clip(hi - lo, 0, None) / (samples["t_end_ns"] - samples["t_start_ns"])
    assert run["gpu_j"] == pytest.approx(float((e * frac).sum()), rel=1e-9, abs=1e-12)
    assert s.summary()["domains"]["gpu"] == pytest.approx(run["gpu_j"], rel=1e-12)


# ---------------------------------------------------------------------------- the system's own NVML
# These read the machine's libnvidia-ml.so.1.  Each one skips, saying why, where the
# hardware it needs is absent; none passes silently.

def _real_nvml(monkeypatch):
    """The system's NVML source, or (None, why not)."""
    for var in ("ENERGYPROF_NVML_LIB", "FAKE_NVML_SCRIPT", "FAKE_NVML_LOG"):
        monkeypatch.delenv(var, raising=False)
    try:
        return _core.SourceDriver("nvml", {"index": "0"}), ""
    except (FileNotFoundError, PermissionError, RuntimeError, ValueError) as e:
        return None, f"{type(e).__name__}: {e}"


def test_real_nvml_absent_names_the_library_and_the_driver(monkeypatch):
    d, why = _real_nvml(monkeypatch)
    if d is not None:
        pytest.skip("an NVIDIA driver is installed here (libnvidia-ml.so.1 opens): see the on-GPU tests")
    assert "libnvidia-ml.so.1" in why and "NVIDIA driver" in why, why


def test_real_nvml_reads_the_gpu(monkeypatch):
    """On a machine with an NVIDIA GPU: one real reading, energy >= 0 and power under 1.5x
    the board's limit."""
    d, why = _real_nvml(monkeypatch)
    if d is None:
        pytest.skip(f"no NVIDIA GPU here ({why})")
    meta = json.loads(d.meta_json)
    t0 = _core.now_ns()
    d.start(t0)
    x = np.zeros(2 * 10**6)
    for _ in range(20):  # some work between the readings
        x = np.sqrt(x + 1.0)
    s = d.stop(_core.now_ns() + 1)
    assert len(s) == 1 and s["gpu_w"][0] >= 0
    if meta.get("power_limit_w"):
        assert s["gpu_w"][0] < 1.5 * meta["power_limit_w"]


def _nvml_power_reader():
    """nvmlDeviceGetPowerUsage of GPU 0 through ctypes, apart from energyprof's C source:
    returns a function giving watts."""
    import ctypes

    lib = ctypes.CDLL("libnvidia-ml.so.1")
    assert lib.nvmlInit_v2() == 0
    handle = ctypes.c_void_p()
    assert lib.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(handle)) == 0
    mw = ctypes.c_uint()

    def read_w() -> float:
        assert lib.nvmlDeviceGetPowerUsage(handle, ctypes.byref(mw)) == 0
        return mw.value / 1e3

    return read_w


def test_real_nvml_energy_counter_agrees_with_its_power_readings_under_load(monkeypatch):
    """On a GPU with the total-energy counter (Volta and later) and a CUDA build of torch:
    load the GPU with matrix products for 6 s; over the last 4 s (after 2 s of warm-up)
    the energy the nvml source integrates from the counter must equal the trapezoid of
    nvmlDeviceGetPowerUsage readings taken every 20 ms by ctypes, within 15 %: the power
    reading is the driver's average over its own window (up to 1 s on recent boards), so
    on a steady load the two agree to a few % and 15 % leaves room for the edges."""
    import threading

    d, why = _real_nvml(monkeypatch)
    if d is None:
        pytest.skip(f"no NVIDIA GPU here ({why})")
    meta = json.loads(d.meta_json)
    if meta.get("mode") != "energy_counter":
        pytest.skip(f"this GPU has no total-energy counter (nvml mode {meta.get('mode')!r})")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip(f"torch {torch.__version__} cannot use the GPU (a CPU build?): nothing to load it with")
    read_w = _nvml_power_reader()
    stop = threading.Event()

    def load():
        a = torch.randn(8192, 8192, device="cuda")
        while not stop.is_set():
            for _ in range(8):
                a = (a @ a).clamp_(-1, 1)
            torch.cuda.synchronize()

    worker = threading.Thread(target=load, daemon=True)
    readings = []
    with ep.Sampler("nvml:index=0", interval_ms=50) as smp:
        worker.start()
        t_end = time.monotonic() + 6.0
        while time.monotonic() < t_end:
            readings.append((_core.now_ns(), read_w()))
            time.sleep(0.02)
        stop.set()
        worker.join()
    t = np.array([r[0] for r in readings], dtype=np.int64)
    w = np.array([r[1] for r in readings])
    a, b = int(t[0] + 2 * SEC), int(t[-1])
    keep = (t >= a) & (t <= b)
    power_j = float(np.sum((w[keep][1:] + w[keep][:-1]) / 2 * np.diff(t[keep]) * 1e-9))
    power_j *= (b - a) / float(t[keep][-1] - t[keep][0])     # the same window length
    counter_j = float(_core.integrate(smp.samples, np.array([[a, b]], dtype=np.int64))[0][0, 1])
    print(f"GPU {meta.get('name')}: counter {counter_j:.1f} J, power readings {power_j:.1f} J over "
          f"{(b - a) / SEC:.2f} s, mean {power_j / ((b - a) / SEC):.0f} W")
    assert counter_j == pytest.approx(power_j, rel=0.15)
