"""The run store: C writer vs its executemany twin, schema and migrations, the write API
the session uses, the read API (filters, sort, pagination, stats, compare, cleanup,
export/import) and the error paths (full disk, read-only, locked, foreign files)."""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import math
import os
import sqlite3
import tempfile
import threading

from typing import Optional

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import energyprof as ep
from energyprof import _core
from energyprof import _reference
from energyprof.store import schema
from energyprof._dtypes import (CALL_DTYPE, DEVICE_SAMPLE_DTYPE, HEAD_DTYPE, RANK_DTYPE, SECTION_DTYPE, TEXT_DTYPE,
                               TOKEN_DTYPE, text_dtype)
from energyprof.store.db import Store
from energyprof.store.rundata import AGG_DTYPE, ARRAY_NAMES, RunData, sample_row_dtype
from fakeclock import wait_until

SAMPLE_DTYPE = np.dtype(_core.SAMPLE_DTYPE)
NAN = float("nan")


# ---------------------------------------------------------------------------------
# realistic runs
# ---------------------------------------------------------------------------------
def make_summary(i: int = 0, **over):
    s = {
        "run_id": None, "name": f"run-{i}", "tags": ["bench", f"t{i % 3}"], "status": "completed",
        "started_at": f"2025-03-{1 + i:02d}T10:00:00+00:00", "t_origin_ns": 123456789 + i,
        "source": "synthetic:power_w=20", "source_kind": "synthetic", "source_label": "simulated",
        "source_meta": {"power_w": 20.0, "period_ms": 5}, "method": "time-split within sample", "sample_period_s": 0.005,
        "mode": "standard", "sync": "none", "duration_s": 2.5 + i, "energy_j": 50.0 + 3 * i, "net_energy_j": 40.0 + i,
        "baseline_power_w": 4.0, "peak_power_w": 31.5, "input_tokens": 16, "output_tokens": 32 + i, "batch_size": 1,
        "j_per_token": (50.0 + 3 * i) / (48 + i), "j_per_output_token": (50.0 + 3 * i) / (32 + i),
        "tokens_per_j": (32 + i) / (50.0 + 3 * i), "edp_js": (50.0 + 3 * i) * (2.5 + i),
        "phases": {
            "pre_inference": {"energy_j": 1.0, "net_energy_j": 0.5, "duration_s": 0.1, "tokens": 0,
                              "j_per_token": NAN, "edp_js": 0.1},
            "prefill": {"energy_j": 9.0, "net_energy_j": 8.0, "duration_s": 0.4, "tokens": 16,
                        "j_per_token": 9.0 / 16, "edp_js": 3.6},
            "decode": {"energy_j": 38.0 + i, "net_energy_j": 30.0, "duration_s": 1.9, "tokens": 31 + i,
                       "j_per_token": (38.0 + i) / (31 + i), "edp_js": 72.2},
            "post_inference": {"energy_j": 2.0, "net_energy_j": 1.5, "duration_s": 0.1, "tokens": 0,
                               "j_per_token": NAN, "edp_js": 0.2},
        },
        "domains": {"cpu": 30.0 + i, "gpu": 20.0, "ane": NAN, "dram": NAN, "package": NAN},
        "total_rule": "sum of measured domains", "unattributed_j": 0.25,
        "model": {"name": "tiny-llama" if i % 2 == 0 else "tiny-gpt2", "arch": "llama" if i % 2 == 0 else "gpt2",
                  "n_layers": 4, "hidden_size": 64, "n_heads": 4, "n_kv_heads": 2, "intermediate_size": 128,
                  "vocab_size": 1000, "n_params": 123456, "n_experts": 0, "experts_per_token": 0, "dtype": "float32"},
        "device": "cpu", "host": "testhost", "chip": "x86_64",
        "versions": {"energyprof": "0.1.0", "torch": "2.13.0", "transformers": "5.0", "python": "3.11"},
        # anything else the session adds, NaN and inf included, comes back exactly
        "baseline_domains_w": {"cpu": 3.5, "gpu": NAN, "package": float("inf")},
        "extra": [1.0, float("-inf"), NAN, {"deep": NAN}],
    }
    s.update(over)
    return s


def make_arrays(seed: int = 0, n_samples: int = 300, n_layers: int = 3, n_steps: int = 5):
    rng = np.random.default_rng(seed)
    t0 = 10**12 + seed
    samples = np.zeros(n_samples, sample_row_dtype())
    samples["rank"] = np.arange(n_samples) >= n_samples // 2   # two ranks' streams
    samples["t_start_ns"] = t0 + np.arange(n_samples, dtype=np.int64) * 5_000_000
    samples["t_end_ns"] = samples["t_start_ns"] + 5_000_000
    samples["kind"] = _core.KIND_INTERVAL
    samples["flags"] = rng.choice(np.array([0, 1, 4, 2**31 + 5, 2**32 - 1], dtype=np.uint32), n_samples)
    samples["cpu_w"] = rng.uniform(1, 40, n_samples)
    samples["gpu_w"] = np.where(rng.random(n_samples) < 0.2, np.nan, rng.uniform(0, 100, n_samples))
    samples["ane_w"] = np.nan
    samples["dram_w"] = rng.uniform(0, 1e-3, n_samples)
    samples["package_w"] = np.where(rng.random(n_samples) < 0.05, np.inf, 0.0)  # +inf survives too

    names = ["run", "pre_inference", "prefill", "decode", "post_inference", "baseline", "décodage ✓ 🚀 user"]
    kinds = ["run", "phase", "phase", "phase", "phase", "baseline", "section"]
    sections = np.zeros(len(names), SECTION_DTYPE)
    sections["section_id"] = np.arange(len(names))
    sections["parent_id"] = [-1, 0, 0, 0, 0, -1, 3]
    sections["kind"] = kinds
    sections["name"] = names
    sections["t_start_ns"] = t0 + np.arange(len(names)) * 1000
    sections["t_end_ns"] = sections["t_start_ns"] + 10**9
    for f in ("duration_s", "energy_j", "cpu_j", "gpu_j", "net_energy_j", "unattributed_j"):
        sections[f] = rng.uniform(0, 10, len(names))
    sections["ane_j"] = np.nan
    sections["dram_j"] = np.nan
    sections["package_j"] = np.nan
    sections["tokens"] = rng.integers(0, 2**40, len(names))
    sections["samples_in_window"] = rng.integers(0, 1000, len(names))
    sections["resolved"] = rng.random(len(names)) < 0.5
    sections["flags"] = rng.choice(np.array([0, 2, 8, 256 | 2, 2**32 - 1], dtype=np.uint32), len(names))

    tokens = np.zeros(n_steps, TOKEN_DTYPE)
    tokens["step"] = np.arange(1, n_steps + 1)
    tokens["n_tokens"] = 2
    tokens["t_start_ns"] = t0 + np.arange(n_steps) * 10**7
    tokens["t_end_ns"] = tokens["t_start_ns"] + 10**7
    tokens["duration_s"] = 0.01
    tokens["energy_j"] = rng.uniform(0.1, 1, n_steps)
    tokens["cpu_j"] = tokens["energy_j"]
    tokens["gpu_j"] = np.nan
    tokens["ane_j"] = np.nan
    tokens["dram_j"] = np.nan
    tokens["package_j"] = -1e-300
    tokens["j_per_token"] = tokens["energy_j"] / 2
    tokens["samples_in_window"] = 2
    tokens["resolved"] = rng.random(n_steps) < 0.7
    tokens["flags"] = np.where(tokens["resolved"], 0, 8) | rng.choice(np.array([0, 256, 4], np.uint32), n_steps)

    next_id = [0]  # call ids are unique across layers, components and ops, as in a real run

    def calls(comps, layers):
        rows = [(l, c, s) for s in range(n_steps + 1) for l in layers for c in comps]
        a = np.zeros(len(rows), CALL_DTYPE)
        a["call_id"] = next_id[0] + np.arange(len(rows))
        a["parent_id"] = rng.integers(-1, next_id[0] + len(rows), len(rows))
        next_id[0] += len(rows)
        a["layer"] = [r[0] for r in rows]
        a["component"] = [r[1] for r in rows]
        a["step"] = [r[2] for r in rows]
        a["call"] = rng.integers(0, 2, len(rows))
        a["t_start_ns"] = t0 + np.arange(len(rows)) * 1000
        a["t_end_ns"] = a["t_start_ns"] + rng.integers(1, 10**6, len(rows))
        a["duration_s"] = (a["t_end_ns"] - a["t_start_ns"]) / 1e9
        a["energy_j"] = rng.uniform(0, 0.01, len(rows))
        a["cpu_j"] = a["energy_j"]
        for d in ("gpu_j", "ane_j", "dram_j", "package_j"):
            a[d] = np.nan
        a["unattributed_j"] = rng.uniform(0, 1e-4, len(rows))
        a["samples_in_window"] = rng.integers(0, 3, len(rows))
        a["resolved"] = rng.random(len(rows)) < 0.5
        a["flags"] = np.where(a["resolved"], 0, 8) | rng.choice(np.array([0, 2, 256], np.uint32), len(rows))
        for f in ("act_mean", "act_std", "act_max", "act_sparsity", "act_abs_mean"):
            a[f] = np.where(rng.random(len(rows)) < 0.5, np.nan, rng.normal(size=len(rows)))
        return a

    layers = calls(["layer"], range(n_layers))
    components = np.concatenate([
        calls(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "input_norm"],
              range(n_layers)),
        calls(["embed", "final_norm", "lm_head"], [-1]),
    ])
    ops = calls(["aten::mm", "aten::softmax"], [0])
    # mode="deep" head rows: one per (softmax op call, head); NaN where a statistic is undefined
    n_heads = 4
    soft = ops[ops["component"] == "aten::softmax"]
    heads = np.zeros(len(soft) * n_heads, HEAD_DTYPE)
    heads["call_id"] = np.repeat(soft["call_id"], n_heads)
    heads["layer"] = np.repeat(soft["layer"], n_heads)
    heads["step"] = np.repeat(soft["step"], n_heads)
    heads["head"] = np.tile(np.arange(n_heads), len(soft))
    heads["n_queries"] = rng.integers(1, 2**40, len(heads))
    heads["entropy"] = np.where(rng.random(len(heads)) < 0.2, np.nan, rng.uniform(0, 3, len(heads)))
    heads["max_weight"] = rng.uniform(0, 1, len(heads))
    heads["sparsity"] = np.where(rng.random(len(heads)) < 0.2, np.nan, rng.uniform(0, 1, len(heads)))
    # text with the run: prompt and output per sequence, one row per generated token
    rows = [("prompt", -1, 0, f"the cost of a token {seed} — ünïcödé ✓"), ("prompt", -1, 1, "a second 🚀 prompt"),
            ("output", -1, 0, "x" * (50 + seed)), ("output", -1, 1, "")]
    rows += [("token", k, b, f" tok{k}.{b}") for k in range(n_steps + 1) for b in range(2)]
    texts = np.array(rows, dtype=text_dtype(max(len(r[3]) for r in rows)))
    sections["rank"] = -1                       # merged rows of a multi-rank run
    tokens["rank"] = rng.integers(0, 4, n_steps)
    for a in (layers, components, ops):
        a["rank"] = rng.integers(0, 4, len(a))
    ranks = np.zeros(2, RANK_DTYPE)
    ranks["rank"], ranks["local_rank"], ranks["host"] = [0, 1], [0, 1], ["hôte-a", "hôte-a"]
    ranks["host_leader"], ranks["replica_group"] = 0, [0, 1]
    ranks["device"], ranks["source"], ranks["source_label"] = "cpu", "synthetic:power_w=10", "simulated"
    ranks["status"] = ["completed", "missing"]
    ranks["clock_offset_ns"], ranks["clock_uncertainty_ns"] = [0, -2**40], [0, 12345]
    ranks["t_start_ns"], ranks["t_end_ns"] = t0, t0 + 10**9
    ranks["energy_j"] = [10.0, np.nan]
    for d in ("cpu_j", "gpu_j", "ane_j", "dram_j", "package_j"):
        ranks[d] = [rng.uniform(0, 5), np.nan]
    ranks["n_samples"], ranks["input_tokens"], ranks["output_tokens"] = [7, 0], [4, 4], [9, 9]
    rank_sections = np.concatenate([sections, sections])
    rank_sections["rank"] = np.repeat([0, 1], len(sections))
    rank_tokens = np.concatenate([tokens, tokens])
    rank_tokens["rank"] = np.repeat([0, 1], n_steps)
    # two GPUs' own series (nvml:devices=0,1): one row per device per sample, NaN kept
    shared = samples[:25]
    device_samples = np.zeros(2 * len(shared), DEVICE_SAMPLE_DTYPE)
    for f in ("t_start_ns", "t_end_ns", "kind", "flags"):
        device_samples[f] = np.repeat(shared[f], 2)
    device_samples["device"] = np.tile([0, 3], len(shared))
    device_samples["power_w"] = np.where(rng.random(len(device_samples)) < 0.1, np.nan,
                                         rng.uniform(0, 700, len(device_samples)))
    device_samples["rank"] = rng.integers(0, 2, len(device_samples))
    return dict(samples=samples, sections=sections, tokens=tokens, layers=layers, components=components, ops=ops,
                heads=heads, texts=texts, ranks=ranks, rank_sections=rank_sections, rank_tokens=rank_tokens,
                device_samples=device_samples)


def make_run(i: int = 0, **kw) -> RunData:
    return RunData(make_summary(i), **make_arrays(i, **kw))


def _as_stored(name: str, a: np.ndarray, version: int) -> np.ndarray:
    """The rows as a database of schema ``version`` held them: no flags column before 5
    (the samples' flags are the source's sample flags, kept since version 1), no
    act_abs_mean in the call tables before schema.TEXTS_VERSION, no rank column before
    schema.RANKS_VERSION."""
    drop = {"rank"} if version < schema.RANKS_VERSION else set()
    if version < 5 and name != "samples":
        drop.add("flags")
    if version < schema.TEXTS_VERSION and name in ("layers", "components", "ops"):
        drop.add("act_abs_mean")
    return a[[f for f in a.dtype.names if f not in drop]]


def _read_back(arrays: dict, version: int) -> dict:
    """What rows written at schema ``version`` read back as after migrating: before 5 the one
    flag they kept is 'unresolved'; before TEXTS_VERSION a call has no mean |x| (NaN);
    before RANKS_VERSION they came from one process, rank 0."""
    out = dict(arrays)
    for name in ("samples", "sections", "tokens", "layers", "components", "ops"):
        a = arrays[name].copy()
        if version < 5 and name != "samples":
            a["flags"] = np.where(a["resolved"], 0, 8)
        if version < schema.TEXTS_VERSION and name in ("layers", "components", "ops"):
            a["act_abs_mean"] = np.nan
        if version < schema.RANKS_VERSION:
            a["rank"] = 0
        out[name] = a
    return out


def assert_same_summary(a, b, path="summary"):
    if isinstance(a, dict):
        assert isinstance(b, dict), path
        assert set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            assert_same_summary(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_summary(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), (path, b)
    else:
        assert a == b, (path, a, b)


def assert_same_arrays(a: RunData, b: RunData):
    for name in ARRAY_NAMES:
        x, y = a.array(name), b.array(name)
        assert x.dtype == y.dtype, name
        assert len(x) == len(y), name
        for f in x.dtype.names:
            np.testing.assert_array_equal(x[f], y[f], err_msg=f"{name}.{f}")


def sha(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


@pytest.fixture
def dbpath(tmp_path):
    return str(tmp_path / "runs.db")


# ---------------------------------------------------------------------------------
# the C writer against its twin
# ---------------------------------------------------------------------------------
_FIELD_KINDS = {"i8": "<i8", "i4": "<i4", "u4": "<u4", "f8": "<f8", "b": "?", "u": "U6", "i2": "<i2", "f4": "<f4"}


@settings(max_examples=25, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(sorted(_FIELD_KINDS)), min_size=1, max_size=6),
    n=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    run_id=st.integers(-2**63, 2**63 - 1),
)
def test_writer_matches_executemany_twin(kinds, n, seed, run_id):
    rng = np.random.default_rng(seed)
    dt_ = np.dtype([(f"c{i}", _FIELD_KINDS[k]) for i, k in enumerate(kinds)])
    a = np.zeros(n, dt_)
    for i, k in enumerate(kinds):
        f = f"c{i}"
        if k in ("i8", "i4", "i2", "u4"):
            info = np.iinfo(np.dtype(_FIELD_KINDS[k]))
            a[f] = rng.integers(info.min, info.max, n, endpoint=True, dtype=np.dtype(_FIELD_KINDS[k]))
        elif k in ("f8", "f4"):
            v = rng.normal(scale=1e6, size=n)
            v[rng.random(n) < 0.2] = np.nan
            v[rng.random(n) < 0.05] = -np.inf
            a[f] = v
        elif k == "b":
            a[f] = rng.random(n) < 0.5
        else:
            alphabet = ["a", "Z", "é", "✓", "🚀", "\u0000", " "]
            a[f] = ["".join(rng.choice(alphabet, rng.integers(0, 7))) for _ in range(n)]
    cols = ", ".join(f'"c{i}"' for i in range(len(kinds)))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "w.db")
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute(f"CREATE TABLE c_side (run_id INTEGER, {cols})")
        conn.execute(f"CREATE TABLE py_side (run_id INTEGER, {cols})")
        w = _core.Store(path)
        w.insert("c_side", a, {"run_id": run_id})
        w.flush()
        assert w.rows_committed == n
        w.close()
        _reference.store_insert(conn, "py_side", a, {"run_id": run_id})
        c_rows = conn.execute(f"SELECT run_id, {cols} FROM c_side ORDER BY rowid").fetchall()
        p_rows = conn.execute(f"SELECT run_id, {cols} FROM py_side ORDER BY rowid").fetchall()
        types_c = conn.execute(f"SELECT {', '.join(f'typeof(c{i})' for i in range(len(kinds)))} FROM c_side").fetchall()
        types_p = conn.execute(f"SELECT {', '.join(f'typeof(c{i})' for i in range(len(kinds)))} FROM py_side").fetchall()
        conn.close()
    assert c_rows == p_rows
    assert types_c == types_p


def test_writer_text_is_utf8_without_padding(tmp_path):
    path = str(tmp_path / "t.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE t (s TEXT)")
    a = np.array(["", "a", "é", "✓✓", "🚀x", "abcdefgh"], dtype="U8")
    arr = np.zeros(len(a), [("s", "U8")])
    arr["s"] = a
    with _core.Store(path) as w:
        w.insert("t", arr)
    got = conn.execute("SELECT s, length(CAST(s AS BLOB)) FROM t ORDER BY rowid").fetchall()
    assert [g[0] for g in got] == list(a)
    assert [g[1] for g in got] == [len(x.encode("utf-8")) for x in a]


def test_writer_orders_execute_after_insert_and_bounds_queue(tmp_path):
    path = str(tmp_path / "q.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE t (run_id INTEGER, x INTEGER)")
    conn.execute("CREATE TABLE total (n INTEGER)")
    w = _core.Store(path, queue_jobs=1, queue_bytes=1)
    a = np.zeros(100, [("x", "<i8")])
    a["x"] = np.arange(100)
    for k in range(30):
        w.insert("t", a, {"run_id": k})
    # an execute queued after the inserts sees all of them: the queue is FIFO
    w.execute("INSERT INTO total SELECT COUNT(*) FROM t")
    w.flush()
    assert w.pending == 0
    assert w.rows_committed == 3000
    w.close()
    assert conn.execute("SELECT n FROM total").fetchone()[0] == 3000
    assert conn.execute("SELECT SUM(x), COUNT(DISTINCT run_id) FROM t").fetchone() == (30 * 4950, 30)


def test_writer_argument_errors(tmp_path):
    path = str(tmp_path / "e.db")
    sqlite3.connect(path).execute("CREATE TABLE t (x INTEGER)").connection.close()
    w = _core.Store(path)
    with pytest.raises(TypeError, match="structured"):
        w.insert("t", np.arange(3))
    with pytest.raises(TypeError, match="field x"):
        w.insert("t", np.zeros(2, [("x", "<u8")]))
    with pytest.raises(TypeError, match="byte order"):
        w.insert("t", np.zeros(2, [("x", ">i8")]))
    with pytest.raises(TypeError, match="field x"):
        w.insert("t", np.zeros(2, [("x", "O")]))
    with pytest.raises(ValueError, match="identifier"):
        w.insert("t; DROP TABLE t", np.zeros(2, [("x", "<i8")]))
    with pytest.raises(ValueError, match="identifier"):
        w.insert("t", np.zeros(2, [("x y", "<i8")]))
    with pytest.raises(TypeError, match="constants"):
        w.insert("t", np.zeros(2, [("x", "<i8")]), [1])
    with pytest.raises(TypeError, match="parameter"):
        w.execute("INSERT INTO t VALUES (?)", (object(),))
    w.insert("t", np.zeros(0, [("x", "<i8")]))  # nothing to write: fine
    # writer-side errors come back at flush, with the table and the sqlite message
    w.insert("missing", np.zeros(2, [("x", "<i8")]))
    w.insert("t", np.zeros(2, [("nope", "<i8")]))
    with pytest.raises(RuntimeError, match=r"no such table: missing.*2 jobs failed"):
        w.flush()
    w.flush()  # the error was reported once
    w.close()
    w.close()  # idempotent
    assert w.closed
    with pytest.raises(ValueError, match="closed"):
        w.insert("t", np.zeros(1, [("x", "<i8")]))
    with pytest.raises(ValueError, match="not an SQLite database|malformed"):
        bad = tmp_path / "junk.db"
        bad.write_bytes(b"this is not a database at all" * 100)
        _core.Store(str(bad))


# ---------------------------------------------------------------------------------
# schema and migrations
# ---------------------------------------------------------------------------------
def test_schema_has_a_column_for_every_dtype_field(dbpath):
    with Store(dbpath) as s:
        for name, table in schema.ARRAY_TABLES.items():
            cols = set(schema.table_columns(s.conn, table))
            dt_ = RunData().array(name).dtype   # samples: SAMPLE_DTYPE + rank
            assert set(dt_.names) | {"run_id"} == cols, (table, set(dt_.names) ^ (cols - {"run_id"}))
        assert schema.user_version(s.conn) == schema.SCHEMA_VERSION == schema.DEVICES_VERSION
        idx = {r[0] for r in s.conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        for table in schema.ARRAY_TABLES.values():
            if table not in ("head_metrics", "texts", "run_ranks"):
                assert f"idx_{table}_run_t" in idx
        assert [r[2] for r in s.conn.execute("PRAGMA index_info(idx_texts_run_kind)")] == ["run_id", "kind"]
        assert [r[2] for r in s.conn.execute("PRAGMA index_info(idx_run_ranks_run_rank)")] == ["run_id", "rank"]
        assert {"attention_kind", "world_size"} <= set(schema.table_columns(s.conn, "runs"))
        # head rows have no time: indexed by (run_id, layer)
        assert [r[2] for r in s.conn.execute("PRAGMA index_info(idx_head_metrics_run_layer)")] == ["run_id", "layer"]
        fks = s.conn.execute("PRAGMA foreign_key_list(head_metrics)").fetchall()
        assert [(r[2], r[3], r[4], r[6]) for r in fks] == [("runs", "run_id", "id", "CASCADE")]
        assert {"idx_runs_started_at", "idx_runs_j_per_token", "idx_runs_energy_j"} <= idx
        assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _fill_v1(path: str, n: int = 3) -> list:
    """A version-1 database with n runs, written the way energyprof 1 wrote them."""
    conn = sqlite3.connect(path, isolation_level=None)
    schema.create(conn, 1)
    ids = []
    for i in range(n):
        s = make_summary(i)
        cur = conn.execute(
            "INSERT INTO runs (name, tags, status, started_at, source, source_kind, model_name, model_arch, "
            "energy_j, j_per_token, tokens_per_j, input_tokens, output_tokens, summary) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (s["name"], json.dumps(s["tags"]), "running" if i == 0 else "completed", s["started_at"], s["source"],
             s["source_kind"], s["model"]["name"], s["model"]["arch"], s["energy_j"], s["j_per_token"],
             s["tokens_per_j"], s["input_tokens"], s["output_tokens"], ep.db._dumps(s)))
        rid = cur.lastrowid
        ids.append(rid)
        arr = make_arrays(i, n_samples=20)
        for name in ("samples", "sections", "tokens"):
            _reference.store_insert(conn, schema.ARRAY_TABLES[name], _as_stored(name, arr[name], 1), {"run_id": rid})
        for name in ("layers", "components"):
            a = arr[name]
            v1 = [f for f in a.dtype.names
                  if f not in ("call_id", "parent_id", "unattributed_j", "flags", "act_abs_mean", "rank")]
            _reference.store_insert(conn, schema.ARRAY_TABLES[name], a[v1], {"run_id": rid})
    conn.close()
    return ids


def test_migration_from_v1(dbpath):
    ids = _fill_v1(dbpath)
    conn = sqlite3.connect(dbpath)
    assert schema.user_version(conn) == 1
    assert "op_metrics" not in schema.tables(conn)
    conn.close()
    with Store(dbpath) as s:
        assert schema.user_version(s.conn) == schema.SCHEMA_VERSION
        assert s.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert s.conn.execute("PRAGMA foreign_key_check").fetchall() == []
        for i, rid in enumerate(ids):
            r = s.load(rid)
            want = _read_back(make_arrays(i, n_samples=20), 1)
            summ = make_summary(i)
            # the new runs columns are backfilled from the summary kept by v1
            row = s.conn.execute("SELECT edp_js, source_label, n_params, pid FROM runs WHERE id=?", (rid,)).fetchone()
            assert tuple(row) == (summ["edp_js"], "simulated", 123456, None)
            for name in ("samples", "sections", "tokens"):
                for f in want[name].dtype.names:
                    np.testing.assert_array_equal(r.array(name)[f], want[name][f])
            for name in ("layers", "components"):
                got = r.array(name)
                assert (got["call_id"] == -1).all() and (got["parent_id"] == -1).all()
                assert np.isnan(got["unattributed_j"]).all() and np.isnan(got["act_abs_mean"]).all()
                for f in want[name].dtype.names:
                    if f not in ("call_id", "parent_id", "unattributed_j", "act_abs_mean", "rank"):
                        np.testing.assert_array_equal(got[f], want[name][f])
            assert len(r.ops) == 0 and len(r.heads) == 0 and r.heads.dtype == HEAD_DTYPE
        # the v1 run left "running" has no owner pid: it was interrupted
        assert s.load(ids[0]).summary()["status"] == "interrupted"
        # and the migrated database takes new runs, ops included
        rid = s.save(make_run(7))
        assert_same_arrays(s.load(rid), make_run(7))


_V2_ARRAYS = ("samples", "sections", "tokens", "layers", "components", "ops")
def _same_fields(got: np.ndarray, want: np.ndarray, name: str) -> None:
    """Every field of ``want`` (as :func:`_read_back` gives it) back in ``got``; NaN equals NaN."""
    assert got.dtype == want.dtype
    for f in want.dtype.names:
        np.testing.assert_array_equal(got[f], want[f], err_msg=f"{name}.{f}")


def _fill_old(path: str, version: int, arrays: tuple, n: int, summary_over: Optional[dict] = None,
              **run_cols) -> tuple:
    """A database built with the DDL of an older ``version`` holding n runs: every runs
    column (``run_cols`` laid over them; ``summary_over[i]`` laid over run i's summary) and
    the given arrays as that version held them."""
    summary_over = summary_over or {}
    conn = sqlite3.connect(path, isolation_level=None)
    schema.create(conn, version)
    assert schema.user_version(conn) == version
    ids = []
    for i in range(n):
        cols = dict(ep.db._run_columns(make_summary(i, **summary_over.get(i, {}))), **run_cols)
        if version < schema.TEXTS_VERSION:
            cols.pop("attention_kind")
        if version < schema.RANKS_VERSION:
            cols.pop("world_size")
        names = list(cols)
        cur = conn.execute(f"INSERT INTO runs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                           [cols[k] for k in names])
        ids.append(cur.lastrowid)
        arr = make_arrays(i, n_samples=20)
        for name in arrays:
            _reference.store_insert(conn, schema.ARRAY_TABLES[name], _as_stored(name, arr[name], version),
                                    {"run_id": cur.lastrowid})
    tables = schema.tables(conn)
    conn.close()
    return ids, tables


def _fill_v2(path: str, n: int = 3) -> list:
    """A version-2 database (built with the v2 DDL) with n runs, written the way energyprof 2
    wrote them: every runs column and every v2 array, no head rows (v2 had no table for them)."""
    # another host: left as written
    ids, tables = _fill_old(path, 2, _V2_ARRAYS, n, pid=os.getpid(), pid_host="elsewhere",
                            ended_at="2025-03-01T10:00:05.000000+00:00")
    assert "head_metrics" not in tables
    return ids


def test_migration_from_v2(dbpath):
    ids = _fill_v2(dbpath)
    with Store(dbpath) as s:
        assert schema.user_version(s.conn) == schema.SCHEMA_VERSION
        assert "head_metrics" in schema.tables(s.conn) and "sample_levels" in schema.tables(s.conn)
        assert "run_ranks" in schema.tables(s.conn)
        assert s.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert s.conn.execute("PRAGMA foreign_key_check").fetchall() == []
        for i, rid in enumerate(ids):
            r = s.load(rid)
            want = _read_back(make_arrays(i, n_samples=20), 2)
            for name in _V2_ARRAYS:  # every v2 row is kept, field by field (and is rank 0: one process)
                assert r.array(name).dtype == want[name].dtype
                assert (r.array(name)["rank"] == 0).all()
                for f in want[name].dtype.names:
                    np.testing.assert_array_equal(r.array(name)[f], want[name][f], err_msg=f"{name}.{f}")
            assert len(r.heads) == 0 and r.heads.dtype == HEAD_DTYPE
            summ = make_summary(i)
            summ["run_id"] = rid
            assert_same_summary(r.summary(), summ)
        # the migrated database takes new runs, heads included, and deletes cascade into head_metrics
        rid = s.save(make_run(7))
        assert_same_arrays(s.load(rid), make_run(7))
        assert s.conn.execute("SELECT COUNT(*) FROM head_metrics WHERE run_id=?", (rid,)).fetchone()[0] \
            == len(make_run(7).heads) > 0
        ep.delete(rid, db=s)
        assert s.conn.execute("SELECT COUNT(*) FROM head_metrics").fetchone()[0] == 0
    # migrating is a one-time step: a second open finds the current version and changes nothing
    before = sha(dbpath)
    v = schema.SCHEMA_VERSION
    with Store(dbpath, mark_stale=False) as s:
        assert schema.migrate(s.conn, dbpath) == (v, v)
    assert sha(dbpath) == before


_V3_ARRAYS = _V2_ARRAYS + ("heads",)


def _fill_v3(path: str, n: int = 3) -> list:
    """A version-3 database (the v3 DDL) with n runs as energyprof 3 wrote them: every array,
    heads included, and rows without flags."""
    ids, _ = _fill_old(path, 3, _V3_ARRAYS, n)
    conn = sqlite3.connect(path)
    assert "flags" not in schema.table_columns(conn, "tokens")
    conn.close()
    return ids


def test_migration_from_v3_gives_rows_their_unresolved_flag(dbpath):
    ids = _fill_v3(dbpath)
    with Store(dbpath) as s:
        assert schema.user_version(s.conn) == schema.SCHEMA_VERSION
        assert s.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for table in ("sections", "tokens", "layer_metrics", "component_metrics", "op_metrics"):
            assert "flags" in schema.table_columns(s.conn, table), table
        for i, rid in enumerate(ids):
            r = s.load(rid)
            raw = make_arrays(i, n_samples=20)
            for name in _V3_ARRAYS:
                got = r.array(name)
                for f in raw[name].dtype.names:
                    if f == "flags" and name not in ("samples", "heads"):
                        # hand-worked: a v3 row kept only `resolved`; unresolved rows get bit 3 (8), others 0
                        assert got["flags"].tolist() == [0 if ok else 8 for ok in raw[name]["resolved"].tolist()]
                    else:  # (and rank 0: a v3 row came from one process; no mean |x|: NaN)
                        np.testing.assert_array_equal(got[f], _read_back(raw, 3)[name][f], err_msg=f"{name}.{f}")
        # new runs keep every flag bit, Python's (1 << 8) and the C kernel's alike
        rid = s.save(make_run(9))
        assert_same_arrays(s.load(rid), make_run(9))
    with Store(dbpath, mark_stale=False) as s:
        v = schema.SCHEMA_VERSION
        assert schema.migrate(s.conn, dbpath) == (v, v)


def test_migration_from_v5_adds_texts_and_backfills_the_attention_kind(dbpath):
    # head counts worked by hand: 8/8 heads = MHA, 8 query heads on 2 K/V heads = GQA,
    # 8 on 1 = MQA, no kv count = as many as query heads (MHA), no head counts = unknown
    models = [{"name": "a", "n_heads": 8, "n_kv_heads": 8}, {"name": "b", "n_heads": 8, "n_kv_heads": 2},
              {"name": "c", "n_heads": 8, "n_kv_heads": 1}, {"name": "d", "n_heads": 12},
              {"name": "e"}]
    want_kind = ["MHA", "GQA", "MQA", "MHA", None]
    ids, tables = _fill_old(dbpath, 5, _V3_ARRAYS, len(models),
                            summary_over={i: {"model": m} for i, m in enumerate(models)})
    assert "texts" not in tables
    with Store(dbpath) as s:
        assert schema.user_version(s.conn) == schema.SCHEMA_VERSION and schema.TEXTS_VERSION == 6
        assert "texts" in schema.tables(s.conn)
        assert s.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        got = [s.conn.execute("SELECT attention_kind FROM runs WHERE id=?", (rid,)).fetchone()[0] for rid in ids]
        assert got == want_kind
        for i, rid in enumerate(ids):
            r = s.load(rid)
            want = _read_back(make_arrays(i, n_samples=20), 5)
            for name in _V3_ARRAYS:     # every v5 row is kept, flags included, field by field
                _same_fields(r.array(name), want[name], name)
            assert len(r.texts) == 0 and r.texts.dtype == TEXT_DTYPE and r.prompt() is None
        # the migrated database takes runs with text, searchable by prompt; deletes cascade
        rid = s.save(make_run(7))
        assert_same_arrays(s.load(rid), make_run(7))
        assert s.load(rid).prompt(0) == "the cost of a token 7 — ünïcödé ✓"
        assert ep.runs(db=s, search="cost of a token 7").run_ids == [rid]
        ep.delete(rid, db=s)
        assert s.conn.execute("SELECT COUNT(*) FROM texts").fetchone()[0] == 0
    before = sha(dbpath)
    with Store(dbpath, mark_stale=False) as s:
        assert schema.migrate(s.conn, dbpath) == (schema.SCHEMA_VERSION,) * 2
    assert sha(dbpath) == before


def test_texts_round_trip_and_prompt_search(dbpath):
    with Store(dbpath) as s:
        ids = [s.save(make_run(i)) for i in range(3)]
        for i, rid in enumerate(ids):
            r = s.load(rid)
            assert r.prompt(0) == f"the cost of a token {i} — ünïcödé ✓" and r.prompt(1) == "a second 🚀 prompt"
            assert r.output(0) == "x" * (50 + i) and r.output(1) == ""
            assert r.token_texts(1) == {k: f" tok{k}.1" for k in range(6)}
            assert r.texts.dtype.fields["text"][0].itemsize // 4 == 50 + i   # as wide as the longest text
        # the prompt text is searched (substring, case-insensitive as LIKE is for ASCII), alone or with a filter
        assert ep.runs(db=s, search="cost of a token 1").run_ids == [ids[1]]
        assert sorted(ep.runs(db=s, search="COST OF A TOKEN").run_ids) == sorted(ids)
        assert ep.runs(db=s, search="cost of a token", model="tiny-gpt2").run_ids == [ids[1]]
        # output text is not a prompt: not matched
        assert ep.runs(db=s, search="x" * 50).run_ids == []
        # % and _ are literal
        assert ep.runs(db=s, search="token_1").run_ids == []


def test_fresh_database_matches_migrated_one(tmp_path):
    a, b, c2, c3, c4 = (str(tmp_path / f"{x}.db") for x in ("a", "b", "c", "d", "e"))
    _fill_v1(a, n=0)
    _fill_v2(c2, n=0)
    _fill_v3(c3, n=0)
    conn4 = sqlite3.connect(c4, isolation_level=None)
    schema.create(conn4, 4)  # a version-4 store (sample_levels, rows without flags)
    conn4.close()
    c5 = str(tmp_path / "f.db")
    conn5 = sqlite3.connect(c5, isolation_level=None)
    schema.create(conn5, 5)  # a version-5 store (flags; no texts, attention_kind or act_abs_mean)
    conn5.close()
    for p in (a, b, c2, c3, c4, c5):
        Store(p).close()

    def shape(p):
        c = sqlite3.connect(p)
        out = {t: sorted(tuple(r)[1:] for r in c.execute(f"PRAGMA table_info({t})")) for t in schema.tables(c)}
        out["_idx"] = sorted(
            (r[0], r[1], tuple(x[2] for x in c.execute(f"PRAGMA index_info({r[0]})")))
            for r in c.execute("SELECT name, tbl_name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL"))
        out["_fk"] = {t: sorted(tuple(r)[2:] for r in c.execute(f"PRAGMA foreign_key_list({t})"))
                      for t in schema.tables(c)}
        out["_version"] = schema.user_version(c)
        c.close()
        return out

    fresh = shape(b)
    assert "head_metrics" in fresh and "sample_levels" in fresh and fresh["_version"] == schema.SCHEMA_VERSION
    assert "run_ranks" in fresh
    assert shape(a) == fresh
    assert shape(c2) == fresh
    assert shape(c3) == fresh
    assert shape(c4) == fresh
    assert shape(c5) == fresh
    assert "texts" in fresh


def test_newer_database_is_refused_untouched(dbpath):
    Store(dbpath).close()
    conn = sqlite3.connect(dbpath)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    before = sha(dbpath)
    with pytest.raises(schema.SchemaError, match=r"newer energyprof.*version 99.*not changed"):
        Store(dbpath)
    with pytest.raises(schema.SchemaError, match="newer"):
        ep.runs(db=dbpath)
    assert sha(dbpath) == before


def test_non_sqlite_and_foreign_files_are_refused_untouched(tmp_path):
    junk = tmp_path / "notes.db"
    junk.write_bytes(b"hello, I am a text file\n" * 200)
    before = sha(junk)
    with pytest.raises(schema.SchemaError, match="not an energyprof database"):
        Store(str(junk))
    assert sha(junk) == before
    foreign = str(tmp_path / "other.db")
    c = sqlite3.connect(foreign)
    c.execute("CREATE TABLE people (name TEXT)")
    c.commit()
    c.close()
    before = sha(foreign)
    with pytest.raises(schema.SchemaError, match="not an energyprof store.*people"):
        Store(foreign)
    assert sha(foreign) == before


# ---------------------------------------------------------------------------------
# the write API and the round trip
# ---------------------------------------------------------------------------------
def test_arrays_read_in_pieces_are_whole_and_in_order(dbpath, monkeypatch):
    """Store.read_array fetches READ_PIECE_ROWS rows at a time into one array: with pieces of
    7 rows (none of the arrays a multiple of it) every array comes back whole, in order."""
    import energyprof.store.db as db_mod

    run = make_run(4, n_samples=500)
    with Store(dbpath) as s:
        rid = s.create_run({k: v for k, v in run.summary().items() if k not in ("phases", "domains")})
        s.write_samples(rid, run.samples)
        s.finish_run(rid, run.summary(), run.sections, run.tokens, run.layers, run.components, "completed")
    monkeypatch.setattr(db_mod, "READ_PIECE_ROWS", 7)
    back = ep.load(rid, db=dbpath)
    assert len(back.samples) == 500 and len(back.samples) % 7 and len(back.components) > 7
    for name in ("samples", "sections", "tokens", "layers", "components"):
        got, want = getattr(back, name), getattr(run, name)
        assert len(got) == len(want), name
        for f in want.dtype.names:
            if f in got.dtype.names and want.dtype[f].kind != "f":
                assert np.array_equal(got[f], want[f]), (name, f)
            elif f in got.dtype.names:
                assert np.allclose(got[f], want[f], equal_nan=True), (name, f)


def test_round_trip_every_array_field_by_field(dbpath):
    run = make_run(3, n_samples=2000)
    with Store(dbpath) as s:
        rid = s.create_run({k: v for k, v in run.summary().items() if k not in ("phases", "domains")})
        assert s.load(rid).summary()["status"] == "running"
        # the session writes samples while the run goes on, in batches
        for k in range(0, len(run.samples), 256):
            s.write_samples(rid, run.samples[k:k + 256])
        s.flush()
        assert len(s.load(rid).samples) == len(run.samples)
        s.finish_run(rid, run.summary(), run.sections, run.tokens, run.layers, run.components, "completed",
                     ops=run.ops, heads=run.heads, texts=run.texts, ranks=run.ranks,
                     rank_sections=run.rank_sections, rank_tokens=run.rank_tokens,
                     device_samples=run.device_samples)
    back = ep.load(rid, db=dbpath)
    assert_same_arrays(back, run)
    want = run.summary()
    want["run_id"] = rid
    got = back.summary()
    assert got["started_at"] == "2025-03-04T10:00:00+00:00"  # as the session wrote it
    col = sqlite3.connect(dbpath).execute("SELECT started_at FROM runs WHERE id=?", (rid,)).fetchone()[0]
    assert col == "2025-03-04T10:00:00.000000+00:00"  # normalised for sorting and filtering
    assert_same_summary(got, want)
    assert back.run_id == rid
    # finishing twice replaces the arrays rather than doubling them
    with Store(dbpath) as s:
        s.finish_run(rid, run.summary(), run.sections, run.tokens, run.layers, run.components, "failed")
    again = ep.load(rid, db=dbpath)
    assert_same_arrays(again, run)
    assert again.summary()["status"] == "failed"


def test_save_accepts_an_open_store_and_to_pandas(dbpath):
    with Store(dbpath) as s:
        rid = s.save(make_run(1))
        r = ep.load(rid, db=s)
        df = r.to_pandas("components")
        assert list(df.columns) == list(CALL_DTYPE.names)
        assert len(df) == len(r.components)
        dh = r.to_pandas("heads")
        assert list(dh.columns) == list(HEAD_DTYPE.names) and len(dh) == len(r.heads) > 0
        np.testing.assert_array_equal(dh["entropy"].to_numpy(), r.heads["entropy"])
        lst = ep.runs(db=s)
        assert lst.run_ids == [rid]
        flat = lst.to_pandas()
        assert flat.loc[0, "phases.decode.energy_j"] == make_summary(1)["phases"]["decode"]["energy_j"]
    with pytest.raises(ValueError, match="samples, sections, tokens, layers, components, ops"):
        r.to_pandas("nope")


def test_summary_dict_is_a_copy():
    r = RunData(make_summary(0))
    r.summary()["phases"]["decode"]["energy_j"] = -1
    assert r.summary()["phases"]["decode"]["energy_j"] == 38.0


def _block_se_oracle(rows, samples):
    """Brute force: group calls by the sample their window's midpoint falls in (last sample
    starting at or before it), sum energy and count per group, then the ratio estimator's
    standard error over the k groups: sqrt(sum (e_b - m n_b)^2 / (k (k - 1))) / mean(n_b)."""
    starts = [int(t) for t in samples["t_start_ns"]]
    per = {}
    for x in rows:
        a, b = int(x["t_start_ns"]), int(x["t_end_ns"])
        mid = a + (b - a) // 2
        blk = max([i for i, t in enumerate(starts) if t <= mid], default=-1)
        e_n = per.setdefault(blk, [0.0, 0])
        e_n[0] += float(x["energy_j"])
        e_n[1] += 1
    k = len(per)
    if k < 2:
        return float("nan"), k
    m = sum(v[0] for v in per.values()) / sum(v[1] for v in per.values())
    nbar = sum(v[1] for v in per.values()) / k
    return math.sqrt(sum((v[0] - m * v[1]) ** 2 for v in per.values()) / (k * (k - 1))) / nbar, k


def test_layer_and_component_summaries_against_brute_force():
    for spread, r in ((False, make_run(2)), (True, _spread_calls(make_run(3)))):
        e_run = r.summary()["energy_j"]
        every = {int(x["call_id"]): float(x["energy_j"]) for a in (r.layers, r.components, r.ops) for x in a}
        n_multi = 0
        for agg, calls, key in ((r.layer_summary(), r.layers, ("layer",)),
                                (r.component_summary(), r.components, ("layer", "component"))):
            assert agg.dtype == AGG_DTYPE
            groups = {}
            for row in calls:
                groups.setdefault(tuple(row[k] for k in key), []).append(row)
            assert len(agg) == len(groups)
            assert [tuple(a[k] for k in key) for a in agg] == sorted(groups)
            for a in agg:
                rows = groups[tuple(a[k] for k in key)]
                e = [float(x["energy_j"]) for x in rows]
                n = len(e)
                mean = sum(e) / n
                se, k = _block_se_oracle(rows, r.samples)
                n_multi += k > 1
                assert a["n_calls"] == n and a["n_eff"] == k
                assert a["energy_j"] == pytest.approx(sum(e), rel=1e-12)
                assert a["mean_energy_j"] == pytest.approx(mean, rel=1e-12)
                if k > 1:
                    assert a["sem_energy_j"] == pytest.approx(se, rel=1e-9)
                else:
                    assert math.isnan(a["sem_energy_j"])
                assert a["duration_s"] == pytest.approx(sum(float(x["duration_s"]) for x in rows), rel=1e-12)
                assert a["share"] == pytest.approx(sum(e) / e_run, rel=1e-12)
                # the parent of each call, each distinct parent once (the run for -1 or an unknown id)
                parents = {int(x["parent_id"]) if int(x["parent_id"]) in every else -1 for x in rows}
                parent_e = sum(every[p] if p >= 0 else e_run for p in parents)
                assert a["share_of_parent"] == pytest.approx(sum(e) / parent_e, rel=1e-12)
                own = sum(float(x["unattributed_j"]) for x in rows)
                assert a["self_energy_j"] == pytest.approx(own, rel=1e-12)
                assert a["self_share"] == pytest.approx(own / sum(e), rel=1e-12)
                assert a["resolved_share"] == pytest.approx(sum(bool(x["resolved"]) for x in rows) / n)
                assert a["cpu_j"] == pytest.approx(sum(float(x["cpu_j"]) for x in rows), rel=1e-12)
                assert math.isnan(a["gpu_j"])
        assert n_multi > 0 or not spread  # the spread run has groups over several samples
    empty = RunData({})
    assert len(empty.layer_summary()) == 0 and len(empty.component_summary()) == 0


def _spread_calls(run: RunData) -> RunData:
    """The same run with its calls spread over the samples (several per sample, several samples)."""
    arrays = {n: run.array(n).copy() for n in ARRAY_NAMES}
    t0 = int(arrays["samples"]["t_start_ns"][0])
    for name in ("layers", "components", "ops"):
        a = arrays[name]
        a["t_start_ns"] = t0 + np.arange(len(a), dtype=np.int64) * 1_700_000  # ~3 calls per 5 ms sample
        a["t_end_ns"] = a["t_start_ns"] + 900_000
    return RunData(run.summary(), **arrays)


def test_stale_running_runs_are_marked_interrupted_only_when_their_process_is_gone(dbpath):
    import subprocess
    import sys

    with Store(dbpath) as s:
        mine = s.create_run(make_summary(0))
        dead = s.create_run(make_summary(1))
        alive = s.create_run(make_summary(2))
        elsewhere = s.create_run(make_summary(3))
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        q = subprocess.Popen([sys.executable, "-c", "pass"])
        q.wait()
        s._write_sql("UPDATE runs SET pid=? WHERE id=?", (q.pid, dead))
        s._write_sql("UPDATE runs SET pid=? WHERE id=?", (p.pid, alive))
        s._write_sql("UPDATE runs SET pid=1, pid_host='some-other-host' WHERE id=?", (elsewhere,))
    try:
        with Store(dbpath) as s2:
            st_ = {r["run_id"]: r["status"] for r in ep.runs(db=s2)}
        assert st_ == {mine: "running", dead: "interrupted", alive: "running", elsewhere: "running"}
    finally:
        p.kill()
        p.wait()


# ---------------------------------------------------------------------------------
# the read API
# ---------------------------------------------------------------------------------
@pytest.fixture
def filled(dbpath):
    """Eight runs with varied models, sources, statuses, tags, dates and figures."""
    specs = []
    with Store(dbpath) as s:
        for i in range(8):
            over = {}
            if i == 2:
                over["source"], over["source_kind"] = "rapl", "rapl"
            if i == 5:
                over["j_per_token"] = NAN  # a run without the figure sorts last
                over["name"] = "special_100%"
            if i == 6:
                over["tags"] = ["nightly"]
            summ = make_summary(i, **over)
            rid = s.save(RunData(summ, **make_arrays(i, n_samples=10, n_layers=2, n_steps=2)),
                         status="failed" if i == 4 else "completed")
            summ["run_id"] = rid
            summ["status"] = "failed" if i == 4 else "completed"
            specs.append(summ)
    return dbpath, specs


def test_runs_filters_against_oracle(filled):
    path, specs = filled

    def ids(**kw):
        return [r["run_id"] for r in ep.runs(db=path, limit=None, **kw)]

    def oracle(pred):
        return [s["run_id"] for s in sorted(specs, key=lambda s: s["started_at"], reverse=True) if pred(s)]

    assert ids() == oracle(lambda s: True)
    assert ids(model="tiny-gpt2") == oracle(lambda s: s["model"]["name"] == "tiny-gpt2")
    assert ids(arch="llama") == oracle(lambda s: s["model"]["arch"] == "llama")
    assert ids(source="rapl") == oracle(lambda s: s["source_kind"] == "rapl")
    assert ids(source="synthetic:power_w=20") == oracle(lambda s: s["source"] == "synthetic:power_w=20")
    assert ids(status="failed") == oracle(lambda s: s["status"] == "failed")
    assert ids(status=["failed", "completed"]) == oracle(lambda s: True)
    assert ids(tag="t1") == oracle(lambda s: "t1" in s["tags"])
    assert ids(tag="nightly") == oracle(lambda s: "nightly" in s["tags"])
    assert ids(since="2025-03-03") == oracle(lambda s: s["started_at"] >= "2025-03-03")
    assert ids(until=dt.date(2025, 3, 3)) == oracle(lambda s: s["started_at"] < "2025-03-03")
    assert ids(since=dt.datetime(2025, 3, 2, 11, 0, tzinfo=dt.timezone(dt.timedelta(hours=1))),
               until="2025-03-05T10:00:00Z") == oracle(lambda s: "2025-03-02T10" <= s["started_at"] < "2025-03-05T10")
    assert ids(search="100%") == oracle(lambda s: "100%" in s["name"])
    assert ids(search="special_") == oracle(lambda s: "special_" in s["name"])
    assert ids(search="pecial_1") == oracle(lambda s: "pecial_1" in s["name"])
    assert ids(search="gpt") == oracle(lambda s: "gpt" in s["model"]["name"])
    assert ids(search="1%") == oracle(lambda s: "1%" in s["name"])  # % is literal, not a wildcard
    assert ids(search="nothing-like-this") == []
    assert ids(model="tiny-llama", status="completed", tag="bench") == oracle(
        lambda s: s["model"]["name"] == "tiny-llama" and s["status"] == "completed" and "bench" in s["tags"])


def test_runs_sort_and_pagination(filled):
    path, specs = filled
    for key, get in (("j_per_token", lambda s: s["j_per_token"]), ("energy_j", lambda s: s["energy_j"]),
                     ("edp_js", lambda s: s["edp_js"]), ("name", lambda s: s["name"]),
                     ("run_id", lambda s: s["run_id"])):
        for desc in (True, False):
            got = [r["run_id"] for r in ep.runs(db=path, sort=key, descending=desc, limit=None)]
            have = [s for s in specs if not (isinstance(get(s), float) and math.isnan(get(s)))]
            missing = [s for s in specs if s not in have]
            want = [s["run_id"] for s in sorted(have, key=lambda s: (get(s), s["run_id"]), reverse=desc)]
            want += [s["run_id"] for s in sorted(missing, key=lambda s: s["run_id"], reverse=desc)]
            assert got == want, (key, desc)
    full = [r["run_id"] for r in ep.runs(db=path, sort="energy_j", limit=None)]
    pages = []
    for off in range(0, 8, 3):
        pages += [r["run_id"] for r in ep.runs(db=path, sort="energy_j", limit=3, offset=off)]
    assert pages == full
    assert len(ep.runs(db=path)) == 8  # default limit 50
    assert ep.runs(db=path, limit=0) == []


def test_runs_bad_arguments(filled):
    path, _ = filled
    with pytest.raises(ValueError, match=r"unknown sort key 'joules'.*j_per_token"):
        ep.runs(db=path, sort="joules")
    with pytest.raises(ValueError, match=r"unknown status 'done'.*running, completed, interrupted, failed"):
        ep.runs(db=path, status="done")
    with pytest.raises(ValueError, match=r"unknown filter.*colour.*valid filters: model, arch"):
        ep.runs(db=path, colour="red")
    with pytest.raises(ValueError, match="ISO-8601"):
        ep.runs(db=path, since="last tuesday")
    with pytest.raises(ValueError, match="unknown filter"):
        ep.stats(db=path, colour="red")


def test_stats_against_numpy(filled):
    path, specs = filled
    got = ep.stats(db=path)
    j = np.array([s["j_per_token"] for s in specs])
    j = j[~np.isnan(j)]
    assert got["count"] == 8
    assert got["j_per_token"]["n"] == 7
    assert got["j_per_token"]["mean"] == pytest.approx(j.mean())
    assert got["j_per_token"]["median"] == pytest.approx(np.median(j))
    assert got["j_per_token"]["min"] == pytest.approx(j.min())
    assert got["j_per_token"]["max"] == pytest.approx(j.max())
    assert got["energy_j"] == pytest.approx(sum(s["energy_j"] for s in specs))
    assert got["output_tokens"] == sum(s["output_tokens"] for s in specs)
    assert set(got["by_model"]) == {"tiny-llama", "tiny-gpt2"}
    gpt = [s for s in specs if s["model"]["name"] == "tiny-gpt2"]
    assert got["by_model"]["tiny-gpt2"]["count"] == len(gpt)
    assert got["by_model"]["tiny-gpt2"]["energy_j"] == pytest.approx(sum(s["energy_j"] for s in gpt))
    assert got["by_source"]["rapl"]["count"] == 1 and got["by_source"]["synthetic"]["count"] == 7
    only = ep.stats(db=path, model="tiny-gpt2", status="completed")
    assert only["count"] == len([s for s in gpt if s["status"] == "completed"])


def test_compare_side_by_side(filled):
    path, specs = filled
    a, b = specs[0]["run_id"], specs[1]["run_id"]
    c = ep.compare(a, b, db=path)
    sa, sb = specs[0], specs[1]
    e = c["figures"]["energy_j"]
    assert (e["a"], e["b"]) == (sa["energy_j"], sb["energy_j"])
    assert e["diff"] == pytest.approx(sb["energy_j"] - sa["energy_j"])
    assert e["rel_diff"] == pytest.approx((sb["energy_j"] - sa["energy_j"]) / sa["energy_j"])
    assert list(c["phases"]) == ["pre_inference", "prefill", "decode", "post_inference"]
    d = c["phases"]["decode"]["energy_j"]
    assert d["rel_diff"] == pytest.approx((39.0 - 38.0) / 38.0)
    assert c["domains"]["cpu"]["diff"] == pytest.approx(1.0)
    assert math.isnan(c["domains"]["ane"]["rel_diff"])
    ra, rb = ep.load(a, db=path), ep.load(b, db=path)
    la, lb = ra.layer_summary(), rb.layer_summary()
    assert [r["layer"] for r in c["layers"]] == list(la["layer"])
    for row, x, y in zip(c["layers"], la, lb):
        assert row["energy_j"]["a"] == x["energy_j"] and row["energy_j"]["b"] == y["energy_j"]
        assert row["energy_j"]["rel_diff"] == pytest.approx((y["energy_j"] - x["energy_j"]) / x["energy_j"])
    assert {(r["layer"], r["component"]) for r in c["components"]} == {
        (int(x["layer"]), str(x["component"])) for x in ra.component_summary()}
    # RunData objects work too, and a component only one side has is NaN on the other
    rb2 = RunData(rb.summary(), components=rb.components[rb.components["component"] != "lm_head"])
    c2 = ep.compare(ra, rb2)
    lm = [r for r in c2["components"] if r["component"] == "lm_head"][0]
    assert math.isnan(lm["energy_j"]["b"]) and lm["energy_j"]["a"] > 0


def test_unknown_run_ids(filled):
    path, _ = filled
    for fn in (lambda: ep.load(9999, db=path), lambda: ep.delete(9999, db=path),
               lambda: ep.compare(1, 9999, db=path), lambda: ep.export(9999, "/tmp/x.json", db=path)):
        with pytest.raises(KeyError, match="9999"):
            fn()
    with pytest.raises(KeyError, match="'abc'"):
        ep.load("abc", db=path)


def test_delete_cascades(filled):
    path, specs = filled
    rid = specs[3]["run_id"]
    conn = sqlite3.connect(path)
    before = {t: conn.execute(f"SELECT COUNT(*) FROM {t} WHERE run_id=?", (rid,)).fetchone()[0]
              for t in schema.ARRAY_TABLES.values()}
    assert all(v > 0 for v in before.values())
    ep.delete(rid, db=path)
    for t in schema.ARRAY_TABLES.values():
        assert conn.execute(f"SELECT COUNT(*) FROM {t} WHERE run_id=?", (rid,)).fetchone()[0] == 0
    conn.close()
    with pytest.raises(KeyError):
        ep.load(rid, db=path)
    assert len(ep.runs(db=path)) == 7


def test_cleanup_dry_run_then_real(filled):
    path, specs = filled
    with Store(path) as s:
        live = s.create_run(make_summary(0, started_at="2000-01-01T00:00:00Z"))  # running: never cleaned
    newest_first = [s["run_id"] for s in sorted(specs, key=lambda s: s["started_at"], reverse=True)]
    before = _counts(path)
    plan = ep.cleanup(max_runs=3, db=path)
    assert plan["dry_run"] and plan["run_ids"] == newest_first[3:]
    assert [r["run_id"] for r in plan["runs"]] == newest_first[3:]
    assert plan["kept"] == 4  # three newest finished runs + the running one
    assert _counts(path) == before  # a dry run deletes nothing
    done = ep.cleanup(max_runs=3, dry_run=False, db=path)
    assert done["run_ids"] == newest_first[3:] and done["vacuumed"]
    assert done["bytes_after"] < done["bytes_before"]
    left = {r["run_id"] for r in ep.runs(db=path, limit=None)}
    assert left == set(newest_first[:3]) | {live}
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM power_samples WHERE run_id NOT IN (SELECT id FROM runs)").fetchone()[0] == 0
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    # age: every remaining finished run is from 2025-03, so 1 day keeps none of them
    aged = ep.cleanup(max_age_days=1, dry_run=False, vacuum=False, db=path)
    assert set(aged["run_ids"]) == set(newest_first[:3]) and not aged["vacuumed"]
    assert [r["run_id"] for r in ep.runs(db=path)] == [live]
    with pytest.raises(ValueError):
        ep.cleanup(max_runs=-1, db=path)


def test_export_import_json_round_trip(filled, tmp_path):
    path, specs = filled
    rid = specs[2]["run_id"]
    out = ep.export(rid, tmp_path / "run.json", db=path)
    def no_constants(c):
        raise AssertionError(f"non-strict JSON token {c}")

    doc = json.loads(open(out).read(), parse_constant=no_constants)  # strict JSON: no NaN/Infinity tokens
    assert doc["format"] == "energyprof-run" and doc["schema_version"] == schema.SCHEMA_VERSION
    new = ep.import_run(out, db=path)
    assert new != rid
    a, b = ep.load(rid, db=path), ep.load(new, db=path)
    assert len(a.heads) > 0 and np.isnan(a.heads["entropy"]).any()  # NaN survives the JSON round trip
    assert doc["arrays"]["heads"]["n"] == len(a.heads)
    assert_same_arrays(a, b)
    # an export written before schema 3 has no heads: it imports with none
    del doc["arrays"]["heads"]
    old = tmp_path / "v2-export.json"
    old.write_text(json.dumps(doc))
    o = ep.load(ep.import_run(old, db=path), db=path)
    assert len(o.heads) == 0 and o.heads.dtype == HEAD_DTYPE
    for name in (n for n in ARRAY_NAMES if n != "heads"):
        assert o.array(name).tobytes() == a.array(name).tobytes(), name
    assert o.prompt(0) == a.prompt(0) and a.prompt(0).startswith("the cost of a token")  # text survives the export
    sa, sb = a.summary(), b.summary()
    sa.pop("run_id")
    sb.pop("run_id")
    assert_same_summary(sa, sb)
    # into another, fresh database, too
    other = str(tmp_path / "other.db")
    nid = ep.import_run(out, db=other)
    assert_same_arrays(ep.load(nid, db=other), a)
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not an energyprof JSON export"):
        ep.import_run(bad, db=path)


def test_export_csv_one_file_per_table(filled, tmp_path):
    path, specs = filled
    rid = specs[1]["run_id"]
    d = ep.export(rid, tmp_path / "csvdir", format="csv", db=path)
    run = ep.load(rid, db=path)
    assert sorted(os.listdir(d)) == sorted(["run.csv"] + [f"{n}.csv" for n in ARRAY_NAMES])
    assert "heads.csv" in os.listdir(d) and len(run.heads) > 0
    with open(os.path.join(d, "run.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and float(rows[0]["phases.decode.energy_j"]) == run.summary()["phases"]["decode"]["energy_j"]
    for name in ARRAY_NAMES:
        arr = run.array(name)
        with open(os.path.join(d, f"{name}.csv"), newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == len(arr)
        for f in arr.dtype.names:
            kind = arr.dtype.fields[f][0].kind
            col = [r[f] for r in rows]
            if kind == "f":
                np.testing.assert_array_equal(np.array(col, dtype=float), arr[f])
            elif kind == "U":
                assert col == [str(x) for x in arr[f]]
            else:
                np.testing.assert_array_equal(np.array(col, dtype=np.int64), arr[f].astype(np.int64))


def test_export_parquet_needs_pyarrow(filled, tmp_path):
    path, specs = filled
    rid = specs[0]["run_id"]
    try:
        import pyarrow.parquet as pq
    except ImportError:
        pq = None
    if pq is None:
        with pytest.raises(ImportError, match="pyarrow"):
            ep.export(rid, tmp_path / "pq", format="parquet", db=path)
    else:
        d = ep.export(rid, tmp_path / "pq", format="parquet", db=path)
        t = pq.read_table(os.path.join(d, "samples.parquet"))
        np.testing.assert_array_equal(t.column("cpu_w").to_numpy(), ep.load(rid, db=path).samples["cpu_w"])
        h = pq.read_table(os.path.join(d, "heads.parquet"))
        np.testing.assert_array_equal(h.column("entropy").to_numpy(), ep.load(rid, db=path).heads["entropy"])
    with pytest.raises(ValueError, match="json, csv, parquet"):
        ep.export(rid, tmp_path / "x", format="xml", db=path)


def test_default_path(monkeypatch, tmp_path):
    monkeypatch.setenv("ENERGYPROF_DB", str(tmp_path / "env.db"))
    assert ep.db.default_path() == str(tmp_path / "env.db")
    rid = Store().save(make_run(0))
    assert ep.load(rid).run_id == rid  # db=None uses $ENERGYPROF_DB
    monkeypatch.delenv("ENERGYPROF_DB")
    monkeypatch.setattr(ep.db.sys, "platform", "linux")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert ep.db.default_path() == str(tmp_path / "xdg" / "energyprof" / "runs.db")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ep.db.default_path() == str(tmp_path / "home" / ".local" / "share" / "energyprof" / "runs.db")
    monkeypatch.setattr(ep.db.sys, "platform", "darwin")
    assert ep.db.default_path() == str(tmp_path / "home" / "Library" / "Application Support" / "energyprof" / "runs.db")


# ---------------------------------------------------------------------------------
# failures: full disk, read-only, locked
# ---------------------------------------------------------------------------------
def _counts(path):
    c = sqlite3.connect(path)
    out = {t: c.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ["runs"] + list(schema.ARRAY_TABLES.values())}
    ok = c.execute("PRAGMA integrity_check").fetchone()[0]
    c.close()
    return out, ok


def test_full_disk_gives_oserror_and_keeps_the_database(dbpath):
    run = make_run(0, n_samples=200)
    with Store(dbpath) as s:
        rid = s.save(run)
        pages = s.conn.execute("PRAGMA page_count").fetchone()[0]
        # the writer's own connection may not grow the file beyond two more pages
        s.writer.execute(f"PRAGMA max_page_count = {pages + 2}")
        s.flush()
        before, _ = _counts(dbpath)
        big = make_arrays(1, n_samples=20000)["samples"]
        keep = big.copy()
        s.write_samples(rid, big)
        with pytest.raises(OSError, match="database or disk is full"):
            s.flush()
        assert big.tobytes() == keep.tobytes()  # the caller's data is untouched
        after, ok = _counts(dbpath)
        assert ok == "ok" and after == before  # the failed batch was rolled back whole
        with pytest.raises(OSError, match="database or disk is full"):
            s.finish_run(rid, run.summary(), run.sections, run.tokens, make_arrays(2, n_layers=40)["layers"],
                         run.components)
        # a small write still fits, and the first run is intact
        s.writer.execute("PRAGMA max_page_count = 1073741823")
        s.write_samples(rid, big[:10])
        s.flush()
    assert len(ep.load(rid, db=dbpath).samples) == len(run.samples) + 10


def test_read_only_file_reads_but_refuses_writes(dbpath):
    with Store(dbpath) as s:
        rid = s.save(make_run(0))
    os.chmod(dbpath, 0o444)
    try:
        before = sha(dbpath)
        s = Store(dbpath)
        assert s.readonly
        assert [r["run_id"] for r in ep.runs(db=s)] == [rid]
        assert_same_arrays(s.load(rid), make_run(0))
        with pytest.raises(PermissionError, match="read-only"):
            s.create_run({"name": "x"})
        with pytest.raises(PermissionError, match="read-only"):
            s.write_samples(rid, make_run(0).samples)
        with pytest.raises(PermissionError, match="read-only"):
            ep.delete(rid, db=s)
        s.close()
        # the C writer maps sqlite's READONLY to PermissionError
        w = _core.Store(dbpath, readonly=True)
        w.insert("power_samples", make_run(0).samples[:5], {"run_id": rid})
        with pytest.raises(PermissionError, match="read-only"):
            w.flush()
        w.close()
        assert sha(dbpath) == before
    finally:
        os.chmod(dbpath, 0o644)


def test_locked_database_gives_a_clear_error(dbpath):
    with Store(dbpath) as s:
        rid = s.save(make_run(0, n_samples=50))
    other = sqlite3.connect(dbpath, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    other.execute("UPDATE runs SET name='held' WHERE id=?", (rid,))
    try:
        s = Store(dbpath, busy_timeout_ms=100)
        samples = make_arrays(5, n_samples=30)["samples"]
        s.write_samples(rid, samples)
        with pytest.raises(RuntimeError, match="database is locked by another process"):
            s.flush()
        with pytest.raises(RuntimeError, match="database is locked by another process"):
            s.create_run({"name": "y"})
    finally:
        other.execute("ROLLBACK")
        other.close()
    # once the lock is gone, the same store writes again and nothing was half-written
    s.write_samples(rid, samples)
    s.flush()
    s.close()
    r = ep.load(rid, db=dbpath)
    assert len(r.samples) == 80 and r.summary()["name"] == "run-0"
    assert _counts(dbpath)[1] == "ok"


def test_concurrent_reader_sees_monotonic_growth(dbpath):
    with Store(dbpath) as s:
        rid = s.create_run(make_summary(0))
        batches = [make_arrays(k, n_samples=500)["samples"] for k in range(40)]
        seen, errors = [], []
        stop = threading.Event()

        def reader():
            try:
                c = sqlite3.connect(dbpath, timeout=5)
                while not stop.is_set():
                    seen.append(c.execute("SELECT COUNT(*) FROM power_samples WHERE run_id=?", (rid,)).fetchone()[0])
                c.close()
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        t = threading.Thread(target=reader)
        t.start()
        for b in batches:
            s.write_samples(rid, b)
            s.flush()
        stop.set()
        t.join()
    assert not errors
    assert len(seen) > 0
    assert all(x % 500 == 0 for x in seen)  # a batch is never seen half-written
    assert all(b >= a for a, b in zip(seen, seen[1:]))
    assert len(ep.load(rid, db=dbpath).samples) == 20000


def test_docs_store_examples_run(tmp_path, monkeypatch, capsys):
    """The python blocks of docs/store.md run as written, in order, in one namespace."""
    import re

    monkeypatch.setenv("ENERGYPROF_DB", str(tmp_path / "never-used.db"))
    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "store.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert len(blocks) >= 3
    ns: dict = {}
    for b in blocks:
        exec(compile(b, "docs/store.md", "exec"), ns)
    out = capsys.readouterr().out
    assert "completed 30" in out
    assert "would delete" in out and "deleted" in out
    assert not os.path.exists(tmp_path / "never-used.db")


def test_docs_schema_names_every_column_and_its_example_runs(capsys):
    import re

    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "schema.md")).read()
    for table, cols in schema.TABLE_COLUMNS.items():
        assert f"## {table}" in doc or f", {table}" in doc or f"{table}," in doc, table
        for c, _ in cols:
            assert re.search(rf"(^\| |, ){c}[ ,|]", doc, re.M), (table, c)
    for b in re.findall(r"```python\n(.*?)```", doc, re.S):
        exec(compile(b, "docs/schema.md", "exec"), {})
    v = str(schema.SCHEMA_VERSION) + ")"
    assert capsys.readouterr().out.split() == ["(1,", v, "True", "(2,", v, "True"]


def test_writer_releases_the_gil_while_blocked(tmp_path):
    """insert() on a full queue and flush() wait with the GIL released: another Python
    thread keeps running meanwhile, and it is that thread that ends the wait (if the
    GIL were held the test would hang)."""
    path = str(tmp_path / "g.db")
    Store(path).close()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # the writer's BEGIN IMMEDIATE now waits (busy timeout)
    w = _core.Store(path, busy_timeout_ms=60000, queue_jobs=1)
    w.execute("CREATE TABLE t (x INTEGER)")  # blocked behind the lock, so the queue stays full
    a = np.zeros(3, [("x", "<i8")])
    entered = threading.Event()
    spins = []

    def release_later():
        entered.wait()
        n = 0
        while n < 20000:  # pure Python work: needs the GIL the main thread is not holding
            n += 1
        spins.append(n)
        holder.execute("ROLLBACK")

    t = threading.Thread(target=release_later)
    t.start()
    entered.set()
    w.insert("t", a)  # queue: [create, insert]: the first insert waits for room...
    w.insert("t", a)  # ...this one certainly does, until the helper releases the lock
    w.flush()
    t.join()
    assert spins == [20000]
    assert w.rows_committed == 6
    w.close()
    holder.close()


def test_store_used_after_fork_fails_clearly(tmp_path):
    path = str(tmp_path / "f.db")
    Store(path).close()
    w = _core.Store(path)
    w.execute("CREATE TABLE t (x INTEGER)")
    w.flush()
    pid = os.fork()
    if pid == 0:  # the child: the writer thread did not come along
        code = 0
        try:
            w.insert("t", np.zeros(1, [("x", "<i8")]))
            code = 1
        except RuntimeError as exc:
            code = 0 if "another process" in str(exc) else 2
        try:
            w.flush()
            code = code or 3
        except RuntimeError as exc:
            code = code or (0 if "after fork() open a new one" in str(exc) else 4)
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    w.insert("t", np.zeros(2, [("x", "<i8")]))  # the parent's store is unaffected
    w.flush()
    assert w.rows_committed == 2
    w.close()


def test_full_disk_on_a_real_tiny_filesystem(tmp_path):
    """ENOSPC from the file system itself: a 400 KiB tmpfs where this process may mount
    one (root on Linux); elsewhere the same checks run with PRAGMA max_page_count."""
    import subprocess

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    mounted = (sys_platform_linux() and os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)], capture_output=True).returncode == 0)
    s = None
    try:
        path = str(mnt / "runs.db")
        run = make_run(0, n_samples=100)
        s = Store(path)
        rid = s.save(run)
        if not mounted:
            pages = s.conn.execute("PRAGMA page_count").fetchone()[0]
            s.writer.execute(f"PRAGMA max_page_count = {pages + 2}")
        big = make_arrays(1, n_samples=20000)["samples"]
        s.write_samples(rid, big)
        with pytest.raises(OSError, match="database or disk is full"):
            s.flush()
        s.write_samples(rid, big[:10])  # a small batch still fits
        s.flush()
        s.close()
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        back = ep.load(rid, db=path)
        np.testing.assert_array_equal(back.samples["t_start_ns"],
                                      np.concatenate([run.samples["t_start_ns"], big["t_start_ns"][:10]]))
    finally:
        if s is not None:   # a failed check leaves the store open: close it, or the tmpfs stays busy
            try:
                s.close()
            except Exception:
                pass
        if mounted:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)   # lazy: never left mounted


def sys_platform_linux() -> bool:
    import sys

    return sys.platform.startswith("linux")


def test_many_processes_open_a_fresh_database_at_once(tmp_path):
    """Creation and migration re-check the version under the write lock, so processes
    racing to open a new (or old) store all succeed and the schema is made once."""
    import subprocess
    import sys

    for kind in ("fresh", "v1", "v2"):
        path = str(tmp_path / f"{kind}.db")
        if kind == "v1":
            _fill_v1(path, n=2)
        if kind == "v2":
            _fill_v2(path, n=2)
        code = ("import sys; from energyprof.store.db import Store; s = Store(sys.argv[1]); "
                "s.create_run({'name': 'p'}); s.close()")
        procs = [subprocess.Popen([sys.executable, "-c", code, path]) for _ in range(4)]
        assert [p.wait() for p in procs] == [0] * 4
        with Store(path) as s:
            assert schema.user_version(s.conn) == schema.SCHEMA_VERSION == schema.DEVICES_VERSION
            assert "head_metrics" in schema.tables(s.conn)
            assert len(ep.runs(db=s, limit=None)) == 4 + (0 if kind == "fresh" else 2)


def test_writer_checkpoints_the_wal_when_idle(dbpath):
    """The writer copies WAL pages into the main file itself once its queue is empty
    (not inside a batch's COMMIT): after the next job the main file holds the rows."""
    with Store(dbpath) as s:
        rid = s.create_run({"name": "wal"})
        big = make_arrays(0, n_samples=100_000)["samples"]
        w = s.writer
        w.insert("power_samples", big, {"run_id": rid})
        w.flush()
        w.execute("SELECT 1")  # runs after the idle checkpoint that followed the insert
        w.flush()
        assert os.path.getsize(dbpath) > 100_000 * 50  # rows are in the main file now
        conn = sqlite3.connect(dbpath)
        assert conn.execute("SELECT COUNT(*) FROM power_samples").fetchone()[0] == 100_000
        conn.close()


def test_close_refuses_while_another_thread_waits_in_the_store(tmp_path):
    path = str(tmp_path / "c.db")
    Store(path).close()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    w = _core.Store(path, busy_timeout_ms=60000)
    w.execute("CREATE TABLE t (x INTEGER)")  # waits for the lock in the writer thread
    started = threading.Event()
    errors = []

    def flusher():
        started.set()
        try:
            w.flush()  # waits, GIL released, until the lock goes
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=flusher)
    t.start()
    started.wait()
    # the flusher is inside flush() once the store counts a caller waiting in it (the
    # execute() above only queued its job and has returned)
    wait_until(lambda: w.users >= 1 or not t.is_alive(), "the flusher thread to enter flush()")
    assert t.is_alive()
    with pytest.raises(RuntimeError, match="in use by another thread"):
        w.close()
    holder.execute("ROLLBACK")
    t.join()
    w.close()
    assert not errors and w.closed
    holder.close()


def test_writer_constant_columns_of_every_kind(tmp_path):
    path = str(tmp_path / "k.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE t (x INTEGER, i INTEGER, f REAL, s TEXT, n TEXT, b BLOB, yes INTEGER)")
    a = np.zeros(3, [("x", "<i4")])
    a["x"] = [1, 2, 3]
    consts = {"i": np.int64(-7), "f": 2.5, "s": "été 🚀", "n": None, "b": b"\x00\x01\xff", "yes": True}
    with _core.Store(path) as w:
        w.insert("t", a, consts)
        w.execute("INSERT INTO t (x, s) VALUES (?, ?)", [np.int32(4), "tail"])
    rows = conn.execute("SELECT x, i, f, s, n, b, yes FROM t ORDER BY rowid").fetchall()
    assert rows == [(k, -7, 2.5, "été 🚀", None, b"\x00\x01\xff", 1) for k in (1, 2, 3)] + [
        (4, None, None, "tail", None, None, None)]
    # the same through the twin
    conn.execute("DELETE FROM t")
    _reference.store_insert(conn, "t", a, {k: (v.item() if isinstance(v, np.generic) else v) for k, v in consts.items()})
    assert conn.execute("SELECT x, i, f, s, n, b, yes FROM t ORDER BY rowid").fetchall() == rows[:3]


# ---------------------------------------------------------------------------- saved runs against the oracle

@pytest.mark.parametrize("shape, mode", [("square", "standard"), ("ramp", "deep"), ("noise", "minimal"),
                                         ("active", "standard")])
def test_saved_and_loaded_rows_equal_the_oracle(tmp_path, shape, mode):
    """A run saved by ep.run (samples written in batches while it goes on) and loaded
    back: every row recomputed by the brute-force oracle from the *loaded* samples."""
    import torch

    from energy_oracle import WAVEFORMS, check_run
    from energyprof.tiny import tiny_model

    model = tiny_model("tiny-llama")
    db = str(tmp_path / "runs.db")
    with ep.run(model, source=WAVEFORMS[shape], mode=mode, baseline_s=0.01, db=db) as s:
        with s.section("generate"):
            model.generate(torch.tensor([[5, 6, 7, 8]]), max_new_tokens=5, do_sample=False)
    back = ep.load(s.run_id, db=db)
    assert len(back.samples) == len(s.samples)
    n = check_run(back)
    assert n["tokens"] == 4 and n["sections"] == len(s.sections)
    assert n["calls"] == len(s.layers) + len(s.components) + len(s.ops)


def test_migrate_to_ranks_step_alone_adds_ranks_and_keeps_every_row(dbpath):
    """The multi-rank step on its own (schema._migrate_to_ranks, from RANKS_VERSION - 1): a
    real file of the version before it gains the rank columns (every old row rank 0: it came from one
    process), the three per-rank tables and runs.world_size = 1, and keeps every value."""
    prev = schema.RANKS_VERSION - 1
    ids, tables = _fill_old(dbpath, prev, _V3_ARRAYS, 2)
    assert "run_ranks" not in tables
    conn = sqlite3.connect(dbpath, isolation_level=None)
    before = {t: conn.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall()
              for t in ["runs"] + [schema.ARRAY_TABLES[n] for n in _V3_ARRAYS]}
    conn.execute("BEGIN")
    schema._migrate_to_ranks(conn)
    conn.execute(f"PRAGMA user_version = {schema.RANKS_VERSION}")   # what schema.migrate sets after the last step
    conn.execute("COMMIT")
    for t in ("power_samples", "sections", "tokens", "layer_metrics", "component_metrics", "op_metrics"):
        cols = schema.table_columns(conn, t)
        assert cols[-1] == "rank"
        assert conn.execute(f"SELECT COUNT(*) FROM {t} WHERE rank != 0").fetchone()[0] == 0
        # the old columns and values, unchanged (rank appended at the end)
        assert [r[:-1] for r in conn.execute(f"SELECT * FROM {t} ORDER BY rowid")] == before[t]
    assert "rank" not in schema.table_columns(conn, "head_metrics")
    assert conn.execute("SELECT * FROM head_metrics ORDER BY rowid").fetchall() == before["head_metrics"]
    assert [r[0] for r in conn.execute("SELECT world_size FROM runs ORDER BY id")] == [1] * len(ids)
    assert [r[:-1] for r in conn.execute("SELECT * FROM runs ORDER BY id")] == before["runs"]
    for t in ("run_ranks", "rank_sections", "rank_tokens"):
        assert schema.table_columns(conn, t)[1:] == [c for c, _ in schema.TABLE_COLUMNS[t]]
        fks = conn.execute(f"PRAGMA foreign_key_list({t})").fetchall()
        assert [(r[2], r[3], r[4], r[6]) for r in fks] == [("runs", "run_id", "id", "CASCADE")]
    conn.close()
    # the full chain through Store gives the same shape as a fresh database, and the
    # migrated store takes a multi-rank run field by field
    with Store(dbpath) as s:
        assert schema.user_version(s.conn) == schema.SCHEMA_VERSION
        rid = s.save(make_run(5))
        assert_same_arrays(s.load(rid), make_run(5))
        assert s.conn.execute("SELECT world_size FROM runs WHERE id=?", (rid,)).fetchone()[0] == 1
        ep.delete(rid, db=s)
        for t in ("run_ranks", "rank_sections", "rank_tokens"):
            assert s.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] == 0


def test_a_version_7_store_migrates_to_devices_and_keeps_every_row(dbpath):
    """The several-GPU step (schema._migrate_to_devices, from DEVICES_VERSION - 1): a real file
    of schema 7 (written with the v7 DDL, rank columns and rank tables filled) opens at the
    current version with an empty device_samples table and every old row unchanged; the
    migrated store then keeps a run's per-device series field by field."""
    prev = schema.DEVICES_VERSION - 1
    assert prev == schema.RANKS_VERSION
    arrays = _V3_ARRAYS + ("texts", "ranks", "rank_sections", "rank_tokens")
    ids, tables = _fill_old(dbpath, prev, arrays, 2)
    assert "device_samples" not in tables
    conn = sqlite3.connect(dbpath)
    old_tables = ["runs"] + [schema.ARRAY_TABLES[n] for n in arrays]
    before = {t: conn.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in old_tables}
    conn.close()
    with Store(dbpath) as s:
        assert schema.user_version(s.conn) == schema.SCHEMA_VERSION == schema.DEVICES_VERSION
        for t in old_tables:
            assert [tuple(r) for r in s.conn.execute(f"SELECT * FROM {t} ORDER BY rowid")] == before[t], t
        assert schema.table_columns(s.conn, "device_samples")[1:] == [c for c, _ in
                                                                      schema.TABLE_COLUMNS["device_samples"]]
        assert s.conn.execute("SELECT COUNT(*) FROM device_samples").fetchone()[0] == 0
        assert len(s.load(ids[0]).device_samples) == 0
        assert schema.table_columns(s.conn, "sample_levels")[1:] == [c for c, _ in
                                                                     schema.TABLE_COLUMNS["sample_levels"]]
        assert schema.table_columns(s.conn, "sample_levels")[-1] == "rank"
        run = make_run(6)
        assert len(run.device_samples) == 50
        rid = s.save(run)
        back = s.load(rid)
        for f in DEVICE_SAMPLE_DTYPE.names:
            np.testing.assert_array_equal(back.device_samples[f], run.device_samples[f], err_msg=f)
        ep.delete(rid, db=s)
        assert s.conn.execute("SELECT COUNT(*) FROM device_samples").fetchone()[0] == 0
