"""The build stops with a message naming the missing system package and how to install it."""
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def fake_pkg_config(tmp_path, missing):
    """A pkg-config that knows every module but `missing` (it defers to the real one otherwise)."""
    real = subprocess.run(["bash", "-c", "command -v pkg-config"], capture_output=True, text=True).stdout.strip()
    d = tmp_path / "bin"
    d.mkdir()
    p = d / "pkg-config"
    p.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = "{missing}" ] && exit 1; done\nexec {real} "$@"\n')
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return d


@pytest.mark.parametrize("module, deb, brew", [("libplist-2.0", "libplist-dev", "brew install libplist"),
                                               ("sqlite3", "libsqlite3-dev", "brew install sqlite")])
def test_missing_library_names_the_package(tmp_path, module, deb, brew):
    bindir = fake_pkg_config(tmp_path, module)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    r = subprocess.run([sys.executable, "setup.py", "build_ext", "-b", str(tmp_path / "b"), "-t", str(tmp_path / "t")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert f"apt-get install {deb}" in r.stderr
    assert brew in r.stderr
    assert module in r.stderr


def test_missing_pkg_config_is_named(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))   # no pkg-config anywhere
    r = subprocess.run([sys.executable, "setup.py", "build_ext", "-b", str(tmp_path / "b")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "pkg-config is not installed" in r.stderr and "libplist-dev" in r.stderr
