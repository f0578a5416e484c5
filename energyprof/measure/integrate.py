"""Exact energy of time windows from power samples (the C integrator, csrc/kernels/ep_integrate.c).

>>> import numpy as np
>>> from energyprof import _core
>>> from energyprof.measure.integrate import integrate
>>> s = np.zeros(2, _core.SAMPLE_DTYPE)
>>> s["kind"] = _core.KIND_INTERVAL
>>> s["t_start_ns"], s["t_end_ns"] = [0, 1_000_000_000], [1_000_000_000, 2_000_000_000]
>>> for d in _core.DOMAINS: s[f"{d}_w"] = np.nan
>>> s["cpu_w"] = [10.0, 30.0]
>>> r = integrate(s, [(0, 2_000_000_000), (500_000_000, 1_500_000_000)])
>>> r.energy_j[:, 0].tolist()
[40.0, 20.0]

See docs/integration.md for the semantics (gaps, NaN, windows outside the samples).
"""
from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence, Union

import numpy as np

from .. import _core

WIN_OUTSIDE: int = _core.WIN_OUTSIDE
WIN_GAP: int = _core.WIN_GAP
WIN_NAN: int = _core.WIN_NAN
WIN_UNRESOLVED: int = _core.WIN_UNRESOLVED

WindowsLike = Union[np.ndarray, Sequence[Sequence[int]], Iterable[Sequence[int]]]


class Integrated(NamedTuple):
    """Per-window results of :func:`integrate` (a tuple: unpacks as three arrays)."""

    energy_j: np.ndarray           #: float64 (M, 5), J per domain in _core.DOMAINS order; NaN = unknown
    flags: np.ndarray              #: uint32 (M,), WIN_* bits
    samples_in_window: np.ndarray  #: int32 (M,), whole samples (INSTANT: segments) inside


def _as_windows(windows: WindowsLike) -> np.ndarray:
    arr = np.asarray(list(windows) if not isinstance(windows, np.ndarray) else windows)
    if arr.size == 0:
        return np.empty((0, 2), dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"windows must be integer nanoseconds, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"windows must be (start_ns, end_ns) pairs of shape (M, 2), got shape {arr.shape}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError("windows do not fit in int64 nanoseconds")
    return np.ascontiguousarray(arr, dtype=np.int64)


def integrate(samples: np.ndarray, windows: WindowsLike) -> Integrated:
    """Energy of each window ``[start_ns, end_ns)`` per domain, from power samples.

    Args:
        samples: 1-D numpy array of ``_core.SAMPLE_DTYPE`` (e.g. ``Sampler.samples``), sorted by
            ``t_start_ns``, all INSTANT or all INTERVAL.
        windows: ``(M, 2)`` integer array or a sequence of ``(start_ns, end_ns)`` pairs on the
            ``_core.now_ns()`` clock, in any order (sorted by start is fastest).

    Returns:
        :class:`Integrated` ``(energy_j, flags, samples_in_window)``.  A window not wholly
        inside the sampled range gets NaN and ``WIN_OUTSIDE``; a domain NaN in every sample
        is NaN everywhere.

    Raises:
        ValueError: wrong dtype or shape, mixed kinds, unsorted or overlapping samples,
            ``end_ns < start_ns``.
    """
    if not isinstance(samples, np.ndarray):
        raise ValueError(f"samples must be a numpy array of _core.SAMPLE_DTYPE, not {type(samples).__name__}")
    if samples.dtype != _core.SAMPLE_DTYPE:
        raise ValueError(f"samples must have dtype _core.SAMPLE_DTYPE, got {samples.dtype}")
    if samples.ndim != 1:
        raise ValueError(f"samples must be 1-D, got shape {samples.shape}")
    energy_j, flags, counts = _core.integrate(np.ascontiguousarray(samples), _as_windows(windows))
    return Integrated(energy_j, flags, counts)


__all__ = ["integrate", "Integrated", "WIN_OUTSIDE", "WIN_GAP", "WIN_NAN", "WIN_UNRESOLVED"]
