"""Data-subject rights: complete access exports, erasure that leaves no trace in the database files and keeps the
person from coming back, requests that survive restarts -- through the service, API and CLI."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from fastapi.testclient import TestClient
from sqlglot import exp as sqlglot_exp
from tests.conftest import ADMIN_KEY, WRITE_KEY, Server, activity_mismatches
from typer.testing import CliRunner

from portrait import segments, subjects
from portrait.api import create_app
from portrait.cli import app
from portrait.config import Settings
from portrait.errors import Conflict, NotFound
from portrait.service import Portrait

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SECRETS = (b"ann.erasable@example.com", b"Annabelle-Zyx", b"+48601234567", b"ann-device-77")


def shop(portrait: Portrait) -> None:
    portrait.attributes.create({"code": "shoe_size", "name": "Shoe size", "type": "integer"})
    portrait.ingest_messages([  # two profiles for Ann (a device, an account), merged by the next batch
        {"type": "page", "anonymousId": "ann-device-77", "name": "Home",
         "context": {"consent": {"email": "granted"}}},
        {"type": "identify", "userId": "u-ann",
         "traits": {"email": "ann.erasable@example.com", "firstName": "Annabelle-Zyx", "phone": "+48 601 234 567",
                    "shoeSize": "big"}},
    ])
    portrait.process_pending()
    portrait.ingest_messages([
        {"type": "identify", "anonymousId": "ann-device-77", "userId": "u-ann"},
        {"type": "track", "userId": "u-ann", "event": "Order Completed", "properties": {"revenue": 30}},
        {"type": "identify", "userId": "u-bob", "traits": {"email": "bob@example.com", "firstName": "Bob"}},
        {"type": "track", "userId": "u-bob", "event": "Order Completed", "properties": {"revenue": 12}},
        {"type": "track", "event": "Broken", "properties": {"note": "ann.erasable@example.com"}},  # rejected
    ])
    portrait.process_pending()
    portrait.create_segment({"name": "buyers", "condition": 'performed("Order Completed")'})
    portrait.process_pending()


def files_of(folder: Path) -> bytes:
    return b"".join(path.read_bytes() for path in folder.iterdir() if path.is_file())


def test_access_exports_everything_held_about_the_person(portrait: Portrait) -> None:
    shop(portrait)
    done = portrait.privacy_request({"type": "access", "identity": "email:Ann.Erasable@example.com"}, "test",
                                    run_now=True)
    assert done["status"] == "done", done
    result: dict[str, Any] = done["result"]
    assert result["profile"]["traits"]["first_name"] == "Annabelle-Zyx"
    assert {i["type"] for i in result["profile"]["identities"]} == {"anonymous_id", "user_id", "email", "phone"}
    assert [e["type"] for e in result["events"]][:4] == ["page", "identify", "identify", "track"]  # both profiles
    assert any(e["event"] == "Audience Entered" for e in result["events"])
    assert result["consents"]["email"]["status"] == "granted"
    assert result["segment_history"] == [{"segment": "buyers", "change": "entered", "at": result["segment_history"][0]
                                          ["at"]}]
    assert [q["attribute"] for q in result["data_quality"]] == ["shoe_size"]


def _failing_append(*_: Any) -> None:
    raise RuntimeError("disk full")


def test_erasure_leaves_no_trace_and_the_person_does_not_come_back(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    settings = Settings(db_path=str(folder / "p.duckdb"), write_key=WRITE_KEY, admin_key=ADMIN_KEY)
    service = Portrait(settings, background=False)
    shop(service)
    # An earlier access export asked for by another of Ann's identifiers, and an uploaded list naming her.
    exported = service.privacy_request({"type": "access", "identity": "email:Ann.Erasable@example.com"}, "test",
                                       run_now=True)
    service.create_segment({"name": "fair leads", "identities": ["email:ann.erasable@example.com",
                                                                 "email:bob@example.com"]})
    service.process_pending()  # the Audience Entered events
    bob_before = service.profile("user_id:u-bob")
    service.store.checkpoint()
    assert all(secret in files_of(folder) for secret in SECRETS)  # the scan can see them before
    done = service.privacy_request({"type": "erase", "identity": "user_id:u-ann"}, "test", run_now=True)
    assert done["status"] == "done" and done["result"]["erased"] is True and done["identity"] is None
    assert done["result"]["merged_profiles"] == 1 and done["result"]["identities_suppressed"] == 4
    with pytest.raises(NotFound):
        service.profile("email:ann.erasable@example.com")
    bob_after = service.profile("user_id:u-bob")
    assert (bob_after["traits"], bob_after["events_count"]) == (bob_before["traits"], bob_before["events_count"])
    gone = service.privacy.get(exported["id"])
    assert (gone["identity"], gone["result"]) == (None, None)
    assert [m["profile_id"] for m in service.segments.members("fair leads")["members"]] == [
        bob_after["profile_id"]]
    assert activity_mismatches(service) == []  # the erased profile's activity went with its events
    # Later events naming the erased person are dropped and counted, never stored.
    service.ingest_messages([{"type": "track", "userId": "u-new", "event": "Visit",
                              "context": {"traits": {"email": "ANN.erasable@example.com"}}},
                             {"type": "page", "anonymousId": "ann-device-77"}])
    service.process_pending()
    assert service.status()["events_suppressed"] == 2
    # Counted with the commit: a dry-run import and a commit that fails (the SDK then retries) count nothing.
    naming_ann = [{"type": "page", "anonymousId": "ann-device-77", "messageId": "again"}]
    assert [c.result.accepted for c in service.import_messages([naming_ann], "test", dry_run=True)] == [0]
    assert service.status()["events_suppressed"] == 2
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(service.writer, "_append_events", _failing_append)
        with pytest.raises(RuntimeError, match="disk full"):
            service.ingest_messages([{"type": "page", "userId": "u-other"}, *naming_ann])
    assert service.status()["events_suppressed"] == 2
    service.ingest_messages([{"type": "page", "userId": "u-other"}, *naming_ann])
    assert service.status()["events_suppressed"] == 3
    with pytest.raises(NotFound):
        service.profile("user_id:u-new")
    service.close()
    leftovers = files_of(folder)
    assert [s for s in SECRETS if s in leftovers] == []
    reopened = Portrait(settings, background=False)
    assert reopened.profile("user_id:u-bob")["traits"]["first_name"] == "Bob"
    assert reopened.privacy.all()[0]["identity"] is None  # the request no longer names the person
    reopened.close()


def test_erasure_removes_rejected_messages_that_wrote_an_identifier_in_other_letters(portrait: Portrait) -> None:
    portrait.ingest_messages([
        {"type": "identify", "userId": "u-cy", "traits": {"email": "Cy.Quill@Example.COM"}},
        {"type": "identify", "traits": {"email": "Cy.Quill@Example.COM"}},  # rejected: no userId/anonymousId
        {"type": "identify", "traits": {"email": "someone.else@example.com"}},  # rejected, someone else's
    ])
    portrait.process_pending()
    assert len(portrait.rejected()["rejected"]) == 2
    done = portrait.privacy_request({"type": "erase", "identity": "user_id:u-cy"}, "test", run_now=True)
    assert done["status"] == "done", done
    left = portrait.rejected()["rejected"]
    assert len(left) == 1 and "someone.else" in left[0]["payload"] and "quill" not in left[0]["payload"].lower()


def test_erasure_removes_rejected_messages_that_wrote_a_phone_number_another_way(portrait: Portrait) -> None:
    portrait.ingest_messages([
        {"type": "identify", "userId": "u-dee", "traits": {"phone": "+1 415 555 0142"}},
        {"type": "identify", "traits": {"phone": "(415) 555-0142", "lastName": "Dee"}},  # rejected: no identity
        {"type": "identify", "traits": {"phone": "+1 415.555.0142"}},  # rejected too
        {"type": "identify", "traits": {"phone": "+1 415 555 0199"}},  # someone else's: stays
    ])
    portrait.process_pending()
    assert len(portrait.rejected()["rejected"]) == 3
    done = portrait.privacy_request({"type": "erase", "identity": "user_id:u-dee"}, "test", run_now=True)
    assert done["status"] == "done", done
    assert [r["payload"] for r in portrait.rejected()["rejected"]] == [
        '{"type":"identify","traits":{"phone":"+1 415 555 0199"}}']


def test_an_identifier_stored_under_an_earlier_rule_is_found_and_erased_as_shown(tmp_path: Path) -> None:
    """A local phone number was an identifier before the rule that refuses it (stored as +15551234): the profile
    still lists it, so it must still find the profile -- and an erasure by it must work."""
    settings = Settings(db_path=str(tmp_path / "legacy.duckdb"))
    service = Portrait(settings, background=False)
    service.ingest_messages([{"type": "identify", "userId": "u-legacy", "traits": {"firstName": "Lee"}}])
    service.process_pending()
    owner = service.resolve_profile_id("user_id:u-legacy")
    service.close()
    with duckdb.connect(settings.db_path) as con:  # as the earlier rule stored it
        con.execute("INSERT INTO identities (identity_key, type, value, profile_id, first_seen, seq) "
                    "VALUES ('phone:+15551234', 'phone', '+15551234', ?, TIMESTAMP '2026-01-01', 1)", [owner])
    service = Portrait(settings, background=False)
    listed = {(i["type"], i["value"]) for i in service.profile("user_id:u-legacy")["identities"]}
    assert ("phone", "+15551234") in listed
    assert service.resolve_profile_id("phone:+15551234") == owner
    done = service.privacy_request({"type": "erase", "identity": "phone:+15551234"}, "test", run_now=True)
    assert done["status"] == "done" and done["result"]["profile_id"] == owner
    with pytest.raises(NotFound):
        service.profile("user_id:u-legacy")
    service.close()


def test_requests_survive_a_restart_and_are_served_by_the_api(tmp_path: Path) -> None:
    settings = Settings(db_path=str(tmp_path / "r.duckdb"), write_key=WRITE_KEY, admin_key=ADMIN_KEY)
    service = Portrait(settings, background=False)
    shop(service)
    with TestClient(create_app(portrait=service)) as client:
        created = client.post("/api/privacy/requests", headers=ADMIN,
                              json={"type": "access", "identity": "user_id:u-bob"})
        assert created.status_code == 202 and created.json()["status"] == "pending"
        bad = client.post("/api/privacy/requests", headers=ADMIN, json={"type": "forget", "identity": "user_id:x"})
        assert bad.status_code == 400
    service.close()
    service = Portrait(settings, background=False)  # the pending request is still there after a restart
    assert service.privacy.run_pending() == 1
    with TestClient(create_app(portrait=service)) as client:
        request_id = created.json()["id"]
        done = client.get(f"/api/privacy/requests/{request_id}", headers=ADMIN).json()
        assert done["status"] == "done" and done["result"]["profile"]["traits"]["first_name"] == "Bob"
        no_pii = client.post("/api/keys", headers=ADMIN, json={"kind": "admin", "name": "ops",
                                                               "scopes": ["read", "admin"]}).json()
        refused = client.get(f"/api/privacy/requests/{request_id}",
                             headers={"Authorization": f"Bearer {no_pii['key']}"})
        assert refused.status_code == 403
        audit = [e["action"] for e in client.get("/api/audit", headers=ADMIN).json()["entries"]]
        assert "read_access_export" in audit and "POST /api/privacy/requests" in audit
    service.close()


def test_the_cli_runs_requests(tmp_path: Path) -> None:
    db = str(tmp_path / "c.duckdb")
    service = Portrait(Settings(db_path=db), background=False)
    shop(service)
    service.close()
    runner = CliRunner()
    export = tmp_path / "ann.json"
    result = runner.invoke(app, ["privacy", "request", "--type", "access", "--identity", "user_id:u-ann", "-o",
                                 str(export), "--db", db])
    assert result.exit_code == 0, result.output
    assert json.loads(export.read_text())["profile"]["traits"]["first_name"] == "Annabelle-Zyx"
    again = runner.invoke(app, ["privacy", "request", "--type", "access", "--identity", "user_id:u-ann", "-o",
                                str(export), "--db", db])  # refused before a second request is made
    assert again.exit_code == 1 and "exists already: pass --force" in " ".join(again.output.split())
    assert runner.invoke(app, ["privacy", "request", "--type", "access", "--identity", "user_id:u-ann", "-o",
                               str(export), "--force", "--db", db]).exit_code == 0
    assert json.loads(export.read_text())["profile"]["traits"]["first_name"] == "Annabelle-Zyx"
    erased = runner.invoke(app, ["privacy", "request", "--type", "erase", "--identity", "user_id:u-ann", "--db", db])
    assert erased.exit_code == 0, erased.output
    said = " ".join(erased.output.split())  # a sentence, not the result's JSON
    assert re.search(r"done: erased profile [0-9a-f-]{36} with its 5 events and 4 identities \(suppressed from "
                     r"now on\); profiles merged into it: 1; saved conditions rewritten: 0\.", said), said
    listed = runner.invoke(app, ["privacy", "list", "--db", db, "--json"])
    assert "u-ann" not in listed.output and listed.output.count('"done"') == 3
    ids = [r["id"] for r in json.loads(listed.output)]
    narrow = runner.invoke(app, ["privacy", "list", "--db", db], env={"COLUMNS": "80"})
    assert all(i in narrow.output for i in ids), narrow.output  # whole, for privacy show to take
    assert runner.invoke(app, ["quality", "--db", db]).output.strip() == "No data-quality issues."
    nobody = runner.invoke(app, ["privacy", "request", "--type", "erase", "--identity", "user_id:nobody", "--db", db])
    assert nobody.exit_code == 0, nobody.output
    assert ("done: nothing to erase: no profile had this identity; it is suppressed from now on."
            in " ".join(nobody.output.split())), nobody.output


def test_retention_deletes_old_raw_events_only(portrait: Portrait) -> None:
    from datetime import timedelta

    from portrait.spec import utc_now

    old = (utc_now() - timedelta(days=40)).isoformat() + "Z"
    portrait.ingest_messages([{"type": "track", "userId": "r1", "event": "Old", "timestamp": old,
                               "properties": {"secret": "x"}},
                              {"type": "track", "userId": "r1", "event": "New", "properties": {"kept": True}}])
    portrait.process_pending()
    assert portrait.privacy.expire(0) == 0  # 0 keeps everything
    assert portrait.privacy.expire(30) == 1
    assert [e["event"] for e in portrait.events("user_id:r1")["events"]] == ["New"]
    assert portrait.profile("user_id:r1")["events_count"] == 2  # who did what and when stays


def test_sequence_numbers_are_never_reused_after_the_newest_events_are_erased(tmp_path: Path) -> None:
    """Erasing the person who sent the newest events must not let a restarted writer hand out their sequence
    numbers again: the processor has passed them, so events numbered again would never reach a profile."""
    settings = Settings(db_path=str(tmp_path / "p.duckdb"), write_key=WRITE_KEY, admin_key=ADMIN_KEY)
    service = Portrait(settings, background=False)
    service.ingest_messages([{"type": "identify", "userId": "u-keep", "traits": {"plan": "free"}}])
    service.ingest_messages([{"type": "identify", "userId": "u-gone", "traits": {"plan": "pro"}},
                             {"type": "track", "userId": "u-gone", "event": "Order Completed"}])
    service.process_pending()
    service.privacy_request({"type": "erase", "identity": "user_id:u-gone"}, "test", run_now=True)
    service.close()
    reopened = Portrait(settings, background=False)
    reopened.ingest_messages([{"type": "identify", "userId": "u-after", "traits": {"plan": "gold"}}])
    reopened.process_pending()
    assert reopened.profile("user_id:u-after")["traits"]["plan"] == "gold"
    assert reopened.status()["lag"] == 0
    reopened.close()


def test_retention_leaves_events_the_processor_has_not_applied(portrait: Portrait) -> None:
    """A historical import older than the retention window still reaches the profiles before its raw events go."""
    from datetime import timedelta

    from portrait.spec import utc_now

    old = (utc_now() - timedelta(days=400)).isoformat() + "Z"
    portrait.ingest_messages([{"type": "identify", "userId": "u-old", "timestamp": old, "traits": {"plan": "pro"}}])
    assert portrait.privacy.expire(30) == 0  # not applied yet: kept
    portrait.process_pending()
    assert portrait.profile("user_id:u-old")["traits"]["plan"] == "pro"
    assert portrait.privacy.expire(30) == 1


def test_erasure_covers_events_received_but_not_yet_applied(portrait: Portrait) -> None:
    """Events about the person that were still waiting for the processor do not bring the profile back."""
    portrait.ingest_messages([{"type": "identify", "userId": "u-late", "traits": {"email": "late.one@example.com"}}])
    portrait.process_pending()
    portrait.ingest_messages([{"type": "identify", "userId": "u-late", "traits": {"plan": "pro"}},
                             {"type": "identify", "userId": "u-unseen", "traits": {"email": "unseen@example.com"}}])
    done = portrait.privacy_request({"type": "erase", "identity": "user_id:u-late"}, "test", run_now=True)
    assert done["result"]["events"] == 2  # the applied identify and the one still waiting
    unseen = portrait.privacy_request({"type": "erase", "identity": "email:unseen@example.com"}, "test",
                                     run_now=True)
    assert unseen["result"]["erased"] is True  # its only event had not been applied when the request came
    portrait.process_pending()
    for identity in ("user_id:u-late", "user_id:u-unseen"):
        with pytest.raises(NotFound):
            portrait.profile(identity)
    assert portrait.status()["lag"] == 0


def test_erasure_covers_events_that_arrive_while_it_runs(portrait: Portrait) -> None:
    """A request read just before the person's identifiers were suppressed is applied and erased with them."""
    portrait.ingest_messages([{"type": "identify", "userId": "u-race", "anonymousId": "race-device",
                              "traits": {"email": "race@example.com"}}])
    portrait.process_pending()
    catch_up = portrait.privacy._hooks.catch_up
    calls: list[int] = []

    def catch_up_then_receive() -> None:
        catch_up()
        if not calls:  # as if a request had been read just now: the suppression list does not name them yet
            portrait.ingest_messages([{"type": "page", "anonymousId": "race-device", "name": "Home"}])
        calls.append(1)

    portrait.privacy._hooks = dataclasses.replace(portrait.privacy._hooks, catch_up=catch_up_then_receive)
    done = portrait.privacy_request({"type": "erase", "identity": "user_id:u-race"}, "test", run_now=True)
    assert len(calls) == 2 and done["result"]["events"] == 2
    portrait.ingest_messages([{"type": "page", "anonymousId": "race-device", "name": "Later"}])
    portrait.process_pending()
    assert portrait.status()["events_suppressed"] == 1  # after the request: dropped at ingestion
    with pytest.raises(NotFound):
        portrait.profile("anonymous_id:race-device")
    assert portrait.status()["lag"] == 0


def test_a_request_being_read_when_the_erasure_starts_is_erased_too(
        portrait: Portrait, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a request and queueing its events cannot straddle the moment the person is suppressed: the erasure
    waits for a request being read, then commits, applies and erases what it brought."""
    portrait.ingest_messages([{"type": "identify", "userId": "u-race", "anonymousId": "race-device"}])
    portrait.process_pending()
    read, release = threading.Event(), threading.Event()
    submit = portrait.writer.submit

    def submit_when_released(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == "client":
            read.set()  # read against the list without the person; not yet queued
            release.wait(10)
        return submit(*args, **kwargs)

    monkeypatch.setattr(portrait.writer, "submit", submit_when_released)
    client = threading.Thread(target=portrait.ingest_messages, name="client",
                              args=([{"type": "page", "anonymousId": "race-device", "name": "Home"}],))
    client.start()
    assert read.wait(10)
    results: list[dict[str, Any]] = []
    eraser = threading.Thread(target=lambda: results.append(portrait.privacy_request(
        {"type": "erase", "identity": "user_id:u-race"}, "test", run_now=True)))
    eraser.start()
    eraser.join(0.5)
    assert eraser.is_alive()  # waiting for the request being read
    release.set()
    client.join(10)
    eraser.join(10)
    assert results[0]["result"]["events"] == 2
    portrait.process_pending()
    with pytest.raises(NotFound):
        portrait.profile("anonymous_id:race-device")
    assert portrait.status()["lag"] == 0


def test_a_failed_erasure_does_not_leave_the_person_suppressed(portrait: Portrait) -> None:
    portrait.ingest_messages([{"type": "identify", "userId": "u-kept", "traits": {"plan": "pro"}}])
    portrait.process_pending()
    hooks = portrait.privacy._hooks
    calls: list[int] = []

    def fail_the_second_time() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        hooks.catch_up()

    portrait.privacy._hooks = dataclasses.replace(hooks, catch_up=fail_the_second_time)
    done = portrait.privacy_request({"type": "erase", "identity": "user_id:u-kept"}, "test", run_now=True)
    assert done["status"] == "failed" and "disk full" in done["error"]
    assert portrait.privacy.suppressed == frozenset()
    portrait.ingest_messages([{"type": "identify", "userId": "u-kept", "traits": {"plan": "gold"}}])
    portrait.process_pending()
    assert portrait.profile("user_id:u-kept")["traits"]["plan"] == "gold"  # still a customer, still updated


def test_an_erasure_under_steady_traffic_with_the_background_processor(settings: Settings) -> None:
    """Server mode: the processor thread, the privacy worker and a client sending all the time. The erasure pauses
    the processor, catches up past a moving log and finishes; the person does not come back."""
    service = Portrait(settings)
    service.start_scheduler()
    service.ingest_messages([{"type": "identify", "userId": "u-busy", "traits": {"email": "busy@example.com"}}])
    service.wait_processed()
    sending = threading.Event()
    sending.set()

    def client() -> None:
        batch = 0
        while sending.is_set():
            batch += 1
            service.ingest_messages([{"type": "track", "userId": f"other-{batch}-{i}", "event": "Viewed"}
                                     for i in range(50)] + [{"type": "track", "userId": "u-busy", "event": "Viewed"}])

    traffic = threading.Thread(target=client)
    traffic.start()
    try:
        time.sleep(0.3)
        created = service.privacy_request({"type": "erase", "identity": "email:busy@example.com"}, "test")
        deadline = time.monotonic() + 30
        while service.privacy.get(created["id"])["status"] not in ("done", "failed") and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # more traffic naming the person, now dropped at ingestion
    finally:
        sending.clear()
        traffic.join(30)
    done = service.privacy.get(created["id"])
    assert done["status"] == "done" and done["result"]["erased"] is True, done
    service.wait_processed()
    with pytest.raises(NotFound):
        service.profile("user_id:u-busy")
    status = service.status()
    assert status["lag"] == 0 and status["events_suppressed"] > 0
    assert service.profile("user_id:other-1-0")["events_count"] == 1
    service.close()


def test_expired_events_stay_duplicates_after_a_restart(settings: Settings) -> None:
    """Retention deletes the raw events but keeps their messageIds: an SDK retry or a re-imported file of an expired
    event is still a duplicate after a restart, so it is not stored and applied a second time."""
    from datetime import timedelta

    from portrait.spec import utc_now

    old = (utc_now() - timedelta(days=400)).isoformat() + "Z"
    message = {"type": "track", "userId": "u-old", "event": "Order Completed", "messageId": "m-old-1",
               "timestamp": old, "properties": {"revenue": 10}}
    service = Portrait(settings, background=False)
    service.ingest_messages([message])
    service.process_pending()
    assert service.privacy.expire(30) == 1
    service.close()
    reopened = Portrait(settings, background=False)
    assert reopened.ingest_messages([message]).duplicates == 1  # the live path's memory, read back at start
    imported = list(reopened.import_messages([[message]], "default"))
    assert imported[0].result.duplicates == 1  # the whole-log check of imports
    reopened.process_pending()
    assert reopened.profile("user_id:u-old")["events_count"] == 1
    with pytest.raises(Conflict, match="retention has deleted 1 raw events"):
        reopened.rebuild_traits()  # would lose what the expired events set
    reopened.close()


def eve_and_her_unlinked_events(portrait: Portrait, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eve (user id 42), and events naming her that no profile holds: an alias the processor set aside, events
    whose only identifier is a blocked value; a rejected message with her email; someone else's ("other")."""
    from portrait.pipeline import Processor

    portrait.ingest_messages([{"type": "identify", "userId": "42",
                               "traits": {"email": "Eve.Unlinked@example.com", "phone": "+1 415 555 0142"}}])
    portrait.process_pending()
    original = Processor._plan

    def fail_on_poison(self: Processor, graph: Any, events: list[Any]) -> Any:
        if any(e.message_id == "poison" for e in events):
            raise ValueError("cannot handle this one")
        return original(self, graph, events)

    with monkeypatch.context() as patch:
        patch.setattr(Processor, "_plan", fail_on_poison)
        portrait.ingest_messages([
            {"type": "alias", "userId": "42", "previousId": "eve-old-laptop", "messageId": "poison"},  # set aside
            {"type": "track", "anonymousId": "undefined", "event": "Newsletter", "messageId": "letter",
             "properties": {"email": "EVE.unlinked@example.com"}},  # no usable identifier
            {"type": "track", "anonymousId": "null", "event": "Call", "messageId": "call",
             "properties": {"phone": "(415) 555-0142"}},
            {"type": "track", "anonymousId": "undefined", "event": "Newsletter", "messageId": "other",
             "properties": {"email": "someone.else@example.com"}},  # someone else's
            {"type": "track", "event": "Broken", "messageId": "broken",  # rejected: no userId/anonymousId
             "properties": {"note": "eve.unlinked@example.com"}},
        ])
        portrait.process_pending()


def test_access_lists_her_events_that_no_profile_holds_and_rejected_messages(
        portrait: Portrait, monkeypatch: pytest.MonkeyPatch) -> None:
    """What an erasure would take as hers is in her access export too (GDPR art. 15), and nothing of others'."""
    eve_and_her_unlinked_events(portrait, monkeypatch)
    done = portrait.privacy_request({"type": "access", "identity": "user_id:42"}, "test", run_now=True)
    assert done["status"] == "done", done
    result = done["result"]
    assert [e["message_id"] for e in result["events_without_profile"]] == ["poison", "letter", "call"]
    assert sorted((r["code"], r["message_id"]) for r in result["rejected"]) == [
        ("missing_identity", "broken"), ("no_identifier", "call"), ("no_identifier", "letter"),
        ("processing_failed", "poison")]
    assert "someone.else" not in json.dumps(result)


def test_erasure_removes_her_events_that_no_profile_holds(portrait: Portrait, monkeypatch: pytest.MonkeyPatch) -> None:
    """Events the processor set aside (processing_failed) or found no usable identifier in (no_identifier) stay in
    the log linked to no profile: those naming the person go with her, or they keep her user id, email and phone
    (and a rebuild would apply her set-aside alias again, making a profile of the old laptop it named)."""
    eve_and_her_unlinked_events(portrait, monkeypatch)
    assert sorted(r["code"] for r in portrait.rejected()["rejected"]) == [
        "missing_identity", *["no_identifier"] * 3, "processing_failed"]
    done = portrait.privacy_request({"type": "erase", "identity": "email:eve.unlinked@example.com"}, "test",
                                    run_now=True)
    assert done["status"] == "done" and done["result"]["events"] == 4, done
    assert [e["message_id"] for e in portrait.recent_events(0)] == ["other"]
    assert [r["message_id"] for r in portrait.rejected()["rejected"]] == ["other"]
    portrait.rebuild_profiles()
    with pytest.raises(NotFound):
        portrait.profile("anonymous_id:eve-old-laptop")


def test_the_search_for_her_unlinked_events_reads_the_set_aside_ones_only() -> None:
    """The rules that find her events no profile holds search the text of those events only (gathered first into
    ``unlinked_events``), never ``events`` itself: DuckDB evaluated the text search on every event of the log before
    keeping the set-aside ones, and an erasure of a customer with ten events took 5 s on 1M events (ten queued
    ones a minute; benchmarks/privacy_speed.py). The two tests above show the rules still find what they found."""
    from portrait.sql import subjects as statements

    searches = {"naming": statements.ADD_UNLINKED_NAMING, "holding": statements.ADD_UNLINKED_HOLDING,
                "holding a phone": statements.ADD_UNLINKED_HOLDING_PHONE}
    for name, statement in searches.items():
        read = {table.name for table in statement.expression.find_all(sqlglot_exp.Table)}
        assert read == {"unlinked_events"}, f"the search for unlinked events {name} her value reads {read}"


def _named(service: Portrait, identity: str) -> tuple[list[Any], list[Any]]:
    """The identifiers a profile's merge records and identity conflicts name."""
    found = service.profile(identity)
    return [m["identifiers"] for m in found["merges"]], [c["dropped"] for c in found["identity_conflicts"]]


def test_erasure_removes_her_identifiers_from_other_profiles_merges_and_conflicts(portrait: Portrait) -> None:
    """Bob merged his phone's profile with an identify also giving the family email, which is Alice's; Bob2 logged
    in on Carl's tablet with it too: their merge records and identity conflicts name her email. Erasing Alice takes
    it out of those lists, as a rebuild (which reads an erased identifier as none) would, and leaves Carl's tablet."""
    alice = {"type": "email", "value": "alice.family@example.com"}
    carl = {"type": "anonymous_id", "value": "carl-tablet"}
    portrait.ingest_messages([
        {"type": "identify", "userId": "u-alice", "traits": {"email": "alice.family@example.com"}},
        {"type": "identify", "userId": "u-carl", "anonymousId": "carl-tablet"},
        {"type": "page", "anonymousId": "bob-phone"}, {"type": "identify", "userId": "u-bob"},
    ])
    portrait.process_pending()
    portrait.ingest_messages([
        {"type": "identify", "userId": "u-bob", "anonymousId": "bob-phone",
         "traits": {"email": "alice.family@example.com"}},
        {"type": "identify", "userId": "u-bob2", "anonymousId": "carl-tablet",
         "traits": {"email": "Alice.Family@example.com"}},
    ])
    portrait.process_pending()
    bob = {"type": "user_id", "value": "u-bob"}, {"type": "anonymous_id", "value": "bob-phone"}
    assert _named(portrait, "user_id:u-bob") == ([[bob[0], alice, bob[1]]], [[alice]])
    assert _named(portrait, "user_id:u-bob2") == ([], [[carl, alice]])
    done = portrait.privacy_request({"type": "erase", "identity": "user_id:u-alice"}, "test", run_now=True)
    assert done["status"] == "done", done
    erased = ([list(bob)], []), ([], [[carl]])
    assert (_named(portrait, "user_id:u-bob"), _named(portrait, "user_id:u-bob2")) == erased
    portrait.rebuild_profiles()
    assert (_named(portrait, "user_id:u-bob"), _named(portrait, "user_id:u-bob2")) == erased


def test_erasure_forgets_her_identity_in_the_error_of_an_earlier_request(portrait: Portrait) -> None:
    """An access request made before she was known failed with "no profile has the identity email:..."; erasing
    her forgets that request's identity, and its error with it."""
    early = portrait.privacy_request({"type": "access", "identity": "email:Fay.Early@example.com"}, "test",
                                     run_now=True)
    assert early["status"] == "failed" and "fay.early@example.com" in early["error"].lower()
    portrait.ingest_messages([{"type": "identify", "userId": "u-fay", "traits": {"email": "fay.early@example.com"}}])
    portrait.process_pending()
    done = portrait.privacy_request({"type": "erase", "identity": "user_id:u-fay"}, "test", run_now=True)
    assert done["status"] == "done", done
    forgotten = portrait.privacy.get(early["id"])
    assert forgotten["status"] == "failed" and "fay.early" not in json.dumps(forgotten).lower(), forgotten
    assert "fay.early" not in json.dumps(portrait.privacy.all()).lower()


def test_a_message_naming_an_erased_person_is_dropped_even_when_it_breaks_a_rule(portrait: Portrait) -> None:
    """After the erasure, a message carrying one of her identifiers that also breaks a rule checked before the
    suppression (its type, its size) is dropped and counted like the others, not kept whole as a rejected message."""
    portrait.ingest_messages([{"type": "identify", "userId": "u-gina", "traits": {"email": "gina.q@example.com"}}])
    portrait.process_pending()
    done = portrait.privacy_request({"type": "erase", "identity": "user_id:u-gina"}, "test", run_now=True)
    assert done["status"] == "done", done
    result = portrait.ingest_messages([
        {"type": "bogus", "userId": "u-gina"},
        {"type": "track", "userId": "u-gina", "event": "Viewed", "properties": {"note": "y" * 40_000}},
        {"type": "identify", "anonymousId": "gina-device", "traits": {"email": "Gina.Q@example.com"},
         "timestamp": "not a time"},
        {"type": "bogus", "userId": "u-someone-else"},  # someone else's: kept as rejected
    ])
    assert result.rejected == 1
    assert [r["payload"] for r in portrait.rejected()["rejected"]] == ['{"type":"bogus","userId":"u-someone-else"}']
    assert portrait.status()["events_suppressed"] == 3


def test_a_failed_request_shows_its_identity_masked_in_its_error_without_pii_read(portrait: Portrait) -> None:
    """"no profile has the identity email:..." names the identity the request masks for a key without pii:read."""
    failed = portrait.privacy_request({"type": "access", "identity": "email:Ivo.Nobody@example.com"}, "test",
                                      run_now=True)
    assert failed["status"] == "failed"
    with TestClient(create_app(portrait=portrait)) as client:
        no_pii = client.post("/api/keys", headers=ADMIN, json={"kind": "admin", "name": "ops",
                                                               "scopes": ["read", "admin"]}).json()
        headers = {"Authorization": f"Bearer {no_pii['key']}"}
        one = client.get(f"/api/privacy/requests/{failed['id']}", headers=headers).json()
        listed = client.get("/api/privacy/requests", headers=headers).json()["requests"]
    assert one["identity"] == "email:I***@example.com" and "i***@example.com" in one["error"].lower(), one
    assert "ivo.nobody" not in json.dumps([one, listed]).lower()


def test_retention_leaves_property_based_calculations_the_events_still_held(portrait: Portrait) -> None:
    """As calculated.md says: once an order's raw event expires, a sum over its property no longer holds it, while a
    count (which profile did what and when is kept) and the first time still do."""
    from datetime import timedelta

    from portrait.spec import utc_now

    old = (utc_now() - timedelta(days=100)).isoformat() + "Z"
    portrait.ingest_messages([
        {"type": "track", "userId": "r2", "event": "Order Completed", "properties": {"revenue": 10}, "timestamp": old},
        {"type": "track", "userId": "r2", "event": "Order Completed", "properties": {"revenue": 5}}])
    portrait.process_pending()
    for code, definition in (("revenue_all", 'sum("Order Completed", revenue)'),
                             ("orders_all", 'count("Order Completed")'),
                             ("first_order", 'first_time("Order Completed")')):
        portrait.create_attribute({"code": code, "name": code, "definition": definition})
    before = portrait.profile("user_id:r2")["traits"]
    assert (before["revenue_all"], before["orders_all"]) == (15, 2)
    assert portrait.privacy.expire(30) == 1
    portrait.recalculate()
    after = portrait.profile("user_id:r2")["traits"]
    assert (after["revenue_all"], after["orders_all"], after["first_order"]) == (5, 2, before["first_order"])


def test_retention_takes_rejected_messages_received_before_the_window(portrait: Portrait) -> None:
    """A rejected message keeps what was sent (here an email) for someone to look at, not beyond the retention."""
    from datetime import timedelta

    from portrait.spec import utc_now

    portrait.ingest_messages([{"type": "track", "userId": "r3", "context": {"traits": {"email": "kept@example.com"}}}])
    assert portrait.rejected()["rejected"], "a track without an event name is rejected, and kept"
    assert portrait.privacy.expire(30) == 0 and portrait.rejected()["rejected"]  # received today: within 30 days
    portrait.privacy.expire(30, now=utc_now() + timedelta(days=31))
    assert portrait.rejected()["rejected"] == []


def test_a_segment_counted_while_an_erasure_runs_does_not_bring_the_person_back(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A segment created (or recounted) from the API counts in one transaction; an erasure that ran and committed
    inside that window deleted the person's memberships, and the recount then wrote hers back: the erased profile a
    member again (counted in the size) and in the segment's history, until the next full recount. Made to happen
    every time here: the erasure is started from within the recount, before it writes its members. A segment
    change now waits for a running erasure and the other way round (both pause processing)."""
    service = Portrait(settings)  # server mode: the processor thread, whose pause the erasure takes
    try:
        service.ingest_messages([{"type": "identify", "userId": u, "traits": {"plan": "pro"}} for u in ("eve", "bo")])
        service.wait_processed()
        victim = service.resolve_profile_id("user_id:eve")
        erasing: list[threading.Thread] = []
        apply = segments._apply

        def erase_meanwhile(session: Any, segment: Any, now: Any) -> Any:
            if not erasing:
                erasing.append(threading.Thread(target=lambda: service.privacy_request(
                    {"type": "erase", "identity": "user_id:eve"}, "test", run_now=True)))
                erasing[0].start()
                erasing[0].join(3)  # done at once when nothing keeps it waiting
            return apply(session, segment, now)

        monkeypatch.setattr(segments, "_apply", erase_meanwhile)
        service.create_segment({"name": "pros", "condition": 'plan = "pro"'})
        erasing[0].join(30)
        assert service.privacy.all()[0]["status"] == "done"
        assert service.segments.get("pros")["size"] == 1
        assert [m["user_id"] for m in service.segments.members("pros")["members"]] == ["bo"]
        assert victim not in {h["profile_id"] for h in service.segments.history("pros")["history"]}
    finally:
        service.close()


def test_an_erasure_is_not_failed_by_audience_events_sent_meanwhile(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Audience events are taken off the outbox once written to the log; the erasure deletes the person's from it.
    Done while the erasure's transaction was open, the erasure failed ('Conflict on tuple deletion', status failed:
    to be asked again) -- seen when a segment was created just before an erasure ran. Made to happen every time: the
    outbox is marked sent from inside the erasure. Marking it sent now waits for a running erasure."""
    service = Portrait(settings)  # server mode: the processor thread, whose pause the erasure takes
    try:
        assert service._segment_thread
        service._segment_thread.stop()  # the outbox is sent below, not by the background thread
        service.ingest_messages([{"type": "identify", "userId": u, "traits": {"plan": "pro"}} for u in ("eve", "bo")])
        service.wait_processed()
        monkeypatch.setattr(service, "_send_audience_events", lambda: 0)
        service.create_segment({"name": "pros", "condition": 'plan = "pro"'})
        waiting = [str(row[0]) for row in service.segments.outbox(100)]
        assert len(waiting) == 2  # eve and bo entered
        find_unlinked = subjects._find_unlinked
        sending: list[threading.Thread] = []

        def sent_meanwhile(session: Any, identities: Any) -> None:
            find_unlinked(session, identities)
            if not sending:
                sending.append(threading.Thread(target=service.segments.sent, args=[waiting]))
                sending[0].start()
                sending[0].join(3)  # done at once when nothing keeps it waiting

        monkeypatch.setattr(subjects, "_find_unlinked", sent_meanwhile)
        done = service.privacy_request({"type": "erase", "identity": "user_id:eve"}, "test", run_now=True)
        sending[0].join(30)
        assert done["status"] == "done", done
        assert service.segments.outbox(100) == []
    finally:
        service.close()


def test_reading_a_large_access_export_does_not_hold_the_server(server: Server) -> None:
    """An access export of a customer with 12,000 events (~10 MB) was encoded by FastAPI on the event loop: every
    other request -- /healthz, ingestion -- waited ~2 s while one admin read it (benchmarks/privacy_speed.py). It is
    encoded in a worker thread now; the answer is the same JSON."""
    with httpx.Client(base_url=server.url, auth=(WRITE_KEY, ""), timeout=30) as writer:
        for start in range(0, 12_000, 500):
            batch = [{"type": "track", "userId": "heavy-reader", "event": "Viewed", "messageId": f"h{n}",
                      "properties": {"items": [{"sku": f"s{n}-{k}", "price": k} for k in range(8)]}}
                     for n in range(start, start + 500)]
            writer.post("/v1/batch", json={"batch": batch}).raise_for_status()
    server.wait_caught_up()
    with server.admin() as admin:
        admin.timeout = httpx.Timeout(60)
        made = admin.post("/api/privacy/requests", json={"type": "access", "identity": "user_id:heavy-reader"})
        request_id = made.json()["id"]
        while admin.get(f"/api/privacy/requests/{request_id}").json()["status"] != "done":
            time.sleep(0.1)
        # The worst wait of each of three reads: held by the encoding, /healthz waits on every read (~2 s each), while
        # a busy machine (CI's two shared cores) now and then stalls one read's worker thread as it holds the GIL
        # (0.68 s was seen in 1 run of 7 under load): one slow read proves nothing, three in a row do.
        reads = [_read_while_probing_health(server, admin, request_id) for _ in range(3)]
    for answer, _ in reads:
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
        events = answer.json()["result"]["events"]
        assert len(events) == 12_000 and events[0]["properties"]["items"][7] == {"sku": "s0-7", "price": 7}
    waits = [wait for _, wait in reads]
    assert min(waits) < 0.5, f"/healthz waited {', '.join(f'{w:.2f}' for w in waits)} s while the export was read"


def _read_while_probing_health(server: Server, admin: httpx.Client, request_id: str) -> tuple[httpx.Response, float]:
    """The request read once (its answer), and the longest /healthz took meanwhile (asked again and again)."""
    health: list[float] = []
    reading = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not reading.is_set():
                began = time.perf_counter()
                client.get("/healthz").raise_for_status()
                health.append(time.perf_counter() - began)
                time.sleep(0.01)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        time.sleep(0.2)  # the prober's first requests are under way
        answer = admin.get(f"/api/privacy/requests/{request_id}")
    finally:
        reading.set()
        prober.join()
    return answer, max(health)


ZENOBIA = (b"zenobia.canary@example.com", b"Zenobia.Canary@Example.COM", b"u-canary-77", b"+48601234599",
           b"+48 601 234 599")


def test_erasure_rewrites_her_identifiers_in_saved_conditions_and_leaves_no_byte(tmp_path: Path) -> None:
    """Segments and calculated attributes saved naming her identifiers -- as stored, in other letters, a phone as
    written -- keep working after her erasure, with "(erased)" in their place, and the file keeps none of them.
    Her first name in a condition is no identifier (others share it): it stays, as docs/security.md says."""
    folder = tmp_path / "data"
    folder.mkdir()
    settings = Settings(db_path=str(folder / "p.duckdb"), write_key=WRITE_KEY, admin_key=ADMIN_KEY)
    service = Portrait(settings, background=False)
    service.ingest_messages([
        {"type": "identify", "userId": "u-canary-77",
         "traits": {"email": "zenobia.canary@example.com", "phone": "+48 601 234 599", "firstName": "Zenobiaxq"}},
        {"type": "track", "userId": "u-canary-77", "event": "Order Completed",
         "properties": {"revenue": 5, "buyer": "zenobia.canary@example.com"}},
        {"type": "identify", "userId": "u-bob", "traits": {"email": "bob@example.com", "firstName": "Bob"}},
        {"type": "track", "userId": "u-bob", "event": "Order Completed", "properties": {"revenue": 7}},
    ])
    service.process_pending()
    conditions = {
        "her": 'email = "zenobia.canary@example.com"',
        "as typed": 'email = "Zenobia.Canary@Example.COM"',  # selects no one (values compare as written): hers still
        "not her": 'email != "zenobia.canary@example.com"',
        "her phone or name": 'phone in ("+48 601 234 599", "+48601234500") or first_name = "Zenobiaxq"',
        "her orders": 'performed("Order Completed", where buyer in ("zenobia.canary@example.com", "u-canary-77"))',
        "her pattern": 'email regex "zenobia.canary@example.com"',
    }
    with TestClient(create_app(portrait=service)) as client:
        for name, condition in conditions.items():
            made = client.post("/api/segments", headers=ADMIN, json={"name": name, "condition": condition})
            assert made.status_code == 201, made.text
        for code, definition in {"her_orders": 'count("Order Completed", where buyer = "zenobia.canary@example.com")',
                                 "tagged": 'concat(first_name, "u-canary-77")'}.items():
            made = client.post("/api/attributes", headers=ADMIN, json={"code": code, "name": code,
                                                                       "definition": definition})
            assert made.status_code == 201, made.text
        service.process_pending()
        sizes = {s["name"]: s["size"] for s in client.get("/api/segments", headers=ADMIN).json()["segments"]}
        assert sizes == {"her": 1, "as typed": 0, "not her": 1, "her phone or name": 1, "her orders": 1,
                         "her pattern": 1}
        service.store.checkpoint()
        assert [s for s in ZENOBIA if s not in files_of(folder)] == []  # the scan can see them before
        created = client.post("/api/privacy/requests", headers=ADMIN,
                              json={"type": "erase", "identity": "email:zenobia.canary@example.com"})
        done = service.privacy.run(created.json()["id"])
        assert done["status"] == "done" and done["result"]["conditions_rewritten"] == 8, done
        texts = {}
        for name in conditions:  # each still loads, recounts, and says what it now means
            recounted = client.post(f"/api/segments/{name}/recount", headers=ADMIN)
            assert recounted.status_code == 200, recounted.text
            texts[name] = recounted.json()["text"]
            assert recounted.json()["size"] == (1 if name == "not her" else 0), recounted.json()
            assert "erased" in recounted.json()["english"]
        assert texts == {"her": 'email = "(erased)"', "as typed": 'email = "(erased)"',
                         "not her": 'email != "(erased)"',
                         "her phone or name": 'phone in ("(erased)", "+48601234500") or first_name = "Zenobiaxq"',
                         "her orders": 'performed("Order Completed", where buyer in ("(erased)", "(erased)"))',
                         "her pattern": 'email regex "\\\\(erased\\\\)"'}
        definitions = {a["code"]: a["definition"] for a in client.get("/api/attributes", headers=ADMIN).json()[
            "attributes"] if a["calculated"]}
        assert definitions == {"her_orders": 'count("Order Completed", where buyer = "(erased)")',
                               "tagged": 'concat(first_name, "(erased)")'}
        assert service.recalculate()["attributes"] == 2  # both still compute
        bob = client.get("/api/profiles/user_id:u-bob", headers=ADMIN).json()
        assert (bob["traits"]["her_orders"], bob["traits"]["tagged"]) == (0, "Bob(erased)")
    service.close()
    leftovers = files_of(folder)
    assert [s for s in ZENOBIA if s in leftovers] == []
    assert b"Zenobiaxq" in leftovers  # her first name in a condition: not an identifier, left as documented
    reopened = Portrait(settings, background=False)
    assert reopened.segments.get("her")["text"] == 'email = "(erased)"'
    reopened.close()


def test_an_erasure_of_an_identity_no_profile_holds_rewrites_the_conditions_naming_it(portrait: Portrait) -> None:
    portrait.create_segment({"name": "vip", "condition": 'email in ("nobody.yet@example.com", "vip@example.com")'})
    done = portrait.privacy_request({"type": "erase", "identity": "email:Nobody.Yet@example.com"}, "test",
                                    run_now=True)
    assert done["result"] == {"erased": False, "conditions_rewritten": 1,
                              "reason": "no profile had this identity; it is suppressed from now on"}
    assert portrait.segments.get("vip")["text"] == 'email in ("(erased)", "vip@example.com")'


def test_what_follows_a_rewritten_condition_is_computed_again_by_the_erasure(tmp_path: Path) -> None:
    """The erasure rewrote the conditions naming her but computed nothing again: Bob's calculated trait pasted from
    her user id stayed "Bobu-quill-31" (in the file after the rewrite too), and Bob stayed a member of a segment
    whose condition now names "(erased)" -- until someone recounted by hand (the CLI never does)."""
    folder = tmp_path / "data"
    folder.mkdir()
    service = Portrait(Settings(db_path=str(folder / "p.duckdb")), background=False)
    service.ingest_messages([
        {"type": "identify", "userId": "u-quill-31", "traits": {"email": "quill.canary@example.com"}},
        {"type": "identify", "userId": "u-bob", "traits": {"firstName": "Bob",
                                                           "referredBy": "quill.canary@example.com"}}])
    service.process_pending()
    service.create_attribute({"code": "tagged", "name": "Tagged", "definition": 'concat(first_name, "u-quill-31")'})
    service.create_segment({"name": "referred", "condition": 'referred_by = "quill.canary@example.com"'})
    assert service.traits("user_id:u-bob")["tagged"] == "Bobu-quill-31"
    assert service.segments.get("referred")["size"] == 1
    done = service.privacy_request({"type": "erase", "identity": "user_id:u-quill-31"}, "test", run_now=True)
    assert done["result"]["conditions_rewritten"] == 2, done
    assert service.traits("user_id:u-bob")["tagged"] == "Bob(erased)"
    assert service.segments.get("referred")["size"] == 0
    assert [s["name"] for s in service.profile_segments("user_id:u-bob")["segments"]] == []
    service.close()
    assert b"u-quill-31" not in files_of(folder)  # her email stays: Bob's own referred_by trait holds it


def test_an_erased_numeric_user_id_leaves_conditions_on_other_fields_alone(portrait: Portrait) -> None:
    """Erasing user 42 rewrote every saved condition comparing anything with the text "42": shop = "42", which
    selected other customers of shop 42, became shop = "(erased)" and selected nobody from then on. A number as
    text is as likely a shop's, a zip's or an order's; an email or phone still goes wherever it is."""
    portrait.ingest_messages([
        {"type": "identify", "userId": "42", "traits": {"shop": "42", "email": "ann.42@example.com"}},
        {"type": "identify", "userId": "7", "traits": {"shop": "42", "referrer": "ann.42@example.com"}}])
    portrait.process_pending()
    portrait.create_segment({"name": "shop 42", "condition": 'shop = "42" or shop = "43"'})
    portrait.create_segment({"name": "referred", "condition": 'referrer = "ann.42@example.com"'})
    done = portrait.privacy_request({"type": "erase", "identity": "user_id:42"}, "test", run_now=True)
    assert done["result"]["conditions_rewritten"] == 1, done
    shop = portrait.segments.get("shop 42")
    assert (shop["text"], shop["size"]) == ('shop = "42" or shop = "43"', 1)
    assert portrait.segments.get("referred")["text"] == 'referrer = "(erased)"'


def _erased_but_recount_fails(portrait: Portrait, monkeypatch: pytest.MonkeyPatch, identity: str) -> dict[str, Any]:
    def failing() -> list[Any]:
        raise RuntimeError("disk full while recounting")

    monkeypatch.setattr(portrait.segments, "recount_all", failing)
    return portrait.privacy_request({"type": "erase", "identity": identity}, "test", run_now=True)


def test_an_erasure_whose_recount_fails_is_done_and_stays_suppressed(portrait: Portrait,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The recount after a rewritten condition ran inside the erasure: when it raised, the request was recorded
    "failed" though her profile was already deleted and committed -- and with no profile, the suppression was
    withdrawn too, so her next event made her again. The recount follows the erasure; its failure is logged (the
    periodic recount catches up) and the erasure stands."""
    portrait.ingest_messages([{"type": "identify", "userId": "u-ann", "traits": {"email": "ann@example.com"}}])
    portrait.process_pending()
    portrait.create_segment({"name": "ann", "condition": 'email = "ann@example.com"'})
    portrait.create_segment({"name": "nobody yet", "condition": 'email = "zed@example.com"'})
    done = _erased_but_recount_fails(portrait, monkeypatch, "user_id:u-ann")
    assert (done["status"], done["result"]["erased"], done["result"]["conditions_rewritten"]) == ("done", True, 1)
    done = _erased_but_recount_fails(portrait, monkeypatch, "email:zed@example.com")
    assert (done["status"], done["result"]["conditions_rewritten"]) == ("done", 1), done
    assert portrait.segments.get("nobody yet")["text"] == 'email = "(erased)"'
    portrait.ingest_messages([{"type": "identify", "userId": "u-zed", "traits": {"email": "zed@example.com"}},
                              {"type": "track", "userId": "u-ann", "event": "Came back"}])
    portrait.process_pending()
    for identity in ("email:zed@example.com", "user_id:u-ann"):
        with pytest.raises(NotFound):
            portrait.profile(identity)


def test_an_erasure_recounts_with_processing_running(tmp_path: Path) -> None:
    """An erasure of an identity no profile held recounted the segments inside the processing pause, while the
    segment thread takes its recount lock first and then pauses processing: each waited for the other for ever.
    The recount now runs after the pause: the segment thread's order (recount lock, then pause) goes through."""
    portrait = Portrait(Settings(db_path=str(tmp_path / "p.duckdb"), segment_recount_seconds=3600))
    try:
        portrait.create_segment({"name": "zed", "condition": 'email = "zed@example.com"'})
        recount_all, blocked = portrait.segments.recount_all, []

        def as_the_segment_thread() -> None:
            with portrait.segments._recounting, portrait._processing_paused():
                pass

        def recount() -> list[Any]:
            other = threading.Thread(target=as_the_segment_thread)
            other.start()
            other.join(5)
            blocked.append(other.is_alive())
            if other.is_alive():  # it holds the recount lock: recounting now would wait for ever
                raise RuntimeError("the segment thread's order is blocked by the erasure")
            return recount_all()

        portrait.segments.recount_all = recount  # type: ignore[method-assign]
        done = portrait.privacy_request({"type": "erase", "identity": "email:zed@example.com"}, "test", run_now=True)
        assert blocked == [False], done
        assert done["status"] == "done"
    finally:
        portrait.close()
