"""``ep.repeat``: the same workload n times, each in its own ``ep.run``, with the sample
phase dithered, so that the samples of the runs fall at different points of the work.

Pooled, the runs give the regression of :func:`energyprof.resolve` many different mixes
of groups per sample, and give phase-level figures a spread across runs
(:func:`energyprof.analysis.multi`).

>>> import energyprof as ep, torch
>>> from energyprof.tiny import tiny_model
>>> m = tiny_model("tiny-llama")
>>> runs = ep.repeat(m, lambda: m(torch.tensor([[1, 2, 3]])), n=2,
...                  source="synthetic:power_w=5,period_ms=2", baseline_s=0, save=False)
>>> len(runs), runs[0].summary()["repeat"]["n"]
(2, 2)
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Callable, List, Optional

import numpy as np

from .session import Session, run

__all__ = ["repeat", "REPEAT_TAG_PREFIX"]

#: Every run of one group carries the tag ``repeat:<group id>``.
REPEAT_TAG_PREFIX = "repeat:"


def repeat(model: Any, fn: Callable[[], Any], n: int = 8, *, seed: Optional[int] = None,
           dither: bool = True, **run_kwargs: Any) -> List[Session]:
    """Run ``fn()`` ``n`` times, each inside ``ep.run(model, **run_kwargs)``.

    Before ``fn`` a random delay of up to one sample period (uniform, from
    ``numpy.random.default_rng(seed)``) shifts the workload against the sampler, so the
    runs' samples fall at different phases of it (``dither=False``: no delay).  Each run is
    saved like any run (unless ``save=False`` is passed) and tagged ``repeat:<group id>``;
    its summary gets ``"repeat": {"group", "index", "n", "delay_s"}``.

    Returns the list of finished sessions, in order.  ``n`` must be >= 1; ``fn`` callable.
    """
    if not callable(fn):
        raise TypeError(f"repeat: fn must be callable, got {type(fn).__name__}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"repeat: n must be an integer >= 1, got {n!r}")
    rng = np.random.default_rng(seed)
    group = uuid.uuid4().hex[:12]
    tags = list(run_kwargs.pop("tags", None) or []) + [REPEAT_TAG_PREFIX + group]
    out: List[Session] = []
    for i in range(int(n)):
        s = run(model, tags=tags, **run_kwargs)
        with s:
            period_s = s._sampler.interval_ns * 1e-9
            delay_s = float(rng.uniform(0.0, period_s)) if dither else 0.0
            if delay_s > 0:
                time.sleep(delay_s)
            fn()
        s._summary["repeat"] = {"group": group, "index": i, "n": int(n), "delay_s": delay_s}
        out.append(s)
    return out
