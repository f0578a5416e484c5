"""One rank of a multi-rank test run (tests/test_distributed.py starts WORLD of these).

argv: rank world port db out_dir scenario.  Every rank joins a gloo process group on the
loopback, runs ``ep.run(..., distributed=...)`` around its scenario with its own synthetic
power (its ground truth) and writes what it saw itself to ``out_dir/rank<r>.json``.

Scenarios
---------
- ``same``: every rank 10 W, the same tiny-llama greedy generation (the issue's "must show").
- ``dp``: data parallel: rank r draws 10 * (r + 1) W and generates r + 2 tokens from its own
  prompt (every rank its own replica group).
- ``tp``: tensor parallel: a toy LM whose hidden layer is split over the ranks of a replica
  group (all_reduce inside forward); replica group = rank // 2; rank r draws 5 * (r + 1) W.
- ``die``: like ``dp``, but the last rank dies (os._exit) inside the block.
- ``sources``: an ``estimate`` run (host-wide), then an ``nvml`` run without ``index=``.
- ``long``: rank r draws 10 * (r + 1) W sampled every 0.25 ms for about a second (enough
  samples per rank for downsampling levels), around one forward of a small linear model.
"""
from __future__ import annotations

import datetime
import json
import os
import sys

import torch
import torch.distributed as dist

import energyprof as ep
from energyprof.tiny import tiny_model

rank, world, port, db, out, scenario = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
                                        sys.argv[5], sys.argv[6])
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                        timeout=datetime.timedelta(seconds=60))


class TPLM(torch.nn.Module):
    """A toy LM: embedding, a hidden layer split by columns over the group, all_reduce, logits."""

    def __init__(self, group, group_ranks, vocab=32, hidden=16, inner=8):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed = torch.nn.Parameter(torch.randn(vocab, hidden, generator=g))
        full_in = torch.randn(hidden, inner * len(group_ranks), generator=g)
        full_out = torch.randn(inner * len(group_ranks), hidden, generator=g)
        k = group_ranks.index(rank)
        self.w_in = torch.nn.Parameter(full_in[:, k * inner:(k + 1) * inner].clone())
        self.w_out = torch.nn.Parameter(full_out[k * inner:(k + 1) * inner].clone())
        self.head = torch.nn.Parameter(torch.randn(hidden, vocab, generator=g))
        self.group = group

    def forward(self, input_ids):
        h = self.embed[input_ids]
        part = torch.relu(h @ self.w_in) @ self.w_out
        dist.all_reduce(part, group=self.group)       # the shards' sum: the full layer
        return (h + part) @ self.head


def greedy(model, ids, n):
    for _ in range(n):
        nxt = model(ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


result = {"rank": rank}
if scenario == "same":
    model = tiny_model("tiny-llama")
    with ep.run(model, source="synthetic:power_w=10,period_ms=5", distributed="auto", db=db, baseline_s=0.05,
                mode="minimal") as s:
        model.generate(torch.tensor([[5, 6, 7, 8]]), max_new_tokens=6, do_sample=False)
elif scenario in ("dp", "die"):
    model = tiny_model("tiny-llama")
    with ep.run(model, source=f"synthetic:power_w={10 * (rank + 1)},period_ms=5", distributed="auto", db=db,
                baseline_s=0.05) as s:
        with s.section("generate"):
            model.generate(torch.tensor([[3 + rank, 4, 5]]), max_new_tokens=rank + 2, do_sample=False)
        if scenario == "die" and rank == world - 1:
            os._exit(7)                                 # dies mid-run: sends nothing
elif scenario == "tp":
    groups = [dist.new_group([a, a + 1]) for a in range(0, world, 2)]   # every rank creates every group
    mine = rank // 2
    model = TPLM(groups[mine], [2 * mine, 2 * mine + 1])
    with ep.run(model, source=f"synthetic:power_w={5 * (rank + 1)},period_ms=5",
                distributed={"replica_group": mine}, db=db, baseline_s=0.05) as s:
        ids = greedy(model, torch.tensor([[1, 2, 3]]), 4)
    result["ids"] = ids.tolist()
elif scenario == "sources":
    # a host-wide source (estimate: one reading per host) on the host leader only, then nvml
    # without index= on each rank's local device (the fake library exposes two GPUs)
    model = torch.nn.Linear(4, 4)
    with ep.run(model, source="estimate", distributed="auto", db=db, baseline_s=0, name="hostwide") as s:
        model(torch.zeros(2, 4))
    result["hostwide_samples"] = len(s._sampler.samples)
    with ep.run(model, source="nvml", distributed="auto", db=db, baseline_s=0, name="nvml") as s:
        model(torch.zeros(2, 4))
    result["nvml_spec"] = s._source.spec
elif scenario == "long":
    import time

    model = torch.nn.Linear(4, 4)
    with ep.run(model, source=f"synthetic:power_w={10 * (rank + 1)},period_ms=0.25", distributed="auto", db=db,
                baseline_s=0) as s:
        model(torch.zeros(2, 4))
        time.sleep(1.0)
else:
    raise SystemExit(f"unknown scenario {scenario}")

summ = s.summary()
result.update({"run_id": s.run_id, "energy_j": summ["energy_j"], "duration_s": summ["duration_s"],
               "output_tokens": summ["output_tokens"], "input_tokens": summ["input_tokens"],
               "status": summ["status"], "distributed": summ.get("distributed")})
if rank != 0:   # this rank's own view (its Session keeps its own rows)
    result["clock"] = [s._dist.clock_offset_ns, s._dist.clock_uncertainty_ns]
    result["clock_end"] = list(s._dist.clock_end) if s._dist.clock_end else None
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump(result, f)
dist.destroy_process_group()
