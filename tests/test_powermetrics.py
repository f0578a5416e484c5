"""The live powermetrics source (csrc/sources/ep_src_powermetrics.c) through energyprof.Sampler,
driven by the fake executables in tests/fake_powermetrics (they stream real captures
and misbehave on purpose).  No Mac here: see docs/powermetrics.md for what this
does and does not verify."""
from __future__ import annotations

import json
import os
import plistlib
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import energyprof as ep
from energyprof import _core

FAKE = Path(__file__).parent / "fake_powermetrics"


def children() -> set:
    """PIDs of this process's live or zombie children (Linux /proc)."""
    pids = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            pids |= {int(p) for p in (task / "children").read_text().split()}
        except OSError:
            pass
    return pids


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def wait_for(s: "ep.Sampler", n: int, limit_s: float = 30.0) -> None:
    """Safety net only (no timing is asserted): wait for n samples or the end."""
    t_end = time.monotonic() + limit_s
    while len(s.samples) < n and not s.ended and time.monotonic() < t_end:
        s.drain()
        time.sleep(0.01)
    s.drain()


def expected_powers_w(fixture: Path, interval_ms: int) -> dict:
    """Per-domain W of each document the fake streams (its elapsed_ns = the interval)."""
    out = {"cpu": set(), "gpu": set(), "ane": set()}
    for piece in fixture.read_bytes().split(b"\0"):
        if piece.strip():
            proc = plistlib.loads(piece)["processor"]
            for d in out:
                out[d].add(proc[f"{d}_energy"] * 1e6 / (interval_ms * 1_000_000))
    return out


def test_streams_samples_and_stops_cleanly(powermetrics_fixtures, tmp_path, monkeypatch):
    argv_file = tmp_path / "argv.jsonl"
    monkeypatch.setenv("FAKE_POWERMETRICS_ARGV_FILE", str(argv_file))
    fds, kids = open_fds(), children()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fault or an early end would be a warning
        with ep.Sampler(f"powermetrics:interval_ms=30,binary={FAKE / 'powermetrics'}") as s:
            wait_for(s, 4)
    samples = s.samples
    assert len(samples) >= 4 and s.faults == 0 and not s.ended
    assert s.label == "measured"
    want = expected_powers_w(powermetrics_fixtures / "pumas-m1.plist", 30)
    for d in want:
        assert set(samples[f"{d}_w"].tolist()) <= want[d]
    assert np.isnan(samples["dram_w"]).all() and np.isnan(samples["package_w"]).all()
    assert (samples["kind"] == _core.KIND_INTERVAL).all()
    # each sample spans its 30 ms window ending at its arrival, never before the previous end
    dur = samples["t_end_ns"] - samples["t_start_ns"]
    assert (dur > 0).all() and (dur <= 30_000_000).all()
    assert (samples["t_start_ns"][1:] >= samples["t_end_ns"][:-1]).all()
    assert children() == kids and open_fds() == fds  # reaped, pipes closed
    argv = json.loads(argv_file.read_text().splitlines()[0])
    assert argv == ["-f", "plist", "-i", "30", "--samplers", "cpu_power,gpu_power,thermal"]
    meta = json.loads(s.meta_json)
    assert meta["interval_ms"] == 30 and meta["sudo"] is False


def test_samplers_and_restart(tmp_path, monkeypatch):
    argv_file = tmp_path / "argv.jsonl"
    monkeypatch.setenv("FAKE_POWERMETRICS_ARGV_FILE", str(argv_file))
    kids = children()
    s = ep.Sampler(f"powermetrics:interval_ms=20,samplers=cpu_power+gpu_power,binary={FAKE / 'powermetrics'}")
    for _ in range(2):  # a stopped sampler starts a fresh child
        s.start()
        wait_for(s, len(s.samples) + 2)
        s.stop()
    assert s.faults == 0 and children() == kids
    runs = [json.loads(line) for line in argv_file.read_text().splitlines()]
    assert len(runs) == 2 and all(r[-2:] == ["--samplers", "cpu_power,gpu_power"] for r in runs)


def test_killed_mid_document_keeps_earlier_samples():
    kids = children()
    with pytest.warns(RuntimeWarning, match="killed by signal 9"):
        with ep.Sampler(f"powermetrics:interval_ms=20,binary={FAKE / 'powermetrics-dies-mid-document'}") as s:
            wait_for(s, 100)
    assert s.ended
    assert len(s.samples) == 2  # the fake wrote 2 whole documents, then half of one
    assert s.faults == 1
    assert any("inside a document" in m for m in s.messages)
    assert children() == kids


def test_garbage_output_is_counted_not_fatal():
    with pytest.warns(RuntimeWarning, match=r"exited with status 3.*garbage"):
        with ep.Sampler(f"powermetrics:interval_ms=20,binary={FAKE / 'powermetrics-garbage'}") as s:
            wait_for(s, 100)
    assert len(s.samples) == 1 and s.faults >= 1
    assert re.search(r"\d+ byte\(s\) of garbage", s.message)


def test_not_superuser_says_how_to_fix():
    with pytest.warns(RuntimeWarning, match="needs root.*sudo"):
        with ep.Sampler(f"powermetrics:binary={FAKE / 'powermetrics-not-root'}") as s:
            wait_for(s, 1)
    assert len(s.samples) == 0 and s.ended
    assert "must be invoked as the superuser" in s.message


def test_child_ignoring_sigint_is_killed():
    kids = children()
    with ep.Sampler(f"powermetrics:interval_ms=20,binary={FAKE / 'powermetrics-ignores-sigint'}") as s:
        wait_for(s, 1)
    assert len(s.samples) >= 1 and children() == kids


def test_bad_powermetrics_specs():
    with pytest.raises(ValueError, match="interval_ms"):
        ep.sources.open(f"powermetrics:interval_ms=0,binary={FAKE / 'powermetrics'}")
    with pytest.raises(ValueError, match="binary"):
        ep.sources.open("powermetrics:binary=/nonexistent/powermetrics")
    with pytest.raises(ValueError, match="samplers"):
        ep.sources.open(f"powermetrics:samplers=cpu_power;x,binary={FAKE / 'powermetrics'}")
