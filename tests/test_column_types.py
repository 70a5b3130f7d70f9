"""Declared column types (``--types amount=number``) for file imports and SQL sources, and the note an import
gives when an undeclared CSV column is read as text because its values do not fit one type."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import date, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.conftest import ADMIN_KEY, Server
from typer.testing import CliRunner

from portrait.cli import app
from portrait.column_types import Misfit, checked_types, convert_row, parse_types
from portrait.config import Settings
from portrait.errors import BadRequest
from portrait.service import Portrait

runner = CliRunner()
ORDERS = ("customer,amount,signup,vip,zip\n"
          "c1,12,2024-01-05,true,01234\n"
          "c2,13.5,2024-01-06,false,02345\n"
          "c3,tbd,2024-01-07,true,03456\n"
          "c4,100,,1,04567\n")
TYPES = "amount=number,signup=date,vip=boolean,zip=text"


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTRAIT_NO_PROGRESS", "1")


def import_orders(tmp_path: Path, text: str, *args: str, name: str = "orders.csv") -> tuple[Any, str]:
    source = tmp_path / name
    source.write_text(text)
    db = str(tmp_path / "p.duckdb")
    result = runner.invoke(app, ["import", "events", str(source), "--user-id", "customer", "--event", "Order",
                                 "--db", db, *args])
    return result, db


def properties(db: str, customer: str) -> dict[str, Any]:
    service = Portrait(Settings(db_path=db), background=False)
    try:
        return dict(service.events(f"user_id:{customer}")["events"][0]["properties"])
    finally:
        service.close()


@pytest.mark.parametrize(("kind", "value", "converted"), [
    ("number", "12", 12), ("number", " -1.5e3 ", -1500.0), ("number", 7, 7), ("number", 2.5, 2.5),
    ("integer", "42", 42), ("integer", 42.0, 42), ("boolean", "Yes", True), ("boolean", 0, False),
    ("boolean", "f", False), ("date", "2024-01-05", date(2024, 1, 5)),
    ("date", datetime(2024, 1, 5), date(2024, 1, 5)), ("timestamp", "2024-01-05T10:11:12Z",
                                                          datetime.fromisoformat("2024-01-05T10:11:12+00:00")),
    ("text", 1234, "1234"), ("text", True, "true"), ("text", " ", " "), ("number", "  ", None),
])
def test_a_cell_converts_to_its_declared_type(kind: str, value: Any, converted: Any) -> None:
    assert convert_row({"c": value}, {"c": kind}) == {"c": converted}


@pytest.mark.parametrize(("kind", "value", "reason"), [
    ("number", "tbd", "column c: 'tbd' is not a number"), ("number", "1,234", "column c: '1,234' is not a number"),
    ("number", True, "column c: 'true' is not a number"), ("number", "nan", "column c: 'nan' is not a number"),
    ("integer", "1.5", "column c: '1.5' is not a whole number"),
    ("boolean", "maybe", "column c: 'maybe' is not a boolean (true/false, yes/no, 1/0)"),
    ("date", "05/01/2024", "column c: '05/01/2024' is not a date (YYYY-MM-DD)"),
    ("date", datetime(2024, 1, 5, 10), "column c: '2024-01-05T10:00:00' is not a date (it has a time of day)"),
    ("text", {"a": 1}, "column c: {'a': 1} is not text (it is an object)"),
    # past a float's range (it was infinity, which JSON cannot hold), and digits of other scripts (they were read
    # as numbers: '٣' as 3), as the trait rules read numbers written as text
    ("number", "1e999", "column c: '1e999' is not a number"),
    ("number", "-1e999", "column c: '-1e999' is not a number"),
    ("number", "\u0663", "column c: '\u0663' is not a number"),
    ("integer", "\uff11\uff12", "column c: '\uff11\uff12' is not a whole number"),
])
def test_a_cell_that_does_not_convert_says_which_column_value_and_type(kind: str, value: Any, reason: str) -> None:
    with pytest.raises(Misfit) as raised:
        convert_row({"c": value}, {"c": kind})
    assert str(raised.value) == reason


@pytest.mark.parametrize(("text", "message"), [
    ("amount", "COLUMN=TYPE pairs"), ("amount=money", "'money' is not a type; the types are text, number"),
    ("=number", "COLUMN=TYPE pairs"),
])
def test_bad_types_options_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_types(text)


def test_declared_types_convert_cells_and_reject_the_rows_that_do_not_fit(tmp_path: Path) -> None:
    result, db = import_orders(tmp_path, ORDERS, "--types", TYPES)
    assert result.exit_code == 0, result.output
    assert "4 rows read" in result.output and "stored 3" in result.output and "rejected 1." in result.output
    assert "rejected invalid_value: 1" in result.output
    rejects = [json.loads(line) for line in (tmp_path / "orders.csv.rejects.ndjson").read_text().splitlines()]
    assert [(r["row"], r["code"], r["reason"]) for r in rejects] == [
        (3, "invalid_value", "column amount: 'tbd' is not a number")]
    assert json.loads(rejects[0]["message"])["amount"] == "tbd"  # the row as read, kept
    assert properties(db, "c1") == {"amount": 12, "signup": "2024-01-05", "vip": True, "zip": "01234"}
    assert properties(db, "c2") == {"amount": 13.5, "signup": "2024-01-06", "vip": False, "zip": "02345"}
    assert properties(db, "c4") == {"amount": 100, "vip": True, "zip": "04567"}  # an empty cell is no value
    service = Portrait(Settings(db_path=db), background=False)
    assert [r["code"] for r in service.rejected()["rejected"]] == ["invalid_value"]
    service.close()
    again, _ = import_orders(tmp_path, ORDERS, "--types", TYPES)
    assert "stored 0, already there 3, rejected 1." in again.output, again.output


def test_without_types_the_column_read_as_text_is_named_in_a_note(tmp_path: Path) -> None:
    result, db = import_orders(tmp_path, ORDERS)
    assert result.exit_code == 0, result.output
    assert "stored 4" in result.output
    output = " ".join(result.output.split())  # rich wraps long lines
    assert ("Note: column amount was read as text: row 3 holds 'tbd', which is not a number like the rows before "
            "it. Declare what the column is (--types amount=number)") in output
    assert "column vip" not in output and "column zip" not in output  # one type each; zip is kept as written
    assert properties(db, "c1")["amount"] == "12"


def test_a_column_of_numbers_that_starts_with_a_decimal_gets_the_note_too(tmp_path: Path) -> None:
    result, _ = import_orders(tmp_path, "customer,amount\nc1,12.5\nc2,3\nc3,tbd\n")
    assert "column amount was read as text: row 3 holds 'tbd'" in " ".join(result.output.split()), result.output


def test_the_note_names_a_misfit_past_the_first_block_and_a_declared_text_column_has_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("portrait.files._BLOCK_BYTES", 1024)  # as a file of many 4 MB blocks does
    rows = "".join(f"c{i},{i},{i}.5,NA,Ann\n" for i in range(1, 400))
    text = "customer,amount,ratio,tag,name\n" + rows + "c400,12A,1e3,x,Bob\n"
    result, _ = import_orders(tmp_path, text)
    output = " ".join(result.output.split())
    assert "column amount was read as text: row 400 holds '12A', which is not a number" in output, output
    assert "column ratio" not in output and "column tag" not in output and "column name" not in output
    declared, _ = import_orders(tmp_path, text, "--types", "amount=text", name="again.csv")
    # Read as text, as it was: the same messages (and ids), so nothing is added
    assert "Note:" not in declared.output and "already there 400" in declared.output, declared.output


def test_rows_whose_values_a_declaration_does_not_change_keep_their_message_ids(tmp_path: Path) -> None:
    clean = ORDERS.replace("tbd", "14")
    first, _ = import_orders(tmp_path, clean)
    assert "stored 4" in first.output, first.output
    typed, _ = import_orders(tmp_path, clean, "--types", "amount=number,signup=date,vip=boolean,zip=text")
    assert "stored 0, already there 4" in typed.output, typed.output


def test_ndjson_and_parquet_rows_take_declared_types(tmp_path: Path) -> None:
    rows = [{"customer": "c1", "amount": "12", "vip": "yes"}, {"customer": "c2", "amount": 7.5, "vip": False},
            {"customer": "c3", "amount": "tbd", "vip": True}]
    (tmp_path / "orders.ndjson").write_text("\n".join(orjson.dumps(r).decode() for r in rows) + "\n")
    # Parquet: the amounts as text, the flags as text (as a database export may have them)
    pq.write_table(pa.Table.from_pylist([{"customer": r["customer"] + "p", "amount": str(r["amount"]),
                                          "vip": str(r["vip"]).lower()} for r in rows]), tmp_path / "orders.parquet")
    db = str(tmp_path / "p.duckdb")
    for name in ("orders.ndjson", "orders.parquet"):
        result = runner.invoke(app, ["import", "events", str(tmp_path / name), "--user-id", "customer", "--event",
                                     "Order", "--types", "amount=number,vip=boolean", "--db", db])
        assert "stored 2" in result.output and "rejected invalid_value: 1" in result.output, result.output
    assert properties(db, "c1") == {"amount": 12, "vip": True}
    assert properties(db, "c2") == {"amount": 7.5, "vip": False}
    assert properties(db, "c2p") == {"amount": 7.5, "vip": False}


def test_a_mapping_file_declares_types_and_the_option_overrides_them(tmp_path: Path) -> None:
    (tmp_path / "orders.yaml").write_text("identifiers: {user_id: customer}\nevent: Order\n"
                                          "types: {amount: number, zip: number}\n")
    source = tmp_path / "orders.csv"
    source.write_text(ORDERS)
    db = str(tmp_path / "p.duckdb")
    result = runner.invoke(app, ["import", "events", str(source), "--mapping", str(tmp_path / "orders.yaml"),
                                 "--types", "zip=text", "--db", db])
    assert "stored 3" in result.output and "rejected invalid_value: 1" in result.output, result.output
    assert properties(db, "c1")["zip"] == "01234" and properties(db, "c1")["amount"] == 12


@pytest.mark.parametrize(("types", "message"), [
    ("price=number", "the file has no column 'price'"),
    ("customer=number", "--types names column 'customer', which is not one of the properties"),
    ("amount=money", "'money' is not a type"),
])
def test_a_declaration_that_cannot_apply_stops_the_import_before_anything_is_stored(
        tmp_path: Path, types: str, message: str) -> None:
    result, db = import_orders(tmp_path, ORDERS, "--types", types)
    assert result.exit_code != 0 and message in " ".join(result.output.split()), result.output
    assert not Path(db).exists() or runner.invoke(app, ["status", "--db", db, "--json"]).output.count(
        '"events_received": 0') == 1


def test_an_import_through_a_server_takes_types_and_reports_notes(tmp_path: Path, server: Server) -> None:
    source = tmp_path / "orders.csv"
    source.write_text(ORDERS)
    common = ["import", "events", str(source), "--user-id", "customer", "--event", "Order", "--url", server.url,
              "--admin-key", ADMIN_KEY]
    typed = runner.invoke(app, [*common, "--types", TYPES])
    assert "stored 3" in typed.output and "rejected invalid_value: 1" in typed.output, typed.output
    with server.admin() as client:
        answer = client.post("/api/imports", content=ORDERS.encode(), params={
            "filename": "orders.csv", "user_id": "customer", "event": "Order Again"}).json()
    assert answer["notes"] == [
        "column amount was read as text: row 3 holds 'tbd', which is not a number like the rows before it. Declare "
        "what the column is (--types amount=number) to reject the rows that do not fit instead, or --types "
        "amount=text to read it as text without this note"]
    assert answer["read_as_text"] == [{"column": "amount", "row": 3, "value": "tbd", "type": "number"}]
    with server.admin() as client:
        typed_answer = client.post("/api/imports", content=ORDERS.encode(), params={
            "filename": "orders.csv", "user_id": "customer", "event": "Order Again", "types": "amount=number"}).json()
    assert typed_answer["by_code"] == {"invalid_value": 1} and typed_answer["notes"] == []
    assert typed_answer["read_as_text"] == []
    assert typed_answer["first_rejected"][0]["reason"] == "column amount: 'tbd' is not a number"


def test_a_sql_source_takes_declared_types(tmp_path: Path, portrait: Portrait) -> None:
    path = tmp_path / "crm.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE customers (id TEXT, spend TEXT, vip TEXT)")
        db.executemany("INSERT INTO customers VALUES (?, ?, ?)",
                       [("1", "120.5", "yes"), ("2", "tbd", "no"), ("3", "80", "no")])
    db.close()
    portrait.add_source({"name": "crm", "kind": "profiles", "url": f"sqlite:///{path}",
                         "query": "SELECT id, spend, vip FROM customers",
                         "mapping": {"identifiers": {"user_id": "id"}, "types": {"spend": "number",
                                                                                 "vip": "boolean"}}})
    report = portrait.sync_source("crm")
    assert (report.stored, report.rejected, report.by_code) == (2, 1, {"invalid_value": 1})
    portrait.process_pending()
    assert portrait.traits("user_id:1") == {"spend": 120.5, "vip": True}
    assert portrait.traits("user_id:3") == {"spend": 80, "vip": False}
    rejected = portrait.rejected()["rejected"]
    assert [(r["code"], r["reason"]) for r in rejected] == [("invalid_value", "column spend: 'tbd' is not a number")]
    assert portrait.sync_source("crm").stored == 0  # read again: nothing new


def test_a_time_column_that_changes_shape_gets_no_note_suggesting_a_type_it_cannot_take(tmp_path: Path) -> None:
    text = "customer,day,amount\nc1,2024-01-05,1\nc2,05/01/2024,2\n"
    result, _ = import_orders(tmp_path, text, "--timestamp", "day")
    assert "rejected invalid_timestamp: 1" in result.output and "Note:" not in result.output, result.output


@pytest.mark.parametrize(("types", "expected"), [(None, {}), ({"amount": "number"}, {"amount": "number"})])
def test_a_mapping_document_reads_its_types(types: Any, expected: dict[str, str]) -> None:
    from portrait.mapping import RowMapping

    mapping = RowMapping.from_document({"identifiers": {"user_id": "id"}, "types": types}, "profiles")
    assert mapping.types == expected
    assert RowMapping.from_document(mapping.to_document(), "profiles") == mapping


def test_a_mapping_document_with_types_that_are_not_a_mapping_is_refused() -> None:
    from portrait.mapping import RowMapping

    with pytest.raises(BadRequest, match="'types' must map column names to type names"):
        RowMapping.from_document({"identifiers": {"user_id": "id"}, "types": ["amount"]}, "profiles")


# Dates in the formats files have: a declared strptime format (date:%d.%m.%Y), the only reading of the column.

EU = "customer,signup,seen\nc1,24.12.2025,24.12.2025 18:30\nc2,01.02.2024,01.02.2024 07:05\nc3,,\n"
US = "customer,signup,seen\nc1,12/24/2025,12/24/2025 06:30 PM\nc2,2/1/2024,2/1/2024 07:05 AM\nc3,,\n"
ISO = "customer,signup,seen\nc1,2025-12-24,2025-12-24 18:30:00\nc2,2024-02-01,2024-02-01 07:05:00\nc3,,\n"
EU_TYPES = "signup=date:%d.%m.%Y,seen=timestamp:%d.%m.%Y %H:%M"
US_TYPES = "signup=date:%m/%d/%Y,seen=timestamp:%m/%d/%Y %I:%M %p"


@pytest.mark.parametrize(("declared", "value", "converted"), [
    ("date:%d.%m.%Y", "24.12.2025", date(2025, 12, 24)), ("date:%d.%m.%Y", " 1.2.2025 ", date(2025, 2, 1)),
    ("date:%d/%m/%Y", "24/12/2025", date(2025, 12, 24)), ("date:%m/%d/%Y", "12/24/2025", date(2025, 12, 24)),
    ("date:%Y%m%d", 20251224, date(2025, 12, 24)), ("date:%d %b %Y", "24 Dec 2025", date(2025, 12, 24)),
    ("date:%d.%m.%Y", date(2025, 12, 24), date(2025, 12, 24)),  # typed already (Parquet, a database): kept
    ("timestamp:%m/%d/%Y %I:%M %p", "12/24/2025 06:30 PM", datetime(2025, 12, 24, 18, 30)),
    ("timestamp:%d.%m.%Y %H:%M %z", "24.12.2025 18:30 +0100",
     datetime.fromisoformat("2025-12-24T18:30:00+01:00")),
    ("timestamp:%d.%m.%Y", "24.12.2025", datetime(2025, 12, 24)),
])
def test_a_cell_converts_with_its_declared_format(declared: str, value: Any, converted: Any) -> None:
    assert convert_row({"c": value}, {"c": declared}) == {"c": converted}


@pytest.mark.parametrize(("declared", "value", "reason"), [
    # month-first where day-first is declared: refused, never read the other way round
    ("date:%d/%m/%Y", "12/24/2025", "column c: '12/24/2025' is not a date in the format %d/%m/%Y (like 24/12/2025)"),
    ("date:%d.%m.%Y", "2025-12-24", "column c: '2025-12-24' is not a date in the format %d.%m.%Y (like 24.12.2025)"),
    ("date:%d.%m.%Y", "31.02.2025", "column c: '31.02.2025' is not a date in the format %d.%m.%Y (like 24.12.2025)"),
    ("date:%d.%m.%Y", "24.12.2025 x", "column c: '24.12.2025 x' is not a date in the format %d.%m.%Y "
                                      "(like 24.12.2025)"),
    ("timestamp:%d.%m.%Y %H:%M", "24.12.2025", "column c: '24.12.2025' is not a timestamp in the format "
                                               "%d.%m.%Y %H:%M (like 24.12.2025 18:30)"),
    ("date:%Y%m%d", 2.5, "column c: '2.5' is not a date in the format %Y%m%d (like 20251224)"),
    ("timestamp:%d.%m.%Y %H:%M %z", "24.12.2025 18:30", "column c: '24.12.2025 18:30' is not a timestamp in the "
                                                        "format %d.%m.%Y %H:%M %z (like 24.12.2025 18:30 +0000)"),
])
def test_a_cell_that_does_not_fit_the_declared_format_names_the_format(declared: str, value: Any,
                                                                       reason: str) -> None:
    with pytest.raises(Misfit) as raised:
        convert_row({"c": value}, {"c": declared})
    assert str(raised.value) == reason


@pytest.mark.parametrize(("text", "message"), [
    ("s=date:dd.mm.yyyy", "the format 'dd.mm.yyyy' has no strptime directives"),
    ("s=date:%d.%m.%Q", "has %Q, which is not taken"),
    ("s=date:%-d.%m.%Y", "has %-, GNU's unpadded form"),
    ("s=date:%d.%m.%Y%", "ends with a lone %"),
    ("s=date:%d.%d.%Y", "has %d twice"),
    ("s=date:%d.%m", "has no year"),
    ("s=date:%m.%Y", "is not a whole date"),
    ("s=date:%d.%m.%Y %H:%M", "has a time of day: declare the column timestamp:FORMAT"),
    ("s=timestamp:%d.%m.%Y %I:%M", "a 12-hour %I without %p"),
    ("s=timestamp:%d.%m.%Y %H:%M %Z", "has %Z, a zone's name"),
    ("s=date:%x", "has %x, which is not taken"),
    ("s=number:%d", "number takes no format (only date and timestamp do"),
    ("s=date:%d %b, %Y", "a format cannot hold a comma here"),
])
def test_a_bad_format_is_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)):
        parse_types(text)


def test_types_keep_column_names_with_equals_and_formats_with_colons() -> None:
    assert parse_types("a=b=number, seen = timestamp:%Y-%m-%dT%H:%M:%S") == {
        "a=b": "number", "seen": "timestamp:%Y-%m-%dT%H:%M:%S"}


def _signups(db: str) -> dict[str, dict[str, Any]]:
    service = Portrait(Settings(db_path=db), background=False)
    try:
        service.process_pending()
        return {c: service.traits(f"user_id:{c}") for c in ("c1", "c2", "c3")}
    finally:
        service.close()


@pytest.mark.parametrize(("text", "types"), [(EU, EU_TYPES), (US, US_TYPES)], ids=["day-first", "month-first"])
def test_dates_read_with_their_format_are_stored_as_the_same_dates_in_iso(tmp_path: Path, text: str,
                                                                          types: str) -> None:
    """The same traits and properties as the ISO file of the same dates -- the same messages, even: imported after
    it, nothing is added."""
    (tmp_path / "iso.csv").write_text(ISO)
    (tmp_path / "local.csv").write_text(text)
    db = str(tmp_path / "p.duckdb")
    iso = runner.invoke(app, ["import", "profiles", str(tmp_path / "iso.csv"), "--user-id", "customer",
                              "--types", "signup=date,seen=timestamp", "--db", db])
    assert "stored 3" in iso.output, iso.output
    local = runner.invoke(app, ["import", "profiles", str(tmp_path / "local.csv"), "--user-id", "customer",
                                "--types", types, "--db", db])
    assert local.exit_code == 0 and "stored 0, already there 3, rejected 0." in local.output, local.output
    other = str(tmp_path / "other.duckdb")  # the formatted file alone gives the same traits
    runner.invoke(app, ["import", "profiles", str(tmp_path / "local.csv"), "--user-id", "customer", "--types",
                        types, "--db", other])
    assert _signups(other) == _signups(db) == {
        "c1": {"signup": "2025-12-24", "seen": "2025-12-24T18:30:00.000Z"},
        "c2": {"signup": "2024-02-01", "seen": "2024-02-01T07:05:00.000Z"}, "c3": {}}
    result, events = import_orders(tmp_path, EU, "--types", EU_TYPES, name="eu.csv")
    assert "stored 3" in result.output, result.output
    assert properties(events, "c1") == {"signup": "2025-12-24", "seen": "2025-12-24T18:30:00.000Z"}


def test_a_row_whose_date_does_not_fit_the_format_is_rejected_and_the_others_import(tmp_path: Path) -> None:
    # ISO dates (which Arrow would read as dates) and numbers (20240105) are read with the format too
    text = "customer,signup\nc1,24.12.2025\nc2,12/24/2025\nc3,2025-12-24\nc4,\nc5,5.1.2024\n"
    result, db = import_orders(tmp_path, text, "--types", "signup=date:%d.%m.%Y")
    assert "stored 3" in result.output and "rejected invalid_value: 2" in result.output, result.output
    rejects = [json.loads(line) for line in (tmp_path / "orders.csv.rejects.ndjson").read_text().splitlines()]
    assert [(r["row"], r["reason"]) for r in rejects] == [
        (2, "column signup: '12/24/2025' is not a date in the format %d.%m.%Y (like 24.12.2025)"),
        (3, "column signup: '2025-12-24' is not a date in the format %d.%m.%Y (like 24.12.2025)")]
    assert json.loads(rejects[0]["message"])["signup"] == "12/24/2025"  # the row as read, kept
    assert properties(db, "c5") == {"signup": "2024-01-05"} and properties(db, "c4") == {}
    compact, _ = import_orders(tmp_path, "customer,signup\nc9,20251224\n", "--types", "signup=date:%Y%m%d",
                               name="compact.csv")
    assert "stored 1" in compact.output and properties(db, "c9") == {"signup": "2025-12-24"}, compact.output


def test_a_bad_format_stops_the_import_before_anything_is_opened(tmp_path: Path) -> None:
    result, db = import_orders(tmp_path, EU, "--types", "signup=date:%d.%m")
    assert result.exit_code == 2 and "Invalid value for '--types'" in result.output, result.output
    assert "column signup: the format '%d.%m' has no year" in " ".join(result.output.split())
    assert not Path(db).exists()
    (tmp_path / "eu.yaml").write_text("identifiers: {user_id: customer}\nevent: Signup\n"
                                      "types: {signup: 'date:dd.mm.yyyy'}\n")
    mapped = runner.invoke(app, ["import", "events", str(tmp_path / "orders.csv"), "--mapping",
                                 str(tmp_path / "eu.yaml"), "--db", db])
    assert mapped.exit_code == 1 and "the format 'dd.mm.yyyy' has no strptime directives" in mapped.output
    assert not Path(db).exists()


def test_a_format_with_a_space_around_it_is_refused_not_every_row_rejected(tmp_path: Path) -> None:
    """'signup=date: %d.%m.%Y' (a space after the colon) passed the check, and then every row was rejected: the
    cells are read trimmed, and strptime's format wants the space -- "'24.12.2025' is not a date in the format
    %d.%m.%Y". The --timestamp-format likewise (every row invalid_timestamp)."""
    result, db = import_orders(tmp_path, EU, "--types", "signup=date: %d.%m.%Y")
    assert result.exit_code == 2, result.output
    assert "begins or" in result.output and "'%d.%m.%Y'" in result.output, result.output
    assert not Path(db).exists()
    timed = runner.invoke(app, ["import", "events", str(tmp_path / "orders.csv"), "--user-id", "customer",
                                "--event", "Order", "--timestamp", "signup", "--timestamp-format", "%d.%m.%Y ",
                                "--db", db])
    assert timed.exit_code == 1 and "begins or ends with a space" in " ".join(timed.output.split()), timed.output


def test_a_mapping_file_and_ndjson_take_a_format(tmp_path: Path) -> None:
    (tmp_path / "eu.yaml").write_text("identifiers: {user_id: customer}\nevent: Signup\n"
                                      "types: {signup: 'date:%d %b, %Y'}\n")  # a comma is fine here
    (tmp_path / "eu.ndjson").write_text('{"customer": "c1", "signup": "24 Dec, 2025"}\n'
                                        '{"customer": "c2", "signup": "Dec 24, 2025"}\n')
    db = str(tmp_path / "p.duckdb")
    result = runner.invoke(app, ["import", "events", str(tmp_path / "eu.ndjson"), "--mapping",
                                 str(tmp_path / "eu.yaml"), "--db", db])
    assert "stored 1" in result.output and "rejected invalid_value: 1" in result.output, result.output
    assert properties(db, "c1") == {"signup": "2025-12-24"}


def test_an_import_through_the_api_takes_a_format_and_refuses_a_bad_one(server: Server) -> None:
    with server.admin() as client:
        answer = client.post("/api/imports", content=US.encode(), params={
            "filename": "us.csv", "kind": "profiles", "user_id": "customer", "types": US_TYPES})
        bad = client.post("/api/imports", content=US.encode(), params={
            "filename": "us.csv", "kind": "profiles", "user_id": "customer", "types": "signup=date:%m/%d"})
        server.wait_caught_up()
        traits = client.get("/api/profiles/user_id:c2/traits")
    assert answer.status_code == 200 and answer.json()["stored"] == 3, answer.text
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_mapping", bad.text
    assert "column signup: the format '%m/%d' has no year" in bad.json()["message"]
    assert traits.json() == {"signup": "2024-02-01", "seen": "2024-02-01T07:05:00.000Z"}, traits.text


def test_a_sql_source_reads_text_dates_with_a_format(tmp_path: Path, portrait: Portrait) -> None:
    path = tmp_path / "crm.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE customers (id TEXT, signup TEXT)")
        db.executemany("INSERT INTO customers VALUES (?, ?)", [("1", "24.12.2025"), ("2", "12/24/2025")])
    db.close()
    portrait.add_source({"name": "crm", "kind": "profiles", "url": f"sqlite:///{path}",
                         "query": "SELECT id, signup FROM customers",
                         "mapping": {"identifiers": {"user_id": "id"}, "types": {"signup": "date:%d.%m.%Y"}}})
    report = portrait.sync_source("crm")
    assert (report.stored, report.rejected) == (1, 1)
    portrait.process_pending()
    assert portrait.traits("user_id:1") == {"signup": "2025-12-24"}
    assert [r["reason"] for r in portrait.rejected()["rejected"]] == [
        "column signup: '12/24/2025' is not a date in the format %d.%m.%Y (like 24.12.2025)"]
    with pytest.raises(BadRequest, match=re.escape("the format 'dd.mm.yyyy' has no strptime directives")):
        portrait.add_source({"name": "crm2", "kind": "profiles", "url": f"sqlite:///{path}",
                             "query": "SELECT id, signup FROM customers",
                             "mapping": {"identifiers": {"user_id": "id"}, "types": {"signup": "date:dd.mm.yyyy"}}})


def test_a_csv_column_with_a_format_is_read_as_written_not_as_arrow_would_type_it(tmp_path: Path) -> None:
    """Arrow would read 01022024 as the number 1022024 (its leading zero gone) and an ISO date as a date, which the
    format would then never see: both are read as the text they are, and judged by the format."""
    text = "customer,compact,iso\nc1,01022024,2024-02-01\n"
    result, db = import_orders(tmp_path, text, "--types", "compact=date:%d%m%Y")
    assert "stored 1" in result.output, result.output
    assert properties(db, "c1") == {"compact": "2024-02-01", "iso": "2024-02-01"}
    declared, _ = import_orders(tmp_path, text, "--types", "iso=date:%d.%m.%Y", name="iso.csv")
    assert "rejected invalid_value: 1" in declared.output, declared.output


@pytest.mark.parametrize(("text", "note"), [
    ("customer,signup\nc1,24.12.2025\nc2,1.2.2024\n", "column signup was read as text: its values are dates written "
     "as '24.12.2025', not ISO-8601. Declare their format (--types 'signup=date:%d.%m.%Y') to store them as dates"),
    ("customer,signup\nc1,12/24/2025\nc2,2/1/2024\n", "column signup was read as text: its values are dates written "
     "as '12/24/2025', not ISO-8601. Declare their format (--types 'signup=date:%m/%d/%Y') to store them as dates"),
    ("customer,signup\nc1,01/02/2024\nc2,03/04/24\n", None),  # two shapes: no one format reads them all
    # every day 12 or less: day-first and month-first both read them, and the note does not pick one
    ("customer,signup\nc1,01/02/2024\nc2,03/04/2024\n", "column signup was read as text: its values are dates "
     "written as '01/02/2024', not ISO-8601, day or month first (the values do not tell: say which). Declare their "
     "format (--types 'signup=date:%d/%m/%Y' or --types 'signup=date:%m/%d/%Y') to store them as dates"),
    ("customer,signup\nc1,24.12.2025\nc2,31.02.2025\n", None),  # no such date: not a column of dates
    ("customer,signup\nc1,24.12.2025\nc2,tbd\n", None),
], ids=["day-first", "month-first", "mixed", "ambiguous", "no-such-date", "not-all-dates"])
def test_an_undeclared_column_of_dates_not_in_iso_is_noted_with_their_format(tmp_path: Path, text: str,
                                                                              note: str | None) -> None:
    result, db = import_orders(tmp_path, text)
    output = " ".join(result.output.split())
    assert "stored 2" in output, output
    assert (f"Note: {note}" in output) if note else ("Note:" not in output), output
    assert properties(db, "c1")["signup"] == text.split("\n")[1].split(",")[1]  # only noted: still the text


def test_the_date_note_comes_through_the_api_and_declaring_the_format_settles_it(server: Server) -> None:
    text = b"customer,signup\nc1,24.12.2025\nc2,01.02.2024\n"
    params = {"filename": "eu.csv", "user_id": "customer", "event": "Signup", "dry_run": "true"}
    with server.admin() as client:
        noted = client.post("/api/imports", content=text, params=params).json()
        declared = client.post("/api/imports", content=text, params={**params, "types": "signup=date:%d.%m.%Y"})
    assert noted["notes"] == ["column signup was read as text: its values are dates written as '24.12.2025', not "
                              "ISO-8601. Declare their format (--types 'signup=date:%d.%m.%Y') to store them as dates"]
    assert noted["read_as_text"] == []  # a column of dates is offered its formats, in dates_as_text
    assert declared.json()["notes"] == [] and declared.json()["stored"] == 2, declared.text


@pytest.mark.parametrize(("text", "entry"), [
    (b"customer,signup\nc1,24.12.2025\nc2,01.02.2024\n",
     {"column": "signup", "example": "24.12.2025", "formats": ["%d.%m.%Y"], "example_dates": ["2025-12-24"]}),
    # every day 12 or less: both readings, each with what the first value would mean
    (b"customer,signup\nc1,01/02/2024\nc2,03/04/2024\n",
     {"column": "signup", "example": "01/02/2024", "formats": ["%d/%m/%Y", "%m/%d/%Y"],
      "example_dates": ["2024-02-01", "2024-01-02"]}),
], ids=["day-first", "ambiguous"])
def test_the_api_gives_the_date_note_as_data_and_a_format_from_it_stores_dates(server: Server, text: bytes,
                                                                               entry: dict[str, Any]) -> None:
    params = {"filename": "eu.csv", "user_id": "customer", "event": "Signup"}
    with server.admin() as client:
        noted = client.post("/api/imports", content=text, params={**params, "dry_run": "true"}).json()
        assert noted["dates_as_text"] == [entry]
        declared = client.post("/api/imports", content=text,
                               params={**params, "types": f"signup=date:{entry['formats'][-1]}"}).json()
        assert declared["dates_as_text"] == [] and declared["stored"] == 2, declared
        server.wait_caught_up()
        signup = client.get("/api/profiles/user_id:c1/events", params={"event": "Signup"}).json()["events"]
        schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert signup[0]["properties"] == {"signup": entry["example_dates"][-1]}  # a date now, as the chosen format reads
    assert "dates_as_text" in schema["ImportReport"]["properties"]
    assert set(schema["DateColumn"]["properties"]) == set(entry)


@pytest.mark.parametrize("declared", ["%a, %d %b %Y %H:%M:%S %z", "%Y-%m-%dT%H:%M:%S.%f%z", "%d.%m.%Y %H:%M %z"])
def test_a_format_with_an_offset_is_taken(declared: str) -> None:
    """The check made the format read its own example, written from a time without a zone: %z wrote nothing, so
    every format with an offset (RFC 2822's, ISO's with microseconds) was refused as 'cannot be read'."""
    assert checked_types({"seen": f"timestamp:{declared}"}) == {"seen": f"timestamp:{declared}"}  # a mapping's
