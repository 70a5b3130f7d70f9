"""The /api conventions an integrator relies on, over every list and answer of a real server: lists page the same
way (``limit`` with a bound, ``next``), pages neither skip nor repeat while data arrives between them, and every
time is written one way."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import WRITE_KEY, Server, start_server

# path, the list's field, the parameter `next` goes back as
LISTS = [
    ("/api/profiles/user_id:u0/events", "events", "cursor"),
    ("/api/events/rejected", "rejected", "before"),
    ("/api/events/recent", "events", "after"),
    ("/api/data-quality", "issues", "before"),
    ("/api/segments/adults/members", "members", "after"),
    ("/api/segments/adults/history", "history", "before"),
    ("/api/audit", "entries", "before"),
    ("/api/privacy/requests", "requests", "before"),
]
TIME_LIKE = re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d")
API_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def send(server: Server, messages: list[dict[str, Any]]) -> None:
    response = httpx.post(f"{server.url}/v1/batch", json={"batch": messages}, auth=(WRITE_KEY, ""), timeout=10)
    assert response.status_code == 200, response.text
    server.wait_caught_up()


def adults(first: int, count: int) -> list[dict[str, Any]]:
    return [{"type": "identify", "userId": f"u{i}", "traits": {"age": 30 + i % 9, "plan": "pro"}}
            for i in range(first, first + count)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder: Path = tmp_path_factory.mktemp("conventions")
    running = start_server(str(folder / "api.duckdb"), folder / "server.log",
                           {"PORTRAIT_BACKUP_DIR": str(folder / "backups")})
    send(running, [*adults(0, 6),
                   *({"type": "track", "userId": "u0", "event": "Viewed", "timestamp": f"2026-01-0{d}T10:00:00Z"}
                     for d in range(1, 8)),
                   {"type": "track", "userId": "u1"}, {"type": "track"},  # rejected: no event name, no identifier
                   {"type": "identify", "userId": "u2", "traits": {"age": "old"}},  # a data-quality issue
                   {"type": "identify", "userId": "u3", "traits": {"age": "older"}}])
    with running.admin() as admin:
        assert admin.post("/api/segments", json={"name": "adults", "condition": "age > 18"}).status_code == 201
        for who in ("u1", "u2", "u3"):
            assert admin.post("/api/privacy/requests", json={"type": "access", "identity": f"user_id:{who}"}
                              ).status_code == 202
        assert admin.post("/api/keys", json={"kind": "read", "name": "bi"}).status_code == 201
        # a job: the server waits for it before it stops
        assert admin.post("/api/backups", headers={"Prefer": "respond-async"}).status_code == 202
    yield running
    running.stop()


def walk(admin: httpx.Client, path: str, field: str, parameter: str, limit: int) -> list[Any]:
    """Every item of a list, page by page."""
    items: list[Any] = []
    params: dict[str, Any] = {"limit": limit}
    for _ in range(100):
        page = admin.get(path, params=params)
        assert page.status_code == 200, (path, page.text)
        items += page.json()[field]
        if page.json()["next"] is None:
            return items
        params[parameter] = page.json()["next"]
    raise AssertionError(f"{path} did not end")


@pytest.mark.parametrize(("path", "field", "parameter"), LISTS)
def test_every_growing_list_pages_with_a_bounded_limit_and_next(server: Server, path: str, field: str,
                                                                parameter: str) -> None:
    with server.admin() as admin:
        too_many = admin.get(path, params={"limit": 1001})
        assert too_many.status_code == 400 and too_many.json()["code"] == "invalid_request", too_many.text
        assert "limit" in too_many.json()["message"]
        whole = admin.get(path, params={"limit": 1000}).json()
        assert whole["next"] is None and len(whole[field]) >= 2, whole
        if path == "/api/audit":  # reading pages adds entries (reads of personal data): compare the oldest ones
            paged = walk(admin, path, field, parameter, 1)
            assert paged[-len(whole[field]):] == whole[field]
        else:
            assert walk(admin, path, field, parameter, 1) == whole[field]


def test_a_cursor_naming_no_privacy_request_is_refused(server: Server) -> None:
    with server.admin() as admin:
        answer = admin.get("/api/privacy/requests", params={"before": "pr_nope"})
    assert (answer.status_code, answer.json()["code"]) == (400, "invalid_cursor"), answer.text


def test_events_arriving_between_pages_neither_skip_nor_repeat_an_event(server: Server) -> None:
    with server.admin() as admin:
        before = [e["seq"] for e in admin.get("/api/profiles/user_id:u0/events", params={"limit": 1000}
                                               ).json()["events"]]
        first = admin.get("/api/profiles/user_id:u0/events", params={"limit": 3}).json()
        # newer events, one as old as the oldest page and one between the pages (a late, historical event)
        send(server, [{"type": "track", "userId": "u0", "event": "Viewed"},
                      {"type": "track", "userId": "u0", "event": "Late", "timestamp": "2026-01-05T09:00:00Z"},
                      {"type": "track", "userId": "u0", "event": "Old", "timestamp": "2025-01-01T00:00:00Z"}])
        assert first["next"] is not None
        rest = [e for page in _pages(admin, "/api/profiles/user_id:u0/events", "events", "cursor", first["next"], 3)
                for e in page]
    seen = [e["seq"] for e in first["events"]] + [e["seq"] for e in rest]
    assert len(seen) == len(set(seen)), "an event came twice"
    assert set(before) <= set(seen), "an event was skipped"


def test_members_entering_between_pages_neither_skip_nor_repeat_a_member(server: Server) -> None:
    with server.admin() as admin:
        before = {m["profile_id"] for m in admin.get("/api/segments/adults/members", params={"limit": 1000}
                                                     ).json()["members"]}
        first = admin.get("/api/segments/adults/members", params={"limit": 2}).json()
        send(server, adults(100, 8))
        assert admin.post("/api/segments/adults/recount").status_code == 200
        rest = [m for page in _pages(admin, "/api/segments/adults/members", "members", "after", first["next"], 2)
                for m in page]
        after = {m["profile_id"] for m in admin.get("/api/segments/adults/members", params={"limit": 1000}
                                                    ).json()["members"]}
    seen = [m["profile_id"] for m in first["members"]] + [m["profile_id"] for m in rest]
    assert len(after) > len(before), "no member entered between the pages"
    assert len(seen) == len(set(seen)), "a member came twice"
    assert before <= set(seen), "a member was skipped"


def _pages(admin: httpx.Client, path: str, field: str, parameter: str, cursor: Any, limit: int
           ) -> Iterator[list[Any]]:
    while cursor is not None:
        page = admin.get(path, params={"limit": limit, parameter: cursor}).json()
        yield page[field]
        cursor = page["next"]


def _times(value: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _times(item, f"{where}.{key}")
    elif isinstance(value, list):
        for item in value:
            yield from _times(item, f"{where}[]")
    elif isinstance(value, str) and TIME_LIKE.match(value):
        yield where, value


def test_every_time_the_api_writes_is_iso_with_milliseconds_and_z(server: Server) -> None:
    reads = ["/api/profiles/user_id:u2", "/api/profiles/user_id:u0/events", "/api/events/rejected",
             "/api/events/recent", "/api/data-quality", "/api/attributes", "/api/backups", "/api/segments/adults",
             "/api/segments/adults/members", "/api/segments/adults/history", "/api/segments/adults/sizes",
             "/api/profiles/user_id:u0/segments", "/api/keys", "/api/audit", "/api/privacy/requests"]
    with server.admin() as admin:
        found = [(path, *time) for path in reads for time in _times(admin.get(path).json(), "")]
    assert {path for path, *_ in found} >= {"/api/keys", "/api/audit", "/api/backups"}
    assert [time for time in found if not API_TIME.match(time[2])] == []


@pytest.mark.parametrize(("path", "params", "named"), [
    # the events list's cursor sent to the members list: the first page again, forever
    ("/api/segments/adults/members", {"cursor": "x", "limit": 2}, "unknown query parameter cursor (this operation "
                                                                  "takes: after, limit)"),
    ("/api/events/rejected", {"limt": 5}, "unknown query parameter limt"),  # silently 100
    ("/api/status", {"verbose": "1", "x": "2"}, "unknown query parameters verbose, x (this operation takes: none)"),
])
def test_a_query_parameter_the_operation_does_not_take_is_refused(server: Server, path: str,
                                                                   params: dict[str, Any], named: str) -> None:
    with server.admin() as admin:
        answer = admin.get(path, params=params)
    assert (answer.status_code, answer.json()["code"]) == (400, "invalid_request"), answer.text
    assert named in answer.json()["message"]


@pytest.mark.parametrize(("path", "says"), [
    ("/api/events/rejected?limit=5000", "query parameter limit must be at most 1000, not '5000'"),
    ("/api/events/rejected?limit=0", "query parameter limit must be at least 1, not '0'"),
    ("/api/events/rejected?limit=ten", "query parameter limit must be a whole number, not 'ten'"),
    ("/api/segments/adults/breakdown", "query parameter attribute is required"),
])
def test_a_parameter_out_of_its_rules_is_said_plainly(server: Server, path: str, says: str) -> None:
    """pydantic's wording came through: "query.limit: Input should be less than or equal to 1000"."""
    with server.admin() as admin:
        answer = admin.get(path)
    assert answer.status_code == 400 and answer.json() == {"code": "invalid_request", "message": says}
