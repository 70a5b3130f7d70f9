"""Imports a server runs after their file was sent: the API's ``POST /api/imports`` with ``Prefer: respond-async``
and the console's import. Each runs in a thread of its own and is polled (``GET /api/imports/{id}``) for how far it
is, as a privacy request is: the CLI and the console show the rows read (of the rows in the file, or the bytes read
of the file's size) and the rate, where a synchronous request showed nothing until the import's end.

Jobs live in memory: an import is safe to run again (a file imported twice adds nothing twice), so a server that
stops during one ends it after the chunk it is committing (:meth:`ImportJobs.close`) and keeps no record of it.
A finished job is kept for :data:`KEPT_SECONDS`, for its report to be read, and is visible only to the key that
started it (its first rejected rows hold the file's rows as sent).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from portrait.errors import NotFound, PortraitError
from portrait.files import ReadProgress
from portrait.service import ImportReport

log = logging.getLogger(__name__)
KEPT_SECONDS = 3600.0  # how long a finished job's report can be read
MOST_KEPT = 100  # finished jobs kept at most (the oldest go first)


@dataclass
class ImportJob:
    """One import: its progress while it runs, then its report or its error."""

    id: str
    owner: str  # the id of the key that started it: only that key reads it
    filename: str
    dry_run: bool
    progress: ReadProgress
    started: float = field(default_factory=time.monotonic)
    status: str = "running"  # running, done, failed
    report: ImportReport | None = None
    error: PortraitError | None = None
    finished: float | None = None
    stop_asked: threading.Event = field(default_factory=threading.Event)

    def as_dict(self) -> dict[str, Any]:
        seconds = (self.finished or time.monotonic()) - self.started
        shown: dict[str, Any] = {"id": self.id, "status": self.status, "filename": self.filename,
                                 "dry_run": self.dry_run, "seconds": round(seconds, 2),
                                 "progress": self.progress.as_dict()}
        if self.report is not None:
            shown["report"] = self.report.as_dict()
        if self.error is not None:
            shown["error"] = {"code": self.error.code, "message": self.error.message}
        return shown


Importer = Callable[[Callable[[ReadProgress], None], Callable[[], bool]], ImportReport]


class ImportJobs:
    """The server's import jobs, running and lately finished."""

    def __init__(self) -> None:
        self._jobs: dict[str, ImportJob] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def start(self, owner: str, filename: str, size: int, dry_run: bool, run: Importer, folder: Path) -> ImportJob:
        """Run ``run(on_progress, stop)`` in a thread of its own, as a job ``owner`` can poll; ``folder`` (the
        upload's) is removed once it ends."""
        job = ImportJob(uuid.uuid4().hex, owner, filename, dry_run, ReadProgress(size))
        thread = threading.Thread(target=self._run, args=(job, run, folder), name=f"portrait-import-{job.id[:8]}",
                                  daemon=True)
        with self._lock:
            self._forget_old()
            self._jobs[job.id] = job
            self._threads[job.id] = thread
        thread.start()
        return job

    def get(self, job_id: str, owner: str) -> ImportJob:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or job.owner != owner:  # another key's job is not there for this one, as if unknown
            raise NotFound(f"there is no import {job_id} (a finished import is kept for an hour)",
                           code="import_not_found")
        return job

    def stop(self, job_id: str, owner: str) -> ImportJob:
        """Ask ``owner``'s running import to end after the chunk it is importing (the CLI interrupted: the rows
        stored so far stay). A finished one is left as it is."""
        job = self.get(job_id, owner)
        job.stop_asked.set()
        return job

    def close(self, timeout: float = 60.0) -> None:
        """The server is stopping: each running import ends after its chunk (see :meth:`Portrait.import_file`)."""
        self._stopping.set()
        with self._lock:
            threads = list(self._threads.values())
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self, job: ImportJob, run: Importer, folder: Path) -> None:
        def progressed(progress: ReadProgress) -> None:
            job.progress = ReadProgress(progress.bytes_total, progress.rows, progress.rows_total,
                                        progress.bytes_read)  # a copy: a reader never sees one half-updated

        report: ImportReport | None = None
        error: PortraitError | None = None
        try:
            report = run(progressed, lambda: self._stopping.is_set() or job.stop_asked.is_set())
        except PortraitError as exc:
            error = exc
        except Exception as exc:  # a job has no caller to raise to: the server's log has the trace, its poller why
            log.exception("import %s of %s failed", job.id, job.filename)
            error = PortraitError(f"the import failed: {exc}", code="import_failed")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            # The status last: a poller that reads "done" or "failed" finds the report or error, the end time, and
            # the upload gone (a test read the status while the upload was still being removed)
            if report is None and error is None:  # the thread itself was stopped (the interpreter exiting)
                error = PortraitError("the import stopped", code="import_failed")
            job.report, job.error, job.finished = report, error, time.monotonic()
            job.status = "done" if error is None else "failed"
            with self._lock:
                self._threads.pop(job.id, None)

    def _forget_old(self) -> None:
        now = time.monotonic()
        finished = sorted((j for j in self._jobs.values() if j.finished is not None), key=lambda j: j.finished or 0)
        for job in finished:
            if now - (job.finished or now) > KEPT_SECONDS or len(self._jobs) > MOST_KEPT:
                del self._jobs[job.id]
