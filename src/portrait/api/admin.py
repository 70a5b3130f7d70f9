"""Admin/read API under /api: profiles, events, rejected events, status. Bearer admin key required."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from portrait.errors import Unauthorized
from portrait.mapping import combine, parse_mapping_text
from portrait.service import Portrait


def admin_key_required(portrait: Portrait) -> Callable[[Request], None]:
    """A dependency that lets a request through only with ``Authorization: Bearer <admin key>``."""
    def admin(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("send the admin key as 'Authorization: Bearer <key>'")
        portrait.keys.check(token.strip(), "admin")

    return admin


def router(portrait: Portrait) -> APIRouter:
    api = APIRouter(prefix="/api", dependencies=[Depends(admin_key_required(portrait))], tags=["admin"])

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

    @api.get("/data-quality", summary="Trait values not applied because they break their attribute's rules")
    async def data_quality(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100, before: int | None = None, attribute: str | None = None,
    ) -> dict[str, Any]:
        return await run_in_threadpool(lambda: portrait.data_quality(limit=limit, before_id=before,
                                                                     attribute=attribute))

    @api.get("/attributes", summary="The attribute registry: standard and custom profile attributes")
    async def attributes(standard: bool | None = None, status: str | None = None) -> dict[str, Any]:
        return {"attributes": await run_in_threadpool(lambda: portrait.attributes.list(standard=standard,
                                                                                       status=status))}

    @api.get("/attributes/{code}", summary="One attribute, with how many profiles have a value")
    async def attribute(code: str) -> dict[str, Any]:
        return await run_in_threadpool(portrait.attributes.get, code)

    @api.get("/attributes/{code}/analytics", summary="Fill rate, distinct and top values, numeric and date stats")
    async def attribute_analytics(code: str, top: Annotated[int, Query(ge=1, le=100)] = 10) -> dict[str, Any]:
        return await run_in_threadpool(lambda: portrait.attributes.analytics(code, top))

    @api.post("/attributes", summary="Define a custom attribute", status_code=201)
    async def create_attribute(payload: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        return await run_in_threadpool(portrait.create_attribute, payload)

    @api.patch("/attributes/{code}", summary="Change an attribute's description, flags or status (deprecate)")
    async def update_attribute(code: str, payload: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        return await run_in_threadpool(portrait.update_attribute, code, payload)

    @api.post("/attributes/recheck", summary="Recompute every profile's traits from the log with the current "
                                             "attribute definitions (processing pauses meanwhile)")
    async def recheck_attributes() -> dict[str, int]:
        return await run_in_threadpool(portrait.rebuild_traits)

    @api.post("/attributes/recalculate", summary="Recompute every calculated attribute for every profile now")
    async def recalculate() -> dict[str, Any]:
        return await run_in_threadpool(portrait.recalculate)

    @api.get("/exports/profiles", summary="Every profile with the chosen attributes, as CSV, Parquet or NDJSON",
             response_class=FileResponse)
    async def export(
        format: str = "csv",
        attributes: Annotated[str | None, Query(description="Comma-separated codes.")] = None,
        include_personal: bool = False,
        segment: Annotated[str | None, Query(description="Only this segment's members (id or name).")] = None,
    ) -> FileResponse:
        names = [a.strip() for a in attributes.split(",") if a.strip()] if attributes else None
        folder = Path(tempfile.mkdtemp(prefix="portrait-export-"))
        path = folder / f"profiles.{format}"
        try:
            report = await run_in_threadpool(lambda: portrait.export_profiles(
                path, format, attributes=names, include_personal=include_personal, segment=segment))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        media = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet", "ndjson": "application/x-ndjson"}
        return FileResponse(path, media_type=media[format], filename=path.name,
                            headers={"X-Portrait-Export": orjson.dumps(report).decode()},
                            background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))

    @api.post("/imports", summary="Import a file sent as the request body (as `portrait import`)")
    async def imports(
        request: Request,
        filename: Annotated[str, Query(description="The file's name; its ending tells the format.")],
        kind: Annotated[str, Query(pattern="^(events|profiles)$")] = "events",
        format: str | None = None,
        dry_run: bool = False,
        event: str | None = None, event_column: str | None = None, user_id: str | None = None,
        anonymous_id: str | None = None, email: str | None = None, phone: str | None = None,
        timestamp: str | None = None, timestamp_format: str | None = None, message_id: str | None = None,
        fields: Annotated[str | None, Query(description="Comma-separated property/trait columns.")] = None,
        mapping: Annotated[str | None, Query(description="A whole mapping as JSON (the mapping-file form); the "
                                                         "column parameters override it.")] = None,
        delimiter: str = ",",
    ) -> dict[str, Any]:
        columns: dict[str, Any] = {"user_id": user_id, "anonymous_id": anonymous_id, "email": email, "phone": phone,
                                   "event": event, "event_column": event_column, "timestamp": timestamp,
                                   "timestamp_format": timestamp_format, "message_id": message_id}
        document = parse_mapping_text(mapping, "the mapping parameter") if mapping else None
        rows = combine(kind, document, fields, columns)
        name = Path(filename).name or "upload"
        with tempfile.TemporaryDirectory(prefix="portrait-import-") as folder:
            upload = Path(folder) / name
            with upload.open("wb") as handle:  # streamed: a large file never sits in memory
                async for chunk in request.stream():
                    handle.write(chunk)
            report = await run_in_threadpool(
                lambda: portrait.import_file(upload, format, rows, delimiter=delimiter, dry_run=dry_run,
                                             source=f"import:{name}"))
        return report.as_dict()

    return api


def _utc(value: datetime | None) -> datetime | None:
    """Query times with a zone become naive UTC, like everything in the store."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)
