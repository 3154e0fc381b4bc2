"""localstripe, completed with the parts of Stripe's API that Tollgate uses and it lacks.

Run as a script (``python tests/billing/localstripe_ext.py --port 8420``); the billing tests
start it from a fixture. What this adds, each as real Stripe behaves:

- idempotent requests: a POST repeated with the same ``Idempotency-Key`` and parameters gets
  the first answer again (``Idempotent-Replayed: true``); the same key with other parameters
  gets a 400 ``idempotency_error``. ``DELETE /_config/idempotency_keys`` forgets every key, as
  Stripe does after 24 hours;
- ``POST /v1/invoices`` without a subscription, with ``currency``, ``collection_method``,
  ``auto_advance`` and ``pending_invoice_items_behavior``; ``GET /v1/invoices?status=``;
- ``POST /v1/invoiceitems`` with ``invoice=`` (a draft's new line) and ``period``;
  ``GET /v1/invoiceitems?invoice=``;
- ``POST /v1/invoices/{id}/finalize`` (draft → open, ``invoice.finalized``);
- ``POST /v1/invoices/{id}/pay``: a declined card answers 402 ``card_error`` and sends
  ``invoice.payment_failed``; a paid invoice sends ``invoice.paid``; ``paid_out_of_band``
  marks it paid without a charge; an uncollectible invoice may still be paid;
- ``POST /v1/invoices/{id}/void`` sends ``invoice.voided``; ``POST
  /v1/invoices/{id}/mark_uncollectible`` (open → uncollectible, ``invoice.marked_uncollectible``);
- ``GET /v1/invoice_payments?invoice=`` (the invoice's payment intent, as the API versions
  without ``Invoice.payment_intent`` report it); ``GET /v1/events?types[]=``;
- ``DELETE /_config/webhooks/{id}``: stop sending events to an endpoint registered with
  ``POST /_config/webhooks/{id}``;
- a finalized invoice has a ``hosted_invoice_url`` (Stripe's page for paying it);
- a SetupIntent confirmed for a customer attaches its payment method to that customer (as
  Stripe does, so that the card can be charged off-session and is listed on the customer);
- ``GET /v1/payment_methods?customer=`` lists newest first, as Stripe does;
- no pickle of the store in /tmp (each server keeps its data in memory, so that several
  servers can run side by side).
"""

import argparse
import json
import pickle
import re
import time

from aiohttp import web
from localstripe import resources, server
from localstripe.errors import UserError
from localstripe.resources import (
    Customer,
    Event,
    Invoice,
    InvoiceItem,
    InvoiceLineItem,
    List,
    PaymentIntent,
    PaymentMethod,
    SetupIntent,
    store,
    try_convert_to_bool,
)
from localstripe.webhooks import _webhooks, schedule_webhook

resources.Store.dump_to_disk = lambda self: None
resources.Store.try_load_from_disk = lambda self: None


def _keep_store_in(path: str) -> None:
    """Load the store from ``path`` and write it back after every change (slow, but only the demo)."""

    def dump(self):
        with open(path, "wb") as file:
            pickle.dump(dict(self), file, protocol=pickle.HIGHEST_PROTOCOL)

    resources.Store.dump_to_disk = dump
    try:
        with open(path, "rb") as file:
            dict.update(store, pickle.load(file))
    except FileNotFoundError:
        pass


def _unknown(params: dict) -> None:
    if params:
        raise UserError(400, f"Received unknown parameter: {next(iter(params))}")


# --- Idempotent requests ------------------------------------------------------------------

# (credential, key) -> (the request's method, path and parameters, status, body)
_replays: dict[tuple[str, str], tuple[str, int, bytes]] = {}


@web.middleware
async def idempotency_middleware(request, handler):
    key = request.headers.get("Idempotency-Key")
    if request.method != "POST" or not key:
        return await handler(request)
    scope = (request.headers.get("Authorization", ""), key)
    params = await server.get_post_data(request, remove_auth=False)
    fingerprint = json.dumps([request.path, dict(params) if params else {}], sort_keys=True, default=str)
    if scope in _replays:
        first, status, body = _replays[scope]
        if first != fingerprint:
            return web.json_response(
                {
                    "error": {
                        "type": "idempotency_error",
                        "message": "Keys for idempotent requests can only be used with the same "
                        "parameters they were first used with. Try using a key other than "
                        f"'{key}' if you meant to execute a different request.",
                    }
                },
                status=400,
            )
        return web.Response(
            status=status,
            body=body,
            content_type="application/json",
            headers={"Idempotent-Replayed": "true", "Idempotency-Key": key},
        )
    response = await handler(request)
    # Stripe saves the result once the endpoint started executing: not for a request refused on
    # its parameters (400) or for a missing object (404).
    if response.status not in (400, 404):
        _replays[scope] = (fingerprint, response.status, response.body)
    return response


async def forget_idempotency_keys(request):
    _replays.clear()
    return web.Response()


# --- Invoices without a subscription --------------------------------------------------------

_subscription_invoice_create = Invoice._api_create
_invoice_list = Invoice._api_list_all


def invoice_create(
    customer=None,
    currency=None,
    collection_method="charge_automatically",
    auto_advance=None,
    pending_invoice_items_behavior="exclude",
    metadata=None,
    description=None,
    subscription=None,
    **params,
):
    if subscription is not None:
        return _subscription_invoice_create(
            customer=customer, subscription=subscription, metadata=metadata, description=description, **params
        )
    _unknown(params)
    auto_advance = try_convert_to_bool(auto_advance)
    if not (isinstance(currency, str) and re.fullmatch(r"[a-z]{3}", currency)):
        raise UserError(400, "Invalid currency", {"param": "currency"})
    if collection_method not in ("charge_automatically", "send_invoice"):
        raise UserError(400, "Invalid collection_method", {"param": "collection_method"})
    if auto_advance not in (None, True, False):
        raise UserError(400, "Invalid boolean", {"param": "auto_advance"})
    if pending_invoice_items_behavior not in ("exclude", "include"):
        raise UserError(
            400, "Invalid pending_invoice_items_behavior", {"param": "pending_invoice_items_behavior"}
        )
    # As a simulation, localstripe neither sweeps the customer's pending items nor sends events.
    invoice = Invoice(customer=customer, metadata=metadata, description=description, simulation=True)
    invoice.lines._list = []
    if pending_invoice_items_behavior == "include":
        for item in InvoiceItem._api_list_all(None, customer=customer, limit=99)._list:
            item.invoice = invoice.id
            invoice.lines._list.append(InvoiceLineItem(item))
    invoice.currency = currency
    invoice.collection_method = collection_method
    invoice.auto_advance = bool(auto_advance)
    schedule_webhook(Event("invoice.created", invoice))
    return invoice


def invoice_list(url, status=None, **params):
    found = _invoice_list(url, **params)
    if status is not None:
        found._list = [invoice for invoice in found._list if invoice.status == status]
    return found


Invoice._api_create = staticmethod(invoice_create)
Invoice._api_list_all = staticmethod(invoice_list)


def invoice_finalize(id, auto_advance=None, **params):
    _unknown(params)
    invoice = Invoice._api_retrieve(id)
    if invoice.status != "draft":
        raise UserError(400, "This invoice is already finalized, you can't re-finalize a non-draft invoice.")
    _finalize(invoice)
    if auto_advance is not None:
        invoice.auto_advance = try_convert_to_bool(auto_advance)
    return invoice


def _finalize(invoice) -> None:
    invoice._finalize()
    invoice.hosted_invoice_url = f"https://invoice.stripe.com/i/acct_localstripe/{invoice.id}"
    schedule_webhook(Event("invoice.finalized", invoice))


def invoice_pay(id, paid_out_of_band=None, **params):
    _unknown(params)
    invoice = Invoice._api_retrieve(id)
    if invoice.status == "paid":
        raise UserError(400, "Invoice is already paid")
    if invoice.status not in ("draft", "open", "uncollectible"):
        raise UserError(400, f"You cannot pay an invoice with status {invoice.status}.")
    if invoice.status == "draft":
        _finalize(invoice)
    if try_convert_to_bool(paid_out_of_band):
        invoice._paid_out_of_band = True
        invoice._on_payment_success()
        return invoice
    if invoice.total <= 0:
        invoice._on_payment_success()
        return invoice
    method = Customer._api_retrieve(invoice.customer)._get_default_payment_method_or_source()
    if method is None:
        raise UserError(400, "This customer has no attached payment source or default payment method.")
    intent = PaymentIntent(
        amount=invoice.total, currency=invoice.currency, customer=invoice.customer, payment_method=method.id
    )
    invoice.payment_intent = intent.id
    intent.invoice = invoice.id
    try:
        # Reports the failure (payment_intent.payment_failed, invoice.payment_failed) and raises.
        intent._confirm(on_failure_now=intent._report_failure)
    except UserError as error:
        if error.code == 402:
            error.body["error"].update(type="card_error", decline_code="generic_decline")
        raise
    return invoice


def invoice_mark_uncollectible(id, **params):
    _unknown(params)
    invoice = Invoice._api_retrieve(id)
    if invoice.status != "open":
        raise UserError(
            400, f"You can only mark an open invoice uncollectible, this one is {invoice.status}."
        )
    invoice._uncollectible = True
    invoice.status_transitions["marked_uncollectible_at"] = int(time.time())
    schedule_webhook(Event("invoice.marked_uncollectible", invoice))
    return invoice


_status = Invoice.status.fget


def _status_out_of_band_or_uncollectible(self):
    if getattr(self, "_paid_out_of_band", False):
        return "paid"
    status = _status(self)
    if status == "open" and getattr(self, "_uncollectible", False):
        return "uncollectible"
    return status


Invoice.status = property(_status_out_of_band_or_uncollectible)


_on_payment_success = Invoice._on_payment_success


def _on_payment_success_and_paid(self):
    _on_payment_success(self)
    schedule_webhook(Event("invoice.paid", self))


Invoice._on_payment_success = _on_payment_success_and_paid


# --- Void invoices --------------------------------------------------------------------------

_void = Invoice._api_void_invoice


def invoice_void(id, **params):
    _unknown(params)
    invoice = _void(id)
    schedule_webhook(Event("invoice.voided", invoice))
    return invoice


async def invoice_payments_list(request):
    invoice = Invoice._api_retrieve(request.query.get("invoice", ""))
    payments = []
    if invoice.payment_intent:
        intent = PaymentIntent._api_retrieve(invoice.payment_intent)
        payments.append(
            {
                "id": "inpay_" + intent.id.removeprefix("pi_"),
                "object": "invoice_payment",
                "invoice": invoice.id,
                "amount_requested": invoice.total,
                "currency": invoice.currency,
                "is_default": True,
                "status": "paid" if intent.status == "succeeded" else "open",
                "payment": {"type": "payment_intent", "payment_intent": intent.id},
            }
        )
    return web.json_response(
        {"object": "list", "url": "/v1/invoice_payments", "has_more": False, "data": payments}
    )


# --- Events listed by several types -----------------------------------------------------------

_event_list = Event._api_list_all


def event_list(url, types=None, **params):
    found = _event_list(url, **params)
    if types is not None:
        found._list = [event for event in found._list if event.type in types]
    return found


Event._api_list_all = staticmethod(event_list)


async def forget_webhook(request):
    _webhooks.pop(request.match_info["id"], None)
    return web.Response()


# --- SetupIntents save the card on their customer ---------------------------------------------

_setup_intent_confirm = SetupIntent._api_confirm


def setup_intent_confirm(id, **params):
    intent = _setup_intent_confirm(id, **params)
    if intent.status == "succeeded" and intent.customer and intent.payment_method:
        PaymentMethod._api_retrieve(intent.payment_method).customer = intent.customer
    return intent


_payment_method_list = PaymentMethod._api_list_all


def payment_method_list(url, **params):
    found = _payment_method_list(url, **params)
    found._list = found._list[::-1]
    return found


PaymentMethod._api_list_all = staticmethod(payment_method_list)


# --- Invoice items on a given draft, with a period ------------------------------------------

_pending_item_create = InvoiceItem._api_create
_pending_item_list = InvoiceItem._api_list_all


def invoice_item_create(invoice=None, period=None, **params):
    if period is not None:
        if not isinstance(period, dict) or set(period) != {"start", "end"}:
            raise UserError(400, "Invalid period", {"param": "period"})
        params.update(period_start=period["start"], period_end=period["end"])
    draft = Invoice._api_retrieve(invoice) if invoice is not None else None
    if draft is not None:
        if draft.status != "draft":
            raise UserError(
                400, f"You can only add invoice items to draft invoices, this one is {draft.status}."
            )
        if params.get("currency") != draft.currency:
            raise UserError(400, "The invoice item's currency must be the invoice's.", {"param": "currency"})
    item = _pending_item_create(invoice=invoice, **params)
    if draft is not None:
        draft.lines._list.append(InvoiceLineItem(item))
    return item


def invoice_item_list(url, invoice=None, limit=None, starting_after=None, **params):
    if invoice is None:
        return _pending_item_list(url, limit=limit, starting_after=starting_after, **params)
    _unknown(params)
    Invoice._api_retrieve(invoice)
    found = List(url, limit=limit, starting_after=starting_after)
    found._list = [
        item for name, item in store.items() if name.startswith("invoiceitem:") and item.invoice == invoice
    ]
    return found


InvoiceItem._api_create = staticmethod(invoice_item_create)
InvoiceItem._api_list_all = staticmethod(invoice_item_list)


# --- Routes ---------------------------------------------------------------------------------

# localstripe registered its own routes for these at import; requests for them are served by ours.
_REPLACED = {
    ("POST", "/v1/invoices/{id}/pay"): server.api_extra(invoice_pay, "/v1/invoices/{id}/pay"),
    ("POST", "/v1/invoices/{id}/void"): server.api_extra(invoice_void, "/v1/invoices/{id}/void"),
    ("POST", "/v1/setup_intents/{id}/confirm"): server.api_extra(
        setup_intent_confirm, "/v1/setup_intents/{id}/confirm"
    ),
}


@web.middleware
async def replaced_routes_middleware(request, handler):
    resource = request.match_info.route.resource
    if resource is not None:
        handler = _REPLACED.get((request.method, resource.canonical), handler)
    return await handler(request)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", help="keep the data in this file across restarts (the demo does)")
    args = parser.parse_args()
    if args.store:
        _keep_store_in(args.store)
    app = server.app
    # Outermost, so that replays see the error responses too; the replacement innermost, so
    # that localstripe's error middleware turns its errors into responses.
    app.middlewares.insert(0, idempotency_middleware)
    app.middlewares.append(replaced_routes_middleware)
    app.router.add_post(
        "/v1/invoices/{id}/finalize", server.api_extra(invoice_finalize, "/v1/invoices/{id}/finalize")
    )
    app.router.add_post(
        "/v1/invoices/{id}/mark_uncollectible",
        server.api_extra(invoice_mark_uncollectible, "/v1/invoices/{id}/mark_uncollectible"),
    )
    app.router.add_get("/v1/invoice_payments", invoice_payments_list)
    app.router.add_delete("/_config/idempotency_keys", forget_idempotency_keys)
    app.router.add_delete("/_config/webhooks/{id}", forget_webhook)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
