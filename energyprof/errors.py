"""The user-facing exception types. Every layer may import this module; it imports nothing.

* :class:`UserError`: a mistake of the user's (bad run id, bad option, missing package);
  the ``energyprof`` command prints it in one line and exits with status 2.
* :class:`MissingExtraError`: an optional package is not installed; names the extra that
  brings it (``pip install 'energyprof[torch]'``).
* :class:`DeviceError`: a source's device list names a device that is malformed or absent.
* :class:`NoDataError`: a run holds nothing for the figure asked for.
* :class:`SchemaError`: a database whose schema this version cannot read.
"""
from __future__ import annotations

__all__ = ["UserError", "MissingExtraError", "NoDataError", "SchemaError", "DeviceError", "require"]

#: Which extra of the package brings which importable module.
EXTRAS = {"torch": "torch", "transformers": "torch", "matplotlib": "plot", "plotly": "plot", "rich": "cli",
          "fastapi": "serve", "uvicorn": "serve", "starlette": "serve",
          "anywidget": "plot", "onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx"}


class UserError(Exception):
    """A mistake of the user's: reported in one line, exit status 2."""


class MissingExtraError(UserError, ImportError):
    """An optional package is missing; the message names the extra to install."""

    def __init__(self, module: str, what: str = "this") -> None:
        root = module.split(".")[0]
        self.module = module
        self.extra = EXTRAS.get(root)
        how = f"pip install 'energyprof[{self.extra}]'" if self.extra else f"pip install {root}"
        super().__init__(f"{what} needs {module}, which is not installed: {how}")


class DeviceError(UserError, ValueError):
    """A source was asked for a device it cannot read: a malformed device list
    (``nvml:devices=0,x``) or a device that is not there (the message names the entry and
    how many devices there are)."""


class NoDataError(ValueError):
    """The run has no data for the requested figure (e.g. no layer calls, no decode)."""


class SchemaError(ValueError):
    """The file is not an energyprof store this version can use (not SQLite, foreign, or newer)."""


def require(module: str, what: str = "this"):
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra that brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if getattr(exc, "name", None) not in (None, module, module.split(".")[0]):
            raise  # the package is there but one of its own imports failed: show that
        raise MissingExtraError(module, what) from None
