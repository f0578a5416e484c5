"""Carbon and cost of runs: grams of CO2 and money, per run and per million tokens.

The grid carbon intensity (gCO2/kWh) and the electricity price (currency per kWh) come
from the arguments, else the environment (``ENERGYPROF_CO2_G_PER_KWH``,
``ENERGYPROF_PRICE_PER_KWH``), else the defaults **400 gCO2/kWh** and **0.15 per kWh**
(about a world-average grid and a typical retail price; state your own for real
figures).  The HTML report uses the same settings (:func:`energyprof.report.carbon_and_cost`).

>>> from energyprof.carbon import footprint
>>> fp = footprint({"energy_j": 3.6e6, "output_tokens": 1000, "input_tokens": 0}, co2_g_per_kwh=100,
...                price_per_kwh=0.2)
>>> fp["co2_g"]["value"], fp["cost"]["value"], fp["co2_g_per_1m_output_tokens"]["value"]
(100.0, 0.2, 100000.0)
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

from .analysis import NAN, _f, _summary_of, figure, mean_ci, summaries
from .report import (CO2_ENV, DEFAULT_CO2_G_PER_KWH, DEFAULT_PRICE_PER_KWH, PRICE_ENV, _J_PER_KWH,
                     carbon_and_cost)

__all__ = ["footprint", "footprint_runs", "DEFAULT_CO2_G_PER_KWH", "DEFAULT_PRICE_PER_KWH", "CO2_ENV", "PRICE_ENV",
           "cli_main"]

_PER = 1e6  # "per 1M tokens"


def footprint(run: Any, co2_g_per_kwh: Optional[float] = None, price_per_kwh: Optional[float] = None,
              net: bool = False) -> Dict[str, Any]:
    """CO2 and cost of one run (RunData, session or summary dict), each figure with its unit.

    Returns ``{"energy_j", "kwh", "co2_g", "cost", "co2_g_per_1m_output_tokens",
    "cost_per_1m_output_tokens", "kwh_per_1m_output_tokens", "co2_g_per_1m_tokens",
    "cost_per_1m_tokens"}`` (figures ``{"value", "unit", "se", "ci95", "n"}``; a single run
    has no spread, so ``se`` is NaN — use :func:`footprint_runs` over repeats for intervals)
    and ``"settings": {"co2_g_per_kwh", "price_per_kwh", "co2_origin", "price_origin"}``
    (origin: "argument", "$ENV_VAR" or "default").  ``net=True`` counts energy above idle only.
    """
    s = _summary_of(run)
    e = _f(s.get("net_energy_j" if net else "energy_j"))
    cc = carbon_and_cost(0.0 if math.isnan(e) else e, co2_g_per_kwh, price_per_kwh)
    co2, price = cc["co2_g_per_kwh"], cc["price_per_kwh"]
    kwh = e / _J_PER_KWH
    n_out = _f(s.get("output_tokens"))
    n_all = n_out + _f(s.get("input_tokens"))

    def per(total: float, n: float) -> float:
        return total / n * _PER if n and not math.isnan(n) and n > 0 else NAN

    return {
        "energy_j": figure(e, "J"),
        "kwh": figure(kwh, "kWh"),
        "co2_g": figure(kwh * co2, "gCO2"),
        "cost": figure(kwh * price, "currency"),
        "kwh_per_1m_output_tokens": figure(per(kwh, n_out), "kWh/1M tokens"),
        "co2_g_per_1m_output_tokens": figure(per(kwh * co2, n_out), "gCO2/1M tokens"),
        "cost_per_1m_output_tokens": figure(per(kwh * price, n_out), "currency/1M tokens"),
        "co2_g_per_1m_tokens": figure(per(kwh * co2, n_all), "gCO2/1M tokens"),
        "cost_per_1m_tokens": figure(per(kwh * price, n_all), "currency/1M tokens"),
        "settings": {"co2_g_per_kwh": co2, "price_per_kwh": price, "co2_origin": cc["co2_origin"],
                     "price_origin": cc["price_origin"]},
        "run_id": s.get("run_id"),
    }


def footprint_runs(runs: Any, co2_g_per_kwh: Optional[float] = None, price_per_kwh: Optional[float] = None,
                   net: bool = False, db: Any = None) -> Dict[str, Any]:
    """Mean ± 95 % CI over several runs (repeats of one workload) of every :func:`footprint`
    figure, plus the per-run footprints: ``{"figures": {name: figure}, "runs": [...], "settings"}``.
    The interval is over runs (t with n - 1 degrees of freedom); grid intensity and price are
    taken as exact."""
    fps: List[Dict[str, Any]] = [footprint(s, co2_g_per_kwh, price_per_kwh, net) for s in summaries(runs, db=db)]
    if not fps:
        raise ValueError("footprint_runs() needs at least one run")
    figs = {}
    for name, f0 in fps[0].items():
        if not isinstance(f0, dict) or "value" not in f0:
            continue
        m = mean_ci([fp[name]["value"] for fp in fps])
        figs[name] = figure(m["mean"], f0["unit"], m["se"], n=m["n"])
    return {"figures": figs, "runs": fps, "settings": fps[0]["settings"]}


# ----------------------------------------------------------------------------- CLI


def add_arguments(sp) -> None:
    """The ``energyprof carbon`` options (called by energyprof.cli)."""
    from .cli import add_db

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
    from .cli import UserError, _print_json, _table

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
