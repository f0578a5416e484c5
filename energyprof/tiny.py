"""Tiny random-weight causal LMs and a byte tokenizer, for tests, demos and benchmarks.

Nothing is downloaded: each model is built from its transformers config class with a fixed
seed, so the same name and seed give bit-identical weights. Default size: 2 layers, hidden 64,
4 heads (2 key/value heads where the architecture has the knob), MLP width 128, vocabulary 320.
The weights are random, so the text is noise; the compute pattern is the real architecture's.

>>> model = tiny_model("tiny-llama")
>>> tok = ByteTokenizer()
>>> inputs = tok(["hi", "hello"], return_tensors="pt")
>>> out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
>>> tuple(out.shape)
(2, 9)

Generation never stops early: ``eos_token_id`` is None on the tiny configs, so ``generate``
always produces ``max_new_tokens`` tokens per sequence (deterministic token counts).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

__all__ = ["TINY_MODELS", "tiny_model", "tiny_config", "ByteTokenizer", "TINY_VOCAB"]

#: Vocabulary of every tiny model: 3 specials + 256 byte ids + spare ids a random model may emit.
TINY_VOCAB = 320
_PAD, _BOS, _EOS, _BYTE_OFFSET = 0, 1, 2, 3

# Generic override names -> the canonical generic key used in _Spec.fields.
_ALIASES = {
    "n_layers": "n_layers",
    "num_hidden_layers": "n_layers",
    "hidden_size": "hidden_size",
    "n_heads": "n_heads",
    "num_attention_heads": "n_heads",
    "n_kv_heads": "n_kv_heads",
    "num_key_value_heads": "n_kv_heads",
    "intermediate_size": "intermediate_size",
    "vocab_size": "vocab_size",
    "max_position_embeddings": "max_positions",
    "max_positions": "max_positions",
    "n_experts": "n_experts",
    "num_local_experts": "n_experts",
    "experts_per_token": "experts_per_token",
    "num_experts_per_tok": "experts_per_token",
}

_DEFAULTS = {
    "n_layers": 2,
    "hidden_size": 64,
    "n_heads": 4,
    "n_kv_heads": 2,
    "intermediate_size": 128,
    "vocab_size": TINY_VOCAB,
    "max_positions": 512,
}

_LLAMA_FIELDS = {
    "n_layers": "num_hidden_layers",
    "hidden_size": "hidden_size",
    "n_heads": "num_attention_heads",
    "n_kv_heads": "num_key_value_heads",
    "intermediate_size": "intermediate_size",
    "vocab_size": "vocab_size",
    "max_positions": "max_position_embeddings",
}


@dataclass(frozen=True)
class _Spec:
    config_class: str  # attribute of the transformers package
    fields: dict[str, Optional[str]]  # generic key -> config field; None: this architecture has no such knob
    extra: dict[str, Any]  # fixed architecture-specific settings (overridable)


_SPECS: dict[str, _Spec] = {
    "tiny-llama": _Spec("LlamaConfig", _LLAMA_FIELDS, {}),
    "tiny-mistral": _Spec("MistralConfig", _LLAMA_FIELDS, {"sliding_window": None}),
    "tiny-qwen2": _Spec("Qwen2Config", _LLAMA_FIELDS, {}),
    "tiny-qwen3": _Spec("Qwen3Config", _LLAMA_FIELDS, {}),
    "tiny-phi": _Spec("PhiConfig", _LLAMA_FIELDS, {}),
    "tiny-phi3": _Spec("Phi3Config", _LLAMA_FIELDS, {}),
    "tiny-gemma": _Spec("GemmaConfig", _LLAMA_FIELDS, {}),
    "tiny-gpt2": _Spec("GPT2Config", {
        "n_layers": "n_layer",
        "hidden_size": "n_embd",
        "n_heads": "n_head",
        "n_kv_heads": None,
        "intermediate_size": "n_inner",
        "vocab_size": "vocab_size",
        "max_positions": "n_positions",
    }, {}),
    "tiny-gpt-neox": _Spec("GPTNeoXConfig", {**_LLAMA_FIELDS, "n_kv_heads": None}, {}),
    # Classic falcon-7b layout: parallel attention+MLP, multi-query (one K/V head), so no kv knob.
    "tiny-falcon": _Spec("FalconConfig", {
        **_LLAMA_FIELDS,
        "n_kv_heads": None,
        "intermediate_size": "ffn_hidden_size",
    }, {}),
    "tiny-mixtral": _Spec("MixtralConfig", {
        **_LLAMA_FIELDS,
        "n_experts": "num_local_experts",
        "experts_per_token": "num_experts_per_tok",
    }, {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": None}),
}


def _names() -> str:
    return ", ".join(sorted(_SPECS))


def _spec(name: str) -> _Spec:
    if name not in _SPECS:
        raise ValueError(f"unknown tiny model {name!r}; valid names: {_names()}")
    return _SPECS[name]


def _config_class(spec: _Spec) -> type:
    import transformers

    cls = getattr(transformers, spec.config_class, None)
    if cls is None:
        raise RuntimeError(f"transformers {transformers.__version__} has no {spec.config_class}; "
                           "upgrade transformers to build this tiny model")
    return cls


def tiny_config(name: str, **overrides: Any) -> Any:
    """The transformers config of a tiny model, with ``overrides`` applied.

    Generic names (``n_layers``, ``hidden_size``, ``n_heads``, ``n_kv_heads``,
    ``intermediate_size``, ``vocab_size``, ``max_positions``, ``n_experts``,
    ``experts_per_token`` and their llama-style spellings such as ``num_hidden_layers``) are
    mapped onto each config's own field names (``n_layer`` for gpt2, ...). Any other keyword
    must be a field of that config class. ``head_dim`` follows ``hidden_size // n_heads``
    unless given. ValueError for an unknown name, an unknown field, or a knob the
    architecture does not have (``n_kv_heads`` on gpt2).
    """
    spec = _spec(name)
    cls = _config_class(spec)
    reference = cls()
    generic = dict(_DEFAULTS)
    raw: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in _ALIASES:
            gkey = _ALIASES[key]
            if spec.fields.get(gkey, "missing") is None or gkey not in spec.fields:
                raise ValueError(f"{name} has no {key!r} setting")
            generic[gkey] = value
        elif hasattr(reference, key):
            raw[key] = value
        else:
            raise ValueError(f"{spec.config_class} has no field {key!r}")
    kwargs: dict[str, Any] = dict(spec.extra)
    for gkey, value in generic.items():
        field_name = spec.fields.get(gkey)
        if field_name is not None:
            kwargs[field_name] = value
    settable_head_dim = not isinstance(getattr(cls, "head_dim", None), property)  # falcon derives it
    if hasattr(reference, "head_dim") and settable_head_dim and "head_dim" not in raw:
        # Some configs (qwen3, gemma) default to a fixed head_dim of 128/256 that would not
        # match a 64-wide model.
        kwargs["head_dim"] = generic["hidden_size"] // generic["n_heads"]
    kwargs.update(raw)
    kwargs.setdefault("pad_token_id", _PAD)
    kwargs.setdefault("bos_token_id", _BOS)
    # No EOS: random weights would stop generation at a seed-dependent step.
    kwargs.setdefault("eos_token_id", None)
    cfg = cls(**kwargs)
    cfg.name_or_path = name
    return cfg


def tiny_model(name: str, seed: int = 0, dtype: Optional[Union[torch.dtype, str]] = None,
               **overrides: Any) -> nn.Module:
    """Build a tiny random-weight ``*ForCausalLM`` in eval mode.

    The global torch RNG is left as it was (the seed is applied inside ``fork_rng``), so the
    same ``(name, seed, overrides)`` always gives identical weights. ``dtype`` casts the model
    (``torch.bfloat16`` or ``"bfloat16"``). ``overrides`` go to :func:`tiny_config`.
    """
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(name, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg)
    if dtype is not None:
        model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    model.eval()
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.pad_token_id = cfg.pad_token_id
        gen.eos_token_id = None
    model.config.name_or_path = name
    return model


#: name -> builder ``f(seed=0, dtype=None, **overrides) -> nn.Module``.
TINY_MODELS: dict[str, Callable[..., nn.Module]] = {
    name: functools.partial(tiny_model, name) for name in _SPECS
}


class ByteTokenizer:
    """UTF-8 bytes as token ids (byte b → id b + 3), with pad=0, bos=1, eos=2.

    Stands in for a real tokenizer with the tiny models. ``__call__`` mimics the HF
    tokenizers: a string or a list of strings, left padding, ``return_tensors="pt"`` (or
    ``"np"``, or None for lists), and returns ``{"input_ids", "attention_mask"}``. An empty
    string encodes to ``[bos]`` so that every row has at least one real token.
    """

    pad_token_id = _PAD
    bos_token_id = _BOS
    eos_token_id = _EOS
    padding_side = "left"

    def __init__(self, vocab_size: int = TINY_VOCAB, add_bos: bool = False) -> None:
        if vocab_size < _BYTE_OFFSET + 256:
            raise ValueError(f"vocab_size must be at least {_BYTE_OFFSET + 256} for byte ids")
        self.vocab_size = vocab_size
        self.add_bos = add_bos

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (with a leading bos when ``add_bos``)."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        ids = [b + _BYTE_OFFSET for b in text.encode("utf-8")]
        return [_BOS] + ids if self.add_bos else ids

    def decode(self, ids: Union[Sequence[int], torch.Tensor], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``. Specials and ids above the byte range (a random model emits them)
        are dropped; invalid UTF-8 becomes U+FFFD."""
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        data = bytes(i - _BYTE_OFFSET for i in ids if _BYTE_OFFSET <= int(i) < _BYTE_OFFSET + 256)
        return data.decode("utf-8", errors="replace")

    def batch_decode(self, sequences: Union[Sequence[Sequence[int]], torch.Tensor],
                     skip_special_tokens: bool = True) -> list[str]:
        """:meth:`decode` of each row."""
        return [self.decode(seq, skip_special_tokens) for seq in sequences]

    def __call__(self, text: Union[str, Sequence[str]], return_tensors: Optional[str] = None
                 ) -> dict[str, Any]:
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        if not texts:
            raise ValueError("no text to tokenize")
        rows = [self.encode(t) or [_BOS] for t in texts]
        width = max(len(r) for r in rows)
        ids = [[_PAD] * (width - len(r)) + r for r in rows]
        mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
        if return_tensors == "pt":
            return {"input_ids": torch.tensor(ids, dtype=torch.long),
                    "attention_mask": torch.tensor(mask, dtype=torch.long)}
        if return_tensors == "np":
            import numpy as np

            return {"input_ids": np.asarray(ids, dtype=np.int64),
                    "attention_mask": np.asarray(mask, dtype=np.int64)}
        if return_tensors is not None:
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        if single:
            return {"input_ids": ids[0], "attention_mask": mask[0]}
        return {"input_ids": ids, "attention_mask": mask}
