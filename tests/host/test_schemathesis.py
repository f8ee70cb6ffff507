"""Property-based requests from the OpenAPI spec: nothing a client sends yields a 500.

Bounded to a few examples per operation (a few hundred in all) so it runs in seconds.
An enclave that fails answers 502 (the upstream failed), which is allowed; an internal
error of the service itself (500) never is.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import response_schema_conformance

from chiron.host.accounts import create_account
from chiron.host.api import create_app
from chiron.host.config import ServiceConfig
from chiron.host.service import Service


@pytest.fixture(scope="module")
def fuzzed_service(tmp_path_factory) -> Iterator[tuple[Service, str]]:
    service = Service.open(ServiceConfig(state_dir=tmp_path_factory.mktemp("fuzz") / "service"))
    token = create_account(service.db, service.pepper, name="fuzz", role="owner")
    try:
        yield service, token
    finally:
        service.close()


def no_internal_error(ctx, response, case) -> None:
    """The service's own faults are 500; everything else must be a deliberate answer."""
    if response.status_code == 500:
        raise AssertionError(f"{case.method} {case.path} answered 500")
    if response.status_code >= 400:
        body = response.json()
        assert body["message"] and "\n" not in body["message"]


def test_api_never_fails_internally(fuzzed_service):
    service, token = fuzzed_service
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(service))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20

    for operation in operations:
        # Valid requests and deliberately invalid ones (wrong types, missing fields...).
        cases = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(
            GenerationMode.NEGATIVE
        )

        @given(case=cases)
        @settings(
            max_examples=10,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {token}"},
                checks=[no_internal_error, response_schema_conformance],
            )

        check()


def test_openapi_is_served(fuzzed_service):
    service, _ = fuzzed_service
    with TestClient(create_app(service)) as http:
        spec = http.get("/openapi.json").json()
    assert "/v1/uploads/{upload_id}/chunks" in spec["paths"]
    assert "/v1/attestation/evidence" in spec["paths"]
