"""A synthetic but internally consistent run, for tests, docs and demos without a model.

:func:`synthetic_run` builds a :class:`energyprof.store.rundata.RunData` the way a real
session would fill it: interval power samples over an idle baseline and the run, the
four phases (pre_inference, prefill, decode, post_inference) plus a user section, one
token row per decode step, and one call row per hooked module (decoder layers, their
attention / MLP containers and leaf projections, model-level embed / final_norm /
lm_head) for the prefill forward and every decode forward.

Every energy figure is the exact integral of the samples over its window (the samples
are piecewise-constant interval averages, so the cumulative energy is piecewise linear
and ``np.interp`` on it is exact).  Hence, by construction:

* the phases partition the run: ``sum(phase energy) == run energy``;
* the token rows partition the decode phase: ``sum(tokens.energy_j) == decode energy``;
* a call's ``unattributed_j`` is its energy minus its children's energies;
* ``net_energy_j == energy_j - baseline_power_w * duration_s``.

>>> from energyprof.testing import synthetic_run
>>> r = synthetic_run(n_layers=2, n_steps=4)
>>> r.summary()["source_label"], len(r.tokens), sorted(set(r.layers["layer"]))
('simulated', 4, [0, 1])
"""
from __future__ import annotations

import datetime as _dt
from typing import Dict, List, Tuple

import numpy as np

from ._dtypes import CALL_DTYPE, DOMAINS, FLAG_UNRESOLVED, SECTION_DTYPE, TOKEN_DTYPE
from .store.rundata import RunData

_MS = 1_000_000  # ns per ms

#: source spec, source kind and sample flag for each label.
_LABELS = {
    "simulated": ("synthetic:load_following,period_ms=2", "synthetic", 1 << 0),
    "estimated": ("estimate:watts_per_core=6", "estimate", 1 << 1),
    "measured": ("rapl", "rapl", 0),
}

# Module timings (ms per decode-step call) and GPU load (0..1) while each one runs.
_LEAF_MS = {
    "input_norm": 0.05, "q_proj": 0.25, "k_proj": 0.12, "v_proj": 0.12, "o_proj": 0.25,
    "post_attn_norm": 0.05, "gate_proj": 0.45, "up_proj": 0.45, "down_proj": 0.45,
    "embed": 0.15, "final_norm": 0.05, "lm_head": 0.9,
}
_LOAD = {
    "input_norm": 0.3, "q_proj": 0.9, "k_proj": 0.8, "v_proj": 0.8, "o_proj": 0.9,
    "post_attn_norm": 0.3, "gate_proj": 1.0, "up_proj": 1.0, "down_proj": 1.0,
    "embed": 0.2, "final_norm": 0.3, "lm_head": 1.0, "sdpa": 0.7, "act": 0.5,
}


class _Timeline:
    """Collects hooked calls and load windows while the fake forward passes are laid out."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.calls: List[dict] = []
        self.gpu_load: List[Tuple[int, int, float]] = []  # (t0_ns, t1_ns, load)
        self.cpu_load: List[Tuple[int, int, float]] = []

    def dur_ns(self, ms: float) -> int:
        # 5 % jitter so that no two calls are exactly alike (as on real hardware).
        return max(1000, int(round(ms * _MS * (1.0 + 0.05 * self.rng.standard_normal()))))

    def call(self, layer: int, component: str, step: int, parent: int, t0: int, t1: int) -> int:
        cid = len(self.calls)
        self.calls.append(dict(call_id=cid, parent_id=parent, layer=layer, component=component,
                               step=step, t_start_ns=t0, t_end_ns=t1))
        return cid

    def leaf(self, layer: int, name: str, step: int, parent: int, t: int, scale: float) -> int:
        t1 = t + self.dur_ns(_LEAF_MS[name] * scale)
        self.call(layer, name, step, parent, t, t1)
        self.gpu_load.append((t, t1, _LOAD[name]))
        return t1 + 10_000  # 10 us launch gap between modules

    def unhooked(self, name: str, t: int, ms: float) -> int:
        """Work inside a container that no hook sees (SDPA, the MLP activation)."""
        t1 = t + self.dur_ns(ms)
        self.gpu_load.append((t, t1, _LOAD[name]))
        return t1

    def forward(self, step: int, t: int, n_layers: int, context: int, scale: float) -> int:
        """Lay out one forward pass starting at ``t``; returns its end."""
        t_start = t
        t = self.leaf(-1, "embed", step, -1, t, scale)
        for layer in range(n_layers):
            # Later layers a little slower, so the heatmaps have structure to show.
            s = scale * (1.0 + 0.08 * layer)
            lid = self.call(layer, "layer", step, -1, t, 0)
            t = self.leaf(layer, "input_norm", step, lid, t, s)
            aid = self.call(layer, "attn", step, lid, t, 0)
            for name in ("q_proj", "k_proj", "v_proj"):
                t = self.leaf(layer, name, step, aid, t, s)
            t = self.unhooked("sdpa", t, (0.15 + 0.01 * context) * s)  # grows with the KV cache
            t = self.leaf(layer, "o_proj", step, aid, t, s)
            self.calls[aid]["t_end_ns"] = t
            t = self.leaf(layer, "post_attn_norm", step, lid, t, s)
            mid = self.call(layer, "mlp", step, lid, t, 0)
            for name in ("gate_proj", "up_proj"):
                t = self.leaf(layer, name, step, mid, t, s)
            t = self.unhooked("act", t, 0.05 * s)
            t = self.leaf(layer, "down_proj", step, mid, t, s)
            self.calls[mid]["t_end_ns"] = t
            t += 20_000  # residual add, outside every component
            self.calls[lid]["t_end_ns"] = t
        t = self.leaf(-1, "final_norm", step, -1, t, scale)
        t = self.leaf(-1, "lm_head", step, -1, t, scale)
        self.gpu_load.append((t_start, t, 0.1))  # kernel queue busy for the whole forward
        self.cpu_load.append((t_start, t, 0.35))  # Python + launch overhead
        return t


def _avg_load(edges: np.ndarray, windows: List[Tuple[int, int, float]]) -> np.ndarray:
    """Time-average of the summed load of ``windows`` over each sample interval."""
    out = np.zeros(len(edges) - 1)
    period = np.diff(edges).astype(np.float64)
    for t0, t1, load in windows:
        i0 = max(int(np.searchsorted(edges, t0, side="right")) - 1, 0)
        i1 = min(int(np.searchsorted(edges, t1, side="left")), len(edges) - 1)
        for i in range(i0, i1):
            ov = min(t1, edges[i + 1]) - max(t0, edges[i])
            if ov > 0:
                out[i] += load * ov
    return out / period


def _integrals(samples: np.ndarray, t0: np.ndarray, t1: np.ndarray) -> Dict[str, np.ndarray]:
    """Exact energy (J) per domain of contiguous interval ``samples`` over [t0, t1)."""
    edges = np.concatenate([samples["t_start_ns"], samples["t_end_ns"][-1:]]).astype(np.float64)
    dt_s = np.diff(edges) / 1e9
    out = {}
    for d in DOMAINS:
        p = np.asarray(samples[f"{d}_w"], dtype=np.float64)
        if np.all(np.isnan(p)):
            out[d] = np.full(len(t0), np.nan)
            continue
        cum = np.concatenate([[0.0], np.cumsum(p * dt_s)])
        out[d] = np.interp(np.asarray(t1, np.float64), edges, cum) - np.interp(np.asarray(t0, np.float64), edges, cum)
    return out


def _fill_energy(arr: np.ndarray, samples: np.ndarray) -> None:
    """Fill duration, per-domain and total energy, sample counts of windows in ``arr``."""
    if len(arr) == 0:
        return
    t0 = arr["t_start_ns"]
    t1 = arr["t_end_ns"]
    arr["duration_s"] = (t1 - t0) / 1e9
    e = _integrals(samples, t0, t1)
    for d in DOMAINS:
        arr[f"{d}_j"] = e[d]
    arr["energy_j"] = e["package"]  # the total rule of this run: the package domain
    # Samples are sorted and contiguous: those wholly inside [t0, t1) are a slice.
    i0 = np.searchsorted(samples["t_start_ns"], t0, side="left")
    i1 = np.searchsorted(samples["t_end_ns"], t1, side="right")
    arr["samples_in_window"] = np.maximum(i1 - i0, 0)
    arr["resolved"] = arr["samples_in_window"] > 0
    arr["flags"] = np.where(arr["resolved"], 0, FLAG_UNRESOLVED)  # contiguous samples: no gaps, no NaN


def synthetic_run(n_layers: int = 4, n_steps: int = 16, seed: int = 0,
                  source_label: str = "simulated", *, batch_size: int = 1,
                  input_tokens: int = 12, sample_period_ms: float = 2.0) -> RunData:
    """A complete, internally consistent fake run of a tiny llama-like model.

    Parameters
    ----------
    n_layers:
        Decoder layers of the fake model (>= 1).
    n_steps:
        Decode steps after the prefill forward (>= 0); the run generates
        ``n_steps + 1`` tokens per sequence (the first comes out of prefill).
    seed:
        Seed of the timing jitter and power noise (same seed, same run).
    source_label:
        ``"simulated"`` (synthetic source), ``"estimated"`` (estimate source) or
        ``"measured"`` (rapl); sets the source fields of the summary and sample flags.
    batch_size, input_tokens:
        Sequences in the batch and prompt length per sequence.
    sample_period_ms:
        Period of the interval power samples.

    Returns
    -------
    RunData
        with ``summary()``, ``samples``, ``sections``, ``tokens``, ``layers``,
        ``components``, ``layer_summary()`` and ``component_summary()``.
    """
    from . import _core

    if source_label not in _LABELS:
        raise ValueError(f"source_label must be one of {', '.join(_LABELS)}, got {source_label!r}")
    if n_layers < 1 or n_steps < 0 or batch_size < 1 or input_tokens < 1:
        raise ValueError("need n_layers >= 1, n_steps >= 0, batch_size >= 1 and input_tokens >= 1")
    rng = np.random.default_rng(seed)
    tl = _Timeline(rng)
    period_ns = int(round(sample_period_ms * _MS))
    t_origin = 10_000 * _MS
    t_base0 = t_origin - 200 * _MS

    # Phases: tokenisation (a user section) inside pre_inference, the prefill forward,
    # the decode forwards separated by sampling overhead, detokenisation afterwards.
    t_tok0, t_tok1 = t_origin + 5 * _MS, t_origin + 20 * _MS
    tl.cpu_load.append((t_tok0, t_tok1, 0.6))
    t_prefill = t_origin + 30 * _MS
    t = tl.forward(0, t_prefill, n_layers, input_tokens, scale=1.0 + 0.25 * input_tokens)
    step_start = []
    step_end = []
    for k in range(1, n_steps + 1):
        t += tl.dur_ns(0.6)  # sampling the next token on the CPU
        tl.cpu_load.append((t - 600_000, t, 0.5))
        step_start.append(t)
        t = tl.forward(k, t, n_layers, input_tokens + k, scale=1.0)
        step_end.append(t)
    t_decode0 = step_start[0] if n_steps else t
    t_decode1 = t
    t_end = t_decode1 + 20 * _MS
    tl.cpu_load.append((t_decode1 + 2 * _MS, t_decode1 + 12 * _MS, 0.4))

    # Interval samples covering the baseline and the run, contiguous.
    n_samples = int(np.ceil((t_end - t_base0) / period_ns))
    edges = t_base0 + period_ns * np.arange(n_samples + 1, dtype=np.int64)
    gpu = _avg_load(edges, tl.gpu_load)
    cpu = _avg_load(edges, tl.cpu_load)
    noise = 1.0 + 0.02 * rng.standard_normal((4, n_samples))
    samples = np.zeros(n_samples, dtype=np.dtype(_core.SAMPLE_DTYPE))
    samples["t_start_ns"] = edges[:-1]
    samples["t_end_ns"] = edges[1:]
    samples["kind"] = int(_core.KIND_INTERVAL)
    samples["flags"] = _LABELS[source_label][2]
    samples["cpu_w"] = (3.0 + 6.0 * cpu) * noise[0]
    samples["gpu_w"] = (1.5 + 20.0 * gpu) * noise[1]
    samples["ane_w"] = np.nan
    samples["dram_w"] = (0.8 + 2.5 * gpu) * noise[2]
    samples["package_w"] = samples["cpu_w"] + samples["gpu_w"] + samples["dram_w"] + 0.5 * noise[3]
    samples["flags"][-1] |= int(_core.SFLAG_FINAL)

    # Sections: run, phases, a user section, the idle baseline.
    sec_rows = [
        (0, -1, "run", "run", t_origin, t_end, 0),
        (1, 0, "phase", "pre_inference", t_origin, t_prefill, 0),
        (2, 0, "phase", "prefill", t_prefill, t_decode0, input_tokens * batch_size),
        (3, 0, "phase", "decode", t_decode0, t_decode1, n_steps * batch_size),
        (4, 0, "phase", "post_inference", t_decode1, t_end, 0),
        (5, 1, "section", "tokenize", t_tok0, t_tok1, 0),
        (6, -1, "baseline", "baseline", t_base0, t_origin, 0),
    ]
    sections = np.zeros(len(sec_rows), dtype=SECTION_DTYPE)
    for i, (sid, pid, kind, name, a, b, ntok) in enumerate(sec_rows):
        sections[i]["section_id"] = sid
        sections[i]["parent_id"] = pid
        sections[i]["kind"] = kind
        sections[i]["name"] = name
        sections[i]["t_start_ns"] = a
        sections[i]["t_end_ns"] = b
        sections[i]["tokens"] = ntok
    _fill_energy(sections, samples)
    base = sections[sections["kind"] == "baseline"][0]
    baseline_power_w = float(base["energy_j"] / base["duration_s"])
    sections["net_energy_j"] = sections["energy_j"] - baseline_power_w * sections["duration_s"]
    for i in range(len(sections)):
        kids = sections["parent_id"] == sections["section_id"][i]
        sections["unattributed_j"][i] = sections["energy_j"][i] - sections["energy_j"][kids].sum()
    sections["tokens"][0] = (input_tokens + n_steps + 1) * batch_size  # all tokens, in and out

    # Tokens: step k runs from its forward's start to the next forward's start.
    tokens = np.zeros(n_steps, dtype=TOKEN_DTYPE)
    if n_steps:
        tokens["step"] = np.arange(1, n_steps + 1)
        tokens["n_tokens"] = batch_size
        tokens["t_start_ns"] = step_start
        tokens["t_end_ns"] = step_start[1:] + [step_end[-1]]
        _fill_energy(tokens, samples)
        tokens["j_per_token"] = tokens["energy_j"] / batch_size

    # Calls: layers and components share the call_id numbering.
    calls = np.zeros(len(tl.calls), dtype=CALL_DTYPE)
    for k in ("call_id", "parent_id", "layer", "component", "step", "t_start_ns", "t_end_ns"):
        calls[k] = [c[k] for c in tl.calls]
    _fill_energy(calls, samples)
    child_sum = np.zeros(len(calls))
    has_parent = calls["parent_id"] >= 0
    np.add.at(child_sum, calls["parent_id"][has_parent], calls["energy_j"][has_parent])
    calls["unattributed_j"] = calls["energy_j"] - child_sum
    for f in ("act_mean", "act_std", "act_max", "act_sparsity", "act_abs_mean"):
        calls[f] = np.nan  # mode="standard": no activation statistics
    is_layer = calls["component"] == "layer"
    layers, components = calls[is_layer], calls[~is_layer]

    # The summary dict, from the arrays above.
    run = sections[0]
    energy_j = float(run["energy_j"])
    duration_s = float(run["duration_s"])
    out_tokens = (n_steps + 1) * batch_size
    in_tokens = input_tokens * batch_size
    in_run = (samples["t_end_ns"] > t_origin) & (samples["t_start_ns"] < t_end)
    phases = {}
    for ph in sections[sections["kind"] == "phase"]:
        ntok = int(ph["tokens"])
        phases[str(ph["name"])] = {
            "energy_j": float(ph["energy_j"]), "net_energy_j": float(ph["net_energy_j"]),
            "duration_s": float(ph["duration_s"]), "tokens": ntok,
            "j_per_token": float(ph["energy_j"] / ntok) if ntok else float("nan"),
            "edp_js": float(ph["energy_j"] * ph["duration_s"]),
        }
    spec, kind, _flag = _LABELS[source_label]
    hidden, inter, vocab = 64, 172, 256
    n_params = vocab * hidden * 2 + n_layers * (4 * hidden * hidden + 3 * hidden * inter + 2 * hidden) + hidden
    summary = {
        "run_id": None, "name": "synthetic-demo", "tags": ["synthetic"], "status": "completed",
        "started_at": _dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=_dt.timezone.utc).isoformat(),
        "t_origin_ns": int(t_origin),
        "source": spec, "source_kind": kind, "source_label": source_label,
        "source_meta": {"generator": "energyprof.testing.synthetic_run", "seed": seed},
        "method": "time-split within sample", "sample_period_s": period_ns / 1e9,
        "mode": "standard", "sync": "none",
        "duration_s": duration_s, "energy_j": energy_j, "net_energy_j": float(run["net_energy_j"]),
        "baseline_power_w": baseline_power_w, "peak_power_w": float(samples["package_w"][in_run].max()),
        "input_tokens": in_tokens, "output_tokens": out_tokens, "batch_size": batch_size,
        "j_per_token": energy_j / (in_tokens + out_tokens), "j_per_output_token": energy_j / out_tokens,
        "tokens_per_j": out_tokens / energy_j, "edp_js": energy_j * duration_s,
        "phases": phases,
        "domains": {d: float(run[f"{d}_j"]) for d in DOMAINS},
        "total_rule": "package", "unattributed_j": float(run["unattributed_j"]),
        "model": {"name": "tiny-llama (random weights)", "arch": "llama", "n_layers": n_layers,
                  "hidden_size": hidden, "n_heads": 4, "n_kv_heads": 2, "intermediate_size": inter,
                  "vocab_size": vocab, "n_params": int(n_params), "n_experts": 0, "experts_per_token": 0,
                  "dtype": "float32"},
        "device": "cpu", "host": "synthetic-host", "chip": "Synthetic CPU (simulated)",
        "versions": {"energyprof": "0.1.0", "torch": "n/a", "transformers": "n/a", "python": "3"},
        "gap_s": 0.0, "flags": int(run["flags"]), "warnings": [],
    }
    from .measure.sources import systematic_uncertainty
    from .store.quality import resolution_summary, uncertainty_summary

    summary["resolution"] = resolution_summary(
        period_ns / 1e9, sections["resolved"][sections["kind"] == "phase"], tokens["resolved"], calls["resolved"],
        gaps={"n": 0, "n_long": 0, "bridged_s": 0.0, "long_s": 0.0, "max_bridge_s": 4 * period_ns / 1e9})
    summary["resolution"]["baseline"] = bool(base["resolved"])
    params = {"watts_per_core": "6"} if kind == "estimate" else {}
    summary["uncertainty"] = uncertainty_summary(systematic_uncertainty(kind, params), energy_j, source_label)
    return RunData(summary, samples=samples, sections=sections, tokens=tokens,
                   layers=layers, components=components)


# --------------------------------------------------------------------------- component ground truth

_ATTN = ("attn", "q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj")
_MLP = ("mlp", "gate_proj", "up_proj", "gate_up_proj", "down_proj", "router", "experts")


def _truth_kind(component: str) -> int:
    """1 attention, 2 MLP, 0 anything else: the synthetic source's view of a hooked call.

    Written from the issue's definition (attn and q/k/v/o; mlp and gate/up/down, MoE
    experts in the MLP), apart from ``_dtypes.COMPONENT_GROUPS``."""
    c = str(component)
    if c in _ATTN:
        return 1
    if c in _MLP or c.startswith("expert."):
        return 2
    return 0


def innermost_segments(calls: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The innermost running hooked call's kind over time, from call rows.

    ``calls``: rows with ``t_start_ns``, ``t_end_ns`` and ``component`` (a run's layers and
    components together).  Returns ``(edges_ns, kind)``: between ``edges_ns[i]`` and
    ``edges_ns[i + 1]`` the innermost call is of ``kind[i]`` (1 attention, 2 MLP, 0 other or
    none).  A plain sweep over begin/end events with an explicit stack, in integer ns.
    """
    events = []
    for c in calls:
        a, b = int(c["t_start_ns"]), int(c["t_end_ns"])
        if b <= a:
            continue
        # At equal times ends go first, then begins of the longer (outer) call first.
        events.append((b, 0, 0, 0))
        events.append((a, 1, -(b - a), _truth_kind(c["component"])))
    events.sort()
    stack: List[int] = []
    edges: List[int] = []
    kinds: List[int] = []
    for t, is_begin, _neg_len, kind in events:
        cur = stack[-1] if stack else 0
        if is_begin:
            stack.append(kind)
        elif stack:
            stack.pop()
        new = stack[-1] if stack else 0
        if new != cur or not edges:
            edges.append(t)
            kinds.append(new)
    return np.asarray(edges, dtype=np.int64), np.asarray(kinds[:-1] if len(kinds) else [], dtype=np.int64)


def _kind_time_ns(edges: np.ndarray, kinds: np.ndarray, kind: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ns of kind ``kind`` inside each [a, b), summed segment by segment (exact ints)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    out = np.zeros(len(a), dtype=np.int64)
    for i in np.flatnonzero(kinds == kind):
        lo, hi = edges[i], edges[i + 1]
        out += np.maximum(np.minimum(b, hi) - np.maximum(a, lo), 0)
    return out


def synthetic_truth_j(run, t_start_ns, t_end_ns) -> np.ndarray:
    """The TRUE energy (J) of each window ``[t_start_ns, t_end_ns)`` of a run measured with
    ``synthetic:power_w=..,attn_w=..,mlp_w=..`` (noise-free terms only):
    ``power_w * dt + attn_w * t_attn + mlp_w * t_mlp``, with the innermost-kind times taken
    from the run's own call timestamps (:func:`innermost_segments`).

    The synthetic parameters come from ``run.summary()["source_meta"]``; a run with a
    square wave, a ramp or ``active_w`` is refused (ValueError): those terms are not modelled
    here.  Not public API: a test oracle.
    """
    meta = run.summary().get("source_meta") or {}
    if run.summary().get("source_kind") != "synthetic":
        raise ValueError("synthetic_truth_j needs a run of the synthetic source")
    for key in ("square_w", "ramp_w_per_s", "active_w"):
        if float(meta.get(key, 0.0)) != 0.0:
            raise ValueError(f"synthetic_truth_j: {key} is not modelled (got {meta[key]})")
    calls = np.concatenate([run.layers[["t_start_ns", "t_end_ns", "component"]],
                            run.components[["t_start_ns", "t_end_ns", "component"]]])
    edges, kinds = innermost_segments(calls)
    a = np.asarray(t_start_ns, dtype=np.int64)
    b = np.asarray(t_end_ns, dtype=np.int64)
    t_attn = _kind_time_ns(edges, kinds, 1, a, b)
    t_mlp = _kind_time_ns(edges, kinds, 2, a, b)
    return (float(meta.get("power_w", 10.0)) * (b - a) + float(meta.get("attn_w", 0.0)) * t_attn
            + float(meta.get("mlp_w", 0.0)) * t_mlp) / 1e9


def truth_table(run) -> Dict[str, np.ndarray]:
    """:func:`synthetic_truth_j` of every row: ``{"samples", "sections", "tokens", "layers",
    "components"}`` -> true J per row (same order as the run's arrays)."""
    out = {}
    for name in ("samples", "sections", "tokens", "layers", "components"):
        arr = run.array(name)
        out[name] = synthetic_truth_j(run, arr["t_start_ns"], arr["t_end_ns"]) if len(arr) else np.zeros(0)
    return out


__all__ = ["synthetic_run", "innermost_segments", "synthetic_truth_j", "truth_table"]
