"""django-ratelimit in front of login, sign-up and invitations: it triggers, then lifts."""

import pytest
import time_machine
from django.utils import timezone

from tests.factories import PASSWORD, make_org

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("setting", "url", "data"),
    [
        (
            "RATELIMIT_LOGIN",
            "/accounts/login/",
            {"login": "nobody@example.com", "password": "wrong-password"},
        ),
        (
            "RATELIMIT_SIGNUP",
            "/accounts/signup/",
            {"email": "not-an-email", "password1": PASSWORD, "password2": PASSWORD},
        ),
    ],
)
def test_rate_limit_triggers_and_lifts(client, settings, setting, url, data):
    setattr(settings, setting, "3/m")
    settings.ACCOUNT_RATE_LIMITS = False  # isolate django-ratelimit from allauth's own limits
    start = timezone.now().replace(second=5, microsecond=0)
    with time_machine.travel(start, tick=False) as clock:
        for _ in range(3):
            assert client.post(url, data).status_code == 200  # the form answers (invalid input)
        refused = client.post(url, data)
        assert refused.status_code == 429
        assert refused["Retry-After"] == "60"
        assert b"Too many attempts" in refused.content
        clock.shift(60)
        assert client.post(url, data).status_code == 200


def test_invitation_link_rate_limit_triggers(client, settings):
    settings.RATELIMIT_INVITATION = "2/m"
    make_org()
    with time_machine.travel(timezone.now().replace(second=5), tick=False):
        assert client.get("/invitations/guess-1/").status_code == 400
        assert client.get("/invitations/guess-2/").status_code == 400
        assert client.get("/invitations/guess-3/").status_code == 429


def test_allauth_login_failure_limit_also_applies(client, settings):
    from tests.factories import make_user

    make_user("x@example.com")
    settings.ACCOUNT_RATE_LIMITS = {"login_failed": "2/m/ip"}
    for _ in range(2):
        response = client.post("/accounts/login/", {"login": "x@example.com", "password": "nope"})
        assert b"Too many failed login attempts" not in response.content
    # Now even the right password is refused until the window passes.
    response = client.post("/accounts/login/", {"login": "x@example.com", "password": PASSWORD})
    assert response.status_code == 200
    assert b"Too many failed login attempts. Try again later." in response.content
    assert "_auth_user_id" not in client.session


ADDRESS_A = "203.0.113.7"
ADDRESS_B = "198.51.100.23"
THROTTLED = b"Too many failed login attempts. Try again later."


def _log_in(client, address: str, email: str, password: str):
    return client.post("/accounts/login/", {"login": email, "password": password}, REMOTE_ADDR=address)


def test_wrong_passwords_from_one_address_do_not_lock_the_account_elsewhere(settings):
    from django.test import Client

    from tests.factories import make_user

    make_user("victim@example.com")
    attacker, owner = Client(), Client()
    for _ in range(5):
        response = _log_in(attacker, ADDRESS_A, "victim@example.com", "guess")
        assert response.status_code == 200
        assert THROTTLED not in response.content

    # The address that guessed is throttled for this account, even with the right password.
    refused = _log_in(attacker, ADDRESS_A, "victim@example.com", PASSWORD)
    assert refused.status_code == 200
    assert THROTTLED in refused.content
    assert "_auth_user_id" not in attacker.session

    # The owner, from another address, logs in at once.
    response = _log_in(owner, ADDRESS_B, "victim@example.com", PASSWORD)
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert owner.session["_auth_user_id"]


def test_failures_on_one_account_leave_the_address_free_for_another(settings):
    from django.test import Client

    from tests.factories import make_user

    make_user("victim@example.com")
    colleague = make_user("colleague@example.com")
    client = Client()
    for _ in range(5):
        assert THROTTLED not in _log_in(client, ADDRESS_A, "victim@example.com", "guess").content

    response = _log_in(client, ADDRESS_A, "colleague@example.com", PASSWORD)
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(colleague.pk)


def test_an_address_is_throttled_across_accounts(settings):
    from django.test import Client

    from tests.factories import make_user

    make_user("victim@example.com")
    client = Client()
    for number in range(10):
        response = _log_in(client, ADDRESS_A, f"guess-{number}@example.com", "guess")
        assert THROTTLED not in response.content
    refused = _log_in(client, ADDRESS_A, "victim@example.com", PASSWORD)
    assert THROTTLED in refused.content
    assert _log_in(Client(), ADDRESS_B, "victim@example.com", PASSWORD).status_code == 302
