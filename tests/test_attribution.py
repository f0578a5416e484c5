"""Attribution on constructed inputs: phases tile the run, tokens sum to decode,
children + unattributed = parent at every level, energies match P x duration."""
import numpy as np
import pytest

from energyprof import _core
from energyprof._dtypes import EVENT_DTYPE
from energyprof.measure.attribution import Forward, SpanInfo, UserSection, attribute, total_of, total_rule

MS = 1_000_000


@pytest.fixture(autouse=True, params=[None, 1, 2], ids=["one-piece", "piece-1", "piece-2"])
def piece_calls(request, monkeypatch):
    """Every hand-worked case here also runs with the calls built in pieces of 1 and 2 calls
    (attribution.PIECE_CALLS), so the pieces must not change a single figure."""
    from energyprof.measure import attribution

    if request.param is not None:
        monkeypatch.setattr(attribution, "PIECE_CALLS", request.param)
    return request.param


def interval_samples(t0, t1, period, power_fn, domain="cpu_w"):
    """Contiguous interval samples whose power is the exact average of power_fn over each interval."""
    edges = np.arange(t0, t1 + period, period, dtype=np.int64)
    edges[-1] = max(edges[-1], t1)
    s = np.zeros(len(edges) - 1, _core.SAMPLE_DTYPE)
    s["t_start_ns"], s["t_end_ns"] = edges[:-1], edges[1:]
    s["kind"] = _core.KIND_INTERVAL
    for c in ("cpu_w", "gpu_w", "ane_w", "dram_w", "package_w"):
        s[c] = np.nan
    s[domain] = [power_fn(a, b) for a, b in zip(edges[:-1], edges[1:])]
    return s


def events_of(calls):
    """calls: list of (span, t_begin, t_end) -> EVENT array in time order."""
    ev = []
    for sid, b, e in calls:
        ev.append((b, sid, 0))
        ev.append((e, sid, 1))
    ev.sort(key=lambda x: (x[0], x[2] == 0))
    return np.array(ev, dtype=EVENT_DTYPE)


def build_run(power_w=7.0):
    """A run with a baseline, a prefill and 3 decode steps, each forward calling 1 layer with 2 components."""
    t0 = 100 * MS
    base = (0, 100 * MS)
    forwards, calls = [], []
    t = t0 + 5 * MS
    for i in range(4):
        f0, f1 = t, t + 8 * MS
        forwards.append(Forward(f0, f1, batch=2, new_positions=5 if i == 0 else 1,
                                input_tokens=10 if i == 0 else 0, prefill=(i == 0)))
        calls.append((1, f0 + 1 * MS, f0 + 7 * MS))          # layer
        calls.append((2, f0 + 2 * MS, f0 + 4 * MS))          # attn (child of layer)
        calls.append((3, f0 + 4 * MS + 500, f0 + 6 * MS))    # mlp (child of layer)
        t = f1 + 2 * MS
    t1 = t + 3 * MS
    spans = [SpanInfo(-1, "model"), SpanInfo(0, "layer"), SpanInfo(0, "attn", 1), SpanInfo(0, "mlp", 1)]
    samples = interval_samples(0, t1 + 10 * MS, 3 * MS + 7, lambda a, b: power_w)
    users = [UserSection("outer", t0 + 1 * MS, t1 - 1 * MS, -1), UserSection("inner", t0 + 2 * MS, t0 + 20 * MS, 0)]
    return samples, t0, t1, forwards, events_of(calls), spans, users, base


def test_constant_power_every_window_is_p_times_duration():
    P = 7.0
    samples, t0, t1, forwards, events, spans, users, base = build_run(P)
    att = attribute(samples, t0, t1, forwards, events, spans, users, base)
    for arr in (att.sections, att.tokens, att.calls):
        np.testing.assert_allclose(arr["energy_j"], P * arr["duration_s"], rtol=1e-12)
    assert att.summary["energy_j"] == pytest.approx(P * (t1 - t0) * 1e-9, rel=1e-12)
    # baseline = same constant power -> net energy 0
    assert att.summary["baseline_power_w"] == pytest.approx(P, rel=1e-12)
    assert att.summary["net_energy_j"] == pytest.approx(0.0, abs=1e-12)


def test_phases_tile_the_run_and_tokens_sum_to_decode():
    samples, t0, t1, forwards, events, spans, users, base = build_run()
    att = attribute(samples, t0, t1, forwards, events, spans, users, base)
    phases = att.sections[att.sections["kind"] == "phase"]
    assert list(phases["name"]) == ["pre_inference", "prefill", "decode", "post_inference"]
    assert phases["t_start_ns"][0] == t0 and phases["t_end_ns"][-1] == t1
    assert np.all(phases["t_start_ns"][1:] == phases["t_end_ns"][:-1])
    run = att.sections[0]
    assert abs(run["unattributed_j"]) <= 1e-12 * run["energy_j"]
    decode = phases[phases["name"] == "decode"][0]
    assert len(att.tokens) == 3
    assert att.tokens["energy_j"].sum() == pytest.approx(decode["energy_j"], rel=1e-9)
    assert list(att.tokens["n_tokens"]) == [2, 2, 2]
    # slot k runs to the next forward's start, the last to the end of its forward
    assert att.tokens["t_end_ns"][0] == forwards[2].t_start_ns
    assert att.tokens["t_end_ns"][-1] == forwards[-1].t_end_ns
    s = att.summary
    assert s["input_tokens"] == 10 and s["output_tokens"] == 8
    assert s["phases"]["prefill"]["tokens"] == 10
    assert s["phases"]["decode"]["tokens"] == 6
    assert s["j_per_output_token"] == pytest.approx(s["energy_j"] / 8)


def test_conservation_at_every_level_with_varying_power():
    samples, t0, t1, forwards, events, spans, users, base = build_run()
    # replace power by a ramp-like varying average per sample
    samples["cpu_w"] = 5 + (samples["t_start_ns"] % (7 * MS)) / MS
    att = attribute(samples, t0, t1, forwards, events, spans, users, base)
    c = att.calls
    assert len(c) == 12
    # layer = attn + mlp + unattributed
    for lay in np.flatnonzero(c["component"] == "layer"):
        kids = c[c["parent_id"] == c["call_id"][lay]]
        assert sorted(kids["component"]) == ["attn", "mlp"]
        assert kids["energy_j"].sum() + c["unattributed_j"][lay] == pytest.approx(c["energy_j"][lay], rel=1e-12)
    # phase = top-level calls + unattributed
    sec = att.sections
    for row in sec[sec["kind"] == "phase"]:
        inside = c[(c["parent_id"] < 0) & (c["t_start_ns"] >= row["t_start_ns"]) & (c["t_end_ns"] <= row["t_end_ns"])]
        assert inside["energy_j"].sum() + row["unattributed_j"] == pytest.approx(row["energy_j"], rel=1e-9, abs=1e-15)
    # steps: prefill calls are step 0, decode steps 1..3
    assert sorted(set(c["step"].tolist())) == [0, 1, 2, 3]
    # user sections nest: outer = inner + unattributed
    outer, inner = sec[sec["name"] == "outer"][0], sec[sec["name"] == "inner"][0]
    assert inner["parent_id"] == outer["section_id"]
    assert outer["unattributed_j"] == pytest.approx(outer["energy_j"] - inner["energy_j"], rel=1e-12)


def test_prefill_only_run_has_no_tokens():
    samples, t0, t1, forwards, events, spans, users, base = build_run()
    att = attribute(samples, t0, t1, forwards[:1], events[:6], spans, [], None)
    assert len(att.tokens) == 0
    assert [str(n) for n in att.sections["name"][1:]] == ["pre_inference", "prefill", "post_inference"]
    assert att.summary["baseline_power_w"] == 0.0
    assert att.summary["output_tokens"] == 2


def test_no_forward_gives_zero_tokens():
    samples, t0, t1, *_ = build_run()
    att = attribute(samples, t0, t1, [], np.zeros(0, EVENT_DTYPE), [SpanInfo(-1, "model")])
    assert att.summary["output_tokens"] == 0 and len(att.tokens) == 0 and len(att.calls) == 0
    assert att.sections[1]["name"] == "pre_inference"


def test_total_rule():
    assert total_rule([True, False, False, False, False]) == "cpu"
    assert total_rule([True, True, True, False, False]) == "cpu + gpu + ane"
    assert total_rule([True, False, False, True, True]) == "package + dram"
    dom = np.array([[1.0, np.nan, np.nan, 2.0, 5.0]])
    assert total_of(dom, [True, False, False, True, True])[0] == 7.0
    assert total_of(dom, [True, False, False, False, False])[0] == 1.0


# ---------------------------------------------------------------------------- under varying power
# The oracle (tests/energy_oracle.py) sums every row sample by sample in exact fractions,
# apart from _core.integrate and energyprof._reference; constant power would hide a window
# placed at the wrong time, so every shape below varies within the run.

from types import SimpleNamespace  # noqa: E402

from energy_oracle import Oracle, check_run  # noqa: E402


def as_run(att, samples):
    is_layer = att.calls["component"] == "layer"
    return SimpleNamespace(samples=samples, sections=att.sections, tokens=att.tokens, layers=att.calls[is_layer],
                           components=att.calls[~is_layer], ops=att.calls[:0], summary=lambda: att.summary)


def instant_samples(t0, t1, period, power_fn, domain="gpu_w"):
    t = np.arange(t0, t1 + period, period, dtype=np.int64)
    s = np.zeros(len(t), _core.SAMPLE_DTYPE)
    s["t_start_ns"] = s["t_end_ns"] = t
    s["kind"] = _core.KIND_INSTANT
    for c in ("cpu_w", "gpu_w", "ane_w", "dram_w", "package_w"):
        s[c] = np.nan
    s[domain] = [power_fn(x) for x in t]
    return s


SHAPES = {
    "square": lambda a, b: 5.0 + 20.0 * ((a // (2 * MS)) % 2),
    "ramp": lambda a, b: 1.0 + 0.25 * (a + b) / (2 * MS),
    "noise": (lambda rng: lambda a, b: 10.0 + 3.0 * rng.standard_normal())(np.random.default_rng(5)),
}


@pytest.mark.parametrize("shape", [*SHAPES, "instant"])
def test_every_row_equals_the_brute_force_oracle(shape):
    samples, t0, t1, forwards, events, spans, users, base = build_run()
    if shape == "instant":
        samples = instant_samples(0, t1 + 10 * MS, 3 * MS + 7, lambda t: 2.0 + 9.0 * ((t // (5 * MS)) % 3))
    else:
        samples = interval_samples(0, t1 + 10 * MS, 3 * MS + 7, SHAPES[shape])
    att = attribute(samples, t0, t1, forwards, events, spans, users, base)
    n = check_run(as_run(att, samples), samples)
    assert n == {"sections": 1 + 4 + 2 + 1, "tokens": 3, "calls": 12, "nested_calls": 4}
    # the power really varies inside the run: a time-proportional split would be wrong
    per_w = att.calls["energy_j"] / att.calls["duration_s"]
    assert per_w.max() > 1.2 * per_w.min()


S = 1_000_000_000


def test_hand_worked_interval_run():
    """10 W, 30 W, 10 W for one second each; a prefill forward [0.5, 2.5) s holding one
    layer call [0.5, 2.25) s.  By hand: pre_inference 0.5 x 10 = 5 J; prefill 5 + 30 + 5 =
    40 J; the call 5 + 30 + 0.25 x 10 = 37.5 J; post_inference 5 J; run 50 J."""
    samples = interval_samples(0, 3 * S, S, lambda a, b: 30.0 if a == S else 10.0)
    fwd = [Forward(S // 2, 5 * S // 2, batch=1, new_positions=4, input_tokens=4, prefill=True)]
    att = attribute(samples, 0, 3 * S, fwd, events_of([(1, S // 2, 9 * S // 4)]),
                    [SpanInfo(-1, "model"), SpanInfo(0, "layer")])
    sec = {str(r["name"]): r for r in att.sections}
    assert [sec[n]["energy_j"] for n in ("run", "pre_inference", "prefill", "post_inference")] == [50.0, 5.0, 40.0, 5.0]
    assert att.calls["energy_j"].tolist() == [37.5]
    assert sec["prefill"]["unattributed_j"] == 2.5
    assert att.calls["samples_in_window"].tolist() == [1] and sec["prefill"]["samples_in_window"] == 1


def test_hand_worked_instant_window():
    """Points 0 W at 0 s, 10 W at 1 s, 10 W at 2 s (trapezoid rule).  A call [0.5, 1.5) s:
    the ramp from 5 W to 10 W over 0.5 s is 3.75 J, then 0.5 s at 10 W is 5 J: 8.75 J."""
    samples = instant_samples(0, 2 * S, S, lambda t: 0.0 if t == 0 else 10.0)
    fwd = [Forward(S // 4, 7 * S // 4, batch=1, new_positions=2, input_tokens=2, prefill=True)]
    att = attribute(samples, 0, 2 * S, fwd, events_of([(1, S // 2, 3 * S // 2)]),
                    [SpanInfo(-1, "model"), SpanInfo(0, "layer")])
    assert att.calls["gpu_j"].tolist() == [8.75]
    assert att.summary["energy_j"] == 15.0          # 5 J for the first second, 10 J for the second
    assert float(Oracle(samples).energy(S // 2, 3 * S // 2, "gpu")) == 8.75   # the oracle agrees by hand too
