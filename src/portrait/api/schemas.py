"""The shapes of the answers, for the OpenAPI document only (routes declare them in ``responses``): the paged lists
here, the other answers in ``schemas_*`` beside it.

The routes return plain dicts built by the service; these models describe them so a client generated from
``/openapi.json`` gets typed answers instead of "any object". They do not filter or convert what is sent (no
``response_model``), and the schema fuzz test checks real answers against them. Times are ISO-8601 strings in UTC
with milliseconds and ``Z`` unless a field says otherwise; answers and items may carry fields added later (clients
should ignore unknown fields), so the models do not forbid others.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

TIME = "ISO-8601 time in UTC with milliseconds and Z, e.g. 2026-01-02T10:00:00.000Z"
NEXT = "The cursor for the following page; null on the last page"


class RejectedEvent(BaseModel):
    id: int
    received_at: str
    code: str
    reason: str
    source: str | None
    message_id: str | None
    payload: str | None


class RejectedPage(BaseModel):
    rejected: list[RejectedEvent]
    next: int | None = Field(description=NEXT + " (pass it as before)")


class Issue(BaseModel):
    id: int
    profile_id: str | None
    attribute: str
    raw_value: str | None
    reason: str
    seq: int | None
    message_id: str | None
    source: str | None
    detected_at: str


class IssuesPage(BaseModel):
    issues: list[Issue]
    next: int | None = Field(description=NEXT + " (pass it as before)")


class EventSummary(BaseModel):
    seq: int = Field(description="The event's place in the log")
    message_id: str
    type: Literal["identify", "track", "page", "screen", "group", "alias"]
    event: str | None = Field(description="A track's event name, a page's or screen's name; else null")
    user_id: str | None
    anonymous_id: str | None
    timestamp: str = Field(description="When it happened: the message's time corrected for clock skew, else when "
                                       "received; " + TIME)
    received_at: str = Field(description=TIME)
    source: str = Field(description="The write key's name, or import:<file>, source:<name>, api:consent...")


class Event(EventSummary):
    previous_id: str | None = Field(description="An alias's previous id")
    group_id: str | None = Field(description="A group call's group")
    original_timestamp: str | None = Field(description="The time the message gave (its timestamp, else its "
                                                       "originalTimestamp) before the clock-skew correction; null "
                                                       "when it gave none; " + TIME)
    sent_at: str | None = Field(description="The message's or its batch's sentAt, or null; " + TIME)
    properties: dict[str, Any]
    traits: dict[str, Any]
    context: dict[str, Any] = Field(description="Segment's context; ip is the sender's address unless the message "
                                                "named one")
    extra: dict[str, Any] = Field(description="The message's other top-level fields")


class ProfileEventsPage(BaseModel):
    profile_id: str
    events: list[Event] = Field(description="Newest first")
    next: str | None = Field(description=NEXT + " (pass it as cursor)")


class RecentEventsPage(BaseModel):
    events: list[EventSummary] = Field(description="Oldest first")
    next: int | None = Field(description=NEXT + " (pass it as after)")


class Member(BaseModel):
    profile_id: str
    entered_at: str | None
    user_id: str | None


class MembersPage(BaseModel):
    segment: str
    members: list[Member]
    next: str | None = Field(description=NEXT + " (pass it as after)")


class Change(BaseModel):
    id: int
    profile_id: str
    change: str = Field(description="entered or exited")
    at: str


class Size(BaseModel):
    at: str = Field(description="When the segment was recounted")
    size: int = Field(description="Its members then")


class SizesPage(BaseModel):
    segment: str
    sizes: list[Size]
    next: int | None = Field(description=NEXT + " (pass it as after)")


class HistoryPage(BaseModel):
    history: list[Change]
    next: int | None = Field(description=NEXT + " (pass it as before)")


class AuditEntry(BaseModel):
    id: int
    at: str
    key_id: str | None
    key_name: str | None
    action: str
    target: str | None
    profile_id: str | None
    status: int | None
    detail: dict[str, Any] | None


class AuditPage(BaseModel):
    entries: list[AuditEntry]
    next: int | None = Field(description=NEXT + " (pass it as before)")
    next_before_id: int | None = Field(description="next under its earlier name")


def page(model: type[BaseModel]) -> dict[str, Any]:
    """What a route passes to declare its answer: the model documented, nothing filtered."""
    return answer(model, "One page")


def answer(model: Any, description: str, status: int = 200) -> dict[str, Any]:
    """What a route passes to declare its answer (``model``: a model or a union of them) with ``status``: the model
    documented, nothing filtered or converted."""
    return {"response_model": None, "responses": {status: {"model": model, "description": description}}}


def _without_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def sometimes(description: str) -> Any:
    """A field some answers carry and others leave out (never null): not required, and no ``default: null`` in the
    document, which would tell a client it may be null."""
    return Field(default=None, description=description, json_schema_extra=_without_default)
