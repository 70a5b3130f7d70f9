"""The FastAPI application: wires the routers to one :class:`Portrait` service, plus the web-wide rules: security
headers on every response, the audit log for every admin action, and API docs served from vendored files."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import unquote

import fastapi_offline
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from portrait import __version__, web
from portrait.api import admin, errors, imports, ingest, keys, openapi, privacy, segments, sources
from portrait.api import exports as export_routes
from portrait.api.auth import READ_ONLY_POSTS
from portrait.api.bodies import JsonBodies
from portrait.api.headers import API_POLICY, SECURITY_HEADERS
from portrait.api.ingest import IngestFastPath
from portrait.api.paths import PROFILE_IN_PATH
from portrait.config import Settings
from portrait.export_jobs import ExportJobs
from portrait.import_jobs import ImportJobs
from portrait.privacy import mask
from portrait.service import Portrait

SWAGGER_FILES = Path(fastapi_offline.__file__).parent / "static"

# The console runs only its own script and styles; the docs page only its own vendored script.
CONSOLE_POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                  "form-action 'self'; frame-ancestors 'none'")
DOCS_POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self'; "
               "script-src 'self'; frame-ancestors 'none'")
# The API docs page: Swagger UI 5 (vendored by fastapi-offline), started from a script file rather than the inline
# script FastAPI's get_swagger_ui_html writes, so that the page's policy need not run inline scripts.
DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Portrait API</title><link rel="stylesheet" href="/static/swagger/swagger-ui.css">
<link rel="icon" href="/static/swagger/favicon.png"></head>
<body><div id="swagger-ui"></div>
<script src="/static/swagger/swagger-ui-bundle.js"></script><script src="/docs/start.js"></script></body></html>
"""
DOCS_START = """SwaggerUIBundle({
  url: "/openapi.json", dom_id: "#swagger-ui", layout: "BaseLayout", deepLinking: true, showExtensions: true,
  showCommonExtensions: true, presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset]
});
"""


def _masked_identity(text: str) -> str:
    kind, sep, value = unquote(text).partition(":")
    return f"{kind}:{mask(value)}" if sep else mask(text)


def create_app(settings: Settings | None = None, portrait: Portrait | None = None, *,
               schedule_sources: bool = False) -> IngestFastPath:
    """Build the app. With ``portrait`` given the caller owns it; otherwise it is opened here and closed on shutdown.

    The FastAPI app is behind :class:`IngestFastPath`, which answers the ingestion POSTs itself (``.app`` is the
    FastAPI app).

    ``schedule_sources`` runs scheduled SQL-source syncs while the app runs (``portrait serve`` turns it on).
    """
    owned = portrait is None
    service = portrait or Portrait(settings or Settings())
    jobs = ImportJobs(service.import_records, service.settings.imports_at_once, errors.status_of)
    exports = ExportJobs(at_once=service.settings.exports_at_once)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        jobs.open()
        exports.open()
        if schedule_sources:
            service.start_scheduler()
        yield
        await run_in_threadpool(jobs.close)  # imports running as jobs end after their chunk, before the store closes
        await run_in_threadpool(exports.close)  # so do exports, whose files go with them
        if owned:
            service.close()

    app = FastAPI(title="Portrait", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Self-hosted customer data platform. Segment-compatible ingestion under /v1 (write "
                              "keys), the API under /api (Bearer read or admin key).")
    app.state.portrait = service
    errors.install(app)
    app.include_router(ingest.router(service))
    app.include_router(admin.router(service, exports))
    app.include_router(imports.router(service, jobs))
    app.include_router(export_routes.router(service, exports))
    app.include_router(sources.router(service))
    app.include_router(segments.router(service))
    app.include_router(keys.router(service))
    app.include_router(privacy.router(service))
    openapi.install(app)
    # Swagger UI 5 (fastapi-offline vendors it): the 4.x of swagger-ui-bundle cannot read OpenAPI 3.1, which FastAPI
    # writes, and showed "Unable to render this definition" instead of the API.
    app.mount("/static/swagger", StaticFiles(directory=SWAGGER_FILES), name="swagger")
    web.install(app, service, jobs)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(DOCS_PAGE)

    @app.get("/docs/start.js", include_in_schema=False)
    async def docs_start() -> Response:
        return Response(DOCS_START, media_type="text/javascript")

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        # "service" and "version" tell a second `portrait serve` on this port what holds it (the version is in the
        # public /openapi.json anyway); which database is served is for keys to learn (/api/status), not said here
        return {"status": "ok", "service": "portrait", "version": __version__}

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        path = request.url.path
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        is_docs = path in ("/docs", "/docs/start.js") or path.startswith("/static/swagger")
        is_api = path.startswith(("/api", "/v1", "/openapi.json", "/healthz"))
        response.headers.setdefault("Content-Security-Policy",
                                    DOCS_POLICY if is_docs else API_POLICY if is_api else CONSOLE_POLICY)
        if not path.startswith("/static/"):  # answers and console pages hold personal data; only assets are cached
            response.headers.setdefault("Cache-Control", "no-store")
        origin = request.headers.get("origin")
        if path.startswith("/v1") and origin and "access-control-allow-origin" not in response.headers and (
                "*" in service.settings.cors_origins or origin in service.settings.cors_origins):
            response.headers["Access-Control-Allow-Origin"] = origin  # so a browser can read the error too
            response.headers["Vary"] = "Origin"
        key = getattr(request.state, "key", None)
        if (key is not None and request.method in ("POST", "PUT", "PATCH", "DELETE")
                and path not in READ_ONLY_POSTS and path != "/console/api/preview"):
            # The audit log never keeps the identifier in the path (it may be erased later): masked.
            shown = PROFILE_IN_PATH.sub(lambda m: m.group(1) + _masked_identity(m.group(2)), path)
            detail = getattr(request.state, "audit_detail", None)  # what the path does not say (a new key's id)
            await run_in_threadpool(lambda: service.audit.record(
                key, f"{request.method} {shown}", target=shown, status=response.status_code, detail=detail))
        return response

    return IngestFastPath(JsonBodies(app), service)
