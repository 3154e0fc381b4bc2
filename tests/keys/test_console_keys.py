"""The console's API key and service account pages, through the Django test client.

Real Postgres and Redis: a key's edge record (``tg:key:<hash>``) is read back from Redis.
"""

import ast
import base64
import html
import json
import re
from datetime import UTC, datetime, timedelta

import pytest
import redis
import time_machine
from allauth.idp.oidc.models import Client
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from edge import keyformat
from keys import services
from keys.models import ApiKey, ApiKeySecret, ServiceAccount
from portal.audit import Actor
from portal.models import AuditEvent, Membership
from portal.roles import ROLE_PERMISSIONS, Perm, Role
from tests.factories import add_member, make_org
from tests.portal.test_console_access import _without_csrf

pytestmark = pytest.mark.django_db

EDGE = "https://edge.example.test"
SECRET_FIELD = re.compile(r'<input type="text" id="secret" value="([^"]+)"')
CLIENT_SECRET_FIELD = re.compile(r'<input type="text" id="client-secret" value="([^"]+)"')


@pytest.fixture(autouse=True)
def _edge_url(settings):
    settings.EDGE_PUBLIC_URL = EDGE


@pytest.fixture
def edge_redis(settings):
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    client.close()


def _owner(organization):
    return Membership.objects.for_organization(organization).get(role=Role.OWNER).user


def _key(organization, name="Backend", **fields):
    """Create a key through the service, as its owner; return the key and its secret."""
    return services.api_key_create(
        actor=Actor(user=_owner(organization)), organization=organization, name=name, **fields
    )


def _service_account(organization, name="CI", role=Role.DEVELOPER):
    account, _client_id, _secret = services.service_account_create(
        actor=Actor(user=_owner(organization)), organization=organization, name=name, role=role
    )
    return account


def _logged_in(client, organization, role):
    user = _owner(organization) if role == Role.OWNER else add_member(organization, role)
    client.force_login(user)
    return user


def _allowed(role, permission) -> bool:
    return permission in ROLE_PERMISSIONS[role]


def _secret_on(response) -> str:
    match = SECRET_FIELD.search(response.content.decode())
    assert match, "no secret field on the page"
    return match.group(1)


def _record(edge_redis, secret: str) -> dict:
    stored = edge_redis.get(f"tg:key:{services.secret_hash(secret)}")
    assert stored is not None
    return json.loads(stored)


def _code(response, element_id: str) -> str:
    """Return the text of a snippet on the page, as the Copy button would copy it."""
    match = re.search(rf'<code id="{element_id}">(.*?)</code>', response.content.decode(), re.S)
    assert match, f"no #{element_id} on the page"
    return html.unescape(match.group(1))


def _form_error(response, field):
    return response.context["form"].errors[field]


# --- Roles: every page and write answers exactly what the role table says ---------------

KEY_PAGES = [
    ("org-keys", Perm.KEYS_VIEW, None),
    ("org-key-create", Perm.KEYS_MANAGE, None),
    ("org-key-edit", Perm.KEYS_MANAGE, "key"),
    ("org-key-rotate", Perm.KEYS_MANAGE, "key"),
    ("org-key-revoke", Perm.KEYS_MANAGE, "key"),
    ("org-service-accounts", Perm.MEMBERS_VIEW, None),
    ("org-service-account-revoke", Perm.MEMBERS_MANAGE, "account"),
]


def _url(url_name, organization, needs):
    args = [organization.slug]
    if needs == "key":
        args.append(_key(organization)[0].public_id)
    elif needs == "account":
        args.append(_service_account(organization).public_id)
    return reverse(url_name, args=args)


@pytest.mark.parametrize("role", Role.values)
@pytest.mark.parametrize(("url_name", "permission", "needs"), KEY_PAGES)
def test_each_role_reaches_exactly_the_key_pages_its_permissions_allow(
    client, role, url_name, permission, needs
):
    organization = make_org()
    url = _url(url_name, organization, needs)
    _logged_in(client, organization, role)
    response = client.get(url)
    assert response.status_code == (200 if _allowed(role, permission) else 403)
    if response.status_code == 403:
        assert b"You can't do that here" in response.content


@pytest.mark.parametrize("role", Role.values)
def test_each_role_may_create_a_key_exactly_when_it_has_keys_manage(client, role):
    organization = make_org()
    _logged_in(client, organization, role)
    response = client.post(
        reverse("org-key-create", args=[organization.slug]),
        {"name": "Batch jobs", "environment": "live", "budget_alert_percent": "80"},
    )
    allowed = _allowed(role, Perm.KEYS_MANAGE)
    assert response.status_code == (302 if allowed else 403)
    assert ApiKey.objects.for_organization(organization).count() == (1 if allowed else 0)


@pytest.mark.parametrize("role", Role.values)
@pytest.mark.parametrize("action", ["org-key-edit", "org-key-rotate", "org-key-revoke"])
def test_each_role_may_change_a_key_exactly_when_it_has_keys_manage(client, role, action):
    organization = make_org()
    key, _secret = _key(organization, name="Before")
    _logged_in(client, organization, role)
    data = {"org-key-edit": {"name": "After", "budget_alert_percent": "80"}, "org-key-rotate": {"grace": "0"}}
    response = client.post(reverse(action, args=[organization.slug, key.public_id]), data.get(action, {}))
    allowed = _allowed(role, Perm.KEYS_MANAGE)
    assert response.status_code == (302 if allowed else 403)
    key.refresh_from_db()
    changed = {
        "org-key-edit": key.name == "After",
        "org-key-rotate": key.secrets.count() == 2,
        "org-key-revoke": key.revoked_at is not None,
    }[action]
    assert changed is allowed


@pytest.mark.parametrize("role", Role.values)
def test_each_role_may_create_and_revoke_service_accounts_exactly_when_it_has_members_manage(client, role):
    organization = make_org()
    existing = _service_account(organization, name="Existing")
    _logged_in(client, organization, role)
    created = client.post(
        reverse("org-service-accounts", args=[organization.slug]), {"name": "Deployer", "role": "developer"}
    )
    revoked = client.post(reverse("org-service-account-revoke", args=[organization.slug, existing.public_id]))
    allowed = _allowed(role, Perm.MEMBERS_MANAGE)
    assert created.status_code == revoked.status_code == (302 if allowed else 403)
    assert ServiceAccount.objects.for_organization(organization).filter(name="Deployer").exists() is allowed
    existing.refresh_from_db()
    assert (existing.revoked_at is not None) is allowed


@pytest.mark.parametrize("role", [role for role in Role.values if _allowed(role, Perm.KEYS_VIEW)])
def test_key_list_shows_write_controls_only_to_roles_with_keys_manage(client, role):
    organization = make_org()
    key, _secret = _key(organization)
    _logged_in(client, organization, role)
    response = client.get(reverse("org-keys", args=[organization.slug]))
    assert response.status_code == 200
    content = response.content.decode()
    assert f'id="key-{key.public_id}"' in content
    controls = [
        reverse("org-key-create", args=[organization.slug]),
        reverse("org-key-edit", args=[organization.slug, key.public_id]),
        reverse("org-key-rotate", args=[organization.slug, key.public_id]),
        reverse("org-key-revoke", args=[organization.slug, key.public_id]),
    ]
    shown = _allowed(role, Perm.KEYS_MANAGE)
    assert [control in content for control in controls] == [shown] * 4


@pytest.mark.parametrize("role", [role for role in Role.values if _allowed(role, Perm.MEMBERS_VIEW)])
def test_service_account_list_shows_write_controls_only_to_roles_with_members_manage(client, role):
    organization = make_org()
    account = _service_account(organization, name="Nightly export")
    _logged_in(client, organization, role)
    response = client.get(reverse("org-service-accounts", args=[organization.slug]))
    content = response.content.decode()
    assert response.status_code == 200
    assert "Nightly export" in content
    assert account.client_id_display in content
    shown = _allowed(role, Perm.MEMBERS_MANAGE)
    assert ('id="service-account-form"' in content) is shown
    assert (
        reverse("org-service-account-revoke", args=[organization.slug, account.public_id]) in content
    ) is shown


# --- Create: the secret is shown once, stored as an HMAC only -----------------------------


def test_created_key_secret_is_shown_once_and_stored_only_as_its_hmac(
    client, edge_redis, django_capture_on_commit_callbacks
):
    organization = make_org()
    user = _logged_in(client, organization, Role.DEVELOPER)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("org-key-create", args=[organization.slug]),
            {"name": "Search backend", "environment": "live", "budget_alert_percent": "80"},
            follow=True,
        )
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    secret = _secret_on(response)
    assert keyformat.is_well_formed(secret) and secret.startswith("tg_live_")
    content = response.content.decode()
    assert "It will not be shown again" in content
    assert 'data-copy="#secret"' in content

    key = ApiKey.objects.for_organization(organization).get()
    stored = ApiKeySecret.objects.get(key=key)
    assert stored.secret_hash == services.secret_hash(secret)
    assert (stored.prefix, stored.last4) == (secret[:12], secret[-4:])
    assert key.created_by == user
    assert _record(edge_redis, secret)["status"] == "active"
    # Nowhere else: not in the session, not in the audit log.
    assert secret not in json.dumps(dict(client.session.items()))
    assert secret not in json.dumps(
        list(AuditEvent.objects.filter(organization=organization).values("metadata"))
    )

    listing = client.get(reverse("org-keys", args=[organization.slug]))
    assert listing.status_code == 200
    assert secret not in listing.content.decode()
    assert f"{secret[:12]}…{secret[-4:]}" in listing.content.decode()


def test_reveal_page_snippets_call_the_edge_with_the_new_secret(client):
    organization = make_org()
    _logged_in(client, organization, Role.DEVELOPER)
    response = client.post(
        reverse("org-key-create", args=[organization.slug]),
        {
            "name": "Chat",
            "environment": "test",
            "allowed_models": "llama-3.1-*\nllama-3.1-8b-instruct",
            "budget_alert_percent": "80",
        },
        follow=True,
    )
    secret = _secret_on(response)
    assert secret.startswith("tg_test_")
    assert _code(response, "snippet-curl") == (
        f"curl {EDGE}/v1/chat/completions \\\n"
        f'  -H "Authorization: Bearer {secret}" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        '  -d \'{"model": "llama-3.1-8b-instruct", "messages": [{"role": "user", "content": "Hello"}]}\''
    )
    python = _code(response, "snippet-python")
    ast.parse(python)
    assert f'client = OpenAI(base_url="{EDGE}/v1", api_key="{secret}")' in python
    assert 'model="llama-3.1-8b-instruct"' in python


def test_created_key_keeps_every_setting_with_the_budget_in_exact_cents(client):
    organization = make_org()
    _logged_in(client, organization, Role.ADMIN)
    response = client.post(
        reverse("org-key-create", args=[organization.slug]),
        {
            "name": "  Batch  ",
            "environment": "test",
            "expires_at": "2999-01-31T12:30",
            "allowed_models": "gpt-4o*\n\n  llama-3.1-8b  \n",
            "allowed_ips": "10.0.0.0/8\n2001:db8::/32",
            "rpm_limit": "600",
            "tpm_limit": "100000",
            "concurrency_limit": "8",
            "budget": "1234.56",
            "budget_alert_percent": "90",
            "rotation_reminder_days": "30",
            "metadata": '{"team": "search", "cost_center": 42}',
        },
    )
    assert response.status_code == 302
    key = ApiKey.objects.for_organization(organization).get()
    assert key.name == "Batch"
    assert key.environment == "test"
    assert key.expires_at == datetime(2999, 1, 31, 12, 30, tzinfo=UTC)
    assert key.allowed_models == ["gpt-4o*", "llama-3.1-8b"]
    assert key.allowed_ips == ["10.0.0.0/8", "2001:db8::/32"]
    assert (key.rpm_limit, key.tpm_limit, key.concurrency_limit) == (600, 100000, 8)
    assert key.budget_monthly_minor == 123456
    assert key.budget_alert_percent == 90
    assert key.rotation_reminder_days == 30
    assert key.metadata == {"team": "search", "cost_center": 42}

    listing = client.get(reverse("org-keys", args=[organization.slug])).content.decode()
    assert "of 1,234.56 USD" in listing
    assert "alert at 90%" in listing


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "allowed_ips",
            "10.0.0.0/8\n10.0.0.0/33",
            "'10.0.0.0/33' is not an IPv4/IPv6 address or CIDR range: "
            "'10.0.0.0/33' does not appear to be an IPv4 or IPv6 network.",
        ),
        (
            "metadata",
            "{team: 1}",
            "This is not valid JSON: Expecting property name enclosed in double quotes (line 1, column 2).",
        ),
        ("metadata", '["a list"]', 'Enter a JSON object, like {"team": "search"}.'),
        ("budget", "1.234", "Give the budget in dollars and cents: at most 2 decimals."),
        ("budget", "-5", "Ensure this value is greater than or equal to 0."),
        ("expires_at", "2001-01-01T00:00", "The expiry must be in the future."),
        ("allowed_models", "gpt 4", "'gpt 4' is not a model name or pattern."),
    ],
)
def test_invalid_key_input_is_refused_with_a_readable_message_and_creates_nothing(
    client, field, value, message
):
    organization = make_org()
    _logged_in(client, organization, Role.DEVELOPER)
    response = client.post(
        reverse("org-key-create", args=[organization.slug]),
        {"name": "Broken", "environment": "live", "budget_alert_percent": "80", field: value},
    )
    assert response.status_code == 400
    assert _form_error(response, field) == [message]
    assert escape(message) in response.content.decode()
    assert not SECRET_FIELD.search(response.content.decode())
    assert ApiKey.objects.for_organization(organization).count() == 0
    assert not AuditEvent.objects.filter(organization=organization).filter(action="key.created").exists()


def test_every_invalid_key_field_is_reported_at_once(client):
    organization = make_org()
    _logged_in(client, organization, Role.DEVELOPER)
    response = client.post(
        reverse("org-key-create", args=[organization.slug]),
        {
            "name": "Broken",
            "environment": "live",
            "allowed_ips": "192.168.1.1/24",
            "metadata": "[]",
            "budget": "1.234",
            "budget_alert_percent": "80",
        },
    )
    assert response.status_code == 400
    assert response.context["form"].errors == {
        "allowed_ips": [
            "'192.168.1.1/24' is not an IPv4/IPv6 address or CIDR range: 192.168.1.1/24 has host bits set."
        ],
        "metadata": ['Enter a JSON object, like {"team": "search"}.'],
        "budget": ["Give the budget in dollars and cents: at most 2 decimals."],
    }
    assert ApiKey.objects.for_organization(organization).count() == 0


def test_budget_dollars_convert_to_cents_exactly():
    from decimal import Decimal

    from keys.forms import cents_to_dollars, dollars_to_cents

    assert dollars_to_cents(Decimal("0.29")) == 29
    assert dollars_to_cents(Decimal("1E+3")) == 100000
    assert dollars_to_cents(Decimal("19.9")) == 1990
    assert cents_to_dollars(1990) == Decimal("19.90")
    with pytest.raises(ValueError, match="fractions of a cent"):
        dollars_to_cents(Decimal("1.234"))


# --- Edit --------------------------------------------------------------------------------


def test_edit_changes_scopes_limits_and_budget_but_not_the_environment(
    client, edge_redis, django_capture_on_commit_callbacks
):
    organization = make_org()
    key, secret = _key(organization, name="Old", environment="test", budget_monthly_minor=500)
    _logged_in(client, organization, Role.DEVELOPER)
    url = reverse("org-key-edit", args=[organization.slug, key.public_id])
    form = client.get(url)
    assert form.status_code == 200
    assert 'name="environment"' not in form.content.decode()
    assert form.context["form"]["budget"].value() == form.context["form"].initial["budget"]
    assert str(form.context["form"].initial["budget"]) == "5.00"
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            url,
            {
                "name": "New",
                "environment": "live",
                "allowed_models": "qwen-*",
                "rpm_limit": "60",
                "budget": "7.5",
                "budget_alert_percent": "50",
                "metadata": '{"owner": "ml"}',
            },
        )
    assert response.status_code == 302
    assert response["Location"] == reverse("org-keys", args=[organization.slug])
    key.refresh_from_db()
    assert (key.name, key.environment, key.allowed_models) == ("New", "test", ["qwen-*"])
    assert (key.rpm_limit, key.budget_monthly_minor, key.budget_alert_percent) == (60, 750, 50)
    assert key.metadata == {"owner": "ml"}
    record = _record(edge_redis, secret)
    assert record["limits"]["rpm"] == 60
    assert record["budget"] == {"monthly_minor": 750, "alert_minor": 375}
    event = AuditEvent.objects.filter(organization=organization).get(action="key.updated")
    assert sorted(event.metadata["changes"]) == [
        "allowed_models",
        "budget_alert_percent",
        "budget_monthly_minor",
        "metadata",
        "name",
        "rpm_limit",
    ]


def test_editing_an_expired_key_saves_other_changes_without_touching_its_past_expiry(client):
    organization = make_org()
    key, _secret = _key(organization, name="Expired")
    past = timezone.now().replace(second=0, microsecond=0) - timedelta(days=1)
    ApiKey.objects.for_organization(organization).filter(pk=key.pk).update(expires_at=past)
    _logged_in(client, organization, Role.DEVELOPER)
    url = reverse("org-key-edit", args=[organization.slug, key.public_id])
    initial = client.get(url).context["form"]
    data = {name: initial[name].value() for name in initial.fields}
    data = {name: ("" if value is None else value) for name, value in data.items()}
    data["expires_at"] = past.strftime("%Y-%m-%dT%H:%M")
    data["name"] = "Renamed"
    response = client.post(url, data)
    assert response.status_code == 302
    key.refresh_from_db()
    assert (key.name, key.expires_at) == ("Renamed", past)


def test_editing_a_revoked_key_is_refused_with_409_and_the_reason(client):
    organization = make_org()
    key, _secret = _key(organization, name="Gone")
    services.api_key_revoke(actor=Actor(user=_owner(organization)), key=key)
    _logged_in(client, organization, Role.DEVELOPER)
    url = reverse("org-key-edit", args=[organization.slug, key.public_id])
    page = client.get(url)
    assert page.status_code == 200
    assert "This key is revoked; create a new one." in page.content.decode()
    assert 'id="key-form"' not in page.content.decode()
    response = client.post(url, {"name": "Back", "budget_alert_percent": "80"})
    assert response.status_code == 409
    assert response.context["form"].non_field_errors() == ["This key is revoked; create a new one."]
    key.refresh_from_db()
    assert key.name == "Gone"


def test_invalid_edit_is_refused_with_400_and_changes_nothing(client):
    organization = make_org()
    key, _secret = _key(organization, name="Stable", allowed_ips=["10.0.0.0/8"])
    _logged_in(client, organization, Role.DEVELOPER)
    response = client.post(
        reverse("org-key-edit", args=[organization.slug, key.public_id]),
        {"name": "Changed", "allowed_ips": "300.1.1.1", "budget_alert_percent": "80"},
    )
    assert response.status_code == 400
    assert _form_error(response, "allowed_ips") == [
        "'300.1.1.1' is not an IPv4/IPv6 address or CIDR range: "
        "'300.1.1.1' does not appear to be an IPv4 or IPv6 network."
    ]
    key.refresh_from_db()
    assert (key.name, key.allowed_ips) == ("Stable", ["10.0.0.0/8"])


# --- Rotate ------------------------------------------------------------------------------


def test_rotate_page_says_when_the_current_secret_stops_for_each_grace(client):
    organization = make_org()
    key, secret = _key(organization)
    _logged_in(client, organization, Role.DEVELOPER)
    with time_machine.travel(datetime(2030, 5, 1, 9, 15, 30, tzinfo=UTC), tick=False):
        response = client.get(reverse("org-key-rotate", args=[organization.slug, key.public_id]))
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    assert [label for _value, label in response.context["form"].fields["grace"].choices] == [
        "Immediately — the current secret stops now",
        "1 hour — the current secret stops at 2030-05-01 10:15 UTC",
        "24 hours — the current secret stops at 2030-05-02 09:15 UTC",
        "7 days — the current secret stops at 2030-05-08 09:15 UTC",
    ]
    content = response.content.decode()
    assert f"{secret[:12]}…{secret[-4:]}" in content
    assert re.search(r'<input type="radio" name="grace" value="86400"[^>]* checked>', content)


def test_rotate_with_no_grace_leaves_only_the_new_secret_live(
    client, edge_redis, django_capture_on_commit_callbacks
):
    organization = make_org()
    key, old = _key(organization)
    _logged_in(client, organization, Role.DEVELOPER)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("org-key-rotate", args=[organization.slug, key.public_id]), {"grace": "0"}, follow=True
        )
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    new = _secret_on(response)
    assert new != old
    assert "stopped working now" in response.content.decode()
    live = list(key.secrets.live())
    assert [secret.secret_hash for secret in live] == [services.secret_hash(new)]
    assert _record(edge_redis, old)["secret_expires_at"] <= int(timezone.now().timestamp())
    assert _record(edge_redis, new)["secret_expires_at"] is None


def test_rotate_with_24_hours_grace_keeps_both_secrets_live_and_lists_the_stop_time(
    client, edge_redis, django_capture_on_commit_callbacks
):
    organization = make_org()
    key, old = _key(organization)
    _logged_in(client, organization, Role.DEVELOPER)
    before = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("org-key-rotate", args=[organization.slug, key.public_id]),
            {"grace": "86400"},
            follow=True,
        )
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    new = _secret_on(response)
    previous = key.secrets.get(secret_hash=services.secret_hash(old))
    assert before + timedelta(hours=24) <= previous.expires_at <= timezone.now() + timedelta(hours=24)
    stops = f"{previous.expires_at:%Y-%m-%d %H:%M} UTC"
    assert f'keeps working until <strong id="previous-stops">{stops}</strong>' in response.content.decode()
    assert sorted(secret.secret_hash for secret in key.secrets.live()) == sorted(
        [services.secret_hash(old), services.secret_hash(new)]
    )
    assert _record(edge_redis, old)["secret_expires_at"] == int(previous.expires_at.timestamp())

    listing = client.get(reverse("org-keys", args=[organization.slug])).content.decode()
    assert new not in listing and old not in listing
    assert f"{new[:12]}…{new[-4:]}" in listing
    assert f"{old[:12]}…{old[-4:]}" in listing
    assert f"stops at {previous.expires_at:%Y-%m-%d %H:%M} UTC" in listing


def test_rotating_a_revoked_key_is_refused_with_409(client):
    organization = make_org()
    key, _secret = _key(organization)
    services.api_key_revoke(actor=Actor(user=_owner(organization)), key=key)
    _logged_in(client, organization, Role.DEVELOPER)
    response = client.post(reverse("org-key-rotate", args=[organization.slug, key.public_id]), {"grace": "0"})
    assert response.status_code == 409
    assert response.context["form"].non_field_errors() == [
        "This key is revoked; only an active key can be rotated."
    ]
    assert not SECRET_FIELD.search(response.content.decode())
    assert key.secrets.count() == 1


def test_rotate_refuses_a_grace_that_is_not_offered(client):
    organization = make_org()
    key, _secret = _key(organization)
    _logged_in(client, organization, Role.DEVELOPER)
    response = client.post(
        reverse("org-key-rotate", args=[organization.slug, key.public_id]), {"grace": "99"}
    )
    assert response.status_code == 400
    assert _form_error(response, "grace") == [
        "Select a valid choice. 99 is not one of the available choices."
    ]
    assert key.secrets.count() == 1


# --- Revoke ------------------------------------------------------------------------------


def test_revoke_asks_first_then_stops_the_key_in_redis(
    client, edge_redis, django_capture_on_commit_callbacks
):
    organization = make_org()
    key, secret = _key(organization, name="Leaked")
    _logged_in(client, organization, Role.DEVELOPER)
    url = reverse("org-key-revoke", args=[organization.slug, key.public_id])
    confirm = client.get(url)
    assert confirm.status_code == 200
    assert "Revoke Leaked" in confirm.content.decode()
    key.refresh_from_db()
    assert key.revoked_at is None

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, follow=True)
    assert response.redirect_chain == [(reverse("org-keys", args=[organization.slug]), 302)]
    assert [str(message) for message in response.context["messages"]] == [
        "The key Leaked was revoked. Requests with it now fail."
    ]
    key.refresh_from_db()
    assert key.status == ApiKey.Status.REVOKED
    assert _record(edge_redis, secret)["status"] == "revoked"
    row = re.search(rf'<tr id="key-{key.public_id}">.*?</tr>', response.content.decode(), re.S).group(0)
    assert "Revoked" in row and "Rotate" not in row

    filtered = client.get(reverse("org-keys", args=[organization.slug]), {"status": "active"})
    assert key.public_id not in filtered.content.decode()
    filtered = client.get(reverse("org-keys", args=[organization.slug]), {"status": "revoked"})
    assert key.public_id in filtered.content.decode()


# --- Not yours looks like not there --------------------------------------------------------


@pytest.mark.parametrize("url_name", ["org-key-edit", "org-key-rotate", "org-key-revoke"])
@pytest.mark.parametrize("method", ["get", "post"])
def test_another_organizations_key_answers_404_like_a_missing_one(client, url_name, method):
    mine = make_org()
    theirs = make_org()
    their_key, _secret = _key(theirs, name="Theirs")
    client.force_login(_owner(mine))
    foreign = getattr(client, method)(
        reverse(url_name, args=[mine.slug, their_key.public_id]), {"grace": "0"}
    )
    missing = getattr(client, method)(reverse(url_name, args=[mine.slug, "key_doesnotexist"]), {"grace": "0"})
    assert foreign.status_code == missing.status_code == 404
    assert _without_csrf(foreign.content) == _without_csrf(missing.content)
    their_key.refresh_from_db()
    assert (their_key.revoked_at, their_key.secrets.count()) == (None, 1)


@pytest.mark.parametrize("method", ["get", "post"])
def test_another_organizations_service_account_answers_404_like_a_missing_one(client, method):
    mine = make_org()
    theirs = make_org()
    account = _service_account(theirs)
    client.force_login(_owner(mine))
    foreign = getattr(client, method)(
        reverse("org-service-account-revoke", args=[mine.slug, account.public_id])
    )
    missing = getattr(client, method)(
        reverse("org-service-account-revoke", args=[mine.slug, "sa_doesnotexist"])
    )
    assert foreign.status_code == missing.status_code == 404
    assert _without_csrf(foreign.content) == _without_csrf(missing.content)
    account.refresh_from_db()
    assert account.revoked_at is None


def test_key_list_shows_only_this_organizations_keys(client):
    mine = make_org()
    theirs = make_org()
    my_key, _ = _key(mine, name="Mine")
    their_key, _ = _key(theirs, name="Theirs")
    client.force_login(_owner(mine))
    content = client.get(reverse("org-keys", args=[mine.slug])).content.decode()
    assert my_key.public_id in content
    assert their_key.public_id not in content


# --- Service accounts ----------------------------------------------------------------------


def test_service_account_secret_is_shown_once_and_its_token_calls_the_api(client, settings):
    organization = make_org()
    owner = _owner(organization)
    _key(organization, name="Visible to the account")
    client.force_login(owner)
    response = client.post(
        reverse("org-service-accounts", args=[organization.slug]),
        {"name": "Deployer", "role": "developer"},
        follow=True,
    )
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    account = ServiceAccount.objects.for_organization(organization).get()
    assert (account.name, account.role, account.created_by) == ("Deployer", "developer", owner)
    client_secret = html.unescape(CLIENT_SECRET_FIELD.search(response.content.decode()).group(1))
    assert Client.objects.get(id=account.client_id_display).check_secret(client_secret)
    content = response.content.decode()
    assert f'value="{account.client_id_display}"' in content
    assert _code(response, "snippet-token") == (
        f"curl -u '{account.client_id_display}:{client_secret}' -d grant_type=client_credentials "
        f"{settings.SITE_URL}/identity/o/api/token"
    )
    assert _code(response, "snippet-api") == (
        f'curl {settings.SITE_URL}/api/v1/keys -H "Authorization: Bearer $ACCESS_TOKEN"'
    )

    listing = client.get(reverse("org-service-accounts", args=[organization.slug])).content.decode()
    assert account.client_id_display in listing
    assert escape(client_secret) not in listing

    # What the snippets do, done by a client without the console session.
    client.logout()
    basic = base64.b64encode(f"{account.client_id_display}:{client_secret}".encode()).decode()
    token = client.post(
        "/identity/o/api/token", {"grant_type": "client_credentials"}, HTTP_AUTHORIZATION=f"Basic {basic}"
    )
    assert token.status_code == 200, token.content
    access_token = token.json()["access_token"]
    keys = client.get("/api/v1/keys", HTTP_AUTHORIZATION=f"Bearer {access_token}")
    assert keys.status_code == 200, keys.content
    assert [item["name"] for item in keys.json()["results"]] == ["Visible to the account"]


def test_service_account_cannot_be_an_owner_and_bad_input_creates_nothing(client):
    organization = make_org()
    client.force_login(_owner(organization))
    url = reverse("org-service-accounts", args=[organization.slug])
    owner = client.post(url, {"name": "Root", "role": "owner"})
    assert owner.status_code == 400
    assert _form_error(owner, "role") == ["Select a valid choice. owner is not one of the available choices."]
    blank = client.post(url, {"name": "   ", "role": "viewer"})
    assert blank.status_code == 400
    assert _form_error(blank, "name") == ["This field is required."]
    assert ServiceAccount.objects.for_organization(organization).count() == 0
    assert Client.objects.count() == 0


def test_service_account_revoke_asks_first_then_deletes_its_client(client):
    organization = make_org()
    account = _service_account(organization, name="Old CI")
    client_id = account.client_id_display
    client.force_login(_owner(organization))
    url = reverse("org-service-account-revoke", args=[organization.slug, account.public_id])
    confirm = client.get(url)
    assert confirm.status_code == 200
    assert "Revoke Old CI" in confirm.content.decode()
    assert Client.objects.filter(id=client_id).exists()

    response = client.post(url, follow=True)
    assert response.redirect_chain == [(reverse("org-service-accounts", args=[organization.slug]), 302)]
    assert [str(message) for message in response.context["messages"]] == [
        "The service account Old CI was revoked."
    ]
    account.refresh_from_db()
    assert account.revoked_at is not None
    assert not Client.objects.filter(id=client_id).exists()
    row = re.search(rf'<tr id="sa-{account.public_id}">.*?</tr>', response.content.decode(), re.S).group(0)
    assert account.revoked_at.strftime("%Y-%m-%d %H:%M") in row
    assert "Revoke" not in row


def test_service_accounts_link_sits_after_api_keys_in_the_sidebar(client):
    organization = make_org()
    user = add_member(organization, Role.VIEWER)
    client.force_login(user)
    content = client.get(reverse("org-service-accounts", args=[organization.slug])).content.decode()
    links = re.findall(r'<aside class="sidenav">.*?</aside>', content, re.S)[0]
    names = re.findall(r">([^<]+)</a></li>", links)
    assert names[:3] == ["Dashboard", "API keys", "Service accounts"]
    assert 'aria-current="page">Service accounts<' in links
