"""Engines without hooks: ep.run(None) with marks, ep.TokenStreamer, the adapters (onnxruntime,
torch.compile, eager/sdpa attention) and the engine comparison of ep.sweep / energyprof sweep.

Oracles: the synthetic source's known power (energy = power x window), the times the test
itself reads around each mark (every phase boundary lies between them), the token counts
the test asked for, and the same generation run hooked (the hooked session counts tokens
with its own, independent code) or by eager PyTorch (the adapters' greedy ids).
"""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch

import energyprof as ep
from energyprof import _core, cli
from energyprof.measure.engines import ENGINES, CompileEngine, OnnxRuntimeEngine, export_onnx, make_engine
from energyprof.tiny import ByteTokenizer, tiny_model

SOURCE = "synthetic:power_w=10,period_ms=1"
T975_1 = 12.706   # t(0.975, 1 degree of freedom), from the table


@pytest.fixture(scope="module")
def model():
    return tiny_model("tiny-llama", n_layers=1, hidden_size=32, n_heads=2, n_kv_heads=1, intermediate_size=64).eval()


@pytest.fixture(scope="module")
def onnx_path(model, tmp_path_factory):
    """One export for the module (the exporter takes ~10 s on two cores)."""
    return export_onnx(model, str(tmp_path_factory.mktemp("onnx") / "tiny.onnx"))


def _greedy(model, ids, n):
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                              min_new_tokens=n, do_sample=False).numpy()


def _phase_rows(run):
    sec = run.sections
    return {str(r["name"]): r for r in sec[sec["kind"] == "phase"]}


# ---------------------------------------------------------------------------------
# marks
# ---------------------------------------------------------------------------------
def test_marks_make_phases_and_tokens_between_the_times_around_them():
    t = {}
    with ep.run(None, source=SOURCE, baseline_s=0, save=False, engine="hand") as s:
        time.sleep(0.03)
        t["a0"] = _core.now_ns()
        s.mark_prefill_start(input_tokens=12, batch=2)
        t["a1"] = _core.now_ns()
        time.sleep(0.04)
        t["b0"] = _core.now_ns()
        s.mark_prefill_end()
        t["b1"] = _core.now_ns()
        steps = []
        for k in range(3):
            time.sleep(0.02)
            lo = _core.now_ns()
            s.mark_token(text=f"<{k}>")
            steps.append((lo, _core.now_ns()))
        time.sleep(0.03)
    sm = s.summary()
    assert sm["engine"] == "hand" and sm["model"]["name"] == "hand" and sm["mode"] == "marks"
    assert (sm["input_tokens"], sm["output_tokens"], sm["n_decode_steps"], sm["batch_size"]) == (12, 2 + 3 * 2, 3, 2)
    ph = _phase_rows(s)
    assert list(ph) == ["pre_inference", "prefill", "decode", "post_inference"]
    assert t["a0"] <= ph["prefill"]["t_start_ns"] <= t["a1"]
    assert t["b0"] <= ph["prefill"]["t_end_ns"] <= t["b1"] and ph["prefill"]["tokens"] == 12
    assert steps[-1][0] <= ph["decode"]["t_end_ns"] <= steps[-1][1] and ph["decode"]["tokens"] == 6
    # one token row per decode step, 2 tokens each (the batch), between the marks around it
    assert list(s.tokens["step"]) == [1, 2, 3] and list(s.tokens["n_tokens"]) == [2, 2, 2]
    for (lo, hi), row in zip(steps, s.tokens):
        assert lo <= row["t_end_ns"] <= hi
    # the texts given to the marks are the run's token texts, at the steps they ended
    assert s.token_texts() == {1: "<0>", 2: "<1>", 3: "<2>"}
    # the synthetic source is 10 W: each window's energy is 10 W x its duration
    for r in list(ph.values()) + list(s.tokens):
        assert r["energy_j"] == pytest.approx(10.0 * r["duration_s"], rel=1e-6, abs=1e-9)
    assert sm["energy_j"] == pytest.approx(10.0 * sm["duration_s"], rel=1e-6)


def test_first_token_without_prefill_mark_ends_the_prefill_and_generations_repeat():
    with ep.run(None, source=SOURCE, baseline_s=0, save=False) as s:
        for gen in range(2):
            time.sleep(0.01)
            for _ in range(4):           # a per-token callback only: 1 prefill + 3 decode steps
                s.mark_token()
                time.sleep(0.005)
            s.end_generation()
    sm = s.summary()
    assert sm["output_tokens"] == 8 and sm["n_decode_steps"] == 6 and sm["n_forwards"] == 8
    assert sm["input_tokens"] == 0      # never said: not counted
    names = [str(r["name"]) for r in s.sections[s.sections["kind"] == "phase"]]
    assert names.count("prefill") == 2 and names.count("decode") == 2
    assert list(s.tokens["step"]) == [1, 2, 3, 4, 5, 6]   # steps count on across generations, as for hooked runs


def test_marks_errors_name_what_was_wrong(model):
    with ep.run(model, source=SOURCE, baseline_s=0, save=False, mode="minimal") as hooked:
        with pytest.raises(RuntimeError, match="hooks its model"):
            hooked.mark_token()
        with pytest.raises(ValueError, match="ep.run\\(None"):
            ep.TokenStreamer(hooked)
        _greedy(model, torch.tensor([[5, 6]]), 2)
    s = ep.run(None, source=SOURCE, baseline_s=0, save=False)
    with pytest.raises(RuntimeError, match="inside the `with"):
        s.mark_prefill_end()
    with s:
        with pytest.raises(ValueError, match="batch must be an integer >= 1"):
            s.mark_prefill_start(batch=0)
        with pytest.raises(ValueError, match="input_tokens must be an integer >= 0"):
            s.mark_prefill_end(input_tokens=-3)
        with pytest.raises(TypeError, match="text"):
            s.mark_token(text=5)
        s.mark_token()
    with pytest.raises(TypeError, match="torch.nn.Module \\(or None"):
        ep.run("not a model", source=SOURCE)


def test_token_streamer_in_hf_generate_counts_what_the_hooks_count(model):
    tok = ByteTokenizer()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with ep.run(model, source=SOURCE, baseline_s=0, save=False, mode="minimal") as hooked:
        want_ids = _greedy(model, ids, 5)
    with ep.run(None, source=SOURCE, baseline_s=0, save=False) as s:
        streamer = ep.TokenStreamer(s, tokenizer=tok)
        with torch.no_grad():
            got_ids = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5,
                                     min_new_tokens=5, do_sample=False, streamer=streamer).numpy()
    np.testing.assert_array_equal(got_ids, want_ids)
    a, b = hooked.summary(), s.summary()
    for k in ("input_tokens", "output_tokens", "n_decode_steps", "batch_size"):
        assert a[k] == b[k], k
    assert (b["input_tokens"], b["output_tokens"], b["n_decode_steps"]) == (8, 10, 4)
    assert list(s.tokens["n_tokens"]) == list(hooked.tokens["n_tokens"]) == [2] * 4
    # one text per step (both sequences' bytes decoded together), from the tokenizer
    tt = s.token_texts()
    assert sorted(tt) == [0, 1, 2, 3, 4]   # step 0: the token that ended the prefill
    assert tt[0] == tok.decode([int(x) for x in got_ids[:, 4]])


def test_streamer_plain_callback_and_store_round_trip(tmp_path):
    db = str(tmp_path / "runs.db")
    with ep.run(None, source=SOURCE, baseline_s=0, db=db, engine="llama.cpp") as s:
        cb = ep.TokenStreamer(s)
        cb.on_prompt(7)
        time.sleep(0.01)
        for piece in ("a", "b", "c"):
            cb(text=piece)               # the callback form
            time.sleep(0.005)
        cb.end()
    back = ep.load(s.run_id, db=db)
    sm = back.summary()
    assert sm["engine"] == "llama.cpp" and (sm["input_tokens"], sm["output_tokens"]) == (7, 3)
    assert len(back.tokens) == 2 and set(_phase_rows(back)) >= {"prefill", "decode"}
    path = back and ep.write_report(back, str(tmp_path / "r.html"))
    assert "llama.cpp" in open(path).read()


# ---------------------------------------------------------------------------------
# adapters
# ---------------------------------------------------------------------------------
def test_onnxruntime_adapter_profiles_an_exported_tiny_model_with_tokens_and_phases(model, onnx_path):
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with OnnxRuntimeEngine(path=onnx_path) as eng:
        # the exported graph computes the model's logits: greedy ids equal eager PyTorch's
        with torch.no_grad():
            ref = model(input_ids=ids, use_cache=False).logits.numpy()
        np.testing.assert_allclose(eng.logits(ids.numpy(), np.ones_like(ids.numpy())), ref, rtol=1e-4, atol=1e-5)
        with ep.run(eng.run_target(), source=SOURCE, baseline_s=0, save=False, engine=eng.name) as s:
            out = eng.generate(s, ids, max_new_tokens=6)
    np.testing.assert_array_equal(out, _greedy(model, ids, 6))
    sm = s.summary()
    assert sm["engine"] == "onnxruntime" and sm["source_label"] == "simulated"
    assert (sm["input_tokens"], sm["output_tokens"], sm["n_decode_steps"]) == (6, 6, 5)
    ph = _phase_rows(s)
    assert ph["prefill"]["tokens"] == 6 and ph["decode"]["tokens"] == 5
    assert list(s.tokens["step"]) == [1, 2, 3, 4, 5]
    assert sum(r["energy_j"] for r in ph.values()) == pytest.approx(sm["energy_j"], rel=1e-9)
    assert sm["energy_j"] == pytest.approx(10.0 * sm["duration_s"], rel=1e-6)


def test_onnxruntime_engine_exports_itself_and_cleans_up(model):
    eng = OnnxRuntimeEngine(model).open()
    path = eng.path
    import os

    assert os.path.exists(path)
    ids = torch.tensor([[5, 6, 7]])
    np.testing.assert_array_equal(eng.generate(None, ids, max_new_tokens=3), _greedy(model, ids, 3))
    eng.close()
    assert not os.path.exists(path)
    with pytest.raises(ValueError, match="needs a model"):
        OnnxRuntimeEngine()


def test_compile_adapter_marks_tokens_through_the_streamer(model):
    """What this checks: the compile adapter's path (torch.compile of the forward, traced by
    dynamo; backend="eager" so no C++ codegen runs on two cores) gives eager PyTorch's
    greedy ids and the right tokens and phases, and close() restores the model.  It does
    not check inductor's generated code or its speed."""
    ids = torch.tensor([[5, 6, 7, 8]])
    want = _greedy(model, ids, 4)
    with CompileEngine(model, backend="eager") as eng:
        assert eng.run_target() is None and "forward" in vars(model)
        with ep.run(None, source=SOURCE, baseline_s=0, save=False, engine=eng.name) as s:
            got = eng.generate(s, ids, torch.ones_like(ids), max_new_tokens=4).numpy()
    assert "forward" not in vars(model)
    np.testing.assert_array_equal(got, want)
    sm = s.summary()
    assert (sm["input_tokens"], sm["output_tokens"], sm["n_decode_steps"]) == (4, 4, 3)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_attention_implementation_engines_switch_and_restore(model, impl):
    before = model.config._attn_implementation
    ids = torch.tensor([[5, 6, 7]])
    want = _greedy(model, ids, 3)
    with make_engine(impl, model) as eng:
        assert model.config._attn_implementation == impl and eng.run_target() is model
        with ep.run(eng.run_target(), source=SOURCE, baseline_s=0, save=False, mode="minimal", engine=impl) as s:
            got = eng.generate(s, ids, torch.ones_like(ids), max_new_tokens=3).numpy()
    assert model.config._attn_implementation == before
    np.testing.assert_array_equal(got, want)
    assert s.summary()["output_tokens"] == 3 and s.summary()["engine"] == impl
    with pytest.raises(ValueError, match="valid engines: eager, sdpa, compile, onnxruntime"):
        make_engine("tensorrt", model)


# ---------------------------------------------------------------------------------
# the engine comparison
# ---------------------------------------------------------------------------------
def test_engine_comparison_lists_each_engine_with_intervals_and_the_source_label(model, onnx_path):
    res = ep.sweep(model, batch_sizes=[1], prompt_lengths=[5], max_new_tokens=[3], repeats=2, source=SOURCE,
                   save=False, progress=False, engines=list(ENGINES),
                   engine_options={"compile": {"backend": "eager"}, "onnxruntime": {"path": onnx_path}})
    et = res.engine_table()
    assert list(et["engine"]) == ["eager", "sdpa", "compile", "onnxruntime"]
    assert list(et["n"]) == [2, 2, 2, 2] and set(et["source_label"]) == {"simulated"}
    assert set(et["source"]) == {SOURCE}
    for row in et:
        runs = [r for r in res.runs if r["engine"] == row["engine"]]
        assert len(runs) == 2 and all(f"engine={row['engine']}" in r["tags"] for r in runs)
        assert all(r["output_tokens"] == 3 and r["input_tokens"] == 5 for r in runs)
        for f in ("j_per_output_token", "tokens_per_j"):
            v = np.array([r[f] for r in runs])
            assert row[f] == pytest.approx(v.mean(), rel=1e-12)
            assert row[f + "_ci95"] == pytest.approx(T975_1 * v.std(ddof=1) / math.sqrt(2), rel=1e-3)
        # each row says how well it was measured: the runs' resolved token share and the source's uncertainty
        assert row["tokens_resolved"] == pytest.approx(np.mean([r["resolution"]["tokens"] for r in runs]))
        assert row["systematic"] == runs[0]["uncertainty"]["text"] and "exact by construction" in row["systematic"]
        assert row["sample_period_s"] == pytest.approx(max(r["resolution"]["sample_period_s"] for r in runs))
        # tokens/J is output tokens over energy, run by run
        assert row["tokens_per_j"] == pytest.approx(np.mean([3 / r["energy_j"] for r in runs]), rel=1e-9)
    assert sorted(res.table["engine"]) == sorted(ENGINES)


def test_cli_sweep_engine_prints_the_engine_table(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")   # rich wraps cells at the default 80 columns
    rc = cli.main(["sweep", "--model", "tiny-llama", "--prompt-lengths", "4", "--max-new-tokens", "2",
                   "--repeats", "2", "--source", SOURCE, "--no-save", "--no-progress", "--engine",
                   "eager,sdpa,compile,onnxruntime", "--compile-backend", "eager"])
    assert rc == 0
    out = capsys.readouterr().out
    table = out[out.index("engines (mean"):out.index("engine source:")]
    cells = [[c.strip() for c in line.replace("│", "|").split("|")[1:-1]] for line in table.splitlines()
             if line.startswith(("│", "|"))]
    rows = [c for c in cells if c and c[0] in ENGINES]
    # one row per engine, in the order asked, with J/out token ± CI, tokens/J ± CI and the source label
    assert [c[0] for c in rows] == ["eager", "sdpa", "compile", "onnxruntime"]
    assert all(c[-1] == "simulated" and c[4] == "2" for c in rows)
    assert "±" in table and f"engine source: {SOURCE} (simulated)" in out
    assert all(c[-2].endswith("%") for c in rows) and "engine uncertainty beside the CIs: none (simulated" in out
    rc = cli.main(["sweep", "--model", "tiny-llama", "--engine", "eager,tensorrt"])
    assert rc == 2
    assert "--engine takes a comma-separated list of eager, sdpa, compile, onnxruntime" in capsys.readouterr().err
