"""Rewriting the values of a saved condition (a segment's, or a calculated attribute's definition) that name an
erased person (see :mod:`portrait.subjects`).

An erasure leaves no byte of the person in the data directory, so a segment saved as ``email = "ann@example.com"``
cannot keep her email. Each value naming her (the caller says which: one of her identifier values, however the
condition wrote it) becomes :data:`ERASED`, in the tree, so every form printed from it -- the JSON kept for a
segment, the text kept for a definition, the text and English shown -- says the same.

Why that keeps the segment's meaning: her identifiers are suppressed by the erasure, so no profile can hold them
again, and only she held them (an identifier names one profile). ``email = her`` and ``email in (her, ...)``
selected her, now nobody; ``!=`` and ``not in`` selected everyone but her, still everyone. The placeholder is no
email, no phone number, and no identifier a message is likely to give. A pattern operator (``regex``) gets the
placeholder as a pattern matching only that literal text. What no longer holds: another customer's value equal to
hers in an attribute that is no identifier (``referred_by = "ann@example.com"``), or in an event property inside
``where`` (her own events are erased; a referral naming her is not) -- those matched, and match no more. Values
that are no identifier (her first name) are not known to be hers, and stay; nor is a number as text compared with
anything but its own kind of identifier (``shop = "42"`` where she was user 42: the caller decides).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from portrait.conditions.ast import (
    Aggregate,
    And,
    Compare,
    Condition,
    EventTime,
    Not,
    Or,
    Performed,
    Stopped,
    Value,
)
from portrait.conditions.calculations import Calculation, Concat, DaysSince, EventValue

ERASED = "(erased)"
ERASED_PATTERN = r"\(erased\)"  # what regex / not regex get: matches the placeholder text only
_PATTERN_OPS = ("regex", "not regex")


class Eraser:
    """Replaces the string values ``naming`` recognizes (given the value and the field it is compared to, None for a
    ``concat`` text); counts how many it replaced (``replaced``)."""

    def __init__(self, naming: Callable[[str, str | None], bool]) -> None:
        self._naming = naming
        self.replaced = 0

    def text(self, value: str, *, pattern: bool = False, field: str | None = None) -> str:
        """``value``, or the placeholder if it names the person."""
        if value in (ERASED, ERASED_PATTERN) or not self._naming(value, field):
            return value
        self.replaced += 1
        return ERASED_PATTERN if pattern else ERASED

    def values(self, op: str, values: tuple[Value, ...], field: str | None = None) -> tuple[Value, ...]:
        return tuple(self.text(v, pattern=op in _PATTERN_OPS, field=field) if isinstance(v, str) else v
                     for v in values)

    def condition(self, condition: Condition | None) -> Condition | None:
        """``condition`` with the values naming the person replaced (the same object if none did)."""
        if condition is None:
            return None
        before = self.replaced
        rewritten = self._rewrite(condition)
        return rewritten if self.replaced != before else condition

    def _rewrite(self, condition: Condition) -> Condition:
        if isinstance(condition, And | Or):
            return type(condition)(tuple(self._rewrite(item) for item in condition.items))
        if isinstance(condition, Not):
            return Not(self._rewrite(condition.item))
        if isinstance(condition, Compare):
            return replace(condition, values=self.values(condition.op, condition.values, condition.field))
        if isinstance(condition, EventTime):
            return replace(condition, values=self.values(condition.op, condition.values),
                           where=self.condition(condition.where))
        if isinstance(condition, Performed | Stopped | Aggregate):
            return replace(condition, where=self.condition(condition.where))
        return condition  # in_segment, consent, sequence: names of segments, purposes and events, no values

    def calculation(self, calculation: Calculation) -> Calculation:
        """A calculated attribute's definition with the values naming the person replaced: those of its ``where``
        and the text pasted by ``concat`` (``concat(first_name, " <ann@example.com>")``)."""
        if isinstance(calculation, EventValue):
            return replace(calculation, where=self.condition(calculation.where))
        if isinstance(calculation, DaysSince) and isinstance(calculation.source, EventValue):
            source = self.calculation(calculation.source)
            assert isinstance(source, EventValue)
            return DaysSince(source)
        if isinstance(calculation, Concat):
            return Concat(tuple((kind, self.text(part) if kind == "text" else part)
                                for kind, part in calculation.parts))
        return calculation  # years_since, rfm: attribute codes, event names, no values
