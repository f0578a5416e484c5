"""``energyprof serve``: a local web dashboard over the run store.

* :mod:`.app` — the ASGI application (FastAPI): pages, JSON API, live stream, actions, security;
* :mod:`.pages` — the server-rendered HTML pages (plotly inline, the report's pieces);
* :mod:`.data` — what the pages and the API show, read through the store.

Needs the ``serve`` extra (``pip install 'energyprof[serve]'``): FastAPI and uvicorn.
"""
from .app import create_app

__all__ = ["create_app"]
