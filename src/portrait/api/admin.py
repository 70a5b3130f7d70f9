"""Admin/read API under /api: profiles, events, rejected events, status. Bearer admin key required."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from starlette.background import BackgroundTask

from portrait.api import paths  # noqa: F401  (registers the {identity:identity} path convertor)
from portrait.api import schemas_attributes as attribute_shapes
from portrait.api import schemas_profiles as profile_shapes
from portrait.api.auth import authorizer, caller
from portrait.api.exports import EXPORT_ANSWER, attribute_names, check_export, exporter, opened_file_answer
from portrait.api.prefer import job_accepted, prefers_async
from portrait.api.query import known_query
from portrait.api.schemas import IssuesPage, ProfileEventsPage, RecentEventsPage, RejectedPage, answer, page
from portrait.errors import BadRequest
from portrait.export_jobs import ExportJobs
from portrait.service import Portrait
from portrait.viewer import Viewer

# A row id or sequence number given as a page's cursor: the store's BIGINT. A larger one (2**127, which the schema
# fuzz sent) reached DuckDB, which could not compare it ("UINT128 ... out of range"): 500 where bad input is a 400.
Cursor = Annotated[int | None, Query(ge=-(2**63), le=2**63 - 1)]
Sequence = Annotated[int, Query(ge=-(2**63), le=2**63 - 1)]


def router(portrait: Portrait, exports: ExportJobs) -> APIRouter:
    api = APIRouter(prefix="/api", dependencies=[Depends(authorizer(portrait)), Depends(known_query)],
                    tags=["admin"])

    @api.get("/status", summary="Ingestion and processing counters; lag = received but not yet on profiles",
             **answer(profile_shapes.Status, "The counters"))
    async def status() -> dict[str, Any]:
        return await run_in_threadpool(portrait.status)

    @api.get("/profiles/{identity:identity}",
             summary="The unified profile of any identifier, e.g. email:ann@example.com",
             **answer(profile_shapes.Profile, "The profile"))
    async def profile(identity: str, request: Request) -> dict[str, Any]:
        document = await run_in_threadpool(portrait.profile, identity)
        return await run_in_threadpool(Viewer(portrait, caller(request)).profile, document, "read_profile")

    @api.get("/profiles/{identity:identity_prefix}/traits", **answer(profile_shapes.Traits, "The profile's traits"))
    async def traits(identity: str, request: Request) -> dict[str, Any]:
        profile_id = await run_in_threadpool(portrait.resolve_profile_id, identity)
        document = {"profile_id": profile_id, "traits": await run_in_threadpool(portrait.traits, identity)}
        shown = await run_in_threadpool(Viewer(portrait, caller(request)).profile, document, "read_traits")
        return dict(shown["traits"])

    @api.get("/profiles/{identity:identity_prefix}/identities",
             **answer(profile_shapes.Identities, "The profile's identities"))
    async def identities(identity: str, request: Request) -> dict[str, Any]:
        profile_id = await run_in_threadpool(portrait.resolve_profile_id, identity)
        document = {"profile_id": profile_id, "identities": await run_in_threadpool(portrait.identities, identity)}
        shown = await run_in_threadpool(Viewer(portrait, caller(request)).profile, document, "read_identities")
        return {"identities": shown["identities"]}

    @api.get("/profiles/{identity:identity_prefix}/events", summary="Events of a profile, newest first, with a cursor",
             **page(ProfileEventsPage))
    async def events(
        identity: str,
        event: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        *, request: Request,
    ) -> dict[str, Any]:
        page = await run_in_threadpool(
            lambda: portrait.events(identity, event=event, since=_utc(since), until=_utc(until), cursor=cursor,
                                    limit=limit))
        shown = await run_in_threadpool(Viewer(portrait, caller(request)).profile_events, page)
        return shown

    @api.get("/profiles/{identity:identity_prefix}/consent", summary="Current consent per purpose, and every statement",
             **answer(profile_shapes.Consents, "The consents"))
    async def consent(identity: str) -> dict[str, Any]:
        return await run_in_threadpool(portrait.consents, identity)

    @api.post("/profiles/{identity:identity_prefix}/consent",
              summary="Record consent: {purpose: granted|denied|{status, legal_basis}}",
              **answer(profile_shapes.ConsentRecorded, "The statements recorded"))
    async def set_consent(identity: str, payload: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        return await run_in_threadpool(portrait.set_consent, identity, payload)

    @api.get("/events/rejected", summary="Messages and requests that were not accepted, with the reason",
             **page(RejectedPage))
    async def rejected(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before: Cursor = None,
        code: str | None = None,
        *, request: Request,
    ) -> dict[str, Any]:
        found = await run_in_threadpool(lambda: portrait.rejected(limit=limit, before_id=before, code=code))
        return Viewer(portrait, caller(request)).rejected(found)

    @api.get("/events/recent", summary="Events after a sequence number, oldest first (for tailing)",
             **page(RecentEventsPage))
    async def recent(request: Request, after: Sequence = 0, limit: Annotated[int, Query(ge=1, le=1000)] = 100
                     ) -> dict[str, Any]:
        events = await run_in_threadpool(portrait.recent_events, after, limit)
        return {"events": await run_in_threadpool(Viewer(portrait, caller(request)).events, events),
                "next": events[-1]["seq"] if len(events) == limit else None}

    @api.get("/data-quality", summary="Trait values not applied because they break their attribute's rules",
             **page(IssuesPage))
    async def data_quality(
        request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100, before: Cursor = None,
        attribute: str | None = None,
    ) -> dict[str, Any]:
        found = await run_in_threadpool(lambda: portrait.data_quality(limit=limit, before_id=before,
                                                                      attribute=attribute))
        return await run_in_threadpool(Viewer(portrait, caller(request)).data_quality, found)

    @api.get("/attributes", summary="The attribute registry: standard and custom profile attributes",
             **answer(attribute_shapes.Attributes, "The attributes"))
    async def attributes(request: Request, standard: bool | None = None, status: str | None = None
                         ) -> dict[str, Any]:
        listed = await run_in_threadpool(lambda: portrait.attributes.list(standard=standard, status=status))
        return {"attributes": await run_in_threadpool(Viewer(portrait, caller(request)).attributes, listed)}

    @api.get("/attributes/{code}", summary="One attribute, with how many profiles have a value",
             **answer(attribute_shapes.AttributeWithUsage, "The attribute"))
    async def attribute(code: str, request: Request) -> dict[str, Any]:
        found = await run_in_threadpool(portrait.attributes.get, code)
        return await run_in_threadpool(Viewer(portrait, caller(request)).attribute, found)

    @api.get("/attributes/{code}/analytics", summary="Fill rate, distinct and top values, numeric and date stats",
             **answer(attribute_shapes.Analytics, "The analytics"))
    async def attribute_analytics(code: str, request: Request, top: Annotated[int, Query(ge=1, le=100)] = 10
                                  ) -> dict[str, Any]:
        stats = await run_in_threadpool(lambda: portrait.attributes.analytics(code, top))
        return await run_in_threadpool(Viewer(portrait, caller(request)).analytics, code, stats)

    @api.post("/attributes", summary="Define a custom attribute", status_code=201,
              **answer(attribute_shapes.AttributeWithUsage, "The attribute defined", 201))
    async def create_attribute(payload: Annotated[dict[str, Any], Body()], request: Request) -> dict[str, Any]:
        viewer = Viewer(portrait, caller(request))
        await run_in_threadpool(viewer.check_definition, str(payload.get("code")), payload)
        return await run_in_threadpool(viewer.attribute, await run_in_threadpool(portrait.create_attribute, payload))

    @api.patch("/attributes/{code}", summary="Change an attribute's description, flags or status (deprecate)",
               **answer(attribute_shapes.AttributeWithUsage, "The attribute changed"))
    async def update_attribute(code: str, payload: Annotated[dict[str, Any], Body()], request: Request
                               ) -> dict[str, Any]:
        viewer = Viewer(portrait, caller(request))
        payload = await run_in_threadpool(viewer.without_shown_definition, code, payload)
        await run_in_threadpool(viewer.check_attribute_change, code, payload)
        return await run_in_threadpool(viewer.attribute, await run_in_threadpool(portrait.update_attribute, code,
                                                                                 payload))

    @api.post("/attributes/recheck", summary="Recompute every profile's traits from the log with the current "
                                             "attribute definitions (processing pauses meanwhile)",
              **answer(attribute_shapes.Rechecked, "What the recheck read and found"))
    async def recheck_attributes() -> dict[str, int]:
        return await run_in_threadpool(portrait.rebuild_traits)

    @api.post("/rebuild", summary="Derive every profile again from the event log with the current settings "
                                   "(processing pauses meanwhile)",
              **answer(attribute_shapes.Rebuilt, "What the rebuild did"))
    async def rebuild_profiles() -> dict[str, int]:
        return await run_in_threadpool(portrait.rebuild_profiles)

    @api.post("/backups", status_code=201, summary="Back up the database now (ingestion goes on); optional body "
                                                   "{\"name\": \"before-migration\"}; with the header "
                                                   "`Prefer: respond-async`, as a job to poll",
              responses={**answer(attribute_shapes.BackupMade, "The backup, made", 201)["responses"],
                         **answer(attribute_shapes.BackupJob, "The backup job, running (its Location is where "
                                                              "to poll it)", 202)["responses"]},
              response_model=None)
    async def make_backup(request: Request, payload: Annotated[dict[str, Any] | None, Body()] = None) -> Any:
        # The copy takes time in proportion to the database: a multi-GB one under traffic outlasted the clients'
        # 120 s timeouts. Whoever cannot wait that long asks for a job (the CLI and the console do); a script that
        # waits for the backup and then copies it elsewhere still gets it made (see portrait.api.prefer).
        fields = payload or {}
        unknown = set(fields) - {"name"}
        if unknown:
            raise BadRequest(f"unknown backup fields: {', '.join(sorted(unknown))} (only name)", code="invalid_backup")
        if not prefers_async(request):
            return await run_in_threadpool(portrait.backups.make, fields.get("name"))
        job = await run_in_threadpool(portrait.backups.start, fields.get("name"))
        return job_accepted(job, f"/api/backups/jobs/{job['id']}")

    @api.get("/backups/jobs/{job_id}", summary="A backup job: running (bytes written so far), done (the backup) or "
                                               "failed (why)",
             **answer(attribute_shapes.BackupJob, "The job"))
    async def backup_job(job_id: str) -> dict[str, Any]:
        return await run_in_threadpool(portrait.backups.job, job_id)

    @api.get("/backups", summary="The backups in the backup folder, newest first",
             **answer(attribute_shapes.Backups, "The backups"))
    async def backups() -> dict[str, Any]:
        return await run_in_threadpool(portrait.backups.listing)

    @api.post("/attributes/recalculate", summary="Recompute every calculated attribute for every profile now",
              **answer(attribute_shapes.Recalculated, "How many were recomputed"))
    async def recalculate() -> dict[str, Any]:
        return await run_in_threadpool(portrait.recalculate)

    @api.get("/exports/profiles", summary="Every profile with the chosen attributes, as CSV, Parquet or NDJSON",
             response_class=FileResponse, responses={200: EXPORT_ANSWER})
    async def export(
        format: str = "csv",
        attributes: Annotated[str | None, Query(description="Comma-separated codes.")] = None,
        include_personal: bool = False,
        segment: Annotated[str | None, Query(description="Only this segment's members (id or name).")] = None,
        purpose: Annotated[str | None, Query(description="What the export is for (e.g. marketing): only profiles "
                                                         "that granted it.")] = None,
        ignore_consent: Annotated[bool, Query(description="Export regardless of consent (audited).")] = False,
        *, request: Request,
    ) -> StreamingResponse:
        names = attribute_names(attributes)
        key = caller(request)
        await run_in_threadpool(check_export, portrait, key, names, include_personal)
        # A job of the server's export queue, waited for here: PORTRAIT_EXPORTS_AT_ONCE bounds these as it bounds
        # POST /api/exports (each export holds the profiles it writes in memory; run at once, any number of them
        # could run the server out of memory), and its folder is the one a restart after kill -9 sweeps.
        asked = {"format": format, "attributes": names, "include_personal": include_personal, "segment": segment,
                 "purpose": purpose, "ignore_consent": ignore_consent}
        job = exports.start(key.id, format, exporter(portrait, key, asked))
        await run_in_threadpool(exports.wait, job)
        if job.error is not None:  # as the export run in the request raised it
            raise job.error
        opened, report = await run_in_threadpool(exports.file, job.id, key.id)
        return opened_file_answer(opened, report, background=BackgroundTask(exports.cancel, job.id, key.id))

    return api


def _utc(value: datetime | None) -> datetime | None:
    """Query times with a zone become naive UTC, like everything in the store."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)
