"""Domain values: plain dataclasses, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

MESSAGE_TYPES = ("identify", "track", "page", "screen", "group", "alias")


@dataclass(slots=True)
class Rejection:
    """Something a client sent that we did not accept, kept with the reason so nothing is silently lost."""

    code: str
    reason: str
    payload: str
    received_at: datetime
    source: str = "default"
    message_id: str | None = None
    position: int | None = None  # index of the message in its request (or row of its file), when known


@dataclass(frozen=True, slots=True, order=True)
class Identifier:
    """A typed identifier of a person, already normalized (e.g. ``email:ann@example.com``)."""

    type: str
    value: str
    key: str = field(init=False, repr=False, compare=False)  # "type:value", computed once (used as a dict key)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.type}:{self.value}")


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one accepted request did: events stored (after dedup), duplicates skipped, messages rejected."""

    accepted: int
    duplicates: int
    rejected: int
