"""Assemble docs/benchmarks.md from the summary below and the latest output of each
benchmark (docs/benchmarks/<name>.md, written by each script's --write / default run).

    python benchmarks/collect.py
"""
from pathlib import Path

ROOT = Path(__file__).parents[1]
PARTS = ["sampler", "plist_parse", "integrate", "hook_overhead", "run_overhead", "deep_overhead", "sqlite_writer", "serve"]

HEADER = """# Benchmarks

Every figure here is a **ratio measured side by side in one run** of a script in
`benchmarks/` (this machine is shared and noisy; absolute times are not comparable
between runs). Each section below is the latest output of its script, kept in
`docs/benchmarks/<name>.md`; `python benchmarks/collect.py` rebuilds this page.
All numbers were taken on the development machine: x86_64 Linux, 2 shared CPU cores,
Python 3.11.7, torch 2.13.0+cpu, no GPU.

| what | script | goal | result |
|---|---|---|---|
{rows}

**Real hardware.** No session so far has been lent a GPU machine (the `device` tool's
status said so for this task), there is no RAPL powercap tree in this container and no
Mac. So NVML, RAPL, powermetrics and IOReport have run only against their fakes (a fake
`libnvidia-ml.so.1` built by the tests, fake sysfs trees, fake powermetrics executables
streaming real captures, fake CoreFoundation/IOReport libraries). `tests/test_nvml.py::
test_real_nvml_reads_or_fails_cleanly` reads a real GPU when one is present; its result
goes here the first time a session runs it on one.
"""

SUMMARY = [
    ("sampler thread at 1 kHz for 10 s: dropped samples, CPU", "sampler.py", "0 dropped",
     "0 dropped; 3.0 % of one core, the same as a Python thread doing the same polling (1.0x: the kernel's wake-up per tick dominates both)"),
    ("powermetrics plist parse vs plistlib", "plist_parse.py", ">= 5x", "33.8x (4.4x if libplist builds the whole tree)"),
    ("integrator: 10M samples x 1M windows", "integrate.py", "< 1 s", "0.77 s wall; 12x faster than the numpy twin"),
    ("hooked module call: energyprof added cost / empty Python hook pair", "hook_overhead.py", "<= 0.2",
     "0.08 with the C forward wrapper (ep.run's default); 1.08 with torch hooks (torch's own dispatch dominates)"),
    ("generate() slowdown inside ep.run, 12-layer 768 Llama", "run_overhead.py", "minimal < 1 %, standard < 3 %",
     "minimal +0.57 %, standard +1.01 % wall (+0.77 % / +1.32 % CPU time); met"),
    ("deep vs standard mode, 8-layer 512 Llama", "deep_overhead.py", "measured and stated",
     "+90 % (+70 % without the statistics); eager attention alone +5 %"),
    ("C SQLite writer vs executemany, 1M samples", "sqlite_writer.py", ">= 500K rows/s and >= 3x",
     "1.63M rows/s, 3.31x (streaming in 100 batches: 3.11x)"),
    ("dashboard: runs list of 10,000 runs; samples API of a 3.6M-sample run", "serve.py", "< 300 ms; < 1 s",
     "32.5 ms (0.34x a full read of the runs table); 146 ms (0.023x a full read of the samples); met"),
]


def main() -> None:
    rows = "\n".join(f"| {w} | `benchmarks/{s}` | {g} | {r} |" for w, s, g, r in SUMMARY)
    out = [HEADER.format(rows=rows)]
    for name in PARTS:
        p = ROOT / "docs" / "benchmarks" / f"{name}.md"
        if not p.exists():
            continue
        text = p.read_text().strip()
        lines = text.splitlines()
        if lines and lines[0].startswith("# "):
            lines[0] = "## " + lines[0][2:]       # one level down inside this page
        out.append("\n".join(l.replace("\n# ", "\n## ") for l in lines))
    (ROOT / "docs" / "benchmarks.md").write_text("\n\n".join(out) + "\n")
    print("wrote", ROOT / "docs" / "benchmarks.md")


if __name__ == "__main__":
    main()
