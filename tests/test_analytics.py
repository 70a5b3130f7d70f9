"""Analytics: funnels with a conversion window, segment breakdowns and sizes, through the service, API and CLI."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.conftest import ADMIN_KEY, utc_today_clear_of_midnight
from typer.testing import CliRunner

from portrait.api import create_app
from portrait.cli import app
from portrait.config import Settings
from portrait.errors import BadRequest, NotFound
from portrait.event_names import closest_name
from portrait.service import Portrait
from portrait.spec import utc_now

NOW = utc_now()
STEPS = ["Product Viewed", "Product Added", "Checkout Started", "Order Completed"]
# user -> (hours ago, event) pairs
JOURNEYS: dict[str, list[tuple[float, str]]] = {
    "buyer": [(50, "Product Viewed"), (49, "Product Added"), (48, "Checkout Started"), (47, "Order Completed")],
    "abandoner": [(30, "Product Viewed"), (29, "Product Added")],
    "late": [(300, "Product Viewed"), (299, "Product Added"), (2, "Checkout Started")],  # checkout after 7 days
    "out_of_order": [(20, "Product Added"), (10, "Product Viewed")],  # added before viewing: step 2 not reached
    "browser": [(5, "Product Viewed")],
    "old": [(24 * 40, "Product Viewed"), (24 * 40 - 1, "Product Added")],  # first step before the 30 days
}


def load(portrait: Portrait) -> None:
    countries = {"buyer": "PL", "abandoner": "PL", "late": "TR", "out_of_order": "DE", "browser": "PL", "old": "TR"}
    messages: list[dict[str, Any]] = [{"type": "identify", "userId": u, "traits": {"country": c}}
                                      for u, c in countries.items()]
    messages += [{"type": "track", "userId": user, "event": event,
                  "timestamp": (NOW - timedelta(hours=hours)).isoformat() + "Z"}
                 for user, steps in JOURNEYS.items() for hours, event in steps]
    portrait.ingest_messages(messages)
    portrait.process_pending()


def test_a_funnel_counts_each_step_in_order_within_the_window(portrait: Portrait) -> None:
    load(portrait)
    found = portrait.funnel({"steps": STEPS, "within": "7d"})
    assert [(s["event"], s["profiles"], s["dropped"]) for s in found["steps"]] == [
        ("Product Viewed", 5, 0), ("Product Added", 3, 2), ("Checkout Started", 1, 2), ("Order Completed", 1, 0)]
    assert found["steps"][1]["conversion_from_previous"] == 0.6  # "late" checks out after the 7 days: not counted
    assert found["steps"][3]["conversion_from_start"] == 0.2
    wider = portrait.funnel({"steps": STEPS[:3], "within": "2w", "from": (NOW - timedelta(days=20)).isoformat()})
    assert [s["profiles"] for s in wider["steps"]] == [5, 3, 2]  # "late" enters (300 h ago) and now checks out


def test_one_event_fills_one_step_of_a_funnel(portrait: Portrait) -> None:
    at = (NOW - timedelta(hours=5)).isoformat() + "Z"
    later = (NOW - timedelta(hours=4)).isoformat() + "Z"
    portrait.ingest_messages([
        {"type": "track", "userId": "once", "event": "Product Viewed", "timestamp": at},
        {"type": "track", "userId": "twice", "event": "Product Viewed", "timestamp": at},
        {"type": "track", "userId": "twice", "event": "Product Viewed", "timestamp": later},
        {"type": "track", "userId": "same_time", "event": "Product Viewed", "timestamp": at},
        {"type": "track", "userId": "same_time", "event": "Product Viewed", "timestamp": at},
        {"type": "track", "userId": "same_time", "event": "Product Added", "timestamp": at},
    ])
    portrait.process_pending()
    repeated = portrait.funnel({"steps": ["Product Viewed", "Product Viewed"]})
    assert [s["profiles"] for s in repeated["steps"]] == [3, 2]  # "once" viewed once: not a second view
    thrice = portrait.funnel({"steps": ["Product Viewed", "Product Viewed", "Product Viewed"]})
    assert [s["profiles"] for s in thrice["steps"]] == [3, 2, 0]
    back = portrait.funnel({"steps": ["Product Viewed", "Product Added", "Product Viewed"]})
    assert [s["profiles"] for s in back["steps"]] == [3, 1, 0]  # the view before the add is not a view after it


def test_funnels_of_a_segment_and_breakdowns(portrait: Portrait) -> None:
    load(portrait)
    portrait.create_segment({"name": "poles", "condition": 'country = "PL"'})
    found = portrait.funnel({"steps": STEPS[:2], "segment": "poles"})
    assert [s["profiles"] for s in found["steps"]] == [3, 2]
    portrait.create_segment({"name": "viewers", "condition": 'performed("Product Viewed")'})
    split = portrait.segment_breakdown("viewers", "country")
    assert split["size"] == 6
    assert split["values"] == [{"value": "PL", "profiles": 3, "share": 0.5}, {"value": "TR", "profiles": 2,
                                                                               "share": 0.3333},
                               {"value": "DE", "profiles": 1, "share": 0.1667}]
    assert (split["other_values"], split["not_set"]) == (0, 0)
    assert portrait.segments.sizes("viewers")["sizes"][0]["size"] == 6
    top = portrait.segment_breakdown("viewers", "country", top=1)
    assert (top["values"][0]["value"], top["other_values"], top["not_set"]) == ("PL", 3, 0)
    portrait.ingest_messages([{"type": "track", "userId": "no-country", "event": "Product Viewed"}])
    portrait.process_pending()
    split = portrait.segment_breakdown("viewers", "country")
    assert (split["size"], split["other_values"], split["not_set"]) == (7, 0, 1)  # members without one count too


def test_a_breakdown_by_a_number_counts_10_and_10_0_as_one_value(portrait: Portrait) -> None:
    """As attribute analytics do: the breakdown said 10.0 for 3 members and 10 for 1, attribute analytics 10 for 4."""
    portrait.create_attribute({"code": "ltv", "name": "LTV", "type": "number", "calculate_analytics": True})
    portrait.ingest_messages([{"type": "identify", "userId": f"u{i}", "traits": {"ltv": v, "country": "PL"}}
                              for i, v in enumerate([10, 10.0, "10", "10.0", 9.5, 9007199254740993])])
    portrait.process_pending()
    portrait.create_segment({"name": "poles", "condition": 'country = "PL"'})
    split = portrait.segment_breakdown("poles", "ltv", top=2)
    assert split["values"] == [{"value": 10, "profiles": 4, "share": 0.6667},
                               {"value": 9.5, "profiles": 1, "share": 0.1667}]
    assert (split["other_values"], split["not_set"]) == (1, 0)
    assert portrait.attributes.analytics("ltv")["top_values"][:2] == [{"value": 10, "count": 4},
                                                                      {"value": 9.5, "count": 1}]
    assert portrait.segment_breakdown("poles", "ltv")["values"][-1]["value"] == 9007199254740993


def test_a_breakdown_by_an_unknown_attribute_is_refused(portrait: Portrait) -> None:
    load(portrait)
    portrait.create_segment({"name": "viewers", "condition": 'performed("Product Viewed")'})
    with pytest.raises(NotFound) as raised:
        portrait.segment_breakdown("viewers", "contry")
    assert "contry" in raised.value.message


@pytest.mark.parametrize(("fields", "message"), [
    ({"steps": ["A"]}, "steps is a list of 2 to 10 event names"),
    ({"steps": ["A", "B"], "within": "soon"}, 'within must be a duration such as "30d"'),
    ({"steps": ["A", "B"], "from": "yesterday"}, "from must be a date or time"),
    ({"steps": ["A", "B"], "from": "2026-02-01", "to": "2026-01-01"}, "'from' must be before 'to'"),
    ({"steps": ["A", "B"], "order": "any"}, "unknown funnel fields order"),
    ({"steps": ["A", "B"], "within": "99999999999999d"}, "within 99999999999999d is too long"),
    ({"steps": ["A", "B"], "within": "999999999d"}, "within 999999999d is too long"),
    ({"steps": ["A", "B"], "to": "0001-01-05"}, "'to' is too early"),
])
def test_bad_funnels_are_refused_clearly(portrait: Portrait, fields: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest) as raised:
        portrait.funnel(fields)
    assert message in raised.value.message


def test_the_api_and_cli(portrait: Portrait, tmp_path: Path) -> None:
    load(portrait)
    with TestClient(create_app(portrait=portrait)) as client:
        answer = client.post("/api/analytics/funnel", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                             json={"steps": STEPS[:2]})
        assert answer.status_code == 200, answer.text
        assert [s["profiles"] for s in answer.json()["steps"]] == [5, 3]
    db = str(tmp_path / "cli.duckdb")
    service = Portrait(Settings(db_path=db), background=False)
    load(service)
    service.close()
    result = CliRunner().invoke(app, ["analytics", "funnel", *STEPS, "--db", db])
    assert result.exit_code == 0, result.output
    assert "Funnel within 7d" in result.output and "20.0%" in result.output
    as_json = CliRunner().invoke(app, ["analytics", "funnel", *STEPS, "--db", db, "--json"])
    assert [s["profiles"] for s in json.loads(as_json.output)["steps"]] == [5, 3, 1, 1]


def test_the_overview_counts_events_per_whole_day(portrait: Portrait) -> None:
    # the chart's first day is 13 days before the server's today: today as the test runs, not as NOW (taken when the
    # suite was collected, minutes earlier: a run begun before midnight looked a day too far back)
    first_day = utc_today_clear_of_midnight() - timedelta(days=13)
    day_before = first_day - timedelta(days=1)
    stamps = [f"{day_before}T00:00:01Z", f"{day_before}T23:59:59Z", f"{first_day}T00:00:01Z",
              f"{first_day}T23:59:59Z"]
    portrait.ingest_messages([{"type": "track", "userId": "u", "event": "Seen", "timestamp": t} for t in stamps])
    portrait.process_pending()
    with TestClient(create_app(portrait=portrait)) as client:
        client.post("/login", data={"key": ADMIN_KEY})
        page = client.get("/")
    assert page.status_code == 200
    assert f"<title>{first_day.isoformat()[5:]}: 2</title>" in page.text  # both of that day's events
    assert f"<title>{day_before.isoformat()[5:]}:" not in page.text  # not a part of the day before


def test_a_funnel_answers_times_as_the_api_writes_them_and_its_own_error_code(portrait: Portrait) -> None:
    # from/to came as 2026-11-24T04:31:29.123456Z or 2026-10-01T00:00:00Z; a bad within as invalid_condition
    answer = portrait.funnel({"steps": ["A", "B"], "from": "2026-10-01"})
    assert answer["from"] == "2026-10-01T00:00:00.000Z"
    assert len(answer["to"]) == len("2026-10-01T00:00:00.000Z") and answer["to"].endswith("Z")
    with pytest.raises(BadRequest, match="within must be a duration") as refused:
        portrait.funnel({"steps": ["A", "B"], "within": 5})
    assert refused.value.code == "invalid_funnel"


def test_a_step_no_event_has_had_is_noted_with_the_closest_name(portrait: Portrait, tmp_path: Path) -> None:
    """A step misspelt or in another case counted zero, silently: a funnel of zeros read as no conversion."""
    load(portrait)
    portrait.ingest_messages([{"type": "page", "userId": "buyer", "name": "Pricing"}])  # a page's name counts
    portrait.process_pending()
    exact = portrait.funnel({"steps": [*STEPS, "Pricing"]})
    assert exact["notes"] == []
    found = portrait.funnel({"steps": ["Product Viewed", "product  added", "Checkout Strated", "Refund Issued"]})
    assert [s["profiles"] for s in found["steps"]] == [5, 0, 0, 0]
    assert found["notes"] == [
        "no event named 'product  added' has been received (did you mean 'Product Added'?): names match exactly, "
        "case too",
        "no event named 'Checkout Strated' has been received (did you mean 'Checkout Started'?): names match "
        "exactly, case too",
        "no event named 'Refund Issued' has been received: names match exactly, case too"]
    preview = portrait.segments.preview('performed("order completed") or performed("Product Viewed")')
    assert preview["notes"] == ["no event named 'order completed' has been received (did you mean "
                                "'Order Completed'?): names match exactly, case too"]
    with TestClient(create_app(portrait=portrait)) as client:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        answer = client.post("/api/analytics/funnel", headers=headers, json={"steps": ["Product Viewed", "Refund"]})
        assert answer.json()["notes"] == ["no event named 'Refund' has been received: names match exactly, case too"]
        previewed = client.post("/api/segments/preview", headers=headers,
                                json={"condition": 'performed("Pricing") and performed("Prcing")'})
        assert previewed.json()["notes"] == ["no event named 'Prcing' has been received (did you mean 'Pricing'?): "
                                             "names match exactly, case too"]
    db = str(tmp_path / "cli.duckdb")
    service = Portrait(Settings(db_path=db), background=False)
    load(service)
    service.close()
    funnel = CliRunner().invoke(app, ["analytics", "funnel", "Product Viewed", "order completed", "--db", db],
                                env={"COLUMNS": "200"})
    assert funnel.exit_code == 0, funnel.output
    assert "Note: no event named 'order completed' has been received (did you mean 'Order Completed'?)" in (
        funnel.output)
    previewed_cli = CliRunner().invoke(app, ["segments", "preview", 'performed("Refund")', "--db", db],
                                       env={"COLUMNS": "200"})
    assert "Note: no event named 'Refund' has been received: names match exactly, case too." in previewed_cli.output


def test_a_step_received_but_not_yet_processed_is_not_called_never_received(portrait: Portrait) -> None:
    """While the processor is behind, an event in the log but not yet in profiles was "never received", with a
    guess at a typo: it is said to be on its way."""
    load(portrait)
    portrait.ingest_messages([{"type": "track", "userId": "buyer", "event": "Refund Issued"}])  # not processed
    waiting = portrait.funnel({"steps": ["Order Completed", "Refund Issued", "Refund Isued"]})
    assert waiting["notes"] == [
        "events named 'Refund Issued' have been received but not processed yet: they count once they are "
        "(GET /api/status shows the lag)",
        "no event named 'Refund Isued' has been received: names match exactly, case too"]
    portrait.process_pending()
    assert portrait.funnel({"steps": ["Order Completed", "Refund Issued"]})["notes"] == []


@pytest.mark.parametrize(("name", "known", "meant"), [
    ("order completed", ["Order Completed", "Order Refunded"], "Order Completed"),
    ("Order  Completed ", ["Order Completed"], "Order Completed"),  # spaces
    ("Ordr Completed", ["Order Completed", "Order Refunded"], "Order Completed"),
    ("Signed Up", ["Order Completed", "Product Viewed"], None),  # nothing close: no guess
    ("product viewed", ["Product Viewed", "product viewed "], "Product Viewed"),  # the most frequent (first) wins
])
def test_the_closest_seen_name(name: str, known: list[str], meant: str | None) -> None:
    assert closest_name(name, known) == meant


def test_a_segment_saved_with_an_event_never_seen_says_so(portrait: Portrait) -> None:
    load(portrait)
    created = portrait.create_segment({"name": "Refunded", "condition": 'performed("Order refunded")'})
    assert created["size"] == 0 and created["notes"] == [
        "no event named 'Order refunded' has been received: names match exactly, case too"]
    changed = portrait.update_segment("Refunded", {"condition": 'performed("order completed")'})
    assert changed["notes"] == ["no event named 'order completed' has been received (did you mean "
                                "'Order Completed'?): names match exactly, case too"]
    fixed = portrait.update_segment("Refunded", {"condition": 'performed("Order Completed")'})
    assert fixed["size"] == 1 and "notes" not in fixed
    assert "notes" not in portrait.update_segment("Refunded", {"description": "buyers"})
    static = portrait.create_segment({"name": "VIP", "identities": ["user_id:buyer"]})
    assert "notes" not in static


def test_the_cli_says_a_new_segment_names_an_event_never_seen(tmp_path: Path) -> None:
    db = str(tmp_path / "cli.duckdb")
    service = Portrait(Settings(db_path=db), background=False)
    load(service)
    service.close()
    created = CliRunner().invoke(app, ["segments", "create", "Buyers", "--condition", 'performed("Order Complete")',
                                       "--db", db], env={"COLUMNS": "200"})
    assert created.exit_code == 0, created.output
    assert ("Note: no event named 'Order Complete' has been received (did you mean 'Order Completed'?): names match "
            "exactly, case too.") in created.output


def test_the_funnel_table_fits_the_terminal(tmp_path: Path) -> None:
    """A bar of 30 characters in 80 columns squeezed the other columns: 'Product Viewed' and the bar itself wrapped
    over several lines. The bar takes the room the table leaves, and is left out when there is none."""
    db = str(tmp_path / "cli.duckdb")
    service = Portrait(Settings(db_path=db), background=False)
    load(service)
    service.close()
    for columns, bar in (("80", 0), ("100", 19), ("200", 30)):  # 100: what the table leaves
        shown = CliRunner().invoke(app, ["analytics", "funnel", *STEPS, "--db", db], env={"COLUMNS": columns})
        assert shown.exit_code == 0, shown.output
        output = shown.output[shown.output.index("Funnel within"):]  # after the keys a new database prints
        lines = output.splitlines()
        assert max(map(len, lines)) <= int(columns), shown.output
        first = next(line for line in lines if "Product Viewed" in line)  # each step on one line: nothing wrapped
        assert first.count("#") == bar and len(lines) == 9, shown.output
