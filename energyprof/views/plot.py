"""Figures of a run: power timeline, energy by phase, per token, per layer and component.

One entry point, :func:`plot`, draws any kind with either backend and returns the
figure (a ``matplotlib.figure.Figure`` or a ``plotly.graph_objects.Figure``), so a
session's ``s.plot(kind=...)`` and the HTML report share the code.
:func:`plot_compare` puts two runs side by side.

The run is anything with the :class:`energyprof.store.rundata.RunData` interface:
``summary()`` (the shared summary dict), ``samples``, ``sections``, ``tokens``,
``layers`` and ``components`` (numpy structured arrays).

>>> from energyprof.testing import synthetic_run
>>> from energyprof.views.plot import plot
>>> fig = plot(synthetic_run(), kind="phases", backend="matplotlib")
>>> fig.axes[0].get_title()
'Energy by phase [SIMULATED]'

Titles of runs whose source is not a measurement say so (``[ESTIMATED]`` or
``[SIMULATED]``).  Rows whose window spans no whole power sample (their energy is split
by time within a sample) are drawn faded or hatched, and the legend says so: unresolved
tokens, heatmap cells where most calls are unresolved, components whose calls mostly are;
the timeline shades gaps in the power samples.  A kind the run has no data for (``layers`` on a ``mode="minimal"``
run, ``tokens`` without a decode) raises :class:`NoDataError`, a ``ValueError``.
"""
from __future__ import annotations

import contextlib
import contextvars
import html
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .._dtypes import DOMAINS
from ..analysis import deepstats as _ds
from ..errors import MissingExtraError, NoDataError
from ..store.groups import index_of, unique_index_inverse, unique_inverse
from ..store.rundata import _float

#: The kinds :func:`plot` draws for every run recorded with mode="standard".
KINDS = ("timeline", "phases", "tokens", "layers", "layer_steps", "components", "sankey", "waterfall",
         "token_components", "token_hist", "context")
#: The kinds only a mode="deep" run has data for (ops, per-head statistics, activation statistics).
DEEP_KINDS = ("ops", "heads", "activations")
#: Kinds of mixture-of-experts runs.
MOE_KINDS = ("moe",)
ALL_KINDS = KINDS + DEEP_KINDS + MOE_KINDS
#: What the ``layer_steps`` and ``ops`` heatmaps can show per cell:
#: name -> (colour bar title, how calls combine: summed, energy over time, or averaged).
#: The ``layers`` heatmap takes any of :data:`energyprof.analysis.deepstats.METRICS`.
METRICS = {
    "energy_j": ("energy (J)", "sum"), "duration_s": ("time (s)", "sum"), "power_w": ("mean power (W)", "power"),
    "act_mean": ("activation mean", "mean"), "act_abs_mean": ("activation mean |x|", "mean"),
    "act_std": ("activation std", "mean"), "act_max": ("activation max", "mean"),
    "act_sparsity": ("activation sparsity (|x| < sparse_below)", "mean"),
}
# metrics that come from the power samples (and so can be unresolved); time is the hooks' own
_SAMPLED = ("energy_j", "power_w")
#: What the ``heads`` heatmap can show (mode="deep" attention statistics, mean over calls).
HEAD_METRICS = {"entropy": "attention entropy (nats)", "max_weight": "largest attention weight",
                "sparsity": "share of weights < 1e-3"}
#: The plotting libraries :func:`plot` can use.
BACKENDS = ("matplotlib", "plotly")

#: Phases in the order a run goes through them.
PHASE_ORDER = ("pre_inference", "prefill", "decode", "post_inference")

_DOMAIN_COLOR = {"cpu": "#1f77b4", "gpu": "#d62728", "ane": "#9467bd", "dram": "#2ca02c", "package": "#222222"}
_PHASE_COLOR = {"pre_inference": "#f2d7a6", "prefill": "#a6d0f2", "decode": "#b9e3b0",
                "post_inference": "#e3c4e8", "baseline": "#dddddd"}
_OTHER_COLOR = "#f0e0c0"
_A_COLOR, _B_COLOR = "#1f77b4", "#ff7f0e"
_GAP_COLOR = "#888888"
# plotly's default qualitative colours, as RGB so that unresolved nodes can be drawn lighter
_SUNBURST_RGB = ((99, 110, 250), (239, 85, 59), (0, 204, 150), (171, 99, 250), (255, 161, 90), (25, 211, 243),
                 (255, 102, 146), (182, 232, 128), (255, 151, 255), (254, 203, 82))

#: What a faded or hatched mark means, in every legend that has one.
UNRESOLVED_TEXT = "unresolved: no whole power sample, energy split by time within a sample"
#: A heatmap cell or a component is drawn as unresolved when fewer than this share of its calls are resolved.
RESOLVED_MIN_SHARE = 0.5

#: A per-step series (kinds ``tokens``, ``token_components``, ``context``) draws at most this
#: many points, the layer x step heatmap (``layer_steps``) at most :data:`MAX_STEP_COLUMNS`
#: columns: a longer run's consecutive decode steps are binned, each bin drawn as the mean
#: per step of its steps (resolved when at least :data:`RESOLVED_MIN_SHARE` of them are), and
#: the figure's title says so.  The figures, and the report's HTML, then stay the same size
#: however long the run; the rows themselves are all in the store.
MAX_STEP_POINTS = 800
MAX_STEP_COLUMNS = 400


def step_bins(n: int, max_bins: int) -> Optional[np.ndarray]:
    """The bin of each of ``n`` consecutive steps, ``max_bins`` bins of near-equal size in
    order; None when ``n <= max_bins`` (nothing to bin).

    >>> step_bins(5, 2).tolist(), step_bins(3, 5)
    ([0, 0, 0, 1, 1], None)
    """
    if n <= max_bins:
        return None
    return (np.arange(n, dtype=np.int64) * int(max_bins)) // int(n)


def bin_ends(bins: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(first, last)``: the first and the last item of each bin (``bins`` in order).

    >>> [a.tolist() for a in bin_ends(np.array([0, 0, 0, 1, 1]))]
    [[0, 3], [2, 4]]
    """
    first = np.flatnonzero(np.diff(bins, prepend=-1))
    return first, np.append(first[1:] - 1, len(bins) - 1)


def bin_mean(values: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Per bin, the mean of the finite ``values`` in it (NaN where none is finite)."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    n_bins = int(bins[-1]) + 1 if len(bins) else 0
    n = np.bincount(bins[ok], minlength=n_bins)
    tot = np.bincount(bins[ok], weights=v[ok], minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, tot / np.maximum(n, 1), np.nan)


def bin_resolved(resolved: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Per bin, whether at least :data:`RESOLVED_MIN_SHARE` of its steps are resolved."""
    return bin_mean(np.asarray(resolved, dtype=np.float64), bins) >= RESOLVED_MIN_SHARE


def binned_text(n_steps: int, bins: Optional[np.ndarray]) -> str:
    """The title's note on binned steps ("" when not binned)."""
    if bins is None or not len(bins):
        return ""
    n_bins = int(bins[-1]) + 1
    return f" [{n_steps:,} steps in {n_bins:,} bins of ~{n_steps / n_bins:.0f}: mean per step]"





# --------------------------------------------------------------------------- helpers
def _summary(run: Any) -> Dict[str, Any]:
    s = getattr(run, "summary", None)
    if callable(s):
        s = s()
    return dict(s or {})


def _arr(run: Any, name: str) -> Optional[np.ndarray]:
    a = getattr(run, name, None)
    if a is None:
        return None
    a = np.asarray(a)
    return a if a.dtype.names else None


def label_tag(summary: Dict[str, Any]) -> str:
    """``" [ESTIMATED]"`` / ``" [SIMULATED]"`` for such sources, ``""`` for a measurement."""
    lab = str(summary.get("source_label") or "").lower()
    return f" [{lab.upper()}]" if lab in ("estimated", "simulated") else ""


def _title(base: str, summary: Dict[str, Any]) -> str:
    return base + label_tag(summary)


def _run_name(run: Any, default: str) -> str:
    s = _summary(run)
    if s.get("name"):
        return str(s["name"])
    if s.get("run_id") is not None:
        return f"run {s['run_id']}"
    return default


def _t0_ns(run: Any, summary: Dict[str, Any]) -> int:
    """Time zero of the figures: the run's origin, else its first section or sample."""
    if summary.get("t_origin_ns") is not None:
        return int(summary["t_origin_ns"])
    sec = _arr(run, "sections")
    if sec is not None and len(sec):
        return int(sec["t_start_ns"].min())
    smp = _arr(run, "samples")
    if smp is not None and len(smp):
        return int(smp["t_start_ns"].min())
    return 0


# --------------------------------------------------------------------------- data
def _timeline_data(run: Any) -> Dict[str, Any]:
    s = _summary(run)
    smp = _arr(run, "samples")
    if smp is None or len(smp) == 0:
        raise NoDataError("the run has no power samples to draw a timeline from")
    t0 = _t0_ns(run, s)
    t_start, t_end = smp["t_start_ns"], smp["t_end_ns"]
    interval = bool(np.any(t_end > t_start))
    power = {d: np.asarray(smp[f"{d}_w"], dtype=np.float64) for d in DOMAINS}
    power = {d: p for d, p in power.items() if not np.all(np.isnan(p))}
    per_bucket = 1
    if len(smp) > MAX_TIMELINE_SAMPLES:
        t_start, t_end, power, per_bucket = _buckets(t_start, t_end, power, interval)
        interval = True
    a = (t_start - t0) / 1e9
    b = (t_end - t0) / 1e9
    if interval:
        # Interval samples are averages over [start, end): draw them as flat steps.
        x = np.column_stack([a, b]).reshape(-1)
    else:
        x = a
    lines = {d: (np.repeat(p, 2) if interval else p) for d, p in power.items()}
    bands, markers = [], []
    sec = _arr(run, "sections")
    if sec is not None:
        for r in sec:
            kind = str(r["kind"])
            ra, rb = (int(r["t_start_ns"]) - t0) / 1e9, (int(r["t_end_ns"]) - t0) / 1e9
            if kind in ("phase", "baseline"):
                bands.append((str(r["name"]), ra, rb))
            elif kind == "section":
                markers.append((str(r["name"]), ra, rb))
    gaps = []
    if np.any(smp["t_end_ns"] > smp["t_start_ns"]) and len(smp) > 1:
        # time no interval sample covers (the session bridges or flags it; see the rows' flags)
        at = np.flatnonzero(smp["t_start_ns"][1:] > smp["t_end_ns"][:-1])
        gaps = [((int(smp["t_end_ns"][i]) - t0) / 1e9, (int(smp["t_start_ns"][i + 1]) - t0) / 1e9) for i in at]
    return {"x": x, "lines": lines, "bands": bands, "markers": markers, "per_bucket": per_bucket,
            "peak_w": _float(s.get("peak_power_w")), "baseline_w": _float(s.get("baseline_power_w")), "gaps": gaps}


#: Above this many samples the timeline draws energy-preserving averages of buckets
#: of consecutive samples (a browser or a PNG cannot show more detail anyway).
MAX_TIMELINE_SAMPLES = 20_000
_TIMELINE_BUCKETS = 10_000


def _buckets(t_start: np.ndarray, t_end: np.ndarray, power: Dict[str, np.ndarray], interval: bool):
    """Average power over buckets of consecutive samples, weighted by duration.

    For interval samples the weights are the intervals, so each bucket keeps the
    energy of its samples exactly; instantaneous samples get equal weights.
    """
    n = len(t_start)
    k = -(-n // _TIMELINE_BUCKETS)
    idx = np.arange(n) // k
    nb = int(idx[-1]) + 1
    w = (t_end - t_start).astype(np.float64) if interval else np.ones(n)
    out = {}
    for d, p in power.items():
        ok = ~np.isnan(p)
        num = np.bincount(idx, weights=np.where(ok, p * w, 0.0), minlength=nb)
        den = np.bincount(idx, weights=np.where(ok, w, 0.0), minlength=nb)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[d] = np.where(den > 0, num / den, np.nan)
    first = np.arange(nb) * k
    last = np.minimum(first + k, n) - 1
    return t_start[first], t_end[last], out, k


def _phase_data(run: Any) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """Phase names in run order with their gross and net energy (J)."""
    sec = _arr(run, "sections")
    names: List[str] = []
    e: List[float] = []
    net: List[float] = []
    if sec is not None and len(sec):
        ph = sec[sec["kind"] == "phase"]
        ph = ph[np.argsort(ph["t_start_ns"], kind="stable")]
        names = [str(n) for n in ph["name"]]
        e = [float(v) for v in ph["energy_j"]]
        net = [float(v) for v in ph["net_energy_j"]]
    else:
        phases = _summary(run).get("phases") or {}
        order = [p for p in PHASE_ORDER if p in phases] + [p for p in phases if p not in PHASE_ORDER]
        for p in order:
            names.append(p)
            e.append(_float(phases[p].get("energy_j")))
            net.append(_float(phases[p].get("net_energy_j")))
    if not names:
        raise NoDataError("the run has no phases (no sections of kind 'phase' and no summary['phases'])")
    return names, np.asarray(e), np.asarray(net)


def _token_data(run: Any) -> Tuple[np.ndarray, np.ndarray]:
    tok = _arr(run, "tokens")
    if tok is None or len(tok) == 0:
        raise NoDataError("the run has no decode steps (tokens is empty): nothing to draw per token")
    order = np.argsort(tok["step"], kind="stable")
    return np.asarray(tok["step"][order]), np.asarray(tok["j_per_token"][order], dtype=np.float64)


def _token_series(run: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """``(step, J/token, resolved, note)`` of the ``tokens`` figure: per decode step, or per
    bin of steps past :data:`MAX_STEP_POINTS` (the bin's first step, its mean J/token)."""
    steps, jpt = _token_data(run)
    res = _token_resolved(run)
    bins = step_bins(len(steps), MAX_STEP_POINTS)
    if bins is None:
        return steps, jpt, res, ""
    first, _ = bin_ends(bins)
    return steps[first], bin_mean(jpt, bins), bin_resolved(res, bins), binned_text(len(steps), bins)


def _token_resolved(run: Any) -> np.ndarray:
    """Per decode step, in step order: whether its window spans a whole power sample."""
    tok = _arr(run, "tokens")
    order = np.argsort(tok["step"], kind="stable")
    if "resolved" not in tok.dtype.names:
        return np.ones(len(tok), dtype=bool)
    return np.asarray(tok["resolved"][order], dtype=bool)


def _calls(run: Any) -> np.ndarray:
    parts = [a for a in (_arr(run, "layers"), _arr(run, "components")) if a is not None and len(a)]
    if not parts:
        return np.zeros(0)
    if len(parts) == 2 and parts[0].dtype != parts[1].dtype:
        parts = [parts[0], parts[1].astype(parts[0].dtype)]
    return np.concatenate(parts) if len(parts) == 2 else parts[0]


def _codes(values: np.ndarray, cols: Sequence[Any], col_type: Callable[[Any], Any]) -> np.ndarray:
    """Each value's index in ``cols`` (``col_type`` of the value; KeyError for one not there),
    looked up once per distinct value."""
    u, inv = unique_inverse(values)
    pos = {c: k for k, c in enumerate(cols)}
    return np.array([pos[col_type(x)] for x in u.tolist()], dtype=np.int64)[inv] if len(u) else inv


def _cell_of(calls: np.ndarray, layers: Sequence[int], cols: Sequence[Any], col_field: str,
             col_type: Callable[[Any], Any]) -> np.ndarray:
    """Each call's (layer, ``col_field``) cell, layer-major: ``layer index * len(cols) + column``."""
    return _codes(calls["layer"], layers, int) * len(cols) + _codes(calls[col_field], cols, col_type)


def _cell_sums(calls: np.ndarray, layers: Sequence[int], cols: Sequence[Any], col_field: str,
               col_type: Callable[[Any], Any], metric: str,
               cell: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, str]:
    """``(num, den, how)`` per (layer, ``col_field``) cell, as (len(layers), len(cols)) arrays:
    the sum of the metric over the cell's calls where it is not NaN, and the summed duration
    (power) or the count (every other metric) of those calls; summed in row order.  ``cell``:
    :func:`_cell_of` of the calls, when already known."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")
    how = METRICS[metric][1]
    n_cells = len(layers) * len(cols)
    field = "energy_j" if how == "power" else metric
    v = np.asarray(calls[field], dtype=np.float64)
    ok = ~np.isnan(v)
    if cell is None:
        cell = _cell_of(calls, layers, cols, col_field, col_type)
    cell = cell[ok]
    w = np.asarray(calls["duration_s"], dtype=np.float64)[ok] if how == "power" else np.ones(int(ok.sum()))
    num = np.bincount(cell, weights=v[ok], minlength=n_cells).reshape(len(layers), len(cols))
    den = np.bincount(cell, weights=w, minlength=n_cells).reshape(len(layers), len(cols))
    return num, den, how


def _cell_values(num: np.ndarray, den: np.ndarray, how: str) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        if how == "sum":
            return np.where(den > 0, num, np.nan)
        return np.where(den > 0, num / den, np.nan)


def _energy_matrix(calls: np.ndarray, layers: Sequence[int], cols: Sequence[Any], col_field: str,
                   col_type: Callable[[Any], Any], metric: str = "energy_j") -> np.ndarray:
    """``metric`` (:data:`METRICS`) of ``calls`` per (layer, ``col_field``) cell: energy
    or time summed, power as summed energy over summed time, activation statistics
    averaged over the calls that have them; NaN where no call fell."""
    return _cell_values(*_cell_sums(calls, layers, cols, col_field, col_type, metric))


def _no_metric(metric: str) -> NoDataError:
    return NoDataError(f"the run's calls have no {METRICS[metric][0]} (activation statistics are recorded "
                       f"with mode='deep')")


def _named_matrix(calls: Optional[np.ndarray], missing: str, order: Callable[[Sequence[str]], List[str]],
                  metric: str) -> Tuple[List[int], List[str], np.ndarray]:
    """``metric`` of every (decoder layer, component name) pair of ``calls`` (rows with layer >= 0)."""
    if calls is None or len(calls) == 0 or not np.any(calls["layer"] >= 0):
        raise NoDataError(missing)
    calls = calls[calls["layer"] >= 0]
    layers = sorted(int(v) for v in np.unique(calls["layer"]))
    names = order(unique_inverse(calls["component"])[0])
    z = _energy_matrix(calls, layers, names, "component", str, metric)
    if np.all(np.isnan(z)):
        raise _no_metric(metric)
    return layers, names, z


def _layer_component_matrix(run: Any, metric: str = "energy_j") -> Tuple[List[int], List[str], np.ndarray,
                                                                        np.ndarray]:
    """Any of :data:`energyprof.analysis.deepstats.METRICS` (energy in J by default, summed
    over steps) of every (decoder layer, component) pair, and the share of each cell's calls
    that are resolved (:func:`energyprof.analysis.deepstats.layer_component_matrix`)."""
    if metric not in _ds.METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid metrics: {', '.join(_ds.METRICS)}")
    try:
        cells = _kept("layer_component_cells", run, lambda: _ds.layer_component_cells(run))
        d = _ds.layer_component_matrix(run, metric, cells=cells)
    except ValueError as e:
        raise NoDataError(str(e)) from e
    if np.all(np.isnan(d["value"])):
        raise NoDataError(f"the run's calls have no {metric} (activation statistics are recorded with mode='deep')")
    return d["layers"], d["components"], d["value"], d["resolved_share"]


def _op_matrix(run: Any, metric: str = "energy_j") -> Tuple[List[int], List[str], np.ndarray]:
    """``metric`` of every (decoder layer, op) pair of a mode="deep" run (``run.ops``)."""
    return _named_matrix(_arr(run, "ops"), "the run has no op rows (ops are recorded with mode='deep')",
                         _ds.op_order, metric)


def _head_matrix(run: Any, metric: str = "entropy") -> Tuple[List[int], List[int], np.ndarray]:
    """Mean of a head statistic (:data:`HEAD_METRICS`) per (layer, head) over a deep run's attention calls."""
    if metric not in HEAD_METRICS:
        raise ValueError(f"unknown head metric {metric!r}; valid: {', '.join(HEAD_METRICS)}")
    heads = _arr(run, "heads")
    if heads is None or len(heads) == 0:
        raise NoDataError("the run has no per-head statistics (recorded with mode='deep')")
    layers = sorted(int(v) for v in np.unique(heads["layer"]))
    hs = sorted(int(v) for v in np.unique(heads["head"]))
    num = np.zeros((len(layers), len(hs)))
    den = np.zeros((len(layers), len(hs)))
    li = {v: i for i, v in enumerate(layers)}
    hi = {v: i for i, v in enumerate(hs)}
    for r in heads:
        v = float(r[metric])
        if not math.isnan(v):
            num[li[int(r["layer"])], hi[int(r["head"])]] += v
            den[li[int(r["layer"])], hi[int(r["head"])]] += 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return layers, hs, np.where(den > 0, num / den, np.nan)


def _resolved_share(calls: np.ndarray, layers: Sequence[int], cols: Sequence[Any], col_field: str,
                    col_type: Callable[[Any], Any]) -> np.ndarray:
    """The share of each (layer, ``col_field``) cell's calls that are resolved; NaN where none fell."""
    num, den = _resolved_counts(calls, layers, cols, col_field, col_type)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _resolved_counts(calls: np.ndarray, layers: Sequence[int], cols: Sequence[Any], col_field: str,
                     col_type: Callable[[Any], Any], cell: Optional[np.ndarray] = None
                     ) -> Tuple[np.ndarray, np.ndarray]:
    """Per (layer, ``col_field``) cell: the number of resolved calls and of calls (``cell``:
    :func:`_cell_of` of the calls, when already known)."""
    n_cells = len(layers) * len(cols)
    if cell is None:
        cell = _cell_of(calls, layers, cols, col_field, col_type)
    num = np.bincount(cell, weights=np.asarray(calls["resolved"], dtype=np.float64), minlength=n_cells)
    den = np.bincount(cell, minlength=n_cells).astype(np.float64)
    return num.reshape(len(layers), len(cols)), den.reshape(len(layers), len(cols))


def _ordered_components(names: Sequence[str]) -> List[str]:
    """Components in the order a layer runs them, unknown ones after, alphabetically."""
    return _ds.component_order(names)


def _layer_step_cells(run: Any, metric: str = "energy_j",
                      max_columns: Optional[int] = None) -> Tuple[List[int], List[str], np.ndarray, np.ndarray, str]:
    """``(layers, column labels, value, resolved share, note)`` of the ``layer_steps`` heatmap:
    one column per forward step, or, past ``max_columns`` (:data:`MAX_STEP_COLUMNS`) steps,
    the prefill's column and the decode steps in bins of consecutive steps, each cell the mean
    per step of the bin's steps that have a call there (energy, time), or the bin's summed
    energy over its summed time (power) and mean over its calls (statistics)."""
    lay = _arr(run, "layers")
    if lay is None or len(lay) == 0:
        raise NoDataError("the run has no decoder-layer calls (recorded with mode='minimal'?)")
    layers = [int(v) for v in unique_inverse(lay["layer"])[0]]
    steps = [int(v) for v in unique_inverse(lay["step"])[0]]
    cell = _cell_of(lay, layers, steps, "step", int)
    num, den, how = _cell_sums(lay, layers, steps, "step", int, metric, cell)
    if "resolved" in lay.dtype.names:
        r_num, r_den = _resolved_counts(lay, layers, steps, "step", int, cell)
    else:
        r_num = r_den = (den > 0).astype(np.float64)
    max_columns = MAX_STEP_COLUMNS if max_columns is None else int(max_columns)
    head = 1 if steps and steps[0] == 0 else 0         # the prefill keeps its own column
    bins = step_bins(len(steps) - head, max(1, max_columns - head))
    if bins is None:
        z = _cell_values(num, den, how)
        labels = [str(v) for v in steps]
        note = ""
    else:
        col = np.concatenate([np.zeros(head, np.int64), bins + head])
        n_cols = int(col[-1]) + 1

        def by_bin(a: np.ndarray) -> np.ndarray:      # (layers, steps) -> (layers, bins): summed
            out = np.zeros((a.shape[0], n_cols))
            np.add.at(out.T, col, a.T)
            return out

        num_b, den_b = by_bin(num), by_bin(den)
        if how == "sum":                               # the mean per step over the bin's steps with a call
            n_steps = by_bin((den > 0).astype(np.float64))
            with np.errstate(invalid="ignore", divide="ignore"):
                z = np.where(n_steps > 0, num_b / np.maximum(n_steps, 1), np.nan)
        else:
            z = _cell_values(num_b, den_b, how)
        r_num, r_den = by_bin(r_num), by_bin(r_den)
        first, last = bin_ends(col)
        labels = [str(steps[a]) if a == b else f"{steps[a]}-{steps[b]}" for a, b in zip(first, last)]
        note = binned_text(len(steps) - head, bins)
    if np.all(np.isnan(z)):
        raise _no_metric(metric)
    with np.errstate(invalid="ignore", divide="ignore"):
        res = np.where(r_den > 0, r_num / r_den, np.nan)
    return layers, labels, z, res, note


_RENDER_MEMO: "contextvars.ContextVar[Optional[Dict[Tuple[str, int], Tuple[Any, Any]]]]" = \
    contextvars.ContextVar("energyprof_render_memo", default=None)


@contextlib.contextmanager
def one_render():
    """Within the block, what several figures of one run share (its call tree, its
    (layer, component) grid) is built once per run and reused (the report and the dashboard's
    run page draw many figures from them); the rows are not expected to change meanwhile.
    Outside a block nothing is kept."""
    token = _RENDER_MEMO.set({})
    try:
        yield
    finally:
        _RENDER_MEMO.reset(token)


def _kept(name: str, run: Any, build: Callable[[], Any]) -> Any:
    """``build()``, kept per (name, run) for the block of :func:`one_render` (built anew outside one)."""
    memo = _RENDER_MEMO.get()
    if memo is None:
        return build()
    hit = memo.get((name, id(run)))
    if hit is None or hit[0] is not run:
        hit = memo[(name, id(run))] = (run, build())
    return hit[1]


def _call_tree(run: Any) -> Dict[str, np.ndarray]:
    """Every hooked call with its own ("self") energy and its top-level ancestor
    (kept for the block of :func:`one_render`)."""
    return _kept("call_tree", run, lambda: _build_call_tree(run))


def _build_call_tree(run: Any) -> Dict[str, np.ndarray]:
    """Every hooked call with its own ("self") energy and its top-level ancestor.

    ``self_j`` is the call's energy minus its direct children's, so the self energies
    under one top-level call add up to that call's energy exactly; ``has_child`` marks
    the calls that contain a hooked call.
    """
    calls = _calls(run)
    n = len(calls)
    if n == 0:
        raise NoDataError("the run has no layer or component calls (recorded with mode='minimal'?)")
    e = np.asarray(calls["energy_j"], dtype=np.float64)
    names = calls.dtype.names
    if "call_id" in names and "parent_id" in names:
        parent = index_of(calls["call_id"], calls["parent_id"])    # the last call with that id
    else:  # no tree recorded: every call is its own top level
        parent = np.full(n, -1, dtype=np.int64)
    self_j = e.copy()
    has = parent >= 0
    np.subtract.at(self_j, parent[has], e[has])
    # ancestors level by level (64 bounds a cyclic bad input; module trees are a few levels deep)
    up = np.append(parent, -1)          # up[-1] = -1: "no call" stays "no call"
    chain = [np.arange(n, dtype=np.int64)]
    while len(chain) < 64:
        nxt = up[chain[-1]]
        if not np.any(nxt >= 0):
            break
        chain.append(nxt)
    root = chain[0].copy()
    for level in chain[1:]:
        root = np.where(level >= 0, level, root)
    # the component names from the top-level call down (for the sunburst), one tuple per distinct path
    node_names, node_of = _node_names(calls)
    keys = np.stack([np.where(c >= 0, np.append(node_of, -1)[c], -1) for c in chain], axis=1)
    uniq, path_id = unique_inverse(keys, axis=0)
    paths = [tuple(node_names[x] for x in row[::-1] if x >= 0) for row in uniq]
    path_u = np.empty(len(paths), dtype=object)
    for i, pth in enumerate(paths):
        path_u[i] = pth
    path = path_u[path_id]
    has_child = np.zeros(n, dtype=bool)
    has_child[parent[has]] = True
    return {"calls": calls, "energy_j": e, "self_j": self_j, "parent": parent, "root": root,
            "path": path, "path_id": path_id, "paths": paths, "has_child": has_child,
            "node_names": node_names, "node_of": node_of}


def _node_names(calls: np.ndarray) -> Tuple[List[str], np.ndarray]:
    """The distinct node names of the calls (``"layer 3"`` for a layer, else the component)
    and each call's index into them."""
    comp_u, comp_i = unique_inverse(calls["component"])
    is_layer = np.asarray(calls["component"] == "layer")
    layer = np.asarray(calls["layer"], dtype=np.int64)
    key = np.where(is_layer, layer, np.iinfo(np.int64).min) if len(calls) else layer
    pair = np.stack([comp_i, key], axis=1)
    u, node_of = unique_inverse(pair, axis=0)
    names = [f"layer {int(k)}" if str(comp_u[c]) == "layer" else str(comp_u[c]) for c, k in u]
    return names, node_of.reshape(-1)


def _group_sums(keys: np.ndarray, values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Distinct ``keys`` (ints) in the order they first occur, and the sum of ``values``
    per key added in row order (as a loop over the rows adds them)."""
    if len(keys) == 0:
        return keys, np.zeros(0)
    u, first, inv = unique_index_inverse(keys)
    sums = np.bincount(inv, weights=np.asarray(values, np.float64), minlength=len(u))
    order = np.argsort(first, kind="stable")
    return u[order], sums[order]


def _node_name(r: np.void) -> str:
    c = str(r["component"])
    return f"layer {int(r['layer'])}" if c == "layer" else c


def _own_name(component: str, has_child: bool) -> str:
    """A call's row in the own-energy views: a container's or a layer's own energy is "<name> (self)"."""
    return component + " (self)" if (has_child or component == "layer") else component


def _component_self(run: Any) -> Tuple[List[str], np.ndarray]:
    """Self energy (J) per component name over all layers and steps, largest first.

    A container's (attn, mlp) own energy (work inside it that no child hook sees,
    e.g. the attention kernel) is ``"attn (self)"``; the layer's own is ``"layer (self)"``.
    """
    names, self_j, _ = _component_self_resolved(run)
    return names, self_j


def _component_self_resolved(run: Any) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """:func:`_component_self` plus the share of each name's calls that are resolved."""
    tree = _call_tree(run)
    calls, has_child = tree["calls"], tree["has_child"]
    res = (np.asarray(calls["resolved"], dtype=bool) if "resolved" in calls.dtype.names
           else np.ones(len(calls), dtype=bool))
    comp_u, comp_i = unique_inverse(calls["component"])
    own = has_child | (calls["component"] == "layer")
    keys, self_sum = _group_sums(comp_i.reshape(-1).astype(np.int64) * 2 + own, tree["self_j"])
    inv = np.searchsorted(np.sort(keys), comp_i.reshape(-1).astype(np.int64) * 2 + own)
    by_sorted = np.argsort(keys)
    n_ok = np.bincount(inv, weights=res.astype(np.float64), minlength=len(keys))[np.argsort(by_sorted)]
    n_all = np.bincount(inv, minlength=len(keys))[np.argsort(by_sorted)]
    names = [_own_name(str(comp_u[k // 2]), bool(k % 2)) for k in keys]
    order = sorted(range(len(names)), key=lambda i: -self_sum[i])   # stable: ties in order of first call
    return ([names[i] for i in order], np.array([self_sum[i] for i in order]),
            np.array([n_ok[i] / n_all[i] for i in order]))


def _phase_of_step(step: int) -> str:
    return "prefill" if step == 0 else "decode"


def _sankey_data(run: Any) -> Dict[str, Any]:
    """Nodes and links of run -> phases -> top-level calls -> components (J)."""
    s = _summary(run)
    names, e, _net = _phase_data(run)
    run_e = _float(s.get("energy_j"), float(np.nansum(e)))
    links: Dict[Tuple[Tuple[str, str], Tuple[str, str]], float] = {}
    node_order: List[Tuple[str, str]] = [("run", "run")]

    def add(src: Tuple[str, str], dst: Tuple[str, str], v: float) -> None:
        if not (v > 0.0) or not math.isfinite(v):
            return
        for k in (src, dst):
            if k not in node_order:
                node_order.append(k)
        links[(src, dst)] = links.get((src, dst), 0.0) + v

    phase_e = dict(zip(names, e))
    for p in names:
        add(("run", "run"), ("phase", p), float(phase_e[p]))
    add(("run", "run"), ("other", "outside phases"), run_e - float(np.nansum(e)))
    try:
        tree = _call_tree(run)
    except NoDataError:
        tree = None
    if tree is not None:
        # grouped sums, in the order of each group's first passing call: the same links, nodes
        # and node order as adding call by call
        calls, e_j, node_names, node_of = tree["calls"], tree["energy_j"], tree["node_names"], tree["node_of"]
        top = np.flatnonzero(tree["parent"] < 0)
        phase_i = (np.asarray(calls["step"])[top] != 0).astype(np.int64)   # 0 prefill, 1 decode
        phases = ("prefill", "decode")
        in_ph = np.isin(phase_i, [k for k, p in enumerate(phases) if p in phase_e])
        top, phase_i = top[in_ph], phase_i[in_ph]
        v = e_j[top]
        ok = (v > 0.0) & np.isfinite(v)
        n_nodes = max(len(node_names), 1)
        keys, sums = _group_sums(phase_i[ok] * n_nodes + node_of[top][ok], v[ok])
        for k, total in zip(keys.tolist(), sums.tolist()):
            add(("phase", phases[k // n_nodes]), ("top", node_names[k % n_nodes]), total)
        ph_keys, used = _group_sums(phase_i, v)   # every top call of the phase, passing or not
        for k, u in zip(ph_keys.tolist(), used.tolist()):
            p = phases[k]
            add(("phase", p), ("other", f"{p}: outside hooked modules"), float(phase_e[p]) - u)
        has_child = tree["has_child"]
        root = tree["root"]
        comp_u, comp_i = unique_inverse(calls["component"])
        own = (comp_i * 2 + (has_child | (calls["component"] == "layer")))
        sj = tree["self_j"]
        # a top-level leaf (embed, lm_head) is the end of its flow: only calls under a container go on
        ok = has_child[root] & (sj > 0.0) & np.isfinite(sj)
        n_own = 2 * max(len(comp_u), 1)
        keys, sums = _group_sums(node_of[root][ok] * n_own + own[ok], sj[ok])
        for k, total in zip(keys.tolist(), sums.tolist()):
            o = k % n_own
            add(("top", node_names[k // n_own]), ("component", _own_name(str(comp_u[o // 2]), bool(o % 2))), total)
    labels = [k[1] for k in node_order]
    index = {k: i for i, k in enumerate(node_order)}
    src = [index[a] for (a, _b) in links]
    dst = [index[b] for (_a, b) in links]
    return {"nodes": node_order, "labels": labels, "source": src, "target": dst,
            "value": [links[k] for k in links], "run_energy_j": run_e}


def _waterfall_data(run: Any) -> Tuple[List[str], List[float], float]:
    """Steps from the idle baseline, through each phase's net energy, to the run total."""
    s = _summary(run)
    names, e, net = _phase_data(run)
    total = _float(s.get("energy_j"), float(np.nansum(e)))
    base_w = _float(s.get("baseline_power_w"), 0.0)
    dur = _float(s.get("duration_s"), 0.0)
    labels = ["idle baseline"]
    steps = [base_w * dur if math.isfinite(base_w) else 0.0]
    for n, v in zip(names, net):
        labels.append(f"{n} (above idle)")
        steps.append(float(v) if math.isfinite(v) else 0.0)
    rest = total - sum(steps)
    if abs(rest) > 1e-9 * max(abs(total), 1.0):
        labels.append("outside phases")
        steps.append(rest)
    return labels, steps, total


# --------------------------------------------------------------------------- backends
def _need(backend: str):
    if backend == "matplotlib":
        try:
            from matplotlib.figure import Figure
        except ImportError as exc:
            raise MissingExtraError("matplotlib", "backend='matplotlib'") from exc
        return Figure
    if backend == "plotly":
        try:
            import plotly.graph_objects as go
        except ImportError as exc:
            raise MissingExtraError("plotly", "backend='plotly'") from exc
        return go
    raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")


def _mpl_fig(w: float = 10.0, h: float = 4.5):
    Figure = _need("matplotlib")
    fig = Figure(figsize=(w, h), layout="constrained")
    return fig


def _esc(text: str) -> str:
    """Plotly renders a subset of HTML in labels: escape text that came from the user."""
    return html.escape(str(text), quote=False)


# ---- timeline
def _timeline_title(d: Dict[str, Any]) -> str:
    k = d["per_bucket"]
    return "Power by domain" + (f" (averages of {k} samples)" if k > 1 else "")


def _timeline_mpl(run, d, s):
    fig = _mpl_fig(11, 4.5)
    ax = fig.add_subplot()
    for name, a, b in d["bands"]:
        ax.axvspan(a, b, color=_PHASE_COLOR.get(name, _OTHER_COLOR), alpha=0.45, lw=0)
        ax.text((a + b) / 2, 1.0, name, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                fontsize=8)
    for dom, y in d["lines"].items():
        ax.plot(d["x"], y, label=f"{dom} W", color=_DOMAIN_COLOR.get(dom), lw=1.6 if dom == "package" else 1.0)
    for k, (a, b) in enumerate(d["gaps"]):
        ax.axvspan(a, b, facecolor="none", edgecolor=_GAP_COLOR, hatch="xx", lw=0,
                   label="no power sample (gap)" if k == 0 else None)
    for name, a, _b in d["markers"]:
        ax.axvline(a, color="#555555", ls=":", lw=1)
        ax.text(a, 0.02, " " + name, transform=ax.get_xaxis_transform(), rotation=90, fontsize=8, va="bottom")
    if math.isfinite(d["peak_w"]):
        ax.axhline(d["peak_w"], color="#b22222", ls="--", lw=1, label=f"peak {d['peak_w']:.3g} W")
    if math.isfinite(d["baseline_w"]):
        ax.axhline(d["baseline_w"], color="#666666", ls="-.", lw=1, label=f"idle baseline {d['baseline_w']:.3g} W")
    ax.set_ylim(bottom=0)  # power from zero: a flat trace must not fill the plot with noise
    ax.set_xlabel("time (s from the run origin)")
    ax.set_ylabel("power (W)")
    ax.set_title(_title(_timeline_title(d), s), pad=14)
    ax.legend(loc="upper left", fontsize=8, ncols=2)
    return fig


def _timeline_plotly(run, d, s):
    go = _need("plotly")
    fig = go.Figure()
    for name, a, b in d["bands"]:
        fig.add_vrect(x0=a, x1=b, fillcolor=_PHASE_COLOR.get(name, _OTHER_COLOR), opacity=0.45, line_width=0,
                      layer="below", annotation_text=_esc(name), annotation_position="top left",
                      annotation_font_size=10)
    for dom, y in d["lines"].items():
        fig.add_trace(go.Scatter(x=d["x"], y=y, mode="lines", name=f"{dom} W",
                                 line=dict(color=_DOMAIN_COLOR.get(dom), width=2 if dom == "package" else 1)))
    for a, b in d["gaps"]:
        fig.add_vrect(x0=a, x1=b, fillcolor=_GAP_COLOR, opacity=0.35, line_width=0, layer="above")
    if d["gaps"]:  # a legend entry for the shaded spans
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="grey: no power sample (gap)",
                                 marker=dict(color=_GAP_COLOR, symbol="square", size=12), showlegend=True))
    for name, a, _b in d["markers"]:
        fig.add_vline(x=a, line_dash="dot", line_color="#555555", annotation_text=_esc(name),
                      annotation_position="bottom right", annotation_font_size=10)
    if math.isfinite(d["peak_w"]):
        fig.add_hline(y=d["peak_w"], line_dash="dash", line_color="#b22222",
                      annotation_text=f"peak {d['peak_w']:.3g} W", annotation_position="top right")
    if math.isfinite(d["baseline_w"]):
        fig.add_hline(y=d["baseline_w"], line_dash="dashdot", line_color="#666666",
                      annotation_text=f"idle baseline {d['baseline_w']:.3g} W", annotation_position="bottom right")
    fig.update_layout(title=_title(_timeline_title(d), s), xaxis_title="time (s from the run origin)",
                      yaxis_title="power (W)", template="plotly_white", hovermode="x unified",
                      yaxis_rangemode="tozero")
    return fig


# ---- phases
def _phases_mpl(run, d, s):
    names, e, net = d
    fig = _mpl_fig(8, 4.2)
    ax = fig.add_subplot()
    x = np.arange(len(names))
    ax.bar(x - 0.2, e, 0.4, label="energy (J)", color=[_PHASE_COLOR.get(n, _OTHER_COLOR) for n in names],
           edgecolor="#333333")
    ax.bar(x + 0.2, net, 0.4, label="above idle (J)", color="#888888", edgecolor="#333333")
    ax.set_xticks(x, names)
    ax.set_ylabel("energy (J)")
    ax.set_title(_title("Energy by phase", s))
    ax.legend(fontsize=8)
    return fig


def _phases_plotly(run, d, s):
    go = _need("plotly")
    names, e, net = d
    fig = go.Figure([
        go.Bar(x=names, y=e, name="energy (J)", marker_color=[_PHASE_COLOR.get(n, _OTHER_COLOR) for n in names],
               marker_line_color="#333333", marker_line_width=1),
        go.Bar(x=names, y=net, name="above idle (J)", marker_color="#888888"),
    ])
    fig.update_layout(title=_title("Energy by phase", s), yaxis_title="energy (J)", barmode="group",
                      template="plotly_white")
    return fig


# ---- tokens
def _tokens_mpl(run, d, s):
    steps, jpt, res, note = d
    fig = _mpl_fig(9, 4)
    ax = fig.add_subplot()
    ax.plot(steps, jpt, color=_DOMAIN_COLOR["gpu"], lw=1, alpha=0.5)
    if res.any():
        ax.plot(steps[res], jpt[res], "o", ms=4, color=_DOMAIN_COLOR["gpu"], label="J per token (resolved)")
    if (~res).any():
        ax.plot(steps[~res], jpt[~res], "o", ms=4, mfc="none", alpha=0.45, color=_DOMAIN_COLOR["gpu"],
                label=f"faded: {UNRESOLVED_TEXT} ({int((~res).sum())} of {len(res)})")
    mean = float(np.nanmean(jpt))
    ax.axhline(mean, color="#555555", ls="--", lw=1, label=f"mean {mean:.3g} J")
    ax.set_xlabel("decode step")
    ax.set_ylabel("energy per token (J)")
    ax.set_title(_title("Energy per token across the decode" + note, s))
    ax.legend(fontsize=8)
    return fig


def _tokens_plotly(run, d, s):
    go = _need("plotly")
    steps, jpt, res, note = d
    fig = go.Figure(go.Scatter(x=steps, y=jpt, mode="lines", name="J per token", showlegend=False,
                               line=dict(color=_DOMAIN_COLOR["gpu"], width=1), opacity=0.5))
    if res.any():
        fig.add_trace(go.Scatter(x=steps[res], y=jpt[res], mode="markers", name="J per token (resolved)",
                                 marker=dict(color=_DOMAIN_COLOR["gpu"], size=7)))
    if (~res).any():
        fig.add_trace(go.Scatter(x=steps[~res], y=jpt[~res], mode="markers", opacity=0.45,
                                 name=f"faded: {UNRESOLVED_TEXT} ({int((~res).sum())} of {len(res)})",
                                 marker=dict(color=_DOMAIN_COLOR["gpu"], size=7, symbol="circle-open")))
    mean = float(np.nanmean(jpt))
    fig.add_hline(y=mean, line_dash="dash", line_color="#555555", annotation_text=f"mean {mean:.3g} J")
    fig.update_layout(title=_title("Energy per token across the decode" + note, s), xaxis_title="decode step",
                      yaxis_title="energy per token (J)", template="plotly_white",
                      legend=dict(orientation="h", y=-0.25))
    return fig


# ---- heatmaps
def _heat_mpl(z, xlabels, ylabels, title, xlabel, cbar, resolved=None):
    fig = _mpl_fig(max(6.0, 0.45 * len(xlabels) + 3), max(3.0, 0.35 * len(ylabels) + 2))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(z), aspect="auto", cmap="viridis", interpolation="nearest")
    if resolved is not None:
        from matplotlib.patches import Rectangle

        bad = np.argwhere(np.isfinite(z) & (resolved < RESOLVED_MIN_SHARE))
        for k, (i, j) in enumerate(bad):
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="white", lw=0,
                                   label=f"hatched: {UNRESOLVED_TEXT}" if k == 0 else None))
        if len(bad):
            fig.legend(loc="outside lower center", fontsize=7, frameon=False)
    ax.set_xticks(np.arange(len(xlabels)), [str(v) for v in xlabels], rotation=60 if len(xlabels) > 8 else 0,
                  ha="right" if len(xlabels) > 8 else "center", fontsize=8)
    step = max(1, len(ylabels) // 24)
    ax.set_yticks(np.arange(0, len(ylabels), step), [str(v) for v in ylabels[::step]], fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=cbar)
    return fig


def _heat_plotly(z, xlabels, ylabels, title, xlabel, cbar, resolved=None):
    go = _need("plotly")
    unit = cbar[cbar.rfind("(") + 1:-1] if cbar.endswith(")") and "(" in cbar else ""
    xs, ys = [_esc(v) for v in xlabels], [f"layer {v}" for v in ylabels]
    fig = go.Figure(go.Heatmap(z=z, x=xs, y=ys, colorscale="Viridis", colorbar=dict(title=_esc(cbar)),
                               hovertemplate="%{y}, %{x}: %{z:.4g} " + _esc(unit) + "<extra></extra>"))
    if resolved is not None:
        bad = np.argwhere(np.isfinite(z) & (resolved < RESOLVED_MIN_SHARE))
        if len(bad):  # plotly heatmaps cannot hatch: a hatch-like mark on each unresolved cell
            fig.add_trace(go.Scatter(x=[xs[j] for _, j in bad], y=[ys[i] for i, _ in bad], mode="markers",
                                     name=f"hatched: {UNRESOLVED_TEXT}", hoverinfo="skip", showlegend=True,
                                     marker=dict(symbol="line-ne-open", size=14, color="white",
                                                 line=dict(width=1.5, color="white"))))
    fig.update_layout(title=title, xaxis_title=xlabel, template="plotly_white",
                      yaxis=dict(autorange="reversed", type="category"), xaxis=dict(type="category"),
                      legend=dict(orientation="h", y=-0.2))
    return fig


def _metric_title(metric: str) -> str:
    name = METRICS[metric][0] if metric in METRICS else metric
    name = name[:name.find(" (")] if " (" in name else name
    return name[0].upper() + name[1:]


def _layers_label(metric: str) -> str:
    unit = _ds.METRICS[metric][0]
    return f"{metric} ({unit})" if unit != "1" else metric


def _layers_available(run: Any) -> List[str]:
    """The metrics of :data:`energyprof.analysis.deepstats.METRICS` the run has a value for."""
    out = []
    for m in _ds.METRICS:
        try:
            _layer_component_matrix(run, m)
        except NoDataError:
            continue
        out.append(m)
    return out


def _layers_fig(run, backend, s, metric="energy_j"):
    """The layer × component heatmap of ``metric``; in plotly a dropdown (the metric selector)
    switches between every metric the run has: energy, time, power and, in deep mode, each
    activation statistic.  Cells of sampled metrics whose calls are not resolved are hatched."""
    layers, names, z, res = _layer_component_matrix(run, metric)
    f = _heat_mpl if backend == "matplotlib" else _heat_plotly

    def title(m):
        over = " (all steps)" if m in ("energy_j", "duration_s") else " (over all steps)"
        return _title(f"{_layers_label(m)} per layer and component{over}", s)

    fig = f(z, names, layers, title(metric), "component", _layers_label(metric),
            resolved=res if metric in _SAMPLED else None)
    if backend == "matplotlib":
        return fig
    metrics = _layers_available(run)
    if len(metrics) > 1:
        buttons = []
        for m in metrics:
            zm = _layer_component_matrix(run, m)[2]
            buttons.append(dict(label=m, method="update",
                                args=[{"z": [np.where(np.isfinite(zm), zm, None).tolist()],
                                       "colorbar.title.text": [_esc(_layers_label(m))]},
                                      {"title.text": title(m)}, [0]]))
        fig.update_layout(updatemenus=[dict(buttons=buttons, direction="down", x=0.0, xanchor="left", y=-0.32,
                                            yanchor="top", active=metrics.index(metric) if metric in metrics else 0,
                                            showactive=True, pad=dict(t=0))],
                          annotations=[dict(text="metric:", x=0.0, xref="paper", xanchor="right", y=-0.34,
                                            yref="paper", yanchor="top", showarrow=False)],
                          margin=dict(b=110))
    return fig


def _layer_steps_fig(run, backend, s, metric="energy_j"):
    """The token × layer heatmap (step 0 is the prefill); unresolved cells hatched."""
    layers, labels, z, res, note = _layer_step_cells(run, metric)
    f = _heat_mpl if backend == "matplotlib" else _heat_plotly
    return f(z, labels, layers, _title(f"{_metric_title(metric)} per layer and forward step (0 = prefill){note}", s),
             "step", METRICS[metric][0], resolved=res if metric in _SAMPLED else None)


def _ops_fig(run, backend, s, metric="energy_j"):
    """Ops per layer of a deep run (qk, softmax, av; the MLP's activation and multiply; the
    norms' variance, normalise and scale); unresolved cells hatched."""
    layers, names, z = _op_matrix(run, metric)
    f = _heat_mpl if backend == "matplotlib" else _heat_plotly
    res = None
    if metric in _SAMPLED:
        ops = _arr(run, "ops")
        ops = ops[ops["layer"] >= 0]
        res = _resolved_share(ops, layers, names, "component", str)
    return f(z, names, layers, _title(f"{_metric_title(metric)} per layer and operation (mode='deep')", s), "op",
             METRICS[metric][0], resolved=res)


def _heads_fig(run, backend, s, metric="entropy"):
    layers, hs, z = _head_matrix(run, metric)
    f = _heat_mpl if backend == "matplotlib" else _heat_plotly
    return f(z, hs, layers, _title(f"Per-head {HEAD_METRICS[metric]} (mean over attention calls)", s), "head",
             HEAD_METRICS[metric])


# ---- components
def _components_mpl(run, d, s):
    names, self_j, res = d
    total = float(np.sum(self_j))
    fig = _mpl_fig(8, max(3.0, 0.3 * len(names) + 1.5))
    ax = fig.add_subplot()
    y = np.arange(len(names))
    share = 100.0 * self_j / total if total else np.zeros_like(self_j)
    bad = res < RESOLVED_MIN_SHARE
    bars = ax.barh(y, share, color="#4c72b0", edgecolor="#4c72b0")
    for bar, is_bad in zip(bars, bad):
        if is_bad:
            bar.set_alpha(0.35)
            bar.set_hatch("///")
    if bad.any():
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(facecolor="#4c72b0", label="resolved (most calls span a whole sample)"),
                           Patch(facecolor="#4c72b0", alpha=0.35, hatch="///", label=f"faded: {UNRESOLVED_TEXT}")],
                  fontsize=7, loc="lower right")
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("share of the energy in hooked modules (%)")
    ax.set_title(_title("Where the hooked modules' energy went", s))
    return fig


def _components_plotly(run, s):
    go = _need("plotly")
    tree = _call_tree(run)
    paths, path_id = tree["paths"], tree["path_id"]
    ids_in_order, sums = _group_sums(path_id, np.maximum(tree["self_j"], 0.0))
    agg: Dict[Tuple[str, ...], float] = {paths[i]: float(v) for i, v in zip(ids_in_order.tolist(), sums.tolist())}
    # Every prefix of a path is a node too (its own energy is the remainder).
    for path in list(agg):
        for k in range(1, len(path)):
            agg.setdefault(path[:k], 0.0)
    ids = ["/".join(p) for p in agg]
    parents = ["/".join(p[:-1]) for p in agg]
    labels = [_esc(p[-1]) for p in agg]
    # a node whose calls are mostly unresolved is faded (sunbursts have no legend: a note says so)
    calls = tree["calls"]
    res = (np.asarray(calls["resolved"], dtype=float) if "resolved" in calls.dtype.names
           else np.ones(len(calls)))
    hits: Dict[Tuple[str, ...], List[float]] = {}
    n_res = np.bincount(path_id, weights=res, minlength=len(paths))
    n_calls = np.bincount(path_id, minlength=len(paths))
    for path, r, m in zip(paths, n_res.tolist(), n_calls.tolist()):
        if not m:
            continue
        for k in range(1, len(path) + 1):
            c = hits.setdefault(path[:k], [0.0, 0.0])
            c[0] += r
            c[1] += m
    faded = [p in hits and hits[p][0] / hits[p][1] < RESOLVED_MIN_SHARE for p in agg]
    roots = list(dict.fromkeys(p[0] for p in agg))
    colors = []
    for p, f in zip(agg, faded):  # each top-level module's colour, lighter where unresolved
        r, g, b = _SUNBURST_RGB[roots.index(p[0]) % len(_SUNBURST_RGB)]
        colors.append(f"rgba({r},{g},{b},{0.55 if f else 1.0})")
    fig = go.Figure(go.Sunburst(ids=ids, parents=parents, labels=labels, values=list(agg.values()),
                                branchvalues="remainder", maxdepth=3,
                                marker=dict(colors=colors, line=dict(width=1, color="white")),
                                leaf=dict(opacity=1.0),
                                hovertemplate="%{label}: %{value:.4g} J<extra></extra>"))
    fig.update_layout(title=_title("Energy by module (click to zoom)", s), margin=dict(t=50, l=10, r=10, b=40))
    if any(faded):
        fig.add_annotation(text=f"faded: {UNRESOLVED_TEXT}", showarrow=False, x=0.5, y=-0.04, xref="paper",
                           yref="paper", font=dict(size=11))
    return fig


# ---- sankey
def _sankey_plotly(run, d, s):
    go = _need("plotly")
    fig = go.Figure(go.Sankey(
        node=dict(label=[_esc(v) for v in d["labels"]], pad=12, thickness=14, align="left"),
        link=dict(source=d["source"], target=d["target"], value=d["value"]),
        valueformat=".4g", valuesuffix=" J"))
    fig.update_layout(title=_title("Where the energy flowed: run → phases → layers → components", s),
                      font_size=11)
    return fig


def _sankey_mpl(run, d, s):
    """The same flows as an alluvial chart: one column of stacked nodes per level."""
    n = len(d["labels"])
    col = [0] * n
    for a, b in zip(d["source"], d["target"]):  # links are added level by level
        col[b] = max(col[b], col[a] + 1)
    inflow, outflow = np.zeros(n), np.zeros(n)
    for a, b, v in zip(d["source"], d["target"], d["value"]):
        outflow[a] += v
        inflow[b] += v
    size = np.maximum(inflow, outflow)
    total = float(size[0]) or 1.0
    gap = 0.02 * total
    ybase = np.zeros(n)
    for c in range(max(col) + 1):
        y = 0.0
        for i in range(n):
            if col[i] == c:
                ybase[i] = y
                y += size[i] + gap
    fig = _mpl_fig(12, 6)
    ax = fig.add_subplot()
    w = 0.12
    cmap = {"run": "#555555", "phase": "#1f77b4", "top": "#2ca02c", "component": "#9467bd", "other": "#bbbbbb"}
    for i, (kind, name) in enumerate(d["nodes"]):
        ax.add_patch(_rect(col[i] - w / 2, ybase[i], w, size[i], cmap.get(kind, "#999999")))
        if size[i] > 0.012 * total:
            ax.text(col[i] + w / 2 + 0.02, ybase[i] + size[i] / 2, name, va="center", fontsize=7)
    out_cur, in_cur = ybase.copy(), ybase.copy()
    t = np.linspace(0.0, 1.0, 24)
    ease = t * t * (3 - 2 * t)  # smoothstep: bands leave and enter the nodes horizontally
    for a, b, v in zip(d["source"], d["target"], d["value"]):
        x = col[a] + w / 2 + (col[b] - col[a] - w) * t
        lo = out_cur[a] + (in_cur[b] - out_cur[a]) * ease
        ax.fill_between(x, lo, lo + v, color=cmap.get(d["nodes"][a][0], "#999999"), alpha=0.3, lw=0)
        out_cur[a] += v
        in_cur[b] += v
    ax.set_xlim(-0.3, max(col) + 0.9)
    ax.set_ylim(float((ybase + size).max()) * 1.02, -0.02 * total)
    ax.set_xticks(range(max(col) + 1), ["run", "phases", "layers / modules", "components"][: max(col) + 1])
    ax.set_yticks([])
    ax.set_ylabel("energy (stacked, J)")
    ax.set_title(_title("Where the energy flowed: run → phases → layers → components", s))
    return fig


def _rect(x, y, w, h, color):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, color=color, lw=0)


# ---- waterfall
def _waterfall_mpl(run, d, s):
    labels, steps, total = d
    fig = _mpl_fig(9, 4.2)
    ax = fig.add_subplot()
    bottoms = np.concatenate([[0.0], np.cumsum(steps)[:-1]])
    x = np.arange(len(steps) + 1)
    colors = ["#bbbbbb"] + ["#2ca02c" if v >= 0 else "#d62728" for v in steps[1:]]
    ax.bar(x[:-1], steps, bottom=bottoms, color=colors, edgecolor="#333333")
    ax.bar(x[-1], total, color="#1f77b4", edgecolor="#333333")
    ax.set_xticks(x, labels + ["run total"], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("energy (J)")
    ax.set_title(_title("Where the run's energy went", s))
    return fig


def _waterfall_plotly(run, d, s):
    go = _need("plotly")
    labels, steps, total = d
    fig = go.Figure(go.Waterfall(x=labels + ["run total"], y=list(steps) + [total],
                                 measure=["relative"] * len(steps) + ["total"],
                                 texttemplate="%{y:.3g} J", textposition="outside"))
    fig.update_layout(title=_title("Where the run's energy went", s), yaxis_title="energy (J)",
                      template="plotly_white", showlegend=False)
    return fig


# --------------------------------------------------------------------------- public
def plot(run: Any, kind: str = "timeline", backend: str = "matplotlib", metric: Optional[str] = None,
         bins: int = 20):
    """Draw one figure of ``run`` and return it.

    Parameters
    ----------
    run:
        A session or loaded run (``summary()``, ``samples``, ``sections``, ``tokens``,
        ``layers``, ``components``).
    kind:
        ``"timeline"`` power per domain with phase bands, section markers, peak and
        idle-baseline lines; ``"phases"`` energy by phase (gross and above idle);
        ``"tokens"`` energy per token across the decode; ``"layers"`` layer x component
        heatmap; ``"layer_steps"`` layer x forward-step heatmap; ``"components"`` share
        per component (bars in matplotlib, a sunburst of the module tree in plotly);
        ``"sankey"`` run -> phases -> layers -> components (plotly only);
        ``"waterfall"`` idle baseline plus each phase's energy above idle, to the total;
        ``"token_components"`` attention / MLP / norms / other per decode step with the
        cumulative energy; ``"token_hist"`` the distribution of per-token energy with the
        highest and lowest tokens and their text; ``"context"`` decode J/token against the
        context length with its fit.  Deep runs (:data:`DEEP_KINDS`): ``"ops"`` layer x
        operation heatmap, ``"heads"`` a per-head attention statistic (layer x head),
        ``"activations"`` kill and variance ratios and sparsity per layer.  MoE runs:
        ``"moe"`` tokens routed per (layer, expert) and the energy per expert.  Per-token and
        per-layer figures mark what is unresolved (shorter than one power sample).
    bins:
        ``"token_hist"``: the number of bins.
    backend:
        ``"matplotlib"`` (a ``matplotlib.figure.Figure``, for PNG/SVG) or ``"plotly"``
        (a ``plotly.graph_objects.Figure``, interactive).
    metric:
        What the heatmaps show per cell: for ``layer_steps`` and ``ops`` one of
        :data:`METRICS` (default ``"energy_j"``; ``"duration_s"``, ``"power_w"``,
        ``"act_mean"``, ``"act_abs_mean"``, ``"act_std"``, ``"act_max"``,
        ``"act_sparsity"``), for ``layers`` one of
        :data:`energyprof.analysis.deepstats.METRICS` (those and ``"kill_ratio"``,
        ``"variance_ratio"``; in plotly a dropdown switches between the metrics the run
        has), for ``heads`` one of :data:`HEAD_METRICS` (default ``"entropy"``).  Other
        kinds take none.

    Raises
    ------
    ValueError
        for an unknown kind or backend (the message lists the valid ones).
    NoDataError
        (a ValueError) when the run has no data for that kind.
    ImportError
        naming the plotting package that is missing.
    """
    if kind not in ALL_KINDS:
        raise ValueError(f"unknown plot kind {kind!r}; valid kinds: {', '.join(ALL_KINDS)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if metric is not None and kind not in ("layers", "layer_steps", "ops", "heads"):
        raise ValueError(f"plot kind {kind!r} takes no metric (only layers, layer_steps, ops and heads do)")
    valid = _ds.METRICS if kind == "layers" else METRICS
    if metric is not None and kind != "heads" and metric not in valid:
        raise ValueError(f"unknown metric {metric!r}; valid metrics: {', '.join(valid)}")
    _need(backend)
    s = _summary(run)
    mpl = backend == "matplotlib"
    if kind == "ops":
        return _ops_fig(run, backend, s, metric or "energy_j")
    if kind == "heads":
        return _heads_fig(run, backend, s, metric or "entropy")
    if kind == "timeline":
        d = _timeline_data(run)
        return _timeline_mpl(run, d, s) if mpl else _timeline_plotly(run, d, s)
    if kind == "phases":
        d = _phase_data(run)
        return _phases_mpl(run, d, s) if mpl else _phases_plotly(run, d, s)
    if kind == "tokens":
        d = _token_series(run)
        return _tokens_mpl(run, d, s) if mpl else _tokens_plotly(run, d, s)
    if kind == "activations":
        from . import deep_plots as dp

        return dp.activations_fig(run, backend, s)
    if kind in ("token_components", "token_hist", "context", "moe"):
        from . import token_plots as tp

        if kind == "token_hist":
            return tp.token_hist_fig(run, backend, s, bins=bins)
        return {"token_components": tp.token_components_fig, "context": tp.context_fig,
                "moe": tp.moe_fig}[kind](run, backend, s)
    if kind == "layers":
        return _layers_fig(run, backend, s, metric or "energy_j")
    if kind == "layer_steps":
        return _layer_steps_fig(run, backend, s, metric or "energy_j")
    if kind == "components":
        return _components_mpl(run, _component_self_resolved(run), s) if mpl else _components_plotly(run, s)
    if kind == "sankey":
        d = _sankey_data(run)
        return _sankey_mpl(run, d, s) if mpl else _sankey_plotly(run, d, s)
    d = _waterfall_data(run)
    return _waterfall_mpl(run, d, s) if mpl else _waterfall_plotly(run, d, s)


def plot_compare(a: Any, b: Any, backend: str = "matplotlib", labels: Optional[Tuple[str, str]] = None):
    """Two runs side by side: energy per phase (grouped bars) and energy per token.

    ``labels`` names the runs in the legend (default: their names or ids, else "A"/"B").
    Returns a matplotlib or plotly figure; raises like :func:`plot`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    _need(backend)
    la, lb = labels if labels else (_run_name(a, "A"), _run_name(b, "B"))
    if la == lb:
        la, lb = f"A: {la}", f"B: {lb}"
    sa, sb = _summary(a), _summary(b)
    tag = label_tag(sa) or label_tag(sb)
    na, ea, _ = _phase_data(a)
    nb, eb, _ = _phase_data(b)
    names = [p for p in PHASE_ORDER if p in na or p in nb] + \
        [p for p in dict.fromkeys(na + nb) if p not in PHASE_ORDER]
    va = np.array([ea[na.index(p)] if p in na else 0.0 for p in names])
    vb = np.array([eb[nb.index(p)] if p in nb else 0.0 for p in names])
    toks = []
    for r in (a, b):
        try:
            toks.append(_token_data(r))
        except NoDataError:
            toks.append((np.zeros(0), np.zeros(0)))
    ja, jb = _float(sa.get("j_per_token")), _float(sb.get("j_per_token"))
    title = f"{la} vs {lb}: J/token {ja:.3g} vs {jb:.3g}" + tag
    if backend == "matplotlib":
        fig = _mpl_fig(12, 4.2)
        ax1, ax2 = fig.subplots(1, 2)
        x = np.arange(len(names))
        ax1.bar(x - 0.2, va, 0.4, label=la, color=_A_COLOR)
        ax1.bar(x + 0.2, vb, 0.4, label=lb, color=_B_COLOR)
        ax1.set_xticks(x, names, fontsize=8)
        ax1.set_ylabel("energy (J)")
        ax1.set_title("Energy by phase")
        ax1.legend(fontsize=8)
        for (st, j), lab, c in zip(toks, (la, lb), (_A_COLOR, _B_COLOR)):
            ax2.plot(st, j, marker="o", ms=3, label=lab, color=c)
        ax2.set_xlabel("decode step")
        ax2.set_ylabel("energy per token (J)")
        ax2.set_title("Energy per token across the decode")
        ax2.legend(fontsize=8)
        fig.suptitle(title)
        return fig
    go = _need("plotly")
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("Energy by phase", "Energy per token across the decode"))
    fig.add_trace(go.Bar(x=names, y=va, name=_esc(la), marker_color=_A_COLOR, legendgroup="a"), 1, 1)
    fig.add_trace(go.Bar(x=names, y=vb, name=_esc(lb), marker_color=_B_COLOR, legendgroup="b"), 1, 1)
    for (st, j), lab, c, g in zip(toks, (la, lb), (_A_COLOR, _B_COLOR), ("a", "b")):
        fig.add_trace(go.Scatter(x=st, y=j, mode="lines+markers", name=_esc(lab), line=dict(color=c),
                                 legendgroup=g, showlegend=False), 1, 2)
    fig.update_yaxes(title_text="energy (J)", row=1, col=1)
    fig.update_yaxes(title_text="energy per token (J)", row=1, col=2)
    fig.update_xaxes(title_text="decode step", row=1, col=2)
    fig.update_layout(title=_esc(title), barmode="group", template="plotly_white")
    return fig


# --------------------------------------------------------------------------- many runs
_LABEL_COLOR = {"measured": "#2ca02c", "estimated": "#d8a000", "simulated": "#e0701a", "unknown": "#888888"}
_RUN_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf")


def _label_of(s: Dict[str, Any]) -> str:
    lab = str(s.get("source_label") or "unknown").lower()
    return lab if lab in _LABEL_COLOR else "unknown"


def _names(runs: Sequence[Any]) -> List[str]:
    """Legend names of runs: their names (or ids), made unique with the run id where two agree."""
    names = [_run_name(r, f"run #{i + 1}") for i, r in enumerate(runs)]
    out = []
    for i, (n, r) in enumerate(zip(names, runs)):
        rid = _summary(r).get("run_id")
        out.append(f"{n} (#{rid if rid is not None else i + 1})" if names.count(n) > 1 else n)
    return out


def plot_history(runs: Sequence[Any], figure: str = "j_per_output_token", backend: str = "plotly"):
    """One marker per run: ``figure`` (any name :func:`energyprof.analysis.efficiency.figure_value`
    knows) against the run's start time, one colour per label (measured / estimated /
    simulated).  ``runs`` are runs or summary dicts.  Returns a plotly or matplotlib figure."""
    import datetime as _dt

    from ..analysis.efficiency import FIGURE_UNITS, figure_value

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    _need(backend)
    groups: Dict[str, List[Tuple[Any, float, str]]] = {}
    for r in runs:
        s = r if isinstance(r, dict) else _summary(r)
        try:
            t = _dt.datetime.fromisoformat(str(s.get("started_at")).replace("Z", "+00:00"))
        except ValueError:
            continue
        v = figure_value(s, figure)
        if not math.isfinite(v):
            continue
        groups.setdefault(_label_of(s), []).append((t, v, _run_name(s, "run")))
    if not groups:
        raise NoDataError(f"none of the runs has a value of {figure!r} and a start time")
    unit = FIGURE_UNITS.get(figure, "")
    ytitle = f"{figure} ({unit})" if unit else figure
    title = f"{figure} of each run over time"
    if backend == "matplotlib":
        fig = _mpl_fig(9, 4)
        ax = fig.add_subplot()
        for lab, pts in groups.items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", color=_LABEL_COLOR[lab], label=lab)
        ax.set_ylabel(ytitle)
        ax.set_title(title)
        ax.legend(fontsize=8)
        return fig
    go = _need("plotly")
    fig = go.Figure()
    for lab, pts in groups.items():
        fig.add_trace(go.Scatter(x=[p[0].isoformat() for p in pts], y=[p[1] for p in pts], mode="markers",
                                 name=lab, marker=dict(color=_LABEL_COLOR[lab], size=9),
                                 text=[_esc(p[2]) for p in pts],
                                 hovertemplate="%{text}<br>%{x}<br>%{y:.4g}<extra>" + lab + "</extra>"))
    fig.update_layout(title=_esc(title), yaxis_title=_esc(ytitle), xaxis_title="started (UTC)",
                      template="plotly_white", legend_title="label")
    return fig


def plot_compare_many(runs: Sequence[Any], kind: str = "bars", backend: str = "plotly",
                      figure: str = "j_per_output_token"):
    """Two to ten runs together.

    ``kind="bars"``: ``figure`` (default J per output token) of each run as a bar,
    coloured by the run's label, with the label in the bar's text.  ``kind="timeline"``:
    each run's total power (the rule of :func:`energyprof._dtypes.total_of`) against the
    seconds from that run's start, overlaid on one axis.  Returns a plotly or
    matplotlib figure; raises like :func:`plot`.
    """
    from ..analysis.efficiency import FIGURE_UNITS, figure_value

    if kind not in ("bars", "timeline"):
        raise ValueError(f"unknown kind {kind!r}; valid kinds: bars, timeline")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    _need(backend)
    runs = list(runs)
    names = _names(runs)
    sums = [_summary(r) for r in runs]
    tags = sorted({label_tag(s).strip() for s in sums if label_tag(s)})
    tag = (" " + " ".join(tags)) if tags else ""
    if kind == "bars":
        vals = [figure_value(s, figure) for s in sums]
        labs = [_label_of(s) for s in sums]
        unit = FIGURE_UNITS.get(figure, "")
        title = f"{figure} per run" + tag
        if backend == "matplotlib":
            fig = _mpl_fig(max(6.0, 1.0 * len(runs) + 3), 4)
            ax = fig.add_subplot()
            x = np.arange(len(runs))
            ax.bar(x, vals, color=[_LABEL_COLOR[lab] for lab in labs], edgecolor="#333333")
            ax.set_xticks(x, [f"{n}\n[{lab}]" for n, lab in zip(names, labs)], fontsize=8)
            ax.set_ylabel(f"{figure} ({unit})" if unit else figure)
            ax.set_title(title)
            return fig
        go = _need("plotly")
        fig = go.Figure(go.Bar(x=[_esc(n) for n in names], y=vals, marker_color=[_LABEL_COLOR[lab] for lab in labs],
                               text=[f"{v:.4g} [{lab}]" if math.isfinite(v) else f"n/a [{lab}]"
                                     for v, lab in zip(vals, labs)], textposition="outside"))
        fig.update_layout(title=_esc(title), yaxis_title=_esc(f"{figure} ({unit})" if unit else figure),
                          template="plotly_white", showlegend=False)
        return fig
    from .compare_plot import run_power_trace

    lines = []
    for r, s, n in zip(runs, sums, names):
        smp = _arr(r, "samples")
        if smp is None or len(smp) == 0:
            continue
        x, y = run_power_trace(r)   # seconds from the run's start, the run's total rule
        lines.append((n, x, y, _label_of(s)))
    if not lines:
        raise NoDataError("none of the runs has power samples")
    title = "Total power of each run from its start" + tag
    if backend == "matplotlib":
        fig = _mpl_fig(11, 4.5)
        ax = fig.add_subplot()
        for i, (n, x, y, lab) in enumerate(lines):
            ax.plot(x, y, lw=1.0, color=_RUN_COLORS[i % len(_RUN_COLORS)], label=f"{n} [{lab}]")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("time (s from each run's start)")
        ax.set_ylabel("total power (W)")
        ax.set_title(title)
        ax.legend(fontsize=8)
        return fig
    go = _need("plotly")
    fig = go.Figure()
    for i, (n, x, y, lab) in enumerate(lines):
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=_esc(f"{n} [{lab}]"),
                                 line=dict(width=1.5, color=_RUN_COLORS[i % len(_RUN_COLORS)])))
    fig.update_layout(title=_esc(title), xaxis_title="time (s from each run's start)", yaxis_title="total power (W)",
                      template="plotly_white", yaxis_rangemode="tozero", hovermode="x unified")
    return fig


__all__ = ["plot", "plot_compare", "plot_history", "plot_compare_many", "plot_runs", "KINDS", "DEEP_KINDS",
           "MOE_KINDS", "ALL_KINDS", "METRICS", "HEAD_METRICS", "BACKENDS", "PHASE_ORDER", "NoDataError", "label_tag",
           "MAX_TIMELINE_SAMPLES", "UNRESOLVED_TEXT", "RESOLVED_MIN_SHARE"]


def plot_runs(runs: Sequence[Any], backend: str = "matplotlib", labels: Optional[Sequence[str]] = None,
              figure: str = "j_per_output_token"):
    """2-10 runs in one figure: power timelines overlaid and J per output token as bars
    (:func:`energyprof.views.compare_plot.plot_runs`; the dashboard draws the two halves
    apart with :func:`plot_compare_many`)."""
    from .compare_plot import plot_runs as _plot_runs

    return _plot_runs(runs, backend=backend, labels=labels, figure=figure)
