"""Query filters of the key list and the audit log."""

from datetime import timedelta

import pytest
from django.utils import timezone

from keys import services as key_services
from keys.models import ApiKey
from portal.audit import Actor
from portal.roles import Role
from tests.api.support import assert_problem, call, session_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def keys(world):
    actor = Actor(user=world.users[Role.OWNER])

    def create(name, **fields):
        key, _ = key_services.api_key_create(actor=actor, organization=world.org, name=name, **fields)
        return key

    made = {
        "alpha": create("Alpha production"),
        "beta": create("Beta sandbox", environment="test"),
        "gamma": create("Gamma retired"),
        "delta": create("Delta temporary", expires_at=timezone.now() + timedelta(days=1)),
    }
    key_services.api_key_revoke(actor=actor, key=made["gamma"])
    # Let the expiry pass without waiting for it.
    ApiKey.objects.for_organization(world.org).filter(pk=made["delta"].pk).update(
        expires_at=timezone.now() - timedelta(minutes=1)
    )
    key_services.api_key_create(actor=Actor(user=world.other_owner), organization=world.other, name="Alpha")
    return made


def _names(world, **query) -> list[str]:
    response = call(session_client(world.users[Role.VIEWER]), "GET", "/api/v1/keys", query=query)
    assert response.status_code == 200, response.content
    return sorted(item["name"] for item in response.json()["results"])


def test_keys_filter_by_status(world, keys):
    assert _names(world, status="active") == ["Alpha production", "Beta sandbox"]
    assert _names(world, status="revoked") == ["Gamma retired"]
    assert _names(world, status="expired") == ["Delta temporary"]
    assert _names(world) == ["Alpha production", "Beta sandbox", "Delta temporary", "Gamma retired"]


def test_keys_filter_by_environment_and_name(world, keys):
    assert _names(world, environment="test") == ["Beta sandbox"]
    assert _names(world, environment="live") == ["Alpha production", "Delta temporary", "Gamma retired"]
    assert _names(world, name="ALPHA") == ["Alpha production"]
    assert _names(world, name="t", environment="live", status="active") == ["Alpha production"]
    assert _names(world, name="no such key") == []


def test_the_listed_status_matches_the_filter(world, keys):
    client = session_client(world.users[Role.VIEWER])
    for status in ("active", "revoked", "expired"):
        results = call(client, "GET", "/api/v1/keys", query={"status": status}).json()["results"]
        assert {item["status"] for item in results} == {status}


def test_audit_events_filter_by_action_prefix(world, keys):
    client = session_client(world.users[Role.VIEWER])
    response = call(client, "GET", "/api/v1/audit-events", query={"action": "key."})
    assert response.status_code == 200
    assert [(e["action"], e["target_id"]) for e in response.json()["results"]] == [
        ("key.revoked", keys["gamma"].public_id),
        ("key.created", keys["delta"].public_id),
        ("key.created", keys["gamma"].public_id),
        ("key.created", keys["beta"].public_id),
        ("key.created", keys["alpha"].public_id),
    ]
    revoked = call(client, "GET", "/api/v1/audit-events", query={"action": "key.revoked"}).json()["results"]
    assert [e["target_id"] for e in revoked] == [keys["gamma"].public_id]
    everything = call(client, "GET", "/api/v1/audit-events").json()["results"]
    assert [e["action"] for e in everything][-1] == "organization.created"


@pytest.mark.parametrize(
    ("path", "query", "errors"),
    [
        ("/api/v1/keys", {"status": "nope"}, {"status": ['"nope" is not a valid choice.']}),
        ("/api/v1/keys", {"environment": "prod"}, {"environment": ['"prod" is not a valid choice.']}),
        (
            "/api/v1/keys",
            {"name": "n" * 101},
            {"name": ["Ensure this field has no more than 100 characters."]},
        ),
        (
            "/api/v1/audit-events",
            {"until": "2024-13-45"},
            {
                "until": [
                    "Datetime has wrong format. Use one of these formats instead: "
                    "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."
                ]
            },
        ),
    ],
    ids=["status", "environment", "name", "until"],
)
def test_bad_filter_value_gets_400_problem(world, path, query, errors):
    response = call(session_client(world.users[Role.VIEWER]), "GET", path, query=query)
    assert_problem(response, 400, "validation_error", "The request has invalid fields.", errors)
