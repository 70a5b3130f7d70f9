"""The embedded DuckDB store: one file, one read-write process; each thread uses its own session (cursor)."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib
import logging
import os
import re
import stat
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import duckdb
import pyarrow as pa
from sqlglot import exp

from portrait.errors import DatabaseDamaged, DatabaseInUse, PortraitError, StorageUnavailable
from portrait.sql import schema
from portrait.store.base import Capabilities

CAPABILITIES = Capabilities(dialect="duckdb", single_writer_process=True, arrow_scan=True)
_LOCK_PID = re.compile(r"PID (\d+)")
KEY_VARIABLE = "PORTRAIT_ENCRYPTION_KEY"  # where the key comes from, for errors that say which one is wrong
PREVIOUS_KEY_VARIABLE = "PORTRAIT_PREVIOUS_ENCRYPTION_KEY"
log = logging.getLogger(__name__)
# DuckDB 1.5.5 cannot replay its write-ahead log when one transaction wrote a full row group (122,880 rows) or
# more into a table with an index and a later transaction wrote to that table again before a checkpoint: after a
# crash in that window the database does not open ("Failure while replaying WAL file: Attempted to access index
# ..."). Fixed in 1.5.6, which the encryption extension (duckdb-extension-httpfs, 1.5.5 only) cannot load. So a
# session checkpoints right after committing nearly that many rows into one indexed table, before its own next
# write (tests/test_store.py reproduces the crash). What remains is a crash in the moment between that commit and
# the checkpoint while another thread writes to the same table.
LARGE_WRITE_ROWS = 120_000
# DuckDB 1.5.5 also loses index entries on opening after a crash: it replays the write-ahead log into indexes it
# has not loaded yet, and a connection closed before using them (its automatic checkpoint) writes them without
# those entries -- identities and events were then missing from index lookups, and merges failed on a duplicate
# key. A checkpoint right after opening writes the replayed log into the file first (tests/test_store.py).


def _load_what_libraries_load_on_first_use() -> None:
    """Load, from Python, the modules DuckDB and pyarrow load from their compiled code on first use: DuckDB pandas
    at the first statement with parameters and pyarrow.dataset at the first Arrow result, pyarrow its pandas support
    at the first table built from rows. A Ctrl-C landing while one of them loaded (a tenth of a second, in the first
    moments of a command on a new database) raised KeyboardInterrupt inside that library, which took it for "not
    installed" and dropped it: `portrait demo` went on to load everything and exit 0, or later found pandas half
    loaded ("partially initialized module 'pandas'", a traceback). Loaded here, before the database is opened, a
    Ctrl-C meanwhile is an ordinary KeyboardInterrupt (tests/test_cli_signals.py). Not at import: `--help` and
    `--version` would wait for pandas too."""
    for name in ("pyarrow.dataset", "pyarrow.pandas_compat", "pandas"):
        # pandas is optional, and one that does not load (missing, broken, unreadable to this user) is what both
        # libraries do without, as they did before; only an interrupt goes on.
        with contextlib.suppress(Exception):
            importlib.import_module(name)


class _Renderer:
    """Renders SQLGlot trees for one dialect, remembering each tree's text for as long as the tree lives (rendering
    costs ~50-200 us). The module-level statements live as long as the process and are rendered once; a tree built
    per call is forgotten with it, its entry removed as it is collected (a weak reference). So the cache never keeps
    a tree alive and per-call trees never push out the statements used over and over: a plain dict kept up to 4,096
    trees alive (over a gigabyte for large ones) and then cached nothing new; a least-recently-used cache of 1,024
    then filled with per-call copies (a traced soak: Python's blocks rising with the requests)."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        # By id: trees compare and hash by content, which is costly and would take an equal tree for this one.
        self._cache: dict[int, tuple[weakref.ref[exp.Expr], str]] = {}

    def __call__(self, statement: exp.Expr) -> str:
        key = id(statement)
        cached = self._cache.get(key)
        if cached is not None and cached[0]() is statement:
            return cached[1]
        text = statement.sql(dialect=self.dialect)
        self._cache[key] = (weakref.ref(statement, functools.partial(self._forget, key)), text)
        return text

    def _forget(self, key: int, reference: weakref.ref[exp.Expr]) -> None:
        """A tree was collected: its entry goes. Called by whichever thread collects it, perhaps inside __call__, so
        no lock (which that thread could hold): single dict operations, atomic under the GIL. Its id cannot be taken
        by a new tree before this runs (the memory is freed after), so the entry found is this reference's, or a
        second one made for the same tree by another thread (which its own call removes)."""
        cached = self._cache.get(key)
        if cached is not None and cached[0] is reference:
            self._cache.pop(key, None)


_REPORTED_BY_CALLER: set[str] = set()  # files whose damage a caller says itself (damage_reported_by_caller)


@contextmanager
def damage_reported_by_caller(path: str) -> Iterator[None]:
    """While this lasts, damage met in the file ``path`` raises DatabaseDamaged without the log line: a restore
    opening its copy of a backup says the *backup* is damaged itself, and the line before it, "the database ...
    .restoring cannot be read: ...; restore a backup", named a file the user never made and sent them to the wrong
    remedy."""
    _REPORTED_BY_CALLER.add(path)
    try:
        yield
    finally:
        _REPORTED_BY_CALLER.discard(path)


class Unreadable:
    """What went wrong the first time the open database file could not be read (a damaged block, an I/O error),
    for /api/status; each distinct problem is logged once, with DuckDB's words. The file does not mend itself:
    every later read of that block fails the same way, and the log would repeat it for every request."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.problem: str | None = None
        self._logged: set[str] = set()
        self._lock = threading.Lock()

    def check(self, exc: duckdb.Error) -> None:
        """Raise ``exc`` as DatabaseDamaged if it is the file failing to be read; return for any other error."""
        problem = damage(exc)
        if problem is None:
            return
        with self._lock:
            self.problem = self.problem or problem
            first = problem not in self._logged
            self._logged.add(problem)
        # Without DuckDB's traceback: its words are in the message, and a command's stderr shows this.
        if first and self.path not in _REPORTED_BY_CALLER:
            log.error("the database %s cannot be read: %s", self.path, problem)
        raise DatabaseDamaged(problem) from exc


class DuckDBSession:
    def __init__(self, connection: duckdb.DuckDBPyConnection, render: _Renderer, *, attached: bool = False,
                 indexed_tables: frozenset[str] = frozenset(), unreadable: Unreadable | None = None) -> None:
        self._con = connection
        self._render = render
        self._unreadable = unreadable or Unreadable(":memory:")
        self._columns: dict[str, tuple[str, ...]] = {}  # per table, for append (schemas change only at start)
        self._indexed_tables = indexed_tables
        self._in_transaction = False
        self._indexed_rows_written: dict[str, int] = {}  # per indexed table, by the open transaction
        if attached:  # an encrypted database is attached by name; a new cursor starts in the in-memory one
            self.execute(schema.USE_PORTRAIT)
        # Client timestamps (TIMESTAMPTZ) are stored as naive UTC TIMESTAMPs whatever the machine's zone.
        self.execute(schema.UTC_SESSION)

    def execute(self, statement: exp.Expr, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
        bound = dict(params) if isinstance(params, Mapping) else list(params)  # named ($p0) or positional (?)
        try:
            with _interruptions_passed_on():
                rows = self._con.execute(self._render(statement), bound).fetchall()
        except duckdb.Error as exc:
            self._failed(exc)
        if isinstance(statement, exp.Insert | exp.Update) and rows:
            table = _target(statement)
            if table in self._indexed_tables:  # DuckDB answers a write with its row count
                self._indexed_rows_written[table] = self._indexed_rows_written.get(table, 0) + int(rows[0][0])
                if not self._in_transaction:
                    self._checkpoint_after_large_write()
        return rows

    def arrow(self, statement: exp.Expr, params: Sequence[Any] = ()) -> pa.Table:
        try:
            with _interruptions_passed_on():
                return self._con.sql(self._render(statement), params=list(params)).to_arrow_table()
        except duckdb.Error as exc:
            self._failed(exc)

    def _failed(self, exc: duckdb.Error) -> NoReturn:
        """Raise ``exc`` as the error callers can act on (a full disk, a damaged file), or as it is."""
        _refused_by_disk(exc)
        self._unreadable.check(exc)
        raise exc

    def load(self, name: str, table: pa.Table) -> None:
        self._con.register(name, table)

    def unload(self, name: str) -> None:
        self._con.unregister(name)

    def append(self, table: str, rows: pa.Table) -> None:
        columns = self._columns.get(table)
        if columns is None:
            columns = self._columns[table] = tuple(self._con.table(table).columns)
        if tuple(rows.column_names) != columns:  # DuckDB appends by position: a mismatch would mix columns up
            raise PortraitError(f"cannot append to {table}: columns {rows.column_names} are not the table's "
                                f"{list(columns)}")
        try:
            with _interruptions_passed_on():
                self._con.from_arrow(rows).insert_into(table)
        except duckdb.Error as exc:
            self._failed(exc)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with _interruptions_passed_on():
            self._con.begin()
        self._in_transaction = True
        try:
            yield
        except BaseException:
            self._in_transaction = False
            self._indexed_rows_written = {}
            with _interruptions_passed_on():  # a second Ctrl-C: the transaction is dropped when the cursor closes
                self._con.rollback()
            raise
        self._in_transaction = False
        self._commit()
        self._checkpoint_after_large_write()

    def _commit(self) -> None:
        try:
            with _interruptions_passed_on():
                self._con.commit()
        except duckdb.Error as exc:
            self._failed(exc)
        except KeyboardInterrupt:  # committed whole or not at all; if not, nothing of it stays open on the cursor
            with contextlib.suppress(duckdb.Error), _interruptions_passed_on():
                self._con.rollback()  # after a commit that was done: "no transaction is active"
            raise

    def _checkpoint_after_large_write(self) -> None:
        """See LARGE_WRITE_ROWS: checkpoint before anything else writes to the table."""
        written, self._indexed_rows_written = self._indexed_rows_written, {}
        if max(written.values(), default=0) >= LARGE_WRITE_ROWS:
            try:
                with _interruptions_passed_on():
                    self._con.execute(self._render(schema.CHECKPOINT))
            except duckdb.Error:  # the transaction is committed: its caller must not see a failure
                log.warning("could not checkpoint after a large write; DuckDB will at its next checkpoint",
                            exc_info=True)

    def close(self) -> None:
        self._con.close()


@contextmanager
def _interruptions_passed_on() -> Iterator[None]:
    """Ctrl-C during a statement: DuckDB stops it and raises RuntimeError('Query interrupted') from the
    KeyboardInterrupt (from whatever a signal handler raised: the CLI's SIGTERM handler raises one too). That is
    raised again as it was, so that it ends a command as Ctrl-C does (its message, exit code 130) instead of a
    traceback and exit code 1, and no ``except Exception`` on the way takes it for a failed statement and goes on:
    ``profiles rebuild`` retried its batch one event at a time and finished, exit code 0, as if Ctrl-C had not been
    pressed. The stopped statement is undone as a failed one is, and its transaction rolled back."""
    try:
        yield
    except Exception as exc:
        raised = exc.__cause__
        if isinstance(raised, BaseException) and not isinstance(raised, Exception):
            raise raised from None
        raise


class DuckDBStore:
    capabilities = CAPABILITIES

    def __init__(self, path: str, encryption_key: str | None = None, *, checkpoint_wal_mb: int | None = None,
                 memory_limit_mb: int | None = None) -> None:
        self.path = path
        _check_folder(path)
        _load_what_libraries_load_on_first_use()
        self._render = _Renderer(CAPABILITIES.dialect)
        self._encrypted = bool(encryption_key)
        self._encryption_key = encryption_key  # backups are encrypted with it too
        self.unreadable = Unreadable(path)
        self._lock = threading.Lock()
        self._indexed_tables: frozenset[str] = frozenset()
        # The statements of opening run on the root connection, outside the sessions that pass a Ctrl-C on: one
        # landing in them (settings, the first checkpoint) ended the command in DuckDB's "Query interrupted"
        # traceback. A connection left half prepared is closed, as a refused file's is.
        with _interruptions_passed_on():
            self._root = _connect(path, encryption_key, self._render)
        try:
            with _interruptions_passed_on():
                self._prepare(checkpoint_wal_mb, memory_limit_mb)
        except BaseException:
            self._root.close()
            raise

    def _prepare(self, checkpoint_wal_mb: int | None, memory_limit_mb: int | None) -> None:
        """Refuse a file that is not Portrait's, set the connection up and bring the schema up to date."""
        self._refuse_if_not_portraits()
        # Only now: a file refused above (a SQLite file, another program's DuckDB file) is left as it was, mode
        # included; and before the checkpoint, which writes the write-ahead log into the file and removes it.
        _keep_private(self.path)
        self.checkpoint()  # see above, after LARGE_WRITE_ROWS
        if checkpoint_wal_mb:
            self._root.execute(self._render(schema.checkpoint_threshold(checkpoint_wal_mb)))
        if memory_limit_mb:
            self._root.execute(self._render(schema.memory_limit(memory_limit_mb)))
        self._migrate()
        self._indexed_tables = frozenset(row[0] for row in self._root.execute(self._render(schema.INDEXED_TABLES))
                                         .fetchall())

    def session(self) -> DuckDBSession:
        with self._lock:
            return DuckDBSession(self._root.cursor(), self._render, attached=self._encrypted,
                                 indexed_tables=self._indexed_tables, unreadable=self.unreadable)

    def checkpoint(self) -> None:
        with _interruptions_passed_on():
            self._root.execute(self._render(schema.CHECKPOINT))

    def read_problem(self) -> str | None:
        return self.unreadable.problem

    def memory(self) -> tuple[int, str]:
        """Bytes DuckDB holds in memory now, and its limit as DuckDB writes it (e.g. ``19.2 GiB``)."""
        with self._lock:
            used, limit = self._root.execute(self._render(schema.DATABASE_MEMORY)).fetchall()[0]
        return int(used), str(limit)

    def backup(self, target: str) -> None:
        """Copy every table, sequence and index into the new file ``target`` in one read transaction: a consistent
        snapshot while ingestion and processing go on. Written under another name first, so a file named
        ``target`` is always a whole backup (a crash or a full disk leaves at most a ``.partial`` file)."""
        partial = Path(target + ".partial")
        partial.unlink(missing_ok=True)
        session = self.session()
        try:
            source = str(session.execute(schema.CURRENT_DATABASE)[0][0])
            session.execute(schema.attach_encrypted(str(partial), schema.BACKUP_ALIAS, self._encryption_key)
                            if self._encryption_key else schema.attach(str(partial), schema.BACKUP_ALIAS))
            try:
                # In a transaction of its own, rolled back if the copy fails (a full disk): the failed statement
                # otherwise left the cursor in an aborted transaction, the DETACH below failed, and the backup
                # file stayed attached -- deleted, still filling the disk, and its name taken, so that every later
                # backup failed until a restart.
                with session.transaction():
                    session.execute(schema.copy_database_to_backup(source))
            finally:
                session.execute(schema.DETACH_BACKUP)
        except BaseException as exc:
            partial.unlink(missing_ok=True)
            Path(str(partial) + ".wal").unlink(missing_ok=True)
            if isinstance(exc, StorageUnavailable):  # the backup's disk, not the database's
                raise StorageUnavailable(
                    f"the backup could not be written into {partial.parent} ({_refusal(exc)}): no backup was "
                    "made and the database is as it was; free space there, or set PORTRAIT_BACKUP_DIR to a "
                    "disk with room for a copy of the database, then retry") from exc
            raise
        finally:
            session.close()
        os.replace(partial, target)

    def close(self) -> None:
        with _interruptions_passed_on():  # closing checkpoints the write-ahead log into the file
            self._root.close()

    def _refuse(self, session: DuckDBSession, error: PortraitError) -> NoReturn:
        """Close everything and raise ``error``, having changed nothing."""
        session.close()
        self._root.close()
        raise error

    def _refuse_if_not_portraits(self) -> None:
        """Refuse someone else's DuckDB file (tables, and no schema_migrations), leaving it as it is."""
        session = self.session()
        tables = {row[0] for row in session.execute(schema.TABLE_NAMES)}
        if tables and "schema_migrations" not in tables:
            self._refuse(session, PortraitError(
                f"the database {self.path} is a DuckDB file that Portrait did not make (it has tables such as "
                f"{sorted(tables)[0]!r} and no schema_migrations): nothing was changed; give Portrait a new file or "
                "one of its own", code="not_a_portrait_database"))
        session.close()

    def _migrate(self) -> None:
        session = self.session()
        session.execute(schema.MIGRATION_TABLE)
        applied = {row[0] for row in session.execute(schema.APPLIED)}
        newer = sorted(version for version in applied if version not in schema.MIGRATIONS)
        if newer:  # its derived state is kept by rules this code does not know: writing would corrupt it
            self._refuse(session, PortraitError(
                f"the database {self.path} was upgraded by a newer Portrait (schema version {newer[-1]}; this one "
                f"knows up to {max(schema.MIGRATIONS)}): nothing was changed; use that version or a newer one",
                code="database_too_new"))
        migrated = False
        for version in sorted(schema.MIGRATIONS):
            if version in applied:
                continue
            with session.transaction():
                for statement in schema.MIGRATIONS[version]:
                    session.execute(statement)
                session.execute(schema.RECORD, [version])
            migrated = True
        session.close()
        if migrated:  # a migration may rewrite whole tables (see LARGE_WRITE_ROWS)
            self.checkpoint()


# What the operating system says when a disk refuses writes, as DuckDB passes it on (in an IOException, or in the
# TransactionException of a commit whose log could not be written).
_STORAGE_REFUSALS = ("No space left on device", "Disk quota exceeded", "Read-only file system")


def _refusal(exc: BaseException) -> str | None:
    """What the disk said, if ``exc`` (or the error it was raised from) is a disk refusing a write."""
    text = f"{exc} {exc.__cause__}"
    return next((r for r in _STORAGE_REFUSALS if r in text), None)


def _refused_by_disk(exc: duckdb.Error) -> None:
    """Raise a write the disk refused as the error callers can wait out; return for any other error."""
    refusal = _refusal(exc)
    if refusal is not None:
        raise StorageUnavailable(f"the database could not be written ({refusal}): nothing was stored; free space "
                                 "on the disk holding the database, then retry") from exc


# DuckDB's words when a block of an encrypted file fails its integrity check (its AES-GCM tag).
_AES_TAG_MISMATCH = "Computed AES tag differs from read AES tag"


def damage(exc: BaseException) -> str | None:
    """What to tell a person when ``exc`` is the database file failing to be read, else None: DuckDB finding a
    block damaged (its checksum, or in an encrypted file its AES tag, does not match: a failing disk, a bad copy),
    or the operating system refusing a read (an I/O error, a file cut short under the running server). Seen only
    when that block is read, which may be long after the file opened."""
    if isinstance(exc, DatabaseDamaged):
        return exc.message
    found = damage_found(exc)
    if found is None:
        return None
    return (f"the database file {found}; restore a backup (`portrait restore`, docs/backups.md): what needs this "
            "part of it fails until then")


def damage_found(exc: BaseException | None) -> str | None:
    """What is wrong with a file DuckDB failed to read (``is damaged (...)``, ``cannot be read (...)``, in
    DuckDB's words), if ``exc`` is that; else None. Without the advice, for a file that is not the database in use
    (a backup being restored)."""
    if not isinstance(exc, duckdb.Error):
        return None
    text = str(exc).removeprefix("IO Error: ")
    if "Corrupt database file" in text:
        return f"is damaged ({text})"
    if _AES_TAG_MISMATCH in text:
        # An encrypted file's blocks are checked by their AES tag instead of a checksum. DuckDB asks whether the key
        # is right, but it is: it opened the file and decrypts the other blocks (a wrong key is refused on opening)
        return "is damaged (a block does not decrypt with the key that opened the file: its AES tag does not match)"
    if isinstance(exc, duckdb.IOException) and "Could not read" in text:
        return f"cannot be read ({text})"
    return None


def _check_folder(path: str) -> None:
    """DuckDB writes a write-ahead log beside the database (and Portrait its server file): in a folder it may not
    write to, the first write would fail deep inside a transaction."""
    folder = Path(path).resolve().parent
    if path != ":memory:" and not folder.is_dir():  # DuckDB said only "Cannot open file ...: No such file"
        raise PortraitError(f"cannot open the database {path}: there is no folder {folder} (create it with "
                            f"mkdir -p {folder}, or give --db or PORTRAIT_DB_PATH another path)", code="no_such_folder")
    if path != ":memory:" and not os.access(folder, os.W_OK):
        raise PortraitError(f"cannot use the database {path}: its folder {folder} is not writable (DuckDB writes its "
                            "write-ahead log beside the database)", code="folder_not_writable")


def _keep_private(path: str) -> None:
    """Make the database file and its write-ahead log readable by their owner only, if they are not.

    Portrait writes them so (0600) whatever the umask, but a database made by an earlier version kept the umask's
    mode -- commonly 0644: personal data any user of the machine could read -- and the docs asked people to chmod
    it by hand. Tightened here when this user owns the file, and said once (the next start finds nothing to say);
    a file of another user's is left as it is, with a warning saying what to run."""
    if path == ":memory:":
        return
    for file in (Path(path), Path(path + ".wal")):
        try:
            found = file.stat()
        except OSError:  # no such file (a new database, no log), or unreadable: DuckDB's own error says so
            continue
        mode = stat.S_IMODE(found.st_mode)
        if not stat.S_ISREG(found.st_mode) or not mode & 0o077:
            continue
        private = mode & 0o700
        open_to = " and ".join(who for who, bits in (("its group", 0o070), ("other users", 0o007)) if mode & bits)
        why = f"it belongs to another user (uid {found.st_uid})" if found.st_uid != os.geteuid() else None
        if why is None:
            try:
                os.chmod(file, private)
            except OSError as exc:
                why = exc.strerror or str(exc)
            else:
                log.warning("%s was open to %s (mode %04o); changed to %04o: it holds personal data", file,
                            open_to, mode, private)
                continue
        log.warning("%s holds personal data and is open to %s (mode %04o), which Portrait could not change (%s): "
                    "run chmod %04o %s", file, open_to, mode, why, private, file)


def _target(statement: exp.Insert | exp.Update) -> str | None:
    table = statement.this if isinstance(statement.this, exp.Table) else statement.this.find(exp.Table)
    return table.name if table is not None else None


# A DuckDB file (encrypted or not) starts with an 8-byte checksum and then these bytes.
_DUCKDB_MAGIC, _MAGIC_AT = b"DUCK", 8
# What other files people give for a database start with, as named in the error.
_OTHER_FORMATS = {b"SQLite format 3\x00": "a SQLite database", b"PAR1": "a Parquet file", b"PK\x03\x04": "a ZIP file",
                  b"\x1f\x8b": "a gzip file", b"PGDMP": "a PostgreSQL dump"}


def _check_is_duckdb(path: str) -> None:
    """Refuse an existing file that is not a DuckDB database before DuckDB sees it: given a SQLite file, DuckDB
    tried to download its SQLite extension to open it (offline: an error about a download URL; online: the SQLite
    file itself opened as the database)."""
    file = Path(path)
    if path == ":memory:" or not file.is_file():
        return
    try:
        with file.open("rb") as opened:
            head = opened.read(64)
    except OSError:  # no permission to read it: DuckDB's own error says so
        return
    if head[_MAGIC_AT:_MAGIC_AT + len(_DUCKDB_MAGIC)] == _DUCKDB_MAGIC:
        return
    if not head:  # `touch`, or a first start killed before DuckDB wrote a byte: no data to lose
        raise PortraitError(f"cannot open the database {path}: the file is empty, not a DuckDB database; delete it "
                            "and start again to make a new database there", code="not_a_duckdb_file")
    kind = next((name for magic, name in _OTHER_FORMATS.items() if head.startswith(magic)), None)
    what = f"is {kind}, not a DuckDB database" if kind else "does not start as a DuckDB database does"
    raise PortraitError(f"cannot open the database {path}: the file {what}; nothing was changed. Give --db (or "
                        "PORTRAIT_DB_PATH) the path of a Portrait database, or of a file that does not exist yet to "
                        "start a new one", code="not_a_duckdb_file")


def _connect(path: str, encryption_key: str | None, render: _Renderer) -> duckdb.DuckDBPyConnection:
    _check_is_duckdb(path)
    try:
        if not encryption_key:
            return _quiet(duckdb.connect(path), render)
        connection = _quiet(duckdb.connect(), render)
        try:
            _load_crypto(connection)
            _spill_encrypted_beside(connection, path, render)
            connection.execute(render(schema.attach_encrypted(path, "portrait", encryption_key)))
            connection.execute(render(schema.USE_PORTRAIT))
        except BaseException:
            connection.close()
            raise
        return connection
    except duckdb.Error as exc:
        raise _open_problem(path, exc) from exc


def _quiet(connection: duckdb.DuckDBPyConnection, render: _Renderer) -> duckdb.DuckDBPyConnection:
    try:
        connection.execute(render(schema.NO_PROGRESS_BAR))
    except BaseException:  # Ctrl-C: the connection is not kept open for nobody
        connection.close()
        raise
    return connection


def _open_problem(path: str, exc: duckdb.Error, key_name: str = KEY_VARIABLE) -> PortraitError:
    """The clear error for a database file that could not be opened (or attached, to be compacted) with the key
    from the environment variable ``key_name``."""
    if not isinstance(exc, duckdb.IOException):
        return _key_problem(path, str(exc), key_name)
    text = str(exc)
    if "Could not read enough bytes" in text:  # its header names blocks past the end of the file
        return PortraitError(f"cannot open the database {path}: the file is shorter than DuckDB's own record of it "
                             "says (cut short: a copy that did not finish, a full disk?); nothing was changed. Restore "
                             "a backup (`portrait restore`, see docs/backups.md); DuckDB said: "
                             f"{text.removeprefix('IO Error: ')}", code="database_damaged")
    if "could not set lock" not in text.lower():  # no such folder, a folder, no permission...
        return PortraitError(f"cannot open the database {path}: {text.removeprefix('IO Error: ')}",
                             code="database_unreadable")
    pid = _LOCK_PID.search(text)
    holder = f"process {pid.group(1)}" if pid else "another process"
    return DatabaseInUse(f"the database {path} is in use by {holder} (normally a running `portrait serve`; an "
                         "embedded database has one writer).")


def _key_problem(path: str, text: str, key_name: str) -> PortraitError:
    """The clear error for an encryption key that is missing, wrong, or given for a plain database; nothing is
    changed on disk in any of these cases."""
    if "without a key" in text:
        return PortraitError(f"the database {path} is encrypted: set {key_name} to its key",
                             code="encryption_key_missing")
    if "Wrong encryption key" in text:
        return PortraitError(f"{key_name} is not the key of the database {path}; nothing was changed",
                             code="encryption_key_wrong")
    if "is not encrypted" in text:
        advice = (", or encrypt it first with `portrait encrypt`" if key_name == KEY_VARIABLE
                  else " (a plain database has no previous key)")
        return PortraitError(f"the database {path} is not encrypted: unset {key_name}{advice}",
                             code="database_not_encrypted")
    return PortraitError(f"cannot open the database {path}: {text}", code="database_error")


def _load_crypto(connection: duckdb.DuckDBPyConnection) -> None:
    """DuckDB writes encrypted files only with OpenSSL, which comes with its httpfs extension: loaded from the
    installed ``duckdb-extension-httpfs`` package (a signed extension; nothing is downloaded)."""
    import duckdb_extension_httpfs

    found = sorted((Path(duckdb_extension_httpfs.__file__).parent / "extensions").glob("*/httpfs.duckdb_extension"))
    if not found:
        raise PortraitError("the duckdb-extension-httpfs package has no extension file; reinstall Portrait",
                            code="database_error")
    connection.load_extension(str(found[-1]))


def _spill_encrypted_beside(connection: duckdb.DuckDBPyConnection, path: str, render: _Renderer) -> None:
    """Query work that does not fit in memory spills into ``<database>.tmp`` (as a plain database's does),
    encrypted (see schema.ENCRYPT_SPILLS). Encryption is turned on before the folder is set: DuckDB refuses to
    turn it on while the spill folder holds files, and a crash leaves them there (DuckDB deletes them once it
    spills again)."""
    connection.execute(render(schema.NO_TEMP_DIRECTORY))
    connection.execute(render(schema.ENCRYPT_SPILLS))
    connection.execute(render(schema.temp_directory(path + ".tmp")))


def open_store(path: str, encryption_key: str | None = None, *, checkpoint_wal_mb: int | None = None,
               memory_limit_mb: int | None = None) -> DuckDBStore:
    return DuckDBStore(path, encryption_key, checkpoint_wal_mb=checkpoint_wal_mb, memory_limit_mb=memory_limit_mb)


def compaction_marker(path: str) -> Path:
    return Path(path + ".compact-pending")


def mark_for_compaction(path: str) -> None:
    """Ask for the database file to be rewritten when it is next closed or opened (see :func:`compact_file`)."""
    if path != ":memory:":
        compaction_marker(path).touch()


def compact_if_marked(path: str, encryption_key: str | None = None) -> bool:
    """Rewrite the file if an erasure asked for it (call with no connection open); True when it did."""
    marker = compaction_marker(path)
    if not marker.exists() or not Path(path).exists():
        return False
    with _rewriting(path):
        if not marker.exists():  # another process rewrote it while this one waited
            return False
        _compact(path, encryption_key, encryption_key, KEY_VARIABLE)
        marker.unlink()
    return True


def compact_file(path: str, old_key: str | None = None, new_key: str | None = None, *,
                 old_key_name: str = KEY_VARIABLE) -> None:
    """Copy every table, sequence and index into a new file and put it in place of the old one, so bytes of deleted
    rows (erased people) are gone from disk -- or, with a different ``new_key``, so the file becomes encrypted
    (or encrypted with another key). The old file is replaced only once the copy is complete. ``old_key_name``
    is the variable ``old_key`` came from, for the error if it does not open the file."""
    with _rewriting(path):
        _compact(path, old_key, new_key, old_key_name)


def copy_encrypted(source: str, target: str, key: str) -> bool:
    """Copy the plain database file ``source`` (a backup: only read) into the new file ``target``, encrypted with
    ``key``, so that no plain copy of it is ever written; False, with nothing written, when ``source`` is
    encrypted already."""
    try:
        _copy(source, target, None, key, KEY_VARIABLE, spill_beside=target, read_only=True)
    except PortraitError as exc:
        if exc.code != "encryption_key_missing":
            raise
        Path(target).unlink(missing_ok=True)
        return False
    return True


def opens_with(path: str, key: str) -> bool:
    """Whether ``key`` is the key of the encrypted database file ``path`` (read only: nothing is changed)."""
    connection = duckdb.connect()
    try:
        _load_crypto(connection)
        connection.execute(_Renderer("duckdb")(schema.attach_encrypted(path, "old", key, read_only=True)))
    except duckdb.Error:
        return False
    finally:
        connection.close()
    return True


@contextmanager
def _rewriting(path: str) -> Iterator[None]:
    """One rewrite of a database file at a time, across processes. A second one -- a CLI command or a restarted
    server opening the file while a stopping server rewrites it after an erasure -- deleted the first one's copy
    and started its own under the same name, which the first then put in place of the database while it was still
    being written: the database was an empty file if the second process stopped before finishing. A lock on a
    file beside the database (never deleted: that would let two processes hold it); the system releases it when
    its process ends, however it ends."""
    if path == ":memory:" or not Path(path).is_file():  # nothing to rewrite: the copy says why
        yield
        return
    try:
        lock = open(path + ".compact-lock", "ab")  # noqa: SIM115 -- closed below
    except OSError as exc:
        raise PortraitError(f"cannot rewrite the database {path}: {exc.strerror or exc} (its folder must be "
                            "writable)", code="folder_not_writable") from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # waits for the other rewrite (seconds for a large file)
        yield


def _compact(path: str, old_key: str | None, new_key: str | None, old_key_name: str) -> None:
    if not Path(path).is_file():  # attached for writing below, DuckDB would make a new, empty one
        raise PortraitError(f"cannot open the database {path}: there is no such file", code="database_unreadable")
    target = path + ".compacting"
    Path(target).unlink(missing_ok=True)
    try:
        _copy(path, target, old_key, new_key, old_key_name, spill_beside=path)
    except BaseException:  # Ctrl-C, a full disk: a copy cut short is of no use, and holds what the database does
        Path(target).unlink(missing_ok=True)
        Path(target + ".wal").unlink(missing_ok=True)
        raise
    os.replace(target, path)
    Path(path + ".wal").unlink(missing_ok=True)


def _copy(source: str, target: str, old_key: str | None, new_key: str | None, old_key_name: str, *,
          spill_beside: str, read_only: bool = False) -> None:
    """Every table, sequence and index of ``source`` into the new file ``target``, each with its key (None:
    plain), in a connection of its own that spills, if either file is encrypted, into ``<spill_beside>.tmp``,
    encrypted (the in-memory database's own spill folder is ``.tmp`` in the working folder, in plain text). Not under
    PORTRAIT_MEMORY_LIMIT_MB: the copy builds each index whole in memory, which cannot spill (a 3-million-key
    index did not fit in 300 MB), and a rewrite after an erasure that failed would fail again at every start."""
    render = _Renderer("duckdb")
    connection = _quiet(duckdb.connect(), render)
    try:
        with _interruptions_passed_on():
            _copy_attached(connection, render, source, target, old_key, new_key, spill_beside=spill_beside,
                           read_only=read_only)
    except duckdb.Error as exc:  # e.g. a server holds the file: the CLI then goes through it (DatabaseInUse)
        raise _open_problem(source, exc, old_key_name) from exc
    finally:
        connection.close()


def _copy_attached(connection: duckdb.DuckDBPyConnection, render: _Renderer, source: str, target: str,
                   old_key: str | None, new_key: str | None, *, spill_beside: str, read_only: bool) -> None:
    if old_key or new_key:
        _load_crypto(connection)
        _spill_encrypted_beside(connection, spill_beside, render)
    # Attached for writing, to write a write-ahead log left beside it (a crash before this rewrite) into it
    # first: that log must be gone before the new file takes the old one's place, or DuckDB replays it into the
    # new file at the next opening if this process ends between the replace and its removal in _compact (every row of
    # it twice; a database that no longer opens, on duplicate keys). A backup is only read.
    connection.execute(render(schema.attach_encrypted(source, "old", old_key, read_only=read_only) if old_key
                              else schema.attach(source, "old", read_only=read_only)))
    if not read_only:
        connection.execute(render(schema.CHECKPOINT_OLD))
    connection.execute(render(schema.attach_encrypted(target, "new", new_key) if new_key
                              else schema.attach(target, "new")))
    connection.execute(render(schema.COPY_DATABASE))
