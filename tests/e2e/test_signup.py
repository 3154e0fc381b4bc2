"""Sign-up in the browser: from the first visit to the first organization's dashboard."""

import pytest
from allauth.account.models import EmailAddress
from playwright.sync_api import expect

from portal.models import Membership, Organization, User
from portal.roles import Role
from tests.e2e.conftest import link_in_email
from tests.factories import PASSWORD

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SIDEBAR = [
    "Dashboard",
    "API keys",
    "Service accounts",
    "Usage",
    "Requests",
    "Billing",
    "Members",
    "Audit log",
    "Settings",
]


def test_new_user_signs_up_verifies_email_and_creates_first_organization(page, live_server, mailoutbox):
    base = live_server.url
    page.goto(f"{base}/")
    expect(page).to_have_url(f"{base}/accounts/login/?next=/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign In")

    page.get_by_role("main").get_by_role("link", name="sign up").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign Up")
    page.get_by_label("Email").fill("founder@example.com")
    page.get_by_label("Password:", exact=True).fill(PASSWORD)
    page.get_by_label("Password (again):", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign Up").click()

    expect(page.get_by_role("heading", level=1)).to_have_text("Verify Your Email Address")
    expect(page.get_by_role("main")).to_contain_text("We have sent an email to you for verification.")
    user = User.objects.get(email="founder@example.com")
    assert EmailAddress.objects.get(user=user).verified is False
    assert [message.to for message in mailoutbox] == [["founder@example.com"]]

    page.goto(link_in_email(mailoutbox[0], "/accounts/confirm-email/", base))
    expect(page.get_by_role("heading", level=1)).to_have_text("Confirm Email Address")
    page.get_by_role("button", name="Confirm").click()

    expect(page).to_have_url(f"{base}/orgs/new/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Create your first organization")
    expect(page.locator("header")).to_contain_text("founder@example.com")
    assert EmailAddress.objects.get(user=user).verified is True

    page.get_by_label("Name").fill("Acme AI")
    page.get_by_role("button", name="Create organization").click()

    expect(page).to_have_url(f"{base}/o/acme-ai/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Acme AI")
    expect(page.get_by_role("status")).to_have_text("Welcome to Acme AI. You are its owner.")
    expect(page.locator("aside.sidenav a")).to_have_text(SIDEBAR)
    expect(page.locator('aside.sidenav a[aria-current="page"]')).to_have_text("Dashboard")
    expect(page.locator("#org-switcher summary")).to_have_text("Acme AI")

    organization = Organization.objects.get()
    assert organization.slug == "acme-ai"
    assert organization.name == "Acme AI"
    membership = Membership.objects.all_tenants().get()
    assert (membership.user_id, membership.organization_id, membership.role) == (
        user.pk,
        organization.pk,
        Role.OWNER,
    )
