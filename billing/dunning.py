"""Dunning: what an organization's standing becomes when Stripe reports a payment.

The webhook processing (``billing/webhooks.py``) and the push (``billing/services.py``) call
these after they have recorded an invoice's new status; this module decides the
organization's standing, the retries and the emails.
"""

from billing.models import Invoice


def dunning_payment_failed(*, invoice: Invoice, reason: str) -> None:
    """Record that collecting ``invoice`` failed for ``reason`` (a decline message or code)."""


def dunning_invoice_settled(*, invoice: Invoice) -> None:
    """Record that ``invoice`` no longer needs collecting (paid, voided, forgiven)."""


def dunning_card_added(*, organization) -> None:
    """Retry collecting ``organization``'s open invoices now that it has a new card to charge."""
