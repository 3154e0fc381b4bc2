"""Stripe webhooks against localstripe: deliveries are verified, stored once and processed once,
processing reads the invoice from Stripe and only ever moves ours forward, a failure is stored
and retried, and events that never arrived are backfilled."""

import io
import json
import threading
import time
import urllib.request

import pytest
import stripe
from django.contrib.messages import get_messages
from django.core.management import call_command
from django.utils import timezone

from billing import dunning, stripe_adapter, webhooks
from billing.errors import BillingUnavailable, PaymentDeclined
from billing.models import Customer, Invoice, WebhookEvent
from billing.services import invoice_push
from billing.tasks import webhook_retry_due
from portal.celery import app as celery_app
from portal.models import AuditEvent
from tests.factories import make_user
from tests.servers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

WEBHOOK_SECRET = "whsec_tollgate_test"
URL = "/billing/stripe/webhook/"


@pytest.fixture
def webhook_settings(stripe_settings):
    stripe_settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    return stripe_settings


def _localstripe_config(localstripe: str, path: str, method: str, body: dict | None = None) -> None:
    request = urllib.request.Request(
        f"{localstripe}/_config/webhooks/{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
        method=method,
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


@pytest.fixture
def stripe_webhook(localstripe, live_server, webhook_settings):
    """Have localstripe sign and send the handled invoice events to this test's live server."""
    _localstripe_config(
        localstripe,
        "tollgate",
        "POST",
        {
            "url": f"{live_server.url}{URL}",
            "secret": WEBHOOK_SECRET,
            "events": sorted(webhooks.HANDLED_TYPES),
        },
    )
    yield
    _localstripe_config(localstripe, "tollgate", "DELETE")


@pytest.fixture
def dunning_calls(monkeypatch):
    """Record what processing reports to dunning (as (what, invoice status, reason)), then report it."""
    calls = []
    lock = threading.Lock()
    failed, settled = dunning.dunning_payment_failed, dunning.dunning_invoice_settled

    def payment_failed(*, invoice, reason):
        with lock:
            calls.append(("payment_failed", invoice.status, reason))
        failed(invoice=invoice, reason=reason)

    def invoice_settled(*, invoice):
        with lock:
            calls.append(("settled", invoice.status, ""))
        settled(invoice=invoice)

    monkeypatch.setattr(dunning, "dunning_payment_failed", payment_failed)
    monkeypatch.setattr(dunning, "dunning_invoice_settled", invoice_settled)
    return calls


@pytest.fixture
def paid_behind_our_back(billed_month, stripe_customer, stripe_api, webhook_settings, dunning_calls):
    """An invoice whose push was declined (ours open) and that the customer then paid in Stripe.

    No webhook endpoint is registered: the events exist in Stripe, none arrived.
    """
    organization, owner, invoice = billed_month
    customer = stripe_customer(organization, owner, card="pm_card_chargeCustomerFail")
    with pytest.raises(PaymentDeclined):
        invoice_push(invoice=invoice)
    _pay_with_a_good_card(stripe_api, customer, invoice)
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.OPEN
    dunning_calls.clear()
    return invoice


def _pay_with_a_good_card(stripe_api, customer: str, invoice: Invoice) -> None:
    card = stripe_api.v1.payment_methods.attach("pm_card_visa", params={"customer": customer})
    stripe_api.v1.customers.update(customer, params={"invoice_settings": {"default_payment_method": card.id}})
    assert stripe_api.v1.invoices.pay(invoice.stripe_invoice_id).status == "paid"


def stripe_event(stripe_api, type_: str, object_id: str) -> dict:
    """Return the event of this type that localstripe made for this object, as a webhook carries it."""
    [event] = [
        event.to_dict()
        for event in stripe_api.v1.events.list(params={"type": type_}).auto_paging_iter()
        if event.data.object.id == object_id
    ]
    return event


def deliver(client, event: dict, *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None):
    payload = json.dumps(event)
    signature = stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=timestamp)
    return client.post(URL, data=payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=signature)


def event_rows(stripe_invoice_id: str | None = None):
    rows = WebhookEvent.objects.order_by("type", "pk")
    if stripe_invoice_id is not None:
        rows = rows.filter(payload__data__object__id=stripe_invoice_id)
    return [(row.type, row.status, row.attempts, row.error) for row in rows]


def invoice_audit(invoice: Invoice) -> list[str]:
    return list(
        AuditEvent.objects.filter(target_id=invoice.public_id, action__startswith="invoice.")
        .order_by("pk")
        .values_list("action", flat=True)
    )


def test_a_bad_signature_is_refused_and_nothing_is_stored(client, paid_behind_our_back, stripe_api):
    event = stripe_event(stripe_api, "invoice.paid", paid_behind_our_back.stripe_invoice_id)
    refused = {
        "error": "invalid_signature",
        "message": "The Stripe-Signature header does not sign this body.",
    }

    forged = deliver(client, event, secret="whsec_someone_else")
    unsigned = client.post(URL, data=json.dumps(event), content_type="application/json")
    payload = json.dumps(event)
    signature = stripe.WebhookSignature.generate_signature_header(payload, WEBHOOK_SECRET)
    tampered = client.post(
        URL,
        data=payload.replace('"paid"', '"void"'),
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=signature,
    )

    for response in (forged, unsigned, tampered):
        assert (response.status_code, response.json()) == (400, refused)
    assert event_rows() == []
    paid_behind_our_back.refresh_from_db()
    assert paid_behind_our_back.status == Invoice.Status.OPEN


def test_a_stale_timestamp_is_refused_and_nothing_is_stored(client, paid_behind_our_back, stripe_api):
    event = stripe_event(stripe_api, "invoice.paid", paid_behind_our_back.stripe_invoice_id)

    response = deliver(client, event, timestamp=int(time.time()) - 301)

    assert (response.status_code, response.json()) == (
        400,
        {"error": "stale_timestamp", "message": "The signature is more than 300 seconds old."},
    )
    assert event_rows() == []


def test_a_delivery_without_a_configured_secret_is_refused(
    client, paid_behind_our_back, stripe_api, settings
):
    event = stripe_event(stripe_api, "invoice.paid", paid_behind_our_back.stripe_invoice_id)
    settings.STRIPE_WEBHOOK_SECRET = ""

    response = deliver(client, event)

    assert (response.status_code, response.json()) == (
        503,
        {
            "error": "webhooks_not_configured",
            "message": "Stripe webhooks are not configured: set STRIPE_WEBHOOK_SECRET.",
        },
    )
    assert event_rows() == []


def test_a_replayed_event_is_stored_and_processed_once(
    client, paid_behind_our_back, stripe_api, dunning_calls
):
    invoice = paid_behind_our_back
    event = stripe_event(stripe_api, "invoice.paid", invoice.stripe_invoice_id)

    first = deliver(client, event)
    second = deliver(client, event)

    assert (first.status_code, first.json()) == (200, {"received": True, "duplicate": False})
    assert (second.status_code, second.json()) == (200, {"received": True, "duplicate": True})
    assert event_rows() == [("invoice.paid", "processed", 1, "")]
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID
    assert invoice_audit(invoice) == [
        "invoice.built",
        "invoice.finalized",
        "invoice.payment_failed",
        "invoice.paid",
    ]
    assert dunning_calls == [("settled", "paid", "")]


def test_older_events_after_a_newer_state_change_nothing(
    client, paid_behind_our_back, stripe_api, dunning_calls
):
    invoice = paid_behind_our_back
    newest = stripe_event(stripe_api, "invoice.paid", invoice.stripe_invoice_id)
    older = [
        stripe_event(stripe_api, "invoice.payment_failed", invoice.stripe_invoice_id),
        stripe_event(stripe_api, "invoice.finalized", invoice.stripe_invoice_id),
    ]

    for event in [newest, *older]:
        assert deliver(client, event).status_code == 200

    assert event_rows() == [
        ("invoice.finalized", "processed", 1, ""),
        ("invoice.paid", "processed", 1, ""),
        ("invoice.payment_failed", "processed", 1, ""),
    ]
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID
    assert invoice_audit(invoice) == [
        "invoice.built",
        "invoice.finalized",
        "invoice.payment_failed",
        "invoice.paid",
    ]
    # The failure was older than the payment: the organization is not reported as owing.
    assert dunning_calls == [("settled", "paid", "")]


@pytest.mark.parametrize(
    ("act", "type_", "status", "action"),
    [
        ("void_invoice", "invoice.voided", "void", "invoice.voided"),
        (
            "mark_uncollectible",
            "invoice.marked_uncollectible",
            "uncollectible",
            "invoice.marked_uncollectible",
        ),
    ],
)
def test_an_invoice_closed_in_stripe_is_closed_here_and_reported_settled(
    client,
    billed_month,
    stripe_customer,
    stripe_api,
    webhook_settings,
    dunning_calls,
    act,
    type_,
    status,
    action,
):
    organization, owner, invoice = billed_month
    stripe_customer(organization, owner, card="pm_card_chargeCustomerFail")
    with pytest.raises(PaymentDeclined):
        invoice_push(invoice=invoice)
    dunning_calls.clear()
    getattr(stripe_api.v1.invoices, act)(invoice.stripe_invoice_id)
    late_payment = stripe_event(stripe_api, "invoice.payment_failed", invoice.stripe_invoice_id)

    assert deliver(client, stripe_event(stripe_api, type_, invoice.stripe_invoice_id)).status_code == 200
    assert deliver(client, late_payment).status_code == 200

    invoice.refresh_from_db()
    assert invoice.status == status
    assert invoice_audit(invoice) == ["invoice.built", "invoice.finalized", "invoice.payment_failed", action]
    assert dunning_calls == [("settled", status, "")]
    assert event_rows() == sorted(
        [("invoice.payment_failed", "processed", 1, ""), (type_, "processed", 1, "")]
    )


def test_a_handler_error_is_stored_and_retried_until_it_succeeds(
    client, paid_behind_our_back, stripe_api, monkeypatch, dunning_calls
):
    invoice = paid_behind_our_back
    event = stripe_event(stripe_api, "invoice.paid", invoice.stripe_invoice_id)
    real_retrieve = stripe_adapter.invoice_retrieve
    seen = []  # the event's row each time processing reads the invoice from Stripe

    def retrieve(**kwargs):
        row = WebhookEvent.objects.get(stripe_event_id=event["id"])
        seen.append((row.status, row.attempts, row.error))
        if len(seen) == 1:
            raise BillingUnavailable("Stripe: the connection was reset.")
        return real_retrieve(**kwargs)

    monkeypatch.setattr(stripe_adapter, "invoice_retrieve", retrieve)
    # Let Celery run the retry it schedules (eagerly, at once) instead of raising it to the caller.
    monkeypatch.setitem(celery_app.conf, "task_eager_propagates", False)

    response = deliver(client, event)

    assert (response.status_code, response.json()) == (200, {"received": True, "duplicate": False})
    assert seen == [("received", 0, ""), ("failed", 1, "Stripe: the connection was reset.")]
    assert event_rows() == [("invoice.paid", "processed", 2, "")]
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID
    assert dunning_calls == [("settled", "paid", "")]


def _failed_row(event: dict, received_at=None) -> WebhookEvent:
    return WebhookEvent.objects.create(
        stripe_event_id=event["id"],
        type=event["type"],
        created=timezone.now(),
        payload=event,
        status=WebhookEvent.Status.FAILED,
        attempts=1,
        error="Stripe: the connection was reset.",
        received_at=received_at or timezone.now(),
    )


def test_the_periodic_retry_processes_events_left_failed_or_waiting(paid_behind_our_back, stripe_api):
    invoice = paid_behind_our_back
    long_ago = timezone.now() - webhooks.RETRY_AFTER * 2
    _failed_row(stripe_event(stripe_api, "invoice.paid", invoice.stripe_invoice_id), long_ago)
    _failed_row(stripe_event(stripe_api, "invoice.payment_succeeded", invoice.stripe_invoice_id))

    assert webhook_retry_due() == 1
    assert webhook_retry_due() == 0

    assert event_rows() == [
        ("invoice.paid", "processed", 2, ""),
        ("invoice.payment_succeeded", "failed", 1, "Stripe: the connection was reset."),
    ]
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID


def test_an_event_of_another_type_is_stored_as_ignored(client, paid_behind_our_back, stripe_api):
    customer = Customer.objects.get(organization_id=paid_behind_our_back.organization_id)
    event = stripe_event(stripe_api, "customer.created", customer.stripe_customer_id)

    response = deliver(client, event)

    assert (response.status_code, response.json()) == (200, {"received": True, "duplicate": False})
    assert event_rows() == [("customer.created", "ignored", 1, "")]


def test_real_deliveries_report_the_decline_then_the_payment(
    billed_month, stripe_customer, stripe_api, stripe_webhook, dunning_calls
):
    organization, owner, invoice = billed_month
    customer = stripe_customer(organization, owner, card="pm_card_chargeCustomerFail")
    with pytest.raises(PaymentDeclined):
        invoice_push(invoice=invoice)

    wait_for(
        lambda: (
            len(event_rows(invoice.stripe_invoice_id)) == 2
            and {status for _type, status, _n, _e in event_rows(invoice.stripe_invoice_id)} == {"processed"}
        ),
        what="invoice.finalized and invoice.payment_failed processed",
        timeout=30,
    )
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.OPEN
    assert dunning_calls == [
        ("payment_failed", "open", "Stripe: Your card was declined."),  # the push saw the decline
        ("payment_failed", "open", "Your card was declined."),  # Stripe reported it
    ]

    _pay_with_a_good_card(stripe_api, customer, invoice)

    wait_for(
        lambda: (
            [row[:3] for row in event_rows(invoice.stripe_invoice_id)]
            == [
                ("invoice.finalized", "processed", 1),
                ("invoice.paid", "processed", 1),
                ("invoice.payment_failed", "processed", 1),
                ("invoice.payment_succeeded", "processed", 1),
            ]
        ),
        what="invoice.paid and invoice.payment_succeeded processed",
        timeout=30,
    )
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID
    assert invoice.paid_at is not None
    assert invoice_audit(invoice) == [
        "invoice.built",
        "invoice.finalized",
        "invoice.payment_failed",
        "invoice.paid",
    ]
    assert dunning_calls[2:] == [("settled", "paid", "")]


def test_billing_sync_events_backfills_events_that_never_arrived(paid_behind_our_back, dunning_calls):
    invoice = paid_behind_our_back
    assert event_rows() == []

    call_command("billing_sync_events", "--since", "1h", stdout=io.StringIO())
    again = io.StringIO()
    call_command("billing_sync_events", "--since", "1h", stdout=again)

    assert event_rows(invoice.stripe_invoice_id) == [
        ("invoice.finalized", "processed", 1, ""),
        ("invoice.paid", "processed", 1, ""),
        ("invoice.payment_failed", "processed", 1, ""),
        ("invoice.payment_succeeded", "processed", 1, ""),
    ]
    assert again.getvalue().endswith(", 0 new stored and queued\n")
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID
    assert invoice_audit(invoice) == [
        "invoice.built",
        "invoice.finalized",
        "invoice.payment_failed",
        "invoice.paid",
    ]
    assert dunning_calls == [("settled", "paid", "")]


@pytest.mark.parametrize("value", ["24", "0h", "2w", "31d", "-1h"])
def test_billing_sync_events_refuses_a_bad_since(value):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="--since"):
        call_command("billing_sync_events", "--since", value)


def test_staff_have_a_failed_event_processed_again_from_the_admin(client, paid_behind_our_back, stripe_api):
    invoice = paid_behind_our_back
    staff = make_user("staff@example.com")
    staff.is_staff = staff.is_superuser = True
    staff.save()
    client.force_login(staff)
    failed = _failed_row(stripe_event(stripe_api, "invoice.paid", invoice.stripe_invoice_id))
    finalized = stripe_event(stripe_api, "invoice.finalized", invoice.stripe_invoice_id)
    assert deliver(client, finalized).status_code == 200

    listed = client.get("/admin/billing/webhookevent/", {"status__exact": "failed"})
    response = client.post(
        "/admin/billing/webhookevent/",
        {
            "action": "process_again",
            "_selected_action": [failed.pk, WebhookEvent.objects.get(type="invoice.finalized").pk],
        },
        follow=True,
    )

    assert listed.status_code == 200
    assert [row.stripe_event_id for row in listed.context["cl"].result_list] == [failed.stripe_event_id]
    assert sorted(str(message) for message in get_messages(response.wsgi_request)) == [
        "Processing queued: 1 event(s).",
        f"{finalized['id']}: This event is processed already.",
    ]
    assert event_rows() == [("invoice.finalized", "processed", 1, ""), ("invoice.paid", "processed", 2, "")]
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID
    assert list(
        AuditEvent.objects.filter(action="stripe_event.process_requested").values_list(
            "target_id", "actor_label", "metadata"
        )
    ) == [
        (
            failed.stripe_event_id,
            "staff@example.com",
            {"type": "invoice.paid", "status": "failed", "attempts": 1},
        )
    ]
