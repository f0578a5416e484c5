"""Sweeps: run a grid of batch sizes × prompt lengths × output lengths under ``ep.run``.

>>> import energyprof as ep
>>> from energyprof.tiny import tiny_model
>>> res = ep.sweep(tiny_model("tiny-llama"), batch_sizes=[1, 2], prompt_lengths=[8], max_new_tokens=[4],
...                repeats=2, source="synthetic:power_w=10,active_w=20,period_ms=1", save=False, progress=False)
>>> len(res.table), int(res.table["n"][0])
(2, 2)

Each grid point runs ``repeats`` times with the same prompt (random token ids from a
seeded generator, or ByteTokenizer text); every run is tagged ``sweep:<id>``,
``batch_size=B``, ``prompt_length=P``, ``max_new_tokens=N`` so :func:`load_sweep` finds it
again in the store.  :attr:`SweepResult.table` is a numpy structured array with one row per
grid point: for every figure in :data:`SWEEP_FIGURES` the mean over repeats, its standard
deviation and the half-width of its 95 % confidence interval (t with ``n - 1`` degrees of
freedom): columns ``F``, ``F_sd``, ``F_ci95``.

Analyses on top: :func:`batch_scaling` (J/token vs batch size with a power-law fit),
:func:`context_scaling` (prefill energy vs prompt length, linear + quadratic fit with
coefficient intervals) and :func:`pareto_frontier` (tokens/s vs J/token).
"""
from __future__ import annotations

import itertools
import math
import sys
import time
import uuid
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

from .analysis import FIGURE_UNITS, OLSResult, _f, _mpl_fig, figure, figure_value, mean_ci, ols, summaries

__all__ = ["sweep", "SweepResult", "SWEEP_FIGURES", "SWEEP_DTYPE", "sweep_table", "load_sweep", "batch_scaling",
           "context_scaling", "pareto_frontier", "plot_batch_scaling", "plot_context_scaling", "plot_pareto",
           "cli_main"]

#: Figures averaged per grid point (see :func:`energyprof.analysis.figure_value`).
SWEEP_FIGURES = ("energy_j", "net_energy_j", "duration_s", "j_per_token", "j_per_output_token", "tokens_per_j",
                 "tokens_per_s", "edp_js", "prefill_energy_j", "prefill_j_per_input_token", "decode_energy_j",
                 "decode_j_per_output_token")

_KEYS = [("batch_size", "<i4"), ("prompt_length", "<i4"), ("max_new_tokens", "<i4"), ("n", "<i4")]
#: One row per grid point: the keys, n (runs), then F, F_sd, F_ci95 per figure.
SWEEP_DTYPE = np.dtype(_KEYS + [(f"{f}{suf}", "<f8") for f in SWEEP_FIGURES for suf in ("", "_sd", "_ci95")])

_TEXT = ("The energy of a token depends on the model, the batch, the context and the machine. ")


# ----------------------------------------------------------------------------- result


class SweepResult:
    """The outcome of :func:`sweep` (or :func:`load_sweep`): the table and the runs behind it."""

    def __init__(self, sweep_id: str, runs: List[Dict[str, Any]]) -> None:
        self.sweep_id = sweep_id
        #: Summary dicts of every run, in the order they ran.
        self.runs = runs
        #: One row per grid point (:data:`SWEEP_DTYPE`).
        self.table = sweep_table(runs)

    @property
    def run_ids(self) -> List[Optional[int]]:
        """Store ids of the runs (None for runs not saved)."""
        return [r.get("run_id") for r in self.runs]

    def to_pandas(self):
        """The table as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame({f: self.table[f] for f in self.table.dtype.names})

    def batch_scaling(self, figure_name: str = "j_per_output_token") -> Dict[str, Any]:
        """:func:`batch_scaling` of this sweep's runs."""
        return batch_scaling(self.runs, figure_name)

    def context_scaling(self, quadratic: bool = True) -> Dict[str, Any]:
        """:func:`context_scaling` of this sweep's runs."""
        return context_scaling(self.runs, quadratic=quadratic)

    def pareto_frontier(self) -> np.ndarray:
        """:func:`pareto_frontier` of this sweep's table."""
        return pareto_frontier(self.table)

    def __repr__(self) -> str:
        return f"<SweepResult {self.sweep_id}: {len(self.runs)} runs, {len(self.table)} grid points>"


def _grid_key(s: Dict[str, Any]) -> tuple:
    """(batch_size, prompt_length, max_new_tokens) of a run: from its sweep tags, else its token counts."""
    tags = {}
    for t in s.get("tags") or []:
        if "=" in t:
            k, _, v = t.partition("=")
            tags[k] = v
    b = int(tags.get("batch_size", s.get("batch_size") or 1) or 1)
    try:
        p = int(tags["prompt_length"])
    except (KeyError, ValueError):
        p = int(round(_f(s.get("input_tokens")) / b)) if not math.isnan(_f(s.get("input_tokens"))) else -1
    try:
        n = int(tags["max_new_tokens"])
    except (KeyError, ValueError):
        n = int(round(_f(s.get("output_tokens")) / b)) if not math.isnan(_f(s.get("output_tokens"))) else -1
    return b, p, n


def sweep_table(runs: Any, db: Any = None) -> np.ndarray:
    """Group runs by (batch size, prompt length, new tokens) and average every figure.

    Returns a :data:`SWEEP_DTYPE` array sorted by the keys; ``F_ci95`` is the half-width of
    the t-based 95 % interval of the mean (NaN for a single run).
    """
    ss = summaries(runs, db=db)
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for s in ss:
        groups.setdefault(_grid_key(s), []).append(s)
    out = np.zeros(len(groups), dtype=SWEEP_DTYPE)
    for i, key in enumerate(sorted(groups)):
        g = groups[key]
        out["batch_size"][i], out["prompt_length"][i], out["max_new_tokens"][i] = key
        out["n"][i] = len(g)
        for f in SWEEP_FIGURES:
            m = mean_ci([figure_value(s, f) for s in g])
            out[f][i], out[f + "_sd"][i], out[f + "_ci95"][i] = m["mean"], m["sd"], m["half_width"]
    return out


# ----------------------------------------------------------------------------- running


def _resolve_model(model_factory_or_model: Any):
    import torch

    if isinstance(model_factory_or_model, torch.nn.Module):
        return model_factory_or_model
    if isinstance(model_factory_or_model, str):
        from .tiny import TINY_MODELS

        if model_factory_or_model not in TINY_MODELS:
            raise ValueError(f"unknown tiny model {model_factory_or_model!r}; valid: {', '.join(sorted(TINY_MODELS))}"
                             " (or pass a torch model or a factory)")
        return TINY_MODELS[model_factory_or_model]()
    if callable(model_factory_or_model):
        m = model_factory_or_model()
        if not isinstance(m, torch.nn.Module):
            raise TypeError(f"the model factory returned {type(m).__name__}, not a torch.nn.Module")
        return m
    raise TypeError(f"sweep() needs a torch model, a factory returning one, or a tiny model name; got "
                    f"{type(model_factory_or_model).__name__}")


def _ints(name: str, values: Any) -> List[int]:
    if isinstance(values, (int, np.integer)):
        values = [values]
    vals = [int(v) for v in values]
    if not vals:
        raise ValueError(f"{name} must not be empty")
    if any(v < 1 for v in vals):
        raise ValueError(f"{name} must all be >= 1, got {vals}")
    return vals


def _prompt(batch: int, length: int, vocab: int, prompts: str, seed: int, device: Any = None):
    import torch

    if prompts == "random":
        rng = np.random.default_rng(seed)
        # ids 3.. avoid pad/bos/eos of the tiny models; stay inside the vocabulary
        hi = max(4, min(int(vocab), 3 + 256))
        ids = rng.integers(3, hi, size=(batch, length))
    elif prompts == "text":
        from .tiny import ByteTokenizer

        tok = ByteTokenizer(max(int(vocab), 259))
        text = (_TEXT * (length // len(_TEXT) + 1))
        one = tok.encode(text)[:length]
        ids = np.array([one] * batch)
    else:
        raise ValueError(f"prompts must be 'random' or 'text', got {prompts!r}")
    ids = torch.as_tensor(ids, dtype=torch.long, device=device)
    return ids, torch.ones_like(ids)


class _Bar:
    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.bar = total, enabled, None

    def __enter__(self):
        if self.enabled:
            try:
                from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

                self.bar = Progress(TextColumn("sweep"), BarColumn(), TextColumn("{task.completed}/{task.total} runs"),
                                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                    transient=True)
                self.bar.__enter__()
                self.task = self.bar.add_task("sweep", total=self.total, info="")
            except ImportError:
                self.bar = None
        return self

    def step(self, info: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, info=info)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


def sweep(model_factory_or_model: Any, batch_sizes: Sequence[int] = (1,), prompt_lengths: Sequence[int] = (32,),
          max_new_tokens: Sequence[int] = (32,), repeats: int = 3, source: str = "auto", db: Any = None,
          baseline_s: float = 0.0, progress: bool = True, tags: Optional[Iterable[str]] = None,
          save: bool = True, mode: str = "minimal", prompts: str = "random", seed: int = 0, warmup: bool = True,
          sweep_id: Optional[str] = None, interleave: bool = False, **run_kw: Any) -> SweepResult:
    """Run ``model.generate`` over a grid under :func:`energyprof.run` and tabulate the results.

    Parameters
    ----------
    model_factory_or_model: a torch model, a zero-argument factory returning one (called
        once), or a tiny model name (``"tiny-llama"``).
    batch_sizes, prompt_lengths, max_new_tokens: the grid (every combination runs).
    repeats: runs per grid point (the 95 % intervals need at least 2).
    source, db, baseline_s, mode, save: passed to :func:`energyprof.run` (``mode="minimal"``
        by default: phases and tokens, no per-layer hooks).
    progress: show a rich progress bar.
    tags: extra tags for every run (the sweep adds ``sweep:<id>`` and the grid point).
    prompts: ``"random"`` token ids (seeded) or ``"text"`` (ByteTokenizer bytes of a fixed text).
    warmup: one untimed ``generate`` first, so the first grid point does not pay start-up costs.
    interleave: run the whole grid once per repeat (repeat-major order) instead of all repeats
        of a grid point back to back, so slow drifts (temperature, clocks) spread over every point.
    run_kw: other keywords for :func:`energyprof.run` (``interval_ms``, ``sync``...).

    Returns a :class:`SweepResult`.
    """
    import torch

    from .session import _model_device, run as ep_run

    bs = _ints("batch_sizes", batch_sizes)
    pls = _ints("prompt_lengths", prompt_lengths)
    nts = _ints("max_new_tokens", max_new_tokens)
    if int(repeats) < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    model = _resolve_model(model_factory_or_model)
    sid = sweep_id or time.strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:6]
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 259) or 259)
    pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    gen_base = dict(do_sample=False)
    if pad is not None:
        gen_base["pad_token_id"] = pad
    device = _model_device(model)
    grid = list(itertools.product(bs, pls, nts))
    if interleave:
        order = [(gi, rep) for rep in range(int(repeats)) for gi in range(len(grid))]
    else:
        order = [(gi, rep) for gi in range(len(grid)) for rep in range(int(repeats))]
    out: List[Dict[str, Any]] = []
    if warmup:
        ids, mask = _prompt(bs[0], pls[0], vocab, prompts, seed, device)
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, min_new_tokens=2, **gen_base)
    with _Bar(len(order), progress) as bar:
        for gi, rep in order:
            b, p, n = grid[gi]
            # the same prompt for every repeat of a grid point
            ids, mask = _prompt(b, p, vocab, prompts, seed + gi, device)
            gen_kw = dict(gen_base, max_new_tokens=n, min_new_tokens=n)
            run_tags = list(tags or []) + [f"sweep:{sid}", f"batch_size={b}", f"prompt_length={p}",
                                           f"max_new_tokens={n}"]
            with ep_run(model, source=source, mode=mode, baseline_s=baseline_s, db=db, save=save,
                        name=f"sweep {sid} b{b} p{p} n{n} r{rep}", tags=run_tags, **run_kw) as s:
                with torch.no_grad():
                    model.generate(input_ids=ids, attention_mask=mask, **gen_kw)
            summ = s.summary()
            out.append(summ)
            bar.step(f"b={b} p={p} n={n}: {_f(summ.get('j_per_output_token')):.3g} J/token")
    return SweepResult(sid, out)


def load_sweep(sweep_id: str, db: Any = None) -> SweepResult:
    """Rebuild a :class:`SweepResult` from the runs tagged ``sweep:<sweep_id>`` in the store."""
    from .db import runs

    rows = runs(db, tag=f"sweep:{sweep_id}", limit=None, sort="started_at", descending=False)
    if not rows:
        raise KeyError(f"no runs tagged sweep:{sweep_id} in the store")
    return SweepResult(sweep_id, list(rows))


# ----------------------------------------------------------------------------- analyses


def _runs_of(result_or_runs: Any) -> List[Dict[str, Any]]:
    if isinstance(result_or_runs, SweepResult):
        return result_or_runs.runs
    return summaries(result_or_runs)


def batch_scaling(result_or_runs: Any, figure_name: str = "j_per_output_token") -> Dict[str, Any]:
    """J/token (or another figure) against batch size.

    Returns ``{"figure", "unit", "rows": [{"batch_size", "prompt_length", "max_new_tokens",
    "mean", "ci95", "n"}], "exponent": figure or None, "fit": OLSResult or None}``.  The
    exponent ``b`` of ``figure ∝ batch^b`` is fitted on log-log over the individual runs
    (prompt length and output length enter as separate groups' offsets when they vary);
    it needs at least two batch sizes and one more run than coefficients.
    """
    ss = _runs_of(result_or_runs)
    keys = [_grid_key(s) for s in ss]
    y = np.array([figure_value(s, figure_name) for s in ss], dtype=np.float64)
    rows = []
    for key in sorted(set(keys)):
        idx = [i for i, k in enumerate(keys) if k == key]
        m = mean_ci(y[idx])
        rows.append({"batch_size": key[0], "prompt_length": key[1], "max_new_tokens": key[2], "mean": m["mean"],
                     "ci95": m["ci95"], "n": m["n"]})
    out: Dict[str, Any] = {"figure": figure_name, "unit": FIGURE_UNITS.get(figure_name, ""), "rows": rows,
                           "exponent": None, "fit": None}
    b = np.array([k[0] for k in keys], dtype=np.float64)
    ok = np.isfinite(y) & (y > 0)
    if len(np.unique(b[ok])) >= 2:
        # one offset per (prompt, new tokens) setting, a common exponent
        others = sorted({(k[1], k[2]) for k, o in zip(keys, ok) if o})
        cols = [np.log(b[ok])]
        names = ["log_batch_size"]
        for j, o in enumerate(others[1:]):
            cols.append(np.array([1.0 if (k[1], k[2]) == o else 0.0 for k, okk in zip(keys, ok) if okk]))
            names.append(f"offset p={o[0]} n={o[1]}")
        try:
            fit = ols(np.column_stack(cols), np.log(y[ok]), names=names)
            out["fit"] = fit
            out["exponent"] = figure(fit.coef[1], "1", fit.se[1], n=fit.n, df=fit.df)
        except ValueError as e:
            out["error"] = str(e)
    return out


def context_scaling(result_or_runs: Any, quadratic: bool = True, phase: str = "prefill") -> Dict[str, Any]:
    """Prefill energy against prompt length: ``E = a + b·(B·P) + c·(B·P²)``.

    ``B`` is the batch size and ``P`` the prompt length per sequence, so ``b`` is joules per
    prompt token and ``c`` the quadratic (attention) term per sequence.  Fitted by OLS on the
    individual runs; each coefficient comes with its standard error and 95 % interval.
    ``quadratic=False`` drops the ``c`` term.  Needs more runs than coefficients and, with
    the quadratic term, at least three distinct prompt lengths (ValueError otherwise).
    Returns ``{"coefficients": {"intercept_j", "j_per_token", "j_per_token_sq"}, "r2",
    "resid_sd", "n", "fit"}``.
    """
    ss = _runs_of(result_or_runs)
    keys = [_grid_key(s) for s in ss]
    y = np.array([figure_value(s, f"phases.{phase}.energy_j") for s in ss], dtype=np.float64)
    B = np.array([k[0] for k in keys], dtype=np.float64)
    P = np.array([k[1] for k in keys], dtype=np.float64)
    ok = np.isfinite(y) & (P > 0)
    need = 3 if quadratic else 2
    if len(np.unique(P[ok])) < need:
        raise ValueError(f"context_scaling() needs at least {need} distinct prompt lengths for a "
                         f"{'linear+quadratic' if quadratic else 'linear'} fit; got {sorted(set(P[ok].astype(int)))}")
    X = [B[ok] * P[ok]]
    names = ["j_per_token"]
    if quadratic:
        X.append(B[ok] * P[ok] ** 2)
        names.append("j_per_token_sq")
    fit = ols(np.column_stack(X), y[ok], names=names)
    units = {"const": "J", "j_per_token": "J/token", "j_per_token_sq": "J/token²"}
    coefs = {("intercept_j" if nm == "const" else nm): figure(fit.coef[i], units[nm], fit.se[i], n=fit.n, df=fit.df)
             for i, nm in enumerate(fit.names)}
    return {"phase": phase, "coefficients": coefs, "r2": fit.r2, "resid_sd": fit.resid_sd, "n": fit.n, "fit": fit,
            "batch_size": B[ok], "prompt_length": P[ok], "energy_j": y[ok]}


def pareto_frontier(table: Any, x: str = "tokens_per_s", y: str = "j_per_output_token") -> np.ndarray:
    """Indices of the grid points on the throughput/energy Pareto frontier, sorted by ``x``.

    A point is on the frontier when no other point has both ``x`` at least as high (more
    tokens per second) and ``y`` at least as low (fewer joules per token), one of them strictly.
    ``table`` is a :data:`SWEEP_DTYPE` array or a :class:`SweepResult`.
    """
    if isinstance(table, SweepResult):
        table = table.table
    xs = np.asarray(table[x], dtype=np.float64)
    ys = np.asarray(table[y], dtype=np.float64)
    ok = np.isfinite(xs) & np.isfinite(ys)
    keep = []
    for i in np.flatnonzero(ok):
        dom = ok & (xs >= xs[i]) & (ys <= ys[i]) & ((xs > xs[i]) | (ys < ys[i]))
        if not dom.any():
            keep.append(i)
    keep = np.array(keep, dtype=np.int64)
    return keep[np.argsort(xs[keep], kind="stable")]


# ----------------------------------------------------------------------------- plots


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


# ----------------------------------------------------------------------------- CLI


def _int_list(text: str, opt: str) -> List[int]:
    from .cli import UserError

    try:
        vals = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{opt} must be a comma-separated list of integers, got '{text}'") from None
    if not vals or any(v < 1 for v in vals):
        raise UserError(f"{opt} must list integers >= 1, got '{text}'")
    return vals


def add_arguments(sp) -> None:
    """The ``energyprof sweep`` options (called by energyprof.cli)."""
    from .cli import add_db

    sp.add_argument("--model", default=None, help="a built-in tiny model (tiny-llama, ...) or a local HF directory")
    sp.add_argument("--batch-sizes", default="1", help="comma-separated, e.g. 1,2,4")
    sp.add_argument("--prompt-lengths", default="32", help="comma-separated prompt lengths in tokens")
    sp.add_argument("--max-new-tokens", default="32", help="comma-separated output lengths")
    sp.add_argument("--repeats", type=int, default=3)
    sp.add_argument("--source", default="auto", help="power source spec (see `energyprof doctor`)")
    sp.add_argument("--mode", choices=["minimal", "standard", "deep"], default="minimal")
    sp.add_argument("--baseline-s", type=float, default=0.0)
    sp.add_argument("--interval-ms", type=float, default=None)
    sp.add_argument("--prompts", choices=["random", "text"], default="random")
    sp.add_argument("--interleave", action="store_true", help="run the whole grid once per repeat")
    sp.add_argument("--tag", action="append", help="extra tag for every run (repeatable)")
    sp.add_argument("--load", default=None, metavar="SWEEP_ID", help="show a stored sweep instead of running one")
    sp.add_argument("--csv", default=None, help="also write the table as CSV")
    sp.add_argument("--plot", default=None, metavar="PREFIX",
                    help="write PREFIX-batch.png, PREFIX-context.png, PREFIX-pareto.png where the grid allows")
    sp.add_argument("--no-save", action="store_true", help="keep the runs in memory only")
    sp.add_argument("--no-progress", action="store_true")
    sp.add_argument("--json", action="store_true")
    add_db(sp)


def _fmt(v: float, hw: float) -> str:
    if math.isnan(v):
        return "-"
    return f"{v:.4g}" if math.isnan(hw) else f"{v:.4g} ± {hw:.2g}"


def cli_main(args) -> int:
    """``energyprof sweep``: run (or ``--load``) a sweep, print the table with 95 % intervals."""
    from . import sources
    from .cli import UserError, _print_json, _table, load_model

    if args.load:
        try:
            res = load_sweep(args.load, db=args.db)
        except KeyError as e:
            raise UserError(str(e.args[0]))
    else:
        if not args.model:
            raise UserError("sweep needs --model (or --load SWEEP_ID)")
        try:
            sources.parse_spec(args.source)
        except ValueError as e:
            raise UserError(f"bad --source: {e}")
        if args.repeats < 1:
            raise UserError("--repeats must be >= 1")
        bs = _int_list(args.batch_sizes, "--batch-sizes")
        pls = _int_list(args.prompt_lengths, "--prompt-lengths")
        nts = _int_list(args.max_new_tokens, "--max-new-tokens")
        model, _tok = load_model(args.model)
        kw = {}
        if args.interval_ms:
            kw["interval_ms"] = args.interval_ms
        res = sweep(model, batch_sizes=bs, prompt_lengths=pls, max_new_tokens=nts, repeats=args.repeats,
                    source=args.source, db=args.db, baseline_s=args.baseline_s, mode=args.mode,
                    progress=not args.no_progress and sys.stderr.isatty(), tags=args.tag, save=not args.no_save,
                    prompts=args.prompts, interleave=args.interleave, **kw)
    t = res.table
    if args.json:
        _print_json({"sweep_id": res.sweep_id, "run_ids": res.run_ids,
                     "table": [{f: r[f].item() for f in t.dtype.names} for r in t]})
    else:
        _table(f"sweep {res.sweep_id} (mean ± 95% CI half-width)",
               ["batch", "prompt", "new", "n", "energy J", "J/out token", "prefill J/in token",
                "decode J/out token", "tokens/s"],
               [(int(r["batch_size"]), int(r["prompt_length"]), int(r["max_new_tokens"]), int(r["n"]),
                 _fmt(r["energy_j"], r["energy_j_ci95"]), _fmt(r["j_per_output_token"], r["j_per_output_token_ci95"]),
                 _fmt(r["prefill_j_per_input_token"], r["prefill_j_per_input_token_ci95"]),
                 _fmt(r["decode_j_per_output_token"], r["decode_j_per_output_token_ci95"]),
                 _fmt(r["tokens_per_s"], r["tokens_per_s_ci95"])) for r in t])
        front = pareto_frontier(t)
        print("Pareto frontier (tokens/s vs J/out token): " + ", ".join(
            f"b{t['batch_size'][i]} p{t['prompt_length'][i]} n{t['max_new_tokens'][i]}" for i in front))
        bsc = batch_scaling(res)
        if bsc["exponent"] is not None:
            e = bsc["exponent"]
            print(f"J/out token ∝ batch^{e['value']:.3f} (95% CI {e['ci95'][0]:.3f} .. {e['ci95'][1]:.3f})")
        if len(np.unique(t["prompt_length"])) >= 3:
            cs = context_scaling(res)
            parts = [f"{k} = {v['value']:.4g} {v['unit']} (95% CI {v['ci95'][0]:.3g} .. {v['ci95'][1]:.3g})"
                     for k, v in cs["coefficients"].items()]
            print("prefill energy fit: " + "; ".join(parts))
    if args.csv:
        header = ",".join(t.dtype.names)
        lines = [header] + [",".join(repr(r[f].item()) for f in t.dtype.names) for r in t]
        with open(args.csv, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        print(f"table written to {args.csv}", file=sys.stderr)
    if args.plot:
        written = []
        if len(np.unique(t["batch_size"])) >= 2:
            plot_batch_scaling(res).savefig(f"{args.plot}-batch.png")
            written.append(f"{args.plot}-batch.png")
        if len(np.unique(t["prompt_length"])) >= 3:
            plot_context_scaling(res).savefig(f"{args.plot}-context.png")
            written.append(f"{args.plot}-context.png")
        plot_pareto(res).savefig(f"{args.plot}-pareto.png")
        written.append(f"{args.plot}-pareto.png")
        print("plots written: " + ", ".join(written), file=sys.stderr)
    return 0
