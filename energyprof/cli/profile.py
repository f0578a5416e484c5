"""``energyprof profile`` (profile model.generate() and save the run) and ``energyprof demo``."""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from ..errors import UserError
from ..measure import sources
from .common import _print_json, load_model, print_summary

__all__ = ["profile", "cmd_demo"]


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

    from ..measure.session import run as ep_run

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
    post = getattr(args, "post_baseline_s", 0.0) or 0.0
    if post < 0:
        raise UserError("--post-baseline-s must be >= 0")
    run_kw = dict(source=args.source, mode=args.mode, sync=args.sync, baseline_s=args.baseline_s,
                  db=args.db, save=not args.no_save, name=args.name, tags=args.tag or None, post_baseline_s=post)
    if args.interval_ms:
        run_kw["interval_ms"] = args.interval_ms
    with ep_run(model, **run_kw) as s:
        if getattr(args, "live", False):   # energyprof.live: power, phase, layer and the token stream
            from ..views.terminal import LiveProgress

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


def cmd_demo(args) -> int:
    """Profile tiny-llama for 64 new tokens on --source auto, save the run, write demo-report.html."""
    ns = argparse.Namespace(
        model="tiny-llama", prompt="The energy of one token is", prompt_file=None, max_new_tokens=args.max_new_tokens,
        batch_size=1, source=args.source, mode="standard", sync="auto", baseline_s=args.baseline_s, db=args.db,
        name="demo", tag=["demo"], report=args.report, json=False, no_save=False, show_output=False, interval_ms=None)
    rc = profile(ns)
    from ..store import db as dbm

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
