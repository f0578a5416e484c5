"""Measuring: power sources and the C sampler, hooks on the model, the architecture map,
deep mode, the session (``ep.run``), attribution of energy to windows, the live feed and
sweeps.  May import views, analysis, store and the base modules; never cli."""
from .sampler import Sampler
from .session import Session, run

__all__ = ["Sampler", "Session", "run"]
