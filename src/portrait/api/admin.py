"""Admin/read API under /api: profiles, events, rejected events, status. Bearer admin key required."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from portrait.errors import Unauthorized
from portrait.service import Portrait


def router(portrait: Portrait) -> APIRouter:
    def admin(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("send the admin key as 'Authorization: Bearer <key>'")
        portrait.keys.check(token.strip(), "admin")

    api = APIRouter(prefix="/api", dependencies=[Depends(admin)], tags=["admin"])

    @api.get("/status", summary="Ingestion and processing counters; lag = received but not yet on profiles")
    async def status() -> dict[str, Any]:
        return await run_in_threadpool(portrait.status)

    @api.get("/profiles/{identity}", summary="The unified profile of any identifier, e.g. email:ann@example.com")
    async def profile(identity: str) -> dict[str, Any]:
        return await run_in_threadpool(portrait.profile, identity)

    @api.get("/profiles/{identity}/traits")
    async def traits(identity: str) -> dict[str, Any]:
        return await run_in_threadpool(portrait.traits, identity)

    @api.get("/profiles/{identity}/identities")
    async def identities(identity: str) -> dict[str, Any]:
        return {"identities": await run_in_threadpool(portrait.identities, identity)}

    @api.get("/profiles/{identity}/events", summary="Events of a profile, newest first, with a cursor")
    async def events(
        identity: str,
        event: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> dict[str, Any]:
        return await run_in_threadpool(
            lambda: portrait.events(identity, event=event, since=_utc(since), until=_utc(until), cursor=cursor,
                                    limit=limit))

    @api.get("/events/rejected", summary="Messages and requests that were not accepted, with the reason")
    async def rejected(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before: int | None = None,
        code: str | None = None,
    ) -> dict[str, Any]:
        return await run_in_threadpool(lambda: portrait.rejected(limit=limit, before_id=before, code=code))

    @api.get("/events/recent", summary="Events after a sequence number, oldest first (for tailing)")
    async def recent(after: int = 0, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
        return {"events": await run_in_threadpool(portrait.recent_events, after, limit)}

    return api


def _utc(value: datetime | None) -> datetime | None:
    """Query times with a zone become naive UTC, like everything in the store."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)
