"""N runs side by side (2 to 10): every figure with the best and the worst run, the spread
(max / min) and the standard deviation across the runs, and a warning when the runs'
numbers carry different labels (measured / estimated / simulated) or come from different
sources.  Numbers only: the dashboard's ``/compare`` page and ``/api/compare`` draw and
serve this, and the CLI can print it.

>>> from energyprof.analysis.multi import compare_runs
>>> r = compare_runs([{"run_id": 1, "energy_j": 10.0, "source_label": "measured"},
...                   {"run_id": 2, "energy_j": 20.0, "source_label": "measured"},
...                   {"run_id": 3, "energy_j": 40.0, "source_label": "simulated"}], figures=["energy_j"])
>>> e = r["figures"]["energy_j"]
>>> e["best"], e["worst"], e["spread"], round(e["sigma"], 3)
(0, 2, 4.0, 15.275)
>>> r["label_mismatch"], r["labels"]
(True, ['measured', 'measured', 'simulated'])
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

from ..store.rundata import _float
from .efficiency import FIGURE_UNITS, _summary_of, figure_value

__all__ = ["compare_runs", "MULTI_FIGURES", "MIN_RUNS", "MAX_RUNS", "BETTER"]

MIN_RUNS, MAX_RUNS = 2, 10

#: The figures compared by default, in table order.
MULTI_FIGURES = ("j_per_output_token", "j_per_token", "tokens_per_j", "energy_j", "net_energy_j", "duration_s",
                 "tokens_per_s", "mean_power_w", "peak_power_w", "baseline_power_w", "edp_js",
                 "prefill_energy_j", "decode_energy_j", "prefill_j_per_input_token", "decode_j_per_output_token",
                 "input_tokens", "output_tokens")

#: Which way is better for a figure: "lower" or "higher" (figures not listed have no best or worst).
BETTER = {
    "j_per_output_token": "lower", "j_per_token": "lower", "tokens_per_j": "higher", "energy_j": "lower",
    "net_energy_j": "lower", "duration_s": "lower", "tokens_per_s": "higher", "mean_power_w": "lower",
    "peak_power_w": "lower", "baseline_power_w": "lower", "edp_js": "lower", "prefill_energy_j": "lower",
    "decode_energy_j": "lower", "prefill_j_per_input_token": "lower", "decode_j_per_output_token": "lower",
    "net_j_per_output_token": "lower",
}


def _value(s: Dict[str, Any], name: str) -> float:
    try:
        return float(figure_value(s, name))
    except (KeyError, TypeError, ValueError):
        return float("nan")


def _stats(values: List[float], better: Optional[str]) -> Dict[str, Any]:
    """best / worst (indices), min, max, spread (max / min), mean and sigma (sample
    standard deviation, n - 1) over the finite values."""
    idx = [i for i, v in enumerate(values) if math.isfinite(v)]
    out: Dict[str, Any] = {"n": len(idx), "best": None, "worst": None, "min": float("nan"),
                           "max": float("nan"), "spread": float("nan"), "mean": float("nan"),
                           "sigma": float("nan")}
    if not idx:
        return out
    fin = [values[i] for i in idx]
    lo, hi = min(fin), max(fin)
    out["min"], out["max"] = lo, hi
    out["mean"] = sum(fin) / len(fin)
    if len(fin) > 1:
        out["sigma"] = math.sqrt(sum((v - out["mean"]) ** 2 for v in fin) / (len(fin) - 1))
    if lo > 0:
        out["spread"] = hi / lo
    elif lo == hi == 0:
        out["spread"] = 1.0
    if better in ("lower", "higher") and len(fin) > 1 and hi != lo:
        i_lo = idx[fin.index(lo)]
        i_hi = idx[fin.index(hi)]
        out["best"], out["worst"] = (i_lo, i_hi) if better == "lower" else (i_hi, i_lo)
    return out


def compare_runs(runs: Sequence[Any], figures: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Compare 2 to 10 runs (RunData, sessions or summary dicts) figure by figure.

    Returns ``{"run_ids", "names", "labels", "sources", "label_mismatch",
    "source_mismatch", "warnings": [text], "resolution": [summary["resolution"] or None],
    "uncertainty": [...], "figures": {name: {"unit", "better", "values": [one per run],
    "best", "worst" (run indices, None where the figure has no direction or all runs
    agree), "min", "max", "spread" (max / min; NaN when min <= 0), "mean", "sigma"
    (sample standard deviation across the runs), "n" (runs with a value)}}}``.

    ``figures`` are names :func:`energyprof.analysis.efficiency.figure_value` understands
    (default :data:`MULTI_FIGURES`).  Raises ValueError for fewer than 2 or more than 10 runs.
    """
    runs = list(runs)
    if not MIN_RUNS <= len(runs) <= MAX_RUNS:
        raise ValueError(f"compare {MIN_RUNS} to {MAX_RUNS} runs, got {len(runs)}")
    sums = [_summary_of(r) for r in runs]
    labels = [str(s.get("source_label") or "unknown").lower() for s in sums]
    sources = [str(s.get("source_kind") or s.get("source") or "unknown") for s in sums]
    names = [str(s.get("name") or (f"run {s['run_id']}" if s.get("run_id") is not None else f"run #{i + 1}"))
             for i, s in enumerate(sums)]
    warnings: List[str] = []
    label_mismatch = len(set(labels)) > 1
    if label_mismatch:
        parts = ", ".join(f"{n}: {lab}" for n, lab in zip(names, labels))
        warnings.append(f"the runs' numbers carry different labels ({parts}): a measurement next to an "
                        f"estimate or a simulation is not a like-for-like comparison")
    source_mismatch = len(set(sources)) > 1
    if source_mismatch:
        warnings.append(f"the runs come from different power sources ({', '.join(sorted(set(sources)))}): "
                        f"their domains and sample periods differ")
    out_figures: Dict[str, Any] = {}
    for name in (figures or MULTI_FIGURES):
        values = [_value(s, name) for s in sums]
        better = BETTER.get(name)
        entry = {"unit": FIGURE_UNITS.get(name, "token" if name.endswith("_tokens") else ""), "better": better,
                 "values": values}
        entry.update(_stats(values, better))
        out_figures[name] = entry
    return {
        "run_ids": [s.get("run_id") for s in sums],
        "names": names,
        "labels": labels,
        "sources": sources,
        "label_mismatch": label_mismatch,
        "source_mismatch": source_mismatch,
        "warnings": warnings,
        "sample_period_s": [_float(s.get("sample_period_s")) for s in sums],
        "resolution": [s.get("resolution") for s in sums],
        "uncertainty": [s.get("uncertainty") for s in sums],
        "figures": out_figures,
    }
