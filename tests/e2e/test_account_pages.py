"""allauth's pages in Chromium at 1280 and 390 px: the console's look, no sideways scroll,
no console errors, no failed requests. Screenshots go to .run/screenshots/accounts/ for a
reviewer (the folder is not committed)."""

from pathlib import Path

import pytest
from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes
from django.conf import settings
from playwright.sync_api import expect

from tests.e2e.conftest import log_in
from tests.factories import PASSWORD, make_user

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

FITS = "document.documentElement.scrollWidth <= window.innerWidth"
SCREENSHOTS = Path(settings.BASE_DIR) / ".run" / "screenshots" / "accounts"
WIDTHS = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}
ANONYMOUS = {
    "login": ("/accounts/login/", "Log in"),
    "signup": ("/accounts/signup/", "Sign up"),
    "password-reset": ("/accounts/password/reset/", "Password Reset"),
}
SIGNED_IN = {
    "email": ("/accounts/email/", "Email Addresses"),
    "password-change": ("/accounts/password/change/", "Change Password"),
    "two-factor": ("/accounts/2fa/", "Two-Factor Authentication"),
    # The recovery codes are behind a second password prompt: that page is what shows.
    "reauthenticate": ("/accounts/2fa/recovery-codes/", "Confirm Access"),
    "connected-accounts": ("/accounts/3rdparty/", "Connected accounts"),
    "logout": ("/accounts/logout/", "Log out"),
}


def _watch(page) -> list[str]:
    problems: list[str] = []
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
    page.on(
        "response",
        lambda response: response.status >= 400 and problems.append(f"{response.status}: {response.url}"),
    )
    return problems


def _look(page, base: str, name: str, path: str, heading: str, width: str) -> None:
    page.goto(f"{base}{path}")
    expect(page.get_by_role("heading", level=1)).to_have_text(heading)
    expect(page.locator("header .brand")).to_have_text("Tollgate")
    assert page.evaluate(FITS), (name, width)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}-{width}.png", full_page=True)


@pytest.mark.parametrize("width", WIDTHS)
def test_account_pages_fit_and_load_cleanly_at_both_widths(new_context, live_server, width):
    user = make_user("ada@example.com")
    RecoveryCodes.activate(user)
    base = live_server.url
    anonymous = new_context().new_page()
    anonymous.set_viewport_size(WIDTHS[width])
    problems = _watch(anonymous)
    for name, (path, heading) in ANONYMOUS.items():
        _look(anonymous, base, name, path, heading, width)
    # The entrance pages are one card, narrower than the page on a desktop.
    card = anonymous.locator("main.auth-page").bounding_box()
    assert card["width"] <= (28 * 16 * 0.95 + 1 if width == "desktop" else WIDTHS[width]["width"])

    page = new_context().new_page()
    page.set_viewport_size(WIDTHS[width])
    problems += _watch(page)
    log_in(page, base, "ada@example.com", PASSWORD)
    for name, (path, heading) in SIGNED_IN.items():
        _look(page, base, name, path, heading, width)
        if name == "reauthenticate":
            continue
        expect(page.locator('nav[aria-label="Account"] a')).to_have_text(
            [
                "Email addresses",
                "Password",
                "Two-factor authentication",
                "Connected accounts",
                "Back to the console",
            ]
        )
    assert problems == []
