"""MoE (issue 16, part 8): tokens routed to each expert per layer from the router's logits, the
fused experts' energy split by routed tokens (labelled an estimate), and MoE against dense.

Oracles: the router of the same tiny Mixtral run without energyprof, its logits captured by a
plain forward hook and their top-k taken by the test; one forward, so each layer's split is
its experts' measured energy times each expert's share of that call's tokens, by hand.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import energyprof as ep
from energyprof.analysis.moe import moe_vs_dense, routing
from energyprof.tiny import tiny_model

X = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79]])
SRC = "synthetic:power_w=10,period_ms=2"


def _oracle_counts(run_generate: bool):
    """Per layer: tokens routed to each expert, from the router logits' top-k, no energyprof."""
    model = tiny_model("tiny-mixtral")
    k, n_e = model.config.num_experts_per_tok, model.config.num_local_experts
    counts = [np.zeros(n_e, int) for _ in model.model.layers]
    hooks = []
    for i, layer in enumerate(model.model.layers):
        def hook(m, a, out, i=i):
            logits = out[0] if isinstance(out, tuple) else out
            top = torch.topk(logits.reshape(-1, n_e).float(), k, dim=-1).indices
            counts[i] += np.bincount(top.reshape(-1).numpy(), minlength=n_e)
        hooks.append(layer.mlp.gate.register_forward_hook(hook))
    with torch.no_grad():
        if run_generate:
            model.generate(X, max_new_tokens=3, min_new_tokens=3, do_sample=False)
        else:
            model(X)
    for h in hooks:
        h.remove()
    return counts


def test_routed_counts_per_layer_match_the_router_logits():
    model = tiny_model("tiny-mixtral")
    with ep.run(model, source=SRC, baseline_s=0, save=False) as s, torch.no_grad():
        model.generate(X, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    want = _oracle_counts(run_generate=True)
    r = routing(s)
    assert r["n_experts"] == 4 and r["experts_per_token"] == 2
    assert [row["tokens_routed"] for row in r["layers"]] == [c.tolist() for c in want]
    # (8 prompt + 2 decoded tokens that went through a forward) x 2 experts each
    assert all(sum(row["tokens_routed"]) == (X.shape[1] + 2) * 2 for row in r["layers"])
    assert r["total"]["tokens_routed"] == np.sum(want, axis=0).tolist()


def test_fused_experts_energy_is_split_by_routed_tokens_and_labelled_an_estimate():
    model = tiny_model("tiny-mixtral")
    with ep.run(model, source=SRC, baseline_s=0, save=False) as s, torch.no_grad():
        model(X)                                           # one forward: one router call per layer
    want = _oracle_counts(run_generate=False)
    r = routing(s)
    c = s.components
    for row, cnt in zip(r["layers"], want):
        assert row["tokens_routed"] == cnt.tolist()
        sel = c[(c["layer"] == row["layer"]) & (c["component"] == "experts")]
        assert len(sel) == 1
        e = float(sel["energy_j"][0])
        assert row["experts_energy_j"] == pytest.approx(e, rel=1e-12)
        np.testing.assert_allclose(row["expert_energy_j"], e * cnt / cnt.sum(), rtol=1e-9)
        assert row["expert_energy_label"].startswith("estimated")
        assert 0.0 <= row["resolved_share"] <= 1.0


def test_moe_vs_dense_by_hand():
    def run(i, jpt, experts):
        m = {"n_params": 2e9, "n_layers": 4, "hidden_size": 64, "intermediate_size": 128, "n_experts": experts,
             "experts_per_token": 2 if experts else 0}
        return {"run_id": i, "j_per_output_token": jpt, "source_label": "simulated", "model": m,
                "output_tokens": 10}

    moe = [run(1, 1.0, 8), run(2, 1.2, 8), run(3, 1.4, 8)]
    dense = [run(4, 2.0, 0), run(5, 2.2, 0), run(6, 2.4, 0)]
    out = moe_vs_dense(moe, dense)
    assert out["moe"]["figure"]["mean"] == pytest.approx(1.2) and out["dense"]["figure"]["mean"] == pytest.approx(2.2)
    assert abs(out["difference"]["diff"]) == pytest.approx(1.0)
    assert out["moe"]["runs"] == [1, 2, 3]
    # a MoE touches fewer parameters per token than it has; a dense model touches all of them
    # 6 skipped experts x (3 x 64 x 128 per layer) x 4 layers, worked by hand
    assert out["moe"]["active_params"] == pytest.approx(2e9 - 6 * 3 * 64 * 128 * 4, rel=1e-15)
    assert out["moe"]["per_active_gparam"]["mean"] == pytest.approx(1.2 / ((2e9 - 589824) / 1e9))
    assert out["dense"]["active_params"] == pytest.approx(out["dense"]["n_params"])
    with pytest.raises(ValueError, match="MoE"):
        moe_vs_dense(dense, moe)
    with pytest.raises(ValueError, match="no MoE routing"):
        routing({"energy_j": 1.0})
