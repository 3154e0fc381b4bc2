"""Prometheus counters of billing, incremented by the worker that closes, pushes and reconciles.

Organizations past due or suspended are gauges computed at scrape time on the web's ``/metrics``
(portal/observability.py), since no process owns that number.
"""

from prometheus_client import Counter

INVOICES_CLOSED = Counter("tollgate_billing_invoices_closed_total", "Invoices built by closing a period")
INVOICES_PUSHED = Counter(
    "tollgate_billing_invoices_pushed_total", "Invoices mirrored to Stripe and charged (or left to pay)"
)
INVOICE_PUSH_FAILURES = Counter(
    "tollgate_billing_invoice_push_failures_total", "Invoice pushes that failed, by error", ["error"]
)
WEBHOOK_EVENTS = Counter(
    "tollgate_billing_webhook_events_total",
    "Stripe webhook events handled, by event type and outcome (processed, ignored, failed)",
    ["type", "status"],
)
RECONCILE_DIFFERENCES = Counter(
    "tollgate_billing_reconcile_differences_total",
    "Differences found by billing reconciliation (invoices vs rating vs Stripe)",
    ["what"],
)

# The kinds of billing.reconcile.Difference.what.
RECONCILE_KINDS = ("missing_invoice", "rating", "total", "stripe_total", "stripe_status", "stripe_lines")


def billing_series_initialise() -> None:
    """Export every known series at 0 from the start.

    ``increase()`` cannot see a counter's first increment when the series appears with it, so
    an alert on the first reconcile difference or webhook failure would never fire.
    """
    from billing.errors import BillingError, BillingUnavailable, PaymentDeclined
    from billing.models import WebhookEvent
    from billing.webhooks import HANDLED_TYPES

    for kind in RECONCILE_KINDS:
        RECONCILE_DIFFERENCES.labels(kind)
    for event_type in HANDLED_TYPES:
        for status in (
            WebhookEvent.Status.PROCESSED,
            WebhookEvent.Status.IGNORED,
            WebhookEvent.Status.FAILED,
        ):
            WEBHOOK_EVENTS.labels(event_type, status.value)
    for error in (BillingError, BillingUnavailable, PaymentDeclined):
        INVOICE_PUSH_FAILURES.labels(error.__name__)
