"""Efficiency figures of runs: J/token, tokens/J, EDP, input vs output token energy,
the architecture scaling fit and the comparison of two groups of runs.

>>> from energyprof.testing import synthetic_run
>>> from energyprof.analysis import efficiency
>>> e = efficiency(synthetic_run(n_steps=8))
>>> e["decode_j_per_output_token"]["unit"], e["decode_j_per_output_token"]["n"]  # 2 ms samples, 8 steps
('J/token', 8)
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..store.quality import block_ratio, sample_blocks
from ..store.rundata import _float as _f
from .stats import NAN, figure, mean_ci, ols, welch

__all__ = ["efficiency", "summaries", "figure_value", "model_dict", "active_params", "architecture_scaling",
           "ARCH_FEATURES", "compare_groups", "FIGURE_UNITS", "source_labels"]


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
        from ..store.db import _opened

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


def _ratio_se(e: np.ndarray, n: np.ndarray) -> Tuple[float, float]:
    """Ratio estimate sum(e)/sum(n) and its standard error over k independent steps (delta method).

    With equal ``n`` per step this is the mean of e/n and the usual standard error of that mean.
    """
    r, se, _ = block_ratio(e, n, np.arange(len(e)))
    return r, se


def _token_blocks(run: Any, tokens: np.ndarray, s: Dict[str, Any]) -> np.ndarray:
    """The power sample each token's midpoint falls in: tokens sharing one are one measurement."""
    samples = getattr(run, "sample_starts_ns", None)
    if samples is None:
        samples = getattr(run, "samples", None)
    return sample_blocks(tokens["t_start_ns"], tokens["t_end_ns"], samples, _f(s.get("sample_period_s")),
                         int(s.get("t_origin_ns") or 0))


def efficiency(run: Any, net: bool = False) -> Dict[str, Dict[str, Any]]:
    """Efficiency figures of one run, each ``{"value", "unit", "se", "ci95", "n"}``.

    ``j_per_token`` (J over input + output tokens), ``j_per_output_token``, ``tokens_per_j``
    (output tokens per J), ``tokens_per_s``, ``edp_js`` (energy × duration),
    ``edp_per_token_js`` (J per output token × s per output token), ``prefill_edp_js``,
    ``decode_edp_js``, ``prefill_j_per_input_token`` (prefill J per input token),
    ``decode_j_per_output_token`` (decode J per generated token from the per-step rows in
    ``run.tokens``: its standard error and 95 % interval count *independent power samples*,
    not steps — steps whose midpoints fall in one sample share its reading and form one
    block — and ``n`` is that number of blocks; ``resolved`` is the share of steps spanning a
    whole sample), ``output_to_input_token_energy`` (the ratio of the two; its uncertainty
    is the decode part's, propagated), ``decode_s_per_output_token`` (durations come from
    the clock, so every step counts).

    ``net=True`` uses energy above the idle baseline (``net_energy_j``) throughout.
    Whole-run figures are single measurements: their ``se`` is NaN; every energy figure
    carries the source's ``systematic`` uncertainty (``summary()["uncertainty"]``: kind and
    value) when the run states one, which no number of tokens averages away.
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
    dec_jpt, dec_se, k, k_steps = _div(dec_e, dec_n), NAN, None, None
    dec_spt, dec_spt_se = _div(dec_d, dec_n), NAN
    resolved = NAN
    if tokens is not None and len(tokens):
        en = np.asarray(tokens["energy_j"], dtype=np.float64)
        du = np.asarray(tokens["duration_s"], dtype=np.float64)
        if net:  # the same baseline power the run's net figures subtract
            en = en - _f(s.get("baseline_power_w")) * du
        nt = np.asarray(tokens["n_tokens"], dtype=np.float64)
        ok = ~np.isnan(en) & (nt > 0)
        if ok.any():
            dec_jpt, dec_se, k = block_ratio(en[ok], nt[ok], _token_blocks(run, tokens, s)[ok])
            dec_spt, dec_spt_se = _ratio_se(du[ok], nt[ok])
            k_steps = int(ok.sum())
            resolved = float(np.mean(np.asarray(tokens["resolved"], dtype=bool)))
    out["decode_j_per_output_token"] = figure(dec_jpt, "J/token", dec_se, n=k)
    out["decode_j_per_output_token"]["resolved"] = resolved
    out["decode_s_per_output_token"] = figure(dec_spt, "s/token", dec_spt_se, n=k_steps)
    pre_jpt = out["prefill_j_per_input_token"]["value"]
    out["output_to_input_token_energy"] = figure(_div(dec_jpt, pre_jpt), "1", _div(dec_se, pre_jpt), n=k)
    unc = s.get("uncertainty")
    if isinstance(unc, dict):
        sysu = {"kind": unc.get("kind"), "value": _f(unc.get("value"))}
        for key in ("energy_j", "j_per_token", "j_per_output_token", "tokens_per_j", "edp_js", "edp_per_token_js",
                    "prefill_edp_js", "decode_edp_js", "prefill_j_per_input_token", "decode_j_per_output_token"):
            out[key]["systematic"] = dict(sysu)
    return out

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
    labels = source_labels(sa + sb)
    if len(labels) > 1:
        warnings.warn(f"compare_groups: the runs' figures are of different kinds ({', '.join(labels)}): "
                      "a simulated or estimated figure is not a measurement, and their difference says little",
                      RuntimeWarning, stacklevel=2)
    unexpected = sorted(d for d in differs if d not in _ALLOWED_DIFFS and d != "source_kind")
    if len(labels) <= 1 and "source_kind" in differs:
        unexpected = sorted(unexpected + ["source_kind"])
    if unexpected:
        warnings.warn(f"compare_groups: the groups also differ in {', '.join(unexpected)}; the difference may "
                      "not be due to dtype/attention/engine alone", RuntimeWarning, stacklevel=2)
    return {
        "figure": figure, "unit": FIGURE_UNITS.get(figure, ""),
        "a": mean_ci(va, level), "b": mean_ci(vb, level),
        "diff": w["diff"], "rel_diff": w["rel_diff"], "se": w["se"], "df": w["df"], "t": w["t"], "p": w["p"],
        "ci95": w["ci95"], "significant": bool(w["ci95"][0] > 0 or w["ci95"][1] < 0),
        "differs_in": sorted(differs), "source_labels": labels,
    }


def source_labels(summaries_: Sequence[Dict[str, Any]]) -> List[str]:
    """The distinct source labels (measured / estimated / simulated) of some run summaries, sorted."""
    return sorted({str(s.get("source_label") or "unknown") for s in summaries_})
