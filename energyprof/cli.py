"""The ``energyprof`` command: a thin layer over the library.

    energyprof profile --model tiny-llama --max-new-tokens 64 [--source auto] [--report r.html]
    energyprof runs [--model M] [--sort j_per_token] [--limit N] [--json]
    energyprof show RUN [--json]
    energyprof compare A B [--json]
    energyprof export RUN --format json|csv|parquet -o PATH
    energyprof report RUN -o report.html
    energyprof clean [--max-runs N] [--max-age-days D] [--dry-run]
    energyprof doctor [--json]
    energyprof demo

User mistakes (bad run id, missing model directory, bad source spec) print one clear
line on stderr and exit with status 2; no traceback.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence


class UserError(Exception):
    """A mistake of the user's: reported in one line, exit status 2."""


# ---------------------------------------------------------------------- output helpers
def _console():
    try:
        from rich.console import Console

        return Console()
    except ImportError:  # pragma: no cover - rich is a dependency of the CLI extra
        return None


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        a = abs(v)
        s = f"{v:.4g}" if (a >= 1e-3 or a == 0) else f"{v:.3e}"
        return f"{s} {unit}".strip()
    return f"{v} {unit}".strip()


def _table(title: str, columns: Sequence[str], rows: List[Sequence[Any]]) -> None:
    con = _console()
    if con is not None:
        from rich.table import Table

        t = Table(title=title)
        for c in columns:
            t.add_column(c)
        for r in rows:
            t.add_row(*[str(x) for x in r])
        con.print(t)
        return
    print(title)
    print("  ".join(columns))
    for r in rows:
        print("  ".join(str(x) for x in r))


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=_json_default, allow_nan=True))


def print_summary(summary: dict) -> None:
    """Print a run summary as tables (run figures, phases, domains)."""
    label = summary.get("source_label", "measured")
    title = f"energyprof run {summary.get('run_id', '-')}  [{summary.get('source')}]"
    if label in ("estimated", "simulated"):
        title += f"  — {label.upper()} numbers"
    rows = [
        ("energy", _fmt(summary.get("energy_j"), "J")),
        ("net energy (above idle)", _fmt(summary.get("net_energy_j"), "J")),
        ("duration", _fmt(summary.get("duration_s"), "s")),
        ("baseline power", _fmt(summary.get("baseline_power_w"), "W")),
        ("peak power", _fmt(summary.get("peak_power_w"), "W")),
        ("input / output tokens", f"{summary.get('input_tokens')} / {summary.get('output_tokens')}"),
        ("J per output token", _fmt(summary.get("j_per_output_token"), "J")),
        ("tokens per J", _fmt(summary.get("tokens_per_j"))),
        ("EDP", _fmt(summary.get("edp_js"), "J·s")),
        ("method / sample period", f"{summary.get('method')} / {_fmt(summary.get('sample_period_s'), 's')}"),
        ("status", summary.get("status")),
    ]
    _table(title, ["figure", "value"], rows)
    phases = summary.get("phases") or {}
    if phases:
        _table("phases", ["phase", "energy J", "duration s", "tokens", "J/token"],
               [(k, _fmt(v.get("energy_j")), _fmt(v.get("duration_s")), v.get("tokens"), _fmt(v.get("j_per_token")))
                for k, v in phases.items()])
    doms = summary.get("domains") or {}
    measured = [(k, _fmt(v, "J")) for k, v in doms.items() if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if measured:
        _table("domains", ["domain", "energy"], measured)


# ---------------------------------------------------------------------- model loading
def load_model(name: str, dtype: Optional[str] = None):
    """A built-in tiny random model name, or a local Hugging Face model directory.

    Returns (model, tokenizer); the tokenizer is the directory's own when it has one,
    else energyprof's byte-level fallback.
    """
    from . import tiny

    if name in tiny.TINY_MODELS:
        model = tiny.tiny_model(name)
        return model, tiny.ByteTokenizer(model.config.vocab_size)
    p = Path(name).expanduser()
    if not p.exists():
        raise UserError(
            f"model '{name}' is neither a built-in tiny model ({', '.join(sorted(tiny.TINY_MODELS))}) "
            "nor an existing local directory")
    if not (p / "config.json").exists():
        raise UserError(f"model directory '{p}' has no config.json: not a Hugging Face model directory")
    import torch
    from transformers import AutoModelForCausalLM

    kw = {"local_files_only": True}
    if dtype:
        kw["dtype"] = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(str(p), **kw).eval()
    tok = None
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "left"
    except Exception:
        tok = tiny.ByteTokenizer(model.config.vocab_size)
    return model, tok


# ---------------------------------------------------------------------- profile
class _Progress:
    """A progress bar over tokens with live W and tok/s, driven by a forward hook."""

    def __init__(self, total_steps: int, session, enabled: bool = True, batch_size: int = 1):
        self.total = total_steps
        self.session = session
        self.enabled = enabled and sys.stderr.isatty()
        self.batch_size = batch_size
        self.steps = 0           # forwards so far = new tokens per sequence
        self.t0 = time.perf_counter()
        self._bar = None

    def __enter__(self):
        if self.enabled:
            try:
                from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

                self._bar = Progress(TextColumn("generating"), BarColumn(), TextColumn("{task.completed}/{task.total} tokens"),
                                     TextColumn("{task.fields[info]}"), TimeElapsedColumn(), transient=True)
                self._bar.__enter__()
                self._task = self._bar.add_task("gen", total=self.total, info="")
            except ImportError:
                self._bar = None
        return self

    def hook(self, module, args, output):
        self.steps += 1
        if self._bar is not None:
            dt = time.perf_counter() - self.t0
            info = f"{self.steps * self.batch_size / dt:.1f} tok/s"
            w = self.session.live_power_w() if hasattr(self.session, "live_power_w") else None
            if w is not None and not math.isnan(w):
                info += f"  {w:.1f} W"
            self._bar.update(self._task, completed=min(self.steps, self.total), info=info)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False


def profile(args) -> int:
    import torch

    import energyprof as ep
    from . import sources

    try:
        sources.parse_spec(args.source)
    except ValueError as e:
        raise UserError(f"bad --source: {e}")
    if args.prompt_file:
        try:
            prompt = Path(args.prompt_file).read_text()
        except OSError as e:
            raise UserError(f"cannot read --prompt-file: {e}")
    else:
        prompt = args.prompt
    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be >= 1")
    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    model, tok = load_model(args.model)
    inputs = tok([prompt] * args.batch_size, return_tensors="pt")
    if getattr(tok, "pad_token_id", None) is not None and getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
    gen_kw = dict(max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens, do_sample=False)
    run_kw = dict(source=args.source, mode=args.mode, sync=args.sync, baseline_s=args.baseline_s,
                  db=args.db, save=not args.no_save, name=args.name, tags=args.tag or None)
    if args.interval_ms:
        run_kw["interval_ms"] = args.interval_ms
    with ep.run(model, **run_kw) as s:
        if getattr(args, "live", False):   # energyprof.live: power, phase, layer and the token stream
            from .live import LiveProgress

            prog = LiveProgress(args.max_new_tokens, s, tok)
        else:
            prog = _Progress(args.max_new_tokens, s, enabled=not args.json, batch_size=args.batch_size)
        h = model.register_forward_hook(prog.hook)
        try:
            with prog, torch.no_grad():
                out = model.generate(**inputs, **gen_kw)
        finally:
            h.remove()
    summary = s.summary()
    if args.json:
        _print_json(summary)
    else:
        print_summary(summary)
        if args.show_output and hasattr(tok, "decode"):
            print(tok.decode(out[0].tolist()))
    if args.report:
        path = s.report(args.report)
        print(f"report written to {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


# ---------------------------------------------------------------------- read commands
def _db(args):
    return getattr(args, "db", None)


def _load(run_id: str, db):
    from . import db as dbm

    try:
        return dbm.load(int(run_id), db=db)
    except ValueError:
        raise UserError(f"run id must be an integer, got '{run_id}'")
    except KeyError as e:
        raise UserError(str(e.args[0]) if e.args else f"no run {run_id}")


def cmd_runs(args) -> int:
    from . import db as dbm

    kw = dict(model=args.model, arch=args.arch, source=args.source, status=args.status, tag=args.tag,
              search=args.search, sort=args.sort, descending=not args.ascending, limit=args.limit, offset=args.offset)
    try:
        rows = dbm.runs(_db(args), **{k: v for k, v in kw.items() if v is not None})
    except ValueError as e:
        raise UserError(str(e))
    if args.json:
        _print_json(list(rows))
        return 0
    _table("runs", ["id", "started", "name", "model", "source", "status", "J", "J/out tok", "tokens/J"],
           [(r.get("run_id"), r.get("started_at"), r.get("name") or "", (r.get("model") or {}).get("name", ""),
             r.get("source"), r.get("status"), _fmt(r.get("energy_j")), _fmt(r.get("j_per_output_token")),
             _fmt(r.get("tokens_per_j"))) for r in rows])
    return 0


def cmd_show(args) -> int:
    run = _load(args.run, _db(args))
    if args.json:
        _print_json(run.summary())
    else:
        print_summary(run.summary())
        from .analysis import efficiency

        eff = efficiency(run)
        rows = []
        for key, f in eff.items():
            se = f.get("se")
            unc = f"± {_fmt(se)}" if isinstance(se, float) and not math.isnan(se) else ""
            unit = f.get("unit", "")
            rows.append((key, _fmt(f.get("value"), "" if unit == "1" else unit), unc))
        _table("efficiency (± standard error where the tokens give one)", ["figure", "value", "uncertainty"], rows)
        ls = run.layer_summary()
        if len(ls):
            _table("layers (over all calls)", ["layer", "calls", "energy J", "mean J/call", "± SE", "share"],
                   [(int(r["layer"]), int(r["n_calls"]), _fmt(float(r["energy_j"])), _fmt(float(r["mean_energy_j"])),
                     _fmt(float(r["sem_energy_j"])), f"{100 * float(r['share']):.1f}%") for r in ls])
    return 0


def cmd_compare(args) -> int:
    from . import db as dbm

    ra, rb = (_load(r, _db(args)) for r in (args.a, args.b))
    res = dbm.compare(ra, rb, db=_db(args))
    if args.json:
        _print_json(res)
        return 0
    figs = res.get("figures", res)
    rows = []
    for k, v in figs.items():
        if isinstance(v, dict) and "a" in v:
            rows.append((k, _fmt(v.get("a")), _fmt(v.get("b")), _fmt(v.get("rel_diff"))))
    _table(f"run {args.a} vs run {args.b}", ["figure", str(args.a), str(args.b), "relative diff"], rows)
    return 0


def cmd_export(args) -> int:
    from . import db as dbm

    run = _load(args.run, _db(args))
    try:
        path = dbm.export(run, args.output, format=args.format, db=_db(args))
    except (ValueError, ImportError) as e:
        raise UserError(str(e))
    print(f"exported run {args.run} to {path}")
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    run = _load(args.run, _db(args))
    path = write_report(run, args.output)
    print(f"report written to {path}")
    return 0


def cmd_clean(args) -> int:
    from . import db as dbm

    if args.max_runs is None and args.max_age_days is None:
        raise UserError("clean needs --max-runs and/or --max-age-days")
    res = dbm.cleanup(max_runs=args.max_runs, max_age_days=args.max_age_days, dry_run=args.dry_run, db=_db(args))
    if args.json:
        _print_json(res)
    else:
        ids = res["run_ids"]
        verb = "would delete" if args.dry_run else "deleted"
        print(f"{verb} {len(ids)} run(s): {', '.join(str(i) for i in ids) or '-'}")
    return 0


def cmd_doctor(args) -> int:
    from . import doctor

    return doctor.main(["--json"] if args.json else [])


def cmd_demo(args) -> int:
    """Profile tiny-llama for 64 new tokens on --source auto, save the run, write demo-report.html."""
    ns = argparse.Namespace(
        model="tiny-llama", prompt="The energy of one token is", prompt_file=None, max_new_tokens=args.max_new_tokens,
        batch_size=1, source=args.source, mode="standard", sync="auto", baseline_s=args.baseline_s, db=args.db,
        name="demo", tag=["demo"], report=args.report, json=False, no_save=False, show_output=False, interval_ms=None)
    rc = profile(ns)
    from . import db as dbm

    print()
    print(f"The run is saved in {dbm.default_path() if args.db is None else args.db} "
          "(list with `energyprof runs`, open with ep.load(run_id)).")
    print(f"The HTML report is {Path(args.report).resolve()}.")
    last = dbm.runs(args.db, limit=1)
    if last:
        r = last[0]
        print(f"Source used: {r.get('source')} ({r.get('source_label')}).", end=" ")
        if r.get("source_label") in ("estimated", "simulated"):
            why = (": no power sensor was usable here (run `energyprof doctor` to see why)"
                   if args.source == "auto" else "")
            print(f"These numbers are {r.get('source_label').upper()}{why}.")
        else:
            print()
    return rc


# ---------------------------------------------------------------------- parser
def add_db(sp) -> None:
    """The ``--db`` option every command that reads or writes the store takes."""
    sp.add_argument("--db", default=None, help="database path (default $ENERGYPROF_DB or the user data dir)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="energyprof", description="Energy of transformer inference, per token and layer.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    sp = sub.add_parser("profile", help="profile model.generate() and save the run")
    sp.add_argument("--model", required=True, help="a built-in tiny model (tiny-llama, ...) or a local HF directory")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--prompt", default="Hello, energy!", help="prompt text")
    g.add_argument("--prompt-file", help="read the prompt from a file")
    sp.add_argument("--max-new-tokens", type=int, default=32)
    sp.add_argument("--batch-size", type=int, default=1)
    sp.add_argument("--source", default="auto", help="power source spec (see `energyprof doctor`)")
    sp.add_argument("--mode", choices=["minimal", "standard", "deep"], default="standard")
    sp.add_argument("--sync", choices=["auto", "none", "device"], default="auto")
    sp.add_argument("--baseline-s", type=float, default=2.0)
    sp.add_argument("--interval-ms", type=float, default=None)
    sp.add_argument("--name", default=None)
    sp.add_argument("--tag", action="append", help="tag the run (repeatable)")
    sp.add_argument("--report", default=None, help="write the HTML report to this path")
    sp.add_argument("--no-save", action="store_true", help="keep the run in memory only")
    sp.add_argument("--show-output", action="store_true", help="print the generated text")
    sp.add_argument("--json", action="store_true")
    add_db(sp)
    sp.set_defaults(func=profile)

    sp = sub.add_parser("runs", help="list stored runs")
    for opt in ("model", "arch", "source", "status", "tag", "search"):
        sp.add_argument(f"--{opt}", default=None)
    sp.add_argument("--sort", default="started_at", help="started_at, energy_j, j_per_token, tokens_per_j, ...")
    sp.add_argument("--ascending", action="store_true")
    sp.add_argument("--limit", type=int, default=50)
    sp.add_argument("--offset", type=int, default=0)
    sp.add_argument("--json", action="store_true")
    add_db(sp)
    sp.set_defaults(func=cmd_runs)

    sp = sub.add_parser("show", help="show one run")
    sp.add_argument("run")
    sp.add_argument("--json", action="store_true")
    add_db(sp)
    sp.set_defaults(func=cmd_show)

    sp = sub.add_parser("compare", help="compare two runs")
    sp.add_argument("a")
    sp.add_argument("b")
    sp.add_argument("--json", action="store_true")
    add_db(sp)
    sp.set_defaults(func=cmd_compare)

    sp = sub.add_parser("export", help="export a run")
    sp.add_argument("run")
    sp.add_argument("--format", choices=["json", "csv", "parquet"], default="json")
    sp.add_argument("-o", "--output", required=True)
    add_db(sp)
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("report", help="write a run's self-contained HTML report")
    sp.add_argument("run")
    sp.add_argument("-o", "--output", default="report.html")
    add_db(sp)
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("clean", help="delete old runs (retention)")
    sp.add_argument("--max-runs", type=int, default=None)
    sp.add_argument("--max-age-days", type=float, default=None)
    sp.add_argument("--dry-run", action="store_true")
    sp.add_argument("--json", action="store_true")
    add_db(sp)
    sp.set_defaults(func=cmd_clean)

    sp = sub.add_parser("doctor", help="which power sources work here, and how to enable the others")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_doctor)

    from .live import add_monitor_parser  # `monitor` and `profile --live` (energyprof.live)

    add_monitor_parser(sub)

    sp = sub.add_parser("demo", help="profile tiny-llama for 64 tokens, save it, write demo-report.html")
    sp.add_argument("--source", default="auto")
    sp.add_argument("--max-new-tokens", type=int, default=64)
    sp.add_argument("--baseline-s", type=float, default=1.0)
    sp.add_argument("--report", default="demo-report.html")
    add_db(sp)
    sp.set_defaults(func=cmd_demo)

    # analyses (energyprof.sweep / .predict / .carbon own their options and handlers)
    from . import carbon as _carbon, predict as _predict
    from .sweep import add_arguments as _sweep_args, cli_main as _sweep_main

    sp = sub.add_parser("sweep", help="run a batch × prompt × output grid, table with mean ± 95%% CI")
    _sweep_args(sp)
    sp.set_defaults(func=_sweep_main)
    sp = sub.add_parser("predict", help="fit/evaluate an energy predictor on stored runs, or predict a model's energy")
    _predict.add_arguments(sp)
    sp.set_defaults(func=_predict.cli_main)
    sp = sub.add_parser("carbon", help="CO2 and cost of runs, per run and per 1M tokens")
    _carbon.add_arguments(sp)
    sp.set_defaults(func=_carbon.cli_main)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``energyprof`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"energyprof: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("energyprof: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
