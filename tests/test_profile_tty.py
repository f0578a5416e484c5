"""`energyprof profile` in a real terminal shows a progress bar over generated tokens with
tok/s and the live power of the source, then the summary (tmux drives it)."""
import re
import sys

from test_monitor_tmux import Tmux


def test_progress_bar_shows_steps_and_live_watts():
    cmd = (f"{sys.executable} -m energyprof profile --model tiny-llama --max-new-tokens 400 --batch-size 16 "
           "--source synthetic:power_w=7.5,period_ms=5 --baseline-s 0 --no-save")
    t = Tmux(cmd, width=140, height=40)
    try:
        bar = t.wait_for(r"generating.*[1-9]\d*/400 tokens.*tok/s.*W", timeout_s=120)
        line = next(l for l in bar.splitlines() if "generating" in l)
        assert re.search(r"\d+(\.\d+)? tok/s", line)
        assert "7.5 W" in line               # the synthetic source's power, read live
        done = t.wait_for(r"EXIT_STATUS=\d+", timeout_s=300)
        assert "EXIT_STATUS=0" in done
        assert "SIMULATED" in done and "J per output token" in done
    finally:
        t.kill()
