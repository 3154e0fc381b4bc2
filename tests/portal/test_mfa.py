"""Two-factor authentication: TOTP and recovery codes through allauth's own views."""

from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pyotp
import pytest
import time_machine
from allauth.mfa.models import Authenticator
from django.urls import get_resolver

from portal import services
from portal.audit import Actor
from portal.models import AuditEvent, Membership
from portal.roles import Role
from tests.factories import PASSWORD, add_member, make_org, make_user

pytestmark = pytest.mark.django_db

MFA_STAGE = "/accounts/2fa/authenticate/"
ACTIVATE_TOTP = "/accounts/2fa/totp/activate/"
GENERATE_RECOVERY_CODES = "/accounts/2fa/recovery-codes/generate/"
INCORRECT_CODE = b"Incorrect code."
# Mid-period, so that a frozen clock plus one period is always the next TOTP code.
T0 = datetime(2026, 3, 2, 9, 0, 10, tzinfo=UTC)


@pytest.fixture
def clock():
    """Freeze time, so a test decides when the next TOTP period starts."""
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


def password_login(client, email: str):
    return client.post("/accounts/login/", {"login": email, "password": PASSWORD})


def logged_in_user_id(client) -> str | None:
    return client.session.get("_auth_user_id")


def reauthenticate(client, path: str) -> None:
    """Open a sensitive page, which allauth guards by asking for the password again."""
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/reauthenticate/?next={quote(path, safe='')}"
    response = client.post(response["Location"], {"password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == path


def activate_totp(client, capture_on_commit, email: str) -> pyotp.TOTP:
    """Activate TOTP for the logged-in user the way a person does; return their authenticator app."""
    reauthenticate(client, ACTIVATE_TOTP)
    page = client.get(ACTIVATE_TOTP)
    assert page.status_code == 200
    # What an authenticator app reads from the QR code.
    app = pyotp.parse_uri(page.context["totp_url"])
    assert (app.issuer, app.name, app.secret) == ("Tollgate", email, page.context["form"].secret)
    with capture_on_commit(execute=True):
        response = client.post(ACTIVATE_TOTP, {"code": app.now()})
    assert response.status_code == 302
    assert response["Location"] == "/accounts/2fa/recovery-codes/"
    return app


def recovery_codes(client) -> list[str]:
    page = client.get("/accounts/2fa/recovery-codes/")
    assert page.status_code == 200
    return list(page.context["unused_codes"])


def other_code(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


@pytest.fixture
def mfa_user(client, clock, django_capture_on_commit_callbacks):
    """Return (user, authenticator app, recovery codes) for a logged-out user with TOTP on."""
    user = make_user("mfa@example.com")
    assert password_login(client, user.email).status_code == 302
    app = activate_totp(client, django_capture_on_commit_callbacks, user.email)
    codes = recovery_codes(client)
    assert client.post("/accounts/logout/").status_code == 302
    assert logged_in_user_id(client) is None
    clock.shift(timedelta(seconds=30))
    return user, app, codes


def test_activating_totp_records_audit_events_for_totp_and_recovery_codes(
    client, clock, django_capture_on_commit_callbacks
):
    user = make_user("ada@example.com")
    assert password_login(client, user.email).status_code == 302

    activate_totp(client, django_capture_on_commit_callbacks, user.email)

    assert set(Authenticator.objects.filter(user=user).values_list("type", flat=True)) == {
        Authenticator.Type.TOTP,
        Authenticator.Type.RECOVERY_CODES,
    }
    events = AuditEvent.objects.filter(action="mfa.enabled").order_by("id")
    assert [(event.actor, event.target_id, event.metadata) for event in events] == [
        (user, str(user.pk), {"type": "totp"}),
        (user, str(user.pk), {"type": "recovery_codes"}),
    ]
    assert len(recovery_codes(client)) == 10


def test_password_login_with_totp_waits_for_the_code_and_refuses_a_wrong_one(client, mfa_user):
    user, app, _codes = mfa_user

    response = password_login(client, user.email)
    assert response.status_code == 302
    assert response["Location"] == MFA_STAGE
    assert logged_in_user_id(client) is None
    assert client.get("/")["Location"] == "/accounts/login/?next=/"

    logins = AuditEvent.objects.filter(action="user.login", actor=user)
    logins_before = logins.count()
    response = client.post(MFA_STAGE, {"code": other_code(app.now())})
    assert response.status_code == 200
    assert INCORRECT_CODE in response.content
    assert logged_in_user_id(client) is None
    assert logins.count() == logins_before

    response = client.post(MFA_STAGE, {"code": app.now()})
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert logged_in_user_id(client) == str(user.pk)
    assert logins.count() == logins_before + 1
    assert logins.first().metadata == {"method": "password"}


def test_totp_code_is_refused_a_second_time_within_its_period(client, clock, mfa_user):
    user, app, _codes = mfa_user
    code = app.now()
    password_login(client, user.email)
    assert client.post(MFA_STAGE, {"code": code}).status_code == 302
    assert client.post("/accounts/logout/").status_code == 302

    assert password_login(client, user.email)["Location"] == MFA_STAGE
    response = client.post(MFA_STAGE, {"code": code})
    assert response.status_code == 200
    assert INCORRECT_CODE in response.content
    assert logged_in_user_id(client) is None

    clock.shift(timedelta(seconds=30))
    assert app.now() != code
    response = client.post(MFA_STAGE, {"code": app.now()})
    assert response.status_code == 302
    assert logged_in_user_id(client) == str(user.pk)


def test_recovery_code_logs_in_once_and_is_refused_the_second_time(client, mfa_user):
    user, _app, codes = mfa_user
    assert len(codes) == 10

    assert password_login(client, user.email)["Location"] == MFA_STAGE
    response = client.post(MFA_STAGE, {"code": codes[0]})
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert logged_in_user_id(client) == str(user.pk)
    assert Authenticator.objects.get(user=user, type="recovery_codes").wrap().get_unused_codes() == codes[1:]
    assert client.post("/accounts/logout/").status_code == 302

    assert password_login(client, user.email)["Location"] == MFA_STAGE
    response = client.post(MFA_STAGE, {"code": codes[0]})
    assert response.status_code == 200
    assert INCORRECT_CODE in response.content
    assert logged_in_user_id(client) is None

    response = client.post(MFA_STAGE, {"code": codes[1]})
    assert response.status_code == 302
    assert logged_in_user_id(client) == str(user.pk)


def test_regenerated_recovery_codes_replace_the_old_ones_and_are_audited(
    client, mfa_user, django_capture_on_commit_callbacks
):
    user, app, old_codes = mfa_user
    password_login(client, user.email)
    assert client.post(MFA_STAGE, {"code": app.now()}).status_code == 302

    reauthenticate(client, GENERATE_RECOVERY_CODES)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(GENERATE_RECOVERY_CODES)
    assert response.status_code == 302
    assert response["Location"] == "/accounts/2fa/recovery-codes/"
    new_codes = recovery_codes(client)
    assert len(new_codes) == 10
    assert set(new_codes).isdisjoint(old_codes)
    event = AuditEvent.objects.get(action="mfa.recovery_codes_regenerated")
    assert (event.actor, event.metadata) == (user, {"type": "recovery_codes"})
    assert client.post("/accounts/logout/").status_code == 302

    password_login(client, user.email)
    response = client.post(MFA_STAGE, {"code": old_codes[2]})
    assert response.status_code == 200
    assert INCORRECT_CODE in response.content
    assert client.post(MFA_STAGE, {"code": new_codes[2]}).status_code == 302
    assert logged_in_user_id(client) == str(user.pk)


# --- Organizations that require two-factor authentication ------------------------------


def mfa_required_message(organization) -> bytes:
    return (
        f'<p id="mfa-required-message">{organization.name} requires every member to use two-factor '
        "authentication. Set up an authenticator app to continue.</p>"
    ).encode()


def org_page_paths(organization) -> list[str]:
    """Every console page of an organization that takes no other argument."""
    paths = []
    for pattern in get_resolver().url_patterns:
        if str(pattern.pattern) != "o/<slug:org_slug>/":
            continue
        for child in pattern.url_patterns:
            if not child.pattern.converters:
                paths.append(f"/o/{organization.slug}/{child.pattern}")
    return sorted(set(paths))


def test_toggling_require_mfa_is_audited_with_the_change():
    owner = make_user()
    organization = make_org(owner, name="Acme AI")

    services.organization_update(
        actor=Actor(user=owner), organization=organization, name="Acme AI", require_mfa=True
    )
    services.organization_update(
        actor=Actor(user=owner), organization=organization, name="Acme AI", require_mfa=False
    )

    events = AuditEvent.objects.filter(organization=organization, action="organization.updated").order_by(
        "id"
    )
    assert [(event.actor, event.metadata) for event in events] == [
        (owner, {"changes": {"require_mfa": [False, True]}}),
        (owner, {"changes": {"require_mfa": [True, False]}}),
    ]
    organization.refresh_from_db()
    assert organization.require_mfa is False


def test_member_without_mfa_is_refused_every_page_until_totp_is_active(
    client, clock, django_capture_on_commit_callbacks
):
    owner = make_user()
    organization = make_org(owner, name="Acme AI")
    member = add_member(organization, Role.DEVELOPER)
    organization = services.organization_update(
        actor=Actor(user=owner), organization=organization, name="Acme AI", require_mfa=True
    )
    assert password_login(client, member.email).status_code == 302

    paths = org_page_paths(organization)
    assert {"/o/acme-ai/", "/o/acme-ai/members/", "/o/acme-ai/settings/", "/o/acme-ai/audit/"} <= set(paths)
    for path in paths:
        response = client.get(path)
        assert (path, response.status_code) == (path, 403)
        assert mfa_required_message(organization) in response.content
        assert b'href="/accounts/2fa/totp/activate/"' in response.content

    # Writes are refused the same way, before any permission or form is looked at.
    owner_membership = Membership.objects.for_organization(organization).get(user=owner)
    response = client.post(f"/o/acme-ai/members/{owner_membership.pk}/role/", {"role": Role.VIEWER})
    assert response.status_code == 403
    assert mfa_required_message(organization) in response.content
    owner_membership.refresh_from_db()
    assert owner_membership.role == Role.OWNER

    activate_totp(client, django_capture_on_commit_callbacks, member.email)

    response = client.get("/o/acme-ai/")
    assert response.status_code == 200
    assert mfa_required_message(organization) not in response.content
    assert client.get("/o/acme-ai/members/").status_code == 200
