"""The API reads request bodies as JSON whatever the client labels them, as ingestion does.

``curl -d '{...}'`` labels its body ``application/x-www-form-urlencoded`` and plain clients often send none: FastAPI
then does not parse the JSON and answers "Input should be a valid dictionary", which says nothing of the cause.
No API route takes a form, so such bodies are relabelled JSON before FastAPI sees them. ``/api/imports`` takes the
file itself as its body and is left alone; a body that is not JSON still gets the API's 400 naming the problem.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

WRITES = frozenset(("POST", "PUT", "PATCH"))
READ_AS_JSON = frozenset((b"", b"application/x-www-form-urlencoded", b"text/plain"))
RAW_BODIES = frozenset(("/api/imports",))


class JsonBodies:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["method"] in WRITES and scope["path"].startswith("/api/")
                and scope["path"] not in RAW_BODIES):
            label = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
            if label.split(b";")[0].strip().lower() in READ_AS_JSON:
                headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)
