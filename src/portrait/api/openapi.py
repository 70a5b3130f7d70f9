"""The OpenAPI document as the server really answers, so a generated client can read every response.

FastAPI declares a 422 with its own ``{"detail": [...]}`` body on every operation with parameters; this API answers
bad input with 400 and ``{"code", "message"}`` instead (:mod:`portrait.api.errors`), and never 422. Here the 422 is
replaced by the error responses each operation can really give, all with the one ``Error`` schema, and the
ingestion endpoints get their ``{"success": true}`` answer.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error", "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string", "description": "Stable machine-readable code, e.g. not_found"},
                   "message": {"type": "string", "description": "What went wrong and why, for people"}},
    "example": {"code": "not_found", "message": "no profile has the identity email:ann@example.com"},
}
SUCCESS_SCHEMA: dict[str, Any] = {
    "title": "Accepted", "type": "object", "required": ["success"],
    "properties": {"success": {"type": "boolean", "const": True}},
}
_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_WHY = {
    400: "Bad input: query parameters, body or identity (codes such as invalid_request, invalid_cursor)",
    401: "No key, or an unknown or revoked one (unauthorized)",
    403: "The key lacks the scope (forbidden)",
    404: "No such profile, segment, attribute, key, source or request (not_found)",
    408: "The body did not arrive in time (body_timeout)",
    409: "Conflicts with the current state (segment_exists, attribute_in_use, sync_running, ...)",
    410: "It was there and is gone: an export's file deleted by something other than Portrait (export_file_gone)",
    429: "Too many requests (rate_limited); see Retry-After",
    500: "Unexpected error; safe to retry (internal_error)",
    502: "The SQL source could not be reached or refused the query (source_failed)",
    503: "The database or its disk cannot take writes now (storage_unavailable, overloaded); see Retry-After",
}


def error_statuses(path: str, method: str) -> tuple[int, ...]:
    """The error statuses one operation can answer with."""
    if path.startswith("/v1/"):
        return 400, 401, 403, 408, 429, 500, 503
    statuses = {400, 401, 403, 429, 500, 503}
    if "{" in path or path.startswith(("/api/segments", "/api/analytics", "/api/exports")):
        statuses.add(404)  # a named thing, or a segment named in the body or query
    # The file: not ready yet; the export answered in its request: the server stopping while it waited its turn.
    if method in ("post", "patch", "delete") or path in ("/api/exports/{job_id}/file", "/api/exports/profiles"):
        statuses.add(409)
    if path == "/api/exports/{job_id}/file":  # its file deleted under it by a /tmp cleaner, say
        statuses.add(410)
    if path.startswith("/api/sources"):
        statuses.add(502)
    return tuple(sorted(statuses))


def _with_errors(path: str, method: str, operation: dict[str, Any]) -> None:
    responses = operation["responses"]
    responses.pop("422", None)
    for status in error_statuses(path, method):
        responses.setdefault(str(status), {"description": _WHY[status],
                                           "content": {"application/json": {"schema": _ERROR_REF}}})
    if path.startswith("/v1/"):
        responses["200"] = {"description": "Every message was stored (or left out as a copy of one stored)",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}}}


def document(app: FastAPI) -> dict[str, Any]:
    spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            _with_errors(path, method, operation)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["Error"] = ERROR_SCHEMA
    schemas["Accepted"] = SUCCESS_SCHEMA
    return spec


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
