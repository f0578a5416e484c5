"""Boundary reads: what a counter read at a forward's edges can and cannot resolve.

With ``ep.run(..., boundary_reads=True)`` (the default where the source supports it) the C
hook of the top-level forward reads the source at the forward's start and end, so the
phases and decode steps begin and end on readings.  But a reading is only as fresh as the
counter behind it: a counter that advances every 100 ms reads the same value twice inside
one 20 ms token.  :func:`counter_update_period_s` measures that from the run's own
readings, and :func:`judge_resolved` withdraws ``resolved`` from the rows shorter than it.

>>> import numpy as np
>>> from energyprof import _core
>>> x = np.zeros(3, dtype=np.dtype(_core.SAMPLE_DTYPE))
>>> x["t_start_ns"], x["t_end_ns"] = [0, 10_000_000, 12_000_000], [10_000_000, 12_000_000, 30_000_000]
>>> x["kind"] = 1
>>> for d in ("cpu_w", "gpu_w", "ane_w", "dram_w"): x[d] = np.nan
>>> x["package_w"] = [5.0, 0.0, 7.0]      # the 2 ms reading did not move
>>> counter_update_period_s(x)
0.002
"""
from __future__ import annotations

import numpy as np

from .. import _core
from .._dtypes import FLAG_UNRESOLVED, measured_domains, total_of

__all__ = ["counter_update_period_s", "judge_resolved", "edge_bound_j"]

_W = ("cpu_w", "gpu_w", "ane_w", "dram_w", "package_w")


def counter_update_period_s(samples: np.ndarray) -> float:
    """A lower bound on how often the counter behind interval ``samples`` advances, from the
    readings themselves: the longest stretch of consecutive readings over which no measured
    domain moved (zero energy everywhere: the counter was read several times between two of
    its updates).  0.0 when every reading moved (it updates faster than it was read)."""
    if len(samples) == 0:
        return 0.0
    # A reading is stale when every measured domain (one not NaN throughout) reads exactly
    # zero there (NaN counts as a move).  Column by column, on the fields' own views: a
    # counter that moved at every reading is seen after the first measured domain.
    stale = None
    for c in _W:
        col = samples[c]
        if np.isnan(col).all():
            continue
        zero = col == 0.0
        stale = zero if stale is None else stale & zero
        if not stale.any():
            return 0.0
    if stale is None:
        return 0.0
    dt = (samples["t_end_ns"] - samples["t_start_ns"]).astype(np.float64) * 1e-9
    # Sum dt over each run of consecutive stale readings: cumulative sums reset at moves.
    c = np.cumsum(np.where(stale, dt, 0.0))
    last_move = np.maximum.accumulate(np.where(~stale, np.arange(len(dt)), -1))
    base = np.where(last_move >= 0, c[np.maximum(last_move, 0)], 0.0)
    return float(np.max(np.where(stale, c - base, 0.0)))


def judge_resolved(rows: np.ndarray, update_period_s: float) -> int:
    """Rows shorter than the counter's update period are not resolved, however many
    readings lie inside them: clear ``resolved`` and set ``FLAG_UNRESOLVED`` in place.
    Returns how many rows changed."""
    if len(rows) == 0 or not update_period_s > 0:
        return 0
    dur_s = (rows["t_end_ns"] - rows["t_start_ns"]).astype(np.float64) * 1e-9
    hit = rows["resolved"] & (dur_s < update_period_s)
    rows["resolved"][hit] = False
    rows["flags"][hit] |= FLAG_UNRESOLVED
    return int(hit.sum())


def edge_bound_j(rows: np.ndarray, samples: np.ndarray, update_period_s: float) -> np.ndarray:
    """How far a resolved row's energy can be off because each of its two edge readings is
    stale by up to one counter update: update_period_s x (power at the start edge + power at
    the end edge), the power at an edge being the highest total sampled power among the
    samples that overlap the update before it.  NaN for unresolved rows (their figure is a
    time share, not bounded by this); 0 where the counter updates faster than it is read.
    An edge that lies on a synchronised reading (flag ``SFLAG_SYNCED``: taken as the counter
    was seen to move, ``ep.run(boundary_reads="sync")``) adds nothing: it is as fresh as one
    counter read.

    The power is what the samples measured around the edge, and update_period_s is the
    run's measured lower bound on the counter's update period, so the bound is an estimate
    of the worst case, not a guarantee.

    >>> import numpy as np
    >>> from energyprof import _core
    >>> x = np.zeros(2, dtype=np.dtype(_core.SAMPLE_DTYPE))
    >>> x["t_start_ns"], x["t_end_ns"], x["kind"] = [0, 10_000_000], [10_000_000, 20_000_000], 1
    >>> for d in ("cpu_w", "gpu_w", "ane_w", "dram_w"): x[d] = np.nan
    >>> x["package_w"] = [10.0, 40.0]
    >>> r = np.zeros(1, dtype=[("t_start_ns", "<i8"), ("t_end_ns", "<i8"), ("resolved", "?")])
    >>> r["t_start_ns"], r["t_end_ns"], r["resolved"] = 5_000_000, 15_000_000, True
    >>> edge_bound_j(r, x, 0.001)      # 1 ms x (10 W + 40 W)
    array([0.05])
    """
    out = np.full(len(rows), np.nan)
    if len(rows) == 0:
        return out
    ok = np.asarray(rows["resolved"], dtype=bool)
    if not update_period_s > 0 or len(samples) == 0:
        out[ok] = 0.0
        return out
    measured = measured_domains(samples)
    pw = np.stack([np.asarray(samples[c], dtype=np.float64) for c in _W], axis=1)
    total_w = np.nan_to_num(total_of(pw, measured), nan=0.0)
    u_ns = int(update_period_s * 1e9)
    ends = samples["t_end_ns"]
    starts = samples["t_start_ns"]

    def edge_w(t: np.ndarray) -> np.ndarray:
        # Samples overlapping [t - u, t]: from the first ending after t - u to the last starting before t.
        n = len(total_w)
        lo = np.minimum(np.searchsorted(ends, t - u_ns, side="right"), n - 1)
        hi = np.clip(np.searchsorted(starts, t, side="left"), lo + 1, n)
        # max over total_w[lo:hi] per edge: reduceat over the pairs, every other result.
        pairs = np.stack([lo, hi], axis=1).ravel()
        w = np.maximum.reduceat(np.append(total_w, 0.0), pairs)[::2]
        return w

    # An edge on a synchronised reading (boundary_reads="sync": taken as the counter was seen
    # to move) is as fresh as one counter read: no staleness there.
    synced_ends = ends[(np.asarray(samples["flags"]) & _core.SFLAG_SYNCED) != 0]

    def fresh(t: np.ndarray) -> np.ndarray:
        return np.isin(t, synced_ends)

    a = np.asarray(rows["t_start_ns"][ok], dtype=np.int64)
    b = np.asarray(rows["t_end_ns"][ok], dtype=np.int64)
    out[ok] = update_period_s * (np.where(fresh(a), 0.0, edge_w(a)) + np.where(fresh(b), 0.0, edge_w(b)))
    return out
