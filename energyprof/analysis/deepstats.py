"""Numbers of a deep-mode run for its figures, read from the stored rows (``run.components``,
``run.ops``, ``summary()["deep"]``): the activation statistics per (layer, component), any
metric over the layer × component grid, and the order of the ops inside a layer.

>>> from energyprof.testing import synthetic_run
>>> m = layer_component_matrix(synthetic_run(n_layers=2, n_steps=3), "power_w")
>>> m["metric"], m["unit"], len(m["layers"])
('power_w', 'W', 2)
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..store.groups import unique_inverse

__all__ = ["activation_table", "layer_component_matrix", "layer_component_cells", "component_order", "op_order", "METRICS", "ACT_FIELDS"]

#: Metrics of :func:`layer_component_matrix`: name -> (unit, how the calls of a cell combine).
METRICS: Dict[str, tuple] = {
    "energy_j": ("J", "sum over the cell's calls"),
    "duration_s": ("s", "sum over the cell's calls"),
    "power_w": ("W", "energy / duration of the cell's calls"),
    "act_abs_mean": ("1", "mean over calls of mean |x| (deep mode)"),
    "act_mean": ("1", "mean over calls of the output's mean (deep mode)"),
    "act_std": ("1", "mean over calls of the output's std (deep mode)"),
    "act_max": ("1", "largest |x| over calls (deep mode)"),
    "act_sparsity": ("1", "mean over calls of the share of |x| below sparse_below (deep mode)"),
    "kill_ratio": ("1", "MLP: mean share of activations below kill_below (deep mode)"),
    "variance_ratio": ("1", "norms: output over input per-token variance (deep mode)"),
}

#: The activation statistics of a call row, as :func:`activation_table` reports them.
ACT_FIELDS = ("act_abs_mean", "act_mean", "act_std", "act_max", "act_sparsity")


def _arr(run: Any, name: str) -> np.ndarray:
    a = getattr(run, name, None)
    return np.asarray(a) if a is not None else np.zeros(0)


def _summary(run: Any) -> Dict[str, Any]:
    s = getattr(run, "summary", None)
    return dict((s() if callable(s) else s) or {})


#: The order ops run in inside their parent (energyprof.measure.deep's ATTN/MLP/NORM ops).
_OP_ORDER = {"attn": ("qk", "scale", "softcap", "mask", "softmax", "av", "stats"), "mlp": ("act", "mul", "stats"),
             "norm": ("variance", "normalize", "scale", "stats")}


def op_order(names: Sequence[str]) -> List[str]:
    """Ops grouped by their parent component (attention, MLP, then the norms), each parent's
    ops in the order they run (``attn.g<k>.<op>`` per head group, group by group)."""
    def key(n: str):
        parent, _, rest = n.partition(".")
        group, _, op = rest.rpartition(".")
        family = "attn" if parent == "attn" else ("mlp" if parent == "mlp" else "norm")
        seq = _OP_ORDER[family]
        return ({"attn": 0, "mlp": 1}.get(family, 2), parent, group, seq.index(op) if op in seq else len(seq), op)

    return sorted({str(n) for n in names}, key=key)


def _ratio_lookup(run: Any) -> Dict[tuple, Dict[str, float]]:
    deep = _summary(run).get("deep") or {}
    out: Dict[tuple, Dict[str, float]] = {}
    for r in deep.get("mlp") or []:
        out.setdefault((int(r["layer"]), "mlp"), {})["kill_ratio"] = float(r.get("kill_ratio", math.nan))
    for r in deep.get("norms") or []:
        out.setdefault((int(r["layer"]), str(r["component"])), {})["variance_ratio"] = \
            float(r.get("variance_ratio", math.nan))
    return out


def activation_table(run: Any) -> List[Dict[str, Any]]:
    """Activation statistics per (layer, component) of a deep run: the mean over calls of
    mean |x|, mean, std and sparsity of each call's output, the largest |x|, and the MLP's
    kill ratio / the norm's variance ratio (from ``summary()["deep"]``); one dict per pair
    that has any statistic, sorted by layer and component."""
    c = _arr(run, "components")
    ratios = _ratio_lookup(run)
    rows: List[Dict[str, Any]] = []
    keys = sorted(set(zip(c["layer"].tolist(), c["component"].tolist()))) if len(c) else []
    for layer, comp in keys:
        sel = c[(c["layer"] == layer) & (c["component"] == comp)]
        r: Dict[str, Any] = {"layer": int(layer), "component": str(comp), "calls": int(len(sel))}
        anyv = False
        for f in ACT_FIELDS:
            v = np.asarray(sel[f], float) if f in sel.dtype.names else np.zeros(0)
            v = v[np.isfinite(v)]
            r[f] = (float(v.max()) if f == "act_max" else float(v.mean())) if len(v) else math.nan
            anyv |= bool(len(v))
        extra = ratios.get((int(layer), str(comp)), {})
        r["kill_ratio"] = extra.get("kill_ratio", math.nan)
        r["variance_ratio"] = extra.get("variance_ratio", math.nan)
        if anyv or extra:
            rows.append(r)
    return rows


def layer_component_cells(run: Any) -> Dict[str, Any]:
    """The (decoder layer, component) grid of a run's component calls, for
    :func:`layer_component_matrix` (which builds it itself when not given one): ``{"calls"
    (the per-layer component rows), "layers", "components" (in a layer's order), "cell" (each
    row's cell, layer-major)}``.  ValueError when the run has no per-layer component calls."""
    c = _arr(run, "components")
    if len(c) == 0 or not np.any(c["layer"] >= 0):
        raise ValueError("the run has no per-layer component calls (recorded with mode='minimal'?)")
    keep = c["layer"] >= 0
    if not keep.all():              # a copy of the rows only when some are not per layer
        c = c[keep]
    layer_vals, li = unique_inverse(c["layer"])
    names, ni = unique_inverse(c["component"])
    layers = [int(v) for v in layer_vals]
    comps = component_order(names.tolist())
    col_of = np.asarray([comps.index(str(n)) for n in names], dtype=np.int64)
    cell = li.reshape(-1).astype(np.int64) * len(comps) + col_of[ni.reshape(-1)]   # one grouping, every metric
    return {"calls": c, "layers": layers, "components": comps, "cell": cell}


def layer_component_matrix(run: Any, metric: str = "energy_j", cells: Optional[Dict[str, Any]] = None
                           ) -> Dict[str, Any]:
    """Any of :data:`METRICS` over the (decoder layer, component) grid of a run:
    ``{"layers", "components", "value" (NaN where a pair has no call or no statistic),
    "resolved_share" (share of the cell's calls that span a whole sample), "metric", "unit",
    "how"}``.  ``cells``: the run's :func:`layer_component_cells`, when already built (one
    grouping for every metric)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    if cells is None:
        cells = layer_component_cells(run)
    c, layers, comps, cell = cells["calls"], cells["layers"], cells["components"], cells["cell"]
    n_cells = len(layers) * len(comps)
    count = np.bincount(cell, minlength=n_cells).astype(np.float64)
    has = count > 0

    def per_cell(values: np.ndarray) -> np.ndarray:
        return np.bincount(cell, weights=np.asarray(values, np.float64), minlength=n_cells)

    with np.errstate(invalid="ignore", divide="ignore"):
        rs = np.where(has, per_cell(c["resolved"]) / np.maximum(count, 1), np.nan)
        if metric in ("energy_j", "duration_s"):
            z = np.where(has, per_cell(c[metric]), np.nan)   # a NaN call makes its cell NaN, as a sum does
        elif metric == "power_w":
            d = per_cell(c["duration_s"])
            z = np.where(has & (d > 0), per_cell(c["energy_j"]) / np.where(d > 0, d, 1.0), np.nan)
        elif metric in ("kill_ratio", "variance_ratio"):
            ratios = _ratio_lookup(run)
            z = np.full(n_cells, np.nan)
            for k in np.flatnonzero(has):
                z[k] = ratios.get((layers[k // len(comps)], comps[k % len(comps)]), {}).get(metric, np.nan)
        elif metric in c.dtype.names:
            v = np.asarray(c[metric], float)
            ok = np.isfinite(v)
            if metric == "act_max":
                z = np.full(n_cells, -np.inf)
                np.maximum.at(z, cell[ok], v[ok])
                z[np.isinf(z) & (z < 0)] = np.nan
            else:
                n_ok = np.bincount(cell[ok], minlength=n_cells)
                z = np.where(n_ok > 0, np.bincount(cell[ok], weights=v[ok], minlength=n_cells) / np.maximum(n_ok, 1),
                             np.nan)
        else:
            z = np.full(n_cells, np.nan)
    z = z.reshape(len(layers), len(comps))
    rs = rs.reshape(len(layers), len(comps))
    unit, how = METRICS[metric]
    return {"layers": layers, "components": comps, "value": z, "resolved_share": rs, "metric": metric,
            "unit": unit, "how": how}


_COMPONENT_ORDER = ("input_norm", "attn", "q_proj", "k_proj", "v_proj", "qkv_proj", "q_norm", "k_norm", "o_proj",
                    "post_attn_norm", "cross_attn", "cross_q_proj", "cross_k_proj", "cross_v_proj", "cross_o_proj",
                    "cross_attn_norm", "pre_ffn_norm", "mlp", "router", "experts", "gate_proj", "up_proj",
                    "gate_up_proj", "down_proj", "post_ffn_norm")


def component_order(names: Sequence[str]) -> List[str]:
    """Components in the order a layer runs them, unknown ones after, alphabetically."""
    names = [str(n) for n in names]
    known = [n for n in _COMPONENT_ORDER if n in names]
    return known + sorted(n for n in names if n not in _COMPONENT_ORDER)
