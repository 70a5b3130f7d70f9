"""Deterministic identity resolution, pure: identifiers in, a plan (attach / create / merge) out.

The processor loads the part of the identity graph a micro-batch touches into an :class:`IdentityGraph`, calls
:meth:`IdentityGraph.resolve` for each event in log order, and writes the recorded changes back in sets.

Rules (docs/identity.md):
- no known identifier -> new profile; identifiers of one profile -> attach; of several -> merge into the oldest.
- per-type limits (default: 1 user_id, 5 of every other type): if attaching or merging would break one, the
  identifiers of the incoming event that break it are dropped, lowest priority first, and matching retried. So two
  customers who share a device (anonymous_id) are never merged through it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import phonenumbers

from portrait.config import Settings
from portrait.model import Identifier

ANONYMOUS = "anonymous_id"
# What str.strip() takes off an identifier's ends (normalize, identity_hints, an alias's previousId), spelled out for
# the processor's SQL, which trims userId and anonymousId itself (sql.processor.trimmed): DuckDB's trim() alone
# takes spaces but not tabs or line breaks, so "u1\t" became a user id of its own that no lookup could find. No
# character above U+3000 is whitespace.
WHITESPACE = "".join(ch for ch in map(chr, range(0x3001)) if ch.isspace())


@dataclass(frozen=True)
class IdentityRules:
    """What counts as an identifier, how it is normalized, and how many of a type a profile may have."""

    priority: tuple[str, ...]
    limits: Mapping[str, int]
    default_limit: int
    blocked: frozenset[str]
    identity_traits: tuple[str, ...]
    phone_region: str

    @classmethod
    def from_settings(cls, settings: Settings) -> IdentityRules:
        return cls(
            priority=tuple(settings.identity_priority),
            limits=dict(settings.identity_limits),
            default_limit=settings.identity_default_limit,
            blocked=frozenset(lower_as_sql(v.strip()) for v in settings.blocked_values),
            identity_traits=tuple(settings.identity_traits),
            phone_region=settings.default_phone_region,
        )

    def limit(self, kind: str) -> int:
        return self.limits.get(kind, self.default_limit)

    def rank(self, kind: str) -> tuple[int, str]:
        """Sort key: configured order first, then other types by name, anonymous_id last."""
        if kind == ANONYMOUS:
            return (len(self.priority) + 2, kind)
        if kind in self.priority:
            return (self.priority.index(kind), "")
        return (len(self.priority) + 1, kind)

    def normalize(self, kind: str, raw: Any) -> Identifier | None:
        """Normalize one identifier; None if it is empty, blocked or unreadable (e.g. not a phone number)."""
        if raw is None or isinstance(raw, bool | dict | list):
            return None
        value = str(raw).strip()
        if not value or lower_as_sql(value) in self.blocked:
            return None
        if kind == "email":
            value = lower_as_sql(value)
            if not is_email(value) or value in self.blocked:
                return None
        elif kind == "phone":
            phone = normalize_phone(value, self.phone_region)
            if phone is None:
                return None
            value = phone
        return Identifier(kind, value)


def is_email(value: str) -> bool:
    """Whether a trimmed value can be an email identifier: some text on both sides of an ``@`` -- the processor's
    SQL test (``LIKE '%_@_%'`` in sql.processor.STAGE_IDENTIFIERS). Anything stricter would drop identifiers
    people did type (``ann smith@example.com``); ``x@`` and ``@x`` name no one. Lookups, static segments and
    erasures took ``x@`` while the processor never stored it: a static segment listed an email no profile could
    hold. The log's separators (``\x1e``, ``\x1f``) make no email either: a value holding one is never stored as a
    hint (:func:`identity_hints`), so the processor never sees it."""
    return "@" in value[1:-1] and HINT_SEPARATOR not in value and HINT_TYPE_SEPARATOR not in value


def lower_as_sql(text: str) -> str:
    """Lower case as the processor's SQL lower() writes it (emails, blocked values): letter by letter, Unicode's
    simple mapping. str.lower() makes "İ" two characters and a final "Σ" a "ς", so a lookup (normalized here) did
    not find an email the processor had stored, nor could an erasure."""
    if text.isascii():
        return text.lower()
    return "".join(ch.lower()[0] for ch in text)  # "İ".lower() is "i" + a combining dot; SQL's is "i"


@functools.lru_cache(maxsize=65536)
def normalize_phone(value: str, region: str) -> str | None:
    """E.164 form of a phone number, or None when it is not a possible number.

    A number that is possible only as a local call (e.g. 555-1234 in the US, no area code) is not one either: its
    "E.164" form (+15551234) would be no real number, and the same digits dialled in another area are another
    line, so it cannot identify a person.
    """
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    if phonenumbers.is_possible_number_with_reason(number) != phonenumbers.ValidationResult.IS_POSSIBLE:
        return None
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def identity_hash(key: str) -> str:
    """How an erased person's identifier key (``type:value``, normalized) is kept: its SHA-256, in hex (the
    processor computes the same in SQL, sql.processor.STAGE_OWNERS)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


PROFILE_ID_TYPE = "profile_id"  # in a reference, Portrait's own profile id: not an identifier a message can carry
HINT_SEPARATOR = "\x1e"  # between identifiers in the log's identity_hints column
HINT_TYPE_SEPARATOR = "\x1f"  # between an identifier's type and its raw value
_HINT_SCALARS = (str, int)
_EXACT_FLOAT = 2**53  # up to here a float holds every integer exactly


def id_text(value: str | int | float) -> str:
    """An identifier's value as text: a whole-number float as the integer it is (``1.0`` -> ``"1"``).

    JSON has one number type, and an integer column with a missing value comes out of pandas, Parquet or a SQLite
    REAL column as floats: the same customer is ``1`` in one source and ``1.0`` in the next, and would become two
    profiles. Past 2**53 a float no longer holds every integer, its digits were lost before Portrait saw it: it
    stays as Python writes it (``1e+20``), as does a fraction (``3.5``) -- neither is clearly an integer.
    """
    if isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT_FLOAT:
        return str(int(value))
    return str(value)


def identity_hints(kind: str, message: Mapping[str, Any], identity_traits: tuple[str, ...],
                   context: Any = None) -> str | None:
    """The raw identifiers a message carries besides userId/anonymousId, as ``type\x1fvalue`` entries.

    Read at ingestion, where the message is already parsed, and stored with the event; the processor normalizes
    them (lower-case emails, E.164 phones, blocked values), so normalization rules can change and be re-applied.
    Sources: ``traits`` (identify only) and ``context.traits`` for email, phone and the configured identity
    traits; ``context.externalIds`` for custom types. ``context``: the message's context, if not its own (with the
    batch's merged in).
    """
    found: list[str] = []
    if context is None:
        context = message.get("context")
    context = context if context.__class__ is dict else {}
    for source in (message.get("traits") if kind == "identify" else None, context.get("traits")):
        if source.__class__ is dict and source:
            for name, id_type in _trait_names(identity_traits):
                value = source.get(name)
                if value is not None:  # most names are absent: no call for them (read for every message)
                    _add_hint(found, id_type, value)
    external = context.get("externalIds")
    if external.__class__ is list:
        for item in external:
            if item.__class__ is dict and item.get("type").__class__ is str:
                id_type = item["type"].strip().lower()
                if id_type != PROFILE_ID_TYPE:  # profile_id:... always names a Portrait profile
                    _add_hint(found, id_type, item.get("id"))
    return HINT_SEPARATOR.join(found) if found else None


def identity_trait_names(identity_traits: tuple[str, ...]) -> frozenset[str]:
    """The trait names that identify a person (email, phone, the configured identity traits and their camelCase
    and PascalCase forms)."""
    return frozenset(name for name, _ in _trait_names(identity_traits))


@functools.lru_cache(maxsize=64)
def _trait_names(identity_traits: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """(trait name, identifier type) pairs to look for: email, phone and each configured identity trait as written
    and in camelCase and PascalCase (``loyalty_card``, ``loyaltyCard``, ``LoyaltyCard``; ``Email``), as Segment's
    traits are usually written and as they all become the same attribute code: a trait stored as the profile's
    ``email`` is one of its email identifiers, whichever way it was written."""
    pairs = []
    for id_type in ("email", "phone", *identity_traits):
        head, *rest = id_type.split("_")
        camel = head + "".join(part[:1].upper() + part[1:] for part in rest)
        for name in dict.fromkeys((id_type, camel, camel[:1].upper() + camel[1:])):
            pairs.append((name, id_type))
    return tuple(pairs)


def _add_hint(found: list[str], kind: str, value: Any) -> None:
    if value.__class__ is float:  # a whole number only (loyalty_card 555.0 is 555); a fraction is no identifier
        if not value.is_integer() or abs(value) > _EXACT_FLOAT:
            return
        value = id_text(value)
    if value.__class__ not in _HINT_SCALARS or not kind:
        return
    text = str(value).strip()
    if text and HINT_SEPARATOR not in text and HINT_TYPE_SEPARATOR not in text and HINT_TYPE_SEPARATOR not in kind:
        found.append(f"{kind}{HINT_TYPE_SEPARATOR}{text}")


@dataclass(slots=True)
class Resolution:
    """Where one event went."""

    profile_id: str | None
    created: bool = False
    attached: list[Identifier] = field(default_factory=list)
    merged: list[str] = field(default_factory=list)
    dropped: list[Identifier] = field(default_factory=list)


@dataclass
class IdentityGraph:
    """The slice of the identity graph a batch needs, mutated in memory as events are resolved.

    ``owner`` maps identifier keys to profile ids; ``members`` lists each profile's identifiers; ``created`` orders
    profiles by age (the oldest survives a merge, so a profile id stays stable).
    """

    rules: IdentityRules
    owner: dict[str, str] = field(default_factory=dict)
    members: dict[str, list[Identifier]] = field(default_factory=dict)
    created: dict[str, int] = field(default_factory=dict)
    merged_into: dict[str, str] = field(default_factory=dict)
    type_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # profile -> type -> how many

    def add_profile(self, profile_id: str, created_seq: int, identifiers: Iterable[Identifier]) -> None:
        self.created[profile_id] = created_seq
        members = self.members.setdefault(profile_id, [])
        counts = self.type_counts.setdefault(profile_id, {})
        for ident in identifiers:
            members.append(ident)
            counts[ident.type] = counts.get(ident.type, 0) + 1
            self.owner[ident.key] = profile_id

    def final(self, profile_id: str) -> str:
        """The profile a (possibly merged-away) id now lives in."""
        while profile_id in self.merged_into:
            profile_id = self.merged_into[profile_id]
        return profile_id

    def resolve(self, identifiers: list[Identifier], seq: int, new_id: Callable[[], str]) -> Resolution:
        """Resolve one event's identifiers (highest priority first), updating the graph."""
        if not identifiers:
            return Resolution(profile_id=None)
        candidates, dropped = self._within_limits(identifiers)
        matched = self._matched(candidates)
        unknown = [ident for ident in candidates if ident.key not in self.owner]
        if not matched:
            profile_id = new_id()
            self.add_profile(profile_id, seq, unknown)
            return Resolution(profile_id, created=True, attached=unknown, dropped=dropped)
        winner = min(matched, key=lambda p: (self.created[p], p))
        losers = [p for p in matched if p != winner]
        for loser in losers:
            self._merge(loser, winner)
        self.add_profile(winner, self.created[winner], unknown)
        return Resolution(winner, attached=unknown, merged=losers, dropped=dropped)

    def _within_limits(self, identifiers: list[Identifier]) -> tuple[list[Identifier], list[Identifier]]:
        """The identifiers to resolve and those dropped (lowest priority first) so that no limit breaks.

        Taken in priority order, each one is kept if the profile still fits the limits with it: the identifiers
        that would break a limit are dropped, lowest priority first, and only they — Bob logging in with his own
        phone's anonymous id and the family email that is Alice's keeps his phone's history; only the email,
        which would merge him into Alice, is dropped.
        """
        if len(identifiers) < 2 or self._fits(identifiers):
            return list(identifiers), []  # the common case
        kept = [identifiers[0]]
        dropped: list[Identifier] = []
        for ident in identifiers[1:]:
            if self._fits([*kept, ident]):
                kept.append(ident)
            else:
                dropped.append(ident)
        return kept, dropped[::-1]

    def _matched(self, identifiers: list[Identifier]) -> list[str]:
        seen: dict[str, None] = {}
        for ident in identifiers:
            owner = self.owner.get(ident.key)
            if owner is not None:
                seen[owner] = None
        return list(seen)

    def _fits(self, identifiers: list[Identifier]) -> bool:
        matched = self._matched(identifiers)
        unknown = [ident for ident in identifiers if ident.key not in self.owner]
        if not unknown and len(matched) <= 1:
            return True  # nothing changes: the common case
        if not matched and len({ident.type for ident in unknown}) == len(unknown):
            return True  # a new profile with at most one identifier of each type (every limit is at least 1)
        counts: dict[str, int] = {}
        for profile_id in matched:
            for kind, count in self.type_counts[profile_id].items():
                counts[kind] = counts.get(kind, 0) + count
        for ident in unknown:
            counts[ident.type] = counts.get(ident.type, 0) + 1
        limit = self.rules.limit
        return all(count <= limit(kind) for kind, count in counts.items())

    def _merge(self, loser: str, winner: str) -> None:
        moved = self.members.pop(loser)
        for ident in moved:
            self.owner[ident.key] = winner
        self.members[winner].extend(moved)
        counts = self.type_counts[winner]
        for kind, count in self.type_counts.pop(loser).items():
            counts[kind] = counts.get(kind, 0) + count
        self.merged_into[loser] = winner
