import logging
from datetime import date

from celery import shared_task

from billing.errors import BillingUnavailable, PaymentDeclined
from billing.metrics import RECONCILE_DIFFERENCES

logger = logging.getLogger("tollgate.billing")


@shared_task
def publish_prices() -> int:
    """Publish the prices in effect now (a scheduled price takes effect within a minute)."""
    from billing.edge_prices import prices_publish

    return prices_publish()


@shared_task(
    autoretry_for=(BillingUnavailable,),
    retry_backoff=30,
    retry_backoff_max=3600,
    retry_jitter=True,
    max_retries=12,
)
def invoice_push(invoice_id: int) -> str:
    """Mirror one invoice to Stripe and charge it; return its status.

    Stripe being unreachable, failing or rate limiting retries with backoff (the push resumes
    where it stopped); a declined card does not: the invoice stays open with the error recorded.
    """
    from billing.models import Invoice
    from billing.services import invoice_push as push

    invoice = Invoice.objects.get(pk=invoice_id)
    try:
        return push(invoice=invoice).status
    except PaymentDeclined as error:
        logger.warning("invoice payment declined", extra={"invoice_id": invoice_id, "error": error.message})
        return invoice.status


@shared_task
def reconcile_period(period: str | None = None) -> int:
    """Reconcile a period (``YYYY-MM-DD``, default the last closed one); return the differences.

    Each difference is logged at error level and counted in
    ``tollgate_billing_reconcile_differences_total``.
    """
    from billing.reconcile import billing_reconcile, last_closed_period

    month = date.fromisoformat(period) if period else last_closed_period()
    if month is None:
        logger.info("billing reconcile: no closed period yet")
        return 0
    checked, differences = billing_reconcile(period=month)
    for difference in differences:
        RECONCILE_DIFFERENCES.labels(difference.what).inc()
        logger.error(
            "billing reconcile difference",
            extra={
                "period": f"{month:%Y-%m}",
                "organization_id": difference.organization_id,
                "organization": difference.organization_slug,
                "invoice_id": difference.invoice_id,
                "what": difference.what,
                "detail": difference.detail,
            },
        )
    logger.info(
        "billing reconcile done",
        extra={"period": f"{month:%Y-%m}", "invoices": checked, "differences": len(differences)},
    )
    return len(differences)


# The close hands invoices to Stripe asynchronously; reconcile once the pushes had time to run.
RECONCILE_AFTER_CLOSE_SECONDS = 3600


@shared_task
def close_due_periods() -> list[str]:
    """Close every month that is due, push its invoices to Stripe, then reconcile it."""
    from billing.closing import invoice_close_period, periods_due

    closed = []
    for period in periods_due():
        for invoice_id in invoice_close_period(period=period):
            invoice_push.delay(invoice_id)
        reconcile_period.apply_async(
            kwargs={"period": period.isoformat()}, countdown=RECONCILE_AFTER_CLOSE_SECONDS
        )
        closed.append(period.isoformat())
    return closed


@shared_task(
    autoretry_for=(Exception,),
    retry_backoff=30,
    retry_backoff_max=1800,
    retry_jitter=True,
    max_retries=8,
)
def webhook_process(event_id: str) -> str:
    """Process one stored Stripe event (by its Stripe id); return its status.

    A failure is stored on the event and retried with backoff; past the retries, the periodic
    ``webhook_retry_due`` hands it back to a worker.
    """
    from billing.webhooks import webhook_event_process

    return webhook_event_process(stripe_event_id=event_id).status


@shared_task
def webhook_retry_due() -> int:
    """Queue again the events that are still unprocessed a few minutes after they arrived."""
    from billing.webhooks import webhook_events_due

    due = webhook_events_due()
    for event_id in due:
        webhook_process.delay(event_id)
    return len(due)


@shared_task
def dunning_run() -> int:
    """Advance every organization's dunning: scheduled retries, the warning, the suspension."""
    from billing.dunning import dunning_run as run

    return run()


@shared_task
def dunning_charge(organization_id: int, trigger: str) -> list[str]:
    """Charge an organization's open invoices again now (a card was added); return their statuses."""
    from billing.dunning import dunning_charge as charge
    from portal.models import Organization

    return charge(organization=Organization.objects.get(pk=organization_id), trigger=trigger)
