"""Upgrading a database written by an old Portrait (tests/fixtures/README.md: made by commit 30a10bc, schema
version 9, with merges, conflicts, rejections, consents, keys, segments, calculated attributes and an erasure).

Opened by today's code it migrates; after the recheck the status asks for, everything derived from the log equals
what today's rules derive from the same log (a profile rebuild of another copy)."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import httpx
import pytest
from sqlglot import select
from tests.conftest import start_server
from tests.fixtures.make_old_database import KEYS
from tests.test_rebuild import DERIVED

from portrait.config import Settings
from portrait.errors import NotFound
from portrait.pipeline import profile_id_for
from portrait.service import Portrait
from portrait.sql import schema

FIXTURE = Path(__file__).parent / "fixtures" / "portrait-30a10bc.duckdb.gz"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# The processing time of a profile's creation differs between the two copies; the rest must not.
COMPARED = {**DERIVED, "profiles": "profile_id, created_seq"}


def _old_profile_id(message_id: str) -> str:
    """Profile ids as commit 30a10bc made them: the md5 of the creating event's messageId (today: of its seq)."""
    digest = hashlib.md5(message_id.encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:]}"


def _unpacked(tmp_path: Path, name: str) -> Settings:
    path = tmp_path / f"{name}.duckdb"
    with gzip.open(FIXTURE) as packed, path.open("wb") as out:
        shutil.copyfileobj(packed, out)
    return Settings(db_path=str(path))


def _derived(portrait: Portrait) -> dict[str, set[str]]:
    """The derived tables, each profile id written as the seq of the event that created it (an old id and today's
    id for the same profile both become P<seq>); a rebuild's redirections of old ids become P<n> -> P<n>."""
    session = portrait.store.session()
    try:
        names: dict[str, str] = {}
        for seq, message_id in session.execute(select("seq", "message_id").from_("events")):
            names[_old_profile_id(message_id)] = names[profile_id_for(seq)] = f"P{seq}"
        state: dict[str, set[str]] = {}
        for table, columns in COMPARED.items():
            rows = (_UUID.sub(lambda m: names.get(m.group(0), m.group(0)), repr(row))
                    for row in session.execute(select(*columns.split(", ")).from_(table)))
            state[table] = {row for row in rows if not re.fullmatch(r"\('(P\d+)', '\1'\)", row)}
        return state
    finally:
        session.close()


def test_a_database_written_by_an_old_version_upgrades_to_what_todays_rules_derive(tmp_path: Path) -> None:
    upgraded = Portrait(_unpacked(tmp_path, "upgraded"), background=False)
    try:
        session = upgraded.store.session()
        assert {row[0] for row in session.execute(schema.APPLIED)} == set(schema.MIGRATIONS)
        session.close()
        assert upgraded.process_pending() == 0  # the old version had processed everything
        for kind, secret in KEYS.items():  # keys made by the old version still open the doors they opened
            assert upgraded.keys.authenticate(secret).kind == kind
        assert upgraded.keys.check(KEYS["write"], "write").name == "old-write"
        with pytest.raises(NotFound):  # erased by the old version, and still suppressed
            upgraded.resolve_profile_id("user_id:u-gone")
        # Its traits were derived by the old rules: the status says so until a recheck applies today's.
        assert upgraded.status()["traits_recheck_due"] is True
        assert "pr_nom" in upgraded.traits("user_id:u-a")
        upgraded.rebuild_traits()
        assert upgraded.status()["traits_recheck_due"] is False
        traits = upgraded.traits("user_id:u-a")
        assert traits["prenom"] == "Anne" and "pr_nom" not in traits and "address_city" not in traits
        assert upgraded.traits("user_id:u-r")["plan"] == "pro"  # from context.traits (migration 18)
        assert upgraded.traits("user_id:u-r2") == {**upgraded.traits("user_id:u-r2"), "plan": "basic", "age": 3}
        after_upgrade = _derived(upgraded)
        suppressed = upgraded.status()["events_suppressed"]
        upgraded.ingest_messages([{"type": "track", "userId": "u-gone", "event": "Came Back Again"}])
        assert upgraded.status()["events_suppressed"] == suppressed + 1
    finally:
        upgraded.close()

    rebuilt = Portrait(_unpacked(tmp_path, "rebuilt"), background=False)
    try:
        done = rebuilt.rebuild_profiles()
        assert done["profiles_before"] == done["profiles_after"] == done["ids_redirected"] > 20
        assert rebuilt.status()["traits_recheck_due"] is False
        from_the_log = _derived(rebuilt)
    finally:
        rebuilt.close()

    assert all(after_upgrade[t] for t in ("merges", "identity_conflicts", "data_quality", "consent_records",
                                          "rejected_events", "segment_members", "profile_aliases"))
    for table in COMPARED:
        assert after_upgrade[table] == from_the_log[table], table


# Opens the database with today's code and kills its own process (SIGKILL: nothing is flushed or closed) inside
# migration VERSION, after its last statement ran ("inside": never committed) or once it is committed, in the
# write-ahead log only ("committed": the checkpoint after migrating never happened).
_KILLED_WHILE_MIGRATING = """
import os, signal, sys
from portrait.sql import schema
from portrait.store import duckdb as store
path, version, moment = sys.argv[1], int(sys.argv[2]), sys.argv[3]
execute = store.DuckDBSession.execute
def execute_then_die(self, statement, params=()):
    rows = execute(self, statement, params)
    if moment == "inside" and statement is schema.MIGRATIONS[version][-1]:
        os.kill(os.getpid(), signal.SIGKILL)
    if moment == "committed" and statement is schema.RECORD and list(params) == [version]:
        self._con.commit()
        os.kill(os.getpid(), signal.SIGKILL)
    return rows
store.DuckDBSession.execute = execute_then_die
store.open_store(path)
"""


@pytest.mark.parametrize(("version", "moment"), [(15, "committed"), (21, "inside")])
def test_an_upgrade_killed_midway_upgrades_at_the_next_start(tmp_path: Path, version: int, moment: str) -> None:
    """Migration 15 rewrites the whole event log and 21 updates events: the process dies with the one in the
    write-ahead log only, or half done; the next start finishes the upgrade, as if nothing had happened."""
    settings = _unpacked(tmp_path, "killed")
    source = str(Path(__file__).parents[1] / "src")
    killed = subprocess.run([sys.executable, "-c", _KILLED_WHILE_MIGRATING, settings.db_path, str(version), moment],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": source}, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    peek = tmp_path / "peek.duckdb"  # a copy: the next start must be the one to replay the write-ahead log
    shutil.copy(settings.db_path, peek)
    if Path(settings.db_path + ".wal").exists():
        shutil.copy(settings.db_path + ".wal", str(peek) + ".wal")
    with duckdb.connect(str(peek)) as con:
        left = {row[0] for row in con.execute("SELECT version FROM schema_migrations").fetchall()}
    assert max(left) == (version if moment == "committed" else version - 1)
    interrupted = Portrait(settings, background=False)
    try:
        after_kill = _derived(interrupted)
    finally:
        interrupted.close()
    uninterrupted = Portrait(_unpacked(tmp_path, "uninterrupted"), background=False)
    try:
        assert _derived(uninterrupted) == after_kill
    finally:
        uninterrupted.close()


def test_a_server_started_on_an_old_database_says_a_recheck_is_due_and_takes_the_old_keys(tmp_path: Path) -> None:
    settings = _unpacked(tmp_path, "served")
    server = start_server(settings.db_path, tmp_path / "server.log")
    try:
        old_admin = {"Authorization": f"Bearer {KEYS['admin']}"}
        with httpx.Client(base_url=server.url, timeout=30) as console:  # the console's overview says it too
            console.post("/login", data={"key": KEYS["admin"]})
            assert "written by an earlier Portrait" in console.get("/").text
        with httpx.Client(base_url=server.url, headers=old_admin, timeout=30) as client:
            assert client.get("/api/status").json()["traits_recheck_due"] is True
            assert client.post("/api/attributes/recheck").status_code == 200
            assert client.get("/api/status").json()["traits_recheck_due"] is False
            read = client.get("/api/profiles/user_id:u-a", headers={"Authorization": f"Bearer {KEYS['read']}"})
            assert read.status_code == 200 and "prenom" in read.json()["traits"]
        with httpx.Client(base_url=server.url, timeout=30) as console:
            console.post("/login", data={"key": KEYS["admin"]})
            overview = console.get("/")
            assert "Overview" in overview.text and "written by an earlier Portrait" not in overview.text
        sent = httpx.post(f"{server.url}/v1/track", auth=(KEYS["write"], ""), timeout=10,
                          json={"userId": "u-a", "event": "Upgraded"})
        assert sent.status_code == 200
    finally:
        server.stop()
    assert "written by an earlier Portrait" in (tmp_path / "server.log").read_text()


def test_the_upgrade_removes_what_a_deleted_segment_was_given_back(tmp_path: Path) -> None:
    """Earlier versions let a recount that had read a segment before its deletion write members back for it (with
    their history entries, Audience Entered events and the size): rows of a segment that no longer exists, 1,021 of
    them after a minute on a real server. Migration 24 removes them; the ordinary history of a deleted segment, and
    another segment's waiting events, stay."""
    settings = Settings(db_path=str(tmp_path / "race.duckdb"))
    service = Portrait(settings, background=False)
    service.ingest_messages([{"type": "identify", "userId": u, "traits": {"plan": "pro"}} for u in ("u1", "u2")])
    service.process_pending()
    kept = service.create_segment({"name": "kept", "condition": 'plan = "pro"'})["id"]
    gone = service.create_segment({"name": "gone", "condition": 'plan = "pro"'})["id"]
    service.segments.delete("gone")
    service.close()
    with duckdb.connect(settings.db_path) as con:  # what the race left, as it wrote it; and version 24 not yet run
        con.execute("SET TimeZone = 'UTC'")
        at = "2026-05-01 10:00:00"
        con.execute("INSERT INTO segment_members VALUES (?, 'p-race', ?)", [gone, at])
        con.execute("INSERT INTO segment_history (segment_id, profile_id, change, \"at\") VALUES (?, 'p-race', "
                    "'entered', ?)", [gone, at])
        con.execute("INSERT INTO audience_outbox VALUES ('race', ?, 'gone', 'entered', 'p-race', ?), "
                    "('waiting', ?, 'kept', 'entered', 'p-kept', ?)", [gone, at, kept, at])
        con.execute("INSERT INTO segment_sizes VALUES (?, ?, 1)", [gone, at])
        con.execute("DELETE FROM schema_migrations WHERE version = 24")
    upgraded = Portrait(settings, background=False)
    try:
        session = upgraded.store.session()

        def rows(table: str, column: str = "segment_id") -> list[tuple[object, ...]]:
            return session.execute(select("*").from_(table).where(f"{column} = {gone}").order_by("1"))

        assert rows("segment_members") == [] and rows("segment_sizes") == []
        assert [message_id for message_id, *_ in upgraded.segments.outbox(10)] == ["waiting"]
        history = session.execute(select("profile_id", "change").from_("segment_history")
                                  .where(f"segment_id = {gone}").order_by("profile_id"))
        assert sorted(history) == sorted((profile_id, "entered") for profile_id in
                                         {p for p, in session.execute(select("profile_id").from_("profiles"))})
        session.close()
    finally:
        upgraded.close()
