"""The ``energyprof`` command: a thin layer over the library, one module per command (or group).
Nothing outside this package imports it."""
from .main import build_parser, main

__all__ = ["main", "build_parser"]
