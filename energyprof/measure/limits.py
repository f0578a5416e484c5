"""Power limits of the hardware a run measured, and its peaks as a share of them.

Where a source knows a limit it is taken from there: NVML's enforced power limit of the
GPU (``source_meta["power_limit_w"]``), the estimate source's ``tdp_w`` (its CPU cap), and
RAPL's maximum power of each zone (``constraint_*_max_power_uw`` of the powercap tree
under ``source_meta["root"]``, the long-term constraint first; packages are summed).
A stated limit (``ep.run(..., power_limit_w=...)``: one number for the run total, or a
dict per domain) is used as given and wins over the source's.

>>> lim = power_limits("nvml", {"power_limit_w": 300.0})
>>> lim["gpu"]
{'limit_w': 300.0, 'from': 'nvml power limit'}
>>> peak_shares({"gpu": {"power_w": 150.0, "t_s": 0.2}}, {"gpu": 20.0}, 0.1, lim)["gpu"]["share_of_limit"]
0.5
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Dict, Optional, Union

from .._dtypes import DOMAINS

__all__ = ["power_limits", "rapl_max_power_w", "peak_shares"]

LimitArg = Union[None, float, int, Dict[str, float]]


def _positive(v: Any) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _zone_dir(root: str, zone: str) -> Optional[str]:
    """The directory of powercap zone ``zone`` ("intel-rapl:0" or "intel-rapl:0:2") under ``root``:
    a top-level entry, or a subzone inside its package's directory (as the kernel lays them out)."""
    for cand in (os.path.join(root, zone), os.path.join(root, zone.rsplit(":", 1)[0], zone)):
        if os.path.isdir(cand):
            return cand
    return None


def _read_uw(path: str) -> Optional[float]:
    try:
        with open(path, "r", encoding="ascii") as fh:
            return _positive(fh.read().strip())
    except (OSError, ValueError):
        return None


def _zone_max_w(zdir: str) -> Optional[float]:
    """The zone's maximum power: the long-term constraint's max_power_uw, else any constraint's."""
    found = {}
    for name in sorted(os.listdir(zdir)):
        m = re.match(r"^constraint_(\d+)_max_power_uw$", name)
        if not m:
            continue
        uw = _read_uw(os.path.join(zdir, name))
        if uw is None:
            continue
        try:
            with open(os.path.join(zdir, f"constraint_{m.group(1)}_name"), encoding="ascii") as fh:
                cname = fh.read().strip()
        except OSError:
            cname = ""
        found[(cname != "long_term", int(m.group(1)))] = uw
    if not found:
        return None
    return found[min(found)] / 1e6


def rapl_max_power_w(meta: Dict[str, Any]) -> Dict[str, float]:
    """``{domain: W}`` of the RAPL zones the run read (``source_meta`` of the rapl source):
    the maximum power of each zone, summed per domain (two packages: the sum of both)."""
    root = meta.get("root")
    if not isinstance(root, str) or not os.path.isdir(root):
        return {}
    out: Dict[str, float] = {}
    for z in meta.get("zones") or []:
        # "intel-rapl:0 package-0 -> package": zone directory, its name, the domain it counts in
        m = re.match(r"^(\S+)\s.*->\s*(\w+)$", str(z))
        if not m:
            continue
        zone, dom = m.group(1), m.group(2)
        zdir = _zone_dir(root, zone)
        w = _zone_max_w(zdir) if zdir else None
        if w is not None and dom in DOMAINS:
            out[dom] = out.get(dom, 0.0) + w
    return out


def power_limits(source_kind: Optional[str], source_meta: Optional[Dict[str, Any]],
                 stated: LimitArg = None) -> Dict[str, Dict[str, Any]]:
    """The known power limits of a run: ``{domain or "total": {"limit_w", "from"}}``.

    ``from`` says where each came from: ``"nvml power limit"``, ``"estimate tdp_w"``,
    ``"rapl max power"`` or ``"stated"``.  Raises ValueError for a stated limit that is
    not a positive number (or a dict of them keyed by domain / ``"total"``).
    """
    meta = source_meta if isinstance(source_meta, dict) else {}
    out: Dict[str, Dict[str, Any]] = {}
    if source_kind == "nvml" and _positive(meta.get("power_limit_w")):
        out["gpu"] = {"limit_w": float(meta["power_limit_w"]), "from": "nvml power limit"}
    elif source_kind == "estimate" and _positive(meta.get("tdp_w")):
        out["cpu"] = {"limit_w": float(meta["tdp_w"]), "from": "estimate tdp_w"}
    elif source_kind == "rapl":
        for dom, w in rapl_max_power_w(meta).items():
            out[dom] = {"limit_w": w, "from": "rapl max power"}
    if stated is None:
        return out
    items = stated.items() if isinstance(stated, dict) else [("total", stated)]
    for key, v in items:
        if key != "total" and key not in DOMAINS:
            raise ValueError(f"power_limit_w: unknown domain {key!r}; valid: total, {', '.join(DOMAINS)}")
        w = _positive(v)
        if w is None or isinstance(v, bool):
            raise ValueError(f"power_limit_w[{key!r}] must be a positive number of watts, got {v!r}")
        out[key] = {"limit_w": w, "from": "stated"}
    return out


def peak_shares(peaks: Dict[str, Dict[str, Any]], mean_w: Dict[str, float], duration_s: float,
                limits: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Each peak (``{domain or "total": {"power_w", "t_s"}}``) with ``share_of_limit`` and the
    mean power's ``mean_share_of_limit`` where the domain has a limit (NaN where it has none)."""
    out = {}
    for key, p in peaks.items():
        q = dict(p)
        lim = (limits.get(key) or {}).get("limit_w")
        if lim:
            q["limit_w"] = float(lim)
            q["limit_from"] = limits[key]["from"]
            q["share_of_limit"] = float(p["power_w"]) / lim
            q["mean_share_of_limit"] = float(mean_w.get(key, float("nan"))) / lim
        else:
            q["share_of_limit"] = float("nan")
            q["mean_share_of_limit"] = float("nan")
        out[key] = q
    return out
