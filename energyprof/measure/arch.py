"""Which modules of a transformer to hook: architecture detection and module mapping.

``describe(model)`` returns an :class:`ArchMap`: the decoder layers in order, their
components under canonical names ("q_proj", "mlp", "input_norm", ...) and the model-level
modules (embedding, final norm, LM head). The session hooks ``hook_targets(amap, mode)``.

The mapping is table-driven: each known architecture has one dict from a module's dotted
path *inside a decoder layer* to its canonical component name, plus candidate paths for the
model-level modules. Anything else falls back to a generic search (the largest
``nn.ModuleList`` of identical blocks, children classified by type and name) and warns.

>>> from energyprof.tiny import tiny_model
>>> amap = describe(tiny_model("tiny-llama"))
>>> amap.arch, len(amap.layers), sorted({c.component for c in amap.components})[:3]
('llama', 2, ['attn', 'down_proj', 'gate_proj'])
"""
from __future__ import annotations

import dataclasses
import re
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from .. import _core
from .._hfconfig import attention_kind, config_value, single_kv_head

__all__ = [
    "ModuleRef",
    "ArchMap",
    "describe",
    "hook_targets",
    "COMPONENTS",
    "ARCH_TABLES",
    "MODES",
    "MODEL_KINDS",
]

#: Every canonical component name a ModuleRef can carry ("expert.N" stands for expert.0, expert.1, ...).
COMPONENTS: tuple[str, ...] = (
    "layer", "attn", "q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj",
    "mlp", "gate_proj", "up_proj", "gate_up_proj", "down_proj",
    "input_norm", "post_attn_norm", "pre_ffn_norm", "post_ffn_norm", "q_norm", "k_norm",
    "router", "experts", "expert.N", "embed", "final_norm", "lm_head",
    # encoders (BERT family: post-norm) and encoder-decoders (T5 family: cross-attention)
    "post_ffn_norm", "cross_attn", "cross_q_proj", "cross_k_proj", "cross_v_proj", "cross_o_proj",
    "cross_attn_norm", "embed_norm", "encoder_final_norm", "pooler",
)

#: What a model is: a causal decoder, an encoder alone (BERT) or an encoder with a decoder (T5).
MODEL_KINDS: tuple[str, ...] = ("decoder", "encoder", "encoder-decoder")

#: Hook modes understood by :func:`hook_targets`.
MODES: tuple[str, ...] = ("minimal", "standard", "deep")


@dataclass(eq=False)
class ModuleRef:
    """One module to hook: where it is, which decoder layer it belongs to, what it is."""

    qualname: str  # dotted path inside the model, "" for the model itself
    module: nn.Module = field(repr=False)
    layer: int  # decoder layer index, -1 for model-level modules
    component: str  # canonical name from COMPONENTS


@dataclass(eq=False)
class ArchMap:
    """The hookable structure of one model, as found by :func:`describe`."""

    arch: str
    model_type: str
    top: nn.Module = field(repr=False)
    layers: list[ModuleRef]
    components: list[ModuleRef]
    model_level: list[ModuleRef]
    config: dict[str, Any]
    generic: bool
    warnings: list[str]
    kind: str = "decoder"                       # one of MODEL_KINDS
    encoder: Optional[ModuleRef] = None         # encoder-decoder: the encoder stack (its calls are `encode`)
    stacks: dict[str, tuple[int, int]] = field(default_factory=dict)   # stack -> (first layer, n layers)

    def component_names(self) -> list[str]:
        """Distinct per-layer component names, in the order they first appear."""
        seen: dict[str, None] = {}
        for ref in self.components:
            seen.setdefault(ref.component, None)
        return list(seen)

    def by_layer(self, layer: int) -> list[ModuleRef]:
        """The components of one decoder layer, in module order."""
        return [ref for ref in self.components if ref.layer == layer]


@dataclass(frozen=True)
class _ArchTable:
    layers_attr: tuple[str, ...]  # attribute name(s) of the decoder-layer ModuleList
    layer: dict[str, str]  # path inside a decoder layer -> component; "*" matches an expert index
    embed: tuple[str, ...]  # candidate paths, relative to the layers' parent, then to the top
    final_norm: tuple[str, ...]
    lm_head: tuple[str, ...]
    kind: str = "decoder"  # "encoder": an encoder-only family (unless config.is_decoder)
    # Two-stack models: (stack, dotted path of its block list, layer table), encoder first.
    # Layers are numbered through both stacks (the decoder's first layer follows the encoder's last).
    stacks: tuple[tuple[str, str, dict[str, str]], ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()  # more model-level modules: (component, paths)


_LLAMA_ATTN = {
    "self_attn": "attn",
    "self_attn.q_proj": "q_proj",
    "self_attn.k_proj": "k_proj",
    "self_attn.v_proj": "v_proj",
    "self_attn.o_proj": "o_proj",
}
_LLAMA_MLP = {
    "mlp": "mlp",
    "mlp.gate_proj": "gate_proj",
    "mlp.up_proj": "up_proj",
    "mlp.down_proj": "down_proj",
}
_LLAMA_NORMS = {
    "input_layernorm": "input_norm",
    "post_attention_layernorm": "post_attn_norm",
}
_LLAMA_LIKE = {**_LLAMA_ATTN, **_LLAMA_MLP, **_LLAMA_NORMS}


def _llama_family(layer: dict[str, str]) -> _ArchTable:
    return _ArchTable(
        layers_attr=("layers",),
        layer=layer,
        embed=("embed_tokens",),
        final_norm=("norm",),
        lm_head=("lm_head",),
    )


# BERT family (post-norm encoder): the attention block's output LayerNorm follows attention,
# the output LayerNorm follows the MLP (intermediate.dense up, output.dense down).
_BERT_LAYER = {
    "attention": "attn",
    "attention.self.query": "q_proj",
    "attention.self.key": "k_proj",
    "attention.self.value": "v_proj",
    "attention.output.dense": "o_proj",
    "attention.output.LayerNorm": "post_attn_norm",
    "intermediate.dense": "up_proj",
    "output.dense": "down_proj",
    "output.LayerNorm": "post_ffn_norm",
}
# T5 family: block.N.layer.0 = self-attention, (decoder) layer.1 = cross-attention, last = MLP.
_T5_SELF = {
    "layer.0.SelfAttention": "attn",
    "layer.0.SelfAttention.q": "q_proj",
    "layer.0.SelfAttention.k": "k_proj",
    "layer.0.SelfAttention.v": "v_proj",
    "layer.0.SelfAttention.o": "o_proj",
    "layer.0.layer_norm": "input_norm",
}


def _t5_mlp(i: int) -> dict[str, str]:
    return {
        f"layer.{i}.DenseReluDense": "mlp",
        f"layer.{i}.DenseReluDense.wi": "up_proj",        # T5DenseActDense
        f"layer.{i}.DenseReluDense.wi_0": "gate_proj",    # T5DenseGatedActDense (t5 v1.1, flan-t5)
        f"layer.{i}.DenseReluDense.wi_1": "up_proj",
        f"layer.{i}.DenseReluDense.wo": "down_proj",
        f"layer.{i}.layer_norm": "post_attn_norm",
    }


_T5_ENCODER = {**_T5_SELF, **_t5_mlp(1)}
_T5_DECODER = {
    **_T5_SELF,
    "layer.1.EncDecAttention": "cross_attn",
    "layer.1.EncDecAttention.q": "cross_q_proj",
    "layer.1.EncDecAttention.k": "cross_k_proj",
    "layer.1.EncDecAttention.v": "cross_v_proj",
    "layer.1.EncDecAttention.o": "cross_o_proj",
    "layer.1.layer_norm": "cross_attn_norm",
    **_t5_mlp(2),
}

#: One table per architecture. Paths that a given transformers version lacks are simply not found.
ARCH_TABLES: dict[str, _ArchTable] = {
    "llama": _llama_family(dict(_LLAMA_LIKE)),
    "mistral": _llama_family(dict(_LLAMA_LIKE)),
    "qwen2": _llama_family(dict(_LLAMA_LIKE)),
    "qwen3": _llama_family({
        **_LLAMA_ATTN,
        "self_attn.q_norm": "q_norm",
        "self_attn.k_norm": "k_norm",
        **_LLAMA_MLP,
        **_LLAMA_NORMS,
    }),
    # gemma2/gemma3 add the sandwich norms around the MLP and (gemma3) q/k norms.
    "gemma": _llama_family({
        **_LLAMA_ATTN,
        "self_attn.q_norm": "q_norm",
        "self_attn.k_norm": "k_norm",
        **_LLAMA_MLP,
        **_LLAMA_NORMS,
        "pre_feedforward_layernorm": "pre_ffn_norm",
        "post_feedforward_layernorm": "post_ffn_norm",
    }),
    "phi": _ArchTable(
        layers_attr=("layers",),
        layer={
            "self_attn": "attn",
            "self_attn.q_proj": "q_proj",
            "self_attn.k_proj": "k_proj",
            "self_attn.v_proj": "v_proj",
            "self_attn.dense": "o_proj",
            "self_attn.q_layernorm": "q_norm",
            "self_attn.k_layernorm": "k_norm",
            "mlp": "mlp",
            "mlp.fc1": "up_proj",
            "mlp.fc2": "down_proj",
            "input_layernorm": "input_norm",
        },
        embed=("embed_tokens",),
        final_norm=("final_layernorm",),
        lm_head=("lm_head",),
    ),
    "phi3": _llama_family({
        "self_attn": "attn",
        "self_attn.qkv_proj": "qkv_proj",
        "self_attn.o_proj": "o_proj",
        "mlp": "mlp",
        "mlp.gate_up_proj": "gate_up_proj",
        "mlp.down_proj": "down_proj",
        **_LLAMA_NORMS,
    }),
    "gpt2": _ArchTable(
        layers_attr=("h",),
        layer={
            "ln_1": "input_norm",
            "attn": "attn",
            "attn.c_attn": "qkv_proj",
            "attn.c_proj": "o_proj",
            "ln_2": "post_attn_norm",
            "mlp": "mlp",
            "mlp.c_fc": "up_proj",
            "mlp.c_proj": "down_proj",
        },
        embed=("wte",),
        final_norm=("ln_f",),
        lm_head=("lm_head",),
    ),
    "gpt_neox": _ArchTable(
        layers_attr=("layers",),
        layer={
            "input_layernorm": "input_norm",
            "post_attention_layernorm": "post_attn_norm",
            "attention": "attn",
            "attention.query_key_value": "qkv_proj",
            "attention.dense": "o_proj",
            "mlp": "mlp",
            "mlp.dense_h_to_4h": "up_proj",
            "mlp.dense_4h_to_h": "down_proj",
        },
        embed=("embed_in",),
        final_norm=("final_layer_norm",),
        lm_head=("lm_head", "embed_out"),  # transformers 4.x calls the head embed_out
    ),
    "falcon": _ArchTable(
        layers_attr=("h",),
        layer={
            "self_attention": "attn",
            "self_attention.query_key_value": "qkv_proj",
            "self_attention.dense": "o_proj",
            "mlp": "mlp",
            "mlp.dense_h_to_4h": "up_proj",
            "mlp.dense_4h_to_h": "down_proj",
            "input_layernorm": "input_norm",
            "post_attention_layernorm": "post_attn_norm",  # only when parallel_attn=False
            "ln_attn": "input_norm",  # new_decoder_architecture: two parallel input norms
            "ln_mlp": "pre_ffn_norm",
        },
        embed=("word_embeddings",),
        final_norm=("ln_f",),
        lm_head=("lm_head",),
    ),
    "mixtral": _llama_family({
        **_LLAMA_ATTN,
        # transformers >= 5: mlp = MixtralSparseMoeBlock with a router and ONE fused experts module
        "mlp": "mlp",
        "mlp.gate": "router",
        "mlp.experts": "experts",
        # transformers 4.x: block_sparse_moe with a Linear gate and a ModuleList of expert MLPs
        "block_sparse_moe": "mlp",
        "block_sparse_moe.gate": "router",
        "block_sparse_moe.experts.*": "expert.{}",
        **_LLAMA_NORMS,
    }),
    "bert": _ArchTable(
        layers_attr=("layer",),
        layer=_BERT_LAYER,
        embed=("embeddings.word_embeddings", "word_embeddings"),
        final_norm=(),
        lm_head=("cls.predictions", "cls", "classifier", "qa_outputs", "lm_head"),
        kind="encoder",
        extra=(("embed_norm", ("embeddings.LayerNorm",)), ("pooler", ("pooler",))),
    ),
    "t5": _ArchTable(
        layers_attr=("block",),
        layer={},
        embed=("shared", "encoder.embed_tokens"),
        final_norm=("decoder.final_layer_norm",),
        lm_head=("lm_head",),
        stacks=(("encoder", "encoder.block", _T5_ENCODER), ("decoder", "decoder.block", _T5_DECODER)),
        extra=(("encoder_final_norm", ("encoder.final_layer_norm",)),),
    ),
}

#: config.model_type -> arch. Close relatives share a table.
_MODEL_TYPES: dict[str, str] = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "phi": "phi",
    "phi3": "phi3",
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3_text": "gemma",
    "gpt2": "gpt2",
    "gpt_neox": "gpt_neox",
    "falcon": "falcon",
    "RefinedWeb": "falcon",
    "RefinedWebModel": "falcon",
    "mixtral": "mixtral",
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "camembert": "bert",
    "electra": "bert",
    "t5": "t5",
    "mt5": "t5",
    "umt5": "t5",
}

#: Class-name prefixes for models without a config; the longest prefix wins (Qwen3 before Qwen, Phi3 before Phi).
_CLASS_PREFIXES: dict[str, str] = {
    "Llama": "llama", "Mistral": "mistral", "Qwen2": "qwen2", "Qwen3": "qwen3",
    "Phi3": "phi3", "Phi": "phi", "Gemma": "gemma", "GPT2": "gpt2", "GPTNeoX": "gpt_neox",
    "Falcon": "falcon", "Mixtral": "mixtral", "Bert": "bert", "Roberta": "bert", "T5": "t5",
}


# --------------------------------------------------------------------------- detection


def _model_type(model: nn.Module) -> str:
    cfg = getattr(model, "config", None)
    mt = getattr(cfg, "model_type", None)
    if isinstance(mt, str) and mt:
        return mt
    return type(model).__name__


def _detect_arch(model: nn.Module, model_type: str) -> Optional[str]:
    if model_type in _MODEL_TYPES:
        return _MODEL_TYPES[model_type]
    if isinstance(getattr(getattr(model, "config", None), "model_type", None), str):
        # A config that names another type (qwen3_moe, olmo2, ...) is a different layout even
        # when the class name starts like a known one: let the generic fallback look at it.
        return None
    name = type(model).__name__
    best: Optional[str] = None
    best_len = 0
    for prefix, arch in _CLASS_PREFIXES.items():
        if name.startswith(prefix) and len(prefix) > best_len:
            best, best_len = arch, len(prefix)
    return best


def _is_container(mod: nn.Module) -> bool:
    # ModuleList/ModuleDict are never called themselves, so a hook on them would never fire.
    return isinstance(mod, (nn.ModuleList, nn.ModuleDict))


def _block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Outermost ModuleLists whose children are all of one class (candidate decoder stacks)."""
    found: list[tuple[str, nn.ModuleList]] = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        classes = {type(child) for child in mod}
        if len(classes) != 1 or _is_container(mod[0]):
            continue
        found.append((name, mod))
    # A MoE layer's expert list can be longer than the layer stack: keep only outermost lists.
    outer = [
        (name, mod) for name, mod in found
        if not any(other != name and (other == "" or name.startswith(other + "."))
                   for other, _ in found)
    ]
    return outer


def _n_params(mod: nn.Module) -> int:
    return sum(p.numel() for p in mod.parameters())


def _find_layers_generic(model: nn.Module) -> Optional[tuple[str, nn.ModuleList]]:
    lists = _block_lists(model)
    if not lists:
        return None
    # Most blocks first; on a tie the heavier stack (decoder, not a list of small heads).
    return max(lists, key=lambda item: (len(item[1]), _n_params(item[1])))


def _find_layers_table(model: nn.Module, table: _ArchTable) -> Optional[tuple[str, nn.ModuleList]]:
    best: Optional[tuple[str, nn.ModuleList]] = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if name.rsplit(".", 1)[-1] not in table.layers_attr:
            continue
        # The shallowest match is the decoder stack of the language model itself.
        if best is None or name.count(".") < best[0].count("."):
            best = (name, mod)
    return best


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _parent(qualname: str) -> str:
    return qualname.rsplit(".", 1)[0] if "." in qualname else ""


# --------------------------------------------------------------------------- table mapping


def _table_layer_components(
    layer_idx: int, layer_qual: str, block: nn.Module, table: dict[str, str]
) -> list[ModuleRef]:
    exact = {k: v for k, v in table.items() if "*" not in k}
    patterns = [
        (re.compile("^" + re.escape(k).replace(r"\*", r"(\d+)") + "$"), v)
        for k, v in table.items() if "*" in k
    ]
    refs: list[ModuleRef] = []
    for rel, mod in block.named_modules():
        if rel == "" or _is_container(mod):
            continue
        comp = exact.get(rel)
        if comp is None:
            for rx, template in patterns:
                m = rx.match(rel)
                if m:
                    comp = template.format(*m.groups())
                    break
        if comp is not None:
            refs.append(ModuleRef(_join(layer_qual, rel), mod, layer_idx, comp))
    return refs


def _lookup(model: nn.Module, modules: dict[str, nn.Module], base: str, names: tuple[str, ...]
            ) -> Optional[tuple[str, nn.Module]]:
    for name in names:
        for qual in (_join(base, name), name):
            mod = modules.get(qual)
            if mod is not None and mod is not model and not _is_container(mod):
                return qual, mod
    return None


def _table_model_level(model: nn.Module, base: str, table: _ArchTable) -> list[ModuleRef]:
    modules = dict(model.named_modules())
    refs: list[ModuleRef] = []
    for comp, names in (("embed", table.embed), ("final_norm", table.final_norm),
                        ("lm_head", table.lm_head), *table.extra):
        hit = _lookup(model, modules, base, names)
        if hit is not None:
            refs.append(ModuleRef(hit[0], hit[1], -1, comp))
    return refs


def _find_stack(model: nn.Module, path: str) -> Optional[tuple[str, nn.ModuleList]]:
    """The shallowest ModuleList whose dotted path ends with ``path`` (e.g. "encoder.block")."""
    best: Optional[tuple[str, nn.ModuleList]] = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) and (name == path or name.endswith("." + path)):
            if best is None or name.count(".") < best[0].count("."):
                best = (name, mod)
    return best


def _describe_stacks(model: nn.Module, table: _ArchTable):
    """Layers and components of a two-stack model, numbered through both stacks."""
    layers: list[ModuleRef] = []
    components: list[ModuleRef] = []
    stacks: dict[str, tuple[int, int]] = {}
    stack_quals: dict[str, str] = {}
    for stack, path, ltable in table.stacks:
        found = _find_stack(model, path)
        if found is None:
            continue
        lq, lst = found
        first = len(layers)
        for i, block in enumerate(lst):
            layers.append(ModuleRef(_join(lq, str(i)), block, first + i, "layer"))
            components += _table_layer_components(first + i, _join(lq, str(i)), block, ltable)
        stacks[stack] = (first, len(lst))
        stack_quals[stack] = _parent(lq)
    return layers, components, stacks, stack_quals


# --------------------------------------------------------------------------- generic mapping

_ATTN_RX = re.compile(r"(^|_)(self_?attn|self_?attention|attn|attention|mixer)$", re.I)
_MLP_RX = re.compile(r"(^|_)(mlp|ffn|feed_?forward|moe|block_sparse_moe)$", re.I)

# Leaf name patterns (matched on the last path element, lower case), first match wins.
# Fused patterns come before their parts so "qkv_proj" is not read as "q_proj".
_LEAF_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"^(qkv(_proj)?|wqkv|c_attn|query_key_value|in_proj)$", "qkv_proj"),
    (r"^(gate_up(_proj)?|w13)$", "gate_up_proj"),
    (r"^(q_proj|query|q|wq|q_lin)$", "q_proj"),
    (r"^(k_proj|key|k|wk|k_lin)$", "k_proj"),
    (r"^(v_proj|value|v|wv|v_lin)$", "v_proj"),
    (r"^(o_proj|out_proj|wo|out_lin|dense|c_proj|proj|o)$", "@proj_out"),
    (r"^(gate_proj|w1|gate)$", "@gate"),
    (r"^(up_proj|fc1|c_fc|fc_in|dense_h_to_4h|w3|lin1|wi)$", "up_proj"),
    (r"^(down_proj|fc2|fc_out|dense_4h_to_h|w2|lin2)$", "down_proj"),
    (r"^(router|gating)$", "router"),
)
_NORM_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"^(q_norm|q_layernorm|q_ln)$", "q_norm"),
    (r"^(k_norm|k_layernorm|k_ln)$", "k_norm"),
    (r"pre_?(feed_?forward|ffn|mlp)", "pre_ffn_norm"),
    (r"post_?(feed_?forward|ffn|mlp)", "post_ffn_norm"),
    (r"^(input_layernorm|ln_1|ln1|norm1|attention_norm|attn_norm|ln_attn|pre_attn_norm|"
     r"input_norm|norm_1|layer_norm1|sa_layer_norm|self_attn_layer_norm|attention_layernorm)$",
     "input_norm"),
    # OPT/BART call the pre-MLP norm inside a layer "final_layer_norm".
    (r"^(post_attention_layernorm|ln_2|ln2|norm2|ffn_norm|ln_mlp|post_attn_norm|norm_2|"
     r"layer_norm2|output_layer_norm|final_layer_norm|ffn_layer_norm|mlp_layernorm)$",
     "post_attn_norm"),
)


def _is_norm(mod: nn.Module) -> bool:
    if isinstance(mod, (nn.LayerNorm, nn.GroupNorm)) or "RMSNorm" in type(mod).__name__:
        return True
    return "norm" in type(mod).__name__.lower() and not list(mod.children())


def _is_linear_like(mod: nn.Module) -> bool:
    """A leaf with a 2-D weight (nn.Linear, HF's Conv1D, FalconLinear, quantised linears)."""
    if isinstance(mod, nn.Embedding) or list(mod.children()):
        return False
    w = getattr(mod, "weight", None)
    return isinstance(w, torch.Tensor) and w.dim() == 2


def _classify_leaf(rel: str, mod: nn.Module, in_attn: bool, in_mlp: bool) -> Optional[str]:
    last = rel.rsplit(".", 1)[-1].lower()
    if _is_norm(mod):
        for rx, comp in _NORM_PATTERNS:
            if re.search(rx, last):
                return comp
        return None
    if not _is_linear_like(mod):
        return None
    for rx, comp in _LEAF_PATTERNS:
        if not re.search(rx, last):
            continue
        if comp == "@proj_out":
            # "dense"/"c_proj" mean the attention output in attention and the down projection in an MLP.
            if in_attn:
                return "o_proj"
            if in_mlp:
                return "down_proj"
            return None
        if comp == "@gate":
            # A "gate" whose output width is tiny compared with its input is a MoE router.
            out_f = mod.weight.shape[0]
            if last in ("gate", "router") and out_f < mod.weight.shape[1] // 2 and out_f <= 256:
                return "router"
            return "gate_proj"
        return comp
    return None


def _bert_like(rel: str, mod: nn.Module, in_attn: bool) -> Optional[str]:
    """BERT-style post-norm blocks have no MLP module: ``intermediate.dense`` (up) and
    ``output.dense`` (down) sit beside the attention, each sub-block ends in its own LayerNorm."""
    if rel == "intermediate.dense" and _is_linear_like(mod):
        return "up_proj"
    if rel == "output.dense" and _is_linear_like(mod):
        return "down_proj"
    if _is_norm(mod) and rel.lower().endswith("output.layernorm"):
        return "post_attn_norm" if in_attn else "post_ffn_norm"
    return None


def _generic_layer_components(layer_idx: int, layer_qual: str, block: nn.Module) -> list[ModuleRef]:
    refs: list[ModuleRef] = []
    taken: set[str] = set()
    attn_rel: Optional[str] = None
    mlp_rel: Optional[str] = None
    for rel, mod in block.named_modules():
        if rel == "" or _is_container(mod):
            continue
        last = rel.rsplit(".", 1)[-1]
        inside_attn = attn_rel is not None and rel.startswith(attn_rel + ".")
        inside_mlp = mlp_rel is not None and rel.startswith(mlp_rel + ".")
        comp: Optional[str] = None
        bert = _bert_like(rel, mod, inside_attn)
        if bert is not None:
            comp = bert
        elif inside_mlp and re.search(r"(^|\.)experts\.\d+$", rel):
            comp = "expert." + last
        elif inside_mlp and last == "experts":
            comp = "experts"  # every expert fused into one module (3-D weights)
        elif inside_mlp and ".experts." in rel:
            comp = None  # the linears inside one expert: the expert itself is the unit
        elif list(mod.children()):
            if attn_rel is None and not inside_mlp and _ATTN_RX.search(last):
                attn_rel, comp = rel, "attn"
            elif mlp_rel is None and not inside_attn and _MLP_RX.search(last):
                mlp_rel, comp = rel, "mlp"
        else:
            comp = _classify_leaf(rel, mod, inside_attn, inside_mlp)
        if comp is None or comp in taken:
            continue
        taken.add(comp)
        refs.append(ModuleRef(_join(layer_qual, rel), mod, layer_idx, comp))
    return refs


def _generic_model_level(model: nn.Module, layers_qual: str) -> list[ModuleRef]:
    outside = [
        (name, mod) for name, mod in model.named_modules()
        if name and name != layers_qual and not name.startswith(layers_qual + ".")
        and not _is_container(mod)
    ]
    refs: list[ModuleRef] = []
    names = [n for n, _ in model.named_modules()]
    layers_pos = names.index(layers_qual) if layers_qual in names else 0
    order = {n: i for i, n in enumerate(names)}

    embeds = [(n, m) for n, m in outside if isinstance(m, nn.Embedding)]
    embed = None
    for n, m in embeds:
        if re.search(r"(tok|word|wte|embed_tokens|embed_in)", n.rsplit(".", 1)[-1]):
            embed = (n, m)
            break
    if embed is None and embeds:
        embed = max(embeds, key=lambda item: item[1].num_embeddings)
    if embed is not None:
        refs.append(ModuleRef(embed[0], embed[1], -1, "embed"))

    norms = [(n, m) for n, m in outside if _is_norm(m)]
    # By name first: OPT registers its final norm before the layer list.
    named = [(n, m) for n, m in norms
             if re.search(r"^(final_layer_?norm|final_norm|ln_f|norm_f|norm|final_layernorm)$",
                          n.rsplit(".", 1)[-1])]
    after = [(n, m) for n, m in norms if order[n] > layers_pos]
    final = named[-1] if named else (after[0] if after else None)
    if final is not None:
        refs.append(ModuleRef(final[0], final[1], -1, "final_norm"))

    vocab = embed[1].num_embeddings if embed is not None else None
    heads = [
        (n, m) for n, m in outside if _is_linear_like(m) and order[n] > layers_pos
        and (re.search(r"(lm_head|embed_out|output|head)$", n) or
             (vocab is not None and m.weight.shape[0] == vocab))
    ]
    if heads:
        n, m = heads[-1]
        refs.append(ModuleRef(n, m, -1, "lm_head"))
    return refs


# --------------------------------------------------------------------------- config summary


def _config_summary(model: nn.Module, n_layers: int, model_level: list[ModuleRef], kind: str = "decoder",
                    stacks: Optional[dict[str, tuple[int, int]]] = None,
                    n_params: Optional[int] = None) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    hidden = config_value(cfg, "hidden_size")
    n_heads = config_value(cfg, "n_heads")
    n_kv = config_value(cfg, "n_kv_heads")
    if single_kv_head(cfg):
        n_kv = 1
    if n_kv is None:
        n_kv = n_heads
    inter = config_value(cfg, "intermediate_size")
    if inter is None and hidden is not None and cfg is not None:
        inter = 4 * int(hidden)  # gpt2 and falcon document 4 * hidden as the default
    vocab = config_value(cfg, "vocab_size")
    n_experts = config_value(cfg, "n_experts") or 0
    per_token = (config_value(cfg, "experts_per_token") or 0) if n_experts else 0

    embed = next((r.module for r in model_level if r.component == "embed"), None)
    if hidden is None and isinstance(embed, nn.Embedding):
        hidden = embed.embedding_dim
    if vocab is None and isinstance(embed, nn.Embedding):
        vocab = embed.num_embeddings

    param = next(iter(model.parameters()), None)
    dtype = str(param.dtype).replace("torch.", "") if param is not None else "unknown"
    name = getattr(cfg, "name_or_path", None) or getattr(model, "name_or_path", None) or ""
    out = {
        "n_layers": n_layers,
        "hidden_size": int(hidden) if hidden is not None else None,
        "n_heads": int(n_heads) if n_heads is not None else None,
        "n_kv_heads": int(n_kv) if n_kv is not None else None,
        "intermediate_size": int(inter) if inter is not None else None,
        "vocab_size": int(vocab) if vocab is not None else None,
        "n_params": _n_params(model) if n_params is None else int(n_params),
        "n_experts": int(n_experts),
        "experts_per_token": int(per_token),
        "dtype": dtype,
        "name_or_path": str(name),
        "attention_kind": attention_kind(n_heads, n_kv),
        "kind": kind,
    }
    for stack, (_first, n) in (stacks or {}).items():
        if kind == "encoder-decoder":
            out[f"n_{stack}_layers"] = int(n)
    return out


# --------------------------------------------------------------------------- public API


def describe(model: nn.Module, *, use_tables: bool = True) -> ArchMap:
    """Map a causal-LM's decoder layers and components onto canonical names.

    Known architectures (``ARCH_TABLES``) are mapped by table; anything else, or a known
    architecture whose table matches nothing (a transformers version that renamed its
    modules), goes through the generic fallback, which warns with what it found.

    ``use_tables=False`` forces the generic fallback (to compare it with a table, or to try
    it on a model whose table is wrong). Raises TypeError when ``model`` is not a
    ``torch.nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"describe() needs a torch.nn.Module, got {type(model).__name__}")
    # The module tree (each module's class and its children by name and identity) and the
    # config object decide the mapping: a model described before with the same tree gets
    # the same map without the search (ep.run's enter); the config summary (parameter
    # count, dtype) is read afresh.  One C walk gives the tree and the parameter count;
    # the memory pins every module of the tree it was made for (never the model itself),
    # so no identity in its key can be taken over by a new object while it is kept.
    tree, n_params, pinned = _core.module_tree(model)
    key = (use_tables, id(getattr(model, "config", None)), tree)
    hit = _DESCRIBED.get(model)
    if hit is not None and hit[0] == key:
        found = hit[1]
        for note in found.warnings:
            warnings.warn(note, UserWarning, stacklevel=2)
        return dataclasses.replace(found, top=model, warnings=list(found.warnings),
                                   config=_config_summary(model, len(found.layers), found.model_level, found.kind,
                                                          found.stacks, n_params=n_params))
    amap = _describe(model, use_tables)
    refs = [*amap.layers, *amap.components, *amap.model_level, *([amap.encoder] if amap.encoder else [])]
    if all(r.module is not model for r in refs):   # the memory must not keep the model alive
        _DESCRIBED[model] = (key, dataclasses.replace(amap, top=None, config={}), pinned)
    return amap


#: describe()'s last map per model (weak: it goes with the model), with the key it was made for.
_DESCRIBED: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _describe(model: nn.Module, use_tables: bool) -> ArchMap:
    """describe() without its cache."""
    model_type = _model_type(model)
    arch = _detect_arch(model, model_type) if use_tables else None
    notes: list[str] = []

    layers_found: Optional[tuple[str, nn.ModuleList]] = None
    components: list[ModuleRef] = []
    model_level: list[ModuleRef] = []
    generic = True
    stacks: dict[str, tuple[int, int]] = {}
    stack_layers: list[ModuleRef] = []
    encoder_ref: Optional[ModuleRef] = None
    if arch is not None and ARCH_TABLES[arch].stacks:
        table = ARCH_TABLES[arch]
        stack_layers, components, stacks, stack_quals = _describe_stacks(model, table)
        if components:
            generic = False
            model_level = _table_model_level(model, "", table)
            enc_q = stack_quals.get("encoder")
            if enc_q is not None and "decoder" in stacks:
                mods = dict(model.named_modules())
                encoder_ref = ModuleRef(enc_q, mods[enc_q], -1, "encoder")
        else:
            notes.append(f"{arch}: the table matched no module inside the blocks; transformers may have renamed them")
            components = []
        arch_kind = "encoder-decoder" if len(stacks) == 2 else "encoder"
    elif arch is not None:
        table = ARCH_TABLES[arch]
        layers_found = _find_layers_table(model, table)
        if layers_found is not None:
            lq, lst = layers_found
            for i, block in enumerate(lst):
                components += _table_layer_components(i, _join(lq, str(i)), block, table.layer)
            if components:
                generic = False
                model_level = _table_model_level(model, _parent(lq), table)
                wanted = {c for c, names in (("embed", table.embed), ("final_norm", table.final_norm),
                                             ("lm_head", table.lm_head)) if names and table.kind == "decoder"}
                missing = wanted - {r.component for r in model_level}
                if missing:
                    notes.append(f"{arch}: model-level modules not found: {sorted(missing)}")
            else:
                notes.append(f"{arch}: the table matched no module inside the decoder layers; "
                             "transformers may have renamed them")
        else:
            notes.append(f"{arch}: no decoder ModuleList named {table.layers_attr}")
        if generic:
            components = []

    if generic:
        stacks = {}
        layers_found = _find_layers_generic(model)
        if layers_found is not None:
            lq, lst = layers_found
            for i, block in enumerate(lst):
                components += _generic_layer_components(i, _join(lq, str(i)), block)
            model_level = _generic_model_level(model, lq)
            recognised = sorted({r.component for r in components} | {r.component for r in model_level})
            notes.append(
                f"generic fallback for {model_type!r}: found {len(lst)} blocks of "
                f"{type(lst[0]).__name__} at {lq or '<top>'!r}; recognised components: "
                f"{recognised if recognised else 'none'}"
            )
        else:
            notes.append(f"generic fallback for {model_type!r}: no repeated blocks "
                         "(nn.ModuleList of one class) found; only the top module can be hooked")

    layers: list[ModuleRef] = []
    if stack_layers and not generic:
        layers = stack_layers
    elif layers_found is not None:
        lq, lst = layers_found
        layers = [ModuleRef(_join(lq, str(i)), block, i, "layer") for i, block in enumerate(lst)]
    kind = _model_kind(model, arch if not generic else None, stacks)
    if not stacks and layers:
        stacks = {"encoder" if kind == "encoder" else "decoder": (0, len(layers))}

    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=3)
    return ArchMap(
        arch="generic" if generic else arch,  # type: ignore[arg-type]
        model_type=model_type,
        top=model,
        layers=layers,
        components=components,
        model_level=model_level,
        config=_config_summary(model, len(layers), model_level, kind, stacks),
        generic=generic,
        warnings=notes,
        kind=kind,
        encoder=encoder_ref,
        stacks=stacks,
    )


def _model_kind(model: nn.Module, arch: Optional[str], stacks: dict[str, tuple[int, int]]) -> str:
    """decoder, encoder or encoder-decoder: from the stacks a table found, the family's table,
    else the config (``is_encoder_decoder``; an encoder family unless ``is_decoder``)."""
    if "encoder" in stacks:
        return "encoder-decoder" if "decoder" in stacks else "encoder"
    cfg = getattr(model, "config", None)
    if arch is not None and ARCH_TABLES[arch].kind == "encoder":
        return "decoder" if getattr(cfg, "is_decoder", False) else "encoder"
    if getattr(cfg, "is_encoder_decoder", False) and arch is None:
        return "encoder-decoder"
    return "decoder"


def hook_targets(amap: ArchMap, mode: str) -> list[ModuleRef]:
    """The modules to hook for a mode, besides the top model (which the session always hooks).

    ``minimal`` → []; ``standard`` and ``deep`` → every decoder layer, every component and the
    model-level modules, in that order. ValueError for another mode.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if mode == "minimal":
        return []
    return [*amap.layers, *amap.components, *amap.model_level]
