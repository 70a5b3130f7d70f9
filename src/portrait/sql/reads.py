"""Statements and query builders for the read side: profile API, rejected events, status."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime

from sqlglot import exp

from portrait.sql import param, parse

PROFILE_BY_IDENTITY = parse("SELECT profile_id FROM identities WHERE identity_key = ?")
PROFILE_BY_ALIAS = parse("SELECT profile_id FROM profile_aliases WHERE merged_id = ?")
PROFILE_ROW = parse("SELECT profile_id FROM profiles WHERE profile_id = ?")
# The whole profile in one statement of simple parts (each DuckDB round trip costs ~0.3 ms, and scalar subqueries
# plan slowly): rows of (part, text_a, text_b, time_a, time_b, number). Every ``?`` is the profile id, which
# the caller has just resolved (so the profile exists). Merges and conflicts follow their profile into later merges
# (see REASSIGN_HISTORY), so they are all filed under the survivor; so are consent statements.
PROFILE_DOCUMENT = parse("""
SELECT 'seen' AS part, NULL AS a, NULL AS b, first_seen AS t1, last_seen AS t2, events AS n
FROM profile_activity WHERE profile_id = ?
UNION ALL
SELECT 'trait', key, CAST(value AS VARCHAR), updated_at, NULL, NULL FROM profile_traits
WHERE profile_id = ? AND value IS NOT NULL
UNION ALL
SELECT 'identity', type, value, first_seen, NULL, NULL FROM identities WHERE profile_id = ?
UNION ALL
SELECT 'merge', merged_id, CAST(identifiers AS VARCHAR) || '\t' || message_id, merged_at, processed_at, seq
FROM merges WHERE profile_id = ?
UNION ALL
SELECT 'conflict', message_id, CAST(dropped AS VARCHAR), processed_at, NULL, seq FROM identity_conflicts
WHERE profile_id = ?
UNION ALL
SELECT 'consent', purpose, CAST(json_array(status, legal_basis, source) AS VARCHAR), at, NULL, seq
FROM consent_records WHERE profile_id = ?
""")
PROFILE_DOCUMENT_PARAMS = 6  # every ``?`` above is the profile id
PROFILE_TRAITS = parse(
    "SELECT key, value FROM profile_traits WHERE profile_id = ? AND value IS NOT NULL ORDER BY key"
)
PROFILE_IDENTITIES = parse(
    "SELECT type, value, first_seen FROM identities WHERE profile_id = ? ORDER BY type, value"
)
EVENTS_IN_RANGE = parse(
    "SELECT seq, message_id, type, event, user_id, anonymous_id, timestamp, received_at, properties, traits, "
    "context, source, ip, previous_id, group_id, original_timestamp, sent_at, extra "
    "FROM events WHERE seq BETWEEN ? AND ? AND list_contains(CAST(? AS BIGINT[]), seq)"
)
# The log has no index (migration 10): rows are found through each row group's min/max of seq (122,880 rows a
# group), so a query reads every row group between the lowest and highest seq it asks for. A profile's events are
# spread over the whole log: EVENTS_IN_RANGE once per cluster of nearby seqs reads only the groups holding them
# (51 events spread over 1.8M: 90 -> 30 ms; a cluster alone: ~1 ms).
# Each cluster is a round trip (~0.5-1.5 ms); past this many, one pass over the whole range costs less.
SEQ_CLUSTER_GAP = 100_000
MAX_SEQ_CLUSTERS = 32


def seq_clusters(seqs: list[int]) -> list[list[int]]:
    """``seqs`` sorted and cut where two neighbours are more than SEQ_CLUSTER_GAP apart (EVENTS_IN_RANGE per cluster:
    params ``[cluster[0], cluster[-1], cluster]``); all in one when that makes more than MAX_SEQ_CLUSTERS."""
    ordered = sorted(seqs)
    clusters: list[list[int]] = []
    for seq in ordered:
        if clusters and seq - clusters[-1][-1] <= SEQ_CLUSTER_GAP:
            clusters[-1].append(seq)
        else:
            clusters.append([seq])
    return clusters if len(clusters) <= MAX_SEQ_CLUSTERS else [ordered]


COUNT_PROFILES = parse("SELECT count(*) FROM profiles")
# When the oldest event not yet reflected in profiles arrived (NULL when caught up). Param: the watermark.
OLDEST_UNPROCESSED = parse("SELECT min(received_at) FROM events WHERE seq > ?")
COUNT_REJECTED = parse("SELECT count(*) FROM rejected_events")


@dataclass(frozen=True)
class EventFilter:
    profile_id: str
    event: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: tuple[datetime, int] | None = None  # keyset cursor: (timestamp, seq) of the last row already seen
    limit: int = 50
    # How many events the profile has (profile_activity); decides how its page is read, see INDEXED_PAGE_MAX_EVENTS.
    profile_events: int = 0


PROFILE_EVENT_COUNT = parse("SELECT events FROM profile_activity WHERE profile_id = ?")
# A page of a profile with at most this many events is read through the event_profiles index. Asked for the newest
# rows directly, DuckDB scans the whole table instead (its top-N filter keeps the index out): 24 ms for one
# event among 2M. Past this size DuckDB stops using the index anyway (index_scan_max_count, 2,048), and that scan,
# which skips row groups older than the newest rows found, is the faster way.
INDEXED_PAGE_MAX_EVENTS = 2000


def profile_event_page(f: EventFilter) -> tuple[exp.Expr, list[object]]:
    """Newest-first page of a profile's events (keyset pagination on (timestamp, seq))."""
    optional = (f.event, f.since, f.until)
    query = _profile_event_page(*(value is not None for value in optional), f.before is not None,
                                f.profile_events <= INDEXED_PAGE_MAX_EVENTS, f.limit)
    return query, [f.profile_id, *(value for value in optional if value is not None), *(f.before or ())]


@functools.lru_cache(maxsize=256)
def _profile_event_page(by_event: bool, since: bool, until: bool, before: bool, materialized: bool, limit: int
                        ) -> exp.Expr:
    """Built once per shape (see attributes._listing: a statement built per call costs ~1 ms and a renderer cache
    place)."""
    query = exp.select("seq", "timestamp").from_("event_profiles").where(exp.column("profile_id").eq(param()))
    if by_event:
        query = query.where(exp.column("event").eq(param()))
    if since:
        query = query.where(exp.column("timestamp") >= param())
    if until:
        query = query.where(exp.column("timestamp") < param())
    if before:
        query = query.where(exp.Tuple(expressions=[exp.column("timestamp"), exp.column("seq")]) < exp.Tuple(
            expressions=[param(), param()]))
    if materialized:
        query = exp.select("seq", "timestamp").from_("mine").with_("mine", as_=query, materialized=True)
    return query.order_by("timestamp DESC", "seq DESC").limit(exp.Literal.number(limit + 1))


REJECTED_COLUMNS = ("id", "received_at", "code", "reason", "source", "message_id", "payload")
DATA_QUALITY_COLUMNS = ("id", "profile_id", "attribute", "raw_value", "reason", "seq", "message_id", "source",
                        "detected_at")


def newest_first(table: str, columns: tuple[str, ...], limit: int, before_id: int | None,
                 equals: dict[str, object | None]) -> tuple[exp.Expr, list[object]]:
    """A keyset page of an append-only list (id DESC): rows before ``before_id`` matching the given column values.

    One row more than ``limit`` is fetched, so the caller knows whether there is a next page.
    """
    given = {column: value for column, value in equals.items() if value is not None}
    query = _newest_first(table, columns, limit, before_id is not None, tuple(given))
    return query, [*([before_id] if before_id is not None else []), *given.values()]


@functools.lru_cache(maxsize=256)
def _newest_first(table: str, columns: tuple[str, ...], limit: int, before: bool, equal_columns: tuple[str, ...]
                  ) -> exp.Expr:
    """Built once per shape (see _profile_event_page)."""
    query = exp.select(*columns).from_(table)
    if before:
        query = query.where(exp.column("id") < param())
    for column in equal_columns:
        query = query.where(exp.column(column).eq(param()))
    return query.order_by("id DESC").limit(exp.Literal.number(limit + 1))


RECENT_COLUMNS = ("seq", "message_id", "type", "event", "user_id", "anonymous_id", "timestamp", "received_at",
                  "source")
EVENT_COLUMNS = ("seq", "message_id", "type", "event", "user_id", "anonymous_id", "timestamp", "received_at",
                 "properties", "traits", "context", "source", "ip", "previous_id", "group_id", "original_timestamp",
                 "sent_at", "extra")  # as EVENTS_IN_RANGE, for event_document


def recent_events(after_seq: int, limit: int, *, details: bool = False) -> tuple[exp.Expr, list[object]]:
    """Events after a seq, oldest first: the summary columns, or (``details``) every column of an event."""
    return _recent_events(limit, details), [after_seq]


@functools.lru_cache(maxsize=64)
def _recent_events(limit: int, details: bool) -> exp.Expr:
    """Built once per shape (see _profile_event_page): the console's live feed asks every few seconds."""
    return (exp.select(*(EVENT_COLUMNS if details else RECENT_COLUMNS))
            .from_("events").where(exp.column("seq") > param()).order_by("seq").limit(exp.Literal.number(limit)))
COUNT_QUALITY = parse("SELECT count(*) FROM data_quality")
# Params: profile id. Every consent statement of the profile, oldest first (the last per purpose is current), found
# through the consent_records_profile index (finding them through event_profiles scanned every statement).
CONSENT_HISTORY = parse("""
SELECT purpose, status, legal_basis, at, source, seq FROM consent_records WHERE profile_id = ?
ORDER BY at, seq, purpose
""")
