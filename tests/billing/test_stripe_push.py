"""Pushing an invoice to Stripe (localstripe, completed as real Stripe behaves): exactly the
invoice's lines, one charge, and a rerun after a crash at any step changes nothing of that."""

import pytest

from billing import stripe_adapter
from billing.closing import NOTHING_TO_PAY, invoice_build
from billing.errors import BillingError, BillingUnavailable, PaymentDeclined
from billing.models import Customer, Invoice, InvoiceLine
from billing.services import invoice_push
from billing.tasks import invoice_push as invoice_push_task
from portal.models import AuditEvent
from tests.billing.fixtures import NOV
from tests.factories import make_org
from tests.servers import free_port

pytestmark = pytest.mark.django_db

EXPECTED_LINES = [
    ("m · 2,000,000 input tokens", 200),
    ("m · 500,000 cached input tokens", 25),
    ("m · 1,000,000 output tokens", 300),
    ("n · 1,234,567 input tokens", 123),
]


class Crash(Exception):
    """A worker dying right after Stripe answered, before anything was stored."""


def crash_after(monkeypatch, name: str, calls: int = 1):
    """Make ``stripe_adapter.<name>`` reach Stripe, then crash on its ``calls``-th call."""
    real = getattr(stripe_adapter, name)
    count = 0

    def call(**kwargs):
        nonlocal count
        answer = real(**kwargs)
        count += 1
        if count == calls:
            raise Crash(name)
        return answer

    monkeypatch.setattr(stripe_adapter, name, call)


def stripe_state(stripe_api, customer: str):
    """Return the customer's Stripe invoices, each as (status, total, lines), and its charges."""
    invoices = [
        (
            invoice.status,
            invoice.total,
            sorted(
                (line.description, line.amount, line.metadata["tollgate_line_id"])
                for line in stripe_api.v1.invoices.line_items.list(invoice.id).auto_paging_iter()
            ),
        )
        for invoice in stripe_api.v1.invoices.list(params={"customer": customer}).auto_paging_iter()
    ]
    charges = [
        (charge.status, charge.amount)
        for charge in stripe_api.v1.charges.list(params={"customer": customer}).auto_paging_iter()
    ]
    return invoices, charges


def paid_state(invoice):
    lines = sorted(
        (line.description, line.amount_minor, str(line.pk))
        for line in InvoiceLine.objects.filter(invoice=invoice)
    )
    return [("paid", 648, lines)], [("succeeded", 648)]


def test_push_mirrors_the_lines_and_charges_the_card_once(billed_month, stripe_customer, stripe_api):
    organization, owner, invoice = billed_month
    customer = stripe_customer(organization, owner)

    invoice_push(invoice=invoice)

    invoice.refresh_from_db()
    assert (invoice.status, invoice.total_minor, invoice.push_attempts, invoice.last_push_error) == (
        "paid",
        648,
        1,
        "",
    )
    assert invoice.finalized_at is not None and invoice.paid_at is not None
    assert Customer.objects.get(organization=organization).stripe_customer_id == customer
    remote = stripe_api.v1.invoices.retrieve(invoice.stripe_invoice_id)
    assert (remote.customer, remote.currency, remote.collection_method, remote.auto_advance) == (
        customer,
        "usd",
        "charge_automatically",
        False,
    )
    assert remote.metadata.to_dict() == {
        "tollgate_invoice_id": str(invoice.pk),
        "tollgate_organization_id": str(organization.pk),
        "tollgate_period": "2026-11",
    }
    lines = list(InvoiceLine.objects.filter(invoice=invoice).order_by("position"))
    assert [(line.description, line.amount_minor) for line in lines] == EXPECTED_LINES
    items = {item.id: item for item in stripe_api.v1.invoice_items.list(params={"invoice": remote.id}).data}
    assert sorted(items) == sorted(line.stripe_invoice_item_id for line in lines)
    for line in lines:
        item = items[line.stripe_invoice_item_id]
        assert (
            item.amount,
            item.currency,
            item.description,
            item.metadata.to_dict(),
            item.period.to_dict(),
        ) == (
            line.amount_minor,
            "usd",
            line.description,
            {"tollgate_line_id": str(line.pk)},
            {"start": 1793491200, "end": 1796083200},  # 2026-11-01 and 2026-12-01, 00:00 UTC
        )
    assert stripe_state(stripe_api, customer) == paid_state(invoice)
    stripe_customer_object = stripe_api.v1.customers.retrieve(customer)
    assert (
        stripe_customer_object.name,
        stripe_customer_object.email,
        stripe_customer_object.metadata.to_dict(),
    ) == (
        organization.name,
        owner.email,
        {"tollgate_organization_id": str(organization.pk), "tollgate_organization_slug": organization.slug},
    )
    assert list(
        AuditEvent.objects.filter(organization=organization, action__startswith="invoice.")
        .order_by("pk")
        .values_list("action", flat=True)
    ) == ["invoice.built", "invoice.finalized", "invoice.paid"]


@pytest.mark.parametrize(
    ("step", "calls"),
    [
        ("customer_create", 1),
        ("invoice_create", 1),
        ("invoice_item_create", 1),
        ("invoice_item_create", 3),
        ("invoice_finalize", 1),
        ("invoice_pay", 1),
    ],
)
def test_a_rerun_after_a_crash_after_any_step_bills_once(
    billed_month, stripe_customer, stripe_api, monkeypatch, step, calls
):
    organization, owner, invoice = billed_month
    customer = stripe_customer(organization, owner)
    crash_after(monkeypatch, step, calls)
    with pytest.raises(Crash):
        invoice_push(invoice=invoice)
    monkeypatch.undo()

    invoice_push(invoice=invoice)

    invoice.refresh_from_db()
    assert (invoice.status, invoice.push_attempts, invoice.last_push_error) == ("paid", 2, "")
    assert Customer.objects.filter(organization=organization).count() == 1
    assert stripe_state(stripe_api, customer) == paid_state(invoice)


@pytest.mark.parametrize(("step", "calls"), [("invoice_create", 1), ("invoice_item_create", 2)])
def test_a_rerun_after_stripe_forgot_the_keys_finds_what_was_made(
    billed_month, stripe_customer, stripe_api, monkeypatch, forget_idempotency_keys, step, calls
):
    organization, owner, invoice = billed_month
    customer = stripe_customer(organization, owner)
    crash_after(monkeypatch, step, calls)
    with pytest.raises(Crash):
        invoice_push(invoice=invoice)
    monkeypatch.undo()
    forget_idempotency_keys()

    invoice_push(invoice=invoice)

    invoice.refresh_from_db()
    assert invoice.status == "paid"
    assert stripe_state(stripe_api, customer) == paid_state(invoice)


def test_a_replayed_idempotency_key_returns_the_first_result(billed_month, stripe_customer, stripe_api):
    organization, owner, invoice = billed_month
    customer = stripe_customer(organization, owner)
    draft = stripe_adapter.invoice_create(
        customer=customer, currency="usd", invoice_id=invoice.pk, organization_id=organization.pk, period=NOV
    )
    again = stripe_adapter.invoice_create(
        customer=customer, currency="usd", invoice_id=invoice.pk, organization_id=organization.pk, period=NOV
    )
    line = invoice.lines.get(position=1)
    item = dict(
        customer=customer,
        invoice=draft,
        line_id=line.pk,
        amount_minor=200,
        currency="usd",
        description=line.description,
        period=NOV,
    )
    first = stripe_adapter.invoice_item_create(**item)
    second = stripe_adapter.invoice_item_create(**item)

    assert again == draft
    assert second == first
    assert [found.id for found in stripe_api.v1.invoices.list(params={"customer": customer}).data] == [draft]
    assert stripe_adapter.invoice_items(invoice=draft) == {line.pk: first}
    with pytest.raises(BillingError) as refused:
        stripe_adapter.invoice_item_create(**{**item, "amount_minor": 201})
    assert refused.value.code == "idempotency_error"
    assert refused.value.message == (
        "Stripe: Keys for idempotent requests can only be used with the same parameters they were first "
        f"used with. Try using a key other than 'tg:line:{line.pk}' if you meant to execute a different request."
    )
    assert stripe_adapter.invoice_retrieve(invoice=draft).total == 200


def test_a_total_that_differs_from_stripes_stops_the_push_before_finalizing(
    billed_month, stripe_customer, stripe_api
):
    organization, owner, invoice = billed_month
    customer = stripe_customer(organization, owner)
    # A line changed after the total was computed: Stripe gets the line, and a total one cent off.
    InvoiceLine.objects.filter(invoice=invoice, position=1).update(amount_minor=201)

    with pytest.raises(BillingError) as stopped:
        invoice_push(invoice=invoice)

    message = "Stripe's invoice totals 6.49 USD but this invoice 6.48 USD; it was not finalized or charged."
    assert (stopped.value.code, stopped.value.message) == ("total_mismatch", message)
    invoice.refresh_from_db()
    assert (invoice.status, invoice.last_push_error, invoice.finalized_at) == ("draft", message, None)
    invoices, charges = stripe_state(stripe_api, customer)
    assert [(status, total) for status, total, _lines in invoices] == [("draft", 649)]
    assert charges == []


def test_a_declined_card_leaves_the_invoice_open_with_the_error_and_is_not_retried(
    billed_month, stripe_customer, stripe_api
):
    organization, owner, invoice = billed_month
    customer = stripe_customer(organization, owner, card="pm_card_chargeCustomerFail")

    assert invoice_push_task.apply(args=[invoice.pk]).get() == "open"

    invoice.refresh_from_db()
    assert (invoice.status, invoice.push_attempts, invoice.last_push_error) == (
        "open",
        1,
        "Stripe: Your card was declined.",
    )
    invoices, charges = stripe_state(stripe_api, customer)
    assert [(status, total) for status, total, _lines in invoices] == [("open", 648)]
    assert charges == [("failed", 648)]
    assert [
        event.data.object.id
        for event in stripe_api.v1.events.list(params={"type": "invoice.payment_failed"}).auto_paging_iter()
        if event.data.object.customer == customer
    ] == [invoice.stripe_invoice_id]
    with pytest.raises(PaymentDeclined):
        invoice_push(invoice=invoice)
    assert list(
        AuditEvent.objects.filter(organization=organization, action__startswith="invoice.")
        .order_by("pk")
        .values_list("action", flat=True)
    ) == ["invoice.built", "invoice.finalized", "invoice.payment_failed", "invoice.payment_failed"]
    assert stripe_state(stripe_api, customer)[1] == [("failed", 648), ("failed", 648)]


def test_an_invoice_with_nothing_to_pay_never_reaches_stripe(stripe_settings):
    organization = make_org()
    invoice = invoice_build(organization_id=organization.pk, period=NOV)
    assert (invoice.total_minor, invoice.no_charge_reason) == (0, NOTHING_TO_PAY)

    assert invoice_push(invoice=invoice).status == "paid"

    invoice.refresh_from_db()
    assert (invoice.stripe_invoice_id, invoice.push_attempts) == ("", 0)
    assert not Customer.objects.filter(organization=organization).exists()


def test_stripe_out_of_reach_is_a_transient_billing_error_recorded_on_the_invoice(billed_month, settings):
    settings.STRIPE_SECRET_KEY = "sk_test_tollgate"
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{free_port()}"
    _organization, _owner, invoice = billed_month

    with pytest.raises(BillingUnavailable) as failed:
        invoice_push(invoice=invoice)

    assert failed.value.code == "billing_unavailable"
    assert failed.value.message.startswith("Stripe: Unexpected error communicating with Stripe.")
    invoice.refresh_from_db()
    assert (invoice.status, invoice.stripe_invoice_id, invoice.last_push_error) == (
        "draft",
        "",
        failed.value.message,
    )


def test_stripe_errors_become_billing_errors(stripe_settings, settings):
    with pytest.raises(BillingError) as missing:
        stripe_adapter.invoice_retrieve(invoice="in_missing")
    assert (type(missing.value), missing.value.code, missing.value.message) == (
        BillingError,
        "billing_error",
        "Stripe: Not Found",
    )
    settings.STRIPE_SECRET_KEY = ""
    with pytest.raises(BillingError) as unconfigured:
        stripe_adapter.invoice_retrieve(invoice="in_missing")
    assert (unconfigured.value.code, unconfigured.value.message) == (
        "stripe_not_configured",
        "Stripe is not configured: set STRIPE_SECRET_KEY.",
    )


def test_the_built_invoice_has_the_rated_lines_and_a_second_build_returns_it(billed_month):
    organization, _owner, invoice = billed_month
    assert invoice_build(organization_id=organization.pk, period=NOV) == invoice
    assert Invoice.objects.filter(organization=organization).count() == 1
    assert list(
        invoice.lines.order_by("position").values_list("position", "kind", "model", "tokens", "quantity")
    ) == [
        (1, "usage", "m", "input", 2_000_000),
        (2, "usage", "m", "cached_input", 500_000),
        (3, "usage", "m", "output", 1_000_000),
        (4, "usage", "n", "input", 1_234_567),
    ]
    assert (invoice.plan.name, invoice.currency, invoice.total_minor, invoice.status) == (
        "Standard",
        "usd",
        648,
        "draft",
    )
