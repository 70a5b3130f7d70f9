"""The FastAPI application: wires the routers to one :class:`Portrait` service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from portrait import __version__
from portrait.api import admin, errors, ingest, segments, sources
from portrait.config import Settings
from portrait.service import Portrait


def create_app(settings: Settings | None = None, portrait: Portrait | None = None, *,
               schedule_sources: bool = False) -> FastAPI:
    """Build the app. With ``portrait`` given the caller owns it; otherwise it is opened here and closed on shutdown.

    ``schedule_sources`` runs scheduled SQL-source syncs while the app runs (``portrait serve`` turns it on).
    """
    owned = portrait is None
    service = portrait or Portrait(settings or Settings())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if schedule_sources:
            service.start_scheduler()
        yield
        if owned:
            service.close()

    app = FastAPI(title="Portrait", version=__version__, lifespan=lifespan,
                  description="Self-hosted customer data platform. Segment-compatible ingestion under /v1, "
                              "admin API under /api (Bearer admin key).")
    app.state.portrait = service
    errors.install(app)
    app.include_router(ingest.router(service))
    app.include_router(admin.router(service))
    app.include_router(sources.router(service))
    app.include_router(segments.router(service))

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
