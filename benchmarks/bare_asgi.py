"""The baseline for the ingest benchmark: a bare ASGI endpoint that only reads the body and parses the JSON."""

from __future__ import annotations

from typing import Any

import orjson

SUCCESS = b'{"success":true}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    orjson.loads(b"".join(chunks))
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": SUCCESS})
