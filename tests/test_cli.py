"""The energyprof command: profile, read commands, --json, errors as one clear line."""
import json
import subprocess
import sys

import pytest

from energyprof.cli import main

SRC = "synthetic:power_w=12,period_ms=5"


def run_cli(*argv, db=None):
    args = list(argv) + (["--db", str(db)] if db is not None else [])
    return subprocess.run([sys.executable, "-m", "energyprof", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def db_with_runs(tmp_path_factory):
    db = tmp_path_factory.mktemp("cli") / "runs.db"
    for name, p in (("a", 12), ("b", 24)):
        r = run_cli("profile", "--model", "tiny-llama", "--max-new-tokens", "6", "--source",
                    f"synthetic:power_w={p},period_ms=5", "--baseline-s", "0", "--name", name, "--json", db=db)
        assert r.returncode == 0, r.stderr
        s = json.loads(r.stdout)
        assert s["output_tokens"] == 6 and s["source_label"] == "simulated"
        assert s["energy_j"] == pytest.approx(p * s["duration_s"], rel=1e-6)
    return db


def test_runs_json_and_sort(db_with_runs):
    r = run_cli("runs", "--json", "--sort", "j_per_token", "--ascending", db=db_with_runs)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert sorted(x["name"] for x in rows) == ["a", "b"]
    assert rows[0]["j_per_token"] <= rows[1]["j_per_token"]
    rows = json.loads(run_cli("runs", "--json", "--sort", "j_per_token", db=db_with_runs).stdout)
    assert rows[0]["j_per_token"] >= rows[1]["j_per_token"]


def test_show_compare_export_report(db_with_runs, tmp_path):
    ids = [x["run_id"] for x in json.loads(run_cli("runs", "--json", db=db_with_runs).stdout)]
    r = run_cli("show", str(ids[0]), "--json", db=db_with_runs)
    assert r.returncode == 0 and json.loads(r.stdout)["run_id"] == ids[0]
    r = run_cli("show", str(ids[0]), db=db_with_runs)
    assert r.returncode == 0 and "energy" in r.stdout and "decode_j_per_output_token" in r.stdout
    r = run_cli("compare", str(ids[0]), str(ids[1]), "--json", db=db_with_runs)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "run.json"
    r = run_cli("export", str(ids[0]), "--format", "json", "-o", str(out), db=db_with_runs)
    assert r.returncode == 0 and json.loads(out.read_text())
    rep = tmp_path / "r.html"
    r = run_cli("report", str(ids[0]), "-o", str(rep), db=db_with_runs)
    assert r.returncode == 0, r.stderr
    assert "SIMULATED" in rep.read_text().upper()


def test_clean_dry_run_keeps_runs(db_with_runs):
    before = len(json.loads(run_cli("runs", "--json", db=db_with_runs).stdout))
    r = run_cli("clean", "--max-runs", "1", "--dry-run", db=db_with_runs)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(run_cli("runs", "--json", db=db_with_runs).stdout)) == before


@pytest.mark.parametrize("argv, needle", [
    (["show", "999999"], "999999"),
    (["show", "abc"], "integer"),
    (["profile", "--model", "/no/such/dir", "--source", SRC], "/no/such/dir"),
    (["profile", "--model", "tiny-llama", "--source", "synthetic:power_w=abc"], "power_w"),
    (["profile", "--model", "tiny-llama", "--source", "nosuchsource"], "nosuchsource"),
])
def test_user_errors_are_one_line(argv, needle, tmp_path, capsys):
    rc = main(argv + ["--db", str(tmp_path / "x.db")])
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
