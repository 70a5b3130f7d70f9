"""The group-commit writer on a real database: flush waits for everything submitted before it."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from portrait.model import Rejection
from portrait.spec import EventColumns
from portrait.sql import parse
from portrait.store.duckdb import DuckDBStore
from portrait.writer import EventWriter, RecentRejections

COUNT = parse("SELECT count(*) FROM events")


def one_event(message_id: str) -> EventColumns:
    now = datetime(2026, 11, 23, 12, 0)
    return EventColumns(
        message_id=[message_id], type=["track"], event=["Viewed"], user_id=["u1"], anonymous_id=[None],
        previous_id=[None], group_id=[None], timestamp=[now], original_timestamp=[now], sent_at=[None],
        received_at=[now], properties=["{}"], traits=["{}"], context=["{}"], source=["default"], ip=[None],
        identity_hints=[None], extra=[None])


def test_flush_returns_once_everything_submitted_before_is_committed(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    store = DuckDBStore(str(tmp_path / "w.duckdb"))
    writer = EventWriter(store, max_events=1)  # one request per commit: the flush is a commit of its own
    append = writer._append

    def slow_append(*args: Any) -> Any:
        time.sleep(0.2)
        return append(*args)

    monkeypatch.setattr(writer, "_append", slow_append)
    submitted = [writer.submit(one_event(f"m{i}")) for i in range(3)]
    writer.flush()
    assert all(done.done() for done in submitted)
    assert store.session().execute(COUNT) == [(3,)]
    writer.close()


def test_a_request_is_counted_out_of_the_queue_before_it_is_answered(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """/api/status's ingest_queue_events was counted down after the answers were given: a sender that had its 200
    and read the status at once could still see its events queued (a CI run saw 1)."""
    store = DuckDBStore(str(tmp_path / "w.duckdb"))
    writer = EventWriter(store, max_events=100)
    append, attached = writer._append, threading.Event()

    def append_once_watched(*args: Any) -> Any:
        attached.wait(10)  # the answer's watcher is in place before the answer can be given
        return append(*args)

    monkeypatch.setattr(writer, "_append", append_once_watched)
    seen_when_answered: list[int] = []
    answered = writer.submit(one_event("m1"))
    answered.add_done_callback(lambda _: seen_when_answered.append(writer.queued_events))
    attached.set()
    answered.result(timeout=10)
    writer.flush()
    assert seen_when_answered == [0]
    writer.close()


def test_recent_rejections_remember_digests_not_ids() -> None:
    """A rejected messageId may be any length (too long is a reason to reject): memory stays 16 bytes a rejection."""
    recent = RecentRejections(capacity=3)
    rejected = [Rejection(code="invalid_field", reason="too long", payload="{}", received_at=datetime(2026, 1, 1),
                          source="web", message_id="m" * 31_000 + str(i)) for i in range(5)]
    assert recent.new_ones([*rejected[:2], rejected[0]]) == rejected[:2]  # a repeat within one group, too
    recent.add(rejected)
    assert recent.new_ones(rejected[2:]) == [] and recent.new_ones(rejected[:2]) == rejected[:2]  # capacity 3
    assert {len(key) for key in recent._seen} == {16}
