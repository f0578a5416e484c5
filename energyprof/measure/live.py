"""The live feed: callbacks while a run goes on, from a Python thread that never is the sampler's.

``s.on_sample(cb)``, ``s.on_token(cb)``, ``s.on_section(cb)`` on a running
:class:`energyprof.measure.session.Session`: a Python thread (``energyprof-live``)
drains the sample ring and the hook span buffer every ``s.live_interval_ms`` (100 ms)
and calls the callbacks with plain dicts, in time order.  Every sample is delivered
exactly once, in order, including the last one the source flushes when the run stops
(the feed's final pass runs after the sampler has stopped).

The views of the feed live elsewhere: the terminal monitor in
:mod:`energyprof.views.terminal` (``energyprof monitor``, ``profile --live``) and the
Jupyter plot in :mod:`energyprof.views.live` (``ep.live(s)``).

>>> import torch, energyprof as ep
>>> from energyprof.tiny import tiny_model
>>> model = tiny_model("tiny-llama")
>>> got = []
>>> with ep.run(model, source="synthetic:power_w=20,period_ms=5", baseline_s=0, save=False) as s:
...     s.on_token(got.append)
...     _ = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False)
>>> [t["tokens"] for t in got]
[1, 2, 3]
"""
from __future__ import annotations

import bisect
import math
import threading
import warnings
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .._dtypes import DOMAINS

__all__ = ["LiveFeed"]


def _sample_total_w(row_w: Sequence[float]) -> float:
    """Total power of one sample under the run's total rule (package [+ dram], else the sum)."""
    from .attribution import total_of

    measured = [not math.isnan(w) for w in row_w]
    return float(total_of(np.asarray([row_w], dtype=np.float64), measured)[0])


def _sample_dicts(chunk: np.ndarray, start_index: int) -> List[dict]:
    out = []
    for k, r in enumerate(chunk.tolist()):
        t0, t1, _kind, _flags, *ws = r
        dom = {d: float(w) for d, w in zip(DOMAINS, ws) if not math.isnan(w)}
        out.append({"index": start_index + k, "t_start_ns": int(t0), "t_end_ns": int(t1),
                    "power_w": _sample_total_w(ws), "domains": dom})
    return out


class LiveFeed:
    """Deliver samples, tokens and sections of a running session (or a bare sampler) to callbacks.

    Parameters
    ----------
    session:
        A running :class:`~energyprof.measure.session.Session` (its ``_live_callbacks``,
        sampler and span buffer are used), or None with ``sampler`` and ``callbacks``.
    sampler:
        An :class:`energyprof.measure.sampler.Sampler` (default: the session's).
    callbacks:
        ``{"sample": [...], "token": [...], "section": [...]}`` (default: the session's).
    interval_ms:
        How often the feed drains (ms).

    Sample dict: ``index`` (0, 1, ... over the run), ``t_start_ns``, ``t_end_ns``,
    ``power_w`` (total), ``domains`` ({domain: W} for the measured domains),
    ``phase`` and ``layer`` (at the sample's end; layer -1 outside a decoder layer;
    after the last forward so far a sample counts in that forward's phase, as the
    gaps between decode steps do, until the run ends: the final pass calls it
    ``post_inference``), ``tokens`` (generated so far) and ``tok_s``.
    Token dict: ``step`` (0 = the prefill forward), ``n_tokens``, ``t_ns`` (end of
    the forward), ``duration_s``, ``phase``, ``tokens`` (so far), ``tok_s``,
    ``energy_j`` (the run's energy from its start to ``t_ns``), ``step_energy_j`` (the
    forward's own energy, NaN unless ``resolved``: its window spans a whole sample),
    ``samples_in_window``.  A token is delivered once the samples reach its end (at most
    about one sample period late), so its energy is known when it arrives.
    Layer dict (``on_layer``, at most ``layer_max_per_s`` per second of run time; the rest
    are counted in the next one's ``skipped``): ``layer``, ``step``, ``t_start_ns``,
    ``t_end_ns``, ``duration_s``, ``energy_j`` (NaN unless ``resolved``), ``resolved``,
    ``skipped``.
    Section dict: ``name``, ``kind`` (``"phase"`` or ``"section"``), ``event``
    (``"begin"``/``"end"``), ``t_ns``.
    """

    def __init__(self, session: Any = None, sampler: Any = None, callbacks: Optional[Dict[str, list]] = None,
                 interval_ms: float = 100.0) -> None:
        if not (interval_ms > 0):
            raise ValueError(f"interval_ms must be > 0, got {interval_ms!r}")
        self.session = session
        self.sampler = sampler if sampler is not None else session._sampler
        self.callbacks = callbacks if callbacks is not None else session._live_callbacks
        self.interval_s = float(interval_ms) / 1e3
        self.errors = 0
        self.delivered = {"sample": 0, "token": 0, "section": 0, "layer": 0}
        self.layer_max_per_s = float(getattr(session, "layer_max_per_s", 10.0) if session is not None else 10.0)
        self._chunks: List[np.ndarray] = []            # every sample seen, for the energy of tokens and layers
        self._covered_ns: Optional[int] = None         # end of the newest sample seen
        self._pending: List[tuple] = []                # (t_ns, kind, payload, window) waiting for the samples
        self._last_layer_ns: Optional[int] = None
        self._layer_skipped = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._cond = threading.Condition()
        self._started = 0                              # passes begun / finished (sync())
        self._finished = 0
        self._thread: Optional[threading.Thread] = None
        self._sample_cursor = 0
        self._warned: set = set()
        # state from the hook events
        self._fwd_open: Optional[int] = None          # start of the forward under way
        self._fwd: List[tuple] = []                    # (start, end, prefill, batch) of ended forwards
        self._fwd_starts: List[int] = []               # their starts, for phase_at's search per sample
        self._n_decode = 0                             # how many of them are decode steps
        self._fwd_started = 0
        self._tokens = 0
        self._t_first_ns: Optional[int] = None
        self._t_last_ns: Optional[int] = None
        self._layer_spans: Dict[int, int] = {}         # span id -> layer, for component == "layer"
        self._layer_open: Dict[int, int] = {}          # span id -> begin t of an open layer call
        self._layer_starts: List[int] = []             # begin t of every layer call seen (sorted)
        self._layer_ends: List[int] = []
        self._layer_ids: List[int] = []
        self._phase = None
        self._user_seen = 0
        self._user_open: List[int] = []
        self._held: List[tuple] = []                   # section events after the last forward (see tick)
        if session is not None:
            for sid, info in enumerate(session._spans):
                if info.component == "layer":
                    self._layer_spans[sid] = info.layer

    # ------------------------------------------------------------------ control
    def start(self) -> "LiveFeed":
        """Start the ``energyprof-live`` thread."""
        self._thread = threading.Thread(target=self._loop, name="energyprof-live", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the thread for a final pass (everything left is delivered), then join it."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def sync(self, timeout_s: float = 2.0) -> bool:
        """Have the feed's thread make a pass now and wait for it (the callbacks still run
        on that thread); True when a pass that began after this call has finished."""
        if self._thread is None:
            return False
        with self._cond:
            target = self._started + 1
        self._wake.set()
        with self._cond:
            return self._cond.wait_for(lambda: self._finished >= target or self._thread is None, timeout_s)

    def _pass(self, final: bool) -> None:
        with self._cond:
            self._started += 1
            n = self._started
        try:
            self.tick(final=final)
        finally:
            with self._cond:
                self._finished = n
                self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            self._pass(final=False)
        self._pass(final=True)

    # ------------------------------------------------------------------ one pass
    def _emit(self, what: str, payload: dict) -> None:
        for cb in list(self.callbacks.get(what, ())):
            try:
                cb(payload)
            except Exception as e:  # a broken callback must not stop the feed or the run
                self.errors += 1
                if id(cb) not in self._warned:
                    self._warned.add(id(cb))
                    warnings.warn(f"energyprof: live {what} callback {cb!r} raised {type(e).__name__}: {e}",
                                  RuntimeWarning)
        self.delivered[what] += 1

    def _is_prefill(self, i: int) -> bool:
        metas = self.session._forward_meta if self.session is not None else []
        if i < len(metas):
            from .session import forward_is_prefill

            return forward_is_prefill(metas[i], i, metas[i - 1].get("seq") if i > 0 else None)
        return i == 0

    def _batch(self, i: int) -> int:
        metas = self.session._forward_meta if self.session is not None else []
        return int(metas[i]["batch"]) if i < len(metas) else 1

    def _tok_s(self) -> float:
        if self._t_first_ns is None or self._t_last_ns is None or self._t_last_ns <= self._t_first_ns:
            return float("nan")
        return self._tokens / ((self._t_last_ns - self._t_first_ns) * 1e-9)

    def phase_at(self, t_ns: int, final: bool = False) -> str:
        """The phase at ``t_ns`` from the forwards seen so far."""
        s = self.session
        if s is None:
            return "monitor"
        if t_ns < getattr(s, "_t_start_ns", 0) or not hasattr(s, "_t_start_ns"):
            return "baseline" if s._baseline is not None else "pre_inference"
        if self._fwd_open is not None and t_ns >= self._fwd_open:
            return "prefill" if self._is_prefill(len(self._fwd)) else "decode"
        if not self._fwd:
            return "pre_inference"
        i = bisect.bisect_right(self._fwd_starts, t_ns) - 1
        if i < 0:
            return "pre_inference"
        if final and i == len(self._fwd) - 1 and t_ns > self._fwd[-1][1]:
            return "post_inference"
        return "prefill" if self._fwd[i][2] else "decode"

    def layer_at(self, t_ns: int) -> int:
        """The decoder layer running at ``t_ns`` (-1 outside every layer)."""
        for sid, t0 in self._layer_open.items():
            if t_ns >= t0:
                return self._layer_spans[sid]
        if not self._layer_starts:
            return -1
        i = bisect.bisect_right(self._layer_starts, t_ns) - 1
        if i >= 0 and self._layer_ends[i] >= t_ns:
            return self._layer_ids[i]
        return -1

    def tick(self, final: bool = False) -> None:
        """Drain once and deliver what is new (called by the feed's thread)."""
        out: List[tuple] = []           # (t_ns, order, kind, payload)
        s = self.session
        if s is not None and self._phase is None and hasattr(s, "_t_start_ns"):
            self._phase = "pre_inference"
            out.append((s._t_start_ns, 0, "section", {"name": "pre_inference", "kind": "phase", "event": "begin",
                                                      "t_ns": int(s._t_start_ns)}))
        # Samples first, events second: every hook event up to the newest sample's end is
        # then known, so its phase and layer are exact.  On the final pass the sampler has
        # stopped: the last sample it flushed is delivered here.
        self.sampler.drain()
        new = self.sampler.samples_since(self._sample_cursor)
        self._sample_cursor += len(new)
        if len(new):
            self._chunks.append(new)
            self._covered_ns = int(new["t_end_ns"].max()) if self._covered_ns is None else \
                max(self._covered_ns, int(new["t_end_ns"].max()))
        if s is not None:
            ev = s._buffer.drain()
            if len(ev):
                s._event_chunks.append(ev)
                self._process_events(ev, out)
            self._process_user_sections(out, final)
        out += self._release(final)
        for d in _sample_dicts(new, self._sample_cursor - len(new)):
            t = d["t_end_ns"]
            d["phase"] = self.phase_at(t, final)
            d["layer"] = self.layer_at(t)
            d["tokens"] = self._tokens
            d["tok_s"] = self._tok_s()
            out.append((t, 2, "sample", d))
        if final and s is not None and self._fwd:
            t = self._fwd[-1][1]
            out.append((t, 1, "section", {"name": self._phase, "kind": "phase", "event": "end", "t_ns": int(t)}))
            out.append((t, 1, "section", {"name": "post_inference", "kind": "phase", "event": "begin",
                                          "t_ns": int(t)}))
        # Section events after the end of the last forward wait: whether a phase ends there
        # is known only when the next forward begins or the run ends, and section events
        # are delivered in time order.  Samples are never held (their phase is provisional).
        out += self._held
        self._held = []
        if s is not None and not final and self._fwd_open is None and self._fwd:
            last_end = self._fwd[-1][1]
            self._held = [x for x in out if x[2] == "section" and x[0] > last_end]
            out = [x for x in out if not (x[2] == "section" and x[0] > last_end)]
        # samples keep their own order; sort the rest around them by time
        out.sort(key=lambda x: (x[0], x[1]))
        for _, _, kind, payload in out:
            self._emit(kind, payload)

    def _set_phase(self, name: str, t: int, out: List[tuple]) -> None:
        if name == self._phase:
            return
        if self._phase is not None:
            out.append((t, 0, "section", {"name": self._phase, "kind": "phase", "event": "end", "t_ns": int(t)}))
        out.append((t, 0, "section", {"name": name, "kind": "phase", "event": "begin", "t_ns": int(t)}))
        self._phase = name

    def _process_events(self, ev: np.ndarray, out: List[tuple]) -> None:
        for t, sid, kind in zip(ev["t_ns"].tolist(), ev["span_id"].tolist(), ev["kind"].tolist()):
            if sid == 0:
                if kind == 0:
                    self._fwd_open = t
                    prefill = self._is_prefill(len(self._fwd))
                    if self._t_first_ns is None:
                        self._t_first_ns = t
                    self._set_phase("prefill" if prefill else "decode", t, out)
                elif self._fwd_open is not None:
                    i = len(self._fwd)
                    prefill = self._is_prefill(i)
                    batch = self._batch(i)
                    self._fwd.append((self._fwd_open, t, prefill, batch))
                    self._fwd_starts.append(self._fwd_open)
                    self._n_decode += 0 if prefill else 1
                    self._fwd_open = None
                    self._tokens += batch
                    self._t_last_ns = t
                    step = 0 if prefill else self._n_decode
                    t0 = self._fwd[-1][0]
                    self._pending.append((t, "token", {"step": step, "n_tokens": batch, "t_ns": int(t),
                                                       "duration_s": (t - t0) * 1e-9,
                                                       "phase": "prefill" if prefill else "decode",
                                                       "tokens": self._tokens, "tok_s": self._tok_s()}, (t0, t)))
            elif sid in self._layer_spans:
                if kind == 0:
                    self._layer_open[sid] = t
                else:
                    t0 = self._layer_open.pop(sid, None)
                    if t0 is not None:
                        k = bisect.bisect_left(self._layer_starts, t0)
                        self._layer_starts.insert(k, t0)
                        self._layer_ends.insert(k, t)
                        self._layer_ids.insert(k, self._layer_spans[sid])
                        self._layer_event(self._layer_spans[sid], t0, t)

    def _layer_event(self, layer: int, t0: int, t1: int) -> None:
        """Queue a layer call for ``on_layer``, at most ``layer_max_per_s`` per second of run time."""
        if not self.callbacks.get("layer"):
            return
        gap_ns = 1e9 / self.layer_max_per_s if self.layer_max_per_s > 0 else 0.0
        if self._last_layer_ns is not None and t1 - self._last_layer_ns < gap_ns:
            self._layer_skipped += 1
            return
        self._last_layer_ns = t1
        step = (0 if self._is_prefill(len(self._fwd)) else self._n_decode + 1) if self._fwd_open is not None else -1
        self._pending.append((t1, "layer", {"layer": int(layer), "step": step, "t_start_ns": int(t0),
                                            "t_end_ns": int(t1), "duration_s": (t1 - t0) * 1e-9,
                                            "skipped": self._layer_skipped}, (t0, t1)))
        self._layer_skipped = 0

    def _release(self, final: bool) -> List[tuple]:
        """Tokens and layer calls whose end the samples have reached (all of them on the final
        pass), with their energy: one integration over every sample seen so far."""
        if not self._pending:
            return []
        if final or self._covered_ns is None:
            ready = self._pending if final else []
        else:
            n = 0
            while n < len(self._pending) and self._pending[n][0] <= self._covered_ns:
                n += 1
            ready = self._pending[:n]
        if not ready:
            return []
        self._pending = self._pending[len(ready):] if not final else []   # pending is in time order
        from .. import _core
        from .attribution import measured_domains, total_of

        samples = np.concatenate(self._chunks) if self._chunks else None
        t_run = getattr(self.session, "_t_start_ns", None) if self.session is not None else None
        wins = []
        for t, _kind, _d, (a, b) in ready:
            wins.append((a, b))
            wins.append((t_run if t_run is not None else a, t))
        if samples is not None and len(samples):
            windows = np.asarray(wins, dtype=np.int64).reshape(-1, 2)
            windows[:, 0] = np.minimum(windows[:, 0], windows[:, 1])
            dom_j, _flags, n_in = _core.integrate(samples, windows)
            tot = total_of(dom_j, measured_domains(samples))
        else:
            tot = np.full(len(wins), np.nan)
            n_in = np.zeros(len(wins), np.int32)
        out = []
        for i, (t, kind, d, _w) in enumerate(ready):
            e_own, n_own = float(tot[2 * i]), int(n_in[2 * i])
            resolved = n_own > 0
            if kind == "token":
                d["energy_j"] = float(tot[2 * i + 1])
                d["step_energy_j"] = e_own if resolved else float("nan")
                d["samples_in_window"] = n_own
                d["resolved"] = resolved
                out.append((t, 1, "token", d))
            else:
                d["energy_j"] = e_own if resolved else float("nan")
                d["resolved"] = resolved
                out.append((t, 1, "layer", d))
        return out

    def _process_user_sections(self, out: List[tuple], final: bool) -> None:
        secs = self.session._user_sections
        while self._user_seen < len(secs):
            u = secs[self._user_seen]
            out.append((u.t_start_ns, 0, "section", {"name": u.name, "kind": "section", "event": "begin",
                                                     "t_ns": int(u.t_start_ns)}))
            self._user_open.append(self._user_seen)
            self._user_seen += 1
        still = []
        for i in self._user_open:
            u = secs[i]
            if u.t_end_ns >= 0:
                out.append((u.t_end_ns, 0, "section", {"name": u.name, "kind": "section", "event": "end",
                                                       "t_ns": int(u.t_end_ns)}))
            else:
                still.append(i)
        self._user_open = still

    # ------------------------------------------------------------------ state
    @property
    def phase(self) -> Optional[str]:
        """The current phase (None before the run started)."""
        return self._phase

    @property
    def tokens(self) -> int:
        """Tokens generated so far (one per sequence per forward)."""
        return self._tokens
