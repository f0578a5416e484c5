"""The C span buffer, _core.Hook, _core.wrap_forward and energyprof.measure.hooks.HookSet."""
from __future__ import annotations

import inspect
import sys
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from energyprof import _core
from energyprof._dtypes import EVENT_DTYPE
from energyprof._reference import SpanBufferRef
from energyprof.measure.hooks import HookSet

METHODS = ["hooks", "wrap"]


@pytest.fixture(autouse=True)
def _activity_zero():
    _core.set_activity(0)
    yield
    _core.set_activity(0)


# ------------------------------------------------------------------ span buffer


def test_event_dtype_matches_shared_dtype():
    assert _core.EVENT_DTYPE == EVENT_DTYPE
    assert _core.EVENT_DTYPE.itemsize == EVENT_DTYPE.itemsize == 16
    assert [_core.EVENT_DTYPE.fields[n][1] for n in EVENT_DTYPE.names] == [0, 8, 12]


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(-(2**62), 2**62), st.integers(-(2**31), 2**31 - 1),
                  st.integers(0, 1)),
        st.tuples(st.just("drain")),
        st.tuples(st.just("clear")),
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(capacity=st.integers(1, 12), ops=_ops)
def test_spanbuffer_matches_python_twin(capacity, ops):
    buf = _core.SpanBuffer(capacity)
    ref = SpanBufferRef(capacity)
    for op in ops:
        if op[0] == "append":
            assert buf._append(*op[1:]) == ref.append(*op[1:])
        elif op[0] == "drain":
            got, want = buf.drain(), ref.drain()
            assert got.dtype == EVENT_DTYPE
            np.testing.assert_array_equal(got, want)
        else:
            buf.clear()
            ref.clear()
        assert len(buf) == len(ref)
        assert buf.dropped == ref.dropped
    np.testing.assert_array_equal(buf.drain(), ref.drain())


def test_spanbuffer_grows_past_first_allocation_in_order():
    n = 20000  # > the first C allocation (4096 events)
    buf = _core.SpanBuffer(n)
    for i in range(n + 5):
        buf._append(i * 3, i % 11, i & 1)
    assert len(buf) == n and buf.dropped == 5
    out = buf.drain()
    np.testing.assert_array_equal(out["t_ns"], np.arange(n, dtype=np.int64) * 3)
    np.testing.assert_array_equal(out["span_id"], np.arange(n) % 11)
    np.testing.assert_array_equal(out["kind"], np.arange(n) & 1)


def test_drain_returns_an_array_owned_by_numpy():
    buf = _core.SpanBuffer(4)
    buf._append(5, 1, 0)
    out = buf.drain()
    assert out.flags.owndata and out.base is None and out.flags.writeable
    out["t_ns"][0] = 99  # a copy: nothing shared with the buffer
    buf._append(6, 1, 1)
    assert buf.drain()["t_ns"].tolist() == [6]
    assert len(buf.drain()) == 0


def test_spanbuffer_rejects_bad_capacity():
    with pytest.raises(ValueError, match="capacity"):
        _core.SpanBuffer(0)
    assert _core.SpanBuffer().capacity == 1 << 22


# ------------------------------------------------------------------ module trees


class Tree(torch.nn.Module):
    """root -> [a: Linear, b: Sequential(ReLU, Linear), c: Linear]; b's Linear is called twice."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(8, 8)
        self.b = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(8, 8))
        self.c = torch.nn.Linear(8, 4)

    def forward(self, x):
        x = self.a(x)
        x = self.b(x)
        x = self.b[1](x)
        return self.c(x)


def _spans(tree):
    return {tree: 0, tree.a: 1, tree.b: 2, tree.b[0]: 3, tree.b[1]: 4, tree.c: 5}


def _expected_order():
    # Independent oracle: the call nesting of Tree.forward written out by hand.
    b, e = 0, 1
    return [(0, b), (1, b), (1, e), (2, b), (3, b), (3, e), (4, b), (4, e), (2, e), (4, b), (4, e), (5, b), (5, e),
            (0, e)]


@pytest.mark.parametrize("method", METHODS)
def test_events_in_order_with_span_ids_and_kinds(method):
    tree = Tree()
    x = torch.randn(3, 8)
    buf = _core.SpanBuffer()
    t0 = _core.now_ns()
    with HookSet(buf, method=method) as hs:
        for m, sid in _spans(tree).items():
            hs.add(m, sid)
        tree(x)
        tree(x)
    t1 = _core.now_ns()
    ev = buf.drain()
    assert list(zip(ev["span_id"].tolist(), ev["kind"].tolist())) == _expected_order() * 2
    assert np.all(np.diff(ev["t_ns"]) >= 0)
    assert t0 <= ev["t_ns"][0] and ev["t_ns"][-1] <= t1
    calls = [h.calls for h in hs.callables]
    if method == "hooks":  # pre and post hook per module; b[1] runs twice per forward
        assert calls == [2, 2, 2, 2, 2, 2, 2, 2, 4, 4, 2, 2]
    else:
        assert calls == [2, 2, 2, 2, 4, 2]


@pytest.mark.parametrize("method", METHODS)
def test_activity_level_follows_nesting_and_returns_to_zero(method):
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(_core.activity())
            return x

    outer = torch.nn.Sequential(Probe(), torch.nn.Sequential(Probe()))
    buf = _core.SpanBuffer()
    with HookSet(buf, method=method) as hs:
        hs.add(outer, 0)
        hs.add(outer[0], 1)
        hs.add(outer[1], 2)
        hs.add(outer[1][0], 3)
        outer(torch.zeros(1))
        assert _core.activity() == 0
    assert seen == [2, 3]  # depth of hooked modules around each Probe
    assert _core.activity() == 0

    with HookSet(buf, method=method, activity=False) as hs:
        hs.add(outer, 0)
        outer(torch.zeros(1))
    assert seen[-1] == 0


def test_hook_accepts_any_call_signature_and_returns_none():
    buf = _core.SpanBuffer()
    h = _core.Hook(buf, 3, _core.SPAN_BEGIN, activity=False)
    assert h() is None
    assert h(1, (2,)) is None
    assert h(1, (2,), {"k": 1}, 4, extra=5) is None
    assert h.calls == 3 and h.enabled and h.kind == 0 and h.span_id == 3 and h.buffer is buf
    assert buf.drain()[["span_id", "kind"]].tolist() == [(3, 0)] * 3
    with pytest.raises(ValueError):
        _core.Hook(buf, 1, 2)
    with pytest.raises(TypeError):
        _core.Hook(object(), 1, 0)
    with pytest.raises(ValueError):
        _core.Hook(buf, 1, 0, sync=7)


def test_hooks_work_with_kwargs_variants():
    lin = torch.nn.Linear(4, 4)
    buf = _core.SpanBuffer()
    pre = _core.Hook(buf, 1, _core.SPAN_BEGIN)
    post = _core.Hook(buf, 1, _core.SPAN_END)
    x = torch.randn(2, 4)
    want = lin(x)
    h1 = lin.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = lin.register_forward_hook(post, with_kwargs=True)
    try:
        got = lin(input=x)
    finally:
        h1.remove()
        h2.remove()
    assert torch.equal(got, want)
    assert buf.drain()[["span_id", "kind"]].tolist() == [(1, 0), (1, 1)]
    assert _core.activity() == 0


@pytest.mark.parametrize("method", METHODS)
def test_removed_on_exit_even_when_body_raises_and_output_unchanged(method):
    tree = Tree()
    x = torch.randn(5, 8)
    before = tree(x)
    buf = _core.SpanBuffer()
    with pytest.raises(KeyError):
        with HookSet(buf, method=method) as hs:
            for m, sid in _spans(tree).items():
                hs.add(m, sid)
            during = tree(x)
            raise KeyError("body failed")
    assert not hs.active and len(hs) == 0
    for m in tree.modules():
        assert not m._forward_pre_hooks and not m._forward_hooks
        assert "forward" not in m.__dict__
    assert torch.equal(during, before)
    assert torch.equal(tree(x), before)
    hs.remove()  # idempotent
    assert _core.activity() == 0


def test_wrap_restores_a_previous_instance_forward():
    lin = torch.nn.Linear(2, 2)
    custom = lin.forward  # a bound method stored as an instance attribute, as accelerate does
    lin.forward = custom
    with HookSet(_core.SpanBuffer(), method="wrap") as hs:
        hs.add(lin, 0)
        hs.add(lin, 1)  # wrapped twice
        assert lin.forward.__wrapped__.__wrapped__ is custom
    assert lin.__dict__["forward"] is custom


class _SetattrSpy(torch.nn.Linear):
    """A module whose own __setattr__ must still see the wrapper go on (and nothing else)."""
    seen: list = []

    def __setattr__(self, name, value):
        type(self).seen.append(name)
        super().__setattr__(name, value)


class _ForwardProperty(torch.nn.Module):
    """forward as a data descriptor: assigning to it must go through its setter."""

    def __init__(self):
        super().__init__()
        self.set_to = []

    def _fwd(self, x):
        return x + 1

    def _set(self, value):
        self.set_to.append(value)

    forward = property(lambda self: self.__dict__.get("_f", self._fwd), _set)


def test_wrap_stores_the_forward_the_way_setattr_would():
    """HookSet.add writes the wrapper into the instance __dict__ only where torch's
    Module.__setattr__ would do no more; a class's own __setattr__ (also one patched on after
    a first add), a forward property's setter, and a submodule named ``forward`` see the
    assignment as before.  Oracle: what plain ``module.forward = w`` does in each case."""
    buf = _core.SpanBuffer()
    lin = torch.nn.Linear(2, 2)
    with HookSet(buf, method="wrap") as hs:
        hs.add(lin, 0)
        assert "forward" in lin.__dict__ and lin.forward.__wrapped__ == torch.nn.Linear.forward.__get__(lin)
    assert "forward" not in lin.__dict__
    _SetattrSpy.seen = []
    spy = _SetattrSpy(2, 2)
    _SetattrSpy.seen = []
    with HookSet(buf, method="wrap") as hs:
        hs.add(spy, 0)
    assert _SetattrSpy.seen == ["forward"]
    # the class's __setattr__ is looked up every time: one patched on later is seen
    calls = []

    class Later(torch.nn.Linear):
        pass

    with HookSet(buf, method="wrap") as hs:
        hs.add(Later(2, 2), 0)          # the plain path, remembered for the class
    Later.__setattr__ = lambda self, name, value: (calls.append(name), torch.nn.Module.__setattr__(self, name, value))
    later = Later(2, 2)
    calls.clear()
    with HookSet(buf, method="wrap") as hs:
        hs.add(later, 0)
    assert calls == ["forward"]
    prop = _ForwardProperty()
    with HookSet(buf, method="wrap") as hs:
        hs.add(prop, 0)
    assert len(prop.set_to) == 1 and "forward" not in prop.__dict__
    # a submodule named "forward": torch refuses a non-module value there, so does add
    odd = torch.nn.Module()
    odd._modules["forward"] = torch.nn.Identity()
    with HookSet(buf, method="wrap") as hs, pytest.raises(TypeError, match="child module 'forward'"):
        hs.add(odd, 0)


def test_plain_setattr_memory_goes_with_its_class():
    """The per-class note of _plain_setattr is dropped when the class is freed (torch.fx makes
    one class per GraphModule), so a later class at the same address is looked at afresh."""
    import gc

    from energyprof.measure import hooks

    def make():
        cls = type("Tmp", (torch.nn.Linear,), {})
        with HookSet(_core.SpanBuffer(), method="wrap") as hs:
            hs.add(cls(2, 2), 0)
        return id(cls)

    key = make()
    gc.collect()
    assert key not in hooks._PLAIN_SETATTR


def test_component_codes_of_the_canonical_names():
    """component_code (remembered per name) against the groups written out by hand."""
    from energyprof.measure.hooks import component_code

    want = {"q_proj": _core.COMP_ATTN, "attn": _core.COMP_ATTN, "mlp": _core.COMP_MLP, "down_proj": _core.COMP_MLP,
            "expert.3": _core.COMP_MLP, "layer": _core.COMP_OTHER, "embed": _core.COMP_OTHER, None: _core.COMP_INHERIT}
    for _ in range(2):   # the second round is answered from the memory
        assert {c: component_code(c) for c in want} == want


def test_wrap_keeps_the_forward_signature_visible():
    lin = torch.nn.Linear(2, 2)
    with HookSet(_core.SpanBuffer(), method="wrap") as hs:
        hs.add(lin, 0)
        assert inspect.signature(lin.forward) == inspect.signature(torch.nn.Linear(2, 2).forward)


class Boom(torch.nn.Module):
    def forward(self, x):
        raise ZeroDivisionError("inside forward")


@pytest.mark.parametrize("method", METHODS)
def test_forward_exception_propagates_and_end_is_recorded(method):
    m = Boom()
    buf = _core.SpanBuffer()
    with HookSet(buf, method=method) as hs:
        hs.add(m, 9)
        with pytest.raises(ZeroDivisionError, match="inside forward") as ei:
            m(torch.zeros(1))
    assert ei.value.__traceback__ is not None
    assert buf.drain()[["span_id", "kind"]].tolist() == [(9, 0), (9, 1)]
    assert _core.activity() == 0
    assert "forward" not in m.__dict__


def test_wrap_forward_directly():
    buf = _core.SpanBuffer()
    seen = []

    def f(*args, **kwargs):
        seen.append((args, kwargs))
        return "result"

    w = _core.wrap_forward(buf, 4, f)
    assert w(1, 2, k=3) == "result" and seen == [((1, 2), {"k": 3})]
    assert w.__wrapped__ is f and w.calls == 1 and w.span_id == 4
    err = ValueError("x")

    def g():
        raise err

    wg = _core.wrap_forward(buf, 5, g)
    with pytest.raises(ValueError) as ei:
        wg()
    assert ei.value is err
    assert buf.drain()[["span_id", "kind"]].tolist() == [(4, 0), (4, 1), (5, 0), (5, 1)]
    with pytest.raises(TypeError):
        _core.wrap_forward(buf, 1, 42)


# ------------------------------------------------------------------ failures


@pytest.mark.parametrize("method", METHODS)
def test_overflow_counts_drops_and_never_raises(method):
    lin = torch.nn.Linear(3, 3)
    x = torch.randn(1, 3)
    buf = _core.SpanBuffer(capacity=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with HookSet(buf, method=method) as hs:
            hs.add(lin, 2)
            outs = [lin(x) for _ in range(10)]
    assert all(torch.equal(o, outs[0]) for o in outs)
    assert len(buf) == 5 and buf.dropped == 15
    assert all(h.enabled for h in hs.callables)
    assert buf.drain()[["span_id", "kind"]].tolist() == [(2, 0), (2, 1), (2, 0), (2, 1), (2, 0)]
    assert _core.activity() == 0


@pytest.mark.parametrize("method", METHODS)
def test_internal_error_disables_and_warns_once(method):
    tree = Tree()
    x = torch.randn(2, 8)
    want = tree(x)
    buf = _core.SpanBuffer()
    buf._inject_fault(_core.ERR_NOMEM)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        with HookSet(buf, method=method) as hs:
            for m, sid in _spans(tree).items():
                hs.add(m, sid)
            outs = [tree(x) for _ in range(3)]
    ours = [w for w in rec if "energyprof" in str(w.message)]
    assert len(ours) == 1 and issubclass(ours[0].category, RuntimeWarning)
    assert "out of memory" in str(ours[0].message)
    assert all(torch.equal(o, want) for o in outs)
    assert not any(h.enabled for h in hs.callables)
    assert len(buf) == 0 and buf.dropped == 0
    assert _core.activity() == 0


def test_warning_turned_into_error_never_breaks_the_forward(monkeypatch):
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: unraisable.append(u))
    lin = torch.nn.Linear(2, 2)
    x = torch.randn(1, 2)
    buf = _core.SpanBuffer()
    buf._inject_fault(_core.ERR_NOMEM)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with HookSet(buf) as hs:
            hs.add(lin, 0)
            y = lin(x)
    assert torch.equal(y, lin(x))
    assert len(unraisable) == 1 and issubclass(unraisable[0].exc_type, RuntimeWarning)


def test_reenable_after_clearing_the_fault():
    buf = _core.SpanBuffer()
    h = _core.Hook(buf, 1, 0, activity=False)
    buf._inject_fault(_core.ERR_NOMEM)
    with pytest.warns(RuntimeWarning):
        h()
    assert not h.enabled
    h()
    buf._inject_fault(0)
    h.enabled = True
    h()
    assert buf.drain()["span_id"].tolist() == [1] and h.calls == 3


def test_hookset_rejects_bad_arguments():
    buf = _core.SpanBuffer()
    with pytest.raises(TypeError):
        HookSet([])
    with pytest.raises(ValueError, match="sync"):
        HookSet(buf, sync="events")
    with pytest.raises(ValueError, match="method"):
        HookSet(buf, method="magic")
    with pytest.raises(TypeError):
        HookSet(buf).add(lambda x: x, 0)


def test_sync_device_on_cpu_is_no_sync():
    lin = torch.nn.Linear(2, 2)
    buf = _core.SpanBuffer()
    with HookSet(buf, sync="device") as hs:  # device taken from the module: cpu
        hs.add(lin, 0)
        lin(torch.zeros(1, 2))
    assert not any(h.syncing for h in hs.callables)
    assert len(buf.drain()) == 2


# ------------------------------------------------------------------ a tiny HF Llama


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("method", METHODS)
def test_tiny_llama_every_decoder_layer_two_events_per_call(method):
    model = _tiny_llama()
    ids = torch.randint(0, 128, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want_logits = model(ids).logits
        want_gen = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    forwards = []  # independent count of top-level forwards, by a plain Python hook
    counter = model.register_forward_pre_hook(lambda m, a: forwards.append(1))
    buf = _core.SpanBuffer()
    layers = list(model.model.layers)
    try:
        with HookSet(buf, method=method) as hs:
            for i, layer in enumerate(layers):
                hs.add(layer, 10 + i)
            with torch.no_grad():
                logits = model(ids).logits
                gen = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    finally:
        counter.remove()
    assert torch.equal(logits, want_logits) and torch.equal(gen, want_gen)
    ev = buf.drain()
    n_forwards = len(forwards)
    assert n_forwards >= 2
    for i in range(len(layers)):
        mine = ev[ev["span_id"] == 10 + i]
        assert len(mine) == 2 * n_forwards
        assert mine["kind"].tolist() == [0, 1] * n_forwards
    # layer 0 ends before layer 1 begins, in every forward
    seq = list(zip(ev["span_id"].tolist(), ev["kind"].tolist()))
    assert seq == [(10, 0), (10, 1), (11, 0), (11, 1)] * n_forwards
    for layer in layers:
        assert not layer._forward_hooks and not layer._forward_pre_hooks and "forward" not in layer.__dict__
    with torch.no_grad():
        assert torch.equal(model(ids).logits, want_logits)
    assert _core.activity() == 0


def test_docs_example_runs(capsys):
    import pathlib
    import re

    text = (pathlib.Path(__file__).parent.parent / "docs" / "hooks.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "docs/hooks.md", "exec"), {})
    out = capsys.readouterr().out
    assert "[(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1), (0, 1)]" in out


def test_hooks_from_several_threads_lose_nothing():
    import threading

    buf = _core.SpanBuffer()
    hooks = [(_core.Hook(buf, t, 0, activity=False), _core.Hook(buf, t, 1, activity=False)) for t in range(4)]

    def work(pre, post):
        for _ in range(2000):
            pre(None, ())
            post(None, (), None)

    threads = [threading.Thread(target=work, args=h) for h in hooks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ev = buf.drain()
    assert len(ev) == 4 * 2 * 2000 and buf.dropped == 0
    for t in range(4):  # each thread's own events alternate begin/end in order
        mine = ev[ev["span_id"] == t]
        assert mine["kind"].tolist() == [0, 1] * 2000
        assert np.all(np.diff(mine["t_ns"]) >= 0)


def test_hot_path_allocates_no_python_memory():
    import collections
    import itertools
    import tracemalloc

    def peak_bytes_once(f, arg):
        sink = collections.deque(maxlen=0)
        calls = map(f, itertools.repeat(arg, 5000))  # called from C: no interpreter frames
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            sink.extend(calls)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    def peak_bytes(f, arg):
        # tracemalloc sees every thread: a Python thread left by an earlier test may
        # allocate inside one window.  An allocation on the hot path shows in every
        # window (5000 calls each), so the least of three is the hot path's own.
        return min(peak_bytes_once(f, arg) for _ in range(3))

    buf = _core.SpanBuffer()
    assert peak_bytes(lambda x: [x] * 3, 1) > 0  # the probe sees Python allocations
    assert peak_bytes(_core.Hook(buf, 1, 0), None) == 0
    assert peak_bytes(_core.Hook(buf, 1, 1), None) == 0
    assert peak_bytes(_core.wrap_forward(buf, 2, len), "abc") == 0
    assert len(buf.drain()) == 3 * 4 * 5000  # three windows of 5000 calls; wrap_forward logs two events a call


@pytest.mark.parametrize("source,raised", [("synthetic:power_w=10,active_w=5", True), ("estimate", False)])
def test_hooks_keep_the_activity_level_only_for_the_source_that_reads_it(source, raised):
    """The activity level (and component stack) is what the synthetic source's active_w /
    attn_w / mlp_w read; with any other source the hooks leave it alone (a lock round less per
    call).  Seen from inside a decoder layer's call: the model's hooked forward around it has
    raised the level, or not."""
    import torch

    import energyprof as ep
    from energyprof.tiny import tiny_model

    model = tiny_model("tiny-llama")
    seen = []
    h = model.model.layers[0].register_forward_pre_hook(lambda m, a: seen.append(_core.activity()))
    try:
        with ep.run(model, source=source, baseline_s=0, save=False) as s:
            model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, do_sample=False)
    finally:
        h.remove()
    assert seen and len(s.layers) > 0
    assert all(v >= 1 for v in seen) if raised else all(v == 0 for v in seen), seen
