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

    def __init__(self, message: str, *, code: str | None = None, decline_code: str | None = None):
        super().__init__(message, code=code)
        # Stripe's reason (``insufficient_funds``, ``generic_decline``, ...): what to tell the payer.
        self.decline_code = decline_code or self.code

    def problem_members(self) -> dict:
        return {"decline_code": self.decline_code}


class TaxIdRefused(BillingError):
    """Stripe does not accept the tax id given for the customer."""

    status = 400
    code = "tax_id_invalid"


class WebhookRejected(BillingError):
    """A webhook delivery that cannot be trusted: a bad signature, a stale timestamp, a bad body."""

    status = 400
    code = "invalid_signature"
