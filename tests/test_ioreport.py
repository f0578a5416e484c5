"""The ioreport source's snapshot-delta math (csrc/kernels/ep_ioreport.c), on Linux.

The live IOReport reader is macOS-only; here the platform-independent part is
held to its pure-Python twin (energyprof._reference.ioreport_delta) on random
snapshots, and to hand-computed values on snapshots built from the channel
names of real chips (M1 Max, M3 Pro, M5, Ultra).
"""
import math
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from energyprof import _core
from energyprof import _reference as ref

SEC = 1_000_000_000

# Channel names of the "Energy Model" group on an M1 Max (macOS 15), from a public
# channel listing; the values below are constructed, not recorded.
M1_MAX = (
    [("PCIe Port 0 Energy", "uJ"), ("PCIe Port 1 Energy", "uJ"), ("apciec0 Energy", "uJ"),
     ("apciec1 Energy", "uJ"), ("apciec2 Energy", "uJ")]
    + [(n, "mJ") for n in ["EACC_CPU0", "EACC_CPU1", "PACC0_CPU0", "PACC0_CPU1", "PACC0_CPU2", "PACC0_CPU3",
                           "PACC1_CPU0", "PACC1_CPU1", "PACC1_CPU2", "PACC1_CPU3", "EACC_CPM", "PACC0_CPM",
                           "PACC1_CPM", "EACC_CPU", "PACC0_CPU", "PACC1_CPU", "CPU Energy"]]
    + [(f"ECPUDTL{c}{k}", "mJ") for c in "01" for k in range(5)]
    + [(f"{p}DTL{c}{k:x}", "mJ") for p in ("PCPU", "PCPU1") for c in "0123" for k in range(15)]
    + [(n, "mJ") for n in ["GPU0", "GPU SRAM0", "ANE0", "ISP0", "AVE0", "MSR0", "DCS0", "DRAM0", "AMCC0"]]
    + [("GPU Energy", "nJ")]
)


def snapshot(names_units, values):
    return [(n, u, values.get(n, 0)) for n, u in names_units]


def test_m1_max_channel_list_maps_without_faults():
    assert len(M1_MAX) == 162
    a = snapshot(M1_MAX, {"CPU Energy": 10_000, "GPU Energy": 5_000_000_000, "ANE0": 7, "DRAM0": 300})
    # Cluster and core channels move too: they must not be added to the total.
    b = snapshot(M1_MAX, {"CPU Energy": 13_000, "GPU Energy": 7_500_000_000, "ANE0": 7, "DRAM0": 700,
                          "EACC_CPU": 1_000, "PACC0_CPU": 2_000, "PACC0_CPU0": 1_500, "GPU0": 2_000,
                          "GPU SRAM0": 50, "ISP0": 3, "PCIe Port 0 Energy": 999})
    r = _core.ioreport_delta(a, b, 2 * SEC)
    assert r["faults"] == 0 and r["flags"] == 0 and r["message"] == ""
    assert r["power_w"]["cpu"] == pytest.approx(3.0 / 2, rel=1e-15)       # 3000 mJ over 2 s
    assert r["power_w"]["gpu"] == pytest.approx(2.5 / 2, rel=1e-15)       # 2.5e9 nJ
    assert r["power_w"]["ane"] == 0.0
    assert r["power_w"]["dram"] == pytest.approx(0.4 / 2, rel=1e-15)
    assert math.isnan(r["power_w"]["package"])
    unknown = [n for n, _ in M1_MAX if _core.ioreport_classify(n) == "unknown"]
    assert unknown == []


def test_units_are_converted_per_channel():
    a = [("CPU Energy", "mJ", 0), ("GPU Energy", "nJ", 0), ("ANE", "uJ", 0), ("DRAM", "\u00b5J", 0)]
    b = [("CPU Energy", "mJ", 1), ("GPU Energy", "nJ", 1), ("ANE", "uJ", 1), ("DRAM", "\u00b5J", 1)]
    r = _core.ioreport_delta(a, b, SEC)
    assert [r["power_w"][d] for d in ("cpu", "gpu", "ane", "dram")] == [1e-3, 1e-9, 1e-6, 1e-6]


def test_ultra_sums_dies_and_ane_variants():
    a = [("DIE_0_CPU Energy", "mJ", 0), ("DIE_1_CPU Energy", "mJ", 0), ("DIE_0_EACC_CPU", "mJ", 0),
         ("ANE0_0", "mJ", 0), ("ANE0_1", "mJ", 0), ("GPU Energy", "nJ", 0)]
    b = [("DIE_0_CPU Energy", "mJ", 100), ("DIE_1_CPU Energy", "mJ", 300), ("DIE_0_EACC_CPU", "mJ", 50),
         ("ANE0_0", "mJ", 20), ("ANE0_1", "mJ", 30), ("GPU Energy", "nJ", 10**8)]
    r = _core.ioreport_delta(a, b, SEC // 2)
    assert r["faults"] == 0
    assert r["power_w"]["cpu"] == pytest.approx(0.8)
    assert r["power_w"]["ane"] == pytest.approx(0.1)
    assert r["power_w"]["gpu"] == pytest.approx(0.2)


def test_clusters_used_only_without_a_total():
    # M5-style names: MCPU<n> clusters, MCPU<n>_<m> cores, PACC_<n> cores, PCPU cluster.
    names = [("MCPU0", "mJ"), ("MCPU0_0", "mJ"), ("MCPU0_1", "mJ"), ("PCPU", "mJ"), ("PACC_0", "mJ"),
             ("MCPM0", "mJ"), ("GPU Energy", "nJ")]
    a = snapshot(names, {})
    b = snapshot(names, {"MCPU0": 400, "MCPU0_0": 300, "MCPU0_1": 100, "PCPU": 600, "PACC_0": 600, "MCPM0": 9,
                         "GPU Energy": 10})
    r = _core.ioreport_delta(a, b, SEC)
    assert r["faults"] == 0
    assert r["power_w"]["cpu"] == pytest.approx(1.0)


@pytest.mark.parametrize("case, faults, nan_domains", [
    ("backwards", ["backwards"], ["gpu"]),
    ("vanished", ["channels"], ["dram"]),
    ("appeared", ["channels"], ["dram"]),
    ("unit", ["unit"], ["cpu"]),
    ("unit_changed", ["unit"], ["gpu"]),
    ("unknown", ["unknown"], []),
    ("stuck", ["stuck_zero"], []),
])
def test_faults_are_flagged_not_used(case, faults, nan_domains):
    a = [("CPU Energy", "mJ", 1000), ("GPU Energy", "nJ", 10**9), ("DRAM0", "mJ", 50), ("ANE", "mJ", 0)]
    b = [("CPU Energy", "mJ", 2000), ("GPU Energy", "nJ", 2 * 10**9), ("DRAM0", "mJ", 80), ("ANE", "mJ", 0)]
    if case == "backwards":
        b[1] = ("GPU Energy", "nJ", 10**9 - 1)
    elif case == "vanished":
        del b[2]
    elif case == "appeared":
        b.append(("DRAM1", "mJ", 5))
    elif case == "unit":
        a[0] = ("CPU Energy", "J", 1)
        b[0] = ("CPU Energy", "J", 2)
    elif case == "unit_changed":
        b[1] = ("GPU Energy", "uJ", 2 * 10**6)
    elif case == "unknown":
        b.append(("GPU Energy (new)", "mJ", 3))
    elif case == "stuck":
        b[0] = ("CPU Energy", "mJ", 1000)
    r = _core.ioreport_delta(a, b, SEC)
    assert r["fault_names"] == faults
    assert r["flags"] == _core.SFLAG_SUSPECT
    assert sorted(d for d, w in r["power_w"].items() if math.isnan(w) and d != "package") == sorted(nan_domains)
    if case == "unknown":
        assert "GPU Energy (new)" in r["message"]
        assert r["power_w"]["gpu"] == pytest.approx(1.0)  # the known channel is still used
    if case == "stuck":
        assert r["power_w"]["cpu"] == 0.0 and "cpu" in r["message"]
    if case == "backwards":
        assert "GPU Energy" in r["message"]


def test_alternating_zero_and_double_readings_flagged():
    h = _core.IOReportHistory()
    cum = 0
    seen = []
    prev = [("CPU Energy", "mJ", 0), ("ANE", "mJ", 0)]
    for k in range(8):
        cum += 0 if k % 2 == 0 else 200          # 0, 200, 0, 200, ...: the "0 then double" pattern
        cur = [("CPU Energy", "mJ", 100 * (k + 1)), ("ANE", "mJ", cum)]
        r = _core.ioreport_delta(prev, cur, SEC, history=h)
        seen.append("alternating" in r["fault_names"])
        prev = cur
    assert seen == [False, False, False, True, True, True, True, True]
    # A steady ANE (always 0, or always moving) is never flagged.
    h = _core.IOReportHistory()
    prev = [("ANE", "mJ", 0)]
    for k in range(6):
        cur = [("ANE", "mJ", 10 * (k + 1))]
        assert _core.ioreport_delta(prev, cur, SEC, history=h)["faults"] == 0
        prev = cur


def test_bad_arguments():
    with pytest.raises(ValueError, match="dt_ns"):
        _core.ioreport_delta([], [], 0)
    with pytest.raises(TypeError):
        _core.ioreport_delta([("CPU Energy", "mJ")], [], 1)
    with pytest.raises(ValueError, match="name must be"):
        _core.ioreport_delta([("x" * 100, "mJ", 1)], [], 1)
    with pytest.raises(TypeError, match="history"):
        _core.ioreport_delta([], [], 1, history=object())


def test_source_is_macos_only_elsewhere():
    if sys.platform == "darwin":
        pytest.skip("this is macOS: see test_source_opens_on_a_mac")
    with pytest.raises(NotImplementedError, match="macOS only"):
        _core.SourceDriver("ioreport")
    with pytest.raises(ValueError, match="takes none"):
        _core.SourceDriver("ioreport", {"x": "1"})


def test_source_opens_on_a_mac():
    """On a Mac it opens (Apple Silicon) or says why not (Intel Mac, VM)."""
    if sys.platform != "darwin":
        pytest.skip(f"macOS only: this is {sys.platform}, there is no IOReport")
    try:
        assert _core.SourceDriver("ioreport").kind == "ioreport"
    except (NotImplementedError, FileNotFoundError, RuntimeError) as e:
        assert "ioreport" in str(e)
    with pytest.raises(ValueError, match="takes none"):
        _core.SourceDriver("ioreport", {"x": "1"})


# ---- the C function against its twin, on random snapshots ----------------------

NAME_POOL = ["CPU Energy", "DIE_0_CPU Energy", "DIE_1_CPU Energy", "GPU Energy", "ANE", "ANE0", "ANE0_1",
             "DRAM", "DRAM0", "ECPU", "PCPU", "EACC_CPU", "PACC0_CPU", "MCPU0", "MCPU1_2", "ECPU0", "PACC0_CPU3",
             "PACC_1", "GPU0", "GPU SRAM0", "ANE0_SRAM", "ECPM", "PCPUDTL0a", "ISP0", "AMCC0", "MYSTERY_CPU",
             "GPU Energy 2", "ANEX", "MCPUZ"]
UNITS = ["mJ", "uJ", "nJ", "\u00b5J", "J"]


@st.composite
def snapshot_pair(draw):
    names = draw(st.lists(st.sampled_from(NAME_POOL), unique=True, max_size=10))
    a, b = [], []
    for n in names:
        unit_a = draw(st.sampled_from(UNITS[:3])) if draw(st.integers(0, 9)) else draw(st.sampled_from(UNITS))
        unit_b = unit_a if draw(st.integers(0, 9)) else draw(st.sampled_from(UNITS))
        va = draw(st.integers(0, 2**50))
        step = draw(st.sampled_from([0, 0, 1, 10**3, 10**6, 10**9])) * draw(st.integers(0, 5000))
        vb = va + step if draw(st.integers(0, 15)) else max(0, va - draw(st.integers(1, 100)))
        where = draw(st.integers(0, 12))
        if where != 1:
            a.append((n, unit_a, va))
        if where != 2:
            b.append((n, unit_b, vb))
    b = draw(st.permutations(b))
    return a, b


def same(x, y):
    return (math.isnan(x) and math.isnan(y)) or x == y


@settings(max_examples=300, deadline=None)
@given(pairs=st.lists(snapshot_pair(), min_size=1, max_size=6), dt_ns=st.integers(1, 10**11))
def test_matches_python_twin(pairs, dt_ns):
    h_c, h_py = _core.IOReportHistory(), ref.IOReportHistory()
    for a, b in pairs:
        got = _core.ioreport_delta(a, b, dt_ns, history=h_c)
        want = ref.ioreport_delta(a, b, dt_ns, history=h_py)
        assert got["faults"] == want["faults"] and got["fault_names"] == want["fault_names"]
        assert got["flags"] == want["flags"]
        for d in want["power_w"]:
            assert same(got["power_w"][d], want["power_w"][d]), (d, got, want)


@given(st.sampled_from(NAME_POOL) | st.text(alphabet="ACDEGMNPRSU_0123456789 ", max_size=14))
def test_classify_matches_twin(name):
    assert _core.ioreport_classify(name) == ref.ioreport_classify(name)


# ---- the macOS live reader, run on Linux against fake CoreFoundation/IOReport ----

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
FAKE_DIR = ROOT / "tests" / "fake_ioreport"


@pytest.fixture(scope="module")
def live_build(tmp_path_factory):
    """The live code compiled with -DEP_IOREPORT_COMPILE_LIVE into a driver program,
    plus the fake library pair (one .so exporting both APIs)."""
    import subprocess
    d = tmp_path_factory.mktemp("fake_ioreport")
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(d / "libfakeioreport.so"),
                    str(FAKE_DIR / "fake_ioreport.c")], check=True)
    subprocess.run(["gcc", "-std=c11", "-O1", "-D_GNU_SOURCE", "-DEP_IOREPORT_COMPILE_LIVE", f"-I{ROOT / 'csrc/kernels'}",
                    f"-I{ROOT / 'csrc/sources'}", str(FAKE_DIR / "drive.c"),
                    *(str(ROOT / "csrc" / f) for f in ("kernels/ep_ioreport.c", "sources/ep_src_ioreport.c",
                                                       "kernels/ep_errors.c", "kernels/ep_sample.c")),
                    "-ldl", "-lm", "-o", str(d / "drive")], check=True)
    return d


def drive(build, script_lines, *args, **env_extra):
    import os
    import subprocess
    script = build / "script.txt"
    script.write_text("\n".join(snap if isinstance(snap, str) else ";".join(f"{n}|{u}|{v}" for n, u, v in snap)
                                 for snap in script_lines) + "\n")
    env = {**os.environ, "ENERGYPROF_IOREPORT_LIB": str(build / "libfakeioreport.so"),
           "ENERGYPROF_COREFOUNDATION_LIB": str(build / "libfakeioreport.so"), "FAKE_IOREPORT_SCRIPT": str(script)}
    env.update(env_extra)
    r = subprocess.run([str(build / "drive"), *map(str, args)], capture_output=True, text=True, env=env, timeout=60)
    lines = r.stdout.splitlines()
    assert lines[-1] == "live_objects 0", r.stdout  # every CF object the reader created was released
    return r.returncode, lines[:-1]


SNAPS = [
    [("CPU Energy", " mJ ", 100), ("GPU Energy", "nJ", 0), ("ANE0", "mJ", 4), ("DRAM0", "mJ", 10), ("ISP0", "mJ", 0)],
    [("CPU Energy", " mJ ", 1100), ("GPU Energy", "nJ", 5 * 10**8), ("ANE0", "mJ", 4), ("DRAM0", "mJ", 60),
     ("ISP0", "mJ", 9)],
    [("CPU Energy", " mJ ", 2600), ("GPU Energy", "nJ", 9 * 10**8), ("ANE0", "mJ", 104), ("DRAM0", "mJ", 160),
     ("ISP0", "mJ", 9)],
]


def test_live_snapshots_read_names_trimmed_units_and_values(live_build):
    rc, lines = drive(live_build, SNAPS, "snapshot", 2)
    assert rc == 0
    assert lines == ["CPU Energy|mJ|100", "GPU Energy|nJ|0", "ANE0|mJ|4", "DRAM0|mJ|10", "ISP0|mJ|0", "--",
                     "CPU Energy|mJ|1100", "GPU Energy|nJ|500000000", "ANE0|mJ|4", "DRAM0|mJ|60", "ISP0|mJ|9", "--"]


def test_live_source_turns_snapshots_into_samples(live_build):
    rc, lines = drive(live_build, SNAPS, "source", SEC, 3 * SEC, 4 * SEC)
    assert rc == 0
    rows = [l.split() for l in lines[:2]]
    assert [r[:4] for r in rows] == [[str(SEC), str(3 * SEC), "1", "0"], [str(3 * SEC), str(4 * SEC), "1", "4"]]
    # The same snapshots through the twin give the expected powers.
    norm = [[(n, u.strip(), v) for n, u, v in s] for s in SNAPS]
    for row, (a, b, dt) in zip(rows, [(norm[0], norm[1], 2 * SEC), (norm[1], norm[2], SEC)]):
        want = ref.ioreport_delta(a, b, dt)["power_w"]
        got = dict(zip(("cpu", "gpu", "ane", "dram", "package"), map(float, row[4:])))
        for d in want:
            assert same(got[d], want[d]), (d, got, want)
    assert lines[2:] == ["faults 0", "message "]


def test_live_source_errors(live_build, tmp_path):
    rc, lines = drive(live_build, SNAPS, "source", SEC, 2 * SEC, FAKE_IOREPORT_GROUP="Something Else")
    assert rc == 1 and lines[0].startswith("error 7 ioreport: no 'Energy Model' channels")
    rc, lines = drive(live_build, SNAPS, "source", SEC, 2 * SEC,
                      ENERGYPROF_COREFOUNDATION_LIB=str(tmp_path / "missing.so"))
    assert rc == 1 and lines[0].startswith("error 6 ioreport: cannot load") and "missing.so" in lines[0]
    rc, lines = drive(live_build, [], "source", SEC, 2 * SEC)  # a group without channels
    assert rc == 1 and lines[0].startswith("error 7 ioreport: no 'Energy Model' channels")
    # A failed sample call mid-run is a fault; the next snapshot covers the gap.
    rc, lines = drive(live_build, [SNAPS[0], "NULL", SNAPS[1]], "source", SEC, 2 * SEC, 3 * SEC)
    assert rc == 0
    assert lines[0].split()[:4] == [str(SEC), str(3 * SEC), "1", "4"]
    assert float(lines[0].split()[4]) == pytest.approx(1.0 / 2)
    assert lines[1:] == ["faults 1", "message ioreport: IOReportCreateSamples failed"]
