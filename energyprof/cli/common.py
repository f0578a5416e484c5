"""What the commands share: table and JSON output, the run summary tables, the ``--db``
option, loading a run by id and loading a model by name."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, List, Optional, Sequence

from ..errors import UserError

__all__ = ["print_summary", "load_model", "add_db"]


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


def _energy_with_range(summary: dict, key: str) -> str:
    """``12.3 J (6.15 .. 24.6 J, ×2 systematic)``: an energy with the source's systematic range."""
    from ..store.quality import uncertainty_summary

    text = _fmt(summary.get(key), "J")
    unc = summary.get("uncertainty")
    if not isinstance(unc, dict) or unc.get("kind") in (None, "none", "unknown") or text == "-":
        return text
    u = uncertainty_summary(unc, summary.get(key), None)
    short = u["text"].split(" (")[0]
    return f"{text} ({_fmt(u['energy_j_low'])} .. {_fmt(u['energy_j_high'], 'J')}, {short} systematic)"


def print_summary(summary: dict, resolution: Optional[dict] = None) -> None:
    """Print a run summary as tables (run figures, how well they were measured, phases, domains)
    and its warnings.  ``resolution`` overrides ``summary["resolution"]`` (for runs recorded
    before energyprof kept it, computed from their rows)."""
    from ..store.quality import resolution_lines, uncertainty_text

    label = summary.get("source_label", "measured")
    title = f"energyprof run {summary.get('run_id', '-')}  [{summary.get('source')}]"
    if label in ("estimated", "simulated"):
        title += f"  — {label.upper()} numbers"
    rows = [
        ("energy", _energy_with_range(summary, "energy_j")),
        ("net energy (above idle)", _energy_with_range(summary, "net_energy_j")),
        ("duration", _fmt(summary.get("duration_s"), "s")),
        ("baseline power", _fmt(summary.get("baseline_power_w"), "W")),
        ("peak power", _fmt(summary.get("peak_power_w"), "W")),
        ("input / output tokens", f"{summary.get('input_tokens')} / {summary.get('output_tokens')}"),
        ("J per output token", _fmt(summary.get("j_per_output_token"), "J")),
        ("tokens per J", _fmt(summary.get("tokens_per_j"))),
        ("EDP", _fmt(summary.get("edp_js"), "J·s")),
        ("method / sample period", f"{summary.get('method')} / {_fmt(summary.get('sample_period_s'), 's')}"),
        ("systematic uncertainty", uncertainty_text(summary.get("uncertainty"))),
        ("status", summary.get("status")),
    ]
    gap_s = summary.get("gap_s")
    if isinstance(gap_s, (int, float)) and gap_s > 0:
        rows.insert(-1, ("sensor gaps in the run", _fmt(float(gap_s), "s")))
    _table(title, ["figure", "value"], rows)
    res = resolution if resolution is not None else summary.get("resolution")
    if isinstance(res, dict):
        print("resolution:")
        for line in resolution_lines(res):
            print(f"  {line}")
    for w in summary.get("warnings") or []:
        print(f"warning: {w}")
    phases = summary.get("phases") or {}
    if phases:
        _table("phases", ["phase", "energy J", "duration s", "tokens", "J/token"],
               [(k, _fmt(v.get("energy_j")), _fmt(v.get("duration_s")), v.get("tokens"), _fmt(v.get("j_per_token")))
                for k, v in phases.items()])
    doms = summary.get("domains") or {}
    measured = [(k, _fmt(v, "J")) for k, v in doms.items() if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if measured:
        _table("domains", ["domain", "energy"], measured)
    from ..views.report import DEVICE_HEADERS, device_rows

    devices = device_rows(summary)
    if len(devices) > 1:   # several GPUs: each one's share of the gpu domain (a breakdown, not added again)
        _table("GPUs (their sum is the gpu domain)", DEVICE_HEADERS[:8],
               [[r[0], r[1], r[2], _fmt(r[3], "J"), _fmt(r[4]), _fmt(r[5], "W"), _fmt(r[6], "W"), r[7]]
                for r in devices])
        for r in devices:
            print(f"  GPU {r[0]} ({r[9]}): {r[8]}")


def load_model(name: str, dtype: Optional[str] = None):
    """A built-in tiny random model name, or a local Hugging Face model directory.

    Returns (model, tokenizer); the tokenizer is the directory's own when it has one,
    else energyprof's byte-level fallback.
    """
    from .. import tiny

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


def add_db(sp) -> None:
    """The ``--db`` option every command that reads or writes the store takes."""
    sp.add_argument("--db", default=None, help="database path (default $ENERGYPROF_DB or the user data dir)")


def _db(args):
    return getattr(args, "db", None)


def _load(run_id: str, db):
    from ..store import db as dbm

    try:
        return dbm.load(int(run_id), db=db)
    except ValueError:
        raise UserError(f"run id must be an integer, got '{run_id}'")
    except KeyError as e:
        raise UserError(str(e.args[0]) if e.args else f"no run {run_id}")
