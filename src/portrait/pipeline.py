"""The processor: consumes the event log in order, in micro-batches, and updates derived state.

Each batch is one transaction that also moves the watermark, so a crash at any point leaves either the whole batch
applied or none of it; after a restart the processor continues from the watermark and the derived state ends up
exactly as without the crash (profile ids derive from the creating event's messageId, not from chance).

Per batch, set-based (:mod:`portrait.sql.processor`): collect every event's identifiers and their current owners;
events whose identifiers all belong to one profile are assigned in SQL. The rest -- new identifiers, merges, alias --
go through :class:`portrait.identity.IdentityGraph` in log order, and what it decided is written back as sets.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import pyarrow as pa

from portrait import sql
from portrait.attributes import code_for
from portrait.errors import DatabaseDamaged, PortraitError, StorageUnavailable
from portrait.identity import ANONYMOUS, IdentityGraph, IdentityRules, Resolution, identity_hash, normalize_phone
from portrait.model import Identifier
from portrait.spec import utc_now
from portrait.sql import ingest as ingest_q
from portrait.sql import processor as q
from portrait.store import Session, Store

log = logging.getLogger(__name__)
def profile_id_for(seq: int) -> str:
    """Profile ids are derived from the creating event, so re-processing the log yields the same ids.

    The MD5 digest of the event's sequence number in the log (unique for good: never reused, even after erasures),
    written like a UUID: the same as the processor's SQL computes for profiles it creates set-based
    (sql.processor.STAGE_NEW). Not of its messageId, which a client may send again once it is past the duplicate
    check's window: the new profile then took an existing (or merged-away) profile's id. Profiles created before
    keep their ids. An id, not a secret, so MD5 is fine.
    """
    h = hashlib.md5(f"portrait-profile:{seq}".encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(slots=True)
class SlowEvent:
    """An event that needs the sequential resolver, with its identifiers (highest priority first)."""

    seq: int
    message_id: str
    type: str
    timestamp: datetime
    previous_id: str | None
    identifiers: list[Identifier] = field(default_factory=list)


@dataclass
class BatchPlan:
    """What the sequential resolver decided for one batch, gathered in memory before it is written as sets."""

    new_profiles: dict[str, tuple[int, datetime]] = field(default_factory=dict)
    merges: list[tuple[str, str, SlowEvent]] = field(default_factory=list)
    conflicts: list[tuple[SlowEvent, str, list[Identifier]]] = field(default_factory=list)
    assigned: list[tuple[int, str]] = field(default_factory=list)
    attached: list[tuple[Identifier, str, SlowEvent]] = field(default_factory=list)
    unidentified: int = 0


# The store failing, not the events: a full disk, a damaged database file (a block that no longer reads: each batch
# that needs it fails, whatever its events). Processing pauses and retries; no event is set aside as rejected.
_NOT_THE_EVENTS_FAULT = (StorageUnavailable, DatabaseDamaged)
# The longest the processor lets threads waiting to pause it go first (see ProcessorThread._let_pausers_go_first):
# each pause is short (a segment's write, an erasure's steps), so this only bounds a stream of them.
PAUSERS_FIRST_SECONDS = 5.0


class Processor:
    """Applies the event log to derived state. One thread at a time calls :meth:`process_batch`."""

    def __init__(self, store: Store, rules: IdentityRules, *, batch_size: int, max_batch_size: int | None = None,
                 unknown_traits: str = "infer") -> None:
        self._store = store
        self._unknown_traits = unknown_traits
        self._rules = rules
        self.batch_size = batch_size
        # While behind, every full batch doubles the next one up to max_batch_size: part of a batch's cost grows
        # with the number of identities, not events (DuckDB joins the batch's identifiers by scanning them), so at
        # a million profiles growing batches clear a backlog x1.29 faster (benchmarks/processor_scale.py).
        self.max_batch_size = max(batch_size, max_batch_size or batch_size)
        self._next_batch_size = batch_size
        self.last_batch: tuple[int, float] = (0, 0.0)  # events, seconds of the latest batch (for /api/status)
        self._blocked = sorted(rules.blocked)
        self._identity_codes = sorted({code_for(name) for name in rules.identity_traits})

    def process_next(self, session: Session) -> int:
        """Process the next micro-batch, isolating an event that cannot be processed; returns events consumed.

        A batch that fails is retried one event at a time; an event that fails alone (a bug, or data the store
        refuses) is listed in the rejected events with the error (``processing_failed``) and skipped, so one
        poisonous event cannot stop all processing. It stays in the log and can be reprocessed once fixed.
        """
        try:
            return self.process_batch(session)
        except _NOT_THE_EVENTS_FAULT:
            raise  # every one would fail alike, and none may be set aside for it
        except Exception:
            log.exception("processing a batch failed; retrying its events one at a time")
        try:
            return self.process_batch(session, limit=1)
        except _NOT_THE_EVENTS_FAULT:
            raise
        except Exception as exc:
            log.exception("processing one event failed; it is set aside as rejected")
            return self._set_aside(session, exc)

    def process_batch(self, session: Session, limit: int | None = None) -> int:
        """Process the next micro-batch; returns how many events it consumed (0: caught up)."""
        started = time.perf_counter()
        with session.transaction():
            watermark = self._watermark(session)
            size = limit or self._next_batch_size
            hi, count = session.execute(q.BATCH_RANGE, [watermark, size])[0]
            if count == 0:
                self._next_batch_size = self.batch_size
                return 0
            self._apply(session, watermark, int(hi))
            session.execute(sql.SET_PROCESSOR_COUNTER, [hi, "watermark"])
            session.execute(sql.ADD_PROCESSOR_COUNTER, [count, "events_processed"])
        self.last_batch = (int(count), time.perf_counter() - started)
        if limit is None:
            full = count >= size
            self._next_batch_size = min(2 * size, self.max_batch_size) if full else self.batch_size
        return int(count)

    def rebuild_traits(self, session: Session) -> int:
        """Recompute every profile's traits from the log with the current attribute definitions.

        Values that now fit their attribute are applied, values that no longer do become data-quality issues
        (the old list is replaced). Returns how many trait values were read.
        """
        now = utc_now()
        with session.transaction():
            hi = self._watermark(session)
            session.execute(q.REBUILD_ASSIGN)
            _stage_traits(session, 0, hi)
            if self._unknown_traits == "infer":
                session.execute(q.AUTO_CREATE_ATTRIBUTES, [self._identity_codes, now, now])
            session.execute(q.CHECK_TRAITS)
            count = int(session.execute(q.COUNT_CHECKED)[0][0])
            session.execute(q.CLEAR_TRAITS)
            session.execute(q.CLEAR_QUALITY)
            session.execute(q.BATCH_TRAIT_INPUT)
            _combine_traits(session)
            _record_quality(session, now)
            for statement in q.DROP_BATCH_TABLES:
                session.execute(statement)
        return count

    @staticmethod
    def _watermark(session: Session) -> int:
        rows = session.execute(sql.GET_PROCESSOR_STATE, ["watermark"])
        return int(rows[0][0]) if rows else 0

    def _set_aside(self, session: Session, error: Exception) -> int:
        with session.transaction():
            watermark = self._watermark(session)
            hi, count = session.execute(q.BATCH_RANGE, [watermark, 1])[0]
            if count == 0:
                return 0
            reason = f"processing failed: {type(error).__name__}: {error}"[:2000]
            session.execute(q.REJECT_FAILED, [utc_now(), reason, hi])
            session.execute(sql.SET_PROCESSOR_COUNTER, [hi, "watermark"])
            session.execute(sql.ADD_PROCESSOR_COUNTER, [count, "events_processed"])
        return int(count)

    def catch_up(self) -> int:
        """Process every event the log holds now (not those arriving meanwhile, so it ends under steady traffic):
        an erasure runs this first, paused, so it also erases what was received but not yet applied."""
        session = self._store.session()
        total = 0
        try:
            newest = int(session.execute(ingest_q.MAX_SEQ)[0][0])
            while self._watermark(session) < newest and (done := self.process_next(session)) > 0:
                total += done
        finally:
            session.close()
        return total

    def drain(self) -> int:
        """Process until caught up (used by the CLI, tests and benchmarks)."""
        session = self._store.session()
        total = 0
        try:
            while (done := self.process_next(session)) > 0:
                total += done
        finally:
            session.close()
        return total

    def _apply(self, session: Session, lo: int, hi: int) -> None:
        now = utc_now()
        session.execute(q.STAGE_IDENTIFIERS, [lo, hi, self._blocked])
        phones = [row[0] for row in session.execute(q.RAW_PHONES)]
        phone_map = pa.table({"raw": pa.array(phones, pa.string()),
                              "e164": pa.array([normalize_phone(p, self._rules.phone_region) for p in phones],
                                               pa.string())})
        _with(session, "phone_map", phone_map, q.STAGE_OWNERS, even_empty=True)
        session.execute(q.STAGE_EVENTS, [lo, hi, lo, hi])
        slow_count, identify_count, new_count, consent_count, attach_count, fast_count = session.execute(
            q.BATCH_SHAPE)[0]
        session.execute(q.NEW_BATCH_ASSIGN)  # filled only by paths that have events (see NEW_BATCH_ASSIGN)
        if fast_count:
            session.execute(q.FAST_ASSIGN)
        if new_count:
            slow_count += new_count - self._create_new(session, now, new_count)
        if attach_count:
            slow_count += attach_count - self._attach(session)
        graph, slow = self._load_slow(session) if slow_count else (IdentityGraph(self._rules), [])
        plan = self._plan(graph, slow)
        self._write(session, graph, plan, lo, hi, now, traits=identify_count > 0, consent=consent_count > 0)
        for statement in q.DROP_BATCH_TABLES:
            session.execute(statement)

    @staticmethod
    def _create_new(session: Session, now: datetime, candidates: int) -> int:
        """Create the new customers of the batch whose events the resolver would group alone; the other candidates
        go slow. Returns how many events were given to new profiles."""
        session.execute(q.STAGE_NEW)
        created = int(session.execute(q.COUNT_NEW)[0][0])
        if created < candidates:
            session.execute(q.UNCONFIRMED_NEW)
        if created:
            session.execute(q.NEW_PROFILES, [now])
            session.execute(q.NEW_IDENTITIES)
            session.execute(q.NEW_ASSIGN)
        return created

    def _attach(self, session: Session) -> int:
        """Attach new identifiers to known profiles where the resolver would; the other candidates go slow.

        Returns how many events were attached. Runs before the sequential part loads its profiles, which by
        construction does not include the profiles attached to here."""
        limits = self._rules.limits
        session.execute(q.STAGE_ATTACH, [list(limits.values()), list(limits), self._rules.default_limit])
        session.execute(q.UNCONFIRMED_ATTACH)
        attached = int(session.execute(q.COUNT_ATTACHED)[0][0])
        if attached:
            session.execute(q.ATTACH_IDENTITIES)
            session.execute(q.ATTACH_ASSIGN)
        return attached

    # -- the sequential part ----------------------------------------------------------------------------------
    def _load_slow(self, session: Session) -> tuple[IdentityGraph, list[SlowEvent]]:
        events: dict[int, SlowEvent] = {}
        owners: dict[str, str] = {}
        for seq, message_id, kind, timestamp, previous_id, id_type, value, owner in session.execute(q.SLOW_EVENTS):
            event = events.get(seq)
            if event is None:  # previousId trimmed as identifiers are, so " a1" finds anonymous_id:a1
                previous = previous_id.strip() or None if previous_id is not None else None
                event = events[seq] = SlowEvent(seq, message_id, kind, timestamp, previous)
            if id_type is not None:
                ident = Identifier(id_type, value)
                event.identifiers.append(ident)
                if owner is not None:
                    owners[ident.key] = owner
        aliases = [e.previous_id for e in events.values() if e.previous_id is not None]
        if aliases:
            keys = [f"{kind}:{value}" for value in aliases for kind in ("user_id", ANONYMOUS)]
            owners.update(dict(session.execute(q.IDENTITIES_BY_KEYS, [keys])))
            self._drop_suppressed_previous(session, events.values(), owners)
        graph = IdentityGraph(self._rules)
        profile_ids = sorted(set(owners.values()))
        if profile_ids:
            members: dict[str, tuple[int, list[Identifier]]] = {}
            session.load("wanted_profiles", pa.table({"profile_id": pa.array(profile_ids, pa.string())}))
            try:
                rows = session.execute(q.MEMBERS_OF_PROFILES)
            finally:
                session.unload("wanted_profiles")
            for profile_id, created_seq, kind, value in rows:
                entry = members.setdefault(profile_id, (created_seq, []))
                if kind is not None:
                    entry[1].append(Identifier(kind, value))
            for profile_id, (created_seq, idents) in members.items():
                graph.add_profile(profile_id, created_seq, idents)
        return graph, list(events.values())

    def _drop_suppressed_previous(self, session: Session, events: Iterable[SlowEvent], owners: dict[str, str]
                                  ) -> None:
        """An alias's previousId that names an erased person (as a user id or an anonymous id) and no profile is
        left out, as such identifiers are in STAGE_OWNERS: read as the other kind, it would give her value to
        someone."""
        hashes: dict[str, str] = {}
        for event in events:
            if event.previous_id is not None:
                keys = [ident.key for kind in ("user_id", ANONYMOUS)
                        if (ident := self._rules.normalize(kind, event.previous_id)) is not None]
                if not any(key in owners for key in keys):
                    hashes.update((identity_hash(key), event.previous_id) for key in keys)
        suppressed = {hashes[row[0]] for row in session.execute(q.SUPPRESSED_AMONG, [list(hashes)])}
        if suppressed:
            for event in events:
                if event.previous_id in suppressed:
                    event.previous_id = None

    def _plan(self, graph: IdentityGraph, events: list[SlowEvent]) -> BatchPlan:
        plan = BatchPlan()
        rank = self._rules.rank
        for event in events:
            if event.previous_id is not None:
                kind = "user_id" if f"user_id:{event.previous_id}" in graph.owner else ANONYMOUS
                ident = self._rules.normalize(kind, event.previous_id)
                if ident is not None and ident not in event.identifiers:
                    event.identifiers.append(ident)
            if not event.identifiers:
                plan.unidentified += 1  # left out of b_assign: recorded as rejected (no_identifier)
                continue
            event.identifiers.sort(key=lambda i: (rank(i.type), i.value))
            new_id = functools.partial(profile_id_for, event.seq)  # computed only if a profile is created
            resolution = graph.resolve(event.identifiers, event.seq, new_id)
            _record(plan, event, resolution)
        return plan

    # -- writing (set-based) -----------------------------------------------------------------------------------
    def _write(self, session: Session, graph: IdentityGraph, plan: BatchPlan, lo: int, hi: int,
               now: datetime, *, traits: bool, consent: bool) -> None:
        final = graph.final
        live = {p: v for p, v in plan.new_profiles.items() if final(p) == p}
        _with(session, "new_profiles", pa.table({
            "profile_id": pa.array(list(live), pa.string()),
            "created_seq": pa.array([v[0] for v in live.values()], pa.int64()),
            "created_at": pa.array([now] * len(live), pa.timestamp("us")),
        }), q.INSERT_PROFILES)
        _with(session, "slow_assign", pa.table({
            "seq": pa.array([seq for seq, _ in plan.assigned], pa.int64()),
            "profile_id": pa.array([final(p) for _, p in plan.assigned], pa.string()),
        }), q.INSERT_SLOW_ASSIGN)
        if plan.merges:
            self._apply_merges(session, plan, final, now)
        _with(session, "new_identities", pa.table({
            "identity_key": pa.array([a[0].key for a in plan.attached], pa.string()),
            "type": pa.array([a[0].type for a in plan.attached], pa.string()),
            "value": pa.array([a[0].value for a in plan.attached], pa.string()),
            "profile_id": pa.array([final(a[1]) for a in plan.attached], pa.string()),
            "first_seen": pa.array([a[2].timestamp for a in plan.attached], pa.timestamp("us")),
            "seq": pa.array([a[2].seq for a in plan.attached], pa.int64()),
        }), q.INSERT_IDENTITIES)
        if plan.conflicts:
            _with(session, "batch_conflicts", pa.table({
                "seq": pa.array([c[0].seq for c in plan.conflicts], pa.int64()),
                "message_id": pa.array([c[0].message_id for c in plan.conflicts], pa.string()),
                "profile_id": pa.array([final(c[1]) for c in plan.conflicts], pa.string()),
                "dropped": pa.array([_identifiers_json(c[2]) for c in plan.conflicts], pa.string()),
                "processed_at": pa.array([now] * len(plan.conflicts), pa.timestamp("us")),
            }), q.INSERT_CONFLICTS)
        session.execute(q.INSERT_EVENT_PROFILES)
        session.execute(q.ADD_ACTIVITY)
        if consent:
            session.execute(q.STAGE_CONSENT, [lo, hi])
        if traits:
            _stage_traits(session, lo, hi)
            if self._unknown_traits == "infer":
                session.execute(q.AUTO_CREATE_ATTRIBUTES, [self._identity_codes, now, now])
            session.execute(q.CHECK_TRAITS)
            session.execute(q.BATCH_TRAIT_INPUT)
            _combine_traits(session)
            _record_quality(session, now)
        if plan.unidentified:
            session.execute(q.REJECT_UNIDENTIFIED, [now])

    @staticmethod
    def _apply_merges(session: Session, plan: BatchPlan, final: Callable[[str], str], now: datetime) -> None:
        merges = pa.table({
            "merged_id": pa.array([m[1] for m in plan.merges], pa.string()),
            "profile_id": pa.array([final(m[1]) for m in plan.merges], pa.string()),
        })
        session.load("batch_merges", merges)
        try:
            for statement in (q.REMAP_ASSIGN, q.REASSIGN_IDENTITIES, q.REASSIGN_EVENTS, q.REASSIGN_ALIASES,
                              *q.REASSIGN_HISTORY, q.INSERT_ALIASES, q.MERGE_TRAIT_INPUT):
                session.execute(statement)
            _combine_traits(session)
            for statement in (q.APPLY_PARENT_REMOVALS, q.DELETE_MERGED_TRAITS, q.MERGE_ACTIVITY,
                              q.DELETE_MERGED_ACTIVITY, q.DELETE_MERGED_PROFILES):
                session.execute(statement)
        finally:
            session.unload("batch_merges")
        _with(session, "batch_merge_log", pa.table({  # filed under the survivor (see REASSIGN_HISTORY)
            "profile_id": pa.array([final(m[0]) for m in plan.merges], pa.string()),
            "merged_id": pa.array([m[1] for m in plan.merges], pa.string()),
            "seq": pa.array([m[2].seq for m in plan.merges], pa.int64()),
            "message_id": pa.array([m[2].message_id for m in plan.merges], pa.string()),
            "identifiers": pa.array([_identifiers_json(m[2].identifiers) for m in plan.merges], pa.string()),
            "merged_at": pa.array([m[2].timestamp for m in plan.merges], pa.timestamp("us")),
            "processed_at": pa.array([now] * len(plan.merges), pa.timestamp("us")),
        }), q.INSERT_MERGES)


def _record(plan: BatchPlan, event: SlowEvent, resolution: Resolution) -> None:
    profile_id = resolution.profile_id
    assert profile_id is not None
    if resolution.created:
        plan.new_profiles[profile_id] = (event.seq, event.timestamp)
    plan.merges.extend((profile_id, loser, event) for loser in resolution.merged)
    if resolution.dropped:
        plan.conflicts.append((event, profile_id, resolution.dropped))
    plan.attached.extend((ident, profile_id, event) for ident in resolution.attached)
    plan.assigned.append((event.seq, profile_id))


def _stage_traits(session: Session, lo: int, hi: int) -> None:
    """b_traits: the trait values of the identify events in (lo, hi], with the parts of objects sent as null."""
    session.execute(q.STAGE_TRAITS, [lo, hi])
    session.execute(q.RECORD_TRAIT_PARENTS)
    session.execute(q.STAGE_TRAIT_CHANGES)


def _record_quality(session: Session, now: datetime) -> None:
    """List the batch's trait values that were not applied: broken attribute rules, names that leave no code."""
    if session.execute(q.COUNT_PROBLEMS)[0][0]:
        session.execute(q.RECORD_QUALITY, [now])
    session.execute(q.RECORD_UNUSABLE_TRAIT_NAMES, [now])


def _combine_traits(session: Session) -> None:
    """Fold trait_input into profile_traits, running only the statements of the merge strategies present."""
    present = {row[0] for row in session.execute(q.STRATEGIES_PRESENT)}
    for strategy, statement in zip(q.STRATEGY_ORDER, q.UPSERT_BY_STRATEGY, strict=True):
        if strategy in present:
            session.execute(statement)


def _identifiers_json(identifiers: list[Identifier]) -> str:
    return orjson.dumps([{"type": i.type, "value": i.value} for i in identifiers]).decode()


def _with(session: Session, name: str, table: pa.Table, statement: Any, *, even_empty: bool = False) -> None:
    """Run ``statement`` with ``table`` loaded as ``name`` (skipped when the table is empty, unless even_empty)."""
    if table.num_rows == 0 and not even_empty:
        return
    session.load(name, table)
    try:
        session.execute(statement)
    finally:
        session.unload(name)


class ProcessorThread:
    """Runs the processor in the background, waking as soon as the writer commits."""

    def __init__(self, processor: Processor, store: Store, on_batch: Callable[[], None] = lambda: None, *,
                 interval: float = 0.0) -> None:
        self._processor = processor
        self._store = store
        self._on_batch = on_batch  # told after each processed batch (segments re-evaluate touched profiles)
        # Shortest time between the starts of two batches while the processor is caught up. Every batch has a fixed
        # cost (DuckDB plans ~25 statements: ~50-70 ms on the 2-core build machine), so without a pause a trickle of
        # small commits kept a core busy: measured 82% of one at 2,000 events/s.
        self._interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="portrait-processor", daemon=True)
        # Held while a batch is processed, and by whoever pauses processing. Reentrant: a recheck pauses, then applies
        # what waits in the log and refreshes segments, which pause too -- from the same thread, already holding it.
        self._busy = threading.RLock()
        # Threads waiting to pause processing. The processor lets them go first: it took ``_busy`` again the moment
        # it let go of it (a lock is not fair), so a pause waited through batch after batch of a backlog -- a segment
        # created from the API under sustained ingest spent most of its 5-12 s there (docs/performance.md).
        self._pausers = 0
        self._turn = threading.Condition()
        self.error: str | None = None  # why processing is stopped, while it is
        self._failures = 0  # in a row

    def start(self) -> None:
        self._thread.start()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No batch runs in the background while this is held (the current one finishes first; the next waits for
        every pause asked for meanwhile, see _let_pausers_go_first)."""
        with self._turn:
            self._pausers += 1
        try:
            self._busy.acquire()
        finally:
            with self._turn:
                self._pausers -= 1
                self._turn.notify_all()
        try:
            yield
        finally:
            self._busy.release()

    def _let_pausers_go_first(self) -> None:
        """Before a batch: wait while someone waits to pause processing, so they get ``_busy`` before this thread
        takes it again. At most ``PAUSERS_FIRST_SECONDS``: a steady stream of pauses cannot stop processing."""
        with self._turn:
            self._turn.wait_for(lambda: not self._pausers or self._stop.is_set(), timeout=PAUSERS_FIRST_SECONDS)

    def notify(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        with self._turn:
            self._turn.notify_all()
        self._thread.join()

    def _pause_after(self, exc: Exception) -> None:
        """Wait before trying again: 1 s, then twice as long each time up to 30 s, so a full disk is not hammered
        (nor the log filled with the same traceback every second). ``error`` says why for /api/status."""
        wait = min(30.0, 2.0 ** self._failures)
        self._failures += 1
        self.error = exc.message if isinstance(exc, PortraitError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, _NOT_THE_EVENTS_FAULT):  # its message says it all: no traceback every time
            log.error("processing paused: %s (next try in %.0f s)", exc.message, wait)
        else:
            log.exception("processing failed; next try in %.0f s", wait)
        self._stop.wait(wait)

    def _run(self) -> None:
        session = self._store.session()
        try:
            while not self._stop.is_set():
                self._let_pausers_go_first()
                started = time.monotonic()
                try:
                    with self._busy:
                        done = self._processor.process_next(session)
                except Exception as exc:  # the store itself fails (disk full...): wait, then try again
                    self._pause_after(exc)
                    continue
                self.error = None
                self._failures = 0
                if done == 0:
                    self._wake.wait(timeout=0.5)
                    self._wake.clear()
                    continue
                self._on_batch()
                if done < self._processor.batch_size:  # caught up: let the next events gather for a moment
                    self._stop.wait(max(0.0, started + self._interval - time.monotonic()))
        finally:
            session.close()
