"""Calculated attributes: definitions, values computed in SQL checked against plain Python, kept current per batch,
usable in segments, protected from events; built-in RFM."""

from __future__ import annotations

import re
import sys
from collections import Counter
from datetime import date, datetime, timedelta
from itertools import product
from pathlib import Path
from typing import Any

import pytest
from sqlglot import exp
from tests.conftest import utc_today_clear_of_midnight

from portrait.conditions import ConditionError
from portrait.conditions.calculations import definition_text, parse_definition
from portrait.errors import BadRequest
from portrait.service import Portrait
from portrait.spec import utc_now
from portrait.sql import parse
from portrait.sql.calculated import RFM_GROUP

NOW = utc_now()
ORDERS = {  # user -> [(days ago, revenue, currency)]
    "ann": [(100, 10.0, "EUR"), (40, 30.0, "EUR"), (3, 60.5, "USD")],
    "bob": [(200, 99.0, "PLN")],
    "cid": [],
}
VIEWS = {"ann": ["shoes", "hats", "shoes"], "bob": ["hats"], "cid": ["bags", "shoes", "bags", "shoes"]}
DEFINITIONS = {
    "orders_90d": 'count("Order Completed", within = 90d)',
    "total_revenue": 'sum("Order Completed", revenue)',
    "avg_order_value": 'avg("Order Completed", revenue)',
    "max_order": 'max("Order Completed", revenue, where currency = "EUR")',
    "first_currency": 'first_value("Order Completed", currency)',
    "last_currency": 'last_value("Order Completed", currency)',
    "favorite_category": 'most_frequent("Product Viewed", category)',
    "categories": 'unique_list("Product Viewed", category)',
    "category_count": 'distinct_count("Product Viewed", category)',
    "last_purchase_at": 'last_time("Order Completed")',
    "days_since_last_purchase": 'days_since(last_time("Order Completed"))',
    "age_in_years": "years_since(birthday)",
    "full_name": 'concat(first_name, " ", last_name)',
}


@pytest.fixture(autouse=True)
def now_as_the_test_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """NOW taken as each test starts, clear of midnight. Taken at import (when the suite was collected, minutes
    before), a run begun before midnight had the values computed a calendar day later than the test data:
    days_since counts calendar days (3 days ago became 4)."""
    utc_today_clear_of_midnight()
    monkeypatch.setattr(sys.modules[__name__], "NOW", utc_now())


def at(days: float) -> str:
    return (NOW - timedelta(days=days)).isoformat() + "Z"


def shop(portrait: Portrait) -> None:
    messages: list[dict[str, Any]] = [
        {"type": "identify", "userId": "ann", "traits": {"firstName": "Ann", "lastName": "Lee",
                                                         "birthday": "1990-06-15"}},
        {"type": "identify", "userId": "bob", "traits": {"firstName": "Bob"}},
        {"type": "identify", "userId": "cid", "traits": {}},
    ]
    for user, orders in ORDERS.items():
        messages += [{"type": "track", "userId": user, "event": "Order Completed", "timestamp": at(days),
                      "properties": {"revenue": revenue, "currency": currency}} for days, revenue, currency in orders]
    for user, views in VIEWS.items():
        messages += [{"type": "track", "userId": user, "event": "Product Viewed", "timestamp": at(50 - i),
                      "properties": {"category": category}} for i, category in enumerate(views)]
    portrait.ingest_messages(messages)
    portrait.process_pending()


def expected(user: str) -> dict[str, Any]:
    """The same values computed in plain Python from the test data."""
    orders = sorted(ORDERS[user], key=lambda o: -o[0])  # oldest first
    views = VIEWS[user]
    values: dict[str, Any] = {
        "orders_90d": sum(1 for days, _, _ in orders if days <= 90),
        "total_revenue": sum(r for _, r, _ in orders),
        "category_count": len(set(views)),
    }
    if orders:
        values.update(avg_order_value=sum(r for _, r, _ in orders) / len(orders), first_currency=orders[0][2],
                      last_currency=orders[-1][2], days_since_last_purchase=orders[-1][0])
        eur = [r for _, r, c in orders if c == "EUR"]
        if eur:
            values["max_order"] = max(eur)
    if views:
        counts = Counter(views)
        values["favorite_category"] = min(counts, key=lambda c: (-counts[c], c))
        values["categories"] = sorted(set(views))
    return values


@pytest.fixture
def calculated(portrait: Portrait) -> Portrait:
    shop(portrait)
    for code, definition in DEFINITIONS.items():
        portrait.create_attribute({"code": code, "name": code, "definition": definition})
    return portrait


@pytest.mark.parametrize("user", sorted(ORDERS))
def test_values_match_a_plain_python_computation(calculated: Portrait, user: str) -> None:
    traits = calculated.traits(f"user_id:{user}")
    got = {code: traits[code] for code in DEFINITIONS if code in traits}
    wanted = expected(user)
    for code in ("last_purchase_at", "age_in_years", "full_name"):
        got.pop(code, None)
    assert got == wanted  # the amounts add up exactly in binary floating point


def test_times_ages_and_names(calculated: Portrait) -> None:
    ann = calculated.traits("user_id:ann")
    assert ann["last_purchase_at"].startswith(at(3)[:16])
    today = NOW.date()
    born = date(1990, 6, 15)
    assert ann["age_in_years"] == today.year - born.year - ((today.month, today.day) < (born.month, born.day))
    assert ann["full_name"] == "Ann Lee"
    assert calculated.traits("user_id:bob")["full_name"] == "Bob"  # a missing part is left out
    assert "full_name" not in calculated.traits("user_id:cid")  # no part at all: no value
    registered = calculated.attributes.get("total_revenue")
    assert (registered["calculated"], registered["type"], registered["definition"]) == (
        True, "number", 'sum("Order Completed", revenue)')


def test_values_follow_new_events_and_feed_segments(calculated: Portrait) -> None:
    calculated.create_segment({"name": "big spenders", "condition": "total_revenue > 100"})
    assert calculated.segments.get("big spenders")["size"] == 1  # ann: 100.5
    calculated.ingest_messages([{"type": "track", "userId": "bob", "event": "Order Completed",
                                 "properties": {"revenue": 5, "currency": "EUR"}}])
    calculated.process_pending()
    bob = calculated.traits("user_id:bob")
    assert (bob["total_revenue"], bob["orders_90d"], bob["days_since_last_purchase"], bob["max_order"]) == (
        104.0, 1, 0, 5.0)
    assert calculated.segments.get("big spenders")["size"] == 2


def test_a_merge_in_a_batch_keeps_values_and_segments_current(portrait: Portrait) -> None:
    """A profile merged away in a batch is in that batch's scope (to leave its segments) but gets no calculated
    values: such values, written under a profile id that no longer exists, stopped every later refresh."""
    portrait.create_attribute({"code": "orders", "name": "Orders", "definition": 'count("Order Completed")'})
    portrait.create_segment({"name": "Buyers", "condition": 'performed("Order Completed")'})
    portrait.ingest_messages([{"type": "track", "anonymousId": "x-anon", "event": "Order Completed"}])
    portrait.process_pending()
    portrait.ingest_messages([{"type": "identify", "userId": "x-user"}])
    portrait.process_pending()
    portrait.ingest_messages([{"type": "identify", "userId": "x-user", "anonymousId": "x-anon"}])  # the merge
    portrait.process_pending()
    assert portrait.traits("user_id:x-user")["orders"] == 1
    portrait.ingest_messages([{"type": "track", "userId": "y-user", "event": "Order Completed"}])
    portrait.process_pending()
    assert portrait.traits("user_id:y-user") == {"orders": 1}
    assert portrait.segments.get("Buyers")["size"] == 2
    session = portrait.store.session()
    try:
        orphans = session.execute(parse(
            "SELECT count(*) FROM profile_traits WHERE profile_id NOT IN (SELECT profile_id FROM profiles)"))
    finally:
        session.close()
    assert orphans == [(0,)]


def test_events_cannot_set_a_calculated_attribute(calculated: Portrait) -> None:
    calculated.ingest_messages([{"type": "identify", "userId": "cid", "traits": {"totalRevenue": 1000000}}])
    calculated.process_pending()
    assert calculated.traits("user_id:cid")["total_revenue"] == 0
    issues = calculated.data_quality(attribute="total_revenue")["issues"]
    assert "is calculated by Portrait" in issues[0]["reason"]


def _create_rfm_attributes(portrait: Portrait) -> None:
    """rfm_recency, rfm_frequency, rfm_monetary and rfm_group over "Order Completed" and its revenue."""
    for part in ("recency", "frequency", "monetary"):
        portrait.create_attribute({"code": f"rfm_{part}", "name": part,
                                   "definition": f'rfm_score({part}, "Order Completed", revenue)'})
    portrait.create_attribute({"code": "rfm_group", "name": "RFM group",
                               "definition": 'rfm_group("Order Completed", revenue)'})


def test_rfm_scores_and_groups(portrait: Portrait) -> None:
    messages = []
    for i in range(25):  # customer i: bought i+1 times, last time i days ago, i*10 per order
        messages += [{"type": "track", "userId": f"c{i}", "event": "Order Completed", "timestamp": at(i + k * 30),
                      "properties": {"revenue": 10 * (i + 1)}} for k in range(i + 1)]
    portrait.ingest_messages(messages)
    portrait.process_pending()
    _create_rfm_attributes(portrait)
    scores = {f"c{i}": portrait.traits(f"user_id:c{i}") for i in range(25)}
    assert Counter(s["rfm_recency"] for s in scores.values()) == {1: 5, 2: 5, 3: 5, 4: 5, 5: 5}
    assert scores["c0"]["rfm_recency"] == 5 and scores["c24"]["rfm_recency"] == 1  # most recent scores highest
    assert scores["c24"]["rfm_frequency"] == 5 and scores["c24"]["rfm_monetary"] == 5
    assert scores["c0"]["rfm_group"] == "New Customers" and scores["c24"]["rfm_group"] == "Can't Lose Them"
    assert portrait.attributes.get("rfm_group")["type"] == "enum"


def test_rfm_customers_who_did_the_same_get_the_same_scores(portrait: Portrait) -> None:
    """ntile(5) split equal values by profile id: of six one-order buyers on the same day for the same amount, some
    scored F 1, others F 2 or 3 (and so another group) by their id alone. Equal values now share the lowest
    quintile their rank reaches."""
    messages = [{"type": "track", "userId": f"once{i}", "event": "Order Completed", "timestamp": at(10),
                 "properties": {"revenue": 20}} for i in range(6)]
    messages += [{"type": "track", "userId": f"often{i}", "event": "Order Completed", "timestamp": at(1 + k),
                  "properties": {"revenue": 100}} for i in range(4) for k in range(3 + i)]
    portrait.ingest_messages(messages)
    portrait.process_pending()
    _create_rfm_attributes(portrait)
    scores = {user: tuple(portrait.traits(f"user_id:{user}")[f"rfm_{part}"] for part in (
        "recency", "frequency", "monetary", "group")) for user in [f"once{i}" for i in range(6)]}
    assert set(scores.values()) == {(1, 1, 1, "Hibernating")}, scores
    often = [portrait.traits(f"user_id:often{i}")["rfm_frequency"] for i in range(4)]
    assert often == [4, 4, 5, 5], often  # ranks 7-10 of 10: 3 orders (7th), 4 (8th), 5 (9th), 6 (10th)


def test_rfm_recency_and_frequency_keep_counting_expired_events(portrait: Portrait) -> None:
    """docs/calculated.md: with retention on, RFM recency and frequency keep counting expired events (which profile
    did what and when is kept); only monetary loses the revenue of the deleted raw events. The scores read the raw
    log instead, so a loyal customer whose orders had all expired lost every score (and group) and was left out of
    everyone else's quintiles."""
    messages = [{"type": "track", "userId": "loyal", "event": "Order Completed", "timestamp": at(100 + k),
                 "properties": {"revenue": 500}} for k in range(6)]  # six big orders, all past the retention
    messages += [{"type": "track", "userId": f"c{i}", "event": "Order Completed", "timestamp": at(1 + i),
                  "properties": {"revenue": 10 * (i + 1)}} for i in range(4)]
    portrait.ingest_messages(messages)
    portrait.process_pending()
    _create_rfm_attributes(portrait)

    def scores() -> dict[str, tuple[Any, ...]]:
        return {user: tuple(portrait.traits(f"user_id:{user}").get(f"rfm_{part}") for part in (
            "recency", "frequency", "monetary", "group")) for user in ("loyal", "c0", "c1", "c2", "c3")}

    before = scores()
    assert before["loyal"] == (1, 5, 5, "Can't Lose Them")
    assert portrait.privacy.expire(30) == 6
    portrait.recalculate()
    after = scores()
    assert after["loyal"] == (1, 5, 1, "Can't Lose Them")  # its revenue is gone, not its orders
    assert {user: s[:2] + s[3:] for user, s in after.items()} == {user: s[:2] + s[3:] for user, s in before.items()}
    assert [after[f"c{i}"][2] for i in range(4)] == [2, 3, 4, 5]  # the kept revenue ranks above none


def _score_range(text: str) -> range:
    low, _, high = text.partition("-")
    return range(int(low), int(high or low) + 1)


def test_the_rfm_group_table_names_one_group_per_score_pair_and_the_store_agrees(portrait: Portrait) -> None:
    """docs/calculated.md's RFM group table, read as a marketer reads it (a cell belongs to a row when R and F are in
    its ranges and it is not in a row its "(not ...)" names), gives each of the 25 (R, F) pairs exactly one group:
    the one the store computes. The table gave R 4-5 with F 3 to both Loyal and Potential Loyalists."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "calculated.md").read_text()
    table = text.split("### RFM groups", 1)[1].split("Scores are", 1)[0]
    rows = re.findall(r"^\| ([A-Z][^|]+?) \| ([0-9-]+) \| ([0-9-]+)(?: \(not ([^)]+)\))? \|$", table, re.M)
    assert len(rows) == 9, table
    cells = {name: {(r, f) for r in _score_range(rs) for f in _score_range(fs)} for name, rs, fs, _ in rows}
    documented = {}
    for r, f in product(range(1, 6), repeat=2):
        groups = [name for name, _, _, unless in rows if (r, f) in cells[name] and (r, f) not in cells.get(unless, ())]
        assert len(groups) == 1, f"R {r}, F {f}: {groups}"
        documented[r, f] = groups[0]
    every_pair = exp.select("rs", "fs", RFM_GROUP).from_("range(1, 6) AS a(rs)").join("range(1, 6) AS b(fs)",
                                                                                     join_type="cross")
    computed = portrait._reads.execute(every_pair)
    assert {(int(r), int(f)): group for r, f, group in computed} == documented


@pytest.mark.parametrize(("text", "message"), [
    ('sum("Order Completed")', "expected ','"),
    ("count(Order)", "expected an event name in double quotes"),
    ('median("X", revenue)', "unknown function 'median'"),
    ("concat(\" \")", "needs at least one attribute"),
    ('rfm_score(loyalty, "X", revenue)', "expected recency, frequency or monetary"),
    ('count("X") extra', "at position 11: expected the end of the definition"),
])
def test_definition_errors_point_at_the_mistake(text: str, message: str) -> None:
    with pytest.raises(ConditionError) as raised:
        parse_definition(text)
    assert message in raised.value.message


@pytest.mark.parametrize("text", [*DEFINITIONS.values(), 'rfm_group("Order Completed", revenue)',
                                  'count("Login", from = 2026-01-01, to = 2026-02-01)', "days_since(created_at)"])
def test_definitions_print_back_the_same(text: str) -> None:
    assert definition_text(parse_definition(text)) == text


def test_a_given_type_must_match_the_definition(portrait: Portrait) -> None:
    with pytest.raises(BadRequest, match="yields integer, not string"):
        portrait.create_attribute({"code": "n", "name": "n", "type": "string", "definition": 'count("X")'})
    created = portrait.create_attribute({"code": "n", "name": "n", "definition": 'count("X")'})
    with pytest.raises(BadRequest, match="its type follows its definition"):
        portrait.update_attribute("n", {"type": "string"})
    assert created["type"] == "integer"



def test_a_definition_using_an_attribute_of_a_type_it_cannot_use_is_refused(portrait: Portrait, tmp_path: Any
                                                                            ) -> None:
    """days_since(first_name), years_since(plan) or concat(tags, ...) were accepted at creation (only a later type
    change was checked) and then gave every profile null or JSON text. Now 400 invalid_attribute at the definition,
    naming the attribute and the type it needs; in the API, the service and the CLI."""
    from fastapi.testclient import TestClient
    from tests.conftest import ADMIN_KEY
    from typer.testing import CliRunner

    from portrait.api import create_app
    from portrait.cli import app

    portrait.create_attribute({"code": "plan", "name": "Plan", "type": "string"})
    portrait.create_attribute({"code": "tags", "name": "Tags", "type": "list"})
    refused = {"days_since(first_name)": "cannot use first_name, a string attribute: it needs a date or datetime",
               "years_since(plan)": "cannot use plan, a string attribute: it needs a date or datetime",
               'concat(tags, " ", last_name)': "cannot use tags, a list attribute: it needs a single value"}
    with TestClient(create_app(portrait=portrait)) as client:
        for definition, reason in refused.items():
            answer = client.post("/api/attributes", json={"code": "x", "name": "x", "definition": definition},
                                 headers={"Authorization": f"Bearer {ADMIN_KEY}"})
            assert answer.status_code == 400, answer.text
            assert answer.json()["code"] == "invalid_attribute" and reason in answer.json()["message"]
            assert answer.json().get("field", "definition") == "definition"
    assert "x" not in {a["code"] for a in portrait.attributes.list()}
    portrait.create_attribute({"code": "tenure", "name": "Tenure", "definition": "days_since(created_at)"})
    with pytest.raises(BadRequest, match="cannot use plan, a string attribute") as caught:
        portrait.update_attribute("tenure", {"definition": "days_since(plan)"})
    assert caught.value.field == "definition"
    assert portrait.attributes.get("tenure")["definition"] == "days_since(created_at)"
    portrait.update_attribute("tenure", {"definition": "days_since(birthday)", "name": "Since birth"})  # a date
    portrait.create_attribute({"code": "label", "name": "Label", "definition": 'concat(first_name, " ", plan)'})
    db = portrait.settings.db_path
    portrait.close()
    result = CliRunner().invoke(app, ["attributes", "create", "age2", "--name", "Age", "--definition",
                                      "years_since(plan)", "--db", db])
    assert result.exit_code != 0 and "cannot use plan, a string attribute: it needs a date or datetime" in " ".join(
        result.output.split()), result.output

def test_a_type_change_that_breaks_a_definition_using_the_attribute_is_refused(portrait: Portrait) -> None:
    """Changing created_at to text or first_name to a list was checked against segments only: days_since(created_at)
    then gave every profile null and concat(first_name, ...) pasted JSON in, silently. Now 409 attribute_in_use
    names the definition, as for segments; changes that keep it sensible go through."""
    from fastapi.testclient import TestClient
    from tests.conftest import ADMIN_KEY

    from portrait.api import create_app

    for code, definition in (("tenure", "days_since(created_at)"), ("age_years", "years_since(birthday)"),
                             ("label", 'concat(first_name, " ", last_name)')):
        portrait.create_attribute({"code": code, "name": code, "definition": definition})
    with TestClient(create_app(portrait=portrait)) as client:
        def change(code: str, kind: str) -> Any:
            return client.patch(f"/api/attributes/{code}", json={"type": kind},
                                headers={"Authorization": f"Bearer {ADMIN_KEY}"})

        for code, kind, naming in (("created_at", "string", "tenure = days_since(created_at)"),
                                   ("birthday", "integer", "age_years = years_since(birthday)"),
                                   ("first_name", "list", 'label = concat(first_name, " ", last_name)')):
            answer = change(code, kind)
            assert answer.status_code == 409 and answer.json()["code"] == "attribute_in_use", answer.text
            assert naming in answer.json()["message"] and "change its definition first" in answer.json()["message"]
            assert portrait.attributes.get(code)["type"] != kind
        typo = change("created_at", "strin")  # not a type: the registry's 400, not "would no longer make sense"
        assert typo.status_code == 400 and typo.json()["code"] == "invalid_attribute", typo.text
        assert "is not one of" in typo.json()["message"]
        assert change("created_at", "date").status_code == 200  # still a date to count from
        assert change("first_name", "enum").status_code == 200  # still one value


def test_a_definition_an_attribute_created_later_breaks_is_marked_and_not_computed(portrait: Portrait) -> None:
    """A definition may name an attribute not defined yet. When the processor then created it from traits with a
    type the definition cannot use (a date arrives as JSON text; tags as a list), nothing checked it: concat pasted
    JSON text into every profile and days_since went on counting from text. Now the definition says why in its
    `error` (API, CLI, console), is not computed meanwhile, and the processor goes on; giving the attribute a type
    that fits clears it. Creating such an attribute through the API is refused, as a type change is."""
    from fastapi.testclient import TestClient
    from tests.conftest import ADMIN_KEY
    from typer.testing import CliRunner

    from portrait.api import create_app
    from portrait.cli import app

    portrait.create_attribute({"code": "signup_days", "name": "Days since sign-up",
                               "definition": "days_since(signup_date)"})
    portrait.create_attribute({"code": "label", "name": "Label", "definition": 'concat(nick, " ", tags)'})
    portrait.create_attribute({"code": "age_years", "name": "Age", "definition": "years_since(born)"})
    portrait.ingest_messages([{"type": "identify", "userId": "u1", "traits": {
        "signup_date": "2024-01-01", "tags": ["a", "b"], "nick": "Al"}}])
    portrait.process_pending()
    assert portrait.process_pending() == 0  # nothing left behind, nothing failing
    assert (portrait.attributes.get("signup_date")["type"], portrait.attributes.get("tags")["type"]) == (
        "string", "list")
    traits = portrait.traits("user_id:u1")
    assert "label" not in traits and "signup_days" not in traits  # not '["a","b"]' pasted in
    assert portrait.attributes.get("label")["error"] == (
        'cannot be computed, its values are kept as they were: concat(nick, " ", tags) cannot use tags, a list '
        "attribute: it needs a single value (not a list or object); change the definition or the type of tags")
    assert "cannot use signup_date, a string attribute: it needs a date or datetime" in \
        portrait.attributes.get("signup_days")["error"]
    assert portrait.attributes.get("age_years")["error"] is None  # born is not defined yet: nothing to say
    assert portrait.attributes.get("first_name")["error"] is None
    with TestClient(create_app(portrait=portrait)) as client:
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        listed = {a["code"]: a for a in client.get("/api/attributes", headers=admin).json()["attributes"]}
        assert "cannot use tags, a list attribute" in listed["label"]["error"]
        born = client.post("/api/attributes", headers=admin, json={"code": "born", "name": "Born", "type": "string"})
        assert born.status_code == 409 and born.json()["code"] == "attribute_in_use", born.text
        assert "age_years = years_since(born)" in born.json()["message"]
        assert client.post("/api/attributes", headers=admin, json={"code": "born", "name": "Born", "type": "date"}
                           ).status_code == 201
        client.post("/login", data={"key": ADMIN_KEY})
        page = client.get("/attributes/label").text
        assert "cannot use tags, a list attribute" in page
        fixed = client.patch("/api/attributes/signup_date", headers=admin, json={"type": "date"})
        assert fixed.status_code == 200, fixed.text
    assert portrait.attributes.get("signup_days")["error"] is None
    assert portrait.traits("user_id:u1")["signup_days"] == (utc_now().date() - date(2024, 1, 1)).days
    db = portrait.settings.db_path
    portrait.close()
    shown = CliRunner().invoke(app, ["attributes", "show", "label", "--db", db])
    assert shown.exit_code == 0 and "cannot use tags, a list attribute" in shown.output, shown.output
    listed = CliRunner().invoke(app, ["attributes", "list", "--kind", "custom", "--db", db])
    assert listed.exit_code == 0 and "broken" in listed.output, listed.output


@pytest.mark.parametrize(("now", "age", "days"), [
    (datetime(2026, 3, 28, 23, 59), 26, 0),
    (datetime(2026, 3, 29, 0, 1), 26, 1),  # 31 minutes after the sign-up, but a UTC midnight has passed
    (datetime(2027, 2, 28, 23, 59), 26, 337),
    (datetime(2027, 3, 1), 27, 338),  # a 29 February birthday adds its year on 1 March in other years
    (datetime(2028, 2, 29), 28, 703),
])
def test_days_and_years_since_count_utc_days(portrait: Portrait, now: datetime, age: int, days: int) -> None:
    """As docs/concepts.md#time says: days_since counts UTC midnights, years_since full years on the UTC date."""
    portrait.ingest_messages([{"type": "identify", "userId": "leap", "traits": {
        "birthday": "2000-02-29", "created_at": "2026-03-29T00:30:00+01:00"}}])  # 23:30 UTC on 28 March
    portrait.process_pending()
    portrait.create_attribute({"code": "age_years", "name": "Age", "definition": "years_since(birthday)"})
    portrait.create_attribute({"code": "tenure_days", "name": "Tenure", "definition": "days_since(created_at)"})
    assert portrait.segments.recalculate(now=now) == 2
    traits = portrait.traits("user_id:leap")
    assert (traits["age_years"], traits["tenure_days"]) == (age, days)


def test_a_deprecated_calculated_attribute_keeps_its_values_through_a_recheck(portrait: Portrait) -> None:
    """docs/calculated.md: a deprecated calculated attribute keeps its last values and is no longer recomputed. A
    recheck (portrait attributes recheck, POST /api/attributes/recheck) emptied every trait and read the log again --
    which never sets calculated values -- so they were gone for good (seen on a real server: a segment on such an
    attribute lost all its 150 members at the next recheck)."""
    portrait.create_attribute({"code": "orders", "name": "Orders", "definition": 'count("Order Completed")'})
    portrait.ingest_messages([{"type": "identify", "userId": "u1", "traits": {"plan": "pro"}},
                              {"type": "track", "userId": "u1", "event": "Order Completed"}])
    portrait.process_pending()
    assert portrait.traits("user_id:u1") == {"plan": "pro", "orders": 1}
    portrait.update_attribute("orders", {"status": "deprecated"})
    portrait.rebuild_traits()
    assert portrait.traits("user_id:u1") == {"plan": "pro", "orders": 1}
