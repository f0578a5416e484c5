"""Sweeps: run a grid of batch sizes × prompt lengths × output lengths under ``ep.run``.

>>> import energyprof as ep
>>> from energyprof.tiny import tiny_model
>>> res = ep.sweep(tiny_model("tiny-llama"), batch_sizes=[1, 2], prompt_lengths=[8], max_new_tokens=[4],
...                repeats=2, source="synthetic:power_w=10,active_w=20,period_ms=1", save=False, progress=False)
>>> len(res.table), int(res.table["n"][0])
(2, 2)

Each grid point runs ``repeats`` times with the same prompt (random token ids from a
seeded generator, or ByteTokenizer text); the result and its analyses are
:mod:`energyprof.analysis.sweep`.
"""
from __future__ import annotations

import itertools
import time
import uuid
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

from ..analysis.sweep import SweepResult
from ..store.rundata import _float as _f

__all__ = ["sweep"]

_TEXT = ("The energy of a token depends on the model, the batch, the context and the machine. ")


def _resolve_model(model_factory_or_model: Any):
    import torch

    if isinstance(model_factory_or_model, torch.nn.Module):
        return model_factory_or_model
    if isinstance(model_factory_or_model, str):
        from ..tiny import TINY_MODELS

        if model_factory_or_model not in TINY_MODELS:
            raise ValueError(f"unknown tiny model {model_factory_or_model!r}; valid: {', '.join(sorted(TINY_MODELS))}"
                             " (or pass a torch model or a factory)")
        return TINY_MODELS[model_factory_or_model]()
    if callable(model_factory_or_model):
        m = model_factory_or_model()
        if not isinstance(m, torch.nn.Module):
            raise TypeError(f"the model factory returned {type(m).__name__}, not a torch.nn.Module")
        return m
    raise TypeError(f"sweep() needs a torch model, a factory returning one, or a tiny model name; got "
                    f"{type(model_factory_or_model).__name__}")


def _ints(name: str, values: Any) -> List[int]:
    if isinstance(values, (int, np.integer)):
        values = [values]
    vals = [int(v) for v in values]
    if not vals:
        raise ValueError(f"{name} must not be empty")
    if any(v < 1 for v in vals):
        raise ValueError(f"{name} must all be >= 1, got {vals}")
    return vals


def _prompt(batch: int, length: int, vocab: int, prompts: str, seed: int, device: Any = None):
    import torch

    if prompts == "random":
        rng = np.random.default_rng(seed)
        # ids 3.. avoid pad/bos/eos of the tiny models; stay inside the vocabulary
        hi = max(4, min(int(vocab), 3 + 256))
        ids = rng.integers(3, hi, size=(batch, length))
    elif prompts == "text":
        from ..tiny import ByteTokenizer

        tok = ByteTokenizer(max(int(vocab), 259))
        text = (_TEXT * (length // len(_TEXT) + 1))
        one = tok.encode(text)[:length]
        ids = np.array([one] * batch)
    else:
        raise ValueError(f"prompts must be 'random' or 'text', got {prompts!r}")
    ids = torch.as_tensor(ids, dtype=torch.long, device=device)
    return ids, torch.ones_like(ids)


class _Bar:
    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.bar = total, enabled, None

    def __enter__(self):
        if self.enabled:
            try:
                from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

                self.bar = Progress(TextColumn("sweep"), BarColumn(), TextColumn("{task.completed}/{task.total} runs"),
                                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                    transient=True)
                self.bar.__enter__()
                self.task = self.bar.add_task("sweep", total=self.total, info="")
            except ImportError:
                self.bar = None
        return self

    def step(self, info: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, info=info)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


class _nullctx:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _engines(model: Any, engines: Optional[Sequence[Any]], options: Optional[Dict[str, Dict[str, Any]]]) -> list:
    """The engines to run, in order (``[None]``: the model as it is)."""
    from .engines import Engine, make_engine

    if engines is None:
        return [None]
    if isinstance(engines, (str, Engine)):
        engines = [engines]
    plan, seen = [], set()
    for e in engines:
        eng = e if isinstance(e, Engine) else make_engine(str(e), model, **dict((options or {}).get(str(e), {})))
        if eng.name in seen:
            raise ValueError(f"engine {eng.name!r} is listed twice")
        seen.add(eng.name)
        plan.append(eng)
    if not plan:
        raise ValueError("engines must not be empty (None runs the model as it is)")
    return plan


def sweep(model_factory_or_model: Any, batch_sizes: Sequence[int] = (1,), prompt_lengths: Sequence[int] = (32,),
          max_new_tokens: Sequence[int] = (32,), repeats: int = 3, source: str = "auto", db: Any = None,
          baseline_s: float = 0.0, progress: bool = True, tags: Optional[Iterable[str]] = None,
          save: bool = True, mode: str = "minimal", prompts: str = "random", seed: int = 0, warmup: bool = True,
          sweep_id: Optional[str] = None, interleave: bool = False, engines: Optional[Sequence[Any]] = None,
          engine_options: Optional[Dict[str, Dict[str, Any]]] = None, **run_kw: Any) -> SweepResult:
    """Run ``model.generate`` over a grid under :func:`energyprof.run` and tabulate the results.

    Parameters
    ----------
    model_factory_or_model: a torch model, a zero-argument factory returning one (called
        once), or a tiny model name (``"tiny-llama"``).
    batch_sizes, prompt_lengths, max_new_tokens: the grid (every combination runs).
    repeats: runs per grid point (the 95 % intervals need at least 2).
    source, db, baseline_s, mode, save: passed to :func:`energyprof.run` (``mode="minimal"``
        by default: phases and tokens, no per-layer hooks).
    progress: show a rich progress bar.
    tags: extra tags for every run (the sweep adds ``sweep:<id>`` and the grid point).
    prompts: ``"random"`` token ids (seeded) or ``"text"`` (ByteTokenizer bytes of a fixed text).
    warmup: one untimed ``generate`` first, so the first grid point does not pay start-up costs.
    interleave: run the whole grid once per repeat (repeat-major order) instead of all repeats
        of a grid point back to back, so slow drifts (temperature, clocks) spread over every point.
    engines: the engine comparison: names from :data:`energyprof.measure.engines.ENGINES`
        (``"eager"``, ``"sdpa"``, ``"compile"``, ``"onnxruntime"``) or
        :class:`~energyprof.measure.engines.Engine` objects; the whole grid runs once per engine
        (each run tagged ``engine=<name>``, its summary's ``engine`` set) and
        :meth:`SweepResult.engine_table` gives J/token and tokens/J per engine with 95 %
        intervals and the source label.  None (default): the model as it is, hooked.
    engine_options: per engine name, keywords for its adapter (``{"compile": {"backend": "eager"}}``).
    run_kw: other keywords for :func:`energyprof.run` (``interval_ms``, ``sync``...).

    Returns a :class:`SweepResult`.
    """
    import torch

    from .session import _model_device, run as ep_run

    bs = _ints("batch_sizes", batch_sizes)
    pls = _ints("prompt_lengths", prompt_lengths)
    nts = _ints("max_new_tokens", max_new_tokens)
    if int(repeats) < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    model = _resolve_model(model_factory_or_model)
    sid = sweep_id or time.strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:6]
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 259) or 259)
    pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    gen_base = dict(do_sample=False)
    if pad is not None:
        gen_base["pad_token_id"] = pad
    device = _model_device(model)
    grid = list(itertools.product(bs, pls, nts))
    if interleave:
        order = [(gi, rep) for rep in range(int(repeats)) for gi in range(len(grid))]
    else:
        order = [(gi, rep) for gi in range(len(grid)) for rep in range(int(repeats))]
    out: List[Dict[str, Any]] = []
    plan = _engines(model, engines, engine_options)
    with _Bar(len(order) * len(plan), progress) as bar:
        for eng in plan:
            with eng if eng is not None else _nullctx():
                if warmup:   # untimed: start-up costs, an engine's compile, happen here
                    ids, mask = _prompt(bs[0], pls[0], vocab, prompts, seed, device)
                    if eng is None:
                        with torch.no_grad():
                            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, min_new_tokens=2,
                                           **gen_base)
                    else:
                        eng.generate(None, ids, mask, max_new_tokens=2)
                for gi, rep in order:
                    b, p, n = grid[gi]
                    # the same prompt for every repeat of a grid point (and every engine)
                    ids, mask = _prompt(b, p, vocab, prompts, seed + gi, device)
                    run_tags = list(tags or []) + [f"sweep:{sid}", f"batch_size={b}", f"prompt_length={p}",
                                                   f"max_new_tokens={n}"]
                    label = "" if eng is None else f" {eng.name}"
                    kw = dict(run_kw)
                    if eng is not None:
                        run_tags.append(f"engine={eng.name}")
                        kw["engine"] = eng.name
                    target = model if eng is None else eng.run_target()
                    with ep_run(target, source=source, mode=mode, baseline_s=baseline_s, db=db, save=save,
                                name=f"sweep {sid}{label} b{b} p{p} n{n} r{rep}", tags=run_tags, **kw) as s:
                        if eng is None:
                            with torch.no_grad():
                                model.generate(input_ids=ids, attention_mask=mask,
                                               **dict(gen_base, max_new_tokens=n, min_new_tokens=n))
                        else:
                            eng.generate(s, ids, mask, max_new_tokens=n)
                    summ = s.summary()
                    out.append(summ)
                    bar.step(f"{label.strip() or 'model'} b={b} p={p} n={n}: "
                             f"{_f(summ.get('j_per_output_token')):.3g} J/token")
    return SweepResult(sid, out)
