"""Query parameters an operation does not take are refused, not ignored.

Lists page with differently named parameters (``cursor`` for a profile's events, ``after`` for members, ``before``
for the rest): a client that sent ``?cursor=`` to the members list got the first page again, every time, and paged
forever; ``?limt=5`` silently gave 100. Now both are a 400 naming the parameters the operation takes.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.routing import APIRoute

from portrait.errors import BadRequest


def known_query(request: Request) -> None:
    """The dependency that refuses a query parameter the matched operation does not declare."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    # the operation's own parameters: the routers' shared dependencies (the key check, this) take none
    declared = {param.alias for param in route.dependant.query_params}
    unknown = sorted(set(request.query_params) - declared)
    if unknown:
        takes = ", ".join(sorted(declared)) or "none"
        raise BadRequest(f"unknown query parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                         f"(this operation takes: {takes})", code="invalid_request")
