"""Per-token breakdowns (issue 16, part 4) and the CLI gaps (part 9): the per-step component
stack, the per-token energy histogram with its extremes and their text, decode J/token against
the context length, ``energyprof delete`` / ``import`` / ``runs --since/--until`` / ``context``
and the attention kind as a grouping of the architecture comparison.

Oracles: a real tiny-llama run's own component rows summed by hand per step; the tokens of the
same model decoded without energyprof; hand-built token rows on an exact line; the runs'
start times written by the test.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import energyprof as ep
from energyprof._dtypes import TOKEN_DTYPE
from energyprof.analysis.efficiency import architecture_scaling
from energyprof.analysis.tokens import context_cost, token_components, token_energy_distribution
from energyprof.cli.main import main
from energyprof.store.rundata import RunData
from energyprof.testing import synthetic_run
from energyprof.tiny import ByteTokenizer, tiny_model

N_NEW = 6


@pytest.fixture(scope="module")
def text_run():
    """tiny-llama, greedy, 6 new tokens, text stored; samples of 50 ms and no boundary reads
    (the synthetic source would resolve every step with them), so the steps are unresolved."""
    model = tiny_model("tiny-llama")
    tok = ByteTokenizer(model.config.vocab_size)
    inp = tok(["per token energy"], return_tensors="pt")
    with ep.run(model, source="synthetic:power_w=9,period_ms=50", baseline_s=0, save=False, tokenizer=tok,
                boundary_reads=False) as s, \
            torch.no_grad():
        out = model.generate(**inp, max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False)
    gen = out[0, inp["input_ids"].shape[1]:].tolist()
    return s, [tok.decode([t]) for t in gen]


def test_per_step_stack_is_the_layers_own_children_summed_by_hand(text_run):
    s, _ = text_run
    st = token_components(s)
    tok = s.tokens[np.argsort(s.tokens["step"])]
    assert st["step"].tolist() == tok["step"].tolist() == list(range(1, N_NEW))
    c = s.components
    for i, step in enumerate(st["step"]):
        rows = c[(c["step"] == step) & (c["layer"] >= 0)]
        # tiny-llama's layer children, grouped by hand
        attn = float(rows["energy_j"][rows["component"] == "attn"].sum())
        mlp = float(rows["energy_j"][rows["component"] == "mlp"].sum())
        norms = float(rows["energy_j"][np.isin(rows["component"], ["input_norm", "post_attn_norm"])].sum())
        assert st["attention"][i] == pytest.approx(attn, rel=1e-12)
        assert st["mlp"][i] == pytest.approx(mlp, rel=1e-12)
        assert st["norms"][i] == pytest.approx(norms, rel=1e-12)
        assert st["other"][i] == pytest.approx(float(tok["energy_j"][i]) - attn - mlp - norms, rel=1e-9, abs=1e-15)
    assert st["cumulative_j"][-1] == pytest.approx(s.summary()["phases"]["decode"]["energy_j"], rel=1e-9)
    # 50 ms samples: (nearly) no step spans one, and the stack marks exactly those
    assert st["resolved"].tolist() == tok["resolved"].tolist() and not st["resolved"].all()
    fig = ep.plot(s, kind="token_components", backend="plotly")
    assert "resolved" in fig.layout.title.text
    marked = [t.customdata for t in fig.data if t.customdata is not None][0]
    assert [m == "unresolved" for m in marked] == (~tok["resolved"]).tolist()


def test_histogram_extremes_carry_the_tokens_text(text_run):
    s, words = text_run
    d = token_energy_distribution(s, bins=4, n_extremes=2)
    assert int(d["counts"].sum()) == N_NEW - 1
    jpt = s.tokens["j_per_token"]
    assert d["edges"][0] == pytest.approx(jpt.min()) and d["edges"][-1] == pytest.approx(jpt.max())
    top = int(s.tokens["step"][np.argmax(jpt)])
    assert d["highest"][0]["step"] == top and d["highest"][0]["j_per_token"] == pytest.approx(float(jpt.max()))
    # decode step k produced generated token k (token 0 came out of the prefill forward)
    assert d["highest"][0]["text"] == words[top]
    assert d["lowest"][0]["text"] == words[d["lowest"][0]["step"]]
    assert d["resolved_share"] == pytest.approx(float(np.mean(s.tokens["resolved"])))
    assert d["highest"][0]["resolved"] == bool(s.tokens["resolved"][np.argmax(jpt)])
    fig = ep.plot(s, kind="token_hist", backend="plotly", bins=4)
    assert "resolved" in fig.layout.title.text


def _line_run(L=10, n=12, a=0.5, b=0.01, resolved=True):
    tok = np.zeros(n, TOKEN_DTYPE)
    tok["step"] = np.arange(1, n + 1)
    tok["n_tokens"] = 1
    tok["j_per_token"] = a + b * (L + tok["step"])   # step k attends over L + k positions
    tok["energy_j"] = tok["j_per_token"]
    tok["resolved"] = resolved
    return RunData({"input_tokens": L, "batch_size": 1, "source_label": "simulated"}, tokens=tok)


def test_context_fit_recovers_a_hand_made_line():
    res = context_cost(_line_run())
    assert res["slope"]["value"] == pytest.approx(0.01, rel=1e-9)
    assert res["intercept"]["value"] == pytest.approx(0.5, rel=1e-9)
    assert res["r2"] == pytest.approx(1.0) and res["n"] == 12
    assert res["context"][0] == 11 and res["context"][-1] == 22
    # pooled runs with other prompt lengths lie on the same line
    two = context_cost([_line_run(L=10), _line_run(L=30, n=5)])
    assert two["slope"]["value"] == pytest.approx(0.01, rel=1e-9) and two["n"] == 17


def test_cli_delete_import_since_until_and_context(tmp_path, capsys):
    db = tmp_path / "r.db"
    runs = [synthetic_run(n_layers=2, n_steps=6, seed=i) for i in range(3)]
    starts = ["2026-01-05T10:00:00+00:00", "2026-02-10T10:00:00+00:00", "2026-03-15T10:00:00+00:00"]
    with ep.Store(db) as st:
        ids = []
        for r, t in zip(runs, starts):
            s = dict(r.summary())
            s["started_at"] = t
            ids.append(st.save(RunData(s, samples=r.samples, sections=r.sections, tokens=r.tokens,
                                       layers=r.layers, components=r.components)))
    assert main(["runs", "--since", "2026-02-01", "--until", "2026-03-01", "--json", "--db", str(db)]) == 0
    assert [r["run_id"] for r in json.loads(capsys.readouterr().out)] == [ids[1]]
    assert main(["runs", "--since", "2026-02-10T10:00:00+00:00", "--json", "--db", str(db)]) == 0
    assert sorted(r["run_id"] for r in json.loads(capsys.readouterr().out)) == ids[1:]   # at or after
    assert main(["runs", "--since", "not a date", "--db", str(db)]) == 2
    capsys.readouterr()
    # export, delete, import: the imported run is the same run under a new id
    path = tmp_path / "run1.json"
    ep.export(ids[1], path, db=db)
    assert main(["delete", str(ids[1]), str(ids[2]), "--json", "--db", str(db)]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": [ids[1], ids[2]]}
    assert [r["run_id"] for r in ep.runs(db=db, limit=None)] == [ids[0]]
    assert main(["delete", "424242", "--db", str(db)]) == 2 and "424242" in capsys.readouterr().err
    assert main(["import", str(path), "--json", "--db", str(db)]) == 0
    new = json.loads(capsys.readouterr().out)["imported"]
    assert len(new) == 1 and new[0] not in ids
    back = ep.load(new[0], db=db)
    assert back.summary()["energy_j"] == runs[1].summary()["energy_j"]
    np.testing.assert_array_equal(back.tokens["energy_j"], runs[1].tokens["energy_j"])
    assert main(["import", str(tmp_path / "missing.json"), "--db", str(db)]) == 2
    capsys.readouterr()
    html = tmp_path / "ctx.html"
    assert main(["context", str(new[0]), "--plot", str(html), "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "slope" in out and html.stat().st_size > 10000
    assert main(["context", str(new[0]), "--json", "--db", str(db)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["n"] == len(runs[1].tokens)


def test_attention_kind_groups_the_architecture_comparison():
    def run(i, heads, kv, jpt):
        return {"run_id": i, "j_per_output_token": jpt, "source_label": "simulated",
                "model": {"n_heads": heads, "n_kv_heads": kv, "n_layers": 2 + i, "hidden_size": 64}}

    ss = [run(1, 8, 8, 1.0), run(2, 8, 8, 3.0), run(3, 8, 2, 2.0), run(4, 8, 2, 4.0), run(5, 8, 1, 5.0)]
    out = architecture_scaling(ss, group_by="attention_kind")
    assert list(out["groups"]) == ["MHA", "GQA", "MQA"]
    assert out["groups"]["MHA"]["run_ids"] == [1, 2] and out["groups"]["GQA"]["run_ids"] == [3, 4]
    assert out["groups"]["MHA"]["figure"]["mean"] == pytest.approx(2.0)
    assert out["groups"]["MQA"]["figure"]["mean"] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="group_by"):
        architecture_scaling(ss, group_by="layers")
