from decimal import Decimal, InvalidOperation

from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from billing.currency import format_minor
from billing.models import Invoice, InvoiceLine, ModelPrice, Plan, PlanAssignment, PlanPrice
from portal.audit import Actor, audit_record
from portal.errors import Conflict, DomainError
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
    model = _model_name(model)
    effective_from = _price_start(effective_from)
    input_price, output_price, cached_price = _price_amounts(
        input_per_mtok_minor, output_per_mtok_minor, cached_input_per_mtok_minor
    )
    with transaction.atomic():
        try:
            with transaction.atomic():
                price = ModelPrice.objects.create(
                    model=model,
                    input_per_mtok_minor=input_price,
                    output_per_mtok_minor=output_price,
                    cached_input_per_mtok_minor=cached_price,
                    effective_from=effective_from,
                    created_by=actor.user,
                )
        except IntegrityError:
            raise Conflict("A price for this model already starts at that moment.") from None
        audit_record(
            actor=actor,
            action="price.set",
            target=price,
            metadata={
                "model": model,
                "input": str(input_price),
                "output": str(output_price),
                "cached_input": str(cached_price),
                "effective_from": price.effective_from.isoformat(),
            },
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
    model = _model_name(model)
    effective_from = _price_start(effective_from)
    input_price, output_price, cached_price = _price_amounts(
        input_per_mtok_minor, output_per_mtok_minor, cached_input_per_mtok_minor
    )
    with transaction.atomic():
        try:
            with transaction.atomic():
                price = PlanPrice.objects.create(
                    plan=plan,
                    model=model,
                    input_per_mtok_minor=input_price,
                    output_per_mtok_minor=output_price,
                    cached_input_per_mtok_minor=cached_price,
                    effective_from=effective_from,
                )
        except IntegrityError:
            raise Conflict("A price for this model already starts at that moment in this plan.") from None
        audit_record(
            actor=actor,
            action="plan.price_set",
            target=price,
            metadata={
                "plan": plan.name,
                "model": model,
                "input": str(input_price),
                "output": str(output_price),
                "cached_input": str(cached_price),
                "effective_from": effective_from.isoformat(),
            },
        )
    return price


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
