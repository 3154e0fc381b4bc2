"""Invitations in the browser: an owner invites, the invitee signs up and joins."""

from datetime import timedelta

import pytest
from allauth.account.models import EmailAddress
from django.utils import timezone
from playwright.sync_api import expect

from portal import services
from portal.audit import Actor
from portal.models import AuditEvent, Invitation, Membership, User
from portal.roles import Role
from tests.e2e.conftest import link_in_email, log_in
from tests.factories import PASSWORD, make_org, make_user

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_owner_invites_developer_who_signs_up_and_joins(new_context, live_server, mailoutbox):
    base = live_server.url
    owner = make_user("owner@example.com")
    organization = make_org(owner, name="Acme AI")

    owner_page = new_context().new_page()
    log_in(owner_page, base, "owner@example.com")
    expect(owner_page).to_have_url(f"{base}/o/acme-ai/")
    owner_page.locator("aside.sidenav").get_by_role("link", name="Members").click()
    expect(owner_page.get_by_role("heading", level=1)).to_have_text("Members")
    invite_form = owner_page.locator("#invite-form")
    invite_form.get_by_label("Email").fill("dev@example.com")
    invite_form.get_by_label("Role").select_option(label="Developer")
    invite_form.get_by_role("button", name="Send invitation").click()

    expect(owner_page.get_by_role("status")).to_have_text("Invitation sent to dev@example.com.")
    invitation = Invitation.objects.for_organization(organization).get()
    row = owner_page.locator(f"#invitation-{invitation.pk}")
    expect(row.locator("td")).to_have_text(
        [
            "dev@example.com",
            "Developer",
            "pending",
            invitation.expires_at.strftime("%Y-%m-%d %H:%M"),
            "Re-send Revoke",
        ]
    )
    assert [message.to for message in mailoutbox] == [["dev@example.com"]]
    assert mailoutbox[0].subject == "[Tollgate] You are invited to join Acme AI"

    invitee = new_context().new_page()
    invitation_url = link_in_email(mailoutbox[0], "/invitations/", base)
    invitee.goto(invitation_url)
    expect(invitee.get_by_role("heading", level=1)).to_have_text("Join Acme AI")
    expect(invitee.get_by_role("main")).to_contain_text(
        "You are invited to join Acme AI as Developer by owner@example.com."
    )
    invitee.get_by_role("button", name="Create account").click()
    expect(invitee.get_by_role("heading", level=1)).to_have_text("Sign Up")
    invitee.get_by_label("Email").fill("dev@example.com")
    invitee.get_by_label("Password:", exact=True).fill(PASSWORD)
    invitee.get_by_label("Password (again):", exact=True).fill(PASSWORD)
    invitee.get_by_role("button", name="Sign Up").click()

    # The invitation link proved the address: no verification email, straight back to it.
    expect(invitee).to_have_url(invitation_url)
    expect(invitee.locator("header")).to_contain_text("dev@example.com")
    developer = User.objects.get(email="dev@example.com")
    assert EmailAddress.objects.get(user=developer).verified is True
    assert len(mailoutbox) == 1

    invitee.get_by_role("button", name="Accept invitation").click()
    expect(invitee).to_have_url(f"{base}/o/acme-ai/")
    expect(invitee.get_by_role("status")).to_have_text("You joined Acme AI as Developer.")
    expect(invitee.get_by_role("main")).to_contain_text("Your role: Developer")

    invitee.locator("aside.sidenav").get_by_role("link", name="Members").click()
    # Members are listed by email address.
    expect(invitee.locator("tbody tr td:first-child")).to_have_text(
        ["dev@example.com (you)", "owner@example.com"]
    )
    expect(invitee.locator("#invite-form")).to_have_count(0)
    expect(invitee.get_by_role("button", name="Change role")).to_have_count(0)

    response = invitee.goto(f"{base}/o/acme-ai/settings/")
    assert response.status == 403
    expect(invitee.get_by_role("heading", level=1)).to_have_text("You can't do that here")
    expect(invitee.get_by_role("main")).to_contain_text("Your role (Developer) cannot do this.")
    # The refusal keeps the organization's navigation: the developer's pages, Settings not among them.
    expect(invitee.locator("#org-switcher summary")).to_have_text("Acme AI")
    expect(invitee.locator("aside.sidenav a")).to_have_text(
        ["Dashboard", "API keys", "Service accounts", "Usage", "Requests", "Members"]
    )
    expect(invitee.locator('aside.sidenav a[aria-current="page"]')).to_have_count(0)

    membership = Membership.objects.for_organization(organization).get(user=developer)
    assert membership.role == Role.DEVELOPER
    invitation.refresh_from_db()
    assert invitation.accepted_at is not None
    assert invitation.accepted_by == developer
    events = AuditEvent.objects.filter(organization=organization, action__startswith="member.")
    assert sorted((event.action, event.actor_id) for event in events) == [
        ("member.invited", owner.pk),
        ("member.joined", developer.pk),
    ]


def test_expired_invitation_link_shows_clear_message(page, live_server):
    owner = make_user("owner@example.com")
    organization = make_org(owner, name="Acme AI")
    invitation, token = services.invitation_create(
        actor=Actor(user=owner), organization=organization, email="late@example.com", role=Role.DEVELOPER
    )
    Invitation.objects.for_organization(organization).filter(pk=invitation.pk).update(
        expires_at=timezone.now() - timedelta(minutes=1)
    )

    response = page.goto(f"{live_server.url}/invitations/{token}/")

    assert response.status == 400
    expect(page.get_by_role("heading", level=1)).to_have_text("Invitation not usable")
    expect(page.locator("#invitation-error")).to_have_text("This invitation has expired. Ask for a new one.")
    expect(page.get_by_role("button", name="Create account")).to_have_count(0)
    assert Invitation.objects.for_organization(organization).get().accepted_at is None
    assert list(Membership.objects.for_organization(organization).values_list("user__email", flat=True)) == [
        "owner@example.com"
    ]
