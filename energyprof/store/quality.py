"""How well each number of a run was measured: resolution, independent samples, systematic error.

A power sensor gives one value per sample.  A window shorter than a sample (a token, a
layer call) gets the sample's mean power times its duration: its energy is *split by
time* within the sample, right only where power is constant inside it.  This module
turns a run's rows into the figures that say so, for the session, the store, the
analyses and the views alike:

* :func:`resolution_summary` / :func:`resolution_of`: ``summary()["resolution"]``, the
  resolved share of phases, tokens and calls with the sample period and a note;
* :func:`sample_blocks` and :func:`block_ratio`: statistics that count independent
  samples, not rows sharing one (rows whose midpoints fall in one sample form a block);
* :func:`uncertainty_summary`: ``summary()["uncertainty"]``, the source's stated
  systematic error applied to the run's energy.

>>> import numpy as np
>>> r, se, k = block_ratio(np.array([1.0, 1.0, 3.0, 3.0]), np.ones(4), np.array([0, 0, 1, 1]))
>>> r, k
(2.0, 2)
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .groups import unique_inverse

NAN = float("nan")

__all__ = ["resolution_summary", "resolution_of", "resolution_lines", "period_text", "sample_blocks",
           "block_ratio", "grouped_block_stats", "uncertainty_summary", "uncertainty_text", "uncertainty_of"]


def _f(v: Any) -> float:
    try:
        return float(v) if v is not None else NAN
    except (TypeError, ValueError):
        return NAN


def period_text(period_s: Any) -> str:
    """A sample period for people: ``0.1`` -> ``"100 ms"``; NaN -> ``"unknown"``."""
    p = _f(period_s)
    if not math.isfinite(p) or p <= 0:
        return "unknown"
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if p >= scale:
            return f"{p / scale:.3g} {unit}"
    return f"{p * 1e9:.3g} ns"


def _share(resolved: Any) -> Tuple[float, int]:
    """(share resolved, rows) of a bool array, or of a ``(resolved, rows)`` count pair."""
    if resolved is None:
        return NAN, 0
    if isinstance(resolved, tuple):
        k, n = int(resolved[0]), int(resolved[1])
        return (k / n if n else NAN), n
    r = np.asarray(resolved, dtype=bool)
    return (float(r.mean()) if len(r) else NAN), int(len(r))


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100.0 * x:.0f} %"


_WHAT = {"phases": "phase", "tokens": "per-token", "calls": "per-call"}


def resolution_lines(res: Dict[str, Any]) -> List[str]:
    """One line per kind of row, e.g. ``"tokens: 2 % resolved (100 ms samples; per-token energy
    is split by time)"``, plus one for boundary reads (what they resolve and how far a resolved
    row can be off, ``res["boundary"]``) and one for gaps when the run had any."""
    period = period_text(res.get("sample_period_s"))
    out = []
    for key in ("phases", "tokens", "calls"):
        n = res.get(f"n_{key}")
        share = _f(res.get(key))
        if n == 0 or (n is None and not math.isfinite(share)):
            continue
        line = f"{key}: {_pct(share)} resolved"
        if not (share >= 1.0):
            line += f" ({period} samples; {_WHAT[key]} energy is split by time within a sample)"
        out.append(line)
    if res.get("boundary"):
        out.append(f"boundary reads: {res['boundary']}")
    gaps = res.get("gaps") or {}
    if gaps.get("n"):
        out.append(f"gaps: {gaps['n']} in the run, {_f(gaps.get('bridged_s')):.3g} s bridged by interpolation, "
                   f"{_f(gaps.get('long_s')):.3g} s longer than {_f(gaps.get('max_bridge_s')):.3g} s "
                   "(tokens and calls there are unknown)")
    return out


def resolution_summary(sample_period_s: float, phases_resolved: Optional[np.ndarray] = None,
                       tokens_resolved: Optional[np.ndarray] = None, calls_resolved: Optional[np.ndarray] = None,
                       gaps: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """``summary()["resolution"]``: the resolved share (mean of the rows' ``resolved``) of the
    phases, tokens and calls, the sample period, gaps, and a one-line ``note``.  Each of the
    three is a bool array or a ``(resolved, rows)`` count pair (calls built in pieces).

    A share is NaN where the run has no such rows (``n_<kind>`` is 0).

    >>> r = resolution_summary(0.1, [True], [True] + [False] * 49, [])
    >>> r["tokens"], r["n_calls"]
    (0.02, 0)
    >>> r["note"]
    'phases 100 %, tokens 2 % resolved (100 ms samples); inside a sample energy is split by time, so finer figures are time shares of its energy'
    """
    out: Dict[str, Any] = {"sample_period_s": _f(sample_period_s)}
    for key, arr in (("phases", phases_resolved), ("tokens", tokens_resolved), ("calls", calls_resolved)):
        out[key], out[f"n_{key}"] = _share(arr)
    if gaps is not None:
        out["gaps"] = dict(gaps)
    parts = [f"{k} {_pct(out[k])}" for k in ("phases", "tokens", "calls") if out[f"n_{k}"]]
    note = (", ".join(parts) + " resolved" if parts else "no rows") + f" ({period_text(sample_period_s)} samples)"
    if any(out[f"n_{k}"] and not (out[k] >= 1.0) for k in ("phases", "tokens", "calls")):
        note += "; inside a sample energy is split by time, so finer figures are time shares of its energy"
    out["note"] = note
    return out


def resolution_of(run: Any) -> Dict[str, Any]:
    """A run's resolution dict: ``summary()["resolution"]`` when the run has one, else
    computed from its rows (runs recorded before energyprof kept it)."""
    s = run.summary() if callable(getattr(run, "summary", None)) else dict(run or {})
    res = s.get("resolution")
    if isinstance(res, dict) and "note" in res:
        return res
    sec = getattr(run, "sections", None)
    phases = sec["resolved"][sec["kind"] == "phase"] if sec is not None and len(sec) else None
    tok = getattr(run, "tokens", None)
    calls = [a["resolved"] for a in (getattr(run, n, None) for n in ("layers", "components", "ops"))
             if a is not None and len(a)]
    return resolution_summary(_f(s.get("sample_period_s")), phases,
                              tok["resolved"] if tok is not None else None,
                              np.concatenate(calls) if calls else None)


# --------------------------------------------------------------------------- independent samples
def sample_blocks(t_start_ns: np.ndarray, t_end_ns: np.ndarray, samples: Optional[np.ndarray] = None,
                  sample_period_s: float = NAN, t_origin_ns: int = 0) -> np.ndarray:
    """A block id per row: the power sample its window's midpoint falls in.

    Rows in one block share that sample's reading, so they are one measurement, not
    several.  ``samples`` is the sample array or just its ``t_start_ns``.  With it the id is the index of the last sample starting at or
    before the midpoint; without, the midpoint's period number counted from
    ``t_origin_ns``; with neither, every row is its own block.
    """
    a = np.asarray(t_start_ns, dtype=np.int64)
    b = np.asarray(t_end_ns, dtype=np.int64)
    mid = a + (b - a) // 2
    if samples is not None and len(samples):
        starts = samples if samples.dtype.names is None else samples["t_start_ns"]  # samples, or their starts
        return np.searchsorted(np.asarray(starts, dtype=np.int64), mid, side="right") - 1
    p = _f(sample_period_s)
    if math.isfinite(p) and p > 0:
        return np.floor((mid - int(t_origin_ns)) / (p * 1e9)).astype(np.int64)
    return np.arange(len(mid), dtype=np.int64)


def block_ratio(e: np.ndarray, n: np.ndarray, blocks: np.ndarray) -> Tuple[float, float, int]:
    """``sum(e) / sum(n)`` with its standard error over independent blocks (delta method).

    Rows are summed per block first; the standard error is that of a ratio estimate over
    the ``k`` block totals, ``sqrt(sum(d_b^2) / (k (k - 1))) / mean(n_b)`` with
    ``d_b = e_b - r n_b``.  Rows with a NaN ``e`` or ``n <= 0`` are left out.  Returns
    ``(ratio, se, k)``; se is NaN for fewer than two blocks.
    """
    e = np.asarray(e, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    ok = np.isfinite(e) & (n > 0)
    if not ok.any():
        return NAN, NAN, 0
    _, inv = unique_inverse(np.asarray(blocks)[ok])
    eb = np.bincount(inv, weights=e[ok])
    nb = np.bincount(inv, weights=n[ok])
    k = len(eb)
    r = float(eb.sum() / nb.sum())
    if k < 2:
        return r, NAN, k
    d = eb - r * nb
    return r, math.sqrt(float((d ** 2).sum()) / (k * (k - 1))) / float(nb.mean()), k


def grouped_block_stats(e: np.ndarray, groups: np.ndarray, blocks: np.ndarray, n_groups: int
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """Per group: the standard error of the mean of ``e`` and the number of independent
    blocks, by :func:`block_ratio` within each group (one row counts 1).  NaN rows of ``e``
    are left out."""
    e = np.asarray(e, dtype=np.float64)
    g = np.asarray(groups, dtype=np.int64)
    ok = np.isfinite(e)
    se = np.full(n_groups, NAN)
    k = np.zeros(n_groups, dtype=np.int64)
    if not ok.any():
        return se, k
    key = np.stack([g[ok], np.asarray(blocks, dtype=np.int64)[ok]], axis=1)
    uk, inv = unique_inverse(key, axis=0)
    eb = np.bincount(inv, weights=e[ok])
    nb = np.bincount(inv).astype(np.float64)
    bg = uk[:, 0]                                 # the group of each (group, block) cell
    k = np.bincount(bg, minlength=n_groups)
    tot_e = np.bincount(bg, weights=eb, minlength=n_groups)
    tot_n = np.bincount(bg, weights=nb, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = tot_e / tot_n
        d2 = np.bincount(bg, weights=(eb - r[bg] * nb) ** 2, minlength=n_groups)
        se = np.where(k > 1, np.sqrt(d2 / np.maximum(k * (k - 1), 1)) / (tot_n / np.maximum(k, 1)), NAN)
    return se, k


# --------------------------------------------------------------------------- systematic uncertainty
def uncertainty_summary(systematic: Dict[str, Any], energy_j: float, label: Optional[str] = None) -> Dict[str, Any]:
    """``summary()["uncertainty"]``: the source's systematic error (``kind`` relative / factor /
    none, ``value``, ``basis``, ``documented``) with the range it gives the run's energy
    (``energy_j_low``, ``energy_j_high``) and a short ``text``.

    >>> u = uncertainty_summary({"kind": "factor", "value": 2.0, "basis": "a model"}, 10.0, "estimated")
    >>> u["energy_j_low"], u["energy_j_high"], u["text"]
    (5.0, 20.0, '×2 (estimated: a model)')
    """
    kind = str(systematic.get("kind", "unknown"))
    value = _f(systematic.get("value"))
    e = _f(energy_j)
    if kind == "relative":
        lo, hi = e * (1.0 - value), e * (1.0 + value)
        short = f"±{100.0 * value:.3g} %"
    elif kind == "factor":
        lo, hi = (e / value, e * value) if value > 0 else (NAN, NAN)
        short = f"×{value:.3g}"
    elif kind == "none":
        lo = hi = e
        short = "none"
    else:
        lo = hi = NAN
        short = "unknown"
    if lo > hi:  # a negative net figure flips the range
        lo, hi = hi, lo
    basis = str(systematic.get("basis", ""))
    out = dict(systematic)
    out.update({"kind": kind, "value": value, "energy_j_low": lo, "energy_j_high": hi,
                "documented": bool(systematic.get("documented", False)), "basis": basis,
                "text": f"{short} ({label + ': ' if label else ''}{basis})" if basis else short})
    return out


def uncertainty_text(unc: Optional[Dict[str, Any]]) -> str:
    """The short systematic-uncertainty text of a summary (``"not stated"`` when absent)."""
    if not isinstance(unc, dict) or not unc.get("text"):
        return "not stated (run recorded before energyprof kept it)"
    return str(unc["text"]) + ("" if unc.get("documented", True) else " [assumed]")


def uncertainty_of(summary: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """``summary["uncertainty"]`` when present, else None."""
    u = summary.get("uncertainty")
    return u if isinstance(u, dict) else None

