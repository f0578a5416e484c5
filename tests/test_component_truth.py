"""Ground truth for components: synthetic ``attn_w`` / ``mlp_w`` follow the innermost
running hooked call, so every row's true energy is known from the call timestamps.

The oracle is :func:`energyprof.testing.synthetic_truth_j`: a plain begin/end sweep over
the run's own call rows with an explicit stack (written from the issue's definition, not
from the C component stack).  The C side is checked against it sample by sample; the
attribution's time split is then shown to be biased where a row is unresolved, by the
amount the hand formula predicts.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import energyprof as ep  # noqa: E402
from energyprof import _core  # noqa: E402
from energyprof.testing import innermost_segments, synthetic_truth_j, truth_table  # noqa: E402
from energyprof.tiny import tiny_model  # noqa: E402

SPEC = "synthetic:power_w=5,attn_w=10,mlp_w=30,period_ms=5"


@pytest.fixture(scope="module")
def run():
    model = tiny_model("tiny-llama", n_layers=4)
    with ep.run(model, source=SPEC, baseline_s=0, save=False) as s:
        model.generate(torch.tensor([[1, 2, 3, 4, 5]]), max_new_tokens=24, do_sample=False)
    return s


def _sample_energy(s):
    x = s.samples
    return x["cpu_w"] * (x["t_end_ns"] - x["t_start_ns"]) / 1e9


def test_innermost_segments_hand_worked():
    calls = np.array([(100, 900, "layer"), (200, 500, "attn"), (250, 300, "q_proj"), (500, 520, "input_norm"),
                      (600, 800, "mlp"), (650, 700, "down_proj")],
                     dtype=[("t_start_ns", "<i8"), ("t_end_ns", "<i8"), ("component", "U16")])
    edges, kinds = innermost_segments(calls)
    # Stretches of one kind merge (the norm and the layer around it are both "other").
    assert edges.tolist() == [100, 200, 500, 600, 800]
    assert kinds.tolist() == [0, 1, 0, 2]


def test_hook_component_codes_and_the_core_counters():
    buf = _core.SpanBuffer()
    _core.set_activity(0)
    try:
        _core._set_fake_clock(1_000)
        a0 = _core.comp_ns_at(_core.COMP_ATTN, 1_000)
        m0 = _core.comp_ns_at(_core.COMP_MLP, 1_000)
        begin = _core.Hook(buf, 1, 0, component=_core.COMP_ATTN)
        end = _core.Hook(buf, 1, 1, component=_core.COMP_ATTN)
        mbegin = _core.Hook(buf, 2, 0, component=_core.COMP_MLP)
        mend = _core.Hook(buf, 2, 1, component=_core.COMP_MLP)
        begin()
        _core._set_fake_clock(1_400)
        mbegin()               # an MLP call inside the attention call: MLP is innermost
        _core._set_fake_clock(1_500)
        mend()
        _core._set_fake_clock(2_000)
        end()
        assert _core.comp_ns_at(_core.COMP_ATTN, 5_000) - a0 == 900
        assert _core.comp_ns_at(_core.COMP_MLP, 5_000) - m0 == 100
        with pytest.raises(ValueError, match="component"):
            _core.Hook(buf, 1, 0, component=5)
    finally:
        _core._set_fake_clock(0)
        _core.set_activity(0)


def test_every_sample_equals_the_truth_from_call_timestamps(run):
    truth = truth_table(run)["samples"]
    got = _sample_energy(run)
    # Both sides are exact in integer ns; only float rounding separates them.
    np.testing.assert_allclose(got, truth, rtol=1e-9)
    # The workload really mixes the three levels within samples (not a trivial constant).
    p = got / ((run.samples["t_end_ns"] - run.samples["t_start_ns"]) / 1e9)
    assert p.max() > 10.0 and p.max() - p.min() > 5.0


def test_the_source_records_its_component_watts(run):
    meta = run.summary()["source_meta"]
    assert meta["attn_w"] == 10.0 and meta["mlp_w"] == 30.0


def test_resolved_sections_match_truth_and_the_time_split_bias_is_as_predicted(run):
    truth = truth_table(run)
    sec = run.sections
    phase = {str(n): i for i, n in enumerate(sec["name"])}
    # The run's total is exact: every sample lies inside it, edges split by time at 5 W idle.
    i = phase["decode"]
    assert sec["resolved"][i]
    assert abs(sec["energy_j"][i] - truth["sections"][i]) / truth["sections"][i] < 0.02

    # Unresolved leaf calls inside one sample: the time split gives the sample's average power
    # times the call's duration (hand formula), while the truth is the call's own level.
    c = run.components
    x = run.samples
    k = np.searchsorted(x["t_end_ns"], c["t_start_ns"], side="right")
    inside = (k < len(x)) & (c["t_end_ns"] <= x["t_end_ns"][np.minimum(k, len(x) - 1)])
    p_sample = x["cpu_w"][np.minimum(k, len(x) - 1)]
    dur_s = (c["t_end_ns"] - c["t_start_ns"]) / 1e9
    for name, level_w in (("gate_proj", 35.0), ("q_proj", 15.0), ("input_norm", 5.0)):
        sel = (c["component"] == name) & inside & ~c["resolved"]
        assert sel.sum() >= 20
        np.testing.assert_allclose(c["energy_j"][sel], p_sample[sel] * dur_s[sel], rtol=1e-9)
        np.testing.assert_allclose(truth["components"][sel], level_w * dur_s[sel], rtol=1e-9)
    # MLP is the highest level: the time split underestimates every MLP leaf; norms the lowest:
    # it overestimates every norm.  The bias is the gap between the sample mean and the level.
    mlp = (c["component"] == "gate_proj") & inside & ~c["resolved"]
    norm = (c["component"] == "input_norm") & inside & ~c["resolved"]
    assert np.all(c["energy_j"][mlp] < truth["components"][mlp])
    assert np.all(c["energy_j"][norm] > truth["components"][norm])
    bias = c["energy_j"][mlp].sum() / truth["components"][mlp].sum() - 1
    assert bias < -0.1


def test_truth_refuses_terms_it_does_not_model():
    model = tiny_model("tiny-llama", n_layers=1)
    with ep.run(model, source="synthetic:power_w=5,active_w=3,period_ms=5", baseline_s=0, save=False) as s:
        model(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="active_w"):
        synthetic_truth_j(s, [0], [1])
