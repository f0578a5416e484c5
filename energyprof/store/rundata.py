"""RunData: everything one run recorded, as a summary dict and numpy structured arrays.

A live session (energyprof.measure.session) and a run loaded from the store (``ep.load``) both
expose this interface, so the analysis, plot, report and CLI code take either:

>>> import numpy as np
>>> from energyprof.store.rundata import RunData
>>> r = RunData({"run_id": 7, "energy_j": 10.0})
>>> r.run_id, len(r.tokens)
(7, 0)
>>> r.summary()["energy_j"]
10.0

The arrays use the shared dtypes of :mod:`energyprof._dtypes` (``samples`` uses
``energyprof._core.SAMPLE_DTYPE``).  The summary dict follows the shared contract (run
id, status, source, method, energy figures, phases, domains, model, versions...).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Dict, Optional

import numpy as np

from .._dtypes import CALL_DTYPE, DOMAINS, HEAD_DTYPE, RANK_DTYPE, SECTION_DTYPE, TOKEN_DTYPE
from ..errors import MissingExtraError

#: Names accepted by :meth:`RunData.to_pandas` and the store's array tables.
ARRAY_NAMES = ("samples", "sections", "tokens", "layers", "components", "ops", "heads", "ranks", "rank_sections",
               "rank_tokens")

_DOMAIN_J = [(f"{d}_j", "<f8") for d in DOMAINS]

#: One row per layer (``layer_summary``) or per (layer, component) (``component_summary``).
AGG_DTYPE = np.dtype(
    [
        ("layer", "<i4"),
        ("component", "U32"),
        ("n_calls", "<i8"),
        ("energy_j", "<f8"),          # total over calls
        ("mean_energy_j", "<f8"),     # per call
        ("sem_energy_j", "<f8"),      # standard error of the per-call mean (NaN for one call)
        ("duration_s", "<f8"),        # total over calls
        *_DOMAIN_J,                   # totals per domain (NaN where never measured)
        ("share", "<f8"),             # energy_j / run energy_j
        ("resolved_share", "<f8"),    # share of calls whose window spans a whole sample
    ]
)


def _float(v: Any, default: float = float("nan")) -> float:
    """A summary value as a float; ``default`` (NaN) when it is missing or not a number."""
    try:
        return float(v) if v is not None else default
    except (TypeError, ValueError):
        return default


def sample_row_dtype() -> np.dtype:
    """A stored power sample: the fields of ``_core.SAMPLE_DTYPE`` plus ``rank`` (whose source
    took it; 0 in a one-process run).  ``_core.integrate`` takes :func:`sample_fields_only`."""
    from .. import _core

    dt = np.dtype(_core.SAMPLE_DTYPE)
    return np.dtype([(f, dt.fields[f][0]) for f in dt.names] + [("rank", "<i4")])


def sample_fields_only(samples: np.ndarray) -> np.ndarray:
    """``samples`` (any dtype with the ``_core.SAMPLE_DTYPE`` fields) as a contiguous
    ``_core.SAMPLE_DTYPE`` array, the record the C integrator reads."""
    from .. import _core

    dt = np.dtype(_core.SAMPLE_DTYPE)
    if samples.dtype == dt:
        return np.ascontiguousarray(samples)
    out = np.zeros(len(samples), dt)
    for f in dt.names:
        out[f] = samples[f]
    return out


def with_rank(arr: np.ndarray, dt: np.dtype, rank: int = 0) -> np.ndarray:
    """``arr`` in dtype ``dt``, with ``rank`` filled in where ``arr`` has no rank field."""
    if arr.dtype == dt:
        return arr
    out = np.zeros(len(arr), dt)
    names = set(arr.dtype.names or ())
    for f in dt.names:
        if f in names:
            out[f] = arr[f]
        elif f == "rank":
            out[f] = rank
        elif dt.fields[f][0].kind == "f":
            out[f] = np.nan
    return out


def _default_dtype(name: str) -> np.dtype:
    if name == "samples":
        return sample_row_dtype()
    if name in ("sections", "rank_sections"):
        return SECTION_DTYPE
    if name in ("tokens", "rank_tokens"):
        return TOKEN_DTYPE
    if name == "heads":
        return HEAD_DTYPE
    if name == "ranks":
        return RANK_DTYPE
    return CALL_DTYPE  # layers, components, ops


def _as_array(name: str, value: Optional[np.ndarray]) -> np.ndarray:
    dt = _default_dtype(name)
    if value is None:
        return np.zeros(0, dtype=dt)
    arr = np.asarray(value)
    if arr.dtype.names is None:
        raise TypeError(f"RunData.{name} must be a numpy structured array (dtype {dt}), got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"RunData.{name} must be one-dimensional, got shape {arr.shape}")
    if "rank" in dt.names and "rank" not in arr.dtype.names:
        arr = with_rank(arr, np.dtype([(f, arr.dtype.fields[f][0]) for f in arr.dtype.names] + [("rank", "<i4")]))
    return arr


def _agg(calls: np.ndarray, keys: tuple, run_energy_j: float) -> np.ndarray:
    """Group ``calls`` (CALL_DTYPE) by ``keys`` and aggregate; rows sorted by the keys."""
    if len(calls) == 0:
        return np.zeros(0, dtype=AGG_DTYPE)
    layer = np.asarray(calls["layer"], dtype=np.int64)
    comp = np.asarray(calls["component"]) if "component" in keys else np.full(len(calls), "", dtype="U32")
    # np.unique on a structured key gives the groups sorted by (layer, component).
    key = np.zeros(len(calls), dtype=[("layer", "<i8"), ("component", "U32")])
    key["layer"] = layer
    key["component"] = comp
    groups, inverse = np.unique(key, return_inverse=True)
    inverse = inverse.reshape(-1)
    g = len(groups)
    out = np.zeros(g, dtype=AGG_DTYPE)
    out["layer"] = groups["layer"]
    out["component"] = groups["component"] if "component" in keys else "layer"
    e = np.asarray(calls["energy_j"], dtype=np.float64)
    n = np.bincount(inverse, minlength=g)
    tot = np.bincount(inverse, weights=e, minlength=g)
    mean = tot / n
    dev2 = np.bincount(inverse, weights=(e - mean[inverse]) ** 2, minlength=g)
    with np.errstate(invalid="ignore", divide="ignore"):
        sem = np.where(n > 1, np.sqrt(dev2 / np.maximum(n - 1, 1)) / np.sqrt(n), np.nan)
    out["n_calls"] = n
    out["energy_j"] = tot
    out["mean_energy_j"] = mean
    out["sem_energy_j"] = sem
    out["duration_s"] = np.bincount(inverse, weights=np.asarray(calls["duration_s"], dtype=np.float64), minlength=g)
    for d in DOMAINS:
        col = f"{d}_j"
        v = np.asarray(calls[col], dtype=np.float64)
        seen = np.bincount(inverse, weights=(~np.isnan(v)).astype(np.float64), minlength=g)
        s = np.bincount(inverse, weights=np.nan_to_num(v, nan=0.0), minlength=g)
        out[col] = np.where(seen > 0, s, np.nan)
    if run_energy_j and math.isfinite(run_energy_j) and run_energy_j != 0.0:
        out["share"] = tot / run_energy_j
    else:
        out["share"] = np.nan
    out["resolved_share"] = np.bincount(inverse, weights=np.asarray(calls["resolved"], dtype=np.float64),
                                        minlength=g) / n
    return out


class RunData:
    """One run's record: a summary dict plus numpy structured arrays.

    Parameters
    ----------
    summary:
        The run summary dict (see the shared summary contract).  Copied.
    samples, sections, tokens, layers, components, ops, heads:
        numpy structured arrays (``SAMPLE_DTYPE``, ``SECTION_DTYPE``, ``TOKEN_DTYPE``,
        ``CALL_DTYPE`` x 3, ``HEAD_DTYPE``).  ``None`` gives an empty array of the right dtype.
    ranks, rank_sections, rank_tokens:
        A multi-rank run (docs/distributed.md): one ``RANK_DTYPE`` row per rank, and each
        rank's own sections and tokens (``SECTION_DTYPE`` / ``TOKEN_DTYPE`` with their
        ``rank``); empty for a one-process run.
    """

    def __init__(
        self,
        summary: Optional[Dict[str, Any]] = None,
        samples: Optional[np.ndarray] = None,
        sections: Optional[np.ndarray] = None,
        tokens: Optional[np.ndarray] = None,
        layers: Optional[np.ndarray] = None,
        components: Optional[np.ndarray] = None,
        ops: Optional[np.ndarray] = None,
        heads: Optional[np.ndarray] = None,
        ranks: Optional[np.ndarray] = None,
        rank_sections: Optional[np.ndarray] = None,
        rank_tokens: Optional[np.ndarray] = None,
    ) -> None:
        self._summary: Dict[str, Any] = copy.deepcopy(dict(summary or {}))
        self._samples = _as_array("samples", samples)
        self._sections = _as_array("sections", sections)
        self._tokens = _as_array("tokens", tokens)
        self._layers = _as_array("layers", layers)
        self._components = _as_array("components", components)
        self._ops = _as_array("ops", ops)
        self._heads = _as_array("heads", heads)
        self._ranks = _as_array("ranks", ranks)
        self._rank_sections = _as_array("rank_sections", rank_sections)
        self._rank_tokens = _as_array("rank_tokens", rank_tokens)

    # -- accessors -------------------------------------------------------------------
    def summary(self) -> Dict[str, Any]:
        """The run summary dict (a deep copy: changing it does not change the run)."""
        return copy.deepcopy(self._summary)

    @property
    def run_id(self) -> Optional[int]:
        """The run's id in the store (None while not saved)."""
        rid = self._summary.get("run_id")
        return None if rid is None else int(rid)

    @property
    def samples(self) -> np.ndarray:
        """Power samples (:func:`sample_row_dtype`: ``_core.SAMPLE_DTYPE`` + ``rank``), sorted by
        ``t_start_ns`` within each rank (a multi-rank run interleaves the ranks' streams: select one
        with ``samples[samples["rank"] == r]``)."""
        return self._samples

    @property
    def sections(self) -> np.ndarray:
        """Run, phase, baseline and user-section windows (``SECTION_DTYPE``)."""
        return self._sections

    @property
    def tokens(self) -> np.ndarray:
        """One row per decode step (``TOKEN_DTYPE``)."""
        return self._tokens

    @property
    def layers(self) -> np.ndarray:
        """Decoder-layer calls (``CALL_DTYPE`` rows with ``component == "layer"``)."""
        return self._layers

    @property
    def components(self) -> np.ndarray:
        """Component and model-level module calls (``CALL_DTYPE``)."""
        return self._components

    @property
    def ops(self) -> np.ndarray:
        """Operator-level calls (``CALL_DTYPE``; empty unless the run was recorded deep)."""
        return self._ops

    @property
    def heads(self) -> np.ndarray:
        """Per (attention call, head) statistics of the attention weights (``HEAD_DTYPE``;
        empty unless the run was recorded deep)."""
        return self._heads

    @property
    def ranks(self) -> np.ndarray:
        """A multi-rank run: one row per rank (``RANK_DTYPE``: host, local rank, clock offset and
        its uncertainty, energy); empty for a one-process run."""
        return self._ranks

    @property
    def rank_sections(self) -> np.ndarray:
        """A multi-rank run: every rank's own run, phase and section rows (``SECTION_DTYPE``,
        ``rank`` >= 0; each rank's phases tile its run).  :attr:`sections` holds the merged
        rows (``rank == -1``)."""
        return self._rank_sections

    @property
    def rank_tokens(self) -> np.ndarray:
        """A multi-rank run: every rank's own decode-step rows (``TOKEN_DTYPE``).  :attr:`tokens`
        counts each replica group's tokens once."""
        return self._rank_tokens

    def array(self, name: str) -> np.ndarray:
        """The array called ``name`` (one of :data:`ARRAY_NAMES`)."""
        if name not in ARRAY_NAMES:
            raise ValueError(f"unknown array {name!r}; valid names: {', '.join(ARRAY_NAMES)}")
        return getattr(self, name)

    def to_pandas(self, name: str = "tokens"):
        """One of the arrays as a pandas DataFrame (``name`` in :data:`ARRAY_NAMES`)."""
        if name not in ARRAY_NAMES:
            raise ValueError(f"unknown array {name!r}; valid names: {', '.join(ARRAY_NAMES)}")
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise MissingExtraError("pandas", "RunData.to_pandas") from exc
        arr = self.array(name)
        return pd.DataFrame({f: arr[f] for f in arr.dtype.names})

    # -- aggregates ------------------------------------------------------------------
    def _run_energy_j(self) -> float:
        return _float(self._summary.get("energy_j"))

    def layer_summary(self) -> np.ndarray:
        """Aggregate of :attr:`layers` per layer (``AGG_DTYPE``, sorted by layer).

        Per layer: number of calls, total and mean energy per call, the standard error
        of that mean, total duration, totals per domain, the share of the run's energy and
        the share of calls that were resolved (window spans at least one whole sample).
        """
        return _agg(self._layers, ("layer",), self._run_energy_j())

    def component_summary(self) -> np.ndarray:
        """Aggregate of :attr:`components` per (layer, component) (``AGG_DTYPE``).

        Same figures as :meth:`layer_summary`; model-level modules have layer -1.
        """
        return _agg(self._components, ("layer", "component"), self._run_energy_j())

    def __repr__(self) -> str:
        s = self._summary
        return (f"<RunData run_id={s.get('run_id')} status={s.get('status')} energy_j={s.get('energy_j')} "
                f"samples={len(self._samples)} tokens={len(self._tokens)} layers={len(self._layers)} "
                f"components={len(self._components)}>")


__all__ = ["RunData", "ARRAY_NAMES", "AGG_DTYPE", "sample_row_dtype", "sample_fields_only", "with_rank"]
