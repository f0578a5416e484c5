"""What the benchmark scripts share: the spread of a ratio over rounds, and the
*headline* lines that benchmarks/collect.py turns into the summary table of
docs/benchmarks.md.

How a benchmark plugs into the summary table
--------------------------------------------
Print one line per headline figure; with ``--write`` (:func:`add_write_arg`, the one
output switch of every script, passed by ``make bench``) the output is also saved as
``docs/benchmarks/<name>.md`` (:func:`save`):

    from _report import headline          # benchmarks/ is the script's own directory
    print(headline("what is compared", goal=">= 5x", result="4.4x (95 % CI 4.2-4.6)", met=False))

which gives an HTML comment (invisible on the rendered page, one line, JSON inside)::

    <!-- headline {"what": "what is compared", "goal": ">= 5x", "result": "4.4x (95 % CI 4.2-4.6)", "met": false} -->

``collect.py`` reads every such line of every ``docs/benchmarks/<name>.md`` it knows
(``PARTS`` there), in order, and builds the table from them; a page without one gets a
row saying so.  ``met`` is true, false, ``"unclear"`` (the point estimate meets the goal
but its interval reaches past it: :func:`verdict`), or null (no goal, "measured and
stated").
Nothing is typed into the table by hand.

The spread
----------
Rounds interleave the variants (the machine is shared and drifts), so a round is the
unit of resampling: :func:`bootstrap_ci` resamples round indices with replacement, the
same indices for every variant (paired), and recomputes the statistic, e.g. a ratio of
medians, giving a percentile interval.
"""
from __future__ import annotations

import json
import os
import re
import statistics
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

_HEADLINE = re.compile(r"^<!-- headline (\{.*\}) -->$")


def headline(what: str, goal: str, result: str, met: Optional[bool]) -> str:
    """One headline line for collect.py (see the module docstring)."""
    return "<!-- headline " + json.dumps({"what": what, "goal": goal, "result": result, "met": met},
                                         ensure_ascii=False) + " -->"


def parse_headlines(text: str) -> List[Dict[str, object]]:
    """The headline dicts of a page, in order."""
    out = []
    for line in text.splitlines():
        m = _HEADLINE.match(line.strip())
        if m:
            out.append(json.loads(m.group(1)))
    return out


def strip_headlines(text: str) -> str:
    """The page without its headline lines."""
    return "\n".join(l for l in text.splitlines() if not _HEADLINE.match(l.strip()))


def bootstrap_ci(stat: Callable[[np.ndarray], float], n_rounds: int, n_boot: int = 4000, level: float = 0.95,
                 seed: int = 0) -> Tuple[float, float, float]:
    """(statistic on all rounds, low, high): a percentile bootstrap over round indices."""
    rng = np.random.default_rng(seed)
    full = float(stat(np.arange(n_rounds)))
    boots = np.array([stat(rng.integers(0, n_rounds, n_rounds)) for _ in range(n_boot)], dtype=np.float64)
    boots = boots[np.isfinite(boots)]
    a = (1 - level) / 2
    return full, float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))


def ratio_of_medians(num: Sequence[float], den: Sequence[float], base: Optional[Sequence[float]] = None,
                     **kw) -> Tuple[float, float, float]:
    """median(num) / median(den) with its bootstrap interval.  With ``base`` (measured in
    the same rounds) the ratio of what each adds over it, differenced round by round:
    median(num - base) / median(den - base), which cancels the drift between rounds."""
    x, y = np.asarray(num, float), np.asarray(den, float)
    if base is not None:
        b = np.asarray(base, float)
        x, y = x - b, y - b

    def stat(idx: np.ndarray) -> float:
        d = float(np.median(y[idx]))
        return float(np.median(x[idx])) / d if d != 0 else float("nan")

    return bootstrap_ci(stat, len(x), **kw)


def verdict(r: Tuple[float, float, float], goal: float, higher_is_better: bool):
    """True when the whole 95 % interval meets the goal, False when the point estimate
    misses it, "unclear" when the point meets it but the interval reaches past it."""
    v, lo, hi = r
    good = (lambda x: x >= goal) if higher_is_better else (lambda x: x <= goal)
    if not good(v):
        return False
    return True if good(lo if higher_is_better else hi) else "unclear"


def verdict_text(m) -> str:
    return {True: "met", False: "NOT met", "unclear": "met on the point estimate only (the interval reaches "
            "past the goal)", None: "n/a"}[m]


def fmt_ci(r: Tuple[float, float, float], digits: int = 2, unit: str = "") -> str:
    """'0.21 (95 % CI 0.19-0.24)'."""
    v, lo, hi = r
    return f"{v:.{digits}f}{unit} (95 % CI {lo:.{digits}f}-{hi:.{digits}f}{unit})"


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


DOCS_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks"))


def doc_path(name: str) -> str:
    """``docs/benchmarks/<name>.md``: where benchmark ``name`` keeps its latest output."""
    return os.path.join(DOCS_DIR, name + ".md")


def add_write_arg(ap, name: str) -> None:
    """The one output switch every benchmark has: ``--write`` also saves the output as
    ``docs/benchmarks/<name>.md`` (``make bench`` passes it); without it the script only prints."""
    ap.add_argument("--write", action="store_true",
                    help=f"also save the output as docs/benchmarks/{name}.md (make bench passes it); "
                         "without it the script only prints")


def save(name: str, text: str) -> str:
    """Write ``text`` to :func:`doc_path` (``name``), which benchmarks/collect.py folds into
    docs/benchmarks.md; returns the path."""
    path = doc_path(name)
    os.makedirs(DOCS_DIR, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def emit(lines: Sequence[str], name: Optional[str] = None, write: bool = False) -> str:
    """Print the benchmark's output (its lines joined) and, with ``write``, :func:`save` it
    as benchmark ``name``'s page."""
    text = "\n".join(lines) + "\n"
    print(text)
    if write and name:
        save(name, text)
    return text
