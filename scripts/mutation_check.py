"""Do the attribution tests notice wrong energies?  Break the integrator's output on
purpose and count the tests that fail.

    .venv/bin/python scripts/mutation_check.py            # all mutations, then a summary
    .venv/bin/python scripts/mutation_check.py --only swap

Each mutation replaces the integrator *as energyprof.measure.attribution calls it*
(a proxy put in place of ``PieceIntegrator.kernel``, through which attribution integrates
every batch of windows, by this file loaded as a pytest plugin with ``-p mutation_check``);
the integrator itself, and every other caller of it, stay untouched:

  split   every window gets its length x the mean power of the whole sampled range
          (per domain): a time-proportional split, right only under constant power
  swap    the energies of adjacent windows are swapped (windows 0<->1, 2<->3, ...):
          energy moved between rows, every total the same

For each mutation the attribution, session, deep, store and live tests run in a child
pytest; the script prints how many fail per file and in all, and exits 1 when any
mutation fails fewer than ``--min-fail`` (5) tests, or when the unmutated run fails
anything.  The integrator's own tests (test_integrate.py) are not run.  Too slow for
``make test`` (a few minutes); docs/testing.md holds its latest output.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEST_FILES = ["tests/test_attribution.py", "tests/test_session.py", "tests/test_deep.py", "tests/test_store.py",
              "tests/test_live.py"]
MUTATIONS = ("split", "swap")
ENV_MUTATION = "EP_TEST_MUTATION"
ENV_REPORT = "EP_TEST_MUTATION_REPORT"


# ---------------------------------------------------------------------------- the mutations

def _split(real, samples, windows):
    energy_j, flags, counts = real(samples, windows)
    t_lo = int(samples["t_start_ns"][0])
    t_hi = int(samples["t_end_ns"][-1])
    whole, _, _ = real(samples, np.array([[t_lo, t_hi]], dtype=np.int64))
    mean_w = whole[0] / ((t_hi - t_lo) * 1e-9) if t_hi > t_lo else np.zeros(whole.shape[1])
    dur_s = (windows[:, 1] - windows[:, 0]) * 1e-9
    out = dur_s[:, None] * mean_w[None, :]
    return np.where(np.isnan(energy_j), np.nan, out), flags, counts


def _swap(real, samples, windows):
    energy_j, flags, counts = real(samples, windows)
    out = energy_j.copy()
    n = len(out) - len(out) % 2
    out[0:n:2], out[1:n:2] = energy_j[1:n:2], energy_j[0:n:2]
    return out, flags, counts


class _KernelProxy:
    """Stands in for ``PieceIntegrator.kernel``, the integrator attribution calls."""

    def __init__(self, kernel, mutate):
        self._kernel = kernel
        self._mutate = mutate
        self.calls = 0

    def __call__(self, samples, windows):
        self.calls += 1
        return self._mutate(self._kernel, samples, windows)


_PROXY = None


def pytest_configure(config):
    """Plugin side: install the mutation named by $EP_TEST_MUTATION."""
    global _PROXY
    name = os.environ.get(ENV_MUTATION)
    if not name:
        return
    from energyprof.measure import attribution

    pi = getattr(attribution, "PieceIntegrator", None)
    if pi is None or not hasattr(pi, "kernel"):
        raise RuntimeError("energyprof.measure.attribution no longer integrates through PieceIntegrator.kernel: "
                           "move the patch point")
    _PROXY = _KernelProxy(pi.kernel, {"split": _split, "swap": _swap}[name])
    pi.kernel = staticmethod(_PROXY)


def pytest_runtest_logreport(report):
    path = os.environ.get(ENV_REPORT)
    if path and (report.failed or (report.when == "call" and report.passed)):
        with open(path, "a") as f:
            f.write(json.dumps({"test": report.nodeid, "when": report.when, "failed": report.failed}) + "\n")


def pytest_unconfigure(config):
    path = os.environ.get(ENV_REPORT)
    if path and _PROXY is not None:
        with open(path, "a") as f:
            f.write(json.dumps({"integrate_calls": _PROXY.calls}) + "\n")


# ---------------------------------------------------------------------------- the driver

def run_suite(mutation: str | None, files: list) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.jsonl"
        env = dict(os.environ)
        env.pop(ENV_MUTATION, None)
        if mutation:
            env[ENV_MUTATION] = mutation
        env[ENV_REPORT] = str(report)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "scripts"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "mutation_check", "-p", "no:cacheprovider",
                            *files], cwd=ROOT, env=env, capture_output=True, text=True)
        wall_s = time.monotonic() - t0
        lines = [json.loads(x) for x in report.read_text().splitlines()] if report.exists() else []
    failed = sorted({x["test"] for x in lines if x.get("failed")})
    passed = sorted({x["test"] for x in lines if "test" in x and not x.get("failed")} - set(failed))
    calls = next((x["integrate_calls"] for x in lines if "integrate_calls" in x), None)
    return {"mutation": mutation, "failed": failed, "passed": passed, "integrate_calls": calls, "rc": r.returncode,
            "wall_s": wall_s, "tail": r.stdout[-2000:] + r.stderr[-2000:]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=MUTATIONS, action="append", help="run only this mutation (repeatable)")
    ap.add_argument("--min-fail", type=int, default=5, help="fewest failing tests a mutation must cause")
    args = ap.parse_args(argv)
    mutations = args.only or list(MUTATIONS)
    ok = True
    print(f"files: {' '.join(TEST_FILES)}")
    base = run_suite(None, TEST_FILES)
    print(f"unmutated: {len(base['passed'])} passed, {len(base['failed'])} failed ({base['wall_s']:.0f} s)")
    if base["failed"] or base["rc"] != 0:
        print(base["tail"])
        print("the unmutated suite must pass first")
        return 1
    for m in mutations:
        res = run_suite(m, TEST_FILES)
        n = len(res["failed"])
        per_file = {f: sum(1 for t in res["failed"] if t.startswith(f + "::")) for f in TEST_FILES}
        verdict = "ok" if n >= args.min_fail else f"TOO FEW (need >= {args.min_fail})"
        if n < args.min_fail or not res["integrate_calls"]:
            ok = False
        print(f"\nmutation {m}: {n} of {n + len(res['passed'])} tests fail ({verdict}); "
              f"the mutated integrate ran {res['integrate_calls']} times; {res['wall_s']:.0f} s")
        for f, k in per_file.items():
            print(f"  {f}: {k} failed")
        for t in res["failed"]:
            print(f"    FAILED {t}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
