"""The one-pass statistics kernels of mode="deep" (csrc/kernels/ep_stats.c) against their
numpy twins (energyprof._reference) and the straightforward torch computation, and
``stats_every=N``: stored with the run, statistics on every Nth call only, each equal to
torch's numbers for that call's tensor."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import energyprof as ep
from energyprof import _core, _reference
from energyprof.measure import deep
from energyprof.tiny import tiny_model


def _torch_stats(t: torch.Tensor, small: float):
    x = t.double()
    return (float(x.mean()), float(x.std()) if x.numel() > 1 else 0.0, float(x.abs().max()),
            float((x.abs() < small).double().mean()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5, 64), (2, 1408)])
def test_tensor_stats_equal_twin_and_torch(dtype, shape):
    rng = np.random.default_rng(len(shape) * 7 + shape[-1])
    x = (rng.standard_normal(shape) * np.where(rng.random(shape) < 0.3, 1e-4, 2.0)).astype(dtype)
    got = _core.tensor_stats(x, 1e-3)
    np.testing.assert_allclose(got, _reference.tensor_stats(x, 1e-3), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got, _torch_stats(torch.from_numpy(x), 1e-3), rtol=1e-12, atol=1e-15)
    assert 0.0 < got[3] < 1.0 or x.size < 3


def test_tensor_stats_hand_worked_nan_and_empty():
    # [-2, 0.0005, 3, 1]: mean 0.500125; max |x| 3; one of four below 1e-3
    x = np.array([-2.0, 0.0005, 3.0, 1.0], np.float32)
    m, sd, mx, sp = _core.tensor_stats(x, 1e-3)
    xd = x.astype(np.float64)
    assert m == pytest.approx(xd.sum() / 4, rel=1e-15)
    assert sd == pytest.approx(np.sqrt(((xd - xd.mean()) ** 2).sum() / 3), rel=1e-12)
    assert (mx, sp) == (3.0, 0.25)
    nan = _core.tensor_stats(np.array([1.0, np.nan, 0.0]), 1e-3)
    assert np.isnan(nan[0]) and np.isnan(nan[1]) and np.isnan(nan[2]) and nan[3] == pytest.approx(1 / 3)
    assert np.all(np.isnan(_core.tensor_stats(np.zeros(0, np.float32), 1e-3)))
    with pytest.raises(ValueError, match="float32 or float64"):
        _core.tensor_stats(np.zeros(3, np.int64), 1e-3)
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.tensor_stats(np.zeros((4, 4))[:, ::2], 1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_token_variance_equals_twin_and_numpy(dtype):
    x = np.random.default_rng(3).standard_normal((2, 5, 48)).astype(dtype) * 3 + 1
    got = _core.token_variance(x)
    assert got == pytest.approx(_reference.token_variance(x), rel=1e-12)
    assert got == pytest.approx(float(x.astype(np.float64).var(-1).mean()), rel=1e-12)
    assert _core.token_variance(np.array([[1.0, 3.0]], dtype)) == 1.0   # hand-worked: mean 2, var 1


def _softmax_probs(rng, b, h, q, k, allowed):
    logits = rng.standard_normal((b, h, q, k)) * 4
    logits = np.where(np.broadcast_to(allowed, logits.shape), logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("h_mask", [None, 1, 4])
def test_attention_stats_equal_twin_and_torch(h_mask):
    rng = np.random.default_rng(5)
    b, h, q, k = 2, 4, 6, 9
    if h_mask is None:
        allowed = np.ones((b, 1, q, k), bool)
    else:
        allowed = rng.random((b, h_mask, q, k)) < 0.7
        allowed[..., 0] = True
    p = _softmax_probs(rng, b, h, q, k, allowed)
    a = None if h_mask is None else np.ascontiguousarray(allowed)
    heads, all4 = _core.attention_stats(p, a, 1e-3)
    want_heads, want_all = _reference.attention_stats(p, a, 1e-3)
    np.testing.assert_allclose(heads, want_heads, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(all4, want_all, rtol=1e-12, atol=1e-15)
    # the straightforward torch computation deep mode used before the kernel
    t = torch.from_numpy(p).double()
    ok = torch.from_numpy(np.broadcast_to(allowed, p.shape).copy())
    np.testing.assert_allclose(heads[0], torch.special.entr(t).sum(-1).mean(dim=(0, 2)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(heads[1], t.amax(-1).mean(dim=(0, 2)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(heads[2], (((t < 1e-3) & ok).sum(dim=(0, 2, 3)).double() / ok.sum(dim=(0, 2, 3))).numpy(),
                               rtol=1e-12)
    assert np.all(heads[3] == b * q)
    with pytest.raises(ValueError, match="shape"):
        _core.attention_stats(p, np.ones((b, 3, q, k), bool), 1e-3)
    with pytest.raises(ValueError, match="float32"):
        _core.attention_stats(p.astype(np.float64), None, 1e-3)


def test_fast_stats_falls_back_to_torch_for_other_dtypes():
    t = torch.linspace(-1, 1, 101, dtype=torch.bfloat16)
    got = deep.fast_stats(t)
    assert isinstance(got, torch.Tensor)
    # the torch path squares in bfloat16 before summing in float64: the std agrees to ~1e-5
    np.testing.assert_allclose(deep.stats_rows([got])[0], deep.stats_rows([deep.fast_stats(t.float())])[0],
                               rtol=1e-4, atol=1e-9)


# --------------------------------------------------------------------------- stats_every


@pytest.mark.parametrize("every", [1, 3])
def test_stats_every_is_stored_and_only_every_nth_call_has_statistics(tmp_path, every):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tiny_model("tiny-llama").eval()
    mlp0 = model.model.layers[0].mlp
    outs = []
    h = mlp0.register_forward_hook(lambda m, a, o: outs.append(o.detach().clone()))
    db = tmp_path / "runs.db"
    try:
        with ep.run(model, source="synthetic:power_w=5", mode="deep", baseline_s=0, db=db,
                    stats_every=every) as s:
            with torch.no_grad():
                model.generate(torch.tensor([[5, 6, 7, 8]]), max_new_tokens=7, min_new_tokens=7, do_sample=False)
    finally:
        h.remove()
    assert s.summary()["stats_every"] == every
    assert s.summary()["deep"]["stats_every"] == every
    assert ep.load(s.run_id, db=db).summary()["stats_every"] == every
    rows = s.components[(s.components["layer"] == 0) & (s.components["component"] == "mlp")]
    rows = rows[np.argsort(rows["t_start_ns"])]
    assert len(rows) == len(outs) == 7
    for j, (row, out) in enumerate(zip(rows, outs)):
        got = (row["act_mean"], row["act_std"], row["act_max"], row["act_sparsity"])
        if j % every:
            assert np.all(np.isnan(got)), j
        else:
            np.testing.assert_allclose(got, _torch_stats(out, 1e-3), rtol=1e-6, atol=1e-9)
    # heads: only the sampled attention calls of each layer have rows
    soft = s.ops[(s.ops["component"] == "attn.softmax") & (s.ops["layer"] == 0)]
    soft = soft[np.argsort(soft["t_start_ns"])]
    h0 = s.heads[s.heads["layer"] == 0]
    assert sorted(set(h0["call_id"].tolist())) == sorted(soft["call_id"][::every].tolist())
    mlp_summary = next(m for m in s.summary()["deep"]["mlp"] if m["layer"] == 0)
    assert mlp_summary["calls"] == len(range(0, 7, every))


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "3"])
def test_stats_every_must_be_a_positive_integer(bad):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tiny_model("tiny-llama")
    with pytest.raises(ValueError, match="stats_every"):
        ep.run(model, source="synthetic:power_w=5", mode="deep", baseline_s=0, save=False, stats_every=bad)
