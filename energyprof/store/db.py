"""The run store: where runs are kept, and the read API over them.

Writes go through the native writer thread (``energyprof._core.Store``, csrc/threads/ep_sqlite.c):
bounded queue, one transaction per batch, WAL.  Reads use Python's ``sqlite3`` and
come back as numpy arrays and plain dicts.

Every function takes ``db=``: a path, an open :class:`Store`, or None for the default
database (``$ENERGYPROF_DB``, else ``$XDG_DATA_HOME/energyprof/runs.db`` /
``~/.local/share/energyprof/runs.db`` on Linux, ``~/Library/Application
Support/energyprof/runs.db`` on macOS).

>>> import energyprof as ep, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "runs.db")
>>> with ep.Store(path) as st:
...     rid = st.save(ep.RunData({"name": "demo", "energy_j": 12.0, "input_tokens": 4, "output_tokens": 8}))
>>> [r["name"] for r in ep.runs(db=path)]
['demo']
>>> ep.load(rid, db=path).summary()["energy_j"]
12.0
"""
from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import json
import math
import os
import socket
import sqlite3
import stat
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from .._dtypes import text_dtype
from .._hfconfig import attention_kind
from ..errors import MissingExtraError
from . import levels as _levels
from . import schema as _schema
from .rundata import ARRAY_NAMES, RunData, _default_dtype

PathLike = Union[str, "os.PathLike[str]"]
DbArg = Union[None, PathLike, "Store"]

ARRAY_TABLES = _schema.ARRAY_TABLES
STATUSES = _schema.STATUSES
SORT_KEYS = tuple(_schema.SORT_KEYS)
FILTERS = ("model", "arch", "source", "label", "status", "tag", "since", "until", "search")
#: The labels a run's numbers carry (summary["source_label"]).
LABELS = ("measured", "estimated", "simulated")
EXPORT_FORMATS = ("json", "csv", "parquet")
EXPORT_FORMAT_TAG = "energyprof-run"
#: Rows fetched at a time by :meth:`Store.read_array` (the Python tuples of one piece are
#: what a read holds beside the array it fills).
READ_PIECE_ROWS = 8192

# Summary keys that hold floats (NaN is stored as JSON null and revived on load).
_FLOAT_KEYS = ("sample_period_s", "duration_s", "energy_j", "net_energy_j", "baseline_power_w", "peak_power_w",
               "j_per_token", "j_per_output_token", "tokens_per_j", "edp_js", "unattributed_j")
_PHASE_FLOAT_KEYS = ("energy_j", "net_energy_j", "duration_s", "j_per_token", "edp_js")
# Phases in run order: compare lists these first, any others after, by name.
_PHASE_ORDER = ("pre_inference", "prefill", "decode", "post_inference")


# ---------------------------------------------------------------------------------
# paths
# ---------------------------------------------------------------------------------
def default_path() -> str:
    """The default database path: $ENERGYPROF_DB, else the platform user data directory."""
    env = os.environ.get("ENERGYPROF_DB")
    if env:
        return os.path.expanduser(env)
    home = os.path.expanduser("~")
    if sys.platform == "darwin":
        base = os.path.join(home, "Library", "Application Support")
    elif sys.platform.startswith("win"):
        base = os.environ.get("LOCALAPPDATA") or os.path.join(home, "AppData", "Local")
    else:
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(home, ".local", "share")
    return os.path.join(base, "energyprof", "runs.db")


def _utc_iso(value: Any = None) -> str:
    """ISO-8601 UTC with microseconds, so that text order is time order."""
    if value is None:
        d = _dt.datetime.now(_dt.timezone.utc)
    elif isinstance(value, _dt.datetime):
        d = value
    elif isinstance(value, _dt.date):
        d = _dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        d = _dt.datetime.fromtimestamp(float(value), _dt.timezone.utc)
    elif isinstance(value, str):
        try:
            d = _dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"not an ISO-8601 date/time: {value!r} (e.g. '2025-01-31' or "
                             f"'2025-01-31T12:00:00+00:00')") from exc
    else:
        raise ValueError(f"not a date/time: {value!r} (use datetime, date, ISO-8601 str or Unix seconds)")
    if d.tzinfo is None:
        d = d.replace(tzinfo=_dt.timezone.utc)  # naive times are taken as UTC
    return d.astimezone(_dt.timezone.utc).isoformat(timespec="microseconds")


# ---------------------------------------------------------------------------------
# JSON with NaN/inf (strict JSON on disk: NaN -> null, inf -> "Infinity")
# ---------------------------------------------------------------------------------
def _jsonable(obj: Any, path: tuple = (), nonfinite: Optional[list] = None) -> Any:
    """obj with numpy values made plain and non-finite floats made null; when
    ``nonfinite`` is a list, the path and value of each of those floats go there."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v, path + (str(k),), nonfinite) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, path + (i,), nonfinite) for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        text = "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
        if nonfinite is None:
            return None if text == "NaN" else text
        nonfinite.append([list(path), text])
        return None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)  # e.g. a torch.dtype in the model config: kept readable rather than failing the save


def _dumps(obj: Any) -> str:
    return json.dumps(_jsonable(obj), allow_nan=False, sort_keys=False)


#: Key under which an encoded summary lists its non-finite floats (strict JSON has none).
_NONFINITE_KEY = "__nonfinite__"


def _encode_summary(summary: Dict[str, Any]) -> Dict[str, Any]:
    """The summary as strict-JSON-able data: NaN/inf become null, and their paths and
    values are listed under ``__nonfinite__`` so that decoding restores them exactly."""
    nonfinite: list = []
    body = _jsonable(dict(summary), (), nonfinite)
    if nonfinite:
        body[_NONFINITE_KEY] = nonfinite
    return body


def _decode_summary(body: Dict[str, Any]) -> Dict[str, Any]:
    """Inverse of :func:`_encode_summary` (also revives summaries written without the list)."""
    s = dict(body)
    for path, text in s.pop(_NONFINITE_KEY, None) or []:
        try:
            node = s
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = _fnum(text)
        except (KeyError, IndexError, TypeError, ValueError):
            continue  # a path that no longer fits: leave the null
    return _revive_summary(s)


def _fnum(v: Any) -> float:
    if v is None:
        return float("nan")
    if isinstance(v, str):
        return float(v.replace("Infinity", "inf"))
    return float(v)


def _revive_summary(s: Dict[str, Any]) -> Dict[str, Any]:
    for k in _FLOAT_KEYS:
        if k in s and (s[k] is None or isinstance(s[k], str)):
            s[k] = _fnum(s[k])
    for ph in (s.get("phases") or {}).values():
        if isinstance(ph, dict):
            for k in _PHASE_FLOAT_KEYS:
                if k in ph and (ph[k] is None or isinstance(ph[k], str)):
                    ph[k] = _fnum(ph[k])
    doms = s.get("domains")
    if isinstance(doms, dict):
        for k, v in doms.items():
            if v is None or isinstance(v, str):
                doms[k] = _fnum(v)
    return s


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}; valid: {', '.join(STATUSES)}")


def _real(v: Any) -> Optional[float]:
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _int(v: Any) -> Optional[int]:
    if v is None or isinstance(v, bool):
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _run_columns(summary: Dict[str, Any]) -> Dict[str, Any]:
    """runs-table columns from a summary dict (the dict itself goes in ``summary``)."""
    s = summary
    model = s.get("model") or {}
    versions = s.get("versions") or {}
    tags = s.get("tags") or []
    if isinstance(tags, str):
        tags = [tags]
    body = {k: v for k, v in s.items() if k != "run_id"}
    return {
        "name": s.get("name"),
        "tags": _dumps([str(t) for t in tags]),
        "status": s.get("status") or "running",
        "started_at": _utc_iso(s.get("started_at")),
        "t_origin_ns": _int(s.get("t_origin_ns")),
        "source": s.get("source"),
        "source_kind": s.get("source_kind"),
        "source_label": s.get("source_label"),
        "source_meta": None if s.get("source_meta") is None else _dumps(s.get("source_meta")),
        "method": s.get("method"),
        "sample_period_s": _real(s.get("sample_period_s")),
        "mode": s.get("mode"),
        "sync": s.get("sync"),
        "model_name": model.get("name"),
        "model_arch": model.get("arch"),
        "model_config": _dumps(model) if model else None,
        "n_params": _int(model.get("n_params")),
        "attention_kind": model.get("attention_kind") or attention_kind(model.get("n_heads"), model.get("n_kv_heads")),
        "device": s.get("device"),
        "host": s.get("host"),
        "chip": s.get("chip"),
        "energyprof_version": versions.get("energyprof"),
        "torch_version": versions.get("torch"),
        "transformers_version": versions.get("transformers"),
        "python_version": versions.get("python"),
        "input_tokens": _int(s.get("input_tokens")),
        "output_tokens": _int(s.get("output_tokens")),
        "batch_size": _int(s.get("batch_size")),
        "duration_s": _real(s.get("duration_s")),
        "energy_j": _real(s.get("energy_j")),
        "net_energy_j": _real(s.get("net_energy_j")),
        "baseline_power_w": _real(s.get("baseline_power_w")),
        "peak_power_w": _real(s.get("peak_power_w")),
        "j_per_token": _real(s.get("j_per_token")),
        "j_per_output_token": _real(s.get("j_per_output_token")),
        "tokens_per_j": _real(s.get("tokens_per_j")),
        "edp_js": _real(s.get("edp_js")),
        "unattributed_j": _real(s.get("unattributed_j")),
        "total_rule": s.get("total_rule"),
        "world_size": _int((s.get("distributed") or {}).get("world_size")) or 1,
        "summary": json.dumps(_encode_summary(body), allow_nan=False),
    }


def _summary_from_row(row: sqlite3.Row) -> Dict[str, Any]:
    """The summary dict of a runs row: the stored JSON with the columns that can change laid over it."""
    try:
        s = json.loads(row["summary"] or "{}")
    except ValueError:
        s = {}
    s = _decode_summary(s if isinstance(s, dict) else {})
    s["run_id"] = int(row["id"])
    s["name"] = row["name"]
    s["status"] = row["status"]
    # started_at as the session wrote it (the column holds the normalised form for sorting)
    s["started_at"] = s.get("started_at") or row["started_at"]
    try:
        s["tags"] = list(json.loads(row["tags"] or "[]"))
    except ValueError:
        s["tags"] = []
    return s


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return False
    return True


def _file_readonly(path: str) -> bool:
    """True when the file exists and may not be written: no write bit set (honoured
    even for root, who could write anyway), or no write access for this user."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    if not (st.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)):
        return True
    return not os.access(path, os.W_OK)


# ---------------------------------------------------------------------------------
# Store
# ---------------------------------------------------------------------------------
def _set_wal(conn: sqlite3.Connection, tries: int = 100) -> None:
    """PRAGMA journal_mode=WAL, retried while another process holds the lock (it may be
    creating the schema): SQLite answers the pragma 'locked' without its busy handler."""
    for k in range(tries):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or k == tries - 1:
                raise
            time.sleep(0.02)


class Store:
    """An open run store: the native writer (lazily started) and a reader connection.

    Parameters
    ----------
    path:
        Database file; None for :func:`default_path`.  Created (with its directory)
        if missing, migrated if older, refused (:class:`energyprof.store.schema.SchemaError`)
        if newer or not an energyprof database.  A file without write permission is
        opened read-only: reads work, writes raise PermissionError.
    busy_timeout_ms:
        How long a write waits for a lock held by another process before failing
        with "database is locked by another process".
    mark_stale:
        Mark runs left ``running`` by a process that no longer exists as ``interrupted``.
    readonly:
        Open the file read-only (SQLite ``mode=ro``) even where it could be written: every
        write raises PermissionError.  The file must exist.
    """

    def __init__(self, path: Optional[PathLike] = None, *, busy_timeout_ms: int = 5000, mark_stale: bool = True,
                 queue_jobs: int = 64, readonly: bool = False) -> None:
        self.path = os.path.abspath(os.fspath(path) if path is not None else default_path())
        self.busy_timeout_ms = int(busy_timeout_ms)
        self._queue_jobs = int(queue_jobs)
        self._writer = None
        self._conn: Optional[sqlite3.Connection] = None
        if readonly and not os.path.exists(self.path):
            raise FileNotFoundError(f"no run store at {self.path} (a read-only store must exist)")
        self.readonly = bool(readonly) or _file_readonly(self.path)
        if not self.readonly and not os.path.exists(self.path):
            parent = os.path.dirname(self.path)
            if parent:
                os.makedirs(parent, exist_ok=True)
        if self.readonly:
            uri = "file:" + _uri_path(self.path) + "?mode=ro"
        else:
            uri = "file:" + _uri_path(self.path) + "?mode=rwc"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout_ms / 1000.0, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.OperationalError as exc:
            raise OSError(f"cannot open the run store {self.path}: {exc}") from exc
        conn.row_factory = sqlite3.Row
        self._conn = conn
        try:
            version = _schema.check(conn, self.path)
            if version < _schema.SCHEMA_VERSION:
                if self.readonly:
                    raise PermissionError(
                        f"{self.path} has schema version {version} and needs migrating to "
                        f"{_schema.SCHEMA_VERSION}, but the file is read-only")
                _schema.migrate(conn, self.path)
            conn.execute("PRAGMA foreign_keys=ON")
            if not self.readonly:
                _set_wal(conn)
                conn.execute("PRAGMA synchronous=NORMAL")
            if mark_stale and not self.readonly:
                try:
                    self.mark_stale_running()
                except (RuntimeError, PermissionError):
                    pass  # best effort: a lock held elsewhere must not stop reading; next open retries
        except sqlite3.OperationalError as exc:
            conn.close()
            self._conn = None
            raise _map_sqlite_error(exc, self.path) from exc
        except BaseException:
            conn.close()
            self._conn = None
            raise

    # -- plumbing --------------------------------------------------------------------
    @property
    def conn(self) -> sqlite3.Connection:
        """The reader connection (Python sqlite3, autocommit, rows as sqlite3.Row)."""
        if self._conn is None:
            raise ValueError(f"the store {self.path} is closed")
        return self._conn

    @property
    def writer(self):
        """The native writer (``_core.Store``), started on first use."""
        if self._conn is None:
            raise ValueError(f"the store {self.path} is closed")
        if self._writer is None:
            if self.readonly:
                raise PermissionError(f"the run store {self.path} is read-only: cannot write to it")
            from .. import _core

            self._writer = _core.Store(self.path, busy_timeout_ms=self.busy_timeout_ms, queue_jobs=self._queue_jobs)
        return self._writer

    def _write_sql(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """A synchronous write through the reader connection (after the writer's queue)."""
        if self.readonly:
            raise PermissionError(f"the run store {self.path} is read-only: cannot write to it")
        if self._writer is not None:
            self._writer.flush()
        try:
            return self.conn.execute(sql, params)
        except sqlite3.OperationalError as exc:
            raise _map_sqlite_error(exc, self.path) from exc

    def flush(self) -> None:
        """Wait until every queued write is committed; raise the writer's error if one failed."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the writer and the reader (errors of the writer are raised)."""
        w, self._writer = self._writer, None
        try:
            if w is not None:
                w.close()
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<energyprof.Store {self.path!r}{' read-only' if self.readonly else ''}>"

    # -- the write API used by the live session --------------------------------------
    def create_run(self, meta: Dict[str, Any]) -> int:
        """Insert a run with status ``running`` and return its id.

        ``meta`` is a (partial) summary dict; ``started_at`` defaults to now (UTC).
        The run records this process's id, so a later open can tell a run whose
        process was killed (marked ``interrupted``) from one still going.
        """
        meta = dict(meta or {})
        meta["status"] = "running"
        if meta.get("started_at") is None:
            meta["started_at"] = _utc_iso()
        _utc_iso(meta["started_at"])  # a malformed time fails here, before anything is written
        cols = _run_columns(meta)
        cols["pid"] = os.getpid()
        cols["pid_host"] = socket.gethostname()
        names = list(cols)
        sql = f"INSERT INTO runs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        cur = self._write_sql(sql, [cols[n] for n in names])
        return int(cur.lastrowid)

    def write_samples(self, run_id: int, samples: np.ndarray) -> None:
        """Queue power samples (``_core.SAMPLE_DTYPE``) of a run: one transaction,
        committed by the writer thread within milliseconds.  Call at least every
        second while a run goes on; errors surface at :meth:`flush`."""
        self.write_array(run_id, "samples", samples)

    def write_array(self, run_id: int, name: str, array: np.ndarray) -> None:
        """Queue the rows of one RunData array (``name`` in ARRAY_NAMES) for run ``run_id``."""
        if name not in ARRAY_TABLES:
            raise ValueError(f"unknown array {name!r}; valid names: {', '.join(ARRAY_TABLES)}")
        arr = np.asarray(array)
        if arr.dtype.names is None:
            raise TypeError(f"{name} must be a numpy structured array, got dtype {arr.dtype}")
        if len(arr) == 0:
            return
        table = ARRAY_TABLES[name]
        known = {c for c, _ in _schema.TABLE_COLUMNS[table]}
        missing = [f for f in arr.dtype.names if f not in known]
        if missing:
            raise ValueError(f"{name}: fields {missing} have no column in table {table}; "
                             f"columns: {', '.join(sorted(known))}")
        self.writer.insert(table, arr, {"run_id": int(run_id)})

    def finish_run(self, run_id: int, summary: Dict[str, Any], sections: Optional[np.ndarray] = None,
                   tokens: Optional[np.ndarray] = None, layers: Optional[np.ndarray] = None,
                   components: Optional[np.ndarray] = None, status: str = "completed", *,
                   ops: Optional[np.ndarray] = None, samples: Optional[np.ndarray] = None,
                   heads: Optional[np.ndarray] = None, texts: Optional[np.ndarray] = None,
                   all_samples: Optional[np.ndarray] = None,
                   ranks: Optional[np.ndarray] = None, rank_sections: Optional[np.ndarray] = None,
                   rank_tokens: Optional[np.ndarray] = None,
                   device_samples: Optional[np.ndarray] = None) -> None:
        """Write the run's arrays and final summary, then set ``status``; waits until committed.

        ``texts`` are the prompt, output and token texts (``TEXT_DTYPE``, table texts).
        ``heads`` are mode="deep" attention statistics (``HEAD_DTYPE``, table head_metrics).
        ``all_samples``, every sample of the run in time order, gives the downsampling
        levels (:mod:`energyprof.store.levels`, table sample_levels) that plots of long
        runs read instead of the raw samples.
        ``ranks``, ``rank_sections``, ``rank_tokens`` are the per-rank rows of a multi-rank run.
        ``device_samples`` are each GPU's own series (``DEVICE_SAMPLE_DTYPE``, table
        device_samples) when the source read several in one process.
        Rows written earlier for sections/tokens/layers/components/ops/heads of this run are
        replaced (finishing twice is harmless); ``samples`` (optional) are *appended*
        to those written with :meth:`write_samples`.  The runs row is updated last,
        so a run marked completed always has its arrays.  Raises the writer's error
        (full disk, read-only, locked) if any write failed; the caller's in-memory
        data is untouched either way.
        """
        _check_status(status)
        rid = int(run_id)
        w = self.writer
        arrays = {"sections": sections, "tokens": tokens, "layers": layers, "components": components, "ops": ops,
                  "heads": heads, "texts": texts, "ranks": ranks, "rank_sections": rank_sections,
                  "rank_tokens": rank_tokens, "device_samples": device_samples}
        for name, arr in arrays.items():
            if arr is not None:
                w.execute(f"DELETE FROM {ARRAY_TABLES[name]} WHERE run_id = ?", (rid,))
                self.write_array(rid, name, arr)
        if samples is not None:
            self.write_array(rid, "samples", samples)
        if all_samples is not None:
            self.write_levels(rid, all_samples)
        s = dict(summary or {})
        s["status"] = status
        if s.get("started_at") is None:
            row = self.conn.execute("SELECT started_at FROM runs WHERE id=?", (rid,)).fetchone()
            s["started_at"] = row["started_at"] if row else None
        cols = _run_columns(s)
        cols["ended_at"] = _utc_iso()
        names = list(cols)
        w.execute(f"UPDATE runs SET {', '.join(n + ' = ?' for n in names)} WHERE id = ?",
                  [cols[n] for n in names] + [rid])
        w.flush()

    def write_levels(self, run_id: int, samples: np.ndarray) -> None:
        """Replace run ``run_id``'s downsampling levels with those of ``samples`` (queued);
        samples of several ranks (a merged multi-rank run) give one set of levels per rank."""
        rows = _levels.compute_per_rank(np.asarray(samples))
        self.writer.execute("DELETE FROM sample_levels WHERE run_id = ?", (int(run_id),))
        if len(rows):
            self.writer.insert("sample_levels", rows, {"run_id": int(run_id)})

    def write_progress(self, run_id: int, progress: Dict[str, Any]) -> None:
        """Record how far a running run has got (``summary["progress"]``: phase, tokens so
        far, ...) for readers in other processes (``energyprof serve``'s live page); queued.
        Only a run still ``running`` is changed; :meth:`finish_run` replaces the summary."""
        self.writer.execute(
            "UPDATE runs SET summary = json_set(summary, '$.progress', json(?)) WHERE id = ? AND status = 'running'",
            (_dumps(progress), int(run_id)))

    def set_status(self, run_id: int, status: str) -> None:
        """Set a run's status (e.g. ``interrupted`` after Ctrl-C), through the writer, and wait."""
        _check_status(status)
        self.writer.execute("UPDATE runs SET status = ? WHERE id = ?", (status, int(run_id)))
        self.writer.flush()

    def save(self, run: RunData, status: Optional[str] = None) -> int:
        """Save a whole RunData as a new run; returns the new run id."""
        s = run.summary()
        s.pop("run_id", None)
        rid = self.create_run(s)
        self.finish_run(rid, s, run.sections, run.tokens, run.layers, run.components,
                        status=status or s.get("status") or "completed", ops=run.ops, samples=run.samples,
                        heads=run.heads, texts=run.texts, all_samples=run.samples, ranks=run.ranks,
                        rank_sections=run.rank_sections, rank_tokens=run.rank_tokens,
                        device_samples=run.device_samples)
        return rid

    def mark_stale_running(self) -> List[int]:
        """Runs left ``running`` by a process that is gone become ``interrupted``; returns their ids.

        A run whose process is alive (or on another host, where we cannot tell) is left alone.
        """
        host = socket.gethostname()
        stale = []
        for row in self.conn.execute("SELECT id, pid, pid_host FROM runs WHERE status = 'running'").fetchall():
            pid, phost = row["pid"], row["pid_host"]
            if pid is None:
                stale.append(int(row["id"]))
            elif phost == host and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                stale.append(int(row["id"]))
        if stale:
            self._write_sql(
                f"UPDATE runs SET status = 'interrupted' WHERE status = 'running' AND id IN "
                f"({', '.join('?' * len(stale))})", stale)
        return stale

    # -- reads ----------------------------------------------------------------------
    def _run_row(self, run_id: int) -> sqlite3.Row:
        try:
            rid = int(run_id)
        except (TypeError, ValueError):
            raise KeyError(f"run {run_id!r} is not a run id (an int)") from None
        row = self.conn.execute("SELECT * FROM runs WHERE id = ?", (rid,)).fetchone()
        if row is None:
            raise KeyError(f"no run with id {rid} in {self.path}")
        return row

    def read_array(self, run_id: int, name: str) -> np.ndarray:
        """One array of a run, in the order it was written, with the current dtype."""
        dt = _default_dtype(name)
        table = ARRAY_TABLES[name]
        have = set(_schema.table_columns(self.conn, table))
        if name == "texts":   # the text column is as wide as the run's longest text
            width = self.conn.execute("SELECT MAX(LENGTH(text)) FROM texts WHERE run_id = ?",
                                      (int(run_id),)).fetchone()[0]
            dt = text_dtype(width or 1)
        exprs = []
        for f in dt.names:
            kind = dt.fields[f][0].kind
            if f not in have:
                exprs.append("NULL" if kind == "f" else ("''" if kind == "U" else ("-1" if f in ("call_id", "parent_id") else "0")))
            elif kind in "iub":
                exprs.append(f'COALESCE("{f}", 0)')
            elif kind == "U":
                exprs.append(f'COALESCE("{f}", \'\')')
            else:
                exprs.append(f'"{f}"')
        # Read in pieces into one array sized by a count: a fetchall would hold every row as a
        # tuple of Python objects (about 1.5 KB per call row) beside the array (281 B).
        n = int(self.conn.execute(f"SELECT COUNT(*) FROM {table} WHERE run_id = ?", (int(run_id),)).fetchone()[0])
        cur = self.conn.execute(f"SELECT {', '.join(exprs)} FROM {table} WHERE run_id = ? ORDER BY rowid",
                                (int(run_id),))
        cur.row_factory = None  # plain tuples: numpy builds the records directly
        out = np.zeros(n, dtype=dt)
        more: List[np.ndarray] = []   # rows written after the count (a run still being written)
        i = 0
        while True:
            rows = cur.fetchmany(READ_PIECE_ROWS)
            if not rows:
                break
            piece = np.array(rows, dtype=dt)
            fit = max(0, min(len(piece), n - i))
            out[i:i + fit] = piece[:fit]
            if fit < len(piece):
                more.append(piece[fit:])
            i += fit
        if more:
            return np.concatenate([out[:i]] + more)
        return out if i == n else out[:i].copy()

    def sample_starts(self, run_id: int) -> np.ndarray:
        """``t_start_ns`` of every power sample of a run, in time order (int64; one column read)."""
        cur = self.conn.execute("SELECT t_start_ns FROM power_samples WHERE run_id = ? ORDER BY t_start_ns",
                                (int(run_id),))
        cur.row_factory = None
        return np.fromiter((r[0] for r in cur), dtype=np.int64)

    def summary(self, run_id: int) -> Dict[str, Any]:
        """The summary dict of run ``run_id`` without reading its arrays (KeyError if unknown)."""
        self.flush()
        return _summary_from_row(self._run_row(run_id))

    def writer_alive(self, run_id: int) -> Optional[bool]:
        """For a ``running`` run: whether the process writing it still exists (None when it
        runs on another host, where that cannot be told, or for a run that is not running)."""
        row = self._run_row(run_id)
        if row["status"] != "running":
            return None
        pid, phost = row["pid"], row["pid_host"]
        if pid is None:
            return False
        if phost != socket.gethostname():
            return None
        return int(pid) == os.getpid() or _pid_alive(int(pid))

    def samples_after(self, run_id: int, after_t_start_ns: Optional[int] = None, limit: int = 10_000) -> np.ndarray:
        """Up to ``limit`` samples of a run that start after ``after_t_start_ns`` (all when
        None), in time order: what a reader following a running run has not seen yet."""
        dt = _default_dtype("samples")
        lo = -(1 << 63) if after_t_start_ns is None else int(after_t_start_ns)
        cur = self.conn.execute(
            f"SELECT {_levels._RAW_SELECT} FROM power_samples WHERE run_id = ? AND t_start_ns > ? "
            f"ORDER BY t_start_ns LIMIT ?", (int(run_id), lo, int(limit)))
        cur.row_factory = None
        rows = cur.fetchall()
        return np.array(rows, dtype=dt) if rows else np.zeros(0, dtype=dt)

    def downsampled(self, run_id: int, max_points: int = 2000) -> Dict[str, Any]:
        """At most ``max_points`` buckets of a run's samples with min / max / mean power per
        domain and of the total (:func:`energyprof.store.levels.read_downsampled`)."""
        self.flush()
        row = self._run_row(run_id)
        return _levels.read_downsampled(self.conn, int(row["id"]), max_points, _default_dtype("samples"))

    def load(self, run_id: int) -> RunData:
        """The whole run as a :class:`RunData` (KeyError if there is no such run)."""
        self.flush()
        row = self._run_row(run_id)
        rid = int(row["id"])
        arrays = {name: self.read_array(rid, name) for name in ARRAY_NAMES}
        return RunData(_summary_from_row(row), **arrays)


def _uri_path(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/:")


def _map_sqlite_error(exc: sqlite3.Error, path: str) -> Exception:
    msg = str(exc)
    low = msg.lower()
    if "locked" in low or "busy" in low:
        return RuntimeError(f"database is locked by another process: {path} ({msg})")
    if "readonly" in low or "read-only" in low:
        return PermissionError(f"the run store {path} is read-only ({msg})")
    if "full" in low:
        return OSError(f"database or disk is full: {path} ({msg})")
    return exc


@contextlib.contextmanager
def _opened(db: DbArg) -> Iterator[Store]:
    """A Store for ``db``: the one given, or one opened (and closed) around the call."""
    if isinstance(db, Store):
        yield db
        return
    st = Store(db)
    try:
        yield st
    finally:
        st.close()


# ---------------------------------------------------------------------------------
# the read API
# ---------------------------------------------------------------------------------
class RunList(list):
    """A list of run summary dicts (newest first by default) with :meth:`to_pandas`."""

    def to_pandas(self):
        """One row per run, nested dicts flattened to dotted columns (``phases.decode.energy_j``)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise MissingExtraError("pandas", "RunList.to_pandas") from exc
        return pd.json_normalize(list(self))

    @property
    def run_ids(self) -> List[int]:
        """The run ids, in list order."""
        return [r["run_id"] for r in self]


def _where(filters: Dict[str, Any]) -> tuple:
    unknown = [k for k in filters if k not in FILTERS]
    if unknown:
        raise ValueError(f"unknown filter(s) {', '.join(unknown)}; valid filters: {', '.join(FILTERS)}")
    clauses, params = [], []
    f = {k: v for k, v in filters.items() if v is not None}
    if "model" in f:
        clauses.append("model_name = ?")
        params.append(str(f["model"]))
    if "arch" in f:
        clauses.append("model_arch = ?")
        params.append(str(f["arch"]))
    if "source" in f:
        clauses.append("(source_kind = ? OR source = ?)")
        params += [str(f["source"])] * 2
    if "label" in f:
        if f["label"] not in LABELS:
            raise ValueError(f"unknown label {f['label']!r}; valid: {', '.join(LABELS)}")
        clauses.append("source_label = ?")
        params.append(str(f["label"]))
    if "status" in f:
        statuses = [f["status"]] if isinstance(f["status"], str) else list(f["status"])
        bad = [s for s in statuses if s not in STATUSES]
        if bad or not statuses:
            raise ValueError(f"unknown status {bad[0] if bad else statuses!r}; valid: {', '.join(STATUSES)}")
        clauses.append(f"status IN ({', '.join('?' * len(statuses))})")
        params += statuses
    if "tag" in f:
        clauses.append("EXISTS (SELECT 1 FROM json_each(runs.tags) WHERE json_each.value = ?)")
        params.append(str(f["tag"]))
    if "since" in f:
        clauses.append("started_at >= ?")
        params.append(_utc_iso(f["since"]))
    if "until" in f:
        clauses.append("started_at < ?")
        params.append(_utc_iso(f["until"]))
    if "search" in f:
        # LIKE with escapes, so % and _ in the search text are literal
        pat = "%" + str(f["search"]).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        cols = ("name", "model_name", "source", "tags", "host", "device", "chip")
        clauses.append("(" + " OR ".join(f"{c} LIKE ? ESCAPE '\\'" for c in cols)
                       + " OR EXISTS (SELECT 1 FROM texts WHERE texts.run_id = runs.id AND texts.kind = 'prompt' "
                         "AND texts.text LIKE ? ESCAPE '\\'))")
        params += [pat] * (len(cols) + 1)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def runs(db: DbArg = None, *, model: Optional[str] = None, arch: Optional[str] = None,
         source: Optional[str] = None, label: Optional[str] = None, status: Optional[str] = None,
         tag: Optional[str] = None, since: Any = None, until: Any = None, search: Optional[str] = None,
         sort: str = "started_at", descending: bool = True, limit: Optional[int] = 50, offset: int = 0,
         **unknown: Any) -> RunList:
    """Run summaries matching the filters, sorted and paginated.

    Filters: ``model`` (model name), ``arch``, ``source`` (kind like ``"rapl"`` or the
    full spec), ``label`` (measured / estimated / simulated), ``status`` (one or a list
    of running/completed/interrupted/failed), ``tag``,
    ``since``/``until`` (datetime, date, ISO string or Unix seconds; ``until`` exclusive),
    ``search`` (substring of name, model, source, tags, host, device, chip or the prompt text).
    ``sort`` is any of :data:`SORT_KEYS` (e.g. ``"j_per_token"``); runs lacking the
    figure come last.  ``limit=None`` returns all.
    """
    if unknown:
        _where(unknown)  # raises ValueError listing the valid filters
    if sort not in _schema.SORT_KEYS:
        raise ValueError(f"unknown sort key {sort!r}; valid: {', '.join(SORT_KEYS)}")
    if limit is not None and int(limit) < 0 or int(offset) < 0:
        raise ValueError("limit and offset must be >= 0")
    where, params = _where(dict(model=model, arch=arch, source=source, label=label, status=status, tag=tag,
                                since=since, until=until, search=search))
    col = _schema.SORT_KEYS[sort]
    order = "DESC" if descending else "ASC"
    sql = (f"SELECT * FROM runs{where} ORDER BY ({col} IS NULL), {col} {order}, id {order} "
           f"LIMIT ? OFFSET ?")
    params += [-1 if limit is None else int(limit), int(offset)]
    with _opened(db) as st:
        st.flush()
        rows = st.conn.execute(sql, params).fetchall()
        return RunList(_summary_from_row(r) for r in rows)


def count(db: DbArg = None, **filters: Any) -> int:
    """How many runs match ``filters`` (the filters of :func:`runs`)."""
    where, params = _where(filters)
    with _opened(db) as st:
        st.flush()
        return int(st.conn.execute(f"SELECT COUNT(*) FROM runs{where}", params).fetchone()[0])


def set_tags(run_id: int, tags: Sequence[str], db: DbArg = None) -> List[str]:
    """Replace a run's tags (KeyError if there is no such run); returns them, deduplicated in order.

    A tag is non-empty text of at most 64 characters without control characters."""
    clean: List[str] = []
    for t in tags:
        t = str(t).strip()
        if not t or len(t) > 64 or any(ord(c) < 32 for c in t):
            raise ValueError(f"a tag must be 1 to 64 printable characters, got {t!r}")
        if t not in clean:
            clean.append(t)
    with _opened(db) as st:
        st.flush()
        row = st._run_row(run_id)
        st._write_sql("UPDATE runs SET tags = ? WHERE id = ?", (_dumps(clean), int(row["id"])))
    return clean


def load(run_id: int, db: DbArg = None) -> RunData:
    """The run ``run_id`` with the same accessors as a live session (KeyError if unknown)."""
    with _opened(db) as st:
        return st.load(run_id)


def delete(run_id: int, db: DbArg = None) -> None:
    """Delete a run and all its rows (KeyError if unknown)."""
    with _opened(db) as st:
        st.flush()
        row = st._run_row(run_id)
        st._write_sql("DELETE FROM runs WHERE id = ?", (int(row["id"]),))


def cleanup(max_runs: Optional[int] = None, max_age_days: Optional[float] = None, dry_run: bool = True,
            vacuum: bool = True, db: DbArg = None) -> Dict[str, Any]:
    """Retention: delete runs beyond the newest ``max_runs`` and runs older than ``max_age_days``.

    Runs still ``running`` are never touched.  With ``dry_run=True`` (the default)
    nothing changes and the result says what would be deleted.  Returns
    ``{"dry_run", "run_ids", "runs": [{run_id, name, started_at, status, energy_j}], "kept",
    "vacuumed", "bytes_before", "bytes_after"}``.
    """
    if max_runs is not None and int(max_runs) < 0:
        raise ValueError("max_runs must be >= 0")
    if max_age_days is not None and float(max_age_days) < 0:
        raise ValueError("max_age_days must be >= 0")
    with _opened(db) as st:
        st.flush()
        rows = st.conn.execute(
            "SELECT id, name, started_at, status, energy_j FROM runs WHERE status != 'running' "
            "ORDER BY started_at DESC, id DESC").fetchall()
        doomed = []
        cutoff = None
        if max_age_days is not None:
            cutoff = _utc_iso(_dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(days=float(max_age_days)))
        for i, r in enumerate(rows):
            if (max_runs is not None and i >= int(max_runs)) or (cutoff is not None and r["started_at"] < cutoff):
                doomed.append(r)
        total = st.conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        size_before = _db_bytes(st.path)
        out = {
            "dry_run": bool(dry_run),
            "run_ids": [int(r["id"]) for r in doomed],
            "runs": [{"run_id": int(r["id"]), "name": r["name"], "started_at": r["started_at"],
                      "status": r["status"], "energy_j": _fnum(r["energy_j"])} for r in doomed],
            "kept": int(total) - len(doomed),
            "vacuumed": False,
            "bytes_before": size_before,
            "bytes_after": size_before,
        }
        if dry_run or not doomed:
            return out
        ids = out["run_ids"]
        st._write_sql("BEGIN IMMEDIATE")
        try:
            for k in range(0, len(ids), 500):
                chunk = ids[k:k + 500]
                st.conn.execute(f"DELETE FROM runs WHERE id IN ({', '.join('?' * len(chunk))})", chunk)
            st.conn.execute("COMMIT")
        except BaseException:
            st.conn.execute("ROLLBACK")
            raise
        if vacuum:
            st._write_sql("VACUUM")
            st.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            out["vacuumed"] = True
        out["bytes_after"] = _db_bytes(st.path)
        return out


def _db_bytes(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def _agg_stats(values: np.ndarray) -> Dict[str, float]:
    v = values[~np.isnan(values)]
    if len(v) == 0:
        return {"n": 0, "mean": float("nan"), "median": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"n": int(len(v)), "mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min()),
            "max": float(v.max())}


def stats(db: DbArg = None, **filters: Any) -> Dict[str, Any]:
    """Aggregate figures over the runs matching ``filters`` (same filters as :func:`runs`).

    Returns ``{"count", "j_per_token": {n, mean, median, min, max}, "energy_j" (total),
    "duration_s" (total), "input_tokens", "output_tokens", "by_model": {model: {...}},
    "by_source": {source: {...}}}`` where each group holds count, j_per_token stats and
    total energy_j.  Runs without a figure are left out of that figure's statistics.
    """
    where, params = _where(filters)
    with _opened(db) as st:
        st.flush()
        rows = st.conn.execute(
            f"SELECT model_name, COALESCE(source_kind, source) AS src, j_per_token, energy_j, duration_s, "
            f"input_tokens, output_tokens FROM runs{where}", params).fetchall()

    def col(i):
        return np.array([_fnum(r[i]) for r in rows], dtype=np.float64)

    jpt, e, d = col(2), col(3), col(4)

    def group(idx: int) -> Dict[str, Any]:
        keys = [r[idx] if r[idx] is not None else "(unknown)" for r in rows]
        out = {}
        for k in sorted(set(keys)):
            m = np.array([kk == k for kk in keys])
            out[k] = {"count": int(m.sum()), "j_per_token": _agg_stats(jpt[m]), "energy_j": float(np.nansum(e[m]))}
        return out

    return {
        "count": len(rows),
        "j_per_token": _agg_stats(jpt),
        "energy_j": float(np.nansum(e)),
        "duration_s": float(np.nansum(d)),
        "input_tokens": int(sum(r[5] or 0 for r in rows)),
        "output_tokens": int(sum(r[6] or 0 for r in rows)),
        "by_model": group(0),
        "by_source": group(1),
    }


# ---------------------------------------------------------------------------------
# export / import
# ---------------------------------------------------------------------------------
def _array_to_columns(arr: np.ndarray) -> Dict[str, list]:
    return {f: _jsonable(arr[f].tolist()) for f in arr.dtype.names}


def _array_from_columns(name: str, cols: Dict[str, list]) -> np.ndarray:
    dt = _default_dtype(name)
    if name == "texts":
        dt = text_dtype(max((len(str(t)) for t in cols.get("text") or []), default=1))
    n = len(next(iter(cols.values()))) if cols else 0
    out = np.zeros(n, dtype=dt)
    for f in dt.names:
        if f not in cols:
            if dt.fields[f][0].kind == "f":
                out[f] = np.nan
            continue
        v = cols[f]
        if len(v) != n:
            raise ValueError(f"{name}.{f}: {len(v)} values, expected {n}")
        if dt.fields[f][0].kind == "f":
            out[f] = np.array([_fnum(x) for x in v], dtype=np.float64)
        else:
            out[f] = v
    if "flags" in dt.names and "flags" not in cols and "resolved" in cols:
        # an export from before rows kept their flags: unresolved is the one flag it knew
        out["flags"] = np.where(out["resolved"], 0, _schema._FLAG_UNRESOLVED)
    return out


def _flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(_jsonable(v))
        else:
            out[key] = v
    return out


def export(run_id: Union[int, RunData], path: PathLike, format: str = "json", db: DbArg = None) -> str:
    """Write a run to ``path``; returns the path written.

    - ``json``: one file with the whole nested run (summary + every array as columns;
      NaN as null), which :func:`import_run` reads back to an identical run.
    - ``csv``: a directory with ``run.csv`` (the flattened summary, one row) and one
      ``<array>.csv`` per array (samples, sections, tokens, layers, components, ops, heads, texts).
    - ``parquet``: a directory with one ``<array>.parquet`` per array plus ``run.json``;
      needs pyarrow.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; valid: {', '.join(EXPORT_FORMATS)}")
    if format == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ImportError("export(format='parquet') needs pyarrow: pip install pyarrow "
                              "(or use format='json' or 'csv')") from exc
    run = run_id if isinstance(run_id, RunData) else load(run_id, db=db)
    path = os.fspath(path)
    summary = run.summary()
    if format == "json":
        doc = {
            "format": EXPORT_FORMAT_TAG,
            "format_version": 1,
            "schema_version": _schema.SCHEMA_VERSION,
            "summary": _encode_summary(summary),
            "arrays": {name: {"n": int(len(run.array(name))), "columns": _array_to_columns(run.array(name))}
                       for name in ARRAY_NAMES},
        }
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, allow_nan=False)
        return path
    os.makedirs(path, exist_ok=True)
    if format == "csv":
        flat = _flatten(_jsonable(summary))
        with open(os.path.join(path, "run.csv"), "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(list(flat))
            w.writerow([_csv_cell(v) for v in flat.values()])
        for name in ARRAY_NAMES:
            arr = run.array(name)
            with open(os.path.join(path, f"{name}.csv"), "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(list(arr.dtype.names))
                for rec in arr.tolist():
                    w.writerow([_csv_cell(v) for v in rec])
        return path
    # parquet
    with open(os.path.join(path, "run.json"), "w", encoding="utf-8") as fh:
        json.dump(_jsonable(summary), fh, allow_nan=False)
    for name in ARRAY_NAMES:
        arr = run.array(name)
        table = pa.table({f: np.ascontiguousarray(arr[f]) for f in arr.dtype.names})
        pq.write_table(table, os.path.join(path, f"{name}.parquet"))
    return path


def _csv_cell(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)  # round-trips exactly ('nan', 'inf' included)
    if isinstance(v, bool):
        return int(v)
    return "" if v is None else v


def import_run(path: PathLike, db: DbArg = None) -> int:
    """Import a JSON export (:func:`export` with format="json") as a new run; returns its id."""
    path = os.fspath(path)
    try:
        with open(path, "r", encoding="utf-8") as fh:
            doc = json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not an energyprof JSON export: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT_TAG:
        raise ValueError(f"{path} is not an energyprof JSON export (no \"format\": \"{EXPORT_FORMAT_TAG}\")")
    summary = _decode_summary(dict(doc.get("summary") or {}))
    arrays = {}
    for name in ARRAY_NAMES:
        entry = (doc.get("arrays") or {}).get(name)
        if entry:
            arrays[name] = _array_from_columns(name, entry.get("columns") or {})
    run = RunData(summary, **arrays)
    with _opened(db) as st:
        return st.save(run, status=summary.get("status") or "completed")


__all__ = ["Store", "RunList", "default_path", "runs", "count", "set_tags", "load", "delete", "cleanup", "stats",
           "export", "import_run", "SORT_KEYS", "FILTERS", "LABELS", "STATUSES", "EXPORT_FORMATS"]
