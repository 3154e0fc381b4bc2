"""allauth's emails in Tollgate's email layout, named from SITE_NAME, never from the host."""

import re

import pytest
from django.conf import settings as django_settings
from django.core import mail

from tests.factories import PASSWORD, make_user

pytestmark = pytest.mark.django_db


def _footer() -> str:
    return f"Tollgate\n{django_settings.SITE_URL}"


def _send(client, capture, path, data):
    with capture(execute=True):
        response = client.post(path, data)
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    return mail.outbox[0]


def _html(message) -> str:
    assert [mimetype for _content, mimetype in message.alternatives] == ["text/html"]
    html = message.alternatives[0][0]
    # Tollgate's layout: its brand on top, the account's address in the footer.
    assert re.search(r'font-weight:bold;color:#1565c0;">Tollgate</td>', html)
    assert (
        f"You receive this because {message.to[0]} was entered on Tollgate ({django_settings.SITE_URL})."
        in html
    )
    assert "Hello from" not in html
    return html


def test_sign_up_verification_email_is_tollgates(client, django_capture_on_commit_callbacks):
    message = _send(
        client,
        django_capture_on_commit_callbacks,
        "/accounts/signup/",
        {"email": "ada@example.com", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert message.to == ["ada@example.com"]
    assert message.subject == "[Tollgate] Confirm your email address"
    link = re.search(r"http://testserver/accounts/confirm-email/[^/\s]+/", message.body).group(0)
    assert message.body == (
        "Hello,\n\n"
        "Someone, most likely you, used ada@example.com for an account on Tollgate. "
        "Confirm that the address is yours:\n\n"
        f"{link}\n\n"
        "If it was not you, ignore this email: without the confirmation nobody can log in with this address."
        f"\n\n{_footer()}"
    )
    html = _html(message)
    assert f'<a href="{link}" style=' in html
    assert ">Confirm your email address</a>" in html


def test_password_reset_email_is_tollgates(client, django_capture_on_commit_callbacks):
    make_user("ada@example.com")
    message = _send(
        client, django_capture_on_commit_callbacks, "/accounts/password/reset/", {"email": "ada@example.com"}
    )
    assert message.subject == "[Tollgate] Reset your password"
    link = re.search(r"http://testserver/accounts/password/reset/key/[^\s]+/", message.body).group(0)
    assert message.body == (
        "Hello,\n\n"
        "Someone, most likely you, asked to reset the password of your Tollgate account. "
        "Choose a new password here:\n\n"
        f"{link}\n\n"
        "If it was not you, ignore this email: your password stays as it is."
        f"\n\n{_footer()}"
    )
    assert ">Choose a new password</a>" in _html(message)


def test_password_reset_for_an_unknown_address_says_so_and_offers_sign_up(
    client, django_capture_on_commit_callbacks
):
    message = _send(
        client,
        django_capture_on_commit_callbacks,
        "/accounts/password/reset/",
        {"email": "nobody@example.com"},
    )
    assert message.to == ["nobody@example.com"]
    assert message.subject == "[Tollgate] No account for this address"
    assert message.body == (
        "Hello,\n\n"
        "Someone, most likely you, asked to reset the password of an account on Tollgate for nobody@example.com, "
        "but there is no account for this address.\n\n"
        "If it was you, sign up here:\n\n"
        "http://testserver/accounts/signup/\n\n"
        "If it was not you, ignore this email."
        f"\n\n{_footer()}"
    )
    assert '<a href="http://testserver/accounts/signup/" style=' in _html(message)


def test_sign_up_with_a_taken_address_tells_its_owner(client, django_capture_on_commit_callbacks):
    make_user("ada@example.com")
    message = _send(
        client,
        django_capture_on_commit_callbacks,
        "/accounts/signup/",
        {"email": "ada@example.com", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert message.subject == "[Tollgate] You already have an account"
    assert message.body.startswith(
        "Hello,\n\nSomeone, most likely you, tried to sign up on Tollgate with ada@example.com, "
        "but an account for this address already exists.\n\n"
        "Log in with it, or if you forgot its password, choose a new one here:\n\n"
        "http://testserver/accounts/password/reset/\n\n"
    )
    assert message.body.endswith(f"If it was not you, ignore this email.\n\n{_footer()}")
    _html(message)


def test_the_site_name_comes_from_the_settings(client, settings, django_capture_on_commit_callbacks):
    settings.SITE_NAME = "Acme Models"
    settings.SITE_URL = "https://models.acme.example"
    message = _send(
        client,
        django_capture_on_commit_callbacks,
        "/accounts/password/reset/",
        {"email": "nobody@example.com"},
    )
    assert message.subject == "[Acme Models] No account for this address"
    assert "an account on Acme Models for nobody@example.com" in message.body
    assert message.body.endswith("\n\nAcme Models\nhttps://models.acme.example")
    assert "Tollgate" not in message.body
    html = message.alternatives[0][0]
    assert 'color:#1565c0;">Acme Models</td>' in html
    assert "Tollgate" not in html
