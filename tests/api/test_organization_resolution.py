"""Which organization a request acts in, and CSRF for console sessions."""

import pytest

from keys.models import ApiKey
from portal.models import AuditEvent
from portal.roles import Role
from tests.api.support import (
    assert_problem,
    call,
    db_changes,
    db_snapshot,
    key_json,
    organization_json,
    page,
    service_token,
    session_client,
)
from tests.factories import add_member

pytestmark = pytest.mark.django_db

ORGANIZATION_REQUIRED = "Name the organization in the Tollgate-Organization header (its slug)."


@pytest.fixture
def two_org_user(world):
    """A developer in Acme who is also a viewer in Globex."""
    user = world.users[Role.DEVELOPER]
    add_member(world.other, Role.VIEWER, user)
    return user


def test_user_in_one_organization_may_omit_the_header(world):
    response = call(session_client(world.users[Role.VIEWER]), "GET", "/api/v1/organization")
    assert response.status_code == 200
    assert response.json() == organization_json(world.org)


def test_user_in_two_organizations_without_the_header_gets_400_organization_required(world, two_org_user):
    client = session_client(two_org_user)
    assert_problem(call(client, "GET", "/api/v1/keys"), 400, "organization_required", ORGANIZATION_REQUIRED)
    before = db_snapshot()
    response = call(client, "POST", "/api/v1/keys", {"name": "ci"})
    assert_problem(response, 400, "organization_required", ORGANIZATION_REQUIRED)
    assert db_changes(before, db_snapshot()) == {}


def test_the_header_picks_the_organization_and_the_role_held_there(world, two_org_user):
    client = session_client(two_org_user)
    acme = {"Tollgate-Organization": world.org.slug}
    globex = {"Tollgate-Organization": world.other.slug}

    created = call(client, "POST", "/api/v1/keys", {"name": "ci"}, headers=acme)
    assert created.status_code == 201
    key = ApiKey.objects.for_organization(world.org).get()
    assert created.json()["id"] == key.public_id

    refused = call(client, "POST", "/api/v1/keys", {"name": "ci"}, headers=globex)
    assert_problem(refused, 403, "permission_denied", "Your role (viewer) lacks the keys.manage permission.")
    assert not ApiKey.objects.for_organization(world.other).exists()

    assert call(client, "GET", "/api/v1/organization", headers=globex).json() == organization_json(
        world.other
    )
    assert call(client, "GET", "/api/v1/keys", headers=globex).json() == page([])
    assert call(client, "GET", "/api/v1/keys", headers=acme).json() == page([key_json(key)])


def test_a_slug_of_an_organization_one_is_not_in_answers_404_like_an_unknown_slug(world):
    client = session_client(world.users[Role.OWNER])
    not_mine = call(client, "GET", "/api/v1/keys", headers={"Tollgate-Organization": world.other.slug})
    unknown = call(client, "GET", "/api/v1/keys", headers={"Tollgate-Organization": "no-such-org"})
    assert_problem(not_mine, 404, "not_found", "Organization not found.")
    assert not_mine.content == unknown.content


def test_organization_requiring_mfa_refuses_a_member_without_it(world):
    world.org.require_mfa = True
    world.org.save(update_fields=["require_mfa"])
    response = call(session_client(world.users[Role.OWNER]), "GET", "/api/v1/organization")
    assert_problem(
        response,
        403,
        "permission_denied",
        "Acme requires two-factor authentication. Set it up in the console.",
    )


# --- CSRF ---------------------------------------------------------------------------------


def _csrf_client(world):
    """A logged-in session that enforces CSRF, with the cookie a console page sets."""
    client = session_client(world.users[Role.DEVELOPER], enforce_csrf_checks=True)
    assert client.get(f"/o/{world.org.slug}/").status_code == 200
    return client, client.cookies["csrftoken"].value


def test_session_post_without_csrf_cookie_is_refused_with_403_problem(world):
    client = session_client(world.users[Role.DEVELOPER], enforce_csrf_checks=True)
    before = db_snapshot()
    response = call(client, "POST", "/api/v1/keys", {"name": "ci"})
    assert_problem(response, 403, "permission_denied", "CSRF Failed: CSRF cookie not set.")
    assert db_changes(before, db_snapshot()) == {}


def test_session_post_with_cookie_but_without_the_header_is_refused(world):
    client, _token = _csrf_client(world)
    before = db_snapshot()
    missing = call(client, "POST", "/api/v1/keys", {"name": "ci"})
    assert_problem(missing, 403, "permission_denied", "CSRF Failed: CSRF token missing.")
    wrong = call(client, "POST", "/api/v1/keys", {"name": "ci"}, headers={"X-CSRFToken": "x" * 32})
    assert_problem(
        wrong,
        403,
        "permission_denied",
        "CSRF Failed: CSRF token from the 'X-Csrftoken' HTTP header incorrect.",
    )
    assert db_changes(before, db_snapshot()) == {}


def test_session_post_with_csrf_cookie_and_header_succeeds(world):
    client, token = _csrf_client(world)
    response = call(client, "POST", "/api/v1/keys", {"name": "ci"}, headers={"X-CSRFToken": token})
    assert response.status_code == 201, response.content
    assert ApiKey.objects.for_organization(world.org).get().public_id == response.json()["id"]


def test_session_get_needs_no_csrf_token(world):
    client = session_client(world.users[Role.DEVELOPER], enforce_csrf_checks=True)
    assert call(client, "GET", "/api/v1/keys").status_code == 200


# --- service accounts ---------------------------------------------------------------------


def test_service_account_acts_in_its_own_organization_and_needs_no_csrf(world):
    token = service_token(world.org, world.users[Role.OWNER])
    client = session_client(enforce_csrf_checks=True)
    response = call(
        client, "POST", "/api/v1/keys", {"name": "ci"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 201, response.content
    key = ApiKey.objects.for_organization(world.org).get()
    assert (response.json()["id"], key.created_by) == (key.public_id, None)
    event = AuditEvent.objects.filter(organization=world.org).order_by("-id").first()
    assert (event.action, event.actor_type, event.actor_id) == ("key.created", "service", None)


def test_service_account_role_is_enforced(world):
    token = service_token(world.org, world.users[Role.OWNER], role=Role.VIEWER)
    response = call(
        session_client(), "POST", "/api/v1/keys", {"name": "ci"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert_problem(response, 403, "permission_denied", "Your role (viewer) lacks the keys.manage permission.")


def test_unknown_bearer_token_gets_401_with_www_authenticate(world):
    response = call(session_client(), "GET", "/api/v1/keys", headers={"Authorization": "Bearer not-a-token"})
    assert_problem(response, 401, "authentication_failed", "The access token is invalid or has expired.")
    assert response["WWW-Authenticate"] == 'Bearer realm="tollgate"'
