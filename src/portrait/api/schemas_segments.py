"""The shapes of the segment and analytics answers, for the OpenAPI document only (see :mod:`portrait.api.schemas`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from portrait.api.schemas import TIME, sometimes

DYNAMIC_ONLY = "Dynamic segments only: "
CONDITION = "The condition in its JSON form (see docs/segments.md)"


class Segment(BaseModel):
    id: int
    name: str
    kind: Literal["dynamic", "static"] = Field(description="dynamic: a condition; static: a list of identities")
    description: str
    size: int = Field(description="Members at the last count")
    error: str | None = Field(description="Why the last recount failed, else null")
    condition: dict[str, Any] = sometimes(DYNAMIC_ONLY + CONDITION)
    text: str = sometimes(DYNAMIC_ONLY + "the condition in its text form")
    english: str = sometimes(DYNAMIC_ONLY + "the condition in English")
    identities: int = sometimes("Static segments only: how many identities the list holds")


class SavedSegment(Segment):
    rejected_identities: list[str] = sometimes("Only when identities were sent and some were not TYPE:VALUE "
                                               "identities: those entries, as sent (left out)")
    notes: list[str] = sometimes("Only when the condition sent names an event no event has had (names match "
                                 "exactly, case too): each such name, with the closest name seen")


class Recounted(Segment):
    entered: int = Field(description="Profiles that entered at this recount")
    exited: int = Field(description="Profiles that left at this recount")


class Segments(BaseModel):
    segments: list[Segment]


class SampleProfile(BaseModel):
    profile_id: str
    user_id: str | None = Field(description="Masked (a***@example.com) for a key without pii:read when it is an "
                                            "email or a phone")
    traits: dict[str, Any] = Field(description="Its values of sample_columns (those it has); personal ones masked "
                                               "for a key without pii:read")


class Preview(BaseModel):
    count: int = Field(description="Profiles the condition selects")
    sample: list[str] = Field(description="Some of their profile ids")
    sample_columns: list[str] = Field(description="The attributes shown for each sampled profile: those a person is "
                                                  "recognised by (email, first_name, last_name, name, company: the "
                                                  "first three the registry has), then those the condition "
                                                  "compares; six at most, and only those a sampled "
                                                  "profile has a value of")
    sample_profiles: list[SampleProfile] = Field(description="The sampled profiles, in the order of sample")
    text: str
    condition: dict[str, Any] = Field(description=CONDITION)
    english: str
    seconds: float
    notes: list[str] = Field(description="Each event name it asks about that no event has had (names match exactly, "
                             "case too): a typo gives zero. Said with the closest name seen, if one is close")


class ExplainedPart(BaseModel):
    text: str = Field(description="This part of the condition in its text form")
    holds: bool
    why: str
    parts: list[ExplainedPart] = sometimes("For and, or, not and a segment reference: their parts")
    attribute: str = sometimes("For a comparison of an attribute: its code")
    value: Any = sometimes("For a comparison of an attribute: the profile's value (any JSON value, null when it "
                           "has none)")
    unit: str = sometimes("For a comparison of a number with a unit")


class DynamicExplanation(BaseModel):
    segment: str
    profile_id: str
    member: bool = Field(description="Whether the profile is a member at the last count")
    holds: bool = Field(description="Whether the condition holds for the profile now")
    explanation: ExplainedPart


class StaticExplanation(BaseModel):
    segment: str
    profile_id: str
    member: bool
    kind: Literal["static"]
    why: str


class BreakdownValue(BaseModel):
    value: Any = Field(description="A value (any JSON value; masked for a personal attribute without pii:read)")
    profiles: int
    share: float = Field(description="profiles / size, 0 to 1 (4 decimals)")


class Breakdown(BaseModel):
    segment: str
    attribute: str
    size: int
    values: list[BreakdownValue] = Field(description="The most common values (?top=), most common first")
    other_values: int = Field(description="Members with a value not among values")
    not_set: int = Field(description="Members without a value")
    type: str = Field(description="The attribute's type")
    unit: str | None = Field(description="The attribute's unit")


class FunnelStep(BaseModel):
    step: int = Field(description="From 1")
    event: str
    profiles: int = Field(description="Profiles that reached this step")
    conversion_from_previous: float = Field(description="0 to 1 (4 decimals)")
    conversion_from_start: float = Field(description="0 to 1 (4 decimals)")
    dropped: int = Field(description="Profiles of the previous step that did not reach this one")


class Funnel(BaseModel):
    steps: list[FunnelStep]
    within: str = Field(description="The conversion window, e.g. 7d")
    from_: str | None = Field(alias="from", description="Inclusive; " + TIME)
    to: str | None = Field(description="Exclusive; " + TIME)
    segment: str | int | None = Field(description="The segment as sent (id or name), or null for everyone")
    seconds: float
    notes: list[str] = Field(description="Each event name of a step that no event has had (names match exactly, "
                             "case too): a typo gives zero. Said with the closest name seen, if one is close")
