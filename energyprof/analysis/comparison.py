"""Two to ten runs side by side: every figure, phase, domain, layer and component with each
run's value, the best and worst run, the spread (max / min) and σ, and for two runs their
difference; or two groups of runs compared on one figure
(:func:`energyprof.analysis.compare_groups`).  The per-figure statistics are those of
:func:`energyprof.analysis.multi.compare_runs` (one implementation for ``ep.compare``, the
CLI's ``compare`` and the dashboard's ``/compare``)."""
from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from ..store.db import _PHASE_FLOAT_KEYS, _PHASE_ORDER, DbArg, _fnum, _opened
from ..store.rundata import RunData
from .efficiency import compare_groups
from .multi import MAX_RUNS, MIN_RUNS, MULTI_FIGURES, compare_runs, figure_stats

__all__ = ["compare", "COMPARE_FIGURES", "MAX_RUNS"]

#: The figures ``ep.compare`` covers: those of compare_runs and the energy no child covers.
COMPARE_FIGURES = MULTI_FIGURES + ("unattributed_j",)


def _pair(a: Any, b: Any) -> Dict[str, float]:
    fa, fb = _fnum(a), _fnum(b)
    diff = fb - fa
    rel = diff / fa if (fa != 0 and not math.isnan(fa)) else float("nan")
    return {"a": fa, "b": fb, "diff": diff, "rel_diff": rel}


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

    The result is :func:`energyprof.analysis.multi.compare_runs`'s (``run_ids``, ``names``,
    ``labels``, ``sources``, ``warnings``, ``resolution``, ``uncertainty`` and ``figures``
    over :data:`COMPARE_FIGURES`) plus ``phases`` (``{phase: {figure: entry}}``), ``domains``
    (``{domain: entry}``), ``layers`` and ``components`` (``[{"layer"[, "component"],
    "energy_j", "mean_energy_j", "duration_s", "n_calls", "share": entry}]``; a layer missing
    from a run is NaN there).  Every entry is ``{"values" (one per run, in the order given),
    "best", "worst" (run indices; None where no direction applies or all runs agree), "min",
    "max", "mean", "spread" (max / min), "sigma" (sample standard deviation), "n"}``.

    With exactly two runs every entry also has ``{"a", "b", "diff" (b - a), "rel_diff"
    ((b - a) / a, NaN when a is 0)}`` and the result ``a_run_id`` / ``b_run_id``.  Runs whose
    source labels differ (simulated / estimated / measured) are compared all the same, with
    a RuntimeWarning whose text is also in ``warnings``; ``source_labels`` keeps the labels.

    Given two *lists* of runs (e.g. float32 runs vs bfloat16 runs), it compares the groups
    instead: :func:`energyprof.analysis.compare_groups` (difference of ``figure``, default J
    per output token, with its Welch 95% interval).
    """
    if any(isinstance(r, (list, tuple)) for r in runs):
        if len(runs) != 2 or not all(isinstance(r, (list, tuple)) for r in runs):
            raise ValueError("compare(a, b): give runs, or two lists of runs to compare as groups")
        return compare_groups(list(runs[0]), list(runs[1]), figure=figure, db=db)
    if not MIN_RUNS <= len(runs) <= MAX_RUNS:
        raise ValueError(f"compare takes {MIN_RUNS} to {MAX_RUNS} runs, got {len(runs)}")
    rs = _load_all(runs, db)
    ss = [r.summary() for r in rs]
    out = compare_runs(ss, figures=COMPARE_FIGURES)
    out["n_runs"] = len(rs)
    out["source_labels"] = [str(s.get("source_label") or "unknown") for s in ss]
    two = len(rs) == 2
    if two:
        out["a_run_id"], out["b_run_id"] = out["run_ids"]
        for e in out["figures"].values():
            e.update(_pair(e["values"][0], e["values"][1]))
    for msg in out["warnings"]:
        warnings.warn(f"compare: {msg}", RuntimeWarning, stacklevel=2)

    def entry(values: Sequence[Any], better: Optional[str]) -> Dict[str, Any]:
        v = [_fnum(x) for x in values]
        e: Dict[str, Any] = {"values": v, "better": better, **figure_stats(v, better)}
        if two:
            e.update(_pair(v[0], v[1]))
        return e

    phs = [s.get("phases") or {} for s in ss]
    names = set().union(*phs)
    out["phases"] = {}
    for ph in [p for p in _PHASE_ORDER if p in names] + sorted(names - set(_PHASE_ORDER)):
        out["phases"][ph] = {k: entry([(p.get(ph) or {}).get(k) for p in phs], "lower" if k != "tokens" else None)
                             for k in _PHASE_FLOAT_KEYS + ("tokens",)}
    doms = [s.get("domains") or {} for s in ss]
    out["domains"] = {d: entry([x.get(d) for x in doms], "lower") for d in sorted(set().union(*doms))}

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
                r[f] = entry([m[k][f] if k in m else None for m in maps], "lower" if f != "n_calls" else None)
            rows.append(r)
        return rows

    out["layers"] = side_by_side([r.layer_summary() for r in rs], False)
    out["components"] = side_by_side([r.component_summary() for r in rs], True)
    return out
