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

from .._dtypes import FLAG_UNRESOLVED

__all__ = ["counter_update_period_s", "judge_resolved"]

_W = ("cpu_w", "gpu_w", "ane_w", "dram_w", "package_w")


def counter_update_period_s(samples: np.ndarray) -> float:
    """A lower bound on how often the counter behind interval ``samples`` advances, from the
    readings themselves: the longest stretch of consecutive readings over which no measured
    domain moved (zero energy everywhere: the counter was read several times between two of
    its updates).  0.0 when every reading moved (it updates faster than it was read)."""
    if len(samples) == 0:
        return 0.0
    p = np.stack([np.asarray(samples[c], dtype=np.float64) for c in _W], axis=1)
    measured = ~np.all(np.isnan(p), axis=0)
    if not measured.any():
        return 0.0
    pm = p[:, measured]
    stale = np.all(np.nan_to_num(pm, nan=1.0) == 0.0, axis=1)
    if not stale.any():
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
