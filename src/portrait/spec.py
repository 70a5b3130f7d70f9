"""The wire format: Segment HTTP Tracking API requests -> event-log columns and recorded rejections.

This is the only place raw client JSON becomes domain data. Segment's rules: a request that cannot be read at all
(bad encoding, not JSON, too large, too many messages) is refused with a 400 and a ``{"code", "message"}`` body. A
message that is readable but semantically invalid is *not* refused -- SDKs would drop or re-send the whole batch --
but recorded as a :class:`Rejection` with its reason and the message itself.

Reading is on the ingestion hot path, so messages are appended straight into column lists (:class:`EventColumns`)
that become one Arrow table per group commit, instead of building an object per message.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from portrait.errors import BadRequest
from portrait.identity import HINT_SEPARATOR, HINT_TYPE_SEPARATOR, id_text, identity_hints
from portrait.model import MESSAGE_TYPES, Rejection

# Endpoint path -> implied message type (None: a batch or a message that names its own type).
ENDPOINT_TYPES: dict[str, str | None] = {
    "identify": "identify", "i": "identify", "track": "track", "t": "track", "page": "page", "p": "page",
    "screen": "screen", "s": "screen", "group": "group", "g": "group", "alias": "alias", "a": "alias",
}
BATCH_ENDPOINTS = ("batch", "import", "b")
# How far after its arrival an event may say it happened: past that the sender's clock is wrong (an event has
# not happened yet), and its traits would win over every real update until that date.
MAX_AHEAD = timedelta(days=1)
RAW_KEEP_BYTES = 64 * 1024  # how much of an unreadable body we keep for the user to inspect
MAX_ID_LENGTH = 1024
_UTC_SUFFIXES = ("Z", "z", "+00:00")
_TYPES = frozenset(MESSAGE_TYPES)
_ID_TYPES = (str, int, float)
# Top-level fields with a column of their own (plus the event name: ``event`` for track, ``name`` otherwise);
# anything else a message carries (integrations, channel, a page's category, _metadata...) is kept in ``extra``.
# writeKey is a credential: never stored. receivedAt is the server's to set. _metadata is analytics.js's own
# bookkeeping (which destinations it sent to from the browser), on every browser event: not kept.
_COLUMN_FIELDS = frozenset(("type", "userId", "anonymousId", "previousId", "groupId", "messageId", "timestamp",
                            "originalTimestamp", "sentAt", "properties", "traits", "context", "writeKey",
                            "receivedAt", "_metadata"))
_OWN_FIELDS = {kind: _COLUMN_FIELDS | {"event" if kind == "track" else "name"} for kind in MESSAGE_TYPES}
_WRITE_KEY_TEXT = re.compile(r'("writeKey"\s*:\s*)"(?:[^"\\]|\\.)*"')
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_bytes: int
    max_batch_bytes: int
    max_batch_items: int
    max_depth: int = 20  # nesting inside properties, traits and context
    max_keys: int = 1000  # keys of one object, items of one list
    max_string: int = 16384  # characters of one string value

    @property
    def max_raw_bytes(self) -> int:
        """The largest body worth reading off the wire: the batch limit plus what gzip adds to data it cannot
        compress (a larger body cannot inflate to an acceptable one)."""
        return self.max_batch_bytes + self.max_batch_bytes // 100 + 1024


class RefusedBody(BadRequest):
    """A body that could be read but is refused as a whole (no batch array, too many messages): the write key it
    names is known, so what was sent can still be kept for that sender to see."""

    def __init__(self, message: str, *, code: str, write_key: str | None) -> None:
        super().__init__(message, code=code)
        self.write_key = write_key
        self.document: Any = None  # the body as read: what is kept (see kept_refusal), not its raw text


@dataclass(slots=True)
class ParsedRequest:
    """A readable request: its messages (raw dicts), batch-level fields, and the write key if the body has one."""

    messages: list[Any]
    write_key: str | None = None
    sent_at: Any = None
    context: dict[str, Any] | None = None  # batch-level: merged into each message's (its own keys win)
    integrations: dict[str, Any] | None = None  # the same


@dataclass(slots=True)
class EventColumns:
    """Validated events as columns, in log order (the Arrow schema is in :mod:`portrait.writer`)."""

    message_id: list[str] = field(default_factory=list)
    type: list[str] = field(default_factory=list)
    event: list[str | None] = field(default_factory=list)
    user_id: list[str | None] = field(default_factory=list)
    anonymous_id: list[str | None] = field(default_factory=list)
    previous_id: list[str | None] = field(default_factory=list)
    group_id: list[str | None] = field(default_factory=list)
    timestamp: list[datetime] = field(default_factory=list)
    original_timestamp: list[datetime | None] = field(default_factory=list)
    sent_at: list[datetime | None] = field(default_factory=list)
    received_at: list[datetime] = field(default_factory=list)
    properties: list[str] = field(default_factory=list)
    traits: list[str] = field(default_factory=list)
    context: list[str] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    ip: list[str | None] = field(default_factory=list)
    identity_hints: list[str | None] = field(default_factory=list)
    extra: list[str | None] = field(default_factory=list)  # other top-level fields as JSON (see _COLUMN_FIELDS)

    def __len__(self) -> int:
        return len(self.message_id)

    def extend(self, other: EventColumns) -> None:
        for f in fields(self):
            getattr(self, f.name).extend(getattr(other, f.name))

    def as_dict(self) -> dict[str, list[Any]]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def decode_body(raw: bytes, content_encoding: str | None, limits: Limits) -> bytes:
    """Undo Content-Encoding (gzip/deflate) without ever inflating past the batch limit (gzip bombs)."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        body = raw
    elif encoding in ("gzip", "x-gzip", "deflate"):
        body = _inflate(raw, encoding, limits.max_batch_bytes)
    else:
        raise BadRequest(f"Content-Encoding {content_encoding!r} is not supported (use gzip, deflate or none)",
                         code="bad_encoding")
    if len(body) > limits.max_batch_bytes:
        raise BadRequest(
            f"request body is {len(body)} bytes; the limit is {limits.max_batch_bytes} bytes", code="body_too_large"
        )
    return body


def _inflate(raw: bytes, encoding: str, limit: int) -> bytes:
    """Decompress every member (a gzip file may be several, concatenated); bytes after the data are refused, not
    ignored, so nothing a client sent is silently dropped."""
    wbits = 16 + zlib.MAX_WBITS if encoding != "deflate" else zlib.MAX_WBITS
    parts: list[bytes] = []
    size = 0
    rest = raw
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            part = inflater.decompress(rest, limit + 1 - size)
        except zlib.error as exc:
            raise BadRequest(f"body is not valid {encoding} data: {exc}", code="bad_encoding") from exc
        size += len(part)
        parts.append(part)
        if size > limit:
            raise BadRequest(f"decompressed body exceeds the limit of {limit} bytes", code="body_too_large")
        if not inflater.eof:
            raise BadRequest(f"{encoding} body is truncated", code="bad_encoding")
        rest = inflater.unused_data
        if not rest:
            return b"".join(parts)
        if encoding == "deflate" or rest[:2] != b"\x1f\x8b":
            raise BadRequest(f"{len(rest)} bytes follow the {encoding} data", code="bad_encoding")


def readable_head(raw: bytes, content_encoding: str | None) -> tuple[bytes, bool]:
    """The start of a body that could not be taken whole (too large, truncated) and whether more of it followed.

    A compressed body gives as much of its decompressed text as we keep of an unreadable body, so the user sees
    JSON rather than gzip bytes (its full size is not worked out: that could mean inflating a gzip bomb). Best
    effort: a body that is not the compressed data it claims is kept as sent.
    """
    encoding = (content_encoding or "").strip().lower()
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return raw, False
    try:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding != "deflate" else zlib.MAX_WBITS)
        head = inflater.decompress(raw, RAW_KEEP_BYTES + 1024)  # a margin: a write key at the cut is still seen
    except zlib.error:
        return raw, False
    more = bool(inflater.unconsumed_tail or inflater.unused_data) or not inflater.eof  # unused: more gzip members
    return (head, more) if head else (raw, False)


def parse_request(body: bytes, endpoint: str, limits: Limits) -> ParsedRequest:
    """Read the JSON of a request (whatever its Content-Type) into messages; raises BadRequest if unreadable."""
    doc = _loads(body)
    if not isinstance(doc, dict):
        raise BadRequest("body must be a JSON object", code="invalid_request")
    try:
        return _read_document(doc, len(body), endpoint, limits)
    except RefusedBody as refused:
        refused.document = doc
        raise


def _read_document(doc: dict[str, Any], size: int, endpoint: str, limits: Limits) -> ParsedRequest:
    key = doc.get("writeKey")
    write_key = key if isinstance(key, str) and key else None
    if endpoint not in BATCH_ENDPOINTS:
        if size > limits.max_message_bytes:  # Segment: 400 for a single call over the message limit
            raise RefusedBody(f"message is {size} bytes; the limit is {limits.max_message_bytes} bytes",
                              code="message_too_large", write_key=write_key)
        doc.pop("writeKey", None)
        doc["type"] = ENDPOINT_TYPES[endpoint]  # the path says what the call is, whatever the body claims
        return ParsedRequest([doc], write_key)
    messages = doc.get("batch")
    if not isinstance(messages, list):
        raise RefusedBody("a batch request needs a 'batch' array of messages", code="invalid_request",
                          write_key=write_key)
    if len(messages) > limits.max_batch_items:
        raise RefusedBody(f"batch has {len(messages)} messages; the limit is {limits.max_batch_items}",
                          code="batch_too_large", write_key=write_key)
    return ParsedRequest(messages, write_key, doc.get("sentAt"), _batch_object(doc, "context", limits, write_key),
                         _batch_object(doc, "integrations", limits, write_key))


def _loads(body: bytes) -> Any:
    """JSON text -> Python. What orjson refuses in valid JSON (or in what SDKs write) is read with the standard
    parser instead, so that one value does not cost the whole batch (an SDK does not resend a batch answered 400):

    - a string holding half of a UTF-16 surrogate pair (JavaScript cut an emoji in two), valid JSON: the half
      becomes U+FFFD;
    - ``NaN``, ``Infinity`` and ``-Infinity``, not JSON but what Python's ``json`` (and so segment-analytics-python)
      writes for a float that is not a number (pandas' missing values): they become null;
    - a number too large for a double (``1e400``, a 400-digit integer): kept as its text, a string;
    - nesting deeper than :data:`CUT_DEPTH` levels: the deeper part becomes a marker string, so the message that
      holds it is rejected as ``too_deep`` on its own (no message is allowed that deep) and the rest is accepted.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            try:
                return _lenient_loads(body)
            except RecursionError:
                return _lenient_loads(_cut_deep_text(body, CUT_DEPTH))
        except (ValueError, RecursionError) as again:
            raise BadRequest(f"body is not valid JSON: {exc}", code="invalid_json") from again


# Deeper than any message may be: counted from the body's root, well past PORTRAIT_MAX_JSON_DEPTH (at most 100)
# plus the envelope around a message's fields, and under the 255 levels orjson writes.
CUT_DEPTH = 200
# A whole string (skipped in one match, escapes and brackets in it included) or a run of openers or of closers.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[{]+|[\]}]+')
_OPENING = (ord("["), ord("{"))
_CUT_MARKER = b'"[nested deeper than %d levels; not kept]"'


def _cut_deep_text(body: bytes, depth: int) -> bytes:
    """``body`` with every array or object nested deeper than ``depth`` replaced by a marker string. Works on the
    text, without recursion (the parsers' own recursion is what such nesting exhausts), by runs of brackets, so a
    body of nothing but brackets costs one regex match; anything else malformed is left for the parser to refuse."""
    out, level, kept_to, cut_from = [], 0, 0, 0
    for match in _TOKENS.finditer(body):
        token = match.group()
        if token[0] == 0x22:  # a string
            continue
        if token[0] in _OPENING:
            if level <= depth < level + len(token):  # this run opens the value at depth + 1: cut from there
                cut_from = match.start() + depth - level
            level += len(token)
        else:
            closing = min(len(token), level)
            if level - closing <= depth < level:  # closes the value that was cut: the marker takes its place
                out.append(body[kept_to:cut_from] + _CUT_MARKER % depth)
                kept_to = match.start() + level - depth
            level -= closing
    out.append(body[kept_to:])
    return b"".join(out)


def _lenient_loads(body: bytes) -> Any:
    # read as orjson would: integers past 64 bits as floats (and too large for those, their text)
    return _replace_surrogates(json.loads(body, parse_int=_int_as_orjson, parse_float=_finite_float,
                                          parse_constant=_constant_as_null))


def _int_as_orjson(text: str) -> int | float | str:
    if len(text) > 21:  # past 64 bits whatever it is (and int() refuses more than 4,300 digits)
        return _finite_float(text)
    number = int(text)
    return number if -(2**63) <= number < 2**64 else _finite_float(text)


def _finite_float(text: str) -> float | str:
    number = float(text)  # a huge integer's text becomes inf, not an OverflowError
    return text if math.isinf(number) else number


def _constant_as_null(name: str) -> None:
    return None  # NaN, Infinity, -Infinity


def _replace_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_surrogates(v) for v in value]
    return value


def _batch_object(doc: dict[str, Any], name: str, limits: Limits, write_key: str | None) -> dict[str, Any] | None:
    """A batch-level object (context, integrations), merged into every message: it must be an object within the
    limits of one message, or the request is refused (and kept) -- copied into each of 2,500 messages, a large one
    would multiply what a 500 KB request stores."""
    value = doc.get(name)
    if value is None or value == {}:
        return None
    if value.__class__ is not dict:
        raise RefusedBody(f"the batch's {name} must be a JSON object, not {type(value).__name__}",
                          code="invalid_request", write_key=write_key)
    try:
        _check_shape(value, name, limits, 1)
        size = len(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))
    except Invalid as bad:
        raise RefusedBody(f"the batch's {bad.reason}", code=bad.code, write_key=write_key) from bad
    if size > limits.max_message_bytes // 2:
        raise RefusedBody(f"the batch's {name} is {size} bytes; the limit is {limits.max_message_bytes // 2} bytes "
                          "(it is copied into every message)", code="message_too_large", write_key=write_key)
    return value


def raw_preview(body: bytes, secret: str | None = None, *, more: bool = False) -> str:
    """What we keep of an unreadable body: its first 64 KiB as text, without the write key it may name (removed
    before the cut, so no part of a key survives at the edge) nor, anywhere, the ``secret`` key that sent it.
    ``more``: ``body`` is only the start of what was sent (see :func:`readable_head`)."""
    text = _kept_text(_WRITE_KEY_TEXT.sub(r'\1"(not kept)"', body.decode("utf-8", errors="replace")), secret)
    return text[:RAW_KEEP_BYTES] + "... [the rest not kept]" if more else text


def kept_refusal(refused: RefusedBody, secret: str | None) -> str:
    """What we keep of a body read but refused as a whole: the document as read (so a key written with JSON
    escapes is known for what it is and left out), its first 64 KiB."""
    return _kept_text(kept_json(refused.document), secret)


def _kept_text(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "(not kept)")
    return text if len(text) <= RAW_KEEP_BYTES else text[:RAW_KEEP_BYTES] + (
        f"... [{len(text) - RAW_KEEP_BYTES} more characters not kept]")


def kept_json(value: Any) -> str:
    """JSON text of what a client sent, for the rejected events, whatever it holds: nesting deeper than orjson
    writes (~255 levels) is cut off with a marker instead of failing, and a write key is left out."""
    if value.__class__ is dict and "writeKey" in value:
        value = {k: v for k, v in value.items() if k != "writeKey"}
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # orjson.JSONEncodeError is one; so is an integer past 64 bits
        pass
    try:
        return orjson.dumps(_cut_deep(value, 64), option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(_cut_deep(value, 64), default=repr)


def _cut_deep(value: Any, levels: int) -> Any:
    if value.__class__ not in (dict, list):
        return value
    if levels == 0:
        return f"[nested deeper; not kept: {len(value)} entries]"
    if value.__class__ is dict:
        return {str(k): _cut_deep(v, levels - 1) for k, v in value.items()}
    return [_cut_deep(v, levels - 1) for v in value]


def key_from_basic_auth(header: str | None) -> str | None:
    """The write key is the Basic-auth user name (the password is empty)."""
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # ValueError: non-ASCII header text; UnicodeDecodeError is one too
        return None
    return decoded.split(":", 1)[0] or None


def parse_time(value: Any) -> datetime | None:
    """An ISO-8601 date-time (``Z`` or offset; naive means UTC) -> naive UTC datetime. Raises ValueError if bad."""
    if value is None:
        return None
    if value.__class__ is not str:
        raise ValueError(f"expected an ISO-8601 string, got {type(value).__name__}")
    if value.endswith(_UTC_SUFFIXES):  # the usual SDK forms: skip the time-zone arithmetic
        parsed = datetime.fromisoformat(value[:-1] if value[-1] in "Zz" else value[:-6])
        if parsed.tzinfo is None:
            return parsed
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is not None:
        try:
            parsed = parsed.astimezone(UTC).replace(tzinfo=None)
        except OverflowError as exc:  # e.g. year 1 with a positive offset
            raise ValueError("date-time out of range once converted to UTC") from exc
    return parsed


def event_document(row: tuple[Any, ...]) -> dict[str, Any]:
    """An event of the log as the API shows it. ``row``: seq, message_id, type, event, user_id, anonymous_id,
    timestamp, received_at, properties, traits, context, source, ip, previous_id, group_id, original_timestamp,
    sent_at, extra (the order of the read statements)."""
    (seq, message_id, kind, event, user_id, anonymous_id, timestamp, received_at, properties, traits, context, src,
     ip, previous_id, group_id, original, sent_at, extra) = row
    context_json = orjson.loads(context or "{}")
    if ip and "ip" not in context_json:
        context_json["ip"] = ip  # Segment's context.ip: the sender's address unless the message names one
    return {
        "seq": seq, "message_id": message_id, "type": kind, "event": event, "user_id": user_id,
        "anonymous_id": anonymous_id, "previous_id": previous_id, "group_id": group_id,
        "timestamp": iso_time(timestamp), "original_timestamp": iso_time(original), "sent_at": iso_time(sent_at),
        "received_at": iso_time(received_at),
        "properties": orjson.loads(properties or "{}"), "traits": orjson.loads(traits or "{}"),
        "context": context_json, "extra": orjson.loads(extra or "{}"), "source": src,
    }


def iso_time(value: datetime | None) -> str | None:
    """How the API writes a stored (naive UTC) time: ISO-8601 with milliseconds and Z."""
    return None if value is None else value.isoformat(timespec="milliseconds") + "Z"


def utc_now() -> datetime:
    """Naive UTC now: the store keeps UTC timestamps without a zone."""
    return datetime.now(UTC).replace(tzinfo=None)


class Invalid(Exception):
    """One message breaks a rule: ``code`` is stable, ``reason`` says what and why."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Unreadable(str):
    """What an import read where a message or row should be but could not make one of (a CSV row with too few or
    too many fields): the text as read, rejected with its own ``code`` and ``reason``. A row that was read but
    could not be made a message (a cell not of its declared type) is kept as the ``row`` itself."""

    code: str
    reason: str
    row: Any

    def __new__(cls, text: str, code: str, reason: str, row: Any = None) -> Unreadable:
        made = super().__new__(cls, text)
        made.code = code
        made.reason = reason
        made.row = row
        return made


def _text_id(message: dict[str, Any], name: str, as_text: Callable[[Any], str] = id_text) -> str | None:
    """An id field as text: a whole-number float as its integer (``userId`` 1.0 is ``"1"``, see
    :func:`portrait.identity.id_text`). ``as_text=str`` for the messageId, which stays as it always was written
    (``"1.0"``), so a message sent again is still the copy it is."""
    value = message.get(name)
    if value.__class__ is str and 0 < len(value) <= MAX_ID_LENGTH:
        return value  # the common case, first
    if value is None or value == "":
        return None
    if value.__class__ is not str:
        if isinstance(value, bool) or not isinstance(value, _ID_TYPES):
            raise Invalid("invalid_field", f"{name} must be a string or a number, not {type(value).__name__}")
        value = as_text(value)
    if len(value) > MAX_ID_LENGTH:
        raise Invalid("invalid_field", f"{name} is longer than {MAX_ID_LENGTH} characters")
    return str(value)


def _readable_id(message: dict[str, Any], name: str) -> str | None:
    """An id field as :func:`_text_id` reads it; None where that refuses it."""
    try:
        return _text_id(message, name)
    except Invalid:
        return None


def _json_object(message: dict[str, Any], name: str, limits: Limits) -> str:
    value = message.get(name)
    if value is None or ((value.__class__ is dict or value.__class__ is list) and not value):
        return "{}"  # [] too: PHP's json_encode writes an empty array for an empty object
    if value.__class__ is not dict:
        raise Invalid("invalid_field", f"{name} must be a JSON object, not {type(value).__name__}")
    return _dump_object(value, name, limits)


def _dump_object(value: dict[str, Any], name: str, limits: Limits) -> str:
    """JSON text of an object the message carries, refused (naming where) if it breaks the shape limits."""
    try:
        text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError as exc:  # nested past orjson's own limit: the walk names where
        _check_shape(value, name, limits, 1)
        raise Invalid("invalid_field", f"{name} cannot be written as JSON: {exc}") from exc
    if _may_break_limits(text, limits):
        _check_shape(value, name, limits, 1)
    return text


def _other_fields(message: dict[str, Any], own_fields: frozenset[str]) -> dict[str, Any] | None:
    """The top-level fields without a column that hold something (None if none: the usual SDK message)."""
    others = None
    for name in message:  # a loop beats a set difference on a dozen keys, and builds nothing when there are none
        if name not in own_fields:
            value = message[name]
            if value is not None and value != {}:
                if others is None:
                    others = {}
                others[name] = value
    return others


def _may_break_limits(text: str, limits: Limits) -> bool:
    """Whether the JSON text of an object could hold something over the shape limits, so that it must be walked.

    Most objects are small and shallow, and walking them in Python cost as much as reading the rest of the message,
    so the text decides first: a string is never longer than the text holding it, n entries take at least 2n + 1
    characters, and each level of nesting opens a bracket.
    """
    if len(text) > min(limits.max_string, 2 * limits.max_keys):
        return True
    return text.count("{") + text.count("[") > limits.max_depth


def _check_shape(value: Any, path: str, limits: Limits, depth: int) -> None:
    """Refuse objects too deep, too wide or with too long strings (hostile input), naming where."""
    if depth > limits.max_depth:
        raise Invalid("too_deep", f"{path} is nested deeper than {limits.max_depth} levels")
    if len(value) > limits.max_keys:
        raise Invalid("too_many_keys", f"{path} has {len(value)} entries; the limit is {limits.max_keys}")
    for key, item in (value.items() if value.__class__ is dict else enumerate(value)):
        kind = item.__class__
        if kind is str:
            if len(item) > limits.max_string:
                raise Invalid("string_too_long", f"{path}.{key} is {len(item)} characters; the limit is "
                                                 f"{limits.max_string}")
        elif kind is dict or kind is list:
            _check_shape(item, f"{path}.{key}", limits, depth + 1)


def _time_field(message: dict[str, Any], name: str) -> datetime | None:
    value = message.get(name)
    if value == "":  # as an empty userId is no userId: a client that had no time to give
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise Invalid("invalid_timestamp", f"{name} {message.get(name)!r} is not an ISO-8601 date-time") from exc


class MessageReader:
    """Validates and enriches the messages of one request into columns. Create one per request."""

    def __init__(self, *, received_at: datetime, source: str, ip: str | None, request: ParsedRequest,
                 limits: Limits, body_bytes: int, identity_traits: tuple[str, ...] = (),
                 any_identifier: bool = False, suppressed: Callable[[list[tuple[str, str]]], bool] | None = None
                 ) -> None:
        self.received_at = received_at
        self.latest_time = received_at + MAX_AHEAD  # an event said to happen later is refused (future_timestamp)
        # Imported rows may name the person by email, phone or another identifier only: with any_identifier such
        # a message needs no userId/anonymousId (the HTTP API keeps Segment's rule).
        self.any_identifier = any_identifier
        # Erased people: a message carrying one of their identifiers is dropped and counted, not stored or rejected.
        self.suppressed = suppressed
        self.suppressed_count = 0
        self.identity_traits = identity_traits
        self.source = source
        self.ip = ip
        self.limits = limits
        self.request = request
        # A body no larger than the message limit cannot hold a message over it: skip measuring each one.
        self.check_sizes = body_bytes > limits.max_message_bytes
        try:
            self.batch_sent_at = parse_time(request.sent_at)
        except ValueError:
            self.batch_sent_at = None  # a bad batch-level sentAt only disables skew correction
        # Batch-level context and integrations (checked by parse_request) are merged into every message's.
        self.batch_context = request.context
        self.batch_context_text = (orjson.dumps(request.context, option=orjson.OPT_NON_STR_KEYS).decode()
                                   if request.context else "{}")
        self.batch_integrations = request.integrations

    def read_all(self) -> tuple[EventColumns, list[Rejection]]:
        columns = EventColumns()
        rejections: list[Rejection] = []
        for position, message in enumerate(self.request.messages):
            try:
                self.read(message, columns)
            except Suppressed:
                self.suppressed_count += 1
            except Invalid as bad:
                if self._names_erased(message):  # kept whole as rejected, it would keep her identifiers
                    self.suppressed_count += 1
                else:
                    rejections.append(self._reject(message, bad, position))
        accepted = len(columns)  # the same for every message of the request: filled in once
        columns.received_at.extend([self.received_at] * accepted)
        columns.source.extend([self.source] * accepted)
        columns.ip.extend([self.ip] * accepted)
        return columns, rejections

    def read(self, message: Any, out: EventColumns) -> None:
        """Validate one message and append it to ``out``; raises Invalid (and appends nothing) if it breaks a rule.

        Appends every column except received_at, source and ip, which :meth:`read_all` fills once per request.
        """
        if message.__class__ is not dict:
            if isinstance(message, Unreadable):
                raise Invalid(message.code, message.reason)
            raise Invalid("invalid_message", f"a message must be a JSON object, not {type(message).__name__}")
        if self.check_sizes:
            try:
                size = len(orjson.dumps(message, option=orjson.OPT_NON_STR_KEYS))
            except orjson.JSONEncodeError as exc:  # nested past orjson's limit (~255 levels)
                raise Invalid("too_deep", f"message cannot be written as JSON: {exc}") from exc
            if self.batch_context is not None:
                size += len(self.batch_context_text)  # merged into the message's context
            if size > self.limits.max_message_bytes:
                raise Invalid("message_too_large",
                              f"message is {size} bytes; the limit is {self.limits.max_message_bytes} bytes")
        kind = message.get("type")
        if kind.__class__ is not str or kind not in _TYPES:
            raise Invalid("invalid_type", f"type {kind!r} is not one of {', '.join(MESSAGE_TYPES)}")
        user_id = _text_id(message, "userId")
        anonymous_id = _text_id(message, "anonymousId")
        previous_id = _text_id(message, "previousId")
        group_id = _text_id(message, "groupId")
        name = message.get("event") if kind == "track" else message.get("name")
        if name is not None and name.__class__ is not str:
            raise Invalid("invalid_field", f"{'event' if kind == 'track' else 'name'} must be a string")
        # The batch's context counts as the message's own (merged in): its traits can name the person too.
        merged = None if self.batch_context is None else self._merged_context(message)
        hints = identity_hints(kind, message, self.identity_traits, merged)
        if self.suppressed is not None and self.suppressed(_identifiers(user_id, anonymous_id, previous_id, hints)):
            raise Suppressed("suppressed", "the message names an erased person")
        identified = bool(user_id or anonymous_id or (self.any_identifier and hints))
        _check_required(kind, user_id, identified, previous_id, group_id, name, self.any_identifier)
        message_id = _text_id(message, "messageId", str) or f"portrait-{uuid.uuid4()}"
        # A timestamp the caller set wins over the SDK's originalTimestamp (the call's time): RudderStack's Node SDK
        # sends both when given a timestamp (a backfill), Segment reads a server library's timestamp as the
        # originalTimestamp, and RudderStack's server keeps it; either is checked.
        client_time = _time_field(message, "timestamp")
        call_time = _time_field(message, "originalTimestamp")
        original = client_time or call_time
        own_sent_at = _time_field(message, "sentAt")
        sent_at = own_sent_at or self.batch_sent_at
        timestamp = self._corrected_time(original, sent_at, own=own_sent_at is not None)
        if timestamp > self.latest_time:
            raise Invalid("future_timestamp", f"timestamp {iso_time(timestamp)} is more than a day after the message "
                          f"was received ({iso_time(self.received_at)}); a clock that is wrong? (with sentAt the "
                          "device's clock is corrected)")
        properties = _json_object(message, "properties", self.limits)
        traits = (self._identify_traits(message, merged) if kind == "identify" else
                  _json_object(message, "traits", self.limits))
        own_context = message.get("context")
        context = (_dump_object(own_context, "context", self.limits)  # the usual case, without a call more
                   if own_context.__class__ is dict and own_context and self.batch_context is None
                   else self._context(message, merged))
        others = _other_fields(message, _OWN_FIELDS[kind])
        extra = None if others is None and self.batch_integrations is None else self._extra(others or {})
        out.message_id.append(message_id)
        out.type.append(kind)
        out.event.append(name or None)
        out.user_id.append(user_id)
        out.anonymous_id.append(anonymous_id)
        out.previous_id.append(previous_id)
        out.group_id.append(group_id)
        out.timestamp.append(timestamp)
        out.original_timestamp.append(original)
        out.sent_at.append(sent_at)
        out.properties.append(properties)
        out.traits.append(traits)
        out.context.append(context)
        out.identity_hints.append(hints)
        out.extra.append(extra)

    def _merged_context(self, message: dict[str, Any]) -> Any:
        """The message's context with the batch's under it (as stored); a context that is not an object as sent.

        ``traits`` merge one level deeper: the batch's email still identifies a message with traits of its own.
        """
        own = message.get("context")
        if self.batch_context is None or (own is not None and own.__class__ is not dict):
            return own
        if not own:
            return self.batch_context
        merged = {**self.batch_context, **own}
        batch_traits, own_traits = self.batch_context.get("traits"), own.get("traits")
        if batch_traits.__class__ is dict and own_traits.__class__ is dict:
            merged["traits"] = {**batch_traits, **own_traits}
        return merged

    def _identify_traits(self, message: dict[str, Any], merged: Any) -> str:
        """An identify's traits: ``traits`` over ``context.traits`` (``merged``: the context with the batch's, if
        there is one).

        RudderStack's SDKs send an identify's traits only in ``context.traits`` (Segment's in ``traits``); both are
        the person's traits as of the message, so both apply, the top-level ones winning where both name a trait.
        """
        context = message.get("context") if self.batch_context is None else merged
        carried = context.get("traits") if context.__class__ is dict else None
        if carried.__class__ is not dict or not carried:
            return _json_object(message, "traits", self.limits)
        own = message.get("traits")
        if own is not None and own.__class__ is not dict:
            return _json_object(message, "traits", self.limits)  # refused: traits must be an object
        return _dump_object({**carried, **(own or {})}, "traits", self.limits)

    def _context(self, message: dict[str, Any], merged: Any) -> str:
        own = message.get("context")
        if own.__class__ is dict and own:
            return _dump_object(own if self.batch_context is None else merged, "context", self.limits)
        if own is None or own == {}:
            return self.batch_context_text
        return _json_object(message, "context", self.limits)  # not an object: refused

    def _extra(self, others: dict[str, Any]) -> str | None:
        """The message's other top-level fields, with the batch's integrations merged in, as JSON."""
        own = others.get("integrations")
        if self.batch_integrations is not None and (own is None or own.__class__ is dict):
            others["integrations"] = {**self.batch_integrations, **(own or {})}
        return _dump_object(others, "message", self.limits) if others else None

    def _corrected_time(self, original: datetime | None, sent_at: datetime | None, *, own: bool) -> datetime:
        """Segment's clock-skew correction: receivedAt - (sentAt - originalTimestamp). ``own``: the message's own
        sentAt, not the batch's (a batch-level one that cannot be used only turns the correction off)."""
        if original is None:
            return self.received_at
        if sent_at is None:
            return original
        try:
            return self.received_at - (sent_at - original)
        except OverflowError as exc:
            if not own:
                return original
            raise Invalid("invalid_timestamp", "timestamp and sentAt are too far apart to correct clock skew") from exc

    def _names_erased(self, message: Any) -> bool:
        """Whether a message that broke a rule checked before the suppression (its size, its type...) carries an
        erased person's identifier, read as far as the message allows."""
        if self.suppressed is None or message.__class__ is not dict:
            return False
        user_id, anonymous_id, previous_id = (_readable_id(message, name)
                                               for name in ("userId", "anonymousId", "previousId"))
        kind = message.get("type")
        merged = None if self.batch_context is None else self._merged_context(message)
        hints = identity_hints(kind if kind.__class__ is str and kind in _TYPES else "identify", message,
                               self.identity_traits, merged)  # an identify's traits name the person too
        return self.suppressed(_identifiers(user_id, anonymous_id, previous_id, hints))

    def _reject(self, message: Any, bad: Invalid, position: int) -> Rejection:
        payload = kept_json(message.row if isinstance(message, Unreadable) and message.row is not None else message)
        message_id = message.get("messageId") if isinstance(message, dict) else None
        return Rejection(code=bad.code, reason=bad.reason, payload=payload, received_at=self.received_at,
                         source=self.source,
                         message_id=str(message_id) if isinstance(message_id, str | int) else None,
                         position=position)


class Suppressed(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)


def _identifiers(user_id: str | None, anonymous_id: str | None, previous_id: str | None, hints: str | None
                 ) -> list[tuple[str, str]]:
    found = [(kind, value) for kind, value in (("user_id", user_id), ("anonymous_id", anonymous_id),
                                               ("user_id", previous_id), ("anonymous_id", previous_id)) if value]
    for hint in hints.split(HINT_SEPARATOR) if hints else ():
        kind, _, value = hint.partition(HINT_TYPE_SEPARATOR)
        found.append((kind, value))
    return found


def _check_required(kind: str, user_id: str | None, identified: bool, previous_id: str | None,
                    group_id: str | None, name: str | None, any_identifier: bool) -> None:
    if kind == "alias":
        if not user_id or not previous_id:
            raise Invalid("missing_field", "alias needs both userId and previousId")
        return
    if not identified:
        raise Invalid("missing_identity", "the row has no identifier (user id, anonymous id, email, phone or another "
                                          "identifier)" if any_identifier else
                      "message has neither userId nor anonymousId")
    if kind == "track" and not name:
        raise Invalid("missing_field", "track needs an event name")
    if kind == "group" and not group_id:
        raise Invalid("missing_field", "group needs a groupId")
