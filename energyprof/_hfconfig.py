"""Where a Hugging Face config keeps each shape figure, across architectures.

One table for :mod:`energyprof.measure.arch` (a model's ``config`` summary) and
:mod:`energyprof.analysis.predict` (features from a bare config), so both read the same fields.
No torch here: predict reads configs without loading a model.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

#: canonical name -> the config attributes that hold it, first found wins
CONFIG_ALIASES: Dict[str, Tuple[str, ...]] = {
    "n_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
    "n_heads": ("num_attention_heads", "n_head", "num_heads"),
    "n_kv_heads": ("num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num"),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_hidden_size", "ffn_dim", "d_ff"),
    "vocab_size": ("vocab_size",),
    "n_experts": ("num_local_experts", "num_experts", "n_routed_experts"),
    "experts_per_token": ("num_experts_per_tok", "moe_top_k"),
}


def config_value(cfg: Any, name: str) -> Any:
    """The first of ``CONFIG_ALIASES[name]`` that ``cfg`` has and is not None (None if none is)."""
    for attr in CONFIG_ALIASES[name]:
        val = getattr(cfg, attr, None)
        if val is not None:
            return val
    return None


#: The attention kinds :func:`attention_kind` names.
ATTENTION_KINDS = ("MHA", "GQA", "MQA")


def attention_kind(n_heads: Any, n_kv_heads: Any) -> Any:
    """``"MHA"`` (one K/V head per query head), ``"MQA"`` (one K/V head for all of them) or
    ``"GQA"`` (groups of query heads share a K/V head); None when the head counts are unknown.

    A missing ``n_kv_heads`` means as many K/V heads as query heads (the configs' own default).
    """
    try:
        nh = int(n_heads)
    except (TypeError, ValueError):
        return None
    try:
        nkv = int(n_kv_heads) if n_kv_heads is not None else nh
    except (TypeError, ValueError):
        return None
    if nh <= 0 or nkv <= 0:
        return None
    if nkv >= nh:
        return "MHA"
    return "MQA" if nkv == 1 else "GQA"


def single_kv_head(cfg: Any) -> bool:
    """Classic falcon: one shared K/V head (``multi_query``), whatever its kv-head field says."""
    return bool(getattr(cfg, "multi_query", False)) and not getattr(cfg, "new_decoder_architecture", False)
