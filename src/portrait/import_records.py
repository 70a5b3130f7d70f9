"""The store's record of import jobs (:mod:`portrait.import_jobs`): each job as it is queued, starts, progresses
(after each chunk) and ends, so that a server restarted during one still answers for it -- what it was, how far it
got -- where a job kept only in memory was gone (``GET /api/imports/{id}`` answered 404 and the user could not tell
what had been stored).

A report is kept without its first rejected rows: they are the file's rows as sent, personal data that an erasure
would not look for here (the rejected rows themselves are in the rejected events, which it does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from portrait.spec import utc_now
from portrait.sql import imports as q
from portrait.store import Session


@dataclass(frozen=True)
class ImportRecord:
    """One job as the store keeps it."""

    id: str
    owner: str
    filename: str
    dry_run: bool
    status: str  # queued, running, done, failed
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    bytes_total: int
    bytes_read: int | None
    rows: int  # rows imported (stored, found already there, or rejected) when the record was last written
    rows_total: int | None
    stored: int  # of those, the rows stored
    upload: str | None  # the folder holding the file sent, until the job ends
    report: dict[str, Any] | None
    error: dict[str, Any] | None

    @classmethod
    def of_row(cls, row: tuple[Any, ...]) -> ImportRecord:
        found = dict(zip(q.JOB_COLUMNS, row, strict=True))
        for name in ("report", "error"):
            found[name] = orjson.loads(found[name]) if found[name] is not None else None
        return cls(**found)


class ImportRecords:
    def __init__(self, session: Callable[[], Session]) -> None:
        self._session = session

    def add(self, job_id: str, owner: str, filename: str, dry_run: bool, bytes_total: int, upload: str) -> None:
        self._session().execute(q.ADD_JOB, [job_id, owner, filename, dry_run, "queued", utc_now(), bytes_total,
                                            upload])

    def started(self, job_id: str) -> None:
        self._session().execute(q.START_JOB, [utc_now(), job_id])

    def progressed(self, job_id: str, rows: int, rows_total: int | None, bytes_read: int | None, stored: int) -> None:
        self._session().execute(q.PROGRESS, [rows, rows_total, bytes_read, stored, job_id])

    def finished(self, job_id: str, status: str, rows: int, rows_total: int | None, bytes_read: int | None,
                 stored: int, report: dict[str, Any] | None, error: dict[str, Any] | None) -> None:
        kept = {**report, "first_rejected": []} if report is not None else None
        self._session().execute(q.FINISH_JOB, [status, utc_now(), rows, rows_total, bytes_read, stored,
                                               _json(kept), _json(error), job_id])

    def get(self, job_id: str) -> ImportRecord | None:
        rows = self._session().execute(q.GET_JOB, [job_id])
        return ImportRecord.of_row(rows[0]) if rows else None

    def unfinished(self) -> list[ImportRecord]:
        """Jobs recorded as queued or running: at a server's start, those a server left when it was killed."""
        return [ImportRecord.of_row(row) for row in self._session().execute(q.UNFINISHED)]

    def forget_old(self, kept: timedelta, most: int) -> None:
        """Finished jobs go once ``kept`` has passed since they ended, and beyond the newest ``most``."""
        self._session().execute(q.FORGET_BEFORE, [utc_now() - kept])
        self._session().execute(q.FORGET_BEYOND, [most])


def _json(value: dict[str, Any] | None) -> str | None:
    return orjson.dumps(value).decode() if value is not None else None
