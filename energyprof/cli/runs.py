"""The commands over stored runs: ``runs``, ``show``, ``compare``, ``export``, ``report``, ``clean``."""
from __future__ import annotations

import math

from ..analysis.comparison import compare
from ..errors import UserError
from ..store import db as dbm
from .common import _db, _fmt, _load, _print_json, _table, print_summary

__all__ = ["cmd_runs", "cmd_show", "cmd_compare", "cmd_export", "cmd_report", "cmd_clean"]


def cmd_runs(args) -> int:
    kw = dict(model=args.model, arch=args.arch, source=args.source, status=args.status, tag=args.tag,
              search=args.search, sort=args.sort, descending=not args.ascending, limit=args.limit, offset=args.offset)
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


def cmd_compare(args) -> int:
    ra, rb = (_load(r, _db(args)) for r in (args.a, args.b))
    import warnings as _w

    with _w.catch_warnings():
        _w.simplefilter("ignore")    # said once below, not as a Python warning
        res = compare(ra, rb, db=_db(args))
    if args.json:
        _print_json(res)
        return 0
    figs = res.get("figures", res)
    rows = []
    for k, v in figs.items():
        if isinstance(v, dict) and "a" in v:
            rows.append((k, _fmt(v.get("a")), _fmt(v.get("b")), _fmt(v.get("rel_diff"))))
    _table(f"run {args.a} vs run {args.b}", ["figure", str(args.a), str(args.b), "relative diff"], rows)
    for w in res.get("warnings") or []:
        print(f"warning: {w}")
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
