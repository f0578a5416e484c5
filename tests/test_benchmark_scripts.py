"""benchmarks/ keeps docs/benchmarks.md honest only if every script saves its page the same
way: one ``--write`` switch (``_report.add_write_arg``), which ``make bench`` passes, and a
row in ``collect.PARTS`` so that its headline lines reach the summary table.  Before these
tests, five scripts wrote only with ``--write`` and four only without ``--no-write``, so
``make bench`` refreshed some pages and silently left the others stale.

Nothing here times anything (timed assertions do not belong in the suite).
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_") and p.name != "collect.py")


def _string_args(call: ast.Call):
    return [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]


def _calls(tree: ast.AST, name: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Name) and f.id == name) or (isinstance(f, ast.Attribute) and f.attr == name):
                yield node


def _parts() -> list:
    """collect.PARTS, read from its source (importing collect would run nothing, but keep it
    independent of the module's import-time path set-up)."""
    tree = ast.parse((BENCH / "collect.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PARTS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("benchmarks/collect.py has no PARTS list")


def test_there_are_benchmark_scripts():
    assert len(SCRIPTS) >= 10, [p.name for p in SCRIPTS]


def test_every_script_has_the_one_write_switch_named_after_itself():
    for path in SCRIPTS:
        tree = ast.parse(path.read_text(), filename=str(path))
        names = [args for call in _calls(tree, "add_write_arg") for args in [_string_args(call)]]
        assert names == [[path.stem]], f"{path.name}: add_write_arg(ap, {path.stem!r}) once, found {names}"
        flags = {s for call in _calls(tree, "add_argument") for s in _string_args(call)}
        assert not flags & {"--no-write", "--md", "--out"}, f"{path.name}: a second output switch {flags}"
        # the page is written through _report (save or emit), never by hand
        assert list(_calls(tree, "save")) or list(_calls(tree, "emit")), path.name
        opened_for_writing = [c for c in _calls(tree, "open")
                              if any(isinstance(a, ast.Constant) and a.value == "w" for a in c.args[1:])
                              and not any(isinstance(a, ast.Constant) and "/proc/" in str(a.value) for a in c.args)]
        assert not opened_for_writing, f"{path.name}: writes a file by hand at line {opened_for_writing[0].lineno}"


def test_every_script_has_a_row_in_the_summary_and_every_row_a_script():
    parts = _parts()
    assert sorted(parts) == sorted(p.stem for p in SCRIPTS)
    assert len(set(parts)) == len(parts)


def test_make_bench_passes_write_to_every_script():
    rule = re.search(r"^bench:.*?(?=^\S)", (ROOT / "Makefile").read_text() + "\nend:", re.S | re.M).group(0)
    loop = [ln for ln in rule.splitlines() if "benchmarks/[!_]*.py" in ln]
    assert len(loop) == 1 and "$$b --write" in loop[0], rule
    assert "benchmarks/collect.py" in rule


def test_a_script_saves_its_page_only_with_write(tmp_path):
    """Run the quickest script from a copy of benchmarks/ (so the real docs stay as they are):
    without --write nothing is written; with it docs/benchmarks/sampler.md appears, and its
    headline line is the one collect.py reads."""
    copy = tmp_path / "benchmarks"
    copy.mkdir()
    for name in ("_report.py", "sampler.py"):
        shutil.copy(BENCH / name, copy / name)
    page = tmp_path / "docs" / "benchmarks" / "sampler.md"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, str(copy / "sampler.py"), "--seconds", "0.2"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "<!-- headline" in out.stdout
    assert not page.exists()
    out = subprocess.run(cmd + ["--write"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert page.exists()
    sys.path.insert(0, str(copy))
    try:
        import _report
        heads = _report.parse_headlines(page.read_text())
    finally:
        sys.path.remove(str(copy))
        sys.modules.pop("_report", None)
    assert [h["what"] for h in heads] == ["sampler thread at 1000 Hz for 0.2 s: dropped samples, CPU"], heads
    assert heads[0]["goal"] == "0 dropped"
