"""Service accounts: OAuth2 client-credentials tokens from the portal's own provider, used on the API."""

import base64

import pytest

from keys import services
from keys.models import ApiKey
from portal.audit import Actor
from portal.models import AuditEvent
from portal.roles import Role
from tests.factories import make_org, make_user

pytestmark = pytest.mark.django_db

TOKEN_URL = "/identity/o/api/token"


def _basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def _token_response(client, client_id: str, secret: str):
    return client.post(
        TOKEN_URL,
        {"grant_type": "client_credentials"},
        HTTP_AUTHORIZATION=_basic(client_id, secret),
    )


def _token(client, client_id: str, secret: str) -> str:
    response = _token_response(client, client_id, secret)
    assert response.status_code == 200, response.content
    return response.json()["access_token"]


def _bearer(token: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


@pytest.fixture
def org_a():
    owner = make_user("owner-a@example.com")
    return make_org(owner, name="Alpha Labs")


@pytest.fixture
def org_b():
    return make_org(make_user("owner-b@example.com"), name="Beta Works")


def _service_account(organization, role=Role.DEVELOPER, name="ci-deployer"):
    owner = organization.memberships.get().user
    return services.service_account_create(
        actor=Actor(user=owner), organization=organization, name=name, role=role
    )


def test_client_credentials_grant_returns_a_bearer_token(client, org_a, settings):
    account, client_id, secret = _service_account(org_a)
    assert account.client_id_display == client_id
    response = _token_response(client, client_id, secret)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == settings.IDP_OIDC_ACCESS_TOKEN_EXPIRES_IN
    assert isinstance(body["access_token"], str) and len(body["access_token"]) >= 20
    assert "refresh_token" not in body


def test_wrong_client_secret_gets_no_token(client, org_a):
    _account, client_id, _secret = _service_account(org_a)
    response = _token_response(client, client_id, "not-the-secret")
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_client"}


def test_token_lists_only_its_own_organizations_keys(client, org_a, org_b):
    owner_a = org_a.memberships.get().user
    owner_b = org_b.memberships.get().user
    key_a, _ = services.api_key_create(actor=Actor(user=owner_a), organization=org_a, name="alpha key")
    key_b, _ = services.api_key_create(actor=Actor(user=owner_b), organization=org_b, name="beta key")
    _account, client_id, secret = _service_account(org_a)
    token = _token(client, client_id, secret)

    response = client.get("/api/v1/keys", **_bearer(token))
    assert response.status_code == 200, response.content
    ids = [item["id"] for item in response.json()["results"]]
    assert ids == [key_a.public_id]
    assert key_b.public_id not in response.content.decode()

    # Another tenant's key looks exactly like a missing one.
    other = client.get(f"/api/v1/keys/{key_b.public_id}", **_bearer(token))
    missing = client.get("/api/v1/keys/key_doesnotexist", **_bearer(token))
    assert other.status_code == missing.status_code == 404
    assert other.json()["detail"] == missing.json()["detail"]


def test_token_resolves_its_own_organization(client, org_a, org_b):
    _account, client_id, secret = _service_account(org_a)
    token = _token(client, client_id, secret)
    response = client.get("/api/v1/organization", **_bearer(token))
    assert response.status_code == 200, response.content
    assert response.json()["slug"] == org_a.slug
    assert response.json()["name"] == "Alpha Labs"
    # The header that selects an organization for sessions cannot move a service account.
    response = client.get("/api/v1/organization", HTTP_TOLLGATE_ORGANIZATION=org_b.slug, **_bearer(token))
    assert response.json()["slug"] == org_a.slug


def test_developer_token_can_create_a_key_and_it_is_audited_as_the_service(client, org_a):
    account, client_id, secret = _service_account(org_a, Role.DEVELOPER, name="ci-deployer")
    token = _token(client, client_id, secret)
    response = client.post(
        "/api/v1/keys", {"name": "from ci"}, content_type="application/json", **_bearer(token)
    )
    assert response.status_code == 201, response.content
    body = response.json()
    key = ApiKey.objects.for_organization(org_a).get(public_id=body["id"])
    assert key.name == "from ci"
    assert key.created_by is None
    event = AuditEvent.objects.get(action="key.created", target_id=key.public_id)
    assert event.actor_type == "service"
    assert event.actor is None
    assert event.actor_label == f"ci-deployer ({account.public_id})"
    assert event.organization == org_a


def test_developer_token_cannot_manage_the_organization_or_invite(client, org_a):
    _account, client_id, secret = _service_account(org_a, Role.DEVELOPER)
    token = _token(client, client_id, secret)
    response = client.patch(
        "/api/v1/organization", {"name": "Renamed"}, content_type="application/json", **_bearer(token)
    )
    assert response.status_code == 403, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["detail"] == "Your role (developer) lacks the org.manage permission."
    response = client.post(
        "/api/v1/invitations",
        {"email": "new@example.com", "role": "viewer"},
        content_type="application/json",
        **_bearer(token),
    )
    assert response.status_code == 403, response.content
    assert response.json()["detail"] == "Your role (developer) lacks the members.manage permission."
    org_a.refresh_from_db()
    assert org_a.name == "Alpha Labs"


def test_viewer_token_cannot_create_keys(client, org_a):
    _account, client_id, secret = _service_account(org_a, Role.VIEWER, name="dashboard")
    token = _token(client, client_id, secret)
    assert client.get("/api/v1/keys", **_bearer(token)).status_code == 200
    response = client.post(
        "/api/v1/keys", {"name": "nope"}, content_type="application/json", **_bearer(token)
    )
    assert response.status_code == 403, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["detail"] == "Your role (viewer) lacks the keys.manage permission."
    assert not ApiKey.objects.for_organization(org_a).exists()


def test_invalid_token_is_refused_with_problem_json(client, org_a):
    response = client.get("/api/v1/keys", **_bearer("not-a-real-token"))
    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    assert response["WWW-Authenticate"] == 'Bearer realm="tollgate"'
    assert response.json() == {
        "type": "urn:tollgate:problem:authentication_failed",
        "title": "Unauthenticated",
        "status": 401,
        "detail": "The access token is invalid or has expired.",
    }


def test_revoked_service_account_loses_its_token_and_cannot_get_another(client, org_a):
    account, client_id, secret = _service_account(org_a)
    token = _token(client, client_id, secret)
    assert client.get("/api/v1/keys", **_bearer(token)).status_code == 200

    owner = org_a.memberships.get().user
    services.service_account_revoke(actor=Actor(user=owner), account=account)

    response = client.get("/api/v1/keys", **_bearer(token))
    assert response.status_code == 401
    assert response.json()["detail"] == "The access token is invalid or has expired."
    response = _token_response(client, client_id, secret)
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_client"}
    event = AuditEvent.objects.get(action="service_account.revoked")
    assert (event.target_id, event.actor) == (account.public_id, owner)


def test_owner_role_is_refused_for_service_accounts(org_a):
    from portal.errors import DomainError

    with pytest.raises(DomainError, match="A service account cannot be an owner."):
        _service_account(org_a, Role.OWNER)


def test_limit_too_large_for_the_database_is_a_problem_not_a_server_error(client, org_a):
    _account, client_id, secret = _service_account(org_a)
    token = _token(client, client_id, secret)
    response = client.post(
        "/api/v1/keys",
        {"name": "huge", "limits": {"rpm": 2**31}},
        content_type="application/json",
        **_bearer(token),
    )
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["errors"] == {"limits.rpm": ["Must be at most 2147483647."]}
    assert not ApiKey.objects.for_organization(org_a).exists()
