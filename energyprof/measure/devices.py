"""Several GPUs in one process: the per-device series of ``nvml:devices=0,1`` (or ``all``)
and each device's share of the run.

The nvml source reads every listed GPU in each poll and writes one sample whose ``gpu_w``
is their sum, followed by one sample per device flagged ``_core.SFLAG_DEVICE`` (the device's
index in the bits from ``_core.SFLAG_DEVICE_SHIFT``), with the same times and kind.
:func:`split` takes those device rows out of what the sampler drains, before anything
integrates, so the run's energy (and every phase, token and layer row) comes from the sum
alone and nothing is counted twice; the device rows become their own series
(``DEVICE_SAMPLE_DTYPE``) and :func:`breakdown` turns them into ``summary()["devices"]``.

>>> import numpy as np
>>> from energyprof import _core
>>> raw = np.zeros(3, _core.SAMPLE_DTYPE)
>>> raw["flags"] = [0, _core.SFLAG_DEVICE, _core.SFLAG_DEVICE | (1 << _core.SFLAG_DEVICE_SHIFT)]
>>> raw["gpu_w"] = [30.0, 10.0, 20.0]
>>> plain, dev = split(raw)
>>> plain["gpu_w"].tolist(), dev["device"].tolist(), dev["power_w"].tolist()
([30.0], [0, 1], [10.0, 20.0])
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .. import _core
from .._dtypes import DEVICE_SAMPLE_DTYPE
from ..store.quality import period_text
from ..store.rundata import sample_fields_only
from .integrate import integrate_bridged

__all__ = ["split", "as_samples", "breakdown", "READINGS"]

_DEVICE_BITS = np.uint32(_core.SFLAG_DEVICE | (0xFF << _core.SFLAG_DEVICE_SHIFT))
_GPU = list(_core.DOMAINS).index("gpu")

#: What each reading kind of the nvml source (meta_json ``mode``) is, in words.
READINGS = {"energy_counter": "counter", "power_instant": "instant power", "power_usage": "1-s average power"}


def split(chunk: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(samples, device_samples)`` of a drained chunk (``_core.SAMPLE_DTYPE``): the run's own
    samples, and the per-device rows as ``DEVICE_SAMPLE_DTYPE`` (their device bits cleared
    from ``flags``).  A chunk without device rows comes back as it is, with no copy."""
    is_dev = (chunk["flags"] & np.uint32(_core.SFLAG_DEVICE)) != 0
    if not is_dev.any():
        return chunk, np.zeros(0, DEVICE_SAMPLE_DTYPE)
    d = chunk[is_dev]
    out = np.zeros(len(d), DEVICE_SAMPLE_DTYPE)
    for f in ("t_start_ns", "t_end_ns", "kind"):
        out[f] = d[f]
    out["flags"] = d["flags"] & ~_DEVICE_BITS
    out["device"] = (d["flags"] >> np.uint32(_core.SFLAG_DEVICE_SHIFT)) & np.uint32(0xFF)
    out["power_w"] = d["gpu_w"]
    return chunk[~is_dev], out


def as_samples(device_samples: np.ndarray, device: int) -> np.ndarray:
    """One device's rows as ``_core.SAMPLE_DTYPE`` samples (its power in ``gpu_w``, every other
    domain NaN), in time order: what the integrator reads."""
    d = device_samples[device_samples["device"] == int(device)]
    d = d[np.argsort(d["t_start_ns"], kind="stable")]
    out = np.zeros(len(d), _core.SAMPLE_DTYPE)
    for f in ("t_start_ns", "t_end_ns", "kind", "flags"):
        out[f] = d[f]
    for dom in _core.DOMAINS:
        out[f"{dom}_w"] = np.nan
    out["gpu_w"] = d["power_w"]
    return out


#: How finely each reading kind resolves a GPU's power, in words ({every}: its sample period).
_RESOLUTION = {"energy_counter": "energy counter differenced into {every} intervals",
               "power_instant": "instant power every {every}, trapezoid between readings",
               "power_usage": "1-s average power every {every}: changes faster than 1 s are smoothed out"}


def _resolution(mode: str, period_s: float) -> str:
    return _RESOLUTION.get(mode, "{every} samples").format(every=period_text(period_s))


def _period_s(series: np.ndarray) -> float:
    if len(series) == 0:
        return float("nan")
    if series["kind"][0] == _core.KIND_INTERVAL:
        d = (series["t_end_ns"] - series["t_start_ns"])[(series["flags"] & _core.SFLAG_FINAL) == 0]
    else:
        d = np.diff(series["t_start_ns"])
    d = d[d > 0]
    return float(np.median(d)) * 1e-9 if len(d) else float("nan")


def breakdown(samples: np.ndarray, device_samples: np.ndarray, source_meta: Optional[Dict[str, Any]],
              t_start_ns: int, t_end_ns: int, label: str) -> List[Dict[str, Any]]:
    """``summary()["devices"]``: one dict per GPU the source read, in the order it listed them.

    Each has ``device`` (the index), ``name``, ``mode`` and ``reading`` (how it was read:
    ``counter``, ``instant power`` or ``1-s average power``), ``energy_j`` over the run window
    (``[t_start_ns, t_end_ns)``, the same window and integrator as the run's own energy),
    ``mean_power_w``, ``peak_power_w`` (the highest sample overlapping the run), ``share`` of
    the gpu domain, ``n_samples``, ``sample_period_s``, ``resolution`` (in words) and ``label``
    (measured).  With one device its series is the gpu domain itself.  ``[]`` when the source
    names no devices (every source but nvml).
    """
    meta = source_meta if isinstance(source_meta, dict) else {}
    devices = [d for d in (meta.get("devices") or []) if isinstance(d, dict) and "index" in d]
    if not devices:
        return []
    dur_s = max(int(t_end_ns) - int(t_start_ns), 0) * 1e-9
    rows: List[Dict[str, Any]] = []
    for d in devices:
        idx = int(d["index"])
        series = sample_fields_only(samples) if len(devices) == 1 else as_samples(device_samples, idx)
        energy = float("nan")
        if len(series):
            energy = float(integrate_bridged(series, [(int(t_start_ns), int(t_end_ns))]).energy_j[0, _GPU])
        over = series[(series["t_end_ns"] >= t_start_ns) & (series["t_start_ns"] <= t_end_ns)] if len(series) else series
        power = over["gpu_w"] if len(over) else np.zeros(0)
        mode = str(d.get("mode") or "")
        period_s = _period_s(series)
        rows.append({
            "device": idx, "name": d.get("name"), "mode": mode, "reading": READINGS.get(mode, mode or "unknown"),
            "energy_j": energy, "mean_power_w": energy / dur_s if dur_s > 0 else float("nan"),
            "peak_power_w": float(np.nanmax(power)) if len(power) and np.any(~np.isnan(power)) else float("nan"),
            "power_limit_w": d.get("power_limit_w"), "n_samples": int(len(over)), "sample_period_s": period_s,
            "resolution": _resolution(mode, period_s), "label": label,
        })
    total = float(np.nansum([r["energy_j"] for r in rows]))
    for r in rows:
        r["share"] = r["energy_j"] / total if total > 0 else float("nan")
    return rows
