"""Tests for portrait.spec: the Segment wire format -> event-log columns and rejections.

Message-validation rules are a table in tests/cases/message_rules.json; the rest are small parametrized tables here.
"""

from __future__ import annotations

import base64
import gzip
import json
import time
import tracemalloc
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portrait.errors import BadRequest
from portrait.model import MESSAGE_TYPES, Rejection
from portrait.spec import (
    MAX_ID_LENGTH,
    EventColumns,
    Limits,
    MessageReader,
    ParsedRequest,
    RefusedBody,
    _cut_deep_text,
    decode_body,
    kept_json,
    key_from_basic_auth,
    parse_request,
    raw_preview,
)

LIMITS = Limits(max_message_bytes=32 * 1024, max_batch_bytes=500 * 1024, max_batch_items=2500)
RECEIVED = datetime(2024, 6, 1, 12, 0, 0)
RULES: list[dict[str, Any]] = json.loads((Path(__file__).parent / "cases" / "message_rules.json").read_text())["cases"]
ReadResult = tuple[EventColumns, list[Rejection]]


def read(messages: list[Any], *, body_bytes: int = 100, limits: Limits = LIMITS, ip: str | None = "203.0.113.9",
         sent_at: Any = None, context: dict[str, Any] | None = None) -> ReadResult:
    request = ParsedRequest(messages, "wk", sent_at, context)
    reader = MessageReader(received_at=RECEIVED, source="web", ip=ip, request=request, limits=limits,
                           body_bytes=body_bytes)
    return reader.read_all()


def read_one(message: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Read one message that must be valid; returns its row as a dict of column -> value."""
    columns, rejections = read([message], **kwargs)
    assert rejections == [], rejections
    assert len(columns) == 1
    return {name: values[0] for name, values in columns.as_dict().items()}


# -- rejections -----------------------------------------------------------------------------------------------------

def _assert_rejected(message: Any, code: str, mention: str, **kwargs: Any) -> None:
    columns, rejections = read([message], **kwargs)
    assert len(columns) == 0
    assert len(rejections) == 1
    rejection = rejections[0]
    assert rejection.code == code
    assert mention in rejection.reason
    assert orjson.loads(rejection.payload) == message
    assert rejection.received_at == RECEIVED
    assert rejection.source == "web"
    message_id = message.get("messageId") if isinstance(message, dict) else None
    expected_id = str(message_id) if isinstance(message_id, str | int) and not isinstance(message_id, bool) else None
    assert rejection.message_id == expected_id


@pytest.mark.parametrize("case", RULES, ids=[c["id"] for c in RULES])
def test_message_rule(case: dict[str, Any]) -> None:
    _assert_rejected(case["message"], case["code"], case["mention"])


LONG = "x" * (MAX_ID_LENGTH + 1)


@pytest.mark.parametrize(("message", "mention"), [
    ({"type": "identify", "userId": LONG}, "userId"),
    ({"type": "page", "anonymousId": LONG}, "anonymousId"),
    ({"type": "group", "userId": "u1", "groupId": LONG}, "groupId"),
    ({"type": "alias", "userId": "u1", "previousId": LONG}, "previousId"),
    ({"type": "identify", "userId": "u1", "messageId": LONG}, "messageId"),
], ids=["userId", "anonymousId", "groupId", "previousId", "messageId"])
def test_identifier_longer_than_limit_is_invalid(message: dict[str, Any], mention: str) -> None:
    _assert_rejected(message, "invalid_field", mention)


def test_identifier_at_the_limit_is_accepted() -> None:
    assert read_one({"type": "identify", "userId": "x" * MAX_ID_LENGTH})["user_id"] == "x" * MAX_ID_LENGTH


SMALL = Limits(max_message_bytes=200, max_batch_bytes=500 * 1024, max_batch_items=2500)
BIG_MESSAGE = {"type": "track", "userId": "u1", "event": "e", "messageId": "m-big", "properties": {"blob": "y" * 300}}


def test_oversize_message_rejected_when_body_is_larger_than_message_limit() -> None:
    _assert_rejected(BIG_MESSAGE, "message_too_large", "bytes", limits=SMALL, body_bytes=10_000)


def test_message_size_not_checked_when_body_is_within_message_limit() -> None:
    # The reader trusts body_bytes: a body no larger than the message limit cannot hold an oversize message.
    columns, rejections = read([BIG_MESSAGE], limits=SMALL, body_bytes=200)
    assert (len(columns), rejections) == (1, [])


def test_rejections_do_not_stop_the_batch() -> None:
    good = {"type": "identify", "userId": "u1", "messageId": "ok-1"}
    columns, rejections = read([good, 5, {"type": "track", "userId": "u1"}, {**good, "messageId": "ok-2"}])
    assert columns.message_id == ["ok-1", "ok-2"]
    assert [r.code for r in rejections] == ["invalid_message", "missing_field"]


# -- valid messages -------------------------------------------------------------------------------------------------

VALID: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"type": "identify", "userId": "u1", "traits": {"email": "a@b.c"}, "messageId": "m1"},
     {"type": "identify", "user_id": "u1", "anonymous_id": None, "event": None, "message_id": "m1",
      "traits": {"email": "a@b.c"}, "properties": {}}),
    ({"type": "track", "anonymousId": "a1", "event": "Order Completed", "properties": {"total": 9.5}},
     {"type": "track", "user_id": None, "anonymous_id": "a1", "event": "Order Completed",
      "properties": {"total": 9.5}, "traits": {}}),
    ({"type": "page", "userId": "u1", "name": "Home", "properties": {"path": "/"}},
     {"type": "page", "event": "Home", "properties": {"path": "/"}}),
    ({"type": "page", "userId": "u1"}, {"type": "page", "event": None}),
    ({"type": "screen", "anonymousId": "a2", "name": "Settings"}, {"type": "screen", "event": "Settings"}),
    ({"type": "group", "userId": "u1", "groupId": "g1", "traits": {"plan": "pro"}},
     {"type": "group", "group_id": "g1", "traits": {"plan": "pro"}}),
    ({"type": "group", "userId": "u1", "groupId": 77}, {"group_id": "77"}),
    ({"type": "alias", "userId": "u2", "previousId": "anon-9"},
     {"type": "alias", "user_id": "u2", "previous_id": "anon-9"}),
    ({"type": "alias", "userId": 2, "previousId": 1}, {"user_id": "2", "previous_id": "1"}),
    ({"type": "identify", "userId": 12345}, {"user_id": "12345"}),
    ({"type": "identify", "userId": 1.5}, {"user_id": "1.5"}),
    # JSON does not tell 1.0 from 1: a whole number is the integer, whichever way a client wrote it; the
    # messageId stays as it was always read, so a message sent again is still a copy of the one logged before
    ({"type": "identify", "userId": 1.0, "anonymousId": -0.0, "messageId": 1.0},
     {"user_id": "1", "anonymous_id": "0", "message_id": "1.0"}),
    ({"type": "alias", "userId": 2.0, "previousId": 1.0}, {"user_id": "2", "previous_id": "1"}),
    ({"type": "group", "userId": "u1", "groupId": 77.0}, {"group_id": "77"}),
    ({"type": "identify", "userId": 1e20}, {"user_id": "1e+20"}),  # past 2**53 a float's digits are lost already
    ({"type": "identify", "userId": "u1", "traits": {"phone": 48601234567.0, "email": 1.5},
      "context": {"externalIds": [{"type": "crm", "id": 555.0}]}},
     {"identity_hints": "phone\x1f48601234567\x1ecrm\x1f555"}),  # a fraction is no identifier, as before
    ({"type": "identify", "userId": "", "anonymousId": "a1"}, {"user_id": None, "anonymous_id": "a1"}),
    ({"type": "identify", "userId": "u1", "anonymousId": ""}, {"user_id": "u1", "anonymous_id": None}),
    ({"type": "identify", "userId": "u1", "groupId": "", "previousId": ""}, {"group_id": None, "previous_id": None}),
    ({"type": "identify", "userId": "u1", "messageId": 42}, {"message_id": "42"}),
    ({"type": "track", "userId": "u1", "event": "e", "name": 5}, {"event": "e"}),  # name is not track's field
    ({"type": "page", "userId": "u1", "event": 5, "name": "Home"}, {"event": "Home"}),  # nor event page's
    ({"type": "identify", "userId": "u1", "properties": None, "traits": None}, {"properties": {}, "traits": {}}),
    ({"type": "identify", "userId": "u1", "traits": {"nested": {"a": [1, None, True]}, "ü": "ß"}},
     {"traits": {"nested": {"a": [1, None, True]}, "ü": "ß"}}),
]


@pytest.mark.parametrize(("message", "expected"), VALID, ids=[f"{i}-{m['type']}" for i, (m, _) in enumerate(VALID)])
def test_valid_message_columns(message: dict[str, Any], expected: dict[str, Any]) -> None:
    row = read_one(message)
    for name in ("properties", "traits", "context"):
        assert isinstance(row[name], str)
        row[name] = orjson.loads(row[name])
    assert {name: row[name] for name in expected} == expected
    assert row["source"] == "web"
    assert row["received_at"] == RECEIVED
    assert row["ip"] == "203.0.113.9"


def test_every_message_type_is_accepted() -> None:
    extra = {"track": {"event": "e"}, "group": {"groupId": "g"}, "alias": {"previousId": "p"}}
    messages = [{"type": kind, "userId": "u", **extra.get(kind, {})} for kind in MESSAGE_TYPES]
    columns, rejections = read(messages)
    assert rejections == []
    assert columns.type == list(MESSAGE_TYPES)


def test_missing_message_id_is_generated_and_unique() -> None:
    columns, _ = read([{"type": "identify", "userId": "u1"} for _ in range(50)] + [{"type": "identify", "userId": "u",
                                                                                    "messageId": ""}])
    assert len(columns) == 51
    assert all(mid.startswith("portrait-") for mid in columns.message_id)
    assert len(set(columns.message_id)) == 51


@pytest.mark.parametrize("ip", ["203.0.113.9", "2001:db8::1", None])
def test_ip_column_is_the_request_ip(ip: str | None) -> None:
    assert read_one({"type": "identify", "userId": "u1"}, ip=ip)["ip"] == ip


@pytest.mark.parametrize(("message_context", "batch_context", "expected"), [
    (None, {"library": {"name": "analytics-python"}}, {"library": {"name": "analytics-python"}}),
    ({"locale": "pl-PL"}, {"library": {"name": "analytics-python"}},
     {"locale": "pl-PL", "library": {"name": "analytics-python"}}),
    ({"locale": "pl-PL"}, {"locale": "en-US", "app": {"name": "shop"}}, {"locale": "pl-PL", "app": {"name": "shop"}}),
    ({"traits": {"plan": "x", "age": 3}}, {"traits": {"plan": "y", "email": "a@x.com"}, "app": {"name": "shop"}},
     {"traits": {"plan": "x", "age": 3, "email": "a@x.com"}, "app": {"name": "shop"}}),
    (None, None, {}),
    ({}, {"library": {"name": "x"}}, {"library": {"name": "x"}}),
])
def test_batch_context_is_merged_into_each_message(message_context: dict[str, Any] | None,
                                                   batch_context: dict[str, Any] | None,
                                                   expected: dict[str, Any]) -> None:
    message: dict[str, Any] = {"type": "identify", "userId": "u1"}
    if message_context is not None:
        message["context"] = message_context
    assert orjson.loads(read_one(message, context=batch_context)["context"]) == expected


@pytest.mark.parametrize(("message_context", "batch_context"), [
    (None, {"traits": {"email": "Ann@Example.com"}}),
    ({"locale": "pl-PL"}, {"traits": {"email": "Ann@Example.com"}}),
    ({"traits": {"email": "Ann@Example.com"}}, {"traits": {"email": "other@example.com"}}),  # the message's wins
    ({"traits": {"plan": "x"}}, {"traits": {"email": "Ann@Example.com"}}),  # traits merge one level deeper
])
def test_identifiers_in_the_batch_context_name_the_person(message_context: dict[str, Any] | None,
                                                          batch_context: dict[str, Any]) -> None:
    message: dict[str, Any] = {"type": "track", "event": "Viewed", "userId": "u1"}
    if message_context is not None:
        message["context"] = message_context
    assert read_one(message, context=batch_context)["identity_hints"] == "email\x1fAnn@Example.com"


@pytest.mark.parametrize(("traits", "context_traits", "expected"), [
    (None, {"plan": "gold", "email": "r@x.com"}, {"plan": "gold", "email": "r@x.com"}),  # RudderStack's SDKs
    ({"plan": "pro"}, {"plan": "gold", "age": 3}, {"plan": "pro", "age": 3}),  # the top-level traits win
    ({"plan": None}, {"plan": "gold"}, {"plan": None}),  # a removal stays a removal
    ({"plan": "pro"}, None, {"plan": "pro"}),
])
def test_an_identify_takes_its_traits_from_traits_over_context_traits(
        traits: dict[str, Any] | None, context_traits: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    message: dict[str, Any] = {"type": "identify", "userId": "u1"}
    if traits is not None:
        message["traits"] = traits
    if context_traits is not None:
        message["context"] = {"traits": context_traits}
    row = read_one(message)
    assert orjson.loads(row["traits"]) == expected
    assert orjson.loads(row["context"]) == ({"traits": context_traits} if context_traits else {})  # kept as sent


def test_a_track_does_not_take_traits_from_its_context() -> None:
    """Only an identify sets traits: other events' context.traits may be an SDK's stale copy of them."""
    row = read_one({"type": "track", "event": "Viewed", "userId": "u1", "context": {"traits": {"plan": "gold"}}})
    assert row["traits"] == "{}"


# -- timestamps and clock-skew correction ---------------------------------------------------------------------------

SKEW: list[tuple[dict[str, Any], Any, datetime, datetime | None]] = [
    # (message time fields, batch sentAt) -> (timestamp, original_timestamp)
    ({"timestamp": "2024-06-01T11:59:00Z", "sentAt": "2024-06-01T12:00:10Z"}, None,
     RECEIVED - timedelta(seconds=70), datetime(2024, 6, 1, 11, 59)),
    ({"originalTimestamp": "2024-06-01T11:59:00Z", "sentAt": "2024-06-01T12:00:10Z"}, None,
     RECEIVED - timedelta(seconds=70), datetime(2024, 6, 1, 11, 59)),
    # both (RudderStack's Node SDK given a timestamp: originalTimestamp is when the call was made): the timestamp
    ({"timestamp": "2024-06-01T10:00:00Z", "originalTimestamp": "2024-06-01T11:59:50Z",
      "sentAt": "2024-06-01T12:00:00Z"}, None, RECEIVED - timedelta(hours=2), datetime(2024, 6, 1, 10)),
    ({"timestamp": "2024-06-01T10:00:00Z", "originalTimestamp": "2024-06-01T11:59:50Z"}, None,
     datetime(2024, 6, 1, 10), datetime(2024, 6, 1, 10)),
    # client clock two hours slow: the event happened 30 s before the client sent it
    ({"timestamp": "2024-06-01T09:59:30", "sentAt": "2024-06-01T10:00:00"}, None,
     RECEIVED - timedelta(seconds=30), datetime(2024, 6, 1, 9, 59, 30)),
    ({"timestamp": "2024-06-01T11:00:00Z"}, "2024-06-01T11:00:05Z", RECEIVED - timedelta(seconds=5),
     datetime(2024, 6, 1, 11)),
    # message-level sentAt wins over the batch's
    ({"timestamp": "2024-06-01T11:00:00Z", "sentAt": "2024-06-01T11:00:01Z"}, "2024-06-01T11:00:05Z",
     RECEIVED - timedelta(seconds=1), datetime(2024, 6, 1, 11)),
    # no sentAt anywhere: the client's timestamp as is
    ({"timestamp": "2023-12-24T18:30:00Z"}, None, datetime(2023, 12, 24, 18, 30), datetime(2023, 12, 24, 18, 30)),
    # a bad batch-level sentAt only disables the correction
    ({"timestamp": "2023-12-24T18:30:00Z"}, "not a date", datetime(2023, 12, 24, 18, 30),
     datetime(2023, 12, 24, 18, 30)),
    # ... and so does one too far from the timestamps to correct them with (the messages are not at fault)
    ({"timestamp": "2023-12-24T18:30:00Z"}, "9999-12-31T23:59:59Z", datetime(2023, 12, 24, 18, 30),
     datetime(2023, 12, 24, 18, 30)),
    # no timestamp: receivedAt
    ({}, None, RECEIVED, None),
    ({"sentAt": "2024-06-01T11:00:00Z"}, None, RECEIVED, None),
    ({}, "2024-06-01T11:00:00Z", RECEIVED, None),
    # offsets become naive UTC
    ({"timestamp": "2024-06-01T14:00:00+02:00"}, None, datetime(2024, 6, 1, 12), datetime(2024, 6, 1, 12)),
    ({"timestamp": "2024-05-31T22:15:00-05:00"}, None, datetime(2024, 6, 1, 3, 15), datetime(2024, 6, 1, 3, 15)),
    ({"timestamp": "2024-06-01T14:00:00.250+02:00", "sentAt": "2024-06-01T12:00:01.250Z"}, None,
     RECEIVED - timedelta(seconds=1), datetime(2024, 6, 1, 12, 0, 0, 250000)),
    ({"timestamp": "2024-06-01"}, None, datetime(2024, 6, 1), datetime(2024, 6, 1)),
]


@pytest.mark.parametrize(("fields", "batch_sent_at", "timestamp", "original"), SKEW)
def test_clock_skew_correction(fields: dict[str, Any], batch_sent_at: Any, timestamp: datetime,
                               original: datetime | None) -> None:
    row = read_one({"type": "identify", "userId": "u1", **fields}, sent_at=batch_sent_at)
    assert row["timestamp"] == timestamp
    assert row["original_timestamp"] == original
    assert row["timestamp"].tzinfo is None
    assert row["received_at"] == RECEIVED


def test_a_messages_own_sent_at_too_far_from_its_timestamp_rejects_it() -> None:
    message = {"type": "track", "userId": "u1", "event": "E", "timestamp": "2023-12-24T18:30:00Z",
               "sentAt": "9999-12-31T23:59:59Z"}
    _, rejections = read_body(orjson.dumps({"batch": [message]}))
    assert [(r.code, r.reason) for r in rejections] == [
        ("invalid_timestamp", "timestamp and sentAt are too far apart to correct clock skew")]


def test_sent_at_column_prefers_message_over_batch() -> None:
    row = read_one({"type": "identify", "userId": "u1", "sentAt": "2024-06-01T10:00:00+01:00"},
                   sent_at="2024-06-01T11:00:05Z")
    assert row["sent_at"] == datetime(2024, 6, 1, 9)
    assert read_one({"type": "identify", "userId": "u1"}, sent_at="2024-06-01T11:00:05Z")["sent_at"] == datetime(
        2024, 6, 1, 11, 0, 5)


def test_bad_timestamp_rejected_even_with_valid_original_timestamp() -> None:
    _assert_rejected({"type": "identify", "userId": "u1", "originalTimestamp": "2024-06-01T11:00:00Z",
                      "timestamp": "garbage"}, "invalid_timestamp", "timestamp")


def test_bad_original_timestamp_rejected_even_with_valid_timestamp() -> None:
    _assert_rejected({"type": "identify", "userId": "u1", "timestamp": "2024-06-01T11:00:00Z",
                      "originalTimestamp": "garbage"}, "invalid_timestamp", "originalTimestamp")


def test_an_empty_time_or_an_empty_array_for_an_object_is_read_as_not_given() -> None:
    """What hand-written PHP clients send: "" for a time they do not have, [] for an empty object."""
    event = read_one({"type": "track", "userId": "php", "event": "Paid", "timestamp": "", "originalTimestamp": "",
                      "sentAt": "", "properties": [], "context": []})
    assert event["timestamp"] == event["received_at"] and event["properties"] == event["context"] == "{}"
    _assert_rejected({"type": "track", "userId": "php", "event": "Paid", "properties": [1]}, "invalid_field",
                     "properties")


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_out_of_range_timestamp_is_rejected(value: str) -> None:
    _assert_rejected({"type": "identify", "userId": "u1", "timestamp": value}, "invalid_timestamp", "timestamp")


def test_a_timestamp_more_than_a_day_ahead_of_its_arrival_is_rejected() -> None:
    """A wrong clock: its traits would win over every real update until that date."""
    _assert_rejected({"type": "identify", "userId": "u1", "timestamp": "2024-06-02T12:00:01Z"},
                     "future_timestamp", "more than a day after")
    assert read_one({"type": "identify", "userId": "u1", "timestamp": "2024-06-02T11:59:59Z"})["timestamp"] == \
        datetime(2024, 6, 2, 11, 59, 59)
    corrected = read_one({"type": "identify", "userId": "u1", "timestamp": "2099-01-01T00:00:00Z",
                          "sentAt": "2099-01-01T00:00:05Z"})  # the device's clock, corrected by its sentAt
    assert corrected["timestamp"] == RECEIVED - timedelta(seconds=5)


def test_extreme_skew_does_not_crash_the_batch() -> None:
    columns, rejections = read([{"type": "identify", "userId": "u1", "timestamp": "9999-12-31T00:00:00",
                                 "sentAt": "0001-01-01T00:00:00"}])
    assert len(columns) + len(rejections) == 1


@pytest.mark.parametrize("kind", [["track"], {"name": "track"}], ids=["list", "object"])
def test_unhashable_type_is_invalid_type(kind: Any) -> None:
    _assert_rejected({"type": kind, "userId": "u1"}, "invalid_type", "type")


# -- decode_body ----------------------------------------------------------------------------------------------------

BODY = orjson.dumps({"batch": [{"type": "track", "userId": "u1", "event": "e"}] * 20})


def gzipped(data: bytes) -> bytes:
    """mtime=0: the time of day in the header made the test ids differ between pytest-xdist's workers' collections,
    which then refused to run."""
    return gzip.compress(data, mtime=0)


@pytest.mark.parametrize(("encoding", "raw"), [
    (None, BODY),
    ("", BODY),
    ("identity", BODY),
    ("gzip", gzipped(BODY)),
    ("GZIP ", gzipped(BODY)),
    ("x-gzip", gzipped(BODY)),
    ("deflate", zlib.compress(BODY)),
    ("gzip", gzipped(BODY[:40]) + gzipped(BODY[40:])),  # two members, as `cat a.gz b.gz` makes
])
def test_decode_body(encoding: str | None, raw: bytes) -> None:
    assert decode_body(raw, encoding, LIMITS) == BODY


@pytest.mark.parametrize(("encoding", "raw", "code"), [
    ("br", BODY, "bad_encoding"),
    ("compress", BODY, "bad_encoding"),
    ("gzip", b"definitely not gzip", "bad_encoding"),
    ("gzip", gzipped(BODY)[:-30], "bad_encoding"),
    ("gzip", gzipped(BODY)[:20], "bad_encoding"),
    ("gzip", b"", "bad_encoding"),
    ("deflate", gzipped(BODY), "bad_encoding"),
    ("deflate", zlib.compress(BODY)[:-10], "bad_encoding"),
    ("gzip", gzipped(BODY) + b"trailing", "bad_encoding"),
    ("gzip", gzipped(b"x" * 300_000) + gzipped(b"x" * 300_000), "body_too_large"),
    (None, b"x" * (LIMITS.max_batch_bytes + 1), "body_too_large"),
    ("gzip", gzipped(b"x" * (LIMITS.max_batch_bytes + 1)), "body_too_large"),
    ("deflate", zlib.compress(b"x" * (LIMITS.max_batch_bytes + 1)), "body_too_large"),
], ids=["br", "compress", "not-gzip", "truncated-tail", "truncated-head", "empty-gzip", "gzip-as-deflate",
        "truncated-deflate", "trailing-bytes", "members-too-large", "plain-too-large", "gzip-too-large",
        "deflate-too-large"])
def test_decode_body_refuses(encoding: str | None, raw: bytes, code: str) -> None:
    with pytest.raises(BadRequest) as info:
        decode_body(raw, encoding, LIMITS)
    assert info.value.code == code


def test_decode_body_at_exact_limit() -> None:
    body = b"y" * LIMITS.max_batch_bytes
    assert decode_body(body, None, LIMITS) == body
    assert decode_body(gzip.compress(body), "gzip", LIMITS) == body


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1024 * 1024)
    return b"".join(compressor.compress(chunk) for _ in range(50)) + compressor.flush()


def test_gzip_bomb_fails_fast(gzip_bomb: bytes) -> None:
    assert len(gzip_bomb) < 100_000  # 50 MB of zeros
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(BadRequest) as info:
            decode_body(gzip_bomb, "gzip", LIMITS)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == "body_too_large"
    assert elapsed < 1.0
    assert peak < 10 * LIMITS.max_batch_bytes  # never inflated past the limit (all of it would be 50 MB)


# -- parse_request --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "endpoint", "code"), [
    (b"{not json", "batch", "invalid_json"),
    (b"", "batch", "invalid_json"),
    (b"\xff\xfe", "track", "invalid_json"),
    (b"[]", "batch", "invalid_request"),
    (b"[{\"type\": \"track\"}]", "batch", "invalid_request"),
    (b"42", "batch", "invalid_request"),
    (b"\"batch\"", "track", "invalid_request"),
    (b"null", "identify", "invalid_request"),
    (b"{}", "batch", "invalid_request"),
    (b"{\"batch\": {}}", "batch", "invalid_request"),
    (b"{\"batch\": null}", "import", "invalid_request"),
    (b"{\"batch\": \"x\"}", "b", "invalid_request"),
])
def test_parse_request_refuses(body: bytes, endpoint: str, code: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_request(body, endpoint, LIMITS)
    assert info.value.code == code


@pytest.mark.parametrize(("items", "refused"), [(2500, False), (2501, True)])
def test_batch_item_limit(items: int, refused: bool) -> None:
    body = orjson.dumps({"batch": [{}] * items})
    if refused:
        with pytest.raises(BadRequest) as info:
            parse_request(body, "batch", LIMITS)
        assert info.value.code == "batch_too_large"
    else:
        assert len(parse_request(body, "batch", LIMITS).messages) == items


@pytest.mark.parametrize(("endpoint", "kind"), [
    ("identify", "identify"), ("i", "identify"), ("track", "track"), ("t", "track"), ("page", "page"),
    ("p", "page"), ("screen", "screen"), ("s", "screen"), ("group", "group"), ("g", "group"), ("alias", "alias"),
    ("a", "alias"),
])
def test_single_message_endpoint_implies_type(endpoint: str, kind: str) -> None:
    parsed = parse_request(b'{"userId": "u1", "writeKey": "k1"}', endpoint, LIMITS)
    assert parsed.messages == [{"userId": "u1", "type": kind}]  # the key is a credential: not part of the message
    assert parsed.write_key == "k1"


def test_single_message_path_type_wins() -> None:
    """/v1/track is a track call whatever the body's type says (the docs: the type is implied by the path)."""
    assert parse_request(b'{"type": "page", "userId": "u1"}', "track", LIMITS).messages[0]["type"] == "track"


def test_single_message_over_the_message_limit_is_refused_whole() -> None:
    body = orjson.dumps({"userId": "u1", "event": "E", "properties": {"x": "y" * 40_000}, "writeKey": "k1"})
    with pytest.raises(RefusedBody) as info:
        parse_request(body, "track", LIMITS)
    assert (info.value.code, info.value.write_key) == ("message_too_large", "k1")


@pytest.mark.parametrize(("context", "code"), [
    ("web", "invalid_request"),
    ({f"note{i}": "x" * 10_000 for i in range(2)}, "message_too_large"),  # over half a message
    ({"a": json.loads("[" * 24 + '"deep"' + "]" * 24)}, "too_deep"),
])
def test_a_batch_context_that_cannot_be_merged_refuses_the_request(context: Any, code: str) -> None:
    with pytest.raises(RefusedBody) as info:
        parse_request(orjson.dumps({"batch": [{"type": "track"}], "context": context, "writeKey": "k"}), "batch",
                      LIMITS)
    assert (info.value.code, info.value.write_key) == (code, "k")


def test_half_a_surrogate_pair_does_not_cost_the_batch() -> None:
    """JavaScript can cut an emoji in two; that string becomes U+FFFD instead of the batch being refused."""
    body = b'{"batch": [{"type": "track", "userId": "u1", "event": "Cut \\ud83d", "properties": {"t": "abc\\ud83d"}}]}'
    parsed = parse_request(body, "batch", LIMITS)
    columns, rejections = MessageReader(received_at=RECEIVED, source="web", ip=None, request=parsed, limits=LIMITS,
                                        body_bytes=len(body)).read_all()
    assert rejections == [] and columns.event == ["Cut \ufffd"]
    assert orjson.loads(columns.properties[0]) == {"t": "abc\ufffd"}
    with pytest.raises(BadRequest, match="not valid JSON"):
        parse_request(b'{"batch": [\xff]}', "batch", LIMITS)


def test_the_fallback_parser_reads_numbers_as_orjson_does() -> None:
    """With half a surrogate pair the standard parser reads the body: integers past 64 bits still become floats
    (a Python int that orjson cannot write made the request fail with a 500)."""
    body = (b'{"batch": [{"type": "track", "userId": "u1", "event": "E\\ud83d", "properties": {"n": 1'
            + b"0" * 30 + b'}}]}')
    parsed = parse_request(body, "batch", LIMITS)
    columns, rejections = MessageReader(received_at=RECEIVED, source="web", ip=None, request=parsed, limits=LIMITS,
                                        body_bytes=len(body)).read_all()
    assert rejections == [] and orjson.loads(columns.properties[0]) == {"n": 1e30}
    assert kept_json({"n": 10**30}) == '{"n": 1000000000000000000000000000000}'  # what was sent, whatever it is


def read_body(body: bytes) -> tuple[Any, list[Rejection]]:
    return MessageReader(received_at=RECEIVED, source="web", ip=None, request=parse_request(body, "batch", LIMITS),
                         limits=LIMITS, body_bytes=len(body)).read_all()


def test_a_number_too_large_for_a_double_is_kept_as_its_text() -> None:
    """Valid JSON (Python's json writes 10**400 in full) that orjson refuses: the value is kept as a string, which a
    number attribute then lists as a data-quality issue, instead of the whole batch being refused."""
    huge = "1" + "0" * 400
    body = json.dumps({"batch": [{"type": "track", "userId": "u1", "event": "Big", "properties": {
        "n": 10**400, "e": 1e300, "x": 1}}, {"type": "track", "userId": "u2", "event": "Fine"}]}).encode()
    body = body.replace(b"1e+300", b"1e400")
    columns, rejections = read_body(body)
    assert rejections == [] and columns.event == ["Big", "Fine"]
    assert orjson.loads(columns.properties[0]) == {"n": huge, "e": "1e400", "x": 1}


def _cut_in_python(value: Any, depth: int, level: int = 1) -> Any:
    if not isinstance(value, list | dict):
        return value
    if level > depth:
        return f"[nested deeper than {depth} levels; not kept]"
    if isinstance(value, dict):
        return {k: _cut_in_python(v, depth, level + 1) for k, v in value.items()}
    return [_cut_in_python(v, depth, level + 1) for v in value]


TRICKY_TEXT = st.sampled_from(["a]b", 'q"[{', "\\", "}}", "", "x\"]"])
NESTED = st.recursive(st.none() | st.integers() | TRICKY_TEXT,
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY_TEXT, inner, max_size=3),
                      max_leaves=30)


@settings(deadline=None)  # a pure function, but one example can take a loaded 2-core CI box past the default 200 ms
@given(value=NESTED, depth=st.integers(1, 8))
def test_cutting_deep_nesting_in_the_text_is_cutting_it_in_the_value(value: Any, depth: int) -> None:
    """The text-level cutter (brackets and quotes inside strings included) agrees with a plain recursive cut."""
    assert json.loads(_cut_deep_text(json.dumps(value).encode(), depth)) == _cut_in_python(value, depth)


def test_nesting_deeper_than_the_parsers_go_rejects_only_its_message() -> None:
    """orjson stops at 1,024 levels and Python's json at its recursion limit; the part deeper than any message may
    be is cut off before parsing, so that message alone is rejected (too_deep) and the others are accepted."""
    deep = "[" * 1100 + '"x"' + "]" * 1100
    tricky = '{"s": "]]\\\\\\"[{", "deep": ' + deep + ', "after": "kept"}'  # brackets and escapes in strings
    body = ('{"batch": [' + ", ".join(
        [f'{{"type": "track", "userId": "ok{i}", "event": "Fine", "properties": {{"s": "[{{\\"}}"}}}}'
         for i in range(150)]
        + [f'{{"type": "track", "userId": "deep", "messageId": "m-deep", "event": "Deep", "properties": {tricky}}}']
    ) + "]}").encode()
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)
    columns, rejections = read_body(body)
    assert len(columns.event) == 150 and orjson.loads(columns.properties[0]) == {"s": '[{"}'}
    assert [(r.code, r.message_id) for r in rejections] == [("too_deep", "m-deep")]
    kept = orjson.loads(rejections[0].payload)
    assert kept["properties"]["s"] == ']]\\"[{' and kept["properties"]["after"] == "kept"
    with pytest.raises(BadRequest, match="not valid JSON"):  # deep and broken: still refused as a whole
        parse_request(b'{"batch": [' + b"[" * 1100 + b"]}", "batch", LIMITS)


def test_nan_and_infinity_from_python_json_are_read_as_null() -> None:
    """Python's json (segment-analytics-python) writes NaN for a missing float: the batch is read, not refused."""
    body = json.dumps({"batch": [{"type": "track", "userId": "u1", "event": "Row",
                                  "properties": {"price": float("nan"), "max": float("inf"), "n": 2}}]}).encode()
    assert b"NaN" in body and b"Infinity" in body
    columns, rejections = MessageReader(received_at=RECEIVED, source="web", ip=None,
                                        request=parse_request(body, "batch", LIMITS), limits=LIMITS,
                                        body_bytes=len(body)).read_all()
    assert rejections == [] and orjson.loads(columns.properties[0]) == {"price": None, "max": None, "n": 2}
    with pytest.raises(BadRequest, match="not valid JSON"):
        parse_request(b'{"batch": [NaNa]}', "batch", LIMITS)


def test_the_kept_text_of_a_refused_body_holds_no_part_of_the_key() -> None:
    key = "wk_live_0123456789abcdef"
    at_the_edge = b'{"pad": "' + b"p" * (65536 - 30) + b'", "writeKey": "' + key.encode() + b'", "batch": 1}'
    assert key[:6] not in raw_preview(at_the_edge)
    escaped = b'{"write\\u004bey": "' + key.encode() + b'", "batch": 1}'
    assert key not in raw_preview(escaped, key) and "(not kept)" in raw_preview(escaped, key)


def test_nesting_deeper_than_json_writers_go_is_one_rejected_message() -> None:
    """orjson writes at most ~255 levels: a message nested deeper is rejected (and kept, cut off), the rest land."""
    deep = json.loads("[" * 300 + '"bottom"' + "]" * 300)
    good = {"type": "track", "userId": "u1", "event": "Fine"}
    for padding in (0, 40_000):  # a small body (sizes not measured) and a large one
        body = json.dumps({"batch": [good, {"type": "track", "userId": "u2", "event": "Deep",
                                            "properties": {"x": deep}, "pad": "p" * padding}]}).encode()
        parsed = parse_request(body, "batch", LIMITS)
        columns, rejections = MessageReader(received_at=RECEIVED, source="web", ip=None, request=parsed,
                                            limits=LIMITS, body_bytes=len(body)).read_all()
        assert columns.event == ["Fine"]
        assert [r.code for r in rejections] == ["too_deep"]
        assert "nested deeper; not kept" in rejections[0].payload and '"Deep"' in rejections[0].payload


def test_fields_without_a_column_are_kept_in_extra() -> None:
    """integrations, channel, a page's category... are stored; batch integrations merge into each message's."""
    doc = {"batch": [
        {"type": "page", "userId": "u1", "name": "Home", "category": "Docs", "channel": "web",
         "integrations": {"All": False}, "_metadata": {"bundled": ["x"]}, "writeKey": "k", "receivedAt": "now"},
        {"type": "track", "userId": "u1", "event": "E", "integrations": {}, "context": {"ip": "1.2.3.4"}},
    ], "integrations": {"Mixpanel": True}}
    parsed = parse_request(orjson.dumps(doc), "batch", LIMITS)
    columns, _ = MessageReader(received_at=RECEIVED, source="web", ip=None, request=parsed, limits=LIMITS,
                               body_bytes=100).read_all()
    first, second = (orjson.loads(e) for e in columns.extra)
    assert first == {"category": "Docs", "channel": "web",  # no writeKey, receivedAt or analytics.js _metadata
                     "integrations": {"Mixpanel": True, "All": False}}
    assert second == {"integrations": {"Mixpanel": True}}
    alone = MessageReader(received_at=RECEIVED, source="web", ip=None, request=ParsedRequest(
        [{"type": "track", "userId": "u1", "event": "E", "integrations": {}}]), limits=LIMITS, body_bytes=100)
    assert alone.read_all()[0].extra == [None]  # nothing worth keeping: no JSON at all


@pytest.mark.parametrize(("doc", "key"), [
    ({"writeKey": "abc", "batch": []}, "abc"),
    ({"batch": []}, None),
    ({"writeKey": "", "batch": []}, None),
    ({"writeKey": 5, "batch": []}, None),
    ({"writeKey": ["abc"], "batch": []}, None),
])
def test_write_key_from_body(doc: dict[str, Any], key: str | None) -> None:
    assert parse_request(orjson.dumps(doc), "batch", LIMITS).write_key == key


def test_batch_level_fields() -> None:
    doc = {"batch": [{"type": "identify"}, 3], "sentAt": "2024-06-01T12:00:00Z", "context": {"library": {"n": 1}}}
    parsed = parse_request(orjson.dumps(doc), "batch", LIMITS)
    assert parsed.messages == [{"type": "identify"}, 3]
    assert parsed.sent_at == "2024-06-01T12:00:00Z"
    assert parsed.context == {"library": {"n": 1}}
    assert parse_request(b'{"batch": [], "context": {}}', "batch", LIMITS).context is None


# -- key_from_basic_auth --------------------------------------------------------------------------------------------

def _basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(("header", "key"), [
    (_basic("wk_123:"), "wk_123"),
    (_basic("wk_123:ignored-password"), "wk_123"),
    (_basic("wk_123"), "wk_123"),
    ("basic " + base64.b64encode(b"k:").decode(), "k"),
    (_basic("ключ:"), "ключ"),
    (_basic(":"), None),
    (_basic(""), None),
    ("Basic !!!not-base64!!!", None),
    ("Basic " + base64.b64encode(b"\xff\xfe:").decode(), None),
    ("Bearer " + base64.b64encode(b"wk:").decode(), None),
    ("Basic", None),
    ("", None),
    (None, None),
])
def test_key_from_basic_auth(header: str | None, key: str | None) -> None:
    assert key_from_basic_auth(header) == key


def test_key_from_non_ascii_basic_auth_is_none() -> None:
    assert key_from_basic_auth("Basic d2s6\u00e9") is None


# -- property: every message is either accepted or rejected, never both, never lost -----------------------------

JSON_SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
FIELDS = ["userId", "anonymousId", "previousId", "groupId", "messageId", "event", "name", "properties", "traits",
          "context"]
TYPE_VALUES = st.sampled_from([*MESSAGE_TYPES, "Track", ""]) | JSON_VALUES
OFFSETS = st.timedeltas(min_value=timedelta(hours=-14), max_value=timedelta(hours=14)).map(lambda d: timezone(d))
TIME_VALUES = (st.none() | JSON_SCALARS
               | st.datetimes(timezones=st.one_of(st.none(), OFFSETS)).map(datetime.isoformat))
MESSAGES = st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries({"type": TYPE_VALUES}, optional={
        **{name: JSON_VALUES | st.text(max_size=5) for name in FIELDS},
        **{name: TIME_VALUES for name in ("timestamp", "originalTimestamp", "sentAt")},
    }),
)


@settings(max_examples=200, deadline=None)
@given(messages=st.lists(MESSAGES, max_size=8), body_bytes=st.sampled_from([10, 10_000_000]),
       batch_sent_at=TIME_VALUES, batch_context=st.none() | st.dictionaries(st.text(max_size=5), JSON_SCALARS))
def test_read_all_accounts_for_every_message(messages: list[Any], body_bytes: int, batch_sent_at: Any,
                                             batch_context: dict[str, Any] | None) -> None:
    limits = Limits(max_message_bytes=120, max_batch_bytes=500 * 1024, max_batch_items=2500)
    options: dict[str, Any] = {"body_bytes": body_bytes, "limits": limits, "sent_at": batch_sent_at,
                               "context": batch_context}
    columns, rejections = read(messages, **options)
    assert len(columns) + len(rejections) == len(messages)
    assert all(len(values) == len(columns) for values in columns.as_dict().values())
    # Each message alone is either one row or one rejection, and the batch gives the same verdicts in order.
    rejected_alone = []
    for message in messages:
        alone_columns, alone_rejections = read([message], **options)
        assert len(alone_columns) + len(alone_rejections) == 1
        rejected_alone += [(r.code, r.payload) for r in alone_rejections]
    assert [(r.code, r.payload) for r in rejections] == rejected_alone
    for row_type, user_id, anonymous_id in zip(columns.type, columns.user_id, columns.anonymous_id, strict=True):
        assert row_type in MESSAGE_TYPES
        assert user_id or anonymous_id
    for name in ("properties", "traits", "context"):
        assert all(isinstance(orjson.loads(text), dict) for text in getattr(columns, name))
    assert all(value.tzinfo is None for value in columns.timestamp)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=12),  # what orjson reads as ints
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=4), inner, max_size=5),
    max_leaves=40,
)


@given(properties=st.dictionaries(st.text(max_size=4), _json_values, max_size=6),
       depth=st.integers(1, 6), keys=st.integers(1, 6), string=st.integers(1, 12))
@settings(max_examples=300, deadline=None)
def test_shape_limits_give_the_same_verdict_whether_or_not_the_walk_is_skipped(
        properties: dict[str, Any], depth: int, keys: int, string: int) -> None:
    """The text-based shortcut (spec._may_break_limits) never lets through what the full walk refuses."""
    from portrait.spec import Invalid, _check_shape, _json_object

    limits = Limits(max_message_bytes=32 * 1024, max_batch_bytes=500 * 1024, max_batch_items=2500,
                    max_depth=depth, max_keys=keys, max_string=string)
    try:
        _check_shape(properties, "properties", limits, 1)
        expected = None
    except Invalid as exc:
        expected = exc.code
    try:
        _json_object({"properties": properties}, "properties", limits)
        found = None
    except Invalid as exc:
        found = exc.code
    assert found == expected


def test_a_value_json_cannot_hold_is_a_clear_rejection_not_a_crash() -> None:
    """Integers past 64 bits cannot come from the wire (orjson reads them as floats) but can from an import."""
    from portrait.spec import Invalid, _json_object

    with pytest.raises(Invalid, match="properties cannot be written as JSON: Integer exceeds 64-bit range") as bad:
        _json_object({"properties": {"big": 2**70}}, "properties", LIMITS)
    assert bad.value.code == "invalid_field"
