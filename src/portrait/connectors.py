"""Reading rows out of other databases (SQL sources): PostgreSQL through psycopg, SQLite through the standard library.

A connector runs one read-only query and hands its rows back in chunks (a server-side cursor on PostgreSQL, so a
table of millions of rows never sits in memory). Connection URLs carry passwords: :func:`redact` is the only form
of a URL that may be shown or logged, and every error raised here has the password taken out.
"""

from __future__ import annotations

import base64
import math
import re
import sqlite3
from collections.abc import Callable, Iterator
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit
from uuid import UUID

import psycopg
from psycopg.adapt import Loader

from portrait.errors import BadRequest, SourceUnavailable

DIALECTS = {"postgresql": "postgres", "postgres": "postgres", "sqlite": "sqlite"}


class Connector(Protocol):
    dialect: str

    def chunks(self, query: str, size: int) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]:
        """Column names and up to ``size`` rows at a time, in the query's order."""

    def columns(self, query: str) -> list[str]:
        """The column names of a query's result (run it with ``LIMIT 0``)."""

    def close(self) -> None: ...


def dialect_of(url: str) -> str:
    """The SQLGlot dialect of a source URL; BadRequest for a scheme we cannot read, or a URL libpq would misread."""
    try:
        scheme = urlsplit(url).scheme.split("+")[0].lower()
    except ValueError as exc:  # e.g. an IPv6 host without its closing bracket; the message does not repeat the URL
        raise BadRequest(f"the source URL cannot be read: {exc}", code="invalid_source") from None
    if scheme not in DIALECTS:
        raise BadRequest(f"a source URL starts with postgresql:// or sqlite:///, not {scheme or 'nothing'}://",
                         code="invalid_source")
    if DIALECTS[scheme] == "postgres":
        _check_userinfo(url)
    return DIALECTS[scheme]


def _check_userinfo(url: str) -> None:
    """libpq ends the user name and password at the first '@' (or at a '/' before any '@'), while :func:`redact`
    reads up to the last '@'. A raw '@' or '/' in them (``user@server:pw@host``, as Azure names users) made libpq
    take part of the password for the host, port or database -- and print it in its errors -- and left the URL
    unredacted. Such URLs are refused, without repeating them."""
    userinfo, at, _ = url.partition("://")[2].rpartition("@")
    if at and ("@" in userinfo or "/" in userinfo):
        raise BadRequest("a '@' or '/' in the URL's user name or password must be percent-encoded (%40, %2F), "
                         "as must any '@' elsewhere in the URL", code="invalid_source")


# Where a URL carries a password: between the user name and the last "@" before the host(s) -- read on the text,
# not with urlsplit, which stops at a literal "#" in a password and refuses multi-host URLs or odd ports -- and
# as a password= (or sslpassword=) query parameter, which libpq reads too.
_USERINFO_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:@/]*:)(?P<secret>.*)(?P<tail>@[^@]*)$",
                                re.DOTALL)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:ssl)?password=)(?P<secret>[^&]*)", re.IGNORECASE)


# A SQLAlchemy-style "+driver" after the scheme (postgresql+psycopg2://, sqlite+pysqlite:///), as in apps' settings.
_DRIVER = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9.-]*)\+[A-Za-z0-9.-]*://")


def redact(url: str) -> str:
    """The URL with its passwords replaced by ``***`` (the only form ever shown or logged)."""
    url = _USERINFO_PASSWORD.sub(r"\g<head>***\g<tail>", url)
    return _QUERY_PASSWORD.sub(r"\g<head>***", url)


def _secrets(url: str) -> set[str]:
    found = [m.group("secret") for m in (_USERINFO_PASSWORD.match(url), *_QUERY_PASSWORD.finditer(url)) if m]
    return {form for secret in found if secret for form in (secret, unquote(secret)) if form}


def scrub(text: str, url: str) -> str:
    """``text`` (an error message) without the URL's passwords, in case a driver quoted them. Only where one stands
    as a whole (no letter or digit glued to either end): a short password ("pw", "a") is also a piece of ordinary
    words, and replacing it everywhere made the message unreadable ("connection to server ***t ...")."""
    for secret in sorted(_secrets(url), key=len, reverse=True):
        text = re.sub(rf"(?<!\w){re.escape(secret)}(?!\w)", "***", text)
    return text


def absolute(url: str) -> str:
    """A SQLite URL with a relative path made absolute, from the folder of the process defining the source: the server
    and a CLI run from another folder would each read another file. Other URLs as they are."""
    plain_url = _DRIVER.sub(r"\g<scheme>://", url, count=1)
    if dialect_of(url) != "sqlite" or not plain_url.startswith("sqlite:///") or plain_url.startswith("sqlite:////"):
        return url
    return f"sqlite:///{Path(urlsplit(plain_url).path[1:]).resolve()}"


def connect(url: str, *, timeout: float = 10.0) -> Connector:
    dialect = dialect_of(url)
    plain_url = _DRIVER.sub(r"\g<scheme>://", url, count=1)  # libpq and the SQLite reader know no "+driver"
    try:
        if dialect == "sqlite":
            return SqliteConnector(plain_url)
        return PostgresConnector(plain_url, timeout)
    except (psycopg.Error, sqlite3.Error, OSError) as exc:
        raise SourceUnavailable(f"cannot connect to {redact(url)}: {scrub(str(exc).strip(), url)}") from exc


def _or_text(loader: type[Any]) -> type[Loader]:
    """``loader``, except that a value Python's types cannot hold comes as PostgreSQL writes it. psycopg refuses
    'infinity' and '-infinity' dates and timestamps, dates before year 1 ('0044-03-15 BC') or past 9999, and a time
    of '24:00:00', all of which PostgreSQL stores: the error failed the whole chunk, and every later sync at it.
    It wraps the loader psycopg has (its C one where installed: a Python subclass read 300,000 rows of three times
    five times slower), rather than subclassing the pure-Python one."""

    class OrText(Loader):
        def __init__(self, oid: int, context: Any = None) -> None:
            super().__init__(oid, context)
            self._load = loader(oid, context).load

        def load(self, data: Any) -> Any:
            try:
                return self._load(data)
            except psycopg.DataError:
                return bytes(data).decode()

    OrText.__name__ = OrText.__qualname__ = f"{loader.__name__}OrText"
    return OrText


_TIME_TYPES = ("date", "timestamp", "timestamptz", "time", "timetz")


class PostgresConnector:
    dialect = "postgres"

    def __init__(self, url: str, timeout: float) -> None:
        self._url = url
        self._connection = psycopg.connect(url, connect_timeout=max(1, int(timeout)),
                                           application_name="portrait-source")
        self._connection.read_only = True  # a source query can never change the source
        adapters = self._connection.adapters
        for name in _TIME_TYPES:  # text format: the server-side cursor reads text
            oid = adapters.types[name].oid
            loader = adapters.get_loader(oid, psycopg.pq.Format.TEXT)
            if loader is not None:
                adapters.register_loader(oid, _or_text(loader))

    def chunks(self, query: str, size: int) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]:
        try:
            with self._connection.transaction(), self._connection.cursor(name="portrait_source") as cursor:
                cursor.itersize = size
                cursor.execute(query.encode())
                names = [column.name for column in cursor.description or ()]
                while rows := cursor.fetchmany(size):
                    yield names, rows
        except psycopg.Error as exc:
            raise SourceUnavailable(f"the source query failed: {scrub(str(exc).strip(), self._url)}") from exc

    def columns(self, query: str) -> list[str]:
        try:
            with self._connection.transaction(), self._connection.cursor() as cursor:
                cursor.execute(query.encode())
                return [column.name for column in cursor.description or ()]
        except psycopg.Error as exc:
            raise SourceUnavailable(f"the source query failed: {scrub(str(exc).strip(), self._url)}") from exc

    def close(self) -> None:
        self._connection.close()


class SqliteConnector:
    dialect = "sqlite"

    def __init__(self, url: str) -> None:
        path = Path(urlsplit(url).path[1:] if url.startswith("sqlite:///") else urlsplit(url).path)
        if not path.is_file():
            raise SourceUnavailable(f"no SQLite database at {path}")
        self._connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)

    def chunks(self, query: str, size: int) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]:
        try:
            cursor = self._connection.execute(query)
            names = [column[0] for column in cursor.description or ()]
            while rows := cursor.fetchmany(size):
                yield names, rows
        except sqlite3.Error as exc:
            raise SourceUnavailable(f"the source query failed: {exc}") from exc

    def columns(self, query: str) -> list[str]:
        try:
            return [column[0] for column in self._connection.execute(query).description or ()]
        except sqlite3.Error as exc:
            raise SourceUnavailable(f"the source query failed: {exc}") from exc

    def close(self) -> None:
        self._connection.close()


INT64 = range(-(2**63), 2**63)


def _whole(value: Decimal) -> int | str:
    """A whole number as JSON can carry it: beyond 64 bits (a numeric(38, 0) id) as exact text, not a failed sync."""
    number = int(value)
    return number if number in INT64 else str(number)


def cursor_value(value: Any) -> Any:
    """A cursor's value as saved, for the next sync's "at or past": as :func:`plain`, except a decimal that its float
    does not give back exactly (17 digits and more) -- rounded up, the rows at that value were not read again
    (a gap after an interrupted sync) -- which stays exact text (the source compares it as a number)."""
    number = plain(value, nonfinite=AS_TEXT)  # a NaN cursor saved as null made every sync read all again
    if isinstance(value, Decimal) and isinstance(number, float) and Decimal(repr(number)) != value:
        return str(value)
    return number


# JSON has no NaN or infinite number; orjson writes them as null, which removes a trait.
AS_TEXT = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}  # as PostgreSQL writes them (a cursor's value)
# In a message: NaN is no value, as NULL (and NaN in a CSV file) is; an infinite number is text, as the API keeps
# 1e400, a number too large for a double.
AS_SENT = {"nan": None, "inf": "Infinity", "-inf": "-Infinity"}


def plain(value: Any, moment: Callable[[datetime], str] = datetime.isoformat, *,
          nonfinite: dict[str, Any] | None = None) -> Any:
    """A database value as JSON: numbers, text, ISO times, lists and objects (bytes as base64). ``moment`` writes
    datetimes (``isoformat()`` by default: the form message ids and cursors were saved in); ``nonfinite`` (by
    ``repr``: ``nan``, ``inf``, ``-inf``) NaN and infinite numbers, kept as floats without it."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return nonfinite[repr(value)] if nonfinite is not None and not math.isfinite(value) else value
    if isinstance(value, Decimal):  # by the column's scale, so one column keeps one JSON type
        if not value.is_finite():
            return plain(float(value), nonfinite=nonfinite)
        exponent = value.as_tuple().exponent
        return _whole(value) if isinstance(exponent, int) and exponent >= 0 else float(value)
    if isinstance(value, datetime):
        return moment(value)
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dict):
        return {str(k): plain(v, moment, nonfinite=nonfinite) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [plain(v, moment, nonfinite=nonfinite) for v in value]
    return str(value)
