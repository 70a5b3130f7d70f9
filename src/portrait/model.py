"""Domain values: plain dataclasses, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

MESSAGE_TYPES = ("identify", "track", "page", "screen", "group", "alias")


@dataclass(slots=True)
class Event:
    """One validated, enriched message as it enters the event log."""

    message_id: str
    type: str
    timestamp: datetime
    received_at: datetime
    event: str | None = None
    user_id: str | None = None
    anonymous_id: str | None = None
    previous_id: str | None = None
    group_id: str | None = None
    original_timestamp: datetime | None = None
    sent_at: datetime | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    traits: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    source: str = "default"


@dataclass(slots=True)
class Rejection:
    """Something a client sent that we did not accept, kept with the reason so nothing is silently lost."""

    code: str
    reason: str
    payload: str
    received_at: datetime
    source: str = "default"
    message_id: str | None = None


@dataclass(frozen=True, slots=True, order=True)
class Identifier:
    """A typed identifier of a person, already normalized (e.g. ``email:ann@example.com``)."""

    type: str
    value: str
    key: str = field(init=False, repr=False, compare=False)  # "type:value", computed once (used as a dict key)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.type}:{self.value}")


@dataclass(frozen=True, slots=True)
class Merge:
    """Profile ``merged_id`` was folded into ``profile_id`` because one event carried identifiers of both."""

    profile_id: str
    merged_id: str
    seq: int
    message_id: str
    identifiers: tuple[Identifier, ...]


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one accepted request did: events stored (after dedup), duplicates skipped, messages rejected."""

    accepted: int
    duplicates: int
    rejected: int
