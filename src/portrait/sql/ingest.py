"""Appends to the event log: validated events (an Arrow table per group commit) and rejections."""

from __future__ import annotations

from sqlglot import exp

from portrait.sql import insert_from, parse

EVENT_COLUMNS = (
    "seq", "message_id", "type", "event", "user_id", "anonymous_id", "previous_id", "group_id", "timestamp",
    "original_timestamp", "sent_at", "received_at", "properties", "traits", "context", "source", "ip",
    "identity_hints",
)
# Duplicates (same messageId: an SDK retry, or the same message twice in one group) are skipped by the primary key;
# RETURNING tells which messages were new.
INSERT_EVENTS = insert_from("events", "incoming_events", EVENT_COLUMNS)
INSERT_EVENTS.set("conflict", exp.OnConflict(action=exp.var("DO NOTHING")))
INSERT_EVENTS.set("returning", exp.Returning(expressions=[exp.column("message_id")]))
REJECTION_COLUMNS = ("received_at", "code", "reason", "source", "message_id", "payload")
INSERT_REJECTIONS = insert_from("rejected_events", "incoming_rejections", REJECTION_COLUMNS)
MAX_SEQ = parse("SELECT coalesce(max(seq), 0) FROM events")
