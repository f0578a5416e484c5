"""Downsampling levels of a run's power samples: min, max and mean power per bucket.

A one-hour run at 1 kHz has 3.6 million samples; a plot can show a few thousand
points.  When a run is saved, :func:`compute` folds its samples into *levels*: level
``k`` has one row per bucket of ``16**k`` consecutive samples with, for each domain
and for the run's total (the rule of :func:`energyprof._dtypes.total_of`), the smallest and the
largest sample power and the mean power weighted by the samples' durations (interval
samples; instantaneous ones weigh one each), so a level keeps the energy of its
samples exactly.  Levels with fewer than :data:`MIN_BUCKETS` buckets are not kept.

:func:`read_downsampled` answers "at most N points of this run" from the finest
source (the raw samples or a level) that has at most ``max(2 * N, READ_ROWS)`` rows,
folded once more to N buckets.  Runs saved before schema version 4, and runs still
being written, have no levels: their raw samples are read and folded.

>>> import numpy as np
>>> from energyprof import _core
>>> s = np.zeros(4, _core.SAMPLE_DTYPE)
>>> s["t_start_ns"], s["t_end_ns"] = [0, 1, 2, 4], [1, 2, 4, 5]
>>> s["kind"] = _core.KIND_INTERVAL
>>> for d in _core.DOMAINS: s[f"{d}_w"] = np.nan
>>> s["cpu_w"] = [1.0, 3.0, 2.0, 8.0]
>>> b = fold(from_samples(s), 2)
>>> b["cpu_mean_w"].tolist(), b["cpu_min_w"].tolist(), b["cpu_max_w"].tolist()
([2.0, 4.0], [1.0, 2.0], [3.0, 8.0])
"""
from __future__ import annotations

import math
import sqlite3
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .._dtypes import DOMAINS, total_columns
from . import schema as _schema

#: Samples per bucket grow by this factor from one level to the next (level k: 16**k).
LEVEL_FACTOR = 16
#: A level is kept only when it has at least this many buckets.
MIN_BUCKETS = 64
#: Level-1 buckets computed at a time from the raw samples (compute): 4,096 x 16 samples.
LEVEL_PIECE_BUCKETS = 4096
#: A read takes the finest source with at most max(2 * max_points, READ_ROWS) rows.
READ_ROWS = 16384
#: The most points :func:`read_downsampled` returns.
MAX_POINTS = 50_000

#: The series of a level row: each domain and the run's total.
SERIES = DOMAINS + ("total",)
_STATS = _schema._LEVEL_STATS

#: One row per (level, bucket): the columns of table sample_levels (without run_id).
LEVEL_DTYPE = np.dtype([(c, "<i8" if t.startswith("INTEGER") else "<f8")
                        for c, t in _schema.TABLE_COLUMNS["sample_levels"]])


def from_samples(samples: np.ndarray) -> np.ndarray:
    """Level 0: one row per sample (min = max = mean = its power; weight = its duration
    in ns for interval samples, 1 for instantaneous ones, 0 where the power is NaN)."""
    out = np.zeros(len(samples), dtype=LEVEL_DTYPE)
    if len(samples) == 0:
        return out
    for name, v in _series_of_samples(samples).items():
        out[name] = v
    out["bucket"] = np.arange(len(samples))
    return out


def _fold_groups(rows: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Fold consecutive ``rows`` with the same (non-decreasing) ``group`` index into one row each."""
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    inverse = np.cumsum(np.r_[False, group[1:] != group[:-1]])
    g = len(starts)
    out = np.zeros(g, dtype=LEVEL_DTYPE)
    out["bucket"] = np.arange(g)
    out["t_start_ns"] = np.minimum.reduceat(rows["t_start_ns"], starts)
    out["t_end_ns"] = np.maximum.reduceat(rows["t_end_ns"], starts)
    out["n"] = np.add.reduceat(rows["n"], starts)
    for name in SERIES:
        mean, wt = rows[f"{name}_mean_w"], rows[f"{name}_wt"]
        ok = (wt > 0) & ~np.isnan(mean)
        w = np.bincount(inverse, weights=np.where(ok, wt, 0.0), minlength=g)
        s = np.bincount(inverse, weights=np.where(ok, mean * wt, 0.0), minlength=g)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"{name}_mean_w"] = np.where(w > 0, s / w, np.nan)
        out[f"{name}_wt"] = w
        with np.errstate(invalid="ignore"):
            out[f"{name}_min_w"] = np.fmin.reduceat(rows[f"{name}_min_w"], starts)
            out[f"{name}_max_w"] = np.fmax.reduceat(rows[f"{name}_max_w"], starts)
    return out


def fold(rows: np.ndarray, max_points: int) -> np.ndarray:
    """``rows`` (LEVEL_DTYPE, in time order) folded into at most ``max_points`` buckets
    of consecutive rows (as equal in count as they can be)."""
    m = len(rows)
    if m <= max_points:
        return rows.copy()
    group = (np.arange(m, dtype=np.int64) * int(max_points)) // m
    return _fold_groups(rows, group)


def _series_of_samples(samples: np.ndarray, measured: Optional[List[bool]] = None,
                       timed: Optional[bool] = None) -> Dict[str, np.ndarray]:
    """Level 0 as contiguous columns (see :func:`from_samples`).  ``measured`` (per domain:
    not NaN throughout) and ``timed`` (some sample lasts): those of the whole run when
    ``samples`` is a piece of it, else read from ``samples``."""
    n = len(samples)
    dt = (samples["t_end_ns"] - samples["t_start_ns"]).astype(np.float64)
    if timed is None:
        timed = bool(np.any(dt > 0))
    weight = dt if timed else np.ones(n)
    cols: Dict[str, np.ndarray] = {"t_start_ns": np.ascontiguousarray(samples["t_start_ns"], dtype=np.int64),
                                   "t_end_ns": np.ascontiguousarray(samples["t_end_ns"], dtype=np.int64),
                                   "n": np.ones(n, dtype=np.int64)}
    power = {d: np.ascontiguousarray(samples[f"{d}_w"], dtype=np.float64) for d in DOMAINS}
    nan = {d: np.isnan(p) for d, p in power.items()}
    if measured is None:
        measured = [not bool(m.all()) for m in nan.values()]
    # the total under the run's rule (energyprof._dtypes.total_of), from the columns already copied
    parts = [DOMAINS[i] for i in total_columns(measured)]
    if not parts:
        total = np.full(n, np.nan)
    elif len(parts) == 1:
        total = power[parts[0]]
    else:
        total = np.zeros(n)
        for d in parts:
            total += np.where(nan[d], 0.0, power[d])
        total[np.logical_and.reduce([nan[d] for d in parts])] = np.nan
    power["total"] = total
    nan["total"] = np.isnan(total)
    for name in SERIES:
        p = power[name]
        cols[f"{name}_mean_w"] = cols[f"{name}_min_w"] = cols[f"{name}_max_w"] = p
        cols[f"{name}_wt"] = np.where(nan[name], 0.0, weight) if nan[name].any() else weight
    return cols


def _fold_by(cols: Dict[str, np.ndarray], k: int) -> Dict[str, np.ndarray]:
    """Every ``k`` consecutive rows of ``cols`` folded into one (the last bucket may be short)."""
    m = len(cols["n"])
    g = -(-m // k)
    pad = g * k - m

    def blocks(a: np.ndarray, fill: float) -> np.ndarray:
        if pad:
            a = np.concatenate([a, np.full(pad, fill, dtype=a.dtype)])
        return a.reshape(g, k)

    last = np.minimum((np.arange(g) + 1) * k, m) - 1
    out = {"t_start_ns": cols["t_start_ns"][::k].copy(), "t_end_ns": cols["t_end_ns"][last],
           "n": blocks(cols["n"], 0).sum(axis=1)}
    for name in SERIES:
        mean, wt = cols[f"{name}_mean_w"], cols[f"{name}_wt"]
        ok = (wt > 0) & ~np.isnan(mean)
        w = blocks(np.where(ok, wt, 0.0), 0.0).sum(axis=1)
        tot = blocks(np.where(ok, mean * wt, 0.0), 0.0).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"{name}_mean_w"] = np.where(w > 0, tot / w, np.nan)
        out[f"{name}_wt"] = w
        out[f"{name}_min_w"] = np.fmin.reduce(blocks(cols[f"{name}_min_w"], np.nan), axis=1)
        out[f"{name}_max_w"] = np.fmax.reduce(blocks(cols[f"{name}_max_w"], np.nan), axis=1)
    return out


def compute(samples: np.ndarray) -> np.ndarray:
    """Every kept level of ``samples`` (sorted by time), as one LEVEL_DTYPE array."""
    n = len(samples)
    if math.ceil(n / LEVEL_FACTOR) < MIN_BUCKETS:
        return np.zeros(0, dtype=LEVEL_DTYPE)
    # Level 1 from the samples a piece at a time (pieces of whole buckets, with the run's own
    # measured domains and timing: the same buckets as from all at once), so a long run's
    # level-0 columns are never built whole; the levels above fold level 1.
    measured = [not bool(np.isnan(samples[f"{d}_w"]).all()) for d in DOMAINS]
    timed = bool(np.any(samples["t_end_ns"] > samples["t_start_ns"]))
    step = LEVEL_FACTOR * LEVEL_PIECE_BUCKETS
    parts = [_fold_by(_series_of_samples(samples[i:i + step], measured, timed), LEVEL_FACTOR)
             for i in range(0, n, step)]
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if len(parts) > 1 else parts[0]
    out: List[np.ndarray] = []
    level, per = 0, 1
    while True:
        level += 1
        per *= LEVEL_FACTOR
        if math.ceil(n / per) < MIN_BUCKETS:
            break
        # level k from level k-1: every 16 rows of the previous level make one bucket
        if level > 1:
            cols = _fold_by(cols, LEVEL_FACTOR)
        rows = np.zeros(len(cols["n"]), dtype=LEVEL_DTYPE)
        for name, v in cols.items():
            rows[name] = v
        rows["level"] = level
        rows["bucket"] = np.arange(len(rows))
        out.append(rows)
    return np.concatenate(out)


def compute_per_rank(samples: np.ndarray) -> np.ndarray:
    """:func:`compute` of each rank's own samples (a multi-rank run interleaves the ranks'
    streams: each one is folded alone, in its own time order), with ``rank`` set; samples
    without a ``rank`` field are rank 0's."""
    names = samples.dtype.names or ()
    if "rank" not in names:
        return compute(samples)
    out = []
    for r in np.unique(samples["rank"]):
        mine = samples[samples["rank"] == r]
        rows = compute(mine[np.argsort(mine["t_start_ns"], kind="stable")])
        rows["rank"] = int(r)
        out.append(rows)
    return np.concatenate(out) if out else np.zeros(0, dtype=LEVEL_DTYPE)


def as_samples(rows: np.ndarray, sample_dtype: np.dtype) -> np.ndarray:
    """Bucket rows as samples (``sample_dtype``) with each domain's mean power: interval
    samples over each bucket's time span (instantaneous where every bucket is one
    instant), so the views that draw samples draw the downsampled run the same way."""
    from .. import _core

    out = np.zeros(len(rows), dtype=sample_dtype)
    out["t_start_ns"] = rows["t_start_ns"]
    out["t_end_ns"] = rows["t_end_ns"]
    interval = bool(np.any(rows["t_end_ns"] > rows["t_start_ns"]))
    out["kind"] = int(_core.KIND_INTERVAL if interval else _core.KIND_INSTANT)
    for d in DOMAINS:
        out[f"{d}_w"] = rows[f"{d}_mean_w"]
    return out


_LEVEL_SELECT = ", ".join(f'"{c}"' for c in LEVEL_DTYPE.names)
# the stored sample row (energyprof.store.rundata.sample_row_dtype): SAMPLE_DTYPE's fields, then rank
_RAW_SELECT = "t_start_ns, t_end_ns, kind, flags, " + ", ".join(f"{d}_w" for d in DOMAINS) + ', "rank"'


def _read_level(conn: sqlite3.Connection, run_id: int, level: int) -> np.ndarray:
    # in time order; a multi-rank run's ranks interleaved in time, as its raw samples are read
    cur = conn.execute(f"SELECT {_LEVEL_SELECT} FROM sample_levels WHERE run_id = ? AND level = ? "
                       f"ORDER BY t_start_ns, \"rank\", bucket", (int(run_id), int(level)))
    cur.row_factory = None
    rows = cur.fetchall()
    return np.array(rows, dtype=LEVEL_DTYPE) if rows else np.zeros(0, LEVEL_DTYPE)


def _read_raw(conn: sqlite3.Connection, run_id: int, sample_dtype: np.dtype) -> np.ndarray:
    cur = conn.execute(f"SELECT {_RAW_SELECT} FROM power_samples WHERE run_id = ? ORDER BY t_start_ns",
                       (int(run_id),))
    cur.row_factory = None
    rows = cur.fetchall()
    if not rows:
        return np.zeros(0, dtype=sample_dtype)
    return np.array(rows, dtype=sample_dtype)  # NULL (a NaN power) becomes NaN


def levels_of(conn: sqlite3.Connection, run_id: int) -> List[Tuple[int, int, int]]:
    """(level, rows, samples) of each stored level of a run, finest first."""
    cur = conn.execute("SELECT level, COUNT(*), SUM(n) FROM sample_levels WHERE run_id = ? GROUP BY level "
                       "ORDER BY level", (int(run_id),))
    return [(int(a), int(b), int(c)) for a, b, c in cur.fetchall()]


def read_downsampled(conn: sqlite3.Connection, run_id: int, max_points: int,
                     sample_dtype: np.dtype) -> Dict[str, Any]:
    """At most ``max_points`` buckets of run ``run_id``'s samples.

    Returns ``{"rows": LEVEL_DTYPE array, "n_samples", "source": "raw" | "level k",
    "samples_per_level_row", "rows_read"}``.  ``max_points`` must be in 1..MAX_POINTS.
    """
    mp = int(max_points)
    if not 1 <= mp <= MAX_POINTS:
        raise ValueError(f"max_points must be between 1 and {MAX_POINTS}, got {max_points!r}")
    budget = max(2 * mp, READ_ROWS)
    levels = levels_of(conn, run_id)
    if levels:
        n_samples = levels[0][2]
    else:
        n_samples = int(conn.execute("SELECT COUNT(*) FROM power_samples WHERE run_id = ?",
                                     (int(run_id),)).fetchone()[0])
    if n_samples <= budget or not levels:
        rows = from_samples(_read_raw(conn, run_id, sample_dtype))
        n_samples = len(rows)
        source, per = "raw", 1
    else:
        fit = [lv for lv in levels if lv[1] <= budget]
        level = fit[0][0] if fit else levels[-1][0]
        rows = _read_level(conn, run_id, level)
        source, per = f"level {level}", LEVEL_FACTOR ** level
    read = len(rows)
    return {"rows": fold(rows, mp), "n_samples": int(n_samples), "source": source,
            "samples_per_level_row": per, "rows_read": read}


__all__ = ["LEVEL_DTYPE", "LEVEL_FACTOR", "MIN_BUCKETS", "READ_ROWS", "MAX_POINTS", "SERIES", "from_samples", "fold",
           "compute", "compute_per_rank", "read_downsampled", "levels_of", "as_samples"]
