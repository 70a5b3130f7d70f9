"""Turning rows of a file (CSV, Parquet, JSON) into Segment messages, so imports take the normal ingestion path.

A mapping says which columns identify the person, which is the event name (or a fixed name), which holds the time,
and which become properties (events) or traits (profiles) -- by default every column not used otherwise. Pure
functions, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import orjson

from portrait.errors import BadRequest

IDENTIFIER_FIELDS = {"user_id": "userId", "anonymous_id": "anonymousId"}


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

    def check(self, columns: Iterable[str]) -> None:
        """Raise BadRequest naming every mapped column the file does not have, and what is missing."""
        present = set(columns)
        wanted = [c for c in (self.user_id, self.anonymous_id, self.email, self.phone, self.event_column,
                              self.timestamp, self.message_id, *(self.fields or ()),
                              *self.identifier_columns.values()) if c]
        missing = [c for c in wanted if c not in present]
        if missing:
            raise BadRequest(f"the file has no column {', '.join(repr(c) for c in missing)}; it has "
                             f"{', '.join(sorted(present))}", code="invalid_mapping")
        if not (self.user_id or self.anonymous_id or self.email or self.phone or self.identifier_columns):
            raise BadRequest("say which column identifies the person (--user-id, --anonymous-id, --email, --phone)",
                             code="invalid_mapping")
        if self.kind == "events" and not (self.event or self.event_column):
            raise BadRequest("say which event the rows are (--event NAME or --event-column COLUMN)",
                             code="invalid_mapping")

    def used_columns(self) -> set[str]:
        return {c for c in (self.user_id, self.anonymous_id, self.email, self.phone, self.event_column,
                            self.timestamp, self.message_id, *self.identifier_columns.values()) if c}

    def text_columns(self) -> list[str]:
        """Columns to read as text, whatever they look like (ids keep leading zeros)."""
        return [c for c in (self.user_id, self.anonymous_id, self.email, self.phone, self.message_id,
                            *self.identifier_columns.values()) if c]


def rows_to_messages(rows: Iterable[Mapping[str, Any]], mapping: RowMapping) -> Iterator[dict[str, Any]]:
    used = mapping.used_columns()
    for row in rows:
        yield _message(row, mapping, used)


def _message(row: Mapping[str, Any], mapping: RowMapping, used: set[str]) -> dict[str, Any]:
    columns = mapping.fields if mapping.fields is not None else [c for c in row if c not in used]
    values = {c: _plain(row.get(c)) for c in columns if row.get(c) is not None}
    message: dict[str, Any] = {"type": "track" if mapping.kind == "events" else "identify"}
    for name, key in IDENTIFIER_FIELDS.items():
        column = getattr(mapping, name)
        if column and row.get(column) not in (None, ""):
            message[key] = str(row[column])
    context: dict[str, Any] = {}
    # Email and phone are traits of the person (so they also identify it): on an identify's traits, or in
    # context.traits of an event.
    person = {k: str(row[c]) for k, c in (("email", mapping.email), ("phone", mapping.phone))
              if c and row.get(c) not in (None, "")}
    if mapping.kind == "events":
        message["event"] = mapping.event or (None if row.get(mapping.event_column or "") is None
                                             else str(row[mapping.event_column or ""]))
        message["properties"] = values
        if person:
            context["traits"] = person
    else:
        message["traits"] = {**values, **person}
    external = [{"type": kind, "id": str(row[column]), "collection": "users", "encoding": "none"}
                for kind, column in mapping.identifier_columns.items() if row.get(column) not in (None, "")]
    if external:
        context["externalIds"] = external
    if context:
        message["context"] = context
    if mapping.timestamp and row.get(mapping.timestamp) is not None:
        message["timestamp"] = _timestamp(row[mapping.timestamp], mapping.timestamp_format)
    if mapping.message_id and row.get(mapping.message_id) not in (None, ""):
        message["messageId"] = str(row[mapping.message_id])
    return message


def _timestamp(value: Any, fmt: str | None) -> Any:
    """ISO-8601 text for the wire format; a value that does not parse is passed on for the reader to reject."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, date):
        return value.isoformat() + "T00:00:00Z"
    text = str(value).strip()
    if fmt:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC).isoformat()
        except ValueError:
            return text
    return text


def _plain(value: Any) -> Any:
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

    def assign(self, message: Any) -> Any:
        if not isinstance(message, dict) or message.get("messageId"):
            return message
        digest = hashlib.sha1(orjson.dumps(message, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)).digest()
        copy = self._seen.get(digest[:12], 0)
        self._seen[digest[:12]] = copy + 1
        return {**message, "messageId": f"import-{digest.hex()}-{copy}"}
