"""Multi-rank runs under torch.distributed: every rank measures its own devices, rank 0 saves one run.

``ep.run(model, ..., distributed="auto")`` inside an initialised process group of more
than one rank (torchrun, accelerate, ``mp.spawn``):

1. **Setup** (:func:`setup`, a collective): the ranks exchange host names.  The lowest rank
   on each host is its *host leader*; ``local_rank`` is ``$LOCAL_RANK`` or the rank's place
   among its host's ranks.  A per-device source (``synthetic``, ``nvml``) is sampled by every
   rank (``nvml`` without ``index=`` samples device ``local_rank``); a host-wide source
   (``rapl``, ``estimate``, ``powermetrics``, ``plist``, ``ioreport``) only by the host
   leader, so nothing is counted twice.
2. **Clocks** (:func:`exchange_clocks`, a collective): each rank r exchanges timestamps with
   rank 0 over the process group (r sends t1, rank 0 answers with its time t2, r reads t3);
   over several rounds the one with the shortest round trip gives
   ``offset = t2 - (t1 + t3) / 2`` (add it to r's monotonic clock to get rank 0's) and
   ``uncertainty = (t3 - t1) / 2``: the true offset is within that bound whatever the delay
   split between the two directions.  It is measured again at exit (:func:`wait_for_ranks`);
   a difference beyond both uncertainties is a drift, corrected linearly (:func:`offset_at`).
3. **Exit** (:func:`wait_for_ranks`, then :func:`send_to_rank0` / :func:`receive_on_rank0`):
   every rank keeps sampling until all have left their block, integrates its own
   run, then sends its samples, forwards, sections, tokens and calls to rank 0
   point-to-point; rank 0 waits for each rank in turn.  A rank that died (its connection is
   closed) is recorded as ``missing`` and the run is saved ``interrupted`` with the data of
   every rank that reported.
4. **Merge** (:func:`merge`, pure numpy): rank 0's windows (run, phases, sections) are
   integrated over every rank's samples and summed: the merged rows (``rank = -1``) are the
   energy of all ranks.  Tokens are counted once per *replica group* (ranks that produce
   the same tokens, e.g. the ranks of one tensor-parallel model; by default every rank is
   its own group, as in data parallel): the merged token rows are each group leader's
   decode steps with the energy of the group's ranks.  Each rank's own rows are kept in
   ``rank_sections`` / ``rank_tokens`` and its calls in layers/components/ops with its rank.

See docs/distributed.md.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .._dtypes import DOMAINS, RANK_DTYPE, SECTION_DTYPE, TOKEN_DTYPE, flag_names
from ..store.quality import resolution_summary
from ..store.rundata import sample_row_dtype, with_rank

__all__ = ["RankInfo", "HOST_WIDE_KINDS", "setup", "exchange_clocks", "send_to_rank0", "receive_on_rank0",
           "merge", "NoSampler", "resolve_mode", "wait_for_ranks", "payload", "offset_at", "clock_drift",
           "peak_of_sum"]

#: Source kinds that measure a whole host (one reading for every process on it): sampled
#: on one rank per host only.
HOST_WIDE_KINDS = ("rapl", "estimate", "powermetrics", "plist", "ioreport")
#: Timestamp exchanges per rank; the one with the shortest round trip is kept.
CLOCK_ROUNDS = 16

_DOM_J = [f"{d}_j" for d in DOMAINS]


@dataclass
class RankInfo:
    """Who this process is in the process group and what it samples."""

    rank: int
    world_size: int
    local_rank: int
    host: str
    host_leader: int
    replica_group: int
    hosts: List[str] = field(default_factory=list)      # host of every rank
    groups: List[int] = field(default_factory=list)     # replica group of every rank
    samples: bool = True                                # whether this rank samples its source
    clock_offset_ns: int = 0
    clock_uncertainty_ns: int = 0
    clock_at_ns: int = 0                                # this rank's time of that measurement
    clock_end: Optional[Tuple[int, int, int]] = None    # (offset, uncertainty, at) measured again at exit


def resolve_mode(distributed: Any) -> Tuple[bool, Optional[int]]:
    """``distributed`` argument -> (use the process group, replica group or None).

    ``"auto"``: use it when initialised with more than one rank; ``True``: require it;
    ``False``: never; a dict ``{"replica_group": g}``: like ``True`` with this rank's
    replica group (default: the rank itself).
    """
    if distributed is False:
        return False, None
    if isinstance(distributed, dict):
        unknown = set(distributed) - {"replica_group"}
        if unknown:
            raise ValueError(f"distributed: unknown keys {sorted(unknown)}; the one key is 'replica_group'")
        g = distributed.get("replica_group")
        if g is not None and (isinstance(g, bool) or not isinstance(g, (int, np.integer)) or g < 0):
            raise ValueError(f"distributed: replica_group must be an integer >= 0, got {g!r}")
        return _require_group(), (None if g is None else int(g))
    if distributed is True:
        return _require_group(), None
    if distributed == "auto":
        return _group_ready(), None
    raise ValueError(f"distributed must be 'auto', True, False or {{'replica_group': N}}, got {distributed!r}")


def _group_ready() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def _require_group() -> bool:
    if not _group_ready():
        raise RuntimeError("ep.run(distributed=True): no torch.distributed process group with more than one rank "
                           "is initialised (call torch.distributed.init_process_group first, e.g. under torchrun)")
    return True


def setup(source_kind: str, replica_group: Optional[int]) -> RankInfo:
    """Collective: learn every rank's host and replica group; decide who samples what."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    host = platform.node()
    env_local = os.environ.get("LOCAL_RANK")
    mine = (host, None if env_local is None else int(env_local), rank if replica_group is None else replica_group)
    everyone: List[Any] = [None] * world
    dist.all_gather_object(everyone, mine)
    hosts = [e[0] for e in everyone]
    same = [r for r in range(world) if hosts[r] == host]
    local = mine[1] if mine[1] is not None else same.index(rank)
    leader = min(same)
    info = RankInfo(rank=rank, world_size=world, local_rank=local, host=host, host_leader=leader,
                    replica_group=mine[2], hosts=hosts, groups=[e[2] for e in everyone])
    info.samples = source_kind not in HOST_WIDE_KINDS or rank == leader
    return info


def _answer_clock(r: int, now_ns, rounds: int) -> None:
    """Rank 0's half of a clock measurement with rank r: answer each of its pings with the time."""
    import torch
    import torch.distributed as dist

    buf = torch.zeros(1, dtype=torch.int64)
    for _ in range(rounds):
        dist.recv(buf, src=r)
        buf[0] = now_ns()
        dist.send(buf, dst=r)


def _ping_rank0(now_ns, rounds: int) -> Tuple[int, int, int]:
    """A rank's half: ``rounds`` pings to rank 0; the one with the shortest round trip gives
    ``(offset, uncertainty, at)``: rank 0's clock minus this one's, half the round trip (the
    true offset is within it whatever the split of the delay), and this rank's time then."""
    import torch
    import torch.distributed as dist

    buf = torch.zeros(1, dtype=torch.int64)
    best = None
    for _ in range(rounds):
        t1 = now_ns()
        buf[0] = t1
        dist.send(buf, dst=0)
        dist.recv(buf, src=0)
        t3 = now_ns()
        t2 = int(buf[0])
        if best is None or t3 - t1 < best[1] - best[0]:
            best = (t1, t3, t2)
    t1, t3, t2 = best
    return int(t2 - (t1 + t3) // 2), int((t3 - t1 + 1) // 2), int((t1 + t3) // 2)


def exchange_clocks(info: RankInfo, now_ns, rounds: int = CLOCK_ROUNDS) -> None:
    """Collective: align every rank's monotonic clock to rank 0's (sets the offset fields).

    ``now_ns`` is the clock to align (``energyprof._core.now_ns``).  Rank 0 answers each
    other rank in turn; ends with a barrier so every rank leaves at about the same time.
    """
    import torch.distributed as dist

    if info.rank == 0:
        for r in range(1, info.world_size):
            _answer_clock(r, now_ns, rounds)
    else:
        info.clock_offset_ns, info.clock_uncertainty_ns, info.clock_at_ns = _ping_rank0(now_ns, rounds)
    dist.barrier()


def wait_for_ranks(info: RankInfo, now_ns=None, rounds: int = CLOCK_ROUNDS) -> List[str]:
    """At exit, before the samplers stop: every rank keeps sampling until every rank has
    left its block, so every rank's samples cover every other rank's windows.

    Point to point, so a dead rank does not cut the wait short for the others: each rank
    tells rank 0 it is done and waits for rank 0's answer; rank 0 waits for every rank's
    word (a dead rank's closed connection ends its wait), then answers the living ones.
    With ``now_ns``, each living rank then measures its clock offset to rank 0 again
    (``info.clock_end``), so that a drift between hosts over the run can be corrected
    (:func:`offset_at`); a rank lost there keeps its start offset only.
    Returns one message per rank that could not be reached."""
    import torch
    import torch.distributed as dist

    flag = torch.zeros(1, dtype=torch.int64)
    problems: List[str] = []
    if info.rank == 0:
        alive = []
        for r in range(1, info.world_size):
            try:
                dist.recv(flag, src=r)
                alive.append(r)
            except Exception as e:
                problems.append(f"rank {r} did not finish its block ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:120]})")
        answered = []
        for r in alive:
            try:
                dist.send(flag, dst=r)
                answered.append(r)
            except Exception as e:  # it died since
                problems.append(f"rank {r} is gone ({type(e).__name__})")
        for r in answered if now_ns is not None else ():
            try:
                _answer_clock(r, now_ns, rounds)
            except Exception as e:  # it died since: its start offset stands alone
                problems.append(f"rank {r}: no clock measurement at exit ({type(e).__name__})")
    else:
        try:
            dist.send(flag, dst=0)
            dist.recv(flag, src=0)
        except Exception as e:
            problems.append(f"rank 0 did not answer ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
            return problems
        if now_ns is not None:
            try:
                info.clock_end = _ping_rank0(now_ns, rounds)
            except Exception as e:
                problems.append(f"no clock measurement at exit ({type(e).__name__})")
    return problems


def offset_at(p: Dict[str, Any]):
    """The offset (ns) to add to rank p's clock at its times ``t`` (int or int64 array) to get
    rank 0's: the start offset, drifting linearly to the offset measured at exit where that
    differs from the start one by more than their uncertainties together (a drift the two
    measurements can tell from their own error); the start offset alone otherwise.

    >>> p = {"clock_offset_ns": 1000, "clock_uncertainty_ns": 10, "clock_at_ns": 0,
    ...      "clock_end": (3000, 10, 1_000_000)}
    >>> int(offset_at(p)(500_000))       # half way: 1000 + (3000 - 1000) / 2
    2000
    >>> p["clock_end"] = (1015, 10, 1_000_000)   # within 10 + 10 ns of the start: no drift seen
    >>> int(offset_at(p)(500_000))
    1000
    """
    off0 = int(p["clock_offset_ns"])
    slope = clock_drift(p)
    if slope is None:
        return lambda t: np.asarray(t, dtype=np.int64) * 0 + off0
    at0 = int(p.get("clock_at_ns", 0))
    return lambda t: off0 + np.rint(slope * (np.asarray(t, dtype=np.float64) - at0)).astype(np.int64)


def clock_drift(p: Dict[str, Any]) -> Optional[float]:
    """Rank p's clock drift against rank 0's (ns per ns: 1e-6 is 1 ppm) from its start and
    exit offsets, or None where none was measured or it lies within their uncertainties."""
    end = p.get("clock_end")
    if not end or p.get("rank") == 0:
        return None
    off1, unc1, at1 = (int(v) for v in end)
    off0, unc0, at0 = int(p["clock_offset_ns"]), int(p["clock_uncertainty_ns"]), int(p.get("clock_at_ns", 0))
    if at1 <= at0 or abs(off1 - off0) <= unc0 + unc1:
        return None
    return (off1 - off0) / (at1 - at0)


def send_to_rank0(payload: Dict[str, Any]) -> None:
    """A rank other than 0: send its run to rank 0 (point to point)."""
    import torch.distributed as dist

    dist.send_object_list([payload], dst=0)


def receive_on_rank0(world_size: int) -> Tuple[List[Optional[Dict[str, Any]]], List[str]]:
    """Rank 0: each other rank's payload in rank order (None for a rank that died or
    could not send), and one message per such rank."""
    import torch.distributed as dist

    got: List[Optional[Dict[str, Any]]] = [None] * world_size
    errors: List[str] = []
    for r in range(1, world_size):
        box: List[Any] = [None]
        try:
            dist.recv_object_list(box, src=r)
            got[r] = box[0]
        except Exception as e:  # the peer died or the group broke: keep what the others sent
            errors.append(f"rank {r} sent nothing ({type(e).__name__}: {str(e).splitlines()[0][:160]})")
    return got, errors


class NoSampler:
    """Stands in for the sampler on a rank that does not sample (a host-wide source sampled
    by its host leader): no samples, the source's nominal period."""

    def __init__(self, source: Any) -> None:
        self.interval_ns = int(getattr(source, "period_ns", 0) or 100_000_000)
        self.meta_json = getattr(source, "meta_json", "")
        self.dropped = self.faults = self.n_samples = 0
        self.supports_boundary, self.boundary_reads = False, 0   # nothing to read at forward edges
        self.supports_sync = False
        self.samples = np.zeros(0, dtype=_sample_dtype())

    def start(self) -> None:
        """Nothing to start."""

    def stop(self) -> None:
        """Nothing to stop."""

    def drain(self) -> None:
        """Nothing to drain."""

    def samples_since(self, i: int) -> np.ndarray:
        """No samples."""
        return self.samples[:0]


def _sample_dtype() -> np.dtype:
    from .. import _core

    return np.dtype(_core.SAMPLE_DTYPE)


# ----------------------------------------------------------------------------- merge (pure numpy)
def _shift(a: np.ndarray, p: Dict[str, Any]) -> np.ndarray:
    """Rows of rank p with their times moved onto rank 0's clock (:func:`offset_at`)."""
    a = a.copy()
    if len(a):
        off = offset_at(p)
        a["t_start_ns"] += off(a["t_start_ns"])
        a["t_end_ns"] += off(a["t_end_ns"])
    return a


def _sum_rows(parts: Sequence[np.ndarray], template: np.ndarray) -> np.ndarray:
    """Rows of ``template`` with the energy columns summed over ``parts`` (rows of the same
    windows): a domain unknown on every part stays NaN; resolution is the least resolved
    part's (fewest samples; resolved only if resolved on every part); flags are OR-ed."""
    out = template.copy()
    if not parts:
        return out
    for c in ["energy_j", "net_energy_j", "unattributed_j"] + _DOM_J:
        if c not in out.dtype.names:
            continue
        st = np.stack([p[c] for p in parts])
        out[c] = np.where(np.all(np.isnan(st), axis=0), np.nan, np.nansum(st, axis=0))
    out["samples_in_window"] = np.min(np.stack([p["samples_in_window"] for p in parts]), axis=0)
    out["resolved"] = np.all(np.stack([p["resolved"] for p in parts]), axis=0)
    out["flags"] = np.bitwise_or.reduce(np.stack([p["flags"] for p in parts]), axis=0)
    return out


def _attribute_over(samples: np.ndarray, windows: Dict[str, Any], nominal_s: float):
    """Integrate ``samples`` (one rank's, on rank 0's clock) over another rank's windows."""
    from .attribution import Forward, SpanInfo, UserSection, attribute

    fwd = [Forward(*f) for f in windows["forwards"]]
    users = [UserSection(*u) for u in windows["user_sections"]]
    ev = np.zeros(0, dtype=[("t_ns", "<i8"), ("span_id", "<i4"), ("kind", "<i4")])
    return attribute(samples, windows["t_start_ns"], windows["t_end_ns"], fwd, ev,
                     [SpanInfo(layer=-1, component="model")], users, windows["baseline"],
                     post_baseline=windows["post_baseline"], nominal_period_s=nominal_s)


def _windows_on_rank0(p: Dict[str, Any]) -> Dict[str, Any]:
    off = offset_at(p)
    at = (lambda t: int(t) + int(off(int(t))))
    sh = (lambda w: None if w is None else (at(w[0]), at(w[1])))
    return {
        "t_start_ns": at(p["t_start_ns"]), "t_end_ns": at(p["t_end_ns"]),
        "forwards": [(at(f[0]), at(f[1])) + tuple(f[2:]) for f in p["forwards"]],
        "user_sections": [(u[0], at(u[1]), at(u[2]) if u[2] >= 0 else u[2], u[3]) for u in p["user_sections"]],
        "baseline": sh(p["baseline"]), "post_baseline": sh(p["post_baseline"]),
    }


def merge(payloads: Sequence[Optional[Dict[str, Any]]], errors: Sequence[str] = ()) -> Dict[str, Any]:
    """Rank 0: the one run of all ranks from each rank's payload (None: the rank is missing).

    ``payloads[r]`` is what :func:`payload` made on rank r.  Returns a dict with the merged
    ``summary`` updates, ``samples`` (every rank's, with its rank, on rank 0's clock),
    ``sections`` / ``tokens`` (merged rows, rank -1 / the replica group's leader),
    ``layers`` / ``components`` / ``ops`` (each rank's calls with its rank), ``ranks``,
    ``rank_sections``, ``rank_tokens`` and ``status``.
    """
    p0 = payloads[0]
    world = int(p0["world_size"])
    present = [r for r in range(world) if r < len(payloads) and payloads[r] is not None]
    win = {r: _windows_on_rank0(payloads[r]) for r in present}
    samp = {r: _shift(payloads[r]["samples"], payloads[r]) for r in present}
    nominal = {r: float(payloads[r]["nominal_period_s"]) for r in present}
    sampling = [r for r in present if payloads[r]["samples_source"]]

    # sections: rank 0's windows over every sampling rank's samples
    over0 = {r: _attribute_over(samp[r], win[0], nominal[r]) for r in sampling}
    sections = _sum_rows([over0[r].sections for r in sampling], over0[0].sections)
    sections["rank"] = -1

    # tokens: once per replica group, each group leader's steps with its group's energy
    groups = [int(g) for g in p0["groups"]]
    leaders = sorted({min(r for r in range(world) if groups[r] == g) for g in set(groups)})
    tok_parts, in_tok, out_tok, phase_toks = [], 0, 0, None
    missing_leaders = []
    for lead in leaders:
        if lead not in win:
            missing_leaders.append(lead)
            continue
        members = [r for r in sampling if groups[r] == groups[lead]]
        if lead == 0:
            parts = [over0[r] for r in members]
        else:
            parts = [_attribute_over(samp[r], win[lead], nominal[r]) for r in members]
        ref = parts[0] if parts else _attribute_over(samp[lead][:0], win[lead], nominal[lead])
        t = _sum_rows([a.tokens for a in parts], ref.tokens)
        t["rank"] = lead
        t["j_per_token"] = t["energy_j"] / np.maximum(t["n_tokens"], 1)
        tok_parts.append(t)
        in_tok += int(payloads[lead]["input_tokens"])
        out_tok += int(payloads[lead]["output_tokens"])
        names = [(n, k) for n, k in zip(ref.sections["name"].tolist(), ref.sections["kind"].tolist())]
        toks = ref.sections["tokens"]
        if phase_toks is None:
            phase_names, phase_toks = names, toks.astype(np.int64).copy()
        elif names == phase_names:
            phase_toks += toks
    tokens = np.concatenate(tok_parts) if tok_parts else np.zeros(0, TOKEN_DTYPE)
    if phase_toks is not None and len(phase_toks) == len(sections):
        sections["tokens"] = phase_toks

    # every rank's own rows and calls
    rank_sections, rank_tokens, calls = [], [], {"layers": [], "components": [], "ops": []}
    next_id = 0
    for r in present:
        p = payloads[r]
        rank_sections.append(with_rank(_shift(p["sections"], p), SECTION_DTYPE, r))
        rank_sections[-1]["rank"] = r
        rank_tokens.append(with_rank(_shift(p["tokens"], p), TOKEN_DTYPE, r))
        rank_tokens[-1]["rank"] = r
        top = -1
        for name in calls:
            a = _shift(p[name], p)
            a["rank"] = r
            if len(a):
                top = max(top, int(a["call_id"].max()))
                a["call_id"] += next_id
                a["parent_id"] = np.where(a["parent_id"] >= 0, a["parent_id"] + next_id, -1)
            calls[name].append(a)
        next_id += top + 1

    ranks = np.zeros(world, RANK_DTYPE)
    for r in range(world):
        row = ranks[r]
        row["rank"], row["host"] = r, p0["hosts"][r]
        row["replica_group"] = groups[r]
        row["host_leader"] = min(q for q in range(world) if p0["hosts"][q] == p0["hosts"][r])
        row["energy_j"] = np.nan
        for d in _DOM_J:
            row[d] = np.nan
        if r not in win:
            row["status"], row["local_rank"] = "missing", -1
            continue
        p = payloads[r]
        row["local_rank"], row["device"] = p["local_rank"], p["device"]
        row["source"] = p["source"] if p["samples_source"] else ""
        row["source_label"] = p["source_label"] if p["samples_source"] else ""
        row["status"] = p["status"]
        row["clock_offset_ns"], row["clock_uncertainty_ns"] = p["clock_offset_ns"], p["clock_uncertainty_ns"]
        row["t_start_ns"], row["t_end_ns"] = win[r]["t_start_ns"], win[r]["t_end_ns"]
        row["n_samples"] = len(p["samples"])
        row["input_tokens"], row["output_tokens"] = p["input_tokens"], p["output_tokens"]
        if r in over0:
            run_row = over0[r].sections[0]
            row["energy_j"] = run_row["energy_j"]
            for d in _DOM_J:
                row[d] = run_row[d]

    samples_ranked = []
    for r in present:
        s = with_rank(samp[r], sample_row_dtype(), r)
        s["rank"] = r
        samples_ranked.append(s)
    all_samples = np.concatenate(samples_ranked)
    all_samples = all_samples[np.argsort(all_samples["t_start_ns"], kind="stable")]

    complete = len(present) == world and all(payloads[r]["status"] == "completed" for r in present)
    summary = _merged_summary(over0[0].summary, sections, tokens, over0, sampling, payloads, ranks, in_tok,
                              out_tok, nominal, samp, list(errors) + [f"rank {r} (a replica group's first rank) is "
                                                                f"missing: its tokens are not counted"
                                                                for r in missing_leaders])
    return {"summary": summary, "samples": all_samples, "sections": sections, "tokens": tokens,
            **{k: (np.concatenate(v) if v else v) for k, v in calls.items()},
            "ranks": ranks, "rank_sections": np.concatenate(rank_sections), "rank_tokens": np.concatenate(rank_tokens),
            "status": "completed" if complete else "interrupted"}


def peak_of_sum(parts: Sequence[np.ndarray], t_start_ns: int, t_end_ns: int) -> Tuple[float, int]:
    """The highest total power of several ranks' samples added up over time, and when.

    Each part is one rank's interval samples (on one clock): its total power is a step
    function, constant over each sample.  Their sum is a step function that changes only at
    the parts' sample edges, so its highest value over [t_start_ns, t_end_ns) is the highest
    sum over the pieces between consecutive edges.  Returns ``(power_w, t_ns)``, the start
    of the first piece that reaches it; ``(nan, -1)`` when no part has a measured sample there.

    >>> import numpy as np
    >>> from energyprof import _core
    >>> def part(edges, watts):
    ...     x = np.zeros(len(watts), dtype=np.dtype(_core.SAMPLE_DTYPE))
    ...     x["t_start_ns"], x["t_end_ns"], x["kind"] = edges[:-1], edges[1:], 1
    ...     for d in ("cpu_w", "ane_w", "dram_w", "package_w"): x[d] = np.nan
    ...     x["gpu_w"] = watts
    ...     return x
    >>> # rank 0 peaks at 50 W over [10, 20), rank 1 at 45 W over [20, 30): the sum is 20, 60,
    >>> # then 65 W (not 95, the sum of the peaks)
    >>> peak_of_sum([part([0, 10, 20, 30], [10, 50, 20]), part([0, 20, 30], [10, 45])], 0, 30)
    (65.0, 20)
    """
    from .._dtypes import measured_domains, total_of

    edges = [np.array([t_start_ns, t_end_ns], dtype=np.int64)]
    series = []
    for x in parts:
        x = x[(x["kind"] == 1) & (x["t_end_ns"] > t_start_ns) & (x["t_start_ns"] < t_end_ns)]
        if not len(x):
            continue
        cols = [np.asarray(x[c], dtype=np.float64) for c in ("cpu_w", "gpu_w", "ane_w", "dram_w", "package_w")]
        series.append((x["t_start_ns"], x["t_end_ns"], total_of(np.stack(cols, axis=1), measured_domains(x))))
        edges += [x["t_start_ns"], x["t_end_ns"]]
    if not series:
        return float("nan"), -1
    t = np.unique(np.clip(np.concatenate(edges), t_start_ns, t_end_ns))
    a = t[:-1]                                  # each piece [a, next edge)
    total = np.zeros(len(a))
    seen = np.zeros(len(a), dtype=bool)
    for starts, ends, watts in series:
        k = np.searchsorted(starts, a, side="right") - 1          # the sample that starts at or before a
        inside = (k >= 0) & (ends[np.maximum(k, 0)] > a)
        w = np.where(inside, watts[np.maximum(k, 0)], np.nan)
        seen |= ~np.isnan(w)
        total += np.nan_to_num(w, nan=0.0)
    if not seen.any():
        return float("nan"), -1
    total[~seen] = -np.inf
    i = int(np.argmax(total))
    return float(total[i]), int(a[i])


def _merged_summary(base: Dict[str, Any], sections: np.ndarray, tokens: np.ndarray, over0: Dict[int, Any],
                    sampling: List[int], payloads, ranks: np.ndarray, in_tok: int, out_tok: int,
                    nominal: Dict[int, float], samp: Dict[int, np.ndarray], messages: List[str]) -> Dict[str, Any]:
    """The figures of the summary that change when every rank's energy is counted."""
    s = dict(base)
    run = sections[0]
    run_j, run_s = float(run["energy_j"]), float(run["duration_s"])
    s["energy_j"], s["net_energy_j"] = run_j, float(run["net_energy_j"])
    s["domains"] = {d: float(run[f"{d}_j"]) for d in DOMAINS}
    s["unattributed_j"] = float(run["unattributed_j"])
    s["baseline_power_w"] = float(sum(over0[r].summary["baseline_power_w"] for r in sampling))
    s["baseline_domains_w"] = {d: float(np.nansum([over0[r].summary["baseline_domains_w"][d] for r in sampling]))
                               for d in DOMAINS}
    peak_w, peak_t = peak_of_sum([samp[r] for r in sampling], int(run["t_start_ns"]), int(run["t_end_ns"]))
    instants = any(np.any(samp[r]["kind"] != 1) for r in sampling)
    if instants or not np.isfinite(peak_w):
        # Instant readings (NVML power mode) are not steps: fall back to an upper bound.
        peaks = [over0[r].summary["peak_power_w"] for r in sampling]
        s["peak_power_w"] = float(np.nansum(peaks)) if not all(np.isnan(peaks)) else float("nan")
        s["peak_power_rule"] = "sum of the ranks' peaks (an upper bound: they need not coincide)"
    else:
        s["peak_power_w"] = peak_w
        s["peak_power_rule"] = ("the highest total power of the ranks' samples added up over time (on rank 0's "
                                "clock)")
        s["peak_power_t_s"] = (peak_t - int(run["t_start_ns"])) * 1e-9
    phases: Dict[str, dict] = {}
    for r in sections[1:]:
        if r["kind"] != "phase":
            continue
        p = phases.setdefault(str(r["name"]), {"energy_j": 0.0, "net_energy_j": 0.0, "duration_s": 0.0, "tokens": 0})
        p["energy_j"] += float(r["energy_j"])
        p["net_energy_j"] += float(r["net_energy_j"])
        p["duration_s"] += float(r["duration_s"])
        p["tokens"] += int(r["tokens"])
    for p in phases.values():
        p["j_per_token"] = p["energy_j"] / p["tokens"] if p["tokens"] else float("nan")
        p["edp_js"] = p["energy_j"] * p["duration_s"]
    s["phases"] = phases
    s["input_tokens"], s["output_tokens"] = in_tok, out_tok
    s["j_per_token"] = run_j / (in_tok + out_tok) if in_tok + out_tok else float("nan")
    s["j_per_output_token"] = run_j / out_tok if out_tok else float("nan")
    s["tokens_per_j"] = out_tok / run_j if run_j > 0 else float("nan")
    s["edp_js"] = run_j * run_s
    # resolution: the coarsest sensor's period, and rows resolved only where every rank's are
    period = max(nominal[r] for r in sampling) if sampling else float("nan")
    per_rank_periods = [over0[r].summary["sample_period_s"] for r in sampling]
    if per_rank_periods and not all(np.isnan(per_rank_periods)):
        period = float(np.nanmax(per_rank_periods))
    s["sample_period_s"] = period
    phase_rows = sections[sections["kind"] == "phase"]
    calls_res = np.concatenate([payloads[r][n]["resolved"] for r in range(len(payloads)) if payloads[r] is not None
                                for n in ("layers", "components", "ops")]) if payloads else None
    res = resolution_summary(period, phase_rows["resolved"], tokens["resolved"],
                             calls_res if calls_res is not None and len(calls_res) else None,
                             gaps=base["resolution"].get("gaps"))
    res["baseline"] = base["resolution"].get("baseline")
    s["resolution"] = res
    s["flags"] = int(run["flags"])
    s["flag_names"] = flag_names(int(run["flags"]))
    labels = {str(x) for x in ranks["source_label"] if x}
    for weaker in ("simulated", "estimated", "measured"):
        if weaker in labels:
            s["source_label"] = weaker
            break
    hosts: Dict[str, float] = {}
    for row in ranks:
        if not np.isnan(row["energy_j"]):
            hosts[str(row["host"])] = hosts.get(str(row["host"]), 0.0) + float(row["energy_j"])
    s["distributed"] = {
        "world_size": int(len(ranks)),
        "n_hosts": len(set(ranks["host"].tolist())),
        "replica_groups": sorted({int(g) for g in ranks["replica_group"]}),
        "energy_j_per_rank": {int(r["rank"]): float(r["energy_j"]) for r in ranks},
        "energy_j_per_host": hosts,
        "total_j": run_j,
        "missing_ranks": [int(r["rank"]) for r in ranks if r["status"] == "missing"],
        "clock_uncertainty_ns": int(ranks["clock_uncertainty_ns"].max()) if len(ranks) else 0,
        # per rank: the drift of its clock against rank 0's over the run (ppm), measured from
        # its offsets at the start and at exit; None where none was measurable (within their
        # uncertainties: then the start offset is used throughout)
        "clock_drift_ppm": {str(r): (None if d is None else d * 1e6) for r, d in
                            ((r, clock_drift(payloads[r])) for r in range(len(payloads)) if payloads[r] is not None)},
        "window": "rank 0's run, phases and sections, on rank 0's clock; tokens per replica group leader",
    }
    s["warnings"] = list(base.get("warnings", [])) + messages
    return s


def payload(session: Any, info: RankInfo, att: Any, forwards: Sequence[Any], status: str, calls: Dict[str, np.ndarray],
            samples: np.ndarray, t_end_ns: int) -> Dict[str, Any]:
    """What rank r sends to rank 0: its windows, samples and own rows, on its own clock."""
    return {
        "rank": info.rank, "world_size": info.world_size, "local_rank": info.local_rank, "hosts": info.hosts,
        "groups": info.groups, "device": str(session._device), "source": session._source.spec,
        "source_label": session._source.label, "samples_source": info.samples, "status": status,
        "clock_offset_ns": info.clock_offset_ns, "clock_uncertainty_ns": info.clock_uncertainty_ns,
        "clock_at_ns": info.clock_at_ns, "clock_end": info.clock_end,
        "t_start_ns": int(session._t_start_ns), "t_end_ns": int(t_end_ns),
        "forwards": [(f.t_start_ns, f.t_end_ns, f.batch, f.new_positions, f.input_tokens, f.prefill) for f in forwards],
        "user_sections": [(u.name, u.t_start_ns, u.t_end_ns, u.parent) for u in session._user_sections],
        "baseline": session._baseline, "post_baseline": getattr(session, "_post_baseline", None),
        "nominal_period_s": session._sampler.interval_ns * 1e-9,
        "samples": np.asarray(samples), "sections": att.sections, "tokens": att.tokens,
        "input_tokens": int(att.summary["input_tokens"]), "output_tokens": int(att.summary["output_tokens"]),
        **calls,
    }
