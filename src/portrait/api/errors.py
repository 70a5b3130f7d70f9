"""The one mapping from domain errors to HTTP responses: ``{"code": ..., "message": ...}`` with a fitting status."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from portrait.errors import (
    BadRequest,
    Conflict,
    DatabaseDamaged,
    DatabaseInUse,
    Forbidden,
    Gone,
    Interrupted,
    NotFound,
    PortraitError,
    RateLimited,
    SourceUnavailable,
    StorageUnavailable,
    Unauthorized,
)

log = logging.getLogger(__name__)
RETRY_SAFE = "the server could not complete the request; it is safe to retry"
STATUS: dict[type[PortraitError], int] = {BadRequest: 400, Unauthorized: 401, Forbidden: 403, NotFound: 404,
                                          Conflict: 409, Gone: 410, RateLimited: 429, SourceUnavailable: 502,
                                          DatabaseInUse: 503, StorageUnavailable: 503, Interrupted: 503,
                                          DatabaseDamaged: 503}


# How long a sender refused for a full disk is asked to wait (ingestion and the API alike).
STORAGE_RETRY_AFTER = 10


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"code": code, "message": message})


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    # The /api scheme unless the caller names another (ingestion's write key is a Basic-auth user name).
    headers = {**({"WWW-Authenticate": "Bearer"} if status == 401 else {}), **(headers or {})}
    return Response(error_body(code, message), status_code=status, headers=headers, media_type="application/json")


class UnexpectedErrors:
    """Answers an unexpected exception with the JSON 500 and keeps the connection open.

    Logged with the traceback by the server; the client learns only that a retry is safe (SDKs re-send on 5xx, and
    nothing of the request was committed). Not Starlette's handler for ``Exception``: that one raises the exception
    again after answering, and uvicorn then drops the keep-alive connection, so the client's next request on it
    failed too (connection reset).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            if started:  # half an answer went out: only closing the connection can say it failed
                raise
            log.error("unexpected error while serving a request", exc_info=exc)
            await error_response(500, "internal_error", RETRY_SAFE)(scope, receive, send)


def status_of(exc: PortraitError) -> int:
    """The HTTP status the API answers a domain error with (500 for one it does not name)."""
    return next((s for cls, s in STATUS.items() if isinstance(exc, cls)), 500)


def install(app: FastAPI) -> None:
    @app.exception_handler(PortraitError)
    async def _domain(_: Request, exc: PortraitError) -> Response:
        status = status_of(exc)
        retry = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
        if isinstance(exc, StorageUnavailable):  # as ingestion says it: a full disk does not empty itself at once
            retry = {"Retry-After": str(STORAGE_RETRY_AFTER)}
        return error_response(status, exc.code, exc.message, retry)

    app.add_middleware(UnexpectedErrors)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        # The framework's own answers (no such path, method not allowed) in the API's error shape.
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405 and "Allow" in headers:
            headers["Allow"] = _allowed(request) or headers["Allow"]
        return error_response(exc.status_code, code, _framework_message(request, exc, headers), headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        return error_response(400, "invalid_request", "; ".join(map(_invalid, exc.errors())))


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed(request: Request) -> str:
    """Every method the request's path takes. The framework's Allow names those of the first route on the path only
    (`GET` for /api/segments, where POST creates a segment too). Each method is tried on the app's routes as the
    router tries them (a 405 is rare: the cost is of no matter)."""
    routes = request.app.router.routes

    def taken(method: str) -> bool:
        tried = {**request.scope, "method": method}
        return any(route.matches(tried)[0] is Match.FULL for route in routes)

    return ", ".join(method for method in _METHODS if taken(method))


def _framework_message(request: Request, exc: HTTPException, headers: dict[str, str]) -> str:
    """The framework's bare `Not Found` and `Method Not Allowed`, said with what to do: the usual slip is an SDK
    given the server's address with /v1, which it adds itself (its log then showed only `Not Found`)."""
    method, path = request.method, request.url.path
    if exc.status_code == 405 and "Allow" in headers:
        return f"{method} is not allowed on {path}; it takes {headers['Allow']}"
    if exc.status_code != 404 or exc.detail != "Not Found":  # a message of our own: kept
        return str(exc.detail)
    if path.startswith("/v1/v1/"):
        server = str(request.base_url).rstrip("/")
        return (f"no endpoint {method} {path}: an SDK's host is the server's address alone, without /v1 "
                f"(here {server})")
    return (f"no endpoint {method} {path}: ingestion is under /v1 (/v1/batch, /v1/track...), the API under /api; "
            "/docs lists every endpoint")


# pydantic's wording for the query and path parameters' rules ("query.limit: Input should be less than or equal to
# 1000"), said as the rest of the API says things: "limit must be at most 1000, not 5000".
_RULES: dict[str, str] = {
    "less_than_equal": "must be at most {le}", "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}", "greater_than": "must be more than {gt}",
    "int_parsing": "must be a whole number", "int_from_float": "must be a whole number",
    "float_parsing": "must be a number", "bool_parsing": "must be true or false", "missing": "is required",
}
_WHERE = {"query": "query parameter", "path": "path part", "header": "header", "body": "body field"}


def _invalid(error: dict[str, Any]) -> str:
    """One broken rule, said plainly: which parameter, what it must be, and what was sent (for the query and
    path, which the caller wrote in the URL; never a body's values, which may be anyone's personal data)."""
    where, *names = [str(part) for part in error.get("loc", ())] or ["request"]
    name = ".".join(names) or where
    rule = _RULES.get(str(error.get("type")))
    said = rule.format(**error.get("ctx", {})) if rule else str(error.get("msg", "is not valid"))
    sent = error.get("input")
    shown = f", not {str(sent)[:40]!r}" if where in ("query", "path") and rule and rule != "is required" else ""
    return f"{_WHERE.get(where, where)} {name} {said}{shown}"
