"""Multi-rank runs: gloo ranks on the CPU, spawned as processes (tests/dist_worker.py).

Oracles: each rank's synthetic power is its ground truth (the merged run's energy is the
sum of the ranks' powers times rank 0's run duration; each rank's row its own power times
that duration); the token counts come from each rank's own session (computed in its own
process, apart from the merge); the tensor-parallel token ids from the same toy model run
whole, unsharded, in this process; the clock offset of ranks on one host is truly 0.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import energyprof as ep
from energyprof.measure.distributed import resolve_mode

WORKER = Path(__file__).with_name("dist_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(tmp_path, world: int, scenario: str, expect_rc=None, **env_extra):
    """Start ``world`` ranks of ``scenario``; returns (db path, {rank: its own JSON})."""
    db, port = str(tmp_path / "runs.db"), _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(WORKER.parent), **env_extra)
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(r), str(world), str(port), db, str(tmp_path),
                               scenario], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(world)]
    rcs, logs = [], []
    for p in procs:
        out, _ = p.communicate(timeout=300)
        rcs.append(p.returncode)
        logs.append(out.decode(errors="replace"))
    want = expect_rc or [0] * world
    assert rcs == want, "\n".join(f"--- rank {r} rc={rc}\n{log[-3000:]}" for r, (rc, log) in enumerate(zip(rcs, logs)))
    mine = {}
    for r in range(world):
        f = tmp_path / f"rank{r}.json"
        if f.exists():
            mine[r] = json.loads(f.read_text())
    return db, mine


def _one_run(db):
    runs = ep.runs(db=db, limit=None)
    assert len(runs) == 1, runs
    return ep.load(int(runs[0]["run_id"]), db=db)


def test_two_gloo_ranks_save_one_run_with_both_ranks_energy(tmp_path):
    """The issue's must-show: two ranks at 10 W each around the same work -> one run of 20 W."""
    db, mine = spawn(tmp_path, 2, "same")
    run = _one_run(db)
    s = run.summary()
    assert s["status"] == "completed"
    assert sorted(set(run.samples["rank"].tolist())) == [0, 1]
    dur = s["duration_s"]
    assert s["energy_j"] == pytest.approx(20.0 * dur, rel=0.01)
    # per-rank rows: each rank's truth over rank 0's window; per host: both on this host
    ranks = run.ranks
    assert ranks["rank"].tolist() == [0, 1] and ranks["status"].tolist() == ["completed", "completed"]
    np.testing.assert_allclose(ranks["energy_j"], [10.0 * dur, 10.0 * dur], rtol=0.01)
    assert s["distributed"]["energy_j_per_host"] == {socket.gethostname(): pytest.approx(20.0 * dur, rel=0.01)}
    # both ranks on one host share CLOCK_MONOTONIC: the true offset is 0, within the bound
    off, unc = mine[1]["clock"]
    assert ranks["clock_offset_ns"][1] == off and ranks["clock_uncertainty_ns"][1] == unc
    assert abs(off) <= unc and unc > 0
    # measured again at exit, later on rank 1's clock, and again 0 within its bound: no drift
    # that the two measurements can tell from their error, so the start offset is used
    off1, unc1, at1 = mine[1]["clock_end"]
    assert abs(off1) <= unc1 and unc1 > 0 and at1 > 0
    assert s["distributed"]["clock_drift_ppm"] == {"0": None, "1": None}   # JSON keys, as stored
    # tokens: every rank is its own replica group (data parallel): the ranks' own counts add up
    # (rank 0's session holds the merged run; its own count is the 6 tokens it was asked for)
    assert mine[1]["output_tokens"] == 6 and ranks["output_tokens"].tolist() == [6, 6]
    assert s["output_tokens"] == 6 + mine[1]["output_tokens"] == 12
    assert s["input_tokens"] == 8
    # each rank's own rows are kept: rank 1's run row is its own 10 W over its own window
    rs = run.rank_sections
    r1 = rs[(rs["rank"] == 1) & (rs["kind"] == "run")][0]
    assert r1["energy_j"] == pytest.approx(10.0 * r1["duration_s"], rel=0.01)
    assert r1["energy_j"] == pytest.approx(mine[1]["energy_j"], rel=1e-9)
    assert (run.sections["rank"] == -1).all()
    # phases tile the merged run, each 20 W over its window
    ph = run.sections[run.sections["kind"] == "phase"]
    np.testing.assert_allclose(ph["energy_j"], 20.0 * ph["duration_s"], rtol=0.01)
    assert s["resolution"] is not None and s["source_label"] == "simulated" and "uncertainty" in s
    # the peak of the summed power: two constant 10 W ranks add up to 20 W at every instant
    assert s["peak_power_w"] == pytest.approx(20.0, rel=0.01) and "added up over time" in s["peak_power_rule"]
    # the store's runs row says how many ranks
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT world_size FROM runs").fetchone()[0] == 2
    conn.close()
    # and the report shows the per-rank breakdown
    from energyprof.views.report import write_report

    html = Path(write_report(run, tmp_path / "r.html")).read_text()
    assert "Ranks" in html and socket.gethostname() in html


def _full_tp_ids(prompt, n, vocab=32, hidden=16, inner=8, shards=2):
    """The toy tensor-parallel LM of dist_worker.py, whole (no sharding, no process group)."""
    g = torch.Generator().manual_seed(0)
    embed = torch.randn(vocab, hidden, generator=g)
    w_in = torch.randn(hidden, inner * shards, generator=g)
    w_out = torch.randn(inner * shards, hidden, generator=g)
    head = torch.randn(hidden, vocab, generator=g)
    ids = torch.tensor([prompt])
    for _ in range(n):
        h = embed[ids]
        logits = (h + torch.relu(h @ w_in) @ w_out) @ head
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids.tolist()


def test_four_ranks_tensor_parallel_counts_tokens_once_per_replica_group(tmp_path):
    """Four ranks: two replica groups of two tensor-parallel shards (all_reduce inside forward)."""
    db, mine = spawn(tmp_path, 4, "tp")
    run = _one_run(db)
    s = run.summary()
    truth_w = [5.0 * (r + 1) for r in range(4)]
    assert s["status"] == "completed"
    assert sorted(set(run.samples["rank"].tolist())) == [0, 1, 2, 3]
    assert s["energy_j"] == pytest.approx(sum(truth_w) * s["duration_s"], rel=0.01)
    np.testing.assert_allclose(run.ranks["energy_j"], np.array(truth_w) * s["duration_s"], rtol=0.01)
    assert run.ranks["replica_group"].tolist() == [0, 0, 1, 1]
    # the shards compute the whole model: every rank's ids equal the unsharded model's
    want = _full_tp_ids([1, 2, 3], 4)
    assert all(mine[r]["ids"] == want for r in range(4))
    # tokens once per replica group: the two group leaders' own counts, not the four ranks'
    assert [mine[r]["output_tokens"] for r in (1, 2, 3)] == [4, 4, 4]   # each rank's own session
    assert s["output_tokens"] == 4 + mine[2]["output_tokens"] == 8
    assert s["input_tokens"] == 6
    # the merged token rows: each group leader's steps with its group's power
    tok = run.tokens
    assert sorted(set(tok["rank"].tolist())) == [0, 2]
    for lead, w in ((0, truth_w[0] + truth_w[1]), (2, truth_w[2] + truth_w[3])):
        t = tok[tok["rank"] == lead]
        assert len(t) == 3
        np.testing.assert_allclose(t["energy_j"], w * t["duration_s"], rtol=0.01)
    # the per-host figure is the total (one host), and per-rank token rows are kept
    assert sum(s["distributed"]["energy_j_per_host"].values()) == pytest.approx(s["energy_j"], rel=1e-9)
    assert sorted(set(run.rank_tokens["rank"].tolist())) == [0, 1, 2, 3]


def test_a_rank_that_dies_leaves_the_others_saved_and_the_run_interrupted(tmp_path):
    db, mine = spawn(tmp_path, 3, "die", expect_rc=[0, 0, 7])
    run = _one_run(db)
    s = run.summary()
    assert s["status"] == "interrupted"
    assert run.ranks["status"].tolist() == ["completed", "completed", "missing"]
    assert sorted(set(run.samples["rank"].tolist())) == [0, 1]
    # the survivors' truths: 10 W and 20 W (the dead rank's energy is unknown, not 0)
    assert s["energy_j"] == pytest.approx(30.0 * s["duration_s"], rel=0.01)
    assert np.isnan(run.ranks["energy_j"][2])
    assert mine[1]["output_tokens"] == 3                  # rank 1's own session (rank 0 was asked for 2)
    assert s["output_tokens"] == 2 + mine[1]["output_tokens"]
    assert s["distributed"]["missing_ranks"] == [2]
    # rank 0 waited for the survivors before stopping (rank 1's samples cover its window)
    assert any("rank 2 did not finish" in p for p in s["distributed"]["exit_problems"])
    assert any("rank 2" in w for w in s["warnings"])
    # the user section of the surviving ranks: rank 0's window over both survivors' power
    sec = run.sections[run.sections["name"] == "generate"][0]
    assert sec["energy_j"] == pytest.approx(30.0 * sec["duration_s"], rel=0.01)


def test_distributed_argument_without_a_process_group():
    assert resolve_mode("auto") == (False, None)      # no group: a one-process run
    assert resolve_mode(False) == (False, None)
    with pytest.raises(RuntimeError, match="init_process_group"):
        resolve_mode(True)
    with pytest.raises(RuntimeError, match="init_process_group"):
        resolve_mode({"replica_group": 1})
    with pytest.raises(ValueError, match="replica_group"):
        resolve_mode({"replica_group": -1})
    with pytest.raises(ValueError, match="unknown keys"):
        resolve_mode({"group": 1})
    with pytest.raises(ValueError, match="distributed must be"):
        resolve_mode("yes")
    model = torch.nn.Linear(2, 2)
    with ep.run(model, source="synthetic:power_w=10", baseline_s=0, save=False, distributed="auto") as s:
        model(torch.zeros(1, 2))
    assert "distributed" not in s.summary() and len(s.ranks) == 0


def test_host_wide_source_on_one_rank_per_host_and_nvml_on_the_local_device(tmp_path):
    from test_nvml import build_fake

    lib = build_fake(tmp_path)
    script = tmp_path / "nvml.txt"
    script.write_text("".join(f"{1000 * (i + 1)} 50000\n" for i in range(4000)))
    db, mine = spawn(tmp_path, 2, "sources", ENERGYPROF_NVML_LIB=str(lib), FAKE_NVML_COUNT="2",
                     FAKE_NVML_SCRIPT=str(script))
    runs = {r["name"]: r for r in ep.runs(db=db, limit=None)}
    assert set(runs) == {"hostwide", "nvml"}
    host = ep.load(int(runs["hostwide"]["run_id"]), db=db)
    # one host: rank 0 leads it and is the only one to sample the host-wide source
    assert host.ranks["host_leader"].tolist() == [0, 0]
    assert mine[1]["hostwide_samples"] == 0
    assert set(host.samples["rank"].tolist()) == {0}
    assert host.ranks["source"].tolist() == ["estimate", ""] and np.isnan(host.ranks["energy_j"][1])
    # so the run's energy is rank 0's alone, not twice it
    assert host.summary()["energy_j"] == pytest.approx(float(host.ranks["energy_j"][0]), rel=1e-9)
    assert host.summary()["source_label"] == "estimated"
    nv = ep.load(int(runs["nvml"]["run_id"]), db=db)
    assert mine[1]["nvml_spec"] == "nvml:index=1"
    assert nv.ranks["source"].tolist() == ["nvml:index=0", "nvml:index=1"]
    assert sorted(set(nv.samples["rank"].tolist())) == [0, 1]


def test_a_merged_run_has_downsampling_levels_for_each_rank(tmp_path):
    """The merged run keeps sample_levels (what the dashboard's timelines read) per rank: each
    rank's level-1 buckets are its own 16 consecutive samples, re-computed here by brute force
    from the stored raw samples of that rank (mean weighted by duration, min, max)."""
    db, _ = spawn(tmp_path, 2, "long")
    run = _one_run(db)
    conn = sqlite3.connect(db)
    lv = conn.execute("SELECT rank, bucket, t_start_ns, t_end_ns, n, cpu_mean_w, cpu_min_w, cpu_max_w "
                      "FROM sample_levels WHERE run_id = ? AND level = 1 ORDER BY rank, bucket",
                      (run.run_id,)).fetchall()
    conn.close()
    assert sorted({r[0] for r in lv}) == [0, 1]
    for rank in (0, 1):
        mine = run.samples[run.samples["rank"] == rank]
        mine = mine[np.argsort(mine["t_start_ns"], kind="stable")]
        rows = [r for r in lv if r[0] == rank]
        assert len(mine) >= 1024 and len(rows) == -(-len(mine) // 16)
        assert sum(r[4] for r in rows) == len(mine)
        for r in rows:
            k = r[1]
            chunk = mine[16 * k:16 * k + 16]
            dt = (chunk["t_end_ns"] - chunk["t_start_ns"]).astype(float)
            p = chunk["cpu_w"]
            assert (r[2], r[3], r[4]) == (int(chunk["t_start_ns"][0]), int(chunk["t_end_ns"][-1]), len(chunk))
            assert r[5] == pytest.approx(float((p * dt).sum() / dt.sum()), rel=1e-12)
            assert (r[6], r[7]) == (float(p.min()), float(p.max()))
        # each rank's own power (its ground truth) comes through its levels
        assert np.mean([r[5] for r in rows]) == pytest.approx(10.0 * (rank + 1), rel=1e-9)


def _steps(rng, t0, t1, n):
    from energyprof import _core

    edges = np.unique(np.concatenate([[t0, t1], rng.integers(t0 + 1, t1, n)]))
    x = np.zeros(len(edges) - 1, dtype=np.dtype(_core.SAMPLE_DTYPE))
    x["t_start_ns"], x["t_end_ns"], x["kind"] = edges[:-1], edges[1:], 1
    for d in ("cpu_w", "ane_w", "dram_w", "package_w"):
        x[d] = np.nan
    x["gpu_w"] = rng.uniform(0, 100, len(x))
    return x


def test_peak_of_the_summed_power_against_every_overlapping_pair():
    # Brute force, written apart: the sum of two step functions takes the value P_i + P_j on
    # every overlap of a sample i of one with a sample j of the other; its peak over the
    # window is the largest such sum over the overlapping pairs that lie in the window.
    from energyprof.measure.distributed import peak_of_sum

    rng = np.random.default_rng(7)
    for trial in range(30):
        a = _steps(rng, 0, 1_000_000, int(rng.integers(1, 40)))
        b = _steps(rng, 200_000 * (trial % 2), 1_200_000, int(rng.integers(1, 40)))
        w0, w1 = int(rng.integers(0, 400_000)), int(rng.integers(600_000, 1_100_000))
        best = -1.0
        for i in range(len(a)):
            for j in range(len(b)):
                lo = max(a["t_start_ns"][i], b["t_start_ns"][j], w0)
                hi = min(a["t_end_ns"][i], b["t_end_ns"][j], w1)
                if lo < hi and a["gpu_w"][i] + b["gpu_w"][j] > best:
                    best = a["gpu_w"][i] + b["gpu_w"][j]
        # and where only one of them has a sample (b may start late), that one alone
        for x, y in ((a, b), (b, a)):
            for i in range(len(x)):
                lo, hi = max(x["t_start_ns"][i], w0), min(x["t_end_ns"][i], w1)
                if lo >= hi:
                    continue
                covered = np.sum(np.clip(np.minimum(y["t_end_ns"], hi) - np.maximum(y["t_start_ns"], lo), 0, None))
                if covered < hi - lo and x["gpu_w"][i] > best:
                    best = x["gpu_w"][i]
        got, t = peak_of_sum([a, b], w0, w1)
        assert got == pytest.approx(best, rel=1e-12), trial
        assert got <= a["gpu_w"].max() + b["gpu_w"].max()
    nothing = peak_of_sum([], 0, 10)
    assert np.isnan(nothing[0]) and nothing[1] == -1


def test_clock_drift_moves_a_rank_s_rows_linearly_onto_rank_0_s_clock():
    # Hand-worked: rank 1's clock reads 1 us behind rank 0's at its time 0 and 3 us behind at
    # its time 1 s (2 ppm), each measured to 100 ns: a row at 0.25 s .. 0.75 s moves by
    # 1.5 us and 2.5 us.  Offsets within their uncertainties of each other mean no drift.
    from energyprof import _core
    from energyprof.measure.distributed import _shift, clock_drift

    p = {"rank": 1, "clock_offset_ns": 1000, "clock_uncertainty_ns": 100, "clock_at_ns": 0,
         "clock_end": (3000, 100, 1_000_000_000)}
    assert clock_drift(p) == pytest.approx(2e-6)
    x = np.zeros(1, dtype=np.dtype(_core.SAMPLE_DTYPE))
    x["t_start_ns"], x["t_end_ns"] = 250_000_000, 750_000_000
    y = _shift(x, p)
    assert int(y["t_start_ns"][0]) == 250_000_000 + 1500 and int(y["t_end_ns"][0]) == 750_000_000 + 2500
    p["clock_end"] = (1150, 100, 1_000_000_000)              # 150 ns apart, 200 ns of uncertainty
    assert clock_drift(p) is None
    y = _shift(x, p)
    assert int(y["t_start_ns"][0]) == 250_000_000 + 1000 and int(y["t_end_ns"][0]) == 750_000_000 + 1000
    assert clock_drift({**p, "clock_end": None}) is None and clock_drift({**p, "rank": 0}) is None
