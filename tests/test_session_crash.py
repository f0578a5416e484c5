"""A process killed with SIGKILL inside ep.run leaves a database that opens, passes
integrity_check and holds the run (marked interrupted on the next open) with the
samples committed up to the last batch (written at least every second)."""
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import energyprof as ep
from fakeclock import wait_until

CHILD = textwrap.dedent("""
    import sys, time, torch, energyprof as ep
    from energyprof.tiny import tiny_model
    m = tiny_model("tiny-llama")
    with ep.run(m, source="synthetic:power_w=9,period_ms=5", baseline_s=0, db=sys.argv[1]) as s:
        print("RUN", s.run_id, flush=True)
        while True:
            m.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=4, do_sample=False)
            time.sleep(0.01)
""")


def test_sigkill_inside_run_keeps_committed_samples(tmp_path):
    db = tmp_path / "runs.db"
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith("RUN"), line
        run_id = int(line.split()[1])
        # kill once >= 100 samples (0.5 s of them) are committed: several save periods
        wait_until(lambda: _committed(db, run_id) >= 100, "the saver to commit 100 samples")
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT status FROM runs WHERE id=?", (run_id,)).fetchone()[0] == "running"
    n = con.execute("SELECT count(*) FROM power_samples WHERE run_id=?", (run_id,)).fetchone()[0]
    con.close()
    assert n >= 100   # what was seen committed before the kill is still there
    run = ep.load(run_id, db=db)           # opening marks the dead process's run interrupted
    assert run.summary()["status"] == "interrupted"
    s = run.samples
    assert len(s) == n
    assert (s["t_start_ns"][1:] == s["t_end_ns"][:-1]).all()   # contiguous: no batch lost in the middle
    assert (s["cpu_w"] == 9.0).all()


def _committed(db, run_id: int) -> int:
    """Samples of the run committed so far, read from another connection (0 before the
    table exists)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM power_samples WHERE run_id=?", (run_id,)).fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0
