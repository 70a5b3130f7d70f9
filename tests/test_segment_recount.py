"""A recount (a segment created, changed or recounted from the API, and the periodic full pass) held the processing
pause for the whole of each segment's evaluation (~1 s per segment at 1M profiles: docs/performance.md). It now
evaluates with nothing paused and pauses only to write; these tests change profiles between its evaluation and its
write, and check that what it writes is what a recount run at the moment of writing would write."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlglot import exp

import portrait.segments as segments_module
from portrait.service import Portrait
from portrait.sql import parse
from portrait.store.duckdb import DuckDBSession


def pause_like_a_server(portrait: Portrait) -> threading.RLock:
    """The segments take this lock as a server's processor thread's pause; the test's "processor" takes it too."""
    pause = threading.RLock()

    @contextlib.contextmanager
    def paused() -> Iterator[None]:
        with pause:
            yield

    portrait.segments._exclusive = paused
    return pause


@contextlib.contextmanager
def after_the_evaluation(action: Callable[[], None]) -> Iterator[None]:
    """Run ``action`` once, right after a recount computed every profile's membership (its INSERT INTO seg_new
    over all profiles) and before it writes anything."""
    execute = DuckDBSession.execute
    done: list[bool] = []

    def hooked(self: DuckDBSession, statement: exp.Expr, params: Any = ()) -> list[tuple[Any, ...]]:
        rows = execute(self, statement, params)
        if not done and _evaluates_everyone(statement):
            done.append(True)
            action()
        return rows

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DuckDBSession, "execute", hooked)
        yield
    assert done, "the recount never evaluated"


def _evaluates_everyone(statement: exp.Expr) -> bool:
    if not isinstance(statement, exp.Insert):
        return False
    text = statement.sql()
    return text.startswith("INSERT INTO seg_new") and "seg_found" not in text and "seg_live" not in text


def in_a_thread(action: Callable[[], None], blocked: list[bool], workers: list[threading.Thread]
                ) -> Callable[[], None]:
    """``action`` in a thread of its own (kept in ``workers``), waited for up to 5 s; ``blocked`` says whether it
    was still waiting (for the pause the recount held) then."""

    def run() -> None:
        workers.append(threading.Thread(target=action))
        workers[-1].start()
        workers[-1].join(5)
        blocked.append(workers[-1].is_alive())

    return run


def members(portrait: Portrait, segment: str) -> set[str | None]:
    """The members' user ids (None for a member known by an anonymous id alone)."""
    return {m["user_id"] for m in portrait.segments.members(segment, limit=1000)["members"]}


def test_processing_merges_and_erasures_go_on_while_a_segment_is_counted(portrait: Portrait) -> None:
    """While the recount evaluates, a batch changes one member's plan and another's, merges a member into a
    profile that was not one, and an erasure takes a member away: none waits for the recount, and the recount
    writes what holds after them -- so the next real-time refresh finds nothing left to change (a write of the
    evaluation as it was would have let u1 stay, kept u4 out, taken the person merged into u5 out and given the
    refresh a second Audience event to send for each)."""
    pause = pause_like_a_server(portrait)
    portrait.ingest_messages([{"type": "identify", "userId": u, "traits": {"plan": "pro"}} for u in ("u1", "u2", "u3")]
                             + [{"type": "identify", "userId": "u4", "traits": {"plan": "free"}},
                                {"type": "identify", "userId": "u5", "traits": {"age": 40}},
                                {"type": "identify", "anonymousId": "a5", "traits": {"plan": "pro"}}])
    portrait.process_pending()
    portrait.create_segment({"name": "pros", "condition": 'plan = "pro"'})
    assert members(portrait, "pros") == {"u1", "u2", "u3", None}  # None: a5
    erased = portrait.resolve_profile_id("user_id:u3")

    def batch_merge_and_erasure() -> None:
        with pause:
            portrait.ingest_messages([{"type": "identify", "userId": "u1", "traits": {"plan": "free"}},
                                      {"type": "identify", "userId": "u4", "traits": {"plan": "pro"}},
                                      {"type": "identify", "userId": "u5", "anonymousId": "a5"}])
            portrait.processor.drain()
            portrait.privacy_request({"type": "erase", "identity": "user_id:u3"}, "test", run_now=True)

    blocked: list[bool] = []
    workers: list[threading.Thread] = []
    with after_the_evaluation(in_a_thread(batch_merge_and_erasure, blocked, workers)):
        changes = portrait.segments.recount("pros")
    workers[0].join(30)
    assert blocked == [False], "the batch and the erasure waited for the recount"
    assert members(portrait, "pros") == {"u2", "u4", "u5"}
    assert {(c.change, c.profile_id) for c in changes} >= {
        ("exited", portrait.resolve_profile_id("user_id:u1")), ("entered", portrait.resolve_profile_id("user_id:u4"))}
    assert erased not in {c.profile_id for c in changes}
    assert erased not in {h["profile_id"] for h in portrait.segments.history("pros")["history"]}
    assert portrait.segments.refresh_touched() == []  # the recount wrote what holds now: nothing left to correct
    assert portrait.segments.recount("pros") == []


def test_a_segment_changed_while_it_is_counted_is_not_written_with_its_old_condition(portrait: Portrait) -> None:
    """The change commits while the recount evaluates the old condition (nothing is paused then); the recount then
    writes nothing -- neither members nor Audience events of a condition no longer the segment's -- and the
    change's own recount, which waits for it, writes the new one."""
    pause_like_a_server(portrait)
    portrait.ingest_messages([{"type": "identify", "userId": "u1", "traits": {"plan": "pro"}},
                              {"type": "identify", "userId": "u2", "traits": {"plan": "team"}}])
    portrait.process_pending()
    portrait.create_segment({"name": "paying", "condition": 'plan = "pro"'})
    changed = threading.Event()
    worker = threading.Thread(target=lambda: portrait.segments.update("paying", {"condition": 'plan = "team"'}))

    def change_meanwhile() -> None:
        worker.start()
        deadline = time.monotonic() + 5
        while not changed.is_set() and time.monotonic() < deadline:
            rows = portrait.segments._session().execute(parse("SELECT condition FROM segments"))
            if "team" in str(rows[0][0]):
                changed.set()
            time.sleep(0.02)

    with after_the_evaluation(change_meanwhile):
        written = portrait.segments.recount("paying")
    worker.join(30)
    assert changed.is_set(), "the change waited for the recount"
    assert written == []
    assert members(portrait, "paying") == {"u2"}
    history = portrait.segments.history("paying")["history"]
    u1 = portrait.resolve_profile_id("user_id:u1")
    assert [h["change"] for h in history if h["profile_id"] == u1] == ["exited", "entered"]  # newest first


def test_a_referenced_segments_members_written_by_the_refresh_meanwhile_count(portrait: Portrait) -> None:
    """The real-time refresh that was already running writes u9 into "adults" (and so into "pro adults") while a
    recount of "pro adults" evaluates with u9 outside "adults"; the recount must not then take u9 out again: the
    refresh is done with u9, and nothing else would put it back until the next full recount."""
    pause_like_a_server(portrait)
    portrait.ingest_messages([{"type": "identify", "userId": "u9", "traits": {"plan": "pro", "age": 20}}])
    portrait.process_pending()
    portrait.create_segment({"name": "adults", "condition": "age >= 30"})
    portrait.create_segment({"name": "pro adults", "condition": 'in_segment("adults") and plan = "pro"'})
    portrait.ingest_messages([{"type": "identify", "userId": "u9", "traits": {"age": 35}}])
    portrait.processor.drain()  # processed; the refresh below is the one that moves u9
    evaluated, refreshed = threading.Event(), threading.Event()
    recounted: list[list[Any]] = []

    def wait_for_the_refresh() -> None:
        evaluated.set()
        refreshed.wait(10)

    def recount() -> None:
        with after_the_evaluation(wait_for_the_refresh):
            recounted.append(portrait.segments.recount("pro adults"))

    worker = threading.Thread(target=recount)
    evaluate = segments_module.Segments._evaluate

    def recount_starts_meanwhile(self: Any, session: Any, segment: Any, *args: Any) -> list[str]:
        if segment.name == "adults" and not worker.is_alive() and not evaluated.is_set():
            worker.start()
            evaluated.wait(10)
        return evaluate(self, session, segment, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(segments_module.Segments, "_evaluate", recount_starts_meanwhile)
        refresh = portrait.segments.refresh_touched()
    refreshed.set()
    worker.join(30)
    assert evaluated.is_set() and recounted, "the recount did not run alongside the refresh"
    assert {(c.segment, c.change) for c in refresh} == {("adults", "entered"), ("pro adults", "entered")}
    assert recounted == [[]]
    assert members(portrait, "pro adults") == {"u9"}
