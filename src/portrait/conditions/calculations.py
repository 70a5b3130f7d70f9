"""Calculated attributes: definitions in the same written style as conditions, and what type each one yields.

    count("Order Completed", within = 90d)                 integer   (0 without such events)
    sum("Order Completed", revenue)                        number    (0 without such events)
    avg | min | max("Order Completed", revenue, ...)       number
    first_value | last_value("Order Completed", currency)  string
    most_frequent("Product Viewed", category)              string    (ties: the alphabetically first)
    distinct_count("Product Viewed", sku)                  integer   (0 without such events)
    unique_list("Product Viewed", category)                list      (sorted)
    first_time | last_time("Order Completed")              datetime
    days_since(last_time("Order Completed"))               integer   (whole days)
    days_since(created_at)  years_since(birthday)          integer   (from a date or datetime attribute)
    concat(first_name, " ", last_name)                     string    (missing parts are left out)
    rfm_score(recency | frequency | monetary, "Order Completed", revenue)   integer 1-5 (quintiles)
    rfm_group("Order Completed", revenue)                  enum      (Champions, Loyal, ... see docs)

Event functions take the options of conditions: ``within = 30d``, ``from = DATE``, ``to = DATE``, ``where ...``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from portrait.conditions.ast import Condition, Window
from portrait.conditions.text import ConditionError, Parser, _where, _window, to_text

EVENT_FUNCTIONS = {"count": "integer", "sum": "number", "avg": "number", "min": "number", "max": "number",
                   "first_value": "string", "last_value": "string", "most_frequent": "string",
                   "distinct_count": "integer", "unique_list": "list", "first_time": "datetime",
                   "last_time": "datetime"}
RFM_PARTS = ("recency", "frequency", "monetary")
RFM_GROUPS = ("Champions", "Loyal", "New Customers", "Potential Loyalists", "Promising", "Can't Lose Them",
              "At Risk", "About to Sleep", "Hibernating")


@dataclass(frozen=True)
class EventValue:
    function: str  # one of EVENT_FUNCTIONS
    event: str
    prop: str | None = None  # every function but count / first_time / last_time takes one
    window: Window = field(default_factory=Window)
    where: Condition | None = None


@dataclass(frozen=True)
class DaysSince:
    source: EventValue | str  # first_time/last_time(...) or a date/datetime attribute code


@dataclass(frozen=True)
class YearsSince:
    attribute: str


@dataclass(frozen=True)
class Concat:
    parts: tuple[tuple[str, str], ...]  # ("attribute", code) or ("text", literal)


@dataclass(frozen=True)
class Rfm:
    part: str  # recency, frequency, monetary, or group
    event: str
    prop: str


Calculation = EventValue | DaysSince | YearsSince | Concat | Rfm


def result_type(calculation: Calculation) -> str:
    if isinstance(calculation, EventValue):
        return EVENT_FUNCTIONS[calculation.function]
    if isinstance(calculation, Concat):
        return "string"
    if isinstance(calculation, Rfm):
        return "enum" if calculation.part == "group" else "integer"
    return "integer"


def parse_definition(text: str) -> Calculation:
    """A calculated attribute's definition; ConditionError points at the mistake."""
    if not text.strip():
        raise ConditionError("the definition is empty", 0)
    parser = _DefinitionParser(text)
    calculation = parser.calculation()
    if parser.current.kind != "end":
        raise parser.fail("the end of the definition")
    return calculation


class _DefinitionParser(Parser):
    def calculation(self) -> Calculation:
        token = self.current
        name = token.word
        if token.kind != "word" or self.peek().text != "(":
            raise self.fail("a function such as count(...), sum(...), days_since(...) or concat(...)")
        self.advance()
        self.take("(")
        if name in EVENT_FUNCTIONS:
            return self.event_value(name)
        if name == "days_since":
            inner: EventValue | str
            if self.current.word in ("first_time", "last_time") and self.peek().text == "(":
                function = self.advance().word
                self.take("(")
                inner = self.event_value(function)
            else:
                inner = self.attribute()
            self.take(")")
            return DaysSince(inner)
        if name == "years_since":
            attribute = self.attribute()
            self.take(")")
            return YearsSince(attribute)
        if name == "concat":
            return self.concat()
        if name in ("rfm_score", "rfm_group"):
            return self.rfm(name)
        raise ConditionError(f"unknown function {name!r}: expected one of {', '.join(EVENT_FUNCTIONS)}, days_since, "
                             "years_since, concat, rfm_score, rfm_group", token.position)

    def event_value(self, function: str) -> EventValue:
        event = self.string("an event name")
        prop = None
        if function not in ("count", "first_time", "last_time"):
            self.take(",")
            prop = self.attribute("a property name")
        options = self.options(("within", "from", "to", "where"))
        return EventValue(function, event, prop, _window(options), _where(options))

    def attribute(self, what: str = "an attribute code") -> str:
        token = self.current
        if token.kind != "word":
            raise self.fail(what)
        self.advance()
        return token.text

    def concat(self) -> Concat:
        parts: list[tuple[str, str]] = []
        while True:
            if self.current.kind == "string":
                parts.append(("text", self.string("text")))
            else:
                parts.append(("attribute", self.attribute("an attribute code or \"text\"")))
            if self.current.text != ",":
                break
            self.advance()
        self.take(")")
        if not any(kind == "attribute" for kind, _ in parts):
            raise ConditionError("concat(...) needs at least one attribute", self.current.position)
        return Concat(tuple(parts))

    def rfm(self, name: str) -> Rfm:
        part = "group"
        if name == "rfm_score":
            token = self.current
            part = self.attribute("recency, frequency or monetary")
            if part not in RFM_PARTS:
                raise ConditionError(f"expected recency, frequency or monetary, found {part!r}", token.position)
            self.take(",")
        event = self.string("an event name")
        self.take(",")
        prop = self.attribute("the property holding the amount (e.g. revenue)")
        self.take(")")
        return Rfm(part, event, prop)


def definition_text(calculation: Calculation) -> str:
    """The canonical text form."""
    if isinstance(calculation, EventValue):
        args = [json.dumps(calculation.event, ensure_ascii=False)]
        if calculation.prop is not None:
            args.append(calculation.prop)
        window = calculation.window
        if window.within:
            args.append(f"within = {window.within}")
        if window.start is not None:
            args.append(f"from = {window.start.isoformat()}")
        if window.end is not None:
            args.append(f"to = {window.end.isoformat()}")
        if calculation.where is not None:
            args.append(f"where {to_text(calculation.where)}")
        return f"{calculation.function}({', '.join(args)})"
    if isinstance(calculation, DaysSince):
        inner = calculation.source if isinstance(calculation.source, str) else definition_text(calculation.source)
        return f"days_since({inner})"
    if isinstance(calculation, YearsSince):
        return f"years_since({calculation.attribute})"
    if isinstance(calculation, Concat):
        return "concat(" + ", ".join(json.dumps(v, ensure_ascii=False) if k == "text" else v
                                     for k, v in calculation.parts) + ")"
    event = json.dumps(calculation.event, ensure_ascii=False)
    if calculation.part == "group":
        return f"rfm_group({event}, {calculation.prop})"
    return f"rfm_score({calculation.part}, {event}, {calculation.prop})"


def attributes_used(calculation: Calculation) -> list[str]:
    if isinstance(calculation, DaysSince) and isinstance(calculation.source, str):
        return [calculation.source]
    if isinstance(calculation, YearsSince):
        return [calculation.attribute]
    if isinstance(calculation, Concat):
        return [v for k, v in calculation.parts if k == "attribute"]
    return []


_DATES = ("date", "datetime")
_SCALARS = ("string", "integer", "number", "boolean", "date", "datetime", "enum")
_NEEDS = {_DATES: "a date or datetime", _SCALARS: "a single value (not a list or object)"}


def attribute_needs(calculation: Calculation) -> dict[str, tuple[str, ...]]:
    """The types each attribute of the definition must have for it to make sense: days_since and years_since count
    from a date or datetime (of anything else every value is null); concat joins single values (a list or object
    would be pasted in as JSON)."""
    if isinstance(calculation, DaysSince) and isinstance(calculation.source, str):
        return {calculation.source: _DATES}
    if isinstance(calculation, YearsSince):
        return {calculation.attribute: _DATES}
    if isinstance(calculation, Concat):
        return dict.fromkeys(attributes_used(calculation), _SCALARS)
    return {}


def misfit(calculation: Calculation, code: str, kind: str) -> str | None:
    """Why the definition cannot use attribute ``code`` of type ``kind`` (what it needs instead), or None."""
    needed = attribute_needs(calculation).get(code)
    if needed is None or kind in needed:
        return None
    return f"it needs {_NEEDS[needed]}"


def unfit_attribute(calculation: Calculation, types: Mapping[str, str]) -> tuple[str, str] | None:
    """The attribute the definition cannot use as typed in ``types``, and why (``cannot use tags, a list attribute:
    it needs ...``), or None. An attribute not defined yet is no reason: it has no values."""
    for code in attribute_needs(calculation):
        reason = misfit(calculation, code, types[code]) if code in types else None
        if reason:
            kind = types[code]
            return code, f"cannot use {code}, {'an' if kind[0] in 'aeiou' else 'a'} {kind} attribute: {reason}"
    return None


def unfit_type(calculation: Calculation, code: str, before: str, after: str) -> str | None:
    """Why giving attribute ``code`` the type ``after`` breaks the definition, or None. A definition that did not
    fit ``before`` either (saved before definitions were checked at all) is not broken by this change."""
    if misfit(calculation, code, before):
        return None
    return misfit(calculation, code, after)


# Event functions whose result gives a property's value back (one event's value, a list of them, the extreme of
# them, a sum or mean over a single event); count and distinct_count only count.
_COPYING_FUNCTIONS = frozenset(EVENT_FUNCTIONS) - {"count", "distinct_count", "first_time", "last_time"}


def copied_values(calculation: Calculation) -> tuple[frozenset[str], frozenset[str]]:
    """The attributes and the event properties whose values the result reproduces: the names in
    ``concat(first_name, " ", last_name)``, the date behind ``days_since(birthday)``, the email of
    ``last_value("Signed Up", email)``. An age in whole years, counts and RFM scores do not give a value back."""
    if isinstance(calculation, EventValue) and calculation.function in _COPYING_FUNCTIONS and calculation.prop:
        return frozenset(), frozenset({calculation.prop})
    if isinstance(calculation, DaysSince) and isinstance(calculation.source, str):
        return frozenset({calculation.source}), frozenset()
    if isinstance(calculation, Concat):
        return frozenset(attributes_used(calculation)), frozenset()
    return frozenset(), frozenset()
