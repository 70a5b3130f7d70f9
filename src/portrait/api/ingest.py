"""Segment-compatible ingestion: /v1/batch, /v1/import, /v1/b and the single-message endpoints.

SDKs treat anything but HTTP 200 as failure, so success is exactly 200 ``{"success": true}``, sent only after the
events are committed. Browsers get CORS (these are the only endpoints open to other origins).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

from portrait.service import IncomingRequest, Portrait
from portrait.spec import BATCH_ENDPOINTS, ENDPOINT_TYPES

ENDPOINTS = (*BATCH_ENDPOINTS, *ENDPOINT_TYPES)
SUCCESS = b'{"success":true}'
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Authorization, Content-Encoding, X-Retry-Count",
    "Access-Control-Max-Age": "86400",
}


def router(portrait: Portrait) -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["ingestion"])
    cors = dict(CORS_HEADERS)
    origins = portrait.settings.cors_origins

    def cors_for(request: Request) -> dict[str, str]:
        origin = request.headers.get("origin")
        if "*" in origins or origin in origins:
            return {**cors, "Access-Control-Allow-Origin": origin or "*", "Vary": "Origin"}
        return {}

    async def ingest(endpoint: str, request: Request) -> Response:
        incoming = IncomingRequest(
            endpoint=endpoint,
            body=await request.body(),
            content_encoding=request.headers.get("content-encoding"),
            authorization=request.headers.get("authorization"),
            query_key=request.query_params.get("writeKey"),
            ip=request.client.host if request.client else None,
        )
        await asyncio.wrap_future(portrait.ingest(incoming))
        return Response(SUCCESS, media_type="application/json", headers=cors_for(request))

    async def preflight(request: Request) -> Response:
        return Response(status_code=204, headers=cors_for(request))

    for endpoint in ENDPOINTS:
        async def post(request: Request, _endpoint: str = endpoint) -> Response:
            return await ingest(_endpoint, request)

        api.add_api_route(f"/{endpoint}", post, methods=["POST"], name=f"ingest_{endpoint}",
                          summary=f"Segment {endpoint} endpoint", include_in_schema=len(endpoint) > 1)
        api.add_api_route(f"/{endpoint}", preflight, methods=["OPTIONS"], include_in_schema=False)
    return api
