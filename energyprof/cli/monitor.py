"""``energyprof monitor``: power by domain live in the terminal, like asitop, without a model;
and the ``--live`` option of ``energyprof profile``."""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Optional

from ..errors import UserError
from ..measure import sources
from ..measure.live import LiveFeed
from ..measure.sampler import Sampler
from ..views.terminal import MonitorState

__all__ = ["monitor", "add_monitor_parser", "cmd_monitor"]


class _Keys:
    """Non-blocking single-key reads from a terminal stdin (cbreak mode, restored on exit)."""

    def __init__(self) -> None:
        self._old = None
        self._fd = None

    def __enter__(self) -> "_Keys":
        try:
            if sys.stdin is not None and sys.stdin.isatty():
                import termios
                import tty

                self._fd = sys.stdin.fileno()
                self._old = termios.tcgetattr(self._fd)
                tty.setcbreak(self._fd)
        except Exception:
            self._fd = None
        return self

    def read(self) -> str:
        if self._fd is None:
            return ""
        import select

        r, _, _ = select.select([self._fd], [], [], 0)
        if r:
            return os.read(self._fd, 16).decode(errors="ignore")
        return ""

    def __exit__(self, *exc) -> bool:
        if self._fd is not None and self._old is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._old)
        return False


def monitor(source: str = "auto", interval_ms: Optional[float] = None, duration_s: Optional[float] = None,
            refresh_per_s: float = 4.0, console: Any = None, history: int = 120) -> MonitorState:
    """Show power by domain live in the terminal until ``q``, Ctrl-C or ``duration_s``.

    No model is needed: a :class:`~energyprof.measure.sampler.Sampler` polls ``source`` and a
    :class:`LiveFeed` fills a :class:`MonitorState` that rich redraws.  Returns the
    final state.
    """
    from rich.console import Console
    from rich.live import Live


    sampler = Sampler(source, interval_ms=interval_ms)
    state = MonitorState(history=history, title="energyprof monitor", source=sampler.spec, label=sampler.label)
    feed = LiveFeed(sampler=sampler, callbacks={"sample": [state.on_sample], "token": [], "section": []},
                    interval_ms=min(100.0, 1000.0 / refresh_per_s))
    console = console or Console()
    t_end = None if duration_s is None else time.monotonic() + float(duration_s)
    sampler.start()
    feed.start()
    try:
        with _Keys() as keys, Live(state, console=console, refresh_per_second=refresh_per_s, screen=False):
            while t_end is None or time.monotonic() < t_end:
                k = keys.read()
                if "q" in k or "Q" in k:
                    break
                time.sleep(0.05)
    except KeyboardInterrupt:
        pass
    finally:
        sampler.stop()
        feed.stop()
    return state


def add_monitor_parser(sub: Any) -> None:
    """Add ``energyprof monitor`` and ``profile --live`` to the CLI's subparsers."""
    sp = sub.add_parser("monitor", help="live power by domain in the terminal (q or Ctrl-C quits)")
    sp.add_argument("--source", default="auto", help="power source spec (see `energyprof doctor`)")
    sp.add_argument("--interval-ms", type=float, default=None, help="sampling period (default: the source's)")
    sp.add_argument("--duration-s", type=float, default=None, help="stop after this many seconds")
    sp.set_defaults(func=cmd_monitor)
    prof = sub.choices.get("profile")
    if prof is not None:
        prof.add_argument("--live", action="store_true",
                          help="show power, phase, layer and the token stream while generating")


def cmd_monitor(args: Any) -> int:
    """``energyprof monitor``: exit status 0 on q / Ctrl-C / --duration-s, 2 on a bad source."""

    if args.interval_ms is not None and not (args.interval_ms > 0):
        raise UserError("--interval-ms must be > 0")
    if args.duration_s is not None and not (args.duration_s > 0):
        raise UserError("--duration-s must be > 0")
    try:
        sources.parse_spec(args.source)
        state = monitor(args.source, interval_ms=args.interval_ms, duration_s=args.duration_s)
    except ValueError as e:
        raise UserError(f"bad --source: {e}")
    except OSError as e:   # missing library, permission denied, no such device
        raise UserError(f"cannot use --source {args.source}: {e}")
    snap = state.snapshot()
    print()
    print(f"{snap['n_samples']} samples over {snap['elapsed_s']:.1f} s, {snap['energy_j']:.3f} J "
          f"({state.source}, {state.label})")
    return 0
