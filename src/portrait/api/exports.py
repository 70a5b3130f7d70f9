"""Profile exports as jobs under /api/exports (read key, as ``GET /api/exports/profiles``).

``POST /api/exports`` takes the parameters of ``GET /api/exports/profiles`` as a JSON body. With
``Prefer: respond-async`` it answers ``202 Accepted`` at once with the job (its ``Location``), which
``GET /api/exports/{id}`` reports on (rows written of the rows to write) and whose file
``GET /api/exports/{id}/file`` downloads once done; without it, it waits for the export and answers 201 with the
finished job, as ``POST /api/backups`` waits for the backup. The checks (personal data needs ``pii:read``; user ids
are masked for a key without it) and the audit records are those of the synchronous export: :func:`check_export`
and :func:`audit_export` serve both.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Body, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from portrait.api import schemas_attributes as shapes
from portrait.api.auth import authorizer, caller
from portrait.api.errors import status_of
from portrait.api.prefer import job_accepted, prefers_async
from portrait.api.query import known_query
from portrait.api.schemas import answer
from portrait.errors import BadRequest
from portrait.export_jobs import ExportJob, ExportJobs
from portrait.keys import ApiKey
from portrait.service import Portrait
from portrait.viewer import Viewer

EXPORT_MEDIA = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet", "ndjson": "application/x-ndjson"}
# The export is a file, not JSON: its media type follows the format, and its report travels in a header.
EXPORT_ANSWER: dict[str, Any] = {
    "description": "The file (a download named profiles.<format>)",
    "content": {"text/csv": {"schema": {"type": "string"}},
                "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
                "application/x-ndjson": {"schema": {"type": "string", "description": "One JSON object a line"}}},
    "headers": {"X-Portrait-Export": {
        "description": "The report as JSON: rows, columns, format, personal_included, segment, purpose, "
                       "consent_checked",
        "schema": {"type": "string"}}},
}
FIELDS: dict[str, tuple[type, ...]] = {"format": (str,), "attributes": (str, list), "include_personal": (bool,),
                                       "segment": (str, int), "purpose": (str,), "ignore_consent": (bool,)}


def router(portrait: Portrait, jobs: ExportJobs) -> APIRouter:
    api = APIRouter(prefix="/api", dependencies=[Depends(authorizer(portrait)), Depends(known_query)],
                    tags=["admin"])

    @api.post("/exports", status_code=201,
              summary="Export the profiles as a job (the parameters of GET /api/exports/profiles as a JSON body); "
                      "with the header `Prefer: respond-async`, answered at once, to poll",
              responses={**answer(shapes.ExportJob, "The export, done (its file is at GET "
                                                    "/api/exports/{id}/file)", 201)["responses"],
                         **answer(shapes.ExportJob, "The export job, running (its Location is where to poll it)",
                                  202)["responses"]},
              response_model=None)
    async def start_export(request: Request, payload: Annotated[dict[str, Any] | None, Body()] = None) -> Any:
        asked = export_fields(payload or {})
        key = caller(request)
        names = asked["attributes"]
        await run_in_threadpool(check_export, portrait, key, names, asked["include_personal"])
        await run_in_threadpool(portrait.check_export, asked["format"], names, asked["include_personal"],
                                asked["segment"])
        job = jobs.start(key.id, asked["format"], exporter(portrait, key, asked))
        location = f"/api/exports/{job.id}"
        if prefers_async(request):
            return job_accepted(job_document(job), location)
        await run_in_threadpool(jobs.wait, job)
        if job.error is not None:  # as the synchronous export would have answered
            raise job.error
        return JSONResponse(job_document(job), status_code=201, headers={"Location": location})

    @api.get("/exports/{job_id}", summary="An export job: running (rows written of the rows to write), done (the "
                                          "report; the file to download) or failed (why); only for the key that "
                                          "started it, kept an hour after it ends",
             **answer(shapes.ExportJob, "The export job"))
    async def export_job(job_id: str, request: Request) -> dict[str, Any]:
        return job_document(jobs.get(job_id, caller(request).id))

    @api.get("/exports/{job_id}/file", summary="The finished export's file (409 while it waits or runs, or when it "
                                               "failed; 410 when it was deleted by something else)",
             response_class=FileResponse, responses={200: EXPORT_ANSWER})
    async def export_file(job_id: str, request: Request) -> StreamingResponse:
        opened, report = await run_in_threadpool(jobs.file, job_id, caller(request).id)
        return opened_file_answer(opened, report)

    @api.delete("/exports/{job_id}", status_code=204,
                summary="Cancel a running export (it stops after the chunk it is writing, then reports failed, "
                        "code export_cancelled, and keeps no file), or remove a finished one and its file",
                responses={**answer(shapes.ExportJob, "The running export, asked to stop")["responses"],
                           204: {"description": "The finished export and its file, removed"}},
                response_model=None)
    async def remove_export(job_id: str, request: Request) -> Any:
        job = jobs.cancel(job_id, caller(request).id)
        if job is None:
            return Response(status_code=204)
        return JSONResponse(job_document(job))

    return api


def export_fields(payload: dict[str, Any]) -> dict[str, Any]:
    """The body of ``POST /api/exports``, checked: each field of ``GET /api/exports/profiles``, of its type;
    ``attributes`` as a list of codes or a comma-separated text."""
    if not isinstance(payload, dict):
        raise BadRequest("the body must be a JSON object of the export's parameters", code="invalid_export")
    unknown = sorted(set(payload) - set(FIELDS))
    if unknown:
        raise BadRequest(f"unknown export fields: {', '.join(unknown)} (only {', '.join(FIELDS)})",
                         code="invalid_export")
    for name, value in payload.items():
        kinds = FIELDS[name]
        if value is not None and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
            raise BadRequest(f"{name} must be {' or '.join(_KIND_NAMES[k] for k in kinds)}, not {value!r}",
                             code="invalid_export", field=name)
    attributes = payload.get("attributes")
    if isinstance(attributes, list) and not all(isinstance(a, str) for a in attributes):
        raise BadRequest("attributes must be a list of attribute codes", code="invalid_export", field="attributes")
    for name, value in payload.items():
        texts = value if isinstance(value, list) else [value]
        if any(isinstance(text, str) and not _utf8(text) for text in texts):
            # JSON's \ud800 escapes half a surrogate pair, which no query can bind nor the audit log hold
            raise BadRequest(f"{name} holds half a surrogate pair (a \\ud800-\\udfff escape alone): not text",
                             code="invalid_export", field=name)
    segment = payload.get("segment")
    return {"format": payload.get("format") or "csv", "attributes": attribute_names(attributes),
            "include_personal": bool(payload.get("include_personal")),
            "segment": None if segment is None else str(segment), "purpose": payload.get("purpose") or None,
            "ignore_consent": bool(payload.get("ignore_consent"))}


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_KIND_NAMES = {str: "text", list: "a list", bool: "true or false", int: "an id"}


def attribute_names(attributes: str | list[str] | None) -> list[str] | None:
    """``email,country`` or ``["email", "country"]`` as codes; None (the default columns) when none are named."""
    if attributes is None:
        return None
    parts = attributes.split(",") if isinstance(attributes, str) else attributes
    names = [a.strip() for a in parts if a.strip()]
    return names or None


def check_export(portrait: Portrait, key: ApiKey, names: list[str] | None, include_personal: bool) -> None:
    """Personal-information attributes -- all of them, or one named -- need ``pii:read`` (403 otherwise)."""
    viewer = Viewer(portrait, key)
    if include_personal or (names and set(names) & viewer.personal()):
        viewer.require_pii("export personal data")


def audit_export(portrait: Portrait, key: ApiKey, report: dict[str, Any], segment: str | None,
                 purpose: str | None, ignore_consent: bool) -> None:
    """The audit records of an export once written: consent ignored, personal data included."""
    if purpose and ignore_consent:
        portrait.audit.record(key, "export_ignoring_consent", target=segment or "all profiles",
                              detail={"purpose": purpose, "rows": report["rows"]})
    if report["personal_included"]:
        portrait.audit.record(key, "export_personal_data", target=segment or "all profiles",
                              detail={"rows": report["rows"], "personal": report["personal_included"]})


def exporter(portrait: Portrait, key: ApiKey, asked: dict[str, Any]
             ) -> Callable[[Path, Callable[[int, int], None], Callable[[], bool]], dict[str, Any]]:
    """What an export job runs: the export, as ``key`` may see it, then its audit records."""
    def run(path: Path, on_written: Callable[[int, int], None], stop: Callable[[], bool]) -> dict[str, Any]:
        report = portrait.export_profiles(
            path, asked["format"], attributes=asked["attributes"], include_personal=asked["include_personal"],
            segment=asked["segment"], purpose=asked["purpose"], ignore_consent=asked["ignore_consent"],
            mask_identifiers=not key.can_read_pii, on_written=on_written, stop=stop)
        audit_export(portrait, key, report, asked["segment"], asked["purpose"], asked["ignore_consent"])
        return report

    return run


FILE_CHUNK = 1024 * 1024  # read and sent at a time


def opened_file_answer(opened: BinaryIO, report: dict[str, Any], **extra: Any) -> StreamingResponse:
    """An export's file already open (:meth:`ExportJobs.file`) with its media type and its report in
    ``X-Portrait-Export`` (headers are latin-1; the server's path of the file is of no use to the caller), closed
    once sent (or the client gone). Not a FileResponse: that one opens the file by its path as it answers, after the
    job was looked up, and a file removed in between was a 500."""
    def chunks() -> Iterator[bytes]:
        with opened:
            while chunk := opened.read(FILE_CHUNK):
                yield chunk

    shown = {k: v for k, v in report.items() if k != "path"}
    name = Path(opened.name).name
    return StreamingResponse(chunks(), media_type=EXPORT_MEDIA[report["format"]], headers={
        "Content-Length": str(os.fstat(opened.fileno()).st_size),
        "Content-Disposition": f'attachment; filename="{name}"',
        "X-Portrait-Export": json.dumps(shown, ensure_ascii=True)}, **extra)


def job_document(job: ExportJob) -> dict[str, Any]:
    """The job as the API shows it: a failure carries the status the synchronous export would have answered."""
    shown = job.as_dict()
    if job.error is not None:
        shown["error"]["status"] = status_of(job.error)
    return shown
