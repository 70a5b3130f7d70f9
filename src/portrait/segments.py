"""Segments: named groups of customers, kept current.

- **Dynamic** segments have a condition (:mod:`portrait.conditions`); **static** ones a list of identities
  (uploaded), whose members are the profiles holding any of them now (so merges and late sign-ups count).
- Membership is materialized in ``segment_members``. A **recount** computes it in SQL for every profile (after a
  change to the segment, and periodically, for conditions that move with time such as "within the last 30 days");
  in **real time**, after each processed batch, the profiles the batch touched are re-evaluated with the Python
  engine. The two engines agree (tests/test_conditions.py), so both paths give the same membership.
- Every entry and exit is kept in ``segment_history`` and returned to the caller, which puts ``Audience Entered`` /
  ``Audience Exited`` events on the profile's timeline.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import pyarrow as pa

from portrait.attributes import code_for, unit_shown
from portrait.background import Worker
from portrait.calculated import Calculator
from portrait.conditions import Condition, ConditionError, Schema, check, describe, from_json, parse, to_json, to_text
from portrait.conditions.ast import (
    And,
    EventTime,
    InSegment,
    Not,
    Or,
    Performed,
    Sequence,
    Stopped,
    attribute_comparisons,
)
from portrait.conditions.check import OPS_BY_TYPE
from portrait.conditions.evaluate import Event, ProfileData, compile_predicate
from portrait.conditions.explain import explain
from portrait.errors import BadRequest, Conflict, NotFound, PortraitError, StorageUnavailable
from portrait.event_names import closest_name, unseen_event_notes
from portrait.model import Identifier
from portrait.registry import AttributeRegistry
from portrait.spec import iso_time, utc_now
from portrait.sql import segments as q
from portrait.sql.conditions import compile_condition
from portrait.store import Session
from portrait.value_notes import compared_values, unmatched_value_notes

log = logging.getLogger(__name__)
NAME = re.compile(r"^(?!\d+$)[^\s\x00-\x1f\x7f/](?:[^\x00-\x1f\x7f/]{0,78}[^\s\x00-\x1f\x7f/])?$")
SAMPLE_SIZE = 10
# Shown beside each sampled profile, so a marketer recognises the customers: the first of these the registry has
# (up to RECOGNISING_SHOWN), then the attributes the condition compares, up to SAMPLE_COLUMNS in all.
RECOGNISING = ("email", "first_name", "last_name", "name", "company")
RECOGNISING_SHOWN = 3
SAMPLE_COLUMNS = 6
# The real-time refresh evaluates in SQL from this many touched profiles, and from this share of all profiles per
# dynamic segment (see Segments._large; measured in docs/performance.md, "Real-time segment refresh").
SQL_FROM = 1_000
SQL_SHARE_PER_SEGMENT = 0.0015
# A recount writes its changes this many profiles per paused transaction (see Segments._write_in_chunks): 0.1-0.35 s
# a chunk at 200,000 profiles, 0.2-0.4 s at 1M on a quiet box; smaller chunks did not shorten the longest pause at 1M
# and doubled the pause in all (docs/performance.md, "Large membership writes").
WRITE_CHUNK = 20_000

# Pages newest first start before this id (BIGINT's largest).
NEWEST = 2**63 - 1


def _microseconds(at: datetime) -> int:
    """A stored (UTC) time as microseconds since 1970: the cursor of a page of sizes, to the microsecond (a time
    written to the millisecond would give the page's last point again)."""
    return (at - _EPOCH) // timedelta(microseconds=1)


_EPOCH = datetime(1970, 1, 1)
_LAST = _microseconds(datetime.max)  # a cursor past every time: an empty page


@dataclass(frozen=True)
class Segment:
    id: int
    name: str
    kind: str
    condition: Condition | None
    description: str


@dataclass(frozen=True)
class Change:
    """A profile entering or leaving a segment."""

    segment_id: int
    segment: str
    change: str  # entered / exited
    profile_id: str


def read_condition(raw: object) -> Condition:
    """A condition from the API/CLI: its text form (a string) or its JSON form (an object)."""
    if isinstance(raw, str):
        return parse(raw)
    if isinstance(raw, dict):
        return from_json(raw)
    raise ConditionError("a condition is its text form (a string) or its JSON form (an object)")


class Segments:
    def __init__(self, session: Callable[[], Session], attributes: AttributeRegistry,
                 normalize: Callable[[str, str], Identifier | None],
                 exclusive: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext) -> None:
        self._session = session
        self._attributes = attributes
        # Held while calculated values or memberships are written (see _changing): processing paused.
        self._exclusive = exclusive
        self.calculator = Calculator(self.schema, attributes.failures)
        self._normalize = normalize
        self._writing = threading.Lock()  # one membership change at a time (API recounts, the real-time thread)
        # One recount at a time, from its evaluation to its write, and no calculated values or static memberships
        # written by the refresh meanwhile (a recount evaluates unpaused, and cannot tell which profiles those
        # changed; see _leave_to_the_refresh). Taken before the pause.
        self._recounting = threading.Lock()
        # Segments that cannot be evaluated now (one saved before its condition was refused, say), by id: skipped,
        # keeping their members, so that one cannot stop every other segment's upkeep; shown as the segment's error.
        self.failures: dict[int, str] = {}
        # Fewer touched profiles than this are evaluated in Python whatever the store's size (see _large).
        self.sql_from = SQL_FROM
        self.write_chunk = WRITE_CHUNK
        # Conditions (by segment id) whose SQL failed in a refresh: evaluated in Python from then on (a failure costs
        # the SQL statement and then the Python evaluation), until the segment's condition changes.
        self._refused_in_sql: dict[int, Condition | None] = {}

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """Held while anything is written: one membership change at a time (API recounts, the real-time thread),
        and processing paused -- which an erasure holds too. So calculated values never commit against a merge
        moving a profile's traits, and a recount that began before an erasure cannot write the erased profile's
        memberships back after it (nor fail on the rows the erasure deleted)."""
        with self._exclusive(), self._writing:
            yield

    # -- definitions -----------------------------------------------------------------------------------------
    def schema(self) -> Schema:
        types = {a["code"]: a["type"] for a in self._attributes.list()}
        return Schema(types, self._referenced)

    def _referenced(self, name: str) -> Condition | None:
        rows = self._session().execute(q.BY_NAME, [name])
        if not rows:
            raise ConditionError(self._unknown_name(name))
        return _segment(rows[0]).condition

    def find(self, reference: str | int) -> Segment:
        """A segment by id (digits) or name."""
        text = str(reference)
        is_id = text.isascii() and text.isdigit() and len(text) <= 18  # "¹" is a digit to Python, not an id
        rows = self._session().execute(q.BY_ID if is_id else q.BY_NAME, [int(text) if is_id else text])
        if not rows:
            raise NotFound(f"no segment has the id {text!r}" if is_id else self._unknown_name(text))
        return _segment(rows[0])

    def _unknown_name(self, name: str) -> str:
        """Names match exactly, case too: the closest one saved is named, for the typo or the case (`poles`)."""
        close = closest_name(name, [row[0] for row in self._session().execute(q.NAMES)])
        return f"no segment is named {name!r}" + (f" (did you mean {close!r}?)" if close else "")

    def all(self) -> list[dict[str, Any]]:
        return [self._document(_segment(row[:8]), size=int(row[8])) for row in self._session().execute(q.LIST)]

    def get(self, reference: str | int) -> dict[str, Any]:
        segment = self.find(reference)
        return self._document(segment, size=int(self._session().execute(q.SIZE, [segment.id])[0][0]))

    def _document(self, segment: Segment, *, size: int) -> dict[str, Any]:
        document: dict[str, Any] = {"id": segment.id, "name": segment.name, "kind": segment.kind,
                                    "description": segment.description, "size": size,
                                    "error": self.failures.get(segment.id)}
        if segment.condition is not None:
            document.update(condition=to_json(segment.condition), text=to_text(segment.condition),
                            english=describe(segment.condition))
        else:
            document["identities"] = int(self._session().execute(q.COUNT_IDENTITIES, [segment.id])[0][0])
        return document

    def create(self, fields: dict[str, Any]) -> tuple[dict[str, Any], list[Change]]:
        """A new segment, counted at once. ``condition`` (text or JSON) makes it dynamic, ``identities`` (a list
        of ``type:value``) static. Returns the segment and who entered it."""
        _known(fields, {"name", "condition", "identities", "description", "kind"})
        name = _name(fields.get("name"))
        if self._session().execute(q.BY_NAME, [name]):
            raise Conflict(f"a segment named {name!r} exists already", code="segment_exists", field="name")
        condition, keys, rejected = self._content(fields, name)
        now = utc_now()
        session = self._session()
        with self._changing(), session.transaction():
            kind = "dynamic" if condition is not None else "static"
            condition_json = orjson.dumps(to_json(condition)).decode() if condition is not None else None
            segment_id = int(session.execute(q.INSERT, [name, kind, condition_json, _description(fields), now,
                                                        now])[0][0])
            for key in keys:
                session.execute(q.ADD_IDENTITY, [segment_id, key])
        changes = self.recount(segment_id)
        document = self.get(segment_id)
        if rejected:
            document["rejected_identities"] = rejected
        return self._with_notes(document, condition), changes

    def update(self, reference: str | int, fields: dict[str, Any]) -> tuple[dict[str, Any], list[Change]]:
        _known(fields, {"name", "condition", "identities", "description"})
        segment = self.find(reference)
        changes: dict[str, Any] = {}
        if "name" in fields and fields["name"] != segment.name:
            changes["name"] = _name(fields["name"])
            self._refuse_if_referenced(segment.name, "rename")
            if self._session().execute(q.BY_NAME, [changes["name"]]):
                raise Conflict(f"a segment named {changes['name']!r} exists already", code="segment_exists",
                               field="name")
        if "description" in fields:
            changes["description"] = _description(fields)
        keys: list[str] | None = None
        rejected: list[str] = []
        condition: Condition | None = None
        if "condition" in fields or "identities" in fields:
            if ("condition" in fields) != (segment.kind == "dynamic"):
                raise BadRequest(f"segment {segment.name!r} is {segment.kind}: change its "
                                 f"{'condition' if segment.kind == 'dynamic' else 'identities'}",
                                 code="invalid_segment")
            condition, keys, rejected = self._content(fields, segment.name)
            if condition is not None:
                changes["condition"] = orjson.dumps(to_json(condition)).decode()
        session = self._session()
        with self._changing(), session.transaction():
            if changes:
                changes["updated_at"] = utc_now()
                session.execute(q.update(list(changes)), [*changes.values(), segment.id])
            if keys is not None:
                session.execute(q.CLEAR_IDENTITIES, [segment.id])
                for key in keys:
                    session.execute(q.ADD_IDENTITY, [segment.id, key])
        entered: list[Change] = []
        if "condition" in changes or keys is not None:
            entered = self.recount(segment.id)
            for dependent in self._dependents(segment.name):  # segments that use this one follow it
                entered += self.recount(dependent)
        document = self.get(segment.id)
        if rejected:  # reported as create reports them: a list replaced without them must not lose them unsaid
            document["rejected_identities"] = rejected
        return self._with_notes(document, condition), entered

    def delete(self, reference: str | int) -> None:
        segment = self.find(reference)
        self._refuse_if_referenced(segment.name, "delete")
        session = self._session()
        with self._changing(), session.transaction():
            for statement in q.DELETE:
                session.execute(statement, [segment.id])

    def _users_of(self, name: str) -> list[str]:
        return [s["name"] for s in self.all() if s["kind"] == "dynamic" and name in _segment_names(
            from_json(s["condition"]))]

    def _dependents(self, name: str) -> list[str]:
        """Segments that refer to ``name``, directly or through others, each before those that use it."""
        found: list[str] = []
        pending = self._users_of(name)
        while pending:
            user = pending.pop(0)
            if user in found:
                found.remove(user)  # used again further down the chain: count it after that one
            found.append(user)
            pending += self._users_of(user)
        return found

    def _refuse_if_referenced(self, name: str, action: str) -> None:
        users = self._users_of(name)
        if users:
            raise Conflict(f"cannot {action} segment {name!r}: {', '.join(users)} refer to it with in_segment(...)",
                           code="segment_referenced")

    def refuse_type_change(self, code: str, kind: str) -> None:
        """Conflict if giving attribute ``code`` the type ``kind`` makes a segment's condition unfit for it
        (``score > 30`` once score is text): no engine could evaluate that condition any more."""
        current = self.schema().attribute_types
        if current.get(code, kind) == kind or kind not in OPS_BY_TYPE:
            return  # no change, or not a type at all (the registry refuses that)
        now, after = Schema(current, _as_static), Schema({**current, code: kind}, _as_static)
        unfit: list[str] = []
        for document in self.all():
            if document["kind"] != "dynamic":
                continue
            condition = from_json(document["condition"])
            with contextlib.suppress(ConditionError):  # one unfit already is not this change's doing
                check(condition, now)
                try:
                    check(condition, after)
                except ConditionError as exc:
                    unfit.append(f"{document['name']!r} ({exc})")
        if unfit:
            raise Conflict(f"cannot make {code} {kind}: the condition of segment {', '.join(unfit)} would no longer "
                           "fit it; change the segment first", code="attribute_in_use")

    def _content(self, fields: dict[str, Any], name: str) -> tuple[Condition | None, list[str], list[str]]:
        """The checked condition, or the normalized identity keys (and the entries that are not identities)."""
        if "condition" in fields and "identities" in fields:
            raise BadRequest("a segment has a condition (dynamic) or identities (static), not both",
                             code="invalid_segment")
        if "identities" in fields:
            identities = fields["identities"]
            if not isinstance(identities, list) or not all(isinstance(i, str) for i in identities):
                raise BadRequest("identities is a list of TYPE:VALUE texts, e.g. email:ann@example.com",
                                 code="invalid_segment")
            keys: list[str] = []
            rejected: list[str] = []
            for text in identities:
                kind, sep, value = text.partition(":")
                found = self._normalize(kind.strip().lower(), value) if sep and kind and value else None
                (keys.append(found.key) if found else rejected.append(text))
            return None, sorted(set(keys)), rejected
        if "condition" not in fields:
            raise BadRequest("a segment needs a condition (dynamic) or identities (static)", code="invalid_segment")
        condition = read_condition(fields["condition"])
        if name in _segment_names(condition):
            raise ConditionError(f"segment {name!r} cannot refer to itself")
        check(condition, self.schema(), segment_path=(name,))
        return condition, [], []

    # -- counting --------------------------------------------------------------------------------------------
    def preview(self, raw: object, *, now: datetime | None = None) -> dict[str, Any]:
        """Count and sample the profiles an unsaved condition selects (nothing is stored); ``notes`` name the events
        it looks at that no event has had (see :mod:`portrait.event_names`)."""
        started = time.perf_counter()
        condition = read_condition(raw)
        schema = self.schema()
        check(condition, schema)
        compiled = compile_condition(condition, schema, now or utc_now())
        rows = self._session().execute(compiled.preview(SAMPLE_SIZE), compiled.params)
        count = int(rows[0][1]) if rows else 0
        sample = [row[0] for row in rows]
        wanted = self._sample_columns(condition)
        samples = self._sample_profiles(sample, wanted)
        columns = [c for c in wanted if any(c in s["traits"] for s in samples)]  # a column no one has: no column
        return {"count": count, "sample": sample, "sample_columns": columns, "sample_profiles": samples,
                "text": to_text(condition), "condition": to_json(condition),
                "english": describe(condition), "seconds": round(time.perf_counter() - started, 3),
                "notes": self._notes(condition, count, schema)}

    def _notes(self, condition: Condition, count: int, schema: Schema) -> list[str]:
        """Notes on what ``condition`` looks for that the data has never held: event names no event has had (see
        :mod:`portrait.event_names`) and, when it counts nobody, text values no profile has (see
        :mod:`portrait.value_notes`: a pass over the attributes' values, ~0.6 s at 1M profiles, is paid only when
        the answer is zero, the silent zero it explains)."""
        session = self._session()
        compared = compared_values(condition, schema.attribute_types) if count == 0 else {}
        personal = self._attributes.personal() if compared else set()
        return (unseen_event_notes(session, sorted(_event_names(condition, self)))
                + unmatched_value_notes(session, compared, personal))

    def _sample_columns(self, condition: Condition) -> list[str]:
        """The attributes shown beside a preview's sampled profiles: those a person is recognised by (email, name),
        then those the condition compares (not an event's properties: those are in its events)."""
        known = {a["code"] for a in self._attributes.list() if a["status"] == "active"}
        recognising = [code for code in RECOGNISING if code in known][:RECOGNISING_SHOWN]
        compared = [code for code in dict.fromkeys(code_for(c.field) for c in attribute_comparisons(condition))
                    if code in known and code not in recognising]
        return [*recognising, *compared][:SAMPLE_COLUMNS]

    def _sample_profiles(self, sample: list[str], columns: list[str]) -> list[dict[str, Any]]:
        """Each sampled profile with its user id and its values of ``columns`` (those it has), in sample order."""
        if not sample:
            return []
        session = self._session()
        user_ids = dict(session.execute(q.SAMPLE_USER_IDS, [sample]))
        traits: dict[str, dict[str, Any]] = {profile_id: {} for profile_id in sample}
        if columns:
            for profile_id, key, value in session.execute(q.SAMPLE_TRAITS, [sample, columns]):
                traits[profile_id][key] = orjson.loads(value)
        return [{"profile_id": profile_id, "user_id": user_ids.get(profile_id),
                 "traits": {c: traits[profile_id][c] for c in columns if c in traits[profile_id]}}
                for profile_id in sample]

    def _with_notes(self, document: dict[str, Any], condition: Condition | None) -> dict[str, Any]:
        """A saved segment's answer with ``notes`` when its new condition looks for what the data never held."""
        notes = self._notes(condition, int(document["size"]), self.schema()) if condition is not None else []
        return {**document, "notes": notes} if notes else document

    def recount(self, reference: str | int, *, now: datetime | None = None) -> list[Change]:
        """Recompute a segment's members in SQL for every profile; store and return the entries and exits.

        Evaluated with nothing paused (a read of what is committed: ~1 s per segment at 1M profiles, which paused
        processing throughout before -- docs/performance.md), and compared with the stored members unpaused too:
        the profiles whose membership differs are the candidates (``seg_candidates``; ``seg_entering`` those
        entering). Only the write is paused, and it costs what changes, not a pass over every profile: the
        candidates, less the profiles processed since the evaluation began (see _leave_to_the_refresh), compared with
        the stored members as they are then -- in chunks (see _write_in_chunks). A segment deleted meanwhile raises
        NotFound and one changed meanwhile is not written with its old condition: the change's own recount writes
        it. Returns once every chunk is stored (the API's answer waits for the whole membership)."""
        now = now or utc_now()
        session = self._session()
        with self._recounting:
            segment = self.find(reference)
            processed = int(session.execute(q.PROCESSED)[0][0])  # before the evaluation reads anything
            session.execute(q.NEW_MEMBERS_TABLE)
            self._evaluate_everyone(session, segment, now)
            session.execute(q.CANDIDATES, [segment.id, segment.id, self.write_chunk])
            session.execute(q.ENTERING)
            session.execute(q.LEFT_TABLE)  # none left to the refresh yet
            changes = self._write_in_chunks(session, segment, processed, now)
        self.failures.pop(segment.id, None)
        return changes

    def _evaluate_everyone(self, session: Session, segment: Segment, now: datetime) -> None:
        """Every profile's membership into ``seg_new``, in SQL (outside any transaction: a read of what is
        committed, processing going on)."""
        if segment.condition is None:
            session.execute(q.new_members(q.STATIC_MEMBERS), [segment.id])
        else:
            compiled = compile_condition(segment.condition, self.schema(), now)
            session.execute(q.new_members(compiled.members()), compiled.params)

    def _write_in_chunks(self, session: Session, segment: Segment, processed: int, now: datetime) -> list[Change]:
        """The candidates' changes, ``write_chunk`` profiles per paused transaction, each chunk with its history rows
        and Audience events (in one transaction, a pass moving 554,000 memberships paused processing ~25 s at 1M
        profiles: docs/performance.md). Processing runs between chunks, so before each the checks are made again:
        the segment as it is now, the profiles processed meanwhile left to the refresh, the erased kept out. A crash
        between chunks leaves the written ones stored with their events; the next recount finds no difference for
        them, so no event twice. The size is recorded with the last chunk."""
        chunks = max(int(session.execute(q.CHUNKS)[0][0]), 1)  # none: one write still records the size
        changes: list[Change] = []
        for chunk in range(chunks):
            self._prepare_chunk(session, chunk)
            with self._changing():
                current = self.find(segment.id)  # as it is now: deleted or changed meanwhile from the API
                if current.condition != segment.condition:
                    return changes
                with session.transaction():
                    processed = self._leave_to_the_refresh(session, processed)
                    session.execute(q.KEEP_EXISTING)
                    changes += _apply(session, current, now)
                    if chunk == chunks - 1:
                        session.execute(q.RECORD_SIZE, [segment.id, now, segment.id])
                        session.execute(q.COUNTED, [now, segment.id])
        return changes

    @staticmethod
    def _prepare_chunk(session: Session, chunk: int) -> None:
        """The chunk's candidates (``seg_scope``, less those an earlier chunk left to the refresh: ``seg_left``) and
        those of them entering (``seg_new``), before the pause: temporary tables of this connection, which nothing
        else writes. Working unpaused between two paused writes also lets a processor waiting for the pause take it
        (a lock is not fair: one taken again at once starved it)."""
        session.execute(q.SCOPE_TABLE)
        session.execute(q.CHUNK_SCOPE, [chunk])
        session.execute(q.NEW_MEMBERS_TABLE)
        session.execute(q.CHUNK_ENTERING)

    @staticmethod
    def _leave_to_the_refresh(session: Session, since: int) -> int:
        """Drop from the chunk the profiles the processor touched after ``since`` (new traits or events, both sides of a
        merge), whose evaluation may predate the change, and keep them out of the chunks after it; returns the
        processor's watermark now, the ``since`` of the next chunk. Those profiles keep their stored membership for the
        real-time refresh to evaluate. It does, after this recount: a refresh covering them read the processor's
        watermark after the recount's first ``since`` was read, so it prepares only once this recount lets go of
        ``_recounting``, and evaluates them as they are then, with the segment as it is then. For every other profile
        the evaluation still holds: the rest of what changes a membership is an erasure (written paused: KEEP_EXISTING,
        and _apply reads the stored members now) or is not written while a recount runs (calculated values and static
        memberships: ``_recounting``; another recount). The caller holds the pause."""
        now = int(session.execute(q.PROCESSED)[0][0])
        if now > since:
            session.execute(q.TOUCHED_TABLE, [since, now] * 3)
            for statement in q.FORGET_TOUCHED:
                session.execute(statement)
        return now

    def _failed(self, segment_id: int, name: str, exc: Exception) -> None:
        """Remember (and log, once per reason) why a segment could not be evaluated; its members stay as they were."""
        reason = exc.message if isinstance(exc, PortraitError) else f"{type(exc).__name__}: {exc}"
        reason = f"cannot be evaluated, its members are kept as they were: {reason}; edit its condition"
        if self.failures.get(segment_id) != reason:
            log.error("segment %r (%s) %s", name, segment_id, reason)
        self.failures[segment_id] = reason

    def recalculate(self, *, now: datetime | None = None) -> int:
        """Compute every calculated attribute for every profile; returns how many attributes."""
        with self._recounting, self._changing():  # each attribute in a transaction of its own (Calculator.apply)
            return self.calculator.apply(self._session(), now or utc_now(), scoped=False)

    def recount_all(self) -> list[Change]:
        """Recompute calculated attributes, then recount every segment (the periodic full pass)."""
        self.recalculate()
        changes: list[Change] = []
        for document in self.all():
            try:
                changes += self.recount(document["id"])
            except NotFound:
                continue  # deleted from the API since it was listed: nothing to count
            except Exception as exc:  # this one only: the others are recounted
                self._failed(document["id"], document["name"], exc)
        return changes

    def refresh_touched(self, *, now: datetime | None = None) -> list[Change]:
        """Re-evaluate the profiles the processor touched since the last call: with the Python engine, or, when
        they are many (see _large), with the SQL engine (see _evaluate_in_sql)."""
        session = self._session()
        processed = int(session.execute(q.PROCESSED)[0][0])
        seen = int(session.execute(q.GET_WATERMARK)[0][0])
        if processed <= seen:
            return []
        now = now or utc_now()
        if not session.execute(q.LIST) and not self.calculator.definitions(session):
            session.execute(q.SET_WATERMARK, [processed])  # nothing to keep current: never pause processing
            return []
        return self._refresh(session, seen, processed, now)

    def _refresh(self, session: Session, seen: int, processed: int, now: datetime) -> list[Change]:
        """The refresh in steps, so that processing and segment writes from the API wait for one step at a time,
        not the whole pass (at 1M profiles, 20 segments over 100,000 touched held them ~25 s: docs/performance.md):

        1. paused: the scope, the calculated attributes (segments may use them) and the static segments (a dynamic
           one referring to one reads its stored members in SQL);
        2. each dynamic segment evaluated without pausing anything (reads only, of what is committed), then its
           changes written, paused, in a transaction of its own -- unless the segment was changed or deleted
           meanwhile (the API recounts a changed one itself), and only for profiles that still exist (one erased or
           merged away meanwhile gets no membership back);
        3. the watermark moved last. A crash before it evaluates the same profiles again: members already written
           give no second change (the diff is against the stored members), so no second Audience event either."""
        with self._recounting, self._changing():  # not while a recount evaluates (see _leave_to_the_refresh)
            segments, scope = self._prepare(session, seen, processed, now)
            changes = [change for segment in segments if segment.condition is None
                       for change in self._refresh_static(session, segment, scope, now)]
        changes += self._refresh_dynamic(session, [s for s in segments if s.condition is not None], scope, now)
        with self._changing():
            session.execute(q.SET_WATERMARK, [processed])
        return changes

    def _prepare(self, session: Session, seen: int, processed: int, now: datetime
                 ) -> tuple[list[Segment], list[str]]:
        """The scope (temporary tables: this connection's, kept across its transactions), the calculated attributes
        for it (each committed on its own), and the segments as they are now; the caller holds the pause, so a
        segment deleted or changed from the API before is not counted as it had been."""
        session.execute(q.SCOPE_TABLE)
        session.execute(q.TOUCHED, [seen, processed] * 3)
        session.execute(q.LIVE_SCOPE, [seen])
        self.calculator.apply(session, now, scoped=True)
        segments = [_segment(row[:8]) for row in session.execute(q.LIST)]
        return segments, [row[0] for row in session.execute(q.SCOPE_PROFILES)]

    def _refresh_dynamic(self, session: Session, dynamic: list[Segment], scope: list[str], now: datetime
                         ) -> list[Change]:
        """Each segment evaluated with nothing paused (reads of what is committed), then its changes written,
        paused, in a transaction of its own (see _refresh)."""
        large = self._large(session, len(scope), len(dynamic))
        in_sql = {s.id for s in dynamic if large and self._refused_in_sql.get(s.id) != s.condition}
        python = [s for s in dynamic if s.id not in in_sql]
        profiles = self._scope_profiles(session, python) if python else []
        schema = self.schema()
        changes: list[Change] = []
        for segment in dynamic:
            session.execute(q.NEW_MEMBERS_TABLE)
            try:
                if segment.id in in_sql:
                    self._evaluate_in_sql(session, segment, schema, now)
                else:
                    self._found(session, self._evaluate(session, segment, scope, profiles, schema, now))
            except Exception as exc:  # this one only: the others are kept current
                self._failed(segment.id, segment.name, exc)
                continue
            with self._changing(), session.transaction():
                if self._unchanged(session, segment):  # else the API's recount of it writes its members
                    session.execute(q.KEEP_EXISTING)
                    changes += _apply(session, segment, now)
        return changes

    def _refresh_static(self, session: Session, segment: Segment, scope: list[str], now: datetime) -> list[Change]:
        """A static segment's members in the scope: those holding one of its identities (cheap: done paused)."""
        try:
            session.execute(q.NEW_MEMBERS_TABLE)
            self._found(session, self._evaluate(session, segment, scope, [], self.schema(), now))
            with session.transaction():
                return _apply(session, segment, now)
        except StorageUnavailable:
            raise  # a full disk is no fault of the segment: the refresh is tried again as a whole, later
        except Exception as exc:  # this one only: the others are kept current
            self._failed(segment.id, segment.name, exc)
            return []

    def _unchanged(self, session: Session, segment: Segment) -> bool:
        """Whether the segment still exists with the condition it was evaluated with (read paused)."""
        rows = session.execute(q.BY_ID, [segment.id])
        return bool(rows) and _segment(rows[0]).condition == segment.condition

    def _large(self, session: Session, touched: int, dynamic: int) -> bool:
        """Whether so many profiles were touched that the SQL engine is cheaper for the ``dynamic`` segments.
        Python's cost is mostly loading each touched profile with its events (once for all segments); SQL's is a
        scan of the store per segment. So the break-even point is a share of the profiles growing with the
        segments: measured ~1.3% of 100,000 profiles (1M events) for 5 segments, ~3% for 20, and 0.5-1% of 1M
        (20M events) for 5 (docs/performance.md); never below ``sql_from``."""
        if touched < self.sql_from:
            return False
        return touched >= SQL_SHARE_PER_SEGMENT * dynamic * int(session.execute(q.COUNT_PROFILES)[0][0])

    def _evaluate_in_sql(self, session: Session, segment: Segment, schema: Schema, now: datetime) -> None:
        """The scope's members into ``seg_new`` by the SQL engine: one set-based statement instead of loading every
        touched profile with its events into Python (measured in docs/performance.md). A condition it cannot
        compile, or whose statement fails, is evaluated by the Python engine (the statement runs outside any
        transaction, so its failure loses nothing else); one that failed stays with Python until it changes."""
        assert segment.condition is not None
        try:
            compiled = compile_condition(segment.condition, schema, now, scope=q.LIVE_SCOPE_TABLE)
        except Exception:
            self._evaluate_alone_in_python(session, segment, schema, now)
            return
        try:
            session.execute(q.new_members(compiled.members(q.LIVE_SCOPE_TABLE)), compiled.params)
        except StorageUnavailable:
            raise  # a full disk is no fault of the condition: the refresh is tried again as a whole, later
        except Exception as exc:
            log.warning("segment %r (%s): the SQL engine failed on the touched profiles (%s); evaluating it "
                        "with the Python engine", segment.name, segment.id, exc)
            self._refused_in_sql[segment.id] = segment.condition
            self._evaluate_alone_in_python(session, segment, schema, now)

    def _evaluate_alone_in_python(self, session: Session, segment: Segment, schema: Schema, now: datetime) -> None:
        self._found(session, self._evaluate(session, segment, *self._scope_of_one(session, segment), schema, now))

    def _scope_of_one(self, session: Session, segment: Segment) -> tuple[list[str], list[ProfileData]]:
        profiles = self._scope_profiles(session, [segment])
        return [p.profile_id for p in profiles], profiles

    @staticmethod
    def _found(session: Session, members: list[str]) -> None:
        if members:
            session.load("seg_found", pa.table({"profile_id": pa.array(members, pa.string())}))
            try:
                session.execute(q.INSERT_FOUND)
            finally:
                session.unload("seg_found")

    def _scope_profiles(self, session: Session, segments: list[Segment]) -> list[ProfileData]:
        names = sorted({n for s in segments if s.condition is not None for n in _event_names(s.condition, self)})
        # seg_live: profiles merged away are in the scope only to leave their segments (no ProfileData for them).
        profiles = {row[0]: ProfileData(row[0]) for row in session.execute(q.SCOPE_PROFILES)}
        for profile_id, key, value in session.execute(q.SCOPE_TRAITS):
            if value is not None:  # a removed trait (null) is kept as a NULL value: missing
                profiles[profile_id].traits[key] = orjson.loads(value)
        for profile_id, purpose, status, at, seq in session.execute(q.SCOPE_CONSENTS):
            profiles[profile_id].consents.append((purpose, status, at, seq))
        if names:
            for profile_id, seq, name, timestamp, properties in session.execute(q.SCOPE_EVENTS, [names]):
                profiles[profile_id].events.append(
                    Event(seq, name, timestamp, orjson.loads(properties) if properties else {}))
        return list(profiles.values())

    def _evaluate(self, session: Session, segment: Segment, scope: list[str], profiles: list[ProfileData],
                  schema: Schema, now: datetime) -> list[str]:
        if segment.condition is None:
            static = {row[0] for row in session.execute(q.STATIC_MEMBERS, [segment.id])}
            return [profile_id for profile_id in scope if profile_id in static]
        predicate = compile_predicate(segment.condition, schema, now, self._static_members)
        return [p.profile_id for p in profiles if predicate(p)]

    def _static_members(self, name: str) -> set[str]:
        segment = self.find(name)
        return {row[0] for row in self._session().execute(q.STATIC_MEMBERS, [segment.id])}

    # -- reads -----------------------------------------------------------------------------------------------
    def members(self, reference: str | int, *, after: str = "", limit: int = 100) -> dict[str, Any]:
        segment = self.find(reference)
        rows = self._session().execute(q.MEMBERS_PAGE, [segment.id, after, limit])
        members = [{"profile_id": r[0], "entered_at": iso_time(r[1]), "user_id": r[2]} for r in rows]
        return {"segment": segment.name, "members": members,
                "next": members[-1]["profile_id"] if len(members) == limit else None}

    def of_profile(self, profile_id: str) -> list[dict[str, Any]]:
        return [{"id": r[0], "name": r[1], "kind": r[2], "since": iso_time(r[3])}
                for r in self._session().execute(q.PROFILE_SEGMENTS, [profile_id])]

    def history(self, reference: str | int, *, limit: int = 100, before: int | None = None) -> dict[str, Any]:
        """Entries and exits, newest first; ``next`` (an id, passed back as ``before``) while more may follow."""
        segment = self.find(reference)
        changes = [{"id": r[0], "profile_id": r[1], "change": r[2], "at": iso_time(r[3])}
                   for r in self._session().execute(q.HISTORY, [segment.id, before or NEWEST, limit])]
        return {"history": changes, "next": changes[-1]["id"] if len(changes) == limit else None}

    def sizes(self, reference: str | int, *, after: int | None = None, limit: int = 1000) -> dict[str, Any]:
        """The size at each recount, oldest first; ``next`` (passed back as ``after``) while more may follow. One
        point per recount is 288 a day at the default interval: over a year, a list no answer should hold whole."""
        segment = self.find(reference)
        start = datetime.min if after is None else _EPOCH + timedelta(microseconds=min(after, _LAST))
        rows = self._session().execute(q.SIZES, [segment.id, start, limit])
        return {"segment": segment.name, "sizes": [{"at": iso_time(r[0]), "size": int(r[1])} for r in rows],
                "next": _microseconds(rows[-1][0]) if len(rows) == limit else None}

    def latest_sizes(self, reference: str | int, count: int) -> list[dict[str, Any]]:
        """The last ``count`` points, oldest first (a trend)."""
        segment = self.find(reference)
        rows = self._session().execute(q.LATEST_SIZES, [segment.id, count])
        return [{"at": iso_time(r[0]), "size": int(r[1])} for r in reversed(rows)]

    def explain(self, reference: str | int, profile_id: str, *, now: datetime | None = None) -> dict[str, Any]:
        """Which parts of the segment's condition hold for the profile, and why."""
        segment = self.find(reference)
        profile = self.load_profile(profile_id)
        member = bool(self._session().execute(q.IS_MEMBER, [segment.id, profile_id]))
        if segment.condition is None:
            return {"segment": segment.name, "profile_id": profile_id, "member": member, "kind": "static",
                    "why": "holds one of the segment's identities" if member else
                    "holds none of the segment's identities"}
        units = {str(a["code"]): unit for a in self._attributes.list() if (unit := unit_shown(a))}
        tree = explain(segment.condition, self.schema(), now or utc_now(), profile, self._static_members, units)
        return {"segment": segment.name, "profile_id": profile_id, "member": member, "holds": tree["holds"],
                "explanation": tree}

    def load_profile(self, profile_id: str) -> ProfileData:
        session = self._session()
        profile = ProfileData(profile_id)
        for _, key, value in session.execute(q.ONE_PROFILE_TRAITS, [profile_id]):
            if value is not None:
                profile.traits[key] = orjson.loads(value)
        for _, seq, name, timestamp, properties in session.execute(q.ONE_PROFILE_EVENTS, [profile_id]):
            profile.events.append(Event(seq, name, timestamp, orjson.loads(properties) if properties else {}))
        for _, purpose, status, at, seq in session.execute(q.ONE_PROFILE_CONSENTS, [profile_id]):
            profile.consents.append((purpose, status, at, seq))
        return profile

    def outbox(self, limit: int) -> list[tuple[Any, ...]]:
        """Audience events waiting to be written: (message_id, segment_id, segment, change, profile_id, at)."""
        return self._session().execute(q.OUTBOX, [limit])

    def outbox_messages(self, limit: int) -> list[tuple[Any, ...]]:
        """The next ``limit`` Audience events waiting, each with the identifier to name its profile by (see
        OUTBOX_MESSAGES): (message_id, segment_id, segment, change, profile_id, at, id_type, id_value)."""
        return self._session().execute(q.OUTBOX_MESSAGES, [limit])

    def sent(self, message_ids: list[str]) -> None:
        """The outbox's events with these ids are in the log."""
        with self._changing():  # an erasure deletes the person's from the outbox: both at once failed one of them
            self._session().execute(q.SENT, [message_ids])

    def identifier_of(self, profile_id: str) -> tuple[str, str] | None:
        rows = self._session().execute(q.PROFILE_IDENTIFIER, [profile_id])
        return (str(rows[0][0]), str(rows[0][1])) if rows else None



def load_profiles(session: Session) -> list[ProfileData]:
    """Every profile with its traits and events, as the Python engine reads them (tests and small stores)."""
    profiles = {row[0]: ProfileData(row[0]) for row in session.execute(q.ALL_PROFILES)}
    for profile_id, key, value in session.execute(q.ALL_TRAITS):
        if value is not None:
            profiles[profile_id].traits[key] = orjson.loads(value)
    for profile_id, seq, name, timestamp, properties in session.execute(q.ALL_EVENTS):
        profiles[profile_id].events.append(Event(seq, name, timestamp, orjson.loads(properties) if properties else {}))
    for profile_id, purpose, status, at, seq in session.execute(q.ALL_CONSENTS):
        profiles[profile_id].consents.append((purpose, status, at, seq))
    return list(profiles.values())


def _apply(session: Session, segment: Segment, now: datetime) -> list[Change]:
    """Diff ``seg_new`` against the stored members within ``seg_scope``; record and return the changes."""
    session.execute(q.ENTERED, [segment.id])
    session.execute(q.EXITED, [segment.id])
    session.execute(q.INHERITED, [segment.id, segment.id])
    session.execute(q.RECORD_ENTERED, [segment.id, now])
    session.execute(q.RECORD_EXITED, [segment.id, now])
    session.execute(q.TO_OUTBOX, [segment.id, now, segment.id, segment.name, now] * 2)
    session.execute(q.ADD_MEMBERS, [segment.id, now])
    session.execute(q.REMOVE_MEMBERS, [segment.id])
    return [Change(segment.id, segment.name, change, profile_id)
            for change, profile_id in session.execute(q.CHANGES)]


def _segment(row: tuple[Any, ...]) -> Segment:
    condition = from_json(orjson.loads(row[3])) if row[3] else None
    return Segment(int(row[0]), str(row[1]), str(row[2]), condition, str(row[4]))


def _as_static(name: str) -> Condition | None:
    """Segment references read as uploaded segments: each segment is checked on its own."""
    return None


def _segment_names(condition: Condition) -> set[str]:
    if isinstance(condition, And | Or):
        return set().union(*(_segment_names(i) for i in condition.items))
    if isinstance(condition, Not):
        return _segment_names(condition.item)
    return {condition.segment} if isinstance(condition, InSegment) else set()


def _event_names(condition: Condition, segments: Segments) -> set[str]:
    """The events a condition looks at (through referenced segments too), so only those are loaded."""
    if isinstance(condition, And | Or):
        return set().union(*(_event_names(i, segments) for i in condition.items))
    if isinstance(condition, Not):
        return _event_names(condition.item, segments)
    if isinstance(condition, InSegment):
        try:
            referenced = segments.find(condition.segment).condition
        except NotFound:  # deleted meanwhile: evaluating the segment fails, and says so, for that segment alone
            return set()
        return _event_names(referenced, segments) if referenced is not None else set()
    if isinstance(condition, Sequence):
        return {condition.first, condition.then}
    if isinstance(condition, Performed | EventTime | Stopped):
        return {condition.event}
    event = getattr(condition, "event", None)
    return {event} if isinstance(event, str) else set()


def _known(fields: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(fields) - allowed
    if unknown:
        raise BadRequest(f"unknown segment fields {', '.join(sorted(unknown))}; known: {', '.join(sorted(allowed))}",
                         code="invalid_segment")


def _name(value: Any) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise BadRequest("a segment name is 1-80 characters without '/', control characters or spaces at either "
                         "end, and not only digits (those are ids)", code="invalid_segment", field="name")
    return value


def _description(fields: dict[str, Any]) -> str:
    value = fields.get("description", "")
    if not isinstance(value, str):
        raise BadRequest("description is text", code="invalid_segment", field="description")
    return value


class SegmentThread(Worker):
    """Keeps memberships current in the background: touched profiles after each batch, a full recount
    every ``recount_seconds``; then ``send`` writes the outbox's Audience events (also those a crash left there)."""

    def __init__(self, segments: Segments, send: Callable[[], object], recount_seconds: int) -> None:
        super().__init__("portrait-segments", interval=1.0)
        self._segments = segments
        self._send = send
        self._recount_seconds = recount_seconds
        self._last_recount = time.monotonic()

    def step(self) -> None:
        self._segments.refresh_touched()
        if time.monotonic() - self._last_recount >= self._recount_seconds:
            self._segments.recount_all()
            self._last_recount = time.monotonic()
        self._send()

