import re

import pytest
from django.urls import reverse

from portal import services
from portal.audit import Actor
from portal.errors import Conflict, NotAllowed
from portal.models import AuditEvent, Membership
from portal.roles import Role
from tests.factories import add_member, make_org, make_user

pytestmark = pytest.mark.django_db


def _membership(organization, user):
    return Membership.objects.for_organization(organization).get(user=user)


def test_last_owner_cannot_be_demoted_or_removed():
    owner = make_user()
    organization = make_org(owner)
    membership = _membership(organization, owner)
    with pytest.raises(Conflict, match="The last owner cannot be demoted"):
        services.membership_change_role(actor=Actor(user=owner), membership=membership, role=Role.ADMIN)
    with pytest.raises(Conflict, match="The last owner cannot be removed"):
        services.membership_remove(actor=Actor(user=owner), membership=membership)
    assert _membership(organization, owner).role == Role.OWNER


def test_last_owner_protection_through_the_console(client):
    owner = make_user()
    organization = make_org(owner)
    membership = _membership(organization, owner)
    client.force_login(owner)
    response = client.post(
        f"/o/{organization.slug}/members/{membership.pk}/role/", {"role": "viewer"}, follow=True
    )
    assert b"The last owner cannot be demoted. Make someone else an owner first." in response.content
    assert _membership(organization, owner).role == Role.OWNER


def test_owner_can_be_demoted_when_another_owner_exists():
    owner = make_user()
    organization = make_org(owner)
    second = add_member(organization, Role.OWNER)
    services.membership_change_role(
        actor=Actor(user=second), membership=_membership(organization, owner), role=Role.ADMIN
    )
    assert _membership(organization, owner).role == Role.ADMIN
    event = AuditEvent.objects.get(action="member.role_changed")
    assert event.metadata == {"email": owner.email, "from": "owner", "to": "admin"}
    assert event.actor == second


def test_only_owners_make_owners():
    organization = make_org()
    admin = add_member(organization, Role.ADMIN)
    developer = add_member(organization, Role.DEVELOPER)
    with pytest.raises(NotAllowed, match="Only an owner can make or change an owner."):
        services.membership_change_role(
            actor=Actor(user=admin), membership=_membership(organization, developer), role=Role.OWNER
        )
    assert _membership(organization, developer).role == Role.DEVELOPER


def test_admin_cannot_remove_an_owner():
    owner = make_user()
    organization = make_org(owner)
    add_member(organization, Role.OWNER)
    admin = add_member(organization, Role.ADMIN)
    with pytest.raises(NotAllowed, match="Only an owner can remove an owner."):
        services.membership_remove(actor=Actor(user=admin), membership=_membership(organization, owner))


def test_removing_a_member_is_audited(client):
    owner = make_user()
    organization = make_org(owner)
    viewer = add_member(organization, Role.VIEWER)
    client.force_login(owner)
    response = client.post(f"/o/{organization.slug}/members/{_membership(organization, viewer).pk}/remove/")
    assert response.status_code == 302
    assert not Membership.objects.for_organization(organization).filter(user=viewer).exists()
    event = AuditEvent.objects.get(action="member.removed")
    assert (event.organization, event.actor, event.target_id) == (organization, owner, str(viewer.pk))
    assert event.ip_address == "127.0.0.1"


def _member_row(content: bytes, membership) -> str:
    return re.search(rf'<tr id="member-{membership.pk}">(.*?)</tr>', content.decode(), re.S).group(1)


def test_members_page_shows_each_role_once_and_styles_and_confirms_the_destructive_actions(client):
    owner = make_user("owner@example.com")
    organization = make_org(owner, name="Acme AI")
    developer = add_member(organization, Role.DEVELOPER, make_user("dev@example.com"))
    invitation, _token = services.invitation_create(
        actor=Actor(user=owner), organization=organization, email="new@example.com", role=Role.VIEWER
    )
    client.force_login(owner)

    response = client.get(reverse("org-members", args=[organization.slug]))

    assert response.status_code == 200
    row = _member_row(response.content, _membership(organization, developer))
    assert row.count("Developer") == 1
    assert '<option value="developer" selected>Developer</option>' in row
    assert (
        f'<form method="post" action="/o/{organization.slug}/members/{_membership(organization, developer).pk}'
        '/remove/" class="inline" data-confirm="Remove dev@example.com from Acme AI?">'
    ) in row
    assert '<button type="submit" class="small danger outline">Remove</button>' in row
    content = response.content.decode()
    assert (
        f'<form method="post" action="/o/{organization.slug}/invitations/{invitation.pk}/revoke/" class="inline" '
        'data-confirm="Revoke the invitation of new@example.com?">'
    ) in content
    assert '<button class="small danger outline" type="submit">Revoke</button>' in content


def test_a_member_who_cannot_manage_sees_the_role_as_text_once(client):
    organization = make_org(make_user("owner@example.com"))
    viewer = add_member(organization, Role.VIEWER)
    client.force_login(viewer)

    response = client.get(reverse("org-members", args=[organization.slug]))

    row = _member_row(response.content, _membership(organization, viewer))
    assert re.findall(r"<td>([^<]*)</td>", row)[0] == "Viewer"
    assert "<select" not in row
    assert row.count("Viewer") == 1


def test_the_dashboard_says_your_role(client):
    owner = make_user()
    organization = make_org(owner)
    client.force_login(owner)

    response = client.get(reverse("org-dashboard", args=[organization.slug]))

    assert b'<p class="muted">Your role: Owner \xc2\xb7 status Active</p>' in response.content
