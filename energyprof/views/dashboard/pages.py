"""The dashboard's HTML pages, rendered on the server: runs list, run detail, compare, live,
API docs and errors.  Every page carries plotly's JavaScript inline (nothing is fetched
from another origin), its scripts carry the response's CSP nonce, and all text from the
store is escaped.  The figures are those of :mod:`energyprof.views.plot` and the run page
shows :func:`energyprof.views.report.report_body`, so the report and the dashboard agree.
"""
from __future__ import annotations

import json
import math
import urllib.parse
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ... import _version
from ...errors import NoDataError
from ...store import db as _db
from .. import plot as _plot
from .. import report as _report
from .data import SORTS

__all__ = ["render_runs", "render_run", "render_compare", "render_live", "render_docs", "render_error",
           "figure_json", "DEEP_METRICS"]

_e = _report._e
fmt_si = _report.fmt_si

#: The metric selector of a deep run's heatmaps: value -> menu text.
DEEP_METRICS = {"energy_j": "energy", "duration_s": "time", "power_w": "power", "act_mean": "activation mean",
                "act_std": "activation std", "act_max": "activation max", "act_sparsity": "activation sparsity"}

_CSS = _report._CSS + """
nav{background:#1f2a36;color:#fff;padding:8px 24px;display:flex;gap:18px;align-items:center;font-size:14px}
nav a{color:#dde6ee;text-decoration:none} nav a.on{color:#fff;font-weight:700} nav .brand{font-weight:700;color:#fff}
nav .ro{margin-left:auto;background:#5a6b7d;border-radius:4px;padding:1px 8px;font-size:12px}
form.filters{display:flex;flex-wrap:wrap;gap:8px 12px;align-items:flex-end;background:#f6f8fa;border:1px solid #e3e3e3;
 border-radius:6px;padding:10px 12px;margin:10px 0;font-size:13px}
form.filters label{display:flex;flex-direction:column;gap:2px;color:#555}
input,select,button{font:inherit;font-size:13px;padding:3px 6px}
button{cursor:pointer}
.label{display:inline-block;border-radius:10px;padding:0 8px;font-size:11px;font-weight:700;text-transform:uppercase}
.label.measured{background:#dff3df;color:#1d6b1d}.label.estimated{background:#fff3c4;color:#806b00}
.label.simulated{background:#ffe3cc;color:#b35c00}.label.unknown{background:#eee;color:#555}
tr.row-simulated td:first-child{border-left:4px solid #f0a030}tr.row-estimated td:first-child{border-left:4px solid #d8b600}
tr.row-measured td:first-child{border-left:4px solid #7bbf7b}
td.best{background:#dff3df;font-weight:700} td.worst{background:#fbe0e0}
.pager{margin:8px 0;font-size:13px} .pager a,.pager span{margin-right:8px}
.actions{display:flex;flex-wrap:wrap;gap:10px;align-items:center;margin:10px 0;padding:8px 10px;border:1px solid #e3e3e3;
 border-radius:6px;background:#fafafa;font-size:13px}
.actions form{display:inline-flex;gap:6px;align-items:center;margin:0}
.warn{background:#fff4e5;border:1px solid #f0a030;border-radius:6px;padding:10px 14px;margin:10px 0;font-weight:600}
.live-dot{display:inline-block;width:10px;height:10px;border-radius:5px;background:#d62728;margin-right:6px}
.endpoint{border:1px solid #e3e3e3;border-radius:6px;padding:8px 12px;margin:8px 0}
.endpoint code.m{font-weight:700;color:#1f77b4;margin-right:8px}
"""


# --------------------------------------------------------------------------- pieces
def figure_json(pid: str, fig: Any) -> str:
    """One entry of ``window.__energyprofFigures``: ``{"id": pid, "fig": <plotly JSON>}``, safe in a script."""
    import plotly.io as pio

    return f'{{"id":{json.dumps(pid)},"fig":{_report._script_json(pio.to_json(fig, validate=False))}}}'


def _plot_box(pid: str, heading: str, fig: Any, figs: List[str], wide: bool = False, height: int = 430) -> str:
    fig.update_layout(autosize=True, height=height, margin=dict(l=60, r=30, t=60, b=60))
    figs.append(figure_json(pid, fig))
    cls = "plotbox wide" if wide else "plotbox"
    return f'<div class="{cls}"><h3>{_e(heading)}</h3><div class="plot" id="{_e(pid)}"></div></div>'


def _no_plot(heading: str, why: Any, wide: bool = False) -> str:
    cls = "plotbox wide" if wide else "plotbox"
    return f'<div class="{cls}"><h3>{_e(heading)}</h3><p class="note">{_e(why)}</p></div>'


def label_badge(label: Any) -> str:
    """The measured / estimated / simulated badge every row carries."""
    lab = str(label or "unknown").lower()
    lab = lab if lab in ("measured", "estimated", "simulated") else "unknown"
    return f'<span class="label {lab}">{_e(lab)}</span>'


def _num(v: Any, unit: str = "") -> str:
    return fmt_si(v, unit) if unit else ("n/a" if v is None or (isinstance(v, float) and not math.isfinite(v))
                                         else f"{float(v):.4g}")


def _resolution_text(res: Any) -> str:
    """A short text of ``summary["resolution"]`` (issue 13's dict) for a table cell."""
    if not isinstance(res, dict):
        return "n/a"
    parts = []
    for key, name in (("phases", "phases"), ("tokens", "tokens"), ("calls", "calls")):
        v = res.get(key)
        if isinstance(v, dict):
            v = v.get("resolved_share", v.get("share"))
        try:
            parts.append(f"{name} {100.0 * float(v):.0f}%")
        except (TypeError, ValueError):
            continue
    return "resolved: " + ", ".join(parts) if parts else _report._cell(res)


def _nav(active: str, read_only: bool) -> str:
    items = [("/", "Runs", "runs"), ("/compare", "Compare", "compare"), ("/docs", "API", "docs")]
    links = "".join(f'<a href="{href}" class="{"on" if key == active else ""}">{_e(text)}</a>'
                    for href, text, key in items)
    ro = '<span class="ro" id="read-only">read-only</span>' if read_only else ""
    return f'<nav><span class="brand">energyprof</span>{links}{ro}</nav>'


def page(title: str, body: str, *, nonce: str, active: str, read_only: bool, figs: Sequence[str] = (),
         script: str = "", plotly: bool = True) -> str:
    """A whole page: the head (error hook first), the navigation, ``body``, plotly inline,
    the figures drawn by the report's drawing script, then the page's own ``script``."""
    n = _e(nonce)
    tail = []
    if plotly:
        from plotly.offline import get_plotlyjs

        tail.append(f'<script nonce="{n}">{_plotly_js(get_plotlyjs)}</script>')
        tail.append(f'<script nonce="{n}">window.__energyprofFigures=[{",".join(figs)}];</script>')
        tail.append(f'<script nonce="{n}">{_report._DRAW_JS}</script>')
    else:
        tail.append(f'<script nonce="{n}">(function(){{var r=document.documentElement;'
                    f'if(r.getAttribute("data-energyprof-status")==="loading"){{r.setAttribute('
                    f'"data-energyprof-status","ok");}}}})();</script>')
    if script:
        tail.append(f'<script nonce="{n}">{script}</script>')
    return "".join([
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style>",
        f'<script nonce="{n}">{_report._ERROR_JS}</script></head><body>',
        _nav(active, read_only), "<main>", body,
        f'<footer>energyprof {_e(_version.__version__)} · <a href="/api/runs">JSON API</a> · '
        f'<a href="/docs">API docs</a></footer></main>',
        *tail, "</body></html>\n",
    ])


_PLOTLY_CACHE: Dict[str, str] = {}


def _plotly_js(get) -> str:
    if "js" not in _PLOTLY_CACHE:
        _PLOTLY_CACHE["js"] = get()
    return _PLOTLY_CACHE["js"]


def _csrf_field(csrf: str) -> str:
    return f'<input type="hidden" name="csrf" value="{_e(csrf)}">'


def _qs(params: Dict[str, Any], **changes: Any) -> str:
    q = {k: v for k, v in params.items() if v not in (None, "")}
    q.update({k: v for k, v in changes.items()})
    q = {k: v for k, v in q.items() if v not in (None, "")}
    return "?" + urllib.parse.urlencode(q) if q else ""


# --------------------------------------------------------------------------- runs list
_LIST_COLUMNS = (("run_id", "id", "run_id"), ("started_at", "started (UTC)", "started_at"), ("name", "name", "name"),
                 ("model", "model", "model"), ("source_label", "label", None), ("source", "source", None),
                 ("status", "status", "status"), ("tags", "tags", None), ("energy_j", "energy", "energy_j"),
                 ("j_per_output_token", "J / output token", "j_per_output_token"),
                 ("tokens_per_j", "tokens / J", "tokens_per_j"), ("duration_s", "duration", "duration_s"),
                 ("resolution", "resolution", None), ("uncertainty", "uncertainty", None))


_NUM_CELLS = {"energy_j": lambda v: fmt_si(v, "J"), "j_per_output_token": lambda v: fmt_si(v, "J"),
              "duration_s": lambda v: fmt_si(v, "s"), "tokens_per_j": lambda v: _num(v)}


def _list_cell(key: str, r: Dict[str, Any]) -> str:
    v = r.get(key)
    rid = r.get("run_id")
    if key == "run_id":
        return f'<td class="num"><input type="checkbox" name="ids" value="{_e(rid)}" class="pick"> {_e(rid)}</td>'
    if key == "name":
        return f'<td><a class="run-name" href="/runs/{_e(rid)}">{_e(v or f"run {rid}")}</a></td>'
    if key == "source_label":
        return f"<td>{label_badge(v)}</td>"
    if key == "status":
        live = f' <a href="/live/{_e(rid)}">live</a>' if v == "running" else ""
        return f"<td>{_e(v)}{live}</td>"
    if key == "tags":
        return f"<td>{_e(', '.join(v or []))}</td>"
    if key in _NUM_CELLS:
        return f'<td class="num">{_e(_NUM_CELLS[key](v))}</td>'
    if key == "resolution":
        return f'<td>{_e(_resolution_text(v) if v else "n/a")}</td>'
    if key == "uncertainty":
        return f'<td>{_e(_report._cell(v) if v else "n/a")}</td>'
    return f"<td>{_e(v if v is not None else '')}</td>"


def render_runs(result: Dict[str, Any], params: Dict[str, Any], *, nonce: str, read_only: bool) -> str:
    """``/``: the filter form, the runs table with labels on every row, pages, and the
    history plot of J per output token of the runs shown."""
    f = result["filters"]
    total, limit, offset = result["total"], result["limit"], result["offset"]
    sort, order = result["sort"], result["order"]

    def opt(values: Iterable[Tuple[str, str]], cur: Any) -> str:
        return "".join(f'<option value="{_e(v)}"{" selected" if str(cur or "") == v else ""}>{_e(t)}</option>'
                       for v, t in values)

    form = (
        '<form class="filters" method="get" action="/" id="filters">'
        f'<label>search<input name="q" value="{_e(params.get("q") or "")}" placeholder="name, model, tag, host"></label>'
        f'<label>model<input name="model" value="{_e(f.get("model") or "")}"></label>'
        f'<label>label<select name="label">{opt([("", "any")] + [(x, x) for x in _db.LABELS], f.get("label"))}'
        "</select></label>"
        f'<label>tag<input name="tag" value="{_e(f.get("tag") or "")}" size="10"></label>'
        f'<label>status<select name="status">{opt([("", "any")] + [(x, x) for x in _db.STATUSES], f.get("status"))}'
        "</select></label>"
        f'<label>since<input type="date" name="since" value="{_e((f.get("since") or "")[:10])}"></label>'
        f'<label>until<input type="date" name="until" value="{_e((f.get("until") or "")[:10])}"></label>'
        f'<label>sort by<select name="sort">{opt([(x, x) for x in SORTS], sort)}</select></label>'
        f'<label>order<select name="order">{opt([("asc", "ascending"), ("desc", "descending")], order)}'
        "</select></label>"
        f'<label>per page<select name="limit">{opt([(str(x), str(x)) for x in (20, 50, 100, 200)], str(limit))}'
        "</select></label><button type=\"submit\">Apply</button>"
        '<a href="/">clear</a></form>')
    keep = dict(params)
    heads = []
    for key, text, sk in _LIST_COLUMNS:
        if sk:
            new_order = "asc" if (sort == sk and order == "desc") else "desc"
            arrow = (" ▲" if order == "asc" else " ▼") if sort == sk else ""
            heads.append(f'<th><a href="/{_e(_qs(keep, sort=sk, order=new_order, offset=None))}">{_e(text)}</a>'
                         f"{arrow}</th>")
        else:
            heads.append(f"<th>{_e(text)}</th>")
    rows = []
    for r in result["runs"]:
        lab = str(r.get("source_label") or "unknown").lower()
        cells = "".join(_list_cell(k, r) for k, _t, _s in _LIST_COLUMNS)
        rows.append(f'<tr class="run-row row-{_e(lab)}" data-run-id="{_e(r.get("run_id"))}" '
                    f'data-label="{_e(lab)}">{cells}</tr>')
    table = (f'<form method="get" action="/compare" id="compare-form"><table id="runs"><thead><tr>{"".join(heads)}'
             f'</tr></thead><tbody>{"".join(rows)}</tbody></table>'
             '<button type="submit" id="compare-button">Compare the ticked runs (2 to 10)</button></form>')
    first = offset + 1 if total else 0
    last = min(offset + limit, total)
    pager = [f'<span id="count">{total} run{"s" if total != 1 else ""} match; showing {first}–{last}</span>']
    if offset > 0:
        pager.append(f'<a href="/{_e(_qs(keep, offset=max(0, offset - limit)))}" id="prev">← newer page</a>')
    if last < total:
        pager.append(f'<a href="/{_e(_qs(keep, offset=offset + limit))}" id="next">next page →</a>')
    pages = -(-total // limit) if total else 1
    pager.append(f"<span>page {offset // limit + 1} of {pages}</span>")
    figs: List[str] = []
    try:
        fig = _plot.plot_history(result["runs"], "j_per_output_token", backend="plotly")
        plot_html = _plot_box("plot-history", "J per output token of the runs on this page", fig, figs, wide=True,
                              height=360)
    except NoDataError as e:
        plot_html = _no_plot("J per output token of the runs on this page", e, wide=True)
    body = (f"<h1>Runs</h1>{form}<div class=pager>{''.join(pager)}</div>{table}"
            f'<section class="grid" id="plots">{plot_html}</section>')
    return page("energyprof: runs", body, nonce=nonce, active="runs", read_only=read_only, figs=figs)


# --------------------------------------------------------------------------- run detail
def _actions(s: Dict[str, Any], csrf: str, read_only: bool) -> str:
    rid = s.get("run_id")
    live = f'<a href="/live/{_e(rid)}" id="live-link"><span class="live-dot"></span>watch live</a>' \
        if s.get("status") == "running" else ""
    if read_only:
        return f'<div class="actions">{live}<span class="note">read-only: no actions</span></div>' if live else ""
    c = _csrf_field(csrf)
    tags = "".join(
        f'<form method="post" action="/runs/{_e(rid)}/tags">{c}<input type="hidden" name="action" value="remove">'
        f'<input type="hidden" name="tag" value="{_e(t)}"><button type="submit" title="remove this tag">'
        f"{_e(t)} ✕</button></form>" for t in (s.get("tags") or []))
    return (
        f'<div class="actions" id="actions">{live}'
        f'<form method="post" action="/runs/{_e(rid)}/export">{c}<select name="format">'
        '<option value="json">JSON</option><option value="csv">CSV (zip)</option></select>'
        '<button type="submit" id="export">Export</button></form>'
        f'<span>tags:</span>{tags}'
        f'<form method="post" action="/runs/{_e(rid)}/tags" id="tag-form">{c}<input type="hidden" name="action" '
        'value="add"><input name="tag" placeholder="new tag" size="12" required maxlength="64">'
        '<button type="submit">Add tag</button></form>'
        f'<form method="post" action="/runs/{_e(rid)}/delete" id="delete-form">{c}'
        '<label><input type="checkbox" name="confirm" value="yes" required> sure</label>'
        '<button type="submit">Delete run</button></form></div>')


def _kv(d: Dict[str, Any]) -> str:
    return _report._kv_table(d)


def _uncertainty_section(run: Any, s: Dict[str, Any], eff: Dict[str, Any]) -> str:
    """Resolution and uncertainty of the run's figures: the sample period, what share of
    phases, tokens and calls span whole samples, the standard errors the per-step rows
    give, and ``summary["resolution"]`` / ``summary["uncertainty"]`` when the run has them."""
    parts = []
    shown = s.get("_samples_shown") or {}
    period = s.get("sample_period_s")
    sec = _plot._arr(run, "sections")
    tok = _plot._arr(run, "tokens")
    calls = _plot._calls(run)

    def share(a: Any) -> str:
        if a is None or len(a) == 0:
            return "n/a"
        return f"{100.0 * float(a['resolved'].mean()):.0f}% of {len(a)}"

    ph = sec[sec["kind"] == "phase"] if sec is not None and len(sec) else None
    rows = [["label", str(s.get("source_label") or "unknown")],
            ["sample period", fmt_si(period, "s")],
            ["phases spanning a whole sample", share(ph)],
            ["decode steps spanning a whole sample", share(tok)],
            ["module calls spanning a whole sample", share(calls if len(calls) else None)]]
    if shown:
        rows.append(["timeline points", f"{shown.get('points')} of {shown.get('n_samples')} samples "
                                        f"(read from {shown.get('source')})"])
    parts.append(_report._table(["", ""], rows, cls="kv"))
    erows = []
    for k, f in eff.items():
        unit = f.get("unit") or ""
        u = "" if unit == "1" else unit
        ci = f.get("ci95") or [None, None]
        erows.append([k, _report._cell(f.get("value")) + (f" {u}" if u else ""),
                      "n/a" if f.get("se") is None else f"± {f['se']:.4g}",
                      "n/a" if ci[0] is None else f"[{ci[0]:.4g}, {ci[1]:.4g}]", f.get("n")])
    parts.append("<h3>Figures with their uncertainty</h3><p class=note>± one standard error and the 95 % "
                 "interval where the per-step rows give one (n = independent steps); n/a where a figure is a "
                 "single number.</p>" + _report._table(["figure", "value", "± SE", "95 % interval", "n"], erows))
    res, unc = s.get("resolution"), s.get("uncertainty")
    if isinstance(res, dict):
        parts.append("<h3>Resolution (from the run)</h3>" + _kv(res))
    if isinstance(unc, dict):
        parts.append("<h3>Uncertainty (from the run)</h3>" + _kv(unc))
    if res is None and unc is None:
        parts.append("<p class=note>This run's summary has no <code>resolution</code> / <code>uncertainty</code> "
                     "entries (it was saved by an energyprof that did not record them).</p>")
    return '<section id="uncertainty">' + "".join(parts) + "</section>"


def _has_act(run: Any) -> bool:
    calls = _plot._calls(run)
    return bool(len(calls)) and "act_mean" in calls.dtype.names and bool((calls["act_mean"] == calls["act_mean"]).any())


def _deep_section(run: Any, figs: List[str]) -> Tuple[str, bool]:
    ops = _plot._arr(run, "ops")
    heads = _plot._arr(run, "heads")
    has_ops = ops is not None and len(ops) > 0
    has_heads = heads is not None and len(heads) > 0
    if not (has_ops or has_heads or _has_act(run)):
        return "", False
    rid = _plot._summary(run).get("run_id")
    kinds = [("layers", "layer × component")] + ([("ops", "layer × operation")] if has_ops else []) + \
        [("layer_steps", "layer × step")]
    kind_opts = "".join(f'<option value="{k}">{_e(t)}</option>' for k, t in kinds)
    metric_opts = "".join(f'<option value="{k}">{_e(t)}</option>' for k, t in DEEP_METRICS.items())
    blocks = [f'<div class="actions"><label>view <select id="deep-kind">{kind_opts}</select></label>'
              f'<label>metric <select id="deep-metric">{metric_opts}</select></label>'
              f'<span class="note" id="deep-status"></span></div>']
    fig = _plot.plot(run, kind="ops" if has_ops else "layers", backend="plotly")
    if has_ops:
        blocks.append('<script type="application/json" id="deep-initial">"ops"</script>')
    blocks.append(_plot_box("plot-deep", "Deep mode", fig, figs, wide=True, height=520))
    if has_heads:
        hopts = "".join(f'<option value="{k}">{_e(t)}</option>' for k, t in _plot.HEAD_METRICS.items())
        blocks.append(f'<div class="actions"><label>head statistic <select id="head-metric">{hopts}</select>'
                      "</label></div>")
        blocks.append(_plot_box("plot-heads", "Per-head attention statistics",
                                _plot.plot(run, kind="heads", backend="plotly"), figs, wide=True, height=480))
    return (f'<h2>Deep mode: operations, heads, activations</h2><section class="grid" id="deep" '
            f'data-run-id="{_e(rid)}">' + "".join(blocks) + "</section>"), has_ops


# Fetches the figure of the chosen view and metric and redraws it in place.
_DEEP_JS = """
(function(){var sec=document.getElementById("deep");if(!sec)return;var rid=sec.getAttribute("data-run-id");
var kind=document.getElementById("deep-kind"),metric=document.getElementById("deep-metric"),
st=document.getElementById("deep-status"),hm=document.getElementById("head-metric");
var init=document.getElementById("deep-initial");if(init){kind.value=JSON.parse(init.textContent);}
function load(el,k,m,status){var url="/api/runs/"+rid+"/figure?kind="+encodeURIComponent(k)+"&metric="+encodeURIComponent(m);
 if(status){status.textContent="loading…";}
 fetch(url,{credentials:"same-origin"}).then(function(r){return r.json().then(function(j){return [r.ok,j];});})
 .then(function(x){if(!x[0]){if(status){status.textContent=x[1].detail||"no data";}return;}
  var node=document.getElementById(el),lay=x[1].layout||{};lay.height=(node.layout&&node.layout.height)||480;
  lay.autosize=true;lay.margin={l:60,r:30,t:60,b:60};
  return Plotly.react(el,x[1].data,lay,{responsive:true,displaylogo:false}).then(function(){
   if(status){status.textContent="";}document.documentElement.setAttribute("data-deep-shown",k+":"+m);});})
 .catch(function(e){window.__energyprofFail("figure fetch failed: "+e);});}
kind.addEventListener("change",function(){load("plot-deep",kind.value,metric.value,st);});
metric.addEventListener("change",function(){load("plot-deep",kind.value,metric.value,st);});
if(hm){hm.addEventListener("change",function(){load("plot-heads","heads",hm.value,null);});}})();
"""


def render_run(run: Any, eff: Dict[str, Any], *, nonce: str, csrf: str, read_only: bool) -> str:
    """``/runs/{id}``: everything the report shows, the actions, the resolution and
    uncertainty of the figures, and deep-mode data with a metric selector."""
    s = _plot._summary(run)
    body, figs, _cc = _report.report_body(run)
    deep, _ = _deep_section(run, figs)
    shown = s.get("_samples_shown") or {}
    note = ""
    if shown and shown.get("points") != shown.get("n_samples"):
        note = (f'<p class="note" id="samples-note">The power timeline shows {shown["points"]} bucket means of the '
                f'run\'s {shown["n_samples"]} samples (energy-preserving; /api/runs/{_e(s.get("run_id"))}/samples '
                f"gives min / max per bucket).</p>")
    title = _report.run_title(run)
    html = (f"<h1>{_e(title)}</h1><div class=sub>{_report.run_subtitle(run)} · {label_badge(s.get('source_label'))}"
            f"</div>{_actions(s, csrf, read_only)}{note}{body}"
            f"<h2>Resolution and uncertainty</h2>{_uncertainty_section(run, s, eff)}{deep}")
    return page(title, html, nonce=nonce, active="runs", read_only=read_only, figs=figs, script=_DEEP_JS)


# --------------------------------------------------------------------------- compare
def _fmt_fig(v: Any, unit: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if unit in ("J", "W", "s", "J·s"):
        return fmt_si(v, unit)
    if unit == "J/token":
        return fmt_si(v, "J")
    return f"{float(v):.4g}"


def render_compare(cmp: Dict[str, Any], runs: Sequence[Any], *, nonce: str, read_only: bool) -> str:
    """``/compare?ids=``: the figure table (best / worst highlighted, spread and sigma),
    a warning when labels differ, J per output token bars and the power timelines."""
    names, labels, ids = cmp["names"], cmp["labels"], cmp["run_ids"]
    warn = "".join(f'<div class="warn" id="label-warning">{_e(w)}</div>' if "label" in w else
                   f'<div class="warn">{_e(w)}</div>' for w in cmp["warnings"])
    head = "".join(f'<th class="run-col" data-label="{_e(lab)}"><a class="run-name" href="/runs/{_e(i)}">{_e(n)}'
                   f"</a><br>{label_badge(lab)}</th>" for n, lab, i in zip(names, labels, ids))
    rows = []
    for name, f in cmp["figures"].items():
        if f["n"] == 0:
            continue
        cells = []
        for k, v in enumerate(f["values"]):
            cls = "num" + (" best" if f["best"] == k else "") + (" worst" if f["worst"] == k else "")
            cells.append(f'<td class="{cls}">{_e(_fmt_fig(v, f["unit"]))}</td>')
        spread = f["spread"]
        spread_txt = f"{spread:.4g}×" if spread is not None and math.isfinite(spread) else "n/a"
        better = {"lower": "lower is better", "higher": "higher is better"}.get(f["better"] or "", "")
        rows.append(f'<tr data-figure="{_e(name)}"><td><b>{_e(name)}</b><div class="note">{_e(better)}</div></td>'
                    f'{"".join(cells)}<td class="num">{_e(spread_txt)}</td>'
                    f'<td class="num">{_e(_fmt_fig(f["sigma"], f["unit"]))}</td></tr>')
    extra = [("label", [label_badge(x) for x in labels]),
             ("source", [_e(x) for x in cmp["sources"]]),
             ("sample period", [_e(fmt_si(x, "s")) for x in cmp["sample_period_s"]]),
             ("resolution", [_e(_resolution_text(x)) for x in cmp["resolution"]]),
             ("uncertainty", [_e(_report._cell(x) if x else "n/a") for x in cmp["uncertainty"]])]
    for name, vals in extra:
        rows.append(f'<tr class="meta"><td><b>{_e(name)}</b></td>{"".join(f"<td>{v}</td>" for v in vals)}'
                    "<td></td><td></td></tr>")
    table = (f'<table id="compare-table"><thead><tr><th>figure</th>{head}<th>spread (max / min)</th><th>σ</th>'
             f'</tr></thead><tbody>{"".join(rows)}</tbody></table>'
             '<p class="note">Green: the best run for that figure; red: the worst. σ is the sample standard '
             "deviation across the runs.</p>")
    figs: List[str] = []
    blocks = []
    for pid, heading, kind in (("plot-jpt", "J per output token", "bars"),
                               ("plot-power", "Power timelines (from each run's start)", "timeline")):
        try:
            fig = _plot.plot_compare_many(runs, kind=kind, backend="plotly")
            blocks.append(_plot_box(pid, heading, fig, figs, wide=kind == "timeline"))
        except NoDataError as e:
            blocks.append(_no_plot(heading, e, wide=kind == "timeline"))
    body = (f"<h1>Compare {len(names)} runs</h1>{warn}{table}"
            f'<section class="grid" id="plots">{"".join(blocks)}</section>')
    return page(f"energyprof: compare {len(names)} runs", body, nonce=nonce, active="compare", read_only=read_only,
                figs=figs)


def render_compare_form(*, nonce: str, read_only: bool, message: str = "") -> str:
    """``/compare`` without ids: how to pick runs."""
    body = ("<h1>Compare runs</h1>" + (f'<div class="warn">{_e(message)}</div>' if message else "")
            + '<form method="get" action="/compare" class="filters"><label>run ids (2 to 10, comma-separated)'
            '<input name="ids" placeholder="1,2,3" pattern="[0-9]+(,[0-9]+){1,9}" required></label>'
            '<button type="submit">Compare</button></form><p class="note">Or tick runs in the '
            '<a href="/">runs list</a>.</p>')
    return page("energyprof: compare", body, nonce=nonce, active="compare", read_only=read_only, plotly=False)


# --------------------------------------------------------------------------- live
_LIVE_JS = """
(function(){var root=document.documentElement,el=document.getElementById("live"),rid=el.getAttribute("data-run-id");
var traces={},n=0,maxPts=20000;var cfg={responsive:true,displaylogo:false};
var colors={cpu:"#1f77b4",gpu:"#d62728",ane:"#9467bd",dram:"#2ca02c",package:"#222222",total:"#ff7f0e"};
function set(id,v){var e=document.getElementById(id);if(e){e.textContent=v;}}
function si(v,u){if(v===null||v===undefined||!isFinite(v)){return "n/a";}var a=Math.abs(v),p=[[1e6,"M"],[1e3,"k"],[1,""],[1e-3,"m"],[1e-6,"µ"]];
 for(var i=0;i<p.length;i++){if(a>=p[i][0]){return (v/p[i][0]).toPrecision(4)+" "+p[i][1]+u;}}return v.toPrecision(4)+" "+u;}
Plotly.newPlot("plot-live",[],{title:{text:el.getAttribute("data-title")},
 xaxis:{title:{text:"time (s since sampling began; the idle baseline comes first)"}},
 yaxis:{title:{text:"power (W)"},rangemode:"tozero"},height:430,margin:{l:60,r:30,t:60,b:60}},cfg)
.then(function(){root.setAttribute("data-energyprof-status","ok");});
var es=new EventSource("/api/runs/"+rid+"/stream");
es.addEventListener("samples",function(ev){var d=JSON.parse(ev.data);var names=Object.keys(d.domains).concat(["total"]);
 var add=[],x=[],y=[],idx=[];names.forEach(function(nm){var ys=nm==="total"?d.total_w:d.domains[nm];
  if(!(nm in traces)){traces[nm]=Object.keys(traces).length;add.push({x:[],y:[],mode:"lines",name:nm+" W",
   line:{color:colors[nm]||"#888",width:nm==="total"?2:1}});}
  idx.push(traces[nm]);x.push(d.t_s);y.push(ys);});
 var p=add.length?Plotly.addTraces("plot-live",add):Promise.resolve();
 p.then(function(){return Plotly.extendTraces("plot-live",{x:x,y:y},idx,maxPts);}).then(function(){
  n+=d.t_s.length;set("live-samples",String(n));var last=d.t_s.length-1;
  el.setAttribute("data-samples",String(n));el.setAttribute("data-last-t-start-ns",String(d.t_start_ns[last]));
  el.setAttribute("data-last-total-w",String(d.total_w[last]));set("live-power",si(d.total_w[last],"W"));});});
es.addEventListener("progress",function(ev){var d=JSON.parse(ev.data);set("live-phase",d.phase||"n/a");
 set("live-tokens",String(d.tokens));set("live-toks",d.tok_s===null?"n/a":d.tok_s.toPrecision(4)+" token/s");
 set("live-energy",si(d.energy_j,"J"));set("live-elapsed",si(d.elapsed_s,"s"));
 el.setAttribute("data-phase",d.phase||"");el.setAttribute("data-tokens",String(d.tokens));
 el.setAttribute("data-energy-j",String(d.energy_j));});
es.addEventListener("end",function(ev){var d=JSON.parse(ev.data);es.close();el.setAttribute("data-ended",d.status);
 set("live-state","the run ended ("+d.status+"): opening its page…");setTimeout(function(){window.location.replace(d.url);},800);});
es.onerror=function(){set("live-state","connection lost; retrying…");};})();
"""


def render_live(s: Dict[str, Any], *, nonce: str, read_only: bool) -> str:
    """``/live/{id}``: a running run's power by domain, phase, tokens, tokens/s and energy
    so far, following ``/api/runs/{id}/stream``; it opens the run's page when the run ends."""
    rid = s.get("run_id")
    name = s.get("name") or f"run {rid}"
    title = "Power by domain (live)" + _plot.label_tag(s)
    cards = "".join(
        f'<div class="card"><div class="k">{_e(k)}</div><div class="v" id="{i}">{_e(v)}</div></div>'
        for k, i, v in (("phase", "live-phase", "waiting…"), ("tokens", "live-tokens", "0"),
                        ("tokens / s", "live-toks", "n/a"), ("energy so far", "live-energy", "n/a"),
                        ("power now", "live-power", "n/a"), ("elapsed", "live-elapsed", "n/a"),
                        ("samples received", "live-samples", "0")))
    body = (f'<h1><span class="live-dot"></span>Live: {_e(name)}</h1>'
            f'<div class=sub>run id {_e(rid)} · {_e((s.get("model") or {}).get("name") or "model n/a")} · '
            f'{label_badge(s.get("source_label"))} · <span id="live-state">following the run as its samples are '
            f"committed</span></div>{_report._banner({k: v for k, v in s.items() if k != 'status'})}"
            f'<section id="live" data-run-id="{_e(rid)}" data-title="{_e(title)}"><section class="cards">{cards}</section>'
            '<div class="plotbox wide"><div class="plot" id="plot-live"></div></div></section>'
            '<p class="note">Phase, tokens and tokens/s are provisional while the run goes on; energy so far is '
            "the integral of the committed samples since the run's start (after the idle baseline). The final "
            "figures come when the run ends.</p>")
    return page(f"energyprof: live run {rid}", body, nonce=nonce, active="runs", read_only=read_only,
                script=_LIVE_JS)


# --------------------------------------------------------------------------- docs and errors
def render_docs(spec: Dict[str, Any], *, nonce: str, read_only: bool) -> str:
    """``/docs``: the API from its OpenAPI schema (also served whole at ``/openapi.json``)."""
    blocks = []
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            params = op.get("parameters") or []
            prow = [[p.get("name"), p.get("in"), "yes" if p.get("required") else "no",
                     (p.get("schema") or {}).get("type", ""), p.get("description", "")] for p in params]
            ptable = _report._table(["parameter", "in", "required", "type", "description"], prow) if prow else ""
            blocks.append(f'<div class="endpoint"><code class="m">{_e(method.upper())}</code><code>{_e(path)}</code>'
                          f'<p>{_e(op.get("summary", ""))}</p><p class="note">{_e(op.get("description", ""))}</p>'
                          f"{ptable}</div>")
    auth = ("<p>With a token (<code>--token</code>, or generated when serving on another host than "
            "127.0.0.1), every request needs <code>Authorization: Bearer TOKEN</code> or <code>?token=TOKEN</code>; "
            "otherwise the answer is 401.</p>")
    body = (f"<h1>{_e(spec.get('info', {}).get('title', 'API'))}</h1><p>{_e(spec.get('info', {}).get('description', ''))}"
            f'</p>{auth}<p>The whole schema: <a href="/openapi.json">/openapi.json</a>.</p>{"".join(blocks)}')
    return page("energyprof: API", body, nonce=nonce, active="docs", read_only=read_only, plotly=False)


def render_error(status: int, message: str, *, nonce: str, read_only: bool) -> str:
    """An error page (404, 400, ...) saying what was wrong."""
    body = f'<h1>{status}</h1><div class="warn" id="error">{_e(message)}</div><p><a href="/">back to the runs</a></p>'
    return page(f"energyprof: {status}", body, nonce=nonce, active="", read_only=read_only, plotly=False)
