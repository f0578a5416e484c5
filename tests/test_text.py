"""Text with the run: the prompt, the output and each token's text, stored, searched and shown;
the sampling options of ``energyprof profile``; tokenising and detokenising inside the run.

Oracles: the same tiny model run without energyprof (greedy, or sampled from the same seed),
decoded with the same tokenizer.
"""
from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import energyprof as ep
from energyprof.cli.main import main
from energyprof.tiny import ByteTokenizer, tiny_model

SRC = "synthetic:power_w=15,period_ms=5"


def _plain_generate(prompt, n, seed=None, batch=1, **kw):
    """The oracle: the tiny model's generation with no profiler anywhere near it."""
    model = tiny_model("tiny-llama")
    tok = ByteTokenizer(model.config.vocab_size)
    inp = tok([prompt] * batch, return_tensors="pt")
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**inp, max_new_tokens=n, min_new_tokens=n, **kw)
    gen = out[:, inp["input_ids"].shape[1]:].tolist()
    return [tok.decode(g) for g in gen], [[tok.decode([t]) for t in g] for g in gen]


def test_must_show_profile_prompt_is_found_by_search_and_holds_prompt_and_output(tmp_path):
    db = tmp_path / "runs.db"
    r = subprocess.run([sys.executable, "-m", "energyprof", "profile", "--model", "tiny-llama", "--prompt",
                        "the cost of a token", "--db", str(db), "--source", SRC, "--baseline-s", "0",
                        "--max-new-tokens", "5", "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    other = subprocess.run([sys.executable, "-m", "energyprof", "profile", "--model", "tiny-llama", "--prompt",
                            "something else", "--db", str(db), "--source", SRC, "--baseline-s", "0",
                            "--max-new-tokens", "2", "--json"], capture_output=True, text=True, timeout=300)
    assert other.returncode == 0, other.stderr
    found = ep.runs(search="cost of a token", db=db)
    assert len(found) == 1
    run = ep.load(found[0]["run_id"], db=db)
    want_out, want_tokens = _plain_generate("the cost of a token", 5)
    assert run.prompt() == "the cost of a token"
    assert run.output() == want_out[0]
    assert run.token_texts() == dict(enumerate(want_tokens[0]))
    assert run.summary()["text_stored"] is True
    # tokenising and detokenising were measured inside the run, as named sections
    names = {str(n) for n in run.sections["name"][run.sections["kind"] == "section"]}
    assert {"tokenize", "detokenize"} <= names
    sec = {str(r["name"]): r for r in run.sections}
    assert sec["tokenize"]["t_end_ns"] <= sec["prefill"]["t_start_ns"]
    assert sec["detokenize"]["t_start_ns"] >= sec["decode"]["t_end_ns"]
    # the CLI's search finds it too
    r = subprocess.run([sys.executable, "-m", "energyprof", "runs", "--search", "cost of a token", "--json",
                        "--db", str(db)], capture_output=True, text=True, timeout=300)
    assert [x["run_id"] for x in json.loads(r.stdout)] == [run.run_id]


def test_profile_sampling_options_are_stored_and_reproduce_the_output(tmp_path, capsys):
    db = tmp_path / "runs.db"
    args = ["profile", "--model", "tiny-llama", "--prompt", "hello", "--db", str(db), "--source", SRC,
            "--baseline-s", "0", "--max-new-tokens", "6", "--temperature", "0.7", "--top-k", "20",
            "--top-p", "0.9", "--seed", "3", "--json"]
    assert main(args) == 0
    s = json.loads(capsys.readouterr().out)
    g = s["generation"]
    assert (g["do_sample"], g["temperature"], g["top_k"], g["top_p"], g["seed"], g["max_new_tokens"]) == \
        (True, 0.7, 20, 0.9, 3, 6)
    run = ep.load(s["run_id"], db=db)
    want, _ = _plain_generate("hello", 6, seed=3, do_sample=True, temperature=0.7, top_k=20, top_p=0.9)
    assert run.output() == want[0]
    # greedy by default, and says so
    assert main(args[:13] + ["--json"]) == 0
    g2 = json.loads(capsys.readouterr().out)["generation"]
    assert g2["do_sample"] is False and g2["seed"] is None
    for bad, msg in ((["--temperature", "0"], "--temperature"), (["--top-k", "0"], "--top-k"),
                     (["--top-p", "1.5"], "--top-p")):
        assert main(args[:13] + bad) == 2
        assert msg in capsys.readouterr().err


def test_no_text_stores_no_text_and_search_misses_the_prompt(tmp_path, capsys):
    db = tmp_path / "runs.db"
    assert main(["profile", "--model", "tiny-llama", "--prompt", "secret prompt", "--db", str(db), "--source", SRC,
                 "--baseline-s", "0", "--max-new-tokens", "2", "--no-text", "--json"]) == 0
    rid = json.loads(capsys.readouterr().out)["run_id"]
    run = ep.load(rid, db=db)
    assert len(run.texts) == 0 and run.prompt() is None and run.summary()["text_stored"] is False
    assert ep.runs(search="secret prompt", db=db) == []


def test_session_decodes_generate_calls_with_a_tokenizer():
    model = tiny_model("tiny-llama")
    tok = ByteTokenizer()
    prompts = ["a longer prompt", "hi"]          # left padding on the second one
    inp = tok(prompts, return_tensors="pt")
    with torch.no_grad():
        ref = model.generate(**inp, max_new_tokens=4, do_sample=False)
    with ep.run(model, source=SRC, baseline_s=0, save=False, tokenizer=tok) as s:
        out = model.generate(**inp, max_new_tokens=4, do_sample=False)
        out2 = model.generate(**tok(["x"], return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert torch.equal(out, ref)                     # the wrapper changes nothing
    assert "generate" not in model.__dict__          # and is gone after the run
    n = inp["input_ids"].shape[1]
    assert [s.prompt(0), s.prompt(1), s.prompt(2)] == ["a longer prompt", "hi", "x"]   # padding not decoded
    assert [s.output(0), s.output(1)] == [tok.decode(r[n:]) for r in out.tolist()]
    assert s.output(2) == tok.decode(out2[0, 1:].tolist())
    # token texts carry the run's step numbers: step 0 from each prefill, decode steps counted through the run
    assert s.token_texts(0) == {k: tok.decode([t]) for k, t in enumerate(out[0, n:].tolist())}
    assert sorted(s.token_texts(2)) == [0, 4, 5] and sorted(s.tokens["step"].tolist()) == [1, 2, 3, 4, 5]
    g = s.summary()["generation"]
    assert g["n_generate_calls"] == 2 and g["max_new_tokens"] == 4 and g["do_sample"] is False


def test_record_text_wins_and_store_text_false_keeps_none():
    model = tiny_model("tiny-llama")
    tok = ByteTokenizer()
    with ep.run(model, source=SRC, baseline_s=0, save=False, tokenizer=tok) as s:
        model.generate(**tok(["abc"], return_tensors="pt"), max_new_tokens=2, do_sample=False)
        s.record_text(prompt="given prompt", output="given output", token_texts=["t0", "t1"])
    assert (s.prompt(), s.output(), s.token_texts()) == ("given prompt", "given output", {0: "t0", 1: "t1"})
    with ep.run(model, source=SRC, baseline_s=0, save=False, tokenizer=tok, store_text=False) as s2:
        model.generate(**tok(["abc"], return_tensors="pt"), max_new_tokens=2, do_sample=False)
        s2.record_text(prompt="ignored")
    assert len(s2.texts) == 0
    with ep.run(model, source=SRC, baseline_s=0, save=False) as s3:   # no tokenizer, nothing given: no text
        model.generate(torch.tensor([[5, 6]]), max_new_tokens=2, do_sample=False)
    assert len(s3.texts) == 0 and s3.summary()["generation"]["max_new_tokens"] == 2
    with pytest.raises(TypeError, match="record_text"):
        s3.record_text(prompt=3)


def test_text_is_in_the_report_escaped(tmp_path):
    from energyprof.testing import synthetic_run
    from energyprof._dtypes import text_dtype
    from energyprof.store.rundata import RunData

    base = synthetic_run(n_layers=1, n_steps=3)
    rows = [("prompt", -1, 0, "<b>prompt</b> & co"), ("output", -1, 0, "out"), ("token", 1, 0, "<i>")]
    t = np.array(rows, dtype=text_dtype(20))
    run = RunData(base.summary(), samples=base.samples, sections=base.sections, tokens=base.tokens,
                  layers=base.layers, components=base.components, texts=t)
    doc = run_report = ep.write_report(run, tmp_path / "t.html").read_text(encoding="utf-8")
    assert '<pre class="text" id="prompt-0">&lt;b&gt;prompt&lt;/b&gt; &amp; co</pre>' in run_report
    assert "<b>prompt</b>" not in doc and "&#x27;&lt;i&gt;&#x27;" in doc     # the token column, repr'd and escaped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = ep.write_report(base, tmp_path / "n.html").read_text(encoding="utf-8")
    assert "No text was stored with this run" in plain
