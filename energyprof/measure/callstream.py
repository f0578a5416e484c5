"""A long run's call rows go to the store piece by piece as they are attributed.

``ep.run(max_calls_in_memory=N)``: a run with more hook calls than ``N`` hands each piece
that :func:`energyprof.measure.attribution.attribute` builds to a :class:`CallStream`,
which writes its layer rows and component rows to the run's store and keeps nothing but
counts; the session reads the rows back from the store when asked (``s.layers``,
``s.components``).  At most two pieces are in memory at once (the one being written by the
store's writer thread and the one being built), so the memory after the block follows the
piece size, not the run (docs/long-runs.md).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

#: Default of ``ep.run(max_calls_in_memory=...)``: about 280 MB of call rows.
MAX_CALLS_IN_MEMORY: int = 1_000_000


class CallStream:
    """The ``calls_sink`` of :func:`~energyprof.measure.attribution.attribute` for one run.

    ``store`` is an open :class:`~energyprof.store.db.Store`, ``run_id`` the run; rows with
    ``component == "layer"`` go to its layers table, the others to its components table
    (ops are a deep run's and deep runs are not streamed).  ``judge_period_s``: a counter
    source's update period (boundary reads): rows shorter than it are marked unresolved
    before they are written (:func:`energyprof.measure.boundary.judge_resolved`).

    The first write error stops the stream: ``error`` holds it and later pieces are dropped,
    so the caller can attribute again in memory (nothing recorded is lost; see Session).
    """

    def __init__(self, store: Any, run_id: int, judge_period_s: Optional[float] = None) -> None:
        self.store = store
        self.run_id = int(run_id)
        self.judge_period_s = judge_period_s
        self.n_calls = self.n_resolved = self.n_pieces = self.n_layers = 0
        self.error: Optional[BaseException] = None
        try:   # rows of an earlier finish of this run are replaced, as finish_run replaces them
            from ..store.schema import ARRAY_TABLES

            for name in ("layers", "components"):
                store.writer.execute(f"DELETE FROM {ARRAY_TABLES[name]} WHERE run_id = ?", (self.run_id,))
        except Exception as e:   # a store that cannot be written: the caller falls back
            self.error = e

    def __call__(self, piece: np.ndarray) -> None:
        if self.error is not None:
            return
        if self.judge_period_s:
            from .boundary import judge_resolved

            judge_resolved(piece, self.judge_period_s)
        is_layer = piece["component"] == "layer"
        try:
            # the previous piece is committed before this one is queued: two pieces at most in memory
            self.store.flush()
            self.store.write_array(self.run_id, "layers", piece[is_layer])
            self.store.write_array(self.run_id, "components", piece[~is_layer])
        except Exception as e:
            self.error = e
            return
        self.n_calls += len(piece)
        self.n_layers += int(np.count_nonzero(is_layer))
        self.n_resolved += int(np.count_nonzero(piece["resolved"]))
        self.n_pieces += 1

    def close(self) -> None:
        """Wait for the last piece to be committed (its error, if any, lands in ``error``)."""
        if self.error is None:
            try:
                self.store.flush()
            except Exception as e:
                self.error = e

    @property
    def resolved_counts(self) -> tuple:
        """(resolved calls, calls) written."""
        return self.n_resolved, self.n_calls
