"""generate() slowdown under ep.run (sampler + C hooks + attribution), per mode.

For a tiny Llama (2 layers x 64) and a 12-layer hidden-768 Llama, times
``model.generate`` alone and inside ``ep.run(model, mode=..., sync="none",
baseline_s=0, save=False)`` with the synthetic source sampling every 10 ms.  The
variants are interleaved in random order in every round and compared by their
medians, so they share one machine state (this machine is shared and noisy: only
the ratios of one run mean anything).  The time inside the ``with`` block is what
the user's model sees; the attribution after the block is reported separately.
Both wall time and process CPU time (all threads: the model's, the sampler's, the
drain thread's) are reported; on a loaded machine the CPU time is the steadier one.

Goals (issue 4): minimal < 1 %, standard < 3 % on the 12 x 768 model.

    python benchmarks/run_overhead.py [--rounds N] [--write]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import torch

import energyprof as ep
from energyprof.tiny import tiny_model

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "benchmarks", "run_overhead.md")


def measure(model, ids, new_tokens: int, rounds: int, method: str):
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    variants = ["none", "minimal", "standard"]
    gen_s = {v: [] for v in variants}
    cpu_s = {v: [] for v in variants}
    finish_s = {v: [] for v in variants}
    with torch.inference_mode():
        model.generate(ids, **kw)  # warm-up
        for _ in range(rounds):
            for v in random.sample(variants, len(variants)):
                if v == "none":
                    c0, t0 = time.process_time(), time.perf_counter()
                    model.generate(ids, **kw)
                    gen_s[v].append(time.perf_counter() - t0)
                    cpu_s[v].append(time.process_time() - c0)
                    continue
                s = ep.run(model, source="synthetic:power_w=10,period_ms=10", mode=v, sync="none", baseline_s=0,
                           save=False, hook_method=method)
                s.__enter__()
                c0, t0 = time.process_time(), time.perf_counter()
                model.generate(ids, **kw)
                t1, c1 = time.perf_counter(), time.process_time()
                s.__exit__(None, None, None)
                gen_s[v].append(t1 - t0)
                cpu_s[v].append(c1 - c0)
                finish_s[v].append(time.perf_counter() - t1)
    base = statistics.median(gen_s["none"])
    cbase = statistics.median(cpu_s["none"])
    rows = []
    for v in ("minimal", "standard"):
        med = statistics.median(gen_s[v])
        cmed = statistics.median(cpu_s[v])
        rows.append((v, base, med, 100.0 * (med - base) / base, 100.0 * (cmed - cbase) / cbase,
                     statistics.median(finish_s[v])))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--method", default="wrap", choices=["wrap", "hooks"])
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args(argv)
    random.seed(0)
    torch.set_num_threads(1)
    lines = ["# generate() slowdown under ep.run", "",
             f"`python benchmarks/run_overhead.py --rounds {args.rounds} --method {args.method}`; "
             f"torch threads = 1, {args.new_tokens} new tokens, prompt 16 tokens, synthetic source at 10 ms, "
             "sync none. Medians over interleaved rounds; the slowdown is the ratio of medians measured in one run.",
             "", "| model | mode | generate alone s (wall) | inside ep.run s (wall) | wall slowdown % | CPU-time slowdown % "
             "| attribution after the block s |",
             "|---|---|---|---|---|---|---|"]
    for label, kw, rounds in (("tiny llama 2x64", {}, args.rounds * 3),
                              ("llama 12x768", dict(n_layers=12, hidden_size=768, n_heads=12, n_kv_heads=12,
                                                    intermediate_size=3072), args.rounds)):
        model = tiny_model("tiny-llama", **kw)
        ids = torch.randint(3, 300, (1, 16), generator=torch.Generator().manual_seed(0))
        for mode, base, med, pct, cpct, fin in measure(model, ids, args.new_tokens, rounds, args.method):
            line = f"| {label} | {mode} | {base:.4f} | {med:.4f} | {pct:+.2f} | {cpct:+.2f} | {fin:.4f} |"
            print(line, flush=True)
            lines.append(line)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        with open(DOC, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
