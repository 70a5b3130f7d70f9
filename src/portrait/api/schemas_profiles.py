"""The shapes of the status and profile answers, for the OpenAPI document only (see :mod:`portrait.api.schemas`).

Without ``pii:read`` personal values come back masked (``"a***"``, ``"***"``): still strings, so the same shapes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, RootModel

from portrait.api.schemas import TIME, sometimes

TRAITS = "Trait code -> value, any JSON value (personal ones masked without pii:read)"


class Memory(BaseModel):
    process_mb: float | None = Field(description="The server's resident memory in MB; null where it cannot be read")
    database_mb: float = Field(description="The database engine's part of it, in MB")
    database_limit: str = Field(description="The engine's memory limit as it writes it, e.g. 18.8 GiB")


class Status(BaseModel):
    events_received: int
    events_processed: int
    lag: int = Field(description="Events received but not yet reflected in profiles")
    lag_seconds: float = Field(description="How long ago the oldest of them arrived, in seconds; 0 when caught up")
    last_batch_events: int = Field(description="Events in the processor's latest micro-batch")
    last_batch_seconds: float = Field(description="How long that batch took, in seconds")
    events_rejected: int
    events_suppressed: int = Field(description="Events dropped because they name an erased person")
    events_duplicate: int = Field(description="Copies of messages already stored (same messageId), left out")
    ingest_queue_events: int = Field(description="Events accepted and waiting to be written to the log")
    profiles: int
    watermark: int = Field(description="The sequence number the processor has applied up to")
    last_seq: int = Field(description="The sequence number of the newest event in the log")
    database: str = Field(description="The database file's path")
    memory: Memory
    processing_error: str | None = Field(description="Why the processor is stopped while it is; null otherwise")
    database_damaged: str | None = Field(description="Why part of the database file could not be read since the "
                                                     "server started (a damaged block): restore a backup; null "
                                                     "otherwise")
    traits_recheck_due: bool = Field(description="Traits were derived by an earlier version's rules: run "
                                                 "POST /api/attributes/recheck")


class Identity(BaseModel):
    type: str = Field(description="user_id, anonymous_id, email, phone or another identifier type")
    value: str
    first_seen: str | None = Field(description=TIME)


class Identifier(BaseModel):
    type: str
    value: str


class Merge(BaseModel):
    merged_profile_id: str = Field(description="The profile folded into this one")
    seq: int = Field(description="The sequence number of the event that merged them")
    message_id: str
    identifiers: list[Identifier] = Field(description="The event's identifiers that joined the two")
    merged_at: str | None = Field(description="The event's time; " + TIME)
    processed_at: str | None = Field(description=TIME)
    reason: str


class IdentityConflict(BaseModel):
    seq: int
    message_id: str
    dropped: list[Identifier] = Field(description="Identifiers of the event not used: a merge would have broken a "
                                                  "per-type limit")
    processed_at: str | None = Field(description=TIME)
    reason: str


class Consent(BaseModel):
    status: Literal["granted", "denied"]
    legal_basis: str | None = Field(description="consent, contract, legal_obligation, vital_interests, public_task "
                                                "or legitimate_interests; null when none was given")
    at: str | None = Field(description="When it was stated (the event's time); " + TIME)
    source: str | None = Field(description="Where it came from, e.g. api:consent or a write key's name")


class ConsentStatement(Consent):
    purpose: str


class Profile(BaseModel):
    profile_id: str
    traits: dict[str, Any] = Field(description=TRAITS)
    identities: list[Identity]
    merges: list[Merge] = Field(description="Every profile folded into this one")
    identity_conflicts: list[IdentityConflict]
    first_seen: str | None = Field(description="The earliest event time; " + TIME + "; null without events")
    last_seen: str | None = Field(description="The latest event time; " + TIME + "; null without events")
    events_count: int = Field(description="Its events, those of profiles merged into it included")
    consents: dict[str, Consent] = Field(description="Purpose -> the current consent")


class Traits(RootModel[dict[str, Any]]):
    """Trait code -> value, any JSON value (personal ones masked without pii:read)."""


class Identities(BaseModel):
    identities: list[Identity]


class Consents(BaseModel):
    profile_id: str
    consents: dict[str, Consent] = Field(description="Purpose -> the current consent (the last statement)")
    history: list[ConsentStatement] = Field(description="Every statement, oldest first")


class RecordedConsent(BaseModel):
    status: Literal["granted", "denied"]
    legal_basis: str = sometimes("Only when one was sent")


class ConsentRecorded(BaseModel):
    profile_id: str
    recorded: dict[str, RecordedConsent] = Field(description="Purpose -> the statement recorded (applied to the "
                                                             "profile once processed)")


class ProfileSegment(BaseModel):
    id: int
    name: str
    kind: Literal["dynamic", "static"]
    since: str | None = Field(description="When the profile entered it; " + TIME)


class ProfileSegments(BaseModel):
    profile_id: str
    segments: list[ProfileSegment]
