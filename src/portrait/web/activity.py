"""Console pages: segments and their builder, funnels, live events, sources and keys; plus the two JSON calls the
pages' script makes (live count of a condition, new events), which need the session's CSRF token."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.background import BackgroundTask

from portrait.api.imports import job_document, received, start_job
from portrait.errors import NotFound, PortraitError
from portrait.import_jobs import ImportJobs
from portrait.mapping import combine, parse_mapping_text
from portrait.privacy import mask_request
from portrait.service import Portrait
from portrait.web.charts import bars, funnel, sparkline
from portrait.web.common import Console, SignInNeeded, form_error, status_of
from portrait.web.pages import page

SPARKLINE_SIZES = 20  # recounts drawn in the segment list's trend
CHARTED_SIZES = 30  # recounts drawn in a segment's size chart


def recent_sizes(portrait: Portrait, segment_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Each segment's newest sizes, for the list's trends. Only the newest: a size is recorded at every full
    recount (~105,000 a year per segment), and reading them all made the page slower the longer the server ran.
    A segment deleted since it was listed has none (the soak's concurrent deletes made the page a 404)."""
    found: dict[int, list[dict[str, Any]]] = {}
    for segment_id in segment_ids:
        try:
            found[segment_id] = portrait.segments.latest_sizes(segment_id, SPARKLINE_SIZES)
        except NotFound:
            found[segment_id] = []
    return found


def router(console: Console, jobs: ImportJobs) -> APIRouter:
    web = APIRouter(include_in_schema=False)
    portrait = console.portrait
    guard = page(console)

    @web.get("/segments")
    @guard
    async def segments(request: Request) -> Response:
        listed = console.viewer(request).segments(await run_in_threadpool(portrait.segments.all))
        recent = await run_in_threadpool(recent_sizes, portrait, [s["id"] for s in listed])
        trends = {found: sparkline([float(x["size"]) for x in sizes]) for found, sizes in recent.items()}
        return console.render(request, "segments.html", {"segments": listed, "trends": trends})

    async def builder_page(request: Request, values: dict[str, str], error: dict[str, str] | None = None,
                           status: int = 200) -> Response:
        attributes = [a for a in await run_in_threadpool(portrait.attributes.list) if a["status"] == "active"]
        existing = await run_in_threadpool(portrait.segments.all)
        return console.render(request, "builder.html", {"values": values, "error": error,
                                                        "attributes": attributes, "segments": existing}, status)

    @web.get("/segments/new")
    @guard
    async def builder(request: Request, condition: str = "") -> Response:
        console.session(request)
        return await builder_page(request, {"condition": condition})

    @web.post("/segments")
    @guard
    async def create_segment(request: Request) -> Response:
        fields, _ = await console.admin_form(request, "create segments")
        wanted = {k: fields.get(k, "") for k in ("name", "condition", "description")}
        try:
            await run_in_threadpool(console.viewer(request).check_condition, wanted["condition"])
            created = await run_in_threadpool(portrait.create_segment, wanted)
        except PortraitError as exc:  # the builder again, with what was typed and why it was refused
            return await builder_page(request, wanted, form_error(exc, "condition"), status_of(exc))
        return RedirectResponse(f"/segments/{created['id']}", status_code=303)

    @web.get("/segments/{segment}")
    @guard
    async def segment(request: Request, segment: str, after: str = "") -> Response:
        viewer = console.viewer(request)
        found = viewer.segment(await run_in_threadpool(portrait.segments.get, segment))
        members = viewer.members(await run_in_threadpool(
            lambda: portrait.segments.members(segment, after=after, limit=50)))
        sizes = await run_in_threadpool(portrait.segments.latest_sizes, segment, CHARTED_SIZES)
        chart = bars([(s["at"][5:16], s["size"]) for s in sizes], label="size over time",
                     columns=("Counted at", "Members"))
        return console.render(request, "segment.html", {"segment": found, "members": members, "chart": chart})

    @web.get("/segments/{segment}/export.csv")
    @guard
    async def export(request: Request, segment: str) -> Response:
        masked = not console.viewer(request).sees_pii
        folder = Path(tempfile.mkdtemp(prefix="portrait-console-"))
        path = folder / "members.csv"
        await run_in_threadpool(lambda: portrait.export_profiles(path, "csv", segment=segment,
                                                                 mask_identifiers=masked))
        return FileResponse(path, media_type="text/csv", filename=f"segment-{segment}.csv",
                            background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))

    @web.get("/funnels")
    @guard
    async def funnels(request: Request, steps: str = "", within: str = "7d") -> Response:
        console.session(request)
        names = [s.strip() for s in steps.split(",") if s.strip()]
        try:
            result = await run_in_threadpool(portrait.funnel, {"steps": names, "within": within}) if names else None
        except PortraitError as exc:  # the form again, with what was typed and why it was refused
            return console.render(request, "funnels.html", {"steps": steps, "within": within, "result": None,
                                                            "error": form_error(exc, "within")}, status_of(exc))
        return console.render(request, "funnels.html", {
            "steps": steps, "within": within, "result": result,
            "chart": funnel(result["steps"]) if result else None})

    @web.get("/events")
    @guard
    async def events(request: Request) -> Response:
        viewer = console.viewer(request)
        rejected = viewer.rejected(await run_in_threadpool(lambda: portrait.rejected(limit=50)))
        last = int((await run_in_threadpool(portrait.status))["last_seq"])
        return console.render(request, "events.html", {"rejected": rejected["rejected"], "after": max(0, last - 20)})

    async def admin_page(request: Request, values: dict[str, str], error: dict[str, str] | None = None,
                         status: int = 200) -> Response:
        _, key = console.session(request)
        is_admin = "admin" in key.scopes
        return console.render(request, "admin.html", {
            "keys": portrait.keys.all() if is_admin else [], "reads_exports": is_admin and key.can_read_pii,
            "requests": [r if key.can_read_pii else mask_request(r)
                         for r in await run_in_threadpool(portrait.privacy.all)] if is_admin else [],
            "host": str(request.base_url).rstrip("/"), "sources": await run_in_threadpool(portrait.sources.all),
            "backups": await run_in_threadpool(portrait.backups.listing) if is_admin else None,
            "values": values, "error": error}, status)

    @web.get("/admin")
    @guard
    async def admin(request: Request) -> Response:
        return await admin_page(request, {})

    @web.post("/admin/privacy")
    @guard
    async def privacy(request: Request) -> Response:
        fields, key = await console.admin_form(request, "make privacy requests")
        wanted = {"type": fields.get("type", ""), "identity": fields.get("identity", "")}
        # Queued for the server's worker, not run in this request: an erasure first applies whatever waits in the
        # log, which after a big import takes a while. The page refreshes until it is done (console.js).
        try:
            await run_in_threadpool(lambda: portrait.privacy_request(
                wanted, f"console: {key.name}", run_now=not portrait.runs_privacy_requests))
        except PortraitError as exc:  # the page again, with what was typed and why it was refused
            return await admin_page(request, wanted, form_error(exc, "identity"), status_of(exc))
        await run_in_threadpool(lambda: portrait.audit.record(key, f"console privacy request {fields.get('type')}"))
        return RedirectResponse("/admin", status_code=303)

    @web.post("/admin/backups")
    @guard
    async def make_backup(request: Request) -> Response:
        _, key = await console.admin_form(request, "make backups")
        try:  # started, not waited for (the copy of a large database takes minutes); the list shows its progress
            started = await run_in_threadpool(portrait.backups.start)
        except PortraitError as exc:
            return await admin_page(request, {}, {"message": exc.message, "field": "backup"}, status_of(exc))
        # the API's audit middleware does not see console forms: recorded here
        await run_in_threadpool(lambda: portrait.audit.record(key, "console backup", target=started["name"]))
        return RedirectResponse("/admin#backups", status_code=303)

    @web.get("/admin/privacy/{request_id}/export.json")
    @guard
    async def access_export(request: Request, request_id: str) -> Response:
        """The finished access request's export, as the API gives it (admin and pii:read, audited)."""
        _, key = console.session(request)
        portrait.keys.require(key, "admin", "read privacy requests")
        portrait.keys.require(key, "pii:read", "read an access export")
        found = await run_in_threadpool(portrait.privacy.get, request_id)
        if found["type"] != "access" or not found.get("result"):
            raise NotFound(f"privacy request {request_id} has no access export (yet)")
        await run_in_threadpool(lambda: portrait.audit.record(
            key, "read_access_export", target=request_id,
            profile_id=(found["result"].get("profile") or {}).get("profile_id")))
        return Response(orjson.dumps(found["result"], option=orjson.OPT_INDENT_2), media_type="application/json",
                        headers={"Content-Disposition": f'attachment; filename="access-{request_id}.json"'})

    # -- the script's calls --------------------------------------------------------------------------------------
    @web.post("/console/api/preview")
    async def preview(request: Request) -> Response:
        try:
            console.check_header(request)
            body = orjson.loads(await request.body() or b"{}")
            viewer = console.viewer(request)
            await run_in_threadpool(viewer.check_condition, body.get("condition", ""))
            found = await run_in_threadpool(portrait.segments.preview, body.get("condition", ""))
            return JSONResponse(await run_in_threadpool(viewer.preview, found))
        except SignInNeeded:
            return JSONResponse({"code": "unauthorized", "message": "sign in again"}, status_code=401)
        except PortraitError as exc:
            return JSONResponse({"code": exc.code, "message": exc.message}, status_code=status_of(exc))
        except orjson.JSONDecodeError:
            return JSONResponse({"code": "invalid_json", "message": "send JSON"}, status_code=400)

    @web.get("/console/api/recent")
    async def recent(request: Request, after: int = 0) -> Response:
        try:
            viewer = console.viewer(request)
        except SignInNeeded:
            return JSONResponse({"code": "unauthorized", "message": "sign in again"}, status_code=401)
        events: list[dict[str, Any]] = await run_in_threadpool(
            lambda: portrait.recent_events(after, 100, details=True))
        return JSONResponse({"events": viewer.events(events)})

    @web.post("/console/api/import")
    async def upload(request: Request, filename: str, kind: str = "events", dry_run: bool = False,
                     mapping: str = "") -> Response:
        """The file, imported as a job (see :mod:`portrait.import_jobs`): answered once received, then polled."""
        try:
            console.check_header(request)
            _, key = console.session(request)
            portrait.keys.require(key, "admin", "import files")
            document = parse_mapping_text(mapping, "the column mapping") if mapping else None
            rows = combine(kind, document, None, {})
            upload_path = await received(request, filename)
            job = await run_in_threadpool(lambda: start_job(portrait, jobs, key.id, upload_path, None, rows,
                                                            dry_run=dry_run, source=f"console:{upload_path.name}"))
            return JSONResponse(job_document(job), status_code=202)
        except SignInNeeded:
            return JSONResponse({"code": "unauthorized", "message": "sign in again"}, status_code=401)
        except PortraitError as exc:
            return JSONResponse({"code": exc.code, "message": exc.message}, status_code=status_of(exc))

    @web.get("/console/api/imports/{job_id}")
    async def import_job(request: Request, job_id: str) -> Response:
        try:
            _, key = console.session(request)
            return JSONResponse(job_document(await run_in_threadpool(jobs.get, job_id, key.id)))
        except SignInNeeded:
            return JSONResponse({"code": "unauthorized", "message": "sign in again"}, status_code=401)
        except PortraitError as exc:
            return JSONResponse({"code": exc.code, "message": exc.message}, status_code=status_of(exc))

    return web
