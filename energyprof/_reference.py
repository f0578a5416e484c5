"""Pure-Python / numpy twins of the C kernels: the oracles the tests hold the C core to.

Each twin has the same semantics and outputs as its C kernel and is written
independently of it (vectorised numpy, not a transcription of the C loops).  Every
part appends its own twin in its own clearly delimited section below; do not edit
another part's section.
"""
from __future__ import annotations

import numpy as np

_DOMAINS = ("cpu", "gpu", "ane", "dram", "package")

# ---------------------------------------------------------------------------
# integrate: twin of csrc/ep_integrate.c (_core.integrate).  Owner: integrate part.
# ---------------------------------------------------------------------------

#: Window flag bits, equal to _core.WIN_* / EP_WIN_* in csrc/ep_integrate.h.
WIN_OUTSIDE = 1 << 0
WIN_GAP = 1 << 1
WIN_NAN = 1 << 2
WIN_UNRESOLVED = 1 << 3

_KIND_INSTANT = 0
_KIND_INTERVAL = 1
_NS_PER_S = 1e9
_INT64_MAX = (1 << 63) - 1


def _touches(prefix: np.ndarray | None, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """True where prefix[hi] - prefix[lo] > 0 (prefix counts, indices clipped)."""
    if prefix is None:
        return np.zeros(len(lo), dtype=bool)
    lo = np.clip(lo, 0, len(prefix) - 1)
    hi = np.clip(hi, 0, len(prefix) - 1)
    return (hi > lo) & (prefix[hi] > prefix[lo])


def _prefix(bits: np.ndarray) -> np.ndarray | None:
    """[0, cumsum(bits)...] or None when no bit is set (as the C kernel skips it)."""
    if not bits.any():
        return None
    out = np.zeros(len(bits) + 1, dtype=np.int64)
    np.cumsum(bits, out=out[1:])
    return out


def integrate(samples: np.ndarray, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Energy of each window [start_ns, end_ns) per domain: the numpy twin of ``_core.integrate``.

    samples: 1-D array of ``_core.SAMPLE_DTYPE`` sorted by ``t_start_ns``, one kind.
    windows: int64 array of shape (M, 2).
    Returns ``(energy_j (M, 5) float64, flags (M,) uint32, samples_in_window (M,) int32)``
    with the semantics documented in docs/integration.md; raises ValueError where the
    C kernel returns EP_ERR_ARG / EP_ERR_UNSORTED.
    """
    windows = np.asarray(windows, dtype=np.int64).reshape(-1, 2)
    m = len(windows)
    a_ns = np.ascontiguousarray(windows[:, 0])
    b_ns = np.ascontiguousarray(windows[:, 1])
    bad = np.flatnonzero(b_ns < a_ns)
    if len(bad):
        raise ValueError(f"windows[{bad[0]}]: end_ns < start_ns")
    energy_j = np.full((m, len(_DOMAINS)), np.nan)
    flags = np.full(m, WIN_OUTSIDE, dtype=np.uint32)
    counts = np.zeros(m, dtype=np.int32)
    n = len(samples)
    if n == 0:
        return energy_j, flags, counts

    kind = samples["kind"]
    if kind[0] not in (_KIND_INSTANT, _KIND_INTERVAL):
        raise ValueError(f"samples[0].kind={kind[0]} is neither INSTANT nor INTERVAL")
    mixed = np.flatnonzero(kind != kind[0])
    if len(mixed):
        raise ValueError(f"samples[{mixed[0]}] has another kind than samples[0]: one kind per call")
    interval = kind[0] == _KIND_INTERVAL
    s_ns = np.ascontiguousarray(samples["t_start_ns"])
    e_ns = np.ascontiguousarray(samples["t_end_ns"])
    p_w = np.empty((n, len(_DOMAINS)))
    for j, d in enumerate(_DOMAINS):
        p_w[:, j] = samples[f"{d}_w"]
    isnan = np.isnan(p_w)
    measured = ~isnan.all(axis=0)

    if interval:
        if (e_ns < s_ns).any():
            raise ValueError("an interval sample has t_end_ns < t_start_ns")
        if (s_ns[1:] < e_ns[:-1]).any():
            raise ValueError("interval samples must be sorted and must not overlap")
        first, last = int(s_ns[0]), int(e_ns[-1])
    else:
        if (e_ns != s_ns).any():
            raise ValueError("an INSTANT sample has t_end_ns != t_start_ns")
        if (s_ns[1:] < s_ns[:-1]).any():
            raise ValueError("instant samples must be sorted")
        first, last = int(s_ns[0]), int(s_ns[-1])
    if last - first > _INT64_MAX:
        raise ValueError("samples span wider than int64 allows")

    inside = (a_ns >= first) & (b_ns <= last)
    a = a_ns[inside]
    b = b_ns[inside]

    if interval:
        p0_w = np.where(isnan, 0.0, p_w)
        # F at sample boundaries in W*ns: cum[i] = energy of samples before i
        cum = np.zeros((n + 1, len(_DOMAINS)))
        np.cumsum(p0_w * (e_ns - s_ns).astype(np.float64)[:, None], axis=0, out=cum[1:])

        def f_at(t: np.ndarray) -> np.ndarray:
            k = np.searchsorted(s_ns, t, side="right") - 1  # last sample starting <= t
            within = t < e_ns[k]
            part = cum[k] + p0_w[k] * (t - s_ns[k]).astype(np.float64)[:, None]
            return np.where(within[:, None], part, cum[k + 1])

        count = np.searchsorted(e_ns, b, "right") - np.searchsorted(s_ns, a, "left")
        sample_nan = (isnan & measured).any(axis=1)
        nan_hit = _touches(_prefix(sample_nan), np.searchsorted(e_ns, a, "right"), np.searchsorted(s_ns, b, "left"))
        gap_prefix = _prefix(s_ns[1:] > e_ns[:-1])  # gap j lies between samples j and j+1
        gap_hit = _touches(
            gap_prefix, np.searchsorted(s_ns, a, "right") - 1, np.searchsorted(e_ns, b, "left")
        )
    else:
        seg_nan = isnan[:-1] | isnan[1:]
        len_ns = np.diff(s_ns).astype(np.float64)
        cum = np.zeros((n, len(_DOMAINS)))
        trapezoid = np.where(seg_nan, 0.0, (0.5 * (p_w[:-1] + p_w[1:])) * len_ns[:, None])
        np.cumsum(trapezoid, axis=0, out=cum[1:])

        def f_at(t: np.ndarray) -> np.ndarray:
            k = np.searchsorted(s_ns, t, side="right") - 1  # last point <= t
            if n == 1:
                return np.zeros((len(t), len(_DOMAINS)))
            kk = np.minimum(k, n - 2)
            dt = (t - s_ns[kk]).astype(np.float64)[:, None]
            seg = (s_ns[kk + 1] - s_ns[kk]).astype(np.float64)[:, None]
            p0, p1 = p_w[kk], p_w[kk + 1]
            with np.errstate(invalid="ignore", divide="ignore"):
                part = cum[kk] + dt * (p0 + (0.5 * (p1 - p0)) * (dt / seg))
            part = np.where(seg_nan[kk], cum[kk], part)
            return np.where((k == n - 1)[:, None], cum[n - 1], part)

        count = np.searchsorted(s_ns, b, "right") - 1 - np.searchsorted(s_ns, a, "left")
        nan_hit = _touches(
            _prefix((seg_nan & measured).any(axis=1)),
            np.searchsorted(s_ns, a, "right") - 1,
            np.searchsorted(s_ns, b, "left"),
        )
        gap_hit = np.zeros(len(a), dtype=bool)

    e_in = (f_at(b) - f_at(a)) / _NS_PER_S
    e_in[:, ~measured] = np.nan
    count = np.maximum(count, 0)
    fl = (
        np.where(nan_hit, WIN_NAN, 0) | np.where(gap_hit, WIN_GAP, 0) | np.where(count == 0, WIN_UNRESOLVED, 0)
    ).astype(np.uint32)
    energy_j[inside] = e_in
    flags[inside] = fl
    counts[inside] = np.minimum(count, np.iinfo(np.int32).max).astype(np.int32)
    return energy_j, flags, counts


# ---------------------------------------------------------------------------
# end of integrate
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# hooks: twin of the span buffer in csrc/ep_hooks.c (_core.SpanBuffer).  Owner: hooks part.
# ---------------------------------------------------------------------------


class SpanBufferRef:
    """Pure-Python twin of ``_core.SpanBuffer``: a bounded FIFO of (t_ns, span_id, kind)
    events that drops (and counts) appends past ``capacity``; ``drain`` empties it."""

    def __init__(self, capacity: int = 1 << 22) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.events: list = []
        self.dropped = 0

    def append(self, t_ns: int, span_id: int, kind: int) -> bool:
        """True when stored, False when dropped because the buffer is full."""
        if len(self.events) >= self.capacity:
            self.dropped += 1
            return False
        self.events.append((t_ns, span_id, kind))
        return True

    def drain(self) -> np.ndarray:
        from ._dtypes import EVENT_DTYPE

        out = np.array(self.events, dtype=EVENT_DTYPE)
        self.events = []
        return out

    def clear(self) -> None:
        self.events = []
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.events)


# ---------------------------------------------------------------------------
# synthetic: twin of the power model in csrc/ep_src_synthetic.c.  Owner: sampler part.
# ---------------------------------------------------------------------------

def synthetic_average_power_w(t_start_ns, t_end_ns, t0_ns: int, *, power_w: float = 10.0,
                              square_w: float = 0.0, square_period_ns: int = 10**9,
                              ramp_w_per_s: float = 0.0, active_w: float = 0.0,
                              active_ns=None) -> np.ndarray:
    """Exact mean of the synthetic source's noiseless power over each [t_start_ns, t_end_ns).

    P(t) = power_w + ramp_w_per_s * (t - t0) / 1e9
           + square_w while (t - t0) mod square_period_ns < square_period_ns / 2
           + active_w while the activity level is > 0,
    with ``active_ns`` the active time inside each interval (A(end) - A(start)).
    The square-wave high time is counted in integer ns (doubled, so odd periods
    stay exact), the ramp mean is the value at the interval's midpoint.
    """
    a = np.asarray(t_start_ns, dtype=np.int64)
    b = np.asarray(t_end_ns, dtype=np.int64)
    dur_ns = (b - a).astype(np.float64)
    mid_s = ((a - t0_ns) + (b - t0_ns)).astype(np.float64) * 0.5e-9
    p = np.full(np.broadcast(a, b).shape, float(power_w))
    p = p + ramp_w_per_s * mid_s
    if square_w:
        period = np.int64(square_period_ns)

        def twice_high(t):
            u = np.maximum(t - t0_ns, 0)
            return (u // period) * period + np.minimum(2 * (u % period), period)

        p = p + square_w * (twice_high(b) - twice_high(a)).astype(np.float64) / (2.0 * dur_ns)
    if active_w:
        p = p + active_w * np.asarray(active_ns, dtype=np.float64) / dur_ns
    return p


def synthetic_energy_j(t_start_ns, t_end_ns, t0_ns: int, **params) -> np.ndarray:
    """Exact energy (J) of the noiseless synthetic power over each [t_start_ns, t_end_ns)."""
    dur_s = (np.asarray(t_end_ns, dtype=np.int64) - np.asarray(t_start_ns, dtype=np.int64)) * 1e-9
    return synthetic_average_power_w(t_start_ns, t_end_ns, t0_ns, **params) * dur_s


def synthetic_noise(seed: int, n: int) -> np.ndarray:
    """The first n standard-normal draws of the synthetic source's noise stream.

    splitmix64 seeded with ``seed``; each draw takes two words x, y:
    u1 = ((x >> 11) + 1) / 2**53, u2 = (y >> 11) / 2**53, z = sqrt(-2 ln u1) cos(2 pi u2).
    """
    import math

    mask = (1 << 64) - 1
    state = seed & mask

    def word() -> int:
        nonlocal state
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    out = np.empty(n)
    for i in range(n):
        u1 = ((word() >> 11) + 1) * 2.0**-53
        u2 = (word() >> 11) * 2.0**-53
        out[i] = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
    return out

# ---------------------------------------------------------------------------
# end of synthetic
# ---------------------------------------------------------------------------
