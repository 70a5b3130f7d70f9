"""The HTTP API in process, through its ASGI interface: ingestion rules, auth, errors, profile reads."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import re
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import uvicorn
from fastapi.testclient import TestClient
from tests.conftest import ADMIN_KEY, WRITE_KEY

from portrait.api import create_app
from portrait.config import Settings, load_settings
from portrait.service import Portrait

BASIC = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def client(portrait: Portrait) -> Iterator[TestClient]:
    with TestClient(create_app(portrait=portrait)) as test_client:
        yield test_client


def track(**fields: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Product Viewed", "userId": "u-1", **fields}


def post(client: TestClient, path: str, body: Any, **kwargs: Any) -> Any:
    headers = {"Authorization": BASIC, **kwargs.pop("headers", {})}
    return client.post(path, content=orjson.dumps(body), headers=headers, **kwargs)


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/import", "/v1/b"])
def test_batch_endpoints_accept_and_answer_exactly_200_success(client: TestClient, portrait: Portrait,
                                                               path: str) -> None:
    response = post(client, path, {"batch": [track(messageId="m1"), track(messageId="m2")]})
    assert response.status_code == 200
    assert response.json() == {"success": True}
    assert portrait.status()["events_received"] == 2


@pytest.mark.parametrize(("path", "body", "kind"), [
    ("/v1/identify", {"userId": "u-1", "traits": {"plan": "pro"}}, "identify"),
    ("/v1/i", {"userId": "u-1"}, "identify"),
    ("/v1/track", {"userId": "u-1", "event": "Signed Up"}, "track"),
    ("/v1/t", {"userId": "u-1", "event": "Signed Up"}, "track"),
    ("/v1/page", {"anonymousId": "a", "name": "Home"}, "page"),
    ("/v1/p", {"anonymousId": "a"}, "page"),
    ("/v1/screen", {"anonymousId": "a", "name": "Cart"}, "screen"),
    ("/v1/s", {"anonymousId": "a"}, "screen"),
    ("/v1/group", {"userId": "u-1", "groupId": "acme"}, "group"),
    ("/v1/g", {"userId": "u-1", "groupId": "acme"}, "group"),
    ("/v1/alias", {"userId": "u-1", "previousId": "a"}, "alias"),
    ("/v1/a", {"userId": "u-1", "previousId": "a"}, "alias"),
])
def test_single_message_endpoints_imply_the_type(client: TestClient, portrait: Portrait, path: str,
                                                 body: dict[str, Any], kind: str) -> None:
    assert post(client, path, body).status_code == 200
    assert [e["type"] for e in portrait.recent_events(0)] == [kind]


@pytest.mark.parametrize("how", ["body", "basic", "query"])
def test_write_key_from_body_basic_auth_or_query(client: TestClient, how: str) -> None:
    body: dict[str, Any] = {"batch": [track()]}
    headers: dict[str, str] = {}
    params: dict[str, str] = {}
    if how == "body":
        body["writeKey"] = WRITE_KEY
    elif how == "basic":
        headers["Authorization"] = BASIC
    else:
        params["writeKey"] = WRITE_KEY
    response = client.post("/v1/batch", content=orjson.dumps(body), headers=headers, params=params)
    assert response.status_code == 200


@pytest.mark.parametrize("key", [None, "wrong-key", ADMIN_KEY])
def test_unknown_or_missing_write_key_is_401_with_json_error(client: TestClient, key: str | None) -> None:
    body: dict[str, Any] = {"batch": [track()]}
    if key:
        body["writeKey"] = key
    response = client.post("/v1/batch", content=orjson.dumps(body))
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized" and response.json()["message"]
    assert response.headers["www-authenticate"].startswith("Basic realm=")  # the write key's scheme
    browser = client.post("/v1/batch", content=orjson.dumps(body), headers={"Origin": "https://shop.example.com"})
    assert browser.status_code == 401  # a Basic challenge would make a browser prompt the shop's visitors
    assert not browser.headers["www-authenticate"].lower().startswith(("basic", "digest"))


def test_a_key_refused_for_ingestion_says_why(client: TestClient, portrait: Portrait) -> None:
    """"unknown write key" for an admin key, or a revoked one, sent the user looking for a typo."""
    admin = post(client, "/v1/track", track(), headers={"Authorization": "Basic " + base64.b64encode(
        f"{ADMIN_KEY}:".encode()).decode()})
    assert admin.status_code == 401
    assert re.fullmatch(r"key \w+ is an admin key, for the API and the console: events are sent with a write key "
                        r"\(one per source\)", admin.json()["message"]), admin.json()
    secret, old = portrait.keys.create("write", "old shop")
    portrait.keys.revoke(old.id)
    revoked = post(client, "/v1/track", track(), headers={"Authorization": "Basic " + base64.b64encode(
        f"{secret}:".encode()).decode()})
    assert revoked.status_code == 401 and f"key {old.id} was revoked" in revoked.json()["message"]
    assert post(client, "/v1/track", track(writeKey="wk_typo"), headers={"Authorization": ""}
                ).json()["message"] == "unknown write key"


def test_an_unknown_key_beside_the_body_is_refused_before_the_body_is_read(client: TestClient,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Basic auth or ?writeKey=: a sender without a valid key costs no decompressing or parsing."""
    import portrait.service

    def never(*args: Any) -> Any:
        raise AssertionError("the body was read")

    monkeypatch.setattr(portrait.service, "decode_body", never)
    deep = b'{"batch": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}"
    for auth in ({"headers": {"Authorization": "Basic " + base64.b64encode(b"wrong-key:").decode()}},
                 {"params": {"writeKey": "wrong-key"}}):
        refused = client.post("/v1/batch", content=deep, **auth)  # type: ignore[arg-type]
        assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"


def test_json_is_read_whatever_the_content_type(client: TestClient, portrait: Portrait) -> None:
    response = client.post("/v1/batch", content=orjson.dumps({"batch": [track()], "writeKey": WRITE_KEY}),
                           headers={"Content-Type": "text/plain"})
    assert response.status_code == 200
    assert portrait.status()["events_received"] == 1


def test_gzip_body_is_decompressed(client: TestClient, portrait: Portrait) -> None:
    raw = gzip.compress(orjson.dumps({"batch": [track(), track()], "writeKey": WRITE_KEY}))
    response = client.post("/v1/batch", content=raw, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200
    assert portrait.status()["events_received"] == 2


@pytest.mark.parametrize(("content", "headers", "code"), [
    (b"{not json", {}, "invalid_json"),
    (b"[1, 2]", {}, "invalid_request"),
    (b'{"batch": {"a": 1}}', {}, "invalid_request"),
    (orjson.dumps({"batch": [{"type": "track"}] * 2501}), {}, "batch_too_large"),
    (orjson.dumps({"batch": [track(properties={"x": "y" * 600_000})]}), {}, "body_too_large"),
    (gzip.compress(b"0" * 5_000_000), {"Content-Encoding": "gzip"}, "body_too_large"),
    (b"\x1f\x8b not really gzip", {"Content-Encoding": "gzip"}, "bad_encoding"),
    (b"{}", {"Content-Encoding": "br"}, "bad_encoding"),
])
def test_unreadable_requests_get_400_and_are_kept(client: TestClient, portrait: Portrait, content: bytes,
                                                  headers: dict[str, str], code: str) -> None:
    response = client.post("/v1/batch", content=content, headers={"Authorization": BASIC, **headers})
    assert response.status_code == 400
    assert response.json()["code"] == code and response.json()["message"]
    kept = client.get("/api/events/rejected", headers=ADMIN).json()["rejected"]
    assert [r["code"] for r in kept] == [code]
    assert kept[0]["payload"]  # what was sent (its first 64 KiB) can be inspected


@pytest.mark.parametrize(("body", "code"), [
    ({"batch": [{"type": "track"}] * 2501}, "batch_too_large"),
    ({"batch": {"not": "a list"}}, "invalid_request"),
])
def test_a_body_refused_as_a_whole_is_kept_for_the_key_it_names(client: TestClient, body: dict[str, object],
                                                                 code: str) -> None:
    """The browser style: the write key only in the body. A readable body refused as a whole still names its
    sender, so it is kept like one whose key came in a header; an unknown key gets 401 as always."""
    response = client.post("/v1/batch", content=orjson.dumps({**body, "writeKey": WRITE_KEY}))
    assert response.status_code == 400 and response.json()["code"] == code
    kept = client.get("/api/events/rejected", headers=ADMIN).json()["rejected"]
    assert [r["code"] for r in kept] == [code]
    assert client.post("/v1/batch", content=orjson.dumps({**body, "writeKey": "wk_unknown"})).status_code == 401


def test_what_is_kept_of_a_refused_body_is_readable_and_holds_no_write_key(client: TestClient) -> None:
    """A gzip body that is not JSON is kept as its text, not the compressed bytes; a write key in a kept body or
    message is left out (keys are otherwise stored only as hashes)."""
    broken = b'{"batch": [{"type": "track", "userId": "u-1", "event": "Cut off"'
    assert client.post("/v1/batch", content=gzip.compress(broken),
                       headers={"Authorization": BASIC, "Content-Encoding": "gzip"}).status_code == 400
    refused = orjson.dumps({"batch": {"not": "a list"}, "writeKey": WRITE_KEY})
    assert client.post("/v1/batch", content=refused).status_code == 400
    assert client.post("/v1/track", content=orjson.dumps({"userId": "u-1", "writeKey": WRITE_KEY})).status_code == 200
    kept = client.get("/api/events/rejected", headers=ADMIN).json()["rejected"]
    assert [r["code"] for r in kept] == ["missing_field", "invalid_request", "invalid_json"]
    assert kept[2]["payload"] == broken.decode()
    assert all(WRITE_KEY not in r["payload"] for r in kept), [r["payload"] for r in kept]
    assert orjson.loads(kept[1]["payload"]) == {"batch": {"not": "a list"}}  # the body as read, without its key
    escaped = WRITE_KEY.replace("_", "\\u005f").encode()  # the same key, written with JSON escapes
    assert client.post("/v1/batch", content=b'{"write\\u004bey": "' + escaped + b'", "batch": "x"}').status_code == 400
    assert WRITE_KEY not in client.get("/api/events/rejected", headers=ADMIN).json()["rejected"][0]["payload"]


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_an_oversize_compressed_body_is_kept_decompressed(client: TestClient, encoding: str) -> None:
    """Refused for its decompressed size: what is kept is the start of its JSON, not compressed bytes."""
    body = orjson.dumps({"batch": [track(userId=f"u-{i}", properties={"note": "x" * 500}) for i in range(1500)]})
    assert len(body) > 500_000
    compressed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    response = client.post("/v1/batch", content=compressed,
                           headers={"Authorization": BASIC, "Content-Encoding": encoding})
    assert response.status_code == 400 and response.json()["code"] == "body_too_large"
    [kept] = client.get("/api/events/rejected", headers=ADMIN).json()["rejected"]
    assert kept["payload"] == body[:65536].decode() + "... [the rest not kept]"


def test_an_oversize_multi_member_gzip_body_says_the_rest_was_not_kept(client: TestClient) -> None:
    body = orjson.dumps({"batch": [track(userId=f"u-{i}", properties={"note": "x" * 500}) for i in range(1500)]})
    compressed = gzip.compress(body[:30]) + gzip.compress(body[30:])  # a gzip file may be several members
    response = client.post("/v1/batch", content=compressed,
                           headers={"Authorization": BASIC, "Content-Encoding": "gzip"})
    assert response.status_code == 400 and response.json()["code"] == "body_too_large"
    [kept] = client.get("/api/events/rejected", headers=ADMIN).json()["rejected"]
    assert kept["payload"] == body[:30].decode() + "... [the rest not kept]"


def test_every_field_sent_comes_back_from_the_events_api(client: TestClient, portrait: Portrait) -> None:
    body = {"batch": [
        {"type": "page", "userId": "u-1", "name": "Home", "category": "Docs", "channel": "browser",
         "integrations": {"All": False}, "timestamp": "2026-01-05T10:00:00z"},
        {"type": "group", "userId": "u-1", "groupId": "acme", "traits": {"plan": "team"},
         "originalTimestamp": "2026-01-05T10:00:01Z"},
    ], "sentAt": "2026-01-05T10:00:02Z", "integrations": {"Mixpanel": True}}
    assert post(client, "/v1/batch", body).status_code == 200
    portrait.process_pending()
    events = {e["type"]: e for e in client.get("/api/profiles/user_id:u-1/events", headers=ADMIN).json()["events"]}
    assert events["page"]["extra"] == {"category": "Docs", "channel": "browser",
                                       "integrations": {"Mixpanel": True, "All": False}}
    assert events["page"]["original_timestamp"] == "2026-01-05T10:00:00.000Z"  # a lower-case z is UTC too
    assert events["group"]["group_id"] == "acme" and events["group"]["sent_at"] == "2026-01-05T10:00:02.000Z"
    assert events["group"]["extra"] == {"integrations": {"Mixpanel": True}}


def test_invalid_messages_are_dropped_with_200_but_listed_with_reasons(client: TestClient, portrait: Portrait
                                                                       ) -> None:
    batch = [track(messageId="ok"), {"type": "track", "userId": "u-1", "messageId": "no-event"},
             {"type": "identify", "messageId": "nobody"}, {"type": "alias", "userId": "u-1", "messageId": "al"},
             {"type": "teleport", "userId": "u", "messageId": "tp"}, 42]
    assert post(client, "/v1/batch", {"batch": batch}).status_code == 200
    rejected = client.get("/api/events/rejected", headers=ADMIN).json()["rejected"]
    by_id = {r["message_id"]: (r["code"], r["reason"]) for r in rejected}
    assert by_id["no-event"] == ("missing_field", "track needs an event name")
    assert by_id["nobody"][0] == "missing_identity"
    assert by_id["al"][0] == "missing_field"
    assert by_id["tp"][0] == "invalid_type"
    assert by_id[None][0] == "invalid_message"
    assert portrait.status()["events_received"] == 1
    only_types = client.get("/api/events/rejected", headers=ADMIN, params={"code": "invalid_type"}).json()
    assert [r["message_id"] for r in only_types["rejected"]] == ["tp"]


def test_retried_batch_creates_no_duplicates(client: TestClient, portrait: Portrait) -> None:
    batch = {"batch": [*(track(messageId=f"m{i}") for i in range(5)), track(messageId="bad", event=None)]}
    for _ in range(3):
        assert post(client, "/v1/batch", batch).status_code == 200
    assert portrait.status()["events_received"] == 5
    # The invalid message is listed (and counted) once, not once per attempt.
    assert [r["message_id"] for r in portrait.rejected()["rejected"]] == ["bad"]
    assert portrait.status()["events_rejected"] == 1
    assert portrait.status()["events_duplicate"] == 10  # the copies left out are counted, visibly


def test_enrichment_received_at_skew_correction_ip_and_message_id(client: TestClient, portrait: Portrait) -> None:
    body = {"batch": [track(timestamp="2026-01-01T10:00:00Z")], "sentAt": "2026-01-01T10:00:30Z"}
    assert post(client, "/v1/batch", body).status_code == 200
    portrait.process_pending()
    event = client.get("/api/profiles/user_id:u-1/events", headers=ADMIN).json()["events"][0]
    received = event["received_at"]
    from datetime import datetime, timedelta
    corrected = datetime.fromisoformat(received[:-1]) - timedelta(seconds=30)
    assert event["timestamp"] == corrected.isoformat(timespec="milliseconds") + "Z"
    assert event["message_id"].startswith("portrait-")
    assert event["context"]["ip"] == "testclient"


def test_cors_preflight_on_ingestion_but_not_on_admin_api(client: TestClient) -> None:
    preflight = client.options("/v1/batch", headers={"Origin": "https://shop.example.com",
                                                     "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://shop.example.com"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    custom = client.options("/v1/batch", headers={"Origin": "https://shop.example.com",
                                                  "Access-Control-Request-Method": "POST",
                                                  "Access-Control-Request-Headers": "content-type, x-shop-tenant"})
    assert custom.headers["access-control-allow-headers"] == "content-type, x-shop-tenant"  # analytics.js extras
    admin = client.options("/api/status", headers={"Origin": "https://evil.example.com",
                                                   "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in admin.headers


@pytest.mark.parametrize("path", ["/v1/batch/", "/v1/import/", "/v1/b/", "/v1/track/", "/v1/t/"])
def test_ingestion_paths_with_a_trailing_slash_are_the_same_endpoints(client: TestClient, portrait: Portrait,
                                                                       path: str) -> None:
    """``/v1/batch/`` is answered, not redirected: a 307 is not followed by a browser's preflight, nor by clients
    that do not re-send a POST body (curl without -L, Java's HttpURLConnection): their events were lost."""
    body = {"batch": [track()]} if path.rstrip("/").rsplit("/", 1)[1] in ("batch", "import", "b") else track()
    response = post(client, path, body, follow_redirects=False)
    assert (response.status_code, response.json()) == (200, {"success": True})
    assert portrait.status()["events_received"] == 1
    preflight = client.options(path, follow_redirects=False, headers={
        "Origin": "https://shop.example.com", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://shop.example.com"


@pytest.mark.parametrize(("headers", "status", "code"), [
    ({}, 401, "unauthorized"), ({"Authorization": "Bearer x"}, 401, "unauthorized"),
    ({"Authorization": f"Basic {ADMIN_KEY}"}, 401, "unauthorized"),
    ({"Authorization": f"Bearer {WRITE_KEY}"}, 403, "forbidden"),  # a valid key, for ingestion only
])
def test_the_api_needs_a_read_or_admin_key(client: TestClient, headers: dict[str, str], status: int,
                                           code: str) -> None:
    response = client.get("/api/status", headers=headers)
    assert response.status_code == status
    assert response.json()["code"] == code
    assert response.headers.get("www-authenticate") == ("Bearer" if status == 401 else None)


def test_profile_lookup_endpoints(client: TestClient, portrait: Portrait) -> None:
    batch = [{"type": "identify", "userId": "42", "anonymousId": "a-1", "traits": {"email": "Ann@Example.com",
                                                                                  "name": "Ann"}},
             track(userId="42", event="Order Completed", properties={"revenue": 12.5})]
    assert post(client, "/v1/batch", {"batch": batch}).status_code == 200
    portrait.process_pending()
    profile = client.get("/api/profiles/email:ann@example.com", headers=ADMIN).json()
    assert set(profile) >= {"profile_id", "traits", "identities", "merges", "first_seen", "last_seen", "events_count"}
    assert profile["traits"] == {"email": "Ann@Example.com", "name": "Ann"}
    assert {"type": "user_id", "value": "42"} in [{k: i[k] for k in ("type", "value")} for i in profile["identities"]]
    same = client.get(f"/api/profiles/profile_id:{profile['profile_id']}", headers=ADMIN).json()
    assert same["profile_id"] == profile["profile_id"]
    assert client.get("/api/profiles/user_id:42/traits", headers=ADMIN).json() == profile["traits"]
    assert len(client.get("/api/profiles/anonymous_id:a-1/identities", headers=ADMIN).json()["identities"]) == 3
    events = client.get("/api/profiles/user_id:42/events", headers=ADMIN,
                        params={"event": "Order Completed"}).json()
    assert [(e["type"], e["event"], e["properties"]) for e in events["events"]] == [
        ("track", "Order Completed", {"revenue": 12.5})]
    assert events["next"] is None


@pytest.mark.parametrize("user_id", ["team/42", "ord#2", "q?x=1", "50%off", "a/b/events/c", "/lead/", "two\nlines"])
def test_any_identifier_can_be_read_through_the_api(client: TestClient, portrait: Portrait, user_id: str) -> None:
    """Identifiers holding /, #, ? or % reach their own profile when percent-encoded (the CLI's client does it)."""
    from portrait.client import profile_path
    other = {"ord#2": "ord", "q?x=1": "q", "team/42": "team", "50%off": "50"}.get(user_id, "x")  # what a raw path hits
    batch = [{"type": "identify", "userId": uid, "traits": {"name": uid}} for uid in (user_id, other)]
    assert post(client, "/v1/batch", {"batch": [*batch, track(userId=user_id, event="Seen")]}).status_code == 200
    portrait.process_pending()
    reference = f"user_id:{user_id}"
    profile = client.get(profile_path(reference), headers=ADMIN).json()
    assert profile["traits"] == {"name": user_id}
    assert client.get(profile_path(reference, "traits"), headers=ADMIN).json() == {"name": user_id}
    events = client.get(profile_path(reference, "events"), headers=ADMIN).json()["events"]
    assert [(e["type"], e["event"]) for e in events] == [("track", "Seen"), ("identify", None)]
    identities = client.get(profile_path(reference, "identities"), headers=ADMIN).json()["identities"]
    assert [i["value"] for i in identities] == [user_id]
    assert client.get(profile_path(reference, "segments"), headers=ADMIN).status_code == 200


@pytest.mark.parametrize("user_id", ["42", "team/42", "q?x=1", "50%off"])
@pytest.mark.parametrize("part", ["traits", "identities", "events", "consent", "segments"])
def test_a_profile_part_with_a_trailing_slash_leads_to_that_part(client: TestClient, portrait: Portrait,
                                                                 user_id: str, part: str) -> None:
    """``/api/profiles/user_id:42/events/`` was read as the profile of the identifier ``42/events/`` (404 "no
    profile has the identity user_id:42/events/"); it is redirected to the events, as ``/api/status/`` is."""
    from portrait.client import profile_path
    assert post(client, "/v1/batch", {"batch": [track(userId=user_id)]}).status_code == 200
    portrait.process_pending()
    path = profile_path(f"user_id:{user_id}", part)
    redirect = client.get(f"{path}/", headers=ADMIN, follow_redirects=False)
    assert redirect.status_code == 307
    assert client.get(redirect.headers["location"], headers=ADMIN).json() == client.get(path, headers=ADMIN).json()


@pytest.mark.parametrize(("path", "status", "code"), [
    ("/api/profiles/email:nobody@example.com", 404, "not_found"),
    ("/api/profiles/no-colon", 400, "invalid_identity"),
    ("/api/profiles/user_id:42/events?limit=0", 400, "invalid_request"),
    ("/api/profiles/user_id:42/events?cursor=garbage", 404, "not_found"),
])
def test_read_errors_are_json(client: TestClient, path: str, status: int, code: str) -> None:
    response = client.get(path, headers=ADMIN)
    assert response.status_code == status
    assert response.json()["code"] == code


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/v1/batch", 405, "method_not_allowed"),
    ("PUT", "/v1/track", 405, "method_not_allowed"),
    ("GET", "/v2/batch", 404, "not_found"),
])
def test_framework_errors_have_the_error_shape_too(client: TestClient, method: str, path: str, status: int,
                                                   code: str) -> None:
    answer = client.request(method, path)
    assert answer.status_code == status and answer.json()["code"] == code and answer.json()["message"]


@pytest.mark.parametrize(("method", "path", "says"), [
    # An SDK given the server's address with /v1 (host="http://127.0.0.1:8000/v1") posts to /v1/v1/batch.
    ("POST", "/v1/v1/batch", "no endpoint POST /v1/v1/batch: an SDK's host is the server's address alone, without "
                             "/v1 (here http://testserver)"),
    ("POST", "/batch", "no endpoint POST /batch: ingestion is under /v1 (/v1/batch, /v1/track...), the API under "
                       "/api; /docs lists every endpoint"),
    ("GET", "/api/profile/user_id:42", "no endpoint GET /api/profile/user_id:42: ingestion is under /v1"),
    ("GET", "/v1/batch", "GET is not allowed on /v1/batch; it takes OPTIONS, POST"),  # OPTIONS: CORS
    ("POST", "/api/status", "POST is not allowed on /api/status; it takes GET"),
])
def test_a_wrong_path_or_method_says_where_to_go(client: TestClient, method: str, path: str, says: str) -> None:
    """The framework's bare `Not Found` / `Method Not Allowed` left a new user (or an SDK's log) with nothing to go
    on."""
    answer = client.request(method, path, headers=ADMIN)
    assert answer.status_code in (404, 405)
    assert says in answer.json()["message"], answer.json()


@pytest.mark.parametrize(("path", "takes"), [("/api/segments", "GET, POST"),
                                           ("/api/segments/Poles", "DELETE, GET, PATCH"),
                                           ("/v1/batch", "OPTIONS, POST")])
def test_a_method_not_allowed_names_every_method_the_path_takes(client: TestClient, path: str, takes: str) -> None:
    """The framework's Allow header names the methods of the first route on the path only: `PUT /api/segments`
    was told `it takes GET` although POST creates a segment there."""
    answer = client.request("PUT", path, headers=ADMIN)
    assert answer.status_code == 405
    assert answer.headers["Allow"] == takes
    assert answer.json()["message"] == f"PUT is not allowed on {path}; it takes {takes}"


def test_bad_cursor_is_400(client: TestClient, portrait: Portrait) -> None:
    post(client, "/v1/batch", {"batch": [track(userId="7")]})
    portrait.process_pending()
    response = client.get("/api/profiles/user_id:7/events", headers=ADMIN, params={"cursor": "garbage"})
    assert response.status_code == 400 and response.json()["code"] == "invalid_cursor"


def test_status_reports_lag_until_processed(client: TestClient, portrait: Portrait) -> None:
    post(client, "/v1/batch", {"batch": [track(messageId=f"m{i}") for i in range(3)]})
    status = client.get("/api/status", headers=ADMIN).json()
    assert (status["events_received"], status["events_processed"], status["lag"]) == (3, 0, 3)
    assert status["lag_seconds"] >= 0 and status["last_batch_events"] == 0
    portrait.process_pending()
    status = client.get("/api/status", headers=ADMIN).json()
    assert (status["events_received"], status["events_processed"], status["lag"]) == (3, 3, 0)
    assert status["lag_seconds"] == 0 and status["last_batch_events"] == 3 and status["last_batch_seconds"] > 0


def test_status_reports_memory_and_the_database_keeps_to_its_limit(settings: Settings) -> None:
    service = Portrait(dataclasses.replace(settings, memory_limit_mb=100), background=False)
    try:
        service.ingest_messages([{"type": "identify", "userId": f"u{i}", "traits": {"email": f"u{i}@example.com"}}
                                 for i in range(50)])
        service.process_pending()
        memory = service.status()["memory"]
    finally:
        service.close()
    assert memory["database_limit"] == "95.3 MiB"  # DuckDB writes 100 MB (10^8 bytes) in its own unit
    assert 0 < memory["database_mb"] < 100 < memory["process_mb"]  # the process holds Python besides DuckDB


def test_a_negative_memory_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="memory_limit_mb must be 0"):
        load_settings({"PORTRAIT_MEMORY_LIMIT_MB": "-1"})


def test_openapi_document_lists_the_api(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/batch" in paths and "/api/profiles/{identity}" in paths and "/api/status" in paths


def test_unexpected_failure_is_a_json_500_safe_to_retry(portrait: Portrait, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(portrait, "status", broken)
    with TestClient(create_app(portrait=portrait), raise_server_exceptions=False) as test_client:
        response = test_client.get("/api/status", headers=ADMIN)
    assert response.status_code == 500
    assert response.json()["code"] == "internal_error" and "retry" in response.json()["message"]
    assert "disk on fire" not in response.text


def test_after_an_unexpected_500_the_connection_serves_the_next_request(portrait: Portrait,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Under uvicorn, as served: Starlette's handler for Exception raised again after answering, and uvicorn reset the
    keep-alive connection, so the client's next request on it failed as well."""
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(portrait, "recount_segment", broken)
    listening = socket.socket()  # bound here, on a port the system picks: one found free could be taken meanwhile
    listening.bind(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(portrait=portrait), host="127.0.0.1", port=port,
                                           log_level="critical"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30  # seconds on a loaded 2-core box, where 5 s was a tight guess
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            def ask(method: str, path: str) -> bytes:
                connection.sendall(f"{method} {path} HTTP/1.1\r\nHost: portrait\r\nAuthorization: "
                                   f"{ADMIN['Authorization']}\r\nContent-Length: 0\r\n\r\n".encode())
                return _whole_answer(connection)

            assert ask("POST", "/api/segments/1/recount").startswith(b"HTTP/1.1 500")
            assert ask("GET", "/api/status").startswith(b"HTTP/1.1 200")  # on the same connection
    finally:
        server.should_exit = True
        thread.join(10)
        listening.close()


def _whole_answer(connection: socket.socket) -> bytes:
    """One HTTP answer read to the end of its body (Content-Length), however slowly it comes: read after a fixed
    pause, a late body was taken for the next answer. A connection the server closed ends it short (b"")."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        if not (chunk := connection.recv(65536)):
            return answer
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    assert length is not None, head
    while len(body) < int(length.group(1)) and (chunk := connection.recv(65536)):
        body += chunk
    return head + b"\r\n\r\n" + body


def test_import_upload_maps_rows_and_reports(client: TestClient, portrait: Portrait) -> None:
    body = b"cust,day,total\n007,20190105,10.5\n,20190106,3\n"
    response = client.post("/api/imports", headers=ADMIN, content=body, params={
        "filename": "orders.csv", "event": "Order Completed", "user_id": "cust", "timestamp": "day",
        "timestamp_format": "%Y%m%d"})
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["rows"], report["stored"], report["rejected"]) == (2, 1, 1)
    assert report["first_rejected"][0]["row"] == 2 and report["first_rejected"][0]["code"] == "missing_identity"
    portrait.process_pending()
    assert portrait.events("user_id:007")["events"][0]["properties"] == {"total": 10.5}


@pytest.mark.parametrize(("params", "code"), [
    ({"filename": "x.csv"}, "invalid_mapping"),
    ({"filename": "x.xlsx"}, "invalid_format"),
    ({"filename": "x.csv", "kind": "payments"}, "invalid_request"),
])
def test_import_upload_errors(client: TestClient, params: dict[str, str], code: str) -> None:
    response = client.post("/api/imports", headers=ADMIN, content=b"a,b\n1,2\n", params=params)
    assert response.status_code == 400 and response.json()["code"] == code


def test_rejected_events_paginate_newest_first(client: TestClient) -> None:
    post(client, "/v1/batch", {"batch": [{"type": "track", "userId": "u", "messageId": f"r{i}"} for i in range(3)]})
    first = client.get("/api/events/rejected", headers=ADMIN, params={"limit": 2}).json()
    assert [r["message_id"] for r in first["rejected"]] == ["r2", "r1"] and first["next"] is not None
    rest = client.get("/api/events/rejected", headers=ADMIN, params={"limit": 2, "before": first["next"]}).json()
    assert [r["message_id"] for r in rest["rejected"]] == ["r0"] and rest["next"] is None


@pytest.mark.parametrize("case", ["ok", "bad_json", "no_key", "gzip_garbage"])
def test_fast_path_answers_exactly_like_the_framework_route(portrait: Portrait, case: str) -> None:
    """The ingestion fast path and the FastAPI route (which documents it) share one answer, headers included."""
    app = create_app(portrait=portrait)
    bodies = {"ok": (orjson.dumps({"batch": [track(messageId="same")], "writeKey": WRITE_KEY}), {}),
              "bad_json": (b"{not json", {"Authorization": BASIC}),
              "no_key": (orjson.dumps({"batch": [track()]}), {}),
              "gzip_garbage": (b"not gzip", {"Authorization": BASIC, "Content-Encoding": "gzip"})}
    body, headers = bodies[case]
    headers = {**headers, "Origin": "https://shop.example.com", "Content-Type": "text/plain"}
    answers = []
    for target in (app, app.app):  # the wrapper (fast path), then FastAPI alone (route + middleware)
        with TestClient(target) as client:
            answers.append(client.post("/v1/batch", content=body, headers=headers))
    fast, framework = answers
    assert fast.status_code == framework.status_code == {"ok": 200, "no_key": 401}.get(case, 400)
    assert fast.content == framework.content
    assert set(framework.headers) - {"date", "server"} <= set(fast.headers)
    for name in ("content-type", "x-content-type-options", "content-security-policy", "cache-control",
                 "access-control-allow-origin", "www-authenticate"):
        assert fast.headers.get(name) == framework.headers.get(name), name
    assert fast.headers["access-control-allow-origin"] == "https://shop.example.com"


def test_a_client_that_disconnects_mid_body_gets_nothing_stored(portrait: Portrait) -> None:
    import asyncio

    app = create_app(portrait=portrait)
    messages = [{"type": "http.request", "body": b'{"batch": [', "more_body": True}, {"type": "http.disconnect"}]
    sent: list[Any] = []

    async def receive() -> Any:
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/batch", "query_string": b"",
             "headers": [(b"authorization", BASIC.encode())], "client": ("127.0.0.1", 5000)}
    asyncio.run(app(scope, receive, send))
    assert sent == []
    status = portrait.status()
    assert status["events_received"] == 0 and status["events_rejected"] == 0


@pytest.mark.parametrize("label", [None, "application/x-www-form-urlencoded", "text/plain; charset=utf-8"])
def test_api_bodies_are_read_as_json_whatever_their_label(client: TestClient, portrait: Portrait,
                                                          label: str | None) -> None:
    """curl -d labels a body as a form; the API reads it as JSON, as ingestion does."""
    post(client, "/v1/identify", {"userId": "u-1", "traits": {"email": "ann@example.com"}})
    portrait.process_pending()
    headers = {**ADMIN, **({"Content-Type": label} if label else {})}
    consent = client.post("/api/profiles/user_id:u-1/consent", content=b'{"email": "granted"}', headers=headers)
    assert consent.status_code == 200, consent.text
    assert consent.json()["recorded"] == {"email": {"status": "granted"}}
    preview = client.post("/api/segments/preview", content=b'{"condition": "email is set"}', headers=headers)
    assert preview.status_code == 200 and preview.json()["count"] == 1, preview.text
    broken = client.post("/api/segments/preview", content=b"condition=email", headers=headers)
    assert broken.status_code == 400 and broken.json()["code"] == "invalid_request"


def test_a_profile_not_built_yet_is_a_404_that_says_events_are_still_being_processed(
        client: TestClient, portrait: Portrait) -> None:
    """The README sends events and looks the customer up at once: the 200 means stored, the profile follows a
    moment later. A 404 in that moment says so, rather than that no such customer exists."""
    post(client, "/v1/identify", {"userId": "42", "traits": {"email": "ann@example.com"}})
    early = client.get("/api/profiles/email:ann@example.com", headers=ADMIN)
    assert early.status_code == 404
    assert early.json()["message"] == ("no profile has the identity email:ann@example.com yet: 1 event received is "
                                       "still being processed (GET /api/status: lag); try again in a moment")
    portrait.process_pending()
    assert client.get("/api/profiles/email:ann@example.com", headers=ADMIN).status_code == 200
    unknown = client.get("/api/profiles/email:bob@example.com", headers=ADMIN)  # nothing pending: plainly unknown
    assert unknown.json()["message"] == "no profile has the identity email:bob@example.com"
