"""The sdist is complete, installs into a fresh venv, imports outside the source tree, and a
command that needs a missing extra says so in one line (exit 2) instead of a traceback."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "-o", str(out), str(ROOT)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (path,) = out.glob("energyprof-*.tar.gz")
    return path


def _members(path: Path) -> set:
    with tarfile.open(path) as tf:
        names = tf.getnames()
    top = names[0].split("/")[0]
    return {n[len(top) + 1:] for n in names if n.startswith(top + "/")}


def test_sdist_carries_every_source_header_and_the_data(sdist):
    files = _members(sdist)
    tracked = subprocess.run(["git", "ls-files", "csrc", "tests/data", "energyprof"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split() if (ROOT / ".git").exists() else []
    need = {p for p in tracked if not p.endswith(".so")} | {"LICENSE", "README.md", "setup.py", "pyproject.toml",
                                                            "MANIFEST.in"}
    assert need - files == set()
    headers = {p for p in files if p.startswith("csrc/") and p.endswith(".h")}
    assert len(headers) >= 14 and "csrc/threads/ep_torchshim.cpp" in files
    assert not any(p.endswith((".so", ".o", ".pyc")) for p in files)


@pytest.mark.timeout(900)
def test_sdist_installs_in_a_fresh_venv_and_names_missing_extras(sdist, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    r = subprocess.run(pip + ["setuptools>=77", "wheel", "numpy"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run(pip + ["--no-build-isolation", str(sdist)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    r = subprocess.run([str(py), "-c", "import energyprof as ep, sys; print(ep.__file__); "
                        "print(ep.Sampler('synthetic:power_w=5,period_ms=2').spec); print('torch' in sys.modules)"],
                       cwd=outside, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    where, spec, has_torch = r.stdout.split()
    assert str(env_dir) in where and spec == "synthetic:power_w=5,period_ms=2" and has_torch == "False"
    # no torch in this venv: one line naming the extra, exit status 2, no traceback
    cli = env_dir / "bin" / "energyprof"
    r = subprocess.run([str(cli), "profile", "--model", "tiny-llama", "--db", str(tmp_path / "r.db")], cwd=outside,
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "energyprof: error: energyprof profile needs torch, which is not installed: pip install 'energyprof[torch]'"]
    # the commands that need no optional package work
    r = subprocess.run([str(cli), "runs", "--json", "--db", str(tmp_path / "r.db")], cwd=outside,
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


def test_readme_shows_every_command_ci_runs():
    """.ci/run and the README's CI block list the same commands, in the same order."""
    import re

    ci = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines()
          if l.strip() and not l.lstrip().startswith("#") and not l.startswith(("set ", "cd "))]
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"CI \(`\.ci/run`\) runs exactly these commands.*?```sh\n(.*?)```", readme, re.S)
    assert block, "README.md has no CI block"
    shown = [l.split("#")[0].strip() for l in block.group(1).splitlines() if l.split("#")[0].strip()]
    assert shown == ci
    assert "make fuzz" in " ".join(ci) and "make test" in ci


def test_make_test_replays_the_fuzz_corpus():
    import re

    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: .*\bfuzz-replay\b", makefile, re.M)
    assert re.search(r"^FUZZ_CORPUS := tests/fuzz/corpus tests/data/powermetrics$", makefile, re.M)
    assert re.search(r"^DEB_PKGS := .*\bsudo\b", makefile, re.M)
