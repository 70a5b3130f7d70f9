"""Turning rows of a file (CSV, Parquet, JSON) into Segment messages, so imports take the normal ingestion path.

A mapping says which columns identify the person, which is the event name (or a fixed name), which holds the time,
and which become properties (events) or traits (profiles) -- by default every column not used otherwise. Pure
functions, no I/O.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any

import orjson
import yaml

from portrait.column_types import (
    INVALID_VALUE,
    Misfit,
    check_format,
    checked_types,
    example_in,
    parse_types,
    row_converter,
)
from portrait.errors import BadRequest
from portrait.identity import id_text
from portrait.spec import Unreadable

IDENTIFIER_FIELDS = {"user_id": "userId", "anonymous_id": "anonymousId"}
# The bookkeeping columns Portrait's profile export writes beside the attributes (portrait.exports): a profile
# import leaves them out of the traits, so an export imported back (into another database, or after a rebuild)
# gives the traits it held -- not a custom attribute profile_id holding ids of the old database. (The export's
# other column, user_id, is its identifier: map it with --user-id user_id.)
EXPORT_COLUMNS = ("profile_id",)


@dataclass(frozen=True)
class RowMapping:
    """Which column is what. ``kind`` is ``events`` (track messages) or ``profiles`` (identify messages)."""

    kind: str
    user_id: str | None = None
    anonymous_id: str | None = None
    email: str | None = None
    phone: str | None = None
    event: str | None = None  # a fixed event name for every row
    event_column: str | None = None
    timestamp: str | None = None
    timestamp_format: str | None = None  # strptime format, for times that are not ISO-8601 (e.g. %Y%m%d)
    message_id: str | None = None
    fields: tuple[str, ...] | None = None  # properties/traits columns; None: every column not used otherwise
    identifier_columns: Mapping[str, str] = field(default_factory=dict)  # custom identifier type -> column
    renames: Mapping[str, str] = field(default_factory=dict)  # column -> property/trait name, when they differ
    types: Mapping[str, str] = field(default_factory=dict)  # column -> declared type (portrait.column_types)

    @classmethod
    def from_document(cls, document: Any, kind: str) -> RowMapping:
        """A mapping from its JSON/YAML form (see docs/cli.md, "Mapping files"); BadRequest says what is wrong."""
        if not isinstance(document, Mapping):
            raise BadRequest("a mapping must be an object of settings (identifiers, event, timestamp, ...)",
                             code="invalid_mapping")
        unknown = set(document) - DOCUMENT_KEYS
        if unknown:
            raise BadRequest(f"unknown mapping settings {', '.join(sorted(map(str, unknown)))}; known: "
                             f"{', '.join(sorted(DOCUMENT_KEYS))}", code="invalid_mapping")
        if document.get("kind", kind) != kind:
            raise BadRequest(f"the mapping is for {document['kind']}, not {kind}", code="invalid_mapping")
        identifiers = _text_map(document.get("identifiers", {}), "identifiers")
        builtin = {name: identifiers.pop(name) for name in ("user_id", "anonymous_id", "email", "phone")
                   if name in identifiers}
        fields_, renames = _fields(document.get("traits" if kind == "profiles" else "properties"), kind)
        settings = {name: _text(document.get(name), name) for name in SCALAR_KEYS}
        types = checked_types(document.get("types") or {})
        return cls(kind, fields=fields_, renames=renames, identifier_columns=identifiers, types=types, **builtin,
                   **settings)

    def to_document(self) -> dict[str, Any]:
        """The JSON/YAML form, which :meth:`from_document` reads back to an equal mapping."""
        identifiers = {name: getattr(self, name) for name in ("user_id", "anonymous_id", "email", "phone")
                       if getattr(self, name)}
        document: dict[str, Any] = {"kind": self.kind, "identifiers": {**identifiers, **self.identifier_columns}}
        document.update({name: getattr(self, name) for name in SCALAR_KEYS if getattr(self, name)})
        if self.fields is not None:
            fields_key = "traits" if self.kind == "profiles" else "properties"
            document[fields_key] = ({c: self.renames.get(c, c) for c in self.fields} if self.renames
                                    else list(self.fields))
        if self.types:
            document["types"] = dict(self.types)
        return document

    def check(self, columns: Iterable[str], holder: str = "the file has") -> None:
        """Raise BadRequest naming every mapped column the file does not have, and what is missing; ``holder`` says
        what lacks it (a source's query "returns")."""
        present = set(columns)
        wanted = [c for c in (self.user_id, self.anonymous_id, self.email, self.phone, self.event_column,
                              self.timestamp, self.message_id, *(self.fields or ()),
                              *self.identifier_columns.values()) if c]
        missing = [c for c in [*wanted, *self.types] if c not in present]
        if missing:
            raise BadRequest(f"{holder} no column {', '.join(repr(c) for c in missing)}; it "
                             f"{holder.split()[-1]} {', '.join(sorted(present))}", code="invalid_mapping")
        if not (self.user_id or self.anonymous_id or self.email or self.phone or self.identifier_columns):
            raise BadRequest("say which column identifies the person (--user-id, --anonymous-id, --email, --phone)",
                             code="invalid_mapping")
        if self.kind == "events" and not (self.event or self.event_column):
            raise BadRequest("say which event the rows are (--event NAME or --event-column COLUMN)",
                             code="invalid_mapping")
        self._check_types()
        self._check_timestamp_format()

    def _check_timestamp_format(self) -> None:
        """Refuse a time format that cannot read the times the one way meant, as a declared type's format is refused,
        before any row is read: it used to reject every row as invalid_timestamp instead."""
        if not self.timestamp_format:
            return
        if not self.timestamp:
            raise BadRequest("a timestamp format reads the time column: name it too (--timestamp COLUMN)",
                             code="invalid_mapping")
        check_format(self.timestamp, "timestamp", self.timestamp_format, zone_names=True)

    def _check_types(self) -> None:
        """Refuse a type declared for a column that becomes no property or trait (an id, the event name, the time:
        each is read its own way) -- it would be ignored."""
        used = self.used_columns()
        for column in self.types:
            if column in used or (self.fields is not None and column not in self.fields):
                what = "properties" if self.kind == "events" else "traits"
                raise BadRequest(f"--types names column {column!r}, which is not one of the {what}: a type applies "
                                 f"to a column that becomes a {what[:-1]} (ids, the event name and the time are "
                                 "read their own way)", code="invalid_mapping")

    def identifier_columns_used(self) -> list[str]:
        """The columns whose values identify the person (user and anonymous id, email, phone, custom types)."""
        return [c for c in (self.user_id, self.anonymous_id, self.email, self.phone,
                            *self.identifier_columns.values()) if c]

    def used_columns(self) -> set[str]:
        return {*self.identifier_columns_used(),
                *(c for c in (self.event_column, self.timestamp, self.message_id) if c)}

    def text_columns(self, identity_traits: Iterable[str] = ()) -> list[str]:
        """Columns to read as text, whatever they look like (ids keep leading zeros): the identifier columns and, for
        profiles, those that become a trait named in ``identity_traits`` (which identify the person too)."""
        ids = [c for c in (self.user_id, self.anonymous_id, self.email, self.phone, self.message_id,
                           *self.identifier_columns.values()) if c]
        names = set(identity_traits) if self.kind == "profiles" else set()
        traits = ([c for c in self.fields if self.renames.get(c, c) in names] if self.fields is not None
                  else sorted(names))
        return ids + [c for c in traits if c not in ids]


SCALAR_KEYS = ("event", "event_column", "timestamp", "timestamp_format", "message_id")
DOCUMENT_KEYS = {"kind", "identifiers", "properties", "traits", "types", *SCALAR_KEYS}


def parse_mapping_text(text: str, source: str) -> Any:
    """The document in a YAML or JSON mapping file (JSON is YAML too); BadRequest points at a syntax error."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BadRequest(f"{source} is not valid YAML or JSON: {exc}", code="invalid_mapping") from exc


def combine(kind: str, document: Any | None, fields: str | None, columns: Mapping[str, str | None],
            types: str | None = None) -> RowMapping | None:
    """A mapping document (or none) with the column options laid over it; None means the rows are messages.

    There is a mapping when a document or any column option is given, and always for profiles. ``fields`` is the
    comma-separated form of the property/trait columns, ``types`` of the declared types (``amount=number``), each
    laid over the document's type for that column.
    """
    given: dict[str, Any] = {name: value for name, value in columns.items() if value is not None}
    if fields is not None:
        given.update(fields=tuple(f.strip() for f in fields.split(",") if f.strip()), renames={})
    declared = parse_types(types) if types is not None else {}
    if document is None and kind != "profiles" and not given and not declared:
        return None
    base = RowMapping.from_document(document, kind) if document is not None else RowMapping(kind)
    if declared:
        given["types"] = {**base.types, **declared}
    return dataclasses.replace(base, **given)


def _text(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise BadRequest(f"mapping setting {name!r} must be text, not {value!r}", code="invalid_mapping")


def _text_map(value: Any, name: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise BadRequest(f"mapping setting {name!r} must map names to column names", code="invalid_mapping")
    return dict(value)


def _fields(value: Any, kind: str) -> tuple[tuple[str, ...] | None, dict[str, str]]:
    """Columns that become properties/traits: a list (names kept) or ``{column: name}`` (renamed)."""
    if value is None:
        return None, {}
    if isinstance(value, list) and all(isinstance(c, str) for c in value):
        return tuple(value), {}
    renames = _text_map(value, "traits" if kind == "profiles" else "properties")
    return tuple(renames), {c: n for c, n in renames.items() if c != n}


def rows_to_messages(rows: Iterable[Any], mapping: RowMapping, ids: MessageIds | None = None,
                     before: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None) -> Iterator[Any]:
    """One message per row; what is not a row (an NDJSON line that is not JSON, a number in a JSON array) is passed
    on as it is, for the message reader to reject with what was sent.

    Identifier columns are written as text with :func:`portrait.identity.id_text` (a float 1.0 is ``"1"``). With
    ``ids``, a message without a messageId gets one derived from it as it was mapped before that rule (``"1.0"``),
    so a file imported before gives the same ids again, and importing it once more adds nothing. Likewise for
    Portrait's own export columns (``EXPORT_COLUMNS``), which are no traits unless ``fields`` names them, and for
    times, written as the API writes them (:func:`_plain`) but as ``isoformat()`` in the message ids derive from.
    ``before`` gives a row as the file's reader gave it before (a Parquet reader wrote times as text itself), for
    those ids; without it the row is as it was.

    A row with those columns is a row of Portrait's export, whose columns are attribute codes: an object in one of
    its cells is the value of that object attribute, sent whole. Elsewhere an object column is nested traits, one
    level of which the processor flattens as usual (an ``address`` struct gives ``address_city``) unless its code
    names an object attribute, which takes it whole.
    """
    used = mapping.used_columns()
    skipped = used | set(EXPORT_COLUMNS) if mapping.kind == "profiles" and mapping.fields is None else used
    columns = mapping.identifier_columns_used()
    offsets = "%z" in (mapping.timestamp_format or "")  # times whose offset once did not count (_timestamp_before)
    convert = row_converter(mapping.types) if mapping.types else None
    for row in rows:
        if not isinstance(row, Mapping):
            yield row
            continue
        if convert is not None:
            try:
                row = convert(row)
            except Misfit as exc:  # the row is rejected, with the reason; the others go on
                yield Unreadable("", INVALID_VALUE, str(exc), row=row)
                continue
        if mapping.timestamp_format and (misread := _misread_time(row, mapping)) is not None:
            yield misread
            continue
        exported = skipped is not used and any(row.get(c) is not None for c in EXPORT_COLUMNS)
        message = _message(row, mapping, skipped, id_text, whole=exported)
        if ids is not None:
            floats = any(row.get(c).__class__ is float for c in columns)  # rare: the second mapping only for them
            times = any(isinstance(value, date | time) for value in row.values())
            earlier = before(row) if before is not None and times else row
            message = ids.assign(message, _message(earlier, mapping, used, str if floats else id_text,
                                                   plain=_plain_before, stamp=_timestamp_before)
                                 if floats or exported or times or offsets else None)
        yield message


def _message(row: Mapping[str, Any], mapping: RowMapping, used: set[str], as_text: Callable[[Any], str], *,
             whole: bool = False, plain: Callable[[Any], Any] | None = None,
             stamp: Callable[[Any, str | None], Any] | None = None) -> dict[str, Any]:
    """The row's message; with ``whole``, an object in a cell stays that one trait's value (``_WHOLE_KEY``).
    ``plain`` writes the cells (:func:`_plain` unless given), ``stamp`` the time."""
    plain = plain or _plain
    stamp = stamp or _timestamp
    columns = mapping.fields if mapping.fields is not None else [c for c in row if c not in used]
    values = {mapping.renames.get(c, c): plain(row.get(c)) for c in columns if row.get(c) is not None}
    if whole:
        values = {name: {_WHOLE_KEY: value} if value.__class__ is dict else value for name, value in values.items()}
    message: dict[str, Any] = {"type": "track" if mapping.kind == "events" else "identify"}
    for name, key in IDENTIFIER_FIELDS.items():
        column = getattr(mapping, name)
        if column and row.get(column) not in (None, ""):
            message[key] = as_text(row[column])
    context: dict[str, Any] = {}
    # Email and phone are traits of the person (so they also identify it): on an identify's traits, or in
    # context.traits of an event.
    person = {k: as_text(row[c]) for k, c in (("email", mapping.email), ("phone", mapping.phone))
              if c and row.get(c) not in (None, "")}
    if mapping.kind == "events":
        message["event"] = mapping.event or (None if row.get(mapping.event_column or "") is None
                                             else str(row[mapping.event_column or ""]))
        message["properties"] = values
        if person:
            context["traits"] = person
    else:
        message["traits"] = {**values, **person}
    external = [{"type": kind, "id": as_text(row[column]), "collection": "users", "encoding": "none"}
                for kind, column in mapping.identifier_columns.items() if row.get(column) not in (None, "")]
    if external:
        context["externalIds"] = external
    if context:
        message["context"] = context
    if mapping.timestamp and row.get(mapping.timestamp) is not None:
        message["timestamp"] = stamp(row[mapping.timestamp], mapping.timestamp_format)
    if mapping.message_id and row.get(mapping.message_id) not in (None, ""):
        message["messageId"] = str(row[mapping.message_id])
    return message


# An object trait is flattened one level (address.city -> address_city) unless its code names an object attribute
# where it is processed; an export may be imported where prefs is not defined (yet), and its value, sent as
# {"prefs": {...}}, would land on prefs_*. Under the name "prefs." it lands on prefs itself: the empty last part adds
# nothing to the code (code_for strips the trailing "_"), and a code is never its own parent, so nothing is recorded
# as nested under it. The processor reads this form so whether prefs is defined or not, and it stays: the message
# ids of exports imported before are derived from it.
_WHOLE_KEY = ""


def _timestamp(value: Any, fmt: str | None) -> Any:
    """ISO-8601 text for the wire format; a value that does not parse is passed on for the reader to reject."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, date):
        return value.isoformat() + "T00:00:00Z"
    text = str(value).strip()
    if fmt:
        try:
            parsed = _strptime(text, fmt)
        except ValueError:
            return text
        # A format with %z reads the row's own offset, which counts; UTC only stands in for a missing one.
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).isoformat()
    return text


def _misread_time(row: Mapping[str, Any], mapping: RowMapping) -> Unreadable | None:
    """The rejection of a row whose time the mapping's format does not read, naming the format and an example: passed
    on as text, the message reader rejected it as "not an ISO-8601 date-time", which was not what had been asked."""
    column, fmt = mapping.timestamp or "", mapping.timestamp_format or ""
    value = row.get(column)
    # A date or none is read as it is (see _timestamp); a whole number (20190105 in JSON or Parquet) as its digits.
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        return None
    try:
        _strptime(str(value).strip(), fmt)
    except ValueError:
        return Unreadable("", "invalid_timestamp", f"column {column}: {value!r} is not a time in the format {fmt} "
                                                   f"(like {example_in(fmt)})", row=row)
    return None


@functools.lru_cache(maxsize=4096)
def _strptime(text: str, fmt: str) -> datetime:
    """``datetime.strptime``, with ``%Z`` reading UTC and GMT only (any case), as the docs say: strptime's own also
    takes this machine's zone names (EST and EDT where TZ is New York) and drops them, so 10:00 EST was stored as
    10:00 UTC without a word. A time with another name does not parse: the row is rejected.

    Remembered: a row's time is read when it is checked (:func:`_misread_time`), then again when it is written
    into the message (and once more for its message id), and strptime costs microseconds -- reading it three times
    made mapping 200,000 rows 60% slower. A file's dates also repeat."""
    parts = _PARTS.findall(fmt)
    if "%Z" not in parts:
        return datetime.strptime(text, fmt)
    for name in ("UTC", "GMT"):
        with_name = "".join(name if part == "%Z" else part for part in parts)
        try:
            return datetime.strptime(text, with_name)
        except ValueError:
            continue
    raise ValueError(f"{text!r} has no UTC or GMT where the format has %Z")


_PARTS = re.compile(r"%.?|[^%]+", re.DOTALL)  # a format as its directives and the text between them


def _timestamp_before(value: Any, fmt: str | None) -> Any:
    """The time as imports wrote it before a ``%z`` offset counted (UTC replaced it): message ids derive from it, so
    a file imported then gives the same ids again, and importing it once more adds nothing."""
    if fmt and not isinstance(value, date):
        try:
            return _strptime(str(value).strip(), fmt).replace(tzinfo=UTC).isoformat()
        except ValueError:
            pass
    return _timestamp(value, fmt)


def _plain(value: Any) -> Any:
    """A cell as the wire format has it: a time (a CSV's ISO times, read by Arrow) as :func:`api_time` writes it.
    Written with ``isoformat()`` (``...12.345000+00:00``) before, which no other path wrote: a string attribute then
    held two spellings of one time."""
    if isinstance(value, datetime):
        return api_time(value)
    if isinstance(value, date | time):
        return value.isoformat()
    return value


def api_time(value: datetime) -> str:
    """A time as the API writes times, in UTC with milliseconds (microseconds when it has them) and Z,
    ``2024-01-05T10:11:12.345Z``; one without a zone is UTC, as elsewhere in files and sources."""
    utc = value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    return utc.isoformat(timespec="microseconds" if utc.microsecond % 1000 else "milliseconds") + "Z"


def api_times(value: Any) -> Any:
    """``value`` with the times in it, at any depth, as :func:`api_time` writes them (dates and times of day as
    ``isoformat()``, ``1990-01-02``, ``10:11:12``); the rest as it is."""
    if isinstance(value, datetime):
        return api_time(value)
    if isinstance(value, date | time):
        return value.isoformat()
    if value.__class__ is dict:
        return {key: api_times(item) for key, item in value.items()}
    if value.__class__ is list:
        return [api_times(item) for item in value]
    return value


def _plain_before(value: Any) -> Any:
    """A cell as files imported before times were written as the API writes them had it: their message ids are
    derived from this, so importing such a file again adds nothing."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


class MessageIds:
    """Ids for messages that have none: ``import-<sha1 of the message>-<n>``, the n-th copy of that content.

    Content-derived, so importing the same file again yields the same ids and adds nothing; counted per content, so
    identical rows (two identical purchases on one day) stay two events.
    """

    def __init__(self) -> None:
        self._seen: dict[bytes, int] = {}

    def assign(self, message: Any, basis: Any = None) -> Any:
        """``message`` with its id; derived from ``basis`` when given (the message as an earlier rule made it)."""
        if not isinstance(message, dict) or message.get("messageId"):
            return message
        digest = hashlib.sha1(orjson.dumps(message if basis is None else basis,
                                           option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)).digest()
        copy = self._seen.get(digest[:12], 0)
        self._seen[digest[:12]] = copy + 1
        return {**message, "messageId": f"import-{digest.hex()}-{copy}"}
