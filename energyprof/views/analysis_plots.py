"""Figures of the analyses (matplotlib): efficiency, architecture scaling, group comparison,
sweeps (batch and context scaling, the Pareto frontier) and the predictor's cross-validation.

The numbers come from :mod:`energyprof.analysis`; this module only draws them.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Tuple

import numpy as np

from ..analysis.efficiency import FIGURE_UNITS, efficiency
from ..analysis.stats import OLSResult
from ..analysis.sweep import SweepResult, batch_scaling, context_scaling, pareto_frontier
from .plot import _mpl_fig as _plot_fig

__all__ = ["plot_architecture_scaling", "plot_efficiency", "plot_compare_groups", "plot_batch_scaling",
           "plot_context_scaling", "plot_pareto", "plot_predictions"]


def _mpl_fig(w: float = 7.0, h: float = 4.5):
    return _plot_fig(w, h)


def plot_architecture_scaling(result: Dict[str, Any], feature: str):
    """Scatter of the figure against one feature with the fitted line and its 95 % band
    (``result`` from :func:`architecture_scaling`); returns a matplotlib Figure."""
    entry = result["features"].get(feature)
    if entry is None or "fit" not in entry:
        raise ValueError(f"no fit for feature {feature!r} in this result")
    fit: OLSResult = entry["fit"]
    x, y = entry["x"], entry["y"]
    fig = _mpl_fig()
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(x, y, color="#1f77b4", label="runs")
    grid = np.linspace(float(np.min(x)), float(np.max(x)), 100)
    yhat, band = fit.predict(np.column_stack([np.ones_like(grid), grid]), interval="confidence")
    ax.plot(grid, yhat, color="#d62728", label=f"fit (R² = {fit.r2:.3f})")
    ax.fill_between(grid, band[:, 0], band[:, 1], color="#d62728", alpha=0.15, label="95 % CI")
    pre = "log " if result.get("log") else ""
    ax.set_xlabel(pre + feature)
    ax.set_ylabel(f"{pre}{result['figure']} [{result['unit']}]")
    ax.set_title(f"{result['figure']} vs {feature}")
    ax.legend()
    return fig


def plot_efficiency(run: Any, net: bool = False):
    """Energy per token of one run: prefill J per input token next to decode J per output token
    (with its 95 % interval from the per-step rows) and the whole run's J per output token;
    returns a matplotlib Figure."""
    e = efficiency(run, net=net)
    names = [("prefill_j_per_input_token", "prefill\nper input token"),
             ("decode_j_per_output_token", "decode\nper output token"),
             ("j_per_output_token", "whole run\nper output token")]
    vals = [e[k]["value"] for k, _ in names]
    err = [0.0 if math.isnan(e[k]["ci95"][1]) else e[k]["ci95"][1] - e[k]["value"] for k, _ in names]
    fig = _mpl_fig(6.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(3), vals, yerr=err, capsize=6, color=["#a6d0f2", "#b9e3b0", "#cccccc"])
    ax.set_xticks(range(3), labels=[lbl for _, lbl in names])
    ax.set_ylabel("J/token" + (" (above idle)" if net else ""))
    r = e["output_to_input_token_energy"]["value"]
    ax.set_title(f"energy per token (output/input = {r:.3g}×)")
    return fig


def plot_compare_groups(result: Dict[str, Any], labels: Tuple[str, str] = ("a", "b")):
    """Bar chart of the two groups' means with 95 % intervals (``result`` from
    :func:`compare_groups`); returns a matplotlib Figure."""
    fig = _mpl_fig(5.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    means = [result["a"]["mean"], result["b"]["mean"]]
    hw = [result["a"]["half_width"], result["b"]["half_width"]]
    ax.bar([0, 1], means, yerr=[0 if math.isnan(h) else h for h in hw], color=["#1f77b4", "#ff7f0e"], capsize=6)
    ax.set_xticks([0, 1], labels=list(labels))
    ax.set_ylabel(f"{result['figure']} [{result['unit']}]")
    lo, hi = result["ci95"]
    ax.set_title(f"difference {result['diff']:.4g} (95 % CI {lo:.4g} .. {hi:.4g})")
    return fig


def plot_batch_scaling(result_or_runs: Any, figure_name: str = "j_per_output_token"):
    """J/token against batch size, mean ± 95 % CI per grid setting; a matplotlib Figure."""
    bsc = batch_scaling(result_or_runs, figure_name)
    fig = _mpl_fig()
    ax = fig.add_subplot(1, 1, 1)
    settings = sorted({(r["prompt_length"], r["max_new_tokens"]) for r in bsc["rows"]})
    for st in settings:
        rows = [r for r in bsc["rows"] if (r["prompt_length"], r["max_new_tokens"]) == st]
        xb = [r["batch_size"] for r in rows]
        m = np.array([r["mean"] for r in rows])
        err = np.array([(r["ci95"][1] - r["mean"]) if np.isfinite(r["ci95"][1]) else 0.0 for r in rows])
        ax.errorbar(xb, m, yerr=err, marker="o", capsize=4, label=f"prompt {st[0]}, new {st[1]}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel(f"{figure_name} [{bsc['unit']}]")
    title = f"{figure_name} vs batch size"
    if bsc["exponent"] is not None:
        e = bsc["exponent"]
        title += f" (∝ batch^{e['value']:.2f} ± {e['ci95'][1] - e['value']:.2f})"
    ax.set_title(title)
    ax.legend(fontsize="small")
    return fig


def plot_context_scaling(result_or_runs: Any, quadratic: bool = True):
    """Prefill energy against prompt length with the fitted curve and its 95 % band."""
    cs = context_scaling(result_or_runs, quadratic=quadratic)
    fit: OLSResult = cs["fit"]
    fig = _mpl_fig()
    ax = fig.add_subplot(1, 1, 1)
    for b in np.unique(cs["batch_size"]):
        m = cs["batch_size"] == b
        ax.scatter(cs["prompt_length"][m], cs["energy_j"][m], label=f"runs, batch {int(b)}")
        grid = np.linspace(0, float(cs["prompt_length"].max()), 100)
        cols = [np.ones_like(grid), b * grid] + ([b * grid ** 2] if quadratic else [])
        yhat, band = fit.predict(np.column_stack(cols), interval="confidence")
        line = ax.plot(grid, yhat)[0]
        ax.fill_between(grid, band[:, 0], band[:, 1], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("prompt length [tokens per sequence]")
    ax.set_ylabel("prefill energy [J]")
    ax.set_title(f"prefill energy vs prompt length (R² = {cs['r2']:.3f})")
    ax.legend(fontsize="small")
    return fig


def plot_pareto(result_or_table: Any, x: str = "tokens_per_s", y: str = "j_per_output_token"):
    """Throughput against J/token per grid point, with the Pareto frontier drawn."""
    table = result_or_table.table if isinstance(result_or_table, SweepResult) else result_or_table
    front = pareto_frontier(table, x, y)
    fig = _mpl_fig()
    ax = fig.add_subplot(1, 1, 1)
    ax.errorbar(table[x], table[y], xerr=np.nan_to_num(table[x + "_ci95"]), yerr=np.nan_to_num(table[y + "_ci95"]),
                fmt="o", color="#1f77b4", capsize=3, label="grid points (mean ± 95 % CI)")
    ax.plot(table[x][front], table[y][front], "-o", color="#d62728", label="Pareto frontier")
    for r in table:
        ax.annotate(f"b{r['batch_size']} p{r['prompt_length']} n{r['max_new_tokens']}", (r[x], r[y]),
                    fontsize="x-small", xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"{x} [{FIGURE_UNITS.get(x, '')}]")
    ax.set_ylabel(f"{y} [{FIGURE_UNITS.get(y, '')}]")
    ax.set_title("throughput vs energy")
    ax.legend(fontsize="small")
    return fig


def plot_predictions(cv: Dict[str, Any]):
    """Predicted against measured energy of a :func:`cross_validate` result; a matplotlib Figure."""
    fig = _mpl_fig(5.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    a, p = cv["actual"], cv["predicted"]
    ax.scatter(a, p, color="#1f77b4")
    lim = [float(min(a.min(), p.min())), float(max(a.max(), p.max()))]
    ax.plot(lim, lim, color="#888888", linestyle="--", label="y = x")
    ax.set_xlabel("measured energy [J]")
    ax.set_ylabel("predicted energy [J]")
    ax.set_title(f"{cv['k']}-fold CV: MAPE {cv['mape']:.1f} %, RMSE {cv['rmse']:.3g} J")
    ax.legend()
    return fig
