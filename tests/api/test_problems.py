"""Every error under /api/ is problem+json, whichever layer refuses the request."""

import csv
import io

import pytest
from django.test import Client

from portal import selectors
from portal.models import Invitation
from portal.roles import Role
from tests.api.support import (
    assert_matches_schema,
    assert_problem,
    call,
    invitation_json,
    openapi_schema,
    service_token,
    session_client,
)

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/members/abc",
        "/api/v1/members/-1",
        "/api/v1/invitations/-5/revoke",
        "/api/v1/invitations/1.5/revoke",
        "/api/v1/keys/",
        "/api/v1/no-such-thing",
        "/api/v2/organization",
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_a_path_no_route_matches_answers_a_404_problem(world, path, method):
    client = session_client(world.users[Role.OWNER], enforce_csrf_checks=True)
    assert_problem(call(client, method, path), 404, "not_found", "Not found.")


def test_an_anonymous_request_to_no_route_answers_the_same_problem():
    assert_problem(call(Client(), "GET", "/api/v1/members/abc"), 404, "not_found", "Not found.")


def test_an_unknown_route_outside_the_api_keeps_the_html_page(world):
    response = session_client(world.users[Role.OWNER]).get("/no-such-page/")
    assert response.status_code == 404
    assert response["Content-Type"] == "text/html; charset=utf-8"


def test_a_host_not_allowed_answers_a_400_problem():
    response = Client(HTTP_HOST="evil.example").get("/api/v1/keys")
    assert_problem(response, 400, "bad_request", "Bad request.")


def test_csv_usage_with_an_invalid_parameter_answers_a_json_problem(world):
    client = session_client(world.users[Role.OWNER])
    response = client.get("/api/v1/usage", {"format": "csv", "group_by": "bogus"})
    assert_problem(
        response,
        400,
        "validation_error",
        "The request has invalid fields.",
        {"group_by": ["Unknown groups: bogus. Use model and/or key."]},
    )


def test_csv_usage_asked_by_accept_header_answers_csv_and_its_errors_json(world):
    client = session_client(world.users[Role.OWNER])
    response = client.get("/api/v1/usage", {"granularity": "day"}, headers={"Accept": "text/csv"})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv"
    header, *rows = csv.reader(io.StringIO(response.content.decode()))
    assert header == [
        "period",
        "requests",
        "errors",
        "refusals",
        "input_tokens",
        "output_tokens",
        "cached_tokens",
        "estimated_requests",
        "cost_minor",
        "currency",
    ]
    assert rows == []
    refused = client.get("/api/v1/usage", {"granularity": "week"}, headers={"Accept": "text/csv"})
    assert_problem(
        refused,
        400,
        "validation_error",
        "The request has invalid fields.",
        {"granularity": ['"week" is not a valid choice.']},
    )


def test_accept_naming_only_csv_on_a_json_operation_answers_406_problem(world):
    client = session_client(world.users[Role.OWNER])
    response = client.get("/api/v1/keys", headers={"Accept": "text/csv"})
    assert_problem(response, 406, "not_acceptable", "Could not satisfy the request Accept header.")


def test_an_undocumented_method_answers_405_problem_with_allow(world):
    client = session_client(world.users[Role.OWNER])
    response = call(client, "DELETE", "/api/v1/keys")
    assert_problem(response, 405, "method_not_allowed", 'Method "DELETE" not allowed.')
    assert response["Allow"] == "GET, POST, HEAD, OPTIONS"


def test_a_body_that_is_not_json_answers_415_problem(world):
    client = session_client(world.users[Role.OWNER])
    response = client.post("/api/v1/keys", "name=ci", content_type="text/plain")
    assert_problem(response, 415, "unsupported_media_type", 'Unsupported media type "text/plain" in request.')


def test_a_server_error_answers_500_problem_without_details(world, monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("database password is hunter2")

    monkeypatch.setattr(selectors, "members_list", broken)
    client = session_client(world.users[Role.OWNER])
    client.raise_request_exception = False
    response = client.get("/api/v1/members")
    assert_problem(response, 500, "internal_server_error", "Internal server error.")


def test_an_invitation_a_service_account_sent_has_a_null_inviter_the_schema_allows(world):
    token = service_token(world.org, world.users[Role.OWNER], role=Role.ADMIN)
    headers = {"Authorization": f"Bearer {token}"}
    response = call(
        Client(),
        "POST",
        "/api/v1/invitations",
        {"email": "new@acme.example", "role": "viewer"},
        headers=headers,
    )
    assert response.status_code == 201, response.content
    invitation = Invitation.objects.for_organization(world.org).get(email="new@acme.example")
    assert invitation.invited_by is None
    assert response.json() == invitation_json(invitation)
    assert response.json()["invited_by"] is None
    schema = openapi_schema()
    assert_matches_schema(schema, "/api/v1/invitations", "POST", response)
    listed = call(Client(), "GET", "/api/v1/invitations", headers=headers)
    assert listed.json()["results"] == [invitation_json(invitation)]
    assert_matches_schema(schema, "/api/v1/invitations", "GET", listed)
