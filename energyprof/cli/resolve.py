"""``energyprof resolve RUN [RUN...] --by component``: power per group by regression over
the samples of the runs (``ep.resolve``), labelled "estimated by regression"."""
from __future__ import annotations

import math

from ..analysis.resolve import BYS, RESOLVE_LABEL, resolve
from ..errors import UserError
from .common import _db, _load, _print_json, _table, add_db

__all__ = ["add_arguments", "cli_main"]


def add_arguments(sp) -> None:
    """The ``energyprof resolve`` options (called by energyprof.cli)."""
    sp.add_argument("runs", nargs="+", help="run ids (e.g. the runs of one ep.repeat group)")
    sp.add_argument("--by", choices=BYS, default="component", help="groups: component (default), layer or step")
    sp.add_argument("--json", action="store_true")
    add_db(sp)


def _w(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.4g}"


def cli_main(args) -> int:
    """``energyprof resolve RUN [RUN...]``: the table of :func:`energyprof.resolve`."""
    runs = [_load(r, _db(args)) for r in args.runs]
    try:
        table = resolve(runs, by=args.by)
    except ValueError as e:
        raise UserError(str(e))
    if args.json:
        _print_json({"label": RESOLVE_LABEL, "by": args.by, "runs": [int(r) for r in args.runs],
                     "condition_number": float(table["condition_number"][0]) if len(table) else float("nan"),
                     "groups": [{k: (row[k].item() if hasattr(row[k], "item") else row[k])
                                 for k in table.dtype.names} for row in table]})
        return 0
    rows = []
    for r in table:
        ci = "-" if not r["identifiable"] else f"{_w(r['ci_low_w'])} .. {_w(r['ci_high_w'])}"
        rows.append((r["group"], _w(r["power_w"]), ci, _w(r["energy_j"]), "yes" if r["identifiable"] else "no",
                     int(r["n_calls"]), f"{r['time_s']:.4g}"))
    cond = float(table["condition_number"][0]) if len(table) else float("nan")
    title = (f"power by {args.by}, {RESOLVE_LABEL} over {len(runs)} run{'s' if len(runs) > 1 else ''} "
             f"({', '.join(args.runs)}); condition number {cond:.3g}")
    _table(title, ["group", "power W", "95% CI W", "J per call", "identifiable", "calls", "time s"], rows)
    if not table["identifiable"].all():
        print("groups marked 'no' cannot be told apart from the others with these samples: "
              "more runs (energyprof: ep.repeat) or a shorter sample period give the regression more mixes")
    return 0
