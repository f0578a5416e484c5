"""``with ep.run(model) as s:`` — the profiling session.

On enter: the source is opened and its sampler thread started, the idle baseline is
measured, C hooks are registered on the modules that :mod:`energyprof.measure.arch` selects
(the top-level model in every mode; decoder layers, their components and the
model-level modules in ``standard`` and ``deep``).  While the block runs, the C hooks
append timestamps to a span buffer and the sampler fills its ring; when a store is
used, samples are written at least every second.  On exit the hooks are removed
(even when the block raised), the sampler is stopped, every window is integrated
once (:mod:`energyprof.measure.attribution`) and the run is saved with its status.

>>> import energyprof as ep
>>> from energyprof.tiny import tiny_model
>>> model = tiny_model("tiny-llama")
>>> import torch
>>> with ep.run(model, source="synthetic:power_w=10", baseline_s=0, save=False) as s:
...     _ = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
>>> round(s.summary()["energy_j"] / s.summary()["duration_s"], 6)
10.0
"""
from __future__ import annotations

import contextlib
import os
import platform
import sys
import threading
import time
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

import numpy as np

from .. import _core
from .._version import __version__
from ..errors import MissingExtraError
from ..store.quality import uncertainty_summary
from ..store.rundata import RunData
from .attribution import Forward, SpanInfo, UserSection, attribute
from .sources import systematic_uncertainty

MODES = ("minimal", "standard", "deep")
SYNCS = ("auto", "none", "device")

_ACTIVE_MODELS: set = set()
_ACTIVE_LOCK = threading.Lock()

#: How often samples are written to the store while a run goes on (seconds).
SAVE_EVERY_S = 0.5
#: The longest the source is left to settle between the sampler's start and the baseline.
SETTLE_MAX_S = 0.5


class Session(RunData):
    """A profiling session over one model; created by :func:`run`.

    After the ``with`` block it is a :class:`~energyprof.store.rundata.RunData`:
    ``summary()``, ``samples``, ``sections``, ``tokens``, ``layers``,
    ``components``, ``to_pandas(name)``, ``layer_summary()``; plus ``plot()`` and
    ``report()``.
    """

    def __init__(
        self,
        model: Any,
        source: str = "auto",
        mode: str = "standard",
        sync: str = "auto",
        baseline_s: float = 2.0,
        interval_ms: Optional[float] = None,
        db: Any = None,
        save: bool = True,
        name: Optional[str] = None,
        tags: Optional[Iterable[str]] = None,
        hook_method: str = "wrap",
        post_baseline_s: float = 0.0,
        boundary_reads: Optional[bool] = None,
    ) -> None:
        super().__init__()
        try:
            import torch
        except ImportError as e:  # pragma: no cover - torch is a dependency of the session
            raise MissingExtraError("torch", "ep.run") from e
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"ep.run() needs a torch.nn.Module, got {type(model).__name__}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        if sync not in SYNCS:
            raise ValueError(f"sync must be one of {', '.join(SYNCS)}; got {sync!r}")
        if baseline_s is None or not (baseline_s >= 0):
            raise ValueError(f"baseline_s must be >= 0 seconds; got {baseline_s!r}")
        if post_baseline_s is None or not (post_baseline_s >= 0):
            raise ValueError(f"post_baseline_s must be >= 0 seconds; got {post_baseline_s!r}")
        if interval_ms is not None and not (interval_ms > 0):
            raise ValueError(f"interval_ms must be > 0; got {interval_ms!r}")
        self.model = model
        self.source_spec = source
        self.mode = mode
        self.sync = sync
        self.baseline_s = float(baseline_s)
        self.post_baseline_s = float(post_baseline_s)
        self.interval_ms = interval_ms
        self.db = db
        self.save = bool(save)
        self.name = name
        self.tags = [str(t) for t in (tags or [])]
        self.hook_method = hook_method
        self.boundary_reads = boundary_reads
        self._boundary = False
        self._user_sections: List[UserSection] = []
        self._section_stack: List[int] = []
        self._forward_meta: List[dict] = []
        self._finished = False
        self._store = None
        self._sampler = None
        self._hookset = None
        self._saver: Optional[threading.Thread] = None
        self._saver_stop = threading.Event()
        self._samples_written = 0
        self._progress_written: Optional[Dict[str, Any]] = None
        self._save_error: Optional[BaseException] = None
        self._handles: list = []
        # mode="deep" ops (energyprof.measure.deep) and live callbacks (energyprof.live)
        self._deep = None
        self._heads = None
        self._live = None
        self._live_callbacks: Dict[str, list] = {"sample": [], "token": [], "section": []}
        self._event_chunks: List[np.ndarray] = []
        self.live_interval_ms = 100.0

    # ------------------------------------------------------------------ enter
    def __enter__(self) -> "Session":
        key = id(self.model)
        with _ACTIVE_LOCK:
            if key in _ACTIVE_MODELS:
                raise RuntimeError(
                    "this model is already being profiled by an enclosing ep.run(); nested runs on one model are not supported"
                )
            _ACTIVE_MODELS.add(key)
        try:
            self._start()
        except BaseException:
            self._teardown_hooks()
            if self._sampler is not None:
                with contextlib.suppress(Exception):
                    self._sampler.stop()
            with _ACTIVE_LOCK:
                _ACTIVE_MODELS.discard(key)
            raise
        return self

    def _start(self) -> None:
        from . import arch as arch_mod
        from .hooks import HookSet
        from .sampler import Sampler
        from .sources import open as open_source

        self._source = open_source(self.source_spec)
        self._device = _model_device(self.model)
        sync = self.sync
        if sync == "auto":
            sync = "device" if self._device.type in ("cuda", "mps") else "none"
        self._sync_used = sync
        self._amap = arch_mod.describe(self.model)   # warns itself when it falls back
        self._sampler = Sampler(self._source, interval_ms=self.interval_ms)
        self._sampler.start()
        self._wall_start_ns = _core.wall_ns()
        self._baseline = None
        self._settle_s = 0.0
        if self.baseline_s > 0:
            # Let the source settle for one sample period (at most SETTLE_MAX_S) before the
            # baseline: a sensor's first reading after it starts is often off.
            self._settle_s = min(self._sampler.interval_ns * 1e-9, SETTLE_MAX_S)
            time.sleep(self._settle_s)
            b0 = _core.now_ns()
            time.sleep(self.baseline_s)
            self._baseline = (b0, _core.now_ns())

        # span 0 = the top-level forward; 1.. = hooked modules
        targets = arch_mod.hook_targets(self._amap, self.mode)
        self._spans: List[SpanInfo] = [SpanInfo(layer=-1, component="model")]
        qual_to_span: Dict[str, int] = {}
        for ref in targets:
            qual_to_span[ref.qualname] = len(self._spans)
            self._spans.append(SpanInfo(layer=ref.layer, component=ref.component))
        for ref in targets:
            sid = qual_to_span[ref.qualname]
            parent = ref.qualname
            while "." in parent:
                parent = parent.rsplit(".", 1)[0]
                if parent in qual_to_span:
                    self._spans[sid].parent_span = qual_to_span[parent]
                    break
        self._buffer = _core.SpanBuffer()
        self._hookset = HookSet(self._buffer, sync=sync, device=self._device, activity=True, method=self.hook_method)
        top = self._amap.top
        if self.mode == "deep":
            self._install_deep(qual_to_span, sync)   # before the C wrappers, which wrap its forwards
        # The shape hook runs before the C begin hook; it reads the input shapes only.
        self._handles.append(top.register_forward_pre_hook(self._shape_hook, with_kwargs=True))
        # Boundary reads: the source read at each top-level forward's start and end (in C).
        self._boundary = self.boundary_reads is not False and self._sampler._core.supports_boundary
        if self._boundary:
            self._sampler._core.set_boundary_target(True)
        self._hookset.add(top, 0, component="model", boundary=self._boundary)
        for ref in targets:
            self._hookset.add(ref.module, qual_to_span[ref.qualname], component=ref.component)
        if self.mode == "deep":
            self._add_deep_hooks(targets, qual_to_span)

        if self.save:
            from ..store.db import Store

            self._store = self.db if isinstance(self.db, Store) else Store(self.db)
            self._meta = self._run_meta()
            self.run_id_ = self._store.create_run(self._meta)
            self._saver = threading.Thread(target=self._save_loop, name="energyprof-saver", daemon=True)
            self._saver.start()
        else:
            self.run_id_ = None
            self._meta = self._run_meta()
        self._t_start_ns = _core.now_ns()
        if any(self._live_callbacks.values()):
            self._start_live()

    # ------------------------------------------------------------------ deep / live (energyprof.measure.deep, .live)
    def _install_deep(self, qual_to_span: Dict[str, int], sync: str) -> None:
        from .deep import DeepOps
        from .hooks import _sync_plan

        kind, index, fallback = _sync_plan(self._device) if sync == "device" else (_core.SYNC_NONE, 0, None)
        buf = self._buffer

        def make_hook(sid: int, k: int):
            return _core.Hook(buf, sid, k, activity=True, sync=kind, sync_index=index, sync_fallback=fallback)

        self._deep = DeepOps(self._amap, self._spans, qual_to_span, make_hook).plan()
        self._deep.install()

    def _start_live(self) -> None:
        from .live import LiveFeed

        if self._live is None:
            self._live = LiveFeed(self, interval_ms=self.live_interval_ms)
            self._live.start()

    def _on(self, what: str, callback: "Callable[[dict], Any]") -> None:
        if not callable(callback):
            raise TypeError(f"on_{what}: callback must be callable, got {type(callback).__name__}")
        self._live_callbacks[what].append(callback)
        if self._sampler is not None and not self._finished:
            self._start_live()

    def on_sample(self, callback: "Callable[[dict], Any]") -> None:
        """Call ``callback(dict)`` for every power sample while the run goes on (see docs/live.md)."""
        self._on("sample", callback)

    def on_token(self, callback: "Callable[[dict], Any]") -> None:
        """Call ``callback(dict)`` after every top-level forward (one new token per sequence)."""
        self._on("token", callback)

    def on_section(self, callback: "Callable[[dict], Any]") -> None:
        """Call ``callback(dict)`` when a phase or a user section begins or ends."""
        self._on("section", callback)

    @property
    def heads(self) -> np.ndarray:
        """mode="deep": per (attention call, head) statistics (``energyprof._dtypes.HEAD_DTYPE``)."""
        from .._dtypes import HEAD_DTYPE

        return self._heads if self._heads is not None else np.zeros(0, HEAD_DTYPE)

    def _shape_hook(self, module, args, kwargs):
        """Record each top-level forward's input shape.  Reads shapes only, never tensor
        values, so it forces no device synchronisation (the value reads are deferred to
        the end of the run, and done only for forwards that start a generation)."""
        try:
            ids = kwargs.get("input_ids")
            if ids is None and args:
                ids = args[0]
            if ids is None:
                ids = kwargs.get("inputs_embeds")
            shape = tuple(ids.shape) if ids is not None and hasattr(ids, "shape") else (1, 1)
            batch = int(shape[0]) if len(shape) >= 1 else 1
            seq = int(shape[1]) if len(shape) >= 2 else 1
            past = kwargs.get("past_key_values")
            past_len = None             # None: no cache object passed
            if past is not None:
                try:
                    past_len = int(past.get_seq_length())   # from the cache's tensor shapes
                except Exception:
                    past_len = 1
            meta = {"batch": batch, "seq": seq, "past_len": past_len, "cache_position": None, "mask": None,
                    "t_ns": _core.now_ns()}
            if not past_len:            # may start a generation: keep what _forwards reads later
                meta["cache_position"] = kwargs.get("cache_position")
                mask = kwargs.get("attention_mask")
                if mask is not None and hasattr(mask, "shape") and tuple(mask.shape[:2]) == (batch, seq):
                    meta["mask"] = mask
            self._forward_meta.append(meta)
        except Exception as e:  # never break the model
            self._forward_meta.append({"batch": 1, "seq": 1, "past_len": None, "cache_position": None, "mask": None,
                                       "t_ns": _core.now_ns()})
            warnings.warn(f"energyprof: could not read the forward's input shape ({e})", RuntimeWarning)
        return None

    def _add_deep_hooks(self, targets, qual_to_span) -> None:
        """mode="deep": activation statistics of each hooked module's output, in torch."""
        import torch

        self._act_stats: Dict[int, list] = {}

        from .deep import tensor_stats

        def make(sid):
            def hook(module, args, output):
                out = output[0] if isinstance(output, (tuple, list)) else output
                if isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel():
                    st = tensor_stats(out)   # a device tensor: no sync per call; converted in _finish
                else:
                    st = (np.nan,) * 4
                self._act_stats.setdefault(sid, []).append(st)

            return hook

        for ref in targets:
            sid = qual_to_span[ref.qualname]
            self._handles.append(ref.module.register_forward_hook(make(sid)))

    # ------------------------------------------------------------------ sections
    @contextlib.contextmanager
    def section(self, name: str):
        """Mark an explicit section (nests): ``with s.section("tokenize"): ...``."""
        if not isinstance(name, str) or not name:
            raise ValueError("section name must be a non-empty string")
        parent = self._section_stack[-1] if self._section_stack else -1
        idx = len(self._user_sections)
        self._user_sections.append(UserSection(name=name, t_start_ns=_core.now_ns(), t_end_ns=-1, parent=parent))
        self._section_stack.append(idx)
        try:
            yield self
        finally:
            self._section_stack.pop()
            self._user_sections[idx].t_end_ns = _core.now_ns()

    def live_power_w(self) -> float:
        """Power of the latest sample while the run goes on (total over measured domains), NaN if none yet."""
        from .attribution import measured_domains, total_of

        if self._sampler is None:
            return float("nan")
        n = self._sampler.n_samples
        if not n:
            return float("nan")
        last = self._sampler.samples_since(n - 1)[-1:]
        pw = np.array([[last[f"{d}_w"][0] for d in _core.DOMAINS]])
        return float(total_of(pw, measured_domains(last))[0])

    # ------------------------------------------------------------------ saving
    def _save_loop(self) -> None:
        while not self._saver_stop.wait(SAVE_EVERY_S):
            self._save_new_samples()

    def _save_new_samples(self) -> None:
        if self._store is None or self._save_error is not None:
            return
        try:
            self._sampler.drain()
            new = self._sampler.samples_since(self._samples_written)
            if len(new):
                self._store.write_samples(self.run_id_, new)
                self._samples_written += len(new)
            progress = self.progress()
            if progress != self._progress_written:
                self._store.write_progress(self.run_id_, progress)
                self._progress_written = progress
        except Exception as e:  # keep the run in memory; report on exit
            self._save_error = e

    def progress(self) -> Dict[str, Any]:
        """How far the run has got, from the top-level forwards seen so far (provisional:
        the figures of the finished run come from the integration at its end).

        ``{"t_start_ns"`` (start of the run after the idle baseline; None during it),
        ``"phase"`` (baseline, pre_inference, prefill or decode), ``"forwards"`` (top-level
        forwards started), ``"tokens"`` (one per sequence per forward started),
        ``"tok_s"`` (tokens per second between the first and the latest forward's start),
        ``"t_last_forward_ns"``}.  The saver writes it to the store with the samples
        (``summary["progress"]`` while the run is ``running``)."""
        t_start = getattr(self, "_t_start_ns", None)
        metas = list(self._forward_meta)
        out: Dict[str, Any] = {"t_start_ns": t_start, "phase": "baseline" if t_start is None else "pre_inference",
                               "forwards": len(metas), "tokens": 0, "tok_s": None, "t_last_forward_ns": None}
        if not metas:
            return out
        prev_seq = metas[-2].get("seq") if len(metas) > 1 else None
        out["phase"] = "prefill" if forward_is_prefill(metas[-1], len(metas) - 1, prev_seq) else "decode"
        out["tokens"] = int(sum(int(m.get("batch", 1)) for m in metas))
        t0, t1 = metas[0].get("t_ns"), metas[-1].get("t_ns")
        out["t_last_forward_ns"] = t1
        if t0 is not None and t1 is not None and t1 > t0:
            # the tokens of every forward before the latest one, over the time they took
            out["tok_s"] = (out["tokens"] - int(metas[-1].get("batch", 1))) / ((t1 - t0) * 1e-9)
        return out

    # ------------------------------------------------------------------ exit
    def __exit__(self, exc_type, exc, tb) -> bool:
        t_end_ns = _core.now_ns()
        try:
            self._teardown_hooks()
            self._post_baseline = None
            if self.post_baseline_s > 0 and exc_type is None:
                p0 = _core.now_ns()
                time.sleep(self.post_baseline_s)   # idle again, hooks gone: the drift check
                self._post_baseline = (p0, _core.now_ns())
            self._sampler.stop()
            if self._live is not None:
                self._live.stop()   # delivers what is left from its own thread, then joins
            if self._saver is not None:
                self._saver_stop.set()
                self._saver.join()
            status = "completed" if exc_type is None else "interrupted"
            self._finish(t_end_ns, status)
        finally:
            with _ACTIVE_LOCK:
                _ACTIVE_MODELS.discard(id(self.model))
        return False  # never swallow the block's exception

    def _teardown_hooks(self) -> None:
        if self._hookset is not None:
            self._hookset.remove()
        if self._deep is not None:
            self._deep.uninstall()
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._boundary:
            self._sampler._core.set_boundary_target(False)
        _core.set_activity(0)

    def _finish(self, t_end_ns: int, status: str) -> None:
        samples = self._sampler.samples
        events = self._buffer.drain()
        if self._event_chunks:   # drained earlier by the live feed
            events = np.concatenate(self._event_chunks + [events])
            self._event_chunks = []
        top = events[events["span_id"] == 0]
        rest = events[events["span_id"] != 0]
        forwards = self._forwards(top)
        if not forwards and status == "completed":
            warnings.warn("energyprof: the model's forward was never called inside ep.run(): a run with zero tokens",
                          RuntimeWarning)
        for u in self._user_sections:
            if u.t_end_ns < 0:
                u.t_end_ns = t_end_ns
        att = attribute(samples, self._t_start_ns, t_end_ns, forwards, rest, self._spans, self._user_sections,
                        self._baseline, post_baseline=getattr(self, "_post_baseline", None),
                        nominal_period_s=self._sampler.interval_ns * 1e-9)
        calls = att.calls
        if self._boundary:
            self._judge_boundary(samples, att, calls)
        deep_summary = None
        if self.mode == "deep" and len(calls):
            if self._deep is not None:
                from .attribution import pair_events

                span_ids, _, _ = pair_events(rest, len(self._spans))
                self._heads, deep_summary = self._deep.finish(calls, span_ids, self._act_stats)
            self._fill_act_stats(calls, rest)
        is_layer = calls["component"] == "layer"
        is_op = (np.isin(calls["component"], sorted(self._deep.op_components)) if self._deep is not None
                 else np.zeros(len(calls), dtype=bool))
        summary = dict(self._meta)
        summary.update(att.summary)
        summary.update({"run_id": self.run_id_, "status": status})
        summary["baseline_settle_s"] = self._settle_s
        summary["post_baseline_s"] = self.post_baseline_s
        summary["uncertainty"] = uncertainty_summary(systematic_uncertainty(self._source.kind, self._source.params),
                                                     summary["energy_j"], self._source.label)
        for message in summary["warnings"]:
            warnings.warn(f"energyprof: {message}", RuntimeWarning, stacklevel=3)
        if self._buffer.dropped:
            summary["hook_events_dropped"] = int(self._buffer.dropped)
        summary["samples_dropped"] = int(self._sampler.dropped)
        summary["boundary_reads"] = {"enabled": bool(self._boundary),
                                     "reads": int(self._sampler._core.boundary_reads),
                                     "counter_update_period_s": getattr(self, "_counter_update_period_s", None)}
        summary["source_faults"] = int(self._sampler.faults)
        if deep_summary is not None:
            summary["deep"] = deep_summary
        self._summary = summary
        self._samples = samples
        self._sections = att.sections
        self._tokens = att.tokens
        self._layers = calls[is_layer]
        self._components = calls[~is_layer & ~is_op]
        self._ops = calls[is_op]
        self._finished = True
        if self._store is not None:
            try:
                if self._save_error is None:
                    new = samples[self._samples_written:]
                    if len(new):
                        self._store.write_samples(self.run_id_, new)
                self._store.finish_run(self.run_id_, summary, att.sections, att.tokens, self._layers,
                                       self._components, status, ops=self._ops, heads=self._heads,
                                       all_samples=samples)
            except Exception as e:
                self._save_error = self._save_error or e
            finally:
                from ..store.db import Store

                if not isinstance(self.db, Store):   # we opened it: everything is committed, close it
                    try:
                        self._store.close()
                    except Exception as e:
                        self._save_error = self._save_error or e
                    self._store = None
            if self._save_error is not None:
                warnings.warn(
                    f"energyprof: the run could not be saved ({self._save_error}); its data is still available on "
                    "this session object", RuntimeWarning)

    def _judge_boundary(self, samples: np.ndarray, att: Any, calls: np.ndarray) -> None:
        """Rows shorter than the counter's own update period (measured from this run's
        readings) are not resolved, whatever the boundary reads put inside them."""
        from ..store.quality import resolution_summary
        from .boundary import counter_update_period_s, judge_resolved

        period_s = max(counter_update_period_s(samples), self._sampler._core.counter_still_ns * 1e-9)
        self._counter_update_period_s = period_s
        for rows in (att.sections, att.tokens, calls):
            judge_resolved(rows, period_s)
        # The note names the poll period (boundary pieces would make the median sample look
        # short) and says that readings were also taken at the forwards' edges.
        old = att.summary["resolution"]
        phases = att.sections["resolved"][att.sections["kind"] == "phase"]
        new = resolution_summary(self._sampler.interval_ns * 1e-9, phases, att.tokens["resolved"],
                                 calls["resolved"] if len(calls) else None, gaps=old.get("gaps"))
        new["baseline"] = old.get("baseline")
        new["note"] += "; plus readings at every forward's start and end"
        if period_s > 0:
            new["note"] += f" (the counter updates every {period_s * 1e3:.3g} ms or slower)"
        att.summary["resolution"] = new

    def _forwards(self, top_events: np.ndarray) -> List[Forward]:
        from .attribution import pair_events

        _, begins, ends = pair_events(top_events, 1)
        order = np.argsort(begins, kind="stable")
        begins, ends = begins[order], ends[order]
        metas = self._forward_meta
        if len(metas) != len(begins):
            # a forward raised (begin without end) or a hook was disabled: align from the start
            metas = metas[: len(begins)]
        out: List[Forward] = []
        prev_seq = None
        blank = {"batch": 1, "seq": 1, "past_len": None, "cache_position": None, "mask": None}
        for i, (b, e) in enumerate(zip(begins.tolist(), ends.tolist())):
            m = metas[i] if i < len(metas) else blank
            prefill = forward_is_prefill(m, i, prev_seq)
            prev_seq = m["seq"]
            real = m["batch"] * m["seq"]
            if prefill and m["mask"] is not None:
                real = int(m["mask"].sum())       # unpadded input tokens
            out.append(Forward(t_start_ns=b, t_end_ns=e, batch=m["batch"], new_positions=m["seq"],
                               input_tokens=real if prefill else 0, prefill=prefill))
        self._forward_meta = []                    # drop the kept tensors
        return out

    def _fill_act_stats(self, calls: np.ndarray, events: np.ndarray) -> None:
        # Calls come back sorted by begin; the stats hooks fire in end order per span.
        # Match per span id in call order (end order == begin order for non-recursive modules).
        from .attribution import pair_events

        span_ids, begins, _ = pair_events(events, len(self._spans))
        for sid, lst in self._act_stats.items():   # deep.tensor_stats tensors -> tuples, one transfer per span
            if any(not isinstance(x, tuple) for x in lst):
                import torch

                nan4 = torch.full((4,), float("nan"), dtype=torch.float64)
                rows = torch.stack([r if isinstance(r, torch.Tensor) else nan4 for r in
                                    [x.cpu() if isinstance(x, torch.Tensor) else nan4 for x in lst]])
                self._act_stats[sid] = [tuple(r) for r in rows.tolist()]
        cursor: Dict[int, int] = {}
        for i, sid in enumerate(span_ids.tolist()):
            stats = self._act_stats.get(sid, [])
            k = cursor.get(sid, 0)
            cursor[sid] = k + 1
            if k < len(stats):
                calls["act_mean"][i], calls["act_std"][i], calls["act_max"][i], calls["act_sparsity"][i] = stats[k]

    # ------------------------------------------------------------------ metadata
    def _run_meta(self) -> Dict[str, Any]:
        import torch

        try:
            import transformers

            tf_version = transformers.__version__
        except Exception:  # pragma: no cover
            tf_version = None
        cfg = dict(self._amap.config)
        model_info = {"name": cfg.get("name_or_path") or type(self.model).__name__, "arch": self._amap.arch}
        model_info.update({k: v for k, v in cfg.items() if k != "name_or_path"})
        src = self._source
        return {
            "name": self.name,
            "tags": list(self.tags),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._wall_start_ns / 1e9)),
            "t_origin_ns": None,
            "source": src.spec,
            "source_kind": src.kind,
            "source_label": src.label,
            "source_meta": _json_or_empty(getattr(self._sampler, "meta_json", "")),
            "source_requested": getattr(src, "requested", src.spec),
            "source_auto": list(getattr(src, "extra", {}).get("auto", [])),
            "mode": self.mode,
            "sync": self._sync_used,
            "baseline_s": self.baseline_s,
            "model": model_info,
            "device": str(self._device),
            "host": platform.node(),
            "chip": platform.processor() or platform.machine(),
            "versions": {
                "energyprof": __version__,
                "torch": torch.__version__,
                "transformers": tf_version,
                "python": sys.version.split()[0],
            },
        }

    # ------------------------------------------------------------------ read side
    def _need_finished(self) -> None:
        if not self._finished:
            raise RuntimeError("the run is still in progress: read results after the `with ep.run(...)` block")

    def summary(self) -> Dict[str, Any]:
        """The run's summary dict (see docs/api.md): J, J/token, tokens/J, EDP, phases, domains."""
        self._need_finished()
        return super().summary()

    @property
    def run_id(self) -> Optional[int]:
        """The run's id in the store (None when ``save=False``)."""
        return self.run_id_ if hasattr(self, "run_id_") else None

    def plot(self, kind: str = "timeline", **kw):
        """A figure of this run (see :func:`energyprof.views.plot.plot` for the kinds)."""
        self._need_finished()
        from ..views.plot import plot

        return plot(self, kind=kind, **kw)

    def report(self, path: Union[str, os.PathLike], **kw):
        """Write the self-contained HTML report of this run; returns its path."""
        self._need_finished()
        from ..views.report import write_report

        return write_report(self, path, **kw)


def forward_is_prefill(meta: Dict[str, Any], index: int, prev_seq: Optional[int]) -> bool:
    """Whether a top-level forward starts a generation (prefill) rather than decoding a step.

    ``meta`` is what the session's shape hook recorded for forward number ``index``;
    ``prev_seq`` the previous forward's sequence length.  A cache object tells it
    directly (empty = prefill); else ``cache_position`` starting at 0; else, with no
    cache at all (``use_cache=False``), the first forward, or one whose input is not
    the previous one grown by a token.
    """
    if meta.get("past_len") is not None:
        return meta["past_len"] == 0
    cp = meta.get("cache_position")
    if cp is not None and cp.numel():
        return int(cp.reshape(-1)[0]) == 0
    seq = meta.get("seq", 1)
    return index == 0 or (seq > 1 and (prev_seq is None or seq != prev_seq + 1))


def _json_or_empty(text: str) -> dict:
    import json

    if not text:
        return {}
    try:
        return json.loads(text)
    except ValueError:
        return {"raw": text}


def _model_device(model):
    """The device of the model's first parameter or buffer (cpu when it has none)."""
    from .hooks import _module_device

    return _module_device(model)


def run(
    model: Any,
    source: str = "auto",
    mode: str = "standard",
    sync: str = "auto",
    baseline_s: float = 2.0,
    interval_ms: Optional[float] = None,
    db: Any = None,
    save: bool = True,
    name: Optional[str] = None,
    tags: Optional[Iterable[str]] = None,
    hook_method: str = "wrap",
    post_baseline_s: float = 0.0,
    boundary_reads: Optional[bool] = None,
) -> Session:
    """Profile the energy of everything a model does inside a ``with`` block.

    Parameters
    ----------
    model: the ``torch.nn.Module`` (a Hugging Face ``*ForCausalLM``) to hook.
    source: a source spec (``"auto"``, ``"synthetic:power_w=20"``, ``"nvml"``, ``"rapl"``,
        ``"plist:capture.plist"``, ``"powermetrics"``, ``"estimate"``; see docs/sources.md).
    mode: ``"minimal"`` (phases and tokens), ``"standard"`` (+ layers and components),
        ``"deep"`` (+ the ops inside attention, MLP and norms in ``s.ops``, per-head
        statistics in ``s.heads``, activation statistics; see docs/deep.md).
    sync: ``"auto"`` (device sync on cuda/mps, none on cpu), ``"none"``, ``"device"``.
    baseline_s: seconds of idle power measured before the run (0 skips it), after the
        source settled for one sample period (at most 0.5 s).
    post_baseline_s: seconds of idle power measured after the block (0, the default,
        skips it): ``summary()["baseline_drift_w"]`` says how far idle power moved.
    interval_ms: sampling period (default: the source's own).
    db, save: where the run is stored (default ``$ENERGYPROF_DB`` or the user data dir);
        ``save=False`` keeps it in memory only.
    name, tags: labels stored with the run.
    hook_method: ``"wrap"`` (default: a C wrapper of each module's ``forward``, ~0.1 µs a call) or
        ``"hooks"`` (torch forward hooks; torch's own hook dispatch costs ~1.4 µs a call).
    boundary_reads: read the source also at each top-level forward's start and end (from the C
        hook, without the GIL), so phases and decode steps are integrated from readings at their
        edges.  ``None`` (default) or ``True``: where the source supports it (counter sources:
        rapl, nvml, ioreport, estimate; and synthetic); ``False``: the periodic poll only.

    Returns a :class:`Session`; use it as a context manager.
    """
    return Session(model, source=source, mode=mode, sync=sync, baseline_s=baseline_s, interval_ms=interval_ms,
                   db=db, save=save, name=name, tags=tags, hook_method=hook_method, post_baseline_s=post_baseline_s,
                   boundary_reads=boundary_reads)
