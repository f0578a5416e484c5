"""energyprof.analysis.predict: fits against constructed runs with known coefficients, the 95 %
prediction interval's coverage on held-out runs, features of real models, JSON, CV, CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from energyprof import cli
from energyprof.store.db import Store
from energyprof.analysis.predict import (DEFAULT_TERMS, MIN_RUNS, TERMS, Predictor, cross_validate, estimate_params,
                                         model_features)
from energyprof.views.analysis_plots import plot_predictions
from energyprof.store.rundata import RunData

# Known generating model: J = 0.3 + 800 J/(token·Gparam) decode + 150 prefill + 0.004 J per step·layer
TRUE = {"const": 0.3, "decode_flops": 800.0, "prefill_flops": 150.0, "decode_steps_x_layers": 0.004}
SIGMA_J = 0.05


def _arch(rng):
    L = int(rng.integers(2, 25))
    h = int(rng.choice([128, 256, 512, 768]))
    nh = h // 64
    nkv = int(rng.choice([1, nh]))
    m = {"n_layers": L, "hidden_size": h, "n_heads": nh, "n_kv_heads": nkv, "intermediate_size": 4 * h,
         "vocab_size": 1000, "n_experts": 0, "experts_per_token": 0}
    m["n_params"] = estimate_params(m)
    return m


def _truth(m, B, P, O):
    f = model_features(m)
    return sum(c * TERMS[t][0](f, B, P, O) for t, c in TRUE.items())


def _runs(rng, n, sigma=SIGMA_J):
    out = []
    for _ in range(n):
        m = _arch(rng)
        B, P, O = int(rng.choice([1, 2, 4])), int(rng.integers(4, 256)), int(rng.integers(4, 128))
        out.append({"model": m, "batch_size": B, "input_tokens": B * P, "output_tokens": B * O,
                    "energy_j": _truth(m, B, P, O) + rng.normal(0, sigma), "status": "completed"})
    return out


def test_fit_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    p = Predictor.fit(_runs(rng, 120), terms=list(TRUE))
    co = p.coefficients()
    for t, true in TRUE.items():
        assert co[t]["ci95"][0] <= true <= co[t]["ci95"][1], t
    assert p.resid_sd == pytest.approx(SIGMA_J, rel=0.2)
    assert p.df == 120 - 4 and p.n == 120
    # noise-free runs: exact coefficients
    exact = Predictor.fit(_runs(rng, 12, sigma=0.0), terms=list(TRUE))
    np.testing.assert_allclose(exact.coef, [TRUE[t] for t in exact.terms], rtol=1e-8)


def test_prediction_interval_coverage_on_held_out_runs():
    rng = np.random.default_rng(1)
    p = Predictor.fit(_runs(rng, 150))  # all default terms: the extra ones have true coefficient 0
    held = _runs(rng, 200)
    inside = 0
    for r in held:
        B = r["batch_size"]
        pr = p.predict(r["model"], r["input_tokens"] / B, r["output_tokens"] / B, batch_size=B)
        lo, hi = pr["pi95"]
        inside += lo <= r["energy_j"] <= hi
        assert pr["unit"] == "J" and lo < pr["energy_j"] < hi
    assert inside >= 0.85 * len(held)
    assert inside <= len(held)


def _relative_runs(rng, n, rel_sd=0.05):
    out = []
    for r in _runs(rng, n, sigma=0.0):
        r["model"]["n_layers"] *= int(rng.choice([1, 10, 100]))  # energies over three orders of magnitude
        B = r["batch_size"]
        r["energy_j"] = _truth(r["model"], B, r["input_tokens"] / B, r["output_tokens"] / B) * (
            1 + rng.normal(0, rel_sd))
        out.append(r)
    return out


def test_relative_noise_model(tmp_path):
    rng = np.random.default_rng(11)
    train, held = _relative_runs(rng, 150), _relative_runs(rng, 200)
    rel = Predictor.fit(train, terms=list(TRUE), noise="relative")
    assert rel.resid_sd == pytest.approx(0.05, rel=0.2)  # a share of the energy
    co = rel.coefficients()
    for t, true in TRUE.items():
        assert co[t]["ci95"][0] <= true <= co[t]["ci95"][1], t
    inside = 0
    for r in held:
        B = r["batch_size"]
        lo, hi = rel.predict(r["model"], r["input_tokens"] / B, r["output_tokens"] / B, B)["pi95"]
        inside += lo <= r["energy_j"] <= hi
    assert inside >= 0.85 * len(held)
    # on such runs, relative errors are much smaller with the relative noise model
    cv_rel = cross_validate(train, k=5, terms=list(TRUE), noise="relative")
    cv_abs = cross_validate(train, k=5, terms=list(TRUE))
    assert cv_rel["mape"] < cv_abs["mape"]
    assert cv_rel["coverage"] >= 0.85
    assert Predictor.load(rel.save(tmp_path / "rel.json")).noise == "relative"
    with pytest.raises(ValueError, match="noise"):
        Predictor.fit(train, noise="gaussian")
    with pytest.raises(ValueError, match="> 0"):
        Predictor.fit([dict(r, energy_j=-1.0) for r in train[:10]], noise="relative")


def test_terms_that_cannot_be_told_apart_are_dropped():
    rng = np.random.default_rng(2)
    m = _arch(rng)
    runs = []
    for _ in range(20):  # one model, batch 1: decode_flops ∝ output_tokens ∝ decode_steps
        P, O = int(rng.integers(4, 200)), int(rng.integers(4, 100))
        runs.append({"model": m, "batch_size": 1, "input_tokens": P, "output_tokens": O,
                     "energy_j": _truth(m, 1, P, O) + rng.normal(0, SIGMA_J), "status": "completed"})
    p = Predictor.fit(runs)
    assert {"decode_steps_x_layers", "decode_steps", "output_tokens", "prompt_tokens"} <= set(p.dropped_terms)
    assert p.terms[:3] == ["const", "decode_flops", "prefill_flops"]
    # still predicts that model well
    r = p.predict(m, 100, 50)
    assert abs(r["energy_j"] - _truth(m, 1, 100, 50)) < 4 * r["sd_pred"]


def test_too_few_runs_and_bad_input():
    rng = np.random.default_rng(3)
    runs = _runs(rng, MIN_RUNS - 1)
    with pytest.raises(ValueError, match=f"at least {MIN_RUNS} completed runs"):
        Predictor.fit(runs)
    failed = runs + [dict(runs[0], status="failed")]  # a failed run does not count
    with pytest.raises(ValueError, match="1 skipped"):
        Predictor.fit(failed)
    with pytest.raises(ValueError, match="unknown term"):
        Predictor.fit(_runs(rng, 10), terms=["const", "magic"])
    p = Predictor.fit(_runs(rng, 10), terms=["const", "decode_flops"])
    with pytest.raises(ValueError):
        p.predict(_arch(rng), 10, 0)
    with pytest.raises(ValueError, match="n_layers"):
        p.predict({"n_heads": 4}, 10, 10)
    # never more than n - 2 terms, so the residual scatter is estimable
    p5 = Predictor.fit(_runs(rng, 5))
    assert len(p5.terms) == 3 and p5.df == 2


def test_save_and_load_roundtrip(tmp_path):
    rng = np.random.default_rng(4)
    p = Predictor.fit(_runs(rng, 30))
    path = p.save(tmp_path / "p.json")
    q = Predictor.load(path)
    m = _arch(rng)
    assert q.predict(m, 64, 32, batch_size=2) == p.predict(m, 64, 32, batch_size=2)
    assert q.terms == p.terms and q.dropped_terms == p.dropped_terms and q.ranges == p.ranges
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a saved energyprof Predictor"):
        Predictor.load(tmp_path / "bad.json")
    (tmp_path / "junk.json").write_text("not json")
    with pytest.raises(ValueError, match="not JSON"):
        Predictor.load(tmp_path / "junk.json")


def test_extrapolation_is_flagged():
    rng = np.random.default_rng(8)
    p = Predictor.fit(_runs(rng, 30), terms=list(TRUE))
    inside = p.predict({"n_layers": 8, "hidden_size": 256, "n_heads": 4, "n_kv_heads": 4, "vocab_size": 1000}, 64, 32)
    assert inside["extrapolation"] == []
    far = p.predict({"n_layers": 80, "hidden_size": 8192, "n_heads": 64, "n_kv_heads": 8, "vocab_size": 1000}, 64, 32)
    assert far["energy_j"] > inside["energy_j"]
    with pytest.raises(ValueError, match="vocab_size"):
        p.predict({"n_layers": 8, "hidden_size": 256}, 64, 32)
    assert "decode_flops" in far["extrapolation"] and "const" not in far["extrapolation"]


def test_features_of_real_models():
    import torch
    from energyprof.tiny import tiny_config, tiny_model

    model = tiny_model("tiny-llama")
    n = sum(p.numel() for p in model.parameters())
    f_model = model_features(model)
    assert f_model["n_params"] == n and f_model["n_layers"] == 2 and f_model["n_kv_heads"] == 2
    # the shape formula gives the exact count for a llama (untied embeddings, gated MLP)
    assert model_features(tiny_config("tiny-llama"))["n_params"] == n
    assert model_features("tiny-llama")["n_params"] == n
    moe = tiny_model("tiny-mixtral")
    f = model_features(moe)
    per_expert = 3 * 64 * 128 * 2  # gate/up/down of one expert, over 2 layers
    assert f["active_params"] == f["n_params"] - 2 * per_expert  # 4 experts, 2 per token
    with pytest.raises(ValueError):
        model_features("no-such-model")
    with pytest.raises(TypeError):
        model_features(3.5)
    assert isinstance(model, torch.nn.Module)


def test_cross_validate():
    rng = np.random.default_rng(5)
    runs = _runs(rng, 60)
    cv = cross_validate(runs, k=5, terms=list(TRUE))
    assert cv["n"] == 60 and cv["k"] == 5
    err = cv["predicted"] - cv["actual"]
    assert cv["rmse"] == pytest.approx(math.sqrt(np.mean(err ** 2)))
    assert cv["mape"] == pytest.approx(100 * np.mean(np.abs(err) / np.abs(cv["actual"])))
    assert cv["rmse"] < 2 * SIGMA_J
    assert cv["coverage"] >= 0.85
    with pytest.raises(ValueError, match="k must be"):
        cross_validate(runs, k=1)
    with pytest.raises(ValueError, match="training split"):
        cross_validate(runs[:6], k=3)
    assert "MAPE" in plot_predictions(cv).axes[0].get_title()


def test_cli_fit_evaluate_predict(tmp_path, capsys):
    rng = np.random.default_rng(6)
    db = str(tmp_path / "runs.db")
    with Store(db) as st:
        for r in _runs(rng, 30):
            st.save(RunData(dict(r, started_at="2026-01-01T00:00:00Z", name="constructed")))
    out = str(tmp_path / "model.json")
    assert cli.main(["predict", "--fit", "--db", db, "-o", out, "--terms", ",".join(TRUE)]) == 0
    assert "predictor written" in capsys.readouterr().out
    assert Predictor.load(out).terms == list(TRUE)
    assert cli.main(["predict", "--evaluate", "--db", db, "--k", "3", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["n"] == 30 and ev["k"] == 3 and ev["mape"] >= 0 and ev["rmse"] > 0
    assert cli.main(["predict", "--model-json", out, "--model", "tiny-llama", "--prompt-tokens", "32",
                     "--output-tokens", "64", "--json"]) == 0
    pr = json.loads(capsys.readouterr().out)
    p = Predictor.load(out)
    assert pr["energy_j"] == pytest.approx(p.predict("tiny-llama", 32, 64)["energy_j"])
    # user errors: exit status 2, one line
    assert cli.main(["predict", "--db", db]) == 2
    assert cli.main(["predict", "--model-json", out, "--model", "tiny-llama"]) == 2
    assert cli.main(["predict", "--model-json", str(tmp_path / "missing.json"), "--model", "tiny-llama",
                     "--prompt-tokens", "1", "--output-tokens", "1"]) == 2
    empty = str(tmp_path / "empty.db")
    assert cli.main(["predict", "--fit", "--db", empty]) == 2
    assert "at least 5" in capsys.readouterr().err


def test_default_terms_are_all_terms():
    assert DEFAULT_TERMS == tuple(TERMS)


def test_features_and_columns_of_a_hand_worked_config():
    """Numbers worked out by hand (not with the module's formulas) for a llama-shaped
    config: L = 2 layers, d = 64, 4 heads, 2 KV heads (d_kv = 2 * 64 / 4 = 32), I = 128,
    V = 320, untied embeddings, batch B = 2, prompt P = 5, output O = 3 tokens.

    Parameters: embeddings and LM head 2 * 320 * 64 = 40 960; per layer q and o
    2 * 64 * 64 = 8 192, k and v 2 * 64 * 32 = 4 096, gated MLP 3 * 64 * 128 = 24 576,
    two norms 128, so 36 992 per layer and 73 984 for two; the final norm 64.
    Total 40 960 + 73 984 + 64 = 115 008."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    assert model_features(cfg)["n_params"] == 115_008
    assert sum(p.numel() for p in LlamaForCausalLM(cfg).parameters()) == 115_008   # torch counts the same
    f = model_features({"n_layers": 2, "hidden_size": 64, "n_heads": 4, "n_kv_heads": 2, "intermediate_size": 128,
                        "vocab_size": 320, "n_params": 115_008})
    assert f["active_params"] == 115_008
    B, P, O = 2.0, 5.0, 3.0
    by_hand = {
        "const": 1.0,
        "decode_flops": 690_048 / 1e9,          # 2 * 3 * 115 008
        "prefill_flops": 1_150_080 / 1e9,       # 2 * 5 * 115 008
        "decode_steps_x_layers": 6.0,           # 3 steps * 2 layers
        "decode_steps": 3.0,
        "prefill_attention": 6_400 / 1e9,       # 2 * 5^2 * 2 * 64
        "decode_attention": 2_304 / 1e9,        # 2 * 3 * (5 + (3 - 1) / 2) * 2 * 32
        "prompt_tokens": 10.0,
        "output_tokens": 6.0,
    }
    assert set(by_hand) == set(TERMS)
    for term, want in by_hand.items():
        assert TERMS[term][0](f, B, P, O) == pytest.approx(want, rel=1e-15), term


def test_active_parameters_of_a_hand_worked_moe():
    """4 experts, 2 per token, d = 64, I = 128, L = 2, V = 320, 4 heads, 2 KV heads (the
    router is not counted by the shape formula).  Per layer 8 192 + 4 096 + 4 experts *
    24 576 + 128 = 110 720; total 40 960 + 2 * 110 720 + 64 = 262 464; a token skips 2
    experts in each of 2 layers: 262 464 - 2 * 2 * 24 576 = 164 160 active."""
    m = {"n_layers": 2, "hidden_size": 64, "n_heads": 4, "n_kv_heads": 2, "intermediate_size": 128,
         "vocab_size": 320, "n_experts": 4, "experts_per_token": 2}
    assert estimate_params(m) == 262_464
    f = model_features(m)
    assert f["n_params"] == 262_464 and f["active_params"] == 164_160
    assert TERMS["decode_flops"][0](f, 1.0, 7.0, 10.0) == pytest.approx(1_641_600 / 1e9, rel=1e-15)
