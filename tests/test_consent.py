"""Consent: statements from events (context.consent, Segment's categoryPreferences), the API and CLI; current status
and history; through merges; in segments; enforced on exports for a purpose."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import duckdb
import httpx
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from tests.conftest import ADMIN_KEY
from typer.testing import CliRunner

from portrait.api import create_app
from portrait.cli import app
from portrait.config import Settings
from portrait.errors import BadRequest
from portrait.service import Portrait
from portrait.spec import utc_now

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def ago(days: float) -> str:
    return (utc_now() - timedelta(days=days)).isoformat() + "Z"


def test_statements_from_events_give_current_status_and_history(portrait: Portrait) -> None:
    portrait.ingest_messages([
        {"type": "identify", "userId": "ann", "timestamp": ago(10), "traits": {"plan": "pro"},
         "context": {"consent": {"email": "granted", "sms": {"status": "denied", "legalBasis": "consent"},
                                 "push": "maybe"}}},  # "maybe" is not a statement
        {"type": "track", "userId": "ann", "event": "Cookie Banner", "timestamp": ago(5),
         "context": {"consent": {"categoryPreferences": {"analytics": True, "email": False}}}},
        {"type": "track", "userId": "ann", "event": "Old Form", "timestamp": ago(20),  # older: history only
         "context": {"consent": {"sms": "granted"}}},
    ])
    portrait.process_pending()
    found = portrait.consents("user_id:ann")
    assert {p: c["status"] for p, c in found["consents"].items()} == {
        "email": "denied", "sms": "denied", "analytics": "granted"}
    assert found["consents"]["sms"]["legal_basis"] == "consent"
    assert [(h["purpose"], h["status"]) for h in found["history"]] == [
        ("sms", "granted"), ("email", "granted"), ("sms", "denied"), ("analytics", "granted"), ("email", "denied")]
    # The profile document reads consents in its single statement; it must agree with the consent read.
    assert portrait.profile("user_id:ann")["consents"] == found["consents"]
    assert found["consents"]["analytics"]["status"] == "granted"


def test_consent_follows_a_merge_and_feeds_segments(portrait: Portrait) -> None:
    portrait.create_segment({"name": "emailable", "condition": 'consent("email") = granted'})
    portrait.ingest_messages([{"type": "page", "anonymousId": "dev-1", "name": "Newsletter",
                               "context": {"consent": {"email": "granted"}}}])
    portrait.process_pending()
    assert portrait.segments.get("emailable")["size"] == 1
    portrait.ingest_messages([{"type": "identify", "anonymousId": "dev-1", "userId": "bob"}])
    portrait.process_pending()
    assert portrait.consents("user_id:bob")["consents"]["email"]["status"] == "granted"
    portrait.set_consent("user_id:bob", {"email": {"status": "denied", "legal_basis": "consent"}})
    portrait.process_pending()
    assert portrait.segments.get("emailable")["size"] == 0
    current = portrait.consents("user_id:bob")["consents"]
    assert current["email"] == {"status": "denied", "legal_basis": "consent", "at": current["email"]["at"],
                                "source": "api:consent"}
    assert portrait.profile("user_id:bob")["consents"] == current
    with pytest.raises(BadRequest, match="consent for 'email' must be granted or denied, not 'perhaps'"):
        portrait.set_consent("user_id:bob", {"email": "perhaps"})
    with pytest.raises(BadRequest, match="a consent purpose needs a name"):  # was "consent for '' must be granted"
        portrait.set_consent("user_id:bob", {" ": "granted"})
    with pytest.raises(BadRequest, match="legal_basis is one of"):
        portrait.set_consent("user_id:bob", {"email": {"status": "granted", "legal_basis": "because"}})


@pytest.mark.parametrize("consent", [{"marketing": "granted", "categoryPreferences": {"marketing": False}},
                                     {"categoryPreferences": {"marketing": True}, "marketing": "denied"}])
def test_a_message_that_grants_and_denies_a_purpose_denies_it_everywhere(portrait: Portrait,
                                                                         consent: dict[str, object]) -> None:
    portrait.create_segment({"name": "marketable", "condition": 'consent("marketing") = granted'})
    portrait.ingest_messages([{"type": "identify", "userId": "cy", "context": {"consent": consent}}])
    portrait.process_pending()  # members refreshed by the Python engine
    assert portrait.segments.get("marketable")["size"] == 0
    assert portrait.explain_segment("marketable", "user_id:cy")["holds"] is False
    portrait.recount_segment("marketable")  # and by SQL
    assert portrait.segments.get("marketable")["size"] == 0
    assert portrait.consents("user_id:cy")["consents"]["marketing"]["status"] == "denied"
    assert portrait.profile("user_id:cy")["consents"]["marketing"]["status"] == "denied"


def test_a_statement_dated_ahead_does_not_outrank_a_later_withdrawal(portrait: Portrait) -> None:
    portrait.create_segment({"name": "marketable", "condition": 'consent("marketing") = granted'})
    ahead = (utc_now() + timedelta(hours=20)).isoformat() + "Z"  # a browser clock running fast (under a day)
    portrait.ingest_messages([{"type": "identify", "userId": "fay", "timestamp": ahead,
                               "context": {"consent": {"marketing": "granted"}}}])
    portrait.process_pending()
    assert portrait.segments.get("marketable")["size"] == 1
    portrait.set_consent("user_id:fay", {"marketing": "denied"})
    portrait.process_pending()
    assert portrait.consents("user_id:fay")["consents"]["marketing"]["status"] == "denied"
    assert portrait.segments.get("marketable")["size"] == 0


def test_statements_of_merged_profiles_are_the_survivors(portrait: Portrait) -> None:
    """Two profiles with their own statements merge: the survivor's history holds both, before and after."""
    portrait.ingest_messages([
        {"type": "page", "anonymousId": "laptop", "timestamp": ago(3), "context": {"consent": {"email": "granted"}}},
        {"type": "identify", "userId": "cy", "timestamp": ago(2), "traits": {"email": "cy@example.com"},
         "context": {"consent": {"sms": "denied"}}},
    ])
    portrait.process_pending()
    assert portrait.resolve_profile_id("anonymous_id:laptop") != portrait.resolve_profile_id("user_id:cy")
    portrait.ingest_messages([{"type": "alias", "previousId": "laptop", "userId": "cy", "timestamp": ago(1)}])
    portrait.process_pending()
    survivor = portrait.consents("anonymous_id:laptop")
    assert survivor["profile_id"] == portrait.resolve_profile_id("user_id:cy")
    assert [(h["purpose"], h["status"]) for h in survivor["history"]] == [("email", "granted"), ("sms", "denied")]
    assert portrait.profile("user_id:cy")["consents"] == survivor["consents"]


def test_migration_14_files_existing_statements_under_their_profile(tmp_path: Path) -> None:
    """A database from before consent statements carried their profile: the migration fills it in."""
    settings = Settings(db_path=str(tmp_path / "old.duckdb"))
    first = Portrait(settings, background=False)
    first.ingest_messages([{"type": "identify", "userId": "dee", "context": {"consent": {"email": "granted"}}}])
    first.process_pending()
    first.close()
    with duckdb.connect(settings.db_path) as con:  # back to the shape before migration 14
        con.execute("DROP INDEX consent_records_profile")
        con.execute("DROP INDEX consent_records_seq")  # DuckDB drops no column of a table with an index
        con.execute("ALTER TABLE consent_records DROP COLUMN profile_id")
        con.execute("CREATE INDEX consent_records_seq ON consent_records (seq)")
        con.execute("DELETE FROM schema_migrations WHERE version = 14")
    upgraded = Portrait(settings, background=False)
    assert upgraded.consents("user_id:dee")["consents"]["email"]["status"] == "granted"
    assert upgraded.profile("user_id:dee")["consents"]["email"]["status"] == "granted"
    upgraded.close()


def test_exports_for_a_purpose_leave_out_who_did_not_grant_it(portrait: Portrait, tmp_path: Path) -> None:
    portrait.ingest_messages([
        {"type": "identify", "userId": "yes", "traits": {"plan": "a"},
         "context": {"consent": {"marketing": "granted"}}},
        {"type": "identify", "userId": "no", "traits": {"plan": "b"},
         "context": {"consent": {"marketing": "denied"}}},
        {"type": "identify", "userId": "silent", "traits": {"plan": "c"}},
    ])
    portrait.process_pending()
    with TestClient(create_app(portrait=portrait)) as client:
        granted = client.get("/api/exports/profiles", headers=ADMIN, params={"format": "csv", "purpose": "marketing"})
        assert granted.status_code == 200 and '"yes"' in granted.text and '"no"' not in granted.text
        assert '"silent"' not in granted.text
        everyone = client.get("/api/exports/profiles", headers=ADMIN,
                              params={"purpose": "marketing", "ignore_consent": True})
        assert everyone.text.count("\n") == 4  # header + 3 profiles
        audit = client.get("/api/audit", headers=ADMIN).json()["entries"]
        assert audit[0]["action"] == "export_ignoring_consent" and audit[0]["detail"]["purpose"] == "marketing"
        recorded = client.post("/api/profiles/user_id:silent/consent", headers=ADMIN, json={"marketing": "granted"})
        assert recorded.status_code == 200, recorded.text
        assert client.post("/api/profiles/user_id:silent/consent", headers=ADMIN,
                           json={"marketing": "yes please"}).json()["code"] == "invalid_consent"
    portrait.process_pending()
    out = tmp_path / "marketing.parquet"
    db_report = portrait.export_profiles(out, "parquet", purpose="marketing")
    assert db_report["rows"] == 2 and sorted(r["user_id"] for r in pq.read_table(out).to_pylist()) == ["silent", "yes"]


def test_recording_consent_answers_in_the_names_reading_it_uses(portrait: Portrait) -> None:
    """The answer of POST .../consent names the legal basis as GET .../consent does (legal_basis), not as the
    Consent Updated event carries it (Segment's legalBasis): a client reads both answers with the same code."""
    portrait.ingest_messages([{"type": "identify", "userId": "u1"}])
    portrait.process_pending()
    with TestClient(create_app(portrait=portrait)) as client:
        sent = {"email": "granted", "sms": {"status": "denied", "legal_basis": "consent"},
                "push": {"status": "granted", "legalBasis": "contract"}}
        recorded = client.post("/api/profiles/user_id:u1/consent", headers=ADMIN, json=sent)
        assert recorded.status_code == 200, recorded.text
        assert recorded.json()["recorded"] == {"email": {"status": "granted"},
                                               "sms": {"status": "denied", "legal_basis": "consent"},
                                               "push": {"status": "granted", "legal_basis": "contract"}}
        portrait.process_pending()
        read = client.get("/api/profiles/user_id:u1/consent", headers=ADMIN).json()["consents"]
        assert {purpose: read[purpose]["legal_basis"] for purpose in sent} == {
            "email": None, "sms": "consent", "push": "contract"}


def test_the_cli_shows_and_records_consent(tmp_path: Path) -> None:
    db = str(tmp_path / "c.duckdb")
    service = Portrait(Settings(db_path=db), background=False)
    service.ingest_messages([{"type": "identify", "userId": "ann", "traits": {"plan": "pro"}}])
    service.process_pending()
    service.close()
    runner = CliRunner()
    result = runner.invoke(app, ["profiles", "consent", "user_id:ann", "--grant", "email", "--deny", "sms",
                                 "--basis", "consent", "--db", db, "--json"])
    assert result.exit_code == 0, result.output
    assert '"email"' in result.output and '"granted"' in result.output and '"denied"' in result.output
    export = runner.invoke(app, ["export", "profiles", "-o", str(tmp_path / "x.csv"), "--purpose", "sms", "--db", db])
    assert "Exported 0 profiles (consent for sms granted)" in export.output


def test_the_cli_through_a_server_shows_the_consent_it_just_recorded(tmp_path: Path) -> None:
    """Through a server the command waited a fixed half second for the statement to be processed, then showed
    the consent of before on a busy server (here one that processes every 2 seconds)."""
    from tests.conftest import WRITE_KEY, start_server

    server = start_server(str(tmp_path / "busy.duckdb"), tmp_path / "server.log",
                          {"PORTRAIT_PROCESSOR_INTERVAL_MS": "2000"})
    try:
        answer = httpx.post(f"{server.url}/v1/identify", json={"userId": "ann", "writeKey": WRITE_KEY}, timeout=10)
        assert answer.status_code == 200, answer.text
        server.wait_caught_up()
        result = CliRunner().invoke(app, ["profiles", "consent", "user_id:ann", "--grant", "email", "--json",
                                          "--url", server.url, "--admin-key", ADMIN_KEY])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["consents"]["email"]["status"] == "granted"
    finally:
        server.stop()
