"""A long run through attribution, the store and the report, scaled and extrapolated.

The run of issue 18: one hour at 1 kHz (3.6 M interval samples), 100 K decode steps and
32 layers x 8 components of calls per step in standard mode (about 25.6 M call rows).
On the 2-core development machine that does not fit a few minutes, so the script runs
``--scale`` of it (default 0.02: 72 s of samples, 2,000 steps, 512 K calls) with the same
shape per step, and extrapolates every cost linearly to the whole hour, saying so.

What is timed (each in this one process, same data):

  attribution   energyprof.measure.attribution.attribute(): what ep.run does after the
                block (pair the hook events, one integrate call, build the rows);
                goal <= 1 s per million calls
  store         Store.finish_run of the run's arrays (sections, tokens, calls, samples,
                the downsampling levels) against the bare C writer (_core.Store.insert,
                one job per table) inserting the same rows in the same run; goal: within
                2x.  Beside it, for context, the C writer's rate on as many narrow sample
                rows (a call row has three times the columns)
  report        views.report.write_report from the stored run: the HTML size (goal
                < 10 MB, at this length and at 4x the steps: the figures read the downsampled
                levels, not every sample, and bin the steps past a fixed number of points)

Peak memory: the process's maximum resident set (ru_maxrss) after each stage; and, in a
fresh process per case, the peak above the input of attribution + store write with the
rows held at once and streamed in pieces (what ep.run does past max_calls_in_memory),
at two run lengths: bounded means the streamed peak does not grow with the run.

    .venv/bin/python benchmarks/long_run.py [--scale 0.02] [--rounds 3] [--write]
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import add_write_arg, bootstrap_ci, fmt_ci, headline, ratio_of_medians, save, verdict, verdict_text  # noqa: E402

from energyprof import _core  # noqa: E402
from energyprof._dtypes import EVENT_DTYPE  # noqa: E402
from energyprof.measure.attribution import PIECE_CALLS, Forward, SpanInfo, attribute  # noqa: E402
from energyprof.store.db import READ_PIECE_ROWS, Store  # noqa: E402
from energyprof.views.plot import MAX_STEP_COLUMNS, MAX_STEP_POINTS  # noqa: E402
from energyprof.views.report import MAX_TABLE_STEPS  # noqa: E402

HOUR_S = 3600.0
RATE_HZ = 1000
STEPS_PER_HOUR = 100_000
LAYERS = 32
COMPONENTS = ("input_norm", "attn", "q_proj", "k_proj", "v_proj", "o_proj", "post_norm", "mlp")


def rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return r / 1024.0 if sys.platform == "darwin" else r


def make_run(scale: float, seed: int = 0):
    """Samples, hook events, forwards and spans of `scale` of the hour."""
    rng = np.random.default_rng(seed)
    dur_ns = int(HOUR_S * scale * 1e9)
    n = int(HOUR_S * scale * RATE_HZ)
    t0 = 10**12
    period = 1_000_000
    s = np.zeros(n, np.dtype(_core.SAMPLE_DTYPE))
    s["t_start_ns"] = t0 + np.arange(n, dtype=np.int64) * period
    s["t_end_ns"] = s["t_start_ns"] + period
    s["kind"] = _core.KIND_INTERVAL
    s["flags"] = _core.SFLAG_SIMULATED
    s["cpu_w"] = 20 + 5 * rng.random(n)
    s["gpu_w"] = 60 + 30 * rng.random(n)
    s["ane_w"] = np.nan
    s["dram_w"] = 2.0
    s["package_w"] = s["cpu_w"] + s["gpu_w"]
    steps = int(STEPS_PER_HOUR * scale)
    # spans: per layer the 'layer' span and its components (attn's projections inside attn)
    spans = []
    for layer in range(LAYERS):
        lid = len(spans)
        spans.append(SpanInfo(layer=layer, component="layer"))
        aid = None
        for c in COMPONENTS:
            parent = aid if c.endswith("_proj") and aid is not None else lid
            spans.append(SpanInfo(layer=layer, component=c, parent_span=parent))
            if c == "attn":
                aid = len(spans) - 1
    # per step: the layers in order; inside a layer its components back to back (attn holds the projections)
    step_ns = dur_ns // (steps + 1)
    layer_ns = step_ns // (LAYERS + 1)
    comp_ns = layer_ns // (len(COMPONENTS) + 2)
    per_layer = []   # (offset_ns, span offset, kind) for one layer
    per_layer.append((0, 0, 0))
    t = 1
    attn_begin = None
    for k, c in enumerate(COMPONENTS):
        if c == "attn":
            per_layer.append((t, k + 1, 0))
            attn_begin = t
            t += 1
            continue
        per_layer.append((t, k + 1, 0))
        t += comp_ns
        per_layer.append((t, k + 1, 1))
        t += 1
        if c == "o_proj":
            per_layer.append((t, COMPONENTS.index("attn") + 1, 1))
            t += 1
    per_layer.append((layer_ns - 1, 0, 1))
    assert attn_begin is not None
    off = np.array([p[0] for p in per_layer], np.int64)
    sp = np.array([p[1] for p in per_layer], np.int32)
    kd = np.array([p[2] for p in per_layer], np.int32)
    n_per_step = len(per_layer) * LAYERS
    ev = np.zeros(steps * n_per_step, EVENT_DTYPE)
    layer_off = (np.arange(LAYERS, dtype=np.int64) * layer_ns)[:, None] + off[None, :]
    layer_sp = (np.arange(LAYERS, dtype=np.int32) * (len(COMPONENTS) + 1))[:, None] + sp[None, :]
    step_t = t0 + step_ns // 2 + np.arange(steps, dtype=np.int64) * step_ns
    ev["t_ns"] = (step_t[:, None] + layer_off.reshape(1, -1)).reshape(-1)
    ev["span_id"] = np.tile(layer_sp.reshape(-1), steps)
    ev["kind"] = np.tile(np.tile(kd, LAYERS), steps)
    fw = [Forward(t_start_ns=int(step_t[i]), t_end_ns=int(step_t[i] + LAYERS * layer_ns), batch=1, new_positions=1,
                  input_tokens=0 if i else 128, prefill=(i == 0)) for i in range(steps)]
    return s, ev, fw, spans, t0, t0 + dur_ns


def _reset_peak_rss() -> bool:
    """Linux: make the peak resident set (VmHWM) start again from the current one."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _vm_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


#: Samples per write while the run goes on (the session writes what the sampler drained, every 200 ms or so).
SAMPLE_BATCH = 4096


def stage_memory(scale: float, streamed: bool, piece_calls: int) -> dict:
    """Peak resident memory above the input of attribution + store write, in this process:
    streamed (each piece written as it is built: what ep.run does past max_calls_in_memory)
    or held (every row built, then finish_run). Run in a fresh process per case."""
    from energyprof.measure.callstream import CallStream

    samples, events, forwards, spans, t0, t1 = make_run(scale)
    n_calls = int(np.count_nonzero(events["kind"] == 1))
    with tempfile.TemporaryDirectory() as d:
        st = Store(os.path.join(d, "run.db"))
        rid = st.create_run({"name": "long run", "source": "synthetic", "mode": "standard"})
        # as ep.run does: the samples go to the store in batches while the run goes on (not
        # part of what happens after the block); the levels of all of them at the end
        for k in range(0, len(samples), SAMPLE_BATCH):
            st.write_samples(rid, samples[k:k + SAMPLE_BATCH])
        st.flush()
        ok = _reset_peak_rss()
        base_kb = _vm_kb("VmRSS")
        t = time.perf_counter()
        if streamed:
            sink = CallStream(st, rid)
            att = attribute(samples, t0, t1, forwards, events, spans, nominal_period_s=1e-3, calls_sink=sink,
                            piece_calls=piece_calls)
            sink.close()
            assert sink.error is None and sink.n_calls == n_calls
            layers = comps = None
        else:
            att = attribute(samples, t0, t1, forwards, events, spans, nominal_period_s=1e-3)
            is_layer = att.calls["component"] == "layer"
            layers, comps = att.calls[is_layer], att.calls[~is_layer]
        st.finish_run(rid, dict(att.summary), att.sections, att.tokens, layers, comps, "completed",
                      all_samples=samples)
        st.flush()
        wall_s = time.perf_counter() - t
        peak_kb = _vm_kb("VmHWM")
        n_rows = st.conn.execute("SELECT COUNT(*) FROM layer_metrics WHERE run_id=?", (rid,)).fetchone()[0] + \
            st.conn.execute("SELECT COUNT(*) FROM component_metrics WHERE run_id=?", (rid,)).fetchone()[0]
        st.close()
    return {"scale": scale, "streamed": streamed, "n_calls": n_calls, "rows_stored": int(n_rows),
            "peak_above_input_mb": (peak_kb - base_kb) / 1024.0 if ok else float("nan"), "wall_s": wall_s}


def report_memory(db_path: str, run_id: int) -> dict:
    """Peak resident memory above this (fresh) process's start of loading the stored run, then
    of writing its report: what `energyprof report` holds for a run of this length."""
    from energyprof.store.db import load
    from energyprof.views.report import write_report

    ok = _reset_peak_rss()
    base_kb = _vm_kb("VmRSS")
    run = load(run_id, db=db_path)
    load_kb = _vm_kb("VmHWM")
    n_calls = len(run.layers) + len(run.components)
    with tempfile.TemporaryDirectory() as d:
        write_report(run, os.path.join(d, "report.html"))
    report_kb = _vm_kb("VmHWM")
    nan = float("nan")
    return {"n_calls": n_calls, "load_mb": (load_kb - base_kb) / 1024.0 if ok else nan,
            "report_mb": (report_kb - base_kb) / 1024.0 if ok else nan}


def html_at(scale: float, piece_calls: int) -> dict:
    """The report's HTML size for a stored run of ``scale`` of the hour (calls streamed to the
    store, then loaded): with html_mb at another scale, whether the page grows with the run."""
    from energyprof.measure.callstream import CallStream
    from energyprof.store.db import load
    from energyprof.views.report import render_report

    samples, events, forwards, spans, t0, t1 = make_run(scale)
    with tempfile.TemporaryDirectory() as d:
        st = Store(os.path.join(d, "run.db"))
        rid = st.create_run({"name": "long run", "source": "synthetic", "mode": "standard"})
        sink = CallStream(st, rid)
        att = attribute(samples, t0, t1, forwards, events, spans, nominal_period_s=1e-3, calls_sink=sink,
                        piece_calls=piece_calls)
        sink.close()
        st.finish_run(rid, dict(att.summary), att.sections, att.tokens, None, None, "completed", samples=samples,
                      all_samples=samples)
        st.close()
        del samples, events, att
        run = load(rid, db=os.path.join(d, "run.db"))
        html = render_report(run)
    return {"scale": scale, "steps": len(forwards), "html_mb": len(html.encode("utf-8")) / 1e6}


def memory_cases(scales, piece_calls: int, streamed_only=()) -> list:
    """stage_memory for each (scale, streamed) in a fresh interpreter (peaks do not mix);
    the scales of ``streamed_only`` streamed alone (the whole hour held would not fit)."""
    import json
    import subprocess

    out = []
    for scale in [*scales, *streamed_only]:
        for streamed in ((True,) if scale in streamed_only else (True, False)):
            r = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-case", f"{scale}",
                                "--streamed" if streamed else "--held", "--piece-calls", str(piece_calls)],
                               check=True, capture_output=True, text=True)
            out.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=0.02, help="fraction of the hour to run (default 0.02)")
    ap.add_argument("--rounds", type=int, default=3)
    add_write_arg(ap, "long_run")
    ap.add_argument("--memory-scales", default=None,
                    help="scales of the memory cases (default: --scale and 4x it)")
    ap.add_argument("--piece-calls", type=int, default=PIECE_CALLS, help="calls per piece when streamed")
    ap.add_argument("--memory-case", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--report-case", nargs=2, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--streamed", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--held", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.memory_case is not None:
        import json

        print(json.dumps(stage_memory(a.memory_case, a.streamed, a.piece_calls)))
        return 0
    if a.report_case is not None:
        import json

        print(json.dumps(report_memory(a.report_case[0], int(a.report_case[1]))))
        return 0
    rss_start = rss_mb()
    t = time.perf_counter()
    samples, events, forwards, spans, t0, t1 = make_run(a.scale)
    build_s = time.perf_counter() - t
    rss_input = rss_mb()
    n_calls = int(np.count_nonzero(events["kind"] == 1))
    att_s = []
    att = attribute(samples, t0, t1, forwards, events, spans, nominal_period_s=1e-3)   # warm-up, not timed
    for _ in range(a.rounds):
        att = None
        t = time.perf_counter()
        att = attribute(samples, t0, t1, forwards, events, spans, nominal_period_s=1e-3)
        att_s.append(time.perf_counter() - t)
    rss_att = rss_mb()
    att_b_per_call = (rss_att - rss_input) * 2**20 / n_calls
    calls = att.calls
    assert len(calls) == n_calls, (len(calls), n_calls)
    per_m = np.asarray(att_s) / (n_calls / 1e6)
    per_m_ci = bootstrap_ci(lambda i: float(np.median(per_m[i])), len(per_m))
    is_layer = calls["component"] == "layer"
    layers, comps = calls[is_layer], calls[~is_layer]
    rows_run = len(att.sections) + len(att.tokens) + len(calls) + len(samples)
    with tempfile.TemporaryDirectory() as d:
        # the C writer's raw rate on plain sample rows, same count as the run's rows, same process;
        # raw and store writes interleaved over the rounds, each into a fresh file
        raw = np.zeros(rows_run, samples.dtype)
        raw["t_start_ns"] = np.arange(rows_run, dtype=np.int64) * 10
        raw["t_end_ns"] = raw["t_start_ns"] + 10
        raw["kind"] = _core.KIND_INTERVAL
        summary = dict(att.summary)
        summary.update({"name": "long run", "source": "synthetic", "source_kind": "synthetic",
                        "source_label": "simulated", "mode": "standard"})
        raw_times, store_times, same_times = [], [], []
        tables = [("sections", att.sections), ("tokens", att.tokens), ("layers", layers), ("components", comps),
                  ("samples", samples)]
        from energyprof.store.schema import ARRAY_TABLES

        def write_same(k):
            # the bare C writer on the run's own rows: one insert job per table, nothing else
            st = Store(os.path.join(d, f"same{k}.db"))
            rid = st.create_run({"name": "raw, same rows", "source": "synthetic"})
            w = st.writer
            t = time.perf_counter()
            for name, arr in tables:
                w.insert(ARRAY_TABLES[name], arr, {"run_id": rid})
            w.flush()
            same_times.append(time.perf_counter() - t)
            st.close()
            os.remove(os.path.join(d, f"same{k}.db"))

        def write_raw(k):
            st = Store(os.path.join(d, f"raw{k}.db"))
            rid = st.create_run({"name": "raw", "source": "synthetic"})
            st.writer
            t = time.perf_counter()
            st.write_samples(rid, raw)
            st.flush()
            raw_times.append(time.perf_counter() - t)
            st.close()
            os.remove(os.path.join(d, f"raw{k}.db"))

        def write_run(k):
            st = Store(os.path.join(d, f"run{k}.db"))
            rid = st.create_run({"name": "long run", "source": "synthetic", "mode": "standard"})
            st.writer
            t = time.perf_counter()
            st.finish_run(rid, summary, att.sections, att.tokens, layers, comps, "completed", samples=samples,
                          all_samples=samples)
            store_times.append(time.perf_counter() - t)
            st.close()
            return rid

        order = [write_same, write_raw, write_run]
        for k in range(a.rounds):   # the three in a rotating order: none is always first
            for f in order[k % 3:] + order[:k % 3]:
                r = f(k)
                if f is write_run:
                    rid, path = r, os.path.join(d, f"run{k}.db")
        del raw
        raw_s, store_s = float(np.median(raw_times)), float(np.median(store_times))
        narrow_ci = ratio_of_medians(store_times, raw_times)
        store_ci = ratio_of_medians(store_times, same_times)
        same_s = float(np.median(same_times))
        rss_store = rss_mb()
        db_mb = os.path.getsize(path) / 1e6
        from energyprof.store.db import load
        from energyprof.views.report import write_report

        from energyprof.store import groups

        t = time.perf_counter()
        run = load(rid, db=path)
        load_s = time.perf_counter() - t
        # the report with the hashed grouping (as shipped) and with np.unique for every grouping
        # (groups.USE_C off: what the views did before), interleaved, same stored run
        report_times: dict = {True: [], False: []}
        for k in range(a.rounds):
            for use_c in ((True, False) if k % 2 == 0 else (False, True)):
                groups.USE_C = use_c
                t = time.perf_counter()
                html = write_report(run, os.path.join(d, "report.html"))
                report_times[use_c].append(time.perf_counter() - t)
        groups.USE_C = True
        report_s = float(np.median(report_times[True]))
        report_np_s = float(np.median(report_times[False]))
        report_ci = ratio_of_medians(report_times[True], report_times[False])
        html_mb = os.path.getsize(html) / 1e6
        rss_report = rss_mb()
        import json
        import subprocess

        rep_mem = json.loads(subprocess.run([sys.executable, os.path.abspath(__file__), "--report-case", path, str(rid)],
                                            check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    full = 1.0 / a.scale
    html_big = html_at(4 * a.scale, a.piece_calls)
    v_html = bool(html_mb < 10.0 and html_big["html_mb"] < 10.0 and html_big["html_mb"] <= 1.1 * html_mb)
    mem_scales = [float(x) for x in a.memory_scales.split(",")] if a.memory_scales else [a.scale, 4 * a.scale]
    hour = () if a.scale >= 1.0 else (1.0,)
    mem = memory_cases(mem_scales, a.piece_calls, streamed_only=hour)
    by = {(m["scale"], m["streamed"]): m for m in mem}
    lo, hi = mem_scales[0], mem_scales[-1]
    s_lo, s_hi = by[(lo, True)]["peak_above_input_mb"], by[(hi, True)]["peak_above_input_mb"]
    h_lo, h_hi = by[(lo, False)]["peak_above_input_mb"], by[(hi, False)]["peak_above_input_mb"]
    growth = hi / lo
    # bounded: the streamed peak at `growth` times the calls stays within 25 % of the smaller run's
    v_bound = bool(s_hi <= 1.25 * s_lo)
    s_hour = by[(1.0, True)] if (1.0, True) in by else None
    hour_txt = (f"; the whole hour ({s_hour['n_calls']:,} calls, {s_hour['wall_s']:.0f} s attributed and stored): "
                f"{s_hour['peak_above_input_mb']:,.0f} MB, "
                f"{(s_hour['peak_above_input_mb'] - s_lo) * 2**20 / (s_hour['n_calls'] - by[(lo, True)]['n_calls']):,.1f}"
                " bytes per call more") if s_hour else ""
    held_per_call_b = (h_hi - h_lo) * 2**20 / (by[(hi, False)]["n_calls"] - by[(lo, False)]["n_calls"])
    stream_rate = by[(hi, True)]["n_calls"] / by[(hi, True)]["wall_s"]
    held_rate = by[(hi, False)]["n_calls"] / by[(hi, False)]["wall_s"]
    raw_rate = rows_run / raw_s
    store_rate = rows_run / store_s
    v_att = verdict(per_m_ci, 1.0, False)
    v_store = verdict(store_ci, 2.0, False)
    lines = [
        f"long run, scaled: {a.scale:g} of one hour at {RATE_HZ} Hz = {len(samples):,} samples, "
        f"{len(forwards):,} decode steps x {LAYERS} layers x ({len(COMPONENTS)} components + the layer) = "
        f"{n_calls:,} call rows (the hour: x{full:g}: {len(samples) * full:,.0f} samples, {n_calls * full:,.0f} calls)",
        f"input build {build_s:.1f} s (not timed); {a.rounds} attribution rounds after one warm-up",
        "",
        "| stage | measured at this scale | per million calls | extrapolated to the hour (x{:g}, linear) | goal | met |".format(full),
        "|---|---|---|---|---|---|",
        f"| attribution after the block | {np.median(att_s):.2f} s | {fmt_ci(per_m_ci, unit=' s')} | "
        f"{np.median(att_s) * full:,.0f} s | <= 1 s per million calls | {verdict_text(v_att)} |",
        f"| store write (finish_run, {rows_run:,} rows) | {store_s:.2f} s ({store_rate:,.0f} rows/s) | "
        f"{store_s / (n_calls / 1e6):.2f} s | {store_s * full:,.0f} s | within 2x of the bare C writer on the same "
        f"rows ({rows_run / same_s:,.0f} rows/s: one insert job per table; medians of {a.rounds} interleaved rounds) | "
        f"{fmt_ci(store_ci, unit='x')}: {verdict_text(v_store)} |",
        f"| the same against as many narrow sample rows (context: call rows have {calls.dtype.names.__len__()} "
        f"columns, samples {len(samples.dtype.names)}) | | | | C writer raw {raw_rate:,.0f} rows/s | "
        f"{fmt_ci(narrow_ci, unit='x')} |",
        f"| store file | {db_mb:,.0f} MB | | {db_mb * full:,.0f} MB | stated | |",
        f"| load + report | {load_s:.2f} s + {report_s:.2f} s (median of {a.rounds}) | "
        f"{(load_s + report_s) / (n_calls / 1e6):.1f} s | {(load_s + report_s) * full:,.0f} s "
        "(load grows with the rows; the figures read the levels) | stated | |",
        f"| the report with every grouping by np.unique (a sort of the rows each time) instead of the hashed "
        f"one (store.groups, one pass), same run, interleaved | {report_np_s:.2f} s | "
        f"{report_np_s / (n_calls / 1e6):.1f} s | {report_np_s * full:,.0f} s | stated | hashed / np.unique "
        f"{fmt_ci(report_ci, unit='x')} |",
        f"| report HTML | {html_mb:.2f} MB at {len(forwards):,} steps, {html_big['html_mb']:.2f} MB at "
        f"{html_big['steps']:,} (4x) | | bounded: the samples downsampled, the per-step figures binned past "
        f"{MAX_STEP_POINTS} points ({MAX_STEP_COLUMNS} heatmap columns), the token table cut to {MAX_TABLE_STEPS} "
        f"rows; about 4.8 MB of it is plotly.js, inlined | < 10 MB at both lengths, the longer within 1.1x | "
        f"{'met' if v_html else 'NOT met'} |",
        f"| peak RSS after input / attribution / store / report (rows held, this process) | {rss_input:,.0f} / "
        f"{rss_att:,.0f} / {rss_store:,.0f} / {rss_report:,.0f} MB (process start {rss_start:,.0f} MB) | "
        f"attribution {att_b_per_call:,.0f} bytes per call above the input | "
        f"{(rss_report - rss_start) * full / 1e3:,.1f} GB, linear (every row held, then loaded for the report) | "
        "stated | |",
        f"| load + report in a fresh process: peak memory above its start (the rows are read {READ_PIECE_ROWS:,} at a "
        f"time into arrays; the report holds them) | load {rep_mem['load_mb']:,.0f} MB, load + report "
        f"{rep_mem['report_mb']:,.0f} MB | {rep_mem['load_mb'] * 2**20 / rep_mem['n_calls']:,.0f} and "
        f"{rep_mem['report_mb'] * 2**20 / rep_mem['n_calls']:,.0f} bytes per call | "
        f"{rep_mem['report_mb'] * full / 1e3:,.1f} GB, linear: the report needs the memory of the whole run | stated | |",
        f"| peak memory above the input, attribution + store write, rows held at once (fresh process each) | "
        f"{h_lo:,.0f} MB at {lo:g}, {h_hi:,.0f} MB at {hi:g} ({growth:g}x the calls) | {held_per_call_b:,.0f} bytes "
        f"per call | {held_per_call_b * n_calls * full / 1e9:,.1f} GB | stated | |",
        f"| the same streamed: each piece of {a.piece_calls:,} calls written as it is built "
        f"(ep.run past max_calls_in_memory) | {s_lo:,.0f} MB at {lo:g}, {s_hi:,.0f} MB at {hi:g} "
        f"({growth:g}x the calls) | {stream_rate:,.0f} calls/s attributed and stored ({held_rate:,.0f} held) | "
        f"about {s_hi:,.0f} MB: follows the piece, not the run{hour_txt} | bounded (<= 1.25x the smaller run's peak at "
        f"{growth:g}x the calls) | {'met' if v_bound else 'NOT met'} |",
        "",
        "Extrapolation is linear in the rows: every stage is one pass (or a sort) over the rows, so the "
        "hour costs the scaled figure times the factor, not measured. Held at once, memory is dominated by "
        f"the call rows ({calls.dtype.itemsize} bytes each in memory, {calls.dtype['component'].itemsize} of them "
        f"the component name): the hour's {n_calls * full / 1e6:,.1f} M calls take about "
        f"{n_calls * full * calls.dtype.itemsize / 1e9:,.1f} GB.  Streamed (`ep.run(max_calls_in_memory=...)`, "
        "default 1 M calls), attribution builds the calls in pieces cut where no call is open, each integrated "
        "against only the samples around it, and each piece goes to the store as the next one is built: the "
        "peak above the input stays at one or two pieces whatever the run's length (measured above at two "
        "lengths, each in a fresh process, peak resident set reset after the input is built).  What still grows "
        f"with the run is the input itself: the hook events (16 bytes each, {2 * n_calls * full * 16 / 1e9:,.1f} GB "
        "for the hour, drained from the span buffer every 200 ms so none is dropped) and the samples "
        f"({samples.dtype.itemsize} bytes each, {len(samples) * full * samples.dtype.itemsize / 1e9:,.2f} GB for the "
        "hour); and the report, which loads the rows it tabulates.",
        "",
        headline(f"long run (scaled {a.scale:g} of 1 h at 1 kHz, extrapolated): attribution after the block per "
                 "million calls", "<= 1 s", fmt_ci(per_m_ci, unit=" s"), v_att),
        headline("long run: store write (finish_run) vs the bare C writer inserting the same rows, same run",
                 "within 2x", f"{fmt_ci(store_ci, unit='x')} slower ({store_rate:,.0f} vs {rows_run / same_s:,.0f} "
                 f"rows/s); against as many narrow sample rows {fmt_ci(narrow_ci, unit='x')}", v_store),
        headline("long run: report HTML size (samples downsampled, per-step figures binned, token table cut)",
                 "< 10 MB, not growing with the steps",
                 f"{html_mb:.2f} MB at {len(forwards):,} steps, {html_big['html_mb']:.2f} MB at {html_big['steps']:,}",
                 v_html),
        headline("long run: the report's time, hashed grouping (store.groups) / np.unique for every grouping, "
                 "same stored run, interleaved", "stated",
                 f"{fmt_ci(report_ci, unit='x')} ({report_s:.2f} s vs {report_np_s:.2f} s at {n_calls:,} calls)",
                 None),
        headline(f"long run: peak memory above the input of attribution + store, calls streamed in pieces, "
                 f"at {lo:g} and {hi:g} of the hour", "bounded (<= 1.25x at 4x the calls; the whole hour stated)",
                 f"{s_lo:,.0f} MB and {s_hi:,.0f} MB ({growth:g}x the calls)"
                 + (f", {s_hour['peak_above_input_mb']:,.0f} MB at the whole hour" if s_hour else "")
                 + f"; held at once {h_lo:,.0f} and {h_hi:,.0f} MB", v_bound),
    ]
    for ln in lines:
        print(ln)
    if a.write:
        save("long_run", "# Benchmark: a long run through attribution, store and report (scaled)\n\n"
             f"Latest output of `.venv/bin/python benchmarks/long_run.py --scale {a.scale:g} --write`:\n\n"
             + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
