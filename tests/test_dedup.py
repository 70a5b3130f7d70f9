"""The duplicate check: recent messageIds in memory for live traffic, the whole log for imports; the unindexed log."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from portrait.config import Settings
from portrait.dedup import RecentMessageIds
from portrait.service import IncomingRequest, Portrait
from portrait.sql import parse, schema
from portrait.store.duckdb import DuckDBStore

T0 = datetime(2026, 11, 1, tzinfo=UTC).replace(tzinfo=None)


def track(message_id: str, user: str = "u-1") -> dict[str, Any]:
    return {"type": "track", "event": "Viewed", "userId": user, "messageId": message_id,
            "timestamp": "2026-11-01T10:00:00Z"}


def send(portrait: Portrait, *message_ids: str) -> tuple[int, int]:
    """POST a batch as an SDK would (live traffic); returns (stored, duplicates)."""
    body = orjson.dumps({"batch": [track(m) for m in message_ids], "writeKey": portrait.settings.write_key})
    result = portrait.ingest(IncomingRequest(endpoint="batch", body=body, content_encoding=None, authorization=None,
                                             query_key=None, ip="127.0.0.1")).result()
    return result.accepted, result.duplicates


def import_rows(portrait: Portrait, *message_ids: str) -> tuple[int, int]:
    chunk = next(portrait.import_messages([[track(m) for m in message_ids]], "file:test.csv"))
    return chunk.result.accepted, chunk.result.duplicates


def test_first_copy_wins_within_a_group_and_against_memory() -> None:
    recent = RecentMessageIds(timedelta(hours=1), max_ids=100)
    assert recent.new_ones(["a", "b", "a"]) == [True, True, False]
    recent.add(T0, ["a", "b"])
    assert recent.new_ones(["b", "c", "c"]) == [False, True, False]
    assert recent.complete and len(recent) == 2


def test_ids_older_than_the_window_are_forgotten() -> None:
    recent = RecentMessageIds(timedelta(hours=1), max_ids=100)
    recent.add(T0, ["old"])
    recent.add(T0 + timedelta(minutes=59), ["newer"])
    assert recent.new_ones(["old"]) == [False]
    recent.add(T0 + timedelta(minutes=61), ["newest"])
    assert recent.new_ones(["old", "newer", "newest"]) == [True, False, False]
    assert not recent.complete  # the log now holds an id the memory does not


def test_the_oldest_ids_go_first_past_the_limit() -> None:
    recent = RecentMessageIds(timedelta(days=7), max_ids=3)
    for n, ids in enumerate((["a", "b"], ["c"], ["d"])):
        recent.add(T0 + timedelta(seconds=n), ids)
    assert len(recent) == 2 and recent.new_ones(["a", "b", "c", "d"]) == [True, True, False, False]


def test_reading_back_knows_whether_it_holds_the_whole_log() -> None:
    recent = RecentMessageIds(timedelta(days=7), max_ids=10)
    recent.load([(T0, "b"), (T0, "a")], log_size=2)
    assert recent.complete and recent.new_ones(["a", "b", "c"]) == [False, False, True]
    partial = RecentMessageIds(timedelta(days=7), max_ids=10)
    partial.load([(T0, "b")], log_size=5)
    assert not partial.complete


def test_a_retry_after_a_restart_is_still_a_duplicate(settings: Settings) -> None:
    first = Portrait(settings, background=False)
    assert send(first, "m1", "m2") == (2, 0)
    first.close()
    again = Portrait(settings, background=False)
    try:
        assert send(again, "m1", "m2", "m3") == (1, 2)
        assert again.status()["events_received"] == 3
    finally:
        again.close()


def test_a_rejected_message_sent_again_after_a_restart_is_listed_once(settings: Settings) -> None:
    batch = [{"type": "track", "userId": "u1", "messageId": "no-name"},  # a track without an event name
             {"type": "track", "userId": "u1", "event": "Fine", "messageId": "fine"}]
    first = Portrait(settings, background=False)
    first.ingest_messages(batch)
    first.close()
    again = Portrait(settings, background=False)
    try:
        again.ingest_messages(batch)  # an SDK's retry, a file imported again, a source synced again
        assert [r["message_id"] for r in again.rejected()["rejected"]] == ["no-name"]
        assert again.status()["events_rejected"] == 1
    finally:
        again.close()


def test_imports_check_the_whole_log_once_the_memory_has_forgotten(settings: Settings) -> None:
    small = dataclasses.replace(settings, dedup_max_ids=2)
    portrait = Portrait(small, background=False)
    try:
        assert send(portrait, "m1", "m2") == (2, 0)
        assert send(portrait, "m3", "m4") == (2, 0)  # m1, m2 forgotten: the memory holds at most 2 ids
        assert import_rows(portrait, "m1", "m2", "m3", "m5", "m5") == (1, 4)  # found in the log itself
        # Live traffic is checked against memory only: past the limit an old id is taken as new (documented).
        assert send(portrait, "m1") == (1, 0)
        assert portrait.status()["events_received"] == 6
        assert portrait.process_pending() == 6
    finally:
        portrait.close()


def test_sequence_numbers_have_no_gaps_where_duplicates_were_left_out(portrait: Portrait) -> None:
    send(portrait, "a", "b")
    send(portrait, "b", "c", "a", "d")
    session = portrait.store.session()
    try:
        rows = session.execute(parse("SELECT seq, message_id FROM events ORDER BY seq"))
    finally:
        session.close()
    assert rows == [(1, "a"), (2, "b"), (3, "c"), (4, "d")]


def test_migration_10_keeps_the_log_and_drops_its_indexes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "old.duckdb")
    monkeypatch.setattr(schema, "MIGRATIONS", {v: s for v, s in schema.MIGRATIONS.items() if v < 10})
    old = DuckDBStore(path)
    session = old.session()
    now = datetime.now(UTC).replace(tzinfo=None)
    session.execute(parse(
        "INSERT INTO events (seq, message_id, type, timestamp, received_at, source) VALUES "
        "(1, 'm1', 'track', ?, ?, 'default'), (3, 'm3', 'track', ?, ?, 'default')"), [now] * 4)
    session.close()
    old.close()
    monkeypatch.undo()

    portrait = Portrait(Settings(db_path=path, write_key="wk", admin_key="ak"), background=False)
    try:
        assert send(portrait, "m1", "m4") == (1, 1)  # the old log's ids were read back
    finally:
        portrait.close()
    with duckdb.connect(path, read_only=True) as con:
        assert con.execute("SELECT seq, message_id FROM events ORDER BY seq").fetchall() == [
            (1, "m1"), (3, "m3"), (4, "m4")]
        assert con.execute("SELECT count(*) FROM duckdb_indexes() WHERE table_name = 'events'").fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'events' "
                           "AND constraint_type IN ('PRIMARY KEY', 'UNIQUE')").fetchone() == (0,)
