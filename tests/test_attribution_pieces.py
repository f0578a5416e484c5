"""Calls attributed in pieces (attribution.attribute's piece_calls / calls_sink): cutting
the run into pieces must not change a figure, a piece holds whole calls, and memory above
the input follows the piece, not the run."""
import tracemalloc

import numpy as np
import pytest

from energyprof import _core
from energyprof._dtypes import EVENT_DTYPE
from energyprof.measure.attribution import Forward, SpanInfo, attribute, event_pieces

MS = 1_000_000


def samples_of(t0, t1, period, power_w, kind=_core.KIND_INTERVAL, drop=()):
    """Samples of constant power per sample (power_w(i)), some rows dropped (holes)."""
    starts = np.arange(t0, t1, period, dtype=np.int64)
    s = np.zeros(len(starts), _core.SAMPLE_DTYPE)
    s["t_start_ns"] = starts
    s["t_end_ns"] = starts + (period if kind == _core.KIND_INTERVAL else 0)
    s["kind"] = kind
    for c in ("cpu_w", "gpu_w", "ane_w", "dram_w", "package_w"):
        s[c] = np.nan
    s["cpu_w"] = [power_w(i) for i in range(len(s))]
    s["gpu_w"] = 3.0
    keep = np.ones(len(s), bool)
    keep[list(drop)] = False
    return s[keep]


def events_of(calls):
    ev = sorted([(b, sid, 0) for sid, b, _ in calls] + [(e, sid, 1) for sid, _, e in calls],
                key=lambda x: (x[0], x[2] == 0))
    return np.array(ev, dtype=EVENT_DTYPE)


def awkward_run(kind=_core.KIND_INTERVAL):
    """A run with what a cut could get wrong: a module called three times in one step (its
    n-th call index must run on across pieces), nested calls, a call before the first
    forward, holes in the samples (one bridged, one long), and a forward that raised (a
    begin without its end)."""
    spans = [SpanInfo(-1, "model"), SpanInfo(0, "layer"), SpanInfo(0, "attn", 1), SpanInfo(0, "mlp", 1),
             SpanInfo(-1, "lm_head")]
    t0, period = 10 * MS, 1 * MS + 13
    calls, forwards = [(4, t0 + 1 * MS, t0 + 2 * MS)], []   # lm_head called before any forward
    t = t0 + 5 * MS
    for i in range(6):
        f0 = t
        for rep in range(3):   # the layer three times in one forward
            b = f0 + rep * 4 * MS
            calls += [(1, b, b + 3 * MS), (2, b + 1 * MS, b + 2 * MS), (3, b + 2 * MS + 10, b + 3 * MS - 10)]
        calls.append((4, f0 + 12 * MS, f0 + 13 * MS))
        forwards.append(Forward(f0, f0 + 14 * MS, batch=1, new_positions=4 if i == 0 else 1,
                                input_tokens=4 if i == 0 else 0, prefill=i == 0))
        t = f0 + 15 * MS
    t1 = t + 2 * MS
    ev = events_of(calls)
    raised = np.array([(t1 - MS, 1, 0)], dtype=EVENT_DTYPE)   # a begin that never ended
    ev = np.concatenate([ev, raised])
    n = int((t1 + 5 * MS - t0) // period) + 2
    drop = [20, 21, 40, 41, 42, 43, 44, 45, 46, 47, 48]   # a short hole, and a long one (> 4 periods)
    s = samples_of(t0 - 3 * MS, t0 - 3 * MS + n * period, period, lambda i: 5.0 + (i % 7), kind, drop)
    return s, t0, t1, forwards, ev, spans


def assert_same_rows(a, b):
    assert a.dtype == b.dtype and len(a) == len(b)
    for name in a.dtype.names:
        if a.dtype[name].kind == "f":
            np.testing.assert_allclose(a[name], b[name], rtol=1e-12, atol=1e-12, equal_nan=True, err_msg=name)
        else:
            assert np.array_equal(a[name], b[name]), name


@pytest.mark.parametrize("kind", [_core.KIND_INTERVAL, _core.KIND_INSTANT], ids=["interval", "instant"])
@pytest.mark.parametrize("piece", [1, 2, 3, 7])
def test_pieces_change_no_figure(kind, piece):
    s, t0, t1, fw, ev, spans = awkward_run(kind)
    whole = attribute(s, t0, t1, fw, ev, spans, piece_calls=10**9)
    cut = attribute(s, t0, t1, fw, ev, spans, piece_calls=piece)
    assert whole.n_pieces == 1 and cut.n_pieces > 6
    assert_same_rows(cut.calls, whole.calls)
    assert_same_rows(cut.sections, whole.sections)
    assert cut.summary["resolution"] == whole.summary["resolution"]


def test_the_nth_call_of_a_module_in_a_step_runs_on_across_pieces():
    s, t0, t1, fw, ev, spans = awkward_run()
    c = attribute(s, t0, t1, fw, ev, spans, piece_calls=1).calls
    # worked by hand: in every step the layer, attn and mlp are called 3 times (0, 1, 2) and
    # lm_head once; the lm_head call before the first forward is in no step (-1)
    for step in range(6):
        for comp in ("layer", "attn", "mlp"):
            sel = (c["step"] == step) & (c["component"] == comp)
            assert c["call"][sel].tolist() == [0, 1, 2], (step, comp)
    assert c["step"][0] == -1 and c["component"][0] == "lm_head" and c["call"][0] == 0
    assert len(c) == 1 + 6 * 10          # the raised begin is not a call
    # parents: each attn/mlp is a child of the layer call it lies in
    by_id = {int(r["call_id"]): r for r in c}
    for r in c[(c["component"] == "attn") | (c["component"] == "mlp")]:
        p = by_id[int(r["parent_id"])]
        assert p["component"] == "layer" and p["t_start_ns"] <= r["t_start_ns"] and r["t_end_ns"] <= p["t_end_ns"]
    assert np.array_equal(c["call_id"], np.arange(len(c)))


def test_a_sink_gets_every_piece_in_order_and_nothing_is_held():
    s, t0, t1, fw, ev, spans = awkward_run()
    whole = attribute(s, t0, t1, fw, ev, spans)
    got = []
    att = attribute(s, t0, t1, fw, ev, spans, calls_sink=got.append, piece_calls=4)
    assert len(att.calls) == 0 and att.n_calls == len(whole.calls) and att.n_pieces == len(got) > 3
    assert_same_rows(np.concatenate(got), whole.calls)
    assert att.summary["resolution"]["n_calls"] == len(whole.calls)
    assert att.summary["resolution"]["calls"] == pytest.approx(float(whole.calls["resolved"].mean()))
    assert_same_rows(att.sections, whole.sections)


def test_event_pieces_cut_only_where_nothing_is_open():
    ev = np.zeros(12, EVENT_DTYPE)
    # ( ( ) ) ( ) ( ( ( ) ) )  -> depth 0 after events 4, 6 and 12
    ev["kind"] = [0, 0, 1, 1, 0, 1, 0, 0, 0, 1, 1, 1]
    assert [len(p) for p in event_pieces(ev, 1)] == [4, 2, 6]
    assert [len(p) for p in event_pieces(ev, 2)] == [4, 2, 6]
    assert [len(p) for p in event_pieces(ev, 3)] == [6, 6]
    assert [len(p) for p in event_pieces(ev, 100)] == [12]
    # a begin that never ends: no closing point after it, the rest is one piece
    open_ev = ev.copy()
    open_ev["kind"][4:] = [0, 0, 0, 0, 1, 1, 1, 1]   # ( ( ) ) ( ( ( ( ) ) ) )
    open_ev = np.concatenate([open_ev[:4], np.zeros(1, EVENT_DTYPE), open_ev[4:]])   # one more begin
    assert [len(p) for p in event_pieces(open_ev, 1)] == [4, 9]
    # an end with nothing open: the depth count cannot tell, so the rest is one piece
    bad = np.zeros(6, EVENT_DTYPE)
    bad["kind"] = [0, 1, 1, 0, 0, 1]
    assert [len(p) for p in event_pieces(bad, 1)] == [2, 4]
    for p in event_pieces(ev, 1):   # views, no copies
        assert p.base is not None


def long_run(steps, layers=8):
    """A synthetic standard-mode run: per step `layers` layers each with attn and mlp."""
    spans = [SpanInfo(-1, "model")]
    for layer in range(layers):
        lid = len(spans)
        spans += [SpanInfo(layer, "layer"), SpanInfo(layer, "attn", lid), SpanInfo(layer, "mlp", lid)]
    step_ns, layer_ns = 40_000, 4_000
    t0 = 10**9
    off = np.array([0, 100, 1_500, 1_600, 3_000, 3_900], np.int64)
    kinds = np.array([0, 0, 1, 0, 1, 1], np.int32)
    sp_in_layer = np.array([0, 1, 1, 2, 2, 0], np.int32)
    lay_t = (np.arange(layers, dtype=np.int64) * layer_ns)[:, None] + off
    lay_sp = (1 + 3 * np.arange(layers, dtype=np.int32))[:, None] + sp_in_layer
    st = t0 + 1_000 + np.arange(steps, dtype=np.int64) * step_ns
    ev = np.zeros(steps * layers * 6, EVENT_DTYPE)
    ev["t_ns"] = (st[:, None] + lay_t.reshape(1, -1)).reshape(-1)
    ev["span_id"] = np.tile(lay_sp.reshape(-1), steps)
    ev["kind"] = np.tile(np.tile(kinds, layers), steps)
    fw = [Forward(int(st[i]), int(st[i] + layers * layer_ns), 1, 1, 4 if i == 0 else 0, i == 0) for i in range(steps)]
    t1 = int(st[-1] + step_ns)
    s = samples_of(t0, t1 + 10_000, 10_000, lambda i: 10.0)
    return s, t0, t1, fw, ev, spans


def traced_peak_above(fn) -> int:
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_memory_above_the_input_follows_the_piece_not_the_run():
    piece = 2_000
    peaks = {}
    for steps in (500, 2_000):   # 12,000 and 48,000 calls
        s, t0, t1, fw, ev, spans = long_run(steps)
        n_calls = len(ev) // 2
        written = [0]

        def sink(p):
            written[0] += len(p)

        held = traced_peak_above(lambda: attribute(s, t0, t1, fw, ev, spans, piece_calls=10**9))
        streamed = traced_peak_above(lambda: attribute(s, t0, t1, fw, ev, spans, calls_sink=sink, piece_calls=piece))
        assert written[0] == n_calls
        peaks[steps] = (held, streamed, n_calls)
    (h1, s1, n1), (h4, s4, n4) = peaks[500], peaks[2_000]
    # held at once: the peak grows with the calls (4x the calls, over 3x the bytes)
    assert h4 > 3 * h1
    # in pieces: four times the run, the same peak within what the run's own arrays add
    # (forwards, phase slots: ~100 bytes per step, not per call)
    assert s4 < 1.3 * s1 + 300 * 2_000, (s1, s4)
    assert s4 < h4 / 4


def test_span_ids_come_with_the_held_calls():
    s, t0, t1, fw, ev, spans = awkward_run()
    from energyprof.measure.attribution import pair_events

    want, _, _ = pair_events(ev, len(spans))   # the whole run paired at once: the order of the calls
    for piece in (1, 3, 10**9):
        att = attribute(s, t0, t1, fw, ev, spans, piece_calls=piece)
        assert att.span_ids.tolist() == want.tolist()
        comp = np.asarray([spans[k].component for k in att.span_ids])
        assert (comp == att.calls["component"]).all()
    assert attribute(s, t0, t1, fw, ev, spans, calls_sink=lambda p: None).span_ids is None
