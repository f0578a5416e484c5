"""generate() slowdown of mode="deep" against mode="standard", side by side in one run.

Variants, each timed in every round (order shuffled per round, medians over rounds):

  none        model.generate() alone (sdpa attention, as the model was loaded)
  standard    inside ep.run(mode="standard")
  standard_eager  mode="standard" with the model switched to eager attention for the run:
              the part of deep's cost that is op-by-op attention instead of sdpa
  deep        inside ep.run(mode="deep"): energyprof's attention function through
              transformers' AttentionInterface, MLP/norm op spans, head statistics
  deep_nostats  mode="deep" with ``energyprof.measure.deep.STATISTICS = False``: op spans and the
              activation statistics of the hooked modules (no head / kill / variance statistics)
  deep_spans  mode="deep" with ``STATISTICS = False`` and ``ACTIVATION_STATISTICS = False``: op spans only
  deep_patch  mode="deep", but attention reached the monkey-patch way: the config set to
              "eager" and the modeling module's ``eager_attention_forward`` global replaced
              by the same function (docs/methodology.md compares the two approaches)
  deep_every4 mode="deep", stats_every=4: statistics on every 4th call of each module

The remaining cost of deep over standard is split into parts by differences of medians:
eager attention (standard_eager - standard), the op spans (deep_spans - standard_eager),
the activation statistics (deep_nostats - deep_spans), the head / kill / variance statistics
(deep - deep_nostats).  The headline is deep / standard on the 8x512
Llama, a ratio of medians with its 95 % bootstrap interval over the rounds (goal <= 1.25).

Reported per model: median wall time and median CPU time of the calling thread (on a
shared machine the thread's CPU time is the steadier measure of the Python work a
variant adds; the sampler and live threads are not counted in it), and the slowdown of
deep against standard as a ratio of medians.  Also the share of the op time that is
energyprof's own statistics work (the ``*.stats`` op rows).

Usage: python benchmarks/deep_overhead.py [--rounds R] [--tokens N] [--write]
(--write puts the output into docs/benchmarks/deep_overhead.md).
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import add_write_arg, fmt_ci, headline, ratio_of_medians, save, verdict, verdict_text  # noqa: E402
import energyprof as ep  # noqa: E402
from energyprof.measure import deep  # noqa: E402
from energyprof.tiny import tiny_model  # noqa: E402

VARIANTS = ("none", "standard", "standard_eager", "deep", "deep_nostats", "deep_spans", "deep_patch", "deep_every4")
JUDGED = "llama 8x512"
GOAL = 1.25
SOURCE = "synthetic:power_w=10,period_ms=10"

MODELS = {
    "tiny llama 2x64": dict(name="tiny-llama"),
    "llama 8x512": dict(name="tiny-llama", n_layers=8, hidden_size=512, n_heads=8, n_kv_heads=4,
                        intermediate_size=1408),
}


def _time_variant(model, variant: str, ids, n_new: int):
    kw = dict(max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False)
    t0w, t0c = time.perf_counter(), time.thread_time()
    s = None
    if variant == "none":
        with torch.no_grad():
            model.generate(ids, **kw)
    elif variant in ("standard", "deep"):
        with ep.run(model, source=SOURCE, mode=variant, baseline_s=0, save=False) as s:
            with torch.no_grad():
                model.generate(ids, **kw)
    elif variant == "deep_every4":
        with ep.run(model, source=SOURCE, mode="deep", baseline_s=0, save=False, stats_every=4) as s:
            with torch.no_grad():
                model.generate(ids, **kw)
    elif variant == "standard_eager":
        with ep.run(model, source=SOURCE, mode="standard", baseline_s=0, save=False) as s:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.set_attn_implementation("eager")
            try:
                with torch.no_grad():
                    model.generate(ids, **kw)
            finally:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model.set_attn_implementation("sdpa")
    elif variant in ("deep_nostats", "deep_spans"):
        deep.STATISTICS = False
        deep.ACTIVATION_STATISTICS = variant == "deep_nostats"
        try:
            with ep.run(model, source=SOURCE, mode="deep", baseline_s=0, save=False) as s:
                with torch.no_grad():
                    model.generate(ids, **kw)
        finally:
            deep.STATISTICS = deep.ACTIVATION_STATISTICS = True
    else:
        import transformers.models.llama.modeling_llama as ml

        original = ml.eager_attention_forward
        with ep.run(model, source=SOURCE, mode="deep", baseline_s=0, save=False) as s:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.set_attn_implementation("eager")
            ml.eager_attention_forward = deep.attention_forward
            try:
                with torch.no_grad():
                    model.generate(ids, **kw)
            finally:
                ml.eager_attention_forward = original
    return time.perf_counter() - t0w, time.thread_time() - t0c, s


def run(rounds: int, n_new: int, prompt_len: int) -> str:
    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]
    lines = [
        "# generate() slowdown of mode=\"deep\" vs \"standard\"",
        "",
        f"`python benchmarks/deep_overhead.py --rounds {rounds} --tokens {n_new}`; torch threads = 1, "
        f"prompt {prompt_len} tokens, {n_new} new tokens, source `{SOURCE}`, sync none, "
        f"{platform.machine()} {platform.system()}, torch {torch.__version__}. Medians over {rounds} interleaved "
        "rounds (order shuffled per round); slowdowns are ratios of medians measured in this one run. "
        "CPU s = CPU time of the thread calling generate().",
        "",
        "| model | variant | wall s | CPU s | wall vs standard % | CPU vs standard % |",
        "|---|---|---|---|---|---|",
    ]
    notes = []
    heads = []
    for label, spec in MODELS.items():
        spec = dict(spec)
        name = spec.pop("name")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = tiny_model(name, **spec)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(3, 300, (1, prompt_len), generator=g)
        for v in VARIANTS:   # warm-up
            _time_variant(model, v, ids, 2)
        wall = {v: [] for v in VARIANTS}
        cpu = {v: [] for v in VARIANTS}
        last_deep = None
        for _ in range(rounds):
            order = list(VARIANTS)
            random.shuffle(order)
            for v in order:
                w, c, s = _time_variant(model, v, ids, n_new)
                wall[v].append(w)
                cpu[v].append(c)
                if v == "deep":
                    last_deep = s
        mw = {v: statistics.median(wall[v]) for v in VARIANTS}
        mc = {v: statistics.median(cpu[v]) for v in VARIANTS}
        for v in VARIANTS:
            dw = "" if v == "none" else f"{(mw[v] / mw['standard'] - 1) * 100:+.1f}"
            dc = "" if v == "none" else f"{(mc[v] / mc['standard'] - 1) * 100:+.1f}"
            lines.append(f"| {label} | {v} | {mw[v]:.4f} | {mc[v]:.4f} | {dw} | {dc} |")
        ops = last_deep.ops
        stats = np.char.endswith(ops["component"].astype(str), ".stats")
        share = ops["duration_s"][stats].sum() / ops["duration_s"].sum() if len(ops) else float("nan")
        attn = last_deep.components[last_deep.components["component"] == "attn"]["duration_s"].sum()
        attn_stats = ops["duration_s"][ops["component"] == "attn.stats"].sum()
        r = ratio_of_medians(wall["deep"], wall["standard"])
        r4 = ratio_of_medians(wall["deep_every4"], wall["standard"])
        rc = ratio_of_medians(cpu["deep"], cpu["standard"])
        rc4 = ratio_of_medians(cpu["deep_every4"], cpu["standard"])
        cstd = mc["standard"]
        cparts = {
            "eager attention": mc["standard_eager"] - cstd,
            "op spans": mc["deep_spans"] - mc["standard_eager"],
            "activation statistics": mc["deep_nostats"] - mc["deep_spans"],
            "head / kill / variance statistics": mc["deep"] - mc["deep_nostats"],
        }
        std = mw["standard"]
        parts = {
            "eager attention (standard_eager - standard)": mw["standard_eager"] - std,
            "op spans (deep_spans - standard_eager)": mw["deep_spans"] - mw["standard_eager"],
            "activation statistics (deep_nostats - deep_spans)": mw["deep_nostats"] - mw["deep_spans"],
            "head / kill / variance statistics (deep - deep_nostats)": mw["deep"] - mw["deep_nostats"],
        }
        notes.append(f"- {label}: **deep / standard wall {fmt_ci(r)}**; with stats_every=4 {fmt_ci(r4)}. "
                     "Remaining cost per part, % of standard's wall time: " +
                     "; ".join(f"{k} {v / std * 100:+.1f} %" for k, v in parts.items()) + ".")
        notes.append(f"- {label}: deep / standard CPU time of the calling thread {fmt_ci(rc)} (the steadier "
                     f"measure when the machine is loaded); stats_every=4 {fmt_ci(rc4)}. Per part, % of standard's "
                     "CPU time: " + "; ".join(f"{k} {v / cstd * 100:+.1f} %" for k, v in cparts.items()) + ".")
        if label == JUDGED:
            v = verdict(r, GOAL, False)
            heads.append(headline(f"generate() wall time, mode=\"deep\" / \"standard\", {label} Llama, {n_new} new "
                                  "tokens, interleaved rounds", f"<= {GOAL}x", fmt_ci(r, unit="x"), v))
            vc = verdict(rc, GOAL, False)
            heads.append(headline(f"the same in CPU time of the thread calling generate(), {label}",
                                  f"<= {GOAL}x", fmt_ci(rc, unit="x"), vc))
            heads.append(headline(f"the same with stats_every=4 (statistics on every 4th call), {label}",
                                  "measured and stated", fmt_ci(r4, unit="x"), None))
            notes.append(f"- goal deep / standard <= {GOAL} on the {label} Llama: {verdict_text(v)}.")
        notes.append(f"- {label}: deep/standard wall ratio {mw['deep'] / mw['standard']:.3f}, CPU ratio "
                     f"{mc['deep'] / mc['standard']:.3f}; interface/patch wall ratio "
                     f"{mw['deep'] / mw['deep_patch']:.3f}; without statistics deep/standard CPU ratio "
                     f"{mc['deep_nostats'] / mc['standard']:.3f}. Statistics ops (`*.stats`) take "
                     f"{share * 100:.1f}% of the op time; `attn.stats` is {attn_stats / attn * 100:.1f}% of the "
                     f"attention time.")
    notes.append(f"- machine load (1-minute load average, {os.cpu_count()} CPUs): {load_start:.2f} at the start, "
                 f"{os.getloadavg()[0]:.2f} at the end; other work on a shared machine lengthens the wall times, so "
                 "the CPU-time ratios are given beside them.")
    lines += ["", *notes, "", *heads, ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)  # 7 left intervals wider than the goal margin on this shared machine
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=32)
    add_write_arg(ap, "deep_overhead")
    a = ap.parse_args()
    out = run(a.rounds, a.tokens, a.prompt)
    print(out)
    if a.write:
        save("deep_overhead", out)


if __name__ == "__main__":
    main()
