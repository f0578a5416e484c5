"""Assemble docs/benchmarks.md from the latest output of each benchmark
(docs/benchmarks/<name>.md, saved by each script run with --write, as `make bench` does;
without --write a script only prints).

    python benchmarks/collect.py

The summary table is read from those pages, never typed here: every line of the form

    <!-- headline {"what": ..., "goal": ..., "result": ..., "met": true|false|null} -->

in a page becomes one row, in page order (benchmarks/_report.py makes such lines with
``headline(what, goal, result, met)``; see its docstring).  To plug a benchmark in:
print that line, save the output with ``_report.save(<name>, text)`` under ``--write``
(``_report.add_write_arg``) and add <name> to PARTS below.  A page
without a headline line gets a row that says so; a goal missed on fair terms shows
"NOT met" in the table.
"""
from pathlib import Path

from _report import parse_headlines, strip_headlines, verdict_text

ROOT = Path(__file__).parents[1]
PARTS = ["sampler", "plist_parse", "integrate", "hook_overhead", "run_overhead", "deep_overhead", "long_run",
         "sqlite_writer", "serve", "boundary_reads"]

HEADER = """# Benchmarks

Every figure here is a **ratio measured side by side in one run** of a script in
`benchmarks/` (this machine is shared and noisy; absolute times are not comparable
between runs), with its spread over the rounds where the script reports one (a 95 %
bootstrap interval of the ratio of medians, rounds resampled).  Each section below is the
latest output of its script, saved in `docs/benchmarks/<name>.md` by running it with
`--write` (every script has that one switch; `make bench` runs them all so); the table is
read from the `headline` lines of those pages by `python benchmarks/collect.py`, which
rebuilds this page.  Where a goal is missed on fair terms the table says **NOT met**.
All numbers were taken on the development machine: x86_64 Linux, 2 shared CPU cores,
Python 3.11.7, torch 2.13.0+cpu, no GPU.  That machine is not always the same one (the
sessions of 2026-12-04 ran on an Intel Xeon, earlier ones on an AMD EPYC): a section's ratios
were measured side by side in one run on one machine, and pages that print their machine say
which.

| what | script | goal | result | goal met |
|---|---|---|---|---|
{rows}

{missed}

**Real hardware.** No session so far has been lent a GPU machine, there is no RAPL
powercap tree in this container and no Mac. So NVML, RAPL, powermetrics and IOReport have
run only against their fakes (a fake `libnvidia-ml.so.1` built by the tests, fake sysfs
trees, fake powermetrics executables streaming real captures, fake CoreFoundation/IOReport
libraries). The checks that need the hardware are written and skip, with their reason,
where it is absent: `tests/test_nvml.py::test_real_nvml_reads_the_gpu` and
`::test_real_nvml_energy_counter_agrees_with_its_power_readings_under_load`,
`tests/test_torchshim.py::test_cuda_sync_on_a_real_gpu`; their results go here the first
time a session runs them on a GPU.
"""


def _met(m) -> str:
    t = verdict_text(m) if m in (True, False, None, "unclear") else str(m)
    return f"**{t}**" if m is False else t


def main() -> None:
    rows, sections, missed, unclear = [], [], [], []
    for name in PARTS:
        p = ROOT / "docs" / "benchmarks" / f"{name}.md"
        script = f"`benchmarks/{name}.py`"
        if not p.exists():
            rows.append(f"| {name} | {script} | | no output yet: run the script | |")
            continue
        text = p.read_text()
        heads = parse_headlines(text)
        if not heads:
            rows.append(f"| {name} | {script} | | no headline line in docs/benchmarks/{name}.md "
                        "(see benchmarks/_report.py); its page is below | |")
        for h in heads:
            if h["met"] is False:
                missed.append(f"{h['what']} ({h['result']}; goal {h['goal']})")
            elif h["met"] == "unclear":
                unclear.append(f"{h['what']} ({h['result']}; goal {h['goal']})")
            rows.append(f"| {h['what']} | {script} | {h['goal']} | {h['result']} | {_met(h['met'])} |")
        lines = strip_headlines(text).strip().splitlines()
        if lines and lines[0].startswith("# "):
            lines[0] = "## " + lines[0][2:]       # one level down inside this page
        sections.append("\n".join(l if not l.startswith("# ") else "#" + l for l in lines))
    notes = []
    if missed:
        notes.append("**Goals missed on fair terms:** " + "; ".join(missed) + ".")
    if unclear:
        notes.append("**Met on the point estimate only** (the 95 % interval reaches past the goal): "
                     + "; ".join(unclear) + ".")
    out = [HEADER.format(rows="\n".join(rows), missed="\n\n".join(notes) or "Every goal is met.")] + sections
    (ROOT / "docs" / "benchmarks.md").write_text("\n\n".join(out) + "\n")
    print("wrote", ROOT / "docs" / "benchmarks.md")


if __name__ == "__main__":
    main()
