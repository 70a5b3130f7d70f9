"""Group commit: many requests' events become one Arrow append to the event log and one commit.

DuckDB appends millions of rows/s from Arrow but does only ~1.5k single-row INSERTs/s, so each request hands its
validated events (columns, see :class:`portrait.spec.EventColumns`) to the writer thread and waits; the writer takes
everything queued, appends it in one transaction and only then answers the waiting requests (durability before
HTTP 200). Duplicates (same messageId, e.g. an SDK retry) are left out before the append (see
:mod:`portrait.dedup`), so a retried batch never creates a second copy, sequence numbers have no gaps, and the log
needs no index (which keeps appends and checkpoints cheap). If a group fails as a whole, each request is retried
alone, so one bad request cannot fail the others.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import timedelta

import pyarrow as pa

from portrait import sql
from portrait.dedup import RecentMessageIds
from portrait.errors import DatabaseDamaged, StorageUnavailable
from portrait.model import IngestResult, Rejection
from portrait.spec import EventColumns, utc_now
from portrait.sql import ingest as q
from portrait.store import Session, Store

log = logging.getLogger(__name__)

_TS = pa.timestamp("us")
EVENT_SCHEMA = pa.schema([
    ("seq", pa.int64()), ("message_id", pa.string()), ("type", pa.string()), ("event", pa.string()),
    ("user_id", pa.string()), ("anonymous_id", pa.string()), ("previous_id", pa.string()),
    ("group_id", pa.string()), ("timestamp", _TS), ("original_timestamp", _TS), ("sent_at", _TS),
    ("received_at", _TS), ("properties", pa.string()), ("traits", pa.string()), ("context", pa.string()),
    ("source", pa.string()), ("ip", pa.string()), ("identity_hints", pa.string()), ("extra", pa.string()),
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
    whole_log: bool = False  # an import: check duplicates against the whole log, not only the recent past
    suppressed: int = 0  # messages left out because they name an erased person: counted with this commit
    future: Future[IngestResult] = field(default_factory=Future)


class RecentRejections:
    """The (source, messageId) of the last rejected messages, so that an SDK's retry of a batch holding an invalid
    message, a file imported again or a source synced again does not list it (and count it) once per attempt. In
    memory and bounded, read back from the rejected events at start: beyond ``capacity`` rejections ago, a retry
    is listed again -- a second copy, never a lost one."""

    def __init__(self, capacity: int = 100_000) -> None:
        # 16-byte digests, not the ids: a rejected messageId may be any length (too long is one reason to reject)
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._capacity = capacity

    def new_ones(self, rejections: Sequence[Rejection]) -> list[Rejection]:
        """The rejections not seen before (nor earlier in the same list); messages without an id always count."""
        fresh, keys = [], set()
        for rejection in rejections:
            key = _rejection_key(rejection)
            if key is not None and (key in self._seen or key in keys):
                continue
            if key is not None:
                keys.add(key)
            fresh.append(rejection)
        return fresh

    def add(self, rejections: Sequence[Rejection]) -> None:
        for rejection in rejections:
            key = _rejection_key(rejection)
            if key is not None:
                self._seen[key] = None
        self._forget_oldest()

    def load(self, newest_first: Sequence[tuple[str | None, str]]) -> None:
        """Read back the last stored rejections (``source, message_id``, newest first) after a start."""
        for source, message_id in reversed(newest_first):
            self._seen[_key(source, message_id)] = None
        self._forget_oldest()

    def _forget_oldest(self) -> None:
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)

    @property
    def capacity(self) -> int:
        return self._capacity


def _rejection_key(rejection: Rejection) -> bytes | None:
    return _key(rejection.source, rejection.message_id) if rejection.message_id else None


def _key(source: str | None, message_id: str) -> bytes:
    return hashlib.blake2b(f"{source}\x00{message_id}".encode("utf-8", "replace"), digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class DedupPolicy:
    """How far back live traffic is checked for duplicates in memory (see :mod:`portrait.dedup`)."""

    window: timedelta = timedelta(days=7)
    max_ids: int = 5_000_000


class EventWriter:
    """The one thread that appends to the event log. ``submit`` is thread-safe; the future resolves after commit."""

    def __init__(self, store: Store, *, max_events: int, on_commit: Callable[[], None] = lambda: None,
                 dedup: DedupPolicy = DedupPolicy()) -> None:
        self._store = store
        self._max_events = max_events
        self._queued = 0  # events submitted and not yet committed (or failed), for /api/status
        self._queued_lock = threading.Lock()
        self._on_commit = on_commit
        self._last_seq: int | None = None  # highest sequence number handed out (only this thread appends)
        self._recent = RecentMessageIds(dedup.window, dedup.max_ids)
        self._recent_rejections = RecentRejections()
        self._recent_read = False  # read back from the log before the first append (not at start: CLI reads)
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="portrait-writer", daemon=True)
        self._thread.start()

    def submit(self, events: EventColumns, rejections: Sequence[Rejection] = (), *, whole_log: bool = False,
               suppressed: int = 0) -> Future[IngestResult]:
        """Queue events (and rejections) for the next commit. ``whole_log``: an import or source sync, whose
        duplicates are looked for in the whole log, however old, not only in the recent past. ``suppressed``: how
        many messages of the request were left out for naming an erased person (counted in the same commit, so a
        failed commit and the SDK's retry count them once)."""
        pending = _Pending(events, list(rejections), whole_log, suppressed)
        if not len(events) and not rejections and not suppressed:
            pending.future.set_result(IngestResult(0, 0, 0))
        else:
            self._count_queued(len(events))
            self._queue.put(pending)
        return pending.future

    @property
    def queued_events(self) -> int:
        """Events submitted and not yet committed."""
        return self._queued

    def _count_queued(self, change: int) -> None:
        with self._queued_lock:
            self._queued += change

    def flush(self) -> None:
        """Wait until everything submitted before this call is committed (raises if that commit fails)."""
        barrier = _Pending(EventColumns(), [])  # an empty commit of its own, behind everything queued
        self._queue.put(barrier)
        while self._thread.is_alive():  # a closed writer commits nothing more: nothing to wait for
            try:
                barrier.future.result(timeout=1)
                return
            except FutureTimeout:
                continue

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

    def _read_back_recent(self, session: Session) -> None:
        since = utc_now() - self._recent.window
        log_size = int(session.execute(q.COUNT_EVENTS)[0][0])
        self._recent.load(session.execute(q.RECENT_MESSAGE_IDS, [since, self._recent.max_ids]), log_size=log_size)
        self._recent_rejections.load(session.execute(q.RECENT_REJECTIONS, [self._recent_rejections.capacity]))
        self._recent_read = True

    def _commit(self, session: Session, group: list[_Pending]) -> None:
        try:
            kept = self._append(session, group)
        except Exception as exc:
            self._last_seq = None  # re-read after a rollback
            # The disk or the file, not a request: every one is refused alike (so none is isolated), and a damaged
            # file is logged once, by the store, not with a traceback per request.
            from_the_store = isinstance(exc, StorageUnavailable | DatabaseDamaged)
            if len(group) > 1 and not from_the_store:  # isolate the request that fails
                for pending in group:
                    self._commit(session, [pending])
                return
            if isinstance(exc, StorageUnavailable):
                log.error("event log append refused: %s", exc.message)
            elif not from_the_store:
                log.exception("event log append failed")
            self._count_answered(group)
            for pending in group:
                pending.future.set_exception(exc)  # SDKs re-send on a 5xx: nothing is lost
            return
        try:
            self._on_commit()
        finally:
            self._count_answered(group)
        start = 0
        for pending in group:
            end = start + len(pending.events)
            stored = sum(kept[start:end])
            start = end
            pending.future.set_result(IngestResult(stored, len(pending.events) - stored, len(pending.rejections)))

    def _count_answered(self, group: list[_Pending]) -> None:
        """No longer waiting: counted out before the answers are given, so that a sender who has its answer (and
        reads /api/status) sees no queue left for it (counted out after, a status read in between saw it queued)."""
        self._count_queued(-sum(len(pending.events) for pending in group))

    def _append(self, session: Session, group: list[_Pending]) -> list[bool]:
        """Append the group in one transaction; returns, per event in group order, whether it was stored."""
        events = EventColumns()
        for pending in group:
            events.extend(pending.events)
        if not self._recent_read:
            self._read_back_recent(session)
        rejections = self._recent_rejections.new_ones([r for pending in group for r in pending.rejections])
        keep = self._recent.new_ones(events.message_id)
        if any(p.whole_log for p in group) and not self._recent.complete:
            keep = self._not_in_log(session, events.message_id, keep)
        stored = [m for m, k in zip(events.message_id, keep, strict=True) if k]
        with session.transaction():
            if stored:
                self._append_events(session, events, keep)
                session.execute(sql.ADD_COUNTER, [len(stored), "events_received"])
            if rejections:
                session.load("incoming_rejections", rejections_table(rejections))
                try:
                    session.execute(q.INSERT_REJECTIONS)
                finally:
                    session.unload("incoming_rejections")
                session.execute(sql.ADD_COUNTER, [len(rejections), "events_rejected"])
            if len(stored) < len(events):
                session.execute(sql.ADD_COUNTER, [len(events) - len(stored), "events_duplicate"])
            suppressed = sum(p.suppressed for p in group)
            if suppressed:
                session.execute(sql.ADD_COUNTER, [suppressed, "events_suppressed"])
        self._recent.add(utc_now(), stored)  # only once committed: a failed commit leaves nothing behind
        self._recent_rejections.add(rejections)
        return keep

    @staticmethod
    def _not_in_log(session: Session, message_ids: list[str], keep: list[bool]) -> list[bool]:
        """Narrow ``keep`` to ids the log does not hold at all (one scan of the log's ids, for imports)."""
        candidates = pa.table({"message_id": pa.array(
            [m for m, k in zip(message_ids, keep, strict=True) if k], pa.string())})
        session.load("incoming_ids", candidates)
        try:
            present = {row[0] for row in session.execute(q.ALREADY_IN_LOG)}
        finally:
            session.unload("incoming_ids")
        return [k and m not in present for m, k in zip(message_ids, keep, strict=True)]

    def _append_events(self, session: Session, events: EventColumns, keep: list[bool]) -> None:
        if self._last_seq is None:
            self._last_seq = int(session.execute(q.MAX_SEQ)[0][0])
        table = pa.table({"seq": pa.nulls(len(events), pa.int64()), **events.as_dict()}, schema=EVENT_SCHEMA)
        if not all(keep):
            table = table.filter(pa.array(keep, pa.bool_()))
        first = self._last_seq + 1
        table = table.set_column(0, "seq", pa.array(range(first, first + table.num_rows), pa.int64()))
        session.append("events", table)
        self._last_seq = first + table.num_rows - 1


