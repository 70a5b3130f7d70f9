"""SQL sources: queries on other databases (a CRM's PostgreSQL, a shop's SQLite) synchronized into the event log.

A source is a SELECT, a kind (``profiles``: each row an identify; ``events``: each row a track) with a column
mapping (as for file imports), an optional cursor column (``updated_at``, an increasing id) and an optional
schedule. A sync reads the rows at or past the saved cursor, in cursor order, chunk by chunk; after each chunk is
committed to the log, the cursor moves to the chunk's last value. So a sync that fails half-way resumes where it
stopped: the rows of the last value are read again, and -- their message ids being derived from the source and the
row's content -- come back as duplicates that are dropped. No gaps, no duplicates.

Rows whose content changed (an updated customer) get a new id, so they arrive as a new identify/track; unchanged
rows read again add nothing, which also makes a source without a cursor (read whole each time) idempotent.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import orjson

from portrait.background import Worker
from portrait.connectors import AS_SENT, Connector, absolute, connect, cursor_value, dialect_of, plain, redact
from portrait.errors import BadRequest, Conflict, NotFound, PortraitError
from portrait.mapping import RowMapping, api_time, rows_to_messages
from portrait.spec import utc_now
from portrait.sql import sources as q
from portrait.store import Session

log = logging.getLogger(__name__)
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
EVERY = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
INTERRUPTED = "interrupted (the server stopped); the next sync resumes from the saved cursor"


def parse_every(text: Any) -> int | None:
    """``15m`` -> 900 seconds (units s, m, h, d); None for no schedule."""
    if text is None or text == "":
        return None
    match = EVERY.match(text) if isinstance(text, str) else None
    if not match or int(match.group(1)) == 0:
        raise BadRequest(f"--every takes a duration such as 30s, 15m, 6h or 1d, not {text!r}", code="invalid_source")
    return int(match.group(1)) * UNIT_SECONDS[match.group(2)]


def format_every(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    for unit in ("d", "h", "m"):
        if seconds % UNIT_SECONDS[unit] == 0:
            return f"{seconds // UNIT_SECONDS[unit]}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class Source:
    name: str
    kind: str
    url: str  # with its password: never shown; see :meth:`public`
    query: str
    mapping: RowMapping
    cursor: str | None = None
    every_seconds: int | None = None

    def check(self) -> None:
        """Everything that can be checked without connecting; BadRequest says what is wrong."""
        if not NAME.match(self.name):
            raise BadRequest(f"a source name is lower-case letters, digits, '-' and '_' (at most 63), not "
                             f"{self.name!r}", code="invalid_source")
        if self.kind not in ("profiles", "events"):
            raise BadRequest(f"--kind is profiles or events, not {self.kind!r}", code="invalid_source")
        q.source_query(self.query, dialect_of(self.url))

    def check_columns(self, columns: list[str]) -> None:
        twice = sorted({c for c in columns if columns.count(c) > 1})
        if twice:  # each row would keep one of the values; and the cursor's wrapping query cannot name them
            raise BadRequest(f"the query returns more than one column named {', '.join(twice)}: name them apart "
                             "(SELECT c.*, o.updated_at AS ordered_at ...)", code="invalid_source")
        if self.cursor is not None and self.cursor not in columns:
            raise BadRequest(f"the query returns no cursor column {self.cursor!r}; it returns "
                             f"{', '.join(columns)}", code="invalid_source")
        self.mapping.check(columns, holder="the query returns")


SOURCE_FIELDS = {"name", "kind", "url", "query", "cursor", "every", "mapping"}


def source_from_fields(fields: dict[str, Any]) -> Source:
    """A source from the API/CLI form: name, kind, url, query, optional cursor, every ("15m") and mapping."""
    unknown = set(fields) - SOURCE_FIELDS
    if unknown:
        raise BadRequest(f"unknown source fields {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(sorted(SOURCE_FIELDS))}", code="invalid_source")
    missing = [name for name in ("name", "kind", "url", "query") if not fields.get(name)]
    if missing:
        raise BadRequest(f"a source needs {', '.join(missing)}", code="invalid_source")
    if not all(isinstance(fields[name], str) for name in ("name", "kind", "url", "query")):
        raise BadRequest("a source's name, kind, url and query are text", code="invalid_source")
    kind = fields["kind"]
    mapping = RowMapping.from_document(fields.get("mapping") or {}, kind) if kind in ("profiles", "events") else None
    return Source(name=fields["name"], kind=kind, url=absolute(fields["url"]), query=fields["query"],
                  mapping=mapping or RowMapping("profiles"), cursor=fields.get("cursor") or None,
                  every_seconds=parse_every(fields.get("every")))


@dataclass
class SyncReport:
    """What one sync did."""

    source: str
    rows: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    cursor: Any = None
    seconds: float = 0.0
    by_code: dict[str, int] = field(default_factory=dict)  # the rejected rows by rejection code

    def add(self, rows: int, stored: int, duplicates: int, rejected_codes: list[str]) -> None:
        self.rows += rows
        self.stored += stored
        self.duplicates += duplicates
        self.rejected += len(rejected_codes)
        for code in rejected_codes:
            self.by_code[code] = self.by_code.get(code, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "rows": self.rows, "stored": self.stored, "duplicates": self.duplicates,
                "rejected": self.rejected, "by_code": self.by_code, "cursor": self.cursor, "seconds": self.seconds}


class SourceRegistry:
    """The ``sources`` table: definitions and their sync state."""

    def __init__(self, session: Callable[[], Session]) -> None:
        self._session = session

    def add(self, source: Source) -> None:
        if self._session().execute(q.GET, [source.name]):
            raise Conflict(f"a source named {source.name!r} exists already", code="source_exists")
        mapping = orjson.dumps(source.mapping.to_document()).decode()
        self._session().execute(q.INSERT, [source.name, source.kind, source.url, source.query, source.cursor,
                                           source.every_seconds, mapping, utc_now(), None, "never", None, None,
                                           None, 0, 0])

    def remove(self, name: str) -> None:
        self.get(name)
        self._session().execute(q.DELETE, [name])

    def get(self, name: str) -> Source:
        return _source(self._row(name))

    def state(self, name: str) -> dict[str, Any]:
        return _public(self._row(name))

    def all(self) -> list[dict[str, Any]]:
        return [_public(row) for row in self._session().execute(q.LIST)]

    def cursor_value(self, name: str) -> Any:
        text = self._row(name)[COLUMN["cursor_value"]]
        return None if text is None else orjson.loads(text)

    def mark_running(self, name: str, now: datetime) -> None:
        self._session().execute(q.MARK_RUNNING, [now, name])

    def advance(self, name: str, cursor: Any, rows: int) -> None:
        """Save the cursor after a chunk is committed (JSON, so numbers stay numbers and times stay text)."""
        value = None if cursor is None else orjson.dumps(cursor).decode()
        self._session().execute(q.ADVANCE, [value, rows, rows, name])

    def finish(self, name: str, status: str, error: str | None) -> None:
        self._session().execute(q.FINISH, [status, utc_now(), error, name])

    def due(self, now: datetime) -> list[str]:
        return [row[0] for row in self._session().execute(q.DUE, [now])]

    def mark_interrupted(self) -> None:
        self._session().execute(q.INTERRUPTED, [INTERRUPTED])

    def _row(self, name: str) -> tuple[Any, ...]:
        rows = self._session().execute(q.GET, [name])
        if not rows:
            raise NotFound(f"no source is named {name!r}")
        return rows[0]


COLUMN = {name: index for index, name in enumerate(q.COLUMNS)}


def _source(row: tuple[Any, ...]) -> Source:
    value = dict(zip(q.COLUMNS, row, strict=True))
    return Source(name=value["name"], kind=value["kind"], url=value["url"], query=value["query"],
                  mapping=RowMapping.from_document(orjson.loads(value["mapping"]), value["kind"]),
                  cursor=value["cursor_column"], every_seconds=value["every_seconds"])


def _public(row: tuple[Any, ...]) -> dict[str, Any]:
    """A source as shown by the API and CLI: the URL without its password."""
    value = dict(zip(q.COLUMNS, row, strict=True))
    return {
        "name": value["name"], "kind": value["kind"], "url": redact(value["url"]), "query": value["query"],
        "cursor": value["cursor_column"], "every": format_every(value["every_seconds"]),
        "mapping": orjson.loads(value["mapping"]),
        "cursor_value": None if value["cursor_value"] is None else orjson.loads(value["cursor_value"]),
        "status": value["status"], "last_started_at": _iso(value["last_started_at"]),
        "last_finished_at": _iso(value["last_finished_at"]), "last_error": value["last_error"],
        "last_rows": value["last_rows"], "total_rows": value["total_rows"],
        "created_at": _iso(value["created_at"]),
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds") + "Z"


@dataclass
class Chunk:
    """Messages made from one chunk of source rows, and the cursor value of its last row."""

    messages: list[Any]  # dicts, and the rows rejected as read (portrait.spec.Unreadable)
    cursor: Any


def read_chunks(source: Source, connector: Connector, after: Any, size: int) -> Generator[Chunk, None, None]:
    """The source's rows at or past ``after`` as messages with content-derived ids, chunk by chunk."""
    query = q.incremental(source.query, connector.dialect, source.cursor, after)
    copies: dict[bytes, int] = {}
    checked = False
    current: Any = copies  # the cursor value of the rows read last (nothing is the dict itself)
    for names, rows in connector.chunks(query, size):
        if not checked:
            source.check_columns(names)
            checked = True
        position = names.index(source.cursor) if source.cursor else None
        records = [{name: plain(value) for name, value in zip(names, row, strict=True)} for row in rows]
        # A time the query returns as a time is read as it is; a timestamp_format is for times returned as text.
        keep = source.mapping.timestamp if source.mapping.timestamp_format else None
        cells = [_as_sent(names, row, record, keep) for row, record in zip(rows, records, strict=True)]
        messages = []
        for row, record, message in zip(rows, records, rows_to_messages(cells, source.mapping), strict=True):
            if position is not None and row[position] != current and not _both_nan(row[position], current):
                # Rows come in cursor order, and rows alike share their cursor value: past it, none can come again,
                # so the copies are counted per value (memory for a tie, not for every row synced).
                copies.clear()
                current = row[position]
            if message.__class__ is dict and "messageId" not in message:  # not a dict: a row rejected as read
                message["messageId"] = _message_id(source.name, record, copies)
            messages.append(message)
        last = cursor_value(rows[-1][names.index(source.cursor)]) if source.cursor else None
        yield Chunk(messages, last)


def _as_sent(names: list[str], row: tuple[Any, ...], record: dict[str, Any], keep: str | None = None) -> dict[str, Any]:
    """The row's values as its message carries them: times as the API writes them (``...12.345Z``, UTC), NaN as no
    value (as NULL; it was null, which removes a trait) and infinite numbers as text. The record keeps
    ``isoformat()`` and the numbers (orjson writes them null), as rows were written before: their message ids derive
    from it (so a re-sync of rows synced before adds nothing), and the cursor saved from it is what the next sync
    compares with. The date or datetime of column ``keep`` (the event's time, where the mapping has a timestamp_format)
    stays a datetime: written as text it was read by the format, which rejected it."""
    timed = {name: plain(value, api_time, nonfinite=AS_SENT) for name, value in zip(names, row, strict=True)
             if isinstance(value, datetime | list | dict | float | Decimal)}  # a list: of timestamps
    if keep is not None and isinstance(kept := row[names.index(keep)], date):
        timed[keep] = kept
    return {**record, **timed} if timed else record


def _both_nan(value: Any, other: Any) -> bool:
    """NaN is not equal to itself: rows at a NaN cursor counted each as a new value, and identical ones got one id."""
    return bool(value != value and other != other)  # the test for NaN, for floats and Decimals alike


def _message_id(source: str, record: dict[str, Any], copies: dict[bytes, int]) -> str:
    """``source-<name>-<sha1 of the row>-<n>``: the same row read again gets the same id (then is dropped)."""
    digest = hashlib.sha1(orjson.dumps(record, option=orjson.OPT_SORT_KEYS)).digest()
    copy = copies.get(digest, 0)
    copies[digest] = copy + 1
    return f"source-{source}-{digest.hex()}-{copy}"


def probe_columns(source: Source, timeout: float = 10.0) -> list[str]:
    """Connect and learn the query's columns (checking the URL, credentials and query on the way)."""
    connector = connect(source.url, timeout=timeout)
    try:
        return connector.columns(q.probe(source.query, connector.dialect))
    finally:
        connector.close()


class SourceScheduler(Worker):
    """Runs due syncs in the background (in the server), one at a time, checking every ``poll`` seconds."""

    def __init__(self, due: Callable[[], list[str]], sync: Callable[[str], SyncReport], poll: float) -> None:
        super().__init__("portrait-sources", interval=poll)
        self._due = due
        self._sync = sync

    def step(self) -> None:
        for name in self._due():
            if self.stopping:
                return
            try:
                report = self._sync(name)
            except PortraitError as exc:
                log.warning("scheduled sync of source %s failed: %s", name, exc.message)
            except Exception:
                log.exception("scheduled sync of source %s failed", name)
            else:
                log.info("source %s synced: %d rows, %d stored", name, report.rows, report.stored)

