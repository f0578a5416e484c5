"""One self-contained HTML file per run: summary cards, every plot, the tables, the environment.

The file embeds plotly's JavaScript inline and loads nothing from the network (a
Content-Security-Policy in the page forbids it), so it opens offline, can be mailed,
and archived next to the run.

>>> import tempfile, pathlib
>>> from energyprof.testing import synthetic_run
>>> from energyprof.views.report import write_report
>>> p = write_report(synthetic_run(), pathlib.Path(tempfile.mkdtemp()) / "run.html")
>>> "SIMULATED" in p.read_text(encoding="utf-8")
True

Carbon and cost use a stated grid intensity and price (:func:`energyprof.analysis.carbon.carbon_and_cost`):
the arguments, else the environment variables ``ENERGYPROF_CO2_G_PER_KWH`` /
``ENERGYPROF_PRICE_PER_KWH``, else 400 gCO2/kWh and 0.15 $/kWh.  The page says which values it used.

How well the numbers were measured is on the page where they are: a "How well this was
measured" box under the cards (the resolved share of phases, tokens and calls, the
sample period, gaps, the source's systematic uncertainty, every warning), the same line
above the token, layer and component figures and tables, and faded or hatched marks on
unresolved rows in the plots.

When the page has drawn every plot it sets ``data-energyprof-status="ok"`` on the
``<html>`` element (``"error: ..."`` on a JavaScript error): the browser test reads it.
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .._dtypes import DOMAINS, flag_names
from ..analysis.carbon import CO2_ENV, PRICE_ENV, carbon_and_cost
from ..errors import MissingExtraError
from ..store.quality import resolution_lines, resolution_of, uncertainty_summary, uncertainty_text
from ..store.rundata import _float
from . import plot as _plot

#: The figures of the report, in page order: (kind, heading, full width).
REPORT_PLOTS = (
    ("timeline", "Power over time", True),
    ("phases", "Energy by phase", False),
    ("waterfall", "Where the run's energy went", False),
    ("tokens", "Energy per token", False),
    ("components", "Energy by module", False),
    ("layers", "Layer × component", False),
    ("layer_steps", "Layer × decode step", False),
    ("sankey", "Energy flow", True),
    ("token_components", "Energy per decode step by component", True),
    ("token_hist", "Distribution of per-token energy", False),
    ("context", "J/token against the context length", False),
)

#: The figures of a deep-mode run's sections (drawn only when the run has the rows):
#: (kind, heading, section id).
REPORT_DEEP_PLOTS = (
    ("ops", "Ops per layer", "deep-ops"),
    ("heads", "Attention entropy per layer and head", "deep-heads"),
    ("activations", "Activation statistics per layer", "deep-activations"),
)

_MAX_TABLE_ROWS = 2000


# --------------------------------------------------------------------------- settings




# --------------------------------------------------------------------------- formatting
def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


_SI = ((1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"))


def fmt_si(v: Any, unit: str, digits: int = 4) -> str:
    """``0.00123, "J"`` -> ``"1.23 mJ"``; NaN / None -> ``"n/a"``."""
    x = _float(v)
    if not math.isfinite(x):
        return "n/a"
    if x == 0:
        return f"0 {unit}"
    for scale, prefix in _SI:
        if abs(x) >= scale:
            return f"{x / scale:.{digits}g} {prefix}{unit}"
    return f"{x:.{digits}g} {unit}"


def _cell(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        x = float(v)
        return "n/a" if not math.isfinite(x) else f"{x:.6g}"
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str, sort_keys=True)
    return str(v)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    n = 0
    for r in rows:
        n += 1
        if n > _MAX_TABLE_ROWS:
            continue
        tds = "".join(f'<td class="{"num" if isinstance(c, (int, float, np.number)) else ""}">{_e(_cell(c))}</td>'
                      for c in r)
        body.append(f"<tr>{tds}</tr>")
    more = (f'<p class="note">{n - _MAX_TABLE_ROWS} more rows not shown (the run has {n}); '
            f"export the run for all of them.</p>") if n > _MAX_TABLE_ROWS else ""
    return f'<table class="{_e(cls)}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>{more}'


def _tabular(obj: Any) -> Optional[Tuple[List[str], List[List[Any]]]]:
    """Headers and rows of a structured array, a DataFrame, a list of dicts or a dict of lists."""
    if obj is None:
        return None
    if hasattr(obj, "columns") and hasattr(obj, "itertuples"):  # pandas DataFrame
        return [str(c) for c in obj.columns], [list(t) for t in obj.itertuples(index=False)]
    arr = np.asarray(obj) if isinstance(obj, np.ndarray) else None
    if arr is not None and arr.dtype.names:
        names = list(arr.dtype.names)
        return names, [[r[n] for n in names] for r in arr]
    if isinstance(obj, dict):
        names = list(obj)
        cols = [list(obj[n]) for n in names]
        return names, [list(r) for r in zip(*cols)]
    if isinstance(obj, (list, tuple)) and obj and isinstance(obj[0], dict):
        names = list(obj[0])
        return names, [[d.get(n) for n in names] for d in obj]
    return None


def _drop_nan_columns(headers: List[str], rows: List[List[Any]]) -> Tuple[List[str], List[List[Any]]]:
    """Leave out columns that are NaN in every row (domains the source does not measure)."""
    keep = []
    for j, _h in enumerate(headers):
        vals = [r[j] for r in rows]
        all_nan = bool(vals) and all(isinstance(v, (float, np.floating)) and math.isnan(float(v)) for v in vals)
        if not all_nan:
            keep.append(j)
    return [headers[j] for j in keep], [[r[j] for j in keep] for r in rows]


# --------------------------------------------------------------------------- sections
def _banner(s: Dict[str, Any]) -> str:
    label = str(s.get("source_label") or "unknown").lower()
    source = s.get("source") or "unknown"
    method = s.get("method") or "unknown"
    period = _float(s.get("sample_period_s"))
    period_txt = f"{period * 1e3:.4g} ms" if math.isfinite(period) else "n/a"
    line = (f"Source <b>{_e(source)}</b> ({_e(s.get('source_kind') or '?')}, {_e(label)}); integration "
            f"<b>{_e(method)}</b>; sample period {_e(period_txt)}; total = {_e(s.get('total_rule') or 'n/a')}; "
            f"mode {_e(s.get('mode') or 'n/a')}, sync {_e(s.get('sync') or 'n/a')}.")
    if label == "simulated":
        big = ("SIMULATED DATA: these numbers come from a programmed (synthetic) power source, "
               "not from a measurement.")
    elif label == "estimated":
        big = ("ESTIMATED DATA: these numbers are modelled from CPU time, not measured by a power sensor.")
    else:
        big = ""
    cls = "banner " + (label if label in ("simulated", "estimated", "measured") else "unknown")
    big_html = f'<div class="big" id="label-warning">{_e(big)}</div>' if big else ""
    status = str(s.get("status") or "")
    if status in ("interrupted", "failed", "running"):
        why = {"interrupted": "was interrupted", "failed": "failed", "running": "was still running"}[status]
        line += (f'<div class="status-warning" id="status-warning">This run {why} when it was saved: '
                 f"the numbers cover only what was recorded until then.</div>")
    return f'<section class="{cls}" id="banner">{big_html}<div>{line}</div></section>'


def _cards(s: Dict[str, Any], cc: Dict[str, Any]) -> str:
    out_tokens = _float(s.get("output_tokens"))
    tag = _plot.label_tag(s).strip()
    unc = s.get("uncertainty")
    energy_d = f"over {fmt_si(s.get('duration_s'), 's')}"
    if isinstance(unc, dict) and unc.get("kind") not in (None, "none", "unknown"):
        u = uncertainty_summary(unc, s.get("energy_j"))
        energy_d += (f"; systematic {u['text'].split(' (')[0]}: {fmt_si(u['energy_j_low'], 'J')} to "
                     f"{fmt_si(u['energy_j_high'], 'J')}{'' if u.get('documented') else ' (assumed)'}")
    cards = [
        ("Energy", fmt_si(s.get("energy_j"), "J"), energy_d),
        ("Net energy", fmt_si(s.get("net_energy_j"), "J"),
         f"above the idle baseline of {fmt_si(s.get('baseline_power_w'), 'W')}"),
        ("J / token", fmt_si(s.get("j_per_token"), "J"),
         f"{_cell(s.get('input_tokens'))} in + {_cell(s.get('output_tokens'))} out; "
         f"{fmt_si(s.get('j_per_output_token'), 'J')} per output token"),
        ("Tokens / J", f"{_float(s.get('tokens_per_j')):.4g}" if math.isfinite(_float(s.get("tokens_per_j"))) else "n/a",
         "output tokens per joule"),
        ("EDP", fmt_si(s.get("edp_js"), "J·s"), "energy × delay"),
        ("Peak power", fmt_si(s.get("peak_power_w"), "W"), f"idle {fmt_si(s.get('baseline_power_w'), 'W')}"),
        ("CO₂", fmt_si(cc["co2_g"], "g"),
         f"at {cc['co2_g_per_kwh']:g} gCO₂/kWh ({cc['co2_origin']})"
         + (f"; {fmt_si(cc['co2_g'] / out_tokens * 1e6, 'g')} per 1M output tokens"
            if out_tokens > 0 else "")),
        ("Cost", f"{cc['cost']:.3g} $",
         f"at {cc['price_per_kwh']:g} $/kWh ({cc['price_origin']})"
         + (f"; {cc['cost'] / out_tokens * 1e6:.3g} $ per 1M output tokens" if out_tokens > 0 else "")),
    ]
    html_cards = "".join(
        f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}'
        f'{f" <span class=tag>{_e(tag)}</span>" if tag else ""}</div><div class="d">{_e(d)}</div></div>'
        for k, v, d in cards)
    return f'<section class="cards" id="cards">{html_cards}</section>'


def _res_line(res: Dict[str, Any], key: str) -> str:
    """The resolution line of one kind of row ("tokens", "calls", "phases"), or ""."""
    for line in resolution_lines(res):
        if line.startswith(key + ":"):
            return line
    return ""


def _res_note(res: Dict[str, Any], key: str, el_id: str = "") -> str:
    line = _res_line(res, key)
    if not line:
        return ""
    ident = f' id="{_e(el_id)}"' if el_id else ""
    return f'<p class="resolution-note"{ident}><b>Resolution</b> — {_e(line)}</p>'


def _quality(run: Any, s: Dict[str, Any], res: Dict[str, Any]) -> str:
    """How well this was measured: resolution, gaps, systematic uncertainty and warnings, in view."""
    items = [f"<li>{_e(line)}</li>" for line in resolution_lines(res)]
    items.append(f"<li>systematic uncertainty of the source: {_e(uncertainty_text(s.get('uncertainty')))}</li>")
    items.append(f"<li>method: {_e(s.get('method') or 'n/a')} — inside one power sample energy is divided by "
                 "time, so shares finer than a sample are time shares, not measurements</li>")
    warn = "".join(f"<li>{_e(w)}</li>" for w in (s.get("warnings") or []))
    warn_html = f'<div class="warnings" id="warnings"><b>Warnings</b><ul>{warn}</ul></div>' if warn else ""
    return (f'<section class="quality" id="resolution"><h2>How well this was measured</h2>'
            f"<p class=note>{_e(res.get('note', ''))}</p><ul>{''.join(items)}</ul>{warn_html}</section>")


def _phase_tables(run: Any, s: Dict[str, Any]) -> str:
    sec = _plot._arr(run, "sections")
    energy = _float(s.get("energy_j"))
    t0 = _plot._t0_ns(run, s)
    parts = []
    if sec is not None and len(sec):
        rows_by_kind: Dict[str, List[List[Any]]] = {"phase": [], "other": []}
        order = np.argsort(sec["t_start_ns"], kind="stable")
        for r in sec[order]:
            kind = str(r["kind"])
            toks = int(r["tokens"])
            row = [str(r["name"]), kind, (int(r["t_start_ns"]) - t0) / 1e9, float(r["duration_s"]),
                   float(r["energy_j"]), float(r["net_energy_j"]),
                   100.0 * float(r["energy_j"]) / energy if energy else float("nan"),
                   toks, float(r["energy_j"]) / toks if toks else float("nan"),
                   *[float(r[f"{d}_j"]) for d in DOMAINS], float(r["unattributed_j"]),
                   int(r["samples_in_window"]), bool(r["resolved"]), _flags_cell(r)]
            rows_by_kind["phase" if kind == "phase" else "other"].append(row)
        headers = ["name", "kind", "start (s)", "duration (s)", "energy (J)", "net (J)", "% of run", "tokens",
                   "J/token", *[f"{d} (J)" for d in DOMAINS], "unattributed (J)", "samples", "resolved", "flags"]
        h, rows = _drop_nan_columns(headers, rows_by_kind["phase"])
        parts.append("<h3>Phases</h3>" + _table(h, rows))
        if rows_by_kind["other"]:
            h, rows = _drop_nan_columns(headers, rows_by_kind["other"])
            parts.append("<h3>Run, baseline and user sections</h3>" + _table(h, rows))
    else:
        phases = s.get("phases") or {}
        rows = [[p, _float(v.get("duration_s")), _float(v.get("energy_j")), _float(v.get("net_energy_j")),
                 v.get("tokens"), _float(v.get("j_per_token")), _float(v.get("edp_js"))] for p, v in phases.items()]
        parts.append("<h3>Phases</h3>" + _table(["name", "duration (s)", "energy (J)", "net (J)", "tokens",
                                                 "J/token", "EDP (J·s)"], rows))
    dom = s.get("domains") or {}
    if dom:
        rows = [[d, _float(v), 100.0 * _float(v) / energy if energy else float("nan")] for d, v in dom.items()]
        parts.append(f"<h3>Hardware domains</h3><p class=note>The run total follows the rule "
                     f"<b>{_e(s.get('total_rule') or 'n/a')}</b>; n/a = not measured by this source.</p>"
                     + _table(["domain", "energy (J)", "% of run total"], rows))
    return "".join(parts)


def _token_texts(run: Any) -> Dict[int, str]:
    tx = _plot._arr(run, "texts")
    out: Dict[int, List[str]] = {}
    if tx is not None and len(tx):
        sel = tx[tx["kind"] == "token"]
        for r in sel[np.argsort(sel["seq"], kind="stable")]:
            out.setdefault(int(r["step"]), []).append(str(r["text"]))
    return {k: " | ".join(repr(t) for t in v) for k, v in out.items()}


def _flags_cell(r: np.void) -> str:
    names = r.dtype.names or ()
    return ", ".join(flag_names(int(r["flags"]))) if "flags" in names else ""


#: The per-step table lists at most this many steps (the first and the last half of them):
#: a longer run's rows are in the store and in ``energyprof export``, not in the page.
MAX_TABLE_STEPS = 400


def _token_table(run: Any, res: Dict[str, Any]) -> str:
    tok = _plot._arr(run, "tokens")
    if tok is None or len(tok) == 0:
        return "<p class=note>No decode steps in this run.</p>"
    texts = _token_texts(run)
    n_all = len(tok)
    resolved = float(np.mean(tok["resolved"])) * 100.0
    tok = tok[np.argsort(tok["step"], kind="stable")]
    left_out = ""
    if n_all > MAX_TABLE_STEPS:
        half = MAX_TABLE_STEPS // 2
        left_out = (f"; the first and last {half} listed, {n_all - 2 * half:,} between them left out of the page "
                    "(every row: <code>energyprof export RUN --format csv</code>)")
        tok = np.concatenate([tok[:half], tok[-half:]])
    rows = [[int(r["step"]), int(r["n_tokens"]), float(r["duration_s"]) * 1e3, float(r["energy_j"]),
             float(r["j_per_token"]), *[float(r[f"{d}_j"]) for d in DOMAINS], int(r["samples_in_window"]),
             bool(r["resolved"]), _flags_cell(r)] + ([texts.get(int(r["step"]), "")] if texts else [])
            for r in tok]
    h, rows = _drop_nan_columns(["step", "tokens", "duration (ms)", "energy (J)", "J/token",
                                 *[f"{d} (J)" for d in DOMAINS], "samples", "resolved", "flags"]
                                + (["token text"] if texts else []), rows)
    return (_res_note(res, "tokens", "tokens-resolution")
            + f"<details><summary>{n_all} decode steps, one row each; "
            f"{resolved:.0f}% span a whole power sample{left_out}</summary>" + _table(h, rows) + "</details>")


def _rank_table(run: Any, s: Dict[str, Any]) -> str:
    """A multi-rank run (docs/distributed.md): one row per rank and the per-host totals; '' otherwise."""
    ranks = _plot._arr(run, "ranks")
    if ranks is None or len(ranks) == 0:
        return ""
    rows = [[int(r["rank"]), str(r["host"]), int(r["local_rank"]), int(r["replica_group"]), str(r["status"]),
             str(r["source"]) or f"(host leader rank {int(r['host_leader'])})", str(r["source_label"]),
             float(r["energy_j"]), int(r["n_samples"]), int(r["output_tokens"]),
             float(r["clock_offset_ns"]) * 1e-3, float(r["clock_uncertainty_ns"]) * 1e-3] for r in ranks]
    h = ["rank", "host", "local rank", "replica group", "status", "source", "label", "energy (J)", "samples",
         "output tokens", "clock offset (µs)", "± (µs)"]
    dist = s.get("distributed") or {}
    hosts = [[k, float(v)] for k, v in (dist.get("energy_j_per_host") or {}).items()]
    return ("<h2>Ranks</h2><p class=note>One run of all ranks: the totals above are every rank's energy over "
            "rank 0's windows; each rank's energy here is what its own source measured over the run window "
            "(label and resolution as stated above; a missing rank's energy is unknown). Tokens are counted once "
            "per replica group.</p>" + _table(h, rows) + _table(["host", "energy (J)"], hosts))


#: Columns of :func:`device_rows`.
DEVICE_HEADERS = ["GPU", "name", "reading", "energy (J)", "share of gpu", "mean power (W)", "peak power (W)",
                  "samples", "resolution", "label"]


def device_rows(s: Dict[str, Any]) -> List[List[Any]]:
    """The per-GPU breakdown of a summary (``summary["devices"]``, a source reading GPUs by
    index: nvml) as rows under :data:`DEVICE_HEADERS`; ``[]`` when it has none.  The HTML
    report and the terminal summary (``energyprof profile`` / ``show``) print these."""
    rows = []
    for d in s.get("devices") or []:
        if not isinstance(d, dict):
            continue
        rows.append([d.get("device"), d.get("name"), d.get("reading"), _float(d.get("energy_j")),
                     _float(d.get("share")), _float(d.get("mean_power_w")), _float(d.get("peak_power_w")),
                     d.get("n_samples"), d.get("resolution"), d.get("label")])
    return rows


def _device_table(s: Dict[str, Any]) -> str:
    """Several GPUs in one process (docs/sources.md, nvml): each GPU's share of the gpu domain."""
    rows = device_rows(s)
    if len(rows) < 2:
        return ""
    return ("<h2 id=\"devices\">GPUs</h2><p class=note>The gpu domain above (and every phase, token and layer "
            "figure) is the sum over these GPUs; each row is one GPU's own reading over the run window, a "
            "breakdown that is not added again.</p>" + _table(DEVICE_HEADERS, rows))


def _aggregate(calls: Optional[np.ndarray], by_component: bool, energy: float) -> Optional[np.ndarray]:
    """Per layer (or per (layer, component)) totals when the run object has no summaries."""
    if calls is None or len(calls) == 0:
        return None
    keys: Dict[Tuple[int, str], List[float]] = {}
    for r in calls:
        k = (int(r["layer"]), str(r["component"]) if by_component else "layer")
        acc = keys.setdefault(k, [0, 0.0, 0.0])
        acc[0] += 1
        acc[1] += float(r["energy_j"])
        acc[2] += float(r["duration_s"])
    out = np.zeros(len(keys), dtype=[("layer", "<i4"), ("component", "U32"), ("n_calls", "<i8"),
                                     ("energy_j", "<f8"), ("mean_energy_j", "<f8"), ("duration_s", "<f8"),
                                     ("share", "<f8")])
    for i, (k, (n, e, d)) in enumerate(sorted(keys.items())):
        out[i] = (k[0], k[1], n, e, e / n, d, e / energy if energy else float("nan"))
    return out


def _summary_table(run: Any, method: str, array: str, by_component: bool, energy: float) -> Optional[str]:
    agg = None
    fn = getattr(run, method, None)
    if callable(fn):
        try:
            agg = fn()
        except Exception:  # a broken aggregate must not cost the user the whole report
            agg = None
    tab = _tabular(agg)
    if tab is None or not tab[1]:
        tab = _tabular(_aggregate(_plot._arr(run, array), by_component, energy))
    if tab is None or not tab[1]:
        return None
    headers, rows = _drop_nan_columns(*tab)
    drop = ["share"] if by_component else ["share_of_parent"]  # nested components: only shares of a parent add up
    keep = [j for j, h in enumerate(headers) if h not in drop]
    headers, rows = [headers[j] for j in keep], [[r[j] for j in keep] for r in rows]
    for field, label in (("share", "% of run"), ("share_of_parent", "% of parent"),
                         ("self_share", "own % (not in hooked children)"), ("resolved_share", "% resolved")):
        if field in headers:  # a fraction in the data, a percentage on the page
            j = headers.index(field)
            headers[j] = label
            rows = [r[:j] + [100.0 * _float(r[j])] + r[j + 1:] for r in rows]
    if "n_eff" in headers:
        headers[headers.index("n_eff")] = "independent samples"
    if not by_component and "component" in headers:
        j = headers.index("component")
        headers = headers[:j] + headers[j + 1:]
        rows = [r[:j] + r[j + 1:] for r in rows]
    return _table(headers, rows)


def _module_tables(run: Any, s: Dict[str, Any], res: Dict[str, Any]) -> str:
    energy = _float(s.get("energy_j"))
    parts = [_res_note(res, "calls", "calls-resolution"),
             "<p class=note>Mean J per call ± its standard error count <i>independent power samples</i> (calls "
             "whose midpoints fall in one sample share its reading); the error says nothing about the time-split "
             "bias of unresolved calls.</p>"]
    lt = _summary_table(run, "layer_summary", "layers", False, energy)
    parts.append("<h3>Layers</h3>" + (lt or "<p class=note>No decoder-layer calls in this run "
                                            "(recorded with mode='minimal'?).</p>"))
    try:
        names, self_j = _plot._component_self(run)
        total = float(np.sum(self_j))
        rows = [[n, v, 100.0 * v / total if total else float("nan")] for n, v in zip(names, self_j)]
        parts.append("<h3>Components (all layers, own energy)</h3><p class=note>A container's own energy "
                     "(<i>attn (self)</i>: the attention kernel between the projections) excludes its hooked "
                     "children, so the rows add up to the energy of all hooked modules.</p>"
                     + _table(["component", "energy (J)", "% of hooked"], rows))
    except _plot.NoDataError:
        pass
    ct = _summary_table(run, "component_summary", "components", True, energy)
    if ct:
        parts.append("<h3>Components per layer</h3><details><summary>every (layer, component) pair; "
                     "layer -1 = model-level modules; % of parent: of the enclosing call (attn for q_proj, the "
                     "layer for attn), so siblings add up to at most 100 %</summary>" + ct + "</details>")
    return "".join(parts)


def _text_section(run: Any, s: Dict[str, Any]) -> str:
    """The prompt and the generated text of each sequence, and the generation options."""
    tx = _plot._arr(run, "texts")
    parts = []
    if tx is not None and len(tx):
        seqs = sorted({int(v) for v in tx["seq"][np.isin(tx["kind"], ["prompt", "output"])]})
        for q in seqs:
            def one(kind):
                sel = tx[(tx["kind"] == kind) & (tx["seq"] == q)]
                return str(sel["text"][0]) if len(sel) else ""
            head = f"<h3>Sequence {q}</h3>" if len(seqs) > 1 else ""
            parts.append(f'{head}<div class="textpair"><div><div class="k">prompt</div><pre class="text" '
                         f'id="prompt-{q}">{_e(one("prompt"))}</pre></div><div><div class="k">output</div>'
                         f'<pre class="text" id="output-{q}">{_e(one("output"))}</pre></div></div>')
    else:
        parts.append("<p class=note>No text was stored with this run (<code>store_text=False</code> / "
                     "<code>--no-text</code>, or no tokenizer and no <code>s.record_text(...)</code>).</p>")
    gen = s.get("generation") or {}
    if gen:
        parts.append("<h3>Generation options</h3>" + _kv_table({k: v for k, v in gen.items() if v is not None}))
    return "".join(parts)


def _peaks_section(s: Dict[str, Any]) -> str:
    """Peak power per domain with its time, and its share of the power limit where one is known."""
    peaks = s.get("peaks") or {}
    if not peaks:
        return "<p class=note>No peaks recorded (a run saved before energyprof kept them, or no samples).</p>"
    rows = []
    for k, p in peaks.items():
        rows.append([k, _float(p.get("power_w")), _float(p.get("t_s")), _float(p.get("limit_w")),
                     p.get("limit_from") or "n/a", 100.0 * _float(p.get("share_of_limit")),
                     100.0 * _float(p.get("mean_share_of_limit"))])
    lim = s.get("power_limits") or {}
    note = ("<p class=note>Limits: " + "; ".join(f"{_e(k)} {_float(v.get('limit_w')):g} W ({_e(v.get('from'))})"
                                                for k, v in lim.items()) + ".</p>") if lim else \
        ("<p class=note>The source knows no power limit (NVML's power limit, RAPL's max power, the estimate's "
         "tdp_w) and none was stated (<code>ep.run(..., power_limit_w=...)</code>).</p>")
    return note + _table(["domain", "peak (W)", "at (s from run start)", "limit (W)", "limit from",
                          "peak % of limit", "mean % of limit"], rows)


def _has(run: Any, name: str) -> bool:
    a = _plot._arr(run, name)
    return a is not None and len(a) > 0


def _deep_sections(run: Any, s: Dict[str, Any], figs: List[str], res: Optional[Dict[str, Any]] = None) -> str:
    """Ops per layer, per-head attention entropy and activation statistics of a deep-mode run."""
    from ..analysis import deepstats as ds

    if not (_has(run, "ops") or _has(run, "heads")):
        return ""
    deep = s.get("deep") or {}
    parts = ["<h2 id=\"deep-mode\">Deep mode</h2>",
             f"<p class=note>Thresholds: sparse below {_float(deep.get('sparse_below', 1e-3)):g}, killed below "
             f"{_float(deep.get('kill_below', 1e-3)):g}; attention {_e(deep.get('attention', 'n/a'))}"
             + (f"; not timed inside: {_e(', '.join(deep.get('unsupported') or []))}" if deep.get("unsupported") else "")
             + ". Each op's energy is finer than one sample when the op is shorter than the sample period: "
               "cells with a dot have unresolved calls.</p>"]
    tables = {}
    try:
        layers, names, z = _plot._op_matrix(run)
        tables["deep-ops"] = _table(["layer", *[f"{n} (J)" for n in names]],
                                    [[l, *row] for l, row in zip(layers, z)])
    except _plot.NoDataError:
        pass
    try:
        layers, hs, z = _plot._head_matrix(run)
        tables["deep-heads"] = _table(["layer", *[f"head {h} entropy (nats)" for h in hs]],
                                      [[l, *row] for l, row in zip(layers, z)])
    except _plot.NoDataError:
        pass
    act = ds.activation_table(run)
    if act:
        tables["deep-activations"] = _table(list(act[0]), [list(r.values()) for r in act])
    for kind, heading, sid in REPORT_DEEP_PLOTS:
        parts.append(f'<section id="{sid}"><h3>{_e(heading)}</h3>')
        parts.append(_fig_block(run, kind, heading, True, figs, show_heading=False, res=res))
        if sid in tables:
            parts.append(f"<details><summary>the numbers</summary>{tables[sid]}</details>")
        parts.append("</section>")
    return "".join(parts)


def _moe_section(run: Any, s: Dict[str, Any], figs: List[str], res: Optional[Dict[str, Any]] = None) -> str:
    from ..analysis.moe import routing

    if not s.get("moe"):
        return ""
    r = routing(s)
    rows = [[row["layer"], json.dumps(row["tokens_routed"]), row["max_over_mean"], row["experts_energy_j"],
             json.dumps([round(v, 6) for v in row["expert_energy_j"]]), row["expert_energy_label"],
             row["resolved_share"]] for row in r["layers"]]
    return ("<h2 id=\"moe\">Mixture of experts</h2>" + _fig_block(run, "moe", "Routing", True, figs, res=res)
            + _table(["layer", "tokens per expert", "max / mean", "experts (J)", "per expert (J)", "how",
                      "resolved share"], rows))
def _resolved_table(run: Any) -> str:
    """``ep.resolve([run], by="component")`` as a table labelled "estimated by regression"
    ("" when the run has no component rows or interval samples)."""
    from ..analysis.resolve import RESOLVE_LABEL, resolve

    try:
        t = resolve([run], by="component")
    except (ValueError, AttributeError):
        return ""
    rows = [[str(r["group"]), r["power_w"], r["ci_low_w"], r["ci_high_w"], r["energy_j"],
             "yes" if r["identifiable"] else "no"] for r in t]
    cond = float(t["condition_number"][0]) if len(t) else float("nan")
    return (f'<h3 id="resolved">Power per component, {RESOLVE_LABEL}</h3><p class=note>{RESOLVE_LABEL}: '
            "every sample is one equation (its power = the time-weighted mix of the power of the groups that "
            "ran innermost inside it); the powers are its non-negative least-squares solution with 95 % "
            f"confidence intervals (condition number {cond:.3g}). Groups marked 'no' cannot be told apart "
            "with this run's samples; pool runs (ep.repeat, energyprof resolve RUN...) for more mixes. "
            "See docs/methodology.md.</p>"
            + _table(["group", "power (W)", "95% CI low (W)", "95% CI high (W)", "J per call", "identifiable"],
                     rows))


def _kv_table(d: Dict[str, Any]) -> str:
    return _table(["", ""], [[k, v] for k, v in d.items()], cls="kv")


def _environment(s: Dict[str, Any]) -> str:
    env = {
        "source": s.get("source"), "source kind": s.get("source_kind"), "source label": s.get("source_label"),
        "source details": s.get("source_meta") or {}, "method": s.get("method"),
        "systematic uncertainty": uncertainty_text(s.get("uncertainty")),
        "sample period (s)": s.get("sample_period_s"), "mode": s.get("mode"), "sync": s.get("sync"),
        "device": s.get("device"), "chip / GPU": s.get("chip"), "host": s.get("host"),
        "run id": s.get("run_id"), "name": s.get("name"), "tags": s.get("tags") or [],
        "status": s.get("status"), "started at (UTC)": s.get("started_at"), "batch size": s.get("batch_size"),
    }
    parts = ["<h3>Run and source</h3>" + _kv_table(env)]
    versions = s.get("versions") or {}
    if versions:
        parts.append("<h3>Versions</h3>" + _kv_table(dict(versions)))
    model = s.get("model") or {}
    if model:
        parts.append("<h3>Model</h3>" + _kv_table(dict(model)))
    return "".join(parts)


# --------------------------------------------------------------------------- figures
def _script_json(obj: Any) -> str:
    """JSON that is safe inside a <script> element (no "</script>", no "<!--")."""
    text = obj if isinstance(obj, str) else json.dumps(obj)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


#: Which resolution line sits above which figure.
_PLOT_RESOLUTION = {"tokens": "tokens", "components": "calls", "layers": "calls", "layer_steps": "calls",
                    "sankey": "calls", "token_components": "tokens", "token_hist": "tokens", "context": "tokens",
                    "ops": "calls", "activations": "calls", "moe": "calls"}


def _fig_block(run: Any, kind: str, heading: str, wide: bool, figs: List[str], show_heading: bool = True,
               res: Optional[Dict[str, Any]] = None) -> str:
    """One plot block (its figure's JSON appended to ``figs``), or a note when the run has no
    data for it; with ``res`` the resolution line of the figure's rows sits above it."""
    import plotly.io as pio

    cls = "plotbox wide" if wide else "plotbox"
    head = f"<h3>{_e(heading)}</h3>" if show_heading else ""
    try:
        fig = _plot.plot(run, kind=kind, backend="plotly")
    except _plot.NoDataError as exc:
        return f'<div class="{cls}">{head}<p class="note">{_e(exc)}</p></div>'
    m = fig.layout.margin   # a figure that needs more room (a dropdown below, a list beside) keeps it
    fig.update_layout(autosize=True, height=560 if kind == "sankey" else 430,
                      margin=dict(l=60, r=max(30, m.r or 0), t=70, b=max(60, m.b or 0)))
    pid = f"plot-{kind}"
    note = _res_note(res, _PLOT_RESOLUTION[kind]) if (res is not None and kind in _PLOT_RESOLUTION) else ""
    figs.append(f'{{"id":"{pid}","fig":{_script_json(pio.to_json(fig, validate=False))}}}')
    return f'<div class="{cls}">{head}{note}<div class="plot" id="{pid}"></div></div>'


def _figures(run: Any, res: Optional[Dict[str, Any]] = None,
             figs: Optional[List[str]] = None) -> Tuple[str, List[str]]:
    """The plot blocks of the page and the JSON of each plotly figure drawn in them."""
    res = res if res is not None else resolution_of(run)
    figs = [] if figs is None else figs
    blocks = [_fig_block(run, kind, heading, wide, figs, res=res) for kind, heading, wide in REPORT_PLOTS]
    return '<section class="grid" id="plots">' + "".join(blocks) + "</section>", figs


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#222;background:#fff}
main{max-width:1400px;margin:0 auto;padding:16px 24px}
h1{font-size:24px;margin:8px 0 2px} h2{font-size:20px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:16px 0 6px}
.sub{color:#666;font-size:13px}
.banner{border-radius:6px;padding:12px 16px;margin:14px 0;font-size:14px;border:1px solid #ccc;background:#f6f8fa}
.banner .big{font-size:28px;font-weight:700;line-height:1.25;margin-bottom:6px}
.banner.simulated{background:#fff4e5;border-color:#f0a030}.banner.simulated .big{color:#b35c00}
.banner.estimated{background:#fff8d6;border-color:#d8b600}.banner.estimated .big{color:#806b00}
.banner.measured{background:#eef8ee;border-color:#7bbf7b}
.status-warning{font-weight:700;color:#a00000;margin-top:6px;font-size:16px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:10px}
.card{border:1px solid #ddd;border-radius:6px;padding:10px 12px;background:#fafafa}
.card .k{font-size:12px;color:#666;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:22px;font-weight:600;margin:2px 0} .card .d{font-size:12px;color:#555}
.tag{font-size:11px;color:#b35c00;font-weight:700;vertical-align:middle}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:14px}
.plotbox{border:1px solid #e3e3e3;border-radius:6px;padding:4px 8px;min-width:0}
.plotbox.wide{grid-column:1/-1} .plot{width:100%;min-height:200px}
table{border-collapse:collapse;font-size:12px;margin:4px 0 10px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left} th{background:#f2f2f2}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.kv td{text-align:left} table.kv td:first-child{font-weight:600;background:#fafafa}
table.kv thead{display:none}
.note{color:#666;font-size:12px}
.quality{border:1px solid #d0c080;border-radius:6px;padding:4px 14px;margin:14px 0;background:#fffdf3;font-size:13px}
.quality h2{border:none;margin:6px 0 2px;font-size:17px} .quality ul{margin:4px 0 6px 18px;padding:0}
.warnings{color:#8a1f00;font-weight:600} .warnings ul{font-weight:400}
.resolution-note{font-size:12px;color:#5a4a00;background:#fff8d6;border-left:3px solid #d8b600;padding:2px 8px;margin:2px 0 6px}
details summary{cursor:pointer;color:#333;font-size:13px;margin:4px 0}
footer{color:#888;font-size:12px;margin:30px 0 10px}
.textpair{display:grid;grid-template-columns:1fr 1fr;gap:10px}
pre.text{white-space:pre-wrap;word-break:break-word;background:#fafafa;border:1px solid #ddd;border-radius:4px;
padding:8px;margin:2px 0 8px;font-size:13px;max-height:300px;overflow:auto}
"""

# Records script errors before anything else runs, so that a broken page says so.
_ERROR_JS = """
(function(){var root=document.documentElement;root.setAttribute("data-energyprof-status","loading");
var errors=[];function fail(m){errors.push(m);root.setAttribute("data-energyprof-status","error: "+errors.join(" | "));}
window.onerror=function(msg,src,line,col){fail(String(msg)+" at "+line+":"+col);};
window.addEventListener("unhandledrejection",function(e){fail("unhandled rejection: "+String(e.reason));});
document.addEventListener("securitypolicyviolation",function(e){fail("blocked "+e.violatedDirective+": "+e.blockedURI);});
window.__energyprofFail=fail;})();
"""

# Draws every figure, then records where each one is (the browser test checks that
# those regions of the screenshot are not blank) and flags the page as ok.
_DRAW_JS = """
(function(){var root=document.documentElement;var figs=window.__energyprofFigures||[];
if(typeof Plotly==="undefined"){window.__energyprofFail("plotly did not load");return;}
var cfg={responsive:true,displaylogo:false};
Promise.all(figs.map(function(f){return Plotly.newPlot(f.id,f.fig.data,f.fig.layout,cfg);})).then(function(){
 var rects={},missing=[];
 figs.forEach(function(f){var el=document.getElementById(f.id);var r=el.getBoundingClientRect();
  rects[f.id]=[Math.round(r.left+window.scrollX),Math.round(r.top+window.scrollY),Math.round(r.width),Math.round(r.height)];
  if(!el.querySelector(".main-svg")){missing.push(f.id);}});
 root.setAttribute("data-plot-rects",JSON.stringify(rects));
 var q={};document.querySelectorAll("#resolution,.resolution-note").forEach(function(el,i){
  var r=el.getBoundingClientRect();q[(el.id||"note")+"#"+i]=[Math.round(r.top+window.scrollY),Math.round(r.width),Math.round(r.height)];});
 root.setAttribute("data-quality-rects",JSON.stringify(q));
 if(missing.length){window.__energyprofFail("not drawn: "+missing.join(","));return;}
 if(root.getAttribute("data-energyprof-status")==="loading"){root.setAttribute("data-energyprof-status","ok");}
},function(e){window.__energyprofFail("Plotly.newPlot failed: "+String(e));});})();
"""

# Nothing may be fetched: scripts and styles are inline, images only data: URLs.
_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "img-src data: blob:; font-src data:; connect-src 'none'")


def report_body(run: Any, *, co2_g_per_kwh: Optional[float] = None,
                price_per_kwh: Optional[float] = None,
                deep_sections: bool = True) -> Tuple[str, List[str], Dict[str, Any]]:
    """The report's content without the page around it: the HTML from the label banner
    to the environment tables, the JSON of each plotly figure drawn in it (for
    ``window.__energyprofFigures``), and the carbon and cost settings used.  The HTML
    report and the dashboard's run page (:mod:`energyprof.views.dashboard`) both show it;
    ``deep_sections=False`` leaves out the deep-mode sections (ops, head entropy, activation
    statistics), which the dashboard draws itself with a metric selector."""
    with _plot.one_render():
        return _report_body(run, co2_g_per_kwh, price_per_kwh, deep_sections)


def _report_body(run: Any, co2_g_per_kwh: Optional[float], price_per_kwh: Optional[float],
                 deep_sections: bool) -> Tuple[str, List[str], Dict[str, Any]]:
    s = _plot._summary(run)
    cc = carbon_and_cost(_float(s.get("energy_j")), co2_g_per_kwh, price_per_kwh)
    res = resolution_of(run)
    plots_html, figs = _figures(run, res)
    # the dashboard draws its own interactive deep-mode section (deep_sections=False)
    deep_html = _deep_sections(run, s, figs, res) if deep_sections else ""
    moe_html = _moe_section(run, s, figs, res)
    body = "".join([
        _banner(s),
        _cards(s, cc),
        _quality(run, s, res),
        "<h2 id=\"text\">Prompt and output</h2>", _text_section(run, s),
        "<h2>Plots</h2>", plots_html,
        deep_html, moe_html,
        "<h2 id=\"peaks\">Peaks and limits</h2>", _peaks_section(s),
        "<h2>Phases and domains</h2>", _phase_tables(run, s),
        _device_table(s),
        _rank_table(run, s),
        "<h2>Tokens (decode steps)</h2>", _token_table(run, res),
        "<h2>Layers and components</h2>", _module_tables(run, s, res), _resolved_table(run),
        "<h2>Environment</h2>", _environment(s),
    ])
    return body, figs, cc


def run_title(run: Any) -> str:
    """``energyprof: <name>`` with ``[SIMULATED]`` / ``[ESTIMATED]`` for such runs."""
    s = _plot._summary(run)
    label = str(s.get("source_label") or "")
    return f"energyprof: {_plot._run_name(run, 'unsaved run')}" + \
        (f" [{label.upper()}]" if label in ("simulated", "estimated") else "")


def run_subtitle(run: Any) -> str:
    """The line under the title: run id, model, device, start and status (HTML, escaped)."""
    s = _plot._summary(run)
    model = (s.get("model") or {}).get("name") or "model n/a"
    rid = s.get("run_id")
    return (f"run id {_e(rid) if rid is not None else 'n/a (not saved)'} · {_e(model)} on "
            f"{_e(s.get('device') or 'n/a')} ({_e(s.get('chip') or 'n/a')}) · started "
            f"{_e(s.get('started_at') or 'n/a')} · status {_e(s.get('status') or 'n/a')}")


def render_report(run: Any, *, co2_g_per_kwh: Optional[float] = None,
                  price_per_kwh: Optional[float] = None) -> str:
    """The report of ``run`` as one HTML string (see :func:`write_report`)."""
    try:
        from plotly.offline import get_plotlyjs
    except ImportError as exc:
        raise MissingExtraError("plotly", "the HTML report") from exc
    from .._version import __version__

    body, figs, cc = report_body(run, co2_g_per_kwh=co2_g_per_kwh, price_per_kwh=price_per_kwh)
    title = run_title(run)
    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f'<meta http-equiv="Content-Security-Policy" content="{_e(_CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style>",
        f"<script>{_ERROR_JS}</script></head><body><main>",
        f"<h1>{_e(title)}</h1><div class=sub>{run_subtitle(run)}</div>",
        body,
        f"<footer>Generated by energyprof {_e(__version__)} on {_e(generated)}. CO₂ at "
        f"{cc['co2_g_per_kwh']:g} gCO₂/kWh ({_e(cc['co2_origin'])}), cost at {cc['price_per_kwh']:g} $/kWh "
        f"({_e(cc['price_origin'])}); set them with {CO2_ENV} / {PRICE_ENV} or the report's arguments.</footer>",
        "</main>",
        f"<script>{get_plotlyjs()}</script>",
        f"<script>window.__energyprofFigures=[{','.join(figs)}];</script>",
        f"<script>{_DRAW_JS}</script>",
        "</body></html>\n",
    ])


def write_report(run: Any, path: Union[str, os.PathLike], *, co2_g_per_kwh: Optional[float] = None,
                 price_per_kwh: Optional[float] = None) -> Path:
    """Write the self-contained HTML report of ``run`` to ``path`` and return the path.

    Parameters
    ----------
    run:
        A session or loaded run (``summary()``, ``samples``, ``sections``, ``tokens``,
        ``layers``, ``components``; ``layer_summary()`` / ``component_summary()`` are
        used when present).
    path:
        Where to write (parent directories are created).
    co2_g_per_kwh, price_per_kwh:
        Grid carbon intensity and electricity price for the CO2 and cost cards; default
        ``$ENERGYPROF_CO2_G_PER_KWH`` / ``$ENERGYPROF_PRICE_PER_KWH``, else 400 and 0.15.

    Raises
    ------
    ValueError
        for a negative or non-numeric intensity or price (argument or environment).
    ImportError
        when plotly is not installed.
    """
    text = render_report(run, co2_g_per_kwh=co2_g_per_kwh, price_per_kwh=price_per_kwh)
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, p)  # never leave a half-written report behind
    return p


__all__ = ["write_report", "render_report", "report_body", "run_title", "run_subtitle", "fmt_si", "REPORT_PLOTS",
           "REPORT_DEEP_PLOTS"]
