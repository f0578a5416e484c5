"""Mixture-of-experts runs: how many tokens the router sent to each expert, per layer, and
the experts' energy per expert.

A forward hook on each layer's router (component ``router``) reads what it returned: the
chosen experts where the router returns them (transformers 5's ``MixtralTopKRouter``
returns ``(logits, scores, indices)``), else the top-k of its logits (a bare ``nn.Linear``
gate; the softmax that follows is monotonic, so the top-k of the logits is the top-k of
the probabilities).  The counts stay on the device until the run ends (no sync per call).

Energy per expert: where every expert is its own module (``expert.N``, transformers 4) it is
measured per call like any component.  Where the experts are fused into one module
(``experts``, transformers 5) only their sum is measured; it is split between the experts
in proportion to the tokens routed to each in the same call, and labelled an estimate:
equal cost per routed token is an assumption (padding, grouped kernels and cache effects
break it).

>>> import torch, energyprof as ep
>>> from energyprof.tiny import tiny_model
>>> model = tiny_model("tiny-mixtral")
>>> with ep.run(model, source="synthetic:power_w=10", baseline_s=0, save=False) as s:
...     _ = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, do_sample=False)
>>> moe = s.summary()["moe"]
>>> [sum(l["tokens_routed"]) for l in moe["layers"]]   # (3 prompt + 1 decoded) tokens x 2 experts each
[8, 8]
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

__all__ = ["RouterRecorder", "SPLIT_LABEL"]

#: How the energy of fused experts is split, as the summary says it.
SPLIT_LABEL = "estimated: the fused experts' measured energy split by the tokens routed to each expert"


class RouterRecorder:
    """Records routed-token counts per router call of a model (see the module docstring).

    ``amap`` is the model's :class:`energyprof.measure.arch.ArchMap`; nothing is recorded
    for a model without routers.
    """

    def __init__(self, amap: Any) -> None:
        cfg = amap.config or {}
        self.n_experts = int(cfg.get("n_experts") or 0)
        self.top_k = int(cfg.get("experts_per_token") or 0)
        self.routers = [r for r in amap.components if r.component == "router"]
        self._raw: Dict[int, List[Any]] = {}
        self._handles: list = []

    @property
    def active(self) -> bool:
        """True for a model with routers and a known expert count."""
        return bool(self.routers) and self.n_experts > 0

    def install(self) -> None:
        """Register a forward hook on every router."""
        if not self.active:
            return
        for ref in self.routers:
            self._handles.append(ref.module.register_forward_hook(self._make_hook(ref.layer, ref.module)))

    def remove(self) -> None:
        """Remove the hooks (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def _make_hook(self, layer: int, module: Any):
        import torch

        n_e = self.n_experts
        k = int(getattr(module, "top_k", 0) or self.top_k or 1)

        def hook(mod, args, output):
            try:
                with torch.no_grad():
                    if isinstance(output, (tuple, list)) and len(output) >= 3 and torch.is_tensor(output[2]) \
                            and not output[2].is_floating_point():
                        idx = output[2]                       # the experts the router chose
                    else:
                        logits = output[0] if isinstance(output, (tuple, list)) else output
                        idx = torch.topk(logits.reshape(-1, logits.shape[-1]), min(k, logits.shape[-1]), dim=-1).indices
                    counts = torch.bincount(idx.reshape(-1), minlength=n_e)[:n_e]
                self._raw.setdefault(layer, []).append(counts)
            except Exception:   # never break the model: this call's counts are lost, the rest still count
                self._raw.setdefault(layer, []).append(None)
            return None

        return hook

    def finish(self, components: np.ndarray) -> Optional[Dict[str, Any]]:
        """``summary["moe"]``: per layer the tokens routed to each expert and the energy per expert.

        ``components`` are the run's component calls (``CALL_DTYPE``); the k-th ``experts``
        call of a layer is paired with the k-th router call of that layer.
        """
        if not self.active:
            return None
        layers = []
        for layer in sorted(self._raw):
            per_call = [np.zeros(self.n_experts, np.int64) if c is None else c.detach().cpu().numpy().astype(np.int64)
                        for c in self._raw[layer]]
            counts = np.sum(per_call, axis=0) if per_call else np.zeros(self.n_experts, np.int64)
            row: Dict[str, Any] = {"layer": int(layer), "router_calls": len(per_call),
                                   "tokens_routed": [int(v) for v in counts]}
            sel = components[components["layer"] == layer] if len(components) else components
            fused = sel[sel["component"] == "experts"] if len(sel) else sel
            each = {int(str(c).split(".")[1]): sel[sel["component"] == c] for c in
                    sorted(set(sel["component"].tolist())) if str(c).startswith("expert.")} if len(sel) else {}
            e_j = np.full(self.n_experts, np.nan)
            if len(fused):
                e_j[:] = 0.0
                n = min(len(fused), len(per_call))
                for i in range(n):
                    tot = per_call[i].sum()
                    if tot > 0:
                        e_j += float(fused["energy_j"][i]) * per_call[i] / tot
                row["experts_energy_j"] = float(fused["energy_j"].sum())
                row["expert_energy_label"] = SPLIT_LABEL
                row["resolved_share"] = float(np.mean(fused["resolved"]))
                row["paired_calls"] = int(n)
            elif each:
                for e, rows in each.items():
                    if 0 <= e < self.n_experts:
                        e_j[e] = float(rows["energy_j"].sum())
                row["experts_energy_j"] = float(np.nansum(e_j))
                row["expert_energy_label"] = "measured per expert module"
                allr = np.concatenate(list(each.values()))
                row["resolved_share"] = float(np.mean(allr["resolved"]))
            row["expert_energy_j"] = [float(v) for v in e_j]
            layers.append(row)
        return {"n_experts": self.n_experts, "experts_per_token": self.top_k, "layers": layers,
                "routing_from": "router output (chosen experts, else top-k of the logits)"}
