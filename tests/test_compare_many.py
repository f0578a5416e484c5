"""ep.compare over 2-10 runs, ``energyprof compare A B C [--json] [--plot]`` and the overlay figure.

Oracles: the runs' own summaries, and Python's statistics module for σ; best/worst and the
spread are picked by hand from those values.
"""
from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import warnings

import numpy as np
import pytest

import energyprof as ep
from energyprof.cli.main import main
from energyprof.testing import synthetic_run
from energyprof.views.compare_plot import plot_runs


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    db = tmp_path_factory.mktemp("cmp") / "runs.db"
    runs = [synthetic_run(n_layers=2, n_steps=n, seed=i) for i, n in enumerate((4, 9, 16))]
    with ep.Store(db) as st:
        ids = [st.save(r) for r in runs]
    return db, ids, [ep.load(i, db=db) for i in ids]


def test_three_runs_every_figure_best_worst_spread_sigma(three):
    db, ids, runs = three
    res = ep.compare(*ids, db=db)
    assert res["run_ids"] == ids and res["n_runs"] == 3 and "a_run_id" not in res
    for fig in ("energy_j", "j_per_output_token", "tokens_per_j", "duration_s", "output_tokens"):
        vals = [r.summary()[fig] for r in runs]
        e = res["figures"][fig]
        assert e["values"] == pytest.approx(vals, rel=0, abs=0)
        assert e["sigma"] == pytest.approx(statistics.stdev(vals), rel=1e-12)
        assert e["spread"] == pytest.approx(max(vals) / min(vals), rel=1e-12)
        assert e["mean"] == pytest.approx(statistics.mean(vals), rel=1e-12)
    # lower is better for energy per token, higher for tokens per joule; counts have no best
    jpt = [r.summary()["j_per_output_token"] for r in runs]
    assert res["figures"]["j_per_output_token"]["best"] == jpt.index(min(jpt))      # run indices
    assert res["figures"]["j_per_output_token"]["worst"] == jpt.index(max(jpt))
    tpj = [r.summary()["tokens_per_j"] for r in runs]
    assert res["figures"]["tokens_per_j"]["best"] == tpj.index(max(tpj))
    assert res["figures"]["output_tokens"]["best"] is None
    # phases and layers cover every run too
    dec = [r.summary()["phases"]["decode"]["energy_j"] for r in runs]
    assert res["phases"]["decode"]["energy_j"]["values"] == pytest.approx(dec)
    l0 = [float(r.layers["energy_j"][r.layers["layer"] == 0].sum()) for r in runs]
    assert res["layers"][0]["energy_j"]["values"] == pytest.approx(l0, rel=1e-12)
    assert res["warnings"] == [] and res["labels"] == ["simulated"] * 3
    # one implementation: the figures are the dashboard's compare_runs of the same runs
    from energyprof.analysis.multi import compare_runs

    direct = compare_runs(runs)
    for fig, e in direct["figures"].items():
        assert res["figures"][fig]["values"] == pytest.approx(e["values"], nan_ok=True)
        assert res["figures"][fig]["best"] == e["best"] and res["figures"][fig]["worst"] == e["worst"]


def test_two_runs_keep_the_old_shape(three):
    db, ids, runs = three
    res = ep.compare(ids[0], ids[1], db=db)
    a, b = runs[0].summary()["energy_j"], runs[1].summary()["energy_j"]
    e = res["figures"]["energy_j"]
    assert (res["a_run_id"], res["b_run_id"]) == (ids[0], ids[1])
    assert (e["a"], e["b"], e["diff"]) == (a, b, b - a) and e["rel_diff"] == pytest.approx((b - a) / a)
    assert e["values"] == [a, b]


def test_differently_labelled_sources_warn_and_bad_arguments_fail(three):
    db, ids, runs = three
    est = synthetic_run(n_layers=2, n_steps=4, source_label="estimated")
    with pytest.warns(RuntimeWarning, match="simulated .* estimated"):
        res = ep.compare(runs[0], runs[1], est)
    assert res["labels"] == ["simulated", "simulated", "estimated"] and "different labels" in res["warnings"][0]
    with pytest.raises(ValueError, match="2 to 10"):
        ep.compare(runs[0])
    with pytest.raises(ValueError, match="2 to 10"):
        ep.compare(*([runs[0]] * 11))
    with pytest.raises(TypeError, match="db="):
        ep.compare(ids[0], ids[1], str(db))        # the database goes in db=, not as a third run


def test_must_show_cli_compare_three_runs_json(three):
    db, ids, runs = three
    r = subprocess.run([sys.executable, "-m", "energyprof", "compare", *map(str, ids), "--json", "--db", str(db)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["run_ids"] == ids
    assert res["figures"]["energy_j"]["values"] == pytest.approx([x.summary()["energy_j"] for x in runs])


def test_cli_compare_table_plot_and_errors(three, tmp_path, capsys):
    db, ids, runs = three
    html = tmp_path / "cmp.html"
    assert main(["compare", *map(str, ids), "--plot", str(html), "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "σ" in out and "best" in out and f"plot written to {html}" in out
    page = html.read_text(encoding="utf-8")
    assert "plotly" in page.lower() and "Power over time" in page
    png = tmp_path / "cmp.png"
    assert main(["compare", *map(str, ids), "--plot", str(png), "--db", str(db)]) == 0 and png.stat().st_size > 5000
    capsys.readouterr()
    assert main(["compare", str(ids[0]), "--db", str(db)]) == 2
    assert "2 to 10" in capsys.readouterr().err
    assert main(["compare", *map(str, ids), "--plot", str(tmp_path / "x.txt"), "--db", str(db)]) == 2


@pytest.mark.parametrize("backend", ["matplotlib", "plotly"])
def test_overlay_draws_every_run_on_a_common_axis(three, backend):
    _db, _ids, runs = three
    fig = plot_runs(runs, backend=backend)
    for r, trace in zip(runs, _traces(fig, backend)):
        x, y = trace
        run_row = r.sections[r.sections["kind"] == "run"][0]
        # seconds from each run's own start; the energy under the steps is the run's energy
        s = r.samples
        inside = (s["t_end_ns"] > run_row["t_start_ns"]) & (s["t_start_ns"] < run_row["t_end_ns"])
        assert x.min() == pytest.approx((s["t_start_ns"][inside].min() - run_row["t_start_ns"]) / 1e9, abs=1e-12)
        area = float(np.sum(np.diff(x)[::2] * y[::2]))
        want = float(np.sum((s["t_end_ns"][inside] - s["t_start_ns"][inside]) / 1e9 * s["package_w"][inside]))
        assert area == pytest.approx(want, rel=1e-9)
    bars = _bars(fig, backend)
    assert bars == pytest.approx([r.summary()["j_per_output_token"] for r in runs])


def _traces(fig, backend):
    if backend == "plotly":
        return [(np.asarray(t.x, float), np.asarray(t.y, float)) for t in fig.data if t.type == "scatter"]
    return [(np.asarray(ln.get_xdata(), float), np.asarray(ln.get_ydata(), float)) for ln in fig.axes[0].lines]


def _bars(fig, backend):
    if backend == "plotly":
        return list(next(t for t in fig.data if t.type == "bar").y)
    return [p.get_height() for p in fig.axes[1].patches]
