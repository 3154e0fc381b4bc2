"""Every console page asks the role table: each role gets exactly what the table says."""

import re

import pytest
from django.urls import reverse

from portal.models import Invitation, Membership
from portal.roles import ROLE_PERMISSIONS, Perm, Role
from portal.tenancy import TenantScopeError
from tests.factories import add_member, make_org, make_user

pytestmark = pytest.mark.django_db

# (url name, permission needed for GET); None means any member.
CONSOLE_PAGES = [
    ("org-dashboard", None),
    ("org-members", Perm.MEMBERS_VIEW),
    ("org-audit", Perm.AUDIT_VIEW),
    ("org-audit-export", Perm.AUDIT_VIEW),
    ("org-settings", Perm.ORG_MANAGE),
    ("org-keys", Perm.KEYS_VIEW),
    ("org-usage", Perm.USAGE_VIEW),
    ("org-usage-requests", Perm.USAGE_VIEW),
    ("org-billing", Perm.BILLING_VIEW),
]


def _without_csrf(content: bytes) -> bytes:
    """Drop the per-response masked CSRF tokens, the only part that may differ."""
    content = re.sub(rb'"X-CSRFToken": "[^"]+"', b"", content)
    return re.sub(rb'name="csrfmiddlewaretoken" value="[^"]+"', b"", content)


def _expected(role: str, permission: str | None) -> int:
    return 200 if permission is None or permission in ROLE_PERMISSIONS[role] else 403


@pytest.mark.parametrize("role", Role.values)
@pytest.mark.parametrize(("url_name", "permission"), CONSOLE_PAGES)
def test_each_role_reaches_exactly_the_pages_its_permissions_allow(client, role, url_name, permission):
    organization = make_org()
    user = add_member(organization, role)
    client.force_login(user)
    response = client.get(reverse(url_name, args=[organization.slug]))
    assert response.status_code == _expected(role, permission)
    if response.status_code == 403:
        assert b"You can't do that here" in response.content


@pytest.mark.parametrize("role", Role.values)
def test_each_role_may_invite_exactly_when_it_has_members_manage(client, role):
    organization = make_org()
    user = add_member(organization, role)
    client.force_login(user)
    response = client.post(
        reverse("org-members", args=[organization.slug]), {"email": "new@example.com", "role": "viewer"}
    )
    allowed = Perm.MEMBERS_MANAGE in ROLE_PERMISSIONS[role]
    assert response.status_code == (302 if allowed else 403)
    assert Invitation.objects.for_organization(organization).count() == (1 if allowed else 0)


@pytest.mark.parametrize("role", Role.values)
def test_each_role_may_change_settings_exactly_when_it_has_org_manage(client, role):
    organization = make_org(name="Before")
    user = add_member(organization, role)
    client.force_login(user)
    response = client.post(reverse("org-settings", args=[organization.slug]), {"name": "After"})
    allowed = Perm.ORG_MANAGE in ROLE_PERMISSIONS[role]
    assert response.status_code == (302 if allowed else 403)
    organization.refresh_from_db()
    assert organization.name == ("After" if allowed else "Before")


@pytest.mark.parametrize(("url_name", "permission"), CONSOLE_PAGES)
def test_another_organizations_pages_answer_404_like_a_missing_one(client, url_name, permission):
    mine = make_org()
    theirs = make_org()
    client.force_login(Membership.objects.for_organization(mine).get().user)
    foreign = client.get(reverse(url_name, args=[theirs.slug]))
    missing = client.get(reverse(url_name, args=["no-such-org"]))
    assert foreign.status_code == missing.status_code == 404
    assert _without_csrf(foreign.content) == _without_csrf(missing.content)


def test_another_organizations_member_and_invitation_answer_404(client):
    mine = make_org()
    theirs = make_org()
    their_member = add_member(theirs, Role.VIEWER)
    their_membership = Membership.objects.for_organization(theirs).get(user=their_member)
    client.force_login(Membership.objects.for_organization(mine).get().user)
    from portal import services
    from portal.audit import Actor

    owner_of_theirs = Membership.objects.for_organization(theirs).get(role=Role.OWNER).user
    invitation, _ = services.invitation_create(
        actor=Actor(user=owner_of_theirs), organization=theirs, email="x@example.com", role="viewer"
    )
    urls = [
        reverse("org-member-role", args=[mine.slug, their_membership.pk]),
        reverse("org-member-remove", args=[mine.slug, their_membership.pk]),
        reverse("org-invitation-revoke", args=[mine.slug, invitation.pk]),
        reverse("org-invitation-resend", args=[mine.slug, invitation.pk]),
    ]
    for url in urls:
        assert client.post(url, {"role": "owner"}).status_code == 404, url
    their_membership.refresh_from_db()
    invitation.refresh_from_db()
    assert their_membership.role == Role.VIEWER
    assert invitation.revoked_at is None


def test_anonymous_user_is_sent_to_login(client):
    organization = make_org()
    response = client.get(reverse("org-members", args=[organization.slug]))
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")


def test_tenant_queryset_without_organization_fails_closed():
    organization = make_org()
    with pytest.raises(TenantScopeError):
        list(Membership.objects.all())
    with pytest.raises(TenantScopeError):
        Membership.objects.filter(role=Role.OWNER).count()
    with pytest.raises(TenantScopeError):
        Membership.objects.filter(role=Role.OWNER).exists()
    with pytest.raises(TenantScopeError):
        Membership.objects.update(role=Role.VIEWER)
    assert Membership.objects.for_organization(organization).count() == 1
    assert Membership.objects.all_tenants().count() == 1


def test_user_in_two_organizations_sees_both_in_the_switcher(client):
    user = make_user()
    first = make_org(user, name="First Co")
    second = make_org(user, name="Second Co")
    client.force_login(user)
    page = client.get(reverse("org-dashboard", args=[first.slug])).content.decode()
    assert f'href="/o/{first.slug}/"' in page and f'href="/o/{second.slug}/"' in page
    client.get(reverse("org-dashboard", args=[second.slug]))
    response = client.get("/")
    assert response["Location"] == f"/o/{second.slug}/"
