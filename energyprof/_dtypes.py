"""numpy structured dtypes of everything a run records.

These are the shapes shared by the live session (energyprof.measure.session), the store
(energyprof.store.db and csrc/threads/ep_sqlite.c: one table column per field), the analyses and
the report.  Units are in the names: ``_ns`` monotonic nanoseconds (energyprof's one
clock, ``_core.now_ns()``), ``_s`` seconds, ``_j`` joules, ``_w`` watts.

Energy per hardware domain is one column per domain (``cpu_j`` ... ``package_j``,
NaN where the source does not measure that domain); ``energy_j`` is the run's
*total* figure: the package domain where the source reports one, else the sum of the
measured domains (cpu + gpu + ane + dram).  energyprof.measure.session decides it once per
run and records the rule in ``summary()["total_rule"]``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

DOMAINS = ("cpu", "gpu", "ane", "dram", "package")

_DOMAIN_J = [(f"{d}_j", "<f8") for d in DOMAINS]

# Bits of the ``flags`` column of sections, tokens and calls: how the row's energy was
# measured.  Bits 0-3 are the C integrator's window flags (csrc/kernels/ep_integrate.h,
# ``_core.WIN_*``); bits from 8 up are set in Python by energyprof.measure.integrate's
# gap pre-pass, never by C.  docs/methodology.md says what each one means for a row.
FLAG_OUTSIDE = 1 << 0     #: the window is not wholly inside the sampled range: energy NaN
FLAG_GAP = 1 << 1         #: touches a long gap (or NaN stretch): tokens/calls NaN, sections interpolated
FLAG_NAN = 1 << 2         #: touches a NaN value of a measured domain (bridged or long)
FLAG_UNRESOLVED = 1 << 3  #: no whole sample inside: energy split by time within a sample
FLAG_BRIDGED = 1 << 8     #: includes power interpolated over a gap or NaN sample

#: name of each flag bit, lowest first (``flag_names`` decodes a flags word).
FLAG_NAMES = {FLAG_OUTSIDE: "outside", FLAG_GAP: "gap", FLAG_NAN: "nan", FLAG_UNRESOLVED: "unresolved",
              FLAG_BRIDGED: "bridged"}


def concat_records(parts: Sequence[np.ndarray], dtype=None) -> np.ndarray:
    """``np.concatenate(parts)`` for 1-D record arrays, as a new array.

    Where every part is a C-contiguous 1-D array of one structured dtype, the rows are
    joined as raw bytes: numpy's own concatenate promotes structured dtypes field by field
    in Python (about 10 µs a call plus per part, 65 µs for five 20-row sample chunks against
    4.5 µs here).  Anything else goes to ``np.concatenate``.  ``dtype``: the result's dtype
    when ``parts`` is empty (required then).
    """
    parts = list(parts)
    if not parts:
        if dtype is None:
            raise ValueError("concat_records: no parts and no dtype")
        return np.zeros(0, dtype)
    dt = parts[0].dtype
    if dt.names is None or not all(p.dtype == dt and p.ndim == 1 and p.flags.c_contiguous for p in parts):
        return np.concatenate(parts)
    return np.concatenate([p.view(np.uint8) for p in parts]).view(dt)


#: The groups ``ep.resolve(by="component")`` estimates a power for, and which canonical
#: component names (energyprof.measure.arch.COMPONENTS) fall in each.  "other" is the time
#: inside no hooked call of another group (decoder layers outside their parts, the model's
#: forward between modules, everything outside a forward).  The synthetic source's attn_w /
#: mlp_w follow the "attn" / "mlp" groups of the innermost running hooked call.
COMPONENT_GROUPS = ("attn", "mlp", "norm", "embed", "lm_head", "other")
_GROUP_MEMBERS = {
    "attn": ("attn", "q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj"),
    "mlp": ("mlp", "gate_proj", "up_proj", "gate_up_proj", "down_proj", "router", "experts"),
    "norm": ("input_norm", "post_attn_norm", "pre_ffn_norm", "post_ffn_norm", "q_norm", "k_norm", "final_norm"),
    "embed": ("embed",),
    "lm_head": ("lm_head",),
}


def component_group(component: str) -> str:
    """The ``COMPONENT_GROUPS`` entry a canonical component name belongs to.

    >>> component_group("q_proj"), component_group("expert.3"), component_group("layer")
    ('attn', 'mlp', 'other')
    """
    c = str(component)
    if c.startswith("expert."):
        return "mlp"
    for group, members in _GROUP_MEMBERS.items():
        if c in members:
            return group
    return "other"


def flag_names(flags: int) -> list:
    """The names of the bits set in one ``flags`` word, lowest bit first.

    >>> flag_names(FLAG_UNRESOLVED | FLAG_BRIDGED)
    ['unresolved', 'bridged']
    """
    f = int(flags)
    return [name for bit, name in FLAG_NAMES.items() if f & bit]


#: One row per window that energy was integrated over: the run, its phases
#: (pre_inference, prefill, decode, post_inference, baseline) and user sections.
SECTION_DTYPE = np.dtype(
    [
        ("section_id", "<i4"),       # 0 = the run itself
        ("parent_id", "<i4"),        # -1 for the run
        ("kind", "U8"),              # "run" | "phase" | "section" | "baseline"
        ("name", "U64"),
        ("t_start_ns", "<i8"),
        ("t_end_ns", "<i8"),
        ("duration_s", "<f8"),
        ("energy_j", "<f8"),
        *_DOMAIN_J,
        ("net_energy_j", "<f8"),     # energy_j - baseline_power_w * duration_s
        ("unattributed_j", "<f8"),   # energy_j - sum(children.energy_j)
        ("tokens", "<i8"),           # tokens attributed to this window (input for prefill, output for decode)
        ("samples_in_window", "<i4"),
        ("resolved", "?"),           # the window spans at least one whole sample
        ("flags", "<u4"),            # FLAG_* bits: how the energy was measured
        ("rank", "<i4"),             # whose devices' energy this is: -1 = all ranks (a merged run), else the rank
    ]
)

#: One row per decode step (one new token per sequence: ``n_tokens`` = batch size).
#: Step k spans from its forward's start to step k+1's start (the last one to the
#: end of its forward), so sum(tokens["energy_j"]) == decode phase energy exactly.
#: The first generated token comes out of the prefill forward and is counted there.
TOKEN_DTYPE = np.dtype(
    [
        ("step", "<i4"),             # 1 .. n_decode_steps (0 is the prefill forward)
        ("n_tokens", "<i4"),
        ("t_start_ns", "<i8"),
        ("t_end_ns", "<i8"),
        ("duration_s", "<f8"),
        ("energy_j", "<f8"),
        *_DOMAIN_J,
        ("j_per_token", "<f8"),
        ("samples_in_window", "<i4"),
        ("resolved", "?"),
        ("flags", "<u4"),
        ("rank", "<i4"),             # the rank that produced the token (a merged run: the replica group's first rank)
    ]
)

#: One row per hooked module *call*: a decoder layer (component == "layer") or one
#: of its components (q_proj, k_proj, v_proj, o_proj, qkv_proj, attn, gate_proj,
#: up_proj, down_proj, mlp, input_norm, post_attn_norm, router, expert.N, ...) or a
#: model-level module (layer == -1: embed, final_norm, lm_head).
#: ``step`` is 0 for the prefill forward, k for decode step k.
CALL_DTYPE = np.dtype(
    [
        ("call_id", "<i4"),          # unique within the run (layers and components share the numbering)
        ("parent_id", "<i4"),        # call_id of the enclosing hooked call (attn for q_proj, the layer for attn), -1 = the phase
        ("layer", "<i4"),
        ("component", "U32"),
        ("step", "<i4"),
        ("call", "<i4"),             # n-th call of this module within the step (usually 0)
        ("t_start_ns", "<i8"),
        ("t_end_ns", "<i8"),
        ("duration_s", "<f8"),
        ("energy_j", "<f8"),
        *_DOMAIN_J,
        ("unattributed_j", "<f8"),   # energy_j - sum(children.energy_j)
        ("samples_in_window", "<i4"),
        ("resolved", "?"),
        ("flags", "<u4"),
        # mode="deep" only (NaN otherwise): statistics of the module's output tensor
        ("act_mean", "<f8"),
        ("act_std", "<f8"),
        ("act_max", "<f8"),
        ("act_sparsity", "<f8"),     # share of |x| < sparse_below (ep.run; default 1e-3)
        ("act_abs_mean", "<f8"),     # mean of |x|
        ("rank", "<i4"),             # the rank whose model shard made the call (0 in a one-process run)
    ]
)

#: mode="deep": one row per (attention call, head): statistics of the attention weights
#: (energyprof.measure.deep).  ``call_id`` is the call of the ``attn.softmax`` op row in ``s.ops``.
HEAD_DTYPE = np.dtype(
    [
        ("call_id", "<i4"),
        ("layer", "<i4"),
        ("step", "<i4"),
        ("head", "<i4"),
        ("n_queries", "<i8"),        # query rows averaged over (batch x query positions)
        ("entropy", "<f8"),          # nats, mean over query rows of -sum p log p
        ("max_weight", "<f8"),       # mean over query rows of the largest weight
        ("sparsity", "<f8"),         # share of the unmasked weights below 1e-3
    ]
)

# --------------------------------------------------------------------------- the total rule
_SAMPLE_W = [f"{d}_w" for d in DOMAINS]
_PKG = DOMAINS.index("package")
_DRAM = DOMAINS.index("dram")


def measured_domains(samples: np.ndarray) -> list[bool]:
    """Which domains the source measured (not NaN in every sample)."""
    if len(samples) == 0:
        return [False] * len(DOMAINS)
    return [not np.isnan(samples[c]).all() for c in _SAMPLE_W]


def total_rule(measured: Sequence[bool]) -> str:
    """The rule that turns per-domain energy into one total, decided once per run.

    RAPL-style sources report a package domain that already contains its cores
    (``cpu``); DRAM is outside the package.  Sources without a package domain
    (powermetrics, NVML, synthetic) report disjoint domains that add up.
    """
    if measured[_PKG]:
        return "package + dram" if measured[_DRAM] else "package"
    names = [d for d, m in zip(DOMAINS, measured) if m]
    return " + ".join(names) if names else "none"


def total_columns(measured: Sequence[bool]) -> list[int]:
    """Indices (into DOMAINS) of the domains that add up to the total under ``total_rule``."""
    if measured[_PKG]:
        return [_PKG] + ([_DRAM] if measured[_DRAM] else [])
    return [i for i, m in enumerate(measured) if m]


def total_of(domain_j: np.ndarray, measured: Sequence[bool]) -> np.ndarray:
    """Total energy per row of an (M, 5) domain array under ``total_rule``."""
    domain_j = np.asarray(domain_j, dtype=np.float64)
    if domain_j.ndim == 1:
        domain_j = domain_j[None, :]
    cols = total_columns(measured)
    if not cols:
        return np.full(domain_j.shape[0], np.nan)
    if len(cols) == 1:
        return domain_j[:, cols[0]].copy()
    sub = domain_j[:, cols]
    # a row unknown in every domain is unknown, never 0 J (nansum of nothing is 0)
    unknown = np.isnan(sub)
    return np.where(unknown.all(axis=1), np.nan, np.where(unknown, 0.0, sub).sum(axis=1))
#: Text recorded with a run (``ep.run(..., store_text=True)``): the prompt and the generated
#: text of each sequence, and the text of each generated token.  ``kind`` is ``"prompt"``,
#: ``"output"`` or ``"token"``; ``step`` is the generation step of a token (0 = the token
#: that came out of the prefill forward, k = decode step k; -1 for prompt and output);
#: ``seq`` the sequence in the batch.  The width of ``text`` is that of the longest text of
#: the run (:func:`text_dtype`); this default is the narrowest.
TEXT_DTYPE = np.dtype(
    [
        ("kind", "U8"),
        ("step", "<i4"),
        ("seq", "<i4"),
        ("text", "U1"),
    ]
)


def text_dtype(width: int) -> np.dtype:
    """TEXT_DTYPE with room for ``width`` characters of text (at least 1)."""
    return np.dtype([("kind", "U8"), ("step", "<i4"), ("seq", "<i4"), ("text", f"U{max(1, int(width))}")])

#: One row per rank of a multi-rank run (energyprof.measure.distributed): who it was, where
#: it ran, how its clock was aligned to rank 0's, and the energy its own source measured over
#: the run window.  ``host_leader`` is the rank that sampled the host-wide sources (RAPL,
#: estimate) of this rank's host; a rank that is not its host's leader has NaN energy for
#: those sources (counted once, on the leader).
RANK_DTYPE = np.dtype(
    [
        ("rank", "<i4"),
        ("local_rank", "<i4"),
        ("host", "U64"),
        ("host_leader", "<i4"),
        ("replica_group", "<i4"),    # tokens are counted once per replica group
        ("device", "U32"),
        ("source", "U128"),          # the spec this rank sampled ("" when it sampled none)
        ("source_label", "U16"),     # measured | estimated | simulated | "" (none)
        ("status", "U16"),           # completed | interrupted | missing (the rank died or never reported)
        ("clock_offset_ns", "<i8"),  # add to this rank's monotonic ns to get rank 0's
        ("clock_uncertainty_ns", "<i8"),   # |error of the offset| <= this (half the best round trip)
        ("t_start_ns", "<i8"),       # the run window on rank 0's clock
        ("t_end_ns", "<i8"),
        ("energy_j", "<f8"),         # total over this rank's source in the run window (NaN: none)
        *_DOMAIN_J,
        ("n_samples", "<i8"),
        ("input_tokens", "<i8"),
        ("output_tokens", "<i8"),
    ]
)

#: One GPU's share of a power sample, for a source reading several GPUs in one process
#: (``nvml:devices=0,1`` / ``all``; energyprof.measure.devices).  Each row has the times,
#: kind and flags of the run's sample it is a share of (whose ``gpu_w`` is the sum of its
#: devices' ``power_w``); ``device`` is the GPU's NVML index.  These rows are a breakdown,
#: never added to a run's energy: the gpu domain already holds them.
DEVICE_SAMPLE_DTYPE = np.dtype(
    [
        ("t_start_ns", "<i8"),
        ("t_end_ns", "<i8"),
        ("kind", "<i4"),             # as the sample's: INSTANT or INTERVAL
        ("flags", "<u4"),            # the sample's SFLAG_* bits (final, boundary, suspect)
        ("device", "<i4"),           # the GPU's index (nvmlDeviceGetHandleByIndex)
        ("power_w", "<f8"),          # this GPU's power over the sample
        ("rank", "<i4"),             # the rank whose process read it (0 in a one-process run)
    ]
)

LAYER_DTYPE = CALL_DTYPE
COMPONENT_DTYPE = CALL_DTYPE

#: Raw hook events from the C span buffer (csrc/threads/ep_hooks.c).
EVENT_DTYPE = np.dtype([("t_ns", "<i8"), ("span_id", "<i4"), ("kind", "<i4")])  # kind 0 begin, 1 end

__all__ = ["FLAG_OUTSIDE", "FLAG_GAP", "FLAG_NAN", "FLAG_UNRESOLVED", "FLAG_BRIDGED", "FLAG_NAMES", "flag_names",
           "DOMAINS", "SECTION_DTYPE", "TOKEN_DTYPE", "CALL_DTYPE", "LAYER_DTYPE", "COMPONENT_DTYPE", "EVENT_DTYPE",
           "HEAD_DTYPE", "TEXT_DTYPE", "text_dtype", "RANK_DTYPE", "DEVICE_SAMPLE_DTYPE", "measured_domains", "total_rule", "total_columns",
           "total_of"]
