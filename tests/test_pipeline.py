"""The processor on the real DuckDB store: identity resolution, merges, traits, crash safety."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import activity_mismatches

from portrait.config import Settings
from portrait.errors import NotFound
from portrait.pipeline import profile_id_for
from portrait.service import Portrait
from portrait.sql import parse
from portrait.sql import processor as pq

_ids = itertools.count(1)


def msg(kind: str, *, at: str = "2026-03-01T10:00:00Z", **fields: Any) -> dict[str, Any]:
    """A Segment message; keyword names follow the wire format (userId, anonymousId, traits, ...)."""
    message = {"type": kind, "messageId": f"m-{next(_ids)}", "timestamp": at, **fields}
    if kind == "track":
        message.setdefault("event", "Product Viewed")
    return message


def load(portrait: Portrait, *messages: dict[str, Any]) -> None:
    result = portrait.ingest_messages(list(messages))
    assert result.rejected == 0, portrait.rejected()
    portrait.process_pending()


def grouping(portrait: Portrait, *references: str) -> set[str]:
    return {portrait.resolve_profile_id(ref) for ref in references}


def test_anonymous_history_joins_the_customer_after_login(portrait: Portrait) -> None:
    load(portrait,
         msg("page", anonymousId="anon-1", name="Home", at="2026-03-01T10:00:00Z"),
         msg("track", anonymousId="anon-1", event="Product Added", at="2026-03-01T10:01:00Z"),
         msg("identify", anonymousId="anon-1", userId="u-1", traits={"email": "Ann@Example.com"},
             at="2026-03-01T10:02:00Z"))
    profile = portrait.profile("email:ann@example.com")
    assert profile["profile_id"] == portrait.resolve_profile_id("anonymous_id:anon-1")
    assert {(i["type"], i["value"]) for i in profile["identities"]} == {
        ("anonymous_id", "anon-1"), ("user_id", "u-1"), ("email", "ann@example.com")}
    events = portrait.events("user_id:u-1")["events"]
    assert [e["type"] for e in events] == ["identify", "track", "page"]
    assert profile["first_seen"] == "2026-03-01T10:00:00.000Z"
    assert profile["last_seen"] == "2026-03-01T10:02:00.000Z"


def test_login_on_a_second_device_merges_into_the_older_profile(portrait: Portrait) -> None:
    load(portrait,
         msg("identify", anonymousId="laptop", userId="u-1", at="2026-03-01T10:00:00Z"),
         msg("track", anonymousId="phone", event="Product Viewed", at="2026-03-02T09:00:00Z"))
    older = portrait.resolve_profile_id("anonymous_id:laptop")
    phone_only = portrait.resolve_profile_id("anonymous_id:phone")
    assert older != phone_only
    load(portrait, msg("identify", anonymousId="phone", userId="u-1", at="2026-03-02T09:05:00Z"))
    assert grouping(portrait, "anonymous_id:laptop", "anonymous_id:phone", "user_id:u-1") == {older}
    merged = portrait.profile(f"profile_id:{older}")["merges"]
    assert [(m["merged_profile_id"], m["message_id"] is not None) for m in merged] == [(phone_only, True)]
    assert {i["type"]: i["value"] for i in merged[0]["identifiers"]} == {"user_id": "u-1", "anonymous_id": "phone"}
    # The losing id still resolves, to the survivor.
    assert portrait.resolve_profile_id(f"profile_id:{phone_only}") == older
    assert len(portrait.events(f"profile_id:{phone_only}")["events"]) == 3


def test_alias_links_previous_anonymous_id(portrait: Portrait) -> None:
    load(portrait,
         msg("track", anonymousId="anon-9", event="Cart Viewed"),
         msg("identify", userId="u-9", traits={"plan": "pro"}),
         msg("alias", previousId="anon-9", userId="u-9"))
    assert grouping(portrait, "anonymous_id:anon-9", "user_id:u-9") == {portrait.resolve_profile_id("user_id:u-9")}


def test_alias_of_an_older_user_id_respects_the_user_id_limit(portrait: Portrait) -> None:
    load(portrait, msg("identify", userId="old-id"), msg("identify", userId="new-id"),
         msg("alias", previousId="old-id", userId="new-id"))
    assert len(grouping(portrait, "user_id:old-id", "user_id:new-id")) == 2
    conflicts = portrait.profile("user_id:new-id")["identity_conflicts"]
    assert conflicts[0]["dropped"] == [{"type": "user_id", "value": "old-id"}]


def test_shared_device_does_not_merge_two_customers(portrait: Portrait) -> None:
    load(portrait,
         msg("identify", anonymousId="family-tablet", userId="alice", traits={"email": "alice@example.com"}),
         msg("identify", anonymousId="family-tablet", userId="bob", traits={"email": "bob@example.com"}))
    alice, bob = portrait.resolve_profile_id("user_id:alice"), portrait.resolve_profile_id("user_id:bob")
    assert alice != bob
    assert portrait.resolve_profile_id("anonymous_id:family-tablet") == alice
    assert portrait.resolve_profile_id("email:bob@example.com") == bob
    assert portrait.profile("user_id:bob")["identity_conflicts"][0]["dropped"] == [
        {"type": "anonymous_id", "value": "family-tablet"}]


def test_per_type_limit_keeps_at_most_five_emails(portrait: Portrait) -> None:
    load(portrait, *[msg("identify", userId="u-1", traits={"email": f"a{i}@example.com"}) for i in range(7)])
    emails = [i for i in portrait.identities("user_id:u-1") if i["type"] == "email"]
    assert len(emails) == 5
    with pytest.raises(NotFound):
        portrait.resolve_profile_id("email:a6@example.com")


def test_traits_last_write_wins_by_event_time_not_arrival(portrait: Portrait) -> None:
    load(portrait, msg("identify", userId="u-1", traits={"plan": "pro", "city": "Gdansk"}, at="2026-03-05T00:00:00Z"))
    load(portrait, msg("identify", userId="u-1", traits={"plan": "free", "age": 30}, at="2026-01-01T00:00:00Z"))
    assert portrait.traits("user_id:u-1") == {"plan": "pro", "city": "Gdansk", "age": 30}


def test_null_removes_a_trait_and_older_events_do_not_bring_it_back(portrait: Portrait) -> None:
    load(portrait, msg("identify", userId="u-1", traits={"phone_type": "x", "plan": "pro"}, at="2026-03-01T00:00:00Z"),
         msg("identify", userId="u-1", traits={"phone_type": None}, at="2026-03-02T00:00:00Z"))
    load(portrait, msg("identify", userId="u-1", traits={"phone_type": "old"}, at="2026-02-01T00:00:00Z"))
    assert portrait.traits("user_id:u-1") == {"plan": "pro"}


def test_traits_of_merged_profiles_combine_by_time(portrait: Portrait) -> None:
    load(portrait,
         msg("identify", anonymousId="a", traits={"color": "red", "size": "M"}, at="2026-03-01T00:00:00Z"),
         msg("identify", userId="u", traits={"color": "blue"}, at="2026-02-01T00:00:00Z"))
    load(portrait, msg("identify", anonymousId="a", userId="u", at="2026-03-03T00:00:00Z"))
    assert portrait.traits("user_id:u") == {"color": "red", "size": "M"}


def test_email_and_phone_normalization_and_custom_identifiers(portrait: Portrait) -> None:
    load(portrait,
         msg("identify", userId="u-1", traits={"email": "  Ann@Example.COM ", "phone": "+48 512 345 678",
                                               "loyalty_card": "LC-77"}),
         msg("track", anonymousId="pos-1", event="Order Completed",
             context={"externalIds": [{"id": "LC-77", "type": "loyalty_card", "collection": "users"}]}))
    profile_id = portrait.resolve_profile_id("user_id:u-1")
    assert grouping(portrait, "email:ann@example.com", "phone:+48512345678", "phone:+48 512-345-678",
                    "loyalty_card:LC-77", "anonymous_id:pos-1") == {profile_id}


def test_a_local_phone_number_is_kept_as_a_trait_but_identifies_no_one(portrait: Portrait) -> None:
    """555-1234 without an area code is a different line in every area: two customers giving it stay apart."""
    load(portrait,
         msg("identify", userId="u-1", traits={"phone": "555-1234"}),
         msg("identify", userId="u-2", traits={"phone": "555-1234"}))
    assert len(grouping(portrait, "user_id:u-1", "user_id:u-2")) == 2
    assert portrait.profile("user_id:u-1")["traits"]["phone"] == "555-1234"
    assert {i["type"] for i in portrait.profile("user_id:u-1")["identities"]} == {"user_id"}
    with pytest.raises(NotFound):
        portrait.resolve_profile_id("phone:555-1234")


def test_an_object_trait_sent_as_null_removes_its_parts(portrait: Portrait) -> None:
    """{"address": null} removes address_city and address_street; an older event does not bring them back, and a
    trait merely named like a part (email_verified beside email) is not one."""
    load(portrait,
         msg("identify", userId="u-1", at="2026-03-01T00:00:00Z",
             traits={"address": {"city": "Oslo", "street": "X"}, "email": "a@x.com", "emailVerified": True}),
         msg("identify", userId="u-1", at="2026-03-03T00:00:00Z", traits={"address": None, "email": None}))
    assert portrait.traits("user_id:u-1") == {"email_verified": True}
    load(portrait, msg("identify", userId="u-1", at="2026-03-02T00:00:00Z",  # late: older than the removal,
                       traits={"address": {"city": "Bergen", "zip": "5003"}}))  # with a part not known before
    assert portrait.traits("user_id:u-1") == {"email_verified": True}
    load(portrait, msg("identify", userId="u-1", at="2026-03-04T00:00:00Z", traits={"address": {"zip": "0150"}}),
         msg("identify", userId="u-2", at="2026-03-04T00:00:00Z", traits={"address": {"city": "Rome"}}),
         msg("identify", userId="u-2", at="2026-03-05T00:00:00Z",  # in one batch, and with a part set anew
             traits={"address": None, "addressZip": "00100"}))
    assert portrait.traits("user_id:u-1") == {"email_verified": True, "address_zip": "0150"}
    assert portrait.traits("user_id:u-2") == {"address_zip": "00100"}
    portrait.rebuild_traits()  # the whole log at once gives the same traits
    assert portrait.traits("user_id:u-1") == {"email_verified": True, "address_zip": "0150"}
    assert portrait.traits("user_id:u-2") == {"address_zip": "00100"}


def test_an_object_sent_as_null_raises_no_issue_for_a_calculated_part(portrait: Portrait) -> None:
    portrait.create_attribute({"code": "full_name", "name": "Full name",
                               "definition": 'concat(first_name, " ", last_name)'})
    load(portrait, msg("identify", userId="u-1", traits={"full": {"name": "X"}}))  # refused: calculated
    load(portrait, msg("identify", userId="u-2", at="2026-03-02T00:00:00Z", traits={"full": None}))
    assert [(i["attribute"], i["profile_id"]) for i in portrait.data_quality()["issues"]] == [
        ("full_name", portrait.resolve_profile_id("user_id:u-1"))]
    assert portrait.rebuild_traits()["values"] == 2  # the values sent, not the removals they imply


def test_object_parts_already_in_the_log_are_known_after_migrating(tmp_path: Path) -> None:
    """Migration 17 learns the parts of the objects in the log, so a later null removes them."""
    settings = Settings(db_path=str(tmp_path / "m.duckdb"))
    old = Portrait(settings, background=False)
    load(old, msg("identify", userId="u-1", traits={"address": {"city": "Oslo"}, "prefs": {"tone": "x"}}))
    old.close()
    with duckdb.connect(settings.db_path) as con:  # as if written before migration 17
        con.execute("DROP TABLE trait_parents")
        con.execute("DELETE FROM schema_migrations WHERE version = 17")
    upgraded = Portrait(settings, background=False)
    load(upgraded, msg("identify", userId="u-1", at="2026-03-02T00:00:00Z", traits={"address": None}))
    assert upgraded.traits("user_id:u-1") == {"prefs_tone": "x"}
    upgraded.close()


def test_migration_20_gives_trait_parents_of_the_first_migration_17_their_full_key(tmp_path: Path) -> None:
    """Migration 17 as first released kept one parent per code: a_b.c and a.b_c (both a_b_c) lost one; rebuilt."""
    settings = Settings(db_path=str(tmp_path / "m.duckdb"))
    old = Portrait(settings, background=False)
    load(old, msg("identify", userId="u-1", traits={"a_b": {"c": 4}}),
         msg("identify", userId="u-2", traits={"a": {"b_c": 5}}))
    old.close()
    with duckdb.connect(settings.db_path) as con:  # as the first migration 17 left it
        con.execute("DROP TABLE trait_parents")
        con.execute("CREATE TABLE trait_parents (code VARCHAR PRIMARY KEY, parent VARCHAR NOT NULL)")
        con.execute("INSERT INTO trait_parents VALUES ('a_b_c', 'a')")
        con.execute("DELETE FROM schema_migrations WHERE version = 20")
    upgraded = Portrait(settings, background=False)
    load(upgraded, msg("identify", userId="u-1", at="2026-03-02T00:00:00Z", traits={"a_b": None}),
         msg("identify", userId="u-2", at="2026-03-02T00:00:00Z", traits={"a": None}))
    assert upgraded.traits("user_id:u-1") == upgraded.traits("user_id:u-2") == {}
    upgraded.close()


def test_identify_traits_logged_only_in_context_are_applied_after_migrating(tmp_path: Path) -> None:
    """Migration 18: identify events logged before traits were read from context.traits (RudderStack's SDKs) get
    them in the log's traits column; a recheck applies them."""
    settings = Settings(db_path=str(tmp_path / "r.duckdb"))
    old = Portrait(settings, background=False)
    load(old, msg("identify", userId="u-1", context={"traits": {"plan": "gold"}}),
         msg("identify", userId="u-2", traits={"plan": "pro"}, context={"traits": {"plan": "gold", "age": 3}}))
    old.close()
    with duckdb.connect(settings.db_path) as con:  # as if logged before: traits only in context, or not merged
        con.execute("UPDATE events SET traits = '{}' WHERE user_id = 'u-1'")
        con.execute("""UPDATE events SET traits = '{"plan": "pro", "n": null}' WHERE user_id = 'u-2'""")
        con.execute("DELETE FROM profile_traits")
        con.execute("DELETE FROM schema_migrations WHERE version IN (18, 21)")
    upgraded = Portrait(settings, background=False)
    upgraded.rebuild_traits()
    assert upgraded.traits("user_id:u-1") == {"plan": "gold"}
    assert upgraded.traits("user_id:u-2") == {"plan": "pro", "age": 3}  # migration 21: merged, its own winning
    session = upgraded.store.session()
    try:  # the log keeps its own null (a removal) and gains context's age
        assert [json.loads(row[0]) for row in session.execute(parse(
            "SELECT traits FROM events WHERE user_id = 'u-2'"))] == [{"age": 3, "plan": "pro", "n": None}]
    finally:
        session.close()
    upgraded.close()


def test_identity_traits_in_camel_case_identify_too(portrait: Portrait) -> None:
    """Segment's traits are usually camelCase; they become the same attribute code as the configured name."""
    load(portrait, msg("identify", userId="u-1", traits={"loyaltyCard": "LC-900", "CrmId": "CRM-9"}),
         msg("track", anonymousId="pos-1", event="Order Completed", context={"traits": {"loyaltyCard": "LC-900"}}))
    profile_id = portrait.resolve_profile_id("user_id:u-1")
    assert grouping(portrait, "loyalty_card:LC-900", "crm_id:CRM-9", "anonymous_id:pos-1") == {profile_id}


def test_an_email_or_phone_trait_written_in_pascal_case_identifies_as_it_is_stored(portrait: Portrait) -> None:
    """``Email`` and ``Phone`` (.NET, CRM exports) are stored as the profile's ``email`` and ``phone``: they were not
    identifiers, so the profile showed an email no lookup found, and a second customer record sharing it stayed
    apart (``LoyaltyCard`` did identify)."""
    load(portrait, msg("identify", userId="u-1", traits={"Email": "Ann@Example.com", "Phone": "+1 415 555 0142"}),
         msg("identify", anonymousId="shop-1", context={"traits": {"Email": "ann@example.com"}},
             at="2026-02-01T10:00:00Z"))
    assert portrait.traits("user_id:u-1") == {"email": "Ann@Example.com", "phone": "+1 415 555 0142"}
    assert grouping(portrait, "user_id:u-1", "email:ann@example.com", "phone:+14155550142",
                    "anonymous_id:shop-1") == {portrait.resolve_profile_id("user_id:u-1")}


def test_an_external_id_of_type_profile_id_is_not_an_identifier(portrait: Portrait) -> None:
    """profile_id:... always names a Portrait profile: an external id of that type could never be looked up."""
    load(portrait, msg("track", userId="u-1", context={"externalIds": [{"type": "profile_id", "id": "crm-7"}]}))
    assert [i["type"] for i in portrait.identities("user_id:u-1")] == ["user_id"]


def test_a_shared_email_does_not_cost_a_customer_his_own_device_history(portrait: Portrait) -> None:
    load(portrait, msg("identify", userId="alice", traits={"email": "family@x.com"}),
         msg("page", anonymousId="bobphone", name="Home"))
    load(portrait, msg("identify", userId="bob", anonymousId="bobphone",
                       traits={"email": "family@x.com", "phone": "+1 212 555 0199"}))
    bob = portrait.resolve_profile_id("user_id:bob")
    assert grouping(portrait, "anonymous_id:bobphone", "phone:+12125550199") == {bob}
    assert portrait.resolve_profile_id("email:family@x.com") == portrait.resolve_profile_id("user_id:alice") != bob
    assert portrait.profile("user_id:bob")["events_count"] == 2  # his phone's page view joined him


def test_blocked_identifier_values_never_match(portrait: Portrait) -> None:
    load(portrait,
         msg("identify", userId="u-1", traits={"email": "test@test.com"}),
         msg("identify", userId="u-2", traits={"email": "test@test.com"}))
    assert len(grouping(portrait, "user_id:u-1", "user_id:u-2")) == 2


def test_event_with_only_blocked_identifiers_is_kept_and_listed(portrait: Portrait) -> None:
    load(portrait, msg("track", anonymousId="undefined", event="Product Viewed"))
    rejected = portrait.rejected()["rejected"]
    assert [(r["code"], r["source"]) for r in rejected] == [("no_identifier", "processor")]
    assert portrait.status()["events_received"] == 1  # still in the log, can be reprocessed


def test_events_filter_and_paginate_newest_first(portrait: Portrait) -> None:
    load(portrait, *[msg("track", userId="u-1", event="Viewed" if i % 2 else "Added",
                         at=f"2026-03-{i + 1:02d}T00:00:00Z") for i in range(9)])
    page = portrait.events("user_id:u-1", event="Viewed", limit=3)
    assert [e["timestamp"][:10] for e in page["events"]] == ["2026-03-08", "2026-03-06", "2026-03-04"]
    rest = portrait.events("user_id:u-1", event="Viewed", limit=3, cursor=page["next"])
    assert [e["timestamp"][:10] for e in rest["events"]] == ["2026-03-02"] and rest["next"] is None
    from datetime import datetime
    window = portrait.events("user_id:u-1", since=datetime(2026, 3, 3), until=datetime(2026, 3, 5))
    assert [e["timestamp"][:10] for e in window["events"]] == ["2026-03-04", "2026-03-03"]


def _all_pages(portrait: Portrait, reference: str, **filters: Any) -> list[tuple[str, str]]:
    seen, cursor = [], None
    while True:
        page = portrait.events(reference, cursor=cursor, limit=700, **filters)
        seen.extend((e["timestamp"], e["message_id"]) for e in page["events"])
        if (cursor := page["next"]) is None:
            return seen


def test_a_profile_with_many_events_pages_the_same_either_way(portrait: Portrait,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Few events are paged through the index, many by scanning (INDEXED_PAGE_MAX_EVENTS): same pages either way,
    newest first, ties on the timestamp broken by arrival, filters applied."""
    from portrait.sql import reads

    events = [msg("track", userId="busy", event="Viewed" if i % 3 else "Added", messageId=f"busy-{i:04d}",
                  at=f"2026-03-{1 + i % 28:02d}T{i % 24:02d}:00:00Z") for i in range(2_100)]
    load(portrait, *events, msg("track", userId="other", event="Viewed"))
    assert portrait.profile("user_id:busy")["events_count"] == 2_100 > reads.INDEXED_PAGE_MAX_EVENTS
    by_time = sorted(((m["timestamp"].replace("Z", ".000Z"), n, m) for n, m in enumerate(events)), reverse=True)
    expected = [(at, m["messageId"]) for at, _, m in by_time]
    scanned = _all_pages(portrait, "user_id:busy")
    added = _all_pages(portrait, "user_id:busy", event="Added")
    monkeypatch.setattr(reads, "INDEXED_PAGE_MAX_EVENTS", 10_000)
    assert scanned == _all_pages(portrait, "user_id:busy") == expected
    assert added == _all_pages(portrait, "user_id:busy", event="Added") == [e for e in expected if
                                                                         int(e[1][5:]) % 3 == 0]
    # The page's rows are read from the log in clusters of nearby seqs (reads.SEQ_CLUSTER_GAP): one per row too.
    monkeypatch.setattr(reads, "SEQ_CLUSTER_GAP", 0)
    for most_clusters in (1_000, 10):  # one query per row; too many clusters: one query for all
        monkeypatch.setattr(reads, "MAX_SEQ_CLUSTERS", most_clusters)
        one_by_one = portrait.events("user_id:busy", limit=60)
        assert [(e["timestamp"], e["message_id"]) for e in one_by_one["events"]] == expected[:60]


def test_crash_mid_batch_leaves_state_as_if_it_never_ran(settings: Settings, monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """A failure inside a batch rolls everything back; re-running gives exactly the uninterrupted result."""
    from portrait.pipeline import Processor

    messages = [msg("identify", anonymousId=f"a{i % 7}", userId=f"u{i % 5}", traits={"n": i}) for i in range(40)]
    reference = Portrait(Settings(db_path=settings.db_path.replace(".duckdb", "-ref.duckdb")), background=False)
    reference.ingest_messages(messages)
    reference.process_pending()
    expected = _snapshot(reference)
    reference.close()

    crashing = Portrait(settings, background=False)
    crashing.ingest_messages(messages)
    original = Processor._write

    def explode(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        raise RuntimeError("simulated crash after writing, before commit")

    monkeypatch.setattr(Processor, "_write", explode)
    session = crashing.store.session()
    with pytest.raises(RuntimeError):
        crashing.processor.process_batch(session)
    session.close()
    assert crashing.status()["events_processed"] == 0 and crashing.status()["profiles"] == 0
    monkeypatch.setattr(Processor, "_write", original)
    crashing.process_pending()
    assert _snapshot(crashing) == expected
    crashing.close()


def _snapshot(portrait: Portrait) -> dict[str, Any]:
    """Profiles keyed by user id: id, traits, identities, activity (profile ids are deterministic)."""
    out = {}
    for user in range(5):
        profile = portrait.profile(f"user_id:u{user}")
        out[f"u{user}"] = (profile["profile_id"], profile["traits"],
                           sorted((i["type"], i["value"]) for i in profile["identities"]),
                           profile["first_seen"], profile["last_seen"], profile["events_count"])
    return out


def test_small_batches_give_the_same_result_as_one_batch(settings: Settings, tmp_path: Any) -> None:
    messages = [msg("identify", anonymousId=f"a{i % 11}", userId=f"u{i % 5}", traits={"n": i}) for i in range(60)]
    one = Portrait(settings, background=False)
    one.ingest_messages(messages)
    one.process_pending()
    many = Portrait(Settings(db_path=str(tmp_path / "small.duckdb"), processor_batch_size=7,
                             processor_max_batch_size=7), background=False)
    many.ingest_messages(messages)
    many.process_pending()
    assert _snapshot(one) == _snapshot(many)
    one.close()
    many.close()


def test_batches_grow_while_the_processor_is_behind(tmp_path: Any) -> None:
    """Full batches double the next one up to the maximum; a batch that is not full means caught up again."""
    service = Portrait(Settings(db_path=str(tmp_path / "grow.duckdb"), processor_batch_size=5,
                                processor_max_batch_size=20), background=False)
    service.ingest_messages([msg("track", event="Viewed", userId=f"u{i % 9}") for i in range(100)])
    session = service.store.session()
    sizes = [service.processor.process_next(session) for _ in range(8)]
    assert sizes == [5, 10, 20, 20, 20, 20, 5, 0]
    service.ingest_messages([msg("track", event="Viewed", userId="u1") for _ in range(6)])
    assert [service.processor.process_next(session) for _ in range(3)] == [5, 1, 0]  # back to the small size
    session.close()
    assert service.status()["lag"] == 0
    assert len(service.events("user_id:u1")["events"]) == 11 + 6
    service.close()


def test_batch_sizes_must_be_positive(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="processor_max_batch_size"):
        Settings(db_path=str(tmp_path / "x.duckdb"), processor_max_batch_size=0)


def test_unknown_identity_is_not_found(portrait: Portrait) -> None:
    with pytest.raises(NotFound):
        portrait.profile("email:nobody@example.com")


USERS = st.sampled_from([None, "u1", "u2", "u3"])
ANONYMOUS_IDS = st.sampled_from([None, "a1", "a2", "a3", "a4"])
EVENTS = st.one_of(
    st.tuples(st.just("identify"), USERS, ANONYMOUS_IDS, st.sampled_from([None, "x@example.com", "y@example.com"])),
    st.tuples(st.just("alias"), st.sampled_from(["u1", "u2", "u3"]), st.sampled_from(["a1", "a2", "u1", "u2"]),
              st.none()),
)


@pytest.fixture(scope="module")
def empty_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new database with its migrations run, made once: each generated example opens a copy (a third of a second
    less per example than creating it anew; the settings under test are given when the copy is opened)."""
    path = tmp_path_factory.mktemp("empty") / "empty.duckdb"
    Portrait(Settings(db_path=str(path)), background=False).close()
    return path


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(EVENTS, min_size=1, max_size=30), batch_size=st.sampled_from([1, 4, 1000]),
       default_limit=st.sampled_from([1, 2, 5]))
def test_set_based_paths_agree_with_the_sequential_resolver(tmp_path_factory: pytest.TempPathFactory,
                                                            empty_database: Path,
                                                            events: list[tuple[str, Any, Any, Any]],
                                                            batch_size: int, default_limit: int) -> None:
    """Whatever path an event takes (fast, new, attach or slow), the result is what the resolver alone decides,
    also when per-type limits are small enough to refuse attachments."""
    from portrait.identity import IdentityGraph, IdentityRules
    from portrait.model import Identifier
    from portrait.pipeline import profile_id_for

    messages = []
    for n, (kind, user, other, email) in enumerate(events):
        if kind == "alias":
            messages.append(msg("alias", userId=user, previousId=other, messageId=f"p-{n}"))
            continue
        fields: dict[str, Any] = {"userId": user, "anonymousId": other or ("a-fallback" if user is None else None)}
        if email:
            fields["traits"] = {"email": email}
        messages.append(msg("identify", **{k: v for k, v in fields.items() if v is not None}, messageId=f"p-{n}"))
    db = tmp_path_factory.mktemp("paths") / "p.duckdb"
    shutil.copyfile(empty_database, db)
    db.chmod(0o600)  # as Portrait makes its files: no notice that it made it so
    service = Portrait(Settings(db_path=str(db), processor_batch_size=batch_size, processor_max_batch_size=batch_size,
                                identity_default_limit=default_limit), background=False)
    load(service, *messages)
    rules = IdentityRules.from_settings(Settings(identity_default_limit=default_limit))
    graph = IdentityGraph(rules)
    for seq, message in enumerate(messages, start=1):
        found = [Identifier("user_id", message.get("userId")), Identifier("anonymous_id", message.get("anonymousId"))]
        if "traits" in message:
            found.append(Identifier("email", message["traits"]["email"]))
        if message["type"] == "alias":
            previous = message["previousId"]
            found.append(Identifier("user_id" if f"user_id:{previous}" in graph.owner else "anonymous_id", previous))
        idents = sorted({i for i in found if i.value}, key=lambda i: (rules.rank(i.type), i.value))
        graph.resolve(idents, seq, lambda s=seq: profile_id_for(s))  # type: ignore[misc]
    for key, owner in graph.owner.items():
        assert service.resolve_profile_id(key) == graph.final(owner), key
    assert activity_mismatches(service) == []
    service.close()


def _count_sequential_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Batches that needed the sequential resolver (one entry each) from now on."""
    from portrait.pipeline import Processor

    calls: list[int] = []
    original = Processor._load_slow

    def counted(self: Processor, session: Any) -> Any:
        calls.append(1)
        return original(self, session)

    monkeypatch.setattr(Processor, "_load_slow", counted)
    return calls


def test_known_customer_on_a_new_device_is_attached_in_sql(portrait: Portrait,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    load(portrait, msg("identify", userId="u-1", anonymousId="phone-1", traits={"email": "ann@example.com"}),
         msg("identify", userId="u-2", anonymousId="phone-2"))
    sequential = _count_sequential_batches(monkeypatch)
    load(portrait,
         msg("track", userId="u-1", anonymousId="laptop-1", at="2026-03-02T10:00:00Z"),  # a new device
         msg("track", anonymousId="phone-2", event="Viewed"),  # fast
         msg("identify", userId="u-2", traits={"email": "bob@example.com"}, at="2026-03-02T10:02:00Z"))  # new email
    assert sequential == []
    profile = portrait.profile("user_id:u-2")
    assert {(i["type"], i["value"]) for i in profile["identities"]} == {
        ("user_id", "u-2"), ("anonymous_id", "phone-2"), ("email", "bob@example.com")}
    assert grouping(portrait, "user_id:u-1", "anonymous_id:laptop-1", "email:ann@example.com") == {
        portrait.resolve_profile_id("anonymous_id:phone-1")}
    # The same new identifier twice in one batch: the resolver decides (the first event attaches it).
    load(portrait, msg("track", userId="u-1", anonymousId="tablet-1", at="2026-03-03T10:00:00Z"),
         msg("track", userId="u-1", anonymousId="tablet-1", at="2026-03-03T10:01:00Z"))
    assert sequential == [1]
    assert portrait.resolve_profile_id("anonymous_id:tablet-1") == portrait.resolve_profile_id("user_id:u-1")
    assert len(portrait.events("user_id:u-1")["events"]) == 4


def test_new_customers_with_several_events_in_a_batch_are_made_in_sql(portrait: Portrait,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A first visit whose events all arrive in one batch is one new customer, made without the resolver: its
    first event creates the profile, each identifier is first seen with the earliest event carrying it."""
    sequential = _count_sequential_batches(monkeypatch)
    load(portrait,
         msg("page", anonymousId="visit-1", at="2026-03-01T10:00:00Z"),
         msg("track", anonymousId="visit-1", event="Product Viewed", at="2026-03-01T10:01:00Z"),
         msg("page", anonymousId="visit-2", at="2026-03-01T10:01:30Z"),  # another visitor, one event
         msg("identify", userId="u-7", anonymousId="visit-1", traits={"email": "Kim@Example.com"},
             at="2026-03-01T10:02:00Z"),
         msg("track", userId="u-7", anonymousId="visit-1", event="Order Completed", at="2026-03-01T10:03:00Z"))
    assert sequential == []
    profile = portrait.profile("email:kim@example.com")
    assert profile["profile_id"] == profile_id_for(1)  # created by the batch's first event
    assert grouping(portrait, "anonymous_id:visit-1", "user_id:u-7") == {profile["profile_id"]}
    first_seen = {(i["type"], i["value"]): i["first_seen"] for i in profile["identities"]}
    assert first_seen == {("anonymous_id", "visit-1"): "2026-03-01T10:00:00.000Z",
                          ("user_id", "u-7"): "2026-03-01T10:02:00.000Z",
                          ("email", "kim@example.com"): "2026-03-01T10:02:00.000Z"}
    assert len(portrait.events("user_id:u-7")["events"]) == 4
    assert portrait.resolve_profile_id("anonymous_id:visit-2") == profile_id_for(3)
    assert activity_mismatches(portrait) == []


def test_new_customers_the_resolver_would_keep_apart_are_left_to_it(portrait: Portrait,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Two new customers on one new device in one batch: the second user id is past its limit of one, so the
    device stays with the first customer -- the resolver's decision, not one profile made in SQL."""
    sequential = _count_sequential_batches(monkeypatch)
    load(portrait,
         msg("identify", userId="u-1", anonymousId="shared", at="2026-03-01T10:00:00Z"),
         msg("identify", userId="u-2", anonymousId="shared", at="2026-03-01T10:05:00Z"),
         msg("page", anonymousId="alone", at="2026-03-01T10:06:00Z"))  # still made in SQL, by itself
    assert sequential == [1]
    first, second = portrait.profile("user_id:u-1"), portrait.profile("user_id:u-2")
    assert first["profile_id"] != second["profile_id"]
    assert portrait.resolve_profile_id("anonymous_id:shared") == first["profile_id"]
    assert [c["dropped"] for c in second["identity_conflicts"]] == [[{"type": "anonymous_id", "value": "shared"}]]
    assert portrait.resolve_profile_id("anonymous_id:alone") == profile_id_for(3)


def test_attaching_past_a_limit_is_left_to_the_resolver(tmp_path: Any) -> None:
    """Limit 3 anonymous ids: the profile has two; one event of the batch may add a third, the next one may not."""
    service = Portrait(Settings(db_path=str(tmp_path / "limits.duckdb"), identity_limits={"user_id": 1,
                                "anonymous_id": 3}), background=False)
    load(service, msg("identify", userId="u-1", anonymousId="a-1"), msg("track", userId="u-1", anonymousId="a-2"))
    load(service,
         msg("track", userId="u-1", anonymousId="a-3", at="2026-03-02T10:00:00Z"),
         msg("track", userId="u-1", anonymousId="a-4", at="2026-03-02T10:01:00Z"),
         msg("track", userId="u-9", anonymousId="a-1", at="2026-03-02T10:02:00Z"))  # a second user_id: refused
    profile = service.profile("user_id:u-1")
    assert sorted(i["value"] for i in profile["identities"]) == ["a-1", "a-2", "a-3", "u-1"]
    assert [c["dropped"] for c in profile["identity_conflicts"]] == [[{"type": "anonymous_id", "value": "a-4"}]]
    with pytest.raises(NotFound):
        service.resolve_profile_id("anonymous_id:a-4")
    other = service.profile("user_id:u-9")  # a-1 dropped: the second customer on a shared device gets their own
    assert other["profile_id"] != profile["profile_id"]
    assert [c["dropped"] for c in other["identity_conflicts"]] == [[{"type": "anonymous_id", "value": "a-1"}]]
    assert service.status()["lag"] == 0
    service.close()


def test_alias_before_the_identify_it_names_in_the_same_batch(portrait: Portrait) -> None:
    """Log order decides: the alias comes first, so its previousId is still an anonymous id at that point."""
    load(portrait,
         msg("alias", previousId="x-1", userId="y-1", at="2026-03-01T00:00:00Z"),
         msg("identify", userId="x-1", at="2026-03-01T00:01:00Z"))
    assert portrait.resolve_profile_id("anonymous_id:x-1") == portrait.resolve_profile_id("user_id:y-1")
    assert portrait.resolve_profile_id("user_id:x-1") != portrait.resolve_profile_id("user_id:y-1")
    assert portrait.profile("user_id:y-1")["identity_conflicts"] == []


def test_an_event_that_cannot_be_processed_is_set_aside_not_blocking(portrait: Portrait,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from portrait.pipeline import Processor

    original = Processor._plan

    def fail_on_poison(self: Processor, graph: Any, events: list[Any]) -> Any:
        if any(e.message_id == "poison" for e in events):
            raise ValueError("cannot handle this one")
        return original(self, graph, events)

    monkeypatch.setattr(Processor, "_plan", fail_on_poison)
    portrait.ingest_messages([msg("identify", userId="before"), msg("alias", userId="p", previousId="q",
                                                                     messageId="poison"),
                              msg("identify", userId="after")])
    portrait.process_pending()
    assert portrait.status()["lag"] == 0
    assert grouping(portrait, "user_id:before") and grouping(portrait, "user_id:after")
    rejected = portrait.rejected()["rejected"]
    assert [(r["code"], r["message_id"]) for r in rejected] == [("processing_failed", "poison")]
    assert "ValueError: cannot handle this one" in rejected[0]["reason"]


def test_a_caught_up_processor_lets_events_gather_between_batches(settings: Settings) -> None:
    """processor_interval_ms: two commits in a row are not two batches back to back (each batch has a fixed cost)."""
    import dataclasses
    import time

    service = Portrait(dataclasses.replace(settings, processor_interval_ms=300))  # background processor
    try:
        started = time.monotonic()
        service.ingest_messages([msg("identify", userId="u-1", traits={"plan": "free"})])
        service.wait_processed()
        service.ingest_messages([msg("identify", userId="u-1", traits={"plan": "pro"})])
        service.wait_processed()
        assert time.monotonic() - started >= 0.3
        assert service.traits("user_id:u-1")["plan"] == "pro"
    finally:
        service.close()


def test_catching_up_ends_while_events_keep_arriving(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """catch_up (run by an erasure, with the processor paused) applies what the log held when it started and
    returns, even if each of its batches is followed by new events."""
    service = Portrait(Settings(db_path=str(tmp_path / "catch.duckdb"), processor_batch_size=5,
                                processor_max_batch_size=5), background=False)
    service.ingest_messages([msg("track", event="Viewed", userId=f"u{i}") for i in range(12)])
    process_next = service.processor.process_next

    def batch_then_more_traffic(session: Any) -> int:
        done = process_next(session)
        service.ingest_messages([msg("track", event="Viewed", userId="late")])
        return done

    monkeypatch.setattr(service.processor, "process_next", batch_then_more_traffic)
    try:
        assert service.processor.catch_up() == 12 + 2  # three batches of up to 5; two late arrivals fit in them
        assert service.status()["lag"] == 1
    finally:
        service.close()


def test_the_survivor_lists_merges_and_conflicts_of_profiles_it_absorbed(portrait: Portrait) -> None:
    """Merges and conflicts are filed under the profile that won at the time; when that profile is merged again,
    the final survivor still lists them (its whole history)."""
    for anonymous_id in ("a1", "a2", "a3"):
        portrait.ingest_messages([msg("page", anonymousId=anonymous_id)])
        portrait.process_pending()
    steps = [msg("identify", userId="u1", anonymousId="a2", traits={"email": "e@x.com"}),
             msg("identify", anonymousId="a3", traits={"email": "e@x.com"}),  # a3's profile into a2's
             msg("track", event="Viewed", anonymousId="a1", context={"traits": {"email": "e@x.com"}}),  # into a1's
             # Bob on Alice's tablet: the tablet is not used (a conflict on Bob's profile), then Bob's profile is
             # merged into an older one through his own phone.
             msg("page", anonymousId="bobs-phone"), msg("identify", userId="alice", anonymousId="tablet"),
             msg("identify", userId="bob", anonymousId="tablet"),
             msg("identify", userId="bob", anonymousId="bobs-phone")]
    for step in steps:
        portrait.ingest_messages([step])
        portrait.process_pending()
    profile = portrait.profile("user_id:u1")
    absorbed = {portrait.resolve_profile_id(f"anonymous_id:{a}") for a in ("a1", "a2", "a3")}
    assert absorbed == {profile["profile_id"]}
    assert len(profile["merges"]) == 2  # a3's into a2's (filed under a2's), then a2's into a1's
    bob = portrait.profile("user_id:bob")
    assert bob["profile_id"] == portrait.resolve_profile_id("anonymous_id:bobs-phone")
    assert [c["dropped"] for c in bob["identity_conflicts"]] == [[{"type": "anonymous_id", "value": "tablet"}]]
    assert activity_mismatches(portrait) == []


def test_first_and_last_seen_and_the_event_count_follow_merges(portrait: Portrait) -> None:
    """Kept per profile as events arrive, added up when profiles merge, by event time (not arrival order)."""
    load(portrait, msg("page", anonymousId="phone", at="2026-03-05T08:00:00Z"),
         msg("page", anonymousId="phone", at="2026-03-01T09:00:00Z"))  # late: the earlier time still counts
    load(portrait, msg("page", anonymousId="laptop", at="2026-02-20T12:00:00Z"),
         msg("track", anonymousId="laptop", at="2026-03-09T12:00:00Z"))
    load(portrait, msg("identify", userId="ann", anonymousId="phone", at="2026-03-06T10:00:00Z"))
    load(portrait, msg("identify", userId="ann", anonymousId="laptop", at="2026-03-07T10:00:00Z"))
    ann = portrait.profile("user_id:ann")
    assert (ann["first_seen"], ann["last_seen"], ann["events_count"]) == (
        "2026-02-20T12:00:00.000Z", "2026-03-09T12:00:00.000Z", 6)
    assert len(ann["merges"]) == 1
    assert activity_mismatches(portrait) == []


def test_migration_16_counts_the_activity_of_profiles_already_there(tmp_path: Any) -> None:
    settings = Settings(db_path=str(tmp_path / "old.duckdb"))
    old = Portrait(settings, background=False)
    load(old, msg("page", anonymousId="a1", at="2026-01-02T00:00:00Z"),
         msg("page", anonymousId="a1", at="2026-01-05T00:00:00Z"), msg("page", anonymousId="a2"))
    old.close()
    with duckdb.connect(settings.db_path) as con:  # as if written before migration 16
        con.execute("DROP TABLE profile_activity")
        con.execute("DELETE FROM schema_migrations WHERE version = 16")
    upgraded = Portrait(settings, background=False)
    a1 = upgraded.profile("anonymous_id:a1")
    assert (a1["first_seen"], a1["last_seen"], a1["events_count"]) == (
        "2026-01-02T00:00:00.000Z", "2026-01-05T00:00:00.000Z", 2)
    assert activity_mismatches(upgraded) == []
    upgraded.close()


def test_an_alias_finds_a_previous_id_sent_with_spaces_around_it(portrait: Portrait) -> None:
    """previousId is trimmed like every identifier, so " a1" links anonymous_id:a1 instead of failing to find it
    (and then colliding with it)."""
    portrait.ingest_messages([msg("page", anonymousId="a1"), msg("track", userId="u1")])
    portrait.process_pending()
    portrait.ingest_messages([msg("alias", userId="u1", previousId=" a1")])
    portrait.process_pending()
    assert portrait.resolve_profile_id("anonymous_id:a1") == portrait.resolve_profile_id("user_id:u1")
    assert portrait.rejected()["rejected"] == []


def test_user_and_anonymous_ids_lose_tabs_and_line_breaks_around_them_as_lookups_do(portrait: Portrait) -> None:
    """Ids are trimmed of whitespace as Python trims them (lookups, identity hints, previousIds): SQL's trim() alone
    kept a tab or a line break, so "u2\t" became a user id of its own that no lookup could reach."""
    load(portrait, msg("identify", userId="u2\t", anonymousId="a1\n"), msg("track", userId="u2"),
         msg("page", anonymousId="\ta5\r\n"))
    load(portrait, msg("alias", userId="u3", previousId="a5"))
    assert grouping(portrait, "user_id:u2", "anonymous_id:a1") == {portrait.resolve_profile_id("user_id:u2\t")}
    assert portrait.resolve_profile_id("anonymous_id:a5") == portrait.resolve_profile_id("user_id:u3")
    keys = {(i["type"], i["value"]) for i in portrait.identities("user_id:u2")}
    assert keys == {("user_id", "u2"), ("anonymous_id", "a1")}


def test_an_email_with_capitals_outside_ascii_is_found_as_the_processor_stored_it(portrait: Portrait) -> None:
    """Lookups lower-case an email as the processor's SQL does, letter by letter: Python's str.lower() made "İ" two
    characters and a final "Σ" a "ς", so these customers' profiles could not be found (nor erased) by email."""
    load(portrait, msg("identify", userId="u1", traits={"email": "İPEK@Example.com"}),
         msg("identify", userId="u2", traits={"email": "ΟΔΥΣΣΕΑΣ@example.gr"}))
    assert portrait.resolve_profile_id("email:İPEK@Example.com") == portrait.resolve_profile_id("user_id:u1")
    assert portrait.resolve_profile_id("email:ΟΔΥΣΣΕΑΣ@example.gr") == portrait.resolve_profile_id("user_id:u2")


def test_identity_limits_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="identity limits must be at least 1 \\(not for email\\)"):
        Settings(identity_limits={"user_id": 1, "email": 0})
    with pytest.raises(ValueError, match="not for the default"):
        Settings(identity_default_limit=0)
    with pytest.raises(ValueError, match="max_json_depth must be from 1 to 100, not 150"):
        Settings(max_json_depth=150)  # deeper than 200 levels is cut off when read: keep well clear of it


def test_migration_13_files_old_merges_and_conflicts_under_the_survivor(tmp_path: Any,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Databases written before merges and conflicts followed their profile: the migration moves them."""
    settings = Settings(db_path=str(tmp_path / "old.duckdb"))
    monkeypatch.setattr(pq, "REASSIGN_HISTORY", [])  # the old processor: history stays under the merged-away id
    old = Portrait(settings, background=False)
    for step in ([msg("page", anonymousId="a1")], [msg("page", anonymousId="a2")], [msg("page", anonymousId="a3")],
                 [msg("identify", anonymousId="a3", traits={"email": "e@x.com"})],
                 [msg("identify", anonymousId="a2", traits={"email": "e@x.com"})],
                 [msg("track", event="Viewed", anonymousId="a1", context={"traits": {"email": "e@x.com"}})]):
        old.ingest_messages(step)
        old.process_pending()
    survivor = old.resolve_profile_id("anonymous_id:a1")
    old.close()
    with duckdb.connect(settings.db_path) as con:  # the earlier merge is filed under a dead id
        assert con.execute("SELECT count(*) FROM merges WHERE profile_id = ?", [survivor]).fetchall() == [(1,)]
        con.execute("DELETE FROM schema_migrations WHERE version = 13")  # as if written before it
    monkeypatch.undo()
    upgraded = Portrait(settings, background=False)
    assert len(upgraded.profile("anonymous_id:a1")["merges"]) == 2
    upgraded.close()


def _quality_then_merge(service: Portrait) -> None:
    """A value kept out (age "abc") on an anonymous profile, which a later identify merges into an older one."""
    for step in ([msg("page", anonymousId="a1")], [msg("identify", anonymousId="a2", traits={"age": "abc"})],
                 [msg("identify", anonymousId="a1", traits={"email": "q@x.com"})],
                 [msg("identify", anonymousId="a2", traits={"email": "q@x.com"})]):
        service.ingest_messages(step)
        service.process_pending()


def test_data_quality_issues_follow_their_profile_into_a_merge(portrait: Portrait) -> None:
    portrait.ingest_messages([msg("page", anonymousId="a1")])
    portrait.ingest_messages([msg("identify", anonymousId="a2", traits={"age": "abc"})])
    portrait.process_pending()
    found_on = portrait.resolve_profile_id("anonymous_id:a2")
    portrait.ingest_messages([msg("identify", anonymousId="a1", traits={"email": "q@x.com"}),
                              msg("identify", anonymousId="a2", traits={"email": "q@x.com"})])
    portrait.process_pending()
    survivor = portrait.resolve_profile_id("anonymous_id:a2")
    assert survivor == portrait.resolve_profile_id("anonymous_id:a1") != found_on  # merged away
    assert [i["profile_id"] for i in portrait.data_quality()["issues"]] == [survivor]


def test_migration_19_files_old_data_quality_issues_under_the_survivor(tmp_path: Any,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(db_path=str(tmp_path / "old.duckdb"))
    monkeypatch.setattr(pq, "REASSIGN_HISTORY", [])  # the old processor: history stays under the merged-away id
    old = Portrait(settings, background=False)
    _quality_then_merge(old)
    survivor = old.resolve_profile_id("anonymous_id:a2")
    assert [i["profile_id"] for i in old.data_quality()["issues"]] != [survivor]
    old.close()
    with duckdb.connect(settings.db_path) as con:
        con.execute("DELETE FROM schema_migrations WHERE version = 19")  # as if written before it
    monkeypatch.undo()
    upgraded = Portrait(settings, background=False)
    assert [i["profile_id"] for i in upgraded.data_quality()["issues"]] == [survivor]
    upgraded.close()


@pytest.mark.parametrize("order", ["part first", "removal first", "one batch"])
def test_an_object_removed_on_one_profile_removes_its_older_parts_from_the_other_on_merge(
        tmp_path: Any, order: str) -> None:
    """{"address": null} at t2 on one profile, address.city at t1 on another: merged, the city is gone whichever
    profile survives (the log read in any order gives one result)."""
    part = msg("identify", anonymousId="a1", traits={"address": {"city": "Paris"}}, at="2026-01-01T00:00:00Z")
    removal = msg("identify", userId="u1", traits={"address": None}, at="2026-01-02T00:00:00Z")
    merge = msg("identify", userId="u1", anonymousId="a1", at="2026-01-03T00:00:00Z")
    steps = {"part first": [[part], [removal], [merge]], "removal first": [[removal], [part], [merge]],
             "one batch": [[removal, part, merge]]}[order]
    service = Portrait(Settings(db_path=str(tmp_path / "o.duckdb")), background=False)
    for step in steps:
        service.ingest_messages(step)
        service.process_pending()
    assert service.traits("user_id:u1") == {}
    service.close()


def test_a_messageid_sent_again_past_the_duplicate_window_makes_a_profile_of_its_own(tmp_path: Any) -> None:
    """Profile ids derive from the creating event's place in the log, not its messageId: a client that reuses ids
    (past the window in which duplicates are recognized) neither takes another profile's id nor loses its event."""
    service = Portrait(Settings(db_path=str(tmp_path / "r.duckdb"), dedup_max_ids=1), background=False)
    for step in ([msg("identify", userId="alice", messageId="zz0")], [msg("page", anonymousId="q", messageId="m1")],
                 [msg("identify", userId="alice", anonymousId="q", messageId="zz1")],  # m1's profile merged away
                 [msg("page", anonymousId="filler", messageId="f1")],
                 [msg("identify", userId="bob", messageId="m1")],  # m1 again: remembered no longer
                 [msg("page", anonymousId="someone", messageId="zz0")]):  # and alice's creating event's id
        service.ingest_messages(step)
        service.process_pending()
    alice, bob, someone = (service.profile(key) for key in ("user_id:alice", "user_id:bob", "anonymous_id:someone"))
    assert len({alice["profile_id"], bob["profile_id"], someone["profile_id"]}) == 3
    assert service.resolve_profile_id("anonymous_id:q") == alice["profile_id"]
    merged_away = alice["merges"][0]["merged_profile_id"]
    assert service.resolve_profile_id(f"profile_id:{merged_away}") == alice["profile_id"]  # still Alice's
    assert service.rejected()["rejected"] == [] and bob["events_count"] == someone["events_count"] == 1
    service.close()


def test_a_batch_of_more_than_110_591_new_customers_keeps_all_its_events(tmp_path: Any) -> None:
    """DuckDB 1.5.5 dropped a large INSERT into a table made in the same transaction after an INSERT of no rows
    (see processor.NEW_BATCH_ASSIGN): a batch with no returning customer lost all its events' profile rows."""
    service = Portrait(Settings(db_path=str(tmp_path / "big.duckdb"), processor_batch_size=120_000,
                                processor_max_batch_size=120_000), background=False)
    count = 115_000
    for start in range(0, count, 23_000):
        service.ingest_messages([{"type": "page", "anonymousId": f"visitor-{i}", "messageId": f"v-{i}",
                                  "timestamp": "2026-03-01T00:00:00Z"} for i in range(start, start + 23_000)])
    session = service.store.session()
    try:
        assert service.processor.process_next(session) == count  # one batch
        assert session.execute(parse("SELECT count(*) FROM event_profiles")) == [(count,)]
    finally:
        session.close()
    assert service.profile("anonymous_id:visitor-7")["events_count"] == 1
    assert service.status()["profiles"] == count
    assert activity_mismatches(service) == []
    service.close()


def test_a_pause_asked_for_while_the_processor_works_through_a_backlog_waits_for_one_batch_only(
        tmp_path: Path) -> None:
    """Whoever pauses processing (a segment created or deleted from the API, the segment thread's writes, an erasure)
    waits for the batch being processed, not for the backlog: the processor took its lock again at once after each
    batch (Python's locks are not fair), and under sustained ingest a segment's creation from the API waited through
    batch after batch (in the mixed soak ~70% of a 5-12 s POST /api/segments was spent there; with a 200,000-event
    backlog, one pause waited 43 s through three batches)."""
    settings = Settings(db_path=str(tmp_path / "p.duckdb"), write_key="w", admin_key="a",
                        processor_batch_size=2_000, processor_max_batch_size=2_000)
    offline = Portrait(settings, background=False)
    offline.ingest_messages([msg("identify", userId=f"u{n}", traits={"plan": "pro" if n % 2 else "free"})
                             for n in range(60_000)])
    offline.close()
    live = Portrait(settings)
    try:
        processed_between = []
        for _ in range(8):
            before = live.status()["events_processed"]  # a batch may be under way: it ends before the pause
            with live._processing_paused():
                processed_between.append(live.status()["events_processed"] - before)
        assert live.status()["lag"] > 0, "the backlog lasted through the pauses (else nothing was measured)"
    finally:
        live.close()
    assert max(processed_between) <= 2_000, processed_between  # the batch under way, and no more
