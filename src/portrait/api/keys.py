"""API keys and the audit log under /api (admin scope for keys; the audit log needs read)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from portrait.api import schemas_access as shapes
from portrait.api.auth import authorizer, caller
from portrait.api.query import known_query
from portrait.api.schemas import AuditPage, answer, page
from portrait.errors import BadRequest
from portrait.keys import ApiKey, scopes_for
from portrait.service import Portrait


def router(portrait: Portrait) -> APIRouter:
    api = APIRouter(prefix="/api", dependencies=[Depends(authorizer(portrait)), Depends(known_query)],
                    tags=["keys"])

    @api.get("/keys", summary="Every key: id, kind, name, scopes, active or revoked (never the secret)",
             **answer(shapes.Keys, "The keys"))
    async def keys(request: Request) -> dict[str, Any]:
        portrait.keys.require(caller(request), "admin", "list keys")
        return {"keys": portrait.keys.all()}

    @api.post("/keys", status_code=201, summary="Create a key; the answer holds its secret, shown this once",
              **answer(shapes.NewKey, "The key, with its secret", 201))
    async def create(payload: Annotated[dict[str, Any], Body()], request: Request) -> dict[str, Any]:
        unknown = set(payload) - {"kind", "name", "scopes"}
        if unknown:
            raise BadRequest(f"unknown key fields {', '.join(sorted(unknown))}", code="invalid_key")
        kind = str(payload.get("kind", ""))
        granted = scopes_for(kind, payload.get("scopes"))
        if "pii:read" in granted:  # a key without pii:read cannot hand it out (an admin key's default has it)
            portrait.keys.require(caller(request), "pii:read", "create a key with the pii:read scope")
        secret, created = await run_in_threadpool(lambda: portrait.keys.create(kind, payload.get("name", ""),
                                                                               list(granted)))
        request.state.audit_detail = _audited(created)
        return {**created.public(), "key": secret}

    @api.post("/keys/{key_id}/revoke", summary="Revoke a key: it is refused (401) from now on",
              **answer(shapes.Key, "The key, revoked"))
    async def revoke(key_id: str) -> dict[str, Any]:
        return (await run_in_threadpool(portrait.keys.revoke, key_id)).public()

    @api.post("/keys/{key_id}/rotate", summary="A new secret with the same kind, name and scopes; the old is revoked",
              **answer(shapes.RotatedKey, "The new key, with its secret"))
    async def rotate(key_id: str, request: Request) -> dict[str, Any]:
        if (await run_in_threadpool(portrait.keys.find, key_id)).can_read_pii:  # the new secret would read it
            portrait.keys.require(caller(request), "pii:read", "rotate a key with the pii:read scope")
        secret, fresh = await run_in_threadpool(portrait.keys.rotate, key_id)
        request.state.audit_detail = {**_audited(fresh), "replaces": key_id}
        return {**fresh.public(), "key": secret, "replaces": key_id}

    @api.get("/audit", summary="The audit log, newest first: admin actions and reads of personal data",
             **page(AuditPage))
    async def audit(request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100, before: int = 0
                    ) -> dict[str, Any]:
        portrait.keys.require(caller(request), "admin", "read the audit log")
        return await run_in_threadpool(lambda: portrait.audit.entries(before_id=before, limit=limit))

    return api


def _audited(key: ApiKey) -> dict[str, Any]:
    """What the audit log keeps of a key made through the API (the path says only /api/keys): never its secret."""
    return {"key_id": key.id, "kind": key.kind, "name": key.name, "scopes": sorted(key.scopes)}
