"""Power source specs: parse, validate and open them.

A *spec* is one string, ``KIND[:PARAMS]``, where PARAMS are comma-separated
``key=value`` pairs (``plist`` takes a path first)::

    synthetic:power_w=20,period_ms=5        programmable ground truth (simulated)
    plist:capture.plist,speed=max           replay of a captured powermetrics stream
    powermetrics:interval_ms=100,samplers=cpu_power+gpu_power
    nvml:index=0                            NVIDIA GPU energy counter
    nvml:devices=0,1                        several GPUs of this process (or devices=all)
    rapl:root=/sys/class/powercap           Linux powercap (Intel/AMD RAPL); update_ms=1: how
                                            often the hardware advances the counter
    ioreport                                macOS IOReport energy counters, no sudo
    estimate:watts_per_core=4               CPU power modelled from CPU time (estimated)
    auto                                    the best source that works here (energyprof doctor)

:func:`parse_spec` checks the shape of every parameter here, in Python, so the C
sources (``csrc/sources/ep_src_<kind>.c``) can trust it; they still reject values they
cannot use.  A bad spec raises :class:`ValueError` that names the offending part.
:func:`open` also builds the C source once, so problems that only the platform
can reveal (a missing library, no permission) surface before a run starts.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Tuple

from ..errors import DeviceError

__all__ = ["Source", "parse_spec", "open", "KINDS", "LABELS", "format_spec", "SYSTEMATIC", "systematic_uncertainty"]

DOMAINS = ("cpu", "gpu", "ane", "dram", "package")

#: How figures from each kind are labelled in every report.
LABELS: Dict[str, str] = {
    "synthetic": "simulated",
    "estimate": "estimated",
    "plist": "measured",
    "powermetrics": "measured",
    "nvml": "measured",
    "rapl": "measured",
    "ioreport": "measured",
}

#: What each kind says about its own systematic error (the figure every total carries in
#: ``summary()["uncertainty"]``).  ``kind`` is ``"relative"`` (the true energy lies within
#: ``± value`` of the reading), ``"factor"`` (within ``[reading / value, reading * value]``)
#: or ``"none"`` (exact by construction); ``documented`` says whether the maker states the
#: figure or energyprof assumes it.  See docs/methodology.md, "Systematic uncertainty".
SYSTEMATIC: Dict[str, Dict[str, object]] = {
    "synthetic": {"kind": "none", "value": 0.0, "documented": True,
                  "basis": "a programmed power signal, exact by construction"},
    "estimate": {"kind": "factor", "value": 2.0, "documented": False,
                 "basis": "a model of CPU power from CPU time and a per-core wattage, not a measurement: "
                          "about a factor of 2 unless calibrated against a meter on this machine"},
    "nvml": {"kind": "relative", "value": 0.05, "documented": True,
             "basis": "NVIDIA documents nvmlDeviceGetPowerUsage as accurate to within +/-5 % of the current "
                      "power draw (stated for Fermi and Kepler; later GPUs state no figure)"},
    "rapl": {"kind": "relative", "value": 0.10, "documented": False,
             "basis": "Intel states no accuracy for RAPL (a model before Haswell, measured from Haswell on); "
                      "+/-10 % assumed"},
    "powermetrics": {"kind": "relative", "value": 0.10, "documented": False,
                     "basis": "Apple documents no accuracy for powermetrics' energy estimates; +/-10 % assumed"},
    "plist": {"kind": "relative", "value": 0.10, "documented": False,
              "basis": "a replayed powermetrics capture: Apple documents no accuracy; +/-10 % assumed"},
    "ioreport": {"kind": "relative", "value": 0.10, "documented": False,
                 "basis": "Apple documents no accuracy for the IOReport energy counters; +/-10 % assumed"},
}


def systematic_uncertainty(kind: str, params: Optional[Mapping[str, str]] = None) -> Dict[str, object]:
    """The systematic uncertainty a source of ``kind`` states for its readings (a copy of
    :data:`SYSTEMATIC`), with a note when an ``estimate`` was given its own wattage.

    >>> systematic_uncertainty("estimate")["value"]
    2.0
    """
    if kind not in SYSTEMATIC:
        return {"kind": "unknown", "value": float("nan"), "documented": False,
                "basis": f"source kind {kind!r} states no systematic uncertainty"}
    out = dict(SYSTEMATIC[kind])
    if kind == "estimate" and params and "watts_per_core" in params:
        out["basis"] = (str(out["basis"]) + "; watts_per_core was given: if it was calibrated against a meter, "
                        "that calibration's accuracy applies instead")
    return out


# The same number syntax the C side accepts with strtod (no '_' separators, no
# hex, no inf/nan), so a spec that passes here never fails there for its shape.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_INT = re.compile(r"\d+")


# ---------------------------------------------------------------------- checks
# Each check takes (key, value) and returns the value to hand to C, or raises
# ValueError with a message naming the key.

def _number(key: str, value: str) -> float:
    if not _NUMBER.fullmatch(value) or not math.isfinite(float(value)):
        raise ValueError(f"{key!r} must be a number, got {value!r}")
    return float(value)


def _num(key: str, value: str) -> str:
    _number(key, value)
    return value


def _positive(key: str, value: str) -> str:
    if _number(key, value) <= 0:
        raise ValueError(f"{key!r} must be > 0, got {value!r}")
    return value


def _counter_update_ms(key: str, value: str) -> str:
    # As the C source: (0, 1000] ms.
    if not 0 < _number(key, value) <= 1000:
        raise ValueError(f"{key!r} must be a number of milliseconds in (0, 1000], got {value!r}")
    return value


def _period_ms(key: str, value: str) -> str:
    # Upper bound as in the C source: the period in ns must stay far inside int64.
    if not 0 < _number(key, value) <= 1e10:
        raise ValueError(f"{key!r} must be in (0, 1e10], got {value!r}")
    return value


def _sample_period_ms(key: str, value: str) -> str:
    # The sample period is the poll interval: 10 us is the sampler's fastest poll.
    _period_ms(key, value)
    if _number(key, value) < 0.01:
        raise ValueError(f"{key!r} must be >= 0.01 (the fastest poll interval), got {value!r}")
    return value


def _gap_ms(key: str, value: str) -> str:
    # As in the C source: a time in ms from the source's start, >= 0 and far inside int64 ns.
    if not 0 <= _number(key, value) <= 1e10:
        raise ValueError(f"{key!r} must be in [0, 1e10], got {value!r}")
    return value


def _non_negative(key: str, value: str) -> str:
    if _number(key, value) < 0:
        raise ValueError(f"{key!r} must be >= 0, got {value!r}")
    return value


def _uint(key: str, value: str, bits: int = 63) -> str:
    if not _INT.fullmatch(value) or int(value) >= 2**bits:
        raise ValueError(f"{key!r} must be a non-negative integer, got {value!r}")
    return value


def _uint64(key: str, value: str) -> str:
    return _uint(key, value, 64)


def _positive_int(key: str, value: str) -> str:
    if not _INT.fullmatch(value) or int(value) <= 0 or int(value) >= 2**31:
        raise ValueError(f"{key!r} must be a positive integer, got {value!r}")
    return value


def _devices(key: str, value: str) -> str:
    """``all`` or GPU numbers joined by ',' (each once): the nvml source's device list."""
    if value == "all":
        return value
    seen = set()
    for entry in value.split(","):
        e = entry.strip()
        if not _INT.fullmatch(e) or int(e) > 1024:
            raise DeviceError(f"{key!r}: {entry!r} is not a GPU number 0..1024 (devices=0,1 or devices=all), "
                              f"in {key}={value}")
        if int(e) in seen:
            raise DeviceError(f"{key!r}: GPU {e} is listed twice, in {key}={value}")
        seen.add(int(e))
    if len(seen) > 16:
        raise DeviceError(f"{key!r}: {len(seen)} GPUs listed; one nvml source reads at most 16")
    return ",".join(str(int(e)) for e in value.split(","))


def _nvml_whole(params: Dict[str, str]) -> None:
    if "devices" in params and "index" in params:
        raise DeviceError("give devices= or index=, not both (index=N is devices=N)")


def _domain(key: str, value: str) -> str:
    if value not in DOMAINS:
        raise ValueError(f"{key!r} must be one of {', '.join(DOMAINS)}, got {value!r}")
    return value


def _existing(key: str, value: str, exists: Callable[[str], bool], what: str) -> str:
    if not value:
        raise ValueError(f"{key!r} needs a path")
    if not exists(value):
        raise ValueError(f"{key!r}: {what} not found: {value!r}")
    return os.path.abspath(value)


def _existing_file(key: str, value: str) -> str:
    return _existing(key, value, os.path.isfile, "file")


def _existing_dir(key: str, value: str) -> str:
    return _existing(key, value, os.path.isdir, "directory")


def _executable(key: str, value: str) -> str:
    path = _existing_file(key, value)
    if not os.access(path, os.X_OK):
        raise ValueError(f"{key!r}: not executable: {value!r}")
    return path


def _speed(key: str, value: str) -> str:
    if value == "max":
        return value
    try:
        return _positive(key, value)
    except ValueError:
        raise ValueError(f"{key!r} must be a positive number or 'max', got {value!r}") from None


def _samplers(key: str, value: str) -> str:
    names = value.split("+")
    for name in names:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"{key!r} must be sampler names joined by '+' (e.g. cpu_power+gpu_power), "
                             f"got {value!r}")
    return value


Check = Callable[[str, str], str]


@dataclass(frozen=True)
class KindSpec:
    """How one source kind's parameters are checked."""

    keys: Mapping[str, Check]
    #: name of the positional first parameter (plist's path), if any
    positional: Optional[str] = None
    #: checks over the whole parameter dict after each key passed (raise ValueError)
    whole: Optional[Callable[[Dict[str, str]], None]] = None
    doc: str = ""
    #: keys whose value is a comma-separated list: the pieces after ``key=`` that are no
    #: ``key=value`` belong to it (``nvml:devices=0,1,lib=PATH``)
    lists: Tuple[str, ...] = ()


def _plist_whole(params: Dict[str, str]) -> None:
    if "path" not in params:
        raise ValueError("needs a file: plist:PATH[,speed=1.0|max]")


#: The registry: kind -> how to validate its parameters.
KINDS: Dict[str, KindSpec] = {
    "synthetic": KindSpec(
        keys={
            "power_w": _num,
            "period_ms": _sample_period_ms,
            "noise_w": _non_negative,
            "seed": _uint64,
            "square_w": _num,
            "square_period_ms": _period_ms,
            "ramp_w_per_s": _num,
            "active_w": _num,
            "domain": _domain,
            "gap_at_ms": _gap_ms,
            "gap_ms": _gap_ms,
            "attn_w": _num,
            "mlp_w": _num,
        },
        doc="synthetic[:power_w=W,period_ms=MS,noise_w=W,seed=N,square_w=W,square_period_ms=MS,"
            "ramp_w_per_s=W,active_w=W,attn_w=W,mlp_w=W,domain=cpu|gpu|ane|dram|package,gap_at_ms=MS,gap_ms=MS]",
    ),
    "plist": KindSpec(keys={"path": _existing_file, "speed": _speed}, positional="path", whole=_plist_whole,
                      doc="plist:PATH[,speed=1.0|max]"),
    "powermetrics": KindSpec(
        keys={"interval_ms": _positive_int, "samplers": _samplers, "binary": _executable},
        doc="powermetrics[:interval_ms=N,samplers=cpu_power+gpu_power,binary=PATH]",
    ),
    "nvml": KindSpec(keys={"devices": _devices, "index": lambda k, v: _uint(k, v, 31), "lib": _existing_file},
                     whole=_nvml_whole, lists=("devices",),
                     doc="nvml[:devices=0,1|all,lib=PATH] (index=N: one GPU, the same as devices=N)"),
    "rapl": KindSpec(keys={"root": _existing_dir, "update_ms": _counter_update_ms}, doc="rapl[:root=PATH,update_ms=1]"),
    "ioreport": KindSpec(keys={}, doc="ioreport"),
    "estimate": KindSpec(
        keys={"watts_per_core": _positive, "tdp_w": _positive, "idle_w": _non_negative},
        doc="estimate[:watts_per_core=W,tdp_w=W,idle_w=W]",
    ),
    "auto": KindSpec(keys={}, doc="auto"),
}


def _valid_kinds() -> str:
    return ", ".join(sorted(KINDS))


def parse_spec(spec: str) -> Tuple[str, Dict[str, str]]:
    """Split and validate a source spec.

    Returns ``(kind, params)`` with every value a string ready for the C source
    (paths made absolute).  Raises ValueError naming the offending part, e.g.
    ``synthetic:power_w=abc: 'power_w' must be a number, got 'abc'``.

    >>> parse_spec("synthetic:power_w=20,period_ms=5")
    ('synthetic', {'power_w': '20', 'period_ms': '5'})
    """
    if not isinstance(spec, str):
        raise ValueError(f"a source spec is a string such as 'synthetic:power_w=20', got {spec!r}")
    text = spec.strip()
    kind, _, rest = text.partition(":")
    kind = kind.strip()
    if kind not in KINDS:
        raise ValueError(f"{spec}: unknown source kind {kind!r}; valid kinds: {_valid_kinds()}")
    ks = KINDS[kind]
    pieces = rest.split(",") if rest else []
    params: Dict[str, str] = {}
    if ks.positional is not None and pieces:
        # The positional part (a path) may itself contain commas: options are
        # only the trailing pieces that look like a known key=value.
        n_opts = 0
        for piece in reversed(pieces[1:]):
            key = piece.partition("=")[0].strip()
            if "=" in piece and key in ks.keys and key != ks.positional:
                n_opts += 1
            else:
                break
        split = len(pieces) - n_opts
        params[ks.positional] = ",".join(pieces[:split])
        pieces = pieces[split:]
    last = None
    for piece in pieces:
        if not piece.strip():
            raise ValueError(f"{spec}: empty parameter (stray ',')")
        key, eq, value = piece.partition("=")
        key, value = key.strip(), value.strip()
        if not eq and last in ks.lists:
            params[last] += "," + key   # the next entry of a list value (devices=0,1)
            continue
        if not eq:
            raise ValueError(f"{spec}: {piece!r} is not key=value; {kind} takes {ks.doc}")
        if key not in ks.keys or key == ks.positional:
            known = ", ".join(k for k in ks.keys if k != ks.positional) or "no parameters"
            raise ValueError(f"{spec}: unknown parameter {key!r} for {kind} (known: {known})")
        if key in params:
            raise ValueError(f"{spec}: {key!r} given twice")
        params[key] = value
        last = key
    try:
        checked = {key: ks.keys[key](key, value) for key, value in params.items()}
        if ks.whole is not None:
            ks.whole(checked)
    except ValueError as e:
        raise (DeviceError if isinstance(e, DeviceError) else ValueError)(f"{spec}: {e}") from None
    return kind, checked


def format_spec(kind: str, params: Mapping[str, str]) -> str:
    """The canonical spec string of (kind, params) (inverse of :func:`parse_spec`)."""
    ks = KINDS.get(kind)
    parts = []
    if ks is not None and ks.positional and ks.positional in params:
        parts.append(params[ks.positional])
    parts += [f"{k}={v}" for k, v in params.items() if ks is None or k != ks.positional]
    return kind + (":" + ",".join(parts) if parts else "")


@dataclass(frozen=True)
class Source:
    """An opened (validated, constructible) power source; pass it to Sampler.

    ``label`` is how its figures are reported: "measured", "estimated" or
    "simulated".  ``spec`` is the spec actually used (for ``auto``, the source it
    resolved to; ``requested`` keeps what was asked for).
    """

    kind: str
    params: Dict[str, str]
    label: str
    spec: str
    requested: str = ""
    period_ns: int = 0
    meta_json: str = ""
    flags: int = 0
    extra: Dict[str, object] = field(default_factory=dict, compare=False)

    def __str__(self) -> str:
        return f"{self.spec} ({self.label})"


def _resolve_auto(spec: str) -> Tuple[str, Dict[str, str], list]:
    try:
        from . import doctor  # written separately; imported lazily so sources works without it
    except ImportError as e:
        raise RuntimeError("auto needs energyprof.measure.doctor: source 'auto' is resolved by "
                           f"energyprof.measure.doctor.resolve_auto(), which is not available ({e})") from e
    resolve = getattr(doctor, "resolve_auto", None)
    if resolve is None:
        raise RuntimeError("auto needs energyprof.measure.doctor: energyprof.measure.doctor.resolve_auto() is missing")
    got = resolve()
    why: list = []
    # Accept the shapes a resolver may reasonably return: a spec, (kind, params), a Source.
    if isinstance(got, Source):
        return got.kind, dict(got.params)
    if isinstance(got, str):
        kind, params = parse_spec(got)
    elif isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], str) and isinstance(got[1], list):
        kind, params = parse_spec(got[0])  # doctor.resolve_auto(): (spec, [why each other source was not used])
        why = list(got[1])
    elif isinstance(got, tuple) and len(got) == 2:
        kind, params = parse_spec(format_spec(got[0], dict(got[1])))
    elif hasattr(got, "spec"):
        kind, params = parse_spec(got.spec)
    else:
        raise RuntimeError(f"energyprof.measure.doctor.resolve_auto() returned {got!r}, not a source spec")
    if kind == "auto":
        raise RuntimeError("energyprof.measure.doctor.resolve_auto() resolved 'auto' to itself")
    return kind, params, why


def open(spec: "str | Source") -> Source:  # noqa: A001  (energyprof.measure.sources.open reads well)
    """Validate ``spec`` and build its C source once, then return a :class:`Source`.

    Building it early surfaces what only the platform can tell (a missing
    library or device, no permission) as the C core's exception (FileNotFoundError,
    PermissionError, NotImplementedError, ...); a malformed spec raises ValueError.
    ``auto`` is resolved by ``energyprof.measure.doctor.resolve_auto()``.
    """
    if isinstance(spec, Source):
        return spec
    kind, params = parse_spec(spec)
    requested = spec.strip()
    used = requested
    auto_rows: list = []
    if kind == "auto":
        kind, params, auto_rows = _resolve_auto(requested)
        used = format_spec(kind, params)
    from .. import _core

    # A sampler with a one-sample ring is the cheapest way to run the C constructor.
    try:
        probe = _core.Sampler(kind, dict(params), None, 1)
    except ValueError as e:
        if kind == "nvml":   # the list was well formed; the machine lacks a device it names
            raise DeviceError(str(e).replace("invalid argument: ", "", 1)) from None
        raise
    flags = int(probe.source_flags)
    if flags & _core.SRC_SIMULATED:
        label = "simulated"
    elif flags & _core.SRC_ESTIMATED:
        label = "estimated"
    else:
        label = LABELS.get(kind, "measured")
    src = Source(kind=kind, params=dict(params), label=label, spec=used, requested=requested,
                 period_ns=int(probe.period_ns), meta_json=probe.meta_json, flags=flags)
    if auto_rows:
        # why auto chose this source and not the others (recorded in the run's metadata)
        src.extra["auto"] = [{k: r.get(k) for k in ("source", "spec", "available", "chosen", "decision", "reason")
                              if k in r} for r in auto_rows if isinstance(r, dict)]
    del probe
    return src
