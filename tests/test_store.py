"""The DuckDB store's append path (the ingest writer's), on a real database file."""

from __future__ import annotations

import gc
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from sqlglot import exp

from portrait.errors import PortraitError
from portrait.service import Portrait
from portrait.sql import parse
from portrait.store.duckdb import DuckDBStore

COUNTERS = parse("SELECT name, value FROM counters ORDER BY name")


@pytest.fixture()
def store(tmp_path: Path) -> DuckDBStore:
    return DuckDBStore(str(tmp_path / "store.duckdb"))


def test_append_adds_rows_by_the_tables_column_order(store: DuckDBStore) -> None:
    session = store.session()
    before = session.execute(COUNTERS)
    with session.transaction():
        session.append("counters", pa.table({"name": ["zz_test"], "value": [7]}))
    assert session.execute(COUNTERS) == sorted([*before, ("zz_test", 7)])


def test_append_refuses_columns_in_another_order_and_appends_nothing(store: DuckDBStore) -> None:
    session = store.session()
    before = session.execute(COUNTERS)
    with pytest.raises(PortraitError, match=r"cannot append to counters: columns \['value', 'name'\]"):
        session.append("counters", pa.table({"value": [7], "name": ["zz_test"]}))
    assert session.execute(COUNTERS) == before


CRASH_AFTER_LARGE_WRITE = """
import os, sys
from portrait.sql import parse
from portrait.store.duckdb import DuckDBStore
store = DuckDBStore(sys.argv[1])
session = store.session()
with session.transaction():  # a processor batch: more than a row group into an indexed table
    session.execute(parse("INSERT INTO event_profiles (seq, profile_id, timestamp, event_type) "
                          "SELECT i, 'p' || (i % 1000), TIMESTAMP '2026-01-01', 'track' FROM range(130000) t(i)"))
session.execute(parse("INSERT INTO event_profiles VALUES (-1, 'p-1', TIMESTAMP '2026-01-01', 'track', NULL)"))
os._exit(0)  # killed: nothing closes or checkpoints
"""


def test_a_crash_after_a_large_write_into_an_indexed_table_leaves_a_database_that_opens(tmp_path: Path) -> None:
    """DuckDB 1.5.5 could not replay such a log (see store.duckdb.LARGE_WRITE_ROWS): the session checkpoints."""
    path = str(tmp_path / "crash.duckdb")
    DuckDBStore(path).close()  # migrated and checkpointed, as a database in use would be
    done = subprocess.run([sys.executable, "-c", CRASH_AFTER_LARGE_WRITE, path], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    reopened = DuckDBStore(path)
    try:
        assert reopened.session().execute(parse("SELECT count(*) FROM event_profiles")) == [(130_001,)]
    finally:
        reopened.close()


CRASH_AFTER_WRITES = """
import os, sys
from portrait.sql import parse
from portrait.store.duckdb import DuckDBStore
store = DuckDBStore(sys.argv[1])
session = store.session()
session.execute(parse("INSERT INTO identities (identity_key, type, value, profile_id, first_seen, seq) "
                      "SELECT 'anonymous_id:a' || i, 'anonymous_id', 'a' || i, 'p' || i, TIMESTAMP '2026-01-01', i "
                      "FROM range(50) t(i)"))
session.execute(parse("UPDATE identities SET profile_id = 'p0' WHERE seq < 10"))
os._exit(0)  # killed: nothing closes or checkpoints
"""


def test_opening_and_closing_after_a_crash_keeps_the_indexes_whole(tmp_path: Path) -> None:
    """DuckDB 1.5.5 dropped index entries replayed from the log when the connection closed before using them (any
    CLI command, a server stopped early): index lookups then missed rows a scan finds, and writes hit false
    duplicates. The store checkpoints right after opening."""
    path = str(tmp_path / "crash.duckdb")
    DuckDBStore(path).close()
    done = subprocess.run([sys.executable, "-c", CRASH_AFTER_WRITES, path], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    DuckDBStore(path).close()  # opened and closed without touching the identities: what lost the entries
    reopened = DuckDBStore(path)
    try:
        session = reopened.session()
        by_index = session.execute(parse("SELECT count(*) FROM identities WHERE profile_id = 'p0'"))
        by_scan = session.execute(parse("SELECT count(*) FROM identities WHERE profile_id || '' = 'p0'"))
        assert by_index == by_scan == [(10,)]
        key = session.execute(parse("SELECT count(*) FROM identities WHERE identity_key = 'anonymous_id:a42'"))
        assert key == [(1,)]
    finally:
        reopened.close()


def test_a_database_in_a_folder_it_cannot_write_to_is_refused_clearly(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """As root every folder is writable, so the permission check is stood in for (run as another user, the first
    write failed inside a transaction with a traceback)."""
    import os

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode))
    with pytest.raises(PortraitError, match=r"its folder .* is not writable") as refused:
        DuckDBStore(str(tmp_path / "ro.duckdb"))
    assert refused.value.code == "folder_not_writable" and not (tmp_path / "ro.duckdb").exists()


def test_a_duckdb_file_portrait_did_not_make_is_refused_and_left_alone(tmp_path: Path) -> None:
    import duckdb

    path = str(tmp_path / "other.duckdb")
    with duckdb.connect(path) as theirs:
        theirs.execute("CREATE TABLE events (id INTEGER, name VARCHAR)")
    os.chmod(path, 0o644)  # shared with its group and others by whoever made it
    with pytest.raises(PortraitError, match=r"Portrait did not make .* nothing was changed") as refused:
        DuckDBStore(path)
    assert refused.value.code == "not_a_portrait_database"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # before: made 0600 before it was found not Portrait's
    with duckdb.connect(path) as theirs:
        assert theirs.execute("SHOW TABLES").fetchall() == [("events",)]


def test_a_database_upgraded_by_a_newer_portrait_is_refused(tmp_path: Path) -> None:
    """Older code would keep writing derived state by its own, older rules (an upgraded database then went wrong
    for good): it refuses, leaving the file as it is."""
    import duckdb

    from portrait.sql import schema

    path = str(tmp_path / "newer.duckdb")
    DuckDBStore(path).close()
    future = max(schema.MIGRATIONS) + 1
    with duckdb.connect(path) as con:
        con.execute("INSERT INTO schema_migrations (version) VALUES (?)", [future])
    with pytest.raises(PortraitError, match=f"upgraded by a newer Portrait \\(schema version {future}") as refused:
        DuckDBStore(path)
    assert refused.value.code == "database_too_new"


def test_the_render_cache_keeps_a_statement_as_long_as_it_lives_and_no_longer() -> None:
    """A statement is rendered once for as long as it lives; trees built per call leave no entry once collected,
    however many, and never push the statements in use out."""
    from portrait.store.duckdb import _Renderer

    render = _Renderer("duckdb")
    static = parse("SELECT 1 AS one")
    assert render(static) == "SELECT 1 AS one"
    for n in range(3000):
        assert render(parse(f"SELECT {n} AS n")) == f"SELECT {n} AS n"
        render(static)
    gc.collect()  # trees hold their parents: cycles, collected by the collector
    assert list(render._cache) == [id(static)]
    assert render._cache[id(static)][0]() is static
    kept = parse("SELECT 2 AS two")
    text = render(kept)
    assert render(kept) is text  # the remembered text, not rendered again



def test_the_store_and_the_rewrite_after_an_erasure_draw_no_progress_bar(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckDB draws a progress bar on standard output for a statement running over 2 s, such as the rewrite after
    an erasure (10-25 s for a 440 MB file, benchmarks/privacy_speed.py): lines of it in the server's log, and in the
    output of a CLI command that opened the file (a ``--json`` answer no longer parsed). The connections Portrait
    makes -- the store's, which runs migrations and checkpoints (its cursors draw none), and the one that copies the
    file -- have it off: asked of each as it runs its first checkpoint or the copy."""
    import duckdb

    from portrait.store.duckdb import compact_file

    drawing: dict[str, bool] = {}
    connect = duckdb.connect

    class Watched:
        def __init__(self, connection: duckdb.DuckDBPyConnection) -> None:
            self._connection = connection

        def execute(self, text: str, *args: object) -> duckdb.DuckDBPyConnection:
            if text.startswith(("CHECKPOINT", "COPY FROM DATABASE")):
                setting = self._connection.execute("SELECT current_setting('enable_progress_bar')").fetchone()
                drawing.setdefault(text.split()[0], bool(setting and setting[0]))
            return self._connection.execute(text, *args)

        def __getattr__(self, name: str) -> object:
            return getattr(self._connection, name)

    def drawing_by_default(*args: object, **kwargs: object) -> Watched:
        connection = connect(*args, **kwargs)  # type: ignore[arg-type]
        # DuckDB's default depends on how Python was started: on for `python -c` on this machine, off under pytest
        connection.execute("SET enable_progress_bar = true")
        return Watched(connection)

    monkeypatch.setattr(duckdb, "connect", drawing_by_default)
    path = str(tmp_path / "quiet.duckdb")
    DuckDBStore(path).close()
    compact_file(path)
    assert drawing == {"CHECKPOINT": False, "COPY": False}


@pytest.mark.parametrize("interrupted", ["SET enable_progress_bar", "SET checkpoint_threshold", "SET memory_limit",
                                         "SELECT DISTINCT table_name FROM DUCKDB_INDEXES"])
def test_ctrl_c_in_a_statement_of_opening_is_ctrl_c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   interrupted: str) -> None:
    """The store's opening runs some statements on its root connection, not in a session: a Ctrl-C landing in one
    came out of DuckDB as RuntimeError('Query interrupted') and ended `portrait demo` in a traceback (seen 5 ms
    after the file appeared). It is a KeyboardInterrupt again, the connection is closed, and the file opens after.
    DuckDB's own way of stopping a statement is reproduced here: the Ctrl-C cannot be timed to land in a SET."""
    import duckdb

    connect = duckdb.connect
    closed: list[bool] = []

    class CtrlCInOneStatement:
        def __init__(self, connection: duckdb.DuckDBPyConnection) -> None:
            self._connection = connection

        def execute(self, text: str, *args: object) -> duckdb.DuckDBPyConnection:
            if text.startswith(interrupted):
                try:
                    raise KeyboardInterrupt
                except KeyboardInterrupt as pressed:
                    raise RuntimeError("Query interrupted") from pressed
            return self._connection.execute(text, *args)

        def close(self) -> None:
            closed.append(True)
            self._connection.close()

        def __getattr__(self, name: str) -> object:
            return getattr(self._connection, name)

    monkeypatch.setattr(duckdb, "connect", lambda *a, **k: CtrlCInOneStatement(connect(*a, **k)))
    path = str(tmp_path / "opening.duckdb")
    with pytest.raises(KeyboardInterrupt):
        DuckDBStore(path, checkpoint_wal_mb=64, memory_limit_mb=512)
    assert closed == [True]
    monkeypatch.setattr(duckdb, "connect", connect)
    store = DuckDBStore(path)
    assert store.session().execute(parse("SELECT 1")) == [(1,)]
    store.close()


def test_statements_asked_for_again_and_again_are_built_once_not_kept_by_the_hundred(
        portrait: Portrait, monkeypatch: pytest.MonkeyPatch) -> None:
    """The attribute list (every read-key request masks through it), a profile's event pages, the rejected list and
    the console's live feed were built anew on each call (~1.4 ms for the attribute list) and each new tree took a
    place in the renderer's cache of recent trees: a soak found it full of copies of them, Python's blocks rising
    with the requests. The same shape is now the same tree, rendered once."""
    portrait.ingest_messages([{"type": "track", "userId": f"u{n}", "event": "Viewed"} for n in range(3)]
                             + [{"type": "track", "userId": "u1"}])  # no event name: rejected
    portrait.process_pending()

    def ask_everything(round_: int) -> None:
        portrait.attributes.list()
        portrait.attributes.list(standard=True, status="active")
        portrait.events(f"user_id:u{round_ % 3}", event="Viewed", limit=10)
        portrait.rejected(limit=20)
        portrait.rejected(limit=20, code="missing_event", before_id=round_ + 1000)
        portrait.recent_events(round_, 100, details=True)

    ask_everything(0)
    rendered: list[str] = []
    render = exp.Expression.sql  # (Expr.sql is the base's; Expression, the class of every tree, defines its own)

    def counted(self: exp.Expression, *args: Any, **kwargs: Any) -> str:
        rendered.append(text := render(self, *args, **kwargs))
        return text

    monkeypatch.setattr(exp.Expression, "sql", counted)
    for round_ in range(1, 40):
        ask_everything(round_)
    assert rendered == []
