"""ep.run(max_calls_in_memory=N): a run with more calls than N writes them to the store in
pieces as they are attributed; its rows must still be every one right (the brute-force
oracle of tests/energy_oracle.py), nothing may be lost when the store fails mid-way, and
what needs every row at once (deep mode) keeps them in memory."""
import warnings

import numpy as np
import pytest
import torch

import energyprof as ep
from energyprof.store.db import Store
from energyprof.tiny import tiny_model
from energy_oracle import WAVEFORMS, check_run

PROMPT = torch.tensor([[5, 6, 7, 8, 9]])


@pytest.fixture(scope="module")
def llama():
    return tiny_model("tiny-llama")


def gen(model, n=6):
    return model.generate(PROMPT, max_new_tokens=n, do_sample=False)


@pytest.mark.parametrize("shape", ["square", "active"])
def test_streamed_calls_are_every_one_right(llama, tmp_path, shape):
    db = str(tmp_path / "runs.db")
    with ep.run(llama, source=WAVEFORMS[shape], baseline_s=0, db=db, max_calls_in_memory=7) as s:
        gen(llama)
    st = s.summary()["calls_streamed"]
    n_layers = 6 * llama.config.num_hidden_layers
    assert st["layers"] == n_layers and st["calls"] > n_layers and st["pieces"] >= n_layers   # a layer call and its parts are one piece
    assert s._layers is None and s._components is None   # nothing held before it is asked for
    # read back from the store: the right number of rows, each equal to the oracle
    assert len(s.layers) == n_layers and len(s.layers) + len(s.components) == st["calls"]
    n = check_run(s)
    assert n["calls"] == st["calls"] and n["nested_calls"] > 0
    ids = np.sort(np.concatenate([s.layers["call_id"], s.components["call_id"]]))
    assert np.array_equal(ids, np.arange(st["calls"]))
    res = s.summary()["resolution"]
    assert res["n_calls"] == st["calls"]
    all_calls = np.concatenate([s.layers, s.components])
    assert res["calls"] == pytest.approx(float(all_calls["resolved"].mean()))
    # the stored run is the same run
    again = ep.load(s.run_id, db=db)
    for name in ("layers", "components"):
        assert getattr(again, name).tobytes() == getattr(s, name).tobytes()   # bit for bit, NaNs too
    assert again.summary()["calls_streamed"]["pieces"] == st["pieces"]


def test_a_run_under_the_limit_is_held_as_before(llama, tmp_path):
    with ep.run(llama, source="synthetic:power_w=5", baseline_s=0, db=str(tmp_path / "r.db")) as s:
        gen(llama, 2)
    assert "calls_streamed" not in s.summary() and s._layers is not None
    check_run(s)


def test_deep_mode_keeps_every_row_in_memory(llama, tmp_path):
    with ep.run(llama, source="synthetic:power_w=5", baseline_s=0, db=str(tmp_path / "r.db"), mode="deep",
                max_calls_in_memory=1) as s:
        gen(llama, 2)
    assert "calls_streamed" not in s.summary() and len(s.ops) > 0 and s._layers is not None


def test_a_store_failing_mid_stream_loses_nothing(llama, tmp_path, monkeypatch):
    """The third piece's write fails: the run is attributed again in memory, every row is
    there and right, and the user is told the run was not saved."""
    real = Store.write_array
    seen = {"n": 0}

    def failing(self, run_id, name, array):
        if name in ("layers", "components"):
            seen["n"] += 1
            if seen["n"] == 5:
                raise OSError("disk full (test)")
        return real(self, run_id, name, array)

    monkeypatch.setattr(Store, "write_array", failing)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        with ep.run(llama, source=WAVEFORMS["square"], baseline_s=0, db=str(tmp_path / "r.db"),
                    max_calls_in_memory=7) as s:
            gen(llama)
    assert any("could not be saved" in str(x.message) and "disk full" in str(x.message) for x in w)
    assert "calls_streamed" not in s.summary()
    assert len(s.layers) == 6 * llama.config.num_hidden_layers
    assert check_run(s)["calls"] == s.summary()["resolution"]["n_calls"]


def test_max_calls_in_memory_must_be_a_count(llama):
    with pytest.raises((ValueError, TypeError), match="max_calls_in_memory"):
        ep.run(llama, source="synthetic", max_calls_in_memory=-1)
    with pytest.raises((ValueError, TypeError), match="max_calls_in_memory"):
        ep.run(llama, source="synthetic", max_calls_in_memory=2.5)
