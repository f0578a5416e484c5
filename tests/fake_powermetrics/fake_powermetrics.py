"""A stand-in for macOS ``powermetrics`` on machines without it (tests only).

Usage, as the real tool (the extra first argument is the behaviour, set by the
wrapper scripts next to this file)::

    fake_powermetrics.py MODE [-f plist] [-i MS] [--samplers a,b] [-n COUNT] [-b N]

It streams the documents of a real capture (``$FAKE_POWERMETRICS_FIXTURE``, default
the M1 capture ``pumas-m1.plist`` in tests/data/powermetrics), one per
interval, the way powermetrics does: each document after the first is preceded by
a NUL byte.  Each document's ``elapsed_ns`` is rewritten to the ``-i`` interval, as
the real tool reports the window it actually measured.  MODE:

- ``stream``: until ``-n`` documents (default: forever) or SIGINT/SIGTERM.
- ``dies-mid-document``: ``$FAKE_POWERMETRICS_FULL`` (default 2) whole documents,
  then half of the next one, then SIGKILL on itself.
- ``garbage``: one document, then non-plist bytes, then exit status 3.
- ``not-root``: prints powermetrics' "must be invoked as the superuser" and exits 1.
- ``ignores-sigint``: ``stream`` that ignores SIGINT (only SIGKILL stops it).

``$FAKE_POWERMETRICS_ARGV_FILE``, when set, receives the argv as JSON lines.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "powermetrics"


def parse_args(argv: list) -> dict:
    opts = {"interval_ms": 5000, "count": 0, "format": "text", "samplers": "default"}
    it = iter(argv)
    for a in it:
        if a in ("-i", "--sample-rate", "--sample-interval"):
            opts["interval_ms"] = int(next(it))
        elif a in ("-n", "--sample-count"):
            opts["count"] = int(next(it))
        elif a in ("-f", "--format"):
            opts["format"] = next(it)
        elif a in ("-s", "--samplers"):
            opts["samplers"] = next(it)
        elif a in ("-b", "--buffer-size", "-o", "--output-file", "-r", "--order"):
            next(it)
        elif a.startswith("-"):
            continue  # flags without a value (--show-initial-usage, -a ...)
        else:
            sys.stderr.write(f"powermetrics: unexpected argument {a!r}\n")
            sys.exit(64)
    return opts


def frames() -> list:
    path = Path(os.environ.get("FAKE_POWERMETRICS_FIXTURE", FIXTURES / "pumas-m1.plist"))
    return [f.lstrip(b"\0") for f in path.read_bytes().split(b"\0") if f.strip(b"\0 \n")]


def main() -> int:
    mode = sys.argv[1]
    opts = parse_args(sys.argv[2:])
    if os.environ.get("FAKE_POWERMETRICS_ARGV_FILE"):
        with open(os.environ["FAKE_POWERMETRICS_ARGV_FILE"], "a") as f:
            f.write(json.dumps(sys.argv[2:]) + "\n")
    if mode == "not-root":
        sys.stderr.write("powermetrics must be invoked as the superuser\n")
        return 1
    stop = []
    if mode == "ignores-sigint":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    window = f"<integer>{opts['interval_ms'] * 1000000}</integer>".encode()
    docs = [re.sub(rb"(<key>elapsed_ns</key>\s*)<integer>\d+</integer>", lambda m: m.group(1) + window, d)
            for d in frames()]
    out = sys.stdout.buffer
    full = int(os.environ.get("FAKE_POWERMETRICS_FULL", "2"))
    k = 0
    try:
        while not stop and (opts["count"] <= 0 or k < opts["count"]):
            deadline = time.monotonic() + opts["interval_ms"] / 1000.0
            while not stop and time.monotonic() < deadline:
                time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
            if stop:
                break
            doc = docs[k % len(docs)]
            sep = b"\0" if k else b""
            if mode == "dies-mid-document" and k == full:
                out.write(sep + doc[: len(doc) // 2])
                out.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            out.write(sep + doc)
            out.flush()
            k += 1
            if mode == "garbage":
                out.write(b"\0Segmentation fault: 11\n\x01\x02\xff garbage \xfe\n")
                out.flush()
                return 3
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
