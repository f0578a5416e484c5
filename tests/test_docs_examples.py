"""The Python examples of the lead's docs pages run (the other pages test their own)."""
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).parents[1] / "docs"


@pytest.mark.parametrize("page", ["api.md", "quickstart.md", "engines.md", "../README.md"])
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ENERGYPROF_DB", str(tmp_path / "runs.db"))
    text = (DOCS / page).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    runnable = [b for b in blocks if "ep.run(" in b]
    assert runnable
    for b in runnable:
        exec(compile(b, f"{page}", "exec"), {})


def test_cli_example_runs():
    import subprocess
    import sys

    text = (DOCS / "cli.md").read_text()
    cmd = re.findall(r"```sh\n(energyprof profile .*?)\n```", text, re.S)[-1]
    r = subprocess.run([sys.executable, "-m", "energyprof", *cmd.split()[1:]], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "SIMULATED" in r.stdout
