"""Pure-Python / numpy twins of the C kernels: the oracles the tests hold the C core to.

Each twin has the same semantics and outputs as its C kernel.  How independent of the C
code each one is differs, and a twin is only as good an oracle as that independence, so
here it is, twin by twin (docs/testing.md has the same table with the tests):

* ``integrate``: independent code (vectorised ``searchsorted`` + ``cumsum``; the C walks
  the samples once, merging the window endpoints into that walk in time order), the same
  definition (a window is F(end) - F(start)).  Also held to oracles that share nothing with
  either: exact fractions sample by sample and closed forms (tests/test_integrate.py,
  tests/energy_oracle.py for every row of a run).
* ``SpanBufferRef``: a bounded FIFO in a list; the behaviour is the specification.
* ``synthetic_average_power_w``: a *transcription* of the C expressions (the doubled
  integer high-time count of the square wave, the ramp at the interval's midpoint); not
  independent.  Hand-worked numbers check both (tests/c/test_sampler.c
  synthetic_square_ramp_exact and synthetic_active_share_exact;
  tests/test_sampler.py::test_square_and_ramp_hand_worked_fake_clock).
* ``synthetic_noise``: a transcription of splitmix64 + Box-Muller, by necessity (the
  stream is defined by that code); checked for its mean and spread in the C tests.
* ``split_frames``: the framer's rules written again in Python over a whole buffer (the C
  framer is incremental); same rules, so not independent of their design.  Checked
  also by a property (frames do not depend on how the stream is chunked) in the fuzz target.
* ``parse_plist``: an independent parser (``plistlib``/expat, not libplist); the field
  mapping and unit conversions follow the same documented rules, and tests/test_plist.py
  also checks the C parser against raw ``plistlib`` values converted by hand.
* ``store_insert``: independent (``sqlite3.executemany``; the C writer binds a virtual table).
* ``ioreport_classify`` / ``ioreport_delta``: the C rule table rewritten as regular
  expressions and set logic; same rules, different form.  ``counter_delta`` and
  ``estimate_power_w`` are one-line formulas, transcriptions; the rapl and estimate tests
  check the sources against values computed by hand from what the fakes served.
* ``tensor_stats`` / ``token_variance`` / ``attention_stats`` (the deep-mode statistics
  kernels, csrc/kernels/ep_stats.c): numpy reductions over whole arrays (``scipy``-free
  ``-p log p`` with ``np.where``), written from the definitions, not from the C loops;
  tests/test_deep_stats.py also holds both to the torch computation deep mode used before.

* ``pair_spans`` / ``pair_events`` / ``call_parents`` (csrc/kernels/ep_calls.c): a
  Python stack per span id, one event at a time (the C threads its stacks through one
  index array); ``pair_events`` is the loop attribution used before, with its final sort.
  ``call_parents``: the numpy search over (span, begin rank) keys attribution used before
  (the C keeps the last call per span in one pass).  ``fill_rows``: a byte copy per column
  through a uint8 view of the rows.
  tests/test_pair_events.py holds the C kernel, and attribution's pairing, to them.
* ``group_rows`` (csrc/kernels/ep_groups.c): ``np.unique`` over a byte view of the rows
  (a sort, where the C hashes), its answers renumbered in first-seen order; independent of
  the hash table.  tests/test_groups.py holds both, and energyprof.store.groups, to
  ``np.unique`` on the values themselves and to a dict built row by row.

Every part appends its own twin in its own clearly delimited section below; do not edit
another part's section.
"""
from __future__ import annotations

import numpy as np

_DOMAINS = ("cpu", "gpu", "ane", "dram", "package")

# ---------------------------------------------------------------------------
# integrate: twin of csrc/kernels/ep_integrate.c (_core.integrate).  Owner: integrate part.
# ---------------------------------------------------------------------------

#: Window flag bits, equal to _core.WIN_* / EP_WIN_* in csrc/kernels/ep_integrate.h.
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
# hooks: twin of the span buffer in csrc/threads/ep_hooks.c (_core.SpanBuffer).  Owner: hooks part.
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
# synthetic: twin of the power model in csrc/sources/ep_src_synthetic.c.  Owner: sampler part.
# ---------------------------------------------------------------------------

def synthetic_average_power_w(t_start_ns, t_end_ns, t0_ns: int, *, power_w: float = 10.0,
                              square_w: float = 0.0, square_period_ns: int = 10**9,
                              ramp_w_per_s: float = 0.0, active_w: float = 0.0,
                              active_ns=None, attn_w: float = 0.0, attn_ns=None,
                              mlp_w: float = 0.0, mlp_ns=None) -> np.ndarray:
    """Exact mean of the synthetic source's noiseless power over each [t_start_ns, t_end_ns).

    P(t) = power_w + ramp_w_per_s * (t - t0) / 1e9
           + square_w while (t - t0) mod square_period_ns < square_period_ns / 2
           + active_w while the activity level is > 0,
           + attn_w / mlp_w while the innermost hooked call is attention / MLP,
    with ``active_ns`` the active time inside each interval (A(end) - A(start)) and
    ``attn_ns`` / ``mlp_ns`` the innermost-kind times likewise.
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
    if attn_w:
        p = p + attn_w * np.asarray(attn_ns, dtype=np.float64) / dur_ns
    if mlp_w:
        p = p + mlp_w * np.asarray(mlp_ns, dtype=np.float64) / dur_ns
    return p


def synthetic_energy_j(t_start_ns, t_end_ns, t0_ns: int, **params) -> np.ndarray:
    """Exact energy (J) of the noiseless synthetic power over each [t_start_ns, t_end_ns)."""
    dur_s = (np.asarray(t_end_ns, dtype=np.int64) - np.asarray(t_start_ns, dtype=np.int64)) * 1e-9
    return synthetic_average_power_w(t_start_ns, t_end_ns, t0_ns, **params) * dur_s


def synthetic_sample_bounds(poll_ns, t0_ns: int, gap_at_ns: int = 0, gap_ns: int = 0) -> np.ndarray:
    """The (t_start_ns, t_end_ns) rows the synthetic source emits when polled at ``poll_ns``.

    The stream starts at ``t0_ns``; a poll at t emits [previous end, t) when t is later.
    With ``gap_ns > 0`` nothing is sampled over the hole H = [t0 + gap_at_ns, t0 +
    gap_at_ns + gap_ns): a sample never overlaps H, the one before it is cut at H's start,
    and the stream resumes at H's end with the first poll after it.  Written as the
    set of covered time: the emitted rows are [prev, t) minus H, the part before H first.
    """
    a_h = t0_ns + gap_at_ns
    b_h = a_h + gap_ns
    rows = []
    prev = t0_ns
    for t in (int(x) for x in poll_ns):
        if gap_ns > 0 and a_h <= prev < b_h:
            if t <= b_h:
                continue        # no coverage yet: still in the hole
            prev = b_h
        if t <= prev:
            continue
        end = min(t, a_h) if (gap_ns > 0 and prev < a_h) else t
        rows.append((prev, end))
        prev = end
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


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


# ---------------------------------------------------------------------------
# plist: twin of csrc/kernels/ep_plist.c (_core.parse_plist, _core.split_frames).  Owner: plist part.
# Written on Python's plistlib (expat), independently of libplist.
# ---------------------------------------------------------------------------

import math  # noqa: E402  (this section's own import)

PLIST_MAX_FRAME_BYTES = 8 << 20
_PLIST_MAC_EPOCH_S = 978307200.0
_PLIST_MARKERS = (b"<?xml", b"<!DOCTYPE", b"<plist", b"bplist00")
_PLIST_SPACE = b"\0 \t\n\r\x0b\x0c"
_SFLAG_NAN_FIELD = 1 << 5


def _plist_doc_start(data: bytes, i: int) -> bool:
    return any(data.startswith(m, i) for m in _PLIST_MARKERS)


def _plist_first(*positions: int) -> int:
    found = [p for p in positions if p >= 0]
    return min(found) if found else -1


def split_frames(data: bytes, max_frame_bytes: int = 0) -> list[bytes]:
    """Twin of ``_core.split_frames`` on a whole stream: the documents in ``data``.

    Leading NUL/whitespace is dropped; an XML document ends after ``</plist>``, at a
    NUL, or where the next ``<?xml`` starts; a binary one where the next document
    starts (minus one separating NUL); other bytes up to a NUL or a document start
    are skipped, and so are frames larger than ``max_frame_bytes`` (0 = 8 MiB).
    """
    limit = max_frame_bytes or PLIST_MAX_FRAME_BYTES
    n, pos, frames = len(data), 0, []
    while True:
        while pos < n and data[pos] in _PLIST_SPACE:
            pos += 1
        if pos >= n:
            return frames
        if data[pos] != ord("<") and not _plist_doc_start(data, pos):
            j = pos
            while j < n and data[j] != 0 and not _plist_doc_start(data, j):
                j += 1
            pos = j
            continue
        if data.startswith(b"bplist00", pos):
            hit = _plist_first(data.find(b"bplist00", pos + 8), data.find(b"<?xml", pos + 8))
            if hit >= 0:
                end, nxt = hit, hit
                if end - pos > 8 and data[end - 1] == 0:
                    end -= 1
            else:
                end = nxt = n
            binary = True
        else:
            close = data.find(b"</plist>", pos + 1)
            nul = data.find(b"\0", pos + 1)
            xml = data.find(b"<?xml", pos + 1)
            hit = _plist_first(close, nul, xml)
            if hit < 0:
                end = nxt = n
            elif hit == close:
                end = nxt = close + 8
            elif hit == nul:
                end, nxt = nul, nul + 1
            else:
                end = nxt = xml
            binary = False
        if hit < 0 and n - pos > limit:
            # Too long and unterminated: skip to the next boundary.
            s = pos + 1
            cands = [data.find(b"<?xml", s), data.find(b"bplist00", s)]
            ends = []
            if not binary:
                c, z = data.find(b"</plist>", s), data.find(b"\0", s)
                ends = [c + 8 if c >= 0 else -1, z + 1 if z >= 0 else -1]
                cands += [c, z]
            first = _plist_first(*cands)
            if first < 0:
                return frames
            pos = next((e for c, e in zip(cands[2:], ends) if c == first), first)
            continue
        if end - pos <= limit:
            frames.append(data[pos:end])
        pos = nxt


def _plist_int64(v: int) -> int:
    return ((v + (1 << 63)) % (1 << 64)) - (1 << 63)


def _plist_nonfinite_text(s: str) -> bool:
    try:
        return not math.isfinite(float(s.strip()))
    except ValueError:
        return False


def _plist_number(v: object, count: list) -> float:
    if isinstance(v, bool) or v is None:
        return math.nan
    if isinstance(v, int):
        return float(_plist_int64(v))
    if isinstance(v, float):
        if not math.isfinite(v):
            count[0] += 1
        return v
    if isinstance(v, str) and _plist_nonfinite_text(v):
        count[0] += 1
        return float(v.strip())
    return math.nan


def _plist_str(v: object, cap: int) -> "str | None":
    if not isinstance(v, str):
        return None
    raw = v.encode("utf-8")[: cap - 1].split(b"\0")[0]
    return raw.decode("utf-8", "replace") or None


def _plist_power_w(energy_mj: float, power_mw: float, elapsed_ns: int) -> float:
    if math.isfinite(energy_mj) and elapsed_ns > 0:
        w = energy_mj * 1e6 / elapsed_ns
    elif math.isfinite(power_mw):
        w = power_mw / 1e3
    else:
        return math.nan
    return w if math.isfinite(w) else math.nan


def parse_plist(data: bytes) -> dict:
    """Twin of ``_core.parse_plist``: the same dict, read with :mod:`plistlib`.

    ``sample`` is a dict of the SAMPLE_DTYPE fields instead of a numpy row.
    Raises ValueError (as plistlib does) on a malformed document.
    """
    import datetime
    import plistlib

    try:
        root = plistlib.loads(data)
    except Exception as e:  # plistlib raises several types on bad input
        raise ValueError(f"not a well-formed plist document: {e}") from None
    if not isinstance(root, dict):
        raise ValueError("plist root is not a dict")
    count = [0]
    d = lambda obj, key: obj.get(key) if isinstance(obj, dict) else None  # noqa: E731
    typed = lambda obj, key, t: (lambda v: v if isinstance(v, t) else None)(d(obj, key))  # noqa: E731

    elapsed = d(root, "elapsed_ns")
    elapsed_ns = _plist_int64(elapsed) if isinstance(elapsed, int) and not isinstance(elapsed, bool) else -1
    ts = d(root, "timestamp")
    timestamp_s = math.nan
    if isinstance(ts, datetime.datetime):
        timestamp_s = (ts.replace(tzinfo=None) - datetime.datetime(1970, 1, 1)).total_seconds()
    is_delta = d(root, "is_delta")
    out: dict = {
        "elapsed_ns": elapsed_ns if elapsed_ns >= 0 else None,
        "is_delta": is_delta if isinstance(is_delta, bool) else None,
        "elapsed_s": elapsed_ns / 1e9 if elapsed_ns >= 0 else math.nan,
        "timestamp_s": timestamp_s,
    }
    proc = typed(root, "processor", dict)
    energy_mj = {k: _plist_number(d(proc, f"{k}_energy"), count) for k in _DOMAINS}
    power_mw = {k: _plist_number(d(proc, f"{k}_power"), count) for k in _DOMAINS}
    for k in _DOMAINS:
        out[f"{k}_energy_j"] = energy_mj[k] / 1e3
    gpu = typed(root, "gpu", dict)
    combined_mw = _plist_number(d(proc, "combined_power"), count)
    clusters = []
    for c in typed(proc, "clusters", list) or []:
        if len(clusters) == 16:
            break
        if not isinstance(c, dict):
            continue
        idle = _plist_number(c.get("idle_ratio"), count)
        down = _plist_number(c.get("down_ratio"), count)
        clusters.append({
            "name": _plist_str(c.get("name"), 32),
            "freq_hz": _plist_number(c.get("freq_hz"), count),
            "idle_ratio": idle,
            "down_ratio": down,
            "active_ratio": 1.0 - idle - (0.0 if math.isnan(down) else down),
        })
    # gpu.freq_hz holds MHz despite its name.
    gpu_freq_hz = _plist_number(d(gpu, "freq_hz"), count) * 1e6
    gpu_idle = _plist_number(d(gpu, "idle_ratio"), count)
    gpu_sampler_mj = _plist_number(d(gpu, "gpu_energy"), count)
    out["gpu_sampler_energy_j"] = gpu_sampler_mj / 1e3
    for k in _DOMAINS:
        out[f"{k}_power_w"] = power_mw[k] / 1e3
    out.update({
        "combined_power_w": combined_mw / 1e3,
        "gpu_freq_hz": gpu_freq_hz,
        "gpu_idle_ratio": gpu_idle,
        "thermal_pressure": _plist_str(d(root, "thermal_pressure"), 24),
        "hw_model": _plist_str(d(root, "hw_model"), 64),
        "kern_osversion": _plist_str(d(root, "kern_osversion"), 32),
        "nan_fields": count[0],
        "sanitized": False,
        "clusters": clusters,
    })
    sample = {"t_start_ns": 0, "t_end_ns": max(elapsed_ns, 0), "kind": 1,
              "flags": _SFLAG_NAN_FIELD if count[0] else 0}
    for k in _DOMAINS:
        sample[f"{k}_w"] = _plist_power_w(energy_mj[k], power_mw[k], elapsed_ns)
    if math.isnan(sample["gpu_w"]):
        sample["gpu_w"] = _plist_power_w(gpu_sampler_mj, math.nan, elapsed_ns)
    out["sample"] = sample
    return out


# ---------------------------------------------------------------------------
# end of plist
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# store: twin of the INSERT jobs of csrc/threads/ep_sqlite.c (_core.Store.insert).  Owner: store part.
# Python's sqlite3.executemany in one transaction: the same rows, the same columns.
# ---------------------------------------------------------------------------

def store_insert(conn, table: str, array: np.ndarray, constants: "dict | None" = None) -> None:
    """Insert the rows of a structured array (one column per field, plus constant
    columns) into ``table`` in one transaction with sqlite3.executemany.

    Values map as the C writer maps them: ints/bools as INTEGER, floats as REAL
    (NaN as NULL), fixed-width unicode as TEXT without the padding.
    """
    constants = dict(constants or {})
    names = list(array.dtype.names) + list(constants)
    sql = (f'INSERT INTO "{table}" (' + ", ".join(f'"{n}"' for n in names) + ") VALUES ("
           + ", ".join("?" * len(names)) + ")")
    tail = tuple(constants.values())
    floats = [i for i, f in enumerate(array.dtype.names) if array.dtype.fields[f][0].kind == "f"]
    bools = [i for i, f in enumerate(array.dtype.names) if array.dtype.fields[f][0].kind == "b"]

    def rows():
        for rec in array.tolist():
            if floats or bools:
                rec = list(rec)
                for i in floats:
                    if rec[i] != rec[i]:
                        rec[i] = None
                for i in bools:
                    rec[i] = int(rec[i])
            yield tuple(rec) + tail

    conn.execute("BEGIN")
    try:
        conn.executemany(sql, rows())
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# ---------------------------------------------------------------------------
# end of store
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# hardware sources: twins of csrc/kernels/ep_ioreport.c (ep_ioreport_classify,
# ep_ioreport_delta), the rapl counter difference and the estimate model.
# Owner: sources-hw part.
# ---------------------------------------------------------------------------
import math as _math
import re as _re

IOREPORT_FAULTS = ("backwards", "channels", "unit", "unknown", "stuck_zero", "alternating")
IOREPORT_HISTORY = 4
_SFLAG_SUSPECT = 1 << 3
_IOR_UNIT_J = {"mJ": 1e-3, "uJ": 1e-6, "\u00b5J": 1e-6, "nJ": 1e-9}
# Ordered rules (first match wins), written as regular expressions over the name
# with any DIE_<n>_ prefix removed.
_IOR_RULES = [
    (r".*CPU Energy", "cpu"),
    (r"GPU Energy", "gpu"),
    (r".*(SRAM|DTL).*", "ignored"),
    (r"ANE[0-9_]*", "ane"),
    (r"ANE.*", "unknown"),
    (r"DRAM.*", "dram"),
    (r"GPU[0-9]+", "ignored"),
    (r".*CPM.*", "ignored"),
    (r"[EP].*CPU", "cpu_cluster"),
    (r"MCPU[0-9]+", "cpu_cluster"),
    (r"MCPU[0-9]+_[0-9]+", "ignored"),
    (r"MCPU.*", "unknown"),
    (r"[EP].*CPU[0-9]+", "ignored"),
    (r"PACC_[0-9]+", "ignored"),
    (r".*(CPU|GPU|ANE|DRAM).*", "unknown"),
]


def ioreport_classify(name: str) -> str:
    """Domain of an IOReport channel name ('cpu', 'gpu', 'ane', 'dram'), or
    'cpu_cluster', 'ignored', 'unknown': the twin of ``_core.ioreport_classify``."""
    base = _re.sub(r"^DIE_[0-9]+_", "", name)
    for pattern, cls in _IOR_RULES:
        if _re.fullmatch(pattern, base, flags=_re.S):
            return cls
    return "ignored"


class IOReportHistory:
    """Twin of ``_core.IOReportHistory``: the last IOREPORT_HISTORY energies per domain."""

    def __init__(self) -> None:
        self.energy_j = {d: [] for d in _DOMAINS}  # most recent first


def ioreport_delta(a, b, dt_ns: int, history: "IOReportHistory | None" = None) -> dict:
    """Twin of ``_core.ioreport_delta``: power per domain between two cumulative
    snapshots [(name, unit, value), ...] and the faults found (see ep_ioreport.h)."""
    if dt_ns <= 0:
        raise ValueError("dt_ns must be > 0")
    cpu_total = any(ioreport_classify(n) == "cpu" for n, _, _ in list(a) + list(b))

    def domain(name):
        cls = ioreport_classify(name)
        if cls == "cpu_cluster":
            return None if cpu_total else "cpu"
        return cls if cls in _DOMAINS else None

    first_a = {}
    for ch in a:
        first_a.setdefault(ch[0], ch)
    names_b = {ch[0] for ch in b}
    faults = set()
    energy = {d: 0.0 for d in _DOMAINS}
    have, bad = set(), set()
    for name, unit, value in b:
        if ioreport_classify(name) == "unknown":
            faults.add("unknown")
    for name, unit, value in b:
        d = domain(name)
        if d is None:
            continue
        prev = first_a.get(name)
        if prev is None:
            faults.add("channels")
            bad.add(d)
        elif unit not in _IOR_UNIT_J or prev[1] != unit:
            faults.add("unit")
            bad.add(d)
        elif value < prev[2]:
            faults.add("backwards")
            bad.add(d)
        else:
            energy[d] += float(value - prev[2]) * _IOR_UNIT_J[unit]
            have.add(d)
    for name, _, _ in a:
        d = domain(name)
        if d is not None and name not in names_b:
            faults.add("channels")
            bad.add(d)
    good = {d for d in have if d not in bad}
    if any(energy[d] > 0 for d in good):
        if any(d in good and energy[d] == 0 for d in ("cpu", "dram")):
            faults.add("stuck_zero")
    dt_s = dt_ns * 1e-9
    power = {d: (energy[d] / dt_s if d in good else _math.nan) for d in _DOMAINS}
    if history is not None:
        for d in _DOMAINS:
            history.energy_j[d].insert(0, energy[d] if d in good else _math.nan)
            del history.energy_j[d][IOREPORT_HISTORY:]
        for d in _DOMAINS:
            h = history.energy_j[d]
            if len(h) == IOREPORT_HISTORY and not any(_math.isnan(x) for x in h) and \
                    all((h[k] == 0) != (h[k + 1] == 0) for k in range(IOREPORT_HISTORY - 1)):
                faults.add("alternating")
    bits = sum(1 << IOREPORT_FAULTS.index(f) for f in faults)
    return {"power_w": power, "flags": _SFLAG_SUSPECT if faults else 0, "faults": bits,
            "fault_names": [f for f in IOREPORT_FAULTS if f in faults]}


def counter_delta(prev: int, now: int, range_: int) -> "tuple[int, bool]":
    """Twin of the rapl counter difference: (delta, wrapped) for a counter that
    wraps to 0 at range_ (values 0 .. range_-1)."""
    if now >= prev:
        return now - prev, False
    return now + range_ - prev, True


def estimate_power_w(cpu_ns: float, wall_ns: float, n_cpu: int, watts_per_core: float,
                     idle_w: float = 0.0, tdp_w: float = 0.0) -> float:
    """Twin of the estimate source's model: idle_w + min(cpu/wall, n_cpu) * watts_per_core,
    capped at tdp_w when tdp_w > 0."""
    util = min(max(cpu_ns / wall_ns, 0.0), float(n_cpu))
    power = idle_w + util * watts_per_core
    return min(power, tdp_w) if tdp_w > 0 else power


# --------------------------------------------------------------------------- deep-mode statistics (ep_stats.c)


def tensor_stats(x: np.ndarray, small_below: float) -> tuple:
    """Twin of ``_core.tensor_stats``: (mean, unbiased std, max |x|, share of |x| < small_below, mean |x|)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    n = x.size
    if n == 0:
        return (np.nan,) * 5
    std = float(np.std(x, ddof=1)) if n > 1 else 0.0
    a = np.abs(x)
    return float(np.mean(x)), std, float(np.max(a)), float(np.count_nonzero(a < small_below)) / n, float(np.mean(a))


def token_variance(x: np.ndarray) -> float:
    """Twin of ``_core.token_variance``: mean over rows of the population variance of the last axis."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return float("nan")
    return float(np.mean(np.var(x.reshape(-1, x.shape[-1] if x.ndim else 1), axis=-1)))


def attention_stats(p: np.ndarray, allowed: "np.ndarray | None", small_below: float) -> tuple:
    """Twin of ``_core.attention_stats``: ((4, H) per-head entropy, row max, sparsity, B*Q; tensor_stats(p))."""
    p = np.asarray(p, dtype=np.float64)
    b, h, q, k = p.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), np.where(p == 0, 0.0, np.where(p < 0, -np.inf, p)))
    ent_h = ent.sum(-1).mean(axis=(0, 2))
    max_h = p.max(-1).mean(axis=(0, 2))
    ok = np.ones_like(p, dtype=bool) if allowed is None else np.broadcast_to(np.asarray(allowed, bool), p.shape)
    small = (p < small_below) & ok
    sparse_h = small.sum(axis=(0, 2, 3)) / np.maximum(ok.sum(axis=(0, 2, 3)), 1)
    heads = np.stack([ent_h, max_h, sparse_h, np.full(h, float(b * q))])
    return heads, tensor_stats(p, small_below)



# ---------------------------------------------------------------------------
# calls: twins of csrc/kernels/ep_calls.c (_core.pair_spans, _core.fill_rows).  Owner: attribution part.
# ---------------------------------------------------------------------------


def pair_spans(events: np.ndarray) -> tuple:
    """Twin of ``_core.pair_spans``: (span_id, begin_ns, end_ns, end_pos, sorted) of the calls
    in the order of their begin events; a stack per span id, one event at a time."""
    t = events["t_ns"].tolist()
    sid = events["span_id"].tolist()
    kind = events["kind"].tolist()
    if any(x < 0 for x in sid):
        raise ValueError("span_id is negative")
    stacks: dict = {}
    closed: dict = {}   # begin index -> end index
    for i, (s, k) in enumerate(zip(sid, kind)):
        if k == 0:
            stacks.setdefault(s, []).append(i)
        elif stacks.get(s):
            closed[stacks[s].pop()] = i
    begins = sorted(closed)
    out_sid = np.asarray([sid[i] for i in begins], dtype=np.int32)
    out_b = np.asarray([t[i] for i in begins], dtype=np.int64)
    out_e = np.asarray([t[closed[i]] for i in begins], dtype=np.int64)
    out_pos = np.asarray([closed[i] for i in begins], dtype=np.int64)
    order = np.lexsort((out_pos, -out_e, out_b))
    return out_sid, out_b, out_e, out_pos, bool(np.array_equal(order, np.arange(len(order))))


def pair_events(events: np.ndarray) -> tuple:
    """Calls of ``events`` as (span_id, begin_ns, end_ns), sorted by begin, then the longer
    first, then in the recorded order of the ends: what attribution.pair_events returns."""
    spans, begins, ends = [], [], []
    open_stack: dict = {}
    for t, sid, kind in zip(events["t_ns"].tolist(), events["span_id"].tolist(), events["kind"].tolist()):
        if kind == 0:
            open_stack.setdefault(sid, []).append(t)
        else:
            st = open_stack.get(sid)
            if st:
                spans.append(sid)
                begins.append(st.pop())
                ends.append(t)
    order = np.lexsort((-np.asarray(ends, dtype=np.int64), np.asarray(begins, dtype=np.int64)))
    return (np.asarray(spans, dtype=np.int32)[order], np.asarray(begins, dtype=np.int64)[order],
            np.asarray(ends, dtype=np.int64)[order])


def call_parents(span_ids: np.ndarray, begins: np.ndarray, ends: np.ndarray, parent_span) -> np.ndarray:
    """Twin of ``_core.call_parents`` (the numpy version attribution used before): the call
    index of each call's enclosing call of its parent span (-1 when none); ``parent_span[s]``
    is span s's hooked ancestor span (-1 none).

    The parent span is the nearest ancestor span that was called.  Calls come sorted by
    begin; a call's parent is the last call of the parent span that begins at or before
    it, if that one also ends at or after it.  One search over keys (span, begin rank)
    for every call at once (no loop over spans or calls).
    """
    n = len(span_ids)
    parent = np.full(n, -1, dtype=np.int32)
    if n == 0:
        return parent
    present = np.bincount(span_ids, minlength=len(parent_span))[:len(parent_span)] > 0
    up = np.full(len(parent_span), -1, dtype=np.int64)
    for sid in range(len(parent_span)):
        psid = int(parent_span[sid])
        while psid >= 0 and not present[psid]:
            psid = int(parent_span[psid])   # ancestor never called: look further up
        up[sid] = psid
    sid64 = span_ids.astype(np.int64)
    if n < 2 or np.all(begins[1:] >= begins[:-1]):           # sorted (as attribute passes them): a running count
        rank = np.r_[0, np.cumsum(begins[1:] != begins[:-1])]
    else:
        rank = np.searchsorted(np.unique(begins), begins)      # equal begins, equal rank
    width = int(rank.max()) + 1
    key = sid64 * width + rank
    order = np.argsort(key, kind="stable")
    keys = key[order]
    ps = up[sid64]
    q = np.flatnonzero(ps >= 0)
    pos = np.searchsorted(keys, ps[q] * width + rank[q], side="right") - 1
    ok = pos >= 0
    cand = order[np.maximum(pos, 0)]
    ok &= (sid64[cand] == ps[q]) & (ends[cand] >= ends[q])
    parent[q[ok]] = cand[ok]
    return parent


def fill_rows(rows: np.ndarray, columns) -> None:
    """Twin of ``_core.fill_rows``: each (offset, values) column copied, byte for byte, to
    ``offset`` of every row (one value broadcast to all rows)."""
    raw = rows.view(np.uint8).reshape(len(rows), rows.dtype.itemsize)
    for offset, values in columns:
        v = np.ascontiguousarray(values)
        size = v.dtype.itemsize
        if offset < 0 or offset + size > rows.dtype.itemsize:
            raise ValueError("column does not fit the row")
        if v.size not in (1, len(rows)):
            raise ValueError("need one value or one per row")
        raw[:, offset:offset + size] = v.reshape(-1).view(np.uint8).reshape(-1, size)


def module_tree(root) -> tuple:
    """Twin of ``_core.module_tree``: one walk over a torch module tree, each module once,
    in ``named_modules()`` order (depth first through ``_modules``; a module reached through
    a second parent is not walked again).

    Returns ``(key, n_params, pinned)``: ``key`` a tuple holding, for every module reached,
    its class, then ``name, id(child)`` (``None`` for a ``None`` child) for each of its
    children in order; ``n_params`` the ``numel()`` of every distinct parameter (by
    identity); ``pinned`` every module reached but ``root``, in walk order.
    """
    key: list = []
    pinned: list = []
    seen: set = set()
    seen_params: set = set()
    n_params = 0
    stack = [root]
    while stack:
        m = stack.pop()
        if id(m) in seen:      # reached before through another parent
            continue
        seen.add(id(m))
        if m is not root:
            pinned.append(m)
        key.append(type(m))
        for name, child in m._modules.items():
            key += [name, None if child is None else id(child)]
        for p in m._parameters.values():
            if p is not None and id(p) not in seen_params:
                seen_params.add(id(p))
                n_params += p.numel()
        stack += [child for child in reversed(list(m._modules.values())) if child is not None]
    return tuple(key), n_params, tuple(pinned)


# ---------------------------------------------------------------------------
# groups: twin of csrc/kernels/ep_groups.c (_core.group_rows).  Owner: groups part.
# ---------------------------------------------------------------------------

def group_rows(a: np.ndarray) -> tuple:
    """``(inverse, first)`` of ``_core.group_rows``: rows with equal bytes (1-D: the elements,
    2-D: the rows) share a group; groups numbered in the order their first row occurs;
    ``first`` the first row of each group.  Sorts a byte view of the rows (np.unique)."""
    a = np.asarray(a)
    n = len(a)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows = np.ascontiguousarray(a).reshape(n, -1).view(np.uint8).reshape(n, -1)
    as_void = rows.view(np.dtype((np.void, rows.shape[1]))).reshape(n)
    _, first_sorted, inv = np.unique(as_void, return_index=True, return_inverse=True)
    order = np.argsort(first_sorted, kind="stable")        # sorted groups -> first-seen order
    renumber = np.empty(len(order), np.int64)
    renumber[order] = np.arange(len(order))
    return renumber[inv.reshape(-1)], first_sorted[order].astype(np.int64)
