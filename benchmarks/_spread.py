"""The spread of a ratio measured over interleaved rounds, shared by the benchmark scripts.

A round runs every variant once (in shuffled order), so a round is the unit of
resampling: :func:`ratio_of_medians` resamples round indices with replacement, the same
indices for both variants (paired), and gives the ratio of medians with its percentile
bootstrap interval.  Importing this module does nothing else (``make bench`` runs it too).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np


def ratio_of_medians(num: Sequence[float], den: Sequence[float], level: float = 0.95, n_boot: int = 4000,
                     seed: int = 0, base: Optional[Sequence[float]] = None) -> Tuple[float, float, float]:
    """(median(num) / median(den), low, high) over paired rounds.

    With ``base`` (measured in the same rounds) the ratio of what each adds over it,
    differenced round by round: median(num - base) / median(den - base).
    """
    x, y = np.asarray(num, float), np.asarray(den, float)
    if base is not None:
        b = np.asarray(base, float)
        x, y = x - b, y - b
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need the same number of rounds on both sides, got {len(x)} and {len(y)}")

    def stat(idx: np.ndarray) -> float:
        d = float(np.median(y[idx]))
        return float(np.median(x[idx])) / d if d != 0 else float("nan")

    rng = np.random.default_rng(seed)
    n = len(x)
    boots = np.array([stat(rng.integers(0, n, n)) for _ in range(n_boot)])
    boots = boots[np.isfinite(boots)]
    a = (1 - level) / 2
    return stat(np.arange(n)), float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))


def fmt_ratio(r: Tuple[float, float, float], digits: int = 2, unit: str = "") -> str:
    """'2.31 (95 % CI 2.20-2.45)'."""
    v, lo, hi = r
    return f"{v:.{digits}f}{unit} (95 % CI {lo:.{digits}f}-{hi:.{digits}f}{unit})"


def met(r: Tuple[float, float, float], goal: float) -> str:
    """'met' when the whole interval is at or below the goal, 'NOT met' when the point
    estimate is above it, else 'met on the point estimate only'."""
    v, lo, hi = r
    if v > goal:
        return "NOT met"
    return "met" if hi <= goal else "met on the point estimate only (the interval reaches past it)"
