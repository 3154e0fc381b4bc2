"""Browser tests: Debian's Chromium driven by Playwright against pytest-django's live server."""

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.factories import PASSWORD

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000
# Full-page screenshots of every console page (tests/e2e/test_every_page.py), kept for a reviewer.
SCREENSHOTS = Path(__file__).resolve().parents[2] / ".run" / "screenshots"
expect.set_options(timeout=TIMEOUT_MS)
_LOGIN_PAGE = re.compile(r"/accounts/login/")
_URL = re.compile(r"https?://[^\s\"'<>]+")


@pytest.fixture(scope="package")
def browser() -> Browser:
    """Start one Chromium for the browser tests, and stop it when they are done.

    Playwright's sync API keeps an event loop running in this thread, so Django refuses ORM
    calls from the tests (fixtures, assertions on rows) as "async unsafe". The switch that
    allows them is set only while Playwright runs: left set, it would leak into the rest of
    the session (and into ``manage.py check --deploy``, which rightly rejects it).
    """
    saved = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if saved is None:
            del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = saved


@pytest.fixture
def new_context(browser: Browser):
    """Open isolated browser contexts (separate cookies: separate people); close them after."""
    contexts: list[BrowserContext] = []

    def open_context() -> BrowserContext:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        return context

    yield open_context
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_context) -> Page:
    return new_context().new_page()


def link_in_email(message, path_prefix: str, base_url: str) -> str:
    """Return the first link in ``message`` whose path starts with ``path_prefix``, on ``base_url``.

    The emails are addressed to the public site (SITE_URL, https); the browser must reach the
    same path on the live test server instead.
    """
    for url in _URL.findall(message.body):
        parts = urlsplit(url)
        if parts.path.startswith(path_prefix):
            query = f"?{parts.query}" if parts.query else ""
            return f"{base_url}{parts.path}{query}"
    raise AssertionError(f"no {path_prefix} link in email {message.subject!r}:\n{message.body}")


def log_in(page: Page, base_url: str, email: str, password: str = PASSWORD) -> None:
    """Log in through the login form, as a person would."""
    page.goto(f"{base_url}/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in", exact=True).click()
    expect(page).not_to_have_url(_LOGIN_PAGE)


def pytest_terminal_summary(terminalreporter):
    """Say where the screenshots are, when this run took them."""
    reports = (report for kind in terminalreporter.stats.values() for report in kind)
    if any("test_every_page.py" in getattr(report, "nodeid", "") for report in reports):
        terminalreporter.write_sep("-", f"screenshots of every console page: {SCREENSHOTS}/<width>/")
