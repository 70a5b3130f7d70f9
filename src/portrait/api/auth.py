"""Who may call the API.

Every ``/api`` request carries ``Authorization: Bearer <key>``. Reads (GET, and the read-only POSTs below) need
the ``read`` scope, everything else ``admin``; write keys only send events. An unknown or revoked key is 401, a
known key without the scope 403, both as ``{"code", "message"}``. What a key then sees (personal data masked
without ``pii:read``, reads of it audited with it) is :class:`portrait.viewer.Viewer`'s to say.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from fastapi import Request

from portrait.errors import Forbidden, Unauthorized
from portrait.keys import ApiKey
from portrait.service import Portrait

READ_ONLY_POSTS = frozenset({"/api/segments/preview", "/api/analytics/funnel",
                             "/api/exports"})  # the job of GET /api/exports/profiles, a read
# A key removes its own export jobs (and files), which it may start with the read scope (ExportJobs: per key)
OWN_JOBS = re.compile(r"/api/exports/[^/]+")


@functools.cache
def authorizer(portrait: Portrait) -> Callable[[Request], ApiKey]:
    """The dependency every /api router uses (one function per service, so FastAPI runs it once per request)."""

    def authorize(request: Request) -> ApiKey:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send an API key as 'Authorization: Bearer <key>'")
        key = portrait.keys.authenticate(token.strip())
        portrait.rate_limiter.take(key.id)
        request.state.key = key  # known from here: a change it is refused (403) is audited too, as who tried what
        if key.kind == "write":
            raise Forbidden(f"key {key.id} is a write key: it only sends events to /v1; use a read or admin key")
        reading = (request.method in ("GET", "HEAD") or request.url.path in READ_ONLY_POSTS
                   or (request.method == "DELETE" and OWN_JOBS.fullmatch(request.url.path) is not None))
        portrait.keys.require(key, "read" if reading else "admin",
                              f"{request.method} {request.url.path}" if not reading else "read")
        return key

    return authorize


def caller(request: Request) -> ApiKey:
    """The key the router's dependency authorized for this request."""
    key: ApiKey = request.state.key
    return key
