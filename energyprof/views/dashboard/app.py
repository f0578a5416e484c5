"""The dashboard's ASGI application (FastAPI): pages, the JSON API, the live stream, the
actions, and the security around them.

:func:`create_app` builds it over one run store; ``energyprof serve`` runs it with uvicorn.

Security:

* a token (``token=``) is checked on every request, as ``Authorization: Bearer T``, as
  ``?token=T`` (which also sets an HttpOnly, SameSite=Strict cookie so that the
  browser's next requests carry it) or as that cookie; anything else gets 401;
* without a token the app answers only requests whose ``Host`` is a loopback name
  (127.0.0.1, localhost, [::1]), so a page on another site cannot reach it through DNS
  rebinding;
* actions (delete, tag, export) are POST requests carrying the app's CSRF token, from
  the same origin when the browser names one; with ``read_only=True`` the store is
  opened read-only and there are no actions;
* every HTML page has a Content-Security-Policy with a fresh nonce for its scripts and
  no source of anything outside the page itself; ids are checked before any store call,
  and no SQL is built from request text (the store takes parameters).
"""

import asyncio
import hmac
import io
import json
import os
import secrets
import tempfile
import threading
import time
import urllib.parse
import zipfile
from typing import Any, Callable, Dict, Optional

from ...errors import NoDataError, require
from ...store import db as _db
from .. import plot as _plot
from . import data as _data
from . import pages as _pages

__all__ = ["create_app", "LOOPBACK_HOSTS", "page_csp", "API_CSP"]

#: Host names that count as this machine for a dashboard served without a token.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
#: The policy of every response that is not a page (JSON, files, the stream).
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
_TOKEN_COOKIE = "energyprof_token"
_MAX_FORM_BYTES = 16_384


def page_csp(nonce: str) -> str:
    """The policy of a page: its own nonce'd scripts, inline styles (plotly's), data:
    images, fetches and the event stream to this origin only; nothing else."""
    return (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; img-src data: blob:; "
            f"font-src data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def _host_name(host_header: str) -> str:
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[:h.find("]") + 1] if "]" in h else h
    return h.rsplit(":", 1)[0] if ":" in h else h


class _Security:
    """Pure ASGI middleware: the token, the Host check and the headers every answer carries."""

    def __init__(self, app: Any, token: Optional[str]) -> None:
        self.app = app
        self.token = token

    def _token_ok(self, scope: Dict[str, Any], headers: Dict[str, str]) -> tuple:
        """(ok, came in the query string)."""
        given = []
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given.append((auth[7:].strip(), False))
        q = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        for v in q.get("token", [])[:1]:
            given.append((v, True))
        for part in headers.get("cookie", "").split(";"):
            k, _, v = part.strip().partition("=")
            if k == _TOKEN_COOKIE:
                given.append((urllib.parse.unquote(v), False))
        want = self.token.encode()
        for value, from_query in given:
            if hmac.compare_digest(value.encode("utf-8", "replace"), want):
                return True, from_query
        return False, False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        set_cookie = False
        if self.token is not None:
            ok, from_query = self._token_ok(scope, headers)
            if not ok:
                return await _plain(send, 401, {"detail": "a token is needed: send 'Authorization: Bearer TOKEN' or "
                                                          "add ?token=TOKEN (energyprof serve printed it)"},
                                    [(b"www-authenticate", b'Bearer realm="energyprof"')])
            set_cookie = from_query
        elif _host_name(headers.get("host", "")) not in LOOPBACK_HOSTS:
            return await _plain(send, 400, {"detail": "this dashboard answers only requests to 127.0.0.1 or "
                                                      "localhost (serve with --token to allow other hosts)"})

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                hs = list(message.get("headers", []))
                names = {k.lower() for k, _ in hs}
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                         (b"x-frame-options", b"DENY"), (b"cross-origin-opener-policy", b"same-origin")]
                if b"content-security-policy" not in names:
                    extra.append((b"content-security-policy", API_CSP.encode()))
                if set_cookie:
                    extra.append((b"set-cookie", f"{_TOKEN_COOKIE}={urllib.parse.quote(self.token)}; HttpOnly; "
                                                 f"SameSite=Strict; Path=/".encode()))
                message = dict(message, headers=hs + [h for h in extra if h[0] not in names])
            await send(message)

        return await self.app(scope, receive, send_with_headers)


async def _plain(send, status: int, body: Dict[str, Any], headers=()) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                            (b"content-security-policy", API_CSP.encode()), (b"x-content-type-options", b"nosniff"),
                            *headers]})
    await send({"type": "http.response.body", "body": raw})


def create_app(db: Optional[str] = None, *, read_only: bool = False, token: Optional[str] = None,
               poll_s: float = 0.25, stream_max_s: float = 12 * 3600.0) -> Any:
    """The dashboard over the run store at ``db`` (default: the default store).

    Parameters
    ----------
    db:
        Database path.  Opened read-only with ``read_only=True`` (it must exist then).
    read_only:
        No actions (delete, tag, export); the store cannot be written.
    token:
        When given, every request needs it (Bearer header, ``?token=`` or the cookie
        that ``?token=`` sets); else only loopback Host names are answered.
    poll_s:
        How often the live stream looks for newly committed samples.
    stream_max_s:
        The longest one live stream stays open.
    """
    fastapi = require("fastapi", "energyprof serve")
    from fastapi import Request
    from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse

    path = os.path.abspath(os.fspath(db) if db is not None else _db.default_path())
    if token is not None and (len(token) < 8 or any(c.isspace() for c in token)):
        raise ValueError("the token must be at least 8 characters without spaces")
    # open once: creates, migrates and marks stale runs (unless read-only); fails early on a bad file
    _db.Store(path, readonly=read_only, mark_stale=not read_only).close()
    csrf = secrets.token_urlsafe(32)
    local = threading.local()

    def store() -> _db.Store:
        st = getattr(local, "store", None)
        if st is None:
            st = local.store = _db.Store(path, readonly=read_only, mark_stale=False)
        return st

    app = fastapi.FastAPI(
        title="energyprof dashboard API",
        description="Runs of the energyprof store: list with filters, one run, its samples downsampled, "
                    "N-run comparison and a live stream. Every number carries its label (measured, estimated, "
                    "simulated).",
        docs_url=None, redoc_url=None)
    app.state.csrf = csrf
    app.state.db_path = path
    app.state.read_only = read_only

    def html(render: Callable[..., str], status: int = 200, **kw: Any) -> HTMLResponse:
        nonce = secrets.token_urlsafe(18)
        body = render(nonce=nonce, read_only=read_only, **kw)
        return HTMLResponse(body, status_code=status, headers={"Content-Security-Policy": page_csp(nonce),
                                                               "Cache-Control": "no-store"})

    def failure(request: Any, status: int, message: str):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": message}, status_code=status)
        return html(lambda **kw: _pages.render_error(status, message, **kw), status=status)

    @app.exception_handler(_data.BadRequest)
    async def _bad(request: Request, exc: _data.BadRequest):
        return failure(request, 400, str(exc))

    @app.exception_handler(KeyError)
    async def _missing(request: Request, exc: KeyError):
        text = str(exc.args[0]) if exc.args else "not found"
        return failure(request, 404, text.replace(f" in {path}", ""))  # the file's path is not the client's business

    @app.exception_handler(PermissionError)
    async def _forbidden(request: Request, exc: PermissionError):
        return failure(request, 403, str(exc))

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        what = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ())[1:])}: {e.get('msg')}" for e in exc.errors())
        return failure(request, 400, f"bad request: {what[:300]}")

    @app.exception_handler(404)
    async def _not_found(request: Request, exc: Exception):
        return failure(request, 404, f"no page at {request.url.path}")

    def params_of(request: Request) -> Dict[str, Any]:
        return {k: v for k, v in request.query_params.items() if k != "token"}

    # ------------------------------------------------------------------ pages
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def runs_page(request: Request):
        params = params_of(request)
        result = _data.list_runs(store(), params)
        return html(_pages.render_runs, result=result, params=params)

    @app.get("/runs/{run_id}", response_class=HTMLResponse, include_in_schema=False)
    def run_page(run_id: str):
        rid = _data.parse_run_id(run_id)
        run = _data.load_for_page(store(), rid)
        return html(_pages.render_run, run=run, eff=_data.efficiency_json(run), csrf=csrf)

    @app.get("/compare", response_class=HTMLResponse, include_in_schema=False)
    def compare_page(request: Request):
        raw = ",".join(request.query_params.getlist("ids"))
        if not raw:
            return html(_pages.render_compare_form)
        try:
            ids = _data.parse_ids(raw)
        except _data.BadRequest as e:
            return html(_pages.render_compare_form, status=400, message=str(e))
        st = store()
        cmp = _data.compare_json(st, ids)
        runs = [_data.load_for_page(st, i, max_samples=4000) for i in ids]
        return html(_pages.render_compare, cmp=cmp, runs=runs)

    @app.get("/live/{run_id}", include_in_schema=False)
    def live_page(run_id: str):
        rid = _data.parse_run_id(run_id)
        s = store().summary(rid)
        if s.get("status") != "running":
            return RedirectResponse(f"/runs/{rid}", status_code=303)
        return html(_pages.render_live, s=s)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return Response(status_code=204)  # no icon: and no 404 in the browser's console

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs_page():
        return html(_pages.render_docs, spec=app.openapi())

    # ------------------------------------------------------------------ actions
    async def form_of(request: Request) -> Dict[str, str]:
        if read_only:
            raise PermissionError("the dashboard is read-only (energyprof serve --read-only): no actions")
        origin = request.headers.get("origin")
        if origin and origin != "null":
            o = urllib.parse.urlsplit(origin)
            if o.netloc.lower() != request.headers.get("host", "").lower():
                raise PermissionError(f"a form from another origin ({origin[:80]}) is refused")
        body = await request.body()
        if len(body) > _MAX_FORM_BYTES:
            raise _data.BadRequest("form too large")
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()}
        if not hmac.compare_digest(form.get("csrf", "").encode(), csrf.encode()):
            raise PermissionError("missing or wrong CSRF token: reload the page and try again")
        return form

    @app.post("/runs/{run_id}/delete", include_in_schema=False)
    async def delete_action(run_id: str, request: Request):
        rid = _data.parse_run_id(run_id)
        form = await form_of(request)
        if form.get("confirm") != "yes":
            raise _data.BadRequest("tick 'sure' to delete the run")
        await asyncio.to_thread(_db.delete, rid, store())
        return RedirectResponse("/", status_code=303)

    @app.post("/runs/{run_id}/tags", include_in_schema=False)
    async def tag_action(run_id: str, request: Request):
        rid = _data.parse_run_id(run_id)
        form = await form_of(request)
        tag, action = form.get("tag", "").strip(), form.get("action", "add")
        if action not in ("add", "remove"):
            raise _data.BadRequest("action is add or remove")

        def apply():
            st = store()
            tags = list(st.summary(rid).get("tags") or [])
            tags = tags + [tag] if action == "add" else [t for t in tags if t != tag]
            try:
                _db.set_tags(rid, tags, st)
            except ValueError as e:
                raise _data.BadRequest(str(e)) from None

        await asyncio.to_thread(apply)
        return RedirectResponse(f"/runs/{rid}", status_code=303)

    @app.post("/runs/{run_id}/export", include_in_schema=False)
    async def export_action(run_id: str, request: Request):
        rid = _data.parse_run_id(run_id)
        form = await form_of(request)
        fmt = form.get("format", "json")
        if fmt not in ("json", "csv"):
            raise _data.BadRequest("format is json or csv")

        def build() -> bytes:
            st = store()
            run = st.load(rid)
            with tempfile.TemporaryDirectory(prefix="energyprof-export-") as d:
                if fmt == "json":
                    p = _db.export(run, os.path.join(d, f"run-{rid}.json"), format="json")
                    with open(p, "rb") as fh:
                        return fh.read()
                out = _db.export(run, os.path.join(d, f"run-{rid}"), format="csv")
                buf = io.BytesIO()
                with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
                    for name in sorted(os.listdir(out)):
                        z.write(os.path.join(out, name), f"run-{rid}/{name}")
                return buf.getvalue()

        content = await asyncio.to_thread(build)
        name, media = (f"run-{rid}.json", "application/json") if fmt == "json" else \
            (f"run-{rid}-csv.zip", "application/zip")
        return Response(content, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'})

    # ------------------------------------------------------------------ JSON API
    @app.get("/api/runs", summary="Runs matching the filters, sorted and paginated",
             description="Same filters as the runs page: model, label (measured/estimated/simulated), tag, status, "
                         "since, until (dates), q (free text), sort (started_at, j_per_output_token, j_per_token, "
                         "tokens_per_j, energy_j, ...), order (asc/desc), limit (1-500), offset.")
    def api_runs(request: Request, model: Optional[str] = None, label: Optional[str] = None,
                 tag: Optional[str] = None, status: Optional[str] = None, since: Optional[str] = None,
                 until: Optional[str] = None, q: Optional[str] = None, sort: str = "started_at",
                 order: Optional[str] = None, limit: str = "50", offset: str = "0"):
        return _data.list_runs(store(), params_of(request))

    @app.get("/api/runs/{run_id}", summary="One run: its summary and its figures with their uncertainty",
             description="The run's summary dict (labels, phases, domains, resolution and uncertainty where "
                         "recorded), the efficiency figures with standard errors, and how many rows each array has.")
    def api_run(run_id: str):
        rid = _data.parse_run_id(run_id)
        st = store()
        run = _data.load_for_page(st, rid, max_samples=2)
        s = run.summary()
        s.pop("_samples_shown", None)
        counts = {n: int(len(run.array(n))) for n in ("sections", "tokens", "layers", "components", "ops", "heads")}
        counts["samples"] = int(run.summary()["_samples_shown"]["n_samples"])
        return JSONResponse(_db._jsonable({"summary": s, "efficiency": _data.efficiency_json(run), "rows": counts}))

    @app.get("/api/runs/{run_id}/samples", summary="A run's power samples downsampled for plotting",
             description="At most max_points buckets (2-50000, default 2000), each with the mean (energy-preserving), "
                         "min and max power per measured domain and of the total; a one-hour 1 kHz run is read from "
                         "the store's precomputed levels, not from its 3.6 M rows.")
    def api_samples(run_id: str, max_points: str = "2000"):
        rid = _data.parse_run_id(run_id)
        return JSONResponse(_data.samples_json(store(), rid, max_points))

    @app.get("/api/runs/{run_id}/figure", summary="One figure of a run as plotly JSON",
             description="kind: one of the plot kinds (timeline, phases, tokens, layers, layer_steps, components, "
                         "sankey, waterfall, ops, heads); metric for the heatmaps (energy_j, duration_s, power_w, "
                         "act_mean, act_std, act_max, act_sparsity; heads: entropy, max_weight, sparsity).")
    def api_figure(run_id: str, kind: str = "layers", metric: Optional[str] = None):
        import plotly.io as pio

        rid = _data.parse_run_id(run_id)
        if kind not in _plot.KINDS + _plot.DEEP_KINDS:
            raise _data.BadRequest(f"unknown kind {kind[:40]!r}")
        run = _data.load_for_page(store(), rid)
        try:
            fig = _plot.plot(run, kind=kind, backend="plotly", metric=metric or None)
        except NoDataError as e:
            return JSONResponse({"detail": str(e)}, status_code=404)
        except ValueError as e:
            raise _data.BadRequest(str(e)) from None
        return Response(pio.to_json(fig, validate=False), media_type="application/json")

    @app.get("/api/compare", summary="2 to 10 runs side by side",
             description="ids=1,2,3: every figure per run with the best and worst run, spread (max/min) and sigma, "
                         "and a warning when the runs' labels differ.")
    def api_compare(ids: str):
        return JSONResponse(_data.compare_json(store(), _data.parse_ids(ids)))

    @app.get("/api/runs/{run_id}/stream", summary="Server-sent events of a running run",
             description="Events: samples (new committed samples: t_s, power per domain, total), progress (phase, "
                         "tokens, tokens/s, energy so far), phase and tokens (on change), end (status, url) when the "
                         "run stops; a run that is not running gets end at once.")
    async def api_stream(run_id: str, request: Request):
        rid = _data.parse_run_id(run_id)
        await asyncio.to_thread(lambda: store().summary(rid))  # 404 before the stream starts
        return StreamingResponse(_stream(rid, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def _stream(rid: int, request: Any):
        live = _data.LiveEnergy()
        cursor: Optional[int] = None
        t0: Optional[int] = None
        sent: Dict[str, Any] = {}
        started = time.monotonic()
        last_beat = started

        def event(name: str, payload: Any) -> str:
            return f"event: {name}\ndata: {json.dumps(_db._jsonable(payload))}\n\n"

        def read(cur: Optional[int]):
            st = store()
            s = st.summary(rid)
            alive = st.writer_alive(rid) if s.get("status") == "running" else None
            return s, alive, st.samples_after(rid, cur, limit=5000)

        yield "retry: 2000\n\n"
        while True:
            s, alive, chunk = await asyncio.to_thread(read, cursor)
            running = s.get("status") == "running" and alive is not False
            progress = s.get("progress") or {}
            t_start = progress.get("t_start_ns")
            if len(chunk):
                if t0 is None:
                    t0 = int(chunk["t_start_ns"][0])
                live.feed(chunk, t_start)
                cursor = int(chunk["t_start_ns"][-1])
                yield event("samples", _data.live_samples_event(chunk, t0))
                last_end = int(chunk["t_end_ns"][-1])
            else:
                last_end = None
            phase = progress.get("phase") or ("baseline" if running else s.get("status"))
            p = {"phase": phase, "tokens": int(progress.get("tokens") or 0), "tok_s": progress.get("tok_s"),
                 "energy_j": live.total_j, "domains_j": live.domains_j(), "samples": live.n_samples,
                 "status": s.get("status"), "source_label": s.get("source_label")}
            if last_end is not None and (t_start or t0) is not None:
                p["elapsed_s"] = (last_end - (t_start or t0)) / 1e9
            elif "progress" in sent:
                p["elapsed_s"] = sent["progress"].get("elapsed_s")
            if p["phase"] != (sent.get("progress") or {}).get("phase"):
                yield event("phase", {"phase": p["phase"]})
            if p["tokens"] != (sent.get("progress") or {}).get("tokens"):
                yield event("tokens", {"tokens": p["tokens"], "tok_s": p["tok_s"]})
            if p != sent.get("progress"):
                yield event("progress", p)
                sent["progress"] = p
            if len(chunk) == 5000:
                continue  # more committed samples are waiting: send them before sleeping
            if not running:
                status = s.get("status") if alive is not False else "interrupted"
                yield event("end", {"status": status, "url": f"/runs/{rid}"})
                return
            if await request.is_disconnected() or time.monotonic() - started > stream_max_s:
                return
            now = time.monotonic()
            if now - last_beat > 15.0:
                yield ": keep-alive\n\n"
                last_beat = now
            await asyncio.sleep(poll_s)

    # outermost: every request passes the token / Host check first, even unknown paths
    app.add_middleware(_Security, token=token)
    return app
