"""Staff actions on an invoice: void an open one (here and in Stripe), and queue another push."""

import pytest

from billing.models import Invoice
from billing.services import invoice_push_request, invoice_void
from billing.tasks import invoice_push as invoice_push_task
from portal.audit import Actor
from portal.errors import Conflict
from portal.models import AuditEvent
from tests.billing.test_stripe_push import stripe_state

pytestmark = pytest.mark.django_db


def test_an_open_invoice_is_voided_here_and_in_stripe_and_audited(billed_month, stripe_customer, stripe_api):
    organization, owner, invoice = billed_month
    customer = stripe_customer(organization, owner, card="pm_card_chargeCustomerFail")
    assert invoice_push_task.apply(args=[invoice.pk]).get() == "open"

    invoice_void(actor=Actor(user=owner), invoice=invoice)

    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.VOID
    assert invoice.voided_at is not None
    invoices, _charges = stripe_state(stripe_api, customer)
    assert [(status, total) for status, total, _lines in invoices] == [("void", 648)]
    event = AuditEvent.objects.get(action="invoice.voided")
    assert (event.organization_id, event.actor_id, event.metadata["total_minor"]) == (
        organization.pk,
        owner.pk,
        648,
    )


@pytest.mark.parametrize("status", ["draft", "paid", "void", "uncollectible"])
def test_only_an_open_invoice_can_be_voided(billed_month, status):
    organization, owner, invoice = billed_month
    Invoice.objects.filter(pk=invoice.pk).update(status=status)
    with pytest.raises(Conflict, match="Only an open invoice can be voided"):
        invoice_void(actor=Actor(user=owner), invoice=invoice)
    assert Invoice.objects.get(pk=invoice.pk).status == status
    assert not AuditEvent.objects.filter(action="invoice.voided").exists()


def test_a_requested_push_charges_the_invoice_once_the_card_is_fixed(
    billed_month, stripe_customer, stripe_api, django_capture_on_commit_callbacks
):
    organization, owner, invoice = billed_month
    stripe_customer(organization, owner, card="pm_card_chargeCustomerFail")
    assert invoice_push_task.apply(args=[invoice.pk]).get() == "open"
    customer = stripe_customer(organization, owner)  # the same customer, now with a good default card

    with django_capture_on_commit_callbacks(execute=True):
        invoice_push_request(actor=Actor(user=owner), invoice=invoice)

    invoice.refresh_from_db()
    assert (invoice.status, invoice.last_push_error) == ("paid", "")
    invoices, charges = stripe_state(stripe_api, customer)
    assert [(status, total) for status, total, _lines in invoices] == [("paid", 648)]
    assert sorted(charges) == [("failed", 648), ("succeeded", 648)]
    assert AuditEvent.objects.filter(action="invoice.push_requested", organization=organization).count() == 1


def test_a_paid_invoice_is_not_pushed_again(billed_month):
    organization, owner, invoice = billed_month
    Invoice.objects.filter(pk=invoice.pk).update(status="paid")
    invoice.refresh_from_db()
    with pytest.raises(Conflict, match="A paid invoice has nothing to push."):
        invoice_push_request(actor=Actor(user=owner), invoice=invoice)
