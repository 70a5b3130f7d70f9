"""The English engine: a condition said the way a marketer would read it in the console or the audit log.

``customers whose country is one of PL or TR and whose age is between 25 and 40 and who performed "Order
Completed" at least 2 times in the last 30 days (where revenue is greater than 50)``.
"""

from __future__ import annotations

from datetime import date, datetime

from portrait.conditions.ast import (
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

UNIT_WORDS = {"m": "minute", "h": "hour", "d": "day", "w": "week"}
OP_WORDS = {
    "=": "is {0}", "!=": "is not {0}", ">": "is greater than {0}", ">=": "is at least {0}", "<": "is less than {0}",
    "<=": "is at most {0}", "contains": "contains {0}", "not contains": "does not contain {0}",
    "starts with": "starts with {0}", "ends with": "ends with {0}", "regex": "matches the pattern {0}",
    "not regex": "does not match the pattern {0}", "before": "is before {0}", "after": "is after {0}",
    "on": "is on {0}", "in": "is one of {0}", "not in": "is none of {0}", "contains any": "contains any of {0}",
    "contains all": "contains all of {0}", "between": "is between {0} and {1}",
    "not between": "is not between {0} and {1}", "is set": "is known", "is not set": "is unknown",
    "within last": "is within the last {0}", "within next": "is within the next {0}",
    "not within last": "is not within the last {0}", "not within next": "is not within the next {0}",
}
COUNT_WORDS = {">=": "at least {0}", ">": "more than {0}", "<=": "at most {0}", "<": "fewer than {0}",
               "=": "exactly {0}", "!=": "other than {0}"}


def describe(condition: Condition) -> str:
    """``customers who ...`` / ``customers whose ...``: one sentence for the whole condition."""
    return "customers " + _clause(condition)


def _clause(condition: Condition) -> str:
    if isinstance(condition, And | Or):
        word = " and " if isinstance(condition, And) else " or "
        return word.join(f"({_clause(i)})" if isinstance(i, And | Or) else _clause(i) for i in condition.items)
    if isinstance(condition, Not):
        return f"not ({_clause(condition.item)})" if isinstance(condition.item, And | Or) else \
            "not " + _clause(condition.item)
    if isinstance(condition, Compare):
        return f"whose {condition.field.replace('_', ' ')} {_op(condition.op, condition.values)}"
    if isinstance(condition, InSegment):
        return f'who are in the segment "{condition.segment}"'
    if isinstance(condition, Performed):
        times = COUNT_WORDS[condition.count_op].format(condition.count)
        unit = "time" if condition.count == 1 else "times"
        return (f'who performed "{condition.event}" {times} {unit}{_window(condition.window)}'
                f"{_where(condition.where)}")
    if isinstance(condition, EventTime):
        return (f'whose {condition.which} "{condition.event}"{_where(condition.where)} '
                f"{_op(condition.op, condition.values)}")
    if isinstance(condition, Stopped):
        return (f'who performed "{condition.event}"{_where(condition.where)} in the {_duration(condition.earlier)} '
                f"before the last {_duration(condition.recent)} but not since")
    if isinstance(condition, Consent):
        words = {"granted": "granted", "denied": "refused", "unknown": "not given or refused"}[condition.status]
        verb = "have" if condition.op == "=" else "have not"
        return f'who {verb} {words} consent for "{condition.purpose}"' if condition.status != "unknown" else (
            f'whose consent for "{condition.purpose}" is {"" if condition.op == "=" else "not "}unknown')
    if isinstance(condition, Sequence):
        return (f'who performed "{condition.first}" and then "{condition.then}" within '
                f"{_duration(condition.within)}{_window(condition.window)}")
    return _aggregate(condition)


def _aggregate(condition: Aggregate) -> str:
    word = {"sum": "total", "avg": "average", "min": "smallest", "max": "largest"}[condition.function]
    return (f'whose {word} {condition.prop.replace("_", " ")} of "{condition.event}"{_window(condition.window)}'
            f"{_where(condition.where)} {_op(condition.op, (condition.value,))}")


def _op(op: str, values: tuple[Value, ...]) -> str:
    if op in ("in", "not in", "contains any", "contains all"):
        listed = [_value(v) for v in values]
        joined = listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + " or " + listed[-1]
        return OP_WORDS[op].format(joined.replace(" or ", " and ") if op == "contains all" else joined)
    return OP_WORDS[op].format(*(_value(v) for v in values))


def _window(window: Window) -> str:
    parts = []
    if window.within:
        parts.append(f" in the last {_duration(window.within)}")
    if window.start is not None:
        parts.append(f" since {_value(window.start)}")
    if window.end is not None:
        parts.append(f" before {_value(window.end)}")
    return "".join(parts)


def _where(where: Condition | None) -> str:
    if where is None:
        return ""
    return f" (where {_clause(where).replace('whose ', '')})"


def _duration(duration: Duration) -> str:
    word = UNIT_WORDS[duration.unit]
    return f"{duration.amount} {word}{'' if duration.amount == 1 else 's'}"


def _value(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Ago):
        return f"{_duration(value.duration)} ago"
    if isinstance(value, Duration):
        return _duration(value)
    return f"{value:g}" if isinstance(value, float) else str(value)
