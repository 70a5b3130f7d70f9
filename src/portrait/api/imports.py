"""File imports under /api/imports (admin key): the file is the request body, streamed to a temporary folder.

Without ``Prefer: respond-async`` the request answers once the import is done, with its report. With it, the server
answers ``202 Accepted`` as soon as the file is received, with an import job (its ``Location``) that
``GET /api/imports/{id}`` reports on -- rows read, of the rows in the file (or bytes, for NDJSON), then the report --
the way a privacy request is polled: what the CLI shows as a progress bar, where it showed a spinner until the end.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from portrait.api import schemas_attributes as shapes
from portrait.api.auth import authorizer, caller
from portrait.api.prefer import job_accepted, prefers_async
from portrait.api.query import known_query
from portrait.api.schemas import answer
from portrait.errors import BadRequest
from portrait.files import ReadProgress
from portrait.import_jobs import ImportJob, ImportJobs
from portrait.mapping import RowMapping, combine, parse_mapping_text
from portrait.service import ImportReport, Portrait


def router(portrait: Portrait, jobs: ImportJobs) -> APIRouter:
    api = APIRouter(prefix="/api", dependencies=[Depends(authorizer(portrait)), Depends(known_query)],
                    tags=["admin"])
    job_answer = answer(shapes.ImportJob, "The import job, running (its Location is where to poll it)", 202)

    @api.post("/imports", summary="Import a file sent as the request body (as `portrait import`); with the header "
                                  "`Prefer: respond-async`, as a job to poll",
              responses={**answer(shapes.ImportReport, "What the import did (or, with dry_run, would do)")["responses"],
                         **job_answer["responses"]}, response_model=None)
    async def imports(
        request: Request,
        filename: Annotated[str, Query(description="The file's name; its ending tells the format.")],
        kind: Annotated[str, Query(pattern="^(events|profiles)$")] = "events",
        format: str | None = None,
        dry_run: bool = False,
        event: str | None = None, event_column: str | None = None, user_id: str | None = None,
        anonymous_id: str | None = None, email: str | None = None, phone: str | None = None,
        timestamp: str | None = None, timestamp_format: str | None = None, message_id: str | None = None,
        fields: Annotated[str | None, Query(description="Comma-separated property/trait columns.")] = None,
        mapping: Annotated[str | None, Query(description="A whole mapping as JSON (the mapping-file form); the "
                                                         "column parameters override it.")] = None,
        delimiter: Annotated[str | None, Query(description="CSV field separator: one character, \\t or tab for a "
                                                           "tab (default: a tab for .tsv, else a comma).")] = None,
        types: Annotated[str | None, Query(description="Declared column types, amount=number,signup=date (text, "
                                                       "number, integer, boolean, date, timestamp); over the "
                                                       "mapping's.")] = None,
    ) -> Any:
        columns: dict[str, Any] = {"user_id": user_id, "anonymous_id": anonymous_id, "email": email, "phone": phone,
                                   "event": event, "event_column": event_column, "timestamp": timestamp,
                                   "timestamp_format": timestamp_format, "message_id": message_id}
        document = parse_mapping_text(mapping, "the mapping parameter") if mapping else None
        rows = combine(kind, document, fields, columns, types)
        upload = await received(request, filename)
        if not prefers_async(request):
            try:
                report = await run_in_threadpool(lambda: portrait.import_file(
                    upload, format, rows, delimiter=delimiter, dry_run=dry_run, source=f"import:{upload.name}"))
            finally:
                shutil.rmtree(upload.parent, ignore_errors=True)
            return report.as_dict()
        owner = caller(request).id
        job = await run_in_threadpool(lambda: start_job(portrait, jobs, owner, upload, format, rows,
                                                        delimiter=delimiter, dry_run=dry_run,
                                                        source=f"import:{upload.name}"))  # recorded in the store
        return job_accepted(job_document(job), f"/api/imports/{job.id}")

    @api.get("/imports/{job_id}", summary="An import job started with `Prefer: respond-async`: its progress, then "
                                          "its report (kept an hour after it ends; only for the key that started "
                                          "it)", **answer(shapes.ImportJob, "The import job"))
    async def import_job(job_id: str, request: Request) -> dict[str, Any]:
        key = caller(request)
        portrait.keys.require(key, "admin", "read import jobs")  # a read key starts none (its rows are the file's)
        return job_document(await run_in_threadpool(jobs.get, job_id, key.id))  # may read the store's record

    @api.delete("/imports/{job_id}", summary="Stop an import job after the chunk it is importing (the rows stored so "
                                             "far stay); it then reports failed, code interrupted",
                **answer(shapes.ImportJob, "The import job, asked to stop"))
    async def stop_import(job_id: str, request: Request) -> dict[str, Any]:
        return job_document(await run_in_threadpool(jobs.stop, job_id, caller(request).id))

    return api


async def received(request: Request, filename: str) -> Path:
    """The request body, streamed into a file of a temporary folder of its own (a large file never sits in
    memory); the caller removes the folder."""
    name = upload_name(filename)  # refused before the folder is made: it would be left behind
    upload = Path(tempfile.mkdtemp(prefix="portrait-import-")) / name
    try:
        with upload.open("wb") as handle:
            async for chunk in request.stream():
                handle.write(chunk)
    except BaseException:
        shutil.rmtree(upload.parent, ignore_errors=True)
        raise
    return upload


def start_job(portrait: Portrait, jobs: ImportJobs, owner: str, upload: Path, file_format: str | None,
              rows: RowMapping | None, *, delimiter: str | None = None, dry_run: bool, source: str) -> ImportJob:
    """Import ``upload`` as a job of ``owner``'s; its folder goes when the job ends."""
    def run(on_progress: Callable[[ReadProgress], None], stop: Callable[[], bool]) -> ImportReport:
        return portrait.import_file(upload, file_format, rows, delimiter=delimiter, dry_run=dry_run, source=source,
                                    on_progress=on_progress, stop=stop)

    return jobs.start(owner, upload.name, upload.stat().st_size, dry_run, run, upload.parent)


def job_document(job: ImportJob) -> dict[str, Any]:
    """The job as the API shows it: a failure carries the status the synchronous import would have answered."""
    return job.as_dict()



def upload_name(filename: str) -> str:
    """The base name of an uploaded file, refused when it holds a NUL or other control character."""
    if any(ord(c) < 32 or c == "\x7f" for c in filename):
        raise BadRequest("filename must not contain control characters", code="invalid_request")
    name = Path(filename).name
    return name if name not in ("", ".", "..") else "upload"  # ".." would name the temporary folder's parent

