"""The console works in a real browser under its Content-Security-Policy, refusing nothing."""

import re

import pyotp
import pytest
from playwright.sync_api import expect

from portal.models import Membership
from portal.roles import Role
from tests.e2e.conftest import log_in
from tests.factories import PASSWORD, add_member, make_org, make_user

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Chromium reports each refusal on the console ("Refused to execute inline script because it
# violates the following Content Security Policy directive ...") and fires an event.
_REPORTS = re.compile(r"Content Security Policy|Permissions-Policy|Permissions Policy")
_LISTEN = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.error(`Content Security Policy violation: ${event.violatedDirective} ${event.blockedURI}`);
});
"""


def test_console_pages_mfa_and_api_docs_run_without_a_single_policy_violation(new_context, live_server):
    base = live_server.url
    owner = make_user("owner@example.com")
    organization = make_org(owner, name="Acme AI")
    leaving = add_member(organization, Role.VIEWER, make_user("leaving@example.com"))
    context = new_context()
    context.add_init_script(_LISTEN)
    page = context.new_page()
    reports: list[str] = []
    page.on("console", lambda message: _REPORTS.search(message.text) and reports.append(message.text))
    slug = organization.slug

    log_in(page, base, "owner@example.com")
    expect(page.get_by_role("heading", level=1)).to_have_text("Acme AI")

    # API keys: create one; the secret page's copy button is script from a file.
    page.goto(f"{base}/o/{slug}/keys/new/")
    page.locator("#key-form").get_by_label("Name").fill("Search backend")
    page.locator("#key-form").get_by_role("button", name="Create key").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Your new key Search backend")
    copy = page.locator('button[data-copy="#secret"]')
    copy.click()
    expect(copy).not_to_have_text("Copy")

    # Usage draws its charts with Chart.js.
    page.goto(f"{base}/o/{slug}/usage/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Usage")

    # Removing a member asks first (a data-confirm form, no inline handler): refusing keeps them.
    page.goto(f"{base}/o/{slug}/members/")
    row = page.locator(f"#member-{Membership.objects.for_organization(organization).get(user=leaving).pk}")
    page.once("dialog", lambda dialog: dialog.dismiss())
    row.get_by_role("button", name="Remove").click()
    expect(row).to_be_visible()
    assert Membership.objects.for_organization(organization).filter(user=leaving).exists()
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Remove").click()
    expect(page.get_by_role("status")).to_have_text("leaving@example.com was removed.")
    assert not Membership.objects.for_organization(organization).filter(user=leaving).exists()

    for path in (f"/o/{slug}/audit/", f"/o/{slug}/settings/", f"/o/{slug}/service-accounts/"):
        page.goto(base + path)
        expect(page.locator("main h1")).to_be_visible()

    # TOTP: activate with the secret shown on the page, then sign in again with a recovery code.
    page.goto(f"{base}/accounts/2fa/totp/activate/")
    if "/accounts/reauthenticate/" in page.url:
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Confirm").click()
    expect(page.get_by_role("img", name=re.compile(r"^[A-Z2-7]+$"))).to_be_visible()
    secret = page.locator("#authenticator_secret").input_value()
    page.get_by_label("Authenticator code").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Activate").click()
    expect(page).to_have_url(f"{base}/accounts/2fa/recovery-codes/")
    codes = page.locator("#recovery_codes").input_value().split()
    assert len(codes) == 10

    page.locator("header").get_by_role("button", name="Log out").click()
    log_in_page = f"{base}/accounts/login/"
    page.goto(log_in_page)
    page.get_by_label("Email").fill("owner@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in", exact=True).click()
    expect(page).to_have_url(f"{base}/accounts/2fa/authenticate/")
    page.get_by_label("Code").fill(codes[0])
    page.get_by_role("button", name="Log in", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Acme AI")

    # The API docs: Swagger UI's bundle and its start-up script are files too.
    page.goto(f"{base}/api/docs/")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Tollgate API")
    expect(page.locator(".swagger-ui .opblock").first).to_be_visible()

    assert reports == []
