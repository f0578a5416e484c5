"""Attribution: from samples, hook events and forward records to energy per run,
phase, token, layer and component.

Pure numpy on top of the C integrator (``_core.integrate``); no torch here, so it is
tested on constructed inputs.  Every window is integrated in one call, so all
figures of a run come from the same cumulative-energy function F and conservation
(children + unattributed = parent) holds to floating-point rounding.

Windows (monotonic ns, energyprof's one clock):

* run: ``[t_start_ns, t_end_ns)`` (after the baseline, to the exit of ``with``);
* phases: ``pre_inference`` up to the first forward, then one slot per top-level
  forward: a *prefill* forward's slot and a *decode* step's slot run from the
  forward's start to the next forward's start (the last one to the end of its
  forward); when the next forward starts a new generation, the slot ends at the end
  of its forward and the gap is the ``between`` phase; ``post_inference`` from the
  end of the last forward to the end of the run.  The phases tile the run exactly.
  An *encode* forward (an encoder-only model's forward, or a seq2seq model's encoder)
  is phase ``encode``; its slot runs on to the decoder's prefill that follows it.
* tokens: one row per decode slot (``n_tokens`` = batch size), so
  ``sum(tokens.energy_j) == decode energy``.
* calls: one row per hooked module call; its parent is the enclosing hooked call
  of its nearest hooked ancestor module, or the phase (``parent_id == -1``).

How well each row was measured travels with it: ``samples_in_window``, ``resolved`` and
``flags`` (the integrator's window flags and the gap pre-pass's, see
energyprof.measure.integrate).  Holes in the samples never become 0 J: a short one is
bridged by interpolated power (``FLAG_BRIDGED``); a long one makes the token and call
rows touching it NaN (``FLAG_GAP``) while sections keep the interpolated figure, flagged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from .. import _core
from .._dtypes import (CALL_DTYPE, DOMAINS, EVENT_DTYPE, SECTION_DTYPE, TOKEN_DTYPE, concat_records, flag_names,
                       measured_domains, total_of, total_rule)
from ..store.quality import period_text, resolution_summary
from .integrate import MAX_BRIDGE_PERIODS, PieceIntegrator, _period_s

_DOMAIN_COLS = [f"{d}_j" for d in DOMAINS]
_SAMPLE_COLS = [f"{d}_w" for d in DOMAINS]


@dataclass
class Forward:
    """One call of the top-level model's forward."""

    t_start_ns: int
    t_end_ns: int
    batch: int
    new_positions: int          # sequence length of this forward's input
    input_tokens: int           # real (unpadded) tokens in the input
    prefill: bool
    encode: bool = False        # an encoder's forward (BERT's, or a seq2seq model's encoder): phase `encode`


@dataclass
class SpanInfo:
    """What a hook span id stands for."""

    layer: int
    component: str
    parent_span: int = -1       # span id of the nearest hooked ancestor module, -1 none


@dataclass
class UserSection:
    name: str
    t_start_ns: int
    t_end_ns: int
    parent: int                 # index into the user section list, -1 = the run


@dataclass
class Attribution:
    sections: np.ndarray
    tokens: np.ndarray
    calls: np.ndarray           #: empty when a ``calls_sink`` took them
    summary: dict = field(default_factory=dict)
    n_calls: int = 0            #: calls built (held in ``calls``, or handed to the sink)
    span_ids: Optional[np.ndarray] = None   #: hook span id of each row of ``calls`` (int32; None with a sink)
    n_pieces: int = 0           #: pieces they were built in


def sample_period_s(samples: np.ndarray, nominal_s: Optional[float] = None, measured_s: Optional[float] = None) -> float:
    """Median sample period in seconds (interval length, or spacing of instants), leaving
    out the FINAL sample cut short at stop; ``nominal_s`` (the sampler's period) when no
    whole sample is there to measure it from (a run shorter than one period).  ``measured_s``:
    that median already computed over these samples (the bridge pre-pass's), else computed."""
    only_final = len(samples) > 0 and samples["kind"][0] == _core.KIND_INTERVAL and \
        bool((samples["flags"] & _core.SFLAG_FINAL).all())
    if nominal_s is not None and (len(samples) == 0 or only_final or
                                  (samples["kind"][0] != _core.KIND_INTERVAL and len(samples) < 2)):
        return float(nominal_s)
    return _period_s(samples) if measured_s is None else measured_s


def pair_events(events: np.ndarray, n_spans: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair begin/end events per span id -> (span_id, t_begin_ns, t_end_ns), sorted by begin
    (then the longer call first, then in the recorded order of the ends).

    A span entered again before it ended (recursion) nests like a stack.  A begin
    without an end (the forward raised) is dropped: its window is unknown; an end with
    nothing open is ignored.  One pass in C (``_core.pair_spans``); the calls come out in
    the order of their begins, which is already the sorted order unless timestamps tie
    or go backwards, and only then are they sorted here.  ``n_spans`` is not needed by the
    pairing (kept for the callers).
    """
    if len(events) == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64)
    spans, begins, ends, end_pos, in_order = _core.pair_spans(np.ascontiguousarray(events, dtype=EVENT_DTYPE))
    if not in_order:
        order = np.lexsort((end_pos, -ends, begins))
        spans, begins, ends = spans[order], begins[order], ends[order]
    return spans, begins, ends


#: Calls built at once by :func:`attribute` (about 80 MB of rows and work arrays).
PIECE_CALLS: int = 1 << 17


def _put(rows: np.ndarray, cols: dict) -> None:
    """``rows[name] = values`` for every column (a value, or one per row), cast to the
    field's dtype as numpy's assignment casts, in one pass over the rows (``_core.fill_rows``;
    numpy walks wide rows once per field)."""
    fields = rows.dtype.fields
    _core.fill_rows(rows, [(fields[name][1], np.ascontiguousarray(v, dtype=fields[name][0]))
                           for name, v in cols.items()])


def _phase_windows(forwards: list[Forward], t_start_ns: int, t_end_ns: int):
    """Phase segments tiling [t_start_ns, t_end_ns) and the decode slots."""
    segs: list[tuple[str, int, int, int]] = []   # (phase, start, end, tokens)
    slots: list[tuple[int, int, int, int, bool]] = []  # per forward: (start, end, step, n_tokens, prefill)
    if not forwards:
        segs.append(("pre_inference", t_start_ns, t_end_ns, 0))
        return segs, slots
    segs.append(("pre_inference", t_start_ns, forwards[0].t_start_ns, 0))
    step = 0
    for i, f in enumerate(forwards):
        nxt = forwards[i + 1] if i + 1 < len(forwards) else None
        # A slot runs to the next forward of the same generation: a decode step, or the
        # decoder's prefill after its encoder; a new generation (prefill or encode) starts afresh.
        same_gen = nxt is not None and ((not nxt.prefill and not nxt.encode) or (f.encode and nxt.prefill))
        end = nxt.t_start_ns if same_gen else f.t_end_ns
        if f.encode:
            slots.append((f.t_start_ns, end, 0, f.batch, True))
            seg = ("encode", f.t_start_ns, end, f.input_tokens)
        elif f.prefill:
            slots.append((f.t_start_ns, end, 0, f.batch, True))
            seg = ("prefill", f.t_start_ns, end, f.input_tokens)
        else:
            step += 1
            slots.append((f.t_start_ns, end, step, f.batch, False))
            seg = ("decode", f.t_start_ns, end, f.batch)
        if segs and segs[-1][0] == seg[0] and segs[-1][2] == seg[1]:
            p = segs[-1]
            segs[-1] = (p[0], p[1], seg[2], p[3] + seg[3])   # merge consecutive slots of one phase
        else:
            segs.append(seg)
        if nxt is not None and end < nxt.t_start_ns:
            segs.append(("between", end, nxt.t_start_ns, 0))
    segs.append(("post_inference", forwards[-1].t_end_ns, t_end_ns, 0))
    return segs, slots


def attribute(
    samples: np.ndarray,
    t_start_ns: int,
    t_end_ns: int,
    forwards: list[Forward],
    events: np.ndarray,
    spans: Sequence[SpanInfo],
    user_sections: Sequence[UserSection] = (),
    baseline: Optional[tuple[int, int]] = None,
    post_baseline: Optional[tuple[int, int]] = None,
    nominal_period_s: Optional[float] = None,
    calls_sink: Optional[Callable[[np.ndarray], None]] = None,
    piece_calls: Optional[int] = None,
) -> Attribution:
    """Integrate every window of a run and build its sections, tokens and calls.

    The calls are built in pieces of about ``piece_calls`` (cut between hook events where no
    call is open, so every call and its parent fall in one piece), each integrated against
    only the samples around it: memory above the input follows the piece, not the run
    (``piece_calls`` None: :data:`PIECE_CALLS`).
    With ``calls_sink`` each piece (``CALL_DTYPE``, ``call_id`` numbering the whole run) is
    handed to it in time order and ``Attribution.calls`` stays empty (a long run's calls go
    to the store without being held at once); without, the pieces are joined into
    ``Attribution.calls``.

    ``spans[i]`` describes hook span id ``i`` (span ids whose ``layer``/``component``
    are for the top-level forward are excluded by the caller).  ``baseline`` is the
    idle window measured before the run, or None; ``post_baseline`` an idle window after
    it (to see drift), or None; ``nominal_period_s`` the sampler's period, used for
    ``sample_period_s`` when the run is too short to hold a whole sample.  The summary's ``warnings`` list what a person must know
    about the numbers (negative net energy, an unresolved baseline, drift, long gaps).
    """
    measured = measured_domains(samples)
    segs, slots = _phase_windows(forwards, t_start_ns, t_end_ns)

    # One integrate call for the run's own windows: run, baseline, phases, user sections, tokens.
    wins = [(t_start_ns, t_end_ns)]
    i_base = len(wins)
    if baseline is not None:
        wins.append(baseline)
    i_post = len(wins)
    if post_baseline is not None:
        wins.append(post_baseline)
    i_seg = len(wins)
    wins += [(s, e) for _, s, e, _ in segs]
    i_user = len(wins)
    wins += [(u.t_start_ns, u.t_end_ns) for u in user_sections]
    decode_slots = [s for s in slots if not s[4]]
    i_tok = len(wins)
    wins += [(s, e) for s, e, _, _, _ in decode_slots]
    windows = np.asarray(wins, dtype=np.int64).reshape(-1, 2)
    integ = PieceIntegrator(samples) if len(samples) else None
    dom_j, win_flags, n_in = _integrated(integ, windows, unknown_from=i_tok)
    bridged = integ.bridged if integ is not None else None
    tot_j = total_of(dom_j, measured)
    dur_s = (windows[:, 1] - windows[:, 0]) * 1e-9

    base_power_w = 0.0
    base_dom_w = np.zeros(len(DOMAINS))
    if baseline is not None and baseline[1] > baseline[0]:
        bdur = (baseline[1] - baseline[0]) * 1e-9
        base_power_w = float(tot_j[i_base] / bdur)
        base_dom_w = dom_j[i_base] / bdur
    net_j = tot_j - base_power_w * dur_s

    def fill(rows: np.ndarray, idx) -> None:
        _put(rows, _window_cols(windows[idx], dom_j[idx], tot_j[idx], n_in[idx], win_flags[idx]))

    # ---- sections: run (0), phases, user sections, baseline, post-run baseline
    n_user = len(user_sections)
    n_base = (baseline is not None) + (post_baseline is not None)
    sections = np.zeros(1 + len(segs) + n_user + n_base, SECTION_DTYPE)
    sections["section_id"] = np.arange(len(sections))
    sec_idx = [0] + list(range(i_seg, i_seg + len(segs))) + list(range(i_user, i_user + n_user))
    base_rows = []
    for win, i_w, name in ((baseline, i_base, "baseline"), (post_baseline, i_post, "post_baseline")):
        if win is not None:
            base_rows.append((len(sec_idx), name))
            sec_idx.append(i_w)
    fill(sections, np.asarray(sec_idx))
    sections["net_energy_j"] = net_j[sec_idx]
    sections[0]["kind"], sections[0]["name"], sections[0]["parent_id"] = "run", "run", -1
    for k, (name, _, _, toks) in enumerate(segs):
        r = sections[1 + k]
        r["kind"], r["name"], r["parent_id"], r["tokens"] = "phase", name, 0, toks
    first_user = 1 + len(segs)
    for k, u in enumerate(user_sections):
        r = sections[first_user + k]
        r["kind"], r["name"] = "section", u.name
        r["parent_id"] = 0 if u.parent < 0 else first_user + u.parent
    for row, name in base_rows:
        r = sections[row]
        r["kind"], r["name"], r["parent_id"] = "baseline", name, -1
        r["net_energy_j"] = 0.0 if name == "baseline" else r["net_energy_j"]

    # ---- tokens
    tokens = np.zeros(len(decode_slots), TOKEN_DTYPE)
    if len(tokens):
        fill(tokens, np.arange(i_tok, i_tok + len(tokens)))
        tokens["step"] = [s[2] for s in decode_slots]
        tokens["n_tokens"] = [s[3] for s in decode_slots]
        tokens["j_per_token"] = tokens["energy_j"] / np.maximum(tokens["n_tokens"], 1)

    # ---- calls, in pieces (each handed to the sink, or kept and joined)
    builder = _CallBuilder(spans, slots, segs, integ, measured)
    kept, kept_spans = [], []
    for ev in event_pieces(events, PIECE_CALLS if piece_calls is None else piece_calls):
        piece = builder.piece(ev)
        if piece is None:
            continue
        if calls_sink is not None:
            calls_sink(piece)
        else:
            kept.append(piece)
            kept_spans.append(builder.last_span_ids)
    calls = concat_records(kept) if len(kept) > 1 else (kept[0] if kept else np.zeros(0, CALL_DTYPE))
    span_ids = (None if calls_sink is not None else
                np.concatenate(kept_spans) if len(kept_spans) > 1 else (kept_spans[0] if kept_spans else
                                                                         np.zeros(0, np.int32)))
    phase_rows = np.arange(1, 1 + len(segs))
    sections["unattributed_j"] = sections["energy_j"]
    sections["unattributed_j"][0] -= sections["energy_j"][phase_rows].sum()
    sections["unattributed_j"][:1 + len(segs)] -= builder.top_j_per_seg
    for k, u in enumerate(user_sections):
        parent_row = 0 if u.parent < 0 else first_user + u.parent
        if parent_row != 0:
            sections["unattributed_j"][parent_row] -= sections["energy_j"][first_user + k]
    for row, _ in base_rows:
        sections["unattributed_j"][row] = 0.0

    # ---- summary figures
    run_j = float(tot_j[0])
    run_s = float(dur_s[0])
    phases: dict[str, dict] = {}
    for k, (name, _, _, toks) in enumerate(segs):
        r = sections[1 + k]
        p = phases.setdefault(name, {"energy_j": 0.0, "net_energy_j": 0.0, "duration_s": 0.0, "tokens": 0})
        p["energy_j"] += float(r["energy_j"])
        p["net_energy_j"] += float(r["net_energy_j"])
        p["duration_s"] += float(r["duration_s"])
        p["tokens"] += int(toks)
    for p in phases.values():
        p["j_per_token"] = p["energy_j"] / p["tokens"] if p["tokens"] else float("nan")
        p["edp_js"] = p["energy_j"] * p["duration_s"]
    # With an encoder the input is what it read (a seq2seq decoder's prefill reads its start token).
    if any(f.encode for f in forwards):
        in_tokens = int(sum(f.input_tokens for f in forwards if f.encode))
    else:
        in_tokens = int(sum(f.input_tokens for f in forwards if f.prefill))
    out_tokens = int(sum(f.batch for f in forwards if not f.encode))
    peaks = _peaks(samples, t_start_ns, t_end_ns, measured)
    peak_w = peaks["total"]["power_w"] if "total" in peaks else float("nan")
    known = bridged.period_s if bridged is not None and bridged.period_s == bridged.period_s else None
    period_s = sample_period_s(samples, nominal_period_s, known)
    gap_stats = _gap_stats(bridged, t_start_ns, t_end_ns)
    resolution = resolution_summary(period_s, sections["resolved"][phase_rows], tokens["resolved"],
                                    builder.resolved_counts if builder.n_calls else None, gaps=gap_stats)
    base_idx = {name: row for row, name in base_rows}
    resolution["baseline"] = bool(sections["resolved"][base_idx["baseline"]]) if "baseline" in base_idx else None
    summary = {
        "method": (METHOD_INTERVAL if len(samples) and samples["kind"][0] == _core.KIND_INTERVAL else METHOD_INSTANT),
        "sample_period_s": period_s,
        "duration_s": run_s,
        "energy_j": run_j,
        "net_energy_j": float(net_j[0]),
        "baseline_power_w": base_power_w,
        "baseline_domains_w": {d: float(w) for d, w in zip(DOMAINS, base_dom_w)},
        "peak_power_w": peak_w,
        "peaks": peaks,
        "input_tokens": in_tokens,
        "output_tokens": out_tokens,
        "batch_size": int(forwards[0].batch) if forwards else 0,
        "n_encode_forwards": int(sum(1 for f in forwards if f.encode)),
        "j_per_token": run_j / (in_tokens + out_tokens) if (in_tokens + out_tokens) else float("nan"),
        "j_per_output_token": run_j / out_tokens if out_tokens else float("nan"),
        "tokens_per_j": out_tokens / run_j if run_j > 0 else float("nan"),
        "edp_js": run_j * run_s,
        "phases": phases,
        "domains": {d: float(dom_j[0, k]) for k, d in enumerate(DOMAINS)},
        "total_rule": total_rule(measured),
        "unattributed_j": float(sections["unattributed_j"][0]),
        "n_forwards": len(forwards),
        "n_decode_steps": len(decode_slots),
        "resolution": resolution,
        "gap_s": gap_stats["bridged_s"] + gap_stats["long_s"],
        "flags": int(sections["flags"][0]),
        "flag_names": flag_names(int(sections["flags"][0])),
    }
    if "post_baseline" in base_idx:
        r = sections[base_idx["post_baseline"]]
        post_w = float(r["energy_j"] / r["duration_s"]) if r["duration_s"] > 0 else float("nan")
        summary["post_baseline_power_w"] = post_w
        summary["baseline_drift_w"] = post_w - base_power_w if baseline is not None else float("nan")
    summary["warnings"] = _warnings(summary, sections, base_idx, baseline)
    return Attribution(sections=sections, tokens=tokens, calls=calls, summary=summary, n_calls=builder.n_calls,
                       span_ids=span_ids, n_pieces=builder.n_pieces)


def _integrated(integ: Optional[PieceIntegrator], windows: np.ndarray, unknown_from: int = 0):
    """(energy per domain, flags, samples in window) of each window; rows from
    ``unknown_from`` on that touch a long hole are NaN (a token's or call's share of a
    guess at the scale of the whole gap is unknown; sections keep it, flagged)."""
    if integ is None:
        return (np.full((len(windows), len(DOMAINS)), np.nan), np.full(len(windows), _core.WIN_OUTSIDE, np.uint32),
                np.zeros(len(windows), np.int32))
    ig = integ.integrate(windows)
    dom_j = ig.energy_j
    if unknown_from < len(windows):
        unknown = ig.long_gap
        unknown[:unknown_from] = False
        dom_j[unknown] = np.nan
    return dom_j, ig.flags, ig.samples_in_window


def _window_cols(windows: np.ndarray, dom_j: np.ndarray, tot_j: np.ndarray, n_in: np.ndarray,
                 flags: np.ndarray) -> dict:
    """The columns every row type shares: its window, energy per domain and how it was measured."""
    cols = {"t_start_ns": windows[:, 0], "t_end_ns": windows[:, 1],
            "duration_s": (windows[:, 1] - windows[:, 0]) * 1e-9, "energy_j": tot_j}
    for k, c in enumerate(_DOMAIN_COLS):
        cols[c] = dom_j[:, k]
    cols.update(samples_in_window=n_in, resolved=n_in > 0, flags=flags)
    return cols


def event_pieces(events: np.ndarray, piece_calls: int = PIECE_CALLS) -> Iterator[np.ndarray]:
    """Views of ``events`` (hook events in recorded order) in order, each about
    ``2 * piece_calls`` events long and cut where no call is open, so each holds whole
    calls and their parents.  Where no such point comes (a call left open: its forward
    raised; an end with nothing open), the rest is one piece: pairing stays exact.

    >>> ev = np.zeros(8, EVENT_DTYPE); ev["kind"] = [0, 0, 1, 1, 0, 1, 0, 1]
    >>> [len(p) for p in event_pieces(ev, 1)]
    [4, 2, 2]
    """
    n = len(events)
    want = 2 * max(int(piece_calls), 1)
    start = 0
    while start < n:
        if n - start <= want:
            yield events[start:]
            return
        depth, pos, cut = 0, start, -1
        while pos < n and cut < 0:
            block = events["kind"][pos:pos + want]
            d = depth + np.cumsum(1 - 2 * block.astype(np.int64))
            if d.min() < 0:   # an end with nothing open: the depth no longer tells where calls close
                pos = n
                break
            zeros = np.flatnonzero(d == 0)
            if len(zeros):
                # the last closing point of the first block, or the first one after it
                cut = pos + int(zeros[-1] if pos == start else zeros[0]) + 1
            depth = int(d[-1])
            pos += len(block)
        if cut < 0:
            yield events[start:]
            return
        yield events[start:cut]
        start = cut


class _CallBuilder:
    """Builds the call rows of one run piece by piece (:func:`attribute`), carrying across
    pieces what spans them: the call numbering, the n-th call of a module in a step, the
    top-level calls' energy per phase segment, the resolved count."""

    def __init__(self, spans: Sequence[SpanInfo], slots: list, segs: list, integ: Optional[PieceIntegrator],
                 measured: Sequence[bool]) -> None:
        self.span_layer = np.asarray([sp.layer for sp in spans], dtype=np.int32)
        self.span_component = np.asarray([sp.component for sp in spans], dtype=CALL_DTYPE["component"])
        self.parent_span = np.asarray([sp.parent_span for sp in spans], dtype=np.int64)
        self.slot_starts = np.asarray([s[0] for s in slots], dtype=np.int64)
        self.slot_steps = np.asarray([s[2] for s in slots], dtype=np.int32)
        self.seg_starts = np.asarray([s for _, s, _, _ in segs], dtype=np.int64)
        self.top_j_per_seg = np.zeros(1 + len(segs))   # [0]: the run (a call before the first segment)
        self.integ, self.measured = integ, measured
        self.n_calls = self.n_pieces = self.n_resolved = 0
        self.last_span_ids = np.zeros(0, np.int32)    # the span id of each call of the last piece
        self._carry_step = None                        # the step the last piece ended in,
        self._carry_counts = np.zeros(len(spans), np.int64)   # and its calls per span so far

    @property
    def resolved_counts(self) -> tuple:
        """(resolved calls, calls) so far."""
        return self.n_resolved, self.n_calls

    def piece(self, events: np.ndarray) -> Optional[np.ndarray]:
        span_ids, c_begin, c_end = pair_events(events, len(self.span_layer))
        self.last_span_ids = span_ids
        n = len(span_ids)
        if n == 0:
            return None
        windows = np.empty((n, 2), dtype=np.int64)
        windows[:, 0], windows[:, 1] = c_begin, c_end
        dom_j, flags, n_in = _integrated(self.integ, windows)
        call_energy = total_of(dom_j, self.measured)
        # step: the forward slot containing the call's begin
        if len(self.slot_starts):
            pos = np.searchsorted(self.slot_starts, c_begin, side="right") - 1
            steps = np.where(pos >= 0, self.slot_steps[np.maximum(pos, 0)], -1).astype(np.int32)
        else:
            steps = np.full(n, -1, np.int32)
        # call index within (span, step): the k-th call of its span in its step, in begin order
        # one stable sort of the key (span, step): the calls of a group keep their begin order
        key = span_ids.astype(np.int64) * (int(steps.max()) + 2) + (steps + 1)
        grp = np.argsort(key, kind="stable")
        key = key[grp]
        at = np.arange(n)
        first = np.empty(n, bool)
        first[0] = True
        np.not_equal(key[1:], key[:-1], out=first[1:])
        call_no = np.empty(n, np.int64)
        call_no[grp] = at - np.maximum.accumulate(np.where(first, at, 0))   # rank within the group
        if self._carry_step is not None:   # the step the previous piece ended in goes on here
            cont = steps == self._carry_step
            call_no[cont] += self._carry_counts[span_ids[cont]]
        last = int(steps[-1])
        in_last = steps == last
        counts = np.bincount(span_ids[in_last], minlength=len(self._carry_counts)).astype(np.int64)
        if self._carry_step == last:
            counts += self._carry_counts
        self._carry_step, self._carry_counts = last, counts
        parent = _core.call_parents(span_ids, c_begin, c_end, self.parent_span)
        # unattributed: the call's energy minus its direct children's
        calls_unattr = call_energy.copy()
        has_parent = parent >= 0
        np.subtract.at(calls_unattr, parent[has_parent], call_energy[has_parent])
        is_top = ~has_parent
        if len(self.seg_starts) and is_top.any():
            seg_of = np.searchsorted(self.seg_starts, c_begin[is_top], side="right") - 1
            np.add.at(self.top_j_per_seg, 1 + seg_of, call_energy[is_top])
        base = self.n_calls
        cols = _window_cols(windows, dom_j, call_energy, n_in, flags)
        cols.update(call_id=base + np.arange(n), parent_id=np.where(has_parent, parent + base, -1), step=steps,
                    call=call_no, layer=self.span_layer[span_ids], component=self.span_component[span_ids],
                    unattributed_j=calls_unattr,
                    **{c: np.nan for c in ("act_mean", "act_std", "act_max", "act_sparsity", "act_abs_mean")})
        calls = np.zeros(n, CALL_DTYPE)
        _put(calls, cols)
        self.n_calls += n
        self.n_pieces += 1
        self.n_resolved += int(np.count_nonzero(n_in))
        return calls


def _peaks(samples: np.ndarray, t_start_ns: int, t_end_ns: int, measured: Sequence[bool]) -> dict:
    """The highest sampled power of the run per measured domain and in total, with when it was.

    ``{domain or "total": {"power_w", "t_s", "t_end_s"}}``: the sample (an interval's average,
    or an instant) with the highest power among those overlapping the run; ``t_s``/``t_end_s``
    its start (at the earliest the run start) and end in seconds from the run start.
    """
    out: dict = {}
    if not len(samples):
        return out
    in_run = np.flatnonzero((samples["t_end_ns"] > t_start_ns) & (samples["t_start_ns"] < t_end_ns))
    if not len(in_run):
        return out
    names = [d for d, m in zip(DOMAINS, measured) if m] + ["total"]
    # every column at once, in pieces of the samples (a long run's arrays are not copied whole):
    # the first highest value (NaN never wins; a column all NaN has none)
    best_w = np.full(len(names), -np.inf)
    best_i = np.full(len(names), -1, dtype=np.int64)
    for lo in range(0, len(in_run), PEAK_PIECE_SAMPLES):
        rows = in_run[lo:lo + PEAK_PIECE_SAMPLES]
        sel = samples[rows]
        pw = np.empty((len(sel), len(names)))
        for k, d in enumerate(names[:-1]):
            pw[:, k] = sel[f"{d}_w"]
        pw[:, -1] = total_of(np.stack([sel[c] for c in _SAMPLE_COLS], axis=1), measured)
        pw[np.isnan(pw)] = -np.inf
        first_max = pw.argmax(axis=0)
        top = pw[first_max, np.arange(len(names))]
        better = top > best_w                      # strictly: an earlier piece's equal value stays first
        best_w = np.where(better, top, best_w)
        best_i = np.where(better, rows[first_max], best_i)
    for k, name in enumerate(names):
        if best_i[k] >= 0:
            i = int(best_i[k])
            out[name] = {"power_w": float(best_w[k]),
                         "t_s": max(int(samples["t_start_ns"][i]) - t_start_ns, 0) * 1e-9,
                         "t_end_s": (int(samples["t_end_ns"][i]) - t_start_ns) * 1e-9}
    return out


#: Samples :func:`_peaks` reads at a time.
PEAK_PIECE_SAMPLES = 65536


#: ``summary()["method"]``: how energy inside one sample is divided among the windows in it.
METHOD_INTERVAL = "time-split within sample"
METHOD_INSTANT = "trapezoid between samples"

#: Net energy counts as negative below -this share of the gross (rounding of a constant power stays above).
NET_ROUNDING_SHARE = 1e-9
#: A post-run baseline that differs from the pre-run one by more than this share warns.
DRIFT_WARN_SHARE = 0.10


def _gap_stats(bridged, t_start_ns: int, t_end_ns: int) -> dict:
    """How much of the run window the holes cover, bridged and long (``resolution["gaps"]``)."""
    out = {"n": 0, "n_long": 0, "bridged_s": 0.0, "long_s": 0.0,
           "max_bridge_s": float(bridged.max_bridge_s) if bridged is not None else float("nan")}
    if bridged is None or len(bridged.holes.t_start_ns) == 0:
        return out
    holes = bridged.holes
    d = holes.duration_s(t_start_ns, t_end_ns)
    inside = d > 0
    out["n"] = int(inside.sum())
    out["n_long"] = int((inside & holes.long).sum())
    out["bridged_s"] = float(d[~holes.long].sum())
    out["long_s"] = float(d[holes.long].sum())
    return out


def _warnings(summary: dict, sections: np.ndarray, base_idx: dict, baseline) -> list:
    """What a person must be told about a run's numbers, one sentence each."""
    out = []
    period = period_text(summary.get("sample_period_s"))
    if "baseline" in base_idx:
        b = sections[base_idx["baseline"]]
        base_w = summary["baseline_power_w"]
        if not b["resolved"]:
            out.append(f"the idle baseline window ({float(b['duration_s']):.3g} s) spans no whole power sample "
                       f"({period} samples): baseline_power_w {base_w:.4g} W is split by time within a sample; "
                       "use a baseline_s of at least two sample periods")
        net = summary["net_energy_j"]
        if net < -NET_ROUNDING_SHARE * abs(summary["energy_j"]):  # below zero by more than rounding
            run_w = summary["energy_j"] / summary["duration_s"] if summary["duration_s"] > 0 else float("nan")
            out.append(f"net energy {net:.4g} J is negative: the idle baseline ({base_w:.4g} W over "
                       f"{float(b['duration_s']):.3g} s before the run) is above the run's mean power "
                       f"({run_w:.4g} W); the baseline was not idle or the power drifted, so net figures are "
                       "not meaningful (use energy_j, or measure a post-run baseline with post_baseline_s)")
    drift = summary.get("baseline_drift_w")
    if drift is not None and drift == drift and "baseline" in base_idx:
        base_w = summary["baseline_power_w"]
        if abs(drift) > DRIFT_WARN_SHARE * abs(base_w):
            out.append(f"the idle baseline drifted by {drift:+.4g} W ({summary['post_baseline_power_w']:.4g} W after "
                       f"the run against {base_w:.4g} W before): net figures carry that much doubt")
    gaps = summary["resolution"].get("gaps") or {}
    if gaps.get("n_long"):
        out.append(f"{gaps['n_long']} gap(s) in the power samples longer than {gaps['max_bridge_s']:.3g} s "
                   f"({MAX_BRIDGE_PERIODS:g} sample periods; {gaps['long_s']:.3g} s in all): tokens and calls there are unknown (NaN, flagged "
                   "'gap'); the run and phase totals interpolate over them (flagged)")
    return out


def _parents(span_ids: np.ndarray, begins: np.ndarray, ends: np.ndarray, spans: Sequence[SpanInfo]) -> np.ndarray:
    """call index of each call's enclosing call of its parent span (-1 when none).

    The parent span is the nearest ancestor span that was called.  Calls come sorted by
    begin; a call's parent is the last call of the parent span that begins at or before
    it, if that one also ends at or after it.  One pass in C (``_core.call_parents``; twin
    ``_reference.call_parents``).
    """
    parent_span = np.asarray([sp.parent_span for sp in spans], dtype=np.int64)
    return _core.call_parents(span_ids, begins, ends, parent_span)
