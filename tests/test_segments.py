"""Segments: definitions, materialized membership kept current, history and audience events, explain, the API."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlglot import exp
from tests.conftest import ADMIN_KEY, WRITE_KEY, start_server

from portrait.api import create_app
from portrait.config import Settings
from portrait.errors import BadRequest, Conflict, NotFound
from portrait.segments import load_profiles
from portrait.service import Portrait
from portrait.spec import utc_now
from portrait.sql import parse

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def ago(days: float) -> str:
    return (utc_now() - timedelta(days=days)).isoformat() + "Z"


def shop(portrait: Portrait) -> None:
    portrait.ingest_messages([
        {"type": "identify", "userId": "ann", "traits": {"email": "ann@example.com", "country": "PL", "age": 31}},
        {"type": "identify", "userId": "bob", "traits": {"email": "bob@example.com", "country": "TR", "age": 52}},
        {"type": "identify", "userId": "cid", "traits": {"country": "DE", "age": 28}},
        {"type": "track", "userId": "ann", "event": "Order Completed", "properties": {"revenue": 80},
         "timestamp": ago(3)},
        {"type": "track", "userId": "ann", "event": "Order Completed", "properties": {"revenue": 60},
         "timestamp": ago(10)},
        {"type": "track", "userId": "bob", "event": "Order Completed", "properties": {"revenue": 20},
         "timestamp": ago(40)},
    ])
    portrait.process_pending()


def users(portrait: Portrait, segment: str) -> set[str]:
    members = portrait.segments.members(segment, limit=1000)["members"]
    return {m["user_id"] for m in members}


@pytest.fixture
def client(portrait: Portrait) -> Iterator[TestClient]:
    with TestClient(create_app(portrait=portrait)) as test_client:
        yield test_client


def test_a_dynamic_segment_is_counted_and_its_members_get_audience_events(portrait: Portrait) -> None:
    shop(portrait)
    created = portrait.create_segment({"name": "Big buyers", "condition": (
        'country in ("PL", "TR") and performed("Order Completed", count >= 2, within = 30d, where revenue > 50)')})
    assert created["size"] == 1 and created["kind"] == "dynamic"
    assert created["english"].startswith('customers whose country is one of "PL" or "TR" and who performed')
    assert users(portrait, "Big buyers") == {"ann"}
    portrait.process_pending()
    timeline = portrait.events("user_id:ann", event="Audience Entered")["events"]
    assert [e["properties"] for e in timeline] == [{"segment": "Big buyers", "segment_id": created["id"]}]
    assert portrait.profile_segments("email:ann@example.com")["segments"][0]["name"] == "Big buyers"


def test_segments_built_on_audience_events_get_theirs_too(portrait: Portrait) -> None:
    """A segment of people who entered another one: its own Audience Entered events are written as well, however
    many rounds the chain takes."""
    portrait.create_segment({"name": "buyers", "condition": 'performed("Order Completed")'})
    for name, after in (("welcomed", "buyers"), ("thanked", "welcomed")):
        condition = f'performed("Audience Entered", where segment = "{after}")'
        portrait.create_segment({"name": name, "condition": condition})
    portrait.ingest_messages([{"type": "track", "userId": "cara", "event": "Order Completed"}])
    portrait.process_pending()
    timeline = portrait.events("user_id:cara", event="Audience Entered")["events"]
    assert sorted(e["properties"]["segment"] for e in timeline) == ["buyers", "thanked", "welcomed"]


def test_membership_follows_new_events_and_keeps_history(portrait: Portrait) -> None:
    shop(portrait)
    portrait.create_segment({"name": "adults 30+", "condition": "age >= 30"})
    assert users(portrait, "adults 30+") == {"ann", "bob"}
    portrait.ingest_messages([{"type": "identify", "userId": "cid", "traits": {"age": 30}},
                              {"type": "identify", "userId": "bob", "traits": {"age": None}}])
    portrait.process_pending()
    assert users(portrait, "adults 30+") == {"ann", "cid"}
    history = portrait.segments.history("adults 30+")["history"]
    assert [h["change"] for h in history] == ["exited", "entered", "entered", "entered"]
    exited = portrait.events("user_id:bob", event="Audience Exited")["events"]
    assert len(exited) == 1 and exited[0]["properties"]["segment"] == "adults 30+"


def test_a_profile_merged_away_leaves_its_segments_on_its_survivors_timeline(portrait: Portrait) -> None:
    """Its Audience Entered event moved to the survivor with its events; so does its exit, unless the survivor is a
    member (then the survivor's own membership stands)."""
    portrait.attributes.create({"code": "plan", "name": "Plan", "type": "string"})
    portrait.create_segment({"name": "free", "condition": 'plan = "free"'})
    portrait.create_segment({"name": "everyone", "condition": "plan is set"})
    portrait.ingest_messages([
        {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}, "timestamp": "2026-01-01T00:00:00Z"},
        {"type": "identify", "anonymousId": "a1", "traits": {"plan": "free"}, "timestamp": "2026-01-01T00:00:00Z"}])
    portrait.process_pending()
    portrait.ingest_messages([{"type": "identify", "userId": "u1", "anonymousId": "a1", "traits": {"plan": "pro"},
                               "timestamp": "2026-01-02T00:00:00Z"}])
    portrait.process_pending()
    timeline = [(e["event"], e["properties"]["segment"])
                for e in portrait.events("user_id:u1")["events"] if (e["event"] or "").startswith("Audience")]
    assert sorted(timeline) == [("Audience Entered", "everyone"), ("Audience Entered", "everyone"),
                                ("Audience Entered", "free"), ("Audience Exited", "free")]
    assert users(portrait, "free") == set() and users(portrait, "everyone") == {"u1"}


def audience(portrait: Portrait, reference: str) -> list[tuple[str, str]]:
    return [(e["event"], e["properties"]["segment"]) for e in portrait.events(reference)["events"]
            if (e["event"] or "").startswith("Audience")]


def test_a_survivor_takes_over_the_membership_of_a_member_merged_into_it(portrait: Portrait) -> None:
    """Two orders on the phone (anonymous) put that half in the segment; the one order on the laptop did not. The
    login that merges them found the survivor entering and gave it a second Audience Entered beside the phone's,
    which came over with its events (a journey tool saw the person enter twice without leaving). The survivor now
    takes over the membership, with its entry time: one Entered. Alike whether a real-time refresh or a recount
    sees the merge."""
    portrait.create_segment({"name": "repeat buyers", "condition": 'performed("Order Completed", count >= 2)'})
    for user, phone in (("u1", "a1"), ("u2", "a2")):
        portrait.ingest_messages([{"type": "track", "userId": user, "event": "Order Completed"}] + [
            {"type": "track", "anonymousId": phone, "event": "Order Completed"}] * 2)
    portrait.process_pending()
    since = {p: portrait.profile_segments(f"anonymous_id:{p}")["segments"][0]["since"] for p in ("a1", "a2")}
    portrait.ingest_messages([{"type": "identify", "userId": "u1", "anonymousId": "a1"}])
    portrait.process_pending()  # the real-time refresh sees the merge
    portrait.ingest_messages([{"type": "identify", "userId": "u2", "anonymousId": "a2"}])
    portrait.processor.drain()
    portrait.recount_segment("repeat buyers")  # the recount sees it first
    portrait.process_pending()
    for user, phone in (("u1", "a1"), ("u2", "a2")):
        assert audience(portrait, f"user_id:{user}") == [("Audience Entered", "repeat buyers")]
        assert [s["since"] for s in portrait.profile_segments(f"user_id:{user}")["segments"]] == [since[phone]]
    assert users(portrait, "repeat buyers") == {"u1", "u2"}
    assert portrait.recount_segment("repeat buyers")["entered"] == 0


def test_a_member_merged_away_before_its_entry_was_sent_leaves_the_survivor_its_own(portrait: Portrait) -> None:
    """A merged profile's unsent Audience events are dropped, so the survivor keeps an Entered of its own."""
    portrait.create_segment({"name": "repeat buyers", "condition": 'performed("Order Completed", count >= 2)'})
    portrait.ingest_messages([{"type": "track", "userId": "u3", "event": "Order Completed"}] + [
        {"type": "track", "anonymousId": "a3", "event": "Order Completed"}] * 2)
    portrait.processor.drain()
    portrait.segments.refresh_touched()  # a3 enters; its event waits in the outbox
    portrait.ingest_messages([{"type": "identify", "userId": "u3", "anonymousId": "a3"}])
    portrait.process_pending()
    assert audience(portrait, "user_id:u3") == [("Audience Entered", "repeat buyers")]
    assert users(portrait, "repeat buyers") == {"u3"}


def test_a_recount_catches_conditions_that_move_with_time(portrait: Portrait) -> None:
    shop(portrait)
    portrait.create_segment({"name": "recent buyers", "condition": 'last_time("Order Completed") within last 7d'})
    assert users(portrait, "recent buyers") == {"ann"}
    changes = portrait.segments.recount("recent buyers", now=utc_now() + timedelta(days=5))
    assert [(c.change, c.segment) for c in changes] == [("exited", "recent buyers")]
    assert users(portrait, "recent buyers") == set()


def test_a_static_segment_holds_the_profiles_of_its_identities(portrait: Portrait) -> None:
    shop(portrait)
    created = portrait.create_segment({"name": "VIP list", "identities": [
        "email:ANN@example.com", "user_id:dee", "phone:not a phone", "nonsense"]})
    assert created["kind"] == "static" and created["size"] == 1 and created["identities"] == 2
    assert created["rejected_identities"] == ["phone:not a phone", "nonsense"]
    changed = portrait.update_segment("VIP list", {"identities": ["email:ann@example.com", "user_id:dee", "nonsense"]})
    assert changed["identities"] == 2 and changed["rejected_identities"] == ["nonsense"]  # not dropped unsaid
    assert "rejected_identities" not in portrait.update_segment("VIP list", {"description": "VIPs"})
    portrait.ingest_messages([{"type": "track", "userId": "dee", "event": "Signed Up"}])  # a listed customer arrives
    portrait.process_pending()
    assert users(portrait, "VIP list") == {"ann", "dee"}
    both = portrait.create_segment({"name": "VIP buyers", "condition": 'in_segment("VIP list") and '
                                                                       'performed("Order Completed")'})
    assert both["size"] == 1
    explained = portrait.explain_segment("VIP buyers", "user_id:dee")
    assert explained["member"] is False and explained["holds"] is False
    parts = explained["explanation"]["parts"]
    assert [(p["text"], p["holds"], p["why"]) for p in parts] == [
        ('in_segment("VIP list")', True, "on the uploaded list"),
        ('performed("Order Completed")', False, "performed 0 matching times")]


def test_explain_writes_times_as_the_api_does(portrait: Portrait) -> None:
    shop(portrait)
    portrait.create_segment({"name": "recent", "condition": 'last_time("Order Completed") within last 30d'})
    newest = portrait.events("user_id:ann", event="Order Completed")["events"][0]["timestamp"]  # ms and Z
    assert portrait.explain_segment("recent", "user_id:ann")["explanation"]["why"] == f"last time: {newest}"


def test_explain_and_the_python_engine_count_events_retention_expired(portrait: Portrait) -> None:
    """Retention deletes raw events but keeps who did what and when (docs/calculated.md: counts and times keep
    counting expired events), and the SQL engine counts them. The Python engine's reads -- explain, the fallback
    for a segment whose query fails, the engines' cross-check -- inner-joined the raw events, so a member whose
    orders had expired was explained as 'performed 0 matching times'."""
    old = (utc_now() - timedelta(days=40)).isoformat() + "Z"
    portrait.ingest_messages([{"type": "track", "userId": "kim", "event": "Order Completed", "timestamp": old,
                               "properties": {"revenue": 80}} for _ in range(2)])
    portrait.process_pending()
    assert portrait.privacy.expire(30) == 2
    portrait.create_segment({"name": "repeat", "condition": 'performed("Order Completed", count >= 2)'})
    portrait.create_segment({"name": "big", "condition": 'performed("Order Completed", where revenue > 50)'})
    explained = portrait.explain_segment("repeat", "user_id:kim")
    assert (explained["member"], explained["holds"]) == (True, True), explained
    assert explained["explanation"]["why"] == "performed 2 matching times"
    # a condition on the properties covers the events still in the log, in both engines
    explained = portrait.explain_segment("big", "user_id:kim")
    assert (explained["member"], explained["holds"]) == (False, False), explained
    profile_id = portrait.resolve_profile_id("user_id:kim")
    engine = {p.profile_id: p for p in load_profiles(portrait._reads)}[profile_id]
    assert [(e.name, dict(e.properties)) for e in engine.events] == [("Order Completed", {})] * 2


def test_explain_gives_values_and_thresholds_with_their_units(portrait: Portrait) -> None:
    """A number attribute's unit is read with its value and the value it is compared with, as the analytics and
    the profile show them; an attribute without a unit (country) reads as before."""
    shop(portrait)  # age is a standard attribute, in years
    portrait.create_attribute({"code": "total_revenue", "name": "Total revenue", "unit": "EUR",
                               "definition": 'sum("Order Completed", revenue)'})
    portrait.create_segment({"name": "big", "condition": 'total_revenue > 100 and age between 25 and 40 and '
                                                         'country in ("PL", "TR") and age is set'})
    parts = portrait.explain_segment("big", "user_id:ann")["explanation"]["parts"]
    assert [(p["why"], p.get("unit")) for p in parts] == [
        ("total_revenue is 140.0 EUR; the condition: > 100 EUR", "EUR"),
        ("age is 31 years; the condition: between 25 and 40 years", "years"),
        ("country is 'PL'", None),
        ("age is 31 years", "years")]
    parts = portrait.explain_segment("big", "user_id:cid")["explanation"]["parts"]
    assert parts[0]["why"] == "total_revenue is 0.0 EUR; the condition: > 100 EUR"


def test_references_between_segments_are_protected(portrait: Portrait) -> None:
    shop(portrait)
    portrait.create_segment({"name": "poles", "condition": 'country = "PL"'})
    portrait.create_segment({"name": "polish buyers", "condition": 'in_segment("poles") and '
                                                                   'performed("Order Completed")'})
    assert users(portrait, "polish buyers") == {"ann"}
    with pytest.raises(Conflict, match="polish buyers refer to it"):
        portrait.segments.delete("poles")
    with pytest.raises(Conflict, match="polish buyers refer to it"):
        portrait.update_segment("poles", {"name": "polska"})
    with pytest.raises(BadRequest, match="loop: poles -> polish buyers -> poles"):
        portrait.update_segment("poles", {"condition": 'in_segment("polish buyers")'})
    with pytest.raises(BadRequest, match="cannot refer to itself"):
        portrait.create_segment({"name": "me", "condition": 'in_segment("me")'})
    with pytest.raises(Conflict, match="exists already"):
        portrait.create_segment({"name": "poles", "condition": "age > 1"})
    updated = portrait.update_segment("poles", {"condition": 'country in ("PL", "TR")'})
    assert updated["size"] == 2 and users(portrait, "polish buyers") == {"ann", "bob"}
    portrait.segments.delete("polish buyers")
    portrait.segments.delete("poles")
    assert portrait.segments.all() == []


def test_an_attribute_keeps_a_type_its_segments_can_use(portrait: Portrait) -> None:
    """Making age text while a segment says ``age >= 30`` left a condition no engine could evaluate: its recount
    failed, and so did every real-time refresh, for every segment. Such a change is refused until the segment
    changes; a type that still fits (number for an integer) is fine."""
    shop(portrait)
    portrait.create_segment({"name": "adults 30+", "condition": "age >= 30"})
    portrait.create_segment({"name": "poles", "condition": 'country = "PL"'})
    portrait.create_attribute({"code": "orders", "name": "Orders", "definition": 'count("Order Completed")'})
    portrait.create_segment({"name": "repeat buyers", "condition": "orders >= 2"})
    with pytest.raises(Conflict, match=r"cannot make age string: the condition of segment 'adults 30\+' \("):
        portrait.update_attribute("age", {"type": "string"})
    with pytest.raises(Conflict, match="segment 'repeat buyers'"):  # a new definition of another type
        portrait.update_attribute("orders", {"definition": 'first_value("Order Completed", currency)'})
    assert portrait.attributes.get("age")["type"] == "integer"
    assert portrait.attributes.get("orders")["definition"] == 'count("Order Completed")'
    portrait.ingest_messages([{"type": "identify", "userId": "cid", "traits": {"country": "PL", "age": 33}}])
    portrait.process_pending()
    assert users(portrait, "poles") == {"ann", "cid"} and users(portrait, "adults 30+") == {"ann", "bob", "cid"}
    assert portrait.recount_segment("adults 30+")["size"] == 3
    assert portrait.update_attribute("age", {"type": "number"})["type"] == "number"
    assert portrait.update_attribute("country", {"type": "enum"})["type"] == "enum"


def test_a_segments_sizes_page_through_every_recount(client: TestClient, portrait: Portrait) -> None:
    """/sizes came whole: one point per recount, 288 a day at the default interval, over 100,000 a year in one
    answer (and the console's segments page read them all, for every segment, to draw 20). It pages like the
    members, with a cursor exact to the microsecond (a millisecond time gave the page's last point again)."""
    portrait.ingest_messages([{"type": "identify", "userId": f"u{i}", "traits": {"age": 30}} for i in range(3)])
    portrait.process_pending()
    portrait.create_segment({"name": "adults", "condition": "age >= 18"})
    for _ in range(6):
        portrait.recount_segment("adults")
    expected = [point["at"] for point in portrait.segments.latest_sizes("adults", 100)]
    assert len(expected) == 7 and expected == sorted(expected)
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 3}
    while True:
        page = client.get("/api/segments/adults/sizes", headers=ADMIN, params=params).json()
        assert page["segment"] == "adults" and len(page["sizes"]) <= 3
        seen += [point["at"] for point in page["sizes"]]
        if page["next"] is None:
            break
        params["after"] = page["next"]
    assert seen == expected
    assert portrait.segments.latest_sizes("adults", 2) == portrait.segments.sizes("adults")["sizes"][-2:]
    for bad in ("-1", "yesterday"):
        answer = client.get("/api/segments/adults/sizes", headers=ADMIN, params={"after": bad})
        assert answer.status_code == 400 and answer.json()["code"] == "invalid_request", answer.text
    far = client.get("/api/segments/adults/sizes", headers=ADMIN, params={"after": 10**18}).json()
    assert far == {"segment": "adults", "sizes": [], "next": None}


def test_the_api(client: TestClient, portrait: Portrait) -> None:
    shop(portrait)
    preview = client.post("/api/segments/preview", headers=ADMIN, json={"condition": "age < 40"}).json()
    assert preview["count"] == 2 and len(preview["sample"]) == 2 and preview["text"] == "age < 40"
    as_json = client.post("/api/segments/preview", headers=ADMIN, json={"condition": preview["condition"]}).json()
    assert as_json["count"] == 2
    bad = client.post("/api/segments/preview", headers=ADMIN, json={"condition": "age <"})
    assert bad.status_code == 400 and bad.json() == {
        "code": "invalid_condition", "message": 'at position 5: expected a value ("text", a number, true/false, a '
                                                'date such as 2026-01-31, or 30d ago), found the end'}
    created = client.post("/api/segments", headers=ADMIN, json={"name": "young", "condition": "age < 40"})
    assert created.status_code == 201, created.text
    segment_id = created.json()["id"]
    page = client.get(f"/api/segments/{segment_id}/members", headers=ADMIN, params={"limit": 1}).json()
    rest = client.get("/api/segments/young/members", headers=ADMIN, params={"after": page["next"]}).json()
    assert len(page["members"]) == 1 and len(rest["members"]) == 1 and rest["next"] is None
    explained = client.get(f"/api/segments/{segment_id}/explain/user_id:cid", headers=ADMIN).json()
    assert explained["member"] is True
    assert explained["explanation"]["why"] == "age is 28 years; the condition: < 40 years"
    assert client.get("/api/profiles/user_id:cid/segments", headers=ADMIN).json()["segments"][0]["name"] == "young"
    assert client.get("/api/segments", headers=ADMIN).json()["segments"][0]["size"] == 2
    assert client.get("/api/segments/young/sizes", headers=ADMIN).json()["sizes"][0]["size"] == 2
    recounted = client.post("/api/segments/young/recount", headers=ADMIN).json()
    assert (recounted["entered"], recounted["exited"]) == (0, 0)
    assert client.patch("/api/segments/young", headers=ADMIN, json={"condition": "agee < 3"}).json()["code"] == (
        "invalid_condition")
    assert client.get("/api/segments/nope", headers=ADMIN).status_code == 404
    for unusable in ("age > 1e400", 'performed("X", within = 99999999d)', "(" * 600 + "age > 1" + ")" * 600):
        for answer in (client.post("/api/segments/preview", headers=ADMIN, json={"condition": unusable}),
                       client.post("/api/segments", headers=ADMIN, json={"name": "bad", "condition": unusable})):
            assert answer.status_code == 400 and answer.json()["code"] == "invalid_condition", answer.text
    assert [s["name"] for s in client.get("/api/segments", headers=ADMIN).json()["segments"]] == ["young"]
    assert client.delete("/api/segments/young", headers=ADMIN).status_code == 204
    assert client.get("/api/segments", headers={"Authorization": f"Bearer {WRITE_KEY}"}).status_code == 403


def test_a_running_server_keeps_segments_current(tmp_path: Path) -> None:
    server = start_server(str(tmp_path / "s.duckdb"), tmp_path / "s.log")
    try:
        with server.admin() as admin, httpx.Client(base_url=server.url, auth=(WRITE_KEY, ""), timeout=10) as sdk:
            created = admin.post("/api/segments", json={"name": "buyers", "condition": 'performed("Order Completed")'})
            assert created.status_code == 201, created.text
            sdk.post("/v1/track", json={"userId": "u1", "event": "Order Completed", "properties": {"revenue": 5}})
            started = time.monotonic()
            segments = _wait_for(lambda: admin.get("/api/profiles/user_id:u1/segments").json().get("segments"))
            entered_after = time.monotonic() - started
            assert segments[0]["name"] == "buyers" and entered_after < 10
            timeline = _wait_for(lambda: admin.get("/api/profiles/user_id:u1/events",
                                                   params={"event": "Audience Entered"}).json().get("events"))
            assert timeline[0]["properties"]["segment"] == "buyers"
    finally:
        server.stop()


def _wait_for(read: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = read()
        if found:
            return found
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_the_cli_manages_segments_and_exports_their_members(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from portrait.cli import app
    from portrait.config import Settings

    db = str(tmp_path / "cli.duckdb")
    service = Portrait(Settings(db_path=db), background=False)
    shop(service)
    service.close()
    runner = CliRunner(env={"PORTRAIT_NO_PROGRESS": "1"})

    def run(*args: str) -> str:
        result = runner.invoke(app, [*args, "--db", db])
        assert result.exit_code == 0, result.output
        return result.output

    previewed = run("segments", "preview", "age < 40")
    assert "2 profiles" in previewed
    # each sampled customer recognisable: user id, email, the age the condition compares (no pii rules apply to the
    # database file's own user, as for `profiles show`)
    wide = runner.invoke(app, ["segments", "preview", "age < 40", "--db", db], env={"COLUMNS": "200"}).output
    assert re.search(r"┃ Profile\s+┃ User id\s+┃ email\s+┃ age\s+┃", wide), wide
    assert re.search(r"│ [0-9a-f-]{36} │ ann\s+│ ann@example\.com\s+│ 31\s+│", wide), wide
    assert re.search(r"│ [0-9a-f-]{36} │ cid\s+│\s+│ 28\s+│", wide), wide
    assert "Segment 1 'young': 2 members." in run("segments", "create", "young", "--condition", "age < 40")
    vip = tmp_path / "vip.csv"
    vip.write_text("email,name\nbob@example.com,Bob\nnobody@example.com,Nobody\n")
    assert "1 members" in run("segments", "create", "vip", "--file", str(vip), "--column", "email")
    # a new list: what is no identity is said, not dropped
    vip.write_text("email\nbob@example.com\nnobody@example.com\nnot an email\n")
    assert "Not identities (left out): email:not an email" in run("segments", "update", "vip", "--file", str(vip),
                                                            "--column", "email")
    listed = run("segments", "list")
    assert "young" in listed and "2 identities" in listed
    explained = run("segments", "explain", "young", "user_id:bob")
    assert "not a member" in explained and "age is 52 years; the condition: < 40 years" in explained
    assert "cid" in run("segments", "members", "young")
    out = tmp_path / "young.csv"
    exported = run("export", "profiles", "-o", str(out), "--segment", "young", "--attributes", "age,country")
    assert "Exported 2 members of young" in exported
    header, *rows = out.read_text().splitlines()
    assert header == '"profile_id","user_id","age","country"'
    assert sorted(row.split(",", 1)[1] for row in rows) == ['"ann",31,"PL"', '"cid",28,"DE"']
    bad = runner.invoke(app, ["segments", "create", "x", "--condition", "age <", "--db", db])
    assert bad.exit_code == 1 and "at position 5: expected a value" in bad.output
    assert "deleted" in run("segments", "delete", "young")
    log = run("audit", "--json")  # changes made on the file directly are audited as "local"
    assert "segments create young" in log and "segments delete young" in log


@pytest.mark.parametrize("reference", ["¹", "٣", "9" * 40])  # found by schemathesis: digits Python sees, ids it cannot
def test_odd_segment_references_are_not_found_not_errors(portrait: Portrait, reference: str) -> None:
    from portrait.errors import NotFound

    with pytest.raises(NotFound):
        portrait.segments.find(reference)


@pytest.mark.parametrize("sql_from", [None, 0], ids=["python", "sql"])
def test_audience_events_survive_a_crash_between_membership_and_the_log(settings: Settings,
                                                                        sql_from: int | None) -> None:
    """Membership changes and their Audience events are recorded in one transaction (the outbox); the events reach
    the log after a restart, and sending them twice stores them once. With either engine in the real-time refresh."""
    service = Portrait(settings, background=False)
    if sql_from is not None:
        service.segments.sql_from = sql_from
    service.create_segment({"name": "buyers", "condition": 'performed("Order Completed")'})
    service.ingest_messages([{"type": "track", "userId": "dana", "event": "Order Completed"}])
    service.processor.drain()
    assert [c.profile_id for c in service.segments.refresh_touched()]  # committed, then the process "dies"
    service.close()
    restarted = Portrait(settings, background=False)
    if sql_from is not None:
        restarted.segments.sql_from = sql_from
    sent = restarted.segments.sent

    def lost_on_the_way(message_ids: list[str]) -> None:
        raise OSError("killed after the events were committed, before the outbox was cleared")

    restarted.segments.sent = lost_on_the_way  # type: ignore[method-assign]
    with pytest.raises(OSError):
        restarted.process_pending()
    restarted.segments.sent = sent  # type: ignore[method-assign]
    restarted.process_pending()
    timeline = restarted.events("user_id:dana", event="Audience Entered")["events"]
    assert [e["properties"]["segment"] for e in timeline] == ["buyers"]
    assert restarted.segments.outbox(10) == []
    restarted.close()


def _statements_to_change(portrait: Portrait, monkeypatch: pytest.MonkeyPatch, change: Any) -> int:
    """How many statements the store ran (in any thread) while ``change`` moved members and sent their events."""
    from portrait.store.duckdb import DuckDBSession

    execute = DuckDBSession.execute
    counted = [0]

    def counting(session: DuckDBSession, *args: Any) -> list[tuple[Any, ...]]:
        counted[0] += 1
        return execute(session, *args)

    monkeypatch.setattr(DuckDBSession, "execute", counting)
    change()
    monkeypatch.setattr(DuckDBSession, "execute", execute)
    return counted[0]


def test_audience_events_cost_no_statement_per_member(portrait: Portrait, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each Audience event looked its profile's identifier up on its own (~2 ms each): a segment that 100,000
    profiles entered kept its creation waiting four and a half minutes. However many enter or leave, the statements
    are as many: here 20 and 300, named by a user id, an anonymous id and an email."""
    portrait.ingest_messages([{"type": "identify", "userId": f"u{n}", "traits": {"score": n}} for n in range(300)])
    portrait.ingest_messages([{"type": "identify", "anonymousId": "anon", "traits": {"score": 1}}])
    list(portrait.import_messages([[{"type": "identify", "traits": {"email": "only@example.com", "score": 2}}]],
                                  "file"))  # an imported row: an email is identity enough
    portrait.process_pending()
    few = _statements_to_change(portrait, monkeypatch, lambda: portrait.create_segment(
        {"name": "few", "condition": "score < 20"}))
    many = _statements_to_change(portrait, monkeypatch, lambda: portrait.create_segment(
        {"name": "many", "condition": "score < 300"}))
    few_moved = _statements_to_change(portrait, monkeypatch, lambda: portrait.update_segment(
        "few", {"condition": "score < 10"}))  # 10 leave
    many_moved = _statements_to_change(portrait, monkeypatch, lambda: portrait.update_segment(
        "many", {"condition": "score >= 290"}))  # 292 leave, 10 enter
    assert many == few and many_moved == few_moved, (few, many, few_moved, many_moved)
    portrait.process_pending()
    stayed_in_few = [("Audience Entered", "few"), ("Audience Entered", "many"), ("Audience Exited", "many")]
    for reference, events in (("user_id:u5", stayed_in_few), ("anonymous_id:anon", stayed_in_few),
                              ("email:only@example.com", stayed_in_few),
                              ("user_id:u295", [("Audience Entered", "many")]),
                              ("user_id:u15", [("Audience Entered", "few"), ("Audience Entered", "many"),
                                               ("Audience Exited", "few"), ("Audience Exited", "many")])):
        assert sorted(audience(portrait, reference)) == events, reference


def test_a_server_answers_a_segment_change_before_its_audience_events_are_written(settings: Settings) -> None:
    """Creating a segment waited until every member's Audience Entered was in the log (100,000 members: seconds).
    With the segment thread running, the answer comes once membership and outbox are committed; the thread writes
    the events after it. Here the sender is held busy: the creation must not wait for it."""
    service = Portrait(settings, background=True)
    try:
        service.ingest_messages([{"type": "identify", "userId": "ann", "traits": {"plan": "pro"}}])
        service.wait_processed()
        answered: list[dict[str, Any]] = []
        with service._audience_lock:  # the sender is busy
            creating = threading.Thread(target=lambda: answered.append(
                service.create_segment({"name": "pros", "condition": 'plan = "pro"'})))
            creating.start()
            creating.join(10)
            assert answered and answered[0]["size"] == 1, "the answer waited for the Audience events"
            assert service.events("user_id:ann", event="Audience Entered")["events"] == []
        written = _wait_for(lambda: service.events("user_id:ann", event="Audience Entered")["events"])
        assert [e["properties"]["segment"] for e in written] == ["pros"]
    finally:
        service.close()


@pytest.mark.parametrize("sql_from", [None, 0], ids=["python", "sql"])
def test_a_segment_that_cannot_be_evaluated_stops_no_other(portrait: Portrait, sql_from: int | None) -> None:
    """A database can hold a segment saved before its condition was refused (here a regex RE2 cannot read): it
    failed every real-time refresh and recount, for every segment, and `process_pending` with them. Whichever
    engine the real-time refresh uses (the SQL one from ``sql_from`` touched profiles: its failed statement aborts
    the transaction, so the pass is redone with that segment in Python, where it fails too)."""
    if sql_from is not None:
        portrait.segments.sql_from = sql_from
    portrait.ingest_messages([{"type": "identify", "userId": "u1", "traits": {"plan": "pro", "score": 5}}])
    portrait.process_pending()
    broken = portrait.create_segment({"name": "Pro", "condition": 'plan regex "^pr"'})
    scored = portrait.create_segment({"name": "Scored", "condition": "score > 1"})
    old_form = exp.update("segments", {"condition": exp.Literal.string(
        '{"attribute": "plan", "op": "regex", "values": ["p*+"]}')}, where="name = 'Pro'")
    portrait.store.session().execute(old_form)
    portrait.ingest_messages([{"type": "identify", "userId": "u2", "traits": {"plan": "pro", "score": 5}}])
    portrait.process_pending()
    assert portrait.segments.get(scored["id"])["size"] == 2  # kept current
    portrait.segments.recount_all()
    shown = portrait.segments.get(broken["id"])
    assert shown["size"] == 1 and "cannot be evaluated" in shown["error"] and "*+" in shown["error"]
    with TestClient(create_app(portrait=portrait)) as client:
        client.post("/login", data={"key": ADMIN_KEY})
        assert "cannot be evaluated" in client.get(f"/segments/{broken['id']}").text
    portrait.update_segment(str(broken["id"]), {"condition": 'plan regex "^pr"'})
    assert portrait.segments.get(broken["id"])["error"] is None and portrait.segments.get(broken["id"])["size"] == 2


@pytest.mark.parametrize("counting", ["refresh_touched", "recount"])
def test_a_segment_deleted_while_it_is_counted_gets_no_members_back(portrait: Portrait, counting: str) -> None:
    """The real-time refresh (after each batch) and a recount read the segment's definition before taking the lock
    for writing members; a segment deleted (or changed) from the API in between was then counted as it had been --
    members written for a segment that no longer existed, with Audience events for it. Seen on a real server
    after a minute of creating and deleting segments under traffic: 1,021 membership rows of 10 deleted segments.
    Made to happen every time: the segment is deleted as the count takes the lock."""
    portrait.ingest_messages([{"type": "identify", "userId": "u1", "traits": {"plan": "pro"}}])
    portrait.process_pending()
    segment_id = portrait.create_segment({"name": "pros", "condition": 'plan = "pro"'})["id"]
    portrait.ingest_messages([{"type": "identify", "userId": "u2", "traits": {"plan": "pro"}}])
    portrait.processor.drain()  # u2 touched, not yet refreshed
    segments = portrait.segments
    pause = segments._exclusive
    deleted: list[int] = []

    @contextlib.contextmanager
    def delete_first() -> Iterator[None]:
        if not deleted:
            deleted.append(segment_id)
            worker = threading.Thread(target=segments.delete, args=["pros"])
            worker.start()
            worker.join(10)
        with pause():
            yield

    segments._exclusive = delete_first  # type: ignore[method-assign]
    with contextlib.suppress(NotFound):  # the recount of a segment deleted before it could count it
        getattr(segments, counting)(*(["pros"] if counting == "recount" else []))
    segments._exclusive = pause  # type: ignore[method-assign]
    portrait.process_pending()
    session = portrait.store.session()
    try:
        left = session.execute(parse("SELECT count(*) FROM segment_members WHERE segment_id = ?"), [segment_id])
    finally:
        session.close()
    assert deleted and left == [(0,)]
    assert portrait.profile("user_id:u2")["events_count"] == 1  # no Audience event for the deleted segment


def test_a_segment_deleted_during_the_full_recount_is_skipped_quietly(
        portrait: Portrait, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The periodic full recount lists the segments, then counts each: one deleted from the API in between was
    logged as an error ('cannot be evaluated, its members are kept as they were') and kept as a failure of a segment
    that no longer exists."""
    portrait.ingest_messages([{"type": "identify", "userId": "u1", "traits": {"plan": "pro"}}])
    portrait.process_pending()
    portrait.create_segment({"name": "pros", "condition": 'plan = "pro"'})
    portrait.create_segment({"name": "teams", "condition": 'plan = "team"'})
    listed = portrait.segments.all

    def listed_then_deleted() -> list[dict[str, Any]]:
        found = listed()
        monkeypatch.undo()
        portrait.segments.delete("pros")
        return found

    monkeypatch.setattr(portrait.segments, "all", listed_then_deleted)
    portrait.segments.recount_all()
    assert portrait.segments.failures == {}
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
