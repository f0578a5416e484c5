"""The layout is part of the design: subpackages named after the data flow, imports one way.

Layers, lowest first (a module may import its own layer and the ones below it):

    base      energyprof._core, _dtypes, _hfconfig, _reference, _version, errors, tiny
    store     energyprof.store      (schema, db, RunData)
    analysis  energyprof.analysis   (numbers over runs; draws nothing)
    views     energyprof.views      (plots, report, terminal and live views)
    measure   energyprof.measure    (sources, sampler, hooks, session; s.plot() uses views)
    testing   energyprof.testing    (test utilities)
    cli       energyprof.cli        (the command; nothing imports it)

``energyprof/__init__.py`` and ``__main__.py`` are the public face: they may import
anything, and nothing inside the package imports them.  Every import counts, also the
lazy ones inside functions.
"""
from __future__ import annotations

import ast
import hashlib
import re
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "energyprof"

RANK = {"base": 0, "store": 1, "analysis": 2, "views": 3, "measure": 4, "testing": 5, "cli": 6, "face": 7}
BASE = {"_core", "_dtypes", "_hfconfig", "_reference", "_version", "errors", "tiny"}


def layer_of(module: str) -> Optional[str]:
    """The layer of a dotted module name inside energyprof (None outside the package)."""
    parts = module.split(".")
    if parts[0] != "energyprof":
        return None
    if len(parts) == 1 or parts[1] == "__main__":
        return "face"
    head = parts[1]
    if head in BASE:
        return "base"
    if head in ("store", "analysis", "views", "measure", "testing", "cli"):
        return head
    return "unknown:" + head


def _module_name(path: Path, pkg_root: Path) -> str:
    rel = path.relative_to(pkg_root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(dotted: str, pkg_root: Path) -> bool:
    rel = Path(*dotted.split(".")[1:])
    base = pkg_root / rel
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file() or \
        any(pkg_root.glob(str(rel) + ".*.so"))


def imports_of(path: Path, pkg_root: Path) -> Iterator[Tuple[int, str]]:
    """(line, target module) for every import in the file, relative ones resolved."""
    me = _module_name(path, pkg_root)
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = me.split(".") if is_pkg else me.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                sub = f"{mod}.{a.name}"
                # `from pkg import name`: a submodule when one exists, else a name of pkg itself
                yield node.lineno, sub if (mod.startswith("energyprof") and _is_module(sub, pkg_root)) else mod


def breaches(pkg_root: Path) -> List[str]:
    """Every import that runs against the layering, as 'file:line: what'."""
    out = []
    for path in sorted(pkg_root.rglob("*.py")):
        me = _module_name(path, pkg_root)
        mine = layer_of(me)
        for line, target in imports_of(path, pkg_root):
            theirs = layer_of(target)
            if theirs is None or target == me:
                continue
            where = f"{path.relative_to(pkg_root.parent)}:{line}"
            if mine.startswith("unknown") or theirs.startswith("unknown"):
                out.append(f"{where}: {me} -> {target}: module outside the known layers")
            elif theirs == "face" and mine != "face":
                out.append(f"{where}: {me} imports the package's public face ({target}); import the module itself")
            elif theirs == "cli" and mine not in ("cli", "face"):
                out.append(f"{where}: {me} imports the command line ({target}); only cli/ may")
            elif mine == "analysis" and theirs == "views":
                out.append(f"{where}: analysis imports views ({target}); analysis draws nothing")
            elif mine == "store" and theirs == "measure":
                out.append(f"{where}: store imports measure ({target}); the store never needs a live session")
            elif RANK[theirs] > RANK[mine]:
                out.append(f"{where}: {mine} imports {theirs} ({target}), a layer above it")
    return out


def test_the_package_keeps_its_layers():
    found = breaches(PKG)
    assert found == [], "layering breaches:\n" + "\n".join(found)


def test_every_module_is_in_a_layer():
    layers = {layer_of(_module_name(p, PKG)) for p in PKG.rglob("*.py")}
    assert layers <= set(RANK), layers
    assert {"store", "analysis", "views", "measure", "cli"} <= layers


def _tree(tmp_path: Path, files: Dict[str, str]) -> Path:
    root = tmp_path / "energyprof"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for d in ("", "store", "analysis", "views", "measure", "cli"):
        (root / d).mkdir(parents=True, exist_ok=True)
        (root / d / "__init__.py").touch()
    return root


@pytest.mark.parametrize("rel,text,what", [
    ("measure/live.py", "def f():\n    from ..cli.common import UserError\n", "imports the command line"),
    ("analysis/stats.py", "from ..views.plot import _mpl_fig\n", "analysis draws nothing"),
    ("store/db.py", "from energyprof.measure import session\n", "never needs a live session"),
    ("store/db.py", "def f():\n    from ..analysis import efficiency\n", "a layer above it"),
    ("views/plot.py", "from .. import __version__\n", "public face"),
    ("measure/x.py", "import energyprof\n", "public face"),
])
def test_the_checker_finds_each_kind_of_breach(tmp_path, rel, text, what):
    """The rule above is only worth something if it fails on a breach: plant one of each."""
    root = _tree(tmp_path, {rel: text, "measure/session.py": "", "views/plot.py": "", "cli/common.py": "",
                            "analysis/efficiency.py": "", "analysis/stats.py": "", "store/db.py": ""} | {rel: text})
    found = breaches(root)
    assert len(found) == 1 and what in found[0], found


def test_the_checker_allows_downward_imports(tmp_path):
    root = _tree(tmp_path, {"_core.py": "", "errors.py": "", "store/db.py": "from .. import _core\n",
                            "views/plot.py": "from ..store.db import x\nfrom ..errors import NoDataError\n",
                            "measure/session.py": "def f():\n    from ..views.plot import plot\n",
                            "cli/main.py": "from ..measure.session import run\n"})
    assert breaches(root) == []


# --------------------------------------------------------------------------- C rooms

C_ROOMS = ("kernels", "sources", "threads", "module")


def test_csrc_is_grouped_and_only_the_module_room_knows_python():
    files = sorted((ROOT / "csrc").rglob("*"))
    loose = [f.name for f in files if f.is_file() and f.parent == ROOT / "csrc"]
    assert loose == [], f"C files outside the rooms: {loose}"
    assert {f.parent.name for f in files if f.is_file()} == set(C_ROOMS)
    include = re.compile(r'^\s*#\s*include\s*[<"](Python\.h|ep_module\.h|numpy/[^>"]+)[>"]', re.M)
    for f in files:
        if f.is_file() and f.parent.name != "module":
            hit = include.search(f.read_text(encoding="utf-8"))
            assert hit is None, f"{f.relative_to(ROOT)} includes {hit.group(1)}: only csrc/module/ may"
    for f in files:
        if f.suffix in (".c", ".cpp", ".h"):
            assert f.name.startswith("ep_"), f"{f.name}: C files are named ep_<part>"


# --------------------------------------------------------------------------- the repository stands alone


# the shared folder beside a developer's checkout (spelled in pieces so this file does not match)
OUTSIDE = re.compile(r"\.\./" + "shared" + r"\b|\bshared/" + "fixtures")


def _tracked() -> List[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / p for p in out.decode().split("\0") if p]


def test_nothing_reads_from_outside_the_repository():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (an sdist): no tracked-file list to read")
    hits = []
    for p in _tracked():
        if p.suffix in (".so", ".png", ".ipynb") or not p.is_file():
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for i, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    assert hits == [], "references to files outside the repository:\n" + "\n".join(hits)


def _git_blob_id(data: bytes) -> str:
    """git's object id of a file: sha1 over 'blob <size>\\0' and the bytes (written here from
    git's documented object format, not by asking git)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_the_captures_are_the_published_bytes():
    """SOURCES.md names each capture's upstream blob id; the copies here must be those bytes."""
    fix = ROOT / "tests" / "data" / "powermetrics"
    text = (fix / "SOURCES.md").read_text(encoding="utf-8")
    captures = sorted(p for p in fix.iterdir() if p.suffix in (".plist", ".txt"))
    assert len(captures) == 9
    for p in captures:
        row = next(line for line in text.splitlines() if f"`{p.name}`" in line and "blob" in line)
        prefix = re.search(r"blob ([0-9a-f]{8})", row).group(1)
        assert _git_blob_id(p.read_bytes()).startswith(prefix), p.name
