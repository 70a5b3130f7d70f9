"""The condition tree: what a segment (or later a journey trigger) says about a customer. Plain frozen dataclasses.

A condition is true or false for a profile -- never unknown. Positive operators are false on a missing value;
each negative operator is exactly the negation of its positive twin (so ``country != "PL"`` holds for a profile
without a country). docs/segments.md has the full table.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime

# Operators on one attribute (or event property), by how many values they take.
NO_VALUE_OPS = ("is set", "is not set")
ONE_VALUE_OPS = ("=", "!=", ">", ">=", "<", "<=", "contains", "not contains", "starts with", "ends with",
                 "regex", "not regex", "before", "after", "on")
LIST_OPS = ("in", "not in", "contains any", "contains all")
RANGE_OPS = ("between", "not between")
DURATION_OPS = ("within last", "within next", "not within last", "not within next")
OPS = NO_VALUE_OPS + ONE_VALUE_OPS + LIST_OPS + RANGE_OPS + DURATION_OPS
NEGATIONS = {"!=": "=", "not in": "in", "not contains": "contains", "not regex": "regex", "not between": "between",
             "is not set": "is set", "not within last": "within last", "not within next": "within next"}
COMPARISONS = ("=", "!=", ">", ">=", "<", "<=")
AGGREGATES = ("sum", "avg", "min", "max")
DURATION_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True, order=True)
class Duration:
    """A length of time, written ``45m``, ``12h``, ``30d`` or ``2w``."""

    amount: int
    unit: str  # one of DURATION_UNITS

    @property
    def seconds(self) -> int:
        return self.amount * DURATION_UNITS[self.unit]

    def __str__(self) -> str:
        return f"{self.amount}{self.unit}"


@dataclass(frozen=True)
class Ago:
    """A time relative to evaluation: ``30d ago``."""

    duration: Duration


Value = str | int | float | bool | date | datetime | Ago | Duration


@dataclass(frozen=True)
class Compare:
    """``field op values``: an attribute of the profile, or (inside ``where``) a property of an event."""

    field: str
    op: str
    values: tuple[Value, ...] = ()


@dataclass(frozen=True)
class And:
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class Not:
    item: Condition


@dataclass(frozen=True)
class Window:
    """Which events count: all time, the last N (``within = 30d``) or between two dates (``from``/``to``)."""

    within: Duration | None = None
    start: date | datetime | None = None
    end: date | datetime | None = None  # exclusive; a date means the start of that day


@dataclass(frozen=True)
class Performed:
    """Performed an event (with property filters) a number of times: ``performed("X", count >= 2, within = 30d,
    where revenue > 50)``. Without ``count`` it means at least once."""

    event: str
    count_op: str = ">="
    count: int = 1
    window: Window = Window()
    where: Condition | None = None


@dataclass(frozen=True)
class EventTime:
    """When the first or last such event happened, compared with a date op: ``last_time("X") before 30d ago``."""

    which: str  # "first" or "last"
    event: str
    op: str  # before, after, on, within last, not within last
    values: tuple[Value, ...]
    where: Condition | None = None


@dataclass(frozen=True)
class Stopped:
    """Did it in the ``earlier`` period right before the ``recent`` one, and not in the recent one."""

    event: str
    recent: Duration
    earlier: Duration
    where: Condition | None = None


@dataclass(frozen=True)
class Sequence:
    """Performed ``first`` and then ``then`` no later than ``within`` after it (optionally only events since
    ``window``)."""

    first: str
    then: str
    within: Duration
    window: Window = Window()


@dataclass(frozen=True)
class Aggregate:
    """An aggregate of a numeric property over events, compared: ``sum("Order Completed", revenue, within = 90d)
    > 100``. The sum of no events is 0; avg/min/max of no events are missing (so false). Only JSON numbers count."""

    function: str  # one of AGGREGATES
    event: str
    prop: str
    op: str  # one of COMPARISONS
    value: int | float
    window: Window = Window()
    where: Condition | None = None


@dataclass(frozen=True)
class InSegment:
    segment: str


CONSENT_STATUSES = ("granted", "denied", "unknown")


@dataclass(frozen=True)
class Consent:
    """The customer's current consent for a purpose or channel: ``consent("email") = granted``. ``unknown``: they
    never said either way."""

    purpose: str
    op: str  # = or !=
    status: str  # granted, denied or unknown


Condition = And | Or | Not | Compare | Performed | EventTime | Stopped | Sequence | Aggregate | InSegment | Consent


def attribute_comparisons(condition: Condition) -> Iterator[Compare]:
    """The comparisons a condition makes on the profile's attributes, in order: not an event's ``where`` (which
    compares the event's properties), nor a referenced segment's (a name here, its condition elsewhere)."""
    if isinstance(condition, Compare):
        yield condition
    elif isinstance(condition, And | Or):
        for item in condition.items:
            yield from attribute_comparisons(item)
    elif isinstance(condition, Not):
        yield from attribute_comparisons(condition.item)
