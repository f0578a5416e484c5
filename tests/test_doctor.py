"""energyprof.measure.doctor: rows, auto's choice and exit codes for each machine set-up,
made with the fake NVML library (ENERGYPROF_NVML_LIB) and fake RAPL trees
(ENERGYPROF_RAPL_ROOT)."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import energyprof as ep
from energyprof.cli.doctor import main as doctor_main
from energyprof.measure import doctor as doc

ROOT = Path(__file__).resolve().parent.parent
FAKE_SRC = ROOT / "tests" / "fake_nvml" / "fake_nvml.c"


def make_rapl_tree(root: Path, energy_mode=0o644) -> Path:
    z = root / "intel-rapl:0"
    z.mkdir(parents=True)
    (z / "name").write_text("package-0\n")
    (z / "max_energy_range_uj").write_text("262143328850\n")
    (z / "energy_uj").write_text("12345\n")
    os.chmod(z / "energy_uj", energy_mode)
    return root


@pytest.fixture
def nothing(monkeypatch, tmp_path):
    """A machine with no sensor: no NVML library, no powercap tree."""
    monkeypatch.setenv("ENERGYPROF_NVML_LIB", str(tmp_path / "missing" / "libnvidia-ml.so.1"))
    monkeypatch.setenv("ENERGYPROF_RAPL_ROOT", str(tmp_path / "missing-powercap"))
    return tmp_path


@pytest.fixture
def fake_nvml(nothing, monkeypatch):
    lib = nothing / "libnvidia-ml.so.1"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(lib), str(FAKE_SRC)], check=True)
    script = nothing / "script.txt"
    script.write_text("1000 50000\n")
    monkeypatch.setenv("ENERGYPROF_NVML_LIB", str(lib))
    monkeypatch.setenv("FAKE_NVML_SCRIPT", str(script))
    monkeypatch.delenv("FAKE_NVML_LOG", raising=False)
    monkeypatch.delenv("FAKE_NVML_INIT", raising=False)
    monkeypatch.delenv("FAKE_NVML_COUNT", raising=False)
    return lib


@pytest.fixture
def fake_rapl(nothing, monkeypatch):
    root = make_rapl_tree(nothing / "powercap")
    monkeypatch.setenv("ENERGYPROF_RAPL_ROOT", str(root))
    return root


def by_source(rows):
    return {r["source"]: r for r in rows}


def test_nothing_falls_back_to_estimate(nothing, capsys):
    rows = by_source(ep.doctor.doctor())
    assert list(rows) == ["ioreport", "powermetrics", "nvml", "rapl", "estimate", "synthetic"]
    assert set(rows["nvml"]) == {"name", "source", "spec", "available", "label", "reason", "fix", "detail"}
    assert not rows["nvml"]["available"] and "libnvidia-ml.so.1" in rows["nvml"]["reason"]
    assert "NVIDIA driver" in rows["nvml"]["fix"]
    assert not rows["rapl"]["available"] and "missing-powercap" in rows["rapl"]["reason"]
    assert "modprobe intel_rapl_msr" in rows["rapl"]["fix"]
    assert rows["estimate"]["available"] and rows["estimate"]["label"] == "estimated"
    assert rows["synthetic"]["label"] == "simulated"
    if sys.platform != "darwin":
        assert rows["ioreport"]["reason"].startswith("macOS only")
        assert rows["powermetrics"]["reason"] == "macOS only"
    spec, cands = doc.resolve_auto()
    assert spec == "estimate"
    assert [c["source"] for c in cands] == list(doc.AUTO_ORDER)
    assert [c["chosen"] for c in cands] == [False, False, False, False, True]
    assert cands[2]["decision"].startswith("unavailable: cannot load")
    assert doctor_main(["--plain"]) == 1
    out = capsys.readouterr().out
    assert "auto uses: estimate" in out and "fix: sudo modprobe intel_rapl_msr" in out


def test_fake_nvml_present(fake_nvml, monkeypatch, capsys):
    rows = by_source(doc.doctor())
    nv = rows["nvml"]
    assert nv["available"] and nv["label"] == "measured"
    assert nv["reason"] == "GPU 0: Fake GPU 80GB, driver 999.01, energy counter"
    assert nv["detail"]["power_limit_w"] == 350.0
    # auto takes NVML only when the model can run on CUDA.
    monkeypatch.setattr(doc, "_cuda_available", lambda: (True, "torch.cuda.is_available() is True"))
    spec, cands = doc.resolve_auto()
    assert spec == "nvml:index=0"
    assert by_source(cands)["rapl"]["decision"].startswith("not needed: nvml comes first")
    src = ep.sources.open("auto")
    assert (src.kind, src.params, src.label) == ("nvml", {"index": "0"}, "measured")
    monkeypatch.setattr(doc, "_cuda_available", lambda: (False, "torch.cuda.is_available() is False"))
    spec, cands = doc.resolve_auto()
    assert spec == "estimate"
    assert by_source(cands)["nvml"]["decision"] == "skipped: torch.cuda.is_available() is False"
    assert doctor_main(["--plain"]) == 0  # a measured source works, even if auto would not pick it
    capsys.readouterr()


def test_cuda_check_uses_torch():
    import torch
    ok, why = doc._cuda_available()
    assert ok == torch.cuda.is_available()
    assert "torch.cuda.is_available()" in why


def test_fake_rapl_present(fake_rapl, capsys):
    rows = by_source(doc.doctor())
    assert rows["rapl"]["available"]
    assert rows["rapl"]["reason"] == f"1 package(s) under {fake_rapl}: intel-rapl:0 package-0 -> package"
    spec, _ = doc.resolve_auto()
    assert spec == "rapl"
    assert doctor_main([]) == 0  # the rich table
    out = capsys.readouterr().out
    assert "rapl" in out and "auto uses: rapl" in out


def test_json_output(fake_rapl, capsys):
    assert doctor_main(["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["auto"]["spec"] == "rapl"
    assert [r["source"] for r in data["sources"]] == ["ioreport", "powermetrics", "nvml", "rapl", "estimate",
                                                     "synthetic"]
    assert by_source(data["sources"])["rapl"]["available"] is True
    assert [c["chosen"] for c in data["auto"]["candidates"]].count(True) == 1


def test_cli_entry_point(nothing):
    r = subprocess.run([sys.executable, "-m", "energyprof", "doctor", "--json"], capture_output=True, text=True,
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert r.returncode == 1, r.stderr
    assert json.loads(r.stdout)["auto"]["spec"] == "estimate"


DOCTOR_AS_NOBODY = r"""
import json, os, sys
from energyprof.measure import doctor
if os.geteuid() == 0:  # drop root after the imports (the interpreter lives under /root)
    os.setgid(65534)
    os.setuid(65534)
rows = {r["source"]: r for r in doctor.doctor()}
print(json.dumps(rows["rapl"]))
"""


def test_rapl_permission_denied_row_shows_chmod(nothing):
    """energy_uj mode 000 seen by an unprivileged process (a child that drops root)."""
    root = Path(tempfile.mkdtemp(prefix="ep_doctor_perm_"))
    try:
        os.chmod(root, 0o755)
        make_rapl_tree(root / "powercap", energy_mode=0o000)
        os.chmod(root / "powercap", 0o755)
        os.chmod(root / "powercap" / "intel-rapl:0", 0o755)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "ENERGYPROF_RAPL_ROOT": str(root / "powercap")}
        r = subprocess.run([sys.executable, "-c", DOCTOR_AS_NOBODY], capture_output=True, text=True, cwd=ROOT,
                           env=env, timeout=300)
        row = json.loads(r.stdout.strip().splitlines()[-1])
        assert not row["available"]
        assert "permission denied reading" in row["reason"] and "root-only" in row["reason"]
        assert row["fix"].startswith("sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj")
        assert "/etc/tmpfiles.d/energyprof-rapl.conf" in row["fix"]
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("system, euid, sudo_ok, exists, available, text", [
    ("linux", 1000, True, True, False, "macOS only"),
    ("darwin", 0, False, True, True, "running as root"),
    ("darwin", 501, True, True, True, "sudoers rule present"),
    ("darwin", 501, False, True, False, "would ask for a password"),
    ("darwin", 501, True, False, False, "not found"),
])
def test_powermetrics_row_logic(system, euid, sudo_ok, exists, available, text):
    row = doc._powermetrics_row(system, euid, lambda: sudo_ok, exists)
    assert row["available"] is available and text in row["reason"]
    if system == "darwin" and not available and exists:
        assert "setup_powermetrics.sh" in row["fix"]


def test_module_is_callable_and_auto_order():
    rows = ep.doctor()  # the module is callable: ep.doctor() is ep.doctor.doctor()
    assert [r["source"] for r in rows] == [r["source"] for r in doc.doctor()]
    assert doc.AUTO_ORDER == ("ioreport", "powermetrics", "nvml", "rapl", "estimate")


# ---- scripts/setup_powermetrics.sh: the sudoers rule doctor's fix installs ------

SETUP = ROOT / "scripts" / "setup_powermetrics.sh"
RULE = "alice ALL = (root) NOPASSWD: /usr/bin/powermetrics"

# A stand-in for `visudo -cf FILE` where sudo is not installed: logs its arguments
# and accepts exactly one rule line of the expected shape (exit 1 otherwise).
FAKE_VISUDO = r"""#!/usr/bin/env python3
import re, sys
open(sys.argv[0] + ".log", "a").write(" ".join(sys.argv[1:]) + "\n")
assert sys.argv[1] == "-cf", sys.argv
rules = [l for l in open(sys.argv[2]).read().splitlines() if l.strip() and not l.startswith("#")]
ok = len(rules) == 1 and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]* ALL = \(root\) NOPASSWD: /usr/bin/powermetrics",
                                      rules[0])
sys.exit(0 if ok else 1)
"""


def run_setup(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("SUDO_USER", "VISUDO", "ENERGYPROF_SUDOERS_DIR")}
    env.update(env_extra or {})
    return subprocess.run(["bash", str(SETUP), *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture
def sudoers(tmp_path):
    d = tmp_path / "sudoers.d"
    d.mkdir()
    visudo = tmp_path / "visudo"
    visudo.write_text(FAKE_VISUDO)
    visudo.chmod(0o755)
    return {"SUDO_USER": "alice", "ENERGYPROF_SUDOERS_DIR": str(d), "VISUDO": str(visudo)}, d, visudo


def test_setup_print_generates_exactly_one_narrow_rule():
    r = run_setup("--print", env_extra={"SUDO_USER": "alice"})
    assert r.returncode == 0, r.stderr
    rules = [l for l in r.stdout.splitlines() if l.strip() and not l.startswith("#")]
    assert rules == [RULE]
    assert "--uninstall" in r.stdout
    assert run_setup("--print", "--user", "bob").stdout.splitlines()[-1] == RULE.replace("alice", "bob")
    real = shutil.which("visudo")
    if real:  # where sudo is installed, the real parser checks it too
        f = Path(tempfile.mkdtemp()) / "rule"
        f.write_text(r.stdout)
        assert subprocess.run([real, "-cf", str(f)], capture_output=True).returncode == 0


@pytest.mark.parametrize("env, args, message", [
    ({}, ["--print"], "no user"),
    ({"SUDO_USER": "root"}, ["--print"], "root needs no sudoers rule"),
    ({"SUDO_USER": "eve ALL=(ALL) ALL"}, ["--print"], "refusing user name"),
    ({}, ["--user", "a,b", "--print"], "refusing user name"),
    ({"SUDO_USER": "alice"}, ["--bogus"], "unknown option"),
])
def test_setup_refuses_bad_users(env, args, message):
    r = run_setup(*args, env_extra=env)
    assert r.returncode == 1 and message in r.stderr and "NOPASSWD" not in r.stdout


def test_setup_install_is_validated_idempotent_and_uninstalls(sudoers):
    env, d, visudo = sudoers
    printed = run_setup("--print", env_extra={"SUDO_USER": "alice"}).stdout
    r = run_setup(env_extra=env)
    assert r.returncode == 0, r.stderr
    f = d / "energyprof-powermetrics"
    assert f.read_text() == printed
    assert (f.stat().st_mode & 0o777) == 0o440
    log = Path(str(visudo) + ".log").read_text().splitlines()
    assert len(log) == 1 and log[0].startswith(f"-cf {d}/.energyprof-powermetrics.")  # checked before the move
    inode = f.stat().st_ino
    r = run_setup(env_extra=env)
    assert r.returncode == 0 and "already installed" in r.stdout and f.stat().st_ino == inode
    assert sorted(p.name for p in d.iterdir()) == ["energyprof-powermetrics"]  # no temp file left
    r = run_setup("--uninstall", env_extra=env)
    assert r.returncode == 0 and not f.exists()
    r = run_setup("--uninstall", env_extra=env)
    assert r.returncode == 0 and "nothing to remove" in r.stdout


def test_setup_never_installs_what_visudo_rejects(sudoers):
    env, d, visudo = sudoers
    visudo.write_text("#!/bin/sh\nexit 1\n")
    r = run_setup(env_extra=env)
    assert r.returncode == 1 and "visudo rejected" in r.stderr
    assert list(d.iterdir()) == []
