"""The Python engine: a checked condition compiled into a predicate over one profile and its events.

Used in real time (after each processed batch, on the profiles it touched) and as the reference the SQL engine is
tested against: both follow the rules in docs/segments.md, value typing included -- a trait value counts only in
the JSON type of its attribute (a number for number attributes, ISO text for dates), an event property only in the
type of the value it is compared with.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from portrait.conditions.ast import (
    DURATION_OPS,
    NEGATIONS,
    Aggregate,
    Ago,
    And,
    Compare,
    Condition,
    Consent,
    Duration,
    EventTime,
    InSegment,
    Not,
    Or,
    Performed,
    Stopped,
    Value,
    Window,
)
from portrait.conditions.ast import (
    Sequence as SequenceCondition,
)
from portrait.conditions.check import Schema
from portrait.conditions.regex import compile_portable

DATE_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# A date-time as both engines read it alike (Python's fromisoformat, the database's TIMESTAMPTZ cast): ISO-8601
# offsets with or without the colon or the minutes (+01:00, +0100, +01; PHP and Java write +0100) after a time with
# seconds (the database refuses 10:30Z), hours to 23 and offsets under a day (the database reads 24:00 as the next
# day and takes +25:00, Python refuses both), no offset after a date alone (Python read 1990-01-02Z, the database
# did not). The processor keeps a datetime attribute's value only in this form, so no stored value is one a
# condition reads as missing.
DATETIME_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d{1,6})?"
                           r"(Z|[+-]([01]\d|2[0-3])(:?[0-5]\d)?)?)?)?$")


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    name: str | None
    timestamp: datetime  # naive UTC, like the store
    properties: Mapping[str, Any]


@dataclass
class ProfileData:
    """One profile as the Python engine sees it: traits by attribute code, and its events (any order)."""

    profile_id: str
    traits: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    consents: list[tuple[str, str, datetime, int]] = field(default_factory=list)  # purpose, status, at, seq
    _by_name: dict[str | None, list[Event]] | None = field(default=None, repr=False)

    def consent(self, purpose: str) -> str:
        """The latest statement for the purpose (by event time, then log order), or ``unknown``."""
        latest = max(((at, seq, status) for p, status, at, seq in self.consents if p == purpose), default=None)
        return latest[2] if latest else "unknown"

    def named(self, name: str) -> list[Event]:
        if self._by_name is None:
            grouped: dict[str | None, list[Event]] = {}
            for event in self.events:
                grouped.setdefault(event.name, []).append(event)
            self._by_name = grouped
        return self._by_name.get(name, [])


Predicate = Callable[[ProfileData], bool]
T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    schema: Schema
    now: datetime  # naive UTC
    static_members: Callable[[str], set[str]]  # members of an uploaded segment


def compile_predicate(condition: Condition, schema: Schema, now: datetime,
                      static_members: Callable[[str], set[str]] = lambda name: set()) -> Predicate:
    """A function telling whether a profile meets ``condition`` at time ``now`` (checked conditions only)."""
    return _compile(condition, Context(schema, now, static_members))


def _logic(condition: Condition, compile_part: Callable[[Condition], Callable[[T], bool]]
           ) -> Callable[[T], bool] | None:
    """``and`` / ``or`` / ``not`` over compiled parts (of profiles, or of event properties); None for a leaf."""
    if isinstance(condition, And | Or):
        parts = [compile_part(item) for item in condition.items]
        combine = all if isinstance(condition, And) else any
        return lambda value: combine(part(value) for part in parts)
    if isinstance(condition, Not):
        inner = compile_part(condition.item)
        return lambda value: not inner(value)
    return None


def _compile(condition: Condition, ctx: Context) -> Predicate:
    combined = _logic(condition, lambda part: _compile(part, ctx))
    if combined is not None:
        return combined
    if isinstance(condition, Compare):
        kind = ctx.schema.attribute_types[condition.field]
        test = value_test(condition.op, condition.values, kind, ctx.now)
        code = condition.field
        return lambda p: test(p.traits.get(code))
    if isinstance(condition, Consent):
        purpose, status, equal = condition.purpose, condition.status, condition.op == "="
        return lambda p: (p.consent(purpose) == status) is equal
    if isinstance(condition, InSegment):
        referenced = ctx.schema.segment(condition.segment)
        if referenced is None:
            members = ctx.static_members(condition.segment)
            return lambda p: p.profile_id in members
        return _compile(referenced, ctx)
    return _compile_event(condition, ctx)


# -- one value ---------------------------------------------------------------------------------------------------
def value_test(op: str, values: tuple[Value, ...], kind: str, now: datetime) -> Callable[[Any], bool]:
    """A test of one raw JSON value (None when missing) against ``op values``, reading it as ``kind``.

    ``kind`` is an attribute type; for event properties it is derived from the compared values.
    """
    if op in NEGATIONS:
        positive = value_test(NEGATIONS[op], values, kind, now)
        return lambda raw: not positive(raw)
    if op == "is set":
        return lambda raw: raw is not None
    read = READERS[kind]
    compare = _comparison(op, values, kind, now)

    def test(raw: Any) -> bool:
        value = read(raw)
        return value is not None and compare(value)

    return test


def _comparison(op: str, values: tuple[Value, ...], kind: str, now: datetime) -> Callable[[Any], bool]:
    if kind == "list":
        wanted = {str(v) for v in values}
        if op == "contains":
            item = str(values[0])
            return lambda items: item in items
        if op == "contains any":
            return lambda items: not wanted.isdisjoint(items)
        return lambda items: wanted.issubset(items)  # contains all
    if op in ("contains", "starts with", "ends with"):
        needle = lower(str(values[0]))
        if op == "contains":
            return lambda text: needle in lower(text)
        if op == "starts with":
            return lambda text: lower(text).startswith(needle)
        return lambda text: lower(text).endswith(needle)
    if op == "regex":
        pattern = compile_portable(str(values[0]))
        return lambda text: pattern.search(text) is not None
    if op in DURATION_OPS:
        return _within(op, values[0], kind, now)
    if op == "on":
        day = _day(values[0], now)
        return lambda value: (value if kind == "date" else value.date()) == day
    targets = [_target(v, kind, now) for v in values]
    if op == "in":
        return lambda value: value in targets
    if op == "between":
        low, high = targets
        return lambda value: low <= value <= high
    target = targets[0]
    return {
        "=": lambda value: value == target, ">": lambda value: value > target, ">=": lambda value: value >= target,
        "<": lambda value: value < target, "<=": lambda value: value <= target,
        "before": lambda value: value < target, "after": lambda value: value > target,
    }[op]


def lower(text: str) -> str:
    """Lower case as the database's lower() has it: each character on its own (str.lower() makes a final Σ ς and
    İ two characters, i and a dot, so "İstanbul" did not contain "istanbul" here while it did in SQL). Checked
    against DuckDB for every code point."""
    return text.lower() if text.isascii() else "".join(char.lower()[0] for char in text)


def _within(op: str, duration: Value, kind: str, now: datetime) -> Callable[[Any], bool]:
    assert isinstance(duration, Duration)
    span = timedelta(seconds=duration.seconds)
    low, high = (now - span, now) if op == "within last" else (now, now + span)
    if kind == "date":
        low_day, high_day = low.date(), high.date()
        return lambda value: low_day <= value <= high_day
    return lambda value: low <= value <= high


def _target(value: Value, kind: str, now: datetime) -> Any:
    """A compared value in the kind's terms (numbers as floats, times as naive UTC datetimes or dates)."""
    if kind in ("integer", "number"):
        return float(value)  # type: ignore[arg-type]
    if kind == "date":
        return _day(value, now)
    if kind == "datetime":
        return _instant(value, now)
    return value


def _day(value: Value, now: datetime) -> date:
    instant = _instant(value, now)
    return instant.date()


def _instant(value: Value, now: datetime) -> datetime:
    if isinstance(value, Ago):
        return now - timedelta(seconds=value.duration.seconds)
    if isinstance(value, datetime):
        return value
    assert isinstance(value, date), value
    return datetime(value.year, value.month, value.day)


def read_number(raw: Any) -> float | None:
    return float(raw) if raw.__class__ in (int, float) else None


def read_text(raw: Any) -> str | None:
    return raw if raw.__class__ is str else None


def read_boolean(raw: Any) -> bool | None:
    return raw if raw.__class__ is bool else None


def read_date(raw: Any) -> date | None:
    if raw.__class__ is not str or not DATE_TEXT.match(raw):
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        return None


def read_datetime(raw: Any) -> datetime | None:
    if raw.__class__ is not str or not DATETIME_TEXT.match(raw):
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    except (ValueError, OverflowError):  # OverflowError: in UTC before year 1 or after 9999 (0001-01-01T00:30+01)
        return None


def read_list(raw: Any) -> set[str] | None:
    return {item for item in raw if item.__class__ is str} if raw.__class__ is list else None


READERS: dict[str, Callable[[Any], Any]] = {
    "integer": read_number, "number": read_number, "string": read_text, "enum": read_text,
    "boolean": read_boolean, "date": read_date, "datetime": read_datetime, "list": read_list,
    "object": lambda raw: raw,
}


def property_kind(values: tuple[Value, ...], op: str) -> str:
    """How an event property is read, from what it is compared with."""
    if not values:
        return "object"
    first = values[0]
    if isinstance(first, bool):
        return "boolean"
    if isinstance(first, int | float):
        return "number"
    if isinstance(first, str):
        return "string"
    return "datetime"  # dates, times, "30d ago", durations


# -- events ------------------------------------------------------------------------------------------------------
def _compile_event(condition: Condition, ctx: Context) -> Predicate:
    if isinstance(condition, SequenceCondition):
        return _sequence(condition, ctx)
    assert isinstance(condition, Performed | EventTime | Stopped | Aggregate), condition
    keep = _event_filter(condition.event, getattr(condition, "window", Window()), condition.where, ctx.now)
    name = condition.event
    if isinstance(condition, Performed):
        count_test = _count(condition.count_op, condition.count)
        return lambda p: count_test(sum(1 for e in p.named(name) if keep(e)))
    if isinstance(condition, EventTime):
        pick = min if condition.which == "first" else max
        test = value_test(condition.op, condition.values, "datetime", ctx.now)

        def event_time(p: ProfileData) -> bool:
            times = [e.timestamp for e in p.named(name) if keep(e)]
            return test(pick(times).isoformat() if times else None)

        return event_time
    if isinstance(condition, Stopped):
        recent_start = ctx.now - timedelta(seconds=condition.recent.seconds)
        earlier_start = recent_start - timedelta(seconds=condition.earlier.seconds)

        def stopped(p: ProfileData) -> bool:
            times = [e.timestamp for e in p.named(name) if keep(e)]
            return any(earlier_start <= t < recent_start for t in times) and not any(t >= recent_start for t in times)

        return stopped
    return _aggregate(condition, keep)


def _aggregate(condition: Aggregate, keep: Callable[[Event], bool]) -> Predicate:
    path = condition.prop.split(".")
    compare = _count(condition.op, condition.value)
    function, name = condition.function, condition.event

    def aggregate(p: ProfileData) -> bool:
        numbers = [n for e in p.named(name) if keep(e) and (n := read_number(_property(e.properties, path)))
                   is not None]
        if function == "sum":
            return compare(sum(numbers))
        if not numbers:
            return False
        result = {"avg": lambda: sum(numbers) / len(numbers), "min": lambda: min(numbers),
                  "max": lambda: max(numbers)}[function]()
        return compare(result)

    return aggregate


def _sequence(condition: SequenceCondition, ctx: Context) -> Predicate:
    keep_first = _event_filter(condition.first, condition.window, None, ctx.now)
    keep_then = _event_filter(condition.then, condition.window, None, ctx.now)
    gap = timedelta(seconds=condition.within.seconds)

    def sequence(p: ProfileData) -> bool:
        firsts = [e for e in p.named(condition.first) if keep_first(e)]
        if not firsts:
            return False
        for later in p.named(condition.then):
            if keep_then(later) and any(_before(a, later) and later.timestamp - a.timestamp <= gap for a in firsts):
                return True
        return False

    return sequence


def _before(a: Event, b: Event) -> bool:
    return a.timestamp < b.timestamp or (a.timestamp == b.timestamp and a.seq < b.seq)


def _event_filter(name: str, window: Window, where: Condition | None, now: datetime) -> Callable[[Event], bool]:
    start = now - timedelta(seconds=window.within.seconds) if window.within else None
    lows = [t for t in (start, _instant(window.start, now) if window.start else None) if t is not None]
    low = max(lows) if lows else None
    high = _instant(window.end, now) if window.end else None
    matches = _where(where, now) if where is not None else None

    def keep(event: Event) -> bool:
        if low is not None and event.timestamp < low:
            return False
        if high is not None and event.timestamp >= high:
            return False
        return matches is None or matches(event.properties)

    return keep


def _where(condition: Condition, now: datetime) -> Callable[[Mapping[str, Any]], bool]:
    combined = _logic(condition, lambda part: _where(part, now))
    if combined is not None:
        return combined
    assert isinstance(condition, Compare)
    test = value_test(condition.op, condition.values, property_kind(condition.values, condition.op), now)
    path = condition.field.split(".")
    return lambda props: test(_property(props, path))


def _property(properties: Mapping[str, Any], path: list[str]) -> Any:
    value: Any = properties
    for part in path:
        if value.__class__ is not dict:
            return None
        value = value.get(part)
    return value


def _count(op: str, target: float) -> Callable[[float], bool]:
    return {
        "=": lambda n: n == target, "!=": lambda n: n != target, ">": lambda n: n > target,
        ">=": lambda n: n >= target, "<": lambda n: n < target, "<=": lambda n: n <= target,
    }[op]
