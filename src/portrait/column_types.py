"""Declared column types for rows (file imports and SQL sources): ``--types amount=number,signup=date``.

A date or timestamp column written another way than ISO-8601 declares its strptime format after the type:
``signup=date:%d.%m.%Y`` (24.12.2025), ``seen=timestamp:%m/%d/%Y %H:%M`` (12/24/2025 18:30). The format is the only
reading: no guessing between day-first and month-first.

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
from datetime import UTC, date, datetime, time
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
FORMATTED = ("date", "timestamp")  # the types that take a format: date:%d.%m.%Y


def split_declaration(declaration: str) -> tuple[str, str | None]:
    """``date:%d.%m.%Y`` -> ``("date", "%d.%m.%Y")``; ``number`` -> ``("number", None)``."""
    kind, colon, fmt = declaration.partition(":")
    return kind, (fmt if colon else None)


def has_format(declaration: str) -> bool:
    """Whether the declaration reads its text cells with a format (so a CSV reader must leave them as text)."""
    return split_declaration(declaration)[1] is not None


# The strptime directives a format may use. Left out: %c, %x and %X (the locale's spelling, not the file's), %Z (a
# zone's name: strptime takes UTC, GMT and this machine's zone, and drops it -- 10:00 CET would be 10:00 UTC) and the
# week-based ones (%G %V %u %U %W %w: a date is its year, month and day).
_DIRECTIVES = ("Y", "y", "m", "b", "B", "d", "j", "H", "I", "p", "M", "S", "f", "z", "a", "A")
_DIRECTIVE = re.compile(r"%(.?)", re.DOTALL)
_SAMPLE = datetime(2025, 12, 24, 18, 30, 45)  # the example a format is shown with: 24.12.2025


def example_in(fmt: str) -> str:
    """The example date written in ``fmt``: in UTC, so that an offset (%z) or a zone (%Z) is written too -- a naive
    time writes them as nothing, and a format with %z could not read its own example."""
    return _SAMPLE.replace(tzinfo=UTC).strftime(fmt)


def check_format(column: str, kind: str, fmt: str, *, zone_names: bool = False) -> None:
    """Refuse (BadRequest, ``invalid_mapping``) a format that cannot read the column's values the one way meant:
    a space before or after it (values are read trimmed), no directives (``dd.mm.yyyy``), one not taken (``%Q``,
    GNU's ``%-d``, see ``_DIRECTIVES``), a directive twice, not a whole date (year, month and day, or year and day
    of the year), a time of day in a date, a 12-hour ``%I`` without ``%p``. ``zone_names`` lets ``%Z`` through
    (strptime reads UTC and GMT with it, and nothing else reliably): an event-time format took it before these
    checks, and a source saved with one must go on syncing."""
    def refuse(why: str) -> BadRequest:
        return BadRequest(f"column {column}: the format {fmt!r} {why}", code="invalid_mapping")

    if fmt != fmt.strip():  # strptime wants a space the format has; it passed the check below and every row failed
        raise refuse(f"begins or ends with a space, which no value has (each is read trimmed): write "
                     f"{fmt.strip()!r}")
    letters = [d for d in _DIRECTIVE.findall(fmt) if d != "%"]
    if not letters:
        raise refuse("has no strptime directives: write it as Python's strptime does, e.g. %d.%m.%Y for "
                     "24.12.2025, %m/%d/%Y for 12/24/2025")
    unknown = next((d for d in letters if d not in _DIRECTIVES), None)
    if unknown == "":
        raise refuse("ends with a lone % (write %% for a % sign)")
    if unknown == "-":
        raise refuse("has %-, GNU's unpadded form: strptime's %d, %m, %H... read 1 and 01 alike, so write %d")
    if zone_names:
        unknown = next((d for d in letters if d not in _DIRECTIVES and d != "Z"), None)
    if unknown == "Z":
        raise refuse("has %Z, a zone's name, which strptime does not read reliably: use %z for an offset (+0100)")
    if unknown is not None:
        raise refuse(f"has %{unknown}, which is not taken; the directives are %{' %'.join(_DIRECTIVES)}")
    twice = next((d for d in letters if letters.count(d) > 1), None)
    if twice is not None:
        raise refuse(f"has %{twice} twice")
    present = set(letters)
    year, month, day = present & set("Yy"), present & set("mbB"), present & set("dj")
    if not year:
        raise refuse("has no year (%Y, or %y for two digits)")
    if len(year) > 1 or len(month) > 1 or len(day) > 1 or (month and "j" in day):
        raise refuse("gives the year, month or day more than once")
    if not day or not (month or "j" in day):
        raise refuse("is not a whole date: it needs a month (%m, %b, %B) and a day (%d), or a day of the year (%j)")
    if kind == "date" and present & set("HIpMSfz"):
        raise refuse("has a time of day: declare the column timestamp:FORMAT")
    if "I" in present and "p" not in present:
        raise refuse("has a 12-hour %I without %p (AM/PM): use %H for a 24-hour clock")
    try:  # what the checks above miss, strptime itself tells: it must read what the format writes
        datetime.strptime(example_in(fmt), fmt)
    except (ValueError, re.error) as exc:
        raise refuse(f"cannot be read: {exc}") from None


def formatted_converter(kind: str, fmt: str) -> Callable[[Any], Any]:
    """What converts a cell of a column declared ``kind:fmt``: text (or a whole number, 20241224 for %Y%m%d) read
    with the format; a date or time the reader already typed (Parquet, a database) is taken as the type takes it.
    Parsed values are remembered by their text: a column of dates holds few distinct ones, and strptime costs
    microseconds a cell."""
    typed = CONVERTERS[kind]
    misfit = f"is not a {kind} in the format {fmt} (like {example_in(fmt)})"
    parsed: dict[str, date | datetime] = {}

    def convert(value: Any) -> Any:
        if isinstance(value, date):
            return typed(value)
        text = str(value) if value.__class__ is int else value
        if not isinstance(text, str):
            raise Misfit(misfit)
        found = parsed.get(text)
        if found is None:
            try:
                stamp = datetime.strptime(text.strip(), fmt)
            except ValueError:
                raise Misfit(misfit) from None
            found = stamp.date() if kind == "date" else stamp
            if len(parsed) < _REMEMBERED:
                parsed[text] = found
        return found

    return convert


_REMEMBERED = 100_000  # parsed texts kept per column: every date of 270 years; bounded for unique times


def parse_types(text: str) -> dict[str, str]:
    """``amount=number,signup=date`` -> ``{"amount": "number", "signup": "date"}``; BadRequest says what is wrong."""
    types: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        found = _PAIR.match(part)
        if found is None:
            comma = (" (a format cannot hold a comma here: declare it in a mapping file's types, or the mapping "
                     "parameter)") if types and any(has_format(kind) for kind in types.values()) else ""
            raise BadRequest(f"--types takes COLUMN=TYPE pairs separated by commas (amount=number,signup=date, "
                             f"signup=date:%d.%m.%Y), not {part!r}{comma}", code="invalid_mapping")
        types[found.group(1).strip()] = found.group(2).strip() + (found.group(3) or "")
    return checked_types(types)


# COLUMN=TYPE or COLUMN=TYPE:FORMAT. A column name may hold "=" (the last "=" before the type ends it: the type
# holds no "%"); a format may hold "=" and ":" but, in the comma-separated form, no comma.
_PAIR = re.compile(r"^(.*\S.*)=([^=:%]*)(:.*)?$", re.DOTALL)


def checked_types(types: Any) -> dict[str, str]:
    """The declared types, refused (BadRequest) when not a mapping of column names to known type names."""
    if not isinstance(types, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in types.items()):
        raise BadRequest("mapping setting 'types' must map column names to type names (amount: number)",
                         code="invalid_mapping")
    for column, declaration in types.items():
        kind, fmt = split_declaration(declaration)
        if kind not in CONVERTERS:
            raise BadRequest(f"column {column}: {kind!r} is not a type; the types are {', '.join(TYPE_NAMES)}",
                             code="invalid_mapping")
        if fmt is not None and kind not in FORMATTED:
            raise BadRequest(f"column {column}: {kind} takes no format (only {' and '.join(FORMATTED)} do: "
                             "date:%d.%m.%Y)", code="invalid_mapping")
        if fmt is not None:
            check_format(column, kind, fmt)
    return dict(types)


# Values that have their column's type already, as the reader gave them: kept as they are (and not looked at
# further: this runs for every declared cell of every row).
_KEPT: dict[str, tuple[type, ...]] = {"text": (str,), "number": (int, float), "integer": (int,),
                                      "boolean": (bool,), "date": (date,), "timestamp": (datetime,)}


def row_converter(types: Mapping[str, str]) -> Callable[[Mapping[str, Any]], Mapping[str, Any]]:
    """What converts a row's declared columns (:func:`convert_row`), planned once for the whole file."""
    plan = [(column, _converter(declaration), _KEPT[split_declaration(declaration)[0]], declaration == "text")
            for column, declaration in types.items()]

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


def _converter(declaration: str) -> Callable[[Any], Any]:
    kind, fmt = split_declaration(declaration)
    return CONVERTERS[kind] if fmt is None else formatted_converter(kind, fmt)


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
