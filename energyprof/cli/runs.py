"""The commands over stored runs: ``runs``, ``show``, ``compare``, ``export``, ``report``, ``clean``,
``delete``, ``import`` and ``context``."""
from __future__ import annotations

import math
import os
import sys
import warnings

from ..analysis.comparison import compare
from ..errors import UserError
from ..store import db as dbm
from .common import _db, _fmt, _load, _print_json, _table, print_summary

__all__ = ["cmd_runs", "cmd_show", "cmd_compare", "cmd_export", "cmd_report", "cmd_clean", "cmd_delete", "cmd_import",
           "cmd_context"]


def cmd_runs(args) -> int:
    kw = dict(model=args.model, arch=args.arch, source=args.source, status=args.status, tag=args.tag,
              search=args.search, since=getattr(args, "since", None), until=getattr(args, "until", None),
              sort=args.sort, descending=not args.ascending, limit=args.limit, offset=args.offset)
    try:
        rows = dbm.runs(_db(args), **{k: v for k, v in kw.items() if v is not None})
    except ValueError as e:
        raise UserError(str(e))
    if args.json:
        _print_json(list(rows))
        return 0
    _table("runs", ["id", "started", "name", "model", "source", "status", "J", "J/out tok", "tokens/J"],
           [(r.get("run_id"), r.get("started_at"), r.get("name") or "", (r.get("model") or {}).get("name", ""),
             r.get("source"), r.get("status"), _fmt(r.get("energy_j")), _fmt(r.get("j_per_output_token")),
             _fmt(r.get("tokens_per_j"))) for r in rows])
    return 0


def cmd_show(args) -> int:
    from ..store.quality import resolution_of

    run = _load(args.run, _db(args))
    summary = run.summary()
    summary["resolution"] = resolution_of(run)   # runs from before it was kept get it from their rows
    if args.json:
        _print_json(summary)
        return 0
    print_summary(summary)
    from ..analysis.efficiency import efficiency

    eff = efficiency(run)
    rows = []
    for key, f in eff.items():
        se = f.get("se")
        unc = f"± {_fmt(se)}" if isinstance(se, float) and not math.isnan(se) else ""
        if unc and f.get("n") is not None:
            unc += f" (n={f['n']})"
        unit = f.get("unit", "")
        rows.append((key, _fmt(f.get("value"), "" if unit == "1" else unit), unc))
    _table("efficiency (± standard error over n independent power samples, where the tokens give one)",
           ["figure", "value", "uncertainty"], rows)
    ls = run.layer_summary()
    if len(ls):
        _table("layers (over all calls; mean J/call of unresolved calls is a time share of their samples)",
               ["layer", "calls", "energy J", "mean J/call", "± SE", "n samples", "resolved", "share"],
               [(int(r["layer"]), int(r["n_calls"]), _fmt(float(r["energy_j"])), _fmt(float(r["mean_energy_j"])),
                 _fmt(float(r["sem_energy_j"])), int(r["n_eff"]), f"{100 * float(r['resolved_share']):.0f}%",
                 f"{100 * float(r['share']):.1f}%") for r in ls])
    return 0


def _save_figure(build, path: str) -> str:
    """Draw with plotly for ``.html`` (a self-contained page) or matplotlib for ``.png``/``.svg``/
    ``.pdf``; ``build(backend)`` returns the figure."""
    ext = os.path.splitext(path)[1].lower()
    if ext in (".html", ".htm"):
        build("plotly").write_html(path, include_plotlyjs=True, full_html=True)
    elif ext in (".png", ".svg", ".pdf"):
        build("matplotlib").savefig(path, dpi=110)
    else:
        raise UserError(f"--plot {path}: the file must end in .html, .png, .svg or .pdf")
    return path


def cmd_compare(args) -> int:
    from ..analysis.comparison import MAX_RUNS

    if not 2 <= len(args.runs) <= MAX_RUNS:
        raise UserError(f"compare takes 2 to {MAX_RUNS} runs, got {len(args.runs)}")
    runs = [_load(r, _db(args)) for r in args.runs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)    # said once below, not as a Python warning
        res = compare(*runs, db=_db(args))
    for w in res["warnings"]:
        print(f"energyprof: warning: {w}", file=sys.stderr)
    if args.plot:
        from ..views.plot import plot_runs

        _save_figure(lambda backend: plot_runs(runs, backend=backend), args.plot)
        if not args.json:
            print(f"plot written to {args.plot}")
    if args.json:
        _print_json(res)
        return 0
    ids = [str(r) for r in args.runs]
    rows = []
    for k, v in res["figures"].items():
        best = res["run_ids"][v["best"]] if v.get("best") is not None else "-"
        rows.append((k, *[_fmt(x) for x in v["values"]], str(best), _fmt(v["spread"]), _fmt(v["sigma"])))
    _table(f"runs {', '.join(ids)}", ["figure", *ids, "best", "max/min", "σ"], rows)
    return 0


def cmd_delete(args) -> int:
    db = _db(args)
    runs = [_load(r, db) for r in args.runs]   # every id is checked before anything is deleted
    for r in runs:
        dbm.delete(r.run_id, db=db)
    ids = [r.run_id for r in runs]
    if args.json:
        _print_json({"deleted": ids})
    else:
        print(f"deleted {len(ids)} run(s): {', '.join(str(i) for i in ids)}")
    return 0


def cmd_import(args) -> int:
    ids = []
    for p in args.paths:
        try:
            ids.append(dbm.import_run(p, db=_db(args)))
        except FileNotFoundError:
            raise UserError(f"no such file: {p}" + (f" (imported before it: {ids})" if ids else ""))
        except ValueError as e:
            raise UserError(str(e) + (f" (imported before it: {ids})" if ids else ""))
    if args.json:
        _print_json({"imported": ids})
    else:
        print(f"imported {len(ids)} run(s) as: {', '.join(str(i) for i in ids)}")
    return 0


def cmd_context(args) -> int:
    from ..analysis.tokens import context_cost

    runs = [_load(r, _db(args)) for r in args.runs]
    res = context_cost(runs)
    if args.plot:
        from ..views.plot import plot

        if len(runs) != 1:
            raise UserError("--plot draws one run; give one RUN (the fit above pools all of them)")
        _save_figure(lambda backend: plot(runs[0], kind="context", backend=backend), args.plot)
    if args.json:
        _print_json({k: v for k, v in res.items() if k != "fit"})
        return 0
    if "error" in res:
        print(f"context: {res['error']} (have {res['n']} usable steps)")
        return 0
    sl, ic = res["slope"], res["intercept"]
    _table("decode J/token against the context length" + (" (resolved steps)" if res["resolved_only"] else ""),
           ["figure", "value", "± SE", "95% interval"],
           [("slope (J/token per context token)", _fmt(sl["value"]), _fmt(sl["se"]),
             f"[{_fmt(sl['ci95'][0])}, {_fmt(sl['ci95'][1])}]"),
            ("intercept (J/token)", _fmt(ic["value"]), _fmt(ic["se"]), f"[{_fmt(ic['ci95'][0])}, {_fmt(ic['ci95'][1])}]"),
            ("R²", _fmt(res["r2"]), "", ""), ("steps", str(res["n"]), "", "")])
    if args.plot:
        print(f"plot written to {args.plot}")
    return 0


def cmd_export(args) -> int:
    run = _load(args.run, _db(args))
    try:
        path = dbm.export(run, args.output, format=args.format, db=_db(args))
    except (ValueError, ImportError) as e:
        raise UserError(str(e))
    print(f"exported run {args.run} to {path}")
    return 0


def cmd_report(args) -> int:
    from ..views.report import write_report

    run = _load(args.run, _db(args))
    path = write_report(run, args.output)
    print(f"report written to {path}")
    return 0


def cmd_clean(args) -> int:
    if args.max_runs is None and args.max_age_days is None:
        raise UserError("clean needs --max-runs and/or --max-age-days")
    res = dbm.cleanup(max_runs=args.max_runs, max_age_days=args.max_age_days, dry_run=args.dry_run, db=_db(args))
    if args.json:
        _print_json(res)
    else:
        ids = res["run_ids"]
        verb = "would delete" if args.dry_run else "deleted"
        print(f"{verb} {len(ids)} run(s): {', '.join(str(i) for i in ids) or '-'}")
    return 0
