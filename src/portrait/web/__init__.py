"""The web console: server-rendered pages over the same service as the API, signed in with a read or admin key.

Every asset is served from this package (templates, one stylesheet, one script); charts are inline SVG drawn on the
server. Personal data is masked for keys without ``pii:read`` exactly as in the API.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from portrait.import_jobs import ImportJobs
from portrait.service import Portrait
from portrait.web import activity, pages
from portrait.web.common import Console

STATIC = Path(__file__).parent / "static"
CONSOLE_PATHS = ("/login", "/logout", "/attributes", "/customers", "/segments", "/funnels", "/events", "/admin",
                 "/console/", "/static/console")


def install(app: FastAPI, portrait: Portrait, jobs: ImportJobs) -> None:
    console = Console(portrait)
    app.include_router(pages.router(console))
    app.include_router(activity.router(console, jobs))
    app.mount("/static/console", StaticFiles(directory=str(STATIC)), name="console")


__all__ = ["CONSOLE_PATHS", "install"]
