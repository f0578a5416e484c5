"""energyprof: the energy of transformer inference, per run, phase, token, layer and domain.

The package is laid out by the data flow (docs/architecture.md): ``measure`` (sources,
sampler, hooks, session), ``store`` (the run store), ``analysis`` (numbers over runs),
``views`` (plots, report) and ``cli`` (the command).  This module only re-exports the
public API.

>>> import energyprof as ep
>>> with ep.Sampler("synthetic:power_w=20,period_ms=5") as s:
...     pass
"""
from __future__ import annotations

from ._version import __version__  # noqa: F401
from . import _core  # noqa: F401  (the C core; ImportError here means the build failed)
from ._core import now_ns  # noqa: F401
from .errors import MissingExtraError, NoDataError, SchemaError, UserError  # noqa: F401
from .measure import doctor, sources  # noqa: F401  (ep.doctor() is callable)
from .measure.sampler import Sampler  # noqa: F401
from .measure.session import Session, run  # noqa: F401
from .measure.sweep import sweep  # noqa: F401
from .measure import engines  # noqa: F401  (ep.engines.make_engine, OnnxRuntimeEngine, ...)
from .measure.engines import TokenStreamer  # noqa: F401
from .measure.repeat import repeat  # noqa: F401
from .store import db  # noqa: F401  (ep.db.default_path())
from .store.rundata import RunData  # noqa: F401
from .store.db import Store, cleanup, delete, export, import_run, load, runs, stats  # noqa: F401
from .analysis.comparison import compare  # noqa: F401
from .analysis.efficiency import architecture_scaling, compare_groups, efficiency  # noqa: F401
from .analysis.stats import ols  # noqa: F401
from .analysis.resolve import resolve  # noqa: F401
from .analysis.sweep import SweepResult, load_sweep  # noqa: F401
from .analysis.predict import Predictor  # noqa: F401
from .analysis.carbon import footprint, footprint_runs  # noqa: F401
from .views.plot import plot  # noqa: F401
from .views.report import write_report  # noqa: F401
from .views.live import live  # noqa: F401  (ep.live(s): a live plot in Jupyter)
