from decimal import Decimal, InvalidOperation

from django.db import IntegrityError, transaction
from django.utils import timezone

from billing.models import ModelPrice
from portal.audit import Actor, audit_record
from portal.errors import Conflict, DomainError


def _amount(value, field: str) -> Decimal:
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise DomainError("Enter a decimal amount in cents per million tokens.", field=field) from None
    if amount < 0 or amount != amount.quantize(Decimal("0.000001")):
        raise DomainError("Use a non-negative amount with at most 6 decimals.", field=field)
    return amount


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
    model = model.strip()
    if not model or len(model) > 200:
        raise DomainError("Name the model (1 to 200 characters).", field="model")
    input_price = _amount(input_per_mtok_minor, "input_per_mtok_minor")
    output_price = _amount(output_per_mtok_minor, "output_per_mtok_minor")
    cached_price = (
        input_price
        if cached_input_per_mtok_minor in (None, "")
        else _amount(cached_input_per_mtok_minor, "cached_input_per_mtok_minor")
    )
    with transaction.atomic():
        try:
            with transaction.atomic():
                price = ModelPrice.objects.create(
                    model=model,
                    input_per_mtok_minor=input_price,
                    output_per_mtok_minor=output_price,
                    cached_input_per_mtok_minor=cached_price,
                    effective_from=effective_from or timezone.now(),
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
