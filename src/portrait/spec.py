"""The wire format: Segment HTTP Tracking API requests -> validated, enriched events and recorded rejections.

This is the only place raw client JSON becomes domain objects. Rules follow Segment's documented behaviour:
a request that cannot be read at all is refused with a 400; a single message that is readable but semantically
invalid is *not* refused (SDKs would drop or re-send the whole batch) but kept as a :class:`Rejection`.
"""

from __future__ import annotations

import base64
import binascii
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from portrait.errors import BadRequest
from portrait.model import MESSAGE_TYPES, Event, Rejection

# Endpoint path -> implied message type (None: a batch or a message that names its own type).
ENDPOINT_TYPES: dict[str, str | None] = {
    "identify": "identify", "i": "identify", "track": "track", "t": "track", "page": "page", "p": "page",
    "screen": "screen", "s": "screen", "group": "group", "g": "group", "alias": "alias", "a": "alias",
}
BATCH_ENDPOINTS = ("batch", "import", "b")
RAW_KEEP_BYTES = 64 * 1024  # how much of an unreadable body we keep for the user to inspect


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_bytes: int
    max_batch_bytes: int
    max_batch_items: int


@dataclass(slots=True)
class ParsedRequest:
    """A readable request: its messages (still raw dicts), the batch-level fields and the write key if in the body."""

    messages: list[Any]
    write_key: str | None
    sent_at: Any
    batch_context: dict[str, Any] | None


def decode_body(raw: bytes, content_encoding: str | None, limits: Limits) -> bytes:
    """Undo Content-Encoding (gzip/deflate) without ever inflating past the batch limit (gzip bombs)."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        body = raw
    elif encoding in ("gzip", "x-gzip", "deflate"):
        body = _inflate(raw, encoding, limits.max_batch_bytes)
    else:
        raise BadRequest(f"Content-Encoding {content_encoding!r} is not supported (use gzip or none)")
    if len(body) > limits.max_batch_bytes:
        raise BadRequest(
            f"request body is {len(body)} bytes; the limit is {limits.max_batch_bytes} bytes", code="body_too_large"
        )
    return body


def _inflate(raw: bytes, encoding: str, limit: int) -> bytes:
    wbits = 16 + zlib.MAX_WBITS if encoding != "deflate" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        body = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"body is not valid {encoding} data: {exc}", code="bad_encoding") from exc
    if len(body) > limit:
        raise BadRequest(f"decompressed body exceeds the limit of {limit} bytes", code="body_too_large")
    if not inflater.eof:
        raise BadRequest(f"{encoding} body is truncated", code="bad_encoding")
    return body


def parse_request(body: bytes, endpoint: str, limits: Limits) -> ParsedRequest:
    """Read the JSON of a request (whatever its Content-Type) into messages; raises BadRequest if unreadable."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(doc, dict):
        raise BadRequest("body must be a JSON object", code="invalid_request")
    write_key = doc.get("writeKey") if isinstance(doc.get("writeKey"), str) else None
    if endpoint in BATCH_ENDPOINTS:
        messages = doc.get("batch")
        if not isinstance(messages, list):
            raise BadRequest("a batch request needs a 'batch' array of messages", code="invalid_request")
        if len(messages) > limits.max_batch_items:
            raise BadRequest(
                f"batch has {len(messages)} messages; the limit is {limits.max_batch_items}", code="batch_too_large"
            )
        context = doc.get("context") if isinstance(doc.get("context"), dict) else None
        return ParsedRequest(messages, write_key, doc.get("sentAt"), context)
    implied = ENDPOINT_TYPES[endpoint]
    message = dict(doc)
    message.setdefault("type", implied)
    return ParsedRequest([message], write_key, None, None)


def raw_preview(body: bytes) -> str:
    """What we keep of an unreadable body: the first 64 KiB as text."""
    text = body[:RAW_KEEP_BYTES].decode("utf-8", errors="replace")
    return text if len(body) <= RAW_KEEP_BYTES else text + f"... [{len(body) - RAW_KEEP_BYTES} more bytes not kept]"


def key_from_basic_auth(header: str | None) -> str | None:
    """The write key is the Basic-auth user name (the password is empty)."""
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.split(":", 1)[0] or None


def parse_time(value: Any) -> datetime | None:
    """An ISO-8601 date-time (``Z`` or offset; naive means UTC) -> naive UTC datetime. Raises ValueError if bad."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO-8601 string, got {type(value).__name__}")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


class _Invalid(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _text_id(message: dict[str, Any], name: str) -> str | None:
    value = message.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _Invalid("invalid_field", f"{name} must be a string or a number, not {type(value).__name__}")
    text = str(value)
    if len(text) > 1024:
        raise _Invalid("invalid_field", f"{name} is longer than 1024 characters")
    return text


def _object(message: dict[str, Any], name: str) -> dict[str, Any]:
    value = message.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Invalid("invalid_field", f"{name} must be a JSON object, not {type(value).__name__}")
    return value


def _time_field(message: dict[str, Any], name: str) -> datetime | None:
    try:
        return parse_time(message.get(name))
    except ValueError as exc:
        raise _Invalid("invalid_timestamp", f"{name} {message.get(name)!r} is not an ISO-8601 date-time") from exc


class MessageReader:
    """Validates and enriches the messages of one request. Create one per request."""

    def __init__(
        self, *, received_at: datetime, source: str, ip: str | None, batch: ParsedRequest, limits: Limits
    ) -> None:
        self.received_at = received_at
        self.source = source
        self.ip = ip
        self.limits = limits
        self.batch = batch
        try:
            self.batch_sent_at = parse_time(batch.sent_at)
        except ValueError:
            self.batch_sent_at = None  # a bad batch-level sentAt only disables skew correction

    def read_all(self, messages: Iterable[Any]) -> tuple[list[Event], list[Rejection]]:
        events: list[Event] = []
        rejections: list[Rejection] = []
        for message in messages:
            try:
                events.append(self.read(message))
            except _Invalid as bad:
                rejections.append(self._reject(message, bad))
        return events, rejections

    def read(self, message: Any) -> Event:
        if not isinstance(message, dict):
            raise _Invalid("invalid_message", f"a message must be a JSON object, not {type(message).__name__}")
        size = len(orjson.dumps(message))
        if size > self.limits.max_message_bytes:
            raise _Invalid(
                "message_too_large", f"message is {size} bytes; the limit is {self.limits.max_message_bytes} bytes"
            )
        kind = message.get("type")
        if kind not in MESSAGE_TYPES:
            raise _Invalid("invalid_type", f"type {kind!r} is not one of {', '.join(MESSAGE_TYPES)}")
        event = self._base(message, kind)
        self._check_required(event)
        return event

    def _base(self, message: dict[str, Any], kind: str) -> Event:
        message_id = _text_id(message, "messageId") or f"portrait-{uuid.uuid4()}"
        original = _time_field(message, "originalTimestamp") or _time_field(message, "timestamp")
        sent_at = _time_field(message, "sentAt") or self.batch_sent_at
        context = _object(message, "context")
        if self.batch.batch_context and not context:
            context = dict(self.batch.batch_context)
        if self.ip and "ip" not in context:
            context = {**context, "ip": self.ip}
        name = message.get("event") if kind == "track" else message.get("name")
        if name is not None and not isinstance(name, str):
            raise _Invalid("invalid_field", f"{'event' if kind == 'track' else 'name'} must be a string")
        return Event(
            message_id=message_id,
            type=kind,
            timestamp=self._corrected_time(original, sent_at),
            received_at=self.received_at,
            event=name or None,
            user_id=_text_id(message, "userId"),
            anonymous_id=_text_id(message, "anonymousId"),
            previous_id=_text_id(message, "previousId"),
            group_id=_text_id(message, "groupId"),
            original_timestamp=original,
            sent_at=sent_at,
            properties=_object(message, "properties"),
            traits=_object(message, "traits"),
            context=context,
            source=self.source,
        )

    def _corrected_time(self, original: datetime | None, sent_at: datetime | None) -> datetime:
        """Segment's clock-skew correction: receivedAt - (sentAt - originalTimestamp)."""
        if original is None:
            return self.received_at
        if sent_at is None:
            return original
        return self.received_at - (sent_at - original)

    @staticmethod
    def _check_required(event: Event) -> None:
        if event.type == "alias":
            if not event.user_id or not event.previous_id:
                raise _Invalid("missing_field", "alias needs both userId and previousId")
            return
        if not event.user_id and not event.anonymous_id:
            raise _Invalid("missing_identity", "message has neither userId nor anonymousId")
        if event.type == "track" and not event.event:
            raise _Invalid("missing_field", "track needs an event name")
        if event.type == "group" and not event.group_id:
            raise _Invalid("missing_field", "group needs a groupId")

    def _reject(self, message: Any, bad: _Invalid) -> Rejection:
        payload = orjson.dumps(message, option=orjson.OPT_NON_STR_KEYS).decode()
        message_id = message.get("messageId") if isinstance(message, dict) else None
        return Rejection(
            code=bad.code,
            reason=bad.reason,
            payload=payload,
            received_at=self.received_at,
            source=self.source,
            message_id=str(message_id) if isinstance(message_id, str | int) else None,
        )


def utc_now() -> datetime:
    """Naive UTC now: the store keeps UTC timestamps without a zone."""
    return datetime.now(UTC).replace(tzinfo=None)
