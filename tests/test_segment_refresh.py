"""The real-time refresh on a large batch: from ``Segments.sql_from`` touched profiles, dynamic segments are
evaluated by the SQL engine over the touched profiles instead of loading each of them, with its events, into Python
(20 segments over 100,000 touched profiles took 20 s, holding the segments' lock: docs/performance.md)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlglot import exp

import portrait.segments as segments_module
from portrait.conditions import Condition, to_text
from portrait.config import Settings
from portrait.service import Portrait
from portrait.spec import utc_now
from portrait.sql import calculated as calculated_q
from portrait.sql import parse
from portrait.sql import segments as segments_q
from portrait.sql.conditions import Compiled, compile_condition

CONDITIONS = {
    "adults": "age >= 30",
    "buyers": 'performed("Order Completed", count >= 2, within = 30d, where revenue >= 50)',
    "big spenders": 'sum("Order Completed", revenue) > 100 or country = "DE"',
    "lapsed": 'not performed("Order Completed", within = 20d)',
    "marketable": 'consent("email") = granted',
    "pro adults": 'in_segment("adults") and in_segment("vips")',
}
PEOPLE = 16
SRC = str(Path(segments_module.__file__).parents[1])  # the child process imports this checkout's portrait


def ago(days: float) -> str:
    return (utc_now() - timedelta(days=days)).isoformat() + "Z"


def traffic(first: int, last: int) -> list[dict[str, Any]]:
    """Varied people: ages, countries, orders of different sizes and ages, consent given or not."""
    messages: list[dict[str, Any]] = []
    for n in range(first, last):
        user = f"u{n}"
        messages.append({"type": "identify", "userId": user,
                         "traits": {"age": 18 + n * 3 % 40, "country": ["PL", "DE", "TR"][n % 3]}})
        for k in range(n % 4):
            messages.append({"type": "track", "userId": user, "event": "Order Completed",
                             "properties": {"revenue": 30 + 20 * k}, "timestamp": ago(2 + 9 * k)})
        if n % 2:
            messages.append({"type": "track", "userId": user, "event": "Newsletter",
                             "context": {"consent": {"email": "granted" if n % 3 else "denied"}}})
    return messages


def create_segments(portrait: Portrait) -> None:
    portrait.create_segment({"name": "vips", "identities": [f"user_id:u{n}" for n in range(0, PEOPLE, 5)]})
    for name, text in CONDITIONS.items():
        portrait.create_segment({"name": name, "condition": text})


def memberships(portrait: Portrait) -> dict[str, set[str]]:
    return {s["name"]: {m["user_id"] for m in portrait.segments.members(s["id"], limit=1000)["members"]}
            for s in portrait.segments.all()}


def entered(portrait: Portrait) -> list[tuple[str, str]]:
    found = []
    for n in range(PEOPLE):
        events = portrait.events(f"user_id:u{n}", event="Audience Entered", limit=100)["events"]
        found += [(f"u{n}", e["properties"]["segment"]) for e in events]
    return sorted(found)


def test_a_large_batch_is_evaluated_in_sql_with_the_memberships_python_gives(
        portrait: Portrait, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same traffic through the Python engine (a twin service) and the SQL one (nothing loaded into Python):
    the same members, the same Audience events, once each."""
    twin = Portrait(dataclasses.replace(settings, db_path=settings.db_path + ".twin"), background=False)
    try:
        for service in (portrait, twin):
            service.ingest_messages(traffic(0, 4))
            service.process_pending()
            create_segments(service)
        twin.ingest_messages(traffic(4, PEOPLE))
        twin.process_pending()

        def not_loaded(*args: Any) -> None:
            raise AssertionError("the touched profiles were loaded into Python")

        portrait.segments.sql_from = 10
        monkeypatch.setattr(segments_module.Segments, "_scope_profiles", not_loaded)
        portrait.ingest_messages(traffic(4, PEOPLE))  # 12 profiles touched: at least sql_from
        portrait.process_pending()
        assert memberships(portrait) == memberships(twin)
        assert all(memberships(portrait).values()) and memberships(portrait)["pro adults"]  # each has members
        assert entered(portrait) == entered(twin) and len(set(entered(portrait))) == len(entered(portrait))
        assert portrait.segments.recount_all() == []  # and what a full recount finds
    finally:
        twin.close()


def test_a_segment_whose_sql_fails_is_evaluated_in_python_and_the_others_are_kept(
        portrait: Portrait, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """In DuckDB a failing statement aborts the transaction: every segment written before it in it would be lost
    with it. The SQL engine's statement runs outside any transaction, so that segment is evaluated again in Python
    on the spot: every segment kept current, each change recorded once."""
    portrait.ingest_messages(traffic(0, 4))
    portrait.process_pending()
    create_segments(portrait)
    compile_sql = compile_condition

    def failing_for_adults(condition: Condition, *args: Any, **options: Any) -> Compiled:
        compiled = compile_sql(condition, *args, **options)
        if to_text(condition) == CONDITIONS["adults"]:  # fails when run, after others were written
            boom = exp.Anonymous(this="error", expressions=[exp.Literal.string("boom")])
            compiled.predicate = exp.and_(compiled.predicate, boom.is_(exp.null()))
        return compiled

    monkeypatch.setattr(segments_module, "compile_condition", failing_for_adults)
    portrait.segments.sql_from = 1
    portrait.ingest_messages(traffic(4, PEOPLE))
    with caplog.at_level(logging.WARNING, logger="portrait.segments"):
        portrait.process_pending()
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "'adults'" in warned[0] and "boom" in warned[0] and "Python engine" in warned[0]
    assert portrait.segments.failures == {}
    found = memberships(portrait)
    assert found["adults"] == {f"u{n}" for n in range(PEOPLE) if 18 + n * 3 % 40 >= 30}
    assert found["big spenders"] and found["lapsed"] and found["pro adults"]
    assert len(set(entered(portrait))) == len(entered(portrait))
    monkeypatch.undo()
    assert portrait.segments.recount_all() == []  # the members a full recount finds


def test_a_segment_referring_to_one_deleted_meanwhile_fails_alone(portrait: Portrait) -> None:
    """A segment can come to refer to one that no longer exists (created while the other was being deleted: each
    checked before the other was saved). With the Python engine, finding the events it looks at failed the whole
    refresh: no segment was kept current. Now it fails alone, saying why, and the others are refreshed."""
    portrait.ingest_messages(traffic(0, 4))
    portrait.process_pending()
    create_segments(portrait)
    portrait.create_segment({"name": "gone", "condition": "age >= 0"})
    portrait.create_segment({"name": "orphan", "condition": 'in_segment("gone") and age >= 30'})
    session = portrait.store.session()
    try:  # the deletion that raced the creation of "orphan" (the API refuses it once "orphan" is saved)
        for statement in segments_q.DELETE:
            session.execute(statement, [portrait.segments.find("gone").id])
    finally:
        session.close()
    portrait.ingest_messages(traffic(4, PEOPLE))
    portrait.process_pending()  # raised NotFound: no segment named 'gone'
    found = memberships(portrait)
    assert found["adults"] == {f"u{n}" for n in range(PEOPLE) if 18 + n * 3 % 40 >= 30}
    error = portrait.segments.get("orphan")["error"]
    assert error is not None and "'gone'" in error and "edit its condition" in error
    assert portrait.segments.get("adults")["error"] is None


def test_a_calculated_attribute_failing_when_run_fails_alone(
        portrait: Portrait, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A calculated attribute's statement that fails when run (DuckDB aborts the whole transaction then) failed the
    whole refresh, again after every batch: no other attribute computed, no segment kept current. Now it fails
    alone, keeping its values; its ``error`` says why, and everything else goes on."""
    portrait.ingest_messages(traffic(0, 4))
    portrait.process_pending()
    portrait.create_attribute({"code": "orders", "name": "Orders", "definition": 'count("Order Completed")'})
    portrait.create_attribute({"code": "spent", "name": "Spent", "definition": 'sum("Order Completed", revenue)'})
    create_segments(portrait)
    portrait.create_segment({"name": "ordered", "condition": "orders >= 1"})
    before = portrait.profile("user_id:u3")["traits"]["spent"]
    query = calculated_q.calculation_query

    def failing_for_spent(calculation: Any, *args: Any, **options: Any) -> tuple[exp.Expr, dict[str, Any]]:
        sql, params = query(calculation, *args, **options)
        if "revenue" in str(calculation):  # fails when run, after other statements of the pass
            boom = exp.Anonymous(this="error", expressions=[exp.Literal.string("boom")])
            sql = exp.select("*").from_(sql.subquery("q")).where(boom.is_(exp.null()))
        return sql, params

    monkeypatch.setattr(calculated_q, "calculation_query", failing_for_spent)
    big_order = {"type": "track", "userId": "u3", "event": "Order Completed", "properties": {"revenue": 1000}}
    portrait.ingest_messages([*traffic(4, PEOPLE), big_order])
    with caplog.at_level(logging.ERROR, logger="portrait.calculated"):
        portrait.process_pending()  # raised: boom
        portrait.process_pending()
    assert portrait.profile("user_id:u3")["traits"]["spent"] == before  # kept as it was
    assert portrait.profile("user_id:u3")["traits"]["orders"] == 4  # the other attribute is current
    assert "u13" in memberships(portrait)["ordered"]  # and the segments
    error = portrait.attributes.get("spent")["error"]
    assert error is not None and "boom" in error and "kept as they were" in error
    assert portrait.attributes.get("orders")["error"] is None
    assert len([r for r in caplog.records if "'spent'" in r.getMessage()]) == 1  # logged once, not every batch
    monkeypatch.undo()
    portrait.recalculate()
    assert portrait.profile("user_id:u3")["traits"]["spent"] == before + 1000
    assert portrait.attributes.get("spent")["error"] is None


@pytest.mark.parametrize("sql_from", [1, 10**9], ids=["sql", "python"])
def test_processing_and_erasures_go_on_while_segments_are_evaluated(portrait: Portrait, sql_from: int) -> None:
    """The refresh paused processing -- and erasures and segment writes from the API -- for its whole pass (~25 s
    for 20 segments over 100,000 touched profiles at 1M: docs/performance.md). Segments are now evaluated with
    nothing paused and written one at a time: a batch and an erasure run meanwhile, the erased person gets no
    membership back, and what the batch changed is picked up by the next refresh."""
    pause = threading.RLock()  # what ProcessorThread.paused holds in a server

    @contextlib.contextmanager
    def paused() -> Iterator[None]:
        with pause:
            yield

    portrait.segments._exclusive = paused
    portrait.segments.sql_from = sql_from
    portrait.ingest_messages(traffic(0, 4))
    portrait.process_pending()
    create_segments(portrait)
    portrait.ingest_messages(traffic(4, PEOPLE))  # u4 (age 30) enters "adults" in this refresh
    portrait.processor.drain()
    erased = portrait.resolve_profile_id("user_id:u4")

    def batch_and_erasure() -> None:
        with pause:
            portrait.ingest_messages([{"type": "identify", "userId": "u5", "traits": {"age": 99}}])
            portrait.processor.drain()
            portrait.privacy_request({"type": "erase", "identity": "user_id:u4"}, "test", run_now=True)

    blocked: list[bool] = []
    worker = threading.Thread(target=batch_and_erasure)
    evaluate_in_sql, evaluate = segments_module.Segments._evaluate_in_sql, segments_module.Segments._evaluate

    def meanwhile(segment: Any) -> None:
        if segment.name == "adults" and not blocked:
            worker.start()
            worker.join(timeout=5)
            blocked.append(worker.is_alive())  # still waiting for the pause: let go of it after the refresh

    def in_sql(self: Any, session: Any, segment: Any, *args: Any) -> None:
        evaluate_in_sql(self, session, segment, *args)
        meanwhile(segment)

    def in_python(self: Any, session: Any, segment: Any, *args: Any) -> list[str]:
        members = evaluate(self, session, segment, *args)
        meanwhile(segment)
        return members

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(segments_module.Segments, "_evaluate_in_sql", in_sql)
        patch.setattr(segments_module.Segments, "_evaluate", in_python)
        portrait.segments.refresh_touched()
    worker.join()
    assert blocked == [False], "the batch and the erasure waited for the whole refresh"
    session = portrait.store.session()
    try:
        kept = session.execute(parse("SELECT count(*) FROM segment_members WHERE profile_id = ?"), [erased])
        queued = session.execute(parse("SELECT count(*) FROM audience_outbox WHERE profile_id = ?"), [erased])
    finally:
        session.close()
    assert kept == [(0,)] and queued == [(0,)]  # the erased person's membership was not written back
    portrait.process_pending()
    assert "u5" in memberships(portrait)["adults"]  # the batch processed meanwhile
    assert portrait.segments.recount_all() == []  # the members a full recount finds


# The child: refresh the segments with the store's statements counted, killing itself (SIGKILL: nothing rolled back,
# closed or checkpointed) when about to run the one numbered argv[2].
CRASHING = """
import os, signal, sys
from datetime import datetime
from portrait.config import Settings
from portrait.service import Portrait
from portrait.store.duckdb import DuckDBSession

count, crash_at, execute = 0, int(sys.argv[2]), DuckDBSession.execute

def counted(self, statement, params=()):
    global count
    count += 1
    if count == crash_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return execute(self, statement, params)

service = Portrait(Settings(db_path=sys.argv[1]), background=False)
service.segments.sql_from = int(sys.argv[3])
DuckDBSession.execute = counted
service.segments.refresh_touched(now=datetime.fromisoformat(sys.argv[4]))
"""


def derived(path: Path) -> dict[str, Any]:
    """Memberships, their history and Audience events waiting, calculated values: what a refresh derives."""
    service = Portrait(Settings(db_path=str(path)), background=False)
    try:
        session = service.segments._session()
        return {name: sorted(session.execute(parse(query))) for name, query in {
            "members": "SELECT segment_id, profile_id, entered_at FROM segment_members",
            "history": "SELECT segment_id, profile_id, change, at FROM segment_history",
            "outbox": "SELECT message_id FROM audience_outbox",
            "calculated": "SELECT profile_id, CAST(value AS VARCHAR) FROM profile_traits WHERE key = 'orders'",
            "watermark": "SELECT value FROM segment_state"}.items()}
    finally:
        service.close()


@pytest.fixture(scope="module")
def due(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store whose touched profiles wait for the refresh: a calculated attribute, a static and six dynamic
    segments (a refresh runs ~115 statements)."""
    path = tmp_path_factory.mktemp("due") / "due.duckdb"
    service = Portrait(Settings(db_path=str(path)), background=False)
    service.ingest_messages(traffic(0, 4))
    service.process_pending()
    service.create_attribute({"code": "orders", "name": "Orders", "definition": 'count("Order Completed")'})
    create_segments(service)
    service.ingest_messages(traffic(4, PEOPLE))
    service.processor.drain()
    service.close()
    return path


# Killed: in the calculated attribute's transaction, in the second dynamic segment's after the first committed,
# at the watermark after every segment committed; with the SQL engine (from 1 touched profile) and Python.
@pytest.mark.parametrize(("sql_from", "crash_at"), [(1, 12), (1, 40), (1, 112), (10**9, 60)])
def test_a_refresh_killed_at_any_statement_ends_as_one_not_killed(
        tmp_path: Path, due: Path, sql_from: int, crash_at: int) -> None:
    """The refresh commits each calculated attribute and each segment on its own, and moves the watermark last: a
    process killed between two of those commits, restarted, refreshes the same profiles again and ends with what
    one refresh without the crash gives -- no membership, history entry or Audience event twice or missing."""
    now = utc_now() + timedelta(hours=1)
    crashed, whole = tmp_path / "crashed.duckdb", tmp_path / "whole.duckdb"
    for copy in (crashed, whole):
        shutil.copy(due, copy)
    child = subprocess.run([sys.executable, "-c", CRASHING, str(crashed), str(crash_at), str(sql_from),
                            now.isoformat()], check=False, capture_output=True, env={**os.environ, "PYTHONPATH": SRC})
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()  # killed inside the refresh
    for path in (crashed, whole):
        restarted = Portrait(Settings(db_path=str(path)), background=False)
        restarted.segments.sql_from = sql_from
        assert restarted.segments.refresh_touched(now=now) or path == crashed
        restarted.close()
    assert derived(crashed) == derived(whole)
