"""Dunning: what an organization's standing becomes when Stripe reports a payment.

The webhook processing (``billing/webhooks.py``) and the push (``billing/services.py``) call
these after they have recorded an invoice's new status; this module decides the
organization's standing, the retries and the emails.

The timeline of a failed payment, counted from the first failure (a ``Dunning`` row):

- at once: the organization is ``past_due`` for billing (the edge keeps serving it) and its
  owners and billing members are told by email;
- on each of ``BILLING_RETRY_DAYS`` (and at once when a card is added): every open invoice is
  charged again, each charge with a new idempotency key;
- three days before the suspension: one warning email;
- after ``BILLING_GRACE_DAYS``: ``suspended`` for billing, and the edge answers 402
  ``billing_suspended`` within a second;
- once no invoice is open any more (paid, paid out of band, forgiven, voided): ``active``
  again, published to the edge, and a last email.

A standing that staff set (``status_reason == "staff"``) is never changed here: a payment does
not lift a suspension staff decided, and the grace does not override it either.
"""

import logging
from collections import defaultdict
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.currency import format_minor
from billing.errors import BillingError
from billing.models import Dunning, Invoice
from billing.notifications import billing_email_send
from portal.audit import Actor, audit_record
from portal.models import Organization
from portal.services import organization_set_status

logger = logging.getLogger("tollgate.billing")

WARNING_BEFORE = timedelta(days=3)
REASON_MAX = 500


def dunning_suspends_at(dunning: Dunning) -> datetime:
    return dunning.started_at + timedelta(days=settings.BILLING_GRACE_DAYS)


def dunning_retries_at(dunning: Dunning) -> list[datetime]:
    return [dunning.started_at + timedelta(days=day) for day in settings.BILLING_RETRY_DAYS]


def _open_dunning(organization: Organization, *, lock: bool = False) -> Dunning | None:
    found = Dunning.objects.filter(organization=organization, ended_at__isnull=True)
    return (found.select_for_update() if lock else found).first()


def _open_invoices(organization: Organization):
    return Invoice.objects.filter(organization=organization, status=Invoice.Status.OPEN)


def _owed(organization: Organization) -> str:
    totals: dict[str, int] = defaultdict(int)
    for currency, total in _open_invoices(organization).values_list("currency", "total_minor"):
        totals[currency] += total
    return ", ".join(format_minor(total, currency) for currency, total in sorted(totals.items()))


def _billing_may_change(organization: Organization) -> bool:
    return organization.status_reason != Organization.StatusReason.STAFF


def dunning_payment_failed(*, invoice: Invoice, reason: str) -> None:
    """Record that collecting ``invoice`` failed for ``reason`` (a decline message or code).

    The first failure opens the organization's dunning: past due, audited, one email. A
    failure reported again (the push and Stripe's webhook both report it, retries fail) only
    keeps the latest reason; one reported for an invoice no longer open changes nothing.
    """
    reason = (reason.strip() or "The payment failed.")[:REASON_MAX]
    with transaction.atomic():
        organization = Organization.objects.select_for_update().get(pk=invoice.organization_id)
        invoice = Invoice.objects.filter(pk=invoice.pk, status=Invoice.Status.OPEN).first()
        if invoice is None:
            return
        dunning = _open_dunning(organization)
        if dunning is not None:
            Dunning.objects.filter(pk=dunning.pk).exclude(reason=reason).update(reason=reason)
            return
        dunning = Dunning.objects.create(organization=organization, reason=reason)
        audit_record(
            actor=Actor.system(),
            action="dunning.started",
            organization=organization,
            target=dunning,
            metadata={"invoice": invoice.public_id, "reason": reason},
        )
        if organization.status == Organization.Status.ACTIVE and _billing_may_change(organization):
            organization_set_status(
                actor=Actor.system(),
                organization=organization,
                status=Organization.Status.PAST_DUE,
                reason=Organization.StatusReason.BILLING,
            )
        billing_email_send(
            organization=organization,
            template="payment_failed",
            invoice=invoice,
            reason=reason,
            retry_dates=[f"{moment:%Y-%m-%d}" for moment in dunning_retries_at(dunning)],
            suspend_on=dunning_suspends_at(dunning),
        )


def dunning_invoice_settled(*, invoice: Invoice) -> None:
    """Record that ``invoice`` no longer needs collecting (paid, voided, forgiven).

    Once no invoice of the organization is open, its dunning ends and a standing billing set
    is lifted (``active``, published to the edge, one email); a standing staff set stays.
    """
    with transaction.atomic():
        organization = Organization.objects.select_for_update().get(pk=invoice.organization_id)
        if _open_invoices(organization).exists():
            return
        dunning = _open_dunning(organization, lock=True)
        if dunning is not None:
            dunning.ended_at = timezone.now()
            dunning.save(update_fields=["ended_at"])
            audit_record(
                actor=Actor.system(),
                action="dunning.ended",
                organization=organization,
                target=dunning,
                metadata={"invoice": invoice.public_id, "retries_made": dunning.retries_made},
            )
        if organization.status_reason != Organization.StatusReason.BILLING:
            return
        was_suspended = organization.status == Organization.Status.SUSPENDED
        organization_set_status(
            actor=Actor.system(), organization=organization, status=Organization.Status.ACTIVE
        )
        billing_email_send(organization=organization, template="restored", was_suspended=was_suspended)


def dunning_card_added(*, organization: Organization) -> None:
    """Charge the organization's open invoices again once the current write commits.

    Call it when a card is added or made the default: a past-due organization pays at once
    instead of at its next retry.
    """
    from billing.tasks import dunning_charge as charge_task

    if _open_invoices(organization).exists():
        organization_id = organization.pk
        transaction.on_commit(lambda: charge_task.delay(organization_id, "card_added"))


def dunning_charge(*, organization: Organization, trigger: str) -> list[str]:
    """Charge every open invoice of the organization again, each with a new attempt; audited.

    Return the invoices' statuses. A decline or a payment is reported back here by the push
    itself (``dunning_payment_failed`` / ``dunning_invoice_settled``).
    """
    from billing.services import invoice_push

    invoices = list(_open_invoices(organization).exclude(stripe_invoice_id="").order_by("period"))
    if not invoices:
        return []
    with transaction.atomic():
        audit_record(
            actor=Actor.system(),
            action="dunning.charge_attempted",
            organization=organization,
            metadata={"trigger": trigger, "invoices": [invoice.public_id for invoice in invoices]},
        )
    statuses = []
    for invoice in invoices:
        try:
            invoice_push(invoice=invoice)
        except BillingError as error:
            logger.info(
                "dunning charge failed",
                extra={"invoice": invoice.public_id, "trigger": trigger, "error": error.message},
            )
        statuses.append(invoice.status)
    return statuses


def dunning_advance(*, dunning: Dunning) -> None:
    """Take one open dunning as far along its timeline as the clock says: retry, warn, suspend.

    Safe to run again and from several workers: each step is claimed on the row first, so a
    retry runs once per scheduled day (a run that missed several days charges once) and the
    warning and the suspension happen once.
    """
    now = timezone.now()
    due = sum(1 for moment in dunning_retries_at(dunning) if now >= moment)
    if due > dunning.retries_made:
        claimed = Dunning.objects.filter(pk=dunning.pk, ended_at__isnull=True, retries_made__lt=due).update(
            retries_made=due
        )
        if claimed:
            dunning_charge(
                organization=dunning.organization,
                trigger=f"retry {due} of {len(settings.BILLING_RETRY_DAYS)}",
            )
    dunning.refresh_from_db()
    if dunning.ended_at is not None:
        return
    suspends_at = dunning_suspends_at(dunning)
    if now >= suspends_at:
        _suspend(dunning)
    elif now >= suspends_at - WARNING_BEFORE:
        _warn(dunning)


def _warn(dunning: Dunning) -> None:
    with transaction.atomic():
        dunning = Dunning.objects.select_for_update().select_related("organization").get(pk=dunning.pk)
        organization = dunning.organization
        if dunning.ended_at or dunning.warned_at or not _billing_may_change(organization):
            return
        dunning.warned_at = timezone.now()
        dunning.save(update_fields=["warned_at"])
        suspends_at = dunning_suspends_at(dunning)
        audit_record(
            actor=Actor.system(),
            action="dunning.warned",
            organization=organization,
            target=dunning,
            metadata={"suspends_at": suspends_at.isoformat()},
        )
        billing_email_send(
            organization=organization,
            template="suspension_warning",
            suspend_on=suspends_at,
            owed=_owed(organization),
        )


def _suspend(dunning: Dunning) -> None:
    with transaction.atomic():
        dunning = Dunning.objects.select_for_update().get(pk=dunning.pk)
        organization = Organization.objects.select_for_update().get(pk=dunning.organization_id)
        # Under a standing staff set, wait: if staff lift it, the next run suspends for billing.
        if dunning.ended_at or dunning.suspended_at or not _billing_may_change(organization):
            return
        dunning.suspended_at = timezone.now()
        dunning.save(update_fields=["suspended_at"])
        organization_set_status(
            actor=Actor.system(),
            organization=organization,
            status=Organization.Status.SUSPENDED,
            reason=Organization.StatusReason.BILLING,
        )
        billing_email_send(organization=organization, template="suspended", owed=_owed(organization))


def dunning_run() -> int:
    """Advance every open dunning (the beat runs this hourly); return how many were looked at."""
    count = 0
    for dunning in Dunning.objects.filter(ended_at__isnull=True).select_related("organization"):
        try:
            dunning_advance(dunning=dunning)
        except Exception:
            # One organization's failure (Stripe down, a bug) must not stall everyone else's.
            logger.exception("dunning step failed", extra={"organization_id": dunning.organization_id})
        count += 1
    return count
