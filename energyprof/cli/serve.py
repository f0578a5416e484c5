"""``energyprof serve``: the web dashboard over the run store, served by uvicorn.

    energyprof serve [--db PATH] [--host 127.0.0.1] [--port 8765] [--token T] [--read-only] [--open]

On 127.0.0.1 (the default) no token is needed unless one is given.  On any other host
a token is required: the one given, else a random one that is printed with the URL.
"""
from __future__ import annotations

import ipaddress
import secrets
import sys
import threading
import webbrowser

from ..errors import UserError, require

__all__ = ["add_arguments", "cli_main", "is_loopback", "serve_url"]


def add_arguments(sp) -> None:
    """The options of ``energyprof serve``."""
    from .common import add_db

    add_db(sp)
    sp.add_argument("--host", default="127.0.0.1",
                    help="address to bind (default 127.0.0.1; any other host needs a token)")
    sp.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    sp.add_argument("--token", default=None,
                    help="require this token on every request (generated and printed when --host is not loopback)")
    sp.add_argument("--read-only", action="store_true", help="open the store read-only: browse, no actions")
    sp.add_argument("--open", action="store_true", help="open the dashboard in a web browser")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve_url(host: str, port: int, token=None) -> str:
    """The URL to open (with ``?token=`` when a token is needed)."""
    h = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{h}:{port}/" + (f"?token={token}" if token else "")


def cli_main(args) -> int:
    """Run the dashboard until Ctrl-C."""
    uvicorn = require("uvicorn", "energyprof serve")
    from ..views.dashboard import create_app

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0 to 65535, got {args.port}")
    token = args.token
    if token is None and not is_loopback(args.host):
        token = secrets.token_urlsafe(24)
        print(f"energyprof serve: {args.host} is not a loopback address, so every request needs this token:\n"
              f"  {token}", flush=True)
    try:
        app = create_app(args.db, read_only=args.read_only, token=token)
    except (ValueError, OSError) as e:
        raise UserError(str(e))
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2,
                            access_log=False)
    server = uvicorn.Server(config)

    def announce() -> None:
        while not server.started and not server.should_exit:
            threading.Event().wait(0.05)
        if not server.started:
            return
        port = args.port
        for s in getattr(server, "servers", []):
            for sock in getattr(s, "sockets", []) or []:
                port = sock.getsockname()[1]
        url = serve_url(args.host, port, token)
        print(f"energyprof serve: {url}  (store {app.state.db_path}{', read-only' if args.read_only else ''}; "
              f"Ctrl-C stops)", flush=True)
        if args.open:
            webbrowser.open(url)

    threading.Thread(target=announce, name="energyprof-serve-announce", daemon=True).start()
    try:
        server.run()
    except (KeyboardInterrupt, SystemExit):  # uvicorn exits on a port it cannot bind; Ctrl-C is its own
        pass
    if not server.started:
        print(f"energyprof: error: could not serve on {args.host}:{args.port}", file=sys.stderr)
        return 2
    return 0
