"""Power per group below the sample period, by regression over many samples.

A sensor that reports one figure per 100 ms cannot say what a 1 ms attention call
costs; the time split (every call gets its sample's average power) is biased towards
that average.  But every sample is one equation over what we hold exactly, the hook
timestamps: its average power is the time-weighted mix of the powers of the groups that
ran inside it,

    p_s = sum_g P_g * t_{s,g} / dt_s,        sum_g t_{s,g} = dt_s,

where ``t_{s,g}`` is the time group ``g`` was the innermost running hooked call within
sample ``s`` ("other" takes the rest: decoder layers outside their parts, the model
between modules, idle time).  Over the samples of many runs (``ep.repeat``, which
dithers the sample phase) the mix varies and the ``P_g`` are solved for by
non-negative least squares, with 95 % confidence intervals from the OLS covariance.
Where the mix does not vary enough (a rank-deficient or badly conditioned design), a
group is reported ``identifiable = False`` with NaN power rather than a number with a
false interval.  docs/methodology.md ("Below the sample period") states the model's
assumptions.

>>> from energyprof.testing import synthetic_run
>>> import energyprof as ep
>>> t = ep.resolve([synthetic_run(seed=s) for s in range(2)], by="layer")
>>> t.dtype.names[:4]
('group', 'power_w', 'ci_low_w', 'ci_high_w')
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .._dtypes import COMPONENT_GROUPS, component_group, measured_domains, total_columns
from ..store.groups import index_of, map_distinct
from .stats import _tcrit, mean_ci

__all__ = ["resolve", "BYS", "RESOLVE_DTYPE", "RESOLVE_LABEL", "design", "phase_intervals"]

#: What ``by`` may be.
BYS = ("component", "layer", "step")
#: The label every resolved table carries.
RESOLVE_LABEL = "estimated by regression"
#: Above this condition number (of the design with unit-norm columns) the fit is called
#: not identifiable: the mix of groups barely varies between samples.
MAX_CONDITION = 1e7

RESOLVE_DTYPE = np.dtype([
    ("group", "U32"),
    ("power_w", "<f8"),          # power drawn while the group runs (NaN: not identifiable)
    ("ci_low_w", "<f8"),         # 95 % confidence interval
    ("ci_high_w", "<f8"),
    ("energy_j", "<f8"),         # power_w x mean time per call (per step for by="step"); NaN for "other"
    ("identifiable", "?"),       # full-rank design for this group and a finite interval
    ("n_calls", "<i8"),          # calls (steps) of the group over all runs
    ("time_s", "<f8"),           # total time the group ran inside the samples used
    ("condition_number", "<f8"), # of the whole design (unit-norm columns); the same on every row
    ("label", "U32"),            # RESOLVE_LABEL
])


def _overlaps(a: np.ndarray, b: np.ndarray, s0: np.ndarray, s1: np.ndarray) -> Tuple[np.ndarray, ...]:
    """(row index, sample index, overlap ns) of every window [a, b) with every sample [s0, s1).

    Samples sorted by start and not overlapping each other (interval samples)."""
    i0 = np.searchsorted(s1, a, side="right")
    i1 = np.searchsorted(s0, b, side="left")
    cnt = np.maximum(i1 - i0, 0)
    rows = np.repeat(np.arange(len(a)), cnt)
    first = np.repeat(np.cumsum(cnt) - cnt, cnt)
    samp = np.repeat(i0, cnt) + (np.arange(cnt.sum()) - first)
    ov = np.minimum(b[rows], s1[samp]) - np.maximum(a[rows], s0[samp])
    keep = ov > 0
    return rows[keep], samp[keep], ov[keep]


def _windows_by(rows: np.ndarray, key: str, prefix: str, res: List, n_calls: Dict[str, int]) -> None:
    """One group per distinct ``rows[key]`` (named prefix + value): its rows' windows, all +1."""
    for v in sorted(set(rows[key].tolist())):
        sel = rows[key] == v
        g = f"{prefix}{v}"
        res.append((g, [(rows["t_start_ns"][sel].astype(np.int64), rows["t_end_ns"][sel].astype(np.int64),
                         np.ones(sel.sum()))]))
        n_calls[g] = int(sel.sum())


def _run_groups(run: Any, by: str) -> Tuple[List[Tuple[np.ndarray, np.ndarray, np.ndarray]], Dict[str, int]]:
    """Windows whose time counts for each group, as (t_start, t_end, group name) with a sign
    (+1 own time, -1 a child's time taken back), and the number of calls per group."""
    parts: List[Tuple[np.ndarray, np.ndarray, np.ndarray]] = []   # (a, b, sign) per group name
    n_calls: Dict[str, int] = {}
    if by == "component":
        tables = (run.layers, run.components)     # the columns it needs, not a copy of the rows
        if sum(len(p) for p in tables) == 0:
            raise ValueError("resolve(by='component') needs runs with component rows (mode='standard' or 'deep')")

        def col(f: str, dtype: Any = np.int64) -> np.ndarray:
            return np.concatenate([np.asarray(p[f], dtype=dtype) for p in tables])

        groups = np.concatenate([map_distinct(p["component"], component_group, "U16") for p in tables])
        pidx = index_of(col("call_id"), col("parent_id"))
        pgroup = np.where(pidx >= 0, groups[np.maximum(pidx, 0)], "")
        a, b = col("t_start_ns"), col("t_end_ns")
        out: Dict[str, List] = {}
        for g in COMPONENT_GROUPS[:-1]:
            own = groups == g
            # A group's time is the sum of its calls' self times: each call's window minus
            # its hooked children's windows; each child's own window goes to its own group
            # (q_proj back to attn, a norm inside the layer to norm).
            back = pgroup == g
            out[g] = [(a[own], b[own], np.ones(own.sum())), (a[back], b[back], -np.ones(back.sum()))]
            n_calls[g] = int((own & (pgroup != g)).sum())
        return [(g, w) for g, w in out.items()], n_calls
    if by == "layer":
        lay = run.layers
        if len(lay) == 0:
            raise ValueError("resolve(by='layer') needs runs with layer rows (mode='standard' or 'deep')")
        res: List = []
        _windows_by(lay, "layer", "layer.", res, n_calls)
        return res, n_calls
    # by == "step": the prefill phase and every decode step's window
    res = []
    sec = run.sections
    pre = sec[(sec["kind"] == "phase") & (sec["name"] == "prefill")]
    if len(pre) and pre["t_end_ns"][0] > pre["t_start_ns"][0]:
        res.append(("prefill", [(pre["t_start_ns"].astype(np.int64), pre["t_end_ns"].astype(np.int64), np.ones(1))]))
        n_calls["prefill"] = 1
    _windows_by(run.tokens, "step", "step.", res, n_calls)
    if not res:
        raise ValueError("resolve(by='step') needs runs with a prefill phase or decode steps")
    return res, n_calls


def design(runs: Sequence[Any], by: str = "component") -> Dict[str, Any]:
    """The regression's inputs: ``{"groups", "X" (time fractions, samples x groups),
    "y_w" (sample power), "dt_s", "time_s" (per group), "n_calls"}`` over every usable
    sample of ``runs`` (interval samples with a finite total power)."""
    if by not in BYS:
        raise ValueError(f"by must be one of {', '.join(BYS)}; got {by!r}")
    runs = list(runs)
    if not runs:
        raise ValueError("resolve needs at least one run")
    per_run = []
    names: List[str] = []
    n_calls: Dict[str, int] = {}
    for run in runs:
        x = run.samples
        if len(x) == 0:
            raise ValueError(f"run {run.run_id}: no samples")
        if np.any(x["kind"] != 1):
            raise ValueError(f"run {run.run_id}: resolve needs interval samples (energy over windows); "
                             "this source gives instant readings")
        order = np.argsort(x["t_start_ns"], kind="stable")
        x = x[order]
        cols = total_columns(measured_domains(x))
        p = np.zeros(len(x))
        for c in cols:
            p = p + x[["cpu_w", "gpu_w", "ane_w", "dram_w", "package_w"][c]]
        groups, nc = _run_groups(run, by)
        for g, k in nc.items():
            n_calls[g] = n_calls.get(g, 0) + k
        for g, _w in groups:
            if g not in names:
                names.append(g)
        per_run.append((x, p, groups))
    if by == "layer":
        names.sort(key=lambda g: int(g.split(".")[1]))
    elif by == "step":
        names.sort(key=lambda g: -1 if g == "prefill" else int(g.split(".")[1]))
    names.append("other")
    n_calls["other"] = 0
    col = {g: i for i, g in enumerate(names)}
    Xs, ys, dts = [], [], []
    for x, p, groups in per_run:
        s0, s1 = x["t_start_ns"].astype(np.int64), x["t_end_ns"].astype(np.int64)
        T = np.zeros((len(x), len(names)))
        for g, windows in groups:
            for a, b, sign in windows:
                if len(a) == 0:
                    continue
                r, s, ov = _overlaps(a, b, s0, s1)
                np.add.at(T[:, col[g]], s, sign[r] * ov)
        dt = (s1 - s0).astype(np.float64)
        T[:, -1] = dt - T[:, :-1].sum(axis=1)
        ok = np.isfinite(p) & (dt > 0)
        Xs.append(T[ok] / dt[ok, None])
        ys.append(p[ok])
        dts.append(dt[ok] / 1e9)
    X = np.concatenate(Xs)
    dt_s = np.concatenate(dts)
    return {"groups": names, "X": X, "y_w": np.concatenate(ys), "dt_s": dt_s,
            "time_s": (X * dt_s[:, None]).sum(axis=0), "n_calls": n_calls}


def _nnls(A: np.ndarray, y: np.ndarray, max_iter: int = 500) -> np.ndarray:
    """Non-negative least squares, min ||A x - y|| with x >= 0 (Lawson and Hanson's active set)."""
    n = A.shape[1]
    x = np.zeros(n)
    free = np.zeros(n, dtype=bool)
    tol = 1e-12 * max(1.0, float(np.abs(A).max()) * float(np.abs(y).max() if len(y) else 1.0)) * len(y)
    for _ in range(max_iter):
        w = A.T @ (y - A @ x)
        cand = ~free & (w > tol)
        if not cand.any():
            break
        free[np.argmax(np.where(cand, w, -np.inf))] = True
        while True:
            z = np.zeros(n)
            z[free] = np.linalg.lstsq(A[:, free], y, rcond=None)[0]
            if np.all(z[free] > 0):
                x = z
                break
            neg = free & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            free &= x > 1e-15
            x[~free] = 0.0
    return x


def _ols(X: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int, float]:
    """(beta, se, identifiable mask, residual df, condition number) of y = X beta."""
    n, p = X.shape
    norms = np.linalg.norm(X, axis=0)
    nz = norms > 0
    Xs = np.where(nz, X / np.where(nz, norms, 1.0), 0.0)
    U, sv, Vt = np.linalg.svd(Xs, full_matrices=False)
    smax = sv[0] if len(sv) else 0.0
    keep = sv > smax * 1e-10
    rank = int(keep.sum())
    cond = float(smax / sv[keep].min()) if rank == p and rank else float("inf")
    V = Vt[keep].T
    null = Vt[~keep].T   # directions the data cannot see
    ident = nz & (np.linalg.norm(null, axis=1) < 1e-8 if null.size else np.ones(p, dtype=bool))
    beta_s = V @ ((U[:, keep].T @ y) / sv[keep])
    beta = np.where(nz, beta_s / np.where(nz, norms, 1.0), np.nan)
    df = n - rank
    resid = y - Xs @ beta_s
    sigma2 = float(resid @ resid) / df if df > 0 else float("nan")
    cov_s = (V / sv[keep] ** 2) @ V.T * sigma2
    se = np.sqrt(np.maximum(np.diag(cov_s), 0.0)) / np.where(nz, norms, 1.0)
    return beta, se, ident, df, cond


def resolve(runs: Sequence[Any], by: str = "component", level: float = 0.95) -> np.ndarray:
    """Estimate the power drawn while each group runs, by regression over every sample.

    Parameters
    ----------
    runs:
        Finished runs (``Session`` or ``RunData``, e.g. from :func:`energyprof.repeat`)
        with interval samples; for ``by="component"`` / ``"layer"`` recorded with
        ``mode="standard"`` or ``"deep"``.
    by:
        ``"component"``: groups attn, mlp, norm, embed, lm_head, other (the innermost
        running hooked call's group, ``energyprof._dtypes.COMPONENT_GROUPS``);
        ``"layer"``: ``layer.N`` (time inside decoder layer N) and other;
        ``"step"``: ``prefill`` and ``step.K`` (each decode step's window) and other.
    level:
        Confidence level of the interval (0.95).

    Returns
    -------
    numpy structured array of :data:`RESOLVE_DTYPE`, one row per group ("other" last):
    ``group``, ``power_w`` with ``ci_low_w`` / ``ci_high_w``, ``energy_j`` (power x mean
    time per call, per step for ``by="step"``; NaN for "other"), ``identifiable``,
    ``n_calls``, ``time_s``, ``condition_number`` and ``label`` (:data:`RESOLVE_LABEL`).

    Every sample is one equation, ``p_s = sum_g P_g t_{s,g} / dt_s``; the powers are
    the non-negative least-squares solution.  Where the unconstrained (OLS) solution is
    already non-negative the two agree and the interval is ``P_g +- t(df) se_g`` from the
    OLS covariance ``sigma^2 (X'X)^-1``, ``sigma^2`` the residual variance.  A group the
    constraint holds at 0 gets ``[0, max(0, OLS + t se)]``.  A group the design cannot
    separate (its direction lies in the design's null space, or the condition number
    exceeds ``MAX_CONDITION``, or no residual degree of freedom is left) has
    ``identifiable = False`` and NaN power and interval.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    d = design(runs, by)
    X, y = d["X"], d["y_w"]
    names = d["groups"]
    beta, se, ident, df, cond = _ols(X, y)
    if cond > MAX_CONDITION or df <= 0:
        ident = np.zeros_like(ident)
    t = _tcrit(float(df), level) if df > 0 else float("nan")
    power = beta.copy()
    lo, hi = beta - t * se, beta + t * se
    if np.any(ident & (beta < 0)):
        cols = np.flatnonzero(ident)
        # Refit with the non-identifiable groups out (their columns are in the null space or
        # swamped by it) and the sign constraint on the rest.
        x = _nnls(X[:, cols], y)
        clamped = cols[x <= 0]
        free = cols[x > 0]
        power[cols] = x
        if len(free):
            b2, se2, _i2, df2, _c2 = _ols(X[:, free], y)
            t2 = _tcrit(float(df2), level) if df2 > 0 else float("nan")
            lo[free], hi[free] = b2 - t2 * se2, b2 + t2 * se2
        lo[clamped] = 0.0
        hi[clamped] = np.maximum(0.0, beta[clamped] + t * se[clamped])
    ident = ident & np.isfinite(lo) & np.isfinite(hi)
    power = np.where(ident, power, np.nan)
    lo = np.where(ident, lo, np.nan)
    hi = np.where(ident, hi, np.nan)
    out = np.zeros(len(names), dtype=RESOLVE_DTYPE)
    out["group"] = names
    out["power_w"] = power
    out["ci_low_w"] = lo
    out["ci_high_w"] = hi
    out["identifiable"] = ident
    out["n_calls"] = [d["n_calls"].get(g, 0) for g in names]
    out["time_s"] = d["time_s"]
    with np.errstate(invalid="ignore", divide="ignore"):
        out["energy_j"] = np.where(out["n_calls"] > 0, power * d["time_s"] / np.maximum(out["n_calls"], 1), np.nan)
    out["condition_number"] = cond
    out["label"] = RESOLVE_LABEL
    return out


def phase_intervals(runs: Sequence[Any], level: float = 0.95) -> Dict[str, Dict[str, Any]]:
    """Per phase, the mean energy (J) over repeated runs (``ep.repeat``) with its t-based
    confidence interval: ``{phase: {"n", "mean", "sd", "se", "half_width", "ci95"}}`` from
    :func:`energyprof.analysis.stats.mean_ci` of the runs' ``summary()["phases"][phase]
    ["energy_j"]``.  The spread is across runs whose samples fell at different phases of
    the work, so it includes the time split's error of each run, not only sensor noise."""
    out: Dict[str, Dict[str, Any]] = {}
    names: List[str] = []
    for run in runs:
        for ph in (run.summary().get("phases") or {}):
            if ph not in names:
                names.append(ph)
    for ph in names:
        vals = [float((r.summary().get("phases") or {}).get(ph, {}).get("energy_j", float("nan"))) for r in runs]
        out[ph] = mean_ci(vals, level)
    return out
