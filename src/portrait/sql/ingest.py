"""Appends to the event log: rejections, and what the writer reads back. Events themselves are appended as an Arrow
table per group commit through ``Session.append`` (no statement: see portrait.writer)."""

from __future__ import annotations

from portrait.sql import insert_from, parse

REJECTION_COLUMNS = ("received_at", "code", "reason", "source", "message_id", "payload")
INSERT_REJECTIONS = insert_from("rejected_events", "incoming_rejections", REJECTION_COLUMNS)
# The last sequence number handed out. Not max(seq) alone: erasure and retention delete applied events, and the
# newest ones may be among them; numbering them again would put new events behind the processor's watermark.
MAX_SEQ = parse("SELECT greatest(coalesce((SELECT max(seq) FROM events), 0), "
                "(SELECT value FROM processor_state WHERE name = 'watermark'))")
# Duplicates are looked for among the events in the log and those retention deleted (expired_events).
_ALL_IDS = ("(SELECT seq, message_id, received_at FROM events UNION ALL SELECT seq, message_id, received_at "
            "FROM expired_events)")
COUNT_EVENTS = parse("SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM expired_events)")
# The newest ids received since a time (params: since, how many), for the writer's memory of recent ids.
RECENT_MESSAGE_IDS = parse(
    f"SELECT received_at, message_id FROM {_ALL_IDS} WHERE received_at >= ? ORDER BY seq DESC LIMIT ?"
)
# Params: how many. The last messages rejected at ingestion that had an id, newest first (RecentRejections).
RECENT_REJECTIONS = parse(
    "SELECT source, message_id FROM rejected_events WHERE message_id IS NOT NULL AND source IS DISTINCT FROM "
    "'processor' ORDER BY id DESC LIMIT ?"
)
# Which of the candidate ids (incoming_ids) the log already holds: an import's check against the whole log.
ALREADY_IN_LOG = parse(
    f"SELECT DISTINCT message_id FROM {_ALL_IDS} WHERE message_id IN (SELECT message_id FROM incoming_ids)"
)
