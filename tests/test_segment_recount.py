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


def in_a_thread(action: Callable[[], Any], blocked: list[bool], workers: list[threading.Thread],
                wait: float = 5.0) -> Callable[[], None]:
    """``action`` in a thread of its own (kept in ``workers``), waited for up to ``wait`` s; ``blocked`` says
    whether it was still waiting (for the pause the recount held) then."""

    def run() -> None:
        workers.append(threading.Thread(target=action))
        workers[-1].start()
        workers[-1].join(wait)
        blocked.append(workers[-1].is_alive())

    return run


def members(portrait: Portrait, segment: str) -> set[str | None]:
    """The members' user ids (None for a member known by an anonymous id alone)."""
    return {m["user_id"] for m in portrait.segments.members(segment, limit=1000)["members"]}


def test_processing_merges_and_erasures_go_on_while_a_segment_is_counted(portrait: Portrait) -> None:
    """While the recount evaluates, a batch changes members' plans, merges a member into a profile that was not one,
    and an erasure takes a member away: none waits for the recount. The recount writes nothing for the profiles
    processed meanwhile -- its evaluation of them may be from before the change -- and the real-time refresh then
    moves them: so u6, whose plan went to "pro" before the recount and back to "free" during it, never enters (a
    write of the evaluation would have put u6 in, and the refresh out again: two Audience events for nothing)."""
    pause = pause_like_a_server(portrait)
    portrait.ingest_messages([{"type": "identify", "userId": u, "traits": {"plan": "pro"}} for u in ("u1", "u2", "u3")]
                             + [{"type": "identify", "userId": u, "traits": {"plan": "free"}} for u in ("u4", "u6")]
                             + [{"type": "identify", "userId": "u5", "traits": {"age": 40}},
                                {"type": "identify", "anonymousId": "a5", "traits": {"plan": "pro"}}])
    portrait.process_pending()
    portrait.create_segment({"name": "pros", "condition": 'plan = "pro"'})
    assert members(portrait, "pros") == {"u1", "u2", "u3", None}  # None: a5
    portrait.ingest_messages([{"type": "identify", "userId": "u6", "traits": {"plan": "pro"}}])
    portrait.processor.drain()  # processed, not yet refreshed
    erased = portrait.resolve_profile_id("user_id:u3")

    def batch_merge_and_erasure() -> None:
        with pause:
            portrait.ingest_messages([{"type": "identify", "userId": "u1", "traits": {"plan": "free"}},
                                      {"type": "identify", "userId": "u4", "traits": {"plan": "pro"}},
                                      {"type": "identify", "userId": "u6", "traits": {"plan": "free"}},
                                      {"type": "identify", "userId": "u5", "anonymousId": "a5"}])
            portrait.processor.drain()
            portrait.privacy_request({"type": "erase", "identity": "user_id:u3"}, "test", run_now=True)

    blocked: list[bool] = []
    workers: list[threading.Thread] = []
    with after_the_evaluation(in_a_thread(batch_merge_and_erasure, blocked, workers)):
        written = portrait.segments.recount("pros")
    workers[0].join(30)
    assert blocked == [False], "the batch and the erasure waited for the recount"
    assert written == []  # every change is the refresh's: u1, u4, u6, a5 and u5 were processed meanwhile
    assert members(portrait, "pros") == {"u1", "u2", None}  # as before, less the erased person
    refreshed = portrait.segments.refresh_touched()
    assert members(portrait, "pros") == {"u2", "u4", "u5"}
    u6 = portrait.resolve_profile_id("user_id:u6")
    assert u6 not in {c.profile_id for c in refreshed}
    history = {h["profile_id"] for h in portrait.segments.history("pros")["history"]}
    assert u6 not in history and erased not in history
    assert portrait.segments.recount("pros") == []  # the members a recount finds


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


def test_a_refresh_under_way_that_writes_the_segment_meanwhile_is_not_undone(portrait: Portrait) -> None:
    """A recount of "pro adults" starts while the real-time refresh is under way, and that refresh writes u9 into
    "adults" and "pro adults" while the recount evaluates: the recount does not wait for the refresh, and writes
    nothing over it (u9's entry stands, once; the refresh is done with u9, so nothing would put it back)."""
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


def test_calculated_values_are_not_written_while_a_recount_evaluates(portrait: Portrait) -> None:
    """u7's plan and second order are processed, not yet refreshed: the recount reads the new plan with the old
    order count (1) and finds u7 entering. Had the real-time refresh computed the count (2) and evaluated u7 (no
    change from the stored "not a member") while the recount evaluated, the recount would then have written u7 in,
    with nothing left to take it out until the next full recount. The refresh waits for the recount instead, and
    takes u7 out again after it."""
    pause_like_a_server(portrait)
    portrait.ingest_messages([{"type": "identify", "userId": "u7", "traits": {"plan": "free"}},
                              {"type": "track", "userId": "u7", "event": "Order Completed"}])
    portrait.process_pending()
    portrait.create_attribute({"code": "orders", "name": "Orders", "definition": 'count("Order Completed")'})
    portrait.create_segment({"name": "new pros", "condition": 'plan = "pro" and orders < 2'})
    portrait.ingest_messages([{"type": "identify", "userId": "u7", "traits": {"plan": "pro"}},
                              {"type": "track", "userId": "u7", "event": "Order Completed"}])
    portrait.processor.drain()
    workers: list[threading.Thread] = []
    with after_the_evaluation(in_a_thread(portrait.segments.refresh_touched, [], workers, 2.0)):
        portrait.segments.recount("new pros")
    workers[0].join(30)
    assert portrait.profile("user_id:u7")["traits"]["orders"] == 2
    assert members(portrait, "new pros") == set()
    assert portrait.segments.refresh_touched() == [] and portrait.segments.recount("new pros") == []
