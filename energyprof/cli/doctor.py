"""``energyprof doctor``: which power sources work here, and how to enable the others."""
from __future__ import annotations

import argparse
import json
from typing import Dict, List, Optional, Sequence

from ..measure.doctor import NOT_MEASURED, doctor, resolve_auto

__all__ = ["main", "cmd_doctor"]


def _print_table(rows: List[Dict[str, object]], auto_spec: str, auto_rows: List[Dict[str, object]],
                 plain: bool) -> None:
    console = None
    if not plain:
        try:
            from rich.console import Console
            from rich.table import Table
            console = Console()
        except ImportError:
            console = None
    if console is not None:
        table = Table(title="energyprof doctor: power sources on this machine")
        for col in ("source", "status", "label", "reason", "fix"):
            table.add_column(col, overflow="fold")
        for r in rows:
            status = "[green]ok[/green]" if r["available"] else "[red]no[/red]"
            table.add_row(str(r["source"]), status, str(r["label"]), str(r["reason"]), str(r["fix"]))
        console.print(table)
        console.print(f"auto uses: [bold]{auto_spec}[/bold]")
        for r in auto_rows:
            if not r["chosen"]:
                console.print(f"  {r['source']}: {r['decision']}", markup=False, highlight=False)
        return
    print("energyprof doctor: power sources on this machine")
    width = max(len(str(r["source"])) for r in rows)
    for r in rows:
        status = "ok" if r["available"] else "no"
        print(f"{str(r['source']).ljust(width)}  {status}  {str(r['label']).ljust(9)}  {r['reason']}")
        if r["fix"]:
            print(f"{' ' * width}  fix: {r['fix']}")
    print(f"auto uses: {auto_spec}")
    for r in auto_rows:
        if not r["chosen"]:
            print(f"  {r['source']}: {r['decision']}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``energyprof doctor [--json] [--plain]``: print the table; 0 when a measured source works."""
    p = argparse.ArgumentParser(prog="energyprof doctor",
                                description="which power sources work here, and how to enable the others")
    p.add_argument("--json", action="store_true", help="print the rows as JSON (for machines)")
    p.add_argument("--plain", action="store_true", help="plain text even when rich is installed")
    args = p.parse_args(list(argv) if argv is not None else None)
    rows = doctor()
    auto_spec, auto_rows = resolve_auto(rows)
    if args.json:
        print(json.dumps({"sources": rows, "auto": {"spec": auto_spec, "candidates": auto_rows}}, indent=2))
    else:
        _print_table(rows, auto_spec, auto_rows, args.plain)
    real = any(r["available"] and r["source"] not in NOT_MEASURED for r in rows)
    return 0 if real else 1


def cmd_doctor(args) -> int:
    """``energyprof doctor [--json]`` from the main parser."""
    return main(["--json"] if args.json else [])
