"""The shapes of the key, source and privacy-request answers, for the OpenAPI document only (see
:mod:`portrait.api.schemas`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from portrait.api.schemas import TIME, Event, RejectedEvent, sometimes
from portrait.api.schemas_profiles import Consent, ConsentStatement, Profile

Scope = Literal["ingest", "read", "admin", "pii:read"]
SOURCE_TIME = "ISO-8601 time in UTC to the second, e.g. 2026-01-02T10:00:00Z; null before the first"


class Key(BaseModel):
    id: str
    kind: Literal["write", "read", "admin"]
    name: str
    scopes: list[Scope]
    created_at: str = Field(description=TIME)
    revoked_at: str | None = Field(description="Null while active; " + TIME)
    active: bool


class NewKey(Key):
    key: str = Field(description="The secret, shown this once")


class RotatedKey(NewKey):
    replaces: str = Field(description="The id of the key revoked in its place")


class Keys(BaseModel):
    keys: list[Key]


class Source(BaseModel):
    name: str
    kind: Literal["profiles", "events"] = Field(description="profiles: each row an identify; events: each a track")
    url: str = Field(description="The connection URL with its password as ***")
    query: str
    cursor: str | None = Field(description="The column that orders rows, or null (every sync reads every row)")
    every: str | None = Field(description="The schedule, e.g. 15m; null: only when asked")
    mapping: dict[str, Any] = Field(description="The mapping-file form (docs/cli.md)")
    cursor_value: Any = Field(description="The cursor column's value in the last row read (any JSON value), or null")
    status: Literal["never", "running", "ok", "failed"]
    last_started_at: str | None = Field(description=SOURCE_TIME)
    last_finished_at: str | None = Field(description=SOURCE_TIME)
    last_error: str | None
    last_rows: int = Field(description="Rows read by the last sync")
    total_rows: int
    created_at: str | None = Field(description=SOURCE_TIME)


class Sources(BaseModel):
    sources: list[Source]


class SyncReport(BaseModel):
    source: str
    rows: int
    stored: int
    duplicates: int
    rejected: int
    by_code: dict[str, int] = Field(description="Rejection code -> rows")
    cursor: Any = Field(description="The saved cursor value after the sync (any JSON value), or null")
    seconds: float


class Membership(BaseModel):
    segment: str
    change: Literal["entered", "exited"]
    at: str | None = Field(description=TIME)


class QualityIssue(BaseModel):
    attribute: str
    raw_value: str | None = Field(description="The value as sent, as JSON text")
    reason: str
    source: str | None
    detected_at: str | None = Field(description=TIME)


class AccessExport(BaseModel):
    profile: Profile
    consents: dict[str, Consent]
    consent_history: list[ConsentStatement]
    events: list[Event] = Field(description="The profile's events, oldest first")
    segment_history: list[Membership]
    data_quality: list[QualityIssue]
    events_without_profile: list[Event] = Field(description="Events naming the person that no profile holds")
    rejected: list[RejectedEvent] = Field(description="Messages not accepted that name the person")
    generated_at: str = Field(description=TIME)


class Erasure(BaseModel):
    erased: bool = Field(description="False when there was nothing left to erase (reason says why)")
    reason: str = sometimes("Only when erased is false")
    profile_id: str = sometimes("The profile erased")
    merged_profiles: int = sometimes("Profiles merged into it, erased too")
    identities_suppressed: int = sometimes("Identifiers whose events are dropped from now on")
    events: int = sometimes("Events deleted")
    conditions_rewritten: int = sometimes("Saved segments and calculated attributes whose condition named one of "
                                          "the person's identifiers, now \"(erased)\" in its place")


class PrivacyRequestSummary(BaseModel):
    id: str
    type: Literal["access", "erase"]
    identity: str | None = Field(description="TYPE:VALUE as sent (masked without pii:read); null once the person "
                                             "is erased (this erasure, and her earlier requests): forgotten, the "
                                             "hash stays")
    identity_hash: str = Field(description="SHA-256 of the identity, hex")
    status: Literal["pending", "running", "done", "failed"]
    requested_by: str = Field(description="The key's name and id")
    created_at: str = Field(description=TIME)
    started_at: str | None = Field(description=TIME)
    finished_at: str | None = Field(description=TIME)
    error: str | None = Field(description="Why it failed, else null")


class PrivacyRequest(PrivacyRequestSummary):
    result: AccessExport | Erasure | None = Field(description="Once done: an access request's export (read with "
                                                              "pii:read) or what an erasure did; else null, and "
                                                              "null again for an erased person's access exports")


class PrivacyRequestsPage(BaseModel):
    requests: list[PrivacyRequestSummary] = Field(description="Newest first, without results")
    next: str | None = Field(description="The cursor for the following page; null on the last page (pass it as "
                                         "before)")
