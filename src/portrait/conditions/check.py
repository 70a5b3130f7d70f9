"""Checking a condition against the data it will run on: attributes exist and fit the operator and values,
regular expressions are usable by every engine, segment references exist and do not loop.

Every engine (SQL, Python, English) takes only checked conditions, so they never meet a case they would read
differently.
"""

from __future__ import annotations

import difflib
import math
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import date, datetime

from portrait.conditions.ast import (
    DURATION_OPS,
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
    Sequence,
    Stopped,
    Value,
    Window,
)
from portrait.conditions.regex import unportable
from portrait.conditions.text import ConditionError, to_text

PROPERTY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

STRING_OPS = {"=", "!=", ">", ">=", "<", "<=", "in", "not in", "contains", "not contains", "starts with",
              "ends with", "regex", "not regex", "between", "not between", "is set", "is not set"}
NUMBER_OPS = {"=", "!=", ">", ">=", "<", "<=", "in", "not in", "between", "not between", "is set", "is not set"}
TIME_OPS = {"=", "!=", ">", ">=", "<", "<=", "between", "not between", "before", "after", "on", "is set",
            "is not set", *DURATION_OPS}
OPS_BY_TYPE: dict[str, set[str]] = {
    "string": STRING_OPS, "enum": STRING_OPS, "integer": NUMBER_OPS, "number": NUMBER_OPS,
    "boolean": {"=", "!=", "is set", "is not set"}, "date": TIME_OPS, "datetime": TIME_OPS,
    "list": {"contains", "not contains", "contains any", "contains all", "is set", "is not set"},
    "object": {"is set", "is not set"},
}


@dataclass(frozen=True)
class Schema:
    """What conditions refer to: attribute types by code, and segments by name.

    ``segment`` returns a dynamic segment's condition, None for a static (uploaded) segment, or raises
    ConditionError/NotFound for an unknown name.
    """

    attribute_types: Mapping[str, str]
    segment: Callable[[str], Condition | None] = field(default=lambda name: _no_segments(name))


def _no_segments(name: str) -> Condition | None:
    raise ConditionError(f"no segment is named {name!r}")


# What a condition may hold, whichever form it came in: a saved condition past these broke every later count (a
# number a double cannot hold, a window reaching before year 1), and planning one with hundreds of terms took the
# database minutes and gigabytes.
MAX_TERMS = 64
MAX_DURATION_SECONDS = 100 * 366 * 86_400
MAX_INTEGER = 2**63 - 1


def check(condition: Condition, schema: Schema, *, segment_path: tuple[str, ...] = ()) -> None:
    """Raise ConditionError for the first problem, naming it in the condition's own words."""
    _check_limits(condition)
    _check(condition, schema, segment_path=segment_path)


def _check_limits(condition: Condition) -> None:
    terms = 0
    pending: list[object] = [condition]
    while pending:
        node = pending.pop()
        if isinstance(node, tuple | list):
            pending.extend(node)
        elif isinstance(node, bool | str | date | datetime) or node is None:
            continue
        elif isinstance(node, int | float):
            if not math.isfinite(node) or abs(node) > MAX_INTEGER:
                raise ConditionError(f"the number {node} is too large (at most {MAX_INTEGER:,})")
        elif isinstance(node, Duration):
            if node.seconds > MAX_DURATION_SECONDS:
                raise ConditionError(f"the duration {node} is too long (at most 100 years, 36500d)")
        elif is_dataclass(node):
            terms += not isinstance(node, And | Or | Not | Window | Ago)
            if terms > MAX_TERMS:
                raise ConditionError(f"the condition has more than {MAX_TERMS} parts; split it into segments and "
                                     "combine them with in_segment(...)")
            pending.extend(getattr(node, f.name) for f in fields(node))


def _check(condition: Condition, schema: Schema, *, segment_path: tuple[str, ...] = ()) -> None:
    if isinstance(condition, And | Or):
        for item in condition.items:
            _check(item, schema, segment_path=segment_path)
    elif isinstance(condition, Not):
        _check(condition.item, schema, segment_path=segment_path)
    elif isinstance(condition, Compare):
        _check_attribute(condition, schema)
    elif isinstance(condition, InSegment):
        _check_segment(condition.segment, schema, segment_path)
    elif isinstance(condition, Consent):
        if not condition.purpose.strip():
            raise ConditionError("consent(...) needs a purpose or channel, e.g. consent(\"email\")")
    else:
        _check_event(condition)


def _check_attribute(condition: Compare, schema: Schema) -> None:
    kind = schema.attribute_types.get(condition.field)
    if kind is None:
        close = difflib.get_close_matches(condition.field, list(schema.attribute_types), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConditionError(f"no attribute is named {condition.field!r}{hint}")
    if condition.op not in OPS_BY_TYPE[kind]:
        raise ConditionError(f"{condition.field} is {_a(kind)}: {condition.op!r} does not apply (use "
                             f"{', '.join(sorted(OPS_BY_TYPE[kind]))})")
    for value in condition.values:
        _check_value(condition, kind, value)
    _check_regex(condition)


def _check_value(condition: Compare, kind: str, value: Value) -> None:
    wanted = _value_kind(value)
    if condition.op in DURATION_OPS:
        ok = wanted == "duration"
    elif kind in ("integer", "number"):
        ok = wanted == "number"
    elif kind in ("date", "datetime"):
        ok = wanted == "time"
    elif kind == "boolean":
        ok = wanted == "boolean"
    else:
        ok = wanted == "string"
    if not ok:
        example = {"integer": "30", "number": "49.9", "date": "2026-01-31 or 30d ago", "datetime":
                   "2026-01-31T10:00:00Z or 30d ago", "boolean": "true"}.get(kind, '"text"')
        raise ConditionError(f"{condition.field} is {_a(kind)}: compare it with a value such as {example}, not "
                             f"{to_text(Compare('x', '=', (value,)))[4:]}")


def _check_property(condition: Compare) -> None:
    if not PROPERTY.match(condition.field):
        raise ConditionError(f"{condition.field!r} is not a property name (letters, digits, _ and . for nesting)")
    kinds = {_value_kind(v) for v in condition.values}
    if len(kinds) > 1:
        raise ConditionError(f"the values compared with {condition.field} mix types ({', '.join(sorted(kinds))})")
    kind = next(iter(kinds), None)
    op = condition.op
    if (op in DURATION_OPS and kind != "duration") or (kind == "duration" and op not in DURATION_OPS):
        raise ConditionError(f"{op!r} on {condition.field} takes a duration such as 30d")
    if op in ("contains", "not contains", "starts with", "ends with", "regex", "not regex") and kind != "string":
        raise ConditionError(f"{op!r} on {condition.field} takes text")
    if op in ("before", "after", "on") and kind != "time":
        raise ConditionError(f"{op!r} on {condition.field} takes a date such as 2026-01-31 or 30d ago")
    if op in ("contains any", "contains all"):
        raise ConditionError(f"{op!r} applies to list attributes, not event properties")
    if kind == "boolean" and op not in ("=", "!=", "in", "not in"):
        raise ConditionError(f"{op!r} does not apply to true/false")
    _check_regex(condition)


def _check_regex(condition: Compare) -> None:
    if condition.op not in ("regex", "not regex"):
        return
    pattern = str(condition.values[0])
    try:
        with warnings.catch_warnings():  # re warns of [[:alpha:]]-like sets: unportable() names those
            warnings.simplefilter("ignore", FutureWarning)
            re.compile(pattern, re.ASCII)
    except (re.error, ValueError) as exc:
        raise ConditionError(f"the regex {pattern!r} is not valid: {exc}") from None
    problem = unportable(pattern)
    if problem:
        raise ConditionError(f"the regex {pattern!r} uses {problem}: the engines would not read it alike")


def _check_where(where: Condition | None) -> None:
    if where is None:
        return
    if isinstance(where, And | Or):
        for item in where.items:
            _check_where(item)
    elif isinstance(where, Not):
        _check_where(where.item)
    elif isinstance(where, Compare):
        _check_property(where)
    else:
        raise ConditionError("a 'where' filter compares the event's properties only (no functions inside)")


def _check_event(condition: Condition) -> None:
    if isinstance(condition, Performed | Aggregate | Sequence):
        _check_window(condition.window)
    if isinstance(condition, Performed | EventTime | Stopped | Aggregate):
        _check_where(condition.where)
    if isinstance(condition, Performed) and condition.count < 0:
        raise ConditionError("a count is a whole number of at least 0")
    if isinstance(condition, Aggregate) and not PROPERTY.match(condition.prop):
        raise ConditionError(f"{condition.prop!r} is not a property name")
    if isinstance(condition, EventTime):
        values = condition.values
        wanted = "duration" if condition.op in DURATION_OPS else "time"
        if len(values) != 1 or _value_kind(values[0]) != wanted:
            raise ConditionError(f"{condition.which}_time(...) {condition.op} takes "
                                 + ("a duration such as 30d" if wanted == "duration" else
                                    "a date such as 2026-01-31 or 30d ago"))
    for duration in _durations(condition):
        if duration.amount <= 0:
            raise ConditionError(f"a duration must be longer than 0, not {duration}")


def _durations(condition: Condition) -> list[Duration]:
    if isinstance(condition, Stopped):
        return [condition.recent, condition.earlier]
    if isinstance(condition, Sequence):
        return [condition.within] + ([condition.window.within] if condition.window.within else [])
    window = getattr(condition, "window", None)
    return [window.within] if window is not None and window.within is not None else []


def _check_window(window: Window) -> None:
    if window.start is not None and window.end is not None and _as_datetime(window.start) >= _as_datetime(
            window.end):
        raise ConditionError("'from' must be before 'to'")


def _check_segment(name: str, schema: Schema, path: tuple[str, ...]) -> None:
    if name in path:
        loop = " -> ".join((*path, name))
        raise ConditionError(f"segments refer to each other in a loop: {loop}")
    referenced = schema.segment(name)
    if referenced is not None:  # its own limits were checked when it was saved
        _check(referenced, schema, segment_path=(*path, name))


def _value_kind(value: Value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Duration):
        return "duration"
    return "time"  # date, datetime, Ago


def _as_datetime(value: date | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime(value.year, value.month, value.day)


def _a(kind: str) -> str:
    return {"integer": "an integer", "enum": "an enum", "object": "an object"}.get(kind, f"a {kind}")


__all__ = ["Ago", "ConditionError", "Schema", "check"]
