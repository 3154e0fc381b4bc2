"""Content-Security-Policy and Permissions-Policy: on every page, and nothing inline to refuse."""

import re
from collections import deque
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from django.conf import settings as django_settings
from django.test import Client

from keys import services as key_services
from portal import services
from portal.audit import Actor
from portal.roles import Role
from portal.security import PERMISSIONS_POLICY
from tests.factories import add_member, make_org, make_user

pytestmark = pytest.mark.django_db

POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'self'; frame-ancestors 'none'"
)
# <script> elements that hold data, not code (allauth passes its settings this way).
_DATA_SCRIPT_TYPES = {"application/json", "application/ld+json"}
_HANDLER = re.compile(r"^on[a-z]+$")
_URL_ATTRIBUTES = {"href", "src", "action", "formaction"}


class _InlineCodeFinder(HTMLParser):
    """Collect whatever a CSP without 'unsafe-inline' would refuse."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []
        self._script: str | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "script" and not attributes.get("src"):
            if (attributes.get("type") or "").lower() not in _DATA_SCRIPT_TYPES:
                self.found.append(f"inline <script {attrs}>")
        if tag == "style":
            self.found.append("<style> element")
        for name, value in attrs:
            if _HANDLER.match(name):
                self.found.append(f"<{tag} {name}=...> handler")
            elif name == "style":
                self.found.append(f"<{tag} style=...> attribute")
            elif name in _URL_ATTRIBUTES and (value or "").strip().lower().startswith("javascript:"):
                self.found.append(f"<{tag} {name}=javascript:...>")


def inline_code(html: str) -> list[str]:
    finder = _InlineCodeFinder()
    finder.feed(html)
    finder.close()
    return finder.found


def _links(html: str) -> list[str]:
    return re.findall(r'href="([^"#]+)"', html)


# The Billing page loads Stripe.js from Stripe (the default settings), and only that page.
BILLING_POLICY = (
    "default-src 'self'; script-src 'self' https://js.stripe.com https://*.js.stripe.com; "
    "style-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'self'; "
    "frame-ancestors 'none'; frame-src https://js.stripe.com https://hooks.stripe.com "
    "https://*.js.stripe.com; connect-src 'self' https://api.stripe.com"
)


def _assert_headers(response, path: str):
    policy = BILLING_POLICY if urlsplit(path).path.endswith("/billing/") else POLICY
    assert response["Content-Security-Policy"] == policy + "; form-action 'self'", path
    assert response["Permissions-Policy"] == PERMISSIONS_POLICY, path


def test_the_inline_code_finder_sees_each_kind():
    html = (
        '<script>alert(1)</script><script src="/s.js"></script>'
        '<script type="application/json">{}</script><style>p{}</style>'
        '<form onsubmit="return x()"><a href="javascript:x()" style="color:red">x</a></form>'
    )
    assert inline_code(html) == [
        "inline <script []>",
        "<style> element",
        "<form onsubmit=...> handler",
        "<a href=javascript:...>",
        "<a style=...> attribute",
    ]


def test_no_template_holds_inline_script_or_style():
    root = Path(django_settings.BASE_DIR) / "templates"
    # Emails are read in mail clients, never served under the site's CSP, and only inline
    # styles survive most mail clients.
    found = {
        str(path.relative_to(root)): problems
        for path in sorted(root.rglob("*.html"))
        if path.relative_to(root).parts[0] != "emails" and (problems := inline_code(path.read_text()))
    }
    assert found == {}


def test_every_console_page_an_owner_reaches_carries_the_policies_and_no_inline_code(client):
    owner = make_user("owner@example.com")
    organization = make_org(owner, name="Acme AI")
    add_member(organization, Role.DEVELOPER, make_user("dev@example.com"))
    services.invitation_create(
        actor=Actor(user=owner), organization=organization, email="new@example.com", role=Role.VIEWER
    )
    key, _secret = key_services.api_key_create(
        actor=Actor(user=owner), organization=organization, name="Search backend"
    )
    # An invitation from another organization: the owner's invitations page is linked too.
    other_owner = make_user("other@example.com")
    services.invitation_create(
        actor=Actor(user=other_owner),
        organization=make_org(other_owner, name="Beta Labs"),
        email="owner@example.com",
        role=Role.VIEWER,
    )
    client.force_login(owner)

    # The one-time secret page comes from a form, not a link.
    created = client.post(
        f"/o/{organization.slug}/keys/new/",
        {"name": "Batch jobs", "environment": "live", "budget_alert_percent": "80"},
        follow=True,
    )
    assert created.status_code == 200
    _assert_headers(created, "key create")
    assert inline_code(created.content.decode()) == []

    seen: set[str] = set()
    queue = deque(["/"])
    pages = 0
    while queue:
        url = queue.popleft()
        if url in seen:
            continue
        seen.add(url)
        response = client.get(url)
        _assert_headers(response, url)
        if response.status_code in (301, 302):
            queue.append(urljoin(url, response["Location"]))
            continue
        assert response.status_code == 200, url
        if not response["Content-Type"].startswith("text/html"):
            continue
        pages += 1
        html = response.content.decode()
        assert inline_code(html) == [], url
        for link in _links(html):
            target = urljoin(url, link)
            parts = urlsplit(target)
            if parts.scheme or parts.netloc or parts.path.startswith(("/static/", "/accounts/logout/")):
                continue
            queue.append(target)
    visited = {urlsplit(url).path for url in seen}
    for path in (
        f"/o/{organization.slug}/",
        f"/o/{organization.slug}/keys/",
        f"/o/{organization.slug}/keys/{key.public_id}/",
        f"/o/{organization.slug}/usage/",
        f"/o/{organization.slug}/usage/requests/",
        f"/o/{organization.slug}/members/",
        f"/o/{organization.slug}/audit/",
        f"/o/{organization.slug}/settings/",
        f"/o/{organization.slug}/billing/",
        "/accounts/2fa/",
        "/accounts/2fa/totp/activate/",
        "/accounts/email/",
        "/accounts/password/change/",
        "/accounts/3rdparty/",
        "/invitations/",
    ):
        assert path in visited
    assert pages >= 15


def test_sign_in_pages_carry_the_policies_without_a_session():
    client = Client()
    for path in (
        "/accounts/login/",
        "/accounts/signup/",
        "/accounts/password/reset/",
        "/accounts/password/reset/done/",
        "/accounts/inactive/",
        "/accounts/3rdparty/login/cancelled/",
    ):
        response = client.get(path)
        assert response.status_code == 200
        _assert_headers(response, path)
        assert inline_code(response.content.decode()) == []


def test_api_docs_load_their_script_from_a_file(client):
    page = client.get("/api/docs/")
    assert page.status_code == 200
    _assert_headers(page, "/api/docs/")
    html = page.content.decode()
    assert inline_code(html) == []
    script = re.search(r'<script src="(/api/docs/\?[^"]*script=[^"]*)"', html)
    assert script is not None
    code = client.get(script.group(1).replace("&amp;", "&"))
    assert code.status_code == 200
    assert code["Content-Type"] == "application/javascript"
    assert b"SwaggerUIBundle" in code.content


def test_error_and_json_responses_carry_the_policies(client):
    for path, status in (("/no-such-page/", 404), ("/healthz", 200), ("/api/v1/keys", 401)):
        response = client.get(path)
        assert response.status_code == status
        _assert_headers(response, path)


def test_form_action_admits_the_configured_sso_providers(settings):
    settings.SOCIALACCOUNT_PROVIDERS = {
        "openid_connect": {
            "APPS": [
                {
                    "provider_id": "corp",
                    "name": "Corp",
                    "client_id": "c",
                    "secret": "s",
                    "settings": {"server_url": "https://login.corp.example/realms/staff"},
                }
            ]
        },
        "github": {"APPS": []},
    }
    response = Client().get("/accounts/login/")
    assert response["Content-Security-Policy"] == (
        POLICY + "; form-action 'self' https://github.com https://login.corp.example"
    )


def test_the_oidc_consent_page_may_hand_the_browser_to_any_client(client):
    response = client.get("/identity/o/authorize")
    assert response["Content-Security-Policy"] == POLICY
    assert response["Permissions-Policy"] == PERMISSIONS_POLICY
