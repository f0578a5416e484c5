"""Shared set-up of the dashboard tests: a store of three labelled runs (and a deep one),
and the dashboard served by uvicorn on a free loopback port in a thread."""
from __future__ import annotations

import contextlib
import socket
import threading
import time

from energyprof.store.db import Store
from energyprof.store.rundata import RunData
from energyprof.testing import synthetic_run

NAMES = ("alpha-simulated", "bravo-measured", "charlie-estimated")


def make_store(path, deep: bool = False) -> list:
    """Three runs (simulated, measured, estimated) with distinct names, sizes and start
    days; with ``deep`` a fourth, real mode="deep" run of tiny-llama.  Returns the ids."""
    ids = []
    with Store(str(path)) as st:
        for i, (name, label) in enumerate(zip(NAMES, ("simulated", "measured", "estimated"))):
            r = synthetic_run(n_layers=2 + i, n_steps=6 + 4 * i, seed=i, source_label=label)
            s = r.summary()
            s["name"] = name
            s["tags"] = ["demo", f"n{i}"]
            s["started_at"] = f"2026-01-0{i + 1}T12:00:00+00:00"
            ids.append(st.save(RunData(s, samples=r.samples, sections=r.sections, tokens=r.tokens, layers=r.layers,
                                       components=r.components)))
    if deep:
        ids.append(deep_run(path))
    return ids


def deep_run(path) -> int:
    import torch

    import energyprof as ep
    from energyprof.tiny import tiny_model

    model = tiny_model("tiny-llama")
    with ep.run(model, source="synthetic:power_w=12,period_ms=1", mode="deep", baseline_s=0, db=str(path),
                name="delta-deep") as s:
        with torch.no_grad():
            model.generate(torch.tensor([[3, 17, 42, 99]]), max_new_tokens=4, do_sample=False)
    return s.run_id


def free_port() -> int:
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


@contextlib.contextmanager
def serving(app):
    """Serve ``app`` on 127.0.0.1:<free port> in a thread; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1, access_log=False))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not t.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(10)
