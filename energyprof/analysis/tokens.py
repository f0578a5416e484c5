"""Per-token numbers of a run: where each decode step's energy went, the distribution of the
per-token energies with the cheapest and dearest tokens and their text, the token × layer
and decode J/token against the context length (the token × layer heatmap is
``plot(run, kind="layer_steps")``).

Every row says whether it is *resolved*: its window spans at least one whole power sample.
An unresolved step's energy is interpolated inside one sample (finer than the sensor), so
figures built on it are marked, and the context-length fit uses resolved steps only when
there are enough of them.

>>> from energyprof.testing import synthetic_run
>>> st = token_components(synthetic_run(n_layers=2, n_steps=6))
>>> st["groups"], len(st["step"])
(('attention', 'mlp', 'norms', 'other'), 6)
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..store.groups import index_of, map_distinct
from .efficiency import summaries
from .stats import figure, ols

__all__ = ["token_components", "token_energy_distribution", "context_cost",
           "component_group", "GROUPS"]

#: The groups of the per-step stack, in drawing order.
GROUPS = ("attention", "mlp", "norms", "other")

_ATTN = {"attn", "cross_attn", "q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "q_norm", "k_norm",
         "cross_q_proj", "cross_k_proj", "cross_v_proj", "cross_o_proj"}
_MLP = {"mlp", "gate_proj", "up_proj", "down_proj", "gate_up_proj", "router", "experts"}


def component_group(component: str) -> str:
    """``"attention"``, ``"mlp"``, ``"norms"`` or ``"other"`` for a canonical component name."""
    c = str(component)
    if c in _ATTN:
        return "attention"
    if c in _MLP or c.startswith("expert."):
        return "mlp"
    if c.endswith("norm"):
        return "norms"
    return "other"


def _arr(run: Any, name: str) -> np.ndarray:
    a = getattr(run, name, None)
    return np.asarray(a) if a is not None else np.zeros(0)


def token_components(run: Any) -> Dict[str, Any]:
    """Per decode step: the energy of attention, MLP and norms inside the decoder layers, and
    the rest of the step (``other``: embedding, LM head, sampling, anything unhooked).

    A group's energy is the sum of the *outermost* calls of that group inside each layer (a
    layer's direct children), so attention counts its projections once.  ``other`` is the
    step's energy minus the three, so each step's stack adds up to its energy.  Returns
    ``{"groups", "step", "energy_j" (per step), <group>: array per step, "cumulative_j",
    "resolved" (the step window spans a whole sample), "resolved_calls" (share of the
    step's group calls that are resolved)}``.
    """
    tok = _arr(run, "tokens")
    if len(tok) == 0:
        raise ValueError("the run has no decode steps: no per-token breakdown")
    tok = tok[np.argsort(tok["step"], kind="stable")]
    steps = np.asarray(tok["step"], dtype=np.int64)
    out: Dict[str, Any] = {"groups": GROUPS, "step": steps, "energy_j": np.asarray(tok["energy_j"], float),
                           "resolved": np.asarray(tok["resolved"], bool)}
    for g in GROUPS[:-1]:
        out[g] = np.zeros(len(steps))
    res_n = np.zeros(len(steps))
    res_k = np.zeros(len(steps))
    comps, layers = _arr(run, "components"), _arr(run, "layers")
    if len(comps) and len(layers):
        direct = comps[np.isin(comps["parent_id"], layers["call_id"]) & (comps["layer"] >= 0)]
        i = index_of(steps, direct["step"])                             # the last row of that step
        ok = i >= 0
        grp = map_distinct(direct["component"], component_group, "U16")
        # summed in row order, as a loop over the rows adds them
        e, res = np.asarray(direct["energy_j"], float), np.asarray(direct["resolved"], float)
        n_steps = len(steps)
        for g in GROUPS[:-1]:
            sel = ok & (grp == g)
            out[g] = out[g] + np.bincount(i[sel], weights=e[sel], minlength=n_steps)
            res_n += np.bincount(i[sel], minlength=n_steps)
            res_k += np.bincount(i[sel], weights=res[sel], minlength=n_steps)
    out["other"] = out["energy_j"] - sum(out[g] for g in GROUPS[:-1])
    with np.errstate(invalid="ignore", divide="ignore"):
        out["resolved_calls"] = np.where(res_n > 0, res_k / np.maximum(res_n, 1), np.nan)
    out["cumulative_j"] = np.cumsum(out["energy_j"])
    return out


def _token_label(texts: Dict[int, List[str]], step: int) -> str:
    parts = texts.get(step) or []
    return " | ".join(parts)


def token_energy_distribution(run: Any, bins: int = 20, n_extremes: int = 5) -> Dict[str, Any]:
    """The distribution of per-token energy over the decode steps and the extremes.

    Returns ``{"j_per_token", "steps", "resolved", "counts", "edges" (np.histogram over
    ``bins``), "highest", "lowest" (the ``n_extremes`` dearest / cheapest steps: {step,
    j_per_token, resolved, text}), "resolved_share"}``.  ``text`` is the step's token of
    each sequence (``" | "`` between sequences); empty when the run stored no text.
    """
    tok = _arr(run, "tokens")
    if len(tok) == 0:
        raise ValueError("the run has no decode steps: no per-token distribution")
    if bins < 1 or n_extremes < 0:
        raise ValueError("bins must be >= 1 and n_extremes >= 0")
    jpt = np.asarray(tok["j_per_token"], dtype=np.float64)
    ok = np.isfinite(jpt)
    counts, edges = np.histogram(jpt[ok], bins=bins) if ok.any() else (np.zeros(bins, int), np.zeros(bins + 1))
    texts: Dict[int, List[str]] = {}
    tx = _arr(run, "texts")
    if len(tx):
        sel = tx[tx["kind"] == "token"]
        for r in sel[np.argsort(sel["seq"], kind="stable")]:
            texts.setdefault(int(r["step"]), []).append(str(r["text"]))
    order = np.argsort(np.where(ok, jpt, np.inf), kind="stable")
    finite = order[: int(ok.sum())]

    def rows(idx):
        return [{"step": int(tok["step"][i]), "j_per_token": float(jpt[i]), "resolved": bool(tok["resolved"][i]),
                 "text": _token_label(texts, int(tok["step"][i]))} for i in idx]

    return {"j_per_token": jpt, "steps": np.asarray(tok["step"]), "resolved": np.asarray(tok["resolved"], bool),
            "counts": counts, "edges": edges, "lowest": rows(finite[:n_extremes]),
            "highest": rows(finite[::-1][:n_extremes]), "resolved_share": float(np.mean(tok["resolved"]))}


def context_cost(runs: Any, db: Any = None, resolved_only: Optional[bool] = None,
                 min_resolved: int = 3) -> Dict[str, Any]:
    """Decode J/token against the context length, with a least-squares line.

    Decode step k of a run whose prompt has ``L`` tokens per sequence attends over ``L + k``
    positions (``L`` = the run's input tokens / batch size).  Each step is one point
    (``context``, ``j_per_token``); several runs (ids are loaded from ``db``, RunData as
    given) are pooled.  ``resolved_only`` (default: when at least ``min_resolved`` steps are
    resolved) keeps the steps whose window spans a whole sample.  Returns ``{"slope"
    (J/token per context token, with se and 95% interval), "intercept", "r2", "n", "context",
    "j_per_token", "resolved", "used" (mask of the fitted points), "resolved_only", "fit"}``;
    ``"error"`` instead of the fit when fewer than 3 points with 2 distinct contexts remain.
    """
    items = list(runs) if isinstance(runs, (list, tuple)) else [runs]
    loaded = []
    for r in items:
        if isinstance(r, (int, np.integer)):
            from ..store.db import _opened

            with _opened(db) as st:
                loaded.append(st.load(int(r)))
        else:
            loaded.append(r)
    ctx: List[float] = []
    jpt: List[float] = []
    res: List[bool] = []
    for r, s in zip(loaded, summaries(loaded)):
        tok = _arr(r, "tokens")
        if len(tok) == 0:
            continue
        batch = max(int(s.get("batch_size") or 1), 1)
        prompt = float(s.get("input_tokens") or 0) / batch
        ctx += (prompt + np.asarray(tok["step"], float)).tolist()
        jpt += np.asarray(tok["j_per_token"], float).tolist()
        res += np.asarray(tok["resolved"], bool).tolist()
    x, y, rmask = np.asarray(ctx), np.asarray(jpt), np.asarray(res, bool)
    if resolved_only is None:
        resolved_only = int(rmask.sum()) >= min_resolved
    used = np.isfinite(x) & np.isfinite(y) & (rmask if resolved_only else True)
    out: Dict[str, Any] = {"context": x, "j_per_token": y, "resolved": rmask, "used": used,
                           "resolved_only": bool(resolved_only), "n": int(used.sum()), "unit": "J/token"}
    if used.sum() < 3 or len(np.unique(x[used])) < 2:
        out["error"] = "needs at least 3 decode steps with 2 or more distinct context lengths"
        return out
    fit = ols(x[used], y[used], names=["context"])
    out.update({
        "slope": figure(fit.coef[1], "J/token per context token", fit.se[1], n=fit.n, df=fit.df),
        "intercept": figure(fit.coef[0], "J/token", fit.se[0], n=fit.n, df=fit.df),
        "r2": fit.r2, "fit": fit,
    })
    return out
