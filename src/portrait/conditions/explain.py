"""Why a condition holds (or not) for one profile: each part of the tree with its result and the data behind it.

Results come from the Python engine itself (:mod:`.evaluate`), so an explanation never disagrees with membership.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from portrait.attributes import with_unit
from portrait.conditions.ast import (
    Aggregate,
    And,
    Compare,
    Condition,
    Consent,
    EventTime,
    InSegment,
    Not,
    Or,
    Performed,
    Sequence,
    Stopped,
    Window,
)
from portrait.conditions.check import Schema
from portrait.conditions.evaluate import (
    ProfileData,
    _event_filter,
    _property,
    compile_predicate,
    read_number,
)
from portrait.conditions.text import to_text


def explain(condition: Condition, schema: Schema, now: datetime, profile: ProfileData,
            static_members: Callable[[str], set[str]] = lambda name: set(),
            units: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``{"text", "holds", "why", "parts"}`` for the condition and, recursively, its parts. ``units``: the unit
    people read after each attribute's values (attributes.unit_shown), by code."""
    units = units or {}
    holds = compile_predicate(condition, schema, now, static_members)(profile)
    node: dict[str, Any] = {"text": to_text(condition), "holds": holds}
    if isinstance(condition, And | Or | Not):
        items = condition.items if isinstance(condition, And | Or) else (condition.item,)
        node["parts"] = [explain(i, schema, now, profile, static_members, units) for i in items]
        node["why"] = {And: "all parts must hold", Or: "one part must hold", Not: "the part must not hold"}[
            type(condition)]
    elif isinstance(condition, Compare):
        value = profile.traits.get(condition.field)
        node.update(attribute=condition.field, value=value)
        unit = units.get(condition.field)
        if unit:
            node["unit"] = unit
        node["why"] = compare_why(condition, value, unit)
    elif isinstance(condition, Consent):
        node["why"] = f"consent for {condition.purpose!r} is {profile.consent(condition.purpose)}"
    elif isinstance(condition, InSegment):
        referenced = schema.segment(condition.segment)
        if referenced is None:
            node["why"] = "on the uploaded list" if holds else "not on the uploaded list"
        else:
            node["why"] = f"the condition of segment {condition.segment!r}"
            node["parts"] = [explain(referenced, schema, now, profile, static_members, units)]
    else:
        node["why"] = _event_why(condition, now, profile)
    return node


def compare_why(condition: Compare, value: Any, unit: str | None) -> str:
    """``age is 52``; with a unit, the value and the threshold both carry it, as the analytics and the profile
    write values (``total_revenue is 140.5 EUR; the condition: > 100 EUR``): the condition's text alone cannot say
    whether 100 means euros or cents."""
    if value is None:
        return f"{condition.field} is not set"
    why = with_unit(repr(value), unit)
    if not unit or not condition.values:
        return f"{condition.field} is {why}"
    threshold = to_text(condition)[len(condition.field) + 1:]  # "> 100", "between 25 and 40", "in (1, 2)"
    return f"{condition.field} is {why}; the condition: {with_unit(threshold, unit)}"


def _event_why(condition: Condition, now: datetime, profile: ProfileData) -> str:
    if isinstance(condition, Sequence):
        firsts = len(profile.named(condition.first))
        thens = len(profile.named(condition.then))
        return f"{firsts} {condition.first!r} and {thens} {condition.then!r} events"
    assert isinstance(condition, Performed | EventTime | Stopped | Aggregate)
    keep = _event_filter(condition.event, getattr(condition, "window", Window()), condition.where, now)
    matching = [e for e in profile.named(condition.event) if keep(e)]
    if isinstance(condition, Performed):
        return f"performed {len(matching)} matching time{'s' if len(matching) != 1 else ''}"
    if isinstance(condition, EventTime):
        if not matching:
            return "never performed"
        moment = (min if condition.which == "first" else max)(e.timestamp for e in matching)
        return f"{condition.which} time: {moment.isoformat(timespec='milliseconds')}Z"  # as the API writes times
    if isinstance(condition, Stopped):
        recent_start = now - timedelta(seconds=condition.recent.seconds)
        earlier_start = recent_start - timedelta(seconds=condition.earlier.seconds)
        earlier = sum(1 for e in matching if earlier_start <= e.timestamp < recent_start)
        recent = sum(1 for e in matching if e.timestamp >= recent_start)
        return f"{earlier} in the earlier period, {recent} in the recent one"
    path = condition.prop.split(".")
    numbers = [n for e in matching if (n := read_number(_property(e.properties, path))) is not None]
    if condition.function == "sum":
        return f"sum of {condition.prop}: {sum(numbers):g} over {len(numbers)} events"
    if not numbers:
        return f"no {condition.event!r} event with a numeric {condition.prop}"
    value = {"avg": sum(numbers) / len(numbers), "min": min(numbers), "max": max(numbers)}[condition.function]
    return f"{condition.function} of {condition.prop}: {value:g} over {len(numbers)} events"
