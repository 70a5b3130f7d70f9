"""Rebuilding every profile from the event log (portrait.rebuild): the same state with the same settings, the new
grouping after the identity settings change, old profile ids still resolving."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlglot import select
from typer.testing import CliRunner

from portrait.cli import app
from portrait.config import Settings
from portrait.demo import generate_messages
from portrait.errors import Conflict, NotFound
from portrait.service import Portrait

# Every table the processor derives, with the columns that do not hold the time of processing itself.
DERIVED = {
    "profiles": "profile_id, created_seq, created_at",
    "identities": "*",
    "profile_traits": "profile_id, key, value, seq, CASE WHEN seq > 0 THEN updated_at END",  # 0: calculated now
    "event_profiles": "*",
    "profile_aliases": "*",
    "merges": "profile_id, merged_id, seq, message_id, identifiers, merged_at",
    "identity_conflicts": "seq, message_id, profile_id, dropped",
    "data_quality": "profile_id, attribute, raw_value, reason, seq, message_id, source",
    "consent_records": "*",
    "profile_activity": "*",
    "rejected_events": "code, reason, source, message_id, payload",
    "segment_members": "segment_id, profile_id, entered_at",
    "processor_state": "*",
    "counters": "*",
}

EXTRAS: list[dict[str, Any]] = [
    {"type": "identify", "userId": "u-odd", "traits": {"birthday": "not a date", "email": "odd@example.com"},
     "context": {"consent": {"email": "granted", "sms": "denied"}}},
    {"type": "identify", "userId": "u-odd", "traits": {"plan": None}},
    {"type": "track", "anonymousId": "undefined", "event": "Blocked"},  # no identifier: the processor rejects it
    {"type": "identify", "userId": "u-card", "traits": {"member_no": "M-1"}},
    {"type": "track", "anonymousId": "pos-1", "event": "Order Completed", "properties": {"revenue": 30},
     "context": {"traits": {"member_no": "M-1"}}},
]


def derived_state(portrait: Portrait) -> dict[str, list[str]]:
    session = portrait.store.session()
    try:
        return {table: sorted(repr(row) for row in session.execute(select(*columns.split(", ")).from_(table)))
                for table, columns in DERIVED.items()}
    finally:
        session.close()


def loaded(settings: Settings) -> Portrait:
    portrait = Portrait(settings, background=False)
    messages = [*generate_messages(300, seed=5), *EXTRAS]
    for start in range(0, len(messages), 1000):
        portrait.ingest_messages(messages[start:start + 1000])
    portrait.create_attribute({"code": "spent", "name": "Spent", "definition": 'sum("Order Completed", revenue)'})
    portrait.create_segment({"name": "Buyers", "condition": "spent > 0"})
    portrait.process_pending()
    return portrait


def test_with_the_same_settings_a_rebuild_derives_the_same_state(settings: Settings) -> None:
    portrait = loaded(settings)
    before = derived_state(portrait)
    assert all(before[t] for t in ("merges", "data_quality", "consent_records", "rejected_events", "segment_members"))
    done = portrait.rebuild_profiles()
    assert done["events"] == len(before["event_profiles"]) + 1  # and the one without an identifier, rejected again
    assert done["hints_changed"] == 0 and done["ids_redirected"] == 0
    assert done["profiles_before"] == done["profiles_after"] == len(before["profiles"])
    assert derived_state(portrait) == before
    portrait.close()


def test_a_new_identity_trait_joins_what_it_names_once_rebuilt(settings: Settings) -> None:
    portrait = loaded(settings)
    pos_profile = portrait.profile("anonymous_id:pos-1")["profile_id"]
    assert pos_profile != portrait.profile("user_id:u-card")["profile_id"]  # member_no is not an identifier yet
    portrait.close()
    portrait = Portrait(dataclasses.replace(settings, identity_traits=(*settings.identity_traits, "member_no")),
                        background=False)
    done = portrait.rebuild_profiles()
    assert done["hints_changed"] == 2 and done["profiles_after"] == done["profiles_before"] - 1
    card = portrait.profile("member_no:M-1")
    assert card["profile_id"] == portrait.profile("anonymous_id:pos-1")["profile_id"] == portrait.profile(
        "user_id:u-card")["profile_id"]
    assert card["traits"]["spent"] == 30 and done["ids_redirected"] == 1  # replayed, the POS order simply attaches
    assert portrait.profile(f"profile_id:{pos_profile}")["profile_id"] == card["profile_id"]  # the old id resolves
    portrait.close()


def test_a_rebuild_cut_short_by_a_crash_is_finished_by_the_next(settings: Settings) -> None:
    portrait = loaded(settings)
    before = derived_state(portrait)
    portrait.close()
    crash = ("import os\nfrom portrait.config import Settings\nfrom portrait.service import Portrait\n"
             f"service = Portrait(Settings(db_path={settings.db_path!r}, processor_batch_size=1000, "
             "processor_max_batch_size=1000), background=False)\n"
             "service.rebuild_profiles(lambda done, total: done >= 3000 and os._exit(9))\n")
    assert subprocess.run([sys.executable, "-c", crash], check=False).returncode == 9  # as kill -9 would
    again = Portrait(settings, background=False)
    assert again.rebuild_interrupted() and again.status()["lag"] > 0  # the rest of the log, to apply again
    again.process_pending()
    assert again.status()["lag"] == 0  # the count of events processed is right again
    done = again.rebuild_profiles()
    assert not again.rebuild_interrupted() and done["profiles_before"] == len(before["profiles"])
    assert derived_state(again) == before
    again.close()


def test_a_rebuild_is_refused_once_retention_deleted_events(settings: Settings, monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    portrait = loaded(settings)
    monkeypatch.setattr(portrait.privacy, "expired", lambda: 12)
    with pytest.raises(Conflict, match="retention has deleted 12 raw events"):
        portrait.rebuild_profiles()
    portrait.close()


def test_the_cli_rebuilds_with_a_progress_report(settings: Settings, tmp_path: Path) -> None:
    loaded(settings).close()
    result = CliRunner().invoke(app, ["profiles", "rebuild", "--db", settings.db_path])
    assert result.exit_code == 0, result.output
    assert "Rebuilt" in result.output and "profiles" in result.output



def test_an_erased_persons_identifiers_stay_gone_after_a_rebuild(portrait: Portrait) -> None:
    # Alice's identifiers also sit in other people's events, which erasing her leaves in the log: Bob logged in on
    # her tablet and Bob2 gave her email (both already hers: dropped from theirs), Carol's event carried her email,
    # and Aaron's alias named her user id (without her profile, "alice" would be read as an anonymous id).
    portrait.ingest_messages([
        {"type": "identify", "userId": "alice", "anonymousId": "tablet-123",
         "traits": {"email": "alice@example.com"}},
        {"type": "identify", "userId": "bob", "anonymousId": "tablet-123"},
        {"type": "identify", "userId": "bob2", "traits": {"email": "alice@example.com"}},
        {"type": "track", "userId": "carol", "event": "Viewed", "context": {"traits": {"email": "alice@example.com"}}},
        {"type": "identify", "userId": "aaron"},
        {"type": "alias", "userId": "aaron", "previousId": "alice"},  # refused by the user_id limit
    ])
    portrait.process_pending()
    portrait.privacy_request({"type": "erase", "identity": "user_id:alice"}, "test", run_now=True)
    portrait.rebuild_profiles()
    for reference in ("email:alice@example.com", "anonymous_id:tablet-123", "anonymous_id:alice", "user_id:alice"):
        with pytest.raises(NotFound):  # no profile holds her identifiers again (nor would a new erase find one)
            portrait.resolve_profile_id(reference)
    session = portrait.store.session()
    try:
        keys = [str(row[0]) for row in session.execute(select("identity_key").from_("identities"))]
    finally:
        session.close()
    assert sorted(keys) == ["user_id:aaron", "user_id:bob", "user_id:bob2", "user_id:carol"]
    assert portrait.profile("user_id:bob")["profile_id"] != portrait.profile("user_id:bob2")["profile_id"]


def test_a_rebuild_ends_while_events_keep_arriving(portrait: Portrait) -> None:
    # Steady traffic: a new event is logged whenever the rebuild has applied a batch. The rebuild applies the log
    # it found and returns; the events after are the processor's as usual. (It went on until traffic stopped,
    # holding the processor's pause: segments, erasures and old profile ids waited all that time.)
    portrait.ingest_messages([{"type": "identify", "userId": f"u{i}", "traits": {"plan": "pro"}} for i in range(50)])
    portrait.process_pending()
    arrived: list[int] = []

    def traffic(done: int, total: int) -> None:
        if len(arrived) < 200:
            portrait.ingest_messages([{"type": "track", "userId": "u1", "event": "Viewed"}])
            arrived.append(done)

    done = portrait.rebuild_profiles(traffic)
    assert arrived == [50] and done["events"] == 50  # one batch: the log as it was
    portrait.process_pending()
    assert portrait.status()["lag"] == 0 and portrait.profile("user_id:u1")["events_count"] == 2


def test_a_deprecated_calculated_attribute_keeps_its_values_through_a_rebuild(settings: Settings) -> None:
    """Calculated values are not in the log, so a rebuild that emptied every trait lost those no longer computed
    for good (docs/calculated.md promises a deprecated one keeps its last values). When the new rules join two
    profiles, the joined one keeps the latest of their values."""
    portrait = loaded(settings)
    portrait.update_attribute("spent", {"status": "deprecated"})
    kept = spent_values(portrait)
    assert len(kept) > 20
    assert portrait.rebuild_profiles()["hints_changed"] == 0
    assert spent_values(portrait) == kept
    card, pos = (kept[portrait.resolve_profile_id(reference)] for reference in ("user_id:u-card", "anonymous_id:pos-1"))
    assert card[0] != pos[0] and card[1] != pos[1]  # 0 and 30, computed at different times
    portrait.close()
    joined = Portrait(dataclasses.replace(settings, identity_traits=(*settings.identity_traits, "member_no")),
                      background=False)
    joined.rebuild_profiles()
    assert spent_values(joined)[joined.resolve_profile_id("member_no:M-1")] == max(card, pos, key=lambda v: v[1])
    joined.close()


def spent_values(portrait: Portrait) -> dict[str, tuple[str, object]]:
    """profile id: (value, when computed) of the calculated attribute "spent"."""
    session = portrait.store.session()
    try:
        rows = session.execute(select("profile_id", "value", "updated_at").from_("profile_traits")
                               .where("key = 'spent'"))
    finally:
        session.close()
    return {str(profile_id): (str(value), updated_at) for profile_id, value, updated_at in rows}


def test_an_erasure_while_a_rebuild_is_cut_short_takes_the_kept_calculated_values(settings: Settings) -> None:
    """What a rebuild keeps to put back after a crash is personal data like the rest: erased with the person."""
    portrait = Portrait(settings, background=False)
    portrait.create_attribute({"code": "greeting", "name": "Greeting", "definition": 'concat("Hi ", first_name)'})
    portrait.ingest_messages([{"type": "identify", "userId": f"u{i}", "traits": {"first_name": f"Name{i}"}}
                              for i in range(3000)])
    portrait.process_pending()
    portrait.recalculate()
    portrait.update_attribute("greeting", {"status": "deprecated"})
    assert portrait.traits("user_id:u7")["greeting"] == "Hi Name7"
    portrait.close()
    crash = ("import os\nfrom portrait.config import Settings\nfrom portrait.service import Portrait\n"
             f"service = Portrait(Settings(db_path={settings.db_path!r}, processor_batch_size=1000, "
             "processor_max_batch_size=1000), background=False)\n"
             "service.rebuild_profiles(lambda done, total: done >= 1000 and os._exit(9))\n")
    assert subprocess.run([sys.executable, "-c", crash], check=False).returncode == 9
    again = Portrait(settings, background=False)
    again.process_pending()
    again.privacy_request({"type": "erase", "identity": "user_id:u7"}, "test", run_now=True)
    session = again.store.session()
    try:
        left = session.execute(select("value").from_("rebuild_old_calculated"))
    finally:
        session.close()
    assert len(left) == 2999 and '"Hi Name7"' not in {str(value) for (value,) in left}
    again.rebuild_profiles()
    assert again.traits("user_id:u8")["greeting"] == "Hi Name8"
    with pytest.raises(NotFound):
        again.traits("user_id:u7")
    again.close()
