"""An oracle for the energy of every row of a run, written apart from the code it checks.

It knows nothing of ``energyprof._reference`` or ``_core.integrate``: no cumulative
energy function, no search tables.  The energy of a window ``[a, b)`` is summed sample
by sample in exact rationals (``fractions.Fraction``):

* INTERVAL samples: ``power_w x overlap_ns`` of every sample the window overlaps (the
  sample's average power spread uniformly over its interval);
* INSTANT samples: the exact integral of the straight line between two points over the
  part of each segment inside the window (the trapezoid rule on the clipped segment).

A NaN in a measured domain counts as no energy there; a domain NaN in every sample is
not measured and stays NaN; a window not wholly inside the sampled range is NaN.  That
is the specification of docs/integration.md, read from the page, not from the code.

:func:`check_run` recomputes every section, token and call row of a run (a live
``Session`` or a ``RunData`` loaded from the store) from the samples and the rows' own
windows, and compares energies to ``REL`` (1e-9) relative.  The absolute floor next to it
is the documented rounding of the integrator (about 1e-16 times the run's total energy,
docs/integration.md "Precision"), widened a thousandfold.
"""
from __future__ import annotations

import bisect
import math
from fractions import Fraction
from typing import Dict, List, Optional, Sequence

import numpy as np

DOMAINS = ("cpu", "gpu", "ane", "dram", "package")
KIND_INSTANT, KIND_INTERVAL = 0, 1
REL = 1e-9
NS_PER_S = 10**9


class Oracle:
    """Exact energy of windows over one run's samples."""

    def __init__(self, samples: np.ndarray) -> None:
        self.n = len(samples)
        self.kind = int(samples["kind"][0]) if self.n else KIND_INTERVAL
        self.t0 = [int(t) for t in samples["t_start_ns"]]
        self.t1 = [int(t) for t in samples["t_end_ns"]]
        self.p = {d: [float(x) for x in samples[f"{d}_w"]] for d in DOMAINS}
        self.measured = {d: any(not math.isnan(x) for x in self.p[d]) for d in DOMAINS}
        self.nonnegative = all(x >= 0 for d in DOMAINS for x in self.p[d] if not math.isnan(x))
        self._cache: dict = {}
        if self.n:
            self.first = self.t0[0]
            self.last = self.t1[-1] if self.kind == KIND_INTERVAL else self.t0[-1]
        # The whole run's energy, for the absolute floor of the comparison.
        total = Fraction(0)
        if self.n:
            for d in DOMAINS:
                if self.measured[d]:
                    total += abs(self.energy(self.first, self.last, d))
        self.total_j = float(total)

    def energies(self, a: int, b: int) -> Optional[Dict[str, Optional[Fraction]]]:
        """Exact J of [a, b) per domain (None for a domain not measured); None where the
        window leaves the sampled range."""
        key = (a, b)
        if key in self._cache:
            return self._cache[key]
        out: Optional[Dict[str, Optional[Fraction]]] = None
        if self.n and self.first <= a <= b <= self.last:
            sums = {d: Fraction(0) for d in DOMAINS if self.measured[d]}
            if self.kind == KIND_INTERVAL:
                k = bisect.bisect_right(self.t1, a)      # first sample ending after a
                while k < self.n and self.t0[k] < b:
                    lo, hi = max(a, self.t0[k]), min(b, self.t1[k])
                    if hi > lo:
                        for d in sums:
                            w = self.p[d][k]
                            if not math.isnan(w):
                                sums[d] += Fraction(w) * (hi - lo)
                    k += 1
            else:
                k = max(bisect.bisect_right(self.t0, a) - 1, 0)   # segment [t_k, t_k+1) holding a
                while k < self.n - 1 and self.t0[k] < b:
                    s, e = self.t0[k], self.t0[k + 1]
                    lo, hi = max(a, s), min(b, e)
                    if hi > lo:
                        for d in sums:
                            p0, p1 = self.p[d][k], self.p[d][k + 1]
                            if math.isnan(p0) or math.isnan(p1):
                                continue
                            w0, w1 = Fraction(p0), Fraction(p1)
                            at_lo = w0 + (w1 - w0) * Fraction(lo - s, e - s)
                            at_hi = w0 + (w1 - w0) * Fraction(hi - s, e - s)
                            sums[d] += (at_lo + at_hi) * (hi - lo) / 2
                    k += 1
            out = {d: (sums[d] / NS_PER_S if d in sums else None) for d in DOMAINS}
        self._cache[key] = out
        return out

    def energy(self, a: int, b: int, domain: str) -> Optional[Fraction]:
        """Exact J of [a, b) in one domain; None outside the samples or not measured."""
        e = self.energies(a, b)
        return None if e is None else e[domain]

    def total(self, a: int, b: int) -> Optional[Fraction]:
        """The row total: package (+ dram) where the source has a package domain, else
        the sum of the measured domains (docs: the ``energy_j`` column)."""
        if self.measured["package"]:
            parts = ["package"] + (["dram"] if self.measured["dram"] else [])
        else:
            parts = [d for d in DOMAINS if self.measured[d]]
        vals = [self.energy(a, b, d) for d in parts]
        if not vals or any(v is None for v in vals):
            return None
        return sum(vals, Fraction(0))

    def whole_samples(self, a: int, b: int) -> int:
        """Samples (INSTANT: segments) lying wholly inside [a, b)."""
        if self.kind == KIND_INTERVAL:
            return sum(1 for s, e in zip(self.t0, self.t1) if a <= s and e <= b)
        return sum(1 for k in range(self.n - 1) if a <= self.t0[k] and self.t0[k + 1] <= b)


def _close(got: float, want: Optional[Fraction], floor_j: float) -> bool:
    if want is None:
        return math.isnan(got)
    w = float(want)
    return abs(got - w) <= REL * abs(w) + floor_j


class Mismatch(AssertionError):
    pass


def _fail(what: str, rows: List[str]) -> None:
    if rows:
        raise Mismatch(f"{what}: {len(rows)} row(s) differ from the oracle, e.g.\n  " + "\n  ".join(rows[:5]))


def check_rows(oracle: Oracle, rows: np.ndarray, what: str, floor_j: float) -> Dict[int, Fraction]:
    """Energy, per-domain energy, duration and sample count of every row against the
    oracle; returns the oracle total per row index (for the unattributed checks)."""
    bad: List[str] = []
    want_total: Dict[int, Fraction] = {}
    for i, r in enumerate(rows):
        a, b = int(r["t_start_ns"]), int(r["t_end_ns"])
        tot = oracle.total(a, b)
        want_total[i] = tot
        if not _close(float(r["energy_j"]), tot, floor_j):
            bad.append(f"#{i} [{a}, {b}) energy_j {float(r['energy_j'])!r} != {float(tot) if tot is not None else None!r}")
        for d in DOMAINS:
            e = oracle.energy(a, b, d)
            if not _close(float(r[f"{d}_j"]), e, floor_j):
                bad.append(f"#{i} [{a}, {b}) {d}_j {float(r[f'{d}_j'])!r} != {float(e) if e is not None else None!r}")
        if r["duration_s"] != (b - a) * 1e-9 and abs(r["duration_s"] - (b - a) / 1e9) > 1e-15:
            bad.append(f"#{i} duration_s {r['duration_s']} != {(b - a) / 1e9}")
        if tot is not None:
            n = oracle.whole_samples(a, b)
            if int(r["samples_in_window"]) != n or bool(r["resolved"]) != (n > 0):
                bad.append(f"#{i} samples_in_window {int(r['samples_in_window'])} != {n}")
    _fail(what, bad)
    return want_total


def _check_unattributed(rows: np.ndarray, own: Dict[int, Fraction], children: Dict[int, List[Fraction]],
                        what: str, floor_j: float, nonnegative: bool) -> int:
    """unattributed_j = oracle(parent) - sum(oracle(children)), and never below -eps
    where the children nest inside the parent (power is never negative here)."""
    bad = []
    nested = 0
    for i, r in enumerate(rows):
        if own[i] is None:
            continue
        kids = children.get(i, [])
        want = own[i] - sum(kids, Fraction(0))
        got = float(r["unattributed_j"])
        if not _close(got, want, floor_j):
            bad.append(f"#{i} unattributed_j {got!r} != {float(want)!r}")
        if kids:
            nested += 1
            if nonnegative and got < -(REL * float(own[i]) + floor_j):
                bad.append(f"#{i} unattributed_j {got!r} < 0 with nested children")
    _fail(what + " unattributed", bad)
    return nested


def check_run(run, samples: Optional[np.ndarray] = None) -> Dict[str, int]:
    """Every row of ``run`` against the oracle over ``samples`` (default ``run.samples``).

    Returns how many rows of each kind were checked.  Raises :class:`Mismatch` (an
    AssertionError) naming the first rows that differ.  Where no sample power is
    negative, rows with nested children must keep unattributed_j >= -eps.
    """
    samples = run.samples if samples is None else samples
    oracle = Oracle(samples)
    floor_j = 1e-13 * max(oracle.total_j, 1e-300)
    secs, toks = run.sections, run.tokens
    calls = np.concatenate([run.layers, run.components] + ([run.ops] if len(getattr(run, "ops", [])) else []))
    calls = calls[np.argsort(calls["call_id"], kind="stable")]
    sec_tot = check_rows(oracle, secs, "sections", floor_j)
    tok_tot = check_rows(oracle, toks, "tokens", floor_j)
    call_tot = check_rows(oracle, calls, "calls", floor_j)

    # tokens: j_per_token is the token row's energy over its tokens
    for i, r in enumerate(toks):
        if tok_tot[i] is not None:
            assert _close(float(r["j_per_token"]), tok_tot[i] / max(int(r["n_tokens"]), 1), floor_j), ("j_per_token", i)

    # calls: children by parent_id; each child's window inside its parent's
    row_of = {int(c): i for i, c in enumerate(calls["call_id"])}
    kids: Dict[int, List[Fraction]] = {}
    for i, r in enumerate(calls):
        pid = int(r["parent_id"])
        if pid >= 0:
            p = calls[row_of[pid]]
            assert p["t_start_ns"] <= r["t_start_ns"] <= r["t_end_ns"] <= p["t_end_ns"], ("child outside parent", i)
            kids.setdefault(row_of[pid], []).append(call_tot[i])
    n_nested = _check_unattributed(calls, call_tot, kids, "calls", floor_j, oracle.nonnegative)

    # sections: the run minus its phases; a phase minus the top-level calls that start in
    # it; a user section minus the user sections nested in it; the baseline has none.
    kinds = [str(k) for k in secs["kind"]]
    sid_row = {int(s): i for i, s in enumerate(secs["section_id"])}
    skids: Dict[int, List[Fraction]] = {}
    top = calls[calls["parent_id"] < 0]
    top_tot = [call_tot[row_of[int(c)]] for c in top["call_id"]]
    for i, r in enumerate(secs):
        if kinds[i] == "phase":
            skids.setdefault(sid_row[int(r["parent_id"])], []).append(sec_tot[i])
            inside = (top["t_start_ns"] >= r["t_start_ns"]) & (top["t_start_ns"] < r["t_end_ns"])
            for k in np.flatnonzero(inside):
                skids.setdefault(i, []).append(top_tot[k])
        elif kinds[i] == "section" and int(r["parent_id"]) in sid_row and kinds[sid_row[int(r["parent_id"])]] == "section":
            skids.setdefault(sid_row[int(r["parent_id"])], []).append(sec_tot[i])
    base_rows = [i for i, k in enumerate(kinds) if k == "baseline"]
    if base_rows:
        own = dict(sec_tot)
        for i in base_rows:
            own[i] = None       # the baseline row's unattributed is 0 by definition
            assert float(secs["unattributed_j"][i]) == 0.0
        _check_unattributed(secs, own, skids, "sections", floor_j, oracle.nonnegative)
    else:
        _check_unattributed(secs, sec_tot, skids, "sections", floor_j, oracle.nonnegative)

    # net energy: minus the baseline's mean power (oracle) times the duration
    base_w = Fraction(0)
    if base_rows:
        b = secs[base_rows[0]]
        dur = int(b["t_end_ns"]) - int(b["t_start_ns"])
        if dur > 0 and sec_tot[base_rows[0]] is not None:
            base_w = sec_tot[base_rows[0]] * NS_PER_S / dur
    bad = []
    for i, r in enumerate(secs):
        if sec_tot[i] is None or kinds[i] == "baseline":
            continue
        want = sec_tot[i] - base_w * (int(r["t_end_ns"]) - int(r["t_start_ns"])) / NS_PER_S
        if not _close(float(r["net_energy_j"]), want, floor_j + 1e-15 * float(abs(base_w))):
            bad.append(f"#{i} net_energy_j {float(r['net_energy_j'])!r} != {float(want)!r}")
    _fail("sections net", bad)

    # the summary's figures are the rows'
    sm = run.summary()
    run_row = [i for i, k in enumerate(kinds) if k == "run"][0]
    assert _close(float(sm["energy_j"]), sec_tot[run_row], floor_j), "summary energy_j"
    phases: Dict[str, Fraction] = {}
    for i, k in enumerate(kinds):
        if k == "phase" and sec_tot[i] is not None:
            phases[str(secs["name"][i])] = phases.get(str(secs["name"][i]), Fraction(0)) + sec_tot[i]
    for name, want in phases.items():
        assert _close(float(sm["phases"][name]["energy_j"]), want, floor_j), ("summary phase", name)
    return {"sections": len(secs), "tokens": len(toks), "calls": len(calls), "nested_calls": n_nested}


def samples_from_dicts(dicts: Sequence[dict]) -> np.ndarray:
    """Rebuild a SAMPLE_DTYPE array from the live feed's sample dicts (INTERVAL samples)."""
    from energyprof import _core

    out = np.zeros(len(dicts), _core.SAMPLE_DTYPE)
    out["kind"] = KIND_INTERVAL
    for d in DOMAINS:
        out[f"{d}_w"] = np.nan
    for i, x in enumerate(dicts):
        out["t_start_ns"][i] = x["t_start_ns"]
        out["t_end_ns"][i] = x["t_end_ns"]
        for d, w in x["domains"].items():
            out[f"{d}_w"][i] = w
    return out


#: Power shapes of the synthetic source for the oracle tests: each varies within a run,
#: so a window placed at the wrong time, or a time-proportional split, changes its energy.
WAVEFORMS = {
    "square": "synthetic:power_w=4,square_w=25,square_period_ms=3,period_ms=0.5",
    "ramp": "synthetic:power_w=1,ramp_w_per_s=300,period_ms=0.5",
    "noise": "synthetic:power_w=20,noise_w=4,seed=11,period_ms=0.5",
    "active": "synthetic:power_w=3,active_w=40,period_ms=0.5",
}
