"""Declared column types for rows (file imports and SQL sources): ``--types amount=number,signup=date``.

Without a declaration a CSV column is typed from its values, and one that does not fit (numbers, then ``tbd``) is
read as text throughout. A declared type is what the column is: each cell is converted to it, and a cell that does
not convert rejects its row (``invalid_value``, naming the column, the value and the type) instead of changing the
column. Pure functions, no I/O.

A value that already has the type is kept exactly as read (an integer stays an integer, a float a float), so a row
whose values the declaration does not change gets the message -- and message id -- it got without one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import date, datetime, time
from typing import Any

from portrait.errors import BadRequest

INVALID_VALUE = "invalid_value"  # the rejection code of a cell that does not convert to its column's type


class Misfit(ValueError):
    """A cell that does not convert to its column's declared type; the message is the reason."""


def _number(value: Any) -> int | float:
    if value.__class__ in (int, float):
        if value.__class__ is float and not math.isfinite(value):
            raise Misfit("is not a number")
        return value
    if isinstance(value, str):
        text = value.strip()
        if _INTEGER.match(text):
            return int(text)
        if _DECIMAL.match(text) and math.isfinite(number := float(text)):  # 1e999 is past a float's range
            return number
    raise Misfit("is not a number")


def _integer(value: Any) -> int:
    if value.__class__ is int:
        return value
    try:
        number = _number(value)
    except Misfit:
        raise Misfit("is not a whole number") from None
    if number != int(number):
        raise Misfit("is not a whole number")
    return int(number)


def _boolean(value: Any) -> bool:
    if value.__class__ is bool:
        return value
    if value.__class__ is int and value in (0, 1):  # a 0/1 column, read as integers
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _BOOLEANS:
        return _BOOLEANS[value.strip().lower()]
    raise Misfit("is not a boolean (true/false, yes/no, 1/0)")


def _date(value: Any) -> date:
    if isinstance(value, datetime):
        if value.time() == time(0) and value.tzinfo is None:
            return value.date()
        raise Misfit("is not a date (it has a time of day)")
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise Misfit("is not a date (YYYY-MM-DD)")


def _timestamp(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            pass
    raise Misfit("is not a timestamp (ISO-8601, e.g. 2024-01-05T10:11:12Z)")


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, date | time):
        return value.isoformat()
    raise Misfit(f"is not text (it is {'an object' if isinstance(value, Mapping) else 'a list'})")


# ASCII digits only, as the trait rules read numbers written as text: \d (and int()) take any script's digits
_INTEGER = re.compile(r"^[+-]?\d+$", re.ASCII)
_DECIMAL = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$", re.ASCII)
_BOOLEANS = {"true": True, "false": False, "yes": True, "no": False, "y": True, "n": False, "t": True,
             "f": False, "1": True, "0": False}
CONVERTERS: dict[str, Callable[[Any], Any]] = {"text": _text, "number": _number, "integer": _integer,
                                               "boolean": _boolean, "date": _date, "timestamp": _timestamp}
TYPE_NAMES = tuple(CONVERTERS)


def parse_types(text: str) -> dict[str, str]:
    """``amount=number,signup=date`` -> ``{"amount": "number", "signup": "date"}``; BadRequest says what is wrong."""
    types: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        column, equals, kind = part.rpartition("=")
        if not equals or not column.strip():
            raise BadRequest(f"--types takes COLUMN=TYPE pairs separated by commas (amount=number,signup=date), "
                             f"not {part!r}", code="invalid_mapping")
        types[column.strip()] = kind.strip()
    return checked_types(types)


def checked_types(types: Any) -> dict[str, str]:
    """The declared types, refused (BadRequest) when not a mapping of column names to known type names."""
    if not isinstance(types, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in types.items()):
        raise BadRequest("mapping setting 'types' must map column names to type names (amount: number)",
                         code="invalid_mapping")
    unknown = {column: kind for column, kind in types.items() if kind not in CONVERTERS}
    if unknown:
        column, kind = next(iter(unknown.items()))
        raise BadRequest(f"column {column}: {kind!r} is not a type; the types are {', '.join(TYPE_NAMES)}",
                         code="invalid_mapping")
    return dict(types)


# Values that have their column's type already, as the reader gave them: kept as they are (and not looked at
# further: this runs for every declared cell of every row).
_KEPT: dict[str, tuple[type, ...]] = {"text": (str,), "number": (int, float), "integer": (int,),
                                      "boolean": (bool,), "date": (date,), "timestamp": (datetime,)}


def row_converter(types: Mapping[str, str]) -> Callable[[Mapping[str, Any]], Mapping[str, Any]]:
    """What converts a row's declared columns (:func:`convert_row`), planned once for the whole file."""
    plan = [(column, CONVERTERS[kind], _KEPT[kind], kind == "text") for column, kind in types.items()]

    def convert(row: Mapping[str, Any]) -> Mapping[str, Any]:
        changed: dict[str, Any] | None = None
        for column, converter, kept, text in plan:
            value = row.get(column)
            if value is None or value.__class__ in kept:
                continue
            if not text and value.__class__ is str and not value.strip():
                converted = None  # an empty cell (in JSON, "") is no value, as a CSV's empty cell
            else:
                try:
                    converted = converter(value)
                except Misfit as exc:
                    raise Misfit(f"column {column}: {_shown(value)} {exc}") from None
            if changed is None:
                changed = dict(row)
            changed[column] = converted
        return row if changed is None else changed

    return convert


def convert_row(row: Mapping[str, Any], types: Mapping[str, str]) -> Mapping[str, Any]:
    """``row`` with its declared columns converted; an empty cell (None, or text of spaces only) is no value.
    Raises :class:`Misfit` with the reason for the first cell that does not convert."""
    return row_converter(types)(row)


def _shown(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else repr(_text_or_repr(value))
    return text if len(text) <= 80 else text[:77] + "..."


def _text_or_repr(value: Any) -> Any:
    try:
        return _text(value)
    except Misfit:
        return value
