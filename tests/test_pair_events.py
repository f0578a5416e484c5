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
