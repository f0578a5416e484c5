"""Analyses over runs: efficiency figures, confidence intervals, least squares, scaling.

Every figure is a small dict that carries its unit and its uncertainty::

    {"value": 0.0123, "unit": "J/token", "se": 0.0004, "ci95": [0.0115, 0.0131], "n": 31}

``se`` is the standard error and ``ci95`` the 95 % confidence interval (Student t with
``n - 1`` degrees of freedom); both are NaN when the run holds nothing to estimate them
from (a whole-run total is one measurement).  Only numpy is needed: the Student t
distribution (CDF and quantile) is computed here from the regularised incomplete beta
function.

>>> from energyprof._testdata import synthetic_run
>>> from energyprof.analysis import efficiency, t_quantile
>>> e = efficiency(synthetic_run(n_steps=8))
>>> e["decode_j_per_output_token"]["unit"], e["decode_j_per_output_token"]["n"]
('J/token', 8)
>>> round(t_quantile(0.975, 10), 4)
2.2281
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .rundata import _float as _f

__all__ = [
    "t_cdf", "t_quantile", "normal_quantile", "mean_ci", "welch", "ols", "OLSResult", "figure",
    "efficiency", "summaries", "figure_value", "model_dict", "architecture_scaling", "ARCH_FEATURES",
    "compare_groups", "plot_architecture_scaling", "plot_compare_groups", "plot_efficiency", "FIGURE_UNITS",
]

NAN = float("nan")

# ----------------------------------------------------------------------------- distributions


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz evaluation)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        # even step
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        # odd step
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float, y: Optional[float] = None) -> float:
    """Regularised incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1.

    ``y`` is ``1 - x`` when the caller can compute it without cancellation (x near 1).
    """
    if y is None:
        y = 1.0 - x
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    # The continued fraction converges fast only on one side of the mean; use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, y) / b


def _normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` > 0 degrees of freedom (``df=inf``: the normal)."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df!r}")
    if math.isnan(t):
        return NAN
    if math.isinf(df) or df > 1e7:
        return _normal_cdf(t)
    # x = df / (df + t²) and 1 - x = t² / (df + t²), each computed directly: near t = 0,
    # 1 - x would lose every digit to cancellation.
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t), t * t / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def _bisect(f, target: float, lo: float, hi: float) -> float:
    # f increasing; expand hi until it brackets, then bisect to the last bit
    while f(hi) < target:
        lo, hi = hi, hi * 2.0
        if hi > 1e300:
            return math.inf
    for _ in range(400):
        mid = 0.5 * (lo + hi)
        if mid == lo or mid == hi:
            break
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def normal_quantile(p: float) -> float:
    """The standard normal quantile: x with P(Z <= x) = p, for 0 < p < 1."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -normal_quantile(1.0 - p)
    return _bisect(_normal_cdf, p, 0.0, 1.0)


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile: t with P(T <= t) = p (``df`` may be fractional, as in Welch's test).

    >>> round(t_quantile(0.975, 1), 3), round(t_quantile(0.975, 30), 3)
    (12.706, 2.042)
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df!r}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if math.isinf(df) or df > 1e7:
        return normal_quantile(p)
    return _bisect(lambda t: t_cdf(t, df), p, 0.0, 1.0)


@functools.lru_cache(maxsize=4096)
def _tcrit(df: float, level: float = 0.95) -> float:
    # cached: a sweep table asks for the same few degrees of freedom thousands of times
    if not (df > 0) or math.isnan(df):
        return NAN
    return t_quantile(0.5 + level / 2.0, df)


# ----------------------------------------------------------------------------- figures


def figure(value: float, unit: str, se: float = NAN, n: Optional[int] = None, df: Optional[float] = None,
           level: float = 0.95) -> Dict[str, Any]:
    """One figure with its unit and uncertainty: ``{"value", "unit", "se", "ci95", "n"}``.

    The interval is ``value ± t(level, df) · se`` with ``df = n - 1`` unless given; NaN
    when ``se`` is NaN.
    """
    value = _f(value)
    se = _f(se)
    if df is None:
        df = (n - 1) if n is not None else NAN
    t = _tcrit(df, level) if not math.isnan(se) else NAN
    lo, hi = (value - t * se, value + t * se) if not math.isnan(t) else (NAN, NAN)
    out = {"value": value, "unit": unit, "se": se, "ci95": [lo, hi], "n": n}
    if level != 0.95:
        out["level"] = level
    return out


def mean_ci(values: Iterable[float], level: float = 0.95) -> Dict[str, float]:
    """Mean of ``values`` with its standard error and t-based confidence interval.

    NaNs are dropped.  Returns ``{"n", "mean", "sd", "se", "half_width", "ci95": [lo, hi]}``;
    sd, se and the interval are NaN for fewer than two values.

    >>> r = mean_ci([1.0, 2.0, 3.0])
    >>> r["mean"], round(r["half_width"], 4)
    (2.0, 2.4841)
    """
    v = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    n = int(v.size)
    if n == 0:
        return {"n": 0, "mean": NAN, "sd": NAN, "se": NAN, "half_width": NAN, "ci95": [NAN, NAN]}
    mean = float(v.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "sd": NAN, "se": NAN, "half_width": NAN, "ci95": [NAN, NAN]}
    sd = float(v.std(ddof=1))
    se = sd / math.sqrt(n)
    hw = _tcrit(n - 1, level) * se
    return {"n": n, "mean": mean, "sd": sd, "se": se, "half_width": hw, "ci95": [mean - hw, mean + hw]}


def welch(a: Iterable[float], b: Iterable[float], level: float = 0.95) -> Dict[str, float]:
    """Welch's two-sample comparison of means: difference ``mean(b) - mean(a)`` and its CI.

    Returns ``{"diff", "se", "df", "t", "p", "ci95": [lo, hi], "rel_diff"}`` where ``df`` is
    the Welch–Satterthwaite degrees of freedom and ``p`` the two-sided p-value.  Each group
    needs at least two values (ValueError otherwise).

    >>> r = welch([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
    >>> r["diff"], round(r["df"], 6)
    (1.0, 4.0)
    """
    xa = np.asarray(list(a), dtype=np.float64)
    xb = np.asarray(list(b), dtype=np.float64)
    xa, xb = xa[~np.isnan(xa)], xb[~np.isnan(xb)]
    if xa.size < 2 or xb.size < 2:
        raise ValueError(f"welch() needs at least two values in each group, got {xa.size} and {xb.size}")
    ma, mb = float(xa.mean()), float(xb.mean())
    va, vb = float(xa.var(ddof=1)) / xa.size, float(xb.var(ddof=1)) / xb.size
    diff = mb - ma
    se = math.sqrt(va + vb)
    if se == 0.0:
        df = float(xa.size + xb.size - 2)
        tstat = 0.0 if diff == 0 else math.copysign(math.inf, diff)
        p = 1.0 if diff == 0 else 0.0
        lo = hi = diff
    else:
        df = (va + vb) ** 2 / (va ** 2 / (xa.size - 1) + vb ** 2 / (xb.size - 1))
        tstat = diff / se
        p = 2.0 * (1.0 - t_cdf(abs(tstat), df))
        hw = _tcrit(df, level) * se
        lo, hi = diff - hw, diff + hw
    return {"diff": diff, "se": se, "df": df, "t": tstat, "p": p, "ci95": [lo, hi],
            "rel_diff": diff / ma if ma != 0 else NAN, "mean_a": ma, "mean_b": mb,
            "n_a": int(xa.size), "n_b": int(xb.size)}


# ----------------------------------------------------------------------------- least squares


@dataclass
class OLSResult:
    """An ordinary least squares fit ``y ≈ X @ coef``.

    ``cov`` is the coefficients' covariance (``resid_sd² (XᵀX)⁻¹``), ``se`` their standard
    errors, ``ci95`` their 95 % intervals (t with ``df = n - p``), ``resid_sd`` the residual
    standard deviation, ``r2`` the coefficient of determination.
    """

    coef: np.ndarray
    cov: np.ndarray
    resid_sd: float
    r2: float
    n: int
    df: int
    names: List[str]
    residuals: np.ndarray = field(repr=False)

    @property
    def se(self) -> np.ndarray:
        """Standard errors of the coefficients."""
        return np.sqrt(np.clip(np.diag(self.cov), 0.0, None))

    @property
    def ci95(self) -> np.ndarray:
        """(p, 2) array of 95 % confidence intervals of the coefficients."""
        t = _tcrit(self.df)
        return np.column_stack([self.coef - t * self.se, self.coef + t * self.se])

    def __getitem__(self, name: str) -> Dict[str, Any]:
        i = self.names.index(name)
        lo, hi = self.ci95[i]
        return {"value": float(self.coef[i]), "se": float(self.se[i]), "ci95": [float(lo), float(hi)]}

    def predict(self, X: Any, interval: Optional[str] = None, level: float = 0.95):
        """Fitted values at the rows of ``X`` (same columns as the fit).

        ``interval="confidence"`` (for the mean) or ``"prediction"`` (for a new
        observation) also returns the (n, 2) array of interval bounds.
        """
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        if X.shape[1] != len(self.coef):
            raise ValueError(f"X has {X.shape[1]} columns; the fit has {len(self.coef)} ({', '.join(self.names)})")
        yhat = X @ self.coef
        if interval is None:
            return yhat
        if interval not in ("confidence", "prediction"):
            raise ValueError(f"interval must be None, 'confidence' or 'prediction', got {interval!r}")
        var = np.einsum("ij,jk,ik->i", X, self.cov, X)
        if interval == "prediction":
            var = var + self.resid_sd ** 2
        hw = _tcrit(self.df, level) * np.sqrt(np.clip(var, 0.0, None))
        return yhat, np.column_stack([yhat - hw, yhat + hw])

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly form: coefficients with se and ci95 by name, resid_sd, r2, n, df."""
        return {"coefficients": {n: self[n] for n in self.names}, "resid_sd": self.resid_sd, "r2": self.r2,
                "n": self.n, "df": self.df, "cov": self.cov.tolist()}


def _collinear(Xs: np.ndarray, tol: float = 1e-9) -> List[int]:
    """Indices of columns that lie (numerically) in the span of the columns before them."""
    bad = []
    if Xs.shape[1] == 0:
        return bad
    _, r = np.linalg.qr(Xs)
    d = np.abs(np.diag(r))
    scale = max(float(d.max()), 1e-300)
    for j, v in enumerate(d):
        if v <= tol * scale * max(Xs.shape):
            bad.append(j)
    return bad


def ols(X: Any, y: Any, names: Optional[Sequence[str]] = None, intercept: bool = True) -> OLSResult:
    """Ordinary least squares with coefficient standard errors and 95 % intervals.

    ``X`` is (n, p) (or (n,) for one regressor); with ``intercept=True`` a ``const``
    column is put first.  Needs more rows than coefficients and linearly independent
    columns (ValueError naming the collinear ones otherwise).  Columns are scaled to unit
    RMS before the QR solve, so features of very different magnitudes (parameter counts
    next to layer counts) stay well conditioned.

    >>> fit = ols([1.0, 2.0, 3.0, 4.0], [3.0, 5.0, 7.0, 9.0], names=["x"])
    >>> [round(float(c), 9) for c in fit.coef], fit.r2
    ([1.0, 2.0], 1.0)
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    y = np.asarray(y, dtype=np.float64).ravel()
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]} values")
    names = list(names) if names is not None else [f"x{i}" for i in range(X.shape[1])]
    if len(names) != X.shape[1]:
        raise ValueError(f"{len(names)} names for {X.shape[1]} columns")
    if intercept:
        X = np.column_stack([np.ones(len(y)), X])
        names = ["const"] + names
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
        raise ValueError("ols() needs finite X and y (drop NaN rows first)")
    n, p = X.shape
    if n <= p:
        raise ValueError(f"ols() needs more observations than coefficients: {n} rows for {p} coefficients "
                         f"({', '.join(names)})")
    scale = np.sqrt(np.mean(X ** 2, axis=0))
    zero = scale == 0
    if zero.any():
        raise ValueError(f"column(s) {', '.join(np.asarray(names)[zero])} are all zero")
    Xs = X / scale
    bad = _collinear(Xs)
    if bad:
        raise ValueError(f"collinear columns: {', '.join(names[j] for j in bad)} "
                         "(each is a combination of the columns before it; drop it or vary it across runs)")
    q, r = np.linalg.qr(Xs)
    coef_s = np.linalg.solve(r, q.T @ y)
    resid = y - Xs @ coef_s
    df = n - p
    rss = float(resid @ resid)
    s2 = rss / df
    rinv = np.linalg.solve(r, np.eye(p))
    cov_s = s2 * (rinv @ rinv.T)
    coef = coef_s / scale
    cov = cov_s / np.outer(scale, scale)
    tss = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - rss / tss if tss > 0 else NAN
    return OLSResult(coef=coef, cov=cov, resid_sd=math.sqrt(s2), r2=r2, n=n, df=df, names=names, residuals=resid)


# ----------------------------------------------------------------------------- runs


def _summary_of(run: Any) -> Dict[str, Any]:
    s = getattr(run, "summary", None)
    if callable(s):
        return s()
    if isinstance(run, dict):
        return run
    raise TypeError(f"expected a run (RunData, session or summary dict), got {type(run).__name__}")


def summaries(runs: Any, db: Any = None) -> List[Dict[str, Any]]:
    """Summary dicts of ``runs``: RunData/sessions, summary dicts, run ids (loaded from ``db``) or a RunList."""
    if runs is None:
        raise ValueError("no runs given")
    if isinstance(runs, dict) or hasattr(runs, "summary"):
        runs = [runs]
    out = []
    ids = []
    for r in runs:
        if isinstance(r, (int, np.integer)):
            ids.append(int(r))
            out.append(None)
        else:
            out.append(_summary_of(r))
    if ids:
        from .db import _opened

        with _opened(db) as st:
            it = iter(ids)
            out = [st.load(next(it)).summary() if s is None else s for s in out]
    return out


#: Units of the figures that :func:`figure_value` knows.
FIGURE_UNITS = {
    "energy_j": "J", "net_energy_j": "J", "duration_s": "s", "j_per_token": "J/token",
    "j_per_output_token": "J/token", "tokens_per_j": "token/J", "edp_js": "J·s", "peak_power_w": "W",
    "baseline_power_w": "W", "tokens_per_s": "token/s", "mean_power_w": "W",
    "prefill_energy_j": "J", "decode_energy_j": "J", "prefill_j_per_input_token": "J/token",
    "decode_j_per_output_token": "J/token", "output_to_input_token_energy": "1",
    "net_j_per_output_token": "J/token",
}


def _phase(s: Dict[str, Any], name: str) -> Dict[str, Any]:
    return (s.get("phases") or {}).get(name) or {}


def figure_value(run: Any, name: str) -> float:
    """One number of a run by name: a summary key (``j_per_output_token``), a dotted path
    (``phases.decode.energy_j``, ``model.n_layers``) or a derived figure (``tokens_per_s``,
    ``mean_power_w``, ``prefill_energy_j``, ``decode_energy_j``, ``prefill_j_per_input_token``,
    ``decode_j_per_output_token``, ``output_to_input_token_energy``, ``net_j_per_output_token``).
    NaN when the run lacks it."""
    s = _summary_of(run)
    if "." in name:
        cur: Any = s
        for part in name.split("."):
            if not isinstance(cur, dict) or part not in cur:
                return NAN
            cur = cur[part]
        return _f(cur)
    if name in s and name not in _DERIVED:
        return _f(s[name])
    if name in _DERIVED:
        return _DERIVED[name](s)
    raise ValueError(f"unknown figure {name!r}; use a summary key, a dotted path (phases.decode.energy_j) "
                     f"or one of {', '.join(sorted(_DERIVED))}")


def _div(a: float, b: float) -> float:
    a, b = _f(a), _f(b)
    return a / b if b and not math.isnan(b) else NAN


_DERIVED = {
    "tokens_per_s": lambda s: _div(s.get("output_tokens"), s.get("duration_s")),
    "mean_power_w": lambda s: _div(s.get("energy_j"), s.get("duration_s")),
    "prefill_energy_j": lambda s: _f(_phase(s, "prefill").get("energy_j")),
    "decode_energy_j": lambda s: _f(_phase(s, "decode").get("energy_j")),
    "prefill_j_per_input_token": lambda s: _div(_phase(s, "prefill").get("energy_j"),
                                                _phase(s, "prefill").get("tokens")),
    "decode_j_per_output_token": lambda s: _div(_phase(s, "decode").get("energy_j"),
                                                _phase(s, "decode").get("tokens")),
    "output_to_input_token_energy": lambda s: _div(
        _div(_phase(s, "decode").get("energy_j"), _phase(s, "decode").get("tokens")),
        _div(_phase(s, "prefill").get("energy_j"), _phase(s, "prefill").get("tokens"))),
    "net_j_per_output_token": lambda s: _div(s.get("net_energy_j"), s.get("output_tokens")),
}


# ----------------------------------------------------------------------------- efficiency


def _ratio_se(e: np.ndarray, n: np.ndarray) -> Tuple[float, float]:
    """Ratio estimate sum(e)/sum(n) and its standard error over k independent steps (delta method).

    With equal ``n`` per step this is the mean of e/n and the usual standard error of that mean.
    """
    k = len(e)
    if k == 0 or n.sum() == 0:
        return NAN, NAN
    r = float(e.sum() / n.sum())
    if k < 2:
        return r, NAN
    nbar = float(n.mean())
    d = e - r * n
    se = math.sqrt(float((d ** 2).sum()) / (k * (k - 1))) / nbar
    return r, se


def efficiency(run: Any, net: bool = False) -> Dict[str, Dict[str, Any]]:
    """Efficiency figures of one run, each ``{"value", "unit", "se", "ci95", "n"}``.

    ``j_per_token`` (J over input + output tokens), ``j_per_output_token``, ``tokens_per_j``
    (output tokens per J), ``tokens_per_s``, ``edp_js`` (energy × duration),
    ``edp_per_token_js`` (J per output token × s per output token), ``prefill_edp_js``,
    ``decode_edp_js``, ``prefill_j_per_input_token`` (prefill J per input token),
    ``decode_j_per_output_token`` (decode J per generated token, with the standard error of
    the per-step values in ``run.tokens``), ``output_to_input_token_energy`` (the ratio of
    the two; its uncertainty is the decode part's, propagated), ``decode_s_per_output_token``.

    ``net=True`` uses energy above the idle baseline (``net_energy_j``) throughout.
    Whole-run figures are single measurements: their ``se`` is NaN.
    """
    s = _summary_of(run)
    ekey = "net_energy_j" if net else "energy_j"
    e = _f(s.get(ekey))
    dur = _f(s.get("duration_s"))
    n_in = _f(s.get("input_tokens"))
    n_out = _f(s.get("output_tokens"))
    pre, dec = _phase(s, "prefill"), _phase(s, "decode")
    pre_e, pre_d, pre_n = _f(pre.get(ekey)), _f(pre.get("duration_s")), _f(pre.get("tokens"))
    dec_e, dec_d, dec_n = _f(dec.get(ekey)), _f(dec.get("duration_s")), _f(dec.get("tokens"))

    out: Dict[str, Dict[str, Any]] = {}
    out["energy_j"] = figure(e, "J")
    out["duration_s"] = figure(dur, "s")
    out["j_per_token"] = figure(_div(e, n_in + n_out), "J/token")
    out["j_per_output_token"] = figure(_div(e, n_out), "J/token")
    out["tokens_per_j"] = figure(_div(n_out, e), "token/J")
    out["tokens_per_s"] = figure(_div(n_out, dur), "token/s")
    out["edp_js"] = figure(e * dur, "J·s")
    out["edp_per_token_js"] = figure(_div(e, n_out) * _div(dur, n_out), "J·s")
    out["prefill_edp_js"] = figure(pre_e * pre_d, "J·s")
    out["decode_edp_js"] = figure(dec_e * dec_d, "J·s")
    out["prefill_j_per_input_token"] = figure(_div(pre_e, pre_n), "J/token")

    # Decode per token: from the per-step rows when present (they sum to the decode phase).
    tokens = getattr(run, "tokens", None)
    dec_jpt, dec_se, k = _div(dec_e, dec_n), NAN, None
    dec_spt, dec_spt_se = _div(dec_d, dec_n), NAN
    if tokens is not None and len(tokens):
        en = np.asarray(tokens["energy_j"], dtype=np.float64)
        du = np.asarray(tokens["duration_s"], dtype=np.float64)
        if net:  # the same baseline power the run's net figures subtract
            en = en - _f(s.get("baseline_power_w")) * du
        nt = np.asarray(tokens["n_tokens"], dtype=np.float64)
        ok = ~np.isnan(en) & (nt > 0)
        if ok.any():
            dec_jpt, dec_se = _ratio_se(en[ok], nt[ok])
            dec_spt, dec_spt_se = _ratio_se(du[ok], nt[ok])
            k = int(ok.sum())
    out["decode_j_per_output_token"] = figure(dec_jpt, "J/token", dec_se, n=k)
    out["decode_s_per_output_token"] = figure(dec_spt, "s/token", dec_spt_se, n=k)
    pre_jpt = out["prefill_j_per_input_token"]["value"]
    out["output_to_input_token_energy"] = figure(_div(dec_jpt, pre_jpt), "1", _div(dec_se, pre_jpt), n=k)
    return out


# ----------------------------------------------------------------------------- architecture scaling

#: Architecture features that :func:`architecture_scaling` can regress on.
ARCH_FEATURES = ("n_layers", "hidden_size", "n_heads", "n_kv_heads", "kv_groups", "intermediate_size",
                 "n_params", "active_params", "n_experts", "experts_per_token")


def model_dict(run_or_model: Any) -> Dict[str, Any]:
    """The model dict of a run (``summary()["model"]``) with derived features added:
    ``kv_groups`` (query heads per K/V head: 1 = MHA, n_heads = MQA) and ``active_params``
    (parameters one token goes through: all but the unused experts of an MoE)."""
    if isinstance(run_or_model, dict) and "model" not in run_or_model:
        m = dict(run_or_model)
    else:
        m = dict(_summary_of(run_or_model).get("model") or {})
    nh, nkv = _f(m.get("n_heads")), _f(m.get("n_kv_heads"))
    if math.isnan(nkv):
        nkv = nh
        m["n_kv_heads"] = m.get("n_heads")
    m["kv_groups"] = _div(nh, nkv)
    m["active_params"] = active_params(m)
    return m


def active_params(m: Dict[str, Any]) -> float:
    """Parameters a token goes through: ``n_params`` minus the experts it skips.

    Expert size is estimated as a gated MLP (3 · hidden · intermediate per expert per layer);
    a dense model's active parameters are all of them.
    """
    n = _f(m.get("n_params"))
    ne, k = _f(m.get("n_experts")) or 0.0, _f(m.get("experts_per_token")) or 0.0
    if math.isnan(ne) or ne <= 0:
        return n
    k = 0.0 if math.isnan(k) else k
    per_expert = 3.0 * _f(m.get("hidden_size")) * _f(m.get("intermediate_size")) * _f(m.get("n_layers"))
    return n - max(ne - k, 0.0) * per_expert


def architecture_scaling(runs: Any, figure_name: str = "j_per_output_token",
                         features: Optional[Sequence[str]] = None, joint: Optional[Sequence[str]] = None,
                         log: bool = False, db: Any = None) -> Dict[str, Any]:
    """How an energy figure scales with architecture across runs of different models.

    For each feature in ``features`` (default: those of :data:`ARCH_FEATURES` that vary
    across the runs) a simple regression ``figure ≈ a + b · feature``; with ``joint`` a
    multiple regression on those features together (their separate effects, e.g. layers
    and hidden size at once).  ``log=True`` fits ``log(figure)`` on ``log(feature)``, so
    the slope is the power-law exponent.  Each fit is an :class:`OLSResult` summary:
    ``{"slope": {value, unit, se, ci95}, "intercept": ..., "r2", "n", "fit": OLSResult, "x", "y"}``;
    the joint fit is ``{"coefficients": {...}, "r2", "n", "fit"}``.
    """
    ss = summaries(runs, db=db)
    y_all = np.array([figure_value(s, figure_name) for s in ss], dtype=np.float64)
    models = [model_dict(s) for s in ss]
    feats_avail = {f: np.array([_f(m.get(f)) for m in models], dtype=np.float64) for f in ARCH_FEATURES}
    if features is None:
        features = [f for f, v in feats_avail.items()
                    if np.isfinite(v).sum() >= 3 and len(np.unique(v[np.isfinite(v)])) > 1]
    unit = FIGURE_UNITS.get(figure_name, "")
    out: Dict[str, Any] = {"figure": figure_name, "unit": unit, "log": log, "n_runs": len(ss), "features": {}}

    def tx(v):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(v) if log else v

    y = tx(y_all)
    for f in features:
        if f not in feats_avail:
            raise ValueError(f"unknown feature {f!r}; valid: {', '.join(ARCH_FEATURES)}")
        x = tx(feats_avail[f])
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() < 3 or len(np.unique(x[ok])) < 2:
            out["features"][f] = {"error": f"needs at least 3 runs with 2 or more distinct {f} values"}
            continue
        fit = ols(x[ok], y[ok], names=[f])
        slope_unit = "1" if log else f"{unit} per {f}"
        out["features"][f] = {
            "slope": figure(fit.coef[1], slope_unit, fit.se[1], n=fit.n, df=fit.df),
            "intercept": figure(fit.coef[0], "log " + unit if log else unit, fit.se[0], n=fit.n, df=fit.df),
            "r2": fit.r2, "n": fit.n, "fit": fit, "x": x[ok], "y": y[ok],
        }
    if joint:
        cols = []
        for f in joint:
            if f not in feats_avail:
                raise ValueError(f"unknown feature {f!r}; valid: {', '.join(ARCH_FEATURES)}")
            cols.append(tx(feats_avail[f]))
        X = np.column_stack(cols)
        ok = np.all(np.isfinite(X), axis=1) & np.isfinite(y)
        fit = ols(X[ok], y[ok], names=list(joint))
        out["joint"] = {
            "coefficients": {nm: figure(fit.coef[i], "1" if log else (unit if nm == "const" else f"{unit} per {nm}"),
                                        fit.se[i], n=fit.n, df=fit.df) for i, nm in enumerate(fit.names)},
            "r2": fit.r2, "n": fit.n, "resid_sd": fit.resid_sd, "fit": fit,
        }
    return out


# ----------------------------------------------------------------------------- group comparison

_ALLOWED_DIFFS = ("model.dtype", "tags")


def _run_key(s: Dict[str, Any]) -> Dict[str, Any]:
    m = dict(s.get("model") or {})
    key = {f"model.{k}": v for k, v in m.items() if k not in ("n_params",)}
    key.update({"input_tokens": s.get("input_tokens"), "output_tokens": s.get("output_tokens"),
                "batch_size": s.get("batch_size"), "device": s.get("device"), "source_kind": s.get("source_kind")})
    return key


def compare_groups(runs_a: Any, runs_b: Any, figure: str = "j_per_output_token", level: float = 0.95,
                   db: Any = None) -> Dict[str, Any]:
    """Difference of a figure between two groups of runs (e.g. float32 vs bfloat16, eager vs
    sdpa attention, two engines), ``mean(b) - mean(a)`` with its Welch confidence interval.

    Groups should differ only in dtype, attention implementation or an engine tag; the
    result lists every other field that differs (``differs_in``) and warns about them.
    Returns ``{"figure", "unit", "a": mean_ci, "b": mean_ci, "diff", "rel_diff", "se", "df",
    "t", "p", "ci95", "significant", "differs_in"}``.
    """
    sa, sb = summaries(runs_a, db=db), summaries(runs_b, db=db)
    va = np.array([figure_value(s, figure) for s in sa], dtype=np.float64)
    vb = np.array([figure_value(s, figure) for s in sb], dtype=np.float64)
    w = welch(va, vb, level=level)
    keys_a = [_run_key(s) for s in sa]
    keys_b = [_run_key(s) for s in sb]
    differs = set()
    allk = set().union(*[k.keys() for k in keys_a + keys_b])
    for k in sorted(allk):
        vals = {repr(x.get(k)) for x in keys_a + keys_b}
        if len(vals) > 1:
            differs.add(k)
    ta = {t for s in sa for t in (s.get("tags") or [])}
    tb = {t for s in sb for t in (s.get("tags") or [])}
    if ta != tb:
        differs.add("tags")
    unexpected = sorted(d for d in differs if d not in _ALLOWED_DIFFS)
    if unexpected:
        warnings.warn(f"compare_groups: the groups also differ in {', '.join(unexpected)}; the difference may "
                      "not be due to dtype/attention/engine alone", RuntimeWarning, stacklevel=2)
    return {
        "figure": figure, "unit": FIGURE_UNITS.get(figure, ""),
        "a": mean_ci(va, level), "b": mean_ci(vb, level),
        "diff": w["diff"], "rel_diff": w["rel_diff"], "se": w["se"], "df": w["df"], "t": w["t"], "p": w["p"],
        "ci95": w["ci95"], "significant": bool(w["ci95"][0] > 0 or w["ci95"][1] < 0),
        "differs_in": sorted(differs),
    }


# ----------------------------------------------------------------------------- plots


def _mpl_fig(w: float = 7.0, h: float = 4.5):
    from .plot import _mpl_fig as mk

    return mk(w, h)


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
