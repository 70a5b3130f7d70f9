"""Text values a segment compares an attribute with that no profile has: ``address_country = "pl"``.

Values match exactly, case too, so when the data holds ``"PL"`` such a condition silently counts zero (or, inside
an ``or``, silently adds nobody). Like an unseen event name (:mod:`portrait.event_names`) it is not an error -- the
customers may not have arrived yet -- so the answer carries a note, with what the data does hold:

- the same value in other letter case, with how many profiles have it;
- else the closest of the attribute's thousand most frequent values (a misspelt country or plan).

A personal attribute's stored values are never shown in a note, whatever the key may read: the note says only how
many profiles hold the value in another case -- a count anyone who can preview a segment learns anyway, from
``email contains "..."``, which ignores case.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from portrait.conditions.ast import Condition, attribute_comparisons
from portrait.conditions.evaluate import lower
from portrait.event_names import closest_name
from portrait.sql import analytics as q
from portrait.store import Session

TEXT_TYPES = ("string", "enum")
EXACT_OPS = ("=", "!=", "in", "not in")
RULE = "values match exactly, case too"
MAX_NOTES_PER_ATTRIBUTE = 5


def compared_values(condition: Condition, attribute_types: Mapping[str, str]) -> dict[str, list[str]]:
    """The text values each text attribute is compared with for equality, in the condition's order (not through
    events' ``where``, which compares properties, nor through referenced segments, which have notes of their own)."""
    found: dict[str, dict[str, None]] = defaultdict(dict)  # dicts as ordered sets: a pasted list may be long
    for compare in attribute_comparisons(condition):
        if compare.op in EXACT_OPS and attribute_types.get(compare.field) in TEXT_TYPES:
            found[compare.field].update((value, None) for value in compare.values if isinstance(value, str))
    return {code: list(values) for code, values in found.items()}


def unmatched_value_notes(session: Session, compared: Mapping[str, list[str]], personal: set[str]) -> list[str]:
    """A note for each compared value no profile holds exactly, saying what the data holds instead; past
    MAX_NOTES_PER_ATTRIBUTE of one attribute (a pasted list of postcodes), one note counts the rest."""
    notes = []
    for code, values in compared.items():
        held = _held_ignoring_case(session, code, values)
        missing = [value for value in values if value not in held.get(lower(value), {})]
        frequent = _Frequent(session, code) if code not in personal else None
        notes += [_note(code, value, held.get(lower(value), {}), frequent)
                  for value in missing[:MAX_NOTES_PER_ATTRIBUTE]]
        if len(missing) > MAX_NOTES_PER_ATTRIBUTE:
            notes.append(f"no profile has {code} {len(missing) - MAX_NOTES_PER_ATTRIBUTE:,} more of the values "
                         f"given ({RULE})")
    return notes


def _held_ignoring_case(session: Session, code: str, values: list[str]) -> dict[str, dict[str, int]]:
    """Lowered value -> {stored value: profiles}, for the values ``code`` is compared with: one pass over it."""
    held: dict[str, dict[str, int]] = defaultdict(dict)
    for value, profiles in session.execute(q.TEXT_VALUES_IGNORING_CASE, [code, sorted({lower(v) for v in values})]):
        held[lower(value)][value] = int(profiles)
    return held


class _Frequent:
    """A non-personal attribute's most frequent values, read once, when a value first needs the closest of them."""

    def __init__(self, session: Session, code: str) -> None:
        self._session, self._code = session, code
        self._values: list[str] | None = None

    def closest(self, value: str) -> str | None:
        if self._values is None:
            self._values = [row[0] for row in self._session.execute(q.FREQUENT_TEXT_VALUES, [self._code])]
        return closest_name(value, self._values)


def _note(code: str, value: str, variants: Mapping[str, int], frequent: _Frequent | None) -> str:
    """``frequent`` is None for a personal attribute: its values are never shown."""
    said = f"no profile has {code} {value!r}"
    if variants and frequent is None:
        return f"{said}: {_profiles(sum(variants.values()))} in other letter case ({RULE}; a personal value is not " \
               "shown)"
    if len(variants) == 1:
        [(held, profiles)] = variants.items()
        return f"{said}: did you mean {held!r}? {_profiles(profiles)} ({RULE})"
    if variants:
        most = sorted(variants.items(), key=lambda item: (-item[1], item[0]))[:3]
        shown = " or ".join(f"{held!r} ({profiles:,})" for held, profiles in most)
        return f"{said}: did you mean {shown}? ({RULE})"
    close = frequent.closest(value) if frequent is not None else None
    return f"{said} (did you mean {close!r}?)" if close is not None else f"{said} ({RULE})"


def _profiles(count: int) -> str:
    return f"{count:,} profile has it" if count == 1 else f"{count:,} profiles have it"
