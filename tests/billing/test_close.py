"""Closing a month: one invoice per organization and period whatever runs concurrently, and
usage ingested during the close lands in exactly one month."""

import logging
import threading
import uuid
from datetime import UTC, date, datetime

import pytest
import time_machine
from django.db import close_old_connections, connection, transaction

from billing.closing import NOTHING_TO_PAY, invoice_close_period, periods_due
from billing.models import Invoice, InvoiceLine, Plan, PlanAssignment
from billing.services import model_price_set
from keys import services as key_services
from portal.audit import Actor
from portal.models import AuditEvent
from tests.factories import make_org, make_user
from usage.ingest import Event, usage_events_ingest
from usage.models import ClosedPeriod, UsageEvent, UsageRollup
from usage.partitions import partition_create

NOV = date(2026, 11, 1)
DEC = date(2026, 12, 1)


def event(key, occurred: datetime, tokens: int) -> Event:
    return Event(
        event_id=uuid.uuid4(),
        occurred_at=occurred,
        organization_id=key.organization_id,
        key_id=key.pk,
        model="m",
        endpoint="chat",
        status=200,
        input_tokens=tokens,
        output_tokens=0,
        cached_tokens=0,
        estimated=False,
        cost_micro_minor=0,
        latency_ms=None,
        ttft_ms=None,
        request_id="r",
        source="edge",
    )


@pytest.fixture
def priced_tenants(db):
    for month in (NOV, DEC):
        partition_create(month)
    model_price_set(
        actor=Actor.system(),
        model="m",
        input_per_mtok_minor="100",
        output_per_mtok_minor="0",
        effective_from=datetime(2026, 10, 1, tzinfo=UTC),
    )
    keys = []
    for name in ("Busy", "Idle", "Fee"):
        owner = make_user()
        with time_machine.travel(datetime(2026, 10, 5, tzinfo=UTC), tick=False):
            organization = make_org(owner, name=name)
        key, _secret = key_services.api_key_create(
            actor=Actor(user=owner), organization=organization, name="k"
        )
        keys.append(key)
    fee = Plan.objects.create(name="Pro", monthly_fee_minor=4900)
    PlanAssignment.objects.create(organization_id=keys[2].organization_id, plan=fee, period=NOV)
    return keys


@pytest.mark.django_db
def test_the_month_closes_after_its_grace_and_not_before(priced_tenants, settings):
    settings.BILLING_CLOSE_GRACE_MINUTES = 60
    assert periods_due(now=datetime(2026, 12, 1, 0, 59, tzinfo=UTC)) == [date(2026, 10, 1)]
    assert periods_due(now=datetime(2026, 12, 1, 1, 0, tzinfo=UTC)) == [NOV]
    ClosedPeriod.objects.create(period=NOV)
    # Closed, but the invoices were never built (a crash): it is due again until they are.
    assert periods_due(now=datetime(2026, 12, 1, 1, 0, tzinfo=UTC)) == [NOV]
    invoice_close_period(period=NOV)
    assert periods_due(now=datetime(2026, 12, 15, tzinfo=UTC)) == []


@pytest.mark.django_db
def test_each_organization_gets_one_invoice_with_its_lines_and_nothing_to_pay_is_said(priced_tenants):
    busy, idle, fee = priced_tenants
    usage_events_ingest([event(busy, datetime(2026, 11, 3, 10, 5, tzinfo=UTC), 2_500_000)])

    to_push = invoice_close_period(period=NOV)

    invoices = {invoice.organization_id: invoice for invoice in Invoice.objects.filter(period=NOV)}
    assert set(invoices) == {busy.organization_id, idle.organization_id, fee.organization_id}
    assert sorted(to_push) == sorted([invoices[busy.organization_id].pk, invoices[fee.organization_id].pk])
    assert (invoices[busy.organization_id].status, invoices[busy.organization_id].total_minor) == (
        "draft",
        250,
    )
    assert list(
        InvoiceLine.objects.filter(invoice=invoices[busy.organization_id]).values_list(
            "position", "kind", "model", "tokens", "quantity", "amount_minor", "description"
        )
    ) == [(1, "usage", "m", "input", 2_500_000, 250, "m · 2,500,000 input tokens")]
    assert list(
        InvoiceLine.objects.filter(invoice=invoices[fee.organization_id]).values_list("kind", "amount_minor")
    ) == [("fee", 4900)]
    idle_invoice = invoices[idle.organization_id]
    assert (idle_invoice.status, idle_invoice.total_minor, idle_invoice.no_charge_reason) == (
        "paid",
        0,
        NOTHING_TO_PAY,
    )
    assert not idle_invoice.lines.exists()
    assert AuditEvent.objects.filter(action="invoice.built").count() == 3
    assert ClosedPeriod.objects.filter(period=NOV).exists()

    # A second run builds nothing new.
    invoice_close_period(period=NOV)
    assert Invoice.objects.filter(period=NOV).count() == 3
    assert InvoiceLine.objects.count() == 2
    assert AuditEvent.objects.filter(action="invoice.built").count() == 3


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_closes_build_one_invoice_per_organization(priced_tenants, raw_events_cleared):
    busy, *_ = priced_tenants
    usage_events_ingest([event(busy, datetime(2026, 11, 3, 10, tzinfo=UTC), 1_000_000)])
    barrier = threading.Barrier(2)
    errors = []

    def close():
        try:
            barrier.wait(timeout=10)
            invoice_close_period(period=NOV)
        except Exception as exc:  # noqa: BLE001 - any error fails the assertion below
            errors.append(exc)
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=close) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert Invoice.objects.filter(period=NOV).count() == 3
    assert sorted(InvoiceLine.objects.values_list("amount_minor", flat=True)) == [100, 4900]
    assert AuditEvent.objects.filter(action="invoice.built").count() == 3


@pytest.mark.django_db(transaction=True)
def test_a_batch_ingested_during_the_close_lands_in_exactly_one_month(priced_tenants, raw_events_cleared):
    busy, *_ = priced_tenants
    in_flight = event(busy, datetime(2026, 11, 30, 23, 59, tzinfo=UTC), 1_000_000)
    after = event(busy, datetime(2026, 11, 30, 23, 59, 30, tzinfo=UTC), 3_000_000)
    ingested = threading.Event()
    release = threading.Event()
    closed = threading.Event()

    def ingest_and_hold():
        try:
            with transaction.atomic():
                usage_events_ingest([in_flight])
                ingested.set()
                release.wait(timeout=30)
        finally:
            connection.close()

    def close():
        try:
            invoice_close_period(period=NOV)
            closed.set()
        finally:
            connection.close()

    holder = threading.Thread(target=ingest_and_hold)
    holder.start()
    assert ingested.wait(timeout=10)
    closer = threading.Thread(target=close)
    closer.start()
    # The close waits for the batch that read November open: it has not closed anything yet.
    assert not closed.wait(timeout=1)
    assert not ClosedPeriod.objects.filter(period=NOV).exists()
    release.set()
    holder.join(timeout=30)
    closer.join(timeout=30)
    assert closed.is_set()

    # After the close, a November event goes to December, marked late.
    usage_events_ingest([after])

    rows = dict(UsageEvent.objects.all_tenants().values_list("event_id", "billed_period"))
    assert rows == {in_flight.event_id: NOV, after.event_id: DEC}
    assert UsageEvent.objects.all_tenants().get(event_id=after.event_id).late is True
    busy_invoice = Invoice.objects.get(organization_id=busy.organization_id, period=NOV)
    assert busy_invoice.total_minor == 100
    assert sorted(
        UsageRollup.unscoped.filter(organization_id=busy.organization_id).values_list(
            "billed_period", "input_tokens"
        )
    ) == [(NOV, 1_000_000), (DEC, 3_000_000)]


@pytest.mark.django_db
def test_the_beat_job_closes_the_month_pushes_each_invoice_and_reconciles(
    priced_tenants, stripe_customer, stripe_api, caplog
):
    from billing.tasks import close_due_periods

    caplog.set_level(logging.INFO, logger="tollgate.billing")
    busy, idle, fee = priced_tenants
    for key in (busy, fee):
        stripe_customer(key.organization, key.organization.memberships.first().user)
    usage_events_ingest([event(busy, datetime(2026, 11, 3, 10, 5, tzinfo=UTC), 2_500_000)])

    with time_machine.travel(datetime(2026, 12, 1, 1, 0, tzinfo=UTC), tick=False):
        assert close_due_periods.delay().get() == ["2026-11-01"]

    invoices = {invoice.organization_id: invoice for invoice in Invoice.objects.filter(period=NOV)}
    assert {org: (invoice.status, invoice.total_minor) for org, invoice in invoices.items()} == {
        busy.organization_id: ("paid", 250),
        idle.organization_id: ("paid", 0),
        fee.organization_id: ("paid", 4900),
    }
    assert invoices[idle.organization_id].stripe_invoice_id == ""
    for organization_id in (busy.organization_id, fee.organization_id):
        remote = stripe_api.v1.invoices.retrieve(invoices[organization_id].stripe_invoice_id)
        assert (remote.status, remote.total) == ("paid", invoices[organization_id].total_minor)
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
    # Reconcile ran after the close and found nothing to report.
    assert any(
        r.getMessage() == "billing reconcile done" and r.differences == 0 and r.invoices == 3
        for r in caplog.records
    )
