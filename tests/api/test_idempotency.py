"""Idempotency-Key on POST: replays, reuse with another body, scoping, and what is stored."""

import pytest
from django.db import connection

from keys import services as key_services
from keys.models import ApiKey, ApiKeySecret
from portal.audit import Actor
from portal.models import AuditEvent, IdempotencyRecord
from portal.roles import Role
from tests.api.support import assert_problem, call, db_changes, db_snapshot, session_client
from tests.factories import add_member

pytestmark = pytest.mark.django_db

IDEMPOTENCY_KEY = "idem-7f3c9a-create-ci-key"
REUSED = "This Idempotency-Key was used with a different request. Use a new key for a new request."


def _post(client, path, body, key=IDEMPOTENCY_KEY, **headers):
    return call(client, "POST", path, body, headers={"Idempotency-Key": key, **headers})


def test_create_replayed_with_the_same_key_returns_the_same_key_and_secret(world):
    client = session_client(world.users[Role.DEVELOPER])
    first = _post(client, "/api/v1/keys", {"name": "ci"})
    second = _post(client, "/api/v1/keys", {"name": "ci"})
    assert (first.status_code, second.status_code) == (201, 201)
    assert second.json() == first.json()
    assert second.json()["secret"] == first.json()["secret"]
    assert second["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert second["Content-Type"] == "application/json"
    key = ApiKey.objects.for_organization(world.org).get()
    assert key.public_id == first.json()["id"]
    assert ApiKeySecret.objects.filter(key=key).count() == 1
    assert AuditEvent.objects.filter(organization=world.org, action="key.created").count() == 1
    assert IdempotencyRecord.objects.count() == 1


def test_rotate_retried_with_the_same_key_returns_the_same_new_secret_and_mints_once(world):
    key, original = key_services.api_key_create(
        actor=Actor(user=world.users[Role.OWNER]), organization=world.org, name="build"
    )
    client = session_client(world.users[Role.DEVELOPER])
    path = f"/api/v1/keys/{key.public_id}/rotate"
    first = _post(client, path, {"grace_period": 600}, key="rotate-1")
    second = _post(client, path, {"grace_period": 600}, key="rotate-1")
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json() == first.json()
    assert second.json()["secret"] == first.json()["secret"] != original
    assert second["Idempotent-Replayed"] == "true"
    assert ApiKeySecret.objects.filter(key=key).count() == 2
    assert ApiKeySecret.objects.filter(key=key).live().count() == 2
    assert AuditEvent.objects.filter(organization=world.org, action="key.rotated").count() == 1


def test_same_key_with_another_body_is_refused_with_422_and_creates_nothing(world):
    client = session_client(world.users[Role.DEVELOPER])
    assert _post(client, "/api/v1/keys", {"name": "ci"}).status_code == 201
    before = db_snapshot()
    response = _post(client, "/api/v1/keys", {"name": "ci-2"})
    assert_problem(response, 422, "idempotency_key_reused", REUSED)
    assert "Idempotent-Replayed" not in response
    assert db_changes(before, db_snapshot()) == {}
    assert list(ApiKey.objects.for_organization(world.org).values_list("name", flat=True)) == ["ci"]


def test_same_key_on_another_path_is_refused_with_422(world):
    key, _ = key_services.api_key_create(
        actor=Actor(user=world.users[Role.OWNER]), organization=world.org, name="build"
    )
    client = session_client(world.users[Role.DEVELOPER])
    assert _post(client, f"/api/v1/keys/{key.public_id}/revoke", None).status_code == 200
    before = db_snapshot()
    response = _post(client, f"/api/v1/keys/{key.public_id}/rotate", None)
    assert_problem(response, 422, "idempotency_key_reused", REUSED)
    assert db_changes(before, db_snapshot()) == {}


def test_keys_are_per_credential_so_another_user_gets_a_new_result(world):
    first = _post(session_client(world.users[Role.DEVELOPER]), "/api/v1/keys", {"name": "ci"})
    colleague = _post(session_client(world.users[Role.ADMIN]), "/api/v1/keys", {"name": "ci"})
    stranger = _post(session_client(world.other_owner), "/api/v1/keys", {"name": "ci"})
    assert (first.status_code, colleague.status_code, stranger.status_code) == (201, 201, 201)
    assert "Idempotent-Replayed" not in colleague
    assert "Idempotent-Replayed" not in stranger
    ids = {first.json()["id"], colleague.json()["id"], stranger.json()["id"]}
    secrets = {first.json()["secret"], colleague.json()["secret"], stranger.json()["secret"]}
    assert len(ids) == len(secrets) == 3
    assert ApiKey.objects.for_organization(world.org).count() == 2
    assert ApiKey.objects.for_organization(world.other).get().public_id == stranger.json()["id"]
    assert IdempotencyRecord.objects.count() == 3


def test_a_replay_never_crosses_into_another_organization_of_the_same_user(world):
    user = world.users[Role.DEVELOPER]
    add_member(world.other, Role.DEVELOPER, user)
    client = session_client(user)
    acme = _post(client, "/api/v1/keys", {"name": "ci"}, **{"Tollgate-Organization": world.org.slug})
    globex = _post(client, "/api/v1/keys", {"name": "ci"}, **{"Tollgate-Organization": world.other.slug})
    assert (acme.status_code, globex.status_code) == (201, 201)
    assert "Idempotent-Replayed" not in globex
    assert ApiKey.objects.for_organization(world.org).get().public_id == acme.json()["id"]
    assert ApiKey.objects.for_organization(world.other).get().public_id == globex.json()["id"]
    assert globex.json()["secret"] != acme.json()["secret"]


def test_a_replay_is_not_served_after_the_user_left_the_organization(world):
    user = world.users[Role.DEVELOPER]
    add_member(world.other, Role.DEVELOPER, user)
    client = session_client(user)
    acme = _post(client, "/api/v1/keys", {"name": "ci"}, **{"Tollgate-Organization": world.org.slug})
    assert acme.status_code == 201
    world.membership(user).delete()
    # Now in Globex alone, the header may be left out: the org is Globex, not Acme.
    again = _post(client, "/api/v1/keys", {"name": "ci"})
    assert again.status_code == 201
    assert "Idempotent-Replayed" not in again
    assert again.json()["secret"] != acme.json()["secret"]
    assert ApiKey.objects.for_organization(world.other).get().public_id == again.json()["id"]


def test_a_refused_request_is_replayed_as_the_same_problem(world):
    client = session_client(world.users[Role.DEVELOPER])
    first = _post(client, "/api/v1/keys", {"name": ""})
    second = _post(client, "/api/v1/keys", {"name": ""})
    errors = {"name": ["This field may not be blank."]}
    assert_problem(first, 400, "validation_error", "The request has invalid fields.", errors)
    assert_problem(second, 400, "validation_error", "The request has invalid fields.", errors)
    assert second["Idempotent-Replayed"] == "true"
    assert not ApiKey.objects.for_organization(world.org).exists()


def test_an_idempotency_key_longer_than_255_characters_is_refused(world):
    before = db_snapshot()
    response = _post(
        session_client(world.users[Role.DEVELOPER]), "/api/v1/keys", {"name": "ci"}, key="k" * 256
    )
    assert_problem(response, 400, "invalid_idempotency_key", "Idempotency-Key must be 1 to 255 characters.")
    assert db_changes(before, db_snapshot()) == {}


def test_the_stored_record_holds_neither_the_secret_nor_the_idempotency_key(world):
    client = session_client(world.users[Role.DEVELOPER])
    response = _post(client, "/api/v1/keys", {"name": "ci"})
    secret = response.json()["secret"]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT lookup, fingerprint, response_status, response_body FROM portal_idempotencyrecord"
        )
        rows = cursor.fetchall()
    assert len(rows) == 1
    lookup, fingerprint, status, body = rows[0]
    body = bytes(body)
    assert status == 201
    assert len(lookup) == len(fingerprint) == 64
    for needle in (secret, secret[12:-4], IDEMPOTENCY_KEY, response.json()["id"], '"secret"'):
        assert needle.encode() not in body
        assert needle not in lookup
        assert needle not in fingerprint
    # The replay still returns the secret: the body is encrypted, not dropped.
    assert _post(client, "/api/v1/keys", {"name": "ci"}).json()["secret"] == secret
