"""Sweep results: one row per grid point (mean, sd and 95 % CI over repeats), reloading a
stored sweep, and the analyses on top: :func:`batch_scaling` (J/token vs batch size with a
power-law fit), :func:`context_scaling` (prefill energy vs prompt length, linear + quadratic
fit with coefficient intervals) and :func:`pareto_frontier` (tokens/s vs J/token).

Running a sweep is :func:`energyprof.measure.sweep.sweep` (``ep.sweep``); every run it makes
is tagged ``sweep:<id>``, ``batch_size=B``, ``prompt_length=P``, ``max_new_tokens=N`` so that
:func:`load_sweep` finds it again in the store.  :attr:`SweepResult.table` is a numpy
structured array with one row per grid point: for every figure in :data:`SWEEP_FIGURES`
the mean over repeats, its standard deviation and the half-width of its 95 % confidence
interval (t with ``n - 1`` degrees of freedom): columns ``F``, ``F_sd``, ``F_ci95``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import numpy as np

from ..store.rundata import _float as _f
from .efficiency import FIGURE_UNITS, figure_value, summaries
from .stats import figure, mean_ci, ols

__all__ = ["SweepResult", "SWEEP_FIGURES", "SWEEP_DTYPE", "ENGINE_DTYPE", "sweep_table", "engine_table",
           "load_sweep", "batch_scaling", "context_scaling", "pareto_frontier"]

#: Figures averaged per grid point (see :func:`energyprof.analysis.figure_value`).
SWEEP_FIGURES = ("energy_j", "net_energy_j", "duration_s", "j_per_token", "j_per_output_token", "tokens_per_j",
                 "tokens_per_s", "edp_js", "prefill_energy_j", "prefill_j_per_input_token", "decode_energy_j",
                 "decode_j_per_output_token")

_KEYS = [("engine", "U24"), ("batch_size", "<i4"), ("prompt_length", "<i4"), ("max_new_tokens", "<i4"),
         ("n", "<i4")]

#: One row per (engine, grid point): the keys (``engine`` is "" for a sweep without
#: engines), n (runs), then F, F_sd, F_ci95 per figure.
SWEEP_DTYPE = np.dtype(_KEYS + [(f"{f}{suf}", "<f8") for f in SWEEP_FIGURES for suf in ("", "_sd", "_ci95")])

#: Figures of the engine comparison (:func:`engine_table`).
ENGINE_FIGURES = ("j_per_output_token", "tokens_per_j", "j_per_token", "tokens_per_s", "energy_j")

#: One row per (engine, grid point) of an engine comparison: the keys, n, the source and its
#: label (measured / estimated / simulated), then F, F_sd, F_ci95 per figure of ENGINE_FIGURES.
#: ``tokens_resolved`` is the mean share of decode steps that span a whole power sample,
#: ``sample_period_s`` the longest sample period of the group's runs and ``systematic`` the
#: source's systematic uncertainty (summary()["uncertainty"]["text"]): how far each figure
#: can be trusted beside its statistical CI.
ENGINE_DTYPE = np.dtype(_KEYS + [("source", "U64"), ("source_label", "U16"), ("tokens_resolved", "<f8"),
                                 ("sample_period_s", "<f8"), ("systematic", "U160")]
                        + [(f"{f}{suf}", "<f8") for f in ENGINE_FIGURES for suf in ("", "_sd", "_ci95")])


class SweepResult:
    """The outcome of :func:`sweep` (or :func:`load_sweep`): the table and the runs behind it."""

    def __init__(self, sweep_id: str, runs: List[Dict[str, Any]]) -> None:
        self.sweep_id = sweep_id
        #: Summary dicts of every run, in the order they ran.
        self.runs = runs
        #: One row per grid point (:data:`SWEEP_DTYPE`).
        self.table = sweep_table(runs)

    @property
    def run_ids(self) -> List[Optional[int]]:
        """Store ids of the runs (None for runs not saved)."""
        return [r.get("run_id") for r in self.runs]

    def engine_table(self) -> np.ndarray:
        """:func:`engine_table` of this sweep's runs: J/token and tokens/J per engine."""
        return engine_table(self.runs)

    def to_pandas(self):
        """The table as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame({f: self.table[f] for f in self.table.dtype.names})

    def batch_scaling(self, figure_name: str = "j_per_output_token") -> Dict[str, Any]:
        """:func:`batch_scaling` of this sweep's runs."""
        return batch_scaling(self.runs, figure_name)

    def context_scaling(self, quadratic: bool = True) -> Dict[str, Any]:
        """:func:`context_scaling` of this sweep's runs."""
        return context_scaling(self.runs, quadratic=quadratic)

    def pareto_frontier(self) -> np.ndarray:
        """:func:`pareto_frontier` of this sweep's table."""
        return pareto_frontier(self.table)

    def __repr__(self) -> str:
        return f"<SweepResult {self.sweep_id}: {len(self.runs)} runs, {len(self.table)} grid points>"


def _grid_key(s: Dict[str, Any]) -> tuple:
    """(batch_size, prompt_length, max_new_tokens) of a run: from its sweep tags, else its token counts."""
    tags = {}
    for t in s.get("tags") or []:
        if "=" in t:
            k, _, v = t.partition("=")
            tags[k] = v
    b = int(tags.get("batch_size", s.get("batch_size") or 1) or 1)
    try:
        p = int(tags["prompt_length"])
    except (KeyError, ValueError):
        p = int(round(_f(s.get("input_tokens")) / b)) if not math.isnan(_f(s.get("input_tokens"))) else -1
    try:
        n = int(tags["max_new_tokens"])
    except (KeyError, ValueError):
        n = int(round(_f(s.get("output_tokens")) / b)) if not math.isnan(_f(s.get("output_tokens"))) else -1
    return b, p, n


def _engine_of(s: Dict[str, Any]) -> str:
    """The engine a run was made with: its summary's ``engine``, else its ``engine=`` tag, else ""."""
    if s.get("engine"):
        return str(s["engine"])
    for t in s.get("tags") or []:
        if t.startswith("engine="):
            return t.partition("=")[2]
    return ""


def _grouped(ss: List[Dict[str, Any]]) -> Dict[tuple, List[Dict[str, Any]]]:
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for s in ss:
        groups.setdefault((_engine_of(s),) + _grid_key(s), []).append(s)
    return groups


def _fill(out: np.ndarray, groups: Dict[tuple, List[Dict[str, Any]]], keys: List[tuple], figures) -> None:
    for i, key in enumerate(keys):
        g = groups[key]
        out["engine"][i], out["batch_size"][i], out["prompt_length"][i], out["max_new_tokens"][i] = key
        out["n"][i] = len(g)
        for f in figures:
            m = mean_ci([figure_value(s, f) for s in g])
            out[f][i], out[f + "_sd"][i], out[f + "_ci95"][i] = m["mean"], m["sd"], m["half_width"]


def sweep_table(runs: Any, db: Any = None) -> np.ndarray:
    """Group runs by (engine, batch size, prompt length, new tokens) and average every figure.

    Returns a :data:`SWEEP_DTYPE` array sorted by the keys; ``F_ci95`` is the half-width of
    the t-based 95 % interval of the mean (NaN for a single run).
    """
    groups = _grouped(summaries(runs, db=db))
    keys = sorted(groups)
    out = np.zeros(len(groups), dtype=SWEEP_DTYPE)
    _fill(out, groups, keys, SWEEP_FIGURES)
    return out


def engine_table(runs: Any, db: Any = None) -> np.ndarray:
    """The engine comparison: per (engine, grid point), J per output token and output tokens
    per J (with tokens/s, J/token over all tokens and the run energy): mean, sd and 95 %
    half-width over the repeats, and the source with its label, so a table never mixes a
    measured figure with a simulated one unsaid.  Rows keep the order in which the engines
    first ran.  Returns an :data:`ENGINE_DTYPE` array."""
    ss = summaries(runs, db=db)
    groups = _grouped(ss)
    first: Dict[str, int] = {}
    for i, s in enumerate(ss):
        first.setdefault(_engine_of(s), i)
    keys = sorted(groups, key=lambda k: (first[k[0]],) + k[1:])
    out = np.zeros(len(groups), dtype=ENGINE_DTYPE)
    _fill(out, groups, keys, ENGINE_FIGURES)
    for i, key in enumerate(keys):
        srcs = sorted({str(s.get("source") or "") for s in groups[key]})
        labels = sorted({str(s.get("source_label") or "") for s in groups[key]})
        out["source"][i] = " | ".join(srcs)
        out["source_label"][i] = " | ".join(labels)
        res = [s.get("resolution") or {} for s in groups[key]]
        shares = [_f(r.get("tokens")) for r in res]
        periods = [_f(r.get("sample_period_s")) for r in res]
        out["tokens_resolved"][i] = np.nanmean(shares) if not all(np.isnan(shares)) else np.nan
        out["sample_period_s"][i] = np.nanmax(periods) if not all(np.isnan(periods)) else np.nan
        out["systematic"][i] = " | ".join(sorted({str((s.get("uncertainty") or {}).get("text") or "unknown")
                                                  for s in groups[key]}))[:160]
    return out


def load_sweep(sweep_id: str, db: Any = None) -> SweepResult:
    """Rebuild a :class:`SweepResult` from the runs tagged ``sweep:<sweep_id>`` in the store."""
    from ..store.db import runs

    rows = runs(db, tag=f"sweep:{sweep_id}", limit=None, sort="started_at", descending=False)
    if not rows:
        raise KeyError(f"no runs tagged sweep:{sweep_id} in the store")
    return SweepResult(sweep_id, list(rows))


def _runs_of(result_or_runs: Any) -> List[Dict[str, Any]]:
    if isinstance(result_or_runs, SweepResult):
        return result_or_runs.runs
    return summaries(result_or_runs)


def batch_scaling(result_or_runs: Any, figure_name: str = "j_per_output_token") -> Dict[str, Any]:
    """J/token (or another figure) against batch size.

    Returns ``{"figure", "unit", "rows": [{"batch_size", "prompt_length", "max_new_tokens",
    "mean", "ci95", "n"}], "exponent": figure or None, "fit": OLSResult or None}``.  The
    exponent ``b`` of ``figure ∝ batch^b`` is fitted on log-log over the individual runs
    (prompt length and output length enter as separate groups' offsets when they vary);
    it needs at least two batch sizes and one more run than coefficients.
    """
    ss = _runs_of(result_or_runs)
    keys = [_grid_key(s) for s in ss]
    y = np.array([figure_value(s, figure_name) for s in ss], dtype=np.float64)
    rows = []
    for key in sorted(set(keys)):
        idx = [i for i, k in enumerate(keys) if k == key]
        m = mean_ci(y[idx])
        rows.append({"batch_size": key[0], "prompt_length": key[1], "max_new_tokens": key[2], "mean": m["mean"],
                     "ci95": m["ci95"], "n": m["n"]})
    out: Dict[str, Any] = {"figure": figure_name, "unit": FIGURE_UNITS.get(figure_name, ""), "rows": rows,
                           "exponent": None, "fit": None}
    b = np.array([k[0] for k in keys], dtype=np.float64)
    ok = np.isfinite(y) & (y > 0)
    if len(np.unique(b[ok])) >= 2:
        # one offset per (prompt, new tokens) setting, a common exponent
        others = sorted({(k[1], k[2]) for k, o in zip(keys, ok) if o})
        cols = [np.log(b[ok])]
        names = ["log_batch_size"]
        for j, o in enumerate(others[1:]):
            cols.append(np.array([1.0 if (k[1], k[2]) == o else 0.0 for k, okk in zip(keys, ok) if okk]))
            names.append(f"offset p={o[0]} n={o[1]}")
        try:
            fit = ols(np.column_stack(cols), np.log(y[ok]), names=names)
            out["fit"] = fit
            out["exponent"] = figure(fit.coef[1], "1", fit.se[1], n=fit.n, df=fit.df)
        except ValueError as e:
            out["error"] = str(e)
    return out


def context_scaling(result_or_runs: Any, quadratic: bool = True, phase: str = "prefill") -> Dict[str, Any]:
    """Prefill energy against prompt length: ``E = a + b·(B·P) + c·(B·P²)``.

    ``B`` is the batch size and ``P`` the prompt length per sequence, so ``b`` is joules per
    prompt token and ``c`` the quadratic (attention) term per sequence.  Fitted by OLS on the
    individual runs; each coefficient comes with its standard error and 95 % interval.
    ``quadratic=False`` drops the ``c`` term.  Needs more runs than coefficients and, with
    the quadratic term, at least three distinct prompt lengths (ValueError otherwise).
    Returns ``{"coefficients": {"intercept_j", "j_per_token", "j_per_token_sq"}, "r2",
    "resid_sd", "n", "fit"}``.
    """
    ss = _runs_of(result_or_runs)
    keys = [_grid_key(s) for s in ss]
    y = np.array([figure_value(s, f"phases.{phase}.energy_j") for s in ss], dtype=np.float64)
    B = np.array([k[0] for k in keys], dtype=np.float64)
    P = np.array([k[1] for k in keys], dtype=np.float64)
    ok = np.isfinite(y) & (P > 0)
    need = 3 if quadratic else 2
    if len(np.unique(P[ok])) < need:
        raise ValueError(f"context_scaling() needs at least {need} distinct prompt lengths for a "
                         f"{'linear+quadratic' if quadratic else 'linear'} fit; got {sorted(set(P[ok].astype(int)))}")
    X = [B[ok] * P[ok]]
    names = ["j_per_token"]
    if quadratic:
        X.append(B[ok] * P[ok] ** 2)
        names.append("j_per_token_sq")
    fit = ols(np.column_stack(X), y[ok], names=names)
    units = {"const": "J", "j_per_token": "J/token", "j_per_token_sq": "J/token²"}
    coefs = {("intercept_j" if nm == "const" else nm): figure(fit.coef[i], units[nm], fit.se[i], n=fit.n, df=fit.df)
             for i, nm in enumerate(fit.names)}
    return {"phase": phase, "coefficients": coefs, "r2": fit.r2, "resid_sd": fit.resid_sd, "n": fit.n, "fit": fit,
            "batch_size": B[ok], "prompt_length": P[ok], "energy_j": y[ok]}


def pareto_frontier(table: Any, x: str = "tokens_per_s", y: str = "j_per_output_token") -> np.ndarray:
    """Indices of the grid points on the throughput/energy Pareto frontier, sorted by ``x``.

    A point is on the frontier when no other point has both ``x`` at least as high (more
    tokens per second) and ``y`` at least as low (fewer joules per token), one of them strictly.
    ``table`` is a :data:`SWEEP_DTYPE` array or a :class:`SweepResult`.
    """
    if isinstance(table, SweepResult):
        table = table.table
    xs = np.asarray(table[x], dtype=np.float64)
    ys = np.asarray(table[y], dtype=np.float64)
    ok = np.isfinite(xs) & np.isfinite(ys)
    keep = []
    for i in np.flatnonzero(ok):
        dom = ok & (xs >= xs[i]) & (ys <= ys[i]) & ((xs > xs[i]) | (ys < ys[i]))
        if not dom.any():
            keep.append(i)
    keep = np.array(keep, dtype=np.int64)
    return keep[np.argsort(xs[keep], kind="stable")]
