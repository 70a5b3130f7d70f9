"""`portrait import events`: files of Segment-format messages, through the normal ingestion rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from portrait.cli import app
from portrait.config import Settings
from portrait.errors import NotFound
from portrait.files import read_messages
from portrait.mapping import RowMapping
from portrait.service import Portrait
from portrait.spec import Unreadable

runner = CliRunner()
MESSAGES: list[dict[str, Any]] = [
    {"type": "identify", "userId": "u1", "traits": {"email": "ann@example.com"}, "timestamp": "2019-05-01T10:00:00Z"},
    {"type": "track", "userId": "u1", "event": "Order Completed", "properties": {"revenue": 30},
     "timestamp": "2019-05-02T10:00:00Z"},
    {"type": "track", "userId": "u1", "timestamp": "2019-05-03T10:00:00Z"},  # no event name: rejected
    {"type": "track", "anonymousId": "a9", "event": "Product Viewed", "timestamp": "2019-05-04T10:00:00Z"},
]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTRAIT_NO_PROGRESS", "1")


def write_ndjson(path: Path, messages: list[Any], extra_lines: tuple[str, ...] = ()) -> Path:
    lines = [orjson.dumps(m).decode() for m in messages] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def status(db: str) -> dict[str, Any]:
    return dict(json.loads(runner.invoke(app, ["status", "--db", db, "--json"]).output))


def import_crm(tmp_path: Path, text: str | bytes, *args: str, name: str = "crm.csv") -> tuple[Any, str]:
    """Write a CRM file and import it as profiles keyed by its ``id`` column; the CLI's result and the database."""
    source = tmp_path / name
    if isinstance(text, bytes):
        source.write_bytes(text)
    else:
        source.write_text(text)
    db = str(tmp_path / "p.duckdb")
    return runner.invoke(app, ["import", "profiles", str(source), "--user-id", "id", "--db", db, *args]), db


def test_ndjson_import_keeps_history_and_lists_rejected_rows(tmp_path: Path) -> None:
    source = write_ndjson(tmp_path / "events.ndjson", MESSAGES, extra_lines=("{not json",))
    db = str(tmp_path / "p.duckdb")
    result = runner.invoke(app, ["import", "events", str(source), "--db", db])
    assert result.exit_code == 0, result.output
    assert "5 rows read" in result.output and "stored 3" in result.output and "rejected 2" in result.output
    rejects = [json.loads(line) for line in (tmp_path / "events.ndjson.rejects.ndjson").read_text().splitlines()]
    assert [(r["row"], r["code"]) for r in rejects] == [(3, "missing_field"), (5, "invalid_message")]
    assert json.loads(rejects[1]["message"]) == "{not json"
    assert rejects[1]["reason"].startswith("line 5 is not JSON: ")
    service = Portrait(Settings(db_path=db), background=False)
    events = service.events("email:ann@example.com")["events"]
    assert [e["timestamp"] for e in events] == ["2019-05-02T10:00:00.000Z", "2019-05-01T10:00:00.000Z"]
    assert {e["source"] for e in events} == {"import:events.ndjson"}
    assert {r["code"] for r in service.rejected()["rejected"]} == {"missing_field", "invalid_message"}
    service.close()


def test_reimporting_the_same_file_adds_nothing(tmp_path: Path) -> None:
    source = write_ndjson(tmp_path / "events.ndjson", MESSAGES[:2])
    db = str(tmp_path / "p.duckdb")
    runner.invoke(app, ["import", "events", str(source), "--db", db])
    again = runner.invoke(app, ["import", "events", str(source), "--db", db])
    assert "stored 0, already there 2" in again.output
    assert status(db)["events_received"] == 2


def test_dry_run_checks_everything_and_writes_nothing(tmp_path: Path) -> None:
    source = write_ndjson(tmp_path / "events.ndjson", MESSAGES)
    db = str(tmp_path / "p.duckdb")
    result = runner.invoke(app, ["import", "events", str(source), "--db", db, "--dry-run",
                                 "--rejects", str(tmp_path / "bad.ndjson")])
    assert "would store 3" in result.output and "rejected missing_field: 1" in result.output
    assert json.loads((tmp_path / "bad.ndjson").read_text())["row"] == 3
    assert status(db)["events_received"] == 0 and status(db)["events_rejected"] == 0


def test_a_dry_run_of_a_file_imported_before_says_its_rows_are_already_there(tmp_path: Path) -> None:
    """The dry run's report says what the import would do, duplicates included (it said 'would store' every row)."""
    source = write_ndjson(tmp_path / "events.ndjson", MESSAGES[:2])
    db = str(tmp_path / "p.duckdb")
    runner.invoke(app, ["import", "events", str(source), "--db", db])
    write_ndjson(source, [*MESSAGES[:2], MESSAGES[3], {**MESSAGES[3], "messageId": "twice"},
                          {**MESSAGES[3], "messageId": "twice"}])
    dry = runner.invoke(app, ["import", "events", str(source), "--db", db, "--dry-run"])
    assert "would store 2, already there 3" in dry.output, dry.output
    real = runner.invoke(app, ["import", "events", str(source), "--db", db])
    assert "stored 2, already there 3" in real.output, real.output
    assert status(db)["events_received"] == 4


def test_json_array_and_parquet_files(tmp_path: Path) -> None:
    array = tmp_path / "events.json"
    array.write_bytes(orjson.dumps(MESSAGES[:2]))
    table = pa.table({
        "type": ["track", "identify"], "userId": ["u2", "u2"], "event": ["Product Added", None],
        "timestamp": pa.array([1_600_000_000_000_000, 1_600_000_100_000_000], pa.timestamp("us")),
        "properties": [{"sku": "A-1"}, None], "traits": [None, {"plan": "pro"}],
    })
    parquet = tmp_path / "events.parquet"
    pq.write_table(table, parquet)
    db = str(tmp_path / "p.duckdb")
    assert runner.invoke(app, ["import", "events", str(array), "--db", db]).exit_code == 0
    result = runner.invoke(app, ["import", "events", str(parquet), "--db", db])
    assert "stored 2" in result.output, result.output
    service = Portrait(Settings(db_path=db), background=False)
    assert service.traits("user_id:u2") == {"plan": "pro"}
    added = service.events("user_id:u2", event="Product Added")["events"][0]
    assert added["properties"] == {"sku": "A-1"} and added["timestamp"] == "2020-09-13T12:26:40.000Z"
    service.close()


def test_a_parquet_file_whose_first_row_has_no_value_in_a_mapped_column_imports(tmp_path: Path) -> None:
    """An export of profiles imports back with --user-id user_id (docs/cli.md) even when its first profile is an
    anonymous one: the mapping was checked against the first row's values, which leave out nulls, so the file was
    refused with "the file has no column 'user_id'" while its schema has it. That row alone is rejected now."""
    parquet = tmp_path / "profiles.parquet"
    pq.write_table(pa.table({"profile_id": ["p1", "p2"], "user_id": [None, "u2"], "plan": ["free", "pro"]}), parquet)
    db = str(tmp_path / "p.duckdb")
    result = runner.invoke(app, ["import", "profiles", str(parquet), "--user-id", "user_id", "--db", db])
    assert result.exit_code == 0, result.output
    assert "stored 1" in result.output and "missing_identity: 1" in result.output, result.output
    service = Portrait(Settings(db_path=db), background=False)
    try:
        service.process_pending()
        assert service.traits("user_id:u2") == {"plan": "pro"}
    finally:
        service.close()
    missing = runner.invoke(app, ["import", "profiles", str(parquet), "--user-id", "customer", "--db", db])
    assert missing.exit_code == 1  # a column the file really lacks is named, with the file's columns
    assert "the file has no column 'customer'; it has plan, profile_id, user_id" in " ".join(missing.output.split())


@pytest.mark.parametrize(("name", "args", "message"), [
    ("events.xlsx", [], "cannot tell the format"),
    ("events.csv", [], "a CSV file holds rows, not messages"),
    ("events.ndjson", ["--user-id", "cust"], "say which event the rows are"),
    ("events.ndjson", ["--format", "xml"], "format 'xml' is not one of"),
    ("missing.ndjson", [], "there is no file"),
    ("lines.json", [], "it looks like JSON lines"),
])
def test_bad_files_get_clear_errors(tmp_path: Path, name: str, args: list[str], message: str) -> None:
    if name != "missing.ndjson":
        (tmp_path / name).write_text('{"cust": "1"}\n' * 2 if name.endswith("json") else "cust,x\n1,2\n")
    result = runner.invoke(app, ["import", "events", str(tmp_path / name), "--db", str(tmp_path / "p.duckdb"), *args])
    assert result.exit_code == 1
    assert message in result.output


@pytest.mark.parametrize("kind", ["events", "profiles"])
def test_a_mistyped_file_path_is_named_and_creates_no_database(tmp_path: Path, kind: str) -> None:
    """A first import with a typo in the file's name made a new database in the current folder, generated and
    printed its keys, and only then said `orders.cvs is not a readable file`: the file is checked first, and the
    message says what is missing where."""
    db = tmp_path / "portrait.duckdb"
    result = runner.invoke(app, ["import", kind, str(tmp_path / "orders.cvs"), "--user-id", "cust",
                                 "--db", str(db)])
    assert result.exit_code == 1, result.output
    assert f"error: there is no file orders.cvs in {tmp_path}" in " ".join(result.output.split())
    assert "Generated" not in result.output and not db.exists()
    folder = runner.invoke(app, ["import", kind, str(tmp_path), "--user-id", "cust", "--db", str(db)])
    assert folder.exit_code == 1, folder.output
    assert f"error: {tmp_path} is a folder, not a file" in " ".join(folder.output.split())
    assert not db.exists()


def test_csv_rows_become_events_and_profiles(tmp_path: Path) -> None:
    customers = tmp_path / "crm.csv"
    customers.write_text("id,mail,first_name,city\n007,Ann@Example.com,Ann,Gdansk\n008,bob@example.com,Bob,\n")
    orders = tmp_path / "orders.csv"
    orders.write_text("cust,day,total\n007,20190105,10.5\n007,20190107,4\n008,20190106,1\n")
    db = str(tmp_path / "p.duckdb")
    result = runner.invoke(app, ["import", "profiles", str(customers), "--user-id", "id", "--email", "mail",
                                 "--db", db])
    assert "stored 2" in result.output, result.output
    result = runner.invoke(app, ["import", "events", str(orders), "--event", "Order Completed", "--user-id", "cust",
                                 "--timestamp", "day", "--timestamp-format", "%Y%m%d", "--db", db])
    assert "stored 3" in result.output, result.output
    service = Portrait(Settings(db_path=db), background=False)
    profile = service.profile("email:ann@example.com")
    assert profile["traits"] == {"first_name": "Ann", "city": "Gdansk", "email": "Ann@Example.com"}
    assert {"type": "user_id", "value": "007"} in [{k: i[k] for k in ("type", "value")} for i in profile["identities"]]
    events = service.events("user_id:007", event="Order Completed")["events"]
    assert [(e["timestamp"][:10], e["properties"]) for e in events] == [
        ("2019-01-07", {"total": 4}), ("2019-01-05", {"total": 10.5})]
    service.close()


@pytest.mark.parametrize(("timestamp_format", "why"), [
    ("dd.mm.yyyy", "has no strptime directives"),
    ("%d.%m", "has no year"),
    ("%Y-%m-%d %H:%M %-d", "has %-, GNU's unpadded form"),
])
def test_a_time_format_that_cannot_read_the_times_is_refused_before_any_row(
        tmp_path: Path, timestamp_format: str, why: str) -> None:
    """A bad --timestamp-format rejected every row as invalid_timestamp, one by one, after reading the whole file;
    it is refused up front, as a declared type's format is, and nothing is stored."""
    orders = tmp_path / "orders.csv"
    orders.write_text("cust,day,total\n007,05.01.2019,10.5\n")
    db = str(tmp_path / "p.duckdb")
    result = runner.invoke(app, ["import", "events", str(orders), "--event", "Order Completed", "--user-id", "cust",
                                 "--timestamp", "day", "--timestamp-format", timestamp_format, "--db", db])
    assert result.exit_code != 0 and why in result.output, result.output
    assert f"column day: the format {timestamp_format!r}" in result.output
    service = Portrait(Settings(db_path=db), background=False)
    assert service.status()["events_received"] == 0 and service.status()["events_rejected"] == 0
    service.close()


def test_a_time_format_with_a_zone_name_is_still_taken_for_utc_times(tmp_path: Path) -> None:
    """%Z reads UTC and GMT (strptime reads no other name reliably; a declared column's format refuses it), and an
    event-time format took it before its format was checked: a file or a saved source using it goes on working."""
    orders = tmp_path / "orders.csv"
    orders.write_text("cust,at\n007,2019-01-05 10:11 UTC\n")
    db = str(tmp_path / "p.duckdb")
    result = runner.invoke(app, ["import", "events", str(orders), "--event", "Order Completed", "--user-id", "cust",
                                 "--timestamp", "at", "--timestamp-format", "%Y-%m-%d %H:%M %Z", "--db", db])
    assert result.exit_code == 0 and "stored 1" in result.output, result.output
    service = Portrait(Settings(db_path=db), background=False)
    assert service.events("user_id:007")["events"][0]["timestamp"] == "2019-01-05T10:11:00.000Z"
    service.close()


def test_a_zone_name_other_than_utc_or_gmt_is_not_read_as_utc(tmp_path: Path) -> None:
    """%Z: strptime also takes the names of this machine's own zone (EST and EDT where TZ is New York) and drops
    them, so 10:00 EST was stored as 10:00 UTC, five hours off, without a word. Only UTC and GMT are read; a row
    with another zone name is rejected. A real process, with its own TZ."""
    orders = tmp_path / "orders.csv"
    orders.write_text("cust,at\n001,2025-01-10 10:00:00 EST\n002,2025-01-10 10:00:00 UTC\n"
                      "003,2025-01-10 10:00:00 gmt\n")
    db = str(tmp_path / "p.duckdb")
    env = {**os.environ, "TZ": "America/New_York", "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    done = subprocess.run([sys.executable, "-m", "portrait", "import", "events", str(orders), "--event", "Bought",
                           "--user-id", "cust", "--timestamp", "at", "--timestamp-format", "%Y-%m-%d %H:%M:%S %Z",
                           "--db", db], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "stored 2" in done.stdout + done.stderr, done.stdout + done.stderr
    assert "invalid_timestamp: 1" in done.stdout + done.stderr, done.stdout + done.stderr
    service = Portrait(Settings(db_path=db), background=False)
    with pytest.raises(NotFound):  # its only row was rejected
        service.events("user_id:001")
    for cust in ("002", "003"):
        assert service.events(f"user_id:{cust}")["events"][0]["timestamp"] == "2025-01-10T10:00:00.000Z"
    service.close()


def test_a_time_that_does_not_fit_the_format_is_rejected_naming_the_format(tmp_path: Path) -> None:
    """A time the --timestamp-format does not read was passed on as text and rejected as "not an ISO-8601
    date-time", though no ISO time had been asked for; the reason names the format, with an example. An empty cell
    is still a row without a time."""
    orders = tmp_path / "orders.csv"
    orders.write_text("cust,day\n007,05.01.2019\n008,2019-01-06\n009,\n")
    db, rejects = str(tmp_path / "p.duckdb"), tmp_path / "rejects.ndjson"
    result = runner.invoke(app, ["import", "events", str(orders), "--event", "X", "--user-id", "cust", "--timestamp",
                                 "day", "--timestamp-format", "%d.%m.%Y", "--rejects", str(rejects), "--db", db])
    assert "stored 2" in result.output and "invalid_timestamp: 1" in result.output, result.output
    [rejected] = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert rejected["row"] == 2 and rejected["reason"] == (
        "column day: '2019-01-06' is not a time in the format %d.%m.%Y (like 24.12.2025)"), rejected
    assert "ISO-8601" not in rejected["reason"] and '"008"' in rejected["message"]


def test_a_column_of_iso_times_is_read_by_the_format_too(tmp_path: Path) -> None:
    """A CSV column whose times are all ISO was read as times by Arrow and taken past the --timestamp-format, where
    one ISO time among times in the format was rejected: the same row stored or not by its neighbours. The column is
    read as text now, by the format; a time the format reads keeps the message id it had."""
    orders = tmp_path / "orders.csv"
    orders.write_text("cust,day\n007,2019-01-06\n008,2019-01-07\n")
    db = str(tmp_path / "p.duckdb")
    result = runner.invoke(app, ["import", "events", str(orders), "--event", "X", "--user-id", "cust", "--timestamp",
                                 "day", "--timestamp-format", "%d.%m.%Y", "--db", db])
    assert "stored 0" in result.output and "invalid_timestamp: 2" in result.output, result.output
    timed = tmp_path / "timed.csv"
    timed.write_text("cust,at,born\n007,2019-01-05 10:00:00,1990-01-02\n008,2019-01-06 11:30:00.5,\n")
    mapping = RowMapping("events", user_id="cust", event="X", timestamp="at", timestamp_format="%Y-%m-%d %H:%M:%S")
    first, second = [m for chunk in read_messages(timed, "csv", mapping) for m in chunk]
    assert (first["messageId"], first["timestamp"]) == ("import-1b0b2221e58a0a4320f78a3eb6b580a9737fd0f1-0",
                                                        "2019-01-05T10:00:00+00:00")  # as before
    assert isinstance(second, Unreadable) and second.code == "invalid_timestamp"


def test_a_time_format_needs_the_time_column(tmp_path: Path) -> None:
    orders = tmp_path / "orders.csv"
    orders.write_text("cust,day\n007,20190105\n")
    result = runner.invoke(app, ["import", "events", str(orders), "--event", "X", "--user-id", "cust",
                                 "--timestamp-format", "%Y%m%d", "--db", str(tmp_path / "p.duckdb")])
    assert result.exit_code != 0 and "name it too (--timestamp COLUMN)" in result.output, result.output


def test_cdnow_purchases_match_a_pandas_computation(tmp_path: Path) -> None:
    """Real data: the CDNOW log shipped by `lifetimes` (69,659 purchases by 23,570 customers, 1997-1998)."""
    import importlib.util

    import pandas as pd

    spec = importlib.util.find_spec("lifetimes")
    assert spec is not None and spec.origin is not None
    raw = Path(spec.origin).parent / "datasets" / "CDNOW_master.txt"
    frame = pd.read_csv(raw, sep=r"\s+", dtype={"customer_id": str, "date": str})
    assert frame.shape == (69_659, 4) and frame["customer_id"].nunique() == 23_570
    source = tmp_path / "cdnow.csv"
    frame.to_csv(source, index=False)
    db = str(tmp_path / "cdnow.duckdb")
    result = runner.invoke(app, ["import", "events", str(source), "--event", "Order Completed", "--user-id",
                                 "customer_id", "--timestamp", "date", "--timestamp-format", "%Y%m%d", "--db", db])
    assert result.exit_code == 0 and "stored 69,659" in result.output, result.output
    expected = frame.groupby("customer_id").agg(orders=("dollar_value", "size"), revenue=("dollar_value", "sum"),
                                                first=("date", "min"))
    service = Portrait(Settings(db_path=db), background=False)
    assert service.status()["profiles"] == 23_570
    for customer in expected.sample(n=300, random_state=7).index:
        events = service.events(f"user_id:{customer}", event="Order Completed", limit=1000)["events"]
        row = expected.loc[customer]
        assert len(events) == row["orders"], customer
        assert sum(e["properties"]["dollar_value"] for e in events) == pytest.approx(row["revenue"]), customer
        assert events[-1]["timestamp"][:10].replace("-", "") == row["first"], customer
    service.close()


def test_a_mapping_file_describes_the_columns(tmp_path: Path) -> None:
    orders = tmp_path / "orders.csv"
    orders.write_text("cust,card,day,amount\n007,L-1,20190105,10.5\n008,L-2,20190106,4\n")
    mapping = tmp_path / "orders.yaml"
    mapping.write_text("# POS export\nidentifiers: {user_id: cust, loyalty_card: card}\nevent: Order Completed\n"
                       "timestamp: day\ntimestamp_format: '%Y%m%d'\nproperties: {amount: revenue}\n")
    db = str(tmp_path / "p.duckdb")
    result = runner.invoke(app, ["import", "events", str(orders), "--mapping", str(mapping), "--db", db])
    assert "stored 2" in result.output, result.output
    service = Portrait(Settings(db_path=db), background=False)
    events = service.events("loyalty_card:L-1")["events"]
    assert [(e["event"], e["timestamp"][:10], e["properties"]) for e in events] == [
        ("Order Completed", "2019-01-05", {"revenue": 10.5})]
    service.close()
    mapping.write_text("identifiers: {user_id: cust}\nevents: Order Completed\n")
    result = runner.invoke(app, ["import", "events", str(orders), "--mapping", str(mapping), "--db", db])
    assert result.exit_code == 1 and "unknown mapping settings events" in result.output


def test_rows_identified_by_email_alone_are_imported(tmp_path: Path) -> None:
    """A CRM export often has no user id: email (or phone) names the person, unlike a Segment HTTP message."""
    customers = tmp_path / "newsletter.csv"
    customers.write_text("mail,plan\nann@example.com,pro\n,free\n")
    db = str(tmp_path / "p.duckdb")
    result = runner.invoke(app, ["import", "profiles", str(customers), "--email", "mail", "--db", db])
    assert "stored 1" in result.output and "rejected 1" in result.output, result.output
    rejects = (tmp_path / "newsletter.csv.rejects.ndjson").read_text()
    assert "the row has no identifier" in rejects
    service = Portrait(Settings(db_path=db), background=False)
    assert service.traits("email:ann@example.com") == {"plan": "pro", "email": "ann@example.com"}
    service.close()


@pytest.mark.parametrize(("name", "text"), [
    ("rows.ndjson", '{"cust": "1", "x": 2}\n{not json\n{"cust": "2"}\n'),
    ("rows.json", '[{"cust": "1", "x": 2}, 5, {"cust": "2"}]'),
    ("first.ndjson", '{not json\n{"cust": "1", "x": 2}\n{"cust": "2"}\n'),
])
def test_rows_that_are_not_objects_are_rejected_not_fatal(tmp_path: Path, name: str, text: str) -> None:
    source = tmp_path / name
    source.write_text(text)
    db = str(tmp_path / "p.duckdb")
    result = runner.invoke(app, ["import", "events", str(source), "--user-id", "cust", "--event", "X", "--db", db])
    assert result.exit_code == 0, result.output
    assert "3 rows read" in result.output and "stored 2" in result.output and "rejected 1" in result.output
    rejected = json.loads((tmp_path / f"{name}.rejects.ndjson").read_text())
    assert rejected["code"] == "invalid_message"
    assert status(db)["events_received"] == 2


def test_a_csv_row_with_too_few_or_too_many_fields_is_rejected_with_its_text(tmp_path: Path) -> None:
    result, db = import_crm(tmp_path, "id,name,age\n1,Ann,30\n2,Bob\n3,Cid,50,extra\n4,Dan,60\n")
    assert result.exit_code == 0, result.output
    assert "4 rows read" in result.output and "stored 2" in result.output and "rejected invalid_row: 2" in result.output
    rejects = [json.loads(line) for line in (tmp_path / "crm.csv.rejects.ndjson").read_text().splitlines()]
    assert [(r["code"], json.loads(r["message"])) for r in rejects] == [("invalid_row", "2,Bob"),
                                                                          ("invalid_row", "3,Cid,50,extra")]
    assert "the row has 2 fields where the header has 3" in rejects[0]["reason"]
    service = Portrait(Settings(db_path=db), background=False)
    assert service.traits("user_id:4") == {"name": "Dan", "age": 60}
    assert [r["payload"] for r in service.rejected()["rejected"]] == ['"3,Cid,50,extra"', '"2,Bob"']
    service.close()


@pytest.mark.parametrize("text", ["id;name\n", "id;name;score\n1;Ann;1,5\n2;Bob;2,5\n"],
                         ids=["header-only", "every-row-misshapen"])
def test_csv_columns_are_checked_against_the_header(tmp_path: Path, text: str) -> None:
    result, _ = import_crm(tmp_path, text)
    assert result.exit_code == 1
    assert "the file has no column 'id'" in result.output


def test_quoted_line_breaks_in_csv_values_survive_block_boundaries(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("portrait.files._BLOCK_BYTES", 256)  # as a file of many 4 MB blocks does
    notes = "".join(f'{i},"first line {i}\nsecond, line"\n' for i in range(200))
    result, db = import_crm(tmp_path, "id,note\n" + notes)
    assert "200 rows read" in result.output and "stored 200" in result.output, result.output
    service = Portrait(Settings(db_path=db), background=False)
    assert service.traits("user_id:199") == {"note": "first line 199\nsecond, line"}
    service.close()


def test_a_csv_header_naming_a_column_twice_is_refused_before_anything_is_stored(tmp_path: Path) -> None:
    result, db = import_crm(tmp_path, "id,name,name\n1,Ann,Anna\n")
    assert result.exit_code == 1
    assert "crm.csv has more than one column named 'name'" in result.output
    assert status(db)["events_received"] == 0


@pytest.mark.parametrize(("name", "args"), [("crm.tsv", []), ("crm.txt", ["--delimiter", "\\t"]),
                                            ("crm.csv", ["--delimiter", "tab"])])
def test_tab_separated_files(tmp_path: Path, name: str, args: list[str]) -> None:
    result, db = import_crm(tmp_path, "id\tname\n1\tAnn\n", *args, name=name)
    assert "stored 1" in result.output, result.output
    service = Portrait(Settings(db_path=db), background=False)
    assert service.traits("user_id:1") == {"name": "Ann"}
    service.close()


def test_a_delimiter_of_more_than_one_character_is_a_clear_error(tmp_path: Path) -> None:
    result, _ = import_crm(tmp_path, "id;;name\n1;;Ann\n", "--delimiter", ";;")
    assert result.exit_code == 1
    assert "the delimiter must be one character" in result.output


@pytest.mark.parametrize("rows", [1, 300], ids=["in-the-first-block", "later"])
def test_a_csv_file_that_is_not_utf8_gets_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        rows: int) -> None:
    monkeypatch.setattr("portrait.files._BLOCK_BYTES", 1024)
    result, _ = import_crm(tmp_path, b"id,name\n" + b"".join(b"%d,Ann\n" % i for i in range(rows))
                           + "x,José\n".encode("latin-1"))
    assert result.exit_code == 1, result.output
    assert "must be UTF-8 text" in " ".join(result.output.split())


def test_parquet_decimals_durations_and_bytes_are_imported_as_json_values(tmp_path: Path) -> None:
    from datetime import timedelta
    from decimal import Decimal
    rows = tmp_path / "orders.parquet"
    pq.write_table(pa.table({
        "cust": ["c1", "c2"],
        "total": pa.array([Decimal("12.50"), None], pa.decimal128(10, 2)),
        "units": pa.array([Decimal("3"), Decimal("4")], pa.decimal128(10, 0)),
        "wait": pa.array([timedelta(seconds=90), None]),
        "token": pa.array([b"\x00\x01", None]),
        "lines": pa.array([[{"price": Decimal("1.25")}], []],
                          pa.list_(pa.struct([("price", pa.decimal128(6, 2))]))),
    }), rows)
    messages = tmp_path / "messages.parquet"
    pq.write_table(pa.table({"type": ["track"], "userId": ["c3"], "event": ["Order Completed"],
                             "properties": pa.array([{"revenue": Decimal("9.99")}],
                                                    pa.struct([("revenue", pa.decimal128(6, 2))]))}), messages)
    db = str(tmp_path / "p.duckdb")
    result = runner.invoke(app, ["import", "events", str(rows), "--user-id", "cust", "--event", "Order Completed",
                                 "--db", db])
    assert "stored 2" in result.output, result.output
    assert "stored 1" in runner.invoke(app, ["import", "events", str(messages), "--db", db]).output
    service = Portrait(Settings(db_path=db), background=False)
    first = service.events("user_id:c1")["events"][0]["properties"]
    assert first == {"total": 12.5, "units": 3, "wait": 90.0, "token": "AAE=", "lines": [{"price": 1.25}]}
    assert service.events("user_id:c3")["events"][0]["properties"] == {"revenue": 9.99}
    service.close()


def test_csv_trait_columns_that_identify_the_person_keep_leading_zeros(tmp_path: Path) -> None:
    result, db = import_crm(tmp_path, "id,crm_id,card,phone\n1,000123,0042,0048512345678\n")
    assert "stored 1" in result.output, result.output
    service = Portrait(Settings(db_path=db), background=False)
    assert service.traits("user_id:1") == {"crm_id": "000123", "card": "0042", "phone": "0048512345678"}
    assert service.profile("crm_id:000123")["profile_id"] == service.profile("user_id:1")["profile_id"]
    service.close()


def test_csv_numbers_that_a_number_would_change_stay_as_written(tmp_path: Path) -> None:
    result, db = import_crm(tmp_path, "id,zip,mobile,order_ref,visits,score\n"
                                      "1,01234,+48601234567,12345678901234567890,3,1.5\n"
                                      "2,90210,+15550100,7,12,2\n")
    assert "stored 2" in result.output, result.output
    service = Portrait(Settings(db_path=db), background=False)
    assert service.traits("user_id:1") == {"zip": "01234", "mobile": "+48601234567",
                                           "order_ref": "12345678901234567890", "visits": 3, "score": 1.5}
    assert service.traits("user_id:2")["zip"] == "90210" and service.traits("user_id:2")["visits"] == 12
    service.close()


@pytest.mark.parametrize("filename", ["..", "../../crm.csv", "."])
def test_an_upload_named_like_a_folder_is_imported_not_a_server_error(portrait: Portrait, filename: str) -> None:
    from fastapi.testclient import TestClient
    from tests.conftest import ADMIN_KEY

    from portrait.api import create_app

    with TestClient(create_app(portrait=portrait)) as client:
        answer = client.post("/api/imports", content=b"id,name\n1,Ann\n",
                             params={"filename": filename, "format": "csv", "kind": "profiles", "user_id": "id"},
                             headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["stored"] == 1


def test_a_csv_column_whose_values_change_shape_after_the_first_block_does_not_stop_the_import(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("portrait.files._BLOCK_BYTES", 1024)  # as a file of many 4 MB blocks does
    source = tmp_path / "visits.csv"
    source.write_text("cust,day,score,zip\n" + "".join(f"c{i},2024-01-{i % 28 + 1:02d},{i},{i:05d}\n"
                                                        for i in range(300))
                      + "x1,05/01/2024,1.5,ABC12\nx2,2024-02-01T10:00:00+02:00,n/a,\n")
    db = str(tmp_path / "p.duckdb")
    result = runner.invoke(app, ["import", "events", str(source), "--user-id", "cust", "--event", "Visit",
                                 "--timestamp", "day", "--db", db])
    assert result.exit_code == 0, result.output
    assert "302 rows read" in result.output and "stored 301" in result.output, result.output
    assert "rejected invalid_timestamp: 1" in result.output  # 05/01/2024: that row alone
    service = Portrait(Settings(db_path=db), background=False)
    first = service.events("user_id:c7")["events"][0]
    assert first["timestamp"] == "2024-01-08T00:00:00.000Z" and first["properties"] == {"score": "7", "zip": "00007"}
    assert service.events("user_id:x2")["events"][0]["timestamp"] == "2024-02-01T08:00:00.000Z"
    service.close()


def test_a_parquet_struct_field_a_message_did_not_name_does_not_remove_the_trait(tmp_path: Path) -> None:
    messages = [{"type": "identify", "userId": "u1", "traits": {"name": "Ann", "plan": "pro"},
                 "context": {"page": {"path": "/a", "title": "A"}, "tags": [{"k": "x", "v": 1}]},
                 "timestamp": "2024-01-01T00:00:00Z"},
                {"type": "identify", "userId": "u1", "traits": {"email": "ann@example.com"},
                 "context": {"traits": {"plan": "pro"}, "page": {"path": "/b"}, "tags": [{"k": "y"}]},
                 "timestamp": "2024-01-02T00:00:00Z"}]
    source = tmp_path / "messages.parquet"
    pq.write_table(pa.Table.from_pylist(messages), source)  # the second row reads traits.name = traits.plan = null
    db = str(tmp_path / "p.duckdb")
    assert "stored 2" in runner.invoke(app, ["import", "events", str(source), "--db", db]).output
    service = Portrait(Settings(db_path=db), background=False)
    assert service.traits("user_id:u1") == {"name": "Ann", "plan": "pro", "email": "ann@example.com"}
    newest = service.events("user_id:u1")["events"][0]
    assert newest["traits"] == {"email": "ann@example.com", "plan": "pro"}  # with context.traits; no name: null
    assert {k: newest["context"][k] for k in ("traits", "page", "tags")} == {  # nested objects too, in lists too
        "traits": {"plan": "pro"}, "page": {"path": "/b"}, "tags": [{"k": "y"}]}
    service.close()



def test_csv_times_are_written_as_the_api_writes_them_and_keep_their_message_ids(tmp_path: Path) -> None:
    """Arrow reads a CSV's ISO times as timestamps, which the import wrote with isoformat():
    2024-01-05T10:11:12.345000+00:00, where the API and everything else write 2024-01-05T10:11:12.345Z. Now the API's
    form (UTC, Z; a time without a zone is UTC; microseconds kept when there are some). The message ids are those the
    import derived before (seen in a run of the code before this rule), so importing such a file again adds nothing."""
    rows = tmp_path / "crm.csv"
    rows.write_text("id,signed_up,last_login,born,plan\n"
                    "u1,2024-01-05T10:11:12.345Z,2024-01-05 10:11:12,1990-01-02,pro\n"
                    "u2,2024-01-06T08:00:00Z,2024-02-01 00:00:00.123456,1991-03-04,free\n"
                    "u3,2024-01-07T09:30:00+02:00,,1992-05-06,pro\n")
    db = str(tmp_path / "p.duckdb")
    args = ["import", "profiles", str(rows), "--user-id", "id", "--db", db]
    assert runner.invoke(app, args).exit_code == 0
    assert "stored 0" in runner.invoke(app, args).output
    service = Portrait(Settings(db_path=db), background=False)
    service.process_pending()
    assert [{k: v for k, v in service.traits(f"user_id:{u}").items() if k != "plan"} for u in ("u1", "u2", "u3")] == [
        {"signed_up": "2024-01-05T10:11:12.345Z", "last_login": "2024-01-05T10:11:12.000Z", "born": "1990-01-02"},
        {"signed_up": "2024-01-06T08:00:00.000Z", "last_login": "2024-02-01T00:00:00.123456Z", "born": "1991-03-04"},
        {"signed_up": "2024-01-07T07:30:00.000Z", "born": "1992-05-06"}]
    assert [service.events(f"user_id:{u}")["events"][0]["message_id"] for u in ("u1", "u2", "u3")] == [
        "import-ed959df746c50c6d1c3e8243db7ac39333379f0a-0", "import-4e21585324ee28fe977d2782ccf3d02c8b69e698-0",
        "import-279f6cd1d40e82ffa2d95e1a2bfff73fb6ebd58c-0"]
    service.close()

def test_whole_number_float_ids_in_files_read_as_integers_and_keep_their_message_ids(tmp_path: Path) -> None:
    """pandas writes an integer column with a missing value as floats, and JSON does not tell 21.0 from 21: such an
    id made the customer "1.0" here and "1" from every other source, two profiles. A whole float now reads as its
    integer; a fraction stays as written. The message ids are those the import derived before (seen in a run of the
    code before this rule), so importing these files again adds nothing."""
    rows = tmp_path / "crm.parquet"
    pq.write_table(pa.table({"cust": pa.array([1.0, 2.0, None, 3.5]), "plan": ["a", "b", "c", "d"]}), rows)
    messages = tmp_path / "identifies.ndjson"
    write_ndjson(messages, [{"type": "identify", "userId": 21.0, "traits": {"plan": "n", "loyalty_card": 555.0}},
                            {"type": "identify", "userId": 22, "traits": {"plan": "n"}}])
    db = str(tmp_path / "p.duckdb")
    for args in (["profiles", str(rows), "--user-id", "cust"], ["events", str(messages)]):
        assert runner.invoke(app, ["import", *args, "--db", db]).exit_code == 0
        assert "stored 0" in runner.invoke(app, ["import", *args, "--db", db]).output
    service = Portrait(Settings(db_path=db), background=False)
    assert [service.traits(f"user_id:{i}")["plan"] for i in ("1", "2", "3.5", "21", "22")] == list("abdnn")
    assert service.profile("loyalty_card:555")["profile_id"] == service.profile("user_id:21")["profile_id"]
    assert [service.events(f"user_id:{i}")["events"][0]["message_id"] for i in ("1", "2", "3.5", "21")] == [
        "import-cfb2ac284c88a09bc9af5a6567397fc7f3c3ad31-0", "import-581a662d0dd9660389331a1284caa625bfa688ad-0",
        "import-6888386efad0d2d71e9137859a43a85ca01b8ca3-0", "import-b409b4446bedf07d45ff605010d678b455aaf90d-0"]
    service.close()


def test_parquet_times_are_written_as_the_api_writes_them_and_keep_their_message_ids(tmp_path: Path) -> None:
    """Top-level Parquet times were written with isoformat(), a Z added only without a zone: a timestamp with a zone
    kept it (2024-01-05T11:11:12.345000+01:00), one without came as 2024-01-05T10:11:12Z, a date as 1990-01-02Z, and
    times inside a struct as orjson writes them (2024-01-05T10:11:12). Now all as the API writes times (as CSV
    imports do). The message ids are those the code before derived (seen in a run of it), so importing such files
    again adds nothing."""
    warsaw = pa.timestamp("us", tz="Europe/Warsaw")
    crm = tmp_path / "crm.parquet"
    pq.write_table(pa.table({
        "id": ["u1", "u2"],
        "signed_up": pa.array([datetime(2024, 1, 5, 10, 11, 12, 345000, UTC), datetime(2024, 1, 6, 8, tzinfo=UTC)],
                              warsaw),
        "last_login": pa.array([datetime(2024, 1, 5, 10, 11, 12), datetime(2024, 2, 1, 0, 0, 0, 123456)],
                               pa.timestamp("us")),
        "born": pa.array([date(1990, 1, 2), date(1991, 3, 4)], pa.date32()),
        "visit": pa.array([{"at": datetime(2024, 3, 1, 9)}, {"at": None}], pa.struct([("at", pa.timestamp("ms"))])),
    }), crm)
    messages = tmp_path / "messages.parquet"
    pq.write_table(pa.table({
        "type": ["track"], "event": ["Order Completed"], "userId": ["u1"],
        "timestamp": pa.array([datetime(2024, 1, 7, 9, 30)], pa.timestamp("us")),
        "properties": pa.array([{"shipped": datetime(2024, 1, 8, 7, 30, tzinfo=UTC)}],
                               pa.struct([("shipped", pa.timestamp("ms", tz="UTC"))]))}), messages)
    db = str(tmp_path / "p.duckdb")
    imports = [["import", "profiles", str(crm), "--user-id", "id", "--db", db],
               ["import", "events", str(messages), "--db", db]]
    for args in imports:
        assert runner.invoke(app, args).exit_code == 0
        assert "stored 0" in runner.invoke(app, args).output
    service = Portrait(Settings(db_path=db), background=False)
    service.process_pending()
    assert [service.traits(f"user_id:{u}") for u in ("u1", "u2")] == [
        {"signed_up": "2024-01-05T10:11:12.345Z", "last_login": "2024-01-05T10:11:12.000Z", "born": "1990-01-02",
         "visit_at": "2024-03-01T09:00:00.000Z"},
        {"signed_up": "2024-01-06T08:00:00.000Z", "last_login": "2024-02-01T00:00:00.123456Z", "born": "1991-03-04"}]
    events = service.events("user_id:u1")["events"]
    assert [(e["type"], e["properties"]) for e in events] == [  # the identify has no time: received now, later
        ("identify", {}), ("track", {"shipped": "2024-01-08T07:30:00.000Z"})]
    assert events[1]["timestamp"] == "2024-01-07T09:30:00.000Z"
    assert [e["message_id"] for u in ("u1", "u2") for e in service.events(f"user_id:{u}")["events"]] == [
        "import-5a8e98dc5afa60cdea0bd249b96fa865e6df3c80-0", "import-8b26e411f1719cb5257879b5e78ffbff5a596b5e-0",
        "import-8c5506980fe59f2f61b2a144fed4ed6794525e70-0"]
    service.close()


def test_an_import_tells_its_progress_chunk_by_chunk_with_the_rows_in_the_file(portrait: Portrait,
                                                                               tmp_path: Path) -> None:
    """The progress bars (the CLI's, the console's, a server's import job) need the rows in the file where its
    format tells -- CSV (counted while its column types are settled), Parquet, a JSON array -- and the bytes read
    where it does not (NDJSON): after each chunk of 10,000 rows, at known points."""
    rows = [{"cust": f"c{n}", "total": n} for n in range(25_000)]
    csv = tmp_path / "orders.csv"
    csv.write_text("cust,total\n" + "".join(f"c{n},{n}\n" for n in range(25_000)))
    parquet = tmp_path / "orders.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    array = tmp_path / "orders.json"
    array.write_text(json.dumps(rows))
    mapping = RowMapping(kind="events", user_id="cust", event="Order")
    seen: dict[str, list[tuple[int, int | None]]] = {}
    for path in (csv, parquet, array):
        told = seen.setdefault(path.name, [])
        portrait.import_file(path, mapping=mapping, dry_run=True, on_progress=lambda read, told=told: told.append(
            (read.rows, read.rows_total)))
    chunks = [(10_000, 25_000), (20_000, 25_000), (25_000, 25_000)]
    assert seen == {csv.name: chunks, parquet.name: chunks, array.name: chunks}
    ndjson = write_ndjson(tmp_path / "orders.ndjson", [{"type": "track", "userId": f"c{n}", "event": "Order"}
                                                      for n in range(25_000)])
    read: list[tuple[int, int | None, int | None, int]] = []
    portrait.import_file(ndjson, dry_run=True, on_progress=lambda p: read.append(
        (p.rows, p.rows_total, p.bytes_read, p.bytes_total)))
    size = ndjson.stat().st_size
    assert [r[:2] for r in read] == [(10_000, None), (20_000, None), (25_000, None)]
    assert [r[3] for r in read] == [size] * 3
    assert 0 < read[0][2] < read[1][2] < read[2][2] == size  # type: ignore[operator]


def test_an_import_asked_to_stop_ends_after_its_chunk_and_keeps_what_it_stored(portrait: Portrait,
                                                                                tmp_path: Path) -> None:
    from portrait.errors import Interrupted

    source = write_ndjson(tmp_path / "many.ndjson", [{"type": "track", "userId": f"s{n}", "event": "Seen",
                                                      "messageId": f"s{n}"} for n in range(25_000)])
    with pytest.raises(Interrupted, match="stopped after 10,000 rows"):
        portrait.import_file(source, stop=lambda: True)
    assert portrait.import_file(source).as_dict()["duplicates"] == 10_000
