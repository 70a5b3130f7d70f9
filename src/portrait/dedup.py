"""Which messageIds the event log already holds: the duplicate check of the ingest writer.

An SDK that did not get its 200 (a timeout, a restart) re-sends the same batch with the same messageIds, and the
log must not get a second copy. The check used to be a PRIMARY KEY on ``events.message_id``, but DuckDB rewrites a
whole ART index at every checkpoint (duckdb/duckdb#24848, measured here: ~0.3 ms per 1,000 keys, so ~6 s per
checkpoint at 20M events) and slows down appends as it grows, so the log has no index and the check is done here:

- **Live traffic** is checked against the ids of the recent past, held in memory: exact within
  ``dedup_window_hours`` (up to ``dedup_max_ids`` ids; the oldest are forgotten first). Segment itself promises 99%
  within about 24 hours; SDK retries come within seconds to hours.
- **Imports and SQL source syncs** (``whole_log``) are also checked against the whole log with one set-based query
  per commit whenever the memory no longer covers it, so re-importing a file or re-syncing a source from the start
  never duplicates anything, however old.

The writer thread alone calls this (no locking). Ids are added only after their commit, so a failed commit leaves
nothing behind; after a restart the recent ids are read back from the log.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

# Ids are remembered in generations (one per commit, or per chunk when read back) so forgetting is cheap.
_LOAD_GENERATION = 10_000


class RecentMessageIds:
    """The messageIds of the log's recent past, with the time each was received."""

    def __init__(self, window: timedelta, max_ids: int) -> None:
        self.window = window
        self.max_ids = max_ids
        self._ids: set[str] = set()
        self._generations: deque[tuple[datetime, list[str]]] = deque()
        self.complete = True  # True while every id in the log is held here (nothing forgotten or left unread)

    def __len__(self) -> int:
        return len(self._ids)

    def load(self, newest_first: Iterable[tuple[datetime, str]], *, log_size: int) -> None:
        """Read back the log's newest ids (``received_at, message_id``, newest first) after a start."""
        rows = list(newest_first)
        rows.reverse()
        for start in range(0, len(rows), _LOAD_GENERATION):
            chunk = rows[start:start + _LOAD_GENERATION]
            self._remember(chunk[-1][0], [message_id for _, message_id in chunk])
        self.complete = len(self._ids) >= log_size

    def new_ones(self, message_ids: Sequence[str]) -> list[bool]:
        """For each id: True if it is neither held here nor earlier in ``message_ids`` (first copy wins)."""
        seen = self._ids
        group: set[str] = set()
        keep: list[bool] = []
        for message_id in message_ids:
            new = message_id not in seen and message_id not in group
            if new:
                group.add(message_id)
            keep.append(new)
        return keep

    def add(self, received_at: datetime, message_ids: list[str]) -> None:
        """Remember ids that were just committed, then forget what fell out of the window or over the limit."""
        if message_ids:
            self._remember(received_at, message_ids)
        self._forget(received_at - self.window)

    def _remember(self, received_at: datetime, message_ids: list[str]) -> None:
        self._ids.update(message_ids)
        self._generations.append((received_at, message_ids))

    def _forget(self, older_than: datetime) -> None:
        while self._generations and (self._generations[0][0] < older_than or len(self._ids) > self.max_ids):
            _, message_ids = self._generations.popleft()
            self._ids.difference_update(message_ids)
            self.complete = False
