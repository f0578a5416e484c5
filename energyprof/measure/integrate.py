"""Exact energy of time windows from power samples (the C integrator, csrc/kernels/ep_integrate.c).

>>> import numpy as np
>>> from energyprof import _core
>>> from energyprof.measure.integrate import integrate
>>> s = np.zeros(2, _core.SAMPLE_DTYPE)
>>> s["kind"] = _core.KIND_INTERVAL
>>> s["t_start_ns"], s["t_end_ns"] = [0, 1_000_000_000], [1_000_000_000, 2_000_000_000]
>>> for d in _core.DOMAINS: s[f"{d}_w"] = np.nan
>>> s["cpu_w"] = [10.0, 30.0]
>>> r = integrate(s, [(0, 2_000_000_000), (500_000_000, 1_500_000_000)])
>>> r.energy_j[:, 0].tolist()
[40.0, 20.0]

See docs/integration.md for the semantics (gaps, NaN, windows outside the samples).

The C kernel counts a gap between samples (and a NaN value) as zero energy and flags the
window.  :func:`integrate_bridged` is what a run uses instead: a Python pre-pass
(:func:`bridge`) fills every *hole* (a gap between samples, a stretch of NaN values) with
power interpolated from the samples around it, so no hole ever becomes 0 J, and says
which windows touched one: ``WIN_BRIDGED`` for any hole, ``WIN_GAP`` for a hole longer
than ``MAX_BRIDGE_PERIODS`` sample periods (the run's token and call rows touching such a
hole are then unknown: NaN; see energyprof.measure.attribution).
"""
from __future__ import annotations

from typing import Iterable, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from .. import _core
from .._dtypes import DOMAINS, FLAG_BRIDGED

WIN_OUTSIDE: int = _core.WIN_OUTSIDE
WIN_GAP: int = _core.WIN_GAP
WIN_NAN: int = _core.WIN_NAN
WIN_UNRESOLVED: int = _core.WIN_UNRESOLVED
#: Set in Python only (bits 0-3 are the C kernel's): the window's energy includes power
#: interpolated over a hole (a gap between samples or a NaN value).  Equal to
#: ``energyprof._dtypes.FLAG_BRIDGED`` (1 << 8), the name the rows' ``flags`` column uses.
WIN_BRIDGED: int = FLAG_BRIDGED

#: A hole up to this many sample periods is bridged (interpolated, flagged WIN_BRIDGED);
#: a longer one is a long gap (also flagged WIN_GAP): too long to guess what happened in it
#: at the scale of a token or a layer call.
MAX_BRIDGE_PERIODS: float = 4.0
#: INSTANT samples: a segment longer than this many periods means readings are missing.
INSTANT_GAP_PERIODS: float = 2.0

WindowsLike = Union[np.ndarray, Sequence[Sequence[int]], Iterable[Sequence[int]]]


class Integrated(NamedTuple):
    """Per-window results of :func:`integrate` (a tuple: unpacks as three arrays)."""

    energy_j: np.ndarray           #: float64 (M, 5), J per domain in _core.DOMAINS order; NaN = unknown
    flags: np.ndarray              #: uint32 (M,), WIN_* bits
    samples_in_window: np.ndarray  #: int32 (M,), whole samples (INSTANT: segments) inside


def _as_windows(windows: WindowsLike) -> np.ndarray:
    arr = np.asarray(list(windows) if not isinstance(windows, np.ndarray) else windows)
    if arr.size == 0:
        return np.empty((0, 2), dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"windows must be integer nanoseconds, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"windows must be (start_ns, end_ns) pairs of shape (M, 2), got shape {arr.shape}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError("windows do not fit in int64 nanoseconds")
    return np.ascontiguousarray(arr, dtype=np.int64)


def integrate(samples: np.ndarray, windows: WindowsLike) -> Integrated:
    """Energy of each window ``[start_ns, end_ns)`` per domain, from power samples.

    Args:
        samples: 1-D numpy array of ``_core.SAMPLE_DTYPE`` (e.g. ``Sampler.samples``), sorted by
            ``t_start_ns``, all INSTANT or all INTERVAL.
        windows: ``(M, 2)`` integer array or a sequence of ``(start_ns, end_ns)`` pairs on the
            ``_core.now_ns()`` clock, in any order (sorted by start is fastest).

    Returns:
        :class:`Integrated` ``(energy_j, flags, samples_in_window)``.  A window not wholly
        inside the sampled range gets NaN and ``WIN_OUTSIDE``; a domain NaN in every sample
        is NaN everywhere.

    Raises:
        ValueError: wrong dtype or shape, mixed kinds, unsorted or overlapping samples,
            ``end_ns < start_ns``.
    """
    if not isinstance(samples, np.ndarray):
        raise ValueError(f"samples must be a numpy array of _core.SAMPLE_DTYPE, not {type(samples).__name__}")
    if samples.dtype != _core.SAMPLE_DTYPE:
        raise ValueError(f"samples must have dtype _core.SAMPLE_DTYPE, got {samples.dtype}")
    if samples.ndim != 1:
        raise ValueError(f"samples must be 1-D, got shape {samples.shape}")
    energy_j, flags, counts = _core.integrate(np.ascontiguousarray(samples), _as_windows(windows))
    return Integrated(energy_j, flags, counts)


class Holes(NamedTuple):
    """Holes in a sample stream, sorted and disjoint (a tuple of equal-length arrays)."""

    t_start_ns: np.ndarray  #: int64 (H,)
    t_end_ns: np.ndarray    #: int64 (H,)
    long: np.ndarray        #: bool (H,): longer than the bridge limit
    nan: np.ndarray         #: bool (H,): made (in part) of NaN values of a measured domain
    gap: np.ndarray         #: bool (H,): made (in part) of time no sample covers

    def duration_s(self, lo_ns: Optional[int] = None, hi_ns: Optional[int] = None) -> np.ndarray:
        """Each hole's length in seconds, clipped to ``[lo_ns, hi_ns)`` when given."""
        a, b = self.t_start_ns, self.t_end_ns
        if lo_ns is not None:
            a = np.maximum(a, lo_ns)
        if hi_ns is not None:
            b = np.minimum(b, hi_ns)
        return np.maximum(b - a, 0) * 1e-9


def _no_holes() -> Holes:
    z = np.zeros(0, np.int64)
    return Holes(z, z.copy(), np.zeros(0, bool), np.zeros(0, bool), np.zeros(0, bool))


class Bridged(NamedTuple):
    """What :func:`bridge` returns."""

    samples: np.ndarray   #: the samples with every hole filled (the input itself when it had none)
    holes: Holes
    period_s: float       #: median sample period (NaN for fewer than two instants)
    max_bridge_s: float   #: holes longer than this are long gaps
    inserted: np.ndarray  #: bool per row of ``samples``: a bridge sample added over a gap (INTERVAL)


def median(x: np.ndarray) -> float:
    """``np.median`` of a non-empty 1-D array of finite values, without its general machinery
    (about 40 µs a call on the short arrays of ep.run's exit): the middle value, or the mean
    of the middle two."""
    x = np.sort(x)
    n = len(x)
    return float(x[n // 2]) if n % 2 else float((x[n // 2 - 1] + x[n // 2]) / 2)


def _period_s(samples: np.ndarray) -> float:
    """Median sample period in seconds; a FINAL sample (cut short at stop) counts only when
    it is the only one.  NaN for fewer than two INSTANT samples."""
    if len(samples) == 0:
        return float("nan")
    if samples["kind"][0] == _core.KIND_INTERVAL:
        d = samples["t_end_ns"] - samples["t_start_ns"]
        full = (samples["flags"] & _core.SFLAG_FINAL) == 0
        keep = (d > 0) & full
        d = d[keep] if keep.any() else d[d > 0]
    else:
        d = np.diff(samples["t_start_ns"])
    return median(d) * 1e-9 if len(d) else float("nan")


def _merge(a: np.ndarray, b: np.ndarray, nan: np.ndarray, gap: np.ndarray, max_ns: float,
           touching: bool = True) -> Holes:
    """Sort and merge overlapping [a, b) pieces into holes, and touching ones when
    ``touching`` (INTERVAL: nothing valid lies between them; INSTANT pieces that only
    touch meet at a valid reading and stay apart)."""
    if len(a) == 0:
        return _no_holes()
    order = np.lexsort((b, a))
    a, b, nan, gap = a[order], b[order], nan[order], gap[order]
    # a new hole starts where a piece begins after every earlier piece has ended
    run_end = np.maximum.accumulate(b)
    start = np.ones(len(a), bool)
    start[1:] = (a[1:] > run_end[:-1]) if touching else (a[1:] >= run_end[:-1])
    gid = np.cumsum(start) - 1
    h = int(gid[-1]) + 1
    ha = a[start]
    hb = np.zeros(h, np.int64)
    np.maximum.at(hb, gid, b)
    hn = np.zeros(h, bool)
    np.logical_or.at(hn, gid, nan)
    hg = np.zeros(h, bool)
    np.logical_or.at(hg, gid, gap)
    return Holes(ha, hb, (hb - ha) > max_ns, hn, hg)


def _consistent(samples: np.ndarray) -> bool:
    """One known kind, sorted (and, INTERVAL, not overlapping): else the C kernel raises."""
    kind = samples["kind"]
    if kind[0] not in (_core.KIND_INSTANT, _core.KIND_INTERVAL) or (kind != kind[0]).any():
        return False
    s, e = samples["t_start_ns"], samples["t_end_ns"]
    if kind[0] == _core.KIND_INTERVAL:
        return bool((e >= s).all() and (s[1:] >= e[:-1]).all())
    return bool((e == s).all() and (s[1:] >= s[:-1]).all())


def bridge(samples: np.ndarray, max_bridge_periods: float = MAX_BRIDGE_PERIODS) -> Bridged:
    """Fill the holes of a sample stream with interpolated power; say where they were.

    A *hole* is time without a valid reading: for INTERVAL samples a gap between one
    sample's end and the next one's start, or a sample whose value is NaN in a domain the
    source measures; for INSTANT samples a segment longer than ``INSTANT_GAP_PERIODS``
    periods, or the two segments around a NaN point.  Touching pieces merge into one hole.

    Filling: a gap gets an inserted INTERVAL sample; every NaN value of a measured domain
    (the inserted ones included) becomes the linear interpolation in time of that domain's
    valid readings around it (INTERVAL: between sample midpoints; INSTANT: between points;
    the first/last valid reading is held at the ends).  Unmeasured domains stay NaN.

    A hole longer than ``max_bridge_periods`` median sample periods is *long*.  The input
    is not changed; a stream the C kernel would refuse (mixed kinds, unsorted) comes back
    as it is, for the kernel to raise on.

    >>> s = np.zeros(2, _core.SAMPLE_DTYPE)
    >>> s["kind"] = _core.KIND_INTERVAL
    >>> s["t_start_ns"], s["t_end_ns"] = [0, 3_000_000_000], [1_000_000_000, 4_000_000_000]
    >>> for d in _core.DOMAINS: s[f"{d}_w"] = np.nan
    >>> s["cpu_w"] = [10.0, 40.0]
    >>> b = bridge(s)
    >>> b.samples["t_start_ns"].tolist(), b.samples["cpu_w"].tolist()
    ([0, 1000000000, 3000000000], [10.0, 25.0, 40.0])
    >>> b.holes.t_start_ns.tolist(), b.holes.t_end_ns.tolist(), b.holes.long.tolist()
    ([1000000000], [3000000000], [False])
    """
    if not (max_bridge_periods >= 0):
        raise ValueError(f"max_bridge_periods must be >= 0, got {max_bridge_periods!r}")
    n = len(samples)
    if n == 0 or not _consistent(samples):
        return Bridged(samples, _no_holes(), float("nan"), float("nan"), np.zeros(n, bool))
    period_s = _period_s(samples)
    max_ns = max_bridge_periods * period_s * 1e9 if period_s == period_s else float("inf")
    cols = [f"{d}_w" for d in DOMAINS]
    measured = [c for c in cols if not np.isnan(samples[c]).all()]
    interval = samples["kind"][0] == _core.KIND_INTERVAL
    s_ns, e_ns = samples["t_start_ns"], samples["t_end_ns"]
    row_nan = np.zeros(n, bool)
    for c in measured:
        row_nan |= np.isnan(samples[c])
    if interval:
        gap_after = np.flatnonzero(s_ns[1:] > e_ns[:-1])
        if len(gap_after) == 0 and not row_nan.any():
            return Bridged(samples, _no_holes(), period_s, max_ns * 1e-9, np.zeros(n, bool))
        out = np.zeros(n + len(gap_after), samples.dtype)
        pos = np.arange(n) + np.searchsorted(gap_after, np.arange(n), side="left")
        out[pos] = samples
        ins = gap_after + np.arange(len(gap_after)) + 1
        out["kind"][ins] = _core.KIND_INTERVAL
        out["t_start_ns"][ins] = e_ns[gap_after]
        out["t_end_ns"][ins] = s_ns[gap_after + 1]
        for c in cols:
            out[c][ins] = np.nan
        inserted = np.zeros(len(out), bool)
        inserted[ins] = True
        t0 = int(out["t_start_ns"][0])
        x = (out["t_start_ns"] - t0).astype(np.float64) + 0.5 * (out["t_end_ns"] - out["t_start_ns"]).astype(np.float64)
        bad_row = inserted.copy()
        bad_row[pos] = row_nan
        pieces_a, pieces_b = out["t_start_ns"][bad_row], out["t_end_ns"][bad_row]
        holes = _merge(pieces_a, pieces_b, (bad_row & ~inserted)[bad_row], inserted[bad_row], max_ns)
    else:
        seg = np.diff(s_ns)
        wide = np.flatnonzero(seg > INSTANT_GAP_PERIODS * period_s * 1e9) if period_s == period_s else \
            np.zeros(0, np.int64)
        if len(wide) == 0 and not row_nan.any():
            return Bridged(samples, _no_holes(), period_s, max_ns * 1e-9, np.zeros(n, bool))
        out = samples.copy()
        inserted = np.zeros(n, bool)
        t0 = int(s_ns[0])
        x = (s_ns - t0).astype(np.float64)
        nan_i = np.flatnonzero(row_nan)
        na = s_ns[np.maximum(nan_i - 1, 0)]
        nb = s_ns[np.minimum(nan_i + 1, n - 1)]
        pieces_a = np.concatenate([s_ns[wide], na])
        pieces_b = np.concatenate([s_ns[wide + 1], nb])
        is_nan = np.concatenate([np.zeros(len(wide), bool), np.ones(len(nan_i), bool)])
        holes = _merge(pieces_a, pieces_b, is_nan, ~is_nan, max_ns, touching=False)
    for c in measured:
        v = out[c]
        bad = np.isnan(v)
        if bad.any():
            v[bad] = np.interp(x[bad], x[~bad], v[~bad])
    return Bridged(out, holes, period_s, max_ns * 1e-9, inserted)


def _touching(a: np.ndarray, b: np.ndarray, ha: np.ndarray, hb: np.ndarray) -> np.ndarray:
    """Per window [a, b): does a hole [ha, hb) (sorted, disjoint) touch it (ha < b and hb > a)?"""
    if len(ha) == 0:
        return np.zeros(len(a), bool)
    k = np.searchsorted(hb, a, side="right")  # first hole ending after a
    kk = np.minimum(k, len(ha) - 1)
    return (k < len(ha)) & (ha[kk] < b)


def hole_flags(holes: Holes, windows: WindowsLike) -> Tuple[np.ndarray, np.ndarray]:
    """Per window: the hole flag bits (WIN_BRIDGED for any hole it touches, WIN_GAP for a
    long one, WIN_NAN for one made of NaN values) and whether it touches a long hole."""
    w = _as_windows(windows)
    a, b = w[:, 0], w[:, 1]
    flags = np.zeros(len(w), np.uint32)
    long_touch = np.zeros(len(w), bool)
    if len(holes.t_start_ns) == 0:
        return flags, long_touch
    flags[_touching(a, b, holes.t_start_ns, holes.t_end_ns)] |= WIN_BRIDGED
    lg = holes.long
    long_touch = _touching(a, b, holes.t_start_ns[lg], holes.t_end_ns[lg])
    flags[long_touch] |= WIN_GAP
    nn = holes.nan
    flags[_touching(a, b, holes.t_start_ns[nn], holes.t_end_ns[nn])] |= WIN_NAN
    return flags, long_touch


class BridgedIntegrated(NamedTuple):
    """What :func:`integrate_bridged` returns: :class:`Integrated`'s three arrays, plus the
    pre-pass and which windows touch a long hole."""

    energy_j: np.ndarray
    flags: np.ndarray
    samples_in_window: np.ndarray
    long_gap: np.ndarray   #: bool (M,): the window touches a hole longer than the bridge limit
    bridged: Bridged


def integrate_bridged(samples: np.ndarray, windows: WindowsLike,
                      max_bridge_periods: float = MAX_BRIDGE_PERIODS) -> BridgedIntegrated:
    """:func:`integrate` over the samples with their holes bridged (:func:`bridge`).

    ``samples_in_window`` counts only the recorded samples (a bridge sample is not a
    measurement), and a window with none is ``WIN_UNRESOLVED``; the C kernel's own
    ``WIN_GAP``/``WIN_NAN`` are replaced by the pre-pass's flags (``hole_flags``).
    Without holes this is exactly :func:`integrate`.
    """
    w = _as_windows(windows)
    pi = PieceIntegrator(samples, max_bridge_periods)
    energy_j, flags, counts = integrate(pi.bridged.samples, w)
    if len(pi.bridged.holes.t_start_ns) == 0:
        return BridgedIntegrated(energy_j, flags, counts, np.zeros(len(w), bool), pi.bridged)
    return pi._hole_fix(w, energy_j, flags, counts)


class PieceIntegrator:
    """:func:`integrate_bridged` for many batches of windows over one run's samples, with the
    bridge pre-pass done once: each batch is integrated against only the samples around it,
    so a long run's calls can be attributed in pieces (energyprof.measure.attribution) at a
    cost that follows the piece, not the run.

    A batch's result equals :func:`integrate_bridged` of the same windows over all the
    samples (up to float rounding: the cumulative sums start at the slice), because a
    window's energy, flags and count depend only on the samples it overlaps and the one on
    each side of it (INSTANT readings), which the slice keeps.

    >>> import numpy as np
    >>> from energyprof import _core
    >>> s = np.zeros(3, _core.SAMPLE_DTYPE)
    >>> s["kind"] = _core.KIND_INTERVAL
    >>> s["t_start_ns"], s["t_end_ns"] = [0, 10, 20], [10, 20, 30]
    >>> for d in _core.DOMAINS: s[f"{d}_w"] = np.nan
    >>> s["cpu_w"] = [1e9, 2e9, 3e9]
    >>> float(PieceIntegrator(s).integrate(np.array([[15, 25]])).energy_j[0, 0])
    25.0
    """

    #: samples kept on each side of a batch's time range
    MARGIN: int = 2
    #: the kernel each batch goes through (scripts/mutation_check.py puts a broken one here)
    kernel = staticmethod(integrate)

    def __init__(self, samples: np.ndarray, max_bridge_periods: float = MAX_BRIDGE_PERIODS,
                 bridged: Optional[Bridged] = None) -> None:
        self.bridged = bridged if bridged is not None else bridge(samples, max_bridge_periods)
        bs = self.bridged.samples
        self._starts = np.ascontiguousarray(bs["t_start_ns"])
        ins = self.bridged.inserted
        self._ia = bs["t_start_ns"][ins] if ins.any() else None
        self._ib = bs["t_end_ns"][ins] if ins.any() else None

    def integrate(self, windows: WindowsLike) -> BridgedIntegrated:
        """One batch of windows, as :func:`integrate_bridged` would answer it."""
        w = _as_windows(windows)
        bs = self.bridged.samples
        if len(w) and len(bs):
            lo = int(np.searchsorted(self._starts, w[:, 0].min(), side="right")) - 1 - self.MARGIN
            hi = int(np.searchsorted(self._starts, w[:, 1].max(), side="left")) + self.MARGIN
            part = bs[max(lo, 0):min(hi, len(bs))]
        else:
            part = bs
        energy_j, flags, counts = self.kernel(part, w)
        holes = self.bridged.holes
        if len(holes.t_start_ns) == 0:
            return BridgedIntegrated(energy_j, flags, counts, np.zeros(len(w), bool), self.bridged)
        return self._hole_fix(w, energy_j, flags, counts)

    def _hole_fix(self, w: np.ndarray, energy_j: np.ndarray, flags: np.ndarray,
                  counts: np.ndarray) -> BridgedIntegrated:
        """A bridge sample is not a measurement: it is not counted, and the hole flags of the
        pre-pass replace the kernel's WIN_GAP / WIN_NAN."""
        if self._ia is not None:
            n_ins = np.searchsorted(self._ib, w[:, 1], side="right") - np.searchsorted(self._ia, w[:, 0], side="left")
            inside = (flags & WIN_OUTSIDE) == 0
            counts = np.where(inside, np.maximum(counts - np.maximum(n_ins, 0), 0), counts).astype(np.int32)
            flags = np.where(inside & (counts == 0), flags | WIN_UNRESOLVED, flags).astype(np.uint32)
        hf, long_touch = hole_flags(self.bridged.holes, w)
        inside = (flags & WIN_OUTSIDE) == 0
        flags = np.where(inside, (flags & ~np.uint32(WIN_GAP | WIN_NAN)) | hf, flags).astype(np.uint32)
        return BridgedIntegrated(energy_j, flags, counts, long_touch & inside, self.bridged)


__all__ = ["integrate", "Integrated", "integrate_bridged", "PieceIntegrator", "BridgedIntegrated", "bridge", "Bridged", "Holes",
           "hole_flags", "WIN_OUTSIDE", "WIN_GAP", "WIN_NAN", "WIN_UNRESOLVED", "WIN_BRIDGED",
           "MAX_BRIDGE_PERIODS", "INSTANT_GAP_PERIODS"]
