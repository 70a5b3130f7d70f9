"""Every SQL statement Portrait runs, built as SQLGlot expressions and emitted in the store's dialect.

Statements are written once in DuckDB syntax (the default store), parsed into SQLGlot trees at import, and rendered
for whichever dialect the store's capabilities name. Dynamic parts (filters, limits) are added with SQLGlot's builder
API. Values are always bound parameters (``?`` placeholders), never text pasted into SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlglot
from sqlglot import exp

READ_DIALECT = "duckdb"


def parse(text: str) -> exp.Expr:
    """Parse one statement of the module's own SQL (never user input)."""
    tree = sqlglot.parse_one(text, read=READ_DIALECT)
    assert tree is not None
    return tree


def parse_many(text: str) -> list[exp.Expr]:
    return [tree for tree in sqlglot.parse(text, read=READ_DIALECT) if tree is not None]


def param() -> exp.Placeholder:
    return exp.Placeholder()


# --- ingestion --------------------------------------------------------------------------------------------------
EVENT_COLUMNS = (
    "message_id", "type", "event", "user_id", "anonymous_id", "previous_id", "group_id", "timestamp",
    "original_timestamp", "sent_at", "received_at", "properties", "traits", "context", "source",
)


def insert_from(table: str, source: str, columns: tuple[str, ...]) -> exp.Insert:
    """``INSERT INTO table (columns) SELECT columns FROM source`` (source: a loaded Arrow table)."""
    return exp.insert(exp.select(*columns).from_(source), table, columns=list(columns))


INSERT_EVENTS = insert_from("events", "incoming_events", EVENT_COLUMNS)
INSERT_EVENTS.set("conflict", exp.OnConflict(action=exp.var("DO NOTHING")))
INSERT_EVENTS.set("returning", exp.Returning(expressions=[exp.column("message_id")]))
REJECTION_COLUMNS = ("received_at", "code", "reason", "source", "message_id", "payload")
INSERT_REJECTIONS = insert_from("rejected_events", "incoming_rejections", REJECTION_COLUMNS)
ADD_COUNTER = parse(
    "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = counters.value + "
    "excluded.value"
)
SET_COUNTER = parse(
    "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value"
)
GET_COUNTERS = parse("SELECT name, value FROM counters")

# --- processor ---------------------------------------------------------------------------------------------------
READ_EVENT_BATCH = parse(
    "SELECT seq, message_id, type, user_id, anonymous_id, previous_id, timestamp, traits, context, event "
    "FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
)
IDENTITIES_BY_KEYS = parse(
    "SELECT i.identity_key, i.profile_id FROM identities AS i "
    "WHERE i.identity_key IN (SELECT UNNEST(CAST(? AS VARCHAR[])))"
)
MEMBERS_OF_PROFILES = parse(
    "SELECT p.profile_id, p.created_seq, i.type, i.value FROM profiles AS p "
    "LEFT JOIN identities AS i ON i.profile_id = p.profile_id "
    "WHERE p.profile_id IN (SELECT UNNEST(CAST(? AS VARCHAR[])))"
)
KNOWN_USER_IDS = parse(
    "SELECT value FROM identities WHERE type = 'user_id' AND identity_key IN (SELECT UNNEST(CAST(? AS VARCHAR[])))"
)
INSERT_PROFILES = parse(
    "INSERT INTO profiles (profile_id, created_seq, first_seen, last_seen, updated_at) "
    "SELECT profile_id, created_seq, first_seen, last_seen, updated_at FROM new_profiles"
)
INSERT_IDENTITIES = parse(
    "INSERT INTO identities (identity_key, type, value, profile_id, first_seen, seq) "
    "SELECT identity_key, type, value, profile_id, first_seen, seq FROM new_identities"
)
REASSIGN_IDENTITIES = parse(
    "UPDATE identities SET profile_id = m.profile_id FROM batch_merges AS m WHERE identities.profile_id = m.merged_id"
)
REASSIGN_EVENTS = parse(
    "UPDATE event_profiles SET profile_id = m.profile_id FROM batch_merges AS m "
    "WHERE event_profiles.profile_id = m.merged_id"
)
REASSIGN_ALIASES = parse(
    "UPDATE profile_aliases SET profile_id = m.profile_id FROM batch_merges AS m "
    "WHERE profile_aliases.profile_id = m.merged_id"
)
INSERT_ALIASES = parse(
    "INSERT INTO profile_aliases (merged_id, profile_id) SELECT merged_id, profile_id FROM batch_merges"
)
INSERT_MERGES = parse(
    "INSERT INTO merges (profile_id, merged_id, seq, message_id, identifiers, merged_at, processed_at) "
    "SELECT profile_id, merged_id, seq, message_id, identifiers, merged_at, processed_at FROM batch_merge_log"
)
# Fold the merged profiles' traits into the survivor: per key, the value with the latest event time wins.
MOVE_TRAITS = parse(
    "INSERT INTO profile_traits (profile_id, key, value, updated_at, seq) "
    "SELECT m.profile_id, t.key, arg_max(t.value, (t.updated_at, t.seq)), max(t.updated_at), "
    "arg_max(t.seq, (t.updated_at, t.seq)) "
    "FROM profile_traits AS t JOIN batch_merges AS m ON t.profile_id = m.merged_id GROUP BY m.profile_id, t.key "
    "ON CONFLICT (profile_id, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at, "
    "seq = excluded.seq WHERE excluded.updated_at > profile_traits.updated_at "
    "OR (excluded.updated_at = profile_traits.updated_at AND excluded.seq > profile_traits.seq)"
)
DELETE_MERGED_TRAITS = parse(
    "DELETE FROM profile_traits WHERE profile_id IN (SELECT merged_id FROM batch_merges)"
)
MOVE_PROFILE_TIMES = parse(
    "UPDATE profiles SET first_seen = least(profiles.first_seen, s.first_seen), "
    "last_seen = greatest(profiles.last_seen, s.last_seen) "
    "FROM (SELECT m.profile_id, min(p.first_seen) AS first_seen, max(p.last_seen) AS last_seen "
    "FROM profiles AS p JOIN batch_merges AS m ON p.profile_id = m.merged_id GROUP BY m.profile_id) AS s "
    "WHERE profiles.profile_id = s.profile_id"
)
DELETE_MERGED_PROFILES = parse(
    "DELETE FROM profiles WHERE profile_id IN (SELECT merged_id FROM batch_merges)"
)
UPSERT_TRAITS = parse(
    "INSERT INTO profile_traits (profile_id, key, value, updated_at, seq) "
    "SELECT profile_id, key, arg_max(value, (updated_at, seq)), max(updated_at), max(seq) "
    "FROM batch_traits GROUP BY profile_id, key "
    "ON CONFLICT (profile_id, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at, "
    "seq = excluded.seq WHERE excluded.updated_at > profile_traits.updated_at "
    "OR (excluded.updated_at = profile_traits.updated_at AND excluded.seq > profile_traits.seq)"
)
TOUCH_PROFILES = parse(
    "UPDATE profiles SET first_seen = least(profiles.first_seen, s.first_seen), "
    "last_seen = greatest(profiles.last_seen, s.last_seen), updated_at = s.updated_at "
    "FROM (SELECT profile_id, min(timestamp) AS first_seen, max(timestamp) AS last_seen, max(?) AS updated_at "
    "FROM batch_event_profiles GROUP BY profile_id) AS s WHERE profiles.profile_id = s.profile_id"
)
INSERT_EVENT_PROFILES = parse(
    "INSERT INTO event_profiles (seq, profile_id, timestamp, event_type, event) "
    "SELECT seq, profile_id, timestamp, event_type, event FROM batch_event_profiles"
)
INSERT_CONFLICTS = parse(
    "INSERT INTO identity_conflicts (seq, message_id, profile_id, dropped, processed_at) "
    "SELECT seq, message_id, profile_id, dropped, processed_at FROM batch_conflicts"
)

# --- reads -------------------------------------------------------------------------------------------------------
PROFILE_BY_IDENTITY = parse("SELECT profile_id FROM identities WHERE identity_key = ?")
PROFILE_BY_ALIAS = parse("SELECT profile_id FROM profile_aliases WHERE merged_id = ?")
PROFILE_ROW = parse("SELECT profile_id, first_seen, last_seen, updated_at FROM profiles WHERE profile_id = ?")
PROFILE_TRAITS = parse(
    "SELECT key, value FROM profile_traits WHERE profile_id = ? AND value IS NOT NULL ORDER BY key"
)
PROFILE_IDENTITIES = parse(
    "SELECT type, value, first_seen FROM identities WHERE profile_id = ? ORDER BY type, value"
)
PROFILE_MERGES = parse(
    "SELECT merged_id, seq, message_id, identifiers, merged_at, processed_at FROM merges WHERE profile_id = ? "
    "ORDER BY seq"
)
PROFILE_CONFLICTS = parse(
    "SELECT seq, message_id, dropped, processed_at FROM identity_conflicts WHERE profile_id = ? ORDER BY seq"
)
EVENTS_BY_SEQ = parse(
    "SELECT seq, message_id, type, event, user_id, anonymous_id, timestamp, received_at, properties, traits, "
    "context, source FROM events WHERE seq IN (SELECT UNNEST(CAST(? AS BIGINT[])))"
)
COUNT_PROFILES = parse("SELECT count(*) FROM profiles")
COUNT_EVENTS = parse("SELECT count(*) FROM events")
MAX_SEQ = parse("SELECT coalesce(max(seq), 0) FROM events")
COUNT_REJECTED = parse("SELECT count(*) FROM rejected_events")


@dataclass(frozen=True)
class EventFilter:
    profile_id: str
    event: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: tuple[datetime, int] | None = None  # keyset cursor: (timestamp, seq) of the last row already seen
    limit: int = 50


def profile_event_page(f: EventFilter) -> tuple[exp.Expr, list[object]]:
    """Newest-first page of a profile's events (keyset pagination on (timestamp, seq))."""
    params: list[object] = [f.profile_id]
    query = (
        exp.select("seq", "timestamp").from_("event_profiles").where(exp.column("profile_id").eq(param()))
    )
    if f.event is not None:
        query = query.where(exp.column("event").eq(param()))
        params.append(f.event)
    if f.since is not None:
        query = query.where(exp.column("timestamp") >= param())
        params.append(f.since)
    if f.until is not None:
        query = query.where(exp.column("timestamp") < param())
        params.append(f.until)
    if f.before is not None:
        query = query.where(exp.Tuple(expressions=[exp.column("timestamp"), exp.column("seq")]) < exp.Tuple(
            expressions=[param(), param()]))
        params.extend(f.before)
    query = query.order_by("timestamp DESC", "seq DESC").limit(exp.Literal.number(f.limit + 1))
    return query, params


def rejected_page(limit: int, before_id: int | None, code: str | None) -> tuple[exp.Expr, list[object]]:
    query = exp.select("id", "received_at", "code", "reason", "source", "message_id", "payload").from_(
        "rejected_events"
    )
    params: list[object] = []
    if before_id is not None:
        query = query.where(exp.column("id") < param())
        params.append(before_id)
    if code is not None:
        query = query.where(exp.column("code").eq(param()))
        params.append(code)
    return query.order_by("id DESC").limit(exp.Literal.number(limit + 1)), params


def recent_events(after_seq: int, limit: int) -> tuple[exp.Expr, list[object]]:
    query = (
        exp.select("seq", "message_id", "type", "event", "user_id", "anonymous_id", "timestamp", "received_at",
                   "source")
        .from_("events").where(exp.column("seq") > param()).order_by("seq").limit(exp.Literal.number(limit))
    )
    return query, [after_seq]


def placeholders(values: Sequence[object]) -> exp.Tuple:
    return exp.Tuple(expressions=[param() for _ in values])
