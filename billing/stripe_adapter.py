"""The one module that talks to Stripe.

Every write carries an idempotency key derived from Tollgate's ids (``tg:cus:<organization>``,
``tg:inv:<invoice>:create``, ``tg:line:<line>``, ``tg:inv:<invoice>:finalize``,
``tg:inv:<invoice>:pay:<attempt>``, ``tg:inv:<invoice>:void``, ``tg:inv:<invoice>:paid_out_of_band``,
``tg:inv:<invoice>:uncollectible``): a call repeated after a crash or a timeout gets Stripe's
first answer instead of acting twice. Stripe keeps a key for at least 24 hours; past that, the
callers find what was made by its metadata (``invoice_find``, ``invoice_items``). The writes
about payment methods and billing details carry no key of ours: each sets a value (repeating
it changes nothing) or makes a SetupIntent that costs nothing unused; the SDK's own key covers
its retries.

Every ``stripe.StripeError`` leaves this module as a ``BillingError``: ``BillingUnavailable``
when a later retry may succeed, ``PaymentDeclined`` when the customer's payment failed.
"""

import functools
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime

import stripe
from django.conf import settings
from django.core.signals import setting_changed

from billing.errors import BillingError, BillingUnavailable, PaymentDeclined, TaxIdRefused, WebhookRejected
from usage.partitions import add_months

# The SDK retries timeouts, 409s and 5xx answers itself, with the same idempotency key.
NETWORK_RETRIES = 2
PAGE = 100
# How old a webhook's signature may be (Stripe's own default): older deliveries may be replays.
WEBHOOK_TOLERANCE_SECONDS = stripe.Webhook.DEFAULT_TOLERANCE


@dataclass(frozen=True)
class StripeInvoice:
    id: str
    status: str
    currency: str
    total: int
    tollgate_invoice_id: int | None = None  # from the metadata the push gave it
    hosted_invoice_url: str = ""


@dataclass(frozen=True)
class Card:
    id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int


@dataclass(frozen=True)
class SetupIntent:
    id: str
    status: str
    customer: str
    payment_method: str
    client_secret: str


@dataclass(frozen=True)
class StripeLine:
    line_id: int | None  # the Tollgate invoice line it mirrors; None for a line made in Stripe
    amount: int
    description: str


@functools.cache
def _client() -> stripe.StripeClient:
    if not settings.STRIPE_SECRET_KEY:
        raise BillingError("Stripe is not configured: set STRIPE_SECRET_KEY.", code="stripe_not_configured")
    return stripe.StripeClient(
        settings.STRIPE_SECRET_KEY,
        base_addresses={"api": settings.STRIPE_API_BASE},
        max_network_retries=NETWORK_RETRIES,
    )


def _forget_client(*, setting, **_kwargs):
    if setting.startswith("STRIPE_"):
        _client.cache_clear()


setting_changed.connect(_forget_client)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except stripe.CardError as error:
        raise PaymentDeclined(
            _message(error),
            code=error.code or PaymentDeclined.code,
            decline_code=getattr(error.error, "decline_code", None) or error.code or PaymentDeclined.code,
        ) from error
    except (stripe.APIConnectionError, stripe.RateLimitError) as error:
        raise BillingUnavailable(_message(error)) from error
    except stripe.IdempotencyError as error:
        raise BillingError(_message(error), code="idempotency_error") from error
    except stripe.StripeError as error:
        # 409: another request with the same key is still running; 5xx: Stripe failed.
        if error.http_status is not None and (error.http_status == 409 or error.http_status >= 500):
            raise BillingUnavailable(_message(error)) from error
        raise BillingError(_message(error), code=error.code or BillingError.code) from error


def _message(error: stripe.StripeError) -> str:
    return f"Stripe: {error.user_message or error.__class__.__name__}"


def _unix(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def _invoice(found) -> StripeInvoice:
    invoice_id = _metadata(found).get("tollgate_invoice_id", "")
    return StripeInvoice(
        id=found.id,
        status=found.status,
        currency=found.currency,
        total=found.total,
        tollgate_invoice_id=int(invoice_id) if invoice_id.isdigit() else None,
        hosted_invoice_url=getattr(found, "hosted_invoice_url", None) or "",
    )


def _metadata(found) -> dict[str, str]:
    return found.metadata.to_dict() if found.metadata else {}


def _line_id(found) -> int | None:
    value = _metadata(found).get("tollgate_line_id", "")
    return int(value) if value.isdigit() else None


def customer_create(*, organization_id: int, slug: str, name: str, email: str) -> str:
    """Create the Stripe customer of an organization and return its id."""
    params = {
        "name": name,
        "metadata": {"tollgate_organization_id": str(organization_id), "tollgate_organization_slug": slug},
    }
    if email:
        params["email"] = email
    with _errors():
        customer = _client().v1.customers.create(
            params=params, options={"idempotency_key": f"tg:cus:{organization_id}"}
        )
    return customer.id


def customer_update(*, customer: str, email: str, name: str, address: dict[str, str] | None) -> None:
    """Set the name, billing email and postal address Stripe prints on the customer's invoices."""
    with _errors():
        _client().v1.customers.update(
            customer,
            # Stripe clears a field sent empty.
            params={"email": email, "name": name, "address": address if address else ""},
        )


def customer_tax_id_set(*, customer: str, tax_id: tuple[str, str] | None) -> None:
    """Make ``tax_id`` (type, value) the customer's only tax id; None removes them all.

    The new one is added before the others go, so that a refused tax id changes nothing.
    """
    with _errors():
        existing = _client().v1.customers.tax_ids.list(customer).data
    if tax_id is not None and tax_id not in [(found.type, found.value) for found in existing]:
        with _errors():
            try:
                _client().v1.customers.tax_ids.create(
                    customer, params={"type": tax_id[0], "value": tax_id[1]}
                )
            except stripe.InvalidRequestError as error:
                raise TaxIdRefused(
                    f"Stripe does not accept {tax_id[1]} as a tax id of this kind.", field="tax_id_value"
                ) from error
    with _errors():
        for found in existing:
            if (found.type, found.value) != tax_id:
                _client().v1.customers.tax_ids.delete(customer, found.id)


def _setup_intent(found) -> SetupIntent:
    return SetupIntent(
        id=found.id,
        status=found.status,
        customer=found.customer or "",
        payment_method=found.payment_method or "",
        client_secret=found.client_secret,
    )


def setup_intent_create(*, customer: str, organization_id: int) -> SetupIntent:
    """Start saving a card for off-session charges; the browser confirms it with Stripe.js."""
    with _errors():
        return _setup_intent(
            _client().v1.setup_intents.create(
                params={
                    "customer": customer,
                    "usage": "off_session",
                    "payment_method_types": ["card"],
                    "metadata": {"tollgate_organization_id": str(organization_id)},
                }
            )
        )


def setup_intent_confirm(*, setup_intent: str, payment_method: str) -> SetupIntent:
    """Confirm a SetupIntent from the server with a known payment method (Stripe's test cards,
    such as ``pm_card_visa``; the demo seeds its cards this way)."""
    with _errors():
        return _setup_intent(
            _client().v1.setup_intents.confirm(setup_intent, params={"payment_method": payment_method})
        )


def setup_intent_retrieve(*, setup_intent: str) -> SetupIntent:
    with _errors():
        return _setup_intent(_client().v1.setup_intents.retrieve(setup_intent))


def cards_list(*, customer: str) -> list[Card]:
    """Return the cards saved on the customer, oldest first."""
    with _errors():
        found = _client().v1.payment_methods.list(
            params={"customer": customer, "type": "card", "limit": PAGE}
        )
        cards = [
            Card(
                id=method.id,
                brand=method.card.brand,
                last4=method.card.last4,
                exp_month=method.card.exp_month,
                exp_year=method.card.exp_year,
            )
            for method in found.auto_paging_iter()
        ]
    # Stripe lists newest first.
    return cards[::-1]


def customer_default_payment_method(*, customer: str) -> str:
    """Return the id of the payment method invoices are charged to, or "" when none is set."""
    with _errors():
        found = _client().v1.customers.retrieve(customer)
    invoice_settings = found.invoice_settings
    method = invoice_settings.default_payment_method if invoice_settings else None
    return method if isinstance(method, str) else (method.id if method else "")


def customer_default_payment_method_set(*, customer: str, payment_method: str) -> None:
    """Charge the customer's invoices to ``payment_method`` from now on."""
    with _errors():
        _client().v1.customers.update(
            customer, params={"invoice_settings": {"default_payment_method": payment_method}}
        )


def payment_method_detach(*, payment_method: str) -> None:
    """Remove a payment method from its customer; it can no longer be charged."""
    with _errors():
        _client().v1.payment_methods.detach(payment_method)


def invoice_find(*, customer: str, invoice_id: int) -> str | None:
    """Return the id of the draft Stripe invoice made for Tollgate invoice ``invoice_id``, if any."""
    with _errors():
        drafts = _client().v1.invoices.list(params={"customer": customer, "status": "draft", "limit": PAGE})
        for draft in drafts.auto_paging_iter():
            if _metadata(draft).get("tollgate_invoice_id") == str(invoice_id):
                return draft.id
    return None


def invoice_create(
    *, customer: str, currency: str, invoice_id: int, organization_id: int, period: date
) -> str:
    """Create an empty draft invoice that Stripe neither fills nor advances by itself."""
    with _errors():
        created = _client().v1.invoices.create(
            params={
                "customer": customer,
                "currency": currency,
                "collection_method": "charge_automatically",
                "auto_advance": False,
                "pending_invoice_items_behavior": "exclude",
                "metadata": {
                    "tollgate_invoice_id": str(invoice_id),
                    "tollgate_organization_id": str(organization_id),
                    "tollgate_period": f"{period:%Y-%m}",
                },
            },
            options={"idempotency_key": f"tg:inv:{invoice_id}:create"},
        )
    return created.id


def invoice_items(*, invoice: str) -> dict[int, str]:
    """Return the items already on a Stripe invoice, by the Tollgate line each mirrors."""
    items = {}
    with _errors():
        found = _client().v1.invoice_items.list(params={"invoice": invoice, "limit": PAGE})
        for item in found.auto_paging_iter():
            line_id = _line_id(item)
            if line_id is not None:
                items[line_id] = item.id
    return items


def invoice_item_create(
    *,
    customer: str,
    invoice: str,
    line_id: int,
    amount_minor: int,
    currency: str,
    description: str,
    period: date,
) -> str:
    """Add one line, in minor units, to a draft Stripe invoice and return the item's id."""
    with _errors():
        item = _client().v1.invoice_items.create(
            params={
                "customer": customer,
                "invoice": invoice,
                "amount": amount_minor,
                "currency": currency,
                "description": description,
                "period": {"start": _unix(period), "end": _unix(add_months(period, 1))},
                "metadata": {"tollgate_line_id": str(line_id)},
            },
            options={"idempotency_key": f"tg:line:{line_id}"},
        )
    return item.id


def invoice_retrieve(*, invoice: str) -> StripeInvoice:
    with _errors():
        return _invoice(_client().v1.invoices.retrieve(invoice))


def invoice_lines(*, invoice: str) -> list[StripeLine]:
    """Return every line of a Stripe invoice (all pages)."""
    with _errors():
        lines = _client().v1.invoices.line_items.list(invoice, params={"limit": PAGE})
        return [
            StripeLine(line_id=_line_id(line), amount=line.amount, description=line.description or "")
            for line in lines.auto_paging_iter()
        ]


def invoice_finalize(*, invoice: str, invoice_id: int) -> StripeInvoice:
    """Finalize a draft invoice (draft → open); Stripe will not charge it by itself."""
    with _errors():
        return _invoice(
            _client().v1.invoices.finalize_invoice(
                invoice,
                params={"auto_advance": False},
                options={"idempotency_key": f"tg:inv:{invoice_id}:finalize"},
            )
        )


def invoice_pay(*, invoice: str, invoice_id: int, attempt: int) -> StripeInvoice:
    """Charge an open invoice to the customer's default payment method (open → paid)."""
    with _errors():
        return _invoice(
            _client().v1.invoices.pay(
                invoice, options={"idempotency_key": f"tg:inv:{invoice_id}:pay:{attempt}"}
            )
        )


def invoice_void(*, invoice: str, invoice_id: int) -> StripeInvoice:
    """Void an open invoice (open → void): nothing more is owed on it."""
    with _errors():
        return _invoice(
            _client().v1.invoices.void_invoice(
                invoice, options={"idempotency_key": f"tg:inv:{invoice_id}:void"}
            )
        )


def invoice_payment_error(*, invoice: str) -> str:
    """Return why the latest payment of an invoice failed, in Stripe's words ("" if it says nothing)."""
    with _errors():
        payments = _client().v1.invoice_payments.list(params={"invoice": invoice, "limit": PAGE})
        for payment in payments.auto_paging_iter():  # newest first
            if payment.payment.type != "payment_intent":
                continue
            error = _client().v1.payment_intents.retrieve(payment.payment.payment_intent).last_payment_error
            if error is None:
                return ""
            return error.message or error.decline_code or error.code or ""
    return ""


def events_since(*, since: datetime, types: Iterable[str]) -> list[dict]:
    """Return the events of the given types that Stripe created since ``since``, as webhooks carry them."""
    with _errors():
        events = _client().v1.events.list(
            params={"created": {"gte": int(since.timestamp())}, "types": sorted(types), "limit": PAGE}
        )
        return [event.to_dict() for event in events.auto_paging_iter()]


def webhook_event_verify(*, payload: bytes, signature: str, secret: str) -> dict:
    """Check a webhook delivery's ``Stripe-Signature`` against its raw body; return the event.

    Raise ``WebhookRejected`` (code ``invalid_signature``, ``stale_timestamp`` or
    ``invalid_payload``) for a delivery that cannot be trusted or read.
    """
    # Two passes, so that a good signature that is too old is told apart from a forged one.
    try:
        stripe.WebhookSignature.verify_header(payload, signature, secret, tolerance=None)
    except (stripe.SignatureVerificationError, UnicodeDecodeError):
        raise WebhookRejected("The Stripe-Signature header does not sign this body.") from None
    try:
        stripe.WebhookSignature.verify_header(payload, signature, secret, tolerance=WEBHOOK_TOLERANCE_SECONDS)
    except stripe.SignatureVerificationError:
        raise WebhookRejected(
            f"The signature is more than {WEBHOOK_TOLERANCE_SECONDS} seconds old.", code="stale_timestamp"
        ) from None
    try:
        event = json.loads(payload)
    except ValueError:
        event = None
    if not (
        isinstance(event, dict)
        and event.get("object") == "event"
        and isinstance(event.get("id"), str)
        and 0 < len(event["id"]) <= 255
        and isinstance(event.get("type"), str)
        and 0 < len(event["type"]) <= 100
        and isinstance(event.get("created"), int)
        and isinstance(event.get("data"), dict)
        and isinstance(event["data"].get("object"), dict)
    ):
        raise WebhookRejected("The body is not a Stripe event.", code="invalid_payload")
    return event


def invoice_pay_out_of_band(*, invoice: str, invoice_id: int) -> StripeInvoice:
    """Record an open invoice as paid outside Stripe (open → paid); nothing is charged."""
    with _errors():
        return _invoice(
            _client().v1.invoices.pay(
                invoice,
                params={"paid_out_of_band": True},
                options={"idempotency_key": f"tg:inv:{invoice_id}:paid_out_of_band"},
            )
        )


def invoice_mark_uncollectible(*, invoice: str, invoice_id: int) -> StripeInvoice:
    """Write an open invoice off as a bad debt (open → uncollectible); Stripe stops charging it."""
    with _errors():
        return _invoice(
            _client().v1.invoices.mark_uncollectible(
                invoice, options={"idempotency_key": f"tg:inv:{invoice_id}:uncollectible"}
            )
        )
