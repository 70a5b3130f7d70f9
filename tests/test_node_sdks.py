"""The official Node.js SDKs from the npm registry, unmodified, against a real server process.

@segment/analytics-node and @rudderstack/rudder-sdk-node are installed once into tests/.cache (as the browser SDK
is in test_console.py); tests/node_sdks/send.js makes the calls with them and records what each SDK reported and,
through a loopback proxy when asked, what went over the wire.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import NODE_SDKS, WRITE_KEY, Server, start_server

DRIVER = Path(__file__).parent / "node_sdks" / "send.js"
LIBRARY = {"segment": "@segment/analytics-node", "rudder": "analytics-node"}  # context.library.name each sends
SDKS = sorted(NODE_SDKS)
BULK = 100  # with flushAt 20: the 107 calls go in at least 6 requests


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module: every test sends under identifiers of its own."""
    folder = tmp_path_factory.mktemp("node-sdks")
    running = start_server(str(folder / "server.duckdb"), folder / "server.log")
    yield running
    running.stop()


def send(node_modules: Path, tmp_path: Path, sdk: str, server: Server, run: str,
         on_answer: Callable[[int | str], None] | None = None, **options: Any) -> dict[str, Any]:
    """Run the driver with one SDK; returns its report (errors, callbacks, HTTP statuses, calls, wire).
    ``on_answer`` is told each HTTP status (or network error code) the SDK gets, as it gets it."""
    out = tmp_path / f"{run}.json"
    config = {"sdk": sdk, "host": server.url, "writeKey": WRITE_KEY, "run": run, "flushAt": 20, "bulk": BULK,
              "t0": (int(time.time()) - 7200) * 1000, "out": str(out), **options}
    errors = tmp_path / f"{run}.stderr"
    with errors.open("w") as stderr, subprocess.Popen(
            ["node", str(DRIVER), json.dumps(config)], stdout=subprocess.PIPE, stderr=stderr, text=True,
            env={**os.environ, "NODE_PATH": str(node_modules)}) as driver:
        assert driver.stdout is not None
        for line in driver.stdout:  # "answered <status>", one line per HTTP answer
            status = line.split()[-1]
            if on_answer is not None:
                on_answer(int(status) if status.isdigit() else status)
        assert driver.wait(timeout=90) == 0, errors.read_text()
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def events_of(admin: httpx.Client, identity: str) -> list[dict[str, Any]]:
    answer = admin.get(f"/api/profiles/{identity}/events", params={"limit": 1000})
    assert answer.status_code == 200, answer.text
    assert answer.json()["next"] is None
    return list(answer.json()["events"])


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


@pytest.mark.parametrize("sdk", SDKS)
def test_every_call_lands_once_as_sent(node_modules: Path, shop: Server, tmp_path: Path, sdk: str) -> None:
    run = f"{sdk}-calls"
    report = send(node_modules, tmp_path, sdk, shop, run)  # every call but the bulk ones dated 2 hours ago
    calls = report["sent"]
    assert len(calls) == 7 + BULK
    assert report["errors"] == [] and report["callbacks"] == {"ok": len(calls), "failed": []}
    assert len(report["responses"]) >= 6 and set(report["responses"]) == {200}  # flushed in several batches
    shop.wait_caught_up()
    with shop.admin() as admin:
        assert admin.get("/api/events/rejected").json()["rejected"] == []
        events = events_of(admin, f"user_id:{run}-user")
        profile = admin.get(f"/api/profiles/user_id:{run}-user").json()
        # the anonymous visit, the device named by the alias and the email are the one customer
        for identity in (f"anonymous_id:{run}-anon", f"anonymous_id:{run}-device", f"email:{run}@example.com"):
            assert admin.get(f"/api/profiles/{identity}").json()["profile_id"] == profile["profile_id"], identity
    assert len(events) == len(calls) == profile["events_count"]
    assert len({e["message_id"] for e in events}) == len(events)  # each once
    assert profile["traits"] == {"email": f"{run}@example.com", "name": "Ann Node", "plan": "pro", "age": 33}
    assert {(i["type"], i["value"]) for i in profile["identities"]} == {
        ("user_id", f"{run}-user"), ("anonymous_id", f"{run}-anon"), ("anonymous_id", f"{run}-device"),
        ("email", f"{run}@example.com")}

    bulk = {e["message_id"]: e for e in events if e["event"] == "Bulk Event"}
    assert sorted(bulk) == sorted(f"{run}-bulk-{i}" for i in range(BULK))
    assert all(e["properties"] == {"i": int(m.rsplit("-", 1)[1])} and e["type"] == "track" for m, e in bulk.items())

    stored = Counter((e["type"], e["event"]) for e in events if e["event"] != "Bulk Event")
    assert stored == Counter((c["kind"], c["message"].get("event") or c["message"].get("name"))
                             for c in calls[:7])  # each call once, with its type and its event or page/screen name
    for call in calls[:7]:
        kind, sent = call["kind"], call["message"]
        [event] = [e for e in events if (e["type"], e["event"]) == (kind, sent.get("event") or sent.get("name"))]
        where = f"{kind} {event['event']}"
        assert (event["user_id"], event["anonymous_id"]) == (sent.get("userId"), sent.get("anonymousId")), where
        assert (event["previous_id"], event["group_id"]) == (sent.get("previousId"), sent.get("groupId")), where
        # the time the caller gave (2 hours ago), not the time of the call, corrected for the SDK's clock as Segment
        # does: receivedAt - (sentAt - timestamp). Checked exactly: the correction moves it by the request's time in
        # transit, which a bound (5 s) could not hold on a loaded box whose server stalled while the request waited
        assert at(event["original_timestamp"]) == at(sent["timestamp"]), (where, event["original_timestamp"])
        assert event["sent_at"] is not None, where  # the SDK sent its clock's time, so the correction applies
        corrected = at(event["received_at"]) - (at(event["sent_at"]) - at(event["original_timestamp"]))
        assert at(event["timestamp"]) == corrected, (where, event["timestamp"], event["sent_at"], event["received_at"])
        if kind in ("track", "page", "screen"):
            assert event["properties"].items() >= sent["properties"].items(), where  # Segment adds page category
        if kind in ("identify", "group"):
            assert event["traits"] == sent["traits"], where
        assert event["context"]["library"]["name"] == LIBRARY[sdk], where
        assert event["context"].items() >= sent.get("context", {}).items(), where
        if "integrations" in sent:
            assert event["extra"]["integrations"] == sent["integrations"], where
    [order] = [e for e in events if e["event"] == "Order Completed"]
    assert order["message_id"] == f"{run}-order"  # a messageId the caller set is kept
    newest = max(at(e["timestamp"]) for e in events)
    assert at(profile["first_seen"]) == min(at(e["timestamp"]) for e in events) < newest
    assert (datetime.now(UTC) - at(profile["first_seen"])).total_seconds() > 7000  # the backfill's time counts


@pytest.mark.parametrize("sdk", SDKS)
def test_a_batch_sent_again_after_a_lost_answer_is_stored_once(node_modules: Path, shop: Server, tmp_path: Path,
                                                               sdk: str) -> None:
    """The first two requests reach Portrait and are stored, but the SDK is answered 503 (a lost acknowledgement):
    it sends them again with the same messageIds, and Portrait keeps one copy. The wire shows each SDK's
    authentication and encoding."""
    run = f"{sdk}-retry"
    report = send(node_modules, tmp_path, sdk, shop, run, bulk=40, failFirst=2)
    calls = report["sent"]
    assert report["errors"] == [] and report["callbacks"] == {"ok": len(calls), "failed": []}
    wire = report["wire"]
    assert all(w["upstreamStatus"] == 200 for w in wire)
    failed = [w for w in wire if w["answered"] == 503]
    assert len(failed) == 2

    def ids(request: dict[str, Any]) -> list[str]:
        return [m["messageId"] for m in request["body"]["batch"]]

    for lost in failed:  # sent again, whole and with the same ids
        assert any(ids(w) == ids(lost) for w in wire if w["answered"] == 200), ids(lost)
    delivered = [m for w in wire if w["answered"] == 200 for m in ids(w)]
    assert sorted(delivered) == sorted({m for w in wire for m in ids(w)}) and len(delivered) == len(calls)
    basic = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    assert {w["headers"]["authorization"] for w in wire} == {basic}  # the write key as Basic-auth user name
    if sdk == "rudder":
        assert {w["headers"].get("content-encoding") for w in wire} == {"gzip"}  # gzip by default
    else:
        assert {w["body"]["writeKey"] for w in wire} == {WRITE_KEY}  # the key in the body too
        assert any(w["headers"].get("x-retry-count") == "1" for w in wire)
    shop.wait_caught_up()
    with shop.admin() as admin:
        events = events_of(admin, f"user_id:{run}-user")
        assert admin.get("/api/events/rejected").json()["rejected"] == []
    assert len(events) == len(calls)
    assert sorted(e["message_id"] for e in events if e["event"] == "Bulk Event") == sorted(
        f"{run}-bulk-{i}" for i in range(40))


@pytest.mark.parametrize("sdk", SDKS)
def test_a_wrong_write_key_is_reported_to_the_sdk(node_modules: Path, shop: Server, tmp_path: Path,
                                                  sdk: str) -> None:
    run = f"{sdk}-wrong-key"
    out = send(node_modules, tmp_path, sdk, shop, run, bulk=0, writeKey="wk_not_a_key")
    assert set(out["responses"]) == {401}  # not retried: a 401 is final for both
    assert out["callbacks"]["ok"] == 0 and len(out["callbacks"]["failed"]) == len(out["sent"]) == 7
    assert all("401" in failure for failure in out["callbacks"]["failed"])
    assert out["errors"] and all("401" in error["reason"] for error in out["errors"])
    with shop.admin() as admin:
        assert admin.get(f"/api/profiles/user_id:{run}-user").status_code == 404
