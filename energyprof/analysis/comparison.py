"""Two to ten runs side by side: every figure, phase, domain, layer and component with each run's
value, the best and worst run, the spread and the standard deviation (and, for two runs, their
difference); or two groups of runs compared on one figure
(:func:`energyprof.analysis.compare_groups`)."""
from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Sequence, Union

import numpy as np

from ..store.db import _PHASE_FLOAT_KEYS, _PHASE_ORDER, DbArg, _fnum, _opened
from ..store.rundata import RunData
from .efficiency import compare_groups

__all__ = ["compare", "BETTER", "MAX_RUNS"]


_COMPARE_FIGURES = ("duration_s", "energy_j", "net_energy_j", "baseline_power_w", "peak_power_w", "j_per_token",
                    "j_per_output_token", "tokens_per_j", "edp_js", "input_tokens", "output_tokens",
                    "unattributed_j")


def _pair(a: Any, b: Any) -> Dict[str, float]:
    fa, fb = _fnum(a), _fnum(b)
    diff = fb - fa
    rel = diff / fa if (fa != 0 and not math.isnan(fa)) else float("nan")
    return {"a": fa, "b": fb, "diff": diff, "rel_diff": rel}


#: Which way is better for each figure (-1: lower, +1: higher, 0: neither, e.g. token counts).
BETTER: Dict[str, int] = {
    "duration_s": -1, "energy_j": -1, "net_energy_j": -1, "baseline_power_w": -1, "peak_power_w": -1,
    "j_per_token": -1, "j_per_output_token": -1, "tokens_per_j": 1, "edp_js": -1, "input_tokens": 0,
    "output_tokens": 0, "unattributed_j": 0,
}
MAX_RUNS = 10


def _stats(values: Sequence[Any], ids: Sequence[Any], better: int) -> Dict[str, Any]:
    """Each run's value, the best and worst run (None where no direction applies), the spread
    (max / min, NaN unless both are positive) and the sample standard deviation."""
    v = np.array([_fnum(x) for x in values], dtype=np.float64)
    ok = np.isfinite(v)
    out: Dict[str, Any] = {"values": v.tolist(), "best": None, "worst": None, "min": float("nan"),
                           "max": float("nan"), "mean": float("nan"), "spread": float("nan"),
                           "std": float("nan"), "n": int(ok.sum())}
    if not ok.any():
        return out
    lo, hi = float(v[ok].min()), float(v[ok].max())
    out.update(min=lo, max=hi, mean=float(v[ok].mean()))
    out["spread"] = hi / lo if lo > 0 else float("nan")
    out["std"] = float(v[ok].std(ddof=1)) if ok.sum() > 1 else float("nan")
    if better:
        idx = np.flatnonzero(ok)
        b = idx[np.argmin(v[ok])] if better < 0 else idx[np.argmax(v[ok])]
        w = idx[np.argmax(v[ok])] if better < 0 else idx[np.argmin(v[ok])]
        out["best"] = {"run_id": ids[b], "index": int(b), "value": float(v[b])}
        out["worst"] = {"run_id": ids[w], "index": int(w), "value": float(v[w])}
    return out


def _load_all(runs: Sequence[Any], db: DbArg) -> List[RunData]:
    for r in runs:
        if not isinstance(r, (RunData, int, np.integer)) or isinstance(r, bool):
            raise TypeError(f"compare: a run is a run id (int) or a RunData/session, got {type(r).__name__} "
                            f"({r!r}); pass the database as db=...")
    if all(isinstance(r, RunData) for r in runs):
        return list(runs)
    with _opened(db) as st:
        return [r if isinstance(r, RunData) else st.load(int(r)) for r in runs]


def compare(*runs: Union[int, RunData, Sequence[Any]], db: DbArg = None,
            figure: str = "j_per_output_token") -> Dict[str, Any]:
    """Two to ten runs (ids or RunData) side by side: every figure, phase, domain, layer and
    component.

    For every figure (``figures``), per phase (``phases``) and domain (``domains``): ``{"values"
    (one per run, in the order given), "best", "worst" ({run_id, index, value}; None where no
    direction applies, e.g. token counts), "min", "max", "mean", "spread" (max / min), "std"
    (sample standard deviation), "n"}``.  ``layers`` / ``components`` hold the same for
    ``energy_j``, ``mean_energy_j``, ``duration_s``, ``n_calls`` and ``share`` per layer (and
    component); a layer missing from a run is NaN there.  Also ``run_ids``, ``labels``
    (source labels) and ``warnings`` (a RuntimeWarning is raised too when the runs' source
    labels differ: a measurement beside an estimate or a simulation).

    With exactly two runs every entry also keeps the two-run keys ``{"a", "b", "diff" (b - a),
    "rel_diff" ((b - a) / a)}`` and the result ``a_run_id``/``b_run_id``, as before.

    Given two *lists* of runs (e.g. float32 runs vs bfloat16 runs), it compares the groups
    instead: :func:`energyprof.analysis.compare_groups` (difference of ``figure``, default J
    per output token, with its Welch 95% interval).
    """
    if any(isinstance(r, (list, tuple)) for r in runs):
        if len(runs) != 2 or not all(isinstance(r, (list, tuple)) for r in runs):
            raise ValueError("compare(a, b): give runs, or two lists of runs to compare as groups")
        return compare_groups(list(runs[0]), list(runs[1]), figure=figure, db=db)
    if not 2 <= len(runs) <= MAX_RUNS:
        raise ValueError(f"compare takes 2 to {MAX_RUNS} runs, got {len(runs)}")
    rs = _load_all(runs, db)
    ss = [r.summary() for r in rs]
    ids = [s.get("run_id") for s in ss]
    two = len(rs) == 2
    out: Dict[str, Any] = {"run_ids": ids, "n_runs": len(rs)}
    if two:
        out["a_run_id"], out["b_run_id"] = ids

    def entry(values: Sequence[Any], better: int) -> Dict[str, Any]:
        e = _stats(values, ids, better)
        if two:
            e.update(_pair(values[0], values[1]))
        return e

    out["figures"] = {k: entry([s.get(k) for s in ss], BETTER.get(k, 0)) for k in _COMPARE_FIGURES}
    phs = [s.get("phases") or {} for s in ss]
    names = set().union(*phs)
    out["phases"] = {}
    for ph in [p for p in _PHASE_ORDER if p in names] + sorted(names - set(_PHASE_ORDER)):
        out["phases"][ph] = {k: entry([(p.get(ph) or {}).get(k) for p in phs], -1 if k != "tokens" else 0)
                             for k in _PHASE_FLOAT_KEYS + ("tokens",)}
    doms = [s.get("domains") or {} for s in ss]
    out["domains"] = {d: entry([x.get(d) for x in doms], -1) for d in sorted(set().union(*doms))}

    def side_by_side(aggs: List[np.ndarray], with_component: bool) -> List[Dict[str, Any]]:
        def key(r):
            return (int(r["layer"]), str(r["component"])) if with_component else (int(r["layer"]),)

        maps = [{key(r): r for r in a} for a in aggs]
        rows = []
        for k in sorted(set().union(*maps)):
            r: Dict[str, Any] = {"layer": k[0]}
            if with_component:
                r["component"] = k[1]
            for f in ("energy_j", "mean_energy_j", "duration_s", "n_calls", "share"):
                r[f] = entry([m[k][f] if k in m else None for m in maps], -1 if f != "n_calls" else 0)
            rows.append(r)
        return rows

    out["layers"] = side_by_side([r.layer_summary() for r in rs], False)
    out["components"] = side_by_side([r.component_summary() for r in rs], True)
    labels = [str(s.get("source_label") or "unknown") for s in ss]
    out["labels"] = labels
    out["warnings"] = []
    if len(set(labels)) > 1:
        msg = ("compare: the runs' sources are labelled differently (" + ", ".join(
            f"run {i}: {lab}" for i, lab in zip(ids, labels)) + "): a measurement is being compared with "
            "an estimate or a simulation")
        out["warnings"].append(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return out
