"""Sampler: a native thread polling a power source, as a Python object.

>>> import energyprof as ep
>>> with ep.Sampler("synthetic:power_w=20,period_ms=5") as s:
...     pass
>>> s.samples["cpu_w"][:1]
array([20.])

The polling runs in C (``_core.Sampler``, csrc/threads/ep_sampler.c) and never takes the
GIL.  Samples wait in a bounded C ring; while the sampler runs, one Python daemon
thread shared by every running sampler (started once per process, so starting and
stopping a sampler creates and joins no thread) drains that ring every
``DRAIN_EVERY_S`` (200 ms) so a long run never fills it (at 1 kHz the default 262144-sample ring would last 4 minutes undrained).
Drained samples accumulate in Python (``.samples``): 64 bytes each, about 230 MB
per hour at 1 kHz, 2.3 MB per hour at the 10 ms default period.
"""
from __future__ import annotations

import threading
import time
import warnings
from typing import List, Optional, Union

import numpy as np

from .. import _core
from .._dtypes import DEVICE_SAMPLE_DTYPE, concat_records
from . import devices as _devices
from . import sources as _sources

__all__ = ["Sampler", "DRAIN_EVERY_S"]

#: Period of the background drain while running (s).
DRAIN_EVERY_S = 0.2


class _DrainService:
    """The one daemon thread that drains every running :class:`Sampler` each ``DRAIN_EVERY_S``.

    A sampler joins on start and leaves on stop; its own lock makes a drain from here and
    the final drain of its stop() safe against each other, so stop() never waits for this
    thread (a drain that comes after it finds the ring empty)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()   # notified when a sampler joins (the thread idles without any)
        self._running: set = set()
        self._thread: Optional[threading.Thread] = None

    def join(self, sampler: "Sampler") -> None:
        with self._lock:
            self._running.add(sampler)
            self._lock.notify()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="energyprof-drain", daemon=True)
                self._thread.start()

    def leave(self, sampler: "Sampler") -> None:
        with self._lock:
            self._running.discard(sampler)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._running:
                    self._lock.wait()
            time.sleep(DRAIN_EVERY_S)
            with self._lock:
                running = list(self._running)
            for sampler in running:
                try:
                    sampler.drain()
                except Exception:   # a sampler closed meanwhile: its own stop() reports its problems
                    pass


_DRAINS = _DrainService()


def drain_in_background(obj) -> None:
    """Have the shared drain thread call ``obj.drain()`` every ``DRAIN_EVERY_S`` until
    :func:`end_background_drain` (``obj.drain`` must be safe against a concurrent call of its own)."""
    _DRAINS.join(obj)


def end_background_drain(obj) -> None:
    """Stop draining ``obj`` in the background (a drain already under way may still finish)."""
    _DRAINS.leave(obj)


class Sampler:
    """Sample a power source on a native thread.

    Parameters
    ----------
    spec:
        A source spec string (see :mod:`energyprof.measure.sources`) or an opened
        :class:`energyprof.measure.sources.Source`.
    interval_ms:
        Poll interval; ``None`` uses the source's own period.
    capacity:
        Size of the C ring (samples) between two drains.

    ``with Sampler(spec) as s:`` starts on enter and stops (with a final drain)
    on exit.  ``start()`` / ``stop()`` may be repeated; samples accumulate.
    """

    def __init__(self, spec: Union[str, _sources.Source], interval_ms: Optional[float] = None,
                 capacity: int = 262144) -> None:
        self.source: _sources.Source = _sources.open(spec)
        self._core = _core.Sampler(self.source.kind, dict(self.source.params), interval_ms, int(capacity))
        self._lock = threading.Lock()          # guards _chunks / _all / _n: drains may come from several threads
        self._chunks: List[np.ndarray] = []    # drained since the last compaction into _all
        self._all: np.ndarray = np.zeros(0, _core.SAMPLE_DTYPE)
        self._n = 0                            # len(_all) + sum of len(_chunks)
        self._device_chunks: List[np.ndarray] = []   # per-device rows (nvml:devices=0,1), split off at drain
        self._warned_faults = 0
        self._warned_dropped = 0
        self._launched = False                 # start(wait=False) not yet waited for

    # ------------------------------------------------------------------ control
    def start(self, wait: bool = True) -> "Sampler":
        """Start the sampler thread (the source's start runs there; its errors raise here).

        ``wait=False`` returns as soon as the thread exists, while it starts the source: call
        :meth:`wait_started` before relying on samples (its errors raise there); a
        :meth:`stop` before that finishes the start itself."""
        if wait:
            self._core.start()
            _DRAINS.join(self)
        else:
            self._core.launch()
            self._launched = True
        return self

    def wait_started(self) -> None:
        """After ``start(wait=False)``: block until the source has started (raising what
        ``start()`` would); returns at once otherwise."""
        if self._launched:
            self._launched = False
            self._core.await_start()
            _DRAINS.join(self)

    def request_stop(self) -> None:
        """Ask the thread to take the source's final sample and exit, without waiting for it;
        :meth:`stop` joins it (and drains) later.  What comes between is not sampled."""
        self._core.request_stop()

    def stop(self) -> np.ndarray:
        """Stop the thread (the source flushes a final sample), drain, and return ``.samples``.

        Warns (RuntimeWarning) when the source ended early, reported faults, or
        samples were dropped; nothing recorded is lost by any of these.
        """
        self._launched = False   # (a start not waited for is finished by the C stop)
        self._core.stop()  # joins with the GIL released
        _DRAINS.leave(self)
        self.drain()
        self._warn_problems()
        return self.samples

    def drain(self) -> np.ndarray:
        """Move the samples waiting in the C ring to ``.samples``; return just those.

        A source reading several GPUs (``nvml:devices=0,1``) also writes one row per device
        after each sample: those go to :attr:`device_samples` here, so ``.samples`` holds
        the sum only (its ``gpu_w``) and nothing downstream counts a device twice."""
        with self._lock:
            chunk, per_device = _devices.split(self._core.drain())
            if len(per_device):
                self._device_chunks.append(per_device)
                if len(self._device_chunks) >= 256:
                    self._device_chunks = [concat_records(self._device_chunks)]
            if len(chunk):
                self._chunks.append(chunk)
                self._n += len(chunk)
                if len(self._chunks) >= 256:   # keep samples_since's walk short on long runs
                    self._join_chunks()
            return chunk

    def _join_chunks(self) -> None:
        """Fold the drained chunks into ``_all`` (the caller holds ``_lock``)."""
        self._all = concat_records([self._all, *self._chunks])
        self._chunks = []

    def _warn_problems(self) -> None:
        st = self._core.stats()
        if st["ended"]:
            warnings.warn(f"energyprof: source {self.source.spec!r} ended before stop: {self._core.message}",
                          RuntimeWarning, stacklevel=3)
        if st["faults"] > self._warned_faults:
            warnings.warn(f"energyprof: source {self.source.spec!r} reported {st['faults']} fault(s); "
                          f"last: {self._core.message}", RuntimeWarning, stacklevel=3)
            self._warned_faults = st["faults"]
        if st["dropped"] > self._warned_dropped:
            warnings.warn(f"energyprof: {st['dropped']} sample(s) dropped because the ring was full "
                          f"(capacity too small for the drain period)", RuntimeWarning, stacklevel=3)
            self._warned_dropped = st["dropped"]

    def __enter__(self) -> "Sampler":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.stop()
        return False

    # ------------------------------------------------------------------ data
    @property
    def samples(self) -> np.ndarray:
        """All samples drained so far, oldest first (numpy array of ``_core.SAMPLE_DTYPE``).

        This joins every chunk drained so far (O(all samples)); code that polls a
        running sampler should use :meth:`samples_since` with a cursor instead.
        """
        with self._lock:
            if self._chunks:
                self._join_chunks()
            return self._all

    @property
    def device_samples(self) -> np.ndarray:
        """Each GPU's own series when the source reads several (``DEVICE_SAMPLE_DTYPE``, in
        drain order; empty otherwise): a breakdown of ``samples["gpu_w"]``, never added to it."""
        with self._lock:
            if not self._device_chunks:
                return np.zeros(0, DEVICE_SAMPLE_DTYPE)
            if len(self._device_chunks) > 1:
                self._device_chunks = [concat_records(self._device_chunks)]
            return self._device_chunks[0]

    @property
    def n_samples(self) -> int:
        """How many samples have been drained so far (no copy)."""
        with self._lock:
            return self._n

    def samples_since(self, index: int) -> np.ndarray:
        """Samples ``index`` onwards (a cursor kept by the caller), copying only those.

        Costs O(new samples), not O(all samples), so a thread polling a long run
        every 100 ms stays cheap: ``new = s.samples_since(cursor); cursor += len(new)``.
        """
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        with self._lock:
            parts: List[np.ndarray] = []
            start = 0
            for part in [self._all, *self._chunks]:
                end = start + len(part)
                if end > index:
                    parts.append(part[max(index - start, 0):])
                start = end
            if not parts:
                return np.zeros(0, _core.SAMPLE_DTYPE)
            return concat_records(parts)

    # ------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return bool(self._core.running)

    @property
    def ended(self) -> bool:
        """True when the source reported the end of its stream (replay done, child exited)."""
        return bool(self._core.ended)

    @property
    def dropped(self) -> int:
        """Samples dropped because the C ring was full (should stay 0)."""
        return int(self._core.dropped)

    @property
    def faults(self) -> int:
        """Faults reported by the source (skipped documents, failed polls...)."""
        return int(self._core.faults)

    @property
    def supports_boundary(self) -> bool:
        """Whether the source can be read at forward boundaries from the C hook path
        (counter sources and synthetic; ``ep.run(boundary_reads=...)``)."""
        return bool(self._core.supports_boundary)

    @property
    def boundary_reads(self) -> int:
        """Boundary readings taken so far (besides the periodic polls)."""
        return int(self._core.boundary_reads)

    @property
    def counter_still_ns(self) -> int:
        """The longest stretch (ns) the counter was seen not to move: a floor on its update period."""
        return int(self._core.counter_still_ns)

    @property
    def supports_sync(self) -> bool:
        """Whether boundary reads can be synchronised with the counter's updates (rapl:
        ``ep.run(boundary_reads="sync")``)."""
        return bool(self._core.supports_sync)

    def arm_sync(self, n_starts: int) -> None:
        """Synchronise the boundary reads of the next ``n_starts`` forward starts (2: a
        generate()'s prefill, from the first forward's start to the second's)."""
        self._core.arm_sync(int(n_starts))

    @property
    def sync_stats(self) -> dict:
        """The synchronised reads so far: ``update_ns`` (the counter's update period in use,
        refined from the moves seen), ``starts``, ``timeouts``, ``waited_ns``."""
        return dict(self._core.sync_stats)

    def set_boundary_target(self, on: bool) -> None:
        """Make this sampler's source the one the C hooks read at forward boundaries (or stop it)."""
        self._core.set_boundary_target(bool(on))

    @property
    def message(self) -> str:
        """The most recent source or sampler message ('' if none)."""
        return self._core.message

    @property
    def messages(self) -> List[str]:
        """The most recent messages (up to 16), oldest first."""
        return list(self._core.messages)

    @property
    def kind(self) -> str:
        """The source kind ('synthetic', 'rapl', ...)."""
        return self.source.kind

    @property
    def spec(self) -> str:
        """The spec of the source in use."""
        return self.source.spec

    @property
    def label(self) -> str:
        """'measured', 'estimated' or 'simulated'."""
        return self.source.label

    @property
    def meta_json(self) -> str:
        """JSON text with facts about the source for the run metadata."""
        return self._core.meta_json

    @property
    def period_ns(self) -> int:
        """The source's own sample period (ns)."""
        return int(self._core.period_ns)

    @property
    def interval_ns(self) -> int:
        """The poll interval in use (ns)."""
        return int(self._core.interval_ns)

    @property
    def thread_cpu_ns(self) -> int:
        """CPU time the sampler thread has used (ns), all runs."""
        return int(self._core.thread_cpu_ns)

    def stats(self) -> dict:
        """A snapshot of the C counters (polls, samples, dropped, faults, ...; exact once stopped)."""
        return dict(self._core.stats())

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Sampler {self.source.spec!r} ({self.label}) {state}, {len(self.samples)} samples>"
