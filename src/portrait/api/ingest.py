"""Segment-compatible ingestion: /v1/batch, /v1/import, /v1/b and the single-message endpoints.

SDKs treat anything but HTTP 200 as failure, so success is exactly 200 ``{"success": true}``, sent only after the
events are committed. Browsers get CORS (these are the only endpoints open to other origins).

These POSTs are the hot path: :class:`IngestFastPath` answers them as a plain ASGI app in front of FastAPI, without
its routing, dependency and middleware layers (a third of the event loop's time per request under load, measured
with py-spy). The FastAPI routes stay -- they document the endpoints in OpenAPI and serve any request the fast path
leaves to them -- and both go through :func:`answer`, so the two cannot behave differently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs

from fastapi import APIRouter, Request, Response
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from portrait.api.errors import RETRY_SAFE, STATUS, STORAGE_RETRY_AFTER, error_body
from portrait.api.headers import API_HEADERS
from portrait.errors import PortraitError, RateLimited, StorageUnavailable
from portrait.service import IncomingRequest, Portrait
from portrait.spec import BATCH_ENDPOINTS, ENDPOINT_TYPES

log = logging.getLogger(__name__)
ENDPOINTS = (*BATCH_ENDPOINTS, *ENDPOINT_TYPES)
SUCCESS = b'{"success":true}'
# RFC 9110: a 401 names the scheme that works; the write key goes as the Basic-auth user name (or in the body).
# Not to browsers (requests with an Origin): a Basic challenge on a same-origin request (ingestion proxied on the
# shop's own domain) makes the browser ask every visitor for a password, so they get a scheme no browser acts on.
WRITE_KEY_CHALLENGE = 'Basic realm="Portrait ingestion", charset="UTF-8"'
BROWSER_CHALLENGE = 'WriteKey realm="Portrait ingestion"'
CORS_HEADERS = {
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Authorization, Content-Encoding, X-Retry-Count",
    "Access-Control-Max-Age": "86400",
    # analytics.js waits as long as X-RateLimit-Reset says after a 429; a browser shows it only if exposed
    "Access-Control-Expose-Headers": "Retry-After, X-RateLimit-Reset",
}
Answer = tuple[int, bytes, dict[str, str]]
# Bodies larger than this are read and checked in a worker thread. An SDK's usual batch (100 events, ~30 KB) is read
# on the event loop, which is cheapest; but a 500 KB batch takes it ~25 ms, and under a flood of them the loop did
# nothing else: /healthz and /api/status waited 20 s (an orchestrator's liveness probe would restart the server).
INLINE_BODY_BYTES = 64 * 1024
# One thread: reading is Python work under the GIL, so more threads would only take turns (and take them from the
# event loop and the writer), not read faster.
_LARGE_BODIES = ThreadPoolExecutor(max_workers=1, thread_name_prefix="portrait-large-bodies")
# How long a sender refused as overloaded is asked to wait: the bodies in progress are read and committed within
# seconds. segment-analytics-python waits exactly this long and @rudderstack/rudder-sdk-node at least this long (three
# times, by default, before it drops the batch); the others back off on their own (docs/ingestion.md, "When the server
# pushes back", says why this is a 503 and not a 429, and what to configure in each SDK).
OVERLOADED_RETRY_AFTER = 2


def cors_for(portrait: Portrait, origin: str | None, requested_headers: str | None = None) -> dict[str, str]:
    """CORS headers for an allowed origin. A preflight asking for headers (analytics.js's ``additionalHeaders``)
    is allowed those: the write key, not the header list, is what guards ingestion."""
    origins = portrait.settings.cors_origins
    if "*" in origins or origin in origins:
        allowed = {"Access-Control-Allow-Headers": requested_headers} if requested_headers else {}
        return {**CORS_HEADERS, **allowed, "Access-Control-Allow-Origin": origin or "*", "Vary": "Origin"}
    return {}


async def answer(portrait: Portrait, endpoint: str, body: bytes, headers: Mapping[str, str], query_key: str | None,
                 ip: str | None, *, complete: bool = True) -> Answer:
    """Ingest one request; returns status, body and headers (errors as ``{"code", "message"}``, see api.errors)."""
    incoming = IncomingRequest(endpoint=endpoint, body=body, content_encoding=headers.get("content-encoding"),
                               authorization=headers.get("authorization"), query_key=query_key, ip=ip,
                               complete=complete)
    cors = cors_for(portrait, headers.get("origin"))
    try:
        if _large(body, headers.get("content-encoding")):
            committed = await asyncio.get_running_loop().run_in_executor(_LARGE_BODIES, portrait.ingest, incoming)
        else:
            committed = portrait.ingest(incoming)
        await asyncio.wrap_future(committed)
    except PortraitError as exc:
        status = next((s for cls, s in STATUS.items() if isinstance(exc, cls)), 500)
        extra = ({"Retry-After": str(exc.retry_after), "X-RateLimit-Reset": str(exc.retry_after)}
                 if isinstance(exc, RateLimited) else {})
        if isinstance(exc, StorageUnavailable):
            extra["Retry-After"] = str(STORAGE_RETRY_AFTER)  # a full disk does not empty itself at once
        if status == 401:
            extra["WWW-Authenticate"] = BROWSER_CHALLENGE if "origin" in headers else WRITE_KEY_CHALLENGE
        return status, error_body(exc.code, exc.message), {**cors, **extra}
    except Exception:
        log.exception("unexpected error while ingesting a request")  # SDKs re-send on 5xx; nothing was committed
        return 500, error_body("internal_error", RETRY_SAFE), cors
    return 200, SUCCESS, cors


def _large(body: bytes, encoding: str | None) -> bool:
    """Whether to read the body in the worker thread: by its size once decompressed, guessed (JSON batches shrink
    about tenfold under gzip, which RudderStack's SDK sends by default)."""
    return len(body) * (10 if encoding else 1) > INLINE_BODY_BYTES


class Admission:
    """Bytes of ingestion bodies in progress (being read, checked, or waiting for their commit), bounded.

    The event loop reads and checks every body (~25 ms for 500 KB) and takes requests in turn, so without a bound
    each connection added its body to every other request's wait: at 256 connections sending 400 KB batches,
    requests waited up to 28 s (past the SDKs' 15 s timeout, so they sent them again) and /api/status 30-40 s. A
    request is counted by its Content-Length from its start, so the work ahead of an admitted one is bounded;
    one that would pass the bound is refused before its body is read into memory. Only the event loop uses it."""

    def __init__(self, limit_bytes: int, largest_body: int) -> None:
        self.limit = limit_bytes  # 0: no bound
        self.largest_body = largest_body  # counted for a body of unknown length (chunked)
        self.in_progress = 0

    def enter(self, headers: Headers) -> int | None:
        """The bytes counted for this request, or None when it would pass the bound (a lone request always fits)."""
        size = self._declared(headers.get("content-length"))
        if self.limit and self.in_progress and self.in_progress + size > self.limit:
            return None
        self.in_progress += size
        return size

    def leave(self, size: int) -> None:
        self.in_progress -= size

    def _declared(self, length: str | None) -> int:
        return min(int(length), self.largest_body) if length and length.isdigit() else self.largest_body


class IngestFastPath:
    """Answers ``POST /v1/<endpoint>`` directly and hands every other request to ``app``."""

    def __init__(self, app: ASGIApp, portrait: Portrait) -> None:
        self.app = app
        self._portrait = portrait
        self._paths = {path: endpoint for endpoint in ENDPOINTS for path in _paths(f"/v1/{endpoint}")}
        self.admission = Admission(portrait.settings.ingest_pending_mb * 1024 * 1024, portrait.limits.max_raw_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self._paths.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        counted = self.admission.enter(headers)
        if counted is None:
            await self._refuse_overloaded(headers, receive, send)
            return
        try:
            await self._ingest(endpoint, scope, headers, receive, send)
        finally:
            self.admission.leave(counted)

    async def _ingest(self, endpoint: str, scope: Scope, headers: Headers, receive: Receive, send: Send) -> None:
        query = parse_qs(scope["query_string"].decode("latin-1")).get("writeKey") if scope["query_string"] else None
        client = scope.get("client")
        received = await self._read(receive, send, keep=True)
        if received is None:
            return
        status, body, extra = await answer(self._portrait, endpoint, received[0], headers,
                                           query[0] if query else None, client[0] if client else None,
                                           complete=received[1])
        await _send(send, status, body, extra, complete=received[1])

    async def _refuse_overloaded(self, headers: Headers, receive: Receive, send: Send) -> None:
        """503 with Retry-After, the body read and dropped unparsed (so the keep-alive connection can be reused)."""
        received = await self._read(receive, send, keep=False)
        if received is None:
            return
        complete = received[1]
        message = (f"the server is busy: {self.admission.in_progress // 1024} KB of requests are being read or "
                   f"written (PORTRAIT_INGEST_PENDING_MB); nothing of this request was stored, send it again in "
                   f"{OVERLOADED_RETRY_AFTER} s")
        extra = {**cors_for(self._portrait, headers.get("origin")), "Retry-After": str(OVERLOADED_RETRY_AFTER)}
        await _send(send, 503, error_body("overloaded", message), extra, complete=complete)

    async def _read(self, receive: Receive, send: Send, *, keep: bool) -> tuple[bytes, bool] | None:
        """The body (``keep``: else read and dropped) and whether it is complete; None when there is no one left to
        answer: the client went away before sending everything, or it was too slow (answered 408)."""
        try:
            async with asyncio.timeout(self._portrait.settings.body_timeout_seconds):
                return await _body(receive, self._portrait.limits.max_raw_bytes, keep=keep)
        except TimeoutError:
            await self._refuse_slow(send)
            return None

    async def _refuse_slow(self, send: Send) -> None:
        """408 and the connection closed: uvicorn has no timeout for a body, so a client sending one slowly (or
        never finishing) held its connection, its buffer and its share of the admission bound for good."""
        seconds = self._portrait.settings.body_timeout_seconds
        message = (f"the request body did not arrive within {seconds} s (PORTRAIT_BODY_TIMEOUT_SECONDS); nothing "
                   "was stored")
        await _send(send, 408, error_body("body_timeout", message), {}, complete=False)


async def _send(send: Send, status: int, body: bytes, extra: dict[str, str], *, complete: bool) -> None:
    if not complete:
        extra = {**extra, "Connection": "close"}  # the rest of the body is not read: the connection ends
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   *((name.lower().encode("latin-1"), value.encode("latin-1"))
                     for name, value in {**API_HEADERS, **extra}.items())]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def _paths(path: str) -> tuple[str, str]:
    """An endpoint's path, and the same with a trailing slash (``/v1/batch/``), answered alike rather than
    redirected: a browser does not follow a redirect of its CORS preflight, and clients that do not send a POST's
    body again after a 307 (curl without -L, Java's HttpURLConnection) lost their events."""
    return path, f"{path}/"


async def _body(receive: Receive, limit: int, *, keep: bool = True) -> tuple[bytes, bool] | None:
    """The request body (empty unless ``keep``) and whether it is complete, or None if the client disconnected
    first (as Starlette's ClientDisconnect). Reading stops once the body is over ``limit`` bytes: a body that can
    only be refused is not held in memory (before the write key is even checked)."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        if keep:
            chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks), False
        if not message.get("more_body", False):
            return b"".join(chunks), True


def router(portrait: Portrait) -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["ingestion"])

    async def ingest(endpoint: str, request: Request) -> Response:
        status, body, headers = await answer(portrait, endpoint, await request.body(), request.headers,
                                             request.query_params.get("writeKey"),
                                             request.client.host if request.client else None)
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    async def preflight(request: Request) -> Response:
        return Response(status_code=204, headers=cors_for(portrait, request.headers.get("origin"),
                                                          request.headers.get("access-control-request-headers")))

    def receiver(endpoint: str) -> Callable[[Request], Awaitable[Response]]:
        # A closure, not a default argument: FastAPI documented ``_endpoint=`` as a query parameter.
        async def post(request: Request) -> Response:
            return await ingest(endpoint, request)
        return post

    for endpoint in ENDPOINTS:
        post = receiver(endpoint)
        path, slashed = _paths(f"/{endpoint}")
        api.add_api_route(path, post, methods=["POST"], name=f"ingest_{endpoint}",
                          summary=f"Segment {endpoint} endpoint", include_in_schema=len(endpoint) > 1)
        api.add_api_route(slashed, post, methods=["POST"], include_in_schema=False)
        for answered in (path, slashed):
            api.add_api_route(answered, preflight, methods=["OPTIONS"], include_in_schema=False)
    return api
