"""`energyprof monitor` in a real terminal: tmux runs it, capture-pane reads the screen.

Each test uses its own tmux server (-L socket name), so nothing else's tmux is touched.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from energyprof.views.terminal import SPARK_CHARS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

assert shutil.which("tmux"), "these tests drive the terminal view under tmux: install tmux"


class Tmux:
    def __init__(self, command: str, width: int = 110, height: int = 24) -> None:
        self.sock = f"ep-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.name = "mon"
        env = dict(os.environ)
        # After the command, print its exit status and keep the pane open so it can be read.
        # The shell traps SIGINT (a handler, reset to the default in the child) so Ctrl-C reaches the
        # monitor and the shell survives to report its status.
        wrapped = f"trap : INT; {command}; echo EXIT_STATUS=$?; sleep 60"
        subprocess.run(["tmux", "-L", self.sock, "-f", "/dev/null", "new-session", "-d", "-s", self.name,
                        "-x", str(width), "-y", str(height), "-c", ROOT, "sh", "-c", wrapped],
                       check=True, env=env)

    def screen(self) -> str:
        r = subprocess.run(["tmux", "-L", self.sock, "capture-pane", "-p", "-t", self.name],
                           capture_output=True, text=True)
        return r.stdout

    def send(self, *keys: str) -> None:
        subprocess.run(["tmux", "-L", self.sock, "send-keys", "-t", self.name, *keys], check=True)

    def wait_for(self, pattern: str, timeout_s: float = 20.0) -> str:
        deadline = time.monotonic() + timeout_s
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if re.search(pattern, text):
                return text
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} never appeared on the screen; last screen:\n{text}")

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True)


def _monitor_cmd(power_w: float, extra: str = "") -> str:
    py = shlex.quote(sys.executable)
    return f"{py} -m energyprof monitor --source synthetic:power_w={power_w},period_ms=20 {extra}"


@pytest.fixture
def tmux_factory():
    made = []

    def make(cmd: str) -> Tmux:
        t = Tmux(cmd)
        made.append(t)
        return t

    yield make
    for t in made:
        t.kill()


def _check_view(text: str, power_w: float) -> None:
    assert "energyprof monitor" in text
    assert "synthetic" in text and "simulated" in text
    row = next(line for line in text.splitlines() if re.search(r"\bcpu\b", line))
    # now, mean and max of a constant source all equal its power
    assert row.count(f"{power_w:.2f} W") == 3, row
    # a constant source is at the top of its own scale: full blocks
    assert SPARK_CHARS[-1] * 5 in row, row
    assert "q or Ctrl-C to quit" in text


def test_monitor_shows_power_and_quits_on_q(tmux_factory):
    t = tmux_factory(_monitor_cmd(23.5))
    text = t.wait_for(r"samples [1-9]\d*")
    t.wait_for(r"cpu\s+23\.50 W\s+23\.50 W\s+23\.50 W\s+" + SPARK_CHARS[-1] * 3)
    _check_view(t.screen(), 23.5)
    t.send("q")
    text = t.wait_for(r"EXIT_STATUS=\d+")
    assert "EXIT_STATUS=0" in text
    assert re.search(r"\d+ samples over [\d.]+ s", text)
    assert "Traceback" not in text


def test_monitor_quits_cleanly_on_ctrl_c(tmux_factory):
    t = tmux_factory(_monitor_cmd(7.25))
    t.wait_for(r"cpu\s+7\.25 W")
    t.send("C-c")
    text = t.wait_for(r"EXIT_STATUS=\d+")
    assert "EXIT_STATUS=0" in text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text


def test_monitor_duration_ends_by_itself(tmux_factory):
    t = tmux_factory(_monitor_cmd(12, "--duration-s 1.5"))
    text = t.wait_for(r"EXIT_STATUS=\d+", timeout_s=25)
    assert "EXIT_STATUS=0" in text
    m = re.search(r"(\d+) samples over ([\d.]+) s, ([\d.]+) J", text)
    assert m, text
    # a 12 W source: the energy over the samples shown is 12 W times their span; the only
    # slack is the printing (seconds to 1 decimal: +-0.05 s; joules to 3: +-0.0005 J)
    n, secs, joules = int(m.group(1)), float(m.group(2)), float(m.group(3))
    assert n > 10
    assert abs(joules - 12.0 * secs) <= 12.0 * 0.05 + 0.0005 + 1e-9


def test_monitor_bad_source_exits_2(tmux_factory):
    t = tmux_factory(f"{shlex.quote(sys.executable)} -m energyprof monitor --source synthetic:power_w=abc")
    text = t.wait_for(r"EXIT_STATUS=\d+")
    assert "EXIT_STATUS=2" in text
    assert "bad --source" in text and "power_w" in text


def test_monitor_unusable_source_exits_2_without_a_traceback():
    r = subprocess.run([sys.executable, "-m", "energyprof", "monitor", "--source", "nvml:lib=/nonexistent/libnvml.so",
                        "--duration-s", "1"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2
    assert "energyprof: error:" in r.stderr and "Traceback" not in r.stderr
