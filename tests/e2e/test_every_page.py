"""Every console page in Chromium, at 1280 and 390 px: it fits, logs no error and loads everything.

The pages come from the URLconf: every GET route under ``/o/<slug>/``, ``/accounts/``,
``/orgs/`` and ``/invitations/`` is visited (as the Owner of the demo organization, or signed
out for the pages of someone who is not signed in) or named in ``EXCLUDED`` with the reason,
so a new page cannot be forgotten. The Viewer's pass opens every organization page too and
gets exactly the status the role table gives it (a refused page must fit as well).

On each page: the document never scrolls sideways (``scrollWidth <= innerWidth``), the console
shows no error and the page throws none, and no request fails or answers 400 or more. A
full-page screenshot of each is written to ``.run/screenshots/<width>/`` (git-ignored; the
test summary prints the folder) for a reviewer to look at.

The data is ``manage.py demo_seed`` (weeks of usage over several keys and models, raw events
with errors and refusals, last month's invoice paid through localstripe) plus members of each
role, a pending invitation, a rotated key and a service account.
"""

import io
import re
import shutil
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from allauth.account.forms import default_token_generator
from allauth.account.models import EmailAddress, EmailConfirmationHMAC
from allauth.account.utils import user_pk_to_url_str
from django.core.management import call_command
from django.urls import URLResolver, get_resolver, reverse
from playwright.sync_api import Page, expect

from keys import services as key_services
from keys.models import ApiKey
from portal import services
from portal.audit import Actor
from portal.models import Organization, User
from portal.roles import ROLE_PERMISSIONS, Role
from tests.e2e.conftest import SCREENSHOTS, TIMEOUT_MS, log_in
from tests.e2e.test_billing_cards import stripe_js  # noqa: F401 - a fixture, used by name
from tests.factories import PASSWORD, add_member, make_user

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

VIEWPORTS = {1280: 900, 390: 844}
VIEWER_WIDTH = 390
FITS = "document.documentElement.scrollWidth <= window.innerWidth"
# The parts of the site a person reads in the console's shell or allauth's pages.
SCOPE = ("o/", "accounts/", "orgs/", "invitations/")

# Routes in scope that are not visited, and why.
EXCLUDED = {
    "org-audit-export": "a CSV download, not a page (tests/portal/test_audit.py reads it)",
    "org-usage-export": "a CSV download, not a page (tests/usage reads it)",
    "mfa_download_recovery_codes": "a text download, not a page",
    "account_confirm_login_code": "exists only inside a login by emailed code, which is not enabled",
    "mfa_authenticate": "the second step of a login with 2FA; without one pending it sends you to the login page",
    "mfa_reauthenticate": "asks for a TOTP code only once one is set up; otherwise it redirects",
    "mfa_deactivate_totp": "exists only for a user whose TOTP is active",
    "mfa_view_recovery_codes": "exists only for a user who has recovery codes",
    "mfa_generate_recovery_codes": "exists only for a user whose TOTP is active",
    "socialaccount_signup": "exists only while a social login is pending; otherwise it redirects",
    "accounts/social/login/cancelled/": "an old address that redirects to the 3rd-party page visited",
    "accounts/social/login/error/": "an old address that redirects to the 3rd-party page visited",
    "accounts/social/signup/": "an old address that redirects to the 3rd-party page visited",
    "accounts/social/connections/": "an old address that redirects to the 3rd-party page visited",
    "github_login": "leaves for GitHub",
    "github_callback": "GitHub's way back, with a code only GitHub issues",
    "openid_connect_login": "leaves for the identity provider",
    "openid_connect_callback": "the identity provider's way back, with a code only it issues",
}
# Pages of someone who is not signed in (signed in, most of them redirect).
SIGNED_OUT = {
    "account_login",
    "account_signup",
    "account_inactive",
    "account_email_verification_sent",
    "account_reset_password",
    "account_reset_password_done",
    "account_reset_password_from_key",
    "account_reset_password_from_key_done",
    "account_confirm_email",
    "socialaccount_login_cancelled",
    "socialaccount_login_error",
    "invitation-accept",
}
# Pages whose answer is not 200 by design.
STATUS = {"socialaccount_login_error": 401}  # allauth answers a failed 3rd-party login with 401
# Pages reached only by submitting a form (a secret is shown once): the form's page and button.
FLOWS = {
    "org-key-secret": ("org-key-create", "Create key"),
    "org-service-account-secret": ("org-service-accounts", "Create service account"),
}


@dataclass(frozen=True)
class Route:
    ident: str  # the route's name, or its pattern when it has none
    pattern: str
    view_class: type | None


def console_routes() -> list[Route]:
    """Return every route in SCOPE that answers GET, from the URLconf."""

    def walk(patterns, prefix=""):
        for entry in patterns:
            if isinstance(entry, URLResolver):
                yield from walk(entry.url_patterns, prefix + str(entry.pattern))
            else:
                yield prefix + str(entry.pattern), entry

    routes = {}
    for pattern, entry in walk(get_resolver().url_patterns):
        view_class = getattr(entry.callback, "view_class", None)
        if not pattern.startswith(SCOPE) or (view_class is not None and not hasattr(view_class, "get")):
            continue
        ident = entry.name or pattern
        routes.setdefault(ident, Route(ident, pattern, view_class))
    return list(routes.values())


@dataclass
class Demo:
    organization: Organization
    owner: User
    viewer: User
    url_kwargs: dict[str, str]


@pytest.fixture
def demo(tmp_path, monkeypatch, stripe_js) -> Demo:  # noqa: F811 - stripe_js is the imported fixture
    """The demo's data, and one of each thing a page needs an id of."""
    monkeypatch.setenv("DEMO_PASSWORD", PASSWORD)
    call_command(
        "demo_seed",
        password_file=tmp_path / "demo_password",
        key_file=tmp_path / "demo_api_key",
        stdout=io.StringIO(),
    )
    organization = Organization.objects.get(slug="demo")
    owner = User.objects.get(email="demo@tollgate.local")
    actor = Actor(user=owner)
    for role, email in (
        (Role.ADMIN, "maria.hernandez@example.com"),
        (Role.DEVELOPER, "dev.team-lead@example.com"),
        (Role.BILLING, "accounts-payable@example.com"),
    ):
        add_member(organization, role, make_user(email))
    viewer = add_member(organization, Role.VIEWER, make_user("viewer@example.com"))
    _invitation, token = services.invitation_create(
        actor=actor, organization=organization, email="new.hire@example.com", role=Role.DEVELOPER
    )
    key = ApiKey.objects.for_organization(organization).get(name="Support bot")
    key_services.api_key_rotate(actor=actor, key=key, grace_period=timedelta(hours=24))
    account, _client_id, _secret = key_services.service_account_create(
        actor=actor, organization=organization, name="CI deploys", role=Role.DEVELOPER
    )
    # An address waiting for its confirmation, and a password reset link, as the emails carry them.
    unconfirmed = make_user("unconfirmed@example.com", verified=False)
    address = EmailAddress.objects.get(user=unconfirmed)
    return Demo(
        organization=organization,
        owner=owner,
        viewer=viewer,
        url_kwargs={
            "org_slug": organization.slug,
            "key_id": key.public_id,
            "account_id": account.public_id,
            "token": token,
            "key": EmailConfirmationHMAC(address).key,
            "uidb36": user_pk_to_url_str(unconfirmed),
        },
    )


@dataclass
class Visit:
    """One page: where it is, the status it should answer, what went wrong in the browser."""

    url: str = ""
    status: int = 200
    problems: list[str] = field(default_factory=list)


def _url(route: Route, kwargs: dict[str, str], base_url: str) -> str:
    names = re.findall(r"<(?:\w+:)?(\w+)>|\(\?P<(\w+)>", route.pattern)
    wanted = {name or group for name, group in names}
    values = {name: kwargs[name] for name in wanted}
    if route.ident == "account_reset_password_from_key":
        values["key"] = default_token_generator.make_token(User.objects.get(email="unconfirmed@example.com"))
    return base_url + reverse(route.ident, kwargs=values)


class Browser:
    """One context per width, its page's listeners recording into the current visit."""

    def __init__(self, page: Page, width: int, base_url: str):
        self.page, self.width, self.base_url = page, width, base_url
        self.current = Visit()
        page.on("console", self._console)
        page.on("pageerror", lambda error: self._note(f"exception: {error}"))
        page.on("requestfailed", lambda request: self._note(f"failed: {request.url} {request.failure}"))
        page.on(
            "response",
            lambda response: (
                response.status >= 400
                and response.request.resource_type != "document"
                and self._note(f"{response.status}: {response.url}")
            ),
        )
        self.folder = SCREENSHOTS / str(width)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _note(self, problem: str) -> None:
        self.current.problems.append(problem)

    def _console(self, message) -> None:
        # Chromium logs a page answered with an error status as a failed resource: that status
        # is checked against the expected one instead.
        document = message.location.get("url") == self.current.url and message.text.startswith(
            f"Failed to load resource: the server responded with a status of {self.current.status} "
        )
        if message.type == "error" and not document:
            self._note(f"console: {message.text}")

    def look(self, name: str, *, status: int = 200, go_to: str | None = None) -> list[str]:
        """Open ``go_to`` (or stay), then check and photograph the page; return its problems."""
        self.current = Visit(url=go_to or self.page.url, status=status)
        if go_to is not None:
            response = self.page.goto(go_to)
            if response is None or response.status != status:
                self._note(f"status {response.status if response else None}, expected {status}")
        self.page.wait_for_load_state("load")
        if not self.page.evaluate(FITS):
            width = self.page.evaluate("document.documentElement.scrollWidth")
            self._note(f"overflows: {width} px wide in {self.width} px")
        self.page.screenshot(path=self.folder / f"{name}.png", full_page=True)
        return [f"{self.width} px {name} ({self.page.url}): {problem}" for problem in self.current.problems]


def _expected_status(route: Route, role: str) -> int:
    required = getattr(route.view_class, "required_permission", None)
    return 200 if required is None or required in ROLE_PERMISSIONS[role] else 403


def test_every_console_page_fits_logs_no_error_and_loads_everything_at_1280_and_390_px(
    browser, live_server, demo
):
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)  # the folder shows this run's pages only
    routes = console_routes()
    unknown = sorted(set(EXCLUDED) - {route.ident for route in routes})
    assert unknown == [], f"exclusions for routes that no longer exist: {unknown}"
    to_visit = [route for route in routes if route.ident not in EXCLUDED]
    org_pages = [r for r in to_visit if r.pattern.startswith("o/") and r.ident not in FLOWS]
    problems: list[str] = []
    visited: set[str] = set()

    for width, height in VIEWPORTS.items():
        context = browser.new_context(viewport={"width": width, "height": height})
        context.set_default_timeout(TIMEOUT_MS)
        try:
            tab = Browser(context.new_page(), width, live_server.url)
            for route in (r for r in to_visit if r.ident in SIGNED_OUT):
                url = _url(route, demo.url_kwargs, live_server.url)
                problems += tab.look(
                    f"signed-out-{route.ident}", go_to=url, status=STATUS.get(route.ident, 200)
                )
                visited.add(route.ident)

            log_in(tab.page, live_server.url, demo.owner.email)
            for route in (r for r in to_visit if r.ident not in SIGNED_OUT and r.ident not in FLOWS):
                url = _url(route, demo.url_kwargs, live_server.url)
                problems += tab.look(f"owner-{route.ident}", go_to=url, status=STATUS.get(route.ident, 200))
                visited.add(route.ident)
            for ident, (form_page, button) in FLOWS.items():
                tab.page.goto(live_server.url + reverse(form_page, args=[demo.organization.slug]))
                tab.page.get_by_label("Name").first.fill(f"From the {width} px check")
                tab.page.get_by_role("button", name=button).click()
                expect(tab.page.get_by_role("button", name="Copy").first).to_be_visible()
                problems += tab.look(f"owner-{ident}")
                visited.add(ident)

            # The Viewer once, on the narrow screen where pages break first.
            if width == VIEWER_WIDTH:
                context.clear_cookies()
                log_in(tab.page, live_server.url, demo.viewer.email)
                for route in org_pages:
                    url = _url(route, demo.url_kwargs, live_server.url)
                    problems += tab.look(
                        f"viewer-{route.ident}", go_to=url, status=_expected_status(route, Role.VIEWER)
                    )
        finally:
            context.close()

    assert sorted(set(r.ident for r in to_visit) - visited) == []
    assert problems == [], "\n".join(problems)
