"""The API described (docs/openapi.yaml), and a live server driven with requests generated from it.

Schemathesis turns each operation of the description into Hypothesis strategies: valid requests
(positive) and requests that break the description on purpose (negative: wrong types, missing
fields, out-of-range numbers, odd strings). Every answer must be a documented status with a body
that matches its schema, and never a 5xx other than a documented 503; invalid requests must be
refused with a 4xx. The requests go to a real daphne, logged in as a real user with a CSRF pair,
so they reach every layer.
"""

from __future__ import annotations

import uuid

import pytest
import requests
import schemathesis
from django.conf import settings as django_settings
from hypothesis import HealthCheck, given, seed
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import session_cookie

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

SPEC = django_settings.BASE_DIR / "docs" / "openapi.yaml"
# Examples per operation and mode (fewer where the inputs allow fewer): about a minute in CI.
EXAMPLES = 75
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
schema = schemathesis.openapi.from_path(SPEC)
OPERATIONS = [result.ok() for result in schema.get_all_operations()]
sent = {"requests": 0}


def test_the_description_is_served_as_it_is_in_docs(client):
    response = client.get("/api/schema")
    assert response.status_code == 200 and response["Content-Type"].startswith("application/yaml")
    assert response.content.decode() == SPEC.read_text()


CSRF_TOKEN = "t" * 32


@pytest.fixture
def browser_cookies(live_app, django_db_blocker) -> dict[str, str]:
    """A logged-in browser's cookies: the session and the CSRF token (sent in the header too).

    A new user per test: a generated logout ends its session, and the throttles count per user.
    """
    from django.contrib.auth import get_user_model

    with django_db_blocker.unblock():
        user = get_user_model().objects.create_user(
            username=f"fuzz{uuid.uuid4().hex[:8]}", password="a-long-test-password"
        )
        get_user_model().objects.get_or_create(username="fuzz_target")  # someone to follow
        session_id = session_cookie(user).split("=", 1)[1]
    return {"sessionid": session_id, "csrftoken": CSRF_TOKEN}


def _has_inputs(operation) -> bool:
    """Whether a request to it can break the description (a cookie given by the test aside)."""
    return bool(operation.body) or any(p.location != "cookie" for p in operation.iter_parameters())


CASES = [
    pytest.param(op, mode, id=f"{op.method.upper()} {op.path} {mode.value}")
    for op in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode == GenerationMode.POSITIVE or _has_inputs(op)
]


@pytest.mark.parametrize("operation, mode", CASES)
def test_generated_requests_get_documented_answers_and_never_a_server_error(live_app, browser_cookies, operation, mode):
    checks = [*CHECKS, negative_data_rejection] if mode == GenerationMode.NEGATIVE else CHECKS
    session = requests.Session()
    session.headers["X-CSRFToken"] = CSRF_TOKEN

    @seed(20261128)  # the same requests on every run, so a failure can be replayed
    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode, cookies=browser_cookies))
    def run(case) -> None:
        sent["requests"] += 1
        case.call_and_validate(base_url=live_app.url, session=session, checks=checks)

    run()
    print(f"{operation.method.upper()} {operation.path} ({mode.value}): {sent['requests']} requests so far")
