"""Reconcile a billed period: invoice lines == a fresh rating of the rollups, each invoice's
total == the sum of its lines, and each invoice == its mirror in Stripe (total, status, lines)."""

from collections import Counter
from dataclasses import dataclass
from datetime import date

from billing import stripe_adapter
from billing.currency import format_minor
from billing.models import Invoice, InvoiceLine
from billing.selectors import period_ratings
from usage.models import ClosedPeriod, UsageRollup


@dataclass(frozen=True)
class Difference:
    organization_id: int
    organization_slug: str
    invoice_id: int | None
    what: str  # missing_invoice, rating, total, stripe_total, stripe_status, stripe_lines
    detail: str


def last_closed_period() -> date | None:
    closed = ClosedPeriod.objects.order_by("-period").first()
    return closed.period if closed else None


def _describe(line: tuple, currency: str) -> str:
    kind, model, tokens, quantity, amount = line
    label = " ".join(part for part in (kind, model, tokens) if part)
    return f"{label} × {quantity:,} = {format_minor(amount, currency)}"


def _rating_differences(invoice: Invoice, lines: list[InvoiceLine], rating) -> list[str]:
    # Credit lines come from staff, not from usage: they count in the total, not here.
    billed = Counter(
        (line.kind, line.model, line.tokens, line.quantity, line.amount_minor)
        for line in lines
        if line.kind != InvoiceLine.Kind.CREDIT
    )
    rated = Counter(
        (line.kind, line.model, line.tokens, line.quantity, line.amount_minor) for line in rating.lines
    )
    details = [
        f"invoice has {_describe(line, invoice.currency)}, the rating has not" for line in billed - rated
    ]
    details += [
        f"rating has {_describe(line, invoice.currency)}, the invoice has not" for line in rated - billed
    ]
    return details


def _stripe_differences(invoice: Invoice, lines: list[InvoiceLine]) -> list[tuple[str, str]]:
    remote = stripe_adapter.invoice_retrieve(invoice=invoice.stripe_invoice_id)
    found = []
    if remote.total != invoice.total_minor:
        found.append(
            (
                "stripe_total",
                f"Stripe {format_minor(remote.total, invoice.currency)}, "
                f"here {format_minor(invoice.total_minor, invoice.currency)}",
            )
        )
    if remote.status != invoice.status:
        found.append(("stripe_status", f"Stripe {remote.status}, here {invoice.status}"))
    ours = {line.pk: line.amount_minor for line in lines}
    theirs = stripe_adapter.invoice_lines(invoice=invoice.stripe_invoice_id)
    for line in theirs:
        if line.line_id not in ours:
            found.append(
                (
                    "stripe_lines",
                    f"Stripe has a line not on this invoice: {line.description!r} "
                    f"{format_minor(line.amount, invoice.currency)}",
                )
            )
        elif line.amount != ours[line.line_id]:
            found.append(
                (
                    "stripe_lines",
                    f"line {line.line_id}: Stripe {format_minor(line.amount, invoice.currency)}, "
                    f"here {format_minor(ours[line.line_id], invoice.currency)}",
                )
            )
    on_stripe = {line.line_id for line in theirs}
    for line in lines:
        if line.pk not in on_stripe:
            found.append(("stripe_lines", f"line {line.pk} ({line.description}) is not on Stripe's invoice"))
    return found


def billing_reconcile(*, period: date, organization_ids=None) -> tuple[int, list[Difference]]:
    """Check every invoice of ``period`` (or of ``organization_ids``); return how many, and the differences.

    An organization with usage billed in the period but no invoice is a difference too. Raise
    ``BillingError`` when Stripe cannot be asked.
    """
    invoices = (
        Invoice.objects.filter(period=period).select_related("organization").order_by("organization_id")
    )
    with_usage = UsageRollup.unscoped.filter(billed_period=period)
    if organization_ids is not None:
        invoices = invoices.filter(organization_id__in=list(organization_ids))
        with_usage = with_usage.filter(organization_id__in=list(organization_ids))
    invoices = list(invoices)
    lines: dict[int, list[InvoiceLine]] = {invoice.pk: [] for invoice in invoices}
    for line in InvoiceLine.objects.filter(invoice__in=invoices).order_by("invoice", "position"):
        lines[line.invoice_id].append(line)
    ratings = period_ratings(
        period=period, organization_ids=[invoice.organization_id for invoice in invoices]
    )
    differences = []
    invoiced = set()
    for invoice in invoices:
        invoiced.add(invoice.organization_id)
        organization = invoice.organization

        def found(what: str, detail: str, invoice=invoice, organization=organization):
            differences.append(Difference(organization.pk, organization.slug, invoice.pk, what, detail))

        _plan, rating = ratings[invoice.organization_id]
        for detail in _rating_differences(invoice, lines[invoice.pk], rating):
            found("rating", detail)
        line_sum = sum(line.amount_minor for line in lines[invoice.pk])
        if line_sum != invoice.total_minor:
            found(
                "total",
                f"total {format_minor(invoice.total_minor, invoice.currency)} but the lines sum to "
                f"{format_minor(line_sum, invoice.currency)}",
            )
        if invoice.stripe_invoice_id:
            for what, detail in _stripe_differences(invoice, lines[invoice.pk]):
                found(what, detail)
        elif invoice.status != Invoice.Status.DRAFT and not invoice.no_charge_reason:
            found("stripe_status", f"the invoice is {invoice.status} here but has no Stripe invoice")
    missing = (
        with_usage.exclude(organization_id__in=invoiced)
        .values_list("organization_id", "organization__slug")
        .distinct()
        .order_by("organization_id")
    )
    for organization_id, slug in missing:
        differences.append(
            Difference(
                organization_id, slug, None, "missing_invoice", "usage billed in the period but no invoice"
            )
        )
    return len(invoices), differences
