"""Live monitoring: callbacks while a run goes on, a terminal view, and a Jupyter plot.

* ``s.on_sample(cb)``, ``s.on_token(cb)``, ``s.on_section(cb)`` on a running
  :class:`energyprof.session.Session`: a Python thread (``energyprof-live``, never the
  sampler thread) drains the sample ring and the hook span buffer every
  ``s.live_interval_ms`` (100 ms) and calls the callbacks with plain dicts, in time
  order.  Every sample is delivered exactly once, in order, including the last one
  the source flushes when the run stops (the feed's final pass runs after the
  sampler has stopped).
* ``energyprof monitor``: a rich terminal view of power by domain with sparklines,
  like asitop, without a model (:func:`monitor`); ``energyprof profile --live`` adds
  the token stream, the current phase and layer (:class:`LiveProgress`).
* ``ep.live(s)``: a plotly ``FigureWidget`` in Jupyter with the power timeline,
  phase bands and a layer heatmap that fill in as the model runs (:class:`LivePlot`).

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
import collections
import contextlib
import math
import os
import sys
import threading
import time
import warnings
from typing import Any, Deque, Dict, List, Optional, Sequence

import numpy as np

from ._dtypes import DOMAINS

__all__ = ["LiveFeed", "MonitorState", "sparkline", "render_monitor", "monitor", "LiveProgress", "LivePlot", "live",
           "add_monitor_parser", "SPARK_CHARS"]

#: Characters of the sparklines, lowest to highest.
SPARK_CHARS = "▁▂▃▄▅▆▇█"


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


# --------------------------------------------------------------------------- the feed


class LiveFeed:
    """Deliver samples, tokens and sections of a running session (or a bare sampler) to callbacks.

    Parameters
    ----------
    session:
        A running :class:`~energyprof.session.Session` (its ``_live_callbacks``,
        sampler and span buffer are used), or None with ``sampler`` and ``callbacks``.
    sampler:
        An :class:`energyprof.sampler.Sampler` (default: the session's).
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
    the forward), ``duration_s``, ``phase``, ``tokens`` (so far), ``tok_s``.
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
        self.delivered = {"sample": 0, "token": 0, "section": 0}
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
        if s is not None:
            ev = s._buffer.drain()
            if len(ev):
                s._event_chunks.append(ev)
                self._process_events(ev, out)
            self._process_user_sections(out, final)
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
                    out.append((t, 1, "token", {"step": step, "n_tokens": batch, "t_ns": int(t),
                                                "duration_s": (t - self._fwd[-1][0]) * 1e-9,
                                                "phase": "prefill" if prefill else "decode",
                                                "tokens": self._tokens, "tok_s": self._tok_s()}))
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


# --------------------------------------------------------------------------- terminal view


def sparkline(values: Sequence[float], width: int = 40, top: Optional[float] = None) -> str:
    """The last ``width`` values as block characters, scaled from 0 to ``top`` (default: their max).

    NaN is drawn as a space.  A value at ``top`` is a full block, 0 the lowest one.
    """
    vals = list(values)[-width:] if width > 0 else []
    finite = [v for v in vals if not math.isnan(v)]
    hi = top if top is not None else (max(finite) if finite else 0.0)
    n = len(SPARK_CHARS)
    chars = []
    for v in vals:
        if math.isnan(v):
            chars.append(" ")
        elif hi <= 0:
            chars.append(SPARK_CHARS[0])
        else:
            k = int(round(max(0.0, min(v / hi, 1.0)) * (n - 1)))
            chars.append(SPARK_CHARS[k])
    return "".join(chars)


class MonitorState:
    """What the terminal view shows: recent power per domain, tokens, phase, layer.

    Fed by :class:`LiveFeed` callbacks (``on_sample``, ``on_token``, ``on_section``);
    thread-safe (the feed thread writes, the rich refresh thread reads).
    """

    def __init__(self, history: int = 120, title: str = "energyprof", source: str = "", label: str = "") -> None:
        self.history = int(history)
        self.title = title
        self.source = source
        self.label = label
        self._lock = threading.Lock()
        self.power: Dict[str, Deque[float]] = {}
        self.total: Deque[float] = collections.deque(maxlen=self.history)
        self.energy_j = 0.0
        self.n_samples = 0
        self.t0_ns: Optional[int] = None
        self.t_last_ns: Optional[int] = None
        self.peak_w = float("nan")
        self.phase = ""
        self.layer = -1
        self.tokens = 0
        self.tok_s = float("nan")
        self.text = ""
        self.show_tokens = False

    def on_sample(self, d: dict) -> None:
        with self._lock:
            for dom, w in d["domains"].items():
                self.power.setdefault(dom, collections.deque(maxlen=self.history)).append(w)
            self.total.append(d["power_w"])
            dt = (d["t_end_ns"] - d["t_start_ns"]) * 1e-9
            if not math.isnan(d["power_w"]):
                self.energy_j += d["power_w"] * dt
                self.peak_w = d["power_w"] if math.isnan(self.peak_w) else max(self.peak_w, d["power_w"])
            self.n_samples += 1
            if self.t0_ns is None:
                self.t0_ns = d["t_start_ns"]
            self.t_last_ns = d["t_end_ns"]
            if "phase" in d:
                self.phase = d["phase"]
                self.layer = d["layer"]
                self.tokens = d["tokens"]
                self.tok_s = d["tok_s"]

    def on_token(self, d: dict) -> None:
        with self._lock:
            self.tokens = d["tokens"]
            self.tok_s = d["tok_s"]
            self.phase = d["phase"]

    def on_section(self, d: dict) -> None:
        with self._lock:
            if d["kind"] == "phase" and d["event"] == "begin":
                self.phase = d["name"]

    def add_text(self, text: str, keep: int = 400) -> None:
        """Append generated text to the token stream (the last ``keep`` characters are kept)."""
        with self._lock:
            self.text = (self.text + text)[-keep:]

    def snapshot(self) -> dict:
        """A consistent copy of the state."""
        with self._lock:
            return {
                "power": {k: list(v) for k, v in self.power.items()},
                "total": list(self.total), "energy_j": self.energy_j, "n_samples": self.n_samples,
                "elapsed_s": ((self.t_last_ns - self.t0_ns) * 1e-9) if self.t0_ns is not None else 0.0,
                "peak_w": self.peak_w, "phase": self.phase, "layer": self.layer, "tokens": self.tokens,
                "tok_s": self.tok_s, "text": self.text,
            }

    def __rich__(self):
        return render_monitor(self)


def _fmt_w(w: float) -> str:
    return "n/a" if w is None or math.isnan(w) else f"{w:7.2f} W"


def render_monitor(state: MonitorState, width: int = 32):
    """The rich renderable of the monitor: one row per domain (now, mean, max, sparkline)."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    snap = state.snapshot()
    table = Table(expand=False, box=None, padding=(0, 1))
    table.add_column("domain", style="bold")
    table.add_column("now", justify="right")
    table.add_column("mean", justify="right")
    table.add_column("max", justify="right")
    table.add_column(f"last {width} samples")
    rows = [(d, snap["power"][d]) for d in DOMAINS if d in snap["power"]]
    if len(rows) != 1:
        rows.append(("total", snap["total"]))
    for name, vals in rows:
        finite = [v for v in vals if not math.isnan(v)]
        now = vals[-1] if vals else float("nan")
        mean = sum(finite) / len(finite) if finite else float("nan")
        mx = max(finite) if finite else float("nan")
        table.add_row(name, _fmt_w(now), _fmt_w(mean), _fmt_w(mx), Text(sparkline(vals, width), style="green"))
    head = Text(f"source {state.source} ({state.label})\nsamples {snap['n_samples']}  "
                f"elapsed {snap['elapsed_s']:.1f} s  energy {snap['energy_j']:.3f} J")
    parts: list = [head, table]
    if state.show_tokens:
        tok_s = "n/a" if math.isnan(snap["tok_s"]) else f"{snap['tok_s']:.1f}"
        layer = "-" if snap["layer"] < 0 else str(snap["layer"])
        parts.append(Text(f"phase {snap['phase'] or '-'}  layer {layer}  tokens {snap['tokens']}  tok/s {tok_s}"))
        if snap["text"]:
            parts.append(Panel(Text(snap["text"]), title="tokens", expand=True))
    parts.append(Text("q or Ctrl-C to quit", style="dim"))
    return Panel(Group(*parts), title=state.title, expand=False)


class _Keys:
    """Non-blocking single-key reads from a terminal stdin (cbreak mode, restored on exit)."""

    def __init__(self) -> None:
        self._old = None
        self._fd = None

    def __enter__(self) -> "_Keys":
        try:
            if sys.stdin is not None and sys.stdin.isatty():
                import termios
                import tty

                self._fd = sys.stdin.fileno()
                self._old = termios.tcgetattr(self._fd)
                tty.setcbreak(self._fd)
        except Exception:
            self._fd = None
        return self

    def read(self) -> str:
        if self._fd is None:
            return ""
        import select

        r, _, _ = select.select([self._fd], [], [], 0)
        if r:
            return os.read(self._fd, 16).decode(errors="ignore")
        return ""

    def __exit__(self, *exc) -> bool:
        if self._fd is not None and self._old is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._old)
        return False


def monitor(source: str = "auto", interval_ms: Optional[float] = None, duration_s: Optional[float] = None,
            refresh_per_s: float = 4.0, console: Any = None, history: int = 120) -> MonitorState:
    """Show power by domain live in the terminal until ``q``, Ctrl-C or ``duration_s``.

    No model is needed: a :class:`~energyprof.sampler.Sampler` polls ``source`` and a
    :class:`LiveFeed` fills a :class:`MonitorState` that rich redraws.  Returns the
    final state.
    """
    from rich.console import Console
    from rich.live import Live

    from .sampler import Sampler

    sampler = Sampler(source, interval_ms=interval_ms)
    state = MonitorState(history=history, title="energyprof monitor", source=sampler.spec, label=sampler.label)
    feed = LiveFeed(sampler=sampler, callbacks={"sample": [state.on_sample], "token": [], "section": []},
                    interval_ms=min(100.0, 1000.0 / refresh_per_s))
    console = console or Console()
    t_end = None if duration_s is None else time.monotonic() + float(duration_s)
    sampler.start()
    feed.start()
    try:
        with _Keys() as keys, Live(state, console=console, refresh_per_second=refresh_per_s, screen=False):
            while t_end is None or time.monotonic() < t_end:
                k = keys.read()
                if "q" in k or "Q" in k:
                    break
                time.sleep(0.05)
    except KeyboardInterrupt:
        pass
    finally:
        sampler.stop()
        feed.stop()
    return state


# --------------------------------------------------------------------------- profile --live


class LiveProgress:
    """``energyprof profile --live``: the monitor view plus the token stream, phase and layer.

    Same interface as the CLI's progress bar: a context manager and ``hook`` (a forward
    hook on the model, which decodes the greedy choice of each step for the token
    stream: the generated token when ``do_sample=False``).
    """

    def __init__(self, total_steps: int, session: Any, tokenizer: Any = None, console: Any = None) -> None:
        self.total = int(total_steps)
        self.session = session
        self.tokenizer = tokenizer
        src = session._source
        self.state = MonitorState(title=f"energyprof profile --live ({self.total} tokens)", source=src.spec,
                                  label=src.label)
        self.state.show_tokens = True
        self.console = console
        self._live = None

    def __enter__(self) -> "LiveProgress":
        from rich.console import Console
        from rich.live import Live

        s = self.session
        s.on_sample(self.state.on_sample)
        s.on_token(self.state.on_token)
        s.on_section(self.state.on_section)
        self._live = Live(self.state, console=self.console or Console(), refresh_per_second=4, transient=False)
        self._live.__enter__()
        return self

    def hook(self, module: Any, args: Any, output: Any) -> None:
        try:
            logits = output.logits if hasattr(output, "logits") else output[0]
            ids = logits[0, -1].argmax(-1).reshape(1).tolist()
            if self.tokenizer is not None and hasattr(self.tokenizer, "decode"):
                text = self.tokenizer.decode(ids)
            else:
                text = f" {ids[0]}"
            self.state.add_text(text)
        except Exception:
            pass

    def __exit__(self, *exc) -> bool:
        feed = getattr(self.session, "_live", None)
        if feed is not None:
            feed.sync()       # the last forward's token and samples, before the view closes
        if self._live is not None:
            self._live.refresh()
            self._live.__exit__(*exc)
            self._live.console.print()
        return False


def add_monitor_parser(sub: Any) -> None:
    """Add ``energyprof monitor`` and ``profile --live`` to the CLI's subparsers."""
    sp = sub.add_parser("monitor", help="live power by domain in the terminal (q or Ctrl-C quits)")
    sp.add_argument("--source", default="auto", help="power source spec (see `energyprof doctor`)")
    sp.add_argument("--interval-ms", type=float, default=None, help="sampling period (default: the source's)")
    sp.add_argument("--duration-s", type=float, default=None, help="stop after this many seconds")
    sp.set_defaults(func=cmd_monitor)
    prof = sub.choices.get("profile")
    if prof is not None:
        prof.add_argument("--live", action="store_true",
                          help="show power, phase, layer and the token stream while generating")


def cmd_monitor(args: Any) -> int:
    """``energyprof monitor``: exit status 0 on q / Ctrl-C / --duration-s, 2 on a bad source."""
    from . import sources
    from .cli import UserError

    if args.interval_ms is not None and not (args.interval_ms > 0):
        raise UserError("--interval-ms must be > 0")
    if args.duration_s is not None and not (args.duration_s > 0):
        raise UserError("--duration-s must be > 0")
    try:
        sources.parse_spec(args.source)
        state = monitor(args.source, interval_ms=args.interval_ms, duration_s=args.duration_s)
    except ValueError as e:
        raise UserError(f"bad --source: {e}")
    except OSError as e:   # missing library, permission denied, no such device
        raise UserError(f"cannot use --source {args.source}: {e}")
    snap = state.snapshot()
    print()
    print(f"{snap['n_samples']} samples over {snap['elapsed_s']:.1f} s, {snap['energy_j']:.3f} J "
          f"({state.source}, {state.label})")
    return 0


# --------------------------------------------------------------------------- Jupyter


class LivePlot:
    """The data behind ``ep.live(s)``: a power timeline with phase bands and a layer heatmap.

    ``figure`` is a plotly figure with three traces: the power line (x: seconds since
    the first sample, y: W), a heatmap of energy per (layer, decode step) and the
    token markers; phase bands are layout shapes.  :meth:`on_sample`,
    :meth:`on_token`, :meth:`on_section` update the data; :meth:`flush` pushes it into
    the figure (inside ``batch_update`` for a FigureWidget).  Tests drive it with a
    plain ``go.Figure``.
    """

    PHASE_COLORS = {"baseline": "rgba(150,150,150,0.15)", "pre_inference": "rgba(120,120,200,0.12)",
                    "prefill": "rgba(230,150,40,0.18)", "decode": "rgba(40,160,90,0.12)",
                    "post_inference": "rgba(120,120,200,0.12)"}

    def __init__(self, figure: Any, n_layers: int = 0) -> None:
        self.figure = figure
        self.n_layers = int(n_layers)
        self._lock = threading.Lock()
        self.t0_ns: Optional[int] = None
        self.x: List[float] = []
        self.y: List[float] = []
        self.bands: List[list] = []                   # [phase, x0, x1 or None]
        self.heat: Dict[int, Dict[int, float]] = {}   # step -> layer -> energy J (from samples per layer)
        self.token_x: List[float] = []
        self.token_n: List[int] = []
        figure.add_scatter(x=[], y=[], mode="lines", name="power (W)")
        figure.add_heatmap(z=[[]], x=[], y=[], name="layer energy (J)", xaxis="x2", yaxis="y2", showscale=False,
                           colorscale="Viridis")
        figure.add_scatter(x=[], y=[], mode="markers", name="tokens", marker={"size": 5})
        figure.update_layout(
            xaxis={"domain": [0, 1], "anchor": "y", "title": "s"},
            yaxis={"domain": [0.45, 1.0], "title": "W"},
            xaxis2={"domain": [0, 1], "anchor": "y2", "title": "decode step"},
            yaxis2={"domain": [0, 0.33], "title": "layer"},
            height=520, margin={"t": 30, "l": 50, "r": 10, "b": 40},
        )

    def _x(self, t_ns: int) -> float:
        if self.t0_ns is None:
            self.t0_ns = t_ns
        return (t_ns - self.t0_ns) * 1e-9

    def on_sample(self, d: dict) -> None:
        with self._lock:
            self._x(d["t_start_ns"])
            self.x.append(self._x(d["t_end_ns"]))
            self.y.append(d["power_w"])
            layer = d.get("layer", -1)
            if layer is not None and layer >= 0 and not math.isnan(d["power_w"]):
                step = d.get("tokens", 0)
                e = d["power_w"] * (d["t_end_ns"] - d["t_start_ns"]) * 1e-9
                row = self.heat.setdefault(int(step), {})
                row[int(layer)] = row.get(int(layer), 0.0) + e

    def on_token(self, d: dict) -> None:
        with self._lock:
            self.token_x.append(self._x(d["t_ns"]))
            self.token_n.append(d["tokens"])

    def on_section(self, d: dict) -> None:
        if d["kind"] != "phase":
            return
        with self._lock:
            x = self._x(d["t_ns"])
            if d["event"] == "begin":
                self.bands.append([d["name"], x, None])
            else:
                for b in reversed(self.bands):
                    if b[0] == d["name"] and b[2] is None:
                        b[2] = x
                        break

    def heatmap(self) -> tuple:
        """(z, steps, layers): energy per (layer, step) seen in samples; NaN where none yet."""
        with self._lock:
            steps = sorted(self.heat)
            n = max([self.n_layers] + [max(r) + 1 for r in self.heat.values() if r])
            z = np.full((n, len(steps)), np.nan)
            for j, st in enumerate(steps):
                for layer, e in self.heat[st].items():
                    z[layer, j] = e
            return z, steps, list(range(n))

    def flush(self) -> None:
        """Copy the data into the figure's traces and shapes."""
        z, steps, layers = self.heatmap()
        with self._lock:
            x, y = list(self.x), list(self.y)
            tx, tn = list(self.token_x), list(self.token_n)
            x_end = x[-1] if x else 0.0
            shapes = [{"type": "rect", "xref": "x", "yref": "paper", "x0": b[1], "x1": b[2] if b[2] is not None
                       else x_end, "y0": 0.45, "y1": 1.0, "fillcolor": self.PHASE_COLORS.get(b[0], "rgba(0,0,0,0.05)"),
                       "line": {"width": 0}, "layer": "below", "name": b[0]} for b in self.bands]
        fig = self.figure
        ctx = fig.batch_update() if hasattr(fig, "batch_update") else contextlib.nullcontext()
        with ctx:
            fig.data[0].x, fig.data[0].y = x, y
            fig.data[1].z = z.tolist() if z.size else [[]]
            fig.data[1].x, fig.data[1].y = steps, layers
            ymax = max([v for v in y if not math.isnan(v)], default=0.0)
            fig.data[2].x, fig.data[2].y = tx, [ymax] * len(tx)
            fig.layout.shapes = shapes


def _require_widgets() -> None:
    missing = []
    for mod, pkg in (("plotly", "plotly"), ("anywidget", "anywidget"), ("ipywidgets", "ipywidgets")):
        try:
            __import__(mod)
        except ImportError:
            missing.append(pkg)
    if "plotly" in missing:
        raise ImportError("ep.live needs plotly: pip install plotly anywidget")
    if "anywidget" in missing and "ipywidgets" in missing:
        raise ImportError("ep.live needs a widget backend for plotly's FigureWidget: pip install anywidget "
                          "(plotly >= 6) or ipywidgets (older plotly)")


def live(session: Any, refresh_ms: float = 250.0) -> Any:
    """Show a live-updating plot of a running session in Jupyter; returns the FigureWidget.

    Call it inside the ``with ep.run(...) as s:`` block (or on a session before
    entering it).  Needs plotly and anywidget (plotly >= 6) or ipywidgets; raises
    ImportError naming the missing package otherwise.
    """
    _require_widgets()
    import plotly.graph_objects as go

    fig = go.FigureWidget()
    n_layers = len(getattr(getattr(session, "_amap", None), "layers", []) or [])
    plot = LivePlot(fig, n_layers=n_layers)
    session.on_sample(plot.on_sample)
    session.on_token(plot.on_token)
    session.on_section(plot.on_section)
    stop = threading.Event()

    def refresher() -> None:
        while not stop.wait(refresh_ms / 1e3):
            plot.flush()
            if getattr(session, "_finished", False):
                plot.flush()
                return

    threading.Thread(target=refresher, name="energyprof-live-plot", daemon=True).start()
    fig._energyprof_plot = plot  # keep the data object alive with the widget
    try:
        from IPython.display import display

        display(fig)
    except ImportError:
        pass
    return fig
