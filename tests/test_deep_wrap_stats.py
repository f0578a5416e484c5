"""mode="deep" activation statistics taken by the C forward wrapper itself (no forward hook).

Oracle: the five statistics recomputed here with plain numpy (float64) from the very
tensors the wrapped forwards returned, written apart from energyprof's kernels and their
``_reference`` twins.
"""
import warnings

import numpy as np
import pytest
import torch

import energyprof as ep
from energyprof import _core
from energyprof.measure import deep
from energyprof.measure.hooks import HookSet
from energyprof.tiny import tiny_model

SMALL = 1e-3


def numpy_stats(t, small=SMALL):
    """(mean, unbiased std, max |x|, share of |x| < small, mean |x|) in float64 numpy."""
    x = np.asarray(t.detach().double().numpy() if isinstance(t, torch.Tensor) else t, dtype=np.float64).ravel()
    ax = np.abs(x)
    return (x.mean(), x.std(ddof=1), ax.max(), float(np.mean(ax < small)), ax.mean())


class Returns(torch.nn.Module):
    """forward returns the next prepared object, and keeps a list of what it returned."""

    def __init__(self, outs):
        super().__init__()
        self.outs = list(outs)
        self.i = 0

    def forward(self, x):
        out = self.outs[self.i]
        self.i += 1
        if isinstance(out, BaseException):
            raise out
        return out


def wrapped(outs, every=1):
    buf = _core.SpanBuffer()
    act = deep.ActivationStats(every, SMALL)
    mod = Returns(outs)
    hs = HookSet(buf, method="wrap")
    hs.add(mod, span_id=3, stats=act.wrap_options())
    return mod, hs, act


def test_c_path_equals_numpy_for_float32_float64_and_tuples():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 5, 7, generator=g)
    a[0, 0, :3] = 0.0                                     # some exact zeros: sparsity > 0
    b = torch.randn(3, 4, generator=g, dtype=torch.float64) * 1e-3
    c = torch.randn(6, generator=g)
    mod, hs, act = wrapped([a, (b, "extra"), [c]])
    for _ in range(3):
        mod(torch.zeros(1))
    rows, deferred = hs.callables[0].act_stats()
    assert deferred == []                                  # all three read in C
    got = act.collect(hs.callables)[3]
    np.testing.assert_array_equal(got, rows)
    for row, t in zip(got, (a, b, c)):
        np.testing.assert_allclose(row, numpy_stats(t), rtol=1e-12, atol=1e-15)
    assert got[0, 3] == pytest.approx(3 / a.numel())       # hand count: the three zeros
    assert not mod._forward_hooks and not mod._forward_pre_hooks   # torch's fast path is kept


def test_stats_every_n_counts_successful_calls_only():
    g = torch.Generator().manual_seed(2)
    ts = [torch.randn(4, 4, generator=g) for _ in range(7)]
    outs = ts[:2] + [RuntimeError("boom")] + ts[2:]
    mod, hs, act = wrapped(outs, every=3)
    for i in range(len(outs)):
        if i == 2:
            with pytest.raises(RuntimeError, match="boom"):
                mod(torch.zeros(1))
        else:
            mod(torch.zeros(1))
    got = act.collect(hs.callables)[3]
    # successful calls 0..6; records at 0, 3, 6 (the raising call is not counted)
    assert got.shape == (3, 5)
    for row, t in zip(got, (ts[0], ts[3], ts[6])):
        np.testing.assert_allclose(row, numpy_stats(t), rtol=1e-12, atol=1e-15)
    assert hs.callables[0].stats_every == 3


def test_fallback_for_strided_half_precision_int_and_non_tensors():
    g = torch.Generator().manual_seed(3)
    strided = torch.randn(6, 5, generator=g).t()            # not C-contiguous: torch-side copy, then C
    half = torch.randn(4, 8, generator=g).to(torch.bfloat16)
    ints = torch.arange(5)
    empty = torch.zeros(0)
    mod, hs, act = wrapped([strided, half, ints, {"a": 1}, empty, ()])
    for _ in range(6):
        mod(torch.zeros(1))
    rows, deferred = hs.callables[0].act_stats()
    assert [i for i, _ in deferred] == [0, 1, 2]            # C had no path for these; the rest is NaN in C
    assert np.isnan(rows).all()
    got = act.collect(hs.callables)[3]
    np.testing.assert_allclose(got[0], numpy_stats(strided), rtol=1e-12, atol=1e-15)
    # bfloat16: torch squares in bfloat16 before its float64 sum, so the std agrees to ~1e-3
    np.testing.assert_allclose(got[1], numpy_stats(half), rtol=2e-3, atol=1e-9)
    assert np.isnan(got[2:]).all()                          # an int tensor, a dict, an empty tensor, ()


def test_a_failing_fallback_warns_once_and_leaves_nan():
    buf = _core.SpanBuffer()
    calls = []

    def bad(out):
        calls.append(out)
        raise ValueError("no")

    lin = Returns([torch.arange(3), torch.arange(4)])
    w = _core.wrap_forward(buf, 1, lin.forward, stats_every=1, tensor_type=torch.Tensor, stats_fallback=bad)
    with pytest.warns(RuntimeWarning, match="activation statistics"):
        w(torch.zeros(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = w(torch.zeros(1))                             # no second warning, no exception into the model
    assert torch.equal(out, torch.arange(4)) and len(calls) == 2
    rows, deferred = w.act_stats()
    assert rows.shape == (2, 5) and np.isnan(rows).all() and deferred == []


def test_wrap_forward_rejects_bad_statistics_options():
    buf = _core.SpanBuffer()
    with pytest.raises(ValueError, match="stats_every"):
        _core.wrap_forward(buf, 1, lambda x: x, stats_every=-1)
    with pytest.raises(TypeError, match="tensor_type"):
        _core.wrap_forward(buf, 1, lambda x: x, stats_every=2, stats_fallback=print)
    w = _core.wrap_forward(buf, 1, lambda x: x)
    assert w.stats_every == 0 and w.act_stats()[0].shape == (0, 5)
    with pytest.raises(ValueError, match="method='wrap'"):
        HookSet(buf, method="hooks").add(torch.nn.Identity(), 1, stats={})


def test_tensor_stats_of_and_variance_ratio_of_read_cpu_tensors_in_place():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 16, generator=g)
    y = x * torch.linspace(0.5, 2.0, 16)
    np.testing.assert_allclose(_core.tensor_stats_of(x, SMALL), numpy_stats(x), rtol=1e-12, atol=1e-15)
    xd, yd = x.double().numpy(), y.double().numpy()
    want = np.mean(yd.var(axis=-1)) / np.mean(xd.var(axis=-1))
    assert _core.variance_ratio_of(x, y) == pytest.approx(want, rel=1e-12)
    # no C path: None (the callers' torch fallback takes over)
    assert _core.tensor_stats_of(x.t(), SMALL) is None
    assert _core.tensor_stats_of(x.to(torch.bfloat16), SMALL) is None
    assert _core.tensor_stats_of(x.requires_grad_(), SMALL) is None
    assert _core.variance_ratio_of(x.detach(), y.t()) is None


@pytest.fixture(scope="module")
def llama():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tiny_model("tiny-llama").eval()


def _run(model, method, capture=None):
    handles = []
    for name, mod in (capture or {}).items():
        handles.append(mod.register_forward_hook(
            lambda m, a, o, name=name: capture_out[name].append((o[0] if isinstance(o, tuple) else o).detach().clone())))
    try:
        with ep.run(model, source="synthetic:power_w=5", mode="deep", baseline_s=0, save=False,
                    hook_method=method) as s:
            if method == "wrap" and capture is None:
                hooked = [n for n, m in model.named_modules() if m._forward_hooks]
                assert hooked == []                        # no forward hook anywhere: torch's fast path
            with torch.no_grad():
                model.generate(torch.tensor([[5, 6, 7, 8, 9]]), max_new_tokens=4, min_new_tokens=4,
                               do_sample=False)
    finally:
        for h in handles:
            h.remove()
    return s


capture_out = {}


def test_deep_run_statistics_equal_numpy_of_each_modules_outputs(llama):
    layer0 = llama.model.layers[0]
    mods = {("layer", 0): layer0, ("q_proj", 0): layer0.self_attn.q_proj, ("mlp", 0): layer0.mlp,
            ("input_norm", 0): layer0.input_layernorm, ("attn", 1): llama.model.layers[1].self_attn,
            ("final_norm", -1): llama.model.norm}
    capture_out.clear()
    capture_out.update({k: [] for k in mods})
    s = _run(llama, "wrap", capture=mods)
    table = np.concatenate([s.layers, s.components])
    cols = ("act_mean", "act_std", "act_max", "act_sparsity", "act_abs_mean")
    for (comp, layer), outs in capture_out.items():
        rows = table[(table["component"] == comp) & (table["layer"] == layer)]
        rows = rows[np.argsort(rows["t_start_ns"])]
        assert len(rows) == len(outs) == 4, comp            # the prefill (1st token) + 3 decode steps
        for row, out in zip(rows, outs):
            np.testing.assert_allclose([row[c] for c in cols], numpy_stats(out), rtol=1e-9, atol=1e-12,
                                       err_msg=f"{comp} layer {layer}")


def test_wrap_and_forward_hook_paths_record_the_same_statistics(llama):
    a = _run(llama, "wrap")
    b = _run(llama, "hooks")
    cols = ("act_mean", "act_std", "act_max", "act_sparsity", "act_abs_mean")
    for name in ("layers", "components"):
        x, y = getattr(a, name), getattr(b, name)
        kx = np.lexsort((x["t_start_ns"], x["component"], x["layer"]))
        ky = np.lexsort((y["t_start_ns"], y["component"], y["layer"]))
        assert len(x) == len(y) and np.isfinite(x["act_mean"]).all()
        for c in cols:
            np.testing.assert_array_equal(x[c][kx], y[c][ky], err_msg=f"{name}.{c}")


def test_activation_statistics_can_be_switched_off(llama, monkeypatch):
    monkeypatch.setattr(deep, "ACTIVATION_STATISTICS", False)
    s = _run(llama, "wrap")
    table = np.concatenate([s.layers, s.components])
    assert len(table) and np.isnan(table["act_mean"]).all() and np.isnan(table["act_abs_mean"]).all()
    assert len(s.heads)                                     # the head statistics are a separate switch
    assert all(getattr(c, "stats_every", 0) == 0 for c in s._hookset.callables)
