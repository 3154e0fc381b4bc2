"""The billing counters and the gauges the web reads from the stores at scrape time."""

import pytest
from django.utils import timezone
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from billing import stripe_adapter
from billing.closing import invoice_close_period
from billing.errors import BillingUnavailable
from billing.models import WebhookEvent
from billing.services import invoice_push
from billing.webhooks import webhook_event_process
from portal.celery import app as celery_app
from portal.models import Organization
from tests.billing.test_close import NOV, priced_tenants  # noqa: F401 - a fixture
from tests.factories import make_org
from tests.servers import free_port

pytestmark = pytest.mark.django_db


def counter(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def web_sample(client, name: str, **labels) -> float:
    response = client.get("/metrics")
    assert response.status_code == 200
    [value] = [
        sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
        if sample.name == name and sample.labels == labels
    ]
    return value


def test_closing_a_month_counts_each_invoice_it_builds(priced_tenants):  # noqa: F811
    before = counter("tollgate_billing_invoices_closed_total")

    invoice_close_period(period=NOV)
    invoice_close_period(period=NOV)  # closed already: builds nothing more

    assert counter("tollgate_billing_invoices_closed_total") - before == 3


def test_a_pushed_invoice_is_counted_and_a_failed_push_is_counted_by_its_error(
    billed_month, stripe_customer, settings
):
    organization, owner, invoice = billed_month
    pushed = counter("tollgate_billing_invoices_pushed_total")
    unavailable = counter("tollgate_billing_invoice_push_failures_total", error="BillingUnavailable")
    stripe_base = settings.STRIPE_API_BASE
    stripe_customer(organization, owner)
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{free_port()}"

    with pytest.raises(BillingUnavailable):
        invoice_push(invoice=invoice)
    settings.STRIPE_API_BASE = stripe_base
    assert invoice_push(invoice=invoice).status == "paid"

    assert (
        counter("tollgate_billing_invoice_push_failures_total", error="BillingUnavailable") - unavailable == 1
    )
    assert counter("tollgate_billing_invoices_pushed_total") - pushed == 1


def test_webhook_events_are_counted_by_type_and_outcome(monkeypatch):
    WebhookEvent.objects.create(
        stripe_event_id="evt_metrics",
        type="invoice.paid",
        created=timezone.now(),
        payload={"id": "evt_metrics", "type": "invoice.paid", "data": {"object": {"id": "in_metrics"}}},
    )
    failed = counter("tollgate_billing_webhook_events_total", type="invoice.paid", status="failed")
    ignored = counter("tollgate_billing_webhook_events_total", type="invoice.paid", status="ignored")

    def unreachable(**_kwargs):
        raise BillingUnavailable("Stripe: the connection was reset.")

    monkeypatch.setattr(stripe_adapter, "invoice_retrieve", unreachable)
    with pytest.raises(BillingUnavailable):
        webhook_event_process(stripe_event_id="evt_metrics")
    monkeypatch.undo()
    monkeypatch.setattr(stripe_adapter, "invoice_retrieve", lambda **_kwargs: stripe_adapter_invoice())
    assert webhook_event_process(stripe_event_id="evt_metrics").status == "ignored"

    assert (
        counter("tollgate_billing_webhook_events_total", type="invoice.paid", status="failed") - failed == 1
    )
    assert (
        counter("tollgate_billing_webhook_events_total", type="invoice.paid", status="ignored") - ignored == 1
    )


def stripe_adapter_invoice():
    """A Stripe invoice that mirrors no Tollgate invoice: the event is ignored."""
    return stripe_adapter.StripeInvoice(id="in_metrics", status="paid", currency="usd", total=0)


def test_every_known_failure_series_is_exported_before_its_first_increment(client):
    response = client.get("/metrics")
    series = {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }

    for event_type in ("invoice.paid", "invoice.payment_failed"):
        for status in ("processed", "ignored", "failed"):
            name = "tollgate_billing_webhook_events_total"
            assert (name, (("status", status), ("type", event_type))) in series
    for what in ("missing_invoice", "rating", "total", "stripe_total", "stripe_status", "stripe_lines"):
        assert ("tollgate_billing_reconcile_differences_total", (("what", what),)) in series
    for error in ("BillingError", "BillingUnavailable", "PaymentDeclined"):
        assert ("tollgate_billing_invoice_push_failures_total", (("error", error),)) in series


def test_the_web_counts_organizations_by_status_when_scraped(client):
    for name, status in (("Late", "past_due"), ("Cut", "suspended"), ("Fine", "active")):
        Organization.objects.filter(pk=make_org(name=name).pk).update(status=status)

    assert web_sample(client, "tollgate_organizations", status="past_due") == 1
    assert web_sample(client, "tollgate_organizations", status="suspended") == 1
    assert (
        web_sample(client, "tollgate_organizations", status="active")
        == Organization.objects.filter(status="active").count()
    )


def test_the_web_reports_the_tasks_waiting_in_the_broker(client, redis_client, monkeypatch):
    monkeypatch.setitem(celery_app.conf, "task_always_eager", False)  # the tests run tasks inline
    assert web_sample(client, "tollgate_celery_queue_length", queue="celery") == 0
    celery_app.send_task("portal.tasks.purge_idempotency_records")
    celery_app.send_task("portal.tasks.purge_idempotency_records")

    assert redis_client.llen("celery") == 2
    assert web_sample(client, "tollgate_celery_queue_length", queue="celery") == 2
