"""Races with a recount, written independently of tests/test_segment_recount.py (by a second audit of the same
change) and kept as a cross-check. A recount (a segment created, changed or recounted from the API, and every
segment in the periodic full recount) evaluates every profile with nothing paused and pauses processing only to
write the differences (it held the pause ~1 s per segment at 1M profiles: docs/performance.md). What happens
between its evaluation and its write must not leave a membership wrong: each test here makes it happen there,
every time -- from a thread started between the recount's last unpaused step and its write, holding the
processor's pause as an erasure or a batch does."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from portrait.errors import NotFound
from portrait.service import Portrait
from portrait.sql import parse
from portrait.sql import segments as segments_q

PAUSE_WAIT = 5.0  # seconds a change made meanwhile may take; it is done at once unless the recount holds the pause


class _Spy:
    """A session that calls ``after_evaluation`` once the recount's evaluation is done (its candidates, those
    entering): what follows is its writes."""

    def __init__(self, session: Any, after_evaluation: Callable[[], None]) -> None:
        self._session = session
        self._after_evaluation = after_evaluation

    def execute(self, statement: Any, params: Any = ()) -> Any:
        rows = self._session.execute(statement, params)
        if statement is segments_q.ENTERING:
            self._after_evaluation()
        return rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


@contextlib.contextmanager
def between_evaluation_and_write(portrait: Portrait, meanwhile: Callable[[], None], *, paused: bool = True,
                                 wait: float = PAUSE_WAIT, done: threading.Event | None = None
                                 ) -> Iterator[list[bool]]:
    """While in the block, the first recount runs ``meanwhile`` in a thread of its own (holding the processor's
    pause, as a batch or an erasure does, when ``paused``) after it evaluated and before it writes, and waits up to
    ``wait`` seconds for it to end (or to set ``done``); yields [whether it was still waiting then]. Joined at the end
    of the block."""
    pause = threading.RLock()  # what ProcessorThread.paused holds in a server

    @contextlib.contextmanager
    def exclusive() -> Iterator[None]:
        with pause:
            yield

    def run() -> None:
        with pause if paused else contextlib.nullcontext():
            meanwhile()

    worker = threading.Thread(target=run)
    blocked: list[bool] = []

    def after_evaluation() -> None:
        if not worker.is_alive() and not blocked:
            worker.start()
            if done is None:
                worker.join(timeout=wait)
                blocked.append(worker.is_alive())
            else:
                blocked.append(not done.wait(timeout=wait))

    session = portrait.segments._session
    portrait.segments._exclusive = exclusive
    portrait.segments._session = lambda: _Spy(session(), after_evaluation)  # type: ignore[method-assign]
    try:
        yield blocked
    finally:
        portrait.segments._session = session  # type: ignore[method-assign]
        if worker.ident is not None:  # started
            worker.join()


def identify(portrait: Portrait, **message: Any) -> None:
    portrait.ingest_messages([{"type": "identify", **message}])
    portrait.processor.drain()  # processed; the real-time refresh has not run


def history(portrait: Portrait, segment: str, profile_id: str) -> list[str]:
    return [h["change"] for h in reversed(portrait.segments.history(segment)["history"])
            if h["profile_id"] == profile_id]


def clear_outbox(portrait: Portrait) -> None:
    portrait.segments.sent([str(row[0]) for row in portrait.segments.outbox(1000)])


def test_an_erasure_between_evaluation_and_write_keeps_the_people_out(portrait: Portrait) -> None:
    """The condition changes from plan pro to team: eve (pro) leaves, ann (team) enters -- as evaluated before they
    are erased. The write, after the erasure, must store neither a membership nor history nor an Audience event of
    theirs, and the erasure does not wait for the recount."""
    for user, plan in (("eve", "pro"), ("bo", "pro"), ("ann", "team")):
        identify(portrait, userId=user, traits={"plan": plan})
    portrait.segments.create({"name": "pros", "condition": 'plan = "pro"'})
    clear_outbox(portrait)
    bo = portrait.resolve_profile_id("user_id:bo")

    def erase() -> None:
        for user in ("eve", "ann"):
            portrait.privacy_request({"type": "erase", "identity": f"user_id:{user}"}, "test", run_now=True)

    with between_evaluation_and_write(portrait, erase) as blocked:
        _, changes = portrait.segments.update("pros", {"condition": 'plan = "team"'})
    assert blocked == [False], "the erasure waited for the whole recount"
    assert [r["status"] for r in portrait.privacy.all()] == ["done", "done"]
    assert [(c.change, c.profile_id) for c in changes] == [("exited", bo)]
    assert portrait.segments.members("pros")["members"] == []
    assert {h["profile_id"] for h in portrait.segments.history("pros")["history"]} == {bo}
    assert [row[4] for row in portrait.segments.outbox(100)] == [bo]


def test_traits_changed_between_evaluation_and_write_are_left_to_the_refresh(portrait: Portrait) -> None:
    """The condition becomes plan = "team" while cy (pro, a member) becomes team and dan (team) becomes pro. The
    recount evaluated them before: writing that would take cy out and put dan in, and the next refresh undo both (an
    Audience Exited and an Entered for a person who qualified all along, and the other way round for one who never
    did). Changed after the evaluation began, they are left as stored and the refresh, which reads the log from
    before the change, evaluates them."""
    for user, plan in (("cy", "pro"), ("di", "team"), ("dan", "team")):
        identify(portrait, userId=user, traits={"plan": plan})
    portrait.segments.create({"name": "pros", "condition": 'plan = "pro"'})
    clear_outbox(portrait)
    cy, di, dan = (portrait.resolve_profile_id(f"user_id:{user}") for user in ("cy", "di", "dan"))

    def change_both() -> None:
        portrait.ingest_messages([{"type": "identify", "userId": "cy", "traits": {"plan": "team"}},
                                  {"type": "identify", "userId": "dan", "traits": {"plan": "pro"}}])
        portrait.processor.drain()

    with between_evaluation_and_write(portrait, change_both) as blocked:
        _, changes = portrait.segments.update("pros", {"condition": 'plan = "team"'})
    assert blocked == [False], "the batch waited for the whole recount"
    assert sorted((c.change, c.profile_id) for c in changes) == [("entered", di)]
    assert portrait.segments.refresh_touched() == []  # cy qualifies now and dan does not: no change
    assert {m["user_id"] for m in portrait.segments.members("pros")["members"]} == {"cy", "di"}
    assert history(portrait, "pros", cy) == ["entered"] and history(portrait, "pros", dan) == []
    assert [row[4] for row in portrait.segments.outbox(100)] == [di]
    assert portrait.segments.recount_all() == []  # what a full recount finds


def test_a_merge_between_evaluation_and_write_keeps_the_membership_the_person_had(portrait: Portrait) -> None:
    """An anonymous visitor (plan pro, a member) signs in as ann while every segment is recounted. Written from
    the evaluation before the merge, the visitor's profile left the segment (an Audience Exited on ann's timeline) and
    the refresh then put ann in (an Audience Entered): the person never left. Left to the refresh, the survivor takes
    the membership over, since when it was, with no Audience event."""
    identify(portrait, userId="ann", traits={"name": "Ann"})  # the older profile: the one the visitor's joins
    identify(portrait, anonymousId="anon-1", traits={"plan": "pro"})
    portrait.segments.create({"name": "pros", "condition": 'plan = "pro"'})
    clear_outbox(portrait)
    [since] = [m["entered_at"] for m in portrait.segments.members("pros")["members"]]

    with between_evaluation_and_write(portrait, lambda: identify(portrait, userId="ann", anonymousId="anon-1")
                                      ) as blocked:
        assert portrait.segments.recount_all() == []
    assert blocked == [False], "the batch waited for the whole recount"
    portrait.segments.refresh_touched()
    survivor = portrait.resolve_profile_id("user_id:ann")
    assert [(m["profile_id"], m["entered_at"]) for m in portrait.segments.members("pros")["members"]] == [
        (survivor, since)]
    assert [row for row in portrait.segments.outbox_messages(100) if row[6] is not None] == []  # no event to write
    assert portrait.segments.recount_all() == []


def test_a_refresh_waits_for_a_recount_between_its_evaluation_and_its_write(portrait: Portrait) -> None:
    """Dee's first order was processed; the refresh computes her calculated order count, then evaluates her in. A
    recount that read her count before that must not write after it: it would take her out, and the refresh's
    watermark having moved past her order, nothing would put her back until the next full recount. The refresh
    waits for the recount (which pauses nothing while it evaluates)."""
    portrait.create_attribute({"code": "orders", "name": "orders", "definition": 'count("Order Completed")'})
    identify(portrait, userId="dee", traits={"plan": "pro"})
    portrait.segments.refresh_touched()
    portrait.segments.create({"name": "buyers", "condition": "orders >= 1"})
    portrait.ingest_messages([{"type": "track", "userId": "dee", "event": "Order Completed"}])
    portrait.processor.drain()

    with between_evaluation_and_write(portrait, portrait.segments.refresh_touched, paused=False, wait=0.5):
        portrait.segments.recount("buyers")
    assert portrait.profile("user_id:dee")["traits"]["orders"] == 1
    assert [m["user_id"] for m in portrait.segments.members("buyers")["members"]] == ["dee"]
    assert portrait.segments.recount_all() == []


@pytest.mark.parametrize("change", ["changed", "deleted"])
def test_a_segment_changed_or_deleted_meanwhile_is_not_written_as_it_was(portrait: Portrait, change: str) -> None:
    """A recount evaluated the old condition; the segment's condition changes (or it is deleted) before the write.
    The old members must not be written: the recount writes nothing (the change's own recount, which waits for it,
    writes the new condition's members), or finds the segment gone."""
    for user, plan in (("fay", "pro"), ("gus", "team")):
        identify(portrait, userId=user, traits={"plan": plan})
    created, _ = portrait.segments.create({"name": "pros", "condition": 'plan = "pro"'})
    fay, gus = portrait.resolve_profile_id("user_id:fay"), portrait.resolve_profile_id("user_id:gus")

    changed = threading.Event()
    recount = portrait.segments.recount

    def change_it() -> None:
        if change == "changed":  # the new condition is committed, then its own recount waits for this one
            def committed_then_recount(*args: Any, **kwargs: Any) -> list[Any]:
                changed.set()
                return recount(*args, **kwargs)

            portrait.segments.recount = committed_then_recount  # type: ignore[method-assign]
            portrait.segments.update("pros", {"condition": 'plan = "team"'})
        else:
            portrait.segments.delete("pros")
            changed.set()

    with between_evaluation_and_write(portrait, change_it, paused=False, done=changed) as blocked:
        if change == "changed":
            assert recount(created["id"]) == []  # the old condition's changes are not written
        else:
            with pytest.raises(NotFound):
                recount(created["id"])
    assert blocked == [False]
    session = portrait.store.session()
    try:
        stored = session.execute(parse("SELECT profile_id FROM segment_members WHERE segment_id = ?"),
                                 [created["id"]])
    finally:
        session.close()
    assert stored == ([(gus,)] if change == "changed" else [])
    if change == "changed":
        assert history(portrait, "pros", fay) == ["entered", "exited"]  # once each: no second round trip


def test_a_refresh_writing_the_same_change_meanwhile_is_not_written_twice(portrait: Portrait) -> None:
    """A refresh past its first step (the watermark read, calculated values computed) evaluates and writes each
    segment while a recount runs. Both evaluate the same data (the recount reads the processor's watermark after
    that refresh did), so both find that eli enters; the recount, whose differences were computed before the
    refresh's write, must not store her a second time (a second history row and Audience event, or a failed write)."""
    identify(portrait, userId="eli", traits={"plan": "team"})
    portrait.segments.create({"name": "pros", "condition": 'plan = "pro"'})
    identify(portrait, userId="eli", traits={"plan": "pro"})
    eli = portrait.resolve_profile_id("user_id:eli")
    first_step_done, go_on = threading.Event(), threading.Event()
    refresh_dynamic = portrait.segments._refresh_dynamic

    def after_the_first_step(*args: Any) -> Any:
        first_step_done.set()
        go_on.wait(10)
        return refresh_dynamic(*args)

    portrait.segments._refresh_dynamic = after_the_first_step  # type: ignore[method-assign]
    refresh = threading.Thread(target=portrait.segments.refresh_touched)
    refresh.start()
    assert first_step_done.wait(10)

    def let_the_refresh_write() -> None:
        go_on.set()
        refresh.join(10)

    with between_evaluation_and_write(portrait, let_the_refresh_write, paused=False) as blocked:
        assert portrait.segments.recount("pros") == []  # the refresh wrote eli's entry
    refresh.join()
    assert blocked == [False], "the refresh waited for the recount"
    assert history(portrait, "pros", eli) == ["entered"]
    assert [m["user_id"] for m in portrait.segments.members("pros")["members"]] == ["eli"]
