"""Predict a model's inference energy before running it, from runs already stored.

:class:`Predictor` fits energy (J) as a linear combination of *terms*: products of
architecture features and the prompt/output lengths that follow how transformer
inference spends its work (:data:`TERMS`):

==========================  ===================================================  ============
term                        column                                               why
==========================  ===================================================  ============
``const``                   1                                                    fixed cost per run
``decode_flops``            B·O·N_active / 1e9                                   weights read per generated token
``prefill_flops``           B·P·N_active / 1e9                                   weights applied to every prompt token
``decode_steps_x_layers``   O·L                                                  per-layer overhead of each step
``decode_steps``            O                                                    per-step overhead (sampling, launch)
``prefill_attention``       B·P²·L·d / 1e9                                       quadratic attention over the prompt
``decode_attention``        B·O·(P + (O-1)/2)·L·d_kv / 1e9                       reading the KV cache while decoding
``prompt_tokens``           B·P                                                  per-token work outside the weights
``output_tokens``           B·O                                                  idem for generated tokens
==========================  ===================================================  ============

(B batch size, P prompt length and O output length per sequence, L layers, d hidden
size, d_kv = n_kv_heads · d / n_heads, N_active the parameters a token goes through.)

A fit keeps, in that order, each term whose column is not a combination of the terms
already kept on the training runs (a single model makes ``output_tokens`` redundant with
``decode_flops``), and never more than ``n - 2`` terms.  The coefficients are ordinary least
squares; :meth:`Predictor.predict` returns the energy with a 95 % *prediction* interval
(the coefficients' uncertainty plus the residual scatter of a single run).

>>> import numpy as np
>>> from energyprof.analysis.predict import Predictor
>>> rng = np.random.default_rng(0)
>>> runs = []
>>> for i in range(12):
...     m = {"n_layers": int(rng.integers(2, 9)), "hidden_size": 64, "n_heads": 4, "n_kv_heads": 2,
...          "intermediate_size": 128, "vocab_size": 320, "n_params": int(rng.integers(1, 9)) * 100_000}
...     P, O = int(rng.integers(8, 64)), int(rng.integers(8, 64))
...     e = 0.5 + 2e-6 * O * m["n_params"] + 0.01 * O * m["n_layers"]
...     runs.append({"model": m, "batch_size": 1, "input_tokens": P, "output_tokens": O, "energy_j": e,
...                  "status": "completed"})
>>> p = Predictor.fit(runs, terms=["const", "decode_flops", "decode_steps_x_layers"])
>>> m = runs[0]["model"]
>>> abs(p.predict(m, 10, 10)["energy_j"] - (0.5 + 2e-5 * m["n_params"] + 0.1 * m["n_layers"])) < 1e-6
True
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .._hfconfig import config_value, single_kv_head
from .efficiency import active_params, summaries
from .stats import NAN, _collinear, _tcrit, ols
from ..store.rundata import _float as _f

__all__ = ["Predictor", "TERMS", "DEFAULT_TERMS", "NOISE_MODELS", "model_features", "estimate_params", "cross_validate",
           "MIN_RUNS"]

#: Fewest runs :meth:`Predictor.fit` accepts.
MIN_RUNS = 5

#: How the scatter of a run around the model is assumed to behave (see :meth:`Predictor.fit`).
NOISE_MODELS = ("absolute", "relative")


def _kv_dim(f: Dict[str, float]) -> float:
    nh = f["n_heads"] or 1.0
    return f["n_kv_heads"] * f["hidden_size"] / nh

#: name -> (column function of (features, B, P, O), unit of its coefficient)
TERMS: Dict[str, Tuple[Callable[..., float], str]] = {
    "const": (lambda f, B, P, O: 1.0, "J"),
    "decode_flops": (lambda f, B, P, O: B * O * f["active_params"] / 1e9, "J per (token·Gparam)"),
    "prefill_flops": (lambda f, B, P, O: B * P * f["active_params"] / 1e9, "J per (token·Gparam)"),
    "decode_steps_x_layers": (lambda f, B, P, O: O * f["n_layers"], "J per (step·layer)"),
    "decode_steps": (lambda f, B, P, O: float(O), "J per step"),
    "prefill_attention": (lambda f, B, P, O: B * P * P * f["n_layers"] * f["hidden_size"] / 1e9,
                          "J per G(token²·layer·dim)"),
    "decode_attention": (lambda f, B, P, O: B * O * (P + (O - 1) / 2.0) * f["n_layers"] * _kv_dim(f) / 1e9,
                         "J per G(token²·layer·kv dim)"),
    "prompt_tokens": (lambda f, B, P, O: float(B * P), "J/token"),
    "output_tokens": (lambda f, B, P, O: float(B * O), "J/token"),
}

#: The terms a fit tries, in priority order.
DEFAULT_TERMS = tuple(TERMS)

_FEATURES = ("n_layers", "hidden_size", "n_heads", "n_kv_heads", "intermediate_size", "vocab_size", "n_params",
             "n_experts", "experts_per_token", "active_params")


def estimate_params(f: Dict[str, Any], tied_embeddings: bool = False, gated_mlp: bool = True) -> float:
    """Parameter count of a decoder-only transformer from its shape (when the config gives no count).

    Embedding (and an untied LM head) ``V·d``; per layer: Q and O projections ``2·d²``, K and V
    ``2·d·d_kv``, the MLP ``3·d·I`` (gated) or ``2·d·I``, times ``n_experts`` for an MoE, and two
    norms ``2·d``.
    """
    d = _f(f.get("hidden_size"))
    L = _f(f.get("n_layers"))
    V = _f(f.get("vocab_size"))
    inter = _f(f.get("intermediate_size"))
    nh = _f(f.get("n_heads")) or 1.0
    nkv = _f(f.get("n_kv_heads"))
    nkv = nh if math.isnan(nkv) else nkv
    ne = _f(f.get("n_experts"))
    ne = 1.0 if (math.isnan(ne) or ne <= 0) else ne
    inter = 4 * d if math.isnan(inter) else inter
    kv = nkv * d / nh
    mlp = (3.0 if gated_mlp else 2.0) * d * inter * ne
    per_layer = 2 * d * d + 2 * d * kv + mlp + 2 * d
    emb = V * d * (1 if tied_embeddings else 2)
    return float(emb + L * per_layer + d)


def _from_hf_config(cfg: Any) -> Dict[str, Any]:
    d = config_value(cfg, "hidden_size")
    nh = config_value(cfg, "n_heads")
    nkv = config_value(cfg, "n_kv_heads") or nh
    if single_kv_head(cfg):
        nkv = 1
    inter = config_value(cfg, "intermediate_size")
    ne = config_value(cfg, "n_experts") or 0
    f = {"n_layers": config_value(cfg, "n_layers"), "hidden_size": d, "n_heads": nh,
         "n_kv_heads": nkv, "intermediate_size": inter if inter is not None else (4 * d if d else None),
         "vocab_size": config_value(cfg, "vocab_size"), "n_experts": ne,
         "experts_per_token": (config_value(cfg, "experts_per_token") or 0) if ne else 0}
    f["n_params"] = estimate_params(f, tied_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)))
    return f


def model_features(obj: Any) -> Dict[str, float]:
    """Architecture features of a model, as floats (:data:`_FEATURES`).

    ``obj`` may be a run summary or its ``"model"`` dict, a RunData/session, a torch model
    with a Hugging Face ``config`` (its shapes and its real parameter count), a transformers
    config (parameter count estimated by :func:`estimate_params`), a built-in tiny model name,
    or a local Hugging Face directory (its config.json).  ValueError when the layer count or hidden size is unknown.
    """
    m: Optional[Dict[str, Any]] = None
    if isinstance(obj, str):
        from ..tiny import TINY_MODELS, tiny_model

        if obj in TINY_MODELS:
            obj = tiny_model(obj)
        elif os.path.isdir(obj):
            from transformers import AutoConfig

            obj = AutoConfig.from_pretrained(obj, local_files_only=True)
        else:
            raise ValueError(f"model {obj!r} is neither a built-in tiny model nor a local directory")
    if isinstance(obj, dict):
        m = dict(obj.get("model") or {}) if "model" in obj and isinstance(obj.get("model"), dict) else dict(obj)
    elif callable(getattr(obj, "summary", None)):
        m = dict(obj.summary().get("model") or {})
    elif callable(getattr(obj, "parameters", None)) and hasattr(getattr(obj, "config", None), "model_type"):
        # a torch model with its Hugging Face config: the config's shapes, the real parameter count
        m = _from_hf_config(obj.config)
        m["n_params"] = float(sum(p.numel() for p in obj.parameters()))
    elif hasattr(obj, "to_dict") and hasattr(obj, "model_type"):
        m = _from_hf_config(obj)
    if m is None:
        raise TypeError(f"cannot read model features from {type(obj).__name__}")
    f = {k: _f(m.get(k)) for k in _FEATURES if k != "active_params"}
    if math.isnan(f["n_layers"]) or math.isnan(f["hidden_size"]):
        raise ValueError("model features need at least n_layers and hidden_size")
    if math.isnan(f["n_heads"]):
        f["n_heads"] = 1.0
    if math.isnan(f["n_kv_heads"]):
        f["n_kv_heads"] = f["n_heads"]
    for k in ("n_experts", "experts_per_token"):
        if math.isnan(f[k]):
            f[k] = 0.0
    if math.isnan(f["n_params"]):
        f["n_params"] = estimate_params(f)
        if math.isnan(f["n_params"]):
            raise ValueError("model features need n_params, or vocab_size to estimate it from the shapes")
    f["active_params"] = active_params(f)
    return f


def _design(terms: Sequence[str], feats: Sequence[Dict[str, float]], B: np.ndarray, P: np.ndarray,
            O: np.ndarray) -> np.ndarray:
    X = np.empty((len(feats), len(terms)), dtype=np.float64)
    for j, t in enumerate(terms):
        fn = TERMS[t][0]
        for i, f in enumerate(feats):
            X[i, j] = fn(f, float(B[i]), float(P[i]), float(O[i]))
    return X


def _rows(runs: Any, target: str, db: Any = None) -> Tuple[List[Dict[str, float]], np.ndarray, np.ndarray,
                                                             np.ndarray, np.ndarray, int]:
    ss = summaries(runs, db=db)
    feats, B, P, O, y = [], [], [], [], []
    skipped = 0
    for s in ss:
        st = s.get("status", "completed")
        b = _f(s.get("batch_size"))
        b = 1.0 if math.isnan(b) or b < 1 else b
        e = _f(s.get(target))
        nin, nout = _f(s.get("input_tokens")), _f(s.get("output_tokens"))
        if st != "completed" or not math.isfinite(e) or not (nout > 0) or math.isnan(nin):
            skipped += 1
            continue
        try:
            f = model_features(s)
        except (ValueError, TypeError):
            skipped += 1
            continue
        feats.append(f)
        B.append(b)
        P.append(nin / b)
        O.append(nout / b)
        y.append(e)
    return feats, np.array(B), np.array(P), np.array(O), np.array(y), skipped


class Predictor:
    """Least-squares energy model over architecture features and prompt/output lengths.

    Build one with :meth:`fit` (or :meth:`load`); :meth:`predict` gives J with a 95 %
    prediction interval.  ``terms``, ``coef`` and ``cov`` describe the fit; ``resid_sd`` is
    the residual standard deviation (J, or a share of the energy when ``noise == "relative"``)
    and ``df`` its degrees of freedom.
    """

    def __init__(self, terms: Sequence[str], coef: Sequence[float], cov: Any, resid_sd: float, df: int, n: int,
                 r2: float = NAN, target: str = "energy_j", dropped_terms: Sequence[str] = (),
                 ranges: Optional[Dict[str, Sequence[float]]] = None, noise: str = "absolute") -> None:
        if noise not in NOISE_MODELS:
            raise ValueError(f"noise must be one of {', '.join(NOISE_MODELS)}, got {noise!r}")
        unknown = [t for t in terms if t not in TERMS]
        if unknown:
            raise ValueError(f"unknown term(s) {', '.join(unknown)}; valid: {', '.join(TERMS)}")
        self.terms = list(terms)
        self.coef = np.asarray(coef, dtype=np.float64)
        self.cov = np.asarray(cov, dtype=np.float64).reshape(len(self.terms), len(self.terms))
        self.resid_sd = float(resid_sd)
        self.df = int(df)
        self.n = int(n)
        self.r2 = float(r2)
        self.target = target
        self.dropped_terms = list(dropped_terms)
        #: term -> [min, max] of its column over the training runs (for the extrapolation check)
        self.ranges = {k: [float(v[0]), float(v[1])] for k, v in (ranges or {}).items()}
        #: "absolute": resid_sd in J; "relative": resid_sd is a share of the energy
        self.noise = noise

    # -- fitting ---------------------------------------------------------------------
    @classmethod
    def fit(cls, runs: Any, terms: Optional[Sequence[str]] = None, target: str = "energy_j",
            db: Any = None, noise: str = "absolute") -> "Predictor":
        """Fit on completed runs (RunData, summary dicts, run ids with ``db``, or a RunList).

        ``terms`` (default :data:`DEFAULT_TERMS`) are tried in order; a term whose column is a
        combination of the kept ones on these runs is dropped (listed in ``dropped_terms``),
        and at most ``n - 2`` terms are kept so the residual scatter can be estimated.
        ``target`` is ``"energy_j"`` or ``"net_energy_j"``.  ValueError with fewer than
        :data:`MIN_RUNS` usable runs.

        ``noise="absolute"`` (ordinary least squares) assumes the scatter of a run is the same
        number of joules whatever its size; ``noise="relative"`` assumes it is the same *share*
        of the energy (weighted least squares with weights 1/energy²), which suits runs that
        span orders of magnitude (a tiny model next to a 7B one): the prediction interval then
        grows with the predicted energy.
        """
        if noise not in NOISE_MODELS:
            raise ValueError(f"noise must be one of {', '.join(NOISE_MODELS)}, got {noise!r}")
        terms = list(terms) if terms is not None else list(DEFAULT_TERMS)
        unknown = [t for t in terms if t not in TERMS]
        if unknown:
            raise ValueError(f"unknown term(s) {', '.join(unknown)}; valid: {', '.join(TERMS)}")
        if not terms:
            raise ValueError("Predictor.fit needs at least one term")
        feats, B, P, O, y, skipped = _rows(runs, target, db=db)
        n = len(y)
        if n < MIN_RUNS:
            raise ValueError(f"Predictor.fit needs at least {MIN_RUNS} completed runs with {target} and tokens; "
                             f"got {n}" + (f" ({skipped} skipped: not completed, no tokens or no model)"
                                           if skipped else ""))
        X = _design(terms, feats, B, P, O)
        if noise == "relative":
            if np.any(y <= 0):
                raise ValueError(f"noise='relative' needs {target} > 0 in every run")
            w = 1.0 / y  # each run's row divided by its energy: residuals become relative errors
        else:
            w = np.ones_like(y)
        kept: List[int] = []
        dropped: List[str] = []
        max_terms = n - 2
        for j, t in enumerate(terms):
            col = X[:, j]
            if not np.any(col != 0) or len(kept) >= max_terms:
                dropped.append(t)
                continue
            cand = kept + [j]
            Xc = X[:, cand] * w[:, None]
            Xs = Xc / np.sqrt(np.mean(Xc ** 2, axis=0))
            if _collinear(Xs, tol=1e-8):
                dropped.append(t)
                continue
            kept.append(j)
        if not kept:
            raise ValueError("no term has a non-zero column on these runs")
        names = [terms[j] for j in kept]
        res = ols(X[:, kept] * w[:, None], y * w, names=names, intercept=False)
        if noise == "relative":
            # Weights from the observed energies favour runs that came out low (biasing the
            # coefficients down by about the variance); reweight by the fitted energies instead.
            for _ in range(3):
                fitted = X[:, kept] @ res.coef
                if not np.all(fitted > 0):
                    break
                w = 1.0 / fitted
                res = ols(X[:, kept] * w[:, None], y * w, names=names, intercept=False)
        tss = float(((y - y.mean()) ** 2).sum())
        resid = y - X[:, kept] @ res.coef
        r2 = 1.0 - float(resid @ resid) / tss if tss > 0 else NAN
        ranges = {terms[j]: [float(X[:, j].min()), float(X[:, j].max())] for j in kept}
        return cls(names, res.coef, res.cov, res.resid_sd, res.df, res.n, r2=r2, target=target,
                   dropped_terms=dropped, ranges=ranges, noise=noise)

    # -- prediction ------------------------------------------------------------------
    def _x(self, model: Any, prompt_tokens: float, output_tokens: float, batch_size: float) -> np.ndarray:
        f = model_features(model)
        return _design(self.terms, [f], np.array([batch_size]), np.array([prompt_tokens]),
                       np.array([output_tokens]))[0]

    def predict(self, model: Any, prompt_tokens: float, output_tokens: float, batch_size: int = 1,
                level: float = 0.95) -> Dict[str, Any]:
        """Energy of generating ``output_tokens`` after a ``prompt_tokens`` prompt, per sequence,
        for ``batch_size`` sequences, with a ``level`` prediction interval.

        ``model``: anything :func:`model_features` reads (a run's model dict, a torch model,
        a transformers config, a tiny model name).  Returns ``{"energy_j", "unit": "J",
        "pi95": [lo, hi], "se_mean", "sd_pred", "j_per_output_token", "level", "terms",
        "extrapolation"}``; ``extrapolation`` lists the terms whose value lies outside the range
        seen in the training runs (the interval assumes the linear model still holds there).
        """
        if prompt_tokens < 0 or output_tokens < 1 or batch_size < 1:
            raise ValueError("prompt_tokens must be >= 0, output_tokens and batch_size >= 1")
        x = self._x(model, prompt_tokens, output_tokens, batch_size)
        yhat = float(x @ self.coef)
        var_mean = float(x @ self.cov @ x)
        scatter = self.resid_sd * (abs(yhat) if self.noise == "relative" else 1.0)
        sd_pred = math.sqrt(max(var_mean, 0.0) + scatter ** 2)
        hw = _tcrit(self.df, level) * sd_pred
        out_tok = output_tokens * batch_size
        return {"energy_j": yhat, "unit": "J", "pi95": [yhat - hw, yhat + hw], "se_mean": math.sqrt(max(var_mean, 0)),
                "sd_pred": sd_pred, "j_per_output_token": yhat / out_tok, "level": level,
                "terms": {t: float(c * xv) for t, c, xv in zip(self.terms, self.coef, x)},
                "extrapolation": [t for t, xv in zip(self.terms, x) if t in self.ranges
                                  and not (self.ranges[t][0] * (1 - 1e-9) <= xv <= self.ranges[t][1] * (1 + 1e-9))]}

    def coefficients(self) -> Dict[str, Dict[str, Any]]:
        """Each kept term's coefficient with its unit, standard error and 95 % interval."""
        se = np.sqrt(np.clip(np.diag(self.cov), 0, None))
        t = _tcrit(self.df)
        return {name: {"value": float(c), "unit": TERMS[name][1], "se": float(s), "ci95": [float(c - t * s),
                                                                                             float(c + t * s)]}
                for name, c, s in zip(self.terms, self.coef, se)}

    # -- persistence -----------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly state (what :meth:`save` writes)."""
        return {"format": "energyprof.Predictor", "version": 1, "target": self.target, "terms": self.terms,
                "coef": self.coef.tolist(), "cov": self.cov.tolist(), "resid_sd": self.resid_sd, "df": self.df,
                "n": self.n, "r2": self.r2, "dropped_terms": self.dropped_terms, "ranges": self.ranges,
                "noise": self.noise}

    def save(self, path: Union[str, os.PathLike]) -> str:
        """Write the predictor as JSON; returns the path."""
        with open(path, "w") as fh:
            json.dump(self.to_dict(), fh, indent=2)
        return os.fspath(path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Predictor":
        """Read a predictor written by :meth:`save` (ValueError for a file that is not one)."""
        with open(path) as fh:
            try:
                d = json.load(fh)
            except ValueError as e:
                raise ValueError(f"{os.fspath(path)} is not JSON: {e}") from None
        if not isinstance(d, dict) or d.get("format") != "energyprof.Predictor":
            raise ValueError(f"{os.fspath(path)} is not a saved energyprof Predictor")
        return cls(d["terms"], d["coef"], d["cov"], d["resid_sd"], d["df"], d["n"], r2=d.get("r2", NAN),
                   target=d.get("target", "energy_j"), dropped_terms=d.get("dropped_terms", ()),
                   ranges=d.get("ranges"), noise=d.get("noise", "absolute"))

    def __repr__(self) -> str:
        sd = f"{self.resid_sd:.3g} J" if self.noise == "absolute" else f"{100 * self.resid_sd:.3g} %"
        return f"<Predictor {self.target} ~ {' + '.join(self.terms)} (n={self.n}, resid_sd={sd})>"


def cross_validate(runs: Any, k: int = 5, terms: Optional[Sequence[str]] = None, target: str = "energy_j",
                   seed: int = 0, db: Any = None, noise: str = "absolute") -> Dict[str, Any]:
    """k-fold cross-validated error of :meth:`Predictor.fit` on ``runs``.

    The runs are shuffled (``seed``) into ``k`` folds; each fold is predicted by a predictor
    fitted on the others (``noise`` as in :meth:`Predictor.fit`).  Returns ``{"k", "n", "mape" (mean absolute percentage error, %),
    "rmse" (J), "mae" (J), "coverage" (share of held-out runs inside their 95 % prediction
    interval), "predicted", "actual"}``.
    """
    ss = summaries(runs, db=db)
    feats, B, P, O, y, _ = _rows(ss, target)
    n = len(y)
    if k < 2:
        raise ValueError("k must be >= 2")
    if n < k or n - int(math.ceil(n / k)) < MIN_RUNS:
        raise ValueError(f"cross_validate(k={k}) needs enough runs that every training split has {MIN_RUNS}; "
                         f"got {n} usable runs")
    rows = [{"model": {kk: v for kk, v in f.items()}, "batch_size": B[i], "input_tokens": P[i] * B[i],
             "output_tokens": O[i] * B[i], target: y[i], "status": "completed"} for i, f in enumerate(feats)]
    order = np.random.default_rng(seed).permutation(n)
    folds = np.array_split(order, k)
    pred = np.full(n, NAN)
    lo = np.full(n, NAN)
    hi = np.full(n, NAN)
    for fold in folds:
        test = set(fold.tolist())
        p = Predictor.fit([rows[i] for i in range(n) if i not in test], terms=terms, target=target, noise=noise)
        for i in fold:
            r = p.predict(feats[i], P[i], O[i], B[i])
            pred[i], (lo[i], hi[i]) = r["energy_j"], r["pi95"]
    err = pred - y
    with np.errstate(divide="ignore", invalid="ignore"):
        ape = np.abs(err) / np.abs(y)
    return {"k": k, "n": n, "mape": float(100.0 * np.nanmean(ape[np.isfinite(ape)])) if np.isfinite(ape).any() else NAN,
            "rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err))),
            "coverage": float(np.mean((y >= lo) & (y <= hi))), "predicted": pred, "actual": y}
