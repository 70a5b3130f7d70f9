"""Backups: a whole, consistent copy of the database made while the server runs -- ingestion and processing go
on meanwhile -- on demand (``portrait backup``, ``POST /api/backups``) or every ``PORTRAIT_BACKUP_HOURS``, into
``PORTRAIT_BACKUP_DIR``. Of the backups Portrait names itself, the newest ``PORTRAIT_BACKUP_KEEP`` are kept.

Through the API and the console a backup is a job (:meth:`Backups.start`): the checks that can refuse it at once
(the name, a backup already running, the room) are made in the request, the copy runs in a thread of its own, and
the job tells how far it is (the bytes written of about the database's size) until it is done or failed. A copy
takes time in proportion to the database -- ~20 ms/MB on an idle box, up to ~120 ms/MB measured beside mixed
traffic on a loaded one -- so a request waiting for a multi-GB copy ran past any client's timeout (docs/performance.md).

A backup is a Portrait database file like any other (encrypted with the same key when the database is): restoring
one is ``portrait restore`` with the server stopped, which also makes again the erasures done since the backup was
taken (see :func:`portrait.service.restore_backup`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISREG
from typing import Any

from portrait.background import Worker
from portrait.config import Settings
from portrait.errors import BadRequest, Conflict, NotFound, PortraitError, StorageUnavailable
from portrait.store import Store

log = logging.getLogger(__name__)

SUFFIX = ".duckdb"
# The names Portrait gives (and may delete once there are more than PORTRAIT_BACKUP_KEEP): the database's own name
# (so two databases sharing a backup folder never prune each other's), then the time, to the millisecond, which sorts
# them oldest first.
_TIME = r"-\d{8}T\d{6}\.\d{3}Z\.duckdb"
# A backup being written, or one whose writer was killed (kill -9, a power cut): DuckDB writes the copy as
# <name>.partial (and beside it <name>.partial.wal) and Portrait renames it once complete (store.backup).
_PARTIAL = r"\.partial(\.wal)?"
_ANY_PARTIAL = re.compile(re.escape(SUFFIX) + _PARTIAL + "$")
# A name someone gives: a plain file name, never a path (the API must not write anywhere else).
GIVEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
JOBS_KEPT = 20  # the newest backup jobs remembered (in memory: a restart forgets them, not the backups)


def backup_folder(settings: Settings) -> Path:
    """Where backups go: ``PORTRAIT_BACKUP_DIR``, else a ``backups`` folder beside the database."""
    if settings.backup_dir:
        return Path(settings.backup_dir).expanduser().resolve()
    return Path(settings.db_path).expanduser().resolve().parent / "backups"


def database_name(settings: Settings) -> str:
    """The database file's name without its suffix (``portrait`` for portrait.duckdb): what its backups start with."""
    return Path(settings.db_path).name.removesuffix(SUFFIX) or "portrait"


def automatic_name(database: str, now: datetime) -> str:
    return f"{database}-{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z{SUFFIX}"


def automatic_pattern(database: str) -> re.Pattern[str]:
    return re.compile(re.escape(database) + _TIME)


def _given_name(name: str) -> str:
    if not isinstance(name, str) or not GIVEN.match(name):
        raise BadRequest(f"a backup name is a plain file name (letters, digits, '.', '_', '-'; up to 100), not "
                         f"{name!r}: backups go into the backup folder", code="invalid_backup", field="name")
    return name if name.endswith(SUFFIX) else name + SUFFIX


def with_log_bytes(database: Path) -> int:
    """A DuckDB file's bytes with its write-ahead log's. A file that is not there counts 0: DuckDB deletes the log
    at each checkpoint, also between a look for it and a read of its size (a backup job's start answered 500)."""
    found = 0
    for path in (database, Path(str(database) + ".wal")):
        with contextlib.suppress(OSError):
            found += path.stat().st_size
    return found


@dataclass
class BackupJob:
    """A backup made in a thread of its own (see :meth:`Backups.start`). Its progress is read from the files the copy
    writes (``<name>.partial`` and its write-ahead log) against the database's size when it started: a backup is
    about that size (less the space the database has free inside)."""

    id: str
    target: Path
    started_at: datetime
    database_bytes: int
    status: str = "running"
    finished_at: datetime | None = None
    made: dict[str, Any] = field(default_factory=dict)
    error: dict[str, str] | None = None
    most_written: int = 0  # the progress shown never goes back (see _bytes_written)

    def done(self, made: dict[str, Any]) -> None:
        self.made, self.finished_at, self.status = made, datetime.now(UTC), "done"

    def failed(self, error: dict[str, str]) -> None:
        self.error, self.finished_at, self.status = error, datetime.now(UTC), "failed"

    def document(self) -> dict[str, Any]:
        ended = self.finished_at or datetime.now(UTC)
        found: dict[str, Any] = {
            "id": self.id, "status": self.status, "name": self.target.name, "path": str(self.target),
            "started_at": _timestamp(self.started_at),
            "finished_at": _timestamp(self.finished_at) if self.finished_at else None,
            "elapsed_seconds": round((ended - self.started_at).total_seconds(), 2),
            "database_bytes": self.database_bytes, "bytes_written": self._bytes_written()}
        if self.status == "done":
            found.update(self.made)
        if self.error is not None:
            found["error"] = self.error
        return found

    def _bytes_written(self) -> int:
        """The copy's files as they are now; their sum drops for a moment when DuckDB moves the copy's write-ahead
        log into its file, so the largest sum seen is the progress."""
        if self.status == "done":
            return int(self.made["bytes"])
        self.most_written = max(self.most_written, with_log_bytes(Path(str(self.target) + ".partial")))
        return self.most_written


class Backups:
    def __init__(self, store: Store, folder: Path, keep: int, database: str = "portrait") -> None:
        self._store = store
        self.folder = folder
        self._database = database
        self._automatic = automatic_pattern(database)
        self._own_partial = re.compile(self._automatic.pattern + _PARTIAL)
        self._keep = keep
        self._making = threading.Lock()  # one backup at a time: held from the checks to the end of the copy
        self._jobs: OrderedDict[str, BackupJob] = OrderedDict()
        self._jobs_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def make(self, name: str | None = None) -> dict[str, Any]:
        """Make a backup (named by its time unless ``name`` is given) and wait for it; returns where it is and what
        it took. The CLI without a server and the scheduled backups use it; requests start a job (:meth:`start`)."""
        target, leftovers = self._begin(name)
        try:
            return self._copy(target, leftovers)
        finally:
            self._making.release()

    def start(self, name: str | None = None) -> dict[str, Any]:
        """Start a backup as a job and return it at once (``status`` running): refused here, before anything is
        written, for a bad or taken name, a backup already running or too little room; the copy goes on in a thread
        of its own, and :meth:`job` tells how far it is and, at the end, what :meth:`make` returns or the error."""
        target, leftovers = self._begin(name)
        try:
            job = BackupJob(id=uuid.uuid4().hex[:12], target=target, started_at=datetime.now(UTC),
                            database_bytes=self._database_bytes())
            with self._jobs_lock:
                self._jobs[job.id] = job
                while len(self._jobs) > JOBS_KEPT:
                    self._jobs.popitem(last=False)
            self._thread = threading.Thread(target=self._run_job, args=(job, leftovers), daemon=True,
                                            name="portrait-backup")
            self._thread.start()
        except BaseException:
            self._making.release()
            raise
        return job.document()

    def job(self, job_id: str) -> dict[str, Any]:
        """A backup job started by :meth:`start` (the newest ``JOBS_KEPT`` are remembered until a restart)."""
        with self._jobs_lock:
            found = self._jobs.get(job_id)
        if found is None:
            raise NotFound(f"no backup job {job_id!r} (the newest {JOBS_KEPT} are kept until the server restarts): "
                           "GET /api/backups lists the backups made", code="backup_job_not_found")
        return found.document()

    def running(self) -> dict[str, Any] | None:
        """The backup job running now, if any."""
        return self._newest("running")

    def _newest(self, status: str) -> dict[str, Any] | None:
        with self._jobs_lock:
            newest = next(reversed(self._jobs.values()), None)
        return newest.document() if newest is not None and newest.status == status else None

    def wait(self) -> None:
        """Wait for a running backup job to end (the server is stopping: the store must stay open until then, as
        it did for a backup made within a request)."""
        thread = self._thread
        if thread is not None:
            thread.join()

    def _run_job(self, job: BackupJob, leftovers: list[str]) -> None:
        """The job's copy, in its thread; whatever ends it is recorded on the job (and logged)."""
        try:
            try:
                made = self._copy(job.target, leftovers)
            finally:  # before the job says it ended: a backup asked for once it has must not be refused as running
                self._making.release()
        except PortraitError as exc:
            job.failed({"code": exc.code, "message": exc.message})
            log.error("backup %s failed: %s", job.target, exc.message)
        except Exception as exc:  # recorded on the job, which the caller polls: not lost in a thread's traceback
            job.failed({"code": "backup_failed", "message": f"{type(exc).__name__}: {exc}"})
            log.exception("backup %s failed", job.target)
        else:
            job.done(made)

    def _begin(self, name: str | None) -> tuple[Path, list[str]]:
        """The checks before a copy, holding ``_making`` from here (the caller releases it once the copy ends): the
        target (named by the time unless ``name`` is given), leftovers of interrupted backups deleted, the room."""
        now = datetime.now(UTC)
        file_name = automatic_name(self._database, now) if name is None else self._given(name)
        if not self._making.acquire(blocking=False):
            raise Conflict("a backup is being made; ask again once it is done", code="backup_running")
        try:
            target = self._target(file_name)
            leftovers = self._remove_leftovers()  # before the room check: a leftover takes a database's room
            self._check_room()
        except BaseException:
            self._making.release()
            raise
        return target, leftovers

    def _copy(self, target: Path, leftovers: list[str]) -> dict[str, Any]:
        """The copy itself, then the pruning; called holding ``_making``."""
        started = time.monotonic()
        self._store.backup(str(target))
        seconds = time.monotonic() - started
        removed = self._prune()
        log.info("backup %s made in %.1f s", target, seconds)
        return {**_with_encryption(_describe(target, target.stat())), "seconds": round(seconds, 2), "removed": removed,
                "removed_incomplete": leftovers}

    def _database_bytes(self) -> int:
        """The database file and its write-ahead log: about what a backup writes (0 in memory)."""
        return with_log_bytes(Path(self._store.path))

    def listing(self) -> dict[str, Any]:
        """The backups in the folder, newest first, and the incomplete ones: being written, or left by a backup
        that was killed (which nothing deleted before); the job running now, and the newest job if it failed (why,
        for whoever started it from the console)."""
        found = sorted(self._files().items(), key=lambda item: item[1].st_mtime, reverse=True)
        partial = sorted(self._files(_ANY_PARTIAL.search).items(), key=lambda item: item[1].st_mtime, reverse=True)
        return {"folder": str(self.folder), "keep": self._keep,
                "backups": [_with_encryption(_describe(path, stat)) for path, stat in found],
                "incomplete": [_describe(path, stat) for path, stat in partial], "running": self.running(),
                "failed": self._newest("failed")}

    def newest_automatic(self) -> float | None:
        """When the newest backup Portrait named was made (seconds since the epoch), if there is one."""
        times = [stat.st_mtime for path, stat in self._files().items() if self._automatic.fullmatch(path.name)]
        return max(times) if times else None

    def _given(self, name: str) -> str:
        """A name someone gives, checked; never one shaped as Portrait's own, which PORTRAIT_BACKUP_KEEP would
        delete in its turn."""
        file_name = _given_name(name)
        if self._automatic.fullmatch(file_name):
            raise BadRequest(f"{file_name!r} is shaped as the names Portrait gives the backups it may delete "
                             "(PORTRAIT_BACKUP_KEEP): choose another name", code="invalid_backup", field="name")
        return file_name

    def _target(self, file_name: str) -> Path:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PortraitError(f"cannot make the backup folder {self.folder}: {exc.strerror or exc} (set "
                                "PORTRAIT_BACKUP_DIR to a folder Portrait may write to)",
                                code="folder_not_writable") from exc
        target = self.folder / file_name
        if target.exists():
            raise Conflict(f"{target} exists already: a backup is never written over; choose another name",
                           code="backup_exists", field="name")
        return target

    def _check_room(self) -> None:
        """Refuse at once when the folder has less room than the database file and its write-ahead log take: a copy
        that fills the disk fails only at its end, and in the default folder -- on the database's own disk -- it
        meanwhile takes the room the database needs, so events are refused (503) until it fails.

        The log counts: what was written since the last checkpoint (up to PORTRAIT_CHECKPOINT_WAL_MB) is there, not
        in the file, and the backup holds it -- with the file alone, a backup of a 7 MB file and its 34 MB log was
        let start on a 16 MB disk. It is a floor, not a bound: that backup took 75 MB (DuckDB writes the copy's own
        log beside it before moving it in), so a copy can still fill a disk that passed."""
        database = Path(self._store.path)
        if not database.is_file():  # in memory
            return
        needed, free = with_log_bytes(database), shutil.disk_usage(self.folder).free
        if free < needed:
            raise StorageUnavailable(
                f"the backup folder {self.folder} has {free / 1_000_000:,.1f} MB free and a backup of the database "
                f"takes at least {needed / 1_000_000:,.1f} MB (its file and write-ahead log): no backup was made; "
                "free space there, or set PORTRAIT_BACKUP_DIR to a disk with room", code="backup_no_room")

    def _files(self, wanted: Callable[[str], object] = lambda name: name.endswith(SUFFIX)
               ) -> dict[Path, os.stat_result]:
        """The files in the folder whose name is ``wanted`` (backups, by default) with their details. One deleted
        meanwhile (pruned by a backup running at the same moment) is left out: the listing answered 500 when it went
        between the folder's listing and its own."""
        found: dict[Path, os.stat_result] = {}
        if self.folder.is_dir():
            for path in self.folder.iterdir():
                if wanted(path.name):
                    with contextlib.suppress(FileNotFoundError):
                        stat = path.stat()
                        if S_ISREG(stat.st_mode):
                            found[path] = stat
        return found

    def _remove_leftovers(self) -> list[str]:
        """Delete the incomplete backups of this database's own automatic naming; called holding ``_making``.

        None of them is being written: only the process holding the database writes its backups (DuckDB lets one
        process open it), and this one is not writing any. So each is what a killed backup left, the size of the
        database. Other databases' files never match (their names start with their own file's name), nor do
        backups someone named, whose leftovers are theirs to delete."""
        removed = list(self._files(self._own_partial.fullmatch))
        for leftover in removed:
            leftover.unlink(missing_ok=True)
            log.info("incomplete backup %s deleted (left by a backup that was interrupted)", leftover)
        return [f.name for f in removed]

    def _prune(self) -> list[str]:
        """Delete the oldest of the backups Portrait named beyond the newest ``keep`` (0 keeps all); backups given
        a name are the user's to delete."""
        if self._keep <= 0:
            return []
        automatic = sorted(f for f in self._files() if self._automatic.fullmatch(f.name))
        removed = automatic[:-self._keep]
        for old in removed:
            old.unlink(missing_ok=True)
            log.info("backup %s deleted (PORTRAIT_BACKUP_KEEP=%d)", old, self._keep)
        return [f.name for f in removed]


def _describe(path: Path, stat: os.stat_result) -> dict[str, Any]:
    return {"name": path.name, "path": str(path), "bytes": stat.st_size,
            "created_at": _timestamp(datetime.fromtimestamp(stat.st_mtime, UTC))}


def _timestamp(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _with_encryption(described: dict[str, Any]) -> dict[str, Any]:
    return {**described, "encrypted": encrypted(Path(described["path"]))}


def encrypted(path: Path) -> bool | None:
    """Whether a DuckDB file is encrypted, read from its main header: after an 8-byte checksum, the magic ``DUCK``,
    the storage version (8 bytes), then flags, the first of which has bit 0 set in an encrypted file (DuckDB's
    ``MainHeader::ENCRYPTED_DATABASE_FLAG``). None when the file is not a DuckDB database (or cannot be read)."""
    try:
        with path.open("rb") as handle:
            header = handle.read(28)
    except OSError:
        return None
    if len(header) < 28 or header[8:12] != b"DUCK":
        return None
    return bool(int.from_bytes(header[20:28], "little") & 1)


class BackupWorker(Worker):
    """Makes a backup once the newest one Portrait named is ``hours`` old (a restart does not start the count
    again); looks once a minute."""

    def __init__(self, backups: Backups, hours: int, poll: float = 60.0) -> None:
        super().__init__("portrait-backups", interval=poll)
        self._backups = backups
        self._seconds = hours * 3600

    def start(self) -> None:
        super().start()
        self.notify()  # the first look right away: a server started after a long stop backs up at once

    def step(self) -> None:
        newest = self._backups.newest_automatic()
        if newest is None or time.time() - newest >= self._seconds:
            try:
                self._backups.make()
            except Conflict:  # one asked for is being made right now: it will do, and the next look is in a minute
                log.info("scheduled backup skipped: another backup is being made")
