"""Closing a month: usage stops landing in it, then each organization gets its one invoice.

Every step is idempotent, so the beat job simply runs it again after a crash: the usage month
is closed once (``ClosedPeriod``), an invoice is built once per organization and period (a
unique constraint), and its lines are written in the invoice's own transaction.
"""

import logging
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from billing.metrics import INVOICES_CLOSED
from billing.models import Invoice, InvoiceLine, Plan
from billing.rating import Rating
from billing.selectors import period_ratings, period_ratings_one_pass
from portal.audit import Actor, audit_record
from portal.models import Organization
from usage.models import ClosedPeriod, UsageRollup
from usage.partitions import add_months, month_start
from usage.periods import usage_period_close

logger = logging.getLogger(__name__)

NOTHING_TO_PAY = "No usage and no platform fee: nothing to pay, not sent to Stripe."


def periods_due(*, now: datetime | None = None) -> list[date]:
    """Return the months to close now, oldest first: the last month once its grace has passed,
    and any earlier month with usage that was never closed (a beat outage)."""
    now = now or timezone.now()
    grace = timedelta(minutes=settings.BILLING_CLOSE_GRACE_MINUTES)
    latest = add_months(month_start((now - grace).date()), -1)
    closed = set(ClosedPeriod.objects.values_list("period", flat=True))
    earlier = set(
        UsageRollup.unscoped.filter(billed_period__lt=latest)
        .values_list("billed_period", flat=True)
        .distinct()
    )
    due = sorted(period for period in earlier | {latest} if period not in closed)
    # A close that stopped half-way (the month closed, some invoices not yet built) resumes.
    if latest in closed and Invoice.objects.filter(period=latest).count() < _organizations(latest).count():
        due.append(latest)
    return due


def _organizations(period: date):
    """Organizations that existed before the month ended, or have usage billed in it."""
    end = datetime.combine(add_months(period, 1), datetime.min.time(), tzinfo=UTC)
    billed = UsageRollup.unscoped.filter(billed_period=period).values("organization_id")
    return Organization.objects.filter(Q(created_at__lt=end) | Q(pk__in=billed))


def invoice_close_period(*, period: date) -> list[int]:
    """Close ``period`` for usage and build every missing invoice; return the ids to push."""
    usage_period_close(period=period)
    invoiced = set(Invoice.objects.filter(period=period).values_list("organization_id", flat=True))
    missing = [pk for pk in _organizations(period).values_list("pk", flat=True) if pk not in invoiced]
    for organization_id, plan, rating in period_ratings_one_pass(period=period, organization_ids=missing):
        invoice_store(organization_id=organization_id, period=period, plan=plan, rating=rating)
        INVOICES_CLOSED.inc()
    logger.info("billing: %s closed, %d invoices built", period.isoformat(), len(missing))
    return list(
        Invoice.objects.filter(period=period, status=Invoice.Status.DRAFT)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def invoice_build(*, organization_id: int, period: date) -> Invoice:
    """Rate one organization's ``period`` and store its invoice, unless it exists already."""
    plan, rating = period_ratings(period=period, organization_ids=[organization_id])[organization_id]
    return invoice_store(organization_id=organization_id, period=period, plan=plan, rating=rating)


def invoice_store(*, organization_id: int, period: date, plan: Plan, rating: Rating) -> Invoice:
    """Store an invoice of ``rating``'s lines; when one exists for the organization and period, return it."""
    total = rating.total_minor
    nothing_to_pay = total == 0
    now = timezone.now()
    with transaction.atomic():
        invoice, created = Invoice.objects.get_or_create(
            organization_id=organization_id,
            period=period,
            defaults={
                "plan": plan,
                "currency": plan.currency,
                "total_minor": total,
                "status": Invoice.Status.PAID if nothing_to_pay else Invoice.Status.DRAFT,
                "no_charge_reason": NOTHING_TO_PAY if nothing_to_pay else "",
                "finalized_at": now if nothing_to_pay else None,
                "paid_at": now if nothing_to_pay else None,
            },
        )
        if not created:
            return invoice
        InvoiceLine.objects.bulk_create(
            InvoiceLine(
                invoice=invoice,
                position=position,
                kind=line.kind,
                model=line.model,
                tokens=line.tokens,
                quantity=line.quantity,
                unit_price_per_mtok_minor=line.unit_price,
                amount_minor=line.amount_minor,
                description=line.description,
            )
            for position, line in enumerate(rating.lines, start=1)
        )
        audit_record(
            actor=Actor.system(),
            action="invoice.built",
            organization=Organization(pk=organization_id),
            target=invoice,
            metadata={"period": period.isoformat(), "total_minor": total, "currency": invoice.currency},
        )
    return invoice
