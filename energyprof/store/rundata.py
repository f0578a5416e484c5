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

from .._dtypes import (CALL_DTYPE, DEVICE_SAMPLE_DTYPE, DOMAINS, HEAD_DTYPE, RANK_DTYPE, SECTION_DTYPE, TEXT_DTYPE,
                       TOKEN_DTYPE)
from ..errors import MissingExtraError
from .groups import index_of, unique_index_inverse, unique_inverse
from .quality import grouped_block_stats, sample_blocks

#: Names accepted by :meth:`RunData.to_pandas` and the store's array tables.
ARRAY_NAMES = ("samples", "sections", "tokens", "layers", "components", "ops", "heads", "texts", "ranks",
               "rank_sections", "rank_tokens", "device_samples")

_DOMAIN_J = [(f"{d}_j", "<f8") for d in DOMAINS]

#: One row per layer (``layer_summary``) or per (layer, component) (``component_summary``).
AGG_DTYPE = np.dtype(
    [
        ("layer", "<i4"),
        ("component", "U32"),
        ("n_calls", "<i8"),
        ("n_eff", "<i8"),             # independent power samples the calls fall in (their midpoints)
        ("energy_j", "<f8"),          # total over calls
        ("mean_energy_j", "<f8"),     # per call
        ("sem_energy_j", "<f8"),      # standard error of the per-call mean over n_eff samples (NaN below 2)
        ("duration_s", "<f8"),        # total over calls
        *_DOMAIN_J,                   # totals per domain (NaN where never measured)
        ("share", "<f8"),             # energy_j / run energy_j
        ("share_of_parent", "<f8"),   # energy_j / the energy of the calls that contain these calls
        ("self_energy_j", "<f8"),     # own energy: energy_j minus the hooked children's (sum of unattributed_j)
        ("self_share", "<f8"),        # self_energy_j / energy_j
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
    if name == "texts":
        return TEXT_DTYPE
    if name == "ranks":
        return RANK_DTYPE
    if name == "device_samples":
        return DEVICE_SAMPLE_DTYPE
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


def _agg(calls: np.ndarray, keys: tuple, run_energy_j: float, all_calls: Optional[np.ndarray] = None,
         blocks: Optional[np.ndarray] = None) -> np.ndarray:
    """Group ``calls`` (CALL_DTYPE) by ``keys`` and aggregate; rows sorted by the keys.

    ``all_calls`` (every call of the run) gives the parents' energy for ``share_of_parent``
    (a call whose parent is not there, or -1, has the run as its parent); ``blocks`` (one
    id per call, :func:`energyprof.store.quality.sample_blocks`) makes the standard error
    count independent samples (each call is its own block without it).
    """
    if len(calls) == 0:
        return np.zeros(0, dtype=AGG_DTYPE)
    # the groups sorted by (layer, component), as np.unique on a (layer, component) record gives
    # them: each column grouped on its own (the names in place, no copy of the rows), then
    # the pairs of codes, whose order is that of the pairs of values
    layer_u, layer_i = unique_inverse(np.asarray(calls["layer"], dtype=np.int64))
    if "component" in keys:
        comp_u, comp_i = unique_inverse(calls["component"])
    else:
        comp_u, comp_i = np.array(["layer"]), np.zeros(len(calls), dtype=np.int64)
    pair_u, inverse = unique_inverse(layer_i * len(comp_u) + comp_i)
    g = len(pair_u)
    out = np.zeros(g, dtype=AGG_DTYPE)
    out["layer"] = layer_u[pair_u // len(comp_u)]
    out["component"] = comp_u[pair_u % len(comp_u)]
    e = np.asarray(calls["energy_j"], dtype=np.float64)
    n = np.bincount(inverse, minlength=g)
    tot = np.bincount(inverse, weights=e, minlength=g)
    mean = tot / n
    if blocks is None:
        blocks = np.arange(len(calls))
    sem, n_eff = grouped_block_stats(e, inverse, blocks, g)
    out["n_calls"] = n
    out["n_eff"] = n_eff
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
    run_ok = bool(run_energy_j and math.isfinite(run_energy_j) and run_energy_j != 0.0)
    out["share"] = tot / run_energy_j if run_ok else np.nan
    out["share_of_parent"] = tot / _parent_energy(calls, inverse, g, run_energy_j, all_calls)
    u = np.asarray(calls["unattributed_j"], dtype=np.float64)
    seen = np.bincount(inverse, weights=(~np.isnan(u)).astype(np.float64), minlength=g)
    self_j = np.where(seen == n, np.bincount(inverse, weights=np.nan_to_num(u, nan=0.0), minlength=g), np.nan)
    out["self_energy_j"] = self_j
    with np.errstate(invalid="ignore", divide="ignore"):
        out["self_share"] = self_j / tot
    out["resolved_share"] = np.bincount(inverse, weights=np.asarray(calls["resolved"], dtype=np.float64),
                                        minlength=g) / n
    return out


def _parent_energy(calls: np.ndarray, inverse: np.ndarray, g: int, run_energy_j: float,
                   all_calls: Optional[np.ndarray]) -> np.ndarray:
    """Per group: the energy of the distinct calls that contain its calls (the run, counted
    once, for calls without a parent), so sibling groups' shares of it add up to at most 1."""
    parent = np.asarray(calls["parent_id"], dtype=np.int64)
    parent_e = np.full(len(parent), np.nan)
    at = np.full(len(parent), -1, dtype=np.int64)
    if all_calls is not None and len(all_calls):
        at = index_of(all_calls["call_id"], parent)
        parent_e = np.where(at >= 0, np.asarray(all_calls["energy_j"], dtype=np.float64)[np.maximum(at, 0)], np.nan)
    parent = np.where(at >= 0, parent, -1)
    pairs, first, _ = unique_index_inverse(np.stack([inverse.astype(np.int64), parent], axis=1), axis=0)
    pe = np.where(pairs[:, 1] >= 0, parent_e[first], run_energy_j) if len(pairs) else np.zeros(0)
    with np.errstate(invalid="ignore"):
        return np.bincount(pairs[:, 0], weights=pe, minlength=g)


def _n_rows(arr: Optional[np.ndarray]) -> str:
    """Rows of an array for a repr; a Session's streamed calls are not read for it."""
    return "in the store" if arr is None else str(len(arr))


class RunData:
    """One run's record: a summary dict plus numpy structured arrays.

    Parameters
    ----------
    summary:
        The run summary dict (see the shared summary contract).  Copied.
    samples, sections, tokens, layers, components, ops, heads, texts:
        numpy structured arrays (``SAMPLE_DTYPE``, ``SECTION_DTYPE``, ``TOKEN_DTYPE``,
        ``CALL_DTYPE`` x 3, ``HEAD_DTYPE``, ``TEXT_DTYPE`` of any text width).  ``None``
        gives an empty array of the right dtype.
    ranks, rank_sections, rank_tokens:
        A multi-rank run (docs/distributed.md): one ``RANK_DTYPE`` row per rank, and each
        rank's own sections and tokens (``SECTION_DTYPE`` / ``TOKEN_DTYPE`` with their
        ``rank``); empty for a one-process run.
    device_samples:
        A source reading several GPUs (``nvml:devices=0,1``): each GPU's own series
        (``DEVICE_SAMPLE_DTYPE``), a breakdown of ``samples["gpu_w"]``; empty otherwise.
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
        texts: Optional[np.ndarray] = None,
        ranks: Optional[np.ndarray] = None,
        rank_sections: Optional[np.ndarray] = None,
        rank_tokens: Optional[np.ndarray] = None,
        sample_starts_ns: Optional[np.ndarray] = None,
        device_samples: Optional[np.ndarray] = None,
    ) -> None:
        self._summary: Dict[str, Any] = copy.deepcopy(dict(summary or {}))
        # the raw samples' start times when ``samples`` holds a downsampled view (the
        # dashboard's pages): rows are grouped into independent samples by these
        self._sample_starts = None if sample_starts_ns is None else np.asarray(sample_starts_ns, dtype=np.int64)
        self._samples = _as_array("samples", samples)
        self._sections = _as_array("sections", sections)
        self._tokens = _as_array("tokens", tokens)
        self._layers = _as_array("layers", layers)
        self._components = _as_array("components", components)
        self._ops = _as_array("ops", ops)
        self._heads = _as_array("heads", heads)
        self._texts = _as_array("texts", texts)
        self._ranks = _as_array("ranks", ranks)
        self._rank_sections = _as_array("rank_sections", rank_sections)
        self._rank_tokens = _as_array("rank_tokens", rank_tokens)
        self._device_samples = _as_array("device_samples", device_samples)

    # -- accessors -------------------------------------------------------------------
    @property
    def sample_starts_ns(self) -> np.ndarray:
        """Start times (ns) of the run's power samples as measured: what groups rows into
        independent samples for standard errors (the samples' own ``t_start_ns``, unless
        the run was built with a downsampled ``samples`` and the raw starts beside it)."""
        return self._sample_starts if self._sample_starts is not None else self._samples["t_start_ns"]

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
    def texts(self) -> np.ndarray:
        """Text recorded with the run (``TEXT_DTYPE``): prompt, output and per-token rows;
        empty when the run stored no text (``store_text=False``, or no text was given)."""
        return self._texts

    def _text_of(self, kind: str, seq: int) -> Optional[str]:
        t = self.texts
        if len(t) == 0:
            return None
        sel = t[(t["kind"] == kind) & (t["seq"] == int(seq))]
        return str(sel["text"][0]) if len(sel) else None

    def prompt(self, seq: int = 0) -> Optional[str]:
        """The prompt of sequence ``seq`` of the batch (None when no text was stored)."""
        return self._text_of("prompt", seq)

    def output(self, seq: int = 0) -> Optional[str]:
        """The generated text of sequence ``seq`` (None when no text was stored)."""
        return self._text_of("output", seq)

    def token_texts(self, seq: int = 0) -> Dict[int, str]:
        """``{step: text}`` of the generated tokens of sequence ``seq`` (step 0 = the token
        of the prefill forward, k = decode step k); empty when no text was stored."""
        t = self.texts
        if len(t) == 0:
            return {}
        sel = t[(t["kind"] == "token") & (t["seq"] == int(seq))]
        return {int(r["step"]): str(r["text"]) for r in sel}

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

    @property
    def device_samples(self) -> np.ndarray:
        """Each GPU's own series when the source read several in one process
        (``DEVICE_SAMPLE_DTYPE``: the times, kind and flags of the sample it is a share of, the
        GPU's index, its power); empty otherwise.  A breakdown of ``samples["gpu_w"]``: the
        run's energy never adds these (``summary()["devices"]`` has each GPU's energy)."""
        return self._device_samples

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

    def _all_calls(self) -> np.ndarray:
        """``call_id`` and ``energy_j`` of every call (layers, components, ops): what the
        shares of the parents read; 16 bytes a call, not a copy of the rows."""
        parts = [a for a in (self.layers, self.components, self.ops) if len(a)]
        out = np.zeros(sum(len(p) for p in parts), dtype=[("call_id", "<i8"), ("energy_j", "<f8")])
        i = 0
        for p in parts:
            out["call_id"][i:i + len(p)] = p["call_id"]
            out["energy_j"][i:i + len(p)] = p["energy_j"]
            i += len(p)
        return out

    def _blocks(self, calls: np.ndarray) -> np.ndarray:
        s = self._summary
        return sample_blocks(calls["t_start_ns"], calls["t_end_ns"], self.sample_starts_ns,
                             _float(s.get("sample_period_s")), int(s.get("t_origin_ns") or 0))

    def layer_summary(self) -> np.ndarray:
        """Aggregate of :attr:`layers` per layer (``AGG_DTYPE``, sorted by layer).

        Per layer: number of calls and of independent power samples they fall in
        (``n_eff``), total and mean energy per call, the standard error of that mean over
        those samples (calls sharing a sample share its reading: they count once), total
        duration, totals per domain, the share of the run's energy (and of the parent:
        the run, for layers), the own energy not in hooked children, and the share of
        calls that were resolved (window spans at least one whole sample).  Where calls
        are unresolved the mean is a time share of the samples' energy: its standard error
        says nothing about that bias.
        """
        return _agg(self.layers, ("layer",), self._run_energy_j(), self._all_calls(), self._blocks(self.layers))

    def component_summary(self) -> np.ndarray:
        """Aggregate of :attr:`components` per (layer, component) (``AGG_DTYPE``).

        Same figures as :meth:`layer_summary`; model-level modules have layer -1.
        Components nest (q_proj inside attn inside the layer), so use ``share_of_parent``
        and ``self_share``: siblings' shares of their parent add up to at most 1, while
        ``share`` (of the run) double-counts a container and its children.
        """
        return _agg(self.components, ("layer", "component"), self._run_energy_j(), self._all_calls(),
                    self._blocks(self.components))

    def __repr__(self) -> str:
        s = self._summary
        return (f"<RunData run_id={s.get('run_id')} status={s.get('status')} energy_j={s.get('energy_j')} "
                f"samples={len(self._samples)} tokens={len(self._tokens)} layers={_n_rows(self._layers)} "
                f"components={_n_rows(self._components)} texts={len(self._texts)}>")


__all__ = ["RunData", "ARRAY_NAMES", "AGG_DTYPE", "sample_row_dtype", "sample_fields_only", "with_rank"]
