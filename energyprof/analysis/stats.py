"""Statistics with numpy alone: Student t (CDF and quantile), figures with their uncertainty,
means with confidence intervals, Welch's test and ordinary least squares.

Every figure is a small dict that carries its unit and its uncertainty::

    {"value": 0.0123, "unit": "J/token", "se": 0.0004, "ci95": [0.0115, 0.0131], "n": 31}

``se`` is the standard error and ``ci95`` the 95 % confidence interval (Student t with
``n - 1`` degrees of freedom); both are NaN when there is nothing to estimate them from.
The Student t distribution is computed here from the regularised incomplete beta function.

>>> from energyprof.analysis.stats import t_quantile
>>> round(t_quantile(0.975, 10), 4)
2.2281
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

from ..store.rundata import _float as _f

__all__ = ["t_cdf", "t_quantile", "normal_quantile", "mean_ci", "welch", "ols", "OLSResult", "figure", "NAN"]

NAN = float("nan")


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
