"""Encoder-only (BERT family) and encoder-decoder (T5 family) models, built from their
transformers config classes with random weights and a fixed seed.

Oracles: the configs themselves (how many layers, which modules each block has), the
unhooked model's outputs, and the synthetic source's constant power (energy = P x time).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import energyprof as ep
from energyprof.measure import arch

P_W = 10.0
SRC = f"synthetic:power_w={P_W},period_ms=2"


def _bert():
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=320, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return BertModel(cfg).eval()


def _t5(n_dec=3):
    """n_dec != num_layers tells the stacks apart in describe(); transformers 5.24's T5
    generate() sizes its decoder cache by num_layers, so generate() tests use n_dec=2."""
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(vocab_size=320, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=n_dec, num_heads=4,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = T5ForConditionalGeneration(cfg).eval()
    m.generation_config.eos_token_id = None
    return m


BERT_BLOCK = {"attn", "q_proj", "k_proj", "v_proj", "o_proj", "post_attn_norm", "up_proj", "down_proj",
              "post_ffn_norm"}


@pytest.mark.parametrize("use_tables", [True, False])
def test_bert_every_layer_and_component_is_found(use_tables):
    model = _bert()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = arch.describe(model, use_tables=use_tables)
    assert len(a.layers) == model.config.num_hidden_layers
    assert [r.module for r in a.layers] == list(model.encoder.layer)
    for i, layer in enumerate(model.encoder.layer):
        got = {r.component: r.module for r in a.by_layer(i)}
        assert set(got) == BERT_BLOCK, (use_tables, set(got) ^ BERT_BLOCK)
        # the modules are the ones the config's BertLayer has, by role
        assert got["q_proj"] is layer.attention.self.query and got["o_proj"] is layer.attention.output.dense
        assert got["up_proj"] is layer.intermediate.dense and got["down_proj"] is layer.output.dense
        assert got["post_attn_norm"] is layer.attention.output.LayerNorm
        assert got["post_ffn_norm"] is layer.output.LayerNorm
        assert got["up_proj"].out_features == model.config.intermediate_size
    if use_tables:
        assert a.arch == "bert" and a.kind == "encoder" and not a.generic
        assert a.config["attention_kind"] == "MHA" and a.config["intermediate_size"] == 64


def test_bert_forward_is_encode_and_outputs_are_unchanged():
    model = _bert()
    x = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]])
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        ref = model(input_ids=x, attention_mask=mask).last_hidden_state
        ref1 = model(input_ids=x[:1], attention_mask=mask[:1]).last_hidden_state
    with ep.run(model, source=SRC, baseline_s=0, save=False) as s, torch.no_grad():
        out = model(input_ids=x, attention_mask=mask).last_hidden_state
        out2 = model(input_ids=x[:1], attention_mask=mask[:1]).last_hidden_state
    assert torch.equal(out, ref) and torch.equal(out2, ref1)
    sm = s.summary()
    assert "prefill" not in sm["phases"] and "decode" not in sm["phases"]
    enc = s.sections[(s.sections["kind"] == "phase") & (s.sections["name"] == "encode")]
    assert len(enc) == 2 and sm["n_encode_forwards"] == 2
    assert sm["phases"]["encode"]["tokens"] == 6 + 3 + 6 == sm["input_tokens"]   # real (unmasked) tokens
    assert sm["output_tokens"] == 0 and len(s.tokens) == 0
    # constant power: each encode window's energy is P x its duration
    np.testing.assert_allclose(enc["energy_j"], P_W * enc["duration_s"], rtol=1e-9)
    comps = set(s.components["component"].tolist())
    assert BERT_BLOCK <= comps and {"embed", "embed_norm"} <= comps
    assert sorted(set(s.layers["layer"].tolist())) == [0, 1, 2] and set(s.layers["step"].tolist()) == {0}
    assert s.summary()["model"]["kind"] == "encoder"


T5_SELF = {"attn", "q_proj", "k_proj", "v_proj", "o_proj", "input_norm", "mlp", "up_proj", "down_proj",
           "post_attn_norm"}
T5_CROSS = {"cross_attn", "cross_q_proj", "cross_k_proj", "cross_v_proj", "cross_o_proj", "cross_attn_norm"}


def test_t5_both_stacks_and_cross_attention_are_found():
    model = _t5()
    a = arch.describe(model)
    n_enc, n_dec = model.config.num_layers, model.config.num_decoder_layers
    assert a.arch == "t5" and a.kind == "encoder-decoder"
    assert a.stacks == {"encoder": (0, n_enc), "decoder": (n_enc, n_dec)}
    assert [r.module for r in a.layers] == list(model.encoder.block) + list(model.decoder.block)
    for i in range(n_enc):
        assert {r.component for r in a.by_layer(i)} == T5_SELF
    for k, block in enumerate(model.decoder.block):
        got = {r.component: r.module for r in a.by_layer(n_enc + k)}
        assert set(got) == T5_SELF | T5_CROSS
        assert got["cross_attn"] is block.layer[1].EncDecAttention and got["attn"] is block.layer[0].SelfAttention
        assert got["up_proj"] is block.layer[2].DenseReluDense.wi and got["down_proj"] is block.layer[2].DenseReluDense.wo
    assert a.encoder.module is model.encoder
    assert {r.component for r in a.model_level} == {"embed", "final_norm", "lm_head", "encoder_final_norm"}
    assert a.config["n_encoder_layers"] == n_enc and a.config["n_decoder_layers"] == n_dec
    assert a.config["intermediate_size"] == 64 and a.config["n_layers"] == n_enc + n_dec


def test_t5_generate_is_encode_then_prefill_and_decode_with_outputs_unchanged():
    model = _t5(n_dec=2)
    x = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        ref = model.generate(x, max_new_tokens=5, do_sample=False)
    with ep.run(model, source=SRC, baseline_s=0, save=False) as s, torch.no_grad():
        out = model.generate(x, max_new_tokens=5, do_sample=False)
    assert torch.equal(out, ref)
    ph = s.sections[s.sections["kind"] == "phase"]
    ph = ph[np.argsort(ph["t_start_ns"])]
    assert [str(n) for n in ph["name"]] == ["pre_inference", "encode", "prefill", "decode", "post_inference"]
    sm = s.summary()
    assert sm["input_tokens"] == 5 and sm["phases"]["encode"]["tokens"] == 5
    assert sm["output_tokens"] == 5 and len(s.tokens) == 4            # the first token comes out of the prefill
    np.testing.assert_allclose(ph["energy_j"], P_W * ph["duration_s"], rtol=1e-9)
    n_enc = model.config.num_layers
    enc_calls = s.layers[s.layers["layer"] < n_enc]
    dec_calls = s.layers[s.layers["layer"] >= n_enc]
    # the encoder ran once (step 0, inside the encode phase); every decoder layer ran in every forward
    encode = ph[ph["name"] == "encode"][0]
    assert len(enc_calls) == n_enc and set(enc_calls["step"].tolist()) == {0}
    assert np.all((enc_calls["t_start_ns"] >= encode["t_start_ns"]) & (enc_calls["t_end_ns"] <= encode["t_end_ns"]))
    assert len(dec_calls) == model.config.num_decoder_layers * 5
    cross = s.components[s.components["component"] == "cross_attn"]
    assert len(cross) == model.config.num_decoder_layers * 5 and np.all(cross["layer"] >= n_enc)


def test_t5_plain_forward_splits_at_the_encoder():
    model = _t5()
    x, y = torch.tensor([[5, 6, 7]]), torch.tensor([[0, 4]])
    with torch.no_grad():
        ref = model(input_ids=x, decoder_input_ids=y).logits
    with ep.run(model, source=SRC, baseline_s=0, save=False) as s, torch.no_grad():
        out = model(input_ids=x, decoder_input_ids=y).logits
    assert torch.equal(out, ref)
    ph = s.sections[s.sections["kind"] == "phase"]
    names = [str(n) for n in ph[np.argsort(ph["t_start_ns"])]["name"]]
    assert names == ["pre_inference", "encode", "prefill", "post_inference"]
    enc, pre = (ph[ph["name"] == n][0] for n in ("encode", "prefill"))
    assert enc["t_end_ns"] == pre["t_start_ns"] and s.summary()["input_tokens"] == 3
