"""Terminal views: the power monitor with sparklines and the ``profile --live`` view.

:class:`MonitorState` is what the view shows (fed by the live feed's callbacks);
:func:`render_monitor` draws it with rich; :class:`LiveProgress` is the
``energyprof profile --live`` view (power, phase, layer and the token stream).
The ``energyprof monitor`` command itself (which opens a sampler) is
:mod:`energyprof.cli.monitor`.
"""
from __future__ import annotations

import collections
import math
import threading
from typing import Any, Deque, Dict, Optional, Sequence

from .._dtypes import DOMAINS

__all__ = ["MonitorState", "sparkline", "render_monitor", "LiveProgress", "SPARK_CHARS"]

#: Characters of the sparklines, lowest to highest.
SPARK_CHARS = "▁▂▃▄▅▆▇█"


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
        self.run_energy_j = float("nan")     # on_token: the run's energy so far
        self.step_energy_j = float("nan")    # on_token: the last step's energy (NaN unless resolved)
        self.done = ""                       # on_complete: the run's closing line

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
            self.run_energy_j = float(d.get("energy_j", float("nan")))
            self.step_energy_j = float(d.get("step_energy_j", float("nan")))

    def on_layer(self, d: dict) -> None:
        with self._lock:
            self.layer = int(d["layer"])

    def on_complete(self, d: dict) -> None:
        with self._lock:
            s = d.get("summary") or {}
            self.done = (f"run {d.get('run_id') if d.get('run_id') is not None else '(not saved)'} "
                         f"{d.get('status')}: {s.get('energy_j', float('nan')):.4g} J, "
                         f"{s.get('j_per_output_token', float('nan')):.4g} J/output token")

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
                "tok_s": self.tok_s, "text": self.text, "run_energy_j": self.run_energy_j,
                "step_energy_j": self.step_energy_j, "done": self.done,
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
        if not math.isnan(snap["run_energy_j"]):
            step = "n/a (unresolved)" if math.isnan(snap["step_energy_j"]) else f"{snap['step_energy_j']:.4g} J"
            parts.append(Text(f"run energy so far {snap['run_energy_j']:.4g} J  last step {step}"))
        if snap["done"]:
            parts.append(Text(snap["done"], style="bold"))
        if snap["text"]:
            parts.append(Panel(Text(snap["text"]), title="tokens", expand=True))
    parts.append(Text("q or Ctrl-C to quit", style="dim"))
    return Panel(Group(*parts), title=state.title, expand=False)


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
        s.on_layer(self.state.on_layer)
        s.on_complete(self.state.on_complete)
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
