"""``energyprof sweep``: run (or ``--load``) a sweep and print its table with 95 % intervals."""
from __future__ import annotations

import math
import sys
from typing import List

import numpy as np

from ..analysis.sweep import batch_scaling, context_scaling, load_sweep, pareto_frontier
from ..errors import UserError
from ..measure import sources
from ..measure.sweep import sweep
from ..views.analysis_plots import plot_batch_scaling, plot_context_scaling, plot_pareto
from .common import _print_json, _table, add_db, load_model

__all__ = ["add_arguments", "cli_main"]


def _int_list(text: str, opt: str) -> List[int]:

    try:
        vals = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{opt} must be a comma-separated list of integers, got '{text}'") from None
    if not vals or any(v < 1 for v in vals):
        raise UserError(f"{opt} must list integers >= 1, got '{text}'")
    return vals


def _engine_list(text: str) -> List[str]:
    from ..measure.engines import ENGINES

    names = [v.strip() for v in str(text).split(",") if v.strip()]
    bad = [n for n in names if n not in ENGINES]
    if not names or bad:
        raise UserError(f"--engine takes a comma-separated list of {', '.join(ENGINES)}; got '{text}'")
    if len(set(names)) != len(names):
        raise UserError(f"--engine lists an engine twice: '{text}'")
    return names


def add_arguments(sp) -> None:
    """The ``energyprof sweep`` options (called by energyprof.cli)."""

    sp.add_argument("--model", default=None, help="a built-in tiny model (tiny-llama, ...) or a local HF directory")
    sp.add_argument("--batch-sizes", default="1", help="comma-separated, e.g. 1,2,4")
    sp.add_argument("--prompt-lengths", default="32", help="comma-separated prompt lengths in tokens")
    sp.add_argument("--max-new-tokens", default="32", help="comma-separated output lengths")
    sp.add_argument("--repeats", type=int, default=3)
    sp.add_argument("--source", default="auto", help="power source spec (see `energyprof doctor`)")
    sp.add_argument("--mode", choices=["minimal", "standard", "deep"], default="minimal")
    sp.add_argument("--baseline-s", type=float, default=0.0)
    sp.add_argument("--interval-ms", type=float, default=None)
    sp.add_argument("--prompts", choices=["random", "text"], default="random")
    sp.add_argument("--interleave", action="store_true", help="run the whole grid once per repeat")
    sp.add_argument("--tag", action="append", help="extra tag for every run (repeatable)")
    sp.add_argument("--engine", default=None, metavar="LIST",
                    help="compare engines: comma-separated from eager, sdpa, compile, onnxruntime; the grid runs "
                         "once per engine and a table of J/token and tokens/J per engine follows")
    sp.add_argument("--compile-backend", default="inductor",
                    help="torch.compile backend of the compile engine (default inductor; eager traces only)")
    sp.add_argument("--onnx-model", default=None, metavar="PATH",
                    help="the onnxruntime engine runs this exported model (energyprof.engines.export_onnx) "
                         "instead of exporting --model itself")
    sp.add_argument("--load", default=None, metavar="SWEEP_ID", help="show a stored sweep instead of running one")
    sp.add_argument("--csv", default=None, help="also write the table as CSV")
    sp.add_argument("--plot", default=None, metavar="PREFIX",
                    help="write PREFIX-batch.png, PREFIX-context.png, PREFIX-pareto.png where the grid allows")
    sp.add_argument("--no-save", action="store_true", help="keep the runs in memory only")
    sp.add_argument("--no-progress", action="store_true")
    sp.add_argument("--json", action="store_true")
    add_db(sp)


def _fmt(v: float, hw: float) -> str:
    if math.isnan(v):
        return "-"
    return f"{v:.4g}" if math.isnan(hw) else f"{v:.4g} ± {hw:.2g}"


def cli_main(args) -> int:
    """``energyprof sweep``: run (or ``--load``) a sweep, print the table with 95 % intervals."""

    if args.load:
        try:
            res = load_sweep(args.load, db=args.db)
        except KeyError as e:
            raise UserError(str(e.args[0]))
    else:
        if not args.model:
            raise UserError("sweep needs --model (or --load SWEEP_ID)")
        try:
            sources.parse_spec(args.source)
        except ValueError as e:
            raise UserError(f"bad --source: {e}")
        if args.repeats < 1:
            raise UserError("--repeats must be >= 1")
        bs = _int_list(args.batch_sizes, "--batch-sizes")
        pls = _int_list(args.prompt_lengths, "--prompt-lengths")
        nts = _int_list(args.max_new_tokens, "--max-new-tokens")
        engines = _engine_list(args.engine) if args.engine else None
        model, _tok = load_model(args.model)
        kw = {}
        if args.interval_ms:
            kw["interval_ms"] = args.interval_ms
        if engines:
            kw["engines"] = engines
            kw["engine_options"] = {"compile": {"backend": args.compile_backend}}
            if args.onnx_model:
                kw["engine_options"]["onnxruntime"] = {"path": args.onnx_model}
        res = sweep(model, batch_sizes=bs, prompt_lengths=pls, max_new_tokens=nts, repeats=args.repeats,
                    source=args.source, db=args.db, baseline_s=args.baseline_s, mode=args.mode,
                    progress=not args.no_progress and sys.stderr.isatty(), tags=args.tag, save=not args.no_save,
                    prompts=args.prompts, interleave=args.interleave, **kw)
    t = res.table
    et = res.engine_table() if any(t["engine"]) else None
    if args.json:
        doc = {"sweep_id": res.sweep_id, "run_ids": res.run_ids,
               "table": [{f: r[f].item() for f in t.dtype.names} for r in t]}
        if et is not None:
            doc["engines"] = [{f: r[f].item() for f in et.dtype.names} for r in et]
        _print_json(doc)
    else:
        eng_col = ["engine"] if et is not None else []
        _table(f"sweep {res.sweep_id} (mean ± 95% CI half-width)",
               eng_col + ["batch", "prompt", "new", "n", "energy J", "J/out token", "prefill J/in token",
                          "decode J/out token", "tokens/s"],
               [tuple([str(r["engine"])] if et is not None else []) +
                (int(r["batch_size"]), int(r["prompt_length"]), int(r["max_new_tokens"]), int(r["n"]),
                 _fmt(r["energy_j"], r["energy_j_ci95"]), _fmt(r["j_per_output_token"], r["j_per_output_token_ci95"]),
                 _fmt(r["prefill_j_per_input_token"], r["prefill_j_per_input_token_ci95"]),
                 _fmt(r["decode_j_per_output_token"], r["decode_j_per_output_token_ci95"]),
                 _fmt(r["tokens_per_s"], r["tokens_per_s_ci95"])) for r in t])
        if et is not None:
            _table("engines (mean ± 95% CI half-width)",
                   ["engine", "batch", "prompt", "new", "n", "J/out token", "tokens/J", "tokens/s", "tokens resolved",
                    "label"],
                   [(str(r["engine"]), int(r["batch_size"]), int(r["prompt_length"]), int(r["max_new_tokens"]),
                     int(r["n"]), _fmt(r["j_per_output_token"], r["j_per_output_token_ci95"]),
                     _fmt(r["tokens_per_j"], r["tokens_per_j_ci95"]), _fmt(r["tokens_per_s"], r["tokens_per_s_ci95"]),
                     f"{100 * r['tokens_resolved']:.0f}%", str(r["source_label"])) for r in et])
            print("engine source: " + "; ".join(sorted({f"{r['source']} ({r['source_label']})" for r in et})))
            print("engine uncertainty beside the CIs: " + "; ".join(sorted({str(r["systematic"]) for r in et}))
                  + f"; samples of {np.nanmax(et['sample_period_s']) * 1e3:.3g} ms (decode steps shorter than "
                  "that are time shares of a sample)")
        front = pareto_frontier(t)
        print("Pareto frontier (tokens/s vs J/out token): " + ", ".join(
            (f"{t['engine'][i]} " if t['engine'][i] else "")
            + f"b{t['batch_size'][i]} p{t['prompt_length'][i]} n{t['max_new_tokens'][i]}" for i in front))
        bsc = batch_scaling(res)
        if bsc["exponent"] is not None:
            e = bsc["exponent"]
            print(f"J/out token ∝ batch^{e['value']:.3f} (95% CI {e['ci95'][0]:.3f} .. {e['ci95'][1]:.3f})")
        if len(np.unique(t["prompt_length"])) >= 3:
            cs = context_scaling(res)
            parts = [f"{k} = {v['value']:.4g} {v['unit']} (95% CI {v['ci95'][0]:.3g} .. {v['ci95'][1]:.3g})"
                     for k, v in cs["coefficients"].items()]
            print("prefill energy fit: " + "; ".join(parts))
    if args.csv:
        header = ",".join(t.dtype.names)
        lines = [header] + [",".join(repr(r[f].item()) for f in t.dtype.names) for r in t]
        with open(args.csv, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        print(f"table written to {args.csv}", file=sys.stderr)
    if args.plot:
        written = []
        if len(np.unique(t["batch_size"])) >= 2:
            plot_batch_scaling(res).savefig(f"{args.plot}-batch.png")
            written.append(f"{args.plot}-batch.png")
        if len(np.unique(t["prompt_length"])) >= 3:
            plot_context_scaling(res).savefig(f"{args.plot}-context.png")
            written.append(f"{args.plot}-context.png")
        plot_pareto(res).savefig(f"{args.plot}-pareto.png")
        written.append(f"{args.plot}-pareto.png")
        print("plots written: " + ", ".join(written), file=sys.stderr)
    return 0
