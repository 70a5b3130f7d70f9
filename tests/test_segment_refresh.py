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
