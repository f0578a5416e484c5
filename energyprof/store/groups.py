"""Group a run's rows by a key in one hashed pass: ``np.unique``'s answers without its sort.

The views and the aggregations group the call rows by component name (a 128-byte ``U32``
field), by layer and by (layer, component) many times over; ``np.unique`` sorts every row
each time, O(n log n) on long strings, which on a run of millions of calls takes seconds
per grouping.  :func:`unique_inverse` gives the same answers from ``_core.group_rows``: one
pass hashing each row's bytes into a table that grows with the groups, then a sort of the
(few) distinct keys only.

Bytes stand for values only for some dtypes: integers, fixed-width strings (``U``, ``S``)
and structured rows of those with no padding.  Floats (-0.0 == 0.0, NaNs), booleans (a
``True`` need not be the byte 1), objects and padded records go to ``np.unique`` itself,
with the same result.

>>> import numpy as np
>>> u, inv = unique_inverse(np.array(["mlp", "attn", "mlp", "layer"]))
>>> u.tolist(), inv.tolist()
(['attn', 'layer', 'mlp'], [2, 0, 2, 1])
>>> u, inv = unique_inverse(np.array([[3, 1], [0, 2], [3, 1]]), axis=0)
>>> u.tolist(), inv.tolist()
([[0, 2], [3, 1]], [1, 0, 1])
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .. import _core

__all__ = ["unique_inverse", "unique_index_inverse", "first_seen", "by_bytes", "index_of", "map_distinct"]

_BYTE_KINDS = "iuUS"

#: Group through ``_core.group_rows`` where the dtype allows (:func:`by_bytes`); False sends
#: every grouping to ``np.unique`` (same answers: benchmarks/long_run.py times the report both
#: ways side by side, tests/test_groups.py checks both).
USE_C = True


def by_bytes(dtype: np.dtype) -> bool:
    """Whether equal bytes mean equal values (and back) for ``dtype``: integers, fixed-width
    strings, and records of those with no padding between or after the fields."""
    dtype = np.dtype(dtype)
    if dtype.names is None:
        return dtype.kind in _BYTE_KINDS and dtype.subdtype is None and dtype.itemsize > 0
    size = 0
    for name in dtype.names:
        sub, offset = dtype.fields[name][:2]
        if offset != size or not by_bytes(sub):
            return False
        size += sub.itemsize
    return size == dtype.itemsize


def _rows(values: np.ndarray, axis: Optional[int], who: str) -> np.ndarray:
    """The rows grouped: ``values`` flattened (axis None, as ``np.unique`` does) or a 2-D array's rows."""
    a = np.asarray(values)
    if axis is None:
        return a.reshape(-1)
    if axis != 0 or a.ndim != 2:
        raise ValueError(f"{who}: axis must be None or 0 with a 2-D array, got axis={axis!r}, ndim={a.ndim}")
    return a


def _for_c(a: np.ndarray) -> Optional[np.ndarray]:
    """``a`` as ``_core.group_rows`` takes it (2-D rows made contiguous), or None where bytes
    do not stand for values (:func:`by_bytes`), rows have no bytes, or :data:`USE_C` is off."""
    if not (USE_C and by_bytes(a.dtype)):
        return None
    if a.ndim == 2:
        if a.shape[1] == 0:
            return None
        if a.shape[1] > 1 and a.strides[1] != a.itemsize:
            return np.ascontiguousarray(a)
    return a


def _np_unique(a: np.ndarray, axis: Optional[int]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    u, first, inv = np.unique(a, return_index=True, return_inverse=True, axis=axis)
    return u, first.astype(np.int64), inv.reshape(-1).astype(np.int64)


def _ranks(order: np.ndarray) -> np.ndarray:
    """The inverse of the permutation ``order``: where each item went."""
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


def first_seen(values: np.ndarray, axis: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``(inverse, first)``: each row's group, groups numbered in the order their first row
    occurs, and that first row of each group.  ``axis=0`` groups the rows of a 2-D array;
    without it ``values`` is flattened (as ``np.unique`` does)."""
    a = _rows(values, axis, "first_seen")
    c = _for_c(a)
    if c is not None:
        return _core.group_rows(c)
    _, first_sorted, inv = _np_unique(a, axis)       # sorted groups, renumbered in first-seen order
    order = np.argsort(first_sorted, kind="stable")
    return _ranks(order)[inv], first_sorted[order]


def unique_index_inverse(values: np.ndarray, axis: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(values, return_index=True, return_inverse=True, axis=axis)`` with a 1-D
    inverse: the distinct values sorted, the first row of each, and each row's index into
    them."""
    a = _rows(values, axis, "unique_index_inverse")
    c = _for_c(a)
    if c is None:
        return _np_unique(a, axis)
    inverse, first = _core.group_rows(c)
    keys = a[first]                                   # the distinct rows only are sorted
    if axis is None:
        order = np.argsort(keys, kind="stable")
    else:
        order = np.lexsort(keys.T[::-1])
    return keys[order], first[order], _ranks(order)[inverse]


def unique_inverse(values: np.ndarray, axis: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True, axis=axis)`` with a 1-D inverse, in one
    hashed pass where the dtype allows it (:func:`by_bytes`)."""
    u, _, inv = unique_index_inverse(values, axis)
    return u, inv


def index_of(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """For each of ``wanted``, the row of ``ids`` holding it (the last such row when several
    do, as a dict built row by row keeps), -1 where none does.  Integers; one sort of ``ids``.

    >>> index_of(np.array([7, 3, 7]), np.array([7, 5, 3])).tolist()
    [2, -1, 1]
    """
    ids = np.asarray(ids, dtype=np.int64)
    wanted = np.asarray(wanted, dtype=np.int64)
    if len(ids) == 0:
        return np.full(len(wanted), -1, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    k = np.searchsorted(ids[order], wanted, side="right") - 1
    at = order[np.maximum(k, 0)]
    return np.where((k >= 0) & (ids[at] == wanted), at, -1).astype(np.int64)


def map_distinct(values: np.ndarray, fn, dtype: object = object) -> np.ndarray:
    """``np.array([fn(v) for v in values])`` with ``fn`` called once per distinct value
    (the rows of a run repeat a few names millions of times).

    >>> map_distinct(np.array(["a", "bb", "a"]), len, int).tolist()
    [1, 2, 1]
    """
    u, inv = unique_inverse(values)
    out = np.array([fn(v) for v in u.tolist()], dtype=dtype) if len(u) else np.zeros(0, dtype=dtype)
    return out[inv]
