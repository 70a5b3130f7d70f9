"""Imports a server runs after their file was sent: the API's ``POST /api/imports`` with ``Prefer: respond-async``
and the console's import. Each is polled (``GET /api/imports/{id}``) for how far it is, as a privacy request is: the
CLI and the console show the rows read (of the rows in the file, or the bytes read of the file's size) and the rate,
where a synchronous request showed nothing until the import's end.

At most ``PORTRAIT_IMPORTS_AT_ONCE`` (default 2) run at once, each in a thread of its own; the others wait, in the
order they came, as ``queued`` with their place in the queue: each import parses its file in Python and Arrow, and
any number at once on the 2 cores of a small server took them all from live traffic. Two at once, not one: on the
2-core box two imports of 150,000 rows each were both done in 9 s, where one after the other took 15.7 s (part of
each import's time is spent waiting on its commits, which the other fills). The queue is
:class:`portrait.job_queue.JobQueue`, shared with exports; a key may have at most ``MOST_UNFINISHED_PER_KEY`` (10)
imports queued or running (409 past it).

A job's record is kept in the store (:class:`portrait.import_records.ImportRecords`) as it is queued, starts, after
each chunk, and as it ends, so a restart does not lose it: a server that stops ends each running job after the chunk
it is committing, and the queued ones before they start (:meth:`ImportJobs.close`), and records them ``failed`` with
``interrupted``; a server that was killed finds its jobs still recorded as queued or running when it starts again
and records them so then, with the rows imported before the last record of their progress. Either way what to do
is the same: import the file again with the same options -- its rows' message ids are derived from their content
(or are the file's own), and an import checks the whole log for them, so the rows stored before are counted as
already there, not stored twice. A finished job is kept for :data:`KEPT_SECONDS`, for its report to be read, and is
visible only to the key that started it (its first rejected rows hold the file's rows as sent; the store keeps its
report without them).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from portrait.errors import Conflict, Interrupted, NotFound, PortraitError
from portrait.files import ReadProgress
from portrait.import_records import ImportRecord, ImportRecords
from portrait.job_queue import JobQueue, refuse_past_the_most_unfinished
from portrait.service import ImportReport
from portrait.spec import utc_now

log = logging.getLogger(__name__)
KEPT_SECONDS = 3600.0  # how long a finished job's report can be read
MOST_KEPT = 100  # finished jobs kept at most (the oldest go first)
UPLOAD_PREFIX = "portrait-import-"  # the temporary folder of a file sent (api.imports.received)


@dataclass
class ImportJob:
    """One import: queued, its progress while it runs, then its report or its error."""

    id: str
    owner: str  # the id of the key that started it: only that key reads it
    filename: str
    dry_run: bool
    progress: ReadProgress
    upload: Path | None = None  # the folder of the file sent, removed when the job ends
    status: str = "queued"  # queued, running, done, failed
    started: float | None = None
    finished: float | None = None
    seconds: float | None = None  # a job read back from the store: how long it ran
    report: dict[str, Any] | None = None
    error: dict[str, Any] | None = None  # code, message and the HTTP status the synchronous import answers
    queue_place: int | None = None  # while queued: 1 runs next
    stop_asked: threading.Event = field(default_factory=threading.Event)

    def as_dict(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"id": self.id, "status": self.status, "filename": self.filename,
                                 "dry_run": self.dry_run, "seconds": round(self._seconds(), 2),
                                 "queue_place": self.queue_place, "stored": self.progress.stored,
                                 "progress": self.progress.as_dict()}
        if self.report is not None:
            shown["report"] = self.report
        if self.error is not None:
            shown["error"] = self.error
        return shown

    def _seconds(self) -> float:
        if self.seconds is not None:
            return self.seconds
        if self.started is None:  # queued
            return 0.0
        return (self.finished or time.monotonic()) - self.started

    @classmethod
    def of_record(cls, record: ImportRecord) -> ImportJob:
        """A job as the store kept it (after a restart, or once memory let it go)."""
        ran = (record.finished_at - record.started_at).total_seconds() if record.finished_at and record.started_at \
            else 0.0
        progress = ReadProgress(record.bytes_total, record.rows, record.rows_total, record.bytes_read, record.stored)
        return cls(record.id, record.owner, record.filename, record.dry_run, progress, status=record.status,
                   seconds=ran, report=record.report, error=record.error)


Importer = Callable[[Callable[[ReadProgress], None], Callable[[], bool]], ImportReport]


class ImportJobs:
    """The server's import jobs: queued, running, and lately finished (in memory, and in the store's record)."""

    def __init__(self, records: ImportRecords, at_once: int, status_of: Callable[[PortraitError], int]) -> None:
        self._records = records
        self._status_of = status_of  # the API's mapping, for a failed job to say what the request would answer
        self._jobs: dict[str, ImportJob] = {}
        self._lock = threading.Lock()
        self._queue = JobQueue("import", at_once, self._lock)
        self._record_interrupted()
        self._records.forget_old(timedelta(seconds=KEPT_SECONDS), MOST_KEPT)

    def start(self, owner: str, filename: str, size: int, dry_run: bool, run: Importer, folder: Path) -> ImportJob:
        """Queue ``run(on_progress, stop)`` as a job ``owner`` can poll, run in a thread of its own once fewer than
        ``at_once`` run; ``folder`` (the upload's) is removed once it ends."""
        job = ImportJob(uuid.uuid4().hex, owner, filename, dry_run, ReadProgress(size), upload=folder)
        try:
            with self._lock:  # counted from here on: two sent at once cannot both pass the bound
                if self._queue.stopping:  # it would only be recorded as interrupted at the next start
                    raise Conflict(f"the server is stopping: nothing of {filename} was imported; send it again once "
                                   "the server has started", code="server_stopping")
                self._refuse_past_the_most_unfinished(owner)
                # Before the job is counted and recorded: forgetting writes to the store, and refused there (a full
                # disk) once the job was, the job stayed queued for good, never started, and counted against its key
                self._forget_old()
                self._jobs[job.id] = job
            self._records.add(job.id, owner, filename, dry_run, size, str(folder))
        except BaseException:  # not queued (stopping, too many, the store refused: a full disk): its upload goes
            with self._lock:
                self._jobs.pop(job.id, None)
            shutil.rmtree(folder, ignore_errors=True)
            raise
        with self._lock:
            self._queue.add(job.id, lambda: self._begin(job), lambda: self._run(job, run))
            self._place(job)
        return job

    def get(self, job_id: str, owner: str) -> ImportJob:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                self._place(job)
        if job is None:  # a job of the server before a restart, or one memory let go
            record = self._records.get(job_id)
            # Records are deleted as jobs start; one past its hour that no start has deleted yet is not shown
            kept = record is not None and (record.finished_at is None
                                           or utc_now() - record.finished_at <= timedelta(seconds=KEPT_SECONDS))
            job = ImportJob.of_record(record) if record is not None and kept else None
        if job is None or job.owner != owner:  # another key's job is not there for this one, as if unknown
            raise NotFound(f"there is no import {job_id} (a finished import is kept for an hour)",
                           code="import_not_found")
        return job

    def stop(self, job_id: str, owner: str) -> ImportJob:
        """Ask ``owner``'s running import to end after the chunk it is importing (the CLI interrupted: the rows
        stored so far stay); a queued one ends at once, never started. A finished one is left as it is."""
        job = self.get(job_id, owner)
        job.stop_asked.set()
        with self._lock:
            queued = self._queue.take(job.id)
        if queued:
            self._end(job, None, Interrupted(f"the import of {job.filename} was cancelled before it started: "
                                             "nothing was stored"))
        return job

    def open(self) -> None:
        """The server is starting: queued imports are started again (after a :meth:`close`, an app's lifespan run
        again -- a test client's -- left every later import queued for good)."""
        with self._lock:
            self._queue.open()

    def close(self, timeout: float = 60.0) -> None:
        """The server is stopping: each running import ends after its chunk (see :meth:`Portrait.import_file`),
        the queued ones before they start; each is recorded so."""
        with self._lock:
            queued = [self._jobs[job_id] for job_id in self._queue.stop()]
        for job in queued:
            self._end(job, None, Interrupted(
                f"the server stopped before the import of {job.filename} started: nothing was stored; send the "
                "file again"))
        self._queue.join(timeout)

    def _refuse_past_the_most_unfinished(self, owner: str) -> None:
        """Called holding ``_lock``."""
        unfinished = sum(1 for job in self._jobs.values() if job.owner == owner and job.finished is None)
        refuse_past_the_most_unfinished(unfinished, "import", "send the file again once one has ended, or cancel "
                                        "one (DELETE /api/imports/{id})")

    def _place(self, job: ImportJob) -> None:
        """Its place in the queue (1: it runs next), while it waits; called holding ``_lock``."""
        if job.status == "queued":
            job.queue_place = self._queue.place(job.id)

    def _begin(self, job: ImportJob) -> None:
        """The job leaves the queue to run; called holding ``_lock``."""
        job.status, job.started, job.queue_place = "running", time.monotonic(), None

    def _run(self, job: ImportJob, run: Importer) -> None:
        def progressed(progress: ReadProgress) -> None:
            # The record first: what a poller is shown is never ahead of what a restart will say
            self._records.progressed(job.id, progress.rows, progress.rows_total, progress.bytes_read,
                                     progress.stored)
            job.progress = ReadProgress(progress.bytes_total, progress.rows, progress.rows_total,
                                        progress.bytes_read, progress.stored)  # a copy: never seen half-updated

        report: ImportReport | None = None
        error: PortraitError | None = None
        try:
            self._records.started(job.id)
            report = run(progressed, lambda: self._queue.stopping or job.stop_asked.is_set())
        except PortraitError as exc:
            error = exc
        except Exception as exc:  # a job has no caller to raise to: the server's log has the trace, its poller why
            log.exception("import %s of %s failed", job.id, job.filename)
            error = PortraitError(f"the import failed: {exc}", code="import_failed")
        finally:
            if report is None and error is None:  # the thread itself was stopped (the interpreter exiting)
                error = PortraitError("the import stopped", code="import_failed")
            self._end(job, report, error)

    def _end(self, job: ImportJob, report: ImportReport | None, error: PortraitError | None) -> None:
        """Record the job's end and remove its upload; the status last: a poller that reads "done" or "failed"
        finds the report or error, the end time, and the upload gone (a test read the status while the upload was
        still being removed)."""
        if job.upload is not None:
            shutil.rmtree(job.upload, ignore_errors=True)
        shown_error = ({"code": error.code, "message": error.message, "status": self._status_of(error)}
                       if error is not None else None)
        job.report = report.as_dict() if report is not None else None
        job.error, job.finished, job.queue_place = shown_error, time.monotonic(), None
        status = "done" if error is None else "failed"
        try:
            self._records.finished(job.id, status, job.progress.rows, job.progress.rows_total,
                                   job.progress.bytes_read, job.progress.stored, job.report, shown_error)
        except Exception:  # the store closing or its disk full: the job still ends, in memory, and says why
            log.exception("the end of import %s could not be recorded", job.id)
        with self._lock:  # its place goes to the next waiting as it reads ended: never one ended, the next waiting
            job.status = status
            self._queue.ended(job.id)

    def _record_interrupted(self) -> None:
        """At the server's start: jobs recorded as queued or running were cut off by a server that did not end
        them (killed, a power cut). Recorded as interrupted, saying how far each got; their uploads go."""
        for record in self._records.unfinished():
            if record.upload and Path(record.upload).name.startswith(UPLOAD_PREFIX):
                shutil.rmtree(record.upload, ignore_errors=True)
            error = Interrupted(interrupted_by_restart(record))
            self._records.finished(record.id, "failed", record.rows, record.rows_total, record.bytes_read,
                                   record.stored, None, {"code": error.code, "message": error.message,
                                                         "status": self._status_of(error)})
            log.warning("import %s of %s was cut off by the server's stop: %s", record.id, record.filename,
                        error.message)

    def _forget_old(self) -> None:
        """Called holding ``_lock``."""
        now = time.monotonic()
        finished = sorted((j for j in self._jobs.values() if j.finished is not None), key=lambda j: j.finished or 0)
        for job in finished:
            if now - (job.finished or now) > KEPT_SECONDS or len(self._jobs) > MOST_KEPT:
                del self._jobs[job.id]
        self._records.forget_old(timedelta(seconds=KEPT_SECONDS), MOST_KEPT)


def interrupted_by_restart(record: ImportRecord) -> str:
    """What a job cut off by a server that was killed says: how far it got, and what to do."""
    if record.status == "queued":
        return (f"the server stopped before the import of {record.filename} started: nothing was stored; send the "
                "file again")
    of_total = f" of {record.rows_total:,}" if record.rows_total is not None else ""
    if record.dry_run:
        return (f"the server stopped during this dry run of {record.filename}, after {record.rows:,}{of_total} "
                "rows: a dry run stores nothing; run it again")
    return (f"the server stopped during the import of {record.filename}: {record.rows:,}{of_total} rows had been "
            f"imported ({record.stored:,} of them stored) when it last recorded its progress. Import the file again "
            "with the same options: the rows stored before are recognized by their message ids and counted as "
            "already there, not stored twice")
