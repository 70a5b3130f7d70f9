"""What lives as long as the server does stays bounded: the structures the soak (benchmarks/soak.py) watched grow
with time or with the number of clients, each held to its bound here in seconds."""

from __future__ import annotations

import threading
from datetime import timedelta
from types import SimpleNamespace

import pytest

from portrait.service import Portrait
from portrait.spec import utc_now
from portrait.web import sessions
from portrait.web.activity import CHARTED_SIZES, recent_sizes
from portrait.web.sessions import LIFETIME, SessionStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(sessions, "time", SimpleNamespace(time=fake.time))
    return fake


def test_expired_console_sessions_are_forgotten_without_being_used_again(clock: Clock) -> None:
    """A browser that signs in and never comes back (closed, cookie cleared, a script signing in each run) left its
    session in memory for good: only a request with that very cookie removed an expired one."""
    store = SessionStore()
    abandoned = [store.open("key-1", "secret") for _ in range(100)]
    clock.now += LIFETIME + 1
    kept = store.open("key-1", "secret")
    assert len(store._sessions) == 1  # the structure itself: the 100 expired sessions are gone
    assert store.get(kept) is not None
    assert all(store.get(token) is None for token in abandoned)


def test_console_sessions_are_capped_and_the_oldest_signed_out_first(clock: Clock) -> None:
    store = SessionStore()
    first = store.open("key-1", "secret")
    clock.now += 1
    for _ in range(SessionStore.MAX_SESSIONS + 50):
        store.open("key-1", "secret")
    newest = store.open("key-1", "secret")
    assert len(store._sessions) == SessionStore.MAX_SESSIONS
    assert store.get(first) is None
    assert store.get(newest) is not None


def test_a_thread_that_ends_leaves_no_database_session_behind(portrait: Portrait) -> None:
    """Each thread reading the database gets a cursor of its own. The HTTP server's worker threads come and go
    (anyio lets an idle one exit after 10 s; a burst of requests starts new ones): every cursor was kept, open,
    in a list until the server stopped, so it grew with every burst for as long as the server ran."""
    portrait.status()  # this thread's own session, kept while it lives
    for _ in range(3):
        burst = [threading.Thread(target=portrait.status) for _ in range(10)]
        for thread in burst:
            thread.start()
        for thread in burst:
            thread.join()
    assert len(portrait._sessions) == 1
    assert portrait.status()["events_received"] == 0  # the live thread's session still works


def test_the_console_reads_only_the_sizes_it_draws(portrait: Portrait) -> None:
    """A size is recorded at every full recount (every 5 minutes: ~105,000 a year per segment); the segment pages
    read them all to draw the last 20 or 30, so they grew slower the longer the server ran."""
    created = portrait.create_segment({"name": "everyone", "condition": 'performed("Viewed")'})
    start = utc_now()
    for minute in range(40):
        portrait.segments.recount(created["id"], now=start + timedelta(minutes=5 * minute))
    every = portrait.segments.sizes(created["id"])["sizes"]
    newest = portrait.segments.latest_sizes(created["id"], CHARTED_SIZES)
    assert len(every) > 40
    assert newest == every[-CHARTED_SIZES:]  # the newest, oldest first, as the chart draws them


def test_the_segment_list_survives_a_segment_deleted_while_it_is_drawn(portrait: Portrait) -> None:
    """The soak deletes segments while the console lists them: one deleted between the list and its sizes made the
    whole page a 404."""
    kept = portrait.create_segment({"name": "kept", "condition": 'performed("Viewed")'})
    gone = portrait.create_segment({"name": "gone", "condition": 'performed("Viewed")'})
    portrait.segments.delete(gone["id"])
    found = recent_sizes(portrait, [kept["id"], gone["id"]])
    assert found[gone["id"]] == []
    assert len(found[kept["id"]]) == 1  # counted once when created
