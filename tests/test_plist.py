"""The plist parser and framer (csrc/kernels/ep_plist.c) against Python's plistlib, and the
plist replay source through energyprof.Sampler.

Oracles: ``energyprof._reference.parse_plist`` / ``split_frames`` (plistlib and plain
Python, written independently of the C code) and the raw values plistlib reads.
"""
from __future__ import annotations

import math
import plistlib
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import energyprof as ep
from energyprof import _core
from energyprof import _reference as ref

XML_CAPTURES = [
    "matiasinsaurralde-battery-m4pro.plist",
    "matiasinsaurralde-gpu_power-m4pro.plist",
    "matiasinsaurralde-gpu_power_multiple_samples-m4pro.plist",
    "pause-monitor-m4max.plist",
    "pumas-m1-2.plist",
    "pumas-m1.plist",
]
DOMAINS = ("cpu", "gpu", "ane", "dram", "package")

_frames_cache: dict = {}


def all_frames(fixdir: Path) -> list:
    """Every document of every XML capture, split with plain bytes.split (no framer)."""
    if "all" not in _frames_cache:
        out = []
        for name in XML_CAPTURES:
            out += [f.strip(b"\0 \n") for f in (fixdir / name).read_bytes().split(b"\0") if f.strip(b"\0 \n")]
        _frames_cache["all"] = out
    return _frames_cache["all"]


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return type(a) is type(b) and a == b


def assert_matches_reference(got: dict, want: dict) -> None:
    got = dict(got)
    sample = got.pop("sample")
    want = dict(want)
    want_sample = want.pop("sample")
    assert set(got) == set(want)
    for key, value in want.items():
        if key == "clusters":
            assert len(got[key]) == len(value)
            for c_got, c_want in zip(got[key], value):
                assert set(c_got) == set(c_want)
                for k in c_want:
                    assert same(c_got[k], c_want[k]), (key, k, c_got[k], c_want[k])
        else:
            assert same(got[key], value), (key, got[key], value)
    assert sample.dtype == _core.SAMPLE_DTYPE and sample.shape == (1,)
    for k, v in want_sample.items():
        assert same(sample[k][0].item(), v), (k, sample[k][0], v)


# ----------------------------------------------------------------- framing

@pytest.mark.parametrize("name", XML_CAPTURES)
def test_every_capture_splits_into_its_documents(powermetrics_fixtures, name):
    data = (powermetrics_fixtures / name).read_bytes()
    frames = _core.split_frames(data, strict=True)
    pieces = [p for p in data.split(b"\0") if p.strip()]
    assert len(frames) == len(pieces) >= 1
    for frame, piece in zip(frames, pieces):
        assert frame == piece.strip(b"\n")
        assert frame.endswith(b"</plist>")
        assert plistlib.loads(frame) == plistlib.loads(piece)
    assert frames == ref.split_frames(data)


def test_framer_handles_garbage_binary_and_truncation(powermetrics_fixtures):
    doc = all_frames(powermetrics_fixtures)[0]
    binary = plistlib.dumps(plistlib.loads(doc), fmt=plistlib.FMT_BINARY)
    stream = b"\n\0shell noise\n" + doc + b"\n\0" + binary + b"\0" + doc + b"\0junk\0" + doc[:100]
    frames = _core.split_frames(stream)
    assert frames == [doc, binary, doc, doc[:100]]
    assert frames == ref.split_frames(stream)
    with pytest.raises(ValueError, match="non-plist"):
        _core.split_frames(stream, strict=True)
    # Frames over the bound are skipped (and refused in strict mode).
    assert _core.split_frames(stream, max_frame_bytes=len(doc) - 1) == [binary, doc[:100]]
    with pytest.raises(ValueError, match="over the size bound"):
        _core.split_frames(doc, max_frame_bytes=100, strict=True)


@st.composite
def streams(draw):
    """Indices of fixture documents glued with separators, garbage, binary, cuts."""
    parts = draw(st.lists(st.tuples(
        st.sampled_from(["doc", "binary", "garbage", "cut"]),
        st.integers(0, 10_000),
        st.sampled_from([b"", b"\0", b"\n\0", b"\n", b" \0\0", b"\r\n"]),
    ), min_size=1, max_size=6))
    return parts


def build_stream(frames: list, parts: list) -> bytes:
    out = b""
    for kind, i, sep in parts:
        doc = frames[i % len(frames)]
        if kind == "doc":
            piece = doc
        elif kind == "binary":
            piece = plistlib.dumps(plistlib.loads(doc), fmt=plistlib.FMT_BINARY)
        elif kind == "garbage":
            piece = bytes((i * 7 + k) % 256 for k in range(i % 50))
        else:
            piece = doc[: i % len(doc)]
        out += piece + sep
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=streams())
def test_c_framer_agrees_with_python_twin(powermetrics_fixtures, parts):
    data = build_stream(all_frames(powermetrics_fixtures), parts)
    assert _core.split_frames(data) == ref.split_frames(data)
    small = 4096
    assert _core.split_frames(data, max_frame_bytes=small) == ref.split_frames(data, max_frame_bytes=small)


_TOKENS = [b"<?xml", b"<!DOCTYPE", b"<plist", b"</plist>", b"bplist00", b"\0", b"\n", b" ", b"<", b"b",
           b"x", b"bpl", b"<?x", b"</pl", b"abc"]


@settings(max_examples=400, deadline=None)
@given(parts=st.lists(st.sampled_from(_TOKENS), max_size=40), bound=st.sampled_from([0, 5, 12, 30]))
def test_c_framer_agrees_with_twin_on_boundary_tokens(parts, bound):
    """Streams made of the framer's own markers and fragments of them, tiny bounds."""
    data = b"".join(parts)
    assert _core.split_frames(data, max_frame_bytes=bound) == ref.split_frames(data, max_frame_bytes=bound)


# ----------------------------------------------------------------- parsing

def test_every_document_parses_like_plistlib(powermetrics_fixtures):
    for frame in all_frames(powermetrics_fixtures):
        assert_matches_reference(_core.parse_plist(frame), ref.parse_plist(frame))


@pytest.mark.parametrize("name", XML_CAPTURES)
def test_fields_are_plistlib_values_in_si_units(powermetrics_fixtures, name):
    """Independent of the twin: the raw plistlib values, unit-converted by hand."""
    for frame in _core.split_frames((powermetrics_fixtures / name).read_bytes()):
        raw = plistlib.loads(frame)
        got = _core.parse_plist(frame)
        s = got["sample"][0]
        elapsed = raw["elapsed_ns"]
        assert got["elapsed_ns"] == elapsed and got["elapsed_s"] == elapsed / 1e9
        assert got["timestamp_s"] == raw["timestamp"].replace(tzinfo=__import__("datetime").timezone.utc).timestamp()
        assert got["hw_model"] == raw["hw_model"] and got["kern_osversion"] == raw["kern_osversion"]
        assert s["kind"] == _core.KIND_INTERVAL and s["t_end_ns"] - s["t_start_ns"] == elapsed
        proc, gpu = raw.get("processor"), raw.get("gpu")
        if proc:
            for d in ("cpu", "gpu", "ane"):
                assert got[f"{d}_energy_j"] == proc[f"{d}_energy"] / 1e3
                assert got[f"{d}_power_w"] == proc[f"{d}_power"] / 1e3
                assert s[f"{d}_w"] == proc[f"{d}_energy"] * 1e6 / elapsed
                # the rounded mW figure powermetrics prints agrees to its 6 digits
                assert s[f"{d}_w"] == pytest.approx(proc[f"{d}_power"] / 1e3, rel=1e-5, abs=1e-9)
            assert got["combined_power_w"] == proc["combined_power"] / 1e3
            assert [c["name"] for c in got["clusters"]] == [c["name"] for c in proc["clusters"]]
            for c_got, c_raw in zip(got["clusters"], proc["clusters"]):
                assert c_got["freq_hz"] == c_raw["freq_hz"] and c_got["idle_ratio"] == c_raw["idle_ratio"]
        else:
            assert math.isnan(got["cpu_energy_j"]) and math.isnan(s["cpu_w"])
        if gpu:
            assert got["gpu_freq_hz"] == gpu["freq_hz"] * 1e6  # MHz in the document
            assert got["gpu_idle_ratio"] == gpu["idle_ratio"]  # the last of duplicate keys
            assert got["gpu_sampler_energy_j"] == gpu["gpu_energy"] / 1e3
            if not proc:
                assert s["gpu_w"] == gpu["gpu_energy"] * 1e6 / elapsed
        assert math.isnan(s["dram_w"]) and math.isnan(s["package_w"])
        assert got["thermal_pressure"] == raw.get("thermal_pressure")


def test_pruned_parse_equals_whole_document_parse(powermetrics_fixtures):
    """parse_plist cuts sections it never reads before libplist sees the text."""
    for frame in all_frames(powermetrics_fixtures):
        commented = frame.replace(b"<dict>", b"<dict><!-- comment -->", 1)  # comments switch the cut off
        pruned = [_core.parse_plist(frame), _core.parse_plist(commented)]
        _core._plist_prune(False)
        try:
            whole = _core.parse_plist(frame)
        finally:
            _core._plist_prune(True)
        for got in pruned:
            assert_matches_reference(got, {**whole, "sample": {k: whole["sample"][k][0].item()
                                                               for k in whole["sample"].dtype.names}})


def test_duplicate_keys_last_wins(powermetrics_fixtures):
    doc = (powermetrics_fixtures / "matiasinsaurralde-gpu_power-m4pro.plist").read_bytes()
    assert doc.count(b"<key>idle_ratio</key>") >= 2  # the M4 Pro duplicate-key quirk
    last = doc.rfind(b"<key>idle_ratio</key>")
    changed = doc[:last] + with_nan(doc[last:], b"idle_ratio", b"0.125")
    assert plistlib.loads(changed)["gpu"]["idle_ratio"] == 0.125
    assert _core.parse_plist(changed)["gpu_idle_ratio"] == 0.125


def with_nan(doc: bytes, key: bytes, text: bytes) -> bytes:
    i = doc.index(b"<key>" + key + b"</key>")
    a = doc.index(b"<real>", i) + len(b"<real>")
    b = doc.index(b"</real>", a)
    return doc[:a] + text + doc[b:]


@pytest.mark.parametrize("strict", [False, True])
def test_nan_values_keep_the_frame(powermetrics_fixtures, strict):
    doc = (powermetrics_fixtures / "pumas-m1.plist").read_bytes().strip()
    bad = with_nan(with_nan(doc, b"idle_ratio", b"nan"), b"gpu_power", b"-nan")
    clean = _core.parse_plist(doc)
    _core._plist_strict_reals(strict)  # True: behave like a libplist that rejects nan
    try:
        got = _core.parse_plist(bad)
    finally:
        _core._plist_strict_reals(False)
    assert got["sanitized"] is strict
    assert got["nan_fields"] == 2
    assert math.isnan(got["clusters"][0]["idle_ratio"]) and math.isnan(got["gpu_power_w"])
    assert got["sample"]["flags"][0] & _core.SFLAG_NAN_FIELD
    assert not clean["sample"]["flags"][0] & _core.SFLAG_NAN_FIELD
    # the energies are integers: the sample's power is untouched
    for d in ("cpu_w", "gpu_w", "ane_w"):
        assert got["sample"][d][0] == clean["sample"][d][0]
    assert all(same(got["clusters"][1][k], v) for k, v in clean["clusters"][1].items())
    assert_matches_reference({**got, "sanitized": False}, ref.parse_plist(bad))


def test_binary_plist_parses_like_xml(powermetrics_fixtures):
    for frame in all_frames(powermetrics_fixtures):
        binary = plistlib.dumps(plistlib.loads(frame), fmt=plistlib.FMT_BINARY)
        assert_matches_reference(_core.parse_plist(binary), ref.parse_plist(binary))
        assert_matches_reference(_core.parse_plist(binary), ref.parse_plist(frame))


def test_pre_ventura_package_and_dram_fields():
    doc = {"elapsed_ns": 1_000_000_000, "processor": {"cpu_energy": 1500, "package_energy": 4000,
                                                        "dram_energy": 600, "dram_power": 600.0}}
    got = _core.parse_plist(plistlib.dumps(doc))
    s = got["sample"][0]
    assert s["package_w"] == 4.0 and s["dram_w"] == 0.6 and s["cpu_w"] == 1.5
    assert math.isnan(s["gpu_w"]) and got["dram_power_w"] == 0.6
    assert_matches_reference(got, ref.parse_plist(plistlib.dumps(doc)))


@pytest.mark.parametrize("bad", [b"", b"<", b"\0\0", b"bplist00", b"<plist><array/></plist>",
                                 b"<?xml version='1.0'?><plist><dict><key>a</key>",
                                 "<plist/>".encode() * 3])
def test_malformed_raises_value_error(bad):
    with pytest.raises(ValueError):
        _core.parse_plist(bad)
    _core.split_frames(bad)  # never raises without strict


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2048))
def test_random_bytes_only_value_error(data):
    for blob in (data, b"<?xml version=\"1.0\"?>" + data, b"bplist00" + data):
        try:
            got = _core.parse_plist(blob)
        except ValueError:
            pass
        else:
            assert isinstance(got, dict) and got["sample"].shape == (1,)
        for frame in _core.split_frames(blob):
            assert frame


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, 10_000), edits=st.lists(st.tuples(st.integers(0, 1 << 20), st.binary(max_size=8),
                                                              st.integers(0, 8)), min_size=1, max_size=8),
       binary=st.booleans())
def test_mutated_documents_only_value_error(powermetrics_fixtures, which, edits, binary):
    frames = all_frames(powermetrics_fixtures)
    doc = frames[which % len(frames)]
    if binary:
        doc = plistlib.dumps(plistlib.loads(doc), fmt=plistlib.FMT_BINARY)
    for pos, insert, delete in edits:
        pos %= len(doc) + 1
        doc = doc[:pos] + insert + doc[pos + delete:]
    try:
        got = _core.parse_plist(doc)
    except ValueError:
        pass
    else:
        assert set(got) >= {"sample", "elapsed_ns", "clusters"}
    for frame in _core.split_frames(doc + b"\0" + doc):
        try:
            _core.parse_plist(frame)
        except ValueError:
            pass


# ----------------------------------------------------------------- replay source

def wait_until_ended(s: "ep.Sampler", limit_s: float = 30.0) -> None:
    """Safety net only: a replay that never ends fails here instead of hanging."""
    t_end = time.monotonic() + limit_s
    while not s.ended and time.monotonic() < t_end:
        time.sleep(0.01)
    assert s.ended, "replay did not finish"


def capture_energy_j(frames: list) -> dict:
    """Sum of the *_energy fields per domain (processor first, else gpu.gpu_energy), J."""
    total = {d: 0.0 for d in ("cpu", "gpu", "ane")}
    for frame in frames:
        raw = plistlib.loads(frame)
        proc, gpu = raw.get("processor"), raw.get("gpu")
        for d in total:
            if proc and f"{d}_energy" in proc:
                total[d] += proc[f"{d}_energy"] / 1e3
            elif d == "gpu" and gpu and "gpu_energy" in gpu:
                total[d] += gpu["gpu_energy"] / 1e3
    return total


def test_replay_integrates_to_the_capture_energy(powermetrics_fixtures, tmp_path):
    names = ["pumas-m1.plist", "pumas-m1-2.plist", "pause-monitor-m4max.plist"]
    frames = [f for n in names for f in _core.split_frames((powermetrics_fixtures / n).read_bytes())]
    path = tmp_path / "capture.plist"
    path.write_bytes(b"\0".join(f + b"\n" for f in frames))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ep.Sampler(f"plist:{path},speed=max") as s:
            wait_until_ended(s)
    assert s.faults == 0
    samples = s.samples
    assert len(samples) == len(frames)
    assert np.all(samples["t_start_ns"][1:] == samples["t_end_ns"][:-1])  # back to back
    assert "replay finished" in s.message
    assert any("ended before stop" in str(w.message) for w in caught)
    want = capture_energy_j(frames)
    windows = np.array([[samples["t_start_ns"][0], samples["t_end_ns"][-1]]], dtype=np.int64)
    energy_j, flags, counts = _core.integrate(samples, windows)
    for i, d in enumerate(("cpu", "gpu", "ane")):
        assert energy_j[0, i] == pytest.approx(want[d], rel=1e-12, abs=1e-15), d
    assert counts[0] == len(frames)
    meta = __import__("json").loads(s.meta_json)
    assert meta["hw_model"] == "MacBookPro17,1" and meta["speed"] == "max"


def test_replay_gpu_only_capture(powermetrics_fixtures):
    path = powermetrics_fixtures / "matiasinsaurralde-gpu_power_multiple_samples-m4pro.plist"
    frames = _core.split_frames(path.read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with ep.Sampler(f"plist:{path},speed=max") as s:
            wait_until_ended(s)
    samples = s.samples
    assert len(samples) == 5 and np.isnan(samples["cpu_w"]).all()
    windows = np.array([[samples["t_start_ns"][0], samples["t_end_ns"][-1]]], dtype=np.int64)
    energy_j, _, _ = _core.integrate(samples, windows)
    assert energy_j[0, 1] == pytest.approx(capture_energy_j(frames)["gpu"], rel=1e-12)


def test_replay_skips_and_counts_damaged_documents(powermetrics_fixtures, tmp_path):
    doc = all_frames(powermetrics_fixtures)[-1]
    path = tmp_path / "damaged.plist"
    path.write_bytes(doc + b"\n\0<plist><dict><key>x</key></plist>\0not a plist\n\0" + doc + b"\n\0" + doc[:500])
    with pytest.warns(RuntimeWarning, match="fault"):
        with ep.Sampler(f"plist:{path},speed=max") as s:
            wait_until_ended(s)
    assert len(s.samples) == 2
    assert s.faults == 3


def test_replay_real_time_is_paced(powermetrics_fixtures):
    """speed=F: a sample is delivered once its scaled end has passed on the clock."""
    path = powermetrics_fixtures / "pumas-m1-2.plist"  # one 0.526 s document
    elapsed = plistlib.loads(path.read_bytes())["elapsed_ns"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with ep.Sampler(f"plist:{path},speed=50") as s:
            wait_until_ended(s)
            t_seen = _core.now_ns()
    sample = s.samples[0]
    assert sample["t_end_ns"] - sample["t_start_ns"] == elapsed
    assert t_seen >= sample["t_start_ns"] + elapsed // 50


def test_bad_replay_specs():
    with pytest.raises(ValueError, match="speed"):
        ep.sources.open("plist:/etc/hostname,speed=fast")
    with pytest.raises(ValueError, match="not found"):
        ep.sources.open("plist:/nonexistent/capture.plist")


def test_docs_example_runs_and_prints_what_it_says(monkeypatch):
    """The example in docs/powermetrics.md runs, and prints the lines its comments show."""
    import contextlib
    import io

    root = Path(__file__).parents[1]
    text = (root / "docs" / "powermetrics.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    expected = [line[2:] for line in code.splitlines() if line.startswith("# ")]
    monkeypatch.chdir(root)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "docs/powermetrics.md", "exec"), {})
    assert out.getvalue().splitlines() == expected


def test_the_benchmarks_python_cut_skips_the_sections_the_c_cut_skips(powermetrics_fixtures):
    """benchmarks/plist_parse.py compares the C cut with a Python cut of the same sections:
    the same key list as csrc/kernels/ep_plist.c, and the same parse after either cut."""
    import importlib.util
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    c_keys = re.search(r"prune_keys\[\] = \{(.*?)NULL\}", (root / "csrc" / "kernels" / "ep_plist.c").read_text(), re.S)
    spec = importlib.util.spec_from_file_location("plist_parse_bench", root / "benchmarks" / "plist_parse.py")
    bench = importlib.util.module_from_spec(spec)
    import sys

    sys.path.insert(0, str(root / "benchmarks"))
    try:
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(str(root / "benchmarks"))
    assert tuple(re.findall(r'"([a-z_]+)"', c_keys.group(1))) == bench.CUT_KEYS
    for frame in all_frames(powermetrics_fixtures):
        cut = bench.py_cut(frame)
        assert bench._same(ref.parse_plist(cut), ref.parse_plist(frame))
        assert bench._same(_core.parse_plist(frame), ref.parse_plist(cut))
    big = max(all_frames(powermetrics_fixtures), key=len)
    assert len(bench.py_cut(big)) < len(big) / 5        # the per-task capture is mostly cut sections
