"""In Chromium: a card added with Stripe.js (localstripe's), a declined one, and an invoice paid."""

import re

import pytest
from playwright.sync_api import expect

from billing.errors import PaymentDeclined
from billing.models import Invoice
from billing.services import invoice_push
from tests.e2e.conftest import log_in
from tests.e2e.test_content_security_policy import _LISTEN, _REPORTS

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def stripe_js(stripe_settings, localstripe):
    """Load localstripe's fake Stripe.js, which talks to the same localstripe."""
    stripe_settings.STRIPE_PUBLISHABLE_KEY = "pk_test_tollgate"
    stripe_settings.STRIPE_JS_URL = f"{localstripe}/js.stripe.com/v3/"
    return stripe_settings


def _enter_card(page, number: str) -> None:
    # localstripe's Card Element is five plain inputs (Stripe's own draws them in a frame).
    element = page.locator("#card-element")
    for field, value in (
        ("number", number),
        ("exp_month", "12"),
        ("exp_year", "30"),
        ("cvc", "123"),
        ("postal_code", "10115"),
    ):
        element.get_by_placeholder(field, exact=True).fill(value)
    page.get_by_role("button", name="Save card").click()


def test_an_owner_adds_a_card_with_stripe_js_and_pays_the_open_invoice(
    new_context, live_server, stripe_js, billed_month, stripe_customer, stripe_api
):
    organization, owner, invoice = billed_month
    customer = stripe_customer(organization, owner, card="pm_card_chargeCustomerFail")
    with pytest.raises(PaymentDeclined):
        invoice_push(invoice=invoice)
    context = new_context()
    context.add_init_script(_LISTEN)
    page = context.new_page()
    reports: list[str] = []
    page.on("console", lambda message: _REPORTS.search(message.text) and reports.append(message.text))

    log_in(page, live_server.url, owner.email)
    page.goto(f"{live_server.url}/o/{organization.slug}/billing/")
    expect(page.locator("#billing-cards tbody tr")).to_have_count(1)
    expect(page.locator("#billing-cards tbody tr")).to_contain_text("Visa ending in 0341")

    # A card Stripe declines: Stripe's own message, and nothing saved.
    _enter_card(page, "4000000000000002")
    expect(page.locator("#card-errors")).to_have_text("Your card was declined.")
    expect(page.get_by_role("button", name="Save card")).to_be_enabled()
    assert len(stripe_api.v1.payment_methods.list(params={"customer": customer, "type": "card"}).data) == 1

    # The 4242 card: saved on the customer and made the default.
    _enter_card(page, "4242424242424242")
    expect(page.get_by_role("status")).to_have_text(
        "Visa ending in 4242 was added; invoices are charged to it."
    )
    row = page.locator("#billing-cards tbody tr", has_text="Visa ending in 4242")
    expect(row).to_contain_text("12/2030")
    expect(row).to_contain_text("Default")
    cards = stripe_api.v1.payment_methods.list(params={"customer": customer, "type": "card"}).data
    default = stripe_api.v1.customers.retrieve(customer).invoice_settings.default_payment_method
    assert [card.card.last4 for card in cards if card.id == default] == ["4242"]

    # The organization was past due: the new card is charged at once, and the invoice is paid.
    page.reload()
    entry = page.locator(f"#invoice-{invoice.public_id}")
    expect(entry.locator("[data-status]")).to_have_text("Paid")
    assert Invoice.objects.get(pk=invoice.pk).status == Invoice.Status.PAID
    assert stripe_api.v1.invoices.retrieve(invoice.stripe_invoice_id).status == "paid"

    assert reports == []


def test_an_open_invoice_is_paid_from_the_page_with_pay_now(
    new_context, live_server, stripe_js, billed_month, stripe_customer, stripe_api
):
    organization, owner, invoice = billed_month
    customer = stripe_customer(organization, owner, card="pm_card_chargeCustomerFail")
    with pytest.raises(PaymentDeclined):
        invoice_push(invoice=invoice)
    # A good card made the default in Stripe itself (the dashboard, say): nothing charged it yet.
    good = stripe_api.v1.payment_methods.attach("pm_card_visa", params={"customer": customer})
    stripe_api.v1.customers.update(customer, params={"invoice_settings": {"default_payment_method": good.id}})
    context = new_context()
    context.add_init_script(_LISTEN)
    page = context.new_page()
    reports: list[str] = []
    page.on("console", lambda message: _REPORTS.search(message.text) and reports.append(message.text))
    log_in(page, live_server.url, owner.email)
    page.goto(f"{live_server.url}/o/{organization.slug}/billing/")

    entry = page.locator(f"#invoice-{invoice.public_id}")
    entry.locator("summary").click()
    expect(entry.get_by_role("link", name="View on Stripe")).to_have_attribute(
        "href", re.compile(rf"/{invoice.stripe_invoice_id}$")
    )
    page.once("dialog", lambda dialog: dialog.accept())
    entry.get_by_role("button", name="Pay now").click()
    expect(page.get_by_role("status")).to_have_text("The November 2026 invoice is paid. Thank you.")
    expect(page.locator(f"#invoice-{invoice.public_id} [data-status]")).to_have_text("Paid")
    assert Invoice.objects.get(pk=invoice.pk).status == Invoice.Status.PAID
    assert stripe_api.v1.invoices.retrieve(invoice.stripe_invoice_id).status == "paid"

    assert reports == []
