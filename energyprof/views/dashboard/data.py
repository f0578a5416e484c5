"""What the dashboard's pages and its JSON API show, built from the store: run rows for
the list, a run with its samples downsampled, the samples API's JSON, the comparison of
N runs, and the state a live page follows (new samples, phase, tokens, energy so far).

Nothing here builds SQL: every read goes through :mod:`energyprof.store.db` with
parameters, and request values are checked here before they reach it.
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ... import _core
from ..._dtypes import DOMAINS, total_of
from ...analysis.efficiency import efficiency
from ...analysis.multi import MAX_RUNS, MIN_RUNS, compare_runs
from ...store import db as _db
from ...store import levels as _levels
from ...store.rundata import ARRAY_NAMES, RunData, sample_fields_only

__all__ = ["parse_run_id", "parse_ids", "run_row", "list_runs", "load_for_page", "samples_json", "compare_json",
           "LiveEnergy", "MAX_RUN_ID", "PAGE_MAX_SAMPLES", "SORTS"]

#: Run ids are SQLite rowids: positive 63-bit integers.
MAX_RUN_ID = (1 << 63) - 1
#: Pages draw at most this many sample points per run (the store's levels give them).
PAGE_MAX_SAMPLES = 20_000
#: The sorts the runs list offers (store sort keys), in menu order.
SORTS = ("started_at", "j_per_output_token", "j_per_token", "tokens_per_j", "energy_j", "duration_s", "name",
         "model", "status")

_ID_RE = re.compile(r"[0-9]{1,19}")


class BadRequest(ValueError):
    """A request value the dashboard refuses (answered with 400 and the message)."""


def parse_run_id(text: Any) -> int:
    """A run id from request text: digits only, 1 .. 2**63 - 1; BadRequest otherwise."""
    t = str(text).strip()
    if not _ID_RE.fullmatch(t):
        raise BadRequest(f"a run id is a positive integer, got {t[:40]!r}")
    v = int(t)
    if not 1 <= v <= MAX_RUN_ID:
        raise BadRequest(f"run id {t[:40]} is out of range")
    return v


def parse_ids(text: Optional[str]) -> List[int]:
    """``"1,2,3"`` -> [1, 2, 3]: 2 to 10 distinct run ids, comma-separated."""
    if not text:
        raise BadRequest(f"give {MIN_RUNS} to {MAX_RUNS} run ids: ids=1,2,3")
    parts = [p for p in str(text).split(",")]
    if len(parts) > MAX_RUNS:
        raise BadRequest(f"compare at most {MAX_RUNS} runs, got {len(parts)} ids")
    ids = [parse_run_id(p) for p in parts]
    if len(set(ids)) != len(ids):
        raise BadRequest("each run id may appear once")
    if len(ids) < MIN_RUNS:
        raise BadRequest(f"compare at least {MIN_RUNS} runs, got {len(ids)}")
    return ids


def _num(v: Any) -> Optional[float]:
    """A float for JSON: None for NaN, inf and missing values."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def run_row(s: Dict[str, Any]) -> Dict[str, Any]:
    """The row of one run in the list and in ``/api/runs``: the figures, the label
    (measured / estimated / simulated), and resolution / uncertainty when the run has them."""
    model = s.get("model") or {}
    return {
        "run_id": s.get("run_id"), "name": s.get("name"), "status": s.get("status"),
        "started_at": s.get("started_at"), "tags": list(s.get("tags") or []),
        "model": model.get("name"), "arch": model.get("arch"),
        "source": s.get("source"), "source_kind": s.get("source_kind"),
        "source_label": str(s.get("source_label") or "unknown"),
        "mode": s.get("mode"), "device": s.get("device"),
        "sample_period_s": _num(s.get("sample_period_s")),
        "duration_s": _num(s.get("duration_s")), "energy_j": _num(s.get("energy_j")),
        "net_energy_j": _num(s.get("net_energy_j")),
        "input_tokens": s.get("input_tokens"), "output_tokens": s.get("output_tokens"),
        "j_per_token": _num(s.get("j_per_token")), "j_per_output_token": _num(s.get("j_per_output_token")),
        "tokens_per_j": _num(s.get("tokens_per_j")),
        "resolution": s.get("resolution"), "uncertainty": s.get("uncertainty"),
    }


def list_filters(params: Dict[str, Any]) -> Dict[str, Any]:
    """The store filters of a list request (empty values dropped; each checked by the store)."""
    out: Dict[str, Any] = {}
    for key, name in (("model", "model"), ("label", "label"), ("tag", "tag"), ("status", "status"),
                      ("since", "since"), ("until", "until"), ("q", "search"), ("source", "source")):
        v = params.get(key)
        if v is not None and str(v).strip() != "":
            out[name] = str(v).strip()[:200]
    return out


def list_runs(st: _db.Store, params: Dict[str, Any]) -> Dict[str, Any]:
    """One page of the runs list: ``{"total", "limit", "offset", "sort", "order", "filters",
    "runs": [run_row]}`` (BadRequest for a bad filter, sort or page)."""
    filters = list_filters(params)
    sort = str(params.get("sort") or "started_at")
    if sort not in _db.SORT_KEYS:
        raise BadRequest(f"unknown sort {sort!r}; valid: {', '.join(SORTS)}")
    order = str(params.get("order") or ("desc" if sort in ("started_at", "tokens_per_j") else "asc"))
    if order not in ("asc", "desc"):
        raise BadRequest("order is asc or desc")
    try:
        limit = int(params.get("limit") or 50)
        offset = int(params.get("offset") or 0)
    except (TypeError, ValueError):
        raise BadRequest("limit and offset are integers") from None
    if not 1 <= limit <= 500 or not 0 <= offset <= 10_000_000:
        raise BadRequest("limit is 1 to 500 and offset 0 to 10000000")
    try:
        total = _db.count(st, **filters)
        rows = _db.runs(st, sort=sort, descending=order == "desc", limit=limit, offset=offset, **filters)
    except ValueError as e:
        raise BadRequest(str(e)) from None
    return {"total": total, "limit": limit, "offset": offset, "sort": sort, "order": order, "filters": filters,
            "runs": [run_row(r) for r in rows]}


def load_for_page(st: _db.Store, run_id: int, max_samples: int = PAGE_MAX_SAMPLES) -> RunData:
    """Run ``run_id`` with every array, its samples downsampled to at most ``max_samples``
    bucket means (energy-preserving; the raw samples themselves when there are fewer).
    ``summary()["_samples_shown"]`` says how: ``{"n_samples", "points", "source"}``."""
    ds = st.downsampled(run_id, max_samples)
    summary = st.summary(run_id)
    arrays = {n: st.read_array(run_id, n) for n in ARRAY_NAMES if n != "samples"}
    samples = _levels.as_samples(ds["rows"], np.dtype(_core.SAMPLE_DTYPE))
    summary["_samples_shown"] = {"n_samples": ds["n_samples"], "points": int(len(ds["rows"])), "source": ds["source"]}
    # standard errors count the samples as measured, not the buckets drawn
    starts = st.sample_starts(run_id) if ds["n_samples"] != len(ds["rows"]) else None
    return RunData(summary, samples=samples, sample_starts_ns=starts, **arrays)


def _series(rows: np.ndarray, name: str, key: str) -> List[Optional[float]]:
    return [_num(v) for v in rows[f"{name}_{key}"].tolist()]


def samples_json(st: _db.Store, run_id: int, max_points: Any) -> Dict[str, Any]:
    """``/api/runs/{id}/samples``: at most ``max_points`` buckets with, per measured domain
    and for the total, the mean (energy-preserving), min and max power of the samples in
    each bucket; times in seconds from the run's start."""
    try:
        mp = int(max_points)
    except (TypeError, ValueError):
        raise BadRequest(f"max_points is an integer, got {str(max_points)[:40]!r}") from None
    if not 2 <= mp <= _levels.MAX_POINTS:
        raise BadRequest(f"max_points is 2 to {_levels.MAX_POINTS}, got {mp}")
    s = st.summary(run_id)
    ds = st.downsampled(run_id, mp)
    rows = ds["rows"]
    t0 = s.get("t_origin_ns")
    if t0 is None:
        t0 = int(rows["t_start_ns"][0]) if len(rows) else 0
    out: Dict[str, Any] = {
        "run_id": run_id, "source_label": str(s.get("source_label") or "unknown"), "status": s.get("status"),
        "n_samples": ds["n_samples"], "points": int(len(rows)), "max_points": mp, "read_from": ds["source"],
        "samples_per_point": (ds["n_samples"] / len(rows)) if len(rows) else None,
        "t_origin_ns": int(t0), "t_start_s": ((rows["t_start_ns"] - t0) / 1e9).tolist(),
        "t_end_s": ((rows["t_end_ns"] - t0) / 1e9).tolist(), "n": rows["n"].tolist(), "series": {},
    }
    for name in _levels.SERIES:
        if len(rows) and np.all(np.isnan(rows[f"{name}_mean_w"])):
            continue  # a domain this source does not measure
        out["series"][name] = {"mean_w": _series(rows, name, "mean_w"), "min_w": _series(rows, name, "min_w"),
                               "max_w": _series(rows, name, "max_w")}
    return out


def efficiency_json(run: Any) -> Dict[str, Any]:
    """The efficiency figures of a run with their standard errors and 95 % intervals."""
    out = {}
    for k, f in efficiency(run).items():
        ci = f.get("ci95") or (float("nan"), float("nan"))
        out[k] = {"value": _num(f.get("value")), "unit": f.get("unit"), "se": _num(f.get("se")),
                  "ci95": [_num(ci[0]), _num(ci[1])], "n": f.get("n")}
    return out


def compare_json(st: _db.Store, ids: Sequence[int]) -> Dict[str, Any]:
    """``/api/compare``: :func:`energyprof.analysis.multi.compare_runs` of the runs (KeyError
    names a missing run), with NaN as null."""
    sums = [st.summary(i) for i in ids]
    return _db._jsonable(compare_runs(sums))


class LiveEnergy:
    """Energy of a running run so far, from its samples fed in time order, chunk by chunk.

    Energy counts from the run's start (``t_start_ns``, after the idle baseline): samples
    fed before that is known are held until it is.  Each chunk is integrated by the C
    integrator (``_core.integrate``) together with the last sample of the chunk before,
    so the chunks join without a gap: the sum equals one integration over every sample.
    """

    _MAX_PENDING = 2_000_000

    def __init__(self) -> None:
        self.t_start_ns: Optional[int] = None
        self.energy_j = np.zeros(len(DOMAINS))
        self.measured = [False] * len(DOMAINS)
        self.n_samples = 0
        self._prev: Optional[np.ndarray] = None
        self._pending: List[np.ndarray] = []
        self._n_pending = 0

    def feed(self, samples: np.ndarray, t_start_ns: Optional[int]) -> None:
        """Add the next samples (``_core.SAMPLE_DTYPE``, after every sample fed so far)."""
        self.n_samples += len(samples)
        for j, d in enumerate(DOMAINS):
            if len(samples) and not self.measured[j] and bool(np.any(~np.isnan(samples[f"{d}_w"]))):
                self.measured[j] = True
        if self.t_start_ns is None:
            if t_start_ns is None:
                if len(samples):
                    self._pending.append(samples)
                    self._n_pending += len(samples)
                    while self._n_pending > self._MAX_PENDING and len(self._pending) > 1:
                        self._n_pending -= len(self._pending.pop(0))
                return
            self.t_start_ns = int(t_start_ns)
            samples = np.concatenate(self._pending + [samples]) if self._pending else samples
            self._pending, self._n_pending = [], 0
        if len(samples) == 0:
            return
        chunk = samples if self._prev is None else np.concatenate([self._prev, samples])
        first = int(chunk["t_start_ns"][0]) if self._prev is None else int(self._prev["t_end_ns"][0])
        a = max(self.t_start_ns, first)
        b = int(chunk["t_end_ns"][-1])
        if b > a:
            # stored rows carry a rank column; the C integrator reads the ep_sample record only
            e, _flags, _n = _core.integrate(sample_fields_only(chunk), np.array([[a, b]], dtype=np.int64))
            self.energy_j += np.nan_to_num(e[0], nan=0.0)
        self._prev = chunk[-1:].copy()

    @property
    def total_j(self) -> float:
        """The total so far under the run's rule (package [+ dram], else the sum)."""
        if not any(self.measured):
            return float("nan")
        return float(total_of(self.energy_j, self.measured)[0])

    def domains_j(self) -> Dict[str, float]:
        """Energy so far per measured domain."""
        return {d: float(self.energy_j[j]) for j, d in enumerate(DOMAINS) if self.measured[j]}


def live_samples_event(samples: np.ndarray, t0_ns: int) -> Dict[str, Any]:
    """The ``samples`` event of the live stream: times in s from ``t0_ns``, power per
    measured domain and the total (the run's rule), with each sample's start in ns."""
    pw = np.column_stack([np.asarray(samples[f"{d}_w"], dtype=np.float64) for d in DOMAINS])
    measured = [bool(np.any(~np.isnan(pw[:, j]))) for j in range(len(DOMAINS))]
    total = total_of(pw, measured)
    return {
        "t_s": ((samples["t_end_ns"] - t0_ns) / 1e9).tolist(),
        "t_start_ns": samples["t_start_ns"].tolist(),
        "domains": {d: [_num(v) for v in pw[:, j].tolist()] for j, d in enumerate(DOMAINS) if measured[j]},
        "total_w": [_num(v) for v in total.tolist()],
    }
