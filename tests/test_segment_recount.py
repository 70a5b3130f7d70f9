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


# -- a large write, in chunks ------------------------------------------------------------------------------------
# A recount that moves many memberships (a segment 500,000 customers enter at its creation) wrote them in one paused
# transaction: ~25 s without processing at 1M profiles (docs/performance.md). It writes them a chunk of profiles at
# a time now; these tests make the chunks two profiles long.

PROS = [f"c{n}" for n in range(7)]


def seven_pros(portrait: Portrait) -> None:
    portrait.ingest_messages([{"type": "identify", "userId": u, "traits": {"plan": "pro"}} for u in PROS])
    portrait.process_pending()
    portrait.segments.write_chunk = 2


@contextlib.contextmanager
def between_chunks(portrait: Portrait, action: Callable[[], None]) -> Iterator[list[int]]:
    """Run ``action`` once, after the first paused write of memberships is committed and the pause let go (as the
    processor, an erasure or a change from the API would run then); yields the count of the writes."""
    pause = threading.RLock()
    writes: list[int] = []
    apply = segments_module._apply

    def counted(*args: Any) -> list[segments_module.Change]:
        writes.append(1)
        return apply(*args)

    @contextlib.contextmanager
    def paused() -> Iterator[None]:
        with pause:
            wrote = len(writes)
            yield
        if wrote == 0 and len(writes) == 1:  # this hold wrote the first chunk
            action()

    portrait.segments._exclusive = paused
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(segments_module, "_apply", counted)
        yield writes


def entries(portrait: Portrait, segment: str) -> dict[str, int]:
    """Profile id -> how many entries to the segment its history, its outbox and its timeline hold (each should be
    one for a member; the outbox's are written to the log by create_segment, then cleared)."""
    rows = portrait.segments._session().execute(parse(
        "SELECT profile_id, count(*) FROM (SELECT h.profile_id FROM segment_history AS h JOIN segments AS s "
        "ON s.id = h.segment_id WHERE s.name = ? AND h.change = 'entered' UNION ALL SELECT o.profile_id "
        "FROM audience_outbox AS o WHERE o.segment = ? AND o.change = 'entered' UNION ALL SELECT ep.profile_id "
        "FROM event_profiles AS ep JOIN events AS e ON e.seq = ep.seq WHERE e.event = 'Audience Entered' "
        "AND json_extract_string(e.properties, '$.segment') = ?) GROUP BY profile_id"), [segment] * 3)
    return {str(row[0]): int(row[1]) for row in rows}


def test_a_large_write_lets_processing_run_between_chunks_and_checks_again_before_each(portrait: Portrait) -> None:
    """Seven customers enter "pros" at its creation, two per paused transaction. After the first chunk, processing
    runs: one customer not yet written goes to the free plan, another is erased. The later chunks leave the first
    to the refresh (its evaluation predates the change) and give the erased one no membership; the creation's
    answer counts the members stored, and each member has one entry: in the history and on its timeline."""
    seven_pros(portrait)
    changed: list[str] = []

    def batch_and_erasure() -> None:
        written = {m["user_id"] for m in portrait.segments.members("pros")["members"]}
        later = sorted(set(PROS) - written)
        assert len(later) >= 2, f"the first write stored {len(written)} of the {len(PROS)} members"
        changed.extend(later[:2])
        portrait.ingest_messages([{"type": "identify", "userId": changed[0], "traits": {"plan": "free"}}])
        portrait.processor.drain()  # processed; the refresh comes after the recount
        portrait.privacy_request({"type": "erase", "identity": f"user_id:{changed[1]}"}, "test", run_now=True)

    with between_chunks(portrait, batch_and_erasure) as writes:
        created = portrait.create_segment({"name": "pros", "condition": 'plan = "pro"'})
    assert len(writes) == 4, "seven profiles, two per chunk"
    assert changed, "nothing ran between the chunks"
    stayed = set(PROS) - set(changed)
    assert members(portrait, "pros") == stayed
    assert created["size"] == len(stayed) == portrait.segments.sizes("pros")["sizes"][-1]["size"]
    assert portrait.segments.refresh_touched() == []  # the free one: not a member, and none now
    portrait.process_pending()  # the Audience events, onto their timelines
    ids = {portrait.resolve_profile_id(f"user_id:{u}") for u in stayed}
    assert entries(portrait, "pros") == {profile_id: 2 for profile_id in ids}  # history + timeline, once each


def test_a_write_that_fails_after_its_first_chunk_is_completed_by_the_next_recount(portrait: Portrait) -> None:
    """The write fails (a crash, a full disk) after its first chunk: that chunk is stored with its history and its
    Audience events, and nothing else is. The next recount writes the rest, with one entry per profile in all, and
    records the size."""
    seven_pros(portrait)
    portrait.create_segment({"name": "pros", "condition": 'plan = "free"'})  # no member
    apply = segments_module._apply
    calls: list[int] = []

    def fails_the_second_time(*args: Any) -> list[segments_module.Change]:
        calls.append(1)
        if len(calls) == 2:
            raise OSError("the disk is full")
        return apply(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(segments_module, "_apply", fails_the_second_time)
        with pytest.raises(OSError):
            portrait.segments.update("pros", {"condition": 'plan = "pro"'})
    assert len(members(portrait, "pros")) == 2
    first = {portrait.resolve_profile_id(f"user_id:{u}") for u in members(portrait, "pros")}
    assert entries(portrait, "pros") == {profile_id: 2 for profile_id in first}  # the history, the outbox
    assert [s["size"] for s in portrait.segments.sizes("pros")["sizes"]] == [0]  # the creation's only
    assert len(portrait.segments.recount("pros")) == 5
    assert members(portrait, "pros") == set(PROS)
    portrait.process_pending()  # writes the Audience events to the log... (the outbox keeps them till sent)
    portrait._send_audience_events()
    portrait.process_pending()
    ids = {portrait.resolve_profile_id(f"user_id:{u}") for u in PROS}
    assert entries(portrait, "pros") == {profile_id: 2 for profile_id in ids}  # the history, the timeline
    assert [s["size"] for s in portrait.segments.sizes("pros")["sizes"]] == [0, 7]


def test_a_member_merged_into_an_entering_profile_is_written_in_its_chunk(portrait: Portrait) -> None:
    """An anonymous member of "pros" is merged into a customer the condition now selects: the customer takes the
    membership over (one entry for the person) -- which needs both in one write, whatever the chunks."""
    portrait.ingest_messages([{"type": "identify", "userId": f"x{n}", "traits": {"plan": "free"}} for n in range(6)])
    portrait.process_pending()
    portrait.ingest_messages([{"type": "identify", "anonymousId": "a1", "traits": {"plan": "pro"}}])
    portrait.process_pending()
    portrait.create_segment({"name": "pros", "condition": 'plan = "pro" or plan = "team"'})
    portrait.segments.write_chunk = 1
    portrait.ingest_messages([{"type": "identify", "userId": "x3", "anonymousId": "a1", "traits": {"plan": "team"}}])
    portrait.processor.drain()  # merged and processed; the recount below moves the membership
    changes = portrait.segments.recount("pros")
    survivor = portrait.resolve_profile_id("user_id:x3")
    assert {c.change for c in changes} == {"entered", "exited"} and members(portrait, "pros") == {"x3"}
    assert survivor in {c.profile_id for c in changes}
    # Taken over: no Audience Entered for the survivor (the Exited of a1 is dropped when sent: merged into a member).
    assert [row[3] for row in portrait.segments.outbox(100)] == ["exited"]


def test_a_segment_changed_between_chunks_is_not_written_further_with_its_old_condition(portrait: Portrait) -> None:
    """"pros" changes from the API after the first chunk of its recount: the later chunks are not written with the
    old condition; the change's own recount (which waits for this one) moves the members to the new one."""
    seven_pros(portrait)
    portrait.create_segment({"name": "pros", "condition": 'plan = "team"'})  # no member
    worker = threading.Thread(target=lambda: portrait.segments.update("pros", {"condition": 'plan = "free"'}))

    def change_meanwhile() -> None:
        worker.start()
        deadline = time.monotonic() + 5
        while "free" not in str(portrait.segments._session().execute(parse("SELECT condition FROM segments"))):
            assert time.monotonic() < deadline, "the change waited for the recount"
            time.sleep(0.02)

    with between_chunks(portrait, change_meanwhile):
        _, written = portrait.segments.update("pros", {"condition": 'plan = "pro"'})
    worker.join(30)
    assert [c.change for c in written] == ["entered", "entered"]  # the first chunk alone
    assert members(portrait, "pros") == set()
    history = portrait.segments.history("pros")["history"]
    assert sorted(h["change"] for h in history) == ["entered", "entered", "exited", "exited"]


def test_a_customer_processed_between_chunks_is_left_to_the_refresh_in_every_later_chunk(
        portrait: Portrait) -> None:
    """After the first of four chunks, processing moves the customer of the last chunk to the free plan. The second
    chunk's checks find it (it is not in that chunk); the third finds nothing processed since; the last still leaves
    it to the refresh: no entry, in the members or the history, for a customer the condition no longer selects."""
    seven_pros(portrait)
    ids = {portrait.resolve_profile_id(f"user_id:{u}"): u for u in PROS}
    last = ids[max(ids)]  # chunks follow the profile ids: the last one is alone in the fourth

    def free_plan() -> None:
        portrait.ingest_messages([{"type": "identify", "userId": last, "traits": {"plan": "free"}}])
        portrait.processor.drain()  # processed; the refresh comes after the recount

    with between_chunks(portrait, free_plan) as writes:
        created = portrait.create_segment({"name": "pros", "condition": 'plan = "pro"'})
    assert len(writes) == 4, "seven profiles, two per chunk"
    assert members(portrait, "pros") == set(PROS) - {last}
    assert created["size"] == len(PROS) - 1
    assert entries(portrait, "pros").keys() == set(ids) - {portrait.resolve_profile_id(f"user_id:{last}")}
    assert portrait.segments.refresh_touched() == []  # not a member, and none now
