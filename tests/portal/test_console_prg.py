"""Every console form redirects after success, and a reload repeats nothing (POST-redirect-GET).

A one-time secret (a new or rotated API key, a service account's client secret) is read
once from a server-side stash by the page the form redirects to: a reload of that page
shows that it is gone, never the secret. Django test client against real Postgres and Redis.
"""

import html
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from allauth.idp.oidc.models import Client
from django.apps import apps
from django.core import mail
from django.test import Client as BrowserClient
from django.urls import URLResolver, get_resolver, resolve, reverse

from keys import services as key_services
from keys.models import ApiKey, ServiceAccount
from portal import services
from portal.audit import Actor
from portal.models import AuditEvent, Invitation, Membership
from portal.reveal import REVEAL_TTL
from portal.roles import Role
from tests.factories import add_member, make_org, make_user

pytestmark = pytest.mark.django_db

CONSOLE_VIEW_MODULES = ("portal.views", "keys.views", "usage.views", "billing.views")
SECRET_FIELD = re.compile(r'<input type="text" id="secret" value="([^"]+)"')
CLIENT_SECRET_FIELD = re.compile(r'<input type="text" id="client-secret" value="([^"]+)"')
GONE = "This secret was shown once and is no longer available."


def _patterns(patterns):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _patterns(pattern.url_patterns)
        else:
            yield pattern


def _console_forms() -> list[str]:
    """Name every console URL whose view accepts a POST, read from the URLconf."""
    names = set()
    for pattern in _patterns(get_resolver().url_patterns):
        view = getattr(pattern.callback, "view_class", None)
        if view is None or not view.__module__.startswith(CONSOLE_VIEW_MODULES):
            continue
        if any(hasattr(view, method) for method in ("post", "put", "patch", "delete")):
            assert pattern.name, f"{view.__name__} accepts writes on an unnamed URL"
            names.add(pattern.name)
    return sorted(names)


def _owner(organization):
    return Membership.objects.for_organization(organization).get(role=Role.OWNER).user


def _actor(organization) -> Actor:
    return Actor(user=_owner(organization))


def _membership(organization, role=Role.DEVELOPER) -> Membership:
    user = add_member(organization, role)
    return Membership.objects.for_organization(organization).get(user=user)


def _invitation(organization, email="invitee@example.com") -> tuple[Invitation, str]:
    return services.invitation_create(
        actor=_actor(organization), organization=organization, email=email, role=Role.DEVELOPER
    )


def _key(organization, name="Backend"):
    return key_services.api_key_create(actor=_actor(organization), organization=organization, name=name)


def _service_account(organization) -> ServiceAccount:
    account, _client_id, _secret = key_services.service_account_create(
        actor=_actor(organization), organization=organization, name="CI", role=Role.DEVELOPER
    )
    return account


@dataclass(frozen=True)
class Form:
    """One console form submitted successfully, and the page it must send the browser to."""

    url: Callable  # organization -> the form's URL (making what it acts on)
    data: dict
    lands_on: str
    reload_status: int = 200
    # organization -> who submits it; the owner unless given
    user: Callable = _owner
    audit_rows: int = 1
    stripe: bool = False  # the form talks to Stripe (the session's localstripe)


def _joiner(organization):
    return make_user("joiner@example.com")


NEW_KEY = {"name": "Batch", "environment": "live", "budget_alert_percent": "80"}

FORMS = {
    "org-create": Form(lambda org: reverse("org-create"), {"name": "Beta Labs"}, "org-dashboard"),
    "org-settings": Form(
        lambda org: reverse("org-settings", args=[org.slug]), {"name": "Acme Renamed"}, "org-settings"
    ),
    "org-members": Form(
        lambda org: reverse("org-members", args=[org.slug]),
        {"email": "new@example.com", "role": Role.DEVELOPER},
        "org-members",
    ),
    "org-member-role": Form(
        lambda org: reverse("org-member-role", args=[org.slug, _membership(org).pk]),
        {"role": Role.ADMIN},
        "org-members",
    ),
    "org-member-remove": Form(
        lambda org: reverse("org-member-remove", args=[org.slug, _membership(org).pk]), {}, "org-members"
    ),
    "org-invitation-resend": Form(
        lambda org: reverse("org-invitation-resend", args=[org.slug, _invitation(org)[0].pk]),
        {},
        "org-members",
    ),
    "org-invitation-revoke": Form(
        lambda org: reverse("org-invitation-revoke", args=[org.slug, _invitation(org)[0].pk]),
        {},
        "org-members",
    ),
    "invitation-accept": Form(
        lambda org: reverse("invitation-accept", args=[_invitation(org, "joiner@example.com")[1]]),
        {},
        "org-dashboard",
        user=_joiner,
    ),
    "invitation-pending-accept": Form(
        lambda org: reverse("invitation-pending-accept", args=[_invitation(org, "joiner@example.com")[0].pk]),
        {},
        "org-dashboard",
        user=_joiner,
    ),
    "invitation-pending-decline": Form(
        lambda org: reverse(
            "invitation-pending-decline", args=[_invitation(org, "joiner@example.com")[0].pk]
        ),
        {},
        "invitations-pending",
        user=_joiner,
    ),
    "org-key-create": Form(
        lambda org: reverse("org-key-create", args=[org.slug]), NEW_KEY, "org-key-secret", reload_status=410
    ),
    "org-key-edit": Form(
        lambda org: reverse("org-key-edit", args=[org.slug, _key(org)[0].public_id]),
        {"name": "Renamed", "budget_alert_percent": "80"},
        "org-keys",
    ),
    "org-key-rotate": Form(
        lambda org: reverse("org-key-rotate", args=[org.slug, _key(org)[0].public_id]),
        {"grace": "0"},
        "org-key-secret",
        reload_status=410,
    ),
    "org-key-revoke": Form(
        lambda org: reverse("org-key-revoke", args=[org.slug, _key(org)[0].public_id]), {}, "org-keys"
    ),
    "org-service-accounts": Form(
        lambda org: reverse("org-service-accounts", args=[org.slug]),
        {"name": "Deployer", "role": Role.DEVELOPER},
        "org-service-account-secret",
        reload_status=410,
    ),
    "org-service-account-revoke": Form(
        lambda org: reverse("org-service-account-revoke", args=[org.slug, _service_account(org).public_id]),
        {},
        "org-service-accounts",
    ),
}


# Billing forms: what each acts on is made in Stripe first; ``url`` keeps it on the organization.


def _stripe_card(organization, card="pm_card_visa") -> str:
    """Confirm a SetupIntent for a card, as Stripe.js would; return the SetupIntent's id."""
    from billing import services as billing_services
    from billing import stripe_adapter

    intent = billing_services.payment_method_setup_start(organization=organization)
    stripe_adapter.setup_intent_confirm(setup_intent=intent.id, payment_method=card)
    return intent.id


def _saved_card(organization, card="pm_card_visa") -> str:
    from billing import services as billing_services

    added = billing_services.payment_method_add(
        actor=_actor(organization),
        organization=organization,
        setup_intent_id=_stripe_card(organization, card),
    )
    return added.id


def _card_to_add(organization) -> str:
    organization.arranged = {"setup_intent": _stripe_card(organization)}
    return reverse("org-billing-card-add", args=[organization.slug])


def _card_among_two(name: str):
    def url(organization):
        first = _saved_card(organization)
        _saved_card(organization)
        return reverse(name, args=[organization.slug, first])

    return url


def _open_invoice(organization) -> str:
    """An invoice whose charge was declined, and a good card made the default in Stripe since."""
    from datetime import date

    from billing import stripe_adapter
    from billing.closing import invoice_store
    from billing.errors import PaymentDeclined
    from billing.models import Customer
    from billing.rating import Line, Rating
    from billing.selectors import plan_default
    from billing.services import invoice_push

    _saved_card(organization, "pm_card_chargeCustomerFail")
    invoice = invoice_store(
        organization_id=organization.pk,
        period=date(2026, 10, 1),
        plan=plan_default(),
        rating=Rating((Line("fee", "", "", 1, None, 900, "Standard plan, October 2026"),)),
    )
    with pytest.raises(PaymentDeclined):
        invoice_push(invoice=invoice)
    intent = _stripe_card(organization)
    customer = Customer.objects.get(organization=organization).stripe_customer_id
    method = stripe_adapter.setup_intent_retrieve(setup_intent=intent).payment_method
    stripe_adapter.customer_default_payment_method_set(customer=customer, payment_method=method)
    return reverse("org-billing-invoice-pay", args=[organization.slug, invoice.public_id])


def _details_url(organization) -> str:
    from billing.services import customer_ensure

    customer_ensure(organization=organization)  # the Stripe customer the details go to
    return reverse("org-billing-details", args=[organization.slug])


FORMS |= {
    "org-billing-card-add": Form(
        _card_to_add, lambda org: {"setup_intent": org.arranged["setup_intent"]}, "org-billing", stripe=True
    ),
    "org-billing-card-default": Form(
        _card_among_two("org-billing-card-default"), {}, "org-billing", stripe=True
    ),
    "org-billing-card-remove": Form(
        _card_among_two("org-billing-card-remove"), {}, "org-billing", stripe=True
    ),
    "org-billing-details": Form(
        _details_url,
        {"email": "ap@acme.example", "company_name": "Acme GmbH", "country": "de"},
        "org-billing",
        stripe=True,
    ),
    # Paid: the invoice, the request, and the dunning the decline had started ends (4 rows).
    "org-billing-invoice-pay": Form(_open_invoice, {}, "org-billing", stripe=True, audit_rows=4),
}
# POST endpoints that are not forms: the browser's script calls them and reads JSON back.
NOT_FORMS = {"org-billing-card-setup": "billing.js starts a SetupIntent; nothing is stored here"}


def _state() -> dict[str, int]:
    """Count the rows of every model (audit events included) and the emails sent."""
    counts = {model._meta.label: model._base_manager.count() for model in apps.get_models()}
    counts["emails sent"] = len(mail.outbox)
    return counts


def _changes(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before[name] for name in after if after[name] != before[name]}


def _flash(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_the_console_forms_are_found_in_the_urlconf():
    assert _console_forms() == sorted([*FORMS, *NOT_FORMS])


@pytest.mark.parametrize("url_name", [name for name in _console_forms() if name not in NOT_FORMS])
def test_each_console_form_redirects_to_a_page_whose_reload_changes_nothing(
    client, url_name, django_capture_on_commit_callbacks, request
):
    assert url_name in FORMS, (
        f"{url_name} accepts POST: redirect after success and describe the form in FORMS"
    )
    form = FORMS[url_name]
    if form.stripe:
        request.getfixturevalue("stripe_settings")
    organization = make_org(name="Acme")
    url = form.url(organization)
    data = form.data(organization) if callable(form.data) else form.data
    client.force_login(form.user(organization))
    audit_rows = AuditEvent.objects.count()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, data)
    assert response.status_code == 302
    location = response["Location"]
    assert resolve(urlsplit(location).path).url_name == form.lands_on
    assert AuditEvent.objects.count() == audit_rows + form.audit_rows

    after_post = _state()
    with django_capture_on_commit_callbacks(execute=True):
        first = client.get(location)
        reloads = [client.get(location) for _ in range(2)]
    assert first.status_code == 200
    assert len(_flash(first)) == 1
    assert [reload.status_code for reload in reloads] == [form.reload_status] * 2
    assert [_flash(reload) for reload in reloads] == [[], []]
    assert _changes(after_post, _state()) == {}
    assert AuditEvent.objects.count() == audit_rows + form.audit_rows


# --- One-time secrets ----------------------------------------------------------------------


def _secret_on(response) -> str:
    match = SECRET_FIELD.search(response.content.decode())
    assert match, "no secret field on the page"
    return match.group(1)


def test_new_key_secret_is_shown_once_after_the_redirect_and_never_on_reload(client):
    organization = make_org(name="Acme")
    client.force_login(_owner(organization))
    response = client.post(
        reverse("org-key-create", args=[organization.slug]),
        NEW_KEY,
    )
    assert response.status_code == 302
    key = ApiKey.objects.for_organization(organization).get()
    match = re.fullmatch(
        rf"/o/{organization.slug}/keys/{key.public_id}/secret/([A-Za-z0-9_-]{{22}})/", response["Location"]
    )
    assert match

    shown = client.get(response["Location"])
    assert shown.status_code == 200
    assert shown["Cache-Control"] == "max-age=0, no-cache, no-store, must-revalidate, private"
    assert _flash(shown) == ["Created the key Batch."]
    secret = _secret_on(shown)
    assert secret not in response["Location"]
    assert key.secrets.get().secret_hash == key_services.secret_hash(secret)
    assert "It will not be shown again" in shown.content.decode()

    reloaded = client.get(response["Location"])
    assert reloaded.status_code == 410
    assert reloaded["Cache-Control"] == "max-age=0, no-cache, no-store, must-revalidate, private"
    content = reloaded.content.decode()
    assert GONE in content
    assert "rotate the key Batch to get a new secret" in content
    assert secret not in content
    assert not SECRET_FIELD.search(content)
    assert _flash(reloaded) == []
    assert ApiKey.objects.for_organization(organization).count() == 1
    assert list(AuditEvent.objects.filter(organization=organization).values_list("action", flat=True)) == [
        "key.created",
        "organization.created",
    ]


def test_rotate_then_reload_rotates_once_and_the_secret_shown_keeps_working(
    client, redis_client, django_capture_on_commit_callbacks
):
    organization = make_org(name="Acme")
    key, old = _key(organization, name="Search")
    client.force_login(_owner(organization))
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("org-key-rotate", args=[organization.slug, key.public_id]), {"grace": "0"}
        )
    assert response.status_code == 302
    assert resolve(urlsplit(response["Location"]).path).url_name == "org-key-secret"

    shown = client.get(response["Location"])
    assert shown.status_code == 200
    assert _flash(shown) == ["Rotated the key Search."]
    new = _secret_on(shown)
    assert new != old
    assert "stopped working now" in shown.content.decode()

    with django_capture_on_commit_callbacks(execute=True):
        reloads = [client.get(response["Location"]) for _ in range(2)]
    assert [reload.status_code for reload in reloads] == [410, 410]
    assert all(new not in reload.content.decode() for reload in reloads)

    assert [secret.secret_hash for secret in key.secrets.live()] == [key_services.secret_hash(new)]
    assert key.secrets.count() == 2
    record = json.loads(redis_client.get(f"tg:key:{key_services.secret_hash(new)}"))
    assert (record["status"], record["secret_expires_at"]) == ("active", None)
    rotations = AuditEvent.objects.filter(organization=organization, action="key.rotated")
    assert rotations.count() == 1


def test_service_account_secret_is_shown_once_after_the_redirect_and_never_on_reload(client):
    organization = make_org(name="Acme")
    client.force_login(_owner(organization))
    response = client.post(
        reverse("org-service-accounts", args=[organization.slug]),
        {"name": "Deployer", "role": Role.DEVELOPER},
    )
    assert response.status_code == 302
    account = ServiceAccount.objects.for_organization(organization).get()
    assert re.fullmatch(
        rf"/o/{organization.slug}/service-accounts/{account.public_id}/secret/[A-Za-z0-9_-]{{22}}/",
        response["Location"],
    )

    shown = client.get(response["Location"])
    assert shown.status_code == 200
    assert shown["Cache-Control"] == "max-age=0, no-cache, no-store, must-revalidate, private"
    assert _flash(shown) == ["Created the service account Deployer."]
    client_secret = html.unescape(CLIENT_SECRET_FIELD.search(shown.content.decode()).group(1))
    assert Client.objects.get(id=account.client_id_display).check_secret(client_secret)

    reloaded = client.get(response["Location"])
    assert reloaded.status_code == 410
    content = reloaded.content.decode()
    assert GONE in content
    assert "revoke the service account Deployer and create a new one" in content
    assert html.escape(client_secret) not in content and client_secret not in content
    assert ServiceAccount.objects.for_organization(organization).count() == 1


def test_a_stashed_secret_is_readable_only_by_the_session_and_page_that_made_it(client):
    organization = make_org(name="Acme")
    owner = _owner(organization)
    client.force_login(owner)
    location = client.post(
        reverse("org-key-create", args=[organization.slug]),
        NEW_KEY,
    )["Location"]
    reveal_id = location.rstrip("/").rsplit("/", 1)[1]
    other_key, _secret = _key(organization, name="Other")

    same_user_elsewhere = BrowserClient()
    same_user_elsewhere.force_login(owner)
    colleague = BrowserClient()
    colleague.force_login(add_member(organization, Role.ADMIN))
    outsider = BrowserClient()
    outsider.force_login(_owner(make_org()))
    assert same_user_elsewhere.get(location).status_code == 410
    assert colleague.get(location).status_code == 410
    assert outsider.get(location).status_code == 404
    other_page = reverse("org-key-secret", args=[organization.slug, other_key.public_id, reveal_id])
    assert client.get(other_page).status_code == 410

    # None of those used it up: the browser that made it still reads it, once.
    shown = client.get(location)
    assert shown.status_code == 200
    key = ApiKey.objects.for_organization(organization).get(name="Batch")
    assert key.secrets.get().secret_hash == key_services.secret_hash(_secret_on(shown))
    assert client.get(location).status_code == 410


def _redis_contents(redis_client) -> list[bytes]:
    """Return every key name and every string value in the test's Redis database."""
    contents = []
    for name in redis_client.scan_iter():
        contents.append(name)
        if redis_client.type(name) == b"string":
            contents.append(redis_client.get(name))
    return contents


def test_a_stashed_secret_is_encrypted_expires_and_stays_out_of_urls_sessions_cookies_and_logs(
    client, redis_client, caplog
):
    caplog.set_level(logging.DEBUG)
    organization = make_org(name="Acme")
    client.force_login(_owner(organization))
    response = client.post(
        reverse("org-key-create", args=[organization.slug]),
        NEW_KEY,
    )
    stashed = [name for name in redis_client.scan_iter() if b":reveal:" in name]
    assert len(stashed) == 1
    assert 0 < redis_client.ttl(stashed[0]) <= REVEAL_TTL.total_seconds() == 600
    waiting = _redis_contents(redis_client)

    secret = _secret_on(client.get(response["Location"]))
    assert [name for name in redis_client.scan_iter() if b":reveal:" in name] == []
    assert not [item for item in waiting if secret.encode() in item]
    assert secret not in response["Location"]
    assert secret not in json.dumps(dict(client.session.items()))
    assert all(secret not in morsel.value for morsel in client.cookies.values())
    assert secret not in caplog.text
