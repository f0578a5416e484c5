"""The ``activations`` figure of a deep-mode run (:func:`energyprof.views.plot.plot`): the
MLP's kill ratio and each norm's variance ratio per layer, with the activation sparsity,
from :func:`energyprof.analysis.deepstats.activation_table`.  The ops and heads heatmaps
and the layer × component metric selector live in :mod:`energyprof.views.plot`.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from ..analysis import deepstats as _ds
from ..errors import NoDataError

__all__ = ["activations_fig"]


def _p():
    from . import plot as p

    return p


def activations_fig(run: Any, backend: str, s: Dict[str, Any]):
    """Per decoder layer: the MLP's kill ratio and the MLP output's sparsity (shares, left), and
    each norm's variance ratio (output over input variance, log scale, right)."""
    p = _p()
    rows = [r for r in _ds.activation_table(run) if r["layer"] >= 0]
    if not rows:
        raise NoDataError("the run has no activation statistics (recorded without mode='deep')")
    shares: Dict[str, List[tuple]] = {}
    ratios: Dict[str, List[tuple]] = {}
    for r in rows:
        if np.isfinite(r["kill_ratio"]):
            shares.setdefault("kill ratio (mlp)", []).append((r["layer"], r["kill_ratio"]))
        if r["component"] in ("mlp", "down_proj") and np.isfinite(r["act_sparsity"]):
            shares.setdefault(f"sparsity ({r['component']} output)", []).append((r["layer"], r["act_sparsity"]))
        if np.isfinite(r["variance_ratio"]) and r["variance_ratio"] > 0:
            ratios.setdefault(f"variance ratio ({r['component']})", []).append((r["layer"], r["variance_ratio"]))
    if not shares and not ratios:
        raise NoDataError("the run has no kill ratios, variance ratios or sparsities to draw")
    deep = s.get("deep") or {}
    title = p._title(f"Activation statistics per layer (kill below {deep.get('kill_below', 1e-3):g}, "
                     f"sparse below {deep.get('sparse_below', 1e-3):g})", s)
    panels = [("share of activations", shares, False), ("variance ratio (out / in)", ratios, True)]
    panels = [x for x in panels if x[1]]
    if backend == "matplotlib":
        fig = p._mpl_fig(11, 4.2)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (ylabel, series, log) in zip(axes, panels):
            for name, pts in series.items():
                xs, ys = zip(*sorted(pts))
                ax.plot(xs, ys, marker="o", ms=3, label=name)
            if log:
                ax.set_yscale("log")
            ax.set_xlabel("layer")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=7)
        fig.suptitle(title, fontsize=9)
        return fig
    go = p._need("plotly")
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[x[0] for x in panels])
    for col, (ylabel, series, log) in enumerate(panels, start=1):
        for name, pts in series.items():
            xs, ys = zip(*sorted(pts))
            fig.add_trace(go.Scatter(x=list(xs), y=list(ys), mode="lines+markers", name=p._esc(name)), 1, col)
        fig.update_xaxes(title_text="layer", dtick=1, row=1, col=col)
        fig.update_yaxes(title_text=ylabel, type="log" if log else "linear", row=1, col=col)
    fig.update_layout(title=title, template="plotly_white")
    return fig
