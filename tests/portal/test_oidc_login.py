"""Single sign-on through a generic OpenID Connect provider, end to end over real HTTP."""

import json
from urllib.parse import urlsplit

import httpx
import pytest
from allauth.account.models import EmailAddress
from allauth.socialaccount.models import SocialAccount
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured

from portal.env import oidc_providers
from portal.models import AuditEvent, User
from tests.factories import make_user

PROVIDER_ID = "corp-sso"
CALLBACK_PATH = f"/accounts/oidc/{PROVIDER_ID}/login/callback/"


@pytest.fixture(scope="module")
def oidc_client(oidc_server_url):
    """Register Tollgate with the provider, allowing only its callback under SITE_URL."""
    response = httpx.post(
        f"{oidc_server_url}/oauth2/clients",
        json={
            "redirect_uris": [f"{django_settings.SITE_URL}{CALLBACK_PATH}"],
            "token_endpoint_auth_method": "client_secret_post",
        },
        timeout=5,
    )
    assert response.status_code == 201
    return response.json()


@pytest.fixture
def oidc_provider(oidc_server_url, oidc_client, monkeypatch, settings):
    """Configure the provider exactly as a deployment does: through OIDC_PROVIDERS."""
    monkeypatch.setenv(
        "OIDC_PROVIDERS",
        json.dumps(
            [
                {
                    "id": PROVIDER_ID,
                    "name": "Corp SSO",
                    "server_url": oidc_server_url,
                    "client_id": oidc_client["client_id"],
                    "client_secret": oidc_client["client_secret"],
                }
            ]
        ),
    )
    settings.SOCIALACCOUNT_PROVIDERS = {
        **settings.SOCIALACCOUNT_PROVIDERS,
        "openid_connect": {
            **settings.SOCIALACCOUNT_PROVIDERS["openid_connect"],
            "APPS": oidc_providers(),
        },
    }
    return oidc_server_url


def set_identity(server_url: str, sub: str, **claims) -> None:
    response = httpx.put(f"{server_url}/users/{sub}", json=claims, timeout=5)
    assert response.status_code == 204


def sso_login(client, server_url: str, sub: str):
    """Walk the authorization-code flow and return the response to the callback."""
    response = client.post(f"/accounts/oidc/{PROVIDER_ID}/login/")
    assert response.status_code == 302
    authorize_url = response["Location"]
    assert authorize_url.startswith(f"{server_url}/oauth2/authorize?")

    form = httpx.get(authorize_url, timeout=5)
    assert form.status_code == 200
    assert "Authorize Client" in form.text
    approval = httpx.post(authorize_url, data={"sub": sub}, timeout=5)
    assert approval.status_code == 302

    callback = urlsplit(approval.headers["Location"])
    assert (
        f"{callback.scheme}://{callback.netloc}{callback.path}"
        == f"{django_settings.SITE_URL}{CALLBACK_PATH}"
    )
    return client.get(f"{callback.path}?{callback.query}")


@pytest.mark.django_db
def test_first_sso_login_creates_verified_user_and_logs_in(client, oidc_provider):
    set_identity(oidc_provider, "sub-ada", email="ada@corp.example", email_verified=True)

    response = sso_login(client, oidc_provider, "sub-ada")

    assert response.status_code == 302
    assert response["Location"] == "/"
    user = User.objects.get()
    assert user.email == "ada@corp.example"
    assert user.has_usable_password() is False
    account = SocialAccount.objects.get()
    assert (account.user, account.provider, account.uid) == (user, PROVIDER_ID, "sub-ada")
    address = EmailAddress.objects.get()
    assert (address.user, address.email, address.verified, address.primary) == (
        user,
        "ada@corp.example",
        True,
        True,
    )
    assert client.session["_auth_user_id"] == str(user.pk)
    # No organization yet: the console leads to creating one.
    home = client.get("/")
    assert home.status_code == 302
    assert home["Location"] == "/orgs/new/"
    login_event = AuditEvent.objects.get(action="user.login")
    assert (login_event.actor, login_event.metadata) == (user, {"method": f"sso:{PROVIDER_ID}"})


@pytest.mark.django_db
def test_second_sso_login_with_same_subject_reuses_the_user(client, oidc_provider):
    set_identity(oidc_provider, "sub-bo", email="bo@corp.example", email_verified=True)
    assert sso_login(client, oidc_provider, "sub-bo").status_code == 302
    user = User.objects.get()
    client.logout()

    response = sso_login(client, oidc_provider, "sub-bo")

    assert response.status_code == 302
    assert response["Location"] == "/"
    assert User.objects.count() == 1
    assert SocialAccount.objects.get().user == user
    assert client.session["_auth_user_id"] == str(user.pk)
    assert (
        list(AuditEvent.objects.filter(action="user.login", actor=user).values_list("metadata", flat=True))
        == [{"method": f"sso:{PROVIDER_ID}"}] * 2
    )


@pytest.mark.django_db
def test_sso_login_with_verified_email_of_password_user_links_that_user(client, oidc_provider):
    existing = make_user("cy@corp.example")
    set_identity(oidc_provider, "sub-cy", email="cy@corp.example", email_verified=True)

    response = sso_login(client, oidc_provider, "sub-cy")

    assert response.status_code == 302
    assert response["Location"] == "/"
    assert list(User.objects.all()) == [existing]
    account = SocialAccount.objects.get()
    assert (account.user, account.uid) == (existing, "sub-cy")
    assert client.session["_auth_user_id"] == str(existing.pk)
    assert EmailAddress.objects.filter(user=existing).count() == 1
    assert (
        AuditEvent.objects.filter(
            action="user.login", actor=existing, metadata={"method": f"sso:{PROVIDER_ID}"}
        ).count()
        == 1
    )


@pytest.mark.django_db
def test_sso_login_with_unverified_email_of_password_user_does_not_take_over_the_account(
    client, oidc_provider
):
    existing = make_user("dee@corp.example")
    set_identity(oidc_provider, "sub-dee", email="dee@corp.example", email_verified=False)

    response = sso_login(client, oidc_provider, "sub-dee")

    # Treated as a sign-up whose address must be confirmed, which never reveals the account.
    assert response.status_code == 302
    assert response["Location"] == "/accounts/confirm-email/"
    assert list(User.objects.all()) == [existing]
    assert SocialAccount.objects.count() == 0
    assert "_auth_user_id" not in client.session


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", "OIDC_PROVIDERS must be valid JSON"),
        ('{"id": "x"}', "OIDC_PROVIDERS must be a JSON list of provider objects"),
        (
            '[{"id": "x", "name": "X", "server_url": "https://idp.example", "client_id": "c"}]',
            "OIDC_PROVIDERS[0] must be an object with id, name, server_url, client_id, client_secret",
        ),
        (
            '[{"id": "x", "name": "X", "server_url": "ftp://idp.example", "client_id": "c",'
            ' "client_secret": "s"}]',
            "OIDC_PROVIDERS[0].server_url must be an http(s) URL",
        ),
    ],
)
def test_malformed_oidc_providers_is_a_configuration_error_naming_the_variable(monkeypatch, value, message):
    monkeypatch.setenv("OIDC_PROVIDERS", value)
    with pytest.raises(ImproperlyConfigured) as error:
        oidc_providers()
    assert str(error.value).startswith(message)
