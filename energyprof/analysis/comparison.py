"""Two runs side by side: every figure, phase, domain, layer and component with its difference;
or two groups of runs compared on one figure (:func:`energyprof.analysis.compare_groups`)."""
from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Sequence, Union

import numpy as np

from ..store.db import _PHASE_FLOAT_KEYS, _PHASE_ORDER, DbArg, _fnum, _opened
from ..store.rundata import RunData
from .efficiency import compare_groups, source_labels

__all__ = ["compare"]


_COMPARE_FIGURES = ("duration_s", "energy_j", "net_energy_j", "baseline_power_w", "peak_power_w", "j_per_token",
                    "j_per_output_token", "tokens_per_j", "edp_js", "input_tokens", "output_tokens",
                    "unattributed_j")


def _pair(a: Any, b: Any) -> Dict[str, float]:
    fa, fb = _fnum(a), _fnum(b)
    diff = fb - fa
    rel = diff / fa if (fa != 0 and not math.isnan(fa)) else float("nan")
    return {"a": fa, "b": fb, "diff": diff, "rel_diff": rel}


def compare(a: Union[int, RunData, Sequence[Any]], b: Union[int, RunData, Sequence[Any]], db: DbArg = None,
            figure: str = "j_per_output_token") -> Dict[str, Any]:
    """Side by side figures of runs ``a`` and ``b`` (ids or RunData) and their differences.

    Every entry is ``{"a", "b", "diff" (b - a), "rel_diff" ((b - a) / a, NaN when a is 0)}``.
    Runs whose source labels differ (simulated / estimated / measured) are compared all the
    same, with a RuntimeWarning that is also kept in ``"warnings"``.
    Returns ``{"a_run_id", "b_run_id", "figures": {name: entry}, "phases": {phase: {figure:
    entry}}, "domains": {domain: entry}, "layers": [{"layer", "energy_j": entry,
    "mean_energy_j": entry, "duration_s": entry}], "components": [{"layer", "component", ...}]}``.
    Layers/components present in only one run have NaN on the other side.

    Given two *lists* of runs (e.g. float32 runs vs bfloat16 runs), it compares the
    groups instead: :func:`energyprof.analysis.compare_groups` (difference of
    ``figure``, default J per output token, with its Welch 95% interval).
    """
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        if not isinstance(a, (list, tuple)) or not isinstance(b, (list, tuple)):
            raise ValueError("compare(a, b): give two runs, or two lists of runs to compare as groups")
        return compare_groups(list(a), list(b), figure=figure, db=db)
    if not isinstance(a, RunData) or not isinstance(b, RunData):
        with _opened(db) as st:
            ra = a if isinstance(a, RunData) else st.load(a)
            rb = b if isinstance(b, RunData) else st.load(b)
    else:
        ra, rb = a, b
    sa, sb = ra.summary(), rb.summary()
    out: Dict[str, Any] = {"a_run_id": sa.get("run_id"), "b_run_id": sb.get("run_id")}
    labels = [str(x.get("source_label") or "unknown") for x in (sa, sb)]
    out["source_labels"] = labels
    out["warnings"] = []
    if len(source_labels([sa, sb])) > 1:
        msg = (f"compare: run {sa.get('run_id')} is {labels[0]} and run {sb.get('run_id')} is {labels[1]}: "
               "their differences compare a measurement with a model or a simulation and say little")
        out["warnings"].append(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    out["figures"] = {k: _pair(sa.get(k), sb.get(k)) for k in _COMPARE_FIGURES}
    pa, pb = sa.get("phases") or {}, sb.get("phases") or {}
    out["phases"] = {}
    for ph in [p for p in _PHASE_ORDER if p in pa or p in pb] + sorted((set(pa) | set(pb)) - set(_PHASE_ORDER)):
        xa, xb = pa.get(ph) or {}, pb.get(ph) or {}
        out["phases"][ph] = {k: _pair(xa.get(k), xb.get(k)) for k in _PHASE_FLOAT_KEYS + ("tokens",)}
    da, dbm = sa.get("domains") or {}, sb.get("domains") or {}
    out["domains"] = {d: _pair(da.get(d), dbm.get(d)) for d in sorted(set(da) | set(dbm))}

    def side_by_side(xa: np.ndarray, xb: np.ndarray, with_component: bool) -> List[Dict[str, Any]]:
        def key(r):
            return (int(r["layer"]), str(r["component"])) if with_component else (int(r["layer"]),)

        ma = {key(r): r for r in xa}
        mb = {key(r): r for r in xb}
        rows = []
        for k in sorted(set(ma) | set(mb)):
            r = {"layer": k[0]}
            if with_component:
                r["component"] = k[1]
            for f in ("energy_j", "mean_energy_j", "duration_s", "n_calls", "share"):
                r[f] = _pair(ma[k][f] if k in ma else None, mb[k][f] if k in mb else None)
            rows.append(r)
        return rows

    out["layers"] = side_by_side(ra.layer_summary(), rb.layer_summary(), False)
    out["components"] = side_by_side(ra.component_summary(), rb.component_summary(), True)
    return out
