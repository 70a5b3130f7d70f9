"""Time handling whatever the server's time zone: a real ``portrait serve`` process run with ``TZ`` set far from UTC
(DuckDB takes its session zone from it, Python its local time) must store, compare, count by day and export every
time as the same UTC instant. The times are around the night Europe changed to summer time (2026-03-29, 01:00 UTC),
sent with every offset and form the wire format takes."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta, timezone

import httpx
import pytest
from tests.conftest import ADMIN_KEY, WRITE_KEY, Server, start_server, utc_today_clear_of_midnight

# Server zones: Europe on its DST night, and 14 hours ahead of UTC (its "today" starts at 10:00 UTC the day before).
ZONES = ("Europe/Warsaw", "Pacific/Kiritimati")
INSTANT = "2026-03-29T00:30:00.000Z"  # 01:30 in Warsaw, the last half hour of winter time
# One instant in each form a client may send it.
SAME_INSTANT = ("2026-03-29T01:30:00+01:00", "2026-03-29T00:30:00Z", "2026-03-29T00:30:00",
                "2026-03-28T17:30:00-07:00", "2026-03-29T14:30:00+14:00", "2026-03-29T00:30:00.000+00:00",
                "2026-03-29 00:30:00", "2026-03-29T00:30:00z", "2026-03-29T01:30:00+0100")


@pytest.fixture(scope="module", params=ZONES)
def zoned(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("zoned")
    server = start_server(str(folder / "zoned.duckdb"), folder / "server.log", {"TZ": request.param})
    try:
        yield server
    finally:
        server.stop()


def _send(server: Server, batch: list[dict[str, object]], **fields: object) -> None:
    answer = httpx.post(f"{server.url}/v1/batch", json={"batch": batch, "writeKey": WRITE_KEY, **fields}, timeout=10)
    assert answer.status_code == 200, answer.text


def _events(api: httpx.Client, user: str) -> list[dict[str, object]]:
    found = api.get(f"/api/profiles/user_id:{user}/events")
    assert found.status_code == 200, found.text
    return list(found.json()["events"])


def test_every_timestamp_form_is_stored_as_the_same_utc_instant(zoned: Server) -> None:
    _send(zoned, [{"type": "track", "userId": f"form-{i}", "event": "Signed Up", "timestamp": text}
                  for i, text in enumerate(SAME_INSTANT)]
          + [{"type": "track", "userId": "date-only", "event": "Signed Up", "timestamp": "2026-03-29"},
             {"type": "track", "userId": "epoch", "event": "Signed Up", "timestamp": 1774744200,
              "messageId": "epoch-seconds"}])
    zoned.wait_caught_up()
    with zoned.admin() as api:
        for i, text in enumerate(SAME_INSTANT):
            event = _events(api, f"form-{i}")[0]
            assert (event["timestamp"], event["original_timestamp"]) == (INSTANT, INSTANT), text
        assert _events(api, "date-only")[0]["timestamp"] == "2026-03-29T00:00:00.000Z"  # the day's start, in UTC
        rejected = api.get("/api/events/rejected", params={"code": "invalid_timestamp"}).json()["rejected"]
    epoch = next(r for r in rejected if r["message_id"] == "epoch-seconds")
    assert epoch["reason"] == "timestamp 1774744200 is not an ISO-8601 date-time"


def test_clock_skew_is_corrected_across_offsets(zoned: Server) -> None:
    """A device whose clock is months behind wrote the event's time at +01:00 and the sending's at +02:00 (summer
    time began in between): 1 h 10 min 10 s passed between them (not the 2 h 10 min 10 s the clock faces say), so
    the event is stored that long before its arrival."""
    _send(zoned, [{"type": "track", "userId": "skewed", "event": "Order Completed",
                   "originalTimestamp": "2026-03-29T01:30:00+01:00", "sentAt": "2026-03-29T03:40:10+02:00"}])
    zoned.wait_caught_up()
    with zoned.admin() as api:
        event = _events(api, "skewed")[0]
    received = str(event["received_at"])
    assert (event["original_timestamp"], event["sent_at"]) == (INSTANT, "2026-03-29T01:40:10.000Z")
    arrived = datetime.fromisoformat(received.replace("Z", "+00:00"))
    assert event["timestamp"] == (arrived - timedelta(hours=1, minutes=10, seconds=10)).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def test_an_import_time_format_with_an_offset_keeps_the_offset(zoned: Server) -> None:
    """``timestamp_format`` with ``%z``: the row's offset counts (it used to be replaced by UTC, moving the event
    by the offset)."""
    rows = "customer,sold\nimported-1,2026-03-29 01:30 +0100\nimported-2,2026-03-28 17:30 -0700\n"
    with zoned.admin() as api:
        report = api.post("/api/imports", content=rows.encode(), params={
            "filename": "sales.csv", "event": "Order Completed", "user_id": "customer", "timestamp": "sold",
            "timestamp_format": "%Y-%m-%d %H:%M %z"})
        assert report.status_code == 200 and report.json()["stored"] == 2, report.text
        zoned.wait_caught_up()
        assert [_events(api, f"imported-{i}")[0]["timestamp"] for i in (1, 2)] == [INSTANT, INSTANT]


def test_conditions_analytics_and_exports_read_times_in_utc(zoned: Server) -> None:
    """A datetime attribute sent with offsets, and event times: compared, counted by day, ranged and exported as
    their UTC instants by the SQL engine (previews), whatever the server's zone."""
    with zoned.admin() as api:
        created = api.post("/api/attributes", json={"code": "trial_ends_at", "name": "Trial ends",
                                                    "type": "datetime", "calculate_analytics": True})
        assert created.status_code in (200, 201), created.text
        _send(zoned, [
            {"type": "identify", "userId": "trial-1", "traits": {"trial_ends_at": "2026-03-29T01:30:00+01:00"}},
            {"type": "identify", "userId": "trial-2", "traits": {"trial_ends_at": "2026-03-28T23:59:00-01:00"}},
            {"type": "identify", "userId": "trial-3", "traits": {"trial_ends_at": "2026-03-29T23:30:00-01:00"}},
            {"type": "track", "userId": "trial-1", "event": "Trial Started", "timestamp": "2026-03-29T00:30:00+01:00"},
            {"type": "track", "userId": "trial-2", "event": "Trial Started", "timestamp": "2026-03-29T01:30:00+02:00"},
        ])
        zoned.wait_caught_up()

        def count(condition: str) -> int:
            answer = api.post("/api/segments/preview", json={"condition": condition})
            assert answer.status_code == 200, answer.text
            return int(answer.json()["count"])

        # trial-1 ends 00:30 UTC on the 29th, trial-2 00:59 UTC on the 29th, trial-3 00:30 UTC on the 30th.
        assert count("trial_ends_at on 2026-03-29") == 2
        assert count("trial_ends_at before 2026-03-29T00:45:00Z") == 1
        assert count("trial_ends_at after 2026-03-29T02:45:00+02:00") == 2  # 00:45 UTC
        # trial-1's event is 23:30 UTC on the 28th, trial-2's 23:30 UTC too: the day before, in UTC.
        assert count('last_time("Trial Started") on 2026-03-28') == 2
        assert count('performed("Trial Started", from = 2026-03-29)') == 0
        analytics = api.get("/api/attributes/trial_ends_at/analytics")
        assert analytics.status_code == 200, analytics.text
        assert analytics.json()["range"] == {"min": INSTANT, "max": "2026-03-30T00:30:00.000Z"}
        exported = api.get("/api/exports/profiles", params={"format": "csv", "attributes": "trial_ends_at"})
        assert exported.status_code == 200, exported.text
    values = {row["user_id"]: row["trial_ends_at"] for row in csv.DictReader(io.StringIO(exported.text))}
    assert values["trial-1"] == "2026-03-29T01:30:00+01:00"  # kept as sent: the same instant, its offset too


def _events_per_day(console: httpx.Client) -> dict[str, int]:
    """The overview chart's figures (its table): ``MM-DD`` -> events."""
    overview = console.get("/")
    assert overview.status_code == 200, overview.text
    if "Events per day as a table" not in overview.text:  # no event in the 14 days: no chart
        return {}
    table = overview.text.split("Events per day as a table", 1)[1].split("</table>", 1)[0]
    return {day: int(n.replace(",", "")) for day, n in re.findall(r'<th scope="row">([\d-]+)</th><td>([\d,]+)</td>',
                                                                   table)}


def test_the_console_counts_events_on_their_utc_day(zoned: Server) -> None:
    """00:05 UTC today sent from Los Angeles (16:05 yesterday there) counts today; 23:55 UTC yesterday sent from
    Kiritimati (13:55 today there) counts yesterday: the overview's days are UTC days, whatever the server's zone
    or the sender's offset."""
    today = utc_today_clear_of_midnight()
    midnight = datetime.combine(today, time(), UTC)
    with httpx.Client(base_url=zoned.url, timeout=10) as console:
        signed_in = console.post("/login", data={"key": ADMIN_KEY})
        assert signed_in.status_code in (200, 303), signed_in.text
        before = _events_per_day(console)
        _send(zoned, [
            {"type": "track", "userId": "day-1", "event": "Visited",
             "timestamp": (midnight + timedelta(minutes=5)).astimezone(_zone(-8)).isoformat()},
            {"type": "track", "userId": "day-2", "event": "Visited",
             "timestamp": (midnight - timedelta(minutes=5)).astimezone(_zone(14)).isoformat()}])
        zoned.wait_caught_up()
        after = _events_per_day(console)
    label = today.isoformat()[5:]
    yesterday = (today - timedelta(days=1)).isoformat()[5:]
    assert len(after) == 14 and list(after)[-1] == label
    changed = {day: after[day] - before.get(day, 0) for day in after if after[day] != before.get(day, 0)}
    assert changed == {yesterday: 1, label: 1}


def _zone(hours: int) -> timezone:
    return timezone(timedelta(hours=hours))
