"""SQL sources under /api/sources: define, list, show, remove, sync. Admin key required; URLs come back redacted."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Response
from fastapi.concurrency import run_in_threadpool

from portrait.api import schemas_access as shapes
from portrait.api.auth import authorizer
from portrait.api.query import known_query
from portrait.api.schemas import answer
from portrait.service import Portrait


def router(portrait: Portrait) -> APIRouter:
    api = APIRouter(prefix="/api/sources", dependencies=[Depends(authorizer(portrait)), Depends(known_query)],
                    tags=["sources"])

    @api.get("", summary="Every source with its sync state (URLs without passwords)",
             **answer(shapes.Sources, "The sources"))
    async def sources() -> dict[str, Any]:
        return {"sources": await run_in_threadpool(portrait.sources.all)}

    @api.post("", status_code=201, summary="Define a source: name, kind, url, query, cursor, every, mapping",
              **answer(shapes.Source, "The source", 201))
    async def add(payload: Annotated[dict[str, Any], Body()], check: bool = True) -> dict[str, Any]:
        return await run_in_threadpool(lambda: portrait.add_source(payload, check=check))

    @api.get("/{name}", summary="One source and its sync state", **answer(shapes.Source, "The source"))
    async def source(name: str) -> dict[str, Any]:
        return await run_in_threadpool(portrait.sources.state, name)

    @api.delete("/{name}", status_code=204, summary="Forget a source (what it brought in stays); 409 while it syncs",
                responses={204: {"description": "Forgotten; no body"}})
    async def remove(name: str) -> Response:
        await run_in_threadpool(portrait.remove_source, name)
        return Response(status_code=204)

    @api.post("/{name}/sync", summary="Sync now: new rows since the saved cursor (all rows with full=true)",
              **answer(shapes.SyncReport, "What the sync did"))
    async def sync(name: str, full: bool = False) -> dict[str, Any]:
        report = await run_in_threadpool(lambda: portrait.sync_source(name, full=full))
        return report.as_dict()

    return api
