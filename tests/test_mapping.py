"""Rows -> Segment messages (pure), and content-derived message ids."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import pytest

from portrait.errors import BadRequest
from portrait.mapping import MessageIds, RowMapping, combine, parse_mapping_text, rows_to_messages
from portrait.spec import Unreadable

ORDER = {"cust": "007", "day": "20190105", "total": 10.5, "sku": "A-1"}


@pytest.mark.parametrize(("mapping", "row", "expected"), [
    (RowMapping("events", user_id="cust", event="Order Completed", timestamp="day", timestamp_format="%Y%m%d"), ORDER,
     {"type": "track", "userId": "007", "event": "Order Completed", "timestamp": "2019-01-05T00:00:00+00:00",
      "properties": {"total": 10.5, "sku": "A-1"}}),
    (RowMapping("events", user_id="cust", event_column="sku", fields=("total",)), ORDER,
     {"type": "track", "userId": "007", "event": "A-1", "properties": {"total": 10.5}}),
    (RowMapping("events", anonymous_id="cust", event="X", email="mail"), {"cust": 1, "mail": "a@example.com"},
     {"type": "track", "anonymousId": "1", "event": "X", "properties": {},
      "context": {"traits": {"email": "a@example.com"}}}),
    (RowMapping("profiles", user_id="id", email="mail", phone="tel"),
     {"id": 5, "mail": "a@example.com", "tel": "+48512345678", "plan": "pro", "born": date(1990, 1, 2), "x": None},
     {"type": "identify", "userId": "5", "traits": {"plan": "pro", "born": "1990-01-02", "email": "a@example.com",
                                                    "phone": "+48512345678"}}),
    (RowMapping("profiles", identifier_columns={"loyalty_card": "card"}, timestamp="at"),
     {"card": "LC-1", "at": datetime(2020, 1, 1, 12, 0)},
     {"type": "identify", "traits": {}, "timestamp": "2020-01-01T12:00:00+00:00",
      "context": {"externalIds": [{"type": "loyalty_card", "id": "LC-1", "collection": "users",
                                   "encoding": "none"}]}}),
    (RowMapping("events", user_id="cust", event="X", timestamp="at", timestamp_format="%d.%m.%Y %H:%M %z"),
     {"cust": "1", "at": "29.03.2026 01:30 +0100"},
     {"type": "track", "userId": "1", "event": "X", "timestamp": "2026-03-29T01:30:00+01:00", "properties": {}}),
], ids=["fixed-event", "event-column", "email-in-context", "profile-traits", "external-id", "format-with-offset"])
def test_rows_become_messages(mapping: RowMapping, row: dict[str, Any], expected: dict[str, Any]) -> None:
    assert list(rows_to_messages([row], mapping)) == [expected]


def test_a_time_the_format_does_not_read_rejects_its_row_naming_the_format() -> None:
    """Passed on as text, it was rejected as "not an ISO-8601 date-time" -- or, written in ISO, taken, though the
    format is the only reading."""
    mapping = RowMapping("events", user_id="cust", event="X", timestamp="day", timestamp_format="%Y%m%d")
    rows = [{"cust": "1", "day": "yesterday"}, {"cust": "2", "day": "2019-01-05"}, {"cust": "3", "day": "20190105"}]
    first, second, third = rows_to_messages(rows, mapping)
    for rejected, row in ((first, rows[0]), (second, rows[1])):
        assert isinstance(rejected, Unreadable) and rejected.code == "invalid_timestamp" and rejected.row == row
        assert rejected.reason == f"column day: {row['day']!r} is not a time in the format %Y%m%d (like 20251224)"
    assert third["timestamp"] == "2019-01-05T00:00:00+00:00"


def test_a_whole_number_the_format_does_not_read_rejects_its_row_naming_the_format() -> None:
    """A JSON or Parquet time as a number (20190105 for %Y%m%d) was read by the format; one the format does not
    read (20191345) was passed on and rejected as "not an ISO-8601 date-time", which no one had asked for."""
    mapping = RowMapping("events", user_id="cust", event="X", timestamp="day", timestamp_format="%Y%m%d")
    good, bad = rows_to_messages([{"cust": "1", "day": 20190105}, {"cust": "2", "day": 20191345}], mapping)
    assert good["timestamp"] == "2019-01-05T00:00:00+00:00"
    assert isinstance(bad, Unreadable) and bad.code == "invalid_timestamp"
    assert bad.reason == "column day: 20191345 is not a time in the format %Y%m%d (like 20251224)"


@pytest.mark.parametrize(("mapping", "message"), [
    (RowMapping("events", user_id="nope", event="X"), "the file has no column 'nope'"),
    (RowMapping("events", event="X"), "say which column identifies the person"),
    (RowMapping("events", user_id="cust"), "say which event the rows are"),
])
def test_incomplete_mappings_are_refused_with_what_is_missing(mapping: RowMapping, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        mapping.check(ORDER)


def test_message_ids_follow_content_and_count_identical_copies() -> None:
    first, second = MessageIds(), MessageIds()
    rows = [{"type": "track", "event": "A"}, {"type": "track", "event": "A"}, {"type": "track", "event": "B"},
            {"type": "track", "event": "C", "messageId": "given"}]
    ids_first = [first.assign(r)["messageId"] for r in rows]
    ids_again = [second.assign(r)["messageId"] for r in rows]
    assert ids_first == ids_again  # a re-import gives the same ids
    assert len(set(ids_first)) == 4 and ids_first[0].endswith("-0") and ids_first[1].endswith("-1")
    assert ids_first[3] == "given"


def test_rows_read_with_an_offset_keep_the_message_ids_they_were_imported_with() -> None:
    """A ``%z`` offset once gave way to UTC (the row's time moved by the offset): the time is now right, and the ids
    still derive from the message as it was then, so importing such a file again adds nothing."""
    mapping = RowMapping("events", user_id="cust", event="X", timestamp="at", timestamp_format="%Y-%m-%d %H:%M%z")
    row = {"cust": "1", "at": "2026-03-29 01:30+0100"}
    then = {"type": "track", "userId": "1", "event": "X", "timestamp": "2026-03-29T01:30:00+00:00", "properties": {}}
    [message] = rows_to_messages([row], mapping, MessageIds())
    assert message["timestamp"] == "2026-03-29T01:30:00+01:00"
    assert message["messageId"] == MessageIds().assign(then)["messageId"]


@pytest.mark.parametrize("mapping", [
    RowMapping("events", user_id="cust", event="Order Completed", timestamp="day", timestamp_format="%Y%m%d"),
    RowMapping("events", email="mail", event_column="sku", fields=("total",), message_id="id"),
    RowMapping("profiles", identifier_columns={"loyalty_card": "card"}, fields=("a", "b"), renames={"a": "plan"}),
    RowMapping("profiles", phone="tel", anonymous_id="anon"),
])
def test_mapping_documents_round_trip(mapping: RowMapping) -> None:
    assert RowMapping.from_document(mapping.to_document(), mapping.kind) == mapping


def test_a_yaml_mapping_file_names_identifiers_and_renames_columns() -> None:
    document = parse_mapping_text("""
identifiers:
  user_id: cust
  loyalty_card: card
event: Order Completed
timestamp: day
timestamp_format: "%Y%m%d"
properties: {total: revenue, sku: sku}
""", "orders.yaml")
    mapping = RowMapping.from_document(document, "events")
    row = {**ORDER, "card": "L-9"}
    assert list(rows_to_messages([row], mapping)) == [{
        "type": "track", "userId": "007", "event": "Order Completed", "timestamp": "2019-01-05T00:00:00+00:00",
        "properties": {"revenue": 10.5, "sku": "A-1"},
        "context": {"externalIds": [{"type": "loyalty_card", "id": "L-9", "collection": "users", "encoding": "none"}]},
    }]


@pytest.mark.parametrize(("text", "message"), [
    ("identifiers: [a, b]", "'identifiers' must map names to column names"),
    ("identifiers: {user_id: id}\ncolumns: x", "unknown mapping settings columns"),
    ("kind: profiles\nidentifiers: {user_id: id}", "the mapping is for profiles, not events"),
    ("event: 12", "'event' must be text"),
    ("- just\n- a list", "must be an object of settings"),
    ("identifiers: {user_id: [", "is not valid YAML or JSON"),
])
def test_bad_mapping_documents_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(BadRequest) as raised:
        RowMapping.from_document(parse_mapping_text(text, "m.yaml"), "events")
    assert message in raised.value.message


def test_column_options_override_the_mapping_document() -> None:
    document = {"identifiers": {"user_id": "cust"}, "event": "A", "properties": {"total": "revenue"}}
    mapping = combine("events", document, "total,sku", {"event": "B", "email": None})
    assert mapping == RowMapping("events", user_id="cust", event="B", fields=("total", "sku"))
    assert combine("events", None, None, {"event": None}) is None  # no mapping: the rows are messages
    assert combine("profiles", None, None, {}) == RowMapping("profiles")
