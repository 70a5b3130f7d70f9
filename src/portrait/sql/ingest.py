"""Appends to the event log: rejections, and what the writer reads back. Events themselves are appended as an Arrow
table per group commit through ``Session.append`` (no statement: see portrait.writer)."""

from __future__ import annotations

from portrait.sql import insert_from, parse

REJECTION_COLUMNS = ("received_at", "code", "reason", "source", "message_id", "payload")
INSERT_REJECTIONS = insert_from("rejected_events", "incoming_rejections", REJECTION_COLUMNS)
MAX_SEQ = parse("SELECT coalesce(max(seq), 0) FROM events")
COUNT_EVENTS = parse("SELECT count(*) FROM events")
# The newest ids received since a time (params: since, how many), for the writer's memory of recent ids.
RECENT_MESSAGE_IDS = parse(
    "SELECT received_at, message_id FROM events WHERE received_at >= ? ORDER BY seq DESC LIMIT ?"
)
# Which of the candidate ids (incoming_ids) the log already holds: an import's check against the whole log.
ALREADY_IN_LOG = parse(
    "SELECT DISTINCT message_id FROM events WHERE message_id IN (SELECT message_id FROM incoming_ids)"
)
