"""Source specs: parse_spec validates every kind's parameters and names what is wrong."""
import os
import sys
import types

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import energyprof
from energyprof import _core
from energyprof.measure import sources
from energyprof.measure.sources import parse_spec


@pytest.mark.parametrize(
    "spec, want",
    [
        ("synthetic", ("synthetic", {})),
        ("synthetic:", ("synthetic", {})),
        ("synthetic:power_w=20,period_ms=5", ("synthetic", {"power_w": "20", "period_ms": "5"})),
        (" synthetic: power_w = -1.5e1 , domain=ane ", ("synthetic", {"power_w": "-1.5e1", "domain": "ane"})),
        ("synthetic:noise_w=0.5,seed=18446744073709551615,square_w=3,square_period_ms=.5,ramp_w_per_s=2,active_w=9",
         ("synthetic", {"noise_w": "0.5", "seed": "18446744073709551615", "square_w": "3", "square_period_ms": ".5",
                        "ramp_w_per_s": "2", "active_w": "9"})),
        ("powermetrics", ("powermetrics", {})),
        ("powermetrics:interval_ms=250,samplers=cpu_power+gpu_power+thermal",
         ("powermetrics", {"interval_ms": "250", "samplers": "cpu_power+gpu_power+thermal"})),
        ("nvml:index=1", ("nvml", {"index": "1"})),
        ("estimate:watts_per_core=4.5,tdp_w=65", ("estimate", {"watts_per_core": "4.5", "tdp_w": "65"})),
        ("auto", ("auto", {})),
        ("ioreport", ("ioreport", {})),
    ],
)
def test_valid_specs(spec, want):
    assert parse_spec(spec) == want


def test_paths_are_checked_and_made_absolute(tmp_path, monkeypatch):
    capture = tmp_path / "a,b.plist"  # a comma inside the path stays part of it
    capture.write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert parse_spec("plist:a,b.plist") == ("plist", {"path": str(capture)})
    assert parse_spec("plist:a,b.plist,speed=max") == ("plist", {"path": str(capture), "speed": "max"})
    assert parse_spec(f"plist:{capture},speed=2.5")[1]["speed"] == "2.5"
    assert parse_spec(f"rapl:root={tmp_path}") == ("rapl", {"root": str(tmp_path)})
    exe = tmp_path / "fake_pm"
    exe.write_text("#!/bin/sh\n")
    with pytest.raises(ValueError, match="not executable"):
        parse_spec(f"powermetrics:binary={exe}")
    exe.chmod(0o755)
    assert parse_spec(f"powermetrics:binary={exe}")[1] == {"binary": str(exe)}


@pytest.mark.parametrize(
    "spec, match",
    [
        ("synthetic:power_w=abc", r"^synthetic:power_w=abc: 'power_w' must be a number, got 'abc'$"),
        ("synthetic:power_w=1_000", r"'power_w' must be a number, got '1_000'"),
        ("synthetic:power_w=nan", r"'power_w' must be a number"),
        ("synthetic:power_w=inf", r"'power_w' must be a number"),
        ("synthetic:period_ms=0", r"'period_ms' must be in \(0, 1e10\], got '0'"),
        ("synthetic:period_ms=1e11", r"'period_ms' must be in"),
        ("synthetic:period_ms=0.005", r"'period_ms' must be >= 0.01"),
        ("synthetic:square_period_ms=-3", r"'square_period_ms' must be in"),
        ("synthetic:noise_w=-1", r"'noise_w' must be >= 0"),
        ("synthetic:seed=-1", r"'seed' must be a non-negative integer, got '-1'"),
        ("synthetic:seed=18446744073709551616", r"'seed' must be a non-negative integer"),
        ("synthetic:domain=tpu", r"'domain' must be one of cpu, gpu, ane, dram, package, got 'tpu'"),
        ("synthetic:bogus=1", r"unknown parameter 'bogus' for synthetic \(known: power_w, period_ms"),
        ("synthetic:power_w", r"'power_w' is not key=value"),
        ("synthetic:power_w=1,,period_ms=2", r"empty parameter"),
        ("synthetic:power_w=1,power_w=2", r"'power_w' given twice"),
        ("quantum:x=1", r"unknown source kind 'quantum'; valid kinds: auto, estimate, ioreport, nvml, plist, "
                        r"powermetrics, rapl, synthetic"),
        ("", r"unknown source kind ''"),
        ("plist", r"plist: needs a file"),
        ("plist:/no/such/capture.plist", r"file not found: '/no/such/capture.plist'"),
        ("plist:/no/such/capture.plist,speed=max", r"file not found: '/no/such/capture.plist'"),
        ("powermetrics:interval_ms=0", r"'interval_ms' must be a positive integer, got '0'"),
        ("powermetrics:interval_ms=1.5", r"'interval_ms' must be a positive integer"),
        ("powermetrics:samplers=cpu_power+", r"'samplers' must be sampler names joined by '\+'"),
        ("powermetrics:binary=/no/such/powermetrics", r"'binary': file not found: '/no/such/powermetrics'"),
        ("nvml:index=-1", r"'index' must be a non-negative integer"),
        ("nvml:lib=/no/libnvidia-ml.so.1", r"'lib': file not found"),
        ("rapl:root=/no/such/powercap", r"'root': directory not found: '/no/such/powercap'"),
        ("estimate:watts_per_core=0", r"'watts_per_core' must be > 0"),
        ("estimate:tdp_w=x", r"'tdp_w' must be a number"),
        ("auto:fast=1", r"unknown parameter 'fast' for auto \(known: no parameters\)"),
        ("ioreport:x=1", r"unknown parameter 'x' for ioreport"),
    ],
)
def test_bad_specs_name_the_offending_part(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_spec(spec)


def test_plist_speed_checked(tmp_path):
    f = tmp_path / "c.plist"
    f.write_bytes(b"")
    with pytest.raises(ValueError, match=r"'speed' must be a positive number or 'max', got 'fast'"):
        parse_spec(f"plist:{f},speed=fast")


def test_non_string_spec():
    with pytest.raises(ValueError, match="a source spec is a string"):
        parse_spec(42)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(
    st.sampled_from(["power_w", "period_ms", "noise_w", "square_w", "square_period_ms", "ramp_w_per_s", "active_w"]),
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6)).map(str),
    max_size=4,
))
def test_python_and_c_agree_on_synthetic_numbers(params):
    """What parse_spec accepts the C source accepts (and builds); what it rejects, C rejects too."""
    assume(all("," not in v and "=" not in v and v == v.strip() and v for v in params.values()))
    spec = "synthetic:" + ",".join(f"{k}={v}" for k, v in params.items())
    try:
        kind, checked = parse_spec(spec)
        py_ok = True
    except ValueError:
        py_ok = False
    try:
        _core.Sampler("synthetic", dict(params), None, 1)
        c_ok = True
    except ValueError:
        c_ok = False
    if py_ok:
        assert c_ok, spec
    elif c_ok:
        # C may be more lenient only where strtod is: hex numbers ("0x1p3"), or a
        # period below the fastest poll (the sampler, not the source, rejects that).
        assert any("x" in v.lower() for v in params.values()) or "period_ms" in params, spec


def test_open_synthetic_builds_the_source():
    src = sources.open("synthetic:power_w=3,period_ms=4")
    assert (src.kind, src.label, src.spec, src.requested) == ("synthetic", "simulated", "synthetic:power_w=3,period_ms=4",
                                                             "synthetic:power_w=3,period_ms=4")
    assert src.params == {"power_w": "3", "period_ms": "4"}
    assert src.period_ns == 4_000_000 and src.flags & _core.SRC_SIMULATED
    assert '"power_w": 3' in src.meta_json
    assert sources.open(src) is src
    assert str(src) == "synthetic:power_w=3,period_ms=4 (simulated)"


def test_open_auto_without_doctor(monkeypatch):
    monkeypatch.delattr(energyprof.measure, "doctor", raising=False)
    monkeypatch.setitem(sys.modules, "energyprof.measure.doctor", None)  # makes the import fail
    with pytest.raises(RuntimeError, match="auto needs energyprof.measure.doctor"):
        sources.open("auto")


@pytest.mark.parametrize("resolved", ["synthetic:power_w=7", ("synthetic", {"power_w": "7"})])
def test_open_auto_uses_doctor(monkeypatch, resolved):
    fake = types.ModuleType("energyprof.measure.doctor")
    fake.resolve_auto = lambda: resolved
    monkeypatch.setattr(energyprof.measure, "doctor", fake, raising=False)
    monkeypatch.setitem(sys.modules, "energyprof.measure.doctor", fake)
    src = sources.open("auto")
    assert (src.kind, src.params, src.label, src.requested, src.spec) == (
        "synthetic", {"power_w": "7"}, "simulated", "auto", "synthetic:power_w=7")


def test_format_spec_round_trips(tmp_path):
    f = tmp_path / "x.plist"
    f.write_bytes(b"")
    for spec in ["synthetic:power_w=2,domain=gpu", f"plist:{f},speed=max", "nvml:index=0", "auto"]:
        kind, params = parse_spec(spec)
        assert parse_spec(sources.format_spec(kind, params)) == (kind, params)
    assert os.path.isabs(parse_spec(f"plist:{f}")[1]["path"])
