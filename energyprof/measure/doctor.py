"""Which power sources work on this machine, why the others do not, and how to fix them.

>>> from energyprof.measure import doctor
>>> rows = doctor.doctor()
>>> [r["source"] for r in rows]
['ioreport', 'powermetrics', 'nvml', 'rapl', 'estimate', 'synthetic']
>>> spec, why = doctor.resolve_auto()     # what source="auto" uses, and why not the others

Each row is a dict: ``name`` (also as ``source``), ``spec`` (what ``auto`` would pass), ``available``,
``label`` (measured / estimated / simulated), ``reason`` (why it works or not),
``fix`` (a command or step that makes it work, "" when nothing can), ``detail``
(the source's metadata when it opened).  Every probe opens the real C source
(``_core.SourceDriver``) and reads it once, so "available" means a reading worked,
not that a file exists.

``energyprof doctor [--json] [--plain]`` (:mod:`energyprof.cli.doctor`) prints the same as a
table and exits 0 when some real (measured) source works, 1 otherwise.

The module itself is callable: ``energyprof.measure.doctor()`` is ``energyprof.measure.doctor.doctor()``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from typing import Callable, Dict, List, Optional, Tuple

__all__ = ["doctor", "resolve_auto", "AUTO_ORDER", "NOT_MEASURED"]

#: The order ``auto`` tries sources in (the first that works is used).
AUTO_ORDER = ("ioreport", "powermetrics", "nvml", "rapl", "estimate")
#: Sources whose figures are not measurements (doctor's exit code ignores them).
NOT_MEASURED = ("estimate", "synthetic")

POWERMETRICS = "/usr/bin/powermetrics"
#: The root-owned wrapper scripts/setup_powermetrics.sh installs; the powermetrics source
#: runs ``sudo -n POWERMETRICS_WRAPPER -f plist -i MS --samplers ...`` when not root.
POWERMETRICS_WRAPPER = "/opt/energyprof/bin/energyprof-powermetrics"
SETUP_SCRIPT = "sudo bash scripts/setup_powermetrics.sh   (from the energyprof source tree)"
RAPL_CHMOD = "sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj"
RAPL_PERSIST = ("persist across reboots: echo 'z /sys/class/powercap/intel-rapl:*/energy_uj 0444 - - -' | "
                "sudo tee /etc/tmpfiles.d/energyprof-rapl.conf")


def _row(source: str, spec: str, available: bool, label: str, reason: str, fix: str = "",
         detail: Optional[dict] = None) -> Dict[str, object]:
    return {"name": source, "source": source, "spec": spec, "available": bool(available), "label": label, "reason": reason,
            "fix": fix, "detail": detail or {}}


def _probe(kind: str, params: Dict[str, str]) -> Tuple[bool, dict, Optional[BaseException]]:
    """Open the C source, start it (its first reading) and stop it."""
    from .. import _core

    try:
        d = _core.SourceDriver(kind, params)
        d.start(_core.now_ns())
        d.stop(_core.now_ns())
    except Exception as e:  # the C core's mapped errors: FileNotFoundError, PermissionError, ...
        return False, {}, e
    try:
        meta = json.loads(d.meta_json) if d.meta_json else {}
    except ValueError:
        meta = {"meta_json": d.meta_json}
    return True, meta, None


def _text(e: BaseException) -> str:
    s = str(e)
    # The C core prefixes its generic code text ("not found: ..."): keep the specific part.
    for prefix in ("not found: ", "permission denied: ", "not supported here: ", "device call failed: ",
                   "invalid argument: ", "I/O error: "):
        if s.startswith(prefix):
            s = s[len(prefix):]
            break
    for kind in AUTO_ORDER:  # and the source's own "nvml: " prefix: the row already names it
        if s.startswith(kind + ": "):
            return s[len(kind) + 2:]
    return s


def _ioreport_row(system: str) -> Dict[str, object]:
    if system != "darwin":
        return _row("ioreport", "ioreport", False, "measured",
                    "macOS only (Apple Silicon's IOReport energy counters)")
    ok, meta, err = _probe("ioreport", {})
    if ok:
        return _row("ioreport", "ioreport", True, "measured",
                    "Apple Silicon energy counters (IOReport), no sudo needed", detail=meta)
    return _row("ioreport", "ioreport", False, "measured", _text(err),
                "none on this Mac (Intel Macs and VMs have no IOReport energy model); try powermetrics")


def _sudo_allows_powermetrics() -> bool:
    """True when `sudo -n` may run the powermetrics wrapper, with the arguments the
    powermetrics source passes, without asking for a password."""
    if shutil.which("sudo") is None:
        return False
    try:
        r = subprocess.run(["sudo", "-n", "-l", POWERMETRICS_WRAPPER, "-f", "plist", "-i", "1000", "--samplers",
                            "cpu_power,gpu_power,thermal"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def _powermetrics_row(system: str, euid: int, sudo_ok: Callable[[], bool],
                      binary_exists: bool) -> Dict[str, object]:
    if system != "darwin":
        return _row("powermetrics", "powermetrics", False, "measured", "macOS only")
    if not binary_exists:
        return _row("powermetrics", "powermetrics", False, "measured", f"{POWERMETRICS} not found",
                    "none: powermetrics ships with macOS; is this a minimal or modified system?")
    if euid == 0:
        return _row("powermetrics", "powermetrics", True, "measured", "running as root")
    if sudo_ok():
        return _row("powermetrics", "powermetrics", True, "measured",
                    f"sudo -n may run {POWERMETRICS_WRAPPER} (the wrapper and its sudoers rule are installed)")
    return _row("powermetrics", "powermetrics", False, "measured",
                "powermetrics needs root and sudo would ask for a password", SETUP_SCRIPT)


def _nvml_row() -> Dict[str, object]:
    ok, meta, err = _probe("nvml", {"index": "0"})
    if ok:
        mode = "energy counter" if meta.get("mode") == "energy_counter" else "instantaneous power"
        n = meta.get("device_count")
        more = f"; {n} GPUs here: nvml:devices=all reads every one" if isinstance(n, int) and n > 1 else ""
        return _row("nvml", "nvml:index=0", True, "measured",
                    f"GPU 0: {meta.get('name', '?')}, driver {meta.get('driver_version', '?')}, {mode}{more}",
                    detail=meta)
    if isinstance(err, FileNotFoundError):
        fix = ("install the NVIDIA driver (it provides libnvidia-ml.so.1), or point ENERGYPROF_NVML_LIB at it; "
               "`nvidia-smi` must work")
    elif isinstance(err, PermissionError):
        fix = "run as a user allowed to query the GPU (root, or see your distribution's nvidia device permissions)"
    else:
        fix = "check that `nvidia-smi` works; reload the driver or reboot if the GPU is lost"
    return _row("nvml", "nvml:index=0", False, "measured", _text(err), fix)


def _rapl_row() -> Dict[str, object]:
    ok, meta, err = _probe("rapl", {})
    if ok:
        zones = meta.get("zones", [])
        return _row("rapl", "rapl", True, "measured",
                    f"{meta.get('packages', '?')} package(s) under {meta.get('root', '?')}: " + "; ".join(zones),
                    detail=meta)
    if isinstance(err, PermissionError):
        fix = f"{RAPL_CHMOD}   ({RAPL_PERSIST})"
    elif isinstance(err, FileNotFoundError):
        fix = ("sudo modprobe intel_rapl_msr   (bare-metal Intel or AMD Zen Linux only; "
               "virtual machines and ARM CPUs expose no RAPL)")
    else:
        fix = "check that the energy_uj files under /sys/class/powercap are readable"
    return _row("rapl", "rapl", False, "measured", _text(err), fix)


def _estimate_row() -> Dict[str, object]:
    ok, meta, err = _probe("estimate", {})
    if ok:
        return _row("estimate", "estimate", True, "estimated",
                    "no sensor needed: CPU power modelled from this process's CPU time (uncertain by a factor "
                    "of ~2 unless watts_per_core is set for this CPU; docs/sources.md)", detail=meta)
    return _row("estimate", "estimate", False, "estimated", _text(err))


def _synthetic_row() -> Dict[str, object]:
    return _row("synthetic", "synthetic", True, "simulated",
                "always available: programmable ground truth for tests and demos, not a measurement")


def doctor() -> List[Dict[str, object]]:
    """One dict per source: does it work here, why (not), and the command that fixes it.

    Sources in ``auto``'s order, then ``synthetic``.  See the module docstring for
    the keys.
    """
    return [
        _ioreport_row(sys.platform),
        _powermetrics_row(sys.platform, os.geteuid(), _sudo_allows_powermetrics, os.path.exists(POWERMETRICS)),
        _nvml_row(),
        _rapl_row(),
        _estimate_row(),
        _synthetic_row(),
    ]


def _cuda_available() -> Tuple[bool, str]:
    """Is there a CUDA device the model can run on?  torch decides when importable."""
    try:
        import torch
    except ImportError:
        return True, "torch is not installed; NVML sees a GPU"
    if torch.cuda.is_available():
        return True, "torch.cuda.is_available() is True"
    return False, ("torch.cuda.is_available() is False: the model would run on the CPU, so the GPU's "
                   "energy would not be the model's")


def resolve_auto(rows: Optional[List[Dict[str, object]]] = None) -> Tuple[str, List[Dict[str, object]]]:
    """The spec ``source="auto"`` uses, and why each other source was not used.

    Tries ioreport, powermetrics (macOS), nvml (only with a CUDA device the model can
    use), rapl, then estimate (always works).  Returns ``(spec, rows)`` where rows
    are :func:`doctor`'s rows (``rows`` may be passed in to avoid probing twice)
    for the ``auto`` candidates, each with ``chosen`` (bool) and ``decision`` (why
    it was or was not used).
    """
    rows = [dict(r) for r in (rows if rows is not None else doctor()) if r["source"] in AUTO_ORDER]
    rows.sort(key=lambda r: AUTO_ORDER.index(r["source"]))
    chosen: Optional[Dict[str, object]] = None
    for r in rows:
        r["chosen"] = False
        if chosen is not None:
            r["decision"] = f"not needed: {chosen['source']} comes first" + ("" if r["available"] else
                                                                              f" (also: {r['reason']})")
            continue
        if not r["available"]:
            r["decision"] = f"unavailable: {r['reason']}"
            continue
        if r["source"] == "nvml":
            cuda, why = _cuda_available()
            if not cuda:
                r["decision"] = f"skipped: {why}"
                continue
        r["chosen"] = True
        r["decision"] = "chosen: " + str(r["reason"])
        chosen = r
    if chosen is None:  # estimate failing means getrusage failed: nothing sensible is left
        raise RuntimeError("no power source works here, not even the estimate: "
                           + "; ".join(f"{r['source']}: {r['reason']}" for r in rows))
    return str(chosen["spec"]), rows


class _CallableModule(types.ModuleType):
    """Lets ``energyprof.measure.doctor()`` work while ``energyprof.measure.doctor.resolve_auto`` stays a module attribute."""

    def __call__(self) -> List[Dict[str, object]]:
        return doctor()


sys.modules[__name__].__class__ = _CallableModule
