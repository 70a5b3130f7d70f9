"""Data-subject requests under /api/privacy (admin scope; an access export's content also needs pii:read)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from portrait.api import schemas_access as shapes
from portrait.api.auth import authorizer, caller
from portrait.api.query import known_query
from portrait.api.schemas import answer, page
from portrait.privacy import mask_request
from portrait.service import Portrait


def router(portrait: Portrait) -> APIRouter:
    api = APIRouter(prefix="/api/privacy", dependencies=[Depends(authorizer(portrait)), Depends(known_query)],
                    tags=["privacy"])

    @api.post("/requests", status_code=202, summary="Ask for an access export or an erasure of one person",
              **answer(shapes.PrivacyRequest, "The request, pending", 202))
    async def create(payload: Annotated[dict[str, Any], Body()], request: Request) -> dict[str, Any]:
        key = caller(request)
        return await run_in_threadpool(portrait.privacy_request, payload, f"{key.name} ({key.id})")

    @api.get("/requests", summary="Requests, newest first (without results); pass `next` as `before`",
             **page(shapes.PrivacyRequestsPage))
    async def listing(request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                      before: str | None = None) -> dict[str, Any]:
        key = caller(request)
        portrait.keys.require(key, "admin", "list privacy requests")
        found = await run_in_threadpool(portrait.privacy.all, limit, before)
        return {"requests": found if key.can_read_pii else [mask_request(r) for r in found],
                "next": found[-1]["id"] if len(found) == limit else None}

    @api.get("/requests/{request_id}", summary="One request: status, and the export once an access request is done",
             **answer(shapes.PrivacyRequest, "The request"))
    async def one(request_id: str, request: Request) -> Response:
        key = caller(request)
        portrait.keys.require(key, "admin", "read privacy requests")
        found = await run_in_threadpool(portrait.privacy.get, request_id)
        if found.get("result") and found["type"] == "access":
            portrait.keys.require(key, "pii:read", "read an access export")
            await run_in_threadpool(lambda: portrait.audit.record(
                key, "read_access_export", target=request_id,
                profile_id=(found["result"].get("profile") or {}).get("profile_id")))
        shown = found if key.can_read_pii else mask_request(found)
        # An access export holds every event of the person (9 MB for 20,000 events): encoded by FastAPI, on the event
        # loop, it held every other request -- ingestion, /healthz -- for 2 s; encoded in a worker thread, none.
        return Response(await run_in_threadpool(orjson.dumps, shown), media_type="application/json")

    return api
