import re
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation

from django.db import IntegrityError, connection, transaction
from django.db.models import F, Max
from django.utils import timezone

from billing import dunning, stripe_adapter
from billing.currency import format_minor
from billing.errors import BillingError, BillingUnavailable, PaymentDeclined
from billing.metrics import INVOICE_PUSH_FAILURES, INVOICES_PUSHED
from billing.models import (
    BillingDetails,
    Customer,
    Invoice,
    InvoiceLine,
    ModelPrice,
    Plan,
    PlanAssignment,
    PlanPrice,
)
from billing.notifications import billing_email_send
from billing.stripe_adapter import Card
from portal.audit import Actor, audit_record
from portal.errors import Conflict, DomainError, NotFound
from portal.models import Membership, Organization
from portal.roles import Role
from usage.partitions import add_months, month_start


def _amount(value, field: str) -> Decimal:
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise DomainError("Enter a decimal amount in cents per million tokens.", field=field) from None
    if amount < 0 or amount != amount.quantize(Decimal("0.000001")):
        raise DomainError("Use a non-negative amount with at most 6 decimals.", field=field)
    return amount


def _price_start(effective_from):
    """Return when a price starts: on the hour given, or the current hour (usage is rated hourly)."""
    if effective_from in (None, ""):
        return timezone.now().replace(minute=0, second=0, microsecond=0)
    if effective_from.minute or effective_from.second or effective_from.microsecond:
        raise DomainError(
            "A price takes effect on the hour (minutes and seconds zero).", field="effective_from"
        )
    return effective_from


def _price_amounts(input_per_mtok_minor, output_per_mtok_minor, cached_input_per_mtok_minor):
    input_price = _amount(input_per_mtok_minor, "input_per_mtok_minor")
    output_price = _amount(output_per_mtok_minor, "output_per_mtok_minor")
    cached_price = (
        input_price
        if cached_input_per_mtok_minor in (None, "")
        else _amount(cached_input_per_mtok_minor, "cached_input_per_mtok_minor")
    )
    return input_price, output_price, cached_price


def _model_name(model: str) -> str:
    model = model.strip()
    if not model or len(model) > 200:
        raise DomainError("Name the model (1 to 200 characters).", field="model")
    return model


def _price_version_add(
    *,
    actor: Actor,
    price_model,
    action: str,
    conflict: str,
    model: str,
    input_per_mtok_minor,
    output_per_mtok_minor,
    cached_input_per_mtok_minor,
    effective_from,
    fields: dict,
    metadata: dict,
):
    """Store one price version (global or a plan's) with its audit row, in one transaction."""
    model = _model_name(model)
    effective_from = _price_start(effective_from)
    input_price, output_price, cached_price = _price_amounts(
        input_per_mtok_minor, output_per_mtok_minor, cached_input_per_mtok_minor
    )
    with transaction.atomic():
        try:
            with transaction.atomic():
                price = price_model.objects.create(
                    model=model,
                    input_per_mtok_minor=input_price,
                    output_per_mtok_minor=output_price,
                    cached_input_per_mtok_minor=cached_price,
                    effective_from=effective_from,
                    **fields,
                )
        except IntegrityError:
            raise Conflict(conflict) from None
        audit_record(
            actor=actor,
            action=action,
            target=price,
            metadata={
                **metadata,
                "model": model,
                "input": str(input_price),
                "output": str(output_price),
                "cached_input": str(cached_price),
                "effective_from": effective_from.isoformat(),
            },
        )
    return price


def model_price_set(
    *,
    actor: Actor,
    model: str,
    input_per_mtok_minor,
    output_per_mtok_minor,
    cached_input_per_mtok_minor=None,
    effective_from=None,
) -> ModelPrice:
    """Add a price version for a model; the edge sees it once it takes effect."""
    with transaction.atomic():
        price = _price_version_add(
            actor=actor,
            price_model=ModelPrice,
            action="price.set",
            conflict="A price for this model already starts at that moment.",
            model=model,
            input_per_mtok_minor=input_per_mtok_minor,
            output_per_mtok_minor=output_per_mtok_minor,
            cached_input_per_mtok_minor=cached_input_per_mtok_minor,
            effective_from=effective_from,
            fields={"created_by": actor.user},
            metadata={},
        )
        transaction.on_commit(_publish)
    return price


def _publish():
    from billing.edge_prices import prices_publish

    prices_publish()


def plan_price_set(
    *,
    actor: Actor,
    plan: Plan,
    model: str,
    input_per_mtok_minor,
    output_per_mtok_minor,
    cached_input_per_mtok_minor=None,
    effective_from=None,
) -> PlanPrice:
    """Add a version of a plan's own price for a model (it overrides the global price)."""
    return _price_version_add(
        actor=actor,
        price_model=PlanPrice,
        action="plan.price_set",
        conflict="A price for this model already starts at that moment in this plan.",
        model=model,
        input_per_mtok_minor=input_per_mtok_minor,
        output_per_mtok_minor=output_per_mtok_minor,
        cached_input_per_mtok_minor=cached_input_per_mtok_minor,
        effective_from=effective_from,
        fields={"plan": plan},
        metadata={"plan": plan.name},
    )


def organization_plan_change(*, actor: Actor, organization, plan: Plan) -> PlanAssignment:
    """Put an organization on ``plan`` from the next period on (the current one keeps its plan)."""
    period = add_months(month_start(timezone.now().date()), 1)
    with transaction.atomic():
        assignment, _ = PlanAssignment.objects.update_or_create(
            organization=organization, period=period, defaults={"plan": plan}
        )
        audit_record(
            actor=actor,
            action="organization.plan_changed",
            organization=organization,
            target=assignment,
            metadata={"plan": plan.name, "from_period": period.isoformat()},
        )
    return assignment


def customer_ensure(*, organization: Organization) -> Customer:
    """Return the organization's Stripe customer, creating it in Stripe on first use.

    The billing email is the first owner's; two concurrent calls create one Stripe customer
    (same idempotency key) and one row.
    """
    existing = Customer.objects.filter(organization=organization).first()
    if existing is not None:
        return existing
    stripe_customer_id = stripe_adapter.customer_create(
        organization_id=organization.pk,
        slug=organization.slug,
        name=organization.name,
        email=_owner_email(organization),
    )
    with transaction.atomic():
        customer, created = Customer.objects.get_or_create(
            organization=organization, defaults={"stripe_customer_id": stripe_customer_id}
        )
        if created:
            audit_record(
                actor=Actor.system(),
                action="billing.customer_created",
                organization=organization,
                target=customer,
                metadata={"stripe_customer_id": stripe_customer_id},
            )
    return customer


def _owner_email(organization: Organization) -> str:
    owner = (
        Membership.unscoped.filter(organization=organization, role=Role.OWNER)
        .select_related("user")
        .order_by("created_at", "pk")
        .first()
    )
    return owner.user.email if owner else ""


def _has_open_invoice(organization: Organization) -> bool:
    return Invoice.objects.filter(organization=organization, status=Invoice.Status.OPEN).exists()


def _card_get(organization: Organization, payment_method_id: str) -> tuple[str, list[Card], Card]:
    """Return the customer id, every card, and the one named; another's card is not found."""
    customer = Customer.objects.filter(organization=organization).first()
    cards = stripe_adapter.cards_list(customer=customer.stripe_customer_id) if customer else []
    for card in cards:
        if card.id == payment_method_id:
            return customer.stripe_customer_id, cards, card
    raise NotFound("Not found.")


def _card_audit(*, actor: Actor, organization: Organization, action: str, card: Card) -> None:
    audit_record(
        actor=actor,
        action=action,
        organization=organization,
        target_type="billing.card",
        target_id=card.id,
        metadata={"brand": card.brand, "last4": card.last4},
    )


def _card_ready(organization: Organization) -> None:
    """Let dunning retry at once: the organization has a new card to charge and owes money."""
    # Imported here: dunning drives collection through this module.
    from billing.dunning import dunning_card_added

    if _has_open_invoice(organization):
        transaction.on_commit(lambda: dunning_card_added(organization=organization))


def payment_method_setup_start(*, organization: Organization) -> stripe_adapter.SetupIntent:
    """Start adding a card: a SetupIntent whose client secret Stripe.js confirms in the browser."""
    customer = customer_ensure(organization=organization).stripe_customer_id
    return stripe_adapter.setup_intent_create(customer=customer, organization_id=organization.pk)


def payment_method_add(*, actor: Actor, organization: Organization, setup_intent_id: str) -> Card:
    """Keep the card a confirmed SetupIntent saved, and charge invoices to it from now on.

    The newest card is the one the payer means to pay with, so it becomes the default.
    """
    customer = Customer.objects.filter(organization=organization).first()
    intent = None
    if customer is not None and setup_intent_id.startswith("seti_"):
        intent = stripe_adapter.setup_intent_retrieve(setup_intent=setup_intent_id)
    if intent is None or intent.customer != customer.stripe_customer_id:
        raise NotFound("Not found.")
    if intent.status != "succeeded" or not intent.payment_method:
        raise Conflict("Stripe has not confirmed this card; enter it again.")
    _customer, _cards, card = _card_get(organization, intent.payment_method)
    stripe_adapter.customer_default_payment_method_set(
        customer=customer.stripe_customer_id, payment_method=card.id
    )
    with transaction.atomic():
        _card_audit(actor=actor, organization=organization, action="billing.card_added", card=card)
        _card_ready(organization)
    return card


def payment_method_set_default(*, actor: Actor, organization: Organization, payment_method_id: str) -> Card:
    """Charge the organization's invoices to one of its cards from now on."""
    customer, _cards, card = _card_get(organization, payment_method_id)
    stripe_adapter.customer_default_payment_method_set(customer=customer, payment_method=card.id)
    with transaction.atomic():
        _card_audit(actor=actor, organization=organization, action="billing.card_made_default", card=card)
        _card_ready(organization)
    return card


def payment_method_remove(*, actor: Actor, organization: Organization, payment_method_id: str) -> Card:
    """Remove a card and return it; the last one stays while an invoice is open, to be charged.

    Removing the default card makes the newest remaining card the default.
    """
    customer, cards, card = _card_get(organization, payment_method_id)
    if len(cards) == 1 and _has_open_invoice(organization):
        raise Conflict(
            f"{card.brand.title()} ending in {card.last4} is the only card and an invoice is open: "
            "add another card before removing this one."
        )
    was_default = stripe_adapter.customer_default_payment_method(customer=customer) == card.id
    stripe_adapter.payment_method_detach(payment_method=card.id)
    remaining = [other for other in cards if other.id != card.id]
    if was_default and remaining:
        stripe_adapter.customer_default_payment_method_set(customer=customer, payment_method=remaining[-1].id)
    with transaction.atomic():
        _card_audit(actor=actor, organization=organization, action="billing.card_removed", card=card)
    return card


_ADDRESS = ("line1", "line2", "city", "postal_code", "state", "country")


def billing_details_update(
    *,
    actor: Actor,
    organization: Organization,
    email: str = "",
    company_name: str = "",
    address_line1: str = "",
    address_line2: str = "",
    city: str = "",
    postal_code: str = "",
    state: str = "",
    country: str = "",
    tax_id_type: str = "",
    tax_id_value: str = "",
) -> BillingDetails:
    """Store who invoices are addressed to, after Stripe's customer says the same.

    Stripe is written first: a tax id it refuses changes nothing, there or here. Without a
    billing email Stripe writes to the first owner; without a company name, the organization's
    name is used.
    """
    values = {
        "email": email.strip(),
        "company_name": company_name.strip(),
        "address_line1": address_line1.strip(),
        "address_line2": address_line2.strip(),
        "city": city.strip(),
        "postal_code": postal_code.strip(),
        "state": state.strip(),
        "country": country.strip().upper(),
        "tax_id_type": tax_id_type.strip(),
        "tax_id_value": tax_id_value.strip().replace(" ", ""),
    }
    if values["country"] and not re.fullmatch(r"[A-Z]{2}", values["country"]):
        raise DomainError("Use the two-letter country code (ISO 3166-1), e.g. DE.", field="country")
    if values["tax_id_type"] and values["tax_id_type"] not in BillingDetails.TaxIdType.values:
        raise DomainError("Choose one of the listed kinds of tax id.", field="tax_id_type")
    if bool(values["tax_id_type"]) != bool(values["tax_id_value"]):
        field = "tax_id_value" if values["tax_id_type"] else "tax_id_type"
        raise DomainError("A tax id needs both its kind and its number.", field=field)
    address = {part: values[f"address_{part}" if part.startswith("line") else part] for part in _ADDRESS}
    customer = customer_ensure(organization=organization).stripe_customer_id
    # The tax id first: it is the part Stripe may refuse, and then nothing else has changed.
    stripe_adapter.customer_tax_id_set(
        customer=customer,
        tax_id=(values["tax_id_type"], values["tax_id_value"]) if values["tax_id_type"] else None,
    )
    stripe_adapter.customer_update(
        customer=customer,
        email=values["email"] or _owner_email(organization),
        name=values["company_name"] or organization.name,
        address=address if any(address.values()) else None,
    )
    with transaction.atomic():
        details, _ = BillingDetails.objects.update_or_create(
            organization=organization, defaults={**values, "updated_at": timezone.now()}
        )
        audit_record(
            actor=actor,
            action="billing.details_updated",
            organization=organization,
            target=details,
            metadata={name: value for name, value in values.items() if name != "tax_id_value"},
        )
    return details


def invoice_pay_now(*, actor: Actor, invoice: Invoice) -> Invoice:
    """Charge an open invoice to the default card now, as a fresh attempt.

    A declined card raises ``PaymentDeclined`` with Stripe's message and leaves it open.
    """
    if invoice.status != Invoice.Status.OPEN or not invoice.stripe_invoice_id:
        raise Conflict(
            f"Only an open invoice can be paid; this one is {invoice.get_status_display().lower()}."
        )
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="invoice.pay_requested",
            organization=invoice.organization,
            target=invoice,
            metadata={"push_attempts": invoice.push_attempts},
        )
    return invoice_push(invoice=invoice)


# Namespace of the advisory locks that keep two pushes of one invoice apart ("tg").
_PUSH_LOCK = 0x7467


@contextmanager
def _push_lock(invoice_id: int) -> Iterator[None]:
    # A session lock, not a row lock: each Stripe id must commit the moment it returns, so the
    # push cannot run inside one transaction. The lock goes with the connection if it dies.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_PUSH_LOCK, invoice_id])
        if not cursor.fetchone()[0]:
            raise BillingUnavailable("Another push of this invoice is running.", code="push_in_progress")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_PUSH_LOCK, invoice_id])


def _invoice_update(invoice: Invoice, **fields) -> None:
    Invoice.objects.filter(pk=invoice.pk).update(**fields)
    for name, value in fields.items():
        setattr(invoice, name, value)


# Forward only, as Stripe moves an invoice: what each status may become. Stripe still lets an
# uncollectible invoice be paid or voided; a paid or void one never changes again.
_NEXT_STATUSES = {
    Invoice.Status.DRAFT: {
        Invoice.Status.OPEN,
        Invoice.Status.PAID,
        Invoice.Status.UNCOLLECTIBLE,
        Invoice.Status.VOID,
    },
    Invoice.Status.OPEN: {Invoice.Status.PAID, Invoice.Status.UNCOLLECTIBLE, Invoice.Status.VOID},
    Invoice.Status.UNCOLLECTIBLE: {Invoice.Status.PAID, Invoice.Status.VOID},
    Invoice.Status.PAID: set(),
    Invoice.Status.VOID: set(),
}
# The statuses in which nothing more is collected on an invoice.
SETTLED_STATUSES = (Invoice.Status.PAID, Invoice.Status.UNCOLLECTIBLE, Invoice.Status.VOID)
_TRANSITIONS = {
    Invoice.Status.OPEN: ("invoice.finalized", "finalized_at"),
    Invoice.Status.PAID: ("invoice.paid", "paid_at"),
    Invoice.Status.UNCOLLECTIBLE: ("invoice.marked_uncollectible", None),
    Invoice.Status.VOID: ("invoice.voided", "voided_at"),
}


def invoice_status_advance(*, invoice: Invoice, status: str) -> bool:
    """Move ``invoice`` forward to ``status`` as Stripe reports it; return whether it moved.

    A status that is not ahead of the invoice's own (a late event, a replay) changes nothing.
    A move is audited, and one to paid, uncollectible or void is reported to dunning in the
    same transaction.
    """
    status = Invoice.Status(status)
    action, stamp = _TRANSITIONS.get(status, (None, None))
    previous = [before for before, after in _NEXT_STATUSES.items() if status in after]
    fields = {"status": status, **({stamp: timezone.now()} if stamp else {})}
    with transaction.atomic():
        # The status is compared in the UPDATE itself: two reporters (the push and a webhook)
        # racing to record one payment move the invoice once.
        if not Invoice.objects.filter(pk=invoice.pk, status__in=previous).update(**fields):
            invoice.refresh_from_db()
            return False
        for name, value in fields.items():
            setattr(invoice, name, value)
        audit_record(
            actor=Actor.system(),
            action=action,
            organization=invoice.organization,
            target=invoice,
            metadata={"stripe_invoice_id": invoice.stripe_invoice_id, "total_minor": invoice.total_minor},
        )
        if status in SETTLED_STATUSES:
            dunning.dunning_invoice_settled(invoice=invoice)
    return True


def invoice_push(*, invoice: Invoice) -> Invoice:
    """Mirror ``invoice`` to Stripe and charge it, resuming wherever an earlier run stopped.

    Each Stripe id is stored the moment Stripe returns it, and every call carries an
    idempotency key, so a rerun after a crash at any step ends with one Stripe invoice holding
    exactly the invoice's lines, and at most one charge. Stripe's total must equal ours before
    the invoice is finalized or charged. Invoices with nothing to pay, and paid or closed ones,
    are left alone. A failure is recorded in ``last_push_error`` and raised as a
    ``BillingError`` (a declined card leaves the invoice open).
    """
    with _push_lock(invoice.pk):
        invoice.refresh_from_db()
        if invoice.no_charge_reason or invoice.status not in (Invoice.Status.DRAFT, Invoice.Status.OPEN):
            return invoice
        _invoice_update(invoice, push_attempts=F("push_attempts") + 1)
        invoice.refresh_from_db(fields=["push_attempts"])
        try:
            _push(invoice)
        except BillingError as error:
            INVOICE_PUSH_FAILURES.labels(type(error).__name__).inc()
            with transaction.atomic():
                _invoice_update(invoice, last_push_error=error.message)
                if isinstance(error, PaymentDeclined):
                    audit_record(
                        actor=Actor.system(),
                        action="invoice.payment_failed",
                        organization=invoice.organization,
                        target=invoice,
                        metadata={"stripe_invoice_id": invoice.stripe_invoice_id, "error": error.message},
                    )
                    dunning.dunning_payment_failed(invoice=invoice, reason=error.message)
            raise
        _invoice_update(invoice, last_push_error="")
    INVOICES_PUSHED.inc()
    return invoice


def _push(invoice: Invoice) -> None:
    customer = customer_ensure(organization=invoice.organization).stripe_customer_id
    if not invoice.stripe_invoice_id:
        # A create whose answer was lost is replayed by its key for 24 hours; later, found here.
        stripe_invoice_id = stripe_adapter.invoice_find(
            customer=customer, invoice_id=invoice.pk
        ) or stripe_adapter.invoice_create(
            customer=customer,
            currency=invoice.currency,
            invoice_id=invoice.pk,
            organization_id=invoice.organization_id,
            period=invoice.period,
        )
        _invoice_update(invoice, stripe_invoice_id=stripe_invoice_id)
    missing = list(invoice.lines.filter(stripe_invoice_item_id="").order_by("position"))
    if missing:
        on_stripe = stripe_adapter.invoice_items(invoice=invoice.stripe_invoice_id)
        for line in missing:
            item_id = on_stripe.get(line.pk) or stripe_adapter.invoice_item_create(
                customer=customer,
                invoice=invoice.stripe_invoice_id,
                line_id=line.pk,
                amount_minor=line.amount_minor,
                currency=invoice.currency,
                description=line.description,
                period=invoice.period,
            )
            InvoiceLine.objects.filter(pk=line.pk).update(stripe_invoice_item_id=item_id)
    remote = stripe_adapter.invoice_retrieve(invoice=invoice.stripe_invoice_id)
    if remote.total != invoice.total_minor:
        raise BillingError(
            f"Stripe's invoice totals {format_minor(remote.total, invoice.currency)} but this invoice "
            f"{format_minor(invoice.total_minor, invoice.currency)}; it was not finalized or charged.",
            code="total_mismatch",
        )
    if remote.status == "draft":
        remote = stripe_adapter.invoice_finalize(invoice=invoice.stripe_invoice_id, invoice_id=invoice.pk)
    if remote.hosted_invoice_url and remote.hosted_invoice_url != invoice.hosted_invoice_url:
        _invoice_update(invoice, hosted_invoice_url=remote.hosted_invoice_url)
    if remote.status in ("open", "paid") and invoice_status_advance(
        invoice=invoice, status=Invoice.Status.OPEN
    ):
        billing_email_send(organization=invoice.organization, template="invoice_issued", invoice=invoice)
    if remote.status == "open":
        # A new attempt number per run: a declined charge may be retried once the card changed;
        # an invoice already paid is never charged again (Stripe refuses to).
        remote = stripe_adapter.invoice_pay(
            invoice=invoice.stripe_invoice_id, invoice_id=invoice.pk, attempt=invoice.push_attempts
        )
    if remote.status != "paid":
        raise BillingError(
            f"Stripe's invoice is {remote.status}, so it cannot be charged.", code="unexpected_status"
        )
    invoice_status_advance(invoice=invoice, status=Invoice.Status.PAID)


def _invoice_close(
    *, actor: Actor, invoice: Invoice, verb: str, stripe_call, stripe_status: str, action: str, **fields
) -> Invoice:
    """Close an open invoice here and in Stripe, audited; then nothing more is owed on it."""
    with _push_lock(invoice.pk):
        invoice.refresh_from_db()
        if invoice.status != Invoice.Status.OPEN:
            raise Conflict(
                f"Only an open invoice can be {verb}; this one is {invoice.get_status_display().lower()}."
            )
        if invoice.stripe_invoice_id:
            remote = stripe_call(invoice=invoice.stripe_invoice_id, invoice_id=invoice.pk)
            if remote.status != stripe_status:
                raise BillingError(
                    f"Stripe's invoice is {remote.status}, not {stripe_status}.", code="unexpected_status"
                )
        with transaction.atomic():
            _invoice_update(invoice, **fields)
            audit_record(
                actor=actor,
                action=action,
                organization=invoice.organization,
                target=invoice,
                metadata={"stripe_invoice_id": invoice.stripe_invoice_id, "total_minor": invoice.total_minor},
            )
    dunning.dunning_invoice_settled(invoice=invoice)
    return invoice


def invoice_void(*, actor: Actor, invoice: Invoice) -> Invoice:
    """Void an open invoice here and in Stripe (staff only): it was issued in error."""
    return _invoice_close(
        actor=actor,
        invoice=invoice,
        verb="voided",
        stripe_call=stripe_adapter.invoice_void,
        stripe_status="void",
        action="invoice.voided",
        status=Invoice.Status.VOID,
        voided_at=timezone.now(),
    )


def invoice_mark_paid(*, actor: Actor, invoice: Invoice) -> Invoice:
    """Record an open invoice as paid outside Stripe, e.g. by bank transfer (staff only); no charge."""
    return _invoice_close(
        actor=actor,
        invoice=invoice,
        verb="marked paid",
        stripe_call=stripe_adapter.invoice_pay_out_of_band,
        stripe_status="paid",
        action="invoice.paid_out_of_band",
        status=Invoice.Status.PAID,
        paid_at=timezone.now(),
    )


def invoice_forgive(*, actor: Actor, invoice: Invoice) -> Invoice:
    """Forgive an open invoice (staff only): Stripe marks it uncollectible and charges no more.

    Uncollectible rather than void: the invoice was rightly issued and stays owed in the books
    as a bad debt (Stripe still accepts a payment of it), where a void says it was a mistake.
    """
    return _invoice_close(
        actor=actor,
        invoice=invoice,
        verb="forgiven",
        stripe_call=stripe_adapter.invoice_mark_uncollectible,
        stripe_status="uncollectible",
        action="invoice.forgiven",
        status=Invoice.Status.UNCOLLECTIBLE,
    )


def invoice_push_request(*, actor: Actor, invoice: Invoice) -> None:
    """Queue another push of a draft or open invoice to Stripe (staff only), audited."""
    from billing.tasks import invoice_push as push_task

    if invoice.no_charge_reason or invoice.status not in (Invoice.Status.DRAFT, Invoice.Status.OPEN):
        raise Conflict(f"A {invoice.get_status_display().lower()} invoice has nothing to push.")
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="invoice.push_requested",
            organization=invoice.organization,
            target=invoice,
            metadata={"push_attempts": invoice.push_attempts},
        )
        transaction.on_commit(lambda: push_task.delay(invoice.pk))


def invoice_credit_add(*, actor: Actor, invoice: Invoice, amount_minor: int, description: str) -> InvoiceLine:
    """Credit a draft invoice: a negative line at its end, the total lowered in the same write.

    Only a draft may change (an open invoice is what the customer was sent), and a credit may
    bring the total to zero but not below.
    """
    description = description.strip()
    if not description or len(description) > 500:
        raise DomainError("Say what the credit is for (1 to 500 characters).", field="description")
    if amount_minor <= 0:
        raise DomainError("A credit is a positive amount in minor units.", field="amount_minor")
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if invoice.status != Invoice.Status.DRAFT:
            raise Conflict(
                f"Only a draft invoice takes a credit; this one is {invoice.get_status_display().lower()}."
            )
        if amount_minor > invoice.total_minor:
            raise DomainError(
                f"A credit cannot exceed the invoice total ({format_minor(invoice.total_minor, invoice.currency)}).",
                field="amount_minor",
            )
        last = invoice.lines.aggregate(last=Max("position"))["last"] or 0
        line = InvoiceLine.objects.create(
            invoice=invoice,
            position=last + 1,
            kind=InvoiceLine.Kind.CREDIT,
            quantity=1,
            amount_minor=-amount_minor,
            description=description,
        )
        invoice.total_minor -= amount_minor
        invoice.save(update_fields=["total_minor"])
        audit_record(
            actor=actor,
            action="invoice.credit_added",
            organization=invoice.organization,
            target=invoice,
            metadata={
                "amount_minor": amount_minor,
                "currency": invoice.currency,
                "description": description,
                "total_minor": invoice.total_minor,
            },
        )
    return line
