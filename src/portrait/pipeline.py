"""The processor: consumes the event log in order, in micro-batches, and updates derived state.

Each batch is one transaction that also moves the watermark, so a crash at any point leaves either the whole batch
applied or none of it; after a restart the processor simply continues from the watermark and the derived state ends
up exactly as without the crash (profile ids are derived from the creating event's messageId, not random).

Per batch: read events -> load the identity-graph slice they touch (two set queries) -> resolve identities in
memory, in log order (:mod:`portrait.identity`) -> write profiles, identities, merges, event ownership and traits
back as sets through Arrow tables.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import pyarrow as pa

from portrait import sql
from portrait.identity import ANONYMOUS, IdentityGraph, IdentityRules, Resolution, extract_identifiers
from portrait.model import Identifier, Rejection
from portrait.spec import utc_now
from portrait.store import Session, Store
from portrait.writer import rejections_table

log = logging.getLogger(__name__)
PROFILE_NAMESPACE = uuid.UUID("8a1c4f52-51b1-4e53-9f4a-5a0f2f0c7c11")


def profile_id_for(message_id: str) -> str:
    """Profile ids are derived from the creating event, so re-processing the log yields the same ids."""
    return str(uuid.uuid5(PROFILE_NAMESPACE, message_id))


@dataclass(slots=True)
class _Row:
    seq: int
    message_id: str
    type: str
    user_id: str | None
    anonymous_id: str | None
    previous_id: str | None
    timestamp: datetime
    traits: dict[str, Any]
    context: dict[str, Any]
    event: str | None = None
    identifiers: list[Identifier] = field(default_factory=list)


def _loads(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    value = orjson.loads(text)
    return value if isinstance(value, dict) else {}


@dataclass
class BatchPlan:
    """Everything one batch will write, gathered in memory first."""

    new_profiles: dict[str, tuple[int, datetime]] = field(default_factory=dict)
    merges: list[tuple[str, str, int, str, datetime, list[Identifier]]] = field(default_factory=list)
    conflicts: list[tuple[int, str, str | None, list[Identifier]]] = field(default_factory=list)
    owners: list[tuple[_Row, str]] = field(default_factory=list)
    attached: list[tuple[Identifier, str, datetime, int]] = field(default_factory=list)
    unidentified: list[_Row] = field(default_factory=list)


class Processor:
    """Applies the event log to derived state. ``process_batch`` is safe to call from one thread at a time."""

    def __init__(self, store: Store, rules: IdentityRules, *, batch_size: int) -> None:
        self._store = store
        self._rules = rules
        self._batch_size = batch_size

    def process_batch(self, session: Session) -> int:
        """Process the next micro-batch; returns how many events it consumed (0: caught up)."""
        with session.transaction():
            watermark = _counter(session, "watermark")
            rows = [_row(r) for r in session.execute(sql.READ_EVENT_BATCH, [watermark, self._batch_size])]
            if not rows:
                return 0
            graph = self._load_graph(session, rows)
            plan = self._plan(graph, rows)
            self._write(session, graph, plan, rows)
            session.execute(sql.SET_COUNTER, ["watermark", rows[-1].seq])
            session.execute(sql.ADD_COUNTER, ["events_processed", len(rows)])
        return len(rows)

    def drain(self) -> int:
        """Process until caught up (used by the CLI, tests and benchmarks)."""
        session = self._store.session()
        total = 0
        try:
            while (done := self.process_batch(session)) > 0:
                total += done
        finally:
            session.close()
        return total

    # -- planning (pure, in memory) ----------------------------------------------------------------------------
    def _load_graph(self, session: Session, rows: list[_Row]) -> IdentityGraph:
        keys: set[str] = set()
        for row in rows:
            row.identifiers = extract_identifiers(
                self._rules, user_id=row.user_id, anonymous_id=row.anonymous_id, previous_id=None,
                traits=row.traits if row.type == "identify" else {}, context=row.context,
            )
            keys.update(ident.key for ident in row.identifiers)
            if row.previous_id is not None:
                keys.update((f"user_id:{row.previous_id}", f"{ANONYMOUS}:{row.previous_id}"))
        owners = dict(session.execute(sql.IDENTITIES_BY_KEYS, [sorted(keys)]))
        graph = IdentityGraph(self._rules)
        profile_ids = sorted(set(owners.values()))
        if profile_ids:
            members: dict[str, list[Identifier]] = {}
            created: dict[str, int] = {}
            for profile_id, created_seq, kind, value in session.execute(sql.MEMBERS_OF_PROFILES, [profile_ids]):
                created[profile_id] = created_seq
                ids = members.setdefault(profile_id, [])
                if kind is not None:
                    ids.append(Identifier(kind, value))
            for profile_id, ids in members.items():
                graph.add_profile(profile_id, created[profile_id], ids)
        return graph

    def _plan(self, graph: IdentityGraph, rows: list[_Row]) -> BatchPlan:
        plan = BatchPlan()
        for row in rows:
            if row.previous_id is not None:
                self._add_previous_id(graph, row)
            if not row.identifiers:
                plan.unidentified.append(row)
                continue
            new_id = profile_id_for(row.message_id)
            resolution = graph.resolve(row.identifiers, row.seq, lambda: new_id)
            self._record(plan, graph, row, resolution)
        return plan

    def _add_previous_id(self, graph: IdentityGraph, row: _Row) -> None:
        kind = "user_id" if f"user_id:{row.previous_id}" in graph.owner else ANONYMOUS
        ident = self._rules.normalize(kind, row.previous_id)
        if ident is not None and ident not in row.identifiers:
            row.identifiers = sorted([*row.identifiers, ident], key=lambda i: (self._rules.rank(i.type), i.value))

    @staticmethod
    def _record(plan: BatchPlan, graph: IdentityGraph, row: _Row, resolution: Resolution) -> None:
        assert resolution.profile_id is not None
        if resolution.created:
            plan.new_profiles[resolution.profile_id] = (row.seq, row.timestamp)
        for loser in resolution.merged:
            plan.merges.append((resolution.profile_id, loser, row.seq, row.message_id, row.timestamp,
                                row.identifiers))
        if resolution.dropped:
            plan.conflicts.append((row.seq, row.message_id, resolution.profile_id, resolution.dropped))
        plan.attached.extend((ident, resolution.profile_id, row.timestamp, row.seq) for ident in resolution.attached)
        plan.owners.append((row, resolution.profile_id))

    # -- writing (set-based) -----------------------------------------------------------------------------------
    def _write(self, session: Session, graph: IdentityGraph, plan: BatchPlan, rows: list[_Row]) -> None:
        now = utc_now()
        final = graph.final
        live_new = {p: v for p, v in plan.new_profiles.items() if final(p) == p}
        _insert(session, sql.INSERT_PROFILES, "new_profiles", {
            "profile_id": list(live_new), "created_seq": [v[0] for v in live_new.values()],
            "first_seen": [v[1] for v in live_new.values()], "last_seen": [v[1] for v in live_new.values()],
            "updated_at": [now] * len(live_new),
        })
        if plan.merges:
            self._apply_merges(session, plan, final, now)
        _insert(session, sql.INSERT_IDENTITIES, "new_identities", {
            "identity_key": [a[0].key for a in plan.attached], "type": [a[0].type for a in plan.attached],
            "value": [a[0].value for a in plan.attached], "profile_id": [final(a[1]) for a in plan.attached],
            "first_seen": [a[2] for a in plan.attached], "seq": [a[3] for a in plan.attached],
        })
        self._write_event_owners(session, plan, final, now)
        self._write_traits(session, plan, final)
        if plan.conflicts:
            _insert(session, sql.INSERT_CONFLICTS, "batch_conflicts", {
                "seq": [c[0] for c in plan.conflicts], "message_id": [c[1] for c in plan.conflicts],
                "profile_id": [final(c[2]) if c[2] else None for c in plan.conflicts],
                "dropped": [_identifiers_json(c[3]) for c in plan.conflicts],
                "processed_at": [now] * len(plan.conflicts),
            })
        if plan.unidentified:
            self._reject_unidentified(session, plan.unidentified, now)

    @staticmethod
    def _apply_merges(session: Session, plan: BatchPlan, final: Callable[[str], str], now: datetime) -> None:
        merges = {"merged_id": [m[1] for m in plan.merges], "profile_id": [final(m[1]) for m in plan.merges]}
        session.load("batch_merges", pa.table(merges))
        try:
            for statement in (sql.REASSIGN_IDENTITIES, sql.REASSIGN_EVENTS, sql.REASSIGN_ALIASES, sql.INSERT_ALIASES,
                              sql.MOVE_TRAITS, sql.DELETE_MERGED_TRAITS, sql.MOVE_PROFILE_TIMES,
                              sql.DELETE_MERGED_PROFILES):
                session.execute(statement)
        finally:
            session.unload("batch_merges")
        _insert(session, sql.INSERT_MERGES, "batch_merge_log", {
            "profile_id": [m[0] for m in plan.merges], "merged_id": [m[1] for m in plan.merges],
            "seq": [m[2] for m in plan.merges], "message_id": [m[3] for m in plan.merges],
            "identifiers": [_identifiers_json(m[5]) for m in plan.merges], "merged_at": [m[4] for m in plan.merges],
            "processed_at": [now] * len(plan.merges),
        })

    @staticmethod
    def _write_event_owners(session: Session, plan: BatchPlan, final: Callable[[str], str], now: datetime) -> None:
        owners = plan.owners
        table = pa.table({
            "seq": pa.array([r.seq for r, _ in owners], pa.int64()),
            "profile_id": pa.array([final(p) for _, p in owners], pa.string()),
            "timestamp": pa.array([r.timestamp for r, _ in owners], pa.timestamp("us")),
            "event_type": pa.array([r.type for r, _ in owners], pa.string()),
            "event": pa.array([r.event for r, _ in owners], pa.string()),
        })
        session.load("batch_event_profiles", table)
        try:
            session.execute(sql.INSERT_EVENT_PROFILES)
            session.execute(sql.TOUCH_PROFILES, [now])
        finally:
            session.unload("batch_event_profiles")

    @staticmethod
    def _write_traits(session: Session, plan: BatchPlan, final: Callable[[str], str]) -> None:
        profile_ids: list[str] = []
        keys: list[str] = []
        values: list[str | None] = []
        times: list[datetime] = []
        seqs: list[int] = []
        for row, profile_id in plan.owners:
            if row.type != "identify":
                continue
            owner = final(profile_id)
            for key, value in row.traits.items():
                profile_ids.append(owner)
                keys.append(key)
                values.append(None if value is None else orjson.dumps(value).decode())
                times.append(row.timestamp)
                seqs.append(row.seq)
        _insert(session, sql.UPSERT_TRAITS, "batch_traits", {
            "profile_id": pa.array(profile_ids, pa.string()), "key": pa.array(keys, pa.string()),
            "value": pa.array(values, pa.string()), "updated_at": pa.array(times, pa.timestamp("us")),
            "seq": pa.array(seqs, pa.int64()),
        })

    @staticmethod
    def _reject_unidentified(session: Session, rows: list[_Row], now: datetime) -> None:
        rejections = [
            Rejection(code="no_identifier", reason="every identifier of the message is empty or a blocked value",
                      payload=orjson.dumps({"messageId": r.message_id, "seq": r.seq, "userId": r.user_id,
                                            "anonymousId": r.anonymous_id}).decode(),
                      received_at=now, source="processor", message_id=r.message_id)
            for r in rows
        ]
        session.load("incoming_rejections", rejections_table(rejections))
        try:
            session.execute(sql.INSERT_REJECTIONS)
        finally:
            session.unload("incoming_rejections")


def _row(values: tuple[Any, ...]) -> _Row:
    seq, message_id, kind, user_id, anonymous_id, previous_id, timestamp, traits, context, event = values
    return _Row(seq, message_id, kind, user_id, anonymous_id, previous_id, timestamp, _loads(traits), _loads(context),
                event)


def _identifiers_json(identifiers: list[Identifier]) -> str:
    return orjson.dumps([{"type": i.type, "value": i.value} for i in identifiers]).decode()


def _counter(session: Session, name: str) -> int:
    for key, value in session.execute(sql.GET_COUNTERS):
        if key == name:
            return int(value)
    return 0


def _insert(session: Session, statement: Any, name: str, columns: dict[str, Any]) -> None:
    table = pa.table(columns)
    if table.num_rows == 0:
        return
    session.load(name, table)
    try:
        session.execute(statement)
    finally:
        session.unload(name)


class ProcessorThread:
    """Runs the processor in the background, waking as soon as the writer commits."""

    def __init__(self, processor: Processor, store: Store) -> None:
        self._processor = processor
        self._store = store
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="portrait-processor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def notify(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        session = self._store.session()
        try:
            while not self._stop.is_set():
                try:
                    done = self._processor.process_batch(session)
                except Exception:
                    log.exception("processing batch failed; retrying in 1 s")
                    self._stop.wait(1.0)
                    continue
                if done == 0:
                    self._wake.wait(timeout=0.5)
                    self._wake.clear()
        finally:
            session.close()
