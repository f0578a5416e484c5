"""``ep.live(s)``: a plotly ``FigureWidget`` in Jupyter with the power timeline, phase bands
and a layer heatmap that fill in as the model runs (:class:`LivePlot`)."""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Any, Dict, List, Optional

import numpy as np

__all__ = ["LivePlot", "live"]


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
        self.token_energy_j: List[float] = []        # the run's energy so far at each token
        self.layer_now: Optional[int] = None         # the latest on_layer event's layer
        self.complete: Optional[dict] = None         # on_complete's summary
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
            self.token_energy_j.append(float(d.get("energy_j", float("nan"))))

    def on_layer(self, d: dict) -> None:
        with self._lock:
            self.layer_now = int(d["layer"])

    def on_complete(self, d: dict) -> None:
        with self._lock:
            self.complete = dict(d.get("summary") or {})

    def title(self) -> str:
        """What the figure's title says: tokens and energy so far, the layer, or the run's total."""
        with self._lock:
            if self.complete is not None:
                s = self.complete
                return (f"done: {s.get('output_tokens')} tokens, {s.get('energy_j', float('nan')):.4g} J, "
                        f"{s.get('j_per_output_token', float('nan')):.4g} J/token")
            n = self.token_n[-1] if self.token_n else 0
            e = self.token_energy_j[-1] if self.token_energy_j else float("nan")
            layer = "" if self.layer_now is None else f", layer {self.layer_now}"
            return f"{n} tokens, {e:.4g} J so far{layer}"

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
            fig.layout.title = self.title()


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
    if hasattr(session, "on_layer"):
        session.on_layer(plot.on_layer)
        session.on_complete(plot.on_complete)
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
