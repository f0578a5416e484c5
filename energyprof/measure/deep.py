"""mode="deep": energy inside attention, MLP and norms, and statistics of what they compute.

``ep.run(model, mode="deep")`` does everything ``standard`` does, and in addition:

* **attention**: registers an ``"energyprof"`` function with transformers'
  ``AttentionInterface`` (and the eager mask builder under the same name with
  ``AttentionMaskInterface``) and switches the model to it with
  ``model.set_attn_implementation("energyprof")`` for the duration of the run; the
  original implementation is restored on exit.  The function does eager attention's
  arithmetic op for op (GQA ``repeat_kv``, ``q·kᵀ``, scaling, optional logit
  softcapping, the additive mask, softmax in float32, dropout (off in eval),
  ``attention·v``) and marks a span around each op, so the ops appear as children of
  the layer's ``attn`` call.  Per head it records the attention entropy, the mean of
  the largest weight of each query row and the sparsity (share of the *unmasked*
  weights below 1e-3);
* **MLP**: the forward of each known MLP class is replaced (instance attribute, for the
  run only) by the same computation with spans around the activation and the
  gate·up multiply; gate/up/down are already hooked components.  The *kill ratio* of a
  call is the share of activations the activation function sends to (nearly) zero:
  ``|act(gate)| < 1e-3``;
* **norms**: RMSNorm / LayerNorm forwards become three spans: mean-square / mean and
  variance, normalise, scale (and bias).  The *variance ratio* of a call is the mean
  per-token variance of the output over that of the input.

Op rows use :data:`energyprof._dtypes.CALL_DTYPE` and land in ``s.ops`` (and the
store's ``op_metrics``); each row's ``parent_id`` is the enclosing attn / mlp / norm
call, so ``parent.energy_j == sum(children.energy_j) + parent.unattributed_j``.  Op
component names are ``"<parent component>.<op>"``: ``attn.qk``, ``attn.scale``,
``attn.softcap``, ``attn.mask``, ``attn.softmax``, ``attn.av``, ``attn.stats``,
``mlp.act``, ``mlp.mul``, ``mlp.stats``, ``input_norm.variance``,
``input_norm.normalize``, ``input_norm.scale``, ``input_norm.stats`` ...  The
``*.stats`` ops are energyprof's own statistics work, shown separately so that it is
never mistaken for the model's.

>>> import torch, energyprof as ep
>>> from energyprof.tiny import tiny_model
>>> model = tiny_model("tiny-llama")
>>> with ep.run(model, source="synthetic:power_w=10", mode="deep", baseline_s=0, save=False) as s:
...     _ = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, do_sample=False)
>>> sorted(set(s.ops["component"][s.ops["layer"] == 0].tolist()))[:4]
['attn.av', 'attn.mask', 'attn.qk', 'attn.scale']
>>> model.config._attn_implementation
'sdpa'
"""
from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import _core
from .._dtypes import HEAD_DTYPE
from .hooks import _restore_forward, _set_forward

__all__ = ["ATTN_IMPLEMENTATION", "SPARSE_BELOW", "KILL_BELOW", "DeepOps", "attention_forward", "op_summary",
           "tensor_stats", "fast_stats", "stats_rows", "ActivationStats", "OP_SUMMARY_DTYPE",
           "register_attention", "supports_attention", "head_summary"]

#: Name under which energyprof's attention function and mask are registered with transformers.
ATTN_IMPLEMENTATION = "energyprof"

#: An attention weight below this is counted as sparse.
SPARSE_BELOW = 1e-3
#: An activation whose magnitude is below this is counted as killed by the gate.
KILL_BELOW = 1e-3
#: Compute the head / kill-ratio / variance-ratio statistics (and their ``*.stats`` op
#: spans).  False leaves only the op timings; read when a deep run starts.
STATISTICS = True
#: Take the activation statistics of each hooked module's output (the ``act_*`` columns of
#: ``s.layers`` / ``s.components``; :class:`ActivationStats`).  False leaves them NaN; read when a
#: deep run starts.
ACTIVATION_STATISTICS = True
#: Time attention per key/value head group (``attn.g<k>.qk`` ... ``attn.g<k>.av``) instead of
#: per layer.  Off by default: one span per op per group multiplies the hook calls.
HEAD_GROUPS = False

ATTN_OPS = ("qk", "scale", "softcap", "mask", "softmax", "av", "stats")
MLP_OPS = ("act", "mul", "stats")
NORM_OPS = ("variance", "normalize", "scale", "stats")

_REG_LOCK = threading.Lock()
_REGISTERED = False

# id(attention module) -> its marks while a deep run is active.  The registered
# attention function is global (transformers' registry), so it finds its spans here.
_ATTN_MARKS: Dict[int, "_Marks"] = {}


@dataclass
class _Marks:
    """Begin/end hook pairs of the ops of one module, and where its statistics go."""

    layer: int
    ops: Dict[str, Tuple[Any, Any]]
    recorder: "DeepOps"
    parent_span: int
    stats_key: int = -1                 # span id whose calls the statistics belong to
    calls_seen: int = 0                 # calls of this module so far (stats_every picks every Nth)
    groups: List[Dict[str, Tuple[Any, Any]]] = field(default_factory=list)   # HEAD_GROUPS: ops per group


def _noop() -> None:
    return None


_NOMARK = (_noop, _noop)


def _skip_stats(*args: Any) -> None:
    return None


_VIEW_DTYPES: tuple = ()


def _cpu_view(x: Any) -> Optional[np.ndarray]:
    """A C-contiguous numpy view (or contiguous copy) of a CPU float32/float64 tensor, else None."""
    global _VIEW_DTYPES
    if not _VIEW_DTYPES:
        import torch

        _VIEW_DTYPES = (torch.float32, torch.float64)
    if not x.is_cpu or x.dtype not in _VIEW_DTYPES:
        return None
    try:
        v = x.numpy()
    except RuntimeError:                # requires grad, conjugate / negative views: detach, else the torch path
        try:
            v = x.detach().resolve_conj().resolve_neg().numpy()
        except (RuntimeError, TypeError):
            return None
    return v if v.flags.c_contiguous else np.ascontiguousarray(v)


def fast_stats(x: Any, small_below: float = 1e-3) -> Any:
    """:func:`tensor_stats` in one pass: a tuple of 5 floats from the C kernel
    (``_core.tensor_stats_of`` reads a contiguous CPU float32/float64 tensor in place, a strided
    one is copied first), else :func:`tensor_stats`'s device tensor (no host sync on accelerators)."""
    r = _core.tensor_stats_of(x, small_below)
    if r is not None:
        return r
    v = _cpu_view(x)
    if v is not None:
        return _core.tensor_stats(v, small_below)
    return tensor_stats(x, small_below)


_NAN5 = (float("nan"),) * 5


class ActivationStats:
    """mode="deep": the activation statistics of each hooked module's output (mean, std,
    max |x|, share of |x| < ``small_below``, mean |x|; of the first element of a tuple output)
    on the 1st, (N+1)-th ... call of each module, N = ``every``.

    With ``hook_method="wrap"`` the C forward wrapper takes them itself after the call's end
    event (:meth:`wrap_options` go to :meth:`HookSet.add <energyprof.measure.hooks.HookSet.add>`):
    one pass in C over a contiguous CPU float32/float64 output, no forward hook, so torch keeps
    its fast call path; any other output goes to :meth:`fallback` (torch on its device, no
    sync).  With ``hook_method="hooks"`` a Python forward hook (:meth:`forward_hook`) does the
    same.  :meth:`collect` gathers both into float64 rows per span id.
    """

    def __init__(self, every: int, small_below: float) -> None:
        self.every = int(every)
        self.small_below = float(small_below)
        self._py: Dict[int, list] = {}          # span id -> records of the forward-hook path

    def fallback(self, out: Any) -> Any:
        """The record of an output the C path cannot read (a tensor of another device or dtype,
        strided, requiring grad): :func:`fast_stats`, NaN for a non-float or empty tensor."""
        if out.is_floating_point() and out.numel():
            return fast_stats(out, self.small_below)
        return _NAN5

    def wrap_options(self) -> dict:
        """The ``stats=`` of :meth:`HookSet.add` (``_core.wrap_forward``'s statistics options)."""
        import torch

        return dict(stats_every=self.every, small_below=self.small_below, tensor_type=torch.Tensor,
                    stats_fallback=self.fallback)

    def forward_hook(self, span_id: int) -> Callable:
        """A ``register_forward_hook`` callable recording ``span_id``'s statistics in Python."""
        import torch

        every, fallback = self.every, self.fallback
        lst = self._py.setdefault(span_id, [])
        seen = [0]

        def hook(module, args, output):
            k = seen[0]
            seen[0] = k + 1
            if k % every:
                return
            out = output[0] if isinstance(output, (tuple, list)) and len(output) else output
            lst.append(fallback(out) if isinstance(out, torch.Tensor) else _NAN5)

        return hook

    def collect(self, callables: Sequence[Any]) -> Dict[int, np.ndarray]:
        """span id -> float64 rows (records, 5), in call order: the forward hooks' records and
        those of every ``_core.ForwardWrapper`` among ``callables`` that took any."""
        out = {sid: stats_rows(lst) for sid, lst in self._py.items() if lst}
        for w in callables:
            if not isinstance(w, _core.ForwardWrapper):
                continue
            rows, deferred = w.act_stats()
            if not len(rows):
                continue
            if deferred:
                idx = np.array([i for i, _ in deferred], dtype=np.intp)
                rows[idx] = stats_rows([r for _, r in deferred])
            out[w.span_id] = rows
        return out


def stats_rows(lst: Sequence[Any], width: int = 5) -> np.ndarray:
    """Stack what :func:`fast_stats` (or a stats kernel) returned, tensors and tuples mixed, into
    a float64 array of rows (one host transfer for the tensors)."""
    if not lst:
        return np.zeros((0, width))
    if all(isinstance(r, (tuple, float)) for r in lst):
        return np.array(lst, dtype=np.float64)
    import torch

    return np.asarray([np.asarray(r.detach().cpu().double().numpy() if isinstance(r, torch.Tensor) else r,
                                  dtype=np.float64) for r in lst], dtype=np.float64)


def tensor_stats(x: Any, small_below: float = 1e-3) -> Any:
    """(mean, std, max |x|, share of |x| < small_below, mean |x|) of a tensor, as a float64
    tensor of 5 on its device.

    No host sync.  The std (unbiased, as ``Tensor.std``) comes from the sums of x and x²
    accumulated in float64: torch's own ``std`` is ~20x slower on CPU than plain sums.
    """
    import torch

    with torch.no_grad():
        x = x.detach()
        n = x.numel()
        s1 = x.sum(dtype=torch.float64)
        mean = s1 / n
        if n > 1:
            s2 = (x * x).sum(dtype=torch.float64)
            std = ((s2 - s1 * mean).clamp_min(0) / (n - 1)).sqrt()
        else:
            std = mean.new_zeros(())
        ax = x.abs()
        return torch.stack([mean, std, ax.max().double(), (ax < small_below).sum().double() / n,
                            ax.sum(dtype=torch.float64) / n])


def _token_variance(x: Any) -> Any:
    """Mean over tokens of the variance along the last dimension (float64, population)."""
    xd = x.detach().double()
    m = xd.mean(-1)
    return ((xd * xd).mean(-1) - m * m).clamp_min(0).mean()


# --------------------------------------------------------------------------- attention


def _repeat_kv(x, n_rep: int):
    # (batch, kv_heads, seq, dim) -> (batch, kv_heads * n_rep, seq, dim): transformers' repeat_kv, same layout
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None, :, :].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def _softmax_in_value_dtype(module: Any) -> bool:
    """GPT-2's eager attention takes the softmax in the input dtype and casts to value's dtype."""
    return type(module).__module__.endswith(".gpt2.modeling_gpt2")


def _eager_ops(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float, dropout: float,
               softcap: Optional[float], ops: Dict[str, Tuple[Any, Any]], n_rep: int) -> Tuple[Any, Any]:
    """Eager attention's arithmetic with a span per op; returns (weights @ v, weights) before the transpose."""
    import torch
    from torch import nn

    b, e = ops.get("qk", _NOMARK)
    b()
    key_states = _repeat_kv(key, n_rep)
    value_states = _repeat_kv(value, n_rep)
    w = torch.matmul(query, key_states.transpose(2, 3))
    e()
    b, e = ops.get("scale", _NOMARK)
    b()
    w = w * scaling
    e()
    if softcap is not None:
        b, e = ops.get("softcap", _NOMARK)
        b()
        w = w / softcap
        w = torch.tanh(w)
        w = w * softcap
        e()
    if attention_mask is not None:
        b, e = ops.get("mask", _NOMARK)
        b()
        w = w + attention_mask
        e()
    b, e = ops.get("softmax", _NOMARK)
    b()
    if _softmax_in_value_dtype(module):
        w = nn.functional.softmax(w, dim=-1).type(value.dtype)
    else:
        w = nn.functional.softmax(w, dim=-1, dtype=torch.float32).to(query.dtype)
    w = nn.functional.dropout(w, p=dropout, training=module.training)
    e()
    b, e = ops.get("av", _NOMARK)
    b()
    out = torch.matmul(w, value_states)
    e()
    return out, w


def attention_forward(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                      scaling: Optional[float] = None, dropout: float = 0.0, softcap: Optional[float] = None,
                      **kwargs: Any) -> Tuple[Any, Any]:
    """Eager attention, op for op, with a span around each op while a deep run is active.

    The signature is transformers' attention-interface signature: ``query``
    ``(batch, heads, q_len, head_dim)``, ``key``/``value`` ``(batch, kv_heads, k_len,
    head_dim)``, an additive ``attention_mask`` broadcastable to the weights (or None);
    returns ``(attn_output (batch, q_len, heads, head_dim), attn_weights)``.  With
    :data:`HEAD_GROUPS` on, the same arithmetic runs once per key/value head group
    (the query heads that share one K/V head; each head under multi-head attention),
    each group with its own spans.
    """
    import torch

    if kwargs.get("s_aux") is not None:
        raise NotImplementedError("energyprof deep attention: attention sinks (s_aux) are not supported")
    marks = _ATTN_MARKS.get(id(module))
    n_rep = int(getattr(module, "num_key_value_groups", 1) or 1)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    if marks is not None and marks.groups:
        n_groups = len(marks.groups)
        hpg = query.shape[1] // n_groups            # query heads per group
        kpg = key.shape[1] // n_groups              # key/value heads per group (1)
        outs, ws = [], []
        for g, ops_g in enumerate(marks.groups):
            m = attention_mask
            if m is not None and m.dim() == 4 and m.shape[1] == query.shape[1] and n_groups > 1:
                m = m[:, g * hpg:(g + 1) * hpg]
            o, w = _eager_ops(module, query[:, g * hpg:(g + 1) * hpg], key[:, g * kpg:(g + 1) * kpg],
                              value[:, g * kpg:(g + 1) * kpg], m, scaling, dropout, softcap, ops_g, n_rep)
            outs.append(o)
            ws.append(w)
        out, w = torch.cat(outs, 1), torch.cat(ws, 1)
    else:
        out, w = _eager_ops(module, query, key, value, attention_mask, scaling, dropout, softcap,
                            marks.ops if marks is not None else {}, n_rep)
    out = out.transpose(1, 2).contiguous()
    if marks is not None and "stats" in marks.ops:
        b, e = marks.ops["stats"]
        b()
        marks.recorder._attn_stats(marks, w, attention_mask)
        e()
    return out, w


def register_attention() -> None:
    """Register :func:`attention_forward` and the eager mask as ``"energyprof"`` with transformers (idempotent)."""
    global _REGISTERED
    with _REG_LOCK:
        if _REGISTERED:
            return
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, eager_mask

        AttentionInterface.register(ATTN_IMPLEMENTATION, attention_forward)
        # Without a mask builder under the same name transformers would build no mask at all.
        AttentionMaskInterface.register(ATTN_IMPLEMENTATION, eager_mask)
        _REGISTERED = True


def supports_attention(model: Any) -> bool:
    """True when the model selects its attention through transformers' AttentionInterface."""
    can = getattr(type(model), "_can_set_attn_implementation", None)
    if can is None or getattr(model, "config", None) is None or not hasattr(model, "set_attn_implementation"):
        return False
    try:
        return bool(can())
    except Exception:
        return False


# --------------------------------------------------------------------------- MLP and norms

_GATED_MLPS = ("LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP", "GemmaMLP", "Gemma2MLP", "Gemma3MLP",
               "MixtralMLP", "Qwen2MoeMLP", "Qwen3MoeMLP")
_RMS_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "Phi3RMSNorm", "MixtralRMSNorm",
              "Qwen2MoeRMSNorm", "Qwen3MoeRMSNorm")
_GEMMA_NORMS = ("GemmaRMSNorm", "Gemma2RMSNorm", "Gemma3RMSNorm")


def _mlp_kind(mod: Any) -> Optional[str]:
    name = type(mod).__name__
    if name in _GATED_MLPS and all(hasattr(mod, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return "gated"
    if name == "Phi3MLP" and all(hasattr(mod, a) for a in ("gate_up_proj", "down_proj", "activation_fn")):
        return "gate_up"
    if name == "PhiMLP" and all(hasattr(mod, a) for a in ("fc1", "fc2", "activation_fn")):
        return "phi"
    if name == "GPT2MLP" and all(hasattr(mod, a) for a in ("c_fc", "c_proj", "act", "dropout")):
        return "gpt2"
    if name in ("GPTNeoXMLP", "FalconMLP") and all(hasattr(mod, a) for a in ("dense_h_to_4h", "dense_4h_to_h", "act")):
        return "h4h"
    return None


def _norm_kind(mod: Any) -> Optional[str]:
    import torch

    name = type(mod).__name__
    if name in _RMS_NORMS and hasattr(mod, "variance_epsilon") and hasattr(mod, "weight"):
        return "rms"
    if name in _GEMMA_NORMS and hasattr(mod, "eps") and hasattr(mod, "weight"):
        return "gemma_rms"
    if type(mod) is torch.nn.LayerNorm and len(mod.normalized_shape) == 1:
        return "layer_norm"
    return None


def _make_mlp_forward(mod: Any, kind: str, marks: _Marks) -> Callable:
    ops = marks.ops
    ab, ae = ops["act"]
    sb, se = ops.get("stats", _NOMARK)
    kill = marks.recorder._kill_stats if "stats" in ops else _skip_stats

    if kind == "gated":
        mb, me = ops["mul"]

        def forward(x):
            g = mod.gate_proj(x)
            ab()
            a = mod.act_fn(g)
            ae()
            u = mod.up_proj(x)
            mb()
            h = a * u
            me()
            sb()
            kill(marks, a)
            se()
            return mod.down_proj(h)
    elif kind == "gate_up":
        mb, me = ops["mul"]

        def forward(hidden_states):
            up_states = mod.gate_up_proj(hidden_states)
            gate, up_states = up_states.chunk(2, dim=-1)
            ab()
            a = mod.activation_fn(gate)
            ae()
            mb()
            up_states = up_states * a
            me()
            sb()
            kill(marks, a)
            se()
            return mod.down_proj(up_states)
    else:
        first, act, second, drop = {
            "phi": ("fc1", "activation_fn", "fc2", None),
            "gpt2": ("c_fc", "act", "c_proj", "dropout"),
            "h4h": ("dense_h_to_4h", "act", "dense_4h_to_h", None),
        }[kind]

        def forward(hidden_states):
            h = getattr(mod, first)(hidden_states)
            ab()
            h = getattr(mod, act)(h)
            ae()
            sb()
            kill(marks, h)
            se()
            h = getattr(mod, second)(h)
            if drop is not None:
                h = getattr(mod, drop)(h)
            return h
    return forward


def _make_norm_forward(mod: Any, kind: str, marks: _Marks) -> Callable:
    import torch

    ops = marks.ops
    vb, ve = ops["variance"]
    nb, ne = ops["normalize"]
    cb, ce = ops["scale"]
    sb, se = ops.get("stats", _NOMARK)
    var_stats = marks.recorder._variance_stats if "stats" in ops else _skip_stats

    if kind == "rms":
        def forward(hidden_states):
            input_dtype = hidden_states.dtype
            vb()
            h = hidden_states.to(torch.float32)
            variance = h.pow(2).mean(-1, keepdim=True)
            ve()
            nb()
            h = h * torch.rsqrt(variance + mod.variance_epsilon)
            ne()
            cb()
            out = mod.weight * h.to(input_dtype)
            ce()
            sb()
            var_stats(marks, hidden_states, out)
            se()
            return out
    elif kind == "gemma_rms":
        def forward(x):
            vb()
            xf = x.float()
            variance = xf.pow(2).mean(-1, keepdim=True)
            ve()
            nb()
            output = xf * torch.rsqrt(variance + mod.eps)
            ne()
            cb()
            output = output * (1.0 + mod.weight.float())
            output = output.type_as(x)
            ce()
            sb()
            var_stats(marks, x, output)
            se()
            return output
    else:  # nn.LayerNorm, decomposed: not bit-identical to the fused kernel (see docs/deep.md)
        def forward(x):
            vb()
            mean = x.mean(-1, keepdim=True)
            var = (x - mean).pow(2).mean(-1, keepdim=True)
            ve()
            nb()
            h = (x - mean) * torch.rsqrt(var + mod.eps)
            ne()
            cb()
            if mod.weight is not None:
                h = h * mod.weight
            if mod.bias is not None:
                h = h + mod.bias
            ce()
            sb()
            var_stats(marks, x, h)
            se()
            return h
    return forward


# --------------------------------------------------------------------------- the recorder


@dataclass
class _Installed:
    module: Any
    previous: Any                       # what hooks._set_forward returned


@dataclass
class DeepOps:
    """Plans, installs and removes the deep instrumentation of one run, and turns what it
    recorded into op statistics.

    ``spans`` is the session's span table (a list of
    :class:`energyprof.measure.attribution.SpanInfo`); :meth:`plan` appends one span per
    (module, op) to it.  ``make_hook(span_id, kind)`` returns the C hook callable
    (``_core.Hook``) for a span's begin (kind 0) or end (kind 1).
    """

    amap: Any
    spans: list
    qual_to_span: Dict[str, int]
    make_hook: Callable[[int, int], Any]
    op_span_ids: List[int] = field(default_factory=list)
    op_components: set = field(default_factory=set)
    unsupported: List[str] = field(default_factory=list)
    attention: str = "none"
    statistics: bool = field(default_factory=lambda: STATISTICS)
    stats_every: int = 1                # statistics on the 1st, (N+1)th, (2N+1)th ... call of each module
    head_groups: bool = field(default_factory=lambda: HEAD_GROUPS)
    sparse_below: float = field(default_factory=lambda: SPARSE_BELOW)   # ep.run(sparse_below=...)
    kill_below: float = field(default_factory=lambda: KILL_BELOW)       # ep.run(kill_below=...)
    _attn: List[Tuple[Any, _Marks]] = field(default_factory=list)
    _mlp: List[Tuple[Any, str, _Marks]] = field(default_factory=list)
    _norm: List[Tuple[Any, str, _Marks]] = field(default_factory=list)
    _installed: List[_Installed] = field(default_factory=list)
    _previous_impl: Optional[str] = None
    _head_raw: Dict[int, list] = field(default_factory=dict)     # softmax span -> [tensor (3, H)]
    _act_raw: Dict[int, list] = field(default_factory=dict)      # op span -> [(5,) tensor or tuple]
    _ratio_raw: Dict[int, list] = field(default_factory=dict)    # parent span -> [tensor ()]
    _mask_memo: Optional[tuple] = None                            # (mask tensor, key, allowed array) of the last forward

    # ------------------------------------------------------------------ plan
    def _alloc(self, ref: Any, names: Sequence[str]) -> _Marks:
        from .attribution import SpanInfo

        if not self.statistics:
            names = [n for n in names if n != "stats"]
        parent = self.qual_to_span[ref.qualname]
        ops: Dict[str, Tuple[Any, Any]] = {}
        for op in names:
            sid = len(self.spans)
            comp = f"{ref.component}.{op}"
            self.spans.append(SpanInfo(layer=ref.layer, component=comp, parent_span=parent))
            self.op_span_ids.append(sid)
            self.op_components.add(comp)
            ops[op] = (self.make_hook(sid, _core.SPAN_BEGIN), self.make_hook(sid, _core.SPAN_END))
        return _Marks(layer=ref.layer, ops=ops, recorder=self, parent_span=parent)

    def plan(self) -> "DeepOps":
        """Allocate the op spans of every supported attention, MLP and norm module."""
        refs = [*self.amap.components, *self.amap.model_level]
        top = self.amap.top
        if supports_attention(top):
            self.attention = ATTN_IMPLEMENTATION
        else:
            self.unsupported.append(f"attention of {type(top).__name__} (not selected through AttentionInterface)")
        for ref in refs:
            if ref.qualname not in self.qual_to_span:
                continue
            comp = ref.component
            if comp == "attn" and self.attention != "none":
                if self.head_groups:
                    n_groups = self._n_groups(ref.module)
                    names = [f"g{g}.{op}" for g in range(n_groups) for op in ATTN_OPS if op != "stats"] + ["stats"]
                    m = self._alloc(ref, names)
                    m.groups = [{op: m.ops[f"g{g}.{op}"] for op in ATTN_OPS if op != "stats"}
                                for g in range(n_groups)]
                    if "stats" in m.ops:
                        m.stats_key = m.ops["stats"][0].span_id
                else:
                    m = self._alloc(ref, ATTN_OPS)
                    m.stats_key = m.ops["softmax"][0].span_id
                self._attn.append((ref.module, m))
            elif comp == "mlp":
                kind = _mlp_kind(ref.module)
                if kind is None:
                    self.unsupported.append(f"mlp {type(ref.module).__name__} ({ref.qualname})")
                    continue
                names = MLP_OPS if kind in ("gated", "gate_up") else ("act", "stats")
                m = self._alloc(ref, names)
                m.stats_key = m.parent_span
                self._mlp.append((ref.module, kind, m))
            elif comp.endswith("norm"):
                kind = _norm_kind(ref.module)
                if kind is None:
                    self.unsupported.append(f"norm {type(ref.module).__name__} ({ref.qualname})")
                    continue
                m = self._alloc(ref, NORM_OPS)
                m.stats_key = m.parent_span
                self._norm.append((ref.module, kind, m))
        seen = set()
        self.unsupported = [u for u in self.unsupported if not (u.split(" (")[0] in seen or seen.add(u.split(" (")[0]))]
        return self

    def _n_groups(self, attn: Any) -> int:
        cfg = getattr(self.amap.top, "config", None)
        n_heads = int(getattr(cfg, "num_attention_heads", 0) or getattr(attn, "num_heads", 0) or 1)
        n_rep = int(getattr(attn, "num_key_value_groups", 1) or 1)
        return max(1, n_heads // n_rep)

    # ------------------------------------------------------------------ install / remove
    def install(self) -> None:
        """Switch attention to energyprof's function and wrap the MLP and norm forwards."""
        try:
            if self._attn:
                register_attention()
                top = self.amap.top
                self._previous_impl = getattr(top.config, "_attn_implementation", None)
                for mod, marks in self._attn:
                    _ATTN_MARKS[id(mod)] = marks
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        top.set_attn_implementation(ATTN_IMPLEMENTATION)
                except Exception as e:  # the model refuses: keep its attention, say so, go on with the rest
                    for mod, _ in self._attn:
                        _ATTN_MARKS.pop(id(mod), None)
                    self._previous_impl = None
                    self.attention = "none"
                    self.unsupported.append(f"attention of {type(top).__name__} (set_attn_implementation: {e})")
                    warnings.warn(f"energyprof: deep mode cannot time the ops inside attention: {e}", RuntimeWarning)
                    self._attn = []
                    self.op_components = {c for c in self.op_components if not c.startswith("attn.")}
            for mod, kind, marks in self._mlp:
                self._wrap(mod, _make_mlp_forward(mod, kind, marks))
            for mod, kind, marks in self._norm:
                self._wrap(mod, _make_norm_forward(mod, kind, marks))
        except BaseException:
            self.uninstall()
            raise

    def _wrap(self, mod: Any, fwd: Callable) -> None:
        # instance attribute: this module only, removed on uninstall
        self._installed.append(_Installed(mod, _set_forward(mod, fwd)))

    def uninstall(self) -> None:
        """Restore every forward and the original attention implementation (idempotent)."""
        errors: List[BaseException] = []
        while self._installed:
            inst = self._installed.pop()
            try:
                _restore_forward(inst.module, inst.previous)
            except Exception as e:
                errors.append(e)
        for mod, _ in self._attn:
            _ATTN_MARKS.pop(id(mod), None)
        self._mask_memo = None
        if self._previous_impl is not None:
            impl, self._previous_impl = self._previous_impl, None
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.amap.top.set_attn_implementation(impl)
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]

    # ------------------------------------------------------------------ statistics (one pass in C on CPU; device tensors, no sync, elsewhere)
    def _allowed(self, attention_mask: Any) -> Any:
        """Where the mask lets a key through (bool tensor), or None."""
        import torch

        if attention_mask is None:
            return None
        if attention_mask.is_floating_point():
            return attention_mask > torch.finfo(attention_mask.dtype).min / 2
        return attention_mask.bool()

    def _allowed_np(self, attention_mask: Any, shape: tuple) -> Optional[np.ndarray]:
        """:meth:`_allowed` as a C-contiguous bool array (B, 1 or H, Q, K) for
        ``_core.attention_stats``.  Every layer of a forward gets the same mask tensor, so
        the last answer is kept for it (same object, same in-place version, same shape)."""
        if attention_mask is None:
            return None
        key = (getattr(attention_mask, "_version", None), shape)
        memo = self._mask_memo
        if memo is not None and memo[0] is attention_mask and memo[1] == key:
            return memo[2]
        allowed = self._allowed(attention_mask)
        b, h, q, k = shape
        if allowed.dim() == 4 and allowed.shape[1] in (1, h):
            a = allowed.expand(b, allowed.shape[1], q, k).contiguous().numpy()
        else:
            a = allowed.expand(b, h, q, k).contiguous().numpy()
        self._mask_memo = (attention_mask, key, a)
        return a

    def _attn_stats(self, marks: _Marks, w: Any, attention_mask: Any) -> None:
        """Head statistics from the probabilities ``w`` the attention computed (no softmax of its own)."""
        k = marks.calls_seen
        marks.calls_seen = k + 1
        if k % self.stats_every:
            return
        v = _cpu_view(w)
        if v is not None and v.dtype == np.float32 and v.ndim == 4 and v.size:   # one C pass, in place
            a = self._allowed_np(attention_mask, v.shape)
            heads, all5 = _core.attention_stats(v, a, self.sparse_below)
            self._head_raw.setdefault(marks.stats_key, []).append(heads)
            self._act_raw.setdefault(marks.stats_key, []).append(all5)
            return
        import torch

        with torch.no_grad():
            p = w.detach()
            if p.dtype != torch.float32:
                p = p.float()                                        # (B, H, Q, K)
            ent = torch.special.entr(p).sum(-1)                      # -p log p, 0 at p = 0
            row_max = p.amax(-1)                                     # (B, H, Q)
            small = p < self.sparse_below
            allowed = self._allowed(attention_mask)
            if allowed is None:
                n_allowed = float(p.shape[0] * p.shape[2] * p.shape[3])
                sparse = small.sum(dim=(0, 2, 3)) / n_allowed
            else:
                # the mask is (B, 1 or H, Q, K): count it once, not once per head
                allowed = allowed.expand(p.shape[0], allowed.shape[1], p.shape[2], p.shape[3])
                n_allowed = allowed.sum(dim=(0, 2, 3)).clamp_min(1)
                sparse = (small & allowed).sum(dim=(0, 2, 3)) / n_allowed
            sparse = sparse.to(torch.float32).expand(p.shape[1])
            st = torch.stack([ent.mean(dim=(0, 2)), row_max.mean(dim=(0, 2)), sparse,
                              torch.full_like(sparse, float(p.shape[0] * p.shape[2]))])
            self._head_raw.setdefault(marks.stats_key, []).append(st)
            self._act_raw.setdefault(marks.stats_key, []).append(tensor_stats(p, self.sparse_below))

    def _kill_stats(self, marks: _Marks, a: Any) -> None:
        k = marks.calls_seen
        marks.calls_seen = k + 1
        if k % self.stats_every:
            return
        st = _core.tensor_stats_of(a, self.kill_below)      # a contiguous CPU float tensor, in place
        if st is None:
            import torch

            with torch.no_grad():
                st = fast_stats(a, self.kill_below)
        sid = marks.ops["act"][0].span_id
        self._act_raw.setdefault(sid, []).append(st)
        self._ratio_raw.setdefault(marks.stats_key, []).append(st[3])

    def _variance_stats(self, marks: _Marks, x: Any, out: Any) -> None:
        k = marks.calls_seen
        marks.calls_seen = k + 1
        if k % self.stats_every:
            return
        r = _core.variance_ratio_of(x, out)                 # both contiguous CPU float tensors, in place
        if r is not None:
            self._ratio_raw.setdefault(marks.stats_key, []).append(r)
            return
        import torch

        vx, vo = _cpu_view(x), _cpu_view(out)
        if vx is not None and vo is not None:
            self._ratio_raw.setdefault(marks.stats_key, []).append(_core.token_variance(vo) / _core.token_variance(vx))
            return
        with torch.no_grad():
            vi = _token_variance(x)
            vo = _token_variance(out)
            self._ratio_raw.setdefault(marks.stats_key, []).append(vo / vi)

    # ------------------------------------------------------------------ finish
    def finish(self, calls: np.ndarray, span_ids: np.ndarray, act_stats: Dict[int, list]) -> Tuple[np.ndarray, dict]:
        """Turn the recorded tensors into numbers.

        ``calls`` and ``span_ids`` are the run's calls and the span id of each row (same
        order).  Adds the op activation statistics to ``act_stats`` (span id -> float64 rows
        (mean, std, max, sparsity, mean |x|), one per sampled call, the session's format) and returns the
        per-head rows (:data:`HEAD_DTYPE`) and the ``summary["deep"]`` dict.
        """
        import torch

        for sid, lst in self._act_raw.items():
            act_stats[sid] = stats_rows(lst)
        # per-head rows: the (k * stats_every)-th softmax call of a layer <- its k-th stats record
        rows = []
        for sid, lst in self._head_raw.items():
            if not lst:
                continue
            st = np.stack([np.asarray(r.detach().cpu().double().numpy() if isinstance(r, torch.Tensor) else r,
                                      dtype=np.float64) for r in lst])   # (records, 4, H)
            idx = np.flatnonzero(span_ids == sid)[::self.stats_every]
            n = min(len(idx), len(st))
            h = st.shape[2]
            c = calls[idx[:n]]
            r = np.zeros(n * h, HEAD_DTYPE)                 # record-major, heads within a record
            for f in ("call_id", "layer", "step"):
                r[f] = np.repeat(c[f], h)
            r["head"] = np.tile(np.arange(h), n)
            for j, f in enumerate(("entropy", "max_weight", "sparsity")):
                r[f] = st[:n, j].reshape(-1)
            r["n_queries"] = st[:n, 3].reshape(-1).astype(np.int64)
            rows.append(r)
        heads = np.concatenate(rows) if rows else np.zeros(0, HEAD_DTYPE)
        ratios: Dict[int, np.ndarray] = {}
        for sid, lst in self._ratio_raw.items():
            ratios[sid] = stats_rows(lst, 1).reshape(-1)
        mlp = []
        for mod, kind, marks in self._mlp:
            v = ratios.get(marks.stats_key, np.zeros(0))
            mlp.append({"layer": marks.layer, "kind": kind, "calls": int(len(v)),
                        "kill_ratio": float(v.mean()) if len(v) else float("nan")})
        norms = []
        for mod, kind, marks in self._norm:
            v = ratios.get(marks.stats_key, np.zeros(0))
            comp = self.spans[marks.parent_span].component
            norms.append({"layer": marks.layer, "component": comp, "kind": kind, "calls": int(len(v)),
                          "variance_ratio": float(v.mean()) if len(v) else float("nan")})
        summary = {
            "attention": self.attention,
            "ops": sorted(self.op_components),
            "unsupported": list(self.unsupported),
            "heads": head_summary(heads),
            "mlp": mlp,
            "norms": norms,
            "sparse_below": float(self.sparse_below),
            "kill_below": float(self.kill_below),
            "stats_every": int(self.stats_every),
        }
        return heads, summary


def head_summary(heads: np.ndarray) -> List[dict]:
    """Per (layer, head): attention entropy, max weight and sparsity averaged over calls (query-weighted)."""
    out: List[dict] = []
    if len(heads) == 0:
        return out
    order = np.lexsort((heads["head"], heads["layer"]))
    h = heads[order]
    first = np.flatnonzero(np.r_[True, (h["layer"][1:] != h["layer"][:-1]) | (h["head"][1:] != h["head"][:-1])])
    counts = np.diff(np.r_[first, len(h)])
    w = h["n_queries"].astype(np.float64)
    w_sum = np.add.reduceat(w, first)
    no_w = np.repeat(w_sum <= 0, counts)
    w = np.where(no_w, 1.0, w)                      # a group without queries: plain mean
    w_sum = np.add.reduceat(w, first)
    avg = {f: np.add.reduceat(h[f].astype(np.float64) * w, first) / w_sum
           for f in ("entropy", "max_weight", "sparsity")}
    for g, i in enumerate(first.tolist()):
        out.append({
            "layer": int(h["layer"][i]), "head": int(h["head"][i]), "calls": int(counts[g]),
            "entropy": float(avg["entropy"][g]), "max_weight": float(avg["max_weight"][g]),
            "sparsity": float(avg["sparsity"][g]),
        })
    return out


#: One row per (layer, op) of :func:`op_summary`.
OP_SUMMARY_DTYPE = np.dtype(
    [
        ("layer", "<i4"),
        ("parent", "U32"),            # the component the op is inside (attn, mlp, input_norm, ...)
        ("op", "U32"),                # the op row's component (attn.softmax, mlp.act, ...)
        ("n_calls", "<i8"),
        ("energy_j", "<f8"),          # total over calls
        ("duration_s", "<f8"),
        ("share_of_parent", "<f8"),   # energy_j / the parent component's energy over the same calls
    ]
)


def op_summary(run: Any) -> np.ndarray:
    """Energy per (layer, op) of a deep run (a live session or ``ep.load(run_id)``), with its
    share of the enclosing component's energy; rows sorted by layer, parent and op.

    The parent's energy is summed over the parent calls that contain at least one of the
    op's calls, so a share is "of the attention / MLP / norm calls this op ran in".
    """
    ops = run.ops
    out = np.zeros(0, OP_SUMMARY_DTYPE)
    if len(ops) == 0:
        return out
    parents = np.concatenate([run.layers, run.components])
    e_by_id = dict(zip(parents["call_id"].tolist(), parents["energy_j"].tolist()))
    keys = sorted(set(zip(ops["layer"].tolist(), ops["component"].tolist())),
                  key=lambda k: (k[0], k[1].split(".")[0], k[1]))
    out = np.zeros(len(keys), OP_SUMMARY_DTYPE)
    for i, (layer, comp) in enumerate(keys):
        sel = ops[(ops["layer"] == layer) & (ops["component"] == comp)]
        pe = sum(e_by_id.get(p, np.nan) for p in set(sel["parent_id"].tolist()))
        out[i] = (layer, comp.split(".")[0], comp, len(sel), sel["energy_j"].sum(), sel["duration_s"].sum(),
                  sel["energy_j"].sum() / pe if pe else np.nan)
    return out
