"""energyprof.measure.arch (module map) and energyprof.tiny (tiny random models, byte tokenizer)."""
from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from energyprof.measure.arch import ArchMap, describe, hook_targets
from energyprof.tiny import TINY_MODELS, ByteTokenizer, tiny_config, tiny_model

NAMES = sorted(TINY_MODELS)

_ATTN4 = {"attn", "q_proj", "k_proj", "v_proj", "o_proj"}
_LLAMA = _ATTN4 | {"mlp", "gate_proj", "up_proj", "down_proj", "input_norm", "post_attn_norm"}
_FUSED_NEOX = {"attn", "qkv_proj", "o_proj", "mlp", "up_proj", "down_proj"}

# name -> (arch, per-layer component set, n_kv_heads) for the tiny configs.
EXPECTED = {
    "tiny-llama": ("llama", _LLAMA, 2),
    "tiny-mistral": ("mistral", _LLAMA, 2),
    "tiny-qwen2": ("qwen2", _LLAMA, 2),
    "tiny-qwen3": ("qwen3", _LLAMA | {"q_norm", "k_norm"}, 2),
    "tiny-phi": ("phi", _ATTN4 | {"mlp", "up_proj", "down_proj", "input_norm"}, 2),
    "tiny-phi3": ("phi3", {"attn", "qkv_proj", "o_proj", "mlp", "gate_up_proj", "down_proj",
                           "input_norm", "post_attn_norm"}, 2),
    "tiny-gemma": ("gemma", _LLAMA, 2),
    "tiny-gpt2": ("gpt2", _FUSED_NEOX | {"input_norm", "post_attn_norm"}, 4),
    "tiny-gpt-neox": ("gpt_neox", _FUSED_NEOX | {"input_norm", "post_attn_norm"}, 4),
    "tiny-falcon": ("falcon", _FUSED_NEOX | {"input_norm"}, 1),  # parallel attn: one norm, MQA
    "tiny-mixtral": ("mixtral", _ATTN4 | {"mlp", "router", "input_norm", "post_attn_norm"}, 2),
}


def _expected_components(name: str, model: nn.Module) -> set[str]:
    comps = set(EXPECTED[name][1])
    if name == "tiny-mixtral":
        # transformers 5 fuses the experts into one module; 4.x keeps a ModuleList of experts.
        per_expert = [n for n, _ in model.named_modules() if n.startswith("model.layers.0.")
                      and n.rsplit(".", 2)[-2:-1] == ["experts"] and n.rsplit(".", 1)[-1].isdigit()]
        comps |= {f"expert.{i}" for i in range(len(per_expert))} if per_expert else {"experts"}
    return comps


def _build(name: str, **kw) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a tiny model must not trip a warning of ours
        return tiny_model(name, **kw)


def _mapping(amap: ArchMap) -> set[tuple[str, int, str]]:
    return {(r.qualname, r.layer, r.component) for r in hook_targets(amap, "standard")}


@pytest.mark.parametrize("name", NAMES)
def test_describe_finds_layers_and_exact_components(name):
    model = _build(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        amap = describe(model)
    arch, comps, _ = EXPECTED[name]
    assert amap.arch == arch and not amap.generic and amap.warnings == []
    assert amap.top is model
    n_layers = model.config.num_hidden_layers
    assert [r.layer for r in amap.layers] == list(range(n_layers))
    assert all(r.component == "layer" for r in amap.layers)
    modules = dict(model.named_modules())
    for ref in hook_targets(amap, "standard"):
        assert modules[ref.qualname] is ref.module  # qualname really addresses the module
    # Independent oracle: transformers lists its decoder-layer class in _no_split_modules.
    blocks = [m for m in model.modules() if type(m).__name__ in model._no_split_modules]
    assert len(blocks) == n_layers and [r.module for r in amap.layers] == blocks
    expected = _expected_components(name, model)
    for i in range(n_layers):
        got = [r.component for r in amap.by_layer(i)]
        assert len(got) == len(set(got)), f"duplicate component in layer {i}: {got}"
        assert set(got) == expected
        assert all(r.qualname.startswith(amap.layers[i].qualname + ".") for r in amap.by_layer(i))
    assert sorted(r.component for r in amap.model_level) == ["embed", "final_norm", "lm_head"]
    assert all(r.layer == -1 for r in amap.model_level)
    assert isinstance(next(r.module for r in amap.model_level if r.component == "embed"), nn.Embedding)


@pytest.mark.parametrize("name", NAMES)
def test_every_mapped_module_runs_once_per_forward(name):
    model = _build(name)
    amap = describe(model)
    targets = hook_targets(amap, "standard")
    calls: Counter = Counter()
    handles = [model.register_forward_hook(lambda *_: calls.__setitem__("<top>", calls["<top>"] + 1))]
    for ref in targets:
        handles.append(ref.module.register_forward_hook(
            lambda *_, q=ref.qualname: calls.__setitem__(q, calls[q] + 1)))
    tok = ByteTokenizer()
    inputs = tok(["energy", "hi"], return_tensors="pt")
    try:
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    finally:
        for h in handles:
            h.remove()
    # Tiny configs have no EOS: prefill + 2 decode steps, 3 new tokens per row.
    assert out.shape == (2, inputs["input_ids"].shape[1] + 3)
    assert calls["<top>"] == 3
    for ref in targets:
        if ref.component.startswith("expert."):
            continue  # a separate expert only runs when the router picks it
        assert calls[ref.qualname] >= calls["<top>"], (ref.qualname, calls[ref.qualname])
    experts = [r for r in targets if r.component.startswith("expert.")]
    if experts:
        assert sum(calls[r.qualname] for r in experts) >= calls["<top>"]


@pytest.mark.parametrize("name", NAMES)
def test_config_summary(name):
    model = _build(name)
    cfg = describe(model).config
    assert cfg["n_params"] == sum(p.numel() for p in model.parameters())
    assert cfg["n_layers"] == 2 and cfg["hidden_size"] == 64 and cfg["n_heads"] == 4
    assert cfg["n_kv_heads"] == EXPECTED[name][2]
    assert cfg["intermediate_size"] == 128 and cfg["vocab_size"] == 320
    assert cfg["dtype"] == "float32" and cfg["name_or_path"] == name
    moe = name == "tiny-mixtral"
    assert (cfg["n_experts"], cfg["experts_per_token"]) == ((4, 2) if moe else (0, 0))


def test_n_params_against_llama_formula():
    h, inter, vocab, layers, heads, kv = 96, 160, 300, 3, 4, 2
    model = _build("tiny-llama", hidden_size=h, intermediate_size=inter, vocab_size=vocab,
                   n_layers=layers, n_heads=heads, n_kv_heads=kv)
    kv_dim = h // heads * kv
    per_layer = (h * h) * 2 + 2 * h * kv_dim + 3 * h * inter + 2 * h  # q,o + k,v + mlp + 2 RMSNorms
    tied = model.config.tie_word_embeddings
    expected = vocab * h * (1 if tied else 2) + layers * per_layer + h
    assert describe(model).config["n_params"] == expected


@pytest.mark.parametrize("name", NAMES)
def test_generic_fallback_agrees_with_tables(name):
    model = _build(name)
    table = describe(model)
    with pytest.warns(UserWarning, match=r"found 2 blocks of \w+"):
        generic = describe(model, use_tables=False)
    assert generic.generic and generic.arch == "generic"
    assert _mapping(generic) == _mapping(table)


class _Attn(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        a = torch.softmax(self.wq(x) @ self.wk(x).transpose(-1, -2), dim=-1)
        return self.wo(a @ self.wv(x))


class _FFN(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm1, self.attention, self.norm2, self.feed_forward = nn.LayerNorm(d), _Attn(d), nn.LayerNorm(d), _FFN(d)

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.feed_forward(self.norm2(x))


class _ToyLM(nn.Module):
    def __init__(self, d=16, vocab=50, n=3):
        super().__init__()
        self.tok_embeddings = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(_Block(d) for _ in range(n))
        self.final = nn.LayerNorm(d)
        self.output = nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        x = self.tok_embeddings(ids)
        for b in self.blocks:
            x = b(x)
        return self.output(self.final(x))


def test_generic_fallback_on_unknown_model_warns_and_maps():
    model = _ToyLM()
    with pytest.warns(UserWarning, match=r"3 blocks of _Block at 'blocks'.*recognised components") as rec:
        amap = describe(model)
    assert amap.generic and amap.arch == "generic" and amap.model_type == "_ToyLM"
    assert amap.warnings and amap.warnings[0] in [str(w.message) for w in rec]
    assert [r.qualname for r in amap.layers] == ["blocks.0", "blocks.1", "blocks.2"]
    by = {(r.layer, r.qualname.split(".", 2)[2]): r.component for r in amap.components}
    assert by == {(i, k): v for i in range(3) for k, v in {
        "norm1": "input_norm", "attention": "attn", "attention.wq": "q_proj", "attention.wk": "k_proj",
        "attention.wv": "v_proj", "attention.wo": "o_proj", "norm2": "post_attn_norm",
        "feed_forward": "mlp", "feed_forward.fc1": "up_proj", "feed_forward.fc2": "down_proj"}.items()}
    assert {r.qualname: r.component for r in amap.model_level} == {
        "tok_embeddings": "embed", "final": "final_norm", "output": "lm_head"}
    assert amap.config["n_layers"] == 3 and amap.config["hidden_size"] == 16
    assert amap.config["vocab_size"] == 50 and amap.config["n_params"] == sum(p.numel() for p in model.parameters())
    called: set = set()
    hs = [r.module.register_forward_hook(lambda *_, q=r.qualname: called.add(q))
          for r in hook_targets(amap, "deep")]
    model(torch.tensor([[1, 2, 3]]))
    for h in hs:
        h.remove()
    assert called == {r.qualname for r in hook_targets(amap, "deep")}


def test_generic_fallback_without_repeated_blocks():
    with pytest.warns(UserWarning, match="no repeated blocks"):
        amap = describe(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    assert amap.layers == [] and amap.components == [] and amap.generic


class _LegacyMoE(nn.Module):
    """transformers 4.x Mixtral layout: block_sparse_moe.gate + a ModuleList of expert MLPs."""

    def __init__(self, d=8, n_experts=3):
        super().__init__()
        self.gate = nn.Linear(d, n_experts, bias=False)
        self.experts = nn.ModuleList(_FFN(d) for _ in range(n_experts))


class _LegacyLayer(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.self_attn = _Attn(d)
        self.block_sparse_moe = _LegacyMoE(d)
        self.input_layernorm, self.post_attention_layernorm = nn.LayerNorm(d), nn.LayerNorm(d)


class _LegacyMixtral(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = type("Cfg", (), {"model_type": "mixtral", "num_local_experts": 3,
                                       "num_experts_per_tok": 2, "hidden_size": 8})()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(20, 8)
        self.model.layers = nn.ModuleList(_LegacyLayer() for _ in range(2))
        self.model.norm = nn.LayerNorm(8)
        self.lm_head = nn.Linear(8, 20)


def test_mixtral_separate_experts_get_one_ref_each():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        amap = describe(_LegacyMixtral())
    assert amap.arch == "mixtral" and not amap.generic
    comps = {r.component: r.qualname for r in amap.by_layer(1)}
    assert comps["mlp"] == "model.layers.1.block_sparse_moe"
    assert comps["router"] == "model.layers.1.block_sparse_moe.gate"
    assert [comps[f"expert.{i}"] for i in range(3)] == [f"model.layers.1.block_sparse_moe.experts.{i}"
                                                        for i in range(3)]
    assert "experts" not in comps  # the ModuleList itself is never called, so never hooked
    assert (amap.config["n_experts"], amap.config["experts_per_token"]) == (3, 2)


def test_describe_rejects_non_modules():
    for bad in (None, "tiny-llama", {"a": 1}, torch.zeros(3)):
        with pytest.raises(TypeError, match="torch.nn.Module"):
            describe(bad)


def test_hook_targets_modes():
    amap = describe(_build("tiny-qwen3"))
    assert hook_targets(amap, "minimal") == []
    std = hook_targets(amap, "standard")
    assert std == amap.layers + amap.components + amap.model_level
    assert hook_targets(amap, "deep") == std
    assert len({id(r.module) for r in std}) == len(std)  # no module hooked twice
    with pytest.raises(ValueError, match="minimal, standard, deep"):
        hook_targets(amap, "everything")


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_weights(name):
    before = torch.get_rng_state()
    a, b, c = _build(name, seed=3), _build(name, seed=3), _build(name, seed=4)
    assert torch.equal(torch.get_rng_state(), before)  # building leaves the caller's RNG alone
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    assert not a.training


def test_tiny_overrides_map_generic_names():
    cfg = tiny_config("tiny-gpt2", n_layers=3, hidden_size=96, n_heads=6, intermediate_size=200)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_inner) == (3, 96, 6, 200)
    cfg = tiny_config("tiny-falcon", num_hidden_layers=4, intermediate_size=256)
    assert (cfg.num_hidden_layers, cfg.ffn_hidden_size) == (4, 256)
    cfg = tiny_config("tiny-qwen3", hidden_size=128, n_heads=8)
    assert cfg.head_dim == 16  # follows hidden/heads, not qwen3's default of 128
    cfg = tiny_config("tiny-mixtral", n_experts=8, experts_per_token=1)
    assert (cfg.num_local_experts, cfg.num_experts_per_tok) == (8, 1)
    amap = describe(_build("tiny-llama", n_layers=5, hidden_size=32))
    assert len(amap.layers) == 5 and amap.config["hidden_size"] == 32
    assert str(describe(_build("tiny-phi", dtype="bfloat16")).config["dtype"]) == "bfloat16"


def test_tiny_bad_names():
    with pytest.raises(ValueError, match="tiny-llama.*tiny-qwen3|tiny-gpt2.*tiny-llama"):
        tiny_model("tiny-bert")
    with pytest.raises(ValueError, match="no field 'no_such_field'"):
        tiny_config("tiny-llama", no_such_field=1)
    with pytest.raises(ValueError, match="n_kv_heads"):
        tiny_config("tiny-gpt2", n_kv_heads=2)
    with pytest.raises(ValueError, match="n_experts"):
        tiny_config("tiny-llama", n_experts=4)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40))
def test_byte_tokenizer_roundtrip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == [b + 3 for b in text.encode("utf-8")]  # oracle: the UTF-8 bytes themselves
    assert all(3 <= i < 259 for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode([0, 1, 2] + ids + [300, 319]) == text  # specials and spare ids dropped


def test_byte_tokenizer_batch_left_padding():
    tok = ByteTokenizer()
    enc = tok(["ab", "", "wxyz"], return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.dtype == torch.long and ids.shape == mask.shape == (3, 4)
    assert ids.tolist() == [[0, 0, 100, 101], [0, 0, 0, 1], [122, 123, 124, 125]]
    assert mask.tolist() == [[0, 0, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]]
    assert tok.batch_decode(ids) == ["ab", "", "wxyz"]
    single = tok("hé")
    assert single == {"input_ids": [107, 198, 172], "attention_mask": [1, 1, 1]}
    npy = tok(["a", "bc"], return_tensors="np")
    assert isinstance(npy["input_ids"], np.ndarray) and npy["input_ids"].tolist() == [[0, 100], [101, 102]]
    assert ByteTokenizer(add_bos=True).encode("a") == [1, 100]
    with pytest.raises(ValueError):
        tok("a", return_tensors="tf")
    with pytest.raises(ValueError):
        ByteTokenizer(vocab_size=200)


def test_left_padded_batch_generates_like_single_rows():
    model, tok = _build("tiny-llama"), ByteTokenizer()
    batch = tok(["a longer prompt", "hi"], return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    for row, text in enumerate(["a longer prompt", "hi"]):
        one = tok(text, return_tensors="pt")
        ref = model.generate(**one, max_new_tokens=4, do_sample=False)
        assert torch.equal(out[row, -4:], ref[0, -4:])


def _unknown_configs():
    import transformers as T

    common = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=320, pad_token_id=0,
                  bos_token_id=1, eos_token_id=None)  # no EOS: always 3 forwards
    out = {"opt": lambda: T.OPTConfig(ffn_dim=128, word_embed_proj_dim=64, **common)}
    if hasattr(T, "Qwen3MoeConfig"):  # transformers >= 4.51
        out["qwen3_moe"] = lambda: T.Qwen3MoeConfig(
            num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2,
            moe_intermediate_size=32, intermediate_size=128, **common)
    return out


# Real transformers architectures without a table: what the generic fallback must recover.
UNKNOWN_EXPECTED = {
    "opt": ({"attn", "q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj",
             "input_norm", "post_attn_norm"}, "model.decoder.layers", 0),
    "qwen3_moe": ({"attn", "q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm", "mlp",
                   "router", "input_norm", "post_attn_norm"}, "model.layers", 4),
}


@pytest.mark.parametrize("kind", sorted(_unknown_configs()))
def test_generic_fallback_on_real_untabled_architectures(kind):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_unknown_configs()[kind]()).eval()
    with pytest.warns(UserWarning, match=rf"generic fallback for '{kind}': found 2 blocks"):
        amap = describe(model)
    comps, layers_at, n_experts = UNKNOWN_EXPECTED[kind]
    if n_experts:
        fused = not any(n.endswith("experts.0") for n, _ in model.named_modules())
        comps = comps | ({"experts"} if fused else {f"expert.{i}" for i in range(n_experts)})
    assert amap.arch == "generic" and [r.qualname for r in amap.layers] == [f"{layers_at}.{i}" for i in range(2)]
    assert {r.component for r in amap.by_layer(0)} == comps
    assert sorted(r.component for r in amap.model_level) == ["embed", "final_norm", "lm_head"]
    assert amap.config["n_experts"] == n_experts
    calls: Counter = Counter()
    targets = hook_targets(amap, "standard")
    hs = [r.module.register_forward_hook(lambda *_, q=r.qualname: calls.__setitem__(q, calls[q] + 1))
          for r in targets]
    model.generate(torch.tensor([[5, 6, 7]]), attention_mask=torch.ones(1, 3, dtype=torch.long),
                   max_new_tokens=3, do_sample=False)
    for h in hs:
        h.remove()
    assert all(calls[r.qualname] >= 3 for r in targets if not r.component.startswith("expert."))


def test_describe_again_follows_changes_to_the_model():
    """describe() remembers its map per model (ep.run's enter): a second call on the same
    tree gives the same map, a changed tree or dtype is seen, and the memory never keeps
    the model alive.  Oracle: a fresh describe() of an identical model built apart."""
    import gc
    import weakref

    model = tiny_model("tiny-llama")
    first = describe(model)
    again = describe(model)
    assert again.top is model
    assert [(r.qualname, r.component, r.module) for r in again.components] == \
        [(r.qualname, r.component, r.module) for r in first.components]
    assert again.config == describe(tiny_model("tiny-llama")).config
    # a replaced module is mapped, not the old one
    old_mlp = model.model.layers[0].mlp
    model.model.layers[0].mlp = type(old_mlp)(model.config)
    after = describe(model)
    mlp0 = next(r.module for r in after.components if r.layer == 0 and r.component == "mlp")
    assert mlp0 is model.model.layers[0].mlp and mlp0 is not old_mlp
    # the config summary is read afresh: same tree, new dtype
    model.to(torch.float64)
    assert describe(model).config["dtype"] == "float64"
    ref = weakref.ref(model)
    del model, first, again, after, mlp0
    gc.collect()
    assert ref() is None


def test_module_tree_against_a_hand_written_key_and_its_twin():
    """_core.module_tree against the key written out by hand for a small tree (a module
    shared by two parents is walked once, a None child is kept, a tied parameter counted
    once), and against its pure-Python twin on every tiny model."""
    from energyprof import _core, _reference

    shared = nn.Linear(3, 2)                    # 6 + 2 parameters
    inner = nn.Sequential(shared, nn.ReLU())
    root = nn.Module()
    root.a = inner
    root.b = shared                             # reached again: not walked twice
    root.register_module("c", None)         # a None child
    root.d = nn.Linear(2, 2, bias=False)        # 4 parameters
    root.d.weight = nn.Parameter(torch.zeros(2, 2))
    root.e = nn.Linear(2, 2, bias=False)
    root.e.weight = root.d.weight               # tied: counted once
    key, n_params, pinned = _core.module_tree(root)
    want = (nn.Module, "a", id(inner), "b", id(shared), "c", None, "d", id(root.d), "e", id(root.e),
            nn.Sequential, "0", id(shared), "1", id(inner[1]),
            nn.Linear,                          # shared, first reached through a.0
            nn.ReLU,
            nn.Linear,                          # d
            nn.Linear)                          # e
    assert key == want
    assert n_params == 6 + 2 + 4
    assert [id(m) for m in pinned] == [id(inner), id(shared), id(inner[1]), id(root.d), id(root.e)] == \
        [id(m) for m in root.modules()][1:]
    for name in TINY_MODELS:
        model = tiny_model(name)
        c, ref = _core.module_tree(model), _reference.module_tree(model)
        assert c[0] == ref[0] and c[1] == ref[1] == sum(p.numel() for p in model.parameters())
        assert [id(m) for m in c[2]] == [id(m) for m in ref[2]]
        assert [id(m) for m in c[2]] == [id(m) for m in model.modules()][1:]   # named_modules() order
    with pytest.raises(AttributeError):
        _core.module_tree(object())


def test_describe_again_sees_changes_that_skip_setattr():
    """describe()'s memory is keyed on the tree walked afresh each time: a layer deleted from
    the ModuleList (no registration hook sees that), a component swapped through
    ``_modules`` directly, and a parameter resized in place (same object, new size) are all
    seen.  Oracle: a fresh describe() of a model built apart with the same change, and the
    parameter count summed by hand."""
    model = tiny_model("tiny-llama")
    n_layers = len(model.model.layers)
    describe(model)
    del model.model.layers[-1]
    after = describe(model)
    assert len(after.layers) == n_layers - 1
    apart = tiny_model("tiny-llama")
    del apart.model.layers[-1]
    assert [(r.qualname, r.component) for r in after.components] == \
        [(r.qualname, r.component) for r in describe(apart).components]
    old_q = model.model.layers[0].self_attn.q_proj
    new_q = nn.Linear(old_q.in_features, old_q.out_features, bias=False)
    model.model.layers[0].self_attn._modules["q_proj"] = new_q
    q0 = next(r.module for r in describe(model).components if r.layer == 0 and r.component == "q_proj")
    assert q0 is new_q
    w = model.model.norm.weight
    before = describe(model).config["n_params"]
    w.data = torch.ones(w.numel() + 5)
    assert describe(model).config["n_params"] == before + 5 == sum(p.numel() for p in model.parameters())
