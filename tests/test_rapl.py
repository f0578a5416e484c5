"""The rapl source on fake powercap trees.

The tree mirrors /sys/class/powercap: intel-rapl:N (package-N) with subzones
intel-rapl:N:M (core, uncore, dram) and a top-level psys zone.  Expected energies
come from what the tests wrote (energyprof._reference.counter_delta for wraps).
"""
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import energyprof as ep
from energyprof import _core
from energyprof import _reference as ref

SEC = 1_000_000_000
RANGE_UJ = 262_143_328_850  # a real max_energy_range_uj value


class Tree:
    """A fake powercap tree; zone(...) paths are relative like 'intel-rapl:0/intel-rapl:0:0'."""

    def __init__(self, root: Path):
        self.root = root
        self.range = {}

    def zone(self, rel, name, uj=0, range_uj=RANGE_UJ):
        d = self.root / rel
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
        (d / "max_energy_range_uj").write_text(f"{range_uj}\n")
        self.range[rel] = range_uj
        self.set(rel, uj)

    def set(self, rel, uj):
        # Atomic replace, as the kernel's read never sees a half-written value.
        p = self.root / rel / "energy_uj"
        tmp = p.with_name("energy_uj.tmp")
        tmp.write_text(f"{uj}\n")
        os.replace(tmp, p)


def standard_tree(root: Path) -> Tree:
    t = Tree(root)
    t.zone("intel-rapl:0", "package-0", 1_000)
    t.zone("intel-rapl:0/intel-rapl:0:0", "core", 500)
    t.zone("intel-rapl:0/intel-rapl:0:1", "uncore", 0)
    t.zone("intel-rapl:0/intel-rapl:0:2", "dram", 0)
    t.zone("intel-rapl:1", "package-1", 0)
    t.zone("intel-rapl:1/intel-rapl:1:0", "core", 0)
    t.zone("intel-rapl:1/intel-rapl:1:1", "dram", 0)
    t.zone("intel-rapl:2", "psys", 0)
    return t


def test_exact_domains_and_mapping(tmp_path):
    t = standard_tree(tmp_path)
    d = _core.SourceDriver("rapl", {"root": str(tmp_path)})
    assert '"packages":2' in d.meta_json and "intel-rapl:0:0 core -> cpu" in d.meta_json
    assert "uncore" not in d.meta_json and "psys" not in d.meta_json
    d.start(SEC)
    t.set("intel-rapl:0", 1_000 + 30_000_000)          # 30 J
    t.set("intel-rapl:0/intel-rapl:0:0", 500 + 12_000_000)
    t.set("intel-rapl:0/intel-rapl:0:1", 9_000_000)     # uncore: not counted anywhere
    t.set("intel-rapl:0/intel-rapl:0:2", 2_000_000)
    t.set("intel-rapl:1", 10_000_000)
    t.set("intel-rapl:1/intel-rapl:1:0", 4_000_000)
    t.set("intel-rapl:1/intel-rapl:1:1", 1_000_000)
    t.set("intel-rapl:2", 99_000_000)                   # psys: not counted
    s = d.poll(3 * SEC)
    assert len(s) == 1 and s["kind"][0] == _core.KIND_INTERVAL
    assert (s["t_start_ns"][0], s["t_end_ns"][0]) == (SEC, 3 * SEC)
    assert s["package_w"][0] == pytest.approx(40 / 2, rel=1e-15)
    assert s["cpu_w"][0] == pytest.approx(16 / 2, rel=1e-15)
    assert s["dram_w"][0] == pytest.approx(3 / 2, rel=1e-15)
    assert np.isnan(s["gpu_w"][0]) and np.isnan(s["ane_w"][0])
    assert s["flags"][0] == 0


def test_wraparound_at_max_energy_range(tmp_path):
    t = Tree(tmp_path)
    t.zone("intel-rapl:0", "package-0", RANGE_UJ - 2_000_000)
    d = _core.SourceDriver("rapl", {"root": str(tmp_path)})
    d.start(0 + SEC)
    t.set("intel-rapl:0", 3_000_000)
    s = d.poll(2 * SEC)
    delta, wrapped = ref.counter_delta(RANGE_UJ - 2_000_000, 3_000_000, RANGE_UJ)
    assert wrapped and delta == 5_000_000
    assert s["package_w"][0] == pytest.approx(delta * 1e-6, rel=1e-15)
    assert s["flags"][0] == _core.SFLAG_WRAPPED
    assert np.isnan(s["cpu_w"][0])  # no core subzone: cpu unknown, not 0
    t.set("intel-rapl:0", 4_000_000)
    s = d.stop(3 * SEC)
    assert s["flags"][0] == _core.SFLAG_FINAL and s["package_w"][0] == pytest.approx(1.0, rel=1e-15)


def test_amd_style_package_only_tree(tmp_path):
    t = Tree(tmp_path)
    t.zone("intel-rapl:0", "package-0", 0, range_uj=65_532_610_987)
    d = _core.SourceDriver("rapl", {"root": str(tmp_path)})
    d.start(SEC)
    t.set("intel-rapl:0", 7_500_000)
    s = d.poll(4 * SEC)
    assert s["package_w"][0] == pytest.approx(2.5) and np.isnan(s["cpu_w"][0]) and np.isnan(s["dram_w"][0])


def test_writer_thread_with_wraps_through_the_sampler(tmp_path):
    """Counters advanced by a thread (with wraps) while the C sampler polls: the
    samples' energies add up exactly to what was written."""
    rng_uj = 40_000_000
    t = Tree(tmp_path)
    t.zone("intel-rapl:0", "package-0", 0, range_uj=rng_uj)
    t.zone("intel-rapl:0/intel-rapl:0:0", "core", 0, range_uj=rng_uj)
    written = {"pkg": 0, "core": 0}
    stop = threading.Event()
    started = threading.Event()

    def writer():
        started.wait()
        rng = np.random.default_rng(3)
        while not stop.is_set():
            # ~80 kJ/s-scale steps so the 40 J range wraps every ~500 steps
            inc = int(rng.integers(50_000, 110_000))
            wrapped = (written["pkg"] + inc) // rng_uj > written["pkg"] // rng_uj or \
                (written["core"] + inc // 2) // rng_uj > written["core"] // rng_uj
            written["pkg"] += inc
            written["core"] += inc // 2
            t.set("intel-rapl:0", written["pkg"] % rng_uj)
            t.set("intel-rapl:0/intel-rapl:0:0", written["core"] % rng_uj)
            if wrapped:
                # One wrap per poll interval at most (two would be invisible to any
                # reader): let the sampler poll after this wrap before going on, the
                # counters still creeping on as real ones do (a read that finds no counter
                # moved gives no sample, so a frozen counter would hold the sampler still).
                n0 = len(s.samples) + len(s.drain())
                while len(s.samples) < n0 + 2 and not stop.is_set():
                    written["pkg"] += 10
                    written["core"] += 5
                    t.set("intel-rapl:0", written["pkg"] % rng_uj)
                    t.set("intel-rapl:0/intel-rapl:0:0", written["core"] % rng_uj)
                    s.drain()
                    time.sleep(0.001)
            time.sleep(0.0003)

    s = ep.Sampler(f"rapl:root={tmp_path}", interval_ms=5)
    th = threading.Thread(target=writer)
    th.start()
    s.start()
    started.set()
    while written["pkg"] < 2.5 * rng_uj:
        time.sleep(0.01)
    stop.set()
    th.join()
    samples = s.stop()
    samples = s.samples
    dt_s = (samples["t_end_ns"] - samples["t_start_ns"]) * 1e-9
    assert samples["package_w"] @ dt_s == pytest.approx(written["pkg"] * 1e-6, rel=1e-12)
    assert samples["cpu_w"] @ dt_s == pytest.approx(written["core"] * 1e-6, rel=1e-12)
    assert (samples["flags"] & _core.SFLAG_WRAPPED).astype(bool).sum() >= 2
    assert s.label == "measured" and s.faults == 0


def test_synchronised_boundary_read_waits_for_the_counter_to_move(tmp_path):
    # The counter moves once, 10 ms after the read begins: the synchronised read returns the
    # time it saw the move (not before the write), and its sample ends there, flagged SYNCED,
    # holding the written energy.  With no move it gives up after 2 updates + 1 ms (41 ms at
    # update_ms=20) and is a plain read (counted as a timeout).
    t = Tree(tmp_path)
    t.zone("intel-rapl:0", "package-0", 1_000)
    s = ep.Sampler(f"rapl:root={tmp_path},update_ms=20", interval_ms=10_000)
    assert s.supports_sync
    s.start()
    try:
        wrote = {}

        def write_later():
            time.sleep(0.01)
            wrote["before_ns"] = _core.now_ns()
            t.set("intel-rapl:0", 1_000 + 3_000_000)       # 3 J

        th = threading.Thread(target=write_later)
        t_ask = _core.now_ns()
        th.start()
        t_read = s._core.boundary_sync(t_ask)
        th.join()
        assert t_read >= wrote["before_ns"] > t_ask
        t_ask2 = _core.now_ns()
        t_read2 = s._core.boundary_sync(t_ask2)            # nothing moves now
        waited_ns = t_read2 - t_ask2
        assert 41_000_000 <= waited_ns < 400_000_000
        st = s.sync_stats
        assert st["starts"] == 2 and st["timeouts"] == 1 and st["update_ns"] == 20_000_000
        assert st["waited_ns"] >= 10_000_000 + 41_000_000
    finally:
        s.stop()
    x = s.samples
    i = int(np.flatnonzero(x["t_end_ns"] == t_read)[0])
    assert x["flags"][i] & _core.SFLAG_SYNCED and x["flags"][i] & _core.SFLAG_BOUNDARY
    assert x["package_w"][i] * (x["t_end_ns"][i] - x["t_start_ns"][i]) * 1e-9 == pytest.approx(3.0, rel=1e-9)
    # the read that timed out found the counter where it was: a stale read gives no sample
    # (no 0 W sliver); the final one at stop covers that stretch, and nothing was written in it
    assert not np.any(x["t_end_ns"] == t_read2) and len(x) == i + 2
    assert x["t_start_ns"][i + 1] == t_read and x["flags"][i + 1] & _core.SFLAG_FINAL
    assert x["package_w"][i + 1] == 0.0
    # A source without a counter to wait on says so.
    syn = ep.Sampler("synthetic:power_w=5")
    assert not syn.supports_sync
    with pytest.raises(NotImplementedError):
        syn.arm_sync(2)


@contextlib.contextmanager
def _package_counter_moving(root):
    """A one-package tree under ``root`` whose counter a thread advances by 1234 uJ every 0.5 ms."""
    t = Tree(root)
    t.zone("intel-rapl:0", "package-0", 0)
    stop = threading.Event()
    total = {"uj": 0}

    def writer():
        while not stop.is_set():
            total["uj"] += 1234
            t.set("intel-rapl:0", total["uj"])
            time.sleep(0.0005)

    th = threading.Thread(target=writer)
    th.start()
    try:
        yield
    finally:
        stop.set()
        th.join()


def test_ep_run_tiny_model_exact(tmp_path):
    import torch
    from energyprof.tiny import tiny_model

    model = tiny_model("tiny-llama")
    with _package_counter_moving(tmp_path):
        with ep.run(model, source=f"rapl:root={tmp_path}", baseline_s=0, save=False, interval_ms=5) as s:
            model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    samples = s.samples
    # Each sample is one counter difference: energy is a whole number of uJ, the
    # samples tile time, and the run's package energy is their overlap with the run.
    e_uj = samples["package_w"] * (samples["t_end_ns"] - samples["t_start_ns"]) * 1e-3
    np.testing.assert_allclose(e_uj, np.round(e_uj), atol=1e-6)
    assert (samples["t_start_ns"][1:] == samples["t_end_ns"][:-1]).all()
    run = s.sections[s.sections["kind"] == "run"][0]
    lo = np.maximum(samples["t_start_ns"], run["t_start_ns"])
    hi = np.minimum(samples["t_end_ns"], run["t_end_ns"])
    want = float((samples["package_w"] * np.clip(hi - lo, 0, None) * 1e-9).sum())
    assert run["package_j"] == pytest.approx(want, rel=1e-9)
    assert s.summary()["energy_j"] > 0


def test_ep_run_reads_the_counter_update_period_from_the_metadata_parsed_once(tmp_path, monkeypatch):
    """A counter stated to update every 40 ms (update_ms=40) but written every 0.5 ms: the run
    judges its rows by the stated 40 ms (longer than any standstill it saw), read from the
    source's meta_json, which the session parses once (into summary()["source_meta"]).
    Oracle: the update_ms given."""
    import torch

    from energyprof.measure import session as session_mod
    from energyprof.tiny import tiny_model

    parsed = []
    real = session_mod._json_or_empty
    monkeypatch.setattr(session_mod, "_json_or_empty", lambda text: parsed.append(text) or real(text))
    model = tiny_model("tiny-llama")
    with _package_counter_moving(tmp_path):
        with ep.run(model, source=f"rapl:root={tmp_path},update_ms=40", baseline_s=0, save=False,
                    interval_ms=5) as s:
            model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    summary = s.summary()
    assert summary["source_meta"]["counter_update_ms"] == 40
    assert summary["boundary_reads"]["counter_update_period_s"] == pytest.approx(0.040)
    assert len(parsed) == 1


def test_missing_tree_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no powercap tree at /no/such/powercap"):
        _core.SourceDriver("rapl", {"root": "/no/such/powercap"})
    with pytest.raises(FileNotFoundError, match="package-N"):
        _core.SourceDriver("rapl", {"root": str(tmp_path)})  # empty directory
    with pytest.raises(ValueError, match="unknown parameter 'x'"):
        _core.SourceDriver("rapl", {"x": "1"})


def test_update_period_is_stated_in_the_metadata_and_checked(tmp_path):
    import json

    from energyprof.measure.sources import parse_spec

    standard_tree(tmp_path)
    # Real RAPL advances its counters about every millisecond: the default.
    assert json.loads(_core.SourceDriver("rapl", {"root": str(tmp_path)}).meta_json)["counter_update_ms"] == 1.0
    meta = json.loads(_core.SourceDriver("rapl", {"root": str(tmp_path), "update_ms": "0.25"}).meta_json)
    assert meta["counter_update_ms"] == 0.25
    for bad in ("0", "-1", "abc", "1001"):
        with pytest.raises(ValueError, match="update_ms"):
            _core.SourceDriver("rapl", {"root": str(tmp_path), "update_ms": bad})
        with pytest.raises(ValueError, match="update_ms"):
            parse_spec(f"rapl:root={tmp_path},update_ms={bad}")


def test_env_var_sets_the_default_root(tmp_path, monkeypatch):
    standard_tree(tmp_path)
    monkeypatch.setenv("ENERGYPROF_RAPL_ROOT", str(tmp_path))
    assert str(tmp_path) in _core.SourceDriver("rapl").meta_json


def test_unreadable_counter_file(tmp_path):
    """A directory in place of energy_uj fails even for root (EISDIR): an I/O error naming the file."""
    t = Tree(tmp_path)
    t.zone("intel-rapl:0", "package-0", 0)
    (tmp_path / "intel-rapl:0" / "energy_uj").unlink()
    (tmp_path / "intel-rapl:0" / "energy_uj").mkdir()
    with pytest.raises(OSError, match="intel-rapl:0/energy_uj"):
        _core.SourceDriver("rapl", {"root": str(tmp_path)})


PERM_CHECK = r"""
import os, sys
from energyprof import _core
if os.geteuid() == 0:  # drop root after the imports (the interpreter lives under /root)
    os.setgid(65534)
    os.setuid(65534)
try:
    _core.SourceDriver("rapl", {"root": sys.argv[1]})
except PermissionError as e:
    print("PERMISSION:", e)
"""


def test_permission_denied_shows_the_fix():
    """energy_uj mode 000 read by an unprivileged process.  Tests run as root here,
    and root ignores file modes, so the check runs in a child that drops to
    'nobody' (uid 65534) before creating the source: the real EACCES path, nothing injected."""
    root = Path(tempfile.mkdtemp(prefix="ep_rapl_perm_"))
    try:
        os.chmod(root, 0o755)
        t = Tree(root)
        t.zone("intel-rapl:0", "package-0", 5)
        for p in [root / "intel-rapl:0", *(root / "intel-rapl:0").iterdir()]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        os.chmod(root / "intel-rapl:0" / "energy_uj", 0o000)

        repo = str(Path(__file__).resolve().parent.parent)
        out = subprocess.run([sys.executable, "-c", PERM_CHECK, str(root)], capture_output=True, text=True,
                             cwd=repo, env={**os.environ, "PYTHONPATH": repo},
                             timeout=120)
        assert "PERMISSION:" in out.stdout, out.stdout + out.stderr
        msg = out.stdout
        assert "permission denied" in msg and "root-only" in msg
        assert "sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj" in msg
        assert str(root / "intel-rapl:0" / "energy_uj") in msg
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_stale_read_gives_no_zero_watt_sliver(tmp_path):
    """Two reads inside one counter update: the second finds no zone moved and gives no
    sample, so the next read that moves covers both stretches with their mean power (worked
    by hand: 6 J over the whole span), never 0 W then twice that; the span the counter stood
    still is the source's counter_still_ns."""
    t = Tree(tmp_path)
    t.zone("intel-rapl:0", "package-0", 1_000)
    s = ep.Sampler(f"rapl:root={tmp_path}", interval_ms=10_000)
    s.start()
    try:
        t0 = _core.now_ns()
        t.set("intel-rapl:0", 1_000 + 2_000_000)          # 2 J
        s._core.boundary_read(t0 + 10_000_000)             # moved: a sample
        s._core.boundary_read(t0 + 30_000_000)             # stale: none
        s._core.boundary_read(t0 + 50_000_000)             # stale: none
        t.set("intel-rapl:0", 1_000 + 8_000_000)          # 6 J more
        s._core.boundary_read(t0 + 70_000_000)             # moved: covers 10..70 ms
    finally:
        s.stop()
    x = s.samples
    x = x[x["flags"] & _core.SFLAG_BOUNDARY != 0]
    assert x["t_end_ns"].tolist() == [t0 + 10_000_000, t0 + 70_000_000]
    dt = (x["t_end_ns"] - x["t_start_ns"]) * 1e-9
    assert x["package_w"][1] == pytest.approx(6.0 / 0.060, rel=1e-9) and (x["package_w"] > 0).all()
    assert (x["package_w"] * dt).sum() == pytest.approx(8.0, rel=1e-9)
    assert s._core.counter_still_ns >= 40_000_000
