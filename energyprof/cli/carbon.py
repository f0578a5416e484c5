"""``energyprof carbon RUN [RUN...]``: CO2 and cost per run and per 1M tokens."""
from __future__ import annotations

import math

from ..analysis.carbon import CO2_ENV, DEFAULT_CO2_G_PER_KWH, DEFAULT_PRICE_PER_KWH, PRICE_ENV, footprint_runs
from ..errors import UserError
from .common import _print_json, _table, add_db

__all__ = ["add_arguments", "cli_main"]


def add_arguments(sp) -> None:
    """The ``energyprof carbon`` options (called by energyprof.cli)."""

    sp.add_argument("runs", nargs="+", help="run ids (several: mean ± 95%% CI over them)")
    sp.add_argument("--co2-g-per-kwh", type=float, default=None,
                    help=f"grid carbon intensity (default ${CO2_ENV} or {DEFAULT_CO2_G_PER_KWH:g})")
    sp.add_argument("--price-per-kwh", type=float, default=None,
                    help=f"electricity price (default ${PRICE_ENV} or {DEFAULT_PRICE_PER_KWH:g})")
    sp.add_argument("--net", action="store_true", help="energy above the idle baseline only")
    sp.add_argument("--json", action="store_true")
    add_db(sp)


def cli_main(args) -> int:
    """``energyprof carbon RUN [RUN...]``: CO2 and cost per run and per 1M tokens."""

    try:
        ids = [int(r) for r in args.runs]
    except ValueError:
        raise UserError(f"run ids must be integers, got {' '.join(args.runs)}") from None
    try:
        res = footprint_runs(ids, args.co2_g_per_kwh, args.price_per_kwh, net=args.net, db=args.db)
    except KeyError as e:
        raise UserError(str(e.args[0]) if e.args else "unknown run")
    except ValueError as e:
        raise UserError(str(e))
    if args.json:
        _print_json(res)
        return 0
    st = res["settings"]

    def cell(f):
        v, (lo, hi) = f["value"], f["ci95"]
        if math.isnan(v):
            return "-"
        return f"{v:.4g}" if math.isnan(lo) else f"{v:.4g} (95% CI {lo:.4g} .. {hi:.4g})"

    title = (f"carbon and cost of run{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))} at "
             f"{st['co2_g_per_kwh']:g} gCO2/kWh ({st['co2_origin']}), {st['price_per_kwh']:g}/kWh "
             f"({st['price_origin']})")
    _table(title, ["figure", "value", "unit"], [(k, cell(f), f["unit"]) for k, f in res["figures"].items()])
    return 0
