import re
from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from portal import services
from portal.audit import Actor
from portal.errors import NotAllowed
from portal.models import AuditEvent, Invitation, Membership
from portal.roles import Role
from tests.factories import PASSWORD, add_member, make_org, make_user

pytestmark = pytest.mark.django_db


def _owner(organization):
    return Membership.objects.for_organization(organization).get(role=Role.OWNER).user


def _invite(client, organization, email, role, capture):
    client.force_login(_owner(organization))
    with capture(execute=True):
        response = client.post(f"/o/{organization.slug}/members/", {"email": email, "role": role})
    assert response.status_code == 302
    body = mail.outbox[-1].body
    return re.search(r"http://testserver(/invitations/[^\s]+/)", body).group(1)


def test_invitation_accepted_by_a_new_account_joins_with_the_role(client, django_capture_on_commit_callbacks):
    organization = make_org(name="Acme")
    link = _invite(
        client, organization, "New@Example.com", Role.DEVELOPER, django_capture_on_commit_callbacks
    )
    assert mail.outbox[-1].to == ["new@example.com"]
    assert mail.outbox[-1].subject == "[Tollgate] You are invited to join Acme"
    client.logout()

    page = client.get(link)
    assert page.status_code == 200
    assert b"Join Acme" in page.content
    # The link proved the address: signing up with it needs no further verification email.
    outbox_before = len(mail.outbox)
    response = client.post(
        f"/accounts/signup/?next={link}",
        {"email": "new@example.com", "password1": PASSWORD, "password2": PASSWORD, "next": link},
    )
    assert response.status_code == 302
    assert response["Location"] == link
    assert len(mail.outbox) == outbox_before
    response = client.post(link)
    assert response.status_code == 302
    assert response["Location"] == f"/o/{organization.slug}/"

    membership = Membership.objects.for_organization(organization).get(user__email="new@example.com")
    assert membership.role == Role.DEVELOPER
    invitation = Invitation.objects.for_organization(organization).get()
    assert invitation.accepted_by == membership.user
    assert invitation.accepted_at is not None
    assert AuditEvent.objects.filter(organization=organization, action="member.joined").count() == 1


def test_invitation_accepted_by_an_existing_account(client, django_capture_on_commit_callbacks):
    organization = make_org()
    existing = make_user("old@example.com")
    link = _invite(client, organization, "old@example.com", Role.BILLING, django_capture_on_commit_callbacks)
    client.force_login(existing)
    response = client.post(link)
    assert response.status_code == 302
    assert Membership.objects.for_organization(organization).get(user=existing).role == Role.BILLING


def test_reused_invitation_link_is_refused_with_message(client, django_capture_on_commit_callbacks):
    organization = make_org()
    user = make_user("twice@example.com")
    link = _invite(client, organization, "twice@example.com", Role.VIEWER, django_capture_on_commit_callbacks)
    client.force_login(user)
    assert client.post(link).status_code == 302
    again = client.post(link)
    assert again.status_code == 400
    assert b"This invitation was already used." in again.content
    assert Membership.objects.for_organization(organization).filter(user=user).count() == 1


def test_expired_invitation_is_refused_with_message(client, django_capture_on_commit_callbacks):
    organization = make_org()
    user = make_user("late@example.com")
    link = _invite(client, organization, "late@example.com", Role.VIEWER, django_capture_on_commit_callbacks)
    Invitation.objects.for_organization(organization).update(expires_at=timezone.now() - timedelta(seconds=1))
    client.force_login(user)
    for response in (client.get(link), client.post(link)):
        assert response.status_code == 400
        assert b"This invitation has expired. Ask for a new one." in response.content
    assert not Membership.objects.for_organization(organization).filter(user=user).exists()


def test_revoked_invitation_is_refused_with_message(client, django_capture_on_commit_callbacks):
    organization = make_org()
    user = make_user("gone@example.com")
    link = _invite(client, organization, "gone@example.com", Role.VIEWER, django_capture_on_commit_callbacks)
    invitation = Invitation.objects.for_organization(organization).get()
    response = client.post(f"/o/{organization.slug}/invitations/{invitation.pk}/revoke/")
    assert response.status_code == 302
    client.force_login(user)
    response = client.post(link)
    assert response.status_code == 400
    assert b"This invitation was revoked. Ask for a new one." in response.content
    assert (
        AuditEvent.objects.filter(organization=organization, action="member.invitation_revoked").count() == 1
    )


def test_resend_issues_a_new_link_and_the_old_one_stops(client, django_capture_on_commit_callbacks):
    organization = make_org()
    user = make_user("again@example.com")
    old_link = _invite(
        client, organization, "again@example.com", Role.VIEWER, django_capture_on_commit_callbacks
    )
    invitation = Invitation.objects.for_organization(organization).get()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/o/{organization.slug}/invitations/{invitation.pk}/resend/")
    assert response.status_code == 302
    new_link = re.search(r"http://testserver(/invitations/[^\s]+/)", mail.outbox[-1].body).group(1)
    assert new_link != old_link
    client.force_login(user)
    assert client.post(old_link).status_code == 400
    assert client.post(new_link).status_code == 302


def test_invitation_for_another_address_is_refused(client, django_capture_on_commit_callbacks):
    organization = make_org()
    stranger = make_user("stranger@example.com")
    link = _invite(client, organization, "meant@example.com", Role.VIEWER, django_capture_on_commit_callbacks)
    client.force_login(stranger)
    response = client.post(link)
    assert response.status_code == 400
    assert b"This invitation is for meant@example.com." in response.content
    assert Invitation.objects.for_organization(organization).get().accepted_at is None


def test_unknown_invitation_token_is_refused(client):
    response = client.get("/invitations/not-a-real-token/")
    assert response.status_code == 400
    assert b"This invitation link is not valid. Ask for a new one." in response.content


def test_only_owners_invite_owners():
    organization = make_org()
    admin = add_member(organization, Role.ADMIN)
    with pytest.raises(NotAllowed, match="Only an owner can invite an owner."):
        services.invitation_create(
            actor=Actor(user=admin), organization=organization, email="boss@example.com", role=Role.OWNER
        )
    assert Invitation.objects.for_organization(organization).count() == 0


def test_inviting_an_existing_member_is_refused(client):
    organization = make_org()
    member = add_member(organization, Role.VIEWER)
    client.force_login(_owner(organization))
    response = client.post(f"/o/{organization.slug}/members/", {"email": member.email, "role": "viewer"})
    assert response.status_code == 400
    assert f"{member.email} is already a member.".encode() in response.content
    assert Invitation.objects.for_organization(organization).count() == 0
