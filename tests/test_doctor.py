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
    ("darwin", 501, True, True, True, "wrapper and its sudoers rule are installed"),
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


# ---- scripts/setup_powermetrics.sh: the wrapper and sudoers rule doctor's fix installs ------

SETUP = ROOT / "scripts" / "setup_powermetrics.sh"
WRAPPER = "/opt/energyprof/bin/energyprof-powermetrics"
RULE = f"alice ALL = (root) NOPASSWD: {WRAPPER}"
ARGV = ["-f", "plist", "-i", "1000", "--samplers", "cpu_power,gpu_power,thermal"]   # what the C source passes

# A stand-in for `visudo -cf FILE` that logs its arguments and runs the real visudo
# (sudo is in the Makefile's DEB_PKGS, so make setup installs it).
FAKE_VISUDO = r"""#!/bin/sh
echo "$*" >> "$0.log"
exec VISUDO "$@"
"""


def real_visudo() -> str:
    path = shutil.which("visudo") or ("/usr/sbin/visudo" if os.path.exists("/usr/sbin/visudo") else None)
    if path is None:
        pytest.fail("visudo not found: sudo is one of the Makefile's DEB_PKGS (run make setup)")
    return path


def run_setup(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENERGYPROF_") and k not in ("SUDO_USER", "VISUDO")}
    env.update(env_extra or {})
    return subprocess.run(["bash", str(SETUP), *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture
def sudoers(tmp_path):
    """A sudoers.d, a wrapper location and a fake powermetrics (it prints its argv) under
    tmp_path; the wrapper written there runs the fake instead of /usr/bin/powermetrics."""
    if os.geteuid() != 0:
        pytest.skip("installing needs root (the wrapper must be root-owned); this test runs as uid "
                    f"{os.geteuid()}")
    d = tmp_path / "sudoers.d"
    d.mkdir()
    visudo = tmp_path / "visudo"
    visudo.write_text(FAKE_VISUDO.replace("VISUDO", real_visudo()))
    visudo.chmod(0o755)
    fake_pm = tmp_path / "powermetrics"
    fake_pm.write_text('#!/bin/sh\necho "powermetrics $*"\n')
    fake_pm.chmod(0o755)
    wrapper = tmp_path / "opt" / "bin" / "energyprof-powermetrics"
    env = {"SUDO_USER": "alice", "ENERGYPROF_SUDOERS_DIR": str(d), "VISUDO": str(visudo),
           "ENERGYPROF_WRAPPER": str(wrapper), "ENERGYPROF_POWERMETRICS_BIN": str(fake_pm)}
    return env, d, visudo, wrapper


def test_setup_print_generates_exactly_one_narrow_rule_that_visudo_accepts(tmp_path):
    r = run_setup("--print", env_extra={"SUDO_USER": "alice"})
    assert r.returncode == 0, r.stderr
    rules = [l for l in r.stdout.splitlines() if l.strip() and not l.startswith("#")]
    assert rules == [RULE]
    assert "--uninstall" in r.stdout
    assert run_setup("--print", "--user", "bob").stdout.splitlines()[-1] == RULE.replace("alice", "bob")
    f = tmp_path / "rule"
    f.write_text(r.stdout)
    check = subprocess.run([real_visudo(), "-c", "-f", str(f)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # what sudo would allow: the wrapper alone, no other command (cvtsudoers reads the rule
    # with sudo's own parser); powermetrics itself is not in it
    cvt = shutil.which("cvtsudoers")
    if cvt:
        import json

        spec = json.loads(subprocess.run([cvt, "-f", "json", str(f)], capture_output=True, text=True,
                                         check=True).stdout)
        (user,) = spec["User_Specs"]
        assert user["User_List"] == [{"username": "alice"}]
        (cmnd,) = user["Cmnd_Specs"]
        assert cmnd["Commands"] == [{"command": WRAPPER}] and cmnd["runasusers"] == [{"username": "root"}]


def test_the_wrapper_runs_exactly_energyprofs_arguments_and_refuses_the_rest(sudoers):
    env, d, visudo, wrapper = sudoers
    assert run_setup(env_extra=env).returncode == 0
    ok = subprocess.run([str(wrapper), *ARGV], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout == "powermetrics " + " ".join(ARGV) + "\n"
    for bad in (["-o", "/tmp/owned"] + ARGV,                                   # write a file as root
                ARGV + ["-o", "/tmp/owned"],
                ["-f", "plist", "-i", "1000", "--samplers", "cpu_power", "-o", "/tmp/owned"],
                ["-f", "plist", "-i", "1000", "-o", "/tmp/owned"],
                ["-f", "text", "-i", "1000", "--samplers", "cpu_power"],
                ["-f", "plist", "-i", "1000;id", "--samplers", "cpu_power"],
                ["-f", "plist", "-i", "0", "--samplers", "cpu_power"],
                ["-f", "plist", "-i", "3600001", "--samplers", "cpu_power"],
                ["-f", "plist", "-i", "1000", "--samplers", "cpu_power -o /x"],
                ["-f", "plist", "-i", "1000", "--samplers", "cpu_power,"],
                ["-f", "plist", "-i", "1000", "--samplers", "../x"],
                ["-f", "plist", "-i", "1000", "--output-file", "/tmp/owned"],
                []):
        r = subprocess.run([str(wrapper), *bad], capture_output=True, text=True)
        assert r.returncode == 64 and "refused" in r.stderr and r.stdout == "", bad
    assert not os.path.exists("/tmp/owned")
    st = wrapper.stat()
    assert st.st_uid == 0 and (st.st_mode & 0o777) == 0o755


def test_the_c_source_passes_what_the_wrapper_accepts():
    """The wrapper's accepted argv is the powermetrics source's argv (csrc/sources/
    ep_src_powermetrics.c) and its path is the one the source and doctor run."""
    src = (ROOT / "csrc" / "sources" / "ep_src_powermetrics.c").read_text()
    assert f'#define PM_WRAPPER "{WRAPPER}"' in src and doc.POWERMETRICS_WRAPPER == WRAPPER
    assert 'argv[a++] = "-f";\n    argv[a++] = "plist";\n    argv[a++] = "-i";' in src
    assert 'argv[a++] = "--samplers";\n    argv[a++] = st->samplers;\n    argv[a] = NULL;' in src
    assert run_setup("--print-wrapper").stdout.count(f"exec /usr/bin/powermetrics -f plist -i") == 1


@pytest.mark.parametrize("env, args, message", [
    ({}, ["--print"], "no user"),
    ({"SUDO_USER": "root"}, ["--print"], "root needs no sudoers rule"),
    ({"SUDO_USER": "eve ALL=(ALL) ALL"}, ["--print"], "refusing user name"),
    ({}, ["--user", "a,b", "--print"], "refusing user name"),
    ({"SUDO_USER": "alice"}, ["--bogus"], "unknown option"),
    ({"SUDO_USER": "alice", "ENERGYPROF_WRAPPER": "/opt/x y/w"}, ["--print"], "refusing path"),
])
def test_setup_refuses_bad_users(env, args, message):
    r = run_setup(*args, env_extra=env)
    assert r.returncode == 1 and message in r.stderr and "NOPASSWD" not in r.stdout


def test_setup_install_is_validated_idempotent_and_uninstalls(sudoers):
    env, d, visudo, wrapper = sudoers
    printed = run_setup("--print", env_extra=env).stdout
    r = run_setup(env_extra=env)
    assert r.returncode == 0, r.stderr
    f = d / "energyprof-powermetrics"
    assert f.read_text() == printed and f"NOPASSWD: {wrapper}" in printed
    assert wrapper.read_text() == run_setup("--print-wrapper", env_extra=env).stdout
    assert (f.stat().st_mode & 0o777) == 0o440 and f.stat().st_uid == 0
    log = Path(str(visudo) + ".log").read_text().splitlines()
    assert len(log) == 1 and log[0].startswith(f"-cf {d}/.energyprof-powermetrics.")  # checked before the move
    inode = f.stat().st_ino
    r = run_setup(env_extra=env)
    assert r.returncode == 0 and "already installed" in r.stdout and f.stat().st_ino == inode
    assert sorted(p.name for p in d.iterdir()) == ["energyprof-powermetrics"]  # no temp file left
    assert sorted(p.name for p in wrapper.parent.iterdir()) == ["energyprof-powermetrics"]
    r = run_setup("--uninstall", env_extra=env)
    assert r.returncode == 0 and not f.exists() and not wrapper.exists()
    r = run_setup("--uninstall", env_extra=env)
    assert r.returncode == 0 and "nothing to remove" in r.stdout


def test_setup_never_installs_what_visudo_rejects(sudoers):
    env, d, visudo, wrapper = sudoers
    visudo.write_text("#!/bin/sh\nexit 1\n")
    r = run_setup(env_extra=env)
    assert r.returncode == 1 and "visudo rejected" in r.stderr
    assert list(d.iterdir()) == [] and not wrapper.exists()


def test_setup_refuses_a_wrapper_directory_others_can_write(sudoers, tmp_path):
    env, d, visudo, wrapper = sudoers
    open_dir = tmp_path / "shared"
    open_dir.mkdir()
    open_dir.chmod(0o777)                    # world-writable, no sticky bit: anyone could swap the wrapper
    r = run_setup(env_extra={**env, "ENERGYPROF_WRAPPER": str(open_dir / "bin" / "energyprof-powermetrics")})
    assert r.returncode == 1 and "writable by others" in r.stderr
    assert list(d.iterdir()) == []
