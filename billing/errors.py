"""Billing's domain errors: what went wrong with a payment provider, in Tollgate's words."""

from portal.errors import DomainError


class BillingError(DomainError):
    """Stripe refused or failed a call; ``message`` says why, ``code`` is Stripe's code or ours.

    A retry does not help unless the error is a ``BillingUnavailable``.
    """

    status = 502
    code = "billing_error"


class BillingUnavailable(BillingError):
    """Stripe could not be reached, was rate limiting or failed on its side: retry later."""

    status = 503
    code = "billing_unavailable"


class PaymentDeclined(BillingError):
    """The customer's payment method was declined; a retry with the same method will not help."""

    status = 402
    code = "card_declined"


class WebhookRejected(BillingError):
    """A webhook delivery that cannot be trusted: a bad signature, a stale timestamp, a bad body."""

    status = 400
    code = "invalid_signature"
