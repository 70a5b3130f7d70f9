"""Group commit: many requests' events become one Arrow append to the event log and one commit.

DuckDB appends millions of rows/s from Arrow but does only ~1.5k single-row INSERTs/s, so each request hands its
validated events (columns, see :class:`portrait.spec.EventColumns`) to the writer thread and waits; the writer takes
everything queued, appends it in one transaction and only then answers the waiting requests (durability before
HTTP 200). Duplicates (same messageId, e.g. an SDK retry) are skipped by the primary key, so a retried batch never
creates a second copy. If a group fails as a whole, each request is retried alone, so one bad request cannot fail
the others.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import pyarrow as pa

from portrait import sql
from portrait.model import IngestResult, Rejection
from portrait.spec import EventColumns
from portrait.sql import ingest as q
from portrait.store import Session, Store

log = logging.getLogger(__name__)

_TS = pa.timestamp("us")
EVENT_SCHEMA = pa.schema([
    ("seq", pa.int64()), ("message_id", pa.string()), ("type", pa.string()), ("event", pa.string()),
    ("user_id", pa.string()), ("anonymous_id", pa.string()), ("previous_id", pa.string()),
    ("group_id", pa.string()), ("timestamp", _TS), ("original_timestamp", _TS), ("sent_at", _TS),
    ("received_at", _TS), ("properties", pa.string()), ("traits", pa.string()), ("context", pa.string()),
    ("source", pa.string()), ("ip", pa.string()), ("identity_hints", pa.string()),
])
REJECTION_SCHEMA = pa.schema([
    ("received_at", _TS), ("code", pa.string()), ("reason", pa.string()), ("source", pa.string()),
    ("message_id", pa.string()), ("payload", pa.string()),
])


def rejections_table(rejections: Sequence[Rejection]) -> pa.Table:
    return pa.table({
        "received_at": [r.received_at for r in rejections], "code": [r.code for r in rejections],
        "reason": [r.reason for r in rejections], "source": [r.source for r in rejections],
        "message_id": [r.message_id for r in rejections], "payload": [r.payload for r in rejections],
    }, schema=REJECTION_SCHEMA)


@dataclass
class _Pending:
    events: EventColumns
    rejections: list[Rejection]
    future: Future[IngestResult] = field(default_factory=Future)


class EventWriter:
    """The one thread that appends to the event log. ``submit`` is thread-safe; the future resolves after commit."""

    def __init__(self, store: Store, *, max_events: int, on_commit: Callable[[], None] = lambda: None) -> None:
        self._store = store
        self._max_events = max_events
        self._on_commit = on_commit
        self._last_seq: int | None = None  # highest sequence number handed out (only this thread appends)
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="portrait-writer", daemon=True)
        self._thread.start()

    def submit(self, events: EventColumns, rejections: Sequence[Rejection] = ()) -> Future[IngestResult]:
        pending = _Pending(events, list(rejections))
        if not len(events) and not rejections:
            pending.future.set_result(IngestResult(0, 0, 0))
        else:
            self._queue.put(pending)
        return pending.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        session = self._store.session()
        try:
            while True:
                group, stop = self._take_group()
                if group:
                    self._commit(session, group)
                if stop:
                    return
        finally:
            session.close()

    def _take_group(self) -> tuple[list[_Pending], bool]:
        first = self._queue.get()
        if first is None:
            return [], True
        group, size = [first], len(first.events)
        while size < self._max_events:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return group, True
            group.append(item)
            size += len(item.events)
        return group, False

    def _commit(self, session: Session, group: list[_Pending]) -> None:
        try:
            inserted = self._append(session, group)
        except Exception as exc:
            self._last_seq = None  # re-read after a rollback
            if len(group) > 1:  # isolate the request that fails; the others still land
                for pending in group:
                    self._commit(session, [pending])
                return
            log.exception("event log append failed")
            group[0].future.set_exception(exc)  # SDKs re-send on a 5xx: nothing is lost
            return
        self._on_commit()
        for pending in group:
            stored = 0
            for message_id in pending.events.message_id:
                if message_id in inserted:
                    inserted.discard(message_id)  # a second copy in the same group counts as a duplicate
                    stored += 1
            pending.future.set_result(IngestResult(stored, len(pending.events) - stored, len(pending.rejections)))

    def _append(self, session: Session, group: list[_Pending]) -> set[str]:
        events = EventColumns()
        for pending in group:
            events.extend(pending.events)
        rejections = [r for pending in group for r in pending.rejections]
        inserted: set[str] = set()
        with session.transaction():
            if len(events):
                inserted = self._append_events(session, events)
                session.execute(sql.ADD_COUNTER, [len(inserted), "events_received"])
            if rejections:
                session.load("incoming_rejections", rejections_table(rejections))
                try:
                    session.execute(q.INSERT_REJECTIONS)
                finally:
                    session.unload("incoming_rejections")
                session.execute(sql.ADD_COUNTER, [len(rejections), "events_rejected"])
        return inserted

    def _append_events(self, session: Session, events: EventColumns) -> set[str]:
        if self._last_seq is None:
            self._last_seq = int(session.execute(q.MAX_SEQ)[0][0])
        first = self._last_seq + 1
        columns = {"seq": list(range(first, first + len(events))), **events.as_dict()}
        table = pa.table(columns, schema=EVENT_SCHEMA)
        session.load("incoming_events", table)
        try:
            rows = session.execute(q.INSERT_EVENTS)
        finally:
            session.unload("incoming_events")
        self._last_seq = first + len(events) - 1  # duplicates leave harmless gaps
        return {row[0] for row in rows}


