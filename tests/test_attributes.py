"""The attribute registry: standard attributes, codes for trait names, auto-created custom attributes, API, CLI."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.conftest import ADMIN_KEY, Server
from typer.testing import CliRunner

from portrait import pipeline
from portrait.api import create_app
from portrait.attributes import STANDARD, code_for
from portrait.cli import app
from portrait.config import Settings
from portrait.errors import Conflict
from portrait.mapping import RowMapping
from portrait.service import Portrait

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
NAMES = ["firstName", "first_name", "address.city", "address.postalCode", "LTV", "utm-source", "createdAt",
         "Plan Tier", "x.y.z", "already_snake", "HTTPStatus", "__weird__", "prénom", "Größe", "adresse.straße",
         "ÉtatCivil"]


@pytest.mark.parametrize("name", NAMES)
def test_python_and_sql_agree_on_codes(portrait: Portrait, name: str) -> None:
    """The processor maps trait names to codes in SQL; lookups use attributes.code_for: they must agree."""
    top, _, child = name.partition(".")
    value = "2020-01-01T00:00:00Z"  # valid for every standard type the names may hit (string, datetime)
    traits: dict[str, Any] = {top: {child: value}} if child else {name: value}
    portrait.ingest_messages([{"type": "identify", "userId": f"u-{name}", "traits": traits}])
    portrait.process_pending()
    assert list(portrait.traits(f"user_id:u-{name}")) == [code_for(name)]


def test_a_trait_whose_name_leaves_no_code_is_listed_not_lost(portrait: Portrait) -> None:
    portrait.ingest_messages([{"type": "identify", "userId": "u1",
                               "traits": {"名前": "太郎", "ключ": "v", "größe": 180, "grüße": "hallo"}}])
    portrait.process_pending()
    assert portrait.traits("user_id:u1") == {"grosse": 180, "grusse": "hallo"}
    issues = portrait.data_quality()["issues"]
    assert sorted((i["attribute"], i["raw_value"]) for i in issues) == [("ключ", '"v"'), ("名前", '"太郎"')]
    assert all("leaves no attribute code" in i["reason"] and i["message_id"] for i in issues)
    portrait.rebuild_traits()  # listed again, once, by a recheck
    assert len(portrait.data_quality()["issues"]) == 2


def test_names_giving_one_code_in_one_message_the_last_wins_and_the_others_are_listed(portrait: Portrait) -> None:
    """Whatever order the processor meets them in: the last name in the message is applied, as a JSON object's
    last duplicate key is; the values it shadows are data-quality issues, not silently dropped."""
    first = {"firstName": "A", "first_name": "B", "prénom": "P", "prenom": "Q", "address": {"city": "C1"},
             "address_city": "C2"}
    second = {"address_city": "C2", "address": {"city": "C1"}, "first_name": "B", "firstName": "A"}
    portrait.ingest_messages([{"type": "identify", "userId": "u1", "traits": first},
                              {"type": "identify", "userId": "u2", "traits": second}])
    portrait.process_pending()
    assert portrait.traits("user_id:u1") == {"first_name": "B", "prenom": "Q", "address_city": "C2"}
    assert portrait.traits("user_id:u2") == {"first_name": "A", "address_city": "C1"}
    issues = portrait.data_quality()["issues"]
    assert sorted((i["attribute"], i["raw_value"]) for i in issues) == [
        ("address_city", '"C1"'), ("address_city", '"C2"'), ("first_name", '"A"'), ("first_name", '"B"'),
        ("prenom", '"P"')]
    shadowed = next(i for i in issues if i["raw_value"] == '"P"')
    assert shadowed["reason"] == ("the traits prénom and prenom of one message both give the attribute prenom: this "
                                  "value is not applied, the later one in the message (prenom) stands for it")
    portrait.rebuild_traits()  # a recheck decides the same and lists them again, once
    assert portrait.traits("user_id:u1")["first_name"] == "B" and len(portrait.data_quality()["issues"]) == 5


def test_standard_attributes_are_there_with_metadata(portrait: Portrait) -> None:
    listed = {a["code"]: a for a in portrait.attributes.list(standard=True)}
    assert set(listed) == {a.code for a in STANDARD}
    assert listed["email"]["is_personal_info"] and listed["address_city"]["is_personal_info"]
    assert not listed["address_country"]["is_personal_info"] and listed["age"]["unit"] == "years"


def test_unknown_traits_become_custom_attributes_typed_from_their_values(portrait: Portrait) -> None:
    portrait.ingest_messages([{"type": "identify", "userId": "u1", "traits": {
        "firstName": "Ann", "loyaltyTier": "gold", "lifetimeOrders": 3, "ltv": 12.5, "vip": True,
        "tags": ["a"], "address": {"city": "Gdansk", "postalCode": "80-001", "geo": {"lat": 54.3}}, "gone": None}}])
    portrait.ingest_messages([{"type": "identify", "userId": "u2", "traits": {"lifetimeOrders": 2.5}}])
    portrait.process_pending()
    assert portrait.traits("user_id:u1") == {"first_name": "Ann", "loyalty_tier": "gold", "lifetime_orders": 3,
                                             "ltv": 12.5, "vip": True, "tags": ["a"], "address_city": "Gdansk",
                                             "address_postal_code": "80-001", "address_geo": {"lat": 54.3}}
    assert portrait.traits("user_id:u2") == {"lifetime_orders": 2.5}  # first seen whole, still takes fractions
    custom = {a["code"]: a for a in portrait.attributes.list(standard=False)}
    assert {c: a["type"] for c, a in custom.items()} == {"loyalty_tier": "string", "lifetime_orders": "number",
                                                         "ltv": "number", "vip": "boolean", "tags": "list",
                                                         "address_geo": "object"}
    assert portrait.data_quality()["issues"] == []
    assert all(a["auto_created"] and not a["standard"] for a in custom.values())
    assert portrait.attributes.get("first_name")["usage"] == {"values": 1, "profiles": 1}



def test_an_object_attribute_is_set_whole_by_events_imports_rechecks_and_rebuilds(portrait: Portrait,
                                                                                  tmp_path: Path) -> None:
    """An object sent under the code of an object attribute is its value: it was always flattened one level, onto
    prefs_colors / prefs_size, so the attribute could never be set. Other objects still flatten (address_city)."""
    portrait.create_attribute({"code": "prefs", "name": "Preferences", "type": "object"})
    prefs = {"colors": ["red"], "size": "M", "fit": {"waist": 32}}
    portrait.ingest_messages([
        {"type": "identify", "userId": "u1", "timestamp": "2026-01-01T00:00:00Z",
         "traits": {"Prefs": prefs, "address": {"city": "Gdansk"}, "other": {"a": 1}}},
        {"type": "identify", "userId": "u2", "traits": {"prefs": {}}},  # an empty object is a value too
        {"type": "identify", "userId": "u3", "timestamp": "2026-01-01T00:00:00Z", "traits": {"prefs": prefs}},
        {"type": "identify", "userId": "u3", "timestamp": "2026-01-02T00:00:00Z", "traits": {"prefs": None}}])
    rows = tmp_path / "crm.ndjson"  # a file import's object column names the attribute too
    rows.write_text(json.dumps({"id": "u4", "prefs": {"size": "L"}, "home": {"town": "Sopot"}}) + "\n")
    portrait.import_file(rows, mapping=RowMapping("profiles", user_id="id"))
    portrait.process_pending()
    expected = {"u1": {"prefs": prefs, "address_city": "Gdansk", "other_a": 1}, "u2": {"prefs": {}}, "u3": {},
                "u4": {"prefs": {"size": "L"}, "home_town": "Sopot"}}

    def traits() -> dict[str, Any]:
        return {user: portrait.traits(f"user_id:{user}") for user in expected}

    assert traits() == expected
    assert not {a["code"] for a in portrait.attributes.list()} & {"prefs_colors", "prefs_size", "prefs_fit"}
    assert portrait.data_quality()["issues"] == []
    portrait.rebuild_traits()  # portrait attributes recheck
    assert traits() == expected
    portrait.rebuild_profiles()  # portrait profiles rebuild
    assert traits() == expected
    portrait.create_attribute({"code": "home", "name": "Home", "type": "object"})  # defined later: a recheck
    portrait.rebuild_traits()  # reads the log again with it
    assert portrait.traits("user_id:u4") == {"prefs": {"size": "L"}, "home": {"town": "Sopot"}}

@pytest.fixture
def client(portrait: Portrait) -> Iterator[TestClient]:
    with TestClient(create_app(portrait=portrait)) as test_client:
        yield test_client


def test_attributes_api_create_update_deprecate(client: TestClient) -> None:
    created = client.post("/api/attributes", headers=ADMIN, json={
        "code": "loyalty_points", "name": "Loyalty points", "type": "integer", "unit": "points",
        "calculate_analytics": True})
    assert created.status_code == 201, created.text
    assert created.json()["standard"] is False and created.json()["usage"] == {"values": 0, "profiles": 0}
    again = client.post("/api/attributes", headers=ADMIN, json={"code": "loyalty_points", "name": "x"})
    assert again.status_code == 409 and again.json()["code"] == "attribute_exists"  # as segment_exists...
    updated = client.patch("/api/attributes/loyalty_points", headers=ADMIN,
                           json={"description": "Points in the loyalty program", "status": "deprecated"})
    assert updated.json()["status"] == "deprecated" and updated.json()["description"].startswith("Points")
    active = client.get("/api/attributes", headers=ADMIN, params={"status": "active"}).json()["attributes"]
    assert "loyalty_points" not in {a["code"] for a in active}
    assert client.get("/api/attributes/nope", headers=ADMIN).status_code == 404


@pytest.mark.parametrize(("payload", "message"), [
    ({"code": "Bad Code", "name": "x"}, "must be snake_case"),
    ({"code": "ok", "name": "x", "type": "money"}, "type 'money' is not one of"),
    ({"code": "ok"}, "needs a code and a name"),
    ({"code": "ok", "name": "x", "colour": "red"}, "unknown attribute fields: colour"),
])
def test_bad_attribute_definitions_are_refused(client: TestClient, payload: dict[str, Any], message: str) -> None:
    response = client.post("/api/attributes", headers=ADMIN, json=payload)
    assert response.status_code == 400 and message in response.json()["message"]


WRONG_JSON_TYPES = [
    ("is_personal_info", "yes", "is_personal_info must be true or false, not 'yes'"),  # was stored as true
    ("is_personal_info", "abc", "is_personal_info must be true or false"),  # was a 500
    ("calculate_analytics", 1, "calculate_analytics must be true or false, not 1"),
    ("name", ["a"], "name must be text"),  # was a 500
    ("description", 5, "description must be text, not 5"),  # was stored as "5"
    ("unit", 5, "unit must be text or null"),
    ("validation", "x", "validation must be an object"),  # was stored, and read by the processor's SQL
    ("definition", 5, "definition is text"),
]


def test_attribute_fields_of_the_wrong_json_type_are_refused(client: TestClient) -> None:
    assert client.post("/api/attributes", headers=ADMIN, json={"code": "tier", "name": "Tier"}).status_code == 201
    for field, value, message in WRONG_JSON_TYPES:
        created = client.post("/api/attributes", headers=ADMIN, json={"code": "tier2", "name": "T", field: value})
        changed = client.patch("/api/attributes/tier", headers=ADMIN, json={field: value})
        for answer in (created, changed):
            assert (answer.status_code, answer.json()["code"]) == (400, "invalid_attribute"), (field, answer.text)
            assert message in answer.json()["message"], (field, answer.text)
    assert client.get("/api/attributes/tier2", headers=ADMIN).status_code == 404
    kept = client.get("/api/attributes/tier", headers=ADMIN).json()
    assert (kept["name"], kept["description"], kept["is_personal_info"], kept["validation"]) == ("Tier", "", False, {})


def test_attributes_cli(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORTRAIT_ADMIN_KEY", raising=False)
    runner = CliRunner()
    db = str(tmp_path / "a.duckdb")
    Portrait(Settings(db_path=db), background=False).close()
    created = runner.invoke(app, ["attributes", "create", "favorite_store", "--name", "Favorite store", "--db", db])
    assert created.exit_code == 0, created.output
    updated = runner.invoke(app, ["attributes", "update", "favorite_store", "--personal", "--deprecate", "--db", db])
    assert "is_personal_info" in updated.output and "status" in updated.output
    listed = json.loads(runner.invoke(app, ["attributes", "list", "--kind", "custom", "--db", db, "--json"]).output)
    assert [(a["code"], a["is_personal_info"], a["status"]) for a in listed["attributes"]] == [
        ("favorite_store", True, "deprecated")]
    table = runner.invoke(app, ["attributes", "list", "--db", db], env={"COLUMNS": "200"})
    assert "Is Personal Info" in table.output and "Calculate Analytics" in table.output
    narrow = runner.invoke(app, ["attributes", "list", "--db", db], env={"COLUMNS": "120"})  # flags in one column
    row = next(line for line in narrow.output.splitlines() if "favorite_store" in line)
    assert "personal, deprecated" in row and max(map(len, narrow.output.splitlines())) <= 120
    shown = runner.invoke(app, ["attributes", "show", "email", "--db", db])
    assert '"standard": true' in shown.output
    nothing = runner.invoke(app, ["attributes", "update", "email", "--db", db])
    assert nothing.exit_code == 1 and "nothing to change" in nothing.output


def test_creating_an_existing_attribute_is_a_conflict_everywhere(server: Server, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Like every other "exists already": 409 from the API (it was 400, read by clients as a malformed request),
    and the CLI says the same whether it opens the file or goes through the server; nothing is changed."""
    monkeypatch.delenv("PORTRAIT_ADMIN_KEY", raising=False)
    with server.admin() as admin:
        again = admin.post("/api/attributes", json={"code": "email", "name": "E-mail again", "type": "integer"})
        assert again.status_code == 409, again.text
        assert again.json() == {"code": "attribute_exists", "message": "attribute 'email' exists already; "
                                                                      "update it instead"}
        assert admin.get("/api/attributes/email").json()["type"] == "string"
    runner = CliRunner()
    remote = runner.invoke(app, ["attributes", "create", "email", "--name", "x", "--url", server.url,
                                 "--admin-key", ADMIN_KEY])
    db = str(tmp_path / "a.duckdb")
    Portrait(Settings(db_path=db), background=False).close()
    local = runner.invoke(app, ["attributes", "create", "email", "--name", "x", "--db", db])
    for result in (remote, local):
        assert result.exit_code == 1 and "attribute 'email' exists already; update it instead" in result.output


def test_cli_calculated_attribute_copying_personal_data_is_personal(tmp_path: Any,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/calculated.md: a definition repeating personal data makes the attribute personal unless told otherwise
    (the CLI used to send --not-personal whenever --personal was not given)."""
    monkeypatch.delenv("PORTRAIT_ADMIN_KEY", raising=False)
    runner = CliRunner()
    db = str(tmp_path / "a.duckdb")
    Portrait(Settings(db_path=db), background=False).close()
    for code, flags in (("full_name", []), ("shown_name", ["--not-personal"]), ("spent", []),
                        ("flagged", ["--personal"])):
        definition = 'sum("Order Completed", revenue)' if code in ("spent", "flagged") else \
            'concat(first_name, " ", last_name)'
        created = runner.invoke(app, ["attributes", "create", code, "--name", code, "--definition", definition,
                                      *flags, "--db", db])
        assert created.exit_code == 0, created.output
    listed = json.loads(runner.invoke(app, ["attributes", "list", "--kind", "custom", "--db", db, "--json"]).output)
    assert {a["code"]: a["is_personal_info"] for a in listed["attributes"]} == {
        "full_name": True, "shown_name": False, "spent": False, "flagged": True}


def test_values_are_coerced_or_kept_out_and_listed(portrait: Portrait) -> None:
    portrait.attributes.create({"code": "tier", "name": "Tier", "type": "enum",
                                "validation": {"values": ["bronze", "silver", "gold"]}})
    portrait.attributes.create({"code": "score", "name": "Score", "type": "number", "validation": {"min": 0,
                                                                                                  "max": 10}})
    portrait.ingest_messages([
        {"type": "identify", "userId": "u1", "messageId": "q1", "timestamp": "2026-01-01T00:00:00Z",
         "traits": {"age": "42", "tier": "gold", "score": "7.5", "birthday": "1990-05-01"}},
        {"type": "identify", "userId": "u1", "messageId": "q2", "timestamp": "2026-01-02T00:00:00Z",
         "traits": {"age": "abc", "tier": "platinum", "score": 11, "birthday": "someday", "plan": "pro"}},
    ])
    portrait.process_pending()
    assert portrait.traits("user_id:u1") == {"age": 42, "tier": "gold", "score": 7.5, "birthday": "1990-05-01",
                                             "plan": "pro"}
    issues = {i["attribute"]: i for i in portrait.data_quality()["issues"]}
    assert {a: i["reason"] for a, i in issues.items()} == {
        "age": "expected integer, got varchar", "tier": 'not one of the allowed values ["bronze","silver","gold"]',
        "score": "above the maximum 10", "birthday": "expected date, got varchar"}
    assert issues["age"]["raw_value"] == '"abc"' and issues["age"]["message_id"] == "q2"
    assert portrait.data_quality(attribute="tier")["issues"][0]["reason"].startswith("not one of")


def test_attribute_analytics(client: TestClient, portrait: Portrait) -> None:
    messages = [{"type": "identify", "userId": f"u{i}", "traits": {"age": 20 + i, "plan": "pro" if i < 6 else "free",
                                                                    "created_at": f"2024-0{1 + i % 9}-01T00:00:00Z"}}
                for i in range(10)]
    portrait.ingest_messages([*messages, {"type": "identify", "userId": "u-no-traits"}])
    portrait.process_pending()
    age = client.get("/api/attributes/age/analytics", headers=ADMIN).json()
    assert (age["profiles"], age["filled"], age["fill_rate"], age["distinct"]) == (11, 10, 0.9091, 10)
    assert (age["min"], age["max"], age["mean"], age["quantiles"]["p50"]) == (20, 29, 24.5, 24.5)
    assert [b["count"] for b in age["histogram"]] == [1] * 10
    off = client.get("/api/attributes/plan/analytics", headers=ADMIN)
    assert off.status_code == 400 and off.json()["code"] == "analytics_off"
    client.patch("/api/attributes/plan", headers=ADMIN, json={"calculate_analytics": True})
    plan = client.get("/api/attributes/plan/analytics", headers=ADMIN).json()
    assert plan["top_values"] == [{"value": "pro", "count": 6}, {"value": "free", "count": 4}]
    created = client.get("/api/attributes/created_at/analytics", headers=ADMIN).json()
    assert created["range"] == {"min": "2024-01-01T00:00:00.000Z", "max": "2024-09-01T00:00:00.000Z"}


def test_values_of_a_number_with_a_unit_are_shown_with_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Analytics said "mean 21.25" of a basket in PLN, the CLI's traits and breakdown tables "12.5": the unit was
    left out wherever people read the numbers. JSON gives it beside numbers that stay numbers."""
    monkeypatch.delenv("PORTRAIT_ADMIN_KEY", raising=False)
    db = str(tmp_path / "u.duckdb")
    service = Portrait(Settings(db_path=db, admin_key=ADMIN_KEY), background=False)
    service.create_attribute({"code": "basket", "name": "Basket", "type": "number", "unit": "PLN",
                              "calculate_analytics": True})
    service.create_attribute({"code": "shoe", "name": "Shoe", "type": "string", "unit": "EU",
                              "calculate_analytics": True})
    service.ingest_messages([{"type": "identify", "userId": f"u{i}", "traits": {"basket": b, "shoe": "42"}}
                             for i, b in enumerate([12.5, 30, 21.25])])
    service.process_pending()
    service.create_segment({"name": "baskets", "condition": "basket is set"})
    with TestClient(create_app(portrait=service)) as client:
        stats = client.get("/api/attributes/basket/analytics", headers=ADMIN).json()
        assert (stats["unit"], stats["mean"], stats["min"], stats["max"]) == ("PLN", 21.25, 12.5, 30)
        assert stats["top_values"][0]["value"] == 12.5 and stats["histogram"][0]["from"] == 12.5  # numbers
        split = client.get("/api/segments/baskets/breakdown", headers=ADMIN, params={"attribute": "basket"}).json()
        assert (split["type"], split["unit"], split["values"][0]["value"]) == ("number", "PLN", 12.5)
        client.post("/login", data={"key": ADMIN_KEY})
        page = client.get("/attributes/basket").text
        assert "mean 21.25 PLN, from 12.5 PLN to 30 PLN" in page and "<td>12.5 PLN</td>" in page
        assert "12.5\u201314.25 PLN" in page  # the histogram's first bar
        assert "<td>42</td>" in client.get("/attributes/shoe").text  # a text's unit is no number's: not added
    service.close()
    runner = CliRunner()
    shown = json.loads(runner.invoke(app, ["attributes", "analytics", "basket", "--db", db]).stdout)
    assert (shown["unit"], shown["mean"]) == ("PLN", 21.25)
    card = runner.invoke(app, ["profiles", "get", "user_id:u0", "--db", db], env={"COLUMNS": "200"})
    assert "12.5 PLN" in card.output and '"42" EU' not in card.output, card.output
    split_table = runner.invoke(app, ["analytics", "breakdown", "baskets", "basket", "--db", db])
    assert "12.5 PLN" in split_table.output and "30 PLN" in split_table.output, split_table.output


def test_the_range_of_dates_and_times_counts_the_offset(client: TestClient, portrait: Portrait) -> None:
    """The earliest and latest moment as segment conditions see them: 01:00 at +02:00 is 23:00 UTC the day before,
    earlier than 23:30Z; 10:00 at -05:00 is 15:00 UTC. A date stays a date."""
    client.post("/api/attributes", headers=ADMIN, json={"code": "signed_up_at", "name": "Signed up", "type": "datetime",
                                                        "calculate_analytics": True}).raise_for_status()
    client.post("/api/attributes", headers=ADMIN, json={"code": "renewal", "name": "Renewal", "type": "date",
                                                        "calculate_analytics": True}).raise_for_status()
    sent = [("2026-06-01T23:30:00Z", "2027-01-31"), ("2026-06-02T01:00:00+02:00", "2026-12-01"),
            ("2026-06-03T10:00:00-05:00", "2027-03-01"), ("2026-06-03T12:00:00.250Z", None)]
    portrait.ingest_messages([{"type": "identify", "userId": f"u{i}", "traits": {"signed_up_at": at, "renewal": day}}
                              for i, (at, day) in enumerate(sent)])
    portrait.process_pending()
    signed_up = client.get("/api/attributes/signed_up_at/analytics", headers=ADMIN).json()
    assert signed_up["range"] == {"min": "2026-06-01T23:00:00.000Z", "max": "2026-06-03T15:00:00.000Z"}
    renewal = client.get("/api/attributes/renewal/analytics", headers=ADMIN).json()
    assert renewal["range"] == {"min": "2026-12-01", "max": "2027-03-01"}
    empty = client.get("/api/attributes/birthday/analytics", headers=ADMIN).json()
    assert empty["range"] == {"min": None, "max": None}


def test_a_datetime_trait_is_kept_only_in_a_form_conditions_can_read(client: TestClient, portrait: Portrait) -> None:
    """ISO-8601 offsets without a colon (``+0100``, as PHP's DATE_ISO8601 and Java's ``Z`` write them) or minutes
    (``+01``) are read by both engines; text that only the database's lenient parser took (a zone name, a month
    without its zero) or a time before year 1 in UTC is a data-quality issue, not a value every condition, range
    and export reads as missing."""
    client.post("/api/attributes", headers=ADMIN, json={"code": "signed_up_at", "name": "Signed up", "type": "datetime",
                                                        "calculate_analytics": True}).raise_for_status()
    client.post("/api/segments", headers=ADMIN, json={"name": "march", "condition": "signed_up_at on 2026-03-29"}
                ).raise_for_status()
    sent = ["2026-03-29T01:30:00+0100", "2026-03-29T01:30:00+01", "2026-03-29 01:30:00 Europe/Warsaw",
            "2026-3-29T01:30:00Z", "0001-01-01T00:30:00+01:00"]
    portrait.ingest_messages([{"type": "identify", "userId": f"u{i}", "traits": {"signed_up_at": at}}
                              for i, at in enumerate(sent)])
    portrait.process_pending()
    preview = client.post("/api/segments/preview", headers=ADMIN, json={"condition": "signed_up_at on 2026-03-29"})
    assert preview.json()["count"] == 2  # the SQL engine
    assert [client.get(f"/api/segments/march/explain/user_id:u{i}", headers=ADMIN).json()["member"]
            for i in range(2)] == [True, True]  # the Python engine, after the batch
    analytics = client.get("/api/attributes/signed_up_at/analytics", headers=ADMIN).json()
    assert analytics["range"] == {"min": "2026-03-29T00:30:00.000Z", "max": "2026-03-29T00:30:00.000Z"}
    assert all("signed_up_at" not in portrait.traits(f"user_id:u{i}") for i in (2, 3, 4))
    issues = portrait.data_quality()["issues"]
    assert sorted(i["raw_value"] for i in issues) == sorted(f'"{at}"' for at in sent[2:])
    assert all(i["reason"].startswith("expected datetime") for i in issues)
    # Year 0 in UTC: kept, it stopped the Python engine (OverflowError) and so the whole segment, for everyone.
    assert client.get("/api/segments/march", headers=ADMIN).json()["error"] is None


def test_a_date_trait_is_kept_as_the_day_written_or_not_at_all(client: TestClient, portrait: Portrait) -> None:
    """A date attribute keeps the day as written (a time's offset does not move it: 00:30 at -05:00 on the 29th
    is the 29th), and only years 1-9999: the database wrote year 0 as ``0001-01-01 (BC)`` and kept it, a value
    every condition and range read as missing."""
    client.post("/api/attributes", headers=ADMIN, json={"code": "renewal", "name": "Renewal", "type": "date",
                                                        "calculate_analytics": True}).raise_for_status()
    sent = ["2026-03-29T00:30:00-05:00", "2026-3-9", "0000-01-01", "10000-01-01"]
    portrait.ingest_messages([{"type": "identify", "userId": f"u{i}", "traits": {"renewal": day}}
                              for i, day in enumerate(sent)])
    portrait.process_pending()
    assert [portrait.traits(f"user_id:u{i}").get("renewal") for i in range(4)] == [
        "2026-03-29", "2026-03-09", None, None]
    assert sorted(i["raw_value"] for i in portrait.data_quality()["issues"]) == ['"0000-01-01"', '"10000-01-01"']
    analytics = client.get("/api/attributes/renewal/analytics", headers=ADMIN).json()
    assert analytics["range"] == {"min": "2026-03-09", "max": "2026-03-29"}


def test_attribute_analytics_count_10_and_10_0_as_one_number(client: TestClient, portrait: Portrait) -> None:
    portrait.ingest_messages([{"type": "identify", "userId": f"u{i}", "traits": {"score": score}}
                              for i, score in enumerate([10, 10.0, 9.5, 2])])
    portrait.process_pending()
    client.patch("/api/attributes/score", headers=ADMIN, json={"calculate_analytics": True}).raise_for_status()
    score = client.get("/api/attributes/score/analytics", headers=ADMIN).json()
    assert (score["filled"], score["distinct"]) == (4, 3)
    assert score["top_values"] == [{"value": 10, "count": 2}, {"value": 2, "count": 1}, {"value": 9.5, "count": 1}]


def test_attribute_analytics_show_large_numbers_as_sent(client: TestClient, portrait: Portrait) -> None:
    """Whole numbers beyond 2^53 stay exact (a double made 9007199254740993 into ...992, and one value with it);
    1e300 stays 1e300 (it was written out as a 301-digit integer of the double's binary value); min and max of
    whole numbers are whole (20, not 20.0)."""
    for code, kind in (("card_number", "integer"), ("weight", "number")):
        client.post("/api/attributes", headers=ADMIN, json={"code": code, "name": code, "type": kind,
                                                            "calculate_analytics": True}).raise_for_status()
    cards = [9007199254740993, 9007199254740992, 9007199254740993, -3]
    weights = [1e300, 20, "20.0", -5.5]
    portrait.ingest_messages([{"type": "identify", "userId": f"u{i}", "traits": {"card_number": c, "weight": w}}
                              for i, (c, w) in enumerate(zip(cards, weights, strict=True))])
    portrait.process_pending()
    card = client.get("/api/attributes/card_number/analytics", headers=ADMIN)
    assert b'"min":-3,"max":9007199254740993,' in card.content
    assert card.json()["top_values"] == [{"value": 9007199254740993, "count": 2}, {"value": -3, "count": 1},
                                         {"value": 9007199254740992, "count": 1}]
    assert card.json()["distinct"] == 3
    weight = client.get("/api/attributes/weight/analytics", headers=ADMIN)
    assert b'"min":-5.5,"max":1e+300,' in weight.content
    assert weight.json()["top_values"] == [{"value": 20, "count": 2}, {"value": -5.5, "count": 1},
                                           {"value": 1e300, "count": 1}]
    assert b'{"value":20,"count":2}' in weight.content and weight.json()["distinct"] == 3
    age = client.get("/api/attributes/age/analytics", headers=ADMIN).json()  # no values at all
    assert (age["filled"], age["min"], age["max"], age["mean"], age["histogram"]) == (0, None, None, None, [])


def test_nan_and_infinity_sent_as_text_are_not_numbers(client: TestClient, portrait: Portrait) -> None:
    """DuckDB reads "NaN" and "Infinity" as doubles, but JSON holds neither: stored, they made the profile and its
    segment breakdowns unreadable (500) and attribute analytics answer null for the maximum and mean."""
    client.post("/api/attributes", headers=ADMIN, json={"code": "ltv", "name": "LTV", "type": "number",
                                                        "calculate_analytics": True}).raise_for_status()
    sent = {"a": 10, "b": "NaN", "c": "Infinity", "d": "-inf", "e": " 12.5 "}
    portrait.ingest_messages([{"type": "identify", "userId": user, "traits": {"ltv": value}}
                              for user, value in sent.items()])
    portrait.process_pending()
    assert [portrait.traits(f"user_id:{user}").get("ltv") for user in sent] == [10, None, None, None, 12.5]
    issues = portrait.data_quality(attribute="ltv")["issues"]
    assert sorted(i["raw_value"] for i in issues) == ['"-inf"', '"Infinity"', '"NaN"']
    assert {i["reason"] for i in issues} == {"expected number, got varchar"}
    ltv = client.get("/api/attributes/ltv/analytics", headers=ADMIN).json()
    assert (ltv["filled"], ltv["min"], ltv["max"], ltv["mean"]) == (2, 10, 12.5, 11.25)


def test_strict_mode_keeps_unknown_traits_out(tmp_path: Any) -> None:
    service = Portrait(Settings(db_path=str(tmp_path / "s.duckdb"), unknown_traits="strict"), background=False)
    service.ingest_messages([{"type": "identify", "userId": "u1", "traits": {"email": "a@example.com",
                                                                             "shoeSize": 42}}])
    service.process_pending()
    assert service.traits("user_id:u1") == {"email": "a@example.com"}
    issue = service.data_quality()["issues"][0]
    assert issue["attribute"] == "shoe_size" and "strict mode" in issue["reason"]
    assert service.attributes.list(standard=False) == []
    service.close()


def test_unknown_traits_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="infer or strict"):
        Settings(unknown_traits="lenient")


def test_a_recheck_on_a_server_with_segments_finishes(settings: Settings) -> None:
    """The recheck pauses the background processor, then applies what waits in the log and refreshes the segments
    it touched -- which pauses the processor again, from the same thread: with a plain lock that waited for itself,
    so POST /api/attributes/recheck never answered and processing and segment upkeep stopped for good."""
    service = Portrait(settings)
    done: list[dict[str, int]] = []
    try:
        service.create_segment({"name": "vip", "condition": 'title = "VIP"'})
        assert service._processor_thread and service._segment_thread
        service._processor_thread.stop()  # so the events below wait in the log for the recheck to apply
        service._segment_thread.stop()
        service.ingest_messages([{"type": "identify", "userId": "u1", "traits": {"title": "VIP"}}])
        worker = threading.Thread(target=lambda: done.append(service.rebuild_traits()), daemon=True)
        worker.start()
        worker.join(timeout=20)
        assert done == [{"values": 1, "issues": 0}]
        assert service.segments.get("vip")["size"] == 1
    finally:
        if done:
            service.close()


def test_recheck_after_a_schema_fix_applies_values_kept_out_before(tmp_path: Any) -> None:
    db = str(tmp_path / "r.duckdb")
    service = Portrait(Settings(db_path=db), background=False)
    service.attributes.create({"code": "size", "name": "Size", "type": "integer"})
    service.ingest_messages([{"type": "identify", "userId": "u1", "traits": {"size": "XL"}}])
    service.process_pending()
    assert service.traits("user_id:u1") == {} and len(service.data_quality()["issues"]) == 1
    service.attributes.update("size", {"type": "string"})  # the schema was wrong: sizes are letters
    service.create_segment({"name": "XL", "condition": 'size = "XL"'})
    assert service.segments.get("XL")["size"] == 0
    service.close()
    result = CliRunner().invoke(app, ["attributes", "recheck", "--db", db])
    assert result.exit_code == 0, result.output
    assert "Rechecked 1 trait values" in result.output and "issues now: 0" in result.output
    service = Portrait(Settings(db_path=db), background=False)
    assert service.traits("user_id:u1") == {"size": "XL"} and service.data_quality()["issues"] == []
    assert service.segments.get("XL")["size"] == 1  # segments recounted with the values the recheck applied
    service.process_pending()  # its Audience Entered event is in the log
    assert [e["properties"]["segment"] for e in service.events("user_id:u1", event="Audience Entered")["events"]
            ] == ["XL"]
    service.close()


def test_merge_strategies_within_batches_across_batches_and_profile_merges(portrait: Portrait) -> None:
    for code, kind, strategy in (("first_channel", "string", "earliest"), ("best_score", "number", "max"),
                                 ("lowest_price", "number", "min"), ("points", "integer", "sum"),
                                 ("tags", "list", "union")):
        portrait.attributes.create({"code": code, "name": code, "type": kind, "merge_strategy": strategy})

    def identify(who: dict[str, str], at: str, **traits: Any) -> dict[str, Any]:
        return {"type": "identify", **who, "timestamp": at, "traits": traits}

    user, device = {"userId": "u1"}, {"anonymousId": "d1"}
    portrait.ingest_messages([
        identify(user, "2026-01-02T00:00:00Z", first_channel="email", best_score=5, lowest_price=30, points=10,
                 tags=["a"]),
        identify(user, "2026-01-01T00:00:00Z", first_channel="ads", best_score=7, lowest_price=40, points="5",
                 tags=["b", "a"]),
    ])
    portrait.process_pending()
    portrait.ingest_messages([identify(device, "2025-12-31T00:00:00Z", first_channel="social", best_score=9,
                                       lowest_price=20, points=1, tags=["c"])])
    portrait.process_pending()
    portrait.ingest_messages([identify({**user, **device}, "2026-01-05T00:00:00Z", points=100)])  # merges d1 into u1
    portrait.process_pending()
    assert portrait.traits("user_id:u1") == {"first_channel": "social", "best_score": 9, "lowest_price": 20,
                                             "points": 116, "tags": ["a", "b", "c"]}


def test_numbers_are_read_as_written_and_what_is_no_number_is_kept_out(portrait: Portrait) -> None:
    """Text was read with DuckDB's casts: "nan", "inf" and "1e400" became a number attribute's value, stored as no
    JSON at all, and the profile could no longer be read (500); "12.5" became the integer 13. And a whole number
    sent as 10.0 (JSON does not tell it from 10) was refused by an integer attribute while "10.0" was taken."""
    portrait.attributes.create({"code": "points", "name": "Points", "type": "integer"})
    portrait.attributes.create({"code": "score", "name": "Score", "type": "number"})
    sent = {"a": (10.0, "1e3"), "b": ("12.0", ".5"), "c": (" -7 ", "-2.5E1"), "d": ("12.5", "nan"),
            "e": (12.5, "inf"), "f": ("0x1F", "-Infinity"), "g": (1e300, "1e400"), "h": ("1_000", "1_000")}
    portrait.ingest_messages([{"type": "identify", "userId": user, "messageId": user,
                               "traits": {"points": points, "score": score}}
                              for user, (points, score) in sent.items()])
    portrait.process_pending()
    assert {user: portrait.traits(f"user_id:{user}") for user in sent} == {
        "a": {"points": 10, "score": 1000.0}, "b": {"points": 12, "score": 0.5}, "c": {"points": -7, "score": -25.0},
        "d": {}, "e": {}, "f": {}, "g": {}, "h": {}}
    issues = sorted((i["message_id"], i["attribute"], i["reason"]) for i in portrait.data_quality()["issues"])
    assert issues == [(user, code, f"expected {kind}, got {got}") for user in "defgh"
                      for code, kind, got in (("points", "integer", "double" if user in "eg" else "varchar"),
                                              ("score", "number", "varchar"))]


def test_a_recheck_ends_while_events_keep_arriving(portrait: Portrait, monkeypatch: pytest.MonkeyPatch) -> None:
    """Steady traffic: a new event is logged whenever a batch has been applied. The recheck applies the log it found
    and recomputes; the events after are the processor's as usual. (It applied the log until it was caught up, which
    under steady traffic it never was: POST /api/attributes/recheck did not answer while events kept coming, and it
    held the processor's pause all that time -- erasures and segment upkeep waited behind it. Seen on a real server
    with two threads sending batches: a recheck still running after 120 s, an erasure queued meanwhile not done.)"""
    portrait.ingest_messages([{"type": "identify", "userId": f"u{i}", "traits": {"plan": "pro"}} for i in range(50)])
    arrived: list[int] = []
    process_next = portrait.processor.process_next

    def batch_then_traffic(session: Any) -> int:
        done = process_next(session)
        if done and len(arrived) < 200:
            portrait.ingest_messages([{"type": "identify", "userId": "u1", "traits": {"plan": "team"}}])
            arrived.append(done)
        return done

    monkeypatch.setattr(portrait.processor, "process_next", batch_then_traffic)
    assert portrait.rebuild_traits() == {"values": 50, "issues": 0}
    assert arrived == [50]  # one batch: the log as it was when the recheck began
    monkeypatch.undo()
    portrait.process_pending()  # what arrived meanwhile is the processor's, as usual
    assert portrait.status()["lag"] == 0 and portrait.traits("user_id:u1")["plan"] == "team"


def test_an_attribute_defined_while_its_first_values_are_processed_fails_no_batch(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """POST /api/attributes for a code whose first values the processor is applying in a batch that creates it from
    them: whichever committed second failed on the duplicate code -- here the processor's batch, which was logged
    with its traceback and retried one event at a time (a second collision would have set an event aside). Made to
    happen every time: the attribute is defined from inside the batch. Defining one now waits for the batch, and
    then finds it made (409, as for any attribute that exists: update it instead)."""
    service = Portrait(settings)  # server mode: the processor thread
    try:
        answered: list[object] = []
        record_quality = pipeline._record_quality

        def define() -> None:
            try:
                answered.append(service.create_attribute({"code": "shoe_size", "name": "Shoe size",
                                                          "type": "integer"}))
            except Conflict as exc:
                answered.append(exc.code)

        def define_meanwhile(session: Any, now: Any) -> None:
            record_quality(session, now)
            if not answered:
                worker = threading.Thread(target=define)
                worker.start()
                worker.join(3)  # done at once when nothing keeps it waiting

        monkeypatch.setattr(pipeline, "_record_quality", define_meanwhile)
        service.ingest_messages([{"type": "identify", "userId": f"u{i}", "traits": {"shoeSize": 40 + i}}
                                 for i in range(3)])
        service.wait_processed()
        deadline = time.monotonic() + 20
        while not answered and time.monotonic() < deadline:
            time.sleep(0.05)
        assert answered == ["attribute_exists"]
        assert service.processor.last_batch[0] == 3  # the batch, whole, not its events one by one
        assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
        assert [service.traits(f"user_id:u{i}")["shoe_size"] for i in range(3)] == [40, 41, 42]
    finally:
        service.close()
