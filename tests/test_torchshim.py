"""The libtorch C++ ABI shim (csrc/threads/ep_torchshim.cpp) against fake libtorch libraries.

The fakes (tests/shim/*.cpp) are real C++ functions in namespaces torch::cuda and
torch::mps, built here with g++, so the compiler gives them libtorch's mangled names.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

from energyprof import _core
from energyprof.measure.hooks import HookSet, load_shim

SHIM_SRC = Path(__file__).parent / "shim"


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    out = tmp_path_factory.mktemp("fake_torch")
    built = {}
    for name in ("fake_torch_count", "fake_torch_throw", "fake_torch_throw_int", "no_torch"):
        so = out / f"lib{name}.so"
        subprocess.run(["g++", "-shared", "-fPIC", "-O1", "-std=c++17", "-o", str(so), str(SHIM_SRC / f"{name}.cpp")],
                       check=True, capture_output=True)
        built[name] = str(so)
    return built


@pytest.fixture(autouse=True)
def _unload_shim():
    _core.set_activity(0)
    yield
    _core.torchshim_load(None, search=False)  # leave no fake library selected for other tests
    _core.set_activity(0)


def _counter(path, name):
    return ctypes.c_longlong.in_dll(ctypes.CDLL(path), name)


def _run_hooked(model, x, n_calls, **hookset_kw):
    buf = _core.SpanBuffer()
    with HookSet(buf, **hookset_kw) as hs:
        hs.add(model, 1)
        if isinstance(model, torch.nn.Sequential):
            for i, child in enumerate(model):
                hs.add(child, 2 + i)
        outs = [model(x) for _ in range(n_calls)]
    return buf, hs, outs


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU(), torch.nn.Linear(4, 2))


def test_load_reports_where_each_symbol_comes_from(libs):
    info = _core.torchshim_load(libs["fake_torch_count"])
    assert os.path.samefile(info["cuda"], libs["fake_torch_count"])
    assert os.path.samefile(info["mps"], libs["fake_torch_count"])
    assert _core.torchshim_info() == info
    assert _core.torchshim_load(libs["no_torch"], search=False) == {"cuda": None, "mps": None}
    assert _core.torchshim_load(None, search=False) == {"cuda": None, "mps": None}


def test_missing_library_raises_and_keeps_the_previous_state(libs):
    before = _core.torchshim_load(libs["fake_torch_count"])
    with pytest.raises(FileNotFoundError, match="no_such_lib"):
        _core.torchshim_load("/nonexistent/libno_such_lib.so")
    assert _core.torchshim_info() == before


def test_device_sync_calls_the_counted_functions(libs):
    _core.torchshim_load(libs["fake_torch_count"])
    cuda = _counter(libs["fake_torch_count"], "ep_fake_cuda_calls")
    mps = _counter(libs["fake_torch_count"], "ep_fake_mps_calls")
    last = _counter(libs["fake_torch_count"], "ep_fake_last_index")
    c0, m0 = cuda.value, mps.value
    _core.device_sync("cuda", 7)
    assert cuda.value == c0 + 1 and last.value == 7
    _core.device_sync("mps")
    assert mps.value == m0 + 1
    with pytest.raises(ValueError, match="kind"):
        _core.device_sync("tpu")
    with pytest.raises(ValueError, match="tpu"):
        _core.device_sync(kind="tpu", index=0)
    _core.device_sync(kind="cuda", index=5)
    assert last.value == 5


@pytest.mark.parametrize("method", ["hooks", "wrap"])
def test_counted_syncs_equal_hook_calls(libs, method):
    _core.torchshim_load(libs["fake_torch_count"])
    cuda = _counter(libs["fake_torch_count"], "ep_fake_cuda_calls")
    last = _counter(libs["fake_torch_count"], "ep_fake_last_index")
    model = _model()
    x = torch.randn(3, 4)
    want = model(x)
    c0 = cuda.value
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        buf, hs, outs = _run_hooked(model, x, 5, sync="device", device=torch.device("cuda", 3), method=method)
    hook_calls = sum(h.calls for h in hs.callables)
    events = buf.drain()
    # every recorded timestamp had one sync before it: one per hook call, two per wrapper call
    assert cuda.value - c0 == len(events) == hook_calls * (1 if method == "hooks" else 2)
    assert len(events) == 5 * 4 * 2
    assert last.value == 3
    assert all(torch.equal(o, want) for o in outs)
    assert all(h.syncing for h in hs.callables)


def test_cuda_device_without_index_syncs_the_current_device(libs):
    _core.torchshim_load(libs["fake_torch_count"])
    last = _counter(libs["fake_torch_count"], "ep_fake_last_index")
    _run_hooked(torch.nn.Identity(), torch.zeros(1), 1, sync="device", device=torch.device("cuda"))
    assert last.value == -1  # libtorch's "current device"


def test_mps_syncs_counted(libs):
    _core.torchshim_load(libs["fake_torch_count"])
    mps = _counter(libs["fake_torch_count"], "ep_fake_mps_calls")
    m0 = mps.value
    buf, hs, _ = _run_hooked(_model(), torch.randn(1, 4), 3, sync="device", device=torch.device("mps"))
    assert mps.value - m0 == sum(h.calls for h in hs.callables) == 3 * 4 * 2


@pytest.mark.parametrize("method", ["hooks", "wrap"])
def test_throwing_sync_warns_once_and_never_breaks_the_model(libs, method):
    info = _core.torchshim_load(libs["fake_torch_throw"])
    assert os.path.samefile(info["cuda"], libs["fake_torch_throw"])
    throws = _counter(libs["fake_torch_throw"], "ep_fake_throws")
    t0 = throws.value
    model = _model()
    x = torch.randn(2, 4)
    want = model(x)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        buf, hs, outs = _run_hooked(model, x, 4, sync="device", device=torch.device("cuda", 0), method=method)
    ours = [w for w in rec if "energyprof" in str(w.message)]
    assert len(ours) == 1 and issubclass(ours[0].category, RuntimeWarning)
    msg = str(ours[0].message)
    assert "fake cuda device lost" in msg and "backtrace" not in msg  # first line of what() only
    assert all(torch.equal(o, want) for o in outs)
    # the first failure stops syncing for every hook on the buffer; events are still recorded
    assert throws.value - t0 == 1
    assert buf.sync_failed and not any(h.syncing for h in hs.callables)
    assert all(h.enabled for h in hs.callables)
    assert len(buf.drain()) == sum(h.calls for h in hs.callables) * (1 if method == "hooks" else 2)
    assert _core.activity() == 0


def test_throwing_sync_raises_runtime_error_from_device_sync(libs):
    _core.torchshim_load(libs["fake_torch_throw"])
    with pytest.raises(RuntimeError, match="fake mps device lost"):
        _core.device_sync("mps")
    _core.torchshim_load(libs["fake_torch_throw_int"], search=False)
    with pytest.raises(RuntimeError, match="unknown C.. exception"):
        _core.device_sync("cuda", 0)


def test_reloading_prefers_the_explicit_path(libs):
    cuda = _counter(libs["fake_torch_count"], "ep_fake_cuda_calls")
    throws = _counter(libs["fake_torch_throw"], "ep_fake_throws")
    for _ in range(2):
        _core.torchshim_load(libs["fake_torch_count"])
        c0 = cuda.value
        _core.device_sync("cuda", 0)
        assert cuda.value == c0 + 1
        _core.torchshim_load(libs["fake_torch_throw"])
        t0 = throws.value
        with pytest.raises(RuntimeError):
            _core.device_sync("cuda", 0)
        assert throws.value == t0 + 1


def test_missing_symbol_uses_the_python_fallback(libs):
    assert _core.torchshim_load(libs["no_torch"], search=False) == {"cuda": None, "mps": None}
    with pytest.raises(NotImplementedError):
        _core.device_sync("cuda", 0)
    calls = []
    buf = _core.SpanBuffer()
    hooks = [_core.Hook(buf, 1, k, sync=_core.SYNC_CUDA, sync_fallback=lambda: calls.append(1)) for k in (0, 1)]
    for _ in range(3):
        for h in hooks:
            assert h() is None
    assert len(calls) == 6 and all(h.syncing for h in hooks)
    assert len(buf.drain()) == 6


def test_failing_fallback_warns_once_and_stops_syncing(libs):
    _core.torchshim_load(libs["no_torch"], search=False)
    calls = []

    def fallback():
        calls.append(1)
        raise AssertionError("Torch not compiled with CUDA enabled")

    lin = torch.nn.Linear(2, 2)
    x = torch.randn(1, 2)
    want = lin(x)
    buf = _core.SpanBuffer()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        pre = _core.Hook(buf, 0, 0, sync=_core.SYNC_CUDA, sync_fallback=fallback)
        post = _core.Hook(buf, 0, 1, sync=_core.SYNC_CUDA, sync_fallback=fallback)
        h1 = lin.register_forward_pre_hook(pre)
        h2 = lin.register_forward_hook(post)
        outs = [lin(x) for _ in range(3)]
        h1.remove()
        h2.remove()
    ours = [w for w in rec if "energyprof" in str(w.message)]
    assert len(ours) == 1 and "AssertionError: Torch not compiled with CUDA enabled" in str(ours[0].message)
    assert len(calls) == 1 and not pre.syncing and not post.syncing
    assert all(torch.equal(o, want) for o in outs)
    assert len(buf.drain()) == 6


def test_missing_symbol_without_fallback_warns_once(libs):
    _core.torchshim_load(libs["no_torch"], search=False)
    buf = _core.SpanBuffer()
    h = _core.Hook(buf, 0, 0, sync=_core.SYNC_MPS)
    with pytest.warns(RuntimeWarning, match="not loaded"):
        h()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h()
    assert len(buf.drain()) == 2


def test_the_real_libtorch_is_found_in_the_process():
    # torch loads its libraries RTLD_LOCAL; the shim finds them among the loaded images.
    info = load_shim()
    assert info["cuda"] is not None and os.path.basename(info["cuda"]).startswith("libtorch")
    assert info["mps"] is not None


def test_cuda_sync_on_the_cpu_build_raises_instead_of_crashing():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: see test_cuda_sync_on_a_real_gpu")
    load_shim()
    # the CPU build exports torch::cuda::synchronize, which throws c10::Error: caught, not a crash
    with pytest.raises(RuntimeError, match="device call failed"):
        _core.device_sync("cuda", 0)


def test_cuda_sync_on_a_real_gpu():
    """With a CUDA device: the shim's sync returns, and a run with sync="auto" on the GPU
    syncs at every hook (the summary says so) and leaves the outputs unchanged."""
    if not torch.cuda.is_available():
        pytest.skip(f"no CUDA device: torch {torch.__version__}, torch.cuda.is_available() is False")
    import energyprof as ep
    from energyprof.tiny import tiny_model

    load_shim()
    _core.device_sync("cuda", 0)
    model = tiny_model("tiny-llama").cuda()
    ids = torch.tensor([[3, 4, 5, 6]], device="cuda")
    ref = model.generate(ids, max_new_tokens=4, do_sample=False)
    with ep.run(model, source="synthetic:power_w=5", baseline_s=0, save=False) as s:
        out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(ref, out)
    assert s.summary()["sync"] == "device" and s.summary()["device"].startswith("cuda")
    from energyprof.measure import arch

    assert len(s.layers) == 4 * arch.describe(model).config["n_layers"]   # 4 forwards
