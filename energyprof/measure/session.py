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
from .._dtypes import concat_records
from ..errors import MissingExtraError
from ..store.quality import uncertainty_summary
from ..store.rundata import RunData, sample_row_dtype, with_rank
from . import callstream as _callstream
from .integrate import median as _integrate_median
from .attribution import PIECE_CALLS, Forward, SpanInfo, UserSection, attribute
from .sources import systematic_uncertainty

MODES = ("minimal", "standard", "deep")
SYNCS = ("auto", "none", "device")

_ACTIVE_MODELS: set = set()
_ACTIVE_LOCK = threading.Lock()

#: How often samples are written to the store while a run goes on (seconds).
SAVE_EVERY_S = 0.5
#: The longest the source is left to settle between the sampler's start and the baseline.
SETTLE_MAX_S = 0.5
#: Hook events the C span buffer holds between two background drains (16 bytes each).
SPAN_BUFFER_EVENTS = 1 << 22


def _input_shape(args, kwargs, first: Optional[str] = None) -> tuple:
    """The shape of a forward's input: ``kwargs[first]`` (e.g. a decoder's
    ``decoder_input_ids``), else ``input_ids``, the first positional argument or
    ``inputs_embeds``; (1, 1) when none has a shape."""
    ids = kwargs.get(first) if first else None
    if ids is None:
        ids = kwargs.get("input_ids")
    if ids is None and args:
        ids = args[0]
    if ids is None:
        ids = kwargs.get("inputs_embeds")
    return tuple(ids.shape) if ids is not None and hasattr(ids, "shape") else (1, 1)


class _EventDrain:
    """Moves the hook events from the C span buffer (which holds at most
    SPAN_BUFFER_EVENTS) into numpy chunks while the run goes, from the shared background
    drain thread: a long run keeps every event (16 bytes each) instead of filling the
    buffer and dropping the rest."""

    def __init__(self, buffer: "_core.SpanBuffer", chunks: List[np.ndarray]) -> None:
        self.buffer = buffer
        self.chunks = chunks          # the session's list: appended in order, under the lock
        self.lock = threading.Lock()
        self.closed = False

    def drain(self) -> None:
        with self.lock:
            if not self.closed:
                ev = self.buffer.drain()
                if len(ev):
                    self.chunks.append(ev)

    def close(self) -> None:
        """The last drain; later calls (one the background thread had started) do nothing,
        so whoever drains the buffer next appends after every chunk moved here."""
        self.drain()
        with self.lock:
            self.closed = True


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
        engine: Optional[str] = None,
        distributed: Any = "auto",
        post_baseline_s: float = 0.0,
        stats_every: int = 1,
        store_text: bool = True,
        tokenizer: Any = None,
        sparse_below: Optional[float] = None,
        kill_below: Optional[float] = None,
        power_limit_w: Any = None,
        boundary_reads: Optional[Union[bool, str]] = None,
        max_calls_in_memory: Optional[int] = _callstream.MAX_CALLS_IN_MEMORY,
    ) -> None:
        super().__init__()
        try:
            import torch
        except ImportError as e:  # pragma: no cover - torch is a dependency of the session
            raise MissingExtraError("torch", "ep.run") from e
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"ep.run() needs a torch.nn.Module (or None for an engine without hooks: mark its "
                            f"tokens with s.mark_prefill_end() / s.mark_token()), got {type(model).__name__}")
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
        if boundary_reads not in (None, True, False, "sync"):
            raise ValueError(f"boundary_reads must be None, True, False or 'sync'; got {boundary_reads!r}")
        if isinstance(stats_every, bool) or not isinstance(stats_every, int) or stats_every < 1:
            raise ValueError(f"stats_every must be an integer >= 1 (statistics on every Nth call); got {stats_every!r}")
        self.stats_every = stats_every
        from . import deep as _deep
        from .limits import power_limits

        self.sparse_below = _threshold("sparse_below", sparse_below, _deep.SPARSE_BELOW)
        self.kill_below = _threshold("kill_below", kill_below, _deep.KILL_BELOW)
        power_limits(None, None, power_limit_w)   # a bad stated limit fails here, before anything starts
        self.power_limit_w = power_limit_w
        self.store_text = bool(store_text)
        self.tokenizer = tokenizer
        self._texts_given: Dict[str, Any] = {}
        self._generations: List[dict] = []
        self._generation_opts: Dict[str, Any] = {}
        self._generate_wrapped = False
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
        self.engine = None if engine is None else str(engine)
        self.distributed = distributed
        self._dist = None                          # RankInfo of a multi-rank run (energyprof.measure.distributed)
        # ep.run(None): the caller's marks (s.mark_prefill_end / s.mark_token) stand for forwards
        self._gen_start_ns: Optional[int] = None   # mark_prefill_start of the current generation
        self._gen_pending: tuple = (None, 1)       # (input_tokens, batch) given to mark_prefill_start
        self._in_decode = False                    # the current generation's prefill has ended
        self._gen_batch, self._gen_steps = 1, 0
        self._last_mark_ns: Optional[int] = None   # end of the last marked slot
        self._token_texts: List[tuple] = []        # (seq, step, text) given to mark_token
        self._mark_generations = 0                 # generations begun by marks (ep.run(None))
        self._marks_lock = threading.Lock()
        self.boundary_reads = boundary_reads
        if max_calls_in_memory is not None:
            _check_count("max_calls_in_memory", max_calls_in_memory, zero=True)
        self.max_calls_in_memory = None if max_calls_in_memory is None else int(max_calls_in_memory)
        self._calls_in_store = None        # (store or its path, run id): the call rows were streamed there
        self._boundary = False
        self._boundary_sync = False
        self._user_sections: List[UserSection] = []
        self._section_stack: List[int] = []
        self._forward_meta: List[dict] = []
        self._encoder_meta: List[dict] = []
        self._encoder_span = -1             # span id of a seq2seq model's encoder stack (-1: none)
        self._router = None                 # MoE: routed-token counts (energyprof.measure.moe)
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
        self._act = None            # mode="deep": activation statistics (deep.ActivationStats)
        self._heads = None
        self._live = None
        self._live_callbacks: Dict[str, list] = {"sample": [], "token": [], "section": [], "layer": []}
        self._complete_callbacks: list = []
        self.layer_max_per_s = 10.0
        self._event_chunks: List[np.ndarray] = []
        self._event_drain: Optional[_EventDrain] = None
        self.live_interval_ms = 100.0

    # ------------------------------------------------------------------ enter
    def __enter__(self) -> "Session":
        key = id(self.model) if self.model is not None else ("session", id(self))
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
        self._active_key = key
        return self

    def _start(self) -> None:
        from . import arch as arch_mod
        from .hooks import HookSet
        from .sampler import Sampler
        from .sources import open as open_source

        self._source = open_source(self.source_spec)
        self._dist = self._setup_distributed()
        # The activity level and component stack the hooks keep are read by the synthetic
        # source alone (active_w, attn_w, mlp_w): with any other source the hooks skip them.
        self._activity = self._source.kind == "synthetic"
        if self.model is None:
            import torch

            self._device = torch.device("cpu")
            self._sync_used = sync = "none"
            self._amap = None
        else:
            self._device = _model_device(self.model)
            sync = self.sync
            if sync == "auto":
                sync = "device" if self._device.type in ("cuda", "mps") else "none"
            self._sync_used = sync
            self._amap = arch_mod.describe(self.model)   # warns itself when it falls back
        if self._dist is not None and not self._dist.samples:
            from .distributed import NoSampler

            self._sampler = NoSampler(self._source)   # a host-wide source: its host leader samples it
        else:
            self._sampler = Sampler(self._source, interval_ms=self.interval_ms)
        samples_here = self._dist is None or self._dist.samples    # a rank that samples nothing reads nothing
        if self.boundary_reads == "sync" and self.model is not None and samples_here and not (
                self._sampler.supports_boundary and self._sampler.supports_sync):
            raise ValueError(f"boundary_reads='sync' needs a counter that moves in updates and can be waited on "
                             f"(rapl); the source {self._source.kind!r} has none: use boundary_reads=True")
        # One process: the thread starts the source while the hooks go on (wait_started()
        # below, before anything reads the source's metadata or the run's start time).
        if self._dist is None:
            self._sampler.start(wait=False)
        else:
            self._sampler.start()
        if self._dist is not None:
            from .distributed import exchange_clocks

            exchange_clocks(self._dist, _core.now_ns)
        self._wall_start_ns = _core.wall_ns()
        self._baseline = None
        self._settle_s = 0.0
        if self.baseline_s > 0:
            if self._dist is None:
                self._sampler.wait_started()
            # Let the source settle for one sample period (at most SETTLE_MAX_S) before the
            # baseline: a sensor's first reading after it starts is often off.
            self._settle_s = min(self._sampler.interval_ns * 1e-9, SETTLE_MAX_S)
            time.sleep(self._settle_s)
            b0 = _core.now_ns()
            time.sleep(self.baseline_s)
            self._baseline = (b0, _core.now_ns())

        # span 0 = the top-level forward (or, without a model, the caller's marks); 1.. = hooked modules
        targets = arch_mod.hook_targets(self._amap, self.mode) if self._amap is not None else []
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
        if self._amap is not None and self._amap.encoder is not None:   # its calls are the `encode` phase
            self._encoder_span = len(self._spans)
            self._spans.append(SpanInfo(layer=-1, component="encoder"))
        self._buffer = _core.SpanBuffer(capacity=SPAN_BUFFER_EVENTS)
        if not any(self._live_callbacks.values()):   # (the live feed drains the buffer itself)
            from .sampler import drain_in_background

            self._event_drain = _EventDrain(self._buffer, self._event_chunks)
            drain_in_background(self._event_drain)
        if self._amap is not None:
            self._hookset = HookSet(self._buffer, sync=sync, device=self._device, activity=self._activity,
                                    method=self.hook_method)
            top = self._amap.top
            if self.mode == "deep":
                self._install_deep(qual_to_span, sync)   # before the C wrappers, which wrap its forwards
            # The shape hook runs before the C begin hook; it reads the input shapes only.
            self._handles.append(top.register_forward_pre_hook(self._shape_hook, with_kwargs=True))
            # Boundary reads: the source read at each top-level forward's start and end (in C).
            self._boundary = self.boundary_reads is not False and self._sampler.supports_boundary
            self._boundary_sync = self.boundary_reads == "sync" and self._boundary
            if self._boundary:
                self._sampler.set_boundary_target(True)
            self._hookset.add(top, 0, component="model", boundary=self._boundary)
            if self._encoder_span >= 0:
                enc = self._amap.encoder.module
                self._handles.append(enc.register_forward_pre_hook(self._encoder_shape_hook, with_kwargs=True))
                self._hookset.add(enc, self._encoder_span)
            act = self._activation_stats()
            wrap_stats = act.wrap_options() if act is not None and self.hook_method == "wrap" else None
            for ref in targets:
                self._hookset.add(ref.module, qual_to_span[ref.qualname], component=ref.component, stats=wrap_stats)
            if act is not None and wrap_stats is None:
                self._add_deep_hooks(targets, qual_to_span)
            if self.mode != "minimal":
                from .moe import RouterRecorder

                self._router = RouterRecorder(self._amap)
                self._router.install()
            self._wrap_generate()

        if self._dist is None:
            self._sampler.wait_started()   # the source's start errors raise here (the hooks come off again)
        if self.save and (self._dist is None or self._dist.rank == 0):   # rank 0 saves a multi-rank run
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

    def _setup_distributed(self):
        """A multi-rank run (energyprof.measure.distributed): this rank's RankInfo, else None.
        A collective when the process group is used; an ``nvml`` source without ``index=``
        is reopened on the rank's local device."""
        from .distributed import resolve_mode, setup
        from .sources import format_spec, open as open_source

        use, group = resolve_mode(self.distributed)
        if not use:
            return None
        info = setup(self._source.kind, group)
        if self._source.kind == "nvml" and "index" not in self._source.params and "devices" not in self._source.params:
            self._source = open_source(format_spec("nvml", {**self._source.params, "index": str(info.local_rank)}))
        return info

    def _merge_ranks(self, att, forwards, status: str, samples: np.ndarray, t_end_ns: int) -> str:
        """Exit of a multi-rank run: send this rank's run to rank 0, or (rank 0) receive every
        rank's and replace this session's rows by the merged run; returns the run's status."""
        from . import distributed as dm

        info = self._dist
        calls = {"layers": self._layers, "components": self._components, "ops": self._ops}
        mine = dm.payload(self, info, att, forwards, status, calls, samples, t_end_ns)
        if info.rank != 0:
            sent = True
            try:
                dm.send_to_rank0(mine)
            except Exception as e:
                sent = False
                warnings.warn(f"energyprof: rank {info.rank} could not send its run to rank 0 ({e}); its data is "
                              "still available on this session object", RuntimeWarning)
            self._summary["distributed"] = {"rank": info.rank, "world_size": info.world_size, "saved_by_rank": 0,
                                            "sent_to_rank0": sent,
                                            "exit_problems": list(getattr(self, "_dist_wait_problems", []))}
            return status
        others, errors = dm.receive_on_rank0(info.world_size)
        try:
            m = dm.merge([mine] + others[1:], errors)
        except Exception as e:  # never lose rank 0's own run over a failed merge
            warnings.warn(f"energyprof: the ranks' runs could not be merged ({type(e).__name__}: {e}); rank 0's "
                          "own run is saved, marked interrupted", RuntimeWarning)
            self._summary["distributed"] = {"rank": 0, "world_size": info.world_size, "merge_error": str(e)}
            return "interrupted"
        for message in errors:
            warnings.warn(f"energyprof: {message}", RuntimeWarning, stacklevel=4)
        summary = dict(self._summary)
        summary.update(m["summary"])
        summary["distributed"]["exit_problems"] = list(getattr(self, "_dist_wait_problems", []))
        summary["status"] = m["status"]
        summary["uncertainty"] = uncertainty_summary(systematic_uncertainty(self._source.kind, self._source.params),
                                                     summary["energy_j"], summary["source_label"])
        self._summary = summary
        self._samples, self._sections, self._tokens = m["samples"], m["sections"], m["tokens"]
        self._layers, self._components, self._ops = m["layers"], m["components"], m["ops"]
        self._ranks, self._rank_sections, self._rank_tokens = m["ranks"], m["rank_sections"], m["rank_tokens"]
        return m["status"]

    # ------------------------------------------------------------------ deep / live (energyprof.measure.deep, .live)
    def _install_deep(self, qual_to_span: Dict[str, int], sync: str) -> None:
        from .deep import DeepOps
        from .hooks import _sync_plan

        kind, index, fallback = _sync_plan(self._device) if sync == "device" else (_core.SYNC_NONE, 0, None)
        buf = self._buffer

        def make_hook(sid: int, k: int):
            return _core.Hook(buf, sid, k, activity=self._activity, sync=kind, sync_index=index,
                              sync_fallback=fallback)

        self._deep = DeepOps(self._amap, self._spans, qual_to_span, make_hook, stats_every=self.stats_every,
                             sparse_below=self.sparse_below, kill_below=self.kill_below).plan()
        self._deep.install()

    def _start_live(self) -> None:
        from .live import LiveFeed

        if self._live is None:
            if self._event_drain is not None:   # the live feed drains the span buffer from now on
                from .sampler import end_background_drain

                end_background_drain(self._event_drain)
                self._event_drain.close()
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

    def on_layer(self, callback: "Callable[[dict], Any]", max_per_s: float = 10.0) -> None:
        """Call ``callback(dict)`` when a decoder layer's call ends, at most ``max_per_s`` times
        per second of run time (the calls in between are counted in ``skipped``)."""
        if not (max_per_s > 0):
            raise ValueError(f"on_layer: max_per_s must be > 0, got {max_per_s!r}")
        self.layer_max_per_s = float(max_per_s)
        if self._live is not None:
            self._live.layer_max_per_s = self.layer_max_per_s
        self._on("layer", callback)

    def on_complete(self, callback: "Callable[[dict], Any]") -> None:
        """Call ``callback(dict)`` once the run is finished and saved, from the thread that left
        the ``with`` block: ``{"run_id", "status", "summary"}`` (the summary dict)."""
        if not callable(callback):
            raise TypeError(f"on_complete: callback must be callable, got {type(callback).__name__}")
        self._complete_callbacks.append(callback)

    def _complete(self) -> None:
        if not self._complete_callbacks:
            return
        payload = {"run_id": self.run_id, "status": self._summary.get("status"), "summary": self.summary()}
        for cb in self._complete_callbacks:
            try:
                cb(payload)
            except Exception as e:  # the run is saved: a broken callback only warns
                warnings.warn(f"energyprof: on_complete callback {cb!r} raised {type(e).__name__}: {e}",
                              RuntimeWarning)

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
            encdec = self._amap.kind == "encoder-decoder"
            shape = _input_shape(args, kwargs, "decoder_input_ids" if encdec else None)
            batch = int(shape[0]) if len(shape) >= 1 else 1
            seq = int(shape[1]) if len(shape) >= 2 else 1
            past = kwargs.get("past_key_values")
            if past is None:
                past = kwargs.get("cache")   # transformers >= 5.2x passes the cache as `cache`
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
                mask = kwargs.get("decoder_attention_mask" if encdec else "attention_mask")
                if mask is not None and hasattr(mask, "shape") and tuple(mask.shape[:2]) == (batch, seq):
                    meta["mask"] = mask
            self._forward_meta.append(meta)
        except Exception as e:  # never break the model
            self._forward_meta.append({"batch": 1, "seq": 1, "past_len": None, "cache_position": None, "mask": None,
                                       "t_ns": _core.now_ns()})
            warnings.warn(f"energyprof: could not read the forward's input shape ({e})", RuntimeWarning)
        return None

    def _encoder_shape_hook(self, module, args, kwargs):
        """A seq2seq encoder's input shape and mask (its real tokens are the run's input tokens)."""
        try:
            shape = _input_shape(args, kwargs)
            mask = kwargs.get("attention_mask")
            if mask is None and len(args) > 1:
                mask = args[1]
            keep = mask if (mask is not None and hasattr(mask, "shape") and tuple(mask.shape[:2]) == shape[:2]) else None
            self._encoder_meta.append({"batch": int(shape[0]) if shape else 1,
                                       "seq": int(shape[1]) if len(shape) > 1 else 1, "mask": keep})
        except Exception as e:  # never break the model
            self._encoder_meta.append({"batch": 1, "seq": 1, "mask": None})
            warnings.warn(f"energyprof: could not read the encoder's input shape ({e})", RuntimeWarning)
        return None

    def _activation_stats(self):
        """mode="deep": the :class:`~energyprof.measure.deep.ActivationStats` of the run, else None."""
        from . import deep

        if self.mode != "deep" or not deep.ACTIVATION_STATISTICS:
            return None
        self._act = deep.ActivationStats(self.stats_every, self.sparse_below)
        return self._act

    def _add_deep_hooks(self, targets, qual_to_span) -> None:
        """mode="deep" with hook_method="hooks": the activation statistics through Python forward
        hooks (with "wrap" the C wrappers take them, see :meth:`_activation_stats`)."""
        for ref in targets:
            self._handles.append(ref.module.register_forward_hook(self._act.forward_hook(qual_to_span[ref.qualname])))

    # ------------------------------------------------------------------ text and generation options
    def _wrap_generate(self) -> None:
        """Wrap ``model.generate`` (an instance attribute, for the run only) to keep what each
        call was given and returned: the token ids (decoded at the end when a tokenizer was
        given) and the generation options (``summary()["generation"]``)."""
        gen = getattr(self.model, "generate", None)
        if not callable(gen):
            return

        def generate(*args, **kwargs):
            if getattr(self, "_boundary_sync", False):
                self._sampler.arm_sync(2)   # the prefill's edges: the first forward's start and the second's
            out = gen(*args, **kwargs)
            try:
                self._record_generate(args, kwargs, out)
            except Exception as e:  # never break the model's output
                warnings.warn(f"energyprof: could not record the generate() call ({e})", RuntimeWarning)
            return out

        self.model.generate = generate
        self._generate_wrapped = True

    def _unwrap_generate(self) -> None:
        if self._generate_wrapped:
            self._generate_wrapped = False
            with contextlib.suppress(AttributeError):
                del self.model.generate   # the class's method shows through again

    def _record_generate(self, args: tuple, kwargs: dict, out: Any) -> None:
        ids = kwargs.get("input_ids")
        if ids is None and args:
            ids = args[0]
        seqs = getattr(out, "sequences", out)
        cfg = getattr(self.model, "generation_config", None)
        opts: Dict[str, Any] = {}
        for k in _GENERATION_KEYS:
            v = kwargs.get(k, getattr(cfg, k, None))
            opts[k] = v.item() if hasattr(v, "item") else v
        opts = _plain(opts)
        rec = {"options": opts, "input_ids": None, "mask": None, "sequences": None}
        if hasattr(ids, "tolist") and getattr(ids, "ndim", 0) == 2:
            rec["input_ids"] = ids.detach().cpu().tolist()
            mask = kwargs.get("attention_mask")
            if hasattr(mask, "tolist") and tuple(mask.shape) == tuple(ids.shape):
                rec["mask"] = mask.detach().cpu().tolist()
        if hasattr(seqs, "tolist") and getattr(seqs, "ndim", 0) == 2:
            rec["sequences"] = seqs.detach().cpu().tolist()
        self._generations.append(rec)

    def record_text(self, prompt: Any = None, output: Any = None, token_texts: Any = None) -> None:
        """Give the run's text yourself (it wins over what a ``tokenizer`` would decode).

        ``prompt`` and ``output``: a string, or one per sequence of the batch; ``token_texts``:
        the text of each generated token, a list (one sequence) or a list per sequence, index
        k = generation step k (0 = the token of the prefill forward).  Ignored with
        ``store_text=False``.
        """
        for key, v in (("prompt", prompt), ("output", output)):
            if v is None:
                continue
            vals = [v] if isinstance(v, str) else (list(v) if isinstance(v, (list, tuple)) else None)
            if vals is None or not all(isinstance(x, str) for x in vals):
                raise TypeError(f"record_text({key}=...): a str or a list of str")
            self._texts_given[key] = vals
        if token_texts is not None:
            if not isinstance(token_texts, (list, tuple)):
                raise TypeError("record_text(token_texts=...): a list of str, or one such list per sequence")
            tt = list(token_texts)
            if tt and all(isinstance(x, str) for x in tt):
                tt = [tt]
            if not all(isinstance(row, (list, tuple)) and all(isinstance(x, str) for x in row) for row in tt):
                raise TypeError("record_text(token_texts=...): a list of str, or one such list per sequence")
            self._texts_given["token"] = [list(row) for row in tt]

    def record_generation(self, **options: Any) -> None:
        """Store generation options with the run (``summary()["generation"]``), e.g. the ``seed``
        the caller seeded torch with; they are laid over those read from ``generate()``."""
        self._generation_opts.update(_plain(options))

    def _text_rows(self) -> np.ndarray:
        """The run's text rows (TEXT_DTYPE): what record_text gave, else what the tokenizer decodes."""
        from .._dtypes import TEXT_DTYPE, text_dtype

        if not self.store_text:
            return np.zeros(0, TEXT_DTYPE)
        rows: List[tuple] = []
        decoded = self._decoded_texts() if self.tokenizer is not None else {"prompt": [], "output": [], "token": []}
        given = self._texts_given
        for kind in ("prompt", "output"):
            for seq, text in enumerate(given.get(kind, decoded[kind])):
                rows.append((kind, -1, seq, text))
        if "token" in given:
            for seq, row in enumerate(given["token"]):
                rows += [("token", k, seq, t) for k, t in enumerate(row)]
        elif self._token_texts:   # ep.run(None): the texts given to mark_token (or a TokenStreamer)
            rows += [("token", step, seq, t) for seq, step, t in self._token_texts]
        else:
            rows += decoded["token"]
        if not rows:
            return np.zeros(0, TEXT_DTYPE)
        return np.array(rows, dtype=text_dtype(max(len(r[3]) for r in rows)))

    def _decoded_texts(self) -> Dict[str, list]:
        """Prompt, output and token texts of every recorded generate() call, decoded with the
        tokenizer.  Sequences are numbered through the run (a second call's first sequence
        follows the first call's last); decode steps carry the run's step numbers."""
        tok = self.tokenizer
        out: Dict[str, list] = {"prompt": [], "output": [], "token": []}
        step0 = 0
        encdec = bool(getattr(getattr(self.model, "config", None), "is_encoder_decoder", False))

        def dec(ids):
            try:
                return str(tok.decode(ids, skip_special_tokens=True))
            except TypeError:
                return str(tok.decode(ids))

        for rec in self._generations:
            ins, seqs, mask = rec["input_ids"], rec["sequences"], rec["mask"]
            if seqs is None:
                continue
            n_gen = 0
            for b, seq in enumerate(seqs):
                prompt_ids = ins[b] if ins is not None and b < len(ins) else []
                if mask is not None and b < len(mask):
                    prompt_ids = [t for t, m in zip(prompt_ids, mask[b]) if m]
                start = 1 if encdec else (len(ins[b]) if ins is not None and b < len(ins) else 0)
                gen_ids = seq[start:]
                n_gen = max(n_gen, len(gen_ids))
                out["prompt"].append(dec(prompt_ids))
                out["output"].append(dec(gen_ids))
                seq_no = len(out["prompt"]) - 1
                for k, t in enumerate(gen_ids):
                    out["token"].append(("token", 0 if k == 0 else step0 + k, seq_no, dec([t])))
            step0 += max(n_gen - 1, 0)
        return out

    def _generation_summary(self) -> Optional[Dict[str, Any]]:
        if not self._generations and not self._generation_opts:
            return None
        g = dict(self._generations[0]["options"]) if self._generations else {}
        g.update(self._generation_opts)
        g["n_generate_calls"] = len(self._generations)
        return g

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

    # ------------------------------------------------------------------ marks (ep.run(None))
    def _need_marks(self, what: str) -> None:
        if self.model is not None:
            raise RuntimeError(f"s.{what}(): this run hooks its model, whose forwards already mark prefill and "
                               "tokens; marks are for ep.run(None, ...) around an engine without hooks")
        if self._sampler is None or self._finished:
            raise RuntimeError(f"s.{what}() must be called inside the `with ep.run(None, ...) as s:` block")

    def _mark_slot(self, t_begin: int, t_end: int, batch: int, seq: int, past_len: int,
                   input_tokens: Optional[int] = None) -> None:
        # One slot = one span-0 event pair, like a hooked top-level forward: the live feed
        # and the attribution read both the same way (past_len 0 = a prefill).
        meta = {"batch": batch, "seq": seq, "past_len": past_len, "cache_position": None, "mask": None}
        if input_tokens is not None:
            meta["input_tokens"] = int(input_tokens)
        self._forward_meta.append(meta)
        self._buffer.append(int(t_begin), 0, 0)
        self._buffer.append(int(t_end), 0, 1)

    def mark_prefill_start(self, input_tokens: Optional[int] = None, batch: int = 1) -> None:
        """ep.run(None): a generation starts now (its prefill begins).

        Optional: without it the prefill of the first generation begins at the run's start
        and that of a later one at the previous generation's last mark.  ``input_tokens``
        (the prompt tokens summed over the batch) may be given here or at :meth:`mark_prefill_end`.
        """
        self._need_marks("mark_prefill_start")
        _check_count("batch", batch)
        if input_tokens is not None:
            _check_count("input_tokens", input_tokens, zero=True)
        with self._marks_lock:
            self._gen_start_ns = _core.now_ns()
            self._gen_pending = (input_tokens, int(batch))
            self._in_decode = False

    def mark_prefill_end(self, input_tokens: Optional[int] = None, batch: Optional[int] = None) -> None:
        """ep.run(None): the prefill ends now, and with it the first generated token (one per sequence).

        ``input_tokens``: the prompt tokens summed over the batch (0 when not given);
        ``batch``: the number of sequences (default: what :meth:`mark_prefill_start` said, else 1).
        """
        self._need_marks("mark_prefill_end")
        now = _core.now_ns()
        with self._marks_lock:
            n_in = self._gen_pending[0] if input_tokens is None else input_tokens
            b = self._gen_pending[1] if batch is None else batch
            _check_count("batch", b)
            if n_in is not None:
                _check_count("input_tokens", n_in, zero=True)
            start = self._gen_start_ns
            if start is None:
                start = self._last_mark_ns if self._last_mark_ns is not None else self._t_start_ns
            seq = max(int(n_in) // int(b), 1) if n_in else 1
            self._mark_slot(start, now, int(b), seq, 0, input_tokens=int(n_in or 0))
            self._gen_start_ns, self._gen_pending = None, (None, 1)
            self._in_decode, self._gen_batch, self._gen_steps = True, int(b), 0
            self._mark_generations += 1
            self._last_mark_ns = now

    def mark_token(self, text: Optional[str] = None, n: Optional[int] = None) -> None:
        """ep.run(None): a decode step ends now, with ``n`` new tokens (default: the current
        generation's batch, one per sequence); its slot runs from the previous mark.

        The first call of a generation that had no :meth:`mark_prefill_end` ends the prefill
        instead (the first token comes out of the prefill).  ``text`` (the token's text) is
        stored with the run as that step's token text (:meth:`token_texts`: step 0 is the
        token that ends the prefill, k is decode step k; one sequence per generation).
        """
        self._need_marks("mark_token")
        if text is not None and not isinstance(text, str):
            raise TypeError(f"mark_token(text=...) must be a str or None, got {type(text).__name__}")
        if n is not None:
            _check_count("n", n)
        if not self._in_decode:
            self.mark_prefill_end(batch=n)
        else:
            now = _core.now_ns()
            with self._marks_lock:
                self._gen_steps += 1
                self._mark_slot(self._last_mark_ns, now, int(self._gen_batch if n is None else n), 1,
                                self._gen_steps)
                self._last_mark_ns = now
        if text is not None:
            self._token_texts.append((self._mark_generations - 1, self._gen_steps, text))

    def end_generation(self) -> None:
        """ep.run(None): the current generation is over; the next mark starts a new one (a new prefill)."""
        self._need_marks("end_generation")
        with self._marks_lock:
            self._in_decode = False

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
            if self._dist is None and not (self.post_baseline_s > 0 and exc_type is None):
                # Nothing is sampled after the block but a drift check or the other ranks:
                # the thread takes its final sample (after t_end_ns) while the hooks come off.
                self._sampler.request_stop()
            self._teardown_hooks()
            self._post_baseline = None
            if self.post_baseline_s > 0 and exc_type is None:
                p0 = _core.now_ns()
                time.sleep(self.post_baseline_s)   # idle again, hooks gone: the drift check
                self._post_baseline = (p0, _core.now_ns())
            if self._dist is not None:
                from .distributed import wait_for_ranks

                # sample until every rank is done; then each rank's clock offset is measured again
                self._dist_wait_problems = wait_for_ranks(self._dist, _core.now_ns)
            self._sampler.stop()
            if self._live is not None:
                self._live.stop()   # delivers what is left from its own thread, then joins
            if self._saver is not None:
                self._saver_stop.set()
                self._saver.join()
            status = "completed" if exc_type is None else "interrupted"
            self._finish(t_end_ns, status)
            self._complete()
        finally:
            with _ACTIVE_LOCK:
                _ACTIVE_MODELS.discard(self._active_key)
        return False  # never swallow the block's exception

    def _teardown_hooks(self) -> None:
        if self._event_drain is not None:
            from .sampler import end_background_drain

            end_background_drain(self._event_drain)
        self._unwrap_generate()
        if self._router is not None:
            self._router.remove()
        if self._hookset is not None:
            self._hookset.remove()
        if self._deep is not None:
            self._deep.uninstall()
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._boundary:
            self._sampler.set_boundary_target(False)
        _core.set_activity(0)

    def _finish(self, t_end_ns: int, status: str) -> None:
        samples = self._sampler.samples
        if self._event_drain is not None:
            self._event_drain.close()   # the last events, after any background drain in flight
        events = self._buffer.drain()
        if self._event_chunks:   # drained earlier by the live feed
            events = concat_records(self._event_chunks + [events])
            self._event_chunks = []
        # (np.compress: a boolean index copies structured rows field by field, 5x slower)
        span = events["span_id"]
        top = np.compress(span == 0, events)
        enc = np.compress(span == self._encoder_span, events) if self._encoder_span >= 0 else events[:0]
        rest = np.compress((span != 0) & (span != self._encoder_span), events)
        forwards = self._forwards(top, enc)
        if not forwards and status == "completed":
            what = ("the model's forward was never called inside ep.run()" if self.model is not None else
                    "no prefill or token was marked inside ep.run(None)")
            warnings.warn(f"energyprof: {what}: a run with zero tokens", RuntimeWarning)
        for u in self._user_sections:
            if u.t_end_ns < 0:
                u.t_end_ns = t_end_ns
        period_s = self._counter_period_s(samples) if self._boundary else None
        stream = self._call_stream(int(np.count_nonzero(rest["kind"] == 1)), period_s)

        def attribute_run(sink=None):
            # streamed: no piece holds more than max_calls_in_memory calls either
            piece = min(PIECE_CALLS, max(self.max_calls_in_memory, 1)) if sink is not None else None
            return attribute(samples, self._t_start_ns, t_end_ns, forwards, rest, self._spans, self._user_sections,
                             self._baseline, post_baseline=getattr(self, "_post_baseline", None),
                             nominal_period_s=self._sampler.interval_ns * 1e-9, calls_sink=sink, piece_calls=piece)

        att = attribute_run(stream)
        if stream is not None:
            stream.close()
            if stream.error is not None:   # the store failed mid-way: every row in memory after all
                self._save_error = self._save_error or stream.error
                stream = None
                att = attribute_run()
        calls = att.calls
        if self._boundary:
            if stream is None:
                from .boundary import judge_resolved

                judge_resolved(calls, period_s)
            self._judge_boundary(samples, att, period_s, stream.resolved_counts if stream is not None else
                                 (calls["resolved"] if len(calls) else None))
        deep_summary = None
        if self.mode == "deep" and len(calls):
            span_ids = att.span_ids   # the calls' span ids, in the calls' order (deep runs hold their calls)
            act_stats = (self._act.collect(self._hookset.callables if self._hookset is not None else ())
                         if self._act is not None else {})
            if self._deep is not None:
                self._heads, deep_summary = self._deep.finish(calls, span_ids, act_stats)
            self._fill_act_stats(calls, span_ids, act_stats)
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
                                     "reads": int(self._sampler.boundary_reads),
                                     "counter_update_period_s": getattr(self, "_counter_update_period_s", None),
                                     "edge_bound": getattr(self, "_edge_bound", None)}
        if getattr(self, "_boundary_sync", False):
            st = self._sampler.sync_stats
            summary["boundary_reads"]["sync"] = {
                "starts": st["starts"], "timeouts": st["timeouts"], "waited_s": st["waited_ns"] * 1e-9,
                "update_period_s": st["update_ns"] * 1e-9}
        summary["source_faults"] = int(self._sampler.faults)
        if deep_summary is not None:
            summary["deep"] = deep_summary
        if stream is not None:
            summary["calls_streamed"] = {"calls": stream.n_calls, "layers": stream.n_layers,
                                         "pieces": stream.n_pieces, "max_calls_in_memory": self.max_calls_in_memory}
        components = np.compress(~is_layer & ~is_op, calls)   # one copy: read by the router, kept as self._components
        moe = self._router.finish(components) if self._router is not None else None
        if moe is not None:
            summary["moe"] = moe
        gen = self._generation_summary()
        if gen is not None:
            summary["generation"] = gen
        self._texts = self._text_rows()
        summary["text_stored"] = bool(len(self._texts))
        self._add_limits(summary)
        self._add_devices(summary, samples, t_end_ns)
        self._summary = summary
        self._samples = with_rank(samples, sample_row_dtype(), 0)
        self._sections = att.sections
        self._tokens = att.tokens
        self._layers = np.compress(is_layer, calls) if stream is None else None   # None: read from the store when asked
        self._components = components if stream is None else None
        self._ops = np.compress(is_op, calls)
        if stream is not None:
            from ..store.db import Store

            self._calls_in_store = (self.db if isinstance(self.db, Store) else self._store.path, self.run_id_)
        if self._dist is not None:
            status = self._merge_ranks(att, forwards, status, samples, t_end_ns)
            summary = self._summary
        self._finished = True
        if self._store is not None:
            try:
                if self._save_error is None:
                    new = samples[self._samples_written:]
                    if len(new):
                        self._store.write_samples(self.run_id_, new)
                multi = self._dist is not None
                if multi and len(self._samples):   # the other ranks' samples (rank 0's are written above)
                    self._store.write_array(self.run_id_, "samples", self._samples[self._samples["rank"] != 0])
                self._store.finish_run(self.run_id_, summary, self._sections, self._tokens, self._layers,
                                       self._components, status, ops=self._ops, heads=self._heads,   # layers/components None: streamed already
                                       texts=self._texts, all_samples=self._samples if multi else samples,
                                       ranks=self._ranks if multi else None,
                                       rank_sections=self._rank_sections if multi else None,
                                       rank_tokens=self._rank_tokens if multi else None,
                                       device_samples=self._device_samples if len(self._device_samples) else None)
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

    def _counter_period_s(self, samples: np.ndarray) -> float:
        """The counter's update period, by which boundary-read rows are judged: the longest
        the counter was seen standing still, or what the source says of its hardware (rapl's
        update_ms) where that is longer: a counter read more seldom than it updates never
        shows its period."""
        from .boundary import counter_update_period_s

        # (the source's meta_json, parsed once into the run's metadata on enter: the sources
        # write it when created and started, never while they poll)
        nominal_s = float(self._meta["source_meta"].get("counter_update_ms") or 0) * 1e-3
        period_s = max(counter_update_period_s(samples), self._sampler.counter_still_ns * 1e-9, nominal_s)
        self._counter_update_period_s = period_s
        return period_s

    def _call_stream(self, n_calls: int, judge_period_s: Optional[float]) -> "Optional[_callstream.CallStream]":
        """A CallStream when this run's calls go to the store piece by piece (ep.run's
        ``max_calls_in_memory``), else None."""
        if (self.max_calls_in_memory is None or n_calls <= self.max_calls_in_memory or self._store is None
                or self._save_error is not None or self.mode == "deep" or (self._router is not None and self._router.active)
                or self._dist is not None):
            return None
        stream = _callstream.CallStream(self._store, self.run_id_, judge_period_s)
        return stream if stream.error is None else None

    @property
    def layers(self) -> np.ndarray:
        """Decoder-layer calls (``CALL_DTYPE`` rows with ``component == "layer"``); a run whose
        calls were streamed to the store (``max_calls_in_memory``) reads them from there."""
        if self._layers is None:
            self._read_streamed_calls()
        return self._layers

    @property
    def components(self) -> np.ndarray:
        """Component and model-level module calls (``CALL_DTYPE``); read from the store when the
        run streamed its calls there (``max_calls_in_memory``)."""
        if self._components is None:
            self._read_streamed_calls()
        return self._components

    def _read_streamed_calls(self) -> None:
        from ..store.db import Store

        where, rid = self._calls_in_store
        st = where if isinstance(where, Store) else Store(where, mark_stale=False)
        try:
            self._layers = st.read_array(rid, "layers")
            self._components = st.read_array(rid, "components")
        finally:
            if st is not where:
                st.close()

    def _judge_boundary(self, samples: np.ndarray, att: Any, period_s: float, calls_resolved: Any) -> None:
        """Rows shorter than the counter's own update period (measured from this run's
        readings) are not resolved, whatever the boundary reads put inside them (the calls
        are judged by the caller: in memory, or piece by piece as they are streamed)."""
        from ..store.quality import resolution_summary
        from .boundary import judge_resolved

        for rows in (att.sections, att.tokens):
            judge_resolved(rows, period_s)
        self._edge_bound = self._edge_bound_summary(samples, att, period_s)
        # The note names the poll period (boundary pieces would make the median sample look
        # short) and says that readings were also taken at the forwards' edges.
        old = att.summary["resolution"]
        phases = att.sections["resolved"][att.sections["kind"] == "phase"]
        new = resolution_summary(self._sampler.interval_ns * 1e-9, phases, att.tokens["resolved"],
                                 calls_resolved, gaps=old.get("gaps"))
        new["baseline"] = old.get("baseline")
        text = "readings also at every forward's start and end"
        if period_s > 0:
            text += f" (the counter updates every {period_s * 1e3:.3g} ms or slower)"
            eb = self._edge_bound
            parts = [f"{k} ±{100 * eb[k + '_share']:.2g} %" for k in ("prefill", "decode")
                     if eb.get(k + "_share") is not None]
            if eb.get("tokens_median_share") is not None:
                parts.append(f"tokens median ±{100 * eb['tokens_median_share']:.2g} %")
            if parts:
                text += "; a resolved row can be off by up to one counter update at each edge (" + ", ".join(parts) + ")"
            if self._boundary_sync:
                st = self._sampler.sync_stats
                text += (f"; {st['starts'] - st['timeouts']} of {st['starts']} prefill edges were read as the counter "
                         "moved (boundary_reads='sync'), so those are not stale")
        new["boundary"] = text     # shown by store.quality.resolution_lines (report, CLI, dashboard)
        new["note"] += "; plus " + text
        att.summary["resolution"] = new

    def _add_devices(self, summary: Dict[str, Any], samples: np.ndarray, t_end_ns: int) -> None:
        """``summary["devices"]``: each GPU's energy over the run window when the source names
        its devices (nvml), from its own series (several GPUs) or the gpu domain (one); the
        series goes to ``device_samples``.  A breakdown: no run figure adds these.  Not in a
        multi-rank run: the ranks do not send their device rows to rank 0 (yet), and rank 0's
        alone would be part of the run's GPUs passed off as all of them."""
        from .devices import breakdown

        if self._dist is not None:
            return
        per_device = getattr(self._sampler, "device_samples", None)
        self._device_samples = per_device if per_device is not None and len(per_device) else self._device_samples
        rows = breakdown(samples, self._device_samples, summary.get("source_meta"), self._t_start_ns, t_end_ns,
                         self._source.label)
        if rows:
            summary["devices"] = rows

    @staticmethod
    def _edge_bound_summary(samples: np.ndarray, att: Any, period_s: float) -> Dict[str, Any]:
        """``summary()["boundary_reads"]["edge_bound"]``: how far the resolved phases and tokens
        can be off because each edge reading is stale by up to one counter update (see
        :func:`energyprof.measure.boundary.edge_bound_j`), in joules and as a share of the row."""
        from .boundary import edge_bound_j

        out: Dict[str, Any] = {"update_period_s": period_s}
        sec = att.sections
        bound = edge_bound_j(sec, samples, period_s)
        for name in ("prefill", "decode"):
            idx = np.flatnonzero((sec["name"] == name) & (sec["kind"] == "phase"))
            ok = idx[np.isfinite(bound[idx])] if len(idx) else idx
            if len(ok):
                j = float(bound[ok].sum())
                e = float(np.nansum(sec["energy_j"][ok]))
                out[name + "_j"] = j
                out[name + "_share"] = j / e if e > 0 else None
        tb = edge_bound_j(att.tokens, samples, period_s)
        ok = np.isfinite(tb) & (att.tokens["energy_j"] > 0)
        out["tokens_median_share"] = _integrate_median(tb[ok] / att.tokens["energy_j"][ok]) if ok.any() else None
        return out

    def _add_limits(self, summary: Dict[str, Any]) -> None:
        """Power limits the source knows (or were stated) and each peak as a share of its limit."""
        from .limits import peak_shares, power_limits

        try:
            limits = power_limits(summary.get("source_kind"), summary.get("source_meta"), self.power_limit_w)
        except (OSError, ValueError) as e:   # validated at construction; a sysfs read may still fail
            warnings.warn(f"energyprof: power limits unknown ({e})", RuntimeWarning)
            limits = {}
        dur = float(summary.get("duration_s") or float("nan"))
        mean_w = {d: float(v) / dur for d, v in (summary.get("domains") or {}).items() if dur > 0}
        if dur > 0:
            mean_w["total"] = float(summary.get("energy_j", float("nan"))) / dur
        summary["power_limits"] = limits
        summary["peaks"] = peak_shares(summary.get("peaks") or {}, mean_w, dur, limits)

    def _forwards(self, top_events: np.ndarray, encoder_events: Optional[np.ndarray] = None) -> List[Forward]:
        """The top-level forwards in time order; an encoder-only model's are ``encode``
        forwards, and a seq2seq encoder's calls become ``encode`` forwards of their own (a
        top-level forward that ran the encoder inside is split at the encoder's end)."""
        out = self._top_forwards(top_events)
        if self._amap is not None and self._amap.kind == "encoder":
            for f in out:
                f.encode, f.prefill = True, False
            return out
        if encoder_events is None or not len(encoder_events):
            return out
        from .attribution import pair_events

        _, eb, ee = pair_events(encoder_events, self._encoder_span + 1)
        order = np.argsort(eb, kind="stable")
        metas, self._encoder_meta = self._encoder_meta, []
        encs = []
        for i, (b, e) in enumerate(zip(eb[order].tolist(), ee[order].tolist())):
            m = metas[i] if i < len(metas) else {"batch": 1, "seq": 1, "mask": None}
            real = int(m["mask"].sum()) if m["mask"] is not None else m["batch"] * m["seq"]
            encs.append(Forward(t_start_ns=b, t_end_ns=e, batch=m["batch"], new_positions=m["seq"],
                                input_tokens=real, prefill=False, encode=True))
        merged: List[Forward] = []
        for f in out:
            inner = [x for x in encs if x.t_start_ns >= f.t_start_ns and x.t_end_ns <= f.t_end_ns]
            if inner:   # forward(input_ids, decoder_input_ids): encoder, then the decoder's part
                x = inner[0]
                encs.remove(x)
                merged.append(Forward(t_start_ns=f.t_start_ns, t_end_ns=x.t_end_ns, batch=x.batch,
                                      new_positions=x.new_positions, input_tokens=x.input_tokens, prefill=False,
                                      encode=True))
                f.t_start_ns = x.t_end_ns
            merged.append(f)
        merged += encs
        merged.sort(key=lambda f: (f.t_start_ns, not f.encode))
        return merged

    def _top_forwards(self, top_events: np.ndarray) -> List[Forward]:
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
            if "input_tokens" in m:                # a mark that said how many
                real = m["input_tokens"]
            out.append(Forward(t_start_ns=b, t_end_ns=e, batch=m["batch"], new_positions=m["seq"],
                               input_tokens=real if prefill else 0, prefill=prefill))
        self._forward_meta = []                    # drop the kept tensors
        return out

    def _fill_act_stats(self, calls: np.ndarray, span_ids: np.ndarray, act_stats: Dict[int, Any]) -> None:
        # Calls come sorted by begin (span_ids: each call's span id, same order); the stats
        # hooks fire in end order per span.  Match per span id in call order (end order ==
        # begin order for non-recursive modules).  With stats_every = N the k-th record of
        # a span is its (k * N)-th call; the calls in between keep NaN statistics.
        from .deep import stats_rows

        order = np.argsort(span_ids, kind="stable")
        sorted_ids = span_ids[order]
        cols = ("act_mean", "act_std", "act_max", "act_sparsity", "act_abs_mean")
        at, got = [], []
        for sid, lst in act_stats.items():   # rows, or tensors / tuples -> rows (one transfer per span)
            lo, hi = np.searchsorted(sorted_ids, [sid, sid + 1])
            idx = order[lo:hi][::self.stats_every]
            rows = lst if isinstance(lst, np.ndarray) else stats_rows(lst)
            n = min(len(idx), len(rows))
            at.append(idx[:n])
            got.append(rows[:n])
        if at:                               # one assignment per column for every span
            at_all, got_all = np.concatenate(at), np.concatenate(got)
            for c, col in enumerate(cols):
                calls[col][at_all] = got_all[:, c]

    # ------------------------------------------------------------------ metadata
    def _run_meta(self) -> Dict[str, Any]:
        import torch

        try:
            import transformers

            tf_version = transformers.__version__
        except Exception:  # pragma: no cover
            tf_version = None
        if self._amap is not None:
            cfg = dict(self._amap.config)
            model_info = {"name": cfg.get("name_or_path") or type(self.model).__name__, "arch": self._amap.arch}
            model_info.update({k: v for k, v in cfg.items() if k != "name_or_path"})
        else:   # ep.run(None): an engine without hooks; the caller's name for it, if any
            model_info = {"name": self.engine or "unhooked", "arch": None}
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
            "mode": self.mode if self.model is not None else "marks",
            "engine": self.engine,
            "sync": self._sync_used,
            "baseline_s": self.baseline_s,
            "stats_every": self.stats_every,
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


#: generate() options stored with a run (from the call's arguments, else the model's generation_config).
_GENERATION_KEYS = ("do_sample", "temperature", "top_k", "top_p", "num_beams", "max_new_tokens", "min_new_tokens",
                    "repetition_penalty")


def _plain(d: Dict[str, Any]) -> Dict[str, Any]:
    """Options as JSON-able values (anything else as its repr)."""
    return {k: (v if v is None or isinstance(v, (bool, int, float, str)) else repr(v)) for k, v in d.items()}


def _threshold(name: str, value: Optional[float], default: float) -> float:
    if value is None:
        return float(default)
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number >= 0; got {value!r}") from None
    if not (f >= 0) or f == float("inf") or isinstance(value, bool):
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return f
def _check_count(name: str, value: Any, zero: bool = False) -> None:
    """A token or sequence count given to a mark: an int >= 1 (>= 0 with ``zero``)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if zero else 1):
        raise ValueError(f"{name} must be an integer >= {0 if zero else 1}, got {value!r}")


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
    engine: Optional[str] = None,
    distributed: Any = "auto",
    post_baseline_s: float = 0.0,
    stats_every: int = 1,
    store_text: bool = True,
    tokenizer: Any = None,
    sparse_below: Optional[float] = None,
    kill_below: Optional[float] = None,
    power_limit_w: Any = None,
    boundary_reads: Optional[Union[bool, str]] = None,
    max_calls_in_memory: Optional[int] = _callstream.MAX_CALLS_IN_MEMORY,
) -> Session:
    """Profile the energy of everything a model does inside a ``with`` block.

    Parameters
    ----------
    model: the ``torch.nn.Module`` (a Hugging Face ``*ForCausalLM``) to hook, or ``None`` for an
        engine without hooks (ONNX Runtime, llama.cpp, vLLM, a compiled graph): the run is a
        plain energy window and the caller marks what it knows with ``s.mark_prefill_start()``,
        ``s.mark_prefill_end()``, ``s.mark_token(text=None)`` or an :class:`~energyprof.TokenStreamer`
        (docs/engines.md); sections work as usual.
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
    engine: a label stored as ``summary()["engine"]`` (``"eager"``, ``"onnxruntime"``...; the
        engine comparison of :func:`energyprof.sweep` groups by it).
    distributed: ``"auto"`` (default): when a torch.distributed process group with more than one
        rank is initialised, every rank measures its own devices and rank 0 saves one run of all
        ranks (docs/distributed.md); ``True`` requires such a group; ``False`` measures this
        process alone.
    stats_every: mode="deep": activation, head, kill-ratio and variance statistics on the
        1st, (N+1)th, (2N+1)th ... call of each module only (1, the default: every call);
        stored with the run (``summary()["stats_every"]``); the other calls' statistics are NaN.
    store_text: store the prompt, the generated text and each token's text with the run
        (``s.texts``, ``s.prompt()``, ``s.output()``; searchable with ``ep.runs(search=...)``);
        False stores none.  The text comes from :meth:`Session.record_text`, or, given a
        ``tokenizer``, from decoding what ``model.generate`` was given and returned.
    tokenizer: anything with ``decode(ids)`` (a Hugging Face tokenizer) to decode that text.
    sparse_below, kill_below: mode="deep" thresholds (default ``1e-3`` each): an attention weight
        or activation magnitude below ``sparse_below`` counts as sparse, an activation after the
        MLP's activation function below ``kill_below`` as killed; stored in ``summary()["deep"]``.
    power_limit_w: a stated power limit (W) of the run total, or ``{domain: W}``; peaks are shown
        as a share of it (``summary()["peaks"]``), beside the limits the source knows itself.
    boundary_reads: read the source also at each top-level forward's start and end (from the C
        hook, without the GIL), so phases and decode steps are integrated from readings at their
        edges.  ``None`` (default) or ``True``: where the source supports it (counter sources:
        rapl, nvml, ioreport, estimate; and synthetic); ``False``: the periodic poll only.
        ``"sync"`` (rapl): also, at each ``generate()``'s prefill edges (its first forward's start
        and the second's), wait for the counter to move before the forward starts, so those
        readings are fresh rather than up to one counter update stale; costs up to one update
        (about 1 ms on RAPL) per edge, stated in ``summary()["boundary_reads"]["sync"]``.
        ValueError on a source whose counter cannot be waited on.
    max_calls_in_memory: a run with more hooked calls than this (default 1,000,000: about 280 MB
        of rows) that is saved to a store writes its layer and component rows there piece by
        piece as they are attributed, instead of holding them all; ``s.layers`` and
        ``s.components`` then read them back from the store when first asked
        (``summary()["calls_streamed"]``; docs/long-runs.md).  Not for ``mode="deep"``, MoE
        routing or multi-rank runs, which need every row at once.  ``None``: always hold them.

    Returns a :class:`Session`; use it as a context manager.
    """
    return Session(model, source=source, mode=mode, sync=sync, baseline_s=baseline_s, interval_ms=interval_ms,
                   db=db, save=save, name=name, tags=tags, hook_method=hook_method, engine=engine,
                   distributed=distributed, post_baseline_s=post_baseline_s, stats_every=stats_every,
                   store_text=store_text, tokenizer=tokenizer, sparse_below=sparse_below, kill_below=kill_below,
                   power_limit_w=power_limit_w, boundary_reads=boundary_reads,
                   max_calls_in_memory=max_calls_in_memory)
