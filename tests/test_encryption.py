"""Encryption at rest: a real server with PORTRAIT_ENCRYPTION_KEY leaves no personal value in plaintext in any file
of its data directory, lookups still work after a restart, and a missing or wrong key is a clear error that changes
nothing."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import WRITE_KEY, start_server
from typer.testing import CliRunner

from portrait.cli import app
from portrait.config import Settings
from portrait.errors import DatabaseInUse, PortraitError
from portrait.service import Portrait, restore_backup
from portrait.sql import parse
from portrait.store.duckdb import DuckDBStore, compact_file

KEY = "correct horse battery staple 42"
KNOWN = (b"zelda.encrypted@example.com", b"+48 601 999 888", b"+48601999888", b"Zeldabeth", b"Quixotica-Street 7")


def data_files(folder: Path) -> bytes:
    return b"".join(path.read_bytes() for path in folder.rglob("*") if path.is_file())


def cli(*args: str, key: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PORTRAIT_ENCRYPTION_KEY"}
    if key is not None:
        env["PORTRAIT_ENCRYPTION_KEY"] = key
    return subprocess.run([sys.executable, "-m", "portrait", *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def test_a_server_with_a_key_keeps_personal_data_encrypted_on_disk(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    db = str(folder / "portrait.duckdb")
    server = start_server(db, tmp_path / "server.log", {"PORTRAIT_ENCRYPTION_KEY": KEY})
    try:
        with httpx.Client(base_url=server.url, auth=(WRITE_KEY, ""), timeout=10) as sdk:
            sent = sdk.post("/v1/batch", json={"batch": [
                {"type": "identify", "userId": "z-1", "traits": {
                    "email": "zelda.encrypted@example.com", "phone": "+48 601 999 888", "firstName": "Zeldabeth",
                    "address": {"street": "Quixotica-Street 7"}}},
                {"type": "track", "userId": "z-1", "event": "Order Completed", "properties": {"revenue": 5}}]})
            assert sent.status_code == 200
        server.wait_caught_up()
    finally:
        server.stop()
    assert [value for value in KNOWN if value in data_files(folder)] == []
    log = (tmp_path / "server.log").read_bytes()
    assert [value for value in KNOWN if value in log] == []  # nothing personal in the server's log either
    found = cli("profiles", "get", "email:zelda.encrypted@example.com", "--db", db, "--json", key=KEY)
    assert found.returncode == 0, found.stderr
    assert '"Zeldabeth"' in found.stdout and '"+48601999888"' in found.stdout
    missing = cli("status", "--db", db, key=None)
    assert missing.returncode == 1 and "is encrypted: set PORTRAIT_ENCRYPTION_KEY" in missing.stderr
    wrong = cli("status", "--db", db, key="not the key")
    assert wrong.returncode == 1 and "is not the key of the database" in wrong.stderr
    again = cli("profiles", "get", "user_id:z-1", "--db", db, "--json", key=KEY)  # nothing was harmed
    assert again.returncode == 0 and "zelda.encrypted@example.com" in again.stdout


def test_an_existing_database_can_be_encrypted(tmp_path: Path) -> None:
    db = str(tmp_path / "plain.duckdb")
    service = Portrait(Settings(db_path=db), background=False)
    service.ingest_messages([{"type": "identify", "userId": "p-1", "traits": {"email": "zelda.encrypted@example.com"}}])
    service.process_pending()
    service.close()
    assert KNOWN[0] in data_files(tmp_path)
    refused = CliRunner(env={"PORTRAIT_ENCRYPTION_KEY": ""}).invoke(app, ["encrypt", "--db", db])
    assert refused.exit_code == 1 and "set PORTRAIT_ENCRYPTION_KEY" in refused.output
    done = CliRunner(env={"PORTRAIT_ENCRYPTION_KEY": KEY}).invoke(app, ["encrypt", "--db", db])
    assert done.exit_code == 0, done.output
    assert KNOWN[0] not in data_files(tmp_path)
    reopened = Portrait(Settings(db_path=db, encryption_key=KEY), background=False)
    assert reopened.traits("email:zelda.encrypted@example.com")["email"] == "zelda.encrypted@example.com"
    reopened.close()
    missing = CliRunner(env={"PORTRAIT_ENCRYPTION_KEY": KEY}).invoke(app, ["encrypt", "--db", db + ".missing"])
    assert missing.exit_code == 1 and "no such file" in missing.output  # and no new, empty database made there
    assert not Path(db + ".missing").exists()


def test_data_spilled_to_disk_stays_encrypted_beside_the_database(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Past memory_limit_mb DuckDB spills to disk (query work, temporary tables). An encrypted database is attached
    to an in-memory one, whose spill folder was ``.tmp`` in the working folder, in plain text: customers' rows on
    disk unencrypted, where nobody looks."""
    folder, elsewhere = tmp_path / "data", tmp_path / "started-here"
    folder.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    store = DuckDBStore(str(folder / "portrait.duckdb"), KEY, memory_limit_mb=40)
    session = store.session()
    try:
        for table in ("spill_one", "spill_two"):  # ~70 MB of md5 texts: more than the limit, so some is on disk
            session.execute(parse(f"CREATE TEMP TABLE {table} AS SELECT md5(i::VARCHAR) AS secret "  # noqa: S608
                                  "FROM range(1000000) r(i)"))
        spilled = {path: path.read_bytes() for path in tmp_path.rglob("*.tmp") if path.is_file()}
        assert session.execute(parse("SELECT count(*) FROM spill_two")) == [(1_000_000,)]
    finally:
        session.close()
        store.close()
    assert spilled, "nothing was spilled: the test proves nothing"
    assert {path.parent for path in spilled} == {folder / "portrait.duckdb.tmp"}
    assert [path.name for path, data in spilled.items() if re.search(rb"[0-9a-f]{32}", data)] == []


def encrypted_database(tmp_path: Path) -> str:
    """A database encrypted with KEY, holding one customer (user r-1, with KNOWN[0] as email)."""
    db = str(tmp_path / "secret.duckdb")
    service = Portrait(Settings(db_path=db, encryption_key=KEY), background=False)
    service.ingest_messages([{"type": "identify", "userId": "r-1", "traits": {"email": "zelda.encrypted@example.com"}}])
    service.process_pending()
    service.close()
    return db


def test_the_key_of_an_encrypted_database_can_be_changed(tmp_path: Path) -> None:
    db = encrypted_database(tmp_path)
    new_key = "a brand new key for the year"

    def encrypt(**env: str) -> Any:
        return CliRunner(env={"PORTRAIT_ENCRYPTION_KEY": "", "PORTRAIT_PREVIOUS_ENCRYPTION_KEY": "", **env}).invoke(
            app, ["encrypt", "--db", db])

    without_previous = encrypt(PORTRAIT_ENCRYPTION_KEY=new_key)
    assert without_previous.exit_code == 1
    assert "encrypted already: to change its key, set PORTRAIT_PREVIOUS_ENCRYPTION_KEY" in without_previous.output
    wrong_previous = encrypt(PORTRAIT_ENCRYPTION_KEY=new_key, PORTRAIT_PREVIOUS_ENCRYPTION_KEY="not it")
    assert wrong_previous.exit_code == 1
    assert "PORTRAIT_PREVIOUS_ENCRYPTION_KEY is not the key of the database" in wrong_previous.output
    same = encrypt(PORTRAIT_ENCRYPTION_KEY=KEY, PORTRAIT_PREVIOUS_ENCRYPTION_KEY=KEY)
    assert same.exit_code == 1 and "are the same key" in same.output
    changed = encrypt(PORTRAIT_ENCRYPTION_KEY=new_key, PORTRAIT_PREVIOUS_ENCRYPTION_KEY=KEY)
    assert changed.exit_code == 0 and "Re-encrypted" in changed.output
    assert KNOWN[0] not in data_files(tmp_path)
    old = cli("status", "--db", db, key=KEY)
    assert old.returncode == 1 and "is not the key of the database" in old.stderr
    reopened = Portrait(Settings(db_path=db, encryption_key=new_key), background=False)
    try:
        assert reopened.traits("user_id:r-1")["email"] == "zelda.encrypted@example.com"
    finally:
        reopened.close()


def test_a_backup_from_before_a_key_change_or_a_plain_one_is_restored_under_todays_key(tmp_path: Path) -> None:
    """A restore leaves a database today's key opens: a backup under the previous key is read with
    PORTRAIT_PREVIOUS_ENCRYPTION_KEY, a plain one is encrypted; without the previous key the error says to set it."""
    db, new_key = tmp_path / "shop.duckdb", "the key after the change"
    before = Portrait(Settings(db_path=str(db), encryption_key=KEY), background=False)
    before.ingest_messages([{"type": "identify", "userId": "b-1", "traits": {"email": "zelda.encrypted@example.com"}}])
    before.process_pending()
    old_backup = before.backups.make("under-old-key")["path"]
    before.close()
    plain = Portrait(Settings(db_path=str(tmp_path / "plain.duckdb")), background=False)
    plain.ingest_messages([{"type": "identify", "userId": "p-1", "traits": {"name": "Zeldabeth"}}])
    plain.process_pending()
    plain_backup = plain.backups.make("plain")["path"]
    plain.close()
    compact_file(str(db), KEY, new_key)  # the key change (`portrait encrypt`)
    today = Settings(db_path=str(db), encryption_key=new_key)
    with pytest.raises(PortraitError, match="set PORTRAIT_PREVIOUS_ENCRYPTION_KEY to the key it was made with"):
        restore_backup(today, old_backup)
    with pytest.raises(PortraitError, match="neither PORTRAIT_ENCRYPTION_KEY nor PORTRAIT_PREVIOUS_ENCRYPTION_KEY "
                                            "is the key of the backup"):  # not only the previous one: both were tried
        restore_backup(dataclasses.replace(today, previous_encryption_key="not the old key either"), old_backup)
    restore_backup(dataclasses.replace(today, previous_encryption_key=KEY), old_backup)
    restored = Portrait(today, background=False)
    try:
        assert restored.traits("user_id:b-1")["email"] == "zelda.encrypted@example.com"
    finally:
        restored.close()
    restore_backup(today, plain_backup)
    assert KNOWN[3] not in db.read_bytes()  # the plain backup's name is encrypted in the restored file
    restored = Portrait(today, background=False)
    try:
        assert restored.traits("user_id:p-1")["name"] == "Zeldabeth"
    finally:
        restored.close()


def test_keys_are_not_in_a_printed_settings_object() -> None:
    secrets = {"write_key": "wk-secret-1", "admin_key": "ak-secret-2", "encryption_key": "ek-secret-3",
               "previous_encryption_key": "pk-secret-4"}
    printed = repr(Settings(**secrets))  # in a log line, a traceback's locals, an error report
    assert [name for name, value in secrets.items() if value in printed] == []


# Fills a 40 MB limit with temporary tables (so DuckDB spills into <db>.tmp/), then is killed as by the system's
# out-of-memory killer or a power cut: DuckDB has no chance to delete its spilled files.
_SPILL_THEN_DIE = """
import os, signal, sys
from portrait.sql import parse
from portrait.store.duckdb import DuckDBStore
store = DuckDBStore(sys.argv[1], sys.argv[2], memory_limit_mb=40)
session = store.session()
for table in ("spill_one", "spill_two"):
    session.execute(parse(f"CREATE TEMP TABLE {table} AS SELECT md5(i::VARCHAR) AS s FROM range(1000000) r(i)"))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_an_encrypted_database_opens_after_a_crash_left_spilled_files(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckDB refuses to turn temp_file_encryption on while its spill folder holds files; set after the folder,
    a crash that left spilled files in <db>.tmp/ kept the database from opening again ("Existing temporary files
    found") until someone deleted them by hand -- and so did files in .tmp/ of the folder Portrait was started
    from (where the versions before 2026-11-24 spilled), when set before it."""
    db = tmp_path / "portrait.duckdb"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    died = subprocess.run([sys.executable, "-c", _SPILL_THEN_DIE, str(db), KEY], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert died.returncode == -9, died.stderr
    assert list((tmp_path / "portrait.duckdb.tmp").iterdir()), "nothing was left spilled: the test proves nothing"
    started_here = tmp_path / "started-here"
    shutil.copytree(tmp_path / "portrait.duckdb.tmp", started_here / ".tmp")  # an old version's spills
    for folder in (tmp_path, started_here):
        monkeypatch.chdir(folder)
        store = DuckDBStore(str(db), KEY)
        store.close()


# A restore of a plain backup into an encrypted database, killed once the backup is beside the database (as by a
# power cut), before the restored database was opened.
_RESTORE_THEN_DIE = """
import os, signal, sys
from portrait import service
from portrait.config import Settings

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

service._open_backup = die
service.restore_backup(Settings(db_path=sys.argv[1], encryption_key=sys.argv[2]), sys.argv[3])
"""


def test_a_restore_of_a_plain_backup_killed_midway_leaves_no_plain_copy_beside_the_database(tmp_path: Path) -> None:
    """A plain backup restored into an encrypted database was copied as it was beside the database, then
    encrypted: killed in between, the data folder kept a plain copy of every customer (``<db>.restoring``), which
    nothing removed until the next restore."""
    folder, backups = tmp_path / "data", tmp_path / "backups"
    folder.mkdir()
    plain = Portrait(Settings(db_path=str(tmp_path / "plain.duckdb"), backup_dir=str(backups)), background=False)
    plain.ingest_messages([{"type": "identify", "userId": "p-1", "traits": {"email": "zelda.encrypted@example.com"}}])
    plain.process_pending()
    backup = plain.backups.make("plain")["path"]
    plain.close()
    db = folder / "portrait.duckdb"
    Portrait(Settings(db_path=str(db), encryption_key=KEY), background=False).close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    died = subprocess.run([sys.executable, "-c", _RESTORE_THEN_DIE, str(db), KEY, backup], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert died.returncode == -9, died.stderr
    assert KNOWN[0] in Path(backup).read_bytes(), "the backup is not plain: the test proves nothing"
    assert [path.name for path in folder.rglob("*") if path.is_file() and KNOWN[0] in path.read_bytes()] == []
    restore_backup(Settings(db_path=str(db), encryption_key=KEY), backup)  # and the restore can be done again
    assert KNOWN[0] not in data_files(folder)
    restored = Portrait(Settings(db_path=str(db), encryption_key=KEY), background=False)
    try:
        assert restored.traits("user_id:p-1")["email"] == "zelda.encrypted@example.com"
    finally:
        restored.close()


def test_a_key_change_run_again_says_it_is_done(tmp_path: Path) -> None:
    """A key change killed after the new file took the old one's place, before it said so (or simply run twice),
    is run again with the same variables: it said the previous key was wrong -- as if the database were lost --
    where the database already opens with the new key."""
    db = encrypted_database(tmp_path)
    new_key = "a brand new key for the year"
    runner = CliRunner(env={"PORTRAIT_ENCRYPTION_KEY": new_key, "PORTRAIT_PREVIOUS_ENCRYPTION_KEY": KEY})
    assert runner.invoke(app, ["encrypt", "--db", db]).exit_code == 0
    again = runner.invoke(app, ["encrypt", "--db", db])
    assert again.exit_code == 0, again.output
    assert "already encrypted with PORTRAIT_ENCRYPTION_KEY" in again.output
    twice = CliRunner(env={"PORTRAIT_ENCRYPTION_KEY": new_key, "PORTRAIT_PREVIOUS_ENCRYPTION_KEY": ""}).invoke(
        app, ["encrypt", "--db", db])  # `portrait encrypt` run a second time with the key it encrypted with
    assert twice.exit_code == 0 and "already encrypted with PORTRAIT_ENCRYPTION_KEY" in twice.output
    elsewhere = CliRunner(env={"PORTRAIT_ENCRYPTION_KEY": "a third key", "PORTRAIT_PREVIOUS_ENCRYPTION_KEY": KEY})
    wrong = elsewhere.invoke(app, ["encrypt", "--db", db])  # neither key opens it: still refused
    assert wrong.exit_code == 1 and "PORTRAIT_PREVIOUS_ENCRYPTION_KEY is not the key" in wrong.output
    reopened = Portrait(Settings(db_path=db, encryption_key=new_key), background=False)
    try:
        assert reopened.traits("user_id:r-1")["email"] == "zelda.encrypted@example.com"
    finally:
        reopened.close()


# Holds the database with query work spilled into <db>.tmp/ (as a server in the middle of a large query) until told.
_SPILL_AND_HOLD = """
import sys
from portrait.sql import parse
from portrait.store.duckdb import DuckDBStore
store = DuckDBStore(sys.argv[1], sys.argv[2], memory_limit_mb=40)
session = store.session()
for table in ("spill_one", "spill_two"):
    session.execute(parse(f"CREATE TEMP TABLE {table} AS SELECT md5(i::VARCHAR) AS s FROM range(1000000) r(i)"))
print("spilled", flush=True)
sys.stdin.readline()
print(session.execute(parse("SELECT count(DISTINCT s) FROM spill_one")), flush=True)
"""


def test_a_database_whose_server_has_spilled_is_in_use_not_broken(tmp_path: Path) -> None:
    """A CLI command opening the database while the server holds it gets DatabaseInUse, and then goes through the
    server. While the server had spilled, it got DuckDB's "Existing temporary files found" instead (so the command
    failed), and `portrait encrypt` too; the server's spilled files are left alone."""
    db = str(tmp_path / "portrait.duckdb")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", _SPILL_AND_HOLD, db, KEY], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline() == "spilled\n", holder.stderr.read() if holder.stderr else ""
        assert list((tmp_path / "portrait.duckdb.tmp").iterdir()), "nothing was spilled: the test proves nothing"
        with pytest.raises(DatabaseInUse):
            DuckDBStore(db, KEY)
        with pytest.raises(DatabaseInUse):
            compact_file(db, KEY, "another key")
        out, err = holder.communicate("go\n", timeout=60)
        assert holder.returncode == 0, err
        assert out == "[(1000000,)]\n"  # its spilled rows were all still there
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.communicate()  # closes its pipes
