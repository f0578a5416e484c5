"""The run store: the SQLite schema and its migrations, the read/write API (``db``) and
:class:`RunData`, one run's record.  Imports only the base modules: the store never needs a
live session, an analysis or a view."""
from .db import Store, cleanup, delete, export, import_run, load, runs, stats
from .rundata import RunData

__all__ = ["Store", "RunData", "cleanup", "delete", "export", "import_run", "load", "runs", "stats"]
