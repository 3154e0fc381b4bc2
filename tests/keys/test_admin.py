"""Django admin for keys and service accounts: search, read-only detail, audited revocation."""

import json
import re

import pytest

from keys import services
from keys.edge_record import redis_key
from keys.models import ApiKey, ApiKeySecret, ServiceAccount
from keys.publication import edge_redis
from portal.audit import Actor
from portal.models import AuditEvent
from portal.roles import Role
from tests.factories import make_org, make_user

pytestmark = pytest.mark.django_db

KEYS_URL = "/admin/keys/apikey/"
ACCOUNTS_URL = "/admin/keys/serviceaccount/"


@pytest.fixture
def staff(client):
    user = make_user("staff@example.com")
    user.is_staff = user.is_superuser = True
    user.save()
    client.force_login(user)
    return user


@pytest.fixture
def organization():
    return make_org(make_user("owner@example.com"), name="Acme Robotics")


def _create_key(organization, name):
    owner = organization.memberships.get().user
    return services.api_key_create(actor=Actor(user=owner), organization=organization, name=name)


def test_search_by_last_four_finds_the_key(client, staff, organization):
    key, plaintext = _create_key(organization, "findable")
    other_key, other_plaintext = _create_key(make_org(name="Other Co"), "unrelated")
    assert plaintext[-4:].lower() != other_plaintext[-4:].lower()

    response = client.get(KEYS_URL, {"q": plaintext[-4:]})
    assert response.status_code == 200
    content = response.content.decode()
    assert key.public_id in content
    assert other_key.public_id not in content
    assert "1 result" in content


def test_search_by_prefix_public_id_and_organization(client, staff, organization):
    key, plaintext = _create_key(organization, "findable")
    other_key, _ = _create_key(make_org(name="Other Co"), "unrelated")
    for query in (plaintext[:12], key.public_id, "Acme Robot", organization.slug):
        content = client.get(KEYS_URL, {"q": query}).content.decode()
        assert key.public_id in content, query
        assert other_key.public_id not in content, query


def test_changelist_shows_key_columns(client, staff, organization):
    key, _ = _create_key(organization, "listed key")
    services.api_key_revoke(actor=Actor.system(), key=key)
    response = client.get(KEYS_URL)
    assert response.status_code == 200
    content = response.content.decode()
    assert re.findall(r'<th scope="col" class="[^"]*column-(\w+)', content) == [
        "public_id",
        "short_name",
        "organization_name",
        "environment",
        "key_status",
        "last_used",
    ]
    assert f'<th class="field-public_id"><a href="/admin/keys/apikey/{key.pk}/change/">' in content
    assert '<td class="field-short_name">listed key</td>' in content
    # Longer than the column: cut, the whole of it in the tooltip.
    assert (
        '<td class="field-organization_name"><span title="Acme Robotics (acme-robotics)">'
        "Acme Robotics (acme-rob…</span></td>"
    ) in content
    assert '<td class="field-last_used">never</td>' in content
    assert '<td class="field-key_status">Revoked</td>' in content


def test_revoke_action_revokes_through_the_service_and_audits_as_staff(
    client, staff, organization, django_capture_on_commit_callbacks
):
    key, plaintext = _create_key(organization, "leaked")
    untouched, _ = _create_key(organization, "fine")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(KEYS_URL, {"action": "revoke", "_selected_action": [key.pk]})
    assert response.status_code == 302

    key = ApiKey.unscoped.get(pk=key.pk)
    assert key.status == ApiKey.Status.REVOKED
    assert ApiKey.unscoped.get(pk=untouched.pk).revoked_at is None
    assert not ApiKeySecret.objects.filter(key=key, revoked_at=None).exists()
    event = AuditEvent.objects.get(action="key.revoked")
    assert (event.actor, event.actor_type, event.actor_label) == (staff, "staff", "staff@example.com")
    assert (event.organization, event.target_id) == (organization, key.public_id)
    # The edge hears of it.
    record = json.loads(edge_redis().get(redis_key(services.secret_hash(plaintext))))
    assert record["status"] == "revoked"


def test_change_page_shows_display_parts_but_never_the_hash(client, staff, organization):
    key, plaintext = _create_key(organization, "inspect me")
    key, new_plaintext, _ = services.api_key_rotate(actor=Actor.system(), key=key)
    response = client.get(f"{KEYS_URL}{key.pk}/change/")
    assert response.status_code == 200
    content = response.content.decode()
    assert "inspect me" in content
    for secret in ApiKeySecret.objects.filter(key=key):
        assert secret.prefix in content
        assert secret.last4 in content
        assert secret.secret_hash not in content
    assert "secret_hash" not in content
    assert plaintext not in content and new_plaintext not in content
    # Read-only: there is no save button and a post changes nothing.
    assert 'name="_save"' not in content
    response = client.post(f"{KEYS_URL}{key.pk}/change/", {"name": "renamed"})
    assert response.status_code == 403
    assert ApiKey.unscoped.get(pk=key.pk).name == "inspect me"


def test_keys_cannot_be_added_or_deleted_in_the_admin(client, staff, organization):
    key, _ = _create_key(organization, "stays")
    assert client.get(f"{KEYS_URL}add/").status_code == 403
    assert client.get(f"{KEYS_URL}{key.pk}/delete/").status_code == 403
    response = client.post(KEYS_URL, {"action": "delete_selected", "_selected_action": [key.pk]}, follow=True)
    assert "No action selected." in response.content.decode()
    assert ApiKey.unscoped.filter(pk=key.pk).exists()


def test_service_account_revoke_action_goes_through_the_service(client, staff, organization):
    owner = organization.memberships.get().user
    account, client_id, _secret = services.service_account_create(
        actor=Actor(user=owner), organization=organization, name="ci", role=Role.DEVELOPER
    )
    response = client.get(ACCOUNTS_URL, {"q": client_id})
    assert response.status_code == 200
    assert account.public_id in response.content.decode()
    assert client.get(f"{ACCOUNTS_URL}add/").status_code == 403

    response = client.post(ACCOUNTS_URL, {"action": "revoke", "_selected_action": [account.pk]})
    assert response.status_code == 302
    account = ServiceAccount.unscoped.get(pk=account.pk)
    assert account.revoked_at is not None and account.client is None
    event = AuditEvent.objects.get(action="service_account.revoked")
    assert (event.actor, event.actor_type, event.target_id) == (staff, "staff", account.public_id)
