"""The run store's SQLite schema: DDL per version and the migrations between them.

The version lives in ``PRAGMA user_version``.  A fresh database is created at
:data:`SCHEMA_VERSION`; an older one is migrated forward in one transaction; a
newer one (written by a later energyprof) is refused without touching the file.

Versions
--------
1. runs (without source_label, source_meta, n_params, j_per_output_token, edp_js,
   unattributed_j, total_rule, ended_at, pid, pid_host), power_samples, sections,
   tokens, layer_metrics and component_metrics (without call_id, parent_id,
   unattributed_j).
2. adds those runs columns, the call-tree columns of the metric tables and the
   op_metrics table.
3. adds the head_metrics table (mode="deep": per attention call and head).
4. adds the sample_levels table: per run, min / max / mean power over buckets
   of 16, 256, 4096, ... consecutive samples (energyprof.store.levels), so a plot of a
   long run reads thousands of rows instead of millions.
5. adds ``flags`` (the integrator's and the gap pre-pass's window flags,
   ``energyprof._dtypes.FLAG_*``) to sections, tokens and the three call tables; older rows
   get ``FLAG_UNRESOLVED`` where they were not resolved, the one flag they kept.
6. adds the texts table (the prompt, the generated text and each token's text),
   the runs column attention_kind (MHA / GQA / MQA, backfilled from model_config) and
   act_abs_mean (mean |x| of a deep-mode call's output) to the three call tables.
:data:`RANKS_VERSION` = 7. multi-rank runs (energyprof.measure.distributed):
   a ``rank`` column on power_samples, sections, tokens and the three call tables; the
   per-rank tables rank_sections and rank_tokens; run_ranks (one row per rank: host, local
   rank, clock offset and its uncertainty, energy); and runs.world_size.
   :func:`_migrate_to_ranks` adds only these, so it chains after any step before it.
:data:`DEVICES_VERSION` = 8 (currently the newest). several GPUs in one process
   (``nvml:devices=0,1``): the device_samples table, each GPU's own series beside the
   power_samples whose gpu domain is their sum (``energyprof._dtypes.DEVICE_SAMPLE_DTYPE``);
   and ``rank`` on sample_levels (a multi-rank run's levels, one set per rank).
   :func:`_migrate_to_devices` adds only these: runs saved before have no device rows, and
   their levels are rank 0's.

Every version number lives in the constants below (TEXTS_VERSION, RANKS_VERSION,
DEVICES_VERSION, SCHEMA_VERSION): renumbering a step is changing its constant.

Array tables hold one column per field of the shared numpy dtypes
(:mod:`energyprof._dtypes`, ``_core.SAMPLE_DTYPE``) plus ``run_id``; NaN is stored
as NULL (SQLite has no NaN) and read back as NaN.
"""
from __future__ import annotations

import json
import sqlite3
from typing import Dict, List, Sequence, Tuple

from .._hfconfig import attention_kind
from ..errors import SchemaError

#: The version that adds the texts table, runs.attention_kind and act_abs_mean; its step
#: is _migrate_to_6, from TEXTS_VERSION - 1.
TEXTS_VERSION = 6
#: The version that adds multi-rank runs (rank columns, run_ranks, rank_sections,
#: rank_tokens, runs.world_size); its step is _migrate_to_ranks, from RANKS_VERSION - 1.
RANKS_VERSION = 7
#: The version that adds the device_samples table (one GPU's series of a several-GPU
#: source); its step is _migrate_to_devices, from DEVICES_VERSION - 1.
DEVICES_VERSION = 8
SCHEMA_VERSION = DEVICES_VERSION

#: Store table per RunData array name.
ARRAY_TABLES: Dict[str, str] = {
    "samples": "power_samples",
    "sections": "sections",
    "tokens": "tokens",
    "layers": "layer_metrics",
    "components": "component_metrics",
    "ops": "op_metrics",
    "heads": "head_metrics",
    "texts": "texts",
    "ranks": "run_ranks",
    "rank_sections": "rank_sections",
    "rank_tokens": "rank_tokens",
    "device_samples": "device_samples",
}

STATUSES = ("running", "completed", "interrupted", "failed")


_DOM = ("cpu", "gpu", "ane", "dram", "package")

# (column, SQL type) lists, written out per version: a version is a fixed thing, and
# tests check that the current one has a column for every field of the current dtypes.
_SAMPLE_COLS = [("t_start_ns", "INTEGER"), ("t_end_ns", "INTEGER"), ("kind", "INTEGER"), ("flags", "INTEGER")] + [
    (f"{d}_w", "REAL") for d in _DOM
]
_DOM_J = [(f"{d}_j", "REAL") for d in _DOM]
_SECTION_COLS = (
    [("section_id", "INTEGER"), ("parent_id", "INTEGER"), ("kind", "TEXT"), ("name", "TEXT"),
     ("t_start_ns", "INTEGER"), ("t_end_ns", "INTEGER"), ("duration_s", "REAL"), ("energy_j", "REAL")]
    + _DOM_J
    + [("net_energy_j", "REAL"), ("unattributed_j", "REAL"), ("tokens", "INTEGER"),
       ("samples_in_window", "INTEGER"), ("resolved", "INTEGER")]
)
_TOKEN_COLS = (
    [("step", "INTEGER"), ("n_tokens", "INTEGER"), ("t_start_ns", "INTEGER"), ("t_end_ns", "INTEGER"),
     ("duration_s", "REAL"), ("energy_j", "REAL")]
    + _DOM_J
    + [("j_per_token", "REAL"), ("samples_in_window", "INTEGER"), ("resolved", "INTEGER")]
)
_CALL_COLS_V1 = (
    [("layer", "INTEGER"), ("component", "TEXT"), ("step", "INTEGER"), ("call", "INTEGER"),
     ("t_start_ns", "INTEGER"), ("t_end_ns", "INTEGER"), ("duration_s", "REAL"), ("energy_j", "REAL")]
    + _DOM_J
    + [("samples_in_window", "INTEGER"), ("resolved", "INTEGER"), ("act_mean", "REAL"), ("act_std", "REAL"),
       ("act_max", "REAL"), ("act_sparsity", "REAL")]
)
# v2: the call tree (call_id/parent_id; -1 = none) and the energy not covered by children.
_CALL_COLS_V2_ADDED = [("call_id", "INTEGER NOT NULL DEFAULT -1"), ("parent_id", "INTEGER NOT NULL DEFAULT -1"),
                       ("unattributed_j", "REAL")]
_CALL_COLS_V3 = (
    [("call_id", "INTEGER NOT NULL DEFAULT -1"), ("parent_id", "INTEGER NOT NULL DEFAULT -1")]
    + _CALL_COLS_V1[:8]
    + _DOM_J
    + [("unattributed_j", "REAL")]
    + _CALL_COLS_V1[13:]
)

# v5: how each row was measured (FLAG_* bits), next to samples_in_window and resolved.
_FLAGS_COL = ("flags", "INTEGER NOT NULL DEFAULT 0")
_FLAG_TABLES = ("sections", "tokens", "layer_metrics", "component_metrics", "op_metrics")
_CALL_TABLES = ("layer_metrics", "component_metrics", "op_metrics")
_FLAG_UNRESOLVED = 1 << 3  # energyprof._dtypes.FLAG_UNRESOLVED (store imports no dtypes for its DDL)


def _with_flags(cols: List[Tuple[str, str]]) -> List[Tuple[str, str]]:
    at = [c for c, _ in cols].index("resolved") + 1
    return cols[:at] + [_FLAGS_COL] + cols[at:]


# v6: mean |x| of a deep-mode call's output, beside the mean, std, max and sparsity.
_CALL_COLS_V6_ADDED = [("act_abs_mean", "REAL")]

# v3: mode="deep" attention statistics, one row per (attention call, head) (HEAD_DTYPE).
_HEAD_COLS = [("call_id", "INTEGER"), ("layer", "INTEGER"), ("step", "INTEGER"), ("head", "INTEGER"),
              ("n_queries", "INTEGER"), ("entropy", "REAL"), ("max_weight", "REAL"), ("sparsity", "REAL")]

# v4: downsampling levels of the power samples (energyprof.store.levels.LEVEL_DTYPE).
_LEVEL_STATS = ("mean_w", "min_w", "max_w", "wt")
_LEVEL_COLS = ([("level", "INTEGER"), ("bucket", "INTEGER"), ("t_start_ns", "INTEGER"), ("t_end_ns", "INTEGER"),
                ("n", "INTEGER")]
               + [(f"{d}_{k}", "REAL") for d in _DOM + ("total",) for k in _LEVEL_STATS])

# RANKS_VERSION: multi-rank runs.  Every row says whose devices it is about; one-process runs are rank 0.
_RANK_COL = [("rank", "INTEGER NOT NULL DEFAULT 0")]
_RANK_TABLE_COLS = (
    [("rank", "INTEGER"), ("local_rank", "INTEGER"), ("host", "TEXT"), ("host_leader", "INTEGER"),
     ("replica_group", "INTEGER"), ("device", "TEXT"), ("source", "TEXT"), ("source_label", "TEXT"),
     ("status", "TEXT"), ("clock_offset_ns", "INTEGER"), ("clock_uncertainty_ns", "INTEGER"),
     ("t_start_ns", "INTEGER"), ("t_end_ns", "INTEGER"), ("energy_j", "REAL")]
    + _DOM_J
    + [("n_samples", "INTEGER"), ("input_tokens", "INTEGER"), ("output_tokens", "INTEGER")]
)
_RUN_COLS_RANKS_ADDED = [("world_size", "INTEGER NOT NULL DEFAULT 1")]
_RANKED_TABLES = ("power_samples", "sections", "tokens", "layer_metrics", "component_metrics", "op_metrics")

_RUN_COLS_V1 = [
    ("id", "INTEGER PRIMARY KEY AUTOINCREMENT"),  # AUTOINCREMENT: a deleted run's id is never reused
    ("name", "TEXT"),
    ("tags", "TEXT NOT NULL DEFAULT '[]'"),       # JSON list of str
    ("status", "TEXT NOT NULL DEFAULT 'running'"),
    ("started_at", "TEXT NOT NULL"),              # ISO-8601 UTC, microseconds: sorts as text
    ("t_origin_ns", "INTEGER"),
    ("source", "TEXT"),
    ("source_kind", "TEXT"),
    ("method", "TEXT"),
    ("sample_period_s", "REAL"),
    ("mode", "TEXT"),
    ("sync", "TEXT"),
    ("model_name", "TEXT"),
    ("model_arch", "TEXT"),
    ("model_config", "TEXT"),                     # JSON of summary["model"]
    ("device", "TEXT"),
    ("host", "TEXT"),
    ("chip", "TEXT"),
    ("energyprof_version", "TEXT"),
    ("torch_version", "TEXT"),
    ("transformers_version", "TEXT"),
    ("python_version", "TEXT"),
    ("input_tokens", "INTEGER"),
    ("output_tokens", "INTEGER"),
    ("batch_size", "INTEGER"),
    ("duration_s", "REAL"),
    ("energy_j", "REAL"),
    ("net_energy_j", "REAL"),
    ("baseline_power_w", "REAL"),
    ("peak_power_w", "REAL"),
    ("j_per_token", "REAL"),
    ("tokens_per_j", "REAL"),
    ("summary", "TEXT NOT NULL DEFAULT '{}'"),    # the whole summary dict, JSON (NaN as null)
]
_RUN_COLS_V2_ADDED = [
    ("source_label", "TEXT"),
    ("source_meta", "TEXT"),
    ("n_params", "INTEGER"),
    ("j_per_output_token", "REAL"),
    ("edp_js", "REAL"),
    ("unattributed_j", "REAL"),
    ("total_rule", "TEXT"),
    ("ended_at", "TEXT"),
    ("pid", "INTEGER"),        # writer process: a "running" run whose process is gone was interrupted
    ("pid_host", "TEXT"),
]
_RUN_COLS_V6_ADDED = [
    ("attention_kind", "TEXT"),   # MHA / GQA / MQA from the model's head counts (NULL: unknown)
]

#: Columns of each table in versions 2 and 3 (version 4 adds sample_levels).
_V3_COLUMNS: Dict[str, List[Tuple[str, str]]] = {
    "runs": _RUN_COLS_V1 + _RUN_COLS_V2_ADDED,
    "power_samples": _SAMPLE_COLS,
    "sections": _SECTION_COLS,
    "tokens": _TOKEN_COLS,
    "layer_metrics": _CALL_COLS_V3,
    "component_metrics": _CALL_COLS_V3,
    "op_metrics": _CALL_COLS_V3,
    "head_metrics": _HEAD_COLS,
}

#: Columns of each table in version 5 (flags; version 4 added sample_levels).
_V5_COLUMNS: Dict[str, List[Tuple[str, str]]] = {
    **{t: (_with_flags(cols) if t in _FLAG_TABLES else cols) for t, cols in _V3_COLUMNS.items()},
    "sample_levels": _LEVEL_COLS}

# v6: text recorded with a run (TEXT_DTYPE), one row per prompt / output / token text.
_TEXT_COLS = [("kind", "TEXT"), ("step", "INTEGER"), ("seq", "INTEGER"), ("text", "TEXT")]

#: Columns of each table in version 6 (texts, runs.attention_kind, act_abs_mean).
_V6_COLUMNS: Dict[str, List[Tuple[str, str]]] = {
    **{t: cols + (_CALL_COLS_V6_ADDED if t in _CALL_TABLES else []) for t, cols in _V5_COLUMNS.items()},
    "texts": _TEXT_COLS}
_V6_COLUMNS["runs"] = _V6_COLUMNS["runs"] + _RUN_COLS_V6_ADDED


def _with_ranks(cols: Dict[str, List[Tuple[str, str]]]) -> Dict[str, List[Tuple[str, str]]]:
    """``cols`` with what RANKS_VERSION adds: the rank column, world_size and the rank tables."""
    out = {t: (c + _RANK_COL if t in _RANKED_TABLES else c) for t, c in cols.items()}
    out["runs"] = cols["runs"] + _RUN_COLS_RANKS_ADDED
    out["run_ranks"] = _RANK_TABLE_COLS
    out["rank_sections"] = _with_flags(_SECTION_COLS) + _RANK_COL
    out["rank_tokens"] = _with_flags(_TOKEN_COLS) + _RANK_COL
    return out


# DEVICES_VERSION: each GPU's own series (DEVICE_SAMPLE_DTYPE), a breakdown of power_samples.gpu_w.
_DEVICE_SAMPLE_COLS = [("t_start_ns", "INTEGER"), ("t_end_ns", "INTEGER"), ("kind", "INTEGER"), ("flags", "INTEGER"),
                       ("device", "INTEGER"), ("power_w", "REAL")] + _RANK_COL

#: Columns of each table in the current version (excluding run_id / id where noted).
TABLE_COLUMNS: Dict[str, List[Tuple[str, str]]] = {**_with_ranks(_V6_COLUMNS), "device_samples": _DEVICE_SAMPLE_COLS,
                                                   "sample_levels": _LEVEL_COLS + _RANK_COL}

#: Sort keys accepted by energyprof.store.db.runs (name -> runs column).
SORT_KEYS: Dict[str, str] = {
    "run_id": "id", "id": "id", "name": "name", "status": "status", "started_at": "started_at",
    "model": "model_name", "arch": "model_arch", "source": "source", "device": "device",
    "sample_period_s": "sample_period_s", "input_tokens": "input_tokens", "output_tokens": "output_tokens",
    "batch_size": "batch_size", "duration_s": "duration_s", "energy_j": "energy_j", "net_energy_j": "net_energy_j",
    "baseline_power_w": "baseline_power_w", "peak_power_w": "peak_power_w", "j_per_token": "j_per_token",
    "j_per_output_token": "j_per_output_token", "tokens_per_j": "tokens_per_j", "edp_js": "edp_js",
    "n_params": "n_params", "attention_kind": "attention_kind", "world_size": "world_size",
}

_INDEXED_RUN_COLS = ("started_at", "energy_j", "j_per_token", "tokens_per_j", "duration_s", "model_name", "status")


def _q(name: str) -> str:
    return '"' + name + '"'


def _array_table_ddl(table: str, cols: Sequence[Tuple[str, str]]) -> List[str]:
    body = ",\n  ".join(
        ['"run_id" INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE'] + [f"{_q(c)} {t}" for c, t in cols]
    )
    return [
        f"CREATE TABLE {table} (\n  {body}\n)",
        # (run_id, t_start_ns): every read is "this run's rows in time order"; it also
        # serves the cascade delete, which looks rows up by run_id.
        f"CREATE INDEX idx_{table}_run_t ON {table}(run_id, t_start_ns)",
    ]


def _run_table_ddl(table: str, cols: Sequence[Tuple[str, str]], index: str, index_cols: str) -> List[str]:
    """A table of per-run rows (run_id with cascade delete) and its one index."""
    body = ",\n  ".join(
        ['"run_id" INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE'] + [f"{_q(c)} {t}" for c, t in cols]
    )
    return [f"CREATE TABLE {table} (\n  {body}\n)", f"CREATE INDEX {index} ON {table}({index_cols})"]


def _head_table_ddl() -> List[str]:
    # Head rows have no time of their own; they are read per run and per layer
    # (heat maps of one layer's heads), and run_id first serves the cascade delete.
    return _run_table_ddl("head_metrics", _HEAD_COLS, "idx_head_metrics_run_layer", "run_id, layer")


def _levels_table_ddl(with_rank: bool = False) -> List[str]:
    # Read one level of one run in time order; run_id first serves the cascade delete.
    cols = _LEVEL_COLS + (_RANK_COL if with_rank else [])
    return _run_table_ddl("sample_levels", cols, "idx_sample_levels_run_level", "run_id, level, bucket")


def _text_table_ddl() -> List[str]:
    # read per run (all of it) and searched per (run, kind) for the prompt
    return _run_table_ddl("texts", _TEXT_COLS, "idx_texts_run_kind", "run_id, kind")


def _rank_tables_ddl() -> List[str]:
    """RANKS_VERSION: run_ranks (one row per rank, indexed by (run_id, rank)) and the per-rank section/token tables."""
    body = ",\n  ".join(
        ['"run_id" INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE']
        + [f"{_q(c)} {t}" for c, t in _RANK_TABLE_COLS])
    stmts = [f"CREATE TABLE run_ranks (\n  {body}\n)",
             "CREATE INDEX idx_run_ranks_run_rank ON run_ranks(run_id, rank)"]
    stmts += _array_table_ddl("rank_sections", TABLE_COLUMNS["rank_sections"])
    stmts += _array_table_ddl("rank_tokens", TABLE_COLUMNS["rank_tokens"])
    return stmts


def _runs_ddl(cols: Sequence[Tuple[str, str]], indexed: Sequence[str]) -> List[str]:
    body = ",\n  ".join(f"{_q(c)} {t}" for c, t in cols)
    stmts = [f"CREATE TABLE runs (\n  {body}\n)"]
    for c in indexed:
        stmts.append(f"CREATE INDEX idx_runs_{c} ON runs({_q(c)})")
    return stmts


def ddl(version: int = SCHEMA_VERSION) -> List[str]:
    """The CREATE statements of schema ``version`` (1 to :data:`SCHEMA_VERSION`), in order."""
    if version == 1:
        stmts = _runs_ddl(_RUN_COLS_V1, ("started_at", "energy_j", "j_per_token", "model_name", "status"))
        for t, cols in (("power_samples", _SAMPLE_COLS), ("sections", _SECTION_COLS), ("tokens", _TOKEN_COLS),
                        ("layer_metrics", _CALL_COLS_V1), ("component_metrics", _CALL_COLS_V1)):
            stmts += _array_table_ddl(t, cols)
        return stmts
    if 2 <= version <= SCHEMA_VERSION:
        cols = (_V3_COLUMNS if version < 5 else _V5_COLUMNS if version < TEXTS_VERSION
                else _V6_COLUMNS if version < RANKS_VERSION else TABLE_COLUMNS)
        stmts = _runs_ddl(cols["runs"], _INDEXED_RUN_COLS)
        for t in ("power_samples", "sections", "tokens", "layer_metrics", "component_metrics", "op_metrics"):
            stmts += _array_table_ddl(t, cols[t])
        if version >= 3:
            stmts += _head_table_ddl()
        if version >= 4:
            stmts += _levels_table_ddl(with_rank=version >= DEVICES_VERSION)
        if version >= TEXTS_VERSION:
            stmts += _text_table_ddl()
        if version >= RANKS_VERSION:
            stmts += _rank_tables_ddl()
        if version >= DEVICES_VERSION:
            stmts += _array_table_ddl("device_samples", _DEVICE_SAMPLE_COLS)
        return stmts
    raise ValueError(f"no schema version {version}; known versions: 1..{SCHEMA_VERSION}")


def create(conn: sqlite3.Connection, version: int = SCHEMA_VERSION) -> None:
    """Create schema ``version`` in an empty database, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if user_version(conn) != 0 or tables(conn):
            # another process created it between our check and our write lock
            conn.execute("COMMIT")
            return
        for s in ddl(version):
            conn.execute(s)
        conn.execute(f"PRAGMA user_version = {int(version)}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    for c, t in _RUN_COLS_V2_ADDED:
        conn.execute(f"ALTER TABLE runs ADD COLUMN {_q(c)} {t}")
    for c in ("tokens_per_j", "duration_s"):
        conn.execute(f"CREATE INDEX IF NOT EXISTS idx_runs_{c} ON runs({_q(c)})")
    for table in ("layer_metrics", "component_metrics"):
        for c, t in _CALL_COLS_V2_ADDED:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {_q(c)} {t}")
    for s in _array_table_ddl("op_metrics", _CALL_COLS_V3):
        conn.execute(s)
    # Backfill the new run columns from the summary JSON that v1 already kept whole.
    rows = conn.execute("SELECT id, summary FROM runs").fetchall()
    for rid, text in rows:
        try:
            s = json.loads(text or "{}")
        except ValueError:
            s = {}
        model = s.get("model") or {}
        meta = s.get("source_meta")
        conn.execute(
            "UPDATE runs SET source_label=?, source_meta=?, n_params=?, j_per_output_token=?, edp_js=?, "
            "unattributed_j=?, total_rule=? WHERE id=?",
            (s.get("source_label"), None if meta is None else json.dumps(meta), model.get("n_params"),
             _num(s.get("j_per_output_token")), _num(s.get("edp_js")), _num(s.get("unattributed_j")),
             s.get("total_rule"), rid),
        )


def _migrate_2_to_3(conn: sqlite3.Connection) -> None:
    # A new table only: v2 runs simply have no head rows (their per-(layer, head)
    # averages stay where v2 kept them, in summary["deep"]["heads"]).
    for s in _head_table_ddl():
        conn.execute(s)


def _migrate_3_to_4(conn: sqlite3.Connection) -> None:
    # A new table only: runs saved before have no levels, and their samples are
    # downsampled from the raw rows when read (energyprof.store.levels.read_downsampled).
    for s in _levels_table_ddl():
        conn.execute(s)


def _migrate_4_to_5(conn: sqlite3.Connection) -> None:
    # older rows knew only whether they were resolved: that is the one flag they can carry.
    for table in _FLAG_TABLES:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {_q(_FLAGS_COL[0])} {_FLAGS_COL[1]}")
        conn.execute(f"UPDATE {table} SET flags = {_FLAG_UNRESOLVED} WHERE resolved = 0")


def _migrate_to_6(conn: sqlite3.Connection) -> None:
    """TEXTS_VERSION - 1 -> TEXTS_VERSION (6): the texts table, runs.attention_kind (backfilled from the head
    counts in model_config) and act_abs_mean in the call tables (NULL for earlier rows).
    Runs saved before have no text (it was never stored)."""
    for s in _text_table_ddl():
        conn.execute(s)
    for c, t in _RUN_COLS_V6_ADDED:
        conn.execute(f"ALTER TABLE runs ADD COLUMN {_q(c)} {t}")
    for table in _CALL_TABLES:
        for c, t in _CALL_COLS_V6_ADDED:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {_q(c)} {t}")
    for rid, text in conn.execute("SELECT id, model_config FROM runs").fetchall():
        try:
            model = json.loads(text or "{}")
        except ValueError:
            model = {}
        if not isinstance(model, dict):
            continue
        kind = model.get("attention_kind") or attention_kind(model.get("n_heads"), model.get("n_kv_heads"))
        if kind is not None:
            conn.execute("UPDATE runs SET attention_kind=? WHERE id=?", (kind, rid))


def _migrate_to_ranks(conn: sqlite3.Connection) -> None:
    """RANKS_VERSION - 1 -> RANKS_VERSION, the multi-rank step: rank columns (existing
    rows are rank 0, the one process they came from), the per-rank tables and
    runs.world_size (1).  It adds only its own columns and tables, so it chains after
    whichever step comes before it."""
    for table in _RANKED_TABLES:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {_q('rank')} {_RANK_COL[0][1]}")
    for c, t in _RUN_COLS_RANKS_ADDED:
        conn.execute(f"ALTER TABLE runs ADD COLUMN {_q(c)} {t}")
    for s in _rank_tables_ddl():
        conn.execute(s)


def _migrate_to_devices(conn: sqlite3.Connection) -> None:
    """DEVICES_VERSION - 1 -> DEVICES_VERSION: the device_samples table (runs saved before
    read one GPU, or summed several without keeping each one's series) and the rank of each
    sample_levels row (existing levels are of one process, or absent for a multi-rank run: 0)."""
    for s in _array_table_ddl("device_samples", _DEVICE_SAMPLE_COLS):
        conn.execute(s)
    conn.execute(f"ALTER TABLE sample_levels ADD COLUMN {_q('rank')} {_RANK_COL[0][1]}")


def _num(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


#: MIGRATIONS[v] turns a version-v database into version v+1.
MIGRATIONS = {1: _migrate_1_to_2, 2: _migrate_2_to_3, 3: _migrate_3_to_4, 4: _migrate_4_to_5,
              TEXTS_VERSION - 1: _migrate_to_6, RANKS_VERSION - 1: _migrate_to_ranks,
              DEVICES_VERSION - 1: _migrate_to_devices}


def user_version(conn: sqlite3.Connection) -> int:
    """PRAGMA user_version (reading it validates the file header)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def tables(conn: sqlite3.Connection) -> List[str]:
    """Names of the user tables."""
    return [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]


def table_columns(conn: sqlite3.Connection, table: str) -> List[str]:
    """Column names of ``table`` in the database, in order."""
    return [r[1] for r in conn.execute(f"PRAGMA table_info({_q(table)})")]


def check(conn: sqlite3.Connection, path: str) -> int:
    """Validate without writing: returns the version, 0 for an empty database.

    Raises SchemaError for a non-SQLite file, a foreign SQLite database or one
    written by a newer energyprof.
    """
    try:
        v = user_version(conn)
        names = tables(conn)
        if v == 0 and names:
            # another process created the schema between the two reads (tables and version
            # are committed together): the tables we saw mean its version is there now
            v = user_version(conn)
    except sqlite3.DatabaseError as exc:
        raise SchemaError(f"{path} is not an energyprof database: {exc} (the file was not changed)") from exc
    if v > SCHEMA_VERSION:
        raise SchemaError(
            f"{path} was written by a newer energyprof (schema version {v}; this energyprof reads versions up to "
            f"{SCHEMA_VERSION}). Upgrade energyprof to use it; the file was not changed."
        )
    if v == 0 and names:
        raise SchemaError(
            f"{path} is an SQLite database but not an energyprof store (it has tables {', '.join(names[:8])} and "
            f"no schema version); the file was not changed."
        )
    if v > 0 and "runs" not in names:
        raise SchemaError(f"{path} has schema version {v} but no runs table: not an energyprof store")
    return v


def migrate(conn: sqlite3.Connection, path: str) -> Tuple[int, int]:
    """Bring the database to SCHEMA_VERSION (create if empty); returns (old, new)."""
    old = check(conn, path)
    if old == SCHEMA_VERSION:
        return old, old
    if old == 0:
        create(conn, SCHEMA_VERSION)
        return 0, SCHEMA_VERSION
    conn.execute("BEGIN IMMEDIATE")
    try:
        v = user_version(conn)  # re-read under the write lock: another process may have migrated it
        while v < SCHEMA_VERSION:
            MIGRATIONS[v](conn)
            v += 1
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return old, SCHEMA_VERSION


__all__ = ["SCHEMA_VERSION", "ARRAY_TABLES", "TABLE_COLUMNS", "SORT_KEYS", "STATUSES", "SchemaError", "ddl",
           "create", "migrate", "check", "MIGRATIONS", "RANKS_VERSION", "DEVICES_VERSION", "user_version", "tables", "table_columns"]
