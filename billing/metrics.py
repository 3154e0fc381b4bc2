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
