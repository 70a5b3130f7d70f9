"""The whole HTTP API fuzzed from its own OpenAPI document (schemathesis): whatever a client sends -- in the schema
or just outside it -- the answer is never a 500, its status and body are ones the document declares (so a client
generated from it can read every answer), and the server keeps serving."""

from __future__ import annotations

import base64
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from tests.conftest import ADMIN_KEY, WRITE_KEY

from portrait.api import create_app
from portrait.config import Settings
from portrait.service import Portrait

_folder = Path(tempfile.mkdtemp(prefix="portrait-schema-fuzz-"))
_service = Portrait(Settings(db_path=str(_folder / "fuzz.duckdb"), write_key=WRITE_KEY, admin_key=ADMIN_KEY,
                             rate_limit=0), background=False)
_service.ingest_messages([{"type": "identify", "userId": "42", "traits": {"email": "ann@example.com"}},
                         {"type": "identify", "userId": "43", "traits": {"age": "old"}},  # a data-quality issue
                         {"type": "track", "userId": "42", "event": "Viewed"}, {"type": "track", "userId": "42"}])
_service.process_pending()
_service.create_segment({"name": "everyone", "condition": 'performed("Viewed")'})
_service.privacy_request({"type": "access", "identity": "user_id:42"}, "test")
app = create_app(portrait=_service)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
WRITER = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}


@pytest.fixture(scope="module", autouse=True)
def _close_service() -> Iterator[None]:
    yield
    _service.close()
    shutil.rmtree(_folder, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case: schemathesis.Case) -> None:
    response = case.call(headers=WRITER if case.path.startswith("/v1") else ADMIN)
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:500])
    # Every status the server answers is declared, with the body schema it really has: FastAPI's default 422
    # {"detail": [...]} was declared everywhere while bad input got 400 {"code", "message"}.
    case.validate_response(response, checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                             response_schema_conformance])


def test_the_document_declares_the_api_s_own_errors_and_no_framework_ones() -> None:
    document = schema.raw_schema  # as /openapi.json served it
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, (method, path)
            assert responses["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
            assert not any(p["name"].startswith("_") for p in operation.get("parameters", [])), (method, path)
    assert document["components"]["schemas"]["Error"]["required"] == ["code", "message"]
    assert "401" in document["paths"]["/api/status"]["get"]["responses"]
    assert "404" in document["paths"]["/api/profiles/{identity}"]["get"]["responses"]


def test_the_server_still_answers_after_the_fuzzing() -> None:
    status = _service.status()
    assert status["profiles"] >= 1 and status["lag"] >= 0


# Every paged list, with a page holding items (GET, path, query): checked against the shape the document declares.
PAGES = [("/api/profiles/{identity}/events", {"identity": "user_id:42"}), ("/api/events/rejected", {}),
         ("/api/events/recent", {}), ("/api/data-quality", {}), ("/api/segments/{segment}/members",
                                                                 {"segment": "everyone"}),
         ("/api/segments/{segment}/history", {"segment": "everyone"}), ("/api/audit", {}),
         ("/api/privacy/requests", {})]


@pytest.mark.parametrize(("path", "path_parameters"), PAGES)
def test_each_page_has_the_shape_the_document_declares(path: str, path_parameters: dict[str, str]) -> None:
    case = schema[path]["GET"].Case(path_parameters=path_parameters, query={"limit": 1})
    response = case.call(headers=ADMIN)
    assert response.status_code == 200, response.text
    body = response.json()
    assert "next" in body and any(isinstance(v, list) and v for v in body.values()), body  # a page with an item
    declared = schema.raw_schema["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert "$ref" in declared, f"{path} declares no shape for its pages"
    case.validate_response(response, checks=[response_schema_conformance])
