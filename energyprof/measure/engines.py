"""Engines other than eager PyTorch: a token streamer for any per-token callback, and adapters.

An engine that is not an ``nn.Module`` with hooks (ONNX Runtime, llama.cpp, vLLM, a
compiled graph) runs inside ``ep.run(None, source=...)``: a plain energy window where the
caller marks what it knows (``s.mark_prefill_start()``, ``s.mark_prefill_end()``,
``s.mark_token()``).  :class:`TokenStreamer` does the marking from the Hugging Face
streamer protocol (``put(token_ids)`` / ``end()``), so it plugs into
``model.generate(streamer=...)`` and into any engine with a per-token callback
(``on_token``).  docs/engines.md shows vLLM and llama.cpp.

>>> import energyprof as ep, torch
>>> from energyprof.tiny import tiny_model
>>> model = tiny_model("tiny-llama")
>>> with ep.run(None, source="synthetic:power_w=10", baseline_s=0, save=False) as s:
...     _ = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=False,
...                        streamer=ep.TokenStreamer(s))
>>> s.summary()["input_tokens"], s.summary()["output_tokens"], s.summary()["n_decode_steps"]
(3, 4, 3)

Adapters (each an :class:`Engine`, made by :func:`make_engine`): ``eager`` and ``sdpa``
(Hugging Face attention implementations, hooked as usual), ``compile`` (``torch.compile``
of the model's forward, marked through a TokenStreamer) and ``onnxruntime`` (the model
exported to ONNX and run by ONNX Runtime on the CPU, marked by its own decode loop).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Dict, Optional

import numpy as np

from ..errors import MissingExtraError

__all__ = ["TokenStreamer", "Engine", "HFAttentionEngine", "CompileEngine", "OnnxRuntimeEngine", "ENGINES",
           "make_engine", "export_onnx"]

#: The adapters :func:`make_engine` knows, in the order the engine comparison lists them.
ENGINES = ("eager", "sdpa", "compile", "onnxruntime")


class TokenStreamer:
    """Marks prefill and tokens of an ``ep.run(None, ...)`` session from a token stream.

    It speaks the Hugging Face streamer protocol: the first ``put`` with a 2-D value is the
    prompt (batch x prompt length: the prefill starts, with that many input tokens), every
    later ``put`` a step's new tokens (the first of them ends the prefill, the rest are
    decode steps), ``end()`` closes the generation.  Engines with a plain per-token callback
    call :meth:`on_prompt` once and :meth:`on_token` per token (``streamer.on_token`` is
    the callback; calling the streamer itself is the same).

    Parameters
    ----------
    session: the :class:`~energyprof.measure.session.Session` of ``ep.run(None, ...)``.
    tokenizer: optional; with one, each token's text is decoded and stored with the run
        (``session.token_texts()``: ``{step: text}``).
    """

    def __init__(self, session: Any, tokenizer: Any = None) -> None:
        if getattr(session, "model", 0) is not None or not hasattr(session, "mark_token"):
            raise ValueError("TokenStreamer needs the session of ep.run(None, ...): a run that hooks its model "
                             "counts tokens through the hooks already")
        self.session = session
        self.tokenizer = tokenizer
        self._prompt_seen = False

    # -- the Hugging Face streamer protocol ------------------------------------------
    def put(self, value: Any) -> None:
        """A tensor/array of token ids: the prompt (first 2-D value), else one step's new tokens."""
        arr = _as_numpy(value)
        if not self._prompt_seen and arr.ndim >= 2:
            self.on_prompt(int(arr.size), batch=int(arr.shape[0]))
            return
        n = int(arr.size) if arr.ndim else 1
        if n == 0:
            return
        self.on_token(text=self._decode(arr), n=n)

    def end(self) -> None:
        """The generation is over: the next prompt starts a new one."""
        self._prompt_seen = False
        self.session.end_generation()

    # -- plain callbacks -------------------------------------------------------------
    def on_prompt(self, n_tokens: int, batch: int = 1) -> None:
        """The prompt (``n_tokens`` over ``batch`` sequences) goes in now: the prefill starts."""
        self._prompt_seen = True
        self.session.mark_prefill_start(input_tokens=int(n_tokens), batch=int(batch))

    def on_token(self, text: Optional[str] = None, n: Optional[int] = None) -> None:
        """``n`` new tokens (default: one per sequence) are out now (``text``: their text, if known)."""
        self.session.mark_token(text=text, n=n)

    __call__ = on_token

    def _decode(self, ids: np.ndarray) -> Optional[str]:
        if self.tokenizer is None:
            return None
        try:
            return str(self.tokenizer.decode([int(i) for i in ids.reshape(-1)]))
        except Exception:  # a tokenizer that cannot decode these ids: keep counting
            return None


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


# ---------------------------------------------------------------------------------
# adapters
# ---------------------------------------------------------------------------------
class Engine:
    """One way of running a causal LM's greedy generation inside ``ep.run``.

    ``hooked`` engines run under ``ep.run(model)`` (hooks count tokens and layers); the
    others under ``ep.run(None)`` and mark prefill and tokens themselves.  Use
    :meth:`open` once (export, compile, switch attention), :meth:`generate` inside the run,
    :meth:`close` to undo what :meth:`open` changed on the model.
    """

    name = "engine"
    hooked = True

    def __init__(self, model: Any) -> None:
        self.model = model

    def open(self) -> "Engine":
        """Prepare the engine (may take long: an export or a compile happens here, outside any run)."""
        return self

    def close(self) -> None:
        """Undo what :meth:`open` changed on the model."""

    def run_target(self) -> Any:
        """What ``ep.run`` takes: the model (hooked engines) or None."""
        return self.model if self.hooked else None

    def generate(self, session: Any, input_ids: Any, attention_mask: Any = None, max_new_tokens: int = 32,
                 **gen_kw: Any) -> Any:
        """Greedy generation of ``max_new_tokens`` tokens per sequence inside ``session`` (None: outside
        any run, e.g. a warm-up)."""
        raise NotImplementedError(f"{type(self).__name__} has no generate()")

    def describe(self) -> Dict[str, Any]:
        """What the run records about the engine (``summary()["engine_info"]``)."""
        return {"name": self.name, "hooked": self.hooked}

    def __enter__(self) -> "Engine":
        return self.open()

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def _hf_generate(model: Any, input_ids: Any, attention_mask: Any, max_new_tokens: int, **gen_kw: Any) -> Any:
    import torch

    kw = dict(do_sample=False, max_new_tokens=int(max_new_tokens), min_new_tokens=int(max_new_tokens))
    pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    if pad is not None:
        kw["pad_token_id"] = pad
    kw.update(gen_kw)
    with torch.no_grad():
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, **kw)


class HFAttentionEngine(Engine):
    """A Hugging Face model with one attention implementation (``eager`` or ``sdpa``), hooked as usual."""

    hooked = True

    def __init__(self, model: Any, attn_implementation: str = "eager") -> None:
        super().__init__(model)
        if attn_implementation not in ("eager", "sdpa"):
            raise ValueError(f"attn_implementation must be 'eager' or 'sdpa', got {attn_implementation!r}")
        self.name = attn_implementation
        self._before: Optional[str] = None

    def open(self) -> "HFAttentionEngine":
        cfg = getattr(self.model, "config", None)
        if cfg is None or not hasattr(self.model, "set_attn_implementation"):
            raise ValueError(f"engine {self.name!r} needs a Hugging Face model (with set_attn_implementation)")
        self._before = getattr(cfg, "_attn_implementation", None)
        self.model.set_attn_implementation(self.name)
        return self

    def close(self) -> None:
        if self._before is not None:
            self.model.set_attn_implementation(self._before)
            self._before = None

    def generate(self, session, input_ids, attention_mask=None, max_new_tokens=32, **gen_kw):
        return _hf_generate(self.model, input_ids, attention_mask, max_new_tokens, **gen_kw)

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name, "hooked": True, "attn_implementation": self.name}


class CompileEngine(Engine):
    """``torch.compile`` of the model's forward; tokens and phases come from a :class:`TokenStreamer`.

    Hooks would break the compiled graph, so the run is ``ep.run(None)``.  Compiling happens
    in :meth:`open` and in the untimed warm-up of a sweep; ``backend`` is passed to
    ``torch.compile`` (``"inductor"`` by default; ``"eager"`` traces with dynamo only).
    """

    name = "compile"
    hooked = False

    def __init__(self, model: Any, backend: str = "inductor", dynamic: bool = True, **compile_kw: Any) -> None:
        super().__init__(model)
        self.backend, self.dynamic, self.compile_kw = backend, bool(dynamic), compile_kw
        self._patched = False

    def open(self) -> "CompileEngine":
        import torch

        if not self._patched:
            # An instance attribute shadows the class's forward; close() deletes it again.
            self.model.forward = torch.compile(type(self.model).forward.__get__(self.model), backend=self.backend,
                                               dynamic=self.dynamic, **self.compile_kw)
            self._patched = True
        return self

    def close(self) -> None:
        if self._patched:
            del self.model.forward
            self._patched = False

    def generate(self, session, input_ids, attention_mask=None, max_new_tokens=32, **gen_kw):
        if session is not None:   # None: an untimed warm-up (the compile itself)
            gen_kw["streamer"] = TokenStreamer(session)
        return _hf_generate(self.model, input_ids, attention_mask, max_new_tokens, **gen_kw)

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name, "hooked": False, "backend": self.backend, "dynamic": self.dynamic}


class _LogitsOnly:
    """(input_ids, attention_mask) -> logits, without a cache: the graph that is exported."""

    def __new__(cls, model):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask):
                return self.m(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

        return Wrapped(model)


def export_onnx(model: Any, path: str, example_length: int = 8, max_length: int = 4096) -> str:
    """Export a Hugging Face causal LM to ONNX: inputs ``input_ids`` and ``attention_mask``
    (int64, batch x sequence, both dynamic), output ``logits``; no KV cache.  Returns ``path``.

    Needs the ``onnx`` extra (``pip install 'energyprof[onnx]'``: onnx, onnxscript, onnxruntime).
    """
    import torch

    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise MissingExtraError(e.name or "onnxscript", "export_onnx") from e
    import contextlib
    import io
    import warnings

    wrapped = _LogitsOnly(model).eval()
    ids = torch.full((1, int(example_length)), 5, dtype=torch.long)
    mask = torch.ones_like(ids)
    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("seq", min=1, max=int(max_length))
    import logging

    log = io.StringIO()
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    # the exporter prints its progress, logs what it skips and warns about axis names: keep
    # that off the caller's output (a failed export still raises)
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(log):
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        onnx_log.setLevel(logging.ERROR)
        try:
            torch.onnx.export(wrapped, (ids, mask), path, input_names=["input_ids", "attention_mask"],
                              output_names=["logits"], dynamo=True, verbose=False,
                              dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}))
        finally:
            onnx_log.setLevel(level)
    return path


class OnnxRuntimeEngine(Engine):
    """A causal LM exported to ONNX (:func:`export_onnx`) and run by ONNX Runtime on the CPU.

    Its greedy loop feeds the whole sequence at every step (the exported graph has no KV
    cache) and tells the session through the streamer protocol: the prompt, the first token
    (end of the prefill) and every decode step.  Give ``path`` to use an existing export;
    else :meth:`open` exports ``model`` to a temporary directory, removed by :meth:`close`.
    """

    name = "onnxruntime"
    hooked = False

    def __init__(self, model: Any = None, path: Optional[str] = None, providers: Any = ("CPUExecutionProvider",),
                 intra_op_threads: Optional[int] = None) -> None:
        super().__init__(model)
        if model is None and path is None:
            raise ValueError("OnnxRuntimeEngine needs a model to export or the path of an exported one")
        self.path = path
        self.providers = list(providers)
        self.intra_op_threads = intra_op_threads
        self._tmpdir: Optional[str] = None
        self._sess = None

    def open(self) -> "OnnxRuntimeEngine":
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise MissingExtraError("onnxruntime", "the onnxruntime engine") from e
        if self._sess is not None:
            return self
        if self.path is None:
            self._tmpdir = tempfile.mkdtemp(prefix="energyprof-onnx-")
            self.path = export_onnx(self.model, os.path.join(self._tmpdir, "model.onnx"))
        opts = ort.SessionOptions()
        if self.intra_op_threads:
            opts.intra_op_num_threads = int(self.intra_op_threads)
        self._sess = ort.InferenceSession(self.path, sess_options=opts, providers=self.providers)
        return self

    def close(self) -> None:
        self._sess = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
            self.path = None

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """One run of the exported graph: logits (batch x sequence x vocabulary)."""
        if self._sess is None:
            self.open()
        return self._sess.run(["logits"], {"input_ids": input_ids.astype(np.int64),
                                           "attention_mask": attention_mask.astype(np.int64)})[0]

    def generate(self, session, input_ids, attention_mask=None, max_new_tokens=32, streamer=None, **unused):
        """Greedy decoding (argmax); returns the ids (prompt + new tokens) as an int64 array."""
        if unused:
            raise TypeError(f"the onnxruntime engine takes no generate options {sorted(unused)}")
        ids = _as_numpy(input_ids).astype(np.int64)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be batch x sequence, got shape {ids.shape}")
        mask = np.ones_like(ids) if attention_mask is None else _as_numpy(attention_mask).astype(np.int64)
        if streamer is None and session is not None:
            streamer = TokenStreamer(session)
        if streamer is not None:
            streamer.put(ids)
        for _ in range(int(max_new_tokens)):
            nxt = self.logits(ids, mask)[:, -1, :].argmax(axis=-1).astype(np.int64)
            ids = np.concatenate([ids, nxt[:, None]], axis=1)
            mask = np.concatenate([mask, np.ones((len(mask), 1), np.int64)], axis=1)
            if streamer is not None:
                streamer.put(nxt)
        if streamer is not None:
            streamer.end()
        return ids

    def describe(self) -> Dict[str, Any]:
        import onnxruntime as ort

        return {"name": self.name, "hooked": False, "onnxruntime": ort.__version__, "providers": self.providers,
                "kv_cache": False}


def make_engine(name: str, model: Any, **options: Any) -> Engine:
    """The adapter called ``name`` (one of :data:`ENGINES`) for ``model``; ``options`` go to its class
    (``compile``: ``backend=``, ``dynamic=``; ``onnxruntime``: ``path=``, ``intra_op_threads=``)."""
    if name in ("eager", "sdpa"):
        return HFAttentionEngine(model, attn_implementation=name, **options)
    if name == "compile":
        return CompileEngine(model, **options)
    if name == "onnxruntime":
        return OnnxRuntimeEngine(model, **options)
    raise ValueError(f"unknown engine {name!r}; valid engines: {', '.join(ENGINES)}")
