"""The organization switcher in the top bar."""

import pytest
from django.conf import settings
from django.contrib.sessions.models import Session
from playwright.sync_api import Page, expect

from portal.console import SESSION_ORG_KEY
from portal.roles import Role
from tests.e2e.conftest import log_in
from tests.factories import add_member, make_org, make_user

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _session_organization(page: Page) -> str:
    """Return the organization slug stored in the browser's server-side session row."""
    key = next(c["value"] for c in page.context.cookies() if c["name"] == settings.SESSION_COOKIE_NAME)
    return Session.objects.get(session_key=key).get_decoded()[SESSION_ORG_KEY]


def test_switcher_moves_user_to_other_organizations_dashboard(page, live_server):
    base = live_server.url
    user = make_user("pat@example.com")
    make_org(user, name="Acme AI")
    add_member(make_org(name="Beta Labs"), Role.DEVELOPER, user=user)

    log_in(page, base, "pat@example.com")
    page.goto(f"{base}/o/acme-ai/")
    switcher = page.locator("#org-switcher")
    expect(switcher.locator("summary")).to_have_text("Acme AI")
    assert _session_organization(page) == "acme-ai"

    switcher.locator("summary").click()
    expect(switcher.get_by_role("link")).to_have_text(["Acme AI", "Beta Labs", "+ New organization"])
    expect(switcher.get_by_role("link", name="Acme AI")).to_have_attribute("aria-current", "true")
    switcher.get_by_role("link", name="Beta Labs").click()

    expect(page).to_have_url(f"{base}/o/beta-labs/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Beta Labs")
    expect(page.get_by_role("main")).to_contain_text("Your role: Developer")
    expect(switcher.locator("summary")).to_have_text("Beta Labs")
    expect(switcher.get_by_role("link", name="Beta Labs", include_hidden=True)).to_have_attribute(
        "aria-current", "true"
    )
    assert _session_organization(page) == "beta-labs"

    # The console remembers the organization last worked in.
    page.goto(f"{base}/")
    expect(page).to_have_url(f"{base}/o/beta-labs/")
