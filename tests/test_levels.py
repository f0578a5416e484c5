"""energyprof.store.levels: downsampling levels, checked against brute force over the raw samples."""
import math
import sqlite3

import numpy as np
import pytest

from energyprof import _core, _reference
from energyprof._dtypes import DOMAINS
from energyprof.store import levels, schema
from energyprof.store.db import Store


def _samples(n, seed=0, interval=True, nan_gaps=True):
    rng = np.random.default_rng(seed)
    s = np.zeros(n, _core.SAMPLE_DTYPE)
    dur = rng.integers(500_000, 1_500_000, n)  # uneven periods: the mean must weigh by duration
    t = np.concatenate([[0], np.cumsum(dur)])
    s["t_start_ns"] = t[:-1]
    s["t_end_ns"] = t[1:] if interval else t[:-1]
    s["kind"] = _core.KIND_INTERVAL if interval else _core.KIND_INSTANT
    for d in DOMAINS:
        s[f"{d}_w"] = rng.uniform(0.5, 30.0, n)
    s["ane_w"] = np.nan
    if nan_gaps:
        s["gpu_w"][rng.random(n) < 0.05] = np.nan  # a few samples without a gpu reading
    return s


def _brute(s, lo, hi, interval):
    """min / max / duration-weighted mean of each series over samples lo..hi-1, one by one."""
    out = {}
    for name in DOMAINS + ("total",):
        vals, ws = [], []
        for i in range(lo, hi):
            if name == "total":  # the rule: package + dram (both measured here)
                p = s["package_w"][i] + s["dram_w"][i]
            else:
                p = s[f"{name}_w"][i]
            if math.isnan(p):
                continue
            vals.append(float(p))
            ws.append(float(s["t_end_ns"][i] - s["t_start_ns"][i]) if interval else 1.0)
        if vals:
            out[name] = (min(vals), max(vals), sum(v * w for v, w in zip(vals, ws)) / sum(ws))
        else:
            out[name] = (math.nan, math.nan, math.nan)
    return out


@pytest.mark.parametrize("interval", [True, False])
def test_levels_match_brute_force_per_bucket(interval):
    n = 16 * 16 * 70 + 123  # levels 1 and 2, with a short last bucket
    s = _samples(n, seed=1, interval=interval)
    rows = levels.compute(s)
    assert sorted(set(rows["level"].tolist())) == [1, 2]
    rng = np.random.default_rng(2)
    for level in (1, 2):
        lv = rows[rows["level"] == level]
        per = 16 ** level
        assert len(lv) == -(-n // per) and lv["n"].sum() == n
        for b in list(rng.choice(len(lv) - 1, 12, replace=False)) + [len(lv) - 1]:
            lo, hi = b * per, min((b + 1) * per, n)
            r = lv[lv["bucket"] == b][0]
            assert (r["t_start_ns"], r["t_end_ns"], r["n"]) == (s["t_start_ns"][lo], s["t_end_ns"][hi - 1], hi - lo)
            for name, (mn, mx, mean) in _brute(s, lo, hi, interval).items():
                got = (r[f"{name}_min_w"], r[f"{name}_max_w"], r[f"{name}_mean_w"])
                if math.isnan(mn):
                    assert all(math.isnan(g) for g in got), name
                else:
                    assert got[0] == mn and got[1] == mx, (level, b, name)
                    assert got[2] == pytest.approx(mean, rel=1e-12), (level, b, name)


def test_small_runs_have_no_levels():
    assert len(levels.compute(_samples(16 * 63))) == 0  # 63 buckets < MIN_BUCKETS
    assert len(levels.compute(_samples(0))) == 0
    assert sorted(set(levels.compute(_samples(16 * 64))["level"].tolist())) == [1]


def test_read_downsampled_keeps_the_energy_and_the_extremes(tmp_path):
    n = 16 * 16 * 100  # 25,600 samples: above the raw-read budget, so a level is read
    s = _samples(n, seed=3)
    with Store(str(tmp_path / "r.db")) as st:
        rid = st.create_run({"name": "long"})
        st.write_samples(rid, s)
        st.finish_run(rid, {"name": "long"}, all_samples=s)
        for mp in (10, 300, 5000):
            ds = st.downsampled(rid, mp)
            rows = ds["rows"]
            assert len(rows) <= mp and ds["n_samples"] == n and rows["n"].sum() == n
            assert ds["rows_read"] <= max(2 * mp, levels.READ_ROWS)
            # energy of the buckets == the integral of the raw samples (numpy twin of the C integrator)
            e_ref, _f, _c = _reference.integrate(s, np.array([[s["t_start_ns"][0], s["t_end_ns"][-1]]]))
            for j, d in enumerate(DOMAINS):
                if d == "ane":
                    assert np.isnan(rows["ane_mean_w"]).all()
                    continue
                got = np.nansum(rows[f"{d}_mean_w"] * rows[f"{d}_wt"]) / 1e9
                assert got == pytest.approx(e_ref[0, j], rel=1e-9), (mp, d)
            # each bucket's min / max are those of the raw samples it covers
            for k in (0, len(rows) // 2, len(rows) - 1):
                inside = (s["t_start_ns"] >= rows["t_start_ns"][k]) & (s["t_end_ns"] <= rows["t_end_ns"][k])
                assert inside.sum() == rows["n"][k]
                assert rows["cpu_min_w"][k] == s["cpu_w"][inside].min()
                assert rows["package_max_w"][k] == s["package_w"][inside].max()
        assert st.downsampled(rid, 300)["source"] == "level 1"   # 1,600 rows fit the budget
        assert st.downsampled(rid, 20000)["source"] == "raw"     # 2 x 20,000 rows: the raw samples
        with pytest.raises(ValueError, match="max_points"):
            st.downsampled(rid, 0)
        # deleting the run deletes its levels
        from energyprof.store.db import delete

        delete(rid, db=st)
        assert st.conn.execute("SELECT COUNT(*) FROM sample_levels").fetchone()[0] == 0


def test_a_run_without_levels_is_read_raw(tmp_path):
    """A run saved before schema 4 (or still running) has no levels: its raw rows are folded."""
    path = str(tmp_path / "v3.db")
    conn = sqlite3.connect(path, isolation_level=None)
    schema.create(conn, 3)
    conn.close()
    s = _samples(5000, seed=4, nan_gaps=False)
    with Store(path) as st:
        assert schema.user_version(st.conn) == schema.SCHEMA_VERSION and "sample_levels" in schema.tables(st.conn)
        rid = st.create_run({"name": "old"})
        st.write_samples(rid, s)
        st.flush()
        ds = st.downsampled(rid, 100)
        assert ds["source"] == "raw" and len(ds["rows"]) == 100 and ds["n_samples"] == 5000
        assert ds["rows"]["cpu_max_w"].max() == s["cpu_w"].max()
        back = levels.as_samples(ds["rows"], np.dtype(_core.SAMPLE_DTYPE))
        assert (back["kind"] == _core.KIND_INTERVAL).all() and back["t_end_ns"][-1] == s["t_end_ns"][-1]


@pytest.mark.parametrize("kind", ["interval", "instant"])
def test_levels_built_in_pieces_equal_levels_built_at_once(monkeypatch, kind):
    """compute() builds level 1 a piece of the samples at a time: pieces of 3 buckets give
    the same rows, bit for bit, as one piece of everything, also where a domain is NaN
    throughout some pieces (measured is the run's, not the piece's)."""
    from energyprof import _core
    from energyprof.store import levels as L

    rng = np.random.default_rng(9)
    n = 16 * 64 * 3 + 37                                          # three levels' worth and a short last bucket
    s = np.zeros(n, _core.SAMPLE_DTYPE)
    s["t_start_ns"] = np.arange(n) * 1000
    s["t_end_ns"] = s["t_start_ns"] + (1000 if kind == "interval" else 0)
    s["kind"] = _core.KIND_INTERVAL if kind == "interval" else _core.KIND_INSTANT
    for d in _core.DOMAINS:
        s[f"{d}_w"] = np.nan
    s["cpu_w"] = rng.random(n) * 30
    s["gpu_w"] = rng.random(n) * 90
    s["gpu_w"][:500] = np.nan                                     # not measured in the first pieces
    s["cpu_w"][rng.integers(0, n, 40)] = np.nan
    monkeypatch.setattr(L, "LEVEL_PIECE_BUCKETS", 10**9)
    whole = L.compute(s)
    monkeypatch.setattr(L, "LEVEL_PIECE_BUCKETS", 3)
    pieces = L.compute(s)
    assert len(whole) == len(pieces) > 0
    for f in whole.dtype.names:
        np.testing.assert_array_equal(pieces[f], whole[f], err_msg=f)
