"""Analytics: funnels (ordered steps within a conversion window) and the breakdown of a segment by an attribute.
Segment size over time is :meth:`portrait.segments.Segments.sizes`.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import orjson

from portrait.conditions.check import MAX_DURATION_SECONDS
from portrait.conditions.jsonform import read_duration
from portrait.conditions.text import ConditionError
from portrait.errors import BadRequest
from portrait.event_names import unseen_event_notes
from portrait.segments import Segments
from portrait.spec import iso_time, parse_time, utc_now
from portrait.sql import analytics as q
from portrait.store import Session

MAX_STEPS = 10


def funnel(session: Session, segments: Segments, fields: dict[str, Any]) -> dict[str, Any]:
    """``{"steps": ["Product Viewed", ...], "within": "7d", "from": ..., "to": ..., "segment": ...}`` -> how many
    profiles reached each step, conversion from the previous and the first step, and the drop-off; ``notes`` name
    the steps no event has ever had (a typo makes a funnel of zeros), with the closest name seen."""
    unknown = set(fields) - {"steps", "within", "from", "to", "segment"}
    if unknown:
        raise BadRequest(f"unknown funnel fields {', '.join(sorted(unknown))}", code="invalid_funnel")
    steps = fields.get("steps")
    if not isinstance(steps, list) or not 2 <= len(steps) <= MAX_STEPS or not all(
            isinstance(s, str) and s for s in steps):
        raise BadRequest(f"steps is a list of 2 to {MAX_STEPS} event names", code="invalid_funnel", field="steps")
    try:
        within = read_duration(fields.get("within", "7d"), "within")
    except ConditionError as exc:  # the funnel's own code, as for its other fields
        raise BadRequest(exc.message, code="invalid_funnel", field="within") from None
    if within.seconds > MAX_DURATION_SECONDS:
        raise BadRequest(f"within {within} is too long (at most 100 years, 36500d)", code="invalid_funnel",
                         field="within")
    end = _time(fields.get("to"), "to") or utc_now()
    try:
        start = _time(fields.get("from"), "from") or end - timedelta(days=30)
    except OverflowError:  # 'to' in the first 30 days of year 1
        raise BadRequest("'to' is too early: give 'from' too", code="invalid_funnel") from None
    if start >= end:
        raise BadRequest("'from' must be before 'to'", code="invalid_funnel")
    params: dict[str, Any] = {f"s{k}": name for k, name in enumerate(steps)}
    params.update(start=start, end=end, window=timedelta(seconds=within.seconds))
    segment = fields.get("segment")
    if segment is not None:
        params["segment"] = segments.find(segment).id
    started = time.perf_counter()
    counts = dict(session.execute(q.funnel(len(steps), segment=segment is not None), params))
    reached = [int(counts.get(k, 0)) for k in range(len(steps))]
    rows = []
    for k, name in enumerate(steps):
        previous = reached[k - 1] if k else reached[0]
        rows.append({"step": k + 1, "event": name, "profiles": reached[k],
                     "conversion_from_previous": _ratio(reached[k], previous),
                     "conversion_from_start": _ratio(reached[k], reached[0]),
                     "dropped": previous - reached[k] if k else 0})
    return {"steps": rows, "within": str(within), "from": iso_time(start), "to": iso_time(end),
            "segment": segment, "seconds": round(time.perf_counter() - started, 3),
            "notes": unseen_event_notes(session, steps)}


def breakdown(session: Session, segments: Segments, reference: str, attribute: str, kind: str, top: int = 10
              ) -> dict[str, Any]:
    """A segment's members by the value of one attribute (of type ``kind``): the most common values, how many
    members have another value, and how many have none (so the shares add up to the segment)."""
    segment = segments.find(reference)
    size = int(session.execute(q.SEGMENT_SIZE, [segment.id])[0][0])
    params = [attribute, segment.id, top]
    if kind in ("integer", "number"):  # read as attribute analytics read numbers: 10 and 10.0 are one value
        rows = [(x if whole is None else whole, n) for x, whole, n in session.execute(q.BREAKDOWN_NUMBERS, params)]
    else:
        rows = [(orjson.loads(value), n) for value, n in session.execute(q.BREAKDOWN, params)]
    values = [{"value": value, "profiles": int(n), "share": _ratio(int(n), size)} for value, n in rows]
    with_value = int(session.execute(q.WITH_VALUE, [attribute, segment.id])[0][0])
    return {"segment": segment.name, "attribute": attribute, "size": size, "values": values,
            "other_values": with_value - sum(v["profiles"] for v in values), "not_set": size - with_value}


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _time(value: Any, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = parse_time(value)
    except ValueError:
        parsed = None
    if parsed is None:
        raise BadRequest(f"{name} must be a date or time such as 2026-01-31", code="invalid_funnel")
    return parsed

