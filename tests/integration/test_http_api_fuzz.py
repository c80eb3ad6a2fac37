"""Schemathesis over the published OpenAPI schema: whatever a client sends, the server never fails
(no 5xx) and every answer is a documented status with a declared content type."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

from functions.http.app import create_app
from tests.conftest import API_KEYS

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 30


def test_no_request_makes_the_server_fail(api_deps):
    app = create_app(api_deps)
    # The live event stream runs until its scene settles; test_http_api covers it.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app).exclude(path_regex=r"/events$")
    failures, tested = [], []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            response = case.call(headers={"X-API-Key": API_KEYS["admin"]})
            case.validate_response(response, checks=[not_a_server_error, status_code_conformance,
                                                     content_type_conformance])

        try:
            check()
        except Exception as exc:  # noqa: BLE001 - every operation is tried; all failures are reported
            failures.append(f"{operation.label}: {exc}")
        tested.append(operation.label)
    assert len(tested) >= 15, tested
    assert not failures, "\n\n".join(failures)
