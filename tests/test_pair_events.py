"""attribution.pair_events (the C pass _core.pair_spans, sorted when needed) against the
stack-per-span loop it replaced (_reference.pair_events), and _core.pair_spans /
_core.fill_rows against their twins, on random nested event streams with ties, begins
that never end (a forward raised), ends with nothing open and clocks stepping back; and
hand-worked cases."""
from __future__ import annotations

import numpy as np
import pytest

from energyprof._dtypes import EVENT_DTYPE
from energyprof import _core, _reference
from energyprof._reference import pair_events as _pair_events_loop
from energyprof.measure.attribution import pair_events


def test_hand_worked_recursion_and_a_begin_without_end():
    # span 0: B@0 B@1 E@2 E@5 (recursion); span 1: B@3 (raised, no end) B@4 E@6
    ev = np.array([(0, 0, 0), (1, 0, 0), (2, 0, 1), (3, 1, 0), (4, 1, 0), (5, 0, 1), (6, 1, 1)], EVENT_DTYPE)
    sid, b, e = pair_events(ev, 2)
    assert sid.tolist() == [0, 0, 1] and b.tolist() == [0, 1, 4] and e.tolist() == [5, 2, 6]


def _random_stream(rng, n_events, n_spans, ties, stray, backwards=False):
    ev, t, open_ = [], 0, {}
    for _ in range(n_events):
        sid = int(rng.integers(0, n_spans))
        t += int(rng.integers(0, 3 if ties else 1000))
        if backwards and rng.random() < 0.05:
            t -= int(rng.integers(1, 50))      # a clock that steps back
        r = rng.random()
        if r < 0.5:
            ev.append((t, sid, 0))
            open_[sid] = open_.get(sid, 0) + 1
        elif open_.get(sid, 0) > 0 or (stray and r < 0.6):
            ev.append((t, sid, 1))
            open_[sid] = max(0, open_.get(sid, 0) - 1)
    return np.array(ev, EVENT_DTYPE).reshape(-1)


@pytest.mark.parametrize("seed", range(6))
def test_equals_the_loop_on_random_streams(seed):
    rng = np.random.default_rng(seed)
    for trial in range(60):
        e = _random_stream(rng, int(rng.integers(0, 150)), 4, ties=True, stray=trial % 3 == 0)
        for got, want in zip(pair_events(e, 4), _pair_events_loop(e)):
            np.testing.assert_array_equal(got, want)
            assert got.dtype == want.dtype


def test_call_numbers_layers_and_components_of_attribute_equal_a_loop():
    # two forwards; inside each, random back-to-back calls of 3 spans (several per step)
    from energyprof import _core
    from energyprof.measure.attribution import Forward, SpanInfo, attribute

    rng = np.random.default_rng(11)
    spans = [SpanInfo(layer=0, component="attn"), SpanInfo(layer=0, component="mlp"), SpanInfo(layer=1, component="mlp")]
    ev, fw, t = [], [], 1_000
    for f in range(3):
        f0 = t
        for _ in range(int(rng.integers(5, 15))):
            sid = int(rng.integers(0, 3))
            ev += [(t, sid, 0), (t + 5, sid, 1)]
            t += 10
        fw.append(Forward(f0, t, batch=1, new_positions=4 if f == 0 else 1, input_tokens=4 if f == 0 else 0,
                          prefill=f == 0))
        t += 20
    events = np.array(ev, EVENT_DTYPE)
    s = np.zeros(1, np.dtype(_core.SAMPLE_DTYPE))
    s["t_start_ns"], s["t_end_ns"], s["kind"] = 0, t + 100, _core.KIND_INTERVAL
    s["cpu_w"] = 1.0
    for c in ("gpu_w", "ane_w", "dram_w", "package_w"):
        s[c] = np.nan
    calls = attribute(s, 0, t + 100, fw, events, spans).calls
    sid, _, _ = _pair_events_loop(events)
    seen, want = {}, []
    for key in zip(sid.tolist(), calls["step"].tolist()):
        want.append(seen.get(key, 0))
        seen[key] = want[-1] + 1
    assert max(want) >= 2
    assert calls["call"].tolist() == want
    assert calls["layer"].tolist() == [spans[i].layer for i in sid.tolist()]
    assert calls["component"].tolist() == [spans[i].component for i in sid.tolist()]


def _parents_loop(span_ids, begins, ends, spans):
    # the per-span loop attribution._parents replaced: the oracle
    parent = np.full(len(span_ids), -1, dtype=np.int32)
    by_span = {sid: np.flatnonzero(span_ids == sid) for sid in np.unique(span_ids).tolist()}
    for sid, idx in by_span.items():
        psid = spans[sid].parent_span
        while psid >= 0 and psid not in by_span:
            psid = spans[psid].parent_span
        if psid < 0:
            continue
        pidx = by_span[psid]
        pos = np.searchsorted(begins[pidx], begins[idx], side="right") - 1
        ok = pos >= 0
        cand = pidx[np.maximum(pos, 0)]
        ok &= ends[cand] >= ends[idx]
        parent[idx[ok]] = cand[ok]
    return parent


@pytest.mark.parametrize("seed", range(4))
def test_parents_equal_the_per_span_loop(seed):
    from energyprof.measure.attribution import SpanInfo, _parents

    rng = np.random.default_rng(seed)
    # span tree: 0 layer; 1 attn (in 0); 2 q_proj (in 1); 3 mlp (in 0); 4 never called, 5 in 4 (-> 0)
    spans = [SpanInfo(0, "layer"), SpanInfo(0, "attn", 0), SpanInfo(0, "q_proj", 1), SpanInfo(0, "mlp", 0),
             SpanInfo(0, "x", 0), SpanInfo(0, "y", 4), SpanInfo(1, "orphan")]
    ev, t = [], 0
    for _ in range(int(rng.integers(1, 30))):
        ev.append((t, 0, 0))
        for sid in rng.permutation([1, 3, 5, 6])[: int(rng.integers(0, 4))].tolist():
            t += int(rng.integers(0, 3))
            ev.append((t, sid, 0))
            if sid == 1 and rng.random() < 0.7:
                t += 1
                ev += [(t, 2, 0), (t + int(rng.integers(0, 2)), 2, 1)]
                t += 2
            t += int(rng.integers(0, 3))
            ev.append((t, sid, 1))
        t += int(rng.integers(0, 2))
        ev.append((t, 0, 1))
        t += 1
    sid, b, e = pair_events(np.array(ev, EVENT_DTYPE), len(spans))
    got = _parents(sid, b, e, spans)
    np.testing.assert_array_equal(got, _parents_loop(sid, b, e, spans))
    assert (got >= 0).sum() > 0


@pytest.mark.parametrize("seed", range(8))
def test_c_pair_spans_equals_its_twin(seed):
    """_core.pair_spans against the Python stack per span (_reference.pair_spans): the same
    calls in the same order, the same end positions and the same 'already sorted' answer,
    on streams with ties, stray ends, begins never closed and clocks stepping back."""
    rng = np.random.default_rng(100 + seed)
    flags = set()
    for trial in range(40):
        e = _random_stream(rng, int(rng.integers(0, 200)), int(rng.integers(1, 6)), ties=trial % 2 == 0,
                           stray=trial % 3 == 0, backwards=trial % 5 == 0)
        got, want = _core.pair_spans(e), _reference.pair_spans(e)
        for g, w in zip(got[:4], want[:4]):
            np.testing.assert_array_equal(g, w)
            assert g.dtype == w.dtype
        assert got[4] == want[4]
        flags.add(got[4])
        for g, w in zip(pair_events(e, 6), _pair_events_loop(e)):
            np.testing.assert_array_equal(g, w)
    assert flags == {True, False}   # both the in-order path and the sorting path ran


def test_c_pair_spans_edge_cases():
    empty = np.zeros(0, EVENT_DTYPE)
    sid, b, e, pos, ok = _core.pair_spans(empty)
    assert len(sid) == len(b) == len(e) == len(pos) == 0 and ok
    only_ends = np.array([(5, 0, 1), (6, 1, 1)], EVENT_DTYPE)
    assert len(_core.pair_spans(only_ends)[0]) == 0
    never_closed = np.array([(1, 2, 0), (2, 2, 0), (3, 2, 1)], EVENT_DTYPE)   # the inner one closes
    sid, b, e, pos, ok = _core.pair_spans(never_closed)
    assert sid.tolist() == [2] and b.tolist() == [2] and e.tolist() == [3] and pos.tolist() == [2] and ok
    # equal timestamps: a zero-length call inside an outer one that starts at the same ns
    same = np.array([(7, 0, 0), (7, 1, 0), (7, 1, 1), (9, 0, 1)], EVENT_DTYPE)
    sid, b, e, pos, ok = _core.pair_spans(same)
    assert sid.tolist() == [0, 1] and e.tolist() == [9, 7] and ok
    swapped = np.array([(7, 1, 0), (7, 0, 0), (7, 1, 1), (9, 0, 1)], EVENT_DTYPE)   # inner begin recorded first
    assert not _core.pair_spans(swapped)[4]
    assert pair_events(swapped, 2)[0].tolist() == [0, 1]                 # sorted: the longer call first
    with pytest.raises(ValueError, match="span_id=-1"):
        _core.pair_spans(np.array([(1, -1, 0)], EVENT_DTYPE))
    with pytest.raises(ValueError, match="EVENT_DTYPE"):
        _core.pair_spans(np.zeros(3, np.int64))


def test_c_fill_rows_equals_its_twin():
    """_core.fill_rows against a byte copy per column (_reference.fill_rows), on a dtype with
    odd offsets and sizes 1, 4, 8 and 12, one value broadcast, and bad columns refused."""
    rng = np.random.default_rng(3)
    dt = np.dtype([("a", "<i4"), ("flag", "?"), ("x", "<f8"), ("s", "U3"), ("b", "<i8"), ("y", "<f8")])
    for n in (0, 1, 7, 1000):
        cols = [(dt.fields["a"][1], rng.integers(-9, 9, n).astype("<i4")),
                (dt.fields["flag"][1], rng.random(n) < 0.5),
                (dt.fields["x"][1], np.array(np.nan)),
                (dt.fields["s"][1], np.array(["ab", "c", "xyz"] * (n // 3) + ["q"] * (n % 3), "U3")),
                (dt.fields["b"][1], np.arange(n, dtype="<i8") * 3)]
        got, want = np.zeros(n, dt), np.zeros(n, dt)
        got["y"] = want["y"] = 1.5     # a field no column writes stays as it was
        _core.fill_rows(got, cols)
        _reference.fill_rows(want, cols)
        assert got.tobytes() == want.tobytes()
        if n == 1000:
            assert got["s"][2] == "xyz" and np.isnan(got["x"]).all() and (got["y"] == 1.5).all()
    rows = np.zeros(4, dt)
    with pytest.raises(ValueError, match="do not fit"):
        _core.fill_rows(rows, [(dt.itemsize - 4, np.zeros(4, np.int64))])
    with pytest.raises(ValueError, match="3 values for 4 rows"):
        _core.fill_rows(rows, [(0, np.zeros(3, np.int32))])


@pytest.mark.parametrize("seed", range(6))
def test_c_call_parents_equals_its_twin(seed):
    """_core.call_parents against the numpy key search attribution used before
    (_reference.call_parents), on random nested calls with equal begins, spans never
    called (their children look further up) and calls outside their parent's call."""
    rng = np.random.default_rng(200 + seed)
    for trial in range(40):
        n_spans = int(rng.integers(1, 8))
        parent_span = np.array([int(rng.integers(-1, k)) if k else -1 for k in range(n_spans)], np.int64)
        e = _random_stream(rng, int(rng.integers(0, 200)), n_spans, ties=trial % 2 == 0, stray=False)
        sid, b, en = pair_events(e, n_spans)
        got = _core.call_parents(sid, b, en, parent_span)
        want = _reference.call_parents(sid, b, en, parent_span)
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype == np.int32
    # hand-worked: layer (span 0) holds attn (1) holds q (2); span 3's parent 4 is never called -> up to 0
    spans = np.array([-1, 0, 1, 4, 0], np.int64)
    sid = np.array([0, 1, 2, 3, 0, 2], np.int32)
    b = np.array([0, 1, 1, 5, 10, 20], np.int64)
    en = np.array([9, 4, 2, 6, 12, 21], np.int64)
    assert _core.call_parents(sid, b, en, spans).tolist() == [-1, 0, 1, 0, -1, -1]
    with pytest.raises(ValueError, match="before the previous"):
        _core.call_parents(sid[::-1].copy(), b[::-1].copy(), en[::-1].copy(), spans)
    with pytest.raises(ValueError, match="outside"):
        _core.call_parents(np.array([5], np.int32), b[:1], en[:1], spans)
