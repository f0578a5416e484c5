"""mode="deep": the attention function against eager attention, the wrapped MLP/norm
forwards against the originals, conservation of op energy, and the statistics against
numpy oracles computed from an independent eager forward."""
from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch

import energyprof as ep
from energyprof.measure import deep
from energyprof._dtypes import HEAD_DTYPE
from energyprof.tiny import TINY_MODELS, tiny_model
from energy_oracle import WAVEFORMS, check_run

INTERFACE_ARCHS = [n for n in TINY_MODELS if n != "tiny-falcon"]
IDS = torch.tensor([[3, 17, 42, 99, 7, 250], [11, 12, 13, 14, 15, 16]])
MASK = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # left padding in row 0


def _quiet_model(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tiny_model(name).eval()


def _attn_modules(model):
    from energyprof.measure import arch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        amap = arch.describe(model)
    return [r.module for r in amap.components if r.component == "attn"]


# --------------------------------------------------------------------------- attention function


@pytest.mark.parametrize("name", INTERFACE_ARCHS)
def test_attention_function_equals_the_architectures_eager(name):
    model = _quiet_model(name)
    attn = _attn_modules(model)[0]
    eager = sys.modules[type(attn).__module__].eager_attention_forward
    g = torch.Generator().manual_seed(1)
    n_heads = model.config.num_attention_heads
    n_kv = getattr(model.config, "num_key_value_heads", None) or n_heads
    if not hasattr(attn, "num_key_value_groups"):
        n_kv = n_heads                      # gpt2 / gpt-neox: no GQA
    hd = model.config.hidden_size // n_heads
    q = torch.randn(2, n_heads, 5, hd, generator=g)
    k = torch.randn(2, n_kv, 7, hd, generator=g)
    v = torch.randn(2, n_kv, 7, hd, generator=g)
    mask = torch.zeros(2, 1, 5, 7)
    mask[0, :, :, :2] = torch.finfo(torch.float32).min
    mask[:, :, 0, 6] = torch.finfo(torch.float32).min
    for m in (mask, None):
        want_o, want_w = eager(attn, q, k, v, m, scaling=0.3, dropout=0.0)
        got_o, got_w = deep.attention_forward(attn, q, k, v, m, scaling=0.3, dropout=0.0)
        torch.testing.assert_close(got_o, want_o, atol=1e-6, rtol=0)
        torch.testing.assert_close(got_w, want_w, atol=1e-6, rtol=0)


def test_softcapping_matches_gemma2_eager():
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward as gemma2_eager

    class M(torch.nn.Module):
        num_key_value_groups = 2
        head_dim = 8

    m = M().eval()
    g = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(1, 4, 3, 8, generator=g) * 4, torch.randn(1, 2, 3, 8, generator=g) * 4, torch.randn(
        1, 2, 3, 8, generator=g)
    want = gemma2_eager(m, q, k, v, None, scaling=0.5, softcap=5.0)
    got = deep.attention_forward(m, q, k, v, None, scaling=0.5, softcap=5.0)
    torch.testing.assert_close(got[0], want[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(got[1], want[1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_deep_run_logits_equal_eager_and_everything_is_restored(name):
    model = _quiet_model(name)
    before_impl = model.config._attn_implementation
    with torch.no_grad(), warnings.catch_warnings():
        # The reference is eager attention, which deep mode runs; a model that cannot switch
        # (Falcon before transformers 5.25 says so and keeps its own) is its own reference.
        warnings.simplefilter("ignore")
        model.set_attn_implementation("eager")
        ref = model(input_ids=IDS, attention_mask=MASK).logits
        model.set_attn_implementation(before_impl)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with ep.run(model, source="synthetic:power_w=10", mode="deep", baseline_s=0, save=False) as s:
            inside_impl = model.config._attn_implementation
            with torch.no_grad():
                got = model(input_ids=IDS, attention_mask=MASK).logits
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    assert model.config._attn_implementation == before_impl
    assert not any("forward" in m.__dict__ for m in model.modules())
    summ = s.summary()["deep"]
    # Falcon follows the AttentionInterface only from transformers 5.25: before, deep mode
    # leaves its attention alone and says so; every other model (and Falcon since) is reached.
    falcon_old = name == "tiny-falcon" and inside_impl != deep.ATTN_IMPLEMENTATION
    if falcon_old:
        assert inside_impl == before_impl
        assert summ["attention"] == "none" and "FalconForCausalLM" in summ["unsupported"][0]
        assert not np.any(np.char.startswith(s.ops["component"].astype(str), "attn."))
    else:
        assert inside_impl == deep.ATTN_IMPLEMENTATION
        assert summ["attention"] == "energyprof"
        n_layers = model.config.num_hidden_layers
        assert len(s.heads) == n_layers * model.config.num_attention_heads
    if name == "tiny-mixtral":
        assert any("MixtralSparseMoeBlock" in u for u in summ["unsupported"])


def test_restored_when_the_block_raises():
    model = _quiet_model("tiny-llama")
    with pytest.raises(RuntimeError, match="stop"):
        with ep.run(model, source="synthetic:power_w=10", mode="deep", baseline_s=0, save=False):
            model(input_ids=IDS[:1])
            raise RuntimeError("stop")
    assert model.config._attn_implementation == "sdpa"
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert not deep._ATTN_MARKS


@pytest.mark.parametrize("method", ["hooks", "wrap"])
def test_generation_unchanged_with_both_hook_methods(method):
    model = _quiet_model("tiny-qwen3")
    with torch.no_grad():
        ref = model.generate(IDS, attention_mask=MASK, max_new_tokens=4, do_sample=False)
    with ep.run(model, source="synthetic:power_w=10", mode="deep", baseline_s=0, save=False,
                hook_method=method) as s:
        with torch.no_grad():
            got = model.generate(IDS, attention_mask=MASK, max_new_tokens=4, do_sample=False)
    assert torch.equal(got, ref)
    assert len(s.ops) and len(s.components)
    assert not any("forward" in m.__dict__ for m in model.modules())


# --------------------------------------------------------------------------- energy of ops


@pytest.fixture(scope="module")
def deep_run():
    model = _quiet_model("tiny-llama")
    with ep.run(model, source="synthetic:power_w=12,period_ms=1", mode="deep", baseline_s=0, save=False) as s:
        with torch.no_grad():
            model.generate(IDS, attention_mask=MASK, max_new_tokens=3, do_sample=False)
    return model, s


def test_op_rows_and_parents(deep_run):
    _, s = deep_run
    allc = np.concatenate([s.layers, s.components, s.ops])
    by_id = {int(r["call_id"]): r for r in allc}
    assert len(by_id) == len(allc)
    ops = s.ops
    assert set(ops["component"].astype(str)) >= {"attn.qk", "attn.scale", "attn.mask", "attn.softmax", "attn.av",
                                                 "attn.stats", "mlp.act", "mlp.mul", "mlp.stats",
                                                 "input_norm.variance", "input_norm.normalize", "input_norm.scale",
                                                 "final_norm.scale"}
    for r in ops:
        parent = by_id[int(r["parent_id"])]
        comp = str(r["component"])
        assert str(parent["component"]) == comp.split(".")[0]
        assert parent["layer"] == r["layer"] and parent["step"] == r["step"]
        assert parent["t_start_ns"] <= r["t_start_ns"] <= r["t_end_ns"] <= parent["t_end_ns"]
    # one row per op per call: 2 layers x 3 forwards (prefill + 2 decode steps)
    for op in ("attn.qk", "attn.softmax", "mlp.act"):
        assert np.sum(ops["component"] == op) == 2 * 3
    assert np.sum(ops["component"] == "final_norm.scale") == 3


def test_conservation_children_plus_unattributed_equals_parent(deep_run):
    _, s = deep_run
    allc = np.concatenate([s.layers, s.components, s.ops])
    children_j = {}
    for r in allc:
        if r["parent_id"] >= 0:
            children_j[int(r["parent_id"])] = children_j.get(int(r["parent_id"]), 0.0) + r["energy_j"]
    n_with_ops = 0
    op_parents = set(s.ops["parent_id"].tolist())
    for r in allc:
        cid = int(r["call_id"])
        total = children_j.get(cid, 0.0) + r["unattributed_j"]
        assert total == pytest.approx(r["energy_j"], rel=1e-12, abs=1e-15)
        n_with_ops += cid in op_parents
    assert n_with_ops == 3 * 2 * 4 + 3        # attn, mlp, 2 norms per layer call, plus final_norm
    # constant 12 W: every op's energy is its duration times 12 W (time-split within sample)
    np.testing.assert_allclose(s.ops["energy_j"], 12.0 * s.ops["duration_s"], rtol=1e-9)
    assert np.all(s.ops["energy_j"] > 0)


@pytest.mark.parametrize("shape, method", [("square", "wrap"), ("active", "wrap"), ("ramp", "hooks")])
def test_every_op_row_equals_the_oracle_under_varying_power(shape, method):
    """Layers, components and ops of a deep run recomputed from s.samples by the
    brute-force oracle (tests/energy_oracle.py): ops are the shortest windows of a run,
    most of them shorter than one sample."""
    model = _quiet_model("tiny-llama")
    with ep.run(model, source=WAVEFORMS[shape], mode="deep", baseline_s=0, save=False, hook_method=method) as s:
        with torch.no_grad():
            model.generate(IDS, attention_mask=MASK, max_new_tokens=3, do_sample=False)
    n = check_run(s)
    assert len(s.ops) > 0 and n["calls"] == len(s.layers) + len(s.components) + len(s.ops)
    assert n["nested_calls"] >= 3 * 2 * 4


# --------------------------------------------------------------------------- statistics vs numpy oracles


def _entropy_max_sparsity(p: np.ndarray, allowed: np.ndarray):
    """p (B, H, Q, K) softmax weights, allowed (B, 1, Q, K) -> per head (entropy, max, sparsity)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    ent = -plogp.sum(-1).mean(axis=(0, 2))
    mx = p.max(-1).mean(axis=(0, 2))
    al = np.broadcast_to(allowed, p.shape)
    sp = ((p < 1e-3) & al).sum(axis=(0, 2, 3)) / al.sum(axis=(0, 2, 3))
    return ent, mx, sp


def test_head_statistics_match_eager_attention_weights():
    model = _quiet_model("tiny-llama")
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(input_ids=IDS, attention_mask=MASK, output_attentions=True)
    model.set_attn_implementation("sdpa")
    with ep.run(model, source="synthetic:power_w=1", mode="deep", baseline_s=0, save=False) as s:
        with torch.no_grad():
            model(input_ids=IDS, attention_mask=MASK)
    heads = s.heads
    assert heads.dtype == HEAD_DTYPE
    # allowed: causal, and not a padded key (row 0 pads position 0)
    q = np.arange(6)
    causal = q[None, :] <= q[:, None]
    allowed = np.stack([causal & (MASK[b].numpy()[None, :] == 1) for b in range(2)])[:, None]
    softmax_rows = s.ops[s.ops["component"] == "attn.softmax"]
    for layer, att in enumerate(out.attentions):
        p = att.double().numpy()
        ent, mx, sp = _entropy_max_sparsity(p, allowed)
        h = heads[heads["layer"] == layer]
        np.testing.assert_array_equal(h["head"], np.arange(4))
        np.testing.assert_allclose(h["entropy"], ent, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(h["max_weight"], mx, rtol=1e-5)
        np.testing.assert_allclose(h["sparsity"], sp, atol=1e-12)
        assert np.all(h["n_queries"] == 2 * 6)
        row = softmax_rows[softmax_rows["layer"] == layer][0]
        assert np.all(h["call_id"] == row["call_id"])
        assert row["act_max"] == pytest.approx(p.max(), rel=1e-6)
        assert row["act_mean"] == pytest.approx(p.mean(), rel=1e-6)
    summ = {(d["layer"], d["head"]): d for d in s.summary()["deep"]["heads"]}
    assert summ[(1, 2)]["entropy"] == pytest.approx(float(heads[(heads["layer"] == 1) & (heads["head"] == 2)]
                                                          ["entropy"][0]))


def test_kill_ratio_and_variance_ratio_match_hooks_on_the_original_model():
    model = _quiet_model("tiny-llama")
    layer0 = model.model.layers[0]
    cap = {}
    def on_gate(m, a, o):
        cap["gate"] = o.detach().clone()

    def on_norm(m, a, o):
        cap["norm"] = (a[0].detach().clone(), o.detach().clone())

    h1 = layer0.mlp.gate_proj.register_forward_hook(on_gate)
    h2 = layer0.input_layernorm.register_forward_hook(on_norm)
    model.set_attn_implementation("eager")   # the deep run computes eager attention: same hidden states, bit for bit
    with torch.no_grad():
        model(input_ids=IDS, attention_mask=MASK)
    model.set_attn_implementation("sdpa")
    h1.remove()
    h2.remove()
    act = torch.nn.functional.silu(cap["gate"]).double().numpy()
    want_kill = float(np.mean(np.abs(act) < 1e-3))
    x, y = (t.double().numpy() for t in cap["norm"])
    want_var = y.var(-1).mean() / x.var(-1).mean()
    with ep.run(model, source="synthetic:power_w=1", mode="deep", baseline_s=0, save=False) as s:
        with torch.no_grad():
            model(input_ids=IDS, attention_mask=MASK)
    d = s.summary()["deep"]
    mlp0 = next(m for m in d["mlp"] if m["layer"] == 0)
    assert mlp0["kind"] == "gated" and mlp0["calls"] == 1
    assert mlp0["kill_ratio"] == pytest.approx(want_kill, abs=1e-7)  # float32 mean; one element is 6.5e-4
    act_row = s.ops[(s.ops["component"] == "mlp.act") & (s.ops["layer"] == 0)][0]
    assert act_row["act_sparsity"] == pytest.approx(want_kill, abs=1e-7)  # float32 mean; one element is 6.5e-4
    assert act_row["act_mean"] == pytest.approx(act.mean(), rel=1e-5)
    n0 = next(n for n in d["norms"] if n["layer"] == 0 and n["component"] == "input_norm")
    assert n0["kind"] == "rms"
    assert n0["variance_ratio"] == pytest.approx(want_var, rel=1e-5)


def test_layer_norm_decomposition_matches_the_fused_kernel():
    ln = torch.nn.LayerNorm(64, eps=1e-5)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = torch.randn(3, 5, 64) * 3 + 1

    class _Rec:
        def _variance_stats(self, *a):
            pass

    noop = (lambda: None, lambda: None)
    marks = deep._Marks(layer=0, ops={k: noop for k in deep.NORM_OPS}, recorder=_Rec(), parent_span=0)
    fwd = deep._make_norm_forward(ln, "layer_norm", marks)
    torch.testing.assert_close(fwd(x), ln(x), atol=1e-5, rtol=1e-5)


def test_ops_are_stored_and_loaded(tmp_path):
    model = _quiet_model("tiny-gpt2")
    db = str(tmp_path / "deep.db")
    with ep.run(model, source="synthetic:power_w=5", mode="deep", baseline_s=0, db=db) as s:
        with torch.no_grad():
            model.generate(IDS, attention_mask=MASK, max_new_tokens=2, do_sample=False)
    r = ep.load(s.run_id, db=db)
    assert len(r.ops) == len(s.ops) > 0
    order = np.argsort(r.ops["call_id"])
    np.testing.assert_array_equal(r.ops["call_id"][order], np.sort(s.ops["call_id"]))
    np.testing.assert_allclose(np.sort(r.ops["energy_j"]), np.sort(s.ops["energy_j"]), rtol=1e-12)
    assert r.summary()["deep"]["heads"] == s.summary()["deep"]["heads"]
    assert not np.isin(r.components["component"], r.ops["component"]).any()


def test_standard_mode_has_no_ops():
    model = _quiet_model("tiny-llama")
    with ep.run(model, source="synthetic:power_w=5", baseline_s=0, save=False) as s:
        model(input_ids=IDS[:1])
    assert len(s.ops) == 0 and len(s.heads) == 0 and "deep" not in s.summary()


def test_statistics_can_be_switched_off(monkeypatch):
    monkeypatch.setattr(deep, "STATISTICS", False)
    model = _quiet_model("tiny-phi3")
    model.set_attn_implementation("eager")   # sdpa differs on the fully padded query row
    with torch.no_grad():
        ref = model(input_ids=IDS, attention_mask=MASK).logits
    model.set_attn_implementation("sdpa")
    with ep.run(model, source="synthetic:power_w=5", mode="deep", baseline_s=0, save=False) as s:
        with torch.no_grad():
            got = model(input_ids=IDS, attention_mask=MASK).logits
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    comps = set(s.ops["component"].astype(str))
    assert {"attn.softmax", "mlp.act", "mlp.mul", "input_norm.scale"} <= comps
    assert not any(c.endswith(".stats") for c in comps)
    assert len(s.heads) == 0
    assert np.all(np.isnan(s.ops["act_sparsity"]))


def test_docs_deep_example_runs():
    """The ```python blocks of docs/deep.md run as written."""
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "deep.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    ns: dict = {}
    for b in blocks:
        exec(compile(b, "docs/deep.md", "exec"), ns)
    assert ns["info"]["attention"] == "energyprof"
    assert ns["deep"].HEAD_GROUPS is False


def test_module_doctest_runs():
    import doctest

    assert doctest.testmod(deep).failed == 0


@pytest.mark.parametrize("name,n_groups", [("tiny-llama", 2), ("tiny-gpt2", 4)])
def test_head_groups_time_each_group(monkeypatch, name, n_groups):
    """GQA llama: 4 query heads share 2 K/V heads -> 2 groups; gpt2 (MHA): each head a group."""
    monkeypatch.setattr(deep, "HEAD_GROUPS", True)
    model = _quiet_model(name)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        ref = model(input_ids=IDS, attention_mask=MASK).logits
    model.set_attn_implementation("sdpa")
    with ep.run(model, source="synthetic:power_w=7,period_ms=1", mode="deep", baseline_s=0, save=False) as s:
        with torch.no_grad():
            got = model(input_ids=IDS, attention_mask=MASK).logits
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    ops = s.ops
    comps = set(ops["component"].astype(str))
    want = {f"attn.g{g}.{op}" for g in range(n_groups) for op in ("qk", "scale", "mask", "softmax", "av")}
    assert want <= comps and "attn.qk" not in comps and f"attn.g{n_groups}.qk" not in comps
    allc = np.concatenate([s.layers, s.components, s.ops])
    for attn in s.components[s.components["component"] == "attn"]:
        kids = allc[allc["parent_id"] == attn["call_id"]]
        assert sum(str(c).startswith("attn.g") for c in kids["component"]) == 5 * n_groups
        assert kids["energy_j"].sum() + attn["unattributed_j"] == pytest.approx(attn["energy_j"], rel=1e-12)
    # head statistics are still per head, tied to the attn.stats row of each call
    assert len(s.heads) == 2 * 4
    stats_ids = set(ops["call_id"][ops["component"] == "attn.stats"].tolist())
    assert set(s.heads["call_id"].tolist()) == stats_ids


def test_a_model_that_refuses_the_attention_switch_still_runs(monkeypatch):
    model = _quiet_model("tiny-llama")

    def refuse(impl, *a, **k):
        raise ValueError("not today")

    monkeypatch.setattr(model, "set_attn_implementation", refuse)
    with pytest.warns(RuntimeWarning, match="not today"):
        with ep.run(model, source="synthetic:power_w=5", mode="deep", baseline_s=0, save=False) as s:
            with torch.no_grad():
                model(input_ids=IDS[:1])
    d = s.summary()["deep"]
    assert d["attention"] == "none" and "not today" in d["unsupported"][-1]
    comps = set(s.ops["component"].astype(str))
    assert "mlp.act" in comps and not any(c.startswith("attn.") for c in comps)
    assert model.config._attn_implementation == "sdpa" and not deep._ATTN_MARKS


def test_op_summary_aggregates_ops_and_shares_of_parents(deep_run):
    _, s = deep_run
    table = deep.op_summary(s)
    ops = s.ops
    assert len(table) == len(set(zip(ops["layer"].tolist(), ops["component"].tolist())))
    row = table[(table["layer"] == 1) & (table["op"] == "attn.softmax")][0]
    sel = ops[(ops["layer"] == 1) & (ops["component"] == "attn.softmax")]
    assert row["parent"] == "attn" and row["n_calls"] == len(sel) == 3
    assert row["energy_j"] == pytest.approx(sel["energy_j"].sum(), rel=1e-12)
    attn = s.components[(s.components["layer"] == 1) & (s.components["component"] == "attn")]
    assert row["share_of_parent"] == pytest.approx(sel["energy_j"].sum() / attn["energy_j"].sum(), rel=1e-12)
    # within one parent the op shares add up to at most 1 (the rest: projections and unattributed)
    for layer in (0, 1):
        attn_ops = table[(table["layer"] == layer) & (table["parent"] == "attn")]
        assert 0 < attn_ops["share_of_parent"].sum() < 1
    assert table["layer"].tolist() == sorted(table["layer"].tolist())
    assert len(deep.op_summary(ep.RunData())) == 0


def test_heads_are_stored_and_loaded_field_by_field(tmp_path):
    """Schema v3: the per-(attention call, head) rows go to head_metrics and come back
    from ep.load exactly as the session holds them (same order, NaN where NaN)."""
    import sqlite3

    model = _quiet_model("tiny-llama")
    db = str(tmp_path / "heads.db")
    with ep.run(model, source="synthetic:power_w=2", mode="deep", baseline_s=0, db=db) as s:
        with torch.no_grad():
            model.generate(IDS, attention_mask=MASK, max_new_tokens=3, do_sample=False)
    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    assert len(s.heads) == 3 * n_layers * n_heads  # prefill + 2 decode forwards, every layer and head
    r = ep.load(s.run_id, db=db)
    assert r.heads.dtype == s.heads.dtype == HEAD_DTYPE
    assert len(r.heads) == len(s.heads)
    for f in HEAD_DTYPE.names:
        np.testing.assert_array_equal(r.heads[f], s.heads[f], err_msg=f)  # NaN == NaN here
    # the rows point at the attn.softmax op rows that were stored beside them
    soft = r.ops[r.ops["component"] == "attn.softmax"]
    assert set(r.heads["call_id"].tolist()) == set(soft["call_id"].tolist())
    # and the run's per-(layer, head) summary is the average of exactly these rows
    assert deep.head_summary(r.heads) == r.summary()["deep"]["heads"]
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT COUNT(*) FROM head_metrics WHERE run_id=?", (s.run_id,)).fetchone()[0] == len(s.heads)
    finally:
        conn.close()
    ep.delete(s.run_id, db=db)
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT COUNT(*) FROM head_metrics").fetchone()[0] == 0  # ON DELETE CASCADE
    finally:
        conn.close()
