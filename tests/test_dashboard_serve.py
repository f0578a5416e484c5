"""``energyprof serve`` as a command, and a bounded loopback load test of the served dashboard."""
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (the test extra)")

from energyprof.cli import serve as cli_serve  # noqa: E402
from energyprof.views.dashboard import create_app  # noqa: E402

from _dashboard import make_store, serving  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_serve_with_a_token_answers_401_without_it_and_200_with_it(tmp_path):
    path = tmp_path / "runs.db"
    make_store(path)
    proc = subprocess.Popen([sys.executable, "-m", "energyprof", "serve", "--db", str(path), "--port", "0",
                             "--token", "T0ken-for-test"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=str(ROOT))
    try:
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+/)\?token=T0ken-for-test", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        base = m.group(1)
        with httpx.Client(timeout=30) as c:
            assert c.get(base + "api/runs").status_code == 401
            assert c.get(base + "api/runs", headers={"Authorization": "Bearer nope-nope"}).status_code == 401
            r = c.get(base + "api/runs", headers={"Authorization": "Bearer T0ken-for-test"})
            assert r.status_code == 200 and r.json()["total"] == 3
            assert c.get(base + "api/runs?token=T0ken-for-test").status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0


def test_a_host_other_than_loopback_gets_a_generated_token(tmp_path, monkeypatch, capsys):
    """No socket is opened here: the server's run is replaced, the options are what is checked."""
    import uvicorn

    seen = {}

    def fake_create_app(db, read_only, token):
        seen.update(db=db, read_only=read_only, token=token)
        return SimpleNamespace(state=SimpleNamespace(db_path=db))

    monkeypatch.setattr("energyprof.views.dashboard.create_app", fake_create_app)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)
    args = SimpleNamespace(db=str(tmp_path / "x.db"), host="192.0.2.10", port=8765, token=None, read_only=True,
                           open=False)
    assert cli_serve.cli_main(args) == 2  # the (replaced) server never started
    out = capsys.readouterr().out
    assert seen["token"] and len(seen["token"]) >= 24 and seen["token"] in out and seen["read_only"] is True
    args.host, args.token = "127.0.0.1", None
    cli_serve.cli_main(args)
    assert seen["token"] is None  # loopback: no token unless one is given
    assert cli_serve.is_loopback("127.3.4.5") and cli_serve.is_loopback("::1") and cli_serve.is_loopback("localhost")
    assert not cli_serve.is_loopback("0.0.0.0") and not cli_serve.is_loopback("example.org")
    assert cli_serve.serve_url("::1", 80, "t") == "http://[::1]:80/?token=t"


def test_fifty_concurrent_clients_get_no_errors(tmp_path):
    """50 clients at once on loopback, 6 requests each (list, run, samples, compare, stream, a page for
    every fifth client): every answer is 200.  Bounded: 300 requests, 60 s timeout each."""
    path = tmp_path / "runs.db"
    ids = make_store(path)
    errors, done = [], []
    with serving(create_app(str(path))) as base:
        barrier = threading.Barrier(50)

        def client(k):
            urls = ["/api/runs", f"/api/runs/{ids[k % 3]}", f"/api/runs/{ids[k % 3]}/samples?max_points=300",
                    f"/api/compare?ids={ids[0]},{ids[1]},{ids[2]}", f"/api/runs/{ids[(k + 1) % 3]}/stream",
                    "/" if k % 5 == 0 else "/api/runs?label=measured"]
            try:
                with httpx.Client(base_url=base, timeout=60) as c:
                    barrier.wait(30)
                    for u in urls:
                        r = c.get(u)
                        if r.status_code != 200:
                            errors.append((u, r.status_code, r.text[:200]))
                        done.append(u)
            except Exception as e:  # a refused or reset connection is an error too
                errors.append((k, repr(e)))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    assert errors == []
    assert len(done) == 300
