"""Profile exports a server runs as jobs: ``POST /api/exports``. A full export of a million profiles took ~7 s
inside its request, longer on bigger stores and under load, and a proxy's or client's timeout lost it; as a job it
answers at once, is polled (``GET /api/exports/{id}``: rows written of the rows to write), and its file is
downloaded once done (``GET /api/exports/{id}/file``).

At most ``PORTRAIT_EXPORTS_AT_ONCE`` (default 2) run at once, each in a thread of its own; the others wait, in the
order they came, as ``queued`` with their place in the queue, as imports do (:mod:`portrait.import_jobs`). Each
export holds the profiles it writes in memory (the query's result, then a chunk's Arrow table): any number at once,
which a read key could ask for, ran the server out of memory. A queue rather than a refusal (429): an export is
asked once and followed to its file, by the CLI, a script, the console; a refusal would have each of them retry on
its own, where a queue runs every export asked for, in order, and tells each poller how far back it waits. The
queue is :class:`portrait.job_queue.JobQueue`, shared with imports; only past ``MOST_UNFINISHED_PER_KEY`` (10)
exports queued or running for one key is the next refused (409), so one key cannot hold every other one back.

Jobs live in memory, as import jobs do: an export is safe to ask again, so a server that stops cancels the running
ones and removes every file. A job and its file are visible only to the key that started it (the file holds what
that key may see: personal data if it asked for it and may read it, user ids masked if it may not), and are kept
for :data:`KEPT_SECONDS` after the export ends, then removed -- by a sweep once a minute, or sooner with
``DELETE /api/exports/{id}``. A server killed (kill -9) cannot remove its files: its folder is named with its
process id, and the next server to start removes the folders of processes that are gone.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from portrait.background import Worker
from portrait.client import process_alive
from portrait.errors import Conflict, Gone, NotFound, PortraitError
from portrait.exports import ExportCancelled
from portrait.job_queue import JobQueue, refuse_past_the_most_unfinished

log = logging.getLogger(__name__)
KEPT_SECONDS = 3600.0  # how long a finished export's file can be downloaded
AT_ONCE = 2  # exports run at once (PORTRAIT_EXPORTS_AT_ONCE): the others wait in a queue
MOST_KEPT = 100  # finished jobs kept at most: past it, the oldest go first (and their files)
FOLDER_PREFIX = "portrait-exports-"  # then the server's process id: portrait-exports-<pid>-<random>
_FOLDER = re.compile(rf"{re.escape(FOLDER_PREFIX)}(\d+)-")

Exporter = Callable[[Path, Callable[[int, int], None], Callable[[], bool]], dict[str, Any]]
"""``run(path, on_written, stop)``: writes the export to ``path`` and returns its report."""


@dataclass
class ExportJob:
    """One export: queued, rows written while it runs, then its report (and file) or its error."""

    id: str
    owner: str  # the id of the key that started it: only that key reads it
    file_format: str
    path: Path
    kept_seconds: float
    started_at: datetime | None = None  # once it runs
    started: float | None = None
    status: str = "queued"  # queued, running, done, failed
    queue_place: int | None = None  # while queued: 1 runs next
    rows_written: int = 0
    rows_total: int | None = None
    report: dict[str, Any] | None = None
    error: PortraitError | None = None
    finished: float | None = None
    finished_at: datetime | None = None
    stop_asked: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)

    def as_dict(self) -> dict[str, Any]:
        seconds = 0.0 if self.started is None else (self.finished or time.monotonic()) - self.started
        shown: dict[str, Any] = {
            "id": self.id, "status": self.status, "format": self.file_format, "queue_place": self.queue_place,
            "rows_written": self.rows_written, "rows_total": self.rows_total, "seconds": round(seconds, 2),
            "started_at": _timestamp(self.started_at) if self.started_at else None,
            "finished_at": _timestamp(self.finished_at) if self.finished_at else None,
            "expires_at": _timestamp(self.finished_at + timedelta(seconds=self.kept_seconds))
            if self.finished_at else None}
        if self.status == "running" and self.stop_asked.is_set():
            shown["cancelling"] = True
        if self.report is not None:
            shown["report"] = {k: v for k, v in self.report.items() if k != "path"}  # the server's, of no use
            shown["file"] = f"/api/exports/{self.id}/file"
        if self.error is not None:
            shown["error"] = {"code": self.error.code, "message": self.error.message}
        return shown


class _Sweeper(Worker):
    """Removes the jobs (and files) kept past their time, once a minute."""

    def __init__(self, jobs: ExportJobs) -> None:
        super().__init__("portrait-export-sweeper", interval=60.0)
        self._jobs = jobs

    def step(self) -> None:
        self._jobs.forget_expired()


class ExportJobs:
    """The server's export jobs, queued, running and lately finished, and their files (in a temporary folder of the
    server's own, made with the first job)."""

    def __init__(self, kept_seconds: float = KEPT_SECONDS, at_once: int = AT_ONCE) -> None:
        self.kept_seconds = kept_seconds
        self._jobs: dict[str, ExportJob] = {}
        self._lock = threading.Lock()
        self._queue = JobQueue("export", at_once, self._lock)
        self._folder: Path | None = None
        self._sweeper: _Sweeper | None = None
        remove_folders_of_gone_servers()

    def start(self, owner: str, file_format: str, run: Exporter) -> ExportJob:
        """Queue ``run`` as a job ``owner`` can poll and whose file it can download, run in a thread of its own once
        fewer than ``at_once`` run."""
        job_id = uuid.uuid4().hex
        with self._lock:
            if self._queue.stopping:
                raise Conflict("the server is stopping: ask for the export again once it has started",
                               code="server_stopping")
            self._refuse_past_the_most_unfinished(owner)
            if self._folder is None:
                self._folder = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-"))
                self._sweeper = _Sweeper(self)
                self._sweeper.start()
            job = ExportJob(job_id, owner, file_format, self._folder / job_id / f"profiles.{file_format}",
                            self.kept_seconds)
            job.path.parent.mkdir()
            self._jobs[job.id] = job
            self._queue.add(job.id, lambda: self._begin(job), lambda: self._run(job, run))
            self._place(job)
        self.forget_expired()
        return job

    def get(self, job_id: str, owner: str) -> ExportJob:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                self._place(job)
        if job is None or job.owner != owner:  # another key's job is not there for this one, as if unknown
            raise NotFound(f"there is no export {job_id} (a finished export is kept for "
                           f"{_duration(self.kept_seconds)}, then removed)", code="export_not_found")
        return job

    def file(self, job_id: str, owner: str) -> tuple[BinaryIO, dict[str, Any]]:
        """The finished export's file, opened, and its report; refused while it waits or runs, or when it failed.
        Opened here, not by path as the answer is sent: a DELETE or the sweep removing it in between made the
        download a 500; an open file is read whole even once removed."""
        job = self.get(job_id, owner)
        if job.status == "queued":
            raise Conflict(f"export {job_id} waits for the server's other exports (queued, place {job.queue_place}): "
                           f"poll GET /api/exports/{job_id} until its status is done", code="export_not_ready")
        if job.status == "running":
            raise Conflict(f"export {job_id} is still running ({job.rows_written:,} rows written so far): poll "
                           f"GET /api/exports/{job_id} until its status is done", code="export_not_ready")
        if job.report is None:
            why = job.error.message if job.error else "it failed"
            raise Conflict(f"export {job_id} failed, so it has no file: {why}", code="export_failed")
        return self._opened(job), job.report

    def _opened(self, job: ExportJob) -> BinaryIO:
        """The job's file opened, under the lock its removals take: never half way through one."""
        with self._lock:
            if self._jobs.get(job.id) is not job:  # removed since it was looked up (DELETE, the sweep)
                raise NotFound(f"there is no export {job.id}: it was removed as its file was asked for",
                               code="export_not_found")
            try:
                return job.path.open("rb")
            except FileNotFoundError:  # deleted by something else than this server (a cleaner of /tmp)
                self._remove(job)
        raise Gone(f"the file of export {job.id} is no longer on the server (deleted by something else than "
                   "Portrait): ask for the export again", code="export_file_gone")

    def cancel(self, job_id: str, owner: str) -> ExportJob | None:
        """A running export is asked to stop (after the chunk it is writing; it then fails, code export_cancelled,
        and its file goes) and returned; a queued one ends so at once, never started, and is returned; a finished
        one is removed, with its file, and None returned."""
        job = self.get(job_id, owner)
        with self._lock:
            if self._queue.take(job.id):
                self._never_started(job, ExportCancelled("the export was cancelled before it started: no file was "
                                                         "made"))
                return job
            if job.status == "running":
                job.stop_asked.set()
                return job
            self._remove(job)
        return None

    def wait(self, job: ExportJob) -> ExportJob:
        job.ended.wait()
        return job

    def forget_expired(self) -> None:
        """Remove the jobs finished longer than ``kept_seconds`` ago, and the oldest finished beyond
        ``MOST_KEPT`` (finished ones only: counted with those queued, a long queue removed each export as it
        ended, before its file could be downloaded)."""
        now = time.monotonic()
        with self._lock:
            finished = sorted((j for j in self._jobs.values() if j.finished is not None),
                              key=lambda j: j.finished or 0)
            for older, job in enumerate(finished):  # oldest first: those removed are the older ones
                if now - (job.finished or now) > self.kept_seconds or len(finished) - older > MOST_KEPT:
                    self._remove(job)

    def open(self) -> None:
        """The server is starting: exports are taken (again, after a :meth:`close`: an app's lifespan can run more than
        once, as a test client's does, and a closed holder refused every export as 'server stopping' for good)."""
        with self._lock:
            self._queue.open()
            self._folder, self._sweeper = None, None  # close removed them: made again by the first export

    def close(self, timeout: float = 60.0) -> None:
        """The server is stopping: queued exports end before they start, running ones are cancelled (after their
        chunk; one still in its query ends with it, within ``timeout``), and every file is removed."""
        with self._lock:
            for job_id in self._queue.stop():
                self._never_started(self._jobs[job_id], ExportCancelled(
                    "the server stopped before the export started: ask for it again once it has started"))
            sweeper = self._sweeper
        self._queue.join(timeout)
        if sweeper is not None:
            sweeper.stop()
        with self._lock:
            if self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)

    def _refuse_past_the_most_unfinished(self, owner: str) -> None:
        """Called holding ``_lock``."""
        unfinished = sum(1 for job in self._jobs.values() if job.owner == owner and job.finished is None)
        refuse_past_the_most_unfinished(unfinished, "export",
                                        "ask again once one has ended, or cancel one (DELETE /api/exports/{id})")

    def _place(self, job: ExportJob) -> None:
        """Its place in the queue (1: it runs next), while it waits; called holding ``_lock``."""
        if job.status == "queued":
            job.queue_place = self._queue.place(job.id)

    def _begin(self, job: ExportJob) -> None:
        """The job leaves the queue to run; called holding ``_lock``."""
        job.status, job.queue_place = "running", None
        job.started, job.started_at = time.monotonic(), datetime.now(UTC)

    def _never_started(self, job: ExportJob, error: PortraitError) -> None:
        """End a job taken out of the queue, never started, with ``error``; called holding ``_lock``."""
        shutil.rmtree(job.path.parent, ignore_errors=True)
        job.error, job.queue_place = error, None
        job.finished, job.finished_at = time.monotonic(), datetime.now(UTC)
        job.status = "failed"
        job.ended.set()

    def _remove(self, job: ExportJob) -> None:
        """Forget ``job`` and delete its file; called holding ``_lock``."""
        self._jobs.pop(job.id, None)
        shutil.rmtree(job.path.parent, ignore_errors=True)

    def _run(self, job: ExportJob, run: Exporter) -> None:
        def written(rows: int, total: int) -> None:
            job.rows_total, job.rows_written = total, rows

        report: dict[str, Any] | None = None
        error: PortraitError | None = None
        try:
            report = run(job.path, written, lambda: self._queue.stopping or job.stop_asked.is_set())
        except PortraitError as exc:
            error = exc
        except Exception as exc:  # a job has no caller to raise to: the server's log has the trace, its poller why
            log.exception("export %s failed", job.id)
            error = PortraitError(f"the export failed: {type(exc).__name__}: {exc}", code="export_failed")
        finally:
            if report is None and error is None:  # the thread itself was stopped (the interpreter exiting)
                error = PortraitError("the export stopped", code="export_failed")
            with self._lock:  # as cancel() looks: a cancel answered "cancelling" ends the job cancelled
                if error is None and job.stop_asked.is_set():  # asked after the last chunk
                    error = ExportCancelled("the export was cancelled as it ended; its file is not kept")
                if error is not None:  # nothing half written stays on the server's disk
                    shutil.rmtree(job.path.parent, ignore_errors=True)
                # The status last: a poller that reads "done" finds the report and the file whole
                job.report, job.error = report, error
                job.finished, job.finished_at = time.monotonic(), datetime.now(UTC)
                job.status = "done" if error is None else "failed"
                self._queue.ended(job.id)
            job.ended.set()


def remove_folders_of_gone_servers() -> None:
    """Delete the export folders (and the files in them, personal data when asked for) of servers that were killed
    before they could: a finished export is kept an hour, and nothing else would ever remove it. A folder whose
    process still runs -- another server on this machine -- is its own; so is one of another user (not ours to
    signal, nor to delete)."""
    try:
        found = list(Path(tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*"))
    except OSError:  # the temporary folder unreadable: the first export says what is wrong with it
        return
    for folder in found:
        named = _FOLDER.match(folder.name)
        if named is not None and not process_alive(int(named.group(1))):
            log.warning("removing %s, the exports of a server that was killed (process %s)", folder, named.group(1))
            shutil.rmtree(folder, ignore_errors=True)


def _timestamp(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _duration(seconds: float) -> str:
    return "an hour" if seconds == 3600 else f"{seconds:g} s"
