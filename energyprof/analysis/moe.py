"""Mixture-of-experts runs: routing per layer and expert, and MoE against dense models.

:func:`routing` reads what a run stored in ``summary()["moe"]`` (recorded by
:mod:`energyprof.measure.moe`): the tokens routed to each expert per layer, each expert's
share, how balanced the routing was, and the energy per expert with its label (measured
per expert module, or *estimated*: a fused experts module's energy split by routed tokens).

:func:`moe_vs_dense` compares two groups of stored runs on one figure (J per output token
by default) and on that figure per active parameter (the parameters one token goes
through: a MoE skips the experts it is not routed to).

>>> r = routing({"moe": {"n_experts": 2, "experts_per_token": 1, "layers": [
...     {"layer": 0, "tokens_routed": [3, 1], "expert_energy_j": [0.3, 0.1], "experts_energy_j": 0.4,
...      "expert_energy_label": "measured per expert module"}]}})
>>> r["layers"][0]["share"], r["layers"][0]["max_over_mean"]
([0.75, 0.25], 1.5)
"""
from __future__ import annotations

import math
from typing import Any, Dict, List

import numpy as np

from .efficiency import _summary_of, compare_groups, figure_value, model_dict, summaries
from .stats import mean_ci

__all__ = ["routing", "moe_vs_dense"]


def routing(run: Any) -> Dict[str, Any]:
    """Routing of a MoE run per layer: ``{"n_experts", "experts_per_token", "layers": [{"layer",
    "tokens_routed", "share" (of the layer's routed tokens), "max_over_mean" (1 = perfectly
    balanced), "cv" (coefficient of variation of the counts), "expert_energy_j",
    "j_per_routed_token" (per expert), "expert_energy_label", "resolved_share"}], "total":
    {"tokens_routed", "share"}}``.  Raises ValueError for a run without ``summary()["moe"]``.
    """
    s = _summary_of(run)
    moe = s.get("moe")
    if not moe:
        raise ValueError("the run has no MoE routing (not a mixture-of-experts model, or recorded with "
                         "mode='minimal')")
    n_e = int(moe.get("n_experts") or 0)
    rows: List[Dict[str, Any]] = []
    total = np.zeros(n_e)
    for r in moe.get("layers") or []:
        c = np.asarray(r.get("tokens_routed") or [0] * n_e, dtype=np.float64)
        total += c if len(c) == n_e else 0
        tot = c.sum()
        mean = c.mean() if len(c) else math.nan
        e = np.asarray(r.get("expert_energy_j") or [math.nan] * n_e, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            jpt = np.where(c > 0, e / np.where(c > 0, c, 1), np.nan)
        rows.append({
            "layer": int(r["layer"]), "tokens_routed": [int(v) for v in c],
            "share": [float(v) for v in (c / tot if tot else np.full(len(c), math.nan))],
            "max_over_mean": float(c.max() / mean) if mean else math.nan,
            "cv": float(c.std() / mean) if mean else math.nan,
            "expert_energy_j": [float(v) for v in e],
            "experts_energy_j": float(r.get("experts_energy_j", math.nan)),
            "j_per_routed_token": [float(v) for v in jpt],
            "expert_energy_label": r.get("expert_energy_label", ""),
            "resolved_share": float(r.get("resolved_share", math.nan)),
        })
    t = total.sum()
    return {"n_experts": n_e, "experts_per_token": int(moe.get("experts_per_token") or 0), "layers": rows,
            "total": {"tokens_routed": [int(v) for v in total],
                      "share": [float(v) for v in (total / t if t else np.full(n_e, math.nan))]}}


def moe_vs_dense(moe_runs: Any, dense_runs: Any, figure: str = "j_per_output_token", db: Any = None
                 ) -> Dict[str, Any]:
    """A group of MoE runs against a group of dense runs (ids, RunData or summaries).

    Returns ``{"figure", "difference" (dense minus MoE: :func:`compare_groups`, with its Welch
    95% interval), "moe"/"dense": {"figure": mean_ci, "active_params", "n_params",
    "per_active_gparam": mean_ci of the figure per 10⁹ active parameters, "runs"}}``.  The
    groups' other differences (model, tokens, device, ...) are listed in
    ``difference["differs_in"]``; a MoE group without experts raises ValueError.
    """
    sm, sd = summaries(moe_runs, db=db), summaries(dense_runs, db=db)
    if not sm or not sd:
        raise ValueError("moe_vs_dense needs at least one run in each group")
    if not all((s.get("model") or {}).get("n_experts") for s in sm):
        raise ValueError("moe_vs_dense: every run of the first group must be a MoE model (model.n_experts > 0)")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # the groups differ in model by design
        diff = compare_groups(sm, sd, figure=figure)

    def side(ss):
        vals = np.array([figure_value(s, figure) for s in ss], float)
        act = np.array([model_dict(s)["active_params"] for s in ss], float)
        return {"figure": mean_ci(vals), "active_params": float(np.nanmean(act)),
                "n_params": float(np.nanmean([float((s.get("model") or {}).get("n_params") or math.nan) for s in ss])),
                "per_active_gparam": mean_ci(vals / (act / 1e9)),
                "runs": [s.get("run_id") for s in ss]}

    return {"figure": figure, "difference": diff, "moe": side(sm), "dense": side(sd)}
