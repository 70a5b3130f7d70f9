"""The JSON form of conditions, for the API and the console's builder.

``from_json(to_json(c)) == c``. Shapes (docs/segments.md has examples):

    {"and": [...]}  {"or": [...]}  {"not": {...}}
    {"attribute": "age", "op": "between", "values": [25, 40]}          (inside "where": "property" instead)
    {"performed": "Order Completed", "count": {"op": ">=", "value": 2}, "within": "30d", "where": {...}}
    {"first_time" | "last_time": "Order Completed", "op": "before", "values": [{"ago": "30d"}], "where": {...}}
    {"stopped": "Login", "recent": "30d", "earlier": "60d"}
    {"sequence": ["Product Added", "Order Completed"], "within": "1d"}
    {"aggregate": "sum", "event": "Order Completed", "property": "revenue", "op": ">", "value": 100}
    {"in_segment": "churned"}

Values are JSON strings, numbers and booleans, or ``{"date": "2026-01-31"}``, ``{"datetime":
"2026-01-31T10:00:00Z"}``, ``{"ago": "30d"}``, ``{"duration": "30d"}``. ``from``/``to`` take dates the same way.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime
from typing import Any

from portrait.conditions.ast import (
    AGGREGATES,
    COMPARISONS,
    CONSENT_STATUSES,
    DURATION_UNITS,
    OPS,
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
from portrait.conditions.text import ConditionError

_DURATION = re.compile(r"^(\d+)([mhdw])$")


def to_json(condition: Condition, *, field_key: str = "attribute") -> dict[str, Any]:
    if isinstance(condition, And | Or):
        key = "and" if isinstance(condition, And) else "or"
        return {key: [to_json(item, field_key=field_key) for item in condition.items]}
    if isinstance(condition, Not):
        return {"not": to_json(condition.item, field_key=field_key)}
    if isinstance(condition, Compare):
        return {field_key: condition.field, "op": condition.op, "values": [_value_json(v) for v in condition.values]}
    if isinstance(condition, InSegment):
        return {"in_segment": condition.segment}
    if isinstance(condition, Consent):
        return {"consent": condition.purpose, "op": condition.op, "value": condition.status}
    if isinstance(condition, Sequence):
        return {"sequence": [condition.first, condition.then], "within": str(condition.within),
                **_window_json(condition.window)}
    if isinstance(condition, Performed):
        out: dict[str, Any] = {"performed": condition.event}
        if (condition.count_op, condition.count) != (">=", 1):
            out["count"] = {"op": condition.count_op, "value": condition.count}
        return {**out, **_window_json(condition.window), **_where_json(condition.where)}
    if isinstance(condition, EventTime):
        return {f"{condition.which}_time": condition.event, "op": condition.op,
                "values": [_value_json(v) for v in condition.values], **_where_json(condition.where)}
    if isinstance(condition, Stopped):
        return {"stopped": condition.event, "recent": str(condition.recent), "earlier": str(condition.earlier),
                **_where_json(condition.where)}
    return {"aggregate": condition.function, "event": condition.event, "property": condition.prop,
            "op": condition.op, "value": condition.value, **_window_json(condition.window),
            **_where_json(condition.where)}


def _window_json(window: Window) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if window.within is not None:
        out["within"] = str(window.within)
    if window.start is not None:
        out["from"] = _value_json(window.start)
    if window.end is not None:
        out["to"] = _value_json(window.end)
    return out


def _where_json(where: Condition | None) -> dict[str, Any]:
    return {} if where is None else {"where": to_json(where, field_key="property")}


def _value_json(value: Value) -> Any:
    if isinstance(value, datetime):
        return {"datetime": value.isoformat() + "Z"}
    if isinstance(value, date):
        return {"date": value.isoformat()}
    if isinstance(value, Ago):
        return {"ago": str(value.duration)}
    if isinstance(value, Duration):
        return {"duration": str(value)}
    return value


# -- reading -----------------------------------------------------------------------------------------------------
# Event kinds first: an aggregate also has a "property" key (the property it adds up).
KINDS = ("and", "or", "not", "performed", "first_time", "last_time", "stopped", "sequence", "aggregate", "in_segment",
         "consent", "attribute", "property")


def from_json(document: Any, *, field_key: str = "attribute", path: str = "condition") -> Condition:
    """The condition a JSON document describes; ConditionError names the path of the first mistake."""
    if not isinstance(document, dict):
        raise ConditionError(f"{path} must be an object, not {type(document).__name__}")
    kind = next((k for k in KINDS if k in document), None)
    if kind is None:
        raise ConditionError(f"{path} needs one of the keys {', '.join(KINDS)}")
    if kind in ("and", "or"):
        items = document[kind]
        if not isinstance(items, list) or len(items) < 2:
            raise ConditionError(f"{path}.{kind} must be a list of at least two conditions")
        parts = tuple(from_json(item, field_key=field_key, path=f"{path}.{kind}[{i}]") for i, item in enumerate(items))
        return And(parts) if kind == "and" else Or(parts)
    if kind == "not":
        return Not(from_json(document["not"], field_key=field_key, path=f"{path}.not"))
    if kind in ("attribute", "property"):
        if kind != field_key:
            raise ConditionError(f"{path}: use {field_key!r} here, not {kind!r}")
        return _compare(document, kind, path)
    return _event(document, kind, path)


def _compare(document: dict[str, Any], key: str, path: str) -> Compare:
    field = _text(document, key, path)
    op = _text(document, "op", path)
    if op not in OPS:
        raise ConditionError(f"{path}.op {op!r} is not one of {', '.join(OPS)}")
    raw = document.get("values", [document["value"]] if "value" in document else [])
    if not isinstance(raw, list):
        raise ConditionError(f"{path}.values must be a list")
    values = tuple(_value(v, f"{path}.values[{i}]") for i, v in enumerate(raw))
    _check_arity(op, values, path)
    return Compare(field, op, values)


def _check_arity(op: str, values: tuple[Value, ...], path: str) -> None:
    wanted = {"is set": 0, "is not set": 0, "between": 2, "not between": 2}.get(op, 1)
    if op in ("in", "not in", "contains any", "contains all"):
        if not values:
            raise ConditionError(f"{path}: {op!r} needs at least one value")
    elif len(values) != wanted:
        raise ConditionError(f"{path}: {op!r} takes {wanted} value{'s' if wanted != 1 else ''}, not {len(values)}")
    if op.endswith(("within last", "within next")) and not isinstance(values[0], Duration):
        raise ConditionError(f"{path}: {op!r} takes a duration such as {{\"duration\": \"30d\"}}")


def _event(document: dict[str, Any], kind: str, path: str) -> Condition:
    where = (from_json(document["where"], field_key="property", path=f"{path}.where")
             if document.get("where") is not None else None)
    if kind == "in_segment":
        return InSegment(_text(document, "in_segment", path))
    if kind == "consent":
        op, status = document.get("op", "="), document.get("value")
        if op not in ("=", "!=") or status not in CONSENT_STATUSES:
            raise ConditionError(f"{path} needs op = or != and a value of {', '.join(CONSENT_STATUSES)}")
        return Consent(_text(document, "consent", path), op, status)
    if kind == "sequence":
        steps = document["sequence"]
        if not (isinstance(steps, list) and len(steps) == 2 and all(isinstance(s, str) for s in steps)):
            raise ConditionError(f"{path}.sequence must be a list of two event names")
        return Sequence(steps[0], steps[1], read_duration(document.get("within"), f"{path}.within"),
                        _window(document, path, with_within=False))
    if kind == "performed":
        count = document.get("count", {"op": ">=", "value": 1})
        if not isinstance(count, dict):
            raise ConditionError(f"{path}.count must be {{\"op\": \">=\", \"value\": 2}}")
        op, value = count.get("op"), count.get("value")
        if op not in COMPARISONS or not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConditionError(f"{path}.count needs an op ({', '.join(COMPARISONS)}) and a whole number value")
        return Performed(_text(document, "performed", path), op, value, _window(document, path), where)
    if kind in ("first_time", "last_time"):
        op = _text(document, "op", path)
        if op not in ("before", "after", "on", "within last", "not within last"):
            raise ConditionError(f"{path}.op must be before, after, on, within last or not within last")
        raw = document.get("values", [document["value"]] if "value" in document else [])
        values = tuple(_value(v, f"{path}.values[{i}]") for i, v in enumerate(raw if isinstance(raw, list) else []))
        _check_arity(op, values, path)
        return EventTime(kind.removesuffix("_time"), _text(document, kind, path), op, values, where)
    if kind == "stopped":
        return Stopped(_text(document, "stopped", path), read_duration(document.get("recent"), f"{path}.recent"),
                       read_duration(document.get("earlier"), f"{path}.earlier"), where)
    function = _text(document, "aggregate", path)
    if function not in AGGREGATES:
        raise ConditionError(f"{path}.aggregate must be one of {', '.join(AGGREGATES)}")
    op, value = document.get("op"), document.get("value")
    if op not in COMPARISONS or not isinstance(value, int | float) or not _finite_number(value):
        raise ConditionError(f"{path} needs an op ({', '.join(COMPARISONS)}) and a number value")
    return Aggregate(function, _text(document, "event", path), _text(document, "property", path), op, value,
                     _window(document, path), where)


def _window(document: dict[str, Any], path: str, *, with_within: bool = True) -> Window:
    within = read_duration(document["within"], f"{path}.within") if with_within and "within" in document else None
    start = _time(document["from"], f"{path}.from") if "from" in document else None
    end = _time(document["to"], f"{path}.to") if "to" in document else None
    return Window(within, start, end)


def _time(raw: Any, path: str) -> date | datetime:
    value = _value(raw, path)
    if not isinstance(value, date):
        raise ConditionError(f'{path} must be {{"date": "2026-01-31"}} or {{"datetime": ...}}')
    return value


def read_duration(raw: Any, path: str) -> Duration:
    """A duration such as "30d" (units m, h, d, w); ConditionError naming ``path`` otherwise."""
    match = _DURATION.match(raw) if isinstance(raw, str) else None
    if match is None:
        raise ConditionError(f"{path} must be a duration such as \"30d\" (units {', '.join(DURATION_UNITS)})")
    return Duration(int(match.group(1)), match.group(2))


def _value(raw: Any, path: str) -> Value:
    if isinstance(raw, str | bool | int):
        return raw
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise ConditionError(f"{path} must be a finite number")
        return raw
    if isinstance(raw, dict) and len(raw) == 1:
        (key, text), = raw.items()
        try:
            if key == "date" and isinstance(text, str):
                return date.fromisoformat(text)
            if key == "datetime" and isinstance(text, str):
                value = datetime.fromisoformat(text.replace("Z", "+00:00"))
                return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
        except ValueError:
            raise ConditionError(f"{path}: {text!r} is not a valid {key}") from None
        if key == "ago":
            return Ago(read_duration(text, path))
        if key == "duration":
            return read_duration(text, path)
    raise ConditionError(f'{path} must be text, a number, true/false, or {{"date"|"datetime"|"ago"|"duration": ...}}')


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _text(document: dict[str, Any], key: str, path: str) -> str:
    value = document.get(key)
    if not isinstance(value, str) or not value:
        raise ConditionError(f"{path}.{key} must be non-empty text")
    return value

