"""Stripe webhooks: each event is verified, stored once, then processed once by a Celery task.

Stripe delivers an event at least once, late, or out of order, so processing never trusts the
event's copy of the invoice: it reads the invoice from Stripe as it is now and moves ours
forward to that status (``invoice_status_advance``). A replay finds its event row already
processed; an older event finds our invoice already at (or past) Stripe's status. Either is a
no-op.
"""

import logging
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing import dunning, stripe_adapter
from billing.errors import BillingUnavailable
from billing.metrics import WEBHOOK_EVENTS
from billing.models import Invoice, WebhookEvent
from billing.services import invoice_status_advance
from portal.audit import Actor, audit_record
from portal.errors import Conflict

logger = logging.getLogger("tollgate.billing")

# invoice.paid and invoice.payment_succeeded report one payment: both only read the invoice.
HANDLED_TYPES = frozenset(
    {
        "invoice.finalized",
        "invoice.paid",
        "invoice.payment_succeeded",
        "invoice.payment_failed",
        "invoice.voided",
        "invoice.marked_uncollectible",
    }
)
# An event still unprocessed this long after it arrived is handed to the worker again.
RETRY_AFTER = timedelta(minutes=5)
# After this many attempts an event waits for staff ("process again" in the admin).
MAX_ATTEMPTS = 25
FALLBACK_REASON = "Stripe could not charge the payment method."


def webhook_event_receive(*, payload: bytes, signature: str) -> tuple[WebhookEvent, bool]:
    """Verify a delivery, store its event and queue its processing; return it and whether it is new.

    A delivery of an event already stored (Stripe retries, or a backfill got it first) stores
    and queues nothing.
    """
    if not settings.STRIPE_WEBHOOK_SECRET:
        raise BillingUnavailable(
            "Stripe webhooks are not configured: set STRIPE_WEBHOOK_SECRET.", code="webhooks_not_configured"
        )
    event = stripe_adapter.webhook_event_verify(
        payload=payload, signature=signature, secret=settings.STRIPE_WEBHOOK_SECRET
    )
    return webhook_event_store(event=event)


def webhook_event_store(*, event: dict) -> tuple[WebhookEvent, bool]:
    """Store a Stripe event unless it is stored already, and queue its processing on commit."""
    from billing.tasks import webhook_process

    with transaction.atomic():
        try:
            with transaction.atomic():
                stored = WebhookEvent.objects.create(
                    stripe_event_id=event["id"],
                    type=event["type"],
                    created=datetime.fromtimestamp(event["created"], tz=UTC),
                    payload=event,
                )
        except IntegrityError:
            return WebhookEvent.objects.get(stripe_event_id=event["id"]), False
        # Robust: the event is stored, so a broker that is down must not fail the delivery;
        # the periodic retry picks the event up.
        transaction.on_commit(lambda: webhook_process.delay(stored.stripe_event_id), robust=True)
    return stored, True


def webhook_event_process(*, stripe_event_id: str) -> WebhookEvent:
    """Process a stored event once: processed or ignored, or failed with the error (then raised).

    The event's row is locked while it is processed, so a retry and the periodic sweep never
    process one event at the same time, and a processed or ignored event is left alone.
    """
    failure = None
    with transaction.atomic():
        event = WebhookEvent.objects.select_for_update().get(stripe_event_id=stripe_event_id)
        if event.status in (WebhookEvent.Status.PROCESSED, WebhookEvent.Status.IGNORED):
            return event
        event.attempts += 1
        try:
            with transaction.atomic():
                status, note = _handle(event)
        except Exception as error:  # noqa: BLE001 -- any handler error is stored, then raised below
            failure = error
            event.status = WebhookEvent.Status.FAILED
            event.error = getattr(error, "message", "") or f"{error.__class__.__name__}: {error}"
        else:
            event.status = status
            event.error = note
            event.processed_at = timezone.now()
        event.save(update_fields=["status", "error", "attempts", "processed_at"])
    WEBHOOK_EVENTS.labels(event.type, event.status).inc()
    if failure is not None:
        logger.warning(
            "stripe webhook failed",
            extra={"stripe_event_id": stripe_event_id, "type": event.type, "error": event.error},
        )
        raise failure
    return event


def webhook_event_process_request(*, actor: Actor, event: WebhookEvent) -> None:
    """Queue another processing of an event that failed, waits or was ignored (staff), audited."""
    from billing.tasks import webhook_process

    with transaction.atomic():
        event = WebhookEvent.objects.select_for_update().get(pk=event.pk)
        if event.status == WebhookEvent.Status.PROCESSED:
            raise Conflict("This event is processed already.")
        previous = event.status
        # Processing passes over ignored events; this one is meant to be looked at again.
        WebhookEvent.objects.filter(pk=event.pk).update(status=WebhookEvent.Status.RECEIVED)
        audit_record(
            actor=actor,
            action="stripe_event.process_requested",
            target=event,
            target_id=event.stripe_event_id,
            metadata={"type": event.type, "status": previous, "attempts": event.attempts},
        )
        transaction.on_commit(lambda: webhook_process.delay(event.stripe_event_id))


def webhook_events_due() -> list[str]:
    """Return the events that should have been processed by now but were not (oldest first)."""
    return list(
        WebhookEvent.objects.filter(
            status__in=(WebhookEvent.Status.RECEIVED, WebhookEvent.Status.FAILED),
            received_at__lt=timezone.now() - RETRY_AFTER,
            attempts__lt=MAX_ATTEMPTS,
        )
        .order_by("received_at")
        .values_list("stripe_event_id", flat=True)
    )


def webhook_events_backfill(*, since: datetime) -> tuple[int, int]:
    """Store and queue the handled events Stripe created since ``since`` that never arrived.

    Return how many Stripe listed and how many were new.
    """
    events = stripe_adapter.events_since(since=since, types=HANDLED_TYPES)
    new = sum(webhook_event_store(event=event)[1] for event in events)
    return len(events), new


def _handle(event: WebhookEvent) -> tuple[str, str]:
    if event.type not in HANDLED_TYPES:
        return WebhookEvent.Status.IGNORED, ""
    stripe_invoice_id = event.payload["data"]["object"].get("id")
    if not isinstance(stripe_invoice_id, str) or not stripe_invoice_id:
        return WebhookEvent.Status.IGNORED, "The event names no invoice."
    remote = stripe_adapter.invoice_retrieve(invoice=stripe_invoice_id)
    invoice = _local_invoice(remote)
    if invoice is None:
        return WebhookEvent.Status.IGNORED, f"No Tollgate invoice is mirrored by {remote.id}."
    invoice_status_advance(invoice=invoice, status=remote.status)
    # Only a failure that still stands is reported: a payment that failed and then succeeded
    # (events out of order) leaves the organization in good standing.
    if (
        event.type == "invoice.payment_failed"
        and remote.status == "open"
        and invoice.status == Invoice.Status.OPEN
    ):
        reason = stripe_adapter.invoice_payment_error(invoice=remote.id) or FALLBACK_REASON
        dunning.dunning_payment_failed(invoice=invoice, reason=reason)
    return WebhookEvent.Status.PROCESSED, ""


def _local_invoice(remote: stripe_adapter.StripeInvoice) -> Invoice | None:
    """Find the invoice that a Stripe invoice mirrors, locked, recording its Stripe id if missing.

    The id may be missing when the push crashed right after Stripe created the invoice; the
    metadata the push gave it still names ours.
    """
    invoice = Invoice.objects.select_for_update().filter(stripe_invoice_id=remote.id).first()
    if invoice is None and remote.tollgate_invoice_id is not None:
        invoice = (
            Invoice.objects.select_for_update()
            .filter(pk=remote.tollgate_invoice_id, stripe_invoice_id="")
            .first()
        )
        if invoice is not None:
            Invoice.objects.filter(pk=invoice.pk).update(stripe_invoice_id=remote.id)
            invoice.stripe_invoice_id = remote.id
    return invoice
