"""Deep-mode figures and the layer × component heatmap with a metric selector.

Kinds of :func:`energyprof.views.plot.plot`: ``ops`` (energy of every op per layer: qk,
softmax, av, the MLP's activation and multiply, the norms' variance / normalise / scale),
``heads`` (a per-head attention statistic, layer × head; entropy by default),
``activations`` (the MLP's kill ratio and each norm's variance ratio per layer, with the
activation sparsity) and ``layers`` (any of :data:`energyprof.analysis.deepstats.METRICS`
over layer × component; in plotly a dropdown switches between the metrics the run has).
The numbers are read from the stored rows by :mod:`energyprof.analysis.deepstats`.
Cells whose calls are not all resolved (shorter than one power sample) are marked with a dot.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from ..analysis import deepstats as _ds
from ..errors import NoDataError

__all__ = ["ops_fig", "heads_fig", "activations_fig", "layers_fig", "available_metrics"]


def _p():
    from . import plot as p

    return p


def _need_data(fn, *a, **kw):
    try:
        return fn(*a, **kw)
    except ValueError as e:
        raise NoDataError(str(e)) from e


def _marks(res_share: Optional[np.ndarray]):
    """(row, col) of the cells that are not fully resolved."""
    if res_share is None:
        return np.zeros(0, int), np.zeros(0, int)
    r = np.asarray(res_share, float)
    return np.nonzero(np.isfinite(r) & (r < 1.0))


def _heat(backend: str, z, xlabels, ylabels, title: str, xlabel: str, cbar: str, res_share=None, ylabel="layer"):
    p = _p()
    if backend == "matplotlib":
        fig = p._heat_mpl(z, xlabels, ylabels, title, xlabel, cbar)
        ax = fig.axes[0]
        ax.set_ylabel(ylabel)
        rows, cols = _marks(res_share)
        if len(rows):
            ax.scatter(cols, rows, s=6, c="white", edgecolors="black", linewidths=0.3,
                       label="not all calls resolved")
            ax.legend(loc="upper right", fontsize=6)
        return fig
    fig = p._heat_plotly(z, xlabels, ylabels, title, xlabel, cbar)
    fig.data[0].hovertemplate = "%{y}, %{x}: %{z:.4g} " + p._esc(cbar) + "<extra></extra>"
    _add_marks(fig, res_share, xlabels, ylabels)
    return fig


def _add_marks(fig, res_share, xlabels, ylabels) -> None:
    go = _p()._need("plotly")
    rows, cols = _marks(res_share)
    if len(rows):
        fig.add_trace(go.Scatter(x=[_p()._esc(xlabels[c]) for c in cols], y=[f"layer {ylabels[r]}" for r in rows],
                                 mode="markers", marker=dict(symbol="circle-open", size=6, color="white"),
                                 name="not all calls resolved", hoverinfo="skip"))


def ops_fig(run: Any, backend: str, s: Dict[str, Any], metric: str = "energy_j"):
    """Energy (or time) of every op per layer."""
    p = _p()
    d = _need_data(_ds.op_matrix, run, metric=metric or "energy_j")
    what = "Energy" if d["metric"] == "energy_j" else "Time"
    return _heat(backend, d["value"], d["ops"], d["layers"], p._title(f"{what} of the ops inside each layer", s),
                 "op", f"{d['metric'].split('_')[0]} ({d['unit']})", d["resolved_share"])


def heads_fig(run: Any, backend: str, s: Dict[str, Any], metric: str = "entropy"):
    """A per-head attention statistic as a layer × head heatmap (entropy in nats by default)."""
    p = _p()
    d = _need_data(_ds.head_matrix, run, metric=metric or "entropy")
    names = {"entropy": "Attention entropy", "max_weight": "Largest attention weight",
             "sparsity": "Attention sparsity"}
    return _heat(backend, d["value"], d["heads"], d["layers"],
                 p._title(f"{names[d['metric']]} per layer and head", s), "head", f"{d['metric']} ({d['unit']})")


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


def available_metrics(run: Any) -> List[str]:
    """The metrics of :data:`~energyprof.analysis.deepstats.METRICS` the run has a value for."""
    out = []
    for m in _ds.METRICS:
        try:
            d = _ds.layer_component_matrix(run, m)
        except ValueError:
            return []
        if np.isfinite(d["value"]).any():
            out.append(m)
    return out


def layers_fig(run: Any, backend: str, s: Dict[str, Any], metric: Optional[str] = None):
    """The layer × component heatmap of ``metric`` (default energy); in plotly a dropdown
    offers every metric the run has (energy, time, power, and in deep mode each statistic)."""
    p = _p()
    metric = metric or "energy_j"
    if metric not in _ds.METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(_ds.METRICS)}")
    d = _need_data(_ds.layer_component_matrix, run, metric)

    def label(m):
        unit = _ds.METRICS[m][0]
        return f"{m} ({unit})" if unit != "1" else m

    title = p._title(f"{label(metric)} per layer and component (all steps)", s)
    if backend == "matplotlib":
        return _heat(backend, d["value"], d["components"], d["layers"], title, "component", label(metric),
                     d["resolved_share"])
    fig = _heat(backend, d["value"], d["components"], d["layers"], title, "component", label(metric),
                d["resolved_share"])
    metrics = available_metrics(run)
    if len(metrics) > 1:
        buttons = []
        for m in metrics:
            z = _ds.layer_component_matrix(run, m)["value"]
            buttons.append(dict(label=m, method="update",
                                args=[{"z": [z.tolist()], "colorbar.title.text": [label(m)]},
                                      {"title.text": p._title(f"{label(m)} per layer and component (all steps)", s)},
                                      [0]]))
        fig.update_layout(updatemenus=[dict(buttons=buttons, direction="down", x=0.0, xanchor="left", y=-0.32,
                                            yanchor="top", active=metrics.index(metric) if metric in metrics else 0,
                                            showactive=True, pad=dict(t=0))],
                          annotations=[dict(text="metric:", x=0.0, xref="paper", xanchor="right", y=-0.34,
                                            yref="paper", yanchor="top", showarrow=False)],
                          margin=dict(b=110))
    return fig
