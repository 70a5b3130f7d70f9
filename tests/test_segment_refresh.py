"""The real-time refresh on a large batch: from ``Segments.sql_from`` touched profiles, dynamic segments are
evaluated by the SQL engine over the touched profiles instead of loading each of them, with its events, into Python
(20 segments over 100,000 touched profiles took 20 s, holding the segments' lock: docs/performance.md)."""

from __future__ import annotations

import dataclasses
import logging
from datetime import timedelta
from typing import Any

import pytest
from sqlglot import exp

import portrait.segments as segments_module
from portrait.conditions import Condition, to_text
from portrait.config import Settings
from portrait.service import Portrait
from portrait.spec import utc_now
from portrait.sql import calculated as calculated_q
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
    """In DuckDB a failing statement aborts the transaction: every segment written before it in the pass would be
    lost with it. The pass is rolled back and done again with that segment in Python: every segment kept current,
    each change recorded once."""
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
