"""Cards on file, billing details and "pay now" on the console's Billing page, against localstripe."""

import pytest
from django.urls import reverse

from billing import dunning
from billing.errors import PaymentDeclined
from billing.models import BillingDetails, Invoice
from billing.services import customer_ensure, invoice_push
from portal.models import AuditEvent
from portal.roles import Role
from tests.billing.fixtures import NOV
from tests.factories import add_member, make_org, make_user

pytestmark = pytest.mark.django_db


def _url(name, organization, *args):
    return reverse(name, args=[organization.slug, *args])


def _flash(response) -> list[tuple[str, str]]:
    return [(message.level_tag, message.message) for message in response.context["messages"]]


def _post(client, user, name, organization, *args, data=None):
    client.force_login(user)
    return client.post(_url(name, organization, *args), data or {}, follow=True)


@pytest.fixture
def two_cards(billed_month, stripe_customer, stripe_api):
    """The billed organization's customer: Visa 4242 (the default), then a card ending 0341."""
    organization, owner, invoice = billed_month
    customer = stripe_customer(organization, owner)
    customer_ensure(organization=organization)
    second = stripe_api.v1.payment_methods.attach("pm_card_chargeCustomerFail", params={"customer": customer})
    first = stripe_api.v1.customers.retrieve(customer).invoice_settings.default_payment_method
    return organization, owner, customer, first, second.id


def _default(stripe_api, customer) -> str:
    return stripe_api.v1.customers.retrieve(customer).invoice_settings.default_payment_method


def _attached(stripe_api, customer) -> list[str]:
    found = stripe_api.v1.payment_methods.list(params={"customer": customer, "type": "card"})
    return sorted(method.id for method in found.data)


def _open_invoice(organization, owner, invoice, stripe_customer, stripe_api):
    """Push the invoice with a card that declines: it stays open, with Stripe's id."""
    customer = stripe_customer(organization, owner, card="pm_card_chargeCustomerFail")
    with pytest.raises(PaymentDeclined):
        invoice_push(invoice=invoice)
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.OPEN
    return customer, _default(stripe_api, customer)


def _card_events(organization):
    return list(
        AuditEvent.objects.filter(organization=organization, action__startswith="billing.card")
        .order_by("id")
        .values_list("action", "target_id", "metadata")
    )


def test_the_billing_page_lists_the_cards_with_expiry_and_the_default(client, two_cards):
    organization, owner, _customer, first, second = two_cards
    client.force_login(owner)

    response = client.get(_url("org-billing", organization))

    assert response.status_code == 200
    assert [
        (card.id, card.last4, card.exp_month, card.exp_year, card.is_default)
        for card in response.context["cards"]
    ] == [
        (first, "4242", 12, 2030, True),
        (second, "0341", 12, 2030, False),
    ]
    html = response.content.decode()
    assert (
        f'<tr id="card-{first}">\n        <td>Visa ending in 4242</td>\n        <td>12/2030</td>\n        <td><mark>Default</mark></td>'
        in html
    )
    assert html.count("Make default") == 1 and html.count(">Remove</button>") == 2


def test_making_a_card_the_default_changes_stripes_default_and_is_audited(client, two_cards, stripe_api):
    organization, owner, customer, _first, second = two_cards

    response = _post(client, owner, "org-billing-card-default", organization, second)

    assert response.redirect_chain == [(_url("org-billing", organization), 302)]
    assert _flash(response) == [("success", "Invoices are now charged to Visa ending in 0341.")]
    assert _default(stripe_api, customer) == second
    assert _card_events(organization) == [
        ("billing.card_made_default", second, {"brand": "visa", "last4": "0341"})
    ]


def test_removing_the_default_card_makes_the_remaining_one_the_default(client, two_cards, stripe_api):
    organization, owner, customer, first, second = two_cards

    response = _post(client, owner, "org-billing-card-remove", organization, first)

    assert _flash(response) == [("success", "Visa ending in 4242 was removed.")]
    assert _attached(stripe_api, customer) == [second]
    assert _default(stripe_api, customer) == second
    assert _card_events(organization) == [("billing.card_removed", first, {"brand": "visa", "last4": "4242"})]


def test_the_last_card_cannot_be_removed_while_an_invoice_is_open(
    client, billed_month, stripe_customer, stripe_api
):
    organization, owner, invoice = billed_month
    customer, card = _open_invoice(organization, owner, invoice, stripe_customer, stripe_api)

    response = _post(client, owner, "org-billing-card-remove", organization, card)

    assert _flash(response) == [
        (
            "error",
            "Visa ending in 0341 is the only card and an invoice is open: "
            "add another card before removing this one.",
        )
    ]
    assert _attached(stripe_api, customer) == [card]
    assert _card_events(organization) == []


def test_the_last_card_can_be_removed_when_nothing_is_owed(client, billed_month, stripe_customer, stripe_api):
    organization, owner, _draft = billed_month
    customer = stripe_customer(organization, owner)
    customer_ensure(organization=organization)
    card = _default(stripe_api, customer)

    response = _post(client, owner, "org-billing-card-remove", organization, card)

    assert _flash(response) == [("success", "Visa ending in 4242 was removed.")]
    assert _attached(stripe_api, customer) == []


def test_another_organizations_card_and_invoice_answer_404_and_change_nothing(
    client, two_cards, stripe_api, billed_month
):
    theirs, _owner, customer, first, second = two_cards
    invoice = Invoice.objects.get(organization=theirs, period=NOV)
    mine = make_org(make_user())
    me = add_member(mine, Role.OWNER)
    client.force_login(me)

    answers = [
        client.post(_url("org-billing-card-default", mine, second)).status_code,
        client.post(_url("org-billing-card-remove", mine, first)).status_code,
        client.post(_url("org-billing-card-remove", mine, "pm_0000000000missing")).status_code,
        client.post(_url("org-billing-invoice-pay", mine, invoice.public_id)).status_code,
    ]

    assert answers == [404, 404, 404, 404]
    assert _attached(stripe_api, customer) == sorted([first, second])
    assert _default(stripe_api, customer) == first
    assert AuditEvent.objects.filter(organization=mine, action__startswith="billing").count() == 0


def test_adding_a_card_keeps_the_confirmed_setup_intents_card_as_default_and_tells_dunning(
    client, billed_month, stripe_customer, stripe_api, monkeypatch, django_capture_on_commit_callbacks
):
    organization, owner, invoice = billed_month
    customer, declining = _open_invoice(organization, owner, invoice, stripe_customer, stripe_api)
    told = []
    monkeypatch.setattr(dunning, "dunning_card_added", lambda *, organization: told.append(organization.pk))
    client.force_login(owner)

    started = client.post(_url("org-billing-card-setup", organization))
    secret = started.json()["client_secret"]
    setup_intent = secret.split("_secret_")[0]
    stripe_api.v1.setup_intents.confirm(setup_intent, params={"payment_method": "pm_card_visa"})
    # Until the form posts it back, the new card is on Stripe but not the default.
    assert _default(stripe_api, customer) == declining
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            _url("org-billing-card-add", organization), {"setup_intent": setup_intent}, follow=True
        )

    assert started.status_code == 200
    added = stripe_api.v1.setup_intents.retrieve(setup_intent).payment_method
    assert _attached(stripe_api, customer) == sorted([declining, added])
    assert _default(stripe_api, customer) == added
    assert _flash(response) == [("success", "Visa ending in 4242 was added; invoices are charged to it.")]
    assert _card_events(organization) == [("billing.card_added", added, {"brand": "visa", "last4": "4242"})]
    assert told == [organization.pk]


def test_a_setup_intent_stripe_has_not_confirmed_adds_nothing(
    client, billed_month, stripe_settings, stripe_api
):
    organization, owner, _invoice = billed_month
    client.force_login(owner)
    secret = client.post(_url("org-billing-card-setup", organization)).json()["client_secret"]

    response = client.post(
        _url("org-billing-card-add", organization), {"setup_intent": secret.split("_secret_")[0]}, follow=True
    )

    assert _flash(response) == [("error", "Stripe has not confirmed this card; enter it again.")]
    assert _card_events(organization) == []


def test_billing_details_are_stored_and_synced_to_the_stripe_customer(
    client, billed_month, stripe_settings, stripe_api
):
    organization, owner, _invoice = billed_month
    details = {
        "email": "ap@acme.example",
        "company_name": "Acme GmbH",
        "address_line1": "Hauptstraße 1",
        "address_line2": "",
        "city": "Berlin",
        "postal_code": "10115",
        "state": "",
        "country": "de",
        "tax_id_type": "eu_vat",
        "tax_id_value": "DE 123456789",
    }

    response = _post(client, owner, "org-billing-details", organization, data=details)

    assert _flash(response) == [
        ("success", "Billing details saved; Stripe's invoices carry them from now on.")
    ]
    stored = BillingDetails.objects.get(organization=organization)
    assert (stored.email, stored.company_name, stored.country, stored.tax_id_type, stored.tax_id_value) == (
        "ap@acme.example",
        "Acme GmbH",
        "DE",
        "eu_vat",
        "DE123456789",
    )
    customer = stripe_api.v1.customers.retrieve(customer_ensure(organization=organization).stripe_customer_id)
    assert (customer.email, customer.name) == ("ap@acme.example", "Acme GmbH")
    assert customer.address.to_dict() == {
        "line1": "Hauptstraße 1",
        "line2": "",
        "city": "Berlin",
        "postal_code": "10115",
        "state": "",
        "country": "DE",
    }
    tax_ids = stripe_api.v1.customers.tax_ids.list(customer.id).data
    assert [(tax_id.type, tax_id.value) for tax_id in tax_ids] == [("eu_vat", "DE123456789")]
    event = AuditEvent.objects.get(organization=organization, action="billing.details_updated")
    assert event.metadata["tax_id_type"] == "eu_vat" and "tax_id_value" not in event.metadata

    # Cleared: Stripe falls back to the owner's email and the organization's name, no tax id.
    _post(client, owner, "org-billing-details", organization, data={})
    customer = stripe_api.v1.customers.retrieve(customer.id)
    assert (customer.email, customer.name) == (owner.email, organization.name)
    assert stripe_api.v1.customers.tax_ids.list(customer.id).data == []


def test_a_tax_id_stripe_refuses_is_not_stored(client, billed_month, stripe_settings):
    organization, owner, _invoice = billed_month

    response = _post(
        client,
        owner,
        "org-billing-details",
        organization,
        data={"company_name": "Acme", "tax_id_type": "eu_vat", "tax_id_value": "DE1"},
    )

    assert _flash(response) == [("error", "Stripe does not accept DE1 as a tax id of this kind.")]
    assert not BillingDetails.objects.filter(organization=organization).exists()


def test_pay_now_with_a_declined_card_shows_stripes_message_and_leaves_the_invoice_open(
    client, billed_month, stripe_customer, stripe_api
):
    organization, owner, invoice = billed_month
    _open_invoice(organization, owner, invoice, stripe_customer, stripe_api)

    response = _post(client, owner, "org-billing-invoice-pay", organization, invoice.public_id)

    assert _flash(response) == [("error", "Stripe: Your card was declined.")]
    invoice.refresh_from_db()
    assert (invoice.status, invoice.push_attempts) == (Invoice.Status.OPEN, 2)
    html = response.content.decode()
    assert "Last payment attempt: Stripe: Your card was declined." in html
    assert f'href="{invoice.hosted_invoice_url}"' in html
    assert (
        invoice.hosted_invoice_url
        == f"https://invoice.stripe.com/i/acct_localstripe/{invoice.stripe_invoice_id}"
    )


def test_pay_now_charges_an_open_invoice_to_the_new_default_card(
    client, billed_month, stripe_customer, stripe_api
):
    organization, owner, invoice = billed_month
    customer, _declining = _open_invoice(organization, owner, invoice, stripe_customer, stripe_api)
    good = stripe_api.v1.payment_methods.attach("pm_card_visa", params={"customer": customer})
    _post(client, owner, "org-billing-card-default", organization, good.id)

    response = _post(client, owner, "org-billing-invoice-pay", organization, invoice.public_id)

    assert _flash(response) == [("success", "The November 2026 invoice is paid. Thank you.")]
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID
    assert stripe_api.v1.invoices.retrieve(invoice.stripe_invoice_id).status == "paid"
    assert list(
        AuditEvent.objects.filter(organization=organization, action__startswith="invoice.")
        .order_by("id")
        .values_list("action", "actor_id")
    ) == [
        ("invoice.built", None),
        ("invoice.finalized", None),
        ("invoice.payment_failed", None),
        ("invoice.pay_requested", owner.pk),
        ("invoice.paid", None),
    ]


def test_pay_now_refuses_an_invoice_that_is_not_open(client, billed_month, stripe_settings):
    organization, owner, invoice = billed_month

    response = _post(client, owner, "org-billing-invoice-pay", organization, invoice.public_id)

    assert _flash(response) == [("error", "Only an open invoice can be paid; this one is draft.")]


# --- who may do what ------------------------------------------------------------------------

WRITES = [
    ("org-billing-card-setup", ()),
    ("org-billing-card-add", ()),
    ("org-billing-card-default", ("pm_card",)),
    ("org-billing-card-remove", ("pm_card",)),
    ("org-billing-details", ()),
    ("org-billing-invoice-pay", ("inv_x",)),
]


@pytest.mark.parametrize(
    ("role", "status"),
    [(Role.OWNER, 200), (Role.ADMIN, 200), (Role.BILLING, 200), (Role.VIEWER, 200), (Role.DEVELOPER, 403)],
)
def test_the_billing_page_needs_billing_view(client, role, status):
    organization = make_org()
    client.force_login(add_member(organization, role))
    assert client.get(_url("org-billing", organization)).status_code == status


@pytest.mark.parametrize("role", [Role.VIEWER, Role.DEVELOPER])
@pytest.mark.parametrize(("name", "args"), WRITES, ids=[name for name, _ in WRITES])
def test_every_billing_form_needs_billing_manage(client, role, name, args):
    organization = make_org()
    client.force_login(add_member(organization, role))

    response = client.post(_url(name, organization, *args), {"company_name": "Mine now"})

    assert response.status_code == 403
    assert not BillingDetails.objects.filter(organization=organization).exists()


@pytest.mark.parametrize(("role", "manages"), [(Role.BILLING, True), (Role.VIEWER, False)])
def test_only_managers_see_the_card_and_details_forms(client, settings, role, manages):
    settings.STRIPE_PUBLISHABLE_KEY = "pk_test_tollgate"
    organization = make_org()
    client.force_login(add_member(organization, role))

    html = client.get(_url("org-billing", organization)).content.decode()

    assert ('id="card-form"' in html, 'id="details-form"' in html, "js.stripe.com/v3/" in html) == (
        manages,
        manages,
        manages,
    )


def test_only_the_billing_page_allows_stripe_js_in_its_content_security_policy(client, settings):
    settings.STRIPE_JS_URL = "https://js.stripe.com/v3/"
    settings.STRIPE_API_BASE = "https://api.stripe.com"
    owner = make_user()
    organization = make_org(owner)
    client.force_login(owner)

    billing = client.get(_url("org-billing", organization))["Content-Security-Policy"]
    members = client.get(_url("org-members", organization))["Content-Security-Policy"]

    directives = dict(part.split(" ", 1) for part in billing.split("; "))
    assert directives["script-src"] == "'self' https://js.stripe.com https://*.js.stripe.com"
    assert directives["frame-src"] == "https://js.stripe.com https://hooks.stripe.com https://*.js.stripe.com"
    assert directives["connect-src"] == "'self' https://api.stripe.com"
    assert "stripe" not in members
    assert (
        billing.replace(" https://js.stripe.com https://*.js.stripe.com", "").replace(
            "; frame-src https://js.stripe.com https://hooks.stripe.com https://*.js.stripe.com; "
            "connect-src 'self' https://api.stripe.com",
            "",
        )
        == members
    )
