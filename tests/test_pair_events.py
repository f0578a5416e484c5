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
