"""allauth's pages inside the console: its header and layout, one wording, fields with their errors."""

import re
from html.parser import HTMLParser

import pyotp
import pytest
from allauth.account.forms import default_token_generator
from allauth.account.models import EmailAddress, EmailConfirmationHMAC
from allauth.account.utils import user_pk_to_url_str
from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
from django.test import Client

from portal.models import User
from tests.factories import PASSWORD, make_user
from tests.portal.test_security_headers import inline_code

pytestmark = pytest.mark.django_db

ENTRANCE = '<main class="content auth-page">'
MANAGE = '<main class="content account-page">'
# The verbs are "Log in", "Log out" and "Sign up"; allauth's own pages say "Sign In", "Sign Out",
# "Signup", "login" (as a verb and a noun) and "Sign Up".
FORBIDDEN_WORDING = re.compile(
    r"(?i:\bsign[ -]?in\b|\bsign[ -]?out\b|signed (?:in|out)|\blog-?ins?\b|\blogout\b)|Sign Up|[Ss]ignup|SIGNUP"
)


class _VisibleText(HTMLParser):
    """Collect what a person reads on the page: text, button labels and input placeholders."""

    def __init__(self):
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "title"):
            self._skip += 1
        for name, value in attrs:
            if name in ("placeholder", "title", "aria-label", "alt") and value:
                self.parts.append(value)
            if tag == "input" and name == "value" and dict(attrs).get("type") in ("submit", "button"):
                self.parts.append(value)

    def handle_endtag(self, tag):
        if tag in ("script", "style", "title"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip and data.strip():
            self.parts.append(data.strip())


def visible_text(html: str) -> str:
    parser = _VisibleText()
    parser.feed(html)
    parser.close()
    title = re.search(r"<title>(.*?)</title>", html, re.S)
    return " ".join([title.group(1).strip() if title else "", *parser.parts])


def _assert_console_page(response, layout: str, path: str, status: int = 200) -> str:
    assert response.status_code == status, path
    html = response.content.decode()
    assert '<a href="/" class="brand"><strong>Tollgate</strong></a>' in html, path
    assert layout in html, path
    assert '<link rel="stylesheet" href="/static/account.css">' in html, path
    assert inline_code(html) == [], path
    text = visible_text(html)
    assert FORBIDDEN_WORDING.findall(text) == [], (path, text)
    assert re.search(r"<title>[^<]*· Tollgate</title>", html), path
    return html


def _log_in(client, email):
    response = client.post("/accounts/login/", {"login": email, "password": PASSWORD})
    assert response.status_code == 302
    return response


def _reauthenticate(client, path):
    """Open a page allauth guards by asking for the password again: that page, then the password."""
    response = client.get(path, follow=True)
    html = _assert_console_page(response, ENTRANCE, f"reauthenticate for {path}")
    assert re.search(r"<h1>\s*Confirm Access\s*</h1>", html)
    response = client.post(response.redirect_chain[-1][0], {"password": PASSWORD})
    assert response["Location"] == path


def test_the_wording_check_catches_allauths_own_words():
    for stock in (
        "Sign In",
        "Sign Out",
        "Sign Up",
        "Signup",
        "sign in",
        "Successfully signed in as a.",
        "Login",
    ):
        assert FORBIDDEN_WORDING.search(stock), stock
    for ours in ("Log in", "Log out", "Sign up", "New to Tollgate? Sign up first.", "Logged", "blog in"):
        assert not FORBIDDEN_WORDING.search(ours), ours


def test_every_anonymous_account_page_is_a_console_card_saying_log_in_and_sign_up(monkeypatch):
    user = make_user("ada@example.com")
    unverified = make_user("bo@example.com", verified=False)
    client = Client()
    reset_key = f"{user_pk_to_url_str(user)}-{default_token_generator.make_token(user)}"
    confirmation = EmailConfirmationHMAC(EmailAddress.objects.get(user=unverified))
    pages = {
        "/accounts/login/": "Log in",
        "/accounts/signup/": "Sign up",
        "/accounts/password/reset/": "Password Reset",
        "/accounts/password/reset/done/": "Password Reset",
        f"/accounts/password/reset/key/{reset_key}/": "Change Password",
        "/accounts/password/reset/key/done/": "Change Password",
        f"/accounts/confirm-email/{confirmation.key}/": "Confirm Email Address",
        "/accounts/inactive/": "Account Inactive",
        "/accounts/3rdparty/login/cancelled/": "Single sign-on cancelled",
    }
    for path, heading in pages.items():
        response = client.get(path, follow=True)
        html = _assert_console_page(response, ENTRANCE, path)
        assert re.search(rf"<h1>\s*{heading}\s*</h1>", html), (path, heading)
    html = _assert_console_page(client.get("/accounts/3rdparty/login/error/"), ENTRANCE, "sso error", 401)
    assert "<h1>Single sign-on failed</h1>" in html

    # The page after sign-up, and the one shown when sign-up is closed.
    response = client.post(
        "/accounts/signup/",
        {"email": "cy@example.com", "password1": PASSWORD, "password2": PASSWORD},
        follow=True,
    )
    html = _assert_console_page(response, ENTRANCE, "verification sent")
    assert "<h1>Verify your email address</h1>" in html
    monkeypatch.setenv("ACCOUNT_ALLOW_SIGNUP", "false")
    html = _assert_console_page(Client().get("/accounts/signup/"), ENTRANCE, "signup closed")
    assert "<h1>Sign-up closed</h1>" in html


def test_the_second_factor_step_is_a_console_card_with_a_log_in_button():
    user = make_user("ada@example.com")
    TOTP.activate(user, generate_totp_secret())
    client = Client()
    response = _log_in(client, "ada@example.com")
    assert response["Location"] == "/accounts/2fa/authenticate/"
    html = _assert_console_page(client.get("/accounts/2fa/authenticate/"), ENTRANCE, "2fa authenticate")
    assert "<h1>Two-factor authentication</h1>" in html
    assert re.search(r'<button type="submit" class="">Log in</button>', html)


def test_every_signed_in_account_page_sits_in_the_console_shell_with_the_account_navigation():
    user = make_user("ada@example.com")
    secret = generate_totp_secret()
    TOTP.activate(user, secret)
    RecoveryCodes.activate(user)
    client = Client()
    _log_in(client, "ada@example.com")
    response = client.post("/accounts/2fa/authenticate/", {"code": pyotp.TOTP(secret).now()})
    assert response.status_code == 302
    _reauthenticate(client, "/accounts/2fa/totp/deactivate/")
    pages = {
        "/accounts/email/": ("Email Addresses", "Email addresses"),
        "/accounts/password/change/": ("Change Password", "Password"),
        "/accounts/2fa/": ("Two-Factor Authentication", "Two-factor authentication"),
        "/accounts/2fa/totp/deactivate/": ("Deactivate Authenticator App", "Two-factor authentication"),
        "/accounts/2fa/recovery-codes/": ("Recovery Codes", "Two-factor authentication"),
        "/accounts/2fa/recovery-codes/generate/": ("Recovery Codes", "Two-factor authentication"),
        "/accounts/3rdparty/": ("Connected accounts", "Connected accounts"),
        "/accounts/logout/": ("Log out", None),
    }
    for path, (heading, current) in pages.items():
        html = _assert_console_page(client.get(path), MANAGE, path)
        assert re.search(rf"<h1>\s*{heading}\s*</h1>", html), (path, heading)
        assert '<nav aria-label="Account">' in html, path
        marked = re.findall(r'<a href="[^"]+" aria-current="page">([^<]+)</a>', html)
        assert marked == ([current] if current else []), path

    # An OpenID Connect client of the portal's own provider asks to log the person out.
    html = _assert_console_page(client.get("/identity/o/logout"), ENTRANCE, "oidc logout")
    assert re.findall(r"<button[^>]*>([^<]+)</button>", html.split("<main")[1]) == [
        "Log out",
        "Stay logged in",
    ]

    # Without a usable password the password page is the one that sets it.
    user.set_unusable_password()
    user.save()
    client.force_login(user)
    html = _assert_console_page(client.get("/accounts/password/change/", follow=True), MANAGE, "password set")
    assert re.search(r"<h1>\s*Set Password\s*</h1>", html)

    # The second factor is off and TOTP can be activated (after the password is asked again).
    other = Client()
    make_user("cy@example.com")
    _log_in(other, "cy@example.com")
    _reauthenticate(other, "/accounts/2fa/totp/activate/")
    html = _assert_console_page(other.get("/accounts/2fa/totp/activate/"), MANAGE, "totp activate")
    assert re.search(r"<h1>\s*Activate Authenticator App\s*</h1>", html)


def _field_block(html: str, name: str) -> str:
    match = re.search(rf'<div class="field" id="field-{name}">(.*?)\n</div>', html, re.S)
    assert match, name
    return match.group(1)


def test_a_password_rule_error_on_sign_up_sits_under_the_password_not_under_the_email(client):
    response = client.post(
        "/accounts/signup/", {"email": "ada@example.com", "password1": "password", "password2": "password"}
    )
    assert response.status_code == 200
    html = response.content.decode()
    email, password, again = (_field_block(html, name) for name in ("email", "password1", "password2"))
    assert "errorlist" not in email and "field-errors" not in email
    assert re.findall(r"<li>([^<]+)</li>", password.split('class="helptext"')[0]) == [
        "This password is too common."
    ]
    # The error follows the input it is about, and the input says it is invalid.
    assert password.index('name="password1"') < password.index("This password is too common.")
    assert 'aria-invalid="true"' in password
    assert "field-errors" not in again
    assert User.objects.count() == 0


def test_log_in_and_sign_up_pages_offer_each_other_with_the_same_verbs(client):
    login = client.get("/accounts/login/").content.decode()
    assert re.findall(r"<button[^>]*>([^<]+)</button>", login.split("<main")[1]) == ["Log in"]
    assert '<p>New to Tollgate? <a href="/accounts/signup/">Sign up</a> first.</p>' in login
    signup = client.get("/accounts/signup/").content.decode()
    assert re.findall(r"<button[^>]*>([^<]+)</button>", signup.split("<main")[1]) == ["Sign up"]
    assert '<p>Already have an account? <a href="/accounts/login/">Log in</a>.</p>' in signup
    # The header offers the same two.
    header = login.split("<main")[0]
    assert re.findall(r'<a href="/accounts/(?:login|signup)/">([^<]+)</a>', header) == ["Log in", "Sign up"]


def test_single_sign_on_offers_its_providers_as_buttons_and_asks_to_log_in_with_one(settings):
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
    }
    client = Client()
    html = _assert_console_page(client.get("/accounts/login/"), ENTRANCE, "login with sso")
    assert "<hr><h2>Or use single sign-on</h2>" in html
    assert re.findall(r'<a role="button" class="secondary outline" href="([^"]+)">([^<]+)</a>', html) == [
        ("/accounts/oidc/corp/login/?process=login", "Corp")
    ]
    html = _assert_console_page(
        client.get("/accounts/oidc/corp/login/?process=login"), ENTRANCE, "sso confirmation"
    )
    assert "<h1>Log in with Corp</h1>" in html
    assert "<p>You are about to log in to Tollgate with your Corp account.</p>" in html
    assert re.findall(r"<button[^>]*>([^<]+)</button>", html.split("<main")[1]) == ["Continue"]
