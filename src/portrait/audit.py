"""The audit log: who did what, when, to which profile -- every admin action and every read of personal data.

Append-only: Portrait only ever inserts into ``audit_log``; nothing in the API or CLI updates or deletes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from portrait.keys import ApiKey
from portrait.spec import utc_now
from portrait.sql import keys as q
from portrait.store import Session


class AuditLog:
    def __init__(self, session: Callable[[], Session]) -> None:
        self._session = session

    def record(self, key: ApiKey | None, action: str, *, target: str | None = None, profile_id: str | None = None,
               status: int | None = None, detail: dict[str, Any] | None = None) -> None:
        self._session().execute(q.AUDIT, [
            utc_now(), key.id if key else None, key.name if key else "local", action, target, profile_id, status,
            orjson.dumps(detail).decode() if detail else None])

    def last_id(self) -> int:
        return int(self._session().execute(q.LAST_AUDIT_ID)[0][0])

    def rows_after(self, entry_id: int) -> list[tuple[Any, ...]]:
        """The entries after ``entry_id``, oldest first, as stored (for :meth:`append` to a restored database)."""
        return self._session().execute(q.AUDIT_AFTER, [entry_id])

    def append(self, rows: list[tuple[Any, ...]]) -> None:
        session = self._session()
        with session.transaction():
            for row in rows:
                session.execute(q.AUDIT, list(row))

    def entries(self, *, before_id: int = 0, limit: int = 100) -> dict[str, Any]:
        rows = self._session().execute(q.AUDIT_PAGE, [before_id, before_id, limit])
        entries = []
        for row in rows:
            entry = dict(zip(q.AUDIT_COLUMNS, row, strict=True))
            entry["at"] = entry["at"].isoformat(timespec="milliseconds") + "Z"
            entry["detail"] = orjson.loads(entry["detail"]) if entry["detail"] else None
            entries.append(entry)
        following = entries[-1]["id"] if len(entries) == limit else None
        # ``next`` as every other list names it; ``next_before_id`` kept for the clients written against it
        return {"entries": entries, "next": following, "next_before_id": following}
