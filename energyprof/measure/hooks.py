"""C forward hooks on torch modules: :class:`HookSet` puts energyprof's C callables
(``_core.Hook`` or ``_core.wrap_forward``) on modules and takes them off again.

Each hooked module call appends two events to a :class:`energyprof._core.SpanBuffer`:
``(t_ns, span_id, 0)`` when the module's forward starts and ``(t_ns, span_id, 1)``
when it ends, with ``t_ns`` from :func:`energyprof._core.now_ns`.  The C callables
create no Python objects per call; see docs/hooks.md for the costs and the sync modes.

>>> import torch
>>> from energyprof import _core
>>> from energyprof.measure.hooks import HookSet
>>> lin = torch.nn.Linear(4, 4)
>>> buf = _core.SpanBuffer()
>>> with HookSet(buf) as hs:
...     hs.add(lin, span_id=7)
...     _ = lin(torch.ones(1, 4))
>>> buf.drain()[["span_id", "kind"]].tolist()
[(7, 0), (7, 1)]
"""
from __future__ import annotations

import functools
import inspect
import weakref
from typing import Any, Callable, List, Optional, Tuple

from .. import _core
from .._dtypes import component_group

__all__ = ["HookSet", "load_shim", "SYNC_MODES", "METHODS"]

SYNC_MODES = ("none", "device")
METHODS = ("hooks", "wrap")

_MISSING = object()


#: component name -> its ``_core.COMP_*`` code (names are few: the canonical ones and ``expert.N``).
_COMPONENT_CODES: dict = {}


def component_code(component: Optional[str]) -> int:
    """The ``_core.COMP_*`` code of a canonical component name (``None``: inherit)."""
    if component is None:
        return _core.COMP_INHERIT
    code = _COMPONENT_CODES.get(component)
    if code is None:
        group = component_group(component)
        code = {"attn": _core.COMP_ATTN, "mlp": _core.COMP_MLP}.get(group, _core.COMP_OTHER)
        if isinstance(component, str) and len(_COMPONENT_CODES) < 4096:
            _COMPONENT_CODES[component] = code
    return code


#: id(module class) -> (weak reference to the class, whether it has no data descriptor named
#: ``forward``, so the instance ``__dict__`` entry is what ``module.forward`` finds).
_PLAIN_SETATTR: dict = {}


def _plain_setattr(cls: type) -> bool:
    """Whether ``module.forward = f`` on an instance of ``cls`` only stores ``f`` in its
    ``__dict__``: torch's own ``Module.__setattr__`` (not a subclass's) and no data
    descriptor named ``forward`` on the class (checked once per class)."""
    module_cls = _torch_module()
    if cls.__setattr__ is not module_cls.__setattr__:   # looked up each time: a class may be patched
        return False
    hit = _PLAIN_SETATTR.get(id(cls))
    if hit is not None and hit[0]() is cls:
        return hit[1]
    attr = inspect.getattr_static(cls, "forward", None)
    ok = not hasattr(type(attr), "__set__") and not hasattr(type(attr), "__delete__")
    key = id(cls)
    # the entry goes with the class (torch.fx makes a class per GraphModule)
    _PLAIN_SETATTR[key] = (weakref.ref(cls, lambda _ref, k=key: _PLAIN_SETATTR.pop(k, None)), ok)
    return ok


def _set_forward(module: Any, forward: Any) -> Any:
    """Shadow ``module``'s forward with an instance attribute; returns what :func:`_restore_forward` needs.

    Where torch's ``Module.__setattr__`` would only store the value in the instance
    ``__dict__`` (no parameter, buffer or submodule named ``forward``), it is stored there
    directly, without that method's checks (about 2 µs a module on ep.run's enter)."""
    d = module.__dict__
    previous = d.get("forward", _MISSING)
    if (_plain_setattr(type(module)) and "forward" not in d.get("_parameters", ())
            and "forward" not in d.get("_buffers", ()) and "forward" not in d.get("_modules", ())):
        d["forward"] = forward
    else:
        module.forward = forward
    return previous


def _restore_forward(module: Any, previous: Any) -> None:
    """Undo :func:`_set_forward`: the instance's own forward back, or none (the class's again)."""
    if previous is _MISSING:
        module.__dict__.pop("forward", None)
    else:
        module.__dict__["forward"] = previous


def load_shim(path: Optional[str] = None, search: bool = True) -> dict:
    """Resolve ``torch::cuda::synchronize`` / ``torch::mps::synchronize`` for the C hooks.

    ``path``: a library to search first (e.g. ``.../torch/lib/libtorch_cuda.so``);
    without it the process and every loaded ``libtorch*`` library are searched.
    Returns ``{"cuda": origin or None, "mps": origin or None}`` where origin is the
    file that defines the symbol.  ``search=False`` looks in ``path`` only
    (``load_shim(None, search=False)`` unloads).  Replaces what an earlier call found.
    """
    return _core.torchshim_load(path, search=search)


def _sync_plan(device: Any) -> Tuple[int, int, Optional[Callable[[], Any]]]:
    """(SYNC_* kind, device index, Python fallback) for a torch.device."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        # -1 = the current device, as libtorch's torch::cuda::synchronize(-1) means.
        index = -1 if dev.index is None else int(dev.index)
        return _core.SYNC_CUDA, index, functools.partial(torch.cuda.synchronize, dev)
    if dev.type == "mps":
        return _core.SYNC_MPS, 0, torch.mps.synchronize
    return _core.SYNC_NONE, 0, None


def _module_device(module: Any) -> Any:
    """The device of the module's first parameter or buffer (cpu when it has none)."""
    import torch

    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def _torch_module() -> type:
    """``torch.nn.Module`` (torch is imported on first use, not with this module)."""
    import torch

    return torch.nn.Module


def _supports_always_call() -> bool:
    import torch

    return "always_call" in inspect.signature(torch.nn.Module.register_forward_hook).parameters


class HookSet:
    """energyprof's C hooks on a set of torch modules, removed together.

    Parameters
    ----------
    buffer:
        The :class:`energyprof._core.SpanBuffer` the events go to.
    sync:
        ``"none"``: timestamps as the hooks run (GPU work may still be queued);
        ``"device"``: the device's synchronize runs before every timestamp
        (libtorch shim, else ``torch.cuda.synchronize`` / ``torch.mps.synchronize``);
        no-op for a cpu device.
    device:
        The ``torch.device`` to synchronize; ``None`` takes the device of the first
        module added.
    activity:
        Raise the process-wide activity level while a hooked module runs (the
        synthetic source's ``active_w`` follows it).
    method:
        ``"hooks"``: ``register_forward_pre_hook`` + ``register_forward_hook``
        (``always_call=True``, so the end is recorded when forward raises);
        ``"wrap"``: ``module.forward`` replaced by a C wrapper (instance attribute,
        restored by :meth:`remove`), which skips torch's hook dispatch.
    """

    def __init__(
        self,
        buffer: "_core.SpanBuffer",
        sync: str = "none",
        device: Any = None,
        activity: bool = True,
        method: str = "hooks",
    ) -> None:
        if not isinstance(buffer, _core.SpanBuffer):
            raise TypeError(f"HookSet: buffer must be an energyprof._core.SpanBuffer, not {type(buffer).__name__}")
        if sync not in SYNC_MODES:
            raise ValueError(f"HookSet: sync must be one of {SYNC_MODES}, got {sync!r}")
        if method not in METHODS:
            raise ValueError(f"HookSet: method must be one of {METHODS}, got {method!r}")
        self.buffer = buffer
        self.sync = sync
        self.device = device
        self.activity = bool(activity)
        self.method = method
        self._plan: Optional[Tuple[int, int, Optional[Callable[[], Any]]]] = None
        self._handles: List[Any] = []                 # torch RemovableHandles (method="hooks")
        self._wrapped: List[Tuple[Any, Any]] = []     # (module, previous instance forward or _MISSING)
        self._callables: List[Any] = []               # the C Hook / ForwardWrapper objects
        self._always_call: Optional[bool] = None

    # ------------------------------------------------------------------ set-up
    def _sync_args(self, module: Any) -> Tuple[int, int, Optional[Callable[[], Any]]]:
        if self._plan is None:
            if self.sync == "none":
                self._plan = (_core.SYNC_NONE, 0, None)
            else:
                device = self.device if self.device is not None else _module_device(module)
                self._plan = _sync_plan(device)
                kind = {_core.SYNC_CUDA: "cuda", _core.SYNC_MPS: "mps"}.get(self._plan[0])
                if kind is not None and _core.torchshim_info()[kind] is None:
                    # Never loaded (or not found before): look in the process and in
                    # torch's loaded libraries; the Python fallback covers a miss.
                    load_shim()
        return self._plan

    def add(self, module: Any, span_id: int, component: Optional[str] = None, boundary: bool = False,
            stats: Optional[dict] = None) -> None:
        """Record ``span_id`` begin/end events around every call of ``module``.

        ``component``: the module's canonical name (``"q_proj"``, ``"mlp"``, ``"layer"``, ...);
        with ``activity`` its group goes on the component stack that the synthetic source's
        ``attn_w`` / ``mlp_w`` follow (``None``: the enclosing call's kind).  ``boundary``: read the
        boundary target's source (``_core.Sampler.set_boundary_target``) at each begin and end, in C.
        ``stats`` (``method="wrap"`` only): ``_core.wrap_forward``'s statistics options
        (``stats_every``, ``small_below``, ``tensor_type``, ``stats_fallback``), so the wrapper takes the
        output's activation statistics itself (mode="deep", :class:`energyprof.measure.deep.ActivationStats`).
        """
        if not isinstance(module, _torch_module()):
            raise TypeError(f"HookSet.add: expected a torch.nn.Module, got {type(module).__name__}")
        kind, index, fallback = self._plan if self._plan is not None else self._sync_args(module)
        if stats is not None and self.method != "wrap":
            raise ValueError("HookSet.add: stats= needs method='wrap' (forward hooks take them in Python)")
        if self.method == "wrap":
            # positional arguments: _core parses them several times faster than keywords
            wrapper = _core.wrap_forward(self.buffer, span_id, module.forward, self.activity, kind, index, fallback,
                                         component_code(component), bool(boundary), **(stats or {}))
            # Instance attribute: shadows the class's forward for this module only.
            self._wrapped.append((module, _set_forward(module, wrapper)))
            self._callables.append(wrapper)
            return
        common = dict(activity=self.activity, sync=kind, sync_index=index, sync_fallback=fallback,
                      component=component_code(component), boundary=bool(boundary))
        if self._always_call is None:
            self._always_call = _supports_always_call()
        pre = _core.Hook(self.buffer, span_id, _core.SPAN_BEGIN, **common)
        post = _core.Hook(self.buffer, span_id, _core.SPAN_END, **common)
        extra = {"always_call": True} if self._always_call else {}
        h1 = module.register_forward_pre_hook(pre, prepend=False)
        try:
            h2 = module.register_forward_hook(post, prepend=False, **extra)
        except BaseException:
            h1.remove()
            raise
        self._handles += [h1, h2]
        self._callables += [pre, post]

    # ------------------------------------------------------------------ tear-down
    def remove(self) -> None:
        """Take every hook / wrapper off (idempotent; safe after a partial add)."""
        errors: List[BaseException] = []
        while self._handles:
            h = self._handles.pop()
            try:
                h.remove()
            except Exception as e:  # keep removing the others
                errors.append(e)
        # Reverse order, so a module wrapped twice gets its original forward back.
        wrapped, self._wrapped = self._wrapped, []
        for k in range(len(wrapped) - 1, -1, -1):
            module, previous = wrapped[k]
            try:
                _restore_forward(module, previous)
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]

    @property
    def callables(self) -> Tuple[Any, ...]:
        """The C hook / wrapper objects added so far (``enabled``, ``calls``, ``syncing``)."""
        return tuple(self._callables)

    @property
    def active(self) -> bool:
        """True while something is installed."""
        return bool(self._handles or self._wrapped)

    def __len__(self) -> int:
        return len(self._handles) // 2 + len(self._wrapped)

    def __enter__(self) -> "HookSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.remove()
        return False
