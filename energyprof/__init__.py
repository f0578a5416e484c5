"""energyprof: the energy of transformer inference, per run, phase, token, layer and domain.

>>> import energyprof as ep
>>> with ep.Sampler("synthetic:power_w=20,period_ms=5") as s:
...     pass
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import _core  # noqa: F401  (the C core; ImportError here means the build failed)
from ._core import now_ns  # noqa: F401
from . import doctor, sources  # noqa: F401,E402  (ep.doctor() is callable)
from .sampler import Sampler  # noqa: F401,E402
from .session import Session, run  # noqa: F401,E402
from .rundata import RunData  # noqa: F401,E402
from .db import Store, cleanup, compare, delete, export, import_run, load, runs, stats  # noqa: F401,E402
from .analysis import architecture_scaling, compare_groups, efficiency, ols  # noqa: F401,E402
from .sweep import SweepResult, load_sweep, sweep  # noqa: F401,E402  (ep.sweep is the function)
from .predict import Predictor  # noqa: F401,E402
from .carbon import footprint, footprint_runs  # noqa: F401,E402
from .live import live  # noqa: F401,E402  (ep.live(s); the module is energyprof.live)
