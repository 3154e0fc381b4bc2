"""The billing API's writes that Stripe can refuse: a declined card, the last card, a tax id."""

import pytest

from billing.errors import PaymentDeclined
from billing.models import BillingDetails, Invoice
from billing.services import customer_ensure, invoice_push
from portal.models import AuditEvent
from tests.api.support import assert_matches_schema, call, openapi_schema, session_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def declined(billed_month, stripe_customer):
    """November's invoice, open after its charge was declined: the only card fails to charge."""
    organization, owner, invoice = billed_month
    customer = stripe_customer(organization, owner, card="pm_card_chargeCustomerFail")
    with pytest.raises(PaymentDeclined):
        invoice_push(invoice=invoice)
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.OPEN
    return organization, owner, invoice, customer


def test_paying_with_a_declined_card_is_a_402_problem_with_stripes_decline_code(declined):
    organization, owner, invoice, _customer = declined

    response = call(session_client(owner), "POST", f"/api/v1/invoices/{invoice.public_id}/pay")

    assert response.status_code == 402
    assert response["Content-Type"] == "application/problem+json"
    assert response.json() == {
        "type": "urn:tollgate:problem:card_declined",
        "title": "Payment required",
        "status": 402,
        "detail": "Stripe: Your card was declined.",
        "decline_code": "generic_decline",
    }
    invoice.refresh_from_db()
    assert (invoice.status, invoice.push_attempts, invoice.last_push_error) == (
        Invoice.Status.OPEN,
        2,
        "Stripe: Your card was declined.",
    )
    assert_matches_schema(openapi_schema(), "/api/v1/invoices/{invoice_id}/pay", "POST", response)


def test_paying_an_invoice_that_is_not_open_is_a_409(billed_month, stripe_settings):
    organization, owner, invoice = billed_month

    response = call(session_client(owner), "POST", f"/api/v1/invoices/{invoice.public_id}/pay")

    assert (response.status_code, response.json()["detail"]) == (
        409,
        "Only an open invoice can be paid; this one is draft.",
    )
    assert Invoice.objects.get(pk=invoice.pk).status == Invoice.Status.DRAFT


def test_the_last_card_is_kept_while_an_invoice_is_open(declined, stripe_api):
    organization, owner, _invoice, customer = declined
    [card] = stripe_api.v1.payment_methods.list(params={"customer": customer, "type": "card"}).data

    response = call(session_client(owner), "DELETE", f"/api/v1/payment-methods/{card.id}")

    assert response.status_code == 409
    assert response.json() == {
        "type": "urn:tollgate:problem:conflict",
        "title": "Conflict",
        "status": 409,
        "detail": "Visa ending in 0341 is the only card and an invoice is open: "
        "add another card before removing this one.",
    }
    assert [
        found.id
        for found in stripe_api.v1.payment_methods.list(params={"customer": customer, "type": "card"}).data
    ] == [card.id]
    assert not AuditEvent.objects.filter(organization=organization, action="billing.card_removed").exists()


def test_a_tax_id_stripe_refuses_is_a_400_on_its_field_and_nothing_is_stored(
    billed_month, stripe_settings, stripe_api
):
    organization, owner, _invoice = billed_month

    response = call(
        session_client(owner),
        "PATCH",
        "/api/v1/billing/details",
        {"company_name": "Renamed", "tax_id_type": "eu_vat", "tax_id_value": "DE1"},
    )

    assert response.status_code == 400
    assert response.json() == {
        "type": "urn:tollgate:problem:tax_id_invalid",
        "title": "Bad request",
        "status": 400,
        "detail": "Stripe does not accept DE1 as a tax id of this kind.",
        "errors": {"tax_id_value": ["Stripe does not accept DE1 as a tax id of this kind."]},
    }
    assert not BillingDetails.objects.filter(organization=organization).exists()
    customer = stripe_api.v1.customers.retrieve(customer_ensure(organization=organization).stripe_customer_id)
    assert customer.name == organization.name


def test_a_partial_update_keeps_the_other_details_and_syncs_them_all(
    billed_month, stripe_settings, stripe_api
):
    organization, owner, _invoice = billed_month
    client = session_client(owner)
    call(client, "PATCH", "/api/v1/billing/details", {"company_name": "Acme GmbH", "city": "Berlin"})

    response = call(client, "PATCH", "/api/v1/billing/details", {"email": "ap@acme.example"})

    assert response.status_code == 200
    assert (response.json()["company_name"], response.json()["city"], response.json()["email"]) == (
        "Acme GmbH",
        "Berlin",
        "ap@acme.example",
    )
    customer = stripe_api.v1.customers.retrieve(customer_ensure(organization=organization).stripe_customer_id)
    assert (customer.name, customer.email, customer.address.city) == (
        "Acme GmbH",
        "ap@acme.example",
        "Berlin",
    )
