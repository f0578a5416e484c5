"""The ``energyprof`` command: a thin layer over the library.

    energyprof profile --model tiny-llama --max-new-tokens 64 [--source auto] [--report r.html]
    energyprof runs [--model M] [--search TEXT] [--since D] [--until D] [--sort j_per_token] [--limit N] [--json]
    energyprof show RUN [--json]
    energyprof compare A B [C ...] [--json] [--plot out.html]
    energyprof delete RUN [RUN ...]
    energyprof import run.json [...]
    energyprof context RUN [...] [--json] [--plot out.html]
    energyprof export RUN --format json|csv|parquet -o PATH
    energyprof report RUN -o report.html
    energyprof clean [--max-runs N] [--max-age-days D] [--dry-run]
    energyprof doctor [--json]
    energyprof demo
    energyprof serve [--db PATH] [--host 127.0.0.1] [--port 8765] [--token T] [--read-only] [--open]

User mistakes (bad run id, missing model directory, bad source spec) print one clear
line on stderr and exit with status 2; no traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..errors import EXTRAS, MissingExtraError, UserError
from . import carbon as _carbon, predict as _predict, resolve as _resolve, serve as _serve, sweep as _sweep
from .common import add_db
from .doctor import cmd_doctor
from .monitor import add_monitor_parser
from .profile import cmd_demo, profile
from .runs import cmd_clean, cmd_compare, cmd_context, cmd_delete, cmd_export, cmd_import, cmd_report, cmd_runs, \
    cmd_show

__all__ = ["main", "build_parser"]


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
    sp.add_argument("--post-baseline-s", type=float, default=0.0,
                    help="seconds of idle power measured after generate(), to see baseline drift")
    sp.add_argument("--interval-ms", type=float, default=None)
    sp.add_argument("--name", default=None)
    sp.add_argument("--tag", action="append", help="tag the run (repeatable)")
    sp.add_argument("--report", default=None, help="write the HTML report to this path")
    sp.add_argument("--no-save", action="store_true", help="keep the run in memory only")
    sp.add_argument("--show-output", action="store_true", help="print the generated text")
    sp.add_argument("--no-text", action="store_true", help="store no prompt, output or token text with the run")
    sp.add_argument("--temperature", type=float, default=None, help="sample with this temperature (default: greedy)")
    sp.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
    sp.add_argument("--top-p", type=float, default=None, help="sample from the smallest set with this probability")
    sp.add_argument("--seed", type=int, default=None, help="seed torch before generating (stored with the run)")
    sp.add_argument("--json", action="store_true")
    add_db(sp)
    sp.set_defaults(func=profile)

    sp = sub.add_parser("runs", help="list stored runs")
    for opt in ("model", "arch", "source", "status", "tag"):
        sp.add_argument(f"--{opt}", default=None)
    sp.add_argument("--search", default=None, help="substring of the name, model, source, tags, host or prompt")
    sp.add_argument("--since", default=None, help="runs started at or after this ISO date/time (UTC)")
    sp.add_argument("--until", default=None, help="runs started before this ISO date/time (UTC)")
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

    sp = sub.add_parser("compare", help="compare 2 to 10 runs")
    sp.add_argument("runs", nargs="+", metavar="RUN")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--plot", default=None, metavar="PATH",
                    help="write the power timelines and J/token bars (.html interactive, .png/.svg/.pdf static)")
    add_db(sp)
    sp.set_defaults(func=cmd_compare)

    sp = sub.add_parser("delete", help="delete runs and all their rows")
    sp.add_argument("runs", nargs="+", metavar="RUN")
    sp.add_argument("--json", action="store_true")
    add_db(sp)
    sp.set_defaults(func=cmd_delete)

    sp = sub.add_parser("import", help="import runs exported with `energyprof export --format json`")
    sp.add_argument("paths", nargs="+", metavar="PATH")
    sp.add_argument("--json", action="store_true")
    add_db(sp)
    sp.set_defaults(func=cmd_import)

    sp = sub.add_parser("context", help="decode J/token against the context length (fit and plot)")
    sp.add_argument("runs", nargs="+", metavar="RUN")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--plot", default=None, metavar="PATH", help="write the figure (.html or .png/.svg/.pdf)")
    add_db(sp)
    sp.set_defaults(func=cmd_context)

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

    add_monitor_parser(sub)

    sp = sub.add_parser("demo", help="profile tiny-llama for 64 tokens, save it, write demo-report.html")
    sp.add_argument("--source", default="auto")
    sp.add_argument("--max-new-tokens", type=int, default=64)
    sp.add_argument("--baseline-s", type=float, default=1.0)
    sp.add_argument("--report", default="demo-report.html")
    add_db(sp)
    sp.set_defaults(func=cmd_demo)

    # analyses (cli.sweep / cli.predict / cli.carbon own their options and handlers)

    sp = sub.add_parser("sweep", help="run a batch × prompt × output grid, table with mean ± 95%% CI")
    _sweep.add_arguments(sp)
    sp.set_defaults(func=_sweep.cli_main)
    sp = sub.add_parser("predict", help="fit/evaluate an energy predictor on stored runs, or predict a model's energy")
    _predict.add_arguments(sp)
    sp.set_defaults(func=_predict.cli_main)
    sp = sub.add_parser("carbon", help="CO2 and cost of runs, per run and per 1M tokens")
    _carbon.add_arguments(sp)
    sp.set_defaults(func=_carbon.cli_main)
    sp = sub.add_parser("resolve", help="power per component / layer / step by regression over runs' samples")
    _resolve.add_arguments(sp)
    sp.set_defaults(func=_resolve.cli_main)
    sp = sub.add_parser("serve", help="web dashboard over the stored runs: history, run detail, compare, live")
    _serve.add_arguments(sp)
    sp.set_defaults(func=_serve.cli_main)
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
    except ModuleNotFoundError as e:   # an optional package is missing: name the extra, no traceback
        root = (e.name or "").split(".")[0]
        if root not in EXTRAS:
            raise
        print(f"energyprof: error: {MissingExtraError(root, f'energyprof {args.command}')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("energyprof: interrupted", file=sys.stderr)
        return 130
