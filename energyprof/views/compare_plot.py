"""Two to ten runs in one figure: their power timelines overlaid on a common axis (seconds from
each run's own start, so runs recorded at different times line up) and their J per output
token side by side.  ``energyprof compare 1 2 3 --plot out.html`` writes it.

>>> from energyprof.testing import synthetic_run
>>> fig = plot_runs([synthetic_run(seed=1), synthetic_run(seed=2, n_steps=20)], backend="plotly")
>>> [t.type for t in fig.data]
['scatter', 'scatter', 'bar']
"""
from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence

import numpy as np

from .._dtypes import DOMAINS, measured_domains, total_of
from ..errors import NoDataError
from ..store.rundata import _float

__all__ = ["plot_runs", "run_power_trace"]



def _p():
    from . import plot as p

    return p


def run_power_trace(run: Any):
    """(seconds from the run's start, total power W) of a run's samples inside the run window,
    as steps for interval samples; the total follows the run's ``total_rule`` (package [+ dram],
    else the sum of the measured domains)."""
    p = _p()
    smp = p._arr(run, "samples")
    if smp is None or len(smp) == 0:
        raise NoDataError("a run has no power samples to draw a timeline from")
    sec = p._arr(run, "sections")
    t0 = int(sec[sec["kind"] == "run"]["t_start_ns"][0]) if sec is not None and np.any(sec["kind"] == "run") \
        else int(smp["t_start_ns"].min())
    t1 = int(sec[sec["kind"] == "run"]["t_end_ns"][0]) if sec is not None and np.any(sec["kind"] == "run") \
        else int(smp["t_end_ns"].max())
    keep = (smp["t_end_ns"] > t0) & (smp["t_start_ns"] < t1)
    smp = smp[keep] if np.any(keep) else smp
    pw = np.column_stack([np.asarray(smp[f"{d}_w"], dtype=np.float64) for d in DOMAINS])
    rule = str(p._summary(run).get("total_rule") or "")
    named = [d for d in rule.split(" + ") if d in DOMAINS]   # the run's own rule, e.g. "package + dram"
    measured = [d in named for d in DOMAINS] if named else measured_domains(smp)
    total = total_of(pw, measured)
    a = (smp["t_start_ns"] - t0) / 1e9
    b = (smp["t_end_ns"] - t0) / 1e9
    if np.any(smp["t_end_ns"] > smp["t_start_ns"]):
        return np.column_stack([a, b]).reshape(-1), np.repeat(total, 2)
    return a, total


def plot_runs(runs: Sequence[Any], backend: str = "matplotlib", labels: Optional[Sequence[str]] = None,
              figure: str = "j_per_output_token"):
    """2-10 runs: power timelines overlaid (seconds from each run's start) and ``figure`` (J per
    output token) as bars.  A run whose source is estimated or simulated says so in its label;
    when the labels differ the title warns.  Raises ValueError for fewer than 2 or more than
    10 runs, or an unknown backend."""
    p = _p()
    COLORS = p._RUN_COLORS
    runs = list(runs)
    if not 2 <= len(runs) <= len(COLORS):
        raise ValueError(f"plot_runs takes 2 to {len(COLORS)} runs, got {len(runs)}")
    if backend not in p.BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(p.BACKENDS)}")
    p._need(backend)
    ss = [p._summary(r) for r in runs]
    names: List[str] = list(labels) if labels else [p._run_name(r, f"run {i + 1}") for i, r in enumerate(runs)]
    names = [n + p.label_tag(s) for n, s in zip(names, ss)]
    if len(set(names)) < len(names):
        names = [f"{i + 1}: {n}" for i, n in enumerate(names)]
    traces = [run_power_trace(r) for r in runs]
    vals = [_float(s.get(figure)) for s in ss]
    kinds = {str(s.get("source_label") or "unknown") for s in ss}
    title = f"{len(runs)} runs: power over time and {figure}"
    if len(kinds) > 1:
        title += f" — WARNING: sources labelled differently ({', '.join(sorted(kinds))})"
    if backend == "matplotlib":
        fig = p._mpl_fig(12, 4.5)
        a1, a2 = fig.subplots(1, 2, width_ratios=[3, 2])
        for (x, y), n, c in zip(traces, names, COLORS):
            a1.plot(x, y, color=c, lw=1.0, label=n)
        a1.set_xlabel("time from the run's start (s)")
        a1.set_ylabel("power (W)")
        a1.set_ylim(bottom=0)
        a1.legend(fontsize=7)
        a1.set_title("Power over time")
        pos = np.arange(len(runs))
        a2.bar(pos, [v if math.isfinite(v) else 0.0 for v in vals], color=COLORS[: len(runs)])
        a2.set_xticks(pos, names, rotation=30, ha="right", fontsize=7)
        a2.set_ylabel(figure)
        a2.set_title(figure)
        fig.suptitle(title, fontsize=10)
        return fig
    go = p._need("plotly")
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], subplot_titles=("Power over time", figure))
    for (x, y), n, c in zip(traces, names, COLORS):
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=p._esc(n), line=dict(color=c, width=1)), 1, 1)
    fig.add_trace(go.Bar(x=[p._esc(n) for n in names], y=vals, marker_color=list(COLORS[: len(runs)]),
                         showlegend=False, hovertemplate="%{x}: %{y:.4g}<extra></extra>"), 1, 2)
    fig.update_xaxes(title_text="time from the run's start (s)", row=1, col=1)
    fig.update_yaxes(title_text="power (W)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text=figure, row=1, col=2)
    fig.update_layout(title=p._esc(title), template="plotly_white", hovermode="x unified")
    return fig
