"""attribution.pair_events (vectorised) against the stack-per-span loop it replaced, on
random nested event streams with ties, begins that never end (a forward raised) and
ends with nothing open; and a hand-worked case."""
from __future__ import annotations

import numpy as np
import pytest

from energyprof._dtypes import EVENT_DTYPE
from energyprof.measure.attribution import _pair_events_loop, pair_events


def test_hand_worked_recursion_and_a_begin_without_end():
    # span 0: B@0 B@1 E@2 E@5 (recursion); span 1: B@3 (raised, no end) B@4 E@6
    ev = np.array([(0, 0, 0), (1, 0, 0), (2, 0, 1), (3, 1, 0), (4, 1, 0), (5, 0, 1), (6, 1, 1)], EVENT_DTYPE)
    sid, b, e = pair_events(ev, 2)
    assert sid.tolist() == [0, 0, 1] and b.tolist() == [0, 1, 4] and e.tolist() == [5, 2, 6]


@pytest.mark.parametrize("seed", range(6))
def test_equals_the_loop_on_random_streams(seed):
    rng = np.random.default_rng(seed)
    for trial in range(60):
        ev, t, open_ = [], 0, {}
        stray = trial % 3 == 0
        for _ in range(int(rng.integers(0, 150))):
            sid = int(rng.integers(0, 4))
            t += int(rng.integers(0, 3))          # ties on purpose
            r = rng.random()
            if r < 0.5:
                ev.append((t, sid, 0))
                open_[sid] = open_.get(sid, 0) + 1
            elif open_.get(sid, 0) > 0 or (stray and r < 0.55):
                ev.append((t, sid, 1))
                open_[sid] = max(0, open_.get(sid, 0) - 1)
        e = np.array(ev, EVENT_DTYPE)
        for got, want in zip(pair_events(e, 4), _pair_events_loop(e, 4)):
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
    sid, _, _ = _pair_events_loop(events, 3)
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
