"""Segments: conditions checked against the attribute registry, counted and listed in SQL, evaluated per profile.

This module is the bridge between the pure condition language (:mod:`portrait.conditions`) and the store.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import orjson

from portrait.conditions import Condition, ConditionError, Schema, check, from_json, parse
from portrait.conditions.evaluate import Event, ProfileData
from portrait.sql import segments as q
from portrait.sql.conditions import Compiled, compile_condition
from portrait.store import Session


def read_condition(raw: object) -> Condition:
    """A condition from the API/CLI: its text form (a string) or its JSON form (an object)."""
    if isinstance(raw, str):
        return parse(raw)
    if isinstance(raw, dict):
        return from_json(raw)
    raise ConditionError("a condition is its text form (a string) or its JSON form (an object)")


def schema_from(attribute_types: dict[str, str],
                segment: Callable[[str], Condition | None] | None = None) -> Schema:
    return Schema(attribute_types) if segment is None else Schema(attribute_types, segment)


def compiled(condition: Condition, schema: Schema, now: datetime) -> Compiled:
    check(condition, schema)
    return compile_condition(condition, schema, now)


def load_profiles(session: Session) -> list[ProfileData]:
    """Every profile with its traits and events, as the Python engine reads them (tests and small stores)."""
    profiles = {row[0]: ProfileData(row[0]) for row in session.execute(q.ALL_PROFILES)}
    for profile_id, key, value in session.execute(q.ALL_TRAITS):
        profiles[profile_id].traits[key] = orjson.loads(value)
    for profile_id, seq, name, timestamp, properties in session.execute(q.ALL_EVENTS):
        profiles[profile_id].events.append(
            Event(seq, name, timestamp, orjson.loads(properties) if properties else {}))
    return list(profiles.values())
