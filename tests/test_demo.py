"""Tests for portrait.demo: the deterministic synthetic Segment-format data set."""

from __future__ import annotations

import ipaddress
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portrait.demo import generate_batches, generate_messages

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
WINDOW = timedelta(days=180)
TYPES = {"identify", "track", "page", "alias"}
EMAIL_RE = re.compile(r"^[a-z0-9]+\.[a-z0-9]+\d+@example\.(com|org|net)$")
DOC_NETS = (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("198.51.100.0/24"))
COUNTRIES = {"PL", "US", "GB", "DE", "TR", "BR"}
CATEGORIES = {"Shoes", "Electronics", "Books", "Home", "Beauty"}
Msg = dict[str, Any]


@pytest.fixture(scope="module")
def messages() -> list[Msg]:
    return list(generate_messages(200, seed=3, now=NOW))


@pytest.fixture(scope="module")
def big() -> list[Msg]:
    return list(generate_messages(1000, seed=11, now=NOW))


def _ts(msg: Msg) -> datetime:
    return datetime.fromisoformat(msg["timestamp"])


def _without_ids(msgs: list[Msg]) -> list[Msg]:
    return [{k: v for k, v in m.items() if k != "messageId"} for m in msgs]


def _full_identifies(msgs: list[Msg]) -> list[Msg]:
    """Login identify calls (they carry the device's anonymousId and the full trait set)."""
    return [m for m in msgs if m["type"] == "identify" and "anonymousId" in m]


def _emails_by_user(msgs: list[Msg]) -> dict[str, str]:
    return {m["userId"]: m["traits"]["email"] for m in _full_identifies(msgs)}


# --- determinism ---------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_output() -> None:
    first = list(generate_messages(60, seed=7, now=NOW))
    second = list(generate_messages(60, seed=7, now=NOW))
    assert first == second
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def test_different_seed_gives_different_content() -> None:
    a = list(generate_messages(60, seed=1, now=NOW))
    b = list(generate_messages(60, seed=2, now=NOW))
    assert _without_ids(a) != _without_ids(b)
    anon_a = {m["anonymousId"] for m in a if "anonymousId" in m}
    anon_b = {m["anonymousId"] for m in b if "anonymousId" in m}
    assert anon_a and anon_b and not anon_a & anon_b


def test_customers_do_not_depend_on_profile_count() -> None:
    small = list(generate_messages(15, seed=5, now=NOW))
    large = list(generate_messages(30, seed=5, now=NOW))
    assert large[: len(small)] == small


def test_invalid_arguments() -> None:
    assert list(generate_messages(0, now=NOW)) == []
    with pytest.raises(ValueError):
        list(generate_messages(-1, now=NOW))
    with pytest.raises(ValueError):
        list(generate_batches(3, batch_size=0, now=NOW))


# --- volume and shape ----------------------------------------------------------------------------------------------


def test_message_count_roughly_proportional(messages: list[Msg]) -> None:
    assert 2_000 <= len(messages) <= 8_000
    per_profile_small = len(list(generate_messages(20, seed=3, now=NOW))) / 20
    assert 5 <= per_profile_small <= 60


def test_every_message_has_required_fields(messages: list[Msg]) -> None:
    for m in messages:
        assert m["type"] in TYPES
        assert isinstance(m["messageId"], str) and m["messageId"]
        assert isinstance(m["timestamp"], str)
        assert m.get("userId") or m.get("anonymousId")
        assert m["context"]["library"] == {"name": "portrait-demo", "version": "1"}
    json.dumps(messages)  # everything is JSON-serializable, as an SDK would send it


def test_message_ids_unique_and_deterministic(messages: list[Msg]) -> None:
    ids = [m["messageId"] for m in messages]
    assert len(set(ids)) == len(ids)
    assert ids == [f"demo-3-{n}" for n in range(len(ids))]


def test_type_specific_fields(messages: list[Msg]) -> None:
    counts = Counter(m["type"] for m in messages)
    assert set(counts) == TYPES
    for m in messages:
        if m["type"] == "track":
            assert isinstance(m["event"], str) and m["event"]
            assert isinstance(m["properties"], dict)
        elif m["type"] == "alias":
            assert m["previousId"] and m["userId"] and m["previousId"] != m["userId"]
        elif m["type"] == "identify":
            assert m["userId"].startswith("user-")
            assert EMAIL_RE.match(m["traits"]["email"])
        else:
            assert m["name"] in {"Home", "Category", "Product", "Cart", "Checkout"}
            assert m["properties"]["url"].endswith(m["properties"]["path"])


def test_timestamps_parse_and_lie_in_window(messages: list[Msg]) -> None:
    for m in messages:
        assert m["timestamp"].endswith("Z")
        ts = _ts(m)
        assert ts.tzinfo is not None
        assert NOW - WINDOW <= ts <= NOW


def test_default_and_naive_now() -> None:
    before = datetime.now(UTC)
    for m in generate_messages(10, seed=1):
        assert before - WINDOW <= _ts(m) <= datetime.now(UTC)
    naive = list(generate_messages(10, seed=1, now=NOW.replace(tzinfo=None)))
    assert naive == list(generate_messages(10, seed=1, now=NOW))


def test_chronological_per_identity(messages: list[Msg]) -> None:
    last: dict[str, datetime] = {}
    for m in messages:
        ts = _ts(m)
        for key in ("userId", "anonymousId"):
            if key in m:
                assert ts >= last.get(m[key], ts)
                last[m[key]] = ts


def _containers(obj: Any) -> Iterator[int]:
    if isinstance(obj, dict | list):
        yield id(obj)
        for child in obj.values() if isinstance(obj, dict) else obj:
            yield from _containers(child)


def test_messages_share_no_mutable_objects(messages: list[Msg]) -> None:
    ids = [i for m in messages for i in _containers(m)]
    assert len(ids) == len(set(ids))  # mutating one message (e.g. enrichment on ingest) never changes another


# --- batches -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 7, 100, 10_000])
def test_batches_concatenate_to_messages(batch_size: int) -> None:
    batches = list(generate_batches(40, batch_size=batch_size, seed=9, now=NOW))
    assert all(1 <= len(b) <= batch_size for b in batches)
    assert all(len(b) == batch_size for b in batches[:-1])
    assert [m for b in batches for m in b] == list(generate_messages(40, seed=9, now=NOW))


# --- profiles and traits -------------------------------------------------------------------------------------------


def test_phone_numbers_are_valid_e164(big: list[Msg]) -> None:
    phonenumbers = pytest.importorskip("phonenumbers")
    country = {m["userId"]: m["traits"]["address"]["country"] for m in _full_identifies(big)}
    phones = [(m["userId"], m["traits"]["phone"]) for m in big if m["type"] == "identify" and "phone" in m["traits"]]
    assert len(phones) > 300
    for user_id, phone in phones:
        assert re.fullmatch(r"\+[1-9]\d{7,14}", phone)
        parsed = phonenumbers.parse(phone, None)
        assert phonenumbers.is_valid_number(parsed), phone
        assert phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) == phone
        assert phonenumbers.region_code_for_number(parsed) == country[user_id], phone
    assert {country[u] for u, _ in phones} == COUNTRIES


def test_emails_are_example_addresses(big: list[Msg]) -> None:
    seen: dict[str, str] = {}
    for m in big:
        for email in (m.get("traits", {}).get("email"), m["context"].get("traits", {}).get("email")):
            if email is None:
                continue
            assert email == email.lower() and EMAIL_RE.match(email), email
            assert seen.setdefault(m["userId"], email) == email  # one stable email per user
    assert len(set(seen.values())) == len(seen)
    assert all(email.split("@")[0].endswith(user.removeprefix("user-")) for user, email in seen.items())


def test_full_traits_shape_and_ratios(big: list[Msg]) -> None:
    traits_by_user = {m["userId"]: m["traits"] for m in _full_identifies(big)}
    for traits in traits_by_user.values():
        assert {"firstName", "lastName", "email", "gender", "birthday", "address", "language", "createdAt",
                "plan"} <= set(traits)
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", traits["birthday"])
        assert set(traits["address"]) == {"street", "city", "postalCode", "country"}
        assert traits["address"]["country"] in COUNTRIES
        assert datetime.fromisoformat(traits["createdAt"]) <= NOW
    n = len(traits_by_user)
    assert 0.6 <= n / 1000 <= 0.8  # ~70% of customers become known
    assert 0.45 <= sum("phone" in t for t in traits_by_user.values()) / n <= 0.75
    assert 0.2 <= sum("loyalty_card" in t for t in traits_by_user.values()) / n <= 0.4


def test_trait_updates_come_after_login_and_change_something(big: list[Msg]) -> None:
    logins: dict[str, datetime] = {}
    updated: set[str] = set()
    for m in big:
        if m["type"] != "identify":
            continue
        if "anonymousId" in m:
            logins[m["userId"]] = _ts(m)
            assert m["userId"] not in updated  # every login precedes the updates: last write wins cleanly
        else:
            assert m["userId"] in logins and _ts(m) > logins[m["userId"]]
            assert set(m["traits"]) - {"email"} <= {"address", "plan", "phone"}
            assert len(m["traits"]) == 2
            updated.add(m["userId"])
    assert len(updated) >= 50


# --- identity graph ------------------------------------------------------------------------------------------------


def test_identity_stitching(big: list[Msg]) -> None:
    owner: dict[str, str] = {}
    login_at: dict[str, datetime] = {}
    for m in _full_identifies(big):
        assert owner.setdefault(m["anonymousId"], m["userId"]) == m["userId"]
        login_at.setdefault(m["anonymousId"], _ts(m))
    for m in big:
        anon = m.get("anonymousId")
        if anon in owner and _ts(m) > login_at[anon]:
            assert m.get("userId") == owner[anon]
        if anon in owner and _ts(m) < login_at[anon]:
            assert "userId" not in m
    devices = Counter(owner.values())
    assert sum(1 for c in devices.values() if c >= 2) >= 0.1 * len(devices)  # cross-device logins


def test_alias_links_known_anonymous_id(big: list[Msg]) -> None:
    owner = {m["anonymousId"]: m["userId"] for m in _full_identifies(big)}
    aliases = [m for m in big if m["type"] == "alias"]
    assert 5 <= len(aliases) <= 80
    for m in aliases:
        assert owner[m["previousId"]] == m["userId"]


def test_web_context(messages: list[Msg]) -> None:
    web = [m for m in messages if "page" in m["context"]]
    assert len(web) > len(messages) / 2
    for m in web:
        ctx = m["context"]
        assert ctx["userAgent"].startswith("Mozilla/5.0")
        assert any(ipaddress.ip_address(ctx["ip"]) in net for net in DOC_NETS)
        assert ctx["page"]["url"].startswith("https://shop.example.com/")
        assert "anonymousId" in m


# --- events --------------------------------------------------------------------------------------------------------


def test_product_events(big: list[Msg]) -> None:
    events = [m for m in big if m.get("event") in {"Product Viewed", "Product Added"}]
    assert events
    for m in events:
        p = m["properties"]
        assert p["category"] in CATEGORIES and p["price"] > 0 and p["quantity"] >= 1
        assert p["currency"] in {"USD", "EUR", "PLN"} and p["product_id"].startswith("prod-") and p["sku"]
    assert 40 <= len({m["properties"]["product_id"] for m in events}) <= 60


def test_orders(big: list[Msg]) -> None:
    orders = [m for m in big if m.get("event") == "Order Completed"]
    channels = Counter(m["properties"]["channel"] for m in orders)
    assert channels["web"] > 0 and channels["pos"] > 0
    assert len({m["properties"]["order_id"] for m in orders}) == len(orders)
    for m in orders:
        p = m["properties"]
        assert p["products"] and p["currency"] in {"USD", "EUR", "PLN"}
        assert p["revenue"] == pytest.approx(sum(i["price"] * i["quantity"] for i in p["products"]))
        assert p["total"] == pytest.approx(p["revenue"] + p["shipping"])
        if p["channel"] == "web":
            assert m["userId"] and m["anonymousId"]
        else:
            (ext,) = m["context"]["externalIds"]
            assert ext["type"] == "loyalty_card" and ext["collection"] == "users" and ext["encoding"] == "none"
            assert re.fullmatch(r"LC-\d{8}", ext["id"])
    buyers = Counter(m["userId"] for m in orders if "userId" in m)
    assert max(buyers.values()) >= 3  # some customers order several times


def test_abandoned_carts_exist(big: list[Msg]) -> None:
    carts = {m["properties"]["cart_id"] for m in big if m.get("event") == "Product Added"}
    per_anon: defaultdict[str, set[str]] = defaultdict(set)
    for m in big:
        if m.get("event") in {"Product Added", "Checkout Started"}:
            per_anon[m["anonymousId"]].add(m["event"])
    abandoned = [a for a, events in per_anon.items() if events == {"Product Added"}]
    assert carts and len(abandoned) >= 20


def test_email_events_carry_user_and_email(big: list[Msg]) -> None:
    emails = _emails_by_user(big)
    email_events = [m for m in big if m.get("event", "").startswith("Email") or m.get("event") == "Unsubscribed"]
    kinds = Counter(m["event"] for m in email_events)
    assert kinds["Email Delivered"] > kinds["Email Opened"] > kinds["Email Link Clicked"] > kinds["Unsubscribed"]
    for m in email_events:
        assert "anonymousId" not in m
        assert m["context"]["traits"]["email"] == emails[m["userId"]]
        assert {"campaign_id", "campaign_name", "email_subject"} <= set(m["properties"])


def test_no_email_after_unsubscribe(big: list[Msg]) -> None:
    unsubscribed: dict[str, datetime] = {}
    for m in big:
        if m.get("event") == "Unsubscribed":
            unsubscribed[m["userId"]] = _ts(m)
        elif m.get("event") == "Email Delivered" and m["userId"] in unsubscribed:
            pytest.fail(f"{m['userId']} got an email after unsubscribing")
    assert unsubscribed


# --- property-based invariants -------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(profiles=st.integers(min_value=0, max_value=6), seed=st.integers(min_value=0, max_value=2**40))
def test_invariants_hold_for_any_seed(profiles: int, seed: int) -> None:
    msgs = list(generate_messages(profiles, seed=seed, now=NOW))
    assert len({m["messageId"] for m in msgs}) == len(msgs)
    assert (profiles == 0) == (not msgs)
    for m in msgs:
        assert m["type"] in TYPES and (m.get("userId") or m.get("anonymousId"))
        assert NOW - WINDOW <= _ts(m) <= NOW
        if m["type"] == "identify":
            assert EMAIL_RE.match(m["traits"]["email"])
