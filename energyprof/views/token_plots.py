"""Per-token figures: the per-step component stack with the cumulative energy, the
distribution of per-token energy with the dearest and cheapest tokens, decode J/token
against the context length, and a MoE run's routing.

Drawn through :func:`energyprof.views.plot.plot` (kinds ``token_components``,
``token_hist``, ``context``, ``moe``); the numbers come from
:mod:`energyprof.analysis.tokens` and :mod:`energyprof.analysis.moe`.  Every per-token
figure marks what is unresolved (a window shorter than one power sample, its energy
interpolated): hatched / faded bars, hollow points, a separate histogram series.
"""
from __future__ import annotations

import math
from typing import Any, Dict

import numpy as np

from ..analysis import moe as _moe
from ..analysis import tokens as _tok
from ..errors import NoDataError

__all__ = ["token_components_fig", "token_hist_fig", "context_fig", "moe_fig", "GROUP_COLORS"]

#: Colours of the per-step stack.
GROUP_COLORS = {"attention": "#1f77b4", "mlp": "#2ca02c", "norms": "#9467bd", "other": "#bbbbbb"}
_UNRES = "unresolved (shorter than one power sample: interpolated)"


def _p():
    from . import plot as p

    return p


def _need_data(fn, *a, **kw):
    try:
        return fn(*a, **kw)
    except ValueError as e:
        raise NoDataError(str(e)) from e


def _resolved_note(share: float) -> str:
    return f"{100 * share:.0f}% of the steps resolved"


# ---- per-step component stack
def token_components_fig(run: Any, backend: str, s: Dict[str, Any]):
    """Stacked attention / MLP / norms / other per decode step, the cumulative energy on a
    second axis; unresolved steps hatched (matplotlib) or faded with an x marker (plotly)."""
    p = _p()
    d = _need_data(_tok.token_components, run)
    steps, res = d["step"], d["resolved"]
    share = float(np.mean(res))
    bins = p.step_bins(len(steps), p.MAX_STEP_POINTS)
    note, width = "", 0.8
    if bins is not None:   # consecutive steps in bins: each bar the mean per step, the cumulative at its end
        first, last = p.bin_ends(bins)
        d = dict(d, **{g: p.bin_mean(d[g], bins) for g in d["groups"]}, cumulative_j=d["cumulative_j"][last])
        note = p.binned_text(len(steps), bins)
        width = float(np.median(np.diff(steps[first]))) if len(first) > 1 else 0.8
        steps, res = steps[first], p.bin_resolved(res, bins)
    title = p._title(f"Energy per decode step by component ({_resolved_note(share)}){note}", s)
    if backend == "matplotlib":
        fig = p._mpl_fig(10, 4.5)
        ax = fig.add_subplot()
        bottom = np.zeros(len(steps))
        for g in d["groups"]:
            v = np.nan_to_num(d[g])
            bars = ax.bar(steps, v, width, bottom=bottom, align="edge" if note else "center",
                          color=GROUP_COLORS[g], label=g, edgecolor="#333333", lw=0.3)
            for b, ok in zip(bars, res):
                if not ok:
                    b.set_hatch("//")
                    b.set_alpha(0.55)
            bottom += v
        ax2 = ax.twinx()
        ax2.plot(steps, d["cumulative_j"], color="#d62728", marker=".", lw=1.2, label="cumulative (J)")
        ax2.set_ylabel("cumulative energy (J)")
        ax.set_xlabel("decode step")
        ax.set_ylabel("energy per step (J)")
        if not res.all():
            ax.bar([], [], color="white", edgecolor="#333333", hatch="//", label=_UNRES)
        ax.legend(loc="upper left", fontsize=7)
        ax.set_title(title)
        return fig
    go = p._need("plotly")
    fig = go.Figure()
    op = [1.0 if ok else 0.45 for ok in res]
    for g in d["groups"]:
        fig.add_trace(go.Bar(x=steps, y=d[g], name=g, marker_color=GROUP_COLORS[g], marker_opacity=op,
                             customdata=np.where(res, "resolved", "unresolved"),
                             hovertemplate="step %{x}: %{y:.4g} J (%{customdata})<extra>" + g + "</extra>"))
    fig.add_trace(go.Scatter(x=steps, y=d["cumulative_j"], name="cumulative (J)", yaxis="y2", mode="lines+markers",
                             line=dict(color="#d62728")))
    if not res.all():
        fig.add_trace(go.Scatter(x=steps[~res], y=np.zeros(int((~res).sum())), mode="markers", name=_UNRES,
                                 marker=dict(symbol="x", color="#b22222", size=8)))
    fig.update_layout(title=title, barmode="stack", xaxis_title="decode step", yaxis_title="energy per step (J)",
                      yaxis2=dict(title="cumulative energy (J)", overlaying="y", side="right"),
                      template="plotly_white", legend=dict(orientation="h", y=-0.25))
    return fig


# ---- histogram of per-token energy
def _extreme_lines(d: Dict[str, Any]) -> list:
    def fmt(r):
        text = repr(r["text"]) if r["text"] else "(no text stored)"
        return f"step {r['step']}: {r['j_per_token']:.4g} J {text}" + ("" if r["resolved"] else " *")

    lines = ["highest:"] + [fmt(r) for r in d["highest"]] + ["lowest:"] + [fmt(r) for r in d["lowest"]]
    if not all(r["resolved"] for r in d["highest"] + d["lowest"]):
        lines.append("* unresolved")
    return lines


def token_hist_fig(run: Any, backend: str, s: Dict[str, Any], bins: int = 20):
    """Histogram of per-token energy (resolved and unresolved steps stacked apart), with the
    highest and lowest tokens listed with their text."""
    p = _p()
    d = _need_data(_tok.token_energy_distribution, run, bins=bins)
    jpt, res, edges = d["j_per_token"], d["resolved"], d["edges"]
    ok = np.isfinite(jpt)
    title = p._title(f"Distribution of per-token energy ({_resolved_note(d['resolved_share'])})", s)
    lines = _extreme_lines(d)
    if backend == "matplotlib":
        fig = p._mpl_fig(10, 4.5)
        ax, axt = fig.subplots(1, 2, width_ratios=[3, 2])
        ax.hist([jpt[ok & res], jpt[ok & ~res]], bins=edges if len(edges) > 1 else bins, stacked=True,
                color=["#1f77b4", "#c9c9c9"], label=["resolved", _UNRES], edgecolor="#333333", lw=0.4)
        ax.set_xlabel("energy per token (J)")
        ax.set_ylabel("decode steps")
        ax.legend(fontsize=7)
        ax.set_title(title, fontsize=10)
        axt.axis("off")
        axt.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", fontsize=7, family="monospace",
                 transform=axt.transAxes)
        return fig
    go = p._need("plotly")
    fig = go.Figure()
    series = ((ok & res, "resolved", "#1f77b4"), (ok & ~res, _UNRES, "#c9c9c9"))
    if len(edges) > 1:   # the counts per bin, not every step's value: the figure's size does not grow with the run
        centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
        for sel, name, color in series:
            counts, _ = np.histogram(jpt[sel], bins=edges)
            fig.add_trace(go.Bar(x=centers, y=counts, width=width, name=name, marker_color=color,
                                 hovertemplate="%{x:.4g} J: %{y} steps<extra></extra>"))
    else:
        for sel, name, color in series:
            fig.add_trace(go.Histogram(x=jpt[sel], name=name, marker_color=color))
    fig.add_annotation(text="<br>".join(p._esc(x) for x in lines), xref="paper", yref="paper", x=1.02, y=1.0,
                       showarrow=False, align="left", xanchor="left", yanchor="top", font=dict(size=10))
    fig.update_layout(title=title, barmode="stack", xaxis_title="energy per token (J)", yaxis_title="decode steps",
                      template="plotly_white", margin=dict(r=320))
    return fig


# ---- J/token against context length
def context_fig(run: Any, backend: str, s: Dict[str, Any]):
    """Decode J/token against the context length (prompt + step), with the least-squares line;
    unresolved steps hollow (and left out of the fit when enough steps are resolved)."""
    p = _p()
    d = _tok.context_cost(run)
    if not len(d["context"]):
        raise NoDataError("the run has no decode steps: nothing to draw against the context length")
    x, y, res = d["context"], d["j_per_token"], d["resolved"]
    bins = p.step_bins(len(x), p.MAX_STEP_POINTS)
    note = ""
    if bins is not None:   # steps in bins (the fit above used every step): mean context, mean J/token
        note = p.binned_text(len(x), bins)
        x, y, res = p.bin_mean(x, bins), p.bin_mean(y, bins), p.bin_resolved(res, bins)
    if "slope" in d:
        sl = d["slope"]
        fit_txt = (f"slope {sl['value']:.3g} ± {sl['se']:.2g} J/token per context token, R² {d['r2']:.2f}, "
                   f"n={d['n']}{' (resolved steps)' if d['resolved_only'] else ''}")
    else:
        fit_txt = d["error"]
    title = p._title("Decode energy per token against the context length" + note, s)
    xs = np.array([np.nanmin(x), np.nanmax(x)]) if len(x) else np.zeros(0)
    line = (d["intercept"]["value"] + d["slope"]["value"] * xs) if "slope" in d else None
    if backend == "matplotlib":
        fig = p._mpl_fig(9, 4.2)
        ax = fig.add_subplot()
        ax.scatter(x[res], y[res], color="#1f77b4", s=18, label="resolved step")
        ax.scatter(x[~res], y[~res], facecolors="none", edgecolors="#1f77b4", s=18, label=_UNRES)
        if line is not None:
            ax.plot(xs, line, color="#d62728", lw=1.2, label="least-squares line")
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("energy per token (J)")
        ax.set_title(title + "\n" + fit_txt, fontsize=9)
        ax.legend(fontsize=7)
        return fig
    go = p._need("plotly")
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x[res], y=y[res], mode="markers", name="resolved step", marker=dict(color="#1f77b4")))
    fig.add_trace(go.Scatter(x=x[~res], y=y[~res], mode="markers", name=_UNRES,
                             marker=dict(color="#1f77b4", symbol="circle-open")))
    if line is not None:
        fig.add_trace(go.Scatter(x=xs, y=line, mode="lines", name="least-squares line", line=dict(color="#d62728")))
    fig.update_layout(title=title + "<br><sup>" + p._esc(fit_txt) + "</sup>", xaxis_title="context length (tokens)",
                      yaxis_title="energy per token (J)", template="plotly_white")
    return fig


# ---- MoE routing
def moe_fig(run: Any, backend: str, s: Dict[str, Any]):
    """Tokens routed to each expert per layer (heatmap) and each expert's energy (bars; an
    estimate where fused experts were split by routed tokens, as the title says)."""
    p = _p()
    r = _need_data(_moe.routing, run)
    layers = [row["layer"] for row in r["layers"]]
    experts = list(range(r["n_experts"]))
    z = np.array([row["tokens_routed"] for row in r["layers"]], dtype=float)
    e = np.array([row["expert_energy_j"] for row in r["layers"]], dtype=float)
    labels = {row["expert_energy_label"] for row in r["layers"] if row["expert_energy_label"]}
    est = any(str(lab).startswith("estimated") for lab in labels)
    etitle = "Energy per expert, all layers" + (" [ESTIMATE: fused experts split by routed tokens]" if est else "")
    title = p._title("MoE routing: tokens per expert and layer", s)
    tot = np.nansum(e, axis=0) if e.size else np.zeros(len(experts))
    if backend == "matplotlib":
        fig = p._mpl_fig(11, 4.2)
        a1, a2 = fig.subplots(1, 2)
        im = a1.imshow(z, aspect="auto", cmap="viridis", interpolation="nearest")
        a1.set_xticks(range(len(experts)), [str(x) for x in experts])
        a1.set_yticks(range(len(layers)), [str(x) for x in layers])
        a1.set_xlabel("expert")
        a1.set_ylabel("layer")
        a1.set_title(title, fontsize=9)
        fig.colorbar(im, ax=a1, label="tokens routed")
        a2.bar(experts, tot, color="#ff7f0e", hatch="//" if est else None, edgecolor="#333333")
        a2.set_xlabel("expert")
        a2.set_ylabel("energy (J)")
        a2.set_title(etitle, fontsize=8)
        return fig
    go = p._need("plotly")
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("tokens routed per (layer, expert)", p._esc(etitle)))
    fig.add_trace(go.Heatmap(z=z, x=[f"expert {x}" for x in experts], y=[f"layer {x}" for x in layers],
                             colorscale="Viridis", colorbar=dict(title="tokens", x=0.45)), 1, 1)
    fig.add_trace(go.Bar(x=[f"expert {x}" for x in experts], y=tot, name="energy (J)", marker_color="#ff7f0e",
                         marker_pattern_shape="/" if est else ""), 1, 2)
    fig.update_layout(title=title, template="plotly_white", showlegend=False)
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    return fig


def _finite(v: float) -> bool:
    return isinstance(v, float) and math.isfinite(v)
