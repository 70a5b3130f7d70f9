"""Hostile input on the ingestion endpoints: whatever arrives with a valid key, the answer is 200 or 400."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import WRITE_KEY

from portrait.api import create_app
from portrait.service import Portrait

SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                         max_size=5), max_leaves=20)
FIELD_VALUES = JSON | st.sampled_from(["identify", "track", "page", "alias", "", "2026-01-01T00:00:00Z",
                                       "0001-01-01T00:00:00+14:00", "\x00", "null"])
MESSAGE = st.dictionaries(st.sampled_from(["type", "userId", "anonymousId", "event", "name", "traits", "properties",
                                           "context", "timestamp", "sentAt", "messageId", "previousId", "groupId"]),
                          FIELD_VALUES, max_size=8)
BODIES = st.one_of(
    st.binary(max_size=200),
    JSON.map(orjson.dumps),
    st.fixed_dictionaries({"batch": st.lists(MESSAGE | JSON, max_size=10)},
                          optional={"sentAt": FIELD_VALUES, "context": JSON}).map(orjson.dumps),
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from portrait.config import Settings

    path = tmp_path_factory.mktemp("fuzz") / "fuzz.duckdb"
    service = Portrait(Settings(db_path=str(path), write_key=WRITE_KEY), background=False)
    with TestClient(create_app(portrait=service)) as test_client:
        yield test_client
    service.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES, endpoint=st.sampled_from(["batch", "track", "identify", "a", "p"]), gzipped=st.booleans())
def test_ingestion_never_fails_with_a_server_error(client: TestClient, body: bytes, endpoint: str,
                                                   gzipped: bool) -> None:
    headers: dict[str, Any] = {"Content-Type": "text/plain"}
    if gzipped:
        body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
    response = client.post(f"/v1/{endpoint}", content=body, params={"writeKey": WRITE_KEY}, headers=headers)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert set(response.json()) == {"code", "message"}
    assert client.get("/healthz").status_code == 200
