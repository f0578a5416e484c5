"""ep.run on tiny random-weight models with the synthetic source (exact ground truth)."""
import time
import warnings

import numpy as np
import pytest
import torch

import energyprof as ep
from energyprof import _core
from energyprof.measure import arch
from energyprof.tiny import TINY_MODELS, tiny_model
from energy_oracle import WAVEFORMS, check_run
from fakeclock import FakeClock

MS = 1_000_000

PROMPT = torch.tensor([[5, 6, 7, 8, 9]])


def gen(model, ids=PROMPT, n=4, **kw):
    kw.setdefault("do_sample", False)
    return model.generate(ids, max_new_tokens=n, **kw)


@pytest.fixture(scope="module")
def llama():
    return tiny_model("tiny-llama")


def assert_conservation(s, rel=1e-9):
    sec = s.sections
    run = sec[0]
    phases = sec[sec["kind"] == "phase"]
    tol = rel * max(abs(run["energy_j"]), 1e-12)
    assert abs(phases["energy_j"].sum() + run["unattributed_j"] - run["energy_j"]) <= tol
    assert abs(run["unattributed_j"]) <= tol
    calls = np.concatenate([s.layers, s.components])
    by_id = {int(c["call_id"]): c for c in calls}
    kids = {}
    for c in calls:
        kids.setdefault(int(c["parent_id"]), []).append(float(c["energy_j"]))
    for cid, c in by_id.items():
        assert abs(sum(kids.get(cid, [])) + c["unattributed_j"] - c["energy_j"]) <= tol
    for ph in phases:
        top = calls[(calls["parent_id"] < 0) & (calls["t_start_ns"] >= ph["t_start_ns"]) & (calls["t_end_ns"] <= ph["t_end_ns"])]
        assert abs(top["energy_j"].sum() + ph["unattributed_j"] - ph["energy_j"]) <= tol
    decode = s.summary()["phases"].get("decode")
    if decode:
        assert abs(s.tokens["energy_j"].sum() - decode["energy_j"]) <= tol


@pytest.mark.parametrize("method", ["wrap", "hooks"])
def test_constant_power_is_exact_everywhere(llama, method):
    P = 13.5
    with ep.run(llama, source=f"synthetic:power_w={P},period_ms=2", baseline_s=0.05, save=False,
                hook_method=method) as s:
        gen(llama, n=16)
    sm = s.summary()
    assert sm["energy_j"] == pytest.approx(P * sm["duration_s"], rel=1e-9)   # exact for constant power
    assert sm["output_tokens"] == 16 and sm["input_tokens"] == 5
    assert len(s.tokens) == 15
    for arr in (s.sections, s.tokens, s.layers, s.components):
        np.testing.assert_allclose(arr["energy_j"], P * arr["duration_s"], rtol=1e-9)
    assert sm["baseline_power_w"] == pytest.approx(P, rel=1e-9)
    assert sm["net_energy_j"] == pytest.approx(0, abs=1e-9)
    assert sm["source_label"] == "simulated" and sm["method"] == "time-split within sample"
    # the median interval of the whole samples themselves (a loaded machine wakes the sampler
    # late; the final sample, cut short at stop, is left out)
    whole = s.samples[(s.samples["flags"] & _core.SFLAG_FINAL) == 0]
    assert sm["sample_period_s"] == float(np.median(whole["t_end_ns"] - whole["t_start_ns"])) * 1e-9
    assert_conservation(s)


def test_every_layer_and_component_gets_spans(llama):
    amap = arch.describe(llama)
    with ep.run(llama, source="synthetic:power_w=3", baseline_s=0, save=False) as s:
        gen(llama, n=3)
    n_forwards = 3
    for i in range(amap.config["n_layers"]):
        assert np.sum(s.layers["layer"] == i) == n_forwards
    expected = {(r.layer, r.component) for r in amap.components + amap.model_level}
    got = {(int(c["layer"]), str(c["component"])) for c in s.components}
    assert got == expected
    assert set(s.layers["step"].tolist()) == {0, 1, 2}


def test_minimal_mode_hooks_only_the_model(llama):
    with ep.run(llama, source="synthetic:power_w=3", mode="minimal", baseline_s=0, save=False) as s:
        gen(llama, n=5)
    assert len(s.layers) == 0 and len(s.components) == 0
    assert len(s.tokens) == 4
    assert_conservation(s)


def test_active_power_follows_the_hooked_modules(llama):
    """power = 5 W idle + 20 W while any hooked module runs, on the frozen clock.

    The clock moves only where the test moves it: 50 ms idle before generate(), 20 ms
    inside layer 1 of every forward (a pre-hook of its first child), 30 ms idle after.
    After each move the test waits for the sample that ends there, so sample edges lie
    on the moves and every figure is known by hand, exactly: each layer-1 call is
    20 ms x 25 W = 0.5 J, every other call lasts 0 ns, pre_inference 50 ms x 5 W =
    0.25 J, post_inference 30 ms x 5 W = 0.15 J."""
    idle_w, active_w = 5.0, 20.0
    layer1_child = llama.model.layers[1].input_layernorm
    with FakeClock() as clk:
        with ep.run(llama, source=f"synthetic:power_w={idle_w},active_w={active_w},period_ms=1", baseline_s=0,
                    save=False) as s:
            core = s._sampler._core
            a0 = _core.active_ns_at(_core.now_ns())
            clk.advance(50 * MS, core)                      # idle, inside pre_inference
            h = layer1_child.register_forward_pre_hook(lambda m, a: clk.advance(20 * MS, core) and None)
            try:
                gen(llama, n=3)
            finally:
                h.remove()
            clk.advance(30 * MS, core)
            a1 = _core.active_ns_at(_core.now_ns())
    assert a1 - a0 == 3 * 20 * MS                          # active exactly while layer 1 ran
    sm = s.summary()
    assert sm["duration_s"] == pytest.approx(0.14, abs=1e-12)
    assert sm["energy_j"] == pytest.approx(0.25 + 3 * 0.5 + 0.15, rel=1e-12)
    lay = s.layers
    slow = lay[lay["layer"] == 1]
    assert len(slow) == 3 and np.all(slow["duration_s"] == 0.02)
    np.testing.assert_allclose(slow["energy_j"], 0.5, rtol=1e-12)
    assert np.all(slow["resolved"])
    rest = np.concatenate([lay[lay["layer"] != 1], s.components[s.components["layer"] != 1]])
    assert np.all(rest["duration_s"] == 0) and np.all(rest["energy_j"] == 0)
    sec = {str(r["name"]): r for r in s.sections}
    assert sec["pre_inference"]["energy_j"] == pytest.approx(0.25, rel=1e-12)
    assert sec["post_inference"]["energy_j"] == pytest.approx(0.15, rel=1e-12)
    check_run(s)
    assert_conservation(s)


@pytest.mark.parametrize("mode", ["minimal", "standard"])
@pytest.mark.parametrize("shape", sorted(WAVEFORMS))
def test_every_row_equals_the_oracle_under_varying_power(llama, shape, mode):
    """Every section, token and call row recomputed from s.samples by the brute-force
    oracle (tests/energy_oracle.py), under a square wave, a ramp, noise and the power
    of the hooked modules themselves (active_w)."""
    with ep.run(llama, source=WAVEFORMS[shape], mode=mode, baseline_s=0.01, save=False) as s:
        with s.section("generate"):
            with s.section("first"):
                gen(llama, torch.tensor([[5, 6, 7, 8, 9], [1, 2, 3, 4, 5]]), n=2)
            gen(llama, n=4)
    n = check_run(s)
    assert n["tokens"] == 1 + 3 and (n["calls"] > 0) == (mode == "standard")
    if mode == "standard":
        assert n["nested_calls"] > 0


def test_oracle_with_torch_hooks(llama):
    with ep.run(llama, source=WAVEFORMS["square"], baseline_s=0, save=False, hook_method="hooks") as s:
        gen(llama, n=5)
    assert check_run(s)["calls"] > 0


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_outputs_identical_with_and_without_profiling(name):
    model = tiny_model(name)
    ids = torch.tensor([[3, 4, 5, 6]])
    ref = gen(model, ids, n=4)
    with ep.run(model, source="synthetic:power_w=2", baseline_s=0, save=False) as s:
        out = gen(model, ids, n=4)
    assert torch.equal(ref, out)
    assert s.summary()["model"]["arch"] == arch.describe(model).arch
    assert len(s.layers) == 4 * arch.describe(model).config["n_layers"]
    assert_conservation(s)
    # no hooks left behind
    for mod in model.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks
    assert torch.equal(gen(model, ids, n=4), ref)


@pytest.mark.parametrize("batch", [2, 4])
def test_batches(llama, batch):
    ids = torch.arange(1, 1 + 5 * batch).reshape(batch, 5) % 200 + 3
    with ep.run(llama, source="synthetic:power_w=4", baseline_s=0, save=False) as s:
        gen(llama, ids, n=4)
    sm = s.summary()
    assert sm["batch_size"] == batch
    assert sm["output_tokens"] == 4 * batch and sm["input_tokens"] == 5 * batch
    assert list(s.tokens["n_tokens"]) == [batch] * 3
    assert_conservation(s)


def test_prefill_only(llama):
    with ep.run(llama, source="synthetic:power_w=4", baseline_s=0, save=False) as s:
        gen(llama, n=1)
    sm = s.summary()
    assert len(s.tokens) == 0 and "decode" not in sm["phases"]
    assert sm["phases"]["prefill"]["tokens"] == 5 and sm["output_tokens"] == 1


def test_sampling_is_unchanged(llama):
    torch.manual_seed(3)
    ref = gen(llama, n=6, do_sample=True, top_k=20)
    with ep.run(llama, source="synthetic:power_w=4", baseline_s=0, save=False):
        torch.manual_seed(3)
        out = gen(llama, n=6, do_sample=True, top_k=20)
    assert torch.equal(ref, out)


def test_sections_nest(llama):
    with ep.run(llama, source="synthetic:power_w=6", baseline_s=0, save=False) as s:
        with s.section("outer"):
            with s.section("tokenize"):
                time.sleep(0.005)
            gen(llama, n=2)
    sec = s.sections
    outer = sec[sec["name"] == "outer"][0]
    inner = sec[sec["name"] == "tokenize"][0]
    assert inner["parent_id"] == outer["section_id"] and outer["parent_id"] == 0
    assert outer["unattributed_j"] == pytest.approx(outer["energy_j"] - inner["energy_j"], rel=1e-12)


@pytest.mark.filterwarnings("ignore:energyprof. the model's forward was never called")
def test_errors(llama):
    with pytest.raises(TypeError, match="nn.Module"):
        ep.run("not a model")
    with pytest.raises(ValueError, match="mode"):
        ep.run(llama, mode="fast")
    with pytest.raises(ValueError, match="power_w"):
        with ep.run(llama, source="synthetic:power_w=abc", baseline_s=0, save=False):
            pass
    with ep.run(llama, source="synthetic:power_w=1", baseline_s=0, save=False):
        with pytest.raises(RuntimeError, match="already being profiled"):
            with ep.run(llama, source="synthetic:power_w=1", baseline_s=0, save=False):
                pass
    with pytest.raises(RuntimeError, match="in progress"):
        with ep.run(llama, source="synthetic:power_w=1", baseline_s=0, save=False) as s:
            s.summary()


def test_no_forward_warns_and_gives_zero_tokens(llama):
    with pytest.warns(RuntimeWarning, match="never called"):
        with ep.run(llama, source="synthetic:power_w=1", baseline_s=0, save=False) as s:
            time.sleep(0.01)
    assert s.summary()["output_tokens"] == 0 and len(s.tokens) == 0


def test_exception_removes_hooks_saves_interrupted_run(llama, tmp_path):
    db = tmp_path / "runs.db"
    with pytest.raises(KeyboardInterrupt):
        with ep.run(llama, source="synthetic:power_w=8,period_ms=5", baseline_s=0, db=db) as s:
            gen(llama, n=3)
            time.sleep(0.02)
            raise KeyboardInterrupt
    for mod in llama.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks
    assert _core.activity() == 0
    run = ep.load(s.run_id, db=db)
    assert run.summary()["status"] == "interrupted"
    assert len(run.samples) == len(s.samples) > 0
    for f in s.samples.dtype.names:
        np.testing.assert_array_equal(run.samples[f], s.samples[f])


def test_saved_run_round_trips(llama, tmp_path):
    db = tmp_path / "runs.db"
    with ep.run(llama, source="synthetic:power_w=8,period_ms=5", baseline_s=0.02, db=db, name="rt", tags=["x"]) as s:
        gen(llama, n=4)
    run = ep.load(s.run_id, db=db)
    a, b = s.summary(), run.summary()
    for k in ("energy_j", "net_energy_j", "j_per_token", "output_tokens", "status", "name", "source", "method"):
        assert a[k] == b[k]
    for name in ("samples", "sections", "tokens", "layers", "components"):
        x, y = getattr(s, name), getattr(run, name)
        assert len(x) == len(y)
        for f in x.dtype.names:
            np.testing.assert_array_equal(x[f], y[f], err_msg=f"{name}.{f}")


def test_deep_mode_records_activation_statistics(llama):
    with ep.run(llama, source="synthetic:power_w=2", mode="deep", baseline_s=0, save=False) as s:
        gen(llama, n=2)
    c = s.components
    q = c[c["component"] == "q_proj"]
    assert len(q) == 2 * 2 and np.all(np.isfinite(q["act_std"])) and np.all(q["act_std"] > 0)
    assert np.all((c["act_sparsity"][np.isfinite(c["act_sparsity"])] >= 0))
    # statistics equal a direct recomputation for the first q_proj call
    outs = []
    h = llama.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, a, o: outs.append(o.detach().float()))
    try:
        gen(llama, n=1)
    finally:
        h.remove()
    first = q[(q["layer"] == 0) & (q["step"] == 0)][0]
    assert first["act_mean"] == pytest.approx(float(outs[0].mean()), rel=1e-5)
    assert first["act_max"] == pytest.approx(float(outs[0].abs().max()), rel=1e-5)


def test_auto_records_why_each_source_was_or_was_not_used(llama):
    with ep.run(llama, source="auto", baseline_s=0, save=False) as s:
        gen(llama, n=2)
    sm = s.summary()
    assert sm["source_requested"] == "auto"
    rows = sm["source_auto"]
    assert [r["source"] for r in rows][:1] == ["ioreport"]
    chosen = [r for r in rows if r["chosen"]]
    assert len(chosen) == 1 and sm["source_kind"] == chosen[0]["source"]
    assert all(r["reason"] for r in rows)


def test_use_cache_false_still_one_prefill(llama):
    with ep.run(llama, source="synthetic:power_w=4", baseline_s=0, save=False) as s:
        gen(llama, n=4, use_cache=False)
    sm = s.summary()
    assert sm["n_forwards"] == 4 and sm["n_decode_steps"] == 3
    assert sm["phases"]["prefill"]["tokens"] == 5
    assert_conservation(s)


def test_two_generations_in_one_run(llama):
    with FakeClock() as clk, ep.run(llama, source="synthetic:power_w=4", baseline_s=0, save=False) as s:
        gen(llama, n=3)
        clk.advance(10 * MS, s._sampler._core)     # the only time that passes: between the generations
        gen(llama, n=2)
    sm = s.summary()
    assert sm["n_forwards"] == 5 and sm["n_decode_steps"] == 3
    assert sm["input_tokens"] == 10 and sm["output_tokens"] == 5
    names = [str(n) for n in s.sections[s.sections["kind"] == "phase"]["name"]]
    assert names == ["pre_inference", "prefill", "decode", "between", "prefill", "decode", "post_inference"]
    assert sm["phases"]["between"]["duration_s"] == 0.01 and sm["duration_s"] == 0.01
    assert_conservation(s)


def test_a_run_with_more_hook_events_than_the_span_buffer_holds_keeps_them_all(llama, monkeypatch):
    """The span buffer is drained in the background while the run goes: with a buffer of
    room for a bit more than one forward's events, 6 forwards (waiting between them until
    the background drain has emptied it) lose nothing.  Oracle: every layer and every
    component call of every forward is there, as in a run with the default buffer."""
    from energyprof.measure import session as session_mod

    amap = arch.describe(llama)
    per_forward = 2 * (1 + len(amap.layers) + len(amap.components) + len(amap.model_level))
    monkeypatch.setattr(session_mod, "SPAN_BUFFER_EVENTS", per_forward + 8)
    n_forwards = 6
    with torch.inference_mode():
        with ep.run(llama, source="synthetic:power_w=3", baseline_s=0, save=False) as s:
            for _ in range(n_forwards):
                llama(PROMPT)
                deadline = time.monotonic() + 30
                while len(s._buffer) and time.monotonic() < deadline:
                    time.sleep(0.02)
    assert s._buffer.capacity == per_forward + 8
    assert "hook_events_dropped" not in s.summary()
    for i in range(amap.config["n_layers"]):
        assert np.sum(s.layers["layer"] == i) == n_forwards
    assert len(s.components) == n_forwards * (len(amap.components) + len(amap.model_level))


def test_a_source_failing_to_start_leaves_the_model_as_it_was(monkeypatch):
    """The sampler thread starts the source while the hooks go on (Sampler.start(wait=False));
    when that start fails, enter raises the source's error with every hook off again, the
    thread gone and the model free for the next run.  Oracle: the model's own attributes
    before the run, and a run after it measuring the synthetic 10 W."""
    from energyprof.measure.sampler import Sampler

    model = tiny_model("tiny-llama")

    def fail(self):
        self._core.stop()   # what a failed start leaves: no thread
        raise RuntimeError("fake: device unplugged")

    monkeypatch.setattr(Sampler, "wait_started", fail)
    run = ep.run(model, source="synthetic:power_w=10", baseline_s=0, save=False)
    with pytest.raises(RuntimeError, match="device unplugged"):
        run.__enter__()
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert "generate" not in model.__dict__
    assert not run._sampler.running
    monkeypatch.undo()
    with ep.run(model, source="synthetic:power_w=10", baseline_s=0, save=False) as s:
        model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, do_sample=False)
    assert s.summary()["energy_j"] / s.summary()["duration_s"] == pytest.approx(10.0, rel=1e-9)
