"""energyprof.store.groups and _core.group_rows against oracles written apart from them:
``np.unique`` on the values themselves (a sort), and a dict built row by row (first-seen
numbering).  The C kernel hashes bytes; these hold it to values."""
from __future__ import annotations

import numpy as np
import pytest

from energyprof import _core, _reference
from energyprof.store import groups

NAMES = np.array(["layer", "input_norm", "attn", "q_proj", "k_proj", "v_proj", "o_proj", "post_norm", "mlp",
                  "attn.qk", "attn.softmax", "mlp.act", "a", "", "expert.12.down_proj"], dtype="U32")


def dict_first_seen(values):
    """Oracle: (inverse, first) by a dict over the rows, keys the rows as Python values."""
    seen, inv, first = {}, [], []
    for i, v in enumerate(values.tolist()):
        key = tuple(v) if isinstance(v, (list, tuple)) else v
        if key not in seen:
            seen[key] = len(first)
            first.append(i)
        inv.append(seen[key])
    return np.array(inv, np.int64), np.array(first, np.int64)


def cases():
    rng = np.random.default_rng(7)
    yield "names", NAMES[rng.integers(0, len(NAMES), 20_000)]
    yield "many distinct (table growth)", np.array([f"c{k}" for k in rng.integers(0, 6000, 30_000)], dtype="U32")
    yield "int64", rng.integers(-50, 50, 10_000)
    yield "int32 big range", rng.integers(-2**31, 2**31 - 1, 5_000).astype(np.int32)
    yield "uint8", rng.integers(0, 256, 3_000).astype(np.uint8)
    yield "bytes S13", np.array([bytes([65 + k % 3]) * 12 + bytes([k % 2 + 48]) for k in rng.integers(0, 9, 4000)],
                                dtype="S13")
    yield "tail differs past 8 bytes", np.array(["abcdefghijk", "abcdefghijl", "abcdefghijk"], dtype="U11")
    key = np.zeros(8_000, dtype=[("layer", "<i8"), ("component", "U32")])
    key["layer"] = rng.integers(-1, 32, len(key))
    key["component"] = NAMES[rng.integers(0, len(NAMES), len(key))]
    yield "structured (layer, component)", key
    yield "strided view", NAMES[rng.integers(0, len(NAMES), 9_000)][::3]
    yield "reversed view", rng.integers(0, 7, 1_000)[::-1]
    yield "one row", np.array(["x"])
    yield "empty", np.zeros(0, dtype="U8")


@pytest.mark.parametrize("name,values", list(cases()), ids=[c[0] for c in cases()])
def test_unique_inverse_is_numpys(name, values):
    u, inv = groups.unique_inverse(values)
    u_np, idx_np, inv_np = np.unique(values, return_index=True, return_inverse=True)
    assert u.dtype == u_np.dtype and np.array_equal(u, u_np)
    assert np.array_equal(inv, inv_np.reshape(-1))
    u2, idx, inv2 = groups.unique_index_inverse(values)
    assert np.array_equal(idx, idx_np) and np.array_equal(inv2, inv_np.reshape(-1)) and np.array_equal(u2, u_np)


@pytest.mark.parametrize("name,values", list(cases()), ids=[c[0] for c in cases()])
def test_c_kernel_numbers_groups_by_first_occurrence(name, values):
    want_inv, want_first = dict_first_seen(values)
    inv, first = _core.group_rows(values)
    assert inv.dtype == np.int64 and first.dtype == np.int64
    assert np.array_equal(inv, want_inv) and np.array_equal(first, want_first)
    t_inv, t_first = _reference.group_rows(values)           # the numpy twin agrees
    assert np.array_equal(t_inv, want_inv) and np.array_equal(t_first, want_first)


def test_rows_of_a_2d_array():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 4, (5_000, 3))
    u, inv = groups.unique_inverse(a, axis=0)
    u_np, inv_np = np.unique(a, axis=0, return_inverse=True)
    assert np.array_equal(u, u_np) and np.array_equal(inv, inv_np.reshape(-1))
    want_inv, want_first = dict_first_seen(a)
    got_inv, got_first = _core.group_rows(a)
    assert np.array_equal(got_inv, want_inv) and np.array_equal(got_first, want_first)
    # a column-major copy has strided rows: the C kernel refuses, the Python layer copies
    f = np.asfortranarray(a)
    with pytest.raises(ValueError, match="contiguous"):
        _core.group_rows(f)
    u_f, inv_f = groups.unique_inverse(f, axis=0)
    assert np.array_equal(u_f, u_np) and np.array_equal(inv_f, inv_np.reshape(-1))


def test_floats_bools_and_padded_records_go_by_value():
    """Where equal bytes are not equal values the answer is still np.unique's."""
    x = np.array([0.0, -0.0, np.nan, 1.5, np.nan, 0.0])
    u, inv = groups.unique_inverse(x)
    u_np, inv_np = np.unique(x, return_inverse=True)
    assert np.array_equal(u, u_np, equal_nan=True) and np.array_equal(inv, inv_np.reshape(-1))
    assert inv[0] == inv[1]                                  # -0.0 == 0.0
    b = np.frombuffer(bytes([0, 1, 2, 1]), dtype=np.bool_)   # 2 is True too
    u, inv = groups.unique_inverse(b)
    assert u.tolist() == [False, True] and inv.tolist() == [0, 1, 1, 1]
    padded = np.dtype({"names": ["a", "b"], "formats": ["<i4", "<i8"], "offsets": [0, 8], "itemsize": 16})
    assert not groups.by_bytes(padded) and groups.by_bytes(np.dtype([("a", "<i4"), ("b", "<i8")]))
    assert not groups.by_bytes(np.float64) and not groups.by_bytes(np.bool_) and groups.by_bytes("U5")


def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="Python objects"):
        _core.group_rows(np.array(["a", None], dtype=object))
    with pytest.raises(ValueError, match="1 or 2 dimensions"):
        _core.group_rows(np.zeros((2, 2, 2), np.int64))
    with pytest.raises(TypeError, match="numpy array"):
        _core.group_rows([1, 2])
    with pytest.raises(ValueError, match="axis"):
        groups.first_seen(np.zeros(3), axis=1)
    # object arrays still group through np.unique in the Python layer
    u, inv = groups.unique_inverse(np.array(["b", "a", "b"], dtype=object))
    assert u.tolist() == ["a", "b"] and inv.tolist() == [1, 0, 1]


def test_index_of_is_a_dict_lookup():
    rng = np.random.default_rng(11)
    ids = rng.integers(0, 500, 2_000)                        # repeated ids: the last row wins, as in a dict
    wanted = rng.integers(-5, 600, 3_000)
    last = {int(v): i for i, v in enumerate(ids)}
    want = np.array([last.get(int(w), -1) for w in wanted])
    assert np.array_equal(groups.index_of(ids, wanted), want)
    assert groups.index_of(np.zeros(0, np.int64), np.array([1, 2])).tolist() == [-1, -1]


def test_map_distinct_calls_once_per_value():
    calls = []

    def fn(v):
        calls.append(v)
        return v.upper()

    v = NAMES[np.random.default_rng(5).integers(0, 4, 1_000)]
    out = groups.map_distinct(v, fn, "U32")
    assert out.tolist() == [s.upper() for s in v.tolist()]
    assert sorted(calls) == sorted(set(v.tolist()))


def test_numpy_path_gives_the_same_answers(monkeypatch):
    """groups.USE_C off (what benchmarks/long_run.py times against) answers the same."""
    v = NAMES[np.random.default_rng(2).integers(0, len(NAMES), 5_000)]
    with_c = groups.unique_index_inverse(v)
    monkeypatch.setattr(groups, "USE_C", False)
    without = groups.unique_index_inverse(v)
    for x, y in zip(with_c, without):
        assert np.array_equal(x, y)
