"""Schemathesis over every operation of the OpenAPI document, in-process against the WSGI app.

Each operation gets schema-valid and schema-invalid requests, once as a service account's
bearer token and once as a console session (cookie and CSRF token). A run fails on a server
error, a status, content type or body the document does not describe, an error that is not
problem+json, and another organization's object answering anything but what a missing one
would. Every request runs in a savepoint rolled back after it, so each one meets the same
rows and the run is repeatable; examples are derandomized for the same reason.
"""

import json
import time
from collections import Counter
from contextlib import contextmanager

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, transaction
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from keys import services as key_services
from portal import services as portal_services
from portal.api.throttling import CredentialRateThrottle
from portal.audit import Actor
from portal.models import AuditEvent
from portal.roles import Role
from tests.api.support import PROBLEM_CONTENT_TYPE, service_token

# The billing operations talk to Stripe: the session's localstripe.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stripe_settings")]

EXAMPLES_PER_OPERATION = 12  # for each generation mode and each credential
# For each credential; past it (a loaded machine), each remaining operation gets one example.
BUDGET_SECONDS = 30
CSRF_TOKEN = "fuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzz"


def problem_details(ctx, response, case):
    """An error answer is RFC 9457 problem+json whose ``status`` is the HTTP status."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type == PROBLEM_CONTENT_TYPE, (
        f"{response.status_code} answered as {content_type!r}: {response.content[:200]!r}"
    )
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} body is not JSON: {response.content[:200]!r}") from None
    assert {"type", "title", "status", "detail"} <= set(body), body
    assert body["status"] == response.status_code, body
    return None


def _aims_at(case, objects: dict) -> bool:
    return any(case.path_parameters.get(name) == value for name, value in objects.items())


def not_another_tenants(strangers: dict):
    def not_another_tenants_object(ctx, response, case):
        """Another organization's object answers like a missing one: never a success, never 409."""
        if _aims_at(case, strangers):
            assert response.status_code >= 400 and response.status_code != 409, (
                f"{case.method} {case.formatted_path} reached another organization's object: "
                f"{response.status_code} {response.content[:200]!r}"
            )
        return None

    return not_another_tenants_object


@contextmanager
def connection_kept_open():
    """Keep the test's transaction open across a request, as Django's test client does."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def unthrottled(settings, monkeypatch):
    rates = {"credential": "1000000/min"}
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    # DRF reads the rates once, into a class attribute.
    monkeypatch.setattr(CredentialRateThrottle, "THROTTLE_RATES", rates)


@pytest.fixture
def schema(unthrottled):
    with connection_kept_open():
        return schemathesis.openapi.from_wsgi("/api/schema/?format=json", WSGIHandler())


def _objects(world, organization, owner) -> dict:
    """Give each path parameter an object of ``organization``, so operations also succeed."""
    key, _plaintext = key_services.api_key_create(
        actor=Actor(user=owner), organization=organization, name="ci"
    )
    invitation, _token = portal_services.invitation_create(
        actor=Actor(user=owner), organization=organization, email="pending@example.com", role=Role.VIEWER
    )
    target = world.target if organization == world.org else world.other_target
    return {"key_id": key.public_id, "invitation_id": invitation.pk, "member_id": target.pk}


@pytest.fixture
def objects(world) -> dict:
    """The organization's own objects and another organization's, by path parameter."""
    own = _objects(world, world.org, world.users[Role.OWNER])
    # An invitation a service account sent has no inviting user.
    portal_services.invitation_create(
        actor=Actor(user=None, type=AuditEvent.ActorType.SERVICE, name="deployer"),
        organization=world.org,
        email="from-automation@example.com",
        role=Role.DEVELOPER,
    )
    other = _objects(world, world.other, world.other_owner)
    return {"own": own, "other": other}


class Run:
    """What one credential's run sent and got back."""

    def __init__(self, label: str):
        self.label = label
        self.operations = 0
        self.shortened = 0  # operations run with a single example, past the budget
        self.requests = 0
        self.foreign = 0  # requests aimed at another organization's objects
        self.statuses: Counter = Counter()
        self.failures: list[str] = []

    def summary(self) -> str:
        classes = ", ".join(f"{status}xx: {n}" for status, n in sorted(self.statuses.items()))
        return (
            f"schemathesis ({self.label}): {self.operations} operations ({self.shortened} past the time "
            f"budget), {self.requests} requests ({self.foreign} at another organization's objects); "
            f"{classes}; {len(self.failures)} failing operations"
        )


def _strategy(operation, mode, objects):
    names = {parameter.name for parameter in operation.path_parameters}
    strategies = [operation.as_strategy(generation_mode=mode)]
    for side in ("own", "other"):
        fixed = {name: value for name, value in objects[side].items() if name in names}
        if fixed:
            strategies.append(operation.as_strategy(generation_mode=mode, path_parameters=fixed))
    return st.one_of(strategies)


def fuzz(schema, *, label: str, headers: dict, cookies: dict, objects: dict) -> Run:
    """Send every operation its examples with the credential; collect statuses and failures."""
    run = Run(label)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        problem_details,
        not_another_tenants(objects["other"]),
    ]
    deadline = time.monotonic() + BUDGET_SECONDS
    for result in schema.get_all_operations():
        operation = result.ok()
        run.operations += 1
        examples = EXAMPLES_PER_OPERATION if time.monotonic() < deadline else 1
        run.shortened += examples == 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=examples,
                derandomize=True,
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=_strategy(operation, mode, objects))
            def send(case):
                with transaction.atomic(), connection_kept_open():
                    response = case.call(headers=headers, cookies=cookies)
                    transaction.set_rollback(True)
                run.requests += 1
                run.foreign += _aims_at(case, objects["other"])
                run.statuses[response.status_code // 100] += 1
                case.validate_response(response, checks=checks, headers=headers)

            try:
                send()
            except Unsatisfiable:
                # Nothing about this operation can be sent invalid (only free-form strings).
                assert mode == GenerationMode.NEGATIVE, operation.label
            except FailureGroup as failure:
                run.failures.append(f"{operation.label} ({mode.value}):\n{failure}")
    return run


def _assert_clean(run: Run, schema, record_property) -> None:
    record_property("summary", run.summary())
    documented = sum(len(operations) for operations in schema.raw_schema["paths"].values())
    assert run.operations == documented > 0
    assert run.statuses[2] > 0 and run.statuses[4] > 0 and run.foreign > 0, run.summary()
    assert run.failures == [], "\n\n".join(run.failures)


def test_every_operation_with_a_service_account_token(world, schema, objects, record_property):
    token = service_token(world.org, world.users[Role.OWNER], role=Role.ADMIN)
    run = fuzz(
        schema,
        label="service account",
        headers={"Authorization": f"Bearer {token}"},
        cookies={},
        objects=objects,
    )
    _assert_clean(run, schema, record_property)


def test_every_operation_with_a_console_session(world, schema, objects, record_property, client):
    client.force_login(world.users[Role.OWNER])
    run = fuzz(
        schema,
        label="console session",
        headers={"X-CSRFToken": CSRF_TOKEN},
        cookies={"sessionid": client.cookies["sessionid"].value, "csrftoken": CSRF_TOKEN},
        objects=objects,
    )
    _assert_clean(run, schema, record_property)
