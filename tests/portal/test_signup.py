import re

import pytest
from allauth.account.models import EmailAddress
from django.core import mail

from portal.models import AuditEvent, Membership, Organization, User
from portal.roles import Role

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-and-unusual-passphrase-7"


def test_signup_verify_create_organization_makes_owner(client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/accounts/signup/",
            {"email": "Ada@Example.com", "password1": PASSWORD, "password2": PASSWORD},
        )
    assert response.status_code == 302
    assert response["Location"] == "/accounts/confirm-email/"
    user = User.objects.get()
    assert user.email == "ada@example.com"
    assert EmailAddress.objects.get(user=user).verified is False

    # Not verified yet: the console refuses and login is refused.
    assert client.get("/").status_code == 302
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["ada@example.com"]
    link = re.search(r"http://testserver(/accounts/confirm-email/[^\s]+/)", mail.outbox[0].body).group(1)

    assert client.get(link).status_code == 200
    response = client.post(link)
    assert response.status_code == 302
    assert EmailAddress.objects.get(user=user).verified is True

    # Logged in, no organization yet: led to create one.
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/orgs/new/"
    page = client.get("/orgs/new/")
    assert b"Create your first organization" in page.content

    response = client.post("/orgs/new/", {"name": "Acme AI", "slug": ""})
    assert response.status_code == 302
    assert response["Location"] == "/o/acme-ai/"
    organization = Organization.objects.get()
    assert (organization.name, organization.slug, organization.status) == ("Acme AI", "acme-ai", "active")
    membership = Membership.objects.for_organization(organization).get()
    assert (membership.user, membership.role) == (user, Role.OWNER)
    assert AuditEvent.objects.filter(organization=organization, action="organization.created").count() == 1
    assert client.get("/o/acme-ai/").status_code == 200


def test_unverified_user_cannot_log_in(client):
    client.post(
        "/accounts/signup/", {"email": "bo@example.com", "password1": PASSWORD, "password2": PASSWORD}
    )
    client.logout()
    response = client.post("/accounts/login/", {"login": "bo@example.com", "password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == "/accounts/confirm-email/"
    assert "_auth_user_id" not in client.session


def test_organization_slug_taken_is_refused_with_message(client):
    from tests.factories import make_org, make_user

    make_org(name="Taken")
    user = make_user()
    client.force_login(user)
    response = client.post("/orgs/new/", {"name": "Other", "slug": "taken"})
    assert response.status_code == 400
    assert b"That slug is taken; choose another." in response.content
    assert Organization.objects.count() == 1


def test_password_reset_sends_link_and_sets_new_password(client, django_capture_on_commit_callbacks):
    from tests.factories import make_user

    make_user("reset@example.com")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/accounts/password/reset/", {"email": "reset@example.com"})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    link = re.search(r"http://testserver(/accounts/password/reset/key/[^\s]+/)", mail.outbox[0].body).group(1)
    response = client.get(link)
    assert response.status_code == 302  # allauth moves the key into the session
    new = "another-long-passphrase-99"
    response = client.post(response["Location"], {"password1": new, "password2": new})
    assert response.status_code == 302
    assert User.objects.get(email="reset@example.com").check_password(new)
    assert AuditEvent.objects.filter(action="user.password_changed").count() == 1
