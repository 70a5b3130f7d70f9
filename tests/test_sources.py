"""SQL sources against a real PostgreSQL server (and SQLite): incremental syncs, resuming, schedules, secrets."""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
import time
import tracemalloc
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import duckdb
import httpx
import pytest
from fastapi.testclient import TestClient
from tests.conftest import ADMIN_KEY, WRITE_KEY, start_server
from tests.postgres import PostgresServer
from typer.testing import CliRunner

from portrait.api import create_app
from portrait.cli import app
from portrait.config import Settings
from portrait.connectors import connect, plain, redact, scrub
from portrait.errors import BadRequest, Conflict, NotFound, SourceUnavailable
from portrait.mapping import RowMapping
from portrait.service import Portrait
from portrait.sources import Source, format_every, parse_every, read_chunks
from portrait.sql.sources import incremental

runner = CliRunner()
READER = "crm_reader"
READER_PASSWORD = "Tr1cky p@ss:w/rd%"  # needs URL quoting, and must never be printed
_numbers = itertools.count()
CUSTOMERS = """
CREATE TABLE customers (
    id integer PRIMARY KEY, email text, first_name text, plan text, credit numeric(10, 2), updated_at timestamptz
);
INSERT INTO customers VALUES
    (1, 'ann@example.com', 'Ann', 'free', 10.50, '2026-01-01 10:00+00'),
    (2, 'bob@example.com', 'Bob', 'pro', 0, '2026-01-02 10:00+00'),
    (3, 'cid@example.com', 'Cid', 'free', NULL, '2026-01-02 10:00+00');
"""


@pytest.fixture
def shop(postgres: PostgresServer) -> Iterator[str]:
    """A fresh database readable by a password-protected role; yields the role's URL."""
    name = f"shop_{next(_numbers)}"
    with postgres.connect() as admin:
        if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [READER]).fetchone():
            admin.execute(f"CREATE ROLE {READER} LOGIN PASSWORD '{READER_PASSWORD}'")
        admin.execute(f"CREATE DATABASE {name}")
    with postgres.connect(name) as db:
        db.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {READER}")
    yield postgres.url(READER, READER_PASSWORD, name)


def run_sql(postgres: PostgresServer, url: str, statements: str) -> None:
    with postgres.connect(url.rsplit("/", 1)[1]) as db:
        db.execute(statements.encode())


def customers_source(source_url: str, **changes: Any) -> dict[str, Any]:
    return {"name": "crm", "kind": "profiles", "url": source_url, "cursor": "updated_at",
            "query": "SELECT id, email, first_name, plan, credit, updated_at FROM customers",
            "mapping": {"identifiers": {"user_id": "id", "email": "email"}, "timestamp": "updated_at",
                        "traits": ["first_name", "plan", "credit"]}, **changes}


def test_a_profiles_source_syncs_only_what_changed(postgres: PostgresServer, shop: str,
                                                   portrait: Portrait) -> None:
    run_sql(postgres, shop, CUSTOMERS)
    added = portrait.add_source(customers_source(shop))
    assert added["url"] == redact(shop) and READER_PASSWORD not in json.dumps(added)
    first = portrait.sync_source("crm")
    assert (first.rows, first.stored, first.duplicates) == (3, 3, 0)
    portrait.process_pending()
    assert portrait.traits("email:ann@example.com") == {
        "first_name": "Ann", "plan": "free", "credit": 10.5, "email": "ann@example.com"}
    assert portrait.traits("user_id:3") == {"first_name": "Cid", "plan": "free", "email": "cid@example.com"}

    again = portrait.sync_source("crm")  # nothing new: only the rows at the saved cursor are read again
    assert (again.rows, again.stored, again.duplicates) == (2, 0, 2)

    run_sql(postgres, shop, "UPDATE customers SET plan = 'pro', updated_at = '2026-02-01 09:00+00' WHERE id = 1; "
                            "INSERT INTO customers VALUES (4, 'dee@example.com', 'Dee', 'pro', 1, "
                            "'2026-02-02 09:00+00')")
    changed = portrait.sync_source("crm")
    assert (changed.stored, changed.duplicates) == (2, 2)
    portrait.process_pending()
    assert portrait.traits("user_id:1")["plan"] == "pro"
    assert portrait.traits("email:dee@example.com")["first_name"] == "Dee"
    state = portrait.sources.state("crm")
    assert state["status"] == "ok" and state["total_rows"] == 3 + 2 + 4 and state["last_rows"] == 4
    assert datetime.fromisoformat(state["cursor_value"]) == datetime.fromisoformat("2026-02-02T09:00:00+00:00")
    events = portrait.events("user_id:1")["events"]
    assert {e["source"] for e in events} == {"source:crm"}
    assert [e["timestamp"][:10] for e in events] == ["2026-02-01", "2026-01-01"]  # the rows' own times


def test_a_failed_sync_resumes_without_gaps_or_duplicates(postgres: PostgresServer, shop: str,
                                                          tmp_path: Path) -> None:
    # Row 5 makes the query fail part-way (division by zero) after two chunks of two rows were committed.
    run_sql(postgres, shop, """
        CREATE TABLE orders (id integer PRIMARY KEY, customer text NOT NULL, total numeric(10, 2), divisor integer);
        INSERT INTO orders SELECT i, 'c' || (i % 3), i * 1.25, CASE WHEN i = 5 THEN 0 ELSE 1 END
        FROM generate_series(1, 9) AS i;
    """)
    # Sorting disabled makes PostgreSQL walk the primary key and compute rows as they are fetched, as it does on
    # large tables; otherwise this small table would be sorted (and fail) before the first chunk.
    url = shop + "?options=-c%20enable_sort%3Doff"
    settings = Settings(db_path=str(tmp_path / "p.duckdb"), source_chunk_rows=2)
    service = Portrait(settings, background=False)
    try:
        service.add_source({"name": "pos", "kind": "events", "url": url, "cursor": "id",
                            "query": "SELECT id, customer, total, 100 / divisor AS share FROM orders",
                            "mapping": {"identifiers": {"user_id": "customer"}, "event": "Order Completed"}})
        with pytest.raises(SourceUnavailable, match="division by zero"):
            service.sync_source("pos")
        failed = service.sources.state("pos")
        assert (failed["status"], failed["cursor_value"], failed["total_rows"]) == ("failed", 4, 4)
        assert "division by zero" in failed["last_error"]
        run_sql(postgres, shop, "UPDATE orders SET divisor = 1 WHERE id = 5")
        resumed = service.sync_source("pos")
        assert (resumed.rows, resumed.stored, resumed.duplicates, resumed.cursor) == (6, 5, 1, 9)
        service.process_pending()
        orders = [e["properties"]["id"] for who in ("c0", "c1", "c2")
                  for e in service.events(f"user_id:{who}")["events"]]
        assert sorted(orders) == list(range(1, 10))  # every order exactly once
        assert service.status()["events_received"] == 9
    finally:
        service.close()


def test_cli_adds_lists_and_syncs_a_source_without_printing_the_password(postgres: PostgresServer, shop: str,
                                                                        tmp_path: Path) -> None:
    run_sql(postgres, shop, """
        CREATE TABLE orders (order_no bigserial PRIMARY KEY, customer_email text, amount numeric(10, 2),
                             ordered_at timestamp, channel text);
        INSERT INTO orders (customer_email, amount, ordered_at, channel) VALUES
            ('ann@example.com', 30.00, '2025-12-24 18:30', 'web'),
            ('ann@example.com', 12.50, '2025-12-26 09:00', 'store');
    """)
    mapping = tmp_path / "orders.yaml"
    mapping.write_text("identifiers: {email: customer_email}\nevent: Order Completed\ntimestamp: ordered_at\n"
                       "properties: {amount: revenue, channel: channel, order_no: order_no}\n")
    db = str(tmp_path / "p.duckdb")
    added = runner.invoke(app, ["sources", "add", "orders", "--url", shop, "--kind", "events", "--cursor",
                                "order_no", "--query", "SELECT * FROM orders", "--mapping", str(mapping),
                                "--every", "15m", "--db", db])
    assert added.exit_code == 0, added.output
    assert "every 15m" in added.output and READER_PASSWORD not in added.output
    synced = runner.invoke(app, ["sources", "sync", "orders", "--db", db])
    assert synced.exit_code == 0, synced.output
    assert "2 rows read" in synced.output and "stored 2" in synced.output and "cursor now 2" in synced.output
    listed = runner.invoke(app, ["sources", "list", "--db", db, "--json"])
    assert listed.exit_code == 0, listed.output
    [source] = json.loads(listed.output)
    assert (source["status"], source["every"], source["cursor_value"], source["url"]) == ("ok", "15m", 2,
                                                                                           redact(shop))
    assert "***" in source["url"]
    for output in (runner.invoke(app, ["sources", "list", "--db", db]).output,
                   runner.invoke(app, ["sources", "show", "orders", "--db", db]).output):
        assert READER_PASSWORD not in output and "p@ss" not in output
    service = Portrait(Settings(db_path=db), background=False)
    events = service.events("email:ann@example.com", event="Order Completed")["events"]
    assert [(e["timestamp"], e["properties"]) for e in events] == [
        ("2025-12-26T09:00:00.000Z", {"revenue": 12.5, "channel": "store", "order_no": 2}),
        ("2025-12-24T18:30:00.000Z", {"revenue": 30.0, "channel": "web", "order_no": 1})]
    service.close()
    removed = runner.invoke(app, ["sources", "remove", "orders", "--db", db])
    assert removed.exit_code == 0 and "removed" in removed.output


@pytest.mark.parametrize(("changes", "error", "message"), [
    ({"url": "mysql://x@localhost/db"}, BadRequest, "starts with postgresql:// or sqlite:///"),
    ({"url": "postgresql://reader:S3cret@[::1:5432/shop"}, BadRequest, "cannot be read: Invalid IPv6 URL"),
    ({"query": "DELETE FROM customers"}, BadRequest, "must be a single SELECT"),
    ({"query": "SELECT c.id, c.email, o.id FROM customers AS c JOIN customers AS o ON o.id = c.id"}, BadRequest,
     "more than one column named id"),
    ({"query": "SELECT 1; DROP TABLE customers"}, BadRequest, "must be a single SELECT"),
    ({"cursor": "modified"}, BadRequest, "returns no cursor column 'modified'; it returns id, email"),
    ({"mapping": {"identifiers": {"user_id": "customer_id"}}}, BadRequest,
     "the query returns no column 'customer_id'; it returns credit, email"),
    ({"every": "soon"}, BadRequest, "takes a duration such as 30s"),
    ({"name": "CRM data"}, BadRequest, "a source name is lower-case"),
    ({"kind": "orders"}, BadRequest, "--kind is profiles or events"),
    ({"query": "SELECT * FROM no_such_table"}, SourceUnavailable, 'relation "no_such_table" does not exist'),
])
def test_bad_sources_are_refused_with_the_reason(postgres: PostgresServer, shop: str, portrait: Portrait,
                                                 changes: dict[str, Any], error: type[Exception],
                                                 message: str) -> None:
    run_sql(postgres, shop, CUSTOMERS)
    with pytest.raises(error) as raised:
        portrait.add_source(customers_source(shop, **changes))
    assert message in str(raised.value)
    assert portrait.sources.all() == []  # nothing half-defined is left behind


def test_a_wrong_password_is_a_clear_error_that_does_not_repeat_it(postgres: PostgresServer, shop: str,
                                                                   portrait: Portrait) -> None:
    wrong = shop.replace("Tr1cky", "Wr0ng")
    with pytest.raises(SourceUnavailable) as raised:
        portrait.add_source(customers_source(wrong))
    assert "password authentication failed" in str(raised.value) and "Wr0ng" not in str(raised.value)
    run_sql(postgres, shop, CUSTOMERS)
    portrait.add_source(customers_source(wrong), check=False)  # saved unchecked: the sync then fails clearly
    with pytest.raises(SourceUnavailable):
        portrait.sync_source("crm")
    state = portrait.sources.state("crm")
    assert state["status"] == "failed" and "password authentication failed" in state["last_error"]
    assert "Wr0ng" not in json.dumps(state)
    with pytest.raises(Conflict, match="exists already"):
        portrait.add_source(customers_source(shop))
    with pytest.raises(NotFound, match="no source is named 'nope'"):
        portrait.sync_source("nope")
    # URLs that urlsplit cannot take apart (several hosts, a port past 65535) are listed as well, redacted
    for name, odd in (("multi", "postgresql://u:Sec#1@127.0.0.1:1,127.0.0.1:2/crm"),
                      ("badport", "postgresql://u:Sec#2@127.0.0.1:99999/crm")):
        portrait.add_source(customers_source(odd, name=name), check=False)
    listed = json.dumps(portrait.sources.all())
    assert "Sec#" not in listed and "u:***@127.0.0.1:1,127.0.0.1:2/crm" in listed


@pytest.mark.parametrize("userinfo", ["crm_reader@crm-db:S3cretPw", "crm_reader:S3cr@tPw", "crm_reader:S3cr/tPw"])
def test_a_url_libpq_would_misread_is_refused_without_showing_its_password(postgres: PostgresServer,
                                                                          portrait: Portrait, userinfo: str) -> None:
    # libpq ends the user and password at the first '@' (or a '/'): it read 'tPw@127.0.0.1' as the host and printed
    # it in its error, and the Azure-style 'user@server:password' was listed unredacted
    url = f"postgresql://{userinfo}@127.0.0.1:{postgres.port}/shop"
    for check in (True, False):
        with pytest.raises(BadRequest, match="must be percent-encoded") as raised:
            portrait.add_source(customers_source(url), check=check)
        assert "S3cr" not in str(raised.value) and "tPw" not in str(raised.value)
    assert portrait.sources.all() == []


def test_the_server_runs_scheduled_syncs(postgres: PostgresServer, shop: str, tmp_path: Path) -> None:
    run_sql(postgres, shop, CUSTOMERS)
    server = start_server(str(tmp_path / "server.duckdb"), tmp_path / "server.log",
                          {"PORTRAIT_SOURCE_POLL_SECONDS": "1"})
    try:
        with server.admin() as admin:
            response = admin.post("/api/sources", json=customers_source(shop, every="1s"))
            assert response.status_code == 201, response.text
            assert READER_PASSWORD not in response.text
            assert _eventually(lambda: admin.get("/api/profiles/email:bob@example.com/traits"))["plan"] == "pro"
            run_sql(postgres, shop, "INSERT INTO customers VALUES (9, 'eve@example.com', 'Eve', 'free', 2, "
                                    "'2026-03-01 08:00+00')")
            assert _eventually(lambda: admin.get("/api/profiles/user_id:9/traits"))["first_name"] == "Eve"
            manual = admin.post("/api/sources/crm/sync")
            assert manual.status_code in (200, 409), manual.text  # 409 if the schedule is syncing right then
            # The sync writes its rows to the log, then records its count: the listing may trail what the
            # profiles show for a moment while the schedule's sync finishes.
            deadline = time.monotonic() + 30
            while (listed := admin.get("/api/sources").json()["sources"])[0]["total_rows"] < 4:
                assert time.monotonic() < deadline, listed
                time.sleep(0.2)
            assert listed[0]["url"] == redact(shop)
            assert admin.post("/api/sources/nope/sync").json()["code"] == "not_found"
        env = {"PORTRAIT_ADMIN_KEY": ADMIN_KEY}
        through = runner.invoke(app, ["sources", "list", "--db", server.db_path, "--json"], env=env)
        assert through.exit_code == 0, through.output
        assert json.loads(through.output)[0]["name"] == "crm"
        with httpx.Client(base_url=server.url, auth=(WRITE_KEY, ""), timeout=10) as client:
            assert client.get("/api/sources").status_code == 401  # Basic auth is not how the API takes keys
    finally:
        server.stop()
    assert READER_PASSWORD not in (tmp_path / "server.log").read_text()


def _eventually(get: Any, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = get()
        if response.status_code == 200:
            return dict(response.json())
        assert time.monotonic() < deadline, response.text
        time.sleep(0.2)


def test_a_sqlite_source(tmp_path: Path, portrait: Portrait) -> None:
    path = tmp_path / "shop.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE members (card TEXT, name TEXT, points INTEGER, changed TEXT)")
        db.executemany("INSERT INTO members VALUES (?, ?, ?, ?)", [
            ("L-1", "Ann", 10, "2026-01-01 10:00:00"), ("L-2", "Bob", 5, "2026-01-03 10:00:00")])
    db.close()
    portrait.add_source({"name": "loyalty", "kind": "profiles", "url": f"sqlite:///{path}", "cursor": "changed",
                         "query": "SELECT card, name, points, changed FROM members WHERE points > 0",
                         "mapping": {"identifiers": {"loyalty_card": "card"}, "traits": {"name": "first_name",
                                                                                         "points": "points"}}})
    assert portrait.sync_source("loyalty").stored == 2
    portrait.process_pending()
    assert portrait.traits("loyalty_card:L-2") == {"first_name": "Bob", "points": 5}
    assert portrait.sources.cursor_value("loyalty") == "2026-01-03 10:00:00"
    with pytest.raises(SourceUnavailable, match="no SQLite database"):
        portrait.add_source({"name": "gone", "kind": "profiles", "url": f"sqlite:///{tmp_path}/gone.db",
                             "query": "SELECT 1 AS id", "mapping": {"identifiers": {"user_id": "id"}}})


def test_a_whole_number_read_as_a_float_identifies_as_its_integer(tmp_path: Path, portrait: Portrait) -> None:
    """A REAL column (or a NUMERIC with decimals) gives floats: customer 7 came in as "7.0", apart from the "7" of
    the website. Read as the integer now; the message ids, derived from the row, are the same as before."""
    path = tmp_path / "crm.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE customers (id REAL, card REAL, plan TEXT)")
        db.executemany("INSERT INTO customers VALUES (?, ?, ?)", [(7.0, 555.0, "pro"), (7.5, None, "odd")])
    db.close()
    portrait.ingest_messages([{"type": "identify", "userId": "7", "traits": {"name": "Ann"}}])
    portrait.add_source({"name": "crm", "kind": "profiles", "url": f"sqlite:///{path}",
                         "query": "SELECT id, card, plan FROM customers",
                         "mapping": {"identifiers": {"user_id": "id", "loyalty_card": "card"}, "traits": ["plan"]}})
    assert portrait.sync_source("crm").stored == 2
    portrait.process_pending()
    assert portrait.traits("user_id:7") == {"name": "Ann", "plan": "pro"}
    assert portrait.profile("loyalty_card:555")["profile_id"] == portrait.profile("user_id:7")["profile_id"]
    assert portrait.traits("user_id:7.5") == {"plan": "odd"}
    ids = {e["message_id"] for name in ("7", "7.5") for e in portrait.events(f"user_id:{name}")["events"]}
    assert {"source-crm-f411b89c3ac9f10bf2b5bf20a50f6a9db01334b5-0",
            "source-crm-6e1ff2258574b0c7e487af62aed64a66a7e2f764-0"} < ids  # as synced by the code before


def test_a_sync_holds_memory_for_a_tie_of_its_cursor_not_for_every_row(tmp_path: Path) -> None:
    """Identical rows get ids -0, -1, ... counted per cursor value; the count of every row read used to be held for
    the whole sync (about 100 bytes a row: a gigabyte for ten million)."""
    path = tmp_path / "big.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE orders (customer TEXT, total INTEGER, at INTEGER)")
        db.executemany("INSERT INTO orders VALUES (?, ?, ?)",
                       [*((f"c{n}", n % 50, n) for n in range(100_000)), ("c1", 7, 300_000), ("c1", 7, 300_000)])
    db.close()
    source = Source("orders", "events", f"sqlite:///{path}", "SELECT customer, total, at FROM orders",
                    RowMapping("events", user_id="customer", event="Order Completed"), cursor="at")
    connector = connect(source.url)
    read, last = 0, []
    tracemalloc.start()
    try:
        for chunk in read_chunks(source, connector, None, 5_000):
            read += len(chunk.messages)
            last = [m["messageId"] for m in chunk.messages[-2:]]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        connector.close()
    assert read == 100_002
    assert last[0].endswith("-0") and last[1].endswith("-1")  # the two identical orders: two events
    assert peak < 10_000_000, peak  # a few chunks' worth, 7.4 MB (a count per row read: 18.7 MB here)


def test_urls_with_a_driver_name_connect(postgres: PostgresServer, shop: str, portrait: Portrait, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLAlchemy-style URLs were accepted, then libpq refused the scheme ('missing "=" after ...') and a relative
    # SQLite path was read from the root
    run_sql(postgres, shop, CUSTOMERS)
    portrait.add_source(customers_source(shop.replace("postgresql://", "postgresql+psycopg2://")))
    assert portrait.sync_source("crm").stored == 3
    monkeypatch.chdir(tmp_path)
    with sqlite3.connect("shop.sqlite") as db:
        db.execute("CREATE TABLE members AS SELECT 'L-1' AS card")
    db.close()
    portrait.add_source({"name": "loyalty", "kind": "profiles", "url": "sqlite+pysqlite:///shop.sqlite",
                         "query": "SELECT card FROM members", "mapping": {"identifiers": {"loyalty_card": "card"}}})
    # Kept absolute: a server started from another folder reads the same file
    assert portrait.sources.get("loyalty").url == f"sqlite:///{tmp_path.resolve()}/shop.sqlite"
    monkeypatch.chdir("/")
    assert portrait.sync_source("loyalty").stored == 1


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("15m", 900), ("6h", 21600), ("1d", 86400),
                                               (None, None)])
def test_schedules_read_and_print_back(text: str | None, seconds: int | None) -> None:
    assert parse_every(text) == seconds
    assert format_every(seconds) == text


def test_urls_are_shown_without_passwords() -> None:
    assert redact("postgresql://crm:s3cr%40t@db.internal:5433/crm?sslmode=require") == (
        "postgresql://crm:***@db.internal:5433/crm?sslmode=require")
    assert redact("sqlite:///data/shop.db") == "sqlite:///data/shop.db"
    # a literal '#' (urlsplit would end the URL there), a password in the query, several hosts, an odd port
    assert redact("postgresql://r2:pa#ss@127.0.0.1:5432/crm") == "postgresql://r2:***@127.0.0.1:5432/crm"
    assert redact("postgresql://r2@h/crm?sslmode=disable&password=pa%23ss") == (
        "postgresql://r2@h/crm?sslmode=disable&password=***")
    assert redact("postgresql://u:s3cr@t@h1:5432,h2:5433/crm") == "postgresql://u:***@h1:5432,h2:5433/crm"
    assert redact("postgresql://u:pw@h:99999/crm") == "postgresql://u:***@h:99999/crm"
    assert scrub("auth failed for pa#ss (pa%23ss)", "postgresql://r2@h/crm?password=pa%23ss") == (
        "auth failed for *** (***)")
    # A short password is also a piece of words: only where it stands whole is it a password (psycopg's message).
    failed = ('connection to server at "127.0.0.1", port 5432 failed: FATAL:  password authentication failed for '
              'user "crm"')
    assert scrub(failed, "postgresql://crm:a@127.0.0.1:5432/crm") == failed
    assert scrub("bad password 'pw' given (pw)", "postgresql://crm:pw@h/crm") == "bad password '***' given (***)"


@pytest.mark.parametrize("query", ["SELECT id FROM t;", "SELECT id FROM t; -- the CRM's customers",
                                   "SELECT id FROM t;\n/* end */\n"])
def test_a_query_may_end_with_a_semicolon_and_a_comment(query: str) -> None:
    assert incremental(query, "postgres", "id", 7) == (
        'SELECT * FROM (SELECT id FROM t) AS portrait_source WHERE NOT "id" IS NULL AND "id" >= 7 ORDER BY "id"')


def test_the_incremental_query_quotes_the_cursor_and_its_value() -> None:
    query = incremental("SELECT * FROM t WHERE note LIKE 'a%'", "postgres", "updated_at", "2026-01-01' OR '1'='1")
    assert query == ("SELECT * FROM (SELECT * FROM t WHERE note LIKE 'a%') AS portrait_source WHERE NOT "
                     "\"updated_at\" IS NULL AND \"updated_at\" >= '2026-01-01'' OR ''1''=''1' ORDER BY \"updated_at\"")


def test_a_decimal_cursor_is_saved_exactly(postgres: PostgresServer, shop: str, portrait: Portrait) -> None:
    # Saved as a float, 12345678901234567.1234567891 became 12345678901234568: past the rows at the last value, which
    # a sync then did not read again (a gap when a sync stopped among rows sharing it, or one was added there)
    run_sql(postgres, shop, """
        CREATE TABLE readings (id integer, customer text, version numeric(30, 10));
        INSERT INTO readings VALUES (1, 'c1', 1.5), (2, 'c1', 12345678901234567.1234567891);
    """)
    portrait.add_source({"name": "meter", "kind": "events", "url": shop, "cursor": "version",
                         "query": "SELECT * FROM readings",
                         "mapping": {"identifiers": {"user_id": "customer"}, "event": "Reading"}})
    assert portrait.sync_source("meter").cursor == "12345678901234567.1234567891"
    run_sql(postgres, shop, "INSERT INTO readings VALUES (3, 'c2', 12345678901234567.1234567891)")
    again = portrait.sync_source("meter")
    assert (again.rows, again.stored, again.duplicates) == (2, 1, 1)
    run_sql(postgres, shop, "INSERT INTO readings VALUES (4, 'c2', 12345678901234568)")
    assert portrait.sync_source("meter").cursor == 12345678901234568.0  # exact as a float: stays a number


def test_postgres_types_become_json(postgres: PostgresServer, shop: str, portrait: Portrait) -> None:
    # A numeric(38, 0) id past 64 bits made every sync fail ("unexpected error: Integer exceeds 64-bit range")
    run_sql(postgres, shop, """
        CREATE TABLE accounts (id numeric(38, 0), email text, score numeric(6, 2), tags text[], extra jsonb, key uuid,
                               photo bytea, signed_up date);
        INSERT INTO accounts VALUES (123456789012345678901234567890, 'ann@example.com', 9.5, '{a,b}',
                                     '{"plan": "pro", "seats": [1, 2.5]}', '00000000-0000-0000-0000-000000000001',
                                     '\\x0001', '2026-01-02'),
                                    (42, 'bob@example.com', NULL, NULL, NULL, NULL, NULL, NULL);
    """)
    portrait.add_source({"name": "accounts", "kind": "profiles", "url": shop, "query": "SELECT * FROM accounts",
                         "mapping": {"identifiers": {"email": "email"}}})
    assert portrait.sync_source("accounts").stored == 2
    portrait.process_pending()
    assert portrait.traits("email:ann@example.com") == {
        "id": "123456789012345678901234567890", "email": "ann@example.com", "score": 9.5, "tags": ["a", "b"],
        "extra_plan": "pro", "extra_seats": [1, 2.5], "key": "00000000-0000-0000-0000-000000000001",
        "photo": "AAE=", "signed_up": "2026-01-02"}
    assert portrait.traits("email:bob@example.com")["id"] == "42"  # the trait is text since its first value


def test_database_values_become_json() -> None:
    assert [plain(v) for v in (Decimal("10.50"), Decimal("7"), date(2026, 1, 2), timedelta(minutes=1),
                               UUID(int=1), b"\x00\x01", {"a": [Decimal("1.5")]})] == [
        10.5, 7, "2026-01-02", 60.0, "00000000-0000-0000-0000-000000000001", "AAE=", {"a": [1.5]}]


SLOW_ORDERS = """
    CREATE TABLE orders (id integer PRIMARY KEY, customer text NOT NULL, delay float8 NOT NULL DEFAULT 0.02);
    INSERT INTO orders SELECT i, 'c' || (i % 3) FROM generate_series(1, 1000) AS i;
    CREATE FUNCTION slowly(seconds float8) RETURNS text LANGUAGE plpgsql STABLE
    AS $$ BEGIN PERFORM pg_sleep(seconds); RETURN ''; END $$;
"""


def slow_orders(shop: str, **changes: Any) -> dict[str, Any]:
    """A source on SLOW_ORDERS: each row takes ``delay`` seconds to compute, and rows stream in id order (the
    primary key; sorting off, and a function marked stable, which PostgreSQL evaluates as rows are fetched)."""
    return {"name": "pos", "kind": "events", "cursor": "id", "url": shop + "?options=-c%20enable_sort%3Doff",
            "query": "SELECT id, customer, slowly(delay) AS pause FROM orders",
            "mapping": {"identifiers": {"user_id": "customer"}, "event": "Order Completed"}, **changes}


def test_stopping_the_server_interrupts_a_long_scheduled_sync(postgres: PostgresServer, shop: str,
                                                              tmp_path: Path) -> None:
    run_sql(postgres, shop, SLOW_ORDERS)  # 20 s to read whole
    settings = Settings(db_path=str(tmp_path / "p.duckdb"), source_chunk_rows=5, source_poll_seconds=1)
    service = Portrait(settings, background=False)
    service.add_source(slow_orders(shop, every="1h"))
    service.start_scheduler()
    deadline = time.monotonic() + 30
    while service.sources.cursor_value("pos") is None:  # the first chunk is in
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    service.close()
    assert time.monotonic() - started < 5  # it stopped after its chunk, not after the rest of the table
    run_sql(postgres, shop, "UPDATE orders SET delay = 0")  # the rest quickly now (the rows read the same)
    service = Portrait(settings, background=False)
    try:
        stopped = service.sources.state("pos")
        assert (stopped["status"], stopped["last_error"]) == ("failed", "interrupted (the server stopped); the next "
                                                                        "sync resumes from the saved cursor")
        assert 5 <= stopped["cursor_value"] < 1000
        resumed = service.sync_source("pos")
        assert (resumed.cursor, resumed.duplicates, service.status()["events_received"]) == (1000, 1, 1000)
    finally:
        service.close()


def test_stopping_the_server_interrupts_a_sync_asked_for_through_the_api(postgres: PostgresServer, shop: str,
                                                                        tmp_path: Path) -> None:
    # uvicorn waits for the requests in progress before it shuts the app down: the sync the request runs held the
    # stop until the whole table was read
    run_sql(postgres, shop, SLOW_ORDERS)  # 20 s to read whole
    server = start_server(str(tmp_path / "server.duckdb"), tmp_path / "server.log",
                          {"PORTRAIT_SOURCE_CHUNK_ROWS": "5"})
    answers: list[httpx.Response] = []
    try:
        with server.admin() as admin:
            assert admin.post("/api/sources", json=slow_orders(shop)).status_code == 201
            asking = threading.Thread(target=lambda: answers.append(httpx.post(
                f"{server.url}/api/sources/pos/sync", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                timeout=60)))
            asking.start()
            deadline = time.monotonic() + 30
            while admin.get("/api/sources/pos").json()["cursor_value"] is None:  # the first chunk is in
                assert time.monotonic() < deadline
                time.sleep(0.1)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 10  # after its chunk, not after the rest of the table
        asking.join(10)
    finally:
        server.stop(kill=True)
    assert answers and answers[0].status_code == 503 and answers[0].json()["code"] == "sync_interrupted"


def test_a_source_that_is_syncing_is_not_removed(postgres: PostgresServer, shop: str, tmp_path: Path) -> None:
    # Removed and added again (with another cursor) while its sync ran, the old sync saved its cursor into the new
    # source: a number for a text column here; a timestamp for an integer one made every later sync fail
    run_sql(postgres, shop, SLOW_ORDERS)
    run_sql(postgres, shop, "UPDATE orders SET delay = 0.002")  # 2 s to read whole
    settings = Settings(db_path=str(tmp_path / "p.duckdb"), admin_key=ADMIN_KEY, source_chunk_rows=10)
    service = Portrait(settings, background=False)
    try:
        service.add_source(slow_orders(shop))
        with TestClient(create_app(portrait=service)) as client:
            syncing = threading.Thread(target=service.sync_source, args=["pos"])
            syncing.start()
            while service.sources.state("pos")["status"] != "running":
                time.sleep(0.01)
            refused = client.delete("/api/sources/pos", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
            syncing.join()
            assert refused.status_code == 409 and refused.json()["code"] == "sync_running", refused.text
            assert service.sources.state("pos")["cursor_value"] == 1000
            assert client.delete("/api/sources/pos", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
                                 ).status_code == 204
        service.add_source(slow_orders(shop, cursor="customer"))
        assert service.sources.cursor_value("pos") is None
    finally:
        service.close()


def test_source_times_are_written_as_the_api_writes_them_and_keep_their_message_ids(
        postgres: PostgresServer, shop: str, portrait: Portrait) -> None:
    """PostgreSQL times were written with isoformat(): a trait got 2026-01-05T10:11:12.345000+00:00 (or whatever the
    session's zone gave), a timestamp without a zone 2026-01-05T10:11:12, no zone at all, where the API and file
    imports write 2026-01-05T10:11:12.345Z. Now that form (a time without a zone is UTC). The message ids are those
    the code before derived (seen in a run of it), so a re-sync adds nothing; the cursor is saved as before, so the
    next sync reads from where the last one stopped."""
    run_sql(postgres, shop, """
        CREATE TABLE members (id integer, signed_up timestamptz, last_login timestamp, born date,
                              visits timestamp[], changed timestamptz);
        INSERT INTO members VALUES
            (1, '2026-01-05 11:11:12.345+01', '2026-01-05 10:11:12', '1990-01-02',
             '{"2026-03-01 09:00", "2026-03-02 09:00:00.5"}', '2026-02-01 10:00+00'),
            (2, '2026-01-06 08:00+00', '2026-02-01 00:00:00.123456', NULL, NULL, '2026-02-02 10:00+00');
    """)
    portrait.add_source({"name": "crm", "kind": "profiles", "url": shop + "?options=-c%20TimeZone%3DEurope/Warsaw",
                         "cursor": "changed", "query": "SELECT * FROM members",
                         "mapping": {"identifiers": {"user_id": "id"}, "timestamp": "changed"}})
    assert portrait.sync_source("crm").stored == 2
    portrait.process_pending()
    assert [portrait.traits(f"user_id:{n}") for n in (1, 2)] == [
        {"signed_up": "2026-01-05T10:11:12.345Z", "last_login": "2026-01-05T10:11:12.000Z", "born": "1990-01-02",
         "visits": ["2026-03-01T09:00:00.000Z", "2026-03-02T09:00:00.500Z"]},
        {"signed_up": "2026-01-06T08:00:00.000Z", "last_login": "2026-02-01T00:00:00.123456Z"}]
    assert [e["message_id"] for n in (1, 2) for e in portrait.events(f"user_id:{n}")["events"]] == [
        "source-crm-cf599381a7caf8f12941d87cd703e254c0253208-0",
        "source-crm-2dcbd6254c69ef8fabdf78bc1e5e8860f6717b06-0"]
    assert portrait.sources.cursor_value("crm") == "2026-02-02T11:00:00+01:00"  # as saved before: compared by PG
    again = portrait.sync_source("crm")
    assert (again.rows, again.stored, again.duplicates) == (1, 0, 1)


@pytest.mark.parametrize("column", ["timestamptz", "timestamp"])
def test_sub_second_times_keep_their_digits_and_the_cursor_misses_nothing(postgres: PostgresServer, shop: str,
                                                                          tmp_path: Path, column: str) -> None:
    """Rows a few microseconds apart, read in chunks of two: every event keeps its time to the microsecond, and the
    cursor, saved at the last row's exact time, reads no row twice into the log and misses none -- neither those
    sharing the saved time that commit later nor those a microsecond past it."""
    run_sql(postgres, shop, {"timestamptz": "CREATE TABLE clicks (id integer, who text, at timestamptz);",
                             "timestamp": "CREATE TABLE clicks (id integer, who text, at timestamp);"}[column])
    run_sql(postgres, shop, """
        INSERT INTO clicks VALUES (1, 'a', '2026-03-01 10:00:00.000001'), (2, 'a', '2026-03-01 10:00:00.000002'),
                                  (3, 'a', '2026-03-01 10:00:00.123'), (4, 'a', '2026-03-01 10:00:00.999999');
    """)
    service = Portrait(Settings(db_path=str(tmp_path / "p.duckdb"), source_chunk_rows=2), background=False)
    try:
        service.add_source({"name": "web", "kind": "events", "url": shop, "cursor": "at",
                            "query": "SELECT id, who, at FROM clicks",
                            "mapping": {"identifiers": {"user_id": "who"}, "event": "Clicked", "timestamp": "at"}})
        assert service.sync_source("web").stored == 4
        run_sql(postgres, shop, """
            INSERT INTO clicks VALUES (5, 'a', '2026-03-01 10:00:00.999999'), (6, 'a', '2026-03-01 10:00:01'),
                                      (7, 'a', '2026-03-01 10:00:01.000001');
        """)
        again = service.sync_source("web")
        assert (again.rows, again.stored, again.duplicates) == (4, 3, 1)
    finally:
        service.close()
    with duckdb.connect(str(tmp_path / "p.duckdb"), read_only=True) as stored:
        rows = stored.execute("SELECT timestamp, properties FROM events ORDER BY seq").fetchall()
    times = ["10:00:00.000001", "10:00:00.000002", "10:00:00.123", "10:00:00.999999", "10:00:00.999999",
             "10:00:01", "10:00:01.000001"]
    assert sorted((json.loads(properties)["id"], when) for when, properties in rows) == [
        (n, datetime.fromisoformat(f"2026-03-01T{at}")) for n, at in enumerate(times, start=1)]


def test_values_python_cannot_hold_are_kept_as_text_not_a_stuck_sync(postgres: PostgresServer, shop: str,
                                                                     portrait: Portrait) -> None:
    """A date or time psycopg cannot make a Python value of ('infinity', a BC date, year 20000, 24:00) made every
    sync of the source fail ("date too small (before year 1): '-infinity'") at that row's chunk, for good. Now the
    value comes as PostgreSQL writes it; as the event's time it rejects its row, kept with the reason. NaN went out
    as null, which removed the trait (NULL leaves it): it is no value now, as NULL and as NaN in a CSV file; an
    infinite number vanished the same way and is text, as the API keeps 1e400. A cursor at NaN is saved (it was
    saved as null: every sync read all again), and identical rows at it are two events, not one."""
    run_sql(postgres, shop, """
        CREATE TABLE plans (id integer, ends date, since timestamptz, closes time, valid date[], ratio float8,
                            score numeric, changed timestamp, version float8);
        INSERT INTO plans VALUES
            (1, NULL, NULL, NULL, NULL, 0.5, NULL, '2025-12-01', 0),
            (1, 'infinity', '-infinity', '24:00', '{2026-01-01,infinity}', 'NaN', 'Infinity', '2026-01-01', 1),
            (2, '0044-03-15 BC', '20000-01-01 00:00+00', '10:00', NULL, '-Infinity', 'NaN', 'infinity', 'NaN'),
            (3, NULL, NULL, NULL, NULL, NULL, NULL, '2026-01-02', 'NaN'), (3, NULL, NULL, NULL, NULL, NULL, NULL,
            '2026-01-02', 'NaN');
    """)
    portrait.add_source({"name": "plans", "kind": "profiles", "url": shop, "cursor": "version",
                         "query": "SELECT * FROM plans",
                         "mapping": {"identifiers": {"user_id": "id"}, "timestamp": "changed"}})
    report = portrait.sync_source("plans")
    assert (report.rows, report.stored, report.rejected, report.cursor) == (5, 4, 1, "NaN")
    assert report.by_code == {"invalid_timestamp": 1}
    portrait.process_pending()
    assert portrait.traits("user_id:1") == {
        "ends": "infinity", "since": "-infinity", "closes": "24:00:00", "valid": ["2026-01-01", "infinity"],
        "ratio": 0.5, "score": "Infinity", "version": 1.0}
    assert portrait.data_quality()["issues"] == []  # NaN is no value, not a text the number trait refuses
    kept = portrait.rejected()["rejected"]
    assert len(kept) == 1 and kept[0]["source"] == "source:plans" and "infinity" in json.dumps(kept[0])
    assert "0044-03-15 BC" in json.dumps(kept[0]) and "20000-01-01" in json.dumps(kept[0])
    assert len(portrait.events("user_id:3")["events"]) == 2
    again = portrait.sync_source("plans")  # from the NaN cursor: only its rows again, not all of them
    assert (again.rows, again.stored, again.duplicates, again.rejected) == (3, 0, 2, 1)


def test_a_mapped_column_gone_at_a_sync_says_so_and_the_sync_after_the_fix_resumes(
        postgres: PostgresServer, shop: str, portrait: Portrait) -> None:
    """A column renamed in the source after the source was added: the sync failed with "the file has no column
    'plan'" (a source has no file). Now the query's columns are named, and nothing synced is lost or sent twice."""
    run_sql(postgres, shop, CUSTOMERS)
    portrait.add_source(customers_source(shop, query="SELECT * FROM customers"))
    assert portrait.sync_source("crm").stored == 3
    run_sql(postgres, shop, "ALTER TABLE customers RENAME COLUMN plan TO tier; INSERT INTO customers VALUES "
                            "(4, 'dee@example.com', 'Dee', 'pro', 1, '2026-02-02 09:00+00')")
    with pytest.raises(BadRequest) as raised:
        portrait.sync_source("crm")
    message = "the query returns no column 'plan'; it returns credit, email, first_name, id, tier, updated_at"
    assert str(raised.value) == message
    state = portrait.sources.state("crm")
    assert (state["status"], state["last_error"], state["total_rows"]) == ("failed", message, 3)
    run_sql(postgres, shop, "ALTER TABLE customers RENAME COLUMN tier TO plan")
    resumed = portrait.sync_source("crm")
    assert (resumed.rows, resumed.stored, resumed.duplicates) == (3, 1, 2)
    portrait.process_pending()
    assert portrait.traits("user_id:4")["plan"] == "pro" and portrait.status()["events_received"] == 4


def test_a_timestamp_format_leaves_a_database_time_read_as_it_is(postgres: PostgresServer, shop: str,
                                                                  portrait: Portrait) -> None:
    """A source's timestamp_format reads times the query returns as text; a timestamp column comes as a datetime,
    read as it is. The rows went to the mapping with their times already written as the API writes them (text), so
    the rule that rejects a time the format does not read rejected every row of a timestamp column, where the sync
    before stored them. Text times are still read by the format, and one it does not read is still rejected."""
    run_sql(postgres, shop, CUSTOMERS)
    run_sql(postgres, shop, "CREATE TABLE visits (id integer, at text);"
                            "INSERT INTO visits VALUES (1, '05/01/2026 10:00'), (2, '2026-01-05');")
    portrait.add_source(customers_source(shop, mapping={"identifiers": {"user_id": "id"}, "timestamp": "updated_at",
                                                        "timestamp_format": "%d/%m/%Y %H:%M",
                                                        "traits": ["plan"]}))
    report = portrait.sync_source("crm")
    assert (report.stored, report.rejected) == (3, 0)
    portrait.add_source({"name": "visits", "kind": "events", "url": shop, "query": "SELECT id, at FROM visits",
                         "mapping": {"event": "Visit", "identifiers": {"user_id": "id"}, "timestamp": "at",
                                     "timestamp_format": "%d/%m/%Y %H:%M"}})
    run_sql(postgres, shop, "CREATE TABLE signups (id integer, day date); INSERT INTO signups VALUES (3, '2026-01-07')")
    portrait.add_source({"name": "signups", "kind": "events", "url": shop, "query": "SELECT id, day FROM signups",
                         "mapping": {"event": "Signed Up", "identifiers": {"user_id": "id"}, "timestamp": "day",
                                     "timestamp_format": "%d/%m/%Y"}})
    assert portrait.sync_source("signups").stored == 1  # a date, as a datetime
    visits = portrait.sync_source("visits")
    assert (visits.stored, visits.rejected, visits.by_code) == (1, 1, {"invalid_timestamp": 1})
    portrait.process_pending()
    assert [e["timestamp"] for e in portrait.events("user_id:1")["events"]
            if e["event"] == "Visit"] == ["2026-01-05T10:00:00.000Z"]
    assert [e["timestamp"] for e in portrait.events("user_id:2")["events"]] == ["2026-01-02T10:00:00.000Z"]
    assert [e["timestamp"] for e in portrait.events("user_id:3")["events"]
            if e["event"] == "Signed Up"] == ["2026-01-07T00:00:00.000Z"]
