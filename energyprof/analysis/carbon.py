"""Carbon and cost of runs: grams of CO2 and money, per run and per million tokens.

The grid carbon intensity (gCO2/kWh) and the electricity price (currency per kWh) come
from the arguments, else the environment (``ENERGYPROF_CO2_G_PER_KWH``,
``ENERGYPROF_PRICE_PER_KWH``), else the defaults **400 gCO2/kWh** and **0.15 per kWh**
(about a world-average grid and a typical retail price; state your own for real
figures).  The HTML report uses the same settings (:func:`carbon_and_cost`).

>>> from energyprof.analysis.carbon import footprint
>>> fp = footprint({"energy_j": 3.6e6, "output_tokens": 1000, "input_tokens": 0}, co2_g_per_kwh=100,
...                price_per_kwh=0.2)
>>> fp["co2_g"]["value"], fp["cost"]["value"], fp["co2_g_per_1m_output_tokens"]["value"]
(100.0, 0.2, 100000.0)
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional, Tuple

from .efficiency import _summary_of, summaries
from ..store.rundata import _float as _f
from .stats import NAN, figure, mean_ci

__all__ = ["footprint", "footprint_runs", "carbon_and_cost", "DEFAULT_CO2_G_PER_KWH", "DEFAULT_PRICE_PER_KWH",
           "CO2_ENV", "PRICE_ENV"]

#: Grid carbon intensity used when neither the argument nor the environment sets one.
DEFAULT_CO2_G_PER_KWH = 400.0

#: Electricity price used when neither the argument nor the environment sets one.
DEFAULT_PRICE_PER_KWH = 0.15

CO2_ENV = "ENERGYPROF_CO2_G_PER_KWH"

PRICE_ENV = "ENERGYPROF_PRICE_PER_KWH"

_J_PER_KWH = 3.6e6


def _setting(arg: Optional[float], env: str, default: float, what: str) -> Tuple[float, str]:
    """The value and where it came from: the argument, the environment, or the default."""
    if arg is not None:
        value, origin = arg, "argument"
    elif os.environ.get(env, "").strip():
        raw = os.environ[env].strip()
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{env}={raw!r} is not a number ({what})") from None
        origin = f"${env}"
    else:
        value, origin = default, "default"
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r} (from {origin})")
    return value, origin


def carbon_and_cost(energy_j: float, co2_g_per_kwh: Optional[float] = None,
                    price_per_kwh: Optional[float] = None) -> Dict[str, Any]:
    """Grams of CO2 and cost of ``energy_j`` at the given (or configured) intensity and price.

    Returns ``{"kwh", "co2_g", "cost", "co2_g_per_kwh", "price_per_kwh", "co2_origin",
    "price_origin"}``; the origins say "argument", "$ENV_VAR" or "default".
    """
    co2, co2_origin = _setting(co2_g_per_kwh, CO2_ENV, DEFAULT_CO2_G_PER_KWH, "grid carbon intensity (gCO2/kWh)")
    price, price_origin = _setting(price_per_kwh, PRICE_ENV, DEFAULT_PRICE_PER_KWH, "electricity price (per kWh)")
    kwh = float(energy_j) / _J_PER_KWH
    return {"kwh": kwh, "co2_g": kwh * co2, "cost": kwh * price, "co2_g_per_kwh": co2, "price_per_kwh": price,
            "co2_origin": co2_origin, "price_origin": price_origin}


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
